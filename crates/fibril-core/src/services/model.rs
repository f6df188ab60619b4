//! The compact form of Services and EndpointSlices: only what the translation reads.
//!
//! A whole k8s-openapi `EndpointSlice` costs kilobytes per endpoint in memory (strings for
//! every address, condition, zone, hint and target reference); a node agent watching 10k
//! Services with 100k endpoints cannot keep them. [`ServiceInfo`] and [`SliceInfo`] are
//! what it keeps instead: one endpoint is an IPv4 address, an interned node name and three
//! condition bits ([`EndpointInfo`], 24 bytes).
//!
//! The conversion is lossless for the translation: anything the translation would report
//! (an unparsable address, a bad protocol, an out-of-range port) is kept with its raw text
//! and position, so [`super::translate::translate_infos`] names the same field with the
//! same value as a translation of the objects themselves.
//!
//! Pure: no I/O.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::translate::{HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
use super::{L4Proto, ServiceName};

/// Shares one allocation between equal strings (node names, port names): a cluster has
/// few distinct ones and every endpoint names one.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(have) = self.strings.get(s) {
            return have.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(new.clone());
        new
    }

    /// Forgets strings nothing else holds any more.
    pub fn prune(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// `spec.type`, as the translation distinguishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// `ClusterIP`, unset, or a value the API server would not accept.
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// A protocol field: parsed, or the raw text the translation reports as invalid.
pub type RawProto = Result<L4Proto, Box<str>>;

fn parse_proto(p: Option<&str>) -> RawProto {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        other => Err(other.into()),
    }
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// `name` ("" when unnamed).
    pub name: Arc<str>,
    pub proto: RawProto,
    /// `port`, as written (the translation checks the range).
    pub port: i32,
    pub node_port: Option<i32>,
    /// `targetPort` as written, for problems: a quoted name or a number.
    pub target_port: Box<str>,
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressInfo {
    pub ip: Option<Box<str>>,
    /// `ipMode: Proxy` (KEP-1860): the load balancer delivers to nodes itself.
    pub proxy_mode: bool,
}

/// What the translation reads of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: ServiceName,
    /// `metadata.creationTimestamp`, seconds: the older Service keeps a contested frontend.
    pub created: Option<i64>,
    pub type_: ServiceType,
    /// `spec.clusterIP: None`.
    pub headless: bool,
    /// The `service.kubernetes.io/headless` label is set.
    pub headless_label: bool,
    /// The `service.kubernetes.io/service-proxy-name` label.
    pub proxy_name: Option<Box<str>>,
    /// The IPv4 entries of `spec.clusterIPs` (else `spec.clusterIP`), sorted, distinct.
    pub cluster_ips: Vec<Ipv4Addr>,
    pub ports: Vec<PortInfo>,
    pub itp_local: bool,
    pub etp_local: bool,
    /// `sessionAffinity: ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds`
    /// as written; `None` without affinity.
    pub affinity: Option<Option<i32>>,
    /// `spec.externalIPs` as written.
    pub external_ips: Vec<Box<str>>,
    /// `status.loadBalancer.ingress` (type LoadBalancer only).
    pub ingress: Vec<IngressInfo>,
    /// `spec.loadBalancerSourceRanges` is not empty (type LoadBalancer only).
    pub lb_source_ranges: bool,
    /// `spec.healthCheckNodePort` as written (ETP Local LoadBalancer Services).
    pub health_check_node_port: Option<i32>,
}

fn target_port_text(p: &ServicePort) -> Box<str> {
    match &p.target_port {
        Some(IntOrString::String(s)) => format!("{s:?}").into(),
        Some(IntOrString::Int(n)) => n.to_string().into(),
        None => p.port.to_string().into(),
    }
}

