//! End-to-end: NetworkPolicy enforced by fibril's datapath on a real 3-node lab
//! (`--cni fibril`), driven through the `fibril` CLI with ordinary manifests.
//!
//! One lab, in steps, each a new state the agents must reach without a restart:
//! default-deny ingress cuts TCP and UDP on the node and across nodes; an allow by
//! podSelector + port opens exactly that; an update of the policy, a pod's label change
//! and a new pod take effect; egress deny; deleting a policy opens again. Drops are
//! reported as `policy_denied` with both endpoints in `fibril status`.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs it with
//! `--include-ignored`. The lab has a unique `fibt…` name and is removed on drop.

use std::time::Duration;

use serde_json::Value;

mod common;

use common::{ensure_fibril_cni, ready, wait_for, Lab};

const NS: &str = "np";
/// How long a change may take to reach every agent.
const CONVERGE: Duration = Duration::from_secs(30);

fn pod(name: &str, node: &str, labels: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  labels: {labels}
spec:
  nodeName: {node}
  containers:
    - name: echo
      image: fibril/echo
      ports:
        - {{name: http, containerPort: 8080, protocol: TCP}}
        - {{name: udp-echo, containerPort: 9090, protocol: UDP}}
"#
    )
}

const DENY_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: np}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

fn allow_clients(udp: bool) -> String {
    let udp = if udp {
        "\n        - {protocol: UDP, port: 9090}"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-clients, namespace: np}}
spec:
  podSelector: {{matchLabels: {{app: srv}}}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {{matchLabels: {{role: client}}}}
      ports:
        - {{protocol: TCP, port: 8080}}{udp}
"#
    )
}

const DENY_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: np}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
"#;

struct NetpolLab {
    lab: Lab,
}

impl NetpolLab {
    fn apply(&self, name: &str, yaml: &str) {
        let f = self.lab.state_root.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        self.lab.ok(&["lab", "apply", "-f", f.to_str().unwrap()]);
    }

    fn delete(&self, name: &str, yaml: &str) {
        let f = self.lab.state_root.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        self.lab.ok(&["lab", "delete", "-f", f.to_str().unwrap()]);
    }

