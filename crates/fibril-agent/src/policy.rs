//! NetworkPolicy on this node: watch, compile, write the datapath's policy state.
//!
//! It watches NetworkPolicies, Namespaces, Pods (all of them: a peer's identity is needed
//! whatever node it runs on) and Nodes through kube-rs. On every change (debounced) it
//! builds a [`ClusterState`], compiles it from scratch with a fresh [`Compiler`], and
//! makes the datapath hold the result for this node ([`crate::dataplane::Dataplane::
//! sync_policy`]): every ipcache entry with its identities, and each local endpoint's
//! isolation and allow entries (an endpoint's entries are replaced atomically, see
//! [`fibril_bpf::policy`]). Only what differs is written.
//!
//! # Identities are the same on every node
//!
//! A fresh compiler numbers pod identities in the order of their label sets, and CIDR
//! identities in the order of their prefixes, from the bottom of each range
//! ([`fibril_core::policy::identity`]). The numbers are therefore a function of the
//! cluster state alone, not of the order in which an agent saw it or of what it saw
//! before: two agents that have listed the same objects hold the same numbers. Agents
//! agree while their watches agree (between an update and its arrival at every node,
//! they can differ for as long as the watch lag). Correctness does not depend on that
//! agreement: each node looks peers up in its own ipcache and its own maps, so a number
//! never crosses nodes in a decision (the VXLAN VNI carries the source's identity, for
//! observability only). Agreement is what makes events and status from different nodes
//! comparable.
//!
//! The price: a new label set that sorts before others renumbers them, and that rewrites
//! every map that names them. Between the ipcache write and the endpoints' flips (one
//! pass over the maps, milliseconds at lab scale) a new connection can meet a number
//! that moved; established connections are not affected (conntrack).
//!
//! # What is not here
//!
//! A pod is unprotected from its CNI ADD until its first sync (its address must reach the
//! API and then this watch); the endpoint then appears with its policy.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fibril_bpf::{
    BpfError, Datapath, EndpointRules, Event, EventReader, Identity, Remote, SetOutcome, Verdict,
};
use fibril_core::policy::dns::dns_warnings;
use fibril_core::policy::{
    ClusterState, Compiler, Ipcache, NamespaceInfo, NodeInfo, PodInfo, PodKey,
};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::agent::Agent;
use crate::services::{watch_into, AbortOnDrop};
use crate::status::{section_head, sync_lines};

/// How long a wake-up waits for more changes before compiling.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A compile at least this often, even without events (it writes only a difference).
const RESYNC: Duration = Duration::from_secs(30);
/// Pause after a failed sync before the next attempt.
const RETRY: Duration = Duration::from_secs(1);
/// Drops kept for status.
const RECENT_DROPS: usize = 32;

/// What the datapath should hold for policy on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Every ipcache entry, with its identities and routing.
    pub ipcache: BTreeMap<Ipv4Net, Remote>,
    /// The policy of each endpoint of this node, by address.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointRules>,
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyApplied {
    /// Endpoints whose entries went live under a new generation.
    pub written: usize,
    pub unchanged: usize,
    /// Endpoints no longer isolated (or gone).
    pub removed: usize,
    /// Local endpoints isolated in at least one direction.
    pub isolated: usize,
    /// Local endpoints found in the datapath.
    pub local_endpoints: usize,
    pub ipcache_written: usize,
    pub ipcache_removed: usize,
    /// The live revision of each isolated local endpoint.
    pub revisions: BTreeMap<Ipv4Addr, u32>,
}

/// The datapath's ipcache from the compiled one (as this node sees it) and the routing
/// table (pod range -> node address): an entry inside a pod range carries that node as
/// its tunnel endpoint, so that routing to it is unchanged; any other entry only names
/// identities. `host` addresses (the pods' gateway) are this node.
pub fn datapath_ipcache(
    ipcache: &Ipcache,
    routes: &BTreeMap<Ipv4Net, Ipv4Addr>,
    host: &[Ipv4Addr],
) -> BTreeMap<Ipv4Net, Remote> {
    let route_of = |net: &Ipv4Net| {
        routes
            .iter()
            .filter(|(r, _)| r.contains(net))
            .max_by_key(|(r, _)| r.prefix_len())
            .map(|(_, ip)| *ip)
    };
    let mut out: BTreeMap<Ipv4Net, Remote> = ipcache
        .iter()
        .map(|(net, e)| {
            let tunnel = route_of(net);
            (
                *net,
                Remote {
                    identity: e.identity,
                    tunnel_endpoint: tunnel,
                    cidr_identity: e.cidr_identity,
                    identity_only: tunnel.is_none(),
                },
            )
        })
        .collect();
    for ip in host {
        let net = Ipv4Net::from(*ip);
        let tunnel = route_of(&net);
        let cidr_identity = ipcache.lookup(*ip).and_then(|(_, e)| {
            // The ipBlock identity an address has, whatever its own identity.
            e.cidr_identity
                .or_else(|| e.identity.is_cidr().then_some(e.identity))
        });
        out.insert(
            net,
            Remote {
                identity: Identity::HOST,
                tunnel_endpoint: tunnel,
                cidr_identity,
                identity_only: tunnel.is_none(),
            },
        );
    }
    out
}

