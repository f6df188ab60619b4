//! Small predicates on pods and nodes that several controllers (and the kubelet) share,
//! with upstream's meanings.

use k8s_openapi::api::core::v1::{Node, Pod};

/// The pod's `Ready` condition is `True` (upstream `podutil.IsPodReady`).
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_condition_true(pod, "Ready")
}

/// The pod has a condition of this type with status `True`.
pub fn pod_condition_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// `deletionTimestamp` is set.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Phase `Succeeded` or `Failed`: the pod will never run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The node the pod is bound to, if any.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The pod's IPv4 address, from `podIPs` or `podIP`.
pub fn pod_ipv4(pod: &Pod) -> Option<std::net::Ipv4Addr> {
    let status = pod.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse().ok())
}

/// The node's `Ready` condition is `True`.
pub fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `namespace/name` for logs and messages.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}
