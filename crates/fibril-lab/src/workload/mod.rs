//! Built-in workloads: the images the lab kubelet runs as processes instead of containers.
//!
//! - [`echo`]: `fibril/echo` ([`fibril_core::consts::ECHO_IMAGE`]), an agnhost-netexec-like
//!   TCP/HTTP and UDP echo server.

pub mod echo;

pub use echo::{run_echo, EchoConfig, EchoServer};
