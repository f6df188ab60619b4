//! kubernetes mode: the node's pod range is `node.spec.podCIDR`, assigned by the controller
//! manager. fibril does not choose it, but it checks it as strictly as its own blocks: the
//! controller manager knows nothing of the node's routes or reserved ranges.

use super::error::IpamError;
use super::overlap::{Candidate, OverlapCheck};
use super::types::{NativeRoutingCidr, NodeName, PodCidr};
use crate::cidr::contains;

/// Validates `node.spec.podCIDR` (`pod_cidr`, as the API returned it) for `node`.
///
/// Refused, in this order: missing; not a CIDR (or with host bits); outside `native` when
/// native routing is on (seed 002: its traffic would be SNATed); overlapping anything in
/// `checks` (seed 000).
pub fn check_node_pod_cidr(
    node: &NodeName,
    pod_cidr: Option<&str>,
    checks: &OverlapCheck,
    native: Option<&NativeRoutingCidr>,
) -> Result<PodCidr, IpamError> {
    let text = pod_cidr
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| IpamError::NoPodCidr { node: node.clone() })?;
    let pod_cidr: PodCidr = text.parse().map_err(|error| IpamError::InvalidPodCidr {
        node: node.clone(),
        error,
    })?;
    if let Some(native) = native {
        if !contains(&native.net(), &pod_cidr.net()) {
            return Err(IpamError::NotNativelyRoutable {
                node: node.clone(),
                pod_cidr,
                native: *native,
            });
        }
    }
    checks.refuse_overlaps(Candidate::pod_cidr(pod_cidr))?;
    Ok(pod_cidr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::overlap::RouteInfo;

    fn node() -> NodeName {
        "lab-node-1".parse().unwrap()
    }

    #[test]
    fn accepts_a_clear_pod_cidr() {
        let c = OverlapCheck::new(node());
        let got = check_node_pod_cidr(&node(), Some("10.244.1.0/24"), &c, None).unwrap();
        assert_eq!(got.to_string(), "10.244.1.0/24");
    }

    #[test]
    fn refuses_missing_invalid_unroutable_and_overlapping() {
        let mut c = OverlapCheck::new(node());
        let e = check_node_pod_cidr(&node(), None, &c, None).unwrap_err();
        assert!(matches!(e, IpamError::NoPodCidr { .. }));
        assert!(e.to_string().contains("lab-node-1"));
        let e = check_node_pod_cidr(&node(), Some("10.244.1.5/24"), &c, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node lab-node-1 spec.podCIDR: 10.244.1.5/24 has host bits set: did you mean \
             10.244.1.0/24?"
        );
        let native: NativeRoutingCidr = "10.245.0.0/16".parse().unwrap();
        let e = check_node_pod_cidr(&node(), Some("10.244.1.0/24"), &c, Some(&native)).unwrap_err();
        assert!(
            e.to_string()
                .contains("would be SNATed and bypass encryption and policy"),
            "{e}"
        );
        c.routes.push(
            RouteInfo::new("10.244.0.0/16".parse().unwrap())
                .via("172.18.0.1".parse().unwrap())
                .dev("eth0"),
        );
        let e = check_node_pod_cidr(&node(), Some("10.244.1.0/24"), &c, None).unwrap_err();
        assert!(
            e.to_string().contains(
                "pod CIDR 10.244.1.0/24 overlaps route 10.244.0.0/16 via 172.18.0.1 dev eth0 \
                 on node lab-node-1"
            ),
            "{e}"
        );
    }
}
