//! podman as a real CNI client of fibril (issue 3, acceptance 6).
//!
//! podman runs in the root network namespace, as a container runtime on a real node would,
//! with its CNI backend (DESIGN.md, "podman as a real CNI client"): runc, lowered ulimits,
//! `network_backend = "cni"`, a busybox-static rootfs directory and `CONTAINERS_CONF`. Its
//! network is a conflist of type `fibril-cni` whose `agentSocket` is the socket of the agent
//! of lab node 1, so the container joins fibril's network on that node:
//! - ADD: the agent creates the host veth in the node's netns and the pod side in the netns
//!   podman made (`/run/netns/netns-…`); the root netns gets no link;
//! - the container reaches echo pods on its own node and on the other node;
//! - DEL (podman's `--rm`): the agent releases the address and removes the veth, and podman
//!   removes its netns.
//!
//! Privileged (root, netns, BPF, podman): `#[ignore]`d for plain `cargo test`; CI runs it with
//! `--include-ignored`. A missing package fails the test, naming the package.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{ensure_fibril_cni, ready, wait_for, Lab};

/// podman 4.3's CNI backend (libcni 1.1) speaks spec versions up to 1.0.0; fibril-cni
/// supports 0.4.0, 1.0.0 and 1.1.0.
const CNI_VERSION: &str = "1.0.0";

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked):
/// the rootfs has no libc to load.
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false; // only 64-bit little-endian is expected here
    }
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

/// Every host tool the test needs, each named with its Debian package. Never a skip.
fn require_host_tools() {
    let mut missing = Vec::new();
    for (bin, package) in [("podman", "podman"), ("runc", "runc"), ("ip", "iproute2")] {
        if which(bin).is_none() {
            missing.push(format!("{bin} (package {package})"));
        }
    }
    if !is_static_elf(Path::new("/bin/busybox")) {
        missing.push("a statically linked /bin/busybox (package busybox-static)".into());
    }
    if !Path::new("/usr/lib/cni/loopback").exists() {
        missing.push("/usr/lib/cni (package containernetworking-plugins)".into());
    }
    assert!(
        missing.is_empty(),
        "the podman CNI test needs {}: install them with scripts/setup.sh \
         (apt-get install podman containernetworking-plugins runc busybox-static)",
        missing.join(", ")
    );
}

/// One echo pod pinned to each node.
fn echo_pods_manifest(nodes: &[String]) -> String {
    let mut m = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n");
    for (i, node) in nodes.iter().enumerate() {
        m.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: echo-{n}
  namespace: demo
  labels: {{app: echo}}
spec:
  nodeSelector:
    kubernetes.io/hostname: {node}
  containers:
    - name: echo
      image: fibril/echo
      ports:
        - {{name: http, containerPort: 8080, protocol: TCP}}
"#,
            n = i + 1
        ));
    }
    m
}

/// `ip -j link` in the root netns (no `-n`) or in a named netns: (ifindex, ifname) pairs.
fn links(netns: Option<&str>) -> BTreeSet<(u64, String)> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-j", "link", "show"])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip -j link ({netns:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link gives JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifindex"].as_u64().unwrap(),
                l["ifname"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has_link(netns: &str, ifname: &str) -> bool {
    links(Some(netns)).iter().any(|(_, n)| n == ifname)
}

/// Links in `now` that were not in `before`.
fn added(before: &BTreeSet<(u64, String)>, now: &BTreeSet<(u64, String)>) -> Vec<(u64, String)> {
    now.difference(before).cloned().collect()
}

fn run_netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("netns-"))
                .collect()
        })
        .unwrap_or_default()
}

fn ipam_used(st: &Value) -> u64 {
    st["ipam"]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ipam.used: {st}"))
}

fn endpoint_of<'a>(st: &'a Value, container_id: &str) -> Option<&'a Value> {
    st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["containerId"] == container_id)
}

