//! Security identities: the numbers the datapath's policy lookups key on.
//!
//! A pod's identity is a function of its *security-relevant labels*: its namespace's name,
//! all of its namespace's labels and its own labels minus the ones that never select anything
//! but would give every pod its own identity (hashes, indexes, `kubernetes.io/` bookkeeping),
//! as Cilium derives them. Pods with equal label sets share one identity, so a policy compiles
//! to entries per identity, not per pod.
//!
//! Numbering (the values live in `bpf/include/fibril_shared.h`; the constants below mirror
//! them and a test checks the two agree):
//!
//! | range | what |
//! |---|---|
//! | 0 | [`Identity::ANY`]: the wildcard in policy keys; no ipcache lookup ever yields it |
//! | 1..=255 | reserved: [`Identity::HOST`], [`Identity::WORLD`], [`Identity::UNMANAGED`], [`Identity::REMOTE_NODE`] |
//! | 256..=0x7f_ffff | pod identities (cluster scope: they may travel in the VXLAN VNI) |
//! | 0x80_0000..=0xff_ffff | CIDR identities, one per ipBlock prefix (node-local, never on the wire) |
//!
//! Allocation is deterministic: the same sequence of label sets gets the same numbers, an
//! identity keeps its number for as long as it is in use, and released numbers are not reused
//! before the range wraps (a stale number in flight never names a new label set).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A security identity, as the datapath carries it (ipcache values, policy keys, events).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    /// The wildcard peer in a policy key ("from/to everyone"); also "unknown" in events.
    pub const ANY: Identity = Identity(0);
    /// The node the endpoint runs on (its addresses, and host-network pods on it).
    pub const HOST: Identity = Identity(1);
    /// Everything outside the cluster that no ipBlock prefix names.
    pub const WORLD: Identity = Identity(2);
    /// An address in a pod range that belongs to no pod fibril knows of (a leaked or
    /// not-yet-reported pod).
    pub const UNMANAGED: Identity = Identity(3);
    /// Another node of the cluster (its addresses, and host-network pods on it).
    pub const REMOTE_NODE: Identity = Identity(6);
    /// First pod identity.
    pub const FIRST_POD: u32 = 256;
    /// Last pod identity.
    pub const LAST_POD: u32 = Self::FIRST_CIDR - 1;
    /// First CIDR identity (the local-scope bit).
    pub const FIRST_CIDR: u32 = 0x0080_0000;
    /// Last identity of all: identities fit the 24-bit VXLAN VNI.
    pub const MAX: u32 = 0x00ff_ffff;

    pub fn is_reserved(self) -> bool {
        self.0 < Self::FIRST_POD
    }

    pub fn is_pod(self) -> bool {
        (Self::FIRST_POD..=Self::LAST_POD).contains(&self.0)
    }

    pub fn is_cidr(self) -> bool {
        (Self::FIRST_CIDR..=Self::MAX).contains(&self.0)
    }

    /// The reserved identity's name (`host`, `world`, ...), if it is one.
    pub fn reserved_name(self) -> Option<&'static str> {
        Some(match self {
            Self::ANY => "any",
            Self::HOST => "host",
            Self::WORLD => "world",
            Self::UNMANAGED => "unmanaged",
            Self::REMOTE_NODE => "remote-node",
            _ => return None,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reserved_name() {
            Some(n) => write!(f, "{}({n})", self.0),
            None => self.0.fmt(f),
        }
    }
}

/// Label key prefixes that are not security-relevant (Cilium's default label filter): they
/// identify a single pod or revision, and would give every pod its own identity.
pub const NON_SECURITY_LABEL_PREFIXES: &[&str] = &[
    "io.kubernetes",
    "kubernetes.io",
    "k8s.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "annotation.",
    "etcd_node",
];

/// Whether a pod label key takes part in the pod's identity. Namespace labels always do.
pub fn is_security_relevant(key: &str) -> bool {
    !(NON_SECURITY_LABEL_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
        || key.contains("beta.kubernetes.io"))
}

