//! End-to-end: cluster DNS on a real lab (`--cni fibril`): the `fibril-dns` pod behind the
//! `kube-dns` Service that `lab up` installs, queried with `dig` from a pod on another node,
//! the resolv.conf the kubelet writes, and glibc's resolver walking the search path.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. Each lab has a unique `fibt…` name and is removed on drop.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{ensure_fibril_cni, ready, wait_for, Lab};

fn manifest(lab: &Lab, dns_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      containers:
        - name: echo
          image: fibril/echo
          ports:
            - {{name: http, containerPort: 8080, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  selector: {{app: echo}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
---
apiVersion: v1
kind: Service
metadata:
  name: echo-hl
  namespace: demo
spec:
  clusterIP: None
  selector: {{app: echo}}
  ports:
    - {{name: http, port: 8080, targetPort: http}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
spec:
  nodeSelector:
    kubernetes.io/hostname: {node2}
  containers:
    - name: client
      image: debian
      command: ["sleep", "infinity"]
---
# Resolves through the DNS pod's own address with the ClusterFirst search list
# (dnsPolicy None + dnsConfig): glibc's resolver end to end, without a ClusterIP.
apiVersion: v1
kind: Pod
metadata:
  name: resolver
  namespace: demo
spec:
  nodeSelector:
    kubernetes.io/hostname: {node2}
  dnsPolicy: None
  dnsConfig:
    nameservers: ["{dns_ip}"]
    searches: [demo.svc.cluster.local, svc.cluster.local, cluster.local]
    options:
      - {{name: ndots, value: "5"}}
  containers:
    - name: resolver
      image: debian
      command: ["sleep", "infinity"]
"#,
        node2 = lab.node(2)
    )
}

impl Lab {
    fn exec_in(&self, pod: &str, cmd: &[&str]) -> String {
        let mut args = vec!["lab", "exec", "-n", "demo", pod, "--"];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// `dig` from the client pod; `+short` lines, sorted.
    fn dig_short(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec!["dig", "+time=2", "+tries=1", "+short"];
        cmd.extend_from_slice(args);
        let mut lines: Vec<String> = self
            .exec_in("client", &cmd)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// `curl` from `pod` gets the name of one of the echo pods.
    fn curl_echo(&self, pod: &str, url: &str, echo_names: &BTreeSet<String>) {
        let body = self.exec_in(pod, &["curl", "-sS", "--max-time", "5", url]);
        assert!(
            echo_names.contains(body.trim()),
            "{url} from {pod} answered {body:?}, not one of {echo_names:?}"
        );
    }

    /// The response code `dig` reports (`NOERROR`, `NXDOMAIN`, `REFUSED`, …).
    fn dig_status(&self, args: &[&str]) -> String {
        let mut cmd = vec!["dig", "+time=2", "+tries=1", "+noall", "+comments"];
        cmd.extend_from_slice(args);
        let out = self.exec_in("client", &cmd);
        out.split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_else(|| panic!("no status in dig output: {out}"))
            .to_string()
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// A lab with cluster DNS checked as `lab up` left it, and the demo app deployed.
struct Demo {
    lab: Lab,
    /// The DNS pod's own address.
    dns_ip: String,
    /// The echo Service's ClusterIP.
    echo_ip: String,
    /// The echo pods' addresses, sorted.
    echo_ips: Vec<String>,
    /// The echo pods' names.
    echo_names: BTreeSet<String>,
}

fn deploy_demo() -> Demo {
    ensure_fibril_cni();
    let lab = Lab::up(2, &["--cni", "fibril"]);

    // What `lab up` installed: kube-dns on the tenth service address, its pod Ready.
    let svc = lab.json(&[
        "lab",
        "get",
        "services",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10", "{svc}");
    let ports: BTreeSet<(String, u64, String)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string()),
        ])
    );
    let dns_pods = items(&lab.json(&["lab", "get", "pods", "-n", "kube-system", "-o", "json"]));
    let dns_pod = dns_pods
        .iter()
        .find(|p| p["metadata"]["labels"]["k8s-app"] == "kube-dns")
        .unwrap_or_else(|| panic!("no kube-dns pod: {dns_pods:?}"));
    assert!(ready(dns_pod), "{dns_pod}");
    assert!(
        dns_pod["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("fibril-dns-"),
        "{dns_pod}"
    );
    let dns_ip = dns_pod["status"]["podIP"].as_str().unwrap().to_string();
    let dns_node = dns_pod["spec"]["nodeName"].as_str().unwrap().to_string();

    let m = lab.state_root.join("dns.yaml");
    std::fs::write(&m, manifest(&lab, &dns_ip)).unwrap();
    lab.ok(&["lab", "apply", "-f", m.to_str().unwrap()]);
    let pods = wait_for("Ready demo pods", Duration::from_secs(90), || {
        let items = items(&lab.json(&["lab", "get", "pods", "-n", "demo", "-o", "json"]));
        (items.len() == 4 && items.iter().all(ready)).then_some(items)
    });
    let echo = || {
        pods.iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "echo")
    };
    let mut echo_ips: Vec<String> = echo()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    echo_ips.sort();
    let echo_names: BTreeSet<String> = echo()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let client = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "client")
        .unwrap();
    let cross_node = client["spec"]["nodeName"] != dns_node.as_str();
    eprintln!("DNS pod {dns_ip} on {dns_node}; client cross-node: {cross_node}");
    let echo_svc = lab.json(&["lab", "get", "services", "echo", "-n", "demo", "-o", "json"]);
    let echo_ip = echo_svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    Demo {
        lab,
        dns_ip,
        echo_ip,
        echo_ips,
        echo_names,
    }
}

#[test]
#[ignore = "privileged: needs root, netns and BPF (a whole lab)"]
fn cluster_dns_serves_services_to_pods() {
    let Demo {
        lab,
        dns_ip,
        echo_ip,
        echo_ips,
        echo_names,
        ..
    } = deploy_demo();

    // The resolv.conf the kubelet wrote for ClusterFirst, as the pod's processes see it.
    assert_eq!(
        lab.exec_in("client", &["cat", "/etc/resolv.conf"]),
        "search demo.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 10.96.0.10\n\
         options ndots:5\n"
    );

    let at = format!("@{dns_ip}");
    // Wait until the headless Service's endpoints are in the zone (EndpointSlice controller
    // → watch → zone): both echo pods listed.
    wait_for("headless answers", Duration::from_secs(20), || {
        (lab.dig_short(&[&at, "echo-hl.demo.svc.cluster.local", "A"]) == echo_ips).then_some(())
    });

    // A and SRV of the ClusterIP Service, over UDP and TCP.
    assert_eq!(
        lab.dig_short(&[&at, "echo.demo.svc.cluster.local", "A"]),
        vec![echo_ip.clone()]
    );
    assert_eq!(
        lab.dig_short(&["+tcp", &at, "echo.demo.svc.cluster.local", "A"]),
        vec![echo_ip.clone()]
    );
    assert_eq!(
        lab.dig_short(&[&at, "_http._tcp.echo.demo.svc.cluster.local", "SRV"]),
        vec!["0 100 80 echo.demo.svc.cluster.local.".to_string()]
    );
    // Headless SRV: one per ready endpoint, targeting its per-endpoint name.
    let mut want_srv: Vec<String> = echo_ips
        .iter()
        .map(|ip| {
            format!(
                "0 50 8080 {}.echo-hl.demo.svc.cluster.local.",
                ip.replace('.', "-")
            )
        })
        .collect();
    want_srv.sort();
    assert_eq!(
        lab.dig_short(&[&at, "_http._tcp.echo-hl.demo.svc.cluster.local", "SRV"]),
        want_srv
    );
    // Reverse lookup of the ClusterIP.
    assert_eq!(
        lab.dig_short(&[&at, "-x", &echo_ip]),
        vec!["echo.demo.svc.cluster.local.".to_string()]
    );
    // Negative answers: a missing name is NXDOMAIN, outside the zone is refused at once.
    assert_eq!(
        lab.dig_status(&[&at, "nope.demo.svc.cluster.local", "A"]),
        "NXDOMAIN"
    );
    let t = Instant::now();
    assert_eq!(lab.dig_status(&[&at, "example.com", "A"]), "REFUSED");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The search list with ndots:5, as dig applies it from the pod's resolv.conf.
    assert_eq!(
        lab.dig_short(&["+search", &at, "echo.demo", "A"]),
        vec![echo_ip.clone()]
    );

    // A Service created now resolves within a few seconds.
    let late = lab.state_root.join("late.yaml");
    std::fs::write(
        &late,
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: demo}\n\
         spec:\n  selector: {app: echo}\n  ports:\n    - {name: http, port: 81, targetPort: http}\n",
    )
    .unwrap();
    lab.ok(&["lab", "apply", "-f", late.to_str().unwrap()]);
    let late_svc = lab.json(&["lab", "get", "services", "late", "-n", "demo", "-o", "json"]);
    let late_ip = late_svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let t = Instant::now();
    wait_for("the new Service resolves", Duration::from_secs(10), || {
        (lab.dig_short(&[&at, "late.demo.svc.cluster.local", "A"]) == vec![late_ip.clone()])
            .then_some(())
    });
    eprintln!(
        "new Service resolvable {:?} after apply returned",
        t.elapsed()
    );

    // glibc's resolver, through the search path, from a pod that uses the DNS pod's own
    // address (dnsPolicy None + dnsConfig): curl by short and by full headless name.
    let resolv = lab.exec_in("resolver", &["cat", "/etc/resolv.conf"]);
    assert_eq!(
        resolv,
        format!(
            "search demo.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver {dns_ip}\noptions ndots:5\n"
        )
    );
    for url in [
        "http://echo-hl.demo:8080/hostname",
        "http://echo-hl.demo.svc.cluster.local:8080/hostname",
        "http://echo-hl:8080/hostname",
    ] {
        lab.curl_echo("resolver", url, &echo_names);
    }
    let hosts = lab.exec_in("resolver", &["getent", "ahostsv4", "echo.demo"]);
    assert!(hosts.contains(&echo_ip), "{hosts}");
}

/// Acceptance 2 of issue 4 end to end: the pod's own resolv.conf (nameserver = the kube-dns
/// ClusterIP, through the BPF service datapath to the DNS pod), `dig` answering A and SRV,
/// and curl reaching the echo Service by its full name, by `<svc>.<ns>` and by `<svc>`
/// (the search path), also with an explicit port.
#[test]
#[ignore = "privileged: needs root, netns and BPF (a whole lab)"]
fn pods_reach_services_by_name_through_the_kube_dns_cluster_ip() {
    let Demo {
        lab,
        echo_ip,
        echo_names,
        ..
    } = deploy_demo();

    // The agents program Services once they have listed them: wait for the first answer
    // through the ClusterIP, then every other check must hold at once.
    let took = Instant::now();
    wait_for(
        "an answer through the kube-dns ClusterIP",
        Duration::from_secs(30),
        || {
            (lab.dig_short(&["echo.demo.svc.cluster.local", "A"]) == vec![echo_ip.clone()])
                .then_some(())
        },
    );
    eprintln!("first answer via 10.96.0.10 after {:?}", took.elapsed());
    let server = lab.exec_in(
        "client",
        &[
            "dig",
            "+time=2",
            "+tries=1",
            "echo.demo.svc.cluster.local",
            "A",
        ],
    );
    assert!(
        server.contains("SERVER: 10.96.0.10#53(10.96.0.10) (UDP)"),
        "{server}"
    );
    assert_eq!(
        lab.dig_short(&["+tcp", "echo.demo.svc.cluster.local", "A"]),
        vec![echo_ip.clone()]
    );
    assert_eq!(
        lab.dig_short(&["_http._tcp.echo.demo.svc.cluster.local", "SRV"]),
        vec!["0 100 80 echo.demo.svc.cluster.local.".to_string()]
    );
    assert_eq!(
        lab.dig_short(&["+search", "echo.demo", "A"]),
        vec![echo_ip.clone()]
    );
    for url in [
        "http://echo.demo.svc.cluster.local/hostname",
        "http://echo.demo.svc.cluster.local:80/hostname",
        "http://echo.demo/hostname",
        "http://echo.demo:80/hostname",
        "http://echo/hostname",
    ] {
        lab.curl_echo("client", url, &echo_names);
    }
}
