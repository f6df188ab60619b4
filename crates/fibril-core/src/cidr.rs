//! CIDR arithmetic on one number line per family, so IPv4 and IPv6 share the code.
//!
//! Shared by the doctor (forecasts, rules) and IPAM (overlap checks, block and address math).

use std::net::IpAddr;

use ipnet::IpNet;

/// An inclusive address range of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub v6: bool,
    pub start: u128,
    pub end: u128,
}

impl Span {
    pub fn of(net: &IpNet) -> Span {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => Span {
                v6: false,
                start: u32::from(n.network()) as u128,
                end: u32::from(n.broadcast()) as u128,
            },
            IpNet::V6(n) => Span {
                v6: true,
                start: u128::from(n.network()),
                end: u128::from(n.broadcast()),
            },
        }
    }

    pub fn addr(a: IpAddr) -> Span {
        match a {
            IpAddr::V4(a) => Span {
                v6: false,
                start: u32::from(a) as u128,
                end: u32::from(a) as u128,
            },
            IpAddr::V6(a) => Span {
                v6: true,
                start: u128::from(a),
                end: u128::from(a),
            },
        }
    }

    pub fn overlaps(&self, o: &Span) -> bool {
        self.v6 == o.v6 && self.start <= o.end && o.start <= self.end
    }

    pub fn contains(&self, o: &Span) -> bool {
        self.v6 == o.v6 && self.start <= o.start && o.end <= self.end
    }
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    Span::of(a).overlaps(&Span::of(b))
}

pub fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    Span::of(outer).contains(&Span::of(inner))
}

pub fn contains_addr(net: &IpNet, a: IpAddr) -> bool {
    Span::of(net).contains(&Span::addr(a))
}

/// Parses `10.0.0.0/8`, or a bare address as a host prefix (as `ip -j route` prints host routes).
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The address at `offset` from the start of a family's number line, as a network of `prefix`.
pub fn net_at(v6: bool, addr: u128, prefix: u8) -> IpNet {
    if v6 {
        IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), prefix)
                .expect("prefix checked by caller"),
        )
    } else {
        IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr as u32), prefix)
                .expect("prefix checked by caller"),
        )
    }
}

/// The address at `n` on a family's number line (the inverse of [`Span::addr`]).
pub fn addr_at(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::from(n))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(n as u32))
    }
}
