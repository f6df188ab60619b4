//! `fibril doctor`: configuration and host-state checks, each from an incident in the seeds.
//!
//! This module owns the rules and their inputs' parsing. It is pure: the caller hands over the
//! text of each exported file ([`Inputs`]) and gets back [`Finding`]s. A file that cannot be read
//! becomes an `input-unparsable` finding and the other inputs are still checked.
//!
//! ```text
//! Inputs ──parse──▶ Ctx (typed: Cilium settings, routes, sysctls, iptables, objects, nodes)
//!                    │
//!                    └─rules──▶ Vec<Finding> ──output──▶ text | json | sarif
//! ```

/// CIDR arithmetic, shared with IPAM; re-exported here so `doctor::cidr` paths keep working.
pub use crate::cidr;
pub mod finding;
pub mod forecast;
pub mod input;
pub mod output;
pub mod parse;
mod rules;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

pub use finding::{sort_findings, Evidence, Finding, RuleId, Severity};
pub use input::{live_source, CniDir, CniEntry, Inputs, NodeInput, Reserved, TextInput};

use parse::cilium::{CiliumView, Settings};
use parse::fibril::AgentReport;
use parse::host::{Iptables, NodeRoutes, Sysctls};
use parse::k8s::{NodeRecord, Object};

/// The inputs, parsed.
pub(crate) struct Ctx<'a> {
    pub inputs: &'a Inputs,
    pub cilium: Option<Settings>,
    pub routes: Vec<NodeRoutes>,
    pub sysctls: Vec<Sysctls>,
    pub iptables: Vec<Iptables>,
    /// fibril agents' own reports.
    pub agents: Vec<AgentReport>,
    /// Objects from `--manifests`.
    pub objects: Vec<Object>,
    /// Objects from `--nodes`.
    pub node_objects: Vec<Object>,
    pub nodes: Vec<NodeRecord>,
    pub reserved: Vec<(IpNet, Evidence)>,
    /// Where time is measured from: `Inputs::now`, else the newest timestamp in `--nodes`.
    pub now: Option<DateTime<Utc>>,
}

/// Runs every rule over whatever inputs are present. Findings come back worst first.
pub fn diagnose(inputs: &Inputs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let view = CiliumView::parse(inputs.cilium_values.as_ref(), inputs.cilium_config.as_ref());
    findings.extend(view.problems.iter().cloned());
    let cilium = view.present().then(|| Settings::resolve(&view));

    let routes = inputs
        .routes
        .iter()
        .filter_map(|r| parse::host::parse_routes(r, &mut findings))
        .collect();
    let sysctls = inputs
        .sysctls
        .iter()
        .map(|s| parse::host::parse_sysctls(s, &mut findings))
        .collect();
    let iptables = inputs
        .iptables
        .iter()
        .map(|s| parse::host::parse_iptables(s, &mut findings))
        .collect();
    let agents = inputs
        .agent_status
        .iter()
        .flat_map(|a| parse::fibril::parse_agent_status(a, &mut findings))
        .collect();
    let objects: Vec<Object> = inputs
        .manifests
        .iter()
        .flat_map(|m| parse::k8s::parse_objects(m, &mut findings))
        .collect();
    let node_objects: Vec<Object> = inputs
        .nodes
        .iter()
        .flat_map(|m| parse::k8s::parse_objects(m, &mut findings))
        .collect();
    let all_nodes: Vec<Object> = node_objects
        .iter()
        .chain(objects.iter().filter(|o| o.kind() == "Node"))
        .cloned()
        .collect();
    let nodes = parse::k8s::node_records(&all_nodes, &mut findings);
    let mut reserved = Vec::new();
    for r in &inputs.reserved {
        match cidr::parse_net(&r.text) {
            Some(n) => reserved.push((n, Evidence::new("--reserved", r.text.clone()))),
            None => findings.push(
                Finding::new(
                    RuleId::InputInvalidValue,
                    format!("--reserved {:?} is not a CIDR", r.text),
                )
                .evidence(Evidence::new("--reserved", r.text.clone()))
                .why("a reserved range that cannot be read protects nothing")
                .fix("give --reserved as an address prefix, e.g. --reserved 10.8.1.0/26"),
            ),
        }
    }
    let now = inputs
        .now
        .or_else(|| node_objects.iter().filter_map(Object::created).max());
    let ctx = Ctx {
        inputs,
        cilium,
        routes,
        sysctls,
        iptables,
        agents,
        objects,
        node_objects,
        nodes,
        reserved,
        now,
    };
    rules::run_all(&ctx, &mut findings);
    sort_findings(&mut findings);
    findings
}

/// Whether any finding reaches `threshold` (the `--fail-on` exit-code rule).
pub fn fails(findings: &[Finding], threshold: Severity) -> bool {
    findings.iter().any(|f| f.severity >= threshold)
}
