//! Seed 000: a pod pool that overlaps something outside the cluster, now or after churn.

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;

use crate::doctor::cidr::{contains, overlaps, parse_net};
use crate::doctor::finding::{Evidence, Finding, RuleId, Severity};
use crate::doctor::forecast::{self, BlockSpace, Event, Forecast, Order, PoolModel, Release};
use crate::doctor::parse::cilium::invalid_value;
use crate::doctor::parse::host::is_virtual_dev;
use crate::doctor::Ctx;

/// A pod address range and where it is configured.
pub(crate) struct Pool {
    pub net: IpNet,
    pub evidence: Evidence,
    /// A cluster-pool pool (blocks are cut from it), rather than one node's CIDR.
    pub is_pool: bool,
}

/// Something a pod range must never overlap.
pub(crate) struct Conflict {
    pub net: IpNet,
    pub what: String,
    pub evidence: Evidence,
}

/// The cluster-pool pools and block size, when Cilium's config says cluster-pool.
pub(crate) fn cluster_pools(ctx: &Ctx<'_>, out: &mut Vec<Finding>) -> Option<(Vec<Pool>, u8)> {
    let s = ctx.cilium.as_ref()?;
    if !s.cluster_pool() {
        return None;
    }
    let mut pools = Vec::new();
    for (i, item) in s.pools.items().iter().enumerate() {
        let mut ev = s.pools.evidence.clone();
        if s.pools.value.is_array() && s.pools.explicit {
            ev.key = ev.key.map(|k| format!("{k}[{i}]"));
        }
        ev.value = if s.pools.explicit {
            item.clone()
        } else {
            ev.value.clone()
        };
        match parse_net(item) {
            Some(n) if n.prefix_len() > 0 || item.contains('/') => pools.push(Pool {
                net: n.trunc(),
                evidence: ev,
                is_pool: true,
            }),
            _ => out.push(invalid_value(&ev, &format!("{item:?} is not a CIDR"))),
        }
    }
    let mask = match s.mask.text().parse::<u8>() {
        Ok(m) => m,
        Err(_) => {
            out.push(invalid_value(
                &s.mask.evidence,
                "the mask size is not a number",
            ));
            return None;
        }
    };
    Some((pools, mask))
}

/// Every pod range: the cluster pools, plus node CIDRs that lie outside them.
fn pod_ranges(ctx: &Ctx<'_>, out: &mut Vec<Finding>) -> (Vec<Pool>, Option<u8>) {
    let (mut pools, mask) = match cluster_pools(ctx, out) {
        Some((p, m)) => (p, Some(m)),
        None => (Vec::new(), None),
    };
    let pool_nets: Vec<IpNet> = pools.iter().map(|p| p.net).collect();
    for n in &ctx.nodes {
        for (c, ev) in &n.pod_cidrs {
            if pool_nets.iter().any(|p| contains(p, c)) {
                continue;
            }
            pools.push(Pool {
                net: *c,
                evidence: ev.clone(),
                is_pool: false,
            });
        }
    }
    (pools, mask)
}

fn is_pod_route(dst: &IpNet, pools: &[Pool], mask: Option<u8>, ctx: &Ctx<'_>) -> bool {
    let node_block = ctx
        .nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter())
        .any(|(c, _)| contains(c, dst));
    // Without a node export, a route of exactly one block inside the pool is taken to be a peer
    // node's pod route (autoDirectNodeRoutes, cloud route tables).
    let block_shaped = mask.is_some_and(|m| dst.prefix_len() == m)
        && pools.iter().any(|p| p.is_pool && contains(&p.net, dst));
    node_block || block_shaped
}

