//! Privileged: the forwarding datapath on real devices, in test namespaces.
//!
//! - one node, two pods: pod-to-pod traffic through `bpf_redirect_peer`, on a node with
//!   IPv4 forwarding off, no bridge and no route to either pod;
//! - two nodes on a fabric veth, one pod each: native routing (FIB + redirect) and
//!   tunnel routing (VXLAN, collect_md);
//! - an agent restart while traffic flows.
//!
//! Every test checks TCP, UDP and ICMP, that the endpoint counters moved, what the
//! events say, and that the node's own stack forwarded nothing (`IpForwDatagrams`).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{two_nodes, Node, Pod, Routing, FABRIC_IF, VXLAN_IF};
use fibril_bpf::{pinned_link, Datapath, Event, EventReader, ForwardPath, Hook, Identity, Verdict};

const TUNNEL_MTU: &str = "1450";
const UDP_ROUNDS: usize = 5;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// UDP request/response rounds from `client` to a server in `server`.
fn udp_rounds(client: &Pod, server: &Pod, rounds: usize) {
    let server_ip = server.ip;
    let srv = server
        .ns
        .enter(move || UdpSocket::bind((server_ip, 0)).expect("bind server"));
    let client_ip = client.ip;
    let cli = client
        .ns
        .enter(move || UdpSocket::bind((client_ip, 0)).expect("bind client"));
    srv.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    cli.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let to = srv.local_addr().unwrap();
    let mut buf = [0_u8; 1500];
    for i in 0..rounds {
        let msg = format!("udp {i}");
        cli.send_to(msg.as_bytes(), to).expect("send");
        let (n, from) = srv.recv_from(&mut buf).expect("server receives");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from.ip(), client.ip, "no NAT on the way");
        srv.send_to(&buf[..n], from).expect("reply");
        let n = cli.recv(&mut buf).expect("client receives the reply");
        assert_eq!(&buf[..n], msg.as_bytes());
    }
}

/// A TCP connection from `client` to `server`, 64 KiB echoed back (several full-size
/// segments each way).
fn tcp_echo(client: &Pod, server: &Pod) {
    let server_ip = server.ip;
    let listener = server
        .ns
        .enter(move || TcpListener::bind((server_ip, 0)).expect("listen"));
    let addr: SocketAddr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0_u8; 64 * 1024];
        s.read_exact(&mut buf).expect("server reads");
        s.write_all(&buf).expect("server echoes");
        peer
    });
    let mut s = client
        .ns
        .enter(move || TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).expect("client writes");
    let mut back = vec![0_u8; data.len()];
    s.read_exact(&mut back).expect("client reads the echo");
    assert!(back == data, "echo differs");
    let peer = echo.join().expect("echo thread");
    assert_eq!(peer.ip(), client.ip, "no NAT on the way");
}

fn ping(client: &Pod, server: &Pod) {
    client.ns.exec(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &server.ip.to_string()],
    );
}

/// TCP, UDP and ICMP, both ways.
fn all_traffic(a: &Pod, b: &Pod) {
    udp_rounds(a, b, UDP_ROUNDS);
    udp_rounds(b, a, UDP_ROUNDS);
    tcp_echo(a, b);
    tcp_echo(b, a);
    ping(a, b);
    ping(b, a);
}

