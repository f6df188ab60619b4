//! Node IPAM (upstream's node-ipam-controller, range allocator): gives every node without
//! `spec.podCIDR` a `/node_mask` block of the lab's pod CIDR, never one that overlaps a
//! block already in use.
//!
//! A lab node whose own block ([`LabLayout::node_pod_cidr`]) is free gets that block, so
//! the API and the lab's layout agree whatever order nodes register in; any other node
//! gets the first free block in address order.

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use fibril_core::lab::LabLayout;

use super::{is_not_found, ControllerError};

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The block to give a node: `preferred` if it is a block of the pool and free, else
/// the first free `/mask` block of `pool`; `None` when the pool is exhausted.
pub fn allocate_block(
    pool: Ipv4Net,
    mask: u8,
    in_use: &[Ipv4Net],
    preferred: Option<Ipv4Net>,
) -> Option<Ipv4Net> {
    let free = |b: &Ipv4Net| !in_use.iter().any(|u| overlaps(u, b));
    if let Some(p) = preferred {
        if p.prefix_len() == mask && pool.contains(&p) && p == p.trunc() && free(&p) {
            return Some(p);
        }
    }
    pool.subnets(mask).ok()?.find(free)
}

/// The IPv4 pod CIDRs a node already holds.
pub fn node_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Net> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.as_ref())
        .filter_map(|c| c.parse().ok())
        .collect();
    out.dedup();
    out
}

/// One pass: allocate a block to every node that lacks one.
pub async fn reconcile(client: Client, layout: LabLayout) -> Result<(), ControllerError> {
    let api: Api<Node> = Api::all(client);
    let nodes = api
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::list("nodes"))?
        .items;
    let mut in_use: Vec<Ipv4Net> = nodes.iter().flat_map(node_cidrs).collect();
    let mut todo: Vec<&Node> = nodes
        .iter()
        .filter(|n| node_cidrs(n).is_empty() && n.metadata.deletion_timestamp.is_none())
        .collect();
    // Lab nodes in index order, then anything else by name.
    todo.sort_by_key(|n| {
        let name = n.metadata.name.clone().unwrap_or_default();
        (layout.node_index(&name).unwrap_or(u8::MAX), name)
    });
    for node in todo {
        let name = node.metadata.name.clone().unwrap_or_default();
        let preferred = layout
            .node_index(&name)
            .and_then(|i| layout.node_pod_cidr(i));
        let Some(block) = allocate_block(
            layout.spec.pod_cidr,
            layout.spec.node_mask,
            &in_use,
            preferred,
        ) else {
            tracing::warn!(
                node = %name,
                "CIDRNotAvailable: no free /{} block left in {}",
                layout.spec.node_mask,
                layout.spec.pod_cidr
            );
            continue;
        };
        let patch =
            json!({"spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => tracing::info!(node = %name, cidr = %block, "allocated pod CIDR"),
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(ControllerError::api("patch", "node", name)(e)),
        }
        in_use.push(block);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_free_block_in_order() {
        let pool = net("10.244.0.0/16");
        assert_eq!(
            allocate_block(pool, 24, &[], None),
            Some(net("10.244.0.0/24"))
        );
        let used = [net("10.244.0.0/24"), net("10.244.2.0/24")];
        assert_eq!(
            allocate_block(pool, 24, &used, None),
            Some(net("10.244.1.0/24"))
        );
    }

    #[test]
    fn never_overlaps_a_block_in_use_even_of_another_size() {
        let pool = net("10.244.0.0/16");
        // A node that was given a /23 by hand covers two /24 blocks.
        let used = [net("10.244.0.0/23")];
        assert_eq!(
            allocate_block(pool, 24, &used, None),
            Some(net("10.244.2.0/24"))
        );
        // A preferred block that is taken is not handed out again.
        assert_eq!(
            allocate_block(pool, 24, &used, Some(net("10.244.1.0/24"))),
            Some(net("10.244.2.0/24"))
        );
    }

    #[test]
    fn prefers_the_lab_block_when_free() {
        let pool = net("10.244.0.0/16");
        assert_eq!(
            allocate_block(pool, 24, &[], Some(net("10.244.2.0/24"))),
            Some(net("10.244.2.0/24"))
        );
        // Outside the pool or the wrong size: ignored.
        assert_eq!(
            allocate_block(pool, 24, &[], Some(net("10.245.0.0/24"))),
            Some(net("10.244.0.0/24"))
        );
        assert_eq!(
            allocate_block(pool, 24, &[], Some(net("10.244.4.0/23"))),
            Some(net("10.244.0.0/24"))
        );
    }

    #[test]
    fn exhausted_pool_gives_none() {
        let pool = net("10.244.0.0/23");
        let used = [net("10.244.0.0/24"), net("10.244.1.0/24")];
        assert_eq!(allocate_block(pool, 24, &used, None), None);
    }
}
