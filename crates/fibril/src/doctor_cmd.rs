//! `fibril doctor`: reads the exported files (or a lab node's live state), hands their text to
//! `fibril_core::doctor`, prints the findings and sets the exit code.
//!
//! A file that cannot be read becomes an `input-unparsable` finding like a file that cannot be
//! parsed, so one bad path never hides what the other inputs show.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

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
/// prevent. Give any subset of the exports below, or `--lab NAME` for a lab's live state.
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
    /// A copy of a node's /etc/cni/net.d; repeatable.
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
    /// Also read the live routes, sysctls and CNI config dir of every node of this lab.
    #[arg(long, value_name = "NAME")]
    pub lab: Option<String>,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: DoctorOutput,
    /// Exit non-zero when a finding is at least this severe.
    #[arg(long, value_enum, default_value = "error")]
    pub fail_on: FailOn,
}

/// Runs the doctor; the exit code is 1 when a finding reaches `--fail-on`, else 0.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let (inputs, mut unreadable) = gather(&args)?;
    let mut findings = doctor::diagnose(&inputs);
    findings.append(&mut unreadable);
    doctor::sort_findings(&mut findings);
    let rendered = match args.output {
        DoctorOutput::Text => doctor::output::text(&findings),
        DoctorOutput::Json => {
            serde_json::to_string_pretty(&doctor::output::json(&findings))? + "\n"
        }
        DoctorOutput::Sarif => {
            serde_json::to_string_pretty(&doctor::output::sarif(
                &findings,
                env!("CARGO_PKG_VERSION"),
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

fn gather(args: &DoctorArgs) -> anyhow::Result<(Inputs, Vec<Finding>)> {
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
    if let Some(lab) = &args.lab {
        live_lab(lab, &mut inputs, &mut bad)?;
    }
    Ok((inputs, bad))
}

/// The sysctls the rules read, for `all`, `default` and each link.
const LIVE_SYSCTLS: &[&str] = &["rp_filter", "src_valid_mark"];

/// Reads every node of lab `name`: routes and sysctls from inside its network namespace (the
/// root namespace is never read or changed), and its CNI config dir from the lab's state.
fn live_lab(name: &str, inputs: &mut Inputs, bad: &mut Vec<Finding>) -> anyhow::Result<()> {
    let lab: fibril_core::lab::LabName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("--lab {name:?}: {e}"))?;
    let record = fibril_lab::lab::LabRecord::require(&lab)?;
    let layout = record.layout();
    for node in layout.node_names() {
        let ns = match fibril_netlink::NetNs::open(&node) {
            Ok(ns) => ns,
            Err(e) => {
                bad.push(unreadable(Path::new(&format!("lab:{node}")), &e));
                continue;
            }
        };
        match ns.routes() {
            Ok(routes) => {
                let arr: Vec<serde_json::Value> = routes
                    .iter()
                    .map(|r| {
                        let mut v = json!({});
                        v["dst"] = if r.dst.prefix_len() == 0 {
                            json!("default")
                        } else if r.dst.prefix_len() == 32 {
                            json!(r.dst.addr().to_string())
                        } else {
                            json!(r.dst.to_string())
                        };
                        if let Some(g) = r.via {
                            v["gateway"] = json!(g.to_string());
                        }
                        if let Some(d) = &r.dev {
                            v["dev"] = json!(d);
                        }
                        if r.link_scope {
                            v["scope"] = json!("link");
                        }
                        if let Some(s) = r.prefsrc {
                            v["prefsrc"] = json!(s.to_string());
                        }
                        if let Some(m) = r.metric {
                            v["metric"] = json!(m);
                        }
                        v
                    })
                    .collect();
                inputs.routes.push(NodeInput::new(
                    node.clone(),
                    TextInput::new(
                        format!("lab:{node}/ip-route.json"),
                        serde_json::to_string(&arr)?,
                    ),
                ));
            }
            Err(e) => bad.push(unreadable(Path::new(&format!("lab:{node}/routes")), &e)),
        }
        let mut ifaces = vec!["all".to_string(), "default".to_string()];
        match ns.links() {
            Ok(links) => ifaces.extend(links.into_iter().map(|l| l.name)),
            Err(e) => bad.push(unreadable(Path::new(&format!("lab:{node}/links")), &e)),
        }
        let mut text = String::new();
        for i in &ifaces {
            for k in LIVE_SYSCTLS {
                // Interface names may hold dots; sysctl(8) prints those with `/`.
                let key = format!("net.ipv4.conf.{}.{k}", i.replace('.', "/"));
                let path_key = format!("net/ipv4/conf/{i}/{k}");
                if let Ok(v) = ns.sysctl(&path_key) {
                    text.push_str(&format!("{key} = {}\n", v.trim()));
                }
            }
        }
        inputs.sysctls.push(NodeInput::new(
            node.clone(),
            TextInput::new(format!("lab:{node}/sysctl"), text),
        ));
        let conf = layout.node_cni_conf_dir(&node);
        if conf.is_dir() {
            if let Some(d) = read_cni_dir(Some(node.clone()), &conf, bad) {
                inputs.cni_dirs.push(d);
            }
        }
    }
    Ok(())
}
