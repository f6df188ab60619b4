//! The datapath's address maps and counters as typed values: endpoints (addresses this
//! node delivers to), the ipcache (prefixes elsewhere), drop counters.
//!
//! [`DatapathMaps`] opens the maps pinned in a node's pin dir, so a process can read and
//! write them without loading any program (the agent reconciling, the CLI dumping).
//! Writes take effect for the next packet; the programs never write these maps.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use ipnet::Ipv4Net;

use crate::error::BpfError;
use crate::events::DropReason;
use crate::shared::{
    self, fibril_drop_stats, fibril_endpoint, fibril_endpoint_key, fibril_remote,
    FIBRIL_ENDPOINT_F_HOST, FIBRIL_REMOTE_F_NO_ROUTE,
};

/// A security identity, as the datapath carries it (endpoints, ipcache, policy keys,
/// events, the VXLAN VNI): fibril-core's, whose numbering `fibril_shared.h` declares.
/// [`Identity::ANY`] (0) also means "not known".
pub use fibril_core::policy::Identity;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (six hex bytes separated by colons)")]
pub struct ParseMacError {
    pub input: String,
}

impl std::str::FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_string(),
        };
        let mut out = [0_u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// What a local address is (a value of the endpoints map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod of this node: packets to it are delivered into its netns with
    /// `bpf_redirect_peer`, from `node_mac` to `mac`.
    Pod {
        /// The host side of the pod's veth, in the node's netns.
        ifindex: u32,
        /// The pod's eth0.
        mac: MacAddr,
        /// The host side of the pod's veth (the pod's gateway MAC).
        node_mac: MacAddr,
        identity: Identity,
    },
    /// An address of the node itself taken from the pod range, such as the pods'
    /// gateway: packets to it go to the node's stack.
    Host { identity: Identity },
}

impl Endpoint {
    pub fn identity(&self) -> Identity {
        match self {
            Endpoint::Pod { identity, .. } | Endpoint::Host { identity } => *identity,
        }
    }

    fn to_raw(self) -> fibril_endpoint {
        match self {
            Endpoint::Pod {
                ifindex,
                mac,
                node_mac,
                identity,
            } => fibril_endpoint {
                ifindex,
                identity: identity.0,
                mac: mac.0,
                node_mac: node_mac.0,
                flags: 0,
            },
            Endpoint::Host { identity } => fibril_endpoint {
                identity: identity.0,
                flags: FIBRIL_ENDPOINT_F_HOST,
                ..Default::default()
            },
        }
    }

    fn from_raw(raw: fibril_endpoint, ip: Ipv4Addr, path: &Path) -> Result<Self, BpfError> {
        match raw.flags {
            0 => Ok(Endpoint::Pod {
                ifindex: raw.ifindex,
                mac: MacAddr(raw.mac),
                node_mac: MacAddr(raw.node_mac),
                identity: Identity(raw.identity),
            }),
            FIBRIL_ENDPOINT_F_HOST => Ok(Endpoint::Host {
                identity: Identity(raw.identity),
            }),
            flags => Err(BpfError::UnknownEndpointFlags {
                path: path.to_path_buf(),
                ip,
                flags,
            }),
        }
    }
}

/// What is known about a prefix elsewhere (a value of the ipcache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    pub identity: Identity,
    /// The node hosting the prefix: the VXLAN destination in tunnel mode. The entry for
    /// this node's own pod range names this node, and makes the datapath drop traffic to
    /// addresses in it that are no endpoint.
    pub tunnel_endpoint: Option<Ipv4Addr>,
    /// The CIDR identity of the longest ipBlock prefix containing this one, when that is
    /// not `identity` ([`fibril_core::policy::IpcacheEntry::cidr_identity`]).
    pub cidr_identity: Option<Identity>,
    /// The entry only names identities (the world, node addresses, ipBlock prefixes
    /// outside the pod ranges): routing treats its addresses as unknown, as without it.
    pub identity_only: bool,
}

impl Remote {
    /// A routing entry: `prefix` lives on the node at `tunnel_endpoint`; identity unknown.
    pub fn route(tunnel_endpoint: Ipv4Addr) -> Self {
        Remote {
            tunnel_endpoint: Some(tunnel_endpoint),
            ..Remote::default()
        }
    }

    fn to_raw(self) -> fibril_remote {
        fibril_remote {
            identity: self.identity.0,
            tunnel_endpoint: self.tunnel_endpoint.map_or(0, be),
            flags: if self.identity_only {
                FIBRIL_REMOTE_F_NO_ROUTE
            } else {
                0
            },
            cidr_identity: self.cidr_identity.map_or(0, |i| i.0),
        }
    }

