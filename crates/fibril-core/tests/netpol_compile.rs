//! The policy compiler's outputs beyond the conformance tables: the ipcache layout for
//! ipBlocks, the host and world, revisions, warnings, and the cost of 1,000 policies on one
//! pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use fibril_core::policy::{
    evaluate, evaluate_packet, ClusterState, Compiler, ContainerPort, Identity, NamespaceInfo,
    NodeInfo, PodInfo, PodKey, PolicyKey, PolicyWarning, PortPrefix, Side,
};
use fibril_core::services::L4Proto;
use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, ip: &str, node: &str, l: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        key: PodKey::new(ns, name),
        labels: labels(l),
        ip: Some(ip.parse().unwrap()),
        node: Some(node.into()),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: L4Proto::Tcp,
        }],
        host_network: false,
    }
}

/// Two nodes, namespaces a and b, pods a/web (node-1), a/db (node-2), b/client (node-2).
fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for ns in ["a", "b"] {
        s.upsert_namespace(NamespaceInfo {
            name: ns.into(),
            labels: labels(&[("kubernetes.io/metadata.name", ns)]),
        });
    }
    s.upsert_node(NodeInfo {
        name: "node-1".into(),
        ips: vec!["172.18.0.11".parse().unwrap()],
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
    });
    s.upsert_node(NodeInfo {
        name: "node-2".into(),
        ips: vec!["172.18.0.12".parse().unwrap()],
        pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
    });
    s.upsert_pod(pod("a", "web", "10.244.1.10", "node-1", &[("app", "web")]));
    s.upsert_pod(pod("a", "db", "10.244.2.10", "node-2", &[("app", "db")]));
    s.upsert_pod(pod(
        "b",
        "client",
        "10.244.2.11",
        "node-2",
        &[("app", "client")],
    ));
    s
}

