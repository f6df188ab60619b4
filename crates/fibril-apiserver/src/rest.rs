//! The write verbs: create, update, patch, delete and bind, each run inside one store
//! transaction.
//!
//! This is the generic registry logic of kube-apiserver (`genericregistry.Store`): type-meta
//! and namespace checks, strict decoding, system metadata, optimistic concurrency, the status
//! subresource split, graceful deletion, finalizers, owner-reference cascade and namespace
//! termination. Kind-specific rules live in `strategy`.

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, SecondsFormat, Utc};
use fibril_core::manifest;
use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, Cause};
use crate::store::{ObjKey, Txn};
use crate::strategy;

/// Server settings the write path needs.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub service_cidr: Ipv4Net,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// Namespaces that can never be deleted, as in kube-apiserver.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Pods' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn key_for(res: &ResourceInfo, ns: Option<&str>, name: &str) -> ObjKey {
    let ns = if res.namespaced { ns.unwrap_or("") } else { "" };
    ObjKey::new(res.group_resource(), ns, name)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let m = obj.as_object_mut().expect("objects are JSON objects");
    let meta = m
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

/// Checks a body's apiVersion/kind against the URL's resource (absent is fine): 400 otherwise.
fn check_type_meta(res: &ResourceInfo, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    match body.get("apiVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == res.api_version => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                other.as_str().unwrap_or(&other.to_string()),
                res.api_version
            )))
        }
    }
    match body.get("kind") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == res.kind => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "the kind in the data ({}) does not match the expected kind ({})",
            other.as_str().unwrap_or(&other.to_string()),
            res.kind
        ))),
    }
}

/// Fills `metadata.namespace` from the URL, or rejects a mismatch (400). Cluster-scoped
/// objects carry no namespace.
fn reconcile_namespace(
    res: &ResourceInfo,
    url_ns: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
    let meta = meta_mut(body);
    if !res.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let url_ns = url_ns.unwrap_or("");
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
    }
}

/// Strict decode into the kind's type; 422 naming every bad field. Returns the canonical form.
fn decode(res: &'static ResourceInfo, body: &Value) -> Result<Value, ApiError> {
    let name = meta_str(body, "name").unwrap_or("");
    manifest::decode_strict_as(res.kind_info(), body)
        .map(|t| t.to_value())
        .map_err(|e| ApiError::from_manifest(res, name, &e))
}

/// Random suffix for `generateName`, from the alphabet kube-apiserver uses (no vowels, no
/// look-alike digits).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn ensure_namespace_accepts(
    txn: &Txn<'_>,
    res: &'static ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !res.namespaced {
        return Ok(());
    }
    let nsres = registry::namespaces();
    match txn.get(&key_for(nsres, None, ns)) {
        None => Err(ApiError::NamespaceNotFound(ns.to_string())),
        Some(n) if meta_str(&n, "deletionTimestamp").is_some() => Err(ApiError::Forbidden {
            res: Some(res),
            name: name.to_string(),
            message: format!(
                "{} {name:?} is forbidden: unable to create new content in namespace {ns} \
                 because it is being terminated",
                res.group_resource()
            ),
        }),
        Some(_) => Ok(()),
    }
}

/// POST to a collection.
pub fn create(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    res: &'static ResourceInfo,
    url_ns: Option<&str>,
    mut body: Value,
) -> Result<Arc<Value>, ApiError> {
    check_type_meta(res, &body)?;
    if meta_str(&body, "resourceVersion").is_some() {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    reconcile_namespace(res, url_ns, &mut body)?;
    let mut obj = decode(res, &body)?;
    let ns = if res.namespaced {
        url_ns.unwrap_or("").to_string()
    } else {
        String::new()
    };

    let generate = meta_str(&obj, "generateName").map(str::to_string);
    let fixed = meta_str(&obj, "name").map(str::to_string);
    let name = match (fixed, generate) {
        (Some(n), _) => n,
        (None, Some(prefix)) => {
            let mut name = String::new();
            for _ in 0..8 {
                name = format!("{prefix}{}", name_suffix());
                if txn.get(&key_for(res, Some(&ns), &name)).is_none() {
                    break;
                }
            }
            if let Some(msg) = manifest::validate_name(res.kind_info(), &name) {
                return Err(ApiError::invalid(
                    res,
                    &name,
                    Cause::invalid("metadata.generateName", msg),
                ));
            }
            name
        }
        (None, None) => unreachable!("decode_strict requires a name or generateName"),
    };

    let meta = meta_mut(&mut obj);
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    for f in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
        "selfLink",
    ] {
        meta.remove(f);
    }
    if res.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }

    strategy::apply_defaults(res, &mut obj);
    ensure_namespace_accepts(txn, res, &ns, &name)?;
    let key = key_for(res, Some(&ns), &name);
    if txn.get(&key).is_some() {
        return Err(ApiError::AlreadyExists { res, name });
    }
    strategy::prepare_create(res, &mut obj, txn, &ctx.service_cidr)?;
    Ok(txn.put(key, obj))
}

/// PUT of an object or its status. Returns the stored object and whether it was created.
pub fn update(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    res: &'static ResourceInfo,
    url_ns: Option<&str>,
    name: &str,
    mut body: Value,
    sub: Sub,
) -> Result<(Arc<Value>, bool), ApiError> {
    check_type_meta(res, &body)?;
    reconcile_namespace(res, url_ns, &mut body)?;
    match meta_str(&body, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        Some(_) => {}
        None => {
            meta_mut(&mut body).insert("name".into(), json!(name));
        }
    }
    let key = key_for(res, url_ns, name);
    let Some(old) = txn.get(&key) else {
        if res.create_on_update && sub == Sub::Main {
            meta_mut(&mut body).remove("resourceVersion");
            return create(txn, ctx, res, url_ns, body).map(|o| (o, true));
        }
        return Err(ApiError::NotFound {
            res,
            name: name.to_string(),
        });
    };
    if sub == Sub::Main {
        strategy::drop_type_dependent_fields(res, &mut body, &old);
    }
    let new = decode(res, &body)?;
    check_precondition(res, name, &new, &old)?;
    store_update(txn, ctx, res, &key, &old, new, sub).map(|o| (o, false))
}