/// Pod range -> InternalIP of every node that has both (what routing uses).
pub fn routes_of(nodes: &[Node]) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        let cidr = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .and_then(|c| c.parse::<Ipv4Net>().ok());
        if let (Some(ip), Some(cidr)) = (ip, cidr) {
            out.insert(cidr.trunc(), ip);
        }
    }
    out
}

/// Makes the BPF datapath hold `plan` (the body of
/// [`crate::dataplane::BpfDataplane`]'s `sync_policy`). The ipcache first, then each
/// endpoint, then what is no longer wanted. An entry not in the plan that looks like a
/// routing entry (a pod range with its node) keeps its routing and loses its identities;
/// routing removes it when its node goes.
pub fn apply(dp: &mut Datapath, plan: &PolicyPlan) -> Result<PolicyApplied, Box<BpfError>> {
    let mut out = PolicyApplied::default();
    let current: BTreeMap<Ipv4Net, Remote> = dp.remotes()?.into_iter().collect();
    for (net, want) in &plan.ipcache {
        if current.get(net) != Some(want) {
            dp.upsert_remote(*net, want)?;
            out.ipcache_written += 1;
        }
    }

    let local: BTreeMap<Ipv4Addr, u32> = dp
        .endpoints()?
        .into_iter()
        .filter_map(|(ip, ep)| match ep {
            fibril_bpf::Endpoint::Pod { ifindex, .. } => Some((ip, ifindex)),
            fibril_bpf::Endpoint::Host { .. } => None,
        })
        .collect();
    out.local_endpoints = local.len();
    let mut keep = BTreeSet::new();
    for (ip, rules) in &plan.endpoints {
        let Some(&ifindex) = local.get(ip) else {
            continue;
        };
        dp.maps_mut().set_endpoint_identity(*ip, rules.identity)?;
        if !rules.is_isolated() {
            continue;
        }
        keep.insert(ifindex);
        out.isolated += 1;
        match dp.policy_mut().set(ifindex, rules)? {
            SetOutcome::Unchanged => out.unchanged += 1,
            SetOutcome::Written { .. } => out.written += 1,
            SetOutcome::Removed => out.removed += 1,
        }
    }
    out.removed += dp.policy_mut().retain(&keep)?.len();
    let by_ifindex: BTreeMap<u32, Ipv4Addr> = local.iter().map(|(ip, i)| (*i, *ip)).collect();
    for ep in dp.policy().endpoints()? {
        if let Some(ip) = by_ifindex.get(&ep.ifindex) {
            out.revisions.insert(*ip, ep.revision);
        }
    }

    for (net, have) in &current {
        if plan.ipcache.contains_key(net) {
            continue;
        }
        let routing =
            have.tunnel_endpoint.is_some() && !have.identity_only && net.prefix_len() < 32;
        if routing {
            let neutral = Remote {
                identity: Identity::ANY,
                cidr_identity: None,
                ..*have
            };
            if neutral != *have {
                dp.upsert_remote(*net, &neutral)?;
                out.ipcache_written += 1;
            }
        } else if dp.remove_remote(*net)? {
            out.ipcache_removed += 1;
        }
    }
    Ok(out)
}

/// A drop the datapath reported, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropRecord {
    /// When the agent read it (RFC 3339).
    pub seen: String,
    /// The stable reason name (`policy_denied`, …).
    pub reason: String,
    /// Where: `from-pod`, `to-pod`, `from-netdev`, `from-tunnel`.
    pub hook: String,
    /// Policy drops: the direction that denied and the endpoint's policy revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The pods behind the addresses, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
}

