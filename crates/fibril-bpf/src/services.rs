//! The service maps (the kube-proxy replacement's state): frontends, backends, session
//! affinity and conntrack, written from a [`ServiceTable`] and read back as one.
//!
//! [`ServiceMaps`] opens the maps pinned in a node's pin dir, so the agent can sync and
//! the CLI can dump without loading any program. `bpf/lib/lb.h` documents what the
//! programs do with them.
//!
//! # Sync
//!
//! [`ServiceMaps::sync`] diffs the table against what the maps hold (read back from the
//! pins on first use, so a restarted agent picks up where the last one stopped) and
//! applies only the difference. Per frontend, a change is atomic for the datapath: the
//! new backend list is written under a new revision, then the frontend's entry is
//! replaced in one map update, then the old revision is deleted. A packet sees the old
//! list or the new one, never a mix.
//!
//! Established connections keep their backend through changes (conntrack); new ones
//! only pick from the live list. UDP flows to a backend a service lost are flushed from
//! conntrack by the sync itself, since a UDP "connection" never ends on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, MapError};
use fibril_core::services::{Frontend, L4Proto, Scope, ServiceEntry, ServiceName, ServiceTable};

use crate::error::BpfError;
use crate::maps::{is_not_found, open_pinned};
use crate::shared::{
    self, fibril_affinity, fibril_affinity_key, fibril_backend, fibril_backend_key,
    fibril_ct_entry, fibril_ct_key, fibril_svc, fibril_svc_key, fibril_svc_member_key,
    fibril_svc_meta,
};

pub mod raw;

use raw::{be_ip, ip_of_be, EntryKey, IdAllocator, Programmed};
pub use raw::{datapath_supports, TableProblem};

/// The service loopback address: the source a pod sees when it reaches itself through
/// a service (hairpin).
pub const SERVICE_LOOPBACK: Ipv4Addr = Ipv4Addr::new(
    (shared::FIBRIL_SVC_LOOPBACK_IPV4 >> 24) as u8,
    (shared::FIBRIL_SVC_LOOPBACK_IPV4 >> 16) as u8,
    (shared::FIBRIL_SVC_LOOPBACK_IPV4 >> 8) as u8,
    shared::FIBRIL_SVC_LOOPBACK_IPV4 as u8,
);

/// The source ports masqueraded connections get on the node's address.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> =
    (shared::FIBRIL_SNAT_PORT_MIN as u16)..=(shared::FIBRIL_SNAT_PORT_MAX as u16);

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontends that were not in the maps.
    pub added: usize,
    /// Frontends whose content changed (backends, flags, names).
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Backend slots written.
    pub backends_written: usize,
    /// Conntrack entries removed: UDP flows to backends their service lost.
    pub conntrack_flushed: usize,
    /// Entries the datapath cannot serve, left out of the maps (the caller should say
    /// so where users look).
    pub skipped: Vec<Skipped>,
    pub elapsed: Duration,
}

/// An entry of the table the datapath does not program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: ServiceName,
    pub frontend: Frontend,
    pub scope: Scope,
    pub reason: SkipReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// SCTP's checksum (CRC32c) covers the ports and cannot be updated in place.
    UnsupportedProtocol,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::UnsupportedProtocol => {
                "the datapath does not translate this protocol (SCTP)"
            }
        })
    }
}

/// Which way a conntrack entry's packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtDirection {
    /// Client to frontend: translated to the backend.
    Forward,
    /// Backend to client (or to the masquerade address): translated back.
    Reply,
}

/// One conntrack entry, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEntry {
    pub proto: L4Proto,
    /// The tuple the entry is keyed by, as on the wire.
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub direction: CtDirection,
    /// The tuple its packets are rewritten to.
    pub nat_src: SocketAddrV4,
    pub nat_dst: SocketAddrV4,
    /// The service id of the frontend the connection was made through.
    pub service_id: u32,
    /// The source is translated (masquerade or hairpin).
    pub snat: bool,
    pub hairpin: bool,
    /// TCP: what this direction has sent.
    pub established: bool,
    pub fin: bool,
    pub rst: bool,
    /// CLOCK_MONOTONIC deadline, nanoseconds.
    pub expires_ns: u64,
}

impl ConntrackEntry {
    /// The backend of the connection.
    pub fn backend(&self) -> SocketAddrV4 {
        match self.direction {
            CtDirection::Forward => self.nat_dst,
            CtDirection::Reply => self.src,
        }
    }

