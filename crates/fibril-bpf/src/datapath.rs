//! The forwarding datapath of one node: `bpf/pod.bpf.c` on every pod veth and
//! `bpf/host.bpf.c` on the underlay and VXLAN devices, sharing the maps pinned in the
//! node's pin dir.
//!
//! # Verdicts
//!
//! From a pod (tc ingress on the host side of its veth):
//! - not IPv4 (ARP, IPv6): passed to the stack, which answers ARP for the gateway;
//! - to an endpoint of this node: delivered into the pod with `bpf_redirect_peer`
//!   (TTL decremented, MACs set from the endpoint), or passed if it is a host endpoint;
//! - to a prefix in the ipcache: in this node's own pod range (the entry's tunnel
//!   endpoint is [`DatapathConfig::node_ip`]) but no endpoint: dropped
//!   ([`DropReason::NoEndpoint`](crate::DropReason::NoEndpoint)); otherwise routed by
//!   the mode: native, through the FIB (`bpf/lib/fib.h` documents each FIB result), or
//!   tunnel, through the VXLAN device (passed when the entry has no tunnel endpoint);
//! - anything else (the node, the world): passed to the stack.
//!
//! From the underlay or the tunnel: to an endpoint, delivered as above; to this node's
//! pod range but no endpoint, dropped; anything else passed.
//!
//! Before any of that, TCP and UDP packets meet the service layer (`bpf/lib/lb.h`, maps
//! in [`crate::services`]): a packet to a service frontend (from a pod: any; from the
//! underlay: NodePort, ExternalIP, LoadBalancer) is translated to a backend and routed
//! to it (or, without backends, answered with a TCP RST / ICMP port unreachable and
//! counted as [`DropReason::SvcNoBackend`](crate::DropReason::SvcNoBackend)); a reply
//! of a service connection is translated back and routed to the client. The tc egress
//! hook toward a pod translates back replies that reach the pod through the stack.
//!
//! NetworkPolicy ([`crate::policy`], `bpf/lib/policy.h`): a pod's egress policy applies
//! to what it sends after the service translation, its ingress policy before anything
//! is delivered into it (from a pod, the underlay, the tunnel or the stack); a new
//! connection no entry allows is dropped
//! ([`DropReason::PolicyDenied`](crate::DropReason::PolicyDenied)), replies of allowed
//! ones pass by the policy conntrack. Endpoints without policy state pay one lookup.
//!
//! Every drop emits an event and counts by reason; forwarded and passed packets emit
//! events only when sampled ([`DatapathConfig::trace_sample`]).
//!
//! # Restart
//!
//! Maps and links are pinned (see [`crate::tcx`]). Dropping a [`Datapath`] leaves
//! everything attached and forwarding. [`Datapath::load`] with the same pin dir reuses
//! the maps as they are; attaching the same interfaces again adopts the pinned links and
//! moves them atomically to the new programs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard};

use aya::Ebpf;
use fibril_core::services::{L4Proto, ServiceTable};
use ipnet::Ipv4Net;

use crate::error::{BpfError, ConfigProblem};
use crate::events::EventReader;
use crate::hook::Hook;
use crate::loader::{self, HOST, POD};
use crate::maps::{DatapathMaps, DropCount, Endpoint, Remote};
use crate::pod::{self, forget_detached_ep_stats};
use crate::policy::PolicyMaps;
use crate::services::{ConntrackEntry, ServiceMaps, SyncStats};
use crate::shared::{self, fibril_config};
use crate::tcx::{self, Attachments, Prepared};

/// How packets reach pods on other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingMode {
    /// Through the node's FIB: the agent routes each other node's pod CIDR via that
    /// node's IP, and keeps `net.ipv4.conf.<pod veth>.forwarding` on.
    Native,
    /// Through a VXLAN device in collect_md mode (`ip link add … type vxlan external`),
    /// to the tunnel endpoint the ipcache names.
    Tunnel {
        /// The VXLAN device, in the node's netns.
        device_ifindex: u32,
    },
}

impl RoutingMode {
    pub const fn as_str(&self) -> &'static str {
        match self {
            RoutingMode::Native => "native",
            RoutingMode::Tunnel { .. } => "tunnel",
        }
    }
}

/// Load-time settings of the datapath (the programs' `const volatile` configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    pub routing: RoutingMode,
    /// This node's IPv4 on the underlay: identifies the ipcache entry of its own pod range.
    pub node_ip: Ipv4Addr,
    /// One in this many forwarded or passed packets emits an event; `None` (the
    /// default): none do. Drops always emit one.
    pub trace_sample: Option<NonZeroU32>,
}

