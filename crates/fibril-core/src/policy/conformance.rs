//! The upstream NetworkPolicy conformance cases (`tests/conformance/netpol/`): the shared
//! model (`model.yaml`: namespaces x/y/z, pods a/b/c, ports 80/81 over TCP/UDP/SCTP, a
//! canonical pod-IP layout) and the case files (policies, probes, expected reachability,
//! multi-step actions), parsed strictly.
//!
//! A run is the same for every prober: start from [`Model::cluster_state`]; for each
//! [`Step`], apply its actions, then probe every expected cell and compare
//! ([`check_step`]). [`run_reference`] probes with the datapath model ([`super::eval`]);
//! the lab runner applies the same actions to a lab and probes with real traffic. A cell
//! that cannot be probed is a failure, never a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use super::cluster::{
    ClusterState, ContainerPort, NamespaceInfo, NodeInfo, PodInfo, PodKey, PolicyRef,
    NAMESPACE_NAME_LABEL,
};
use super::compile::Compiler;
use super::eval::evaluate;
use crate::manifest::{decode_strict, FieldProblem, TypedManifest};
use crate::services::L4Proto;

type Labels = BTreeMap<String, String>;

/// A case or model file that cannot be used: every problem, with its field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CaseError {
    pub file: String,
    pub problems: Vec<FieldProblem>,
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl CaseError {
    fn one(file: &str, path: impl Into<String>, msg: impl Into<String>) -> Self {
        CaseError {
            file: file.to_string(),
            problems: vec![FieldProblem::new(path, msg)],
        }
    }
}

/// YAML text → `T`, errors with the field path. Goes through a JSON value: serde_yaml 0.9
/// wants tags for enums, the files use one-key maps (`- create_policy: {...}`).
fn from_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, CaseError> {
    let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        CaseError::one(file, "", format!("invalid YAML{at}: {e}"))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        CaseError::one(
            file,
            if path == "." { String::new() } else { path },
            e.inner().to_string(),
        )
    })
}

/// Descriptive fields: present in the files, read by people, not by the runner.
type Note = Option<serde_yaml::Value>;

#[derive(Deserialize)]
// Descriptive fields (`Note`) are accepted, so unknown keys stay errors, and not read.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawModel {
    description: Note,
    sources: Note,
    namespaces: BTreeMap<String, RawLabels>,
    namespace_label_note: Note,
    pods: BTreeMap<PodKey, RawModelPod>,
    canonical_ip_note: Note,
    node_pod_cidrs: BTreeMap<String, Ipv4Net>,
    #[serde(default)]
    extra_pods_used_by_some_steps: BTreeMap<PodKey, RawExtraPod>,
    container_ports: Vec<ModelContainerPort>,
    container_port_note: Note,
    services: Note,
    probe: Note,
    loopback: Note,
    expected_entry_format: Note,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
    manifest_note: Note,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabels {
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelPod {
    #[serde(default)]
    labels: Labels,
    node: String,
    ip: Ipv4Addr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtraPod {
    ip: Ipv4Addr,
}

/// A pod of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPod {
    pub labels: Labels,
    pub node: String,
    /// The canonical address (only ipBlock cases depend on it).
    pub ip: Ipv4Addr,
}

/// A port every model pod serves, in its own container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelContainerPort {
    pub port: u16,
    pub protocol: L4Proto,
    pub name: String,
    pub container: String,
}

/// `model.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Namespace → labels.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<PodKey, ModelPod>,
    pub node_pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// Addresses of pods some steps create.
    pub extra_pod_ips: BTreeMap<PodKey, Ipv4Addr>,
    pub container_ports: Vec<ModelContainerPort>,
    /// The Namespace/Service/Pod manifests, as upstream builds them.
    pub manifests: Vec<serde_json::Value>,
}

