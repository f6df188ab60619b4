//! Overlap checks: is a pod range safe to use on this node?
//!
//! Seed 000: a cluster pool of 10.0.0.0/8 worked for eight months, until node churn handed out
//! a block that covered the firewall subnet. The node's route for that block captured replies
//! meant for the firewall and blackholed them. A pod range must therefore not overlap anything
//! the node already reaches or that the cluster already uses: the node's routes, its interface
//! subnets, the Service range and the ranges the operator declared reserved.
//!
//! The caller (the agent) gathers the node's state with netlink and hands it over as plain data
//! ([`RouteInfo`], [`NodeSubnet`]); this module only compares ranges.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidr::Span;

use super::error::IpamError;
use super::types::{NodeName, ServiceCidr};

/// One route of the node's routing table, as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// The destination.
    pub dst: IpNet,
    /// The gateway, if the route has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// The output device, if the route has one (blackhole and unreachable routes have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// fibril installed it itself: a pod route to this node's block or to a peer node's block
    /// (autoDirectNodeRoutes), or the tunnel route for the pool. Such routes are meant to lie
    /// inside the pool and the agent reconciles them, so they are not foreign claims on the
    /// address space.
    #[serde(default)]
    pub owned_by_fibril: bool,
}

impl RouteInfo {
    /// A route to `dst` that fibril did not install.
    pub fn new(dst: IpNet) -> RouteInfo {
        RouteInfo {
            dst,
            via: None,
            dev: None,
            owned_by_fibril: false,
        }
    }

    /// Sets the gateway.
    pub fn via(mut self, via: IpAddr) -> RouteInfo {
        self.via = Some(via);
        self
    }

    /// Sets the output device.
    pub fn dev(mut self, dev: impl Into<String>) -> RouteInfo {
        self.dev = Some(dev.into());
        self
    }

    /// Marks the route as installed by fibril.
    pub fn owned_by_fibril(mut self) -> RouteInfo {
        self.owned_by_fibril = true;
        self
    }

    /// The default route claims no range in particular: it is where traffic goes when nothing
    /// more specific matches. Every pod route is more specific, so it never takes traffic from
    /// the default route's destinations that are elsewhere, which is the harm an overlap does.
    /// Counting it would refuse every pool on every node.
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
}

/// `10.0.64.0/24 via 172.18.0.1 dev eth0`, as `ip route` prints it.
impl fmt::Display for RouteInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        Ok(())
    }
}

/// One address on one of the node's interfaces, with its prefix (`172.18.0.10/16`): the node
/// is directly attached to the subnet it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSubnet {
    /// The interface address with its prefix length.
    pub addr: IpNet,
    /// The interface.
    pub dev: String,
    /// fibril assigned it itself (the pod gateway address on fibril's host device), so it lies
    /// inside the node's own block by design.
    #[serde(default)]
    pub owned_by_fibril: bool,
}

impl NodeSubnet {
    /// An address fibril did not assign.
    pub fn new(addr: IpNet, dev: impl Into<String>) -> NodeSubnet {
        NodeSubnet {
            addr,
            dev: dev.into(),
            owned_by_fibril: false,
        }
    }

    /// The subnet the address selects.
    pub fn subnet(&self) -> IpNet {
        self.addr.trunc()
    }
}

/// A range the operator declared off-limits (firewalls, VPC subnets, on-prem networks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    /// The range.
    pub cidr: IpNet,
    /// Where it was declared, e.g. `ipam.reservedCidrs[0]`.
    pub origin: String,
}

/// What kind of pod range is being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CandidateKind {
    /// A whole cluster-pool range.
    Pool,
    /// A per-node block cut from the pool.
    Block,
    /// A node's `spec.podCIDR` (kubernetes mode).
    PodCidr,
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CandidateKind::Pool => "pool",
            CandidateKind::Block => "block",
            CandidateKind::PodCidr => "pod CIDR",
        })
    }
}

/// A pod range under check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// What it is.
    pub kind: CandidateKind,
    /// The range.
    pub cidr: IpNet,
}

impl Candidate {
    /// A cluster-pool range.
    pub fn pool(cidr: impl Into<IpNet>) -> Candidate {
        Candidate {
            kind: CandidateKind::Pool,
            cidr: cidr.into(),
        }
    }

    /// A per-node block.
    pub fn block(cidr: impl Into<IpNet>) -> Candidate {
        Candidate {
            kind: CandidateKind::Block,
            cidr: cidr.into(),
        }
    }