impl DatapathConfig {
    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), BpfError> {
        let mut problems = Vec::new();
        let ip = self.node_ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_broadcast() || ip.is_multicast() {
            problems.push(ConfigProblem::NodeIp { addr: ip });
        }
        if let RoutingMode::Tunnel { device_ifindex: 0 } = self.routing {
            problems.push(ConfigProblem::TunnelIfindex);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BpfError::Config { problems })
        }
    }

    fn to_raw(self) -> fibril_config {
        let (routing_mode, tunnel_ifindex) = match self.routing {
            RoutingMode::Native => (shared::FIBRIL_ROUTING_NATIVE, 0),
            RoutingMode::Tunnel { device_ifindex } => {
                (shared::FIBRIL_ROUTING_TUNNEL, device_ifindex)
            }
        };
        fibril_config {
            routing_mode,
            node_ipv4: u32::from(self.node_ip).to_be(),
            tunnel_ifindex,
            trace_sample: self.trace_sample.map_or(0, NonZeroU32::get),
        }
    }
}

/// The datapath of one node, loaded, with its maps pinned in the node's pin dir.
pub struct Datapath {
    pod: Ebpf,
    host: Ebpf,
    pin_dir: PathBuf,
    config: DatapathConfig,
    attachments: Attachments,
    maps: DatapathMaps,
    policy: PolicyMaps,
    /// Behind a lock so that the control plane can sync through a shared handle; syncs
    /// are serialized.
    services: Mutex<ServiceMaps>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("config", &self.config)
            .field("attached", &self.attachments.list())
            .finish()
    }
}

impl Datapath {
    /// Loads and verifies the programs with `config`, reusing the maps pinned in
    /// `pin_dir` (endpoints, ipcache, counters and events survive a restart) or pinning
    /// new ones there. Attaches nothing. Mounts bpffs if needed.
    pub fn load(pin_dir: &Path, config: DatapathConfig) -> Result<Self, BpfError> {
        config.validate()?;
        let raw = config.to_raw();
        let pod = loader::load(POD, pin_dir, Some(&raw))?;
        let host = loader::load(HOST, pin_dir, Some(&raw))?;
        let maps = DatapathMaps::open(pin_dir)?;
        let services = Mutex::new(ServiceMaps::open(pin_dir)?);
        let policy = PolicyMaps::open(pin_dir)?;
        Ok(Datapath {
            services,
            policy,
            pod,
            host,
            pin_dir: pin_dir.to_path_buf(),
            config,
            attachments: Attachments::new(pin_dir),
            maps,
        })
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the pod programs (tc ingress: routing; tc egress: counting) to the host
    /// side of a pod's veth, `ifname` in the current netns (the caller has entered the
    /// node's netns). Idempotent; adopts links a previous agent pinned.
    pub fn attach_pod(&mut self, ifname: &str) -> Result<(), BpfError> {
        pod::attach_pod_hooks(&mut self.pod, &mut self.attachments, ifname)
    }

    /// Attaches the underlay program to the node's uplink `ifname` (tc ingress).
    pub fn attach_underlay(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.attach_host(ifname, Hook::FromNetdev)
    }

    /// Attaches the tunnel program to the VXLAN device `ifname` (tc ingress), which must
    /// be the device the datapath was configured with.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), BpfError> {
        let RoutingMode::Tunnel { device_ifindex } = self.config.routing else {
            return Err(BpfError::WrongRoutingMode {
                ifname: ifname.to_string(),
                hook: Hook::FromTunnel,
                mode: self.config.routing.as_str(),
            });
        };
        let ifindex = tcx::ifindex_of(ifname)?;
        if ifindex != device_ifindex {
            return Err(BpfError::TunnelDeviceMismatch {
                ifname: ifname.to_string(),
                ifindex,
                configured: device_ifindex,
            });
        }
        self.attach_host(ifname, Hook::FromTunnel)
    }

    fn attach_host(&mut self, ifname: &str, hook: Hook) -> Result<(), BpfError> {
        let hooks = [hook];
        let ifindex = match self.attachments.prepare(ifname, &hooks)? {
            Prepared::Done => return Ok(()),
            Prepared::Attach { ifindex } => ifindex,
        };
        let prog = loader::program_mut(&mut self.host, HOST, hook.program())?;
        let link = self.attachments.attach_one(prog, hook, ifname, ifindex)?;
        self.attachments.insert(ifname, ifindex, &hooks, vec![link]);
        Ok(())
    }

