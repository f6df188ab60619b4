//! End-to-end: a real lab driven only through the `fibril` CLI: 3 nodes with the bridge CNI
//! (the baseline peer) for traffic and teardown, and the default (fibril's CNI) for strict
//! manifests.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; `scripts/test.sh`
//! runs them with `--include-ignored`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{ready, wait_for, Lab};

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root namespace as the acceptance defines it: links, routes, rules and
/// `net.ipv4.conf.all.*`.
fn root_snapshot() -> Vec<(String, String)> {
    let mut snap = vec![
        ("ip -j link".to_string(), sh("ip", &["-j", "link"])),
        ("ip -j route".to_string(), sh("ip", &["-j", "route"])),
        ("ip -j rule".to_string(), sh("ip", &["-j", "rule"])),
    ];
    let mut entries: Vec<_> = std::fs::read_dir("/proc/sys/net/ipv4/conf/all")
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if let Ok(v) = std::fs::read_to_string(e.path()) {
            snap.push((format!("net.ipv4.conf.all.{:?}", e.file_name()), v));
        }
    }
    snap
}

fn manifest(lab: &Lab) -> String {
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
  replicas: 3
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
            - {{name: udp-echo, containerPort: 9090, protocol: UDP}}
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
kind: Pod
metadata:
  name: client
  namespace: demo
spec:
  nodeSelector:
    kubernetes.io/hostname: {node1}
  containers:
    - name: client
      image: debian
      command: ["sleep", "infinity"]
"#,
        node1 = lab.node(1)
    )
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn lab_pids(lab: &Lab) -> BTreeSet<i32> {
    // Every process in one of the lab's namespaces, plus the supervisor.
    let mut inodes = BTreeSet::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{}-", lab.name)) {
            if let Ok(m) = std::fs::metadata(e.path()) {
                use std::os::unix::fs::MetadataExt as _;
                inodes.insert(m.ino());
            }
        }
    }
    let mut pids = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            use std::os::unix::fs::MetadataExt as _;
            if inodes.contains(&m.ino()) {
                pids.insert(pid);
            }
        }
    }
    if let Ok(p) = std::fs::read_to_string(lab.state_dir().join("supervisor.pid")) {
        if let Ok(p) = p.trim().parse() {
            pids.insert(p);
        }
    }
    pids
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn lab_serves_real_traffic_and_down_leaves_nothing_even_after_sigkill() {
    let before = root_snapshot();
    let lab = Lab::new();
    let t0 = Instant::now();
    let up = lab.ok(&["lab", "up", "--nodes", "3", "--cni", "bridge"]);
    eprintln!("lab up took {:?}:\n{up}", t0.elapsed());
    for i in 1..=3 {
        assert!(up.contains(&format!("node {} Ready", lab.node(i))), "{up}");
    }

    // `lab up` on the same lab is idempotent and says so.
    let again = lab.ok(&["lab", "up", "--nodes", "3", "--cni", "bridge"]);
    assert!(again.contains("already up"), "{again}");
    // ... and a different spec for the same name is refused clearly.
    let other = lab.run(&["lab", "up", "--nodes", "2"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("different settings"));

    // Every component is supervised, with its node and pid.
    let status = lab.json(&["lab", "status", "-o", "json"]);
    let comps = status["components"].as_array().unwrap();
    let ids: BTreeSet<&str> = comps.iter().map(|c| c["id"].as_str().unwrap()).collect();
    for want in ["apiserver", "controllers"] {
        assert!(ids.contains(want), "{ids:?}");
    }
    for i in 1..=3 {
        assert!(ids.contains(format!("kubelet/{}", lab.node(i)).as_str()));
        assert!(ids.contains(format!("bridge-agent/{}", lab.node(i)).as_str()));
    }
    for c in comps {
        assert_eq!(c["state"], "running", "{c}");
        assert!(c["pid"].as_u64().is_some(), "{c}");
    }
    assert_eq!(status["apiReachable"], true);

    // A kubeconfig for clients inside the lab, pointing at the control-plane address.
    let kubeconfig = lab.ok(&["lab", "kubeconfig"]);
    let kc: serde_json::Value = serde_yaml::from_str(&kubeconfig).expect("kubeconfig is YAML");
    assert_eq!(kc["kind"], "Config");
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "http://172.18.0.2:6443"
    );
    // Component logs are there for the asking.
    assert!(!lab.ok(&["lab", "logs", "apiserver"]).is_empty());

    // Deploy and wait for the pods.
    let dir = tempfile_dir(&lab);
    let m = write_file(&dir, "app.yaml", &manifest(&lab));
    lab.ok(&["lab", "apply", "-f", m.to_str().unwrap()]);
    let pods = wait_for("4 Ready pods", Duration::from_secs(60), || {
        let v = lab.json(&["lab", "get", "pods", "-n", "demo", "-o", "json"]);
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 4 && items.iter().all(ready)).then_some(items)
    });
    let client = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "client")
        .unwrap();
    assert_eq!(client["spec"]["nodeName"], lab.node(1).as_str());
    let echoes: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "echo")
        .collect();
    let nodes: BTreeSet<&str> = echoes
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "the scheduler spreads 3 replicas over 3 nodes: {nodes:?}"
    );

    // HTTP and UDP from the client to every echo pod: one same-node, two cross-node.
    for p in &echoes {
        let ip = p["status"]["podIP"].as_str().unwrap();
        let name = p["metadata"]["name"].as_str().unwrap();
        let body = lab.ok(&[
            "lab",
            "exec",
            "-n",
            "demo",
            "client",
            "--",
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{ip}:8080/hostname"),
        ]);
        assert_eq!(
            body.trim(),
            name,
            "HTTP to {ip} on {}",
            p["spec"]["nodeName"]
        );
        let udp = lab.ok(&[
            "lab",
            "exec",
            "-n",
            "demo",
            "client",
            "--",
            "sh",
            "-c",
            &format!("printf hostname | nc -u -w2 {ip} 9090"),
        ]);
        assert_eq!(udp.trim(), name, "UDP to {ip}");
    }

    // The pod sees the cluster resolv.conf, as kubelet writes it.
    let resolv = lab.ok(&[
        "lab",
        "exec",
        "-n",
        "demo",
        "client",
        "--",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search demo.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");

    // Node and world namespaces: the world host is reachable from a node, and back.
    lab.ok(&[
        "lab",
        "exec",
        "--node",
        &lab.node(2),
        "--",
        "ping",
        "-c1",
        "-W2",
        "203.0.113.10",
    ]);
    lab.ok(&[
        "lab",
        "exec",
        "--world",
        "--",
        "ping",
        "-c1",
        "-W2",
        "172.18.0.13",
    ]);

    // The Service's EndpointSlice lists the 3 ready echo pods with the named port resolved.
    let slices = wait_for(
        "a slice with 3 ready endpoints",
        Duration::from_secs(20),
        || {
            let v = lab.json(&["lab", "get", "endpointslices", "-n", "demo", "-o", "json"]);
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let ready: usize = items
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .count();
            (ready == 3).then_some(items)
        },
    );
    assert_eq!(slices[0]["ports"][0]["port"], 8080);

    // fibril's BPF counters on the pod veths saw the traffic.
    let counters = lab.json(&["bpf", "counters", "-o", "json"]);
    let node1 = counters
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == lab.node(1).as_str())
        .unwrap();
    let from_pod: u64 = node1["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fromPodPackets"].as_u64().unwrap())
        .sum();
    assert!(from_pod >= 8, "client sent at least 8 packets: {node1}");

    // The supervisor restarts a component that dies, as a DaemonSet would.
    let kubelet2 = format!("kubelet/{}", lab.node(2));
    let pid = comp(&lab, &kubelet2)["pid"].as_i64().unwrap() as i32;
    kill9(pid);
    wait_for(
        "the kubelet to be restarted",
        Duration::from_secs(20),
        || {
            let c = comp(&lab, &kubelet2);
            (c["state"] == "running"
                && c["restarts"].as_u64() >= Some(1)
                && c["pid"].as_i64().is_some_and(|p| p as i32 != pid))
            .then_some(())
        },
    );

    // A broken CNI config shows in the pod's status with the plugin's message.
    let conf_dir = lab
        .state_dir()
        .join("nodes")
        .join(lab.node(3))
        .join("cni/net.d");
    let broken = write_file(
        &conf_dir,
        "00-broken.conflist",
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"fibril-no-such-plugin"}]}"#,
    );
    let pod = write_file(
        &dir,
        "victim.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: victim, namespace: demo}}\nspec:\n  nodeName: {}\n  containers: [{{name: c, image: debian, command: [sleep, infinity]}}]\n",
            lab.node(3)
        ),
    );
    lab.ok(&["lab", "apply", "-f", pod.to_str().unwrap()]);
    wait_for(
        "the CNI error in the pod status",
        Duration::from_secs(30),
        || {
            let v = lab.json(&["lab", "get", "pods", "victim", "-n", "demo", "-o", "json"]);
            let text = v["status"].to_string();
            (text.contains("fibril-no-such-plugin") && v["status"]["phase"] == "Pending")
                .then_some(())
        },
    );
    std::fs::remove_file(broken).unwrap();
    wait_for(
        "the pod to recover once the config is fixed",
        Duration::from_secs(60),
        || {
            let v = lab.json(&["lab", "get", "pods", "victim", "-n", "demo", "-o", "json"]);
            ready(&v).then_some(())
        },
    );

    // Kill every process of the lab with SIGKILL, then `lab down` must still remove all.
    let pids = lab_pids(&lab);
    assert!(pids.len() >= 10, "expected the lab's processes: {pids:?}");
    for p in &pids {
        kill9(*p);
    }
    lab.ok(&["lab", "down"]);

    assert_eq!(root_snapshot(), before, "the root namespace changed");
    let prefix = format!("{}-", lab.name);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for p in &pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists() || is_zombie_of_other(*p),
            "process {p} survived"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&prefix), "mounts left:\n{mounts}");
    let etc_left: Vec<_> = std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(etc_left.is_empty(), "/etc/netns left: {etc_left:?}");
    let pins_left: Vec<_> = std::fs::read_dir("/sys/fs/bpf/fibril")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(pins_left.is_empty(), "pins left: {pins_left:?}");
    assert!(!lab.state_dir().exists(), "state dir left");
}

