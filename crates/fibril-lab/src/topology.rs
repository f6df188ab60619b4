//! The lab's network: building its namespaces, links, addresses and routes, and tearing
//! all of a lab down again from nothing but its name.
//!
//! Everything lives in namespaces this module creates; the root network namespace is
//! never changed. Names and addresses all come from [`LabLayout`].
//!
//! ```text
//!  <lab>-world   eth0 world_host_ip (+ the first address of each world subnet)
//!                  ── default via world_router_ip
//!                  │ veth
//!  <lab>-fabric  to-world world_router_ip,  br0 fabric_gateway (ip_forward=1)
//!                  ├── cp ─ veth ─ eth0  <lab>-cp       cp_ip,      default via gateway
//!                  ├── n1 ─ veth ─ eth0  <lab>-node-1   node_ip(1), default via gateway
//!                  └── n2 ...
//! ```
//!
//! Teardown ([`destroy`]) finds the lab's namespaces by prefix, kills every process
//! inside them (kubelets, agents, the API server, pod workloads), deletes them, and
//! removes the lab's `/etc/netns` entries, BPF pin dirs and state dir. It keeps going
//! past failures and reports each one, as netavark's teardown does.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fibril_core::consts;
use fibril_core::lab::{FieldError, LabLayout, LabName, LabSpec};
use fibril_netlink::{NetNs, Route};
use ipnet::Ipv4Net;

/// How long processes get to exit after SIGTERM, then again after SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Fabric-side veth of the control plane and of node `i`.
const FABRIC_CP_LINK: &str = "cp";
fn fabric_node_link(i: u8) -> String {
    format!("n{i}")
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid lab spec: {}", join(errors))]
    InvalidSpec { errors: Vec<FieldError> },
    #[error("lab {lab} already has namespaces ({}); destroy it first", netns.join(", "))]
    AlreadyExists { lab: LabName, netns: Vec<String> },
    /// A step of [`create`] failed; what had been built was removed again, and any
    /// failure of that removal is listed.
    #[error("{step}: {source}{}", rollback_note(rollback))]
    Create {
        step: String,
        #[source]
        source: Box<fibril_netlink::Error>,
        rollback: Vec<TopologyError>,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: fibril_netlink::Error,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} process {pid}{}: {source}", in_netns(netns))]
    Process {
        op: &'static str,
        pid: i32,
        netns: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("process {pid}{} is still running after SIGKILL", in_netns(netns))]
    Survivor { pid: i32, netns: Option<String> },
    #[error("netns {netns} is the host's network namespace; its processes were left alone")]
    HostNetns { netns: String },
}

// Errors cross threads and end up in anyhow at the binary edge.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<TopologyError>();
};

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn rollback_note(rollback: &[TopologyError]) -> String {
    if rollback.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = rollback.iter().map(|e| e.to_string()).collect();
        format!(
            " (undoing the partial lab also failed: {})",
            list.join("; ")
        )
    }
}

fn in_netns(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!(" in netns {n}"))
        .unwrap_or_default()
}

/// One thing [`destroy`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// A process that was stopped; `killed` when SIGTERM was not enough.
    Process {
        pid: i32,
        netns: Option<String>,
        killed: bool,
    },
    Netns(String),
    EtcNetns(PathBuf),
    BpfPinDir(PathBuf),
    StateDir(PathBuf),
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removed::Process { pid, netns, killed } => write!(
                f,
                "process {pid}{} ({})",
                in_netns(netns),
                if *killed { "SIGKILL" } else { "SIGTERM" }
            ),
            Removed::Netns(n) => write!(f, "netns {n}"),
            Removed::EtcNetns(p) | Removed::BpfPinDir(p) | Removed::StateDir(p) => {
                write!(f, "{}", p.display())
            }
        }
    }
}

/// What [`destroy`] did. Teardown is best effort: `failures` lists everything that
/// could not be removed, and an empty list means the lab is entirely gone.
#[derive(Debug, Default)]
#[must_use]
pub struct DestroyReport {
    pub removed: Vec<Removed>,
    pub failures: Vec<TopologyError>,
}

