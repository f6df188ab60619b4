//! The scheduler: binds pods without `spec.nodeName` to a Ready, schedulable node that
//! matches their `nodeSelector`, spreading first by the fewest pods of the same owner
//! (upstream's default topology spreading of a ReplicaSet's pods over hostnames), then by
//! the fewest non-terminated pods (ties by node name). Pods that fit nowhere get `PodScheduled=False, reason=Unschedulable`
//! with upstream's "0/N nodes are available: …" message.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::podutil;
use super::{is_conflict, is_not_found, ControllerError};

/// The scheduler name pods may ask for; others are left to their own scheduler.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// What the scheduler needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCandidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    /// Non-terminated pods bound to the node.
    pub pods: usize,
    /// Of those, the pods with the same controller as the pod being scheduled.
    pub siblings: usize,
}

impl NodeCandidate {
    pub fn from_node(node: &Node, pods: usize) -> Self {
        NodeCandidate {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ready: podutil::is_node_ready(node),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            pods,
            siblings: 0,
        }
    }
}

/// Why a node was filtered out, with upstream's wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Misfit {
    Selector,
    NotReady,
    Unschedulable,
}

impl Misfit {
    fn reason(self) -> &'static str {
        match self {
            Misfit::Selector => "node(s) didn't match Pod's node affinity/selector",
            Misfit::NotReady => "node(s) were not ready",
            Misfit::Unschedulable => "node(s) were unschedulable",
        }
    }
}

/// Picks the node for a pod with this `nodeSelector`, or says why none fits (the
/// message of the `PodScheduled=False` condition).
pub fn pick_node(
    node_selector: &BTreeMap<String, String>,
    nodes: &[NodeCandidate],
) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let mut misfits: BTreeMap<Misfit, usize> = BTreeMap::new();
    let mut fits: Vec<&NodeCandidate> = Vec::new();
    for n in nodes {
        let misfit = if n.unschedulable {
            Some(Misfit::Unschedulable)
        } else if !n.ready {
            Some(Misfit::NotReady)
        } else if !node_selector
            .iter()
            .all(|(k, v)| n.labels.get(k) == Some(v))
        {
            Some(Misfit::Selector)
        } else {
            None
        };
        match misfit {
            Some(m) => *misfits.entry(m).or_default() += 1,
            None => fits.push(n),
        }
    }
    if let Some(best) = fits
        .into_iter()
        .min_by(|a, b| (a.siblings, a.pods, &a.name).cmp(&(b.siblings, b.pods, &b.name)))
    {
        return Ok(best.name.clone());
    }
    let reasons: Vec<String> = misfits
        .iter()
        .map(|(m, n)| format!("{n} {}", m.reason()))
        .collect();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        reasons.join(", ")
    ))
}

/// The uid of the pod's controller (its Deployment here, its ReplicaSet upstream).
fn controller_uid(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Whether this scheduler is responsible for the pod and it still needs a node.
fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    podutil::node_name(pod).is_none()
        && !podutil::is_terminating(pod)
        && !podutil::is_terminal(pod)
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
}

/// Replaces (or adds) the `PodScheduled` condition; returns whether anything changed.
pub(crate) fn set_scheduled_condition(
    pod: &mut Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> bool {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    let existing = conds.iter().position(|c| c.type_ == "PodScheduled");
    if let Some(i) = existing {
        let c = &conds[i];
        if c.status == status && c.reason.as_deref() == reason && c.message.as_deref() == message {
            return false;
        }
    }
    let cond = PodCondition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(Into::into),
        message: message.map(Into::into),
        last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    };
    match existing {
        Some(i) => conds[i] = cond,
        None => conds.insert(0, cond),
    }
    if status == "False" && pod.status.as_ref().and_then(|s| s.phase.as_ref()).is_none() {
        pod.status.get_or_insert_with(Default::default).phase = Some("Pending".into());
    }
    true
}

