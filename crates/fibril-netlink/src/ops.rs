//! Typed link, address and route operations, each run inside a [`NetNs`].
//!
//! Every operation opens its own rtnetlink socket on a thread that has entered the
//! namespace (a netlink socket belongs to the namespace it was created in) and drives
//! it with a current-thread tokio runtime, so callers need no runtime and may sit in
//! any namespace. Mutations are "ensure" style where that has a meaning: an existing
//! object in the wanted state is success, not `EEXIST`.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlag, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, IpVersion};

use crate::error::{Error, NlError, Result};
use crate::netns::NetNs;
use crate::sysctl::sysctl_path;

/// An IPv4 route in the main table, as [`NetNs::replace_route`] installs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    /// Gateway; `None` makes a link-scope route straight out of `dev`.
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// A link's hardware address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// `IFLA_INFO_KIND`: "veth", "bridge", "vxlan", ...; `None` for lo and physical devices.
    pub kind: Option<String>,
    /// Ifindex of the bridge (or bond) this link is enslaved to.
    pub master: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub mtu: Option<u32>,
    /// For a veth: the peer's ifindex, in the peer's namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
}

/// One IPv4 address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub ifname: String,
    pub index: u32,
    pub addr: Ipv4Net,
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// Name of `oif`, resolved in the same namespace.
    pub dev: Option<String>,
    pub prefsrc: Option<Ipv4Addr>,
    pub metric: Option<u32>,
    /// Link scope: the destination is directly on `dev` (a connected route).
    pub link_scope: bool,
}

impl LinkInfo {
    pub(crate) fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            name: String::new(),
            index: msg.header.index,
            kind: None,
            master: None,
            mac: None,
            up: msg.header.flags.contains(&LinkFlag::Up),
            mtu: None,
            peer_index: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Controller(m) => info.master = Some(*m),
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                LinkAttribute::Link(l) => info.peer_index = Some(*l),
                LinkAttribute::Address(a) => {
                    info.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr)
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            info.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if info.kind.as_deref() != Some("veth") {
            info.peer_index = None;
        }
        info
    }

    pub(crate) fn kind_or_device(&self) -> String {
        self.kind.clone().unwrap_or_else(|| "a device".into())
    }
}