impl DestroyReport {
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Whether anything of this lab's network exists (any `<lab>-*` namespace).
pub fn exists(layout: &LabLayout) -> bool {
    !lab_namespaces(layout.name()).unwrap_or_default().is_empty()
}

/// The namespaces of a lab: every name under /run/netns with the lab's prefix, which
/// includes its pods' namespaces.
pub fn lab_namespaces(name: &LabName) -> Result<Vec<String>, TopologyError> {
    let prefix = layout_of(name).netns_prefix();
    Ok(NetNs::list()
        .map_err(|source| TopologyError::Netlink {
            what: "listing namespaces".into(),
            source,
        })?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

fn layout_of(name: &LabName) -> LabLayout {
    LabSpec {
        name: name.clone(),
        ..LabSpec::default()
    }
    .layout()
}

fn cidr(ip: std::net::Ipv4Addr, of: &Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(ip, of.prefix_len()).expect("prefix length taken from a valid network")
}

/// Build a lab's network. Refuses if any namespace of the lab already exists, so that
/// undoing a failed step can never remove something this call did not build.
pub fn create(layout: &LabLayout, progress: &mut dyn FnMut(&str)) -> Result<(), TopologyError> {
    layout
        .spec
        .validate()
        .map_err(|errors| TopologyError::InvalidSpec { errors })?;
    let existing = lab_namespaces(layout.name())?;
    if !existing.is_empty() {
        return Err(TopologyError::AlreadyExists {
            lab: layout.name().clone(),
            netns: existing,
        });
    }
    let mut b = Builder {
        layout,
        progress,
        step: String::new(),
    };
    match b.build() {
        Ok(()) => Ok(()),
        Err(source) => {
            let step = std::mem::take(&mut b.step);
            (b.progress)(&format!("failed at: {step}; removing the partial lab"));
            let report = teardown(layout.name(), Teardown::Rollback, b.progress);
            Err(TopologyError::Create {
                step,
                source: Box::new(source),
                rollback: report.failures,
            })
        }
    }
}

struct Builder<'a> {
    layout: &'a LabLayout,
    progress: &'a mut dyn FnMut(&str),
    /// The step in progress, named in the error if it fails.
    step: String,
}

impl Builder<'_> {
    fn step(&mut self, s: String) {
        (self.progress)(&s);
        self.step = s;
    }

    /// A new namespace with lo up and the lab's baseline sysctls.
    fn netns(&mut self, name: &str, forwarding: bool) -> fibril_netlink::Result<NetNs> {
        self.step(format!("netns {name}"));
        let ns = NetNs::create(name)?;
        ns.set_up("lo")?;
        // New namespaces copy conf/{all,default} from the host
        // (net.core.devconf_inherit_init_net=0), so with a host rp_filter of 1 the lab
        // would drop asymmetric paths (pod traffic routed in by one node and answered
        // through the fabric) depending on the machine it runs on. Set a known baseline
        // before any device exists here, so every device inherits it; the node agent
        // then owns the per-device value, as it does on a real node.
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            ns.set_sysctl(key, "0")?;
        }
        if forwarding {
            ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        }
        Ok(ns)
    }

    /// A host on the fabric: `eth0` in `ns`, its fabric side enslaved to the bridge.
    fn attach(
        &mut self,
        fabric: &NetNs,
        ns: &NetNs,
        fabric_link: &str,
        ip: std::net::Ipv4Addr,
    ) -> fibril_netlink::Result<()> {
        let l = self.layout;
        let addr = cidr(ip, &l.spec.fabric_cidr);
        self.step(format!(
            "{}: {} {addr} ↔ {} {fabric_link} on {}",
            ns.name(),
            consts::NODE_UPLINK,
            fabric.name(),
            consts::FABRIC_BRIDGE
        ));
        fabric.ensure_veth(fabric_link, consts::NODE_UPLINK, ns)?;
        fabric.set_master(fabric_link, consts::FABRIC_BRIDGE)?;
        fabric.set_up(fabric_link)?;
        ns.ensure_addr(consts::NODE_UPLINK, addr)?;
        ns.set_up(consts::NODE_UPLINK)?;
        self.step(format!("{}: default via {}", ns.name(), l.fabric_gateway()));
        ns.replace_route(&Route {
            dst: Ipv4Net::default(),
            via: Some(l.fabric_gateway()),
            dev: Some(consts::NODE_UPLINK.into()),
        })
    }