    /// A node's `spec.podCIDR`.
    pub fn pod_cidr(cidr: impl Into<IpNet>) -> Candidate {
        Candidate {
            kind: CandidateKind::PodCidr,
            cidr: cidr.into(),
        }
    }
}

/// `pool 10.0.0.0/8`.
impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.cidr)
    }
}

/// The range a candidate overlaps, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum OverlapSource {
    /// A route in the node's routing table.
    Route {
        /// The node whose table holds it.
        node: NodeName,
        /// The route.
        route: RouteInfo,
    },
    /// A subnet one of the node's interfaces is attached to.
    NodeSubnet {
        /// The node.
        node: NodeName,
        /// The interface address.
        subnet: NodeSubnet,
    },
    /// The cluster's Service range.
    ServiceCidr {
        /// The range.
        cidr: ServiceCidr,
    },
    /// A declared reserved range.
    Reserved(Reserved),
}

impl OverlapSource {
    /// The range itself.
    pub fn range(&self) -> IpNet {
        match self {
            OverlapSource::Route { route, .. } => route.dst,
            OverlapSource::NodeSubnet { subnet, .. } => subnet.subnet(),
            OverlapSource::ServiceCidr { cidr } => cidr.net(),
            OverlapSource::Reserved(r) => r.cidr,
        }
    }
}

/// `route 10.0.64.0/24 via 172.18.0.1 dev eth0 on node lab-node-1`.
impl fmt::Display for OverlapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverlapSource::Route { node, route } => write!(f, "route {route} on node {node}"),
            OverlapSource::NodeSubnet { node, subnet } => write!(
                f,
                "node subnet {} dev {} (address {}) on node {node}",
                subnet.subnet(),
                subnet.dev,
                subnet.addr.addr()
            ),
            OverlapSource::ServiceCidr { cidr } => write!(f, "service CIDR {cidr} (serviceCidr)"),
            OverlapSource::Reserved(r) => write!(f, "reserved range {} ({})", r.cidr, r.origin),
        }
    }
}

/// One overlap: the candidate, and the range it collides with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overlap {
    /// The pod range under check.
    pub candidate: Candidate,
    /// What it overlaps.
    pub source: OverlapSource,
}

/// `pool 10.0.0.0/8 overlaps route 10.0.64.0/24 via 172.18.0.1 dev eth0 on node lab-node-1`.
impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} overlaps {}", self.candidate, self.source)
    }
}

/// Everything a pod range on one node must stay clear of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlapCheck {
    /// The node the routes and subnets belong to.
    pub node: NodeName,
    /// Every route in the node's routing tables.
    pub routes: Vec<RouteInfo>,
    /// Every address on the node's interfaces.
    pub subnets: Vec<NodeSubnet>,
    /// The cluster's Service range.
    pub service_cidr: Option<ServiceCidr>,
    /// Declared reserved ranges.
    pub reserved: Vec<Reserved>,
}

impl OverlapCheck {
    /// Nothing to check against yet.
    pub fn new(node: NodeName) -> OverlapCheck {
        OverlapCheck {
            node,
            routes: Vec::new(),
            subnets: Vec::new(),
            service_cidr: None,
            reserved: Vec::new(),
        }
    }

    /// Every overlap of `candidate`, in order: routes, node subnets, Service range, reserved.
    pub fn check(&self, candidate: Candidate) -> Vec<Overlap> {
        let span = Span::of(&candidate.cidr);
        let hits = |net: &IpNet| span.overlaps(&Span::of(net));
        let mut out = Vec::new();
        for route in &self.routes {
            if route.is_default() || route.owned_by_fibril || !hits(&route.dst) {
                continue;
            }
            // The kernel's connected route for an interface subnet says nothing the subnet does
            // not; it is reported once, as the node subnet.
            let connected = route.via.is_none()
                && self.subnets.iter().any(|s| {
                    s.subnet() == route.dst.trunc() && route.dev.as_deref() == Some(&s.dev)
                });
            if connected {
                continue;
            }
            out.push(Overlap {
                candidate,
                source: OverlapSource::Route {
                    node: self.node.clone(),
                    route: route.clone(),
                },
            });
        }
        for subnet in &self.subnets {
            if subnet.owned_by_fibril || !hits(&subnet.subnet()) {
                continue;
            }
            out.push(Overlap {
                candidate,
                source: OverlapSource::NodeSubnet {
                    node: self.node.clone(),
                    subnet: subnet.clone(),
                },
            });
        }
        if let Some(cidr) = self.service_cidr.filter(|c| hits(&c.net())) {
            out.push(Overlap {
                candidate,
                source: OverlapSource::ServiceCidr { cidr },
            });
        }
        for r in self.reserved.iter().filter(|r| hits(&r.cidr)) {
            out.push(Overlap {
                candidate,
                source: OverlapSource::Reserved(r.clone()),
            });
        }
        out
    }

