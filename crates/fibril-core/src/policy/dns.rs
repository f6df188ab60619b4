//! Seed 003's most common failure: an egress policy that isolates pods and leaves them no
//! way to DNS. Legal, and nearly always a mistake: every name lookup then times out.
//!
//! The check compiles the policies and asks the compiled egress maps, with the datapath's
//! own lookups ([`super::eval::lookup_peer`]), whether each egress-isolated pod may send
//! UDP 53 to a kube-dns pod (`k8s-app=kube-dns` in `kube-system`). Stacked policies count:
//! a pod another policy lets reach DNS is fine. When the cluster has no kube-dns pod (the
//! doctor reading manifests), a standard one is assumed: `kube-system/kube-dns`, labelled
//! `k8s-app=kube-dns`, serving `dns` 53/UDP and `dns-tcp` 53/TCP.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::cluster::{
    ClusterState, ContainerPort, NamespaceInfo, PodInfo, PodKey, PolicyRef, NAMESPACE_NAME_LABEL,
};
use super::compile::Compiler;
use super::eval::lookup_peer;
use super::identity::{Identity, IdentityError};
use super::normalize::normalize;
use crate::services::L4Proto;

/// Where cluster DNS runs.
pub const KUBE_DNS_NAMESPACE: &str = "kube-system";
/// The label of cluster DNS pods (CoreDNS keeps kube-dns's).
pub const KUBE_DNS_LABEL_KEY: &str = "k8s-app";
pub const KUBE_DNS_LABEL_VALUE: &str = "kube-dns";
pub const DNS_PORT: u16 = 53;

/// An egress policy whose pods cannot reach DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsWarning {
    pub policy: PolicyRef,
    /// The pods it selects that have no way to DNS (over all policies selecting them).
    pub pods: Vec<PodKey>,
    /// Whether TCP 53 is allowed (lookups over UDP still fail).
    pub tcp_allowed: bool,
    /// The kube-dns pods checked; empty when none exists and the standard one was assumed.
    pub dns_pods: Vec<PodKey>,
}

impl fmt::Display for DnsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pods: Vec<String> = self.pods.iter().map(ToString::to_string).collect();
        write!(
            f,
            "NetworkPolicy {} restricts egress of {} and allows no DNS: UDP {DNS_PORT} to {} is denied{}",
            self.policy,
            pods.join(", "),
            if self.dns_pods.is_empty() {
                "kube-dns (k8s-app=kube-dns in kube-system, assumed)".to_string()
            } else {
                self.dns_pods
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if self.tcp_allowed {
                " (only TCP 53 is allowed)"
            } else {
                ""
            }
        )
    }
}

fn is_dns_pod(p: &PodInfo) -> bool {
    p.key.namespace == KUBE_DNS_NAMESPACE
        && !p.host_network
        && p.labels.get(KUBE_DNS_LABEL_KEY).map(String::as_str) == Some(KUBE_DNS_LABEL_VALUE)
}

