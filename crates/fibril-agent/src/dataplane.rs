//! The seam between the agent and the kernel datapath: [`Dataplane`].
//!
//! Two implementations, and the agent says which one is in use (status and logs):
//! - [`BpfDataplane`], the BPF forwarding datapath ([`fibril_bpf::Datapath`]): BPF host
//!   routing;
//! - [`CountersDataplane`]: fibril's per-endpoint counters (tc, pinned) on every pod veth,
//!   with packets forwarded by the node's routing table. That is *legacy* host routing, and
//!   the agent refuses to start on it unless `allowDegraded` is set (seed 001).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_bpf::SyncStats;
use fibril_core::services::ServiceTable;
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
    /// Packets the datapath dropped, by reason (none for a dataplane that does not drop).
    fn drops(&self) -> Result<Vec<DropStatus>, DataplaneError> {
        Ok(Vec::new())
    }
    /// Makes the datapath enforce `plan` (NetworkPolicy): see [`crate::policy::apply`].
    fn sync_policy(
        &mut self,
        plan: &crate::policy::PolicyPlan,
    ) -> Result<crate::policy::PolicyApplied, DataplaneError> {
        let _ = plan;
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "enforce NetworkPolicy",
            why: "policy needs the BPF datapath's policy maps",
        })
    }
    /// Makes the service maps hold exactly `table` (the kube-proxy replacement).
    fn sync_services(&mut self, table: &ServiceTable) -> Result<SyncStats, DataplaneError> {
        let _ = table;
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "load-balance Services",
            why: "Services need the BPF datapath's service maps",
        })
    }
}

/// Drops of one reason since the maps were created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropStatus {
    /// The stable name (`no_endpoint`, `fib_unreachable`, …).
    pub reason: String,
    pub description: String,
    pub packets: u64,
    pub bytes: u64,
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

/// The BPF forwarding datapath: `redirect_peer` on the node, FIB + `redirect_neigh` (native)
/// or the VXLAN tunnel key (tunnel) across nodes.
pub struct BpfDataplane {
    dp: fibril_bpf::Datapath,
}

