//! Services and EndpointSlices → one node's [`ServiceTable`], with kube-proxy's semantics.
//!
//! What is programmed, and what is not:
//! - Services of type `ExternalName`, headless Services (`clusterIP: None`), Services
//!   labelled `service.kubernetes.io/headless`, and Services whose
//!   `service.kubernetes.io/service-proxy-name` is not this proxy's are skipped, as
//!   kube-proxy skips them.
//! - Every IPv4 entry of `spec.clusterIPs` (or `spec.clusterIP`) becomes a ClusterIP
//!   frontend per port; NodePorts become frontends at this node's InternalIP;
//!   `status.loadBalancer.ingress[].ip` (type LoadBalancer, `ipMode` VIP) become
//!   LoadBalancer frontends; `spec.externalIPs` become frontends only inside the
//!   configured allowed ranges. Any other externalIP is refused and reported: that is the
//!   CVE-2020-8554 guard, and with no range configured every externalIP is refused.
//! - Endpoints come from every IPv4 EndpointSlice labelled `kubernetes.io/service-name`,
//!   merged; each Service port takes the slice port of the same **name and protocol**,
//!   so named targetPorts are resolved per endpoint by whoever wrote the slice.
//! - Backend selection is kube-proxy's `CategorizeEndpoints`: ready endpoints; when a
//!   scope has none, its serving-and-terminating ones (KEP-1669). `internalTrafficPolicy:
//!   Local` limits ClusterIP traffic to this node's endpoints. `externalTrafficPolicy:
//!   Local` limits external traffic to this node's endpoints and keeps the client address,
//!   while pods on this node using the external address get every endpoint ([`Scope`]).
//!
//! It reads the compact form of the objects ([`super::model`]): an agent keeps that, not
//! the objects.
//!
//! Pure: the same inputs in any order give the same table and problems.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};

use super::model::{Interner, ServiceInfo, ServiceType, SliceInfo};
use super::{
    Backend, Frontend, FrontendKind, L4Proto, Scope, ServiceEntry, ServiceName, ServiceTable,
};

/// The label naming the proxy that implements a Service (absent: the default proxy).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that marks a Service (and its slices) headless: no proxy programs it.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, as upstream).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The largest affinity timeout the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// What the translation needs to know about the node and the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateConfig {
    /// This node's name, as endpoints' `nodeName` carries it.
    pub node_name: String,
    /// This node's InternalIP: where its NodePorts are served.
    pub node_ip: Ipv4Addr,
    /// The ranges `spec.externalIPs` may come from; empty refuses every externalIP.
    pub allowed_external_ips: Vec<Ipv4Net>,
    /// This proxy's `service.kubernetes.io/service-proxy-name`. `None`: only Services
    /// without the label are ours (kube-proxy's default).
    pub proxy_name: Option<String>,
}

/// The node's `InternalIP` (IPv4) from its status, if it reports one.
pub fn node_internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// Why a Service is not programmed at all.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum SkipReason {
    /// `type: ExternalName`: DNS only.
    ExternalName,
    /// `clusterIP: None`.
    Headless,
    /// The `service.kubernetes.io/headless` label is set.
    HeadlessLabel,
    /// Another proxy implements it (`service.kubernetes.io/service-proxy-name`).
    OtherProxy { proxy: String },
    /// No IPv4 ClusterIP (IPv6-only, or not allocated yet).
    NoIpv4ClusterIp,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::ExternalName => f.write_str("type ExternalName (DNS only)"),
            SkipReason::Headless => f.write_str("headless (clusterIP None)"),
            SkipReason::HeadlessLabel => write!(f, "labelled {HEADLESS_LABEL}"),
            SkipReason::OtherProxy { proxy } => {
                write!(f, "{SERVICE_PROXY_NAME_LABEL}={proxy:?} is not this proxy")
            }
            SkipReason::NoIpv4ClusterIp => f.write_str("no IPv4 ClusterIP"),
        }
    }
}

