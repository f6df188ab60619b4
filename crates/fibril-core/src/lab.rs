//! The lab's names and addresses: one derivation, used by every component.
//!
//! A lab is identified by a [`LabName`]. Every namespace, pin path and state file the
//! lab creates is derived here from that name, so that `lab down` can find all of it
//! again from the name alone (plus a scan for the prefix).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::agent_config::IpamMode;
use crate::consts;

/// A lab's name: `[a-z][a-z0-9]{0,11}`.
///
/// No `-` is allowed, so that the namespace prefix `<name>-` of one lab can never be a
/// prefix of another lab's names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid lab name {value:?}: {reason}")]
pub struct LabNameError {
    pub value: String,
    pub reason: &'static str,
}

impl LabName {
    pub const MAX_LEN: usize = 12;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabName {
    type Err = LabNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| LabNameError {
            value: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(err("must be at most 12 characters"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(err("must start with a lowercase letter"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(err("may contain only lowercase letters and digits"));
        }
        Ok(LabName(s.to_string()))
    }
}

impl TryFrom<String> for LabName {
    type Error = LabNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for LabName {
    fn default() -> Self {
        LabName("fibril".into())
    }
}

/// Which CNI the lab's kubelets run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniMode {
    /// Debian's reference plugins: bridge + host-local + loopback. The baseline peer.
    Bridge,
    /// fibril's own CNI and agent.
    Fibril,
}

impl FromStr for CniMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(CniMode::Bridge),
            "fibril" => Ok(CniMode::Fibril),
            other => Err(format!("unknown CNI {other:?}: expected bridge or fibril")),
        }
    }
}

impl fmt::Display for CniMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CniMode::Bridge => "bridge",
            CniMode::Fibril => "fibril",
        })
    }
}

/// How pod traffic crosses nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    Native,
    Tunnel,
}

impl FromStr for RoutingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(RoutingMode::Native),
            "tunnel" => Ok(RoutingMode::Tunnel),
            other => Err(format!(
                "unknown routing mode {other:?}: expected native or tunnel"
            )),
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingMode::Native => "native",
            RoutingMode::Tunnel => "tunnel",
        })
    }
}

/// What the user asked for with `fibril lab up`. Persisted in the lab's state dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    pub name: LabName,
    pub nodes: u8,
    pub cni: CniMode,
    pub routing: RoutingMode,
    /// The L2 underlay all nodes share (kind's docker network).
    pub fabric_cidr: Ipv4Net,
    /// The cluster pod CIDR; each node gets a `/node_mask` block of it.
    pub pod_cidr: Ipv4Net,
    pub node_mask: u8,
    pub service_cidr: Ipv4Net,
    /// The outside world's subnet, behind the fabric's router.
    pub world_cidr: Ipv4Net,
    /// Where `--cni fibril` agents get their pod ranges: `kubernetes` (the lab's node IPAM
    /// controller assigns `spec.podCIDR` blocks of `podCidr`) or `cluster-pool` (the agents
    /// claim `/nodeMask` blocks of `podCidr` themselves; the node IPAM controller stays out).
    #[serde(default = "default_lab_ipam")]
    pub ipam: IpamMode,
    /// More subnets on the world side, each routed in every node via the fabric router (a
    /// firewall or VPC subnet, as in seed 000). The world host answers on the first address
    /// of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub world_subnets: Vec<Ipv4Net>,
}

fn default_lab_ipam() -> IpamMode {
    IpamMode::Kubernetes
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            name: LabName::default(),
            nodes: 3,
            cni: CniMode::Fibril,
            routing: RoutingMode::Native,
            fabric_cidr: "172.18.0.0/16".parse().expect("valid"),
            pod_cidr: "10.244.0.0/16".parse().expect("valid"),
            node_mask: 24,
            service_cidr: "10.96.0.0/16".parse().expect("valid"),
            world_cidr: "203.0.113.0/24".parse().expect("valid"),
            ipam: default_lab_ipam(),
            world_subnets: Vec::new(),
        }
    }
}

