//! Renderings of findings: a text table (worst first), JSON, and SARIF 2.1.0 for CI scanners.

use serde_json::{json, Value};

use super::finding::{Evidence, Finding, RuleId, Severity};
use super::input::LIVE_SCHEME;

/// The SARIF version and the schema URI written into `$schema`: the `$id` of the OASIS
/// schema shipped as `tests/doctor/schemas/sarif-schema-2.1.0.json`.
pub const SARIF_VERSION: &str = "2.1.0";
pub const SARIF_SCHEMA_URI: &str =
    "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/master/Schemata/sarif-schema-2.1.0.json";

/// A readable table, worst first, each finding followed by its evidence, why and fix.
pub fn text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings\n".to_string();
    }
    let idw = findings
        .iter()
        .map(|f| f.id.as_str().len())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut s = format!("{:<8} {:<idw$} MESSAGE\n", "SEVERITY", "ID");
    for f in findings {
        s.push_str(&format!(
            "{:<8} {:<idw$} {}\n",
            f.severity.as_str(),
            f.id.as_str(),
            f.message
        ));
        let pad = " ".repeat(9 + idw + 1);
        for e in &f.evidence {
            s.push_str(&format!("{pad}evidence: {} = {}\n", e.location(), e.value));
        }
        if !f.why.is_empty() {
            s.push_str(&format!("{pad}why: {}\n", f.why));
        }
        if !f.fix.is_empty() {
            s.push_str(&format!("{pad}fix: {}\n", f.fix));
        }
    }
    let count = |sev| findings.iter().filter(|f| f.severity == sev).count();
    s.push_str(&format!(
        "\n{} finding(s): {} error, {} warning, {} info\n",
        findings.len(),
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    ));
    s
}

/// `-o json`: an array of findings.
pub fn json(findings: &[Finding]) -> Value {
    serde_json::to_value(findings).expect("findings serialize")
}

/// A path as a URI reference: `/` separators, and characters outside RFC 3986's
/// unreserved/sub-delims percent-encoded. A live source (`live:local/sysctl`) is already a URI
/// and keeps its scheme; a relative path whose first segment holds a `:` gets `./` so that it
/// is not read as a scheme.
fn uri_reference(path: &str) -> String {
    let mut out = String::new();
    let path = path.replace('\\', "/");
    let first = path.split('/').next().unwrap_or_default();
    if !path.starts_with(LIVE_SCHEME) && first.contains(':') {
        out.push_str("./");
    }
    for b in path.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One SARIF location per piece of evidence: the file (or live source) with the line as a
/// region, and the key path as a logical location. A command-line value (`--reserved`) has
/// no artifact: it is a logical location of kind `parameter`.
fn sarif_location(e: &Evidence) -> Value {
    let mut loc = json!({ "message": { "text": e.value } });
    let mut logical = Vec::new();
    if e.file.starts_with('-') {
        logical.push(json!({ "name": e.file, "fullyQualifiedName": e.file, "kind": "parameter" }));
    } else {
        let mut phys = json!({ "artifactLocation": { "uri": uri_reference(&e.file) } });
        if let Some(l) = e.line {
            phys["region"] = json!({ "startLine": l.max(1) });
        }
        loc["physicalLocation"] = phys;
    }
    if let Some(k) = &e.key {
        logical.push(json!({ "fullyQualifiedName": k, "kind": "property" }));
    }
    if !logical.is_empty() {
        loc["logicalLocations"] = Value::Array(logical);
    }
    loc
}

/// A rule's descriptor. The mechanism (`why`) and the change (`fix`) come from the first
/// finding of the rule in this run, worst first; a rule that did not fire is described by its
/// title and seed.
fn sarif_rule(r: RuleId, first: Option<&Finding>) -> Value {
    let seed = if r.seed().is_empty() {
        "input checks".to_string()
    } else {
        format!("seed incident {}", r.seed())
    };
    let mut rule = json!({
        "id": r.as_str(),
        "name": r.name(),
        "shortDescription": { "text": r.title() },
        "defaultConfiguration": { "level": r.default_severity().sarif_level() },
        "properties": { "tags": ["fibril-doctor"], "seed": r.seed() },
    });
    match first {
        Some(f) => {
            rule["fullDescription"] = json!({ "text": f.why });
            rule["help"] = json!({
                "text": format!("Why: {}\nFix: {}", f.why, f.fix),
                "markdown": format!("**Why:** {}\n\n**Fix:** {}", f.why, f.fix),
            });
        }
        None => {
            rule["fullDescription"] = json!({ "text": format!("{} ({seed})", r.title()) });
        }
    }
    rule
}

/// `-o sarif`: one run of the tool `fibril doctor`, with every rule described.
pub fn sarif(findings: &[Finding], tool_version: &str) -> Value {
    sarif_with_notes(findings, tool_version, &[])
}

/// Like [`sarif`], with notes about the run (the live sources read, or why one was not) as
/// the invocation's tool notifications.
pub fn sarif_with_notes(findings: &[Finding], tool_version: &str, notes: &[String]) -> Value {
    let rules: Vec<Value> = RuleId::ALL
        .iter()
        .map(|r| sarif_rule(*r, findings.iter().find(|f| f.id == *r)))
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = RuleId::ALL.iter().position(|r| *r == f.id).unwrap_or(0);
            json!({
                "ruleId": f.id.as_str(),
                "ruleIndex": index,
                "level": f.severity.sarif_level(),
                "message": { "text": f.message },
                "locations": f.evidence.iter().map(sarif_location).collect::<Vec<_>>(),
                "properties": {
                    "severity": f.severity.as_str(),
                    "why": f.why,
                    "fix": f.fix,
                    "evidence": f.evidence,
                },
            })
        })
        .collect();
    let notifications: Vec<Value> = notes
        .iter()
        .map(|n| json!({ "level": "note", "message": { "text": n } }))
        .collect();
    json!({
        "$schema": SARIF_SCHEMA_URI,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {
                "driver": {
                    "name": "fibril doctor",
                    "version": tool_version,
                    "rules": rules,
                }
            },
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
            "columnKind": "unicodeCodePoints",
        }]
    })
}
