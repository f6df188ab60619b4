//! Kubernetes objects from manifests and from `kubectl get nodes,ciliumnodes -o json`.
//!
//! Objects keep the file they came from and a locator (`items[3]`, `doc[1]`), so evidence can
//! name the exact key path. Kinds with upstream types are decoded into k8s-openapi types; Cilium's
//! CRDs are read as JSON.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::doctor::cidr::parse_net;
use crate::doctor::finding::{Evidence, Finding};
use crate::doctor::input::{unparsable, yaml_error, TextInput};

/// One object and where it sits.
#[derive(Clone, Debug)]
pub struct Object {
    pub file: String,
    /// Key path prefix of the object in its file: `items[3]`, `doc[1]`, `doc[1].items[0]` or "".
    pub locator: String,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }

    /// `Kind ns/name` (cluster-scoped kinds without the namespace).
    pub fn display(&self) -> String {
        if self.value.pointer("/metadata/namespace").is_some() {
            format!("{} {}/{}", self.kind(), self.namespace(), self.name())
        } else {
            format!("{} {}", self.kind(), self.name())
        }
    }

    /// The full key path of `path` inside this object.
    pub fn key(&self, path: &str) -> String {
        match (self.locator.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => self.locator.clone(),
            (false, false) => format!("{}.{path}", self.locator),
        }
    }

    pub fn evidence(&self, path: &str, value: impl Into<String>) -> Evidence {
        Evidence::new(self.file.clone(), value).key(self.key(path))
    }

    /// Decodes into a k8s-openapi type; a mismatch is a finding naming the field.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Finding> {
        serde_path_to_error::deserialize::<_, T>(&self.value).map_err(|e| {
            let path = e.path().to_string();
            unparsable(
                &self.file,
                &format!("{} object", self.kind()),
                None,
                None,
                &format!("{}: {}: {}", self.key(""), path, e.inner()),
            )
        })
    }

    pub fn created(&self) -> Option<DateTime<Utc>> {
        self.value
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
    }
}

/// Splits one file into objects: YAML or JSON, multi-document, `kind: List` expanded.
pub fn parse_objects(input: &TextInput, problems: &mut Vec<Finding>) -> Vec<Object> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&input.text) {
        match Value::deserialize(doc) {
            Ok(Value::Null) => docs.push(None),
            Ok(v) => docs.push(Some(v)),
            Err(e) => {
                problems.push(yaml_error(&input.name, "Kubernetes YAML or JSON", &e));
                break;
            }
        }
    }
    let multi = docs.len() > 1;
    let mut out = Vec::new();
    for (d, doc) in docs.into_iter().enumerate() {
        let Some(doc) = doc else { continue };
        let base = if multi {
            format!("doc[{d}]")
        } else {
            String::new()
        };
        let is_list = doc.get("items").is_some_and(Value::is_array)
            && doc
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"));
        if is_list {
            for (i, item) in doc["items"].as_array().into_iter().flatten().enumerate() {
                let locator = if base.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("{base}.items[{i}]")
                };
                out.push(Object {
                    file: input.name.clone(),
                    locator,
                    value: item.clone(),
                });
            }
        } else if doc.is_object() {
            out.push(Object {
                file: input.name.clone(),
                locator: base,
                value: doc,
            });
        } else {
            problems.push(unparsable(
                &input.name,
                "Kubernetes YAML or JSON",
                None,
                None,
                &format!("document {d} is not an object"),
            ));
        }
    }
    out
}

/// What the node export says about one node: its pod CIDRs, address and history.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    pub name: String,
    pub created: Option<DateTime<Utc>>,
    /// Pod CIDRs with the object and key path they came from.
    pub pod_cidrs: Vec<(IpNet, Evidence)>,
    pub internal_ips: Vec<(IpAddr, Evidence)>,
    /// Whether the pod CIDRs came from a CiliumNode (cluster-pool IPAM) rather than a Node.
    pub from_cilium_node: bool,
}