/// One problem with a [`LabSpec`], naming its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The largest lab: node addresses are `.10 + i` in the fabric, and a node's index
/// must fit in the last octet.
pub const MAX_NODES: u8 = 200;

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl LabSpec {
    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.nodes == 0 || self.nodes > MAX_NODES {
            errs.push(FieldError::new(
                "nodes",
                format!("must be between 1 and {MAX_NODES}, got {}", self.nodes),
            ));
        }
        if self.fabric_cidr.prefix_len() > 24 {
            errs.push(FieldError::new(
                "fabricCidr",
                format!(
                    "{} is too small: the fabric needs at least a /24",
                    self.fabric_cidr
                ),
            ));
        }
        let cluster_pool = self.ipam == IpamMode::ClusterPool;
        if cluster_pool && self.cni != CniMode::Fibril {
            errs.push(FieldError::new(
                "ipam",
                format!(
                    "cluster-pool is fibril's IPAM mode and needs --cni fibril (cni is {})",
                    self.cni
                ),
            ));
        }
        if self.node_mask < self.pod_cidr.prefix_len() || self.node_mask > 28 {
            errs.push(FieldError::new(
                "nodeMask",
                format!(
                    "/{} must be between the pod CIDR's /{} and /28",
                    self.node_mask,
                    self.pod_cidr.prefix_len()
                ),
            ));
        } else if !cluster_pool {
            // In cluster-pool mode fibril's agents claim the blocks, and a pool too small
            // for every node is theirs to report (exhaustion shows in `fibril status`).
            let blocks = 1u64 << (self.node_mask - self.pod_cidr.prefix_len());
            if blocks < u64::from(self.nodes) {
                errs.push(FieldError::new(
                    "podCidr",
                    format!(
                        "{} holds only {blocks} /{} node blocks, fewer than {} nodes",
                        self.pod_cidr, self.node_mask, self.nodes
                    ),
                ));
            }
        }
        let mut nets = vec![
            ("fabricCidr".to_string(), self.fabric_cidr),
            ("podCidr".to_string(), self.pod_cidr),
            ("serviceCidr".to_string(), self.service_cidr),
            ("worldCidr".to_string(), self.world_cidr),
        ];
        for (i, w) in self.world_subnets.iter().enumerate() {
            nets.push((format!("worldSubnets[{i}]"), *w));
            if w.prefix_len() > 30 {
                errs.push(FieldError::new(
                    format!("worldSubnets[{i}]"),
                    format!("{w} is too small: needs at least a /30"),
                ));
            }
        }
        for (i, (fa, a)) in nets.iter().enumerate() {
            for (fb, b) in nets.iter().skip(i + 1) {
                // With fibril's CNI, a pod range overlapping the fabric or a world subnet is
                // for fibril's agent to refuse, naming both ranges (seed 000): the lab lets
                // it get that far so that the refusal can be seen.
                let network = |f: &str| {
                    f == "fabricCidr" || f == "worldCidr" || f.starts_with("worldSubnets")
                };
                let pod_vs_network = self.cni == CniMode::Fibril
                    && ((fa == "podCidr" && network(fb)) || (fb == "podCidr" && network(fa)));
                if overlaps(a, b) && !pod_vs_network {
                    errs.push(FieldError::new(
                        fb.clone(),
                        format!("{b} overlaps {fa} {a}"),
                    ));
                }
            }
        }
        if self.world_cidr.prefix_len() > 29 {
            errs.push(FieldError::new(
                "worldCidr",
                format!("{} is too small: needs at least a /29", self.world_cidr),
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    pub fn layout(&self) -> LabLayout {
        LabLayout { spec: self.clone() }
    }
}

/// Every name, address and path derived from a [`LabSpec`].
#[derive(Clone, Debug)]
pub struct LabLayout {
    pub spec: LabSpec,
}

fn nth(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

impl LabLayout {
    pub fn name(&self) -> &LabName {
        &self.spec.name
    }

    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("{}-", self.spec.name)
    }
    pub fn fabric_netns(&self) -> String {
        format!("{}-fabric", self.spec.name)
    }
    pub fn cp_netns(&self) -> String {
        format!("{}-cp", self.spec.name)
    }
    pub fn world_netns(&self) -> String {
        format!("{}-world", self.spec.name)
    }
    /// Node indices are 1-based.
    pub fn node_name(&self, i: u8) -> String {
        format!("{}-node-{i}", self.spec.name)
    }
    /// A node's netns carries the node's name.
    pub fn node_netns(&self, i: u8) -> String {
        self.node_name(i)
    }
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.spec.nodes).map(|i| self.node_name(i)).collect()
    }
    pub fn node_index(&self, node: &str) -> Option<u8> {
        (1..=self.spec.nodes).find(|&i| self.node_name(i) == node)
    }
    /// A pod's netns, derived from the pod's UID so that it is unique and stable.
    pub fn pod_netns(&self, pod_uid: &str) -> String {
        let short: String = pod_uid.chars().filter(|c| *c != '-').take(12).collect();
        format!("{}-pod-{short}", self.spec.name)
    }

    /// The fabric bridge's own address: the nodes' default gateway and the world router.
    pub fn fabric_gateway(&self) -> Ipv4Addr {
        nth(&self.spec.fabric_cidr, 1)
    }
    pub fn cp_ip(&self) -> Ipv4Addr {
        nth(&self.spec.fabric_cidr, 2)
    }
    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        nth(&self.spec.fabric_cidr, 10 + u32::from(i))
    }
    /// The router's address on the world side.
    pub fn world_router_ip(&self) -> Ipv4Addr {
        nth(&self.spec.world_cidr, 1)
    }
    /// The outside host.
    pub fn world_host_ip(&self) -> Ipv4Addr {
        nth(&self.spec.world_cidr, 10)
    }
    /// The world host's address in one of the extra world subnets (its first address).
    pub fn world_subnet_host_ip(&self, subnet: &Ipv4Net) -> Ipv4Addr {
        nth(subnet, 1)
    }
    /// The API server URL as nodes reach it.
    pub fn api_url(&self) -> String {
        format!("http://{}:{}", self.cp_ip(), consts::API_SERVER_PORT)
    }
    /// The node's pod CIDR block for node `i` (block `i - 1` of the pool).
    pub fn node_pod_cidr(&self, i: u8) -> Option<Ipv4Net> {
        self.spec
            .pod_cidr
            .subnets(self.spec.node_mask)
            .ok()?
            .nth(usize::from(i).checked_sub(1)?)
    }
    /// The cluster DNS ClusterIP: the tenth address of the service CIDR, as kubeadm does.
    pub fn cluster_dns_ip(&self) -> Ipv4Addr {
        nth(&self.spec.service_cidr, 10)
    }

    /// The range the lab's agents accept in Services' `spec.externalIPs` (the lower half
    /// of TEST-NET-2); any other externalIP is refused (CVE-2020-8554).
    pub fn external_ip_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 25).expect("valid")
    }

    /// The lab's LoadBalancer pool (the upper half of TEST-NET-2): the lab's load-balancer
    /// controller assigns `status.loadBalancer.ingress` from it.
    pub fn load_balancer_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 128), 25).expect("valid")
    }

    pub fn state_root() -> PathBuf {
        std::env::var_os(consts::LAB_STATE_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(consts::LAB_STATE_ROOT))
    }
    pub fn state_dir(&self) -> PathBuf {
        Self::state_dir_of(&self.spec.name)
    }
    pub fn state_dir_of(name: &LabName) -> PathBuf {
        Self::state_root().join(name.as_str())
    }
    /// The persisted spec + runtime record.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("lab.json")
    }
    /// The pid of the lab's supervisor (which lives in the root netns).
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.state_dir().join("supervisor.pid")
    }
    /// The supervisor's live record of every component.
    pub fn components_file(&self) -> PathBuf {
        self.state_dir().join("components.json")
    }
    pub fn api_socket(&self) -> PathBuf {
        self.state_dir().join("api.sock")
    }
    pub fn api_data_dir(&self) -> PathBuf {
        self.state_dir().join("apiserver")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir().join("logs")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_dir().join("nodes").join(node)
    }
    /// The node's CNI conf dir (containerd's /etc/cni/net.d).
    pub fn node_cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("net.d")
    }
    /// The node's CNI binary dir (containerd's /opt/cni/bin), searched before Debian's.
    pub fn node_cni_bin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("bin")
    }
    /// Where the node's CNI plugins keep state (host-local's dataDir, cached results).
    pub fn node_cni_state_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("state")
    }
    /// The kubelet's own record of pods it runs (pids, netns, CNI result).
    pub fn node_kubelet_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubelet")
    }
    /// BPF pin dir of a node: `/sys/fs/bpf/fibril/<node>/`.
    pub fn node_bpf_pin_dir(&self, node: &str) -> PathBuf {
        PathBuf::from(consts::BPF_PIN_ROOT).join(node)
    }
    /// Resolv.conf that `ip netns exec` shows a pod's processes.
    pub fn pod_resolv_conf(&self, pod_netns: &str) -> PathBuf {
        PathBuf::from(consts::NETNS_ETC_DIR)
            .join(pod_netns)
            .join("resolv.conf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_prefix_free() {
        assert!("fibril".parse::<LabName>().is_ok());
        assert!("fib-x".parse::<LabName>().is_err());
        assert!("".parse::<LabName>().is_err());
        assert!("1abc".parse::<LabName>().is_err());
        assert!("abcdefghijklm".parse::<LabName>().is_err());
    }

    #[test]
    fn default_spec_is_valid_and_derives_kind_like_names() {
        let spec = LabSpec::default();
        spec.validate().unwrap();
        let l = spec.layout();
        assert_eq!(l.node_name(1), "fibril-node-1");
        assert_eq!(l.node_ip(1).to_string(), "172.18.0.11");
        assert_eq!(l.cp_ip().to_string(), "172.18.0.2");
        assert_eq!(l.node_pod_cidr(1).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(l.node_pod_cidr(3).unwrap().to_string(), "10.244.2.0/24");
        assert_eq!(l.cluster_dns_ip().to_string(), "10.96.0.10");
        assert_eq!(l.api_url(), "http://172.18.0.2:6443");
    }

    #[test]
    fn fibril_leaves_pod_range_overlaps_with_networks_to_its_agent() {
        let seed000 = LabSpec {
            ipam: IpamMode::ClusterPool,
            pod_cidr: "10.0.0.0/8".parse().unwrap(),
            service_cidr: "172.31.0.0/16".parse().unwrap(),
            world_subnets: vec!["10.0.64.0/24".parse().unwrap()],
            ..LabSpec::default()
        };
        seed000.validate().unwrap();
        let bridge = LabSpec {
            cni: CniMode::Bridge,
            ipam: IpamMode::Kubernetes,
            ..seed000.clone()
        };
        let errs = bridge.validate().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "worldSubnets[0]");
        let errs = LabSpec {
            cni: CniMode::Bridge,
            ..seed000.clone()
        }
        .validate()
        .unwrap_err();
        assert!(errs.iter().any(|e| e.field == "ipam"), "{errs:?}");
        // The world subnet must still stay clear of the lab's own plumbing.
        let errs = LabSpec {
            world_subnets: vec!["172.18.5.0/24".parse().unwrap()],
            ..seed000.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(errs[0].field, "worldSubnets[0]", "{errs:?}");
        // A pool smaller than the node count is the agents' exhaustion to report.
        LabSpec {
            pod_cidr: "10.0.0.0/23".parse().unwrap(),
            ..seed000
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn an_old_lab_record_without_the_new_fields_still_loads() {
        let mut v = serde_json::to_value(LabSpec::default()).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("ipam");
        m.remove("worldSubnets");
        let spec: LabSpec = serde_json::from_value(v).unwrap();
        assert_eq!(spec.ipam, IpamMode::Kubernetes);
    }

    #[test]
    fn validation_reports_every_field() {
        let spec = LabSpec {
            nodes: 0,
            service_cidr: "10.244.0.0/20".parse().unwrap(),
            node_mask: 8,
            ..LabSpec::default()
        };
        let errs = spec.validate().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"nodes"), "{errs:?}");
        assert!(fields.contains(&"nodeMask"), "{errs:?}");
        assert!(fields.contains(&"serviceCidr"), "{errs:?}");
        let overlap = errs.iter().find(|e| e.field == "serviceCidr").unwrap();
        assert!(overlap.message.contains("10.244.0.0/16"), "{overlap}");
    }
}
