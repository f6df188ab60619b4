//! Privileged tests: each builds its own namespaces (names start with `fibt`) and an
//! RAII guard removes them, also when the test panics. Nothing touches the root
//! namespace except reads of its sysctls to check they did not change.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fibril_netlink::{pids_in_netns, setns_pre_exec, Change, Error, NetNs, Route};
use ipnet::Ipv4Net;

const PRIV: &str = "privileged: needs root and netns";

/// A namespace that is deleted when dropped (after killing anything left inside).
struct TestNetNs(NetNs);

impl TestNetNs {
    fn new(tag: &str) -> TestNetNs {
        TestNetNs(NetNs::create(&unique(tag)).expect("create test netns"))
    }
}

impl std::ops::Deref for TestNetNs {
    type Target = NetNs;
    fn deref(&self) -> &NetNs {
        &self.0
    }
}

impl Drop for TestNetNs {
    fn drop(&mut self) {
        let ours = fibril_netlink::current_netns_inode().ok();
        if let Some(ino) = self.0.inode().ok().filter(|i| Some(*i) != ours) {
            for pid in pids_in_netns(ino) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = NetNs::delete(self.0.name());
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "fibt{}x{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// A TCP connection from `from` to `addr:port`, where a listener was opened inside
/// `to`: proves IP reachability both ways without needing ping.
fn tcp_reachable(from: &NetNs, to: &NetNs, addr: Ipv4Addr) -> bool {
    let listener = to
        .run(|| TcpListener::bind((addr, 0)))
        .unwrap()
        .expect("bind in target netns");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).ok()?;
        s.write_all(b"pong").ok()
    });
    let ok = from
        .run(|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((addr, port)),
                Duration::from_secs(3),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"ping")?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            Ok(&b == b"pong")
        })
        .unwrap()
        .unwrap_or(false);
    if !ok {
        // Unblock the accept so the thread ends.
        let _ = to.run(|| TcpStream::connect((addr, port)));
    }
    let _ = server.join();
    ok
}

