//! Privileged: the kube-proxy replacement on real sockets, in test namespaces (nodes on
//! a bridged fabric, pods behind veths, a host outside the cluster).
//!
//! Servers answer every connection (and datagram) with the backend's address and the
//! client address they saw, so each test knows which backend it reached and whether
//! the source was translated. UDP clients use connected sockets: the kernel drops a
//! reply that does not come from the address the client sent to, so every answer also
//! proves the reverse translation.
//!
//! Every test ends by checking that netfilter played no part: no iptables or nftables
//! rules in the node namespaces, and their netfilter conntrack count unchanged.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Fabric, Node, Pod, Routing};
use fibril_bpf::SERVICE_LOOPBACK;
use fibril_core::services::{
    Backend, Frontend, FrontendKind, L4Proto, Scope, ServiceEntry, ServiceName, ServiceTable,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn backend(pod: &Pod, port: u16, local: bool) -> Backend {
    Backend {
        ip: pod.ip,
        port,
        local,
        terminating: false,
    }
}

fn entry(
    kind: FrontendKind,
    ip: Ipv4Addr,
    port: u16,
    proto: L4Proto,
    backends: Vec<Backend>,
) -> ServiceEntry {
    ServiceEntry {
        service: ServiceName {
            namespace: "default".into(),
            name: "echo".into(),
        },
        port_name: String::new(),
        kind,
        scope: Scope::External,
        frontend: Frontend { ip, port, proto },
        backends,
        affinity_timeout_secs: None,
        preserve_client_ip: false,
    }
}

/// A ClusterIP service on VIP: TCP 80 -> 8080 and UDP 53 -> 5353 of each backend, as
/// seen from `node`.
fn clusterip(node: &Node, backends: &[&Pod]) -> Vec<ServiceEntry> {
    let local = |p: &Pod| node.cidr.contains(&p.ip);
    vec![
        entry(
            FrontendKind::ClusterIp,
            VIP,
            TCP_PORT,
            L4Proto::Tcp,
            backends
                .iter()
                .map(|p| backend(p, TCP_TARGET, local(p)))
                .collect(),
        ),
        entry(
            FrontendKind::ClusterIp,
            VIP,
            UDP_PORT,
            L4Proto::Udp,
            backends
                .iter()
                .map(|p| backend(p, UDP_TARGET, local(p)))
                .collect(),
        ),
    ]
}

fn table(entries: Vec<ServiceEntry>) -> ServiceTable {
    let mut t = ServiceTable { entries };
    t.normalize();
    t
}

/// TCP and UDP servers in a pod, stopped on drop. Each TCP connection is greeted with
/// "<backend ip> <client addr as seen>\n" and then echoed; each datagram is answered
/// with the same line followed by the datagram.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(pod: &Pod) -> Self {
        let ip = pod.ip;
        let (listener, udp) = pod.ns.enter(move || {
            (
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_TARGET)).expect("listen"),
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_TARGET)).expect("bind udp"),
            )
        });
        listener.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let tcp = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(30)))
                                .unwrap();
                            let _ = writeln!(conn, "{ip} {peer}");
                            let mut buf = [0_u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        let s = stop.clone();
        let udp = std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let mut reply = format!("{ip} {peer}\n").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });
        Servers {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Which backend answered, and the client address it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    backend: Ipv4Addr,
    seen_client: Ipv4Addr,
}

fn parse_answer(line: &str) -> Answer {
    let mut parts = line.split_whitespace();
    let backend = parts.next().expect("backend").parse().expect("backend ip");
    let seen: SocketAddr = parts.next().expect("peer").parse().expect("peer addr");
    let SocketAddr::V4(seen) = seen else {
        panic!("{line}")
    };
    Answer {
        backend,
        seen_client: *seen.ip(),
    }
}

/// A TCP connection from a netns (a pod or a host) to `to`, with the greeting read.
fn tcp_connect(ns: &common::NetNs, to: SocketAddrV4) -> std::io::Result<(TcpStream, Answer)> {
    let stream = ns.enter(move || TcpStream::connect_timeout(&to.into(), IO_TIMEOUT))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    Ok((stream, parse_answer(&line)))
}

fn tcp_ask(ns: &common::NetNs, to: SocketAddrV4) -> Answer {
    tcp_connect(ns, to)
        .unwrap_or_else(|e| panic!("TCP to {to}: {e}"))
        .1
}