/// One scheduling pass over every pending pod.
pub async fn reconcile(client: Client) -> Result<(), ControllerError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("nodes"))?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("pods"))?
        .items;

    let mut load: HashMap<String, usize> = HashMap::new();
    // (node, controller uid) → pods.
    let mut owned: HashMap<(String, String), usize> = HashMap::new();
    for p in &pods {
        if let Some(n) = podutil::node_name(p) {
            if !podutil::is_terminal(p) {
                *load.entry(n.to_string()).or_default() += 1;
                if let Some(uid) = controller_uid(p) {
                    *owned.entry((n.to_string(), uid)).or_default() += 1;
                }
            }
        }
    }
    let mut candidates: Vec<NodeCandidate> = nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            NodeCandidate::from_node(n, load.get(name).copied().unwrap_or(0))
        })
        .collect();

    let mut pending: Vec<&Pod> = pods.iter().filter(|p| wants_scheduling(p)).collect();
    pending.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| podutil::key(a).cmp(&podutil::key(b)))
    });

    let mut first_err = None;
    for pod in pending {
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let owner = controller_uid(pod);
        for c in &mut candidates {
            c.siblings = owner
                .as_ref()
                .and_then(|uid| owned.get(&(c.name.clone(), uid.clone())))
                .copied()
                .unwrap_or(0);
        }
        let res = match pick_node(&selector, &candidates) {
            Ok(node) => {
                let r = bind(&client, pod, &node).await;
                if r.is_ok() {
                    if let Some(c) = candidates.iter_mut().find(|c| c.name == node) {
                        c.pods += 1;
                    }
                    if let Some(uid) = owner {
                        *owned.entry((node, uid)).or_default() += 1;
                    }
                }
                r
            }
            Err(why) => mark_unschedulable(&client, pod, &why).await,
        };
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), ControllerError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut bound = match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": node}})),
        )
        .await
    {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(ControllerError::api("bind", "pod", podutil::key(pod))(e)),
    };
    tracing::info!(pod = %podutil::key(pod), node, "scheduled");
    // As the binding subresource does: PodScheduled=True. The update carries the bound
    // pod's resourceVersion, so it cannot overwrite a status the kubelet already wrote
    // (that status has PodScheduled=True of its own).
    if set_scheduled_condition(&mut bound, "True", None, None) {
        match api
            .replace_status(name, &PostParams::default(), &bound)
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) || is_not_found(&e) => {}
            Err(e) => {
                return Err(ControllerError::api(
                    "update status",
                    "pod",
                    podutil::key(pod),
                )(e))
            }
        }
    }
    Ok(())
}

async fn mark_unschedulable(client: &Client, pod: &Pod, why: &str) -> Result<(), ControllerError> {
    let mut pod = pod.clone();
    if !set_scheduled_condition(&mut pod, "False", Some("Unschedulable"), Some(why)) {
        return Ok(());
    }
    tracing::info!(pod = %podutil::key(&pod), "unschedulable: {why}");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api
        .replace_status(&name, &PostParams::default(), &pod)
        .await
    {
        Ok(_) => Ok(()),
        // A newer version exists: the next pass sees it.
        Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(()),
        Err(e) => Err(ControllerError::api(
            "update status",
            "pod",
            podutil::key(&pod),
        )(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pods: usize) -> NodeCandidate {
        NodeCandidate {
            name: name.into(),
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            ready: true,
            unschedulable: false,
            pods,
            siblings: 0,
        }
    }

    #[test]
    fn spreads_a_controllers_pods_before_balancing_load() {
        // n1 runs two unrelated pods, n2 one of this Deployment's: n1 gets the next one.
        let mut sibling = node("n2", 1);
        sibling.siblings = 1;
        let nodes = [node("n1", 2), sibling, node("n3", 3)];
        assert_eq!(pick_node(&BTreeMap::new(), &nodes).unwrap(), "n1");
    }

    #[test]
    fn spreads_by_load_then_name() {
        let nodes = [node("n2", 1), node("n1", 1), node("n3", 0)];
        assert_eq!(pick_node(&BTreeMap::new(), &nodes).unwrap(), "n3");
        let nodes = [node("n2", 1), node("n1", 1), node("n3", 2)];
        assert_eq!(pick_node(&BTreeMap::new(), &nodes).unwrap(), "n1");
    }

    #[test]
    fn honours_node_selector() {
        let nodes = [node("n1", 0), node("n2", 5)];
        let sel = [("kubernetes.io/hostname".to_string(), "n2".to_string())].into();
        assert_eq!(pick_node(&sel, &nodes).unwrap(), "n2");
    }

    #[test]
    fn skips_not_ready_and_cordoned_nodes_and_explains() {
        let mut a = node("n1", 0);
        a.ready = false;
        let mut b = node("n2", 0);
        b.unschedulable = true;
        let c = node("n3", 0);
        let sel = [("disk".to_string(), "ssd".to_string())].into();
        let err = pick_node(&sel, &[a.clone(), b.clone(), c]).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) were not ready, 1 node(s) were unschedulable."
        );
        assert_eq!(
            pick_node(&BTreeMap::new(), &[a, b, node("n4", 9)]).unwrap(),
            "n4"
        );
        assert_eq!(
            pick_node(&BTreeMap::new(), &[]).unwrap_err(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn scheduled_condition_is_idempotent() {
        let mut pod = Pod::default();
        assert!(set_scheduled_condition(
            &mut pod,
            "False",
            Some("Unschedulable"),
            Some("x")
        ));
        assert!(!set_scheduled_condition(
            &mut pod,
            "False",
            Some("Unschedulable"),
            Some("x")
        ));
        assert_eq!(podutil::phase(&pod), "Pending");
        assert!(set_scheduled_condition(&mut pod, "True", None, None));
        let conds = pod.status.unwrap().conditions.unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "True");
    }
}
