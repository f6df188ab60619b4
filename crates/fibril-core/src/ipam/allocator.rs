//! The per-node pod address allocator for one block.
//!
//! **Crash safety.** The allocator is a value: [`Allocator::allocate`] does not change it but
//! returns the next state alongside the address. The agent must persist that state (atomically:
//! write a temporary file, fsync, rename) *before* it returns the address to CNI ADD, and only
//! then adopt it as its in-memory state. If the agent dies in between, the address was never
//! handed out, and the state reloaded from disk does not hold it either; if it dies after the
//! write but before ADD returns, the address stays allocated to that owner and the runtime's
//! retried ADD (allocation is idempotent per owner) or CNI GC settles it. Either way no address
//! is ever held by two live attachments (seed 002's duplicate pod IPs).
//!
//! Addresses are handed out next-fit (after the last one handed out, wrapping), so an address
//! just released is not reused at once, while stale conntrack entries or peers' caches may
//! still point at it.
//!
//! The persisted form ([`PersistedAllocator`]) carries a version; [`Allocator::decode`] is
//! strict and refuses unknown versions, unknown fields and contradictory entries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidr::{addr_at, Span};

use super::error::{IpamError, PersistError};
use super::types::PodCidr;
use crate::cni_api::{AttachmentKey, ContainerId, IfName};

/// The version of [`PersistedAllocator`] this build writes and reads.
pub const PERSIST_VERSION: u32 = 1;

/// Who holds an address: one interface of one container. The same pair as the plugin
/// protocol's [`AttachmentKey`], with the same identifier types, and converts to and from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `CNI_CONTAINERID`.
    pub container_id: ContainerId,
    /// `CNI_IFNAME`.
    pub ifname: IfName,
}

impl Owner {
    /// The attachment `container_id`/`ifname`.
    pub fn new(container_id: ContainerId, ifname: IfName) -> Owner {
        Owner {
            container_id,
            ifname,
        }
    }
}

impl From<AttachmentKey> for Owner {
    fn from(k: AttachmentKey) -> Owner {
        Owner::new(k.container_id, k.ifname)
    }
}

impl From<&AttachmentKey> for Owner {
    fn from(k: &AttachmentKey) -> Owner {
        Owner::new(k.container_id.clone(), k.ifname.clone())
    }
}

impl From<Owner> for AttachmentKey {
    fn from(o: Owner) -> AttachmentKey {
        AttachmentKey {
            container_id: o.container_id,
            ifname: o.ifname,
        }
    }
}

/// `container/ifname`.
impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// The pod addresses of one block and who holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    block: PodCidr,
    by_ip: BTreeMap<IpAddr, Owner>,
    by_owner: BTreeMap<Owner, IpAddr>,
    /// The address handed out last: where the next-fit scan resumes.
    last: Option<IpAddr>,
}

/// The outcome of [`Allocator::allocate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "persist `state` before handing out `ip`"]
pub struct Allocated {
    /// The owner's address.
    pub ip: IpAddr,
    /// The state holding it: persist it, then adopt it, then hand `ip` out.
    pub state: Allocator,
    /// The owner already held `ip` (a retried ADD); `state` is unchanged.
    pub existing: bool,
}

/// The outcome of [`Allocator::release`] and [`Allocator::retain`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "persist `state` before reporting the release done"]
pub struct Released {
    /// The addresses freed, with their former owners (none if nothing was held).
    pub freed: Vec<(IpAddr, Owner)>,
    /// The state without them.
    pub state: Allocator,
}

/// Address usage of a block, for `fibril status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamStats {
    /// The block.
    pub block: PodCidr,
    /// Addresses pods can have (the block less network, gateway and broadcast).
    pub total: u128,
    /// Addresses held.
    pub used: u128,
    /// Addresses free.
    pub free: u128,
}

impl Allocator {
    /// An empty allocator for `block`, which must leave at least one pod address.
    pub fn new(block: PodCidr) -> Result<Allocator, IpamError> {
        let a = Allocator {
            block,
            by_ip: BTreeMap::new(),
            by_owner: BTreeMap::new(),
            last: None,
        };
        if a.range().is_none() {
            return Err(IpamError::BlockTooSmall { block });
        }
        Ok(a)
    }

    /// The block.
    pub fn block(&self) -> PodCidr {
        self.block
    }

    /// The node's address in the block (its first host address): the pods' default gateway.
    pub fn gateway(&self) -> IpAddr {
        let s = Span::of(&self.block.net());
        addr_at(s.v6, s.start + 1)
    }

