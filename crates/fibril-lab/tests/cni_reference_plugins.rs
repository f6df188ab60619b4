//! Privileged: the CNI runtime driving Debian's real `bridge` + `host-local` + `loopback`.
//!
//! A test netns plays the node (the runtime runs on a thread inside it, so the plugins run
//! there, as containerd's do in the host), another plays the pod. Results are checked
//! independently with `ip -j`.

use std::fs::File;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fibril_core::consts::{BRIDGE_CNI_DEVICE, CNI_REFERENCE_PLUGIN_DIR, POD_IFNAME};
use fibril_lab::cni::{Attachment, CniError, CniRuntime};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

const SUBNET_PREFIX: &str = "10.214.0.";
const GATEWAY: &str = "10.214.0.1";
const NETWORK: &str = "fibt-net";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("fibt{}{n}{tag}", std::process::id() % 100_000)
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns, deleted on drop (also on panic).
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        NetNs { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(fibril_core::consts::NETNS_RUN_DIR).join(&self.name)
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-n", self.name.as_str(), "-j"];
        all.extend_from_slice(args);
        let out = Command::new("ip").args(&all).output().unwrap();
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Runs `f` on a thread that entered only this network namespace.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Runs a CNI operation from inside this netns on a single-threaded runtime: the
    /// plugins are spawned from this thread and so start in this netns.
    fn cni<T: Send + 'static, F>(&self, rt: &CniRuntime, att: &Attachment, op: F) -> T
    where
        F: FnOnce(CniRuntime, Attachment) -> futures::future::BoxFuture<'static, T>
            + Send
            + 'static,
    {
        let (rt, att) = (rt.clone(), att.clone());
        self.enter(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(op(rt, att))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Setup {
    tmp: tempfile::TempDir,
    node: NetNs,
    pod: NetNs,
    rt: CniRuntime,
    att: Attachment,
}

fn setup(subnet: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let node = NetNs::new("node");
    let pod = NetNs::new("pod");
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE_CNI_DEVICE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": tmp.path().join("ipam"),
                }
            },
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf_dir.join("10-fibt.conflist"), conflist.to_string()).unwrap();
    let rt = CniRuntime {
        conf_dir,
        bin_dirs: vec![
            tmp.path().join("bin"),
            PathBuf::from(CNI_REFERENCE_PLUGIN_DIR),
        ],
        cache_dir: tmp.path().join("cache"),
    };
    let att = Attachment {
        container_id: unique("ctr"),
        netns_path: pod.path(),
        ifname: POD_IFNAME.into(),
        pod_namespace: "default".into(),
        pod_name: "web-0".into(),
        pod_uid: "0b4f6c1e-0000-4000-8000-000000000001".into(),
    };
    Setup {
        tmp,
        node,
        pod,
        rt,
        att,
    }
}

fn pod_ipv4(pod: &NetNs) -> Option<String> {
    let addrs = pod.ip_json(&["addr", "show", "dev", POD_IFNAME]);
    addrs.as_array()?.first()?["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str())
        .map(str::to_string)
}

fn ipam_reservation(ipam_dir: &Path, ip: &str) -> PathBuf {
    ipam_dir.join(NETWORK).join(ip)
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn bridge_add_check_del_against_real_plugins() {
    let s = setup("10.214.0.0/24");

    let result: Value = s
        .node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.add(&att).await })
        })
        .expect("ADD");
    let address = result["ips"][0]["address"].as_str().expect("an IP");
    assert!(
        address.starts_with(SUBNET_PREFIX) && address.ends_with("/24"),
        "{result}"
    );
    let ip = address.trim_end_matches("/24").to_string();

    // Independently: the pod has the address, lo is up, the node has the bridge.
    assert_eq!(pod_ipv4(&s.pod).as_deref(), Some(ip.as_str()));
    let lo = s.pod.ip_json(&["link", "show", "lo"]);
    assert!(
        lo[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{lo}"
    );
    assert!(s
        .node
        .ip_json(&["link", "show", BRIDGE_CNI_DEVICE])
        .is_array());
    let ipam_dir = s.tmp.path().join("ipam");
    assert!(ipam_reservation(&ipam_dir, &ip).exists());

    // The pod reaches its gateway (the bridge in the node netns).
    let server = s.node.enter(|| UdpSocket::bind((GATEWAY, 0)).unwrap());
    let pod_ip = ip.clone();
    let client = s
        .pod
        .enter(move || UdpSocket::bind((pod_ip.as_str(), 0)).unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .send_to(b"hello", server.local_addr().unwrap())
        .unwrap();
    let mut buf = [0; 16];
    let (n, from) = server.recv_from(&mut buf).expect("datagram from the pod");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.ip().to_string(), ip);

    s.node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.check(&att).await })
        })
        .expect("CHECK");

    s.node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.del(&att).await })
        })
        .expect("DEL");
    assert!(pod_ipv4(&s.pod).is_none(), "eth0 is gone");
    assert!(!ipam_reservation(&ipam_dir, &ip).exists(), "IP released");

    s.node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.del(&att).await })
        })
        .expect("DEL is idempotent");

    // CHECK after DEL has nothing to check against.
    let err = s
        .node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.check(&att).await })
        })
        .unwrap_err();
    assert!(matches!(err, CniError::NoCachedResult { .. }), "{err}");
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn a_real_plugin_error_is_surfaced_with_code_and_message() {
    let s = setup("10.214.0.0/33");
    let err = s
        .node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.add(&att).await })
        })
        .unwrap_err();
    // A config error fails the rollback DEL too; the ADD error leads the report.
    let add = match &err {
        CniError::AddCleanup { add, .. } => add.as_ref(),
        other => other,
    };
    let CniError::Plugin {
        plugin_type,
        code,
        msg,
        ..
    } = add
    else {
        panic!("{err:?}")
    };
    assert_eq!(plugin_type, "bridge");
    assert!(*code > 0);
    assert!(msg.contains("10.214.0.0/33"), "{msg}");
    assert!(
        err.to_string()
            .starts_with(&format!("plugin bridge failed (code {code}): ")),
        "{err}"
    );
    assert!(pod_ipv4(&s.pod).is_none());
}

#[test]
#[ignore = "privileged: needs root and netns"]
fn a_missing_binary_is_reported_before_touching_the_pod() {
    let s = setup("10.214.0.0/24");
    let conf =
        json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [{"type": "fibt-nonexistent"}]});
    std::fs::write(s.rt.conf_dir.join("05-missing.conflist"), conf.to_string()).unwrap();
    let err = s
        .node
        .cni(&s.rt, &s.att, |rt, att| {
            Box::pin(async move { rt.add(&att).await })
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("plugin fibt-nonexistent not found in "),
        "{msg}"
    );
    assert!(msg.contains(CNI_REFERENCE_PLUGIN_DIR), "{msg}");
}
