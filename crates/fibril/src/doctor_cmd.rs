//! `fibril doctor`: reads the exported files (or a live system: this host with `--local`, a
//! lab's nodes with `--lab`), hands their text to `fibril_core::doctor`, prints the findings and
//! sets the exit code.
//!
//! A file that cannot be read becomes an `input-unparsable` finding like a file that cannot be
//! parsed, so one bad path never hides what the other inputs show. A live source that cannot be
//! read is an `input-unavailable` finding; every live source is also listed on stderr (and in
//! SARIF as the invocation's notes), read or not.

mod live;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use fibril_core::doctor::{
    self, CniDir, CniEntry, Evidence, Finding, Inputs, NodeInput, Reserved, RuleId, Severity,
    TextInput,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorOutput {
    Text,
    Json,
    Sarif,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Info,
    Warning,
    Error,
}

impl From<FailOn> for Severity {
    fn from(f: FailOn) -> Severity {
        match f {
            FailOn::Info => Severity::Info,
            FailOn::Warning => Severity::Warning,
            FailOn::Error => Severity::Error,
        }
    }
}

/// Check a cluster's configuration and node state against the incidents fibril exists to
/// prevent. Give any subset of the exports below, `--local` for this host's live state, or
/// `--lab NAME` for a lab's. With no input at all, `--local` is assumed. Live mode only reads.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Cilium Helm values (values.yaml).
    #[arg(long, value_name = "FILE")]
    pub cilium_values: Option<PathBuf>,
    /// `kubectl -n kube-system get cm cilium-config -o yaml`.
    #[arg(long, value_name = "FILE")]
    pub cilium_config: Option<PathBuf>,
    /// `ip -j route` of one node; repeatable. The node is NODE, else the file's stem.
    #[arg(long, value_name = "[NODE=]FILE")]
    pub routes: Vec<String>,
    /// `sysctl -a` of one node; repeatable.
    #[arg(long, value_name = "[NODE=]FILE")]
    pub sysctls: Vec<String>,
    /// A copy of a node's /etc/cni/net.d; repeatable. With --local: this host's CNI config dir
    /// (default /etc/cni/net.d).
    #[arg(long, value_name = "[NODE=]DIR")]
    pub cni_dir: Vec<String>,
    /// `iptables-save` of one node; repeatable.
    #[arg(long, value_name = "[NODE=]FILE")]
    pub iptables: Vec<String>,
    /// Kubernetes YAML or JSON (NetworkPolicy, CiliumNetworkPolicy, Service, Pod, Node, ...);
    /// a directory means its *.yaml, *.yml and *.json files. Repeatable.
    #[arg(long, value_name = "FILE|DIR")]
    pub manifests: Vec<PathBuf>,
    /// `kubectl get nodes,ciliumnodes -o json`: pod CIDRs and creation times (churn history).
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<PathBuf>,
    /// A range pods must never use (firewall, VPC subnet, on-prem); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub reserved: Vec<String>,
    /// Measure ages and forecasts from this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// `fibril status -o json` of fibril agents (one object or an array); repeatable.
    #[arg(long, value_name = "[NODE=]FILE")]
    pub agent_status: Vec<String>,
    /// Also read the live routes, sysctls, iptables, CNI config dir and fibril agent of every
    /// node of this lab, each from inside the node's network namespace.
    #[arg(long, value_name = "NAME", conflicts_with = "local")]
    pub lab: Option<String>,
    /// Also read this host live: the routes and net.ipv4.conf sysctls of the network namespace
    /// the doctor runs in, `iptables-save`, the CNI config dir and the fibril agent's status
    /// socket, if there is one. The default when no input is given.
    #[arg(long)]
    pub local: bool,
    /// With --local: the fibril agent's status socket.
    #[arg(long, value_name = "PATH", requires = "local")]
    pub agent_socket: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: DoctorOutput,
    /// Exit non-zero when a finding is at least this severe.
    #[arg(long, value_enum, default_value = "error")]
    pub fail_on: FailOn,
}

/// Runs the doctor; the exit code is 1 when a finding reaches `--fail-on`, else 0.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let (inputs, mut unreadable, notes) = gather(&args)?;
    if !notes.is_empty() {
        // On stderr, so `-o json` stays an array of findings.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "sources:");
        for n in &notes {
            let _ = writeln!(err, "  {n}");
        }
    }
    let mut findings = doctor::diagnose(&inputs);
    findings.append(&mut unreadable);
    doctor::sort_findings(&mut findings);
    let rendered = match args.output {
        DoctorOutput::Text => doctor::output::text(&findings),
        DoctorOutput::Json => {
            serde_json::to_string_pretty(&doctor::output::json(&findings))? + "\n"
        }
        DoctorOutput::Sarif => {
            serde_json::to_string_pretty(&doctor::output::sarif_with_notes(
                &findings,
                env!("CARGO_PKG_VERSION"),
                &notes,
            ))? + "\n"
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is the reader's choice, not an error.
    match out.write_all(rendered.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the report")
        }
        _ => {}
    }
    Ok(if doctor::fails(&findings, args.fail_on.into()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn unreadable(path: &Path, e: &dyn std::fmt::Display) -> Finding {
    let file = path.display().to_string();
    Finding::new(
        RuleId::InputUnparsable,
        format!("{file}: cannot be read: {e}"),
    )
    .evidence(Evidence::new(file, e.to_string()))
    .why("the doctor skips what it cannot read, so checks that need this file did not run")
    .fix("check the path and permissions, then run again")
}

fn read_text(path: &Path, bad: &mut Vec<Finding>) -> Option<TextInput> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Some(TextInput::new(path.display().to_string(), text)),
            Err(e) => {
                bad.push(unreadable(path, &format!("not UTF-8 text: {e}")));
                None
            }
        },
        Err(e) => {
            bad.push(unreadable(path, &e));
            None
        }
    }
}

