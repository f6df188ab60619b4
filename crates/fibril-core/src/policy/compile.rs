//! The compiler: cluster state + NetworkPolicies → identities, the ipcache and every
//! endpoint's ingress and egress maps.
//!
//! Each policy is compiled once, whatever the number of pods it selects: its peers become
//! identity sets, its ports become (protocol, port prefix) pairs, and the product becomes map
//! entries. Only two things depend on the endpoint: which policies select it (by its full
//! labels), and, for ingress, named ports (resolved against the endpoint itself).
//!
//! Named ports resolve against the *destination* pod, for egress too: an egress rule with a
//! named port becomes one entry per destination identity, with the port that identity's pods
//! give the name. Pods sharing an identity normally share their ports; when they do not (a
//! rollout that renumbers a port), the entries are the union and a warning says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::cluster::{ClusterState, PodInfo, PodKey, PolicyRef};
use super::identity::{is_security_relevant, Identities, Identity, IdentityError, SecurityLabels};
use super::ipcache::{Ipcache, IpcacheEntry};
use super::map::{PolicyKey, PolicyMap};
use super::normalize::{normalize, Normalized, Peer, Port, Rule};
use super::ports::{range_prefixes, PortPrefix};
use crate::manifest::FieldProblem;
use crate::services::L4Proto;

/// A problem in one policy (the API server would have refused it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub policy: PolicyRef,
    pub problem: FieldProblem,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPolicy {}: {}", self.policy, self.problem)
    }
}

/// Something compiled, but not exactly as written; each names its cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyWarning {
    /// A policy had problems; the pods it selects are isolated in its directions and it
    /// allows nothing until it is fixed.
    InvalidPolicyIsolates { policy: PolicyRef },
    /// A peer podSelector reads a label that is not part of identities, so it can only see
    /// pods without it (for `Exists`/`In`: none).
    SelectorReadsNonSecurityLabel {
        policy: PolicyRef,
        field: String,
        key: String,
    },
    /// An IPv6 ipBlock: fibril enforces IPv4 only, where it matches nothing.
    Ipv6BlockIgnored {
        policy: PolicyRef,
        field: String,
        cidr: String,
    },
    /// The pods of one identity give a named port different numbers; every one of them is
    /// allowed to all of those pods.
    NamedPortAmbiguous {
        policy: PolicyRef,
        field: String,
        name: String,
        protocol: L4Proto,
        identity: Identity,
        ports: Vec<u16>,
    },
    /// An egress ipBlock with a named port selects some pods of an identity; the entry is
    /// per identity, so the identity's pods outside the block are allowed too.
    NamedPortWidenedByBlock {
        policy: PolicyRef,
        field: String,
        identity: Identity,
        outside: Vec<PodKey>,
    },
    /// A pod whose namespace is unknown: it has no namespace labels, so no
    /// namespaceSelector other than `{}` selects it.
    PodWithoutNamespace { pod: PodKey },
    /// Several pods claim one address; the ipcache maps it to the last of them.
    DuplicatePodIp { ip: Ipv4Addr, pods: Vec<PodKey> },
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPolicyIsolates { policy } => write!(
                f,
                "NetworkPolicy {policy} is invalid: the pods it selects are isolated and it allows nothing until it is fixed"
            ),
            Self::SelectorReadsNonSecurityLabel { policy, field, key } => write!(
                f,
                "NetworkPolicy {policy} {field} reads label {key:?}, which is not part of pod identities: it is matched as if absent"
            ),
            Self::Ipv6BlockIgnored { policy, field, cidr } => write!(
                f,
                "NetworkPolicy {policy} {field} is IPv6 ({cidr}); fibril enforces IPv4, where it matches nothing"
            ),
            Self::NamedPortAmbiguous { policy, field, name, protocol, identity, ports } => write!(
                f,
                "NetworkPolicy {policy} {field}: pods of identity {identity} give port {name:?}/{protocol} different numbers {ports:?}; all are allowed to each of them"
            ),
            Self::NamedPortWidenedByBlock { policy, field, identity, outside } => write!(
                f,
                "NetworkPolicy {policy} {field}: a named port to an ipBlock is allowed per identity; {} of identity {identity} outside the block {} allowed too",
                outside.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                if outside.len() == 1 { "is" } else { "are" }
            ),
            Self::PodWithoutNamespace { pod } => write!(
                f,
                "pod {pod} is in an unknown namespace: it has no namespace labels for policies to select on"
            ),
            Self::DuplicatePodIp { ip, pods } => write!(
                f,
                "pods {} all claim {ip}; policy treats {ip} as {}",
                pods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                pods.last().map(ToString::to_string).unwrap_or_default()
            ),
        }
    }
}

