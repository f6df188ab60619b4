//! Pure conversions between a [`ServiceTable`]'s entries and the service maps' C
//! structs, the table's validation against what the datapath can hold, and the plan of
//! a sync (what to add, replace and remove). No I/O: unit-tested without privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use fibril_core::services::{
    Backend, Frontend, FrontendKind, L4Proto, Scope, ServiceEntry, ServiceName, ServiceTable,
};

use crate::shared::{
    self, fibril_backend, fibril_svc, fibril_svc_key, fibril_svc_meta, FIBRIL_SVC_NAMESPACE_LEN,
    FIBRIL_SVC_NAME_LEN, FIBRIL_SVC_PORT_NAME_LEN,
};

/// The identity of an entry in the maps: one frontend, for one scope.
pub type EntryKey = (Frontend, Scope);

/// An IPv4 address as the maps hold it: network byte order in a native integer.
pub(crate) fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

pub(crate) fn ip_of_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(raw))
}

pub(crate) fn scope_raw(scope: Scope) -> u8 {
    (match scope {
        Scope::External => shared::FIBRIL_SVC_SCOPE_EXTERNAL,
        Scope::Internal => shared::FIBRIL_SVC_SCOPE_INTERNAL,
    }) as u8
}

pub(crate) fn scope_of_raw(raw: u8) -> Option<Scope> {
    match u32::from(raw) {
        shared::FIBRIL_SVC_SCOPE_EXTERNAL => Some(Scope::External),
        shared::FIBRIL_SVC_SCOPE_INTERNAL => Some(Scope::Internal),
        _ => None,
    }
}

pub(crate) fn kind_raw(kind: FrontendKind) -> u8 {
    (match kind {
        FrontendKind::ClusterIp => shared::FIBRIL_SVC_KIND_CLUSTER_IP,
        FrontendKind::NodePort => shared::FIBRIL_SVC_KIND_NODE_PORT,
        FrontendKind::ExternalIp => shared::FIBRIL_SVC_KIND_EXTERNAL_IP,
        FrontendKind::LoadBalancer => shared::FIBRIL_SVC_KIND_LOAD_BALANCER,
    }) as u8
}

pub(crate) fn kind_of_raw(raw: u8) -> Option<FrontendKind> {
    match u32::from(raw) {
        shared::FIBRIL_SVC_KIND_CLUSTER_IP => Some(FrontendKind::ClusterIp),
        shared::FIBRIL_SVC_KIND_NODE_PORT => Some(FrontendKind::NodePort),
        shared::FIBRIL_SVC_KIND_EXTERNAL_IP => Some(FrontendKind::ExternalIp),
        shared::FIBRIL_SVC_KIND_LOAD_BALANCER => Some(FrontendKind::LoadBalancer),
        _ => None,
    }
}

pub(crate) fn proto_of_raw(raw: u8) -> Option<L4Proto> {
    [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]
        .into_iter()
        .find(|p| p.ip_proto() == raw)
}

/// Whether the datapath translates this protocol. SCTP is not: its CRC32c covers
/// the ports and cannot be updated incrementally.
pub fn datapath_supports(proto: L4Proto) -> bool {
    matches!(proto, L4Proto::Tcp | L4Proto::Udp)
}

pub(crate) fn svc_key(frontend: &Frontend, scope: Scope) -> fibril_svc_key {
    fibril_svc_key {
        ipv4: be_ip(frontend.ip),
        port: frontend.port.to_be(),
        proto: frontend.proto.ip_proto(),
        scope: scope_raw(scope),
    }
}

/// The service entry's value, for `id` at revision `rev`.
pub(crate) fn svc_value(entry: &ServiceEntry, id: u32, rev: u16) -> fibril_svc {
    let mut flags = 0_u8;
    if entry.preserve_client_ip {
        flags |= shared::FIBRIL_SVC_F_PRESERVE_CLIENT_IP as u8;
    }
    fibril_svc {
        id,
        rev,
        // validate() bounds the list.
        count: u16::try_from(entry.backends.len()).unwrap_or(u16::MAX),
        affinity_timeout: entry.affinity_timeout_secs.unwrap_or(0),
        kind: kind_raw(entry.kind),
        flags,
        pad: 0,
    }
}

