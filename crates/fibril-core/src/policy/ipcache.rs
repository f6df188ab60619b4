//! The ipcache model: every prefix the node knows, mapped to the identities a packet from or
//! to it carries, looked up by longest prefix.
//!
//! Entries come from: `0.0.0.0/0` (world), each node's pod ranges (unmanaged: an address
//! there that is no known pod), node addresses (remote-node; the node's own are host), every
//! ipBlock prefix of every policy, `cidr` and `except` alike (its CIDR identity), and every
//! pod (`/32`, its pod identity).
//!
//! ipBlocks select pod addresses too (the conformance README's caveat 5), so an entry carries
//! a second identity: [`IpcacheEntry::cidr_identity`], the CIDR identity of the longest
//! ipBlock prefix containing the entry's prefix. A policy's ipBlock `{cidr, except}` selects
//! the CIDR identities of the prefixes inside `cidr` and inside none of `except`; since an
//! address's longest containing ipBlock prefix is inside `cidr` exactly when the address is,
//! and inside an `except` exactly when the address is, one lookup answers the ipBlock for
//! any address, pod or not.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::identity::Identity;

/// What the ipcache holds for a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheEntry {
    /// The prefix's own identity: a pod's, a reserved one, or a CIDR identity.
    pub identity: Identity,
    /// The CIDR identity of the longest ipBlock prefix containing this prefix, when that is
    /// not `identity` itself.
    pub cidr_identity: Option<Identity>,
}

impl IpcacheEntry {
    /// The identities to look the policy map up with, primary first.
    pub fn identities(&self) -> impl Iterator<Item = Identity> {
        std::iter::once(self.identity).chain(self.cidr_identity)
    }
}

/// Prefix → entry, with longest-prefix lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipcache {
    entries: BTreeMap<Ipv4Net, IpcacheEntry>,
}

impl Ipcache {
    pub(crate) fn from_entries(entries: BTreeMap<Ipv4Net, IpcacheEntry>) -> Self {
        Ipcache { entries }
    }

    /// The longest prefix containing `ip` and its entry. `None` only if the cache lacks
    /// `0.0.0.0/0`, which a compiled cache never does.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<(Ipv4Net, IpcacheEntry)> {
        (0..=32u8).rev().find_map(|len| {
            let net = Ipv4Net::new(ip, len).ok()?.trunc();
            self.entries.get(&net).map(|e| (net, *e))
        })
    }

    pub fn get(&self, net: &Ipv4Net) -> Option<&IpcacheEntry> {
        self.entries.get(net)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Net, &IpcacheEntry)> {
        self.entries.iter()
    }

    /// This cache as one node writes it: its own addresses carry [`Identity::HOST`] instead
    /// of [`Identity::REMOTE_NODE`].
    pub fn for_node(&self, own_ips: &[Ipv4Addr]) -> Ipcache {
        let mut c = self.clone();
        for ip in own_ips {
            if let Some(e) = c.entries.get_mut(&Ipv4Net::from(*ip)) {
                if e.identity == Identity::REMOTE_NODE {
                    e.identity = Identity::HOST;
                }
            }
        }
        c
    }
}
