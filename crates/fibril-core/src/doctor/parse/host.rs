//! Node state exports: `ip -j route`, `sysctl -a`, `iptables-save`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::doctor::cidr::parse_net;
use crate::doctor::finding::Finding;
use crate::doctor::input::{json_error, unparsable, NodeInput};

/// One route of `ip -j route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `None` for `default`.
    pub dst: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub protocol: Option<String>,
    pub scope: Option<String>,
    pub prefsrc: Option<IpAddr>,
    /// Position in the exported array, for evidence (`[3].dst`).
    pub index: usize,
}

impl Route {
    pub fn describe(&self) -> String {
        let mut s = match &self.dst {
            Some(d) => d.to_string(),
            None => "default".to_string(),
        };
        if let Some(g) = self.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = &self.dev {
            s.push_str(&format!(" dev {d}"));
        }
        if let Some(p) = &self.protocol {
            s.push_str(&format!(" proto {p}"));
        }
        if let Some(sc) = &self.scope {
            s.push_str(&format!(" scope {sc}"));
        }
        s
    }
}

/// The routes of one node.
#[derive(Clone, Debug)]
pub struct NodeRoutes {
    pub node: String,
    pub file: String,
    pub routes: Vec<Route>,
}

impl NodeRoutes {
    /// The longest-prefix route for `addr` (the default route matches everything).
    pub fn lookup(&self, addr: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| match &r.dst {
                Some(d) => crate::doctor::cidr::contains_addr(d, addr),
                None => addr.is_ipv4() == self.default_is_v4(),
            })
            .max_by_key(|r| r.dst.map(|d| d.prefix_len() as i32).unwrap_or(-1))
    }

    fn default_is_v4(&self) -> bool {
        // `ip -j route` lists one family; decide by the first concrete destination.
        self.routes
            .iter()
            .find_map(|r| r.dst.map(|d| matches!(d, IpNet::V4(_))))
            .unwrap_or(true)
    }

    /// This node's own address on its uplink: the `prefsrc` of its link-scope kernel routes.
    pub fn node_ip(&self) -> Option<IpAddr> {
        self.routes
            .iter()
            .filter(|r| r.scope.as_deref() == Some("link") && r.gateway.is_none())
            .filter(|r| !r.dev.as_deref().is_some_and(is_virtual_dev))
            .find_map(|r| r.prefsrc)
    }
}

/// Devices a CNI, container runtime or tunnel creates; not the node's uplinks.
pub fn is_virtual_dev(dev: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "lo",
        "lxc",
        "cilium_",
        "fibril",
        "veth",
        "docker",
        "cni",
        "flannel",
        "vxlan",
        "genev",
        "tunl",
        "kube-",
        "nodelocaldns",
        "cali",
        "weave",
        "wg",
        "br-",
        "virbr",
        "tap",
        "tun",
        "dummy",
    ];
    PREFIXES.iter().any(|p| dev.starts_with(p))
}

pub fn parse_routes(n: &NodeInput, problems: &mut Vec<Finding>) -> Option<NodeRoutes> {
    let file = &n.input.name;
    let what = "`ip -j route` export";
    let v: Value = match serde_json::from_str(&n.input.text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(json_error(file, what, &e));
            return None;
        }
    };
    let Some(arr) = v.as_array() else {
        problems.push(unparsable(
            file,
            what,
            Some(1),
            None,
            "expected a JSON array of routes",
        ));
        return None;
    };
    let mut routes = Vec::new();
    for (i, r) in arr.iter().enumerate() {
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let dst = match s("dst").as_deref() {
            Some("default") | None => None,
            Some(d) => match parse_net(d) {
                Some(n) => Some(n),
                None => {
                    problems.push(unparsable(
                        file,
                        what,
                        None,
                        None,
                        &format!("[{i}].dst: {d:?} is not a prefix"),
                    ));
                    continue;
                }
            },
        };
        // Only the main table's unicast routes say where traffic goes.
        if let Some(t) = s("type") {
            if t != "unicast" {
                continue;
            }
        }
        routes.push(Route {
            dst,
            gateway: s("gateway").and_then(|g| g.parse().ok()),
            dev: s("dev"),
            protocol: s("protocol"),
            scope: s("scope"),
            prefsrc: s("prefsrc").and_then(|g| g.parse().ok()),
            index: i,
        });
    }
    Some(NodeRoutes {
        node: n.node.clone(),
        file: file.clone(),
        routes,
    })
}