impl Model {
    /// Parses `model.yaml` (`file` names it in errors).
    pub fn parse(file: &str, text: &str) -> Result<Model, CaseError> {
        let raw: RawModel = from_yaml(file, text)?;
        let mut problems = Vec::new();
        for (k, p) in &raw.pods {
            if !raw.namespaces.contains_key(&k.namespace) {
                problems.push(FieldProblem::new(
                    format!("pods.{k}"),
                    format!("namespace {:?} is not in `namespaces`", k.namespace),
                ));
            }
            if !raw.node_pod_cidrs.contains_key(&p.node) {
                problems.push(FieldProblem::new(
                    format!("pods.{k}.node"),
                    format!("node {:?} is not in `node_pod_cidrs`", p.node),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(CaseError {
                file: file.to_string(),
                problems,
            });
        }
        Ok(Model {
            namespaces: raw
                .namespaces
                .into_iter()
                .map(|(k, v)| (k, v.labels))
                .collect(),
            pods: raw
                .pods
                .into_iter()
                .map(|(k, p)| {
                    (
                        k,
                        ModelPod {
                            labels: p.labels,
                            node: p.node,
                            ip: p.ip,
                        },
                    )
                })
                .collect(),
            node_pod_cidrs: raw.node_pod_cidrs,
            extra_pod_ips: raw
                .extra_pods_used_by_some_steps
                .into_iter()
                .map(|(k, p)| (k, p.ip))
                .collect(),
            container_ports: raw.container_ports,
            manifests: raw.manifests,
        })
    }

    /// The ports every model pod declares.
    pub fn pod_ports(&self) -> Vec<ContainerPort> {
        self.container_ports
            .iter()
            .map(|p| ContainerPort {
                name: Some(p.name.clone()),
                port: p.port,
                protocol: p.protocol,
            })
            .collect()
    }

    /// The model's canonical pod addresses.
    pub fn pod_ips(&self) -> BTreeMap<PodKey, Ipv4Addr> {
        self.pods.iter().map(|(k, p)| (k.clone(), p.ip)).collect()
    }

    /// The model as cluster state, with the canonical addresses: namespaces (plus
    /// `kubernetes.io/metadata.name`, which the API server adds), pods with every model
    /// port, and nodes with their pod ranges.
    pub fn cluster_state(&self) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, labels) in &self.namespaces {
            s.upsert_namespace(namespace(name, labels.clone()));
        }
        for (k, p) in &self.pods {
            s.upsert_pod(PodInfo {
                key: k.clone(),
                labels: p.labels.clone(),
                ip: Some(p.ip),
                node: Some(p.node.clone()),
                ports: self.pod_ports(),
                host_network: false,
            });
        }
        for (name, cidr) in &self.node_pod_cidrs {
            s.upsert_node(NodeInfo {
                name: name.clone(),
                ips: Vec::new(),
                pod_cidrs: vec![*cidr],
            });
        }
        s
    }
}

fn namespace(name: &str, mut labels: Labels) -> NamespaceInfo {
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.to_string());
    NamespaceInfo {
        name: name.to_string(),
        labels,
    }
}

/// One probe: a backend port and protocol, tried for every ordered pair of pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    pub protocol: L4Proto,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// One expected cell of a reachability matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub from: PodKey,
    pub to: PodKey,
    pub port: u16,
    pub protocol: L4Proto,
    pub allowed: bool,
}

