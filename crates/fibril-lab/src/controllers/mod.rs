//! The lab's kube-controller-manager and kube-scheduler: the scheduler, node IPAM, the
//! EndpointSlice controller, the Deployment controller and a load-balancer controller
//! (a cloud's stand-in), all through kube-rs.
//!
//! Each controller is level-triggered: watchers only wake it up, and every pass lists
//! fresh state from the API server and converges it. The decisions themselves are pure
//! functions ([`scheduler::pick_node`], [`nodeipam::allocate_block`],
//! [`endpointslice::desired_slices`], [`deployment::plan_replicas`]) so they are tested
//! without a server. Listing on every pass costs nothing at lab scale and removes the
//! stale-cache problems (duplicate pods, double binds) that upstream needs expectations for.

pub mod deployment;
pub mod endpointslice;
pub mod loadbalancer;
pub mod nodeipam;
pub mod podutil;
pub mod scheduler;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fibril_core::agent_config::IpamMode;
use fibril_core::lab::LabLayout;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long a controller waits after a wake-up before it lists, so that a burst of
/// events becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full pass at least this often, even without events.
const RESYNC: Duration = Duration::from_secs(15);
/// Pause after a failed pass before the next one.
const RETRY: Duration = Duration::from_millis(500);

/// Error of one controller pass.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{op} {kind} {name}: {source}")]
    Api {
        op: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("list {kind}: {source}")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ControllerError {
    pub(crate) fn api(
        op: &'static str,
        kind: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let name = name.into();
        move |source| ControllerError::Api {
            op,
            kind,
            name,
            source,
        }
    }
    pub(crate) fn list(kind: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| ControllerError::List { kind, source }
    }
}

/// Whether an API error is a 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error is a 409 (conflict or already exists).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Runs the scheduler, node IPAM, EndpointSlice, Deployment and load-balancer controllers
/// until one of them fails for good.
pub async fn run(client: Client, layout: LabLayout) -> anyhow::Result<()> {
    let sched = Arc::new(Notify::new());
    let ipam = Arc::new(Notify::new());
    let slices = Arc::new(Notify::new());
    let deploys = Arc::new(Notify::new());
    let lbs = Arc::new(Notify::new());

    let mut tasks = JoinSet::new();
    tasks.spawn(wake_on::<Pod>(
        Api::all(client.clone()),
        vec![sched.clone(), slices.clone(), deploys.clone()],
    ));
    tasks.spawn(wake_on::<Node>(
        Api::all(client.clone()),
        vec![sched.clone(), ipam.clone()],
    ));
    tasks.spawn(wake_on::<Service>(
        Api::all(client.clone()),
        vec![slices.clone(), lbs.clone()],
    ));
    tasks.spawn(wake_on::<EndpointSlice>(
        Api::all(client.clone()),
        vec![slices.clone()],
    ));
    tasks.spawn(wake_on::<Deployment>(
        Api::all(client.clone()),
        vec![deploys.clone()],
    ));

    {
        let client = client.clone();
        tasks.spawn(passes("scheduler", sched, move || {
            scheduler::reconcile(client.clone())
        }));
    }
    // In cluster-pool mode fibril's agents claim their blocks themselves; a controller
    // handing out spec.podCIDR as well would be a second, disagreeing IPAM.
    if layout.spec.ipam == IpamMode::Kubernetes {
        let client = client.clone();
        let layout = layout.clone();
        tasks.spawn(passes("node-ipam", ipam, move || {
            nodeipam::reconcile(client.clone(), layout.clone())
        }));
    } else {
        tracing::info!(
            "ipam cluster-pool: the node IPAM controller is off (fibril's agents claim blocks)"
        );
    }
    {
        let client = client.clone();
        tasks.spawn(passes("endpointslice", slices, move || {
            endpointslice::reconcile(client.clone())
        }));
    }
    {
        let client = client.clone();
        tasks.spawn(passes("deployment", deploys, move || {
            deployment::reconcile(client.clone())
        }));
    }
    {
        let client = client.clone();
        tasks.spawn(passes("loadbalancer", lbs, move || {
            loadbalancer::reconcile(client.clone(), layout.clone())
        }));
    }

    match tasks.join_next().await {
        Some(Ok(())) => anyhow::bail!("a controller task ended unexpectedly"),
        Some(Err(e)) => Err(anyhow::anyhow!("a controller task failed: {e}")),
        None => Ok(()),
    }
}

/// Watches `api` forever and wakes every notifier on each event. The watcher retries
/// with backoff on its own; errors are only logged.
async fn wake_on<K>(api: Api<K>, notify: Vec<Arc<Notify>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => notify.iter().for_each(|n| n.notify_one()),
            Err(e) => tracing::warn!(kind = std::any::type_name::<K>(), "watch: {e}"),
        }
    }
}

/// Runs `pass` whenever woken (and every [`RESYNC`]), retrying failed passes.
async fn passes<F, Fut>(name: &'static str, wake: Arc<Notify>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ControllerError>>,
{
    loop {
        if let Err(e) = pass().await {
            tracing::warn!(controller = name, "pass failed: {e}");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}
