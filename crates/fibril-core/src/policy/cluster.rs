//! What the policy compiler reads: namespaces, pods, nodes and NetworkPolicies, reduced to
//! the fields that matter for policy. Built from the Kubernetes objects (`from_k8s`) by the
//! agent, or directly by tests and the conformance model.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::manifest::FieldProblem;
use crate::services::L4Proto;

/// The label the API server puts on every namespace, with the namespace's name as value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a pod reference: expected <namespace>/<name>")]
pub struct ParsePodKeyError(pub String);

impl FromStr for PodKey {
    type Err = ParsePodKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodKey::new(ns, name))
            }
            _ => Err(ParsePodKeyError(s.to_string())),
        }
    }
}

impl TryFrom<String> for PodKey {
    type Error = ParsePodKeyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PodKey> for String {
    fn from(k: PodKey) -> String {
        k.to_string()
    }
}

/// `namespace/name` of a NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference of a policy object; problems name `metadata.namespace`/`metadata.name`.
    pub fn of(np: &NetworkPolicy) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let ns = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        if ns.is_empty() {
            problems.push(FieldProblem::new("metadata.namespace", "required"));
        }
        if name.is_empty() {
            problems.push(FieldProblem::new("metadata.name", "required"));
        }
        if problems.is_empty() {
            Ok(PolicyRef::new(ns, name))
        } else {
            Err(problems)
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// From a Namespace object. `kubernetes.io/metadata.name` is set to the name when absent,
    /// as the API server guarantees it (and refuses any other value).
    pub fn from_k8s(ns: &Namespace) -> Result<Self, Vec<FieldProblem>> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(vec![FieldProblem::new("metadata.name", "required")]);
        }
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        Ok(NamespaceInfo { name, labels })
    }
}

/// A port a pod's container declares; named ones are what named policy ports resolve to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: L4Proto,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub key: PodKey,
    pub labels: BTreeMap<String, String>,
    /// The pod's IPv4 address; `None` until it has one, and for pods that finished
    /// (Succeeded/Failed), whose address may already belong to another pod.
    pub ip: Option<Ipv4Addr>,
    pub node: Option<String>,
    pub ports: Vec<ContainerPort>,
    /// A host-network pod is no endpoint: its traffic is its node's.
    pub host_network: bool,
}

impl PodInfo {
    /// From a Pod object: labels, the first IPv4 of `status.podIPs` (or `status.podIP`),
    /// `spec.nodeName`, `spec.hostNetwork` and every container's ports.
    pub fn from_k8s(pod: &Pod) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if ns.is_empty() {
            problems.push(FieldProblem::new("metadata.namespace", "required"));
        }
        if name.is_empty() {
            problems.push(FieldProblem::new("metadata.name", "required"));
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ports = Vec::new();
        for (ci, c) in spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let path = format!("spec.containers[{ci}].ports[{pi}]");
                let port = match u16::try_from(p.container_port) {
                    Ok(n) if n > 0 => n,
                    _ => {
                        problems.push(FieldProblem::new(
                            format!("{path}.containerPort"),
                            format!(
                                "invalid value {}: must be between 1 and 65535",
                                p.container_port
                            ),
                        ));
                        continue;
                    }
                };
                let protocol = match parse_protocol(p.protocol.as_deref()) {
                    Ok(pr) => pr,
                    Err(m) => {
                        problems.push(FieldProblem::new(format!("{path}.protocol"), m));
                        continue;
                    }
                };
                ports.push(ContainerPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol,
                });
            }
        }
        let status = pod.status.clone().unwrap_or_default();
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let mut ip = None;
        let candidates = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| ("status.podIPs", p.ip.clone()))
            .chain(status.pod_ip.clone().map(|p| ("status.podIP", p)));
        for (field, text) in candidates {
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => {
                    ip = Some(v4);
                    break;
                }
                Ok(IpAddr::V6(_)) => {}
                Err(_) => problems.push(FieldProblem::new(
                    field,
                    format!("invalid value {text:?}: not an IP address"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PodInfo {
            key: PodKey::new(ns, name),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: if finished { None } else { ip },
            node: spec.node_name.clone().filter(|n| !n.is_empty()),
            ports,
            host_network: spec.host_network == Some(true),
        })
    }

    /// The port number `name` resolves to for `protocol` on this pod, if any container
    /// declares it. Names are unique per pod (API validation), so there is at most one.
    pub fn named_port(&self, name: &str, protocol: L4Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The protocol of a port field: absent means TCP.
pub fn parse_protocol(p: Option<&str>) -> Result<L4Proto, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        other => Err(format!(
            "unsupported value {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
        )),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// The node's own addresses (InternalIP, ExternalIP), IPv4.
    pub ips: Vec<Ipv4Addr>,
    /// The node's pod ranges (IPv4).
    pub pod_cidrs: Vec<Ipv4Net>,
}

impl NodeInfo {
    /// From a Node object: IPv4 `status.addresses` of type InternalIP/ExternalIP and the IPv4
    /// entries of `spec.podCIDRs` (or `spec.podCIDR`).
    pub fn from_k8s(node: &Node) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let name = node.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            problems.push(FieldProblem::new("metadata.name", "required"));
        }
        let mut ips = Vec::new();
        for (i, a) in node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .enumerate()
        {
            if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                continue;
            }
            match a.address.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => ips.push(v4),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => problems.push(FieldProblem::new(
                    format!("status.addresses[{i}].address"),
                    format!("invalid value {:?}: not an IP address", a.address),
                )),
            }
        }
        let spec = node.spec.clone().unwrap_or_default();
        let cidrs: Vec<(String, String)> = match &spec.pod_cidrs {
            Some(v) if !v.is_empty() => v
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.clone()))
                .collect(),
            _ => spec
                .pod_cidr
                .iter()
                .map(|c| ("spec.podCIDR".to_string(), c.clone()))
                .collect(),
        };
        let mut pod_cidrs = Vec::new();
        for (field, text) in cidrs {
            match text.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(n)) => pod_cidrs.push(n.trunc()),
                Ok(ipnet::IpNet::V6(_)) => {}
                Err(_) => problems.push(FieldProblem::new(
                    field,
                    format!("invalid value {text:?}: not a CIDR"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(NodeInfo {
                name,
                ips,
                pod_cidrs,
            })
        } else {
            Err(problems)
        }
    }
}

