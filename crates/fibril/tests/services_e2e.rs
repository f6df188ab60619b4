//! End-to-end: Services with no kube-proxy, on a real 3-node lab running fibril's agent
//! and BPF datapath (`--cni fibril`). The rows named below are those of
//! `shared/conformance/service-behaviours.md`; each check follows what upstream's e2e test
//! asserts, with a client in a pod, node or the world host.
//!
//! - "Reached": a new connection gets the expected pod's answer.
//! - "Rejected": the connection is refused (TCP RST, or ICMP port unreachable for UDP)
//!   within a second: a timeout does not count.
//! - Dataplane programming lag is polled for with a deadline, never slept for, except
//!   where time passing is the behaviour (the session affinity timeout).
//!
//! Clients run in the test process inside the client's network namespace (setns), so
//! refusals and timings are seen exactly. Two labs: ClusterIP behaviours, then NodePort,
//! external traffic, LoadBalancer, no netfilter, and an agent restart.
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. Each lab has a unique `fibt…` name and is removed on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fibril_netlink::NetNs;
use serde_json::{json, Value};

mod common;

use common::{ensure_fibril_cni, ready, wait_for, Lab};

/// The namespace every object of these tests lives in.
const NS: &str = "svc";
/// How long the datapath may take to follow an API change.
const LAG: Duration = Duration::from_secs(30);
/// A refusal must come at least this fast.
const REJECT_WITHIN: Duration = Duration::from_secs(1);
/// The lab's world host (`LabLayout::world_host_ip`).
const WORLD_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// An allowed externalIP (in the lab's `LabLayout::external_ip_cidr`, on no node).
const ALLOWED_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

// ---------------------------------------------------------------------------------------
// Clients

/// Why a request got no answer.
#[derive(Debug)]
enum Fail {
    /// RST or ICMP unreachable, after this long.
    Refused(Duration),
    Timeout,
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Refused(t) => write!(f, "refused after {t:?}"),
            Fail::Timeout => f.write_str("timed out"),
            Fail::Other(e) => f.write_str(e),
        }
    }
}

fn classify(e: std::io::Error, started: Instant) -> Fail {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Fail::Refused(started.elapsed()),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Fail::Timeout,
        _ => Fail::Other(e.to_string()),
    }
}

/// One HTTP/1.0 GET on a new connection from inside `ns`; the body, trimmed.
fn http(ns: &NetNs, addr: SocketAddrV4, path: &str) -> Result<String, Fail> {
    http_within(ns, addr, path, Duration::from_secs(2))
}

/// [`http`] with `timeout` to connect (and half as long again to answer).
fn http_within(
    ns: &NetNs,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<String, Fail> {
    ns.run(|| {
        let started = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| classify(e, started))?;
        s.set_read_timeout(Some(timeout * 3 / 2)).ok();
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: svc\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| classify(e, started))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| classify(e, started))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .ok_or_else(|| Fail::Other(format!("not an HTTP answer: {text:?}")))?;
        Ok(body.trim().to_string())
    })
    .map_err(|e| Fail::Other(e.to_string()))?
}

/// One datagram and its answer, on a connected UDP socket from inside `ns` (so ICMP port
/// unreachable comes back as a refusal).
fn udp(ns: &NetNs, addr: SocketAddrV4, msg: &str) -> Result<String, Fail> {
    ns.run(|| {
        let started = Instant::now();
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| classify(e, started))?;
        s.connect(addr).map_err(|e| classify(e, started))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.send(msg.as_bytes()).map_err(|e| classify(e, started))?;
        let mut buf = [0u8; 2048];
        let n = s.recv(&mut buf).map_err(|e| classify(e, started))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
    .map_err(|e| Fail::Other(e.to_string()))?
}

fn hostname(ns: &NetNs, addr: SocketAddrV4) -> Result<String, Fail> {
    http(ns, addr, "/hostname")
}

/// The backends `n` new connections reach (errors counted under their description).
fn spread(ns: &NetNs, addr: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let k = match hostname(ns, addr) {
            Ok(h) => h,
            Err(e) => format!("ERROR {e}"),
        };
        *seen.entry(k).or_insert(0) += 1;
    }
    seen
}

fn names(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

/// `f` until it succeeds, for at most `timeout`; panics with its last error.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Every one of `n` new connections reaches exactly the backends `want` (each at least once
/// when `all` is set).
fn reaches(
    ns: &NetNs,
    addr: SocketAddrV4,
    want: &BTreeSet<String>,
    n: usize,
    all: bool,
) -> Result<(), String> {
    let seen = spread(ns, addr, n);
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    if got.is_subset(want) && (!all || got == *want) {
        Ok(())
    } else {
        Err(format!("{addr}: wanted {want:?}, got {seen:?}"))
    }
}

/// The request is refused fast.
fn refused(r: Result<String, Fail>) -> Result<(), String> {
    match r {
        Err(Fail::Refused(t)) if t < REJECT_WITHIN => Ok(()),
        other => Err(format!(
            "wanted a refusal within {REJECT_WITHIN:?}, got {other:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The lab

struct Cluster {
    lab: Lab,
    files: AtomicUsize,
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

impl Cluster {
    fn up() -> Cluster {
        ensure_fibril_cni();
        let lab = Lab::up(3, &["--cni", "fibril", "--routing", "native"]);
        let c = Cluster {
            lab,
            files: AtomicUsize::new(0),
        };
        c.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})]);
        c
    }

    fn node(&self, i: u8) -> String {
        self.lab.node(i)
    }

    fn layout(&self) -> fibril_core::lab::LabLayout {
        fibril_core::lab::LabSpec {
            name: self.lab.name.parse().unwrap(),
            ..fibril_core::lab::LabSpec::default()
        }
        .layout()
    }

    fn node_ip(&self, i: u8) -> Ipv4Addr {
        self.layout().node_ip(i)
    }

    fn node_ns(&self, i: u8) -> NetNs {
        NetNs::open(&self.layout().node_netns(i)).unwrap()
    }

    fn world_ns(&self) -> NetNs {
        NetNs::open(&self.layout().world_netns()).unwrap()
    }

    fn write(&self, docs: &[Value]) -> String {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.lab.state_root.join(format!("m{n}.yaml"));
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        std::fs::write(&path, text.join("\n---\n")).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn apply(&self, docs: &[Value]) {
        let f = self.write(docs);
        self.lab.ok(&["lab", "apply", "-f", &f]);
    }

    fn delete(&self, docs: &[Value]) {
        let f = self.write(docs);
        self.lab.ok(&["lab", "delete", "-f", &f]);
    }

    /// The pods named, once all are Ready with an IP.
    fn ready_pods(&self, wanted: &[&str]) -> BTreeMap<String, Value> {
        wait_for("Ready pods", Duration::from_secs(120), || {
            let v = self
                .lab
                .json(&["lab", "get", "pods", "-n", NS, "-o", "json"]);
            let pods: BTreeMap<String, Value> = v["items"]
                .as_array()?
                .iter()
                .filter(|p| wanted.contains(&p["metadata"]["name"].as_str().unwrap_or("")))
                .filter(|p| ready(p) && p["status"]["podIP"].is_string())
                .map(|p| {
                    (
                        p["metadata"]["name"].as_str().unwrap().to_string(),
                        p.clone(),
                    )
                })
                .collect();
            (pods.len() == wanted.len()).then_some(pods)
        })
    }

    fn pod_ns(&self, pod: &Value) -> NetNs {
        NetNs::open(
            &self
                .layout()
                .pod_netns(pod["metadata"]["uid"].as_str().unwrap()),
        )
        .unwrap()
    }

    fn service(&self, name: &str) -> Value {
        self.lab
            .json(&["lab", "get", "services", "-n", NS, "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Service {name}"))
            .clone()
    }

    fn cluster_ip(&self, name: &str) -> Ipv4Addr {
        self.service(name)["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn node_port(&self, name: &str, port: &str) -> u16 {
        let s = self.service(name);
        s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port)
            .and_then(|p| p["nodePort"].as_u64())
            .unwrap_or_else(|| panic!("no nodePort {port} in {s}")) as u16
    }

    /// The endpoints of every EndpointSlice of Service `svc`.
    fn endpoints_of(&self, svc: &str) -> Vec<Value> {
        let v = self
            .lab
            .json(&["lab", "get", "endpointslices", "-n", NS, "-o", "json"]);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc)
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The entry of `node`'s service maps for `vip:port` (any protocol, first found).
    fn bpf_entry(&self, node: &str, vip: Ipv4Addr, port: u16) -> Option<Value> {
        self.bpf_services(node)
            .into_iter()
            .find(|e| e["frontend"]["ip"] == vip.to_string() && e["frontend"]["port"] == port)
    }

    /// `fibril bpf services -o json` of one node: its entries.
    fn bpf_services(&self, node: &str) -> Vec<Value> {
        let v = self
            .lab
            .json(&["bpf", "services", "--node", node, "-o", "json"]);
        v[0]["entries"].as_array().cloned().unwrap_or_default()
    }
}

fn pod_ip(p: &Value) -> Ipv4Addr {
    p["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

/// An echo pod pinned to a node: HTTP `/hostname` and `/clientip` plus raw TCP echo on
/// each TCP port, UDP echo on each UDP port.
fn echo_pod(name: &str, node: &str, labels: Value, ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "echo", "image": "fibril/echo", "ports": ports}]}})
}

