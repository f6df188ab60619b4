//! Helpers for privileged tests: throwaway network namespaces and pin dirs that are
//! removed on drop, even when the test panics.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

pub mod cluster;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name with the `fibt` test prefix: `fibt<pid><seq><tag>`, short enough for
/// interface names too.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("fibt{}{n}{tag}", std::process::id() % 100_000)
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`: ip enters only the netns for this.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <ns> CMD ARGS` (for tools such as ping and sysctl; it also makes a
    /// private mount namespace for the child, which is fine for them).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Sets net sysctls (`key=value`) in this netns.
    pub fn sysctl(&self, settings: &[&str]) {
        let mut args = vec!["-qw"];
        args.extend_from_slice(settings);
        self.exec("sysctl", &args);
    }

    /// `ip -j link show <ifname>`, parsed.
    pub fn link(&self, ifname: &str) -> serde_json::Value {
        let out = self.ip(&["-j", "-s", "link", "show", ifname]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0].clone()
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        self.link(ifname)["ifindex"].as_u64().expect("ifindex") as u32
    }

    pub fn mac(&self, ifname: &str) -> String {
        self.link(ifname)["address"]
            .as_str()
            .expect("address")
            .to_string()
    }

    /// A counter of the kernel's IP MIB in this netns (`/proc/net/snmp`, "Ip:" lines),
    /// e.g. "ForwDatagrams": what the stack itself forwarded.
    pub fn ip_mib(&self, field: &str) -> u64 {
        let snmp = self.exec("cat", &["/proc/net/snmp"]);
        let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let names: Vec<&str> = ip_lines
            .next()
            .expect("Ip header")
            .split_whitespace()
            .collect();
        let values: Vec<&str> = ip_lines
            .next()
            .expect("Ip values")
            .split_whitespace()
            .collect();
        let i = names
            .iter()
            .position(|n| *n == field)
            .unwrap_or_else(|| panic!("no Ip field {field}"));
        values[i].parse().expect("counter")
    }

    /// Runs `f` on a fresh thread that has entered only this network namespace (not its
    /// mount namespace, so bpffs stays visible).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pin dir on bpffs, removed recursively on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        fibril_bpf::ensure_bpffs().expect("bpffs");
        PinDir {
            path: PathBuf::from(fibril_core::consts::BPFFS_MOUNT).join(unique("pins")),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
