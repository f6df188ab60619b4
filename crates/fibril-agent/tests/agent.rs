//! The agent for real, without a lab: an in-process API server, a node netns and a
//! "fabric" netns of the test's own, pod netns created by the test, and CNI requests sent
//! to the agent's socket exactly as `fibril-cni` sends them.
//!
//! Privileged (root, netns, bpffs): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. Names start with `fibt`; a guard removes every namespace, the pin
//! dir and the state dir on drop, panics included. Nothing touches the root namespace.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fibril_agent::agent::CHECK_MISMATCH;
use fibril_agent::server::cni_call;
use fibril_agent::{read_status, status_socket_path, AgentStatus};
use fibril_core::agent_config::{AgentConfig, ValidConfig};
use fibril_core::cni_api::{
    code, AddRequest, Attachment, AttachmentKey, CheckRequest, CniOp, CniRequest, CniResponse,
    CniResult, CniVersion, DelRequest, GcRequest, PROTOCOL_VERSION,
};
use fibril_netlink::{NetNs, Route};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const PRIV: &str = "privileged: needs root, netns and bpffs";
const WAIT: Duration = Duration::from_secs(20);
const NODE_IP: &str = "172.31.250.10";
const PEER_IP: &str = "172.31.250.11";
const NODE_CIDR: &str = "10.250.1.0/24";
const PEER_CIDR: &str = "10.250.2.0/24";

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut v = (nanos ^ (std::process::id() << 12)) % 36u32.pow(4);
    let mut s = String::from("fibtg");
    for _ in 0..4 {
        s.push(std::char::from_digit(v % 36, 36).unwrap());
        v /= 36;
    }
    s.push_str(&N.fetch_add(1, Ordering::Relaxed).to_string());
    s
}

/// Everything one test made; removed on drop.
struct Env {
    prefix: String,
    _guard: NsGuard,
    rt: tokio::runtime::Runtime,
    _api: fibril_apiserver::RunningApiServer,
    api_url: String,
    client: kube::Client,
    node: NetNs,
    dir: tempfile::TempDir,
    agent: Option<RunningAgent>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            let _ = a.stop();
        }
    }
}

/// Removes the test's namespaces (killing what runs inside) and the node's pin dir; made
/// first, so a panic while the environment is built still cleans up.
struct NsGuard {
    prefix: String,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        for n in NetNs::list().unwrap_or_default() {
            if n.starts_with(&self.prefix) {
                if let Ok(ino) = NetNs::open(&n).and_then(|ns| ns.inode()) {
                    for pid in fibril_netlink::pids_in_netns(ino) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                let _ = NetNs::delete(&n);
            }
        }
        let pins = Path::new(fibril_core::consts::BPF_PIN_ROOT).join(format!("{}-n1", self.prefix));
        let _ = std::fs::remove_dir_all(pins);
    }
}

struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningAgent {
    /// Stops it as a crash would leave things: nothing is cleaned up but the sockets.
    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().unwrap().join().unwrap()
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn result(mut self) -> anyhow::Result<()> {
        self.thread.take().unwrap().join().unwrap()
    }
}

struct Opts {
    allow_degraded: bool,
    /// Keep the agent off the BPF datapath, with this cause.
    force_legacy: Option<&'static str>,
    native_cidr: &'static str,
    with_pod_cidr: Option<&'static str>,
    /// `ipam.mode: cluster-pool` with this pool (/24 blocks) instead of kubernetes mode.
    cluster_pool: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            allow_degraded: false,
            force_legacy: None,
            native_cidr: "10.250.0.0/16",
            with_pod_cidr: Some(NODE_CIDR),
            cluster_pool: None,
        }
    }
}

fn node_obj(name: &str, ip: &str, cidr: Option<&str>) -> Node {
    let mut spec = json!({});
    if let Some(c) = cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
    .unwrap()
}

