//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events over a chunked
//! response, with kube-apiserver's semantics.
//!
//! - From `resourceVersion=N`: every matching event after N from the history, then live ones;
//!   N older than the retained history gives one `ERROR` event carrying 410 Expired.
//! - Without a resourceVersion (or "0"), or with `sendInitialEvents=true`: synthetic `ADDED`
//!   events for the current objects first; a streaming list then ends its initial events with
//!   a BOOKMARK annotated `k8s.io/initial-events-end`.
//! - With selectors, an object that stops matching is sent as `DELETED` (and one that starts
//!   matching as `ADDED`), as the watch cache does.
//! - `allowWatchBookmarks`: a BOOKMARK with the revision the stream has caught up to, every
//!   bookmark interval; `timeoutSeconds` ends the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::registry::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{set_resource_version, EventType, Store, StoredEvent};

/// Annotation on the bookmark that ends a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What a list or watch is filtered by.
#[derive(Clone, Debug)]
pub struct Filter {
    pub res: &'static ResourceInfo,
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }

    fn in_scope(&self, ev: &StoredEvent) -> bool {
        ev.key.res == self.res.group_resource()
            && self.ns.as_deref().is_none_or(|ns| ev.key.ns == ns)
    }

    /// The event this watcher sees for a stored event, if any.
    fn convert(&self, ev: &StoredEvent) -> Option<(&'static str, Arc<Value>)> {
        if !self.in_scope(ev) {
            return None;
        }
        let cur = ev.ty != EventType::Deleted && self.matches(&ev.object);
        let old = ev.prev.as_deref().is_some_and(|p| self.matches(p));
        match (cur, old) {
            (true, false) => Some(("ADDED", ev.object.clone())),
            (true, true) => Some(("MODIFIED", ev.object.clone())),
            (false, true) if ev.ty == EventType::Deleted => Some(("DELETED", ev.object.clone())),
            (false, true) => {
                // Stopped matching: DELETED with the previous state at this event's revision.
                let mut o = ev.prev.as_deref().cloned().unwrap_or_default();
                set_resource_version(&mut o, ev.rev);
                Some(("DELETED", Arc::new(o)))
            }
            (false, false) => None,
        }
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Current state as synthetic ADDED events; `end_bookmark` for streaming lists.
    Initial { end_bookmark: bool },
    /// Every event after this revision.
    After(u64),
}

#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub filter: Filter,
    pub start: Start,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Option<Duration>,
    /// Send `PartialObjectMetadata` instead of full objects.
    pub partial: bool,
}

/// Renders an object as `meta.k8s.io/v1` PartialObjectMetadata.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn line(ty: &str, obj: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut out, obj).expect("JSON values serialize");
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Starts the watch and returns the response body streaming it.
pub fn stream(store: Arc<Store>, spec: WatchSpec, shutdown: watch::Receiver<bool>) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let res = spec.filter.res.group_resource();
        tracing::debug!(resource = %res, start = ?spec.start, "watch started");
        run(store, spec, tx, shutdown).await;
        tracing::debug!(resource = %res, "watch ended");
    });
    Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>))
}

struct Sender<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    spec: &'a WatchSpec,
}

impl Sender<'_> {
    /// False once the client has gone away.
    async fn object(&self, ty: &str, obj: &Value) -> bool {
        let bytes = if self.spec.partial {
            line(ty, &partial_metadata(obj))
        } else {
            line(ty, obj)
        };
        self.tx.send(bytes).await.is_ok()
    }

    async fn bookmark(&self, rev: u64, initial_end: bool) -> bool {
        let res = self.spec.filter.res;
        let (kind, api_version) = if self.spec.partial {
            ("PartialObjectMetadata", "meta.k8s.io/v1")
        } else {
            (res.kind, res.api_version)
        };
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": meta});
        self.tx.send(line("BOOKMARK", &obj)).await.is_ok()
    }

    async fn error(&self, e: &ApiError) {
        let _ = self.tx.send(line("ERROR", &e.to_status())).await;
    }
}

