//! Datapath unit tests through BPF_PROG_TEST_RUN, as cilium's `bpf/tests/`: crafted
//! frames through the loaded (not attached) programs, asserting the verdict, the
//! rewritten frame, the event and the counters.
//!
//! Each test runs on a thread that has unshared a fresh, anonymous network namespace,
//! so the FIB tests can build devices and routes that vanish with the thread. Pin dirs
//! are removed by a guard, even on panic.

use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::{TestRun, TestRunOptions};

use super::*;
use crate::events::{DropReason, Event, ForwardPath, PassReason, Verdict};
use crate::maps::{Identity, MacAddr};
use crate::shared::linux::__sk_buff;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
const GONE_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 99);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 7);
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const POD_A_IFINDEX: u32 = 42;
const POD_B_IFINDEX: u32 = 43;
const TUNNEL_IFINDEX: u32 = 9;
const POD_A_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x02]);
const POD_A_NODE_MAC: MacAddr = MacAddr([0x02, 0xee, 0, 0, 0, 0x02]);
/// What the sending pod addresses its frames to and from.
const SENDER_DST_MAC: MacAddr = MacAddr([0x02, 0xee, 0, 0, 0, 0x03]);
const SENDER_SRC_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x03]);
const SPORT: u16 = 40_000;
const DPORT: u16 = 8080;

static SEQ: AtomicU32 = AtomicU32::new(0);

mod policy;
mod services;

/// A pin dir on bpffs, removed on drop.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Self {
        crate::ensure_bpffs().expect("bpffs");
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        Pins(
            PathBuf::from(fibril_core::consts::BPFFS_MOUNT)
                .join(format!("fibt{}u{n}", std::process::id() % 100_000)),
        )
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a thread in a fresh network namespace; panics propagate.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `ip ARGS` in the calling thread's netns (children inherit it).
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Net sysctls resolve against the opening task's netns: this thread's.
fn sysctl(path: &str, value: &str) {
    let path = format!("/proc/sys/net/{path}");
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

fn link_index_and_mac(name: &str) -> (u32, MacAddr) {
    let out = ip(&["-o", "link", "show", name]);
    let index = out.split(':').next().unwrap().trim().parse().unwrap();
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("link/ether")
        .parse()
        .unwrap();
    (index, mac)
}

fn config(routing: RoutingMode, trace: bool) -> DatapathConfig {
    DatapathConfig {
        routing,
        node_ip: NODE_IP,
        trace_sample: trace.then_some(NonZeroU32::MIN),
    }
}

/// The endpoints and ipcache of the tests' node: pods A and B, the gateway, this
/// node's pod range (10.1.0.0/24) and another node's (10.2.0.0/24).
fn populate(dp: &mut Datapath) {
    dp.upsert_endpoint(
        POD_A,
        &Endpoint::Pod {
            ifindex: POD_A_IFINDEX,
            mac: POD_A_MAC,
            node_mac: POD_A_NODE_MAC,
            identity: Identity(100),
        },
    )
    .unwrap();
    dp.upsert_endpoint(
        POD_B,
        &Endpoint::Pod {
            ifindex: POD_B_IFINDEX,
            mac: SENDER_SRC_MAC,
            node_mac: SENDER_DST_MAC,
            identity: Identity(101),
        },
    )
    .unwrap();
    dp.upsert_endpoint(
        GATEWAY,
        &Endpoint::Host {
            identity: Identity(1),
        },
    )
    .unwrap();
    dp.upsert_remote(
        "10.1.0.0/24".parse().unwrap(),
        &Remote {
            identity: Identity(2),
            tunnel_endpoint: Some(NODE_IP),
            ..Remote::default()
        },
    )
    .unwrap();
    dp.upsert_remote(
        "10.2.0.0/24".parse().unwrap(),
        &Remote {
            identity: Identity(200),
            tunnel_endpoint: Some(PEER_NODE_IP),
            ..Remote::default()
        },
    )
    .unwrap();
}

/// An Ethernet + IPv4 + UDP frame with a valid IPv4 header checksum.
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, total: usize) -> Vec<u8> {
    let mut f = vec![0_u8; total];
    f[0..6].copy_from_slice(&SENDER_DST_MAC.0);
    f[6..12].copy_from_slice(&SENDER_SRC_MAC.0);
    f[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let ip_len = u16::try_from(total - 14).unwrap();
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = ttl;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&SPORT.to_be_bytes());
    udp[2..4].copy_from_slice(&DPORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0_u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&SENDER_SRC_MAC.0);
    f[12..14].copy_from_slice(&0x0806_u16.to_be_bytes());
    f
}