    /// Detaches whatever fibril attached to `ifname`, removes the link pins and the
    /// interface's counters. Succeeds when there is nothing to detach.
    pub fn detach(&mut self, ifname: &str) -> Result<(), BpfError> {
        if let Some(ifindex) = self.attachments.detach(ifname)? {
            forget_detached_ep_stats(&self.pin_dir, ifindex)?;
        }
        Ok(())
    }

    /// Forgets interfaces gone from the current netns (deleted while the agent was down):
    /// their link pins and counters. Returns their ifindexes.
    pub fn prune_gone(&mut self) -> Result<Vec<u32>, BpfError> {
        pod::prune_gone(&self.pin_dir, &mut self.attachments)
    }

    /// Interfaces attached through this handle (including adopted ones) and their hooks.
    pub fn attached(&self) -> Vec<(String, Vec<Hook>)> {
        self.attachments.list()
    }

    pub fn maps(&self) -> &DatapathMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut DatapathMaps {
        &mut self.maps
    }

    /// The NetworkPolicy maps: see [`PolicyMaps`].
    pub fn policy(&self) -> &PolicyMaps {
        &self.policy
    }

    pub fn policy_mut(&mut self) -> &mut PolicyMaps {
        &mut self.policy
    }

    /// See [`DatapathMaps::upsert_endpoint`].
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, endpoint: &Endpoint) -> Result<(), BpfError> {
        self.maps.upsert_endpoint(ip, endpoint)
    }

    /// See [`DatapathMaps::remove_endpoint`].
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, BpfError> {
        self.maps.remove_endpoint(ip)
    }

    /// See [`DatapathMaps::endpoints`].
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, BpfError> {
        self.maps.endpoints()
    }

    /// See [`DatapathMaps::upsert_remote`].
    pub fn upsert_remote(&mut self, prefix: Ipv4Net, remote: &Remote) -> Result<(), BpfError> {
        self.maps.upsert_remote(prefix, remote)
    }

    /// See [`DatapathMaps::remove_remote`].
    pub fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<bool, BpfError> {
        self.maps.remove_remote(prefix)
    }

    /// See [`DatapathMaps::remotes`].
    pub fn remotes(&self) -> Result<Vec<(Ipv4Net, Remote)>, BpfError> {
        self.maps.remotes()
    }

    /// See [`DatapathMaps::drop_counters`].
    pub fn drop_counters(&self) -> Result<Vec<DropCount>, BpfError> {
        self.maps.drop_counters()
    }

    fn services(&self) -> MutexGuard<'_, ServiceMaps> {
        // A panic mid-sync leaves the maps consistent for the datapath (every write is
        // atomic per frontend); the next sync reads them back.
        let guard = self.services.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            guard.forget_state();
            guard
        });
        self.services.clear_poison();
        guard
    }

    /// Makes the service maps hold exactly `table`: see [`ServiceMaps::sync`].
    pub fn sync_services(&self, table: &ServiceTable) -> Result<SyncStats, BpfError> {
        self.services().sync(table)
    }

    /// What the service maps hold, as a table: see [`ServiceMaps::dump`].
    pub fn dump_services(&self) -> Result<ServiceTable, BpfError> {
        self.services().dump()
    }

    /// Every service conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<ConntrackEntry>, BpfError> {
        self.services().conntrack()
    }

    /// Forgets every connection to `backend` over `proto`: see
    /// [`ServiceMaps::flush_conntrack_backend`]. [`Datapath::sync_services`] already
    /// does this for UDP backends a service loses.
    pub fn flush_conntrack_backend(
        &self,
        backend: SocketAddrV4,
        proto: L4Proto,
    ) -> Result<usize, BpfError> {
        self.services().flush_conntrack_backend(backend, proto)
    }

    /// A reader of this node's events (one reader per node: see [`crate::events`]).
    pub fn events(&self) -> Result<EventReader, BpfError> {
        EventReader::open(&self.pin_dir)
    }

    /// The loaded program for `hook`, for BPF_PROG_TEST_RUN.
    #[cfg(test)]
    pub(crate) fn program(&mut self, hook: Hook) -> &mut aya::programs::SchedClassifier {
        match hook {
            Hook::FromPod | Hook::ToPod => loader::program_mut(&mut self.pod, POD, hook.program()),
            Hook::FromNetdev | Hook::FromTunnel => {
                loader::program_mut(&mut self.host, HOST, hook.program())
            }
        }
        .expect("every hook's program is loaded")
    }
}

#[cfg(test)]
mod tests;
