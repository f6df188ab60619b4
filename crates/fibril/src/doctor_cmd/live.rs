//! Live sources for `fibril doctor`: a running system's routes, sysctls, iptables, CNI config
//! dir and fibril agent, read into the same [`Inputs`] the exported files fill.
//!
//! Everything here only reads. A lab node is read from inside its network namespace (threads
//! and child processes enter it; the doctor's own process never moves); `--local` reads the
//! namespace the doctor runs in. Each source read, or not read, is named in the run's notes;
//! one that cannot be read is an `input-unavailable` finding, never silence.
//!
//! iptables: `iptables-save` is run as installed (on Debian 12 that is iptables-nft, which
//! shows the rules of the nf_tables `ip` family tables that iptables-nft and kube-proxy's
//! iptables mode write). When that binary is the nf_tables variant and the namespace also has
//! legacy (x_tables) tables, listed in `/proc/net/ip_tables_names`, `iptables-legacy-save` is
//! read too: kube-proxy and a CNI on different backends is exactly how chains end up evaluated
//! in an order neither expects. Native nftables rulesets (kube-proxy's nftables mode) are not
//! read: they have no iptables chains for these rules to judge.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use fibril_core::doctor::{live_source, Evidence, Finding, Inputs, NodeInput, RuleId, TextInput};
use fibril_netlink::{NetNs, RouteInfo};

/// The per-interface sysctls the rules read (`net.ipv4.conf.{all,default,<if>}.<key>`).
const CONF_SYSCTLS: &[&str] = &["rp_filter", "src_valid_mark"];

/// What the rules that read iptables are, for messages about a dump that was not read.
const IPTABLES_RULES: &str = "hostport-chain-order, iptables-scale";

/// Notes about the run (what was read, what was absent) and findings for sources that could
/// not be read.
#[derive(Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    fn note(&mut self, source: &str, what: impl std::fmt::Display) {
        self.notes.push(format!("{source}: {what}"));
    }

    /// A source that exists but cannot be read: a finding, and a note pointing at it.
    fn unavailable(&mut self, source: &str, message: String, fix: String) {
        self.note(source, format!("NOT READ: {message}"));
        self.findings.push(
            Finding::new(RuleId::InputUnavailable, format!("{source}: {message}"))
                .evidence(Evidence::new(source, message.clone()))
                .why("the doctor cannot check what it cannot read, so the rules that need this source did not run for this node")
                .fix(fix),
        );
    }
}

/// `ip -j route`-shaped JSON of netlink routes, so live routes go through the same parser as
/// an exported file.
fn routes_json(routes: &[RouteInfo]) -> String {
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
    serde_json::Value::Array(arr).to_string()
}

/// The routes netlink gave for one namespace, as an input; or why there are none.
fn routes(
    host: &str,
    node: &str,
    read: fibril_netlink::Result<Vec<RouteInfo>>,
    inputs: &mut Inputs,
    report: &mut Report,
) {
    let source = live_source(host, "routes");
    match read {
        Ok(r) => {
            report.note(
                &source,
                format!("read ({} IPv4 routes, main table)", r.len()),
            );
            inputs.routes.push(NodeInput::new(
                node,
                TextInput::live(source, routes_json(&r)),
            ));
        }
        Err(e) => report.unavailable(
            &source,
            e.to_string(),
            format!("run as root, or export `ip -j route` on {node} and pass it with --routes"),
        ),
    }
}

/// Reads `net.ipv4.conf.<if>.<key>` for `all`, `default` and each interface, in `sysctl -a`
/// form. `read` reads one `net/...` path relative to /proc/sys (inside the namespace).
fn conf_sysctls(
    ifaces: &[String],
    mut read: impl FnMut(&str) -> io::Result<String>,
) -> (String, usize) {
    let mut text = String::new();
    let mut n = 0;
    for i in ifaces {
        for k in CONF_SYSCTLS {
            // Interface names may hold dots; sysctl(8) prints those with `/`.
            let key = format!("net.ipv4.conf.{}.{k}", i.replace('.', "/"));
            // An interface that went away between listing and reading has nothing to show.
            if let Ok(v) = read(&format!("net/ipv4/conf/{i}/{k}")) {
                text.push_str(&format!("{key} = {}\n", v.trim()));
                n += 1;
            }
        }
    }
    (text, n)
}

