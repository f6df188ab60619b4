//! When will node churn walk a pod pool into a conflict or run it dry?
//!
//! Seed 000's fuse: Cilium's operator (like kube-controller-manager's node IPAM) hands out
//! per-node blocks with a *next-fit* cursor, so a released block is not reused until the cursor
//! wraps. Every node replacement moves the cursor one block on, and after enough churn it lands
//! on a block that overlaps something outside the cluster.
//!
//! [`forecast`] answers by arithmetic over block indices (it never steps through allocations,
//! except for first-fit with replacement, see below), so a /8 pool of /24 blocks or an IPv6
//! pool costs the same as a tiny one. [`simulate`] is the brute-force reference it is tested
//! against: it performs every allocation one by one.
//!
//! The model:
//! - blocks are numbered across the pools in order (pool 0's blocks first);
//! - each step is one new node: the allocator picks a block (`Order`); with
//!   `skip_conflicts` it never picks a block that overlaps a conflict (fibril's refusal),
//!   without it picking one is the `Overlap` event (Cilium's behaviour);
//! - no pickable block is the `Exhausted` event;
//! - after each allocation, `Release::OldestFirst` frees the oldest live block (a node
//!   replaced: the fleet size stays constant), `Release::Never` frees nothing (a growing fleet).

use std::collections::{BTreeSet, VecDeque};

use ipnet::IpNet;

use super::cidr::{net_at, Span};

/// How the allocator picks the next block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Next-fit: scan from the block after the last allocation, wrapping (k8s `cidrset`,
    /// Cilium's cluster-pool operator).
    Sequential,
    /// First-fit: the lowest free block.
    LowestFree,
}

/// What happens to old blocks as new ones are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Nodes are only added.
    Never,
    /// Each new node replaces the oldest one.
    OldestFirst,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForecastError {
    #[error("no pool given")]
    NoPool,
    #[error("pool {pool} is larger than the block size /{mask}")]
    MaskTooShort { pool: IpNet, mask: u8 },
    #[error("block size /{mask} is longer than the address family allows")]
    MaskTooLong { mask: u8 },
    #[error("pools mix IPv4 and IPv6 ({0})")]
    MixedFamilies(IpNet),
    #[error("block {0} is not a block of the pools")]
    NotABlock(IpNet),
}

/// The pools cut into blocks, numbered in pool order.
#[derive(Clone, Debug)]
pub struct BlockSpace {
    v6: bool,
    mask: u8,
    /// (pool span, index of its first block, its block count)
    pools: Vec<(Span, u128, u128)>,
    total: u128,
}

impl BlockSpace {
    pub fn new(pools: &[IpNet], mask: u8) -> Result<BlockSpace, ForecastError> {
        let first = pools.first().ok_or(ForecastError::NoPool)?;
        let v6 = matches!(first, IpNet::V6(_));
        let bits = if v6 { 128 } else { 32 };
        if mask > bits {
            return Err(ForecastError::MaskTooLong { mask });
        }
        let mut out = Vec::new();
        let mut total: u128 = 0;
        for p in pools {
            if matches!(p, IpNet::V6(_)) != v6 {
                return Err(ForecastError::MixedFamilies(*p));
            }
            if p.prefix_len() > mask {
                return Err(ForecastError::MaskTooShort { pool: *p, mask });
            }
            let shift = u32::from(mask - p.prefix_len());
            let count = if shift >= 128 {
                u128::MAX
            } else {
                1u128 << shift
            };
            out.push((Span::of(p), total, count));
            total = total.saturating_add(count);
        }
        Ok(BlockSpace {
            v6,
            mask,
            pools: out,
            total,
        })
    }

    pub fn len(&self) -> u128 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    fn block_bits(&self) -> u32 {
        (if self.v6 { 128 } else { 32 }) - u32::from(self.mask)
    }

    fn block_size(&self) -> u128 {
        let b = self.block_bits();
        if b >= 128 {
            u128::MAX
        } else {
            1u128 << b
        }
    }

