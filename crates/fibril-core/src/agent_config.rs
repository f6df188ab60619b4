//! The node agent's configuration: the file as written ([`AgentConfig`]) and the checked,
//! typed form the agent runs on ([`ValidConfig`]).
//!
//! Reading is two steps so that every problem is reported at once:
//! 1. [`AgentConfig::from_yaml`] reads the YAML. Only shape errors stop it (unknown field,
//!    wrong type); the error names the field path and the line.
//! 2. [`AgentConfig::validate`] checks everything else and reports every problem, each naming
//!    its field: bad CIDRs, a node mask outside the pool, a native-routing CIDR that does not
//!    cover the pool (seed 002), a pool overlapping the Service range or a reserved range
//!    (seed 000), settings of the other routing or IPAM mode, relative paths.
//!
//! Settings that are silently ignored are a surprise, so a setting that does not apply to the
//! chosen mode is an error, not a no-op.
//!
//! ```yaml
//! nodeName: lab-node-1
//! apiServer: https://172.18.0.2:6443
//! routingMode: native
//! nativeRoutingCidr: 10.244.0.0/16
//! ipam:
//!   mode: cluster-pool
//!   clusterPoolCidrs: [10.244.0.0/16]
//!   nodeMaskSize: 24
//!   reservedCidrs: [10.244.250.0/24]
//! serviceCidr: 10.96.0.0/16
//! services:
//!   allowedExternalIpCidrs: [198.51.100.0/25]
//! ```

use std::fmt;
use std::path::{Component, Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidr::contains;
use crate::consts;
use crate::ipam::{
    Candidate, ClusterPool, IpamError, NativeRoutingCidr, NodeName, NodeSubnet, OverlapCheck,
    PoolCidr, Reserved, RouteInfo, ServiceCidr,
};
use crate::lab::FieldError;
pub use crate::lab::RoutingMode;

/// Default `tunnelPort`: the Linux kernel's VXLAN port (and Cilium's), not IANA's 4789.
pub const DEFAULT_TUNNEL_PORT: u16 = 8472;
/// Default `cniConfDir`: where kubelet and container runtimes look for CNI configs.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Default `cniBinDir`: where runtimes look for CNI plugin binaries.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Default `stateDir`: IPAM allocations and endpoint state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fibril";
/// Default `socketPath`: the agent's local API, used by `fibril-cni` and `fibril status`
/// (the plugin protocol's default, so both sides agree).
pub const DEFAULT_SOCKET_PATH: &str = crate::cni_api::DEFAULT_AGENT_SOCKET;
/// Default `ipam.nodeMaskSize` for IPv4 pools: a /24 per node, 253 pods.
pub const DEFAULT_NODE_MASK_V4: u8 = 24;
/// Default `ipam.nodeMaskSize` for IPv6 pools.
pub const DEFAULT_NODE_MASK_V6: u8 = 112;
/// The longest `socketPath` a unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// The agent's configuration file, as written. Defaults are documented per field; fields
/// without a default are `Option`s so that [`validate`](Self::validate) can report every
/// missing one together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The Kubernetes node this agent runs on. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The API server's URL (`https://host:port`). Default: none, meaning the client's own
    /// discovery (in-cluster service account, then kubeconfig).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// `native` or `tunnel`. Default `tunnel`, which works on any underlay; `native` needs
    /// routes between nodes and `nativeRoutingCidr`.
    #[serde(default = "default_routing_mode")]
    pub routing_mode: RoutingMode,
    /// Destinations reachable without masquerading in native mode; must cover every pod range.
    /// Required in native mode, refused in tunnel mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_routing_cidr: Option<String>,
    /// Address management.
    #[serde(default)]
    pub ipam: IpamConfig,
    /// The cluster's Service range. Required: pools are checked against it, and a guessed
    /// default would make that check meaningless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// Run degraded (and say so in status and logs) instead of refusing to start when a
    /// feature cannot be honoured. Default `false`.
    #[serde(default)]
    pub allow_degraded: bool,
    /// VXLAN UDP port. Tunnel mode only; default [`DEFAULT_TUNNEL_PORT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port: Option<u16>,
    /// Where the CNI conflist is written once the agent is ready. Default
    /// [`DEFAULT_CNI_CONF_DIR`].
    #[serde(default = "default_cni_conf_dir")]
    pub cni_conf_dir: PathBuf,
    /// Where `fibril-cni` is installed. Default [`DEFAULT_CNI_BIN_DIR`].
    #[serde(default = "default_cni_bin_dir")]
    pub cni_bin_dir: PathBuf,
    /// Persistent agent state (IPAM allocations). Default [`DEFAULT_STATE_DIR`].
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Maps are pinned under `<bpfPinRoot>/<nodeName>/`. Default
    /// [`consts::BPF_PIN_ROOT`].
    #[serde(default = "default_bpf_pin_root")]
    pub bpf_pin_root: PathBuf,
    /// The agent's local API socket. Default [`DEFAULT_SOCKET_PATH`].
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    /// Service load balancing (the kube-proxy replacement).
    #[serde(default, skip_serializing_if = "ServicesConfig::is_default")]
    pub services: ServicesConfig,
}

