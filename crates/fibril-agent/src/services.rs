//! Services on this node: the kube-proxy replacement's control loop.
//!
//! It watches Services and EndpointSlices through kube-rs, translates them for this node
//! ([`fibril_core::services::translate`]) and makes the datapath's service maps hold the
//! result ([`crate::dataplane::Dataplane::sync_services`]). Bursts of changes are
//! debounced into one sync; a sync only happens when the table differs from the last one
//! synced, and a failed sync is retried.
//!
//! Nothing is synced before both watches have listed everything once: after a restart the
//! maps still hold the previous agent's table (pinned), and a sync from half-listed state
//! would drop Services that are only not listed yet.
//!
//! A refused externalIP (CVE-2020-8554 guard) is logged and recorded as a Kubernetes
//! Warning Event on its Service, once per appearance; every problem is shown by
//! `fibril status`.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_core::services::translate::{translate, Problem, TranslateConfig, Translation};
use fibril_core::services::ServiceTable;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::agent::Agent;
use crate::status::ServicesStatus;

/// How long a wake-up waits for more changes before translating.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A translation at least this often, even without events (it syncs only on a difference).
const RESYNC: Duration = Duration::from_secs(30);
/// Pause after a failed sync before the next attempt.
const RETRY: Duration = Duration::from_secs(1);
/// The reason of the Event a refused externalIP gets.
pub const EXTERNAL_IP_REFUSED_REASON: &str = "ExternalIPRefused";
/// The component named in the Events the agent records.
pub const EVENT_COMPONENT: &str = "fibril-agent";

/// The translation settings of this agent's node.
pub fn translate_config(agent: &Agent, node_ip: Ipv4Addr) -> TranslateConfig {
    let config = agent.config();
    TranslateConfig {
        node_name: config.node_name.as_str().to_string(),
        node_ip,
        allowed_external_ips: config.services.allowed_external_ips.clone(),
        proxy_name: config.services.proxy_name.clone(),
    }
}

/// Watches `api` into a store, waking `wake` on every change (and once the first list
/// is complete). Watch errors are retried with backoff and passed to `on_error`.
pub(crate) fn watch_into<K>(
    api: Api<K>,
    wake: Arc<Notify>,
    on_error: impl Fn(String) + Send + 'static,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store::<K>();
    let fut = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => wake.notify_one(),
                Err(e) => on_error(e.to_string()),
            }
            async {}
        });
    (reader, fut)
}

/// Runs until aborted: watch, translate, sync, report. `publish` receives every new
/// status.
pub async fn run(
    agent: Arc<Agent>,
    client: kube::Client,
    node_ip: Ipv4Addr,
    publish: impl Fn(ServicesStatus) + Send + Sync + 'static,
) {
    let cfg = translate_config(&agent, node_ip);
    let publish = Arc::new(publish);
    let wake = Arc::new(Notify::new());
    let watch_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let on_error = |what: &'static str| {
        let slot = watch_error.clone();
        move |e: String| {
            tracing::warn!(error = %e, "{what} watch");
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what} watch: {e}"));
        }
    };
    let (services, svc_watch) =
        watch_into::<Service>(Api::all(client.clone()), wake.clone(), on_error("Service"));
    let (slices, slice_watch) = watch_into::<EndpointSlice>(
        Api::all(client.clone()),
        wake.clone(),
        on_error("EndpointSlice"),
    );
    let _watches = (
        AbortOnDrop(tokio::spawn(svc_watch)),
        AbortOnDrop(tokio::spawn(slice_watch)),
    );

    let mut status = ServicesStatus {
        waiting_for: Some("the first list of Services and EndpointSlices".into()),
        ..ServicesStatus::default()
    };
    publish(status.clone());
    if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        tracing::error!("the Service or EndpointSlice watch ended before its first list");
        return;
    }
    status.waiting_for = None;
    tracing::info!(node = %cfg.node_name, %node_ip, "services: watching; first sync");

    let mut synced: Option<ServiceTable> = None;
    let mut evented: BTreeSet<(String, String, String)> = BTreeSet::new();
    loop {
        let svcs: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let eps: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        let t = translate(&svcs, &eps, &cfg);
        report_refusals(&client, &cfg, &t, &svcs, &mut evented).await;

        let mut failed = false;
        if synced.as_ref() != Some(&t.table) {
            let started = Instant::now();
            let res = tokio::task::block_in_place(|| match agent.dataplane() {
                Some(mut dp) => dp.sync_services(&t.table).map_err(|e| e.to_string()),
                None => Err("the dataplane is not loaded".to_string()),
            });
            match res {
                Ok(stats) => {
                    tracing::info!(
                        services = t.services.len(),
                        frontends = t.table.entries.len(),
                        added = stats.added,
                        updated = stats.updated,
                        removed = stats.removed,
                        conntrack_flushed = stats.conntrack_flushed,
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "service maps synced"
                    );
                    for s in &stats.skipped {
                        tracing::warn!(service = %s.service, frontend = %s.frontend, "not programmed: {}", s.reason);
                    }
                    status.datapath_skipped = stats
                        .skipped
                        .iter()
                        .map(|s| {
                            format!(
                                "Service {} {}: not programmed: {}",
                                s.service, s.frontend, s.reason
                            )
                        })
                        .collect();
                    status.sync_error = None;
                    status.last_sync = Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    );
                    status.last_sync_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    synced = Some(t.table.clone());
                }
                Err(e) => {
                    // Retried every second: logged when it changes, always in status.
                    if status.sync_error.as_ref() != Some(&e) {
                        tracing::error!(error = %e, "syncing the service maps");
                    }
                    status.sync_error = Some(e);
                    failed = true;
                }
            }
        }
        status.fill(&t);
        status.watch_error = watch_error.lock().unwrap_or_else(|p| p.into_inner()).take();
        publish(status.clone());

        let pause = if failed { RETRY } else { RESYNC };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