impl ServiceInfo {
    /// The compact form of `svc`; port names are interned in `names`.
    pub fn new(svc: &Service, names: &mut Interner) -> Self {
        let meta = &svc.metadata;
        let labels = meta.labels.as_ref();
        let spec = svc.spec.as_ref();
        let type_ = match spec.and_then(|s| s.type_.as_deref()) {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            _ => ServiceType::ClusterIp,
        };
        let cluster_ips = {
            let listed: Vec<&String> = match spec.and_then(|s| s.cluster_ips.as_ref()) {
                Some(ips) if !ips.is_empty() => ips.iter().collect(),
                _ => spec
                    .and_then(|s| s.cluster_ip.as_ref())
                    .into_iter()
                    .collect(),
            };
            let mut out: Vec<Ipv4Addr> = listed.iter().filter_map(|ip| ip.parse().ok()).collect();
            out.sort();
            out.dedup();
            out
        };
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| PortInfo {
                name: names.intern(p.name.as_deref().unwrap_or("")),
                proto: parse_proto(p.protocol.as_deref()),
                port: p.port,
                node_port: p.node_port,
                target_port: target_port_text(p),
            })
            .collect();
        let lb = type_ == ServiceType::LoadBalancer;
        let ingress = if lb {
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .map(|i| IngressInfo {
                    ip: i.ip.as_deref().map(Into::into),
                    proxy_mode: i.ip_mode.as_deref() == Some("Proxy"),
                })
                .collect()
        } else {
            Vec::new()
        };
        ServiceInfo {
            name: ServiceName {
                namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                name: meta.name.clone().unwrap_or_default(),
            },
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            type_,
            headless: spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
            headless_label: labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)),
            proxy_name: labels
                .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
                .map(|s| s.as_str().into()),
            cluster_ips,
            ports,
            itp_local: spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local"),
            etp_local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
            affinity: (spec.and_then(|s| s.session_affinity.as_deref()) == Some("ClientIP")).then(
                || {
                    spec.and_then(|s| s.session_affinity_config.as_ref())
                        .and_then(|c| c.client_ip.as_ref())
                        .and_then(|c| c.timeout_seconds)
                },
            ),
            external_ips: spec
                .and_then(|s| s.external_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|s| s.as_str().into())
                .collect(),
            ingress,
            lb_source_ranges: lb
                && spec
                    .and_then(|s| s.load_balancer_source_ranges.as_ref())
                    .is_some_and(|r| !r.is_empty()),
            health_check_node_port: spec.and_then(|s| s.health_check_node_port),
        }
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortInfo {
    /// `name` ("" when unnamed).
    pub name: Arc<str>,
    pub proto: RawProto,
    /// `port`, as written (the translation checks the range).
    pub port: Option<i32>,
}

/// Endpoint condition bits (see [`EndpointInfo::conditions`]).
pub mod cond {
    pub const READY: u8 = 1;
    pub const SERVING: u8 = 2;
    pub const TERMINATING: u8 = 4;
}

/// One endpoint: its first address (kube-proxy uses only that one), its node and its
/// conditions with the API's defaults applied (unset ready and serving mean true, unset
/// terminating means false; unset serving follows ready).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    pub node: Option<Arc<str>>,
    /// [`cond`] bits.
    pub conditions: u8,
}

impl EndpointInfo {
    pub fn ready(&self) -> bool {
        self.conditions & cond::READY != 0
    }
    pub fn serving(&self) -> bool {
        self.conditions & cond::SERVING != 0
    }
    pub fn terminating(&self) -> bool {
        self.conditions & cond::TERMINATING != 0
    }
}

/// An endpoint whose first address is not IPv4: kept only to be reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadAddress {
    /// Its index in the slice's `endpoints`.
    pub index: usize,
    pub address: Box<str>,
}

/// What the translation reads of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    /// The `kubernetes.io/service-name` label: the Service it belongs to.
    pub service: Option<Box<str>>,
    /// `addressType: IPv4`; other slices are kept empty (an IPv6 proxy's business).
    pub ipv4: bool,
    pub ports: Vec<SlicePortInfo>,
    pub endpoints: Vec<EndpointInfo>,
    pub bad_addresses: Vec<BadAddress>,
}