/// The one's complement sum over the header with its checksum field as is: 0 when valid
/// (for computing, call it with the field zeroed and it returns the checksum).
fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = hdr
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The device a test run happens on, as `struct __sk_buff` fields.
#[derive(Clone, Copy)]
struct Device {
    ifindex: u32,
}

struct Run {
    verdict: u32,
    frame: Vec<u8>,
}

fn run(dp: &mut Datapath, hook: Hook, frame: &[u8], dev: Option<Device>) -> Run {
    let mut out = vec![0_u8; frame.len() + 64];
    let ctx = dev.map(|d| __sk_buff {
        ifindex: d.ifindex,
        ingress_ifindex: d.ifindex,
        ..Default::default()
    });
    // SAFETY: __sk_buff is a repr(C) struct of integers; its bytes are plain data.
    let ctx_bytes = ctx.as_ref().map(|c| unsafe {
        std::slice::from_raw_parts(
            (c as *const __sk_buff).cast::<u8>(),
            std::mem::size_of::<__sk_buff>(),
        )
    });
    let res = dp
        .program(hook)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx_bytes,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    Run {
        verdict: res.return_value,
        frame: out,
    }
}

fn events(dp: &Datapath) -> Vec<Event> {
    dp.events().unwrap().drain().unwrap()
}

fn one_event(dp: &Datapath) -> Event {
    let evs = events(dp);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    evs[0]
}

fn drops(dp: &Datapath, reason: DropReason) -> u64 {
    dp.drop_counters()
        .unwrap()
        .into_iter()
        .find(|d| d.reason == reason)
        .map_or(0, |d| d.packets)
}