/// Cilium's label name for the namespace of a pod.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Cilium's prefix for a pod's namespace's labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The label set an identity stands for. Ordered, so it is its own canonical key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecurityLabels {
    pub namespace: String,
    pub namespace_labels: BTreeMap<String, String>,
    /// The pod's labels, filtered by [`is_security_relevant`].
    pub pod_labels: BTreeMap<String, String>,
}

impl SecurityLabels {
    /// The identity labels of a pod in `namespace` (with `namespace_labels`) labelled `pod_labels`.
    pub fn of_pod(
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
    ) -> Self {
        SecurityLabels {
            namespace: namespace.to_string(),
            namespace_labels: namespace_labels.clone(),
            pod_labels: pod_labels
                .iter()
                .filter(|(k, _)| is_security_relevant(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The labels as Cilium spells them (`k8s:io.kubernetes.pod.namespace=x`,
    /// `k8s:io.cilium.k8s.namespace.labels.ns=x`, `k8s:pod=a`), sorted.
    pub fn cilium_labels(&self) -> Vec<String> {
        let mut v = vec![format!("k8s:{NAMESPACE_LABEL}={}", self.namespace)];
        v.extend(
            self.namespace_labels
                .iter()
                .map(|(k, val)| format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}={val}")),
        );
        v.extend(
            self.pod_labels
                .iter()
                .map(|(k, val)| format!("k8s:{k}={val}")),
        );
        v.sort();
        v
    }
}

impl fmt::Display for SecurityLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cilium_labels().join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no free {what} identity left in {first}..={last} ({in_use} in use)")]
    Exhausted {
        what: &'static str,
        first: u32,
        last: u32,
        in_use: usize,
    },
    #[error("restoring {what} identity {identity}: outside {first}..={last}")]
    OutOfRange {
        what: &'static str,
        identity: u32,
        first: u32,
        last: u32,
    },
    #[error("restoring {what} identity {identity}: given twice ({first} and {second})")]
    Duplicate {
        what: &'static str,
        identity: u32,
        first: String,
        second: String,
    },
}

/// Numbers for keys of one kind within a range: first come, first numbered; a number stays
/// with its key while the key is retained; freed numbers are reused only after the range wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator<K: Ord + Clone> {
    what: &'static str,
    first: u32,
    last: u32,
    next: u32,
    by_key: BTreeMap<K, Identity>,
    by_id: BTreeMap<Identity, K>,
}

impl<K: Ord + Clone + fmt::Display> Allocator<K> {
    fn new(what: &'static str, first: u32, last: u32) -> Self {
        Allocator {
            what,
            first,
            last,
            next: first,
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
        }
    }

    /// The identity of `key`, allocating the next free number if it has none.
    pub fn allocate(&mut self, key: &K) -> Result<Identity, IdentityError> {
        if let Some(id) = self.by_key.get(key) {
            return Ok(*id);
        }
        let span = (self.last - self.first) as u64 + 1;
        if self.by_id.len() as u64 >= span {
            return Err(IdentityError::Exhausted {
                what: self.what,
                first: self.first,
                last: self.last,
                in_use: self.by_id.len(),
            });
        }
        let mut n = self.next;
        while self.by_id.contains_key(&Identity(n)) {
            n = if n == self.last { self.first } else { n + 1 };
        }
        let id = Identity(n);
        self.next = if n == self.last { self.first } else { n + 1 };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        Ok(id)
    }

    /// Frees the numbers of every key not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<K>) {
        let gone: Vec<K> = self
            .by_key
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(id) = self.by_key.remove(&k) {
                self.by_id.remove(&id);
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<Identity> {
        self.by_key.get(key).copied()
    }

    pub fn key(&self, id: Identity) -> Option<&K> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every (identity, key), by identity.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &K)> {
        self.by_id.iter().map(|(id, k)| (*id, k))
    }

    /// Re-installs numbers allocated earlier (persisted, or agreed cluster-wide), so they
    /// survive a restart. New keys continue after the highest restored number.
    pub fn restore(
        &mut self,
        entries: impl IntoIterator<Item = (Identity, K)>,
    ) -> Result<(), IdentityError> {
        for (id, key) in entries {
            if !(self.first..=self.last).contains(&id.0) {
                return Err(IdentityError::OutOfRange {
                    what: self.what,
                    identity: id.0,
                    first: self.first,
                    last: self.last,
                });
            }
            if let Some(prev) = self.by_id.get(&id).filter(|k| **k != key) {
                return Err(IdentityError::Duplicate {
                    what: self.what,
                    identity: id.0,
                    first: prev.to_string(),
                    second: key.to_string(),
                });
            }
            if let Some(old) = self.by_key.insert(key.clone(), id) {
                self.by_id.remove(&old);
            }
            self.by_id.insert(id, key);
            if id.0 >= self.next {
                self.next = if id.0 == self.last {
                    self.first
                } else {
                    id.0 + 1
                };
            }
        }
        Ok(())
    }
}

/// The pod and CIDR identity allocators of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities {
    pub pods: Allocator<SecurityLabels>,
    pub cidrs: Allocator<Ipv4Net>,
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            pods: Allocator::new("pod", Identity::FIRST_POD, Identity::LAST_POD),
            cidrs: Allocator::new("CIDR", Identity::FIRST_CIDR, Identity::MAX),
        }
    }
}