fn web_ports() -> Value {
    json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"},
           {"name": "udp-echo", "containerPort": 9090, "protocol": "UDP"}])
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn web_service(name: &str, selector: Value, extra: Value) -> Value {
    let mut spec = json!({"selector": selector, "ports": [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "udp", "port": 90, "targetPort": "udp-echo", "protocol": "UDP"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    service(name, spec)
}

/// A user-written EndpointSlice of a selector-less Service.
fn slice(name: &str, svc: &str, ports: Value, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints})
}

fn endpoint(p: &Value, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [p["status"]["podIP"]], "nodeName": p["spec"]["nodeName"],
           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

// ---------------------------------------------------------------------------------------
// Lab 1: ClusterIP behaviours

struct ClusterIpFixture {
    c: Cluster,
    pods: BTreeMap<String, Value>,
}

impl ClusterIpFixture {
    fn pod(&self, name: &str) -> &Value {
        &self.pods[name]
    }
    fn ns(&self, name: &str) -> NetNs {
        self.c.pod_ns(self.pod(name))
    }
}

/// Every lab's pods: a client on nodes 1 and 2, one `app: web` pod per node (web-1 also
/// `solo: yes`).
fn base_pods(c: &Cluster) -> Vec<Value> {
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    vec![
        echo_pod("client-1", &n1, json!({"role": "client"}), web_ports()),
        echo_pod("client-2", &n2, json!({"role": "client"}), web_ports()),
        echo_pod(
            "web-1",
            &n1,
            json!({"app": "web", "solo": "yes"}),
            web_ports(),
        ),
        echo_pod("web-2", &n2, json!({"app": "web"}), web_ports()),
        echo_pod("web-3", &n3, json!({"app": "web"}), web_ports()),
    ]
}

const BASE_PODS: [&str; 5] = ["client-1", "client-2", "web-1", "web-2", "web-3"];

fn cluster_ip_fixture() -> ClusterIpFixture {
    let c = Cluster::up();
    let (n1, n2) = (c.node(1), c.node(2));
    let mut docs = base_pods(&c);
    docs.extend([
        echo_pod(
            "mp-1",
            &n1,
            json!({"app": "multi"}),
            json!([{"name": "svc1", "containerPort": 100, "protocol": "TCP"}]),
        ),
        echo_pod(
            "mp-2",
            &n2,
            json!({"app": "multi"}),
            json!([{"name": "svc2", "containerPort": 101, "protocol": "TCP"}]),
        ),
        web_service("web", json!({"app": "web"}), json!({})),
        service(
            "multi",
            json!({"selector": {"app": "multi"}, "ports": [
                {"name": "portname1", "port": 80, "targetPort": "svc1", "protocol": "TCP"},
                {"name": "portname2", "port": 81, "targetPort": "svc2", "protocol": "TCP"}]}),
        ),
        service(
            "dual",
            json!({"selector": {"app": "web"}, "ports": [
                {"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "udp", "port": 80, "targetPort": 9090, "protocol": "UDP"}]}),
        ),
        web_service("solo", json!({"solo": "yes"}), json!({})),
        web_service(
            "itp",
            json!({"solo": "yes"}),
            json!({"internalTrafficPolicy": "Local"}),
        ),
        web_service(
            "sticky",
            json!({"app": "web"}),
            json!({"sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
        ),
        web_service("empty", json!({"app": "nobody"}), json!({})),
        web_service(
            "ext",
            json!({"app": "web"}),
            json!({"externalIPs": [ALLOWED_EXTERNAL_IP.to_string(), WORLD_HOST.to_string()]}),
        ),
        web_service("churn", json!({"app": "churn"}), json!({})),
        web_service("updown-1", json!({"app": "web"}), json!({})),
        web_service("updown-2", json!({"app": "web"}), json!({})),
    ]);
    c.apply(&docs);
    let pods = c.ready_pods(&[&BASE_PODS[..], &["mp-1", "mp-2"]].concat());
    ClusterIpFixture { c, pods }
}

/// Row 5 (and the basics of row 25): TCP and UDP through the ClusterIP from pods on two
/// nodes reach every backend, and each backend sees the client pod's own address.
fn check_cluster_ip_and_source_ip(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("web");
    let all = names(&["web-1", "web-2", "web-3"]);
    for client in ["client-1", "client-2"] {
        let ns = f.ns(client);
        eventually(
            &format!("{client} reaches every web pod via {vip}:80"),
            LAG,
            || reaches(&ns, sock(vip, 80), &all, 30, true),
        );
        eventually(
            &format!("{client} reaches web pods over UDP {vip}:90"),
            LAG,
            || match udp(&ns, sock(vip, 90), "hostname") {
                Ok(h) if all.contains(&h) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        let own = pod_ip(f.pod(client));
        for _ in 0..10 {
            let seen = http(&ns, sock(vip, 80), "/clientip").expect("clientip");
            let ip = seen.split(':').next().unwrap();
            assert_eq!(
                ip,
                own.to_string(),
                "{client}: backend saw {seen}, not the pod"
            );
        }
        let got = udp(&ns, sock(vip, 90), "ping-udp").unwrap();
        assert_eq!(got, "ping-udp", "UDP echo through the ClusterIP");
    }
}

/// Row 2: port 80 → targetPort `svc1`, 81 → `svc2`, each named on a different pod.
fn check_multiport_named_target_ports(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("multi");
    let ns = f.ns("client-1");
    eventually("multi:80 → mp-1:100 (svc1)", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["mp-1"]), 10, true)
    });
    eventually("multi:81 → mp-2:101 (svc2)", LAG, || {
        reaches(&ns, sock(vip, 81), &names(&["mp-2"]), 10, true)
    });
}

/// Row 3: 80/TCP and 80/UDP of one Service, balanced independently.
fn check_same_port_two_protocols(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("dual");
    let ns = f.ns("client-2");
    let all = names(&["web-1", "web-2", "web-3"]);
    eventually("dual 80/TCP", LAG, || {
        reaches(&ns, sock(vip, 80), &all, 30, true)
    });
    eventually("dual 80/UDP reaches every web pod", LAG, || {
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            match udp(&ns, sock(vip, 80), "hostname") {
                Ok(h) => {
                    seen.insert(h);
                }
                Err(e) => return Err(format!("{e:?}")),
            }
        }
        (seen == all).then_some(()).ok_or(format!("{seen:?}"))
    });
}

/// Row 6: the only backend reaches itself through its own Service.
fn check_hairpin(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("solo");
    let ns = f.ns("web-1");
    eventually("web-1 reaches itself via solo", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["web-1"]), 5, true)
    });
    eventually("web-1 reaches itself via solo over UDP", LAG, || match udp(
        &ns,
        sock(vip, 90),
        "hostname",
    ) {
        Ok(h) if h == "web-1" => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

/// Rows 7 and 8: ClientIP affinity sticks within the timeout (5 s), and after it the
/// choice is made anew.
fn check_session_affinity(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("sticky");
    let ns = f.ns("client-1");
    let all = names(&["web-1", "web-2", "web-3"]);
    let first = eventually("sticky answers", LAG, || {
        hostname(&ns, sock(vip, 80)).map_err(|e| format!("{e:?}"))
    });
    assert!(all.contains(&first));
    let seen = spread(&ns, sock(vip, 80), 15);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&first],
        "15 requests within the affinity timeout stick to one backend: {seen:?}"
    );
    // After the timeout a new choice is made: more than one backend over a few tries
    // (each try 1/3 likely to repeat by chance).
    let mut after = BTreeSet::from([first.clone()]);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(6));
        after.insert(hostname(&ns, sock(vip, 80)).expect("sticky after the timeout"));
        if after.len() > 1 {
            break;
        }
    }
    assert!(after.len() > 1, "affinity never expired: always {first}");

    // Row 9: switched off live, traffic spreads; switched on again, it sticks again.
    let affinity = |on: bool| {
        web_service(
            "sticky",
            json!({"app": "web"}),
            json!({"sessionAffinity": if on { "ClientIP" } else { "None" }}),
        )
    };
    f.c.apply(&[affinity(false)]);
    eventually("sticky spreads without affinity", LAG, || {
        reaches(&ns, sock(vip, 80), &all, 30, true)
    });
    f.c.apply(&[affinity(true)]);
    eventually("sticky sticks again", LAG, || {
        let seen = spread(&ns, sock(vip, 80), 15);
        (seen.len() == 1 && all.contains(seen.keys().next().unwrap()))
            .then_some(())
            .ok_or(format!("{seen:?}"))
    });
}

/// Row 15: an unready pod (its readiness probe fails until a file exists) is served only
/// through a Service with publishNotReadyAddresses; toggling the field takes effect live,
/// and once the pod is ready both Services serve it.
fn check_publish_not_ready_addresses(f: &ClusterIpFixture) {
    let flag = f.c.lab.state_root.join("unready-is-ready");
    let _ = std::fs::remove_file(&flag);
    let mut pod = echo_pod(
        "unready",
        &f.c.node(3),
        json!({"app": "unready"}),
        web_ports(),
    );
    pod["spec"]["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["test", "-e", flag.to_str().unwrap()]},
        "periodSeconds": 1, "failureThreshold": 1});
    let pnr = |name: &str, publish: bool| {
        web_service(
            name,
            json!({"app": "unready"}),
            json!({ "publishNotReadyAddresses": publish }),
        )
    };
    f.c.apply(&[pod, pnr("pnr-on", true), pnr("pnr-off", false)]);
    let ns = f.ns("client-1");
    let (on, off) = (f.c.cluster_ip("pnr-on"), f.c.cluster_ip("pnr-off"));
    let unready = names(&["unready"]);
    eventually(
        "the unready pod is served with publishNotReadyAddresses",
        Duration::from_secs(90),
        || reaches(&ns, sock(on, 80), &unready, 5, true),
    );
    let p =
        f.c.lab
            .json(&["lab", "get", "pods", "-n", NS, "-o", "json"]);
    let me = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "unready")
        .unwrap();
    assert!(!ready(me), "the pod is not Ready: {me}");
    eventually("not served without it", LAG, || {
        refused(hostname(&ns, sock(off, 80)))
    });
    f.c.apply(&[pnr("pnr-off", true)]);
    eventually("served once the field is set live", LAG, || {
        reaches(&ns, sock(off, 80), &unready, 5, true)
    });
    f.c.apply(&[pnr("pnr-off", false)]);
    eventually("not served once it is unset again", LAG, || {
        refused(hostname(&ns, sock(off, 80)))
    });
    std::fs::write(&flag, b"").unwrap();
    eventually("served by both once Ready", LAG, || {
        reaches(&ns, sock(off, 80), &unready, 5, true)?;
        reaches(&ns, sock(on, 80), &unready, 5, true)
    });
}

