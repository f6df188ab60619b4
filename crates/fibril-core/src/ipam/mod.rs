//! IPAM: which pod ranges a node may use, and which pod gets which address.
//!
//! This module owns, as pure logic with no I/O:
//! - the newtypes for the ranges and names involved ([`PodCidr`], [`PoolCidr`],
//!   [`ServiceCidr`], [`NativeRoutingCidr`], [`NodeName`]; container ids and interface names are
//!   [`crate::cni_api`]'s, so an [`Owner`] converts to and from the CNI attachment key);
//! - the overlap checks every pool and block must pass before it is used ([`OverlapCheck`],
//!   seed 000);
//! - cluster-pool block claiming with optimistic concurrency ([`ClusterPool`], [`PoolState`]);
//! - the kubernetes-mode check of `node.spec.podCIDR` ([`check_node_pod_cidr`]);
//! - the per-node address allocator and its persisted form ([`Allocator`], seed 002's
//!   duplicate IPs).
//!
//! The agent does the I/O around it: reads routes and addresses with netlink, reads and
//! writes the pool object through the API, persists allocator state atomically.

mod allocator;
mod error;
mod kubernetes;
mod overlap;
mod pool;
mod types;

pub use allocator::{
    Allocated, Allocator, IpamStats, Owner, PersistedAllocation, PersistedAllocator, Released,
    PERSIST_VERSION,
};
pub use error::{IpamError, PersistError};
pub use kubernetes::check_node_pod_cidr;
pub use overlap::{
    Candidate, CandidateKind, NodeSubnet, Overlap, OverlapCheck, OverlapSource, Reserved, RouteInfo,
};
pub use pool::{
    BlockRelease, Claim, ClusterPool, PoolProblem, PoolState, PoolStats, PoolUpdate, RefusedRun,
    MAX_MASK_V4, MAX_MASK_V6,
};
pub use types::{
    parse_cidr, CidrError, NameError, NativeRoutingCidr, NodeName, PodCidr, PoolCidr, ServiceCidr,
};
