//! What a conformance run reports: per case PASS/FAIL with every failing cell and error,
//! and a summary that keeps failed, unprobed and unsupported cells apart (none of them is
//! a pass).

use serde::Serialize;

use fibril_core::policy::conformance::{CaseReport, Mismatch, Observed, StepReport, Verdict};

/// One case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub file: String,
    /// The verdict is [`Verdict::Pass`].
    pub passed: bool,
    pub verdict: Verdict,
    pub duration_seconds: f64,
    pub steps: Vec<StepReport>,
}

impl CaseResult {
    pub fn new(report: CaseReport, file: String, verdict: Verdict, duration_seconds: f64) -> Self {
        CaseResult {
            name: report.name,
            file,
            passed: verdict == Verdict::Pass,
            verdict,
            duration_seconds,
            steps: report.steps,
        }
    }

    fn report(&self) -> CaseReport {
        CaseReport {
            name: self.name.clone(),
            steps: self.steps.clone(),
        }
    }

    /// `PASS name (...)`, `UNSUPPORTED name (...)` or `FAIL name (...)` followed by one
    /// indented line per failing cell or error (unsupported cells summed up).
    pub fn text(&self) -> String {
        let cells: usize = self.steps.iter().map(|s| s.cells).sum();
        let mut out = format!(
            "{} {} ({} step{}, {} cells, {:.1}s)",
            self.verdict,
            self.name,
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" },
            cells,
            self.duration_seconds
        );
        for line in self.report().failures() {
            out.push_str("\n  ");
            out.push_str(&line);
        }
        out
    }
}

/// Counts over a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub cases: usize,
    pub cases_passed: usize,
    pub cases_failed: usize,
    /// Cases whose only mismatches are unsupported cells, with their stand-ins right.
    pub cases_unsupported: usize,
    pub steps: usize,
    /// Every expected cell the run looked at.
    pub cells: usize,
    /// Observed as expected.
    pub passed: usize,
    /// Probed, and observed the opposite of the expectation.
    pub failed: usize,
    /// Could not be probed (a failure).
    pub unprobed: usize,
    /// The protocol cannot be carried here (a failure).
    pub unsupported: usize,
    /// Step errors: refused actions, missing expectations, ...
    pub errors: usize,
    /// TCP cells probed in place of unsupported ones, and those not as expected.
    pub stand_in_cells: usize,
    pub stand_ins_failed: usize,
}

impl Counts {
    pub fn of(results: &[CaseResult]) -> Counts {
        let mut c = Counts {
            cases: results.len(),
            ..Default::default()
        };
        for r in results {
            match r.verdict {
                Verdict::Pass => c.cases_passed += 1,
                Verdict::Unsupported => c.cases_unsupported += 1,
                Verdict::Fail => c.cases_failed += 1,
            }
            for s in &r.steps {
                c.steps += 1;
                if let Some(st) = &s.stand_ins {
                    c.stand_in_cells += st.cells;
                    c.stand_ins_failed += st.mismatches.len();
                }
                c.cells += s.cells;
                c.errors += s.errors.len();
                for m in &s.mismatches {
                    match m.observed {
                        Observed::Allowed | Observed::Denied => c.failed += 1,
                        Observed::Unprobed(_) => c.unprobed += 1,
                        Observed::Unsupported(_) => c.unsupported += 1,
                    }
                }
                c.passed += s.cells - s.mismatches.len();
            }
        }
        c
    }

