//! The crate's one error type: every variant names the operation, the namespace and the
//! object it was acting on, so a failure read in a log says what was being done where.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a netlink request failed: the kernel said no (with an errno), or the exchange
/// itself went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("kernel refused: {0}")]
    Kernel(Errno),
    /// Boxed: rtnetlink's error can carry a whole message.
    #[error(transparent)]
    Protocol(Box<rtnetlink::Error>),
}

impl From<rtnetlink::Error> for NlError {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(ref msg) => match msg.code {
                // Netlink carries the negated errno.
                Some(code) => NlError::Kernel(Errno::from_raw(-code.get())),
                None => NlError::Protocol(Box::new(e)),
            },
            other => NlError::Protocol(Box::new(other)),
        }
    }
}

impl NlError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NlError::Kernel(e) => Some(*e),
            NlError::Protocol(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, opening, entering or deleting a namespace.
    #[error("netns {netns}: {op}: {source}")]
    Netns {
        op: &'static str,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("netns name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("netns {netns}: {} exists but is not a network namespace mount", path.display())]
    NotANetns { netns: String, path: PathBuf },
    /// The guard against ever changing the host: a named namespace that turns out to be
    /// the initial network namespace is refused for anything but reads.
    #[error(
        "netns {netns} is the host's initial network namespace; fibril-netlink never changes it"
    )]
    HostNetns { netns: String },
    #[error("netns {netns}: starting a netlink session: {source}")]
    Session {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("netns {netns}: {op} link {ifname}: {source}")]
    Link {
        op: &'static str,
        netns: String,
        ifname: String,
        #[source]
        source: NlError,
    },
    #[error("netns {netns}: link {ifname} not found")]
    LinkNotFound { netns: String, ifname: String },
    #[error("netns {netns}: link {ifname} is {actual}, expected {expected}")]
    LinkKind {
        netns: String,
        ifname: String,
        expected: &'static str,
        actual: String,
    },
    #[error("netns {netns}: {op} address {addr} on {ifname}: {source}")]
    Addr {
        op: &'static str,
        netns: String,
        ifname: String,
        addr: Ipv4Net,
        #[source]
        source: NlError,
    },
    #[error("netns {netns}: {op} route {dst}: {source}")]
    Route {
        op: &'static str,
        netns: String,
        dst: Ipv4Net,
        #[source]
        source: NlError,
    },
    #[error("netns {netns}: {op} neighbour {ip} on {ifname}: {source}")]
    Neigh {
        op: &'static str,
        netns: String,
        ifname: String,
        ip: Ipv4Addr,
        #[source]
        source: NlError,
    },
    #[error("netns {netns}: route {dst} needs a gateway or a device")]
    RouteTarget { netns: String, dst: Ipv4Net },
    #[error("netns {netns}: route {dst} via {via}: gateway is not an IPv4 unicast address")]
    RouteGateway {
        netns: String,
        dst: Ipv4Net,
        via: Ipv4Addr,
    },
    #[error("netns {netns}: listing {what}: {source}")]
    Dump {
        what: &'static str,
        netns: String,
        #[source]
        source: NlError,
    },
    #[error("netns {netns}: {op} sysctl {key}: {source}")]
    Sysctl {
        op: &'static str,
        netns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    /// Only `net.*` keys live in a network namespace; any other key would change the
    /// whole machine.
    #[error("sysctl key {key:?} is not a per-namespace net.* key: {reason}")]
    SysctlKey { key: String, reason: &'static str },
    /// A file-system operation outside any one namespace (/proc scans, spawn setup).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// Errors cross threads (every operation runs on one) and end up in anyhow.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
};

impl Error {
    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Link { source, .. }
            | Error::Addr { source, .. }
            | Error::Route { source, .. }
            | Error::Dump { source, .. } => source.errno(),
            Error::Netns { source, .. }
            | Error::Session { source, .. }
            | Error::Sysctl { source, .. }
            | Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// True when the error means "the namespace (or file) does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::LinkNotFound { .. }) || self.errno() == Some(Errno::ENOENT)
    }
}
