//! API errors and their one mapping to `metav1.Status` replies.
//!
//! Messages and reasons follow kube-apiserver's wording (`pods "x" not found`), because clients
//! (kube-rs' `ErrorResponse`, kubectl, people) match on the reason and read the message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fibril_core::manifest::ManifestError;
use serde_json::{json, Value};

use crate::registry::ResourceInfo;
use crate::store::StoreError;

/// One invalid field, as a `StatusCause`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a request can fail with. Each variant is one Kubernetes `reason`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} {name:?} not found", res.group_resource())]
    NotFound {
        res: &'static ResourceInfo,
        name: String,
    },
    #[error("namespaces {0:?} not found")]
    NamespaceNotFound(String),
    #[error("{} {name:?} already exists", res.group_resource())]
    AlreadyExists {
        res: &'static ResourceInfo,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {} {name:?}: {message}", res.group_resource())]
    Conflict {
        res: &'static ResourceInfo,
        name: String,
        message: String,
    },
    #[error("{} {name:?} is invalid: {}", res.kind, join_causes(causes))]
    Invalid {
        res: &'static ResourceInfo,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{message}")]
    Forbidden {
        res: Option<&'static ResourceInfo>,
        name: String,
        message: String,
    },
    /// 410: the requested resourceVersion is older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// 410: a resourceVersion newer than any this store has reached (after a short wait). It
    /// can only come from an earlier incarnation of the store (a reset data directory), so the
    /// client must list again. kube-apiserver answers 504 here, which kube-rs retries for
    /// minutes and its watcher never recovers from.
    #[error(
        "resource version {requested} is newer than the current revision {current}: it comes \
         from a previous store (was the data directory reset?); list again"
    )]
    UnknownResourceVersion { requested: u64, current: u64 },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: &'static str },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("request handler failed: {message}")]
    HandlerFailed { message: String },
}

fn join_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// A strict-decode failure of an object of `res`: 422 Invalid naming every field.
    pub fn from_manifest(res: &'static ResourceInfo, name: &str, e: &ManifestError) -> Self {
        let causes = e
            .problems
            .iter()
            .map(|p| {
                let reason = if p.message == "required" {
                    "FieldValueRequired"
                } else {
                    "FieldValueInvalid"
                };
                Cause {
                    reason,
                    field: p.path.clone(),
                    message: p.message.clone(),
                }
            })
            .collect();
        ApiError::Invalid {
            res,
            name: name.to_string(),
            causes,
        }
    }

    pub fn invalid(res: &'static ResourceInfo, name: &str, cause: Cause) -> Self {
        ApiError::Invalid {
            res,
            name: name.to_string(),
            causes: vec![cause],
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
        }
    }

    pub fn conflict_modified(res: &'static ResourceInfo, name: &str) -> Self {
        ApiError::Conflict {
            res,
            name: name.to_string(),
            message: "the object has been modified; please apply your changes to the latest \
                      version and try again"
                .into(),
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NamespaceNotFound(_) | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::UnknownResourceVersion { .. } => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Store(_) | ApiError::HandlerFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NamespaceNotFound(_) | ApiError::NoRoute => {
                "NotFound"
            }
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Expired { .. } => "Expired",
            ApiError::UnknownResourceVersion { .. } => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::Store(_) | ApiError::HandlerFailed { .. } => "InternalError",
        }
    }

    fn details(&self) -> Option<Value> {
        let named = |res: &ResourceInfo, name: &str| {
            let mut d = json!({"name": name, "kind": res.plural});
            if !res.group.is_empty() {
                d["group"] = res.group.into();
            }
            d
        };
        Some(match self {
            ApiError::NotFound { res, name }
            | ApiError::AlreadyExists { res, name }
            | ApiError::Conflict { res, name, .. } => named(res, name),
            ApiError::NamespaceNotFound(ns) => json!({"name": ns, "kind": "namespaces"}),
            ApiError::Forbidden {
                res: Some(res),
                name,
                ..
            } => named(res, name),
            ApiError::Invalid { res, name, causes } => {
                let mut d = json!({"name": name, "kind": res.kind});
                if !res.group.is_empty() {
                    d["group"] = res.group.into();
                }
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                d
            }
            _ => return None,
        })
    }

    /// The `metav1.Status` object for this error (also the object of a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(d) = self.details() {
            s["details"] = d;
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Store(_) | ApiError::HandlerFailed { .. }) {
            tracing::error!(error = %self, "internal error");
        }
        let code = self.code();
        let body = self.to_status().to_string();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A `Status` with `status: Success`, as returned by deletes of most kinds.
pub fn success(res: &ResourceInfo, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        details["group"] = res.group.into();
    }
    if let Some(uid) = uid {
        details["uid"] = uid.into();
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}
