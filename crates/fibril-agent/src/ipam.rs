//! The node's address allocator, persisted: the agent side of [`fibril_core::ipam`].
//!
//! Every change is written to `<stateDir>/ipam.json` (atomically, fsynced) *before* it is
//! adopted in memory and before the address is handed to CNI ADD, so after a crash the
//! file holds every address that may be in use (seed 002: no IP is handed out twice).
//!
//! Also here: reading the node's routes and addresses through netlink into the inputs of
//! the overlap checks (seed 000).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fibril_core::ipam::{
    Allocator, IpamError, IpamStats, NodeSubnet, Owner, PersistError, PodCidr, RouteInfo,
};
use ipnet::IpNet;

use crate::persist::{read_optional, write_atomic, PersistIoError};

/// The allocator file under `stateDir`.
pub const IPAM_FILE: &str = "ipam.json";

#[derive(Debug, thiserror::Error)]
pub enum NodeIpamError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Io(#[from] PersistIoError),
    #[error("{}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: PersistError,
    },
    /// The node's pod range changed under live allocations: handing out addresses from the
    /// new range while pods keep the old ones would break them silently.
    #[error(
        "{} holds {count} allocation(s) from block {persisted}, but this node's pod CIDR is now \
         {current}; drain the node's pods (or delete the file if none are left) before changing \
         its pod CIDR", path.display()
    )]
    BlockChanged {
        path: PathBuf,
        persisted: PodCidr,
        current: PodCidr,
        count: usize,
    },
}

/// The allocator of this node's block and where it is persisted.
#[derive(Debug)]
pub struct NodeIpam {
    path: PathBuf,
    state: Mutex<Allocator>,
}