/// A Service that is not programmed, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub service: ServiceName,
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// What is wrong with one field of one Service (or of one of its EndpointSlices).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ProblemKind {
    /// An externalIP outside the allowed ranges: not programmed (CVE-2020-8554).
    ExternalIpRefused { ip: String, allowed: Vec<Ipv4Net> },
    /// The Service has endpoints, but none of them defines this port.
    NoEndpointPort {
        /// The targetPort as written (a name or a number).
        target_port: String,
        endpoints: usize,
    },
    /// A frontend another Service already serves; the older Service keeps it.
    FrontendTaken {
        frontend: Frontend,
        owner: ServiceName,
    },
    /// A value that cannot be programmed.
    Invalid { value: String, why: String },
    /// A setting the datapath does not implement; traffic is served without it.
    Unsupported { what: String },
}

/// One problem, naming the Service and the field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub service: ServiceName,
    /// `spec.externalIPs[1]`, `spec.ports[0].targetPort`, or
    /// `endpointslice/<name> endpoints[2].addresses[0]`.
    pub field: String,
    #[serde(flatten)]
    pub kind: ProblemKind,
}

impl Problem {
    /// A refused externalIP: these get a Kubernetes Event of their own.
    pub fn is_refused_external_ip(&self) -> bool {
        matches!(self.kind, ProblemKind::ExternalIpRefused { .. })
    }
}

fn ranges(allowed: &[Ipv4Net]) -> String {
    if allowed.is_empty() {
        "none are configured".into()
    } else {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {} {}: ", self.service, self.field)?;
        match &self.kind {
            ProblemKind::ExternalIpRefused { ip, allowed } => write!(
                f,
                "externalIP {ip} refused: it is outside the allowed ExternalIP ranges ({}); \
                 an unchecked externalIP lets a Service capture other traffic \
                 (CVE-2020-8554)",
                ranges(allowed)
            ),
            ProblemKind::NoEndpointPort {
                target_port,
                endpoints,
            } => write!(
                f,
                "none of the Service's {endpoints} endpoints defines targetPort \
                 {target_port}: this port has no backend"
            ),
            ProblemKind::FrontendTaken { frontend, owner } => write!(
                f,
                "{frontend} is already served by Service {owner}; not programmed for this one"
            ),
            ProblemKind::Invalid { value, why } => write!(f, "{value:?}: {why}"),
            ProblemKind::Unsupported { what } => write!(f, "{what}"),
        }
    }
}

/// `(namespace, name)` of the Service an EndpointSlice belongs to, from its
/// `kubernetes.io/service-name` label.
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let svc = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    Some((slice.metadata.namespace.clone().unwrap_or_default(), svc))
}

/// The result of a translation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    pub table: ServiceTable,
    /// The Services programmed (with at least one frontend or not), sorted.
    pub services: Vec<ServiceName>,
    /// Services not programmed, and why; sorted.
    pub skipped: Vec<Skipped>,
    /// Everything wrong, sorted; refused externalIPs among them.
    pub problems: Vec<Problem>,
    /// The health check node ports this node answers, sorted by port.
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
}

/// A Service's `healthCheckNodePort` (`type: LoadBalancer`, `externalTrafficPolicy:
/// Local`): every node answers there whether it has a local ready endpoint, so that a load
/// balancer sends external traffic only to nodes that can serve it locally (kube-proxy's
/// service health server). Terminating endpoints do not count (KEP-1669): a node whose
/// local endpoints all terminate reports unhealthy, and the load balancer drains it, while
/// traffic that still arrives is served by them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub port: u16,
    pub service: ServiceName,
    /// Ready endpoints on this node (distinct addresses).
    pub local_endpoints: usize,
}

impl HealthCheck {
    /// 200 with local ready endpoints, else 503 (kube-proxy's answer).
    pub fn healthy(&self) -> bool {
        self.local_endpoints > 0
    }
}

/// Translates every Service for one node. `slices` may hold the slices of every Service;
/// each is matched to its Service by namespace and the `kubernetes.io/service-name` label.
///
/// The same as [`translate_infos`] over the objects' compact form.
pub fn translate(
    services: &[Service],
    slices: &[EndpointSlice],
    cfg: &TranslateConfig,
) -> Translation {
    let mut names = Interner::default();
    let services: Vec<ServiceInfo> = services
        .iter()
        .map(|s| ServiceInfo::new(s, &mut names))
        .collect();
    let slices: Vec<SliceInfo> = slices
        .iter()
        .map(|s| SliceInfo::new(s, &mut names))
        .collect();
    translate_infos(services.iter(), slices.iter(), cfg)
}

