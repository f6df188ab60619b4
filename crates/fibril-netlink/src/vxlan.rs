//! The VXLAN device of tunnel mode: one `external` (collect_md) device per node, whose
//! per-packet tunnel key the datapath sets.

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage,
};

use crate::error::{Error, Result};
use crate::netns::NetNs;
use crate::ops::{find_link, LinkInfo};

/// A VXLAN device as [`NetNs::ensure_vxlan`] makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanOptions {
    pub name: String,
    /// UDP destination port (`dstport`).
    pub port: u16,
    /// MTU; `None` leaves the kernel's default (underlay MTU less 50).
    pub mtu: Option<u32>,
}

/// The settings of an existing VXLAN device that matter to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    pub link: LinkInfo,
    pub port: Option<u16>,
    pub external: bool,
}

fn vxlan_info(msg: &LinkMessage) -> VxlanInfo {
    let mut out = VxlanInfo {
        link: LinkInfo::from_message(msg),
        port: None,
        external: false,
    };
    for attr in &msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for i in infos {
                if let NlLinkInfo::Data(InfoData::Vxlan(data)) = i {
                    for d in data {
                        match d {
                            InfoVxlan::Port(p) => out.port = Some(*p),
                            InfoVxlan::CollectMetadata(c) => out.external = *c,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    out
}

impl NetNs {
    /// The VXLAN device `name`, if one exists (a link of another kind is an error).
    pub fn vxlan(&self, name: &str) -> Result<Option<VxlanInfo>> {
        let name = name.to_string();
        self.netlink(false, |h, netns| async move {
            let msg = find_link(&h, &name).await.map_err(|source| Error::Link {
                op: "getting",
                netns: netns.clone(),
                ifname: name.clone(),
                source,
            })?;
            let Some(msg) = msg else { return Ok(None) };
            let info = vxlan_info(&msg);
            if info.link.kind.as_deref() != Some("vxlan") {
                return Err(Error::LinkKind {
                    netns,
                    ifname: name.clone(),
                    expected: "a vxlan device",
                    actual: info.link.kind_or_device(),
                });
            }
            Ok(Some(info))
        })
    }

    /// Create the collect_md VXLAN device (`ip link add NAME type vxlan external dstport
    /// PORT nolearning`), or reuse it. One with other settings (port, not external) is
    /// recreated; a non-VXLAN link with the name is an error, never deleted. Left in its
    /// current up/down state: see [`NetNs::set_up`].
    pub fn ensure_vxlan(&self, opts: &VxlanOptions) -> Result<()> {
        if let Some(existing) = self.vxlan(&opts.name)? {
            let mtu_ok = opts.mtu.is_none() || existing.link.mtu == opts.mtu;
            if existing.external && existing.port == Some(opts.port) && mtu_ok {
                return Ok(());
            }
            self.delete_link(&opts.name)?;
        }
        let opts = opts.clone();
        self.netlink(true, |h, netns| async move {
            let mut req = h.link().add();
            let msg = req.message_mut();
            msg.attributes
                .push(LinkAttribute::IfName(opts.name.clone()));
            if let Some(mtu) = opts.mtu {
                msg.attributes.push(LinkAttribute::Mtu(mtu));
            }
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Vxlan),
                NlLinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::CollectMetadata(true),
                    InfoVxlan::Port(opts.port),
                    InfoVxlan::Learning(false),
                ])),
            ]));
            req.execute().await.map_err(|e| Error::Link {
                op: "creating vxlan",
                netns,
                ifname: opts.name.clone(),
                source: e.into(),
            })
        })
    }
}