    fn build(&mut self) -> fibril_netlink::Result<()> {
        let l = self.layout;
        // The fabric: the L2 underlay and the router to the world.
        let fabric = self.netns(&l.fabric_netns(), true)?;
        let gw = cidr(l.fabric_gateway(), &l.spec.fabric_cidr);
        self.step(format!(
            "{}: bridge {} {gw}",
            fabric.name(),
            consts::FABRIC_BRIDGE
        ));
        fabric.ensure_bridge(consts::FABRIC_BRIDGE)?;
        fabric.ensure_addr(consts::FABRIC_BRIDGE, gw)?;
        fabric.set_up(consts::FABRIC_BRIDGE)?;

        let cp = self.netns(&l.cp_netns(), false)?;
        self.attach(&fabric, &cp, FABRIC_CP_LINK, l.cp_ip())?;

        for i in 1..=l.spec.nodes {
            let node = self.netns(&l.node_netns(i), true)?;
            self.attach(&fabric, &node, &fabric_node_link(i), l.node_ip(i))?;
        }
        // LoadBalancer addresses reach the cluster through the first node, as a cloud
        // load balancer would hand them to a node (the lab's load-balancer controller
        // assigns them).
        if l.spec.nodes > 0 {
            self.step(format!(
                "{}: {} via {}",
                fabric.name(),
                l.load_balancer_cidr(),
                l.node_ip(1)
            ));
            fabric.replace_route(&Route {
                dst: l.load_balancer_cidr(),
                via: Some(l.node_ip(1)),
                dev: None,
            })?;
        }

        let world = self.netns(&l.world_netns(), false)?;
        let router = cidr(l.world_router_ip(), &l.spec.world_cidr);
        let host = cidr(l.world_host_ip(), &l.spec.world_cidr);
        self.step(format!(
            "{}: {} {host} ↔ {} {} {router}",
            world.name(),
            consts::WORLD_UPLINK,
            fabric.name(),
            consts::FABRIC_WORLD_LINK
        ));
        fabric.ensure_veth(consts::FABRIC_WORLD_LINK, consts::WORLD_UPLINK, &world)?;
        fabric.ensure_addr(consts::FABRIC_WORLD_LINK, router)?;
        fabric.set_up(consts::FABRIC_WORLD_LINK)?;
        world.ensure_addr(consts::WORLD_UPLINK, host)?;
        world.set_up(consts::WORLD_UPLINK)?;
        self.step(format!(
            "{}: default via {}",
            world.name(),
            l.world_router_ip()
        ));
        world.replace_route(&Route {
            dst: Ipv4Net::default(),
            via: Some(l.world_router_ip()),
            dev: Some(consts::WORLD_UPLINK.into()),
        })?;
        // Extra world subnets (a firewall subnet, seed 000): the world host answers on
        // them, the fabric router routes them to it, and every node has a route to them,
        // as a VPC route table would give it.
        for subnet in &l.spec.world_subnets {
            let host = cidr(l.world_subnet_host_ip(subnet), subnet);
            self.step(format!(
                "{}: {} {host}; {}: {subnet} via {}",
                world.name(),
                consts::WORLD_UPLINK,
                fabric.name(),
                l.world_host_ip()
            ));
            world.ensure_addr(consts::WORLD_UPLINK, host)?;
            fabric.replace_route(&Route {
                dst: *subnet,
                via: Some(l.world_host_ip()),
                dev: Some(consts::FABRIC_WORLD_LINK.into()),
            })?;
            for i in 1..=l.spec.nodes {
                let node = NetNs::open(&l.node_netns(i))?;
                self.step(format!(
                    "{}: {subnet} via {}",
                    node.name(),
                    l.fabric_gateway()
                ));
                node.replace_route(&Route {
                    dst: *subnet,
                    via: Some(l.fabric_gateway()),
                    dev: Some(consts::NODE_UPLINK.into()),
                })?;
            }
        }
        self.step("lab network ready".into());
        Ok(())
    }
}

/// Remove everything of a lab, derived from its name alone (the state file is read
/// for hints when present, never required). Best effort: every failure is in the
/// report, and the rest of the teardown still happens, so the `Result` is `Ok` even
/// when something could not be removed: check [`DestroyReport::is_clean`].
pub fn destroy(
    name: &LabName,
    progress: &mut dyn FnMut(&str),
) -> Result<DestroyReport, TopologyError> {
    Ok(teardown(name, Teardown::Destroy, progress))
}

