//! HTTP front end: routing Kubernetes REST paths to verbs, query parameters, content
//! negotiation and responses.
//!
//! Paths are resolved as kube-apiserver's RequestInfoResolver does (including the
//! `namespaces/<name>/status` special case and the legacy `/watch/` prefix), with one
//! catch-all route per API root, so adding a resource needs no new routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::discovery;
use crate::registry::{self, ResourceInfo};
use crate::rest::{self, Ctx, DeleteOptions, Deleted, PatchKind, Sub};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{ObjKey, Store, Txn};
use crate::watch::{self as watchstream, Filter, Start, WatchSpec};

/// How long a request for a resourceVersion newer than the store's waits for it before it is
/// answered as expired (see `ApiError::UnknownResourceVersion`).
const FUTURE_RV_WAIT: Duration = Duration::from_secs(1);

pub struct AppState {
    pub store: Arc<Store>,
    pub ctx: Ctx,
    pub bookmark_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Advertised in `/api`.
    pub server_address: String,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .route("/livez", get(ok))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/api/{*rest}", any(core_api))
        .route("/apis/{*rest}", any(group_api))
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = next.run(req).await;
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), "request");
    resp
}

async fn ok() -> &'static str {
    "ok"
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn api_root(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        return aggregated(true);
    }
    json_response(
        StatusCode::OK,
        &discovery::core_versions(&st.server_address),
    )
}

async fn apis_root(headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        return aggregated(false);
    }
    json_response(StatusCode::OK, &discovery::group_list())
}

fn aggregated(core: bool) -> Response {
    let bytes = serde_json::to_vec(&discovery::aggregated(core)).expect("JSON values serialize");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)],
        bytes,
    )
        .into_response()
}

/// A resolved resource request.
#[derive(Debug)]
struct Target {
    res: &'static ResourceInfo,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_prefix: bool,
}

enum Resolved {
    ResourceList { group: String, version: String },
    Group(String),
    Resource(Target),
}

/// Subresources of namespaces that follow the namespace name directly.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