pub(crate) fn backend_value(b: &Backend) -> fibril_backend {
    let mut flags = 0_u8;
    if b.local {
        flags |= shared::FIBRIL_BACKEND_F_LOCAL as u8;
    }
    if b.terminating {
        flags |= shared::FIBRIL_BACKEND_F_TERMINATING as u8;
    }
    fibril_backend {
        ipv4: be_ip(b.ip),
        port: b.port.to_be(),
        flags,
        pad: 0,
    }
}

pub(crate) fn backend_of_raw(raw: &fibril_backend) -> Backend {
    Backend {
        ip: ip_of_be(raw.ipv4),
        port: u16::from_be(raw.port),
        local: raw.flags & shared::FIBRIL_BACKEND_F_LOCAL as u8 != 0,
        terminating: raw.flags & shared::FIBRIL_BACKEND_F_TERMINATING as u8 != 0,
    }
}

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    dst[..s.len()].copy_from_slice(s.as_bytes());
}

pub(crate) fn meta_value(entry: &ServiceEntry) -> fibril_svc_meta {
    let mut m = fibril_svc_meta::default();
    put(&mut m.namespace_, &entry.service.namespace);
    put(&mut m.name, &entry.service.name);
    put(&mut m.port_name, &entry.port_name);
    m
}

fn get(src: &[u8]) -> Option<String> {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8(src[..end].to_vec()).ok()
}

/// The names in a meta value; `None` if one is not UTF-8.
pub(crate) fn names_of_meta(m: &fibril_svc_meta) -> Option<(ServiceName, String)> {
    Some((
        ServiceName {
            namespace: get(&m.namespace_)?,
            name: get(&m.name)?,
        },
        get(&m.port_name)?,
    ))
}

/// One reason a table cannot be programmed, naming the entry and its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableProblem {
    #[error(
        "entries[{index}] ({frontend}, {scope:?}): the same frontend and scope as entries[{first}]"
    )]
    Duplicate {
        index: usize,
        first: usize,
        frontend: Frontend,
        scope: Scope,
    },
    #[error("entries[{index}].{field}: {len} bytes, the datapath holds at most {max}")]
    NameTooLong {
        index: usize,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("entries[{index}].{field}: contains a NUL byte")]
    NameHasNul { index: usize, field: &'static str },
    #[error("entries[{index}].frontend.{field}: {value} cannot be a service frontend")]
    BadFrontend {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("entries[{index}].backends[{backend}].{field}: {value} cannot be a backend")]
    BadBackend {
        index: usize,
        backend: usize,
        field: &'static str,
        value: String,
    },
    #[error(
        "entries[{index}].backends: {len} backends, the datapath holds at most {max} per frontend"
    )]
    TooManyBackends {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error(
        "entries[{index}].affinity_timeout_secs: 0 is not a timeout (None turns affinity off)"
    )]
    ZeroAffinityTimeout { index: usize },
}

fn check_name(
    problems: &mut Vec<TableProblem>,
    index: usize,
    field: &'static str,
    value: &str,
    len: u32,
) {
    // One byte stays NUL.
    let max = len as usize - 1;
    if value.len() > max {
        problems.push(TableProblem::NameTooLong {
            index,
            field,
            len: value.len(),
            max,
        });
    }
    if value.contains('\0') {
        problems.push(TableProblem::NameHasNul { index, field });
    }
}

