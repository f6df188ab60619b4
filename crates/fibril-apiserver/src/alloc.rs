//! ClusterIP and NodePort allocation for Services.
//!
//! Allocations are not kept in a separate table: the set in use is derived from the stored
//! Services inside the write transaction, so it can never drift from them, and deleting a
//! Service frees its addresses by construction.
//!
//! As kube-apiserver does since KEP-3070/KEP-3668, each range is split into a small lower band
//! preferred by static (user-requested) allocations and an upper band preferred by dynamic
//! ones, so a well-known address such as the cluster DNS IP (the tenth address) is still free
//! when its Service is created after others.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::store::{ObjKey, Txn};

pub const NODE_PORT_RANGE: RangeInclusive<u32> = 30000..=32767;

/// What other Services hold: their ClusterIPs, and their NodePorts and health check node
/// ports (one range).
#[derive(Debug, Default)]
pub struct InUse {
    pub ips: BTreeSet<Ipv4Addr>,
    pub node_ports: BTreeSet<u32>,
}

impl InUse {
    /// Collects allocations of every Service except `except`.
    pub fn collect(txn: &Txn<'_>, services_res: &str, except: Option<&ObjKey>) -> Self {
        let mut out = Self::default();
        for (k, svc) in txn.list(services_res, None) {
            if Some(&k) == except {
                continue;
            }
            out.add(&svc);
        }
        out
    }

    pub fn add(&mut self, svc: &Value) {
        let spec = &svc["spec"];
        let ips = spec["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&spec["clusterIP"]));
        for ip in ips.filter_map(Value::as_str) {
            if let Ok(ip) = ip.parse() {
                self.ips.insert(ip);
            }
        }
        for p in spec["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_u64().filter(|np| *np > 0) {
                self.node_ports.insert(np as u32);
            }
        }
        // The health check port comes from the same range, and no NodePort may take it.
        if let Some(hc) = spec["healthCheckNodePort"].as_u64().filter(|p| *p > 0) {
            self.node_ports.insert(hc as u32);
        }
    }
}

/// Why a requested ClusterIP cannot be had.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {cidr}")]
    OutOfRange { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("failed to allocate IP {ip}: provided IP is already allocated")]
    Allocated { ip: Ipv4Addr },
    #[error("failed to allocate a serviceIP: range is full")]
    Full,
}

/// Usable addresses of the range: all but the network and broadcast addresses.
fn host_range(cidr: &Ipv4Net) -> (u32, u32) {
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    if cidr.prefix_len() >= 31 {
        (net, bcast)
    } else {
        (net + 1, bcast - 1)
    }
}

/// Size of the band static allocations prefer: min(max(16, size/16), 256).
fn lower_band(size: u32, div: u32, max: u32) -> u32 {
    (size / div).clamp(16, max).min(size)
}

/// Checks a requested ClusterIP.
pub fn check_ip(cidr: &Ipv4Net, ip: Ipv4Addr, used: &InUse) -> Result<(), IpError> {
    let (first, last) = host_range(cidr);
    let n = u32::from(ip);
    if !(first..=last).contains(&n) {
        return Err(IpError::OutOfRange { ip, cidr: *cidr });
    }
    if used.ips.contains(&ip) {
        return Err(IpError::Allocated { ip });
    }
    Ok(())
}

/// Allocates a ClusterIP: the lowest free address of the upper band, else of the lower band.
pub fn allocate_ip(cidr: &Ipv4Net, used: &InUse) -> Result<Ipv4Addr, IpError> {
    let (first, last) = host_range(cidr);
    let size = last - first + 1;
    let split = first + lower_band(size, 16, 256);
    (split..=last)
        .chain(first..split)
        .map(Ipv4Addr::from)
        .find(|ip| !used.ips.contains(ip))
        .ok_or(IpError::Full)
}

/// Allocates a NodePort the same way (upper band first).
pub fn allocate_node_port(used: &BTreeSet<u32>) -> Option<u32> {
    let (first, last) = (*NODE_PORT_RANGE.start(), *NODE_PORT_RANGE.end());
    let split = first + lower_band(last - first + 1, 32, 128);
    (split..=last)
        .chain(first..split)
        .find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_ips_avoid_the_static_band() {
        let cidr: Ipv4Net = "10.96.0.0/16".parse().unwrap();
        let mut used = InUse::default();
        let a = allocate_ip(&cidr, &used).unwrap();
        assert_eq!(a, "10.96.1.1".parse::<Ipv4Addr>().unwrap());
        used.ips.insert(a);
        assert_eq!(
            allocate_ip(&cidr, &used).unwrap(),
            "10.96.1.2".parse::<Ipv4Addr>().unwrap()
        );
        // The DNS address stays available for a static request.
        check_ip(&cidr, "10.96.0.10".parse().unwrap(), &used).unwrap();
    }

    #[test]
    fn requested_ips_are_checked() {
        let cidr: Ipv4Net = "10.96.0.0/24".parse().unwrap();
        let mut used = InUse::default();
        used.ips.insert("10.96.0.5".parse().unwrap());
        for bad in ["10.96.0.0", "10.96.0.255", "10.97.0.1"] {
            assert!(matches!(
                check_ip(&cidr, bad.parse().unwrap(), &used),
                Err(IpError::OutOfRange { .. })
            ));
        }
        assert_eq!(
            check_ip(&cidr, "10.96.0.5".parse().unwrap(), &used),
            Err(IpError::Allocated {
                ip: "10.96.0.5".parse().unwrap()
            })
        );
    }

    #[test]
    fn small_range_fills_up() {
        let cidr: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut used = InUse::default();
        let mut got = Vec::new();
        while let Ok(ip) = allocate_ip(&cidr, &used) {
            used.ips.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(!got.contains(&"10.0.0.0".to_string()));
        assert!(!got.contains(&"10.0.0.7".to_string()));
    }

    #[test]
    fn node_ports() {
        let mut used = BTreeSet::new();
        let p = allocate_node_port(&used).unwrap();
        assert!(NODE_PORT_RANGE.contains(&p) && p > 30000);
        used.insert(p);
        assert_ne!(allocate_node_port(&used), Some(p));
        let all: BTreeSet<u32> = NODE_PORT_RANGE.collect();
        assert_eq!(allocate_node_port(&all), None);
    }
}