/// Translates every Service for one node, from their compact form (see [`translate`]).
pub fn translate_infos<'a>(
    services: impl IntoIterator<Item = &'a ServiceInfo>,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    cfg: &TranslateConfig,
) -> Translation {
    let mut slices_of: BTreeMap<(&str, &str), Vec<&SliceInfo>> = BTreeMap::new();
    for s in slices {
        if let Some(svc) = s.service.as_deref() {
            slices_of.entry((&s.namespace, svc)).or_default().push(s);
        }
    }

    let mut out = Translation::default();
    let mut candidates: Vec<Candidate> = Vec::new();
    for svc in services {
        let name = &svc.name;
        if let Some(reason) = skip_reason(svc, cfg) {
            out.skipped.push(Skipped {
                service: name.clone(),
                reason,
            });
            continue;
        }
        let svc_slices = slices_of
            .get(&(name.namespace.as_str(), name.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut p = Vec::new();
        candidates.extend(service_entries(
            svc,
            svc_slices,
            cfg,
            &mut p,
            &mut out.health_checks,
        ));
        out.problems.extend(p);
        out.services.push(name.clone());
    }

    out.table = resolve_conflicts(candidates, &mut out.problems);
    out.services.sort();
    out.services.dedup();
    out.skipped.sort();
    out.problems.sort();
    out.problems.dedup();
    // The API server gives each port to one Service; should two claim one anyway, the
    // first by name keeps it.
    out.health_checks.sort();
    out.health_checks.dedup_by_key(|h| h.port);
    out
}

fn skip_reason(svc: &ServiceInfo, cfg: &TranslateConfig) -> Option<SkipReason> {
    if svc.type_ == ServiceType::ExternalName {
        return Some(SkipReason::ExternalName);
    }
    if svc.headless {
        return Some(SkipReason::Headless);
    }
    if svc.headless_label {
        return Some(SkipReason::HeadlessLabel);
    }
    if svc.proxy_name.as_deref() != cfg.proxy_name.as_deref() {
        return Some(SkipReason::OtherProxy {
            proxy: svc.proxy_name.as_deref().unwrap_or_default().to_string(),
        });
    }
    if svc.cluster_ips.is_empty() {
        return Some(SkipReason::NoIpv4ClusterIp);
    }
    None
}

/// One endpoint of one Service port, as the slices say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ep {
    ip: Ipv4Addr,
    port: u16,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Ep {
    /// For merging duplicates across slices: the best-placed copy wins, whatever the order.
    fn rank(&self) -> (bool, bool, bool, bool) {
        (self.local, self.ready, self.serving, !self.terminating)
    }
}

/// One slice port's endpoints, deduplicated by (ip, port).
type PortEndpoints = BTreeMap<(Ipv4Addr, u16), Ep>;

/// Endpoints per (slice port name, protocol); and how many distinct endpoint addresses
/// the slices hold at all.
struct Endpoints<'a> {
    by_port: BTreeMap<(&'a str, L4Proto), PortEndpoints>,
    addresses: usize,
}

fn collect_endpoints<'a>(
    name: &ServiceName,
    slices: &[&'a SliceInfo],
    cfg: &TranslateConfig,
    problems: &mut Vec<Problem>,
) -> Endpoints<'a> {
    let mut by_port: BTreeMap<(&str, L4Proto), PortEndpoints> = BTreeMap::new();
    let mut addresses = BTreeSet::new();
    for slice in slices {
        if !slice.ipv4 {
            continue;
        }
        let slice_name = &slice.name;
        let mut ports = Vec::new();
        for (j, p) in slice.ports.iter().enumerate() {
            let proto = match &p.proto {
                Ok(proto) => *proto,
                Err(raw) => {
                    let field = format!("endpointslice/{slice_name} ports[{j}]");
                    problems.push(invalid(name, &field, Some(raw), PROTO_WHY));
                    continue;
                }
            };
            let Some(port) = p
                .port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
            else {
                problems.push(invalid(
                    name,
                    &format!("endpointslice/{slice_name} ports[{j}].port"),
                    Some(&format!("{:?}", p.port)),
                    "must be a port number between 1 and 65535",
                ));
                continue;
            };
            ports.push((&*p.name, proto, port));
        }
        for bad in &slice.bad_addresses {
            problems.push(invalid(
                name,
                &format!(
                    "endpointslice/{slice_name} endpoints[{}].addresses[0]",
                    bad.index
                ),
                Some(&bad.address),
                "not an IPv4 address",
            ));
        }
        for e in &slice.endpoints {
            addresses.insert(e.ip);
            let local = e.node.as_deref() == Some(cfg.node_name.as_str());
            for (pname, proto, port) in &ports {
                let ep = Ep {
                    ip: e.ip,
                    port: *port,
                    local,
                    ready: e.ready(),
                    serving: e.serving(),
                    terminating: e.terminating(),
                };
                let set = by_port.entry((pname, *proto)).or_default();
                match set.get(&(e.ip, *port)) {
                    Some(have) if (have.rank(), *have) >= (ep.rank(), ep) => {}
                    _ => {
                        set.insert((e.ip, *port), ep);
                    }
                }
            }
        }
    }
    Endpoints {
        by_port,
        addresses: addresses.len(),
    }
}

/// kube-proxy's choice within one scope: the ready endpoints; when there is none, the
/// serving-and-terminating ones.
fn pick(eps: &[Ep], local_only: bool) -> Vec<Backend> {
    let scope: Vec<&Ep> = eps.iter().filter(|e| !local_only || e.local).collect();
    let ready: Vec<Backend> = scope
        .iter()
        .filter(|e| e.ready)
        .map(|e| backend(e, false))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    scope
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| backend(e, true))
        .collect()
}

