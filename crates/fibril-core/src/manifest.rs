//! Strict decoding of Kubernetes manifests into k8s-openapi types.
//!
//! This module owns the one definition of "is this a well-formed object of a kind fibril
//! understands". The lab API server runs every request body through [`decode_strict`], and the
//! CLI runs every document of a manifest through it before applying anything, so a typo is
//! rejected whole with the path of the offending field instead of being silently dropped.
//!
//! Three kinds of problems are reported, each with a field path in Kubernetes' own notation
//! (`spec.containers[0].ports[0].containerPort`):
//! - type errors, found by decoding with `serde_path_to_error`;
//! - unknown fields, found by re-serializing the typed value and diffing the key sets against the
//!   input (k8s-openapi silently ignores unknown keys, so this is the only way to see them);
//! - a small set of semantic checks the API server would also make (names, containers, ports).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde_json::Value;

use crate::ipam::{ClusterPool, IpamError};
use crate::kinds::{FibrilIPPool, FibrilNode};

/// One problem with a manifest, located by its field path (empty for the document itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    pub path: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one document (or in the text, for [`parse_documents`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub problems: Vec<FieldProblem>,
}

impl ManifestError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![FieldProblem::new(path, message)],
        }
    }

    /// The field paths of all problems, in report order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.problems.iter().map(|p| p.path.as_str())
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Static facts about a kind, taken from its k8s-openapi type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// `v1`, `apps/v1`, ...
    pub api_version: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL path segment, e.g. `pods`.
    pub plural: &'static str,
    pub namespaced: bool,
    /// Names must be DNS-1123 labels rather than subdomains (namespaces, services).
    pub name_is_label: bool,
}

/// Maps a k8s-openapi scope marker type to "is it namespaced".
pub trait ScopeInfo {
    const NAMESPACED: bool;
}
impl ScopeInfo for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeInfo for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl KindInfo {
    pub const fn of<K>(name_is_label: bool) -> Self
    where
        K: k8s_openapi::Resource,
        K::Scope: ScopeInfo,
    {
        Self {
            api_version: K::API_VERSION,
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as ScopeInfo>::NAMESPACED,
            name_is_label,
        }
    }
}

macro_rules! manifest_kinds {
    ($($variant:ident => $ty:ty, name_is_label = $label:expr;)*) => {
        /// A decoded object of one of the kinds fibril understands.
        #[derive(Clone, Debug, PartialEq)]
        pub enum TypedManifest {
            $($variant(Box<$ty>),)*
        }

        /// Every kind [`decode_strict`] accepts.
        pub const KINDS: &[KindInfo] = &[$(KindInfo::of::<$ty>($label),)*];

        impl TypedManifest {
            pub fn info(&self) -> &'static KindInfo {
                let kind = match self {
                    $(Self::$variant(_) => <$ty as k8s_openapi::Resource>::KIND,)*
                };
                KINDS.iter().find(|k| k.kind == kind).expect("every variant is in KINDS")
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Self::$variant(o) => &o.metadata,)*
                }
            }

            /// The canonical JSON form: what k8s-openapi serializes, with apiVersion and kind.
            pub fn to_value(&self) -> Value {
                let v = match self {
                    $(Self::$variant(o) => serde_json::to_value(o.as_ref()),)*
                };
                v.expect("k8s-openapi types always serialize")
            }
        }

        fn decode_typed(info: &KindInfo, value: &Value) -> Result<TypedManifest, FieldProblem> {
            $(
                if info.kind == <$ty as k8s_openapi::Resource>::KIND {
                    return serde_path_to_error::deserialize::<_, $ty>(value)
                        .map(|o| TypedManifest::$variant(Box::new(o)))
                        .map_err(|e| FieldProblem::new(e.path().to_string(), e.inner().to_string()));
                }
            )*
            unreachable!("decode_typed called with a kind from KINDS")
        }
    };
}

manifest_kinds! {
    Namespace => Namespace, name_is_label = true;
    Node => Node, name_is_label = false;
    Pod => Pod, name_is_label = false;
    Service => Service, name_is_label = true;
    Event => Event, name_is_label = false;
    EndpointSlice => EndpointSlice, name_is_label = false;
    NetworkPolicy => NetworkPolicy, name_is_label = false;
    Deployment => Deployment, name_is_label = false;
    FibrilIPPool => FibrilIPPool, name_is_label = false;
    FibrilNode => FibrilNode, name_is_label = false;
}

