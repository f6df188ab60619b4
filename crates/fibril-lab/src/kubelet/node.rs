//! Node registration and heartbeat: the kubelet creates (or updates) its Node with the
//! usual labels, addresses and system info, and posts the `Ready` condition every
//! [`HEARTBEAT`] — `False`/`NetworkPluginNotReady` until the node's CNI conf dir holds
//! a loadable config, as containerd reports.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::KubeletConfig;

/// How often the node's conditions are re-posted.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The `Ready=False` reason and message while no CNI config exists.
pub const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";
pub const NETWORK_NOT_READY_MESSAGE: &str =
    "container runtime network not ready: cni config uninitialized";

/// The kubelet version the lab reports.
const KUBELET_VERSION: &str = "v1.33.0-fibril";
/// Pods a lab node admits, upstream's default.
const MAX_PODS: &str = "110";

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The labels kubelet puts on its own Node.
pub fn node_labels(node_name: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node_name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The node's status: addresses, capacity, system info and conditions. `network` is
/// `Ok` once a CNI config is loadable. Transition times are kept from `prev` while a
/// condition's status is unchanged.
pub fn node_status(
    cfg: &KubeletConfig,
    network: Result<(), String>,
    prev: Option<&NodeStatus>,
    now: &Time,
) -> NodeStatus {
    let cond = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let since = prev
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since),
        }
    };
    let ready = match &network {
        Ok(()) => cond(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        Err(detail) => {
            tracing::debug!(node = %cfg.node_name, "network not ready: {detail}");
            cond(
                "Ready",
                false,
                NETWORK_NOT_READY_REASON,
                NETWORK_NOT_READY_MESSAGE,
            )
        }
    };
    let capacity: BTreeMap<String, Quantity> = [
        ("pods", MAX_PODS.to_string()),
        (
            "cpu",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.node_name.clone(),
            },
        ]),
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            cond(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            ready,
        ]),
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!("fibril-lab://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: "fibril lab".into(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Create the Node if absent, else make sure it carries our labels.
pub async fn register(client: &Client, cfg: &KubeletConfig) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    match api.get_opt(&cfg.node_name).await? {
        Some(_) => {
            let patch = json!({"metadata": {"labels": node_labels(&cfg.node_name)}});
            api.patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    labels: Some(node_labels(&cfg.node_name)),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => tracing::info!(node = %cfg.node_name, "registered node"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Post the node status now.
pub async fn post_status(
    client: &Client,
    cfg: &KubeletConfig,
    network: Result<(), String>,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let prev = api.get_opt(&cfg.node_name).await?;
    if prev.is_none() {
        register(client, cfg).await?;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let st = node_status(
        cfg,
        network,
        prev.as_ref().and_then(|n| n.status.as_ref()),
        &now,
    );
    let patch = json!({"status": {
        "addresses": st.addresses,
        "conditions": st.conditions,
        "capacity": st.capacity,
        "allocatable": st.allocatable,
        "nodeInfo": st.node_info,
    }});
    api.patch_status(
        &cfg.node_name,
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// Register, then post the status every [`HEARTBEAT`] and whenever network readiness
/// changes (checked every second). Never returns.
pub async fn run(
    client: Client,
    cfg: KubeletConfig,
    network_ready: impl Fn() -> Result<(), String>,
) {
    let mut last_posted: Option<(bool, tokio::time::Instant)> = None;
    loop {
        let net = network_ready();
        let ok = net.is_ok();
        let due = match last_posted {
            None => true,
            Some((was, at)) => was != ok || at.elapsed() >= HEARTBEAT,
        };
        if due {
            match post_status(&client, &cfg, net).await {
                Ok(()) => {
                    if last_posted.map(|(was, _)| was) != Some(ok) {
                        tracing::info!(node = %cfg.node_name, ready = ok, "node status");
                    }
                    last_posted = Some((ok, tokio::time::Instant::now()));
                }
                Err(e) => tracing::warn!(node = %cfg.node_name, "posting node status: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KubeletConfig {
        KubeletConfig {
            layout: fibril_core::lab::LabSpec::default().layout(),
            node_name: "fibril-node-1".into(),
            node_ip: "172.18.0.11".parse().unwrap(),
            fibril_exe: "/usr/bin/fibril".into(),
        }
    }

    fn ready_of(st: &NodeStatus) -> &NodeCondition {
        st.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
    }

    #[test]
    fn not_ready_until_cni_config_then_ready() {
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let t2 = Time(k8s_openapi::jiff::Timestamp::from_second(110).unwrap());
        let st = node_status(&cfg(), Err("no config".into()), None, &t1);
        let r = ready_of(&st);
        assert_eq!(r.status, "False");
        assert_eq!(r.reason.as_deref(), Some("NetworkPluginNotReady"));
        assert_eq!(
            r.message.as_deref(),
            Some("container runtime network not ready: cni config uninitialized")
        );
        let addrs = st.addresses.clone().unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "172.18.0.11");
        assert_eq!(addrs[1].type_, "Hostname");
        assert_eq!(addrs[1].address, "fibril-node-1");

        // Heartbeat without change keeps the transition time.
        let again = node_status(&cfg(), Err("no config".into()), Some(&st), &t2);
        assert_eq!(ready_of(&again).last_transition_time, Some(t1.clone()));
        assert_eq!(ready_of(&again).last_heartbeat_time, Some(t2.clone()));
        let ready = node_status(&cfg(), Ok(()), Some(&again), &t2);
        assert_eq!(ready_of(&ready).status, "True");
        assert_eq!(ready_of(&ready).last_transition_time, Some(t2));
    }

    #[test]
    fn labels_are_kubelets() {
        let l = node_labels("n1");
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert!(!l.keys().any(|k| k.starts_with("node-role")));
    }
}