    fn pods(&self) -> Vec<Value> {
        let v = self
            .lab
            .json(&["lab", "get", "pods", "-n", NS, "-o", "json"]);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    fn wait_ready(&self, names: &[&str]) {
        wait_for("Ready pods", Duration::from_secs(90), || {
            let pods = self.pods();
            names
                .iter()
                .all(|n| pods.iter().any(|p| p["metadata"]["name"] == *n && ready(p)))
                .then_some(())
        });
    }

    fn ip(&self, name: &str) -> String {
        self.pods()
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .and_then(|p| p["status"]["podIP"].as_str())
            .unwrap_or_else(|| panic!("no IP for {name}"))
            .to_string()
    }

    fn exec(&self, pod: &str, cmd: &str) -> Option<String> {
        let out = self
            .lab
            .run(&["lab", "exec", "-n", NS, pod, "--", "sh", "-c", cmd]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// TCP: `from` gets `to`'s hostname over HTTP.
    fn tcp(&self, from: &str, to: &str) -> bool {
        let ip = self.ip(to);
        self.exec(
            from,
            &format!("curl -s --max-time 2 http://{ip}:8080/hostname"),
        )
        .is_some_and(|b| b == to)
    }

    /// UDP: `from` gets `to`'s hostname from its UDP echo.
    fn udp(&self, from: &str, to: &str) -> bool {
        let ip = self.ip(to);
        self.exec(from, &format!("printf hostname | nc -u -w2 {ip} 9090"))
            .is_some_and(|b| b == to)
    }

    /// Waits until every (probe, from, to, expected) holds at once; on timeout, fails with
    /// the cells that did not.
    fn expect(&self, what: &str, cells: &[(&str, &str, &str, bool)]) {
        let deadline = std::time::Instant::now() + CONVERGE;
        loop {
            let wrong: Vec<String> = cells
                .iter()
                .filter(|(probe, from, to, want)| {
                    let got = match *probe {
                        "tcp" => self.tcp(from, to),
                        "udp" => self.udp(from, to),
                        p => panic!("probe {p}"),
                    };
                    got != *want
                })
                .map(|(probe, from, to, want)| {
                    format!(
                        "{probe} {from} -> {to}: expected {}",
                        if *want { "open" } else { "closed" }
                    )
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {} cells wrong after {CONVERGE:?}:\n{}",
                wrong.len(),
                wrong.join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn policy_status(&self, node: &str) -> Value {
        self.lab.status(node)["policy"].clone()
    }
}

#[test]
#[ignore = "privileged: needs root, netns, BPF and a lab"]
fn network_policy_is_enforced_and_follows_changes_without_restarts() {
    ensure_fibril_cni();
    let lab = NetpolLab {
        lab: Lab::up(3, &["--cni", "fibril", "--routing", "native"]),
    };
    let (n1, n2) = (lab.lab.node(1), lab.lab.node(2));
    let agent_pids: Vec<i64> = (1..=3)
        .map(|i| {
            lab.lab
                .component(&format!("fibril-agent/{}", lab.lab.node(i)))
                .expect("agent component")
                .0
        })
        .collect();
    let mut pods = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n");
    for (name, node, labels) in [
        ("srv", &n1, "{app: srv}"),
        ("near", &n1, "{role: client}"),
        ("far", &n2, "{role: client}"),
        ("other", &n2, "{role: other}"),
    ] {
        pods.push_str("---");
        pods.push_str(&pod(name, node, labels));
    }
    lab.apply("pods", &pods);
    lab.wait_ready(&["srv", "near", "far", "other"]);

    // 0. No policy: everything is open, and no endpoint is isolated.
    lab.expect(
        "without policy",
        &[
            ("tcp", "near", "srv", true),
            ("tcp", "far", "srv", true),
            ("udp", "far", "srv", true),
            ("tcp", "srv", "far", true),
        ],
    );
    let st = lab.policy_status(&n1);
    assert_eq!(st["policies"], 0, "{st}");
    assert_eq!(st["isolatedEndpoints"], 0, "{st}");

    // 1. Default deny ingress: TCP and UDP closed, on the node and across nodes.
    lab.apply("deny-ingress", DENY_INGRESS);
    lab.expect(
        "default deny ingress",
        &[
            ("tcp", "near", "srv", false),
            ("udp", "near", "srv", false),
            ("tcp", "far", "srv", false),
            ("udp", "far", "srv", false),
            ("tcp", "srv", "far", false),
        ],
    );
    let st = lab.policy_status(&n1);
    assert_eq!(st["policies"], 1, "{st}");
    assert!(st["identities"].as_u64().unwrap() >= 3, "{st}");
    assert!(st["isolatedEndpoints"].as_u64().unwrap() >= 2, "{st}");
    // The drop, reported with both endpoints, the direction and the revision.
    let far_ip = lab.ip("far");
    let drop = wait_for(
        "a policy drop from far in node 1's status",
        CONVERGE,
        || {
            let st = lab.policy_status(&n1);
            st["recentDrops"].as_array().and_then(|d| {
                d.iter()
                    .find(|d| d["reason"] == "policy_denied" && d["src"] == far_ip.as_str())
                    .cloned()
            })
        },
    );
    assert_eq!(drop["srcPod"], format!("{NS}/far"), "{drop}");
    assert_eq!(drop["dstPod"], format!("{NS}/srv"), "{drop}");
    assert_eq!(drop["direction"], "ingress", "{drop}");
    assert!(drop["revision"].as_u64().unwrap() >= 1, "{drop}");
    assert!(
        matches!(drop["dstPort"].as_u64(), Some(8080 | 9090)),
        "{drop}"
    );
    // And in the human form: the reason, both pods, the port and the revision on one line.
    let human = lab.lab.ok(&["status", "--node", &n1]);
    assert!(human.contains("Policy:"), "{human}");
    let port = drop["dstPort"].as_u64().unwrap();
    let revision = drop["revision"].as_u64().unwrap();
    assert!(
        human.lines().any(|l| {
            l.trim_start().starts_with("drop:")
                && l.contains("policy denied (ingress, revision ")
                && l.contains(&format!("({NS}/far)"))
                && l.contains(&format!(":{port} ({NS}/srv)"))
        }),
        "no drop line with the reason, both pods and port {port}:\n{human}"
    );
    assert!(
        human.contains(&format!("isolated: {NS}/srv (revision {revision})")),
        "{human}"
    );

    // 2. Allow clients on TCP 8080 only: exactly that opens.
    lab.apply("allow-clients", &allow_clients(false));
    lab.expect(
        "allow clients on TCP 8080",
        &[
            ("tcp", "near", "srv", true),
            ("tcp", "far", "srv", true),
            ("udp", "far", "srv", false),
            ("tcp", "other", "srv", false),
            ("tcp", "srv", "far", false),
        ],
    );

    // 3. An update of the policy: UDP 9090 too.
    lab.apply("allow-clients", &allow_clients(true));
    lab.expect(
        "policy update adds UDP",
        &[
            ("udp", "far", "srv", true),
            ("udp", "near", "srv", true),
            ("tcp", "other", "srv", false),
        ],
    );

    // 4. A label change makes `other` a client; a new pod that is one is allowed too.
    lab.apply("relabel", &pod("other", &n2, "{role: client}"));
    lab.apply("late", &pod("late", &lab.lab.node(3), "{role: client}"));
    lab.wait_ready(&["late"]);
    lab.expect(
        "label change and new pod",
        &[("tcp", "other", "srv", true), ("tcp", "late", "srv", true)],
    );

    // 5. Egress deny for clients: their new connections are dropped where they start.
    lab.apply("deny-egress", DENY_EGRESS);
    lab.expect(
        "egress deny",
        &[("tcp", "far", "srv", false), ("tcp", "near", "srv", false)],
    );
    wait_for("an egress policy drop on node 2", CONVERGE, || {
        let st = lab.policy_status(&n2);
        st["recentDrops"].as_array().and_then(|d| {
            d.iter()
                .find(|d| d["direction"] == "egress" && d["src"] == far_ip.as_str())
                .cloned()
        })
    });

    // 6. Deleting policies opens again.
    lab.delete("deny-egress", DENY_EGRESS);
    lab.expect("egress deny deleted", &[("tcp", "far", "srv", true)]);
    lab.delete("deny-ingress", DENY_INGRESS);
    lab.delete("allow-clients", &allow_clients(true));
    lab.expect(
        "every policy deleted",
        &[("udp", "far", "srv", true), ("tcp", "srv", "far", true)],
    );
    let st = lab.policy_status(&n1);
    assert_eq!(st["policies"], 0, "{st}");
    assert_eq!(st["isolatedEndpoints"], 0, "{st}");

    // All of it without a restart.
    for (i, pid) in agent_pids.iter().enumerate() {
        let now = lab
            .lab
            .component(&format!("fibril-agent/{}", lab.lab.node(i as u8 + 1)))
            .unwrap()
            .0;
        assert_eq!(now, *pid, "agent {} was restarted", i + 1);
    }
}