fn forwarded(
    events: &[Event],
    hook: Hook,
    path: ForwardPath,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> usize {
    events
        .iter()
        .filter(|e| {
            e.hook == hook && e.verdict == Verdict::Forwarded(path) && e.src == src && e.dst == dst
        })
        .count()
}

fn no_drops(events: &[Event]) {
    let drops: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.verdict, Verdict::Dropped(_)))
        .collect();
    assert!(drops.is_empty(), "{drops:#?}");
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn same_node_pods_talk_through_redirect_peer() {
    let node = Node::new("n", Ipv4Addr::new(192, 168, 60, 1), "10.60.1.0/24", false);
    let a = node.add_pod("pa", 10, None);
    let b = node.add_pod("pb", 20, None);
    node.run_agent(Routing::SameNode, &[&a, &b], &[&node]);

    // Nothing but the datapath can carry this: no bridge, no route to either pod, and
    // the node's stack does not forward.
    let routes = node.ns.ip(&["-4", "route", "show", "table", "all"]);
    assert!(
        !routes.contains(&a.ip.to_string()) && !routes.contains(&b.ip.to_string()),
        "{routes}"
    );
    assert_eq!(
        node.ns
            .exec("sysctl", &["-n", "net.ipv4.ip_forward"])
            .trim(),
        "0"
    );

    let b_rx_before = b.ns.link("eth0")["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap();
    let b_host_tx_before = node.ns.link(&b.host_if)["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap();
    all_traffic(&a, &b);

    assert_eq!(node.kernel_forwarded(), 0, "the stack forwarded nothing");
    let events = node.events();
    no_drops(&events);
    assert!(forwarded(&events, Hook::FromPod, ForwardPath::Local, a.ip, b.ip) >= 10);
    assert!(forwarded(&events, Hook::FromPod, ForwardPath::Local, b.ip, a.ip) >= 10);

    // The packets entered pod b without leaving the host side of its veth.
    let b_rx = b.ns.link("eth0")["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap()
        - b_rx_before;
    let b_host_tx = node.ns.link(&b.host_if)["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap()
        - b_host_tx_before;
    let to_b = forwarded(&events, Hook::FromPod, ForwardPath::Local, a.ip, b.ip) as u64;
    assert!(
        b_rx >= to_b,
        "pod b received {b_rx}, {to_b} redirected to it"
    );
    assert!(
        b_host_tx < to_b / 2,
        "host side of b's veth transmitted {b_host_tx} of {to_b}: traffic went through the stack"
    );

    for pod in [&a, &b] {
        let c = node.counters(pod);
        assert!(c.from_pod_packets >= 10 && c.to_pod_packets >= 10, "{c:?}");
    }
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn cross_node_native_routing_through_the_fib() {
    let (n1, n2) = two_nodes(61, Routing::Native);
    let p1 = n1.add_pod("p", 10, None);
    let p2 = n2.add_pod("p", 10, None);
    // No neighbours yet: the first packets take bpf_redirect_neigh.
    for n in [&n1, &n2] {
        n.ns.ip(&["neigh", "flush", "dev", FABRIC_IF]);
    }
    n1.run_agent(Routing::Native, &[&p1], &[&n1, &n2]);
    n2.run_agent(Routing::Native, &[&p2], &[&n1, &n2]);

    all_traffic(&p1, &p2);

    let (e1, e2) = (n1.events(), n2.events());
    no_drops(&e1);
    no_drops(&e2);
    for n in [&n1, &n2] {
        assert_eq!(n.kernel_forwarded(), 0, "the stack forwarded nothing");
    }
    // Node 1 sends first, without a neighbour for node 2 (node 2 learns node 1's from
    // the ARP request that this sends).
    assert!(
        e1.iter()
            .any(|ev| ev.verdict == Verdict::Forwarded(ForwardPath::NativeNeigh)),
        "first packets resolve the next hop"
    );
    // Out of node 1 through the FIB, into p2 from node 2's underlay, and back.
    assert!(forwarded(&e1, Hook::FromPod, ForwardPath::Native, p1.ip, p2.ip) >= 5);
    assert!(forwarded(&e2, Hook::FromNetdev, ForwardPath::Local, p1.ip, p2.ip) >= 10);
    assert!(forwarded(&e2, Hook::FromPod, ForwardPath::Native, p2.ip, p1.ip) >= 5);
    assert!(forwarded(&e1, Hook::FromNetdev, ForwardPath::Local, p2.ip, p1.ip) >= 10);
    let out = e1
        .iter()
        .find(|e| e.verdict == Verdict::Forwarded(ForwardPath::Native))
        .unwrap();
    assert_eq!(out.out_ifindex, Some(n1.ns.ifindex(FABRIC_IF)));
    assert_eq!(
        out.tunnel_endpoint,
        Some(n2.ip),
        "the ipcache names the node"
    );
    assert_eq!(out.dst_identity, Identity(n2.identity));

    for (n, p) in [(&n1, &p1), (&n2, &p2)] {
        let c = n.counters(p);
        assert!(c.from_pod_packets >= 10 && c.to_pod_packets >= 10, "{c:?}");
    }
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn cross_node_tunnel_routing_through_vxlan() {
    let (n1, n2) = two_nodes(62, Routing::Tunnel);
    let p1 = n1.add_pod("p", 10, Some(TUNNEL_MTU));
    let p2 = n2.add_pod("p", 10, Some(TUNNEL_MTU));
    n1.run_agent(Routing::Tunnel, &[&p1], &[&n1, &n2]);
    n2.run_agent(Routing::Tunnel, &[&p2], &[&n1, &n2]);
    // No route to the other node's pods: only the tunnel leads there.
    assert!(!n1.ns.ip(&["route"]).contains(&n2.cidr.to_string()));

    all_traffic(&p1, &p2);

    let (e1, e2) = (n1.events(), n2.events());
    no_drops(&e1);
    no_drops(&e2);
    assert!(forwarded(&e1, Hook::FromPod, ForwardPath::Tunnel, p1.ip, p2.ip) >= 10);
    assert!(forwarded(&e2, Hook::FromTunnel, ForwardPath::Local, p1.ip, p2.ip) >= 10);
    assert!(forwarded(&e2, Hook::FromPod, ForwardPath::Tunnel, p2.ip, p1.ip) >= 10);
    assert!(forwarded(&e1, Hook::FromTunnel, ForwardPath::Local, p2.ip, p1.ip) >= 10);
    let out = e1
        .iter()
        .find(|e| e.verdict == Verdict::Forwarded(ForwardPath::Tunnel))
        .unwrap();
    assert_eq!(out.tunnel_endpoint, Some(n2.ip));
    assert_eq!(out.out_ifindex, Some(n1.ns.ifindex(VXLAN_IF)));
    for n in [&n1, &n2] {
        assert_eq!(n.kernel_forwarded(), 0, "the stack forwarded nothing");
        let rx = n.ns.link(VXLAN_IF)["stats64"]["rx"]["packets"]
            .as_u64()
            .unwrap();
        assert!(rx >= 10, "the VXLAN device decapsulated {rx} packets");
    }
}

/// A UDP request/response loop between two pods until stopped: counts the rounds and
/// the failures (a lost request or reply).
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(client: &Pod, server: &Pod) -> Self {
        let server_ip = server.ip;
        let srv = server
            .ns
            .enter(move || UdpSocket::bind((server_ip, 0)).expect("bind server"));
        let client_ip = client.ip;
        let cli = client
            .ns
            .enter(move || UdpSocket::bind((client_ip, 0)).expect("bind client"));
        let to = srv.local_addr().unwrap();
        let timeout = Some(Duration::from_secs(1));
        srv.set_read_timeout(timeout).unwrap();
        cli.set_read_timeout(timeout).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0_u8; 64];
            let mut seq: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let msg = seq.to_be_bytes();
                let round = (|| {
                    cli.send_to(&msg, to).ok()?;
                    let (n, from) = srv.recv_from(&mut buf).ok()?;
                    srv.send_to(&buf[..n], from).ok()?;
                    // Skip late replies of earlier rounds.
                    loop {
                        let n = cli.recv(&mut buf).ok()?;
                        if buf[..n] == msg {
                            return Some(());
                        }
                    }
                })();
                match round {
                    Some(()) => o.fetch_add(1, Ordering::Relaxed),
                    None => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Prober {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, rounds: u64) {
        let start = self.ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ok.load(Ordering::Relaxed) < start + rounds {
            assert!(Instant::now() < deadline, "prober stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("prober");
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn link_ids(pin_dir: &Path, ifindex: u32, hook: Hook) -> fibril_bpf::LinkIds {
    pinned_link(pin_dir, ifindex, hook)
        .expect("read pinned link")
        .unwrap_or_else(|| panic!("no pinned link for {hook} on {ifindex}"))
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn agent_restart_keeps_traffic_flowing_and_links_in_place() {
    let (n1, n2) = two_nodes(63, Routing::Native);
    let p1 = n1.add_pod("p", 10, None);
    let p2 = n2.add_pod("p", 10, None);
    n1.run_agent(Routing::Native, &[&p1], &[&n1, &n2]);
    n2.run_agent(Routing::Native, &[&p2], &[&n1, &n2]);

    // Both agents are gone already (run_agent drops the loader): traffic flows on pins.
    let prober = Prober::start(&p1, &p2);
    prober.wait_for(20);

    let pod_if = n1.ns.ifindex(&p1.host_if);
    let fabric_if = n1.ns.ifindex(FABRIC_IF);
    let hooks = [
        (pod_if, Hook::FromPod),
        (pod_if, Hook::ToPod),
        (fabric_if, Hook::FromNetdev),
    ];
    let before: Vec<_> = hooks
        .iter()
        .map(|&(i, h)| link_ids(&n1.pins.path, i, h))
        .collect();

    // The restarted agent loads new programs and adopts the links, without rewriting
    // any map: the pinned endpoints and ipcache are the previous agent's.
    let config = n1.config(Routing::Native);
    let pin_dir = n1.pin_dir();
    let host_if = p1.host_if.clone();
    let (endpoints, remotes) = n1.ns.enter(move || {
        let mut dp = Datapath::load(&pin_dir, config).expect("reload");
        dp.attach_pod(&host_if).expect("adopt pod links");
        dp.attach_underlay(FABRIC_IF).expect("adopt underlay link");
        (dp.endpoints().unwrap(), dp.remotes().unwrap())
    });
    prober.wait_for(20);
    let (ok, failed) = prober.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} rounds failed across the restart",
        ok + failed
    );

    assert_eq!(endpoints.len(), 2, "pod and gateway: {endpoints:?}");
    assert!(endpoints.iter().any(|(ip, _)| *ip == p1.ip));
    assert_eq!(remotes.len(), 2, "{remotes:?}");
    let after: Vec<_> = hooks
        .iter()
        .map(|&(i, h)| link_ids(&n1.pins.path, i, h))
        .collect();
    for ((b, a), (_, hook)) in before.iter().zip(&after).zip(&hooks) {
        assert_eq!(a.link_id, b.link_id, "{hook}: the same link");
        assert_ne!(
            a.program_id, b.program_id,
            "{hook}: now running the new program"
        );
    }
    for (ifname, hook) in [
        (p1.host_if.as_str(), Hook::FromPod),
        (FABRIC_IF, Hook::FromNetdev),
    ] {
        let name = ifname.to_string();
        let progs = n1.ns.enter(move || {
            fibril_bpf::tcx_programs(&name, hook)
                .expect("query tcx")
                .len()
        });
        assert_eq!(progs, 1, "{ifname} {hook}: exactly one program");
    }

    all_traffic(&p1, &p2);
    assert_eq!(n1.kernel_forwarded(), 0);
}

/// The events reader from an async task, as the agent runs it: tokio's AsyncFd over the
/// ring buffer's fd wakes when events arrive.
#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn events_arrive_through_tokio_async_fd() {
    let node = Node::new("n", Ipv4Addr::new(192, 168, 64, 1), "10.64.1.0/24", false);
    let a = node.add_pod("pa", 10, None);
    let b = node.add_pod("pb", 20, None);
    node.run_agent(Routing::SameNode, &[&a, &b], &[&node]);

    let reader = EventReader::open(&node.pins.path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a_ip, b_ip) = (a.ip, b.ip);
    let waiter = rt.spawn(async move {
        // SAFETY: the reader owns the ring buffer's fd for its whole life and always
        // returns that one, as `register` requires.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.to_string())
        .expect("AsyncFd");
        let mut seen = Vec::new();
        while !seen.iter().any(|e: &Event| e.src == a_ip && e.dst == b_ip) {
            let mut guard = fd.readable_mut().await.expect("readable");
            while let Some(ev) = guard.get_inner_mut().next_event() {
                seen.push(ev.expect("decodes"));
            }
            guard.clear_ready();
        }
        seen
    });
    // The task is parked on the fd before any traffic exists.
    std::thread::sleep(Duration::from_millis(100));
    udp_rounds(&a, &b, 1);
    let seen = rt
        .block_on(async { tokio::time::timeout(IO_TIMEOUT, waiter).await })
        .expect("events within the timeout")
        .expect("task");
    assert!(seen
        .iter()
        .any(|e| e.verdict == Verdict::Forwarded(ForwardPath::Local) && e.dst == b_ip));
}
