//! The EndpointSlice controller: for every Service with a selector, one IPv4
//! EndpointSlice per distinct set of resolved ports, listing every selected pod that has
//! an IP, with upstream's ready/serving/terminating conditions.
//!
//! Named `targetPort`s are resolved per pod from its container ports, so pods that name
//! the port differently land in different slices, and a pod that lacks the name is left
//! out of that port (upstream `podutil.FindPort`). Services without a selector are
//! not ours (their slices are written by hand); slices of deleted Services are removed.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use super::podutil;
use super::{is_conflict, is_not_found, ControllerError};

use fibril_core::services::translate::slice_service;
pub use fibril_core::services::translate::{HEADLESS_LABEL, SERVICE_NAME_LABEL};
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const ADDRESS_TYPE: &str = "IPv4";

/// The contents one slice should have.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSlice {
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// The container port a Service port targets on this pod, or `None` when the pod has
/// no container port of that name and protocol.
pub fn resolve_port(svc_port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = svc_port.protocol.as_deref().unwrap_or("TCP");
    match &svc_port.target_port {
        None => Some(svc_port.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            // A numeric string is a number, as upstream's intstr parsing treats it.
            if let Ok(p) = name.parse() {
                return Some(p);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|cp| cp.container_port)
        }
    }
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    pod.metadata.namespace == svc.metadata.namespace
        && sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn endpoint_for(svc: &Service, pod: &Pod, ip: std::net::Ipv4Addr) -> Endpoint {
    let terminating = podutil::is_terminating(pod);
    let serving = podutil::is_pod_ready(pod);
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let pod_spec = pod.spec.as_ref();
    let hostname = pod_spec
        .filter(|s| s.subdomain.is_some() && s.subdomain == svc.metadata.name)
        .and_then(|s| s.hostname.clone());
    Endpoint {
        addresses: vec![ip.to_string()],
        // Upstream's podToEndpoint: `serving` is the pod's readiness alone; `ready` is
        // never true for a terminating pod unless publishNotReadyAddresses says so.
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: podutil::node_name(pod).map(Into::into),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The slices a Service should have, given every pod (of any namespace). A Service
/// without a selector gets none; one with a selector but no endpoints gets one empty
/// placeholder slice, as upstream keeps.
pub fn desired_slices(svc: &Service, pods: &[Pod]) -> Vec<DesiredSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.selector.is_none() {
        return Vec::new();
    }
    let svc_ports = spec.ports.clone().unwrap_or_default();
    let mut groups: Vec<DesiredSlice> = Vec::new();
    for pod in pods {
        if !selects(svc, pod) || podutil::is_terminal(pod) {
            continue;
        }
        let Some(ip) = podutil::pod_ipv4(pod) else {
            continue;
        };
        let ports: Vec<EndpointPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(resolve_port(sp, pod)?),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let ep = endpoint_for(svc, pod, ip);
        match groups.iter_mut().find(|g| g.ports == ports) {
            Some(g) => g.endpoints.push(ep),
            None => groups.push(DesiredSlice {
                ports,
                endpoints: vec![ep],
            }),
        }
    }
    for g in &mut groups {
        g.endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    groups.sort_by_key(|g| port_key(&g.ports));
    if groups.is_empty() {
        groups.push(DesiredSlice {
            ports: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    groups
}

fn port_key(ports: &[EndpointPort]) -> Vec<(String, String, i32)> {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
            )
        })
        .collect()
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Service" && o.uid == uid)
}

/// What to write so that a Service's slices become `desired`.
#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

/// Matches `desired` against the controller's `existing` slices for this Service:
/// first by identical port sets, then pairs leftovers in order (rewriting their ports),
/// so slice names stay stable. Slices owned by an older Service of the same name go.
pub fn plan_slices(
    svc: &Service,
    desired: Vec<DesiredSlice>,
    existing: &[EndpointSlice],
) -> SlicePlan {
    let mut plan = SlicePlan::default();
    let labels = slice_labels(svc);
    let owner = owner_ref(svc);
    let mut unused: Vec<&EndpointSlice> = Vec::new();
    for s in existing {
        if owned_by(s, svc) && s.address_type == ADDRESS_TYPE {
            unused.push(s);
        } else {
            plan.delete
                .push(s.metadata.name.clone().unwrap_or_default());
        }
    }
    let mut leftovers = Vec::new();
    for d in desired {
        let found = unused
            .iter()
            .position(|s| s.ports.clone().unwrap_or_default() == d.ports);
        match found {
            Some(i) => {
                let s = unused.remove(i);
                push_update(&mut plan, s, d, &labels, &owner);
            }
            None => leftovers.push(d),
        }
    }
    for d in leftovers {
        if unused.is_empty() {
            plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!(
                        "{}-",
                        svc.metadata.name.as_deref().unwrap_or_default()
                    )),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: ADDRESS_TYPE.into(),
                endpoints: Some(d.endpoints),
                ports: Some(d.ports),
            });
        } else {
            let s = unused.remove(0);
            push_update(&mut plan, s, d, &labels, &owner);
        }
    }
    plan.delete.extend(
        unused
            .into_iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default()),
    );
    plan
}

