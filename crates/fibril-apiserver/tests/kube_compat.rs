//! kube-rs compatibility: unmodified `kube::Api` and `kube::runtime::watcher` against the lab
//! API server, including a restart on the same data directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fibril_apiserver::{ApiServerConfig, RunningApiServer};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fibril_apiserver=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(dir: &Path, addr: SocketAddr) -> ApiServerConfig {
    ApiServerConfig {
        data_dir: dir.join("data"),
        tcp_addr: Some(addr),
        unix_socket: Some(dir.join("run/api.sock")),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        bookmark_interval: Duration::from_millis(200),
    }
}

async fn start(dir: &Path, addr: SocketAddr) -> (RunningApiServer, Client) {
    let server = fibril_apiserver::start(config(dir, addr)).await.unwrap();
    let url = format!("http://{}", server.tcp_addr.unwrap());
    let client = fibril_apiserver::client_for_url(&url).unwrap();
    (server, client)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn pod(name: &str, labels: &[(&str, &str)], node: Option<&str>) -> Pod {
    let labels: BTreeMap<_, _> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut spec = json!({"containers": [{"name": "c", "image": "fibril/echo:1",
                                          "ports": [{"containerPort": 8080}]}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A reflector-like view built from watcher events, so the test can assert what a watcher
/// ends up believing.
#[derive(Default)]
struct View {
    staged: Option<BTreeMap<String, Pod>>,
    pods: BTreeMap<String, Pod>,
    log: Vec<String>,
}

impl View {
    fn apply(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => {
                self.log.push("Init".into());
                self.staged = Some(BTreeMap::new());
            }
            Event::InitApply(p) => {
                self.log.push(format!("InitApply {}", p.name_any()));
                self.staged
                    .get_or_insert_with(BTreeMap::new)
                    .insert(p.name_any(), p);
            }
            Event::InitDone => {
                self.log.push("InitDone".into());
                self.pods = self.staged.take().unwrap_or_default();
            }
            Event::Apply(p) => {
                self.log.push(format!("Apply {}", p.name_any()));
                self.pods.insert(p.name_any(), p);
            }
            Event::Delete(p) => {
                self.log.push(format!("Delete {}", p.name_any()));
                self.pods.remove(&p.name_any());
            }
        }
    }
}

/// Runs a watcher in the background, forwarding its events (errors are retried with kube's
/// default backoff, as a controller would).
fn spawn_watcher(api: Api<Pod>, cfg: watcher::Config) -> mpsc::UnboundedReceiver<Event<Pod>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!("watcher error (will retry): {e}"),
            }
        }
    });
    rx
}

use kube::runtime::watcher::watcher;

/// Feeds events into `view` until `done` holds.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Event<Pod>>,
    view: &mut View,
    what: &str,
    done: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(view) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => view.apply(ev),
            Ok(None) => panic!("watcher ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; log: {:#?}", view.log),
        }
    }
}