/// One warning per egress policy that selects pods left without DNS.
pub fn dns_warnings(cluster: &ClusterState) -> Result<Vec<DnsWarning>, IdentityError> {
    let mut state = cluster.clone();
    let mut dns_pods: Vec<PodKey> = state
        .pods
        .values()
        .filter(|p| is_dns_pod(p))
        .map(|p| p.key.clone())
        .collect();
    let assumed = dns_pods.is_empty();
    if assumed {
        if !state.namespaces.contains_key(KUBE_DNS_NAMESPACE) {
            state.upsert_namespace(NamespaceInfo {
                name: KUBE_DNS_NAMESPACE.into(),
                labels: [(
                    NAMESPACE_NAME_LABEL.to_string(),
                    KUBE_DNS_NAMESPACE.to_string(),
                )]
                .into(),
            });
        }
        let key = PodKey::new(KUBE_DNS_NAMESPACE, "kube-dns");
        state.upsert_pod(PodInfo {
            key: key.clone(),
            labels: [(
                KUBE_DNS_LABEL_KEY.to_string(),
                KUBE_DNS_LABEL_VALUE.to_string(),
            )]
            .into(),
            ip: None,
            node: None,
            ports: vec![
                ContainerPort {
                    name: Some("dns".into()),
                    port: DNS_PORT,
                    protocol: L4Proto::Udp,
                },
                ContainerPort {
                    name: Some("dns-tcp".into()),
                    port: DNS_PORT,
                    protocol: L4Proto::Tcp,
                },
            ],
            host_network: false,
        });
        dns_pods.push(key);
    }
    let compiled = Compiler::new().compile(&state)?;
    // Each DNS pod as the datapath resolves it: its identity, and the CIDR identity of its
    // address if it has one.
    let targets: Vec<Vec<Identity>> = dns_pods
        .iter()
        .map(|k| {
            let mut ids = vec![compiled.pod_identities[k]];
            if let Some(ip) = state.pods[k].ip {
                ids.extend(compiled.ipcache_lookup(None, ip).1.cidr_identity);
            }
            ids
        })
        .collect();
    let egress_policies: Vec<&PolicyRef> = state
        .policies
        .iter()
        .filter(|(_, np)| normalize(np).policy.is_some_and(|p| p.egress.is_some()))
        .map(|(r, _)| r)
        .collect();
    let mut by_policy: BTreeMap<&PolicyRef, (Vec<PodKey>, bool)> = BTreeMap::new();
    for ep in compiled.endpoints.values() {
        let Some(egress) = &ep.egress else { continue };
        let reaches = |proto| {
            targets
                .iter()
                .any(|ids| lookup_peer(egress, ids, proto, DNS_PORT).is_some())
        };
        if reaches(L4Proto::Udp) {
            continue;
        }
        let tcp = reaches(L4Proto::Tcp);
        for r in ep.policies.iter().filter(|r| egress_policies.contains(r)) {
            let e = by_policy.entry(r).or_insert((Vec::new(), true));
            e.0.push(ep.pod.clone());
            e.1 &= tcp;
        }
    }
    Ok(by_policy
        .into_iter()
        .map(|(r, (pods, tcp_allowed))| DnsWarning {
            policy: r.clone(),
            pods,
            tcp_allowed,
            dns_pods: if assumed {
                Vec::new()
            } else {
                dns_pods.clone()
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    fn cluster(policies: &[serde_json::Value], with_dns_pod: bool) -> ClusterState {
        let mut s = ClusterState::default();
        for ns in ["app", KUBE_DNS_NAMESPACE] {
            s.upsert_namespace(NamespaceInfo {
                name: ns.into(),
                labels: [(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into(),
            });
        }
        for (i, name) in ["web", "db"].iter().enumerate() {
            s.upsert_pod(PodInfo {
                key: PodKey::new("app", *name),
                labels: [("app".to_string(), name.to_string())].into(),
                ip: Some(format!("10.0.0.{}", i + 10).parse().unwrap()),
                node: None,
                ports: vec![],
                host_network: false,
            });
        }
        if with_dns_pod {
            s.upsert_pod(PodInfo {
                key: PodKey::new(KUBE_DNS_NAMESPACE, "coredns-1"),
                labels: [(
                    KUBE_DNS_LABEL_KEY.to_string(),
                    KUBE_DNS_LABEL_VALUE.to_string(),
                )]
                .into(),
                ip: Some("10.0.1.53".parse().unwrap()),
                node: None,
                ports: vec![ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: L4Proto::Udp,
                }],
                host_network: false,
            });
        }
        for (i, spec) in policies.iter().enumerate() {
            let np: NetworkPolicy = serde_json::from_value(json!({
                "metadata": {"name": format!("p{i}"), "namespace": "app"}, "spec": spec
            }))
            .unwrap();
            s.upsert_policy(np).unwrap();
        }
        s
    }

    fn warned(policies: &[serde_json::Value], dns_pod: bool) -> Vec<DnsWarning> {
        dns_warnings(&cluster(policies, dns_pod)).unwrap()
    }

    #[test]
    fn egress_without_dns_is_named() {
        let deny =
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]});
        for dns_pod in [false, true] {
            let w = warned(std::slice::from_ref(&deny), dns_pod);
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].policy, PolicyRef::new("app", "p0"));
            assert_eq!(w[0].pods, vec![PodKey::new("app", "web")]);
            assert!(!w[0].tcp_allowed);
            let text = w[0].to_string();
            assert!(
                text.contains("NetworkPolicy app/p0 restricts egress of app/web"),
                "{text}"
            );
        }
        // Ingress-only policies are not the problem.
        assert!(warned(&[json!({"podSelector": {}})], false).is_empty());
    }

    #[test]
    fn an_allowance_anywhere_counts() {
        let deny = json!({"podSelector": {}, "policyTypes": ["Egress"]});
        let dns = json!({"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]});
        // web reaches DNS through the stacked policy; db does not.
        let w = warned(&[deny, dns], false);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].pods, vec![PodKey::new("app", "db")]);
        // Named ports resolve on the DNS pod; an ipBlock holding its address works too.
        let named =
            json!({"podSelector": {}, "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]});
        assert!(warned(&[named], false).is_empty());
        let block =
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24"}}]}]});
        assert!(warned(std::slice::from_ref(&block), true).is_empty());
        assert_eq!(
            warned(&[block], false).len(),
            1,
            "the assumed pod has no address"
        );
        // TCP only is still a warning, and says so.
        let tcp = json!({"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]});
        let w = warned(&[tcp], true);
        assert!(
            w[0].tcp_allowed && w[0].to_string().contains("only TCP 53"),
            "{}",
            w[0]
        );
        // The wrong namespace for kube-dns does not count.
        let wrong = json!({"podSelector": {}, "egress": [{
            "to": [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}]});
        assert_eq!(warned(&[wrong], true).len(), 1);
    }
}
