//! `-o sarif` validates against the official OASIS SARIF 2.1.0 schema and `-o json` against
//! our findings schema (both shipped in `tests/doctor/schemas/`), for the findings of every
//! fixture, the empty run, and evidence from live sources; the text table is worst first;
//! `--fail-on` thresholds.

use std::fs;
use std::path::PathBuf;

use fibril_core::doctor::{
    diagnose, fails, live_source, output, Evidence, Finding, Inputs, NodeInput, RuleId, Severity,
    TextInput,
};
use serde_json::Value;

mod doctor_support;
use doctor_support::{fixture_dirs, fixtures_root, load};

fn schemas() -> PathBuf {
    fixtures_root().join("schemas")
}

fn schema(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(schemas().join(name)).unwrap()).unwrap()
}

/// A draft-7 validator (both schemas declare draft 7) that also checks `format`s such as
/// `uri-reference`, which the SARIF schema uses for artifact locations.
fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&schema(name))
        .unwrap()
}

fn sarif_validator() -> jsonschema::Validator {
    validator("sarif-schema-2.1.0.json")
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {}", errors.join("\n"));
}

/// Findings covering every rule and every evidence shape (line, key, flag, live source).
fn sample() -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, id) in RuleId::ALL.iter().enumerate() {
        let sev = [Severity::Info, Severity::Warning, Severity::Error][i % 3];
        out.push(
            Finding::new(*id, format!("sample {id}"))
                .severity(sev)
                .evidence(
                    Evidence::new("dir with space/values.yaml", "x")
                        .key("bpf.masquerade")
                        .line(Some(3)),
                )
                .evidence(Evidence::new("--reserved", "10.0.0.0/8"))
                .evidence(
                    Evidence::new(live_source("local", "sysctl"), "1")
                        .key("net.ipv4.conf.eth0.src_valid_mark"),
                )
                .evidence(Evidence::new("node:a/routes.json", "default via 10.0.0.1"))
                .why("because")
                .fix("change it"),
        );
    }
    fibril_core::doctor::sort_findings(&mut out);
    out
}

#[test]
fn the_shipped_schema_is_the_oasis_sarif_2_1_0_schema() {
    let s = schema("sarif-schema-2.1.0.json");
    assert_eq!(s["$id"], output::SARIF_SCHEMA_URI);
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(
        s["title"],
        "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    );
    assert_eq!(s["properties"]["version"]["enum"][0], "2.1.0");
    // The provenance note sits beside it.
    let readme = fs::read_to_string(schemas().join("README.md")).unwrap();
    assert!(readme.contains("OASIS") && readme.contains("unmodified"));
}

#[test]
fn sarif_validates_against_the_official_schema() {
    let v = sarif_validator();
    let doc = output::sarif(&sample(), "0.1.0");
    assert_valid(&v, &doc, "sample");
    assert_eq!(doc["version"], "2.1.0");
    assert_eq!(doc["$schema"], output::SARIF_SCHEMA_URI);
    let run = &doc["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), RuleId::ALL.len());
    for r in run["results"].as_array().unwrap() {
        // ruleIndex points at the rule with the same id.
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
        // level follows severity.
        let sev: Severity = r["properties"]["severity"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r["level"], sev.sarif_level());
    }
    // Rules carry the mechanism and the fix of their findings.
    for r in rules {
        assert!(r["shortDescription"]["text"].as_str().unwrap().len() > 5);
        assert_eq!(r["fullDescription"]["text"], "because");
        assert_eq!(r["help"]["text"], "Why: because\nFix: change it");
    }
    let locs = run["results"][0]["locations"].as_array().unwrap();
    // A file: URI (the space percent-encoded), line region, key path as logical location.
    assert_eq!(
        locs[0]["physicalLocation"]["artifactLocation"]["uri"],
        "dir%20with%20space/values.yaml"
    );
    assert_eq!(locs[0]["physicalLocation"]["region"]["startLine"], 3);
    assert_eq!(
        locs[0]["logicalLocations"][0]["fullyQualifiedName"],
        "bpf.masquerade"
    );
    // A command-line value: a parameter, no artifact.
    assert!(locs[1].get("physicalLocation").is_none());
    assert_eq!(locs[1]["logicalLocations"][0]["kind"], "parameter");
    // A live source keeps its live: URI, has no line, and names the sysctl.
    assert_eq!(
        locs[2]["physicalLocation"]["artifactLocation"]["uri"],
        "live:local/sysctl"
    );
    assert!(locs[2]["physicalLocation"].get("region").is_none());
    assert_eq!(
        locs[2]["logicalLocations"][0]["fullyQualifiedName"],
        "net.ipv4.conf.eth0.src_valid_mark"
    );
    // A relative path whose first segment holds ':' is not mistaken for a scheme.
    assert_eq!(
        locs[3]["physicalLocation"]["artifactLocation"]["uri"],
        "./node:a/routes.json"
    );
}

#[test]
fn empty_runs_and_notes_validate() {
    let v = sarif_validator();
    let empty = output::sarif(&[], "0.1.0");
    assert_valid(&v, &empty, "empty");
    assert_eq!(empty["runs"][0]["results"], serde_json::json!([]));
    // A rule that did not fire is still described.
    assert!(
        empty["runs"][0]["tool"]["driver"]["rules"][0]["fullDescription"]["text"]
            .as_str()
            .unwrap()
            .contains("seed incident 000")
    );
    let noted = output::sarif_with_notes(
        &[],
        "0.1.0",
        &["live:local/iptables-save: iptables-save not found".to_string()],
    );
    assert_valid(&v, &noted, "notes");
    assert_eq!(
        noted["runs"][0]["invocations"][0]["toolExecutionNotifications"][0]["level"],
        "note"
    );
}

/// The validator really enforces the schema: documents SARIF forbids are rejected.
#[test]
fn the_official_schema_rejects_what_sarif_forbids() {
    let v = sarif_validator();
    let base = output::sarif(&sample(), "0.1.0");
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut d = base.clone();
        f(&mut d);
        d
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "level fatal",
            broken(&|d| d["runs"][0]["results"][0]["level"] = "fatal".into()),
        ),
        ("version 2.0.0", broken(&|d| d["version"] = "2.0.0".into())),
        (
            "startLine 0",
            broken(&|d| {
                d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
                    ["startLine"] = 0.into()
            }),
        ),
        (
            "message without text",
            broken(&|d| d["runs"][0]["results"][0]["message"] = serde_json::json!({})),
        ),
        (
            "unknown result property",
            broken(&|d| d["runs"][0]["results"][0]["severity"] = "error".into()),
        ),
        (
            "uri not a URI reference",
            broken(&|d| {
                d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
                    ["uri"] = "dir with space/x".into()
            }),
        ),
        (
            "tool without driver",
            broken(&|d| d["runs"][0]["tool"] = serde_json::json!({})),
        ),
    ];
    for (what, doc) in cases {
        assert!(!v.is_valid(&doc), "accepted: {what}");
    }
}

