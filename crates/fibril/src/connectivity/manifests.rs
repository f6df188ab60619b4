//! The conformance model as lab objects: namespaces with their labels, one
//! `fibril/netpol-server` pod per model pod (one container per model container, each
//! declaring its named ports), and one ClusterIP Service `s-<ns>-<pod>` per pod.
//!
//! Upstream builds the same objects with agnhost (`model.go`); the model's own manifests
//! name agnhost binaries, which the lab has no image for, so these are derived from the
//! parsed model instead of copied.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort as K8sContainerPort, Namespace, Pod, PodSpec, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use fibril_core::consts::NETPOL_SERVER_IMAGE;
use fibril_core::policy::conformance::{Model, Probe};
use fibril_core::policy::{ContainerPort, PodKey};
use fibril_core::services::L4Proto;

type Labels = BTreeMap<String, String>;

/// The label the model's Services select their pod by (`pod=<name>`).
pub const POD_LABEL: &str = "pod";
/// Annotation holding the pod's desired containers and node, so that a later run can tell
/// whether a pod it finds is the one it would create.
pub const SPEC_ANNOTATION: &str = "netpol.fibril.dev/spec";
/// The server's flag that leaves SCTP ports unserved on a kernel without SCTP.
pub const SKIP_SCTP_ARG: &str = "--skip-unsupported-sctp";

/// `s-<ns>-<pod>`, the pod's Service.
pub fn service_name(pod: &PodKey) -> String {
    format!("s-{}-{}", pod.namespace, pod.name)
}

/// `service-port-<proto>-<port>`, as upstream names the Service's ports.
pub fn service_port_name(p: Probe) -> String {
    format!(
        "service-port-{}-{}",
        p.protocol.to_string().to_lowercase(),
        p.port
    )
}

/// A pod's containers: name → its ports.
pub type Containers = Vec<(String, Vec<ContainerPort>)>;

/// The model's containers (one per `container` of `container_ports`, in file order).
pub fn model_containers(model: &Model) -> Containers {
    let mut out: Containers = Vec::new();
    for p in &model.container_ports {
        let port = ContainerPort {
            name: Some(p.name.clone()),
            port: p.port,
            protocol: p.protocol,
        };
        match out.iter_mut().find(|(c, _)| *c == p.container) {
            Some((_, ports)) => ports.push(port),
            None => out.push((p.container.clone(), vec![port])),
        }
    }
    out
}

/// A step's own port list (`create_pod.ports`): one container per port, named as the model
/// names them (`cont-<port>-<proto>`).
pub fn containers_for_ports(ports: &[ContainerPort]) -> Containers {
    ports
        .iter()
        .map(|p| {
            (
                format!("cont-{}-{}", p.port, p.protocol.to_string().to_lowercase()),
                vec![p.clone()],
            )
        })
        .collect()
}

