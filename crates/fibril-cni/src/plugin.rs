//! One invocation, start to end: environment, stdin, the request to the agent, and what the
//! runtime gets back on stdout.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use fibril_core::cni_api::{
    code, AddRequest, CheckRequest, CniOp, CniRequest, CniResponse, CniResult, CniVersion,
    DelRequest, GcRequest, PROTOCOL_VERSION,
};
use serde_json::Value;

use crate::client::AgentClient;
use crate::command::Command;
use crate::config::{parse_config, ParsedConfig, STDIN_LIMIT};
use crate::env::{netns_override, parse_env, Invocation, RawEnv};
use crate::error::{AgentAnswerProblem, CniError};
use crate::log::Log;
use crate::version::{self, render_result, version_info, SUPPORTED_VERSIONS};

/// What the process prints on stdout and exits with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: u8,
}

/// Where the plugin looks at its own network namespace (ENV-09).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Runs one invocation. Logs go to `log` (stderr, or the config's `logFile`); the runtime's
/// answer is in the returned [`Outcome`].
pub fn run(env: &RawEnv, stdin: &mut dyn Read, log: &mut Log) -> Outcome {
    let command = match env.command() {
        Ok(None) => {
            // libcni's skel does the same: a person ran the binary by hand.
            log.raw(&about());
            return Outcome {
                stdout: Vec::new(),
                exit_code: 0,
            };
        }
        Ok(Some(c)) => Ok(c.to_owned()),
        Err(e) => Err(CniError::from(e)),
    };

    let mut input = Vec::new();
    let read = stdin
        .take(STDIN_LIMIT as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|source| CniError::ReadStdin { source });
    let reply_version = version::reply_version(&input);
    let started = Instant::now();

    let outcome = (|| {
        let command: Command = command?.parse()?;
        read?;
        Ok::<_, CniError>((command, execute(command, env, &input, log)?))
    })();
    match outcome {
        Ok((command, stdout)) => {
            if command != Command::Version {
                log.info(format_args!(
                    "{command}: ok ({} ms)",
                    started.elapsed().as_millis()
                ));
            }
            Outcome {
                stdout,
                exit_code: 0,
            }
        }
        Err(err) => {
            let reply = err.into_reply(&reply_version.to_string());
            log.error(format_args!(
                "{} failed (code {}): {}",
                env.command().ok().flatten().unwrap_or("?"),
                reply.code,
                reply.msg
            ));
            Outcome {
                stdout: json_line(&reply),
                exit_code: 1,
            }
        }
    }
}

fn about() -> String {
    format!(
        "fibril-cni {}: fibril's CNI plugin; it forwards each command to the fibril agent on this node\n\
         CNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.map(|v| v.to_string()).join(", ")
    )
}

fn json_line<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("replies serialize");
    out.push(b'\n');
    out
}

fn execute(
    command: Command,
    env: &RawEnv,
    input: &[u8],
    log: &mut Log,
) -> Result<Vec<u8>, CniError> {
    if command == Command::Version {
        return Ok(json_line(&version_info(input)));
    }
    let invocation = parse_env(command, env)?;
    if let Some(netns) = invocation.netns() {
        if !netns_override(env) && is_own_netns(netns) {
            return Err(CniError::OwnNetns {
                netns: netns.clone(),
            });
        }
    }

    let parsed = parse_config(input)?;
    let version = parsed.config.cni_version;
    if version < command.since() {
        return Err(CniError::CommandNotAllowed { command, version });
    }
    if let Some(path) = &parsed.config.log_file {
        log.redirect(path);
    }

    let op = build_op(invocation, &parsed, log)?;
    log.info(format_args!("{command}: {}", describe(&op)));
    let request = CniRequest {
        protocol: PROTOCOL_VERSION,
        cni_version: version,
        op,
        config: Value::Object(parsed.raw),
    };
    let client = AgentClient::new(
        parsed.config.agent_socket,
        Duration::from_secs(parsed.config.agent_timeout_seconds.into()),
    );
    let response = client
        .call(&request)
        .map_err(|source| CniError::Agent { command, source })?;
    answer(command, response, version, log)
}