/// How much [`teardown`] removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// `lab down`: everything, including the supervisor and the state dir.
    Destroy,
    /// Undoing a failed [`create`]: only what `create` builds (namespaces and what may
    /// have started in them). The supervisor and the state dir belong to the caller.
    Rollback,
}

fn teardown(name: &LabName, mode: Teardown, progress: &mut dyn FnMut(&str)) -> DestroyReport {
    let layout = layout_of(name);
    let mut report = DestroyReport::default();
    let state_dir = LabLayout::state_dir_of(name);

    // 1. Hints from the state file: the node list, for pin dirs a scan might miss.
    let mut pin_dirs: Vec<PathBuf> = Vec::new();
    if let Some(spec) = read_spec_hint(&layout.state_file()) {
        progress(&format!("state file names {} nodes", spec.nodes));
        let hinted = spec.layout();
        pin_dirs.extend(
            hinted
                .node_names()
                .iter()
                .map(|n| hinted.node_bpf_pin_dir(n)),
        );
    }

    // 2. The supervisor first, so that nothing restarts what is killed next.
    let sup_file = layout.supervisor_pid_file();
    if let Some(pid) = std::fs::read_to_string(&sup_file)
        .ok()
        .filter(|_| mode == Teardown::Destroy)
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let lab = name.as_str().to_string();
        let check = move |pid: i32| is_lab_supervisor(pid, &lab);
        if check(pid) {
            progress(&format!("stopping the supervisor (pid {pid})"));
            stop_processes(vec![(pid, None)], &check, &mut report);
        }
    }

    // 3. Every process inside the lab's namespaces, then the namespaces.
    let names = match lab_namespaces(name) {
        Ok(n) => n,
        Err(e) => {
            report.failures.push(e);
            Vec::new()
        }
    };
    let self_netns = fibril_netlink::current_netns_inode().ok();
    let mut victims: Vec<(i32, Option<String>)> = Vec::new();
    let mut inodes: Vec<(String, u64)> = Vec::new();
    for n in &names {
        let Ok(ns) = NetNs::open(n) else {
            continue; // a leftover mount point: nothing can be inside
        };
        if let Err(fibril_netlink::Error::HostNetns { .. }) = ns.run(|| ()) {
            report
                .failures
                .push(TopologyError::HostNetns { netns: n.clone() });
            continue;
        }
        let Ok(ino) = ns.inode() else { continue };
        if Some(ino) == self_netns {
            report
                .failures
                .push(TopologyError::HostNetns { netns: n.clone() });
            continue;
        }
        inodes.push((n.clone(), ino));
        victims.extend(
            fibril_netlink::pids_in_netns(ino)
                .into_iter()
                .map(|pid| (pid, Some(n.clone()))),
        );
    }
    if !victims.is_empty() {
        progress(&format!(
            "stopping {} processes in the lab's namespaces",
            victims.len()
        ));
        let check = |pid: i32| {
            let ino = fibril_netlink::netns_inode_of(pid);
            inodes.iter().any(|(_, i)| Some(*i) == ino)
        };
        stop_processes(victims, &check, &mut report);
    }
    for n in &names {
        progress(&format!("deleting netns {n}"));
        match NetNs::delete(n) {
            Ok(()) => report.removed.push(Removed::Netns(n.clone())),
            Err(source) => report.failures.push(TopologyError::Netlink {
                what: format!("deleting netns {n}"),
                source,
            }),
        }
    }

    // 4. Per-namespace /etc files and BPF pins.
    let prefix = layout.netns_prefix();
    for dir in prefixed_entries(Path::new(consts::NETNS_ETC_DIR), &prefix, &mut report) {
        remove_tree(&dir, Removed::EtcNetns(dir.clone()), &mut report);
    }
    let pin_root = Path::new(consts::BPF_PIN_ROOT);
    pin_dirs.extend(prefixed_entries(pin_root, &prefix, &mut report));
    pin_dirs.sort();
    pin_dirs.dedup();
    for dir in pin_dirs {
        if dir.exists() {
            progress(&format!("removing BPF pins {}", dir.display()));
            remove_tree(&dir, Removed::BpfPinDir(dir.clone()), &mut report);
        }
    }
    // Shared by all labs: only removed once empty, never forced.
    let _ = std::fs::remove_dir(pin_root);

    // 5. The state dir (logs, API store, sockets).
    if mode == Teardown::Destroy && state_dir.exists() {
        progress(&format!("removing {}", state_dir.display()));
        remove_tree(
            &state_dir,
            Removed::StateDir(state_dir.clone()),
            &mut report,
        );
    }
    report
}

