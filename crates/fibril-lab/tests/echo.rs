//! The `fibril/echo` workload on 127.0.0.1 with ephemeral ports (no root needed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use fibril_core::consts::{ECHO_CLIENTIP_PATH, ECHO_HOSTNAME_PATH};
use fibril_lab::workload::{EchoConfig, EchoServer};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    tcp: SocketAddr,
    udp: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Running {
    let cfg = EchoConfig {
        pod_name: "web-0".into(),
        pod_namespace: "shop".into(),
        node_name: "fibril-node-1".into(),
        tcp_ports: vec![0],
        udp_ports: vec![0],
    };
    let server = EchoServer::bind(cfg, LOCALHOST).await.expect("bind");
    let tcp = server.tcp_addrs()[0];
    let udp = server.udp_addrs()[0];
    Running {
        tcp,
        udp,
        task: tokio::spawn(server.serve()),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Sends `request` raw and reads until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("server closes in time")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn http_hostname_returns_the_pod_name() {
    let echo = start().await;
    assert_eq!(
        http_get(echo.tcp, ECHO_HOSTNAME_PATH).await,
        (200, "web-0".into())
    );
}

#[tokio::test]
async fn http_other_paths_describe_pod_node_and_client() {
    let echo = start().await;
    let (status, body) = http_get(echo.tcp, "/some/path?x=1").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("echo pod=shop/web-0 node=fibril-node-1 client=127.0.0.1:"),
        "{body}"
    );
    assert!(body.ends_with(" path=/some/path?x=1\n"), "{body}");

    let (_, root) = http_get(echo.tcp, "/").await;
    assert!(root.ends_with(" path=/\n"), "{root}");
}

#[tokio::test]
async fn http_clientip_returns_the_peer_address() {
    let echo = start().await;
    let (status, body) = http_get(echo.tcp, ECHO_CLIENTIP_PATH).await;
    assert_eq!(status, 200);
    let addr: SocketAddr = body.parse().expect("ip:port");
    assert_eq!(addr.ip(), LOCALHOST);
}

#[tokio::test]
async fn http_keep_alive_serves_several_requests_on_one_connection() {
    let echo = start().await;
    let req = b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n\
                POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
                GET /hostname HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(echo.tcp, req).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{out}");
    assert!(out.contains("path=/a\n"), "{out}");
    assert!(!out.contains("path=/b"), "HEAD has no body: {out}");
    assert!(out.ends_with("\r\n\r\nweb-0"), "{out}");
    assert_eq!(out.matches("Connection: close").count(), 1, "{out}");
}

#[tokio::test]
async fn http_1_0_closes_after_the_response() {
    let echo = start().await;
    let out = raw_exchange(echo.tcp, b"GET /hostname HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nweb-0"), "{out}");
}

#[tokio::test]
async fn malformed_http_gets_400() {
    let echo = start().await;
    let out = raw_exchange(echo.tcp, b"GET / SPDY/9\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
}

#[tokio::test]
async fn non_http_bytes_are_echoed() {
    let echo = start().await;
    let mut s = TcpStream::connect(echo.tcp).await.unwrap();
    for line in ["hello\n", "second line\n"] {
        s.write_all(line.as_bytes()).await.unwrap();
        let mut buf = vec![0; line.len()];
        tokio::time::timeout(TIMEOUT, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(buf, line.as_bytes());
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_partial_line_that_could_be_http_is_echoed_after_a_pause() {
    let echo = start().await;
    let mut s = TcpStream::connect(echo.tcp).await.unwrap();
    s.write_all(b"GE").await.unwrap();
    let mut buf = [0; 2];
    tokio::time::timeout(TIMEOUT, s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&buf, b"GE");
}

#[tokio::test]
async fn udp_echoes_payloads_and_answers_hostname() {
    let echo = start().await;
    let s = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    s.connect(echo.udp).await.unwrap();
    let mut buf = [0; 1500];
    for (send, want) in [
        (&b"ping 42"[..], &b"ping 42"[..]),
        (b"hostname", b"web-0"),
        (b"hostname\n", b"web-0"),
    ] {
        s.send(send).await.unwrap();
        let n = tokio::time::timeout(TIMEOUT, s.recv(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert_eq!(&buf[..n], want);
    }
}

#[tokio::test]
async fn curl_gets_the_hostname() {
    let echo = start().await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{}{ECHO_HOSTNAME_PATH}", echo.tcp))
        .output()
        .await;
    let Ok(out) = out else {
        eprintln!("curl not installed; skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web-0");
}

#[tokio::test]
async fn binding_no_ports_is_an_error_naming_the_pod() {
    let cfg = EchoConfig {
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        node_name: "n".into(),
        tcp_ports: vec![],
        udp_ports: vec![],
    };
    let err = EchoServer::bind(cfg, LOCALHOST).await.unwrap_err();
    assert!(err.to_string().contains("ns/p"), "{err}");
}

#[tokio::test]
async fn a_port_in_use_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = EchoConfig {
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        node_name: "n".into(),
        tcp_ports: vec![port],
        udp_ports: vec![],
    };
    let err = EchoServer::bind(cfg, LOCALHOST).await.unwrap_err();
    assert!(format!("{err:#}").contains(&port.to_string()), "{err:#}");
}