fn resolve(group: &str, version: Option<&str>, parts: &[&str]) -> Result<Resolved, ApiError> {
    let Some(version) = version else {
        return Ok(Resolved::Group(group.to_string()));
    };
    let (watch_prefix, mut parts) = match parts.split_first() {
        Some((&"watch", rest)) => (true, rest),
        _ => (false, parts),
    };
    if parts.is_empty() {
        if watch_prefix {
            return Err(ApiError::NoRoute);
        }
        return Ok(Resolved::ResourceList {
            group: group.to_string(),
            version: version.to_string(),
        });
    }
    let mut ns = None;
    if parts[0] == "namespaces" && parts.len() > 1 {
        ns = Some(parts[1].to_string());
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    if parts.len() > 3 {
        return Err(ApiError::NoRoute);
    }
    let res = registry::find(group, version, parts[0]).ok_or(ApiError::NoRoute)?;
    let name = parts.get(1).map(|s| s.to_string());
    let sub = parts.get(2).map(|s| s.to_string());
    let ns = if res.namespaced {
        if name.is_some() && ns.is_none() {
            return Err(ApiError::NoRoute);
        }
        ns
    } else {
        if ns.is_some() && res.kind != "Namespace" {
            return Err(ApiError::NoRoute);
        }
        None
    };
    if let Some(s) = &sub {
        let known =
            (s == "status" && res.status_subresource) || (s == "binding" && res.kind == "Pod");
        if !known {
            return Err(ApiError::NoRoute);
        }
    }
    Ok(Resolved::Resource(Target {
        res,
        ns,
        name,
        sub,
        watch_prefix,
    }))
}

struct Req {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

async fn core_api(
    State(st): State<Arc<AppState>>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let resolved = match parts.split_first() {
        Some((&"v1", rest)) => resolve("", Some("v1"), rest),
        _ => Err(ApiError::NoRoute),
    };
    dispatch(
        st,
        resolved,
        Req {
            method,
            query,
            headers,
            body,
        },
    )
    .await
}

async fn group_api(
    State(st): State<Arc<AppState>>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let resolved = match parts.as_slice() {
        [group] => resolve(group, None, &[]),
        [group, version, rest @ ..] => resolve(group, Some(version), rest),
        [] => Err(ApiError::NoRoute),
    };
    dispatch(
        st,
        resolved,
        Req {
            method,
            query,
            headers,
            body,
        },
    )
    .await
}

async fn dispatch(st: Arc<AppState>, resolved: Result<Resolved, ApiError>, req: Req) -> Response {
    let target = match resolved {
        Err(e) => return e.into_response(),
        Ok(Resolved::Group(g)) if req.method == Method::GET => {
            return match discovery::group(&g) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => ApiError::NoRoute.into_response(),
            }
        }
        Ok(Resolved::ResourceList { group, version }) if req.method == Method::GET => {
            return match discovery::resource_list(&group, &version) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => ApiError::NoRoute.into_response(),
            }
        }
        Ok(Resolved::Group(_)) | Ok(Resolved::ResourceList { .. }) => {
            return ApiError::MethodNotAllowed.into_response()
        }
        Ok(Resolved::Resource(t)) => t,
    };
    match handle(st, target, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true") | Some("1"))
}

fn dry_run(q: &HashMap<String, String>) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

async fn handle(st: Arc<AppState>, t: Target, req: Req) -> Result<Response, ApiError> {
    let Target {
        res,
        ns,
        name,
        sub,
        watch_prefix,
    } = t;
    let sub_kind = match sub.as_deref() {
        Some("status") => Sub::Status,
        Some("binding") if req.method != Method::POST => return Err(ApiError::MethodNotAllowed),
        _ => Sub::Main,
    };
    let partial = accept(&req.headers).contains("as=PartialObjectMetadata");
    match (&req.method, name) {
        (&Method::GET, None) if watch_prefix || flag(&req.query, "watch") => {
            watch(&st, res, ns, &req.query, partial).await
        }
        (&Method::GET, None) => list(&st, res, ns, &req.query, partial).await,
        (&Method::GET, Some(name)) if sub.is_none() && flag(&req.query, "watch") => {
            // The legacy single-object watch: a watch with a metadata.name field selector.
            let mut q = req.query.clone();
            let by_name = format!("metadata.name={name}");
            let fields = match q.get("fieldSelector").filter(|f| !f.is_empty()) {
                Some(f) => format!("{f},{by_name}"),
                None => by_name,
            };
            q.insert("fieldSelector".into(), fields);
            watch(&st, res, ns, &q, partial).await
        }
        (&Method::GET, Some(name)) => {
            let obj = st
                .store
                .get(&rest::key_for(res, ns.as_deref(), &name))
                .ok_or(ApiError::NotFound { res, name })?;
            Ok(object_response(StatusCode::OK, &obj, partial))
        }
        (&Method::POST, None) => {
            let ns = require_ns(res, ns)?;
            let body = parse_body(&req)?;
            let obj = write(&st, dry_run(&req.query), move |txn, ctx| {
                rest::create(txn, ctx, res, ns.as_deref(), body)
            })
            .await?;
            Ok(object_response(StatusCode::CREATED, &obj, false))
        }
        (&Method::POST, Some(name)) if sub.as_deref() == Some("binding") => {
            let ns = ns.unwrap_or_default();
            let body = parse_body(&req)?;
            let n = name.clone();
            write(&st, dry_run(&req.query), move |txn, _| {
                rest::bind(txn, res, &ns, &n, &body)
            })
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &status::success(res, &name, None),
            ))
        }
        (&Method::PUT, Some(name)) => {
            let body = parse_body(&req)?;
            let (obj, created) = write(&st, dry_run(&req.query), move |txn, ctx| {
                rest::update(txn, ctx, res, ns.as_deref(), &name, body, sub_kind)
            })
            .await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(code, &obj, false))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(ct).ok_or(ApiError::UnsupportedMediaType {
                accepted: rest::PATCH_CONTENT_TYPES,
            })?;
            if kind == PatchKind::Apply
                && req.query.get("fieldManager").is_none_or(|m| m.is_empty())
            {
                return Err(ApiError::invalid(
                    res,
                    &name,
                    status::Cause::invalid(
                        "fieldManager",
                        "Required value: is required for apply patch",
                    ),
                ));
            }
            let body = req.body.clone();
            let (obj, created) = write(&st, dry_run(&req.query), move |txn, ctx| {
                rest::patch(txn, ctx, res, ns.as_deref(), &name, kind, &body, sub_kind)
            })
            .await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(code, &obj, false))
        }
        (&Method::DELETE, Some(name)) if sub.is_none() => {
            let opts = delete_options(&req)?;
            let key = rest::key_for(res, ns.as_deref(), &name);
            let outcome = write(
                &st,
                opts.dry_run.iter().any(|d| d == "All"),
                move |txn, _| rest::delete(txn, res, &key, &opts),
            )
            .await?;
            Ok(match outcome {
                Deleted::Pending(obj) => object_response(StatusCode::ACCEPTED, &obj, false),
                Deleted::Removed(obj) if res.return_deleted_object || res.kind == "Namespace" => {
                    object_response(StatusCode::OK, &obj, false)
                }
                Deleted::Removed(obj) => json_response(
                    StatusCode::OK,
                    &status::success(res, &name, obj["metadata"]["uid"].as_str()),
                ),
            })
        }
        (&Method::DELETE, None) => {
            let opts = delete_options(&req)?;
            let filter = filter(res, ns.clone(), &req.query)?;
            let dry = opts.dry_run.iter().any(|d| d == "All");
            let objs = write(&st, dry, move |txn, _| {
                let mut out = Vec::new();
                for (k, obj) in txn.list(&res.group_resource(), filter.ns.as_deref()) {
                    if !filter.matches(&obj) {
                        continue;
                    }
                    match rest::delete(txn, res, &k, &opts) {
                        Ok(Deleted::Pending(o)) | Ok(Deleted::Removed(o)) => out.push(o),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((out, txn.rev()))
            })
            .await?;
            let (items, rev) = objs;
            let refs: Vec<&Value> = items.iter().map(|o| o.as_ref()).collect();
            Ok(json_response(
                StatusCode::OK,
                &list_body(res, rev, refs, false),
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn require_ns(res: &ResourceInfo, ns: Option<String>) -> Result<Option<String>, ApiError> {
    if res.namespaced && ns.is_none() {
        return Err(ApiError::MethodNotAllowed);
    }
    Ok(ns)
}

/// Runs a write transaction on a blocking thread.
async fn write<T: Send + 'static>(
    st: &Arc<AppState>,
    dry_run: bool,
    f: impl FnOnce(&mut Txn<'_>, &Ctx) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || st.store.write(dry_run, |txn| f(txn, &st.ctx)))
        .await
        .map_err(|e| ApiError::HandlerFailed {
            message: e.to_string(),
        })?
}

/// A request body: JSON, or YAML when the content type says so.
fn parse_body(req: &Req) -> Result<Value, ApiError> {
    let ct = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/yaml" => {
            let text = std::str::from_utf8(&req.body)
                .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
            let mut docs = fibril_core::manifest::parse_documents(text)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if docs.len() != 1 {
                return Err(ApiError::bad_request("expected exactly one YAML document"));
            }
            Ok(docs.remove(0))
        }
        "application/json" | "" | "*/*" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}"))),
        _ => Err(ApiError::UnsupportedMediaType {
            accepted: "application/json, application/yaml",
        }),
    }
}

fn delete_options(req: &Req) -> Result<DeleteOptions, ApiError> {
    let mut opts: DeleteOptions = if req.body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    if let Some(g) = req.query.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = req.query.get("propagationPolicy") {
        opts.propagation_policy = Some(p.clone());
    }
    if let Some(p) = &opts.propagation_policy {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "invalid propagationPolicy {p:?}: must be Orphan, Background or Foreground"
            )));
        }
    }
    if dry_run(&req.query) {
        opts.dry_run = vec!["All".into()];
    }
    Ok(opts)
}

