//! fibril's own API kinds (group `fibril.io`, version `v1alpha1`, both cluster-scoped), the
//! one definition the lab API server serves, the CLI decodes and the agent reads and writes.
//!
//! - [`FibrilIPPool`]: the cluster pool of `ipam.mode: cluster-pool` and every per-node block
//!   claim (`status.blocks`). One object holds all claims, so two agents claiming at once
//!   write the same object: the second write carries a stale `resourceVersion`, gets 409
//!   Conflict, and that agent reads again and retries (see [`crate::ipam::ClusterPool`]).
//! - [`FibrilNode`]: one per node, named after it, carrying the pod CIDR block(s) the node's
//!   agent claimed. Peers read it to route to that node's pods; it is written once per
//!   claim, never periodically (seed 003's CRD watch storms).
//!
//! Both implement k8s-openapi's `Resource`, `ListableResource` and `Metadata`, so kube-rs's
//! `Api<FibrilIPPool>` works unmodified, and they (de)serialize with `apiVersion` and `kind`
//! as k8s-openapi types do. Optional fields are `Option`s (absent stays absent, `{}` stays
//! `{}`), so the strict decoder of [`crate::manifest`] sees unknown and missing fields the
//! same way it does for built-in kinds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::ipam::{ClusterPool, IpamError, NodeName, PodCidr, PoolCidr, PoolState, PoolUpdate};

/// The API group of fibril's kinds.
pub const GROUP: &str = "fibril.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// `group/version`.
pub const API_VERSION: &str = "fibril.io/v1alpha1";
/// The name of the cluster pool object agents claim blocks from.
pub const DEFAULT_POOL_NAME: &str = "default";

/// The wire form shared by both kinds, written: type meta, metadata, spec, optional status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOut<'a, S, T> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    spec: &'a S,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a T>,
}

/// The wire form, read. Deserialized straight from the caller's deserializer (never via an
/// intermediate `Value`), so the strict decoder's field paths reach into spec and status.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIn<S, T> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: S,
    #[serde(default)]
    status: Option<T>,
}

macro_rules! fibril_kind {
    ($(#[$meta:meta])* $name:ident, $spec:ty, $status:ty, kind = $kind:literal, list = $list:literal, plural = $plural:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            /// Standard object metadata.
            pub metadata: ObjectMeta,
            /// What the object holds.
            pub spec: $spec,
            /// What was observed or claimed.
            pub status: Option<$status>,
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = API_VERSION;
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::ClusterResourceScope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = $list;
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                WireOut {
                    api_version: API_VERSION,
                    kind: $kind,
                    metadata: &self.metadata,
                    spec: &self.spec,
                    status: self.status.as_ref(),
                }
                .serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                let w: WireIn<$spec, $status> = WireIn::deserialize(d)?;
                if let Some(v) = w.api_version.filter(|v| v != API_VERSION) {
                    return Err(D::Error::custom(format!(
                        "apiVersion {v:?} is not {API_VERSION:?}"
                    )));
                }
                if let Some(k) = w.kind.filter(|k| k != $kind) {
                    return Err(D::Error::custom(format!("kind {k:?} is not {:?}", $kind)));
                }
                Ok($name {
                    metadata: w.metadata,
                    spec: w.spec,
                    status: w.status,
                })
            }
        }
    };
}

fibril_kind!(
    /// The cluster pool and the block claims of every node (`ipam.mode: cluster-pool`).
    FibrilIPPool,
    FibrilIPPoolSpec,
    FibrilIPPoolStatus,
    kind = "FibrilIPPool",
    list = "FibrilIPPoolList",
    plural = "fibrilippools"
);

fibril_kind!(
    /// One node's claimed pod CIDR block(s), named after the node.
    FibrilNode,
    FibrilNodeSpec,
    FibrilNodeStatus,
    kind = "FibrilNode",
    list = "FibrilNodeList",
    plural = "fibrilnodes"
);

/// The pool: its ranges and the block size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FibrilIPPoolSpec {
    /// The ranges node blocks are cut from (`ipam.clusterPoolCidrs`).
    pub cidrs: Vec<PoolCidr>,
    /// The prefix length of each node's block (`ipam.nodeMaskSize`).
    pub node_mask_size: u8,
}

/// The claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FibrilIPPoolStatus {
    /// Block to the node holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<BTreeMap<PodCidr, NodeName>>,
}

/// A node's IPAM facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FibrilNodeSpec {
    /// The pod CIDR block(s) the node's agent claimed.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<PodCidr>>,
    /// The [`FibrilIPPool`] they were claimed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Reserved for observed node state; fibril writes none yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FibrilNodeStatus {}

/// Why a pool object cannot be used with the agent's configured pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolObjectError {
    /// The object in the cluster describes another pool than this agent's configuration.
    #[error(
        "FibrilIPPool {name} in the cluster holds {} cut into /{} blocks, but this agent is \
         configured with ipam.clusterPoolCidrs {} and ipam.nodeMaskSize {}: every agent must \
         use the pool the cluster holds (fix the agent config, or move the pool deliberately)",
        list(found_cidrs),
        found_mask,
        list(config_cidrs),
        config_mask
    )]
    Mismatch {
        /// The object's name.
        name: String,
        /// Its ranges.
        found_cidrs: Vec<PoolCidr>,
        /// Its block size.
        found_mask: u8,
        /// The configured ranges.
        config_cidrs: Vec<PoolCidr>,
        /// The configured block size.
        config_mask: u8,
    },
    /// `metadata.resourceVersion` is missing or not a number (the lab API server and
    /// kube-apiserver's etcd revisions both are).
    #[error("FibrilIPPool {name} has no usable metadata.resourceVersion ({found:?})")]
    NoVersion {
        /// The object's name.
        name: String,
        /// What it holds.
        found: Option<String>,
    },
}