/// What the pod serves (every container port).
pub fn served(containers: &Containers) -> Vec<Probe> {
    let mut out: Vec<Probe> = containers
        .iter()
        .flat_map(|(_, ports)| ports)
        .map(|p| Probe {
            port: p.port,
            protocol: p.protocol,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub fn namespace(name: &str, labels: &Labels) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The pod: `fibril/netpol-server` containers, pinned to `node` when given. `skip_sctp`
/// passes [`SKIP_SCTP_ARG`] to the containers that have SCTP ports.
pub fn pod(
    key: &PodKey,
    labels: &Labels,
    containers: &Containers,
    node: Option<&str>,
    skip_sctp: bool,
) -> Pod {
    let containers: Vec<Container> = containers
        .iter()
        .map(|(name, ports)| {
            let has_sctp = ports.iter().any(|p| p.protocol == L4Proto::Sctp);
            Container {
                name: name.clone(),
                image: Some(NETPOL_SERVER_IMAGE.to_string()),
                args: (skip_sctp && has_sctp).then(|| vec![SKIP_SCTP_ARG.to_string()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| K8sContainerPort {
                            container_port: i32::from(p.port),
                            name: p.name.clone(),
                            protocol: Some(p.protocol.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }
        })
        .collect();
    let spec = PodSpec {
        containers,
        node_name: node.map(str::to_string),
        termination_grace_period_seconds: Some(0),
        ..Default::default()
    };
    let fingerprint = serde_json::json!({
        "containers": spec.containers,
        "nodeName": spec.node_name,
    })
    .to_string();
    Pod {
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some([(SPEC_ANNOTATION.to_string(), fingerprint)].into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether `existing` is the pod [`pod`] would create (same containers and node).
pub fn same_pod_spec(existing: &Pod, desired: &Pod) -> bool {
    let fp = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPEC_ANNOTATION))
            .cloned()
    };
    fp(existing).is_some() && fp(existing) == fp(desired)
}

/// The pod's ClusterIP Service: selector `pod=<name>`, one port per served (port,
/// protocol), targeting the same port.
pub fn service(key: &PodKey, served: &[Probe]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(key)),
            namespace: Some(key.namespace.clone()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([(POD_LABEL.to_string(), key.name.clone())].into()),
            ports: Some(
                served
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(service_port_name(*p)),
                        port: i32::from(p.port),
                        protocol: Some(p.protocol.to_string()),
                        target_port: Some(IntOrString::Int(i32::from(p.port))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether an existing Service has the selector and ports [`service`] would give it.
pub fn same_service_spec(existing: &Service, desired: &Service) -> bool {
    let key = |s: &Service| {
        let spec = s.spec.clone().unwrap_or_default();
        let mut ports: Vec<(Option<String>, i32, String, Option<IntOrString>)> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.name,
                    p.port,
                    p.protocol.unwrap_or_else(|| "TCP".into()),
                    p.target_port,
                )
            })
            .collect();
        ports.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        (spec.selector, ports)
    };
    key(existing) == key(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/conformance/netpol/model.yaml"
        );
        Model::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn model_pods_get_one_container_per_model_container_with_named_ports() {
        let m = model();
        let cs = model_containers(&m);
        let names: Vec<&str> = cs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "cont-80-tcp",
                "cont-80-udp",
                "cont-80-sctp",
                "cont-81-tcp",
                "cont-81-udp",
                "cont-81-sctp"
            ]
        );
        assert_eq!(served(&cs).len(), 6);
        let key = PodKey::new("x", "a");
        let p = pod(&key, &m.pods[&key].labels, &cs, Some("lab-node-1"), true);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("lab-node-1"));
        let sctp = &spec.containers[2];
        assert_eq!(sctp.image.as_deref(), Some(NETPOL_SERVER_IMAGE));
        assert_eq!(sctp.args, Some(vec![SKIP_SCTP_ARG.to_string()]));
        let port = &sctp.ports.as_ref().unwrap()[0];
        assert_eq!(
            (
                port.container_port,
                port.name.as_deref(),
                port.protocol.as_deref()
            ),
            (80, Some("serve-80-sctp"), Some("SCTP"))
        );
        // Only SCTP containers are told to skip, and only when asked.
        assert_eq!(spec.containers[0].args, None);
        let p2 = pod(&key, &m.pods[&key].labels, &cs, Some("lab-node-1"), false);
        assert_eq!(p2.spec.as_ref().unwrap().containers[2].args, None);
        assert!(same_pod_spec(&p, &p));
        assert!(!same_pod_spec(&p2, &p));
    }

    #[test]
    fn services_expose_every_served_port_by_upstream_name() {
        let m = model();
        let key = PodKey::new("y", "b");
        let s = service(&key, &served(&model_containers(&m)));
        assert_eq!(s.metadata.name.as_deref(), Some("s-y-b"));
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.as_ref().unwrap().get(POD_LABEL),
            Some(&"b".to_string())
        );
        let names: Vec<_> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "service-port-tcp-80",
                "service-port-udp-80",
                "service-port-sctp-80",
                "service-port-tcp-81",
                "service-port-udp-81",
                "service-port-sctp-81"
            ]
        );
        assert!(same_service_spec(&s, &s));
        let other = service(&key, &served(&model_containers(&m))[..2]);
        assert!(!same_service_spec(&other, &s));
    }

    #[test]
    fn step_ports_get_a_container_each() {
        let cs = containers_for_ports(&[ContainerPort {
            name: Some("serve-82-udp".into()),
            port: 82,
            protocol: L4Proto::Udp,
        }]);
        assert_eq!(cs[0].0, "cont-82-udp");
        assert_eq!(
            served(&cs),
            [Probe {
                port: 82,
                protocol: L4Proto::Udp
            }]
        );
    }
}
