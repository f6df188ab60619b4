//! `fibril connectivity`: reachability tests run against a live lab.
//!
//! - `netpol`: the upstream NetworkPolicy conformance cases ([`netpol`]), probed with real
//!   traffic from inside the lab's pods ([`probe`]) against the `fibril/netpol-server`
//!   workload, with a report that never counts an unprobed cell as a pass ([`report`]).

mod labops;
mod manifests;
mod netpol;
mod probe;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use fibril_core::lab::LabName;
use fibril_lab::lab::{self, LabRecord};

use report::{Counts, Sctp, Settings, Summary};

#[derive(Subcommand)]
pub enum ConnectivityCommand {
    /// Run NetworkPolicy conformance cases (model.yaml + case files) on a lab: PASS, FAIL or
    /// UNSUPPORTED per case with every mismatching cell. Exits non-zero if a case fails or
    /// (without --allow-unsupported) is unsupported.
    Netpol(NetpolArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args)]
pub struct NetpolArgs {
    /// Directory with model.yaml and the case files (*.yaml).
    #[arg(long)]
    cases: PathBuf,
    /// The lab to run on.
    #[arg(long, default_value = "fibril", env = "FIBRIL_LAB")]
    lab: LabName,
    /// Only cases whose name or file name starts with this (repeatable).
    #[arg(long = "case", value_name = "PREFIX")]
    only: Vec<String>,
    /// Wait after each step's changes before probing, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Per-probe timeout in milliseconds: a probe with no answer by then counts as denied.
    #[arg(long, default_value_t = 1000)]
    probe_timeout_ms: u64,
    /// Probe cells that do not match this many more times before they count.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// At most this many probes in flight.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// How long to wait for the model's pods and services (and the baseline) to be ready.
    #[arg(long, default_value_t = 120)]
    ready_timeout_secs: u64,
    /// What probes connect to.
    #[arg(long, value_enum, default_value = "service-ip")]
    target: netpol::TargetKind,
    /// Delete the model's namespaces at the end (by default only policies are removed,
    /// and the model stays for the next run).
    #[arg(long)]
    cleanup: bool,
    /// UNSUPPORTED cases (their only mismatches are cells of a protocol this kernel cannot
    /// carry, SCTP without its module, and their TCP stand-ins are right) do not make the
    /// run fail. They are still reported UNSUPPORTED, never PASS.
    #[arg(long)]
    allow_unsupported: bool,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

pub async fn run(cmd: ConnectivityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectivityCommand::Netpol(a) => run_netpol(a).await,
    }
}

async fn run_netpol(a: NetpolArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let json = a.output == Format::Json;
    let set = netpol::load_cases(&a.cases, &a.only)?;
    let record = LabRecord::require(&a.lab)?;
    let layout = record.layout();
    let client = lab::client(&layout)?;
    let sctp = fibril_lab::workload::netpol::sctp_support().err();
    let say = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    match &sctp {
        None => say("SCTP: supported"),
        Some(why) => say(&format!(
            "SCTP: unsupported: {why}; SCTP cells count as unsupported (never a pass)"
        )),
    }
    say(match a.target {
        netpol::TargetKind::ServiceIp => "probing each destination through its Service ClusterIP",
        netpol::TargetKind::PodIp => "probing each destination at its pod IP (--target pod-ip)",
    });
    let settings = netpol::RunSettings {
        settle: Duration::from_millis(a.settle_ms),
        probe: probe::ProbeSettings {
            timeout: Duration::from_millis(a.probe_timeout_ms),
            parallel: a.parallel,
        },
        retries: a.retries,
        retry_interval: Duration::from_millis(500),
        ready_timeout: Duration::from_secs(a.ready_timeout_secs),
        target: a.target,
    };
    let mut runner = netpol::Runner::new(client, layout, set.model, settings, sctp.clone());
    let baseline = runner.setup(json).await?;
    let mut results = Vec::new();
    for (file, case) in &set.cases {
        let t = Instant::now();
        let report = runner.run_case(case).await;
        let r = netpol::result(case, file, report, t.elapsed().as_secs_f64());
        say(&r.text());
        results.push(r);
    }
    runner.finish(a.cleanup).await?;
    let counts = Counts::of(&results);
    let seconds = start.elapsed().as_secs_f64();
    let failed = counts.cases_failed > 0 || (counts.cases_unsupported > 0 && !a.allow_unsupported);
    say(&counts.text(seconds));
    if json {
        let summary = Summary {
            lab: a.lab.to_string(),
            cases_dir: a.cases.display().to_string(),
            sctp: Sctp {
                supported: sctp.is_none(),
                reason: sctp,
            },
            settings: Settings {
                target: match a.target {
                    netpol::TargetKind::ServiceIp => "service-ip",
                    netpol::TargetKind::PodIp => "pod-ip",
                }
                .to_string(),
                settle_ms: a.settle_ms,
                probe_timeout_ms: a.probe_timeout_ms,
                retries: a.retries,
                parallel: a.parallel,
                allow_unsupported: a.allow_unsupported,
            },
            baseline,
            counts,
            duration_seconds: seconds,
            results,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