fn read_spec_hint(state_file: &Path) -> Option<LabSpec> {
    let raw = std::fs::read(state_file).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    serde_json::from_value(v.get("spec")?.clone()).ok()
}

/// The supervisor runs in the root namespace, so it is identified by its command line:
/// a fibril binary given this lab's name as a whole argument (`--name L` or
/// `--name=L`), and never this process.
pub fn is_lab_supervisor(pid: i32, lab: &str) -> bool {
    if pid <= 1 || pid as u32 == std::process::id() {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw);
    let args: Vec<&str> = cmdline.split('\0').collect();
    let with_eq = format!("--name={lab}");
    args.iter().any(|a| a.contains("fibril")) && args.iter().any(|a| *a == lab || *a == with_eq)
}

fn prefixed_entries(dir: &Path, prefix: &str, report: &mut DestroyReport) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            report.failures.push(TopologyError::Io {
                op: "listing",
                path: dir.to_path_buf(),
                source,
            });
            Vec::new()
        }
    }
}

fn remove_tree(path: &Path, removed: Removed, report: &mut DestroyReport) {
    let res = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match res {
        Ok(()) => report.removed.push(removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => report.failures.push(TopologyError::Io {
            op: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A process held by a pidfd, so that a recycled pid can never be signalled.
struct Victim {
    pid: i32,
    netns: Option<String>,
    fd: OwnedFd,
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_signal(fd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Wait until every victim has exited (its pidfd turns readable) or the time is up;
/// returns those still running.
fn wait_exit(mut victims: Vec<Victim>, grace: Duration) -> Vec<Victim> {
    let deadline = Instant::now() + grace;
    loop {
        let mut fds: Vec<libc::pollfd> = victims
            .iter()
            .map(|v| libc::pollfd {
                fd: v.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if victims.is_empty() || left.is_zero() {
            return victims;
        }
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: fds is a valid array of fds.len() pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return victims;
        }
        let mut i = 0;
        victims.retain(|_| {
            let gone = fds[i].revents != 0;
            i += 1;
            !gone
        });
    }
}

/// SIGTERM, a grace period, then SIGKILL. `still_ours` re-checks each pid after its
/// pidfd is open, so a pid reused since the scan is left alone.
fn stop_processes(
    pids: Vec<(i32, Option<String>)>,
    still_ours: &dyn Fn(i32) -> bool,
    report: &mut DestroyReport,
) {
    let me = std::process::id() as i32;
    let mut victims = Vec::new();
    for (pid, netns) in pids {
        if pid == me || pid <= 1 {
            continue;
        }
        let fd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(source) => {
                report.failures.push(TopologyError::Process {
                    op: "opening",
                    pid,
                    netns,
                    source,
                });
                continue;
            }
        };
        if !still_ours(pid) {
            continue;
        }
        match pidfd_signal(&fd, libc::SIGTERM) {
            Ok(()) => victims.push(Victim { pid, netns, fd }),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => report.failures.push(TopologyError::Process {
                op: "signalling",
                pid,
                netns,
                source,
            }),
        }
    }
    let all: Vec<(i32, Option<String>)> =
        victims.iter().map(|v| (v.pid, v.netns.clone())).collect();
    let stubborn = wait_exit(victims, TERM_GRACE);
    let killed: Vec<i32> = stubborn.iter().map(|v| v.pid).collect();
    for v in &stubborn {
        if let Err(source) = pidfd_signal(&v.fd, libc::SIGKILL) {
            if source.raw_os_error() != Some(libc::ESRCH) {
                report.failures.push(TopologyError::Process {
                    op: "killing",
                    pid: v.pid,
                    netns: v.netns.clone(),
                    source,
                });
            }
        }
    }
    let survivors: Vec<i32> = wait_exit(stubborn, KILL_GRACE)
        .into_iter()
        .map(|v| {
            report.failures.push(TopologyError::Survivor {
                pid: v.pid,
                netns: v.netns.clone(),
            });
            v.pid
        })
        .collect();
    for (pid, netns) in all {
        if !survivors.contains(&pid) {
            report.removed.push(Removed::Process {
                pid,
                netns,
                killed: killed.contains(&pid),
            });
        }
    }
}