impl SliceInfo {
    /// The compact form of `slice`; node, port and namespace names are interned in
    /// `names`.
    pub fn new(slice: &EndpointSlice, names: &mut Interner) -> Self {
        let meta = &slice.metadata;
        let ipv4 = slice.address_type == "IPv4";
        let mut info = SliceInfo {
            namespace: names.intern(meta.namespace.as_deref().unwrap_or("")),
            name: meta.name.as_deref().unwrap_or("").into(),
            service: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(|s| s.as_str().into()),
            ipv4,
            ports: Vec::new(),
            endpoints: Vec::new(),
            bad_addresses: Vec::new(),
        };
        if !ipv4 {
            return info;
        }
        info.ports = slice
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePortInfo {
                name: names.intern(p.name.as_deref().unwrap_or("")),
                proto: parse_proto(p.protocol.as_deref()),
                port: p.port,
            })
            .collect();
        let eps = slice.endpoints.as_deref().unwrap_or_default();
        info.endpoints.reserve_exact(eps.len());
        for (index, e) in eps.iter().enumerate() {
            let Some(addr) = e.addresses.first() else {
                continue;
            };
            let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                info.bad_addresses.push(BadAddress {
                    index,
                    address: addr.as_str().into(),
                });
                continue;
            };
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            info.endpoints.push(EndpointInfo {
                ip,
                node: e.node_name.as_deref().map(|n| names.intern(n)),
                conditions: (u8::from(ready) * cond::READY)
                    | (u8::from(serving) * cond::SERVING)
                    | (u8::from(terminating) * cond::TERMINATING),
            });
        }
        info
    }

    /// Bytes this slice holds on the heap, roughly (its vectors' capacity; interned
    /// strings are shared and not counted).
    pub fn heap_bytes(&self) -> usize {
        self.name.len()
            + self.service.as_deref().map_or(0, str::len)
            + self.ports.capacity() * std::mem::size_of::<SlicePortInfo>()
            + self.endpoints.capacity() * std::mem::size_of::<EndpointInfo>()
            + self
                .bad_addresses
                .iter()
                .map(|b| std::mem::size_of::<BadAddress>() + b.address.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_endpoint_is_24_bytes() {
        // The per-endpoint cost of an agent's store: 100k endpoints are 2.3 MiB.
        assert_eq!(std::mem::size_of::<EndpointInfo>(), 24);
    }

    #[test]
    fn a_slice_of_100_endpoints_holds_under_3_kib_on_the_heap() {
        let eps: Vec<_> = (0..100)
            .map(|i| {
                json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", i % 3),
                    "zone": "zone-a",
                    "targetRef": {"kind": "Pod", "namespace": "default",
                                  "name": format!("web-{i}"), "uid": format!("uid-{i}")}})
            })
            .collect();
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abcde", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"},
                         "managedFields": [{"manager": "x", "operation": "Update"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))
        .unwrap();
        let mut names = Interner::default();
        let info = SliceInfo::new(&s, &mut names);
        assert_eq!(info.endpoints.len(), 100);
        assert!(info.heap_bytes() < 3 * 1024, "{} bytes", info.heap_bytes());
        // One copy of each node name, whatever the number of endpoints.
        assert_eq!(names.len(), 1 + 3 + 1, "namespace, 3 nodes, port name");
    }

    #[test]
    fn conditions_take_the_api_defaults() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": []},
                {"addresses": ["fd00::1"]},
            ],
        }))
        .unwrap();
        let info = SliceInfo::new(&s, &mut Interner::default());
        let c: Vec<(bool, bool, bool)> = info
            .endpoints
            .iter()
            .map(|e| (e.ready(), e.serving(), e.terminating()))
            .collect();
        assert_eq!(
            c,
            [
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        assert_eq!(
            info.bad_addresses,
            [BadAddress {
                index: 4,
                address: "fd00::1".into()
            }]
        );
    }

    #[test]
    fn interned_strings_are_shared_and_pruned() {
        let mut names = Interner::default();
        let a = names.intern("node-1");
        let b = names.intern("node-1");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        names.intern("node-2");
        names.prune();
        assert!(names.is_empty());
    }
}