fn push_update(
    plan: &mut SlicePlan,
    existing: &EndpointSlice,
    d: DesiredSlice,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) {
    // The server may drop empty lists; they mean the same.
    let mut before = existing.clone();
    before.endpoints.get_or_insert_with(Vec::new);
    before.ports.get_or_insert_with(Vec::new);
    let mut s = existing.clone();
    s.metadata.labels = Some(labels.clone());
    s.metadata.owner_references = Some(vec![owner.clone()]);
    s.endpoints = Some(d.endpoints);
    s.ports = Some(d.ports);
    if s != before {
        plan.update.push(s);
    }
}

/// One pass over every Service and every controller-managed slice.
pub async fn reconcile(client: Client) -> Result<(), ControllerError> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("services"))?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("pods"))?
        .items;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}")))
        .await
        .map_err(ControllerError::list("endpointslices"))?
        .items;

    // (namespace, service name) → its managed slices.
    let mut by_service: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(key) = slice_service(&s) {
            by_service.entry(key).or_default().push(s);
        }
    }

    let mut first_err = None;
    let mut seen = HashSet::new();
    for svc in &services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        seen.insert((ns.clone(), name.clone()));
        if svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none()
            || svc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let existing = by_service
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        let plan = plan_slices(svc, desired_slices(svc, &pods), &existing);
        if let Err(e) = apply(&client, &ns, plan).await {
            first_err.get_or_insert(e);
        }
    }
    // Slices whose Service is gone.
    for ((ns, svc), slices) in by_service {
        if seen.contains(&(ns.clone(), svc)) {
            continue;
        }
        let plan = SlicePlan {
            delete: slices.into_iter().filter_map(|s| s.metadata.name).collect(),
            ..Default::default()
        };
        if let Err(e) = apply(&client, &ns, plan).await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn apply(client: &Client, ns: &str, plan: SlicePlan) -> Result<(), ControllerError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    for s in plan.create {
        let svc = s.metadata.generate_name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &s)
            .await
            .map_err(ControllerError::api("create", "endpointslice", svc))?;
    }
    for s in plan.update {
        let name = s.metadata.name.clone().unwrap_or_default();
        match api.replace(&name, &PostParams::default(), &s).await {
            Ok(_) => {}
            // Someone else wrote it: the watch wakes us to redo it from fresh state.
            Err(e) if is_conflict(&e) || is_not_found(&e) => {}
            Err(e) => return Err(ControllerError::api("update", "endpointslice", name)(e)),
        }
    }
    for name in plan.delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(ControllerError::api("delete", "endpointslice", name)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn named_port(name: &str, port: i32, target: &str) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(IntOrString::String(target.into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, ports: &[(&str, i32)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn named_ports_are_resolved_per_pod_and_grouped() {
        let s = svc(vec![named_port("http", 80, "web")]);
        let pods = vec![
            pod("a", "10.0.0.1", true, &[("web", 8080)]),
            pod("b", "10.0.0.2", true, &[("web", 9090)]),
            pod("c", "10.0.0.3", true, &[("other", 1)]),
            pod("d", "10.0.0.4", true, &[("web", 8080)]),
        ];
        let d = desired_slices(&s, &pods);
        assert_eq!(d.len(), 3, "{d:#?}");
        // A pod lacking the name is in a slice without that port.
        assert_eq!(d[0].ports, vec![]);
        assert_eq!(d[0].endpoints[0].addresses, vec!["10.0.0.3"]);
        assert_eq!(d[1].ports[0].port, Some(8080));
        assert_eq!(d[1].endpoints.len(), 2);
        assert_eq!(d[2].ports[0].port, Some(9090));
        assert_eq!(d[2].ports[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let s = svc(vec![ServicePort {
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }]);
        let mut term = pod("t", "10.0.0.9", true, &[]);
        term.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mut no_ip = pod("x", "", true, &[]);
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let mut other_ns = pod("o", "10.0.0.8", true, &[]);
        other_ns.metadata.namespace = Some("kube-system".into());
        let pods = vec![
            pod("r", "10.0.0.1", true, &[]),
            pod("n", "10.0.0.2", false, &[]),
            term,
            no_ip,
            other_ns,
        ];
        let d = desired_slices(&s, &pods);
        assert_eq!(d.len(), 1);
        let conds: Vec<_> = d[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conds,
            vec![
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, false, false),
                ("10.0.0.9", false, true, true),
            ]
        );
        let ep = &d[0].endpoints[0];
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.target_ref.as_ref().unwrap().name.as_deref(), Some("r"));
        assert_eq!(d[0].ports[0].port, Some(8080));
        assert_eq!(d[0].ports[0].name.as_deref(), Some(""));
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_pod_ready_but_not_serving() {
        let mut s = svc(vec![ServicePort {
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }]);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut term = pod("t", "10.0.0.9", false, &[]);
        term.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let pods = vec![pod("n", "10.0.0.2", false, &[]), term];
        let d = desired_slices(&s, &pods);
        let conds: Vec<_> = d[0]
            .endpoints
            .iter()
            .map(|e| e.conditions.clone().unwrap())
            .map(|c| (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap()))
            .collect();
        // As upstream: ready is forced, serving stays the pod's readiness.
        assert_eq!(conds, vec![(true, false, false), (true, false, true)]);
    }

    #[test]
    fn no_selector_means_no_slices_and_no_pods_a_placeholder() {
        let mut s = svc(vec![]);
        assert_eq!(desired_slices(&s, &[]).len(), 1);
        assert!(desired_slices(&s, &[])[0].endpoints.is_empty());
        s.spec.as_mut().unwrap().selector = None;
        assert!(desired_slices(&s, &[pod("a", "10.0.0.1", true, &[])]).is_empty());
    }

    #[test]
    fn plan_creates_updates_and_deletes() {
        let s = svc(vec![named_port("http", 80, "web")]);
        let pods = vec![pod("a", "10.0.0.1", true, &[("web", 8080)])];
        let plan = plan_slices(&s, desired_slices(&s, &pods), &[]);
        assert_eq!(plan.create.len(), 1);
        let mut created = plan.create[0].clone();
        let labels = created.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(labels["team"], "a");
        assert_eq!(created.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(created.address_type, "IPv4");
        let owner = &created.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );

        created.metadata.name = Some("web-abcde".into());
        // Same state: nothing to do.
        let plan = plan_slices(&s, desired_slices(&s, &pods), &[created.clone()]);
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty());
        // The pod's port moved: the slice is rewritten in place, not replaced.
        let pods2 = vec![pod("a", "10.0.0.1", true, &[("web", 9090)])];
        let plan = plan_slices(&s, desired_slices(&s, &pods2), &[created.clone()]);
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-abcde"));
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        // A slice of an older Service with the same name goes.
        let mut stale = created.clone();
        stale.metadata.name = Some("web-old".into());
        stale.metadata.owner_references.as_mut().unwrap()[0].uid = "old".into();
        let plan = plan_slices(&s, desired_slices(&s, &pods), &[created, stale]);
        assert_eq!(plan.delete, vec!["web-old".to_string()]);
        assert!(plan.create.is_empty() && plan.update.is_empty());
    }
}