/// Every problem of `table` at once. Entries with a protocol the datapath does not
/// translate are not problems: [`datapath_supports`] sorts them out.
pub fn validate(table: &ServiceTable) -> Result<(), Vec<TableProblem>> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<EntryKey, usize> = BTreeMap::new();
    for (index, e) in table.entries.iter().enumerate() {
        if let Some(&first) = seen.get(&(e.frontend, e.scope)) {
            problems.push(TableProblem::Duplicate {
                index,
                first,
                frontend: e.frontend,
                scope: e.scope,
            });
        } else {
            seen.insert((e.frontend, e.scope), index);
        }
        check_name(
            &mut problems,
            index,
            "service.namespace",
            &e.service.namespace,
            FIBRIL_SVC_NAMESPACE_LEN,
        );
        check_name(
            &mut problems,
            index,
            "service.name",
            &e.service.name,
            FIBRIL_SVC_NAME_LEN,
        );
        check_name(
            &mut problems,
            index,
            "port_name",
            &e.port_name,
            FIBRIL_SVC_PORT_NAME_LEN,
        );
        let ip = e.frontend.ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            problems.push(TableProblem::BadFrontend {
                index,
                field: "ip",
                value: ip.to_string(),
            });
        }
        if e.frontend.port == 0 {
            problems.push(TableProblem::BadFrontend {
                index,
                field: "port",
                value: "0".into(),
            });
        }
        for (b, be) in e.backends.iter().enumerate() {
            if be.ip.is_unspecified() || be.ip.is_broadcast() || be.ip.is_multicast() {
                problems.push(TableProblem::BadBackend {
                    index,
                    backend: b,
                    field: "ip",
                    value: be.ip.to_string(),
                });
            }
            if be.port == 0 {
                problems.push(TableProblem::BadBackend {
                    index,
                    backend: b,
                    field: "port",
                    value: "0".into(),
                });
            }
        }
        if e.backends.len() > usize::from(u16::MAX) {
            problems.push(TableProblem::TooManyBackends {
                index,
                len: e.backends.len(),
                max: usize::from(u16::MAX),
            });
        }
        if e.affinity_timeout_secs == Some(0) {
            problems.push(TableProblem::ZeroAffinityTimeout { index });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// An entry as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub id: u32,
    pub rev: u16,
    /// The backend count of the service entry in the map.
    pub slots: u16,
    /// All its parts were found (a sync interrupted by an error can leave an entry
    /// without its names or some backends): a plan rewrites an entry that is not.
    pub intact: bool,
    /// The entry as read back (what could be read of it, if not intact).
    pub entry: ServiceEntry,
}

/// What a sync does, entry by entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// New entries, with their freshly allocated ids.
    pub add: Vec<(u32, &'a ServiceEntry)>,
    /// Entries whose content changes: the current state and the new content.
    pub replace: Vec<(Programmed, &'a ServiceEntry)>,
    /// Entries to remove.
    pub remove: Vec<Programmed>,
    pub unchanged: usize,
}

/// Service ids in use, and the smallest free ones.
#[derive(Clone, Debug, Default)]
pub struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
}

impl IdAllocator {
    pub fn with_used(used: impl IntoIterator<Item = u32>) -> Self {
        IdAllocator {
            used: used.into_iter().collect(),
            next: 1,
        }
    }

    pub fn allocate(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        let id = self.next;
        self.used.insert(id);
        self.next += 1;
        id
    }

    pub fn release(&mut self, id: u32) {
        if self.used.remove(&id) && id < self.next {
            self.next = id;
        }
    }
}

/// Diffs `current` against the supported entries of `desired`, allocating ids for
/// new entries (released ids of removed entries are only reused by a later plan).
pub fn plan<'a>(
    current: &BTreeMap<EntryKey, Programmed>,
    desired: &'a [ServiceEntry],
    ids: &mut IdAllocator,
) -> Plan<'a> {
    let mut out = Plan::default();
    let mut wanted: BTreeSet<EntryKey> = BTreeSet::new();
    for e in desired
        .iter()
        .filter(|e| datapath_supports(e.frontend.proto))
    {
        let key = (e.frontend, e.scope);
        wanted.insert(key);
        match current.get(&key) {
            Some(p) if p.intact && p.entry == *e => out.unchanged += 1,
            Some(p) => out.replace.push((p.clone(), e)),
            None => out.add.push((ids.allocate(), e)),
        }
    }
    for (key, p) in current {
        if !wanted.contains(key) {
            out.remove.push(p.clone());
        }
    }
    out
}

