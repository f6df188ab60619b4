//! `fibril/netpol-server`: the lab's stand-in for the agnhost servers of the upstream
//! NetworkPolicy tests (`serve-hostname --tcp` / `--udp`, `porter` for SCTP), and the probe
//! that `fibril connectivity netpol` runs from inside a source pod's network namespace.
//!
//! The wire format is defined here once, for both sides: the server answers every TCP or
//! SCTP connection, and every UDP datagram, with its pod's identity line
//! `<namespace>/<name>\n` ([`identity`]), then closes the connection. A probe reports what
//! it read, so the runner can tell a connection to the pod it meant from one that service
//! translation sent elsewhere, and a silent drop (timeout) from a refusal.
//!
//! SCTP uses the one-to-one socket style (`SOCK_STREAM`, `IPPROTO_SCTP`), which behaves
//! like TCP for connect, accept, read and write, so both go through the same code.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fibril_core::services::L4Proto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

/// The longest identity line a probe reads before giving up on it.
const MAX_IDENTITY: usize = 512;
/// What a UDP probe sends (any datagram gets the identity back).
const UDP_PROBE: &[u8] = b"probe\n";
/// Listen backlog: a conformance step opens hundreds of connections at once.
const BACKLOG: i32 = 1024;

/// A pod's identity as the server sends it and a probe expects it (without the newline).
pub fn identity(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the server serves and who it says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetpolServerConfig {
    pub pod_name: String,
    pub pod_namespace: String,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub sctp: Vec<u16>,
    /// Leave SCTP ports unserved, with a log line, when the kernel has no SCTP, instead of
    /// failing. Only when asked (the conformance runner asks after it found SCTP missing and
    /// reports SCTP cells as unsupported).
    pub skip_unsupported_sctp: bool,
}

/// A new non-blocking, close-on-exec IPv4 socket for `proto`, in the calling thread's
/// network namespace (a socket keeps the namespace it was created in).
pub fn new_socket(proto: L4Proto) -> io::Result<Socket> {
    let (ty, p) = match proto {
        L4Proto::Tcp => (Type::STREAM, Protocol::TCP),
        L4Proto::Udp => (Type::DGRAM, Protocol::UDP),
        L4Proto::Sctp => (Type::STREAM, Protocol::from(libc::IPPROTO_SCTP)),
    };
    let s = Socket::new(Domain::IPV4, ty, Some(p))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT)
    )
}

/// Whether this kernel gives out SCTP sockets; the error says why not. SCTP is a
/// kernel-wide facility, so the answer holds in every network namespace.
pub fn sctp_support() -> Result<(), String> {
    match new_socket(L4Proto::Sctp) {
        Ok(_) => Ok(()),
        Err(e) if is_unsupported(&e) => Err(format!(
            "the kernel refuses SCTP sockets (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}): \
             SCTP is not built in and the sctp module is not loaded; loading a kernel module \
             is a host change fibril does not make"
        )),
        Err(e) => Err(format!(
            "an SCTP socket could not be created (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e})"
        )),
    }
}

fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // A closed stdout must not take the server down.
    let _ = writeln!(io::stdout().lock(), "{now} netpol-server: {args}");
}

/// Serves `cfg` on `0.0.0.0` until a socket fails. With nothing left to serve (only
/// skipped SCTP ports), it idles: the container stays up, as its declared ports must.
pub async fn run_netpol_server(cfg: NetpolServerConfig) -> anyhow::Result<()> {
    NetpolServer::bind(&cfg, Ipv4Addr::UNSPECIFIED)
        .await?
        .serve()
        .await
}

/// Bound sockets, before serving (binding first lets tests use port 0 and learn the ports).
#[derive(Debug)]
pub struct NetpolServer {
    line: Arc<[u8]>,
    streams: Vec<(L4Proto, TcpListener)>,
    udp: Vec<UdpSocket>,
}

fn listen(proto: L4Proto, addr: SocketAddrV4) -> io::Result<TcpListener> {
    let s = new_socket(proto)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    s.listen(BACKLOG)?;
    TcpListener::from_std(std::net::TcpListener::from(s))
}