async fn run(
    store: Arc<Store>,
    spec: WatchSpec,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let out = Sender {
        tx: &tx,
        spec: &spec,
    };
    // Subscribe before reading anything, so no commit can fall between the read and the wait.
    let mut commits = store.subscribe();
    let mut cursor = match spec.start {
        Start::Initial { end_bookmark } => {
            let f = &spec.filter;
            let (items, rev) = store.list(&f.res.group_resource(), f.ns.as_deref());
            for obj in items.iter().filter(|o| f.matches(o)) {
                if !out.object("ADDED", obj).await {
                    return;
                }
            }
            if end_bookmark && !out.bookmark(rev, true).await {
                return;
            }
            rev
        }
        Start::After(rev) => {
            let current = store.rev();
            if rev > current {
                out.error(&ApiError::UnknownResourceVersion {
                    requested: rev,
                    current,
                })
                .await;
                return;
            }
            rev
        }
    };

    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut ticker = tokio::time::interval_at(
        Instant::now() + spec.bookmark_interval,
        spec.bookmark_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match store.events_since(cursor) {
            Err(c) => {
                out.error(&ApiError::Expired {
                    requested: cursor,
                    oldest: c.oldest,
                })
                .await;
                return;
            }
            Ok(events) => {
                for ev in events {
                    if let Some((ty, obj)) = spec.filter.convert(&ev) {
                        if !out.object(ty, &obj).await {
                            return;
                        }
                    }
                    cursor = ev.rev;
                }
            }
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticker.tick(), if spec.bookmarks => {
                if !out.bookmark(cursor, false).await {
                    return;
                }
            }
            _ = sleep_until(deadline) => return,
            _ = shutdown_signalled(&mut shutdown) => return,
            _ = tx.closed() => return,
        }
    }
}

async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    // Drop the borrow guard here: it must not live across the select's await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use crate::store::{ObjKey, StoreError};

    fn pod(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "labels": {"app": app}}})
    }

    fn filter(labels: &str) -> Filter {
        Filter {
            res: registry::find("", "v1", "pods").unwrap(),
            ns: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
        }
    }

    async fn collect(body: Body, n: usize) -> Vec<Value> {
        let mut s = body.into_data_stream();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .expect("event in time")
                .expect("stream open")
                .unwrap();
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = buf.drain(..=pos).collect();
                out.push(serde_json::from_slice(&l).unwrap());
            }
        }
        out
    }

    fn spec(f: Filter, start: Start) -> WatchSpec {
        WatchSpec {
            filter: f,
            start,
            bookmarks: false,
            bookmark_interval: Duration::from_secs(60),
            timeout: None,
            partial: false,
        }
    }

    #[tokio::test]
    async fn selector_transitions_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_with_history(dir.path(), 4).unwrap());
        let k = ObjKey::new("pods", "default", "a");
        let put = |v: Value| {
            store
                .write(false, |tx| Ok::<_, StoreError>(tx.put(k.clone(), v)))
                .unwrap();
        };
        put(pod("a", "web")); // 1
        put(pod("a", "db")); // 2: stops matching app=web
        put(pod("a", "web")); // 3: matches again
        let (_tx, rx) = watch::channel(false);
        let body = stream(
            store.clone(),
            spec(filter("app=web"), Start::After(0)),
            rx.clone(),
        );
        let evs = collect(body, 3).await;
        let types: Vec<_> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["ADDED", "DELETED", "ADDED"]);
        assert_eq!(evs[1]["object"]["metadata"]["resourceVersion"], "2");
        assert_eq!(evs[1]["object"]["metadata"]["labels"]["app"], "web");

        for _ in 0..3 {
            put(pod("a", "web"));
        }
        // History holds 4 events (3..=6): revision 1 is gone.
        let body = stream(store.clone(), spec(filter(""), Start::After(1)), rx);
        let evs = collect(body, 1).await;
        assert_eq!(evs[0]["type"], "ERROR");
        assert_eq!(evs[0]["object"]["code"], 410);
        assert_eq!(evs[0]["object"]["reason"], "Expired");
    }

    #[tokio::test]
    async fn initial_events_then_live_and_bookmarks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store
            .write(false, |tx| {
                Ok::<_, StoreError>(tx.put(ObjKey::new("pods", "default", "a"), pod("a", "x")))
            })
            .unwrap();
        let (_tx, rx) = watch::channel(false);
        let mut s = spec(filter(""), Start::Initial { end_bookmark: true });
        s.bookmarks = true;
        s.bookmark_interval = Duration::from_millis(50);
        let body = stream(store.clone(), s, rx);
        let store2 = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            store2
                .write(false, |tx| {
                    Ok::<_, StoreError>(tx.put(ObjKey::new("pods", "default", "b"), pod("b", "x")))
                })
                .unwrap();
        });
        let evs = collect(body, 5).await;
        assert_eq!(evs[0]["type"], "ADDED");
        assert_eq!(evs[1]["type"], "BOOKMARK");
        assert_eq!(
            evs[1]["object"]["metadata"]["annotations"][INITIAL_EVENTS_END],
            "true"
        );
        assert_eq!(evs[1]["object"]["kind"], "Pod");
        assert!(evs
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "b"));
        assert!(evs[2..].iter().any(|e| e["type"] == "BOOKMARK"));
    }

    #[tokio::test]
    async fn timeout_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (_tx, rx) = watch::channel(false);
        let mut s = spec(filter(""), Start::After(0));
        s.timeout = Some(Duration::from_millis(50));
        let body = stream(store, s, rx);
        let mut data = body.into_data_stream();
        let end = tokio::time::timeout(Duration::from_secs(5), data.next())
            .await
            .unwrap();
        assert!(end.is_none());
    }
}
