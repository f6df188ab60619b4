//! Privileged: NetworkPolicy enforcement on real devices, in test namespaces. Two nodes
//! with native routing; the server pod's policy is written the way the agent writes it
//! (ipcache identities, then the endpoint's maps) and checked with real TCP and UDP
//! from a pod on the other node and from one on the same node.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::cluster::{two_nodes, Node, Pod, Routing};
use fibril_bpf::{
    DatapathMaps, DropReason, EndpointRules, Identity, PolicyDirection, PolicyMaps, Remote, Verdict,
};
use fibril_core::policy::{PolicyKey, PolicyMap, PortPrefix};
use fibril_core::services::L4Proto;
use ipnet::Ipv4Net;

const TIMEOUT: Duration = Duration::from_millis(1500);
const PORT: u16 = 8080;

fn pod_identity(p: &Pod) -> Identity {
    Identity(1000 + u32::from(p.ip.octets()[3]))
}

/// A TCP connection from `client` to `server:port` that carries data both ways.
fn tcp_works(client: &Pod, server: &Pod, port: u16) -> bool {
    let ip = server.ip;
    let listener = server
        .ns
        .enter(move || TcpListener::bind((ip, port)).expect("listen"));
    listener.set_nonblocking(true).unwrap();
    let addr = SocketAddr::from((ip, port));
    let conn = client
        .ns
        .enter(move || TcpStream::connect_timeout(&addr, TIMEOUT).ok());
    let Some(mut c) = conn else { return false };
    let deadline = Instant::now() + TIMEOUT;
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0_u8; 5];
    c.write_all(b"hello").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && s.write_all(&buf).is_ok()
        && c.read_exact(&mut buf).is_ok()
        && &buf == b"hello"
}

/// A UDP request from `client` to `server:port` and its reply.
fn udp_works(client: &Pod, server: &Pod, port: u16) -> bool {
    let (sip, cip) = (server.ip, client.ip);
    let srv = server
        .ns
        .enter(move || UdpSocket::bind((sip, port)).expect("bind"));
    let cli = client
        .ns
        .enter(move || UdpSocket::bind((cip, 0)).expect("bind"));
    srv.set_read_timeout(Some(TIMEOUT)).unwrap();
    cli.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0_u8; 16];
    if cli.send_to(b"ping", (sip, port)).is_err() {
        return false;
    }
    let Ok((n, from)) = srv.recv_from(&mut buf) else {
        return false;
    };
    srv.send_to(&buf[..n], from).is_ok() && cli.recv(&mut buf).is_ok_and(|m| &buf[..m] == b"ping")
}

/// What the agent writes for a pod on every node: its /32 ipcache entry, identity and
/// the node hosting it.
fn announce(nodes: &[&Node], pods: &[(&Pod, &Node)]) {
    for n in nodes {
        let mut maps = DatapathMaps::open(&n.pin_dir()).unwrap();
        for (p, home) in pods {
            maps.upsert_remote(
                Ipv4Net::from(p.ip),
                &Remote {
                    identity: pod_identity(p),
                    tunnel_endpoint: Some(home.ip),
                    ..Remote::default()
                },
            )
            .unwrap();
        }
    }
}

fn set(node: &Node, pod: &Pod, rules: &EndpointRules) {
    let ifindex = node.ns.ifindex(&pod.host_if);
    PolicyMaps::open(&node.pin_dir())
        .unwrap()
        .set(ifindex, rules)
        .unwrap();
}

fn policy_drops(node: &Node) -> Vec<fibril_bpf::Event> {
    node.events()
        .into_iter()
        .filter(|e| e.verdict == Verdict::Dropped(DropReason::PolicyDenied))
        .collect()
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn ingress_policy_with_real_traffic_same_node_and_across_nodes() {
    let (n1, n2) = two_nodes(63, Routing::Native);
    let client = n1.add_pod("c", 10, None);
    let other = n1.add_pod("o", 11, None);
    let server = n2.add_pod("s", 20, None);
    let neighbour = n2.add_pod("n", 21, None);
    n1.run_agent(Routing::Native, &[&client, &other], &[&n1, &n2]);
    n2.run_agent(Routing::Native, &[&server, &neighbour], &[&n1, &n2]);
    let pods = [
        (&client, &n1),
        (&other, &n1),
        (&server, &n2),
        (&neighbour, &n2),
    ];
    announce(&[&n1, &n2], &pods);

    // Unisolated: everything flows.
    assert!(tcp_works(&client, &server, PORT));
    assert!(udp_works(&neighbour, &server, PORT));

    // Default deny ingress (the empty ingress map of `podSelector: {}` with
    // policyTypes [Ingress]): TCP and UDP are cut, across nodes and on the node.
    let mut rules = EndpointRules {
        identity: pod_identity(&server),
        revision: 1,
        ingress: Some(PolicyMap::default()),
        egress: None,
    };
    set(&n2, &server, &rules);
    assert!(!tcp_works(&client, &server, PORT));
    assert!(!udp_works(&client, &server, PORT));
    assert!(!tcp_works(&neighbour, &server, PORT));
    assert!(!udp_works(&neighbour, &server, PORT));
    let drops = policy_drops(&n2);
    assert!(
        drops
            .iter()
            .any(|e| e.src == client.ip && e.dst == server.ip && e.dst_port == PORT),
        "{drops:#?}"
    );
    assert!(drops.iter().any(|e| e.src == neighbour.ip), "{drops:#?}");
    let ev = drops.iter().find(|e| e.src == client.ip).unwrap();
    assert_eq!(
        (ev.src_identity, ev.dst_identity),
        (pod_identity(&client), pod_identity(&server))
    );
    assert_eq!(ev.policy.unwrap().direction, PolicyDirection::Ingress);
    assert_eq!(ev.policy.unwrap().revision, 1);

    // Allow the client on TCP PORT: exactly that opens; and with egress isolated too
    // (nothing allowed out), the replies pass by conntrack.
    rules.revision = 2;
    rules.ingress = Some(PolicyMap::from_iter([PolicyKey::ports(
        pod_identity(&client),
        L4Proto::Tcp,
        PortPrefix::single(PORT),
    )]));
    rules.egress = Some(PolicyMap::default());
    set(&n2, &server, &rules);
    assert!(tcp_works(&client, &server, PORT));
    assert!(!tcp_works(&client, &server, PORT + 1));
    assert!(!udp_works(&client, &server, PORT));
    assert!(!tcp_works(&other, &server, PORT));
    assert!(!tcp_works(&neighbour, &server, PORT));
    // Its own connections out are denied by its egress.
    assert!(!tcp_works(&server, &neighbour, PORT));
    let drops = policy_drops(&n2);
    assert!(
        drops.iter().any(|e| e.src == server.ip
            && e.policy
                .is_some_and(|p| p.direction == PolicyDirection::Egress && p.revision == 2)),
        "{drops:#?}"
    );

    // Unisolated again: the state entry and every allow entry go.
    let ifindex = n2.ns.ifindex(&server.host_if);
    let mut maps = PolicyMaps::open(&n2.pin_dir()).unwrap();
    assert_eq!(maps.retain(&BTreeSet::new()).unwrap(), vec![ifindex]);
    assert!(tcp_works(&other, &server, PORT));
    assert!(udp_works(&neighbour, &server, PORT));
}