fn list(cidrs: &[PoolCidr]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl FibrilIPPool {
    /// A new pool object for `pool`, with no claims.
    pub fn new(name: &str, pool: &ClusterPool) -> FibrilIPPool {
        FibrilIPPool {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec: FibrilIPPoolSpec {
                cidrs: pool.cidrs().to_vec(),
                node_mask_size: pool.mask(),
            },
            status: None,
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// Refuses an object describing another pool than `pool` (the agent's configuration).
    pub fn check_matches(&self, pool: &ClusterPool) -> Result<(), PoolObjectError> {
        if self.spec.cidrs == pool.cidrs() && self.spec.node_mask_size == pool.mask() {
            return Ok(());
        }
        Err(PoolObjectError::Mismatch {
            name: self.name().to_string(),
            found_cidrs: self.spec.cidrs.clone(),
            found_mask: self.spec.node_mask_size,
            config_cidrs: pool.cidrs().to_vec(),
            config_mask: pool.mask(),
        })
    }

    /// The claims as the pure model sees them, at the object's `resourceVersion`.
    pub fn pool_state(&self) -> Result<PoolState, PoolObjectError> {
        let rv = self.metadata.resource_version.clone();
        let version = rv
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| PoolObjectError::NoVersion {
                name: self.name().to_string(),
                found: rv,
            })?;
        Ok(PoolState {
            version,
            blocks: self
                .status
                .as_ref()
                .and_then(|s| s.blocks.clone())
                .unwrap_or_default(),
        })
    }

    /// The object to write for `update` (computed from [`pool_state`](Self::pool_state)):
    /// the new claims, with `metadata.resourceVersion` left at the version read, which is
    /// the precondition that makes a racing write fail with 409.
    pub fn with_update(&self, update: &PoolUpdate) -> Result<FibrilIPPool, IpamError> {
        let read = self.pool_state().ok().map(|s| s.version);
        if read != Some(update.expected_version) {
            return Err(IpamError::VersionConflict {
                expected: update.expected_version,
                found: read.unwrap_or(0),
            });
        }
        let mut next = self.clone();
        next.status = Some(FibrilIPPoolStatus {
            blocks: Some(update.state.blocks.clone()),
        });
        Ok(next)
    }
}

impl FibrilNode {
    /// The node object for `node` holding `block` from pool `pool`.
    pub fn new(node: &NodeName, block: PodCidr, pool: &str) -> FibrilNode {
        FibrilNode {
            metadata: ObjectMeta {
                name: Some(node.to_string()),
                ..ObjectMeta::default()
            },
            spec: FibrilNodeSpec {
                pod_cidrs: Some(vec![block]),
                pool: Some(pool.to_string()),
            },
            status: None,
        }
    }

    /// The node's first pod CIDR block, if it has claimed one.
    pub fn pod_cidr(&self) -> Option<PodCidr> {
        self.spec.pod_cidrs.as_ref()?.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::OverlapCheck;
    use serde_json::json;

    fn pool() -> ClusterPool {
        ClusterPool::new(vec!["10.244.0.0/16".parse().unwrap()], 24).unwrap()
    }

    #[test]
    fn serializes_with_type_meta_and_round_trips() {
        let p = FibrilIPPool::new("default", &pool());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "fibril.io/v1alpha1", "kind": "FibrilIPPool",
                   "metadata": {"name": "default"},
                   "spec": {"cidrs": ["10.244.0.0/16"], "nodeMaskSize": 24}})
        );
        assert_eq!(serde_json::from_value::<FibrilIPPool>(v).unwrap(), p);
        let n = FibrilNode::new(
            &"lab-node-1".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            "default",
        );
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(
            v["spec"],
            json!({"podCIDRs": ["10.244.3.0/24"], "pool": "default"})
        );
        assert_eq!(serde_json::from_value::<FibrilNode>(v).unwrap(), n);
        assert!(serde_json::from_value::<FibrilNode>(json!({"kind": "Pod", "spec": {}})).is_err());
    }

    #[test]
    fn claims_go_through_the_object_with_its_version() {
        let p = pool();
        let mut obj = FibrilIPPool::new("default", &p);
        assert!(obj.pool_state().is_err(), "no resourceVersion yet");
        obj.metadata.resource_version = Some("41".into());
        let state = obj.pool_state().unwrap();
        assert_eq!(state.version, 41);
        let node: NodeName = "n1".parse().unwrap();
        let claim = p
            .claim_block(&state, &node, &OverlapCheck::new(node.clone()))
            .unwrap();
        let next = obj.with_update(claim.update.as_ref().unwrap()).unwrap();
        assert_eq!(next.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(
            next.status.unwrap().blocks.unwrap().get(&claim.block),
            Some(&node)
        );
        obj.metadata.resource_version = Some("42".into());
        assert!(matches!(
            obj.with_update(claim.update.as_ref().unwrap()),
            Err(IpamError::VersionConflict { .. })
        ));
    }

    #[test]
    fn a_pool_object_for_another_pool_is_refused_naming_both() {
        let obj = FibrilIPPool::new(
            "default",
            &ClusterPool::new(vec!["10.0.0.0/8".parse().unwrap()], 24).unwrap(),
        );
        let e = obj.check_matches(&pool()).unwrap_err().to_string();
        assert!(
            e.contains("10.0.0.0/8") && e.contains("10.244.0.0/16"),
            "{e}"
        );
        assert!(obj
            .check_matches(&ClusterPool::new(vec!["10.0.0.0/8".parse().unwrap()], 24).unwrap())
            .is_ok());
    }
}
