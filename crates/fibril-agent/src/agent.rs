//! The node's CNI side: readiness, and ADD / DEL / CHECK / STATUS / GC over the IPAM,
//! the endpoints and the dataplane. Transport-free: [`Agent::handle`] takes a decoded
//! request and returns the response the CNI server sends back.
//!
//! Locking: one lock per attachment (so concurrent ADDs of different containers run in
//! parallel and a DEL never overlaps the ADD of the same attachment), the allocator's own
//! lock around allocate+persist, and the dataplane's lock around map and attach calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use fibril_core::agent_config::ValidConfig;
use fibril_core::cni_api::{
    code, AddRequest, AgentError, AttachmentKey, CheckRequest, CniOp, CniRequest, CniResponse,
    CniResult, DelRequest, GcRequest, Interface, IpConfig, NetworkConfig, Route, PROTOCOL_VERSION,
};
use fibril_core::ipam::{IpamError, Owner};
use fibril_netlink::NetNs;
use ipnet::{IpNet, Ipv4Net};

use crate::dataplane::{Dataplane, EndpointInfo};
use crate::endpoint::{self, EndpointRecord, EndpointStore};
use crate::ipam::{NodeIpam, NodeIpamError};

/// CHECK found the attachment's state differs from its ADD result (fibril's own code,
/// from the range the spec leaves to plugins).
pub const CHECK_MISMATCH: u32 = 110;
/// An internal failure (netlink, BPF, state file) while serving the command.
pub const INTERNAL_FAILURE: u32 = 111;

fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> AgentError {
    AgentError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    err(INTERNAL_FAILURE, format!("{what}: {e}"), "")
}

/// Where an ADD's time went (debug log): the allocation (fsynced) and, at the same time,
/// the veth pair; the pod interface's configuration, waiting for the dataplane lock and
/// attaching the programs, all three while the endpoint record is fsynced.
#[derive(Default)]
struct AddPhases {
    state: Duration,
    pair: Duration,
    configure: Duration,
    dataplane_wait: Duration,
    dataplane: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether ADD can be served, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    NotReady(String),
    Ready,
}

fn owner_of(key: &AttachmentKey) -> Result<Owner, AgentError> {
    Ok(Owner::from(key))
}

fn key_of(owner: &Owner) -> Option<AttachmentKey> {
    Some(AttachmentKey::from(owner.clone()))
}

/// The dataplane, shared by CNI commands and the reconcile loop.
type SharedDataplane = Mutex<Box<dyn Dataplane>>;

/// The agent state the CNI server and the controller loop share.
pub struct Agent {
    pub(crate) config: ValidConfig,
    /// The node's network namespace.
    pub(crate) netns: NetNs,
    readiness: RwLock<Readiness>,
    ipam: OnceLock<NodeIpam>,
    dataplane: OnceLock<SharedDataplane>,
    endpoints: EndpointStore,
    locks: Mutex<HashMap<AttachmentKey, Arc<Mutex<()>>>>,
    pod_mtu: RwLock<Option<u32>>,
}

impl Agent {
    pub fn new(config: ValidConfig, netns: NetNs) -> Agent {
        let endpoints = EndpointStore::new(&config.paths.state_dir);
        Agent {
            config,
            netns,
            readiness: RwLock::new(Readiness::NotReady("starting".into())),
            ipam: OnceLock::new(),
            dataplane: OnceLock::new(),
            endpoints,
            locks: Mutex::new(HashMap::new()),
            pod_mtu: RwLock::new(None),
        }
    }

    /// Sets the MTU pods get unless their network config names one: the underlay's, less
    /// the VXLAN overhead in tunnel mode.
    pub fn set_default_pod_mtu(&self, mtu: Option<u32>) {
        *self.pod_mtu.write().unwrap_or_else(|p| p.into_inner()) = mtu;
    }