impl Cell {
    pub fn probe(&self) -> Probe {
        Probe {
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// Whether `observed` is what the cell expects (only "allowed" and "denied" can be).
    pub fn matches(&self, observed: &Observed) -> bool {
        match observed {
            Observed::Allowed => self.allowed,
            Observed::Denied => !self.allowed,
            Observed::Unprobed(_) | Observed::Unsupported(_) => false,
        }
    }

    /// The mismatch, when `observed` is not what the cell expects.
    pub fn mismatch(&self, observed: Observed) -> Option<Mismatch> {
        (!self.matches(&observed)).then(|| Mismatch {
            from: self.from.clone(),
            to: self.to.clone(),
            port: self.port,
            protocol: self.protocol,
            expected: self.allowed,
            observed,
        })
    }
}

/// One change a step makes to the cluster. `P` is the policy: a
/// [`NetworkPolicy`] once parsed, the raw JSON while parsing.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action<P = Box<NetworkPolicy>> {
    CreatePolicy(P),
    UpdatePolicy(P),
    DeletePolicy(PolicyRef),
    DeleteAllPolicies {},
    /// Replaces the namespace's whole label map.
    SetNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    /// Replaces the pod's whole label map.
    SetPodLabels {
        pod: PodKey,
        labels: Labels,
    },
    CreateNamespace {
        namespace: String,
        #[serde(default)]
        labels: Labels,
    },
    DeleteNamespace {
        namespace: String,
    },
    /// `ip`: else the model's `extra_pods_used_by_some_steps`; `ports`: else the model's.
    CreatePod {
        pod: PodKey,
        #[serde(default)]
        labels: Labels,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        ports: Option<Vec<ContainerPort>>,
    },
    DeletePod {
        pod: PodKey,
    },
}

impl<P> Action<P> {
    /// The same action with its policy converted by `f`.
    fn try_map<Q, E>(self, f: impl FnOnce(P) -> Result<Q, E>) -> Result<Action<Q>, E> {
        Ok(match self {
            Action::CreatePolicy(p) => Action::CreatePolicy(f(p)?),
            Action::UpdatePolicy(p) => Action::UpdatePolicy(f(p)?),
            Action::DeletePolicy(r) => Action::DeletePolicy(r),
            Action::DeleteAllPolicies {} => Action::DeleteAllPolicies {},
            Action::SetNamespaceLabels { namespace, labels } => {
                Action::SetNamespaceLabels { namespace, labels }
            }
            Action::SetPodLabels { pod, labels } => Action::SetPodLabels { pod, labels },
            Action::CreateNamespace { namespace, labels } => {
                Action::CreateNamespace { namespace, labels }
            }
            Action::DeleteNamespace { namespace } => Action::DeleteNamespace { namespace },
            Action::CreatePod {
                pod,
                labels,
                ip,
                ports,
            } => Action::CreatePod {
                pod,
                labels,
                ip,
                ports,
            },
            Action::DeletePod { pod } => Action::DeletePod { pod },
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let np = |n: &NetworkPolicy| {
            PolicyRef::of(n)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        match self {
            Action::CreatePolicy(n) => write!(f, "create policy {}", np(n)),
            Action::UpdatePolicy(n) => write!(f, "update policy {}", np(n)),
            Action::DeletePolicy(r) => write!(f, "delete policy {r}"),
            Action::DeleteAllPolicies {} => f.write_str("delete all policies"),
            Action::SetNamespaceLabels { namespace, labels } => {
                write!(f, "set labels of namespace {namespace} to {labels:?}")
            }
            Action::SetPodLabels { pod, labels } => {
                write!(f, "set labels of pod {pod} to {labels:?}")
            }
            Action::CreateNamespace { namespace, .. } => write!(f, "create namespace {namespace}"),
            Action::DeleteNamespace { namespace } => write!(f, "delete namespace {namespace}"),
            Action::CreatePod { pod, .. } => write!(f, "create pod {pod}"),
            Action::DeletePod { pod } => write!(f, "delete pod {pod}"),
        }
    }
}

#[derive(Deserialize)]
// Descriptive fields (`Note`) are accepted, so unknown keys stay errors, and not read.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawStep {
    label: String,
    actions: Vec<Action<serde_json::Value>>,
    probes: Vec<Probe>,
    upstream_expectations: Note,
    expected: Vec<Cell>,
    #[serde(default)]
    pods_present: Option<Vec<PodKey>>,
}

#[derive(Deserialize)]
// Descriptive fields (`Note`) are accepted, so unknown keys stay errors, and not read.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    source: Note,
    expected_source: Note,
    crosscheck: Note,
    #[serde(default)]
    ip_dependent_values: BTreeMap<Ipv4Net, String>,
    notes: Note,
    probes: Vec<Probe>,
    policies: Vec<serde_json::Value>,
    upstream_expectations: Note,
    expected: Vec<Cell>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

/// One step of a case: actions, then probes and what they must show.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub label: String,
    pub actions: Vec<Action>,
    pub probes: Vec<Probe>,
    pub expected: Vec<Cell>,
    /// The pods present in this step, when the case says so (else: every pod of the state).
    pub pods_present: Option<Vec<PodKey>>,
}

/// A case file. Step 0 creates the case's `policies` (in order); the file's `steps` follow,
/// applied cumulatively.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub name: String,
    /// Addresses in the policies that derive from the canonical pod IPs → the derivation.
    pub ip_dependent_values: BTreeMap<Ipv4Net, String>,
    pub steps: Vec<Step>,
}

fn policy(path: &str, v: &serde_json::Value) -> Result<Box<NetworkPolicy>, Vec<FieldProblem>> {
    let rebase = |p: FieldProblem| {
        FieldProblem::new(
            if p.path.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{}", p.path)
            },
            p.message,
        )
    };
    match decode_strict(v) {
        Ok(TypedManifest::NetworkPolicy(np)) => {
            let mut problems: Vec<FieldProblem> = PolicyRef::of(&np)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(rebase)
                .collect();
            if let Err(ps) = super::normalize::validate(&np) {
                problems.extend(ps.into_iter().map(rebase));
            }
            if problems.is_empty() {
                Ok(np)
            } else {
                Err(problems)
            }
        }
        Ok(other) => Err(vec![FieldProblem::new(
            format!("{path}.kind"),
            format!(
                "expected a NetworkPolicy, found {}",
                other.to_value()["kind"]
            ),
        )]),
        Err(e) => Err(e.problems.into_iter().map(rebase).collect()),
    }
}

