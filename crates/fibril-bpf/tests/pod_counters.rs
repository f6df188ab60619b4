//! Privileged: load the pod programs, attach them to a veth between two test netns,
//! count real traffic, survive a simulated agent restart, detach.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{NetNs, PinDir};
use fibril_bpf::shared::{MAP_EP_STATS, PROG_FROM_POD, PROG_TO_POD};
use fibril_bpf::{
    link_dir, read_endpoint_counters, tcx_programs, BpfError, EndpointCounters, Hook, PodCounters,
};

const HOST_IF: &str = "fibthost0";
const NODE_IP: &str = "10.213.0.1";
const POD_IP: &str = "10.213.0.2";
const PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP headers around each payload.
const WIRE_OVERHEAD: u64 = 14 + 20 + 8;

/// A "node" netns and a "pod" netns joined by a veth: `fibthost0` (node) <-> `eth0` (pod).
struct Topology {
    node: NetNs,
    pod: NetNs,
}

impl Topology {
    fn new() -> Self {
        let node = NetNs::new("n");
        let pod = NetNs::new("p");
        node.ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", HOST_IF]);
        node.ip(&["link", "set", HOST_IF, "up"]);
        pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        Topology { node, pod }
    }

    /// Sends `count` UDP datagrams from the pod to the node and waits for each echo.
    /// Sockets keep the netns they were created in, so only their creation needs setns.
    fn exchange_udp(&self, count: u64) {
        let server = self
            .node
            .enter(|| UdpSocket::bind((NODE_IP, 0)).expect("bind in node netns"));
        let client = self
            .pod
            .enter(|| UdpSocket::bind((POD_IP, 0)).expect("bind in pod netns"));
        let timeout = Some(Duration::from_secs(5));
        server.set_read_timeout(timeout).unwrap();
        client.set_read_timeout(timeout).unwrap();
        let to = server.local_addr().unwrap();
        let payload = [0x5a_u8; PAYLOAD];
        let mut buf = [0_u8; 2048];
        for _ in 0..count {
            client.send_to(&payload, to).expect("send from pod");
            let (n, from) = server.recv_from(&mut buf).expect("node receives");
            server.send_to(&buf[..n], from).expect("node replies");
            let n = client.recv(&mut buf).expect("pod receives the reply");
            assert_eq!(n, PAYLOAD);
        }
    }

