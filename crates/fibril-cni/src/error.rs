//! Every way an invocation fails, and the one mapping from a failure to the spec's error reply
//! ([`CniError::into_reply`]): which code, which message, which details.

use std::io;
use std::path::PathBuf;

use fibril_core::cni_api::{code, AgentError, CniVersion, InvalidResult, InvalidVersion};
use serde::Serialize;

use crate::client::ClientError;
use crate::command::{Command, UnknownCommand};
use crate::env::EnvError;
use crate::version::SUPPORTED_VERSIONS;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    UnknownCommand(#[from] UnknownCommand),

    #[error(transparent)]
    Env(#[from] EnvError),

    #[error("CNI_NETNS {} is the plugin's own network namespace (set CNI_NETNS_OVERRIDE=1 to allow)", netns.display())]
    OwnNetns { netns: PathBuf },

    #[error("container network namespace {} does not exist", netns.display())]
    NetnsMissing { netns: PathBuf },

    #[error("reading the network config from stdin: {source}")]
    ReadStdin { source: io::Error },

    #[error("network config on stdin is larger than {limit} bytes")]
    StdinTooLarge { limit: usize },

    #[error("failed to decode the network config: {reason}")]
    Decode { reason: String },

    #[error("failed to decode cniVersion: {source}")]
    DecodeVersion { source: InvalidVersion },

    #[error(
        "incompatible CNI version {version}: this plugin supports {}",
        supported_list()
    )]
    IncompatibleVersion { version: CniVersion },

    #[error("config version {version} does not allow {command} (needs {} or later)", command.since())]
    CommandNotAllowed {
        command: Command,
        version: CniVersion,
    },

    #[error("unsupported field{} in network config: {}", if fields.len() > 1 { "s" } else { "" }, join(fields))]
    UnsupportedFields { fields: Vec<UnsupportedField> },

    #[error("invalid network config: {}", join(problems))]
    InvalidConfig { problems: Vec<String> },

    #[error("{}", agent_msg(*command, source))]
    Agent {
        command: Command,
        source: ClientError,
    },

    #[error("the fibril agent answered {command} with {reason}")]
    AgentAnswer {
        command: Command,
        reason: AgentAnswerProblem,
    },

    #[error("{}", .0.msg)]
    AgentRefused(AgentError),
}

/// A config key fibril does not support, with its value as compact JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedField {
    pub key: String,
    pub value: String,
}

impl std::fmt::Display for UnsupportedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}", self.key, self.value)
    }
}

/// An agent reply that breaks the protocol's contract for its command.
#[derive(Debug, thiserror::Error)]
pub enum AgentAnswerProblem {
    #[error("success but no result")]
    NoResult,
    #[error("an invalid result: {0}")]
    InvalidResult(#[from] InvalidResult),
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn agent_msg(command: Command, source: &ClientError) -> String {
    match (command, source) {
        (Command::Del, ClientError::Connect { .. }) => format!(
            "cannot release the attachment now: the fibril agent on this node is not reachable \
             ({source}); try again later"
        ),
        (_, ClientError::Connect { .. }) => {
            format!("plugin not available: the fibril agent on this node is not ready ({source})")
        }
        (command, source) => format!("{command}: {source}"),
    }
}

fn supported_list() -> String {
    join(&SUPPORTED_VERSIONS)
}

/// The spec's error structure, printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// The spec code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            CniError::UnknownCommand(_) | CniError::Env(_) => code::INVALID_ENV,
            CniError::OwnNetns { .. } => code::INVALID_NETNS,
            // The runtime need not clean up: nothing was created for a container that is gone.
            CniError::NetnsMissing { .. } => code::UNKNOWN_CONTAINER,
            CniError::ReadStdin { .. } => code::IO_FAILURE,
            CniError::Decode { .. } | CniError::DecodeVersion { .. } => code::DECODE_FAILURE,
            CniError::IncompatibleVersion { .. } | CniError::CommandNotAllowed { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            CniError::UnsupportedFields { .. } => code::UNSUPPORTED_FIELD,
            CniError::StdinTooLarge { .. } | CniError::InvalidConfig { .. } => code::INVALID_CONFIG,
            CniError::Agent { command, source } => match source {
                // DEL with the agent unreachable answers "try again later", not success.
                // The agent owns the IP reservation and the endpoint's datapath state, and the
                // plugin can release neither. Success would tell the runtime the attachment is
                // gone: it would drop its cached result and never call DEL again, so the IP
                // would stay reserved (persisted IPAM never reuses it: a leak until a GC) and
                // the BPF endpoint would keep pointing at a dead veth. With 11, containerd and
                // the kubelet retry the teardown until the agent is back, and the pod shows as
                // Terminating meanwhile: visible, never silently half-deleted. DEL does
                // succeed when the netns or the agent's record is already gone; that is the
                // agent's answer to give once it is reachable.
                ClientError::Connect { .. } if *command == Command::Del => code::TRY_AGAIN_LATER,
                // ADD, CHECK, STATUS and GC before the agent is ready: the spec's "plugin not
                // available". No pod is ever set up half-way without the agent.
                ClientError::Connect { .. } => code::NOT_AVAILABLE,
                // The agent is there but slow, or died mid-call: transient. After an ADD the
                // agent may still finish; the runtime's DEL of the failed ADD cleans up.
                ClientError::Timeout { .. }
                | ClientError::Io { .. }
                | ClientError::NoAnswer { .. } => code::TRY_AGAIN_LATER,
                ClientError::Protocol { .. } => code::PROTOCOL_MISMATCH,
            },
            CniError::AgentAnswer { .. } => code::PROTOCOL_MISMATCH,
            CniError::AgentRefused(e) => e.code,
        }
    }

    fn details(&self) -> String {
        match self {
            CniError::Agent { command, source } => match source {
                ClientError::Connect { .. } if *command == Command::Del => {
                    "only the agent can release the pod's IP and datapath state; \
                     the runtime retries DEL until the agent is back"
                        .into()
                }
                ClientError::Connect { .. } => {
                    "the agent writes fibril's CNI config only once it is ready; \
                     check that fibril-agent runs on this node"
                        .into()
                }
                ClientError::Timeout { .. } => {
                    "the agent may be overloaded or stuck; the runtime should retry".into()
                }
                ClientError::Io { .. } | ClientError::NoAnswer { .. } => {
                    "the agent may have restarted during the call; the runtime should retry".into()
                }
                ClientError::Protocol { .. } => {
                    "fibril-cni and fibril-agent are probably different versions".into()
                }
            },
            CniError::UnsupportedFields { .. } => format!(
                "supported keys: {} (and the runtime's cni.dev/*)",
                fibril_core::cni_api::NetworkConfig::KNOWN_KEYS.join(", ")
            ),
            CniError::AgentRefused(e) => e.details.clone(),
            _ => String::new(),
        }
    }

    /// The error reply for the runtime: `cniVersion` is the version in use.
    pub fn into_reply(self, cni_version: &str) -> ErrorReply {
        ErrorReply {
            cni_version: cni_version.to_owned(),
            code: self.code(),
            details: self.details(),
            msg: match self {
                CniError::AgentRefused(e) => e.msg,
                other => other.to_string(),
            },
        }
    }
}
