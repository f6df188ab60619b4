//! The DNS server: hickory's UDP and TCP listeners answering from the current [`Zone`],
//! the zone kept current by watching Services and EndpointSlices through kube-rs, and an
//! HTTP readiness endpoint.
//!
//! Until the first full list of both kinds has arrived, every question about the cluster
//! zone gets SERVFAIL (and readiness says 503): an empty zone would answer NXDOMAIN, and
//! resolvers would cache that.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::Api;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;

use crate::zone::{Answer, Zone, ZoneConfig};

/// How long a TCP client may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Outgoing buffer per TCP connection, in responses.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Where the server listens and what it serves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP and TCP DNS address (`0.0.0.0:53`). Port 0 picks one free port for both.
    pub listen: SocketAddr,
    /// HTTP readiness (`GET /ready`); `None` serves none.
    pub ready_listen: Option<SocketAddr>,
    pub zone: ZoneConfig,
}

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {kind} watch ended")]
    WatchEnded { kind: &'static str },
    #[error("the {what} task failed: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("serving DNS: {0}")]
    Serve(String),
    #[error("serving readiness: {0}")]
    Ready(std::io::Error),
}

/// The zone the handler answers from; `None` until the first sync.
#[derive(Clone, Debug, Default)]
pub struct ZoneHandle(Arc<RwLock<Option<Arc<Zone>>>>);

impl ZoneHandle {
    pub fn publish(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(zone));
    }

    pub fn current(&self) -> Option<Arc<Zone>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }
}

/// hickory's request handler over a [`ZoneHandle`].
pub struct Handler {
    zone: ZoneHandle,
    cfg: ZoneConfig,
}

impl Handler {
    pub fn new(zone: ZoneHandle, cfg: ZoneConfig) -> Self {
        Handler { zone, cfg }
    }

    fn answer(&self, request: &Request) -> Answer {
        let Ok(info) = request.request_info() else {
            return error_answer(ResponseCode::FormErr);
        };
        let q = info.query;
        let name = hickory_proto::rr::Name::from(q.name().clone());
        match self.zone.current() {
            Some(zone) => zone.answer(&name, q.query_type(), q.query_class()),
            None if self.cfg.origin.zone_of(&name.to_lowercase()) => {
                error_answer(ResponseCode::ServFail)
            }
            None => error_answer(ResponseCode::Refused),
        }
    }
}