/// The `services` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicesConfig {
    /// The ranges a Service's `spec.externalIPs` may use. Default none: every externalIP
    /// is refused, with an Event and a log line naming the Service. An unchecked
    /// externalIP lets anyone who can create a Service capture traffic meant for that
    /// address (CVE-2020-8554).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_external_ip_cidrs: Vec<String>,
    /// The `service.kubernetes.io/service-proxy-name` this agent implements. Default
    /// none: only Services without that label, as kube-proxy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_name: Option<String>,
}

impl ServicesConfig {
    fn is_default(&self) -> bool {
        *self == ServicesConfig::default()
    }
}

/// The checked `services` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidServices {
    /// `services.allowedExternalIpCidrs`.
    pub allowed_external_ips: Vec<ipnet::Ipv4Net>,
    /// `services.proxyName`.
    pub proxy_name: Option<String>,
}

/// The `ipam` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfig {
    /// `kubernetes` or `cluster-pool`. Default `cluster-pool`.
    #[serde(default)]
    pub mode: IpamMode,
    /// The pool node blocks are cut from. Required in cluster-pool mode, refused in
    /// kubernetes mode. There is deliberately no default: a default pool that collided with
    /// a firewall subnet is seed 000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_pool_cidrs: Vec<String>,
    /// Block size of each node. cluster-pool mode only; default
    /// [`DEFAULT_NODE_MASK_V4`] or [`DEFAULT_NODE_MASK_V6`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mask_size: Option<u8>,
    /// Ranges no pod range may overlap (firewalls, VPC subnets, on-prem). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_cidrs: Vec<String>,
}

/// Where a node's pod range comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    /// `node.spec.podCIDR`, assigned by the controller manager.
    Kubernetes,
    /// A block the agent claims from `clusterPoolCidrs`.
    #[default]
    ClusterPool,
}

impl fmt::Display for IpamMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpamMode::Kubernetes => "kubernetes",
            IpamMode::ClusterPool => "cluster-pool",
        })
    }
}

impl std::str::FromStr for IpamMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kubernetes" => Ok(IpamMode::Kubernetes),
            "cluster-pool" => Ok(IpamMode::ClusterPool),
            other => Err(format!(
                "unknown IPAM mode {other:?}: expected kubernetes or cluster-pool"
            )),
        }
    }
}

fn default_routing_mode() -> RoutingMode {
    RoutingMode::Tunnel
}
fn default_cni_conf_dir() -> PathBuf {
    DEFAULT_CNI_CONF_DIR.into()
}
fn default_cni_bin_dir() -> PathBuf {
    DEFAULT_CNI_BIN_DIR.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_bpf_pin_root() -> PathBuf {
    consts::BPF_PIN_ROOT.into()
}
fn default_socket_path() -> PathBuf {
    DEFAULT_SOCKET_PATH.into()
}

impl Default for AgentConfig {
    /// Every default, and none of the required fields.
    fn default() -> Self {
        AgentConfig {
            node_name: None,
            api_server: None,
            routing_mode: default_routing_mode(),
            native_routing_cidr: None,
            ipam: IpamConfig::default(),
            service_cidr: None,
            allow_degraded: false,
            tunnel_port: None,
            cni_conf_dir: default_cni_conf_dir(),
            cni_bin_dir: default_cni_bin_dir(),
            state_dir: default_state_dir(),
            bpf_pin_root: default_bpf_pin_root(),
            socket_path: default_socket_path(),
            services: ServicesConfig::default(),
        }
    }
}

/// Every problem found, each naming its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems, in the order they were found.
    pub errors: Vec<FieldError>,
}