    /// The network config's `mtu`, else the default.
    fn pod_mtu(&self, config: Option<&NetworkConfig>) -> Option<u32> {
        config
            .and_then(|c| c.mtu)
            .or(*self.pod_mtu.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn config(&self) -> &ValidConfig {
        &self.config
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_not_ready(&self, why: impl Into<String>) {
        *self.readiness.write().unwrap_or_else(|p| p.into_inner()) =
            Readiness::NotReady(why.into());
    }

    /// Installs IPAM and the dataplane (once), reconciles the persisted endpoints with the
    /// node, and starts serving ADD.
    pub fn become_ready(
        &self,
        ipam: NodeIpam,
        dataplane: Box<dyn Dataplane>,
    ) -> Result<Vec<String>, AgentError> {
        let _ = self.ipam.set(ipam);
        let _ = self.dataplane.set(Mutex::new(dataplane));
        let problems = self.reconcile_endpoints();
        *self.readiness.write().unwrap_or_else(|p| p.into_inner()) = Readiness::Ready;
        Ok(problems)
    }

    pub fn ipam(&self) -> Option<&NodeIpam> {
        self.ipam.get()
    }

    pub fn dataplane(&self) -> Option<MutexGuard<'_, Box<dyn Dataplane>>> {
        self.dataplane
            .get()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn endpoint_records(&self) -> BTreeMap<AttachmentKey, EndpointRecord> {
        self.endpoints
            .load_all()
            .map(|(m, _)| m)
            .unwrap_or_default()
    }

    fn lock_attachment(&self, key: &AttachmentKey) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn ready_parts(&self) -> Result<(&NodeIpam, &SharedDataplane), AgentError> {
        match (self.readiness(), self.ipam.get(), self.dataplane.get()) {
            (Readiness::Ready, Some(i), Some(d)) => Ok((i, d)),
            (Readiness::NotReady(why), ..) => Err(err(
                code::NOT_AVAILABLE,
                format!(
                    "the fibril agent on {} is not ready: {why}",
                    self.config.node_name
                ),
                "",
            )),
            _ => Err(err(
                code::NOT_AVAILABLE,
                "the fibril agent is not ready",
                "",
            )),
        }
    }

    /// Serves one request.
    pub fn handle(&self, req: CniRequest) -> CniResponse {
        if req.protocol != PROTOCOL_VERSION {
            return CniResponse::Error(err(
                code::PROTOCOL_MISMATCH,
                format!(
                    "the plugin speaks agent protocol {} but this agent speaks {PROTOCOL_VERSION}",
                    req.protocol
                ),
                "install the fibril-cni binary of the same release as the agent",
            ));
        }
        let config: Option<NetworkConfig> = serde_json::from_value(req.config.clone()).ok();
        let res = match req.op {
            CniOp::Add(a) => self.add(a, config.as_ref()).map(Some),
            CniOp::Del(d) => self.del(d).map(|()| None),
            CniOp::Check(c) => self.check(c).map(|()| None),
            CniOp::Status => self.status().map(|()| None),
            CniOp::Gc(g) => self.gc(g).map(|()| None),
        };
        match res {
            Ok(r) => CniResponse::Ok(r),
            Err(e) => CniResponse::Error(e),
        }
    }

    fn status(&self) -> Result<(), AgentError> {
        let (ipam, _) = self.ready_parts()?;
        let s = ipam.stats();
        if s.free == 0 {
            return Err(err(
                code::NOT_AVAILABLE,
                format!(
                    "pod block {} of node {} is exhausted ({} of {} addresses used)",
                    s.block, self.config.node_name, s.used, s.total
                ),
                "delete pods on this node, or give the node a larger pod CIDR",
            ));
        }
        Ok(())
    }

    fn add(
        &self,
        req: AddRequest,
        config: Option<&NetworkConfig>,
    ) -> Result<CniResult, AgentError> {
        let (ipam, dp) = self.ready_parts()?;
        let started = Instant::now();
        let mut phases = AddPhases::default();
        let key = req.attachment.key();
        let lock = self.lock_attachment(&key);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owner_of(&key)?;
        let pod_ns = NetNs::open_path(&req.netns).map_err(|e| {
            err(
                code::INVALID_NETNS,
                format!("CNI_NETNS {} is not usable: {e}", req.netns.display()),
                "",
            )
        })?;
        let host_veth = endpoint::veth_name(&key);
        // The address is allocated (and persisted, fsynced) while the veth pair is created:
        // neither needs the other. A crash in between leaves either an address that the
        // runtime's retried ADD or DEL/GC settles, or a veth that DEL or GC removes by its
        // derived name; ADD has not answered, so no address was handed out.
        let (allocated, pair) = std::thread::scope(|s| {
            let creating = s.spawn(|| {
                let t = Instant::now();
                let pair = endpoint::create_pair(
                    &self.netns,
                    &pod_ns,
                    &host_veth,
                    key.ifname.as_str(),
                    self.pod_mtu(config),
                );
                (pair, t.elapsed())
            });
            let allocated = ipam.allocate(&owner);
            phases.state = started.elapsed();
            let (pair, took) = creating
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            phases.pair = took;
            (allocated, pair)
        });
        let refused = |e: AgentError| {
            // Nothing was allocated: only the pair is undone.
            if let Err(problem) = endpoint::unplumb(&self.netns, &host_veth) {
                tracing::warn!(veth = %host_veth, error = %problem, "ADD refused; removing its veth failed");
            }
            Err(e)
        };
        let ip = match allocated {
            Ok(IpAddr::V4(ip)) => ip,
            Ok(IpAddr::V6(ip)) => {
                return refused(err(
                    code::INVALID_CONFIG,
                    format!("{ip}: IPv6 pod addresses are not supported yet"),
                    "",
                ))
            }
            Err(NodeIpamError::Ipam(e @ IpamError::BlockExhausted { .. })) => {
                return refused(err(
                    code::NOT_AVAILABLE,
                    format!("no pod address left on node {}: {e}", self.config.node_name),
                    "delete pods on this node, or give the node a larger pod CIDR",
                ))
            }
            Err(e) => return refused(internal("allocating a pod address", e)),
        };
        let IpAddr::V4(gateway) = ipam.gateway() else {
            let _ = self.teardown(&key, &owner, Some(ip), &host_veth);
            return Err(internal("pod gateway", "not IPv4"));
        };
        let rec = EndpointRecord {
            key: key.clone(),
            ip,
            host_veth: host_veth.clone(),
            netns: req.netns.clone(),
            pod: req.attachment.pod.clone(),
        };

        let setup = || -> Result<CniResult, AgentError> {
            // Three things at once, each of which waits on something else (the disk, the
            // kernel's RCU grace periods of two TCX attaches, netlink round trips): the
            // endpoint record reaches the disk, the programs are attached to the new host
            // veth, and the pod side is configured. The address is already persisted; a
            // crash before the record is durable leaves a veth that DEL or GC removes by
            // its derived name.
            std::thread::scope(|s| {
                let saving = s.spawn(|| self.endpoints.save(&rec));
                let interfaces = || -> Result<(endpoint::Plumbed, EndpointInfo), AgentError> {
                    let t = Instant::now();
                    let pair = pair.map_err(|e| internal("creating the pod's veth pair", e))?;
                    let ep = EndpointInfo {
                        ip,
                        host_ifname: host_veth.clone(),
                        host_ifindex: pair.host.index,
                        host_mac: pair
                            .host
                            .mac
                            .ok_or_else(|| internal("host veth", "no MAC"))?,
                        pod_mac: pair
                            .pod
                            .mac
                            .ok_or_else(|| internal("pod interface", "no MAC"))?,
                    };
                    let for_dp = ep.clone();
                    let node_ns = &self.netns;
                    let attaching = s.spawn(move || {
                        let t = Instant::now();
                        let mut dp = dp.lock().unwrap_or_else(|e| e.into_inner());
                        let wait = t.elapsed();
                        let t = Instant::now();
                        let r = dp.add_endpoint(node_ns, &for_dp);
                        (r, wait, t.elapsed())
                    });
                    let configured = endpoint::configure(
                        &self.netns,
                        &pod_ns,
                        &host_veth,
                        key.ifname.as_str(),
                        ip,
                        gateway,
                        ep.host_mac,
                    );
                    phases.configure = t.elapsed();
                    let (attached, wait, took) = attaching
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    phases.dataplane_wait = wait;
                    phases.dataplane = took;
                    configured.map_err(|e| internal("setting up the pod interface", e))?;
                    attached
                        .map_err(|e| internal("registering the endpoint with the dataplane", e))?;
                    Ok((pair, ep))
                };
                let outcome = interfaces();
                let saved = saving
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                let (p, ep) = outcome?;
                saved.map_err(|e| internal("recording the endpoint", e))?;
                self.result_of(&req, config, &key, &p, &ep, gateway)
            })
        };
        match setup() {
            Ok(r) => {
                tracing::info!(container = %key.container_id, ifname = %key.ifname, %ip, veth = %host_veth, "ADD");
                tracing::debug!(
                    total_ms = ms(started.elapsed()),
                    ipam_ms = ms(phases.state),
                    pair_ms = ms(phases.pair),
                    configure_ms = ms(phases.configure),
                    dataplane_lock_wait_ms = ms(phases.dataplane_wait),
                    dataplane_ms = ms(phases.dataplane),
                    "ADD phases"
                );
                Ok(r)
            }
            Err(e) => {
                // Never half-created: undo what this ADD did (the runtime will DEL anyway).
                tracing::warn!(container = %key.container_id, error = %e, "ADD failed; undoing");
                let _ = self.teardown(&key, &owner, Some(ip), &host_veth);
                Err(e)
            }
        }
    }

    /// The CNI result of an ADD whose interfaces `p` and endpoint `ep` are in place.
    fn result_of(
        &self,
        req: &AddRequest,
        config: Option<&NetworkConfig>,
        key: &AttachmentKey,
        p: &endpoint::Plumbed,
        ep: &EndpointInfo,
        gateway: Ipv4Addr,
    ) -> Result<CniResult, AgentError> {
        let ip = ep.ip;
        let mut result = req.prev_result.clone().unwrap_or_default();
        result.interfaces.push(Interface {
            name: ep.host_ifname.clone(),
            mac: Some(ep.host_mac.to_string()),
            ..Interface::default()
        });
        result.interfaces.push(Interface {
            name: key.ifname.to_string(),
            mac: Some(ep.pod_mac.to_string()),
            sandbox: Some(req.netns.display().to_string()),
            mtu: p.pod.mtu,
            ..Interface::default()
        });
        result.ips.push(IpConfig {
            address: IpNet::V4(Ipv4Net::new(ip, 32).expect("/32 is valid")),
            gateway: Some(IpAddr::V4(gateway)),
            interface: Some(result.interfaces.len() - 1),
        });
        result.routes.push(Route {
            dst: IpNet::V4(Ipv4Net::default()),
            gw: Some(IpAddr::V4(gateway)),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        });
        if let Some(dns) = config.and_then(|c| c.dns.clone()) {
            result.dns = dns;
        }
        Ok(result)
    }

    /// Releases everything held for one attachment; every failure is reported.
    fn teardown(
        &self,
        key: &AttachmentKey,
        owner: &Owner,
        ip: Option<Ipv4Addr>,
        host_veth: &str,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(dp) = self.dataplane.get() {
            if let Err(e) = dp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove_endpoint(&self.netns, ip, host_veth)
            {
                problems.push(format!("dataplane: {e}"));
            }
        }
        if let Err(e) = endpoint::unplumb(&self.netns, host_veth) {
            problems.push(format!("veth {host_veth}: {e}"));
        }
        // Before IPAM is loaded (a DEL while the agent starts) the address cannot be released
        // yet: the record stays, and the start-up reconcile releases it, its veth being gone.
        let released = match self.ipam.get() {
            Some(ipam) => match ipam.release(owner) {
                Ok(_) => true,
                Err(e) => {
                    problems.push(format!("IPAM: {e}"));
                    false
                }
            },
            None => false,
        };
        if released {
            if let Err(e) = self.endpoints.remove(key) {
                problems.push(format!("endpoint record: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn del(&self, req: DelRequest) -> Result<(), AgentError> {
        let key = req.attachment.key();
        let lock = self.lock_attachment(&key);
        let held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owner_of(&key)?;
        let rec = self.endpoints.get(&key).ok().flatten();
        let ip = rec.as_ref().map(|r| r.ip).or_else(|| {
            self.ipam
                .get()
                .and_then(|i| i.lookup(&owner))
                .and_then(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
        });
        let host_veth = rec
            .map(|r| r.host_veth)
            .unwrap_or_else(|| endpoint::veth_name(&key));
        let res = self.teardown(&key, &owner, ip, &host_veth);
        drop(held);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        match res {
            Ok(()) => {
                tracing::info!(container = %key.container_id, ifname = %key.ifname, ip = ?ip, "DEL");
                Ok(())
            }
            Err(problems) => Err(err(
                INTERNAL_FAILURE,
                format!(
                    "DEL of {}/{} left something behind: {}",
                    key.container_id,
                    key.ifname,
                    problems.join("; ")
                ),
                "",
            )),
        }
    }

    fn check(&self, req: CheckRequest) -> Result<(), AgentError> {
        let (ipam, dp) = self.ready_parts()?;
        let key = req.attachment.key();
        let lock = self.lock_attachment(&key);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owner_of(&key)?;
        let mismatch = |m: String| err(CHECK_MISMATCH, m, "");
        let Some(IpAddr::V4(ip)) = ipam.lookup(&owner) else {
            return Err(err(
                code::UNKNOWN_CONTAINER,
                format!(
                    "attachment {}/{} holds no address on node {}",
                    key.container_id, key.ifname, self.config.node_name
                ),
                "",
            ));
        };
        let want = IpNet::V4(Ipv4Net::new(ip, 32).expect("/32 is valid"));
        if !req.prev_result.ips.iter().any(|c| c.address == want) {
            return Err(mismatch(format!(
                "prevResult does not list {want}, the address the agent holds for {}/{}",
                key.container_id, key.ifname
            )));
        }
        let host_veth = endpoint::veth_name(&key);
        let host = self
            .netns
            .link(&host_veth)
            .map_err(|e| internal("reading the host veth", e))?;
        match host {
            Some(h) if h.up => {}
            Some(_) => return Err(mismatch(format!("host veth {host_veth} is down"))),
            None => return Err(mismatch(format!("host veth {host_veth} is missing"))),
        }
        let pod_ns = NetNs::open_path(&req.netns).map_err(|e| {
            err(
                code::INVALID_NETNS,
                format!("CNI_NETNS {} is not usable: {e}", req.netns.display()),
                "",
            )
        })?;
        let ifname = key.ifname.as_str();
        match pod_ns
            .link(ifname)
            .map_err(|e| internal("reading the pod interface", e))?
        {
            Some(l) if l.up => {}
            Some(_) => return Err(mismatch(format!("pod interface {ifname} is down"))),
            None => return Err(mismatch(format!("pod interface {ifname} is missing"))),
        }
        let addrs = pod_ns
            .addrs()
            .map_err(|e| internal("reading pod addresses", e))?;
        if !addrs
            .iter()
            .any(|a| a.ifname == ifname && a.addr.addr() == ip)
        {
            return Err(mismatch(format!("{ifname} in the pod does not carry {ip}")));
        }
        let routes = pod_ns
            .routes()
            .map_err(|e| internal("reading pod routes", e))?;
        let gw = match ipam.gateway() {
            IpAddr::V4(g) => g,
            IpAddr::V6(_) => return Err(internal("pod gateway", "not IPv4")),
        };
        if !routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.via == Some(gw))
        {
            return Err(mismatch(format!("the pod has no default route via {gw}")));
        }
        let attached = dp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .programs()
            .iter()
            .any(|p| p.ifname == host_veth);
        if !attached {
            return Err(mismatch(format!(
                "no fibril program is attached to host veth {host_veth}"
            )));
        }
        Ok(())
    }

    fn gc(&self, req: GcRequest) -> Result<(), AgentError> {
        let valid: BTreeSet<AttachmentKey> = req.valid_attachments.into_iter().collect();
        let valid_veths: BTreeSet<String> = valid.iter().map(endpoint::veth_name).collect();
        let mut problems = Vec::new();
        let mut stale: BTreeMap<AttachmentKey, (Option<Ipv4Addr>, String)> = BTreeMap::new();
        if let Some(ipam) = self.ipam.get() {
            for (ip, owner) in ipam.owners() {
                if let Some(k) = key_of(&owner).filter(|k| !valid.contains(k)) {
                    let v4 = match ip {
                        IpAddr::V4(v) => Some(v),
                        IpAddr::V6(_) => None,
                    };
                    let veth = endpoint::veth_name(&k);
                    stale.insert(k, (v4, veth));
                }
            }
        }
        for (k, r) in self.endpoint_records() {
            if !valid.contains(&k) {
                stale.entry(k).or_insert((Some(r.ip), r.host_veth));
            }
        }
        for (k, (ip, veth)) in &stale {
            let lock = self.lock_attachment(k);
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            let Ok(owner) = owner_of(k) else { continue };
            if let Err(p) = self.teardown(k, &owner, *ip, veth) {
                problems.extend(p);
            } else {
                tracing::info!(container = %k.container_id, ifname = %k.ifname, ip = ?ip, "GC released a stale attachment");
            }
        }
        // Leaked veths nobody holds (an agent crash between veth creation and its record).
        match self.netns.links() {
            Ok(links) => {
                for l in links {
                    if endpoint::is_pod_veth(&l.name) && !valid_veths.contains(&l.name) {
                        if let Some(dp) = self.dataplane.get() {
                            let _ = dp
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove_endpoint(&self.netns, None, &l.name);
                        }
                        match endpoint::unplumb(&self.netns, &l.name) {
                            Ok(()) => tracing::info!(veth = %l.name, "GC removed a leaked veth"),
                            Err(e) => problems.push(format!("veth {}: {e}", l.name)),
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("listing links: {e}")),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(err(
                INTERNAL_FAILURE,
                format!("GC could not release everything: {}", problems.join("; ")),
                "",
            ))
        }
    }

    /// After a restart: endpoints whose veth still exists are registered again (programs
    /// and maps stayed in place; this re-adopts them), those whose veth is gone (the pod
    /// went while the agent was down) are released. Returns the problems met.
    fn reconcile_endpoints(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let (records, bad) = match self.endpoints.load_all() {
            Ok(r) => r,
            Err(e) => return vec![format!("endpoint records: {e}")],
        };
        for p in bad {
            problems.push(format!("unreadable endpoint record {}", p.display()));
        }
        let Some(ipam) = self.ipam.get() else {
            return problems;
        };
        let Some(dp) = self.dataplane.get() else {
            return problems;
        };
        for (key, rec) in &records {
            let Ok(owner) = owner_of(key) else { continue };
            let host = self.netns.link(&rec.host_veth).ok().flatten();
            let pod_link = NetNs::open_path(&rec.netns)
                .ok()
                .and_then(|ns| ns.link(key.ifname.as_str()).ok().flatten());
            match (host, pod_link, ipam.lookup(&owner)) {
                (Some(h), Some(p), Some(IpAddr::V4(ip))) if ip == rec.ip => {
                    let ep = EndpointInfo {
                        ip,
                        host_ifname: rec.host_veth.clone(),
                        host_ifindex: h.index,
                        host_mac: h.mac.unwrap_or(fibril_netlink::MacAddr([0; 6])),
                        pod_mac: p.mac.unwrap_or(fibril_netlink::MacAddr([0; 6])),
                    };
                    if let Err(e) = dp
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .add_endpoint(&self.netns, &ep)
                    {
                        problems.push(format!("re-registering {}: {e}", rec.host_veth));
                    }
                }
                _ => {
                    tracing::info!(container = %key.container_id, ip = %rec.ip, "endpoint gone while the agent was down; releasing it");
                    if let Err(p) = self.teardown(key, &owner, Some(rec.ip), &rec.host_veth) {
                        problems.extend(p);
                    }
                }
            }
        }
        // Addresses persisted without a record: the agent died between allocation and the
        // record; the runtime's retried ADD or DEL/GC settles them. Nothing else to do.
        if let Err(e) = dp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prune_gone(&self.netns)
        {
            problems.push(format!("pruning gone interfaces: {e}"));
        }
        problems
    }
}
