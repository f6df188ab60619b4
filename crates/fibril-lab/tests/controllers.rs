//! The lab controllers against a real fibril API server on 127.0.0.1 (no root needed):
//! node IPAM, scheduling and spreading, EndpointSlices that track readiness,
//! termination and named ports, and a Deployment scaling and rolling its template.
//!
//! There is no kubelet here: the test plays it, writing pod status and finishing the
//! graceful deletion of pods that the API server marked terminating.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use fibril_core::lab::{LabLayout, LabSpec};
use fibril_lab::controllers;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

async fn add_node(client: &Client, name: &str, ready: bool, labels: BTreeMap<&str, &str>) {
    let api: Api<Node> = Api::all(client.clone());
    let mut l: BTreeMap<String, String> = labels
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    l.insert("kubernetes.io/hostname".into(), name.into());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    set_node_ready(client, name, ready).await;
}

async fn set_node_ready(client: &Client, name: &str, ready: bool) {
    let api: Api<Node> = Api::all(client.clone());
    let status = if ready { "True" } else { "False" };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": status}]}})),
    )
    .await
    .unwrap();
}

fn pod_json(name: &str, labels: serde_json::Value, ports: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "fibril/echo", "ports": ports}]}
    }))
    .unwrap()
}

/// Plays the kubelet for one pod: IP and readiness.
async fn set_pod_status(client: &Client, name: &str, ip: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = if ready { "True" } else { "False" };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": status}
            ]
        }})),
    )
    .await
    .unwrap();
}

/// Plays the kubelet's last step of graceful deletion for every terminating pod,
/// except those named in `hold`.
async fn finish_deletions(client: &Client, hold: &[&str]) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pods = api.list(&ListParams::default()).await.unwrap().items;
    for p in pods {
        let name = p.metadata.name.clone().unwrap();
        if p.metadata.deletion_timestamp.is_some() && !hold.contains(&name.as_str()) {
            let _ = api
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
}

async fn slices_of(client: &Client, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
}

/// (address, ready, serving, terminating, ports) for every endpoint of the Service.
type EpRow = (String, bool, bool, bool, Vec<i32>);

async fn endpoints_of(client: &Client, svc: &str) -> BTreeSet<EpRow> {
    let mut out = BTreeSet::new();
    for s in slices_of(client, svc).await {
        let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            out.insert((
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
                ports.clone(),
            ));
        }
    }
    out
}