    /// The first and last pod address (as numbers), or `None` if there is none.
    fn range(&self) -> Option<(u128, u128)> {
        let s = Span::of(&self.block.net());
        // Network and gateway at the start; IPv4 also loses the broadcast address at the end.
        let lo = s.start.checked_add(2)?;
        let hi = if s.v6 { s.end } else { s.end.checked_sub(1)? };
        (lo <= hi).then_some((lo, hi))
    }

    fn v6(&self) -> bool {
        matches!(self.block.net(), IpNet::V6(_))
    }

    /// Whether `ip` is one pods may have.
    pub fn is_pod_address(&self, ip: IpAddr) -> bool {
        let a = Span::addr(ip);
        match self.range() {
            Some((lo, hi)) => a.v6 == self.v6() && lo <= a.start && a.start <= hi,
            None => false,
        }
    }

    /// The address for `owner`: the one it holds already, else the next free one.
    pub fn allocate(&self, owner: &Owner) -> Result<Allocated, IpamError> {
        if let Some(ip) = self.by_owner.get(owner) {
            return Ok(Allocated {
                ip: *ip,
                state: self.clone(),
                existing: true,
            });
        }
        let stats = self.stats();
        let Some((lo, hi)) = self.range().filter(|_| stats.free > 0) else {
            return Err(IpamError::BlockExhausted {
                block: self.block,
                used: stats.used,
                free: stats.free,
                total: stats.total,
            });
        };
        let v6 = self.v6();
        let after = |n: u128| if n >= hi { lo } else { n + 1 };
        let mut n = match self.last {
            Some(ip) if self.is_pod_address(ip) => after(Span::addr(ip).start),
            _ => lo,
        };
        // There is a free address (checked above), so this ends within `used + 1` steps.
        while self.by_ip.contains_key(&addr_at(v6, n)) {
            n = after(n);
        }
        let ip = addr_at(v6, n);
        let mut state = self.clone();
        state.by_ip.insert(ip, owner.clone());
        state.by_owner.insert(owner.clone(), ip);
        state.last = Some(ip);
        Ok(Allocated {
            ip,
            state,
            existing: false,
        })
    }

    /// Frees `owner`'s address. Releasing an owner that holds nothing is not an error (CNI DEL
    /// is idempotent); `freed` is then empty.
    pub fn release(&self, owner: &Owner) -> Released {
        self.retain(|o| o != owner)
    }

    /// Frees every address whose owner `keep` rejects (CNI GC with the runtime's list of live
    /// attachments).
    pub fn retain(&self, mut keep: impl FnMut(&Owner) -> bool) -> Released {
        let mut state = self.clone();
        let mut freed = Vec::new();
        state.by_ip.retain(|ip, o| {
            let k = keep(o);
            if !k {
                freed.push((*ip, o.clone()));
            }
            k
        });
        for (_, o) in &freed {
            state.by_owner.remove(o);
        }
        Released { freed, state }
    }

    /// The address `owner` holds.
    pub fn lookup(&self, owner: &Owner) -> Option<IpAddr> {
        self.by_owner.get(owner).copied()
    }

