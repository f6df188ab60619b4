//! The Deployment controller, folded with the ReplicaSet controller: a Deployment owns
//! its pods directly (ownerReference controller=true) and keeps `spec.replicas` of them
//! from `spec.template`, named `<deploy>-<pod-template-hash>-<rand5>`.
//!
//! A template change replaces every pod: old-template pods are deleted and new ones
//! created; with `strategy.type: Recreate` the new ones only once the old are gone.
//! Pods of deleted Deployments are garbage-collected here too, as upstream's GC would.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::podutil;
use super::{is_not_found, ControllerError};

pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Upstream's `rand.SafeEncodeString` alphabet: no vowels, no look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a template: FNV-32a over its JSON, encoded as upstream
/// encodes its hash (decimal digits mapped through the safe alphabet).
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// What the replica planner needs to know about one owned pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub hash: Option<String>,
    pub terminating: bool,
    pub terminal: bool,
    pub scheduled: bool,
    pub running: bool,
    pub ready: bool,
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        PodInfo {
            name: pod.metadata.name.clone().unwrap_or_default(),
            hash: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
                .cloned(),
            terminating: podutil::is_terminating(pod),
            terminal: podutil::is_terminal(pod),
            scheduled: podutil::node_name(pod).is_some(),
            running: podutil::phase(pod) == "Running",
            ready: podutil::is_pod_ready(pod),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
    fn active(&self) -> bool {
        !self.terminating && !self.terminal
    }
}

/// Pods to create and pods to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaPlan {
    pub create: usize,
    pub delete: Vec<String>,
}

/// The diff between `want` replicas of template `hash` and the owned `pods`.
pub fn plan_replicas(want: usize, hash: &str, recreate: bool, pods: &[PodInfo]) -> ReplicaPlan {
    let mut plan = ReplicaPlan::default();
    let is_current = |p: &PodInfo| p.hash.as_deref() == Some(hash);
    // Old-template and finished pods go, whatever the count.
    for p in pods {
        if !p.terminating && (p.terminal || !is_current(p)) {
            plan.delete.push(p.name.clone());
        }
    }
    let old_remaining = pods.iter().any(|p| !is_current(p) && !p.terminal);
    let mut current: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| p.active() && is_current(p))
        .collect();
    if current.len() < want {
        if !(recreate && old_remaining) {
            plan.create = want - current.len();
        }
    } else {
        // Upstream's ranking: unscheduled, then not running, then not ready, then newest.
        current.sort_by(|a, b| {
            a.scheduled
                .cmp(&b.scheduled)
                .then(a.running.cmp(&b.running))
                .then(a.ready.cmp(&b.ready))
                .then(b.created.cmp(&a.created))
                .then(a.name.cmp(&b.name))
        });
        let extra = current.len() - want;
        plan.delete
            .extend(current.iter().take(extra).map(|p| p.name.clone()));
    }
    plan
}

/// The status upstream would report for these pods (zero counts are omitted, as
/// upstream's `omitempty` does).
pub fn deployment_status(
    generation: Option<i64>,
    want: usize,
    hash: &str,
    pods: &[PodInfo],
) -> DeploymentStatus {
    let active: Vec<&PodInfo> = pods.iter().filter(|p| p.active()).collect();
    let count = |n: usize| (n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX));
    let ready = active.iter().filter(|p| p.ready).count();
    DeploymentStatus {
        observed_generation: generation,
        replicas: count(active.len()),
        updated_replicas: count(
            active
                .iter()
                .filter(|p| p.hash.as_deref() == Some(hash))
                .count(),
        ),
        ready_replicas: count(ready),
        available_replicas: count(ready),
        unavailable_replicas: count(want.saturating_sub(ready)),
        ..Default::default()
    }
}