    fn from_raw(raw: fibril_remote) -> Self {
        Remote {
            identity: Identity(raw.identity),
            tunnel_endpoint: (raw.tunnel_endpoint != 0)
                .then(|| Ipv4Addr::from(u32::from_be(raw.tunnel_endpoint))),
            cidr_identity: (raw.cidr_identity != 0).then_some(Identity(raw.cidr_identity)),
            identity_only: raw.flags & FIBRIL_REMOTE_F_NO_ROUTE != 0,
        }
    }
}

/// Packets dropped for one reason, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCount {
    pub reason: DropReason,
    pub packets: u64,
    pub bytes: u64,
}

/// An IPv4 address as the maps hold it: network byte order in a native integer.
fn be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

/// The pinned maps of one node's datapath.
pub struct DatapathMaps {
    pin_dir: PathBuf,
    endpoints: HashMap<MapData, fibril_endpoint_key, fibril_endpoint>,
    ipcache: LpmTrie<MapData, [u8; 4], fibril_remote>,
    drops: PerCpuArray<MapData, fibril_drop_stats>,
    events_lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for DatapathMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathMaps")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

pub(crate) fn open_pinned<T>(
    pin_dir: &Path,
    name: &str,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, BpfError> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| BpfError::Map {
        path: path.clone(),
        source,
    })?;
    // The conversions check the map type and the key and value sizes against ours.
    Map::from_map_data(data)
        .and_then(convert)
        .map_err(|source| BpfError::Map { path, source })
}

/// Whether a delete failed only because the key was absent.
pub(crate) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

impl DatapathMaps {
    /// Opens the maps pinned in `pin_dir` (a datapath must have been loaded there once).
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(DatapathMaps {
            pin_dir: pin_dir.to_path_buf(),
            endpoints: open_pinned(pin_dir, shared::MAP_ENDPOINTS, HashMap::try_from)?,
            ipcache: open_pinned(pin_dir, shared::MAP_IPCACHE, LpmTrie::try_from)?,
            drops: open_pinned(pin_dir, shared::MAP_DROPS, PerCpuArray::try_from)?,
            events_lost: open_pinned(pin_dir, shared::MAP_EVENTS_LOST, PerCpuArray::try_from)?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.pin_dir.join(name)
    }

    fn check_identity(identity: Identity) -> Result<(), BpfError> {
        if identity.0 > Identity::MAX {
            return Err(BpfError::IdentityOutOfRange {
                identity: identity.0,
            });
        }
        Ok(())
    }

    /// Inserts or replaces the endpoint at `ip`.
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, endpoint: &Endpoint) -> Result<(), BpfError> {
        Self::check_identity(endpoint.identity())?;
        let key = fibril_endpoint_key { ipv4: be(ip) };
        self.endpoints
            .insert(key, endpoint.to_raw(), 0)
            .map_err(|source| BpfError::Map {
                path: self.path(shared::MAP_ENDPOINTS),
                source,
            })
    }