fn error_answer(rcode: ResponseCode) -> Answer {
    Answer {
        rcode,
        authoritative: false,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // EDNS: answer with OPT when asked with it, keeping the client's payload size.
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let answer = if request.metadata.message_type != MessageType::Query {
            error_answer(ResponseCode::FormErr)
        } else if request.metadata.op_code != OpCode::Query {
            error_answer(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            error_answer(ResponseCode::BADVERS)
        } else {
            self.answer(request)
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;
        let builder = MessageResponseBuilder::new(&request.queries, resp_edns.as_ref());
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "sending a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Bound sockets, before serving: binding first lets tests use port 0 and makes a busy
/// port an error of its own.
pub struct DnsServer {
    cfg: ServerConfig,
    udp: UdpSocket,
    tcp: TcpListener,
    ready: Option<TcpListener>,
}

impl DnsServer {
    pub async fn bind(cfg: ServerConfig) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let ready = match cfg.ready_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DnsError::Bind {
                        proto: "tcp (readiness)",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(DnsServer {
            cfg,
            udp,
            tcp,
            ready,
        })
    }

    /// The DNS address (the same port for UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or(self.cfg.listen)
    }

    pub fn ready_addr(&self) -> Option<SocketAddr> {
        self.ready.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until a watch or a listener fails.
    pub async fn serve(self, client: kube::Client) -> Result<(), DnsError> {
        let zone = ZoneHandle::default();
        let mut server = Server::new(Handler::new(zone.clone(), self.cfg.zone.clone()));
        server.register_socket(self.udp);
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.ready {
            let zone = zone.clone();
            tasks.spawn(async move { serve_ready(l, zone).await });
        }
        {
            let zone = zone.clone();
            let cfg = self.cfg.zone.clone();
            tasks.spawn(async move { watch(client, cfg, zone).await });
        }
        tracing::info!(
            addr = %self.cfg.listen,
            zone = %self.cfg.zone.origin,
            ttl = self.cfg.zone.ttl,
            "serving cluster DNS (names outside the zone are refused)"
        );
        tokio::select! {
            r = server.block_until_done() => {
                r.map_err(|e| DnsError::Serve(e.to_string()))?;
                Err(DnsError::Serve("the DNS listeners stopped".into()))
            }
            Some(r) = tasks.join_next() => match r {
                Ok(r) => r,
                Err(source) => Err(DnsError::Task { what: "server", source }),
            },
        }
    }
}

/// UDP and TCP on one port; with port 0, a free port both can have.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(udp_err)?;
        let port = udp.local_addr().map_err(udp_err)?.port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && attempts < 16 => {
                tracing::debug!(error = %e, port, "TCP port taken; picking another");
                attempts += 1;
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
}

/// `GET /ready` (and `/health`): 200 once synced, 503 before.
async fn serve_ready(listener: TcpListener, zone: ZoneHandle) -> Result<(), DnsError> {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            fibril_core::consts::DNS_READY_PATH,
            axum::routing::get(move || {
                let zone = zone.clone();
                async move {
                    if zone.is_ready() {
                        (StatusCode::OK, "OK")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not synced")
                    }
                }
            }),
        )
        .route("/health", axum::routing::get(|| async { "OK" }));
    axum::serve(listener, app).await.map_err(DnsError::Ready)
}

/// Keeps `zone` equal to the cluster's Services and EndpointSlices.
pub async fn watch(
    client: kube::Client,
    cfg: ZoneConfig,
    zone: ZoneHandle,
) -> Result<(), DnsError> {
    let changed = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, eps_writer) = reflector::store::<EndpointSlice>();
    let svc_watch = reflect(
        Api::<Service>::all(client.clone()),
        svc_writer,
        changed.clone(),
        "Service",
    );
    let eps_watch = reflect(
        Api::<EndpointSlice>::all(client),
        eps_writer,
        changed.clone(),
        "EndpointSlice",
    );
    let rebuild = async {
        // Both stores hold a full list before the first zone is published.
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let mut serial = 0u32;
        loop {
            let svcs = services.state();
            let eps = slices.state();
            let svc_refs: Vec<&Service> = svcs.iter().map(|s| s.as_ref()).collect();
            let eps_refs: Vec<&EndpointSlice> = eps.iter().map(|s| s.as_ref()).collect();
            serial = next_serial(serial);
            let z = Zone::build(&cfg, &svc_refs, &eps_refs, serial);
            for s in z.skipped() {
                tracing::warn!(object = %s.object, reason = %s.reason, "left out of the zone");
            }
            if !zone.is_ready() {
                tracing::info!(
                    services = svc_refs.len(),
                    endpointslices = eps_refs.len(),
                    "synced; answering"
                );
            }
            zone.publish(z);
            changed.notified().await;
        }
    };
    tokio::select! {
        () = svc_watch => Err(DnsError::WatchEnded { kind: "Service" }),
        () = eps_watch => Err(DnsError::WatchEnded { kind: "EndpointSlice" }),
        () = rebuild => Ok(()),
    }
}

/// A watch of one kind into its reflector store, waking the zone builder on every event.
/// Watch errors are retried with back-off and logged; the stream only ends when the
/// watcher gives up.
async fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    kind: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|ev| {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind, error = %e, "watch"),
            }
            futures::future::ready(())
        })
        .await;
}

/// SOA serials: the Unix time of the change (CoreDNS's choice), strictly increasing.
fn next_serial(prev: u32) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    now.max(prev.wrapping_add(1))
}

/// The unspecified IPv4 address on the DNS port: where the lab's DNS pod listens.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, fibril_core::consts::DNS_PORT))
}