impl NetpolServer {
    /// Binds every port of `cfg` on `ip` (port 0 picks an ephemeral port).
    pub async fn bind(cfg: &NetpolServerConfig, ip: Ipv4Addr) -> anyhow::Result<Self> {
        let mut line = identity(&cfg.pod_namespace, &cfg.pod_name).into_bytes();
        line.push(b'\n');
        let mut streams = Vec::new();
        for &port in &cfg.tcp {
            let addr = SocketAddrV4::new(ip, port);
            let l = listen(L4Proto::Tcp, addr).with_context(|| format!("binding TCP {addr}"))?;
            log(format_args!("listening on tcp {}", l.local_addr()?));
            streams.push((L4Proto::Tcp, l));
        }
        for &port in &cfg.sctp {
            let addr = SocketAddrV4::new(ip, port);
            match listen(L4Proto::Sctp, addr) {
                Ok(l) => {
                    log(format_args!("listening on sctp {}", l.local_addr()?));
                    streams.push((L4Proto::Sctp, l));
                }
                Err(e) if is_unsupported(&e) && cfg.skip_unsupported_sctp => {
                    log(format_args!(
                        "not serving sctp {addr}: the kernel has no SCTP ({e}); skipped as asked \
                         (--skip-unsupported-sctp)"
                    ));
                }
                Err(e) => {
                    let hint = if is_unsupported(&e) {
                        " (the kernel has no SCTP; --skip-unsupported-sctp leaves SCTP ports \
                         unserved)"
                    } else {
                        ""
                    };
                    return Err(e).with_context(|| format!("binding SCTP {addr}{hint}"));
                }
            }
        }
        let mut udp = Vec::new();
        for &port in &cfg.udp {
            let addr = SocketAddrV4::new(ip, port);
            let s = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?;
            log(format_args!("listening on udp {}", s.local_addr()?));
            udp.push(s);
        }
        Ok(NetpolServer {
            line: line.into(),
            streams,
            udp,
        })
    }

    /// Every bound address, by protocol.
    pub fn addrs(&self) -> Vec<(L4Proto, SocketAddr)> {
        let streams = self
            .streams
            .iter()
            .filter_map(|(p, l)| Some((*p, l.local_addr().ok()?)));
        let udp = self
            .udp
            .iter()
            .filter_map(|s| Some((L4Proto::Udp, s.local_addr().ok()?)));
        streams.chain(udp).collect()
    }