    /// The CIDR of block `idx`.
    pub fn cidr(&self, idx: u128) -> Option<IpNet> {
        let (span, first, _) = self
            .pools
            .iter()
            .find(|(_, first, count)| idx >= *first && idx - first < *count)?;
        let addr = span.start + (idx - first) * self.block_size();
        Some(net_at(self.v6, addr, self.mask))
    }

    /// The index of the block that is exactly `net`.
    pub fn index_of(&self, net: &IpNet) -> Option<u128> {
        if net.prefix_len() != self.mask {
            return None;
        }
        let s = Span::of(net);
        self.pools.iter().find_map(|(span, first, _)| {
            span.contains(&s)
                .then(|| first + (s.start - span.start) / self.block_size())
        })
    }

    /// For each conflict, the block-index runs it overlaps (one run per pool it touches).
    fn runs(&self, conflicts: &[IpNet]) -> Vec<(u128, u128, usize)> {
        let bs = self.block_size();
        let mut out = Vec::new();
        for (ci, c) in conflicts.iter().enumerate() {
            let cs = Span::of(c);
            for (span, first, _) in &self.pools {
                if !span.overlaps(&cs) {
                    continue;
                }
                let lo = cs.start.max(span.start);
                let hi = cs.end.min(span.end);
                out.push((
                    first + (lo - span.start) / bs,
                    first + (hi - span.start) / bs,
                    ci,
                ));
            }
        }
        out.sort();
        out
    }
}

/// The allocation state and behaviour to forecast.
#[derive(Clone, Debug)]
pub struct PoolModel {
    pub pools: Vec<IpNet>,
    pub mask: u8,
    pub order: Order,
    pub release: Release,
    pub skip_conflicts: bool,
    /// Ranges no block may overlap.
    pub conflicts: Vec<IpNet>,
    /// Blocks in use (indices), oldest first; duplicates are ignored.
    pub live: Vec<u128>,
    /// Where a `Sequential` scan starts: the block after the newest allocation.
    pub cursor: u128,
}

/// What stops allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The allocator hands out `block`, which overlaps `conflicts[conflict]` (the first listed).
    Overlap { block: u128, conflict: usize },
    /// No block can be handed out.
    Exhausted,
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forecast {
    /// The `step`-th allocation from now (1-based) meets `event`.
    Hit { step: u128, event: Event },
    /// Nothing ever happens, however long the churn goes on.
    Never,
    /// Nothing happens in the next `n` allocations; past that the forecast does not look.
    NotWithin(u128),
}

struct Prepared {
    space: BlockSpace,
    /// Merged conflict runs, sorted.
    union: Vec<(u128, u128)>,
    runs: Vec<(u128, u128, usize)>,
    /// Distinct live blocks in age order.
    live: Vec<u128>,
}

impl Prepared {
    fn new(m: &PoolModel) -> Result<Prepared, ForecastError> {
        let space = BlockSpace::new(&m.pools, m.mask)?;
        let runs = space.runs(&m.conflicts);
        let mut union: Vec<(u128, u128)> = Vec::new();
        for &(lo, hi, _) in &runs {
            match union.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => union.push((lo, hi)),
            }
        }
        let mut seen = BTreeSet::new();
        let mut live = Vec::new();
        for &b in &m.live {
            if b >= space.len() {
                return Err(ForecastError::NotABlock(
                    space
                        .cidr(b)
                        .unwrap_or_else(|| net_at(space.v6, 0, space.mask)),
                ));
            }
            if seen.insert(b) {
                live.push(b);
            }
        }
        Ok(Prepared {
            space,
            union,
            runs,
            live,
        })
    }

    fn conflict_of(&self, block: u128) -> Option<usize> {
        self.runs
            .iter()
            .filter(|(lo, hi, _)| *lo <= block && block <= *hi)
            .map(|r| r.2)
            .min()
    }

    fn conflicting_count(&self) -> u128 {
        self.union.iter().map(|(lo, hi)| hi - lo + 1).sum()
    }

    /// Conflict runs as intervals of distance from `cursor` (cyclic), sorted.
    fn union_from(&self, cursor: u128) -> Vec<(u128, u128)> {
        let n = self.space.len();
        let mut out = Vec::new();
        for &(lo, hi) in &self.union {
            if hi < cursor {
                out.push((lo + (n - cursor), hi + (n - cursor)));
            } else if lo >= cursor {
                out.push((lo - cursor, hi - cursor));
            } else {
                out.push((lo + (n - cursor), n - 1));
                out.push((0, hi - cursor));
            }
        }
        out.sort();
        out
    }
}