fn add(s: &mut ClusterState, ns: &str, name: &str, spec: Value) {
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    s.upsert_policy(np).unwrap();
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn ipblock_except_carves_longer_prefixes_and_pods_carry_both_identities() {
    let mut s = cluster();
    add(
        &mut s,
        "a",
        "out",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.2.0/24"]}}]}]}),
    );
    let c = Compiler::new().compile(&s).unwrap();
    let cidr = |n: &str| {
        c.identities
            .cidrs
            .get(&n.parse::<Ipv4Net>().unwrap())
            .unwrap()
    };
    let (c8, c24) = (cidr("10.0.0.0/8"), cidr("10.244.2.0/24"));
    assert!(c8.is_cidr() && c24.is_cidr() && c8 != c24);
    // A pod in the /8: its pod identity and the /8's CIDR identity.
    let (net, e) = c.ipcache_lookup(None, ip("10.244.1.10"));
    assert_eq!(net, "10.244.1.10/32".parse::<Ipv4Net>().unwrap());
    assert_eq!(
        (e.identity, e.cidr_identity),
        (c.pod_identities[&PodKey::new("a", "web")], Some(c8))
    );
    // A pod in the except: the except's identity, which the rule does not select.
    let (_, e) = c.ipcache_lookup(None, ip("10.244.2.11"));
    assert_eq!(e.cidr_identity, Some(c24));
    // An unknown address in node-2's pod range: unmanaged, and the except's CIDR identity.
    let (net, e) = c.ipcache_lookup(None, ip("10.244.2.99"));
    assert_eq!(net, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(
        (e.identity, e.cidr_identity),
        (Identity::UNMANAGED, Some(c24))
    );
    // Outside the cluster: world, plus the /8's identity where it applies.
    assert_eq!(c.ipcache_lookup(None, ip("10.9.9.9")).1.identity, c8);
    let (_, e) = c.ipcache_lookup(None, ip("8.8.8.8"));
    assert_eq!((e.identity, e.cidr_identity), (Identity::WORLD, None));

    let web = ip("10.244.1.10");
    let allowed = |dst: &str| evaluate_packet(&c, web, ip(dst), L4Proto::Tcp, 443).allowed();
    assert!(allowed("10.9.9.9"));
    assert!(!allowed("8.8.8.8"));
    assert!(!allowed("10.244.2.10"), "a/db is in the except");
    assert!(!allowed("10.244.2.99"));
    assert!(allowed("10.244.1.77"));
}

#[test]
fn pods_and_their_own_node_always_talk() {
    let mut s = cluster();
    add(
        &mut s,
        "a",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let c = Compiler::new().compile(&s).unwrap();
    let web = ip("10.244.1.10");
    // node-1 is web's own node: host.
    let d = evaluate_packet(&c, ip("172.18.0.11"), web, L4Proto::Tcp, 8080);
    assert!(d.allowed());
    assert_eq!(
        d.ingress,
        Side::Allowed {
            peer: Identity::HOST,
            entry: PolicyKey::all(Identity::HOST)
        }
    );
    assert!(evaluate_packet(&c, web, ip("172.18.0.11"), L4Proto::Udp, 53).allowed());
    // node-2 is another node: remote-node, denied like anything else.
    let d = evaluate_packet(&c, ip("172.18.0.12"), web, L4Proto::Tcp, 8080);
    assert!(!d.allowed());
    assert_eq!(
        c.ipcache_for_node("node-1")
            .get(&"172.18.0.11/32".parse().unwrap())
            .unwrap()
            .identity,
        Identity::HOST
    );
    assert_eq!(
        c.ipcache_for_node("node-2")
            .get(&"172.18.0.11/32".parse().unwrap())
            .unwrap()
            .identity,
        Identity::REMOTE_NODE
    );
}

#[test]
fn drops_carry_the_side_the_peer_and_the_revision() {
    let mut s = cluster();
    add(
        &mut s,
        "a",
        "web-in",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                     "ports": [{"port": "http"}]}]}),
    );
    let mut compiler = Compiler::new();
    let c = compiler.compile(&s).unwrap();
    let web = PodKey::new("a", "web");
    let db = PodKey::new("a", "db");
    let client = PodKey::new("b", "client");
    assert!(evaluate(&c, &db, &web, 8080, L4Proto::Tcp)
        .unwrap()
        .allowed());
    let d = evaluate(&c, &client, &web, 8080, L4Proto::Tcp).unwrap();
    let (dir, side) = d.denied_at().unwrap();
    assert_eq!(dir.to_string(), "ingress");
    assert_eq!(
        side,
        &Side::Denied {
            peer: vec![c.pod_identities[&client]],
            endpoint: web.clone(),
            revision: 1
        }
    );
    // Same state again: no revision moves. A change to web's policy bumps web only.
    let c = compiler.compile(&s).unwrap();
    assert!(c.endpoints.values().all(|e| e.revision == 1));
    add(
        &mut s,
        "a",
        "web-in",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
    );
    let c = compiler.compile(&s).unwrap();
    assert_eq!(c.endpoints[&web].revision, 2);
    assert_eq!(c.endpoints[&db].revision, 1);
    assert_eq!(c.endpoints[&client].revision, 1);
    // A label change moves the pod to another identity: its peers' maps change, so the
    // endpoints whose entries name it get a new revision too.
    s.pods
        .get_mut(&db)
        .unwrap()
        .labels
        .insert("tier".into(), "data".into());
    let c = compiler.compile(&s).unwrap();
    assert_eq!(c.endpoints[&web].revision, 3);
    assert_eq!(c.endpoints[&db].revision, 2);
    assert!(evaluate(&c, &db, &web, 8080, L4Proto::Tcp)
        .unwrap()
        .allowed());
}

#[test]
fn port_ranges_become_few_prefix_entries() {
    let mut s = cluster();
    add(
        &mut s,
        "a",
        "range",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"ports": [{"port": 32000, "endPort": 32768, "protocol": "UDP"}]}]}),
    );
    let c = Compiler::new().compile(&s).unwrap();
    let m = c.endpoints[&PodKey::new("a", "web")]
        .ingress
        .clone()
        .unwrap();
    // The range as 3 prefixes, for the wildcard peer, plus the host entry.
    assert_eq!(m.len(), 4);
    assert!(m.contains(&PolicyKey::ports(
        Identity::ANY,
        L4Proto::Udp,
        PortPrefix {
            port: 32256,
            len: 7
        }
    )));
    let from_client = |port, proto| {
        evaluate(
            &c,
            &PodKey::new("b", "client"),
            &PodKey::new("a", "web"),
            port,
            proto,
        )
        .unwrap()
        .allowed()
    };
    assert!(!from_client(31999, L4Proto::Udp));
    assert!(from_client(32000, L4Proto::Udp));
    assert!(from_client(32500, L4Proto::Udp));
    assert!(from_client(32768, L4Proto::Udp));
    assert!(!from_client(32769, L4Proto::Udp));
    assert!(!from_client(32500, L4Proto::Tcp));
}