/// `sysctl -a` of one node.
#[derive(Clone, Debug)]
pub struct Sysctls {
    pub node: String,
    pub file: String,
    /// (key, value, 1-based line; `None` for a live source)
    pub entries: Vec<(String, String, Option<u32>)>,
}

impl Sysctls {
    pub fn get(&self, key: &str) -> Option<(&str, Option<u32>)> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, l)| (v.as_str(), *l))
    }

    /// Interfaces named by `net.ipv4.conf.<if>.*` keys (not `all`/`default`).
    pub fn interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter_map(|(k, _, _)| k.strip_prefix("net.ipv4.conf."))
            .filter_map(|rest| rest.rsplit_once('.').map(|(i, _)| i.to_string()))
            .filter(|i| i != "all" && i != "default")
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

pub fn parse_sysctls(n: &NodeInput, problems: &mut Vec<Finding>) -> Sysctls {
    let mut entries = Vec::new();
    let mut bad: Vec<u32> = Vec::new();
    for (i, line) in n.input.text.lines().enumerate() {
        let l = line.trim();
        // `sysctl -a` as non-root prints "sysctl: permission denied on key ..." lines.
        if l.is_empty() || l.starts_with('#') || l.starts_with("sysctl:") {
            continue;
        }
        match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.trim().contains(' ') => {
                let key = k.trim().trim_start_matches("/proc/sys/").replace('/', ".");
                entries.push((
                    key,
                    v.trim().to_string(),
                    n.input.evidence_line(i as u32 + 1),
                ));
            }
            _ => bad.push(i as u32 + 1),
        }
    }
    if let Some(&first) = bad.first() {
        problems.push(unparsable(
            &n.input.name,
            "`sysctl -a` export (key = value lines)",
            Some(first),
            None,
            &format!(
                "{} line(s) are not `key = value`; they were skipped",
                bad.len()
            ),
        ));
    }
    Sysctls {
        node: n.node.clone(),
        file: n.input.name.clone(),
        entries,
    }
}

/// One `-A CHAIN ...` rule of `iptables-save`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub table: String,
    pub chain: String,
    pub target: Option<String>,
    pub text: String,
    pub line: u32,
}

impl Iptables {
    /// A rule's line as evidence: `None` for a live dump.
    pub fn evidence_line(&self, line: u32) -> Option<u32> {
        (!self.live).then_some(line)
    }
}

#[derive(Clone, Debug)]
pub struct Iptables {
    pub node: String,
    pub file: String,
    /// Read live (`iptables-save` run by the doctor): rule lines order the rules but are not
    /// shown as evidence.
    pub live: bool,
    pub rules: Vec<Rule>,
    /// (table, chain, line) of each `:CHAIN` declaration.
    pub chains: Vec<(String, String, u32)>,
}

pub fn parse_iptables(n: &NodeInput, problems: &mut Vec<Finding>) -> Iptables {
    let mut table = String::new();
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    let mut bad: Vec<u32> = Vec::new();
    for (i, line) in n.input.text.lines().enumerate() {
        let ln = i as u32 + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l == "COMMIT" {
            continue;
        }
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = l.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or_default();
            chains.push((table.clone(), name.to_string(), ln));
        } else if let Some(r) = l.strip_prefix("-A ").or_else(|| l.strip_prefix("-I ")) {
            let mut words = r.split_whitespace();
            let chain = words.next().unwrap_or_default().to_string();
            let words: Vec<&str> = r.split_whitespace().collect();
            let target = words
                .iter()
                .position(|w| *w == "-j" || *w == "-g" || *w == "--jump" || *w == "--goto")
                .and_then(|p| words.get(p + 1))
                .map(|s| s.to_string());
            rules.push(Rule {
                table: table.clone(),
                chain,
                target,
                text: l.to_string(),
                line: ln,
            });
        } else {
            bad.push(ln);
        }
    }
    if let Some(&first) = bad.first() {
        problems.push(unparsable(
            &n.input.name,
            "`iptables-save` export",
            Some(first),
            None,
            &format!(
                "{} line(s) are not tables, chains or rules; they were skipped",
                bad.len()
            ),
        ));
    }
    Iptables {
        node: n.node.clone(),
        file: n.input.name.clone(),
        live: n.input.live,
        rules,
        chains,
    }
}