/// The forecast, by arithmetic over block indices.
pub fn forecast(m: &PoolModel) -> Result<Forecast, ForecastError> {
    let p = Prepared::new(m)?;
    let n = p.space.len();
    let live_n = p.live.len() as u128;
    if m.skip_conflicts {
        return Ok(exhaustion_aware(&p, m.release));
    }
    match (m.release, m.order) {
        (Release::Never, order) => {
            let cursor = if order == Order::Sequential {
                m.cursor % n
            } else {
                0
            };
            Ok(grow_unaware(&p, cursor))
        }
        (Release::OldestFirst, _) if live_n >= n => Ok(Forecast::Hit {
            step: 1,
            event: Event::Exhausted,
        }),
        (Release::OldestFirst, Order::Sequential) => Ok(replace_sequential(&p, m.cursor % n)),
        (Release::OldestFirst, Order::LowestFree) => Ok(replace_lowest(&p)),
    }
}

/// Growing fleet, conflicts not skipped: allocations take the free blocks in cyclic order from
/// the cursor, so the k-th allocation is the k-th free block.
fn grow_unaware(p: &Prepared, cursor: u128) -> Forecast {
    let n = p.space.len();
    let live: BTreeSet<u128> = p.live.iter().map(|b| (b + n - cursor) % n).collect();
    for (lo, hi) in p.union_from(cursor) {
        let mut x = lo;
        while x <= hi {
            if !live.contains(&x) {
                let before = live.range(..x).count() as u128;
                let block = (x + cursor) % n;
                return Forecast::Hit {
                    step: x - before + 1,
                    event: Event::Overlap {
                        block,
                        conflict: p.conflict_of(block).unwrap_or(0),
                    },
                };
            }
            x += 1;
        }
    }
    Forecast::Hit {
        step: n - live.len() as u128 + 1,
        event: Event::Exhausted,
    }
}

/// Conflicts skipped: the only event is exhaustion, and it does not depend on the order.
fn exhaustion_aware(p: &Prepared, release: Release) -> Forecast {
    let usable = p.space.len() - p.conflicting_count();
    let conflicting_live: Vec<bool> = p
        .live
        .iter()
        .map(|b| p.union.iter().any(|(lo, hi)| lo <= b && b <= hi))
        .collect();
    let m = conflicting_live.iter().filter(|c| **c).count() as u128;
    let usable_live = p.live.len() as u128 - m;
    match release {
        Release::Never => Forecast::Hit {
            step: usable - usable_live + 1,
            event: Event::Exhausted,
        },
        Release::OldestFirst => {
            // Each step adds one usable block and frees the oldest; freeing a conflicting one
            // grows the usable live count by one. Exhausted once it reaches `usable`.
            if usable_live >= usable {
                return Forecast::Hit {
                    step: 1,
                    event: Event::Exhausted,
                };
            }
            let need = usable - usable_live;
            let mut seen = 0u128;
            for (i, c) in conflicting_live.iter().enumerate() {
                if *c {
                    seen += 1;
                    if seen == need {
                        return Forecast::Hit {
                            step: i as u128 + 2,
                            event: Event::Exhausted,
                        };
                    }
                }
            }
            Forecast::Never
        }
    }
}

