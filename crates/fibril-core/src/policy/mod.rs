//! NetworkPolicy (`networking.k8s.io/v1`) compiled to what an identity-based datapath looks
//! up per packet. Pure: no I/O.
//!
//! - [`identity`]: security identities from security-relevant labels (pod labels without
//!   bookkeeping ones, plus the namespace's name and labels), reserved identities, CIDR
//!   identities for ipBlock prefixes; a deterministic allocator.
//! - [`selector`]: label selectors with Kubernetes semantics, validated.
//! - [`normalize`]: NetworkPolicy validation and defaults (policyTypes, empty lists, TCP).
//! - [`compile`]: cluster state + policies → [`ipcache`] and per-endpoint [`map`]s, with
//!   revisions, problems and warnings.
//! - [`ports`]: port ranges as aligned prefixes, for an LPM policy map.
//! - [`eval`]: the reference model of the datapath's lookups (and their order).
//! - [`dns`]: seed 003's warning: egress isolation that leaves no way to DNS.
//! - [`conformance`]: the upstream conformance model and case files, their parser and a
//!   runner shared by the reference evaluation and the lab's `fibril connectivity netpol`.
//!
//! # The datapath contract
//!
//! - **Endpoints map**: pod IP → its identity (and the endpoint whose maps apply).
//! - **ipcache** (LPM on IPv4 prefixes) → [`ipcache::IpcacheEntry`]: the prefix's identity
//!   and, for ipBlocks matching pod and node addresses, a second, CIDR identity.
//! - **Policy map** per endpoint and direction, LPM on (identity, protocol, port prefix) →
//!   allow; [`map`] gives the bit layout. In a single BPF LPM trie for all endpoints, the key
//!   is prefixed by the endpoint and direction, always matched in full.
//! - **Lookup order**: see [`eval`]: the peer's identity, then its CIDR identity, then the
//!   wildcard; a miss in an isolated direction is a drop with reason "policy denied" and the
//!   endpoint's revision.
//! - Enforcement happens after service translation, on the backend address and port, at the
//!   source endpoint for egress and at the destination endpoint for ingress. A pod and its
//!   own node may always talk (an allow entry for [`identity::Identity::HOST`]).

pub mod cluster;
pub mod compile;
pub mod conformance;
pub mod dns;
pub mod eval;
pub mod identity;
pub mod ipcache;
pub mod map;
pub mod normalize;
pub mod ports;
pub mod selector;

pub use cluster::{
    ClusterState, ContainerPort, NamespaceInfo, NodeInfo, PodInfo, PodKey, PolicyRef,
};
pub use compile::{CompiledPolicy, Compiler, EndpointPolicy, PolicyProblem, PolicyWarning};
pub use eval::{evaluate, evaluate_packet, Decision, Direction, Side};
pub use identity::{Identities, Identity, SecurityLabels};
pub use ipcache::{Ipcache, IpcacheEntry};
pub use map::{PolicyKey, PolicyMap};
pub use normalize::validate;
pub use ports::{range_prefixes, PortPrefix};
pub use selector::Selector;

/// `[("k", "v")]` as a label map, for tests.
#[cfg(test)]
pub(crate) fn test_labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