fn bpf_err(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(Box<fibril_bpf::BpfError>) -> DataplaneError {
    let target = target.into();
    move |source| DataplaneError::Bpf { op, target, source }
}

impl BpfDataplane {
    pub const NAME: &'static str = "bpf";

    /// Loads the programs, reusing the maps pinned in `pin_dir` (so endpoints, ipcache and
    /// counters survive a restart).
    pub fn load(
        netns: &NetNs,
        pin_dir: &Path,
        config: fibril_bpf::DatapathConfig,
    ) -> Result<Self, DataplaneError> {
        let dp = netns
            .run(|| fibril_bpf::Datapath::load(pin_dir, config).map_err(Box::new))?
            .map_err(bpf_err(
                "loading the BPF datapath, pinned in",
                pin_dir.display().to_string(),
            ))?;
        Ok(BpfDataplane { dp })
    }
}

fn hook_name(h: &fibril_bpf::Hook) -> String {
    match h {
        fibril_bpf::Hook::FromPod => "tc-ingress (from-pod)",
        fibril_bpf::Hook::ToPod => "tc-egress (to-pod)",
        fibril_bpf::Hook::FromNetdev => "tc-ingress (from-netdev)",
        fibril_bpf::Hook::FromTunnel => "tc-ingress (from-tunnel)",
    }
    .to_string()
}

impl Dataplane for BpfDataplane {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn host_routing(&self) -> HostRouting {
        HostRouting::Bpf
    }

    fn attach_underlay(&mut self, netns: &NetNs, ifname: &str) -> Result<(), DataplaneError> {
        let dp = &mut self.dp;
        netns
            .run(|| dp.attach_underlay(ifname).map_err(Box::new))?
            .map_err(bpf_err("attaching the underlay program to", ifname))
    }

    fn attach_tunnel(&mut self, netns: &NetNs, ifname: &str) -> Result<(), DataplaneError> {
        let dp = &mut self.dp;
        netns
            .run(|| dp.attach_tunnel(ifname).map_err(Box::new))?
            .map_err(bpf_err("attaching the tunnel program to", ifname))
    }

    fn add_endpoint(&mut self, netns: &NetNs, ep: &EndpointInfo) -> Result<(), DataplaneError> {
        let dp = &mut self.dp;
        netns
            .run(|| dp.attach_pod(&ep.host_ifname).map_err(Box::new))?
            .map_err(bpf_err(
                "attaching the pod programs to",
                ep.host_ifname.clone(),
            ))?;
        let endpoint = fibril_bpf::Endpoint::Pod {
            ifindex: ep.host_ifindex,
            mac: fibril_bpf::MacAddr(ep.pod_mac.0),
            node_mac: fibril_bpf::MacAddr(ep.host_mac.0),
            identity: fibril_bpf::Identity::ANY,
        };
        self.dp
            .upsert_endpoint(ep.ip, &endpoint)
            .map_err(|e| bpf_err("writing the endpoint of", ep.ip.to_string())(Box::new(e)))
    }

    fn remove_endpoint(
        &mut self,
        netns: &NetNs,
        ip: Option<Ipv4Addr>,
        host_ifname: &str,
    ) -> Result<(), DataplaneError> {
        if let Some(ip) = ip {
            // Before the detach: nothing may be redirected to a veth on its way out.
            self.dp
                .remove_endpoint(ip)
                .map(|_| ())
                .map_err(|e| bpf_err("removing the endpoint of", ip.to_string())(Box::new(e)))?;
        }
        let dp = &mut self.dp;
        netns
            .run(|| dp.detach(host_ifname).map_err(Box::new))?
            .map_err(bpf_err("detaching the pod programs from", host_ifname))
    }

    fn upsert_remote(&mut self, prefix: Ipv4Net, node_ip: Ipv4Addr) -> Result<(), DataplaneError> {
        // The policy writer may have given the prefix its identities already: keep them.
        let mut remote = self
            .dp
            .maps()
            .remote(prefix)
            .map_err(|e| bpf_err("reading the ipcache entry of", prefix.to_string())(Box::new(e)))?
            .unwrap_or_default();
        remote.tunnel_endpoint = Some(node_ip);
        remote.identity_only = false;
        self.dp
            .upsert_remote(prefix, &remote)
            .map_err(|e| bpf_err("writing the ipcache entry of", prefix.to_string())(Box::new(e)))
    }

    fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<(), DataplaneError> {
        self.dp
            .remove_remote(prefix)
            .map(|_| ())
            .map_err(|e| bpf_err("removing the ipcache entry of", prefix.to_string())(Box::new(e)))
    }

    fn programs(&self) -> Vec<AttachedProgram> {
        self.dp
            .attached()
            .into_iter()
            .map(|(ifname, hooks)| AttachedProgram {
                ifname,
                hooks: hooks.iter().map(hook_name).collect(),
            })
            .collect()
    }

    fn prune_gone(&mut self, netns: &NetNs) -> Result<(), DataplaneError> {
        let dp = &mut self.dp;
        netns
            .run(|| dp.prune_gone().map_err(Box::new))?
            .map(|_| ())
            .map_err(bpf_err(
                "pruning gone interfaces from",
                self.dp.pin_dir().display().to_string(),
            ))
    }

    fn pin_dir(&self) -> &Path {
        self.dp.pin_dir()
    }

    fn sync_policy(
        &mut self,
        plan: &crate::policy::PolicyPlan,
    ) -> Result<crate::policy::PolicyApplied, DataplaneError> {
        crate::policy::apply(&mut self.dp, plan).map_err(|e| {
            bpf_err(
                "writing the policy maps in",
                self.dp.pin_dir().display().to_string(),
            )(e)
        })
    }

    fn sync_services(&mut self, table: &ServiceTable) -> Result<SyncStats, DataplaneError> {
        self.dp.sync_services(table).map_err(|e| {
            bpf_err(
                "syncing the service maps in",
                self.dp.pin_dir().display().to_string(),
            )(Box::new(e))
        })
    }

    fn drops(&self) -> Result<Vec<DropStatus>, DataplaneError> {
        let counts = self.dp.drop_counters().map_err(|e| {
            bpf_err(
                "reading the drop counters in",
                self.dp.pin_dir().display().to_string(),
            )(Box::new(e))
        })?;
        Ok(counts
            .into_iter()
            .filter(|c| c.packets > 0)
            .map(|c| DropStatus {
                reason: c.reason.as_str().to_string(),
                description: c.reason.description().to_string(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect())
    }
}