/// Reads Node and CiliumNode objects into one record per node name.
pub fn node_records(objects: &[Object], problems: &mut Vec<Finding>) -> Vec<NodeRecord> {
    use k8s_openapi::api::core::v1::Node;
    let mut out: Vec<NodeRecord> = Vec::new();
    fn entry<'a>(out: &'a mut Vec<NodeRecord>, name: &str) -> &'a mut NodeRecord {
        if let Some(i) = out.iter().position(|r| r.name == name) {
            return &mut out[i];
        }
        out.push(NodeRecord {
            name: name.to_string(),
            created: None,
            pod_cidrs: Vec::new(),
            internal_ips: Vec::new(),
            from_cilium_node: false,
        });
        out.last_mut().expect("just pushed")
    }
    let bad_cidr = |o: &Object, path: &str, s: &str, problems: &mut Vec<Finding>| {
        problems.push(unparsable(
            &o.file,
            "node export",
            None,
            None,
            &format!("{}: {s:?} is not a CIDR", o.key(path)),
        ));
    };
    for o in objects {
        match o.kind() {
            "Node" => {
                let node: Node = match o.decode() {
                    Ok(n) => n,
                    Err(f) => {
                        problems.push(f);
                        continue;
                    }
                };
                let created = o.created();
                let r = entry(&mut out, o.name());
                r.created = r.created.or(created);
                if let Some(spec) = &node.spec {
                    if !r.from_cilium_node {
                        let cidrs: Vec<(String, String)> = match &spec.pod_cidrs {
                            Some(list) if !list.is_empty() => list
                                .iter()
                                .enumerate()
                                .map(|(i, c)| (c.clone(), format!("spec.podCIDRs[{i}]")))
                                .collect(),
                            _ => spec
                                .pod_cidr
                                .iter()
                                .map(|c| (c.clone(), "spec.podCIDR".to_string()))
                                .collect(),
                        };
                        for (c, path) in cidrs {
                            match parse_net(&c) {
                                Some(n) => r.pod_cidrs.push((n, o.evidence(&path, c))),
                                None => bad_cidr(o, &path, &c, problems),
                            }
                        }
                    }
                }
                let addrs = node
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.clone())
                    .unwrap_or_default();
                for (i, a) in addrs.iter().enumerate() {
                    if a.type_ == "InternalIP" {
                        if let Ok(ip) = a.address.parse() {
                            r.internal_ips.push((
                                ip,
                                o.evidence(&format!("status.addresses[{i}].address"), &a.address),
                            ));
                        }
                    }
                }
            }
            "CiliumNode" => {
                let created = o.created();
                let name = o.name().to_string();
                let cidrs: Vec<(usize, String)> = o
                    .value
                    .pointer("/spec/ipam/podCIDRs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_str().map(|s| (i, s.to_string())))
                    .collect();
                let addrs: Vec<(usize, String)> = o
                    .value
                    .pointer("/spec/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, a)| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                    .filter_map(|(i, a)| {
                        a.get("ip")
                            .and_then(Value::as_str)
                            .map(|s| (i, s.to_string()))
                    })
                    .collect();
                let r = entry(&mut out, &name);
                // The CiliumNode is created with the node's agent; the Node's own timestamp is
                // the better age when both exist.
                r.created = r.created.or(created);
                if !cidrs.is_empty() {
                    r.pod_cidrs.clear();
                    r.from_cilium_node = true;
                }
                for (i, c) in cidrs {
                    let path = format!("spec.ipam.podCIDRs[{i}]");
                    match parse_net(&c) {
                        Some(n) => r.pod_cidrs.push((n, o.evidence(&path, c))),
                        None => bad_cidr(o, &path, &c, problems),
                    }
                }
                for (i, a) in addrs {
                    if let Ok(ip) = a.parse() {
                        if !r.internal_ips.iter().any(|(x, _)| *x == ip) {
                            r.internal_ips
                                .push((ip, o.evidence(&format!("spec.addresses[{i}].ip"), a)));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}
