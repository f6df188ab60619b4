//! What the doctor is given: the text of each exported file, tagged with the name the user gave
//! it. The CLI reads files; everything here only looks at text.

use chrono::{DateTime, Utc};

use super::finding::{Evidence, Finding, RuleId};

/// One input file's name (as the user wrote it, for evidence) and contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextInput {
    pub name: String,
    pub text: String,
    /// Read from a running system (`--local`, `--lab`) rather than an exported file. The text
    /// was rendered by the doctor, so its line numbers point nowhere a user can open: evidence
    /// from a live input carries the key, never a line.
    pub live: bool,
}

impl TextInput {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        TextInput {
            name: name.into(),
            text: text.into(),
            live: false,
        }
    }

    /// An input read from a running system; `name` names the live source
    /// ([`live_source`]: `live:local/sysctl`, `live:<node>/iptables-save`).
    pub fn live(name: impl Into<String>, text: impl Into<String>) -> Self {
        TextInput {
            live: true,
            ..TextInput::new(name, text)
        }
    }

    /// `line` if it points into a file the user has, else `None`.
    pub fn evidence_line(&self, line: u32) -> Option<u32> {
        (!self.live).then_some(line)
    }
}

/// The URI scheme that marks evidence read from a running system.
pub const LIVE_SCHEME: &str = "live:";

/// The name of a live source: `live:<host>/<what>`, where host is `local` (`--local`) or a lab
/// node. It is a URI, so SARIF consumers can tell it from a file path.
pub fn live_source(host: &str, what: &str) -> String {
    format!("{LIVE_SCHEME}{host}/{what}")
}

/// An input that describes one node (`--routes NODE=FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInput {
    pub node: String,
    pub input: TextInput,
}

impl NodeInput {
    pub fn new(node: impl Into<String>, input: TextInput) -> Self {
        NodeInput {
            node: node.into(),
            input,
        }
    }
}

/// One entry of a CNI config directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEntry {
    pub name: String,
    /// `None` for an entry that is not a readable regular file (a directory, a dangling link).
    pub text: Option<String>,
}

/// A copy of `/etc/cni/net.d` (`--cni-dir [NODE=]DIR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniDir {
    pub node: Option<String>,
    /// The directory as the user named it.
    pub path: String,
    pub entries: Vec<CniEntry>,
}

/// A CIDR the user declared off-limits (`--reserved`), kept as text so a typo is a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub text: String,
}

/// Everything the doctor can look at. Any subset may be present.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub cilium_values: Option<TextInput>,
    pub cilium_config: Option<TextInput>,
    pub routes: Vec<NodeInput>,
    pub sysctls: Vec<NodeInput>,
    pub cni_dirs: Vec<CniDir>,
    pub iptables: Vec<NodeInput>,
    pub manifests: Vec<TextInput>,
    pub nodes: Option<TextInput>,
    pub reserved: Vec<Reserved>,
    /// What a fibril agent reports (`fibril status -o json`, or its status socket in live
    /// mode): one object, or an array of them.
    pub agent_status: Vec<NodeInput>,
    /// The time the forecast and rate estimates count from. `None`: the newest timestamp seen in
    /// `nodes`.
    pub now: Option<DateTime<Utc>>,
}

/// A parse failure as a finding: file, position and the parser's words.
pub(crate) fn unparsable(
    file: &str,
    what: &str,
    line: Option<u32>,
    column: Option<u32>,
    msg: &str,
) -> Finding {
    let pos = match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    };
    Finding::new(
        RuleId::InputUnparsable,
        format!("{file}: not a valid {what}{pos}: {msg}"),
    )
    .evidence(Evidence::new(file, msg.to_string()).line(line))
    .why("the doctor skips what it cannot read, so checks that need this file did not run")
    .fix(format!(
        "re-export the file as {what} (see `fibril doctor --help` for the command) and run again"
    ))
}

/// A YAML parse error as a finding.
pub(crate) fn yaml_error(file: &str, what: &str, e: &serde_yaml::Error) -> Finding {
    let loc = e.location();
    unparsable(
        file,
        what,
        loc.as_ref().map(|l| l.line() as u32),
        loc.as_ref().map(|l| l.column() as u32),
        &e.to_string(),
    )
}

/// A JSON parse error as a finding.
pub(crate) fn json_error(file: &str, what: &str, e: &serde_json::Error) -> Finding {
    unparsable(
        file,
        what,
        Some(e.line() as u32),
        Some(e.column() as u32),
        &e.to_string(),
    )
}

/// Best-effort 1-based line of a dotted key path in block-style YAML (`bpf.masquerade`).
///
/// YAML parsers used here keep no positions for values, so this walks the text by indentation:
/// each segment must appear as `key:` deeper than its parent. Flow style or anchors defeat it,
/// and then the evidence carries the key path alone.
pub fn yaml_key_line(text: &str, path: &[&str]) -> Option<u32> {
    if path.is_empty() {
        return None;
    }
    // Indent of the block being searched: top level is 0; a child block's indent is set by its
    // first line.
    let mut parent: Option<usize> = None;
    let mut level: Option<usize> = Some(0);
    let mut seg = 0;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if let Some(p) = parent {
            if indent <= p {
                return None;
            }
        }
        let level_now = *level.get_or_insert(indent);
        if indent != level_now {
            continue;
        }
        let want = path[seg];
        let matches = trimmed
            .strip_prefix(want)
            .or_else(|| {
                trimmed
                    .strip_prefix('"')
                    .and_then(|k| k.strip_prefix(want))
                    .and_then(|k| k.strip_prefix('"'))
            })
            .is_some_and(|rest| rest.starts_with(':'));
        if matches {
            seg += 1;
            if seg == path.len() {
                return Some(i as u32 + 1);
            }
            parent = Some(indent);
            level = None;
        }
    }
    None
}
