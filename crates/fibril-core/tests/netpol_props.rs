//! Property tests of the policy compiler + datapath lookup model on random policies over the
//! conformance model: agreement with a direct reading of the Kubernetes rules, stacking only
//! adds allowed cells, order and identity numbering do not matter, allocation is
//! deterministic.

use std::net::Ipv4Addr;
use std::path::Path;

use fibril_core::manifest::label_selector_matches;
use fibril_core::policy::conformance::Model;
use fibril_core::policy::{evaluate, ClusterState, Compiler, PodInfo, PodKey, PolicyRef};
use fibril_core::services::L4Proto;
use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{json, Value};

const PROTOS: [L4Proto; 3] = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp];
const PORTS: [u16; 4] = [79, 80, 81, 82];

/// The conformance model, with one twist: pods `c` serve `serve-80-tcp` on 82, so named
/// ports resolve differently per destination.
fn base() -> ClusterState {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/netpol/model.yaml");
    let model = Model::parse("model.yaml", &std::fs::read_to_string(path).unwrap()).unwrap();
    let mut s = model.cluster_state();
    for p in s.pods.values_mut().filter(|p| p.key.name == "c") {
        for cp in &mut p.ports {
            if cp.name.as_deref() == Some("serve-80-tcp") {
                cp.port = 82;
            }
        }
    }
    s
}

fn pod_ips() -> Vec<Ipv4Addr> {
    base().pods.values().filter_map(|p| p.ip).collect()
}

fn pod_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        select(vec!["a", "b", "c"]).prop_map(|p| json!({"matchLabels": {"pod": p}})),
        (
            select(vec!["In", "NotIn"]),
            subsequence(vec!["a", "b", "c"], 1..=2)
        )
            .prop_map(
                |(op, v)| json!({"matchExpressions": [{"key": "pod", "operator": op, "values": v}]})
            ),
        select(vec!["Exists", "DoesNotExist"])
            .prop_map(|op| json!({"matchExpressions": [{"key": "pod", "operator": op}]})),
        Just(json!({"matchExpressions": [{"key": "other", "operator": "NotIn", "values": ["v"]}]})),
    ]
}

fn ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        select(vec!["x", "y", "z"]).prop_map(|n| json!({"matchLabels": {"ns": n}})),
        select(vec!["x", "y", "z"]).prop_map(|n| json!({"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [n]}]})),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    let ips = pod_ips();
    let n = ips.len();
    prop_oneof![
        pod_selector().prop_map(|p| json!({"podSelector": p})),
        ns_selector().prop_map(|n| json!({"namespaceSelector": n})),
        (pod_selector(), ns_selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        (0..n, 4u8..=32, proptest::option::of((0..n, 0u8..=8))).prop_map(move |(i, len, ex)| {
            let cidr = Ipv4Net::new(ips[i], len).unwrap().trunc();
            let mut block = json!({"cidr": cidr.to_string()});
            if let Some((j, extra)) = ex {
                let e = Ipv4Net::new(ips[j], (len + extra).min(32)).unwrap().trunc();
                if cidr.contains(&e) {
                    block["except"] = json!([e.to_string()]);
                }
            }
            json!({"ipBlock": block})
        }),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    let proto = proptest::option::of(select(vec!["TCP", "UDP", "SCTP"]));
    prop_oneof![
        (select(vec![80, 81, 82]), proto.clone())
            .prop_map(|(p, pr)| with_proto(json!({"port": p}), pr)),
        select(vec!["TCP", "UDP", "SCTP"]).prop_map(|pr| json!({"protocol": pr})),
        (select(vec![79, 80]), select(vec![81, 82]), proto.clone())
            .prop_map(|(a, b, pr)| with_proto(json!({"port": a, "endPort": b}), pr)),
        (
            select(vec![
                "serve-80-tcp",
                "serve-81-udp",
                "serve-80-sctp",
                "serve-81-tcp"
            ]),
            proto
        )
            .prop_map(|(n, pr)| with_proto(json!({"port": n}), pr)),
    ]
}

fn with_proto(mut v: Value, pr: Option<&str>) -> Value {
    if let Some(pr) = pr {
        v["protocol"] = json!(pr);
    }
    v
}

fn rules(peer_key: &'static str) -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(proptest::collection::vec(
        (
            proptest::option::of(proptest::collection::vec(peer(), 0..3)),
            proptest::option::of(proptest::collection::vec(port(), 0..3)),
        )
            .prop_map(move |(peers, ports)| {
                let mut r = json!({});
                if let Some(p) = peers {
                    r[peer_key] = json!(p);
                }
                if let Some(p) = ports {
                    r["ports"] = json!(p);
                }
                r
            }),
        0..3,
    ))
    .prop_map(|v| v.map(Value::from))
}

fn policy() -> impl Strategy<Value = (String, Value)> {
    (
        select(vec!["x", "y", "z"]),
        pod_selector(),
        select(vec![
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
        rules("from"),
        rules("to"),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let mut spec = json!({"podSelector": sel});
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            if let Some(i) = ingress {
                spec["ingress"] = i;
            }
            if let Some(e) = egress {
                spec["egress"] = e;
            }
            (ns.to_string(), spec)
        })
}

fn with_policies(state: &ClusterState, policies: &[(String, Value)], prefix: &str) -> ClusterState {
    let mut s = state.clone();
    for (i, (ns, spec)) in policies.iter().enumerate() {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}{i:03}"), "namespace": ns}, "spec": spec
        }))
        .unwrap();
        s.upsert_policy(np).unwrap();
    }
    s
}

