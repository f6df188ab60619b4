//! The plugin ↔ agent protocol: the one definition of what `fibril-cni` sends to the node
//! agent over its unix socket, what the agent answers, and the CNI types both sides share.
//!
//! # Framing
//!
//! One request per connection, newline-delimited JSON:
//!
//! 1. The plugin connects to the agent's unix stream socket ([`DEFAULT_AGENT_SOCKET`], or the
//!    network config's `agentSocket`).
//! 2. It writes one [`CniRequest`] as compact JSON followed by `\n`, then shuts down its write
//!    half. Compact JSON never contains a raw newline (newlines inside strings are escaped),
//!    so the agent may read either one line or up to EOF.
//! 3. The agent writes one [`CniResponse`] as compact JSON followed by `\n` and closes.
//!
//! Either side rejects a message over [`MAX_MESSAGE_BYTES`]. [`encode_frame`] and
//! [`decode_frame`] implement this; the I/O itself lives in the plugin and the agent.
//!
//! # Wire shapes
//!
//! ```json
//! {"protocol":1,"cniVersion":"1.1.0","command":"ADD",
//!  "attachment":{"containerID":"abc","ifname":"eth0",
//!                "pod":{"namespace":"default","name":"web-0","uid":"…","infraContainerId":"abc"}},
//!  "netns":"/run/netns/cni-1","prevResult":null,
//!  "config":{"cniVersion":"1.1.0","name":"fibril","type":"fibril-cni", …}}
//! {"ok":{"interfaces":[…],"ips":[…],"routes":[…],"dns":{}}}
//! {"ok":null}
//! {"error":{"code":50,"msg":"…","details":"…"}}
//! ```
//!
//! `command` selects the [`CniOp`] variant and its fields; `VERSION` never reaches the agent.
//!
//! # Contract for the agent
//!
//! - **ADD** returns `Ok(Some(result))` with the complete result: everything of `prevResult` it
//!   keeps, plus its own interfaces (host veth without `sandbox`, the container interface with
//!   `sandbox` = netns), IPs and routes. The allocation is persisted before it replies.
//!   Not ready yet (no IPAM block, datapath not loaded): `Error` with [`code::NOT_AVAILABLE`].
//! - **DEL** is idempotent: an unknown attachment, a missing netns (`netns: None`) or a
//!   missing `prevResult` is success (`Ok(None)`) once everything the agent holds for the
//!   attachment is released.
//! - **CHECK** returns `Ok(None)` or an error naming what is missing or wrong.
//! - **STATUS** returns `Ok(None)` when ADD can be served, else [`code::NOT_AVAILABLE`] or
//!   [`code::LIMITED_CONNECTIVITY`] (for instance an exhausted pool: 50).
//! - **GC** releases everything held for attachments not in `valid_attachments`, keeps going
//!   past individual failures and reports them all in one error.
//! - A request with a `protocol` it does not speak gets [`code::PROTOCOL_MISMATCH`].
//!
//! The `code`s are the CNI spec's (see [`code`]); the plugin passes them through to the runtime.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Version of this protocol. Bump it on any incompatible change to the wire shapes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the agent listens unless the network config's `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/fibril/agent.sock";

/// How long the plugin waits for the agent by default (`agentTimeoutSeconds`). Below the
/// 30 s after which runtimes (and the lab kubelet) kill a plugin, so the runtime gets our
/// clear "try again later" instead of a killed process.
pub const DEFAULT_AGENT_TIMEOUT_SECS: u32 = 25;

/// The largest request or response either side accepts, newline included.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// CNI error codes (spec §5 "Error"), plus fibril's own from 100 (the spec leaves 100+ free).
pub mod code {
    /// The config's `cniVersion` is not supported, or does not allow the command.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A network config field is not supported; the message names key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables; the message names them.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, such as reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (JSON, version string).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// `CNI_NETNS` is not usable (libcni's `ErrInvalidNetNS`).
    pub const INVALID_NETNS: u32 = 8;
    /// Transient: the runtime should try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin not available: it cannot service ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin and agent disagree on this protocol (version or a malformed message).
    pub const PROTOCOL_MISMATCH: u32 = 100;
}

// ---------------------------------------------------------------------------------------------
// Versions

/// A CNI spec version `major.minor.patch`; ordered, serialized as its string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniVersion(pub u32, pub u32, pub u32);