impl Env {
    fn new(opts: &Opts) -> Env {
        fibril_bpf::ensure_bpffs().unwrap();
        let prefix = unique();
        let guard = NsGuard {
            prefix: prefix.clone(),
        };
        let node = NetNs::create(&format!("{prefix}-n1")).unwrap();
        let fabric = NetNs::create(&format!("{prefix}-fab")).unwrap();
        node.ensure_veth("eth0", "n1", &fabric).unwrap();
        node.ensure_addr("eth0", format!("{NODE_IP}/24").parse().unwrap())
            .unwrap();
        node.set_up("eth0").unwrap();
        node.set_up("lo").unwrap();
        // The peer node's address lives in the fabric namespace, so pings to it answer.
        fabric
            .ensure_addr("n1", format!("{PEER_IP}/24").parse().unwrap())
            .unwrap();
        fabric.set_up("n1").unwrap();
        fabric.set_up("lo").unwrap();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let api = rt
            .block_on(fibril_apiserver::start(fibril_apiserver::ApiServerConfig {
                data_dir: dir.path().join("api"),
                tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
                unix_socket: None,
                service_cidr: "10.96.0.0/16".parse().unwrap(),
                bookmark_interval: Duration::from_secs(1),
            }))
            .unwrap();
        let api_url = format!("http://{}", api.tcp_addr.unwrap());
        let client = {
            let _rt = rt.enter();
            fibril_apiserver::client_for_url(&api_url).unwrap()
        };
        let nodes: Api<Node> = Api::all(client.clone());
        rt.block_on(async {
            nodes
                .create(
                    &PostParams::default(),
                    &node_obj(node.name(), NODE_IP, opts.with_pod_cidr),
                )
                .await
                .unwrap();
            nodes
                .create(
                    &PostParams::default(),
                    &node_obj(&format!("{prefix}-n2"), PEER_IP, Some(PEER_CIDR)),
                )
                .await
                .unwrap();
        });
        Env {
            prefix,
            _guard: guard,
            rt,
            _api: api,
            api_url,
            client,
            node,
            dir,
            agent: None,
        }
    }

    fn config(&self, opts: &Opts) -> ValidConfig {
        let d = self.dir.path();
        let ipam = match opts.cluster_pool {
            None => "  mode: kubernetes\n".to_string(),
            Some(pool) => {
                format!("  mode: cluster-pool\n  clusterPoolCidrs: [{pool}]\n  nodeMaskSize: 24\n")
            }
        };
        let yaml = format!(
            "nodeName: {node}\napiServer: {api}\nroutingMode: native\nnativeRoutingCidr: {native}\n\
             ipam:\n{ipam}  reservedCidrs: [192.168.77.0/24]\nserviceCidr: 10.96.0.0/16\n\
             allowDegraded: {deg}\ncniConfDir: {d}/net.d\ncniBinDir: {d}/bin\nstateDir: {d}/state\n\
             socketPath: {d}/agent.sock\n",
            node = self.node.name(),
            api = self.api_url,
            native = opts.native_cidr,
            deg = opts.allow_degraded,
            d = d.display()
        );
        AgentConfig::from_yaml(&yaml).unwrap().validate().unwrap()
    }