/// A connected UDP socket in a netns: replies from anything but `to` never reach it.
fn udp_socket(ns: &common::NetNs, to: SocketAddrV4) -> UdpSocket {
    let sock = ns.enter(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        s.connect(to).expect("connect");
        s
    });
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock
}

/// Sends `payload`, returns the answer and the echoed payload.
fn udp_exchange(sock: &UdpSocket, payload: &[u8]) -> std::io::Result<(Answer, Vec<u8>)> {
    sock.send(payload)?;
    let mut buf = [0_u8; 4096];
    let n = sock.recv(&mut buf)?;
    let nl = buf[..n]
        .iter()
        .position(|&b| b == b'\n')
        .expect("answer line");
    let line = std::str::from_utf8(&buf[..nl]).expect("utf-8");
    Ok((parse_answer(line), buf[nl + 1..n].to_vec()))
}

fn udp_round(sock: &UdpSocket) -> std::io::Result<Answer> {
    udp_exchange(sock, b"hello").map(|(a, _)| a)
}

fn udp_ask(ns: &common::NetNs, to: SocketAddrV4) -> Answer {
    udp_round(&udp_socket(ns, to)).unwrap_or_else(|e| panic!("UDP to {to}: {e}"))
}

fn distinct(answers: &[Answer]) -> std::collections::BTreeSet<Ipv4Addr> {
    answers.iter().map(|a| a.backend).collect()
}

/// Netfilter's view of a node: its rules and its conntrack count.
struct Netfilter {
    conntrack: Option<u64>,
}

impl Netfilter {
    fn snapshot(node: &Node) -> Self {
        let path = "/proc/sys/net/netfilter/nf_conntrack_count";
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &node.ns.name, "cat", path])
            .output()
            .expect("ip netns exec");
        let conntrack = out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().unwrap());
        Netfilter { conntrack }
    }

    /// No rules in the node's netns, and (if the conntrack module is loaded) no
    /// connection netfilter tracked since `before`.
    fn assert_untouched(node: &Node, before: &Netfilter) {
        let rules = node.ns.exec("iptables-save", &[]);
        assert!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "iptables rules in {}: {rules}",
            node.ns.name
        );
        let nft = node.ns.exec("nft", &["list", "ruleset"]);
        assert!(nft.trim().is_empty(), "nftables in {}: {nft}", node.ns.name);
        let after = Netfilter::snapshot(node);
        assert_eq!(
            after.conntrack, before.conntrack,
            "netfilter conntrack in {} changed",
            node.ns.name
        );
    }
}

