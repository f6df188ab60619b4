//! Services on this node: the kube-proxy replacement's control loop.
//!
//! It watches Services and EndpointSlices through kube-rs, translates them for this node
//! ([`fibril_core::services::translate`]) and makes the datapath's service maps hold the
//! result ([`crate::dataplane::Dataplane::sync_services`]). Bursts of changes are
//! debounced into one sync; a sync only happens when the table differs from the last one
//! synced, and a failed sync is retried.
//!
//! Memory: the agent never keeps the objects. Each one is turned into its compact form
//! ([`fibril_core::services::model`]: what the translation reads, node and port names
//! interned) by the watch that received it, and dropped there; initial lists come in pages.
//! A cluster of 10k Services with 100k endpoints is a few MiB of state.
//!
//! Nothing is synced before both watches have listed everything once: after a restart the
//! maps still hold the previous agent's table (pinned), and a sync from half-listed state
//! would drop Services that are only not listed yet.
//!
//! A refused externalIP (CVE-2020-8554 guard) is logged and recorded as a Kubernetes
//! Warning Event on its Service, once per appearance; every problem is shown by
//! `fibril status`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_core::services::model::{Interner, ServiceInfo, SliceInfo};
use fibril_core::services::translate::{translate_infos, Problem, TranslateConfig, Translation};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Notify};

use crate::agent::Agent;
use crate::status::ServicesStatus;
use crate::svc_health::HealthServer;

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

/// The key of a namespaced object: (namespace, name).
type Key = (String, String);

fn key_of<K: Resource>(obj: &K) -> Key {
    let m = obj.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// A Service as the agent keeps it: its compact form, and what its Events refer to.
struct StoredService {
    info: ServiceInfo,
    uid: Option<String>,
    resource_version: Option<String>,
}

/// What a watch reports, objects already in their compact form.
enum Update<T> {
    /// A (re)list starts: the next items replace the whole set at `InitDone`.
    Init,
    InitApply(Key, T),
    InitDone,
    Apply(Key, T),
    Delete(Key),
    Error(String),
}

/// The Services and EndpointSlices of the cluster as the agent keeps them: compact, never
/// the objects (see [`fibril_core::services::model`]).
struct Mirror<T> {
    items: HashMap<Key, T>,
    /// During a (re)list: what it has listed so far.
    listing: Option<HashMap<Key, T>>,
    /// A first list has completed.
    listed: bool,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Mirror {
            items: HashMap::new(),
            listing: None,
            listed: false,
        }
    }
}

impl<T> Mirror<T> {
    /// Applies one update; returns a watch error to report, if it is one.
    fn apply(&mut self, u: Update<T>) -> Option<String> {
        match u {
            Update::Init => self.listing = Some(HashMap::new()),
            Update::InitApply(k, v) => {
                self.listing.get_or_insert_with(HashMap::new).insert(k, v);
            }
            Update::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.items.shrink_to_fit();
                self.listed = true;
            }
            Update::Apply(k, v) => {
                self.items.insert(k, v);
            }
            Update::Delete(k) => {
                self.items.remove(&k);
            }
            Update::Error(e) => return Some(e),
        }
        None
    }
}

/// A change from one of the two watches.
enum Change {
    Service(Update<StoredService>),
    Slice(Update<SliceInfo>),
}

/// How many updates may wait for the control loop before a watch waits for it.
const QUEUE: usize = 1024;

