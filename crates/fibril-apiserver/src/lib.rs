//! fibril-apiserver: the lab's control plane, a real subset of the Kubernetes REST API.
//!
//! It serves namespaces, nodes, pods, services, events, endpointslices, networkpolicies and
//! deployments (see [`resources`]) with kube-apiserver's JSON shapes and semantics, so that
//! unmodified kube-rs clients (`Api<K>`, `kube::runtime::watcher`) work against it:
//! one global resourceVersion, watches with history replay, bookmarks and streaming lists,
//! label and field selectors, optimistic concurrency, status subresources, graceful pod
//! deletion, finalizers, owner-reference cascade, namespace termination, ClusterIP and
//! NodePort allocation. State lives in an embedded redb store under `data_dir` that survives
//! restarts, watch history included.
//!
//! Layout: `registry` (the resource table), `http` (routing and verbs), `rest` (generic
//! write logic), `strategy` (per-kind defaults and rules), `alloc` (Service addresses),
//! `watch` (watch streams), `store` (persistence), `selector`, `discovery`, `status`
//! (errors as `metav1.Status`), `client` (kube-rs clients, kubeconfig).
//!
//! Known differences from kube-apiserver, all deliberate:
//! - No authentication, authorization or admission webhooks; no protobuf, no Table output.
//! - Decoding is always strict (unknown fields and wrongly typed fields are refused with 422
//!   naming each field path), as if `fieldValidation=Strict`.
//! - `application/strategic-merge-patch+json` is applied as a JSON merge patch (lists are
//!   replaced, not merged by key; `$` directives are dropped). Server-side apply is a merge
//!   patch that creates a missing object: no managedFields, no conflict detection, fields an
//!   applier stops sending are not removed.
//! - `limit`/`continue` are accepted but the whole list is one page.
//! - Field selectors accept any dotted path into the object, not only the per-kind indexed
//!   fields.
//! - Foreground deletion is treated as background; cascading and namespace deletion happen
//!   synchronously in the deleting request (pods inside still get their grace period).
//! - A pod's unset `spec.nodeName` may be set by update/patch (besides `pods/binding`).
//! - A list with `resourceVersionMatch=Exact` only succeeds for the current revision.
//! - A resourceVersion newer than the store has reached (after a one-second wait) is answered
//!   as 410 Expired (an in-stream ERROR event for watches) rather than kube-apiserver's 504:
//!   it can only come from a previous store (a reset data directory), and this makes kube-rs
//!   watchers relist instead of retrying the same revision forever.
//! - There is no built-in `kubernetes` Service. Events expire an hour after they were last
//!   recorded (kube-apiserver's default `--event-ttl`).

mod alloc;
pub mod client;
mod discovery;
mod http;
pub mod registry;
mod rest;
pub mod selector;
mod status;
mod store;
mod strategy;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use client::{client_for_socket, client_for_url, kubeconfig_yaml};
pub use registry::{resources, ResourceInfo};

/// Default interval between watch bookmarks.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// How long `shutdown` waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// The embedded store lives here (created if missing).
    pub data_dir: PathBuf,
    /// TCP listen address, e.g. `172.18.0.2:6443`; port 0 picks a free port.
    pub tcp_addr: Option<SocketAddr>,
    /// Unix socket path for the CLI; a stale socket file is replaced.
    pub unix_socket: Option<PathBuf>,
    /// Range Service ClusterIPs are allocated from.
    pub service_cidr: ipnet::Ipv4Net,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

/// A started server. Dropping it signals shutdown without waiting; call
/// [`RunningApiServer::shutdown`] to wait until the store is closed.
pub struct RunningApiServer {
    /// The bound TCP address (with the real port when 0 was asked for).
    pub tcp_addr: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    shutdown_tx: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: Option<Arc<store::Store>>,
}

/// Opens the store, binds the listeners and returns once the server is accepting requests.
pub async fn start(cfg: ApiServerConfig) -> anyhow::Result<RunningApiServer> {
    start_with_history(cfg, store::DEFAULT_HISTORY_CAP).await
}

/// [`start`] with a watch history of `history_cap` events instead of the default 10,000
/// (tests use a small one to exercise 410 Expired).
pub async fn start_with_history(
    cfg: ApiServerConfig,
    history_cap: usize,
) -> anyhow::Result<RunningApiServer> {
    let dir = cfg.data_dir.clone();
    let store =
        tokio::task::spawn_blocking(move || store::Store::open_with_history(&dir, history_cap))
            .await
            .context("opening the store")?
            .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let store = Arc::new(store);
    let ctx = rest::Ctx {
        service_cidr: cfg.service_cidr,
    };
    {
        let (store, ctx) = (store.clone(), ctx.clone());
        tokio::task::spawn_blocking(move || store.write(false, |txn| rest::bootstrap(txn, &ctx)))
            .await
            .context("bootstrapping")?
            .map_err(|e| anyhow::anyhow!("bootstrapping default namespaces: {e}"))?;
    }

    let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
    let mut tasks = Vec::new();
    let mut tcp_addr = None;
    let tcp = match cfg.tcp_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tcp_addr = Some(l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let unix = match &cfg.unix_socket {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            // A socket someone still answers on is not stale: refuse rather than steal it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another server is already listening on {}", path.display());
            }
            match std::fs::remove_file(path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed stale socket"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            Some(UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?)
        }
        None => None,
    };

    let state = Arc::new(http::AppState {
        store: store.clone(),
        ctx,
        bookmark_interval: cfg.bookmark_interval,
        shutdown: shutdown_rx.clone(),
        server_address: tcp_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "localhost".into()),
    });
    let app = http::router(state);
    let signal = |mut rx: tokio_watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(l) = tcp {
        let serve = axum::serve(l, app.clone()).with_graceful_shutdown(signal(shutdown_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "TCP listener failed");
            }
        }));
    }
    if let Some(l) = unix {
        let serve = axum::serve(l, app).with_graceful_shutdown(signal(shutdown_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "unix listener failed");
            }
        }));
    }
    tasks.push(tokio::spawn(rest::expire_events_periodically(
        store.clone(),
        shutdown_rx.clone(),
    )));
    tracing::info!(
        tcp = ?tcp_addr,
        unix = ?cfg.unix_socket,
        revision = store.rev(),
        "API server listening"
    );
    Ok(RunningApiServer {
        tcp_addr,
        unix_socket: cfg.unix_socket,
        shutdown_tx,
        tasks,
        store: Some(store),
    })
}

/// Starts the server and serves until SIGINT or SIGTERM, then shuts down cleanly.
pub async fn run(cfg: ApiServerConfig) -> anyhow::Result<()> {
    let server = start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

impl RunningApiServer {
    /// Stops accepting, ends open watches, waits for in-flight requests and closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the grace period; aborting them");
                task.abort();
                let _ = task.await;
            }
        }
        // Watch streams and blocking writes hold the store; wait for them to let go so that
        // the database file is closed when this returns (a restart can then reopen it).
        if let Some(store) = self.store.take() {
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Arc::strong_count(&store) > 1 {
                tracing::warn!("store still referenced at shutdown");
            }
        }
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("API server stopped");
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}