/// Finds a kind by apiVersion and kind.
pub fn kind_info(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// Upper bound on how many type errors one document reports; each costs a re-decode.
const MAX_TYPE_ERRORS: usize = 32;

/// Decodes one document strictly: its `apiVersion`/`kind` pick the type, and every problem
/// (type errors, unknown fields, missing name, semantic checks) is reported with its path.
pub fn decode_strict(value: &Value) -> Result<TypedManifest, ManifestError> {
    let Some(obj) = value.as_object() else {
        return Err(ManifestError::one(
            "",
            format!("expected an object, found {}", json_type(value)),
        ));
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let mut problems = Vec::new();
    if api_version.is_empty() {
        problems.push(FieldProblem::new("apiVersion", "required"));
    }
    if kind.is_empty() {
        problems.push(FieldProblem::new("kind", "required"));
    }
    if !problems.is_empty() {
        return Err(ManifestError { problems });
    }
    let Some(info) = kind_info(api_version, kind) else {
        let served: Vec<_> = KINDS.iter().filter(|k| k.kind == kind).collect();
        return Err(match served.as_slice() {
            [] => ManifestError::one(
                "kind",
                format!(
                    "unsupported kind {kind:?} (supported: {})",
                    supported_kinds()
                ),
            ),
            [k, ..] => ManifestError::one(
                "apiVersion",
                format!(
                    "kind {kind} is served as apiVersion {:?}, not {api_version:?}",
                    k.api_version
                ),
            ),
        });
    };
    decode_as(info, value)
}

/// Like [`decode_strict`] but for a known kind; a body whose apiVersion/kind name another kind
/// is an error. Absent apiVersion/kind are filled in from `info` (as the API server does for a
/// body posted to a typed URL).
pub fn decode_strict_as(info: &KindInfo, value: &Value) -> Result<TypedManifest, ManifestError> {
    let Some(obj) = value.as_object() else {
        return Err(ManifestError::one(
            "",
            format!("expected an object, found {}", json_type(value)),
        ));
    };
    let mut problems = Vec::new();
    match obj.get("apiVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == info.api_version => {}
        Some(other) => problems.push(FieldProblem::new(
            "apiVersion",
            format!("expected {:?}, found {other}", info.api_version),
        )),
    }
    match obj.get("kind") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == info.kind => {}
        Some(other) => problems.push(FieldProblem::new(
            "kind",
            format!("expected {:?}, found {other}", info.kind),
        )),
    }
    if !problems.is_empty() {
        return Err(ManifestError { problems });
    }
    let mut filled = value.clone();
    let map = filled.as_object_mut().expect("checked above");
    map.insert("apiVersion".into(), info.api_version.into());
    map.insert("kind".into(), info.kind.into());
    decode_as(info, &filled)
}

fn decode_as(info: &KindInfo, value: &Value) -> Result<TypedManifest, ManifestError> {
    let mut problems = Vec::new();
    let typed = match decode_collecting(info, value, &mut problems) {
        Some(t) => t,
        None => return Err(ManifestError { problems }),
    };
    let roundtrip = typed.to_value();
    for path in unknown_fields(value, &roundtrip) {
        problems.push(FieldProblem::new(path, "unknown field"));
    }
    for path in missing_required_fields(value, &roundtrip) {
        problems.push(FieldProblem::new(path, "required"));
    }
    validate(&typed, &mut problems);
    // Structural and semantic checks can find the same thing (a missing container name).
    let mut seen = std::collections::BTreeSet::new();
    problems.retain(|p| seen.insert((p.path.clone(), p.message.clone())));
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(ManifestError { problems })
    }
}

/// Decodes, and on a type error removes the offending field and tries again, so that one
/// request reports every wrongly typed field rather than only the first.
fn decode_collecting(
    info: &KindInfo,
    value: &Value,
    problems: &mut Vec<FieldProblem>,
) -> Option<TypedManifest> {
    let mut current = value.clone();
    let mut failed = false;
    for _ in 0..MAX_TYPE_ERRORS {
        match decode_typed(info, &current) {
            Ok(t) if !failed => return Some(t),
            Ok(_) => return None,
            Err(p) => {
                failed = true;
                // A removed array element stays as a null (to keep later indices right); an
                // element type that refuses null reports the same path again: done.
                if problems.iter().any(|q| q.path == fix_path(p.clone()).path) {
                    return None;
                }
                // A missing field is reported at its parent's path: removing the parent
                // would only report the parent missing too.
                let missing = p.message.starts_with("missing field");
                let removable = !missing
                    && !p.path.is_empty()
                    && p.path != "."
                    && remove_path(&mut current, &p.path);
                problems.push(fix_path(p));
                if !removable {
                    return None;
                }
            }
        }
    }
    None
}

