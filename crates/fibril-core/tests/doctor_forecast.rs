//! The pool forecast against a brute-force simulation of every allocation.

use fibril_core::doctor::forecast::{
    forecast, simulate, BlockSpace, Event, Forecast, Order, PoolModel, Release,
};
use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4(a: u32, prefix: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), prefix).unwrap().trunc())
}

/// The example: a /8 cut into /24s, cursor well before 10.8.1.0/24.
#[test]
fn forecast_finds_block_2049_in_a_slash_8() {
    let m = PoolModel {
        pools: vec![net("10.0.0.0/8")],
        mask: 24,
        order: Order::Sequential,
        release: Release::OldestFirst,
        skip_conflicts: false,
        conflicts: vec![net("10.8.1.0/26")],
        live: (1290..1305).collect(),
        cursor: 1305,
    };
    let f = forecast(&m).unwrap();
    assert_eq!(
        f,
        Forecast::Hit {
            step: 2049 - 1305 + 1,
            event: Event::Overlap {
                block: 2049,
                conflict: 0
            }
        }
    );
    let space = BlockSpace::new(&m.pools, 24).unwrap();
    assert_eq!(space.cidr(2049).unwrap(), net("10.8.1.0/24"));
    assert_eq!(space.index_of(&net("10.8.1.0/24")), Some(2049));
    // The brute force agrees on the full /8 too (65536 blocks, 745 steps).
    assert_eq!(simulate(&m, 800).unwrap(), f);
}

#[test]
fn forecast_ipv6_pool_is_arithmetic() {
    // 2^32 blocks: the forecast must not enumerate them.
    let m = PoolModel {
        pools: vec![net("fd00::/32")],
        mask: 64,
        order: Order::Sequential,
        release: Release::Never,
        skip_conflicts: false,
        conflicts: vec![net("fd00:0:1::/48")],
        live: vec![0, 1, 2],
        cursor: 3,
    };
    let f = forecast(&m).unwrap();
    assert_eq!(
        f,
        Forecast::Hit {
            step: 65536 - 3 + 1,
            event: Event::Overlap {
                block: 65536,
                conflict: 0
            }
        }
    );
}

#[test]
fn forecast_rejects_bad_models() {
    let mut m = PoolModel {
        pools: vec![net("10.0.0.0/16")],
        mask: 8,
        order: Order::Sequential,
        release: Release::Never,
        skip_conflicts: false,
        conflicts: vec![],
        live: vec![],
        cursor: 0,
    };
    assert!(forecast(&m).is_err());
    m.mask = 24;
    m.pools.push(net("fd00::/64"));
    assert!(forecast(&m).is_err());
    m.pools.pop();
    m.live = vec![256];
    assert!(forecast(&m).is_err());
}

fn model() -> impl Strategy<Value = PoolModel> {
    (24u8..=28)
        .prop_flat_map(|mask| {
            let pool = (0u32..256, (mask.saturating_sub(5)).max(19)..=mask)
                .prop_map(|(third, p)| v4(0x0a01_0000 | (third << 8), p));
            let conflict = (0u32..65536, 20u8..=30).prop_map(|(low, p)| v4(0x0a01_0000 | low, p));
            (
                Just(mask),
                prop::collection::vec(pool, 1..=3),
                prop::collection::vec(conflict, 0..=4),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(any::<u16>(), 0..=40),
                any::<u16>(),
            )
        })
        .prop_map(
            |(mask, pools, conflicts, seq, replace, skip, live_seeds, cursor)| {
                let n = BlockSpace::new(&pools, mask).unwrap().len();
                let mut live = Vec::new();
                for s in live_seeds {
                    let b = u128::from(s) % n;
                    if !live.contains(&b) {
                        live.push(b);
                    }
                }
                PoolModel {
                    pools,
                    mask,
                    order: if seq {
                        Order::Sequential
                    } else {
                        Order::LowestFree
                    },
                    release: if replace {
                        Release::OldestFirst
                    } else {
                        Release::Never
                    },
                    skip_conflicts: skip,
                    conflicts,
                    live,
                    cursor: u128::from(cursor) % n,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For several pools, mask sizes, reserved sets, live sets, orders and release policies,
    /// the arithmetic forecast equals what performing every allocation shows.
    #[test]
    fn forecast_matches_brute_force(m in model()) {
        let n = BlockSpace::new(&m.pools, m.mask).unwrap().len();
        let f = forecast(&m).unwrap();
        match f {
            Forecast::Hit { step, .. } => {
                prop_assert_eq!(simulate(&m, step + 3).unwrap(), f, "model {:?}", m);
            }
            Forecast::Never => {
                let horizon = 4 * n + 2 * m.live.len() as u128 + 10;
                prop_assert_eq!(simulate(&m, horizon).unwrap(), Forecast::NotWithin(horizon), "model {:?}", m);
            }
            Forecast::NotWithin(k) => {
                prop_assert!(k > 0);
                prop_assert_eq!(simulate(&m, k).unwrap(), Forecast::NotWithin(k), "model {:?}", m);
            }
        }
    }
}
