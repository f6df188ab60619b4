//! cluster-pool mode: each agent claims a per-node block from the pool itself, with optimistic
//! concurrency, so no operator is needed.
//!
//! The claims live in **one** shared object (the [`PoolState`]: which node holds which block,
//! and a version like a Kubernetes `resourceVersion`). A claim is computed from a read of that
//! object and written back expecting the version read; if another agent wrote in between, the
//! write fails (HTTP 409) and the agent reads again and retries. One object is what makes this
//! safe: if each agent wrote only its own node object, two agents could pick the same block
//! at once and neither write would conflict.
//!
//! The store is modelled purely by [`PoolState::apply`]; the agent maps it onto a
//! `replace` with `metadata.resourceVersion` set.
//!
//! Blocks are picked first-fit (the lowest free block), so a released block is reused before
//! fresh address space is walked into; each candidate is checked against the node's
//! [`OverlapCheck`] and skipped, with the reason kept, when it overlaps anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidr::{net_at, overlaps, Span};
use crate::doctor::forecast::BlockSpace;

use super::error::IpamError;
use super::overlap::{Candidate, Overlap, OverlapCheck};
use super::types::{NodeName, PodCidr, PoolCidr};

/// The longest block an IPv4 pool may be cut into: a /30 still leaves one pod address after
/// the network, gateway and broadcast addresses.
pub const MAX_MASK_V4: u8 = 30;
/// The longest IPv6 block: a /126 leaves two pod addresses after network and gateway.
pub const MAX_MASK_V6: u8 = 126;

/// The cluster pool: its ranges, cut into blocks of one size.
#[derive(Clone, Debug)]
pub struct ClusterPool {
    cidrs: Vec<PoolCidr>,
    mask: u8,
    space: BlockSpace,
}

/// One problem with a pool definition, and the index of the range it is about, if any.
pub type PoolProblem = (Option<usize>, IpamError);

impl ClusterPool {
    /// Every problem with `cidrs` cut into `/mask` blocks: no range, mixed families, ranges
    /// overlapping each other, a mask outside a range or too long to leave a pod address.
    pub fn problems(cidrs: &[PoolCidr], mask: u8) -> Vec<PoolProblem> {
        let mut out = Vec::new();
        let Some(first) = cidrs.first() else {
            out.push((None, IpamError::NoPool));
            return out;
        };
        let v6 = |c: &PoolCidr| matches!(c.net(), IpNet::V6(_));
        for (i, c) in cidrs.iter().enumerate() {
            if v6(c) != v6(first) {
                out.push((
                    Some(i),
                    IpamError::MixedFamilies {
                        first: *first,
                        other: *c,
                    },
                ));
                continue;
            }
            let max = if v6(c) { MAX_MASK_V6 } else { MAX_MASK_V4 };
            if mask < c.net().prefix_len() || mask > max {
                out.push((
                    Some(i),
                    IpamError::MaskOutsidePool {
                        pool: *c,
                        mask,
                        max,
                    },
                ));
            }
            for earlier in &cidrs[..i] {
                if overlaps(&earlier.net(), &c.net()) {
                    out.push((Some(i), IpamError::PoolsOverlap { a: *earlier, b: *c }));
                }
            }
        }
        out
    }

    /// The pool, or its first problem (see [`problems`](Self::problems) for all of them).
    pub fn new(cidrs: Vec<PoolCidr>, mask: u8) -> Result<ClusterPool, IpamError> {
        if let Some((_, e)) = Self::problems(&cidrs, mask).into_iter().next() {
            return Err(e);
        }
        let nets: Vec<IpNet> = cidrs.iter().map(|c| c.net()).collect();
        let space = BlockSpace::new(&nets, mask)
            .expect("problems() refuses everything BlockSpace::new refuses");
        Ok(ClusterPool { cidrs, mask, space })
    }

    /// The ranges.
    pub fn cidrs(&self) -> &[PoolCidr] {
        &self.cidrs
    }

    /// The block size.
    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many blocks the pool has.
    pub fn block_count(&self) -> u128 {
        self.space.len()
    }

    /// Whether `block` is exactly one of the pool's blocks.
    pub fn is_block(&self, block: &PodCidr) -> bool {
        self.space.index_of(&block.net()).is_some()
    }

    /// Checks every pool range against the node before the pool is accepted at all.
    pub fn refuse_overlaps(&self, checks: &OverlapCheck) -> Result<(), IpamError> {
        let overlaps: Vec<Overlap> = self
            .cidrs
            .iter()
            .flat_map(|c| checks.check(Candidate::pool(*c)))
            .collect();
        if overlaps.is_empty() {
            Ok(())
        } else {
            Err(IpamError::Overlaps { overlaps })
        }
    }