    fn start(&mut self, opts: &Opts) {
        let cfg = self.config(opts);
        let options = fibril_agent::RunOptions {
            force_legacy: opts.force_legacy.map(String::from),
        };
        let url = self.api_url.clone();
        let ns = self.node.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = fibril_apiserver::client_for_url(&url)?;
                fibril_agent::run_with_options(
                    cfg,
                    client,
                    ns,
                    async {
                        let _ = rx.await;
                    },
                    options,
                )
                .await
            })
        });
        self.agent = Some(RunningAgent {
            stop: Some(tx),
            thread: Some(thread),
        });
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn status_socket(&self) -> PathBuf {
        status_socket_path(&self.dir.path().join("state"))
    }

    fn conflist(&self) -> PathBuf {
        self.dir.path().join("net.d").join("05-fibril.conflist")
    }

    fn status(&self) -> AgentStatus {
        read_status(&self.status_socket()).unwrap()
    }

    fn wait_ready(&self) -> AgentStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(s) = read_status(&self.status_socket()) {
                if s.ready {
                    return s;
                }
            }
            if self.agent.as_ref().is_some_and(|a| a.finished()) {
                panic!("the agent exited before it was ready");
            }
            assert!(Instant::now() < deadline, "agent not ready within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's run result once it exits on its own (a refusal).
    fn refusal(&mut self) -> String {
        let a = self.agent.take().unwrap();
        let deadline = Instant::now() + WAIT;
        while !a.finished() {
            assert!(
                Instant::now() < deadline,
                "the agent did not refuse to start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("{:#}", a.result().expect_err("the agent should refuse"))
    }

    fn call(&self, op: CniOp) -> CniResponse {
        let req = CniRequest {
            protocol: PROTOCOL_VERSION,
            cni_version: CniVersion::V1_1_0,
            op,
            config: json!({"cniVersion": "1.1.0", "name": "fibril", "type": "fibril-cni",
                           "agentSocket": self.socket()}),
        };
        self.rt.block_on(cni_call(&self.socket(), &req)).unwrap()
    }

    fn pod(&self, tag: &str) -> NetNs {
        NetNs::create(&format!("{}-pod-{tag}", self.prefix)).unwrap()
    }

    fn add(&self, cid: &str, pod: &NetNs) -> CniResponse {
        self.call(CniOp::Add(AddRequest {
            attachment: attachment(cid),
            netns: pod.path().to_path_buf(),
            prev_result: None,
        }))
    }

    fn del(&self, cid: &str, netns: Option<&NetNs>) -> CniResponse {
        self.call(CniOp::Del(DelRequest {
            attachment: attachment(cid),
            netns: netns.map(|n| n.path().to_path_buf()),
            prev_result: None,
        }))
    }
}

fn attachment(cid: &str) -> Attachment {
    Attachment {
        container_id: cid.parse().unwrap(),
        ifname: "eth0".parse().unwrap(),
        pod: None,
    }
}

fn ok_result(r: CniResponse) -> CniResult {
    match r {
        CniResponse::Ok(Some(r)) => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

fn pod_ip(r: &CniResult) -> Ipv4Addr {
    match r.ips[0].address.addr() {
        std::net::IpAddr::V4(v) => v,
        other => panic!("{other}"),
    }
}

fn error_code(r: CniResponse) -> (u32, String) {
    match r {
        CniResponse::Error(e) => (e.code, e.msg),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A TCP exchange from `from` to a listener opened in `to` on `addr`.
fn tcp_ok(from: &NetNs, to: &NetNs, addr: Ipv4Addr) -> bool {
    let l = to.run(|| TcpListener::bind((addr, 0))).unwrap().unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).ok()?;
        s.write_all(&b).ok()?;
        Some(())
    });
    let ok = from
        .run(|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"ping")?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            Ok(&b == b"ping")
        })
        .unwrap()
        .unwrap_or(false);
    let _ = server.join();
    ok
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn strict_mode_refuses_legacy_host_routing() {
    let _ = PRIV;
    let opts = Opts {
        force_legacy: Some("test: BPF host routing switched off"),
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    env.start(&opts);
    let e = env.refusal();
    assert!(e.contains("BPF host routing cannot be used"), "{e}");
    assert!(
        e.contains("switched off") && e.contains("allowDegraded"),
        "{e}"
    );
    assert!(!env.conflist().exists(), "no conflist when refusing");
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn allow_degraded_runs_legacy_and_says_so() {
    let opts = Opts {
        force_legacy: Some("test: BPF host routing switched off"),
        allow_degraded: true,
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    env.start(&opts);
    let st = env.wait_ready();
    assert_eq!(st.host_routing["mode"], "Legacy", "{st:?}");
    assert!(st.host_routing["cause"]
        .as_str()
        .unwrap()
        .contains("switched off"));
    assert!(
        st.degraded.as_deref().unwrap().contains("switched off"),
        "{st:?}"
    );
    assert_eq!(st.dataplane, "counters+kernel-routes");
    let text = st.render();
    assert!(
        text.contains("Legacy") && text.contains("Degraded:"),
        "{text}"
    );
    // Pods still work, counted by the programs on their veths.
    let (p1, p2) = (env.pod("a"), env.pod("b"));
    let ip1 = pod_ip(&ok_result(env.add("c1", &p1)));
    let ip2 = pod_ip(&ok_result(env.add("c2", &p2)));
    assert!(tcp_ok(&p1, &p2, ip2));
    assert!(tcp_ok(&p2, &p1, ip1));
    assert_eq!(env.status().programs.len(), 2);
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn pod_cidr_overlapping_a_node_route_is_refused_naming_both() {
    // Seed 000: a firewall subnet routed on the node, inside the node's pod range.
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.node
        .replace_route(&Route {
            dst: "10.250.1.128/25".parse().unwrap(),
            via: Some("172.31.250.1".parse().unwrap()),
            dev: None,
        })
        .unwrap();
    env.start(&opts);
    let e = env.refusal();
    assert!(
        e.contains(NODE_CIDR) && e.contains("10.250.1.128/25"),
        "{e}"
    );
    assert!(!env.conflist().exists());
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn native_routing_cidr_must_cover_every_pod_cidr() {
    let opts = Opts {
        native_cidr: "10.250.1.0/24",
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    env.start(&opts);
    let e = env.refusal();
    assert!(e.contains("10.250.1.0/24") && e.contains(PEER_CIDR), "{e}");
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn cni_lifecycle_readiness_traffic_check_del_gc() {
    let waiting = Opts {
        with_pod_cidr: None,
        ..Opts::default()
    };
    let mut env = Env::new(&waiting);
    env.start(&waiting);
    let p1 = env.pod("a");
    // Not ready (no podCIDR yet): STATUS and ADD say 50, and there is no conflist.
    let deadline = Instant::now() + WAIT;
    while !env.socket().exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let (c, m) = error_code(env.call(CniOp::Status));
        assert_eq!(c, code::NOT_AVAILABLE, "{m}");
        if m.contains("podCIDR") {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(error_code(env.add("c1", &p1)).0, code::NOT_AVAILABLE);
    assert!(!env.conflist().exists());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The node gets its podCIDR: ready, conflist written.
    let nodes: Api<Node> = Api::all(env.client.clone());
    env.rt
        .block_on(nodes.patch(
            env.node.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": NODE_CIDR, "podCIDRs": [NODE_CIDR]}})),
        ))
        .unwrap();
    let st = env.wait_ready();
    assert!(env.conflist().exists());
    assert_eq!(st.ipam.node_cidr.as_deref(), Some(NODE_CIDR));
    assert_eq!(st.host_routing["mode"], "BPF", "{st:?}");
    assert_eq!(st.dataplane, "bpf");
    assert!(st.degraded.is_none());
    assert!(
        st.programs.iter().any(|p| p.ifname == "eth0"),
        "the underlay program: {st:?}"
    );
    assert!(matches!(env.call(CniOp::Status), CniResponse::Ok(None)));

    // Two ADDs at once.
    let p2 = env.pod("b");
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| env.add("c1", &p1));
        let b = s.spawn(|| env.add("c2", &p2));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (r1, r2) = (ok_result(r1), ok_result(r2));
    let (ip1, ip2) = (pod_ip(&r1), pod_ip(&r2));
    assert_ne!(ip1, ip2);
    assert_eq!(r1.interfaces.len(), 2);
    assert!(r1.interfaces[0].sandbox.is_none() && r1.interfaces[0].name.starts_with("fib"));
    assert_eq!(r1.interfaces[1].name, "eth0");
    assert_eq!(
        r1.interfaces[1].sandbox.as_deref(),
        Some(p1.path().to_str().unwrap())
    );
    assert_eq!(r1.ips[0].interface, Some(1));
    assert_eq!(r1.ips[0].gateway, Some("10.250.1.1".parse().unwrap()));
    assert_eq!(r1.ips[0].address.prefix_len(), 32);
    // A retried ADD returns the same address.
    assert_eq!(pod_ip(&ok_result(env.add("c1", &p1))), ip1);

    // Traffic: pod to pod on the node, pod to node, node to pod.
    assert!(tcp_ok(&p1, &p2, ip2));
    assert!(tcp_ok(&p2, &p1, ip1));
    assert!(tcp_ok(&p1, &env.node, NODE_IP.parse().unwrap()));
    assert!(tcp_ok(&env.node, &p1, ip1));

    // An address of this node's range that no pod holds: the datapath drops, and says why.
    let _ = p1.run(|| {
        TcpStream::connect_timeout(
            &("10.250.1.200".parse::<Ipv4Addr>().unwrap(), 80).into(),
            Duration::from_millis(300),
        )
    });
    let st = env.status();
    let d = st.drops.iter().find(|d| d.reason == "no_endpoint");
    assert!(d.is_some_and(|d| d.packets >= 1), "{:?}", st.drops);
    assert!(st.render().contains("no_endpoint"));

    // Status: endpoints, programs, the peer's route and reachability.
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = env.status();
        let peer = st.nodes.first();
        if peer.is_some_and(|p| p.programmed && p.reachable == Some(true)) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "peer not programmed/reachable: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st.endpoints.len(), 2, "{st:?}");
    assert_eq!(st.ipam.used, 2);
    assert_eq!(st.programs.len(), 3, "two pod veths and the uplink: {st:?}");
    assert!(st.api.connected);
    let routes = env.node.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst.to_string() == PEER_CIDR && r.via == Some(PEER_IP.parse().unwrap())),
        "{routes:?}"
    );
    let text = st.render();
    assert!(
        text.contains("Host Routing:   BPF") && text.contains("native"),
        "{text}"
    );

    // CHECK: fine, then against a result that is not ours.
    assert!(matches!(
        env.call(CniOp::Check(CheckRequest {
            attachment: attachment("c1"),
            netns: p1.path().to_path_buf(),
            prev_result: r1.clone(),
        })),
        CniResponse::Ok(None)
    ));
    let (c, m) = error_code(env.call(CniOp::Check(CheckRequest {
        attachment: attachment("c1"),
        netns: p1.path().to_path_buf(),
        prev_result: r2.clone(),
    })));
    assert_eq!(c, CHECK_MISMATCH, "{m}");
    assert_eq!(
        error_code(env.call(CniOp::Check(CheckRequest {
            attachment: attachment("nosuch"),
            netns: p1.path().to_path_buf(),
            prev_result: r1.clone(),
        })))
        .0,
        code::UNKNOWN_CONTAINER
    );

    // DEL twice, and after the netns is gone.
    let veth2 = r2.interfaces[0].name.clone();
    assert!(matches!(env.del("c2", Some(&p2)), CniResponse::Ok(None)));
    assert!(matches!(env.del("c2", Some(&p2)), CniResponse::Ok(None)));
    assert!(env.node.link(&veth2).unwrap().is_none());
    NetNs::delete(p2.name()).unwrap();
    assert!(matches!(env.del("c2", None), CniResponse::Ok(None)));
    assert!(matches!(
        env.del("never-added", None),
        CniResponse::Ok(None)
    ));
    assert_eq!(env.status().ipam.used, 1);

    // GC: a third attachment that is no longer valid, and a leaked veth nobody holds.
    let p3 = env.pod("c");
    let r3 = ok_result(env.add("c3", &p3));
    let leak_peer = env.pod("leak");
    env.node
        .ensure_veth("fib0123456789ab", "eth0", &leak_peer)
        .unwrap();
    assert!(matches!(
        env.call(CniOp::Gc(GcRequest {
            valid_attachments: vec![AttachmentKey {
                container_id: "c1".parse().unwrap(),
                ifname: "eth0".parse().unwrap(),
            }],
        })),
        CniResponse::Ok(None)
    ));
    assert!(env.node.link(&r3.interfaces[0].name).unwrap().is_none());
    assert!(env.node.link("fib0123456789ab").unwrap().is_none());
    assert!(env.node.link(&r1.interfaces[0].name).unwrap().is_some());
    let st = env.status();
    assert_eq!(st.ipam.used, 1, "{st:?}");
    assert_eq!(st.endpoints.len(), 1);
    // The surviving pod still works.
    assert!(tcp_ok(&env.node, &p1, ip1));
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn exhaustion_is_a_clear_error_and_shows_in_status() {
    let opts = Opts {
        with_pod_cidr: Some("10.250.1.0/30"),
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    let (p1, p2) = (env.pod("a"), env.pod("b"));
    ok_result(env.add("c1", &p1));
    let (c, m) = error_code(env.add("c2", &p2));
    assert_eq!(c, code::NOT_AVAILABLE);
    assert!(
        m.contains("10.250.1.0/30") && m.contains("no pod address left"),
        "{m}"
    );
    let st = env.status();
    assert!(st.ipam.exhausted && st.ipam.free == 0, "{st:?}");
    assert!(st.render().contains("EXHAUSTED"));
    assert_eq!(error_code(env.call(CniOp::Status)).0, code::NOT_AVAILABLE);
    // Nothing half-created for the refused pod.
    assert!(p2.link("eth0").unwrap().is_none());
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn restart_keeps_traffic_and_readopts_endpoints() {
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    let (p1, p2) = (env.pod("a"), env.pod("b"));
    let ip1 = pod_ip(&ok_result(env.add("c1", &p1)));
    let ip2 = pod_ip(&ok_result(env.add("c2", &p2)));

    // An established connection across the agent's death.
    let l = p2.run(|| TcpListener::bind((ip2, 0))).unwrap().unwrap();
    let port = l.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut conn = p1
        .run(|| TcpStream::connect_timeout(&(ip2, port).into(), Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let roundtrip = |c: &mut TcpStream| {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    };
    roundtrip(&mut conn);

    env.agent.take().unwrap().stop().unwrap();
    assert!(
        env.conflist().exists(),
        "a stopped agent leaves the conflist"
    );
    roundtrip(&mut conn);
    assert!(
        tcp_ok(&p1, &p2, ip2),
        "new connections while the agent is down"
    );

    env.start(&opts);
    let st = env.wait_ready();
    assert_eq!(st.endpoints.len(), 2, "{st:?}");
    assert_eq!(st.programs.len(), 3, "re-adopted: {st:?}");
    roundtrip(&mut conn);
    // Persisted allocations: a new pod gets neither address.
    let p3 = env.pod("c");
    let ip3 = pod_ip(&ok_result(env.add("c3", &p3)));
    assert!(ip3 != ip1 && ip3 != ip2);
    assert_eq!(pod_ip(&ok_result(env.add("c1", &p1))), ip1);
    drop(conn);
    let _ = echo.join();
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn sockets_refuse_non_root_peers() {
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    use std::os::unix::fs::PermissionsExt as _;
    for socket in [env.socket(), env.status_socket()] {
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", socket.display());
        // Open the file up, so that only the peer-credential check stands in the way.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let got = std::thread::spawn(move || {
            // The raw syscall changes this thread's credentials only (glibc's setresuid
            // would change every thread of the test process).
            // SAFETY: plain syscall with constant arguments.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0, "setresuid");
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"{}\n");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
        .join()
        .unwrap();
        assert!(got.is_empty(), "a non-root peer got an answer: {got:?}");
    }
    // Root still gets answers.
    assert!(matches!(env.call(CniOp::Status), CniResponse::Ok(None)));
    assert!(env.status().ready);
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn pod_cidr_overlapping_node_subnet_service_or_reserved_range_is_refused_naming_both() {
    // (node pod CIDR, native-routing CIDR covering it, the other range the refusal names)
    let cases: [(&'static str, &'static str, &str); 3] = [
        // The fabric subnet the node's eth0 sits on (seed 000's "pool overlaps the VPC").
        ("172.31.250.0/25", "172.31.0.0/16", "172.31.250.0/24"),
        // The Service range.
        ("10.96.1.0/24", "10.0.0.0/8", "10.96.0.0/16"),
        // A declared reserved range (a firewall subnet).
        ("192.168.77.0/25", "192.168.0.0/16", "192.168.77.0/24"),
    ];
    for (pod_cidr, native, other) in cases {
        let opts = Opts {
            with_pod_cidr: Some(pod_cidr),
            native_cidr: native,
            ..Opts::default()
        };
        let mut env = Env::new(&opts);
        env.start(&opts);
        let e = env.refusal();
        assert!(e.contains(pod_cidr) && e.contains(other), "{pod_cidr}: {e}");
        assert!(!env.conflist().exists());
    }
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn drift_under_the_running_agent_shows_in_status() {
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    // Seed 002: another daemon turns on strict reverse-path filtering.
    env.node
        .set_sysctl("net.ipv4.conf.all.rp_filter", "1")
        .unwrap();
    // And the node's pod range changes under live allocations.
    let nodes: Api<Node> = Api::all(env.client.clone());
    env.rt
        .block_on(nodes.patch(
            env.node.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": "10.250.9.0/24"}})),
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = env.status();
        let all = st.problems.join("\n");
        if all.contains("rp_filter") && all.contains("10.250.9.0/24") {
            assert!(st.render().contains("Problem:"));
            break;
        }
        assert!(Instant::now() < deadline, "no drift reported: {all}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn del_while_the_agent_starts_is_settled_once_ready() {
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    let p1 = env.pod("a");
    let r1 = ok_result(env.add("c1", &p1));
    env.agent.take().unwrap().stop().unwrap();

    // The agent comes back to a node without its pod CIDR: it waits, not ready.
    let nodes: Api<Node> = Api::all(env.client.clone());
    env.rt
        .block_on(nodes.patch(
            env.node.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": null, "podCIDRs": null}})),
        ))
        .unwrap();
    env.start(&opts);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = read_status(&env.status_socket()) {
            if s.not_ready_reason
                .as_deref()
                .is_some_and(|r| r.contains("podCIDR"))
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent should wait for its podCIDR"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // DEL meanwhile succeeds and removes the pod's interface...
    assert!(matches!(env.del("c1", Some(&p1)), CniResponse::Ok(None)));
    assert!(env.node.link(&r1.interfaces[0].name).unwrap().is_none());
    // ... and the address is released once the agent is ready.
    env.rt
        .block_on(nodes.patch(
            env.node.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": NODE_CIDR, "podCIDRs": [NODE_CIDR]}})),
        ))
        .unwrap();
    let st = env.wait_ready();
    assert_eq!(st.ipam.used, 0, "{st:?}");
    assert!(st.endpoints.is_empty(), "{st:?}");
}

/// The peer node holds 10.250.0.0/24 of the pool (claimed and recorded as its agent would).
fn claim_for_peer(env: &Env, pool: &fibril_core::ipam::ClusterPool) -> fibril_core::ipam::PodCidr {
    let peer: fibril_core::ipam::NodeName = format!("{}-n2", env.prefix).parse().unwrap();
    env.rt.block_on(async {
        let c = fibril_agent::pool::claim(
            &env.client,
            pool,
            &peer,
            &fibril_core::ipam::OverlapCheck::new(peer.clone()),
            None,
        )
        .await
        .unwrap();
        fibril_agent::pool::record_node(&env.client, &peer, c.block, &c.pool_name)
            .await
            .unwrap();
        c.block
    })
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn cluster_pool_claims_a_block_routes_the_peer_and_keeps_the_block_across_restarts() {
    use fibril_core::kinds::{FibrilIPPool, FibrilNode, DEFAULT_POOL_NAME};
    let opts = Opts {
        with_pod_cidr: None,
        cluster_pool: Some("10.250.0.0/16"),
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    let pool =
        fibril_core::ipam::ClusterPool::new(vec!["10.250.0.0/16".parse().unwrap()], 24).unwrap();
    let peer_block = claim_for_peer(&env, &pool);
    assert_eq!(peer_block.to_string(), "10.250.0.0/24");
    env.start(&opts);
    let st = env.wait_ready();
    assert_eq!(st.ipam.mode, "cluster-pool");
    assert_eq!(st.ipam.pool, vec!["10.250.0.0/16".to_string()]);
    assert_eq!(
        st.ipam.node_cidr.as_deref(),
        Some("10.250.1.0/24"),
        "{st:?}"
    );
    let blocks = st.ipam.pool_blocks.expect("pool usage in status");
    assert_eq!((blocks.held, blocks.total), (2, 256));
    let text = st.render();
    assert!(
        text.contains("cluster-pool, pool 10.250.0.0/16, node CIDR 10.250.1.0/24"),
        "{text}"
    );
    assert!(
        text.contains("/24 blocks: 2 held, 254 free of 256"),
        "{text}"
    );
    // The claim is in the pool object and the node's FibrilNode.
    let (pool_obj, fnode) = env.rt.block_on(async {
        let pools: Api<FibrilIPPool> = Api::all(env.client.clone());
        let fnodes: Api<FibrilNode> = Api::all(env.client.clone());
        (
            pools.get(DEFAULT_POOL_NAME).await.unwrap(),
            fnodes.get(env.node.name()).await.unwrap(),
        )
    });
    let node: fibril_core::ipam::NodeName = env.node.name().parse().unwrap();
    assert_eq!(
        pool_obj
            .pool_state()
            .unwrap()
            .block_of(&node)
            .unwrap()
            .to_string(),
        "10.250.1.0/24"
    );
    assert_eq!(fnode.pod_cidr().unwrap().to_string(), "10.250.1.0/24");
    // The peer's block, learnt from its FibrilNode, is routed (native routing).
    let deadline = Instant::now() + WAIT;
    loop {
        let routes = env.node.routes().unwrap();
        if routes.iter().any(|r| {
            r.dst.to_string() == "10.250.0.0/24" && r.via == Some(PEER_IP.parse().unwrap())
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no route to the peer's block: {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let p1 = env.pod("a");
    let ip1 = pod_ip(&ok_result(env.add("c1", &p1)));
    assert!(
        "10.250.1.0/24"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&ip1),
        "{ip1}"
    );

    // Restart: the same block (no new claim), the same address for the same pod; the
    // route to the peer's block, left in place, is recognised as fibril's, not refused.
    let rv = pool_obj.metadata.resource_version.clone();
    env.agent.take().unwrap().stop().unwrap();
    env.start(&opts);
    let st = env.wait_ready();
    assert_eq!(st.ipam.node_cidr.as_deref(), Some("10.250.1.0/24"));
    assert_eq!(pod_ip(&ok_result(env.add("c1", &p1))), ip1);
    let after = env.rt.block_on(async {
        Api::<FibrilIPPool>::all(env.client.clone())
            .get(DEFAULT_POOL_NAME)
            .await
            .unwrap()
    });
    assert_eq!(after.metadata.resource_version, rv, "no write on restart");

    // The cluster's store lost the claim (reset): the persisted allocations' block is
    // claimed back, so the pod keeps its address.
    env.agent.take().unwrap().stop().unwrap();
    env.rt.block_on(async {
        fibril_agent::pool::release(&env.client, &node)
            .await
            .unwrap();
    });
    env.start(&opts);
    let st = env.wait_ready();
    assert_eq!(
        st.ipam.node_cidr.as_deref(),
        Some("10.250.1.0/24"),
        "{st:?}"
    );
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn cluster_pool_overlapping_a_routed_firewall_subnet_is_refused_naming_both() {
    // Seed 000 on one node: the pool covers a firewall subnet the node routes.
    let opts = Opts {
        with_pod_cidr: None,
        cluster_pool: Some("10.250.0.0/16"),
        ..Opts::default()
    };
    let mut env = Env::new(&opts);
    env.node
        .replace_route(&Route {
            dst: "10.250.64.0/24".parse().unwrap(),
            via: Some("172.31.250.1".parse().unwrap()),
            dev: None,
        })
        .unwrap();
    env.start(&opts);
    let e = env.refusal();
    assert!(
        e.contains(
            "pool 10.250.0.0/16 overlaps route 10.250.64.0/24 via 172.31.250.1 dev eth0 on node"
        ),
        "{e}"
    );
    assert!(!env.conflist().exists(), "no conflist when refusing");
    // The refusal outlives the process, for `fibril status`.
    let r = fibril_agent::read_refusal(&env.dir.path().join("state")).expect("refusal record");
    assert_eq!(r.reason, e);
    // Nothing was claimed.
    let state = env
        .rt
        .block_on(fibril_agent::pool::read_state(&env.client))
        .unwrap();
    assert!(
        state.as_ref().is_none_or(|s| s.blocks.is_empty()),
        "{state:?}"
    );
}

/// What fibril has attached to `ifname` in `ns`, at both TCX hooks.
fn tcx_attached(ns: &NetNs, ifname: &str) -> usize {
    ns.run(|| {
        // Every program at tc ingress, and every one at tc egress.
        [fibril_bpf::Hook::FromNetdev, fibril_bpf::Hook::ToPod]
            .into_iter()
            .map(|h| fibril_bpf::tcx_programs(ifname, h).map_or(0, |p| p.len()))
            .sum::<usize>()
    })
    .unwrap()
}

#[test]
#[ignore = "privileged: needs root, netns and bpffs"]
fn uninstall_refuses_while_running_or_serving_pods_and_then_leaves_nothing() {
    use fibril_agent::{UninstallError, UninstallOptions};
    let opts = Opts::default();
    let mut env = Env::new(&opts);
    env.start(&opts);
    env.wait_ready();
    let p1 = env.pod("a");
    let ip1 = pod_ip(&ok_result(env.add("c1", &p1)));
    // The route to the peer's pod range, installed by the agent.
    let deadline = Instant::now() + WAIT;
    while !env
        .node
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.dst.to_string() == PEER_CIDR)
    {
        assert!(Instant::now() < deadline, "no route to the peer's pod CIDR");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tcx_attached(&env.node, "eth0") > 0);
    let cfg = env.config(&opts);
    let pins = cfg.bpf_pin_dir();
    assert!(pins.exists());

    // While the agent runs: refused (it would put everything back).
    let e = fibril_agent::uninstall(&cfg, &env.node, UninstallOptions { force: true }).unwrap_err();
    assert!(matches!(e, UninstallError::AgentRunning { .. }), "{e}");
    env.agent.take().unwrap().stop().unwrap();

    // A pod still on fibril's network: refused, naming it, and nothing removed.
    let e =
        fibril_agent::uninstall(&cfg, &env.node, UninstallOptions { force: false }).unwrap_err();
    assert!(matches!(e, UninstallError::LiveEndpoints { .. }), "{e}");
    assert!(e.to_string().contains(&ip1.to_string()), "{e}");
    assert!(env.conflist().exists() && pins.exists());

    // Forced: everything of fibril goes.
    let r = fibril_agent::uninstall(&cfg, &env.node, UninstallOptions { force: true }).unwrap();
    let removed = r.removed.join("\n");
    assert!(removed.contains("CNI config"), "{removed}");
    assert!(
        removed.contains(&format!("route {PEER_CIDR} via {PEER_IP}")),
        "{removed}"
    );
    assert!(removed.contains("programs"), "{removed}");
    assert!(!env.conflist().exists());
    assert!(!pins.exists(), "{} remains", pins.display());
    assert!(!cfg.paths.state_dir.exists());
    let links = env.node.links().unwrap();
    assert!(
        !links
            .iter()
            .any(|l| fibril_agent::endpoint::is_pod_veth(&l.name)
                || l.name == fibril_agent::TUNNEL_DEVICE),
        "{links:?}"
    );
    assert!(
        p1.link("eth0").unwrap().is_none(),
        "the pod's interface went with its veth"
    );
    assert!(
        !env.node
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.dst.to_string() == PEER_CIDR),
        "the route to the peer is gone"
    );
    // The kernel lets go of the unpinned links.
    let deadline = Instant::now() + WAIT;
    while tcx_attached(&env.node, "eth0") > 0 {
        assert!(Instant::now() < deadline, "programs still attached to eth0");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node's own address and default route are untouched.
    assert!(env
        .node
        .addrs()
        .unwrap()
        .iter()
        .any(|a| a.addr.addr().to_string() == NODE_IP));
    // A second run finds nothing to do.
    let again =
        fibril_agent::uninstall(&cfg, &env.node, UninstallOptions { force: false }).unwrap();
    assert!(again.removed.is_empty(), "{:?}", again.removed);
}