fn object_response(code: StatusCode, obj: &Value, partial: bool) -> Response {
    if partial {
        json_response(code, &watchstream::partial_metadata(obj))
    } else {
        json_response(code, obj)
    }
}

fn filter(
    res: &'static ResourceInfo,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Filter {
        res,
        ns,
        labels,
        fields,
    })
}

fn parse_rv(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {s:?}: must be an integer"))
        }),
    }
}

/// Waits (briefly) until the store has reached `rev`.
async fn wait_for_rev(store: &Store, rev: u64) -> Result<(), ApiError> {
    let mut rx = store.subscribe();
    let reached = tokio::time::timeout(FUTURE_RV_WAIT, rx.wait_for(|r| *r >= rev)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::UnknownResourceVersion {
            requested: rev,
            current: store.rev(),
        }),
    }
}

#[derive(Serialize)]
struct ListBody<'a> {
    kind: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<Cow<'a, Value>>,
}

fn list_body<'a>(
    res: &'a ResourceInfo,
    rev: u64,
    items: Vec<&'a Value>,
    partial: bool,
) -> ListBody<'a> {
    let items = items
        .into_iter()
        .map(|o| {
            if partial {
                Cow::Owned(watchstream::partial_metadata(o))
            } else {
                Cow::Borrowed(o)
            }
        })
        .collect();
    let (kind, api_version) = if partial {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        (res.list_kind, res.api_version)
    };
    ListBody {
        kind,
        api_version,
        metadata: json!({"resourceVersion": rev.to_string()}),
        items,
    }
}

