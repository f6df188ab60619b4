//! The shape of a finding, and the registry of every rule the doctor knows.
//!
//! Rule ids are a stable interface: CI pipelines filter on them and SARIF consumers key
//! suppressions on them, so an id is never renamed, only added.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// The SARIF `level` of this severity.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Info => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?} (expected info, warning or error)")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            other => Err(UnknownSeverity(other.to_string())),
        }
    }
}

macro_rules! rules {
    ($( $variant:ident => $id:literal, $sev:ident, $seed:literal, $title:literal; )*) => {
        /// Every rule the doctor can report. The string form is the stable `id`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum RuleId { $( $variant, )* }

        impl RuleId {
            /// All rules, in registry order (the SARIF `rules` array follows it).
            pub const ALL: &'static [RuleId] = &[ $( RuleId::$variant, )* ];

            pub fn as_str(self) -> &'static str {
                match self { $( RuleId::$variant => $id, )* }
            }

            /// The rule's name in PascalCase (SARIF `reportingDescriptor.name`).
            pub fn name(self) -> &'static str {
                match self { $( RuleId::$variant => stringify!($variant), )* }
            }

            /// The severity this rule reports unless a finding says otherwise.
            pub fn default_severity(self) -> Severity {
                match self { $( RuleId::$variant => Severity::$sev, )* }
            }

            /// The seed incident(s) the rule comes from (`../shared/context/NNN_*`), or "" for
            /// input problems.
            pub fn seed(self) -> &'static str {
                match self { $( RuleId::$variant => $seed, )* }
            }

            /// What the rule catches, in a short phrase.
            pub fn title(self) -> &'static str {
                match self { $( RuleId::$variant => $title, )* }
            }
        }

        impl FromStr for RuleId {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $id => Ok(RuleId::$variant), )*
                    other => Err(format!("unknown rule id {other:?}")),
                }
            }
        }
    };
}

rules! {
    PodCidrOverlap => "pod-cidr-overlap", Error, "000",
        "a pod pool overlaps a route, node subnet, service IP or reserved range";
    PodCidrForecast => "pod-cidr-forecast", Warning, "000",
        "node churn will walk the pod pool into an overlap or exhaustion";
    LegacyHostRouting => "legacy-host-routing", Warning, "001",
        "settings that force legacy (iptables) host routing";
    RpFilter => "rp-filter", Warning, "002",
        "strict reverse-path filtering on an interface that sees asymmetric or masqueraded traffic";
    SrcValidMark => "src-valid-mark", Error, "002",
        "src_valid_mark=1 while a DNS proxy / FQDN policy is in use";
    NativeRoutingCidr => "native-routing-cidr", Error, "002",
        "the native-routing CIDR does not cover every pod CIDR";
    MetricsCardinality => "metrics-cardinality", Warning, "002",
        "metrics keyed by IP or pod without a bounding labelsContext";
    HostportChainOrder => "hostport-chain-order", Error, "002",
        "KUBE-SERVICES is evaluated before the CNI's hostPort chain in PREROUTING";
    K8sServiceHost => "k8s-service-host", Error, "002, 004",
        "kube-proxy replacement without k8sServiceHost/k8sServicePort";
    PolicyBlocksDns => "policy-blocks-dns", Error, "003",
        "an egress policy selects pods and allows them no DNS";
    DnsNdots => "dns-ndots", Warning, "003",
        "ndots:5 with non-FQDN lookups multiplies DNS queries";
    ExternalIpMitm => "external-ip-mitm", Warning, "003",
        "Services with externalIPs and no admission guard (CVE-2020-8554)";
    CniConfigConflict => "cni-config-conflict", Error, "003",
        "several configs in the CNI config dir; the first alphabetically wins";
    IptablesScale => "iptables-scale", Warning, "001, 003",
        "kube-proxy iptables rules at a scale that costs every new connection";
    CrdWatchBandwidth => "crd-watch-bandwidth", Warning, "003",
        "per-node objects x update rate x watchers: API server egress";
    AutodirectRoutesL2 => "autodirect-routes-l2", Error, "004",
        "autoDirectNodeRoutes while nodes are not on one L2 segment";
    InputUnparsable => "input-unparsable", Error, "",
        "an input file could not be parsed";
    InputUnknownKey => "input-unknown-key", Warning, "",
        "an input names a key the doctor does not know (likely a typo)";
    InputInvalidValue => "input-invalid-value", Error, "",
        "an input value has the wrong form";
    InputUnavailable => "input-unavailable", Warning, "",
        "a live source could not be read (a missing tool, no permission, an agent that does not answer)";
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One exact value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The input file as the user named it, or the flag (`--reserved`) for command-line values.
    pub file: String,
    /// Key path inside the file (`bpf.masquerade`, `data.routing-mode`, `items[3].spec.podCIDR`,
    /// `[2].dst`), when the input is structured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u32>,
    /// The exact value found (or `unset (default X)` when a default applies).
    pub value: String,
}

impl Evidence {
    pub fn new(file: impl Into<String>, value: impl Into<String>) -> Self {
        Evidence {
            file: file.into(),
            key: None,
            line: None,
            value: value.into(),
        }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn line(mut self, line: Option<u32>) -> Self {
        self.line = line;
        self
    }

    /// `file:line key` for humans.
    pub fn location(&self) -> String {
        let mut s = self.file.clone();
        if let Some(l) = self.line {
            s.push_str(&format!(":{l}"));
        }
        if let Some(k) = &self.key {
            s.push(' ');
            s.push_str(k);
        }
        s
    }
}

/// One problem the doctor found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: RuleId,
    pub severity: Severity,
    /// One line.
    pub message: String,
    pub evidence: Vec<Evidence>,
    /// The mechanism, in one sentence.
    pub why: String,
    /// The concrete config change.
    pub fix: String,
}

impl Finding {
    pub fn new(id: RuleId, message: impl Into<String>) -> Self {
        Finding {
            id,
            severity: id.default_severity(),
            message: message.into(),
            evidence: Vec::new(),
            why: String::new(),
            fix: String::new(),
        }
    }

    pub fn severity(mut self, s: Severity) -> Self {
        self.severity = s;
        self
    }

    pub fn evidence(mut self, e: Evidence) -> Self {
        self.evidence.push(e);
        self
    }

    pub fn why(mut self, s: impl Into<String>) -> Self {
        self.why = s.into();
        self
    }

    pub fn fix(mut self, s: impl Into<String>) -> Self {
        self.fix = s.into();
        self
    }
}

/// Worst first; ties by id, then message, so output is stable.
pub fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.id.as_str().cmp(b.id.as_str()))
            .then(a.message.cmp(&b.message))
    });
}