fn status_patch(st: &DeploymentStatus) -> Value {
    json!({"status": {
        "observedGeneration": st.observed_generation,
        "replicas": st.replicas,
        "updatedReplicas": st.updated_replicas,
        "readyReplicas": st.ready_replicas,
        "availableReplicas": st.available_replicas,
        "unavailableReplicas": st.unavailable_replicas,
    }})
}

fn status_differs(have: Option<&DeploymentStatus>, want: &DeploymentStatus) -> bool {
    let d = DeploymentStatus::default();
    let have = have.unwrap_or(&d);
    have.observed_generation != want.observed_generation
        || have.replicas.filter(|n| *n != 0) != want.replicas
        || have.updated_replicas.filter(|n| *n != 0) != want.updated_replicas
        || have.ready_replicas.filter(|n| *n != 0) != want.ready_replicas
        || have.available_replicas.filter(|n| *n != 0) != want.available_replicas
        || have.unavailable_replicas.filter(|n| *n != 0) != want.unavailable_replicas
}

fn controller_uid(pod: &Pod) -> Option<(&str, &str)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.uid.as_str()))
}

fn new_pod(d: &Deployment, hash: &str) -> Pod {
    let name = d.metadata.name.clone().unwrap_or_default();
    let template = d.spec.template.clone();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-{hash}-")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name,
                uid: d.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// One pass over every Deployment, plus garbage collection of orphaned pods.
pub async fn reconcile(client: Client) -> Result<(), ControllerError> {
    let deploys = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("deployments"))?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("pods"))?
        .items;

    let mut first_err = None;
    for d in &deploys {
        if let Err(e) = sync_one(&client, d, &pods).await {
            first_err.get_or_insert(e);
        }
    }

    let live: HashSet<&str> = deploys
        .iter()
        .filter_map(|d| d.metadata.uid.as_deref())
        .collect();
    for p in &pods {
        let orphan = matches!(controller_uid(p), Some(("Deployment", uid)) if !live.contains(uid));
        if orphan && !podutil::is_terminating(p) {
            if let Err(e) = delete_pod(&client, p).await {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn sync_one(client: &Client, d: &Deployment, pods: &[Pod]) -> Result<(), ControllerError> {
    let spec = &d.spec;
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let selector = match Selector::try_from(spec.selector.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(deployment = %format!("{ns}/{name}"), "invalid selector: {e}");
            return Ok(());
        }
    };
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && controller_uid(p) == Some(("Deployment", uid))
                && selector.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        })
        .collect();
    let infos: Vec<PodInfo> = owned.iter().map(|p| PodInfo::from_pod(p)).collect();
    let hash = pod_template_hash(&spec.template);
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");

    if d.metadata.deletion_timestamp.is_none() {
        let plan = plan_replicas(want, &hash, recreate, &infos);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for _ in 0..plan.create {
            api.create(&PostParams::default(), &new_pod(d, &hash))
                .await
                .map_err(ControllerError::api(
                    "create pod for",
                    "deployment",
                    format!("{ns}/{name}"),
                ))?;
        }
        for victim in &plan.delete {
            if let Some(p) = owned
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(victim))
            {
                delete_pod(client, p).await?;
            }
        }
        if plan.create > 0 || !plan.delete.is_empty() {
            tracing::info!(
                deployment = %format!("{ns}/{name}"),
                create = plan.create,
                delete = ?plan.delete,
                "scaling"
            );
        }
    }

    let status = deployment_status(d.metadata.generation, want, &hash, &infos);
    if status_differs(d.status.as_ref(), &status) {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status_patch(&status)),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(ControllerError::api(
                    "update status",
                    "deployment",
                    format!("{ns}/{name}"),
                )(e))
            }
        }
    }
    Ok(())
}