/// Routes, node subnets and addresses, Service IPs and reserved ranges.
pub(crate) fn conflicts(ctx: &Ctx<'_>, pools: &[Pool], mask: Option<u8>) -> Vec<Conflict> {
    let mut out: Vec<Conflict> = Vec::new();
    for nr in &ctx.routes {
        for r in &nr.routes {
            let Some(dst) = r.dst else { continue };
            if r.dev.as_deref().is_some_and(is_virtual_dev) || is_pod_route(&dst, pools, mask, ctx)
            {
                continue;
            }
            if out.iter().any(|c| c.net == dst) {
                continue;
            }
            let what = if r.scope.as_deref() == Some("link") && r.gateway.is_none() {
                format!("node subnet {} on node {}", r.describe(), nr.node)
            } else {
                format!("route {} on node {}", r.describe(), nr.node)
            };
            out.push(Conflict {
                net: dst,
                what,
                evidence: Evidence::new(nr.file.clone(), r.describe())
                    .key(format!("[{}].dst", r.index)),
            });
        }
    }
    for n in &ctx.nodes {
        for (ip, ev) in &n.internal_ips {
            let net = IpNet::from(*ip);
            if out.iter().any(|c| contains(&c.net, &net)) {
                continue;
            }
            out.push(Conflict {
                net,
                what: format!("node address {ip} of {}", n.name),
                evidence: ev.clone(),
            });
        }
    }
    for o in ctx.objects.iter().filter(|o| o.kind() == "Service") {
        let ips: Vec<(String, String)> = match o
            .value
            .pointer("/spec/clusterIPs")
            .and_then(|v| v.as_array())
        {
            Some(a) => a
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    v.as_str()
                        .map(|s| (s.to_string(), format!("spec.clusterIPs[{i}]")))
                })
                .collect(),
            None => o
                .value
                .pointer("/spec/clusterIP")
                .and_then(|v| v.as_str())
                .map(|s| vec![(s.to_string(), "spec.clusterIP".to_string())])
                .unwrap_or_default(),
        };
        for (ip, path) in ips {
            let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            out.push(Conflict {
                net: IpNet::from(addr),
                what: format!("Service IP {ip} of {}", o.display()),
                evidence: o.evidence(&path, ip.clone()),
            });
        }
    }
    for (net, ev) in &ctx.reserved {
        out.push(Conflict {
            net: *net,
            what: format!("reserved {net}"),
            evidence: ev.clone(),
        });
    }
    out
}

pub(crate) fn check(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let (pools, mask) = pod_ranges(ctx, out);
    if pools.is_empty() {
        return;
    }
    let conflicts = conflicts(ctx, &pools, mask);
    overlap(ctx, &pools, &conflicts, out);
    if let Some(mask) = mask {
        pool_forecast(ctx, &pools, mask, &conflicts, out);
    }
}

fn overlap(ctx: &Ctx<'_>, pools: &[Pool], conflicts: &[Conflict], out: &mut Vec<Finding>) {
    for p in pools {
        for c in conflicts.iter().filter(|c| overlaps(&p.net, &c.net)) {
            let taken: Vec<String> = ctx
                .nodes
                .iter()
                .flat_map(|n| n.pod_cidrs.iter().map(move |(b, _)| (n, b)))
                .filter(|(_, b)| overlaps(b, &c.net))
                .map(|(n, b)| format!("{b} on {}", n.name))
                .collect();
            let kind = if p.is_pool { "pod pool" } else { "pod CIDR" };
            let mut msg = format!("{kind} {} overlaps {}", p.net, c.what);
            if !taken.is_empty() {
                msg.push_str(&format!("; already allocated: {}", taken.join(", ")));
            }
            out.push(
                Finding::new(RuleId::PodCidrOverlap, msg)
                    .evidence(p.evidence.clone())
                    .evidence(c.evidence.clone())
                    .why(format!(
                        "once a node's pod block covers {}, the node routes replies for those addresses to its pods instead of out of the node, and they are blackholed",
                        c.net
                    ))
                    .fix(if p.is_pool {
                        format!(
                            "choose a pod pool that overlaps nothing outside the cluster (e.g. set ipam.operator.clusterPoolIPv4PodCIDRList to a range outside {}), and pass such ranges to fibril as --reserved",
                            c.net
                        )
                    } else {
                        format!("move the node's pod CIDR off {}", c.net)
                    }),
            );
        }
    }
}

/// Allocation rate and release policy from the node export.
struct Churn {
    per_day: Option<f64>,
    newest: Option<DateTime<Utc>>,
    release: Release,
    basis: String,
}