/// Row 12: a terminated pod (phase Failed, as an evicted pod ends) is no endpoint, even
/// behind a Service with publishNotReadyAddresses: its slice empties, the datapath holds
/// the frontend with no backend, and a new connection is refused at once.
fn check_terminated_pods_are_not_endpoints(f: &ClusterIpFixture) {
    let node = f.c.node(3);
    let flag = f.c.lab.state_root.join("evictee-ends");
    let _ = std::fs::remove_file(&flag);
    // Serves until the flag appears, then fails: restartPolicy Never leaves it Failed.
    let argv = format!(
        "{} lab workload echo --pod-name evictee --pod-namespace {NS} --node {node} \
         --tcp 8080 & while [ ! -e {} ]; do sleep 0.2; done; kill $!; exit 1",
        common::FIBRIL,
        flag.display()
    );
    let mut pod = echo_pod("evictee", &node, json!({"app": "evictee"}), web_ports());
    pod["spec"]["restartPolicy"] = json!("Never");
    pod["spec"]["containers"][0]["command"] = json!(["sh", "-c", argv]);
    let svc = web_service(
        "evicted",
        json!({"app": "evictee"}),
        json!({"publishNotReadyAddresses": true}),
    );
    f.c.apply(&[pod, svc]);
    f.c.ready_pods(&["evictee"]);
    let vip = f.c.cluster_ip("evicted");
    let ns = f.ns("client-1");
    eventually("evictee serves while it runs", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["evictee"]), 3, true)
    });
    std::fs::write(&flag, b"").unwrap();
    eventually("the pod is Failed", LAG, || {
        let v =
            f.c.lab
                .json(&["lab", "get", "pods", "-n", NS, "-o", "json"]);
        let p = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["metadata"]["name"] == "evictee")
            .cloned()
            .unwrap_or_default();
        (p["status"]["phase"] == "Failed")
            .then_some(())
            .ok_or(format!("phase {}", p["status"]["phase"]))
    });
    eventually("its EndpointSlice is empty", LAG, || {
        let eps = f.c.endpoints_of("evicted");
        eps.is_empty()
            .then_some(())
            .ok_or(format!("endpoints: {eps:?}"))
    });
    eventually("evicted:80 refused", LAG, || {
        refused(hostname(&ns, sock(vip, 80)))
    });
    let e =
        f.c.bpf_entry(&f.c.node(1), vip, 80)
            .unwrap_or_else(|| panic!("no entry for {vip}:80 on node 1"));
    assert_eq!(e["backends"], json!([]), "{e}");
    eprintln!("row 12: the Failed pod left the slice; {vip}:80 has no backend and refuses");
}

