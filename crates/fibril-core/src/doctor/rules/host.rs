//! Rules over node state: sysctls, iptables, the CNI config dir (seeds 001, 002, 003).

use serde_json::Value;

use crate::doctor::finding::{Evidence, Finding, RuleId, Severity};
use crate::doctor::input::{json_error, CniDir};
use crate::doctor::parse::host::{is_virtual_dev, Iptables, Sysctls};
use crate::doctor::Ctx;

use super::k8s::fqdn_policies;

pub(crate) fn check(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    for s in &ctx.sysctls {
        rp_filter(s, out);
    }
    src_valid_mark(ctx, out);
    for t in &ctx.iptables {
        hostport_chain_order(t, out);
        iptables_scale(t, out);
    }
    for d in &ctx.inputs.cni_dirs {
        cni_config_conflict(d, out);
    }
}

fn sysctl_ev(s: &Sysctls, key: &str) -> Option<Evidence> {
    s.get(key)
        .map(|(v, l)| Evidence::new(s.file.clone(), v).key(key).line(l))
}

fn rp_filter(s: &Sysctls, out: &mut Vec<Finding>) {
    let uplinks: Vec<String> = s
        .interfaces()
        .into_iter()
        .filter(|i| !is_virtual_dev(i))
        .collect();
    // The kernel applies max(conf.all, conf.<dev>).
    let all = s
        .get("net.ipv4.conf.all.rp_filter")
        .and_then(|(v, _)| v.parse::<u8>().ok())
        .unwrap_or(0);
    let strict: Vec<&String> = uplinks
        .iter()
        .filter(|i| {
            let dev = s
                .get(&format!("net.ipv4.conf.{i}.rp_filter"))
                .and_then(|(v, _)| v.parse::<u8>().ok())
                .unwrap_or(0);
            all.max(dev) == 1
        })
        .collect();
    // One uplink sees its own replies; with several, traffic may leave by one and return by
    // another (secondary ENIs, masquerade to the primary address).
    if strict.is_empty() || uplinks.len() < 2 {
        return;
    }
    let mut f = Finding::new(
        RuleId::RpFilter,
        format!(
            "strict rp_filter on {} of node {} ({} uplinks: {})",
            strict
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            s.node,
            uplinks.len(),
            uplinks.join(", ")
        ),
    );
    if all == 1 {
        if let Some(e) = sysctl_ev(s, "net.ipv4.conf.all.rp_filter") {
            f = f.evidence(e);
        }
    }
    for i in &strict {
        if let Some(e) = sysctl_ev(s, &format!("net.ipv4.conf.{i}.rp_filter")) {
            f = f.evidence(e);
        }
    }
    out.push(
        f.why("with strict reverse-path filtering the kernel drops a packet whose source it would route out of a different interface than the one it arrived on, which is what replies to masqueraded or secondary-interface pod traffic do")
            .fix(format!(
                "set net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.<uplink>.rp_filter=2 (loose) on {} (persist it in /etc/sysctl.d/)",
                s.node
            )),
    );
}

fn src_valid_mark(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let policies = fqdn_policies(ctx);
    if policies.is_empty() {
        return;
    }
    for s in &ctx.sysctls {
        let set: Vec<Evidence> = s
            .entries
            .iter()
            .filter(|(k, v, _)| {
                k.starts_with("net.ipv4.conf.") && k.ends_with(".src_valid_mark") && v == "1"
            })
            .map(|(k, v, l)| {
                Evidence::new(s.file.clone(), v.clone())
                    .key(k.clone())
                    .line(*l)
            })
            .collect();
        if set.is_empty() {
            continue;
        }
        let keys: Vec<String> = set.iter().filter_map(|e| e.key.clone()).collect();
        let mut f = Finding::new(
            RuleId::SrcValidMark,
            format!(
                "{} on node {} while {} uses DNS-aware policy: DNS through the proxy will be dropped",
                keys.iter().map(|k| format!("{k}=1")).collect::<Vec<_>>().join(", "),
                s.node,
                policies[0].0
            ),
        );
        for e in set {
            f = f.evidence(e);
        }
        f = f.evidence(policies[0].1.clone());
        out.push(
            f.why("with src_valid_mark=1 the kernel validates a packet's source using its fwmark, and the marks the DNS proxy puts on redirected DNS packets make them fail that check, so every lookup from a pod under an FQDN policy is dropped with no policy denial shown")
                .fix(format!(
                    "set net.ipv4.conf.all.src_valid_mark=0 on {} and stop whatever sets it (on GKE: netd's --enable-source-valid-mark, i.e. disable intranode visibility)",
                    s.node
                )),
        );
    }
}

const CNI_NAT_CHAINS: &[&str] = &["CILIUM_PRE_nat", "CNI-HOSTPORT-DNAT", "KUBE-HOSTPORTS"];

