//! One test per rule of the translation, then properties over generated clusters.

use super::*;
use serde_json::{json, Value};

const NODE: &str = "node-a";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 11);

fn cfg() -> TranslateConfig {
    TranslateConfig {
        node_name: NODE.into(),
        node_ip: NODE_IP,
        allowed_external_ips: vec!["203.0.113.240/28".parse().unwrap()],
        proxy_name: None,
    }
}

fn svc(name: &str, spec: Value) -> Service {
    svc_full(name, json!({}), spec, json!({}))
}

fn svc_full(name: &str, labels: Value, spec: Value, status: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels,
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// An endpoint: `(ip, node, ready, serving, terminating)`.
fn ep(ip: &str, node: Option<&str>, ready: bool, serving: bool, terminating: bool) -> Value {
    let mut e = json!({"addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
    if let Some(n) = node {
        e["nodeName"] = json!(n);
    }
    e
}

fn ready(ip: &str, node: &str) -> Value {
    ep(ip, Some(node), true, true, false)
}

fn http_port() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

fn basic(ip: &str) -> Value {
    json!({"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]})
}

fn fe(ip: &str, port: u16, proto: L4Proto) -> Frontend {
    Frontend {
        ip: ip.parse().unwrap(),
        port,
        proto,
    }
}

fn ips(e: &ServiceEntry) -> Vec<String> {
    e.backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect()
}

fn get(t: &Translation, f: Frontend, scope: Scope) -> &ServiceEntry {
    t.table
        .get(&f, scope)
        .unwrap_or_else(|| panic!("no {f} {scope:?} in {:#?}", t.table))
}

#[test]
fn cluster_ip_gets_every_ready_endpoint_in_order() {
    let t = translate(
        &[svc("web", basic("10.96.0.10"))],
        &[slice(
            "web-1",
            "web",
            http_port(),
            json!([ready("10.244.1.5", "node-b"), ready("10.244.0.7", NODE)]),
        )],
        &cfg(),
    );
    assert_eq!(t.table.entries.len(), 1);
    let e = get(&t, fe("10.96.0.10", 80, L4Proto::Tcp), Scope::External);
    assert_eq!(e.kind, FrontendKind::ClusterIp);
    assert_eq!(e.port_name, "http");
    assert_eq!(ips(e), ["10.244.0.7:8080", "10.244.1.5:8080"]);
    assert!(e.backends[0].local && !e.backends[1].local);
    assert!(!e.preserve_client_ip);
    assert_eq!(e.affinity_timeout_secs, None);
    assert_eq!(t.services.len(), 1);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn every_ipv4_cluster_ip_is_a_frontend_and_ipv6_ones_are_left_to_an_ipv6_proxy() {
    let mut spec = basic("10.96.0.10");
    spec["clusterIPs"] = json!(["10.96.0.10", "fd00::10"]);
    spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
    let t = translate(&[svc("web", spec)], &[], &cfg());
    assert_eq!(t.table.entries.len(), 1);
    assert!(t.problems.is_empty());

    let mut v6 = basic("fd00::10");
    v6["clusterIPs"] = json!(["fd00::10"]);
    let t = translate(&[svc("six", v6)], &[], &cfg());
    assert!(t.table.entries.is_empty());
    assert_eq!(t.skipped[0].reason, SkipReason::NoIpv4ClusterIp);
}

#[test]
fn headless_external_name_and_labelled_services_are_not_programmed() {
    let headless = svc(
        "h",
        json!({"clusterIP": "None", "ports": [{"port": 80, "protocol": "TCP"}]}),
    );
    let ext = svc(
        "x",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    );
    let labelled = svc_full(
        "l",
        json!({HEADLESS_LABEL: ""}),
        basic("10.96.0.11"),
        json!({}),
    );
    let other = svc_full(
        "o",
        json!({SERVICE_PROXY_NAME_LABEL: "someone-else"}),
        basic("10.96.0.12"),
        json!({}),
    );
    let ours = svc_full(
        "f",
        json!({SERVICE_PROXY_NAME_LABEL: "fibril"}),
        basic("10.96.0.13"),
        json!({}),
    );
    let plain = svc("p", basic("10.96.0.14"));
    let all = [headless, ext, labelled, other, ours, plain];

    let t = translate(&all, &[], &cfg());
    let reasons: Vec<(&str, &SkipReason)> = t
        .skipped
        .iter()
        .map(|s| (s.service.name.as_str(), &s.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "f",
                &SkipReason::OtherProxy {
                    proxy: "fibril".into()
                }
            ),
            ("h", &SkipReason::Headless),
            ("l", &SkipReason::HeadlessLabel),
            (
                "o",
                &SkipReason::OtherProxy {
                    proxy: "someone-else".into()
                }
            ),
            ("x", &SkipReason::ExternalName),
        ]
    );
    assert_eq!(t.table.entries.len(), 1);
    assert_eq!(t.table.entries[0].service.name, "p");

    // A named proxy serves only the Services labelled with its name.
    let named = TranslateConfig {
        proxy_name: Some("fibril".into()),
        ..cfg()
    };
    let t = translate(&all, &[], &named);
    let programmed: Vec<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(programmed, ["f"]);
}

#[test]
fn multiport_named_target_ports_resolve_per_endpoint_by_port_name() {
    // Row 2: 80 → targetPort svc1, 81 → svc2; pod1 names 100 svc1, pod2 names 101 svc2.
    let s = svc(
        "multi",
        json!({"clusterIP": "10.96.0.20", "ports": [
            {"name": "portname1", "port": 80, "protocol": "TCP", "targetPort": "svc1"},
            {"name": "portname2", "port": 81, "protocol": "TCP", "targetPort": "svc2"}]}),
    );
    // The controller puts pods with different resolved port sets in different slices.
    let slices = [
        slice(
            "multi-a",
            "multi",
            json!([{"name": "portname1", "port": 100, "protocol": "TCP"}]),
            json!([ready("10.244.0.1", NODE)]),
        ),
        slice(
            "multi-b",
            "multi",
            json!([{"name": "portname2", "port": 101, "protocol": "TCP"}]),
            json!([ready("10.244.1.2", "node-b")]),
        ),
    ];
    let t = translate(&[s], &slices, &cfg());
    assert_eq!(
        ips(get(&t, fe("10.96.0.20", 80, L4Proto::Tcp), Scope::External)),
        ["10.244.0.1:100"]
    );
    assert_eq!(
        ips(get(&t, fe("10.96.0.20", 81, L4Proto::Tcp), Scope::External)),
        ["10.244.1.2:101"]
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn same_port_number_with_two_protocols_is_two_frontends() {
    // Row 3.
    let s = svc(
        "dns",
        json!({"clusterIP": "10.96.0.30", "ports": [
            {"name": "tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "udp", "port": 53, "protocol": "UDP", "targetPort": 5354}]}),
    );
    let slices = [slice(
        "dns-1",
        "dns",
        json!([{"name": "tcp", "port": 5353, "protocol": "TCP"},
               {"name": "udp", "port": 5354, "protocol": "UDP"}]),
        json!([ready("10.244.0.1", NODE)]),
    )];
    let t = translate(&[s], &slices, &cfg());
    assert_eq!(t.table.entries.len(), 2);
    assert_eq!(
        ips(get(&t, fe("10.96.0.30", 53, L4Proto::Tcp), Scope::External)),
        ["10.244.0.1:5353"]
    );
    assert_eq!(
        ips(get(&t, fe("10.96.0.30", 53, L4Proto::Udp), Scope::External)),
        ["10.244.0.1:5354"]
    );
}

#[test]
fn slice_ports_match_by_name_and_protocol() {
    let s = svc("web", basic("10.96.0.10"));
    // A port of the right name but the other protocol is not this port's.
    let slices = [slice(
        "web-1",
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
        json!([ready("10.244.0.1", NODE)]),
    )];
    let t = translate(&[s], &slices, &cfg());
    let e = get(&t, fe("10.96.0.10", 80, L4Proto::Tcp), Scope::External);
    assert!(e.backends.is_empty());
    assert_eq!(t.problems.len(), 1);
    assert_eq!(t.problems[0].field, "spec.ports[0].targetPort");
}

#[test]
fn a_target_port_name_no_endpoint_defines_is_reported() {
    let s = svc(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]}),
    );
    // The controller's slice for pods lacking the name: endpoints, no ports.
    let slices = [slice(
        "web-1",
        "web",
        json!([]),
        json!([ready("10.244.0.1", NODE), ready("10.244.0.2", NODE)]),
    )];
    let t = translate(&[s], &slices, &cfg());
    assert!(t.table.entries[0].backends.is_empty());
    let p = &t.problems[0];
    assert_eq!(
        p.kind,
        ProblemKind::NoEndpointPort {
            target_port: "\"web\"".into(),
            endpoints: 2
        }
    );
    let text = p.to_string();
    assert!(text.contains("default/web") && text.contains("spec.ports[0].targetPort"));
    assert!(text.contains("\"web\""), "{text}");
}

#[test]
fn several_slices_merge_and_duplicates_count_once() {
    // Row 24: endpoints of one Service spread over slices, some in two of them.
    let s = svc("web", basic("10.96.0.10"));
    let a = slice(
        "web-a",
        "web",
        http_port(),
        json!([ready("10.244.0.1", NODE), ready("10.244.1.1", "node-b")]),
    );
    let b = slice(
        "web-b",
        "web",
        http_port(),
        json!([ready("10.244.1.1", "node-b"), ready("10.244.2.1", "node-c")]),
    );
    let mut other_ns = slice(
        "web-x",
        "web",
        http_port(),
        json!([ready("10.9.9.9", NODE)]),
    );
    other_ns.metadata.namespace = Some("elsewhere".into());
    let mut v6 = slice("web-6", "web", http_port(), json!([ready("fd00::1", NODE)]));
    v6.address_type = "IPv6".into();
    let t = translate(&[s], &[b, other_ns, v6, a], &cfg());
    assert_eq!(
        ips(&t.table.entries[0]),
        ["10.244.0.1:8080", "10.244.1.1:8080", "10.244.2.1:8080"]
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn selectorless_service_with_ports_in_separate_slices() {
    // Row 24 (a): two slices, each with a different port name, for the same pod.
    let s = svc(
        "sl",
        json!({"clusterIP": "10.96.0.40", "ports": [
            {"name": "port80", "port": 80, "protocol": "TCP", "targetPort": 8090},
            {"name": "port81", "port": 81, "protocol": "TCP", "targetPort": 9090}]}),
    );
    let slices = [
        slice(
            "s1",
            "sl",
            json!([{"name": "port80", "port": 8090, "protocol": "TCP"}]),
            json!([{"addresses": ["10.244.0.9"]}]),
        ),
        slice(
            "s2",
            "sl",
            json!([{"name": "port81", "port": 9090, "protocol": "TCP"}]),
            json!([{"addresses": ["10.244.0.9"]}]),
        ),
    ];
    let t = translate(&[s], &slices, &cfg());
    // Conditions left unset mean ready.
    assert_eq!(
        ips(get(&t, fe("10.96.0.40", 80, L4Proto::Tcp), Scope::External)),
        ["10.244.0.9:8090"]
    );
    assert_eq!(
        ips(get(&t, fe("10.96.0.40", 81, L4Proto::Tcp), Scope::External)),
        ["10.244.0.9:9090"]
    );
}

#[test]
fn ready_endpoints_win_and_terminating_ones_are_the_fallback() {
    let s = svc("web", basic("10.96.0.10"));
    let one = |eps: Value| {
        let t = translate(
            std::slice::from_ref(&s),
            &[slice("w", "web", http_port(), eps)],
            &cfg(),
        );
        t.table.entries[0].backends.clone()
    };
    // A ready endpoint: serving-terminating and unready ones are not used.
    let b = one(json!([
        ready("10.244.0.1", NODE),
        ep("10.244.0.2", Some(NODE), false, true, true),
        ep("10.244.0.3", Some(NODE), false, false, false),
    ]));
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].ip.to_string(), b[0].terminating),
        ("10.244.0.1".into(), false)
    );
    // No ready endpoint: the serving-and-terminating ones (KEP-1669), flagged.
    let b = one(json!([
        ep("10.244.0.2", Some(NODE), false, true, true),
        ep("10.244.0.4", Some("node-b"), false, false, true),
        ep("10.244.0.3", Some(NODE), false, false, false),
    ]));
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].ip.to_string(), b[0].terminating),
        ("10.244.0.2".into(), true)
    );
    // Not serving at all: nothing, and the frontend rejects.
    let b = one(json!([ep("10.244.0.3", Some(NODE), false, false, true)]));
    assert!(b.is_empty());
    // publishNotReadyAddresses: ready even though not serving; used as ready.
    let b = one(json!([ep("10.244.0.5", Some(NODE), true, false, true)]));
    assert_eq!((b.len(), b[0].terminating), (1, false));
}

#[test]
fn no_endpoints_is_an_entry_with_no_backend_so_the_datapath_rejects() {
    // Row 11.
    let t = translate(&[svc("empty", basic("10.96.0.50"))], &[], &cfg());
    assert_eq!(t.table.entries.len(), 1);
    assert!(t.table.entries[0].backends.is_empty());
    assert!(
        t.problems.is_empty(),
        "no endpoints is not a problem of the Service"
    );
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_with_its_own_fallback() {
    // Row 18, and row 19's ITP=Local case.
    let mut spec = basic("10.96.0.10");
    spec["internalTrafficPolicy"] = json!("Local");
    let s = svc("web", spec);
    let t = translate(
        std::slice::from_ref(&s),
        &[slice(
            "w",
            "web",
            http_port(),
            json!([ready("10.244.1.1", "node-b"), ready("10.244.0.1", NODE)]),
        )],
        &cfg(),
    );
    assert_eq!(ips(&t.table.entries[0]), ["10.244.0.1:8080"]);
    // Only a remote endpoint: this node has none (the client must fail).
    let t = translate(
        std::slice::from_ref(&s),
        &[slice(
            "w",
            "web",
            http_port(),
            json!([ready("10.244.1.1", "node-b")]),
        )],
        &cfg(),
    );
    assert!(t.table.entries[0].backends.is_empty());
    // A local terminating endpoint and a remote ready one: the local scope has no ready
    // endpoint, so it falls back to its terminating one.
    let t = translate(
        &[s],
        &[slice(
            "w",
            "web",
            http_port(),
            json!([
                ready("10.244.1.1", "node-b"),
                ep("10.244.0.1", Some(NODE), false, true, true)
            ]),
        )],
        &cfg(),
    );
    let b = &t.table.entries[0].backends;
    assert_eq!((b.len(), b[0].terminating), (1, true));
    assert_eq!(b[0].ip.to_string(), "10.244.0.1");
}

fn node_port_spec(etp: &str) -> Value {
    json!({"type": "NodePort", "clusterIP": "10.96.0.60", "externalTrafficPolicy": etp,
           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                      "nodePort": 30080}]})
}

#[test]
fn node_port_is_served_at_this_nodes_internal_ip() {
    // Row 4.
    let t = translate(
        &[svc("np", node_port_spec("Cluster"))],
        &[slice(
            "np",
            "np",
            http_port(),
            json!([ready("10.244.1.1", "node-b"), ready("10.244.0.1", NODE)]),
        )],
        &cfg(),
    );
    assert_eq!(t.table.entries.len(), 2);
    let e = get(&t, fe("172.18.0.11", 30080, L4Proto::Tcp), Scope::External);
    assert_eq!(e.kind, FrontendKind::NodePort);
    assert_eq!(ips(e), ["10.244.0.1:8080", "10.244.1.1:8080"]);
    assert!(!e.preserve_client_ip);
    assert!(t
        .table
        .get(&fe("172.18.0.11", 30080, L4Proto::Tcp), Scope::Internal)
        .is_none());
}

#[test]
fn a_node_port_service_without_a_node_port_is_a_problem() {
    let mut spec = node_port_spec("Cluster");
    spec["ports"][0].as_object_mut().unwrap().remove("nodePort");
    let t = translate(&[svc("np", spec)], &[], &cfg());
    assert_eq!(t.table.entries.len(), 1, "the ClusterIP is still served");
    assert_eq!(t.problems[0].field, "spec.ports[0].nodePort");
}

#[test]
fn external_traffic_policy_local_splits_external_and_internal_scopes() {
    // Row 20 (and row 19's ETP=Local case).
    let s = svc("np", node_port_spec("Local"));
    let both = json!([ready("10.244.1.1", "node-b"), ready("10.244.0.1", NODE)]);
    let t = translate(
        std::slice::from_ref(&s),
        &[slice("np", "np", http_port(), both)],
        &cfg(),
    );
    let f = fe("172.18.0.11", 30080, L4Proto::Tcp);
    let ext = get(&t, f, Scope::External);
    assert_eq!(ips(ext), ["10.244.0.1:8080"]);
    assert!(ext.preserve_client_ip);
    let int = get(&t, f, Scope::Internal);
    assert_eq!(ips(int), ["10.244.0.1:8080", "10.244.1.1:8080"]);
    assert!(!int.preserve_client_ip);
    // The ClusterIP is internal traffic: every endpoint.
    assert_eq!(
        get(&t, fe("10.96.0.60", 80, L4Proto::Tcp), Scope::External)
            .backends
            .len(),
        2
    );

    // Only local endpoints: both scopes agree, so one entry serves both.
    let t = translate(
        std::slice::from_ref(&s),
        &[slice(
            "np",
            "np",
            http_port(),
            json!([ready("10.244.0.1", NODE)]),
        )],
        &cfg(),
    );
    assert!(t.table.get(&f, Scope::Internal).is_none());
    assert!(get(&t, f, Scope::External).preserve_client_ip);

    // No local endpoint: external clients are rejected here, this node's pods are not.
    let t = translate(
        std::slice::from_ref(&s),
        &[slice(
            "np",
            "np",
            http_port(),
            json!([ready("10.244.1.1", "node-b")]),
        )],
        &cfg(),
    );
    assert!(get(&t, f, Scope::External).backends.is_empty());
    assert_eq!(ips(get(&t, f, Scope::Internal)), ["10.244.1.1:8080"]);

    // Only a remote terminating endpoint (row 19, ETP=Local): the same split, with the
    // internal scope falling back to it.
    let t = translate(
        &[s],
        &[slice(
            "np",
            "np",
            http_port(),
            json!([ep("10.244.1.1", Some("node-b"), false, true, true)]),
        )],
        &cfg(),
    );
    assert!(get(&t, f, Scope::External).backends.is_empty());
    assert!(get(&t, f, Scope::Internal).backends[0].terminating);
}

#[test]
fn external_scope_ignores_internal_traffic_policy() {
    // ITP=Local and ETP=Cluster: the ClusterIP is local-only, the NodePort is not.
    let mut spec = node_port_spec("Cluster");
    spec["internalTrafficPolicy"] = json!("Local");
    let t = translate(
        &[svc("np", spec)],
        &[slice(
            "np",
            "np",
            http_port(),
            json!([ready("10.244.1.1", "node-b")]),
        )],
        &cfg(),
    );
    assert!(get(&t, fe("10.96.0.60", 80, L4Proto::Tcp), Scope::External)
        .backends
        .is_empty());
    assert_eq!(
        get(&t, fe("172.18.0.11", 30080, L4Proto::Tcp), Scope::External)
            .backends
            .len(),
        1
    );
}

#[test]
fn load_balancer_ingress_ips_are_frontends() {
    let spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.70",
        "externalTrafficPolicy": "Cluster",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                   "nodePort": 30070}]});
    let status = json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.5"},
        {"ip": "198.51.100.6", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"}]}});
    let t = translate(
        &[svc_full("lb", json!({}), spec, status)],
        &[slice(
            "lb",
            "lb",
            http_port(),
            json!([ready("10.244.0.1", NODE)]),
        )],
        &cfg(),
    );
    let kinds: Vec<(FrontendKind, String)> = t
        .table
        .entries
        .iter()
        .map(|e| (e.kind, e.frontend.to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            (FrontendKind::ClusterIp, "10.96.0.70:80/TCP".to_string()),
            (FrontendKind::NodePort, "172.18.0.11:30070/TCP".into()),
            (FrontendKind::LoadBalancer, "198.51.100.5:80/TCP".into()),
        ]
    );
}