    /// Claims a block for `node` from `state`.
    ///
    /// - If the node already holds a block, that block is returned with no update to write,
    ///   after checking it is still one of the pool's and still clear of overlaps (routes may
    ///   have appeared since it was claimed).
    /// - Otherwise the lowest block that is neither held nor overlapping anything is taken.
    ///   Refused blocks are skipped in runs and reported in [`Claim::refused`].
    ///
    /// The returned [`PoolUpdate`] must be written expecting the version that was read;
    /// a [`IpamError::VersionConflict`] there means: read again and call this again.
    pub fn claim_block(
        &self,
        state: &PoolState,
        node: &NodeName,
        checks: &OverlapCheck,
    ) -> Result<Claim, IpamError> {
        self.claim_block_preferring(state, node, checks, None)
    }

    /// [`claim_block`](Self::claim_block), taking `preferred` when the node holds no block
    /// and `preferred` is one of the pool's blocks, free and clear of overlaps: an agent
    /// whose persisted allocations are in a block the shared state no longer records (the
    /// cluster's store was reset) gets that block back, so its pods keep their addresses.
    /// Otherwise first-fit, as `claim_block`.
    pub fn claim_block_preferring(
        &self,
        state: &PoolState,
        node: &NodeName,
        checks: &OverlapCheck,
        preferred: Option<PodCidr>,
    ) -> Result<Claim, IpamError> {
        if state.block_of(node).is_none() {
            if let Some(block) = preferred.filter(|b| {
                self.is_block(b)
                    && state.holder(b).is_none()
                    && checks.check(Candidate::block(*b)).is_empty()
            }) {
                return Ok(state.take(node, block, Vec::new()));
            }
        }
        if let Some(block) = state.block_of(node) {
            if !self.is_block(&block) {
                return Err(IpamError::HeldBlockOutsidePool {
                    node: node.clone(),
                    block,
                    pools: self.cidrs.clone(),
                    mask: self.mask,
                });
            }
            checks.refuse_overlaps(Candidate::block(block))?;
            return Ok(Claim {
                node: node.clone(),
                block,
                update: None,
                refused: Vec::new(),
            });
        }
        let taken: BTreeSet<u128> = state
            .blocks
            .keys()
            .filter_map(|b| self.space.index_of(&b.net()))
            .collect();
        let mut refused = Vec::new();
        let mut idx = 0u128;
        while idx < self.space.len() {
            if taken.contains(&idx) {
                idx += 1;
                continue;
            }
            let block = self.block(idx);
            let overlaps = checks.check(Candidate::block(block));
            if overlaps.is_empty() {
                return Ok(state.take(node, block, refused));
            }
            // Each overlapping range is contiguous and reaches this block, so every block up
            // to the one holding the range's end overlaps it too: skip them all at once, which
            // keeps a /8 pool with a /9 reserved range from being walked block by block.
            let pool_end = self
                .cidrs
                .iter()
                .map(|c| Span::of(&c.net()))
                .find(|s| s.contains(&Span::of(&block.net())))
                .map_or(0, |s| s.end);
            let far = overlaps
                .iter()
                .map(|o| Span::of(&o.source.range()).end)
                .max()
                .unwrap_or(0)
                .min(pool_end);
            let last = self.index_at(far).unwrap_or(idx).max(idx);
            let held_in_run = taken.range(idx..=last).count() as u128;
            refused.push(RefusedRun {
                first: block,
                last: self.block(last),
                blocks: last - idx + 1 - held_in_run,
                overlaps,
            });
            idx = last + 1;
        }
        Err(IpamError::PoolExhausted {
            pools: self.cidrs.clone(),
            mask: self.mask,
            node: node.clone(),
            total: self.space.len(),
            held: taken.len() as u128,
            refused,
        })
    }

    /// Used and free blocks, for `fibril status`.
    pub fn stats(&self, state: &PoolState) -> PoolStats {
        let held = state.blocks.keys().filter(|b| self.is_block(b)).count() as u128;
        PoolStats {
            total: self.space.len(),
            held,
            free: self.space.len() - held,
        }
    }

    fn block(&self, idx: u128) -> PodCidr {
        let net = self.space.cidr(idx).expect("index below the block count");
        PodCidr::new(net).expect("blocks are network addresses")
    }

