//! A fibril agent's own report: `fibril status -o json` (one object, or an array with one per
//! node), or, in live mode, the same JSON read from the agent's status socket.

use serde_json::Value;

use crate::doctor::finding::{Evidence, Finding, RuleId};
use crate::doctor::input::{json_error, unparsable, NodeInput};

/// How the agent forwards host traffic, as its status names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRouting {
    Bpf,
    /// The kernel's routing stack forwards; `cause` is the agent's own words.
    Legacy {
        cause: String,
    },
    /// `none`: the agent has not loaded a dataplane yet (it is not ready; `fibril status`
    /// says so), so there is no forwarding mode to judge.
    NotLoaded,
}

/// The parts of one agent's status the rules read.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The node the agent says it runs on (else the input's node).
    pub node: String,
    pub file: String,
    /// Key-path prefix of this report in the file: "" for a single object, `[2].` in an array.
    pub prefix: String,
    pub host_routing: HostRouting,
    /// The cause the agent gives for running degraded (`allowDegraded`).
    pub degraded: Option<String>,
}

impl AgentReport {
    pub fn evidence(&self, key: &str, value: impl Into<String>) -> Evidence {
        Evidence::new(self.file.clone(), value).key(format!("{}{key}", self.prefix))
    }
}

pub fn parse_agent_status(n: &NodeInput, problems: &mut Vec<Finding>) -> Vec<AgentReport> {
    let file = &n.input.name;
    let what = "fibril agent status (`fibril status -o json`)";
    let v: Value = match serde_json::from_str(&n.input.text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(json_error(file, what, &e));
            return Vec::new();
        }
    };
    let docs: Vec<(String, &Value)> = match &v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("[{i}]."), d))
            .collect(),
        Value::Object(_) => vec![(String::new(), &v)],
        _ => {
            problems.push(unparsable(
                file,
                what,
                Some(1),
                None,
                "expected a status object or an array of them",
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (prefix, d) in docs {
        let node = d
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or(&n.node)
            .to_string();
        // `fibril status` writes `{node, error}` for an agent it could not reach.
        if let Some(err) = d.get("error").and_then(Value::as_str) {
            problems.push(
                Finding::new(
                    RuleId::InputUnavailable,
                    format!("{file}: the fibril agent of node {node} did not report: {err}"),
                )
                .evidence(Evidence::new(file.clone(), err).key(format!("{prefix}error")))
                .why("without the agent's report the doctor cannot check how that node forwards")
                .fix(format!(
                    "check that the agent on {node} runs (`fibril status --node {node}`), then run again"
                )),
            );
            continue;
        }
        let mode = d.pointer("/hostRouting/mode").and_then(Value::as_str);
        let host_routing = match mode {
            Some("BPF") => HostRouting::Bpf,
            Some("Legacy") => HostRouting::Legacy {
                cause: d
                    .pointer("/hostRouting/cause")
                    .and_then(Value::as_str)
                    .unwrap_or("no cause given")
                    .to_string(),
            },
            Some("none") => HostRouting::NotLoaded,
            other => {
                let shown = other.map_or("missing".to_string(), |m| format!("{m:?}"));
                problems.push(
                    Finding::new(
                        RuleId::InputInvalidValue,
                        format!("{file}: {prefix}hostRouting.mode is {shown} (expected BPF or Legacy)"),
                    )
                    .evidence(
                        Evidence::new(file.clone(), shown).key(format!("{prefix}hostRouting.mode")),
                    )
                    .why("the doctor reads the agent's host-routing mode to tell whether it fell back to the kernel's routing stack")
                    .fix("export the status again with `fibril status -o json` from the same fibril version"),
                );
                continue;
            }
        };
        out.push(AgentReport {
            node,
            file: file.clone(),
            prefix,
            host_routing,
            degraded: d
                .get("degraded")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    out
}
