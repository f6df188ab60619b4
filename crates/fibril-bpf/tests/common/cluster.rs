//! Test clusters built from namespaces: nodes (a netns with a pin dir and a pod
//! range), pods (a netns with a veth to its node), and the agent's part (load, attach,
//! write the maps, exit).

use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use fibril_bpf::{
    read_endpoint_counters, Datapath, DatapathConfig, Endpoint, Event, EventReader, Identity,
    MacAddr, Remote, RoutingMode,
};
use ipnet::Ipv4Net;

use super::{NetNs, PinDir};

pub const FABRIC_IF: &str = "eth0";
pub const VXLAN_IF: &str = "vx0";
pub const VXLAN_PORT: &str = "8472";

/// A pod: its own netns with eth0, a veth to its node.
pub struct Pod {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// The host side of its veth, in the node's netns.
    pub host_if: String,
}

/// A node netns with its pin dir and pod range.
pub struct Node {
    pub ns: NetNs,
    pub pins: PinDir,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
    pub identity: u32,
}

impl Node {
    /// A node with IPv4 forwarding set as asked and rp_filter off, so that its stack
    /// answers the pods' ARP for the gateway (which is on lo), whatever the host's
    /// defaults are.
    pub fn new(tag: &str, ip: Ipv4Addr, cidr: &str, forwarding: bool) -> Self {
        let ns = NetNs::new(tag);
        let fwd = format!("net.ipv4.ip_forward={}", u8::from(forwarding));
        ns.sysctl(&[
            &fwd,
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]);
        let cidr: Ipv4Net = cidr.parse().unwrap();
        let node = Node {
            ns,
            pins: PinDir::new(),
            ip,
            cidr,
            identity: u32::from(cidr.addr().octets()[2]),
        };
        node.ns.ip(&[
            "addr",
            "add",
            &format!("{}/32", node.gateway()),
            "dev",
            "lo",
        ]);
        node
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pins.path.clone()
    }