async fn list(
    st: &Arc<AppState>,
    res: &'static ResourceInfo,
    ns: Option<String>,
    q: &HashMap<String, String>,
    partial: bool,
) -> Result<Response, ApiError> {
    let filter = filter(res, ns, q)?;
    let rv = parse_rv(q)?;
    let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    if let Some(rv) = rv.filter(|rv| *rv > 0) {
        wait_for_rev(&st.store, rv).await?;
        // Only the current state is kept; an exact read of an older revision is gone.
        let current = st.store.rev();
        if exact && rv != current {
            return Err(ApiError::Expired {
                requested: rv,
                oldest: current,
            });
        }
    }
    let page = Page::parse(q)?;
    let gr = res.group_resource();
    let after = page
        .cont
        .as_ref()
        .map(|c| ObjKey::new(gr.clone(), c.ns.clone(), c.name.clone()));
    let (items, current, compacted) =
        st.store
            .list_after(&gr, filter.ns.as_deref(), after.as_ref());
    // A continued list answers at its first page's revision: a watch from there replays
    // every change made while the pages were read (objects of later pages may be newer,
    // and a replayed event then brings them back to the same state).
    let rev = match &page.cont {
        Some(c) if c.rev < compacted => {
            return Err(ApiError::Expired {
                requested: c.rev,
                oldest: compacted,
            })
        }
        Some(c) => c.rev,
        None => current,
    };
    let mut matching: Vec<&Value> = Vec::new();
    let mut last: Option<&ObjKey> = None;
    let mut more = false;
    for (k, o) in items.iter().filter(|(_, o)| filter.matches(o)) {
        if page.limit.is_some_and(|l| matching.len() >= l) {
            more = true;
            break;
        }
        matching.push(o.as_ref());
        last = Some(k);
    }
    let mut body = list_body(res, rev, matching, partial);
    if let (true, Some(last)) = (more, last) {
        body.metadata["continue"] = json!(Continue {
            rev,
            ns: last.ns.clone(),
            name: last.name.clone(),
        }
        .encode());
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `limit` and `continue` of a list.
struct Page {
    limit: Option<usize>,
    cont: Option<Continue>,
}

impl Page {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let limit = match q.get("limit").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(s) => Some(s.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid limit {s:?}: must be a non-negative integer"
                ))
            })?),
        };
        let cont =
            match q.get("continue").map(String::as_str) {
                None | Some("") => None,
                Some(s) => Some(Continue::decode(s).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {s:?}"))
                })?),
            };
        Ok(Page { limit, cont })
    }
}