impl Case {
    /// Parses a case file (`file` names it in errors). Every policy must be a valid
    /// NetworkPolicy, every expected cell must belong to one of its step's probes, and no
    /// cell may be listed twice or be a pod to itself.
    pub fn parse(file: &str, text: &str) -> Result<Case, CaseError> {
        let raw: RawCase = from_yaml(file, text)?;
        let mut problems = Vec::new();
        let initial: Vec<Action> = raw
            .policies
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match policy(&format!("policies[{i}]"), v) {
                Ok(np) => Some(Action::CreatePolicy(np)),
                Err(ps) => {
                    problems.extend(ps);
                    None
                }
            })
            .collect();
        let mut steps = vec![Step {
            label: "initial policies".to_string(),
            actions: initial,
            probes: raw.probes,
            expected: raw.expected,
            pods_present: None,
        }];
        for (si, s) in raw.steps.into_iter().enumerate() {
            let mut actions = Vec::new();
            for (ai, a) in s.actions.into_iter().enumerate() {
                let path = format!("steps[{si}].actions[{ai}]");
                let at = match &a {
                    Action::CreatePolicy(_) => format!("{path}.create_policy"),
                    Action::UpdatePolicy(_) => format!("{path}.update_policy"),
                    _ => path,
                };
                match a.try_map(|v| policy(&at, &v)) {
                    Ok(a) => actions.push(a),
                    Err(ps) => problems.extend(ps),
                }
            }
            steps.push(Step {
                label: s.label,
                actions,
                probes: s.probes,
                expected: s.expected,
                pods_present: s.pods_present,
            });
        }
        for (si, s) in steps.iter().enumerate() {
            let base = if si == 0 {
                "expected".to_string()
            } else {
                format!("steps[{}].expected", si - 1)
            };
            let probes: BTreeSet<Probe> = s.probes.iter().copied().collect();
            let mut seen = BTreeSet::new();
            for (ci, c) in s.expected.iter().enumerate() {
                let path = format!("{base}[{ci}]");
                if !probes.contains(&c.probe()) {
                    problems.push(FieldProblem::new(
                        &path,
                        format!("{} is not one of the step's probes", c.probe()),
                    ));
                }
                if c.from == c.to {
                    problems.push(FieldProblem::new(
                        &path,
                        "a pod to itself (loopback is not probed)",
                    ));
                }
                if !seen.insert((c.from.clone(), c.to.clone(), c.probe())) {
                    problems.push(FieldProblem::new(
                        &path,
                        format!("{} -> {} {} is listed twice", c.from, c.to, c.probe()),
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(CaseError {
                file: file.to_string(),
                problems,
            });
        }
        Ok(Case {
            name: raw.name,
            ip_dependent_values: raw.ip_dependent_values,
            steps,
        })
    }

    /// The case for another address layout: every ip-dependent value re-derived from
    /// `pod_ips` and replaced in every policy's ipBlocks. With the model's canonical
    /// addresses this is the case itself.
    pub fn rederive(&self, pod_ips: &BTreeMap<PodKey, Ipv4Addr>) -> Result<Case, CaseError> {
        let mut map = BTreeMap::new();
        let mut problems = Vec::new();
        for (value, how) in &self.ip_dependent_values {
            match derive(how, pod_ips) {
                Ok(v) => {
                    map.insert(*value, v);
                }
                Err(m) => {
                    problems.push(FieldProblem::new(format!("ip_dependent_values.{value}"), m))
                }
            }
        }
        if !problems.is_empty() {
            return Err(CaseError {
                file: self.name.clone(),
                problems,
            });
        }
        let mut case = self.clone();
        for step in &mut case.steps {
            for a in &mut step.actions {
                if let Action::CreatePolicy(np) | Action::UpdatePolicy(np) = a {
                    replace_blocks(np, &map);
                }
            }
        }
        case.ip_dependent_values = self
            .ip_dependent_values
            .iter()
            .map(|(k, v)| (map[k], v.clone()))
            .collect();
        Ok(case)
    }
}

/// Evaluates one derivation as the case files spell them: `IP of pod NS/NAME as /32`,
/// `/N containing NS/NAME`, `the /N containing the pod IPs` (upstream's
/// `makeLargeCIDRForIP(x/b)`: x/b's /N, which must hold every pod).
pub fn derive(how: &str, pod_ips: &BTreeMap<PodKey, Ipv4Addr>) -> Result<Ipv4Net, String> {
    let ip_of = |k: &str| -> Result<Ipv4Addr, String> {
        let key: PodKey = k.parse().map_err(|e| format!("{e}"))?;
        pod_ips
            .get(&key)
            .copied()
            .ok_or_else(|| format!("no address for pod {key}"))
    };
    let net = |ip: Ipv4Addr, len: &str| -> Result<Ipv4Net, String> {
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        Ipv4Net::new(ip, len)
            .map(|n| n.trunc())
            .map_err(|e| e.to_string())
    };
    let words: Vec<&str> = how.split_whitespace().collect();
    match words.as_slice() {
        ["IP", "of", "pod", pod, "as", len] if len.starts_with('/') => net(ip_of(pod)?, &len[1..]),
        [len, "containing", pod] if len.starts_with('/') => net(ip_of(pod)?, &len[1..]),
        ["the", len, "containing", "the", "pod", "IPs", ..] if len.starts_with('/') => {
            let n = net(ip_of("x/b")?, &len[1..])?;
            match pod_ips.iter().find(|(_, ip)| !n.contains(*ip)) {
                Some((k, ip)) => Err(format!("{n} (around x/b) does not hold {k} ({ip})")),
                None => Ok(n),
            }
        }
        _ => Err(format!("unknown derivation {how:?}")),
    }
}

fn replace_blocks(np: &mut NetworkPolicy, map: &BTreeMap<Ipv4Net, Ipv4Net>) {
    let Some(spec) = np.spec.as_mut() else { return };
    let peers = spec
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.from.iter_mut().flatten())
        .chain(
            spec.egress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.to.iter_mut().flatten()),
        );
    let swap = |s: &mut String| {
        if let Some(n) = s.parse::<Ipv4Net>().ok().and_then(|n| map.get(&n.trunc())) {
            *s = n.to_string();
        }
    };
    for peer in peers {
        if let Some(b) = peer.ip_block.as_mut() {
            swap(&mut b.cidr);
            b.except.iter_mut().flatten().for_each(swap);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{what} {name} already exists")]
    Exists { what: &'static str, name: String },
    #[error("{what} {name} does not exist")]
    Missing { what: &'static str, name: String },
    #[error("policy: {0}")]
    Policy(String),
    #[error("pod {0}: no address given and none in the model's extra pods")]
    NoAddress(PodKey),
}

/// Applies one action to `state`, as the API server would (errors where it would refuse).
pub fn apply_action(
    state: &mut ClusterState,
    model: &Model,
    action: &Action,
) -> Result<(), ActionError> {
    let missing = |what, name: &dyn fmt::Display| ActionError::Missing {
        what,
        name: name.to_string(),
    };
    let exists = |what, name: &dyn fmt::Display| ActionError::Exists {
        what,
        name: name.to_string(),
    };
    let pref = |np: &NetworkPolicy| {
        PolicyRef::of(np).map_err(|ps| {
            ActionError::Policy(
                ps.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    };
    match action {
        Action::CreatePolicy(np) => {
            let r = pref(np)?;
            if state.policies.contains_key(&r) {
                return Err(exists("NetworkPolicy", &r));
            }
            state.policies.insert(r, (**np).clone());
        }
        Action::UpdatePolicy(np) => {
            let r = pref(np)?;
            if !state.policies.contains_key(&r) {
                return Err(missing("NetworkPolicy", &r));
            }
            state.policies.insert(r, (**np).clone());
        }
        Action::DeletePolicy(r) => {
            state
                .policies
                .remove(r)
                .ok_or_else(|| missing("NetworkPolicy", r))?;
        }
        Action::DeleteAllPolicies {} => state.policies.clear(),
        Action::SetNamespaceLabels {
            namespace: ns,
            labels,
        } => {
            if !state.namespaces.contains_key(ns) {
                return Err(missing("namespace", ns));
            }
            state.upsert_namespace(namespace(ns, labels.clone()));
        }
        Action::SetPodLabels { pod, labels } => {
            state
                .pods
                .get_mut(pod)
                .ok_or_else(|| missing("pod", pod))?
                .labels = labels.clone();
        }
        Action::CreateNamespace {
            namespace: ns,
            labels,
        } => {
            if state.namespaces.contains_key(ns) {
                return Err(exists("namespace", ns));
            }
            state.upsert_namespace(namespace(ns, labels.clone()));
        }
        Action::DeleteNamespace { namespace } => {
            state
                .remove_namespace(namespace)
                .ok_or_else(|| missing("namespace", namespace))?;
        }
        Action::CreatePod {
            pod,
            labels,
            ip,
            ports,
        } => {
            if state.pods.contains_key(pod) {
                return Err(exists("pod", pod));
            }
            if !state.namespaces.contains_key(&pod.namespace) {
                return Err(missing("namespace", &pod.namespace));
            }
            let ip = ip
                .or_else(|| model.extra_pod_ips.get(pod).copied())
                .ok_or_else(|| ActionError::NoAddress(pod.clone()))?;
            state.upsert_pod(PodInfo {
                key: pod.clone(),
                labels: labels.clone(),
                ip: Some(ip),
                node: None,
                ports: ports.clone().unwrap_or_else(|| model.pod_ports()),
                host_network: false,
            });
        }
        Action::DeletePod { pod } => {
            state.pods.remove(pod).ok_or_else(|| missing("pod", pod))?;
        }
    }
    Ok(())
}

/// What probing one cell showed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    Allowed,
    Denied,
    /// The cell could not be probed (a failure, never a pass), with the reason.
    Unprobed(String),
    /// The prober cannot carry this cell's protocol here (e.g. a kernel without SCTP), with
    /// the reason: counted apart from [`Observed::Unprobed`], and a failure too.
    Unsupported(String),
}

impl Observed {
    /// Whether the cell was really probed (allowed or denied).
    pub fn probed(&self) -> bool {
        matches!(self, Observed::Allowed | Observed::Denied)
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Allowed => f.write_str("allowed"),
            Observed::Denied => f.write_str("denied"),
            Observed::Unprobed(why) => write!(f, "not probed ({why})"),
            Observed::Unsupported(why) => write!(f, "unsupported ({why})"),
        }
    }
}

/// A cell whose observation differs from its expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub from: PodKey,
    pub to: PodKey,
    pub port: u16,
    pub protocol: L4Proto,
    pub expected: bool,
    pub observed: Observed,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}: expected {}, observed {}",
            self.from,
            self.to,
            self.port,
            self.protocol,
            if self.expected { "allowed" } else { "denied" },
            self.observed
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub label: String,
    /// Cells probed.
    pub cells: usize,
    pub mismatches: Vec<Mismatch>,
    /// Anything else that makes the step fail (an action refused, a pair without an
    /// expectation, an invalid compiled policy).
    pub errors: Vec<String>,
    /// TCP cells probed in place of cells whose protocol the prober cannot carry
    /// ([`tcp_stand_ins`]); their mismatches fail the step like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_ins: Option<StandIns>,
}

/// The TCP stand-ins of a step's unsupported cells, and how they went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandIns {
    /// The protocol they stand in for.
    pub for_protocol: L4Proto,
    pub cells: usize,
    pub mismatches: Vec<Mismatch>,
}

/// What a step or a case showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every cell observed as expected.
    Pass,
    /// Every cell the prober can carry observed as expected, and the stand-ins of those it
    /// cannot too; some cells are [`Observed::Unsupported`]. Never a pass.
    Unsupported,
    /// A cell observed otherwise or not probed, a stand-in wrong, or an error.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Unsupported => "UNSUPPORTED",
            Verdict::Fail => "FAIL",
        })
    }
}

