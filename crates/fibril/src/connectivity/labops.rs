//! The runner's writes to a lab's API server (any cluster served through kube-rs would
//! do): ensure-style creation of the model's objects, label replacement, policy
//! create/update/delete, and waits for deletions and for pods to serve.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

use fibril_core::lab::LabLayout;
use fibril_core::policy::{PodKey, PolicyRef};

use super::manifests::{same_pod_spec, same_service_spec, service_name, service_port_name};
use fibril_core::policy::conformance::Probe;

type Labels = BTreeMap<String, String>;

const POLL: Duration = Duration::from_millis(200);
/// How long a deletion may take before the runner gives up on it.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);
/// The label the API server adds to every namespace (and the policy model assumes).
const NAMESPACE_NAME_LABEL: &str = fibril_core::policy::cluster::NAMESPACE_NAME_LABEL;

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// `labels` as the API server stores a namespace's: with `kubernetes.io/metadata.name`.
pub fn namespace_labels(name: &str, labels: &Labels) -> Labels {
    let mut l = labels.clone();
    l.entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.to_string());
    l
}

/// Creates the namespace, or gives an existing one exactly these labels. Waits out a
/// namespace still terminating from an earlier deletion.
pub async fn ensure_namespace(client: &Client, name: &str, labels: &Labels) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let want = namespace_labels(name, labels);
    if let Some(ns) = api.get_opt(name).await? {
        if ns.metadata.deletion_timestamp.is_none() {
            if ns.metadata.labels.clone().unwrap_or_default() != want {
                set_namespace_labels(client, name, labels).await?;
            }
            return Ok(());
        }
        wait_gone(&api, name, "namespace").await?;
    }
    api.create(
        &PostParams::default(),
        &super::manifests::namespace(name, &want),
    )
    .await
    .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Replaces the namespace's whole label map.
pub async fn set_namespace_labels(
    client: &Client,
    name: &str,
    labels: &Labels,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = api
        .get(name)
        .await
        .with_context(|| format!("reading namespace {name}"))?;
    ns.metadata.labels = Some(namespace_labels(name, labels));
    api.replace(name, &PostParams::default(), &ns)
        .await
        .with_context(|| format!("relabelling namespace {name}"))?;
    Ok(())
}

/// Replaces the pod's whole label map.
pub async fn set_pod_labels(client: &Client, key: &PodKey, labels: &Labels) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let mut pod = api
        .get(&key.name)
        .await
        .with_context(|| format!("reading pod {key}"))?;
    pod.metadata.labels = Some(labels.clone());
    api.replace(&key.name, &PostParams::default(), &pod)
        .await
        .with_context(|| format!("relabelling pod {key}"))?;
    Ok(())
}

/// Deletes and waits until the object is gone; Ok when it never existed.
async fn delete_and_wait<K>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("deleting {what} {name}")),
    }
    wait_gone(api, name, what).await
}

async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + DELETE_TIMEOUT;
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("{what} {name} still exists {DELETE_TIMEOUT:?} after its deletion");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    delete_and_wait(&api, name, "namespace").await
}

/// Deletes the pod and its Service, and waits until both are gone.
pub async fn delete_pod(client: &Client, key: &PodKey) -> anyhow::Result<()> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
    delete_and_wait(&svcs, &service_name(key), "service").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    delete_and_wait(&pods, &key.name, "pod").await
}

/// Creates the pod, or keeps an existing one with the same containers (giving it the
/// desired labels), or replaces one that differs. Returns whether a pod was created.
pub async fn ensure_pod(client: &Client, desired: &Pod) -> anyhow::Result<bool> {
    let ns = desired.metadata.namespace.clone().unwrap_or_default();
    let name = desired.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Some(existing) = api.get_opt(&name).await? {
        if existing.metadata.deletion_timestamp.is_none() && same_pod_spec(&existing, desired) {
            if existing.metadata.labels != desired.metadata.labels {
                let labels = desired.metadata.labels.clone().unwrap_or_default();
                set_pod_labels(client, &PodKey::new(&ns, &name), &labels).await?;
            }
            return Ok(false);
        }
        delete_and_wait(&api, &name, "pod").await?;
    }
    api.create(&PostParams::default(), desired)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
    Ok(true)
}

/// Creates the Service, or replaces one whose selector or ports differ.
pub async fn ensure_service(client: &Client, desired: &Service) -> anyhow::Result<()> {
    let ns = desired.metadata.namespace.clone().unwrap_or_default();
    let name = desired.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    if let Some(existing) = api.get_opt(&name).await? {
        if same_service_spec(&existing, desired) {
            return Ok(());
        }
        delete_and_wait(&api, &name, "service").await?;
    }
    api.create(&PostParams::default(), desired)
        .await
        .with_context(|| format!("creating service {ns}/{name}"))?;
    Ok(())
}