    pub fn text(&self, seconds: f64) -> String {
        let stand_ins = if self.stand_in_cells > 0 {
            format!(
                "; {} TCP stand-in cells, {} not as expected",
                self.stand_in_cells, self.stand_ins_failed
            )
        } else {
            String::new()
        };
        format!(
            "{} cases: {} passed, {} failed, {} unsupported; {} steps; {} cells: {} passed, {} \
             failed, {} not probed, {} unsupported{stand_ins}; {} errors; {seconds:.1}s",
            self.cases,
            self.cases_passed,
            self.cases_failed,
            self.cases_unsupported,
            self.steps,
            self.cells,
            self.passed,
            self.failed,
            self.unprobed,
            self.unsupported,
            self.errors
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Sctp {
    pub supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// `service-ip` or `pod-ip`.
    pub target: String,
    pub settle_ms: u64,
    pub probe_timeout_ms: u64,
    pub retries: u32,
    pub parallel: usize,
    pub allow_unsupported: bool,
}

/// Reachability with no policy at all, before any case: a cell that fails here can show
/// nothing about policy, so every case counts it as not probed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baseline {
    pub cells: usize,
    pub reachable: usize,
    pub unsupported: usize,
    pub unreachable: Vec<Mismatch>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub lab: String,
    pub cases_dir: String,
    pub sctp: Sctp,
    pub settings: Settings,
    pub baseline: Baseline,
    #[serde(flatten)]
    pub counts: Counts,
    pub duration_seconds: f64,
    pub results: Vec<CaseResult>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::policy::conformance::StandIns;
    use fibril_core::policy::PodKey;
    use fibril_core::services::L4Proto;

    fn mismatch(observed: Observed) -> Mismatch {
        Mismatch {
            from: PodKey::new("x", "a"),
            to: PodKey::new("x", "b"),
            port: 80,
            protocol: L4Proto::Tcp,
            expected: false,
            observed,
        }
    }

    #[test]
    fn failed_unprobed_and_unsupported_cells_are_counted_apart_and_never_pass() {
        let failing = CaseResult {
            name: "c1".into(),
            file: "c1.yaml".into(),
            passed: false,
            verdict: Verdict::Fail,
            duration_seconds: 1.0,
            steps: vec![
                StepReport {
                    label: "initial policies".into(),
                    cells: 10,
                    mismatches: vec![
                        mismatch(Observed::Allowed),
                        mismatch(Observed::Unprobed("no server".into())),
                        mismatch(Observed::Unsupported("no SCTP".into())),
                    ],
                    errors: vec![],
                    stand_ins: None,
                },
                StepReport {
                    label: "update".into(),
                    cells: 4,
                    mismatches: vec![],
                    errors: vec!["create_policy x/p: refused".into()],
                    stand_ins: None,
                },
            ],
        };
        let passing = CaseResult {
            name: "c2".into(),
            file: "c2.yaml".into(),
            passed: true,
            verdict: Verdict::Pass,
            duration_seconds: 1.0,
            steps: vec![StepReport {
                label: "initial policies".into(),
                cells: 6,
                ..Default::default()
            }],
        };
        let c = Counts::of(&[failing.clone(), passing.clone()]);
        assert_eq!(
            c,
            Counts {
                cases: 2,
                cases_passed: 1,
                cases_failed: 1,
                cases_unsupported: 0,
                steps: 3,
                cells: 20,
                passed: 17,
                failed: 1,
                unprobed: 1,
                unsupported: 1,
                errors: 1,
                stand_in_cells: 0,
                stand_ins_failed: 0,
            }
        );
        let text = failing.text();
        assert!(
            text.starts_with("FAIL c1 (2 steps, 14 cells, 1.0s)"),
            "{text}"
        );
        assert!(text.contains(
            "\n  c1 step 0 (initial policies): x/a -> x/b 80/TCP: expected denied, observed allowed"
        ));
        assert!(text.contains("observed not probed (no server)"), "{text}");
        assert!(text.contains("1 TCP cells unsupported (no SCTP)"), "{text}");
        assert!(text.contains("c1 step 1 (update): create_policy x/p: refused"));
        assert_eq!(passing.text(), "PASS c2 (1 step, 6 cells, 1.0s)");

        // Unsupported cells with right stand-ins: a case of its own kind, never a pass.
        let mut m = mismatch(Observed::Unsupported("no SCTP".into()));
        m.protocol = L4Proto::Sctp;
        let unsupported = CaseResult {
            name: "c3".into(),
            file: "c3.yaml".into(),
            passed: false,
            verdict: Verdict::Unsupported,
            duration_seconds: 1.0,
            steps: vec![StepReport {
                label: "initial policies".into(),
                cells: 2,
                mismatches: vec![m.clone(), m],
                errors: vec![],
                stand_ins: Some(StandIns {
                    for_protocol: L4Proto::Sctp,
                    cells: 2,
                    mismatches: vec![],
                }),
            }],
        };
        let c = Counts::of(&[passing, unsupported.clone()]);
        assert_eq!(
            (c.cases_passed, c.cases_unsupported, c.cases_failed),
            (1, 1, 0)
        );
        assert_eq!((c.passed, c.unsupported, c.stand_in_cells), (6, 2, 2));
        assert!(c
            .text(1.0)
            .contains("2 TCP stand-in cells, 0 not as expected"));
        assert_eq!(
            unsupported.text(),
            "UNSUPPORTED c3 (1 step, 2 cells, 1.0s)\n  \
             c3 step 0 (initial policies): 2 SCTP cells unsupported (no SCTP)\n  \
             c3 step 0 (initial policies): 2 TCP stand-ins for the SCTP cells, all as the \
             policy model expects"
        );
    }
}
