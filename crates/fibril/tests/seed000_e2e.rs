//! Seed 000 reproduced on a whole lab: the world side has a firewall subnet (10.0.64.0/24)
//! routed in every node, and the pod pool is 10.0.0.0/8. fibril's agent refuses to start on
//! every node, naming both ranges and where the route came from; `fibril status` and
//! `fibril lab status` show the refusal; nothing is half-configured (no conflist, no claim,
//! pods stay Pending with the scheduler's reason). A pool that swallows the fabric subnet is
//! refused the same way. `lab up` says so at once and leaves the lab up for inspection.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. Each lab has a unique `fibt…` name and is removed on drop.

use std::time::Duration;

use serde_json::Value;

mod common;

use common::{echo_pod, ensure_fibril_cni, wait_for, Lab};

const FIREWALL: &str = "10.0.64.0/24";

/// `lab up` that must fail because the agents refused; returns (stdout, stderr).
fn up_refused(lab: &Lab, nodes: u8, extra: &[&str]) -> (String, String) {
    ensure_fibril_cni();
    let n = nodes.to_string();
    let mut args = vec!["lab", "up", "--nodes", &n, "--timeout-secs", "60"];
    args.extend_from_slice(extra);
    let out = lab.run(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "lab up must fail when the agents refuse:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("fibril's agent refused to start"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("the lab is left up"), "{stdout}");
    (stdout, stderr)
}

/// The refusal as `fibril status` shows it (JSON), and the text form.
fn status_refusal(lab: &Lab, node: &str) -> (String, String) {
    let out = lab.run(&["status", "--node", node, "-o", "json"]);
    assert!(!out.status.success(), "a refusing node is not ready");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ready"], false, "{v}");
    // The agent is either between restarts (the recorded refusal) or just refusing again
    // (its own status, with the same refusal as the reason).
    let reason = v
        .pointer("/refusal/reason")
        .and_then(Value::as_str)
        .or_else(|| v["notReadyReason"].as_str())
        .unwrap_or_default()
        .to_string();
    let text = lab.run(&["status", "--node", node]);
    (reason, String::from_utf8_lossy(&text.stdout).into_owned())
}

/// Nothing of fibril is configured on a refusing node: no conflist in its CNI conf dir.
fn assert_no_conflist(lab: &Lab, node: &str) {
    let dir = lab.state_dir().join("nodes").join(node).join("cni/net.d");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{}: {files:?}", dir.display());
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn seed000_pool_over_a_routed_firewall_subnet_is_refused_on_every_node() {
    let lab = Lab::new();
    let (stdout, stderr) = up_refused(
        &lab,
        2,
        &[
            "--ipam",
            "cluster-pool",
            "--cluster-pool-cidr",
            "10.0.0.0/8",
            "--service-cidr",
            "172.31.0.0/16",
            "--world-subnet",
            FIREWALL,
        ],
    );
    // Both ranges, and where the route is: the node and its gateway and device.
    let want = |node: &str| {
        format!("pool 10.0.0.0/8 overlaps route {FIREWALL} via 172.18.0.1 dev eth0 on node {node}")
    };
    assert!(stderr.contains(&want(&lab.node(1))), "{stdout}\n{stderr}");

    // The firewall subnet is real: routed in the node, answered by the world host.
    let routes = lab.ok(&["lab", "exec", "--node", &lab.node(1), "--", "ip", "route"]);
    assert!(routes.contains(FIREWALL), "{routes}");
    lab.ok(&[
        "lab",
        "exec",
        "--node",
        &lab.node(2),
        "--",
        "ping",
        "-c1",
        "-W2",
        "10.0.64.1",
    ]);

    for i in 1..=2 {
        let node = lab.node(i);
        // fibril status, whether the agent is between restarts or refusing again.
        let (reason, text) = wait_for(
            "the refusal in fibril status",
            Duration::from_secs(30),
            || {
                let (r, t) = status_refusal(&lab, &node);
                r.contains(&want(&node)).then_some((r, t))
            },
        );
        assert!(reason.contains("seed 000"), "{reason}");
        assert!(
            text.contains("Refused:") || text.contains("refused:"),
            "{text}"
        );
        assert!(
            text.contains(FIREWALL) && text.contains("10.0.0.0/8"),
            "{text}"
        );
        assert_no_conflist(&lab, &node);
    }
    // lab status names the refusal per node.
    let st = lab.json(&["lab", "status", "-o", "json"]);
    for n in st["nodes"].as_array().unwrap() {
        let r = n["agentRefusal"].as_str().unwrap_or_default();
        assert!(r.contains(FIREWALL) && r.contains("10.0.0.0/8"), "{n}");
        assert_eq!(n["ready"], false, "{n}");
        assert!(
            n["message"].as_str().unwrap().contains("network not ready"),
            "{n}"
        );
    }
    let text = lab.ok(&["lab", "status"]);
    assert!(
        text.contains(&format!("fibril agent on {} REFUSED to start", lab.node(1))),
        "{text}"
    );
    // Nothing claimed: the pool was refused before any block was taken.
    let pools = lab.json(&["lab", "get", "fibrilippools", "-o", "json"]);
    let claimed: usize = pools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.pointer("/status/blocks")
                .and_then(Value::as_object)
                .map_or(0, |b| b.len())
        })
        .sum();
    assert_eq!(claimed, 0, "{pools}");
    let fnodes = lab.json(&["lab", "get", "fibrilnodes", "-o", "json"]);
    assert!(fnodes["items"].as_array().unwrap().is_empty(), "{fnodes}");

    // A pod stays Pending, with the reason: no node is Ready.
    let m = lab.state_root.join("pod.yaml");
    std::fs::write(&m, echo_pod("web", None)).unwrap();
    lab.ok(&["lab", "apply", "-f", m.to_str().unwrap()]);
    let pod = wait_for(
        "the pod's scheduling condition",
        Duration::from_secs(30),
        || {
            let p = lab.json(&["lab", "get", "pods", "web", "-o", "json"]);
            let c = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (c["status"] == "False").then_some((p, c))
        },
    );
    assert_eq!(pod.0["status"]["phase"], "Pending", "{}", pod.0);
    assert_eq!(pod.1["reason"], "Unschedulable", "{}", pod.1);
    assert!(
        pod.1["message"]
            .as_str()
            .unwrap()
            .contains("were not ready"),
        "{}",
        pod.1
    );
    assert!(pod.0.pointer("/status/podIP").is_none(), "{}", pod.0);
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn a_pool_over_the_fabric_subnet_is_refused_naming_both() {
    let lab = Lab::new();
    let (stdout, stderr) = up_refused(
        &lab,
        1,
        &[
            "--ipam",
            "cluster-pool",
            "--cluster-pool-cidr",
            "172.16.0.0/12",
        ],
    );
    let node = lab.node(1);
    let want = format!(
        "pool 172.16.0.0/12 overlaps node subnet 172.18.0.0/16 dev eth0 (address 172.18.0.11) on \
         node {node}"
    );
    assert!(stderr.contains(&want), "{stdout}\n{stderr}");
    let (reason, _) = wait_for(
        "the refusal in fibril status",
        Duration::from_secs(30),
        || {
            let (r, t) = status_refusal(&lab, &node);
            r.contains(&want).then_some((r, t))
        },
    );
    assert!(
        reason.contains("IPAM refused cluster pool 172.16.0.0/12"),
        "{reason}"
    );
    assert_no_conflist(&lab, &node);
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn seed000_in_kubernetes_mode_refuses_the_node_pod_cidr_over_the_firewall() {
    // The controller hands node 1 the block 10.0.0.0/17, which holds the firewall subnet.
    let lab = Lab::new();
    let (stdout, stderr) = up_refused(
        &lab,
        1,
        &[
            "--pod-cidr",
            "10.0.0.0/8",
            "--node-mask",
            "17",
            "--service-cidr",
            "172.31.0.0/16",
            "--world-subnet",
            FIREWALL,
        ],
    );
    let node = lab.node(1);
    let want = format!(
        "pod CIDR 10.0.0.0/17 overlaps route {FIREWALL} via 172.18.0.1 dev eth0 on node {node}"
    );
    assert!(stderr.contains(&want), "{stdout}\n{stderr}");
    assert_no_conflist(&lab, &node);
}
