//! Privileged tests of the lab network: build a real lab, check traffic between its
//! namespaces, tear it down and prove the root namespace is exactly as before.
//!
//! Each lab has a unique `fibt…` name and an RAII guard that destroys it, also when a
//! test panics. Traffic only goes to addresses inside the lab's own namespaces.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fibril_core::consts;
use fibril_core::lab::{LabLayout, LabName, LabSpec};
use fibril_lab::topology::{self, Removed, TopologyError};
use fibril_netlink::{setns_pre_exec, NetNs};
use rand::Rng;

/// All labs of this test binary keep state under one temporary root. A static is never
/// dropped, so the root is kept here and removed by the last [`LabGuard`] to find it
/// empty.
fn state_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("fibt-state")
            .tempdir()
            .unwrap()
            .keep();
        // Set once, before any test derives a path from it.
        std::env::set_var(consts::LAB_STATE_ROOT_ENV, &dir);
        dir
    })
}

fn unique_layout(nodes: u8) -> LabLayout {
    state_root();
    let mut rng = rand::thread_rng();
    let tail: String = (0..6)
        .map(|_| {
            let c = rng.gen_range(0..36u8);
            if c < 10 {
                (b'0' + c) as char
            } else {
                (b'a' + c - 10) as char
            }
        })
        .collect();
    let name: LabName = format!("fibt{tail}").parse().unwrap();
    LabSpec {
        name,
        nodes,
        ..LabSpec::default()
    }
    .layout()
}

/// Destroys the lab when dropped, whatever happened in the test.
struct LabGuard(LabName);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = topology::destroy(&self.0, &mut |_| {});
        let _ = std::fs::remove_dir(state_root());
    }
}

/// Kills a child still running when dropped (destroy normally got it first).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl ChildGuard {
    /// The child was stopped by a signal (it was reaped here, so it is truly gone).
    fn stopped_by_signal(&mut self) -> Option<i32> {
        for _ in 0..50 {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.signal();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn sleep_in(ns: &NetNs) -> ChildGuard {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000").stdin(Stdio::null());
    setns_pre_exec(&mut cmd, ns).unwrap();
    ChildGuard(cmd.spawn().unwrap())
}

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
        let _ = to.run(|| TcpStream::connect((addr, port)));
    }
    let _ = server.join();
    ok
}

/// What must be identical in the root namespace before and after a lab.
#[derive(Debug, PartialEq, Eq)]
struct RootSnapshot {
    links: String,
    routes: String,
    rules: String,
    conf_all: BTreeMap<String, String>,
}