fn backend(e: &Ep, terminating: bool) -> Backend {
    Backend {
        ip: e.ip,
        port: e.port,
        local: e.local,
        terminating,
    }
}

const PROTO_WHY: &str = "protocol must be TCP, UDP or SCTP";

fn invalid(name: &ServiceName, field: &str, value: Option<&str>, why: &str) -> Problem {
    Problem {
        service: name.clone(),
        field: field.to_string(),
        kind: ProblemKind::Invalid {
            value: value.unwrap_or("").to_string(),
            why: why.to_string(),
        },
    }
}

/// Who keeps a frontend two Services claim: the lowest (kind rank, creation time, name).
type Precedence = (u8, Option<i64>, ServiceName);

/// One entry before conflicts between Services are resolved.
struct Candidate {
    entry: ServiceEntry,
    precedence: Precedence,
    /// The field that produced the frontend, for the loser's problem.
    field: String,
}

fn kind_rank(k: FrontendKind) -> u8 {
    // An externalIP is the most user-controlled address: it never shadows a ClusterIP,
    // NodePort or LoadBalancer address.
    match k {
        FrontendKind::ClusterIp => 0,
        FrontendKind::NodePort => 1,
        FrontendKind::LoadBalancer => 2,
        FrontendKind::ExternalIp => 3,
    }
}