/// Where a paged list continues: after (namespace, name), at revision `rev`. Opaque to
/// clients (hex of `rev|ns|name`).
#[derive(Debug, PartialEq, Eq)]
struct Continue {
    rev: u64,
    ns: String,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        format!("{}|{}|{}", self.rev, self.ns, self.name)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn decode(s: &str) -> Option<Self> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect();
        let text = String::from_utf8(bytes?).ok()?;
        let mut it = text.splitn(3, '|');
        Some(Continue {
            rev: it.next()?.parse().ok()?,
            ns: it.next()?.to_string(),
            name: it.next()?.to_string(),
        })
    }
}

async fn watch(
    st: &Arc<AppState>,
    res: &'static ResourceInfo,
    ns: Option<String>,
    q: &HashMap<String, String>,
    partial: bool,
) -> Result<Response, ApiError> {
    let filter = filter(res, ns, q)?;
    let rv = parse_rv(q)?;
    let bookmarks = flag(q, "allowWatchBookmarks");
    let send_initial = match q.get("sendInitialEvents").map(String::as_str) {
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        _ => None,
    };
    let start = if let Some(initial) = send_initial {
        let invalid =
            |field: &str, msg: &str| ApiError::invalid(res, "", status::Cause::invalid(field, msg));
        if q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
            return Err(invalid(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if initial && !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        // A revision the store has not reached is reported inside the stream (Start::After
        // checks it), where kube-rs' watcher reacts to it by relisting.
        let unreached = match rv.filter(|rv| *rv > 0) {
            Some(rv) => wait_for_rev(&st.store, rv).await.is_err(),
            None => false,
        };
        match (initial, rv) {
            (true, _) if !unreached => Start::Initial { end_bookmark: true },
            (_, Some(rv)) if rv > 0 => Start::After(rv),
            (_, _) => Start::After(st.store.rev()),
        }
    } else {
        match rv {
            None | Some(0) => Start::Initial {
                end_bookmark: false,
            },
            Some(rv) => {
                // Reported inside the stream if still unreached (see above).
                let _ = wait_for_rev(&st.store, rv).await;
                Start::After(rv)
            }
        }
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => {
            let secs: u64 = s
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?;
            (secs > 0).then(|| Duration::from_secs(secs))
        }
        None => None,
    };
    let spec = WatchSpec {
        filter,
        start,
        bookmarks,
        bookmark_interval: st.bookmark_interval,
        timeout,
        partial,
    };
    let body = watchstream::stream(st.store.clone(), spec, st.shutdown.clone());
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::new(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(group: &str, version: &str, path: &str) -> Result<Target, ApiError> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match resolve(group, Some(version), &parts)? {
            Resolved::Resource(t) => Ok(t),
            _ => Err(ApiError::NoRoute),
        }
    }

    #[test]
    fn path_resolution() {
        let t = target("", "v1", "namespaces/ns1/pods/p/status").unwrap();
        assert_eq!(
            (
                t.res.plural,
                t.ns.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("ns1"), Some("p"), Some("status"))
        );
        let t = target("", "v1", "namespaces/ns1/status").unwrap();
        assert_eq!(
            (t.res.plural, t.ns, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", None, Some("ns1"), Some("status"))
        );
        let t = target("", "v1", "namespaces/ns1").unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("ns1"))
        );
        let t = target("", "v1", "pods").unwrap();
        assert_eq!((t.res.plural, t.ns, t.name), ("pods", None, None));
        let t = target("", "v1", "watch/namespaces/x/pods").unwrap();
        assert!(t.watch_prefix);
        let t = target("apps", "v1", "namespaces/x/deployments/d").unwrap();
        assert_eq!(t.res.kind, "Deployment");
        let t = target("", "v1", "nodes/n1/status").unwrap();
        assert_eq!(
            (t.res.plural, t.ns, t.sub.as_deref()),
            ("nodes", None, Some("status"))
        );
        assert!(target("", "v1", "pods/p").is_err());
        assert!(target("", "v1", "namespaces/x/nodes").is_err());
        assert!(target("", "v1", "namespaces/x/widgets").is_err());
        assert!(target("", "v1", "namespaces/x/events/e/status").is_err());
        assert!(target("", "v1", "namespaces/x/pods/p/status/extra").is_err());
    }
}
