//! Properties of the translation over generated Services and EndpointSlices.

use super::*;
use proptest::prelude::*;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// (port name, port, protocol) a generated Service may expose.
const PORTS: [(&str, u16, &str); 3] =
    [("http", 80, "TCP"), ("dns", 53, "UDP"), ("dnst", 53, "TCP")];
const EXTERNAL_POOL: [&str; 3] = ["203.0.113.241", "203.0.113.250", "8.8.8.8"];
const LB_POOL: [&str; 2] = ["198.51.100.1", "203.0.113.241"];

#[derive(Clone, Debug)]
struct GenEp {
    host: u8,
    node: Option<usize>,
    /// `None`: conditions left unset.
    conds: Option<(bool, bool, bool)>,
}

#[derive(Clone, Debug)]
struct GenSlice {
    /// Indices into PORTS, with the target port offset.
    ports: Vec<(usize, u16)>,
    eps: Vec<GenEp>,
}

#[derive(Clone, Debug)]
struct GenSvc {
    ty: usize,
    itp_local: bool,
    etp_local: bool,
    ports: Vec<usize>,
    external: Vec<usize>,
    lb: Vec<usize>,
    affinity: Option<i32>,
    slices: Vec<GenSlice>,
    created: u8,
}

fn gen_ep() -> impl Strategy<Value = GenEp> {
    (
        1u8..12,
        prop::option::of(0usize..3),
        prop::option::of((any::<bool>(), any::<bool>(), any::<bool>())),
    )
        .prop_map(|(host, node, conds)| GenEp { host, node, conds })
}

fn gen_slice() -> impl Strategy<Value = GenSlice> {
    (
        prop::collection::vec((0usize..3, 0u16..2), 0..3),
        prop::collection::vec(gen_ep(), 0..5),
    )
        .prop_map(|(ports, eps)| GenSlice { ports, eps })
}

fn gen_svc() -> impl Strategy<Value = GenSvc> {
    (
        (0usize..3, any::<bool>(), any::<bool>()),
        prop::collection::btree_set(0usize..3, 0..=3),
        prop::collection::vec(0usize..3, 0..3),
        prop::collection::vec(0usize..2, 0..2),
        prop::option::of(1i32..100),
        prop::collection::vec(gen_slice(), 0..4),
        0u8..3,
    )
        .prop_map(
            |((ty, itp_local, etp_local), ports, external, lb, affinity, slices, created)| GenSvc {
                ty,
                itp_local,
                etp_local,
                ports: ports.into_iter().collect(),
                external,
                lb,
                affinity,
                slices,
                created,
            },
        )
}

fn build(gens: &[GenSvc]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let name = format!("svc{i}");
        let ty = ["ClusterIP", "NodePort", "LoadBalancer"][g.ty];
        let ports: Vec<Value> = g
            .ports
            .iter()
            .map(|&p| {
                let (n, port, proto) = PORTS[p];
                json!({"name": n, "port": port, "protocol": proto, "targetPort": n,
                       "nodePort": 30000 + i * 10 + p})
            })
            .collect();
        let mut spec = json!({
            "type": ty,
            "clusterIP": format!("10.96.0.{}", i + 1),
            "internalTrafficPolicy": if g.itp_local { "Local" } else { "Cluster" },
            "externalIPs": g.external.iter().map(|&e| EXTERNAL_POOL[e]).collect::<Vec<_>>(),
            "ports": ports,
        });
        if ty != "ClusterIP" || !g.external.is_empty() {
            spec["externalTrafficPolicy"] = json!(if g.etp_local { "Local" } else { "Cluster" });
        }
        if let Some(t) = g.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        let ingress: Vec<Value> = g.lb.iter().map(|&l| json!({"ip": LB_POOL[l]})).collect();
        let mut s = svc_full(
            &name,
            json!({}),
            spec,
            json!({"loadBalancer": {"ingress": ingress}}),
        );
        s.metadata.creation_timestamp = Some(
            serde_json::from_value(json!(format!("202{}-01-01T00:00:00Z", g.created))).unwrap(),
        );
        services.push(s);
        for (j, sl) in g.slices.iter().enumerate() {
            let ports: Vec<Value> = sl
                .ports
                .iter()
                .map(|&(p, off)| {
                    let (n, port, proto) = PORTS[p];
                    json!({"name": n, "port": 8000 + port + off, "protocol": proto})
                })
                .collect();
            let eps: Vec<Value> = sl
                .eps
                .iter()
                .map(|e| {
                    let mut v = json!({"addresses": [format!("10.244.0.{}", e.host)]});
                    if let Some(n) = e.node {
                        v["nodeName"] = json!(NODES[n]);
                    }
                    if let Some((r, s, t)) = e.conds {
                        v["conditions"] = json!({"ready": r, "serving": s, "terminating": t});
                    }
                    v
                })
                .collect();
            slices.push(slice(
                &format!("{name}-{j}"),
                &name,
                json!(ports),
                json!(eps),
            ));
        }
    }
    (services, slices)
}

