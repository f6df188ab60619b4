//! The per-endpoint, per-direction policy map: a set of allow entries keyed by
//! (peer identity, protocol, port prefix), looked up by longest prefix.
//!
//! Key layout, as bits from most to least significant (the order an LPM trie matches in):
//!
//! ```text
//! identity (32, always exact) | protocol (8) | destination port (16, network order)
//! ```
//!
//! so the prefix length of an entry is 32 (every protocol and port of that peer), 40 (every
//! port of one protocol) or 40 + n (a port prefix of n bits, see [`super::ports`]). A range
//! (`endPort`) is its few aligned prefixes. The identity is never wildcarded by prefix; the
//! wildcard peer is the value [`Identity::ANY`], looked up separately (see
//! [`super::eval`] for the full lookup order). NetworkPolicy v1 only allows, so every entry
//! means "allow" and a miss means "denied by policy".

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::ports::PortPrefix;
use crate::services::L4Proto;

/// One allow entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub identity: Identity,
    /// `None`: every protocol (and then every port).
    pub proto: Option<L4Proto>,
    pub ports: PortPrefix,
}

impl PolicyKey {
    /// Everything from/to `identity`.
    pub fn all(identity: Identity) -> Self {
        PolicyKey {
            identity,
            proto: None,
            ports: PortPrefix::ALL,
        }
    }

    pub fn ports(identity: Identity, proto: L4Proto, ports: PortPrefix) -> Self {
        PolicyKey {
            identity,
            proto: Some(proto),
            ports,
        }
    }

    /// The entry's prefix length in the LPM key (identity + protocol + port bits).
    pub fn prefix_len(&self) -> u8 {
        match self.proto {
            None => 32,
            Some(_) => 40 + self.ports.len,
        }
    }

    pub fn matches(&self, identity: Identity, proto: L4Proto, port: u16) -> bool {
        self.identity == identity
            && match self.proto {
                None => true,
                Some(p) => p == proto && self.ports.contains(port),
            }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            None => write!(f, "{} any", self.identity),
            Some(p) => write!(f, "{} {}/{}", self.identity, self.ports, p),
        }
    }
}

/// The allow entries of one endpoint in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMap {
    entries: BTreeSet<PolicyKey>,
}

impl PolicyMap {
    pub fn insert(&mut self, key: PolicyKey) {
        self.entries.insert(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &PolicyKey) -> bool {
        self.entries.contains(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PolicyKey> {
        self.entries.iter()
    }

    /// The longest-prefix entry matching (identity, proto, port), as the datapath's LPM
    /// lookup returns it. Probes at most 18 exact keys, independent of the map's size.
    pub fn lookup(&self, identity: Identity, proto: L4Proto, port: u16) -> Option<PolicyKey> {
        (0..=16u8)
            .rev()
            .map(|len| PolicyKey::ports(identity, proto, PortPrefix::containing(port, len)))
            .chain(std::iter::once(PolicyKey::all(identity)))
            .find(|k| self.entries.contains(k))
    }
}

impl FromIterator<PolicyKey> for PolicyMap {
    fn from_iter<T: IntoIterator<Item = PolicyKey>>(iter: T) -> Self {
        PolicyMap {
            entries: iter.into_iter().collect(),
        }
    }
}

impl Extend<PolicyKey> for PolicyMap {
    fn extend<T: IntoIterator<Item = PolicyKey>>(&mut self, iter: T) {
        self.entries.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ports::range_prefixes;
    use proptest::prelude::*;

    #[test]
    fn longest_prefix_wins_and_protocols_stay_apart() {
        let id = Identity(300);
        let mut m = PolicyMap::default();
        m.insert(PolicyKey::ports(id, L4Proto::Tcp, PortPrefix::ALL));
        m.insert(PolicyKey::ports(id, L4Proto::Tcp, PortPrefix::single(80)));
        assert_eq!(
            m.lookup(id, L4Proto::Tcp, 80),
            Some(PolicyKey::ports(id, L4Proto::Tcp, PortPrefix::single(80)))
        );
        assert_eq!(
            m.lookup(id, L4Proto::Tcp, 81).map(|k| k.prefix_len()),
            Some(40)
        );
        assert_eq!(m.lookup(id, L4Proto::Sctp, 80), None);
        assert_eq!(m.lookup(Identity(301), L4Proto::Tcp, 80), None);
        m.insert(PolicyKey::all(Identity(301)));
        assert_eq!(
            m.lookup(Identity(301), L4Proto::Udp, 9)
                .map(|k| k.prefix_len()),
            Some(32)
        );
    }

    proptest! {
        /// A map of ranges answers exactly "is the port in one of the ranges".
        #[test]
        fn ranges_answer_membership(
            ranges in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..6),
            port in any::<u16>(),
        ) {
            let id = Identity(400);
            let m: PolicyMap = ranges
                .iter()
                .flat_map(|&(a, b)| range_prefixes(a.min(b), a.max(b)))
                .map(|p| PolicyKey::ports(id, L4Proto::Udp, p))
                .collect();
            let want = ranges.iter().any(|&(a, b)| (a.min(b)..=a.max(b)).contains(&port));
            prop_assert_eq!(m.lookup(id, L4Proto::Udp, port).is_some(), want);
            prop_assert_eq!(m.lookup(id, L4Proto::Tcp, port), None);
        }
    }
}