impl CniVersion {
    pub const V0_4_0: CniVersion = CniVersion(0, 4, 0);
    pub const V1_0_0: CniVersion = CniVersion(1, 0, 0);
    pub const V1_1_0: CniVersion = CniVersion(1, 1, 0);
}

/// A version string that is not `major.minor.patch`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid CNI version {value:?}: expected major.minor.patch")]
pub struct InvalidVersion {
    pub value: String,
}

impl FromStr for CniVersion {
    type Err = InvalidVersion;
    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        let part = |p: Option<&str>| {
            p.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u32>().ok())
        };
        let mut parts = s.split('.');
        match (
            part(parts.next()),
            part(parts.next()),
            part(parts.next()),
            parts.next(),
        ) {
            (Some(a), Some(b), Some(c), None) => Ok(CniVersion(a, b, c)),
            _ => Err(InvalidVersion {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Serialize for CniVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CniVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Identifiers

/// Why an identifier was refused; `what` names it (`CNI_CONTAINERID`, `name`, …).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

const ID_RULE: &str =
    "must start with an alphanumeric character, followed by alphanumerics, '_', '.' or '-'";

/// The spec's container-ID / network-name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn check_id(what: &'static str, value: &str) -> Result<(), InvalidId> {
    let err = |reason| InvalidId {
        what,
        value: value.to_owned(),
        reason,
    };
    let mut bytes = value.bytes();
    match bytes.next() {
        None => Err(err("must not be empty")),
        Some(b) if !b.is_ascii_alphanumeric() => Err(err(ID_RULE)),
        Some(_) if !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) => {
            Err(err(ID_RULE))
        }
        Some(_) => Ok(()),
    }
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this identifier is called in errors.
            pub const WHAT: &'static str = $what;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                let check: fn(&str) -> Result<(), InvalidId> = $check;
                check(&value)?;
                Ok(Self(value))
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_string!(
    /// `CNI_CONTAINERID`: the runtime's ID of the container (sandbox).
    ContainerId,
    "CNI_CONTAINERID",
    |v| check_id(ContainerId::WHAT, v)
);

validated_string!(
    /// A network's `name`: the container-ID rule, so it is also a safe file name.
    NetworkName,
    "name",
    |v| check_id(NetworkName::WHAT, v)
);

validated_string!(
    /// `CNI_IFNAME`: a Linux interface name, as libcni's `ValidateInterfaceName` checks it.
    IfName,
    "CNI_IFNAME",
    check_ifname
);

/// `IFNAMSIZ - 1`: the kernel's limit on interface names, in bytes.
pub const MAX_IFNAME_LEN: usize = 15;

fn check_ifname(value: &str) -> Result<(), InvalidId> {
    let err = |reason| {
        Err(InvalidId {
            what: IfName::WHAT,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        err("must not be empty")
    } else if value.len() > MAX_IFNAME_LEN {
        err("longer than 15 bytes (IFNAMSIZ)")
    } else if value == "." || value == ".." {
        err("must not be '.' or '..'")
    } else if value
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        err("must not contain '/', ':' or whitespace")
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One command for the agent. The network config travels verbatim in `config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRequest {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The spec version in use: the config's `cniVersion`, already checked by the plugin.
    pub cni_version: CniVersion,
    #[serde(flatten)]
    pub op: CniOp,
    /// The network config as the plugin received it on stdin (an object). It parses as
    /// [`NetworkConfig`]; `prevResult` is also here, but use the normalised one in `op`.
    pub config: Value,
}

/// The command and its parameters, tagged by `command`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum CniOp {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Status,
    Gc(GcRequest),
}

impl CniOp {
    /// The `CNI_COMMAND` spelling.
    pub fn command(&self) -> &'static str {
        match self {
            CniOp::Add(_) => "ADD",
            CniOp::Del(_) => "DEL",
            CniOp::Check(_) => "CHECK",
            CniOp::Status => "STATUS",
            CniOp::Gc(_) => "GC",
        }
    }
}

/// Which attachment a command is about, and whose pod it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: ContainerId,
    pub ifname: IfName,
    /// From the `K8S_POD_*` keys of `CNI_ARGS`; absent for non-Kubernetes runtimes (podman).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
}

impl Attachment {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// An attachment's identity, as the spec's GC list `cni.dev/valid-attachments` spells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: ContainerId,
    pub ifname: IfName,
}

/// The Kubernetes pod behind an attachment (runtime convention, not spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    /// `K8S_POD_NAMESPACE`
    pub namespace: String,
    /// `K8S_POD_NAME`
    pub name: String,
    /// `K8S_POD_UID`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddRequest {
    pub attachment: Attachment,
    /// `CNI_NETNS`; the plugin checked that it exists.
    pub netns: PathBuf,
    /// Set when fibril is chained after another plugin; normalised to the 1.x shape.
    #[serde(default)]
    pub prev_result: Option<CniResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelRequest {
    pub attachment: Attachment,
    /// `None` when `CNI_NETNS` was unset or no longer exists: release everything else anyway.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The final ADD result, when the runtime had one and it decoded.
    #[serde(default)]
    pub prev_result: Option<CniResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    pub attachment: Attachment,
    pub netns: PathBuf,
    /// The final ADD result: what to check against (required for CHECK).
    pub prev_result: CniResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRequest {
    /// The attachments that are still valid; everything else the agent holds is stale.
    pub valid_attachments: Vec<AttachmentKey>,
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CniResponse {
    /// Success: the result for ADD, `None` for the other commands.
    Ok(Option<CniResult>),
    Error(AgentError),
}

/// A failure the plugin passes on to the runtime as the spec's error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (code {code})")]
pub struct AgentError {
    /// A [`code`] value.
    pub code: u32,
    /// Short message naming the problem.
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

// ---------------------------------------------------------------------------------------------
// The CNI result (spec §5 "ADD Success"), version-neutral

/// An ADD result without its `cniVersion` (the plugin stamps the version in use and renders
/// older shapes). Decodes 0.4.0, 1.0.0 and 1.1.0 results alike; the 1.1-only fields are
/// optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.1.0.5/24`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1: 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A result that breaks the spec's structure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResult {
    #[error("ips[{ip}].interface is {index}, but there are only {count} interfaces")]
    InterfaceIndex {
        ip: usize,
        index: usize,
        count: usize,
    },
    #[error("interfaces[{index}] has an empty name")]
    EmptyInterfaceName { index: usize },
}

impl CniResult {
    /// Structural checks: interface names and the `ips[].interface` indexes.
    pub fn validate(&self) -> Result<(), InvalidResult> {
        if let Some(index) = self.interfaces.iter().position(|i| i.name.is_empty()) {
            return Err(InvalidResult::EmptyInterfaceName { index });
        }
        for (ip, cfg) in self.ips.iter().enumerate() {
            if let Some(index) = cfg.interface {
                if index >= self.interfaces.len() {
                    return Err(InvalidResult::InterfaceIndex {
                        ip,
                        index,
                        count: self.interfaces.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The network config

/// fibril's network config, as the plugin finds it on stdin (one plugin object of the
/// conflist, plus what the runtime injects). Both the plugin and the agent decode
/// [`CniRequest::config`] with it.
///
/// Keys besides these are refused by the plugin (code 2), except `cni.dev/*`, which are the
/// runtime's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub cni_version: CniVersion,
    pub name: NetworkName,
    /// The plugin binary's name (`fibril-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket. Default [`DEFAULT_AGENT_SOCKET`].
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// Seconds the plugin waits for the agent's answer. Default [`DEFAULT_AGENT_TIMEOUT_SECS`].
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_seconds: u32,
    /// MTU of the pod interface; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Where the plugin logs; stderr when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Well-known: DNS settings to return in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Declared capabilities (the runtime may leave them in the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Map<String, Value>>,
    /// Runtime-provided capability values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Map<String, Value>>,
    /// Conventional `args` (CONVENTIONS.md); passed on untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The previous result, in the config's version shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// GC (spec HEAD): the attachments still valid.
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// GC (spec tag 1.1.0 spelling of the same list).
    #[serde(
        default,
        rename = "cni.dev/attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub attachments: Option<Vec<AttachmentKey>>,
}

fn default_agent_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_agent_timeout() -> u32 {
    DEFAULT_AGENT_TIMEOUT_SECS
}

/// One semantic problem with a network config, naming its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The smallest MTU any IP link may have (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// The largest `agentTimeoutSeconds`.
pub const MAX_AGENT_TIMEOUT_SECS: u32 = 600;

impl NetworkConfig {
    /// The top-level keys fibril understands; anything else (but `cni.dev/*`) is unsupported.
    pub const KNOWN_KEYS: &'static [&'static str] = &[
        "cniVersion",
        "name",
        "type",
        "agentSocket",
        "agentTimeoutSeconds",
        "mtu",
        "logFile",
        "dns",
        "capabilities",
        "runtimeConfig",
        "args",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    ];

    /// Whether `key` may appear in a config: ours, or reserved for the runtime (`cni.dev/`).
    pub fn is_known_key(key: &str) -> bool {
        Self::KNOWN_KEYS.contains(&key) || key.starts_with("cni.dev/")
    }

    /// Semantic checks beyond decoding; every problem at once.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, reason: String| {
            problems.push(ConfigProblem {
                field: field.to_owned(),
                reason,
            })
        };
        if self.plugin_type.is_empty() {
            problem("type", "must not be empty".into());
        } else if self.plugin_type.contains('/') || self.plugin_type.contains('\\') {
            problem(
                "type",
                format!(
                    "{:?} must be a binary name without path separators",
                    self.plugin_type
                ),
            );
        }
        if !self.agent_socket.is_absolute() {
            problem(
                "agentSocket",
                format!("{:?} must be an absolute path", self.agent_socket),
            );
        }
        if !(1..=MAX_AGENT_TIMEOUT_SECS).contains(&self.agent_timeout_seconds) {
            problem(
                "agentTimeoutSeconds",
                format!(
                    "{} is outside 1..={MAX_AGENT_TIMEOUT_SECS}",
                    self.agent_timeout_seconds
                ),
            );
        }
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=u32::from(u16::MAX)).contains(&mtu) {
                problem("mtu", format!("{mtu} is outside {MIN_MTU}..=65535"));
            }
        }
        if let Some(path) = &self.log_file {
            if !path.is_absolute() {
                problem("logFile", format!("{path:?} must be an absolute path"));
            }
        }
        problems
    }

    /// GC's valid attachments: `cni.dev/valid-attachments` and `cni.dev/attachments` merged.
    /// libcni ≥ 1.2.3 sends both with the same list, 1.2.0 only the first, and the 1.1.0 spec
    /// text names the second. A union keeps more, never less. `None` when neither is present.
    pub fn gc_valid_attachments(&self) -> Option<Vec<AttachmentKey>> {
        if self.valid_attachments.is_none() && self.attachments.is_none() {
            return None;
        }
        let mut all: Vec<AttachmentKey> = self
            .valid_attachments
            .iter()
            .chain(self.attachments.iter())
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        Some(all)
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("empty message")]
    Empty,
    #[error("malformed message: {source}")]
    Json {
        #[from]
        source: serde_json::Error,
    },
}

/// One message as it goes on the wire: compact JSON and a trailing newline.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these types cannot fail: no non-string map keys, no failing Serialize impls.
    let mut buf = serde_json::to_vec(msg).expect("protocol types serialize");
    buf.push(b'\n');
    buf
}

/// Decodes one message: the bytes of one line, with or without its newline.
pub fn decode_frame<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(FrameError::Empty);
    }
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attachment() -> Attachment {
        Attachment {
            container_id: "abc_1.2-3".parse().unwrap(),
            ifname: "eth0".parse().unwrap(),
            pod: Some(PodIdentity {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: Some("u-1".into()),
                infra_container_id: None,
            }),
        }
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!("1.1.0".parse::<CniVersion>().unwrap(), CniVersion::V1_1_0);
        assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
        assert!(CniVersion(0, 10, 0) > CniVersion::V0_4_0);
        for bad in [
            "", "1", "1.0", "1.0.0.0", "a.b.c", "1.0.x", "-1.0.0", "+1.0.0", "1..0",
        ] {
            assert!(bad.parse::<CniVersion>().is_err(), "{bad:?}");
        }
        assert_eq!(
            serde_json::to_value(CniVersion::V1_0_0).unwrap(),
            json!("1.0.0")
        );
    }

    #[test]
    fn container_id_rule() {
        for good in ["a", "abc_1.2-3", "0abc", "A.B"] {
            assert!(good.parse::<ContainerId>().is_ok(), "{good:?}");
        }
        for bad in ["", "-bad", "-bad/id", "_x", "a/b", "a b", "a:b", "é"] {
            let e = bad.parse::<ContainerId>().unwrap_err();
            assert_eq!(e.what, "CNI_CONTAINERID");
        }
    }

    #[test]
    fn ifname_rule() {
        for good in ["eth0", "net1", "a23456789012345", "veth-x_y.z"] {
            assert!(good.parse::<IfName>().is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "averyveryverylongname",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_wire_shape_is_flat_and_round_trips() {
        let req = CniRequest {
            protocol: PROTOCOL_VERSION,
            cni_version: CniVersion::V1_1_0,
            op: CniOp::Add(AddRequest {
                attachment: attachment(),
                netns: "/run/netns/x".into(),
                prev_result: None,
            }),
            config: json!({"cniVersion": "1.1.0", "name": "fibril", "type": "fibril-cni"}),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["command"], "ADD");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["attachment"]["containerID"], "abc_1.2-3");
        assert_eq!(v["attachment"]["pod"]["namespace"], "default");
        assert_eq!(v["netns"], "/run/netns/x");
        let frame = encode_frame(&req);
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(decode_frame::<CniRequest>(&frame).unwrap(), req);

        for op in [
            CniOp::Status,
            CniOp::Gc(GcRequest {
                valid_attachments: vec![attachment().key()],
            }),
            CniOp::Del(DelRequest {
                attachment: attachment(),
                netns: None,
                prev_result: None,
            }),
        ] {
            let req = CniRequest { op, ..req.clone() };
            assert_eq!(
                decode_frame::<CniRequest>(&encode_frame(&req)).unwrap(),
                req
            );
        }
    }

    #[test]
    fn request_with_invalid_ids_is_refused() {
        let v = json!({"protocol": 1, "cniVersion": "1.0.0", "command": "DEL", "config": {},
            "attachment": {"containerID": "-bad", "ifname": "eth0"}});
        assert!(serde_json::from_value::<CniRequest>(v).is_err());
    }

    #[test]
    fn response_wire_shapes() {
        assert_eq!(
            serde_json::to_value(CniResponse::Ok(None)).unwrap(),
            json!({"ok": null})
        );
        let err = CniResponse::Error(AgentError {
            code: code::NOT_AVAILABLE,
            msg: "not ready".into(),
            details: String::new(),
        });
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"error": {"code": 50, "msg": "not ready"}})
        );
        assert_eq!(
            decode_frame::<CniResponse>(&encode_frame(&err)).unwrap(),
            err
        );
        assert!(matches!(
            decode_frame::<CniResponse>(b"\n"),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn results_of_every_version_decode() {
        let v040 = json!({"cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let r: CniResult = serde_json::from_value(v040).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(r.ips[0].interface, Some(0));
        r.validate().unwrap();

        let v110 = json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mtu": 1450, "pciID": "0000:00:01.0"}],
            "ips": [{"address": "fd00::5/64", "interface": 1}],
            "routes": [{"dst": "::/0", "scope": 0, "table": 100}]});
        let r: CniResult = serde_json::from_value(v110).unwrap();
        assert_eq!(r.interfaces[0].mtu, Some(1450));
        assert_eq!(r.routes[0].table, Some(100));
        assert_eq!(
            r.validate(),
            Err(InvalidResult::InterfaceIndex {
                ip: 0,
                index: 1,
                count: 1
            })
        );
    }

    #[test]
    fn config_defaults_validation_and_gc_lists() {
        let c: NetworkConfig = serde_json::from_value(
            json!({"cniVersion": "1.1.0", "name": "fibril", "type": "fibril-cni"}),
        )
        .unwrap();
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.agent_timeout_seconds, DEFAULT_AGENT_TIMEOUT_SECS);
        assert!(c.validate().is_empty());
        assert_eq!(c.gc_valid_attachments(), None);

        let c: NetworkConfig = serde_json::from_value(json!({"cniVersion": "1.1.0",
            "name": "fibril", "type": "bin/x", "agentSocket": "rel.sock", "mtu": 10,
            "agentTimeoutSeconds": 0, "logFile": "x.log",
            "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"},
                                    {"containerID": "b", "ifname": "eth0"}]}))
        .unwrap();
        let fields: Vec<_> = c.validate().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "type",
                "agentSocket",
                "agentTimeoutSeconds",
                "mtu",
                "logFile"
            ]
        );
        let ids: Vec<_> = c
            .gc_valid_attachments()
            .unwrap()
            .into_iter()
            .map(|k| k.container_id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b"]);

        assert!(NetworkConfig::is_known_key("cni.dev/future"));
        assert!(!NetworkConfig::is_known_key("ipam"));
    }
}