#[test]
fn json_and_sarif_of_every_fixture_validate() {
    let sarif = sarif_validator();
    let json = validator("findings.schema.json");
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 17, "{dirs:?}");
    let mut results = 0;
    for d in &dirs {
        let findings = diagnose(&load(d));
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert_valid(&json, &output::json(&findings), &name);
        let doc = output::sarif(&findings, "0.1.0");
        assert_valid(&sarif, &doc, &name);
        results += doc["runs"][0]["results"].as_array().unwrap().len();
        if name == "clean" {
            assert!(findings.is_empty());
        }
    }
    assert!(results >= 17, "only {results} results over all fixtures");
    // No input at all: an empty run, still valid.
    let none = diagnose(&Inputs::default());
    assert_valid(&json, &output::json(&none), "no inputs");
    assert_valid(&sarif, &output::sarif(&none, "0.1.0"), "no inputs");
    assert_valid(&json, &output::json(&sample()), "sample");
}

/// Live inputs: evidence names the live source and carries no line (the text was rendered by
/// the doctor, not a file the user has); the output still validates.
#[test]
fn live_inputs_give_keyed_evidence_without_lines() {
    let mut inputs = Inputs::default();
    let sysctl = live_source("local", "sysctl");
    inputs.sysctls.push(NodeInput::new(
        "local",
        TextInput::live(
            sysctl.clone(),
            "net.ipv4.conf.all.src_valid_mark = 1\nnet.ipv4.conf.eth0.src_valid_mark = 0\n",
        ),
    ));
    let ipt = live_source("local", "iptables-save");
    inputs.iptables.push(NodeInput::new(
        "local",
        TextInput::live(
            ipt.clone(),
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -j CNI-HOSTPORT-DNAT\nCOMMIT\n",
        ),
    ));
    inputs.manifests.push(TextInput::new(
        "fqdn.yaml",
        fs::read_to_string(
            fixtures_root().join("002-gke-src-valid-mark/manifests/allow-some-egress.yaml"),
        )
        .unwrap(),
    ));
    let findings = diagnose(&inputs);
    let ids: Vec<RuleId> = findings.iter().map(|f| f.id).collect();
    assert!(ids.contains(&RuleId::SrcValidMark), "{ids:?}");
    assert!(ids.contains(&RuleId::HostportChainOrder), "{ids:?}");
    for f in &findings {
        for e in f.evidence.iter().filter(|e| e.file.starts_with("live:")) {
            assert_eq!(e.line, None, "{e:?}");
            assert!(e.key.is_some(), "{e:?}");
        }
    }
    let svm = findings
        .iter()
        .find(|f| f.id == RuleId::SrcValidMark)
        .unwrap();
    assert!(svm
        .evidence
        .iter()
        .any(|e| e.file == sysctl && e.key.as_deref() == Some("net.ipv4.conf.all.src_valid_mark")));
    assert_valid(
        &sarif_validator(),
        &output::sarif(&findings, "0.1.0"),
        "live",
    );
}

#[test]
fn text_is_worst_first_and_fail_on_thresholds() {
    let findings = sample();
    let text = output::text(&findings);
    let first_info = text.find("\ninfo ").unwrap();
    let last_error = text.rfind("\nerror ").unwrap();
    assert!(last_error < first_info, "{text}");
    assert!(text.contains("evidence: dir with space/values.yaml:3 bpf.masquerade = x"));
    assert!(fails(&findings, Severity::Error));
    let infos: Vec<Finding> = findings
        .into_iter()
        .filter(|f| f.severity == Severity::Info)
        .collect();
    assert!(fails(&infos, Severity::Info));
    assert!(!fails(&infos, Severity::Warning));
    assert!(!fails(&[], Severity::Info));
    assert_eq!(output::text(&[]), "no findings\n");
}
