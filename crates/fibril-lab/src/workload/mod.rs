//! Built-in workloads: the images the lab kubelet runs as processes instead of containers.
//!
//! - [`echo`]: `fibril/echo` ([`fibril_core::consts::ECHO_IMAGE`]), an agnhost-netexec-like
//!   TCP/HTTP and UDP echo server.
//! - [`dns`]: `fibril/dns` ([`fibril_core::consts::DNS_IMAGE`]), the cluster DNS server.

pub mod dns;
pub mod echo;

pub use dns::{run_dns, ApiEndpoint, DnsConfig};
pub use echo::{run_echo, EchoConfig, EchoServer};
