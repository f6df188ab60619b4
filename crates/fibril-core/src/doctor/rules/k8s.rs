//! Rules over Kubernetes objects (seed 003): policies and DNS, ExternalIPs, watch bandwidth.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::doctor::finding::{Evidence, Finding, RuleId, Severity};
use crate::doctor::parse::k8s::Object;
use crate::doctor::Ctx;

pub(crate) fn check(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    policy_blocks_dns(ctx, out);
    dns_ndots(ctx, out);
    external_ip_mitm(ctx, out);
    crd_watch_bandwidth(ctx, out);
}

/// Cilium policies that need the DNS proxy: (display, evidence of the first such rule).
pub(crate) fn fqdn_policies(ctx: &Ctx<'_>) -> Vec<(String, Evidence)> {
    let mut out = Vec::new();
    for o in cilium_policies(ctx) {
        for (path, spec) in specs(o) {
            for (i, rule) in spec
                .get("egress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let base = format!("{path}.egress[{i}]");
                if let Some(f) = rule.get("toFQDNs") {
                    out.push((
                        o.display(),
                        o.evidence(&format!("{base}.toFQDNs"), f.to_string()),
                    ));
                    break;
                }
                let dns = rule
                    .get("toPorts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, tp)| tp.pointer("/rules/dns").is_some());
                if let Some((j, tp)) = dns {
                    out.push((
                        o.display(),
                        o.evidence(
                            &format!("{base}.toPorts[{j}].rules.dns"),
                            tp["rules"]["dns"].to_string(),
                        ),
                    ));
                    break;
                }
            }
        }
    }
    out
}

fn cilium_policies<'a>(ctx: &'a Ctx<'_>) -> impl Iterator<Item = &'a Object> {
    ctx.objects.iter().filter(|o| {
        matches!(
            o.kind(),
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy"
        )
    })
}

/// A Cilium policy's rule bodies: `spec`, or each of `specs`.
fn specs(o: &Object) -> Vec<(String, &Value)> {
    let mut v = Vec::new();
    if let Some(s) = o.value.get("spec") {
        v.push(("spec".to_string(), s));
    }
    for (i, s) in o
        .value
        .get("specs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        v.push((format!("specs[{i}]"), s));
    }
    v
}

fn port_is_dns(p: &Option<IntOrString>, end: Option<i32>) -> bool {
    match p {
        None => true,
        Some(IntOrString::Int(n)) => *n == 53 || end.is_some_and(|e| *n <= 53 && 53 <= e),
        Some(IntOrString::String(s)) => matches!(s.as_str(), "dns" | "dns-tcp" | "domain" | "53"),
    }
}

fn selects_dns(peer: &NetworkPolicyPeer) -> bool {
    if peer.ip_block.is_some() {
        return true;
    }
    let ns_ok = match &peer.namespace_selector {
        None => false,
        Some(sel) => {
            let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
            empty
                || sel
                    .match_labels
                    .iter()
                    .flatten()
                    .any(|(_, v)| v == "kube-system")
                || sel
                    .match_expressions
                    .iter()
                    .flatten()
                    .any(|e| e.values.iter().flatten().any(|v| v == "kube-system"))
        }
    };
    let pod_ok = match &peer.pod_selector {
        None => true,
        Some(sel) => {
            sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                || sel
                    .match_labels
                    .iter()
                    .flatten()
                    .any(|(k, v)| k == "k8s-app" && (v == "kube-dns" || v == "coredns"))
        }
    };
    (peer.namespace_selector.is_some() && ns_ok && pod_ok)
        || (peer.namespace_selector.is_none()
            && peer.pod_selector.as_ref().is_some_and(|sel| {
                sel.match_labels
                    .iter()
                    .flatten()
                    .any(|(k, v)| k == "k8s-app" && (v == "kube-dns" || v == "coredns"))
            }))
}

fn rule_allows_dns(r: &NetworkPolicyEgressRule) -> bool {
    let ports_ok = match &r.ports {
        None => true,
        Some(p) if p.is_empty() => true,
        Some(p) => p.iter().any(|p| {
            port_is_dns(&p.port, p.end_port)
                && p.protocol
                    .as_deref()
                    .is_none_or(|x| x == "UDP" || x == "TCP")
        }),
    };
    let peers_ok = match &r.to {
        None => true,
        Some(t) if t.is_empty() => true,
        Some(t) => t.iter().any(selects_dns),
    };
    ports_ok && peers_ok
}

fn policy_blocks_dns(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    // (namespace, selector JSON) -> whether some egress policy for exactly those pods allows DNS.
    let mut nps: Vec<(&Object, NetworkPolicy)> = Vec::new();
    let mut problems = Vec::new();
    for o in ctx.objects.iter().filter(|o| o.kind() == "NetworkPolicy") {
        match o.decode::<NetworkPolicy>() {
            Ok(np) => nps.push((o, np)),
            Err(f) => problems.push(f),
        }
    }
    out.extend(problems);
    let egress = |np: &NetworkPolicy| {
        let spec = np.spec.as_ref();
        match spec.and_then(|s| s.policy_types.as_ref()) {
            Some(t) => t.iter().any(|t| t == "Egress"),
            None => spec.is_some_and(|s| s.egress.is_some()),
        }
    };
    let allows = |np: &NetworkPolicy| {
        np.spec
            .as_ref()
            .and_then(|s| s.egress.as_ref())
            .is_some_and(|rules| rules.iter().any(rule_allows_dns))
    };
    let selector = |np: &NetworkPolicy| {
        np.spec
            .as_ref()
            .map(|s| serde_json::to_string(&s.pod_selector).unwrap_or_default())
            .unwrap_or_default()
    };
    let mut ok: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (o, np) in nps.iter().filter(|(_, np)| egress(np)) {
        if allows(np) {
            ok.insert((o.namespace().to_string(), selector(np)), true);
        }
    }
    let empty_sel = serde_json::to_string(
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default(),
    )
    .unwrap_or_default();
    for (o, np) in nps.iter().filter(|(_, np)| egress(np)) {
        if allows(np) {
            continue;
        }
        let ns = o.namespace().to_string();
        if ok.contains_key(&(ns.clone(), selector(np)))
            || ok.contains_key(&(ns.clone(), empty_sel.clone()))
        {
            continue;
        }
        let sel = selector(np);
        let whom = if sel == empty_sel || sel == "{}" {
            "every pod".to_string()
        } else {
            format!("pods {sel}")
        };
        let n_rules = np
            .spec
            .as_ref()
            .and_then(|s| s.egress.as_ref())
            .map(|e| e.len())
            .unwrap_or(0);
        out.push(dns_finding(
            format!(
                "{} restricts egress of {whom} in {ns} with {} and allows no DNS (port 53 to kube-dns)",
                o.display(),
                if n_rules == 0 { "no egress rules (default deny)".to_string() } else { format!("{n_rules} egress rule(s)") }
            ),
            o.evidence(
                if n_rules == 0 { "spec.policyTypes" } else { "spec.egress" },
                if n_rules == 0 { "[Egress]".to_string() } else { format!("{n_rules} rule(s), none to port 53") },
            ),
            &ns,
        ));
    }
    for o in cilium_policies(ctx) {
        for (path, spec) in specs(o) {
            let Some(rules) = spec.get("egress").and_then(Value::as_array) else {
                continue;
            };
            let dns = rules.iter().any(|r| {
                let ports = r.get("toPorts").and_then(Value::as_array);
                match ports {
                    None => r
                        .get("toEntities")
                        .and_then(Value::as_array)
                        .is_some_and(|e| {
                            e.iter()
                                .any(|x| x == "all" || x == "world" || x == "cluster")
                        }),
                    Some(tp) => tp.iter().any(|tp| {
                        tp.get("ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .any(|p| p.get("port").is_some_and(|x| x == "53" || x == 53))
                    }),
                }
            });
            if dns {
                continue;
            }
            let fqdn = rules.iter().any(|r| r.get("toFQDNs").is_some());
            out.push(dns_finding(
                format!(
                    "{} {} has egress rules and none allows DNS{}",
                    o.display(),
                    path,
                    if fqdn {
                        " (its toFQDNs rules also need a DNS rule to learn any IP)"
                    } else {
                        ""
                    }
                ),
                o.evidence(
                    &format!("{path}.egress"),
                    format!("{} rule(s), none to port 53", rules.len()),
                ),
                o.namespace(),
            ));
        }
    }
}

fn dns_finding(msg: String, ev: Evidence, ns: &str) -> Finding {
    Finding::new(RuleId::PolicyBlocksDns, msg)
        .evidence(ev)
        .why("an egress policy puts the selected pods in default-deny for egress, and DNS to kube-dns is egress too, so every name lookup times out even though the intended destinations are allowed")
        .fix(format!(
            "add an egress rule to the policy in {ns}: to namespaceSelector {{kubernetes.io/metadata.name: kube-system}} + podSelector {{k8s-app: kube-dns}}, ports 53/UDP and 53/TCP"
        ))
}

/// Pod specs: Pods, and the templates of workload kinds.
fn pod_specs<'a>(ctx: &'a Ctx<'_>) -> Vec<(&'a Object, String, Result<PodSpec, Finding>)> {
    let mut out = Vec::new();
    for o in &ctx.objects {
        let path = match o.kind() {
            "Pod" => "spec",
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
                "spec.template.spec"
            }
            _ => continue,
        };
        let spec = if o.kind() == "Pod" {
            o.decode::<Pod>().map(|p| p.spec.unwrap_or_default())
        } else {
            let pointer = format!("/{}", path.replace('.', "/"));
            match o.value.pointer(&pointer) {
                Some(v) => serde_json::from_value::<PodSpec>(v.clone()).map_err(|e| {
                    crate::doctor::input::unparsable(
                        &o.file,
                        "pod template",
                        None,
                        None,
                        &format!("{}: {e}", o.key(path)),
                    )
                }),
                None => continue,
            }
        };
        out.push((o, path.to_string(), spec));
    }
    out
}