/// What one endpoint (a pod with an address, not on the host network) enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub pod: PodKey,
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub identity: Identity,
    /// `Some` when ingress is isolated: what may come in. `None`: everything may.
    pub ingress: Option<PolicyMap>,
    /// `Some` when egress is isolated: what may go out.
    pub egress: Option<PolicyMap>,
    /// The policies that select this endpoint.
    pub policies: Vec<PolicyRef>,
    /// Bumped whenever anything above changes; drop events carry it.
    pub revision: u64,
}

impl EndpointPolicy {
    fn same_as(&self, o: &EndpointPolicy) -> bool {
        self.ip == o.ip
            && self.identity == o.identity
            && self.ingress == o.ingress
            && self.egress == o.egress
            && self.policies == o.policies
    }
}

/// Everything the datapath needs, for every node (each node takes its own endpoints and its
/// view of the ipcache).
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// Every identity in use: pod label sets and CIDR prefixes.
    pub identities: Identities,
    /// Each pod's identity (pods with an address or not; host-network pods have none).
    pub pod_identities: BTreeMap<PodKey, Identity>,
    /// The cluster-wide ipcache: node addresses are remote-node here; see
    /// [`CompiledPolicy::ipcache_for_node`].
    pub ipcache: Ipcache,
    pub endpoints: BTreeMap<PodKey, EndpointPolicy>,
    /// Endpoint addresses (the endpoints map of the datapath).
    pub endpoints_by_ip: BTreeMap<Ipv4Addr, PodKey>,
    /// Each node's own addresses.
    pub node_ips: BTreeMap<String, Vec<Ipv4Addr>>,
    pub policy_count: usize,
    pub problems: Vec<PolicyProblem>,
    pub warnings: Vec<PolicyWarning>,
}

impl CompiledPolicy {
    /// The ipcache as `node`'s agent writes it (its own addresses are host).
    pub fn ipcache_for_node(&self, node: &str) -> Ipcache {
        self.ipcache
            .for_node(self.node_ips.get(node).map_or(&[][..], Vec::as_slice))
    }

    /// The ipcache entry for `ip` as seen on `node` (`None`: the cluster-wide view).
    pub fn ipcache_lookup(&self, node: Option<&str>, ip: Ipv4Addr) -> (Ipv4Net, IpcacheEntry) {
        let (net, mut e) = self
            .ipcache
            .lookup(ip)
            .expect("a compiled ipcache holds 0.0.0.0/0");
        let own = node
            .and_then(|n| self.node_ips.get(n))
            .is_some_and(|ips| ips.contains(&ip));
        if own && net.prefix_len() == 32 && e.identity == Identity::REMOTE_NODE {
            e.identity = Identity::HOST;
        }
        (net, e)
    }

    pub fn identity_count(&self) -> usize {
        self.identities.pods.len() + self.identities.cidrs.len()
    }
}

/// The compiler and what it keeps between runs: identity numbers and endpoint revisions.
#[derive(Clone, Debug, Default)]
pub struct Compiler {
    ids: Identities,
    prev: BTreeMap<PodKey, EndpointPolicy>,
}

/// A rule's peers as identities.
#[derive(Default)]
struct PeerSet {
    /// Every peer (the rule names none): the wildcard identity.
    any: bool,
    /// Pod and CIDR identities.
    ids: BTreeSet<Identity>,
    /// Destinations for named ports: pod identity → the pods of it the peers select.
    named: BTreeMap<Identity, BTreeSet<PodKey>>,
}

