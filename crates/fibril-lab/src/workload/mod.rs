//! Built-in workloads: the images the lab kubelet runs as processes instead of containers.
//!
//! - [`echo`]: `fibril/echo` ([`fibril_core::consts::ECHO_IMAGE`]), an agnhost-netexec-like
//!   TCP/HTTP and UDP echo server.
//! - [`dns`]: `fibril/dns` ([`fibril_core::consts::DNS_IMAGE`]), the cluster DNS server.
//! - [`netpol`]: `fibril/netpol-server` ([`fibril_core::consts::NETPOL_SERVER_IMAGE`]), the
//!   NetworkPolicy conformance server (TCP, UDP, SCTP) and its probe.

pub mod dns;
pub mod echo;
pub mod netpol;

pub use dns::{run_dns, ApiEndpoint, DnsConfig};
pub use echo::{run_echo, EchoConfig, EchoServer};
pub use netpol::{run_netpol_server, NetpolServerConfig};
