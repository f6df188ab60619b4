//! Property tests of block claiming and overlap checks against brute force, and of claiming
//! under optimistic concurrency with arbitrary interleavings of agents.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use fibril_core::ipam::{
    Candidate, ClusterPool, IpamError, NodeName, OverlapCheck, PodCidr, PoolCidr, PoolState,
    Reserved, RouteInfo,
};
use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;

fn v4(addr: u32, prefix: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap().trunc()
}

/// Inclusive address bounds, computed with ipnet alone (not fibril's number line).
fn bounds(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn brute_overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    let (a0, a1) = bounds(a);
    let (b0, b1) = bounds(b);
    a0 <= b1 && b0 <= a1
}

fn node(i: usize) -> NodeName {
    format!("node-{i}").parse().unwrap()
}

/// A range somewhere in or near 10.0.0.0/16, where the pools are.
fn range_near_pools() -> impl Strategy<Value = Ipv4Net> {
    (0u32..(1 << 17), 12u8..=30).prop_map(|(off, p)| v4(0x0a00_0000 + off, p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// `check` reports exactly the ranges that share an address with the candidate, except
    /// the default route and fibril's own routes.
    #[test]
    fn overlap_check_matches_brute_force(
        cand in range_near_pools(),
        routes in prop::collection::vec((range_near_pools(), any::<bool>(), prop::bool::weighted(0.1)), 0..8),
        reserved in prop::collection::vec(range_near_pools(), 0..4),
    ) {
        let mut c = OverlapCheck::new(node(0));
        for (dst, owned, default) in &routes {
            let dst = if *default { v4(0, 0) } else { *dst };
            let mut r = RouteInfo::new(IpNet::V4(dst)).dev("eth0");
            r.owned_by_fibril = *owned;
            c.routes.push(r);
        }
        for (i, r) in reserved.iter().enumerate() {
            c.reserved.push(Reserved { cidr: IpNet::V4(*r), origin: format!("r{i}") });
        }
        let got: Vec<IpNet> = c.check(Candidate::pool(IpNet::V4(cand)))
            .iter()
            .map(|o| o.source.range())
            .collect();
        let mut want = Vec::new();
        for (dst, owned, default) in &routes {
            if !*default && !*owned && brute_overlap(&cand, dst) {
                want.push(IpNet::V4(*dst));
            }
        }
        for r in &reserved {
            if brute_overlap(&cand, r) {
                want.push(IpNet::V4(*r));
            }
        }
        prop_assert_eq!(got, want);
    }

    /// `claim_block` takes the first block, in pool order, that is neither held nor
    /// overlapping; the refused runs account for exactly the free blocks skipped; exhaustion
    /// comes exactly when there is no such block.
    #[test]
    fn claim_matches_brute_force(
        p1 in 20u8..=24,
        p2 in prop::option::of(20u8..=24),
        extra in 0u8..=4,
        reserved in prop::collection::vec(range_near_pools(), 0..5),
        held_bits in any::<u64>(),
    ) {
        let mut pools = vec![v4(0x0a00_8000, p1)];
        if let Some(p2) = p2 {
            pools.push(v4(0x0a00_0000, p2));
        }
        let mask = pools.iter().map(|p| p.prefix_len()).max().unwrap() + extra;
        let pool = ClusterPool::new(
            pools.iter().map(|p| PoolCidr::new(IpNet::V4(*p)).unwrap()).collect(),
            mask,
        ).unwrap();
        let blocks: Vec<Ipv4Net> = pools.iter().flat_map(|p| p.subnets(mask).unwrap()).collect();
        prop_assert_eq!(pool.block_count(), blocks.len() as u128);

        let mut state = PoolState { version: 7, blocks: BTreeMap::new() };
        for (i, b) in blocks.iter().enumerate().take(64) {
            if held_bits & (1 << i) != 0 {
                state.blocks.insert(PodCidr::new(IpNet::V4(*b)).unwrap(), node(1000 + i));
            }
        }
        let mut checks = OverlapCheck::new(node(0));
        for (i, r) in reserved.iter().enumerate() {
            checks.reserved.push(Reserved { cidr: IpNet::V4(*r), origin: format!("r{i}") });
        }

        let held = |b: &Ipv4Net| state.blocks.contains_key(&PodCidr::new(IpNet::V4(*b)).unwrap());
        let refused = |b: &Ipv4Net| reserved.iter().any(|r| brute_overlap(b, r));
        let want = blocks.iter().position(|b| !held(b) && !refused(b));
        let skipped = blocks[..want.unwrap_or(blocks.len())]
            .iter()
            .filter(|b| !held(b) && refused(b))
            .count() as u128;

        match (pool.claim_block(&state, &node(0), &checks), want) {
            (Ok(claim), Some(i)) => {
                prop_assert_eq!(claim.block.net(), IpNet::V4(blocks[i]));
                prop_assert_eq!(claim.refused.iter().map(|r| r.blocks).sum::<u128>(), skipped);
                for run in &claim.refused {
                    prop_assert!(!run.overlaps.is_empty());
                    prop_assert!(run.first <= run.last);
                }
                let update = claim.update.expect("a new claim writes");
                prop_assert_eq!(update.expected_version, 7);
                let next = state.apply(&update).unwrap();
                prop_assert_eq!(next.version, 8);
                prop_assert_eq!(next.holder(&claim.block), Some(&node(0)));
                prop_assert_eq!(next.blocks.len(), state.blocks.len() + 1);
            }
            (Err(IpamError::PoolExhausted { total, held: h, refused: runs, mask: m, .. }), None) => {
                prop_assert_eq!(total, blocks.len() as u128);
                prop_assert_eq!(h, state.blocks.len() as u128);
                prop_assert_eq!(m, mask);
                prop_assert_eq!(runs.iter().map(|r| r.blocks).sum::<u128>(), skipped);
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!("got {got:?}, brute force says {want:?}")));
            }
        }
    }
}