impl StepReport {
    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Pass
    }

    pub fn verdict(&self) -> Verdict {
        let stand_ins_ok = self
            .stand_ins
            .as_ref()
            .is_none_or(|s| s.mismatches.is_empty());
        if !self.errors.is_empty() || !stand_ins_ok {
            return Verdict::Fail;
        }
        let unsupported = |m: &Mismatch| matches!(m.observed, Observed::Unsupported(_));
        if self.mismatches.iter().all(unsupported) {
            if self.mismatches.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Unsupported
            }
        } else {
            Verdict::Fail
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseReport {
    pub name: String,
    pub steps: Vec<StepReport>,
}

impl CaseReport {
    /// A case passes when it ran every step and each passed.
    pub fn passed(&self, case: &Case) -> bool {
        self.verdict(case) == Verdict::Pass
    }

    /// The worst of its steps' verdicts; a case that did not run every step fails.
    pub fn verdict(&self, case: &Case) -> Verdict {
        if self.steps.len() != case.steps.len() {
            return Verdict::Fail;
        }
        self.steps
            .iter()
            .map(StepReport::verdict)
            .max()
            .unwrap_or(Verdict::Pass)
    }

    /// Every failing cell and error, one line each: `case step N (label): ...`. Unsupported
    /// cells are summed up, one line per step and reason, with their stand-ins.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let at = format!("{} step {i} ({})", self.name, s.label);
            for e in &s.errors {
                out.push(format!("{at}: {e}"));
            }
            let mut unsupported: BTreeMap<(L4Proto, &str), usize> = BTreeMap::new();
            for m in &s.mismatches {
                match &m.observed {
                    Observed::Unsupported(why) => {
                        *unsupported.entry((m.protocol, why.as_str())).or_default() += 1
                    }
                    _ => out.push(format!("{at}: {m}")),
                }
            }
            for ((proto, why), n) in unsupported {
                out.push(format!("{at}: {n} {proto} cells unsupported ({why})"));
            }
            if let Some(st) = &s.stand_ins {
                out.push(format!(
                    "{at}: {} TCP stand-ins for the {} cells, {} as the policy model expects",
                    st.cells,
                    st.for_protocol,
                    if st.mismatches.is_empty() {
                        "all".to_string()
                    } else {
                        format!("{} NOT", st.mismatches.len())
                    }
                ));
                for m in &st.mismatches {
                    out.push(format!("{at}: stand-in {m}"));
                }
            }
        }
        out
    }
}