    fn host_ifindex(&self) -> u32 {
        let out = self.node.ip(&["-j", "link", "show", HOST_IF]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["ifindex"].as_u64().expect("ifindex") as u32
    }
}

fn counters_of(pin_dir: &Path, ifindex: u32) -> Option<EndpointCounters> {
    read_endpoint_counters(pin_dir)
        .expect("read pinned counters")
        .into_iter()
        .find(|c| c.ifindex == ifindex)
}

fn attached_program_names(node: &NetNs, hook: Hook) -> Vec<String> {
    node.enter(move || {
        tcx_programs(HOST_IF, hook)
            .expect("query tcx")
            .iter()
            .map(|p| p.name_as_str().unwrap_or_default().to_string())
            .collect()
    })
}

/// Counts read by a separate process (bpftool) from the pinned map, summed over CPUs.
fn bpftool_counts(pin_dir: &Path, ifindex: u32) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join(MAP_EP_STATS))
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let entry = entries
        .as_array()?
        .iter()
        .find(|e| e["formatted"]["key"]["ifindex"].as_u64() == Some(u64::from(ifindex)))?;
    let mut from = 0;
    let mut to = 0;
    for cpu in entry["formatted"]["values"].as_array()? {
        from += cpu["value"]["from_pod_packets"].as_u64()?;
        to += cpu["value"]["to_pod_packets"].as_u64()?;
    }
    Some((from, to))
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn counts_pod_traffic_and_survives_agent_restart() {
    let pins = PinDir::new();
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    const DATAGRAMS: u64 = 5;

    // First agent: load, attach (twice: idempotent), then exit.
    let pin_dir = pins.path.clone();
    let attached = topo.node.enter(move || {
        let mut pc = PodCounters::load(&pin_dir).expect("load");
        pc.attach(HOST_IF).expect("attach");
        pc.attach(HOST_IF).expect("attach again");
        pc.attached()
    });
    assert_eq!(attached, vec![HOST_IF.to_string()]);
    assert_eq!(
        attached_program_names(&topo.node, Hook::FromPod),
        vec![PROG_FROM_POD]
    );
    assert_eq!(
        attached_program_names(&topo.node, Hook::ToPod),
        vec![PROG_TO_POD]
    );
    assert!(link_dir(&pins.path, ifindex).join(PROG_FROM_POD).exists());

    // The agent is gone: the pinned links keep counting.
    topo.exchange_udp(DATAGRAMS);
    let c1 = counters_of(&pins.path, ifindex).expect("an entry for the host veth");
    assert!(c1.from_pod_packets >= DATAGRAMS, "from pod: {:?}", c1);
    assert!(c1.to_pod_packets >= DATAGRAMS, "to pod: {:?}", c1);
    let wire = DATAGRAMS * (PAYLOAD as u64 + WIRE_OVERHEAD);
    assert!(c1.from_pod_bytes >= wire, "{c1:?}");
    assert!(c1.to_pod_bytes >= wire, "{c1:?}");

    // Another process reads the same pinned map.
    let (from, to) = bpftool_counts(&pins.path, ifindex).expect("bpftool sees the entry");
    assert!(from >= c1.from_pod_packets, "bpftool from={from}");
    assert!(to >= c1.to_pod_packets, "bpftool to={to}");

    // Second agent: reuses the pinned map and adopts the pinned links.
    let pin_dir = pins.path.clone();
    let (before_restart, old_ids, new_ids) = topo.node.enter(move || {
        let before = tcx_programs(HOST_IF, Hook::FromPod).unwrap();
        let old: Vec<u32> = before.iter().map(|p| p.id()).collect();
        let mut pc = PodCounters::load(&pin_dir).expect("reload");
        pc.attach(HOST_IF).expect("adopt");
        let new: Vec<u32> = tcx_programs(HOST_IF, Hook::FromPod)
            .unwrap()
            .iter()
            .map(|p| p.id())
            .collect();
        // The second agent exits too; its links stay pinned.
        drop(pc);
        (before.len(), old, new)
    });
    assert_eq!(before_restart, 1);
    assert_eq!(new_ids.len(), 1, "still exactly one program per hook");
    assert_ne!(
        old_ids, new_ids,
        "the link moved to the new agent's program"
    );

    topo.exchange_udp(DATAGRAMS);
    let c2 = counters_of(&pins.path, ifindex).expect("entry survives restart");
    assert!(
        c2.from_pod_packets >= c1.from_pod_packets + DATAGRAMS,
        "{:?} then {:?}",
        c1,
        c2
    );
    assert!(c2.to_pod_packets >= c1.to_pod_packets + DATAGRAMS);

    // Detach: links, pins and the endpoint's counters go away.
    let pin_dir = pins.path.clone();
    topo.node.enter(move || {
        let mut pc = PodCounters::load(&pin_dir).expect("third load");
        pc.detach(HOST_IF).expect("detach");
        pc.detach(HOST_IF).expect("detach is idempotent");
        assert!(pc.attached().is_empty());
    });
    assert!(attached_program_names(&topo.node, Hook::FromPod).is_empty());
    assert!(attached_program_names(&topo.node, Hook::ToPod).is_empty());
    assert!(!link_dir(&pins.path, ifindex).exists());
    assert!(counters_of(&pins.path, ifindex).is_none());
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn stale_link_pin_of_a_deleted_device_is_replaced() {
    let pins = PinDir::new();
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let pin_dir = pins.path.clone();
    topo.node.enter(move || {
        PodCounters::load(&pin_dir)
            .unwrap()
            .attach(HOST_IF)
            .unwrap()
    });

    // Delete the veth while the agent is down; the kernel detaches the links but their
    // pins remain. A new device may then get the same ifindex.
    topo.node.ip(&["link", "del", HOST_IF]);
    topo.node.ip(&[
        "link",
        "add",
        HOST_IF,
        "index",
        &ifindex.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &topo.pod.name,
    ]);
    topo.node.ip(&["link", "set", HOST_IF, "up"]);
    assert!(link_dir(&pins.path, ifindex).join(PROG_FROM_POD).exists());

    let pin_dir = pins.path.clone();
    topo.node.enter(move || {
        let mut pc = PodCounters::load(&pin_dir).unwrap();
        pc.attach(HOST_IF).expect("attach over a stale pin");
    });
    assert_eq!(
        attached_program_names(&topo.node, Hook::FromPod),
        vec![PROG_FROM_POD]
    );
    assert_eq!(
        attached_program_names(&topo.node, Hook::ToPod),
        vec![PROG_TO_POD]
    );
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn attach_to_a_missing_interface_names_it() {
    let pins = PinDir::new();
    let node = NetNs::new("n");
    let pin_dir = pins.path.clone();
    let err = node.enter(move || {
        PodCounters::load(&pin_dir)
            .unwrap()
            .attach("fibtnope0")
            .unwrap_err()
    });
    assert!(
        matches!(&err, BpfError::NoSuchInterface { ifname, .. } if ifname == "fibtnope0"),
        "{err}"
    );
    assert!(err.to_string().contains("fibtnope0"), "{err}");
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn reading_counters_without_a_pinned_map_is_a_clear_error() {
    let pins = PinDir::new();
    let err = read_endpoint_counters(&pins.path).unwrap_err();
    assert!(matches!(err, BpfError::Map { .. }), "{err}");
    assert!(err.to_string().contains(MAP_EP_STATS), "{err}");
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn prune_forgets_devices_deleted_while_the_agent_was_down() {
    let pins = PinDir::new();
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let pin_dir = pins.path.clone();
    topo.node.enter(move || {
        PodCounters::load(&pin_dir)
            .unwrap()
            .attach(HOST_IF)
            .unwrap()
    });
    topo.exchange_udp(2);
    assert!(counters_of(&pins.path, ifindex).is_some());

    topo.node.ip(&["link", "del", HOST_IF]);
    let pin_dir = pins.path.clone();
    let gone = topo.node.enter(move || {
        let mut pc = PodCounters::load(&pin_dir).unwrap();
        let gone = pc.prune_gone().unwrap();
        assert!(pc.prune_gone().unwrap().is_empty(), "prune is idempotent");
        gone
    });
    assert_eq!(gone, vec![ifindex]);
    assert!(!link_dir(&pins.path, ifindex).exists());
    assert!(counters_of(&pins.path, ifindex).is_none());
}
