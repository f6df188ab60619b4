//! The 48 upstream NetworkPolicy cases (tests/conformance/netpol), every step, through the
//! policy compiler and the datapath lookup model, against the upstream truth tables; and
//! the canary (one inverted expectation) that must fail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_core::policy::conformance::{
    apply_action, check_step, present_pods, run_reference, tcp_stand_ins, Case, CaseReport,
    Mismatch, Model, Observed, StandIns, Verdict,
};
use fibril_core::policy::Compiler;
use fibril_core::policy::PodKey;
use fibril_core::services::L4Proto;

fn data_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/conformance")
        .join(name)
}

fn model() -> Model {
    let path = data_dir("netpol").join("model.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Model::parse(&path.display().to_string(), &text).unwrap()
}

fn cases(dir: &str) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "model.yaml")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            Case::parse(&p.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

#[test]
fn all_48_cases_pass_every_step() {
    let model = model();
    let cases = cases("netpol");
    assert_eq!(cases.len(), 48, "the upstream set has 48 cases");
    let mut failures = Vec::new();
    let (mut steps, mut cells, mut multi) = (0, 0, 0);
    let mut protocols = BTreeMap::new();
    for case in &cases {
        let report = run_reference(&model, case);
        steps += report.steps.len();
        cells += report.steps.iter().map(|s| s.cells).sum::<usize>();
        multi += usize::from(case.steps.len() > 1);
        for s in &case.steps {
            for c in &s.expected {
                *protocols.entry(c.protocol).or_insert(0usize) += 1;
            }
        }
        if !report.passed(case) {
            failures.extend(report.failures());
        }
    }
    println!(
        "{} cases, {steps} steps ({multi} multi-step cases), {cells} cells {protocols:?}: {} failing",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "mismatching cells:\n{}",
        failures.join("\n")
    );
    // Every case's every step ran, and nothing was skipped: 72 cells per probe.
    assert_eq!(steps, 58);
    assert!(protocols.contains_key(&L4Proto::Udp) && protocols.contains_key(&L4Proto::Sctp));
    let expected_cells: usize = cases
        .iter()
        .flat_map(|c| &c.steps)
        .map(|s| s.probes.len() * 72)
        .sum();
    assert_eq!(cells, expected_cells);
}

#[test]
fn canary_with_an_inverted_expectation_fails_on_that_cell() {
    let model = model();
    let canary = cases("netpol-canary");
    assert_eq!(canary.len(), 1);
    let report = run_reference(&model, &canary[0]);
    assert!(!report.passed(&canary[0]), "the canary must fail");
    let mismatches: Vec<_> = report.steps.iter().flat_map(|s| &s.mismatches).collect();
    assert_eq!(mismatches.len(), 1, "{:?}", report.failures());
    let m = mismatches[0];
    assert_eq!(
        (&m.from, &m.to, m.port, m.protocol, m.expected, &m.observed),
        (
            &PodKey::new("x", "b"),
            &PodKey::new("x", "a"),
            81,
            L4Proto::Tcp,
            true,
            &Observed::Denied
        )
    );
    assert_eq!(
        report.failures(),
        vec!["e2e-14-ports-canary-inverted step 0 (initial policies): x/b -> x/a 81/TCP: expected allowed, observed denied"]
    );
    // The original of the canary passes: the failure is the inverted cell, nothing else.
    let original = cases("netpol")
        .into_iter()
        .find(|c| c.name == "e2e-14-ports")
        .unwrap();
    assert!(run_reference(&model, &original).passed(&original));
}

#[test]
fn ip_dependent_values_rederive_to_themselves_on_the_canonical_layout() {
    let model = model();
    let ips = model.pod_ips();
    let mut dependent = 0;
    for case in cases("netpol") {
        dependent += usize::from(!case.ip_dependent_values.is_empty());
        assert_eq!(case.rederive(&ips).unwrap(), case, "{}", case.name);
    }
    assert_eq!(dependent, 3, "e2e-34, 35 and 36 depend on pod IPs");
}

/// With another IPAM layout, re-derived ipBlock cases still match the truth tables (which
/// are stated per pod, not per address).
#[test]
fn ipblock_cases_pass_on_another_address_layout() {
    let mut model = model();
    // Rotate the addresses: every pod gets another's.
    let keys: Vec<PodKey> = model.pods.keys().cloned().collect();
    let ips: Vec<Ipv4Addr> = keys.iter().map(|k| model.pods[k].ip).collect();
    for (i, k) in keys.iter().enumerate() {
        let p = model.pods.get_mut(k).unwrap();
        p.ip = ips[(i + 4) % ips.len()];
    }
    let mut checked = 0;
    for case in cases("netpol")
        .into_iter()
        .filter(|c| !c.ip_dependent_values.is_empty())
    {
        let moved = case.rederive(&model.pod_ips()).unwrap();
        assert_ne!(
            moved, case,
            "{}: the values must move with the pods",
            case.name
        );
        let report = run_reference(&model, &moved);
        assert!(
            report.passed(&moved),
            "{}:\n{}",
            case.name,
            report.failures().join("\n")
        );
        // And the unmoved case is wrong on the new layout: the addresses matter.
        assert!(!run_reference(&model, &case).passed(&case), "{}", case.name);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn case_files_are_parsed_strictly() {
    let text =
        std::fs::read_to_string(data_dir("netpol").join("e2e-20-updated-policy.yaml")).unwrap();
    // An unknown key anywhere is an error naming it.
    let bad = text.replacen("probes:", "probez: []\nprobes:", 1);
    let e = Case::parse("f.yaml", &bad).unwrap_err();
    assert!(e.to_string().contains("probez"), "{e}");
    // A cell of a port that is not probed.
    let bad = text.replacen(
        "port: 81, protocol: TCP, allowed",
        "port: 82, protocol: TCP, allowed",
        1,
    );
    let e = Case::parse("f.yaml", &bad).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected[0]: 82/TCP is not one of the step's probes"),
        "{e}"
    );
    // A policy that the API server would refuse.
    let bad = text.replacen(
        "podSelector: {}",
        "podSelector: {matchExpressions: [{key: a, operator: In}]}",
        1,
    );
    let e = Case::parse("f.yaml", &bad).unwrap_err();
    assert!(
        e.to_string()
            .contains("policies[0].spec.podSelector.matchExpressions[0].values"),
        "{e}"
    );
    // An unknown field inside a policy.
    let bad = text.replacen("podSelector: {}", "podSelectr: {}", 1);
    let e = Case::parse("f.yaml", &bad).unwrap_err();
    assert!(e.to_string().contains("podSelectr"), "{e}");
    // Every action kind parses, `delete_all_policies: {}` included.
    let steps = r#"
name: t
source: {}
probes: [{port: 80, protocol: TCP}]
policies: []
expected: []
steps:
- label: all kinds
  actions:
  - delete_all_policies: {}
  - delete_policy: {namespace: x, name: p}
  - set_namespace_labels: {namespace: x, labels: {a: b}}
  - set_pod_labels: {pod: x/a, labels: {pod: a}}
  - create_namespace: {namespace: w, labels: {ns: w}}
  - delete_namespace: {namespace: w}
  - create_pod: {pod: x/d, labels: {pod: d}}
  - delete_pod: {pod: x/d}
  probes: []
  expected: []
"#;
    let c = Case::parse("t.yaml", steps).unwrap();
    assert_eq!(c.steps[1].actions.len(), 8);
    let e = Case::parse("t.yaml", &steps.replace("pod: x/d}", "pod: xd}")).unwrap_err();
    assert!(e.to_string().contains("not a pod reference"), "{e}");
}

#[test]
fn unprobed_and_unsupported_cells_fail_a_step() {
    let model = model();
    let case = cases("netpol")
        .into_iter()
        .find(|c| c.name == "e2e-16-allow-all")
        .unwrap();
    let step = &case.steps[0];
    let pods: Vec<PodKey> = model.pods.keys().cloned().collect();
    let all_allowed = check_step(step, &pods, |_| Observed::Allowed);
    assert!(all_allowed.passed(), "{:?}", all_allowed);
    for odd in [
        Observed::Unprobed("no server".into()),
        Observed::Unsupported("no SCTP".into()),
    ] {
        assert!(!odd.probed());
        let r = check_step(step, &pods, |c| {
            if c.from.to_string() == "x/a" && c.to.to_string() == "x/b" && c.port == 80 {
                odd.clone()
            } else {
                Observed::Allowed
            }
        });
        assert!(!r.passed());
        assert_eq!(r.cells, 144);
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.mismatches[0].observed, odd);
    }
    assert!(Observed::Allowed.probed() && Observed::Denied.probed());
    assert_eq!(
        Observed::Unsupported("no SCTP".into()).to_string(),
        "unsupported (no SCTP)"
    );
}

/// The TCP stand-ins of an SCTP-only case's step 0, keyed "from->to".
fn stand_ins(case: &str) -> BTreeMap<String, bool> {
    let model = model();
    let case = cases("netpol")
        .into_iter()
        .find(|c| c.name.starts_with(case))
        .unwrap();
    let step = &case.steps[0];
    let mut state = model.cluster_state();
    for a in &step.actions {
        apply_action(&mut state, &model, a).unwrap();
    }
    let compiled = Compiler::new().compile(&state).unwrap();
    let present = present_pods(step, &state);
    let cells = tcp_stand_ins(step, &present, L4Proto::Sctp, &compiled).unwrap();
    assert_eq!(cells.len(), 72, "{}", case.name);
    assert!(cells.iter().all(|c| c.protocol == L4Proto::Tcp));
    cells
        .iter()
        .map(|c| (format!("{}->{}", c.from, c.to), c.allowed))
        .collect()
}

#[test]
fn sctp_only_cases_get_tcp_stand_ins_closed_where_the_policy_isolates() {
    // e2e-47: x/a admits SCTP 81 from namespace y only: TCP 81 stays closed to x/a from
    // everywhere, y included; other pods are not isolated.
    let s47 = stand_ins("e2e-47");
    for from in ["x/b", "y/a", "y/b", "z/c"] {
        assert!(!s47[&format!("{from}->x/a")], "{from} -> x/a");
    }
    assert!(s47["x/a->y/a"] && s47["y/a->x/b"]);
    // e2e-46: namespace x denies all ingress: TCP into x is closed, out of x open.
    let s46 = stand_ins("e2e-46");
    assert!(!s46["z/a->x/b"] && !s46["x/a->x/c"]);
    assert!(s46["x/a->z/a"] && s46["y/a->z/b"]);
    // e2e-48: a rule with no ports admits every protocol from y/a: TCP too.
    let s48 = stand_ins("e2e-48");
    assert!(s48["y/a->x/a"]);
    assert!(!s48["y/b->x/a"] && !s48["x/b->x/a"]);
    // A step that probes TCP on the port already has no stand-in for those pairs.
    let model = model();
    let e2e14 = cases("netpol")
        .into_iter()
        .find(|c| c.name == "e2e-14-ports")
        .unwrap();
    let compiled = Compiler::new().compile(&model.cluster_state()).unwrap();
    let pods: Vec<PodKey> = model.pods.keys().cloned().collect();
    assert!(
        tcp_stand_ins(&e2e14.steps[0], &pods, L4Proto::Sctp, &compiled)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn unsupported_is_its_own_verdict_and_never_a_pass() {
    let model = model();
    let case = cases("netpol")
        .into_iter()
        .find(|c| c.name.starts_with("e2e-47"))
        .unwrap();
    let step = &case.steps[0];
    let pods: Vec<PodKey> = model.pods.keys().cloned().collect();
    let unsupported = || Observed::Unsupported("no SCTP".into());
    let mut r = check_step(step, &pods, |_| unsupported());
    assert_eq!(r.mismatches.len(), 72);
    assert_eq!(r.verdict(), Verdict::Unsupported);
    assert!(!r.passed());
    r.stand_ins = Some(StandIns {
        for_protocol: L4Proto::Sctp,
        cells: 72,
        mismatches: vec![],
    });
    assert_eq!(r.verdict(), Verdict::Unsupported);
    let lines = CaseReport {
        name: case.name.clone(),
        steps: vec![r.clone()],
    }
    .failures();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with("72 SCTP cells unsupported (no SCTP)"),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with("72 TCP stand-ins for the SCTP cells, all as the policy model expects"),
        "{lines:?}"
    );

    // A wrong stand-in fails the step; so does any other mismatch beside unsupported ones.
    let mut wrong = r.clone();
    let mut m = wrong.mismatches[0].clone();
    m.protocol = L4Proto::Tcp;
    m.observed = Observed::Allowed;
    wrong.stand_ins.as_mut().unwrap().mismatches.push(m.clone());
    assert_eq!(wrong.verdict(), Verdict::Fail);
    let mut mixed = r.clone();
    mixed.mismatches.push(Mismatch {
        observed: Observed::Unprobed("no server".into()),
        ..m
    });
    assert_eq!(mixed.verdict(), Verdict::Fail);
    // A case is as bad as its worst step, and fails when a step did not run.
    let report = CaseReport {
        name: case.name.clone(),
        steps: vec![r],
    };
    assert_eq!(report.verdict(&case), Verdict::Unsupported);
    let short = CaseReport {
        name: case.name.clone(),
        steps: vec![],
    };
    assert_eq!(short.verdict(&case), Verdict::Fail);
}
