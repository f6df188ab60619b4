//! `fibril/dns`: the cluster DNS server ([`fibril_dns`]) as a lab pod's process, in
//! CoreDNS's place.
//!
//! It reaches the API server through the lab's unix socket (`--api-socket`), as a pod
//! would mount a kubeconfig: the lab has no path from the pod network to the control
//! plane's address (nothing masquerades pod traffic onto the fabric), while the socket
//! is on the filesystem every pod process shares. `--api-url` is the in-network
//! alternative, for clusters where pods reach the API server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;

use fibril_dns::{DnsServer, ServerConfig, ZoneConfig};

/// Where the DNS workload finds the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiEndpoint {
    Socket(PathBuf),
    Url(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub api: ApiEndpoint,
    /// UDP and TCP port on every address of the pod.
    pub port: u16,
    /// HTTP readiness port (`GET /ready`).
    pub ready_port: u16,
    pub domain: String,
    pub ttl: u32,
}

/// Serves cluster DNS until the server fails.
pub async fn run_dns(cfg: DnsConfig) -> anyhow::Result<()> {
    let zone = ZoneConfig::new(&cfg.domain, cfg.ttl).context("--domain")?;
    let client = match &cfg.api {
        ApiEndpoint::Socket(p) => fibril_apiserver::client_for_socket(p)
            .with_context(|| format!("a client for the API socket {}", p.display()))?,
        ApiEndpoint::Url(u) => fibril_apiserver::client_for_url(u)
            .with_context(|| format!("a client for the API server {u}"))?,
    };
    let server = DnsServer::bind(ServerConfig {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.port)),
        ready_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.ready_port))),
        zone,
    })
    .await?;
    server.serve(client).await?;
    Ok(())
}