/// Probes a step's expected cells with `observe` and compares. The expectations must cover
/// every probe for every ordered pair of distinct `present` pods; a missing one is an error.
pub fn check_step(
    step: &Step,
    present: &[PodKey],
    mut observe: impl FnMut(&Cell) -> Observed,
) -> StepReport {
    let mut report = StepReport {
        label: step.label.clone(),
        ..Default::default()
    };
    let listed: BTreeSet<(&PodKey, &PodKey, Probe)> = step
        .expected
        .iter()
        .map(|c| (&c.from, &c.to, c.probe()))
        .collect();
    for probe in &step.probes {
        for a in present {
            for b in present.iter().filter(|b| *b != a) {
                if !listed.contains(&(a, b, *probe)) {
                    report
                        .errors
                        .push(format!("no expectation for {a} -> {b} {probe}"));
                }
            }
        }
    }
    for c in &step.expected {
        if !present.contains(&c.from) || !present.contains(&c.to) {
            report.errors.push(format!(
                "expectation {} -> {} {} names a pod that is not present",
                c.from,
                c.to,
                c.probe()
            ));
            continue;
        }
        report.cells += 1;
        report.mismatches.extend(c.mismatch(observe(c)));
    }
    report
}

/// TCP cells that stand in for a step's `unsupported`-protocol cells, when the prober cannot
/// carry that protocol (SCTP on a kernel without it): the same pair and port over TCP,
/// expected as the datapath model ([`super::eval`]) decides on `compiled`, the step's state.
/// They show what the unsupported cells cannot: that a policy for that protocol leaves TCP
/// closed where it isolates, and open where it allows every protocol. Pairs the step probes
/// over TCP on that port already are left out; so are pairs with a pod not present.
pub fn tcp_stand_ins(
    step: &Step,
    present: &[PodKey],
    unsupported: L4Proto,
    compiled: &super::compile::CompiledPolicy,
) -> Result<Vec<Cell>, super::eval::EvalError> {
    let tcp: BTreeSet<(&PodKey, &PodKey, u16)> = step
        .expected
        .iter()
        .filter(|c| c.protocol == L4Proto::Tcp)
        .map(|c| (&c.from, &c.to, c.port))
        .collect();
    let mut out = Vec::new();
    for c in &step.expected {
        if c.protocol != unsupported
            || tcp.contains(&(&c.from, &c.to, c.port))
            || !present.contains(&c.from)
            || !present.contains(&c.to)
        {
            continue;
        }
        let d = evaluate(compiled, &c.from, &c.to, c.port, L4Proto::Tcp)?;
        out.push(Cell {
            protocol: L4Proto::Tcp,
            allowed: d.allowed(),
            ..c.clone()
        });
    }
    Ok(out)
}