fn hostport_chain_order(t: &Iptables, out: &mut Vec<Finding>) {
    let pre: Vec<_> = t
        .rules
        .iter()
        .filter(|r| r.table == "nat" && r.chain == "PREROUTING")
        .collect();
    let kube = pre
        .iter()
        .find(|r| r.target.as_deref() == Some("KUBE-SERVICES"));
    let cni = pre.iter().find(|r| {
        r.target
            .as_deref()
            .is_some_and(|t| CNI_NAT_CHAINS.contains(&t) || t.starts_with("CILIUM_PRE"))
    });
    let (Some(k), Some(c)) = (kube, cni) else {
        return;
    };
    if k.line > c.line {
        return;
    }
    let chain = c.target.clone().unwrap_or_default();
    out.push(
        Finding::new(
            RuleId::HostportChainOrder,
            format!(
                "nat PREROUTING on node {} jumps to KUBE-SERVICES (line {}) before {chain} (line {})",
                t.node, k.line, c.line
            ),
        )
        .evidence(Evidence::new(t.file.clone(), k.text.clone()).key("nat PREROUTING").line(t.evidence_line(k.line)))
        .evidence(Evidence::new(t.file.clone(), c.text.clone()).key("nat PREROUTING").line(t.evidence_line(c.line)))
        .why("KUBE-SERVICES DNATs and accepts matching traffic first, so the CNI's hostPort DNAT in the later chain is never reached and hostPort workloads are intermittently unreachable (the order depends on which agent inserted its jump last)")
        .fix(format!(
            "make {chain} come first in PREROUTING (the CNI must insert with -I, and re-check after kube-proxy restarts), or let the CNI implement hostPort in BPF; restarting the agent only fixes it until the next kube-proxy restart"
        )),
    );
}

fn iptables_scale(t: &Iptables, out: &mut Vec<Finding>) {
    let service_rules: Vec<_> = t
        .rules
        .iter()
        .filter(|r| r.table == "nat" && r.chain == "KUBE-SERVICES")
        .filter(|r| {
            r.target.as_deref().is_some_and(|x| {
                x.starts_with("KUBE-SVC-")
                    || x.starts_with("KUBE-FW-")
                    || x.starts_with("KUBE-EXT-")
                    || x.starts_with("KUBE-SVL-")
            })
        })
        .collect();
    let kube_rules = t
        .rules
        .iter()
        .filter(|r| r.chain.starts_with("KUBE-"))
        .count();
    let svc_chains = t
        .chains
        .iter()
        .filter(|(_, c, _)| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SVL-"))
        .count();
    let sep_chains = t
        .chains
        .iter()
        .filter(|(_, c, _)| c.starts_with("KUBE-SEP-"))
        .count();
    let n = service_rules.len();
    if n < 1000 && kube_rules < 20_000 {
        return;
    }
    let first = service_rules
        .first()
        .map(|r| r.line)
        .or_else(|| t.rules.first().map(|r| r.line));
    out.push(
        Finding::new(
            RuleId::IptablesScale,
            format!(
                "node {}: {n} service rules in nat KUBE-SERVICES ({svc_chains} service chains, {sep_chains} endpoint chains, {kube_rules} KUBE-* rules): each new connection walks about {} rules, and every endpoint change rewrites all {kube_rules}",
                t.node,
                n / 2 + 2
            ),
        )
        .severity(if n >= 5_000 { Severity::Error } else { Severity::Warning })
        .evidence(
            Evidence::new(t.file.clone(), format!("{n} rules jump to service chains"))
                .key("nat KUBE-SERVICES")
                .line(first.and_then(|l| t.evidence_line(l))),
        )
        .evidence(Evidence::new(t.file.clone(), format!("{kube_rules} rules")).key("KUBE-*"))
        .why("kube-proxy's iptables mode matches services linearly in KUBE-SERVICES for the first packet of every connection and reloads the whole table on each change, so latency and agent CPU grow with the number of services and endpoints")
        .fix("replace kube-proxy with a hash-table service implementation (fibril, or Cilium kubeProxyReplacement: true), or at least kube-proxy's nftables/IPVS mode"),
    );
}

fn plugin_types(v: &Value) -> Vec<String> {
    if let Some(p) = v.get("plugins").and_then(Value::as_array) {
        return p
            .iter()
            .filter_map(|x| x.get("type").and_then(Value::as_str).map(str::to_string))
            .collect();
    }
    v.get("type")
        .and_then(Value::as_str)
        .map(|s| vec![s.to_string()])
        .unwrap_or_default()
}

fn cni_config_conflict(d: &CniDir, out: &mut Vec<Finding>) {
    let mut configs: Vec<_> = d
        .entries
        .iter()
        .filter(|e| {
            e.text.is_some()
                && [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|x| e.name.ends_with(x))
        })
        .collect();
    // libcni sorts names byte-wise and loads the first config that parses.
    configs.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let path = |name: &str| format!("{}/{}", d.path.trim_end_matches('/'), name);
    let mut valid = Vec::new();
    for e in configs {
        match serde_json::from_str::<Value>(e.text.as_deref().unwrap_or_default()) {
            Ok(v) => valid.push((e, plugin_types(&v))),
            Err(err) => out.push(json_error(&path(&e.name), "CNI config (JSON)", &err)),
        }
    }
    if valid.len() < 2 {
        return;
    }
    let (winner, wtypes) = &valid[0];
    let losers: Vec<String> = valid[1..]
        .iter()
        .map(|(e, t)| format!("{} ({})", e.name, t.join(",")))
        .collect();
    let node = d
        .node
        .as_deref()
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    let mut f = Finding::new(
        RuleId::CniConfigConflict,
        format!(
            "{} CNI configs in {}{node}: {} ({}) wins, {} ignored",
            valid.len(),
            d.path,
            winner.name,
            wtypes.join(","),
            losers.join(", ")
        ),
    );
    for (e, t) in &valid {
        f = f.evidence(Evidence::new(path(&e.name), t.join(",")).key("plugins[*].type"));
    }
    out.push(
        f.why("the kubelet's runtime uses only the first config in alphabetical order, so a config left behind by an uninstalled plugin (whose binary is gone) or dropped in by a racing DaemonSet silently decides how new pods are networked, and the others' pods are never cleaned up with CNI DEL")
            .fix(format!(
                "keep exactly one config: remove the leftover(s) from the CNI dir{node} (if {} belongs to an uninstalled plugin, delete it so the intended config wins), then recreate pods started under the wrong plugin",
                winner.name
            )),
    );
}