/// Deletes every NetworkPolicy in these namespaces; returns how many there were.
pub async fn delete_policies(client: &Client, namespaces: &[String]) -> anyhow::Result<usize> {
    let mut n = 0;
    for ns in namespaces {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("listing policies in {ns}")),
        };
        for p in list.items {
            let name = p.metadata.name.unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => n += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting policy {ns}/{name}")),
            }
        }
    }
    Ok(n)
}

pub async fn create_policy(client: &Client, np: &NetworkPolicy) -> anyhow::Result<()> {
    let r = PolicyRef::of(np).map_err(|ps| anyhow::anyhow!("{ps:?}"))?;
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &r.namespace);
    api.create(&PostParams::default(), np)
        .await
        .with_context(|| format!("creating policy {r}"))?;
    Ok(())
}

/// Replaces the policy's spec (and labels) with `np`'s.
pub async fn update_policy(client: &Client, np: &NetworkPolicy) -> anyhow::Result<()> {
    let r = PolicyRef::of(np).map_err(|ps| anyhow::anyhow!("{ps:?}"))?;
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &r.namespace);
    let current = api
        .get(&r.name)
        .await
        .with_context(|| format!("reading policy {r}"))?;
    let mut new = np.clone();
    new.metadata.resource_version = current.metadata.resource_version;
    api.replace(&r.name, &PostParams::default(), &new)
        .await
        .with_context(|| format!("updating policy {r}"))?;
    Ok(())
}

pub async fn delete_policy(client: &Client, r: &PolicyRef) -> anyhow::Result<()> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &r.namespace);
    api.delete(&r.name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting policy {r}"))?;
    Ok(())
}

/// A pod ready to be probed: where to probe from and what to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: PodKey,
    /// The pod's network namespace (under /run/netns).
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its Service's ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// What it serves.
    pub served: Vec<Probe>,
}

/// Why one pod is not ready to be probed yet, or its target.
async fn target_of(
    client: &Client,
    layout: &LabLayout,
    key: &PodKey,
    served: &[Probe],
) -> anyhow::Result<Result<Target, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let Some(pod) = pods.get_opt(&key.name).await? else {
        return Ok(Err("no such pod".into()));
    };
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    if phase != "Running" {
        return Ok(Err(format!("phase {phase:?}")));
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return Ok(Err("not Ready".into()));
    }
    let Some(ip): Option<Ipv4Addr> = status.pod_ip.as_deref().and_then(|s| s.parse().ok()) else {
        return Ok(Err("no pod IP".into()));
    };
    let netns = layout.pod_netns(pod.metadata.uid.as_deref().unwrap_or_default());
    if !std::path::Path::new(fibril_core::consts::NETNS_RUN_DIR)
        .join(&netns)
        .exists()
    {
        return Ok(Err(format!("no network namespace {netns}")));
    }
    let svc_name = service_name(key);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
    let Some(svc) = svcs.get_opt(&svc_name).await? else {
        return Ok(Err(format!("no service {svc_name}")));
    };
    let Some(cluster_ip) = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|s| s.parse().ok())
    else {
        return Ok(Err(format!("service {svc_name} has no ClusterIP")));
    };
    // Every service port must list the pod as a ready endpoint.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc_name}"));
    let slices = slices.list(&lp).await?.items;
    let ip_s = ip.to_string();
    for p in served {
        let port_name = service_port_name(*p);
        let listed = slices.iter().any(|s| {
            s.ports
                .iter()
                .flatten()
                .any(|sp| sp.name.as_deref() == Some(port_name.as_str()))
                && s.endpoints.iter().flatten().any(|e| {
                    e.addresses.contains(&ip_s)
                        && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                })
        });
        if !listed {
            return Ok(Err(format!(
                "service {svc_name} has no ready endpoint {ip} for {port_name}"
            )));
        }
    }
    Ok(Ok(Target {
        key: key.clone(),
        netns,
        ip,
        cluster_ip,
        served: served.to_vec(),
    }))
}

/// Waits until every pod runs, is Ready, has an address and a namespace, and its Service
/// has a ClusterIP and lists it for every port. The error names each pod still waiting.
pub async fn wait_targets(
    client: &Client,
    layout: &LabLayout,
    pods: &BTreeMap<PodKey, Vec<Probe>>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<PodKey, Target>> {
    let deadline = Instant::now() + timeout;
    let mut ready = BTreeMap::new();
    loop {
        let mut waiting = Vec::new();
        for (key, served) in pods {
            if ready.contains_key(key) {
                continue;
            }
            match target_of(client, layout, key, served).await? {
                Ok(t) => {
                    ready.insert(key.clone(), t);
                }
                Err(why) => waiting.push(format!("{key}: {why}")),
            }
        }
        if waiting.is_empty() {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            bail!(
                "pods not ready to probe after {timeout:?}:\n  {}",
                waiting.join("\n  ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
