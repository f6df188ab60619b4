//! The DNS server on loopback, against an in-process API server: real UDP and TCP
//! queries, answers that follow Services and EndpointSlices as they change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use fibril_dns::{DnsServer, ServerConfig, ZoneConfig};

/// How long a change may take to show in answers (watch event + rebuild), generously.
const UPDATE_WINDOW: Duration = Duration::from_secs(5);

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

async fn udp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let q = query(name, t);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no UDP answer to {name} {t} within 2s"))
        .unwrap();
    let m = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    m
}

async fn tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let q = query(name, t).to_vec().unwrap();
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let read = async {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .unwrap_or_else(|_| panic!("no TCP answer to {name} {t} within 2s"));
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn srv_records(m: &Message) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `f` until it holds, returning how long it took.
async fn within<F, Fut>(what: &str, window: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < window, "{what}: not within {window:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A DNS server for `cluster.local` on loopback: its DNS and readiness addresses, and
/// the task serving them.
async fn start_dns(
    client: kube::Client,
) -> (
    SocketAddr,
    SocketAddr,
    tokio::task::JoinHandle<Result<(), fibril_dns::DnsError>>,
) {
    let server = DnsServer::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ready_listen: Some("127.0.0.1:0".parse().unwrap()),
        zone: ZoneConfig::new("cluster.local", 30).unwrap(),
    })
    .await
    .unwrap();
    let dns = server.local_addr();
    let ready = server.ready_addr().unwrap();
    (dns, ready, tokio::spawn(server.serve(client)))
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn serves_the_cluster_zone_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let api = fibril_apiserver::start(fibril_apiserver::ApiServerConfig {
        data_dir: dir.path().join("api"),
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        unix_socket: None,
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        bookmark_interval: Duration::from_secs(1),
    })
    .await
    .unwrap();
    let client =
        fibril_apiserver::client_for_url(&format!("http://{}", api.tcp_addr.unwrap())).unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap(),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    let pp = PostParams::default();
    services
        .create(
            &pp,
            &service(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
                ]}
            })),
        )
        .await
        .unwrap();
    services
        .create(
            &pp,
            &service(json!({
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"},
                         "ports": [{"name": "pg", "port": 5432}]}
            })),
        )
        .await
        .unwrap();
    slices
        .create(
            &pp,
            &slice(json!({
                "metadata": {"name": "db-1", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.7"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.3.9"], "conditions": {"ready": false}}
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
            })),
        )
        .await
        .unwrap();

    let (dns, ready, serving) = start_dns(client.clone()).await;

    within("readiness 200", UPDATE_WINDOW, || async {
        http_status(ready, "/ready").await == Some(200)
    })
    .await;

    // A, over UDP and TCP.
    let m = udp(dns, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(a_records(&m), vec!["10.96.0.20"]);
    assert_eq!(m.answers[0].ttl, 30);
    let m = tcp(dns, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), vec!["10.96.0.20"]);

    // SRV for the named port, with the target's address as an additional.
    let m = udp(
        dns,
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_records(&m),
        vec![(80, "web.shop.svc.cluster.local.".to_string())]
    );
    let mut additionals = Message::query();
    additionals.answers = m.additionals.clone();
    assert_eq!(a_records(&additionals), vec!["10.96.0.20"]);

    // NXDOMAIN with the SOA; NODATA for a type the name lacks.
    let m = udp(dns, "nope.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    let m = udp(dns, "web.shop.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    // Headless: the ready endpoints, per-endpoint SRV targets.
    let m = udp(dns, "db.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), vec!["10.244.1.5", "10.244.2.7"]);
    let m = udp(dns, "_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&m),
        vec![
            (5432, "10-244-1-5.db.shop.svc.cluster.local.".to_string()),
            (5432, "db-0.db.shop.svc.cluster.local.".to_string()),
        ]
    );

    // Outside the zone: refused at once, over both transports.
    let m = udp(dns, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = tcp(dns, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // A new Service resolves within the update window.
    services
        .create(
            &pp,
            &service(json!({
                "metadata": {"name": "late", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]}
            })),
        )
        .await
        .unwrap();
    let took = within("the new Service resolves", UPDATE_WINDOW, || async {
        a_records(&udp(dns, "late.shop.svc.cluster.local.", RecordType::A).await)
            == vec!["10.96.0.30"]
    })
    .await;
    eprintln!("new Service resolvable after {took:?}");

    // A deleted Service stops resolving.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    within("the deleted Service is NXDOMAIN", UPDATE_WINDOW, || async {
        udp(dns, "web.shop.svc.cluster.local.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;

    // Endpoint churn: the not-ready endpoint becomes ready, one ready one goes.
    let mut s = slices.get("db-1").await.unwrap();
    s.endpoints = Some(
        serde_json::from_value(json!([
            {"addresses": ["10.244.2.7"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.3.9"], "conditions": {"ready": true}}
        ]))
        .unwrap(),
    );
    slices.replace("db-1", &pp, &s).await.unwrap();
    within(
        "headless answers follow the slice",
        UPDATE_WINDOW,
        || async {
            a_records(&udp(dns, "db.shop.svc.cluster.local.", RecordType::A).await)
                == vec!["10.244.2.7", "10.244.3.9"]
        },
    )
    .await;

    // An answer too big for plain UDP (512 bytes) says so (TC), and TCP carries it whole.
    let endpoints: Vec<serde_json::Value> = (1..=100)
        .map(|i| json!({"addresses": [format!("10.244.7.{i}")], "conditions": {"ready": true}}))
        .collect();
    services
        .create(
            &pp,
            &service(json!({
                "metadata": {"name": "big", "namespace": "shop"},
                "spec": {"clusterIP": "None"}
            })),
        )
        .await
        .unwrap();
    slices
        .create(
            &pp,
            &slice(json!({
                "metadata": {"name": "big-1", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "big"}},
                "addressType": "IPv4",
                "endpoints": endpoints
            })),
        )
        .await
        .unwrap();
    within("the big Service resolves", UPDATE_WINDOW, || async {
        tcp(dns, "big.shop.svc.cluster.local.", RecordType::A)
            .await
            .answers
            .len()
            == 100
    })
    .await;
    let m = udp(dns, "big.shop.svc.cluster.local.", RecordType::A).await;
    assert!(m.metadata.truncation, "{:?}", m.metadata);
    assert!(m.answers.len() < 100);

    assert!(
        !serving.is_finished(),
        "the server stopped: {:?}",
        serving.await
    );
    serving.abort();
    api.shutdown().await;
}

#[tokio::test]
async fn answers_servfail_and_reports_unready_until_synced() {
    // An API server that is not there: the watches never sync.
    let client = fibril_apiserver::client_for_url("http://127.0.0.1:9").unwrap();
    let (dns, ready, serving) = start_dns(client).await;
    within("readiness answers", UPDATE_WINDOW, || async {
        http_status(ready, "/ready").await.is_some()
    })
    .await;
    assert_eq!(http_status(ready, "/ready").await, Some(503));
    // In the zone: SERVFAIL (never a cached NXDOMAIN); outside: still refused.
    let m = udp(dns, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = udp(dns, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    serving.abort();
}