/// The pods a step probes between: its own list, else every pod of the state.
pub fn present_pods(step: &Step, state: &ClusterState) -> Vec<PodKey> {
    step.pods_present
        .clone()
        .unwrap_or_else(|| state.pods.keys().cloned().collect())
}

/// Runs a case against the datapath model: the model's cluster, each step's actions, the
/// compiler, and [`super::eval::evaluate`] for every cell. Probes use the backend port,
/// which the model's Services map one to one.
pub fn run_reference(model: &Model, case: &Case) -> CaseReport {
    let mut state = model.cluster_state();
    let mut compiler = Compiler::new();
    let mut report = CaseReport {
        name: case.name.clone(),
        steps: Vec::new(),
    };
    for step in &case.steps {
        let mut errors: Vec<String> = step
            .actions
            .iter()
            .filter_map(|a| {
                apply_action(&mut state, model, a)
                    .err()
                    .map(|e| format!("{a}: {e}"))
            })
            .collect();
        let compiled = match compiler.compile(&state) {
            Ok(c) => c,
            Err(e) => {
                report.steps.push(StepReport {
                    label: step.label.clone(),
                    errors: vec![e.to_string()],
                    ..Default::default()
                });
                return report;
            }
        };
        errors.extend(compiled.problems.iter().map(ToString::to_string));
        let present = present_pods(step, &state);
        let mut r = check_step(step, &present, |c| {
            match evaluate(&compiled, &c.from, &c.to, c.port, c.protocol) {
                Ok(d) if d.allowed() => Observed::Allowed,
                Ok(_) => Observed::Denied,
                Err(e) => Observed::Unprobed(e.to_string()),
            }
        });
        errors.append(&mut r.errors);
        r.errors = errors;
        report.steps.push(r);
    }
    report
}