#[test]
fn config_problems_are_reported_together() {
    let cfg = DatapathConfig {
        routing: RoutingMode::Tunnel { device_ifindex: 0 },
        node_ip: Ipv4Addr::UNSPECIFIED,
        trace_sample: None,
    };
    // Validation comes first: no bpffs or privilege involved.
    let err = Datapath::load(std::path::Path::new("/nonexistent"), cfg).unwrap_err();
    let BpfError::Config { problems } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        problems,
        &[
            ConfigProblem::NodeIp {
                addr: Ipv4Addr::UNSPECIFIED
            },
            ConfigProblem::TunnelIfindex
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("node_ip") && text.contains("device_ifindex"),
        "{text}"
    );
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn local_destination_is_redirected_into_the_pod() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let mut dp = Datapath::load(&dir, config(RoutingMode::Native, true)).unwrap();
        populate(&mut dp);
        let frame = udp_frame(POD_B, POD_A, 64, 100);

        let r = run(&mut dp, Hook::FromPod, &frame, None);
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        // Addressed from the pod's gateway to the pod, one hop older, checksum still valid.
        assert_eq!(r.frame[0..6], POD_A_MAC.0);
        assert_eq!(r.frame[6..12], POD_A_NODE_MAC.0);
        assert_eq!(r.frame[14 + 8], 63);
        assert_eq!(ipv4_checksum(&r.frame[14..34]), 0);
        assert_eq!(r.frame[34..], frame[34..], "payload untouched");

        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Forwarded(ForwardPath::Local));
        assert_eq!(ev.hook, Hook::FromPod);
        assert_eq!((ev.src, ev.dst), (POD_B, POD_A));
        assert_eq!((ev.src_port, ev.dst_port), (SPORT, DPORT));
        assert_eq!(ev.proto, 17);
        assert_eq!(ev.out_ifindex, Some(POD_A_IFINDEX));
        assert_eq!(
            (ev.src_identity, ev.dst_identity),
            (Identity(101), Identity(100))
        );
        assert_eq!(ev.len, 100);

        // The redirect bypasses the pod veth's egress hook, so it counts as delivered.
        let counters = crate::read_endpoint_counters(&dir).unwrap();
        let a = counters
            .iter()
            .find(|c| c.ifindex == POD_A_IFINDEX)
            .unwrap();
        assert_eq!((a.to_pod_packets, a.to_pod_bytes), (1, 100));

        // The same frame arriving from the underlay or the tunnel is delivered alike.
        for hook in [Hook::FromNetdev, Hook::FromTunnel] {
            let r = run(&mut dp, hook, &frame, None);
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "{hook}");
            assert_eq!(r.frame[0..6], POD_A_MAC.0);
            let ev = one_event(&dp);
            assert_eq!(ev.hook, hook);
            assert_eq!(ev.verdict, Verdict::Forwarded(ForwardPath::Local));
        }
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn tunnel_mode_sets_the_key_and_redirects_to_the_vxlan_device() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        let routing = RoutingMode::Tunnel {
            device_ifindex: TUNNEL_IFINDEX,
        };
        let mut dp = Datapath::load(&dir, config(routing, true)).unwrap();
        populate(&mut dp);
        let frame = udp_frame(POD_B, REMOTE_POD, 64, 100);

        let r = run(&mut dp, Hook::FromPod, &frame, None);
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        // The inner frame keeps its MACs (the receiving node sets them), TTL decremented.
        assert_eq!(r.frame[0..12], frame[0..12]);
        assert_eq!(r.frame[14 + 8], 63);
        assert_eq!(ipv4_checksum(&r.frame[14..34]), 0);
        let ev = one_event(&dp);
        // FIBRIL_FWD_TUNNEL is only reported once bpf_skb_set_tunnel_key succeeded.
        assert_eq!(ev.verdict, Verdict::Forwarded(ForwardPath::Tunnel));
        assert_eq!(ev.out_ifindex, Some(TUNNEL_IFINDEX));
        assert_eq!(ev.tunnel_endpoint, Some(PEER_NODE_IP));
        assert_eq!(ev.dst_identity, Identity(200));

        // A prefix known without a tunnel endpoint is the stack's business.
        dp.upsert_remote(
            "203.0.113.0/24".parse().unwrap(),
            &Remote {
                identity: Identity(2),
                tunnel_endpoint: None,
                ..Remote::default()
            },
        )
        .unwrap();
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp_frame(POD_B, WORLD, 64, 100),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Passed(PassReason::NoTunnelEndpoint)
        );

        // TTL 1 cannot take another hop.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp_frame(POD_B, REMOTE_POD, 1, 100),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Dropped(DropReason::TtlExceeded)
        );
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn unknown_destinations_and_non_ipv4_are_passed_to_the_stack() {
    let pins = Pins::new();
    let quiet_pins = Pins::new();
    let (dir, quiet_dir) = (pins.0.clone(), quiet_pins.0.clone());
    in_fresh_netns(move || {
        let mut dp = Datapath::load(&dir, config(RoutingMode::Native, true)).unwrap();
        populate(&mut dp);

        let frame = udp_frame(POD_B, WORLD, 64, 100);
        let r = run(&mut dp, Hook::FromPod, &frame, None);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(r.frame, frame, "passed unchanged");
        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Passed(PassReason::UnknownDst));
        assert_eq!(ev.out_ifindex, None);

        let r = run(&mut dp, Hook::FromPod, &arp_frame(), None);
        assert_eq!(r.verdict, TC_ACT_OK);
        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Passed(PassReason::NotIpv4));
        assert_eq!(ev.eth_proto, 0x0806);

        // The gateway is the node's own address.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp_frame(POD_B, GATEWAY, 64, 100),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(one_event(&dp).verdict, Verdict::Passed(PassReason::ToHost));

        // From the underlay: the node's own traffic.
        let r = run(
            &mut dp,
            Hook::FromNetdev,
            &udp_frame(PEER_NODE_IP, NODE_IP, 64, 100),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Passed(PassReason::UnknownDst)
        );
        drop(dp);

        // Without tracing, passing is silent.
        let mut quiet = Datapath::load(&quiet_dir, config(RoutingMode::Native, false)).unwrap();
        populate(&mut quiet);
        let r = run(&mut quiet, Hook::FromPod, &frame, None);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(events(&quiet), []);
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn every_drop_emits_an_event_with_its_reason() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        // Tracing off: drops are reported regardless.
        let mut dp = Datapath::load(&dir, config(RoutingMode::Native, false)).unwrap();
        populate(&mut dp);

        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp_frame(POD_B, POD_A, 1, 100),
            None,
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Dropped(DropReason::TtlExceeded));
        assert_eq!(ev.out_ifindex, Some(POD_A_IFINDEX));
        assert_eq!(ev.dst_identity, Identity(100));

        let mut malformed = udp_frame(POD_B, POD_A, 64, 100);
        malformed[14] = 0x43; // IHL 3
        let r = run(&mut dp, Hook::FromPod, &malformed, None);
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Dropped(DropReason::Malformed)
        );

        // This node's range, but no such pod: from a pod, and from another node.
        for hook in [Hook::FromPod, Hook::FromNetdev, Hook::FromTunnel] {
            let r = run(&mut dp, hook, &udp_frame(POD_B, GONE_POD, 64, 100), None);
            assert_eq!(r.verdict, TC_ACT_SHOT, "{hook}");
            let ev = one_event(&dp);
            assert_eq!(ev.verdict, Verdict::Dropped(DropReason::NoEndpoint));
            assert_eq!((ev.hook, ev.dst), (hook, GONE_POD));
        }

        assert_eq!(drops(&dp, DropReason::TtlExceeded), 1);
        assert_eq!(drops(&dp, DropReason::Malformed), 1);
        assert_eq!(drops(&dp, DropReason::NoEndpoint), 3);
        assert_eq!(dp.maps().events_lost().unwrap(), 0);
    });
}