impl DropRecord {
    fn of(ev: &Event) -> Option<Self> {
        let Verdict::Dropped(reason) = ev.verdict else {
            return None;
        };
        Some(DropRecord {
            seen: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            reason: reason.as_str().to_string(),
            hook: ev.hook.to_string(),
            direction: ev.policy.map(|p| p.direction.to_string()),
            revision: ev.policy.map(|p| p.revision),
            proto: ev.proto,
            src: ev.src,
            src_port: ev.src_port,
            dst: ev.dst,
            dst_port: ev.dst_port,
            src_identity: ev.src_identity.0,
            dst_identity: ev.dst_identity.0,
            src_pod: None,
            dst_pod: None,
        })
    }

    fn proto_name(&self) -> String {
        match self.proto {
            6 => "TCP".into(),
            17 => "UDP".into(),
            132 => "SCTP".into(),
            1 => "ICMP".into(),
            p => format!("proto {p}"),
        }
    }

    pub fn render(&self) -> String {
        let side = |ip: Ipv4Addr, port: u16, pod: &Option<String>| {
            let p = if port == 0 {
                ip.to_string()
            } else {
                format!("{ip}:{port}")
            };
            match pod {
                Some(pod) => format!("{p} ({pod})"),
                None => p,
            }
        };
        let policy = match (&self.direction, self.revision) {
            (Some(d), Some(r)) => format!(" ({d}, revision {r})"),
            _ => String::new(),
        };
        format!(
            "{} {}{policy} at {}: {} {} -> {} identities {} -> {}",
            self.seen,
            // Read as words ("policy denied"); JSON keeps the stable name.
            self.reason.replace('_', " "),
            self.hook,
            self.proto_name(),
            side(self.src, self.src_port, &self.src_pod),
            side(self.dst, self.dst_port, &self.dst_pod),
            self.src_identity,
            self.dst_identity
        )
    }
}

/// NetworkPolicy on this node, as `fibril status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Set while nothing is synced yet: what the agent waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// NetworkPolicies in the cluster.
    pub policies: usize,
    /// Identities in use (pod label sets and ipBlock prefixes).
    pub identities: usize,
    /// Endpoints of this node, and those isolated in at least one direction.
    pub local_endpoints: usize,
    pub isolated_endpoints: usize,
    /// The live policy revision of each isolated endpoint of this node (pod -> revision).
    #[serde(default)]
    pub revisions: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_compile_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<f64>,
    /// The last sync failed: why (it is retried). Also set when the dataplane cannot
    /// enforce policy at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_error: Option<String>,
    /// Objects or policies that could not be used, each naming the object and field.
    #[serde(default)]
    pub problems: Vec<String>,
    /// What compiled, but not exactly as written.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Seed 003: egress policies that leave their pods no DNS.
    #[serde(default)]
    pub dns_warnings: Vec<String>,
    /// The datapath's most recent drops (any reason), newest last.
    #[serde(default)]
    pub recent_drops: Vec<DropRecord>,
    /// Why drops cannot be read, if they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_error: Option<String>,
}

