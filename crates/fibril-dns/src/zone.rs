//! The cluster zone: a snapshot of Services and EndpointSlices turned into DNS answers, as
//! the Kubernetes DNS specification (schema 1.1.0) defines them. Pure: no I/O, no clock.
//!
//! - `<svc>.<ns>.svc.<zone>`: A = the ClusterIP; for a headless Service, one A per ready
//!   endpoint address (NXDOMAIN when none is ready); CNAME for an ExternalName Service.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for each named port, targeting the
//!   Service name, or for headless Services each ready endpoint's
//!   `<hostname>.<svc>.<ns>.svc.<zone>` (the endpoint's `hostname`, else its address
//!   with dashes, as CoreDNS names it), with the A records of the targets as additionals.
//! - `<a>-<b>-<c>-<d>.<ns>.pod.<zone>`: A = a.b.c.d (the spec's deprecated pod records,
//!   CoreDNS's `pods insecure`).
//! - PTR for every ClusterIP and every ready headless endpoint address.
//! - `dns-version.<zone>` TXT, SOA and NS at the apex.
//!
//! A name inside the zone that does not exist is NXDOMAIN, and an existing name without
//! the asked type (AAAA for an IPv4 Service, or an empty non-terminal such as
//! `<ns>.svc.<zone>`) is NOERROR with no answer; both carry the zone's SOA, whose minimum
//! is the TTL, so resolvers cache the negative answer that long. Names outside the zone
//! (and reverse names of addresses the cluster does not know) are REFUSED: the lab's DNS
//! has no upstream to forward to, and a refusal answers at once, where a forward with
//! nowhere to go would hang the client until it times out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The version of the Kubernetes DNS schema served (`dns-version.<zone>` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// SOA timers (refresh, retry, expire), CoreDNS's values.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// What the zone serves, and how long answers may be cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, lowercase and fully qualified (`cluster.local.`).
    pub origin: Name,
    /// TTL of every answer, and the SOA minimum (negative caching).
    pub ttl: u32,
}

/// A configuration value the zone cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ZoneConfigError {
    #[error("cluster domain {domain:?} is not a valid DNS name: {source}")]
    Domain {
        domain: String,
        source: hickory_proto::ProtoError,
    },
    #[error("cluster domain must not be the root")]
    RootDomain,
}

impl ZoneConfig {
    pub fn new(domain: &str, ttl: u32) -> Result<Self, ZoneConfigError> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.')).map_err(|source| {
            ZoneConfigError::Domain {
                domain: domain.to_string(),
                source,
            }
        })?;
        if origin.is_root() || origin.num_labels() == 0 {
            return Err(ZoneConfigError::RootDomain);
        }
        origin.set_fqdn(true);
        Ok(ZoneConfig {
            origin: origin.to_lowercase(),
            ttl,
        })
    }
}

/// One answer: what goes into the response's header and sections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// The AA bit: set for every answer about the cluster zone.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Answer {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// A Service or EndpointSlice the zone left out, and why (logged by the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub object: String,
    pub reason: String,
}

/// The records of the cluster zone at one point in time.
#[derive(Clone, Debug)]
pub struct Zone {
    cfg: ZoneConfig,
    soa: Record,
    /// Owner name (lowercase, fully qualified) → its records.
    records: HashMap<Name, Vec<Record>>,
    /// Names that exist only because names below them do (`<ns>.svc.<zone>`).
    empty_non_terminals: HashSet<Name>,
    /// Address → the names pointing at it.
    ptr: HashMap<Ipv4Addr, BTreeSet<Name>>,
    skipped: Vec<Skipped>,
}

/// How one endpoint address is named and served.
struct Target {
    name: Name,
    ip: Ipv4Addr,
}