    /// Serves until one of the sockets fails.
    pub async fn serve(self) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        for (proto, l) in self.streams {
            tasks.spawn(accept_loop(proto, l, self.line.clone()));
        }
        for s in self.udp {
            tasks.spawn(udp_loop(s, self.line.clone()));
        }
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(anyhow::anyhow!("netpol-server task failed: {e}")),
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(proto: L4Proto, listener: TcpListener, line: Arc<[u8]>) -> anyhow::Result<()> {
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                let line = line.clone();
                tokio::spawn(async move {
                    let r = async {
                        stream.write_all(&line).await?;
                        stream.shutdown().await
                    }
                    .await;
                    if let Err(e) = r {
                        log(format_args!("{proto} {peer}: {e}"));
                    }
                });
            }
            // Out of fds or a connection reset before accept: transient, keep serving.
            Err(e) => {
                log(format_args!("{proto} accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn udp_loop(socket: UdpSocket, line: Arc<[u8]>) -> anyhow::Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0_u8; 2048];
    loop {
        let peer = match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => peer,
            // ICMP errors of earlier replies surface here on Linux; they are not ours.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).with_context(|| format!("receiving on udp {local}")),
        };
        if let Err(e) = socket.send_to(&line, peer).await {
            log(format_args!("udp {peer}: reply failed: {e}"));
        }
    }
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Connected (TCP, SCTP) or answered (UDP), and the server said who it is.
    Answered(String),
    /// Connected, but no identity line came back: why.
    Silent(String),
    /// Refused: a TCP reset or an ICMP port unreachable.
    Refused,
    /// Nothing came back before the deadline: the packets were dropped.
    Timeout,
    /// Any other error (e.g. no route, host unreachable).
    Failed(String),
}

/// Probes `dst` over `proto` with `sock` (from [`new_socket`], created in the source's
/// network namespace), within `timeout` for the whole exchange.
pub async fn probe(
    sock: Socket,
    proto: L4Proto,
    dst: SocketAddrV4,
    timeout: Duration,
) -> ProbeOutcome {
    let deadline = Instant::now() + timeout;
    match proto {
        L4Proto::Tcp | L4Proto::Sctp => probe_stream(sock, dst, deadline).await,
        L4Proto::Udp => probe_udp(sock, dst, timeout, deadline).await,
    }
}

async fn probe_stream(sock: Socket, dst: SocketAddrV4, deadline: Instant) -> ProbeOutcome {
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    let mut stream = match timeout_at(deadline, sock.connect(SocketAddr::V4(dst))).await {
        Err(_elapsed) => return ProbeOutcome::Timeout,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return ProbeOutcome::Refused,
        Ok(Err(e)) => return ProbeOutcome::Failed(format!("connect: {e}")),
        Ok(Ok(s)) => s,
    };
    read_identity(&mut stream, deadline).await
}

async fn read_identity(stream: &mut TcpStream, deadline: Instant) -> ProbeOutcome {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 256];
    loop {
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_elapsed) => {
                return ProbeOutcome::Silent(
                    "connected, but the server sent no identity before the deadline".into(),
                )
            }
            Ok(Err(e)) => return ProbeOutcome::Silent(format!("connected, then {e}")),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > MAX_IDENTITY {
                    break;
                }
            }
        }
    }
    parse_identity(&buf)
}

/// The identity line at the start of `buf`.
fn parse_identity(buf: &[u8]) -> ProbeOutcome {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return ProbeOutcome::Silent(format!(
            "connected, but the answer {:?} is not an identity line",
            String::from_utf8_lossy(&buf[..buf.len().min(64)])
        ));
    };
    match std::str::from_utf8(&buf[..end]) {
        Ok(s) if !s.is_empty() => ProbeOutcome::Answered(s.to_string()),
        _ => ProbeOutcome::Silent(format!(
            "connected, but the answer {:?} is not an identity line",
            String::from_utf8_lossy(&buf[..end.min(64)])
        )),
    }
}