/// A body carrying a resourceVersion must carry the stored one (optimistic concurrency).
fn check_precondition(
    res: &'static ResourceInfo,
    name: &str,
    new: &Value,
    old: &Value,
) -> Result<(), ApiError> {
    match meta_str(new, "resourceVersion") {
        Some(rv) if Some(rv) != meta_str(old, "resourceVersion") => {
            Err(ApiError::conflict_modified(res, name))
        }
        _ => Ok(()),
    }
}

/// The common tail of update and patch: `new` is a decoded, canonical object for `key`.
fn store_update(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    res: &'static ResourceInfo,
    key: &ObjKey,
    old: &Arc<Value>,
    mut new: Value,
    sub: Sub,
) -> Result<Arc<Value>, ApiError> {
    let name = key.name.clone();
    let take_status = |from: &Value, into: &mut Value| {
        let m = into.as_object_mut().expect("objects are JSON objects");
        match from.get("status") {
            Some(s) if !s.is_null() => m.insert("status".into(), s.clone()),
            _ => m.remove("status"),
        };
    };
    match sub {
        Sub::Status => {
            let mut merged = old.as_ref().clone();
            take_status(&new, &mut merged);
            new = merged;
        }
        Sub::Main if res.status_subresource => take_status(old, &mut new),
        Sub::Main => {}
    }

    // System metadata is the server's.
    {
        let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
        let meta = meta_mut(&mut new);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
            "generateName",
        ] {
            match old_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        if !meta.contains_key("managedFields") {
            if let Some(mf) = old_meta.get("managedFields") {
                meta.insert("managedFields".into(), mf.clone());
            }
        }
    }
    if meta_str(old, "deletionTimestamp").is_some() {
        let before = finalizers(old);
        if let Some(added) = finalizers(&new).into_iter().find(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                res,
                &name,
                Cause::forbidden(
                    "metadata.finalizers",
                    format!("no new finalizers can be added if the object is being deleted, found new finalizers [{added:?}]"),
                ),
            ));
        }
    }
    if sub == Sub::Main {
        strategy::apply_defaults(res, &mut new);
        strategy::prepare_update(res, key, &mut new, old, txn, &ctx.service_cidr)?;
        if res.tracks_generation && new.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
    }

    // A write that changes nothing is not a write: no new resourceVersion, no watch event.
    let mut cmp = new.clone();
    meta_mut(&mut cmp).insert(
        "resourceVersion".into(),
        old["metadata"]["resourceVersion"].clone(),
    );
    if &cmp == old.as_ref() {
        return Ok(old.clone());
    }

    let stored = txn.put(key.clone(), new);
    if res.kind == "Namespace" {
        // A terminating namespace goes when it is empty, not on its own update.
        finalize_namespace_if_empty(txn, &key.name);
        return Ok(txn.get(key).unwrap_or(stored));
    }
    let done_finalizing = meta_str(&stored, "deletionTimestamp").is_some()
        && finalizers(&stored).is_empty()
        && stored["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0;
    if done_finalizing {
        if let Some(last) = remove_object(txn, res, key)? {
            return Ok(last);
        }
    }
    Ok(stored)
}

/// Patch content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    /// Applied as a JSON merge patch after dropping `$`-directives: lists are replaced rather
    /// than merged by key.
    Strategic,
    /// Server-side apply, approximated as a merge patch that creates a missing object; field
    /// ownership is not tracked.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        Some(match ct {
            "application/merge-patch+json" => PatchKind::Merge,
            "application/json-patch+json" => PatchKind::Json,
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchKind::Apply,
            _ => return None,
        })
    }
}

pub const PATCH_CONTENT_TYPES: &str = "application/json-patch+json, \
    application/merge-patch+json, application/strategic-merge-patch+json, \
    application/apply-patch+yaml";

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Parses a patch body. Apply bodies may be YAML (kubectl) or JSON (kube-rs).
fn parse_patch_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("error decoding patch: {e}"));
    match kind {
        PatchKind::Apply => {
            let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
            let mut docs = manifest::parse_documents(text).map_err(|e| bad(e.to_string()))?;
            if docs.len() != 1 {
                return Err(bad(format!(
                    "expected exactly one object, found {}",
                    docs.len()
                )));
            }
            Ok(docs.remove(0))
        }
        _ => serde_json::from_slice(body).map_err(|e| bad(e.to_string())),
    }
}

/// PATCH of an object or its status. Returns the stored object and whether it was created.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    res: &'static ResourceInfo,
    url_ns: Option<&str>,
    name: &str,
    kind: PatchKind,
    body: &[u8],
    sub: Sub,
) -> Result<(Arc<Value>, bool), ApiError> {
    let patch = parse_patch_body(kind, body)?;
    let key = key_for(res, url_ns, name);
    let Some(old) = txn.get(&key) else {
        if kind == PatchKind::Apply && sub == Sub::Main {
            let mut obj = patch;
            check_type_meta(res, &obj)?;
            if meta_str(&obj, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&obj, "name").unwrap_or("")
                )));
            }
            meta_mut(&mut obj).insert("name".into(), json!(name));
            return create(txn, ctx, res, url_ns, obj).map(|o| (o, true));
        }
        return Err(ApiError::NotFound {
            res,
            name: name.to_string(),
        });
    };

    let mut doc = old.as_ref().clone();
    match kind {
        PatchKind::Merge => json_patch::merge(&mut doc, &patch),
        PatchKind::Strategic => {
            let mut p = patch;
            strip_directives(&mut p);
            json_patch::merge(&mut doc, &p)
        }
        PatchKind::Apply => {
            check_type_meta(res, &patch)?;
            json_patch::merge(&mut doc, &patch)
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::invalid(
                    res,
                    name,
                    Cause::invalid("", format!("the JSON patch could not be applied: {e}")),
                )
            })?;
        }
    }
    check_type_meta(res, &doc)?;
    for f in ["name", "namespace"] {
        if doc["metadata"][f] != old["metadata"][f] {
            return Err(ApiError::invalid(
                res,
                name,
                Cause::invalid(format!("metadata.{f}"), "field is immutable"),
            ));
        }
    }
    if sub == Sub::Main {
        strategy::drop_type_dependent_fields(res, &mut doc, &old);
    }
    let new = decode(res, &doc)?;
    check_precondition(res, name, &new, &old)?;
    store_update(txn, ctx, res, &key, &old, new, sub).map(|o| (o, false))
}

