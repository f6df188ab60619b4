//! The lab kubelet for real: a fibril API server on 127.0.0.1, a node netns of the
//! test's own, Debian's bridge + host-local CNI, pods as processes in pod netns.
//!
//! Privileged (root, netns): `#[ignore]`d for plain `cargo test`; `scripts/test.sh`
//! runs them with `--include-ignored`. Every namespace is named with a unique `fibt…`
//! lab prefix, and a guard removes them (and kills what runs inside) on drop, panics
//! included. Nothing touches the root network namespace.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use fibril_core::consts;
use fibril_core::lab::{LabLayout, LabSpec};
use fibril_lab::kubelet::{self, KubeletConfig};
use fibril_netlink::NetNs;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// One state root for the whole test binary (`FIBRIL_STATE_ROOT` is process-wide).
/// Each test's [`LabGuard`] removes its lab's dir, and the root once it is empty.
fn state_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fibril-kubelet-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Set once, before any kubelet thread reads it.
        std::env::set_var(consts::LAB_STATE_ROOT_ENV, &dir);
        dir
    })
}

fn unique_lab(tag: char) -> LabSpec {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let x = (nanos ^ (std::process::id() << 12)) % 36u32.pow(5);
    let mut name = format!("fibt{tag}");
    let mut v = x;
    for _ in 0..5 {
        name.push(std::char::from_digit(v % 36, 36).unwrap());
        v /= 36;
    }
    LabSpec {
        name: name.parse().unwrap(),
        nodes: 1,
        ..LabSpec::default()
    }
}

/// Removes every netns of the lab (node and pods), killing what runs inside, their
/// `/etc/netns` dirs and the lab's state dir; on drop, also when the test panics.
struct LabGuard {
    layout: LabLayout,
}

impl LabGuard {
    fn netns(&self) -> Vec<String> {
        let prefix = self.layout.netns_prefix();
        NetNs::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // Pods first: their processes, then the namespaces.
        let mut names = self.netns();
        names.sort_by_key(|n| !n.contains("-pod-"));
        for n in names {
            if let Ok(inode) = NetNs::open(&n).and_then(|ns| ns.inode()) {
                for pid in fibril_netlink::pids_in_netns(inode) {
                    // SAFETY: only processes inside this test's own namespaces.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let _ = NetNs::delete(&n);
        }
        if let Ok(dir) = std::fs::read_dir(consts::NETNS_ETC_DIR) {
            let prefix = self.layout.netns_prefix();
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.layout.state_dir());
        // Fails while another test still has its lab there; the last one removes it.
        let _ = std::fs::remove_dir(state_root());
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The `fibril` binary for the echo workload: `FIBRIL_EXE`, else the one cargo built
/// next to this test, else built now.
fn fibril_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("FIBRIL_EXE") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("fibril");
    if !bin.exists() {
        let st = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "fibril"])
            .status()
            .expect("running cargo build -p fibril");
        assert!(st.success(), "cargo build -p fibril failed");
    }
    assert!(bin.exists(), "no fibril binary at {}", bin.display());
    bin
}

struct Api0 {
    _server: fibril_apiserver::RunningApiServer,
    addr: SocketAddr,
    client: kube::Client,
}

async fn api_server(dir: &Path, layout: &LabLayout) -> Api0 {
    let server = fibril_apiserver::start(fibril_apiserver::ApiServerConfig {
        data_dir: dir.join("api"),
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        unix_socket: None,
        service_cidr: layout.spec.service_cidr,
        bookmark_interval: Duration::from_secs(1),
    })
    .await
    .expect("starting the API server");
    let addr = server.tcp_addr.unwrap();
    let client = fibril_apiserver::client_for_url(&format!("http://{addr}")).unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace default: {e}"),
    }
    Api0 {
        _server: server,
        addr,
        client,
    }
}

