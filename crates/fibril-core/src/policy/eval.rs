//! The reference model of the datapath's policy decision: the lookups the BPF programs make,
//! in their order, on the compiled maps. It is not a second reading of the Kubernetes rules;
//! the conformance tests run the upstream truth tables through it, so they test the compiled
//! maps and the lookup scheme together.
//!
//! For a packet `src → dst` (after service DNAT: `dst` is the backend pod and port):
//!
//! 1. **Egress**, at the source endpoint (tc ingress of its veth), if its egress is isolated:
//!    `e = ipcache.lpm(dst)` (on the source's node); then, first hit wins:
//!    1. `egress_map.lpm(e.identity, proto, dport)`,
//!    2. `egress_map.lpm(e.cidr_identity, proto, dport)` if the entry has one,
//!    3. `egress_map.lpm(ANY, proto, dport)`;
//!
//!    no hit: drop, "policy denied" (egress), with the endpoint's revision.
//! 2. **Ingress**, at the destination endpoint (before delivery into its veth), if its
//!    ingress is isolated: the same three lookups with `e = ipcache.lpm(src)` (on the
//!    destination's node) in its ingress map.
//!
//! Each `lpm` is one longest-prefix lookup keyed (identity, protocol, port prefix), so a
//! decision costs at most two ipcache and six policy lookups, whatever the number of
//! policies. Replies of an allowed connection are conntrack's business, not modelled here.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::cluster::PodKey;
use super::compile::{CompiledPolicy, EndpointPolicy};
use super::identity::Identity;
use super::map::{PolicyKey, PolicyMap};
use crate::services::L4Proto;

/// Which side enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The outcome at one side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The side is no local endpoint, or its direction is not isolated.
    NotEnforced,
    /// Allowed by this entry, looked up with this peer identity.
    Allowed { peer: Identity, entry: PolicyKey },
    /// No entry matched: the drop event's data.
    Denied {
        /// The identities the peer resolved to (primary, then CIDR).
        peer: Vec<Identity>,
        endpoint: PodKey,
        revision: u64,
    },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

/// Both sides' outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub egress: Side,
    pub ingress: Side,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    /// The first side that denied, as a drop event reports it.
    pub fn denied_at(&self) -> Option<(Direction, &Side)> {
        if !self.egress.allows() {
            Some((Direction::Egress, &self.egress))
        } else if !self.ingress.allows() {
            Some((Direction::Ingress, &self.ingress))
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("pod {0} is no endpoint (unknown, no address yet, or on the host network)")]
    NotAnEndpoint(PodKey),
}

/// The policy lookups for a peer that resolved to `peer` (primary identity, then CIDR
/// identity), then the wildcard: the first entry that matches, with the identity it matched.
pub fn lookup_peer(
    map: &PolicyMap,
    peer: &[Identity],
    proto: L4Proto,
    port: u16,
) -> Option<(Identity, PolicyKey)> {
    peer.iter()
        .copied()
        .chain(std::iter::once(Identity::ANY))
        .find_map(|id| map.lookup(id, proto, port).map(|k| (id, k)))
}

/// The lookups of one side: ipcache (on the endpoint's node), then [`lookup_peer`].
fn side(
    compiled: &CompiledPolicy,
    ep: &EndpointPolicy,
    map: Option<&PolicyMap>,
    peer_ip: Ipv4Addr,
    proto: L4Proto,
    port: u16,
) -> Side {
    let Some(map) = map else {
        return Side::NotEnforced;
    };
    let (_, entry) = compiled.ipcache_lookup(ep.node.as_deref(), peer_ip);
    let peer: Vec<Identity> = entry.identities().collect();
    match lookup_peer(map, &peer, proto, port) {
        Some((id, entry)) => Side::Allowed { peer: id, entry },
        None => Side::Denied {
            peer,
            endpoint: ep.pod.clone(),
            revision: ep.revision,
        },
    }
}

/// The decision for a packet between two addresses (the destination already translated).
/// An address that is no endpoint enforces nothing on its side.
pub fn evaluate_packet(
    compiled: &CompiledPolicy,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: L4Proto,
    dport: u16,
) -> Decision {
    let ep = |ip| {
        compiled
            .endpoints_by_ip
            .get(&ip)
            .and_then(|k| compiled.endpoints.get(k))
    };
    let egress = match ep(src) {
        Some(e) => side(compiled, e, e.egress.as_ref(), dst, proto, dport),
        None => Side::NotEnforced,
    };
    let ingress = match ep(dst) {
        Some(e) => side(compiled, e, e.ingress.as_ref(), src, proto, dport),
        None => Side::NotEnforced,
    };
    Decision { egress, ingress }
}

/// The decision for `src` pod connecting to `dst` pod's `port` (the backend port).
pub fn evaluate(
    compiled: &CompiledPolicy,
    src: &PodKey,
    dst: &PodKey,
    port: u16,
    proto: L4Proto,
) -> Result<Decision, EvalError> {
    let ip = |k: &PodKey| {
        compiled
            .endpoints
            .get(k)
            .map(|e| e.ip)
            .ok_or_else(|| EvalError::NotAnEndpoint(k.clone()))
    };
    Ok(evaluate_packet(compiled, ip(src)?, ip(dst)?, proto, port))
}