impl PeerSet {
    fn keys(&self) -> Vec<Identity> {
        if self.any {
            vec![Identity::ANY]
        } else {
            self.ids.iter().copied().collect()
        }
    }
}

/// One ingress rule, ready to instantiate per endpoint.
struct IngressRule {
    peers: Vec<Identity>,
    /// Entries not depending on the endpoint.
    fixed: Vec<PolicyKey>,
    /// (protocol, name) to resolve against the endpoint.
    named: Vec<(L4Proto, String)>,
}

struct CompiledRules {
    r: PolicyRef,
    target: super::selector::Selector,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<PolicyKey>>,
}

/// Read-only context of one compile run.
struct Ctx<'a> {
    ids: &'a Identities,
    /// Pod identity → its pods.
    by_identity: BTreeMap<Identity, Vec<&'a PodInfo>>,
}

impl Compiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A compiler continuing from identities allocated earlier.
    pub fn with_identities(ids: Identities) -> Self {
        Compiler {
            ids,
            prev: BTreeMap::new(),
        }
    }

    pub fn identities(&self) -> &Identities {
        &self.ids
    }

    /// Compiles everything. Fails only when identities run out.
    pub fn compile(&mut self, cluster: &ClusterState) -> Result<CompiledPolicy, IdentityError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        // Pod identities, allocated in label-set order so a fresh compiler numbers the same
        // cluster the same way whatever order its pods came in.
        let no_labels = BTreeMap::new();
        let mut pod_labels: BTreeMap<&PodKey, SecurityLabels> = BTreeMap::new();
        for pod in cluster.pods.values().filter(|p| !p.host_network) {
            let ns = cluster.namespaces.get(&pod.key.namespace);
            if ns.is_none() {
                warnings.push(PolicyWarning::PodWithoutNamespace {
                    pod: pod.key.clone(),
                });
            }
            let labels = SecurityLabels::of_pod(
                &pod.key.namespace,
                ns.map_or(&no_labels, |n| &n.labels),
                &pod.labels,
            );
            pod_labels.insert(&pod.key, labels);
        }
        let in_use: BTreeSet<SecurityLabels> = pod_labels.values().cloned().collect();
        self.ids.pods.retain(&in_use);
        for l in &in_use {
            self.ids.pods.allocate(l)?;
        }
        let pod_identities: BTreeMap<PodKey, Identity> = pod_labels
            .iter()
            .map(|(k, l)| ((*k).clone(), self.ids.pods.get(l).expect("just allocated")))
            .collect();

        // Policies, validated.
        let mut normalized: Vec<(PolicyRef, Normalized)> = Vec::new();
        for (r, np) in &cluster.policies {
            let out = normalize(np);
            problems.extend(out.problems.into_iter().map(|problem| PolicyProblem {
                policy: r.clone(),
                problem,
            }));
            if out.isolated_for_problems && out.policy.is_some() {
                warnings.push(PolicyWarning::InvalidPolicyIsolates { policy: r.clone() });
            }
            warnings.extend(out.ipv6_blocks.into_iter().map(|(field, cidr)| {
                PolicyWarning::Ipv6BlockIgnored {
                    policy: r.clone(),
                    field,
                    cidr,
                }
            }));
            if let Some(p) = out.policy {
                warn_non_security_keys(r, &p, &mut warnings);
                normalized.push((r.clone(), p));
            }
        }

        // CIDR identities: every ipBlock prefix, cidr and except alike.
        let prefixes: BTreeSet<Ipv4Net> = normalized
            .iter()
            .flat_map(|(_, p)| p.ingress.iter().chain(p.egress.iter()).flatten())
            .flat_map(|rule| rule.peers.iter().flatten())
            .flat_map(|peer| match peer {
                Peer::Block { cidr, except } => std::iter::once(*cidr)
                    .chain(except.iter().copied())
                    .collect(),
                Peer::Pods { .. } => Vec::new(),
            })
            .collect();
        self.ids.cidrs.retain(&prefixes);
        for p in &prefixes {
            self.ids.cidrs.allocate(p)?;
        }

        let ipcache = self.build_ipcache(cluster, &pod_identities, &prefixes, &mut warnings);

        let mut by_identity: BTreeMap<Identity, Vec<&PodInfo>> = BTreeMap::new();
        for (k, id) in &pod_identities {
            by_identity.entry(*id).or_default().push(&cluster.pods[k]);
        }
        let ctx = Ctx {
            ids: &self.ids,
            by_identity,
        };

        let compiled: Vec<CompiledRules> = normalized
            .iter()
            .map(|(r, p)| ctx.compile_policy(r, p, &mut warnings))
            .collect();
        let mut by_ns: BTreeMap<&str, Vec<&CompiledRules>> = BTreeMap::new();
        for c in &compiled {
            by_ns.entry(c.r.namespace.as_str()).or_default().push(c);
        }

        let mut endpoints = BTreeMap::new();
        let mut endpoints_by_ip = BTreeMap::new();
        for pod in cluster.pods.values().filter(|p| !p.host_network) {
            let Some(ip) = pod.ip else { continue };
            let mut ep = EndpointPolicy {
                pod: pod.key.clone(),
                ip,
                node: pod.node.clone(),
                identity: pod_identities[&pod.key],
                ingress: None,
                egress: None,
                policies: Vec::new(),
                revision: 1,
            };
            for c in by_ns
                .get(pod.key.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|c| c.target.matches(&pod.labels))
            {
                ep.policies.push(c.r.clone());
                if let Some(rules) = &c.ingress {
                    let m = ep.ingress.get_or_insert_with(PolicyMap::default);
                    for rule in rules {
                        m.extend(rule.fixed.iter().copied());
                        for (proto, name) in &rule.named {
                            if let Some(port) = pod.named_port(name, *proto) {
                                m.extend(rule.peers.iter().map(|id| {
                                    PolicyKey::ports(*id, *proto, PortPrefix::single(port))
                                }));
                            }
                        }
                    }
                }
                if let Some(entries) = &c.egress {
                    ep.egress
                        .get_or_insert_with(PolicyMap::default)
                        .extend(entries.iter().copied());
                }
            }
            // Traffic between a pod and its own node is always allowed (Kubernetes leaves the
            // node out of NetworkPolicy: kubelet probes must keep working).
            for m in [&mut ep.ingress, &mut ep.egress].into_iter().flatten() {
                m.insert(PolicyKey::all(Identity::HOST));
            }
            if let Some(prev) = self.prev.get(&pod.key) {
                ep.revision = if prev.same_as(&ep) {
                    prev.revision
                } else {
                    prev.revision + 1
                };
            }
            endpoints_by_ip.insert(ip, pod.key.clone());
            endpoints.insert(pod.key.clone(), ep);
        }
        // Keep revisions of endpoints that went away, so a pod re-created under the same
        // name continues counting (its drop events stay unambiguous).
        for (k, ep) in &endpoints {
            self.prev.insert(k.clone(), ep.clone());
        }

        Ok(CompiledPolicy {
            identities: self.ids.clone(),
            pod_identities,
            ipcache,
            endpoints,
            endpoints_by_ip,
            node_ips: cluster
                .nodes
                .values()
                .map(|n| (n.name.clone(), n.ips.clone()))
                .collect(),
            policy_count: cluster.policies.len(),
            problems,
            warnings,
        })
    }

    fn build_ipcache(
        &self,
        cluster: &ClusterState,
        pod_identities: &BTreeMap<PodKey, Identity>,
        prefixes: &BTreeSet<Ipv4Net>,
        warnings: &mut Vec<PolicyWarning>,
    ) -> Ipcache {
        // Later sources win a shared prefix: a prefix's own identity is the most specific
        // thing it is (a pod, a node, a pod range, the world); ipBlock prefixes are only
        // their own identity where they are nothing else.
        let mut primary: BTreeMap<Ipv4Net, Identity> = BTreeMap::new();
        for p in prefixes {
            primary.insert(*p, self.ids.cidrs.get(p).expect("allocated"));
        }
        primary.insert(Ipv4Net::default(), Identity::WORLD);
        for n in cluster.nodes.values() {
            for c in &n.pod_cidrs {
                primary.insert(*c, Identity::UNMANAGED);
            }
        }
        for n in cluster.nodes.values() {
            for ip in &n.ips {
                primary.insert(Ipv4Net::from(*ip), Identity::REMOTE_NODE);
            }
        }
        let mut owners: BTreeMap<Ipv4Addr, Vec<PodKey>> = BTreeMap::new();
        for (k, id) in pod_identities {
            if let Some(ip) = cluster.pods[k].ip {
                primary.insert(Ipv4Net::from(ip), *id);
                owners.entry(ip).or_default().push(k.clone());
            }
        }
        for (ip, pods) in owners.into_iter().filter(|(_, p)| p.len() > 1) {
            warnings.push(PolicyWarning::DuplicatePodIp { ip, pods });
        }
        let entries = primary
            .into_iter()
            .map(|(net, identity)| {
                let cidr = (0..=net.prefix_len()).rev().find_map(|len| {
                    let sup = Ipv4Net::new(net.network(), len).ok()?.trunc();
                    prefixes
                        .contains(&sup)
                        .then(|| self.ids.cidrs.get(&sup).expect("allocated"))
                });
                (
                    net,
                    IpcacheEntry {
                        identity,
                        cidr_identity: cidr.filter(|c| *c != identity),
                    },
                )
            })
            .collect();
        Ipcache::from_entries(entries)
    }
}