    /// The index of the block holding address `addr` (on the pool's family's number line).
    fn index_at(&self, addr: u128) -> Option<u128> {
        let v6 = matches!(self.cidrs[0].net(), IpNet::V6(_));
        let bits = if v6 { 128 } else { 32 } - u32::from(self.mask);
        let host = if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        self.space.index_of(&net_at(v6, addr & !host, self.mask))
    }
}

/// The shared claim record: which node holds which block, at which version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolState {
    /// Bumped on every write, as a Kubernetes `resourceVersion` is.
    pub version: u64,
    /// Block to holder.
    pub blocks: BTreeMap<PodCidr, NodeName>,
}

impl PoolState {
    /// The block `node` holds, if any (the lowest, should it somehow hold several).
    pub fn block_of(&self, node: &NodeName) -> Option<PodCidr> {
        self.blocks
            .iter()
            .find(|(_, n)| *n == node)
            .map(|(b, _)| *b)
    }

    /// Who holds `block`.
    pub fn holder(&self, block: &PodCidr) -> Option<&NodeName> {
        self.blocks.get(block)
    }

    /// The claim of a free `block` by `node`: the next state, valid against this version.
    fn take(&self, node: &NodeName, block: PodCidr, refused: Vec<RefusedRun>) -> Claim {
        let mut next = self.clone();
        next.blocks.insert(block, node.clone());
        next.version = self.version + 1;
        Claim {
            node: node.clone(),
            block,
            update: Some(PoolUpdate {
                expected_version: self.version,
                state: next,
            }),
            refused,
        }
    }

    /// The store's side of optimistic concurrency: accept `update` only if it was computed
    /// from the version held now.
    pub fn apply(&self, update: &PoolUpdate) -> Result<PoolState, IpamError> {
        if update.expected_version != self.version {
            return Err(IpamError::VersionConflict {
                expected: update.expected_version,
                found: self.version,
            });
        }
        Ok(update.state.clone())
    }

    /// Gives back every block `node` holds (a node leaving the cluster). `None` if it holds
    /// none, so there is nothing to write.
    pub fn release_block(&self, node: &NodeName) -> Option<BlockRelease> {
        let blocks: Vec<PodCidr> = self
            .blocks
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(b, _)| *b)
            .collect();
        if blocks.is_empty() {
            return None;
        }
        let mut next = self.clone();
        next.blocks.retain(|_, n| n != node);
        next.version = self.version + 1;
        Some(BlockRelease {
            blocks,
            update: PoolUpdate {
                expected_version: self.version,
                state: next,
            },
        })
    }
}

/// A write to the pool state, valid only against the version it was computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a pool update does nothing until it is written with PoolState::apply or the API"]
pub struct PoolUpdate {
    /// The version read (the `resourceVersion` to send).
    pub expected_version: u64,
    /// The state to write.
    pub state: PoolState,
}

/// The outcome of [`ClusterPool::claim_block`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the claim holds only once its update is written"]
pub struct Claim {
    /// The node that claimed.
    pub node: NodeName,
    /// Its block.
    pub block: PodCidr,
    /// What to write; `None` when the node already held the block.
    pub update: Option<PoolUpdate>,
    /// Blocks skipped on the way because they overlap something on the node.
    pub refused: Vec<RefusedRun>,
}

/// The outcome of [`PoolState::release_block`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the release holds only once its update is written"]
pub struct BlockRelease {
    /// The blocks given back.
    pub blocks: Vec<PodCidr>,
    /// What to write.
    pub update: PoolUpdate,
}

/// A run of consecutive blocks skipped because they overlap something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedRun {
    /// The first block of the run.
    pub first: PodCidr,
    /// The last block of the run.
    pub last: PodCidr,
    /// How many free blocks the run skipped.
    pub blocks: u128,
    /// The overlaps of the first block.
    pub overlaps: Vec<Overlap>,
}

impl fmt::Display for RefusedRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "block {} skipped:", self.first)?;
        } else {
            write!(
                f,
                "blocks {} to {} ({} free) skipped:",
                self.first, self.last, self.blocks
            )?;
        }
        for (i, o) in self.overlaps.iter().enumerate() {
            write!(f, "{} {o}", if i == 0 { "" } else { ";" })?;
        }
        Ok(())
    }
}

