//! Cluster add-ons that `lab up` installs once the nodes are Ready, as kubeadm installs
//! CoreDNS: the `fibril-dns` Deployment in `kube-system` (image `fibril/dns`, labels
//! `k8s-app: kube-dns`) behind the `kube-dns` Service, whose ClusterIP is the tenth address
//! of the service CIDR ([`LabLayout::cluster_dns_ip`], the nameserver the kubelet writes
//! into every pod's resolv.conf).
//!
//! The objects are ordinary API objects (server-side applied, so `up` can run again), and
//! the pod is an ordinary pod: `lab down` removes it with everything else.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;

use fibril_core::consts;
use fibril_core::lab::LabLayout;

/// The field manager of everything the lab applies.
const FIELD_MANAGER: &str = "fibril-lab";

/// The `kube-dns` Service.
pub fn kube_dns_service(layout: &LabLayout) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": consts::KUBE_DNS_SERVICE,
            "namespace": consts::KUBE_SYSTEM_NAMESPACE,
            "labels": {"k8s-app": consts::KUBE_DNS_APP_LABEL, "kubernetes.io/name": "fibril-dns"},
        },
        "spec": {
            "clusterIP": layout.cluster_dns_ip().to_string(),
            "selector": {"k8s-app": consts::KUBE_DNS_APP_LABEL},
            "ports": [
                {"name": "dns", "port": consts::DNS_PORT, "targetPort": "dns", "protocol": "UDP"},
                {"name": "dns-tcp", "port": consts::DNS_PORT, "targetPort": "dns-tcp", "protocol": "TCP"},
            ],
        },
    }))
    .expect("a valid Service")
}

/// The `fibril-dns` Deployment.
pub fn dns_deployment(layout: &LabLayout) -> Deployment {
    let labels = json!({"k8s-app": consts::KUBE_DNS_APP_LABEL});
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": consts::DNS_DEPLOYMENT,
            "namespace": consts::KUBE_SYSTEM_NAMESPACE,
            "labels": labels,
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    // Like CoreDNS: the DNS server must not resolve through itself.
                    "dnsPolicy": "Default",
                    "containers": [{
                        "name": "dns",
                        "image": consts::DNS_IMAGE,
                        "args": [
                            "--api-socket", layout.api_socket().display().to_string(),
                            "--domain", consts::CLUSTER_DOMAIN,
                            "--ttl", consts::DNS_TTL_SECONDS.to_string(),
                            "--port", consts::DNS_PORT.to_string(),
                            "--ready-port", consts::DNS_READY_PORT.to_string(),
                        ],
                        "env": [{"name": "RUST_LOG", "value": "info,hickory_server=warn"}],
                        "ports": [
                            {"name": "dns", "containerPort": consts::DNS_PORT, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": consts::DNS_PORT, "protocol": "TCP"},
                            {"name": "ready", "containerPort": consts::DNS_READY_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": consts::DNS_READY_PATH, "port": "ready"},
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

/// Applies the add-ons and waits until cluster DNS answers behind `kube-dns`: its pod is
/// Ready and listed as a ready endpoint of the Service.
pub async fn install(
    layout: &LabLayout,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    let client = crate::lab::client(layout)?;
    let ns = consts::KUBE_SYSTEM_NAMESPACE;
    let pp = PatchParams::apply(FIELD_MANAGER);
    let svc = kube_dns_service(layout);
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(consts::KUBE_DNS_SERVICE, &pp, &Patch::Apply(&svc))
        .await
        .context("applying the kube-dns Service")?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            consts::DNS_DEPLOYMENT,
            &pp,
            &Patch::Apply(&dns_deployment(layout)),
        )
        .await
        .context("applying the fibril-dns Deployment")?;
    progress(&format!(
        "cluster DNS: {ns}/{} at {} ({})",
        consts::KUBE_DNS_SERVICE,
        layout.cluster_dns_ip(),
        consts::CLUSTER_DOMAIN
    ));

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client, ns);
    let selector = format!("k8s-app={}", consts::KUBE_DNS_APP_LABEL);
    let slice_selector = format!("kubernetes.io/service-name={}", consts::KUBE_DNS_SERVICE);
    let deadline = Instant::now() + timeout;
    loop {
        let ready_ips: Vec<String> = slices
            .list(&ListParams::default().labels(&slice_selector))
            .await?
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        if !ready_ips.is_empty() {
            progress(&format!(
                "cluster DNS ready: {} -> {}",
                layout.cluster_dns_ip(),
                ready_ips.join(", ")
            ));
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items.iter().map(pod_state).collect())
                .unwrap_or_default();
            bail!(
                "cluster DNS ({ns}/{}) not ready within {timeout:?}: pods {states:?}; see `fibril lab logs` and the kubelet logs in {}",
                consts::DNS_DEPLOYMENT,
                layout.log_dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pod_state(p: &Pod) -> String {
    let status = p.status.clone().unwrap_or_default();
    let why = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
        .filter_map(|c| c.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{} {} on {} {}",
        p.metadata.name.clone().unwrap_or_default(),
        status.phase.unwrap_or_default(),
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "(unscheduled)".into()),
        why
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_is_the_tenth_service_address_with_dns_ports() {
        let layout = fibril_core::lab::LabSpec::default().layout();
        let svc = kube_dns_service(&layout);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("dns".to_string(), 53, "UDP".to_string()),
                ("dns-tcp".to_string(), 53, "TCP".to_string())
            ]
        );
        assert_eq!(
            spec.selector.unwrap().get("k8s-app").map(String::as_str),
            Some("kube-dns")
        );
    }

    #[test]
    fn dns_deployment_runs_the_dns_image_against_the_lab_api_socket() {
        let layout = fibril_core::lab::LabSpec::default().layout();
        let d = dns_deployment(&layout);
        assert_eq!(d.metadata.name.as_deref(), Some("fibril-dns"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("kube-system"));
        let pod = d.spec.template.spec.unwrap();
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("fibril/dns"));
        let args = c.args.clone().unwrap().join(" ");
        assert!(
            args.contains(&format!("--api-socket {}", layout.api_socket().display())),
            "{args}"
        );
        assert!(args.contains("--domain cluster.local"), "{args}");
        let probe = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(probe.path.as_deref(), Some("/ready"));
    }
}