impl ConfigErrors {
    /// The fields named, in order (for tests and tooling).
    pub fn fields(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.field.as_str()).collect()
    }

    /// The messages about `field`.
    pub fn about(&self, field: &str) -> Vec<&str> {
        self.errors
            .iter()
            .filter(|e| e.field == field)
            .map(|e| e.message.as_str())
            .collect()
    }
}

/// One `field: message` per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How pod traffic crosses nodes, with the settings of that mode only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Routed by the underlay; the agent installs routes to peers' pod ranges.
    Native {
        /// Destinations not masqueraded.
        native_routing_cidr: NativeRoutingCidr,
    },
    /// VXLAN between nodes.
    Tunnel {
        /// The UDP port.
        port: u16,
    },
}

impl Routing {
    /// The mode alone.
    pub fn mode(&self) -> RoutingMode {
        match self {
            Routing::Native { .. } => RoutingMode::Native,
            Routing::Tunnel { .. } => RoutingMode::Tunnel,
        }
    }
}

/// Where the node's pod range comes from, with the settings of that mode only.
#[derive(Clone, Debug)]
pub enum IpamSource {
    /// `node.spec.podCIDR` (check it with [`crate::ipam::check_node_pod_cidr`]).
    Kubernetes,
    /// A block claimed from this pool.
    ClusterPool(ClusterPool),
}

/// The agent's paths, all absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPaths {
    /// `cniConfDir`.
    pub cni_conf_dir: PathBuf,
    /// `cniBinDir`.
    pub cni_bin_dir: PathBuf,
    /// `stateDir`.
    pub state_dir: PathBuf,
    /// `bpfPinRoot`.
    pub bpf_pin_root: PathBuf,
    /// `socketPath`.
    pub socket_path: PathBuf,
}

/// A configuration that passed [`AgentConfig::validate`]: typed, and with only the settings
/// of the chosen modes.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    /// `nodeName`.
    pub node_name: NodeName,
    /// `apiServer`; `None` for the client's own discovery.
    pub api_server: Option<String>,
    /// `routingMode` and its settings.
    pub routing: Routing,
    /// `ipam.mode` and its settings.
    pub ipam: IpamSource,
    /// `serviceCidr`.
    pub service_cidr: ServiceCidr,
    /// `ipam.reservedCidrs`, each with its field as origin.
    pub reserved: Vec<Reserved>,
    /// `allowDegraded`.
    pub allow_degraded: bool,
    /// The paths.
    pub paths: AgentPaths,
    /// `services`.
    pub services: ValidServices,
}

impl ValidConfig {
    /// The overlap checks for this node: its routes and interface addresses (read by the
    /// agent) plus the configured Service range and reserved ranges.
    pub fn overlap_check(&self, routes: Vec<RouteInfo>, subnets: Vec<NodeSubnet>) -> OverlapCheck {
        OverlapCheck {
            node: self.node_name.clone(),
            routes,
            subnets,
            service_cidr: Some(self.service_cidr),
            reserved: self.reserved.clone(),
        }
    }

    /// The native-routing CIDR, in native mode.
    pub fn native_routing_cidr(&self) -> Option<&NativeRoutingCidr> {
        match &self.routing {
            Routing::Native {
                native_routing_cidr,
            } => Some(native_routing_cidr),
            Routing::Tunnel { .. } => None,
        }
    }

    /// Where this node's maps are pinned: `<bpfPinRoot>/<nodeName>/`.
    pub fn bpf_pin_dir(&self) -> PathBuf {
        self.paths.bpf_pin_root.join(self.node_name.as_str())
    }
}

/// `line 4 column 3: ` from a YAML error, if it has a position.
fn yaml_position(e: &serde_yaml::Error) -> String {
    e.location()
        .map(|l| format!("line {} column {}: ", l.line(), l.column()))
        .unwrap_or_default()
}