impl PolicyStatus {
    /// The human form: one summary line, then one line per problem, warning and drop.
    pub fn render(&self) -> String {
        let mut out = section_head(
            "Policy:",
            self.waiting_for.as_deref(),
            || {
                format!(
                    "{} policies, {} identities, {}/{} local endpoints isolated{}",
                    self.policies,
                    self.identities,
                    self.isolated_endpoints,
                    self.local_endpoints,
                    self.last_compile_ms
                        .map(|ms| format!(", compiled in {ms:.1} ms"))
                        .unwrap_or_default(),
                )
            },
            self.last_sync.as_deref(),
        );
        sync_lines(
            &mut out,
            "NOT ENFORCED",
            self.sync_error.as_deref(),
            self.watch_error.as_deref(),
        );
        for (pod, rev) in &self.revisions {
            out.push_str(&format!("  isolated: {pod} (revision {rev})\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("  problem: {p}\n"));
        }
        for w in self.warnings.iter().chain(&self.dns_warnings) {
            out.push_str(&format!("  warning: {w}\n"));
        }
        if let Some(e) = &self.events_error {
            out.push_str(&format!("  drops unreadable: {e}\n"));
        }
        for d in &self.recent_drops {
            out.push_str(&format!("  drop: {}\n", d.render()));
        }
        out
    }
}

/// Reads the datapath's events until aborted, keeping the recent drops.
async fn read_drops(
    pin_dir: std::path::PathBuf,
    drops: Arc<Mutex<VecDeque<DropRecord>>>,
    error: Arc<Mutex<Option<String>>>,
) {
    let set_err = |e: String| {
        tracing::warn!(error = %e, "reading the datapath's events");
        *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    };
    let reader = match EventReader::open(&pin_dir) {
        Ok(r) => r,
        Err(e) => return set_err(e.to_string()),
    };
    // SAFETY: the reader owns its fd for its whole life and always returns the same one;
    // the AsyncFd owns the reader.
    let registered =
        unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return set_err(format!("polling the events ring buffer: {e}")),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return set_err(format!("polling the events ring buffer: {e}")),
        };
        while let Some(ev) = guard.get_inner_mut().next_event() {
            match ev {
                Ok(ev) => {
                    if let Some(d) = DropRecord::of(&ev) {
                        if d.reason == fibril_bpf::DropReason::PolicyDenied.as_str() {
                            tracing::info!(drop = %d.render(), "policy denied");
                        }
                        let mut q = drops.lock().unwrap_or_else(|p| p.into_inner());
                        if q.len() == RECENT_DROPS {
                            q.pop_front();
                        }
                        q.push_back(d);
                    }
                }
                Err(e) => set_err(e.to_string()),
            }
        }
        guard.clear_ready();
    }
}

/// The recent drops, with the pods behind their addresses.
fn named_drops(
    drops: &Mutex<VecDeque<DropRecord>>,
    pod_of_ip: &BTreeMap<Ipv4Addr, PodKey>,
) -> Vec<DropRecord> {
    drops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .map(|mut d| {
            d.src_pod = pod_of_ip.get(&d.src).map(ToString::to_string);
            d.dst_pod = pod_of_ip.get(&d.dst).map(ToString::to_string);
            d
        })
        .collect()
}

/// The policy of this node's endpoints and the ipcache, from a compile.
fn plan_of(
    compiled: &fibril_core::policy::CompiledPolicy,
    node: &str,
    routes: &BTreeMap<Ipv4Net, Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
) -> PolicyPlan {
    let ipcache = datapath_ipcache(&compiled.ipcache_for_node(node), routes, gateway.as_slice());
    let endpoints = compiled
        .endpoints
        .values()
        .filter(|e| e.node.as_deref() == Some(node))
        .map(|e| (e.ip, EndpointRules::of(e)))
        .collect();
    PolicyPlan { ipcache, endpoints }
}

/// The cluster state from the watched objects; objects that do not convert are left out
/// and named.
fn cluster_state(
    namespaces: &[Arc<Namespace>],
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
    policies: &[Arc<NetworkPolicy>],
) -> (ClusterState, Vec<String>) {
    let mut state = ClusterState::default();
    let mut problems = Vec::new();
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
    };
    let fields = |v: Vec<fibril_core::manifest::FieldProblem>| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    for ns in namespaces {
        match NamespaceInfo::from_k8s(ns) {
            Ok(n) => state.upsert_namespace(n),
            Err(e) => problems.push(format!("Namespace {}: {}", name(&ns.metadata), fields(e))),
        }
    }
    for pod in pods {
        // Finished pods have no address that is still theirs.
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        match PodInfo::from_k8s(pod) {
            Ok(mut p) => {
                if finished {
                    p.ip = None;
                }
                state.upsert_pod(p)
            }
            Err(e) => problems.push(format!("Pod {}: {}", name(&pod.metadata), fields(e))),
        }
    }
    for node in nodes {
        match NodeInfo::from_k8s(node) {
            Ok(n) => state.upsert_node(n),
            Err(e) => problems.push(format!("Node {}: {}", name(&node.metadata), fields(e))),
        }
    }
    for np in policies {
        if let Err(e) = state.upsert_policy((**np).clone()) {
            problems.push(format!(
                "NetworkPolicy {}: {}",
                name(&np.metadata),
                fields(e)
            ));
        }
    }
    (state, problems)
}

