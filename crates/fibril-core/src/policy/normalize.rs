//! NetworkPolicy objects validated and reduced to what the compiler needs, with Kubernetes'
//! defaults applied: `policyTypes` (Ingress always, Egress when `egress` has rules), an
//! absent or empty `from`/`to` (every peer) and `ports` (every port), protocol TCP.
//!
//! Validation follows the API server's (`ValidateNetworkPolicy`); every problem is reported
//! with its field path. A policy with problems still isolates the pods it selects, in the
//! directions it names, but allows nothing: an invalid policy never opens a hole.

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cluster::parse_protocol;
use super::selector::Selector;
use crate::manifest::FieldProblem;
use crate::services::L4Proto;

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Normalized {
    /// Which pods of the policy's namespace it applies to (matched on their full labels).
    pub target: Selector,
    /// `Some` when the policy isolates ingress: its rules (possibly none: deny all).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates egress.
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `spec.ingress[i]` or `spec.egress[i]`.
    pub path: String,
    /// `None`: every peer (the field is absent or empty). `Some(empty)`: no peer (only
    /// IPv6 blocks, which never match IPv4 traffic).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<Port>>,
}

#[derive(Clone, Debug)]
pub enum Peer {
    /// Pods: `pods` in the namespaces `namespaces` selects, or in the policy's own
    /// namespace when `namespaces` is `None`; `pods: None` is every pod there.
    Pods {
        path: String,
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    /// An IPv4 ipBlock.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    /// Every port of one protocol (`port` absent).
    AllPorts(L4Proto),
    /// `port` or `port`..=`endPort`.
    Range {
        proto: L4Proto,
        first: u16,
        last: u16,
    },
    /// A container port name, resolved against the destination pod.
    Named {
        path: String,
        proto: L4Proto,
        name: String,
    },
}

/// The result of normalizing one policy.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `None` only when the policy's own `podSelector` is unusable (nothing to enforce on).
    pub policy: Option<Normalized>,
    pub problems: Vec<FieldProblem>,
    /// IPv6 ipBlocks, dropped: (field, cidr). They match no IPv4 packet.
    pub ipv6_blocks: Vec<(String, String)>,
    /// The policy has problems and was reduced to isolation without allows.
    pub isolated_for_problems: bool,
}

/// Validates `np`; see [`Outcome`].
pub fn normalize(np: &NetworkPolicy) -> Outcome {
    let mut out = Outcome::default();
    let Some(spec) = &np.spec else {
        out.problems.push(FieldProblem::new("spec", "required"));
        return out;
    };
    let target = match Selector::new(
        spec.pod_selector.as_ref().unwrap_or(&Default::default()),
        "spec.podSelector",
    ) {
        Ok(s) => Some(s),
        Err(ps) => {
            out.problems.extend(
                ps.into_iter()
                    .map(|p| FieldProblem::new(p.field, p.message)),
            );
            None
        }
    };
    let mut types_ok = true;
    let (mut ingress_on, mut egress_on) = (false, false);
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    other => {
                        types_ok = false;
                        out.problems.push(FieldProblem::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?}: supported values: \"Ingress\", \"Egress\""),
                        ));
                    }
                }
            }
        }
        _ => {
            ingress_on = true;
            egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    if !types_ok {
        // Which directions the author meant is unknown: isolate both.
        ingress_on = true;
        egress_on = true;
    }
    let ingress = rules(
        spec.ingress.as_ref().map(|v| {
            v.iter()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        }),
        "ingress",
        "from",
        &mut out,
    );
    let egress = rules(
        spec.egress.as_ref().map(|v| {
            v.iter()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        }),
        "egress",
        "to",
        &mut out,
    );
    let Some(target) = target else {
        return out;
    };
    out.isolated_for_problems = !out.problems.is_empty();
    let keep =
        |on: bool, rules: Vec<Rule>, bad: bool| on.then(|| if bad { Vec::new() } else { rules });
    out.policy = Some(Normalized {
        target,
        ingress: keep(ingress_on, ingress, out.isolated_for_problems),
        egress: keep(egress_on, egress, out.isolated_for_problems),
    });
    out
}

