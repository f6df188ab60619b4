//! Removing fibril from a node: everything the agent created there, and nothing else.
//!
//! In order, so that the node stops using fibril before its parts go:
//! 1. the CNI conflist (the runtime no longer picks fibril for new pods);
//! 2. with `force`, the host veths of the node's pods (live ones too: their network goes
//!    with them, explicitly, instead of being left half-working);
//! 3. the programs, by removing their pinned TCX links (nothing else holds them once the
//!    agent is stopped, so the kernel detaches them);
//! 4. the routes the agent installed to peers' pod ranges (recorded in `routes.json` as it
//!    installs them, so only fibril's own routes are touched) and the VXLAN device;
//! 5. the node's pin dir `<bpfPinRoot>/<node>/` (maps, program and link pins);
//! 6. the state dir (allocations, endpoint records, refusal, sockets).
//!
//! It refuses while the agent runs (it would put everything back) and, without `force`,
//! while pods still have fibril endpoints: removing their programs and routes would cut
//! them off the network silently, and dropping the allocations while they hold their
//! addresses would let a reinstalled agent hand the same addresses out again (seed 002's
//! duplicate IPs). Node-wide settings the agent only tuned (`ip_forward`) are left alone.
//! Every step runs even when an earlier one failed; each failure is reported.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_core::agent_config::ValidConfig;
use fibril_netlink::NetNs;
use ipnet::Ipv4Net;

use crate::endpoint::{self, EndpointStore};
use crate::persist::{read_optional, write_atomic, PersistIoError};
use crate::status::status_socket_path;
use crate::TUNNEL_DEVICE;

/// The routes the agent installed to peers' pod ranges, under `stateDir`: destination to
/// gateway. Uninstall removes exactly these; a restarted agent removes those no longer
/// wanted.
pub const ROUTES_FILE: &str = "routes.json";

/// Reads the recorded routes (none if the file is absent). An unreadable or corrupt record
/// is an error naming the file: treating it as empty would leave fibril's routes behind.
pub fn read_routes(state_dir: &Path) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, String> {
    let path = state_dir.join(ROUTES_FILE);
    match read_optional(&path).map_err(|e| e.to_string())? {
        None => Ok(BTreeMap::new()),
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| format!("the route record {} is corrupt: {e}", path.display())),
    }
}

/// Records the routes the agent has installed.
pub fn write_routes(
    state_dir: &Path,
    routes: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> Result<(), PersistIoError> {
    let bytes = serde_json::to_vec_pretty(routes).expect("plain JSON");
    write_atomic(&state_dir.join(ROUTES_FILE), &bytes, 0o600)
}

/// What uninstall may do.
#[derive(Clone, Copy, Debug, Default)]
pub struct UninstallOptions {
    /// Remove fibril even though pods still have endpoints (their veths are deleted).
    pub force: bool,
}

/// A pod fibril still serves on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEndpoint {
    pub host_veth: String,
    pub ip: Option<Ipv4Addr>,
    /// `namespace/name`, when known.
    pub pod: Option<String>,
}

impl std::fmt::Display for LiveEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pod.as_deref().unwrap_or("(unknown pod)"))?;
        if let Some(ip) = self.ip {
            write!(f, " {ip}")?;
        }
        write!(f, " on {}", self.host_veth)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(
        "the fibril agent of node {node} is running (its status socket {} answers): stop it \
         first, or it puts back what uninstall removes", socket.display()
    )]
    AgentRunning { node: String, socket: PathBuf },
    #[error(
        "node {node} still has {} pod endpoint(s) on fibril's network: {}. Removing fibril \
         would cut them off silently, and a reinstalled agent could hand their addresses out \
         again; drain the node first, or force it (their interfaces are then removed too)",
        endpoints.len(),
        endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
    )]
    LiveEndpoints {
        node: String,
        endpoints: Vec<LiveEndpoint>,
    },
    #[error("uninstalling fibril from node {node} left things behind: {}", failures.join("; "))]
    Incomplete {
        node: String,
        /// What was removed before the failures.
        removed: Vec<String>,
        failures: Vec<String>,
    },
}

/// What was removed.
#[derive(Clone, Debug, Default)]
pub struct UninstallReport {
    pub removed: Vec<String>,
}

/// The pods fibril still serves on the node: endpoint records whose host veth exists, and
/// fibril host veths without a record.
pub fn live_endpoints(config: &ValidConfig, netns: &NetNs) -> Vec<LiveEndpoint> {
    let links: Vec<String> = netns
        .links()
        .map(|l| l.into_iter().map(|l| l.name).collect())
        .unwrap_or_default();
    let records = EndpointStore::new(&config.paths.state_dir)
        .load_all()
        .map(|(m, _)| m)
        .unwrap_or_default();
    let mut out: Vec<LiveEndpoint> = records
        .values()
        .filter(|r| links.contains(&r.host_veth))
        .map(|r| LiveEndpoint {
            host_veth: r.host_veth.clone(),
            ip: Some(r.ip),
            pod: r
                .pod
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace, p.name)),
        })
        .collect();
    for l in links.iter().filter(|l| endpoint::is_pod_veth(l)) {
        if !out.iter().any(|e| &e.host_veth == l) {
            out.push(LiveEndpoint {
                host_veth: l.clone(),
                ip: None,
                pod: None,
            });
        }
    }
    out
}

