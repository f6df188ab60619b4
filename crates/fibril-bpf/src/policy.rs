//! The NetworkPolicy maps of a node: which endpoints are isolated, their allow entries,
//! and the policy conntrack. `bpf/lib/policy.h` documents what the programs do with them;
//! `fibril_core::policy` compiles what goes in.
//!
//! [`PolicyMaps`] opens the maps pinned in a node's pin dir. An endpoint is named by the
//! ifindex of the host side of its veth.
//!
//! # Replacing an endpoint's policy
//!
//! [`PolicyMaps::set`] writes the new entries under a new *generation* (part of every
//! key, matched in full), then replaces the endpoint's state entry (flags, generation,
//! revision) in one map update, then deletes the old generation's entries. A packet
//! sees all of the old map or all of the new one. An endpoint whose policy (isolation,
//! identity, entries) is unchanged costs nothing and keeps its revision; a change bumps
//! it. What the maps hold is read back on first use, so a restarted agent
//! continues from there (and entries of a generation that never went live, left by a
//! writer that died mid-write, are deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError};
use fibril_core::policy::{Direction, EndpointPolicy, PolicyKey, PolicyMap, PortPrefix};
use fibril_core::services::L4Proto;

use crate::error::BpfError;
use crate::maps::{is_not_found, open_pinned, Identity};
use crate::shared::{
    self, fibril_policy_ct, fibril_policy_ct_key, fibril_policy_entry, fibril_policy_ep,
    fibril_policy_ep_key, fibril_policy_match,
};

/// What one endpoint enforces, as the maps take it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRules {
    /// The endpoint's own identity.
    pub identity: Identity,
    /// The endpoint's policy revision; drop events carry its low 32 bits. The maps keep
    /// revisions monotonic per endpoint, also across writers: a change goes live as the
    /// larger of this and the live revision + 1 ([`SetOutcome::Written`] says which).
    pub revision: u64,
    /// `Some` when ingress is isolated: what may come in.
    pub ingress: Option<PolicyMap>,
    /// `Some` when egress is isolated: what may go out.
    pub egress: Option<PolicyMap>,
}

impl EndpointRules {
    pub fn of(ep: &EndpointPolicy) -> Self {
        EndpointRules {
            identity: ep.identity,
            revision: ep.revision,
            ingress: ep.ingress.clone(),
            egress: ep.egress.clone(),
        }
    }

    /// Isolated in at least one direction: the endpoint has a state entry.
    pub fn is_isolated(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.ingress.is_some() {
            f |= shared::FIBRIL_POLICY_F_INGRESS;
        }
        if self.egress.is_some() {
            f |= shared::FIBRIL_POLICY_F_EGRESS;
        }
        f
    }

    fn entries(&self) -> BTreeSet<(u8, PolicyKey)> {
        let dir = |d: Direction, m: &Option<PolicyMap>| {
            m.iter()
                .flat_map(|m| m.iter().map(move |k| (dir_raw(d), *k)))
                .collect::<Vec<_>>()
        };
        dir(Direction::Ingress, &self.ingress)
            .into_iter()
            .chain(dir(Direction::Egress, &self.egress))
            .collect()
    }
}

/// An endpoint's policy as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedEndpoint {
    pub ifindex: u32,
    pub identity: Identity,
    /// Low 32 bits of the endpoint's policy revision.
    pub revision: u32,
    /// The generation of the live entries.
    pub generation: u32,
    pub ingress: Option<PolicyMap>,
    pub egress: Option<PolicyMap>,
}

/// What [`PolicyMaps::set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// The maps already held exactly this.
    Unchanged,
    /// A new generation went live with this many entries, under this revision.
    Written { entries: usize, revision: u32 },
    /// The endpoint is no longer isolated: its state and entries were removed.
    Removed,
}

/// One policy conntrack entry, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConntrackEntry {
    /// The endpoint (host veth ifindex).
    pub ifindex: u32,
    /// The direction packets of this tuple cross the endpoint in.
    pub direction: Direction,
    /// IP protocol.
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// CLOCK_MONOTONIC deadline, nanoseconds.
    pub expires_ns: u64,
}