/// Native routing against a real FIB: a netns with a "pod" veth (p0) and an "underlay"
/// veth (u0, 192.0.2.1/24, MTU 1000), and routes of every kind.
#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn native_mode_follows_the_fib() {
    let pins = Pins::new();
    let dir = pins.0.clone();
    in_fresh_netns(move || {
        ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
        ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u1"]);
        for dev in ["p0", "p1", "u0", "u1"] {
            ip(&["link", "set", dev, "up"]);
        }
        ip(&["link", "set", "u0", "mtu", "1000"]);
        ip(&["addr", "add", "192.0.2.1/24", "dev", "u0"]);
        let gw_mac = "02:00:00:00:02:02";
        ip(&[
            "neigh",
            "replace",
            "192.0.2.2",
            "lladdr",
            gw_mac,
            "dev",
            "u0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "route",
            "add",
            "10.50.2.0/24",
            "via",
            "192.0.2.2",
            "dev",
            "u0",
        ]);
        ip(&[
            "route",
            "add",
            "10.50.3.0/24",
            "via",
            "192.0.2.3",
            "dev",
            "u0",
        ]);
        ip(&["route", "add", "blackhole", "10.50.4.0/24"]);
        ip(&["route", "add", "unreachable", "10.50.5.0/24"]);
        ip(&["route", "add", "prohibit", "10.50.6.0/24"]);
        sysctl("ipv4/ip_forward", "1");
        let (p0, _) = link_index_and_mac("p0");
        let (u0, u0_mac) = link_index_and_mac("u0");
        let pod_dev = Some(Device { ifindex: p0 });

        let mut dp = Datapath::load(&dir, config(RoutingMode::Native, true)).unwrap();
        populate(&mut dp);
        for prefix in ["10.50.0.0/16", "192.0.2.0/24"] {
            dp.upsert_remote(
                prefix.parse().unwrap(),
                &Remote {
                    identity: Identity(300),
                    tunnel_endpoint: None,
                    ..Remote::default()
                },
            )
            .unwrap();
        }
        let to = |last: [u8; 4]| udp_frame(POD_B, Ipv4Addr::from(last), 64, 100);

        // Next hop with a neighbour: MACs from the FIB, out of u0.
        let r = run(&mut dp, Hook::FromPod, &to([10, 50, 2, 9]), pod_dev);
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert_eq!(r.frame[0..6], gw_mac.parse::<MacAddr>().unwrap().0);
        assert_eq!(r.frame[6..12], u0_mac.0);
        assert_eq!(r.frame[14 + 8], 63);
        assert_eq!(ipv4_checksum(&r.frame[14..34]), 0);
        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Forwarded(ForwardPath::Native));
        assert_eq!(ev.out_ifindex, Some(u0));
        assert_eq!(ev.dst_identity, Identity(300));

        // Next hop without a neighbour: bpf_redirect_neigh resolves it.
        let r = run(&mut dp, Hook::FromPod, &to([10, 50, 3, 9]), pod_dev);
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert_eq!(r.frame[14 + 8], 63);
        let ev = one_event(&dp);
        assert_eq!(ev.verdict, Verdict::Forwarded(ForwardPath::NativeNeigh));
        assert_eq!(ev.out_ifindex, Some(u0));

        // Routes that say no: each its own drop reason.
        for (dst, reason) in [
            ([10, 50, 4, 9], DropReason::FibBlackhole),
            ([10, 50, 5, 9], DropReason::FibUnreachable),
            ([10, 50, 6, 9], DropReason::FibProhibit),
        ] {
            let r = run(&mut dp, Hook::FromPod, &to(dst), pod_dev);
            assert_eq!(r.verdict, TC_ACT_SHOT, "{reason}");
            assert_eq!(one_event(&dp).verdict, Verdict::Dropped(reason));
            assert_eq!(drops(&dp, reason), 1);
        }

        // The node's own address: the stack's.
        let r = run(&mut dp, Hook::FromPod, &to([192, 0, 2, 1]), pod_dev);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Passed(PassReason::FibNotForwarded)
        );

        // Larger than u0's MTU (and not GSO): the stack fragments or sends ICMP.
        let big = udp_frame(POD_B, Ipv4Addr::new(10, 50, 2, 9), 64, 1400);
        let r = run(&mut dp, Hook::FromPod, &big, pod_dev);
        assert_eq!(r.verdict, TC_ACT_OK);
        assert_eq!(r.frame, big, "passed unchanged");
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Passed(PassReason::FibFragNeeded)
        );

        // A routed hop with TTL 1.
        let r = run(
            &mut dp,
            Hook::FromPod,
            &udp_frame(POD_B, Ipv4Addr::new(10, 50, 2, 9), 1, 100),
            pod_dev,
        );
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Dropped(DropReason::TtlExceeded)
        );

        // Forwarding off on the pod's device.
        sysctl("ipv4/conf/p0/forwarding", "0");
        let r = run(&mut dp, Hook::FromPod, &to([10, 50, 2, 9]), pod_dev);
        assert_eq!(r.verdict, TC_ACT_SHOT);
        assert_eq!(
            one_event(&dp).verdict,
            Verdict::Dropped(DropReason::FibForwardingDisabled)
        );
    });
}

#[test]
#[ignore = "privileged: needs root, bpf and netns"]
fn pinned_map_of_another_shape_is_refused() {
    let pins = Pins::new();
    std::fs::create_dir_all(&pins.0).unwrap();
    let path = pins.0.join(crate::shared::MAP_ENDPOINTS);
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type", "hash", "key", "4", "value", "8", "entries", "16", "name",
        ])
        .arg(crate::shared::MAP_ENDPOINTS)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Datapath::load(&pins.0, config(RoutingMode::Native, false)).unwrap_err();
    assert!(
        matches!(&err, BpfError::IncompatiblePinnedMap { path: p, .. } if *p == path),
        "{err}"
    );
}
