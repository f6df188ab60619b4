//! Pod endpoints: the veth between a pod and its node, how the pod is addressed, and the
//! agent's persisted record of each attachment.
//!
//! **Addressing.** The pod gets its address as a /32 on `CNI_IFNAME`, a link-scope route to
//! the node's gateway address (the block's first host address), a default route via it, and
//! a permanent neighbour entry mapping the gateway to the host veth's MAC. Nothing on the
//! node carries the gateway address, and no ARP for it ever leaves the pod: the pod needs
//! no broadcast domain, the node needs no bridge, and pod-to-pod traffic on one node goes
//! through the node's routing (or the BPF datapath) rather than being switched, so it is
//! always seen by the host-side programs. (proxy_arp would also answer, but only while the
//! node happens to route the gateway address elsewhere; the static entry cannot go stale.)
//! The node routes the pod's /32 to the host veth.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fibril_core::cni_api::{AttachmentKey, PodIdentity};
use fibril_netlink::{Change, LinkInfo, MacAddr, NetNs, Route};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::persist::{read_optional, remove_durable, write_atomic, PersistIoError};

/// Host-side pod veths are `fib` + 12 hex digits.
pub const VETH_PREFIX: &str = "fib";

/// The host veth name of an attachment: stable (a hash of container ID and ifname), so
/// DEL and GC find it even without a record.
pub fn veth_name(key: &AttachmentKey) -> String {
    // FNV-1a, 64 bit: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .container_id
        .as_str()
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.ifname.as_str().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{VETH_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

/// Whether `ifname` looks like one of fibril's host veths.
pub fn is_pod_veth(ifname: &str) -> bool {
    ifname.len() == VETH_PREFIX.len() + 12
        && ifname.starts_with(VETH_PREFIX)
        && ifname[VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// What the agent keeps about one attachment, written before ADD answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRecord {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub netns: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
}

/// The records, one file each under `<stateDir>/endpoints/`.
#[derive(Debug)]
pub struct EndpointStore {
    dir: PathBuf,
}

impl EndpointStore {
    pub fn new(state_dir: &Path) -> Self {
        EndpointStore {
            dir: state_dir.join("endpoints"),
        }
    }

    fn path(&self, key: &AttachmentKey) -> PathBuf {
        // Both parts match [A-Za-z0-9][A-Za-z0-9_.-]* (ifname: no '/'), so this is one
        // file name; the veth hash keeps "a.b"+"c" apart from "a"+"b.c".
        self.dir.join(format!(
            "{}.{}.{}.json",
            key.container_id,
            key.ifname,
            veth_name(key)
        ))
    }

    pub fn save(&self, rec: &EndpointRecord) -> Result<(), PersistIoError> {
        let bytes = serde_json::to_vec_pretty(rec).expect("plain data serializes");
        write_atomic(&self.path(&rec.key), &bytes, 0o600)
    }

    pub fn remove(&self, key: &AttachmentKey) -> Result<(), PersistIoError> {
        remove_durable(&self.path(key))
    }

    pub fn get(&self, key: &AttachmentKey) -> Result<Option<EndpointRecord>, PersistIoError> {
        Ok(read_optional(&self.path(key))?.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Every readable record; unreadable files are reported in the second list.
    pub fn load_all(
        &self,
    ) -> Result<(BTreeMap<AttachmentKey, EndpointRecord>, Vec<PathBuf>), PersistIoError> {
        let mut out = BTreeMap::new();
        let mut bad = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, bad)),
            Err(source) => {
                return Err(PersistIoError {
                    op: "listing",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match read_optional(&p)?.map(|t| serde_json::from_str::<EndpointRecord>(&t)) {
                Some(Ok(r)) => {
                    out.insert(r.key.clone(), r);
                }
                Some(Err(_)) => bad.push(p),
                None => {}
            }
        }
        Ok((out, bad))
    }
}

/// The links of a set-up endpoint.
#[derive(Clone, Debug)]
pub struct Plumbed {
    pub host: LinkInfo,
    pub pod: LinkInfo,
}

/// Creates (or repairs) the veth pair and addresses the pod; `mtu` on both ends when given
/// (tunnel mode leaves room for the VXLAN header). Idempotent. [`create_pair`] then
/// [`configure`]; ADD runs them apart so that the programs are attached to the new host
/// veth while the pod side is configured.
pub fn plumb(
    node: &NetNs,
    pod: &NetNs,
    host_veth: &str,
    ifname: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: Option<u32>,
) -> Result<Plumbed, fibril_netlink::Error> {
    let pair = create_pair(node, pod, host_veth, ifname, mtu)?;
    let host_mac = pair.host.mac.ok_or_else(|| no_mac(node, host_veth))?;
    configure(node, pod, host_veth, ifname, ip, gateway, host_mac)?;
    Ok(pair)
}

fn no_mac(ns: &NetNs, ifname: &str) -> fibril_netlink::Error {
    fibril_netlink::Error::LinkNotFound {
        netns: ns.name().to_string(),
        ifname: format!("{ifname} (no MAC)"),
    }
}

fn get_link(ns: &NetNs, ifname: &str) -> Result<LinkInfo, fibril_netlink::Error> {
    ns.link(ifname)?
        .ok_or_else(|| fibril_netlink::Error::LinkNotFound {
            netns: ns.name().to_string(),
            ifname: ifname.to_string(),
        })
}

/// The veth pair, host side `host_veth` in `node`, pod side `ifname` in `pod`, both down
/// and unaddressed if new. Idempotent.
pub fn create_pair(
    node: &NetNs,
    pod: &NetNs,
    host_veth: &str,
    ifname: &str,
    mtu: Option<u32>,
) -> Result<Plumbed, fibril_netlink::Error> {
    node.ensure_veth_mtu(host_veth, ifname, pod, mtu)?;
    // Both ends at once: each read is a thread and a netlink session of its own.
    std::thread::scope(|s| {
        let pod_link = s.spawn(|| get_link(pod, ifname));
        let host = get_link(node, host_veth);
        let pod_link = pod_link
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        Ok(Plumbed {
            host: host?,
            pod: pod_link?,
        })
    })
}

/// The node's side of an endpoint: the host veth's sysctls and state, and the node's route
/// to the pod.
fn node_changes(host_veth: &str, ip: Ipv4Addr) -> Vec<Change> {
    let host32 = Ipv4Net::new(ip, 32).expect("/32 is valid");
    vec![
        // Packets from the pod are routed by the node; reverse-path filtering on the veth
        // would only ever drop legitimate asymmetric replies (seed 002).
        Change::Sysctl {
            key: format!("net/ipv4/conf/{host_veth}/rp_filter"),
            value: "0".into(),
        },
        Change::Sysctl {
            key: format!("net/ipv4/conf/{host_veth}/forwarding"),
            value: "1".into(),
        },
        Change::Up {
            ifname: host_veth.to_string(),
        },
        Change::Route(Route {
            dst: host32,
            via: None,
            dev: Some(host_veth.to_string()),
        }),
    ]
}

/// The pod's side: its address, gateway neighbour and routes.
fn pod_changes(ifname: &str, ip: Ipv4Addr, gateway: Ipv4Addr, host_mac: MacAddr) -> Vec<Change> {
    let host32 = Ipv4Net::new(ip, 32).expect("/32 is valid");
    let gw32 = Ipv4Net::new(gateway, 32).expect("/32 is valid");
    vec![
        Change::Addr {
            ifname: ifname.to_string(),
            addr: host32,
        },
        Change::Up {
            ifname: ifname.to_string(),
        },
        Change::Up {
            ifname: "lo".to_string(),
        },
        Change::Neigh {
            ifname: ifname.to_string(),
            ip: gateway,
            mac: host_mac,
        },
        Change::Route(Route {
            dst: gw32,
            via: None,
            dev: Some(ifname.to_string()),
        }),
        Change::Route(Route {
            dst: Ipv4Net::default(),
            via: Some(gateway),
            dev: Some(ifname.to_string()),
        }),
    ]
}

/// Everything but the pair: the host veth's sysctls and state, the pod's address, gateway
/// neighbour and routes, and the node's route to the pod. One netlink session in each
/// namespace (a CNI ADD pays for every thread, runtime and socket an operation would
/// otherwise open), the two namespaces at once. Idempotent.
pub fn configure(
    node: &NetNs,
    pod: &NetNs,
    host_veth: &str,
    ifname: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    host_mac: MacAddr,
) -> Result<(), fibril_netlink::Error> {
    let node_side = node_changes(host_veth, ip);
    let pod_side = pod_changes(ifname, ip, gateway, host_mac);
    std::thread::scope(|s| {
        let at_node = s.spawn(|| node.apply(&node_side));
        let at_pod = pod.apply(&pod_side);
        let at_node = at_node
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        at_node.and(at_pod)
    })
}

/// Removes the pair (deleting the host side takes the pod side along, and the kernel
/// drops the /32 route with it). Ok if already gone.
pub fn unplumb(node: &NetNs, host_veth: &str) -> Result<(), fibril_netlink::Error> {
    node.delete_link(host_veth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.parse().unwrap(),
            ifname: i.parse().unwrap(),
        }
    }

    #[test]
    fn veth_names_are_stable_short_and_recognised() {
        let a = veth_name(&key("abc", "eth0"));
        assert_eq!(a, veth_name(&key("abc", "eth0")));
        assert_ne!(a, veth_name(&key("abc", "eth1")));
        assert_ne!(a, veth_name(&key("abd", "eth0")));
        assert!(a.len() <= 15, "{a}");
        assert!(is_pod_veth(&a));
        assert!(!is_pod_veth("eth0"));
        assert!(!is_pod_veth("fibril_vxlan"));
    }

    #[test]
    fn configure_changes_come_in_an_order_the_kernel_accepts() {
        let ip: Ipv4Addr = "10.244.1.7".parse().unwrap();
        let gw: Ipv4Addr = "10.244.1.1".parse().unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        // The node: sysctls of the new veth, the veth up, then the route through it (a
        // route via a device that is down is refused).
        let node = node_changes("fib0123456789ab", ip);
        assert_eq!(
            node,
            [
                Change::Sysctl {
                    key: "net/ipv4/conf/fib0123456789ab/rp_filter".into(),
                    value: "0".into()
                },
                Change::Sysctl {
                    key: "net/ipv4/conf/fib0123456789ab/forwarding".into(),
                    value: "1".into()
                },
                Change::Up {
                    ifname: "fib0123456789ab".into()
                },
                Change::Route(Route {
                    dst: "10.244.1.7/32".parse().unwrap(),
                    via: None,
                    dev: Some("fib0123456789ab".into())
                }),
            ]
        );
        // The pod: address and link up first, the gateway's neighbour and link route
        // before the default route via the gateway.
        let pod = pod_changes("eth0", ip, gw, mac);
        assert_eq!(
            pod,
            [
                Change::Addr {
                    ifname: "eth0".into(),
                    addr: "10.244.1.7/32".parse().unwrap()
                },
                Change::Up {
                    ifname: "eth0".into()
                },
                Change::Up {
                    ifname: "lo".into()
                },
                Change::Neigh {
                    ifname: "eth0".into(),
                    ip: gw,
                    mac
                },
                Change::Route(Route {
                    dst: "10.244.1.1/32".parse().unwrap(),
                    via: None,
                    dev: Some("eth0".into())
                }),
                Change::Route(Route {
                    dst: Ipv4Net::default(),
                    via: Some(gw),
                    dev: Some("eth0".into())
                }),
            ]
        );
    }

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = EndpointStore::new(d.path());
        let r = EndpointRecord {
            key: key("c1", "eth0"),
            ip: "10.244.1.2".parse().unwrap(),
            host_veth: veth_name(&key("c1", "eth0")),
            netns: "/run/netns/x".into(),
            pod: None,
        };
        s.save(&r).unwrap();
        assert_eq!(s.get(&r.key).unwrap(), Some(r.clone()));
        let (all, bad) = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert!(bad.is_empty());
        s.remove(&r.key).unwrap();
        s.remove(&r.key).unwrap();
        assert_eq!(s.get(&r.key).unwrap(), None);
    }
}