impl Zone {
    /// Builds the zone from every Service and EndpointSlice of the cluster. `serial` is the
    /// SOA serial; the caller increases it with every change.
    pub fn build(
        cfg: &ZoneConfig,
        services: &[&Service],
        slices: &[&EndpointSlice],
        serial: u32,
    ) -> Zone {
        let origin = cfg.origin.clone();
        let ns_name = name_under(&origin, &["ns", "dns"]);
        let soa = Record::from_rdata(
            origin.clone(),
            cfg.ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                name_under(&origin, &["hostmaster"]),
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                cfg.ttl,
            )),
        );
        let mut zone = Zone {
            cfg: cfg.clone(),
            soa: soa.clone(),
            records: HashMap::new(),
            empty_non_terminals: HashSet::new(),
            ptr: HashMap::new(),
            skipped: Vec::new(),
        };
        zone.add(soa);
        zone.add(Record::from_rdata(
            origin.clone(),
            cfg.ttl,
            RData::NS(NS(ns_name.clone())),
        ));
        zone.add(Record::from_rdata(
            name_under(&origin, &["dns-version"]),
            cfg.ttl,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
        for label in ["svc", "pod"] {
            zone.empty_non_terminals
                .insert(name_under(&origin, &[label]));
        }

        // EndpointSlices by (namespace, service).
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            match s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                Some(svc) => by_service.entry((ns, svc.clone())).or_default().push(s),
                None => continue,
            }
        }

        let mut sorted: Vec<&&Service> = services.iter().collect();
        sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        for svc in sorted {
            let (Some(ns), Some(name)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let key = (ns.to_string(), name.to_string());
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            zone.add_service(svc, ns, name, slices);
        }

        // The apex NS target has an address when the cluster DNS Service has one.
        let dns_ip = services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(fibril_core::consts::KUBE_SYSTEM_NAMESPACE)
                    && s.metadata.name.as_deref() == Some(fibril_core::consts::KUBE_DNS_SERVICE)
            })
            .and_then(|s| cluster_ip(s));
        if let Some(ip) = dns_ip {
            zone.add(Record::from_rdata(ns_name, cfg.ttl, RData::A(A(ip))));
        }
        zone
    }

    /// What the build left out.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    fn skip(&mut self, object: String, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            object,
            reason: reason.into(),
        });
    }

    fn add(&mut self, record: Record) {
        let owner = record.name.to_lowercase();
        let mut parent = owner.base_name();
        while parent.num_labels() > self.cfg.origin.num_labels() && self.cfg.origin.zone_of(&parent)
        {
            self.empty_non_terminals.insert(parent.clone());
            parent = parent.base_name();
        }
        let set = self.records.entry(owner).or_default();
        if !set.contains(&record) {
            set.push(record);
        }
    }

    fn add_ptr(&mut self, ip: Ipv4Addr, name: &Name) {
        self.ptr.entry(ip).or_default().insert(name.clone());
    }

    fn add_service(&mut self, svc: &Service, ns: &str, name: &str, slices: &[&EndpointSlice]) {
        let ttl = self.cfg.ttl;
        let object = format!("service {ns}/{name}");
        let Some(svc_name) = try_name_under(&self.cfg.origin, &[name, ns, "svc"]) else {
            self.skip(object, "namespace or name is not a DNS label");
            return;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(ext) = spec.external_name.as_deref().filter(|e| !e.is_empty()) else {
                self.skip(object, "ExternalName Service without spec.externalName");
                return;
            };
            match Name::from_ascii(ext.trim_end_matches('.')) {
                Ok(mut target) => {
                    target.set_fqdn(true);
                    self.add(Record::from_rdata(
                        svc_name,
                        ttl,
                        RData::CNAME(CNAME(target)),
                    ));
                }
                Err(e) => self.skip(object, format!("spec.externalName {ext:?}: {e}")),
            }
            return;
        }
        if is_headless(&spec) {
            self.add_headless(svc, &svc_name, slices);
            return;
        }
        let Some(ip) = cluster_ip(svc) else {
            // Not yet allocated, or an IPv6 address this IPv4 lab does not serve.
            self.skip(object, "no IPv4 spec.clusterIP");
            return;
        };
        self.add(Record::from_rdata(svc_name.clone(), ttl, RData::A(A(ip))));
        self.add_ptr(ip, &svc_name);
        for p in spec.ports.iter().flatten() {
            let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match srv_name(&svc_name, port_name, proto) {
                Some(owner) => self.add(Record::from_rdata(
                    owner,
                    ttl,
                    RData::SRV(SRV::new(0, 100, port, svc_name.clone())),
                )),
                None => self.skip(
                    format!("service {ns}/{name} port {port_name}"),
                    "port name or protocol is not a DNS label",
                ),
            }
        }
    }

    fn add_headless(&mut self, svc: &Service, svc_name: &Name, slices: &[&EndpointSlice]) {
        let ttl = self.cfg.ttl;
        let publish_not_ready = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        // Per slice: its ready targets and its named ports.
        let mut targets: Vec<Target> = Vec::new();
        let mut srvs: Vec<(Name, u16, Name)> = Vec::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let mut slice_targets = Vec::new();
            for ep in slice.endpoints.iter().flatten() {
                let ready = ep
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    // The EndpointSlice API: an unknown (nil) ready condition means ready.
                    .unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let host = ep
                        .hostname
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| ip.to_string().replace('.', "-"));
                    match svc_name.prepend_label(host.as_str()) {
                        Ok(name) => slice_targets.push(Target {
                            name: name.to_lowercase(),
                            ip,
                        }),
                        Err(e) => self.skip(
                            format!("endpoint {ip} of {svc_name}"),
                            format!("hostname {host:?}: {e}"),
                        ),
                    }
                }
            }
            for p in slice.ports.iter().flatten() {
                let (Some(port_name), Some(port)) = (
                    p.name.as_deref().filter(|n| !n.is_empty()),
                    p.port.and_then(|p| u16::try_from(p).ok()),
                ) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                let Some(owner) = srv_name(svc_name, port_name, proto) else {
                    continue;
                };
                for t in &slice_targets {
                    srvs.push((owner.clone(), port, t.name.clone()));
                }
            }
            targets.extend(slice_targets);
        }
        for t in &targets {
            self.add(Record::from_rdata(svc_name.clone(), ttl, RData::A(A(t.ip))));
            self.add(Record::from_rdata(t.name.clone(), ttl, RData::A(A(t.ip))));
            self.add_ptr(t.ip, &t.name);
        }
        // Equal weights that sum to about 100 per port, as CoreDNS spreads them.
        let mut per_owner: HashMap<Name, u16> = HashMap::new();
        for (owner, _, _) in &srvs {
            *per_owner.entry(owner.clone()).or_default() += 1;
        }
        for (owner, port, target) in srvs {
            let weight = (100 / per_owner[&owner].max(1)).max(1);
            self.add(Record::from_rdata(
                owner,
                ttl,
                RData::SRV(SRV::new(0, weight, port, target)),
            ));
        }
    }

    /// The answer to one question.
    pub fn answer(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        if qclass != DNSClass::IN && qclass != DNSClass::ANY {
            return Answer::refused();
        }
        let mut lower = qname.to_lowercase();
        lower.set_fqdn(true);
        if let Ok(net) = lower.parse_arpa_name() {
            return self.answer_ptr(qname, net, qtype);
        }
        if !self.cfg.origin.zone_of(&lower) {
            return Answer::refused();
        }
        if let Some(ip) = self.pod_address(&lower) {
            return self.positive(
                qname,
                qtype,
                vec![Record::from_rdata(lower, self.cfg.ttl, RData::A(A(ip)))],
            );
        }
        match self.records.get(&lower) {
            Some(records) => self.positive(qname, qtype, records.clone()),
            None if self.empty_non_terminals.contains(&lower) => self.no_data(),
            None => Answer {
                rcode: ResponseCode::NXDomain,
                ..self.no_data()
            },
        }
    }

    /// The records of an existing name that answer `qtype` (an ExternalName's CNAME
    /// answers every type), owner names spelled as asked.
    fn positive(&self, qname: &Name, qtype: RecordType, records: Vec<Record>) -> Answer {
        let cname = records
            .iter()
            .find(|r| r.record_type() == RecordType::CNAME);
        let mut answers: Vec<Record> = match cname {
            Some(c) => vec![c.clone()],
            None => records
                .into_iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect(),
        };
        if answers.is_empty() {
            return self.no_data();
        }
        for r in &mut answers {
            r.name = qname.clone();
        }
        let mut additionals = Vec::new();
        for r in &answers {
            if let RData::SRV(srv) = &r.data {
                if let Some(targets) = self.records.get(&srv.target.to_lowercase()) {
                    for t in targets.iter().filter(|t| t.record_type() == RecordType::A) {
                        if !additionals.contains(t) {
                            additionals.push(t.clone());
                        }
                    }
                }
            }
        }
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authorities: Vec::new(),
            additionals,
        }
    }

    /// NOERROR, no answer, the SOA in authority.
    fn no_data(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: vec![self.soa.clone()],
            additionals: Vec::new(),
        }
    }

    fn answer_ptr(&self, qname: &Name, net: ipnet::IpNet, qtype: RecordType) -> Answer {
        let ipnet::IpNet::V4(net) = net else {
            return Answer::refused();
        };
        if net.prefix_len() != 32 {
            return Answer::refused();
        }
        let Some(names) = self.ptr.get(&net.addr()) else {
            return Answer::refused();
        };
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
            };
        }
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: names
                .iter()
                .map(|n| {
                    Record::from_rdata(qname.clone(), self.cfg.ttl, RData::PTR(PTR(n.clone())))
                })
                .collect(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    /// `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` → a.b.c.d.
    fn pod_address(&self, name: &Name) -> Option<Ipv4Addr> {
        let extra = usize::from(name.num_labels()) - usize::from(self.cfg.origin.num_labels());
        if extra != 3 {
            return None;
        }
        let labels: Vec<&[u8]> = name.iter().collect();
        if labels[2] != b"pod" {
            return None;
        }
        std::str::from_utf8(labels[0])
            .ok()?
            .replace('-', ".")
            .parse()
            .ok()
    }
}

