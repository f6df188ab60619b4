//! Renderings of findings: a text table (worst first), JSON, and SARIF 2.1.0 for CI scanners.

use serde_json::{json, Value};

use super::finding::{Finding, RuleId, Severity};

/// The SARIF version and the schema URI written into `$schema`.
pub const SARIF_VERSION: &str = "2.1.0";
pub const SARIF_SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

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

/// A relative or absolute path as a URI reference: `/` separators, and characters outside
/// RFC 3986's unreserved/sub-delims percent-encoded.
fn uri_reference(path: &str) -> String {
    let mut out = String::new();
    for b in path.replace('\\', "/").bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `-o sarif`: one run of the tool `fibril doctor`, with every rule described.
pub fn sarif(findings: &[Finding], tool_version: &str) -> Value {
    let rules: Vec<Value> = RuleId::ALL
        .iter()
        .map(|r| {
            let mut rule = json!({
                "id": r.as_str(),
                "name": r.as_str(),
                "shortDescription": { "text": r.title() },
                "defaultConfiguration": { "level": r.default_severity().sarif_level() },
            });
            if !r.seed().is_empty() {
                rule["properties"] = json!({ "tags": ["fibril-doctor"], "seed": r.seed() });
            }
            rule
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = RuleId::ALL.iter().position(|r| *r == f.id).unwrap_or(0);
            let locations: Vec<Value> = f
                .evidence
                .iter()
                .filter(|e| !e.file.starts_with('-') && !e.file.starts_with('<'))
                .map(|e| {
                    let mut phys = json!({ "artifactLocation": { "uri": uri_reference(&e.file) } });
                    if let Some(l) = e.line {
                        phys["region"] = json!({ "startLine": l.max(1) });
                    }
                    let mut loc =
                        json!({ "physicalLocation": phys, "message": { "text": e.value } });
                    if let Some(k) = &e.key {
                        loc["logicalLocations"] =
                            json!([{ "fullyQualifiedName": k, "kind": "member" }]);
                    }
                    loc
                })
                .collect();
            json!({
                "ruleId": f.id.as_str(),
                "ruleIndex": index,
                "level": f.severity.sarif_level(),
                "message": { "text": f.message },
                "locations": locations,
                "properties": {
                    "severity": f.severity.as_str(),
                    "why": f.why,
                    "fix": f.fix,
                    "evidence": f.evidence,
                },
            })
        })
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
            "results": results,
            "columnKind": "unicodeCodePoints",
        }]
    })
}
