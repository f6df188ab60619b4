//! Static (permanent) IPv4 neighbour entries: how a pod resolves its gateway without ARP
//! reaching the node.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;

use crate::error::{Error, NlError, Result};
use crate::netns::NetNs;
use crate::ops::MacAddr;

/// One IPv4 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighInfo {
    pub ifname: String,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
    /// `NUD_PERMANENT`: set by someone, never aged out.
    pub permanent: bool,
}

impl NetNs {
    /// Install or replace a permanent neighbour entry `ip lladdr mac` on `ifname` (as
    /// `ip neigh replace IP lladdr MAC dev IF nud permanent`).
    pub fn replace_neigh(&self, ifname: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            replace_neigh_on(&h, &netns, &name, ip, mac).await
        })
    }

    /// Delete the neighbour entry for `ip` on `ifname`; Ok if it (or the link) is absent.
    pub fn delete_neigh(&self, ifname: &str, ip: Ipv4Addr) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            let idx = match Self::index_in(&h, &netns, &name, "getting").await {
                Ok(i) => i,
                Err(Error::LinkNotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.ifindex = idx;
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            match h.neighbours().del(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) => match NlError::from(e) {
                    e if e.errno() == Some(Errno::ENOENT) => Ok(()),
                    source => Err(Error::Neigh {
                        op: "deleting",
                        netns,
                        ifname: name.clone(),
                        ip,
                        source,
                    }),
                },
            }
        })
    }

    /// Every IPv4 neighbour entry in this namespace.
    pub fn neighbours(&self) -> Result<Vec<NeighInfo>> {
        self.netlink(false, |h, netns| async move {
            let dump = |what, source| Error::Dump {
                what,
                netns: netns.clone(),
                source,
            };
            let links = crate::ops::dump_links(&h)
                .await
                .map_err(|e| dump("links", e))?;
            let msgs: Vec<NeighbourMessage> = h
                .neighbours()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| dump("neighbours", e.into()))?;
            let mut out = Vec::new();
            for m in msgs
                .iter()
                .filter(|m| m.header.family == AddressFamily::Inet)
            {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(*v4)
                        }
                        NeighbourAttribute::LinkLocalAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddr)
                        }
                        _ => {}
                    }
                }
                let Some(ip) = ip else { continue };
                out.push(NeighInfo {
                    ifname: links
                        .iter()
                        .find(|l| l.index == m.header.ifindex)
                        .map(|l| l.name.clone())
                        .unwrap_or_default(),
                    index: m.header.ifindex,
                    ip,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
            Ok(out)
        })
    }
}

pub(crate) async fn replace_neigh_on(
    h: &rtnetlink::Handle,
    netns: &str,
    name: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
) -> Result<()> {
    let idx = NetNs::index_in(h, netns, name, "getting").await?;
    h.neighbours()
        .add(idx, IpAddr::V4(ip))
        .link_local_address(&mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::Neigh {
            op: "replacing",
            netns: netns.to_string(),
            ifname: name.to_string(),
            ip,
            source: e.into(),
        })
}