fn clusterip_matrix(net: u8, routing: Routing) {
    let fabric = Fabric::new(net, routing, 2);
    let (n1, n2) = (&fabric.nodes[0], &fabric.nodes[1]);
    let mtu = (routing == Routing::Tunnel).then_some("1450");
    let client = n1.add_pod("c", 10, mtu);
    let a = n1.add_pod("a", 20, mtu);
    let b = n2.add_pod("b", 10, mtu);
    n1.run_agent(routing, &[&client, &a], &fabric.node_refs());
    n2.run_agent(routing, &[&b], &fabric.node_refs());
    n1.sync_services(&table(clusterip(n1, &[&a, &b])));
    n2.sync_services(&table(clusterip(n2, &[&a, &b])));
    let nf: Vec<Netfilter> = fabric.nodes.iter().map(Netfilter::snapshot).collect();
    let _sa = Servers::start(&a);
    let _sb = Servers::start(&b);

    let tcp_to = SocketAddrV4::new(VIP, TCP_PORT);
    let udp_to = SocketAddrV4::new(VIP, UDP_PORT);
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for _ in 0..60 {
        tcp.push(tcp_ask(&client.ns, tcp_to));
        udp.push(udp_ask(&client.ns, udp_to));
        if distinct(&tcp).len() == 2 && distinct(&udp).len() == 2 && tcp.len() >= 10 {
            break;
        }
    }
    for answers in [&tcp, &udp] {
        assert_eq!(
            distinct(answers),
            [a.ip, b.ip].into_iter().collect(),
            "both backends, on this node and the other: {answers:?}"
        );
        assert!(
            answers.iter().all(|x| x.seen_client == client.ip),
            "backends see the client pod's own address: {answers:?}"
        );
    }
    // Datagrams larger than the MTU travel as IPv4 fragments, both ways (upstream's
    // "large requests: udp" sends 2000 bytes).
    let large: Vec<u8> = std::iter::once(b'n')
        .chain(std::iter::repeat_n(b'o', 1999))
        .collect();
    let mut large_seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (answer, echoed) = udp_exchange(&udp_socket(&client.ns, udp_to), &large)
            .expect("a fragmented datagram through the service");
        assert!(echoed == large, "echoed whole");
        large_seen.insert(answer.backend);
        if large_seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        large_seen.len(),
        2,
        "fragments reach and return from both nodes"
    );
    // A bulk transfer through the translation, to a backend on either node.
    for _ in 0..2 {
        let (mut s, _) = tcp_connect(&client.ns, tcp_to).unwrap();
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
        let mut back = vec![0_u8; data.len()];
        let mut reader = s.try_clone().unwrap();
        let echo = std::thread::spawn(move || reader.read_exact(&mut back).map(|_| back));
        s.write_all(&data).unwrap();
        assert!(echo.join().unwrap().expect("echo") == data);
    }
    for n in &fabric.nodes {
        assert_eq!(n.kernel_forwarded(), 0, "the stack forwarded nothing");
    }
    for (n, before) in fabric.nodes.iter().zip(&nf) {
        Netfilter::assert_untouched(n, before);
    }
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn clusterip_tcp_udp_same_and_cross_node_native() {
    clusterip_matrix(71, Routing::Native);
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn clusterip_tcp_udp_same_and_cross_node_tunnel() {
    clusterip_matrix(72, Routing::Tunnel);
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn pod_reaches_itself_through_its_service() {
    let fabric = Fabric::new(73, Routing::Native, 1);
    let node = &fabric.nodes[0];
    let a = node.add_pod("a", 10, None);
    node.run_agent(Routing::Native, &[&a], &fabric.node_refs());
    node.sync_services(&table(clusterip(node, &[&a])));
    let nf = Netfilter::snapshot(node);
    let _s = Servers::start(&a);

    let (mut s, answer) = tcp_connect(&a.ns, SocketAddrV4::new(VIP, TCP_PORT)).unwrap();
    assert_eq!(
        answer,
        Answer {
            backend: a.ip,
            seen_client: SERVICE_LOOPBACK
        }
    );
    s.write_all(b"ping").unwrap();
    let mut buf = [0_u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let u = udp_ask(&a.ns, SocketAddrV4::new(VIP, UDP_PORT));
    assert_eq!(u.seen_client, SERVICE_LOOPBACK);
    Netfilter::assert_untouched(node, &nf);
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn service_without_endpoints_is_refused_at_once() {
    let fabric = Fabric::new(74, Routing::Native, 1);
    let node = &fabric.nodes[0];
    let c = node.add_pod("c", 10, None);
    node.run_agent(Routing::Native, &[&c], &fabric.node_refs());
    node.sync_services(&table(clusterip(node, &[])));
    let nf = Netfilter::snapshot(node);

    let start = Instant::now();
    let err = tcp_connect(&c.ns, SocketAddrV4::new(VIP, TCP_PORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let sock = udp_socket(&c.ns, SocketAddrV4::new(VIP, UDP_PORT));
    let err = udp_round(&sock).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused at once, not timed out: {:?}",
        start.elapsed()
    );
    let drops = fibril_bpf::DatapathMaps::open(&node.pins.path)
        .unwrap()
        .drop_counters()
        .unwrap();
    let rejected = drops
        .iter()
        .find(|d| d.reason == fibril_bpf::DropReason::SvcNoBackend)
        .map_or(0, |d| d.packets);
    assert_eq!(rejected, 2, "{drops:?}");
    let events = node.events();
    assert!(events.iter().any(|e| e.verdict
        == fibril_bpf::Verdict::Dropped(fibril_bpf::DropReason::SvcNoBackend)
        && e.dst == VIP
        && e.src == c.ip));
    Netfilter::assert_untouched(node, &nf);
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn session_affinity_sticks_and_can_be_switched_live() {
    let fabric = Fabric::new(75, Routing::Native, 1);
    let node = &fabric.nodes[0];
    let c = node.add_pod("c", 10, None);
    let backends: Vec<Pod> = (0..3)
        .map(|i| node.add_pod(&format!("b{i}"), 20 + i, None))
        .collect();
    let mut pods: Vec<&Pod> = backends.iter().collect();
    pods.push(&c);
    node.run_agent(Routing::Native, &pods, &fabric.node_refs());
    let _servers: Vec<Servers> = backends.iter().map(Servers::start).collect();
    let refs: Vec<&Pod> = backends.iter().collect();
    let with_affinity = |timeout: Option<u32>| {
        let mut t = clusterip(node, &refs);
        for e in &mut t {
            e.affinity_timeout_secs = timeout;
        }
        table(t)
    };
    let to = SocketAddrV4::new(VIP, TCP_PORT);
    let nf = Netfilter::snapshot(node);

    node.sync_services(&with_affinity(Some(10800)));
    let sticky: Vec<Answer> = (0..15).map(|_| tcp_ask(&c.ns, to)).collect();
    assert_eq!(distinct(&sticky).len(), 1, "{sticky:?}");

    node.sync_services(&with_affinity(None));
    let spread: Vec<Answer> = (0..30).map(|_| tcp_ask(&c.ns, to)).collect();
    assert!(distinct(&spread).len() > 1, "{spread:?}");

    node.sync_services(&with_affinity(Some(10800)));
    let sticky: Vec<Answer> = (0..15).map(|_| tcp_ask(&c.ns, to)).collect();
    assert_eq!(distinct(&sticky).len(), 1, "{sticky:?}");
    Netfilter::assert_untouched(node, &nf);
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn backend_removal_keeps_established_tcp_and_moves_udp() {
    let fabric = Fabric::new(76, Routing::Native, 1);
    let node = &fabric.nodes[0];
    let c = node.add_pod("c", 10, None);
    let x = node.add_pod("x", 20, None);
    let y = node.add_pod("y", 30, None);
    node.run_agent(Routing::Native, &[&c, &x, &y], &fabric.node_refs());
    node.sync_services(&table(clusterip(node, &[&x, &y])));
    let nf = Netfilter::snapshot(node);
    let _sx = Servers::start(&x);
    let _sy = Servers::start(&y);
    let tcp_to = SocketAddrV4::new(VIP, TCP_PORT);
    let udp_to = SocketAddrV4::new(VIP, UDP_PORT);

    let (mut conn, first) = tcp_connect(&c.ns, tcp_to).unwrap();
    let udp = udp_socket(&c.ns, udp_to);
    let udp_first = udp_round(&udp).unwrap();
    // Remove the TCP connection's backend (and, for UDP, the flow's).
    let kept = |gone: Ipv4Addr| if gone == x.ip { &y } else { &x };
    let mut t = clusterip(node, &[kept(first.backend)]);
    t[1] = clusterip(node, &[kept(udp_first.backend)]).remove(1);
    let stats = node.sync_services(&table(t));
    assert_eq!(stats.updated, 2);
    assert!(stats.conntrack_flushed >= 2, "{stats:?}");

    // The established connection still reaches its (removed) backend.
    for round in 0..3 {
        let msg = format!("round {round}");
        conn.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0_u8; msg.len()];
        conn.read_exact(&mut buf).expect("the connection survives");
        assert_eq!(buf, msg.as_bytes());
    }
    // New connections only reach the remaining backend.
    for _ in 0..10 {
        assert_eq!(tcp_ask(&c.ns, tcp_to).backend, kept(first.backend).ip);
    }
    // The UDP flow was flushed: its next datagram is answered by the remaining one.
    assert_eq!(udp_round(&udp).unwrap().backend, kept(udp_first.backend).ip);
    Netfilter::assert_untouched(node, &nf);
}

/// NodePorts on a two-node fabric, reached from a host outside the cluster (over the
/// underlay) and from a pod:
/// - 30080 (externalTrafficPolicy Cluster), the backend on node 2: through node 1 the
///   source is masqueraded to node 1 (the reply must come back through it); through
///   node 2 (local backend) it is not;
/// - 30081 (externalTrafficPolicy Local): node 1 has no local backend (refused from
///   outside) but serves its own pods through the internal entry; node 2 keeps the
///   client's address;
/// - 30082/UDP, like 30080.
#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn nodeport_from_outside_and_from_pods() {
    let fabric = Fabric::new(77, Routing::Native, 2);
    let (n1, n2) = (&fabric.nodes[0], &fabric.nodes[1]);
    let p1 = n1.add_pod("p", 10, None);
    let b = n2.add_pod("b", 10, None);
    n1.run_agent(Routing::Native, &[&p1], &fabric.node_refs());
    n2.run_agent(Routing::Native, &[&b], &fabric.node_refs());
    let (world, world_ip) = fabric.add_host("w", 100);

    let nodeport = |node: &Node, port: u16, proto: L4Proto, target: u16| {
        entry(
            FrontendKind::NodePort,
            node.ip,
            port,
            proto,
            vec![backend(&b, target, node.cidr.contains(&b.ip))],
        )
    };
    for node in [n1, n2] {
        let mut entries = vec![
            nodeport(node, 30080, L4Proto::Tcp, TCP_TARGET),
            nodeport(node, 30082, L4Proto::Udp, UDP_TARGET),
        ];
        let mut local = nodeport(node, 30081, L4Proto::Tcp, TCP_TARGET);
        local.preserve_client_ip = true;
        if node.ip == n1.ip {
            // No local backend: the external entry is empty, the internal has all.
            let mut internal = local.clone();
            internal.scope = Scope::Internal;
            local.backends.clear();
            entries.push(internal);
        }
        entries.push(local);
        node.sync_services(&table(entries));
    }
    let nf: Vec<Netfilter> = fabric.nodes.iter().map(Netfilter::snapshot).collect();
    let _sb = Servers::start(&b);
    let at = |node: &Node, port: u16| SocketAddrV4::new(node.ip, port);

    // ETP Cluster, remote backend: masqueraded to node 1.
    assert_eq!(
        tcp_ask(&world, at(n1, 30080)),
        Answer {
            backend: b.ip,
            seen_client: n1.ip
        }
    );
    assert_eq!(udp_ask(&world, at(n1, 30082)).seen_client, n1.ip);
    // A local backend sees the client.
    assert_eq!(tcp_ask(&world, at(n2, 30080)).seen_client, world_ip);
    // A pod of node 1 to its own node's NodePort: internal, not masqueraded.
    assert_eq!(tcp_ask(&p1.ns, at(n1, 30080)).seen_client, p1.ip);

    // ETP Local.
    assert_eq!(tcp_ask(&world, at(n2, 30081)).seen_client, world_ip);
    let err = tcp_connect(&world, at(n1, 30081)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(tcp_ask(&p1.ns, at(n1, 30081)).seen_client, p1.ip);

    // Several connections at once through the masquerade get distinct ports.
    let conns: Vec<(TcpStream, Answer)> = (0..5)
        .map(|_| tcp_connect(&world, at(n1, 30080)).unwrap())
        .collect();
    for (mut s, _) in conns {
        s.write_all(b"x").unwrap();
        let mut buf = [0_u8; 1];
        s.read_exact(&mut buf).unwrap();
    }
    let ct = fibril_bpf::ServiceMaps::open(&n1.pins.path)
        .unwrap()
        .conntrack()
        .unwrap();
    let masq_ports: std::collections::BTreeSet<u16> = ct
        .iter()
        .filter(|e| e.snat && e.direction == fibril_bpf::CtDirection::Forward)
        .map(|e| e.nat_src.port())
        .collect();
    assert!(masq_ports.len() >= 6, "{masq_ports:?}");
    assert!(masq_ports
        .iter()
        .all(|p| fibril_bpf::services::SNAT_PORTS.contains(p)));

    for (n, before) in fabric.nodes.iter().zip(&nf) {
        Netfilter::assert_untouched(n, before);
    }
}

/// A backend that does not listen on the target port refuses, as the pod itself would:
/// TCP with its stack's RST, UDP with its ICMP port unreachable, both translated so
/// that the client's socket (connected to the VIP) sees them.
#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn a_backend_not_listening_refuses_through_the_service() {
    let fabric = Fabric::new(78, Routing::Native, 2);
    let (n1, n2) = (&fabric.nodes[0], &fabric.nodes[1]);
    let c = n1.add_pod("c", 10, None);
    let b = n2.add_pod("b", 10, None);
    n1.run_agent(Routing::Native, &[&c], &fabric.node_refs());
    n2.run_agent(Routing::Native, &[&b], &fabric.node_refs());
    n1.sync_services(&table(clusterip(n1, &[&b])));
    let nf = Netfilter::snapshot(n1);

    let start = Instant::now();
    let err = tcp_connect(&c.ns, SocketAddrV4::new(VIP, TCP_PORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let sock = udp_socket(&c.ns, SocketAddrV4::new(VIP, UDP_PORT));
    let err = udp_round(&sock).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    Netfilter::assert_untouched(n1, &nf);
}
