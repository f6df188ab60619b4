//! The table of resources the lab API server serves.
//!
//! Everything the server does per kind is driven from here: URL routing, discovery documents,
//! store keys, error messages and the per-kind flags the generic REST code consults. Adding a
//! kind means adding a variant to `fibril_core::manifest` and a row here.

use fibril_core::kinds::{FibrilIPPool, FibrilNode};
use fibril_core::manifest::{self, KindInfo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::ListableResource;

/// One served resource. Field names follow the Kubernetes discovery document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// `v1` or `group/version`.
    pub api_version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// URL path segment, e.g. `pods`.
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Serves `<name>/status`; the main resource then ignores `.status` on update.
    pub status_subresource: bool,
    /// `metadata.generation` starts at 1 and increments on every `.spec` change.
    pub tracks_generation: bool,
    /// PUT of a missing object creates it.
    pub create_on_update: bool,
    /// DELETE answers with the object rather than a `Status`.
    pub return_deleted_object: bool,
}

impl ResourceInfo {
    const fn of<K>() -> Self
    where
        K: ListableResource,
        K::Scope: manifest::ScopeInfo,
    {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as manifest::ScopeInfo>::NAMESPACED,
            short_names: &[],
            status_subresource: false,
            tracks_generation: false,
            create_on_update: false,
            return_deleted_object: false,
        }
    }

    const fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }

    const fn status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    const fn generation(mut self) -> Self {
        self.tracks_generation = true;
        self
    }

    const fn create_on_update(mut self) -> Self {
        self.create_on_update = true;
        self
    }

    const fn return_deleted(mut self) -> Self {
        self.return_deleted_object = true;
        self
    }

    /// The kind facts `fibril_core::manifest` decodes against.
    pub fn kind_info(&self) -> &'static KindInfo {
        manifest::kind_info(self.api_version, self.kind).expect("registry kinds are manifest kinds")
    }

    /// `pods`, `deployments.apps`: the form kube-apiserver uses in messages and keys.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Lowercase kind, as discovery's `singularName`.
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// The collection URL path, in `namespace` for namespaced kinds.
    pub fn path(&self, namespace: Option<&str>) -> String {
        let prefix = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{prefix}/namespaces/{ns}/{}", self.plural),
            _ => format!("{prefix}/{}", self.plural),
        }
    }
}

static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo::of::<Namespace>().short(&["ns"]).status(),
    ResourceInfo::of::<Node>().short(&["no"]).status(),
    ResourceInfo::of::<Pod>()
        .short(&["po"])
        .status()
        .return_deleted(),
    ResourceInfo::of::<Service>()
        .short(&["svc"])
        .status()
        .return_deleted(),
    ResourceInfo::of::<Event>()
        .short(&["ev"])
        .create_on_update(),
    ResourceInfo::of::<EndpointSlice>(),
    ResourceInfo::of::<NetworkPolicy>()
        .short(&["netpol"])
        .generation(),
    ResourceInfo::of::<Deployment>()
        .short(&["deploy"])
        .status()
        .generation(),
    // fibril's own kinds. No status subresource: an agent's claim is one write of the whole
    // pool object, guarded by its resourceVersion.
    ResourceInfo::of::<FibrilIPPool>().short(&["fippool"]),
    ResourceInfo::of::<FibrilNode>().short(&["fnode"]),
];

/// Every resource the server serves.
pub fn resources() -> &'static [ResourceInfo] {
    RESOURCES
}

/// The resource at `/api[s]/<group>/<version>/<plural>`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource for a manifest's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.api_version == api_version && r.kind == kind)
}

/// Finds a resource by `group_resource()` (the store key prefix).
pub(crate) fn find_group_resource(gr: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group_resource() == gr)
}

pub(crate) fn namespaces() -> &'static ResourceInfo {
    find("", "v1", "namespaces").expect("namespaces are served")
}

pub(crate) fn services() -> &'static ResourceInfo {
    find("", "v1", "services").expect("services are served")
}

/// API groups in discovery order, each with its versions (one per group today).
pub(crate) fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent_with_manifest_kinds() {
        for r in resources() {
            let k = r.kind_info();
            assert_eq!(
                (k.plural, k.namespaced),
                (r.plural, r.namespaced),
                "{}",
                r.kind
            );
        }
        // Names must be unique per group/version.
        for (i, a) in resources().iter().enumerate() {
            for b in &resources()[i + 1..] {
                assert!(
                    (a.group, a.version, a.plural) != (b.group, b.version, b.plural),
                    "{}",
                    a.plural
                );
            }
        }
    }

    #[test]
    fn lookups() {
        let d = find_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(d.group_resource(), "deployments.apps");
        assert_eq!(d.path(Some("x")), "/apis/apps/v1/namespaces/x/deployments");
        assert_eq!(
            find("", "v1", "nodes").unwrap().path(Some("x")),
            "/api/v1/nodes"
        );
        assert!(!find("", "v1", "nodes").unwrap().namespaced);
        assert_eq!(find_group_resource("pods").unwrap().kind, "Pod");
        assert_eq!(
            groups(),
            vec![
                ("discovery.k8s.io", vec!["v1"]),
                ("networking.k8s.io", vec!["v1"]),
                ("apps", vec!["v1"]),
                ("fibril.io", vec!["v1alpha1"])
            ]
        );
    }
}
