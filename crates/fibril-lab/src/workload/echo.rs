//! `fibril/echo`: the lab's stand-in for agnhost's `netexec`.
//!
//! - TCP: HTTP/1.1 when the first bytes are an HTTP request line, raw echo otherwise.
//!   - `GET /hostname` answers the pod name;
//!   - `GET /clientip` answers the client's `ip:port` as the server saw it (to see SNAT);
//!   - any other path answers `echo pod=<ns>/<name> node=<node> client=<ip:port> path=<path>`.
//! - UDP: each datagram is echoed back, except `hostname`, which gets the pod name.
//!
//! Requests are logged to stdout, which the lab kubelet keeps as the container log.

use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fibril_core::consts::{ECHO_CLIENTIP_PATH, ECHO_HOSTNAME_PATH};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// What the echo workload serves and how it introduces itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EchoConfig {
    pub pod_name: String,
    pub pod_namespace: String,
    pub node_name: String,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

/// Serves `cfg` on `0.0.0.0`, on every configured port, until a socket fails.
pub async fn run_echo(cfg: EchoConfig) -> anyhow::Result<()> {
    EchoServer::bind(cfg, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .await?
        .serve()
        .await
}

/// The largest request head (request line + headers) the HTTP side accepts.
const MAX_HEAD: usize = 64 * 1024;
/// How long to wait for the first bytes to look like an HTTP request line before
/// treating the connection as raw: a raw client may send a partial line and wait.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);
/// Enough bytes to recognise the longest method (`OPTIONS`) plus ` /`.
const SNIFF_LEN: usize = 9;
const HTTP_METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
/// The UDP command that asks for the pod name, as netexec's UDP server has it.
const UDP_HOSTNAME: &[u8] = b"hostname";

/// Bound echo sockets, before serving. Binding first lets tests use port 0 and learn the
/// ports, and makes bind failures errors of their own.
#[derive(Debug)]
pub struct EchoServer {
    cfg: Arc<EchoConfig>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl EchoServer {
    /// Binds every port of `cfg` on `ip` (port 0 picks an ephemeral port).
    pub async fn bind(cfg: EchoConfig, ip: IpAddr) -> anyhow::Result<Self> {
        if cfg.tcp_ports.is_empty() && cfg.udp_ports.is_empty() {
            anyhow::bail!(
                "echo pod {}/{}: no TCP or UDP ports to serve",
                cfg.pod_namespace,
                cfg.pod_name
            );
        }
        let mut tcp = Vec::new();
        for &port in &cfg.tcp_ports {
            let addr = SocketAddr::new(ip, port);
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding TCP {addr}"))?;
            log(format_args!("listening on tcp {}", l.local_addr()?));
            tcp.push(l);
        }
        let mut udp = Vec::new();
        for &port in &cfg.udp_ports {
            let addr = SocketAddr::new(ip, port);
            let s = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?;
            log(format_args!("listening on udp {}", s.local_addr()?));
            udp.push(s);
        }
        Ok(EchoServer {
            cfg: Arc::new(cfg),
            tcp,
            udp,
        })
    }

    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serves until one of the sockets fails.
    pub async fn serve(self) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        for l in self.tcp {
            let cfg = self.cfg.clone();
            tasks.spawn(accept_loop(l, cfg));
        }
        for s in self.udp {
            let cfg = self.cfg.clone();
            tasks.spawn(udp_loop(s, cfg));
        }
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(anyhow::anyhow!("echo task failed: {e}")),
            None => Ok(()),
        }
    }
}

fn log(args: std::fmt::Arguments<'_>) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // A closed stdout must not take the server down.
    let _ = writeln!(io::stdout().lock(), "{now} echo: {args}");
}

async fn accept_loop(listener: TcpListener, cfg: Arc<EchoConfig>) -> anyhow::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_tcp(stream, peer, &cfg).await {
                        log(format_args!("tcp {peer}: {e}"));
                    }
                });
            }
            // Out of fds or a connection reset before accept: transient, keep serving.
            Err(e) => {
                log(format_args!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn udp_loop(socket: UdpSocket, cfg: Arc<EchoConfig>) -> anyhow::Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0_u8; 65536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier replies surface here on Linux; they are not ours.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).with_context(|| format!("receiving on udp {local}")),
        };
        let payload = &buf[..n];
        let reply = if payload.trim_ascii_end() == UDP_HOSTNAME {
            log(format_args!("udp {peer} hostname"));
            cfg.pod_name.as_bytes()
        } else {
            payload
        };
        if let Err(e) = socket.send_to(reply, peer).await {
            log(format_args!("udp {peer}: reply failed: {e}"));
        }
    }
}

/// What the first bytes of a TCP connection look like.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    Http,
    Raw,
    NeedMore,
}