/// An endpoint's live state as this process last wrote or read it.
#[derive(Clone, Debug)]
struct Programmed {
    ep: fibril_policy_ep,
    entries: BTreeSet<(u8, PolicyKey)>,
}

/// The pinned policy maps of one node.
pub struct PolicyMaps {
    pin_dir: PathBuf,
    endpoints: HashMap<MapData, fibril_policy_ep_key, fibril_policy_ep>,
    rules: LpmTrie<MapData, fibril_policy_match, fibril_policy_entry>,
    ct: HashMap<MapData, fibril_policy_ct_key, fibril_policy_ct>,
    /// `None` until first used, and after a failed write: read back from the maps then.
    state: Option<BTreeMap<u32, Programmed>>,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

fn dir_raw(d: Direction) -> u8 {
    match d {
        Direction::Ingress => shared::FIBRIL_POLICY_INGRESS as u8,
        Direction::Egress => shared::FIBRIL_POLICY_EGRESS as u8,
    }
}

fn dir_of_raw(raw: u8) -> Option<Direction> {
    match u32::from(raw) {
        shared::FIBRIL_POLICY_INGRESS => Some(Direction::Ingress),
        shared::FIBRIL_POLICY_EGRESS => Some(Direction::Egress),
        _ => None,
    }
}

fn proto_of_raw(raw: u8) -> Option<L4Proto> {
    [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]
        .into_iter()
        .find(|p| p.ip_proto() == raw)
}

/// The trie key of `key` for `endpoint`'s generation `generation` in direction `dir`.
#[cfg(test)]
pub(crate) fn encode(
    endpoint: u32,
    generation: u32,
    dir: Direction,
    key: &PolicyKey,
) -> Key<fibril_policy_match> {
    encode_raw(endpoint, generation, dir_raw(dir), key)
}

fn encode_raw(
    endpoint: u32,
    generation: u32,
    dir: u8,
    key: &PolicyKey,
) -> Key<fibril_policy_match> {
    let (proto, port, prefix) = match key.proto {
        None => (0, 0, shared::FIBRIL_POLICY_PREFIX_ALL_PROTOS),
        Some(p) => (
            p.ip_proto(),
            key.ports.port.to_be(),
            shared::FIBRIL_POLICY_PREFIX_PROTO + u32::from(key.ports.len),
        ),
    };
    Key::new(
        prefix,
        fibril_policy_match {
            endpoint,
            generation,
            identity: key.identity.0,
            direction: dir,
            proto,
            port,
        },
    )
}

/// The inverse of [`encode`]: (endpoint, generation, direction, key); `None` for a key
/// no writer of this version makes.
pub(crate) fn decode(k: &Key<fibril_policy_match>) -> Option<(u32, u32, Direction, PolicyKey)> {
    let m = k.data();
    let dir = dir_of_raw(m.direction)?;
    let identity = Identity(m.identity);
    let key = match k.prefix_len() {
        shared::FIBRIL_POLICY_PREFIX_ALL_PROTOS if m.proto == 0 && m.port == 0 => {
            PolicyKey::all(identity)
        }
        len if (shared::FIBRIL_POLICY_PREFIX_PROTO..=shared::FIBRIL_POLICY_PREFIX_FULL)
            .contains(&len) =>
        {
            let plen = u8::try_from(len - shared::FIBRIL_POLICY_PREFIX_PROTO).ok()?;
            let ports = PortPrefix {
                port: u16::from_be(m.port),
                len: plen,
            };
            if PortPrefix::containing(ports.port, plen) != ports {
                return None;
            }
            PolicyKey::ports(identity, proto_of_raw(m.proto)?, ports)
        }
        _ => return None,
    };
    Some((m.endpoint, m.generation, dir, key))
}

impl PolicyMaps {
    /// Opens the maps pinned in `pin_dir` (a datapath must have been loaded there once).
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(PolicyMaps {
            pin_dir: pin_dir.to_path_buf(),
            endpoints: open_pinned(pin_dir, shared::MAP_POLICY_EP, HashMap::try_from)?,
            rules: open_pinned(pin_dir, shared::MAP_POLICY, LpmTrie::try_from)?,
            ct: open_pinned(pin_dir, shared::MAP_POLICY_CT, HashMap::try_from)?,
            state: None,
        })
    }