#[test]
fn load_balancer_source_ranges_are_reported_as_not_enforced() {
    let spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.70",
        "loadBalancerSourceRanges": ["192.0.2.0/24"],
        "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30070}]});
    let t = translate(&[svc("lb", spec)], &[], &cfg());
    assert!(matches!(
        t.problems[0].kind,
        ProblemKind::Unsupported { .. }
    ));
    assert_eq!(t.problems[0].field, "spec.loadBalancerSourceRanges");
}

#[test]
fn external_ips_only_from_the_allowed_ranges() {
    // Row 22 and the CVE-2020-8554 guard.
    let mut spec = basic("10.96.0.80");
    spec["externalIPs"] = json!(["203.0.113.250", "8.8.8.8", "not-an-ip"]);
    let s = svc("ext", spec);
    let t = translate(
        std::slice::from_ref(&s),
        &[slice(
            "e",
            "ext",
            http_port(),
            json!([ready("10.244.0.1", NODE)]),
        )],
        &cfg(),
    );
    let e = get(&t, fe("203.0.113.250", 80, L4Proto::Tcp), Scope::External);
    assert_eq!((e.kind, e.backends.len()), (FrontendKind::ExternalIp, 1));
    assert!(t
        .table
        .entries
        .iter()
        .all(|e| e.frontend.ip.to_string() != "8.8.8.8"));
    let refused: Vec<(&str, &str)> = t
        .problems
        .iter()
        .filter_map(|p| match &p.kind {
            ProblemKind::ExternalIpRefused { ip, .. } => Some((p.field.as_str(), ip.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("spec.externalIPs[1]", "8.8.8.8"),
            ("spec.externalIPs[2]", "not-an-ip")
        ]
    );
    let text = t.problems[0].to_string();
    assert!(
        text.contains("default/ext")
            && text.contains("8.8.8.8")
            && text.contains("203.0.113.240/28")
            && text.contains("CVE-2020-8554"),
        "{text}"
    );
    assert!(t.problems[0].is_refused_external_ip());

    // No allowed range: every externalIP is refused.
    let none = TranslateConfig {
        allowed_external_ips: Vec::new(),
        ..cfg()
    };
    let t = translate(&[s], &[], &none);
    assert_eq!(t.table.entries.len(), 1, "only the ClusterIP");
    assert_eq!(
        t.problems
            .iter()
            .filter(|p| p.is_refused_external_ip())
            .count(),
        3
    );
    assert!(t.problems[0].to_string().contains("none are configured"));
}

#[test]
fn external_ips_follow_external_traffic_policy() {
    let mut spec = basic("10.96.0.80");
    spec["externalIPs"] = json!(["203.0.113.250"]);
    spec["externalTrafficPolicy"] = json!("Local");
    let t = translate(
        &[svc("ext", spec)],
        &[slice(
            "e",
            "ext",
            http_port(),
            json!([ready("10.244.0.1", NODE), ready("10.244.1.1", "node-b")]),
        )],
        &cfg(),
    );
    let f = fe("203.0.113.250", 80, L4Proto::Tcp);
    assert_eq!(get(&t, f, Scope::External).backends.len(), 1);
    assert_eq!(get(&t, f, Scope::Internal).backends.len(), 2);
}

#[test]
fn health_check_node_port_counts_this_nodes_ready_endpoints_only() {
    // Row 21: 200 with a local ready endpoint, 503 when only terminating ones remain.
    let mut spec = node_port_spec("Local");
    spec["type"] = json!("LoadBalancer");
    spec["healthCheckNodePort"] = json!(31500);
    let s = svc("lb", spec.clone());
    let slices = |eps: Value| [slice("lb-1", "lb", http_port(), eps)];

    let t = translate(
        std::slice::from_ref(&s),
        &slices(json!([
            ready("10.244.0.7", NODE),
            ready("10.244.0.8", NODE),
            ready("10.244.1.5", "node-b"),
        ])),
        &cfg(),
    );
    assert_eq!(
        t.health_checks,
        [HealthCheck {
            port: 31500,
            service: ServiceName {
                namespace: "default".into(),
                name: "lb".into()
            },
            local_endpoints: 2,
        }]
    );
    assert!(t.health_checks[0].healthy());

    // Only a terminating local endpoint: unhealthy, yet it still serves external traffic.
    let t = translate(
        std::slice::from_ref(&s),
        &slices(json!([
            ep("10.244.0.7", Some(NODE), false, true, true),
            ready("10.244.1.5", "node-b"),
        ])),
        &cfg(),
    );
    assert_eq!(t.health_checks[0].local_endpoints, 0);
    assert!(!t.health_checks[0].healthy());
    let e = get(
        &t,
        fe(&NODE_IP.to_string(), 30080, L4Proto::Tcp),
        Scope::External,
    );
    assert_eq!(ips(e), ["10.244.0.7:8080"]);
    assert!(e.backends[0].terminating);

    // Cluster policy, or not a LoadBalancer: no health check.
    let mut cluster = spec.clone();
    cluster["externalTrafficPolicy"] = json!("Cluster");
    let mut np = spec;
    np["type"] = json!("NodePort");
    let t = translate(&[svc("c", cluster), svc("n", np)], &[], &cfg());
    assert!(t.health_checks.is_empty(), "{:?}", t.health_checks);
}

#[test]
fn session_affinity_client_ip_with_its_timeout() {
    // Rows 7 and 8.
    let mut spec = basic("10.96.0.90");
    spec["sessionAffinity"] = json!("ClientIP");
    let t = translate(&[svc("a", spec.clone())], &[], &cfg());
    assert_eq!(t.table.entries[0].affinity_timeout_secs, Some(10_800));
    spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 15}});
    let t = translate(&[svc("a", spec.clone())], &[], &cfg());
    assert_eq!(t.table.entries[0].affinity_timeout_secs, Some(15));
    spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 0}});
    let t = translate(&[svc("a", spec.clone())], &[], &cfg());
    assert_eq!(t.table.entries[0].affinity_timeout_secs, Some(10_800));
    assert_eq!(
        t.problems[0].field,
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    );
    spec["sessionAffinity"] = json!("None");
    let t = translate(&[svc("a", spec)], &[], &cfg());
    assert_eq!(t.table.entries[0].affinity_timeout_secs, None);
}