fn normalize_peer(peer: &NetworkPolicyPeer, path: &str, out: &mut Outcome) -> Option<Peer> {
    let has_sel = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, has_sel) {
        (Some(_), true) => {
            out.problems.push(FieldProblem::new(
                path,
                "may not specify both ipBlock and another peer",
            ));
            None
        }
        (None, false) => {
            out.problems.push(FieldProblem::new(
                path,
                "must specify a peer: podSelector, namespaceSelector or ipBlock",
            ));
            None
        }
        (None, true) => {
            let mut sel = |s: &Option<_>, field: &str| {
                s.as_ref().and_then(|s| {
                    Selector::new(s, &format!("{path}.{field}"))
                        .map_err(|ps| {
                            out.problems.extend(
                                ps.into_iter()
                                    .map(|p| FieldProblem::new(p.field, p.message)),
                            )
                        })
                        .ok()
                })
            };
            let pods = sel(&peer.pod_selector, "podSelector");
            let namespaces = sel(&peer.namespace_selector, "namespaceSelector");
            Some(Peer::Pods {
                path: path.to_string(),
                namespaces,
                pods,
            })
        }
        (Some(b), false) => {
            let cidr_path = format!("{path}.ipBlock.cidr");
            let cidr = match b.cidr.parse::<IpNet>() {
                Ok(IpNet::V4(n)) => n.trunc(),
                Ok(IpNet::V6(_)) => {
                    out.ipv6_blocks.push((cidr_path, b.cidr.clone()));
                    return None;
                }
                Err(_) => {
                    out.problems.push(FieldProblem::new(
                        cidr_path,
                        format!("invalid value {:?}: must be a valid CIDR", b.cidr),
                    ));
                    return None;
                }
            };
            let mut except = Vec::new();
            for (i, e) in b.except.iter().flatten().enumerate() {
                let p = format!("{path}.ipBlock.except[{i}]");
                match e.parse::<IpNet>() {
                    Ok(IpNet::V4(n)) if cidr.contains(&n.trunc()) => except.push(n.trunc()),
                    Ok(_) => out.problems.push(FieldProblem::new(
                        p,
                        format!(
                            "invalid value {e:?}: must be a strict subset of `cidr` {}",
                            b.cidr
                        ),
                    )),
                    Err(_) => out.problems.push(FieldProblem::new(
                        p,
                        format!("invalid value {e:?}: must be a valid CIDR"),
                    )),
                }
            }
            Some(Peer::Block { cidr, except })
        }
    }
}

type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn rules(
    list: Option<Vec<RawRule<'_>>>,
    dir: &str,
    peer_field: &str,
    out: &mut Outcome,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, (peers, ports)) in list.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.{dir}[{i}]");
        let peers = peers.filter(|p| !p.is_empty()).map(|p| {
            p.iter()
                .enumerate()
                .filter_map(|(j, peer)| {
                    normalize_peer(peer, &format!("{path}.{peer_field}[{j}]"), out)
                })
                .collect()
        });
        let ports = ports.filter(|p| !p.is_empty()).map(|p| {
            p.iter()
                .enumerate()
                .filter_map(|(j, port)| normalize_port(port, &format!("{path}.ports[{j}]"), out))
                .collect()
        });
        rules.push(Rule { path, peers, ports });
    }
    rules
}

/// Whether `s` is a valid IANA service name (a named port): 1-15 lowercase letters, digits
/// and '-', at least one letter, no '-' at either end or twice in a row.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn normalize_port(p: &NetworkPolicyPort, path: &str, out: &mut Outcome) -> Option<Port> {
    let proto = match parse_protocol(p.protocol.as_deref()) {
        Ok(x) => x,
        Err(m) => {
            out.problems
                .push(FieldProblem::new(format!("{path}.protocol"), m));
            return None;
        }
    };
    let in_range = |n: i32| (1..=65535).contains(&n);
    match (&p.port, p.end_port) {
        (None, None) => Some(Port::AllPorts(proto)),
        (None, Some(_)) => {
            out.problems.push(FieldProblem::new(
                format!("{path}.endPort"),
                "may not be specified when `port` is not specified",
            ));
            None
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                out.problems.push(FieldProblem::new(
                    format!("{path}.endPort"),
                    "may not be specified when `port` is non-numeric",
                ));
                return None;
            }
            if !is_port_name(name) {
                out.problems.push(FieldProblem::new(
                    format!("{path}.port"),
                    format!("invalid value {name:?}: must be a port number or a valid port name (IANA_SVC_NAME)"),
                ));
                return None;
            }
            Some(Port::Named {
                path: format!("{path}.port"),
                proto,
                name: name.clone(),
            })
        }
        (Some(IntOrString::Int(n)), end) => {
            if !in_range(*n) {
                out.problems.push(FieldProblem::new(
                    format!("{path}.port"),
                    format!("invalid value {n}: must be between 1 and 65535, inclusive"),
                ));
                return None;
            }
            let last = match end {
                None => *n,
                Some(e) if in_range(e) && e >= *n => e,
                Some(e) => {
                    out.problems.push(FieldProblem::new(
                        format!("{path}.endPort"),
                        format!(
                            "invalid value {e}: must be between `port` ({n}) and 65535, inclusive"
                        ),
                    ));
                    return None;
                }
            };
            Some(Port::Range {
                proto,
                first: *n as u16,
                last: last as u16,
            })
        }
    }
}

