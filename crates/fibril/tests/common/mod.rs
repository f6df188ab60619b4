//! Shared harness of the end-to-end lab tests: a lab owned by one test, driven only
//! through the `fibril` CLI, and removed on drop (also when the test panics).
//!
//! Each test binary uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const FIBRIL: &str = env!("CARGO_BIN_EXE_fibril");

/// `fibt` + 6 random lowercase alphanumerics: a valid, unique lab name that the
/// before-stop leftover check recognises.
pub fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut v = (nanos ^ u128::from(std::process::id()) << 20) % 36u128.pow(6);
    let mut s = String::from("fibt");
    for _ in 0..6 {
        s.push(std::char::from_digit((v % 36) as u32, 36).unwrap());
        v /= 36;
    }
    s
}

/// `fibril-cni` must sit next to `fibril` (as `lab up --cni fibril` requires): built here
/// when the test run did not build it.
pub fn ensure_fibril_cni() -> PathBuf {
    let plugin = Path::new(FIBRIL).with_file_name("fibril-cni");
    if !plugin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "fibril-cni"])
            .status()
            .expect("running cargo build -p fibril-cni");
        assert!(st.success(), "cargo build -p fibril-cni failed");
    }
    assert!(plugin.exists(), "no fibril-cni at {}", plugin.display());
    plugin
}

/// A lab owned by one test: `lab down` on Drop, also when the test panics. Its state
/// lives in a temp dir of its own (`FIBRIL_STATE_ROOT`), never beside a user's labs.
pub struct Lab {
    pub name: String,
    pub state_root: PathBuf,
}

impl Lab {
    /// A name and state dir; nothing is created in the kernel until `lab up`.
    pub fn new() -> Lab {
        let name = unique_name();
        let state_root = std::env::temp_dir().join(format!("fibril-e2e-{name}"));
        std::fs::create_dir_all(&state_root).unwrap();
        Lab { name, state_root }
    }

    /// `lab up` with these extra arguments, requiring every node to be reported Ready.
    /// fibril's CNI is the lab's default: its plugin is built first unless `--cni bridge`
    /// is asked for.
    pub fn up(nodes: u8, extra: &[&str]) -> Lab {
        if !extra.windows(2).any(|w| w == ["--cni", "bridge"]) {
            ensure_fibril_cni();
        }
        let lab = Lab::new();
        let n = nodes.to_string();
        let mut args = vec!["lab", "up", "--nodes", &n];
        args.extend_from_slice(extra);
        let out = lab.ok(&args);
        for i in 1..=nodes {
            assert!(
                out.contains(&format!("node {} Ready", lab.node(i))),
                "{out}"
            );
        }
        lab
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FIBRIL);
        c.args(args)
            .env("FIBRIL_STATE_ROOT", &self.state_root)
            .env("FIBRIL_LAB", &self.name);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running fibril")
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fibril {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {text}"))
    }

    pub fn node(&self, i: u8) -> String {
        format!("{}-node-{i}", self.name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.name)
    }

    /// `fibril status` of one node's agent.
    pub fn status(&self, node: &str) -> Value {
        self.json(&["status", "--node", node, "-o", "json"])
    }

    /// The pid and state of a lab component (`fibril-agent/<node>`, …), from `lab status`.
    pub fn component(&self, id: &str) -> Option<(i64, String)> {
        let status = self.json(&["lab", "status", "-o", "json"]);
        let c = status["components"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id)?
            .clone();
        Some((c["pid"].as_i64()?, c["state"].as_str()?.to_string()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down"]);
        let _ = std::fs::remove_dir_all(&self.state_root);
    }
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A pod's Ready condition is True.
pub fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// A one-container `fibril/echo` pod named `name` in `default`, on `node` if given.
pub fn echo_pod(name: &str, node: Option<&str>) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n\
         {node}  containers:\n    - name: echo\n      image: fibril/echo\n      ports:\n        \
         - {{containerPort: 8080}}\n"
    )
}
