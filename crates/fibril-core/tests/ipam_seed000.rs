//! Seed 000 reproduced on a lab node's view: a 10.0.0.0/8 pool with a firewall subnet routed
//! in the node, and a pool that swallows the fabric subnet. fibril refuses both, naming both
//! ranges, at every level: config, pool acceptance, block claiming and kubernetes mode.

use std::net::IpAddr;

use fibril_core::agent_config::AgentConfig;
use fibril_core::ipam::{
    check_node_pod_cidr, ClusterPool, IpamError, NodeName, NodeSubnet, OverlapCheck, PoolState,
    RouteInfo,
};
use fibril_core::lab::LabSpec;
use ipnet::IpNet;

const FIREWALL: &str = "10.0.64.0/24";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// lab-node-1 as netlink shows it: the default route and the connected fabric route, a route
/// to the firewall subnet behind the fabric router, and its fabric and loopback addresses.
fn lab_node_1() -> OverlapCheck {
    let spec = LabSpec {
        name: "lab".parse().unwrap(),
        ..LabSpec::default()
    };
    let layout = spec.layout();
    let gw = IpAddr::V4(layout.fabric_gateway());
    let node: NodeName = layout.node_name(1).parse().unwrap();
    assert_eq!(node.as_str(), "lab-node-1");
    let mut c = OverlapCheck::new(node);
    c.routes = vec![
        RouteInfo::new(net("0.0.0.0/0")).via(gw).dev("eth0"),
        RouteInfo::new(IpNet::V4(spec.fabric_cidr)).dev("eth0"),
        RouteInfo::new(net(FIREWALL)).via(gw).dev("eth0"),
    ];
    c.subnets = vec![
        NodeSubnet::new(
            IpNet::new(IpAddr::V4(layout.node_ip(1)), spec.fabric_cidr.prefix_len()).unwrap(),
            "eth0",
        ),
        NodeSubnet::new(net("127.0.0.1/8"), "lo"),
    ];
    c.service_cidr = Some(IpNet::V4(spec.service_cidr).try_into().unwrap());
    c
}

fn overlaps_of(e: IpamError) -> Vec<String> {
    match e {
        IpamError::Overlaps { overlaps } => overlaps.iter().map(|o| o.to_string()).collect(),
        other => panic!("expected an overlap refusal, got {other}"),
    }
}

#[test]
fn pool_overlapping_a_routed_firewall_subnet_is_refused_naming_both_ranges() {
    let pool = ClusterPool::new(vec!["10.0.0.0/8".parse().unwrap()], 24).unwrap();
    let e = pool.refuse_overlaps(&lab_node_1()).unwrap_err();
    let text = e.to_string();
    // The lab's Service range lies in 10.0.0.0/8 too: every overlap is named.
    assert_eq!(
        overlaps_of(e),
        [
            "pool 10.0.0.0/8 overlaps route 10.0.64.0/24 via 172.18.0.1 dev eth0 on node lab-node-1",
            "pool 10.0.0.0/8 overlaps service CIDR 10.96.0.0/16 (serviceCidr)",
        ]
    );
    assert!(
        text.starts_with("refused: pool 10.0.0.0/8 overlaps route 10.0.64.0/24"),
        "{text}"
    );
    assert!(text.contains("seed 000"), "{text}");
}

#[test]
fn pool_overlapping_the_fabric_subnet_is_refused_the_same_way() {
    let pool = ClusterPool::new(vec!["172.16.0.0/12".parse().unwrap()], 24).unwrap();
    let e = pool.refuse_overlaps(&lab_node_1()).unwrap_err();
    assert_eq!(
        overlaps_of(e),
        [
            "pool 172.16.0.0/12 overlaps node subnet 172.18.0.0/16 dev eth0 (address 172.18.0.11) \
          on node lab-node-1"
        ]
    );
}

#[test]
fn a_clear_pool_is_accepted() {
    let pool = ClusterPool::new(vec!["10.244.0.0/16".parse().unwrap()], 24).unwrap();
    assert!(pool.refuse_overlaps(&lab_node_1()).is_ok());
}

/// The eight-month fuse: even if the pool were taken as it is, no amount of node churn ever
/// hands out the firewall's block, and every claim that walks past it says why.
#[test]
fn churn_never_hands_out_the_firewall_block() {
    let pool = ClusterPool::new(vec!["10.0.0.0/8".parse().unwrap()], 24).unwrap();
    let checks = lab_node_1();
    let mut state = PoolState::default();
    let mut saw_refusal = false;
    for i in 0..200u32 {
        let node: NodeName = format!("churn-{i}").parse().unwrap();
        let claim = pool.claim_block(&state, &node, &checks).unwrap();
        assert_ne!(claim.block.to_string(), FIREWALL);
        if let Some(r) = claim.refused.first() {
            saw_refusal = true;
            assert_eq!(r.first.to_string(), FIREWALL);
            assert_eq!(
                r.overlaps[0].to_string(),
                "block 10.0.64.0/24 overlaps route 10.0.64.0/24 via 172.18.0.1 dev eth0 on \
                 node lab-node-1"
            );
        }
        state = state.apply(claim.update.as_ref().unwrap()).unwrap();
        // Half the fleet is replaced as it grows.
        if i % 2 == 1 {
            let old: NodeName = format!("churn-{}", i / 2).parse().unwrap();
            state = state
                .apply(&state.release_block(&old).unwrap().update)
                .unwrap();
        }
    }
    assert!(saw_refusal, "the churn never reached the firewall's block");
    assert!(state.blocks.keys().all(|b| b.to_string() != FIREWALL));
}

#[test]
fn kubernetes_mode_refuses_a_pod_cidr_on_the_firewall_or_fabric() {
    let checks = lab_node_1();
    let node = checks.node.clone();
    let e = check_node_pod_cidr(&node, Some("10.0.64.0/22"), &checks, None).unwrap_err();
    assert_eq!(
        overlaps_of(e),
        [
            "pod CIDR 10.0.64.0/22 overlaps route 10.0.64.0/24 via 172.18.0.1 dev eth0 on node \
          lab-node-1"
        ]
    );
    let e = check_node_pod_cidr(&node, Some("172.18.128.0/24"), &checks, None).unwrap_err();
    assert_eq!(
        overlaps_of(e),
        [
            "pod CIDR 172.18.128.0/24 overlaps node subnet 172.18.0.0/16 dev eth0 (address \
          172.18.0.11) on node lab-node-1"
        ]
    );
    assert!(check_node_pod_cidr(&node, Some("10.244.1.0/24"), &checks, None).is_ok());
}

#[test]
fn config_refuses_the_pool_when_the_firewall_is_declared_reserved() {
    let e = AgentConfig::from_yaml(
        "nodeName: lab-node-1\nserviceCidr: 192.168.96.0/20\n\
         ipam: {clusterPoolCidrs: [10.0.0.0/8], reservedCidrs: [10.0.64.0/24, 172.18.0.0/16]}\n",
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ipam.clusterPoolCidrs[0]: pool 10.0.0.0/8 overlaps reserved range 10.0.64.0/24 \
         (ipam.reservedCidrs[0])"
    );
}
