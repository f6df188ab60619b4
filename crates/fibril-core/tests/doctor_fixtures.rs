//! Every seed incident, reproduced as exported files under `tests/doctor/<incident>/`, yields
//! exactly its finding(s), with evidence naming the right file and key; `clean/` yields none.
//!
//! Each fixture's `args` holds the `fibril doctor` flags; this test loads them the way the CLI
//! does (the CLI's own test runs the binary on the same files).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use fibril_core::doctor::{diagnose, output, Finding, RuleId};
use serde_json::Value;

mod doctor_support;
use doctor_support::{fixture_dirs, fixtures_root, load};

struct Expected {
    id: RuleId,
    file: String,
    key: String,
}

fn expected(dir: &Path) -> Vec<Expected> {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Expected {
            id: e["id"].as_str().unwrap().parse().unwrap(),
            file: e["file"].as_str().unwrap().to_string(),
            key: e["key"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn check(dir: &Path) -> Result<Vec<Finding>, String> {
    let findings = diagnose(&load(dir));
    let want = expected(dir);
    let got_ids: BTreeSet<RuleId> = findings.iter().map(|f| f.id).collect();
    let want_ids: BTreeSet<RuleId> = want.iter().map(|e| e.id).collect();
    let dump = || output::text(&findings);
    if got_ids != want_ids {
        return Err(format!(
            "{}: ids {:?}, expected {:?}\n{}",
            dir.display(),
            got_ids,
            want_ids,
            dump()
        ));
    }
    for e in &want {
        let hit = findings.iter().filter(|f| f.id == e.id).any(|f| {
            f.evidence.iter().any(|ev| {
                ev.file == e.file && (e.key.is_empty() || ev.key.as_deref() == Some(&e.key))
            })
        });
        if !hit {
            return Err(format!(
                "{}: no {} finding with evidence {} {}\n{}",
                dir.display(),
                e.id,
                e.file,
                e.key,
                dump()
            ));
        }
    }
    for f in &findings {
        assert!(
            !f.message.contains('\n'),
            "message is one line: {}",
            f.message
        );
        assert!(
            !f.why.is_empty() && !f.fix.is_empty(),
            "{} has why and fix",
            f.id
        );
        assert!(!f.evidence.is_empty(), "{} has evidence", f.id);
    }
    Ok(findings)
}

#[test]
fn every_fixture_yields_exactly_its_findings() {
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 17, "fixtures missing: {dirs:?}");
    let errors: Vec<String> = dirs.iter().filter_map(|d| check(d).err()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn clean_fixture_has_no_findings() {
    let dir = fixtures_root().join("clean");
    let findings = diagnose(&load(&dir));
    assert!(findings.is_empty(), "{}", output::text(&findings));
    // It exercises every input kind.
    let i = load(&dir);
    assert!(i.cilium_values.is_some() && i.cilium_config.is_some() && i.nodes.is_some());
    assert!(!i.routes.is_empty() && !i.sysctls.is_empty() && !i.iptables.is_empty());
    assert!(!i.cni_dirs.is_empty() && !i.manifests.is_empty() && !i.reserved.is_empty());
}

/// Every id of the table is found by some fixture.
#[test]
fn every_rule_has_a_fixture() {
    let covered: BTreeSet<RuleId> = fixture_dirs()
        .iter()
        .flat_map(|d| expected(d).into_iter().map(|e| e.id))
        .collect();
    for id in RuleId::ALL {
        assert!(covered.contains(id), "no fixture finds {id}");
    }
}

#[test]
fn forecast_of_the_azure_fixture_names_block_and_date() {
    let dir = fixtures_root().join("000-azure-firewall-overlap");
    let findings = diagnose(&load(&dir));
    let f = findings
        .iter()
        .find(|f| f.id == RuleId::PodCidrForecast)
        .unwrap();
    // Block 753 = 10.2.241.0/24 of 10.0.0.0/8; the cursor is past block 381, and churn is 381
    // blocks over the 122.9 days between the oldest and newest live node.
    assert!(f.message.contains("at 3.1 nodes/day"), "{}", f.message);
    assert!(
        f.message
            .contains("block #753 10.2.241.0/24 overlaps route 10.2.241.0/26"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("allocation 372 from now"),
        "{}",
        f.message
    );
    assert!(f.message.contains("in about 120 days"), "{}", f.message);
}

/// One unreadable file never stops the others being checked.
#[test]
fn bad_input_does_not_abort_other_inputs() {
    let dir = fixtures_root().join("input-errors");
    let findings = diagnose(&load(&dir));
    let bad = findings
        .iter()
        .find(|f| f.id == RuleId::InputUnparsable)
        .unwrap();
    assert!(
        bad.message.contains("routes/node-a.json"),
        "{}",
        bad.message
    );
    assert!(bad.message.contains("line 2"), "{}", bad.message);
    assert!(findings.iter().any(|f| f.id == RuleId::RpFilter));
    let typo = findings
        .iter()
        .find(|f| f.id == RuleId::InputUnknownKey)
        .unwrap();
    assert!(
        typo.message.contains("did you mean bpf.masquerade"),
        "{}",
        typo.message
    );
    assert_eq!(typo.evidence[0].line, Some(5));
}