async fn delete_pod(client: &Client, pod: &Pod) -> Result<(), ControllerError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ControllerError::api("delete", "pod", podutil::key(pod))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn info(name: &str, hash: &str) -> PodInfo {
        PodInfo {
            name: name.into(),
            hash: Some(hash.into()),
            terminating: false,
            terminal: false,
            scheduled: true,
            running: true,
            ready: true,
            created: None,
        }
    }

    #[test]
    fn scales_up_and_down() {
        let pods = vec![info("a", "h"), info("b", "h")];
        assert_eq!(plan_replicas(3, "h", false, &pods).create, 1);
        assert_eq!(plan_replicas(2, "h", false, &pods), ReplicaPlan::default());
        let p = plan_replicas(1, "h", false, &pods);
        assert_eq!((p.create, p.delete.len()), (0, 1));
    }

    #[test]
    fn scale_down_prefers_unscheduled_unready_then_newest() {
        let t = |s: i64| k8s_openapi::jiff::Timestamp::from_second(s).ok();
        let mut old = info("old", "h");
        old.created = t(1);
        let mut new = info("new", "h");
        new.created = t(2);
        let mut unready = info("unready", "h");
        unready.ready = false;
        unready.created = t(0);
        let mut pending = info("pending", "h");
        pending.scheduled = false;
        let pods = vec![old, new.clone(), unready.clone(), pending];
        assert_eq!(plan_replicas(3, "h", false, &pods).delete, vec!["pending"]);
        assert_eq!(
            plan_replicas(2, "h", false, &pods).delete,
            vec!["pending", "unready"]
        );
        assert_eq!(
            plan_replicas(1, "h", false, &pods).delete,
            vec!["pending", "unready", "new"]
        );
    }

    #[test]
    fn template_change_replaces_pods() {
        let pods = vec![info("a", "old"), info("b", "old")];
        let p = plan_replicas(2, "new", false, &pods);
        assert_eq!(
            (p.create, p.delete.clone()),
            (2, vec!["a".into(), "b".into()])
        );
        // Recreate: delete first, create once the old pods are gone.
        let p = plan_replicas(2, "new", true, &pods);
        assert_eq!((p.create, p.delete.len()), (0, 2));
        let mut going = info("a", "old");
        going.terminating = true;
        assert_eq!(plan_replicas(2, "new", true, &[going.clone()]).create, 0);
        assert_eq!(plan_replicas(2, "new", false, &[going]).create, 2);
        assert_eq!(plan_replicas(2, "new", true, &[]).create, 2);
    }

    #[test]
    fn terminating_pods_do_not_count_and_terminal_pods_go() {
        let mut t = info("t", "h");
        t.terminating = true;
        let mut f = info("f", "h");
        f.terminal = true;
        let p = plan_replicas(1, "h", false, &[t.clone(), f.clone()]);
        assert_eq!((p.create, p.delete), (1, vec!["f".to_string()]));
        let st = deployment_status(Some(3), 1, "h", &[t, f, info("a", "h")]);
        assert_eq!(st.replicas, Some(1));
        assert_eq!(st.ready_replicas, Some(1));
        assert_eq!(st.updated_replicas, Some(1));
        assert_eq!(st.unavailable_replicas, None);
        assert_eq!(st.observed_generation, Some(3));
    }

    #[test]
    fn status_counts() {
        let mut nr = info("b", "old");
        nr.ready = false;
        let st = deployment_status(Some(2), 3, "h", &[info("a", "h"), nr]);
        assert_eq!(st.replicas, Some(2));
        assert_eq!(st.updated_replicas, Some(1));
        assert_eq!(st.ready_replicas, Some(1));
        assert_eq!(st.available_replicas, Some(1));
        assert_eq!(st.unavailable_replicas, Some(2));
        assert!(!status_differs(Some(&st), &st));
        assert!(status_differs(None, &st));
    }

    #[test]
    fn template_hash_is_stable_and_safe() {
        let mut t = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("fibril/echo".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let h = pod_template_hash(&t);
        assert_eq!(h, pod_template_hash(&t.clone()));
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
        t.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert_ne!(h, pod_template_hash(&t));
    }
}
