//! The seam between the agent and the kernel datapath: [`Dataplane`].
//!
//! Two implementations, and the agent says which one is in use (status and logs):
//! - the BPF forwarding datapath (`fibril_bpf::Datapath`): BPF host routing;
//! - [`CountersDataplane`]: fibril's per-endpoint counters (tc, pinned) on every pod veth,
//!   with packets forwarded by the node's routing table. That is *legacy* host routing, and
//!   the agent refuses to start on it unless `allowDegraded` is set (seed 001).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_netlink::{MacAddr, NetNs};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// What the dataplane needs to know of one pod endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    /// The host side of the pod's veth, in the node netns.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: MacAddr,
    /// The pod's interface MAC (the destination MAC of packets delivered to it).
    pub pod_mac: MacAddr,
}

/// How packets are forwarded on this node, as `fibril status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode")]
pub enum HostRouting {
    /// The BPF programs forward (redirect_peer, FIB lookup + redirect_neigh, tunnel key).
    #[serde(rename = "BPF")]
    Bpf,
    /// The kernel's routing table forwards; `cause` says why BPF host routing is not used.
    #[serde(rename = "Legacy")]
    Legacy { cause: String },
}

impl std::fmt::Display for HostRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostRouting::Bpf => f.write_str("BPF"),
            HostRouting::Legacy { cause } => write!(f, "Legacy ({cause})"),
        }
    }
}

/// A program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedProgram {
    pub ifname: String,
    /// e.g. `tc-ingress`, `tc-egress`.
    pub hooks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op} {target}: {source}")]
    Bpf {
        op: &'static str,
        target: String,
        #[source]
        source: Box<fibril_bpf::BpfError>,
    },
    #[error(transparent)]
    Netns(#[from] fibril_netlink::Error),
    #[error("{backend} cannot {what}: {why}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
        why: &'static str,
    },
}

/// The operations the agent needs from a datapath. Attach calls run inside `netns` (the
/// node's), whatever namespace the agent itself is in.
pub trait Dataplane: Send {
    /// A short name for status and logs.
    fn name(&self) -> &'static str;
    fn host_routing(&self) -> HostRouting;
    /// Attaches to the node's uplink.
    fn attach_underlay(&mut self, netns: &NetNs, ifname: &str) -> Result<(), DataplaneError>;
    /// Attaches to the VXLAN device (tunnel mode).
    fn attach_tunnel(&mut self, netns: &NetNs, ifname: &str) -> Result<(), DataplaneError>;
    /// Attaches to the endpoint's host veth and registers it. Idempotent.
    fn add_endpoint(&mut self, netns: &NetNs, ep: &EndpointInfo) -> Result<(), DataplaneError>;
    /// Forgets the endpoint and detaches from its veth (which may be gone). Idempotent.
    fn remove_endpoint(
        &mut self,
        netns: &NetNs,
        ip: Option<Ipv4Addr>,
        host_ifname: &str,
    ) -> Result<(), DataplaneError>;
    /// Where `prefix` (another node's pod range) lives.
    fn upsert_remote(&mut self, prefix: Ipv4Net, node_ip: Ipv4Addr) -> Result<(), DataplaneError>;
    fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<(), DataplaneError>;
    /// What is attached where.
    fn programs(&self) -> Vec<AttachedProgram>;
    /// Forgets interfaces that no longer exist (deleted while the agent was down).
    fn prune_gone(&mut self, netns: &NetNs) -> Result<(), DataplaneError>;
    /// Where the maps are pinned.
    fn pin_dir(&self) -> &Path;
}

/// Counters on pod veths, forwarding by the kernel: legacy host routing.
pub struct CountersDataplane {
    counters: fibril_bpf::PodCounters,
    pin_dir: PathBuf,
    cause: String,
}

impl CountersDataplane {
    pub const NAME: &'static str = "counters+kernel-routes";

    /// Loads the counters with maps pinned in `pin_dir`; `cause` is why BPF host routing is
    /// not available, shown with the `Legacy` mode.
    pub fn load(pin_dir: &Path, cause: impl Into<String>) -> Result<Self, DataplaneError> {
        let counters =
            fibril_bpf::PodCounters::load(pin_dir).map_err(|source| DataplaneError::Bpf {
                op: "loading the endpoint counters, pinned in",
                target: pin_dir.display().to_string(),
                source: Box::new(source),
            })?;
        Ok(CountersDataplane {
            counters,
            pin_dir: pin_dir.to_path_buf(),
            cause: cause.into(),
        })
    }
}

impl Dataplane for CountersDataplane {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn host_routing(&self) -> HostRouting {
        HostRouting::Legacy {
            cause: self.cause.clone(),
        }
    }

    fn attach_underlay(&mut self, _netns: &NetNs, _ifname: &str) -> Result<(), DataplaneError> {
        // Nothing to do: the kernel forwards what arrives on the uplink.
        Ok(())
    }

    fn attach_tunnel(&mut self, _netns: &NetNs, _ifname: &str) -> Result<(), DataplaneError> {
        Err(DataplaneError::Unsupported {
            backend: Self::NAME,
            what: "carry tunnel mode",
            why: "the tunnel endpoint of each packet is set by the BPF datapath",
        })
    }

    fn add_endpoint(&mut self, netns: &NetNs, ep: &EndpointInfo) -> Result<(), DataplaneError> {
        let counters = &mut self.counters;
        netns
            .run(|| counters.attach(&ep.host_ifname).map_err(Box::new))?
            .map_err(|source| DataplaneError::Bpf {
                op: "attaching the endpoint counters to",
                target: ep.host_ifname.clone(),
                source,
            })
    }

    fn remove_endpoint(
        &mut self,
        netns: &NetNs,
        _ip: Option<Ipv4Addr>,
        host_ifname: &str,
    ) -> Result<(), DataplaneError> {
        let counters = &mut self.counters;
        netns
            .run(|| counters.detach(host_ifname).map_err(Box::new))?
            .map_err(|source| DataplaneError::Bpf {
                op: "detaching the endpoint counters from",
                target: host_ifname.to_string(),
                source,
            })
    }

    fn upsert_remote(&mut self, _p: Ipv4Net, _n: Ipv4Addr) -> Result<(), DataplaneError> {
        // Native routing only: the node's routes to peers' pod ranges carry it.
        Ok(())
    }

    fn remove_remote(&mut self, _p: Ipv4Net) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn programs(&self) -> Vec<AttachedProgram> {
        self.counters
            .attached()
            .into_iter()
            .map(|ifname| AttachedProgram {
                ifname,
                hooks: vec!["tc-ingress".into(), "tc-egress".into()],
            })
            .collect()
    }

    fn prune_gone(&mut self, netns: &NetNs) -> Result<(), DataplaneError> {
        let counters = &mut self.counters;
        netns
            .run(|| counters.prune_gone().map_err(Box::new))?
            .map(|_| ())
            .map_err(|source| DataplaneError::Bpf {
                op: "pruning gone interfaces from",
                target: self.pin_dir.display().to_string(),
                source,
            })
    }

    fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}