fn pool_forecast(
    ctx: &Ctx<'_>,
    pools: &[Pool],
    mask: u8,
    conflicts: &[Conflict],
    out: &mut Vec<Finding>,
) {
    let pool_nets: Vec<IpNet> = pools.iter().filter(|p| p.is_pool).map(|p| p.net).collect();
    if pool_nets.is_empty() || ctx.inputs.nodes.is_none() {
        return;
    }
    let Ok(space) = BlockSpace::new(&pool_nets, mask) else {
        out.push(invalid_value(
            &pools[0].evidence,
            &format!("the pools cannot be cut into /{mask} blocks"),
        ));
        return;
    };
    // Live blocks, oldest first.
    let mut live: Vec<(Option<DateTime<Utc>>, u128, String)> = ctx
        .nodes
        .iter()
        .flat_map(|n| {
            n.pod_cidrs
                .iter()
                .filter_map(|(c, _)| space.index_of(c))
                .map(|i| (n.created, i, n.name.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    if live.is_empty() {
        return;
    }
    live.sort();
    let n = space.len();
    let (oldest_t, oldest_i) = (live[0].0, live[0].1);
    let (newest_t, newest_i) = (live[live.len() - 1].0, live[live.len() - 1].1);
    let span_blocks = (newest_i + n - oldest_i) % n;
    let churn = {
        let days = match (oldest_t, newest_t) {
            (Some(a), Some(b)) if b > a => Some((b - a).num_seconds() as f64 / 86_400.0),
            _ => None,
        };
        let release = if span_blocks + 1 > live.len() as u128 {
            Release::OldestFirst
        } else {
            Release::Never
        };
        let (per_day, basis) = match days {
            Some(d) if span_blocks > 0 => (
                Some(span_blocks as f64 / d),
                format!(
                    "{span_blocks} blocks allocated between the oldest ({}) and newest ({}) live node in {d:.1} days",
                    live[0].2,
                    live[live.len() - 1].2
                ),
            ),
            Some(d) => (
                Some((live.len() - 1) as f64 / d),
                format!("{} nodes created in {d:.1} days", live.len()),
            ),
            None => (None, "no creation timestamps to measure churn".to_string()),
        };
        Churn {
            per_day,
            newest: newest_t,
            release,
            basis,
        }
    };
    let relevant: Vec<&Conflict> = conflicts
        .iter()
        .filter(|c| pool_nets.iter().any(|p| overlaps(p, &c.net)))
        .collect();
    let model = PoolModel {
        pools: pool_nets.clone(),
        mask,
        order: Order::Sequential,
        release: churn.release,
        skip_conflicts: false,
        conflicts: relevant.iter().map(|c| c.net).collect(),
        live: live.iter().map(|l| l.1).collect(),
        cursor: (newest_i + 1) % n,
    };
    let Ok(Forecast::Hit { step, event }) = forecast::forecast(&model) else {
        return;
    };
    let what = match event {
        Event::Overlap { block, conflict } => format!(
            "block #{block} {} overlaps {}",
            space.cidr(block).map(|c| c.to_string()).unwrap_or_default(),
            relevant[conflict].what
        ),
        Event::Exhausted => format!("the pool ({n} blocks of /{mask}) is exhausted"),
    };
    let now = ctx.now.or(churn.newest);
    let (msg, severity) = match (churn.per_day, churn.newest, now) {
        (Some(rate), Some(newest), Some(now)) if rate > 0.0 => {
            let eta = newest + Duration::seconds((step as f64 / rate * 86_400.0) as i64);
            let days = (eta - now).num_seconds() as f64 / 86_400.0;
            if days > 5.0 * 365.0 {
                return;
            }
            let sev = if days <= 30.0 {
                Severity::Error
            } else if days <= 365.0 {
                Severity::Warning
            } else {
                Severity::Info
            };
            (
                format!(
                    "at {rate:.1} nodes/day, {what} in about {:.0} days (around {}, allocation {step} from now)",
                    days.max(0.0),
                    eta.format("%Y-%m-%d")
                ),
                sev,
            )
        }
        _ => (
            format!("{what} after {step} more node allocations (churn rate unknown)"),
            Severity::Info,
        ),
    };
    let mut f = Finding::new(RuleId::PodCidrForecast, msg)
        .severity(severity)
        .evidence(
            pools
                .iter()
                .find(|p| p.is_pool)
                .map(|p| p.evidence.clone())
                .unwrap_or_else(|| pools[0].evidence.clone()),
        )
        .evidence(
            Evidence::new(
                ctx.inputs
                    .nodes
                    .as_ref()
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                format!(
                    "{} live blocks, newest #{newest_i}; {}; {}",
                    live.len(),
                    churn.basis,
                    match churn.release {
                        Release::OldestFirst =>
                            "released blocks are not reused until the cursor wraps",
                        Release::Never => "no node has been released yet (growing fleet)",
                    }
                ),
            )
            .key("items[*].spec.ipam.podCIDRs"),
        );
    if let Event::Overlap { conflict, .. } = event {
        f = f.evidence(relevant[conflict].evidence.clone());
    }
    out.push(
        f.why("the allocator hands out blocks with a next-fit cursor, so every node replacement moves it one block on until it reaches a block that overlaps something outside the cluster")
            .fix(match event {
                Event::Overlap { .. } => "shrink the pod pool so it excludes the range (or move the range), and declare such ranges with --reserved so fibril refuses those blocks".to_string(),
                Event::Exhausted => "add a pool to the pool list or use a larger pool before the date above".to_string(),
            }),
    );
}
