//! Service tables: what one node's datapath load-balances.
//!
//! This is the boundary between the control plane (Services and
//! EndpointSlices, translated per node) and the BPF service maps. A table
//! is already resolved for the node it is built for: every frontend carries
//! the final backend list it may pick from, after traffic policies,
//! readiness and terminating-endpoint fallback. The datapath never
//! re-applies Kubernetes semantics; it only looks up, picks and translates.
//!
//! Pure data: no I/O.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub mod model;
pub mod translate;

/// A transport protocol a Service port can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    /// The IP protocol number (IPPROTO_*), as the datapath keys on it.
    pub fn ip_proto(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
            L4Proto::Sctp => "SCTP",
        })
    }
}

/// How a frontend came to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    /// `spec.clusterIP` (and every entry of `spec.clusterIPs` for IPv4).
    ClusterIp,
    /// `<node InternalIP>:<nodePort>` on this node.
    NodePort,
    /// An entry of `spec.externalIPs` that passed the allowed-range guard.
    ExternalIp,
    /// An ingress IP from `status.loadBalancer.ingress`.
    LoadBalancer,
}

/// Which clients a frontend entry serves.
///
/// With `externalTrafficPolicy: Local`, traffic from outside the node may
/// only reach this node's backends, while pods on this node that use the
/// same NodePort/ExternalIP/LoadBalancer address are internal clients and
/// may reach every backend (Kubernetes treats pod-to-own-node NodePort
/// traffic as internal). Such a frontend is then present twice: once
/// `External` (local backends) and once `Internal` (all backends). When the
/// two sets are equal, only the `External` entry exists and serves both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    External,
    Internal,
}

/// The address a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: L4Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// One endpoint a frontend may send a new connection to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    /// The resolved target port (named targetPorts are resolved per pod).
    pub port: u16,
    /// The endpoint runs on the node this table is built for.
    pub local: bool,
    /// The endpoint is serving but terminating; it is only in the list
    /// because no ready endpoint exists (KEP-1669 fallback).
    pub terminating: bool,
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One frontend of one Service port, with its final backend list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub service: ServiceName,
    /// The Service port's `name` ("" when the port is unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    pub scope: Scope,
    pub frontend: Frontend,
    /// The backends a new connection may pick from, in a stable order.
    /// Empty means the Service has no usable endpoint for this frontend:
    /// the datapath rejects (TCP RST / ICMP port unreachable), it never
    /// blackholes.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout_secs: Option<u32>,
    /// External clients keep their source address (`externalTrafficPolicy:
    /// Local`); otherwise traffic from outside forwarded to a remote backend
    /// is masqueraded to the node address.
    pub preserve_client_ip: bool,
}

/// Everything one node's datapath load-balances, sorted by
/// (frontend, scope) with no duplicate key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub entries: Vec<ServiceEntry>,
}

impl ServiceTable {
    /// Sorts the entries into the table's canonical order.
    pub fn normalize(&mut self) {
        self.entries.sort_by(|a, b| {
            (a.frontend, a.scope, &a.service).cmp(&(b.frontend, b.scope, &b.service))
        });
    }

    /// The entry serving `frontend` for `scope`, if any.
    pub fn get(&self, frontend: &Frontend, scope: Scope) -> Option<&ServiceEntry> {
        self.entries
            .iter()
            .find(|e| e.frontend == *frontend && e.scope == scope)
    }
}