/// The external addresses of a Service (not per port): allowed externalIPs and LB ingress IPs.
fn external_addresses(
    svc: &ServiceInfo,
    cfg: &TranslateConfig,
    problems: &mut Vec<Problem>,
) -> Vec<(FrontendKind, Ipv4Addr, String)> {
    let name = &svc.name;
    let mut out = Vec::new();
    for (i, raw) in svc.external_ips.iter().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let refused = |field| Problem {
            service: name.clone(),
            field,
            kind: ProblemKind::ExternalIpRefused {
                ip: raw.to_string(),
                allowed: cfg.allowed_external_ips.clone(),
            },
        };
        match raw.parse::<Ipv4Addr>() {
            Ok(ip) if cfg.allowed_external_ips.iter().any(|r| r.contains(&ip)) => {
                out.push((FrontendKind::ExternalIp, ip, field));
            }
            Ok(_) => problems.push(refused(field)),
            // IPv6 externalIPs belong to an IPv6 proxy; anything else is refused.
            Err(_) if raw.parse::<std::net::Ipv6Addr>().is_ok() => {}
            Err(_) => problems.push(refused(field)),
        }
    }
    if svc.type_ == ServiceType::LoadBalancer {
        for (i, ing) in svc.ingress.iter().enumerate() {
            // ipMode Proxy: the load balancer delivers to nodes itself (KEP-1860).
            if ing.proxy_mode {
                continue;
            }
            let Some(raw) = ing.ip.as_deref() else {
                continue;
            };
            if let Ok(ip) = raw.parse::<Ipv4Addr>() {
                out.push((
                    FrontendKind::LoadBalancer,
                    ip,
                    format!("status.loadBalancer.ingress[{i}].ip"),
                ));
            }
        }
        if svc.lb_source_ranges {
            problems.push(Problem {
                service: name.clone(),
                field: "spec.loadBalancerSourceRanges".into(),
                kind: ProblemKind::Unsupported {
                    what: "source ranges are not enforced by fibril yet: every client can \
                           reach the load balancer addresses"
                        .into(),
                },
            });
        }
    }
    out
}

fn affinity_timeout(svc: &ServiceInfo, problems: &mut Vec<Problem>) -> Option<u32> {
    match svc.affinity? {
        None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
        Some(t) if t > 0 && t <= MAX_AFFINITY_TIMEOUT_SECS as i32 => Some(t as u32),
        Some(t) => {
            problems.push(invalid(
                &svc.name,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                Some(&t.to_string()),
                "must be between 1 and 86400; the default (10800) is used",
            ));
            Some(DEFAULT_AFFINITY_TIMEOUT_SECS)
        }
    }
}

