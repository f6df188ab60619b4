//! fibril-dns: the cluster DNS server, on hickory.
//!
//! - [`zone`]: pure. A snapshot of Services and EndpointSlices → DNS answers, per the
//!   Kubernetes DNS specification.
//! - [`server`]: hickory's UDP/TCP server answering from the zone, kept current by kube-rs
//!   watches, plus an HTTP readiness endpoint. Names outside the cluster zone are REFUSED.

pub mod server;
pub mod zone;

pub use server::{DnsError, DnsServer, ServerConfig, ZoneHandle};
pub use zone::{Answer, Zone, ZoneConfig, ZoneConfigError};