fn root_sysctl(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn netns_lifecycle_is_idempotent() {
    let _ = PRIV;
    let name = unique("life");
    let ns = NetNs::create(&name).unwrap();
    let guard = TestNetNs(ns.clone());
    assert!(NetNs::list().unwrap().contains(&name));
    assert_eq!(ns.path(), std::path::Path::new("/run/netns").join(&name));
    let root = fibril_netlink::current_netns_inode().unwrap();
    assert_ne!(ns.inode().unwrap(), root);
    assert_eq!(
        NetNs::open(&name).unwrap().inode().unwrap(),
        ns.inode().unwrap()
    );
    let again = NetNs::create(&name).unwrap_err();
    assert_eq!(again.errno(), Some(nix::errno::Errno::EEXIST), "{again}");
    assert_eq!(
        NetNs::ensure(&name).unwrap().inode().unwrap(),
        ns.inode().unwrap()
    );
    // A fresh namespace has only lo, down.
    let links = ns.links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
    ns.set_up("lo").unwrap();
    assert!(ns.link("lo").unwrap().unwrap().up);
    NetNs::delete(&name).unwrap();
    NetNs::delete(&name).unwrap();
    assert!(!NetNs::list().unwrap().contains(&name));
    assert!(NetNs::open(&name).unwrap_err().is_not_found());
    // ensure recreates it.
    let recreated = NetNs::ensure(&name).unwrap();
    assert!(NetNs::list().unwrap().contains(&name));
    drop(recreated);
    drop(guard);
    assert!(!NetNs::list().unwrap().contains(&name));
    assert!(matches!(
        NetNs::create("a/b"),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn veth_addresses_routes_and_traffic() {
    let a = TestNetNs::new("a");
    let b = TestNetNs::new("b");
    a.ensure_veth("va", "vb", &b).unwrap();
    // Idempotent: same pair, same indexes.
    let before = (
        a.link("va").unwrap().unwrap(),
        b.link("vb").unwrap().unwrap(),
    );
    a.ensure_veth("va", "vb", &b).unwrap();
    let after = (
        a.link("va").unwrap().unwrap(),
        b.link("vb").unwrap().unwrap(),
    );
    assert_eq!(before.0.index, after.0.index);
    assert_eq!(before.1.index, after.1.index);
    assert_eq!(after.0.kind.as_deref(), Some("veth"));
    assert_eq!(after.0.peer_index, Some(after.1.index));
    assert_eq!(after.1.peer_index, Some(after.0.index));
    assert!(after.0.mac.is_some());
    // The peer was created in b, never in a.
    assert!(a.link("vb").unwrap().is_none());

    for (ns, dev, addr) in [(&a, "va", "10.123.0.1/24"), (&b, "vb", "10.123.0.2/24")] {
        ns.set_up("lo").unwrap();
        ns.ensure_addr(dev, net(addr)).unwrap();
        ns.ensure_addr(dev, net(addr)).unwrap();
        ns.set_up(dev).unwrap();
    }
    let addrs = a.addrs().unwrap();
    assert!(
        addrs
            .iter()
            .any(|x| x.ifname == "va" && x.addr == net("10.123.0.1/24")),
        "{addrs:?}"
    );
    assert!(tcp_reachable(&a, &b, "10.123.0.2".parse().unwrap()));
    assert!(tcp_reachable(&b, &a, "10.123.0.1".parse().unwrap()));

    // The connected route is there.
    let routes = a.routes().unwrap();
    assert!(
        routes.iter().any(|r| r.dst == net("10.123.0.0/24")
            && r.dev.as_deref() == Some("va")
            && r.link_scope),
        "{routes:?}"
    );

    // Replace a route twice (gateway, then device only), then delete it twice.
    let dst = net("10.200.0.0/16");
    let via = Route {
        dst,
        via: Some("10.123.0.2".parse().unwrap()),
        dev: Some("va".into()),
    };
    a.replace_route(&via).unwrap();
    a.replace_route(&via).unwrap();
    let r: Vec<_> = a
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == dst)
        .collect();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].via, Some("10.123.0.2".parse().unwrap()));
    a.replace_route(&Route {
        dst,
        via: None,
        dev: Some("va".into()),
    })
    .unwrap();
    let r: Vec<_> = a
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == dst)
        .collect();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].via, None);
    assert!(r[0].link_scope);
    // A default route, and host bits in dst are masked off.
    a.replace_route(&Route {
        dst: net("0.0.0.0/0"),
        via: Some("10.123.0.2".parse().unwrap()),
        dev: None,
    })
    .unwrap();
    assert!(a
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.dst == net("0.0.0.0/0")));
    a.delete_route(net("10.200.1.1/16")).unwrap();
    a.delete_route(dst).unwrap();
    a.delete_route(net("0.0.0.0/0")).unwrap();
    a.delete_route(net("0.0.0.0/0")).unwrap();
    assert!(!a
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.dst == dst || r.dst == net("0.0.0.0/0")));
    assert!(matches!(
        a.replace_route(&Route {
            dst,
            via: None,
            dev: None
        }),
        Err(Error::RouteTarget { .. })
    ));
    let missing = a
        .replace_route(&Route {
            dst,
            via: None,
            dev: Some("nope0".into()),
        })
        .unwrap_err();
    assert!(matches!(missing, Error::LinkNotFound { .. }), "{missing}");

    // Deleting one half removes both; deleting again is fine.
    a.delete_link("va").unwrap();
    a.delete_link("va").unwrap();
    assert!(b.link("vb").unwrap().is_none());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn ensure_veth_repairs_a_stale_half() {
    let a = TestNetNs::new("ra");
    let b = TestNetNs::new("rb");
    // A pair wholly inside a (as if a move never happened): `x` exists, its peer is
    // not in b.
    a.ensure_veth("x", "stale", &a).unwrap();
    assert!(a.link("stale").unwrap().is_some());
    a.ensure_veth("x", "xp", &b).unwrap();
    let x = a.link("x").unwrap().unwrap();
    let xp = b.link("xp").unwrap().unwrap();
    assert_eq!(x.peer_index, Some(xp.index));
    assert!(a.link("stale").unwrap().is_none());
    // A non-veth with the name is never replaced.
    a.ensure_bridge("br9").unwrap();
    let err = a.ensure_veth("br9", "p9", &b).unwrap_err();
    assert!(matches!(err, Error::LinkKind { .. }), "{err}");
    assert!(a.link("br9").unwrap().is_some());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn bridge_and_master() {
    let a = TestNetNs::new("br");
    let idx = a.ensure_bridge("br0").unwrap();
    assert_eq!(a.ensure_bridge("br0").unwrap(), idx);
    a.set_up("br0").unwrap();
    a.ensure_veth("p1", "p1x", &a).unwrap();
    a.set_master("p1", "br0").unwrap();
    a.set_master("p1", "br0").unwrap();
    a.set_up("p1").unwrap();
    let links = a.links().unwrap();
    let br = links.iter().find(|l| l.name == "br0").unwrap();
    let p1 = links.iter().find(|l| l.name == "p1").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    assert_eq!(p1.master, Some(idx));
    assert!(matches!(a.ensure_bridge("p1"), Err(Error::LinkKind { .. })));
    a.set_down("br0").unwrap();
    assert!(!a.link("br0").unwrap().unwrap().up);
    a.delete_link("br0").unwrap();
    assert!(a.link("br0").unwrap().is_none());
    assert!(a.link("p1").unwrap().unwrap().master.is_none());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn sysctls_change_in_the_netns_only() {
    let keys = [
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        (
            "net.ipv4.conf.all.rp_filter",
            "/proc/sys/net/ipv4/conf/all/rp_filter",
        ),
    ];
    let root_before: Vec<String> = keys.iter().map(|(_, p)| root_sysctl(p)).collect();
    let a = TestNetNs::new("sys");
    for (key, _) in keys {
        let cur = a.sysctl(key).unwrap();
        let new = if cur == "1" { "0" } else { "1" };
        a.set_sysctl(key, new).unwrap();
        assert_eq!(a.sysctl(key).unwrap(), new);
    }
    let root_after: Vec<String> = keys.iter().map(|(_, p)| root_sysctl(p)).collect();
    assert_eq!(root_before, root_after);
    assert!(matches!(
        a.set_sysctl("kernel.hostname", "x"),
        Err(Error::SysctlKey { .. })
    ));
    let missing = a.sysctl("net.ipv4.no_such_key").unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn panic_in_a_test_still_cleans_up() {
    let name = std::sync::Mutex::new(String::new());
    let res = std::panic::catch_unwind(|| {
        let ns = TestNetNs::new("panic");
        *name.lock().unwrap() = ns.name().to_string();
        ns.ensure_bridge("br0").unwrap();
        panic!("boom");
    });
    assert!(res.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(!NetNs::list().unwrap().contains(&name));
    // A panic inside `run` reaches the caller too.
    let ns = TestNetNs::new("runpanic");
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inside")).unwrap();
    }));
    assert!(res.is_err());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn children_enter_the_netns_and_are_found() {
    let ns = TestNetNs::new("proc");
    let ino = ns.inode().unwrap();
    let mut cmd = Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    setns_pre_exec(&mut cmd, &ns).unwrap();
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("net:[{ino}]")
    );
    let mut cmd = Command::new("sleep");
    cmd.arg("1000").stdin(Stdio::null());
    setns_pre_exec(&mut cmd, &ns).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    assert_eq!(pids_in_netns(ino), vec![pid]);
    // The test process itself is not counted even while a thread of it is inside.
    let seen = ns.run(|| pids_in_netns(ino)).unwrap();
    assert_eq!(seen, vec![pid]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(pids_in_netns(ino).is_empty());
    let root = fibril_netlink::current_netns_inode().unwrap();
    assert_eq!(
        std::fs::metadata("/proc/self/ns/net").unwrap().ino(),
        root,
        "the caller's namespace is unchanged"
    );
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn host_namespace_is_refused_for_changes() {
    // Name the host namespace (a bind mount under /run/netns, nothing in the network
    // changes), then check that changes through it are refused before they happen.
    // The attempted changes would be no-ops anyway: lo is up, ip_forward is rewritten
    // with its own value.
    let name = unique("host");
    let path = std::path::Path::new("/run/netns").join(&name);
    // Not a TestNetNs: that guard kills what is inside, and this is the host.
    struct Alias(String);
    impl Drop for Alias {
        fn drop(&mut self) {
            let _ = NetNs::delete(&self.0);
        }
    }
    let alias = Alias(name.clone());
    std::fs::create_dir_all("/run/netns").unwrap();
    std::fs::File::create(&path).unwrap();
    nix::mount::mount(
        Some("/proc/self/ns/net"),
        &path,
        Some("none"),
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let host = NetNs::open(&name).unwrap();
    let fwd = host.sysctl("net.ipv4.ip_forward").unwrap();
    assert_eq!(fwd, root_sysctl("/proc/sys/net/ipv4/ip_forward").trim());
    assert!(!host.links().unwrap().is_empty());
    assert!(matches!(host.set_up("lo"), Err(Error::HostNetns { .. })));
    assert!(matches!(
        host.set_sysctl("net.ipv4.ip_forward", &fwd),
        Err(Error::HostNetns { .. })
    ));
    assert!(matches!(host.run(|| ()), Err(Error::HostNetns { .. })));
    // Dropping the guard only unmounts the alias; the host namespace is not "deleted".
    drop(alias);
    assert!(!path.exists());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn a_batch_of_changes_sets_up_a_pod_in_one_session_and_stops_at_the_first_failure() {
    // The pair comes with its MTU; the same pod addressing as the test below, in one
    // `apply` per namespace.
    let node = TestNetNs::new("node");
    let pod = TestNetNs::new("pod");
    node.ensure_veth_mtu("fibtb0", "eth0", &pod, Some(1400))
        .unwrap();
    let host = node.link("fibtb0").unwrap().unwrap();
    let eth0 = pod.link("eth0").unwrap().unwrap();
    assert_eq!((host.mtu, eth0.mtu), (Some(1400), Some(1400)));
    assert_eq!(
        (host.peer_index.is_some(), eth0.peer_index.is_some()),
        (true, true)
    );
    // Idempotent, and an existing pair gets the MTU asked for.
    node.ensure_veth_mtu("fibtb0", "eth0", &pod, Some(1450))
        .unwrap();
    assert_eq!(node.link("fibtb0").unwrap().unwrap().index, host.index);
    assert_eq!(pod.link("eth0").unwrap().unwrap().mtu, Some(1450));

    let gw: Ipv4Addr = "10.98.0.1".parse().unwrap();
    let pod_ip: Ipv4Addr = "10.98.0.5".parse().unwrap();
    let host_mac = host.mac.unwrap();
    let pod_side = [
        Change::Addr {
            ifname: "eth0".into(),
            addr: net("10.98.0.5/32"),
        },
        Change::Up {
            ifname: "eth0".into(),
        },
        Change::Up {
            ifname: "lo".into(),
        },
        Change::Neigh {
            ifname: "eth0".into(),
            ip: gw,
            mac: host_mac,
        },
        Change::Route(Route {
            dst: net("10.98.0.1/32"),
            via: None,
            dev: Some("eth0".into()),
        }),
        Change::Route(Route {
            dst: net("0.0.0.0/0"),
            via: Some(gw),
            dev: Some("eth0".into()),
        }),
    ];
    pod.apply(&pod_side).unwrap();
    // Every change is "ensure" style: applying again changes nothing and succeeds.
    pod.apply(&pod_side).unwrap();
    node.apply(&[
        Change::Sysctl {
            key: "net/ipv4/conf/fibtb0/rp_filter".into(),
            value: "0".into(),
        },
        Change::Sysctl {
            key: "net.ipv4.conf.fibtb0.forwarding".into(),
            value: "1".into(),
        },
        Change::Addr {
            ifname: "lo".into(),
            addr: net("192.0.2.1/32"),
        },
        Change::Up {
            ifname: "lo".into(),
        },
        Change::Up {
            ifname: "fibtb0".into(),
        },
        Change::Route(Route {
            dst: net("10.98.0.5/32"),
            via: None,
            dev: Some("fibtb0".into()),
        }),
    ])
    .unwrap();
    assert_eq!(node.sysctl("net/ipv4/conf/fibtb0/rp_filter").unwrap(), "0");
    assert_eq!(node.sysctl("net/ipv4/conf/fibtb0/forwarding").unwrap(), "1");
    let n = pod.neighbours().unwrap();
    assert!(n
        .iter()
        .any(|e| e.ip == gw && e.permanent && e.mac == Some(host_mac)));
    assert!(pod
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.via == Some(gw)));
    assert!(tcp_reachable(&pod, &node, "192.0.2.1".parse().unwrap()));
    assert!(tcp_reachable(&node, &pod, pod_ip));

    // A failure names what failed, and nothing after it is applied.
    let err = pod
        .apply(&[
            Change::Up {
                ifname: "nosuch0".into(),
            },
            Change::Addr {
                ifname: "eth0".into(),
                addr: net("10.98.0.9/32"),
            },
        ])
        .unwrap_err();
    assert!(
        matches!(&err, Error::LinkNotFound { ifname, .. } if ifname == "nosuch0"),
        "{err}"
    );
    assert!(!pod
        .addrs()
        .unwrap()
        .iter()
        .any(|a| a.addr == net("10.98.0.9/32")));
    // Bad input is refused before anything is applied.
    let err = pod
        .apply(&[
            Change::Addr {
                ifname: "eth0".into(),
                addr: net("10.98.0.9/32"),
            },
            Change::Route(Route {
                dst: net("10.97.0.0/24"),
                via: None,
                dev: None,
            }),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::RouteTarget { .. }), "{err}");
    let err = pod
        .apply(&[Change::Sysctl {
            key: "kernel.hostname".into(),
            value: "x".into(),
        }])
        .unwrap_err();
    assert!(matches!(err, Error::SysctlKey { .. }), "{err}");
    assert!(!pod
        .addrs()
        .unwrap()
        .iter()
        .any(|a| a.addr == net("10.98.0.9/32")));
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn static_neighbour_and_link_scope_gateway_carry_traffic() {
    // The pod addressing fibril uses: a /32 in the pod, a link-scope route to a gateway no
    // interface carries, a default route via it and a permanent neighbour entry for it.
    let node = TestNetNs::new("node");
    let pod = TestNetNs::new("pod");
    node.ensure_veth("fibtn0", "eth0", &pod).unwrap();
    let host_mac = node.link("fibtn0").unwrap().unwrap().mac.unwrap();
    node.set_mtu("fibtn0", 1450).unwrap();
    pod.set_mtu("eth0", 1450).unwrap();
    assert_eq!(node.link("fibtn0").unwrap().unwrap().mtu, Some(1450));
    assert_eq!(pod.link("eth0").unwrap().unwrap().mtu, Some(1450));
    let gw: Ipv4Addr = "10.99.0.1".parse().unwrap();
    let pod_ip: Ipv4Addr = "10.99.0.5".parse().unwrap();
    pod.ensure_addr("eth0", net("10.99.0.5/32")).unwrap();
    pod.set_up("eth0").unwrap();
    pod.replace_neigh("eth0", gw, host_mac).unwrap();
    pod.replace_neigh("eth0", gw, host_mac).unwrap();
    pod.replace_route(&Route {
        dst: net("10.99.0.1/32"),
        via: None,
        dev: Some("eth0".into()),
    })
    .unwrap();
    pod.replace_route(&Route {
        dst: net("0.0.0.0/0"),
        via: Some(gw),
        dev: Some("eth0".into()),
    })
    .unwrap();
    node.ensure_addr("lo", net("192.0.2.1/32")).unwrap();
    node.set_up("lo").unwrap();
    node.set_up("fibtn0").unwrap();
    node.replace_route(&Route {
        dst: net("10.99.0.5/32"),
        via: None,
        dev: Some("fibtn0".into()),
    })
    .unwrap();
    let n = pod.neighbours().unwrap();
    let e = n.iter().find(|e| e.ip == gw).expect("the gateway entry");
    assert!(
        e.permanent && e.mac == Some(host_mac) && e.ifname == "eth0",
        "{e:?}"
    );
    assert!(tcp_reachable(&pod, &node, "192.0.2.1".parse().unwrap()));
    assert!(tcp_reachable(&node, &pod, pod_ip));
    pod.delete_neigh("eth0", gw).unwrap();
    pod.delete_neigh("eth0", gw).unwrap();
    pod.delete_neigh("nosuch", gw).unwrap();
    assert!(!pod
        .neighbours()
        .unwrap()
        .iter()
        .any(|e| e.ip == gw && e.permanent));
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn vxlan_external_device_is_ensured_and_repaired() {
    let ns = TestNetNs::new("vx");
    let opts = fibril_netlink::VxlanOptions {
        name: "fibt_vxlan".into(),
        port: 8472,
        mtu: None,
    };
    ns.ensure_vxlan(&opts).unwrap();
    let first = ns.vxlan("fibt_vxlan").unwrap().unwrap();
    assert!(first.external, "{first:?}");
    assert_eq!(first.port, Some(8472));
    ns.ensure_vxlan(&opts).unwrap();
    assert_eq!(
        ns.vxlan("fibt_vxlan").unwrap().unwrap().link.index,
        first.link.index,
        "reused"
    );
    ns.ensure_vxlan(&fibril_netlink::VxlanOptions {
        port: 4789,
        ..opts.clone()
    })
    .unwrap();
    assert_eq!(ns.vxlan("fibt_vxlan").unwrap().unwrap().port, Some(4789));
    ns.ensure_bridge("fibtbr").unwrap();
    assert!(matches!(ns.vxlan("fibtbr"), Err(Error::LinkKind { .. })));
    assert!(ns.vxlan("nosuch").unwrap().is_none());
    // open_path reaches a namespace by its mount path.
    let again = NetNs::open_path(ns.path()).unwrap();
    assert_eq!(again.inode().unwrap(), ns.inode().unwrap());
    assert!(NetNs::open_path(std::path::Path::new("/proc/self/status")).is_err());
}
