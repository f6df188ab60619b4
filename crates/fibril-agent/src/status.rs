//! What `fibril status` shows: [`AgentStatus`], served as JSON on the status socket
//! (`<stateDir>/agent-status.sock`, root only), and the client that reads it.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The status socket's file name under `stateDir`: separate from the CNI socket so the CNI
/// protocol stays exactly the plugin's.
pub const STATUS_SOCKET: &str = "agent-status.sock";

/// Where the status socket of an agent with this `stateDir` is.
pub fn status_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_SOCKET)
}

/// The file under `stateDir` holding the agent's last refusal to start. A refusing agent
/// exits (its supervisor restarts it, and it checks again), so the socket is gone most of
/// the time: this record is what `fibril status` and `fibril lab status` show then. It is
/// removed once the agent is ready.
pub const REFUSAL_FILE: &str = "refused.json";

/// Why the agent last refused to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub node: String,
    /// RFC 3339.
    pub at: String,
    /// The refusal, naming what was refused and why (both ranges for an overlap).
    pub reason: String,
}

/// Where the refusal record of an agent with this `stateDir` is.
pub fn refusal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(REFUSAL_FILE)
}

/// The agent's last refusal, if it has refused since it was last ready.
pub fn read_refusal(state_dir: &Path) -> Option<Refusal> {
    let text = std::fs::read_to_string(refusal_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// `native` or `tunnel`.
    pub routing_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_routing_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// `BPF`, or `Legacy` with its cause.
    pub host_routing: serde_json::Value,
    /// Set when the agent runs degraded (`allowDegraded`): the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Which dataplane implementation is in use.
    pub dataplane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_pin_dir: Option<PathBuf>,
    pub ipam: IpamStatus,
    pub endpoints: Vec<EndpointStatus>,
    pub programs: Vec<crate::dataplane::AttachedProgram>,
    /// Packets the datapath dropped, by reason (reasons with none are left out).
    #[serde(default)]
    pub drops: Vec<crate::dataplane::DropStatus>,
    pub api: ApiStatus,
    pub nodes: Vec<PeerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflist: Option<PathBuf>,
    /// Service load balancing (absent until the agent is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServicesStatus>,
    /// NetworkPolicy (absent until the agent is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyStatus>,
    /// Everything currently wrong that did not stop the agent.
    pub problems: Vec<String>,
    /// The last refusal to start, while the agent is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

/// Service load balancing on this node: what was translated and synced, and what is wrong.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesStatus {
    /// Set while nothing is synced yet: what the agent waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Services programmed.
    pub services: usize,
    /// Frontends (address, port, protocol and scope) in the table.
    pub frontends: usize,
    /// Distinct backends (address and port).
    pub backends: usize,
    /// Frontends with no usable backend: they reject.
    pub without_backends: usize,
    /// Services not programmed, and why (headless, ExternalName, another proxy's).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// What is wrong with Services, each naming the Service and the field (refused
    /// externalIPs among them).
    #[serde(default)]
    pub problems: Vec<String>,
    /// Frontends the datapath does not program, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datapath_skipped: Vec<String>,
    /// When the maps were last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<f64>,
    /// The last sync failed: why (it is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_error: Option<String>,
    /// The health check node ports served (ETP Local LoadBalancer Services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_ports: Vec<u16>,
}

impl ServicesStatus {
    /// The human form: one summary line, then one line per problem.
    pub fn render(&self) -> String {
        let mut out = section_head(
            "Services:",
            self.waiting_for.as_deref(),
            || {
                format!(
                    "{} programmed, {} frontends ({} without backends), {} backends",
                    self.services, self.frontends, self.without_backends, self.backends,
                )
            },
            self.last_sync.as_deref(),
        );
        sync_lines(
            &mut out,
            "SYNC FAILING",
            self.sync_error.as_deref(),
            self.watch_error.as_deref(),
        );
        for s in &self.skipped {
            out.push_str(&format!("  skipped: {s}\n"));
        }
        for p in self.problems.iter().chain(&self.datapath_skipped) {
            out.push_str(&format!("  problem: {p}\n"));
        }
        out
    }
}

/// The first line of a status section: its label, then what it waits for, or its summary
/// and when it last synced.
pub(crate) fn section_head(
    label: &str,
    waiting_for: Option<&str>,
    summary: impl FnOnce() -> String,
    last_sync: Option<&str>,
) -> String {
    let summary = match waiting_for {
        Some(w) => format!("waiting for {w}"),
        None => format!(
            "{}{}",
            summary(),
            last_sync
                .map(|t| format!(", last sync {t}"))
                .unwrap_or_default()
        ),
    };
    format!("{label:<16}{summary}\n")
}

/// A section's failing sync (under `failing`, which says what it costs) and watch.
pub(crate) fn sync_lines(
    out: &mut String,
    failing: &str,
    sync_error: Option<&str>,
    watch_error: Option<&str>,
) {
    if let Some(e) = sync_error {
        out.push_str(&format!("  {failing}: {e}\n"));
    }
    if let Some(e) = watch_error {
        out.push_str(&format!("  watch: {e}\n"));
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    pub device: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamStatus {
    /// `kubernetes` or `cluster-pool`.
    pub mode: String,
    /// The cluster pool (cluster-pool mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<String>,
    /// The size of each node's block (cluster-pool mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mask: Option<u8>,
    /// The pool object the blocks are claimed in (cluster-pool mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_object: Option<String>,
    /// The pool's blocks: held by nodes and free (cluster-pool mode, as last read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_blocks: Option<fibril_core::ipam::PoolStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cidr: Option<String>,
    pub used: u128,
    pub free: u128,
    pub total: u128,
    pub exhausted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiStatus {
    pub server: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// The route (native) or ipcache entry (tunnel) to its pod range is in place.
    pub programmed: bool,
    /// Answered an ICMP echo from this node at the last probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusReadError {
    #[error(
        "cannot reach the fibril agent's status socket {}: {source} (is the agent running? \
         only root may connect)", path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the agent status from {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's status from {} is not valid: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the status from an agent's status socket.
pub fn read_status(socket: &Path) -> Result<AgentStatus, StatusReadError> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        StatusReadError::Connect {
            path: socket.to_path_buf(),
            source,
        }
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|source| StatusReadError::Read {
            path: socket.to_path_buf(),
            source,
        })?;
    serde_json::from_slice(&buf).map_err(|source| StatusReadError::Decode {
        path: socket.to_path_buf(),
        source,
    })
}

impl AgentStatus {
    /// The human form, one fact per line, as `cilium status` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
        line("Node:", self.node.clone());
        line(
            "Ready:",
            match &self.not_ready_reason {
                None if self.ready => "yes".into(),
                Some(r) => format!("no ({r})"),
                None => "no".into(),
            },
        );
        if let Some(r) = &self.refusal {
            line("Refused:", format!("at {}: {}", r.at, r.reason));
        }
        let mut routing = self.routing_mode.clone();
        if let Some(n) = &self.native_routing_cidr {
            routing.push_str(&format!(" (native-routing CIDR {n})"));
        }
        if let Some(t) = &self.tunnel {
            routing.push_str(&format!(" (vxlan {} port {})", t.device, t.port));
        }
        line("Routing:", routing);
        let host = match self.host_routing.get("mode").and_then(|m| m.as_str()) {
            Some("BPF") => "BPF".to_string(),
            Some(m) => format!(
                "{m} ({})",
                self.host_routing
                    .get("cause")
                    .and_then(|c| c.as_str())
                    .unwrap_or("no cause given")
            ),
            None => "unknown".into(),
        };
        line("Host Routing:", host);
        if let Some(d) = &self.degraded {
            line("Degraded:", d.clone());
        }
        line("Dataplane:", self.dataplane.clone());
        let i = &self.ipam;
        let mut ipam = i.mode.clone();
        if !i.pool.is_empty() {
            ipam.push_str(&format!(", pool {}", i.pool.join(",")));
        }
        if let Some(c) = &i.node_cidr {
            ipam.push_str(&format!(", node CIDR {c}"));
        }
        ipam.push_str(&format!(", {}/{} used, {} free", i.used, i.total, i.free));
        if i.exhausted {
            ipam.push_str(" (EXHAUSTED)");
        }
        line("IPAM:", ipam);
        if let Some(b) = &i.pool_blocks {
            line(
                "Pool blocks:",
                format!(
                    "/{} blocks: {} held, {} free of {}{}",
                    i.node_mask.unwrap_or_default(),
                    b.held,
                    b.free,
                    b.total,
                    if b.free == 0 { " (EXHAUSTED)" } else { "" }
                ),
            );
        }
        line("Endpoints:", self.endpoints.len().to_string());
        for e in &self.endpoints {
            out.push_str(&format!(
                "  {:<15} {:<15} {}\n",
                e.ip,
                e.host_veth,
                e.pod.clone().unwrap_or_else(|| e.container_id.clone())
            ));
        }
        let programs: usize = self.programs.iter().map(|p| p.hooks.len()).sum();
        out.push_str(&format!(
            "{:<16}{programs} on {} interfaces\n",
            "Programs:",
            self.programs.len()
        ));
        for p in &self.programs {
            out.push_str(&format!("  {:<15} {}\n", p.ifname, p.hooks.join(", ")));
        }
        let dropped: u64 = self.drops.iter().map(|d| d.packets).sum();
        out.push_str(&format!("{:<16}{dropped} packets\n", "Drops:"));
        for d in &self.drops {
            out.push_str(&format!(
                "  {:<24} {:>10} packets  {}\n",
                d.reason, d.packets, d.description
            ));
        }
        let api = if self.api.connected {
            format!("ok ({})", self.api.server)
        } else {
            format!(
                "DOWN ({}: {})",
                self.api.server,
                self.api.error.clone().unwrap_or_default()
            )
        };
        out.push_str(&format!("{:<16}{api}\n", "API server:"));
        let reachable = self
            .nodes
            .iter()
            .filter(|n| n.reachable == Some(true))
            .count();
        out.push_str(&format!(
            "{:<16}{reachable}/{} reachable\n",
            "Nodes:",
            self.nodes.len()
        ));
        for n in &self.nodes {
            let r = match n.reachable {
                Some(true) => format!(
                    "reachable{}",
                    n.rtt_ms.map(|r| format!(" {r:.2}ms")).unwrap_or_default()
                ),
                Some(false) => "UNREACHABLE".into(),
                None => "not probed".into(),
            };
            out.push_str(&format!(
                "  {:<20} {:<15} {:<18} {}{}\n",
                n.name,
                n.internal_ip.map(|i| i.to_string()).unwrap_or_default(),
                n.pod_cidr.clone().unwrap_or_default(),
                r,
                n.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(c) = &self.conflist {
            out.push_str(&format!("{:<16}{}\n", "CNI config:", c.display()));
        }
        if let Some(s) = &self.services {
            out.push_str(&s.render());
        }
        if let Some(p) = &self.policy {
            out.push_str(&p.render());
        }
        for p in &self.problems {
            out.push_str(&format!("{:<16}{p}\n", "Problem:"));
        }
        out
    }
}