fn service_entries(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    cfg: &TranslateConfig,
    problems: &mut Vec<Problem>,
    health_checks: &mut Vec<HealthCheck>,
) -> Vec<Candidate> {
    let name = &svc.name;
    let created = svc.created;
    let node_ports_wanted = matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer);
    let affinity = affinity_timeout(svc, problems);
    let externals = external_addresses(svc, cfg, problems);
    let endpoints = collect_endpoints(name, slices, cfg, problems);
    if let Some(hc) = svc.health_check_node_port {
        match u16::try_from(hc).ok().filter(|p| *p != 0) {
            Some(port) if svc.etp_local && svc.type_ == ServiceType::LoadBalancer => {
                let local: BTreeSet<Ipv4Addr> = endpoints
                    .by_port
                    .values()
                    .flat_map(|m| m.values())
                    .filter(|e| e.local && e.ready)
                    .map(|e| e.ip)
                    .collect();
                health_checks.push(HealthCheck {
                    port,
                    service: name.clone(),
                    local_endpoints: local.len(),
                });
            }
            Some(_) => {}
            None => problems.push(invalid(
                name,
                "spec.healthCheckNodePort",
                Some(&hc.to_string()),
                "must be a port number between 1 and 65535",
            )),
        }
    }
    let mut out = Vec::new();

    for (i, port) in svc.ports.iter().enumerate() {
        let pfield = format!("spec.ports[{i}]");
        let proto = match &port.proto {
            Ok(p) => *p,
            Err(raw) => {
                problems.push(invalid(
                    name,
                    &format!("{pfield}.protocol"),
                    Some(raw),
                    PROTO_WHY,
                ));
                continue;
            }
        };
        let Some(svc_port) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            problems.push(invalid(
                name,
                &format!("{pfield}.port"),
                Some(&port.port.to_string()),
                "must be a port number between 1 and 65535",
            ));
            continue;
        };
        let port_name: &str = &port.name;
        let eps: Vec<Ep> = endpoints
            .by_port
            .get(&(port_name, proto))
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        if eps.is_empty() && endpoints.addresses > 0 {
            problems.push(Problem {
                service: name.clone(),
                field: format!("{pfield}.targetPort"),
                kind: ProblemKind::NoEndpointPort {
                    target_port: port.target_port.to_string(),
                    endpoints: endpoints.addresses,
                },
            });
        }
        let cluster = pick(&eps, false);
        let local = pick(&eps, true);
        let entry = |kind, scope, ip, fport, backends: &Vec<Backend>, preserve| ServiceEntry {
            service: name.clone(),
            port_name: port_name.to_string(),
            kind,
            scope,
            frontend: Frontend {
                ip,
                port: fport,
                proto,
            },
            backends: backends.clone(),
            affinity_timeout_secs: affinity,
            preserve_client_ip: preserve,
        };
        let mut push = |e: ServiceEntry, field: String| {
            out.push(Candidate {
                precedence: (kind_rank(e.kind), created, name.clone()),
                entry: e,
                field,
            })
        };

        let internal = if svc.itp_local { &local } else { &cluster };
        for ip in &svc.cluster_ips {
            push(
                entry(
                    FrontendKind::ClusterIp,
                    Scope::External,
                    *ip,
                    svc_port,
                    internal,
                    false,
                ),
                "spec.clusterIPs".into(),
            );
        }

        let mut external: Vec<(FrontendKind, Ipv4Addr, u16, String)> = Vec::new();
        if node_ports_wanted {
            match port.node_port {
                Some(np) if (1..=65535).contains(&np) => external.push((
                    FrontendKind::NodePort,
                    cfg.node_ip,
                    np as u16,
                    format!("{pfield}.nodePort"),
                )),
                // `allocateLoadBalancerNodePorts: false` leaves LoadBalancer ports without.
                None if svc.type_ == ServiceType::LoadBalancer => {}
                other => problems.push(invalid(
                    name,
                    &format!("{pfield}.nodePort"),
                    Some(&format!("{other:?}")),
                    "a NodePort Service needs a nodePort between 1 and 65535 on every port",
                )),
            }
        }
        for (kind, ip, field) in &externals {
            external.push((*kind, *ip, svc_port, field.clone()));
        }
        for (kind, ip, fport, field) in external {
            if svc.etp_local {
                push(
                    entry(kind, Scope::External, ip, fport, &local, true),
                    field.clone(),
                );
                // Pods on this node using the external address are internal clients:
                // every endpoint (kube-proxy's short circuit to the cluster endpoints).
                if cluster != local {
                    push(
                        entry(kind, Scope::Internal, ip, fport, &cluster, false),
                        field,
                    );
                }
            } else {
                push(
                    entry(kind, Scope::External, ip, fport, &cluster, false),
                    field,
                );
            }
        }
    }
    out
}

/// One owner per frontend: the candidate with the lowest precedence (ClusterIP before
/// NodePort before LoadBalancer before externalIP, then the older Service, then the
/// name) keeps every scope of it; each other claimant gets a problem.
fn resolve_conflicts(mut candidates: Vec<Candidate>, problems: &mut Vec<Problem>) -> ServiceTable {
    candidates.sort_by(|a, b| {
        (a.entry.frontend, &a.precedence, a.entry.scope).cmp(&(
            b.entry.frontend,
            &b.precedence,
            b.entry.scope,
        ))
    });
    let mut table = ServiceTable::default();
    let mut owner: Option<(Frontend, Precedence)> = None;
    for c in candidates {
        match &owner {
            Some((f, p)) if *f == c.entry.frontend => {
                if *p != c.precedence {
                    problems.push(Problem {
                        service: c.entry.service.clone(),
                        field: c.field,
                        kind: ProblemKind::FrontendTaken {
                            frontend: c.entry.frontend,
                            owner: p.2.clone(),
                        },
                    });
                    continue;
                }
                if table
                    .entries
                    .last()
                    .is_some_and(|l| l.frontend == c.entry.frontend && l.scope == c.entry.scope)
                {
                    // The same Service reached one frontend twice (an externalIP that is
                    // also its load balancer address): the first kind keeps it.
                    continue;
                }
            }
            _ => owner = Some((c.entry.frontend, c.precedence.clone())),
        }
        table.entries.push(c.entry);
    }
    table.normalize();
    table
}

#[cfg(test)]
mod tests;