/// Rows 16 and 17: a Service labelled for another proxy, or headless by label, is not
/// programmed (and status says why); the same Service without the label is.
fn check_proxy_name_and_headless_labels(f: &ClusterIpFixture) {
    let labelled = |name: &str, label: &str, value: &str| {
        let mut s = web_service(name, json!({"app": "web"}), json!({}));
        s["metadata"]["labels"] = json!({ label: value });
        s
    };
    f.c.apply(&[
        labelled(
            "proxied",
            "service.kubernetes.io/service-proxy-name",
            "another-proxy",
        ),
        labelled("headless-label", "service.kubernetes.io/headless", ""),
    ]);
    let ns = f.ns("client-1");
    let node = f.c.node(1);
    for name in ["proxied", "headless-label"] {
        let vip = f.c.cluster_ip(name);
        eventually(&format!("{name} is listed as skipped"), LAG, || {
            let st = f.c.lab.status(&node);
            st["services"]["skipped"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.as_str().unwrap().starts_with(&format!("svc/{name}:")))
                .then_some(())
                .ok_or(format!("{st}"))
        });
        let entries = f.c.bpf_services(&node);
        assert!(
            entries
                .iter()
                .all(|e| e["frontend"]["ip"] != vip.to_string()),
            "{name}'s {vip} is programmed: {entries:?}"
        );
        if let Ok(h) = hostname(&ns, sock(vip, 80)) {
            panic!("{name}'s {vip} answered ({h}) though no proxy of ours serves it");
        }
    }
    // Without the label (the Service made again: a manifest cannot remove a label).
    f.c.delete(&[web_service("proxied", json!({"app": "web"}), json!({}))]);
    f.c.apply(&[web_service("proxied", json!({"app": "web"}), json!({}))]);
    let vip = f.c.cluster_ip("proxied");
    eventually("proxied is served without the label", LAG, || {
        reaches(
            &ns,
            sock(vip, 80),
            &names(&["web-1", "web-2", "web-3"]),
            15,
            false,
        )
    });
}

/// Row 11: no endpoints → refused at once, TCP (RST) and UDP (ICMP unreachable).
fn check_no_endpoints_rejects(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("empty");
    let ns = f.ns("client-1");
    eventually("empty:80/TCP refused", LAG, || {
        refused(hostname(&ns, sock(vip, 80)))
    });
    eventually("empty:90/UDP refused", LAG, || {
        refused(udp(&ns, sock(vip, 90), "hostname"))
    });
    let e =
        f.c.bpf_entry(&f.c.node(1), vip, 80)
            .unwrap_or_else(|| panic!("no entry for {vip}:80 on node 1"));
    assert_eq!(e["backends"], json!([]), "{e}");
}

/// Row 18: internalTrafficPolicy Local, one backend on node 1: its node's client reaches
/// it, another node's client is refused.
fn check_internal_traffic_policy_local(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("itp");
    eventually("client-1 (same node) reaches web-1 via itp", LAG, || {
        reaches(
            &f.ns("client-1"),
            sock(vip, 80),
            &names(&["web-1"]),
            5,
            true,
        )
    });
    eventually("client-2 (other node) is refused by itp", LAG, || {
        refused(hostname(&f.ns("client-2"), sock(vip, 80)))
    });
}

/// Row 19 (ITP Cluster and ITP Local cases), with the endpoint's conditions written
/// directly in a user EndpointSlice: the only endpoint is serving and terminating.
fn check_terminating_fallback(f: &ClusterIpFixture) {
    let web2 = f.pod("web-2");
    let port = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let ports = json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
    f.c.apply(&[
        service("term", json!({"ports": ports})),
        service(
            "term-local",
            json!({"ports": ports, "internalTrafficPolicy": "Local"}),
        ),
        slice(
            "term-1",
            "term",
            port.clone(),
            json!([endpoint(web2, false, true, true)]),
        ),
        slice(
            "term-local-1",
            "term-local",
            port.clone(),
            json!([endpoint(web2, false, true, true)]),
        ),
    ]);
    let vip = f.c.cluster_ip("term");
    let local_vip = f.c.cluster_ip("term-local");
    for client in ["client-1", "client-2"] {
        eventually(
            &format!("{client} falls back to terminating web-2"),
            LAG,
            || reaches(&f.ns(client), sock(vip, 80), &names(&["web-2"]), 5, true),
        );
    }
    // ITP Local: only web-2's node has a (terminating) local endpoint.
    eventually(
        "client-2 falls back to its local terminating web-2",
        LAG,
        || {
            reaches(
                &f.ns("client-2"),
                sock(local_vip, 80),
                &names(&["web-2"]),
                5,
                true,
            )
        },
    );
    eventually("client-1 has no local endpoint for term-local", LAG, || {
        refused(hostname(&f.ns("client-1"), sock(local_vip, 80)))
    });
    // A ready endpoint appears: the terminating one gets no new connection.
    f.c.apply(&[slice(
        "term-1",
        "term",
        port,
        json!([
            endpoint(web2, false, true, true),
            endpoint(f.pod("web-3"), true, true, false)
        ]),
    )]);
    eventually("only the ready web-3 once there is one", LAG, || {
        reaches(
            &f.ns("client-1"),
            sock(vip, 80),
            &names(&["web-3"]),
            15,
            true,
        )
    });
    // Not serving at all: refused.
    f.c.apply(&[slice(
        "term-local-1",
        "term-local",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([endpoint(web2, false, false, true)]),
    )]);
    eventually(
        "a terminating endpoint that is not serving is not used",
        LAG,
        || refused(hostname(&f.ns("client-2"), sock(local_vip, 80))),
    );
}

/// Row 19 through the real path: a pod that keeps serving through its grace period (it
/// ignores SIGTERM) is deleted; while it terminates, its endpoint is serving and
/// terminating, and as the Service's only endpoint it still gets new connections, from
/// both nodes. (The lab kubelet caps grace periods at 5 s, so this is polled tightly.)
fn check_graceful_deletion_fallback(f: &ClusterIpFixture) {
    let node = f.c.node(2);
    let argv = format!(
        "trap '' TERM; exec {} lab workload echo --pod-name graceful --pod-namespace {NS} \
         --node {node} --tcp 8080",
        common::FIBRIL
    );
    let mut pod = echo_pod("graceful", &node, json!({"app": "graceful"}), web_ports());
    pod["spec"]["terminationGracePeriodSeconds"] = json!(30);
    pod["spec"]["containers"][0]["command"] = json!(["sh", "-c", argv]);
    let svc = web_service("graceful", json!({"app": "graceful"}), json!({}));
    f.c.apply(&[pod.clone(), svc]);
    f.c.ready_pods(&["graceful"]);
    let vip = f.c.cluster_ip("graceful");
    let (ns1, ns2) = (f.ns("client-1"), f.ns("client-2"));
    let only = names(&["graceful"]);
    eventually("graceful serves", LAG, || {
        reaches(&ns1, sock(vip, 80), &only, 3, true)
    });
    f.c.delete(&[pod]);
    let terminating = |conds: &Value| {
        conds["ready"] == false && conds["serving"] == true && conds["terminating"] == true
    };
    eventually(
        "served while terminating, from both nodes",
        Duration::from_secs(4),
        || {
            let eps = f.c.endpoints_of("graceful");
            if eps.len() != 1 || !terminating(&eps[0]["conditions"]) {
                return Err(format!("endpoints: {eps:?}"));
            }
            // Both nodes' datapaths hold it as the fallback backend (not a stale ready
            // one), and serve it.
            for i in [1, 2] {
                let entries = f.c.bpf_services(&f.c.node(i));
                let e = entries
                    .iter()
                    .find(|e| e["frontend"]["ip"] == vip.to_string() && e["frontend"]["port"] == 80)
                    .ok_or(format!("node {i}: no entry"))?;
                if e["backends"].as_array().map(Vec::len) != Some(1)
                    || e["backends"][0]["terminating"] != true
                {
                    return Err(format!("node {i}: {e}"));
                }
            }
            reaches(&ns1, sock(vip, 80), &only, 2, true)?;
            reaches(&ns2, sock(vip, 80), &only, 2, true)
        },
    );
}