impl NodeIpam {
    /// Loads the persisted allocations for `block` from `state_dir`, or starts empty.
    pub fn open(state_dir: &Path, block: PodCidr) -> Result<NodeIpam, NodeIpamError> {
        let path = state_dir.join(IPAM_FILE);
        let state = match read_optional(&path)? {
            None => Allocator::new(block)?,
            Some(text) => {
                let a = Allocator::decode(&text).map_err(|source| NodeIpamError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
                if a.block() == block {
                    a
                } else {
                    let count = a.allocations().count();
                    if count > 0 {
                        return Err(NodeIpamError::BlockChanged {
                            path,
                            persisted: a.block(),
                            current: block,
                            count,
                        });
                    }
                    Allocator::new(block)?
                }
            }
        };
        write_atomic(&path, state.encode().as_bytes(), 0o600)?;
        Ok(NodeIpam {
            path,
            state: Mutex::new(state),
        })
    }

    /// The block of the allocations persisted in `state_dir`, when some are held: in
    /// cluster-pool mode the agent asks for that block back, so its pods keep their
    /// addresses even if the cluster lost the claim.
    pub fn persisted_block(state_dir: &Path) -> Result<Option<PodCidr>, NodeIpamError> {
        let path = state_dir.join(IPAM_FILE);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let a = Allocator::decode(&text).map_err(|source| NodeIpamError::Corrupt {
            path: path.clone(),
            source,
        })?;
        Ok((a.allocations().count() > 0).then(|| a.block()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Allocator> {
        // A panic while holding the lock leaves the previous, consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `owner`'s address: the one it holds, else a new one, persisted before returning.
    pub fn allocate(&self, owner: &Owner) -> Result<IpAddr, NodeIpamError> {
        let mut st = self.lock();
        let a = st.allocate(owner)?;
        if !a.existing {
            write_atomic(&self.path, a.state.encode().as_bytes(), 0o600)?;
            *st = a.state;
        }
        Ok(a.ip)
    }

    /// Frees every address whose owner `keep` rejects; persisted before returning.
    pub fn retain(
        &self,
        keep: impl FnMut(&Owner) -> bool,
    ) -> Result<Vec<(IpAddr, Owner)>, NodeIpamError> {
        let mut st = self.lock();
        let r = st.retain(keep);
        if !r.freed.is_empty() {
            write_atomic(&self.path, r.state.encode().as_bytes(), 0o600)?;
            *st = r.state;
        }
        Ok(r.freed)
    }

    /// Frees `owner`'s address (none held is fine).
    pub fn release(&self, owner: &Owner) -> Result<Option<IpAddr>, NodeIpamError> {
        Ok(self
            .retain(|o| o != owner)?
            .into_iter()
            .next()
            .map(|(ip, _)| ip))
    }

    pub fn lookup(&self, owner: &Owner) -> Option<IpAddr> {
        self.lock().lookup(owner)
    }

    pub fn owners(&self) -> Vec<(IpAddr, Owner)> {
        self.lock()
            .allocations()
            .map(|(ip, o)| (ip, o.clone()))
            .collect()
    }

    pub fn stats(&self) -> IpamStats {
        self.lock().stats()
    }

    pub fn block(&self) -> PodCidr {
        self.lock().block()
    }

    /// The pods' gateway: the node's first address in the block.
    pub fn gateway(&self) -> IpAddr {
        self.lock().gateway()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The node's routes as the overlap checks want them. Routes fibril installs itself (to
/// pod veths, to the VXLAN device, or to a peer's pod range in `peer_ranges`) are marked.
pub fn route_infos(
    routes: &[fibril_netlink::RouteInfo],
    is_fibril_dev: impl Fn(&str) -> bool,
    peer_ranges: &[IpNet],
) -> Vec<RouteInfo> {
    routes
        .iter()
        .map(|r| {
            let mut info = RouteInfo::new(IpNet::V4(r.dst));
            if let Some(via) = r.via {
                info = info.via(IpAddr::V4(via));
            }
            if let Some(dev) = &r.dev {
                info = info.dev(dev.clone());
            }
            let ours = r.dev.as_deref().is_some_and(&is_fibril_dev)
                || peer_ranges.contains(&IpNet::V4(r.dst));
            if ours {
                info = info.owned_by_fibril();
            }
            info
        })
        .collect()
}

/// The node's interface addresses as the overlap checks want them (loopback left out:
/// 127.0.0.0/8 is no pod range anyway, and it is not a subnet the node is attached to).
pub fn node_subnets(addrs: &[fibril_netlink::AddrInfo]) -> Vec<NodeSubnet> {
    addrs
        .iter()
        .filter(|a| !a.addr.addr().is_loopback())
        .map(|a| NodeSubnet::new(IpNet::V4(a.addr), a.ifname.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        Owner::new(c.parse().unwrap(), "eth0".parse().unwrap())
    }

    #[test]
    fn allocations_survive_reopen_and_block_change_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let block: PodCidr = "10.244.1.0/29".parse().unwrap();
        let ipam = NodeIpam::open(d.path(), block).unwrap();
        let a = ipam.allocate(&owner("a")).unwrap();
        assert_eq!(
            ipam.allocate(&owner("a")).unwrap(),
            a,
            "idempotent per owner"
        );
        let b = ipam.allocate(&owner("b")).unwrap();
        assert_ne!(a, b);
        drop(ipam);
        let ipam = NodeIpam::open(d.path(), block).unwrap();
        assert_eq!(ipam.lookup(&owner("a")), Some(a));
        assert_eq!(ipam.lookup(&owner("b")), Some(b));
        let other: PodCidr = "10.244.2.0/24".parse().unwrap();
        let e = NodeIpam::open(d.path(), other).unwrap_err().to_string();
        assert!(
            e.contains("10.244.1.0/29") && e.contains("10.244.2.0/24"),
            "{e}"
        );
        assert_eq!(ipam.release(&owner("a")).unwrap(), Some(a));
        assert_eq!(ipam.release(&owner("a")).unwrap(), None);
        ipam.release(&owner("b")).unwrap();
        drop(ipam);
        // Empty: the new block is taken.
        let ipam = NodeIpam::open(d.path(), other).unwrap();
        assert_eq!(ipam.block(), other);
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_block() {
        let d = tempfile::tempdir().unwrap();
        let ipam = NodeIpam::open(d.path(), "10.244.1.0/30".parse().unwrap()).unwrap();
        ipam.allocate(&owner("a")).unwrap();
        let e = ipam.allocate(&owner("b")).unwrap_err().to_string();
        assert!(e.contains("10.244.1.0/30"), "{e}");
        assert_eq!(ipam.stats().free, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Random allocate / release / crash (reopen from disk) sequences: no address is ever
        /// held by two owners, and every address handed out survives a crash.
        #[test]
        fn no_double_allocation_across_crashes(ops in proptest::collection::vec((0u8..3, 0u8..12), 1..120)) {
            let d = tempfile::tempdir().unwrap();
            let block: PodCidr = "10.244.1.0/28".parse().unwrap();
            let mut ipam = NodeIpam::open(d.path(), block).unwrap();
            let mut held: std::collections::BTreeMap<u8, IpAddr> = Default::default();
            for (op, who) in ops {
                let o = owner(&format!("c{who}"));
                match op {
                    0 => match ipam.allocate(&o) {
                        Ok(ip) => {
                            if let Some(prev) = held.get(&who) {
                                proptest::prop_assert_eq!(*prev, ip);
                            }
                            proptest::prop_assert!(
                                !held.iter().any(|(w, i)| *w != who && *i == ip),
                                "{} handed out twice", ip
                            );
                            held.insert(who, ip);
                        }
                        Err(NodeIpamError::Ipam(IpamError::BlockExhausted { .. })) => {
                            proptest::prop_assert_eq!(held.len(), 13);
                        }
                        Err(e) => proptest::prop_assert!(false, "{}", e),
                    },
                    1 => {
                        let freed = ipam.release(&o).unwrap();
                        proptest::prop_assert_eq!(freed, held.remove(&who));
                    }
                    _ => {
                        drop(ipam);
                        ipam = NodeIpam::open(d.path(), block).unwrap();
                    }
                }
                for (w, ip) in &held {
                    proptest::prop_assert_eq!(ipam.lookup(&owner(&format!("c{w}"))), Some(*ip));
                }
            }
        }
    }
}
