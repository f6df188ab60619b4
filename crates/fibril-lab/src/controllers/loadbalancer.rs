//! The lab's load-balancer controller, standing in for a cloud's (or MetalLB's): every
//! Service of type LoadBalancer without a `loadBalancerClass` gets one ingress IP from the
//! lab's pool ([`LabLayout::load_balancer_cidr`]) in `status.loadBalancer.ingress`. The
//! lab's fabric routes that pool to the first node, so the world host reaches a
//! LoadBalancer address the way it would reach a cloud load balancer in front of the
//! nodes; the node's datapath does the rest.
//!
//! An address once given stays with its Service while it is a LoadBalancer; a Service
//! that stops being one loses it. `spec.loadBalancerIP` (deprecated upstream, still
//! honoured by most implementations) is used when it is in the pool and free.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use fibril_core::lab::LabLayout;

use super::{is_not_found, ControllerError};

/// A Service whose `status.loadBalancer.ingress` must change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub namespace: String,
    pub name: String,
    /// The one ingress IP it should have; `None` clears the ingress.
    pub ip: Option<Ipv4Addr>,
}

fn wants_address(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
        && svc.metadata.deletion_timestamp.is_none()
}

/// The IPv4 ingress addresses the Service's status holds.
fn ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect()
}

/// What to write so that every LoadBalancer Service holds one address of `pool`, and no
/// other Service holds one of ours. Older Services are served first, so a conflict
/// (two Services claiming one address) is settled the same way every pass.
pub fn plan(services: &[Service], pool: Ipv4Net) -> Vec<StatusChange> {
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by_key(|s| {
        (
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            s.metadata.namespace.clone(),
            s.metadata.name.clone(),
        )
    });
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = Vec::new();
    let mut pending: Vec<&Service> = Vec::new();
    // First pass: keep what is already held (or asked for) and valid.
    for svc in &order {
        let current = ingress_ips(svc);
        if !wants_address(svc) {
            if current.iter().any(|ip| pool.contains(ip)) {
                out.push(change(svc, None));
            }
            continue;
        }
        let requested = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_ref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let keep = current
            .iter()
            .copied()
            .chain(requested)
            .find(|ip| pool.contains(ip) && !taken.contains(ip));
        match keep {
            Some(ip) => {
                taken.insert(ip);
                if current != [ip] {
                    out.push(change(svc, Some(ip)));
                }
            }
            None => pending.push(svc),
        }
    }
    // Then new addresses, lowest first.
    let mut free = pool.hosts().filter(|ip| !taken.contains(ip));
    for svc in pending {
        match free.next() {
            Some(ip) => out.push(change(svc, Some(ip))),
            None => tracing::warn!(
                service = %format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or(""),
                    svc.metadata.name.as_deref().unwrap_or("")),
                %pool,
                "the lab's LoadBalancer pool is exhausted"
            ),
        }
    }
    out
}

fn change(svc: &Service, ip: Option<Ipv4Addr>) -> StatusChange {
    StatusChange {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        ip,
    }
}

/// One pass over every Service.
pub async fn reconcile(client: Client, layout: LabLayout) -> Result<(), ControllerError> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("services"))?
        .items;
    for c in plan(&services, layout.load_balancer_cidr()) {
        let api: Api<Service> = Api::namespaced(client.clone(), &c.namespace);
        let ingress = match c.ip {
            Some(ip) => json!([{"ip": ip.to_string(), "ipMode": "VIP"}]),
            None => json!(null),
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        match api
            .patch_status(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %format!("{}/{}", c.namespace, c.name), ip = ?c.ip, "load balancer address")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(ControllerError::api("update status of", "service", c.name)(
                    e,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ty: &str, created: &str, status_ip: Option<&str>) -> Service {
        let ingress: Vec<_> = status_ip.into_iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"type": ty},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn pool() -> Ipv4Net {
        "198.51.100.128/30".parse().unwrap()
    }

    fn ip(s: &str) -> Option<Ipv4Addr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn new_load_balancers_get_free_addresses_oldest_first() {
        let a = svc("a", "LoadBalancer", "2024-01-02T00:00:00Z", None);
        let b = svc("b", "LoadBalancer", "2024-01-01T00:00:00Z", None);
        let c = svc("c", "ClusterIP", "2024-01-01T00:00:00Z", None);
        let p = plan(&[a, b, c], pool());
        let got: Vec<(&str, Option<Ipv4Addr>)> =
            p.iter().map(|c| (c.name.as_str(), c.ip)).collect();
        assert_eq!(
            got,
            [("b", ip("198.51.100.129")), ("a", ip("198.51.100.130"))]
        );
    }

    #[test]
    fn held_addresses_stay_and_nothing_is_written_twice() {
        let a = svc(
            "a",
            "LoadBalancer",
            "2024-01-02T00:00:00Z",
            Some("198.51.100.130"),
        );
        let b = svc("b", "LoadBalancer", "2024-01-03T00:00:00Z", None);
        let p = plan(&[a.clone(), b], pool());
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].name.as_str(), p[0].ip), ("b", ip("198.51.100.129")));
        assert!(plan(&[a], pool()).is_empty());
    }

    #[test]
    fn conflicts_exhaustion_requests_and_type_changes() {
        // Two Services claim one address: the older keeps it.
        let a = svc(
            "a",
            "LoadBalancer",
            "2024-01-01T00:00:00Z",
            Some("198.51.100.129"),
        );
        let b = svc(
            "b",
            "LoadBalancer",
            "2024-01-02T00:00:00Z",
            Some("198.51.100.129"),
        );
        let p = plan(&[b, a.clone()], pool());
        assert_eq!(
            p,
            [change(
                &svc("b", "", "2024-01-01T00:00:00Z", None),
                ip("198.51.100.130")
            )]
        );
        // A Service that is no longer a LoadBalancer loses its address.
        let gone = svc(
            "g",
            "ClusterIP",
            "2024-01-01T00:00:00Z",
            Some("198.51.100.129"),
        );
        assert_eq!(plan(&[gone], pool())[0].ip, None);
        // An address outside the pool (another controller's) is left alone on others.
        let foreign = svc("f", "ClusterIP", "2024-01-01T00:00:00Z", Some("192.0.2.1"));
        assert!(plan(&[foreign], pool()).is_empty());
        // spec.loadBalancerIP in the pool is honoured.
        let mut r = svc("r", "LoadBalancer", "2024-01-01T00:00:00Z", None);
        r.spec.as_mut().unwrap().load_balancer_ip = Some("198.51.100.130".into());
        assert_eq!(plan(&[r], pool())[0].ip, ip("198.51.100.130"));
        // A /30 has two hosts: the third Service waits.
        let many: Vec<Service> = (0..3)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    "LoadBalancer",
                    "2024-01-01T00:00:00Z",
                    None,
                )
            })
            .collect();
        assert_eq!(plan(&many, pool()).len(), 2);
        // A class of another implementation is not ours.
        let mut other = svc("o", "LoadBalancer", "2024-01-01T00:00:00Z", None);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert!(plan(&[other], pool()).is_empty());
    }
}
