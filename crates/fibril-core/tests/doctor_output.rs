//! `-o json` and `-o sarif` validate against the schemas shipped in `tests/doctor/schema/`, for
//! the findings of every fixture; the text table is worst first; `--fail-on` thresholds.

use std::fs;
use std::path::{Path, PathBuf};

use fibril_core::doctor::{
    diagnose, fails, output, Evidence, Finding, Inputs, NodeInput, RuleId, Severity, TextInput,
};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/doctor")
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&fs::read_to_string(root().join("schema").join(name)).unwrap())
            .unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {}", errors.join("\n"));
}

/// Findings covering every rule and every evidence shape (line, key, flag).
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
                .why("because")
                .fix("change it"),
        );
    }
    fibril_core::doctor::sort_findings(&mut out);
    out
}

#[test]
fn sarif_validates_against_the_shipped_schema() {
    let v = validator("sarif-2.1.0-subset.schema.json");
    let doc = output::sarif(&sample(), "0.1.0");
    assert_valid(&v, &doc, "sample");
    assert_eq!(doc["version"], "2.1.0");
    let rules = doc["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), RuleId::ALL.len());
    // ruleIndex points at the rule with the same id.
    for r in doc["runs"][0]["results"].as_array().unwrap() {
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
    }
    // The space in the path is percent-encoded in the URI reference.
    let uri = &doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
        ["uri"];
    assert_eq!(uri, "dir%20with%20space/values.yaml");
    // An empty run is valid too.
    assert_valid(&v, &output::sarif(&[], "0.1.0"), "empty");
}

#[test]
fn the_schema_rejects_what_sarif_forbids() {
    let v = validator("sarif-2.1.0-subset.schema.json");
    let mut doc = output::sarif(&sample(), "0.1.0");
    doc["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!v.is_valid(&doc));
    let mut doc = output::sarif(&sample(), "0.1.0");
    doc["version"] = "2.0.0".into();
    assert!(!v.is_valid(&doc));
    let mut doc = output::sarif(&sample(), "0.1.0");
    doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        0.into();
    assert!(!v.is_valid(&doc));
    let mut doc = output::sarif(&sample(), "0.1.0");
    doc["runs"][0]["results"][0]["message"] = serde_json::json!({});
    assert!(!v.is_valid(&doc));
}

#[test]
fn json_and_sarif_of_every_fixture_validate() {
    let sarif = validator("sarif-2.1.0-subset.schema.json");
    let json = validator("findings.schema.json");
    let mut dirs: Vec<PathBuf> = fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args").exists())
        .collect();
    dirs.sort();
    // The fixture loader lives in doctor_fixtures.rs; here a few inputs per fixture suffice:
    // every file is offered as the input kind its name suggests.
    for d in dirs {
        let inputs = rough_inputs(&d);
        let findings = diagnose(&inputs);
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert_valid(&json, &output::json(&findings), &name);
        assert_valid(&sarif, &output::sarif(&findings, "0.1.0"), &name);
    }
    assert_valid(&json, &output::json(&sample()), "sample");
}

fn rough_inputs(dir: &Path) -> Inputs {
    let mut i = Inputs::default();
    let read = |p: &Path| TextInput::new(p.display().to_string(), fs::read_to_string(p).unwrap());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let n = path.file_name().unwrap().to_string_lossy().into_owned();
            let parent = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            match (parent.as_str(), n.as_str()) {
                (_, "values.yaml") => i.cilium_values = Some(read(&path)),
                (_, "cilium-config.yaml") => i.cilium_config = Some(read(&path)),
                (_, "nodes.json") => i.nodes = Some(read(&path)),
                (_, "iptables-save.txt") => i.iptables.push(NodeInput::new("n", read(&path))),
                ("routes", _) => i.routes.push(NodeInput::new(n.clone(), read(&path))),
                ("sysctls", _) => i.sysctls.push(NodeInput::new(n.clone(), read(&path))),
                (_, x) if x.ends_with(".yaml") => i.manifests.push(read(&path)),
                _ => {}
            }
        }
    }
    i
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