/// Watches `api`, converting each object to its compact form at once (`convert`, with an
/// interner of its own) and sending the updates to `tx`; the object itself is dropped
/// there. Watch errors are retried with backoff and sent as [`Update::Error`].
async fn watch_compact<K, T>(
    api: Api<K>,
    tx: mpsc::Sender<Change>,
    wrap: fn(Update<T>) -> Change,
    convert: fn(&K, &mut Interner) -> T,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let mut names = Interner::default();
    let mut pruned_at = 0usize;
    // Pages of the initial list: only one page of objects is ever held at once.
    let config = watcher::Config::default().page_size(LIST_PAGE);
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(ev) = stream.next().await {
        let u = match ev {
            Ok(watcher::Event::Init) => Update::Init,
            Ok(watcher::Event::InitApply(o)) => {
                Update::InitApply(key_of(&o), convert(&o, &mut names))
            }
            Ok(watcher::Event::InitDone) => Update::InitDone,
            Ok(watcher::Event::Apply(o)) => Update::Apply(key_of(&o), convert(&o, &mut names)),
            Ok(watcher::Event::Delete(o)) => Update::Delete(key_of(&o)),
            Err(e) => Update::Error(e.to_string()),
        };
        if matches!(u, Update::InitDone | Update::Delete(_)) && names.len() > 2 * pruned_at + 64 {
            names.prune();
            pruned_at = names.len();
        }
        if tx.send(wrap(u)).await.is_err() {
            return;
        }
    }
}

/// Objects per page of the initial lists.
const LIST_PAGE: u32 = 500;