/// Hostnames in a string: URL hosts and bare dotted names.
fn hostnames(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',' || c == '"' || c == '\'' || c == '=')
        .filter_map(|tok| {
            let t = tok.split("://").nth(1).unwrap_or(tok);
            let host = t.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or("");
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => host,
            };
            let labels: Vec<&str> = host.split('.').collect();
            let ok = labels.len() >= 2
                && labels.iter().all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
                && labels
                    .last()
                    .is_some_and(|l| l.len() >= 2 && l.chars().all(|c| c.is_ascii_alphabetic()));
            ok.then(|| host.to_ascii_lowercase())
        })
        .collect()
}

fn dns_ndots(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    for (o, path, spec) in pod_specs(ctx) {
        let spec = match spec {
            Ok(s) => s,
            Err(f) => {
                out.push(f);
                continue;
            }
        };
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".to_string());
        // Default/None do not use the cluster search list; a host-network pod with ClusterFirst
        // falls back to the node's resolv.conf.
        if policy == "Default"
            || policy == "None"
            || (policy == "ClusterFirst" && spec.host_network == Some(true))
        {
            continue;
        }
        let ndots: usize = spec
            .dns_config
            .as_ref()
            .and_then(|c| c.options.as_ref())
            .and_then(|o| o.iter().find(|o| o.name.as_deref() == Some("ndots")))
            .and_then(|o| o.value.as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::from(crate::consts::CLUSTER_DNS_NDOTS));
        let mut found: Vec<(String, String)> = Vec::new();
        for (ci, c) in spec.containers.iter().enumerate() {
            let mut texts: Vec<(String, String)> = Vec::new();
            for (ei, e) in c.env.iter().flatten().enumerate() {
                if let Some(v) = &e.value {
                    texts.push((
                        format!("{path}.containers[{ci}].env[{ei}].value"),
                        v.clone(),
                    ));
                }
            }
            for (ai, a) in c
                .args
                .iter()
                .flatten()
                .chain(c.command.iter().flatten())
                .enumerate()
            {
                texts.push((format!("{path}.containers[{ci}].args[{ai}]"), a.clone()));
            }
            for (key, t) in texts {
                for h in hostnames(&t) {
                    let dots = h.matches('.').count();
                    let internal =
                        h.ends_with(".svc") || h.contains(".svc.") || h.ends_with(".local");
                    if dots < ndots && !internal && !found.iter().any(|(x, _)| *x == h) {
                        found.push((h, key.clone()));
                    }
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        // ClusterFirst search list: <ns>.svc.cluster.local svc.cluster.local cluster.local, plus
        // usually one host domain; each name is asked for A and AAAA.
        let names = 3 + 1 + 1;
        let queries = names * 2;
        let mut f = Finding::new(
            RuleId::DnsNdots,
            format!(
                "{} resolves {} with ndots:{ndots}: each lookup tries the search list first, about {queries} queries instead of 2",
                o.display(),
                found.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
        .severity(Severity::Warning);
        for (h, key) in found.iter().take(3) {
            f = f.evidence(o.evidence(key, h.clone()));
        }
        f = f.evidence(o.evidence(
            &format!("{path}.dnsConfig"),
            format!("ndots:{ndots} (dnsPolicy {policy})"),
        ));
        out.push(
            f.why(format!(
                "a name with fewer than {ndots} dots is first tried with each search domain appended, and every miss is a full query (A and AAAA) to CoreDNS and upstream, which cloud DNS rate limits (e.g. 1024 pps per ENI on AWS) turn into random timeouts"
            ))
            .fix(format!(
                "write external names fully qualified with a trailing dot (e.g. {}.), or set spec.dnsConfig.options [{{name: ndots, value: \"1\"}}] on {}",
                found[0].0,
                o.display()
            )),
        );
    }
}

fn external_ip_mitm(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let guarded = ctx.objects.iter().any(|o| {
        let text = o.value.to_string().to_ascii_lowercase();
        match o.kind() {
            "ValidatingAdmissionPolicy" | "ValidatingWebhookConfiguration" => {
                text.contains("externalip")
            }
            "K8sExternalIPs" => true,
            _ => false,
        }
    });
    if guarded {
        return;
    }
    for o in ctx.objects.iter().filter(|o| o.kind() == "Service") {
        let svc: Service = match o.decode() {
            Ok(s) => s,
            Err(f) => {
                out.push(f);
                continue;
            }
        };
        let ips = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default();
        if ips.is_empty() {
            continue;
        }
        out.push(
            Finding::new(
                RuleId::ExternalIpMitm,
                format!(
                    "{} claims externalIPs {} and no admission policy restricts externalIPs",
                    o.display(),
                    ips.join(", ")
                ),
            )
            .evidence(o.evidence("spec.externalIPs", ips.join(", ")))
            .why("any user who can create a Service can set externalIPs to any address, and every node then redirects cluster traffic for that address to their pods (CVE-2020-8554), intercepting it")
            .fix("deny spec.externalIPs with an admission guard (a ValidatingAdmissionPolicy, the externalip-webhook, or Gatekeeper's K8sExternalIPs) allowing only an approved range, and use a LoadBalancer Service instead"),
        );
    }
}

fn crd_watch_bandwidth(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let per_node: Vec<&Object> = ctx
        .node_objects
        .iter()
        .filter(|o| o.kind() == "CiliumNode")
        .collect();
    if per_node.is_empty() {
        return;
    }
    let Some(now) = ctx.now else { return };
    let watchers = per_node.len() as f64;
    let mut total = 0.0f64;
    let mut rate_sum = 0.0f64;
    let mut worst: Option<(f64, &Object, i64, usize)> = None;
    let mut measured = 0;
    for o in &per_node {
        let size = serde_json::to_vec(&o.value).map(|v| v.len()).unwrap_or(0);
        let gen = o
            .value
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let age = o.created().map(|c| (now - c).num_seconds()).unwrap_or(0);
        let rate = if gen > 1 && age > 0 {
            measured += 1;
            (gen - 1) as f64 / age as f64
        } else {
            1.0 / 600.0
        };
        rate_sum += rate;
        let bytes = rate * size as f64;
        total += bytes * watchers;
        if worst.as_ref().is_none_or(|w| bytes > w.0) {
            worst = Some((bytes, o, gen, size));
        }
    }
    let mbit = total * 8.0 / 1e6;
    if mbit < 10.0 {
        return;
    }
    let (_, wo, wgen, wsize) = worst.expect("non-empty");
    let avg_size = per_node
        .iter()
        .map(|o| serde_json::to_vec(&o.value).map(|v| v.len()).unwrap_or(0))
        .sum::<usize>() as f64
        / watchers;
    // Every agent rewriting its object at once (a DaemonSet restart within ~10 s).
    let storm_bits = watchers * avg_size * watchers * 8.0 / 10.0;
    let storm = if storm_bits >= 1e9 {
        format!("{:.1} Gbit/s", storm_bits / 1e9)
    } else {
        format!("{:.0} Mbit/s", storm_bits / 1e6)
    };
    out.push(
        Finding::new(
            RuleId::CrdWatchBandwidth,
            format!(
                "{} CiliumNode objects (avg {:.1} KB) x {:.3} updates/s each x {} watching agents: about {:.0} Mbit/s of API server egress; a simultaneous restart would push {} for 10 s",
                per_node.len(),
                avg_size / 1000.0,
                rate_sum / watchers,
                per_node.len(),
                mbit,
                storm
            ),
        )
        .severity(if mbit >= 1000.0 { Severity::Error } else { Severity::Warning })
        .evidence(wo.evidence(
            "metadata.generation",
            format!("generation {wgen} since {}, {wsize} bytes", wo.value.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("?")),
        ))
        .evidence(Evidence::new(
            wo.file.clone(),
            format!("{} objects, {measured} with a measured update rate (others assumed 1 per 10 min)", per_node.len()),
        ).key("items[*]"))
        .why("every agent watches every per-node object, so each update is sent to all N watchers: egress grows with N x N x object size x update rate")
        .fix("keep per-node objects small and update them only on change (no periodic full rewrites); find what bumps metadata.generation so often, and stagger agent restarts"),
    );
}