fn warn_non_security_keys(r: &PolicyRef, p: &Normalized, warnings: &mut Vec<PolicyWarning>) {
    for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
        for peer in rule.peers.iter().flatten() {
            if let Peer::Pods {
                path,
                pods: Some(sel),
                ..
            } = peer
            {
                for key in sel.keys().filter(|k| !is_security_relevant(k)) {
                    warnings.push(PolicyWarning::SelectorReadsNonSecurityLabel {
                        policy: r.clone(),
                        field: format!("{path}.podSelector"),
                        key: key.to_string(),
                    });
                }
            }
        }
    }
}

impl Ctx<'_> {
    fn compile_policy(
        &self,
        r: &PolicyRef,
        p: &Normalized,
        warnings: &mut Vec<PolicyWarning>,
    ) -> CompiledRules {
        let ingress = p.ingress.as_ref().map(|rules| {
            rules
                .iter()
                .map(|rule| {
                    let peers = self.peers(r, rule).keys();
                    let mut fixed = Vec::new();
                    let mut named = Vec::new();
                    match &rule.ports {
                        None => fixed.extend(peers.iter().map(|id| PolicyKey::all(*id))),
                        Some(ports) => {
                            for port in ports {
                                match port {
                                    Port::Named { proto, name, .. } => {
                                        named.push((*proto, name.clone()))
                                    }
                                    _ => fixed.extend(port_keys(&peers, port)),
                                }
                            }
                        }
                    }
                    IngressRule {
                        peers,
                        fixed,
                        named,
                    }
                })
                .collect()
        });
        let egress = p.egress.as_ref().map(|rules| {
            let mut entries = Vec::new();
            for rule in rules {
                let peers = self.peers(r, rule);
                let keys = peers.keys();
                match &rule.ports {
                    None => entries.extend(keys.iter().map(|id| PolicyKey::all(*id))),
                    Some(ports) => {
                        for port in ports {
                            match port {
                                Port::Named { path, proto, name } => entries.extend(
                                    self.egress_named(r, path, &peers, *proto, name, warnings),
                                ),
                                _ => entries.extend(port_keys(&keys, port)),
                            }
                        }
                    }
                }
            }
            entries
        });
        CompiledRules {
            r: r.clone(),
            target: p.target.clone(),
            ingress,
            egress,
        }
    }

    /// The identities a rule's peers select.
    fn peers(&self, r: &PolicyRef, rule: &Rule) -> PeerSet {
        let mut set = PeerSet::default();
        let Some(peers) = &rule.peers else {
            set.any = true;
            for (id, pods) in &self.by_identity {
                set.named
                    .insert(*id, pods.iter().map(|p| p.key.clone()).collect());
            }
            return set;
        };
        for peer in peers {
            match peer {
                Peer::Pods {
                    namespaces, pods, ..
                } => {
                    for (id, labels) in self.ids.pods.iter() {
                        let ns_ok = match namespaces {
                            None => labels.namespace == r.namespace,
                            Some(sel) => sel.matches(&labels.namespace_labels),
                        };
                        let pod_ok = pods.as_ref().is_none_or(|s| s.matches(&labels.pod_labels));
                        if ns_ok && pod_ok {
                            set.ids.insert(id);
                            set.named.entry(id).or_default().extend(
                                self.by_identity
                                    .get(&id)
                                    .into_iter()
                                    .flatten()
                                    .map(|p| p.key.clone()),
                            );
                        }
                    }
                }
                Peer::Block { cidr, except } => {
                    for (id, net) in self.ids.cidrs.iter() {
                        if cidr.contains(net) && !except.iter().any(|e| e.contains(net)) {
                            set.ids.insert(id);
                        }
                    }
                    let inside = |ip: Ipv4Addr| {
                        cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
                    };
                    for (id, pods) in &self.by_identity {
                        let sel: BTreeSet<PodKey> = pods
                            .iter()
                            .filter(|p| p.ip.is_some_and(inside))
                            .map(|p| p.key.clone())
                            .collect();
                        if !sel.is_empty() {
                            set.named.entry(*id).or_default().extend(sel);
                        }
                    }
                }
            }
        }
        set
    }

    /// Egress entries for a named port: per destination identity, the numbers its pods give
    /// the name.
    fn egress_named(
        &self,
        r: &PolicyRef,
        field: &str,
        peers: &PeerSet,
        proto: L4Proto,
        name: &str,
        warnings: &mut Vec<PolicyWarning>,
    ) -> Vec<PolicyKey> {
        let mut out = Vec::new();
        for (id, selected) in &peers.named {
            let all = self.by_identity.get(id).map_or(&[][..], Vec::as_slice);
            let ports: BTreeSet<u16> = all
                .iter()
                .filter(|p| selected.contains(&p.key))
                .filter_map(|p| p.named_port(name, proto))
                .collect();
            if ports.is_empty() {
                continue;
            }
            // The entry opens the port on every pod of the identity, selected or not.
            let every: BTreeSet<u16> = all
                .iter()
                .filter_map(|p| p.named_port(name, proto))
                .collect();
            if every.len() > 1 {
                warnings.push(PolicyWarning::NamedPortAmbiguous {
                    policy: r.clone(),
                    field: field.to_string(),
                    name: name.to_string(),
                    protocol: proto,
                    identity: *id,
                    ports: every.iter().copied().collect(),
                });
            }
            let outside: Vec<PodKey> = all
                .iter()
                .filter(|p| !selected.contains(&p.key))
                .map(|p| p.key.clone())
                .collect();
            if !outside.is_empty() {
                warnings.push(PolicyWarning::NamedPortWidenedByBlock {
                    policy: r.clone(),
                    field: field.to_string(),
                    identity: *id,
                    outside,
                });
            }
            out.extend(
                ports
                    .into_iter()
                    .map(|port| PolicyKey::ports(*id, proto, PortPrefix::single(port))),
            );
        }
        out
    }
}

/// Entries for a numeric or protocol-wide port, for each peer identity.
fn port_keys(peers: &[Identity], port: &Port) -> Vec<PolicyKey> {
    let (proto, prefixes) = match port {
        Port::AllPorts(proto) => (*proto, vec![PortPrefix::ALL]),
        Port::Range { proto, first, last } => (*proto, range_prefixes(*first, *last)),
        Port::Named { .. } => return Vec::new(),
    };
    peers
        .iter()
        .flat_map(|id| {
            prefixes
                .iter()
                .map(move |pp| PolicyKey::ports(*id, proto, *pp))
        })
        .collect()
}