    fn decode(key: &fibril_ct_key, e: &fibril_ct_entry, path: &Path) -> Result<Self, BpfError> {
        let bad = |field: &'static str, value: u32| BpfError::BadServiceMapEntry {
            path: path.to_path_buf(),
            what: format!(
                "conntrack entry {}:{} -> {}:{}",
                ip_of_be(key.saddr),
                u16::from_be(key.sport),
                ip_of_be(key.daddr),
                u16::from_be(key.dport)
            ),
            field,
            value,
        };
        let proto = raw::proto_of_raw(key.proto).ok_or_else(|| bad("proto", key.proto.into()))?;
        let direction = match u32::from(e.dir) {
            shared::FIBRIL_CT_FORWARD => CtDirection::Forward,
            shared::FIBRIL_CT_REPLY => CtDirection::Reply,
            other => return Err(bad("dir", other)),
        };
        let sa = |ip: u32, port: u16| SocketAddrV4::new(ip_of_be(ip), u16::from_be(port));
        let flag = |f: u32| u32::from(e.flags) & f != 0;
        Ok(ConntrackEntry {
            proto,
            src: sa(key.saddr, key.sport),
            dst: sa(key.daddr, key.dport),
            direction,
            nat_src: sa(e.nat_saddr, e.nat_sport),
            nat_dst: sa(e.nat_daddr, e.nat_dport),
            service_id: e.svc_id,
            snat: flag(shared::FIBRIL_CT_F_SNAT),
            hairpin: flag(shared::FIBRIL_CT_F_HAIRPIN),
            established: flag(shared::FIBRIL_CT_F_ESTABLISHED),
            fin: flag(shared::FIBRIL_CT_F_FIN),
            rst: flag(shared::FIBRIL_CT_F_RST),
            expires_ns: e.expires_ns,
        })
    }
}

/// What the maps hold, as this process last read or wrote it.
struct State {
    entries: BTreeMap<EntryKey, Programmed>,
    ids: IdAllocator,
}

/// The pinned service maps of one node.
pub struct ServiceMaps {
    pin_dir: PathBuf,
    services: HashMap<MapData, fibril_svc_key, fibril_svc>,
    pub(crate) backends: HashMap<MapData, fibril_backend_key, fibril_backend>,
    pub(crate) members: HashMap<MapData, fibril_svc_member_key, u32>,
    affinity: HashMap<MapData, fibril_affinity_key, fibril_affinity>,
    pub(crate) meta: HashMap<MapData, u32, fibril_svc_meta>,
    ct: HashMap<MapData, fibril_ct_key, fibril_ct_entry>,
    /// `None` until the first sync, and after a failed one: the next sync reads the
    /// maps back first.
    state: Option<State>,
}

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMaps")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

/// One map's errors, naming its pin.
fn map_err(pin_dir: &Path, name: &str) -> impl Fn(MapError) -> BpfError {
    let path = pin_dir.join(name);
    move |source| BpfError::Map {
        path: path.clone(),
        source,
    }
}

