//! The lab's node agent for `--cni bridge`: what kindnet does for kind.
//!
//! It runs in a node's network namespace and
//! - writes the node's bridge + host-local conflist once the node has a pod CIDR (the
//!   kubelet reports NetworkReady only after that, as containerd does);
//! - keeps a route to every other node's pod CIDR via that node's InternalIP;
//! - attaches fibril's per-endpoint packet counters (BPF, tc) to every pod veth on the
//!   node's bridge, with the maps pinned under `/sys/fs/bpf/fibril/<node>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt as _};

use fibril_core::consts;
use fibril_core::lab::LabLayout;

use crate::lab::write_atomic;

/// The conflist for a node's pod CIDR: Debian's bridge + host-local, plus portmap-free
/// defaults. host-local keeps its reservations in the node's own state dir.
pub fn bridge_conflist(layout: &LabLayout, node: &str, pod_cidr: Ipv4Net) -> serde_json::Value {
    let gateway = Ipv4Addr::from(u32::from(pod_cidr.network()) + 1);
    serde_json::json!({
        "cniVersion": consts::CNI_SPEC_VERSION,
        "name": consts::BRIDGE_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": consts::BRIDGE_CNI_DEVICE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr.to_string(), "gateway": gateway.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": layout.node_cni_state_dir(node).join("host-local"),
                }
            }
        ]
    })
}

pub const BRIDGE_CONFLIST_FILE: &str = "10-fibril-lab-bridge.conflist";

#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeRoute {
    pod_cidr: Ipv4Net,
    via: Ipv4Addr,
}

fn node_route(n: &Node) -> Option<NodeRoute> {
    let pod_cidr = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let via = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some(NodeRoute { pod_cidr, via })
}

pub async fn run(client: kube::Client, layout: LabLayout, node: String) -> anyhow::Result<()> {
    let netns = fibril_netlink::NetNs::open(&node)
        .with_context(|| format!("opening the node netns {node}"))?;
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store::<Node>();
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        // The watcher retries with back-off; its errors are reported, never fatal.
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "node watch");
            }
        });
    let watch_task = tokio::spawn(stream);

    let pin_dir = layout.node_bpf_pin_dir(&node);
    let mut counters = fibril_bpf::PodCounters::load(&pin_dir).with_context(|| {
        format!(
            "loading the endpoint counters (pins in {})",
            pin_dir.display()
        )
    })?;
    tracing::info!(pins = %pin_dir.display(), "endpoint counters loaded");

    let mut written_cidr: Option<Ipv4Net> = None;
    let mut installed: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    let mut attached: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if watch_task.is_finished() {
            anyhow::bail!("the node watch ended");
        }
        let state = reader.state();
        // Netlink and BPF calls below block briefly; keep them off the async workers.
        tokio::task::block_in_place(|| {
            reconcile(
                &layout,
                &node,
                &netns,
                &state,
                &mut counters,
                &mut written_cidr,
                &mut installed,
                &mut attached,
            )
        })?;
    }
}

/// One pass: conflist, routes, counters. Only a failure to write the conflist is fatal.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    layout: &LabLayout,
    node: &str,
    netns: &fibril_netlink::NetNs,
    state: &[std::sync::Arc<Node>],
    counters: &mut fibril_bpf::PodCounters,
    written_cidr: &mut Option<Ipv4Net>,
    installed: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    attached: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    {
        // 1. The conflist, once this node has a pod CIDR.
        if let Some(own) = state
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| node_route(n))
        {
            if *written_cidr != Some(own.pod_cidr) {
                let conf = bridge_conflist(layout, node, own.pod_cidr);
                let dir = layout.node_cni_conf_dir(node);
                let path = dir.join(BRIDGE_CONFLIST_FILE);
                write_atomic(&path, &serde_json::to_vec_pretty(&conf)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), cidr = %own.pod_cidr, "wrote CNI config");
                *written_cidr = Some(own.pod_cidr);
            }
        }
        // 2. Routes to the other nodes' pod CIDRs.
        let want: BTreeMap<Ipv4Net, Ipv4Addr> = state
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(node))
            .filter_map(|n| node_route(n))
            .map(|r| (r.pod_cidr, r.via))
            .collect();
        for (dst, via) in &want {
            if installed.get(dst) != Some(via) {
                let route = fibril_netlink::Route {
                    dst: *dst,
                    via: Some(*via),
                    dev: Some(consts::NODE_UPLINK.to_string()),
                };
                match netns.replace_route(&route) {
                    Ok(()) => {
                        tracing::info!(%dst, %via, "route to node pod CIDR");
                        installed.insert(*dst, *via);
                    }
                    Err(e) => tracing::error!(%dst, %via, error = %e, "cannot install route"),
                }
            }
        }
        let stale: Vec<Ipv4Net> = installed
            .keys()
            .filter(|d| !want.contains_key(d))
            .copied()
            .collect();
        for dst in stale {
            match netns.delete_route(dst) {
                Ok(()) => {
                    tracing::info!(%dst, "removed route of a departed node");
                    installed.remove(&dst);
                }
                Err(e) => tracing::error!(%dst, error = %e, "cannot remove route"),
            }
        }
        // 3. Counters on every pod veth enslaved to the CNI bridge.
        match pod_veths(netns) {
            Ok(veths) => {
                attached.retain(|v| veths.contains(v));
                for v in veths {
                    if attached.contains(&v) {
                        continue;
                    }
                    match counters.attach(&v) {
                        Ok(()) => {
                            tracing::info!(veth = %v, "attached endpoint counters");
                            attached.insert(v);
                        }
                        Err(e) => {
                            tracing::warn!(veth = %v, error = %e, "cannot attach counters yet")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list links"),
        }
    }
    Ok(())
}

/// Host-side pod veths: veth links whose master is the CNI bridge.
fn pod_veths(netns: &fibril_netlink::NetNs) -> anyhow::Result<BTreeSet<String>> {
    let links = netns.links()?;
    let Some(bridge) = links
        .iter()
        .find(|l| l.name == consts::BRIDGE_CNI_DEVICE)
        .map(|l| l.index)
    else {
        return Ok(BTreeSet::new());
    };
    Ok(links
        .into_iter()
        .filter(|l| l.master == Some(bridge) && l.kind.as_deref() == Some("veth"))
        .map(|l| l.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::lab::LabSpec;

    #[test]
    fn conflist_uses_node_cidr_and_private_ipam_dir() {
        let layout = LabSpec::default().layout();
        let c = bridge_conflist(&layout, "fibril-node-2", "10.244.1.0/24".parse().unwrap());
        assert_eq!(c["plugins"][0]["type"], "bridge");
        let ipam = &c["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.244.1.1");
        assert!(ipam["dataDir"]
            .as_str()
            .unwrap()
            .contains("nodes/fibril-node-2/cni/state"));
    }
}