fn row(ip: &str, ready: bool, serving: bool, terminating: bool, ports: &[i32]) -> EpRow {
    (ip.into(), ready, serving, terminating, ports.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_drive_a_real_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LabSpec {
        nodes: 3,
        ..LabSpec::default()
    };
    let layout: LabLayout = spec.layout();
    let server = fibril_apiserver::start(fibril_apiserver::ApiServerConfig {
        data_dir: dir.path().join("api"),
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        unix_socket: None,
        service_cidr: layout.spec.service_cidr,
        bookmark_interval: Duration::from_secs(1),
    })
    .await
    .expect("starting the API server");
    let url = format!("http://{}", server.tcp_addr.unwrap());
    let client = fibril_apiserver::client_for_url(&url).unwrap();
    ensure_namespace(&client, "default").await;

    let ctrl = tokio::spawn(controllers::run(client.clone(), layout.clone()));

    // --- Node IPAM: node-2 registers first and still gets its own block.
    let (n1, n2, n3) = (
        layout.node_name(1),
        layout.node_name(2),
        layout.node_name(3),
    );
    add_node(&client, &n2, true, BTreeMap::new()).await;
    add_node(&client, &n1, true, BTreeMap::new()).await;
    add_node(&client, "extra", false, BTreeMap::new()).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let cidrs = eventually("pod CIDRs", || async {
        let mut m = BTreeMap::new();
        for n in nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
        {
            let spec = n.spec.unwrap_or_default();
            let c = spec.pod_cidr.ok_or("no podCIDR yet")?;
            assert_eq!(spec.pod_cidrs, Some(vec![c.clone()]));
            m.insert(n.metadata.name.unwrap(), c);
        }
        Ok::<_, String>(m)
    })
    .await;
    assert_eq!(cidrs[&n1], "10.244.0.0/24");
    assert_eq!(cidrs[&n2], "10.244.1.0/24");
    // Not a lab node: the first block not in use.
    assert_eq!(cidrs["extra"], "10.244.2.0/24");
    nodes
        .delete("extra", &DeleteParams::default())
        .await
        .unwrap();

    // --- Scheduling: spread over the Ready nodes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..4 {
        let p = pod_json(&format!("spread-{i}"), json!({"app": "spread"}), json!([]));
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let placed = eventually("spread pods scheduled", || async {
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        for p in pods
            .list(&ListParams::default().labels("app=spread"))
            .await
            .map_err(|e| e.to_string())?
            .items
        {
            let n = p.spec.unwrap().node_name.ok_or("unscheduled pod")?;
            *by_node.entry(n).or_default() += 1;
        }
        Ok::<_, String>(by_node)
    })
    .await;
    assert_eq!(placed, BTreeMap::from([(n1.clone(), 2), (n2.clone(), 2)]));

    // A pod whose nodeSelector matches nothing stays Pending, saying why.
    let mut picky = pod_json("picky", json!({"app": "picky"}), json!([]));
    picky.spec.as_mut().unwrap().node_selector =
        Some([("disk".to_string(), "ssd".to_string())].into());
    pods.create(&PostParams::default(), &picky).await.unwrap();
    let msg = eventually("Unschedulable condition", || async {
        let p = pods.get("picky").await.map_err(|e| e.to_string())?;
        let c = p
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled"))
            .ok_or("no PodScheduled condition")?;
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
        Ok::<_, String>(c.message.unwrap_or_default())
    })
    .await;
    assert!(
        msg.starts_with("0/2 nodes are available:") && msg.contains("node affinity/selector"),
        "{msg}"
    );
    // A matching node that is not Ready does not help; once Ready, the pod lands there.
    add_node(&client, &n3, false, BTreeMap::from([("disk", "ssd")])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pods.get("picky").await.unwrap().spec.unwrap().node_name,
        None
    );
    set_node_ready(&client, &n3, true).await;
    eventually("picky scheduled on node 3", || async {
        let n = pods
            .get("picky")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .unwrap()
            .node_name;
        (n.as_deref() == Some(n3.as_str()))
            .then_some(())
            .ok_or(format!("on {n:?}"))
    })
    .await;
    let picky = pods.get("picky").await.unwrap();
    let sched = picky
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled"))
        .unwrap();
    assert_eq!(sched.status, "True");

    // --- EndpointSlices: named targetPort resolved per pod.
    let web = |name: &str, ports: serde_json::Value| pod_json(name, json!({"app": "web"}), ports);
    pods.create(
        &PostParams::default(),
        &web("web-a", json!([{"name": "http", "containerPort": 8080}])),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &web("web-b", json!([{"name": "http", "containerPort": 9090}])),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &web("web-c", json!([{"name": "other", "containerPort": 7070}])),
    )
    .await
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    // No pod has an IP yet: one empty placeholder slice.
    eventually("placeholder slice", || async {
        let s = slices_of(&client, "web").await;
        (s.len() == 1 && s[0].endpoints.iter().flatten().count() == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    set_pod_status(&client, "web-a", "10.244.0.10", true).await;
    set_pod_status(&client, "web-b", "10.244.1.10", false).await;
    set_pod_status(&client, "web-c", "10.244.2.10", true).await;
    let want = BTreeSet::from([
        row("10.244.0.10", true, true, false, &[8080]),
        row("10.244.1.10", false, false, false, &[9090]),
        row("10.244.2.10", true, true, false, &[]),
    ]);
    eventually("slices track pods", || async {
        let got = endpoints_of(&client, "web").await;
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    let slices = slices_of(&client, "web").await;
    assert_eq!(slices.len(), 3, "one slice per resolved port set");
    for s in &slices {
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "Service");
        assert_eq!(Some(&owner.uid), svc.metadata.uid.as_ref());
        for e in s.endpoints.iter().flatten() {
            assert!(e.node_name.is_some());
            assert_eq!(e.target_ref.as_ref().unwrap().kind.as_deref(), Some("Pod"));
        }
    }
    // Readiness flips; a terminating pod stays listed, not ready but serving.
    set_pod_status(&client, "web-b", "10.244.1.10", true).await;
    pods.delete("web-a", &DeleteParams::default())
        .await
        .unwrap();
    let want = BTreeSet::from([
        row("10.244.0.10", false, true, true, &[8080]),
        row("10.244.1.10", true, true, false, &[9090]),
        row("10.244.2.10", true, true, false, &[]),
    ]);
    eventually("terminating endpoint", || async {
        let got = endpoints_of(&client, "web").await;
        (got == want).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    finish_deletions(&client, &[]).await;
    eventually("deleted pod leaves the slices", || async {
        let got = endpoints_of(&client, "web").await;
        (got.len() == 2 && !got.iter().any(|r| r.0 == "10.244.0.10"))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;
    // The Service goes, its slices follow.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("slices of a deleted Service removed", || async {
        let s = slices_of(&client, "web").await;
        s.is_empty()
            .then_some(())
            .ok_or(format!("{} left", s.len()))
    })
    .await;
    // A Service without a selector is left alone.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &manual).await.unwrap();

    // --- Deployment: 3 → 1 → 2, then a template change replaces every pod.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "c", "image": "fibril/echo"}]}
            }
        }
    }))
    .unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    let uid = d.metadata.uid.clone().unwrap();

    let api_pods = |want: usize| {
        let pods = pods.clone();
        let client = client.clone();
        let uid = uid.clone();
        async move {
            eventually(&format!("{want} api pods"), || async {
                finish_deletions(&client, &[]).await;
                let items = pods
                    .list(&ListParams::default().labels("app=api"))
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                let live: Vec<Pod> = items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                if live.len() != want {
                    return Err(format!("{} pods", live.len()));
                }
                for p in &live {
                    let o = &p.metadata.owner_references.as_ref().unwrap()[0];
                    assert_eq!(
                        (o.kind.as_str(), o.uid.as_str(), o.controller),
                        ("Deployment", uid.as_str(), Some(true))
                    );
                }
                Ok::<_, String>(live)
            })
            .await
        }
    };
    let first = api_pods(3).await;
    let hash = first[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    for p in &first {
        let name = p.metadata.name.clone().unwrap();
        let prefix = format!("api-{hash}-");
        assert!(
            name.starts_with(&prefix) && name.len() == prefix.len() + 5,
            "{name}"
        );
    }
    // Make the pods ready (as kubelets would) and watch the status follow.
    for p in &first {
        set_pod_status(
            &client,
            p.metadata.name.as_deref().unwrap(),
            "10.244.0.50",
            true,
        )
        .await;
    }
    eventually("deployment status", || async {
        let st = deploys
            .get("api")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let ok = st.replicas == Some(3)
            && st.ready_replicas == Some(3)
            && st.available_replicas == Some(3)
            && st.updated_replicas == Some(3)
            && st.observed_generation == d.metadata.generation;
        ok.then_some(()).ok_or(format!("{st:?}"))
    })
    .await;

    let scale = |n: i32| {
        let deploys = deploys.clone();
        async move {
            deploys
                .patch(
                    "api",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
                .unwrap()
        }
    };
    scale(1).await;
    let one = api_pods(1).await;
    scale(2).await;
    let two = api_pods(2).await;
    assert!(two.iter().any(|p| p.metadata.name == one[0].metadata.name));

    // Template change: every pod is replaced by one with the new hash.
    let changed = deploys
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"labels": {"app": "api", "v": "2"}}}}}),
            ),
        )
        .await
        .unwrap();
    let new = eventually("pods with the new template", || async {
        let live = api_pods(2).await;
        let hashes: BTreeSet<String> = live
            .iter()
            .map(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone())
            .collect();
        (hashes.len() == 1 && !hashes.contains(&hash))
            .then_some(live)
            .ok_or(format!("{hashes:?}"))
    })
    .await;
    assert!(new
        .iter()
        .all(|p| p.metadata.labels.as_ref().unwrap()["v"] == "2"));
    eventually("status after the rollout", || async {
        let st = deploys
            .get("api")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let ok = st.replicas == Some(2)
            && st.updated_replicas == Some(2)
            && st.ready_replicas.is_none()
            && st.observed_generation == changed.metadata.generation;
        ok.then_some(()).ok_or(format!("{st:?}"))
    })
    .await;

    // Deleting the Deployment garbage-collects its pods.
    deploys
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    api_pods(0).await;

    // The selector-less Service never got a controller-managed slice.
    assert!(slices_of(&client, "manual").await.is_empty());
    if ctrl.is_finished() {
        panic!("controllers stopped: {:?}", ctrl.await);
    }
    ctrl.abort();
}