fn sniff(buf: &[u8]) -> Sniff {
    let starts_request = |m: &[u8]| {
        let mut line = m.to_vec();
        line.extend_from_slice(b" /");
        if buf.len() >= line.len() {
            buf.starts_with(&line)
        } else {
            line.starts_with(buf)
        }
    };
    let candidates: Vec<&[u8]> = HTTP_METHODS
        .iter()
        .copied()
        .filter(|m| starts_request(m))
        .collect();
    if candidates.is_empty() {
        return Sniff::Raw;
    }
    if candidates.iter().any(|m| buf.len() >= m.len() + 2) {
        Sniff::Http
    } else {
        Sniff::NeedMore
    }
}

async fn handle_tcp(mut stream: TcpStream, peer: SocketAddr, cfg: &EchoConfig) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let kind = loop {
        match sniff(&buf) {
            Sniff::NeedMore if buf.len() < SNIFF_LEN && !buf.contains(&b'\n') => {}
            Sniff::NeedMore => break Sniff::Raw,
            decided => break decided,
        }
        let mut chunk = [0_u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                if buf.is_empty() {
                    return Ok(());
                }
                break Sniff::Raw;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => break Sniff::Raw,
        }
    };
    match kind {
        Sniff::Http => serve_http(stream, buf, peer, cfg).await,
        _ => echo_raw(stream, buf, peer).await,
    }
}

async fn echo_raw(mut stream: TcpStream, first: Vec<u8>, peer: SocketAddr) -> io::Result<()> {
    log(format_args!("tcp {peer} raw echo"));
    stream.write_all(&first).await?;
    let (mut r, mut w) = stream.split();
    let echoed = tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await?;
    log(format_args!(
        "tcp {peer} raw echo done, {} bytes",
        echoed + first.len() as u64
    ));
    Ok(())
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    method: String,
    target: String,
    http10: bool,
    content_length: usize,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    RequestLine,
    Header,
    ContentLength,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(head: &[u8]) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::RequestLine)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HeadError::RequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine);
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HeadError::RequestLine),
    };
    if method.is_empty() || target.is_empty() {
        return Err(HeadError::RequestLine);
    }
    let mut req = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        content_length: 0,
        chunked: false,
        close: false,
        keep_alive: false,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HeadError::Header)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            req.content_length = value.parse().map_err(|_| HeadError::ContentLength)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            req.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                req.close |= token.eq_ignore_ascii_case("close");
                req.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Ok(req)
}

impl RequestHead {
    fn persistent(&self) -> bool {
        if self.http10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }
}

fn body_for(req: &RequestHead, peer: SocketAddr, cfg: &EchoConfig) -> String {
    match req.path() {
        p if p == ECHO_HOSTNAME_PATH => cfg.pod_name.clone(),
        p if p == ECHO_CLIENTIP_PATH => peer.to_string(),
        _ => format!(
            "echo pod={}/{} node={} client={peer} path={}\n",
            cfg.pod_namespace, cfg.pod_name, cfg.node_name, req.target
        ),
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    with_body: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if with_body {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await
}

async fn serve_http(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    cfg: &EchoConfig,
) -> io::Result<()> {
    let mut chunk = vec![0_u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                respond(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    "",
                    true,
                    true,
                )
                .await?;
                return Ok(());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let req = match parse_head(&buf[..head_end]) {
            Ok(req) => req,
            Err(e) => {
                log(format_args!("tcp {peer} bad request: {e:?}"));
                respond(&mut stream, "400 Bad Request", "bad request\n", true, true).await?;
                return Ok(());
            }
        };
        if req.chunked {
            log(format_args!("tcp {peer} {} {} 501", req.method, req.target));
            let msg = "chunked request bodies are not supported\n";
            respond(&mut stream, "501 Not Implemented", msg, true, true).await?;
            return Ok(());
        }
        // Discard the request body.
        let need = head_end + req.content_length;
        while buf.len() < need {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = body_for(&req, peer, cfg);
        let close = !req.persistent();
        log(format_args!("tcp {peer} {} {} 200", req.method, req.target));
        respond(&mut stream, "200 OK", &body, req.method != "HEAD", close).await?;
        if close {
            stream.shutdown().await?;
            return Ok(());
        }
        buf.drain(..need);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_http_request_lines() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS /x"), Sniff::Http);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"GET "), Sniff::NeedMore);
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"hello\n"), Sniff::Raw);
        assert_eq!(sniff(b"GET  /"), Sniff::Raw);
        assert_eq!(sniff(b"get /"), Sniff::Raw);
    }

    #[test]
    fn parses_heads_and_persistence() {
        let r = parse_head(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(r.path(), "/a");
        assert_eq!(r.target, "/a?b=c");
        assert_eq!(r.content_length, 3);
        assert!(r.persistent());
        let r = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.persistent());
        let r = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(r.persistent());
        let r = parse_head(b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").unwrap();
        assert!(!r.persistent());
        assert_eq!(
            parse_head(b"GET / HTTP/2\r\n\r\n"),
            Err(HeadError::RequestLine)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HeadError::ContentLength)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(HeadError::Header)
        );
    }
}