impl Identities {
    /// Allocators with custom ranges (tests exercising exhaustion and wrap-around).
    pub fn with_ranges(pods: (u32, u32), cidrs: (u32, u32)) -> Self {
        Identities {
            pods: Allocator::new("pod", pods.0, pods.1),
            cidrs: Allocator::new("CIDR", cidrs.0, cidrs.1),
        }
    }

    /// A description of any identity: reserved name, label set or CIDR.
    pub fn describe(&self, id: Identity) -> String {
        if let Some(n) = id.reserved_name() {
            return format!("reserved:{n}");
        }
        if let Some(l) = self.pods.key(id) {
            return l.to_string();
        }
        if let Some(c) = self.cidrs.key(id) {
            return format!("cidr:{c}");
        }
        format!("unknown identity {}", id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::test_labels as labels;

    /// The reserved numbers are declared in the shared C header; this is their Rust mirror.
    #[test]
    fn reserved_identities_match_the_shared_header() {
        let header = include_str!("../../../../bpf/include/fibril_shared.h");
        let value = |name: &str| -> u32 {
            let line = header
                .lines()
                .find(|l| {
                    let t = l.trim_start().trim_start_matches("#define").trim_start();
                    t.starts_with(name)
                        && t[name.len()..].starts_with(|c: char| c.is_whitespace() || c == '=')
                })
                .unwrap_or_else(|| panic!("{name} is not in fibril_shared.h"));
            let v = line
                .split(|c: char| c == '=' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .find(|s| s.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or_else(|| panic!("no value on {line:?}"))
                .trim_end_matches(',');
            match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16).unwrap(),
                None => v.parse().unwrap(),
            }
        };
        assert_eq!(value("FIBRIL_IDENTITY_ANY"), Identity::ANY.0);
        assert_eq!(value("FIBRIL_IDENTITY_HOST"), Identity::HOST.0);
        assert_eq!(value("FIBRIL_IDENTITY_WORLD"), Identity::WORLD.0);
        assert_eq!(value("FIBRIL_IDENTITY_UNMANAGED"), Identity::UNMANAGED.0);
        assert_eq!(
            value("FIBRIL_IDENTITY_REMOTE_NODE"),
            Identity::REMOTE_NODE.0
        );
        assert_eq!(value("FIBRIL_IDENTITY_FIRST_POD"), Identity::FIRST_POD);
        assert_eq!(value("FIBRIL_IDENTITY_FIRST_CIDR"), Identity::FIRST_CIDR);
        assert_eq!(value("FIBRIL_IDENTITY_MAX"), Identity::MAX);
    }

    #[test]
    fn non_security_labels_are_filtered() {
        let ns = labels(&[("kubernetes.io/metadata.name", "x"), ("team", "a")]);
        let pod = labels(&[
            ("app", "web"),
            ("app.kubernetes.io/name", "web"),
            ("pod-template-hash", "abc123"),
            ("controller-revision-hash", "1"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("kubernetes.io/hostname", "n1"),
            ("failure-domain.beta.kubernetes.io/zone", "z"),
        ]);
        let s = SecurityLabels::of_pod("x", &ns, &pod);
        assert_eq!(
            s.pod_labels,
            labels(&[("app", "web"), ("app.kubernetes.io/name", "web")])
        );
        // Namespace labels are kept whole, kubernetes.io/ ones included: policies select on them.
        assert_eq!(s.namespace_labels, ns);
        assert_eq!(
            s.cilium_labels(),
            vec![
                "k8s:app.kubernetes.io/name=web",
                "k8s:app=web",
                "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x",
                "k8s:io.cilium.k8s.namespace.labels.team=a",
                "k8s:io.kubernetes.pod.namespace=x",
            ]
        );
        // Two replicas differing only in non-security labels share one label set.
        let other = labels(&[
            ("app", "web"),
            ("app.kubernetes.io/name", "web"),
            ("pod-template-hash", "zzz"),
        ]);
        assert_eq!(SecurityLabels::of_pod("x", &ns, &other), s);
    }

    #[test]
    fn allocation_is_stable_and_does_not_reuse_before_wrapping() {
        let mut ids = Identities::with_ranges((256, 258), (0x80_0000, 0x80_0001));
        let l = |n: &str| SecurityLabels::of_pod(n, &BTreeMap::new(), &BTreeMap::new());
        let a = ids.pods.allocate(&l("a")).unwrap();
        let b = ids.pods.allocate(&l("b")).unwrap();
        assert_eq!((a, b), (Identity(256), Identity(257)));
        assert_eq!(ids.pods.allocate(&l("a")).unwrap(), a);
        ids.pods.retain(&[l("b")].into());
        // a's number is not handed out again until the range wraps.
        assert_eq!(ids.pods.allocate(&l("c")).unwrap(), Identity(258));
        assert_eq!(ids.pods.allocate(&l("d")).unwrap(), Identity(256));
        let e = ids.pods.allocate(&l("e")).unwrap_err();
        assert!(
            matches!(e, IdentityError::Exhausted { in_use: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("no free pod identity"), "{e}");
    }

    #[test]
    fn restore_keeps_numbers_and_rejects_conflicts() {
        let l = |n: &str| SecurityLabels::of_pod(n, &BTreeMap::new(), &BTreeMap::new());
        let mut ids = Identities::default();
        ids.pods
            .restore([(Identity(300), l("a")), (Identity(280), l("b"))])
            .unwrap();
        assert_eq!(ids.pods.get(&l("a")), Some(Identity(300)));
        assert_eq!(ids.pods.allocate(&l("c")).unwrap(), Identity(301));
        let e = ids.pods.restore([(Identity(300), l("z"))]).unwrap_err();
        assert!(
            matches!(e, IdentityError::Duplicate { identity: 300, .. }),
            "{e}"
        );
        let e = ids.pods.restore([(Identity(5), l("z"))]).unwrap_err();
        assert!(
            matches!(e, IdentityError::OutOfRange { identity: 5, .. }),
            "{e}"
        );
    }

    #[test]
    fn describe_names_every_kind() {
        let mut ids = Identities::default();
        let net: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let c = ids.cidrs.allocate(&net).unwrap();
        assert!(c.is_cidr());
        assert_eq!(ids.describe(c), "cidr:10.0.0.0/8");
        assert_eq!(ids.describe(Identity::WORLD), "reserved:world");
        assert_eq!(Identity::HOST.to_string(), "1(host)");
    }
}