/// Constant fleet, next-fit, conflicts not skipped. In the cursor's first pass over the pool a
/// block is free unless it was live at the start and not yet released: the initial block of
/// age rank r (1 = oldest) is released after allocation r, so at distance x it is free iff
/// r <= allocations made before x.
fn replace_sequential(p: &Prepared, cursor: u128) -> Forecast {
    let n = p.space.len();
    let mut live: Vec<(u128, u128)> = p
        .live
        .iter()
        .enumerate()
        .map(|(i, b)| ((b + n - cursor) % n, i as u128 + 1))
        .collect();
    live.sort();
    let rank_at = |x: u128| -> Option<u128> {
        live.binary_search_by_key(&x, |e| e.0)
            .ok()
            .map(|i| live[i].1)
    };
    let union = p.union_from(cursor);
    if union.is_empty() {
        return Forecast::Never;
    }
    let mut skipped: u128 = 0;
    let mut li = 0;
    for (lo, hi) in union {
        // Account for live blocks before this run.
        while li < live.len() && live[li].0 < lo {
            let (x, r) = live[li];
            if r > x - skipped {
                skipped += 1;
            }
            li += 1;
        }
        let mut x = lo;
        while x <= hi {
            let made = x - skipped;
            match rank_at(x) {
                Some(r) if r > made => {
                    skipped += 1;
                    li += 1;
                    x += 1;
                }
                _ => {
                    let block = (x + cursor) % n;
                    return Forecast::Hit {
                        step: made + 1,
                        event: Event::Overlap {
                            block,
                            conflict: p.conflict_of(block).unwrap_or(0),
                        },
                    };
                }
            }
        }
    }
    while li < live.len() {
        let (x, r) = live[li];
        if r > x - skipped {
            skipped += 1;
        }
        li += 1;
    }
    // Every run was passed while its blocks were still held: nothing in the first pass.
    Forecast::NotWithin(n - skipped)
}

/// Constant fleet, first-fit, conflicts not skipped. With N live blocks the lowest free block is
/// always among the lowest N+1; after N steps every initial block is gone and the allocator
/// rotates through exactly those N+1 blocks, so 2N+1 steps decide it. This case is stepped
/// (cheaply: only the live set is kept) rather than solved in closed form.
fn replace_lowest(p: &Prepared) -> Forecast {
    let mut live: BTreeSet<u128> = p.live.iter().copied().collect();
    let mut queue: VecDeque<u128> = p.live.iter().copied().collect();
    let limit = 2 * live.len() as u128 + 2;
    for step in 1..=limit {
        let mut b = 0u128;
        for &l in &live {
            if l == b {
                b += 1;
            } else if l > b {
                break;
            }
        }
        if let Some(c) = p.conflict_of(b) {
            return Forecast::Hit {
                step,
                event: Event::Overlap {
                    block: b,
                    conflict: c,
                },
            };
        }
        live.insert(b);
        queue.push_back(b);
        if let Some(old) = queue.pop_front() {
            live.remove(&old);
        }
    }
    Forecast::Never
}

/// Brute force: perform up to `max_steps` allocations one by one over a bitmap of every block.
/// Meant for small pools (tests); the bitmap has one entry per block.
pub fn simulate(m: &PoolModel, max_steps: u128) -> Result<Forecast, ForecastError> {
    let p = Prepared::new(m)?;
    let n = usize::try_from(p.space.len()).expect("simulate is for small pools");
    let conflict: Vec<Option<usize>> = (0..n as u128).map(|b| p.conflict_of(b)).collect();
    let mut used = vec![false; n];
    let mut queue: VecDeque<usize> = VecDeque::new();
    for &b in &p.live {
        used[b as usize] = true;
        queue.push_back(b as usize);
    }
    let mut cursor = (m.cursor % n as u128) as usize;
    for step in 1..=max_steps {
        let start = match m.order {
            Order::Sequential => cursor,
            Order::LowestFree => 0,
        };
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&b| !(used[b] || (m.skip_conflicts && conflict[b].is_some())));
        let Some(b) = pick else {
            return Ok(Forecast::Hit {
                step,
                event: Event::Exhausted,
            });
        };
        if let Some(c) = conflict[b] {
            return Ok(Forecast::Hit {
                step,
                event: Event::Overlap {
                    block: b as u128,
                    conflict: c,
                },
            });
        }
        used[b] = true;
        queue.push_back(b);
        cursor = (b + 1) % n;
        if m.release == Release::OldestFirst {
            if let Some(old) = queue.pop_front() {
                used[old] = false;
            }
        }
    }
    Ok(Forecast::NotWithin(max_steps))
}