/// How to run a tool: in the caller's namespace, or with its child entering a lab node's.
enum Place<'a> {
    Here,
    In(&'a NetNs),
}

fn run_tool(tool: &str, place: &Place<'_>) -> Result<std::process::Output, String> {
    let mut cmd = Command::new(tool);
    if let Place::In(ns) = place {
        fibril_netlink::setns_pre_exec(&mut cmd, ns).map_err(|e| e.to_string())?;
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(o),
        Ok(o) => Err(format!(
            "{tool} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{tool} is not installed (not found on PATH)"))
        }
        Err(e) => Err(format!("running {tool}: {e}")),
    }
}

/// Reads the iptables rules of one namespace into `inputs.iptables`.
fn iptables(
    host: &str,
    node: &str,
    place: Place<'_>,
    legacy_tables: Option<String>,
    inputs: &mut Inputs,
    report: &mut Report,
) {
    let source = live_source(host, "iptables-save");
    let out = match run_tool("iptables-save", &place) {
        Ok(o) => o,
        Err(e) => {
            report.unavailable(
                &source,
                format!("{e}; the iptables rules of {node} were not checked ({IPTABLES_RULES})"),
                format!(
                    "install iptables (Debian: apt-get install iptables) and run again as root, or export `iptables-save` on {node} and pass it with --iptables"
                ),
            );
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
    // The header names the backend: "# Generated by iptables-save v1.8.9 (nf_tables) on ...".
    let header = text.lines().next().unwrap_or_default();
    let backend = ["nf_tables", "legacy"]
        .into_iter()
        .find(|b| header.contains(&format!("({b})")));
    report.note(
        &source,
        format!(
            "read ({rules} rules{})",
            backend
                .map(|b| format!(", {b} backend"))
                .unwrap_or_default()
        ),
    );
    inputs
        .iptables
        .push(NodeInput::new(node, TextInput::live(source, text)));
    // A legacy iptables-save has shown the legacy tables already. (An empty dump from the
    // default binary while legacy tables exist means it is the nf_tables one.)
    if backend == Some("legacy") {
        return;
    }
    let legacy = live_source(host, "iptables-legacy-save");
    match legacy_tables {
        None => report.note(&legacy, "not read: no legacy (x_tables) tables in this namespace"),
        Some(tables) => match run_tool("iptables-legacy-save", &place) {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
                report.note(&legacy, format!("read ({rules} rules in legacy tables {tables})"));
                inputs
                    .iptables
                    .push(NodeInput::new(node, TextInput::live(legacy, text)));
            }
            Err(e) => report.unavailable(
                &legacy,
                format!("{e}; this namespace has legacy iptables tables ({tables}) that were not checked ({IPTABLES_RULES})"),
                "install iptables' legacy tools (Debian's iptables package has iptables-legacy-save) and run again".to_string(),
            ),
        },
    }
}

/// Legacy x_tables registered in the namespace this thread is in.
fn legacy_tables_here(proc_net: &Path) -> Option<String> {
    let names = std::fs::read_to_string(proc_net.join("ip_tables_names")).ok()?;
    let names: Vec<&str> = names.split_whitespace().collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn cni_dir(
    node: Option<String>,
    dir: &Path,
    inputs: &mut Inputs,
    report: &mut Report,
    absent_ok: bool,
) {
    let shown = dir.display().to_string();
    if absent_ok && !dir.exists() {
        report.note(
            &shown,
            "absent (no CNI config dir: no CNI configs to check)",
        );
        return;
    }
    let mut bad = Vec::new();
    if let Some(d) = super::read_cni_dir(node, dir, &mut bad) {
        report.note(
            &shown,
            format!("read as the CNI config dir ({} entries)", d.entries.len()),
        );
        inputs.cni_dirs.push(d);
    }
    for f in bad {
        report.note(&shown, format!("NOT READ: {}", f.message));
        report.findings.push(f);
    }
}

/// The agent's status, from its status socket, as `fibril status -o json` would print it.
fn agent_status(
    host: &str,
    node: &str,
    socket: &Path,
    inputs: &mut Inputs,
    report: &mut Report,
) -> Option<fibril_agent::AgentStatus> {
    let source = live_source(host, "agent-status");
    if !socket.exists() {
        report.note(
            &source,
            format!(
                "no fibril agent (no status socket at {}): agent settings not checked",
                socket.display()
            ),
        );
        return None;
    }
    match fibril_agent::read_status(socket) {
        Ok(s) => {
            report.note(
                &source,
                format!("read from {} (node {})", socket.display(), s.node),
            );
            let text = serde_json::to_string(&s).unwrap_or_default();
            inputs
                .agent_status
                .push(NodeInput::new(node, TextInput::live(source, text)));
            Some(s)
        }
        Err(e) => {
            report.unavailable(
                &source,
                e.to_string(),
                format!(
                    "check the agent (`fibril status --socket {}`) and run again as root",
                    socket.display()
                ),
            );
            None
        }
    }
}

/// Options of `--local`.
pub struct LocalOptions {
    /// `--cni-dir` was given: it is this host's CNI config dir, already read.
    pub cni_dir_given: bool,
    pub agent_socket: PathBuf,
}

/// `--local`: the network namespace the doctor runs in (the host's, or the one `ip netns exec`
/// put it in), this host's CNI config dir and its fibril agent, if any.
pub fn local(opts: &LocalOptions, inputs: &mut Inputs) -> Report {
    let mut report = Report::default();
    let host = "local";
    // The agent, if any, names the node.
    let agent = agent_status(host, host, &opts.agent_socket, inputs, &mut report);
    let node = agent
        .as_ref()
        .map(|a| a.node.clone())
        .unwrap_or_else(|| host.to_string());

    routes(
        host,
        &node,
        NetNs::open_path(Path::new("/proc/self/ns/net")).and_then(|ns| ns.routes()),
        inputs,
        &mut report,
    );

    let sysctl = live_source(host, "sysctl");
    let conf = Path::new("/proc/sys/net/ipv4/conf");
    match std::fs::read_dir(conf) {
        Ok(rd) => {
            let mut ifaces: Vec<String> = rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            ifaces.sort();
            let (text, n) = conf_sysctls(&ifaces, |p| {
                std::fs::read_to_string(Path::new("/proc/sys").join(p))
            });
            report.note(
                &sysctl,
                format!(
                    "read ({n} values of net.ipv4.conf.*.{{{}}})",
                    CONF_SYSCTLS.join(",")
                ),
            );
            inputs
                .sysctls
                .push(NodeInput::new(node.clone(), TextInput::live(sysctl, text)));
        }
        Err(e) => report.unavailable(
            &sysctl,
            format!("cannot list {}: {e}", conf.display()),
            "export `sysctl -a` and pass it with --sysctls".into(),
        ),
    }

    iptables(
        host,
        &node,
        Place::Here,
        legacy_tables_here(Path::new("/proc/self/net")),
        inputs,
        &mut report,
    );

    if opts.cni_dir_given {
        report.note("CNI config dir", "from --cni-dir");
    } else {
        let default = Path::new(fibril_core::agent_config::DEFAULT_CNI_CONF_DIR);
        cni_dir(None, default, inputs, &mut report, true);
        // The agent writes its conflist where it was told to; read that dir too if it differs.
        if let Some(dir) = agent
            .as_ref()
            .and_then(|a| a.conflist.as_deref())
            .and_then(Path::parent)
            .filter(|d| *d != default)
        {
            cni_dir(None, dir, inputs, &mut report, true);
        }
    }
    report
}

/// `--lab NAME`: every node of the lab, from inside its own namespace (the root namespace is
/// never read or changed), its CNI config dir from the lab's state, and its fibril agent.
pub fn lab(name: &str, inputs: &mut Inputs) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let lab: fibril_core::lab::LabName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("--lab {name:?}: {e}"))?;
    let record = fibril_lab::lab::LabRecord::require(&lab)?;
    let layout = record.layout();
    let fibril_cni = record.spec.cni == fibril_core::lab::CniMode::Fibril;
    if !fibril_cni {
        report.note(
            &format!("lab {name}"),
            format!(
                "runs --cni {}: no fibril agents, agent settings not checked",
                record.spec.cni
            ),
        );
    }
    for node in layout.node_names() {
        let ns = match NetNs::open(&node) {
            Ok(ns) => ns,
            Err(e) => {
                report.unavailable(
                    &live_source(&node, "netns"),
                    e.to_string(),
                    format!("check the lab (`fibril lab status`); `fibril lab up --name {name}` recreates missing nodes"),
                );
                continue;
            }
        };
        routes(&node, &node, ns.routes(), inputs, &mut report);
        let sysctl = live_source(&node, "sysctl");
        let mut ifaces = vec!["all".to_string(), "default".to_string()];
        match ns.links() {
            Ok(links) => ifaces.extend(links.into_iter().map(|l| l.name)),
            Err(e) => report.unavailable(
                &live_source(&node, "links"),
                format!("{e}; only conf.all and conf.default sysctls were read"),
                "run as root".into(),
            ),
        }
        let (text, n) = conf_sysctls(&ifaces, |p| {
            ns.sysctl(p).map_err(|e| io::Error::other(e.to_string()))
        });
        report.note(&sysctl, format!("read ({n} values)"));
        inputs
            .sysctls
            .push(NodeInput::new(node.clone(), TextInput::live(sysctl, text)));
        // /proc/thread-self/net is the namespace of the thread that reads it.
        let legacy = ns
            .run(|| legacy_tables_here(Path::new("/proc/thread-self/net")))
            .ok()
            .flatten();
        iptables(&node, &node, Place::In(&ns), legacy, inputs, &mut report);
        let conf = layout.node_cni_conf_dir(&node);
        cni_dir(Some(node.clone()), &conf, inputs, &mut report, true);
        if fibril_cni {
            let socket = fibril_agent::status_socket_path(
                &fibril_lab::fibril_cni::agent_state_dir(&layout, &node),
            );
            agent_status(&node, &node, &socket, inputs, &mut report);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_routes_render_as_ip_j_route() {
        let r = RouteInfo {
            dst: "10.244.1.0/24".parse().unwrap(),
            via: Some("172.18.0.12".parse().unwrap()),
            oif: Some(2),
            dev: Some("eth0".into()),
            prefsrc: None,
            metric: Some(100),
            link_scope: false,
        };
        let d = RouteInfo {
            dst: "0.0.0.0/0".parse().unwrap(),
            via: None,
            oif: Some(2),
            dev: Some("eth0".into()),
            prefsrc: Some("172.18.0.11".parse().unwrap()),
            metric: None,
            link_scope: true,
        };
        let v: serde_json::Value = serde_json::from_str(&routes_json(&[r, d])).unwrap();
        assert_eq!(
            v,
            json!([
                {"dst": "10.244.1.0/24", "gateway": "172.18.0.12", "dev": "eth0", "metric": 100},
                {"dst": "default", "dev": "eth0", "scope": "link", "prefsrc": "172.18.0.11"}
            ])
        );
    }

    #[test]
    fn conf_sysctls_render_like_sysctl_a_and_skip_vanished_links() {
        let ifaces = vec![
            "all".to_string(),
            "eth0.100".to_string(),
            "gone".to_string(),
        ];
        let (text, n) = conf_sysctls(&ifaces, |p| {
            if p.contains("gone") {
                Err(io::Error::from(io::ErrorKind::NotFound))
            } else if p.ends_with("rp_filter") {
                Ok("1\n".into())
            } else {
                Ok("0\n".into())
            }
        });
        assert_eq!(n, 4);
        assert_eq!(
            text,
            "net.ipv4.conf.all.rp_filter = 1\nnet.ipv4.conf.all.src_valid_mark = 0\n\
             net.ipv4.conf.eth0/100.rp_filter = 1\nnet.ipv4.conf.eth0/100.src_valid_mark = 0\n"
        );
    }
}