    /// Who holds `ip`.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&Owner> {
        self.by_ip.get(&ip)
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &Owner)> + '_ {
        self.by_ip.iter().map(|(ip, o)| (*ip, o))
    }

    /// Used, free and total pod addresses.
    pub fn stats(&self) -> IpamStats {
        let total = self.range().map_or(0, |(lo, hi)| hi - lo + 1);
        let used = self.by_ip.len() as u128;
        IpamStats {
            block: self.block,
            total,
            used,
            free: total.saturating_sub(used),
        }
    }

    /// The persisted form.
    pub fn to_persisted(&self) -> PersistedAllocator {
        PersistedAllocator {
            version: PERSIST_VERSION,
            block: self.block,
            last: self.last,
            allocations: self
                .by_ip
                .iter()
                .map(|(ip, o)| PersistedAllocation {
                    ip: *ip,
                    container_id: o.container_id.clone(),
                    ifname: o.ifname.clone(),
                })
                .collect(),
        }
    }

    /// The persisted form as JSON, ready to be written atomically.
    pub fn encode(&self) -> String {
        serde_json::to_string_pretty(&self.to_persisted())
            .expect("the persisted form is plain data that always serializes")
    }

    /// Loads a persisted state, refusing anything it cannot vouch for: an unknown version,
    /// unknown fields, an address outside the block's pod addresses, an address or owner
    /// listed twice.
    pub fn decode(text: &str) -> Result<Allocator, PersistError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<serde_json::Value>,
        }
        let syntax = |e: serde_path_to_error::Error<serde_json::Error>| PersistError::Syntax {
            path: e.path().to_string(),
            source: e.into_inner(),
        };
        let head: VersionOnly =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(syntax)?;
        match head.version {
            None => return Err(PersistError::MissingVersion),
            Some(v) if v.as_u64() == Some(u64::from(PERSIST_VERSION)) => {}
            Some(found) => {
                return Err(PersistError::UnsupportedVersion {
                    found,
                    supported: PERSIST_VERSION,
                })
            }
        }
        let p: PersistedAllocator =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(syntax)?;
        Allocator::from_persisted(p)
    }

    /// Rebuilds the allocator from its persisted form, with the checks of [`decode`](Self::decode).
    pub fn from_persisted(p: PersistedAllocator) -> Result<Allocator, PersistError> {
        let inconsistent =
            |field: String, message: String| PersistError::Inconsistent { field, message };
        if p.version != PERSIST_VERSION {
            return Err(PersistError::UnsupportedVersion {
                found: p.version.into(),
                supported: PERSIST_VERSION,
            });
        }
        let mut a =
            Allocator::new(p.block).map_err(|e| inconsistent("block".into(), e.to_string()))?;
        for (i, e) in p.allocations.into_iter().enumerate() {
            if !a.is_pod_address(e.ip) {
                return Err(inconsistent(
                    format!("allocations[{i}].ip"),
                    format!(
                        "{} is not a pod address of block {} (gateway {})",
                        e.ip,
                        a.block,
                        a.gateway()
                    ),
                ));
            }
            let owner = Owner::new(e.container_id, e.ifname);
            if let Some(other) = a.by_ip.get(&e.ip) {
                return Err(inconsistent(
                    format!("allocations[{i}].ip"),
                    format!("{} is listed for both {other} and {owner}", e.ip),
                ));
            }
            if let Some(ip) = a.by_owner.get(&owner) {
                return Err(inconsistent(
                    format!("allocations[{i}]"),
                    format!("{owner} is listed with both {ip} and {}", e.ip),
                ));
            }
            a.by_ip.insert(e.ip, owner.clone());
            a.by_owner.insert(owner, e.ip);
        }
        if let Some(last) = p.last.filter(|ip| !a.is_pod_address(*ip)) {
            return Err(inconsistent(
                "last".into(),
                format!("{last} is not a pod address of block {}", a.block),
            ));
        }
        a.last = p.last;
        Ok(a)
    }
}

/// What the agent writes to disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistedAllocator {
    /// [`PERSIST_VERSION`].
    pub version: u32,
    /// The block.
    pub block: PodCidr,
    /// The address handed out last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<IpAddr>,
    /// Every allocation.
    pub allocations: Vec<PersistedAllocation>,
}