/// Row 22 and the CVE-2020-8554 guard: an allowed externalIP is served from pods; one
/// outside the allowed range (the world host's address) is refused, with an Event, a log
/// line and a status problem naming the Service, and never captures traffic.
fn check_external_ips(f: &ClusterIpFixture) {
    let ns = f.ns("client-1");
    let all = names(&["web-1", "web-2", "web-3"]);
    eventually("the allowed externalIP is served", LAG, || {
        reaches(&ns, sock(ALLOWED_EXTERNAL_IP, 80), &all, 20, true)
    });
    let ev = eventually("an ExternalIPRefused Event for svc/ext", LAG, || {
        let v =
            f.c.lab
                .json(&["lab", "get", "events", "-n", NS, "-o", "json"]);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["reason"] == "ExternalIPRefused"
                    && e["involvedObject"]["name"] == "ext"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&WORLD_HOST.to_string()))
            })
            .cloned()
            .ok_or_else(|| format!("{v}"))
    });
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["involvedObject"]["kind"], "Service", "{ev}");
    assert!(ev["message"].as_str().unwrap().contains("svc/ext"), "{ev}");
    for i in 1..=3 {
        let node = f.c.node(i);
        let st = f.c.lab.status(&node);
        let problems = st["services"]["problems"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            problems.iter().any(|p| {
                let p = p.as_str().unwrap();
                p.contains("svc/ext")
                    && p.contains("spec.externalIPs[1]")
                    && p.contains(&WORLD_HOST.to_string())
            }),
            "{node}: {st}"
        );
        let entries = f.c.bpf_services(&node);
        assert!(
            entries
                .iter()
                .all(|e| e["frontend"]["ip"] != WORLD_HOST.to_string()),
            "{node} programs the refused externalIP: {entries:?}"
        );
        assert!(
            entries
                .iter()
                .any(|e| e["frontend"]["ip"] == ALLOWED_EXTERNAL_IP.to_string()),
            "{node}: {entries:?}"
        );
        let log =
            f.c.lab
                .ok(&["lab", "logs", &format!("fibril-agent/{node}")]);
        assert!(
            log.lines()
                .any(|l| l.contains("svc/ext") && l.contains(&WORLD_HOST.to_string())),
            "{node}'s log names the refused externalIP"
        );
    }
    // Traffic to the refused address is not served by the Service's pods.
    if let Ok(body) = hostname(&ns, sock(WORLD_HOST, 80)) {
        assert!(
            !all.contains(&body),
            "the refused externalIP captured traffic: {body}"
        );
    }
}

/// Row 24: a selector-less Service with user EndpointSlices: two slices with different
/// port names for one pod, and another slice with a second pod for the first port.
fn check_selectorless_user_slices(f: &ClusterIpFixture) {
    let (w1, w2) = (f.pod("web-1"), f.pod("web-2"));
    f.c.apply(&[
        service(
            "manual",
            json!({"ports": [{"name": "port80", "port": 80, "protocol": "TCP"},
                             {"name": "port81", "port": 81, "protocol": "TCP"}]}),
        ),
        slice(
            "manual-a",
            "manual",
            json!([{"name": "port80", "port": 8080, "protocol": "TCP"}]),
            json!([{"addresses": [w1["status"]["podIP"]]}]),
        ),
        slice(
            "manual-b",
            "manual",
            json!([{"name": "port81", "port": 8080, "protocol": "TCP"}]),
            json!([{"addresses": [w1["status"]["podIP"]]}]),
        ),
        slice(
            "manual-c",
            "manual",
            json!([{"name": "port80", "port": 8080, "protocol": "TCP"}]),
            json!([{"addresses": [w2["status"]["podIP"]]}]),
        ),
    ]);
    let vip = f.c.cluster_ip("manual");
    let ns = f.ns("client-2");
    eventually("manual:80 merges two slices", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["web-1", "web-2"]), 30, true)
    });
    eventually("manual:81 from its own slice", LAG, || {
        reaches(&ns, sock(vip, 81), &names(&["web-1"]), 10, true)
    });
}