/// `DeleteOptions`, from the body and/or query.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub preconditions: Option<Preconditions>,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// The object is gone; its last state.
    Removed(Arc<Value>),
    /// Deletion is pending (graceful period or finalizers); the object as it is now.
    Pending(Arc<Value>),
}

/// DELETE of one object.
pub fn delete(
    txn: &mut Txn<'_>,
    res: &'static ResourceInfo,
    key: &ObjKey,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let not_found = || ApiError::NotFound {
        res,
        name: key.name.clone(),
    };
    let obj = txn.get(key).ok_or_else(not_found)?;
    if let Some(p) = &opts.preconditions {
        let uid = meta_str(&obj, "uid").unwrap_or("");
        if let Some(want) = p.uid.as_deref().filter(|u| *u != uid) {
            return Err(ApiError::Conflict {
                res,
                name: key.name.clone(),
                message: format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            });
        }
        let rv = meta_str(&obj, "resourceVersion").unwrap_or("");
        if let Some(want) = p.resource_version.as_deref().filter(|v| *v != rv) {
            return Err(ApiError::Conflict {
                res,
                name: key.name.clone(),
                message: format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, \
                     ResourceVersion in object meta: {rv}"
                ),
            });
        }
    }
    if opts.propagation_policy.as_deref() == Some("Orphan") {
        if let Some(uid) = meta_str(&obj, "uid") {
            orphan_dependents(txn, uid);
        }
    }
    if res.kind == "Namespace" {
        return delete_namespace(txn, res, key, &obj);
    }

    let grace = graceful_period(res, &obj, opts);
    let pending_deletion = meta_str(&obj, "deletionTimestamp").is_some();
    if grace > 0 {
        let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if pending_deletion && current.is_some_and(|c| c <= grace) {
            return Ok(Deleted::Pending(obj));
        }
        let mut o = obj.as_ref().clone();
        let at = Utc::now() + ChronoDuration::seconds(grace);
        let meta = meta_mut(&mut o);
        meta.insert(
            "deletionTimestamp".into(),
            json!(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        return Ok(Deleted::Pending(txn.put(key.clone(), o)));
    }
    if !finalizers(&obj).is_empty() {
        let already =
            pending_deletion && obj["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0);
        if already {
            return Ok(Deleted::Pending(obj));
        }
        let mut o = obj.as_ref().clone();
        let meta = meta_mut(&mut o);
        if !pending_deletion {
            meta.insert("deletionTimestamp".into(), json!(now()));
        }
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        return Ok(Deleted::Pending(txn.put(key.clone(), o)));
    }
    remove_object(txn, res, key)?
        .map(Deleted::Removed)
        .ok_or_else(not_found)
}

/// The grace period a delete gets: only scheduled, non-terminal pods are deleted gracefully.
fn graceful_period(res: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> i64 {
    if res.kind != "Pod" {
        return 0;
    }
    let scheduled = obj["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    );
    if !scheduled || terminal {
        return 0;
    }
    let g = opts
        .grace_period_seconds
        .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    // kube-apiserver turns a negative period into the minimum graceful one.
    if g < 0 {
        1
    } else {
        g
    }
}

/// Removes an object for good, then its dependents (background cascade) and, if it was the
/// last thing in a terminating namespace, the namespace. Returns the object's last state.
fn remove_object(
    txn: &mut Txn<'_>,
    res: &'static ResourceInfo,
    key: &ObjKey,
) -> Result<Option<Arc<Value>>, ApiError> {
    let Some(last) = txn.delete(key) else {
        return Ok(None);
    };
    tracing::debug!(resource = %key.res, namespace = %key.ns, name = %key.name, "removed");
    if let Some(uid) = meta_str(&last, "uid") {
        cascade(txn, uid)?;
    }
    if res.namespaced {
        finalize_namespace_if_empty(txn, &key.ns);
    }
    Ok(Some(last))
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect()
}

fn uid_exists(txn: &Txn<'_>, uid: &str) -> bool {
    txn.any(|o| o["metadata"]["uid"].as_str() == Some(uid))
}

fn dependents_of(txn: &Txn<'_>, owner_uid: &str) -> Vec<(ObjKey, Arc<Value>)> {
    txn.filter(|o| {
        o["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(owner_uid)))
    })
}

fn without_owner(obj: &Value, uid: &str) -> Value {
    let mut o = obj.clone();
    if let Some(refs) = o
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        refs.retain(|r| r["uid"].as_str() != Some(uid));
        if refs.is_empty() {
            meta_mut(&mut o).remove("ownerReferences");
        }
    }
    o
}

/// Background garbage collection of the dependents of a removed owner: a dependent that still
/// has another live owner only loses this reference; any other is deleted (pods gracefully).
fn cascade(txn: &mut Txn<'_>, owner_uid: &str) -> Result<(), ApiError> {
    let dependents = dependents_of(txn, owner_uid);
    for (k, dep) in dependents {
        let Some(res) = registry::find_group_resource(&k.res) else {
            continue;
        };
        // It may have gone in an earlier step of this cascade.
        let Some(current) = txn.get(&k) else {
            continue;
        };
        let others_alive = owner_uids(&dep)
            .iter()
            .any(|u| u != owner_uid && uid_exists(txn, u));
        if others_alive {
            txn.put(k, without_owner(&current, owner_uid));
        } else {
            match delete(txn, res, &k, &DeleteOptions::default()) {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn orphan_dependents(txn: &mut Txn<'_>, owner_uid: &str) {
    let dependents = dependents_of(txn, owner_uid);
    for (k, dep) in dependents {
        txn.put(k, without_owner(&dep, owner_uid));
    }
}

/// Namespace deletion as the namespace controller performs it, synchronously: mark the
/// namespace Terminating, delete everything in it (pods still get their grace period), and
/// remove the namespace once it is empty.
fn delete_namespace(
    txn: &mut Txn<'_>,
    res: &'static ResourceInfo,
    key: &ObjKey,
    obj: &Arc<Value>,
) -> Result<Deleted, ApiError> {
    if PROTECTED_NAMESPACES.contains(&key.name.as_str()) {
        return Err(ApiError::Forbidden {
            res: Some(res),
            name: key.name.clone(),
            message: format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                key.name
            ),
        });
    }
    if meta_str(obj, "deletionTimestamp").is_none() {
        let mut o = obj.as_ref().clone();
        meta_mut(&mut o).insert("deletionTimestamp".into(), json!(now()));
        meta_mut(&mut o).insert("deletionGracePeriodSeconds".into(), json!(0));
        o["status"] = json!({"phase": "Terminating"});
        txn.put(key.clone(), o);
    }
    for r in registry::resources().iter().filter(|r| r.namespaced) {
        for (k, _) in txn.list(&r.group_resource(), Some(&key.name)) {
            match delete(txn, r, &k, &DeleteOptions::default()) {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    finalize_namespace_if_empty(txn, &key.name);
    Ok(match txn.get(key) {
        Some(o) => Deleted::Pending(o),
        None => Deleted::Removed(obj.clone()),
    })
}

fn finalize_namespace_if_empty(txn: &mut Txn<'_>, ns: &str) {
    let nskey = key_for(registry::namespaces(), None, ns);
    let Some(nsobj) = txn.get(&nskey) else {
        return;
    };
    if meta_str(&nsobj, "deletionTimestamp").is_none() || !finalizers(&nsobj).is_empty() {
        return;
    }
    let empty = registry::resources()
        .iter()
        .filter(|r| r.namespaced)
        .all(|r| txn.list(&r.group_resource(), Some(ns)).is_empty());
    if empty {
        tracing::info!(namespace = ns, "namespace finalized");
        txn.delete(&nskey);
    }
}

/// POST pods/<name>/binding: assigns an unscheduled pod to a node, as the scheduler does.
pub fn bind(
    txn: &mut Txn<'_>,
    res: &'static ResourceInfo,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<(), ApiError> {
    let binding: k8s_openapi::api::core::v1::Binding = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::bad_request(format!("decoding Binding: {e}")))?;
    let target = &binding.target;
    if target.kind.as_deref().is_some_and(|k| k != "Node") {
        return Err(ApiError::invalid(
            res,
            name,
            Cause::invalid("target.kind", "must be empty or 'Node'"),
        ));
    }
    let node = target.name.as_deref().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            res,
            name,
            Cause::invalid("target.name", "required"),
        ));
    }
    let key = key_for(res, Some(ns), name);
    let pod = txn.get(&key).ok_or_else(|| ApiError::NotFound {
        res,
        name: name.to_string(),
    })?;
    if meta_str(&pod, "deletionTimestamp").is_some() {
        return Err(ApiError::Conflict {
            res,
            name: name.to_string(),
            message: format!("pod {name} is being deleted, cannot be assigned to a host"),
        });
    }
    if let Some(cur) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(ApiError::Conflict {
            res,
            name: name.to_string(),
            message: format!("pod {name} is already assigned to node {cur:?}"),
        });
    }
    let mut p = pod.as_ref().clone();
    p["spec"]["nodeName"] = json!(node);
    let cond = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now()});
    let conds = p["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(cond);
    p["status"]["conditions"] = Value::Array(conds);
    txn.put(key, p);
    Ok(())
}

/// How long an Event lives after it was last recorded (kube-apiserver's `--event-ttl`).
pub const EVENT_TTL: ChronoDuration = ChronoDuration::hours(1);

/// How often expired Events are collected.
const EVENT_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// When an Event was last recorded: the latest of its timestamps.
fn event_last_seen(ev: &Value) -> Option<chrono::DateTime<Utc>> {
    [
        ev.pointer("/series/lastObservedTime"),
        ev.get("lastTimestamp"),
        ev.get("eventTime"),
        ev.pointer("/metadata/creationTimestamp"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
    .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    .map(|t| t.with_timezone(&Utc))
    .max()
}

/// Deletes Events last recorded before `cutoff` (emitting DELETED, as an etcd lease expiry
/// does). Returns how many went.
pub fn expire_events(txn: &mut Txn<'_>, cutoff: chrono::DateTime<Utc>) -> usize {
    let res = registry::find("", "v1", "events").expect("events are served");
    let expired: Vec<ObjKey> = txn
        .list(&res.group_resource(), None)
        .into_iter()
        .filter(|(_, ev)| event_last_seen(ev).is_some_and(|t| t < cutoff))
        .map(|(k, _)| k)
        .collect();
    for k in &expired {
        txn.delete(k);
    }
    expired.len()
}

/// Runs [`expire_events`] every minute until shutdown.
pub async fn expire_events_periodically(
    store: Arc<crate::store::Store>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVENT_GC_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let store = store.clone();
        let cutoff = Utc::now() - EVENT_TTL;
        let res = tokio::task::spawn_blocking(move || {
            store.write(false, |txn| Ok::<_, ApiError>(expire_events(txn, cutoff)))
        })
        .await;
        match res {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(count = n, "expired events"),
            Ok(Err(e)) => tracing::warn!(error = %e, "expiring events"),
            Err(e) => tracing::warn!(error = %e, "expiring events"),
        }
    }
}

/// Creates the namespaces every cluster starts with, if missing.
pub fn bootstrap(txn: &mut Txn<'_>, ctx: &Ctx) -> Result<(), ApiError> {
    let nsres = registry::namespaces();
    for ns in PROTECTED_NAMESPACES {
        if txn.get(&key_for(nsres, None, ns)).is_none() {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create(txn, ctx, nsres, None, body)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    struct Env {
        _dir: tempfile::TempDir,
        store: Store,
        ctx: Ctx,
    }

    impl Env {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let ctx = Ctx {
                service_cidr: "10.96.0.0/24".parse().unwrap(),
            };
            store.write(false, |txn| bootstrap(txn, &ctx)).unwrap();
            Self {
                _dir: dir,
                store,
                ctx,
            }
        }

        fn run<T>(
            &self,
            f: impl FnOnce(&mut Txn<'_>, &Ctx) -> Result<T, ApiError>,
        ) -> Result<T, ApiError> {
            self.store.write(false, |txn| f(txn, &self.ctx))
        }

        fn create(
            &self,
            kind: &str,
            ns: Option<&str>,
            body: Value,
        ) -> Result<Arc<Value>, ApiError> {
            let res = res(kind);
            self.run(|txn, ctx| create(txn, ctx, res, ns, body))
        }

        fn update(
            &self,
            kind: &str,
            ns: Option<&str>,
            body: Value,
            sub: Sub,
        ) -> Result<Arc<Value>, ApiError> {
            let res = res(kind);
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            self.run(|txn, ctx| update(txn, ctx, res, ns, &name, body, sub))
                .map(|(o, _)| o)
        }

        fn patch(
            &self,
            kind: &str,
            ns: Option<&str>,
            name: &str,
            pk: PatchKind,
            body: Value,
        ) -> Result<Arc<Value>, ApiError> {
            let res = res(kind);
            let bytes = serde_json::to_vec(&body).unwrap();
            self.run(|txn, ctx| patch(txn, ctx, res, ns, name, pk, &bytes, Sub::Main))
                .map(|(o, _)| o)
        }

        fn delete(
            &self,
            kind: &str,
            ns: Option<&str>,
            name: &str,
            opts: DeleteOptions,
        ) -> Result<Deleted, ApiError> {
            let res = res(kind);
            let key = key_for(res, ns, name);
            self.run(|txn, _| delete(txn, res, &key, &opts))
        }

        fn get(&self, kind: &str, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
            self.store.get(&key_for(res(kind), ns, name))
        }
    }

    fn res(kind: &str) -> &'static ResourceInfo {
        registry::resources()
            .iter()
            .find(|r| r.kind == kind)
            .unwrap()
    }

    fn pod(name: &str, node: Option<&str>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                           "spec": {"containers": [{"name": "c", "image": "img:1"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    fn grace(g: i64) -> DeleteOptions {
        DeleteOptions {
            grace_period_seconds: Some(g),
            ..Default::default()
        }
    }

    #[test]
    fn create_sets_system_fields_and_defaults() {
        let env = Env::new();
        let mut body = pod("", None);
        body["metadata"] = json!({"generateName": "web-"});
        let p = env.create("Pod", Some("default"), body).unwrap();
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert!(p["metadata"]["uid"].is_string());
        assert!(p["metadata"]["creationTimestamp"].is_string());
        assert_eq!(p["metadata"]["namespace"], "default");
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["dnsPolicy"], "ClusterFirst");
        let e = env
            .create("Pod", Some("other"), pod("x", None))
            .unwrap_err();
        assert!(
            matches!(e, ApiError::NamespaceNotFound(ref n) if n == "other"),
            "{e}"
        );
        let mut wrong_ns = pod("x", None);
        wrong_ns["metadata"]["namespace"] = json!("kube-system");
        assert!(matches!(
            env.create("Pod", Some("default"), wrong_ns),
            Err(ApiError::BadRequest { .. })
        ));
        let mut wrong_kind = pod("x", None);
        wrong_kind["kind"] = json!("Service");
        assert!(matches!(
            env.create("Pod", Some("default"), wrong_kind),
            Err(ApiError::BadRequest { .. })
        ));
    }

    #[test]
    fn optimistic_concurrency_and_noop_updates() {
        let env = Env::new();
        let p = env.create("Pod", Some("default"), pod("p", None)).unwrap();
        let mut stale = p.as_ref().clone();
        stale["metadata"]["labels"] = json!({"a": "1"});
        let p2 = env
            .update("Pod", Some("default"), stale.clone(), Sub::Main)
            .unwrap();
        assert_ne!(
            p2["metadata"]["resourceVersion"],
            p["metadata"]["resourceVersion"]
        );
        let e = env
            .update("Pod", Some("default"), stale, Sub::Main)
            .unwrap_err();
        assert!(matches!(e, ApiError::Conflict { .. }), "{e}");
        let rev = env.store.rev();
        let same = env
            .update("Pod", Some("default"), p2.as_ref().clone(), Sub::Main)
            .unwrap();
        assert_eq!(same, p2);
        assert_eq!(env.store.rev(), rev, "a no-op update writes nothing");
    }

    #[test]
    fn status_subresource_split() {
        let env = Env::new();
        let p = env.create("Pod", Some("default"), pod("p", None)).unwrap();
        let mut main = p.as_ref().clone();
        main["status"]["phase"] = json!("Running");
        main["metadata"]["labels"] = json!({"x": "y"});
        let after = env.update("Pod", Some("default"), main, Sub::Main).unwrap();
        assert_eq!(after["status"]["phase"], "Pending");
        assert_eq!(after["metadata"]["labels"]["x"], "y");
        let mut st = after.as_ref().clone();
        st["status"]["phase"] = json!("Running");
        st["metadata"]["labels"] = json!({"x": "z"});
        let after = env.update("Pod", Some("default"), st, Sub::Status).unwrap();
        assert_eq!(after["status"]["phase"], "Running");
        assert_eq!(after["metadata"]["labels"]["x"], "y");
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let env = Env::new();
        env.create("Pod", Some("default"), pod("p", None)).unwrap();
        let bind = |node: &str| {
            env.patch(
                "Pod",
                Some("default"),
                "p",
                PatchKind::Merge,
                json!({"spec": {"nodeName": node}}),
            )
        };
        bind("node-1").unwrap();
        assert!(matches!(bind("node-2"), Err(ApiError::Invalid { .. })));
        let img = env.patch(
            "Pod",
            Some("default"),
            "p",
            PatchKind::Json,
            json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "img:2"}]),
        );
        assert_eq!(img.unwrap()["spec"]["containers"][0]["image"], "img:2");
        let renamed = env.patch(
            "Pod",
            Some("default"),
            "p",
            PatchKind::Json,
            json!([{"op": "replace", "path": "/spec/containers/0/name", "value": "d"}]),
        );
        match renamed {
            Err(ApiError::Invalid { causes, .. }) => assert_eq!(causes[0].field, "spec"),
            other => panic!("{other:?}"),
        }
        let failed_test = env.patch(
            "Pod",
            Some("default"),
            "p",
            PatchKind::Json,
            json!([{"op": "test", "path": "/metadata/name", "value": "q"}]),
        );
        assert!(matches!(failed_test, Err(ApiError::Invalid { .. })));
    }

    #[test]
    fn graceful_pod_deletion() {
        let env = Env::new();
        env.create("Pod", Some("default"), pod("p", Some("node-1")))
            .unwrap();
        let Deleted::Pending(p) = env
            .delete("Pod", Some("default"), "p", DeleteOptions::default())
            .unwrap()
        else {
            panic!("scheduled pods are deleted gracefully");
        };
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
        let Deleted::Pending(p) = env.delete("Pod", Some("default"), "p", grace(10)).unwrap()
        else {
            panic!()
        };
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 10);
        let Deleted::Pending(p) = env.delete("Pod", Some("default"), "p", grace(20)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            p["metadata"]["deletionGracePeriodSeconds"], 10,
            "grace only shortens"
        );
        assert!(matches!(
            env.delete("Pod", Some("default"), "p", grace(0)).unwrap(),
            Deleted::Removed(_)
        ));
        assert!(env.get("Pod", Some("default"), "p").is_none());
        // Terminal pods go at once.
        env.create("Pod", Some("default"), pod("done", Some("node-1")))
            .unwrap();
        let st = json!({"status": {"phase": "Succeeded"}});
        let bytes = serde_json::to_vec(&st).unwrap();
        env.run(|txn, ctx| {
            patch(
                txn,
                ctx,
                res("Pod"),
                Some("default"),
                "done",
                PatchKind::Merge,
                &bytes,
                Sub::Status,
            )
        })
        .unwrap();
        assert!(matches!(
            env.delete("Pod", Some("default"), "done", DeleteOptions::default())
                .unwrap(),
            Deleted::Removed(_)
        ));
    }

    #[test]
    fn finalizers_hold_deletion() {
        let env = Env::new();
        let mut body = pod("f", None);
        body["metadata"]["finalizers"] = json!(["a/b"]);
        env.create("Pod", Some("default"), body).unwrap();
        assert!(matches!(
            env.delete("Pod", Some("default"), "f", DeleteOptions::default())
                .unwrap(),
            Deleted::Pending(_)
        ));
        let add = env.patch(
            "Pod",
            Some("default"),
            "f",
            PatchKind::Merge,
            json!({"metadata": {"finalizers": ["a/b", "c/d"]}}),
        );
        assert!(matches!(add, Err(ApiError::Invalid { .. })));
        env.patch(
            "Pod",
            Some("default"),
            "f",
            PatchKind::Merge,
            json!({"metadata": {"finalizers": []}}),
        )
        .unwrap();
        assert!(env.get("Pod", Some("default"), "f").is_none());
    }

    fn owned_by(name: &str, uids: &[&str]) -> Value {
        let mut p = pod(name, None);
        p["metadata"]["ownerReferences"] = uids
            .iter()
            .map(|u| json!({"apiVersion": "v1", "kind": "Service", "name": "o", "uid": u}))
            .collect();
        p
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn owner_reference_cascade() {
        let env = Env::new();
        let a = env.create("Service", Some("default"), svc("a")).unwrap();
        let b = env.create("Service", Some("default"), svc("b")).unwrap();
        let (ua, ub) = (
            a["metadata"]["uid"].as_str().unwrap(),
            b["metadata"]["uid"].as_str().unwrap(),
        );
        env.create("Pod", Some("default"), owned_by("both", &[ua, ub]))
            .unwrap();
        env.create("Pod", Some("default"), owned_by("only-a", &[ua]))
            .unwrap();
        env.create("Pod", Some("default"), owned_by("orphan-me", &[ub]))
            .unwrap();
        env.delete("Service", Some("default"), "a", DeleteOptions::default())
            .unwrap();
        assert!(env.get("Pod", Some("default"), "only-a").is_none());
        let both = env.get("Pod", Some("default"), "both").unwrap();
        assert_eq!(
            both["metadata"]["ownerReferences"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let orphan = DeleteOptions {
            propagation_policy: Some("Orphan".into()),
            ..Default::default()
        };
        env.delete("Service", Some("default"), "b", orphan).unwrap();
        let kept = env.get("Pod", Some("default"), "orphan-me").unwrap();
        assert!(kept["metadata"].get("ownerReferences").is_none());
        assert!(env.get("Pod", Some("default"), "both").unwrap()["metadata"]
            .get("ownerReferences")
            .is_none());
    }

    #[test]
    fn namespace_termination() {
        let env = Env::new();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}});
        env.create("Namespace", None, ns).unwrap();
        env.create("Pod", Some("t"), pod("running", Some("node-1")))
            .unwrap();
        env.create("Pod", Some("t"), pod("pending", None)).unwrap();
        env.create("Service", Some("t"), svc("s")).unwrap();
        let Deleted::Pending(n) = env
            .delete("Namespace", None, "t", DeleteOptions::default())
            .unwrap()
        else {
            panic!("a namespace with a terminating pod stays");
        };
        assert_eq!(n["status"]["phase"], "Terminating");
        assert!(env.get("Pod", Some("t"), "pending").is_none());
        assert!(env.get("Service", Some("t"), "s").is_none());
        assert!(
            env.get("Pod", Some("t"), "running").unwrap()["metadata"]["deletionTimestamp"]
                .is_string()
        );
        assert!(matches!(
            env.create("Pod", Some("t"), pod("new", None)),
            Err(ApiError::Forbidden { .. })
        ));
        // Updating the terminating namespace does not remove it early.
        env.patch(
            "Namespace",
            None,
            "t",
            PatchKind::Merge,
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .unwrap();
        assert!(env.get("Namespace", None, "t").is_some());
        // The kubelet's final delete empties it, and the namespace goes.
        env.delete("Pod", Some("t"), "running", grace(0)).unwrap();
        assert!(env.get("Namespace", None, "t").is_none());
        assert!(matches!(
            env.delete("Namespace", None, "kube-system", DeleteOptions::default()),
            Err(ApiError::Forbidden { .. })
        ));
    }

    #[test]
    fn service_addresses() {
        let env = Env::new();
        let s = env.create("Service", Some("default"), svc("a")).unwrap();
        let ip = s["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!(s["spec"]["clusterIPs"], json!([ip]));
        // A PUT without the ClusterIP keeps it; changing it is refused.
        let mut body = s.as_ref().clone();
        body["spec"].as_object_mut().unwrap().remove("clusterIP");
        body["spec"].as_object_mut().unwrap().remove("clusterIPs");
        let kept = env
            .update("Service", Some("default"), body, Sub::Main)
            .unwrap();
        assert_eq!(kept["spec"]["clusterIP"], json!(ip));
        let moved = env.patch(
            "Service",
            Some("default"),
            "a",
            PatchKind::Merge,
            json!({"spec": {"clusterIP": "10.96.0.200", "clusterIPs": null}}),
        );
        match moved {
            Err(ApiError::Invalid { causes, .. }) => assert_eq!(causes[0].field, "spec.clusterIP"),
            other => panic!("{other:?}"),
        }
        // To NodePort and back.
        let np = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"spec": {"type": "NodePort"}}),
            )
            .unwrap();
        let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&port));
        assert_eq!(np["spec"]["clusterIP"], json!(ip));
        let again = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"metadata": {"labels": {"l": "1"}}}),
            )
            .unwrap();
        assert_eq!(
            again["spec"]["ports"][0]["nodePort"],
            json!(port),
            "NodePorts are kept"
        );
        // Back to ClusterIP while also asking for a nodePort the Service did not hold: the
        // user's own contradiction is refused, naming the field.
        let other_port = if port == 30000 { 30001 } else { 30000 };
        let back = env.patch(
            "Service",
            Some("default"),
            "a",
            PatchKind::Merge,
            json!({"spec": {"type": "ClusterIP", "ports": [
                {"port": 80, "protocol": "TCP", "nodePort": other_port}
            ]}}),
        );
        match back {
            Err(ApiError::Invalid { causes, .. }) => {
                assert_eq!(causes[0].field, "spec.ports[0].nodePort", "{causes:?}")
            }
            other => panic!("a new nodePort on a ClusterIP Service was not refused: {other:?}"),
        }
        // As kube-apiserver (dropTypeDependentFields): a merge patch that only changes the
        // type drops the nodePorts and externalTrafficPolicy it left as they were, and the
        // port is released.
        let back = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"spec": {"type": "ClusterIP"}}),
            )
            .unwrap();
        assert!(back["spec"]["ports"][0].get("nodePort").is_none(), "{back}");
        assert!(
            back["spec"].get("externalTrafficPolicy").is_none(),
            "{back}"
        );
        assert_eq!(
            back["spec"]["clusterIP"],
            json!(ip),
            "the ClusterIP is kept"
        );
        let reuse = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Json,
                json!([
                    {"op": "replace", "path": "/spec/type", "value": "NodePort"},
                    {"op": "add", "path": "/spec/ports/0/nodePort", "value": port}
                ]),
            )
            .unwrap();
        assert_eq!(
            reuse["spec"]["ports"][0]["nodePort"],
            json!(port),
            "released, reusable"
        );
        let back = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Json,
                json!([
                    {"op": "replace", "path": "/spec/type", "value": "ClusterIP"},
                    {"op": "remove", "path": "/spec/ports/0/nodePort"},
                    {"op": "remove", "path": "/spec/externalTrafficPolicy"}
                ]),
            )
            .unwrap();
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        // A LoadBalancer with externalTrafficPolicy Local gets a health check node port,
        // kept across updates, released when the policy goes back to Cluster.
        let lb = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}}),
            )
            .unwrap();
        let hc = lb["spec"]["healthCheckNodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&hc));
        let lb_port = lb["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert_ne!(
            hc, lb_port,
            "one range: the health check port is not a NodePort"
        );
        let kept = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"metadata": {"labels": {"l": "2"}}}),
            )
            .unwrap();
        assert_eq!(kept["spec"]["healthCheckNodePort"], json!(hc));
        let mut other = svc("o2");
        other["spec"]["type"] = json!("NodePort");
        other["spec"]["ports"][0]["nodePort"] = json!(hc);
        match env.create("Service", Some("default"), other) {
            Err(ApiError::Invalid { causes, .. }) => {
                assert_eq!(causes[0].field, "spec.ports[0].nodePort")
            }
            r => panic!("the health check port is taken: {r:?}"),
        }
        let cluster = env
            .patch(
                "Service",
                Some("default"),
                "a",
                PatchKind::Merge,
                json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
            )
            .unwrap();
        assert!(
            cluster["spec"].get("healthCheckNodePort").is_none(),
            "{cluster}"
        );
        let forced = env.patch(
            "Service",
            Some("default"),
            "a",
            PatchKind::Merge,
            json!({"spec": {"healthCheckNodePort": 31999}}),
        );
        match forced {
            Err(ApiError::Invalid { causes, .. }) => {
                assert_eq!(causes[0].field, "spec.healthCheckNodePort")
            }
            r => panic!("only LoadBalancer + Local may have one: {r:?}"),
        }
        // Headless and ExternalName services have no allocated address.
        let mut headless = svc("h");
        headless["spec"]["clusterIP"] = json!("None");
        let h = env.create("Service", Some("default"), headless).unwrap();
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        let ext = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                         "spec": {"type": "ExternalName", "externalName": "example.com"}});
        let e = env.create("Service", Some("default"), ext).unwrap();
        assert!(e["spec"].get("clusterIP").is_none());
        // Out-of-range requests name the field.
        let mut far = svc("far");
        far["spec"]["clusterIP"] = json!("10.1.0.1");
        match env.create("Service", Some("default"), far) {
            Err(ApiError::Invalid { causes, .. }) => {
                assert_eq!(causes[0].field, "spec.clusterIP");
                assert!(
                    causes[0].message.contains("not in the valid range"),
                    "{}",
                    causes[0].message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_and_strategic_patches() {
        let env = Env::new();
        let body = serde_json::to_vec(&pod("a", None)).unwrap();
        let (created, was_created) = env
            .run(|txn, ctx| {
                patch(
                    txn,
                    ctx,
                    res("Pod"),
                    Some("default"),
                    "a",
                    PatchKind::Apply,
                    &body,
                    Sub::Main,
                )
            })
            .unwrap();
        assert!(was_created);
        assert_eq!(created["status"]["phase"], "Pending");
        let yaml = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels:\n    via: yaml\n";
        let (applied, was_created) = env
            .run(|txn, ctx| {
                patch(
                    txn,
                    ctx,
                    res("Pod"),
                    Some("default"),
                    "a",
                    PatchKind::Apply,
                    yaml,
                    Sub::Main,
                )
            })
            .unwrap();
        assert!(!was_created);
        assert_eq!(applied["metadata"]["labels"]["via"], "yaml");
        let smp = json!({"metadata": {"labels": {"s": "1"}},
                         "spec": {"$setElementOrder/containers": [{"name": "c"}]}});
        let p = env
            .patch("Pod", Some("default"), "a", PatchKind::Strategic, smp)
            .unwrap();
        assert_eq!(p["metadata"]["labels"]["s"], "1");
    }

    #[test]
    fn binding() {
        let env = Env::new();
        env.create("Pod", Some("default"), pod("p", None)).unwrap();
        let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                       "target": {"kind": "Node", "name": "node-1"}});
        env.run(|txn, _| bind(txn, res("Pod"), "default", "p", &b))
            .unwrap();
        let p = env.get("Pod", Some("default"), "p").unwrap();
        assert_eq!(p["spec"]["nodeName"], "node-1");
        assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
        let again = env.run(|txn, _| bind(txn, res("Pod"), "default", "p", &b));
        assert!(matches!(again, Err(ApiError::Conflict { .. })));
    }

    #[test]
    fn events_expire() {
        let env = Env::new();
        let ev = |name: &str, last: &str| {
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
                   "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                   "reason": "Started", "lastTimestamp": last})
        };
        env.create("Event", Some("default"), ev("old", "2020-01-01T00:00:00Z"))
            .unwrap();
        let later =
            (Utc::now() + ChronoDuration::hours(3)).to_rfc3339_opts(SecondsFormat::Secs, true);
        env.create("Event", Some("default"), ev("new", &later))
            .unwrap();
        // Both were created now; only "new" was recorded after the cutoff.
        let cutoff = Utc::now() + ChronoDuration::hours(2);
        let gone = env.run(|txn, _| Ok(expire_events(txn, cutoff))).unwrap();
        assert_eq!(gone, 1);
        assert!(env.get("Event", Some("default"), "old").is_none());
        assert!(env.get("Event", Some("default"), "new").is_some());
    }

    #[test]
    fn deployment_generation() {
        let env = Env::new();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"selector": {"matchLabels": {"a": "b"}},
                                "template": {"metadata": {"labels": {"a": "b"}},
                                             "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let d = env.create("Deployment", Some("default"), d).unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let d = env
            .patch(
                "Deployment",
                Some("default"),
                "d",
                PatchKind::Merge,
                json!({"metadata": {"labels": {"x": "1"}}}),
            )
            .unwrap();
        assert_eq!(
            d["metadata"]["generation"], 1,
            "metadata changes keep the generation"
        );
        let d = env
            .patch(
                "Deployment",
                Some("default"),
                "d",
                PatchKind::Merge,
                json!({"spec": {"replicas": 2}}),
            )
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 2);
    }
}