pub(crate) async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NlError> {
    let mut stream = h.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(msg) => Ok(msg),
        Err(e) => {
            let e = NlError::from(e);
            if e.errno() == Some(Errno::ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

pub(crate) async fn dump_links(h: &Handle) -> Result<Vec<LinkInfo>, NlError> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(LinkInfo::from_message).collect())
}

fn route_v4(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

/// One change of a [`NetNs::apply`] batch; each does what the method of the same name
/// does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// [`NetNs::set_sysctl`].
    Sysctl { key: String, value: String },
    /// [`NetNs::set_up`].
    Up { ifname: String },
    /// [`NetNs::ensure_addr`].
    Addr { ifname: String, addr: Ipv4Net },
    /// [`NetNs::replace_neigh`].
    Neigh {
        ifname: String,
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    /// [`NetNs::replace_route`].
    Route(Route),
}

async fn set_state_on(h: &Handle, netns: &str, name: &str, up: bool) -> Result<()> {
    let idx = NetNs::index_in(h, netns, name, "getting").await?;
    let req = h.link().set(idx);
    let (req, op) = if up {
        (req.up(), "setting up")
    } else {
        (req.down(), "setting down")
    };
    req.execute().await.map_err(|e| Error::Link {
        op,
        netns: netns.to_string(),
        ifname: name.to_string(),
        source: e.into(),
    })
}

async fn ensure_addr_on(h: &Handle, netns: &str, name: &str, addr: Ipv4Net) -> Result<()> {
    let idx = NetNs::index_in(h, netns, name, "getting").await?;
    match h
        .address()
        .add(idx, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => match NlError::from(e) {
            e if e.errno() == Some(Errno::EEXIST) => Ok(()),
            source => Err(Error::Addr {
                op: "adding",
                netns: netns.to_string(),
                ifname: name.to_string(),
                addr,
                source,
            }),
        },
    }
}

/// The route must have passed `NetNs::check_route`.
async fn replace_route_on(h: &Handle, netns: &str, route: &Route) -> Result<()> {
    let dst = route.dst.trunc();
    let mut req = h
        .route()
        .add()
        .v4()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .replace();
    if let Some(dev) = &route.dev {
        let idx = NetNs::index_in(h, netns, dev, "getting").await?;
        req = req.output_interface(idx);
    }
    match route.via {
        Some(via) => req = req.gateway(via),
        None => req = req.scope(RouteScope::Link),
    }
    req.execute().await.map_err(|e| Error::Route {
        op: "replacing",
        netns: netns.to_string(),
        dst,
        source: e.into(),
    })
}

impl NetNs {
    /// Run an async netlink conversation inside this namespace. `mutating` operations
    /// are refused on the host namespace.
    pub(crate) fn netlink<T, F, Fut>(&self, mutating: bool, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Handle, String) -> Fut + Send,
        Fut: Future<Output = Result<T>>,
    {
        let netns = self.name().to_string();
        let body = move || -> Result<T> {
            let session = |source| Error::Session {
                netns: netns.clone(),
                source,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(session)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(session)?;
                let task = tokio::spawn(conn);
                let out = f(handle, netns.clone()).await;
                task.abort();
                out
            })
        };
        if mutating {
            self.run(body)?
        } else {
            self.run_read(body)?
        }
    }

    /// One link by name, if it exists.
    pub fn link(&self, ifname: &str) -> Result<Option<LinkInfo>> {
        let name = ifname.to_string();
        self.netlink(false, |h, netns| async move {
            find_link(&h, &name)
                .await
                .map(|m| m.as_ref().map(LinkInfo::from_message))
                .map_err(|source| Error::Link {
                    op: "getting",
                    netns,
                    ifname: name.clone(),
                    source,
                })
        })
    }

    /// Every link in this namespace.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        self.netlink(false, |h, netns| async move {
            dump_links(&h).await.map_err(|source| Error::Dump {
                what: "links",
                netns,
                source,
            })
        })
    }

    /// Create a bridge, or reuse the existing one; returns its ifindex. Errors if a
    /// link of another kind has the name. The bridge is left in its current up/down
    /// state: see [`NetNs::set_up`].
    pub fn ensure_bridge(&self, name: &str) -> Result<u32> {
        let name = name.to_string();
        self.netlink(true, |h, netns| async move {
            let lerr = |op, source| Error::Link {
                op,
                netns: netns.clone(),
                ifname: name.clone(),
                source,
            };
            if let Some(msg) = find_link(&h, &name).await.map_err(|e| lerr("getting", e))? {
                let info = LinkInfo::from_message(&msg);
                if info.kind.as_deref() != Some("bridge") {
                    return Err(Error::LinkKind {
                        netns: netns.clone(),
                        ifname: name.clone(),
                        expected: "a bridge",
                        actual: info.kind_or_device(),
                    });
                }
                return Ok(info.index);
            }
            let mut req = h.link().add();
            req.message_mut().attributes.extend([
                LinkAttribute::IfName(name.clone()),
                LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]),
            ]);
            req.execute()
                .await
                .map_err(|e| lerr("creating bridge", e.into()))?;
            match find_link(&h, &name).await.map_err(|e| lerr("getting", e))? {
                Some(msg) => Ok(msg.header.index),
                None => Err(Error::LinkNotFound {
                    netns: netns.clone(),
                    ifname: name.clone(),
                }),
            }
        })
    }

    /// A veth pair: `name` here, `peer` in `peer_ns` (which may be this namespace).
    ///
    /// The peer is created directly in `peer_ns` (`IFLA_NET_NS_FD` on the peer, as
    /// `ip link add ... peer name P netns N` does), so it never appears here. If the
    /// pair already exists, nothing is done; if only one half exists, or the two
    /// names exist but are not each other's peers, the stale veths are removed and the
    /// pair recreated. A non-veth link holding either name is an error, never deleted.
    pub fn ensure_veth(&self, name: &str, peer: &str, peer_ns: &NetNs) -> Result<()> {
        self.ensure_veth_mtu(name, peer, peer_ns, None)
    }

    /// [`ensure_veth`](Self::ensure_veth), with both ends' MTU `mtu` when given: a new pair
    /// is created with it, an existing one gets it.
    pub fn ensure_veth_mtu(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &NetNs,
        mtu: Option<u32>,
    ) -> Result<()> {
        let same = self.inode()? == peer_ns.inode()?;
        // Both lookups at once: each is a thread and a netlink session of its own.
        let (here, there) = std::thread::scope(|s| {
            let there = s.spawn(|| peer_ns.link(peer));
            let here = self.link(name);
            let there = there
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (here, there)
        });
        let (here, there) = (here?, there?);
        for (ns, ifname, link) in [(self, name, &here), (peer_ns, peer, &there)] {
            if let Some(l) = link {
                if l.kind.as_deref() != Some("veth") {
                    return Err(Error::LinkKind {
                        netns: ns.name().to_string(),
                        ifname: ifname.to_string(),
                        expected: "a veth",
                        actual: l.kind_or_device(),
                    });
                }
            }
        }
        if let (Some(a), Some(b)) = (&here, &there) {
            if a.peer_index == Some(b.index) && b.peer_index == Some(a.index) {
                if let Some(mtu) = mtu {
                    self.set_mtu(name, mtu)?;
                    peer_ns.set_mtu(peer, mtu)?;
                }
                return Ok(());
            }
        }
        if here.is_some() {
            self.delete_link(name)?;
        }
        if there.is_some() {
            // Deleting `name` may already have taken it along; delete_link tolerates that.
            peer_ns.delete_link(peer)?;
        }
        let peer_fd = if same { None } else { Some(peer_ns.open_fd()?) };
        let (name, peer) = (name.to_string(), peer.to_string());
        self.netlink(true, |h, netns| async move {
            let mut peer_msg = LinkMessage::default();
            peer_msg.attributes.push(LinkAttribute::IfName(peer));
            if let Some(mtu) = mtu {
                peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
            }
            if let Some(fd) = &peer_fd {
                peer_msg
                    .attributes
                    .push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
            }
            let mut req = h.link().add();
            req.message_mut().attributes.extend([
                LinkAttribute::IfName(name.clone()),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::Veth),
                    NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
                ]),
            ]);
            if let Some(mtu) = mtu {
                req.message_mut().attributes.push(LinkAttribute::Mtu(mtu));
            }
            req.execute().await.map_err(|e| Error::Link {
                op: "creating veth",
                netns,
                ifname: name.clone(),
                source: e.into(),
            })
        })
    }

    pub(crate) async fn index_in(
        h: &Handle,
        netns: &str,
        ifname: &str,
        op: &'static str,
    ) -> Result<u32> {
        match find_link(h, ifname).await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(Error::LinkNotFound {
                netns: netns.to_string(),
                ifname: ifname.to_string(),
            }),
            Err(source) => Err(Error::Link {
                op,
                netns: netns.to_string(),
                ifname: ifname.to_string(),
                source,
            }),
        }
    }

    /// Bring a link administratively up.
    pub fn set_up(&self, ifname: &str) -> Result<()> {
        self.set_state(ifname, true)
    }

    /// Bring a link administratively down.
    pub fn set_down(&self, ifname: &str) -> Result<()> {
        self.set_state(ifname, false)
    }

    fn set_state(&self, ifname: &str, up: bool) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            set_state_on(&h, &netns, &name, up).await
        })
    }

    /// Set a link's MTU.
    pub fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            let idx = Self::index_in(&h, &netns, &name, "getting").await?;
            h.link()
                .set(idx)
                .mtu(mtu)
                .execute()
                .await
                .map_err(|e| Error::Link {
                    op: "setting the MTU of",
                    netns,
                    ifname: name.clone(),
                    source: e.into(),
                })
        })
    }

    /// Enslave `ifname` to the bridge `master`.
    pub fn set_master(&self, ifname: &str, master: &str) -> Result<()> {
        let (name, master) = (ifname.to_string(), master.to_string());
        self.netlink(true, |h, netns| async move {
            let idx = Self::index_in(&h, &netns, &name, "getting").await?;
            let midx = Self::index_in(&h, &netns, &master, "getting").await?;
            h.link()
                .set(idx)
                .controller(midx)
                .execute()
                .await
                .map_err(|e| Error::Link {
                    op: "setting master",
                    netns,
                    ifname: name.clone(),
                    source: e.into(),
                })
        })
    }

    /// Delete a link (for a veth, both halves go). Ok if it does not exist.
    pub fn delete_link(&self, ifname: &str) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            let lerr = |op, source| Error::Link {
                op,
                netns: netns.clone(),
                ifname: name.clone(),
                source,
            };
            let Some(msg) = find_link(&h, &name).await.map_err(|e| lerr("getting", e))? else {
                return Ok(());
            };
            match h.link().del(msg.header.index).execute().await {
                Ok(()) => Ok(()),
                Err(e) => match NlError::from(e) {
                    e if e.errno() == Some(Errno::ENODEV) => Ok(()),
                    e => Err(lerr("deleting", e)),
                },
            }
        })
    }

    /// Add an IPv4 address to a link; Ok if that address and prefix are already there.
    pub fn ensure_addr(&self, ifname: &str, addr: Ipv4Net) -> Result<()> {
        let name = ifname.to_string();
        self.netlink(true, |h, netns| async move {
            ensure_addr_on(&h, &netns, &name, addr).await
        })
    }

    /// Every IPv4 address in this namespace.
    pub fn addrs(&self) -> Result<Vec<AddrInfo>> {
        self.netlink(false, |h, netns| async move {
            let dump = |what, source| Error::Dump {
                what,
                netns: netns.clone(),
                source,
            };
            let links = dump_links(&h).await.map_err(|e| dump("links", e))?;
            let msgs: Vec<AddressMessage> = h
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| dump("addresses", e.into()))?;
            let mut out = Vec::new();
            for m in msgs
                .iter()
                .filter(|m| m.header.family == AddressFamily::Inet)
            {
                let mut local = None;
                let mut address = None;
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                        AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                        _ => {}
                    }
                }
                let Some(ip) = local.or(address) else {
                    continue;
                };
                let Ok(addr) = Ipv4Net::new(ip, m.header.prefix_len) else {
                    continue;
                };
                let ifname = links
                    .iter()
                    .find(|l| l.index == m.header.index)
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                out.push(AddrInfo {
                    ifname,
                    index: m.header.index,
                    addr,
                });
            }
            Ok(out)
        })
    }

    /// Install or replace (`NLM_F_REPLACE`) an IPv4 route in the main table.
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        self.check_route(route)?;
        let route = route.clone();
        self.netlink(true, |h, netns| async move {
            replace_route_on(&h, &netns, &route).await
        })
    }

    /// A route needs a device or a usable gateway.
    fn check_route(&self, route: &Route) -> Result<()> {
        let dst = route.dst.trunc();
        if route.via.is_none() && route.dev.is_none() {
            return Err(Error::RouteTarget {
                netns: self.name().to_string(),
                dst,
            });
        }
        if let Some(via) = route.via {
            if via.is_unspecified() || via.is_broadcast() || via.is_multicast() {
                return Err(Error::RouteGateway {
                    netns: self.name().to_string(),
                    dst,
                    via,
                });
            }
        }
        Ok(())
    }

    /// Applies `changes` in order, in one thread inside this namespace over one netlink
    /// socket (rather than a thread, a runtime and a socket each), stopping at the first
    /// failure, which is reported as the single operation would report it. For setting up
    /// an interface in a few steps on a hot path (a CNI ADD).
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        for c in changes {
            match c {
                Change::Route(r) => self.check_route(r)?,
                Change::Sysctl { key, .. } => {
                    sysctl_path(key)?;
                }
                _ => {}
            }
        }
        let changes = changes.to_vec();
        self.netlink(true, |h, netns| async move {
            for c in &changes {
                match c {
                    Change::Up { ifname } => set_state_on(&h, &netns, ifname, true).await?,
                    Change::Addr { ifname, addr } => {
                        ensure_addr_on(&h, &netns, ifname, *addr).await?
                    }
                    Change::Neigh { ifname, ip, mac } => {
                        crate::neigh::replace_neigh_on(&h, &netns, ifname, *ip, *mac).await?
                    }
                    Change::Route(r) => replace_route_on(&h, &netns, r).await?,
                    Change::Sysctl { key, value } => {
                        // This thread is inside the namespace: procfs resolves net.* here.
                        let path = sysctl_path(key)?;
                        std::fs::write(&path, value.as_bytes()).map_err(|source| Error::Sysctl {
                            op: "writing",
                            netns: netns.clone(),
                            key: key.clone(),
                            source,
                        })?
                    }
                }
            }
            Ok(())
        })
    }

    /// Delete the main-table IPv4 route to `dst`, whatever its gateway; Ok if absent.
    pub fn delete_route(&self, dst: Ipv4Net) -> Result<()> {
        let dst = dst.trunc();
        self.netlink(true, |h, netns| async move {
            // As `ip route del`: scope NOWHERE, type and protocol unspecified match any.
            let mut msg = RouteMessage::default();
            msg.header.address_family = AddressFamily::Inet;
            msg.header.destination_prefix_length = dst.prefix_len();
            msg.header.table = RouteHeader::RT_TABLE_MAIN;
            msg.header.scope = RouteScope::NoWhere;
            msg.header.protocol = RouteProtocol::Unspec;
            msg.header.kind = RouteType::Unspec;
            if dst.prefix_len() > 0 {
                msg.attributes
                    .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr())));
            }
            match h.route().del(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) => match NlError::from(e) {
                    e if e.errno() == Some(Errno::ESRCH) => Ok(()),
                    source => Err(Error::Route {
                        op: "deleting",
                        netns,
                        dst,
                        source,
                    }),
                },
            }
        })
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        self.netlink(false, |h, netns| async move {
            let dump = |what, source| Error::Dump {
                what,
                netns: netns.clone(),
                source,
            };
            let links = dump_links(&h).await.map_err(|e| dump("links", e))?;
            let msgs: Vec<RouteMessage> = h
                .route()
                .get(IpVersion::V4)
                .execute()
                .try_collect()
                .await
                .map_err(|e| dump("routes", e.into()))?;
            let mut out = Vec::new();
            for m in &msgs {
                let mut table = u32::from(m.header.table);
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut info = RouteInfo {
                    dst: Ipv4Net::default(),
                    via: None,
                    oif: None,
                    dev: None,
                    prefsrc: None,
                    metric: None,
                    link_scope: m.header.scope == RouteScope::Link,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Destination(d) => {
                            dst = route_v4(d).unwrap_or(Ipv4Addr::UNSPECIFIED)
                        }
                        RouteAttribute::Gateway(g) => info.via = route_v4(g),
                        RouteAttribute::PrefSource(s) => info.prefsrc = route_v4(s),
                        RouteAttribute::Oif(i) => info.oif = Some(*i),
                        RouteAttribute::Priority(p) => info.metric = Some(*p),
                        _ => {}
                    }
                }
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length) else {
                    continue;
                };
                info.dst = net;
                info.dev = info
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i).map(|l| l.name.clone()));
                out.push(info);
            }
            Ok(out)
        })
    }
}
