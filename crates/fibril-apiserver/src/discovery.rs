//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]`,
//! in both the classic form and the aggregated `apidiscovery.k8s.io/v2` form (chosen by the
//! Accept header, as kube-apiserver does).

use serde_json::{json, Value};

use crate::registry::{self, ResourceInfo};

/// The Kubernetes API schema version served (k8s-openapi's `latest`).
const MAJOR: &str = "1";
const MINOR: &str = "37";

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList")
}

pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0+fibril.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (fibril lab API server, Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

fn verbs() -> Value {
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

fn subresources(r: &ResourceInfo) -> Vec<(&'static str, &'static str, Value)> {
    let mut out = Vec::new();
    if r.status_subresource {
        out.push(("status", r.kind, json!(["get", "patch", "update"])));
    }
    if r.kind == "Pod" {
        out.push(("binding", "Binding", json!(["create"])));
    }
    out
}

/// `/api`: APIVersions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs[0],
    })
}

/// `/apis`: APIGroupList.
pub fn group_list() -> Value {
    let groups: Vec<Value> = registry::groups()
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: APIGroup.
pub fn group(group: &str) -> Option<Value> {
    let (g, vs) = registry::groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_doc(g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1`, `/apis/<group>/<version>`: APIResourceList.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = registry::resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rs {
        let mut doc = json!({
            "name": r.plural,
            "singularName": r.singular(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(),
        });
        if !r.short_names.is_empty() {
            doc["shortNames"] = json!(r.short_names);
        }
        resources.push(doc);
        for (sub, kind, verbs) in subresources(r) {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = registry::resources()
                .iter()
                .filter(|r| r.group == group && r.version == *v)
                .map(|r| {
                    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
                    let subs: Vec<Value> = subresources(r)
                        .into_iter()
                        .map(|(sub, k, verbs)| {
                            json!({
                                "subresource": sub,
                                "responseKind": {"group": r.group, "version": r.version, "kind": k},
                                "verbs": verbs,
                            })
                        })
                        .collect();
                    let mut doc = json!({
                        "resource": r.plural,
                        "responseKind": kind,
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular(),
                        "verbs": verbs(),
                        "subresources": subs,
                    });
                    if !r.short_names.is_empty() {
                        doc["shortNames"] = json!(r.short_names);
                    }
                    doc
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group}, "versions": vs})
}

/// Aggregated discovery for `/api` (`core == true`) or `/apis`.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", &["v1"])]
    } else {
        registry::groups()
            .iter()
            .map(|(g, vs)| aggregated_group(g, vs))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        APIGroupList, APIResourceList, APIVersions,
    };

    #[test]
    fn documents_decode_as_their_types() {
        let _: APIVersions = serde_json::from_value(core_versions("127.0.0.1:6443")).unwrap();
        let groups: APIGroupList = serde_json::from_value(group_list()).unwrap();
        assert!(groups.groups.iter().any(|g| g.name == "apps"));
        let core: APIResourceList =
            serde_json::from_value(resource_list("", "v1").unwrap()).unwrap();
        let pods = core.resources.iter().find(|r| r.name == "pods").unwrap();
        assert!(pods.namespaced);
        assert!(core.resources.iter().any(|r| r.name == "pods/status"));
        assert!(resource_list("apps", "v2").is_none());
        let _: k8s_openapi::apimachinery::pkg::version::Info =
            serde_json::from_value(version()).unwrap();
        assert!(group("apps").is_some() && group("nope").is_none());
    }
}