impl AgentConfig {
    /// Reads the YAML text. A shape error (unknown field, wrong type, bad YAML) names the field
    /// path and the line; everything else is left to [`validate`](Self::validate).
    pub fn from_yaml(text: &str) -> Result<AgentConfig, ConfigErrors> {
        // An empty file is an empty mapping: every default, and validate() lists what is
        // required, rather than a bare "EOF while parsing".
        let text = if text.trim().is_empty() { "{}" } else { text };
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut field = e.path().to_string();
            let inner = e.into_inner();
            let position = yaml_position(&inner);
            let mut message = inner.to_string();
            // serde_yaml puts the path in front and the position at the end; both are given
            // once, in their own places.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // (serde_yaml's path may be the parent's: for an unknown key it stops above it.)
            if let Some((prefix, rest)) = message.split_once(": ") {
                let under = |sep: char| {
                    field
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.is_empty() || r.starts_with(sep))
                };
                if under('.') || under('[') {
                    message = rest.to_string();
                }
            }
            if field == "." {
                field = "(document)".to_string();
            }
            ConfigErrors {
                errors: vec![FieldError::new(field, format!("{position}{message}"))],
            }
        })
    }

    /// Checks everything and returns the typed configuration, or every problem at once.
    pub fn validate(&self) -> Result<ValidConfig, ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |field: &str, message: String| errs.push(FieldError::new(field, message));

        let node_name = match &self.node_name {
            None => {
                err(
                    "nodeName",
                    "required: the Kubernetes node this agent runs on".into(),
                );
                None
            }
            Some(n) => n
                .parse::<NodeName>()
                .map_err(|e| err("nodeName", e.to_string()))
                .ok(),
        };

        if let Some(url) = &self.api_server {
            if let Err(m) = check_url(url) {
                err("apiServer", m);
            }
        }

        let service_cidr = match &self.service_cidr {
            None => {
                err(
                    "serviceCidr",
                    "required: every pod range is checked against the Service range".into(),
                );
                None
            }
            Some(s) => s
                .parse::<ServiceCidr>()
                .map_err(|e| err("serviceCidr", e.to_string()))
                .ok(),
        };

        let mut reserved = Vec::new();
        for (i, text) in self.ipam.reserved_cidrs.iter().enumerate() {
            let field = format!("ipam.reservedCidrs[{i}]");
            match crate::ipam::parse_cidr(text) {
                Ok(cidr) => reserved.push(Reserved {
                    cidr,
                    origin: field,
                }),
                Err(e) => err(&field, e.to_string()),
            }
        }

        let native = match (self.routing_mode, &self.native_routing_cidr) {
            (RoutingMode::Native, None) => {
                err(
                    "nativeRoutingCidr",
                    "required when routingMode is native: pod traffic to anything outside it \
                     is SNATed to the node"
                        .into(),
                );
                None
            }
            (RoutingMode::Native, Some(t)) => t
                .parse::<NativeRoutingCidr>()
                .map_err(|e| err("nativeRoutingCidr", e.to_string()))
                .ok(),
            (RoutingMode::Tunnel, Some(_)) => {
                err(
                    "nativeRoutingCidr",
                    "only used when routingMode is native (it is tunnel): remove it, or set \
                     routingMode: native"
                        .into(),
                );
                None
            }
            (RoutingMode::Tunnel, None) => None,
        };
        match (self.routing_mode, self.tunnel_port) {
            (RoutingMode::Native, Some(_)) => err(
                "tunnelPort",
                "only used when routingMode is tunnel (it is native): remove it, or set \
                 routingMode: tunnel"
                    .into(),
            ),
            (RoutingMode::Tunnel, Some(0)) => {
                err("tunnelPort", "must be between 1 and 65535, got 0".into())
            }
            _ => {}
        }

        let pool = match self.ipam.mode {
            IpamMode::Kubernetes => {
                if !self.ipam.cluster_pool_cidrs.is_empty() {
                    err(
                        "ipam.clusterPoolCidrs",
                        "only used in ipam mode cluster-pool (it is kubernetes, where the pod \
                         CIDR is node.spec.podCIDR): remove it, or set ipam.mode: cluster-pool"
                            .into(),
                    );
                }
                if self.ipam.node_mask_size.is_some() {
                    err(
                        "ipam.nodeMaskSize",
                        "only used in ipam mode cluster-pool (it is kubernetes, where the \
                         controller manager sizes node.spec.podCIDR): remove it, or set \
                         ipam.mode: cluster-pool"
                            .into(),
                    );
                }
                None
            }
            IpamMode::ClusterPool => {
                self.check_pool(&mut err, service_cidr.as_ref(), &reserved, native.as_ref())
            }
        };

        let paths = [
            ("cniConfDir", &self.cni_conf_dir),
            ("cniBinDir", &self.cni_bin_dir),
            ("stateDir", &self.state_dir),
            ("bpfPinRoot", &self.bpf_pin_root),
            ("socketPath", &self.socket_path),
        ];
        for (field, path) in paths {
            if let Err(m) = check_path(path) {
                err(field, m);
            }
        }
        let socket_len = self.socket_path.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH_LEN {
            err(
                "socketPath",
                format!(
                    "is {socket_len} bytes long; a unix socket path holds at most \
                     {MAX_SOCKET_PATH_LEN}"
                ),
            );
        }

        let services = self.check_services(&mut err, service_cidr.as_ref());

        let routing = match (self.routing_mode, native) {
            (RoutingMode::Native, Some(native_routing_cidr)) => Some(Routing::Native {
                native_routing_cidr,
            }),
            (RoutingMode::Tunnel, _) => Some(Routing::Tunnel {
                port: self.tunnel_port.unwrap_or(DEFAULT_TUNNEL_PORT),
            }),
            (RoutingMode::Native, None) => None,
        };
        let ipam = match (self.ipam.mode, pool) {
            (IpamMode::Kubernetes, _) => Some(IpamSource::Kubernetes),
            (IpamMode::ClusterPool, Some(p)) => Some(IpamSource::ClusterPool(p)),
            (IpamMode::ClusterPool, None) => None,
        };
        match (node_name, routing, ipam, service_cidr) {
            (Some(node_name), Some(routing), Some(ipam), Some(service_cidr)) if errs.is_empty() => {
                Ok(ValidConfig {
                    node_name,
                    api_server: self.api_server.clone(),
                    routing,
                    ipam,
                    service_cidr,
                    reserved,
                    allow_degraded: self.allow_degraded,
                    paths: AgentPaths {
                        cni_conf_dir: self.cni_conf_dir.clone(),
                        cni_bin_dir: self.cni_bin_dir.clone(),
                        state_dir: self.state_dir.clone(),
                        bpf_pin_root: self.bpf_pin_root.clone(),
                        socket_path: self.socket_path.clone(),
                    },
                    services,
                })
            }
            _ => Err(ConfigErrors { errors: errs }),
        }
    }

    /// The `services` checks: IPv4 ranges without host bits, none overlapping the Service
    /// range (an externalIP there would shadow ClusterIPs), and a label-value proxy name.
    fn check_services(
        &self,
        err: &mut impl FnMut(&str, String),
        service_cidr: Option<&ServiceCidr>,
    ) -> ValidServices {
        let mut out = ValidServices::default();
        for (i, text) in self.services.allowed_external_ip_cidrs.iter().enumerate() {
            let field = format!("services.allowedExternalIpCidrs[{i}]");
            match crate::ipam::parse_cidr(text) {
                Ok(IpNet::V4(net)) => {
                    if let Some(svc) =
                        service_cidr.filter(|s| crate::cidr::overlaps(&s.net(), &IpNet::V4(net)))
                    {
                        err(
                            &field,
                            format!(
                                "{net} overlaps serviceCidr {svc}: an externalIP there would \
                                 shadow ClusterIPs"
                            ),
                        );
                    } else {
                        out.allowed_external_ips.push(net);
                    }
                }
                Ok(IpNet::V6(net)) => err(
                    &field,
                    format!("{net} is IPv6; IPv6 Services are not supported yet"),
                ),
                Err(e) => err(&field, e.to_string()),
            }
        }
        if let Some(name) = &self.services.proxy_name {
            if let Err(why) = check_label_value(name) {
                err(
                    "services.proxyName",
                    format!("{name:?} is not a valid label value: {why}"),
                );
            } else {
                out.proxy_name = Some(name.clone());
            }
        }
        out
    }

    /// The cluster-pool checks; the pool if there is nothing wrong with it.
    fn check_pool(
        &self,
        err: &mut impl FnMut(&str, String),
        service_cidr: Option<&ServiceCidr>,
        reserved: &[Reserved],
        native: Option<&NativeRoutingCidr>,
    ) -> Option<ClusterPool> {
        let texts = &self.ipam.cluster_pool_cidrs;
        if texts.is_empty() {
            err(
                "ipam.clusterPoolCidrs",
                "required in ipam mode cluster-pool. fibril has no default pool: a default \
                 that collided with a firewall subnet is how seed 000 happened. Choose ranges \
                 nothing else on your network uses"
                    .into(),
            );
            return None;
        }
        // (index in clusterPoolCidrs, range) of the ranges that parse.
        let mut pools: Vec<(usize, PoolCidr)> = Vec::new();
        let mut all_parse = true;
        for (i, t) in texts.iter().enumerate() {
            match t.parse::<PoolCidr>() {
                Ok(p) => pools.push((i, p)),
                Err(e) => {
                    all_parse = false;
                    err(&format!("ipam.clusterPoolCidrs[{i}]"), e.to_string());
                }
            }
        }
        let cidrs: Vec<PoolCidr> = pools.iter().map(|(_, p)| *p).collect();
        let v6 = cidrs
            .first()
            .is_some_and(|p| matches!(p.net(), IpNet::V6(_)));
        let mask = self.ipam.node_mask_size.unwrap_or(if v6 {
            DEFAULT_NODE_MASK_V6
        } else {
            DEFAULT_NODE_MASK_V4
        });
        let mut pool_ok = all_parse;
        for (at, problem) in ClusterPool::problems(&cidrs, mask) {
            pool_ok = false;
            if matches!(problem, IpamError::NoPool) {
                // Every range failed to parse, and each was reported.
                continue;
            }
            let field = match (&problem, at) {
                (IpamError::MaskOutsidePool { .. }, _) => "ipam.nodeMaskSize".to_string(),
                (_, Some(j)) => format!("ipam.clusterPoolCidrs[{}]", pools[j].0),
                (_, None) => "ipam.clusterPoolCidrs".to_string(),
            };
            let mut message = problem.to_string();
            if matches!(problem, IpamError::MaskOutsidePool { .. })
                && self.ipam.node_mask_size.is_none()
            {
                message.push_str(" (the default; set ipam.nodeMaskSize)");
            }
            err(&field, message);
        }

        let mut checks = OverlapCheck::new("config".parse().expect("a constant, valid node name"));
        checks.service_cidr = service_cidr.copied();
        checks.reserved = reserved.to_vec();
        for (i, p) in &pools {
            for o in checks.check(Candidate::pool(*p)) {
                pool_ok = false;
                err(&format!("ipam.clusterPoolCidrs[{i}]"), o.to_string());
            }
            if let Some(native) = native {
                if !contains(&native.net(), &p.net()) {
                    pool_ok = false;
                    err(
                        "nativeRoutingCidr",
                        format!(
                            "{native} does not cover pool {p} (ipam.clusterPoolCidrs[{i}]): \
                             traffic of pods in it would be SNATed and bypass encryption and \
                             policy (seed 002). Make nativeRoutingCidr cover every pool range"
                        ),
                    );
                }
            }
        }
        if !pool_ok {
            return None;
        }
        ClusterPool::new(cidrs, mask).ok()
    }
}