/// serde_path_to_error renders the root as `.`; and `missing field` errors point at the parent.
fn fix_path(mut p: FieldProblem) -> FieldProblem {
    if p.path == "." {
        p.path.clear();
    }
    if let Some(field) = p
        .message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        p.path = join(&p.path, field);
        p.message = "required".into();
    }
    p
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// Removes the value at a serde_path_to_error path (`a.b[2].c`); false if it is not there.
fn remove_path(root: &mut Value, path: &str) -> bool {
    let segs = parse_path(path);
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = root;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            // Keep later indices stable so their paths stay right in later reports.
            a[*i] = Value::Null;
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        let key_end = rest.find('[').unwrap_or(rest.len());
        if key_end > 0 {
            out.push(Seg::Key(rest[..key_end].to_string()));
        }
        rest = &rest[key_end..];
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(close) = stripped.find(']') else {
                break;
            };
            if let Ok(i) = stripped[..close].parse() {
                out.push(Seg::Index(i));
            }
            rest = &stripped[close + 1..];
        }
    }
    out
}

/// Paths of keys present (with a non-null value) in `input` but absent from `roundtrip`.
pub fn unknown_fields(input: &Value, roundtrip: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_keys(input, roundtrip, String::new(), &mut out);
    out
}

/// Paths of required fields absent (or null) in `input`.
///
/// k8s-openapi fills a missing required (non-`Option`) field with its default instead of
/// failing, and always serializes it; optional fields that were absent stay absent. So a key
/// that appears in the round trip but not in the input is exactly a missing required field.
/// The root `metadata` is left to the `metadata.name` check.
pub fn missing_required_fields(input: &Value, roundtrip: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let (Value::Object(a), Value::Object(b)) = (input, roundtrip) {
        for (k, bv) in b {
            match a.get(k) {
                None | Some(Value::Null) if k == "metadata" => {}
                None | Some(Value::Null) => out.push(k.clone()),
                Some(av) => diff_keys(bv, av, k.clone(), &mut out),
            }
        }
    }
    // diff_keys(rt, input) reports keys in rt absent from input; a null input value counts
    // as absent too, which diff_keys cannot see, so catch those in a second pass.
    out.extend(null_required(input, roundtrip, String::new()));
    out.sort();
    out.dedup();
    out
}

fn null_required(input: &Value, rt: &Value, path: String) -> Vec<String> {
    let mut out = Vec::new();
    match (input, rt) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, av) in a {
                let p = join(&path, k);
                match b.get(k) {
                    Some(bv) if av.is_null() && !bv.is_null() => out.push(p),
                    Some(bv) => out.extend(null_required(av, bv, p)),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                out.extend(null_required(av, bv, format!("{path}[{i}]")));
            }
        }
        _ => {}
    }
    out
}