/// Runs until aborted: watch, translate, sync, report. `publish` receives every new
/// status.
pub async fn run(
    agent: Arc<Agent>,
    client: kube::Client,
    node_ip: Ipv4Addr,
    publish: impl Fn(ServicesStatus) + Send + Sync + 'static,
) {
    let cfg = translate_config(&agent, node_ip);
    let (tx, mut rx) = mpsc::channel::<Change>(QUEUE);
    let _watches = (
        AbortOnDrop(tokio::spawn(watch_compact(
            Api::<Service>::all(client.clone()),
            tx.clone(),
            Change::Service,
            |s, names| StoredService {
                info: ServiceInfo::new(s, names),
                uid: s.metadata.uid.clone(),
                resource_version: s.metadata.resource_version.clone(),
            },
        ))),
        AbortOnDrop(tokio::spawn(watch_compact(
            Api::<EndpointSlice>::all(client.clone()),
            tx,
            Change::Slice,
            SliceInfo::new,
        ))),
    );
    let mut services: Mirror<StoredService> = Mirror::default();
    let mut slices: Mirror<SliceInfo> = Mirror::default();
    let mut watch_error: Option<String> = None;
    let apply = |c: Change,
                 services: &mut Mirror<StoredService>,
                 slices: &mut Mirror<SliceInfo>,
                 watch_error: &mut Option<String>| {
        let err = match c {
            Change::Service(u) => services.apply(u).map(|e| format!("Service watch: {e}")),
            Change::Slice(u) => slices.apply(u).map(|e| format!("EndpointSlice watch: {e}")),
        };
        if let Some(e) = err {
            tracing::warn!(error = %e, "watch");
            *watch_error = Some(e);
        }
    };

    let mut status = ServicesStatus {
        waiting_for: Some("the first list of Services and EndpointSlices".into()),
        ..ServicesStatus::default()
    };
    publish(status.clone());
    while !(services.listed && slices.listed) {
        match rx.recv().await {
            Some(c) => apply(c, &mut services, &mut slices, &mut watch_error),
            None => {
                tracing::error!("the Service or EndpointSlice watch ended before its first list");
                return;
            }
        }
    }
    status.waiting_for = None;
    tracing::info!(node = %cfg.node_name, %node_ip, "services: watching; first sync");

    let mut health = HealthServer::new(agent.netns().clone());
    let mut health_problems: Vec<String> = Vec::new();
    let mut evented: BTreeSet<(String, String, String)> = BTreeSet::new();
    loop {
        let t = translate_infos(
            services.items.values().map(|s| &s.info),
            slices.items.values(),
            &cfg,
        );
        report_refusals(&client, &cfg, &t, &services.items, &mut evented).await;

        // The maps' own view (ServiceMaps) is what the table is diffed against: a sync
        // that finds nothing to change writes nothing, and no copy of the last table is
        // kept here.
        let mut failed = false;
        let started = Instant::now();
        let res = tokio::task::block_in_place(|| match agent.dataplane() {
            Some(mut dp) => dp.sync_services(&t.table).map_err(|e| e.to_string()),
            None => Err("the dataplane is not loaded".to_string()),
        });
        match res {
            Ok(stats) => {
                let changed = stats.added + stats.updated + stats.removed > 0;
                if changed || status.last_sync.is_none() {
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
                    status.last_sync = Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    );
                    status.last_sync_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
                let skipped: Vec<String> = stats
                    .skipped
                    .iter()
                    .map(|s| {
                        format!(
                            "Service {} {}: not programmed: {}",
                            s.service, s.frontend, s.reason
                        )
                    })
                    .collect();
                for s in skipped
                    .iter()
                    .filter(|s| !status.datapath_skipped.contains(s))
                {
                    tracing::warn!("{s}");
                }
                status.datapath_skipped = skipped;
                status.sync_error = None;
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
        status.fill(&t);
        // Health check ports that cannot be opened are retried at every pass, logged when
        // they change and always shown in status.
        let now = health.sync(&t.health_checks);
        for p in now.iter().filter(|p| !health_problems.contains(p)) {
            tracing::warn!("{p}");
        }
        health_problems = now;
        status.problems.extend(health_problems.iter().cloned());
        status.health_check_ports = health.ports();
        status.watch_error = watch_error.take();
        publish(status.clone());
        drop(t);
        crate::heap::trim();

        let pause = if failed { RETRY } else { RESYNC };
        tokio::select! {
            c = rx.recv() => match c {
                Some(c) => apply(c, &mut services, &mut slices, &mut watch_error),
                None => {
                    tracing::error!("the Service and EndpointSlice watches ended");
                    return;
                }
            },
            _ = tokio::time::sleep(pause) => {}
        }
        // Debounce: take in every change that comes within DEBOUNCE, then translate once.
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => apply(c, &mut services, &mut slices, &mut watch_error),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
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
    services: &HashMap<Key, StoredService>,
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
        let svc = services
            .get(&(p.service.namespace.clone(), p.service.name.clone()))
            .map(|s| ObjectIds {
                uid: s.uid.clone(),
                resource_version: s.resource_version.clone(),
            });
        match record_event(client, cfg, p, svc.as_ref()).await {
            Ok(()) => {
                evented.insert(key);
            }
            // Retried at the next pass.
            Err(e) => tracing::warn!(service = %p.service, error = %e, "recording the Event"),
        }
    }
}

/// The Warning Event for a refused externalIP, on its Service.
/// What an Event's involved object names of its Service, besides its name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectIds {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub fn refusal_event(node: &str, p: &Problem, svc: Option<&ObjectIds>) -> Event {
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
            uid: svc.and_then(|s| s.uid.clone()),
            resource_version: svc.and_then(|s| s.resource_version.clone()),
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
    svc: Option<&ObjectIds>,
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

    fn k(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    #[test]
    fn a_relist_replaces_the_mirror_at_its_end_only() {
        let mut m: Mirror<u32> = Mirror::default();
        for u in [
            Update::Init,
            Update::InitApply(k("a"), 1),
            Update::InitApply(k("b"), 2),
        ] {
            assert_eq!(m.apply(u), None);
        }
        assert!(
            !m.listed && m.items.is_empty(),
            "nothing before the list ends"
        );
        m.apply(Update::InitDone);
        assert!(m.listed);
        m.apply(Update::Apply(k("c"), 3));
        m.apply(Update::Delete(k("a")));
        assert_eq!(m.items.len(), 2);

        // A relist after a watch error: the old view serves until the new list is complete,
        // then objects it no longer has are gone.
        assert_eq!(m.apply(Update::Error("gone".into())), Some("gone".into()));
        m.apply(Update::Init);
        m.apply(Update::InitApply(k("c"), 30));
        assert_eq!(m.items.get(&k("b")), Some(&2));
        m.apply(Update::InitDone);
        assert_eq!(m.items.into_iter().collect::<Vec<_>>(), [(k("c"), 30)]);
    }

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
        let svc = ObjectIds {
            uid: Some("u-1".into()),
            resource_version: Some("7".into()),
        };
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