/// Block usage, for `fibril status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    /// Blocks in the pool.
    pub total: u128,
    /// Blocks held by nodes.
    pub held: u128,
    /// Blocks not held (some may still be refused by a node's overlap checks).
    pub free: u128,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::overlap::{Reserved, RouteInfo};

    fn pool(cidrs: &[&str], mask: u8) -> ClusterPool {
        ClusterPool::new(cidrs.iter().map(|c| c.parse().unwrap()).collect(), mask).unwrap()
    }

    fn node(n: &str) -> NodeName {
        n.parse().unwrap()
    }

    fn checks(n: &str) -> OverlapCheck {
        OverlapCheck::new(node(n))
    }

    fn claim_and_write(
        p: &ClusterPool,
        s: &PoolState,
        n: &str,
        c: &OverlapCheck,
    ) -> (PodCidr, PoolState) {
        let claim = p.claim_block(s, &node(n), c).unwrap();
        let next = match &claim.update {
            Some(u) => s.apply(u).unwrap(),
            None => s.clone(),
        };
        (claim.block, next)
    }

    #[test]
    fn first_fit_and_idempotent() {
        let p = pool(&["10.244.0.0/16"], 24);
        let s0 = PoolState::default();
        let (b1, s1) = claim_and_write(&p, &s0, "n1", &checks("n1"));
        let (b2, s2) = claim_and_write(&p, &s1, "n2", &checks("n2"));
        assert_eq!(b1.to_string(), "10.244.0.0/24");
        assert_eq!(b2.to_string(), "10.244.1.0/24");
        assert_eq!(s2.version, 2);
        let again = p.claim_block(&s2, &node("n1"), &checks("n1")).unwrap();
        assert_eq!(again.block, b1);
        assert!(again.update.is_none());
        // A released block is reused first.
        let r = s2.release_block(&node("n1")).unwrap();
        assert_eq!(r.blocks, vec![b1]);
        let s3 = s2.apply(&r.update).unwrap();
        let (b3, _) = claim_and_write(&p, &s3, "n3", &checks("n3"));
        assert_eq!(b3, b1);
        assert!(s3.release_block(&node("n1")).is_none());
    }

    #[test]
    fn stale_version_conflicts() {
        let p = pool(&["10.244.0.0/16"], 24);
        let s0 = PoolState::default();
        let a = p.claim_block(&s0, &node("a"), &checks("a")).unwrap();
        let b = p.claim_block(&s0, &node("b"), &checks("b")).unwrap();
        assert_eq!(a.block, b.block);
        let s1 = s0.apply(a.update.as_ref().unwrap()).unwrap();
        let e = s1.apply(b.update.as_ref().unwrap()).unwrap_err();
        assert_eq!(
            e,
            IpamError::VersionConflict {
                expected: 0,
                found: 1
            }
        );
        let b = p.claim_block(&s1, &node("b"), &checks("b")).unwrap();
        assert_ne!(b.block, a.block);
        assert!(s1.apply(b.update.as_ref().unwrap()).is_ok());
    }

    #[test]
    fn a_preferred_block_is_taken_back_when_free_and_clear() {
        let p = pool(&["10.244.0.0/16"], 24);
        let (_, s) = claim_and_write(&p, &PoolState::default(), "n1", &checks("n1"));
        let want: PodCidr = "10.244.7.0/24".parse().unwrap();
        let c = p
            .claim_block_preferring(&s, &node("n2"), &checks("n2"), Some(want))
            .unwrap();
        assert_eq!(c.block, want);
        let s2 = s.apply(c.update.as_ref().unwrap()).unwrap();
        // Held by another node, outside the pool, or overlapping: first fit instead.
        let c = p
            .claim_block_preferring(&s2, &node("n3"), &checks("n3"), Some(want))
            .unwrap();
        assert_eq!(c.block.to_string(), "10.244.1.0/24");
        let c = p
            .claim_block_preferring(
                &s2,
                &node("n3"),
                &checks("n3"),
                Some("10.9.0.0/24".parse().unwrap()),
            )
            .unwrap();
        assert_eq!(c.block.to_string(), "10.244.1.0/24");
        let mut c3 = checks("n3");
        c3.routes
            .push(RouteInfo::new("10.244.9.0/24".parse().unwrap()).dev("eth1"));
        let c = p
            .claim_block_preferring(
                &s2,
                &node("n3"),
                &c3,
                Some("10.244.9.0/24".parse().unwrap()),
            )
            .unwrap();
        assert_eq!(c.block.to_string(), "10.244.1.0/24");
        // A node that holds a block keeps it, whatever it prefers.
        let c = p
            .claim_block_preferring(&s2, &node("n1"), &checks("n1"), Some(want))
            .unwrap();
        assert_eq!(c.block.to_string(), "10.244.0.0/24");
        assert!(c.update.is_none());
    }

    #[test]
    fn refused_blocks_are_skipped_in_runs() {
        let p = pool(&["10.0.0.0/8"], 24);
        let mut c = checks("n1");
        c.reserved.push(Reserved {
            cidr: "10.0.0.0/9".parse().unwrap(),
            origin: "ipam.reservedCidrs[0]".into(),
        });
        c.routes.push(
            RouteInfo::new("10.128.0.0/24".parse().unwrap())
                .via("172.18.0.1".parse().unwrap())
                .dev("eth0"),
        );
        let claim = p
            .claim_block(&PoolState::default(), &node("n1"), &c)
            .unwrap();
        assert_eq!(claim.block.to_string(), "10.128.1.0/24");
        assert_eq!(claim.refused.len(), 2);
        assert_eq!(claim.refused[0].blocks, 1 << 15);
        assert_eq!(claim.refused[0].last.to_string(), "10.127.255.0/24");
        assert_eq!(
            claim.refused[1].to_string(),
            "block 10.128.0.0/24 skipped: block 10.128.0.0/24 overlaps route 10.128.0.0/24 via \
             172.18.0.1 dev eth0 on node n1"
        );
    }

    #[test]
    fn a_range_past_the_pool_end_stops_the_run_at_the_pool() {
        let p = pool(&["10.1.0.0/24", "10.9.0.0/24"], 26);
        let mut c = checks("n1");
        c.reserved.push(Reserved {
            cidr: "10.1.0.128/25".parse().unwrap(),
            origin: "r".into(),
        });
        c.reserved.push(Reserved {
            cidr: "10.0.0.0/14".parse().unwrap(),
            origin: "wide".into(),
        });
        let claim = p
            .claim_block(&PoolState::default(), &node("n1"), &c)
            .unwrap();
        assert_eq!(claim.block.to_string(), "10.9.0.0/26");
        assert_eq!(claim.refused.len(), 1);
        assert_eq!(claim.refused[0].blocks, 4);
    }

    #[test]
    fn exhaustion_names_pool_mask_and_counts() {
        let p = pool(&["10.244.0.0/23"], 24);
        let mut s = PoolState::default();
        for n in ["n1", "n2"] {
            s = claim_and_write(&p, &s, n, &checks(n)).1;
        }
        let e = p.claim_block(&s, &node("n3"), &checks("n3")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster pool 10.244.0.0/23 has no free /24 block for node n3: 2 blocks, 2 held by \
             nodes, 0 refused by overlap checks"
        );
        assert_eq!(
            p.stats(&s),
            PoolStats {
                total: 2,
                held: 2,
                free: 0
            }
        );
    }

    #[test]
    fn held_block_is_rechecked() {
        let p = pool(&["10.244.0.0/16"], 24);
        let (b, s) = claim_and_write(&p, &PoolState::default(), "n1", &checks("n1"));
        let mut c = checks("n1");
        c.routes.push(RouteInfo::new(b.net()).dev("eth1"));
        assert!(matches!(
            p.claim_block(&s, &node("n1"), &c),
            Err(IpamError::Overlaps { .. })
        ));
        let other = pool(&["10.245.0.0/16"], 24);
        let e = other
            .claim_block(&s, &node("n1"), &checks("n1"))
            .unwrap_err();
        assert!(matches!(e, IpamError::HeldBlockOutsidePool { .. }), "{e}");
    }

    #[test]
    fn pool_problems_are_all_reported() {
        let cidrs: Vec<PoolCidr> = ["10.0.0.0/16", "10.0.128.0/17", "fd00::/64"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let got = ClusterPool::problems(&cidrs, 16);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(
            got[0],
            (Some(1), IpamError::MaskOutsidePool { .. })
        ));
        assert!(matches!(got[1], (Some(1), IpamError::PoolsOverlap { .. })));
        assert!(matches!(got[2], (Some(2), IpamError::MixedFamilies { .. })));
        assert!(matches!(
            ClusterPool::new(vec![], 24),
            Err(IpamError::NoPool)
        ));
        assert!(ClusterPool::new(vec!["10.0.0.0/24".parse().unwrap()], 31).is_err());
        assert!(ClusterPool::new(vec!["fd00::/64".parse().unwrap()], 126).is_ok());
    }

    #[test]
    fn pool_state_round_trips_as_json() {
        let p = pool(&["10.244.0.0/16"], 24);
        let (_, s) = claim_and_write(&p, &PoolState::default(), "n1", &checks("n1"));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"version":1,"blocks":{"10.244.0.0/24":"n1"}}"#);
        assert_eq!(serde_json::from_str::<PoolState>(&text).unwrap(), s);
        assert!(serde_json::from_str::<PoolState>(
            r#"{"version":1,"blocks":{"10.244.0.1/24":"n1"}}"#
        )
        .is_err());
    }
}