/// UDP backends a service loses in a change (`before` -> `after`, `None`: removed),
/// whose conntrack entries must go: a UDP "connection" never ends by itself.
pub fn udp_backends_lost(
    before: &ServiceEntry,
    after: Option<&ServiceEntry>,
) -> Vec<(Ipv4Addr, u16)> {
    if before.frontend.proto != L4Proto::Udp {
        return Vec::new();
    }
    let kept: BTreeSet<(Ipv4Addr, u16)> = after
        .map(|a| a.backends.iter().map(|b| (b.ip, b.port)).collect())
        .unwrap_or_default();
    let mut lost: Vec<(Ipv4Addr, u16)> = before
        .backends
        .iter()
        .map(|b| (b.ip, b.port))
        .filter(|b| !kept.contains(b))
        .collect();
    lost.sort();
    lost.dedup();
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: [u8; 4], port: u16, proto: L4Proto, backends: &[([u8; 4], u16)]) -> ServiceEntry {
        ServiceEntry {
            service: ServiceName {
                namespace: "default".into(),
                name: "web".into(),
            },
            port_name: "http".into(),
            kind: FrontendKind::ClusterIp,
            scope: Scope::External,
            frontend: Frontend {
                ip: Ipv4Addr::from(ip),
                port,
                proto,
            },
            backends: backends
                .iter()
                .map(|(ip, port)| Backend {
                    ip: Ipv4Addr::from(*ip),
                    port: *port,
                    local: false,
                    terminating: false,
                })
                .collect(),
            affinity_timeout_secs: None,
            preserve_client_ip: false,
        }
    }

    #[test]
    fn values_keep_network_order_and_flags() {
        let mut e = entry([10, 96, 0, 10], 80, L4Proto::Tcp, &[([10, 1, 0, 5], 8080)]);
        e.preserve_client_ip = true;
        e.affinity_timeout_secs = Some(30);
        e.kind = FrontendKind::NodePort;
        e.scope = Scope::Internal;
        let key = svc_key(&e.frontend, e.scope);
        assert_eq!(key.ipv4.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), 80_u16.to_be_bytes());
        assert_eq!(key.proto, 6);
        assert_eq!(u32::from(key.scope), shared::FIBRIL_SVC_SCOPE_INTERNAL);
        let v = svc_value(&e, 7, 3);
        assert_eq!((v.id, v.rev, v.count, v.affinity_timeout), (7, 3, 1, 30));
        assert_eq!(kind_of_raw(v.kind), Some(FrontendKind::NodePort));
        assert_eq!(u32::from(v.flags), shared::FIBRIL_SVC_F_PRESERVE_CLIENT_IP);
        let b = Backend {
            ip: Ipv4Addr::new(10, 1, 0, 5),
            port: 8080,
            local: true,
            terminating: true,
        };
        let raw = backend_value(&b);
        assert_eq!(raw.ipv4.to_ne_bytes(), [10, 1, 0, 5]);
        assert_eq!(raw.port.to_ne_bytes(), 8080_u16.to_be_bytes());
        assert_eq!(backend_of_raw(&raw), b);
        for s in [Scope::External, Scope::Internal] {
            assert_eq!(scope_of_raw(scope_raw(s)), Some(s));
        }
        for k in [
            FrontendKind::ClusterIp,
            FrontendKind::NodePort,
            FrontendKind::ExternalIp,
            FrontendKind::LoadBalancer,
        ] {
            assert_eq!(kind_of_raw(kind_raw(k)), Some(k));
        }
        assert_eq!(scope_of_raw(0), None);
        assert_eq!(kind_of_raw(0), None);
        assert_eq!(proto_of_raw(17), Some(L4Proto::Udp));
        assert_eq!(proto_of_raw(1), None);
    }

    #[test]
    fn names_round_trip_through_the_meta_struct() {
        let mut e = entry([10, 96, 0, 10], 80, L4Proto::Tcp, &[]);
        e.service.namespace = "n".repeat(63);
        e.service.name = "s".repeat(63);
        // upstream e2e names ports like "service-port-tcp-80" (a DNS label, up to 63)
        e.port_name = "p".repeat(63);
        let (svc, port) = names_of_meta(&meta_value(&e)).unwrap();
        assert_eq!((svc, port), (e.service.clone(), e.port_name.clone()));
        e.port_name = String::new();
        assert_eq!(names_of_meta(&meta_value(&e)).unwrap().1, "");
    }

    #[test]
    fn validation_names_every_problem() {
        let mut bad = entry([0, 0, 0, 0], 0, L4Proto::Tcp, &[([10, 1, 0, 5], 0)]);
        bad.service.name = "x".repeat(64);
        bad.port_name = "a\0b".into();
        bad.affinity_timeout_secs = Some(0);
        let ok = entry([10, 96, 0, 10], 80, L4Proto::Tcp, &[([10, 1, 0, 5], 80)]);
        let table = ServiceTable {
            entries: vec![ok.clone(), bad, ok],
        };
        let problems = validate(&table).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 7, "{text:#?}");
        for needle in [
            "entries[1].service.name: 64 bytes",
            "entries[1].port_name: contains a NUL",
            "entries[1].frontend.ip: 0.0.0.0",
            "entries[1].frontend.port: 0",
            "entries[1].backends[0].port: 0",
            "entries[1].affinity_timeout_secs",
            "entries[2] (10.96.0.10:80/TCP, External): the same frontend and scope as entries[0]",
        ] {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "{needle}: {text:#?}"
            );
        }
        assert!(validate(&ServiceTable::default()).is_ok());
    }

    #[test]
    fn plan_adds_replaces_removes_and_keeps() {
        let a = entry([10, 96, 0, 1], 80, L4Proto::Tcp, &[([10, 1, 0, 5], 80)]);
        let b = entry([10, 96, 0, 2], 53, L4Proto::Udp, &[([10, 1, 0, 6], 53)]);
        let c = entry([10, 96, 0, 3], 80, L4Proto::Tcp, &[]);
        let sctp = entry([10, 96, 0, 4], 80, L4Proto::Sctp, &[]);
        let mut current = BTreeMap::new();
        for (id, e) in [(1, &a), (2, &b), (3, &c)] {
            current.insert(
                (e.frontend, e.scope),
                Programmed {
                    id,
                    rev: 5,
                    slots: e.backends.len() as u16,
                    intact: id != 1,
                    entry: e.clone(),
                },
            );
        }
        let mut ids = IdAllocator::with_used([1, 2, 3]);
        let mut b2 = b.clone();
        b2.backends[0].port = 5353;
        let d = entry([10, 96, 0, 5], 80, L4Proto::Tcp, &[]);
        let desired = vec![a.clone(), b2.clone(), d.clone(), sctp];
        let p = plan(&current, &desired, &mut ids);
        // a is in place but not intact: rewritten like a changed entry.
        assert_eq!(p.unchanged, 0);
        assert_eq!(p.add, vec![(4, &d)]);
        assert_eq!(p.replace.len(), 2);
        assert_eq!((p.replace[0].0.id, p.replace[0].1), (1, &a));
        assert_eq!((p.replace[1].0.id, p.replace[1].1), (2, &b2));
        assert_eq!(p.remove.len(), 1);
        assert_eq!(p.remove[0].id, 3);

        ids.release(3);
        assert_eq!(ids.allocate(), 3, "released ids are reused");
        assert_eq!(ids.allocate(), 5);
    }

    #[test]
    fn only_udp_backends_that_went_away_are_flushed() {
        let before = entry(
            [10, 96, 0, 2],
            53,
            L4Proto::Udp,
            &[([10, 1, 0, 6], 53), ([10, 1, 0, 7], 53)],
        );
        let after = entry([10, 96, 0, 2], 53, L4Proto::Udp, &[([10, 1, 0, 7], 53)]);
        assert_eq!(
            udp_backends_lost(&before, Some(&after)),
            vec![(Ipv4Addr::new(10, 1, 0, 6), 53)]
        );
        assert_eq!(udp_backends_lost(&before, None).len(), 2);
        let tcp = entry([10, 96, 0, 2], 53, L4Proto::Tcp, &[([10, 1, 0, 6], 53)]);
        assert!(udp_backends_lost(&tcp, None).is_empty());
    }
}