#[test]
fn imprecision_and_problems_are_reported() {
    let mut s = cluster();
    // Two replicas of one identity give "http" different numbers.
    let mut r2 = pod(
        "a",
        "web-2",
        "10.244.1.11",
        "node-1",
        &[("app", "web"), ("pod-template-hash", "2")],
    );
    r2.ports[0].port = 9090;
    s.upsert_pod(r2);
    add(
        &mut s,
        "b",
        "named",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}]}),
    );
    add(
        &mut s,
        "b",
        "hash",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod-template-hash": "2"}}}]}]}),
    );
    add(
        &mut s,
        "b",
        "bad",
        json!({"podSelector": {"matchLabels": {"app": "client"}},
        "ingress": [{"ports": [{"port": 70000}]}]}),
    );
    add(
        &mut s,
        "b",
        "v6",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}),
    );
    s.upsert_pod(pod("b", "dup", "10.244.2.11", "node-2", &[("app", "dup")]));
    let c = Compiler::new().compile(&s).unwrap();

    let web_id = c.pod_identities[&PodKey::new("a", "web")];
    assert_eq!(
        web_id,
        c.pod_identities[&PodKey::new("a", "web-2")],
        "replicas share an identity"
    );
    let has = |pred: &dyn Fn(&PolicyWarning) -> bool| c.warnings.iter().any(pred);
    assert!(has(
        &|w| matches!(w, PolicyWarning::NamedPortAmbiguous { identity, ports, .. }
        if *identity == web_id && ports == &vec![8080, 9090])
    ));
    assert!(has(
        &|w| matches!(w, PolicyWarning::SelectorReadsNonSecurityLabel { key, .. }
        if key == "pod-template-hash")
    ));
    assert!(has(
        &|w| matches!(w, PolicyWarning::InvalidPolicyIsolates { policy } if policy.name == "bad")
    ));
    assert!(has(
        &|w| matches!(w, PolicyWarning::Ipv6BlockIgnored { cidr, .. } if cidr == "fd00::/8")
    ));
    assert!(has(
        &|w| matches!(w, PolicyWarning::DuplicatePodIp { pods, .. } if pods.len() == 2)
    ));
    assert_eq!(c.problems.len(), 1);
    assert_eq!(
        c.problems[0].to_string(),
        "NetworkPolicy b/bad: spec.ingress[0].ports[0].port: invalid value 70000: must be between 1 and 65535, inclusive"
    );
    for w in &c.warnings {
        assert!(!w.to_string().is_empty());
    }
    // The union: both numbers are open to both replicas, as the warning says.
    let m = c.endpoints[&PodKey::new("b", "client")]
        .egress
        .clone()
        .unwrap();
    for port in [8080, 9090] {
        assert!(m.contains(&PolicyKey::ports(
            web_id,
            L4Proto::Tcp,
            PortPrefix::single(port)
        )));
    }
    // The invalid policy isolates client's ingress and allows nothing (beyond its node).
    let ing = c.endpoints[&PodKey::new("b", "client")]
        .ingress
        .clone()
        .unwrap();
    assert_eq!(
        ing.iter().collect::<Vec<_>>(),
        vec![&PolicyKey::all(Identity::HOST)]
    );
}

/// 1,000 policies selecting one pod: compiled once each, the map grows with the rules, and
/// a lookup stays a fixed number of probes.
#[test]
fn a_thousand_policies_on_one_pod() {
    let mut s = cluster();
    for i in 0..1000u16 {
        add(
            &mut s,
            "a",
            &format!("p{i:04}"),
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}},
                                  {"podSelector": {"matchLabels": {"app": "db"}}}],
                         "ports": [{"port": 10000 + i}, {"port": 20000 + i, "endPort": 20000 + i + 3, "protocol": "UDP"}]}]}),
        );
    }
    let mut compiler = Compiler::new();
    let t = Instant::now();
    let c = compiler.compile(&s).unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    let again = compiler.compile(&s).unwrap();
    let second = t.elapsed();
    let web = PodKey::new("a", "web");
    let m = c.endpoints[&web].ingress.clone().unwrap();
    println!(
        "1000 policies on one pod: compile {first:?} (again {second:?}); web's ingress map has {} entries",
        m.len()
    );
    assert_eq!(c.endpoints[&web].policies.len(), 1000);
    assert_eq!(again.endpoints[&web].revision, 1);
    // Per policy: 2 peers x (1 TCP port + the UDP range 20000+i..=+3, 1 to 3 prefixes).
    assert!(m.len() > 4000, "{}", m.len());
    let client = PodKey::new("b", "client");
    assert!(evaluate(&c, &client, &web, 10999, L4Proto::Tcp)
        .unwrap()
        .allowed());
    assert!(evaluate(&c, &client, &web, 20999 + 3, L4Proto::Udp)
        .unwrap()
        .allowed());
    assert!(!evaluate(&c, &client, &web, 11000, L4Proto::Tcp)
        .unwrap()
        .allowed());
    // Generous: a debug build on a loaded 2-core machine. The figure above is the measure.
    assert!(first.as_secs() < 20, "compile took {first:?}");
}
