//! NetworkPolicy enforcement through BPF_PROG_TEST_RUN: verdicts by peer identity, port
//! prefix, CIDR identity and the wildcard, conntrack letting replies of allowed
//! connections through, policy after service translation, the drop event, and the
//! atomic replacement of an endpoint's entries.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use fibril_core::policy::{Direction, PolicyKey, PolicyMap, PortPrefix};
use fibril_core::services::{
    Backend, Frontend, FrontendKind, L4Proto, Scope, ServiceEntry, ServiceName, ServiceTable,
};

use super::*;
use crate::events::{PolicyDirection, PolicyVerdict};
use crate::policy::{EndpointRules, SetOutcome};

const ID_A: Identity = Identity(100);
const ID_B: Identity = Identity(101);
const ID_REMOTE: Identity = Identity(200);
const CIDR_ID: Identity = Identity(0x80_0001);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// An Ethernet + IPv4 + TCP/UDP/ICMP frame. Checksums are not computed: policy does not
/// read them, and the service layer's translation updates them incrementally.
fn frame(proto: u8, src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8) -> Vec<u8> {
    let l4 = match proto {
        6 => 20,
        _ => 8,
    };
    let mut f = vec![0_u8; 14 + 20 + l4 + 16];
    f[0..6].copy_from_slice(&SENDER_DST_MAC.0);
    f[6..12].copy_from_slice(&SENDER_SRC_MAC.0);
    f[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let total = u16::try_from(f.len() - 14).unwrap();
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let csum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    if proto != 1 {
        f[34..36].copy_from_slice(&src.port().to_be_bytes());
        f[36..38].copy_from_slice(&dst.port().to_be_bytes());
    }
    if proto == 6 {
        f[34 + 12] = 5 << 4;
        f[34 + 13] = tcp_flags;
    }
    f
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    frame(6, src, dst, flags)
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    frame(17, src, dst, 0)
}

/// The tests' node with pods A and B on veths (their veths: the egress
/// endpoint is the device a packet comes in on, which BPF_PROG_TEST_RUN needs to exist),
/// /32 ipcache entries for both, a world entry and an ipBlock prefix.
struct Node {
    dp: Datapath,
    a: Device,
    b: Device,
}

fn node(dir: &std::path::Path) -> Node {
    ip(&["link", "add", "pa", "type", "veth", "peer", "name", "pa1"]);
    ip(&["link", "add", "pb", "type", "veth", "peer", "name", "pb1"]);
    let a = Device {
        ifindex: link_index_and_mac("pa").0,
    };
    let b = Device {
        ifindex: link_index_and_mac("pb").0,
    };
    let mut dp = Datapath::load(dir, config(RoutingMode::Native, false)).unwrap();
    populate(&mut dp);
    for (ip, dev, id, mac, node_mac) in [
        (POD_A, a, ID_A, POD_A_MAC, POD_A_NODE_MAC),
        (POD_B, b, ID_B, SENDER_SRC_MAC, SENDER_DST_MAC),
    ] {
        dp.upsert_endpoint(
            ip,
            &Endpoint::Pod {
                ifindex: dev.ifindex,
                mac,
                node_mac,
                identity: id,
            },
        )
        .unwrap();
        dp.upsert_remote(
            Ipv4Net::from(ip),
            &Remote {
                identity: id,
                tunnel_endpoint: Some(NODE_IP),
                ..Remote::default()
            },
        )
        .unwrap();
    }
    dp.upsert_remote(
        "0.0.0.0/0".parse().unwrap(),
        &Remote {
            identity: Identity::WORLD,
            identity_only: true,
            ..Remote::default()
        },
    )
    .unwrap();
    dp.upsert_remote(
        "203.0.113.0/24".parse().unwrap(),
        &Remote {
            identity: Identity::WORLD,
            cidr_identity: Some(CIDR_ID),
            identity_only: true,
            ..Remote::default()
        },
    )
    .unwrap();
    Node { dp, a, b }
}

fn map(keys: &[PolicyKey]) -> PolicyMap {
    keys.iter().copied().collect()
}

fn rules(ingress: Option<&[PolicyKey]>, egress: Option<&[PolicyKey]>, rev: u64) -> EndpointRules {
    EndpointRules {
        identity: ID_A,
        revision: rev,
        ingress: ingress.map(map),
        egress: egress.map(map),
    }
}

fn policy_drop(dp: &Datapath) -> Event {
    let ev = one_event(dp);
    assert_eq!(
        ev.verdict,
        Verdict::Dropped(DropReason::PolicyDenied),
        "{ev:#?}"
    );
    ev
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn ingress_allows_by_identity_and_denies_others_with_an_event() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let Node { mut dp, a, b } = node(&dir);
        let allow_b = PolicyKey::ports(ID_B, L4Proto::Udp, PortPrefix::single(DPORT));
        let out = dp
            .policy_mut()
            .set(a.ifindex, &rules(Some(&[allow_b]), None, 7))
            .unwrap();
        assert_eq!(
            out,
            SetOutcome::Written {
                entries: 1,
                revision: 7
            }
        );

        // B (same node) to A's allowed port: delivered.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp(sa(POD_B, SPORT), sa(POD_A, DPORT)),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        // Another port: denied.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp(sa(POD_B, SPORT), sa(POD_A, DPORT + 1)),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        let ev = policy_drop(&dp);
        assert_eq!((ev.src, ev.dst), (POD_B, POD_A));
        assert_eq!((ev.src_port, ev.dst_port, ev.proto), (SPORT, DPORT + 1, 17));
        assert_eq!((ev.src_identity, ev.dst_identity), (ID_B, ID_A));
        assert_eq!(
            ev.policy,
            Some(PolicyVerdict {
                direction: PolicyDirection::Ingress,
                revision: 7
            })
        );
        // TCP to the UDP port: denied (protocols stay apart).
        let r = run(
            &mut dp,
            Hook::FromPod,
            &tcp(sa(POD_B, SPORT), sa(POD_A, DPORT), TCP_SYN),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        policy_drop(&dp);
        // A pod of another node (identity 200 by its pod range), from the underlay: denied.
        let r = run(
            &mut dp,
            Hook::FromNetdev,
            &udp(sa(REMOTE_POD, SPORT), sa(POD_A, DPORT)),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        let ev = policy_drop(&dp);
        assert_eq!((ev.src, ev.src_identity), (REMOTE_POD, ID_REMOTE));
        assert_eq!(ev.hook, Hook::FromNetdev);
        // What the stack delivers (tc egress toward the pod) is checked too.
        let r = run(
            &mut dp,
            Hook::ToPod,
            &udp(sa(REMOTE_POD, SPORT), sa(POD_A, DPORT)),
            Some(a),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(policy_drop(&dp).hook, Hook::ToPod);
        // Its node (host identity) may always reach it: the compiler's HOST entry.
        dp.upsert_remote(
            Ipv4Net::from(NODE_IP),
            &Remote {
                identity: Identity::HOST,
                identity_only: true,
                ..Remote::default()
            },
        )
        .unwrap();
        let out = dp
            .policy_mut()
            .set(
                a.ifindex,
                &rules(Some(&[allow_b, PolicyKey::all(Identity::HOST)]), None, 8),
            )
            .unwrap();
        assert_eq!(
            out,
            SetOutcome::Written {
                entries: 2,
                revision: 8
            }
        );
        let r = run(
            &mut dp,
            Hook::ToPod,
            &tcp(sa(NODE_IP, SPORT), sa(POD_A, 10250), TCP_SYN),
            Some(a),
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(drops(&dp, DropReason::PolicyDenied), 4);

        // Not isolated (no state entry): everything passes, B is never isolated here.
        assert_eq!(
            dp.policy_mut()
                .set(a.ifindex, &rules(None, None, 9))
                .unwrap(),
            SetOutcome::Removed
        );
        let r = run(
            &mut dp,
            Hook::FromNetdev,
            &udp(sa(REMOTE_POD, SPORT + 1), sa(POD_A, DPORT)),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert!(dp.policy().endpoints().unwrap().is_empty());
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn egress_matches_port_prefixes_cidr_identities_and_the_wildcard() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let Node { mut dp, a: _, b } = node(&dir);
        // B's egress: TCP 8000-8191 to A (one /3 port prefix of the range), anything to
        // the ipBlock's CIDR identity, UDP 53 to anyone.
        let range = fibril_core::policy::range_prefixes(8000, 8191);
        let mut keys: Vec<PolicyKey> = range
            .iter()
            .map(|p| PolicyKey::ports(ID_A, L4Proto::Tcp, *p))
            .collect();
        keys.push(PolicyKey::all(CIDR_ID));
        keys.push(PolicyKey::ports(
            Identity::ANY,
            L4Proto::Udp,
            PortPrefix::single(53),
        ));
        let r_b = EndpointRules {
            identity: ID_B,
            revision: 3,
            ingress: None,
            egress: Some(map(&keys)),
        };
        dp.policy_mut().set(b.ifindex, &r_b).unwrap();

        for (port, verdict) in [
            (8000, TC_ACT_REDIRECT),
            (8080, TC_ACT_REDIRECT),
            (8191, TC_ACT_REDIRECT),
            (7999, TC_ACT_SHOT),
            (8192, TC_ACT_SHOT),
        ] {
            let f = tcp(sa(POD_B, SPORT), sa(POD_A, port), TCP_SYN);
            let r = run(&mut dp, Hook::FromPod, &f, Some(b));
            assert_eq!(r.verdict, verdict, "port {port}");
        }
        let ev = events(&dp);
        assert_eq!(ev.len(), 2, "{ev:#?}");
        assert!(ev.iter().all(|e| e.policy
            == Some(PolicyVerdict {
                direction: PolicyDirection::Egress,
                revision: 3
            })));
        assert_eq!(ev[0].dst_identity, ID_A);

        // The ipBlock (203.0.113.0/24) by its CIDR identity: passed to the stack, as any
        // world destination; outside it the world identity alone is not allowed.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &tcp(sa(POD_B, SPORT), sa(WORLD, 443), TCP_SYN),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        let other = Ipv4Addr::new(198, 51, 100, 1);
        let r = run(
            &mut dp,
            Hook::FromPod,
            &tcp(sa(POD_B, SPORT), sa(other, 443), TCP_SYN),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(policy_drop(&dp).dst_identity, Identity::WORLD);

        // The wildcard: UDP 53 to anyone, nothing else.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp(sa(POD_B, SPORT), sa(other, 53)),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp(sa(POD_B, SPORT), sa(POD_A, 53)),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp(sa(POD_B, SPORT), sa(POD_A, 54)),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        // ICMP matches protocol-wide entries only.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &frame(1, sa(POD_B, 0), sa(POD_A, 0), 0),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        let r = run(
            &mut dp,
            Hook::FromPod,
            &frame(1, sa(POD_B, 0), sa(WORLD, 0), 0),
            Some(b),
        );
        assert_eq!(r.verdict, TC_ACT_OK);
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn replies_of_allowed_connections_pass_and_new_ones_are_checked() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let Node { mut dp, a, b } = node(&dir);
        // A: default deny both ways, except TCP 8080 in from B.
        let allow_b = PolicyKey::ports(ID_B, L4Proto::Tcp, PortPrefix::single(DPORT));
        dp.policy_mut()
            .set(a.ifindex, &rules(Some(&[allow_b]), Some(&[]), 1))
            .unwrap();

        let syn = tcp(sa(POD_B, SPORT), sa(POD_A, DPORT), TCP_SYN);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &syn, Some(b)).verdict,
            TC_ACT_REDIRECT
        );
        // A's SYN-ACK leaves A through its isolated egress: a reply, it passes.
        let synack = tcp(sa(POD_A, DPORT), sa(POD_B, SPORT), TCP_SYN | TCP_ACK);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &synack, Some(a)).verdict,
            TC_ACT_REDIRECT
        );
        let ack = tcp(sa(POD_B, SPORT), sa(POD_A, DPORT), TCP_ACK);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &ack, Some(b)).verdict,
            TC_ACT_REDIRECT
        );
        let data = tcp(sa(POD_A, DPORT), sa(POD_B, SPORT), TCP_ACK);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &data, Some(a)).verdict,
            TC_ACT_REDIRECT
        );
        assert!(events(&dp).is_empty());

        // A opening a connection of its own: egress denies it.
        let own = tcp(sa(POD_A, SPORT), sa(POD_B, DPORT), TCP_SYN);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &own, Some(a)).verdict,
            TC_ACT_SHOT
        );
        assert_eq!(
            policy_drop(&dp).policy.unwrap().direction,
            PolicyDirection::Egress
        );
        // A reply-looking packet of a connection that never was: denied too.
        let forged = tcp(sa(POD_A, DPORT), sa(POD_B, SPORT + 5), TCP_ACK);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &forged, Some(a)).verdict,
            TC_ACT_SHOT
        );
        policy_drop(&dp);

        // Both endpoints keep their own entries (per endpoint and direction).
        let ct = dp.policy().conntrack().unwrap();
        assert_eq!(ct.len(), 2, "only A is isolated: {ct:#?}");
        assert!(ct.iter().all(|e| e.ifindex == a.ifindex));
        assert!(ct
            .iter()
            .any(|e| e.direction == Direction::Ingress && e.src == sa(POD_B, SPORT)));

        // Flushing A's conntrack: the established connection is judged anew; its next
        // reply is now a new egress connection, denied.
        assert_eq!(dp.policy_mut().flush_conntrack(Some(a.ifindex)).unwrap(), 2);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &data, Some(a)).verdict,
            TC_ACT_SHOT
        );
        policy_drop(&dp);
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn policy_applies_to_the_backend_after_service_translation() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let Node { mut dp, a, b } = node(&dir);
        let svc = ServiceEntry {
            service: ServiceName {
                namespace: "default".into(),
                name: "web".into(),
            },
            port_name: "http".into(),
            kind: FrontendKind::ClusterIp,
            scope: Scope::External,
            frontend: Frontend {
                ip: VIP,
                port: 80,
                proto: L4Proto::Tcp,
            },
            backends: vec![Backend {
                ip: POD_A,
                port: DPORT,
                local: true,
                terminating: false,
            }],
            affinity_timeout_secs: None,
            preserve_client_ip: false,
        };
        let mut t = ServiceTable { entries: vec![svc] };
        t.normalize();
        dp.sync_services(&t).unwrap();

        // A admits B on the backend port (not the service port); B's ingress is
        // isolated with nothing allowed, so the reply passes only by conntrack.
        let allow_b = PolicyKey::ports(ID_B, L4Proto::Tcp, PortPrefix::single(DPORT));
        dp.policy_mut()
            .set(a.ifindex, &rules(Some(&[allow_b]), None, 1))
            .unwrap();
        let r_b = EndpointRules {
            identity: ID_B,
            revision: 1,
            ingress: Some(PolicyMap::default()),
            egress: Some(map(&[PolicyKey::ports(
                ID_A,
                L4Proto::Tcp,
                PortPrefix::single(DPORT),
            )])),
        };
        dp.policy_mut().set(b.ifindex, &r_b).unwrap();

        let syn = tcp(sa(POD_B, SPORT), sa(VIP, 80), TCP_SYN);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &syn, Some(b)).verdict,
            TC_ACT_REDIRECT
        );
        // The backend's reply is translated back to the VIP and passes B's ingress.
        let synack = tcp(sa(POD_A, DPORT), sa(POD_B, SPORT), TCP_SYN | TCP_ACK);
        let r = run(&mut dp, Hook::FromPod, &synack, Some(a));
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert_eq!(r.frame[26..30], VIP.octets(), "reverse-translated");
        // ... also when it comes back through the stack.
        let r = run(&mut dp, Hook::ToPod, &synack, Some(b));
        assert_eq!(r.verdict, TC_ACT_OK);
        assert!(events(&dp).is_empty());

        // B's egress no longer allows the backend: a new connection through the VIP is
        // dropped, and the event names the backend, not the frontend.
        let r_b = EndpointRules {
            egress: Some(PolicyMap::default()),
            revision: 2,
            ..r_b
        };
        dp.policy_mut().set(b.ifindex, &r_b).unwrap();
        let syn = tcp(sa(POD_B, SPORT + 1), sa(VIP, 80), TCP_SYN);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &syn, Some(b)).verdict,
            TC_ACT_SHOT
        );
        let ev = policy_drop(&dp);
        assert_eq!((ev.dst, ev.dst_port), (POD_A, DPORT));
        assert_eq!(
            ev.policy,
            Some(PolicyVerdict {
                direction: PolicyDirection::Egress,
                revision: 2
            })
        );
        // The established connection keeps going.
        let ack = tcp(sa(POD_B, SPORT), sa(VIP, 80), TCP_ACK);
        assert_eq!(
            run(&mut dp, Hook::FromPod, &ack, Some(b)).verdict,
            TC_ACT_REDIRECT
        );
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn an_endpoints_entries_are_replaced_whole_and_read_back_after_a_restart() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let Node { mut dp, a, .. } = node(&dir);
        let k1 = PolicyKey::ports(ID_B, L4Proto::Tcp, PortPrefix::single(80));
        let k2 = PolicyKey::all(ID_REMOTE);
        let r1 = rules(Some(&[k1]), Some(&[k2]), 1);
        assert_eq!(
            dp.policy_mut().set(a.ifindex, &r1).unwrap(),
            SetOutcome::Written {
                entries: 2,
                revision: 1
            }
        );
        // Same content under another revision: unchanged, the live revision stays.
        let r1b = EndpointRules {
            revision: 5,
            ..r1.clone()
        };
        assert_eq!(
            dp.policy_mut().set(a.ifindex, &r1b).unwrap(),
            SetOutcome::Unchanged
        );
        let eps = dp.policy().endpoints().unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(
            (eps[0].ifindex, eps[0].generation, eps[0].revision),
            (a.ifindex, 1, 1)
        );
        assert_eq!(eps[0].ingress, Some(map(&[k1])));
        assert_eq!(eps[0].egress, Some(map(&[k2])));

        // A second writer (a restarted agent) reads the maps back: same content is
        // unchanged; new content goes live under the next generation, the old one goes.
        let mut other = crate::policy::PolicyMaps::open(&dir).unwrap();
        assert_eq!(other.set(a.ifindex, &r1).unwrap(), SetOutcome::Unchanged);
        // A writer whose own count restarted at 1: the live revision still goes up.
        let r2 = rules(Some(&[k2]), None, 1);
        assert_eq!(
            other.set(a.ifindex, &r2).unwrap(),
            SetOutcome::Written {
                entries: 1,
                revision: 2
            }
        );
        let eps = dp.policy().endpoints().unwrap();
        assert_eq!((eps[0].generation, eps[0].revision), (2, 2));
        assert_eq!(
            (eps[0].ingress.clone(), eps[0].egress.clone()),
            (Some(map(&[k2])), None)
        );
        let r = run(
            &mut dp,
            Hook::FromNetdev,
            &tcp(sa(REMOTE_POD, SPORT), sa(POD_A, 9), TCP_SYN),
            None,
        );
        assert_eq!(
            r.verdict, TC_ACT_REDIRECT,
            "the new generation allows the remote pod"
        );
        let r = run(
            &mut dp,
            Hook::FromPod,
            &tcp(sa(POD_B, SPORT), sa(POD_A, 80), TCP_SYN),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_SHOT, "the old generation's entry is gone");
        events(&dp);

        // Entries of a generation that never went live (a writer died mid-write) are
        // garbage: the next reader deletes them.
        let stale = crate::policy::encode(a.ifindex, 7, Direction::Ingress, &k1);
        let mut trie: aya::maps::lpm_trie::LpmTrie<
            aya::maps::MapData,
            crate::shared::fibril_policy_match,
            crate::shared::fibril_policy_entry,
        > = crate::maps::open_pinned(
            &dir,
            crate::shared::MAP_POLICY,
            aya::maps::lpm_trie::LpmTrie::try_from,
        )
        .unwrap();
        trie.insert(&stale, crate::shared::fibril_policy_entry { flags: 0 }, 0)
            .unwrap();
        let mut third = crate::policy::PolicyMaps::open(&dir).unwrap();
        assert_eq!(
            third.retain(&BTreeSet::from([a.ifindex])).unwrap(),
            Vec::<u32>::new()
        );
        assert!(trie.get(&stale, 0).is_err(), "garbage collected");
        // Endpoints no longer wanted go, state first.
        assert_eq!(third.retain(&BTreeSet::new()).unwrap(), vec![a.ifindex]);
        assert!(dp.policy().endpoints().unwrap().is_empty());
        assert_eq!(trie.keys().count(), 0);
    });
}
