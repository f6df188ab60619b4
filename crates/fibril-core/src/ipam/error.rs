//! Everything IPAM refuses, each with the ranges and counts needed to act on it.

use std::fmt;

use super::overlap::Overlap;
use super::pool::RefusedRun;
use super::types::{CidrError, NativeRoutingCidr, NodeName, PodCidr, PoolCidr};

/// An IPAM refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// A pool, block or pod CIDR overlaps something on the node or in the cluster.
    #[error(
        "refused: {}. Pod routes for it would take traffic meant for those ranges, and that \
         traffic would be lost (seed 000): choose a pod range clear of them",
        List(overlaps)
    )]
    Overlaps {
        /// Every overlap, each naming both ranges.
        overlaps: Vec<Overlap>,
    },

    /// No pool range given.
    #[error("the cluster pool has no ranges")]
    NoPool,

    /// The pool ranges mix IPv4 and IPv6.
    #[error("cluster pool ranges mix IPv4 and IPv6: {first} and {other}")]
    MixedFamilies {
        /// The first range, which sets the family.
        first: PoolCidr,
        /// A range of the other family.
        other: PoolCidr,
    },

    /// Two pool ranges overlap, so a block could be handed out twice.
    #[error("cluster pool ranges {a} and {b} overlap")]
    PoolsOverlap {
        /// One range.
        a: PoolCidr,
        /// The other.
        b: PoolCidr,
    },

    /// The block size does not fit a pool range.
    #[error(
        "node mask /{mask} is outside pool {pool}: it must be between /{} and /{max}",
        pool.net().prefix_len()
    )]
    MaskOutsidePool {
        /// The range.
        pool: PoolCidr,
        /// The block size.
        mask: u8,
        /// The longest block size that still leaves an address for a pod.
        max: u8,
    },

    /// Every block is held or refused.
    #[error(
        "cluster pool {} has no free /{mask} block for node {node}: {total} blocks, {held} held \
         by nodes, {} refused by overlap checks{}",
        List(pools),
        refused_blocks(refused),
        first_refusal(refused)
    )]
    PoolExhausted {
        /// The pool ranges.
        pools: Vec<PoolCidr>,
        /// The block size.
        mask: u8,
        /// The node that asked.
        node: NodeName,
        /// How many blocks the pool has.
        total: u128,
        /// How many are held.
        held: u128,
        /// The blocks skipped because they overlap something.
        refused: Vec<RefusedRun>,
    },

    /// The node already holds a block that is not one of the pool's (the pool was changed).
    #[error(
        "node {node} holds block {block}, which is not a /{mask} block of cluster pool {}: \
         release it and claim again (were the pool ranges or the node mask changed?)",
        List(pools)
    )]
    HeldBlockOutsidePool {
        /// The node.
        node: NodeName,
        /// Its block.
        block: PodCidr,
        /// The pool ranges.
        pools: Vec<PoolCidr>,
        /// The block size.
        mask: u8,
    },

    /// Optimistic concurrency: the pool state changed since it was read.
    #[error(
        "the pool state changed underneath (version {expected} expected, {found} found): \
         re-read it and claim again, as on HTTP 409 Conflict"
    )]
    VersionConflict {
        /// The version the update was computed from.
        expected: u64,
        /// The version the store holds.
        found: u64,
    },

    /// kubernetes mode: the node has no `spec.podCIDR` yet.
    #[error(
        "node {node} has no spec.podCIDR: in ipam mode kubernetes the controller manager \
         assigns it (--allocate-node-cidrs); use ipam mode cluster-pool otherwise"
    )]
    NoPodCidr {
        /// The node.
        node: NodeName,
    },

    /// kubernetes mode: `spec.podCIDR` is not a CIDR.
    #[error("node {node} spec.podCIDR: {error}")]
    InvalidPodCidr {
        /// The node.
        node: NodeName,
        /// What is wrong with it.
        error: CidrError,
    },

    /// Native routing: the pod range lies outside the native-routing CIDR.
    #[error(
        "pod CIDR {pod_cidr} of node {node} is not inside nativeRoutingCidr {native}: traffic \
         from those pods would be SNATed and bypass encryption and policy (seed 002)"
    )]
    NotNativelyRoutable {
        /// The node.
        node: NodeName,
        /// Its pod range.
        pod_cidr: PodCidr,
        /// The configured native-routing CIDR.
        native: NativeRoutingCidr,
    },

    /// The block leaves no address for a pod once network, gateway and broadcast are taken.
    #[error(
        "block {block} has no address for pods: the network address, the gateway and (IPv4) \
         the broadcast address take all of it"
    )]
    BlockTooSmall {
        /// The block.
        block: PodCidr,
    },

    /// Every pod address of the block is in use.
    #[error(
        "block {block} is exhausted: {used} used, {free} free of {total} pod addresses (the \
         network, gateway and broadcast addresses are never handed out)"
    )]
    BlockExhausted {
        /// The block.
        block: PodCidr,
        /// Addresses held.
        used: u128,
        /// Addresses free (zero).
        free: u128,
        /// Addresses pods can have.
        total: u128,
    },
}

/// `a, b, c` for a list of displayable things.
struct List<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

fn refused_blocks(runs: &[RefusedRun]) -> u128 {
    runs.iter().map(|r| r.blocks).sum()
}

fn first_refusal(runs: &[RefusedRun]) -> String {
    match runs.first().and_then(|r| r.overlaps.first()) {
        Some(o) => format!(" (e.g. {o})"),
        None => String::new(),
    }
}

/// Why a persisted allocator state cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Not JSON, or not of the expected shape; names the field path and position.
    #[error("IPAM state: {path}: {source}")]
    Syntax {
        /// The field path (`allocations[2].ip`), `.` for the whole document.
        path: String,
        /// The decoder's message, with line and column.
        source: serde_json::Error,
    },
    /// No `version` field.
    #[error("IPAM state has no version field: refusing to guess its format")]
    MissingVersion,
    /// A version this build does not know.
    #[error(
        "IPAM state has version {found}, this fibril reads only version {supported}: it was \
         written by another fibril release"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: serde_json::Value,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// Well-formed, but the allocations contradict each other or the block.
    #[error("IPAM state {field}: {message}")]
    Inconsistent {
        /// The offending entry (`allocations[3].ip`).
        field: String,
        /// What is wrong.
        message: String,
    },
}
