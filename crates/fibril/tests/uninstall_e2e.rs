//! End-to-end: `fibril uninstall --node N` on a lab in tunnel mode with cluster-pool IPAM.
//! Refused while pods on the node use fibril's network (and the agent is started again);
//! with `--force`, nothing of fibril remains in the node's namespace (no veth, no VXLAN
//! device, no program on the uplink, no CNI config) or under `/sys/fs/bpf/fibril/<node>`,
//! the node's block is back in the pool, and its agent stays stopped. The other node is
//! untouched.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. The lab has a unique `fibt…` name and is removed on drop.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::{echo_pod, ready, wait_for, Lab};

/// Programs attached at tc ingress and egress of `ifname` in `netns`.
fn tcx_attached(netns: &str, ifname: &str) -> usize {
    let ns = fibril_netlink::NetNs::open(netns).unwrap();
    ns.run(|| {
        [fibril_bpf::Hook::FromNetdev, fibril_bpf::Hook::ToPod]
            .into_iter()
            .map(|h| fibril_bpf::tcx_programs(ifname, h).map_or(0, |p| p.len()))
            .sum::<usize>()
    })
    .unwrap()
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn uninstall_refuses_with_pods_then_leaves_nothing_of_fibril_on_the_node() {
    let lab = Lab::up(2, &["--routing", "tunnel", "--ipam", "cluster-pool"]);
    let (n1, n2) = (lab.node(1), lab.node(2));
    let pins = Path::new(fibril_core::consts::BPF_PIN_ROOT).join(&n2);
    let conf_dir = lab.state_dir().join("nodes").join(&n2).join("cni/net.d");
    assert!(pins.exists() && conf_dir.join("05-fibril.conflist").exists());
    assert!(tcx_attached(&n2, "eth0") > 0 && tcx_attached(&n2, "fibril_vxlan") > 0);
    let block = lab.status(&n2)["ipam"]["nodeCidr"]
        .as_str()
        .unwrap()
        .to_string();

    // A pod on node 2: uninstall is refused, naming it, and the agent comes back.
    let m = lab.state_root.join("pod.yaml");
    std::fs::write(&m, echo_pod("web", Some(&n2))).unwrap();
    lab.ok(&["lab", "apply", "-f", m.to_str().unwrap()]);
    wait_for("the pod Ready", Duration::from_secs(60), || {
        ready(&lab.json(&["lab", "get", "pods", "web", "-o", "json"])).then_some(())
    });
    let out = lab.run(&["uninstall", "--node", &n2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("default/web") && err.contains("drain the node"),
        "{err}"
    );
    assert!(err.contains("started again"), "{err}");
    wait_for("the agent back and ready", Duration::from_secs(60), || {
        let out = lab.run(&["status", "--node", &n2, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["ready"] == true).then_some(())
    });
    assert!(
        conf_dir.join("05-fibril.conflist").exists(),
        "nothing removed"
    );

    // Forced: everything of fibril goes from node 2.
    let out = lab.json(&["uninstall", "--node", &n2, "--force", "-o", "json"]);
    let removed: Vec<&str> = out["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(removed.iter().any(|r| r.starts_with("CNI config")), "{out}");
    assert!(removed.iter().any(|r| r.contains("VXLAN device")), "{out}");
    assert_eq!(out["releasedBlocks"][0], block.as_str(), "{out}");

    assert!(!pins.exists(), "{} remains", pins.display());
    let left: Vec<_> = std::fs::read_dir(&conf_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let links = lab.ok(&["lab", "exec", "--node", &n2, "--", "ip", "-o", "link"]);
    assert!(
        !links.contains("fibril_vxlan") && !links.contains(": fib"),
        "{links}"
    );
    let routes = lab.ok(&["lab", "exec", "--node", &n2, "--", "ip", "route"]);
    assert!(
        !routes.contains("fib") && !routes.contains("fibril"),
        "{routes}"
    );
    wait_for(
        "programs detached from eth0",
        Duration::from_secs(10),
        || (tcx_attached(&n2, "eth0") == 0).then_some(()),
    );
    assert!(!lab
        .state_dir()
        .join("nodes")
        .join(&n2)
        .join("agent")
        .exists());
    // The block is back in the pool, the node's FibrilNode gone.
    let pool = lab.json(&["lab", "get", "fibrilippools", "default", "-o", "json"]);
    let blocks = pool["status"]["blocks"].as_object().unwrap();
    assert!(!blocks.values().any(|n| n == n2.as_str()), "{pool}");
    let out = lab.run(&["lab", "get", "fibrilnodes", &n2]);
    assert!(!out.status.success(), "FibrilNode/{n2} is gone");
    // The agent stays stopped; `fibril status` says it is not there.
    std::thread::sleep(Duration::from_secs(2));
    let status = lab.json(&["lab", "status", "-o", "json"]);
    let agent = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == format!("fibril-agent/{n2}").as_str())
        .unwrap();
    assert_eq!(agent["state"], "stopped", "{agent}");
    assert_eq!(agent["lastExit"], "uninstalled", "{agent}");
    assert!(!lab.run(&["status", "--node", &n2]).status.success());
    // Node 1 is untouched.
    let st = lab.status(&n1);
    assert_eq!(st["ready"], true, "{st}");
    assert!(tcx_attached(&n1, "eth0") > 0);
}