fn diff_keys(input: &Value, rt: &Value, path: String, out: &mut Vec<String>) {
    match (input, rt) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = join(&path, k);
                match b.get(k) {
                    None => out.push(p),
                    Some(bv) => diff_keys(v, bv, p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff_keys(av, bv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn supported_kinds() -> String {
    KINDS
        .iter()
        .map(|k| format!("{}/{}", k.api_version, k.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits YAML or JSON text into documents. Empty documents are skipped and a `kind: List`
/// (or any `*List` with `items`) expands to its items.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(doc).map_err(|e| {
            ManifestError::one(format!("document {i}"), format!("invalid YAML: {e}"))
        })?;
        if yaml.is_null() {
            continue;
        }
        let json =
            yaml_to_json(yaml).map_err(|m| ManifestError::one(format!("document {i}"), m))?;
        expand_list(json, &mut out, i)?;
    }
    Ok(out)
}

fn expand_list(doc: Value, out: &mut Vec<Value>, index: usize) -> Result<(), ManifestError> {
    let is_list = doc
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || (k.ends_with("List") && doc.get("items").is_some()));
    if !is_list {
        out.push(doc);
        return Ok(());
    }
    match doc.get("items") {
        Some(Value::Array(items)) => {
            out.extend(items.iter().cloned());
            Ok(())
        }
        Some(Value::Null) | None => Ok(()),
        Some(other) => Err(ManifestError::one(
            format!("document {index}: items"),
            format!("expected an array, found {}", json_type(other)),
        )),
    }
}

/// YAML → JSON with Kubernetes' rules: map keys must be strings (YAML 1.1 `on`/`yes` keys and
/// numbers are rendered as text), tags are dropped, and non-finite floats are refused.
fn yaml_to_json(y: serde_yaml::Value) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("number {n} cannot be represented in JSON"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut map = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    other => return Err(format!("unsupported map key {other:?}")),
                };
                map.insert(key, yaml_to_json(v)?);
            }
            Value::Object(map)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Semantic checks: the subset of kube-apiserver validation that catches real mistakes early.

fn validate(obj: &TypedManifest, problems: &mut Vec<FieldProblem>) {
    let info = obj.info();
    let meta = obj.metadata();
    let name = meta.name.as_deref().unwrap_or("");
    let generate = meta.generate_name.as_deref().unwrap_or("");
    if name.is_empty() && generate.is_empty() {
        problems.push(FieldProblem::new("metadata.name", "required"));
    } else if !name.is_empty() {
        if let Some(msg) = validate_name(info, name) {
            problems.push(FieldProblem::new("metadata.name", msg));
        }
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        if let Some(msg) = dns1123_label(ns) {
            problems.push(FieldProblem::new("metadata.namespace", msg));
        }
    }
    validate_labels(meta, "metadata", problems);
    match obj {
        TypedManifest::Pod(pod) => {
            if let Some(spec) = &pod.spec {
                validate_pod_spec(spec, "spec", problems);
            } else {
                problems.push(FieldProblem::new("spec", "required"));
            }
        }
        TypedManifest::Deployment(d) => validate_deployment(d, problems),
        TypedManifest::Service(s) => validate_service(s, problems),
        TypedManifest::FibrilIPPool(p) => validate_pool(p, problems),
        TypedManifest::FibrilNode(n) => validate_fibril_node(n, problems),
        _ => {}
    }
}

/// A pool the agents can cut blocks from, and claims that are blocks of it, one per node.
fn validate_pool(p: &FibrilIPPool, problems: &mut Vec<FieldProblem>) {
    let mut pool_ok = true;
    for (at, problem) in ClusterPool::problems(&p.spec.cidrs, p.spec.node_mask_size) {
        pool_ok = false;
        let path = match (&problem, at) {
            (IpamError::MaskOutsidePool { .. }, _) => "spec.nodeMaskSize".to_string(),
            (_, Some(i)) => format!("spec.cidrs[{i}]"),
            (_, None) => "spec.cidrs".to_string(),
        };
        problems.push(FieldProblem::new(path, problem.to_string()));
    }
    let Some(blocks) = p.status.as_ref().and_then(|s| s.blocks.as_ref()) else {
        return;
    };
    let pool = pool_ok
        .then(|| ClusterPool::new(p.spec.cidrs.clone(), p.spec.node_mask_size).ok())
        .flatten();
    let mut holders: BTreeMap<&str, &crate::ipam::PodCidr> = BTreeMap::new();
    for (block, node) in blocks {
        let path = format!("status.blocks[{block}]");
        if let Some(pool) = &pool {
            if !pool.is_block(block) {
                problems.push(FieldProblem::new(
                    &path,
                    format!(
                        "{block} is not a /{} block of the pool's cidrs",
                        p.spec.node_mask_size
                    ),
                ));
            }
        }
        if let Some(first) = holders.insert(node.as_str(), block) {
            problems.push(FieldProblem::new(
                &path,
                format!("node {node} already holds block {first}: one block per node"),
            ));
        }
    }
}

fn validate_fibril_node(n: &FibrilNode, problems: &mut Vec<FieldProblem>) {
    let name = n.metadata.name.as_deref().unwrap_or("");
    if !name.is_empty() {
        if let Err(e) = name.parse::<crate::ipam::NodeName>() {
            problems.push(FieldProblem::new("metadata.name", e.to_string()));
        }
    }
}

/// Label keys and values, and annotation keys, as kube-apiserver validates them.
fn validate_labels(meta: &ObjectMeta, path: &str, problems: &mut Vec<FieldProblem>) {
    for (k, v) in meta.labels.iter().flatten() {
        if let Some(msg) = qualified_name(k).or_else(|| label_value(v)) {
            problems.push(FieldProblem::new(format!("{path}.labels"), msg));
        }
    }
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        if let Some(msg) = qualified_name(k) {
            problems.push(FieldProblem::new(format!("{path}.annotations"), msg));
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(is_name_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at
/// most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| dns1123_subdomain(p).is_some()) {
        return Some(format!(
            "invalid key {key:?}: the prefix must be a lowercase RFC 1123 subdomain"
        ));
    }
    if !name_part_ok(name) {
        return Some(format!(
            "invalid key {key:?}: name part must consist of alphanumeric characters, '-', '_' \
             or '.', must start and end with an alphanumeric character, and be at most 63 \
             characters"
        ));
    }
    None
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and ending
/// alphanumeric.
pub fn label_value(value: &str) -> Option<String> {
    if value.is_empty() || name_part_ok(value) {
        None
    } else {
        Some(format!(
            "invalid value {value:?}: a valid label must be an empty string or consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character, at most 63 characters"
        ))
    }
}

/// Checks a (complete, possibly generated) object name against its kind's naming rule.
/// Returns the problem, if any.
pub fn validate_name(info: &KindInfo, name: &str) -> Option<String> {
    if info.name_is_label {
        dns1123_label(name)
    } else {
        dns1123_subdomain(name)
    }
}

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn dns1123_label(s: &str) -> Option<String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ok_ends {
        Some(format!(
            "invalid value {s:?}: a lowercase RFC 1123 label must consist of lower case \
             alphanumeric characters or '-', start and end with an alphanumeric character, \
             and be at most 63 characters"
        ))
    } else {
        None
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| dns1123_label(l).is_some()) {
        Some(format!(
            "invalid value {s:?}: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
             character"
        ))
    } else {
        None
    }
}

fn validate_pod_spec(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    path: &str,
    problems: &mut Vec<FieldProblem>,
) {
    if spec.containers.is_empty() {
        problems.push(FieldProblem::new(format!("{path}.containers"), "required"));
    }
    let mut seen = BTreeMap::new();
    let groups = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (field, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            let cpath = format!("{path}.{field}[{i}]");
            if c.name.is_empty() {
                problems.push(FieldProblem::new(format!("{cpath}.name"), "required"));
            } else if let Some(msg) = dns1123_label(&c.name) {
                problems.push(FieldProblem::new(format!("{cpath}.name"), msg));
            } else if let Some(prev) = seen.insert(c.name.clone(), cpath.clone()) {
                problems.push(FieldProblem::new(
                    format!("{cpath}.name"),
                    format!("duplicate value {:?} (also {prev}.name)", c.name),
                ));
            }
            if c.image.as_deref().unwrap_or("").is_empty() {
                problems.push(FieldProblem::new(format!("{cpath}.image"), "required"));
            }
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let ppath = format!("{cpath}.ports[{j}]");
                if !(1..=65535).contains(&p.container_port) {
                    problems.push(FieldProblem::new(
                        format!("{ppath}.containerPort"),
                        format!(
                            "invalid value {}: must be between 1 and 65535",
                            p.container_port
                        ),
                    ));
                }
                if let Some(hp) = p.host_port.filter(|hp| !(0..=65535).contains(hp)) {
                    problems.push(FieldProblem::new(
                        format!("{ppath}.hostPort"),
                        format!("invalid value {hp}: must be between 1 and 65535"),
                    ));
                }
                check_protocol(
                    p.protocol.as_deref(),
                    &format!("{ppath}.protocol"),
                    problems,
                );
            }
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref() {
        if !matches!(policy, "Always" | "OnFailure" | "Never") {
            problems.push(FieldProblem::new(
                format!("{path}.restartPolicy"),
                format!("unsupported value {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
}

fn check_protocol(proto: Option<&str>, path: &str, problems: &mut Vec<FieldProblem>) {
    if let Some(p) = proto {
        if !matches!(p, "TCP" | "UDP" | "SCTP") {
            problems.push(FieldProblem::new(
                path,
                format!("unsupported value {p:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""),
            ));
        }
    }
}

fn validate_deployment(d: &Deployment, problems: &mut Vec<FieldProblem>) {
    let spec = &d.spec;
    if let Some(r) = spec.replicas.filter(|r| *r < 0) {
        problems.push(FieldProblem::new(
            "spec.replicas",
            format!("invalid value {r}: must be greater than or equal to 0"),
        ));
    }
    let selector_empty = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if selector_empty {
        problems.push(FieldProblem::new(
            "spec.selector",
            "required: empty selector is invalid for deployment",
        ));
    } else {
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        match label_selector_matches(&spec.selector, &labels) {
            Ok(true) => {}
            Ok(false) => problems.push(FieldProblem::new(
                "spec.template.metadata.labels",
                "`selector` does not match template `labels`",
            )),
            Err(msg) => problems.push(FieldProblem::new("spec.selector", msg)),
        }
    }
    if let Some(m) = &spec.template.metadata {
        validate_labels(m, "spec.template.metadata", problems);
    }
    match &spec.template.spec {
        Some(ps) => validate_pod_spec(ps, "spec.template.spec", problems),
        None => problems.push(FieldProblem::new("spec.template.spec", "required")),
    }
}

fn validate_service(s: &Service, problems: &mut Vec<FieldProblem>) {
    let Some(spec) = &s.spec else {
        return;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        problems.push(FieldProblem::new(
            "spec.type",
            format!(
                "unsupported value {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \
                 \"LoadBalancer\", \"NodePort\""
            ),
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        problems.push(FieldProblem::new("spec.ports", "required"));
    }
    if ty == "ExternalName" && spec.external_name.as_deref().unwrap_or("").is_empty() {
        problems.push(FieldProblem::new("spec.externalName", "required"));
    }
    let mut names = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.port) {
            problems.push(FieldProblem::new(
                format!("{path}.port"),
                format!("invalid value {}: must be between 1 and 65535", p.port),
            ));
        }
        let name = p.name.as_deref().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            problems.push(FieldProblem::new(
                format!("{path}.name"),
                "required when there is more than one port",
            ));
        }
        if !name.is_empty() && names.insert(name.to_string(), i).is_some() {
            problems.push(FieldProblem::new(
                format!("{path}.name"),
                format!("duplicate value {name:?}"),
            ));
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                problems.push(FieldProblem::new(
                    format!("{path}.nodePort"),
                    format!("forbidden: may not be used when `type` is {ty:?}"),
                ));
            } else if !(1..=65535).contains(&np) {
                problems.push(FieldProblem::new(
                    format!("{path}.nodePort"),
                    format!("invalid value {np}: must be between 1 and 65535"),
                ));
            }
        }
        check_protocol(p.protocol.as_deref(), &format!("{path}.protocol"), problems);
    }
}

/// Evaluates a structured `LabelSelector` (matchLabels AND matchExpressions) against labels.
/// An unknown operator is an error, as in the API server.
pub fn label_selector_matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op => return Err(format!("unsupported operator {op:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {
                "containers": [{
                    "name": "c",
                    "image": "fibril/echo",
                    "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"limits": {"cpu": "100m"}}
                }],
                "nodeSelector": {"kubernetes.io/hostname": "node-1"}
            }
        })
    }

    fn paths(e: &ManifestError) -> Vec<&str> {
        e.paths().collect()
    }

    #[test]
    fn valid_pod_decodes() {
        let t = decode_strict(&pod()).unwrap();
        assert_eq!(t.info().kind, "Pod");
        assert_eq!(t.metadata().name.as_deref(), Some("web"));
        let TypedManifest::Pod(p) = t else { panic!() };
        assert_eq!(
            p.spec.unwrap().containers[0].ports.as_ref().unwrap()[0].container_port,
            8080
        );
    }

    #[test]
    fn wrong_type_names_its_path() {
        let mut p = pod();
        p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("x");
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(
            e.problems[0].path,
            "spec.containers[0].ports[0].containerPort"
        );
        assert!(
            e.problems[0]
                .message
                .contains("invalid type: string \"x\", expected i32"),
            "{e}"
        );
    }

    #[test]
    fn reports_every_type_error() {
        let mut p = pod();
        p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("x");
        p["spec"]["hostNetwork"] = json!("yes");
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            paths(&e),
            vec![
                "spec.containers[0].ports[0].containerPort",
                "spec.hostNetwork"
            ],
            "{e}"
        );
    }

    #[test]
    fn unknown_nested_field() {
        let mut p = pod();
        p["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        p["metadata"]["lables"] = json!({"a": "b"});
        let e = decode_strict(&p).unwrap_err();
        let mut got = paths(&e);
        got.sort();
        assert_eq!(
            got,
            vec!["metadata.lables", "spec.containers[0].imagePullPolicyy"]
        );
        assert!(e
            .to_string()
            .contains("spec.containers[0].imagePullPolicyy: unknown field"));
    }

    #[test]
    fn null_unknown_field_is_ignored() {
        let mut p = pod();
        p["spec"]["bogus"] = Value::Null;
        p["metadata"]["creationTimestamp"] = Value::Null;
        decode_strict(&p).unwrap();
    }

    #[test]
    fn missing_name() {
        let mut p = pod();
        p["metadata"].as_object_mut().unwrap().remove("name");
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            e.problems,
            vec![FieldProblem::new("metadata.name", "required")]
        );
        p["metadata"]["generateName"] = json!("web-");
        decode_strict(&p).unwrap();
    }

    #[test]
    fn missing_required_field_points_at_it() {
        let mut p = pod();
        p["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("name");
        p["spec"]["containers"][0]["env"][0]["name"] = Value::Null;
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            paths(&e),
            vec!["spec.containers[0].env[0].name", "spec.containers[0].name"],
            "{e}"
        );
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        let e = decode_strict(&d).unwrap_err();
        assert_eq!(paths(&e)[0], "spec", "{e}");
    }

    #[test]
    fn bad_name_and_namespace() {
        let mut p = pod();
        p["metadata"]["name"] = json!("Web_1");
        p["metadata"]["namespace"] = json!("a.b");
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            paths(&e),
            vec!["metadata.name", "metadata.namespace"],
            "{e}"
        );
    }

    #[test]
    fn mismatched_api_version_and_kind() {
        let d = json!({"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "x"}});
        let e = decode_strict(&d).unwrap_err();
        assert_eq!(e.problems[0].path, "apiVersion");
        assert!(e.problems[0].message.contains("apps/v1"), "{e}");
        let e = decode_strict(&json!({"apiVersion": "v1", "kind": "Widget"})).unwrap_err();
        assert_eq!(e.problems[0].path, "kind");
        let e = decode_strict(&json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(paths(&e), vec!["apiVersion", "kind"]);
        let e = decode_strict_as(kind_info("v1", "Service").unwrap(), &pod()).unwrap_err();
        assert_eq!(paths(&e), vec!["kind"]);
    }

    #[test]
    fn decode_as_fills_type_meta() {
        let mut p = pod();
        let m = p.as_object_mut().unwrap();
        m.remove("apiVersion");
        m.remove("kind");
        let t = decode_strict_as(kind_info("v1", "Pod").unwrap(), &p).unwrap();
        assert_eq!(t.to_value()["kind"], "Pod");
    }

    #[test]
    fn valid_service() {
        let s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                               {"name": "alt", "port": 81, "targetPort": 8081, "protocol": "UDP"}]}
        });
        decode_strict(&s).unwrap();
    }

    #[test]
    fn invalid_service() {
        let s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web.x"},
            "spec": {"ports": [{"port": 80}, {"port": 70000, "protocol": "ICMP"}]}
        });
        let e = decode_strict(&s).unwrap_err();
        assert_eq!(
            paths(&e),
            vec![
                "metadata.name",
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].name",
                "spec.ports[1].protocol"
            ],
            "{e}"
        );
        let headless = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "h"},
                              "spec": {"clusterIP": "None", "selector": {"a": "b"}}});
        decode_strict(&headless).unwrap();
    }

    #[test]
    fn valid_deployment_and_selector_mismatch() {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"},
                             "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "fe"}},
                    "spec": {"containers": [{"name": "c", "image": "fibril/echo"}]}
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}
            }
        });
        decode_strict(&d).unwrap();
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        let e = decode_strict(&d).unwrap_err();
        assert_eq!(paths(&e), vec!["spec.template.metadata.labels"]);
    }

    #[test]
    fn valid_network_policy() {
        let np = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-web", "namespace": "default"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
                                       "podSelector": {}},
                                      {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                             "ports": [{"protocol": "TCP", "port": 80}, {"port": "http", "endPort": 90}]}],
                "egress": [{}]
            }
        });
        decode_strict(&np).unwrap();
        let mut bad = np.clone();
        bad["spec"]["ingress"][0]["from"][1]["ipBlock"]["cdir"] = json!("x");
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(paths(&e), vec!["spec.ingress[0].from[1].ipBlock.cdir"]);
    }

    #[test]
    fn valid_endpoint_slice_and_missing_required() {
        let es = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                           "nodeName": "node-1",
                           "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        });
        decode_strict(&es).unwrap();
        let mut bad = es.clone();
        bad.as_object_mut().unwrap().remove("addressType");
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(paths(&e), vec!["addressType"], "{e}");
    }

    #[test]
    fn namespace_and_node() {
        decode_strict(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
        )
        .unwrap();
        let e = decode_strict(&json!({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": "team.a"}}))
        .unwrap_err();
        assert_eq!(paths(&e), vec!["metadata.name"]);
        decode_strict(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1.lab"},
                              "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
                              "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]}}))
        .unwrap();
    }

    #[test]
    fn pod_semantic_checks() {
        let mut p = pod();
        p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(0);
        p["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("image");
        p["spec"]["restartPolicy"] = json!("Sometimes");
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            paths(&e),
            vec![
                "spec.containers[0].image",
                "spec.containers[0].ports[0].containerPort",
                "spec.restartPolicy"
            ],
            "{e}"
        );
    }

    #[test]
    fn labels_and_annotations() {
        let mut p = pod();
        p["metadata"]["labels"] = json!({"ok": "", "example.com/ok": "v-1.2_3", "bad key": "x"});
        p["metadata"]["annotations"] = json!({"Example.com/x": "anything at all"});
        let e = decode_strict(&p).unwrap_err();
        assert_eq!(
            paths(&e),
            vec!["metadata.labels", "metadata.annotations"],
            "{e}"
        );
        let mut p = pod();
        p["metadata"]["labels"] = json!({"a": "-x"});
        let e = decode_strict(&p).unwrap_err();
        assert!(e.to_string().contains("\"-x\""), "{e}");
        assert!(qualified_name(&"a".repeat(64)).is_some());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
    }

    #[test]
    fn not_an_object() {
        let e = decode_strict(&json!([1])).unwrap_err();
        assert_eq!(e.problems[0].path, "");
    }

    #[test]
    fn parse_multi_document_yaml() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: a
---
# a comment only
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: s}
  spec: {ports: [{port: 80}]}
- {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
"#;
        let docs = parse_documents(text).unwrap();
        let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, vec!["Namespace", "Service", "Pod"]);
        assert_eq!(docs[1]["spec"]["ports"][0]["port"], json!(80));
    }

    #[test]
    fn parse_json_document() {
        let docs = parse_documents(&pod().to_string()).unwrap();
        assert_eq!(docs, vec![pod()]);
    }

    #[test]
    fn parse_invalid_yaml() {
        let e = parse_documents("a: [1, 2\n").unwrap_err();
        assert!(e.problems[0].message.contains("invalid YAML"), "{e}");
    }

    #[test]
    fn selector_operators() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]},
                                 {"key": "b", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(label_selector_matches(&sel, &labels), Ok(true));
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "a", "operator": "Gt"}]
        }))
        .unwrap();
        assert!(label_selector_matches(&sel, &labels).is_err());
    }

    #[test]
    fn fibril_kinds_decode_strictly() {
        let pool = json!({
            "apiVersion": "fibril.io/v1alpha1", "kind": "FibrilIPPool",
            "metadata": {"name": "default"},
            "spec": {"cidrs": ["10.244.0.0/16"], "nodeMaskSize": 24},
            "status": {"blocks": {"10.244.0.0/24": "n1", "10.244.1.0/24": "n2"}}
        });
        assert!(matches!(
            decode_strict(&pool).unwrap(),
            TypedManifest::FibrilIPPool(_)
        ));
        let mut bad = pool.clone();
        bad["spec"]["cidrs"][0] = json!("10.244.0.1/16");
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(paths(&e), vec!["spec.cidrs[0]"], "{e}");
        assert!(e.to_string().contains("did you mean 10.244.0.0/16"), "{e}");
        let mut bad = pool.clone();
        bad["spec"]["extra"] = json!(1);
        bad["status"]["blockz"] = json!({});
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(paths(&e), vec!["spec.extra", "status.blockz"], "{e}");
        let mut bad = pool.clone();
        bad["spec"]["nodeMaskSize"] = json!(8);
        bad["status"]["blocks"] = json!({"10.244.0.0/24": "n1", "10.9.0.0/24": "n1"});
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(
            paths(&e),
            vec!["spec.nodeMaskSize", "status.blocks[10.244.0.0/24]"],
            "{e}"
        );
        let mut bad = pool.clone();
        bad["status"]["blocks"] = json!({"10.244.0.0/24": "n1", "10.9.0.0/24": "n1"});
        let e = decode_strict(&bad).unwrap_err();
        assert_eq!(
            paths(&e),
            vec!["status.blocks[10.9.0.0/24]", "status.blocks[10.244.0.0/24]"],
            "{e}"
        );
        assert!(e.to_string().contains("not a /24 block"), "{e}");
        assert!(e.to_string().contains("already holds block"), "{e}");
        let mut missing = pool.clone();
        missing["spec"]
            .as_object_mut()
            .unwrap()
            .remove("nodeMaskSize");
        let e = decode_strict(&missing).unwrap_err();
        assert_eq!(paths(&e), vec!["spec.nodeMaskSize"], "{e}");
        let node = json!({
            "apiVersion": "fibril.io/v1alpha1", "kind": "FibrilNode",
            "metadata": {"name": "lab-node-1"},
            "spec": {"podCIDRs": ["10.244.1.0/24"], "pool": "default"}
        });
        assert!(decode_strict(&node).is_ok());
        let info = kind_info("fibril.io/v1alpha1", "FibrilNode").unwrap();
        assert_eq!((info.plural, info.namespaced), ("fibrilnodes", false));
    }

    #[test]
    fn kinds_table_matches_types() {
        let pod = kind_info("v1", "Pod").unwrap();
        assert!(pod.namespaced);
        assert_eq!(pod.plural, "pods");
        let node = kind_info("v1", "Node").unwrap();
        assert!(!node.namespaced);
        let d = kind_info("apps/v1", "Deployment").unwrap();
        assert_eq!(
            (d.group, d.version, d.plural),
            ("apps", "v1", "deployments")
        );
    }
}