/// Removes fibril from the node `config` describes, whose network namespace is `netns`.
/// The agent must not be running.
pub fn uninstall(
    config: &ValidConfig,
    netns: &NetNs,
    options: UninstallOptions,
) -> Result<UninstallReport, UninstallError> {
    let node = config.node_name.to_string();
    let socket = status_socket_path(&config.paths.state_dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(UninstallError::AgentRunning { node, socket });
    }
    let live = live_endpoints(config, netns);
    if !live.is_empty() && !options.force {
        return Err(UninstallError::LiveEndpoints {
            node,
            endpoints: live,
        });
    }
    let mut removed = Vec::new();
    let mut failures = Vec::new();

    // 1. The conflist.
    let conflist = crate::conflist::conflist_path(&config.paths.cni_conf_dir);
    if conflist.exists() {
        match crate::conflist::uninstall(&config.paths.cni_conf_dir) {
            Ok(()) => removed.push(format!("CNI config {}", conflist.display())),
            Err(e) => failures.push(e.to_string()),
        }
    }

    // 2. Pods' host veths (force only; otherwise there are none).
    for e in &live {
        match endpoint::unplumb(netns, &e.host_veth) {
            Ok(()) => removed.push(format!("pod interface {e}")),
            Err(err) => failures.push(format!("pod interface {}: {err}", e.host_veth)),
        }
    }

    // 3. Programs: their pinned links are the only references left.
    let pin_dir = config.bpf_pin_dir();
    let tcx = pin_dir.join(fibril_bpf::tcx::TCX_LINK_DIR);
    if let Ok(entries) = std::fs::read_dir(&tcx) {
        for entry in entries.flatten() {
            let ifindex = entry.file_name().to_string_lossy().into_owned();
            let programs: Vec<String> = std::fs::read_dir(entry.path())
                .map(|d| {
                    d.flatten()
                        .map(|p| p.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed.push(format!(
                    "programs {} detached from ifindex {ifindex}",
                    programs.join(", ")
                )),
                Err(e) => failures.push(format!(
                    "unpinning the links of ifindex {ifindex} ({}): {e}",
                    entry.path().display()
                )),
            }
        }
    }

    // 4. Routes to peers, and the VXLAN device.
    let routes = read_routes(&config.paths.state_dir).unwrap_or_else(|e| {
        failures.push(format!("routes to peers: {e}"));
        BTreeMap::new()
    });
    let present = if routes.is_empty() {
        Vec::new()
    } else {
        netns.routes().unwrap_or_else(|e| {
            failures.push(format!("listing the node's routes to remove fibril's: {e}"));
            Vec::new()
        })
    };
    for (dst, via) in &routes {
        if present.iter().any(|r| r.dst == *dst && r.via == Some(*via)) {
            match netns.delete_route(*dst) {
                Ok(()) => removed.push(format!("route {dst} via {via}")),
                Err(e) => failures.push(format!("route {dst} via {via}: {e}")),
            }
        }
    }
    if matches!(netns.link(TUNNEL_DEVICE), Ok(Some(_))) {
        match netns.delete_link(TUNNEL_DEVICE) {
            Ok(()) => removed.push(format!("VXLAN device {TUNNEL_DEVICE}")),
            Err(e) => failures.push(format!("VXLAN device {TUNNEL_DEVICE}: {e}")),
        }
    }

    // 5. Maps and every other pin.
    if pin_dir.exists() {
        match std::fs::remove_dir_all(&pin_dir) {
            Ok(()) => removed.push(format!("pinned maps and programs {}", pin_dir.display())),
            Err(e) => failures.push(format!("{}: {e}", pin_dir.display())),
        }
    }

    // 6. State: allocations, endpoint records, the refusal record, leftover sockets.
    let state = &config.paths.state_dir;
    if state.exists() {
        match std::fs::remove_dir_all(state) {
            Ok(()) => removed.push(format!("agent state {}", state.display())),
            Err(e) => failures.push(format!("{}: {e}", state.display())),
        }
    }
    if config.paths.socket_path.exists() {
        let _ = std::fs::remove_file(&config.paths.socket_path);
    }

    for r in &removed {
        tracing::info!(node = %node, "uninstall: removed {r}");
    }
    if failures.is_empty() {
        Ok(UninstallReport { removed })
    } else {
        Err(UninstallError::Incomplete {
            node,
            removed,
            failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_route_record_is_empty_and_a_corrupt_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_routes(dir.path()).unwrap(), BTreeMap::new());
        std::fs::write(dir.path().join(ROUTES_FILE), "{not json").unwrap();
        let e = read_routes(dir.path()).unwrap_err();
        assert!(e.contains(ROUTES_FILE) && e.contains("corrupt"), "{e}");
    }
}