fn names(view: &View) -> BTreeSet<String> {
    view.pods.keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Collects a raw watch until the server ends it (its timeout), skipping bookmarks.
async fn drain_watch(api: &Api<Pod>, rv: &str, timeout_secs: u32) -> Vec<(String, String, String)> {
    let wp = WatchParams::default()
        .disable_bookmarks()
        .timeout(timeout_secs);
    let stream = api.watch(&wp, rv).await.unwrap();
    let events: Vec<WatchEvent<Pod>> = tokio::time::timeout(WAIT, stream.try_collect())
        .await
        .expect("watch ends at its timeout")
        .unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            WatchEvent::Added(p) => Some(("ADDED", p)),
            WatchEvent::Modified(p) => Some(("MODIFIED", p)),
            WatchEvent::Deleted(p) => Some(("DELETED", p)),
            WatchEvent::Bookmark(_) => None,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        })
        .map(|(t, p)| (t.to_string(), p.name_any(), p.resource_version().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_crud_watch_bookmarks_and_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(dir.path(), any_port()).await;
    let addr = server.tcp_addr.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Create before the watchers start, so their initial list has something in it.
    let p1 = pods
        .create(&PostParams::default(), &pod("p1", &[("app", "web")], None))
        .await
        .unwrap();
    assert_eq!(
        p1.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(
        p1.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    let port = &p1.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert!(p1.metadata.uid.is_some() && p1.metadata.creation_timestamp.is_some());
    let (code, reason, _) = api_error(
        pods.create(&PostParams::default(), &pod("p1", &[], None))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut list_watch = spawn_watcher(pods.clone(), watcher::Config::default());
    let mut streaming = spawn_watcher(pods.clone(), watcher::Config::default().streaming_lists());
    let mut view = View::default();
    let mut sview = View::default();
    until(&mut list_watch, &mut view, "initial list", |v| {
        v.log.iter().any(|l| l == "InitDone")
    })
    .await;
    assert_eq!(view.log, vec!["Init", "InitApply p1", "InitDone"]);
    until(&mut streaming, &mut sview, "streaming initial list", |v| {
        v.log.iter().any(|l| l == "InitDone")
    })
    .await;
    assert_eq!(sview.log, vec!["Init", "InitApply p1", "InitDone"]);

    // get / list / replace / the three patch types / delete.
    let p2 = pods
        .create(&PostParams::default(), &pod("p2", &[("app", "db")], None))
        .await
        .unwrap();
    assert_eq!(pods.get("p2").await.unwrap().metadata.uid, p2.metadata.uid);
    let listed = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    assert!(listed.metadata.resource_version.is_some());
    let mut p2r = p2.clone();
    p2r.labels_mut().insert("tier".into(), "backend".into());
    let p2r = pods
        .replace("p2", &PostParams::default(), &p2r)
        .await
        .unwrap();
    assert_ne!(p2r.resource_version(), p2.resource_version());
    let (code, reason, msg) = api_error(
        pods.replace("p2", &PostParams::default(), &p2)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{msg}");
    let merged = pods
        .patch(
            "p2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"merged": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.labels()["merged"], "yes");
    assert_eq!(merged.labels()["tier"], "backend");
    let applied = pods
        .patch(
            "p2",
            &PatchParams::apply("kube-compat"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "p2", "annotations": {"applied": "true"}}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.annotations()["applied"], "true");
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels/json", "value": "patched"},
        {"op": "remove", "path": "/metadata/labels/merged"}
    ]))
    .unwrap();
    let jpatched = pods
        .patch("p2", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(jpatched.labels()["json"], "patched");
    assert!(!jpatched.labels().contains_key("merged"));
    // Apply creates a missing object.
    let created = pods
        .patch(
            "p-applied",
            &PatchParams::apply("kube-compat"),
            &Patch::Apply(serde_json::to_value(pod("p-applied", &[], None)).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    // Unscheduled pods go at once.
    let deleted = pods.delete("p2", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    pods.delete("p-applied", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(pods.get("p2").await.unwrap_err()).0, 404);

    // A scheduled pod is deleted gracefully, and removed by a second, zero-grace delete.
    pods.create(&PostParams::default(), &pod("p3", &[], Some("node-1")))
        .await
        .unwrap();
    let graceful = pods
        .delete("p3", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(graceful.metadata.deletion_timestamp.is_some());
    assert_eq!(graceful.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pods.get("p3").await.is_ok());
    until(&mut list_watch, &mut view, "graceful delete seen", |v| {
        v.pods
            .get("p3")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    pods.delete(
        "p3",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(api_error(pods.get("p3").await.unwrap_err()).0, 404);
    until(&mut list_watch, &mut view, "p3 deleted", |v| {
        names(v) == set(&["p1"])
    })
    .await;
    for expected in [
        "Apply p2",
        "Delete p2",
        "Apply p-applied",
        "Delete p-applied",
        "Delete p3",
    ] {
        assert!(
            view.log.iter().any(|l| l == expected),
            "{expected} missing: {:#?}",
            view.log
        );
    }
    until(
        &mut streaming,
        &mut sview,
        "streaming watcher catches up",
        |v| names(v) == set(&["p1"]),
    )
    .await;

    // Bookmarks on a raw watch.
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut raw = pods
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(10),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let bookmark = tokio::time::timeout(WAIT, async {
        while let Some(ev) = raw.try_next().await.unwrap() {
            if let WatchEvent::Bookmark(b) = ev {
                return b;
            }
        }
        panic!("watch ended without a bookmark");
    })
    .await
    .unwrap();
    assert_eq!(bookmark.metadata.resource_version, rv);
    assert_eq!(bookmark.types.kind, "Pod");
    drop(raw);

    // The unix socket serves the same API.
    let sock_client =
        fibril_apiserver::client_for_socket(&dir.path().join("run/api.sock")).unwrap();
    let sock_pods: Api<Pod> = Api::namespaced(sock_client, "default");
    assert_eq!(
        sock_pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Restart on the same data dir and address; the watchers keep running and retry.
    let rv_before = rv;
    server.shutdown().await;
    let (server, _client) = start(dir.path(), addr).await;
    assert_eq!(server.tcp_addr, Some(addr));

    pods.create(&PostParams::default(), &pod("p4", &[("app", "web")], None))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("p5", &[], None))
        .await
        .unwrap();
    pods.patch(
        "p4",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .unwrap();
    pods.delete("p5", &DeleteParams::default()).await.unwrap();

    let expect_final = |v: &View| {
        names(v) == set(&["p1", "p4"])
            && v.pods["p4"].labels().get("v").map(String::as_str) == Some("2")
    };
    until(
        &mut list_watch,
        &mut view,
        "watcher converges after restart",
        expect_final,
    )
    .await;
    until(
        &mut streaming,
        &mut sview,
        "streaming watcher converges after restart",
        expect_final,
    )
    .await;

    // A watch resumed from the last resourceVersion seen before the restart gets exactly the
    // events after it: in order, no duplicates, no losses.
    let events = drain_watch(&pods, &rv_before, 2).await;
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ADDED", "p4"),
            ("ADDED", "p5"),
            ("MODIFIED", "p4"),
            ("DELETED", "p5")
        ]
    );
    let revs: Vec<u64> = events
        .iter()
        .map(|(_, _, rv)| rv.parse().unwrap())
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert!(revs[0] > rv_before.parse::<u64>().unwrap());

    // And the objects themselves survived.
    let p1_again = pods.get("p1").await.unwrap();
    assert_eq!(p1_again.metadata.uid, p1.metadata.uid);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_selectors_errors_and_cascades_over_tcp() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(dir.path(), any_port()).await;
    services_selectors_errors_and_cascades(client).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_selectors_errors_and_cascades_over_unix_socket() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (server, _tcp) = start(dir.path(), any_port()).await;
    let client = fibril_apiserver::client_for_socket(&dir.path().join("run/api.sock")).unwrap();
    services_selectors_errors_and_cascades(client).await;
    server.shutdown().await;
}

async fn services_selectors_errors_and_cascades(client: Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // Services: ClusterIP from the range, defaults, NodePorts, conflicts.
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.clone().unwrap();
    let ip: std::net::Ipv4Addr = spec.cluster_ip.clone().unwrap().parse().unwrap();
    let cidr: ipnet::Ipv4Net = "10.96.0.0/16".parse().unwrap();
    assert!(cidr.contains(&ip) && ip != cidr.network(), "{ip}");
    assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );

    let np: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP", "name": "dns"},
                                                                          {"port": 53, "name": "dns-tcp"}]}
    }))
    .unwrap();
    let np = svcs.create(&PostParams::default(), &np).await.unwrap();
    let nps: Vec<i32> = np
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.node_port.unwrap())
        .collect();
    assert!(
        nps.iter().all(|p| (30000..=32767).contains(p)) && nps[0] != nps[1],
        "{nps:?}"
    );
    assert_eq!(np.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    let taken: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
    }))
    .unwrap();
    let (code, reason, msg) = api_error(
        svcs.create(&PostParams::default(), &taken)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.contains("spec.clusterIP") && msg.contains("already allocated"),
        "{msg}"
    );
    // Deleting frees the address.
    svcs.delete("np", &DeleteParams::default()).await.unwrap();
    svcs.create(&PostParams::default(), &taken).await.unwrap();

    // Label and field selectors on list and watch.
    pods.create(
        &PostParams::default(),
        &pod("a1", &[("app", "a")], Some("node-1")),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("a2", &[("app", "a"), ("tier", "fe")], None),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("b1", &[("app", "b")], Some("node-2")),
    )
    .await
    .unwrap();
    let names_of = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
        l.items.iter().map(|p| p.name_any()).collect()
    };
    assert_eq!(
        names_of(
            pods.list(&ListParams::default().labels("app=a"))
                .await
                .unwrap()
        ),
        vec!["a1", "a2"]
    );
    assert_eq!(
        names_of(
            pods.list(&ListParams::default().labels("app in (a,b),!tier"))
                .await
                .unwrap()
        ),
        vec!["a1", "b1"]
    );
    assert_eq!(
        names_of(
            pods.list(&ListParams::default().labels("app!=a"))
                .await
                .unwrap()
        ),
        vec!["b1"]
    );
    assert_eq!(
        names_of(
            pods.list(&ListParams::default().fields("spec.nodeName=node-1"))
                .await
                .unwrap()
        ),
        vec!["a1"]
    );
    assert_eq!(
        names_of(
            pods.list(&ListParams::default().fields("metadata.name!=a1,status.phase=Pending"))
                .await
                .unwrap()
        ),
        vec!["a2", "b1"]
    );
    let (code, reason, _) = api_error(
        pods.list(&ListParams::default().labels("app in a"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));

    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default()
        .labels("app=a")
        .disable_bookmarks()
        .timeout(2);
    let stream = pods.watch(&wp, &rv).await.unwrap();
    pods.patch(
        "a1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "b"}}})),
    )
    .await
    .unwrap();
    pods.patch(
        "b1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "a"}}})),
    )
    .await
    .unwrap();
    pods.patch(
        "a2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    let evs: Vec<WatchEvent<Pod>> = tokio::time::timeout(WAIT, stream.try_collect())
        .await
        .unwrap()
        .unwrap();
    let summary: Vec<String> = evs
        .iter()
        .map(|e| match e {
            WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.name_any()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.name_any()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(summary, vec!["DELETED a1", "ADDED b1", "MODIFIED a2"]);

    let fw = WatchParams::default()
        .fields("spec.nodeName=node-2")
        .disable_bookmarks()
        .timeout(1);
    let evs: Vec<WatchEvent<Pod>> =
        tokio::time::timeout(WAIT, pods.watch(&fw, "0").await.unwrap().try_collect())
            .await
            .unwrap()
            .unwrap();
    assert!(
        matches!(evs.as_slice(), [WatchEvent::Added(p)] if p.name_any() == "b1"),
        "{evs:?}"
    );

    // 404 naming the missing namespace.
    let nowhere: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    let (code, reason, msg) = api_error(
        nowhere
            .create(&PostParams::default(), &pod("x", &[], None))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert!(msg.contains("namespaces \"nowhere\" not found"), "{msg}");

    // Strict decoding: an unknown field is a 422 naming its path.
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod"));
    let dyn_pods: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicyy": "Always",
                                 "ports": [{"containerPort": "http"}]}]}
    }))
    .unwrap();
    let (code, reason, msg) = api_error(
        dyn_pods
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{msg}");
    assert!(
        msg.contains("spec.containers[0].ports[0].containerPort"),
        "{msg}"
    );

    let bad2: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicyy": "Always"}]}
    }))
    .unwrap();
    let (code, _, msg) = api_error(
        dyn_pods
            .create(&PostParams::default(), &bad2)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec.containers[0].imagePullPolicyy: unknown field"),
        "{msg}"
    );

    // Deployments: defaults, generation, status subresource.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "fibril/echo"}]}}}
    }))
    .unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.spec.replicas, Some(1));
    let d2 = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (d2.metadata.generation, d2.spec.replicas),
        (Some(2), Some(3))
    );
    assert!(d2.status.is_none(), "main resource writes ignore status");
    let d3 = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 2, "replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(d3.metadata.generation, Some(2));
    assert_eq!(d3.status.unwrap().replicas, Some(3));

    // Owner references cascade: deleting the deployment deletes its pod.
    let mut owned = pod("owned", &[("app", "web")], None);
    owned.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: d.metadata.uid.clone().unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    pods.create(&PostParams::default(), &owned).await.unwrap();
    let status = deploys
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        status.is_right(),
        "deployments answer deletes with a Status"
    );
    assert_eq!(api_error(pods.get("owned").await.unwrap_err()).0, 404);

    // Namespaces: create, fill, delete (cascade), and the protected ones.
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(ns.labels()["kubernetes.io/metadata.name"], "team");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let team: Api<Pod> = Api::namespaced(client.clone(), "team");
    team.create(&PostParams::default(), &pod("t1", &[], None))
        .await
        .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(team.get("t1").await.unwrap_err()).0, 404);
    assert_eq!(api_error(nss.get("team").await.unwrap_err()).0, 404);
    let (code, reason, _) = api_error(
        nss.delete("default", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    let all: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(
        all.contains(&"default".to_string()) && all.contains(&"kube-system".to_string()),
        "{all:?}"
    );

    // Finalizers hold deletion until they are removed.
    let mut fin = pod("fin", &[], None);
    fin.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    pods.create(&PostParams::default(), &fin).await.unwrap();
    let pending = pods
        .delete("fin", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(pending.metadata.deletion_timestamp.is_some());
    pods.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(pods.get("fin").await.unwrap_err()).0, 404);

    // All-namespaces list and discovery.
    let everywhere: Api<Pod> = Api::all(client.clone());
    assert!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            >= 3
    );
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
        ))
        .unwrap();
    assert_eq!(ar.plural, "networkpolicies");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    // Creating with a resourceVersion is refused, as kube-apiserver does.
    let mut with_rv = pod("with-rv", &[], None);
    with_rv.metadata.resource_version = Some("5".into());
    let (code, _, _) = api_error(
        pods.create(&PostParams::default(), &with_rv)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_makes_the_watcher_relist() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = fibril_apiserver::start_with_history(config(dir.path(), any_port()), 5)
        .await
        .unwrap();
    let client =
        fibril_apiserver::client_for_url(&format!("http://{}", server.tcp_addr.unwrap())).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("first", &[], None))
        .await
        .unwrap();
    let old_rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // The server ends each watch after a second; the watcher is not polled meanwhile.
    let mut w = watcher(pods.clone(), watcher::Config::default().timeout(1)).boxed();
    let mut log = Vec::new();
    while !log.contains(&"InitDone".to_string()) {
        let ev = tokio::time::timeout(WAIT, w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        log.push(format!("{ev:?}").split('(').next().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..8 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("later-{i}"), &[], None),
        )
        .await
        .unwrap();
    }

    // A raw watch from the compacted revision gets one ERROR event: 410 Expired.
    let events: Vec<WatchEvent<Pod>> = tokio::time::timeout(
        WAIT,
        pods.watch(&WatchParams::default().timeout(5), &old_rv)
            .await
            .unwrap()
            .take(1)
            .try_collect(),
    )
    .await
    .unwrap()
    .unwrap();
    match &events[..] {
        [WatchEvent::Error(e)] => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }

    // The watcher resumes from its (now compacted) revision, gets 410, and relists.
    let mut relisted = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut saw_init = false;
    loop {
        match tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("relist in time")
        {
            Some(Ok(Event::Init)) => saw_init = true,
            Some(Ok(Event::InitApply(p))) if saw_init => {
                relisted.insert(p.name_any());
            }
            Some(Ok(Event::InitDone)) if saw_init => break,
            Some(Err(e)) => tracing::debug!("expected watcher error: {e}"),
            Some(Ok(_)) => {}
            None => panic!("watcher ended"),
        }
    }
    assert_eq!(relisted.len(), 9, "{relisted:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_endpoints_discovery_and_metadata() {
    use hyper::http::Request;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(dir.path(), any_port()).await;
    let get = |path: &str| Request::get(path).body(Vec::new()).unwrap();

    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(client.request_text(get(path)).await.unwrap(), "ok");
    }
    let (code, reason, _) = api_error(
        client
            .request_text(get("/api/v1/namespaces/default/widgets"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let group: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup =
        client.request(get("/apis/apps")).await.unwrap();
    assert_eq!(group.preferred_version.unwrap().group_version, "apps/v1");
    let core = client.list_core_api_versions_aggregated().await.unwrap();
    let resources = &core.items[0].versions[0].resources;
    assert!(resources
        .iter()
        .any(|r| r.resource.as_deref() == Some("pods")));
    let groups = client.list_api_groups_aggregated().await.unwrap();
    assert!(groups
        .items
        .iter()
        .any(|g| g.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("discovery.k8s.io")));

    let (code, _, _) = api_error(
        client
            .request_text(Request::post("/api/v1/pods").body(b"{}".to_vec()).unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 405);

    // YAML bodies are accepted like kubectl sends them.
    let yaml = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: from-yaml\nspec:\n  containers:\n  - name: c\n    image: fibril/echo\n";
    let created: Pod = client
        .request(
            Request::post("/api/v1/namespaces/default/pods")
                .header("content-type", "application/yaml")
                .body(yaml.to_vec())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.name_any(), "from-yaml");
    let put_binding = Request::put("/api/v1/namespaces/default/pods/from-yaml/binding")
        .header("content-type", "application/json")
        .body(b"{}".to_vec())
        .unwrap();
    assert_eq!(
        api_error(client.request_text(put_binding).await.unwrap_err()).0,
        405
    );

    // Binding through kube-rs' subresource call.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "from-yaml"},
                         "target": {"kind": "Node", "name": "node-1"}});
    let _: kube::core::Status = pods
        .create_subresource("binding", "from-yaml", &PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(
        pods.get("from-yaml")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("node-1")
    );

    // Watching one object by name.
    let one: Vec<serde_json::Value> = {
        let text = client
            .request_text(get(
                "/api/v1/namespaces/default/pods/from-yaml?watch=true&timeoutSeconds=1",
            ))
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["type"], "ADDED");
    assert_eq!(one[0]["object"]["metadata"]["name"], "from-yaml");

    // Metadata-only reads.
    let metas = pods.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(metas.items[0].metadata.name.as_deref(), Some("from-yaml"));
    let meta = pods.get_metadata("from-yaml").await.unwrap();
    assert_eq!(meta.metadata.name.as_deref(), Some("from-yaml"));

    // Exact reads of an old revision are gone; revisions from the future time out.
    let (code, reason, _) = api_error(
        client
            .request_text(get(
                "/api/v1/namespaces/default/pods?resourceVersion=1&resourceVersionMatch=Exact",
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    // A revision this store never reached (a reset data dir) makes clients list again.
    let events: Vec<WatchEvent<Pod>> = tokio::time::timeout(
        WAIT,
        pods.watch(&WatchParams::default(), "999999")
            .await
            .unwrap()
            .try_collect(),
    )
    .await
    .unwrap()
    .unwrap();
    match &events[..] {
        [WatchEvent::Error(e)] => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
    let (code, _, _) = api_error(
        client
            .request_text(get(
                "/api/v1/namespaces/default/pods?resourceVersion=999999",
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 410);

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_when_the_store_is_reset() {
    init_tracing();
    let dir_a = tempfile::tempdir().unwrap();
    let (server, client) = start(dir_a.path(), any_port()).await;
    let addr = server.tcp_addr.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("old-{i}"), &[], None))
            .await
            .unwrap();
    }
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default());
    let mut view = View::default();
    until(&mut rx, &mut view, "initial list", |v| v.pods.len() == 5).await;

    // A new server on the same address with an empty data directory: its revisions are far
    // behind the ones the watcher holds.
    server.shutdown().await;
    let dir_b = tempfile::tempdir().unwrap();
    let (server, _) = start(dir_b.path(), addr).await;
    pods.create(&PostParams::default(), &pod("fresh", &[], None))
        .await
        .unwrap();
    until(&mut rx, &mut view, "relist against the new store", |v| {
        names(v) == set(&["fresh"])
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_in_pages_of_limit_with_continue_tokens() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = fibril_apiserver::start_with_history(config(dir.path(), any_port()), 6)
        .await
        .unwrap();
    let client =
        fibril_apiserver::client_for_url(&format!("http://{}", server.tcp_addr.unwrap())).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..7 {
        let labels: &[(&str, &str)] = if i % 2 == 0 { &[("even", "y")] } else { &[] };
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), labels, None))
            .await
            .unwrap();
    }

    // Pages of 3: 3 + 3 + 1, in name order, every page at the first page's revision.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut revs = BTreeSet::new();
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(3);
        lp.continue_token = token.clone();
        let page = pods.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|p| p.name_any()));
        revs.insert(page.metadata.resource_version.clone().unwrap());
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
        // A change between pages is not in this list's revision; the watch replays it.
        if pages == 1 {
            pods.create(&PostParams::default(), &pod("p9", &[], None))
                .await
                .unwrap();
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p9"]);
    assert_eq!(revs.len(), 1, "one revision for the whole list: {revs:?}");

    // A label selector pages over the matching objects only.
    let even = pods
        .list(&ListParams::default().labels("even=y").limit(2))
        .await
        .unwrap();
    assert_eq!(
        even.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["p0", "p2"]
    );
    assert!(even
        .metadata
        .continue_
        .as_ref()
        .is_some_and(|t| !t.is_empty()));

    // kube-rs' watcher lists in pages and sees everything once.
    let mut w = watcher(pods.clone(), watcher::Config::default().page_size(2)).boxed();
    let mut listed = BTreeSet::new();
    loop {
        match tokio::time::timeout(WAIT, w.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Event::InitApply(p)) => assert!(listed.insert(p.name_any())),
            Some(Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(listed.len(), 8);

    // A token whose revision the history no longer covers is 410 Expired; a bad one is 400.
    let mut lp = ListParams::default().limit(2);
    lp.continue_token = even.metadata.continue_.clone();
    for i in 0..8 {
        pods.create(&PostParams::default(), &pod(&format!("q{i}"), &[], None))
            .await
            .unwrap();
    }
    let (code, reason, _) = api_error(pods.list(&lp).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    lp.continue_token = Some("zz".into());
    let (code, _, _) = api_error(pods.list(&lp).await.unwrap_err());
    assert_eq!(code, 400);
    server.shutdown().await;
}