    /// [`check`](Self::check) as a verdict: a refusal naming every overlap.
    pub fn refuse_overlaps(&self, candidate: Candidate) -> Result<(), IpamError> {
        let overlaps = self.check(candidate);
        if overlaps.is_empty() {
            Ok(())
        } else {
            Err(IpamError::Overlaps { overlaps })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node_ctx() -> OverlapCheck {
        let mut c = OverlapCheck::new("lab-node-1".parse().unwrap());
        c.routes = vec![
            RouteInfo::new(net("0.0.0.0/0"))
                .via("172.18.0.1".parse().unwrap())
                .dev("eth0"),
            RouteInfo::new(net("172.18.0.0/16")).dev("eth0"),
            RouteInfo::new(net("10.0.64.0/24"))
                .via("172.18.0.1".parse().unwrap())
                .dev("eth0"),
            RouteInfo::new(net("10.244.1.0/24"))
                .via("172.18.0.11".parse().unwrap())
                .dev("eth0")
                .owned_by_fibril(),
        ];
        c.subnets = vec![
            NodeSubnet::new(net("172.18.0.10/16"), "eth0"),
            NodeSubnet {
                addr: net("10.244.0.1/32"),
                dev: "fibril_host".into(),
                owned_by_fibril: true,
            },
        ];
        c.service_cidr = Some("10.96.0.0/12".parse().unwrap());
        c.reserved = vec![Reserved {
            cidr: net("192.168.50.0/24"),
            origin: "ipam.reservedCidrs[0]".into(),
        }];
        c
    }

    #[test]
    fn default_route_and_fibril_routes_do_not_count() {
        let c = node_ctx();
        assert!(c.check(Candidate::pool(net("10.244.0.0/16"))).is_empty());
        assert!(c.check(Candidate::block(net("10.244.1.0/24"))).is_empty());
        assert!(c.check(Candidate::block(net("10.244.0.0/24"))).is_empty());
    }

    #[test]
    fn every_overlap_is_named_with_its_origin() {
        let c = node_ctx();
        let got: Vec<String> = c
            .check(Candidate::pool(net("0.0.0.0/1")))
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "pool 0.0.0.0/1 overlaps route 10.0.64.0/24 via 172.18.0.1 dev eth0 on node lab-node-1",
                "pool 0.0.0.0/1 overlaps service CIDR 10.96.0.0/12 (serviceCidr)",
            ]
        );
        let got: Vec<String> = c
            .check(Candidate::pool(net("128.0.0.0/1")))
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "pool 128.0.0.0/1 overlaps node subnet 172.18.0.0/16 dev eth0 (address 172.18.0.10) on node lab-node-1",
                "pool 128.0.0.0/1 overlaps reserved range 192.168.50.0/24 (ipam.reservedCidrs[0])",
            ]
        );
    }

    #[test]
    fn a_connected_route_without_its_address_still_counts() {
        let mut c = node_ctx();
        c.subnets.clear();
        let got = c.check(Candidate::block(net("172.18.5.0/24")));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].to_string(),
            "block 172.18.5.0/24 overlaps route 172.18.0.0/16 dev eth0 on node lab-node-1"
        );
    }

    #[test]
    fn families_never_overlap() {
        let c = node_ctx();
        assert!(c.check(Candidate::pool(net("::/1"))).is_empty());
        let mut c6 = c.clone();
        c6.routes.push(RouteInfo::new(net("::/0")).dev("eth0"));
        c6.routes
            .push(RouteInfo::new(net("fd00:64::/64")).dev("eth1"));
        let got = c6.check(Candidate::pool(net("fd00::/16")));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].source.range(), net("fd00:64::/64"));
    }

    #[test]
    fn refusal_lists_every_overlap() {
        let c = node_ctx();
        let e = c
            .refuse_overlaps(Candidate::pool(net("0.0.0.0/1")))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("10.0.64.0/24"), "{text}");
        assert!(text.contains("10.96.0.0/12"), "{text}");
        assert!(text.contains("0.0.0.0/1"), "{text}");
        assert!(c
            .refuse_overlaps(Candidate::pool(net("10.244.0.0/16")))
            .is_ok());
    }
}