/// Everything the compiler reads, keyed for stable iteration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    pub pods: BTreeMap<PodKey, PodInfo>,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub policies: BTreeMap<PolicyRef, NetworkPolicy>,
}

impl ClusterState {
    pub fn upsert_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn upsert_pod(&mut self, pod: PodInfo) {
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn upsert_node(&mut self, node: NodeInfo) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Inserts or replaces a policy (create and update are the same to the compiler).
    pub fn upsert_policy(&mut self, np: NetworkPolicy) -> Result<PolicyRef, Vec<FieldProblem>> {
        let r = PolicyRef::of(&np)?;
        self.policies.insert(r.clone(), np);
        Ok(r)
    }

    /// Deletes a namespace and, as the API server's namespace controller does, its pods and
    /// policies.
    pub fn remove_namespace(&mut self, name: &str) -> Option<NamespaceInfo> {
        self.pods.retain(|k, _| k.namespace != name);
        self.policies.retain(|k, _| k.namespace != name);
        self.namespaces.remove(name)
    }

    /// The endpoint pod with address `ip`, if one is known.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodInfo> {
        self.pods
            .values()
            .find(|p| p.ip == Some(ip) && !p.host_network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_from_k8s() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "fd00::1",
                       "podIPs": [{"ip": "fd00::1"}, {"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let p = PodInfo::from_k8s(&pod).unwrap();
        assert_eq!(p.key, PodKey::new("x", "a"));
        assert_eq!(p.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(p.named_port("http", L4Proto::Tcp), Some(80));
        assert_eq!(p.named_port("dns", L4Proto::Udp), Some(53));
        assert_eq!(p.named_port("dns", L4Proto::Tcp), None);

        let mut done = pod.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(PodInfo::from_k8s(&done).unwrap().ip, None);

        let bad: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 0}, {"containerPort": 1, "protocol": "ICMP"}]}]},
            "status": {"podIP": "nope"}
        }))
        .unwrap();
        let e = PodInfo::from_k8s(&bad).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.namespace",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].ports[1].protocol",
                "status.podIP"
            ]
        );
    }

    #[test]
    fn namespace_and_node_from_k8s() {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"ns": "x"}}}))
                .unwrap();
        let n = NamespaceInfo::from_k8s(&ns).unwrap();
        assert_eq!(
            n.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("x")
        );
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.11"},
                                     {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        let n = NodeInfo::from_k8s(&node).unwrap();
        assert_eq!(n.ips, vec![Ipv4Addr::new(172, 18, 0, 11)]);
        assert_eq!(
            n.pod_cidrs,
            vec!["10.244.1.0/24".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn pod_keys_parse_strictly() {
        assert_eq!("x/a".parse::<PodKey>().unwrap(), PodKey::new("x", "a"));
        for bad in ["x", "/a", "x/", "x/a/b"] {
            assert!(bad.parse::<PodKey>().is_err(), "{bad}");
        }
    }
}