/// `NODE=PATH` or `PATH` (the node is then the file's stem).
fn split_node(arg: &str) -> (String, PathBuf) {
    match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(arg);
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_string());
            (stem, p)
        }
    }
}

fn node_inputs(args: &[String], bad: &mut Vec<Finding>) -> Vec<NodeInput> {
    args.iter()
        .filter_map(|a| {
            let (node, path) = split_node(a);
            read_text(&path, bad).map(|t| NodeInput::new(node, t))
        })
        .collect()
}

fn read_cni_dir(node: Option<String>, dir: &Path, bad: &mut Vec<Finding>) -> Option<CniDir> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            bad.push(unreadable(dir, &e));
            return None;
        }
    };
    let mut entries: Vec<CniEntry> = rd
        .filter_map(Result::ok)
        .map(|e| CniEntry {
            name: e.file_name().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(e.path()).ok(),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Some(CniDir {
        node,
        path: dir.display().to_string(),
        entries,
    })
}

/// No input of any kind was named: the doctor then looks at this host (`--local`).
fn no_inputs(args: &DoctorArgs) -> bool {
    args.cilium_values.is_none()
        && args.cilium_config.is_none()
        && args.routes.is_empty()
        && args.sysctls.is_empty()
        && args.cni_dir.is_empty()
        && args.iptables.is_empty()
        && args.manifests.is_empty()
        && args.nodes.is_none()
        && args.reserved.is_empty()
        && args.agent_status.is_empty()
        && args.lab.is_none()
        && !args.local
}

/// The inputs, findings for files that could not be read, and notes on the live sources.
fn gather(args: &DoctorArgs) -> anyhow::Result<(Inputs, Vec<Finding>, Vec<String>)> {
    let mut bad = Vec::new();
    let mut inputs = Inputs {
        cilium_values: args
            .cilium_values
            .as_deref()
            .and_then(|p| read_text(p, &mut bad)),
        cilium_config: args
            .cilium_config
            .as_deref()
            .and_then(|p| read_text(p, &mut bad)),
        routes: node_inputs(&args.routes, &mut bad),
        sysctls: node_inputs(&args.sysctls, &mut bad),
        iptables: node_inputs(&args.iptables, &mut bad),
        agent_status: node_inputs(&args.agent_status, &mut bad),
        nodes: args.nodes.as_deref().and_then(|p| read_text(p, &mut bad)),
        reserved: args
            .reserved
            .iter()
            .map(|r| Reserved { text: r.clone() })
            .collect(),
        ..Inputs::default()
    };
    for a in &args.cni_dir {
        let (node, path) = match a.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), p),
            _ => (None, a.as_str()),
        };
        if let Some(d) = read_cni_dir(node, Path::new(path), &mut bad) {
            inputs.cni_dirs.push(d);
        }
    }
    for m in &args.manifests {
        if m.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(m) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension()
                            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                    })
                    .collect(),
                Err(e) => {
                    bad.push(unreadable(m, &e));
                    continue;
                }
            };
            files.sort();
            for f in files {
                if let Some(t) = read_text(&f, &mut bad) {
                    inputs.manifests.push(t);
                }
            }
        } else if let Some(t) = read_text(m, &mut bad) {
            inputs.manifests.push(t);
        }
    }
    if let Some(now) = &args.now {
        let t = chrono::DateTime::parse_from_rfc3339(now)
            .with_context(|| format!("--now {now:?} is not an RFC 3339 time"))?;
        inputs.now = Some(t.with_timezone(&chrono::Utc));
    } else {
        inputs.now = Some(chrono::Utc::now());
    }
    let mut notes = Vec::new();
    let report = if let Some(lab) = &args.lab {
        Some(live::lab(lab, &mut inputs)?)
    } else if args.local || no_inputs(args) {
        if !args.local {
            notes.push("no input given: checking this host live (--local)".to_string());
        }
        let opts = live::LocalOptions {
            cni_dir_given: !args.cni_dir.is_empty(),
            agent_socket: args.agent_socket.clone().unwrap_or_else(|| {
                fibril_agent::status_socket_path(Path::new(
                    fibril_core::agent_config::DEFAULT_STATE_DIR,
                ))
            }),
        };
        Some(live::local(&opts, &mut inputs))
    } else {
        None
    };
    if let Some(r) = report {
        notes.extend(r.notes);
        bad.extend(r.findings);
    }
    Ok((inputs, bad, notes))
}