/// Validates a NetworkPolicy as the API server would (every problem, with its field path).
pub fn validate(np: &NetworkPolicy) -> Result<(), Vec<FieldProblem>> {
    let out = normalize(np);
    if out.problems.is_empty() {
        Ok(())
    } else {
        Err(out.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn policy_types_default() {
        // Ingress always; Egress only with egress rules (an empty list is none).
        let o = normalize(&np(json!({"podSelector": {}})));
        let p = o.policy.unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = normalize(&np(json!({"podSelector": {}, "egress": []})))
            .policy
            .unwrap();
        assert!(p.egress.is_none());
        let p = normalize(&np(json!({"podSelector": {}, "egress": [{}]})))
            .policy
            .unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // Explicit types win; rules of a direction not listed are ignored.
        let p = normalize(&np(json!({"podSelector": {}, "policyTypes": ["Egress"],
            "ingress": [{}]})))
        .policy
        .unwrap();
        assert!(p.ingress.is_none() && p.egress.as_ref().is_some_and(Vec::is_empty));
    }

    #[test]
    fn empty_lists_mean_everything() {
        let p = normalize(&np(json!({"podSelector": {},
            "ingress": [{"from": [], "ports": []}, {}]})))
        .policy
        .unwrap();
        let rules = p.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.peers.is_none() && r.ports.is_none()));
    }

    #[test]
    fn ports_default_to_tcp_and_ranges() {
        let p = normalize(&np(json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80}, {"protocol": "UDP"}, {"port": 8000, "endPort": 8080, "protocol": "SCTP"},
            {"port": "http"}]}]})))
        .policy
        .unwrap();
        let ports = p.ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(
            ports,
            vec![
                Port::Range {
                    proto: L4Proto::Tcp,
                    first: 80,
                    last: 80
                },
                Port::AllPorts(L4Proto::Udp),
                Port::Range {
                    proto: L4Proto::Sctp,
                    first: 8000,
                    last: 8080
                },
                Port::Named {
                    path: "spec.ingress[0].ports[3].port".into(),
                    proto: L4Proto::Tcp,
                    name: "http".into()
                },
            ]
        );
    }

    #[test]
    fn problems_name_fields_and_isolate() {
        let o = normalize(&np(json!({"podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/24", "bad"]}},
            {"ipBlock": {"cidr": "10.0.0.0/33"}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            {}
        ], "ports": [
            {"port": 0}, {"port": 90, "endPort": 80}, {"port": "http", "endPort": 90},
            {"endPort": 90}, {"port": "80"}, {"protocol": "ICMP"}
        ]}]})));
        let fields: Vec<&str> = o.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.ingress[0].from[0].ipBlock.except[0]",
                "spec.ingress[0].from[0].ipBlock.except[1]",
                "spec.ingress[0].from[1].ipBlock.cidr",
                "spec.ingress[0].from[2]",
                "spec.ingress[0].from[3]",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].endPort",
                "spec.ingress[0].ports[2].endPort",
                "spec.ingress[0].ports[3].endPort",
                "spec.ingress[0].ports[4].port",
                "spec.ingress[0].ports[5].protocol",
            ]
        );
        assert!(o.isolated_for_problems);
        let p = o.policy.unwrap();
        assert!(
            p.ingress.unwrap().is_empty(),
            "an invalid policy allows nothing"
        );
        assert!(
            validate(&np(json!({"podSelector": {}, "policyTypes": ["Sideways"]}))).unwrap_err()[0]
                .path
                .contains("policyTypes[0]")
        );
    }

    #[test]
    fn ipv6_blocks_match_nothing() {
        let o = normalize(&np(json!({"podSelector": {}, "egress": [{"to": [
            {"ipBlock": {"cidr": "fd00::/8"}}]}]})));
        assert_eq!(o.ipv6_blocks.len(), 1);
        let rules = o.policy.unwrap().egress.unwrap();
        // Not "every peer": the rule's only peer can never match.
        assert_eq!(rules[0].peers.as_ref().map(Vec::len), Some(0));
    }

    #[test]
    fn port_names() {
        for ok in ["http", "serve-80-tcp", "a1"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in ["", "80", "-a", "a-", "a--b", "Http", "abcdefghijklmnop"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}