impl ServicesStatus {
    /// Counts and problems from a translation.
    fn fill(&mut self, t: &Translation) {
        self.services = t.services.len();
        self.frontends = t.table.entries.len();
        let backends: BTreeSet<(Ipv4Addr, u16)> = t
            .table
            .entries
            .iter()
            .flat_map(|e| e.backends.iter().map(|b| (b.ip, b.port)))
            .collect();
        self.backends = backends.len();
        self.without_backends = t
            .table
            .entries
            .iter()
            .filter(|e| e.backends.is_empty())
            .count();
        self.skipped = t
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.service, s.reason))
            .collect();
        self.problems = t.problems.iter().map(Problem::to_string).collect();
    }
}

/// Logs and records an Event for every refused externalIP not reported yet; forgets
/// those that went away (so a refusal that comes back is reported again).
async fn report_refusals(
    client: &kube::Client,
    cfg: &TranslateConfig,
    t: &Translation,
    services: &[Service],
    evented: &mut BTreeSet<(String, String, String)>,
) {
    let now: BTreeSet<(String, String, String)> = t
        .problems
        .iter()
        .filter(|p| p.is_refused_external_ip())
        .map(|p| (p.service.to_string(), p.field.clone(), p.to_string()))
        .collect();
    evented.retain(|k| now.contains(k));
    for p in t.problems.iter().filter(|p| p.is_refused_external_ip()) {
        let key = (p.service.to_string(), p.field.clone(), p.to_string());
        if evented.contains(&key) {
            continue;
        }
        tracing::warn!(service = %p.service, field = %p.field, "{p}");
        let svc = services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(p.service.namespace.as_str())
                && s.metadata.name.as_deref() == Some(p.service.name.as_str())
        });
        match record_event(client, cfg, p, svc).await {
            Ok(()) => {
                evented.insert(key);
            }
            // Retried at the next pass.
            Err(e) => tracing::warn!(service = %p.service, error = %e, "recording the Event"),
        }
    }
}

/// The Warning Event for a refused externalIP, on its Service.
pub fn refusal_event(node: &str, p: &Problem, svc: Option<&Service>) -> Event {
    let t = Time(k8s_openapi::jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", p.service.name)),
            namespace: Some(p.service.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(p.service.name.clone()),
            namespace: Some(p.service.namespace.clone()),
            uid: svc.and_then(|s| s.metadata.uid.clone()),
            resource_version: svc.and_then(|s| s.metadata.resource_version.clone()),
            field_path: Some(p.field.clone()),
        },
        reason: Some(EXTERNAL_IP_REFUSED_REASON.into()),
        message: Some(p.to_string()),
        type_: Some("Warning".into()),
        first_timestamp: Some(t.clone()),
        last_timestamp: Some(t),
        count: Some(1),
        source: Some(EventSource {
            component: Some(EVENT_COMPONENT.into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some(EVENT_COMPONENT.into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

async fn record_event(
    client: &kube::Client,
    cfg: &TranslateConfig,
    p: &Problem,
    svc: Option<&Service>,
) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &p.service.namespace);
    api.create(
        &PostParams::default(),
        &refusal_event(&cfg.node_name, p, svc),
    )
    .await
    .map(|_| ())
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::services::translate::ProblemKind;
    use fibril_core::services::ServiceName;

    #[test]
    fn a_refusal_event_names_the_service_the_field_and_the_ip() {
        let p = Problem {
            service: ServiceName {
                namespace: "demo".into(),
                name: "web".into(),
            },
            field: "spec.externalIPs[0]".into(),
            kind: ProblemKind::ExternalIpRefused {
                ip: "203.0.113.10".into(),
                allowed: vec!["198.51.100.0/25".parse().unwrap()],
            },
        };
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "u-1"}}))
        .unwrap();
        let ev = refusal_event("node-1", &p, Some(&svc));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Service"));
        assert_eq!(ev.involved_object.name.as_deref(), Some("web"));
        assert_eq!(ev.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(
            ev.involved_object.field_path.as_deref(),
            Some("spec.externalIPs[0]")
        );
        assert_eq!(ev.reason.as_deref(), Some(EXTERNAL_IP_REFUSED_REASON));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        let msg = ev.message.unwrap();
        assert!(
            msg.contains("demo/web") && msg.contains("203.0.113.10"),
            "{msg}"
        );
        assert_eq!(
            ev.source.unwrap().host.as_deref(),
            Some("node-1"),
            "which agent refused it"
        );
    }
}