    /// A pod with address `<cidr>.<host>`/32, routed through the node's gateway.
    pub fn add_pod(&self, tag: &str, host: u8, mtu: Option<&str>) -> Pod {
        let ns = NetNs::new(tag);
        let ip = Ipv4Addr::from(u32::from(self.cidr.network()) + u32::from(host));
        let host_if = format!("fibtv{host}");
        self.ns.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        if let Some(mtu) = mtu {
            self.ns.ip(&["link", "set", &host_if, "mtu", mtu]);
            ns.ip(&["link", "set", "eth0", "mtu", mtu]);
        }
        self.ns.ip(&["link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let gw = self.gateway().to_string();
        ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"]);
        Pod { ns, ip, host_if }
    }

    pub fn endpoint_of(&self, pod: &Pod) -> Endpoint {
        Endpoint::Pod {
            ifindex: self.ns.ifindex(&pod.host_if),
            mac: pod.ns.mac("eth0").parse().unwrap(),
            node_mac: self.ns.mac(&pod.host_if).parse::<MacAddr>().unwrap(),
            identity: Identity(self.identity * 1000 + u32::from(pod.ip.octets()[3])),
        }
    }

    pub fn remote_entry(&self) -> (Ipv4Net, Remote) {
        (
            self.cidr,
            Remote {
                identity: Identity(self.identity),
                tunnel_endpoint: Some(self.ip),
                ..Remote::default()
            },
        )
    }

    /// What an agent does: load, attach every device, write the maps, exit (dropping
    /// the loader; pins keep it all in place).
    pub fn run_agent(&self, routing: Routing, pods: &[&Pod], nodes: &[&Node]) {
        let config = self.config(routing);
        let mut endpoints: Vec<(Ipv4Addr, Endpoint)> =
            pods.iter().map(|p| (p.ip, self.endpoint_of(p))).collect();
        endpoints.push((
            self.gateway(),
            Endpoint::Host {
                identity: Identity(1),
            },
        ));
        let remotes: Vec<(Ipv4Net, Remote)> = nodes.iter().map(|n| n.remote_entry()).collect();
        let pod_ifs: Vec<String> = pods.iter().map(|p| p.host_if.clone()).collect();
        let pin_dir = self.pin_dir();
        self.ns.enter(move || {
            let mut dp = Datapath::load(&pin_dir, config).expect("load");
            for ifname in &pod_ifs {
                dp.attach_pod(ifname).expect("attach pod");
            }
            if routing != Routing::SameNode {
                dp.attach_underlay(FABRIC_IF).expect("attach underlay");
            }
            if routing == Routing::Tunnel {
                dp.attach_tunnel(VXLAN_IF).expect("attach tunnel");
            }
            for (ip, ep) in &endpoints {
                dp.upsert_endpoint(*ip, ep).expect("endpoint");
            }
            for (prefix, remote) in &remotes {
                dp.upsert_remote(*prefix, remote).expect("remote");
            }
        });
    }

    pub fn config(&self, routing: Routing) -> DatapathConfig {
        DatapathConfig {
            routing: match routing {
                Routing::SameNode | Routing::Native => RoutingMode::Native,
                Routing::Tunnel => RoutingMode::Tunnel {
                    device_ifindex: self.ns.ifindex(VXLAN_IF),
                },
            },
            node_ip: self.ip,
            trace_sample: Some(NonZeroU32::MIN),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        EventReader::open(&self.pins.path)
            .expect("open events")
            .drain()
            .expect("decode events")
    }

    /// What the node's own stack forwarded: the datapath should leave it at 0.
    pub fn kernel_forwarded(&self) -> u64 {
        self.ns.ip_mib("ForwDatagrams")
    }

    pub fn counters(&self, pod: &Pod) -> fibril_bpf::EndpointCounters {
        let ifindex = self.ns.ifindex(&pod.host_if);
        read_endpoint_counters(&self.pins.path)
            .expect("counters")
            .into_iter()
            .find(|c| c.ifindex == ifindex)
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    SameNode,
    Native,
    Tunnel,
}

/// Two nodes joined by a fabric veth (`eth0` in each), 192.168.<net>.1 and .2.
pub fn two_nodes(net: u8, routing: Routing) -> (Node, Node) {
    let forwarding = routing == Routing::Native;
    let n1 = Node::new(
        "a",
        Ipv4Addr::new(192, 168, net, 1),
        &format!("10.{net}.1.0/24"),
        forwarding,
    );
    let n2 = Node::new(
        "b",
        Ipv4Addr::new(192, 168, net, 2),
        &format!("10.{net}.2.0/24"),
        forwarding,
    );
    n1.ns.ip(&[
        "link",
        "add",
        FABRIC_IF,
        "type",
        "veth",
        "peer",
        "name",
        FABRIC_IF,
        "netns",
        &n2.ns.name,
    ]);
    for n in [&n1, &n2] {
        n.ns.ip(&["addr", "add", &format!("{}/24", n.ip), "dev", FABRIC_IF]);
        n.ns.ip(&["link", "set", FABRIC_IF, "up"]);
    }
    match routing {
        Routing::Native => {
            n1.route_pods_of(&n2);
            n2.route_pods_of(&n1);
        }
        Routing::Tunnel => {
            n1.add_vxlan();
            n2.add_vxlan();
        }
        Routing::SameNode => unreachable!("two nodes"),
    }
    (n1, n2)
}

/// Nodes on a bridged fabric, as in the lab: a fabric netns whose bridge joins each
/// node's `eth0` (192.168.<net>.<i>, i from 1) and any number of hosts outside the
/// cluster (the world, other machines on the same L2).
pub struct Fabric {
    pub ns: NetNs,
    pub nodes: Vec<Node>,
    net: u8,
}

const FABRIC_BRIDGE: &str = "br0";

impl Fabric {
    /// `count` nodes with pod ranges 10.<net>.<i>.0/24, routed as `routing` says; IPv4
    /// forwarding on in native mode (the FIB forwards from the pod veths).
    pub fn new(net: u8, routing: Routing, count: u8) -> Self {
        let ns = NetNs::new("f");
        ns.ip(&["link", "add", FABRIC_BRIDGE, "type", "bridge"]);
        ns.ip(&["link", "set", FABRIC_BRIDGE, "up"]);
        let forwarding = routing == Routing::Native;
        let mut nodes = Vec::new();
        for i in 1..=count {
            let node = Node::new(
                &format!("n{i}"),
                Ipv4Addr::new(192, 168, net, i),
                &format!("10.{net}.{i}.0/24"),
                forwarding,
            );
            let port = format!("fibtp{i}");
            ns.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                FABRIC_IF,
                "netns",
                &node.ns.name,
            ]);
            ns.ip(&["link", "set", &port, "master", FABRIC_BRIDGE, "up"]);
            node.ns
                .ip(&["addr", "add", &format!("{}/24", node.ip), "dev", FABRIC_IF]);
            node.ns.ip(&["link", "set", FABRIC_IF, "up"]);
            if routing == Routing::Tunnel {
                node.add_vxlan();
            }
            nodes.push(node);
        }
        if routing == Routing::Native {
            for n in &nodes {
                for other in nodes.iter().filter(|o| o.ip != n.ip) {
                    n.route_pods_of(other);
                }
            }
        }
        Fabric { ns, nodes, net }
    }

    /// A host on the fabric at 192.168.<net>.<host>, outside the cluster: its own netns
    /// with `eth0` on the bridge.
    pub fn add_host(&self, tag: &str, host: u8) -> (NetNs, Ipv4Addr) {
        let ns = NetNs::new(tag);
        let ip = Ipv4Addr::new(192, 168, self.net, host);
        let port = format!("fibth{host}");
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", FABRIC_IF, "netns", &ns.name,
        ]);
        self.ns
            .ip(&["link", "set", &port, "master", FABRIC_BRIDGE, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", FABRIC_IF]);
        ns.ip(&["link", "set", FABRIC_IF, "up"]);
        (ns, ip)
    }

    pub fn node_refs(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }
}

impl Node {
    /// autoDirectNodeRoutes: `other`'s pod CIDR via its IP on the fabric.
    pub fn route_pods_of(&self, other: &Node) {
        self.ns.ip(&[
            "route",
            "add",
            &other.cidr.to_string(),
            "via",
            &other.ip.to_string(),
            "dev",
            FABRIC_IF,
        ]);
    }

    /// The collect_md VXLAN device of tunnel mode.
    pub fn add_vxlan(&self) {
        self.ns.ip(&[
            "link", "add", VXLAN_IF, "type", "vxlan", "external", "dstport", VXLAN_PORT,
        ]);
        self.ns.ip(&["link", "set", VXLAN_IF, "up"]);
    }

    /// What the agent's service controller does: sync the node's table into the pinned
    /// maps (from a fresh handle, as a restarted agent would).
    pub fn sync_services(
        &self,
        table: &fibril_core::services::ServiceTable,
    ) -> fibril_bpf::SyncStats {
        fibril_bpf::ServiceMaps::open(&self.pins.path)
            .expect("open the service maps")
            .sync(table)
            .expect("sync the service table")
    }
}
