//! cluster-pool mode through the API: the agent's I/O around [`ClusterPool::claim_block`].
//!
//! The claims live in one [`FibrilIPPool`] object ([`DEFAULT_POOL_NAME`]). A claim reads it,
//! computes the block with the pure logic, and writes the whole object back with the
//! `resourceVersion` it read. If another agent wrote in between, the API server answers 409
//! Conflict and the claim starts over from a fresh read; every conflict is counted and logged,
//! so a test can see that racing claims really met. The first agent creates the pool object
//! from its configuration; an object that describes another pool is refused, naming both.
//!
//! After the claim, the node's [`FibrilNode`] records the block for its peers.

use fibril_core::ipam::{
    ClusterPool, IpamError, NodeName, OverlapCheck, PodCidr, PoolState, PoolStats, RefusedRun,
};
use fibril_core::kinds::{FibrilIPPool, FibrilNode, PoolObjectError, DEFAULT_POOL_NAME};
use kube::api::{Api, PostParams};

/// How many times a claim re-reads and retries after 409 Conflict before giving up. Each
/// conflict means another agent's write went through, so with N agents racing, N - 1
/// retries are the worst case; this leaves room for far more nodes than a lab has.
pub const MAX_CLAIM_ATTEMPTS: u32 = 256;

/// Why no block could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum PoolClaimError {
    /// The pure logic refused: overlaps, exhaustion, a held block outside the pool.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The pool object does not match the configuration, or has no usable version.
    #[error(transparent)]
    Object(#[from] PoolObjectError),
    /// The API server failed a request.
    #[error("{op} FibrilIPPool/{name}: {source}")]
    Api {
        op: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Conflicts on every attempt.
    #[error(
        "FibrilIPPool/{name} changed under every one of {attempts} claim attempts (409 Conflict \
         each time): too many agents claiming at once; the agent will retry when restarted"
    )]
    TooManyConflicts { name: String, attempts: u32 },
}

/// A block held by this node.
#[derive(Clone, Debug)]
pub struct PoolClaim {
    /// The block.
    pub block: PodCidr,
    /// The pool object it is recorded in.
    pub pool_name: String,
    /// Whether this call claimed it (false: the node already held it).
    pub newly_claimed: bool,
    /// 409 Conflicts met (and retried) on the way.
    pub conflicts: u32,
    /// Blocks skipped because they overlap something on the node.
    pub refused: Vec<RefusedRun>,
    /// Block usage after the claim.
    pub stats: PoolStats,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn api_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> PoolClaimError + 'a {
    move |source| PoolClaimError::Api {
        op,
        name: name.to_string(),
        source: Box::new(source),
    }
}

/// The claims recorded in the cluster (none when the pool object does not exist yet).
pub async fn read_state(client: &kube::Client) -> Result<Option<PoolState>, PoolClaimError> {
    let api: Api<FibrilIPPool> = Api::all(client.clone());
    let name = DEFAULT_POOL_NAME;
    match api.get_opt(name).await.map_err(api_err("reading", name))? {
        Some(obj) => Ok(Some(obj.pool_state()?)),
        None => Ok(None),
    }
}

/// Claims `node`'s block from `pool` (or finds the one it holds), retrying on 409 Conflict.
/// `preferred` is the block the node's persisted allocations are in, taken back if the
/// cluster no longer records it and it is free (see
/// [`ClusterPool::claim_block_preferring`]).
pub async fn claim(
    client: &kube::Client,
    pool: &ClusterPool,
    node: &NodeName,
    checks: &OverlapCheck,
    preferred: Option<PodCidr>,
) -> Result<PoolClaim, PoolClaimError> {
    let api: Api<FibrilIPPool> = Api::all(client.clone());
    let name = DEFAULT_POOL_NAME;
    let mut conflicts = 0u32;
    for _ in 0..MAX_CLAIM_ATTEMPTS {
        let obj = match api.get_opt(name).await.map_err(api_err("reading", name))? {
            Some(o) => o,
            None => match api
                .create(&PostParams::default(), &FibrilIPPool::new(name, pool))
                .await
            {
                Ok(o) => {
                    tracing::info!(pool = %name, cidrs = ?pool.cidrs(), mask = pool.mask(), "created the cluster pool object");
                    o
                }
                Err(e) if is_conflict(&e) => {
                    // Another agent created it first: read theirs.
                    conflicts += 1;
                    continue;
                }
                Err(e) => return Err(api_err("creating", name)(e)),
            },
        };
        obj.check_matches(pool)?;
        let state = obj.pool_state()?;
        let c = pool.claim_block_preferring(&state, node, checks, preferred)?;
        let Some(update) = &c.update else {
            return Ok(PoolClaim {
                block: c.block,
                pool_name: name.to_string(),
                newly_claimed: false,
                conflicts,
                refused: c.refused,
                stats: pool.stats(&state),
            });
        };
        let next = obj.with_update(update)?;
        match api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => {
                return Ok(PoolClaim {
                    block: c.block,
                    pool_name: name.to_string(),
                    newly_claimed: true,
                    conflicts,
                    refused: c.refused,
                    stats: pool.stats(&update.state),
                })
            }
            Err(e) if is_conflict(&e) => {
                conflicts += 1;
                tracing::info!(pool = %name, block = %c.block, conflicts, "claim conflicted with another agent's write (409); reading the pool again");
            }
            Err(e) => return Err(api_err("writing", name)(e)),
        }
    }
    Err(PoolClaimError::TooManyConflicts {
        name: name.to_string(),
        attempts: MAX_CLAIM_ATTEMPTS,
    })
}

/// Gives back every block `node` holds (uninstalling a node). `None` if it held none.
pub async fn release(
    client: &kube::Client,
    node: &NodeName,
) -> Result<Option<Vec<PodCidr>>, PoolClaimError> {
    let api: Api<FibrilIPPool> = Api::all(client.clone());
    let name = DEFAULT_POOL_NAME;
    for _ in 0..MAX_CLAIM_ATTEMPTS {
        let Some(obj) = api.get_opt(name).await.map_err(api_err("reading", name))? else {
            return Ok(None);
        };
        let state = obj.pool_state()?;
        let Some(r) = state.release_block(node) else {
            return Ok(None);
        };
        let next = obj.with_update(&r.update)?;
        match api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => return Ok(Some(r.blocks)),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_err("writing", name)(e)),
        }
    }
    Err(PoolClaimError::TooManyConflicts {
        name: name.to_string(),
        attempts: MAX_CLAIM_ATTEMPTS,
    })
}

/// Makes the node's [`FibrilNode`] record `block` from pool `pool_name` (created if absent,
/// rewritten only if it records something else).
pub async fn record_node(
    client: &kube::Client,
    node: &NodeName,
    block: PodCidr,
    pool_name: &str,
) -> Result<(), kube::Error> {
    let api: Api<FibrilNode> = Api::all(client.clone());
    let want = FibrilNode::new(node, block, pool_name);
    loop {
        match api.get_opt(node.as_str()).await? {
            Some(cur) if cur.spec == want.spec => return Ok(()),
            Some(cur) => {
                let mut next = want.clone();
                next.metadata.resource_version = cur.metadata.resource_version.clone();
                match api
                    .replace(node.as_str(), &PostParams::default(), &next)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            None => match api.create(&PostParams::default(), &want).await {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e),
            },
        }
    }
}

/// Deletes the node's [`FibrilNode`] (absent is fine).
pub async fn forget_node(client: &kube::Client, node: &NodeName) -> Result<(), kube::Error> {
    let api: Api<FibrilNode> = Api::all(client.clone());
    match api.delete(node.as_str(), &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