/// `http(s)://host[:port][/path]`, with no whitespace.
fn check_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{url:?} is not a valid API server URL: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected http(s)://host:port");
    };
    if scheme != "https" && scheme != "http" {
        return bad("the scheme must be https or http");
    }
    if url.chars().any(char::is_whitespace) {
        return bad("it contains whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("credentials do not belong in the URL");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p.strip_prefix(':')),
            _ => return bad("the IPv6 address in brackets is not valid"),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("the host is empty");
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return bad("the port must be a number between 1 and 65535");
        }
    }
    Ok(())
}

/// A Kubernetes label value, non-empty: at most 63 characters, alphanumerics, `-`, `_`
/// and `.`, beginning and ending with an alphanumeric.
fn check_label_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("it is empty (leave proxyName out to serve unlabelled Services)");
    }
    if v.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("only alphanumerics, '-', '_' and '.' are allowed");
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(v.chars().next()) || !edge(v.chars().last()) {
        return Err("it must begin and end with an alphanumeric character");
    }
    Ok(())
}

/// Absolute, without `..`.
fn check_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "https://172.18.0.2:6443",
            "http://localhost",
            "https://[fd00::1]:6443/",
            "https://api.example.com/prefix",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "172.18.0.2:6443",
            "ftp://x",
            "https://",
            "https://:6443",
            "https://h:0",
            "https://h:99999",
            "https://h:x",
            "https://[zz]:1",
            "https://u:p@h",
            "https://h /x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path(Path::new("/var/lib/fibril")).is_ok());
        assert!(check_path(Path::new("var/lib")).is_err());
        assert!(check_path(Path::new("")).is_err());
        assert!(check_path(Path::new("/var/../etc")).is_err());
    }
}