    fn err(&self, name: &str) -> impl Fn(MapError) -> BpfError {
        let path = self.pin_dir.join(name);
        move |source| BpfError::Map {
            path: path.clone(),
            source,
        }
    }

    /// Every endpoint's live state, read from the maps.
    fn read_endpoints(&self) -> Result<BTreeMap<u32, fibril_policy_ep>, BpfError> {
        let err = self.err(shared::MAP_POLICY_EP);
        let mut out = BTreeMap::new();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(&err)?;
            out.insert(k.ifindex, v);
        }
        Ok(out)
    }

    /// Every trie key, decoded where it decodes.
    #[allow(clippy::type_complexity)]
    fn read_rules(
        &self,
    ) -> Result<
        Vec<(
            Key<fibril_policy_match>,
            Option<(u32, u32, Direction, PolicyKey)>,
        )>,
        BpfError,
    > {
        let err = self.err(shared::MAP_POLICY);
        let mut out = Vec::new();
        for k in self.rules.keys() {
            let k = k.map_err(&err)?;
            let d = decode(&k);
            out.push((k, d));
        }
        Ok(out)
    }

    /// The state, read back from the maps on first use; entries that belong to no live
    /// generation are deleted then.
    fn state(&mut self) -> Result<&mut BTreeMap<u32, Programmed>, BpfError> {
        if self.state.is_none() {
            let eps = self.read_endpoints()?;
            let mut state: BTreeMap<u32, Programmed> = eps
                .into_iter()
                .map(|(ifindex, ep)| {
                    (
                        ifindex,
                        Programmed {
                            ep,
                            entries: BTreeSet::new(),
                        },
                    )
                })
                .collect();
            let mut garbage = Vec::new();
            for (raw, decoded) in self.read_rules()? {
                match decoded {
                    Some((ep, generation, dir, key)) => match state.get_mut(&ep) {
                        Some(p) if p.ep.generation == generation => {
                            p.entries.insert((dir_raw(dir), key));
                        }
                        _ => garbage.push(raw),
                    },
                    None => garbage.push(raw),
                }
            }
            for k in garbage {
                self.remove_rule(&k)?;
            }
            self.state = Some(state);
        }
        Ok(self.state.as_mut().expect("just set"))
    }

    fn remove_rule(&mut self, k: &Key<fibril_policy_match>) -> Result<(), BpfError> {
        match self.rules.remove(k) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err(shared::MAP_POLICY)(e)),
        }
    }

    /// Makes the maps enforce `rules` for the endpoint `ifindex`: see the module docs.
    pub fn set(&mut self, ifindex: u32, rules: &EndpointRules) -> Result<SetOutcome, BpfError> {
        if !rules.is_isolated() {
            return Ok(if self.remove(ifindex)? {
                SetOutcome::Removed
            } else {
                SetOutcome::Unchanged
            });
        }
        let entries = rules.entries();
        for id in std::iter::once(rules.identity).chain(entries.iter().map(|(_, k)| k.identity)) {
            if id.0 > Identity::MAX {
                return Err(BpfError::IdentityOutOfRange { identity: id.0 });
            }
        }
        let flags = rules.flags();
        let old = self.state()?.get(&ifindex).cloned();
        if let Some(p) = &old {
            if p.ep.flags == flags && p.ep.identity == rules.identity.0 && p.entries == entries {
                return Ok(SetOutcome::Unchanged);
            }
        }
        let revision = match &old {
            Some(p) => (rules.revision as u32).max(p.ep.revision.wrapping_add(1)),
            None => rules.revision as u32,
        };
        let generation = match &old {
            // 0 is never a generation, so a zeroed key never matches.
            Some(p) => p.ep.generation.wrapping_add(1).max(1),
            None => 1,
        };
        let res = self.write(
            ifindex,
            generation,
            flags,
            revision,
            rules.identity,
            &entries,
        );
        if res.is_err() {
            // Whatever was half-written is garbage of a generation that is not live;
            // the next use reads the maps back and deletes it.
            self.state = None;
            res?;
        }
        if let Some(p) = old {
            for (dir, key) in &p.entries {
                let k = encode_raw(ifindex, p.ep.generation, *dir, key);
                if let Err(e) = self.remove_rule(&k) {
                    self.state = None;
                    return Err(e);
                }
            }
        }
        let n = entries.len();
        self.state()?.insert(
            ifindex,
            Programmed {
                ep: fibril_policy_ep {
                    flags,
                    generation,
                    revision,
                    identity: rules.identity.0,
                },
                entries,
            },
        );
        Ok(SetOutcome::Written {
            entries: n,
            revision,
        })
    }

    fn write(
        &mut self,
        ifindex: u32,
        generation: u32,
        flags: u32,
        revision: u32,
        identity: Identity,
        entries: &BTreeSet<(u8, PolicyKey)>,
    ) -> Result<(), BpfError> {
        let rules_err = self.err(shared::MAP_POLICY);
        for (dir, key) in entries {
            self.rules
                .insert(
                    &encode_raw(ifindex, generation, *dir, key),
                    fibril_policy_entry { flags: 0 },
                    0,
                )
                .map_err(&rules_err)?;
        }
        let ep = fibril_policy_ep {
            flags,
            generation,
            revision,
            identity: identity.0,
        };
        self.endpoints
            .insert(fibril_policy_ep_key { ifindex }, ep, 0)
            .map_err(self.err(shared::MAP_POLICY_EP))
    }

    /// Makes the endpoint `ifindex` unisolated: its state entry goes first (the datapath
    /// stops looking), then its entries. Returns whether it had any.
    pub fn remove(&mut self, ifindex: u32) -> Result<bool, BpfError> {
        let old = self.state()?.remove(&ifindex);
        match self.endpoints.remove(&fibril_policy_ep_key { ifindex }) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                self.state = None;
                return Err(self.err(shared::MAP_POLICY_EP)(e));
            }
        }
        let Some(p) = old else { return Ok(false) };
        for (dir, key) in &p.entries {
            if let Err(e) = self.remove_rule(&encode_raw(ifindex, p.ep.generation, *dir, key)) {
                self.state = None;
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Removes every endpoint not in `keep` (pods gone, or no longer isolated); returns
    /// their ifindexes.
    pub fn retain(&mut self, keep: &BTreeSet<u32>) -> Result<Vec<u32>, BpfError> {
        let gone: Vec<u32> = self
            .state()?
            .keys()
            .filter(|i| !keep.contains(i))
            .copied()
            .collect();
        for &i in &gone {
            self.remove(i)?;
        }
        Ok(gone)
    }

    /// Every isolated endpoint as the maps hold it (read afresh), by ifindex.
    pub fn endpoints(&self) -> Result<Vec<ProgrammedEndpoint>, BpfError> {
        let eps = self.read_endpoints()?;
        let mut out: BTreeMap<u32, ProgrammedEndpoint> = eps
            .iter()
            .map(|(&ifindex, ep)| {
                let map = |f: u32| (ep.flags & f != 0).then(PolicyMap::default);
                (
                    ifindex,
                    ProgrammedEndpoint {
                        ifindex,
                        identity: Identity(ep.identity),
                        revision: ep.revision,
                        generation: ep.generation,
                        ingress: map(shared::FIBRIL_POLICY_F_INGRESS),
                        egress: map(shared::FIBRIL_POLICY_F_EGRESS),
                    },
                )
            })
            .collect();
        for (_, decoded) in self.read_rules()? {
            let Some((ifindex, generation, dir, key)) = decoded else {
                continue;
            };
            let Some(p) = out.get_mut(&ifindex).filter(|p| p.generation == generation) else {
                continue;
            };
            let m = match dir {
                Direction::Ingress => &mut p.ingress,
                Direction::Egress => &mut p.egress,
            };
            // An entry for a direction the flags say is not isolated is never looked at;
            // show it anyway, it is what the map holds.
            m.get_or_insert_with(PolicyMap::default).insert(key);
        }
        Ok(out.into_values().collect())
    }

    /// Every policy conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<PolicyConntrackEntry>, BpfError> {
        let err = self.err(shared::MAP_POLICY_CT);
        let mut out = Vec::new();
        for item in self.ct.iter() {
            let (k, v) = item.map_err(&err)?;
            let Some(direction) = dir_of_raw(k.direction) else {
                continue;
            };
            let sa = |ip: u32, port: u16| {
                SocketAddrV4::new(Ipv4Addr::from(u32::from_be(ip)), u16::from_be(port))
            };
            out.push(PolicyConntrackEntry {
                ifindex: k.ifindex,
                direction,
                proto: k.proto,
                src: sa(k.saddr, k.sport),
                dst: sa(k.daddr, k.dport),
                expires_ns: v.expires_ns,
            });
        }
        Ok(out)
    }

    /// Forgets the connections of endpoint `ifindex` (`None`: of every endpoint), so
    /// that their next packets are judged by the policy in force. Returns how many
    /// entries went.
    pub fn flush_conntrack(&mut self, ifindex: Option<u32>) -> Result<usize, BpfError> {
        let err = self.err(shared::MAP_POLICY_CT);
        let mut keys = Vec::new();
        for k in self.ct.keys() {
            let k = k.map_err(&err)?;
            if ifindex.is_none_or(|i| i == k.ifindex) {
                keys.push(k);
            }
        }
        let mut n = 0;
        for k in keys {
            match self.ct.remove(&k) {
                Ok(()) => n += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_prefixes_follow_the_core_layout() {
        let id = Identity(300);
        for (key, prefix) in [
            (PolicyKey::all(id), 104),
            (PolicyKey::ports(id, L4Proto::Tcp, PortPrefix::ALL), 112),
            (
                PolicyKey::ports(id, L4Proto::Udp, PortPrefix::single(53)),
                128,
            ),
            (
                PolicyKey::ports(id, L4Proto::Sctp, PortPrefix::containing(8080, 12)),
                124,
            ),
        ] {
            let k = encode(7, 3, Direction::Egress, &key);
            assert_eq!(k.prefix_len(), prefix, "{key}");
            // The core's prefix length counts identity, protocol and port bits; the
            // datapath's adds the endpoint, generation (64) and direction (8).
            assert_eq!(k.prefix_len(), u32::from(key.prefix_len()) + 72, "{key}");
            assert_eq!(decode(&k), Some((7, 3, Direction::Egress, key)));
        }
        // The port is in network order: its high bits come first in the key.
        let k = encode(
            1,
            1,
            Direction::Ingress,
            &PolicyKey::ports(id, L4Proto::Tcp, PortPrefix::single(0x1234)),
        );
        assert_eq!(k.data().port.to_ne_bytes(), [0x12, 0x34]);
    }

    #[test]
    fn foreign_keys_do_not_decode() {
        let mut k = encode(1, 1, Direction::Ingress, &PolicyKey::all(Identity(5)));
        let mut m = k.data();
        m.direction = 9;
        k = Key::new(k.prefix_len(), m);
        assert_eq!(decode(&k), None);
        let m = fibril_policy_match {
            endpoint: 1,
            generation: 1,
            identity: 5,
            direction: 1,
            proto: 99,
            port: 0,
        };
        assert_eq!(decode(&Key::new(112, m)), None);
        // Host bits beyond the prefix are not something encode writes.
        let m = fibril_policy_match {
            proto: 6,
            port: 0x00ff_u16.to_be(),
            ..m
        };
        assert_eq!(decode(&Key::new(116, m)), None);
    }
}