async fn probe_udp(
    sock: Socket,
    dst: SocketAddrV4,
    timeout: Duration,
    deadline: Instant,
) -> ProbeOutcome {
    let sock = match UdpSocket::from_std(std::net::UdpSocket::from(sock)) {
        Ok(s) => s,
        Err(e) => return ProbeOutcome::Failed(format!("udp socket: {e}")),
    };
    if let Err(e) = sock.connect(SocketAddr::V4(dst)).await {
        return ProbeOutcome::Failed(format!("connect: {e}"));
    }
    // A lost datagram must not read as a drop by policy: send again a few times within
    // the deadline.
    let resend = (timeout / 4).max(Duration::from_millis(20));
    let mut buf = [0_u8; MAX_IDENTITY + 1];
    loop {
        match sock.send(UDP_PROBE).await {
            Ok(_) => {}
            // The ICMP port unreachable of an earlier datagram.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return ProbeOutcome::Refused,
            Err(e) => return ProbeOutcome::Failed(format!("send: {e}")),
        }
        let wait = deadline.min(Instant::now() + resend);
        match timeout_at(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return parse_identity(&buf[..n]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return ProbeOutcome::Refused
            }
            Ok(Err(e)) => return ProbeOutcome::Failed(format!("receive: {e}")),
            Err(_elapsed) if Instant::now() >= deadline => return ProbeOutcome::Timeout,
            Err(_elapsed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(500);

    fn cfg(sctp: Vec<u16>, skip: bool) -> NetpolServerConfig {
        NetpolServerConfig {
            pod_name: "a".into(),
            pod_namespace: "x".into(),
            tcp: vec![0],
            udp: vec![0],
            sctp,
            skip_unsupported_sctp: skip,
        }
    }

    fn v4(a: SocketAddr) -> SocketAddrV4 {
        match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    async fn probe_lo(proto: L4Proto, dst: SocketAddrV4) -> ProbeOutcome {
        probe(new_socket(proto).unwrap(), proto, dst, T).await
    }

    #[test]
    fn identity_lines_parse() {
        assert_eq!(
            parse_identity(b"x/a\n"),
            ProbeOutcome::Answered("x/a".into())
        );
        assert_eq!(
            parse_identity(b"x/a\nmore"),
            ProbeOutcome::Answered("x/a".into())
        );
        assert!(matches!(parse_identity(b"x/a"), ProbeOutcome::Silent(_)));
        assert!(matches!(parse_identity(b"\n"), ProbeOutcome::Silent(_)));
        assert!(matches!(parse_identity(b""), ProbeOutcome::Silent(_)));
    }

    #[tokio::test]
    async fn tcp_and_udp_answer_with_the_pod_identity() {
        let server = NetpolServer::bind(&cfg(vec![], false), Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        let addrs = server.addrs();
        assert_eq!(addrs.len(), 2);
        tokio::spawn(server.serve());
        for (proto, addr) in addrs {
            assert_eq!(
                probe_lo(proto, v4(addr)).await,
                ProbeOutcome::Answered("x/a".into()),
                "{proto}"
            );
        }
    }

    #[tokio::test]
    async fn closed_ports_are_refused_and_silent_udp_times_out() {
        // Ports that were just free: nothing listens on them.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_tcp = v4(tcp.local_addr().unwrap());
        drop(tcp);
        assert_eq!(
            probe_lo(L4Proto::Tcp, closed_tcp).await,
            ProbeOutcome::Refused
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_udp = v4(udp.local_addr().unwrap());
        drop(udp);
        assert_eq!(
            probe_lo(L4Proto::Udp, closed_udp).await,
            ProbeOutcome::Refused
        );
        // A bound socket that never answers: the probe gives up at its deadline.
        let mute = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = std::time::Instant::now();
        assert_eq!(
            probe_lo(L4Proto::Udp, v4(mute.local_addr().unwrap())).await,
            ProbeOutcome::Timeout
        );
        assert!(start.elapsed() >= T);
        // A TCP server that accepts but says nothing is not a pass.
        let quiet = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quiet_addr = v4(quiet.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let (s, _) = quiet.accept().await.unwrap();
            tokio::time::sleep(2 * T).await;
            drop(s);
        });
        assert!(matches!(
            probe_lo(L4Proto::Tcp, quiet_addr).await,
            ProbeOutcome::Silent(_)
        ));
        hold.abort();
    }

    #[tokio::test]
    async fn sctp_is_served_or_refused_with_the_reason_unless_skipping_was_asked() {
        match sctp_support() {
            Ok(()) => {
                let mut c = cfg(vec![0], false);
                c.tcp.clear();
                c.udp.clear();
                let server = NetpolServer::bind(&c, Ipv4Addr::LOCALHOST).await.unwrap();
                let addrs = server.addrs();
                tokio::spawn(server.serve());
                assert_eq!(addrs.len(), 1);
                assert_eq!(addrs[0].0, L4Proto::Sctp);
                assert_eq!(
                    probe_lo(L4Proto::Sctp, v4(addrs[0].1)).await,
                    ProbeOutcome::Answered("x/a".into())
                );
            }
            Err(reason) => {
                assert!(reason.contains("SCTP"), "{reason}");
                let e = NetpolServer::bind(&cfg(vec![80], false), Ipv4Addr::LOCALHOST)
                    .await
                    .unwrap_err();
                assert!(
                    format!("{e:#}").contains("--skip-unsupported-sctp"),
                    "{e:#}"
                );
                let server = NetpolServer::bind(&cfg(vec![80], true), Ipv4Addr::LOCALHOST)
                    .await
                    .unwrap();
                assert!(server.addrs().iter().all(|(p, _)| *p != L4Proto::Sctp));
                assert_eq!(server.addrs().len(), 2);
            }
        }
    }
}