#[test]
fn two_services_claiming_one_frontend_the_older_keeps_it() {
    let with_ext = |name: &str, cip: &str, created: &str| {
        let mut spec = basic(cip);
        spec["externalIPs"] = json!(["203.0.113.241"]);
        let mut s = svc(name, spec);
        s.metadata.creation_timestamp = Some(serde_json::from_value(json!(created)).unwrap());
        s
    };
    let old = with_ext("zz-old", "10.96.0.1", "2023-01-01T00:00:00Z");
    let new = with_ext("aa-new", "10.96.0.2", "2024-01-01T00:00:00Z");
    let t = translate(&[new, old], &[], &cfg());
    let f = fe("203.0.113.241", 80, L4Proto::Tcp);
    assert_eq!(get(&t, f, Scope::External).service.name, "zz-old");
    assert_eq!(t.problems.len(), 1);
    let p = &t.problems[0];
    assert_eq!(p.service.name, "aa-new");
    assert_eq!(p.field, "spec.externalIPs[0]");
    assert!(p.to_string().contains("default/zz-old"), "{p}");

    // An externalIP never shadows another Service's load balancer address.
    let lb = svc_full(
        "lb",
        json!({}),
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.3",
               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30001}]}),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.241"}]}}),
    );
    let t = translate(
        &[with_ext("aa-new", "10.96.0.2", "2020-01-01T00:00:00Z"), lb],
        &[],
        &cfg(),
    );
    assert_eq!(get(&t, f, Scope::External).kind, FrontendKind::LoadBalancer);
}

#[test]
fn bad_slice_content_is_reported_naming_the_slice() {
    let s = svc("web", basic("10.96.0.10"));
    let slices = [slice(
        "web-1",
        "web",
        json!([{"name": "http", "port": 0, "protocol": "TCP"}]),
        json!([{"addresses": ["10.0.0.300"]}]),
    )];
    let t = translate(&[s], &slices, &cfg());
    let fields: Vec<&str> = t.problems.iter().map(|p| p.field.as_str()).collect();
    assert!(
        fields.contains(&"endpointslice/web-1 ports[0].port"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"endpointslice/web-1 endpoints[0].addresses[0]"),
        "{fields:?}"
    );
}

#[test]
fn node_internal_ip_is_read_from_status() {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
        "status": {"addresses": [{"type": "Hostname", "address": "n"},
                                 {"type": "InternalIP", "address": "172.18.0.12"}]}}))
    .unwrap();
    assert_eq!(node_internal_ip(&n), Some(Ipv4Addr::new(172, 18, 0, 12)));
}

mod props;