/// A pid reused by an unrelated process is not a survivor.
fn is_zombie_of_other(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| !c.contains("fibril") && !c.contains("sleep"))
        .unwrap_or(true)
}

fn comp(lab: &Lab, id: &str) -> Value {
    let st = lab.json(&["lab", "status", "-o", "json"]);
    st["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no component {id}"))
}

fn kill9(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

fn tempfile_dir(lab: &Lab) -> PathBuf {
    let d = lab.state_root.join("manifests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn invalid_manifests_are_rejected_whole_with_field_paths() {
    // The lab's default CNI: fibril's.
    let lab = Lab::up(1, &[]);
    let st = lab.json(&["lab", "status", "-o", "json"]);
    assert_eq!(st["spec"]["cni"], "fibril", "{st}");
    let dir = tempfile_dir(&lab);
    let cases = [
        (
            "wrong-type.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: c\n      image: fibril/echo\n      ports: [{containerPort: eighty}]\n",
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            "unknown-field.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: c\n      image: fibril/echo\n      imagePullPolicyy: Always\n",
            "spec.containers[0].imagePullPolicyy",
        ),
        (
            "missing-name.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {labels: {a: b}}\nspec:\n  ports: [{port: 80}]\n",
            "metadata.name",
        ),
    ];
    for (file, body, path) in cases {
        // A valid namespace first: it must not be created when a later document is bad.
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{}}}\n---\n{body}",
            file.trim_end_matches(".yaml")
        );
        let f = write_file(&dir, file, &text);
        let out = lab.run(&["lab", "apply", "-f", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(
            err.contains(path),
            "{file}: error does not name {path}:\n{err}"
        );
        assert!(err.contains("nothing was applied"), "{err}");
        let nss = lab.ok(&["lab", "get", "namespaces"]);
        assert!(
            !nss.contains(&format!("ns-{}", file.trim_end_matches(".yaml"))),
            "{nss}"
        );
    }
    // An unknown kind is refused too, by name.
    let f = write_file(
        &dir,
        "kind.yaml",
        "apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n",
    );
    let out = lab.run(&["lab", "apply", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Gizmo"));
}