/// Backend churn: a connection established through the Service keeps its backend after
/// that backend leaves the Service, and new connections never reach it again.
fn check_established_connection_survives_churn(f: &ClusterIpFixture) {
    let port = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let webs = ["web-1", "web-2", "web-3"];
    let eps: Vec<Value> = webs
        .iter()
        .map(|w| endpoint(f.pod(w), true, true, false))
        .collect();
    f.c.apply(&[
        service(
            "conn",
            json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        ),
        slice("conn-1", "conn", port.clone(), json!(eps)),
    ]);
    let vip = f.c.cluster_ip("conn");
    let ns = f.ns("client-1");
    eventually("conn reaches every backend", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&webs), 30, true)
    });
    // One persistent HTTP/1.1 connection.
    let mut held = ns
        .run(|| TcpStream::connect_timeout(&sock(vip, 80).into(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    held.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reader = BufReader::new(held.try_clone().unwrap());
    let mut ask = |held: &mut TcpStream| -> String {
        held.write_all(b"GET /hostname HTTP/1.1\r\nHost: conn\r\n\r\n")
            .unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap().trim().to_string()
    };
    let mine = ask(&mut held);
    assert!(webs.contains(&mine.as_str()), "{mine}");
    // The held connection's backend leaves the Service (its pod keeps running).
    let rest: Vec<Value> = webs
        .iter()
        .filter(|w| **w != mine)
        .map(|w| endpoint(f.pod(w), true, true, false))
        .collect();
    let others: BTreeSet<String> = webs
        .iter()
        .filter(|w| **w != mine)
        .map(|w| w.to_string())
        .collect();
    f.c.apply(&[slice("conn-1", "conn", port, json!(rest))]);
    eventually(&format!("new connections never reach {mine}"), LAG, || {
        reaches(&ns, sock(vip, 80), &others, 30, true)
    });
    for _ in 0..3 {
        assert_eq!(
            ask(&mut held),
            mine,
            "the established connection kept its backend"
        );
    }
}

/// Row 1: endpoint churn over TCP and UDP: none → refused; pod 1; pods 1 and 2; pod 2
/// only; none → refused again.
fn check_endpoint_churn(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("churn");
    let ns = f.ns("client-2");
    let reach_udp = |want: &BTreeSet<String>, all: bool| -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            seen.insert(udp(&ns, sock(vip, 90), "hostname").map_err(|e| format!("{e:?}"))?);
        }
        (seen.is_subset(want) && (!all || seen == *want))
            .then_some(())
            .ok_or(format!("UDP: {seen:?}"))
    };
    eventually("churn without pods refuses TCP", LAG, || {
        refused(hostname(&ns, sock(vip, 80)))
    });
    eventually("churn without pods refuses UDP", LAG, || {
        refused(udp(&ns, sock(vip, 90), "hostname"))
    });
    let pod = |name: &str, node: &str| echo_pod(name, node, json!({"app": "churn"}), web_ports());
    let p1 = pod("churn-1", &f.c.node(1));
    let p2 = pod("churn-2", &f.c.node(3));
    f.c.apply(std::slice::from_ref(&p1));
    f.c.ready_pods(&["churn-1"]);
    eventually("churn-1 serves", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["churn-1"]), 10, true)?;
        reach_udp(&names(&["churn-1"]), true)
    });
    // Row 26: one UDP flow (one source port) that outlives its backend.
    let flow = ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(sock(vip, 90)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s
        })
        .unwrap();
    let ask_flow = || -> Result<String, String> {
        flow.send(b"hostname").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = flow.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    };
    assert_eq!(ask_flow().unwrap(), "churn-1");
    f.c.apply(std::slice::from_ref(&p2));
    f.c.ready_pods(&["churn-2"]);
    eventually("churn-1 and churn-2 serve", LAG, || {
        reaches(
            &ns,
            sock(vip, 80),
            &names(&["churn-1", "churn-2"]),
            30,
            true,
        )?;
        reach_udp(&names(&["churn-1", "churn-2"]), true)
    });
    f.c.delete(std::slice::from_ref(&p1));
    eventually("only churn-2 after churn-1's deletion", LAG, || {
        reaches(&ns, sock(vip, 80), &names(&["churn-2"]), 20, true)?;
        reach_udp(&names(&["churn-2"]), true)
    });
    eventually(
        "the UDP flow moved to churn-2 (stale conntrack flushed)",
        LAG,
        || match ask_flow() {
            Ok(h) if h == "churn-2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    f.c.delete(std::slice::from_ref(&p2));
    eventually("churn refuses TCP again", LAG, || {
        refused(hostname(&ns, sock(vip, 80)))
    });
    eventually("churn refuses UDP again", LAG, || {
        refused(udp(&ns, sock(vip, 90), "hostname"))
    });
}

/// Row 13: deleting one Service takes its VIP away and leaves the other alone; a new
/// Service gets a working VIP of its own.
fn check_up_and_down(f: &ClusterIpFixture) {
    let ns = f.ns("client-1");
    let all = names(&["web-1", "web-2", "web-3"]);
    let (v1, v2) = (f.c.cluster_ip("updown-1"), f.c.cluster_ip("updown-2"));
    for v in [v1, v2] {
        eventually(&format!("{v} serves"), LAG, || {
            reaches(&ns, sock(v, 80), &all, 15, false)
        });
    }
    f.c.delete(&[web_service("updown-1", json!({"app": "web"}), json!({}))]);
    eventually("updown-1's VIP stops answering", LAG, || {
        match hostname(&ns, sock(v1, 80)) {
            Ok(h) => Err(format!("still answered by {h}")),
            Err(_) => Ok(()),
        }
    });
    reaches(&ns, sock(v2, 80), &all, 15, false).expect("updown-2 is untouched");
    f.c.apply(&[web_service("updown-3", json!({"app": "web"}), json!({}))]);
    let v3 = f.c.cluster_ip("updown-3");
    assert_ne!(v3, v2);
    eventually("updown-3 serves", LAG, || {
        reaches(&ns, sock(v3, 80), &all, 15, false)
    });
}

/// Visibility: `fibril bpf services` shows what the datapath holds, `fibril status` the
/// counts.
fn check_visibility(f: &ClusterIpFixture) {
    let vip = f.c.cluster_ip("web");
    let node = f.c.node(1);
    let entries = f.c.bpf_services(&node);
    let web: Vec<&Value> = entries
        .iter()
        .filter(|e| e["frontend"]["ip"] == vip.to_string())
        .collect();
    assert_eq!(web.len(), 2, "80/TCP and 90/UDP: {web:?}");
    let tcp = web
        .iter()
        .find(|e| e["frontend"]["proto"] == "TCP")
        .unwrap();
    assert_eq!(tcp["service"]["name"], "web");
    assert_eq!(tcp["backends"].as_array().unwrap().len(), 3, "{tcp}");
    let text = f.c.lab.ok(&["bpf", "services", "--node", &node]);
    assert!(
        text.contains(&format!("{vip}:80/TCP")) && text.contains("svc/web"),
        "{text}"
    );
    let st = f.c.lab.status(&node);
    let s = &st["services"];
    assert!(s["services"].as_u64().unwrap() >= 10, "{st}");
    assert!(
        s.get("lastSync").is_some() && s.get("syncError").is_none(),
        "{st}"
    );
    let human = f.c.lab.ok(&["status", "--node", &node]);
    assert!(
        human.contains("Services:") && human.contains("svc/ext"),
        "{human}"
    );
}

#[test]
#[ignore = "privileged: needs root, netns and BPF (a 3-node lab)"]
fn cluster_ip_services_through_bpf() {
    let f = cluster_ip_fixture();
    check_cluster_ip_and_source_ip(&f);
    check_multiport_named_target_ports(&f);
    check_same_port_two_protocols(&f);
    check_hairpin(&f);
    check_no_endpoints_rejects(&f);
    check_internal_traffic_policy_local(&f);
    check_terminating_fallback(&f);
    check_graceful_deletion_fallback(&f);
    check_external_ips(&f);
    check_selectorless_user_slices(&f);
    check_established_connection_survives_churn(&f);
    check_endpoint_churn(&f);
    check_up_and_down(&f);
    check_session_affinity(&f);
    check_proxy_name_and_headless_labels(&f);
    check_publish_not_ready_addresses(&f);
    check_terminated_pods_are_not_endpoints(&f);
    check_visibility(&f);
}

// ---------------------------------------------------------------------------------------
// Lab 2: traffic from outside the cluster, netfilter, agent restart

struct ExternalFixture {
    c: Cluster,
    pods: BTreeMap<String, Value>,
}

fn external_fixture() -> ExternalFixture {
    let c = Cluster::up();
    let np = |name: &str, selector: Value, etp: &str| {
        web_service(
            name,
            selector,
            json!({"type": "NodePort", "externalTrafficPolicy": etp}),
        )
    };
    let mut docs = base_pods(&c);
    docs.extend([
        np("np", json!({"app": "web"}), "Cluster"),
        np("np-local", json!({"app": "web"}), "Local"),
        np("np-solo", json!({"solo": "yes"}), "Local"),
        web_service(
            "lb",
            json!({"app": "web"}),
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster"}),
        ),
        web_service(
            "np-sticky",
            json!({"app": "web"}),
            json!({"type": "NodePort", "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        ),
    ]);
    c.apply(&docs);
    let pods = c.ready_pods(&BASE_PODS);
    ExternalFixture { c, pods }
}

/// Row 4 (and row 25's NodePort UDP): a NodePort from the world host and from another
/// node, at every node's InternalIP, over TCP and UDP; and from a pod.
fn check_node_port(f: &ExternalFixture) {
    let all = names(&["web-1", "web-2", "web-3"]);
    let (tcp, udp_port) = (f.c.node_port("np", "http"), f.c.node_port("np", "udp"));
    let world = f.c.world_ns();
    for i in 1..=3 {
        let ip = f.c.node_ip(i);
        eventually(&format!("world → node {i} NodePort {tcp}"), LAG, || {
            reaches(&world, sock(ip, tcp), &all, 30, true)
        });
        eventually(
            &format!("world → node {i} NodePort {udp_port}/UDP"),
            LAG,
            || match udp(&world, sock(ip, udp_port), "hostname") {
                Ok(h) if all.contains(&h) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    let node2 = f.c.node_ns(2);
    for i in [1, 3] {
        eventually(&format!("node 2 → node {i} NodePort"), LAG, || {
            reaches(&node2, sock(f.c.node_ip(i), tcp), &all, 20, false)
        });
    }
    let client = f.c.pod_ns(&f.pods["client-1"]);
    for i in 1..=3 {
        eventually(&format!("client-1 → node {i} NodePort"), LAG, || {
            reaches(&client, sock(f.c.node_ip(i), tcp), &all, 20, false)
        });
    }
    eventually("client-1 → np ClusterIP", LAG, || {
        reaches(&client, sock(f.c.cluster_ip("np"), 80), &all, 20, true)
    });
    // Row 10: ClientIP affinity through a NodePort, from the world host.
    let sticky = sock(f.c.node_ip(2), f.c.node_port("np-sticky", "http"));
    eventually("np-sticky answers", LAG, || {
        hostname(&world, sticky).map_err(|e| e.to_string())
    });
    let seen = spread(&world, sticky, 15);
    assert!(
        seen.len() == 1 && all.contains(seen.keys().next().unwrap()),
        "15 requests from the world stick to one backend: {seen:?}"
    );
}

/// Row 20, and row 19's ETP=Local reasoning: external clients reach only the node's own
/// endpoint and keep their address; a node without one refuses them, while a pod on that
/// node using the same NodePort is an internal client and reaches the remote endpoint.
fn check_external_traffic_policy_local(f: &ExternalFixture) {
    let world = f.c.world_ns();
    let port = f.c.node_port("np-local", "http");
    for i in 1..=3 {
        let ip = f.c.node_ip(i);
        let own = names(&[&format!("web-{i}")]);
        eventually(
            &format!("world → node {i} np-local stays on web-{i}"),
            LAG,
            || reaches(&world, sock(ip, port), &own, 10, true),
        );
        let seen = http(&world, sock(ip, port), "/clientip").expect("clientip");
        assert_eq!(
            seen.split(':').next().unwrap(),
            WORLD_HOST.to_string(),
            "node {i}: the backend saw {seen}, not the world host"
        );
    }
    let solo = f.c.node_port("np-solo", "http");
    eventually("world → node 1 np-solo (local endpoint)", LAG, || {
        reaches(
            &world,
            sock(f.c.node_ip(1), solo),
            &names(&["web-1"]),
            5,
            true,
        )
    });
    eventually(
        "world → node 2 np-solo is refused (no local endpoint)",
        LAG,
        || refused(hostname(&world, sock(f.c.node_ip(2), solo))),
    );
    // client-2 runs on node 2: its own node's NodePort is internal traffic.
    let client2 = f.c.pod_ns(&f.pods["client-2"]);
    eventually(
        "client-2 → node 2 np-solo reaches web-1 (internal scope)",
        LAG,
        || {
            reaches(
                &client2,
                sock(f.c.node_ip(2), solo),
                &names(&["web-1"]),
                5,
                true,
            )
        },
    );
}

/// LoadBalancer: the lab's controller assigns an ingress IP from its pool, and the world
/// host reaches the Service there.
fn check_load_balancer(f: &ExternalFixture) {
    let pool = f.c.layout().load_balancer_cidr();
    let ip: Ipv4Addr = eventually("an ingress IP for lb", LAG, || {
        let s = f.c.service("lb");
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or(format!("{s}"))
    });
    assert!(pool.contains(&ip), "{ip} is from the lab pool {pool}");
    let all = names(&["web-1", "web-2", "web-3"]);
    eventually("world → the LoadBalancer address", LAG, || {
        reaches(&f.c.world_ns(), sock(ip, 80), &all, 30, true)
    });
}

/// One HTTP GET from inside `ns`: the status code and body.
fn http_status(ns: &NetNs, addr: SocketAddrV4, path: &str) -> Result<(u16, String), Fail> {
    ns.run(|| {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
            .map_err(|e| classify(e, started))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n").as_bytes())
            .map_err(|e| classify(e, started))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| classify(e, started))?;
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Fail::Other(format!("not an HTTP answer: {text:?}")))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok((code, body.trim().to_string()))
    })
    .map_err(|e| Fail::Other(e.to_string()))?
}

/// Row 21: a LoadBalancer with externalTrafficPolicy Local gets a healthCheckNodePort;
/// every node answers it (from the world host): 200 with the count of its local ready
/// endpoints, 503 without one. When the node's only endpoint is terminating (written in a
/// user EndpointSlice, so the state holds still), it answers 503 while external traffic
/// to its NodePort still reaches that terminating endpoint.
fn check_health_check_node_port(f: &ExternalFixture) {
    let w1 = &f.pods["web-1"];
    let ports = json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
    let slice_with = |ready: bool| {
        slice(
            "hc-local-1",
            "hc-local",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([endpoint(w1, ready, true, !ready)]),
        )
    };
    f.c.apply(&[
        service(
            "hc-local",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": ports}),
        ),
        slice_with(true),
    ]);
    let s = f.c.service("hc-local");
    let hc = s["spec"]["healthCheckNodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("no healthCheckNodePort allocated: {s}")) as u16;
    assert!((30000..=32767).contains(&hc), "{s}");
    let np = f.c.node_port("hc-local", "http");
    assert_ne!(hc, np);
    let world = f.c.world_ns();
    let probe = |i: u8| http_status(&world, sock(f.c.node_ip(i), hc), "/healthz");
    eventually(
        "node 1 (local ready endpoint) answers 200",
        LAG,
        || match probe(1) {
            Ok((200, body)) => {
                let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                (v["localEndpoints"] == 1 && v["service"]["name"] == "hc-local")
                    .then_some(())
                    .ok_or(body)
            }
            other => Err(format!("{other:?}")),
        },
    );
    for i in [2, 3] {
        eventually(
            &format!("node {i} (no local endpoint) answers 503"),
            LAG,
            || match probe(i) {
                Ok((503, body)) if body.contains("\"localEndpoints\":0") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    eventually("world → node 1 NodePort reaches web-1", LAG, || {
        reaches(
            &world,
            sock(f.c.node_ip(1), np),
            &names(&["web-1"]),
            3,
            true,
        )
    });

    f.c.apply(&[slice_with(false)]);
    eventually(
        "node 1 answers 503 once its only endpoint is terminating",
        LAG,
        || match probe(1) {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    reaches(
        &world,
        sock(f.c.node_ip(1), np),
        &names(&["web-1"]),
        5,
        true,
    )
    .expect("traffic still flows to the terminating endpoint");
    let st = f.c.lab.status(&f.c.node(1));
    assert!(
        st["services"]["healthCheckPorts"]
            .as_array()
            .is_some_and(|p| p.contains(&json!(hc))),
        "{st}"
    );

    // Back to Cluster: the port is released and no node answers it any more.
    f.c.apply(&[service(
        "hc-local",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "ports": ports}),
    )]);
    let s = f.c.service("hc-local");
    assert!(s["spec"].get("healthCheckNodePort").is_none(), "{s}");
    eventually("the health check port is closed", LAG, || {
        refused(probe(1).map(|(_, b)| b))
    });
    eprintln!(
        "row 21: healthCheckNodePort {hc}: 200 on node 1, 503 on nodes 2 and 3, 503 on node 1 \
         with only a terminating endpoint (still served), closed after the policy change"
    );
}

/// Row 23: type changes ExternalName → ClusterIP → NodePort → ClusterIP → ExternalName →
/// NodePort: the ClusterIP and NodePort are allocated and released by the lab API server
/// as kube-apiserver does, and the datapath serves the Service after each change (and
/// stops serving what was released). A NodePort is released on delete: the port refuses,
/// and another Service can take it.
fn check_type_changes_and_node_port_release(f: &ExternalFixture) {
    let all = names(&["web-1", "web-2", "web-3"]);
    let world = f.c.world_ns();
    let client = f.c.pod_ns(&f.pods["client-1"]);
    let node1 = f.c.node(1);
    let morph = |ty: &str| {
        let mut spec = json!({"type": ty, "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]});
        if ty == "ExternalName" {
            spec["externalName"] = json!(format!("web.{NS}.svc.cluster.local"));
        }
        service("morph", spec)
    };
    let skipped_as_external_name = || {
        let st = f.c.lab.status(&node1);
        st["services"]["skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s.as_str()
                    .unwrap_or("")
                    .starts_with("svc/morph: type ExternalName")
            })
            .then_some(())
            .ok_or(format!("{st}"))
    };
    let programmed = |vip: Ipv4Addr| {
        f.c.bpf_services(&node1)
            .iter()
            .any(|e| e["frontend"]["ip"] == vip.to_string())
    };

    f.c.apply(&[morph("ExternalName")]);
    let s = f.c.service("morph");
    assert!(
        s["spec"].get("clusterIP").is_none(),
        "ExternalName has no ClusterIP: {s}"
    );
    eventually(
        "ExternalName is not programmed",
        LAG,
        skipped_as_external_name,
    );

    f.c.apply(&[morph("ClusterIP")]);
    let vip = f.c.cluster_ip("morph");
    let cidr = fibril_core::lab::LabSpec::default().service_cidr;
    assert!(
        cidr.contains(&vip),
        "{vip} is in the lab's service CIDR {cidr}"
    );
    eventually("ExternalName → ClusterIP is served", LAG, || {
        reaches(&client, sock(vip, 80), &all, 15, false)
    });

    f.c.apply(&[morph("NodePort")]);
    let np = f.c.node_port("morph", "http");
    assert_eq!(f.c.cluster_ip("morph"), vip, "the ClusterIP is kept");
    eventually(
        "ClusterIP → NodePort is served from the world",
        LAG,
        || reaches(&world, sock(f.c.node_ip(2), np), &all, 15, false),
    );

    f.c.apply(&[morph("ClusterIP")]);
    let s = f.c.service("morph");
    assert!(
        s["spec"]["ports"][0].get("nodePort").is_none(),
        "the NodePort is released: {s}"
    );
    eventually("the released NodePort refuses", LAG, || {
        refused(hostname(&world, sock(f.c.node_ip(2), np)))
    });
    reaches(&client, sock(vip, 80), &all, 10, false).expect("the ClusterIP still serves");

    f.c.apply(&[morph("ExternalName")]);
    let s = f.c.service("morph");
    assert!(
        s["spec"].get("clusterIP").is_none(),
        "the ClusterIP is released: {s}"
    );
    eventually("ClusterIP → ExternalName is unprogrammed", LAG, || {
        skipped_as_external_name()?;
        (!programmed(vip))
            .then_some(())
            .ok_or(format!("{vip} still programmed"))
    });

    f.c.apply(&[morph("NodePort")]);
    let (vip, np) = (f.c.cluster_ip("morph"), f.c.node_port("morph", "http"));
    eventually("ExternalName → NodePort is served", LAG, || {
        reaches(&client, sock(vip, 80), &all, 10, false)?;
        reaches(&world, sock(f.c.node_ip(3), np), &all, 10, false)
    });

    // Released on delete: the port refuses, and it can be requested again.
    f.c.delete(&[morph("NodePort")]);
    eventually("the deleted Service's NodePort refuses", LAG, || {
        refused(hostname(&world, sock(f.c.node_ip(3), np)))
    });
    let mut reuse = web_service("reuse", json!({"app": "web"}), json!({"type": "NodePort"}));
    reuse["spec"]["ports"][0]["nodePort"] = json!(np);
    f.c.apply(&[reuse]);
    assert_eq!(
        f.c.node_port("reuse", "http"),
        np,
        "the released port is reused"
    );
    eventually("the reused NodePort serves", LAG, || {
        reaches(&world, sock(f.c.node_ip(3), np), &all, 10, false)
    });
    eprintln!(
        "row 23: served after every type change; NodePort {np} released on delete and reused"
    );
}

/// Acceptance 3: nothing in the nodes' namespaces uses iptables or netfilter conntrack,
/// after traffic through ClusterIPs, NodePorts and a LoadBalancer address.
fn check_no_netfilter(f: &ExternalFixture) {
    let all = names(&["web-1", "web-2", "web-3"]);
    let client = f.c.pod_ns(&f.pods["client-1"]);
    reaches(&client, sock(f.c.cluster_ip("np"), 80), &all, 20, true).unwrap();
    let port = f.c.node_port("np", "http");
    reaches(&f.c.world_ns(), sock(f.c.node_ip(2), port), &all, 20, false).unwrap();
    for i in 1..=3 {
        let node = f.c.node(i);
        for tool in ["iptables-save", "iptables-legacy-save"] {
            let out = f.c.lab.run(&["lab", "exec", "--node", &node, "--", tool]);
            let text = String::from_utf8_lossy(&out.stdout);
            let rules: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("-A") || l.starts_with("-N"))
                .collect();
            assert!(rules.is_empty(), "{node}: {tool} shows rules: {rules:?}");
        }
        let nft = f.c.lab.ok(&[
            "lab", "exec", "--node", &node, "--", "nft", "list", "ruleset",
        ]);
        assert!(nft.trim().is_empty(), "{node}: nftables ruleset: {nft}");
        let conntrack =
            f.c.node_ns(i)
                .run(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack"))
                .unwrap();
        match conntrack {
            Ok(text) => assert!(
                text.trim().is_empty(),
                "{node}: netfilter conntrack has entries:\n{text}"
            ),
            // No conntrack table in this kernel at all: nothing can be tracked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{node}: reading nf_conntrack: {e}"),
        }
    }
}

/// Row 14: the agent of node 1 is SIGKILLed while a pod on node 1 keeps opening
/// connections to a ClusterIP: none fails, and after the restart the agent syncs again
/// (a Service created then is served).
fn check_agent_restart(f: &ExternalFixture) {
    let vip = f.c.cluster_ip("np");
    let all = names(&["web-1", "web-2", "web-3"]);
    let client = f.c.pod_ns(&f.pods["client-1"]);
    reaches(&client, sock(vip, 80), &all, 10, false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, ns, all) = (stop.clone(), client.clone(), all.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                match http_within(&ns, sock(vip, 80), "/hostname", Duration::from_secs(5)) {
                    Ok(h) if all.contains(&h) => ok += 1,
                    other => failed.push(format!("at {t:?}: {other:?}")),
                }
                slowest = slowest.max(start.elapsed() - t);
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed, slowest)
        })
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let id = format!("fibril-agent/{}", f.c.node(1));
    let pid_of = || f.c.lab.component(&id);
    // The agent must be the one that has run all along: a restart before the kill is a
    // crash, reported with the supervisor's record of it.
    let (pid, state) = pid_of().unwrap_or_else(|| {
        panic!(
            "{id} has no running process before the kill: {}",
            f.c.lab.json(&["lab", "status", "-o", "json"])["components"]
        )
    });
    assert_eq!(state, "running", "{id} before the kill");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    eprintln!("agent {pid} killed at {:?}", started.elapsed());
    wait_for(
        "the agent restarted and synced",
        Duration::from_secs(60),
        || {
            let (p, state) = pid_of()?;
            let st =
                f.c.lab
                    .run(&["status", "--node", &f.c.node(1), "-o", "json"]);
            let st: Value = serde_json::from_slice(&st.stdout).ok()?;
            (p != pid
                && state == "running"
                && st["ready"] == true
                && st["services"]["lastSync"].is_string())
            .then_some(())
        },
    );
    eprintln!("agent back and synced at {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, slowest) = load.join().unwrap();
    eprintln!(
        "{ok} requests across the agent's SIGKILL, {} failed, the slowest took {slowest:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "{ok} requests");
    f.c.apply(&[web_service(
        "after-restart",
        json!({"app": "web"}),
        json!({}),
    )]);
    let v = f.c.cluster_ip("after-restart");
    eventually("a Service created after the restart is served", LAG, || {
        reaches(&client, sock(v, 80), &all, 15, false)
    });
}

#[test]
#[ignore = "privileged: needs root, netns and BPF (a 3-node lab)"]
fn node_port_external_traffic_and_agent_restart() {
    let f = external_fixture();
    check_node_port(&f);
    check_external_traffic_policy_local(&f);
    check_load_balancer(&f);
    check_health_check_node_port(&f);
    check_type_changes_and_node_port_release(&f);
    check_no_netfilter(&f);
    check_agent_restart(&f);
}