/// A delete that succeeds when the key is already gone.
fn remove_quiet<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), MapError> {
    match map.remove(key) {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Deletes the keys `doomed` picks (collected first: deleting while walking the keys
/// would restart the walk).
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) -> Result<(), MapError> {
    let mut keys = Vec::new();
    for k in map.keys() {
        let k = k?;
        if doomed(&k) {
            keys.push(k);
        }
    }
    keys.iter().try_for_each(|k| remove_quiet(map, k))
}

impl ServiceMaps {
    /// Opens the service maps pinned in `pin_dir` (a datapath must have been loaded
    /// there once).
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(ServiceMaps {
            pin_dir: pin_dir.to_path_buf(),
            services: open_pinned(pin_dir, shared::MAP_SERVICES, HashMap::try_from)?,
            backends: open_pinned(pin_dir, shared::MAP_BACKENDS, HashMap::try_from)?,
            members: open_pinned(pin_dir, shared::MAP_SVC_MEMBERS, HashMap::try_from)?,
            affinity: open_pinned(pin_dir, shared::MAP_AFFINITY, HashMap::try_from)?,
            meta: open_pinned(pin_dir, shared::MAP_SVC_META, HashMap::try_from)?,
            ct: open_pinned(pin_dir, shared::MAP_CT, HashMap::try_from)?,
            state: None,
        })
    }

    /// Drops this process's view of the maps: the next sync reads them back.
    pub(crate) fn forget_state(&mut self) {
        self.state = None;
    }

    fn err(&self, name: &str) -> impl Fn(MapError) -> BpfError {
        map_err(&self.pin_dir, name)
    }

    /// Makes the maps hold exactly `table` (its entries the datapath supports; the
    /// others are reported in [`SyncStats::skipped`]). Idempotent. A table with
    /// problems is refused whole, every problem named, and nothing is written.
    pub fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats, BpfError> {
        let start = Instant::now();
        raw::validate(table).map_err(|problems| BpfError::InvalidServiceTable { problems })?;
        let mut state = match self.state.take() {
            Some(state) => state,
            None => self.read_state(true)?,
        };
        // On error the state stays taken: what was applied is unknown, so the next
        // sync reads the maps back.
        let mut stats = self.apply(&mut state, table)?;
        self.state = Some(state);
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    fn apply(&mut self, state: &mut State, table: &ServiceTable) -> Result<SyncStats, BpfError> {
        let mut stats = SyncStats {
            skipped: table
                .entries
                .iter()
                .filter(|e| !datapath_supports(e.frontend.proto))
                .map(|e| Skipped {
                    service: e.service.clone(),
                    frontend: e.frontend,
                    scope: e.scope,
                    reason: SkipReason::UnsupportedProtocol,
                })
                .collect(),
            ..SyncStats::default()
        };
        let plan = raw::plan(&state.entries, &table.entries, &mut state.ids);
        stats.unchanged = plan.unchanged;
        let mut lost: BTreeSet<(u32, Ipv4Addr, u16)> = BTreeSet::new();

        for (id, entry) in plan.add {
            self.write_entry(id, 0, entry, None)?;
            stats.added += 1;
            stats.backends_written += entry.backends.len();
            state.entries.insert(
                (entry.frontend, entry.scope),
                Programmed {
                    id,
                    rev: 0,
                    slots: entry.backends.len() as u16,
                    intact: true,
                    entry: entry.clone(),
                },
            );
        }
        for (old, entry) in plan.replace {
            let rev = old.rev.wrapping_add(1);
            self.write_entry(old.id, rev, entry, Some(&old))?;
            stats.updated += 1;
            stats.backends_written += entry.backends.len();
            lost.extend(
                raw::udp_backends_lost(&old.entry, Some(entry))
                    .into_iter()
                    .map(|(ip, port)| (old.id, ip, port)),
            );
            state.entries.insert(
                (entry.frontend, entry.scope),
                Programmed {
                    id: old.id,
                    rev,
                    slots: entry.backends.len() as u16,
                    intact: true,
                    entry: entry.clone(),
                },
            );
        }
        for old in plan.remove {
            self.delete_entry(&old)?;
            stats.removed += 1;
            lost.extend(
                raw::udp_backends_lost(&old.entry, None)
                    .into_iter()
                    .map(|(ip, port)| (old.id, ip, port)),
            );
            state.entries.remove(&(old.entry.frontend, old.entry.scope));
            state.ids.release(old.id);
        }

        if !lost.is_empty() {
            stats.conntrack_flushed = self.flush_conntrack_where(|e| {
                e.proto == L4Proto::Udp
                    && lost.contains(&(e.service_id, *e.backend().ip(), e.backend().port()))
            })?;
        }
        Ok(stats)
    }

    /// Writes `entry` as revision `rev` of service `id`, replacing `old` (the same
    /// frontend's current state) atomically for the datapath.
    fn write_entry(
        &mut self,
        id: u32,
        rev: u16,
        entry: &ServiceEntry,
        old: Option<&Programmed>,
    ) -> Result<(), BpfError> {
        let e_be = self.err(shared::MAP_BACKENDS);
        for (slot, b) in entry.backends.iter().enumerate() {
            let key = fibril_backend_key {
                svc_id: id,
                rev,
                slot: slot as u16,
            };
            self.backends
                .insert(key, raw::backend_value(b), 0)
                .map_err(&e_be)?;
        }
        if entry.affinity_timeout_secs.is_some() {
            let e_m = self.err(shared::MAP_SVC_MEMBERS);
            for (slot, b) in entry.backends.iter().enumerate() {
                self.members
                    .insert(member_key(id, rev, b.ip, b.port), slot as u32, 0)
                    .map_err(&e_m)?;
            }
        }
        self.meta
            .insert(id, raw::meta_value(entry), 0)
            .map_err(self.err(shared::MAP_SVC_META))?;
        // The switch: from here on, new connections pick from the new list.
        self.services
            .insert(
                raw::svc_key(&entry.frontend, entry.scope),
                raw::svc_value(entry, id, rev),
                0,
            )
            .map_err(self.err(shared::MAP_SERVICES))?;
        if let Some(old) = old {
            self.delete_revision(old)?;
        }
        Ok(())
    }

    /// Deletes the backends (and memberships) of `p`'s revision.
    fn delete_revision(&mut self, p: &Programmed) -> Result<(), BpfError> {
        let e_be = self.err(shared::MAP_BACKENDS);
        let slots = usize::from(p.slots).max(p.entry.backends.len());
        for slot in 0..slots {
            let key = fibril_backend_key {
                svc_id: p.id,
                rev: p.rev,
                slot: slot as u16,
            };
            remove_quiet(&mut self.backends, &key).map_err(&e_be)?;
        }
        if p.entry.affinity_timeout_secs.is_some() || !p.intact {
            let e_m = self.err(shared::MAP_SVC_MEMBERS);
            for b in &p.entry.backends {
                remove_quiet(&mut self.members, &member_key(p.id, p.rev, b.ip, b.port))
                    .map_err(&e_m)?;
            }
        }
        Ok(())
    }

    fn delete_entry(&mut self, p: &Programmed) -> Result<(), BpfError> {
        remove_quiet(
            &mut self.services,
            &raw::svc_key(&p.entry.frontend, p.entry.scope),
        )
        .map_err(self.err(shared::MAP_SERVICES))?;
        self.delete_revision(p)?;
        remove_quiet(&mut self.meta, &p.id).map_err(self.err(shared::MAP_SVC_META))
    }

    /// Reads every service entry back. With `repair`, an entry with missing parts is
    /// returned as not intact (the next plan rewrites it) and parts that belong to no
    /// live entry (left by an interrupted sync) are deleted; without, a missing part is
    /// an error.
    fn read_state(&mut self, repair: bool) -> Result<State, BpfError> {
        let path = self.pin_dir.join(shared::MAP_SERVICES);
        let mut raw_entries = Vec::new();
        for item in self.services.iter() {
            raw_entries.push(item.map_err(self.err(shared::MAP_SERVICES))?);
        }
        let mut entries = BTreeMap::new();
        let mut live: BTreeSet<(u32, u16)> = BTreeSet::new();
        for (key, svc) in raw_entries {
            let p = self.read_entry(&key, &svc, &path, repair)?;
            live.insert((p.id, p.rev));
            entries.insert((p.entry.frontend, p.entry.scope), p);
        }
        if repair {
            self.delete_orphans(&live)?;
        }
        Ok(State {
            ids: IdAllocator::with_used(live.iter().map(|(id, _)| *id)),
            entries,
        })
    }

    fn read_entry(
        &self,
        key: &fibril_svc_key,
        svc: &fibril_svc,
        path: &Path,
        repair: bool,
    ) -> Result<Programmed, BpfError> {
        let ip = ip_of_be(key.ipv4);
        let port = u16::from_be(key.port);
        let what = format!(
            "service entry {ip}:{port} proto {} (id {})",
            key.proto, svc.id
        );
        let bad = |field: &'static str, value: u32| BpfError::BadServiceMapEntry {
            path: path.to_path_buf(),
            what: what.clone(),
            field,
            value,
        };
        let proto = raw::proto_of_raw(key.proto).ok_or_else(|| bad("proto", key.proto.into()))?;
        let scope = raw::scope_of_raw(key.scope).ok_or_else(|| bad("scope", key.scope.into()))?;
        let kind = raw::kind_of_raw(svc.kind).ok_or_else(|| bad("kind", svc.kind.into()))?;
        let frontend = Frontend { ip, port, proto };

        let mut intact = true;
        let mut backends = Vec::with_capacity(usize::from(svc.count));
        for slot in 0..svc.count {
            let bk = fibril_backend_key {
                svc_id: svc.id,
                rev: svc.rev,
                slot,
            };
            match self.backends.get(&bk, 0) {
                Ok(b) => backends.push(raw::backend_of_raw(&b)),
                Err(e) if is_not_found(&e) && repair => intact = false,
                Err(e) if is_not_found(&e) => {
                    return Err(BpfError::MissingServicePart {
                        path: self.pin_dir.join(shared::MAP_BACKENDS),
                        frontend: frontend.to_string(),
                        part: "backend slot",
                        index: u32::from(slot),
                    })
                }
                Err(source) => return Err(self.err(shared::MAP_BACKENDS)(source)),
            }
        }
        let names = match self.meta.get(&svc.id, 0) {
            Ok(m) => raw::names_of_meta(&m),
            Err(e) if is_not_found(&e) => None,
            Err(source) => return Err(self.err(shared::MAP_SVC_META)(source)),
        };
        let (service, port_name) = match names {
            Some(n) => n,
            None if repair => {
                intact = false;
                (
                    ServiceName {
                        namespace: String::new(),
                        name: String::new(),
                    },
                    String::new(),
                )
            }
            None => {
                return Err(BpfError::MissingServicePart {
                    path: self.pin_dir.join(shared::MAP_SVC_META),
                    frontend: frontend.to_string(),
                    part: "names (missing or not UTF-8) of service id",
                    index: svc.id,
                })
            }
        };
        Ok(Programmed {
            id: svc.id,
            rev: svc.rev,
            slots: svc.count,
            intact,
            entry: ServiceEntry {
                service,
                port_name,
                kind,
                scope,
                frontend,
                backends,
                affinity_timeout_secs: (svc.affinity_timeout != 0).then_some(svc.affinity_timeout),
                preserve_client_ip: u32::from(svc.flags) & shared::FIBRIL_SVC_F_PRESERVE_CLIENT_IP
                    != 0,
            },
        })
    }

    fn delete_orphans(&mut self, live: &BTreeSet<(u32, u16)>) -> Result<(), BpfError> {
        let ids: BTreeSet<u32> = live.iter().map(|(id, _)| *id).collect();
        remove_where(&mut self.backends, |k| !live.contains(&(k.svc_id, k.rev)))
            .map_err(self.err(shared::MAP_BACKENDS))?;
        remove_where(&mut self.members, |k| !live.contains(&(k.svc_id, k.rev)))
            .map_err(self.err(shared::MAP_SVC_MEMBERS))?;
        remove_where(&mut self.meta, |id| !ids.contains(id)).map_err(self.err(shared::MAP_SVC_META))
    }

    /// What the maps hold, as a table (normalized). Reads the maps, not this process's
    /// view of them; a dump racing a sync retries.
    pub fn dump(&mut self) -> Result<ServiceTable, BpfError> {
        let mut last = None;
        for _ in 0..3 {
            match self.read_state(false) {
                Ok(state) => {
                    let mut table = ServiceTable {
                        entries: state.entries.into_values().map(|p| p.entry).collect(),
                    };
                    table.normalize();
                    return Ok(table);
                }
                Err(e @ BpfError::MissingServicePart { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<ConntrackEntry>, BpfError> {
        let path = self.pin_dir.join(shared::MAP_CT);
        let mut out = Vec::new();
        for item in self.ct.iter() {
            let (k, e) = item.map_err(self.err(shared::MAP_CT))?;
            out.push(ConntrackEntry::decode(&k, &e, &path)?);
        }
        Ok(out)
    }

    /// Removes the conntrack entries (both directions) of every connection to `backend`
    /// over `proto`, through any service. Returns how many entries went.
    pub fn flush_conntrack_backend(
        &mut self,
        backend: SocketAddrV4,
        proto: L4Proto,
    ) -> Result<usize, BpfError> {
        self.flush_conntrack_where(|e| e.proto == proto && e.backend() == backend)
    }

    fn flush_conntrack_where(
        &mut self,
        matches: impl Fn(&ConntrackEntry) -> bool,
    ) -> Result<usize, BpfError> {
        let path = self.pin_dir.join(shared::MAP_CT);
        let mut doomed = Vec::new();
        for item in self.ct.iter() {
            let (k, e) = item.map_err(self.err(shared::MAP_CT))?;
            if matches(&ConntrackEntry::decode(&k, &e, &path)?) {
                doomed.push(k);
            }
        }
        let mut removed = 0;
        for k in &doomed {
            match self.ct.remove(k) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(self.err(shared::MAP_CT)(source)),
            }
        }
        Ok(removed)
    }

    /// Session-affinity entries, as (client, service id, backend, last used ns).
    pub fn affinity(&self) -> Result<Vec<(Ipv4Addr, u32, SocketAddrV4, u64)>, BpfError> {
        let mut out = Vec::new();
        for item in self.affinity.iter() {
            let (k, v) = item.map_err(self.err(shared::MAP_AFFINITY))?;
            out.push((
                ip_of_be(k.client_ipv4),
                k.svc_id,
                SocketAddrV4::new(ip_of_be(v.backend.ipv4), u16::from_be(v.backend.port)),
                v.last_used_ns,
            ));
        }
        Ok(out)
    }
}

fn member_key(id: u32, rev: u16, ip: Ipv4Addr, port: u16) -> fibril_svc_member_key {
    fibril_svc_member_key {
        svc_id: id,
        rev,
        port: port.to_be(),
        ipv4: be_ip(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_decode_from_the_header() {
        assert_eq!(SERVICE_LOOPBACK, Ipv4Addr::new(169, 254, 42, 1));
        assert_eq!(SNAT_PORTS, 61000..=65535);
    }
}