/// Turns the agent's answer into stdout, per command.
fn answer(
    command: Command,
    response: CniResponse,
    version: CniVersion,
    log: &mut Log,
) -> Result<Vec<u8>, CniError> {
    match response {
        CniResponse::Ok(Some(result)) if command == Command::Add => {
            result.validate().map_err(|e| CniError::AgentAnswer {
                command,
                reason: e.into(),
            })?;
            Ok(json_line(&render_result(&result, version)))
        }
        CniResponse::Ok(None) if command == Command::Add => Err(CniError::AgentAnswer {
            command,
            reason: AgentAnswerProblem::NoResult,
        }),
        // DEL, CHECK, STATUS and GC print nothing on success.
        CniResponse::Ok(_) => Ok(Vec::new()),
        // DEL is idempotent: an attachment the agent never heard of is deleted already. The
        // agent should answer success itself; this keeps a stricter agent from wedging pods.
        CniResponse::Error(e) if command == Command::Del && e.code == code::UNKNOWN_CONTAINER => {
            log.info(format_args!(
                "DEL: the agent does not know the attachment ({}): done",
                e.msg
            ));
            Ok(Vec::new())
        }
        CniResponse::Error(e) => Err(CniError::AgentRefused(e)),
    }
}

fn build_op(
    invocation: Invocation,
    parsed: &ParsedConfig,
    log: &mut Log,
) -> Result<CniOp, CniError> {
    let prev_result = || -> Result<Option<CniResult>, CniError> {
        parsed
            .config
            .prev_result
            .as_ref()
            .map(|v| {
                serde_path_to_error::deserialize(v).map_err(|e| CniError::InvalidConfig {
                    problems: vec![format!("prevResult.{}: {}", e.path(), e.inner())],
                })
            })
            .transpose()
    };
    Ok(match invocation {
        Invocation::Add { attachment, netns } => {
            require_netns(&netns)?;
            CniOp::Add(AddRequest {
                attachment,
                netns,
                prev_result: prev_result()?,
            })
        }
        Invocation::Check { attachment, netns } => {
            require_netns(&netns)?;
            let prev_result = prev_result()?.ok_or_else(|| CniError::InvalidConfig {
                problems: vec!["prevResult: missing (CHECK checks against the ADD result)".into()],
            })?;
            CniOp::Check(CheckRequest {
                attachment,
                netns,
                prev_result,
            })
        }
        Invocation::Del {
            attachment,
            netns,
            ignored_args,
        } => {
            for problem in ignored_args {
                log.warn(format_args!("DEL: ignoring invalid CNI_ARGS: {problem}"));
            }
            // DEL must work when the netns is already gone: release the rest anyway.
            let netns = netns.filter(|path| match netns_exists(path) {
                true => true,
                false => {
                    log.info(format_args!(
                        "DEL: netns {} is gone; releasing the attachment without it",
                        path.display()
                    ));
                    false
                }
            });
            // Nor may a damaged prevResult block a DEL: the agent knows the attachment anyway.
            let prev_result = prev_result().unwrap_or_else(|e| {
                log.warn(format_args!("DEL: ignoring prevResult: {e}"));
                None
            });
            CniOp::Del(DelRequest {
                attachment,
                netns,
                prev_result,
            })
        }
        Invocation::Status => CniOp::Status,
        Invocation::Gc => {
            // Without the list every attachment would look stale: refuse rather than guess.
            let valid_attachments =
                parsed
                    .config
                    .gc_valid_attachments()
                    .ok_or_else(|| CniError::InvalidConfig {
                        problems: vec![
                            "cni.dev/valid-attachments: missing (GC needs the list of attachments still in use)".into(),
                        ],
                    })?;
            CniOp::Gc(GcRequest { valid_attachments })
        }
        Invocation::Version => unreachable!("VERSION is answered before the config is read"),
    })
}

fn describe(op: &CniOp) -> String {
    let attachment = match op {
        CniOp::Add(r) => &r.attachment,
        CniOp::Check(r) => &r.attachment,
        CniOp::Del(r) => &r.attachment,
        CniOp::Status => return "agent status".into(),
        CniOp::Gc(r) => return format!("{} valid attachments", r.valid_attachments.len()),
    };
    let pod = attachment
        .pod
        .as_ref()
        .map(|p| format!(" pod {}/{}", p.namespace, p.name))
        .unwrap_or_default();
    format!(
        "container {} ifname {}{pod}",
        attachment.container_id, attachment.ifname
    )
}

/// Whether `path` exists. Only "not found" counts as gone: a permission problem is the
/// agent's to report, with its privileges.
fn netns_exists(path: &Path) -> bool {
    !matches!(fs::metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

fn require_netns(netns: &Path) -> Result<(), CniError> {
    if netns_exists(netns) {
        Ok(())
    } else {
        Err(CniError::NetnsMissing {
            netns: netns.to_owned(),
        })
    }
}

/// Whether `netns` is the namespace the plugin runs in: the runtime runs plugins in its own
/// (host) namespace, so a pod pointing there is a runtime bug that would wire up the host.
fn is_own_netns(netns: &Path) -> bool {
    match (fs::metadata(netns), fs::metadata(OWN_NETNS)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