/// A TCP port on 127.0.0.1 *inside the node netns* that forwards to the API server
/// in the test's namespace, as the lab's fabric would carry it.
async fn api_proxy(node: &NetNs, api: SocketAddr) -> u16 {
    let listener = node
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(api).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

/// A kubelet running on its own runtime, on a thread inside the node netns.
struct Kubelet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(node: &NetNs, proxy_port: u16, cfg: KubeletConfig) -> Kubelet {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ns = node.clone();
        let thread = std::thread::spawn(move || {
            ns.run(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let url = format!("http://127.0.0.1:{proxy_port}");
                    let client = fibril_apiserver::client_for_url(&url).unwrap();
                    tokio::select! {
                        r = kubelet::run(client, cfg) => panic!("kubelet ended: {r:?}"),
                        _ = rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .unwrap();
        });
        Kubelet {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("kubelet thread panicked");
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn node_ns(layout: &LabLayout) -> NetNs {
    let ns = NetNs::create(&layout.node_netns(1)).unwrap();
    ns.set_up("lo").unwrap();
    ns
}

fn kubelet_cfg(layout: &LabLayout) -> KubeletConfig {
    KubeletConfig {
        layout: layout.clone(),
        node_name: layout.node_name(1),
        node_ip: layout.node_ip(1),
        fibril_exe: fibril_exe(),
    }
}

fn write_conflist(layout: &LabLayout, node: &str, plugins: serde_json::Value) {
    let dir = layout.node_cni_conf_dir(node);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = json!({
        "cniVersion": consts::CNI_SPEC_VERSION,
        "name": "fibt-bridge",
        "plugins": plugins,
    });
    let tmp = dir.join(".10-test.conflist.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
    std::fs::rename(tmp, dir.join("10-test.conflist")).unwrap();
}

fn pod(name: &str, node: &str, container: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [container]}
    }))
    .unwrap()
}

fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

fn alive(pid: i32) -> bool {
    fibril_lab::kubelet::process::start_ticks(pid).is_some()
}

fn pids_in(netns: &str) -> Vec<i32> {
    NetNs::open(netns)
        .and_then(|ns| ns.inode())
        .map(fibril_netlink::pids_in_netns)
        .unwrap_or_default()
}

async fn node_ready(nodes: &Api<Node>, name: &str) -> (String, Option<String>, Option<String>) {
    let n = nodes.get(name).await.unwrap();
    let c = n
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .expect("a Ready condition");
    (c.status, c.reason, c.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root and netns"]
async fn kubelet_runs_pods_with_the_bridge_cni() {
    state_root();
    let spec = unique_lab('k');
    let layout = spec.layout();
    let guard = LabGuard {
        layout: layout.clone(),
    };
    let node_name = layout.node_name(1);
    let api = api_server(&layout.state_dir(), &layout).await;
    let client = api.client.clone();
    let node = node_ns(&layout);
    let proxy = api_proxy(&node, api.addr).await;
    let mut k = Kubelet::start(&node, proxy, kubelet_cfg(&layout));

    // The node registers, not Ready until a CNI config exists.
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("node registered", || async {
        nodes
            .get(&node_name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let n = nodes.get(&node_name).await.unwrap();
    let labels = n.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], node_name);
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let addrs = n.status.clone().unwrap().addresses.unwrap();
    assert!(addrs
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == layout.node_ip(1).to_string()));
    assert_eq!(
        node_ready(&nodes, &node_name).await,
        (
            "False".into(),
            Some("NetworkPluginNotReady".into()),
            Some("container runtime network not ready: cni config uninitialized".into())
        )
    );

    // Pods bound before the network exists wait in ContainerCreating.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sleeper = pod(
        "sleeper",
        &node_name,
        json!({"name": "sleep", "image": "busybox", "command": ["sleep", "1000"]}),
    );
    let echo = pod(
        "echo",
        &node_name,
        json!({"name": "echo", "image": consts::ECHO_IMAGE, "ports": [
            {"name": "http", "containerPort": 8080},
            {"containerPort": 5353, "protocol": "UDP"}
        ]}),
    );
    let sleeper = pods.create(&PostParams::default(), &sleeper).await.unwrap();
    let echo = pods.create(&PostParams::default(), &echo).await.unwrap();
    eventually(
        "ContainerCreating while the network is not ready",
        || async {
            let p = pods.get("sleeper").await.map_err(|e| e.to_string())?;
            let st = p.status.clone().unwrap_or_default();
            let w = st
                .container_statuses
                .and_then(|cs| cs.into_iter().next())
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .ok_or("no waiting container yet")?;
            (st.phase.as_deref() == Some("Pending")
                && w.reason.as_deref() == Some("ContainerCreating"))
            .then_some(())
            .ok_or(format!("{:?}", p.status))
        },
    )
    .await;

    // The network arrives: the node turns Ready and the pods start.
    let host_local = layout.state_dir().join("test-host-local");
    write_conflist(
        &layout,
        &node_name,
        json!([{
            "type": "bridge",
            "bridge": consts::BRIDGE_CNI_DEVICE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": "10.250.0.0/24",
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": host_local,
            }
        }]),
    );
    eventually("node Ready", || async {
        let r = node_ready(&nodes, &node_name).await;
        (r.0 == "True").then_some(()).ok_or(format!("{r:?}"))
    })
    .await;
    let subnet: ipnet::Ipv4Net = "10.250.0.0/24".parse().unwrap();
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(&format!("{name} Running and Ready"), || async {
                let p = pods.get(name).await.map_err(|e| e.to_string())?;
                let st = p.status.clone().unwrap_or_default();
                let ok = st.phase.as_deref() == Some("Running")
                    && condition(&p, "Ready").as_deref() == Some("True")
                    && st.pod_ip.is_some();
                ok.then_some(p.clone()).ok_or(format!("{:?}", p.status))
            })
            .await
        }
    };
    let sleeper_now = running("sleeper").await;
    let echo_now = running("echo").await;
    let mut ips = Vec::new();
    for p in [&sleeper_now, &echo_now] {
        let st = p.status.clone().unwrap();
        let ip: Ipv4Addr = st.pod_ip.clone().unwrap().parse().unwrap();
        assert!(subnet.contains(&ip), "{ip}");
        assert_eq!(st.pod_ips.unwrap()[0].ip, ip.to_string());
        assert_eq!(
            st.host_ip.as_deref(),
            Some(layout.node_ip(1).to_string().as_str())
        );
        assert!(st.start_time.is_some());
        for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(condition(p, ty).as_deref(), Some("True"), "{ty}");
        }
        let cs = &st.container_statuses.unwrap()[0];
        assert!(cs.ready && cs.started == Some(true) && cs.restart_count == 0);
        assert!(cs.state.as_ref().unwrap().running.is_some());
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);

    // resolv.conf as kubelet writes it, and as the pod's processes see it.
    let sleeper_uid = sleeper.metadata.uid.clone().unwrap();
    let echo_uid = echo.metadata.uid.clone().unwrap();
    let sleeper_ns = layout.pod_netns(&sleeper_uid);
    let echo_ns = layout.pod_netns(&echo_uid);
    let want_resolv = format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
        layout.cluster_dns_ip()
    );
    assert_eq!(
        std::fs::read_to_string(layout.pod_resolv_conf(&sleeper_ns)).unwrap(),
        want_resolv
    );
    let seen = std::process::Command::new("ip")
        .args(["netns", "exec", &sleeper_ns, "cat", "/etc/resolv.conf"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.stdout), want_resolv);

    // The echo pod answers from the node netns.
    let url = format!("http://{}:8080{}", ips[1], consts::ECHO_HOSTNAME_PATH);
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "--max-time", "5", &url]);
    fibril_netlink::setns_pre_exec(&mut curl, &node).unwrap();
    let out = curl.output().unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo");

    // A restarted kubelet adopts the running pods instead of recreating them.
    let sleeper_pids = pids_in(&sleeper_ns);
    let echo_pids = pids_in(&echo_ns);
    assert_eq!(sleeper_pids.len(), 1, "{sleeper_pids:?}");
    assert!(!echo_pids.is_empty());
    k.stop_inner();
    k = Kubelet::start(&node, proxy, kubelet_cfg(&layout));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pids_in(&sleeper_ns), sleeper_pids);
    assert_eq!(pids_in(&echo_ns), echo_pids);
    let p = running("sleeper").await;
    assert_eq!(p.status.unwrap().pod_ip, Some(ips[0].to_string()));

    // A container that exits is restarted and counted.
    // SAFETY: the sleep process in this test's own pod netns.
    unsafe {
        libc::kill(sleeper_pids[0], libc::SIGKILL);
    }
    eventually("restartCount 1", || async {
        let p = pods.get("sleeper").await.map_err(|e| e.to_string())?;
        let cs = p.status.clone().unwrap().container_statuses.unwrap();
        let ok = cs[0].restart_count == 1 && cs[0].state.as_ref().unwrap().running.is_some();
        ok.then_some(()).ok_or(format!("{:?}", cs[0]))
    })
    .await;
    let restarted = pids_in(&sleeper_ns);
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted, sleeper_pids);

    // Delete both pods: processes, netns, resolv.conf, IP reservations and records go,
    // and the kubelet finishes the API deletion.
    let all_pids: Vec<i32> = restarted.iter().chain(&echo_pids).copied().collect();
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .unwrap();
    pods.delete("echo", &DeleteParams::default()).await.unwrap();
    eventually("pods deleted", || async {
        let left: Vec<String> = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;
    let netns: BTreeSet<String> = guard.netns().into_iter().collect();
    assert_eq!(netns, BTreeSet::from([layout.node_netns(1)]));
    for pid in all_pids {
        assert!(!alive(pid), "pid {pid} still running");
    }
    assert!(!PathBuf::from(consts::NETNS_ETC_DIR)
        .join(&sleeper_ns)
        .exists());
    let reserved: Vec<String> = walk(&host_local)
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect();
    assert!(
        reserved.is_empty(),
        "host-local still reserves {reserved:?}"
    );
    let records = layout.node_kubelet_dir(&node_name).join("pods");
    let left: Vec<_> = walk(&records)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A pod deleted while its kubelet is down is cleaned up when it returns.
    let late = pods
        .create(
            &PostParams::default(),
            &pod(
                "late",
                &node_name,
                json!({"name": "s", "image": "x", "command": ["sleep", "1000"]}),
            ),
        )
        .await
        .unwrap();
    running("late").await;
    let late_ns = layout.pod_netns(late.metadata.uid.as_deref().unwrap());
    let late_pids = pids_in(&late_ns);
    k.stop_inner();
    pods.delete(
        "late",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let k = Kubelet::start(&node, proxy, kubelet_cfg(&layout));
    eventually("orphaned pod cleaned up", || async {
        let gone = NetNs::open(&late_ns).is_err() && late_pids.iter().all(|p| !alive(*p));
        gone.then_some(()).ok_or("still there".to_string())
    })
    .await;
    k.stop();
    drop(guard);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root and netns"]
async fn cni_failure_shows_in_pod_status() {
    state_root();
    let layout = unique_lab('c').layout();
    let guard = LabGuard {
        layout: layout.clone(),
    };
    let node_name = layout.node_name(1);
    let api = api_server(&layout.state_dir(), &layout).await;
    let node = node_ns(&layout);
    let proxy = api_proxy(&node, api.addr).await;
    write_conflist(
        &layout,
        &node_name,
        json!([{"type": "fibril-no-such-plugin"}]),
    );
    let k = Kubelet::start(&node, proxy, kubelet_cfg(&layout));
    let pods: Api<Pod> = Api::namespaced(api.client.clone(), "default");
    let p = pods
        .create(
            &PostParams::default(),
            &pod(
                "broken",
                &node_name,
                json!({"name": "s", "image": "x", "command": ["sleep", "1000"]}),
            ),
        )
        .await
        .unwrap();
    let (msg, waiting) = eventually("the CNI error in the pod's status", || async {
        let p = pods.get("broken").await.map_err(|e| e.to_string())?;
        let st = p.status.clone().unwrap_or_default();
        let msg = st.message.clone().ok_or(format!("{st:?}"))?;
        let w = st.container_statuses.unwrap_or_default()[0]
            .state
            .clone()
            .and_then(|s| s.waiting)
            .ok_or("not waiting")?;
        Ok::<_, String>((msg, w))
    })
    .await;
    assert!(msg.contains("fibril-no-such-plugin"), "{msg}");
    assert!(msg.contains("Failed to create pod sandbox"), "{msg}");
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert!(waiting
        .message
        .unwrap_or_default()
        .contains("fibril-no-such-plugin"));
    let st = pods.get("broken").await.unwrap().status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(st.pod_ip, None);

    // Deleting it still finishes, although CNI DEL keeps failing.
    pods.delete("broken", &DeleteParams::default())
        .await
        .unwrap();
    eventually("broken pod deleted", || async {
        match pods.get_opt("broken").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
    let pod_ns = layout.pod_netns(p.metadata.uid.as_deref().unwrap());
    assert!(NetNs::open(&pod_ns).is_err(), "{pod_ns} left behind");
    k.stop();
    drop(guard);
}