fn ip_json(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn netns_list() -> Vec<String> {
    // `ip netns list` prints "name (id: N)"; keep the names.
    ip_json(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn snapshot() -> RootSnapshot {
    let mut conf_all = BTreeMap::new();
    for e in std::fs::read_dir("/proc/sys/net/ipv4/conf/all").unwrap() {
        let e = e.unwrap();
        if let Ok(v) = std::fs::read_to_string(e.path()) {
            conf_all.insert(e.file_name().to_string_lossy().into_owned(), v);
        }
    }
    RootSnapshot {
        links: ip_json(&["-j", "link"]),
        routes: ip_json(&["-j", "route"]),
        rules: ip_json(&["-j", "rule"]),
        conf_all,
    }
}

fn lab_netns(layout: &LabLayout) -> Vec<String> {
    NetNs::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&layout.netns_prefix()))
        .collect()
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn lab_network_works_and_destroy_restores_the_root_namespace() {
    let layout = unique_layout(3);
    let name = layout.name().clone();
    let before = snapshot();
    let netns_before = netns_list();
    let _guard = LabGuard(name.clone());

    let mut steps = Vec::new();
    topology::create(&layout, &mut |s| steps.push(s.to_string())).unwrap();
    assert!(topology::exists(&layout));
    assert!(
        steps.iter().any(|s| s.contains(&layout.world_netns())),
        "{steps:?}"
    );
    let again = topology::create(&layout, &mut |_| {}).unwrap_err();
    assert!(
        matches!(again, TopologyError::AlreadyExists { .. }),
        "{again}"
    );

    let open = |n: String| NetNs::open(&n).unwrap();
    let fabric = open(layout.fabric_netns());
    let cp = open(layout.cp_netns());
    let world = open(layout.world_netns());
    let nodes: Vec<NetNs> = (1..=3).map(|i| open(layout.node_netns(i))).collect();

    // Shape: the bridge holds cp and every node; forwarding where it routes.
    let links = fabric.links().unwrap();
    let br = links
        .iter()
        .find(|l| l.name == consts::FABRIC_BRIDGE)
        .unwrap();
    assert!(br.up);
    let ports: Vec<&str> = links
        .iter()
        .filter(|l| l.master == Some(br.index))
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(ports.len(), 4, "{ports:?}");
    assert_eq!(fabric.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(nodes[0].sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(nodes[0].sysctl("net.ipv4.conf.all.rp_filter").unwrap(), "0");
    assert!(nodes[1].link("lo").unwrap().unwrap().up);
    assert!(world.link("lo").unwrap().unwrap().up);
    let node_routes = nodes[0].routes().unwrap();
    assert!(
        node_routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.via == Some(layout.fabric_gateway())),
        "{node_routes:?}"
    );

    // Traffic: node to node, node to cp, node to the world, the world to a node.
    assert!(tcp_reachable(&nodes[0], &nodes[1], layout.node_ip(2)));
    assert!(tcp_reachable(&nodes[0], &nodes[2], layout.node_ip(3)));
    assert!(tcp_reachable(&nodes[0], &cp, layout.cp_ip()));
    assert!(tcp_reachable(&nodes[0], &world, layout.world_host_ip()));
    assert!(tcp_reachable(&world, &nodes[0], layout.node_ip(1)));

    // What a running lab leaves around: processes in a node and in a pod namespace,
    // the pod's /etc/netns dir, BPF pins, a state dir with a socket.
    let pod = NetNs::create(&layout.pod_netns("x")).unwrap();
    let mut in_node = sleep_in(&nodes[0]);
    let mut in_pod = sleep_in(&pod);
    let etc = Path::new(consts::NETNS_ETC_DIR).join(pod.name());
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        layout.pod_resolv_conf(pod.name()),
        "nameserver 10.96.0.10\n",
    )
    .unwrap();
    let pins = layout.node_bpf_pin_dir(&layout.node_name(1));
    let bpffs = is_bpffs(Path::new(consts::BPFFS_MOUNT));
    if bpffs {
        std::fs::create_dir_all(pins.join("sub")).unwrap();
    }
    std::fs::create_dir_all(layout.state_dir()).unwrap();
    std::fs::write(layout.state_file(), b"{}").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(layout.api_socket()).unwrap();

    let mut messages = Vec::new();
    let report = topology::destroy(&name, &mut |s| messages.push(s.to_string())).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!(in_node.stopped_by_signal(), Some(libc::SIGTERM));
    assert_eq!(in_pod.stopped_by_signal(), Some(libc::SIGTERM));
    let stopped = report
        .removed
        .iter()
        .filter(|r| matches!(r, Removed::Process { .. }))
        .count();
    assert_eq!(stopped, 2, "{:?}", report.removed);
    assert!(report
        .removed
        .contains(&Removed::Netns(layout.pod_netns("x"))));
    assert!(report
        .removed
        .contains(&Removed::StateDir(layout.state_dir())));

    assert!(lab_netns(&layout).is_empty());
    assert!(!topology::exists(&layout));
    assert!(!etc.exists());
    assert!(!pins.exists());
    if bpffs {
        assert!(report.removed.contains(&Removed::BpfPinDir(pins.clone())));
    }
    assert!(!layout.state_dir().exists());

    assert_eq!(snapshot(), before);
    let netns_after = netns_list();
    // Other tests' `fibt…` namespaces come and go in parallel; anything else must stay.
    for n in netns_before.iter().filter(|n| !n.starts_with("fibt")) {
        assert!(
            netns_after.contains(n),
            "netns {n} of someone else vanished"
        );
    }
    assert!(!netns_after
        .iter()
        .any(|n| n.starts_with(&layout.netns_prefix())));
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn destroy_of_a_lab_that_does_not_exist_is_clean_and_empty() {
    let layout = unique_layout(1);
    let _guard = LabGuard(layout.name().clone());
    let report = topology::destroy(layout.name(), &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    assert!(!topology::exists(&layout));
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn a_failed_create_is_undone_and_destroy_still_works() {
    let layout = unique_layout(3);
    let name = layout.name().clone();
    let _guard = LabGuard(name.clone());
    // Sabotage: when create reaches node 2, something else takes its netns name.
    let blocker: PathBuf = Path::new(fibril_netlink::NETNS_RUN_DIR).join(layout.node_netns(2));
    let node2_step = format!("netns {}", layout.node_netns(2));
    let mut seen = Vec::new();
    let err = topology::create(&layout, &mut |s| {
        if s == node2_step {
            std::fs::write(&blocker, b"").unwrap();
        }
        seen.push(s.to_string());
    })
    .unwrap_err();
    match &err {
        TopologyError::Create { step, rollback, .. } => {
            assert_eq!(step, &node2_step);
            assert!(rollback.is_empty(), "{rollback:?}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains(&layout.node_netns(2)), "{err}");
    // The fabric, cp and node 1 had been built, and are gone again.
    assert!(seen.iter().any(|s| s.contains(&layout.node_netns(1))));
    assert!(lab_netns(&layout).is_empty(), "{:?}", lab_netns(&layout));
    let report = topology::destroy(&name, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert!(report.removed.is_empty(), "{:?}", report.removed);
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn destroy_cleans_up_after_a_create_that_died_midway() {
    // As if `lab up` was killed half-way: a fabric and one node with a veth, a process
    // in the node, a garbled state file, a stale supervisor pid naming an unrelated
    // process, and the lab's supervisor itself.
    let layout = unique_layout(2);
    let name = layout.name().clone();
    let _guard = LabGuard(name.clone());
    let fabric = NetNs::create(&layout.fabric_netns()).unwrap();
    let node = NetNs::create(&layout.node_netns(1)).unwrap();
    fabric.ensure_bridge(consts::FABRIC_BRIDGE).unwrap();
    fabric
        .ensure_veth("n1", consts::NODE_UPLINK, &node)
        .unwrap();
    let mut worker = sleep_in(&node);

    std::fs::create_dir_all(layout.state_dir()).unwrap();
    std::fs::write(layout.state_file(), b"{ not json").unwrap();
    // Not the supervisor: its command line does not name fibril and the lab.
    let mut bystander = ChildGuard(
        Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid_file = layout.state_dir().join("supervisor.pid");
    std::fs::write(&pid_file, bystander.0.id().to_string()).unwrap();
    let report = topology::destroy(&name, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!(worker.stopped_by_signal(), Some(libc::SIGTERM));
    assert!(
        bystander.0.try_wait().unwrap().is_none(),
        "bystander killed"
    );
    assert!(lab_netns(&layout).is_empty());
    assert!(!layout.state_dir().exists());

    // A supervisor (root namespace, command line naming fibril and the lab) is stopped.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("fibril"), b"").unwrap();
    std::fs::write(scratch.path().join(name.as_str()), b"").unwrap();
    let mut supervisor = ChildGuard(
        Command::new("tail")
            .args(["-f", "fibril", name.as_str()])
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::create_dir_all(layout.state_dir()).unwrap();
    std::fs::write(&pid_file, supervisor.0.id().to_string()).unwrap();
    // A parent resumes from vfork before the child's new argv is in place: wait for it,
    // as a real supervisor's would long be.
    let cmdline = format!("/proc/{}/cmdline", supervisor.0.id());
    for _ in 0..100 {
        if std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = topology::destroy(&name, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!(supervisor.stopped_by_signal(), Some(libc::SIGTERM));
    assert!(
        bystander.0.try_wait().unwrap().is_none(),
        "bystander killed"
    );
}