// ---- the oracle: Kubernetes' rules read directly, per packet ---------------------------

fn selects(
    sel: Option<&LabelSelector>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    sel.is_none_or(|s| label_selector_matches(s, labels).unwrap())
}

fn isolates(np: &NetworkPolicy, ingress: bool) -> bool {
    let spec = np.spec.as_ref().unwrap();
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => t
            .iter()
            .any(|t| t == if ingress { "Ingress" } else { "Egress" }),
        _ => ingress || spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
    }
}

fn peer_ok(s: &ClusterState, np_ns: &str, peer: &NetworkPolicyPeer, p: &PodInfo) -> bool {
    if let Some(b) = &peer.ip_block {
        let ip = p.ip.unwrap();
        let cidr: Ipv4Net = b.cidr.parse().unwrap();
        return cidr.contains(&ip)
            && !b
                .except
                .iter()
                .flatten()
                .any(|e| e.parse::<Ipv4Net>().unwrap().contains(&ip));
    }
    let ns_ok = match &peer.namespace_selector {
        None => p.key.namespace == np_ns,
        Some(sel) => selects(Some(sel), &s.namespaces[&p.key.namespace].labels),
    };
    ns_ok && selects(peer.pod_selector.as_ref(), &p.labels)
}

fn port_ok(pp: &NetworkPolicyPort, dst: &PodInfo, port: u16, proto: L4Proto) -> bool {
    let want = pp.protocol.as_deref().unwrap_or("TCP");
    want == proto.to_string()
        && match &pp.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                *n as u16 <= port && port <= pp.end_port.unwrap_or(*n) as u16
            }
            Some(IntOrString::String(name)) => dst.named_port(name, proto) == Some(port),
        }
}

/// Whether `subject`'s side lets the packet through, `peer` being the other end.
fn side_ok(
    s: &ClusterState,
    subject: &PodInfo,
    peer: &PodInfo,
    dst: &PodInfo,
    port: u16,
    proto: L4Proto,
    ingress: bool,
) -> bool {
    let pols: Vec<(&PolicyRef, &NetworkPolicy)> = s
        .policies
        .iter()
        .filter(|(r, np)| {
            r.namespace == subject.key.namespace
                && selects(
                    np.spec.as_ref().unwrap().pod_selector.as_ref(),
                    &subject.labels,
                )
                && isolates(np, ingress)
        })
        .collect();
    if pols.is_empty() {
        return true;
    }
    pols.iter().any(|(r, np)| {
        let spec = np.spec.as_ref().unwrap();
        let rules: Vec<RawRule<'_>> = if ingress {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        };
        rules.iter().any(|(peers, ports)| {
            peers.is_none_or(|v| {
                v.is_empty() || v.iter().any(|pe| peer_ok(s, &r.namespace, pe, peer))
            }) && ports
                .is_none_or(|v| v.is_empty() || v.iter().any(|pp| port_ok(pp, dst, port, proto)))
        })
    })
}

