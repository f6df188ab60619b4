//! Cilium's configuration from either export: Helm values (camelCase, nested) or the
//! `cilium-config` ConfigMap (kebab-case keys under `data`, every value a string).
//!
//! When both are given the ConfigMap wins: it is what the agents actually read, and values
//! files drift. A setting absent from both takes the chart's default, and the evidence says so.

use serde_json::Value;

use crate::doctor::finding::{Evidence, Finding, RuleId};
use crate::doctor::input::{unparsable, yaml_error, yaml_key_line, TextInput};

/// A setting as found: its text, and where (or that it is the default).
#[derive(Clone, Debug)]
pub struct Found {
    pub value: Value,
    pub evidence: Evidence,
    pub explicit: bool,
}

impl Found {
    /// Scalar as text (`true`, `strict`, `10.0.0.0/8`).
    pub fn text(&self) -> String {
        match &self.value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// Truthiness as Cilium reads it: `true`/"true" (and "strict", for kube-proxy replacement).
    pub fn truthy(&self) -> bool {
        matches!(
            self.text().trim().to_ascii_lowercase().as_str(),
            "true" | "strict" | "enabled"
        )
    }

    /// A list setting: a YAML sequence, or whitespace/comma-separated text (ConfigMap style).
    pub fn items(&self) -> Vec<String> {
        match &self.value {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Value::Null => Vec::new(),
            _ => self
                .text()
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The parsed exports, and what was wrong with them.
#[derive(Debug, Default)]
pub struct CiliumView {
    values: Option<(String, String, Value)>,
    config: Option<(String, String, serde_json::Map<String, Value>)>,
    pub problems: Vec<Finding>,
}

/// Keys (dotted paths in values.yaml) that the doctor reads or that commonly hide typos, so an
/// unknown sibling is reported. Top-level keys: every key the doctor reads; for these subtrees
/// every known child is listed.
const KNOWN_TOP: &[&str] = &[
    "autoDirectNodeRoutes",
    "bpf",
    "cluster",
    "debug",
    "devices",
    "dnsProxy",
    "egressMasqueradeInterfaces",
    "enableIPv4Masquerade",
    "enableIPv6Masquerade",
    "encryption",
    "endpointRoutes",
    "eni",
    "hubble",
    "image",
    "ipam",
    "ipMasqAgent",
    "ipv4",
    "ipv4NativeRoutingCIDR",
    "ipv6",
    "ipv6NativeRoutingCIDR",
    "k8sServiceHost",
    "k8sServicePort",
    "kubeProxyReplacement",
    "l2announcements",
    "l7Proxy",
    "loadBalancer",
    "operator",
    "prometheus",
    "routingMode",
    "tunnel",
    "tunnelProtocol",
];

const KNOWN_CHILDREN: &[(&str, &[&str])] = &[
    (
        "bpf",
        &[
            "autoMount",
            "root",
            "masquerade",
            "hostLegacyRouting",
            "lbExternalClusterIP",
            "lbMapMax",
            "mapDynamicSizeRatio",
            "monitorAggregation",
            "monitorInterval",
            "monitorFlags",
            "policyMapMax",
            "preallocateMaps",
            "tproxy",
            "vlanBypass",
            "datapathMode",
            "ctTcpMax",
            "ctAnyMax",
            "natMax",
            "neighMax",
            "lbAlgorithmAnnotation",
            "distributedLRU",
            "events",
            "enableTCX",
        ],
    ),
    (
        "ipam",
        &[
            "mode",
            "operator",
            "ciliumNodeUpdateRate",
            "installUplinkRoutesForDelegatedIPAM",
            "multiPoolPreAllocation",
        ],
    ),
    (
        "ipam.operator",
        &[
            "clusterPoolIPv4PodCIDRList",
            "clusterPoolIPv4MaskSize",
            "clusterPoolIPv6PodCIDRList",
            "clusterPoolIPv6MaskSize",
            "autoCreateCiliumPodIPPools",
            "externalAPILimitBurstSize",
            "externalAPILimitQPS",
        ],
    ),
    (
        "encryption",
        &[
            "enabled",
            "type",
            "nodeEncryption",
            "strictMode",
            "wireguard",
            "ipsec",
        ],
    ),
    (
        "hubble.metrics",
        &[
            "enabled",
            "enableOpenMetrics",
            "port",
            "tls",
            "serviceAnnotations",
            "serviceMonitor",
            "dashboards",
            "dynamic",
        ],
    ),
];

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

impl CiliumView {
    pub fn parse(values: Option<&TextInput>, config: Option<&TextInput>) -> CiliumView {
        let mut view = CiliumView::default();
        if let Some(v) = values {
            match serde_yaml::from_str::<Value>(&v.text) {
                Ok(Value::Null) => {
                    view.values = Some((
                        v.name.clone(),
                        v.text.clone(),
                        Value::Object(Default::default()),
                    ))
                }
                Ok(val @ Value::Object(_)) => {
                    view.check_unknown_keys(&v.name, &v.text, &val);
                    view.values = Some((v.name.clone(), v.text.clone(), val));
                }
                Ok(_) => view.problems.push(unparsable(
                    &v.name,
                    "Helm values file",
                    Some(1),
                    None,
                    "the document is not a mapping",
                )),
                Err(e) => view
                    .problems
                    .push(yaml_error(&v.name, "Helm values file", &e)),
            }
        }
        if let Some(c) = config {
            match serde_yaml::from_str::<Value>(&c.text) {
                Ok(val) => match val.get("data") {
                    Some(Value::Object(m)) => {
                        view.config = Some((c.name.clone(), c.text.clone(), m.clone()))
                    }
                    _ => view.problems.push(unparsable(
                        &c.name,
                        "ConfigMap (kubectl get cm cilium-config -o yaml)",
                        None,
                        None,
                        "no `data` mapping",
                    )),
                },
                Err(e) => view.problems.push(yaml_error(
                    &c.name,
                    "ConfigMap (kubectl get cm cilium-config -o yaml)",
                    &e,
                )),
            }
        }
        view
    }

    /// Whether any Cilium export was readable.
    pub fn present(&self) -> bool {
        self.values.is_some() || self.config.is_some()
    }

    pub fn has_values(&self) -> bool {
        self.values.is_some()
    }

    fn check_unknown_keys(&mut self, file: &str, text: &str, root: &Value) {
        let Some(top) = root.as_object() else { return };
        for key in top.keys() {
            if KNOWN_TOP.contains(&key.as_str()) {
                continue;
            }
            if let Some(k) = closest(key, KNOWN_TOP) {
                self.problems.push(unknown_key(file, text, key, k));
            }
        }
        for (parent, children) in KNOWN_CHILDREN {
            let mut node = root;
            for seg in parent.split('.') {
                match node.get(seg) {
                    Some(n) => node = n,
                    None => {
                        node = &Value::Null;
                        break;
                    }
                }
            }
            let Some(obj) = node.as_object() else {
                continue;
            };
            for key in obj.keys() {
                if children.contains(&key.as_str()) {
                    continue;
                }
                // The lists are not the whole chart: only a near miss of a known key is reported.
                if let Some(k) = closest(key, children) {
                    let full = format!("{parent}.{key}");
                    self.problems
                        .push(unknown_key(file, text, &full, &format!("{parent}.{k}")));
                }
            }
        }
    }

    /// Looks a setting up: ConfigMap `cm_key` first, then values `path`.
    pub fn get(&self, path: &str, cm_key: &str) -> Option<Found> {
        if let Some((file, text, data)) = &self.config {
            if let Some(v) = data.get(cm_key) {
                return Some(Found {
                    value: v.clone(),
                    evidence: Evidence::new(file.clone(), scalar_text(v))
                        .key(format!("data.{cm_key}"))
                        .line(yaml_key_line(text, &["data", cm_key])),
                    explicit: true,
                });
            }
        }
        if let Some((file, text, root)) = &self.values {
            let mut node = root;
            for seg in path.split('.') {
                node = node.get(seg)?;
            }
            if node.is_null() {
                return None;
            }
            let segs: Vec<&str> = path.split('.').collect();
            return Some(Found {
                value: node.clone(),
                evidence: Evidence::new(file.clone(), scalar_text(node))
                    .key(path.to_string())
                    .line(yaml_key_line(text, &segs)),
                explicit: true,
            });
        }
        None
    }

    /// Like [`get`](Self::get), falling back to the chart default `default`.
    pub fn get_or(&self, path: &str, cm_key: &str, default: Value) -> Found {
        if let Some(f) = self.get(path, cm_key) {
            return f;
        }
        let (file, key) = match (&self.values, &self.config) {
            (Some((f, _, _)), _) => (f.clone(), path.to_string()),
            (None, Some((f, _, _))) => (f.clone(), format!("data.{cm_key}")),
            (None, None) => ("<defaults>".to_string(), path.to_string()),
        };
        Found {
            evidence: Evidence::new(file, format!("unset (default {})", scalar_text(&default)))
                .key(key),
            value: default,
            explicit: false,
        }
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn unknown_key(file: &str, text: &str, key: &str, hint: &str) -> Finding {
    let segs: Vec<&str> = key.split('.').collect();
    let mean = if hint.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {hint}?)")
    };
    Finding::new(
        RuleId::InputUnknownKey,
        format!("{file}: unknown key {key}{mean}"),
    )
    .evidence(
        Evidence::new(file, "unknown key")
            .key(key)
            .line(yaml_key_line(text, &segs)),
    )
    .why("Helm silently ignores a key the chart does not define, so the setting it was meant to change keeps its default")
    .fix(if hint.is_empty() {
        format!("remove {key} or correct it to a key the Cilium chart defines")
    } else {
        format!("rename {key} to {hint}")
    })
}

/// Cilium's resolved settings that the rules read.
pub struct Settings {
    pub kube_proxy_replacement: Found,
    pub bpf_masquerade: Found,
    pub ipv4_masquerade: Found,
    pub host_legacy_routing: Found,
    pub routing_mode: Found,
    pub tunnel: Option<Found>,
    pub native_cidr: Option<Found>,
    pub auto_direct: Found,
    pub ipam_mode: Found,
    pub pools: Found,
    pub mask: Found,
    pub encryption: Found,
    pub encryption_type: Found,
    pub hubble_metrics: Option<Found>,
    pub k8s_service_host: Option<Found>,
    pub k8s_service_port: Option<Found>,
    /// The values file, when one was given and parsed.
    pub values_file: Option<String>,
}

impl Settings {
    pub fn resolve(v: &CiliumView) -> Settings {
        use serde_json::json;
        let pools = v
            .get(
                "ipam.operator.clusterPoolIPv4PodCIDRList",
                "cluster-pool-ipv4-cidr",
            )
            .or_else(|| {
                v.get(
                    "ipam.operator.clusterPoolIPv4PodCIDR",
                    "cluster-pool-ipv4-cidr",
                )
            })
            .unwrap_or_else(|| {
                v.get_or(
                    "ipam.operator.clusterPoolIPv4PodCIDRList",
                    "cluster-pool-ipv4-cidr",
                    json!(["10.0.0.0/8"]),
                )
            });
        Settings {
            kube_proxy_replacement: v.get_or(
                "kubeProxyReplacement",
                "kube-proxy-replacement",
                json!("false"),
            ),
            bpf_masquerade: v.get_or("bpf.masquerade", "enable-bpf-masquerade", json!(false)),
            ipv4_masquerade: v.get_or(
                "enableIPv4Masquerade",
                "enable-ipv4-masquerade",
                json!(true),
            ),
            host_legacy_routing: v.get_or(
                "bpf.hostLegacyRouting",
                "enable-host-legacy-routing",
                json!(false),
            ),
            routing_mode: v.get_or("routingMode", "routing-mode", json!("tunnel")),
            tunnel: v.get("tunnel", "tunnel"),
            native_cidr: v.get("ipv4NativeRoutingCIDR", "ipv4-native-routing-cidr"),
            auto_direct: v.get_or(
                "autoDirectNodeRoutes",
                "auto-direct-node-routes",
                json!(false),
            ),
            ipam_mode: v.get_or("ipam.mode", "ipam", json!("cluster-pool")),
            pools,
            mask: v.get_or(
                "ipam.operator.clusterPoolIPv4MaskSize",
                "cluster-pool-ipv4-mask-size",
                json!(24),
            ),
            encryption: v.get_or("encryption.enabled", "enable-wireguard", json!(false)),
            encryption_type: v.get_or("encryption.type", "encryption-type", json!("ipsec")),
            hubble_metrics: v.get("hubble.metrics.enabled", "hubble-metrics"),
            k8s_service_host: v.get("k8sServiceHost", "k8s-service-host"),
            k8s_service_port: v.get("k8sServicePort", "k8s-service-port"),
            values_file: v.values.as_ref().map(|(f, _, _)| f.clone()),
        }
    }

    /// Native routing: `routingMode: native`, or the pre-1.14 `tunnel: disabled`.
    pub fn native_routing(&self) -> Option<&Found> {
        if self.routing_mode.explicit && self.routing_mode.text() == "native" {
            return Some(&self.routing_mode);
        }
        self.tunnel.as_ref().filter(|t| t.text() == "disabled")
    }

    pub fn wireguard(&self) -> bool {
        self.encryption.truthy()
            && (self.encryption.evidence.key.as_deref() == Some("data.enable-wireguard")
                || self.encryption_type.text() == "wireguard")
    }

    /// Whether the cluster-pool allocator (whose pool and mask are read) is in use.
    pub fn cluster_pool(&self) -> bool {
        matches!(self.ipam_mode.text().as_str(), "cluster-pool" | "")
    }
}

/// Helper for rules that need a single parse problem with a key.
pub fn invalid_value(ev: &Evidence, what: &str) -> Finding {
    Finding::new(
        RuleId::InputInvalidValue,
        format!(
            "{} {}: {what}",
            ev.file,
            ev.key.as_deref().unwrap_or_default()
        ),
    )
    .evidence(ev.clone())
    .why("a value the agent cannot parse stops it from starting, and checks that need it did not run")
    .fix("correct the value to the documented form")
}
