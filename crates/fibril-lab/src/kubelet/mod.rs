//! The lab kubelet, one per node, running inside the node's network namespace.
//!
//! It registers the Node and heartbeats its `Ready` condition, watches the pods bound
//! to the node, and runs each through a [`pod`] worker: netns + resolv.conf + CNI ADD
//! exactly as containerd would, containers as processes in the pod netns, status via
//! the `/status` subresource, and on deletion the reverse, ending with the final
//! `gracePeriodSeconds=0` delete. What it runs is recorded on disk ([`record`]) so a
//! restarted kubelet adopts its pods and cleans up the ones deleted meanwhile.

pub mod network;
pub mod node;
mod pod;
pub mod process;
pub mod record;
pub mod spec;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use fibril_core::lab::LabLayout;

use network::Network;
use pod::{Outcome, PodWorker};
use record::{PodRecord, RecordStore};

/// What one kubelet needs to know.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub layout: LabLayout,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The `fibril` binary that runs built-in workloads (`fibril/echo`).
    pub fibril_exe: PathBuf,
}

/// Shared by every pod worker of a kubelet.
pub(crate) struct Ctx {
    pub client: Client,
    pub cfg: KubeletConfig,
    pub network: Network,
    pub records: RecordStore,
}

/// Run the kubelet until the pod watch ends for good. Processes it started keep
/// running when it returns, for the next kubelet to adopt.
pub async fn run(client: Client, cfg: KubeletConfig) -> anyhow::Result<()> {
    let kubelet_dir = cfg.layout.node_kubelet_dir(&cfg.node_name);
    std::fs::create_dir_all(&kubelet_dir)
        .with_context(|| format!("creating {}", kubelet_dir.display()))?;
    let ctx = Arc::new(Ctx {
        network: Network::for_node(&cfg.layout, &cfg.node_name),
        records: RecordStore::new(&kubelet_dir),
        client: client.clone(),
        cfg: cfg.clone(),
    });

    let mut delay = Duration::from_millis(200);
    while let Err(e) = node::register(&client, &cfg).await {
        tracing::warn!(node = %cfg.node_name, "registering node: {e}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let heartbeat = {
        let ctx = ctx.clone();
        tokio::spawn(node::run(client.clone(), cfg.clone(), move || {
            ctx.network.ready()
        }))
    };

    let mut records: HashMap<String, PodRecord> = ctx
        .records
        .load_all()
        .context("reading the kubelet's pod records")?
        .into_iter()
        .map(|r| (r.uid.clone(), r))
        .collect();
    if !records.is_empty() {
        tracing::info!(node = %cfg.node_name, pods = records.len(), "found pods from a previous run");
    }

    let api: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut pods = watcher(api, wc).default_backoff().boxed();

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut synced = false;

    let spawn = |uid: String,
                 pod: Option<Arc<Pod>>,
                 rec: Option<PodRecord>,
                 workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>| {
        let (tx, rx) = watch::channel(pod);
        let w = PodWorker::new(ctx.clone(), uid.clone(), rx, rec);
        let done = done_tx.clone();
        workers.insert(uid.clone(), tx);
        tokio::spawn(async move {
            let outcome = w.run().await;
            let _ = done.send((uid, outcome));
        });
    };

    loop {
        tokio::select! {
            ev = pods.next() => {
                let Some(ev) = ev else { break };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(node = %cfg.node_name, "pod watch: {e}");
                        continue;
                    }
                };
                let upsert = |pod: Pod,
                              workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
                              records: &mut HashMap<String, PodRecord>,
                              finished: &HashSet<String>| {
                    let Some(uid) = pod.metadata.uid.clone() else { return };
                    if finished.contains(&uid)
                        || crate::controllers::podutil::node_name(&pod) != Some(cfg.node_name.as_str())
                    {
                        return;
                    }
                    let pod = Arc::new(pod);
                    match workers.get(&uid) {
                        Some(tx) => {
                            tx.send_replace(Some(pod));
                        }
                        None => {
                            let rec = records.remove(&uid);
                            spawn(uid, Some(pod), rec, workers);
                        }
                    }
                };
                match ev {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(p) => {
                        if let Some(uid) = p.metadata.uid.clone() {
                            listed.insert(uid);
                        }
                        upsert(p, &mut workers, &mut records, &finished);
                    }
                    watcher::Event::InitDone => {
                        for (uid, tx) in &workers {
                            if !listed.contains(uid) {
                                tx.send_replace(None);
                            }
                        }
                        if !synced {
                            // Pods deleted while no kubelet was watching: clean up.
                            for (uid, rec) in records.drain() {
                                tracing::info!(pod = %format!("{}/{}", rec.namespace, rec.name), "pod is gone; cleaning up");
                                spawn(uid, None, Some(rec), &mut workers);
                            }
                            synced = true;
                        }
                    }
                    watcher::Event::Apply(p) => upsert(p, &mut workers, &mut records, &finished),
                    watcher::Event::Delete(p) => {
                        if let Some(tx) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            tx.send_replace(None);
                        }
                    }
                }
            }
            Some((uid, outcome)) = done_rx.recv() => {
                workers.remove(&uid);
                if matches!(outcome, Outcome::Done) {
                    finished.insert(uid);
                }
            }
        }
    }
    heartbeat.abort();
    anyhow::bail!("the pod watch for node {} ended", cfg.node_name)
}