/// Headless: `clusterIP: None` (a Service without any ClusterIP yet is not headless).
fn is_headless(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
}

fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    let spec = svc.spec.as_ref()?;
    spec.cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .find_map(|ip| ip.parse().ok())
}

/// `_<port>._<proto>.<svc_name>`.
fn srv_name(svc_name: &Name, port: &str, proto: &str) -> Option<Name> {
    svc_name
        .prepend_label(format!("_{}", proto.to_ascii_lowercase()).as_str())
        .and_then(|n| n.prepend_label(format!("_{}", port.to_ascii_lowercase()).as_str()))
        .ok()
}

/// `labels[0].labels[1]…origin`, lowercased; `None` when a label is not valid.
fn try_name_under(origin: &Name, labels: &[&str]) -> Option<Name> {
    let mut name = origin.clone();
    for l in labels.iter().rev() {
        if l.is_empty() {
            return None;
        }
        name = name.prepend_label(l.to_ascii_lowercase().as_str()).ok()?;
    }
    Some(name)
}

/// [`try_name_under`] for labels known to be valid.
fn name_under(origin: &Name, labels: &[&str]) -> Name {
    try_name_under(origin, labels).expect("constant labels are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn cfg() -> ZoneConfig {
        ZoneConfig::new("cluster.local", 30).unwrap()
    }

    /// web (ClusterIP, named tcp+udp ports and an unnamed one), db (headless, 2 ready
    /// endpoints, one not ready, one with a hostname), empty (headless, none ready),
    /// ext (ExternalName), pending (no ClusterIP yet), and kube-dns.
    fn zone() -> Zone {
        let services = [
            svc(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.20", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"port": 9000}
                ]}
            })),
            svc(json!({
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
            })),
            svc(json!({
                "metadata": {"name": "empty", "namespace": "shop"},
                "spec": {"clusterIP": "None"}
            })),
            svc(json!({
                "metadata": {"name": "ext", "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"}
            })),
            svc(json!({
                "metadata": {"name": "pending", "namespace": "shop"},
                "spec": {}
            })),
            svc(json!({
                "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
                ]}
            })),
        ];
        let slices = [
            slice(json!({
                "metadata": {"name": "db-abc", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.7"], "hostname": "db-0"},
                    {"addresses": ["10.244.3.9"], "conditions": {"ready": false}}
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
            })),
            slice(json!({
                "metadata": {"name": "empty-abc", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "empty"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.6"], "conditions": {"ready": false}}]
            })),
            // A slice of another namespace's same-named Service must not leak in.
            slice(json!({
                "metadata": {"name": "db-xyz", "namespace": "other",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.9.9"]}]
            })),
        ];
        let s: Vec<&Service> = services.iter().collect();
        let e: Vec<&EndpointSlice> = slices.iter().collect();
        Zone::build(&cfg(), &s, &e, 7)
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Answer {
        z.answer(&n(name), t, DNSClass::IN)
    }

    fn a_records(a: &Answer) -> Vec<String> {
        let mut v: Vec<String> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(ip) => Some(ip.0.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn srv_records(a: &Answer) -> Vec<(u16, String)> {
        let mut v: Vec<(u16, String)> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn assert_negative(a: &Answer, rcode: ResponseCode) {
        assert_eq!(a.rcode, rcode, "{a:?}");
        assert!(a.authoritative);
        assert!(a.answers.is_empty(), "{a:?}");
        assert_eq!(a.authorities.len(), 1, "{a:?}");
        let soa = &a.authorities[0];
        assert_eq!(soa.name, n("cluster.local."));
        match &soa.data {
            RData::SOA(s) => {
                assert_eq!(s.mname, n("ns.dns.cluster.local."));
                assert_eq!(s.serial, 7);
                assert_eq!(s.minimum, 30, "negative answers are cached for the TTL");
            }
            other => panic!("authority is not an SOA: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_has_an_a_record() {
        let z = zone();
        let a = ask(&z, "web.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(a_records(&a), vec!["10.96.0.20"]);
        assert_eq!(a.answers[0].ttl, 30);
        assert!(a.authorities.is_empty());
        // Case-insensitive, and the owner is spelled as asked.
        let a = ask(&z, "WEB.Shop.SVC.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.96.0.20"]);
        assert_eq!(a.answers[0].name.to_ascii(), "WEB.Shop.SVC.cluster.local.");
    }

    #[test]
    fn named_ports_have_srv_records_pointing_at_the_service() {
        let z = zone();
        let a = ask(
            &z,
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(
            srv_records(&a),
            vec![(80, "web.shop.svc.cluster.local.".to_string())]
        );
        // The target's address comes along.
        assert_eq!(a.additionals.len(), 1);
        assert_eq!(a.additionals[0].name, n("web.shop.svc.cluster.local."));
        let a = ask(&z, "_dns._udp.web.shop.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            srv_records(&a),
            vec![(53, "web.shop.svc.cluster.local.".to_string())]
        );
        // A port name with the wrong protocol does not exist.
        assert_negative(
            &ask(&z, "_dns._tcp.web.shop.svc.cluster.local.", RecordType::SRV),
            ResponseCode::NXDomain,
        );
        // The unnamed port 9000 has no SRV; `_tcp.<svc>` exists (it has names below it).
        assert_negative(
            &ask(&z, "_tcp.web.shop.svc.cluster.local.", RecordType::SRV),
            ResponseCode::NoError,
        );
        let srv_ports: Vec<u16> = z
            .records
            .values()
            .flatten()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect();
        assert!(!srv_ports.contains(&9000), "{srv_ports:?}");
    }

    #[test]
    fn missing_names_are_nxdomain_with_the_soa() {
        let z = zone();
        for name in [
            "nope.shop.svc.cluster.local.",
            "web.nope.svc.cluster.local.",
            "web.shop.cluster.local.",
            "web.shop.svc.cluster.local.shop.svc.cluster.local.",
            "x.cluster.local.",
        ] {
            assert_negative(&ask(&z, name, RecordType::A), ResponseCode::NXDomain);
        }
    }

    #[test]
    fn existing_names_without_the_type_are_nodata() {
        let z = zone();
        assert_negative(
            &ask(&z, "web.shop.svc.cluster.local.", RecordType::AAAA),
            ResponseCode::NoError,
        );
        // Empty non-terminals: the namespace and `svc` levels.
        for name in [
            "shop.svc.cluster.local.",
            "svc.cluster.local.",
            "pod.cluster.local.",
        ] {
            assert_negative(&ask(&z, name, RecordType::A), ResponseCode::NoError);
        }
    }

    #[test]
    fn headless_service_answers_its_ready_endpoints() {
        let z = zone();
        let a = ask(&z, "db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a_records(&a), vec!["10.244.1.5", "10.244.2.7"]);
        // Per-endpoint names: the hostname when set, the dashed address otherwise.
        let a = ask(&z, "db-0.db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.244.2.7"]);
        let a = ask(&z, "10-244-1-5.db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.244.1.5"]);
        // The not-ready endpoint has no name.
        assert_negative(
            &ask(&z, "10-244-3-9.db.shop.svc.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
        );
        // SRV: one per ready endpoint and named port, targeting the endpoint's name.
        let a = ask(&z, "_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            srv_records(&a),
            vec![
                (5432, "10-244-1-5.db.shop.svc.cluster.local.".to_string()),
                (5432, "db-0.db.shop.svc.cluster.local.".to_string()),
            ]
        );
        assert_eq!(a.additionals.len(), 2);
    }

    #[test]
    fn headless_service_without_ready_endpoints_is_nxdomain() {
        let z = zone();
        assert_negative(
            &ask(&z, "empty.shop.svc.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
        );
    }

    #[test]
    fn publish_not_ready_addresses_serves_every_endpoint() {
        let s = svc(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
        }));
        let e = slice(json!({
            "metadata": {"name": "db-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.3.9"], "conditions": {"ready": false}}]
        }));
        let z = Zone::build(&cfg(), &[&s], &[&e], 1);
        let a = ask(&z, "db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.244.3.9"]);
    }

    #[test]
    fn external_name_is_a_cname() {
        let z = zone();
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let a = ask(&z, "ext.shop.svc.cluster.local.", t);
            assert_eq!(a.rcode, ResponseCode::NoError);
            assert_eq!(a.answers.len(), 1);
            match &a.answers[0].data {
                RData::CNAME(c) => assert_eq!(c.0, n("db.example.com.")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reverse_lookups_of_cluster_addresses() {
        let z = zone();
        let ptr = |a: &Answer| -> Vec<String> {
            a.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_ascii()),
                    _ => None,
                })
                .collect()
        };
        let a = ask(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(ptr(&a), vec!["web.shop.svc.cluster.local."]);
        let a = ask(&z, "7.2.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(ptr(&a), vec!["db-0.db.shop.svc.cluster.local."]);
        // Addresses the cluster does not know are not ours to answer.
        let a = ask(&z, "10.113.0.203.in-addr.arpa.", RecordType::PTR);
        assert_eq!(a.rcode, ResponseCode::Refused);
        // Not-ready endpoints have no PTR either.
        let a = ask(&z, "9.3.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(a.rcode, ResponseCode::Refused);
    }

    #[test]
    fn outside_the_zone_is_refused_at_once() {
        let z = zone();
        for name in ["example.com.", "local.", "cluster.local.example.com."] {
            let a = ask(&z, name, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::Refused, "{name}");
            assert!(!a.authoritative);
            assert!(a.answers.is_empty() && a.authorities.is_empty());
        }
        let a = z.answer(
            &n("web.shop.svc.cluster.local."),
            RecordType::A,
            DNSClass::CH,
        );
        assert_eq!(a.rcode, ResponseCode::Refused);
    }

    #[test]
    fn apex_version_and_nameserver() {
        let z = zone();
        let a = ask(&z, "dns-version.cluster.local.", RecordType::TXT);
        match &a.answers[0].data {
            RData::TXT(t) => assert_eq!(t.to_string(), SCHEMA_VERSION),
            other => panic!("{other:?}"),
        }
        let a = ask(&z, "cluster.local.", RecordType::SOA);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].record_type(), RecordType::SOA);
        let a = ask(&z, "cluster.local.", RecordType::NS);
        match &a.answers[0].data {
            RData::NS(ns) => assert_eq!(ns.0, n("ns.dns.cluster.local.")),
            other => panic!("{other:?}"),
        }
        // The nameserver's address is the kube-dns ClusterIP.
        let a = ask(&z, "ns.dns.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.96.0.10"]);
        assert_eq!(z.serial(), 7);
    }

    #[test]
    fn pod_names_resolve_to_their_address() {
        let z = zone();
        let a = ask(&z, "10-244-1-5.shop.pod.cluster.local.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.244.1.5"]);
        assert_negative(
            &ask(&z, "10-244-1.shop.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
        );
    }

    #[test]
    fn unusable_objects_are_reported_not_served() {
        let z = zone();
        assert_eq!(
            z.skipped(),
            &[Skipped {
                object: "service shop/pending".into(),
                reason: "no IPv4 spec.clusterIP".into(),
            }]
        );
        assert_negative(
            &ask(&z, "pending.shop.svc.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
        );
    }

    #[test]
    fn a_custom_domain_and_ttl() {
        let cfg = ZoneConfig::new("Corp.Example.", 5).unwrap();
        assert_eq!(cfg.origin.to_ascii(), "corp.example.");
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20"}
        }));
        let z = Zone::build(&cfg, &[&s], &[], 1);
        let a = ask(&z, "web.shop.svc.corp.example.", RecordType::A);
        assert_eq!(a_records(&a), vec!["10.96.0.20"]);
        assert_eq!(a.answers[0].ttl, 5);
        assert_eq!(
            ask(&z, "web.shop.svc.cluster.local.", RecordType::A).rcode,
            ResponseCode::Refused
        );
        assert!(ZoneConfig::new(".", 5).is_err());
        assert!(ZoneConfig::new("bad..name", 5).is_err());
    }
}