/// Every (ready, serving, terminating, local) the slices give `ip:port` for this Service
/// port.
fn conditions_of(
    slices: &[EndpointSlice],
    e: &ServiceEntry,
    b: &Backend,
) -> Vec<(bool, bool, bool, bool)> {
    let mut out = Vec::new();
    for s in slices {
        let label = s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL].as_str();
        if label != e.service.name {
            continue;
        }
        let has_port = s.ports.iter().flatten().any(|p| {
            p.name.as_deref() == Some(e.port_name.as_str())
                && p.protocol.as_deref() == Some(&e.frontend.proto.to_string())
                && p.port == Some(i32::from(b.port))
        });
        if !has_port {
            continue;
        }
        for ep in s.endpoints.iter().flatten() {
            if ep.addresses[0] != b.ip.to_string() {
                continue;
            }
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            out.push((
                ready,
                c.serving.unwrap_or(ready),
                c.terminating.unwrap_or(false),
                ep.node_name.as_deref() == Some(NODE),
            ));
        }
    }
    out
}

fn shuffled<T: Clone>(v: &[T], mut seed: u64) -> Vec<T> {
    let mut v = v.to_vec();
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn backends_are_usable_endpoints_of_their_scope(gens in prop::collection::vec(gen_svc(), 1..5)) {
        let (services, slices) = build(&gens);
        let t = translate(&services, &slices, &cfg());
        for e in &t.table.entries {
            let g = &gens[e.service.name[3..].parse::<usize>().unwrap()];
            let all_terminating = e.backends.iter().all(|b| b.terminating);
            let none_terminating = e.backends.iter().all(|b| !b.terminating);
            // A fallback list is all terminating endpoints; a ready list has none.
            prop_assert!(all_terminating || none_terminating, "{e:?}");
            for b in &e.backends {
                let conds = conditions_of(&slices, e, b);
                prop_assert!(!conds.is_empty(), "{b:?} of {e:?} is in no slice");
                prop_assert!(conds.iter().any(|c| c.3 == b.local));
                if b.terminating {
                    // Never an endpoint that is not serving; only when none is ready.
                    prop_assert!(conds.iter().any(|&(r, s, t, _)| !r && s && t), "{b:?}");
                } else {
                    prop_assert!(conds.iter().any(|c| c.0), "{b:?} is not ready");
                }
            }
            let local_only = match (e.kind, e.scope) {
                (FrontendKind::ClusterIp, _) => g.itp_local,
                (_, Scope::External) => g.etp_local,
                (_, Scope::Internal) => false,
            };
            if local_only {
                prop_assert!(e.backends.iter().all(|b| b.local), "{e:?}");
            }
            prop_assert_eq!(
                e.preserve_client_ip,
                e.kind != FrontendKind::ClusterIp && e.scope == Scope::External && g.etp_local
            );
            if e.scope == Scope::Internal {
                prop_assert!(g.etp_local && e.kind != FrontendKind::ClusterIp);
                let ext = t.table.get(&e.frontend, Scope::External).unwrap();
                prop_assert_ne!(&ext.backends, &e.backends);
                prop_assert_eq!(&ext.service, &e.service);
            }
            if e.kind == FrontendKind::ExternalIp {
                prop_assert!(cfg().allowed_external_ips.iter().any(|r| r.contains(&e.frontend.ip)));
            }
            prop_assert_eq!(e.affinity_timeout_secs, g.affinity.map(|t| t as u32));
        }
        // Sorted, one entry per (frontend, scope).
        for w in t.table.entries.windows(2) {
            prop_assert!((w[0].frontend, w[0].scope) < (w[1].frontend, w[1].scope));
        }
        // Every externalIP outside the allowed range is refused, by name.
        for (i, g) in gens.iter().enumerate() {
            for (k, &x) in g.external.iter().enumerate() {
                if EXTERNAL_POOL[x] == "8.8.8.8" {
                    let field = format!("spec.externalIPs[{k}]");
                    let name = format!("svc{i}");
                    prop_assert!(t.problems.iter().any(|p| p.is_refused_external_ip()
                        && p.field == field && p.service.name == name));
                }
            }
        }
    }

    #[test]
    fn input_order_does_not_matter(
        gens in prop::collection::vec(gen_svc(), 1..5),
        seed in any::<u64>(),
    ) {
        let (services, slices) = build(&gens);
        let a = translate(&services, &slices, &cfg());
        let b = translate(&shuffled(&services, seed), &shuffled(&slices, seed ^ 0x5555), &cfg());
        prop_assert_eq!(&a, &b);
        // Splitting every slice into one slice per endpoint changes nothing either.
        let split: Vec<EndpointSlice> = slices
            .iter()
            .flat_map(|s| {
                s.endpoints.iter().flatten().enumerate().map(move |(k, e)| {
                    let mut one = s.clone();
                    one.metadata.name = Some(format!("{}-{k}", one.metadata.name.clone().unwrap()));
                    one.endpoints = Some(vec![e.clone()]);
                    one
                })
            })
            .collect();
        let c = translate(&services, &shuffled(&split, seed), &cfg());
        prop_assert_eq!(&a.table, &c.table);
    }
}