type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn oracle(s: &ClusterState, src: &PodInfo, dst: &PodInfo, port: u16, proto: L4Proto) -> bool {
    side_ok(s, src, dst, dst, port, proto, false) && side_ok(s, dst, src, dst, port, proto, true)
}

/// Every cell's decision through the compiled maps.
fn decisions(
    compiler: &mut Compiler,
    s: &ClusterState,
) -> Vec<(PodKey, PodKey, u16, L4Proto, bool)> {
    let c = compiler.compile(s).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let mut out = Vec::new();
    for a in s.pods.keys() {
        for b in s.pods.keys().filter(|b| *b != a) {
            for port in PORTS {
                for proto in PROTOS {
                    let ok = evaluate(&c, a, b, port, proto).unwrap().allowed();
                    out.push((a.clone(), b.clone(), port, proto, ok));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The compiled maps and the lookup scheme decide every cell as Kubernetes' rules do.
    #[test]
    fn compiled_maps_agree_with_the_rules(policies in proptest::collection::vec(policy(), 0..5)) {
        let s = with_policies(&base(), &policies, "p");
        for (a, b, port, proto, got) in decisions(&mut Compiler::new(), &s) {
            let want = oracle(&s, &s.pods[&a], &s.pods[&b], port, proto);
            prop_assert_eq!(got, want, "{} -> {} {}/{} with {:#?}", a, b, port, proto, policies);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Once every pod is isolated both ways, another policy only ever adds allowed cells.
    #[test]
    fn stacking_only_adds(policies in proptest::collection::vec(policy(), 0..4), extra in policy()) {
        let mut all: Vec<(String, Value)> = ["x", "y", "z"]
            .iter()
            .map(|ns| (ns.to_string(), json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})))
            .collect();
        all.extend(policies);
        let before = decisions(&mut Compiler::new(), &with_policies(&base(), &all, "p"));
        all.push(extra);
        let after = decisions(&mut Compiler::new(), &with_policies(&base(), &all, "p"));
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(!b.4 || a.4, "{:?} was allowed and is not after stacking", b);
        }
    }

    /// Decisions do not depend on the order policies are compiled in, nor on the numbers
    /// identities got from an earlier history.
    #[test]
    fn order_and_numbering_do_not_matter(policies in proptest::collection::vec(policy(), 1..5)) {
        let s1 = with_policies(&base(), &policies, "p");
        let reversed: Vec<_> = policies.iter().rev().cloned().collect();
        let s2 = with_policies(&base(), &reversed, "q");
        let mut seasoned = Compiler::new();
        // A history with other label sets shifts every identity number.
        let mut other = base();
        for p in other.pods.values_mut() {
            p.labels.insert("gen".into(), "0".into());
        }
        seasoned.compile(&other).unwrap();
        let d1 = decisions(&mut Compiler::new(), &s1);
        let d2 = decisions(&mut seasoned, &s2);
        prop_assert_eq!(d1, d2);
    }

    /// Fresh compilers number identities the same way and build the same maps.
    #[test]
    fn compilation_is_deterministic(policies in proptest::collection::vec(policy(), 0..4)) {
        let s = with_policies(&base(), &policies, "p");
        let a = Compiler::new().compile(&s).unwrap();
        let b = Compiler::new().compile(&s).unwrap();
        prop_assert_eq!(&a.pod_identities, &b.pod_identities);
        prop_assert_eq!(&a.ipcache, &b.ipcache);
        prop_assert_eq!(&a.endpoints, &b.endpoints);
        prop_assert_eq!(a.identities, b.identities);
    }
}