/// Runs until aborted: watch, compile, sync, report. `publish` receives every new status.
pub async fn run(
    agent: Arc<Agent>,
    client: kube::Client,
    publish: impl Fn(PolicyStatus) + Send + Sync + 'static,
) {
    let node = agent.config().node_name.as_str().to_string();
    let gateway = agent.ipam().and_then(|i| match i.gateway() {
        IpAddr::V4(g) => Some(g),
        IpAddr::V6(_) => None,
    });
    let wake = Arc::new(Notify::new());
    let watch_error = Arc::new(Mutex::new(None::<String>));
    let on_error = |what: &'static str| {
        let slot = watch_error.clone();
        move |e: String| {
            tracing::warn!(error = %e, "{what} watch");
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what} watch: {e}"));
        }
    };
    let (policies, w1) = watch_into::<NetworkPolicy>(
        Api::all(client.clone()),
        wake.clone(),
        on_error("NetworkPolicy"),
    );
    let (namespaces, w2) = watch_into::<Namespace>(
        Api::all(client.clone()),
        wake.clone(),
        on_error("Namespace"),
    );
    let (pods, w3) = watch_into::<Pod>(Api::all(client.clone()), wake.clone(), on_error("Pod"));
    let (nodes, w4) = watch_into::<Node>(Api::all(client), wake.clone(), on_error("Node"));
    let _watches = [
        AbortOnDrop(tokio::spawn(w1)),
        AbortOnDrop(tokio::spawn(w2)),
        AbortOnDrop(tokio::spawn(w3)),
        AbortOnDrop(tokio::spawn(w4)),
    ];
    let drops = Arc::new(Mutex::new(VecDeque::new()));
    let events_error = Arc::new(Mutex::new(None));
    let pin_dir = agent.dataplane().map(|dp| dp.pin_dir().to_path_buf());
    let _events = pin_dir.map(|dir| {
        AbortOnDrop(tokio::spawn(read_drops(
            dir,
            drops.clone(),
            events_error.clone(),
        )))
    });

    let mut status = PolicyStatus {
        waiting_for: Some("the first list of NetworkPolicies, Namespaces, Pods and Nodes".into()),
        ..PolicyStatus::default()
    };
    publish(status.clone());
    if policies.wait_until_ready().await.is_err()
        || namespaces.wait_until_ready().await.is_err()
        || pods.wait_until_ready().await.is_err()
        || nodes.wait_until_ready().await.is_err()
    {
        tracing::error!("a policy watch ended before its first list");
        return;
    }
    status.waiting_for = None;
    tracing::info!(%node, "policy: watching; first sync");

    let mut synced: Option<PolicyPlan> = None;
    let mut last_apply = Instant::now();
    let mut pod_of_ip: BTreeMap<Ipv4Addr, PodKey> = BTreeMap::new();
    loop {
        let node_objs = nodes.state();
        let (state, mut problems) = cluster_state(
            &namespaces.state(),
            &pods.state(),
            &node_objs,
            &policies.state(),
        );
        let routes = routes_of(&node_objs.iter().map(|n| (**n).clone()).collect::<Vec<_>>());
        let started = Instant::now();
        let mut failed = false;
        match Compiler::new().compile(&state) {
            Ok(compiled) => {
                status.last_compile_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                status.policies = compiled.policy_count;
                status.identities = compiled.identity_count();
                problems.extend(compiled.problems.iter().map(ToString::to_string));
                status.warnings = compiled.warnings.iter().map(ToString::to_string).collect();
                status.dns_warnings = match dns_warnings(&state) {
                    Ok(w) => w.iter().map(ToString::to_string).collect(),
                    Err(e) => vec![format!("the DNS check could not run: {e}")],
                };
                pod_of_ip = compiled
                    .endpoints
                    .values()
                    .map(|e| (e.ip, e.pod.clone()))
                    .collect();
                let plan = plan_of(&compiled, &node, &routes, gateway);
                // Also on every resync: the maps are diffed, and an endpoint that was not
                // in the datapath yet when its pod was first seen is picked up.
                if synced.as_ref() != Some(&plan) || last_apply.elapsed() >= RESYNC {
                    let started = Instant::now();
                    last_apply = started;
                    let res = tokio::task::block_in_place(|| match agent.dataplane() {
                        Some(mut dp) => dp.sync_policy(&plan).map_err(|e| e.to_string()),
                        None => Err("the dataplane is not loaded".to_string()),
                    });
                    match res {
                        Ok(applied) => {
                            let changed = applied.written
                                + applied.removed
                                + applied.ipcache_written
                                + applied.ipcache_removed;
                            if changed > 0 {
                                tracing::info!(
                                    policies = compiled.policy_count,
                                    identities = compiled.identity_count(),
                                    isolated = applied.isolated,
                                    written = applied.written,
                                    removed = applied.removed,
                                    ipcache_written = applied.ipcache_written,
                                    ipcache_removed = applied.ipcache_removed,
                                    compile_ms = status.last_compile_ms.unwrap_or_default(),
                                    sync_ms = started.elapsed().as_secs_f64() * 1000.0,
                                    "policy synced"
                                );
                            }
                            status.isolated_endpoints = applied.isolated;
                            status.local_endpoints = applied.local_endpoints;
                            status.revisions = applied
                                .revisions
                                .iter()
                                .map(|(ip, r)| {
                                    let who = pod_of_ip
                                        .get(ip)
                                        .map_or_else(|| ip.to_string(), ToString::to_string);
                                    (who, *r)
                                })
                                .collect();
                            status.sync_error = None;
                            status.last_sync = Some(
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            );
                            status.last_sync_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                            synced = Some(plan);
                        }
                        Err(e) => {
                            if status.sync_error.as_ref() != Some(&e) {
                                tracing::error!(error = %e, "syncing the policy maps");
                            }
                            status.sync_error = Some(e);
                            failed = true;
                        }
                    }
                }
            }
            Err(e) => {
                let e = format!("compiling NetworkPolicies: {e}");
                if status.sync_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "policy");
                }
                status.sync_error = Some(e);
                failed = true;
            }
        }
        status.problems = problems;
        status.watch_error = watch_error.lock().unwrap_or_else(|p| p.into_inner()).take();
        status.events_error = events_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.recent_drops = named_drops(&drops, &pod_of_ip);
        publish(status.clone());

        let pause = if failed {
            RETRY
        } else {
            Duration::from_secs(1)
        };
        let deadline = Instant::now() + RESYNC;
        // Drops are published every second; a compile runs on a change, a failure's
        // retry, or the resync period.
        loop {
            tokio::select! {
                _ = wake.notified() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            if failed || Instant::now() >= deadline {
                break;
            }
            status.recent_drops = named_drops(&drops, &pod_of_ip);
            publish(status.clone());
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn labels(pairs: &[(&str, &str)]) -> Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for ns in ["x", "y"] {
            s.upsert_namespace(NamespaceInfo {
                name: ns.into(),
                labels: labels(&[("kubernetes.io/metadata.name", ns), ("ns", ns)]),
            });
        }
        for (i, (ns, name, node)) in [("x", "a", "n1"), ("x", "b", "n2"), ("y", "c", "n1")]
            .into_iter()
            .enumerate()
        {
            let net = if node == "n1" { 1 } else { 2 };
            s.upsert_pod(PodInfo {
                key: PodKey::new(ns, name),
                labels: labels(&[("pod", name)]),
                ip: Some(Ipv4Addr::new(10, 244, net, 10 + i as u8)),
                node: Some(node.into()),
                ports: Vec::new(),
                host_network: false,
            });
        }
        for (n, net) in [("n1", 1), ("n2", 2)] {
            s.upsert_node(NodeInfo {
                name: n.into(),
                ips: vec![Ipv4Addr::new(172, 18, 0, 10 + net)],
                pod_cidrs: vec![format!("10.244.{net}.0/24").parse().unwrap()],
            });
        }
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]}
        }))
        .unwrap();
        s.upsert_policy(np).unwrap();
        s
    }

    fn routes() -> BTreeMap<Ipv4Net, Ipv4Addr> {
        [
            (
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 18, 0, 11),
            ),
            (
                "10.244.2.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 18, 0, 12),
            ),
        ]
        .into()
    }

    #[test]
    fn the_ipcache_keeps_routing_and_names_identities() {
        let compiled = Compiler::new().compile(&cluster()).unwrap();
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let plan = plan_of(&compiled, "n1", &routes(), Some(gw));
        let get = |s: &str| plan.ipcache[&s.parse::<Ipv4Net>().unwrap()];
        // A pod on the other node: its own identity, routed to its node, and the CIDR
        // identity of the ipBlock's except (the longest ipBlock prefix containing it).
        let b = get("10.244.2.11/32");
        assert_eq!(b.identity, compiled.pod_identities[&PodKey::new("x", "b")]);
        assert_eq!(b.tunnel_endpoint, Some(Ipv4Addr::new(172, 18, 0, 12)));
        assert!(!b.identity_only);
        assert!(b.cidr_identity.is_some_and(Identity::is_cidr));
        // Pod ranges keep their node; the world and node addresses only name identities.
        assert_eq!(
            get("10.244.1.0/24").tunnel_endpoint,
            Some(Ipv4Addr::new(172, 18, 0, 11))
        );
        assert_eq!(get("10.244.1.0/24").identity, Identity::UNMANAGED);
        let world = get("0.0.0.0/0");
        assert!(world.identity_only && world.tunnel_endpoint.is_none());
        assert_eq!(world.identity, Identity::WORLD);
        assert_eq!(get("172.18.0.11/32").identity, Identity::HOST, "this node");
        assert_eq!(get("172.18.0.12/32").identity, Identity::REMOTE_NODE);
        assert!(get("172.18.0.12/32").identity_only);
        // The ipBlock prefix itself spans both pod ranges: an identity-only entry, which
        // never shadows them (they are longer).
        let block = get("10.244.0.0/16");
        assert!(block.identity_only && block.identity.is_cidr());
        // The pods' gateway is this node.
        let g = get("10.244.1.1/32");
        assert_eq!(g.identity, Identity::HOST);
        assert_eq!(g.tunnel_endpoint, Some(Ipv4Addr::new(172, 18, 0, 11)));
        assert!(g.cidr_identity.is_some_and(Identity::is_cidr));

        // Only this node's endpoints, with their maps.
        let eps: Vec<Ipv4Addr> = plan.endpoints.keys().copied().collect();
        assert_eq!(
            eps,
            vec![Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 12)]
        );
        let a = &plan.endpoints[&Ipv4Addr::new(10, 244, 1, 10)];
        assert!(a.ingress.is_some() && a.egress.is_none());
        assert!(!plan.endpoints[&Ipv4Addr::new(10, 244, 1, 12)].is_isolated());
    }

    #[test]
    fn identities_are_a_function_of_the_state_not_of_history() {
        // Another node's agent that saw the pods in another order, and a label change
        // come and go, compiles the same numbers as a fresh one.
        let s = cluster();
        let fresh = Compiler::new().compile(&s).unwrap();
        let mut seasoned = Compiler::new();
        let mut other = s.clone();
        other.pods.get_mut(&PodKey::new("x", "a")).unwrap().labels = labels(&[("pod", "zz")]);
        seasoned.compile(&other).unwrap();
        // The agent compiles with a fresh compiler each time: the same as `fresh`.
        let again = Compiler::new().compile(&s).unwrap();
        assert_eq!(again.pod_identities, fresh.pod_identities);
        let n1 = plan_of(&fresh, "n1", &routes(), None);
        let n2 = plan_of(&again, "n2", &routes(), None);
        for (net, r) in &n1.ipcache {
            if let Some(o) = n2.ipcache.get(net) {
                if net.prefix_len() == 32 && r.identity.0 >= Identity::FIRST_POD {
                    assert_eq!(r.identity, o.identity, "{net}");
                }
            }
        }
        // (A persistent compiler would keep "zz"'s history; that is why the agent does
        // not keep one.)
        let kept = seasoned.compile(&s).unwrap();
        assert_ne!(
            kept.pod_identities, fresh.pod_identities,
            "a compiler with history numbers differently"
        );
    }

    #[test]
    fn routes_come_from_internal_ips_and_pod_cidrs() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "1.2.3.4"},
                                     {"type": "InternalIP", "address": "172.18.0.11"}]}
        }))
        .unwrap();
        let bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        assert_eq!(
            routes_of(&[node, bare]),
            [(
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 18, 0, 11)
            )]
            .into()
        );
    }

    #[test]
    fn drops_render_both_endpoints_and_the_policy() {
        let d = DropRecord {
            seen: "t".into(),
            reason: "policy_denied".into(),
            hook: "from-netdev".into(),
            direction: Some("ingress".into()),
            revision: Some(3),
            proto: 6,
            src: Ipv4Addr::new(10, 244, 2, 11),
            src_port: 40000,
            dst: Ipv4Addr::new(10, 244, 1, 10),
            dst_port: 80,
            src_identity: 257,
            dst_identity: 256,
            src_pod: Some("x/b".into()),
            dst_pod: Some("x/a".into()),
        };
        assert_eq!(
            d.render(),
            "t policy denied (ingress, revision 3) at from-netdev: TCP 10.244.2.11:40000 (x/b) -> 10.244.1.10:80 (x/a) identities 257 -> 256"
        );
    }
}