/// podman's own world: config, storage, rootfs, network config, and the container it runs.
/// On Drop: the container is stopped and removed (CNI DEL, while the lab still runs: declare
/// it after the [`Lab`]), storage mounts are detached and the directory is removed.
struct Podman {
    dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Podman {
    /// `network`: a conflist named `net` whose only plugin is fibril-cni talking to `agent_socket`.
    fn new(dir: PathBuf, plugin_dir: &Path, net: &str, agent_socket: &Path) -> Podman {
        let net_d = dir.join("net.d");
        std::fs::create_dir_all(&net_d).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": net,
            "plugins": [{ "type": "fibril-cni", "agentSocket": agent_socket }],
        });
        std::fs::write(
            net_d.join(format!("50-{net}.conflist")),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 network_config_dir = {:?}\n\
                 cni_plugin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
                net_d.display().to_string(),
                plugin_dir.display().to_string(),
            ),
        )
        .unwrap();
        busybox_rootfs(&dir.join("rootfs"));
        std::fs::create_dir_all(dir.join("sync")).unwrap();
        Podman {
            dir,
            conf,
            child: None,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"));
        cmd
    }

    fn sync(&self, name: &str) -> PathBuf {
        self.dir.join("sync").join(name)
    }

    fn cidfile(&self) -> PathBuf {
        self.dir.join("cid")
    }

    /// Starts `podman run --rm --network net` with `script` under `/bin/sh -c`.
    fn spawn(&mut self, net: &str, script: &str) {
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--network", net, "--cidfile"])
            .arg(self.cidfile())
            .arg("-v")
            .arg(format!("{}:/sync", self.dir.join("sync").display()))
            .arg("--rootfs")
            .arg(self.dir.join("rootfs"))
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.child = Some(cmd.spawn().expect("starting podman"));
    }

    /// Whether podman already exited (then its output, for the failure message).
    fn exited_early(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()?;
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        Some(describe(&out))
    }

    fn wait(&mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("podman was started");
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "podman did not exit within {timeout:?}:\n{}",
                    describe(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    }

    fn inspect(&self, cid: &str, format: &str) -> String {
        let out = self
            .command()
            .args(["inspect", "--format", format, cid])
            .output()
            .expect("running podman inspect");
        assert!(out.status.success(), "podman inspect: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::write(self.sync("done"), b"");
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever is left (a panic mid-run): removal runs CNI DEL and drops the netns.
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // containers/storage may leave its overlay home bind-mounted on itself.
        for m in mounts_under(&self.dir).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Mount points at or below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A rootfs directory: `bin/busybox` from busybox-static and its applet links
/// (`busybox --install -s`), made relative so they resolve inside the container.
fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["etc", "proc", "sys", "dev", "tmp", "run", "sync"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = bin.join("busybox");
    std::fs::copy("/bin/busybox", &busybox).unwrap();
    let st = Command::new(&busybox)
        .args(["--install", "-s"])
        .arg(&bin)
        .status()
        .expect("running busybox --install");
    assert!(st.success(), "busybox --install -s failed");
    for e in std::fs::read_dir(&bin).unwrap().flatten() {
        let p = e.path();
        if p.symlink_metadata().unwrap().file_type().is_symlink() {
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("busybox", &p).unwrap();
        }
    }
    for applet in ["sh", "ip", "wget", "timeout", "sleep", "touch"] {
        assert!(bin.join(applet).exists(), "busybox has no {applet} applet");
    }
}

/// The value after `KEY ` on the container's output line starting with `KEY`.
fn line_value<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
}

#[test]
#[ignore = "privileged: needs root, netns, podman"]
fn podman_runs_a_container_on_fibrils_network_through_fibril_cni() {
    let started = Instant::now();
    require_host_tools();
    let plugin = ensure_fibril_cni();
    let plugin_dir = plugin.parent().unwrap();

    let root_links_before = links(None);

    let lab = Lab::up(2, &["--cni", "fibril"]);
    let (node1, node2) = (lab.node(1), lab.node(2));
    let manifest = lab.state_root.join("echo.yaml");
    std::fs::write(
        &manifest,
        echo_pods_manifest(&[node1.clone(), node2.clone()]),
    )
    .unwrap();
    lab.ok(&["lab", "apply", "-f", manifest.to_str().unwrap()]);
    let pods = wait_for("Ready echo pods", Duration::from_secs(90), || {
        let v = lab.json(&["lab", "get", "pods", "-n", "demo", "-o", "json"]);
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2 && items.iter().all(ready)).then_some(items)
    });
    // (pod name, its IP, its node)
    let targets: Vec<(String, String, String)> = pods
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["status"]["podIP"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        targets.iter().any(|t| t.2 == node1) && targets.iter().any(|t| t.2 == node2),
        "one echo pod per node: {targets:?}"
    );

    // podman's network: node 1's agent, at the socket its own conflist names.
    let st = lab.status(&node1);
    assert_eq!(st["ready"], true, "{st}");
    let node_cidr: ipnet::Ipv4Net = st["ipam"]["nodeCidr"]
        .as_str()
        .unwrap_or_else(|| panic!("no ipam.nodeCidr: {st}"))
        .parse()
        .unwrap();
    let agent_conflist = PathBuf::from(
        st["conflist"]
            .as_str()
            .unwrap_or_else(|| panic!("the ready agent names its conflist: {st}")),
    );
    let installed: Value =
        serde_json::from_slice(&std::fs::read(&agent_conflist).unwrap()).unwrap();
    let agent_socket = PathBuf::from(
        installed["plugins"][0]["agentSocket"]
            .as_str()
            .unwrap_or_else(|| panic!("agentSocket in {}", agent_conflist.display())),
    );
    assert!(agent_socket.exists(), "{}", agent_socket.display());
    let used_before = ipam_used(&st);
    let node_links_before = links(Some(&node1));

    let net = format!("fibril-{}", lab.name);
    let dir = std::env::temp_dir().join(format!("fibril-podman-{}-podman", lab.name));
    let _ = std::fs::remove_dir_all(&dir);
    let mut podman = Podman::new(dir, plugin_dir, &net, &agent_socket);

    // busybox 1.35's `wget -T` segfaults (Debian 1:1.35.0-4+deb12u1): `timeout` bounds it.
    let mut script = String::from("echo \"ADDR $(ip -4 -o addr show dev eth0)\"\n");
    for (name, ip, _) in &targets {
        script.push_str(&format!(
            "echo \"GOT-{name} $(timeout 10 wget -q -O - http://{ip}:8080/hostname)\"\n"
        ));
    }
    script.push_str(
        "touch /sync/ready\n\
         i=0; while [ ! -e /sync/done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
    );
    podman.spawn(&net, &script);

    // While the container runs: its endpoint on node 1.
    wait_for("the container to run", Duration::from_secs(120), || {
        if let Some(out) = podman.exited_early() {
            panic!("podman exited before the container was ready:\n{out}");
        }
        podman.sync("ready").exists().then_some(())
    });
    let cid = std::fs::read_to_string(podman.cidfile())
        .unwrap()
        .trim()
        .to_string();
    let sandbox = podman.inspect(&cid, "{{.NetworkSettings.SandboxKey}}");
    let sandbox_name = sandbox
        .strip_prefix("/run/netns/")
        .unwrap_or_else(|| panic!("podman's netns {sandbox:?} is under /run/netns"))
        .to_string();
    assert!(sandbox_name.starts_with("netns-"), "{sandbox}");
    let st = lab.status(&node1);
    let ep = endpoint_of(&st, &cid)
        .unwrap_or_else(|| panic!("node 1's agent has an endpoint for container {cid}: {st}"))
        .clone();
    assert_eq!(ep["ifname"], "eth0", "{ep}");
    let host_veth = ep["hostVeth"].as_str().unwrap().to_string();
    let container_ip: Ipv4Addr = ep["ip"].as_str().unwrap().parse().unwrap();
    assert!(
        node_cidr.contains(&container_ip),
        "{container_ip} is in node 1's pod CIDR {node_cidr}"
    );
    assert_eq!(ipam_used(&st), used_before + 1, "one more address: {st}");
    assert!(
        has_link(&node1, &host_veth),
        "the host veth {host_veth} is in {node1}'s netns: {:?}",
        links(Some(&node1))
    );
    assert!(
        added(&node_links_before, &links(Some(&node1)))
            .iter()
            .all(|(_, n)| n == &host_veth),
        "only the container's veth was added to {node1}"
    );
    assert!(
        has_link(&sandbox_name, "eth0"),
        "the pod side is eth0 in podman's netns {sandbox}"
    );
    let during = added(&root_links_before, &links(None));
    assert!(
        during.is_empty(),
        "the root netns got links while the container runs: {during:?}"
    );

    std::fs::write(podman.sync("done"), b"").unwrap();
    let out = podman.wait(Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podman run failed:\n{}",
        describe(&out)
    );
    eprintln!("container output:\n{stdout}");

    // Its eth0 address: the one fibril's IPAM gave, inside node 1's pod CIDR.
    let addr_line = line_value(&stdout, "ADDR").unwrap_or_else(|| panic!("{stdout}"));
    let shown: Ipv4Addr = addr_line
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no inet address on eth0: {addr_line:?}"));
    assert_eq!(shown, container_ip, "{stdout}");
    assert!(node_cidr.contains(&shown), "{shown} in {node_cidr}");
    // Same node and cross node: each echo pod answers with its name.
    for (name, ip, node) in &targets {
        let got = line_value(&stdout, &format!("GOT-{name}")).unwrap_or_default();
        assert_eq!(
            got,
            name,
            "the container reached {name} ({ip} on {node}):\n{}",
            describe(&out)
        );
    }

    // podman ran CNI DEL: address released, veth gone, netns removed.
    let st = wait_for(
        "the agent to release the address",
        Duration::from_secs(10),
        || {
            let st = lab.status(&node1);
            (ipam_used(&st) == used_before).then_some(st)
        },
    );
    assert!(endpoint_of(&st, &cid).is_none(), "endpoint removed: {st}");
    assert!(
        !has_link(&node1, &host_veth),
        "the host veth {host_veth} is gone from {node1}: {:?}",
        links(Some(&node1))
    );
    assert!(
        !Path::new(&sandbox).exists(),
        "podman removed its netns {sandbox}"
    );
    assert!(
        !run_netns_entries().contains(&sandbox_name),
        "no netns-* left behind by this test"
    );
    let cached: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{net}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(cached.is_empty(), "libcni's cached results: {cached:?}");
    let after = added(&root_links_before, &links(None));
    assert!(after.is_empty(), "the root netns got links: {after:?}");

    drop(podman);
    drop(lab);
    eprintln!("podman CNI test took {:?}", started.elapsed());
}