/// One persisted allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistedAllocation {
    /// The address.
    pub ip: IpAddr,
    /// `CNI_CONTAINERID` of its owner.
    pub container_id: ContainerId,
    /// `CNI_IFNAME` of its owner.
    pub ifname: IfName,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        Owner::new(c.parse().unwrap(), "eth0".parse().unwrap())
    }

    fn alloc(block: &str) -> Allocator {
        Allocator::new(block.parse().unwrap()).unwrap()
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let mut a = alloc("10.244.1.0/29");
        assert_eq!(a.gateway().to_string(), "10.244.1.1");
        let mut got = Vec::new();
        for i in 0..5 {
            let r = a.allocate(&owner(&format!("c{i}"))).unwrap();
            got.push(r.ip.to_string());
            a = r.state;
        }
        assert_eq!(
            got,
            [
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
        );
        let e = a.allocate(&owner("c9")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "block 10.244.1.0/29 is exhausted: 5 used, 0 free of 5 pod addresses (the network, \
             gateway and broadcast addresses are never handed out)"
        );
    }

    #[test]
    fn owner_converts_to_and_from_the_cni_attachment_key() {
        let key = AttachmentKey {
            container_id: "abc".parse().unwrap(),
            ifname: "eth0".parse().unwrap(),
        };
        let o = Owner::from(&key);
        assert_eq!(o.to_string(), "abc/eth0");
        assert_eq!(AttachmentKey::from(o), key);
    }

    #[test]
    fn allocate_is_idempotent_per_owner() {
        let a = alloc("10.244.1.0/24");
        let r1 = a.allocate(&owner("c1")).unwrap();
        assert!(!r1.existing);
        let r2 = r1.state.allocate(&owner("c1")).unwrap();
        assert!(r2.existing);
        assert_eq!(r1.ip, r2.ip);
        assert_eq!(r2.state, r1.state);
        let other_if = Owner::new("c1".parse().unwrap(), "net1".parse().unwrap());
        let r3 = r2.state.allocate(&other_if).unwrap();
        assert_ne!(r3.ip, r1.ip);
    }

    #[test]
    fn next_fit_does_not_reuse_a_just_released_address() {
        let a = alloc("10.244.1.0/29");
        let r1 = a.allocate(&owner("c1")).unwrap();
        let freed = r1.state.release(&owner("c1"));
        assert_eq!(freed.freed, vec![(r1.ip, owner("c1"))]);
        assert_eq!(freed.state.lookup(&owner("c1")), None);
        let r2 = freed.state.allocate(&owner("c2")).unwrap();
        assert_ne!(r2.ip, r1.ip);
        // Releasing what is not held is fine and frees nothing.
        assert!(r2.state.release(&owner("zzz")).freed.is_empty());
    }

    #[test]
    fn wraps_around_to_freed_addresses() {
        let mut a = alloc("10.244.1.0/30");
        assert_eq!(a.stats().total, 1);
        a = a.allocate(&owner("c1")).unwrap().state;
        a = a.release(&owner("c1")).state;
        let r = a.allocate(&owner("c2")).unwrap();
        assert_eq!(r.ip.to_string(), "10.244.1.2");
    }

    #[test]
    fn too_small_blocks_are_refused() {
        for b in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            let e = Allocator::new(b.parse().unwrap()).unwrap_err();
            assert!(matches!(e, IpamError::BlockTooSmall { .. }), "{b}");
        }
        let v6 = alloc("fd00::/126");
        assert_eq!(v6.stats().total, 2);
        let r = v6.allocate(&owner("c")).unwrap();
        assert_eq!(r.ip.to_string(), "fd00::2");
    }

    #[test]
    fn stats_count_used_and_free() {
        let a = alloc("10.244.1.0/24");
        let a = a.allocate(&owner("c1")).unwrap().state;
        let a = a.allocate(&owner("c2")).unwrap().state;
        let s = a.stats();
        assert_eq!((s.total, s.used, s.free), (253, 2, 251));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"block":"10.244.1.0/24","total":253,"used":2,"free":251}"#
        );
    }

    #[test]
    fn retain_frees_what_the_runtime_no_longer_has() {
        let mut a = alloc("10.244.1.0/24");
        for c in ["a", "b", "c"] {
            a = a.allocate(&owner(c)).unwrap().state;
        }
        let r = a.retain(|o| o.container_id.as_str() == "b");
        assert_eq!(r.freed.len(), 2);
        assert_eq!(r.state.stats().used, 1);
        assert!(r.state.lookup(&owner("b")).is_some());
    }

    #[test]
    fn persisted_form_round_trips() {
        let mut a = alloc("10.244.1.0/24");
        for c in ["a", "b"] {
            a = a.allocate(&owner(c)).unwrap().state;
        }
        let text = a.encode();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert_eq!(Allocator::decode(&text).unwrap(), a);
    }

    #[test]
    fn decoder_is_strict() {
        let err = |t: &str| Allocator::decode(t).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"block":"10.244.1.0/24","allocations":[]}"#),
            "IPAM state has no version field: refusing to guess its format"
        );
        assert!(
            err(r#"{"version":2,"block":"10.244.1.0/24","allocations":[]}"#)
                .contains("has version 2, this fibril reads only version 1")
        );
        assert!(
            err(r#"{"version":"1","block":"10.244.1.0/24","allocations":[]}"#)
                .contains("has version \"1\"")
        );
        let e = err(r#"{"version":1,"block":"10.244.1.0/24","allocations":[],"x":1}"#);
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = err(
            r#"{"version":1,"block":"10.244.1.0/24","allocations":[{"ip":"10.244.1.2","containerId":"a","ifname":"eth0","extra":true}]}"#,
        );
        assert!(e.starts_with("IPAM state: allocations[0]"), "{e}");
        let e = err(
            r#"{"version":1,"block":"10.244.1.0/24","allocations":[{"ip":"10.244.1.1","containerId":"a","ifname":"eth0"}]}"#,
        );
        assert_eq!(
            e,
            "IPAM state allocations[0].ip: 10.244.1.1 is not a pod address of block \
             10.244.1.0/24 (gateway 10.244.1.1)"
        );
        let e = err(r#"{"version":1,"block":"10.244.1.0/24","allocations":[
                {"ip":"10.244.1.2","containerId":"a","ifname":"eth0"},
                {"ip":"10.244.1.2","containerId":"b","ifname":"eth0"}]}"#);
        assert!(e.contains("listed for both a/eth0 and b/eth0"), "{e}");
        let e = err(r#"{"version":1,"block":"10.244.1.0/24","allocations":[
                {"ip":"10.244.1.2","containerId":"a","ifname":"eth0"},
                {"ip":"10.244.1.3","containerId":"a","ifname":"eth0"}]}"#);
        assert!(e.contains("a/eth0 is listed with both"), "{e}");
        let e = err("not json");
        assert!(e.contains("line 1"), "{e}");
    }
}