/// One agent's view during a claim.
#[derive(Default)]
struct Agent {
    snapshot: Option<PoolState>,
    pending: Option<fibril_core::ipam::Claim>,
    /// The block the agent was told it holds (its write succeeded).
    holds: Option<PodCidr>,
}

#[derive(Clone, Debug)]
enum Step {
    Read(usize),
    Compute(usize),
    Write(usize),
    Release(usize),
}

fn step(agents: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..agents).prop_map(Step::Read),
        3 => (0..agents).prop_map(Step::Compute),
        3 => (0..agents).prop_map(Step::Write),
        1 => (0..agents).prop_map(Step::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Agents read, compute and write in any interleaving; the store's version check is the
    /// only coordination. No block is ever held by two agents, and every agent that was told
    /// it holds a block really does.
    #[test]
    fn concurrent_claims_never_share_a_block(
        (agents, steps) in (2usize..7).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..120))),
    ) {
        // Four /28 blocks for up to six agents: contention and exhaustion both happen.
        let pool = ClusterPool::new(vec!["10.244.0.0/26".parse().unwrap()], 28).unwrap();
        let mut store = PoolState::default();
        let mut views: Vec<Agent> = (0..agents).map(|_| Agent::default()).collect();
        for s in &steps {
            match *s {
                Step::Read(i) => views[i].snapshot = Some(store.clone()),
                Step::Compute(i) => {
                    let checks = OverlapCheck::new(node(i));
                    let a = &mut views[i];
                    if let Some(snap) = &a.snapshot {
                        a.pending = pool.claim_block(snap, &node(i), &checks).ok();
                    }
                }
                Step::Write(i) => {
                    let a = &mut views[i];
                    if let Some(claim) = a.pending.take() {
                        match &claim.update {
                            None => a.holds = Some(claim.block),
                            Some(u) => match store.apply(u) {
                                Ok(next) => {
                                    store = next;
                                    a.holds = Some(claim.block);
                                }
                                Err(IpamError::VersionConflict { expected, found }) => {
                                    prop_assert!(expected < found);
                                }
                                Err(e) => return Err(TestCaseError::fail(e.to_string())),
                            },
                        }
                        a.snapshot = None;
                    }
                }
                Step::Release(i) => {
                    // A release is a read-modify-write of its own, retried until it lands.
                    if let Some(r) = store.release_block(&node(i)) {
                        store = store.apply(&r.update).unwrap();
                    }
                    let a = &mut views[i];
                    *a = Agent::default();
                }
            }
            // The store: at most one block per node.
            let mut per_node: BTreeMap<&NodeName, usize> = BTreeMap::new();
            for n in store.blocks.values() {
                *per_node.entry(n).or_default() += 1;
            }
            prop_assert!(per_node.values().all(|&c| c == 1), "{:?}", store.blocks);
            // The agents: what each believes is what the store says, so no two share.
            let mut believed = BTreeSet::new();
            for (i, a) in views.iter().enumerate() {
                if let Some(b) = a.holds {
                    prop_assert_eq!(store.holder(&b), Some(&node(i)));
                    prop_assert!(believed.insert(b), "{} believed held twice", b);
                }
            }
        }
    }
}