    /// Removes the endpoint at `ip`; returns whether there was one.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, BpfError> {
        match self.endpoints.remove(&fibril_endpoint_key { ipv4: be(ip) }) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(BpfError::Map {
                path: self.path(shared::MAP_ENDPOINTS),
                source,
            }),
        }
    }

    /// Every endpoint, sorted by address.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, BpfError> {
        let path = self.path(shared::MAP_ENDPOINTS);
        let mut out = Vec::new();
        for item in self.endpoints.iter() {
            let (key, raw) = item.map_err(|source| BpfError::Map {
                path: path.clone(),
                source,
            })?;
            let ip = Ipv4Addr::from(u32::from_be(key.ipv4));
            out.push((ip, Endpoint::from_raw(raw, ip, &path)?));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Inserts or replaces the entry for `prefix` (host bits are ignored).
    pub fn upsert_remote(&mut self, prefix: Ipv4Net, remote: &Remote) -> Result<(), BpfError> {
        Self::check_identity(remote.identity)?;
        if let Some(c) = remote.cidr_identity {
            Self::check_identity(c)?;
        }
        self.ipcache
            .insert(&lpm_key(prefix), remote.to_raw(), 0)
            .map_err(|source| BpfError::Map {
                path: self.path(shared::MAP_IPCACHE),
                source,
            })
    }

    /// The entry for exactly `prefix` (host bits are ignored), if there is one.
    pub fn remote(&self, prefix: Ipv4Net) -> Result<Option<Remote>, BpfError> {
        match self.ipcache.get(&lpm_key(prefix), 0) {
            Ok(raw) => Ok(Some(Remote::from_raw(raw))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(BpfError::Map {
                path: self.path(shared::MAP_IPCACHE),
                source,
            }),
        }
    }

    /// Sets the endpoint at `ip`'s identity, keeping the rest; returns whether there was
    /// such an endpoint.
    pub fn set_endpoint_identity(
        &mut self,
        ip: Ipv4Addr,
        identity: Identity,
    ) -> Result<bool, BpfError> {
        Self::check_identity(identity)?;
        let key = fibril_endpoint_key { ipv4: be(ip) };
        let path = self.path(shared::MAP_ENDPOINTS);
        let mut raw = match self.endpoints.get(&key, 0) {
            Ok(raw) => raw,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(source) => return Err(BpfError::Map { path, source }),
        };
        if raw.identity == identity.0 {
            return Ok(true);
        }
        raw.identity = identity.0;
        self.endpoints
            .insert(key, raw, 0)
            .map_err(|source| BpfError::Map { path, source })?;
        Ok(true)
    }

    /// Removes the entry for `prefix`; returns whether there was one.
    pub fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<bool, BpfError> {
        match self.ipcache.remove(&lpm_key(prefix)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(BpfError::Map {
                path: self.path(shared::MAP_IPCACHE),
                source,
            }),
        }
    }

    /// Every ipcache entry, sorted by prefix.
    pub fn remotes(&self) -> Result<Vec<(Ipv4Net, Remote)>, BpfError> {
        let path = self.path(shared::MAP_IPCACHE);
        let mut out = Vec::new();
        for item in self.ipcache.iter() {
            let (key, raw) = item.map_err(|source| BpfError::Map {
                path: path.clone(),
                source,
            })?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
            let prefix = Ipv4Net::new(Ipv4Addr::from(key.data()), len).map_err(|_| {
                BpfError::BadIpcacheKey {
                    path: path.clone(),
                    prefix_len: key.prefix_len(),
                }
            })?;
            out.push((prefix, Remote::from_raw(raw)));
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(out)
    }

    /// Drops by reason, summed over CPUs; reasons that never happened are left out.
    pub fn drop_counters(&self) -> Result<Vec<DropCount>, BpfError> {
        let path = self.path(shared::MAP_DROPS);
        let mut out = Vec::new();
        for &reason in DropReason::ALL {
            let per_cpu = self
                .drops
                .get(&reason.raw(), 0)
                .map_err(|source| BpfError::Map {
                    path: path.clone(),
                    source,
                })?;
            let (packets, bytes) = per_cpu.iter().fold((0_u64, 0_u64), |(p, b), s| {
                (p.wrapping_add(s.packets), b.wrapping_add(s.bytes))
            });
            if packets > 0 {
                out.push(DropCount {
                    reason,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }

    /// Events lost because the ring buffer was full, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64, BpfError> {
        let per_cpu = self
            .events_lost
            .get(&0, 0)
            .map_err(|source| BpfError::Map {
                path: self.path(shared::MAP_EVENTS_LOST),
                source,
            })?;
        Ok(per_cpu.iter().fold(0_u64, |a, n| a.wrapping_add(*n)))
    }
}

fn lpm_key(prefix: Ipv4Net) -> Key<[u8; 4]> {
    let prefix = prefix.trunc();
    Key::new(u32::from(prefix.prefix_len()), prefix.addr().octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let mac: MacAddr = "02:0a:ff:00:10:9c".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0x0a, 0xff, 0x00, 0x10, 0x9c]));
        assert_eq!(mac.to_string(), "02:0a:ff:00:10:9c");
        for bad in [
            "",
            "02:0a:ff:00:10",
            "02:0a:ff:00:10:9c:00",
            "2:0a:ff:00:10:9c",
            "zz:0a:ff:00:10:9c",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_round_trip_through_the_c_struct() {
        let pod = Endpoint::Pod {
            ifindex: 12,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            node_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            identity: Identity(77),
        };
        let host = Endpoint::Host {
            identity: Identity(1),
        };
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        for ep in [pod, host] {
            assert_eq!(
                Endpoint::from_raw(ep.to_raw(), ip, Path::new("x")).unwrap(),
                ep
            );
        }
        let mut raw = pod.to_raw();
        raw.flags = 0x80;
        let err = Endpoint::from_raw(raw, ip, Path::new("x")).unwrap_err();
        assert!(
            matches!(err, BpfError::UnknownEndpointFlags { flags: 0x80, .. }),
            "{err}"
        );
    }

    #[test]
    fn remotes_keep_addresses_in_network_order() {
        let r = Remote {
            identity: Identity(5),
            tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 1, 2)),
            cidr_identity: Some(Identity(0x80_0001)),
            identity_only: false,
        };
        let raw = r.to_raw();
        assert_eq!(raw.tunnel_endpoint.to_ne_bytes(), [192, 168, 1, 2]);
        assert_eq!(Remote::from_raw(raw), r);
        let none = Remote {
            identity: Identity(5),
            tunnel_endpoint: None,
            cidr_identity: None,
            identity_only: true,
        };
        assert_eq!(Remote::from_raw(none.to_raw()), none);
    }

    #[test]
    fn lpm_keys_drop_host_bits() {
        let k = lpm_key("10.1.2.3/16".parse().unwrap());
        assert_eq!((k.prefix_len(), k.data()), (16, [10, 1, 0, 0]));
    }
}
