//! Test support: a fake fibril agent on a temp unix socket that answers scripted replies and
//! records every request, and a runner for the real `fibril-cni` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use fibril_core::cni_api::{
    decode_frame, encode_frame, AgentError, CniOp, CniRequest, CniResponse, CniResult,
};
use serde_json::{json, Value};

/// What the fake agent does with one request.
pub enum Reply {
    Respond(CniResponse),
    /// Exact bytes on the wire (for protocol violations).
    Raw(Vec<u8>),
    /// Read the request and never answer (until the agent is dropped).
    Hang,
    /// Close the connection without answering.
    Close,
}

type Script = Box<dyn FnMut(&CniRequest) -> Reply + Send>;

pub struct FakeAgent {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeAgent {
    /// An agent that answers every request with `script`'s reply.
    pub fn start(script: impl FnMut(&CniRequest) -> Reply + Send + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            let mut script: Script = Box::new(script);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    serve(conn, &mut script, &requests, &stop);
                }
            })
        };
        Self {
            dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// A healthy agent: ADD gets [`sample_result`] for its netns (plus the prevResult's
    /// contents, as a chained plugin keeps them); every other command succeeds.
    pub fn healthy() -> Self {
        Self::start(|req| {
            Reply::Respond(CniResponse::Ok(match &req.op {
                CniOp::Add(add) => Some(merge(
                    add.prev_result.clone(),
                    sample_result(&add.netns.display().to_string()),
                )),
                _ => None,
            }))
        })
    }

    /// An agent that answers everything with this error.
    pub fn failing(code: u32, msg: &str) -> Self {
        let msg = msg.to_owned();
        Self::start(move |_| {
            Reply::Respond(CniResponse::Error(AgentError {
                code,
                msg: msg.clone(),
                details: "from the fake agent".into(),
            }))
        })
    }

    /// The requests received so far, as raw JSON.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    pub fn typed_requests(&self) -> Vec<CniRequest> {
        self.requests()
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    /// The only request, asserting there was exactly one.
    pub fn only_request(&self) -> CniRequest {
        let mut all = self.typed_requests();
        assert_eq!(all.len(), 1, "expected one request, got {all:?}");
        all.remove(0)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn serve(conn: UnixStream, script: &mut Script, requests: &Mutex<Vec<Value>>, stop: &AtomicBool) {
    let mut line = Vec::new();
    if BufReader::new(&conn).read_until(b'\n', &mut line).is_err() || line.is_empty() {
        return;
    }
    let raw: Value = serde_json::from_slice(&line).expect("the plugin sent JSON");
    requests.lock().unwrap().push(raw);
    let request: CniRequest = decode_frame(&line).expect("the plugin sent a CniRequest");
    let mut conn = conn;
    match script(&request) {
        Reply::Respond(response) => {
            let _ = conn.write_all(&encode_frame(&response));
        }
        Reply::Raw(bytes) => {
            let _ = conn.write_all(&bytes);
        }
        Reply::Close => {}
        Reply::Hang => {
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The result a fibril agent would give: a host veth, the pod's eth0 in `netns`, one IPv4 and
/// one IPv6 address, a default route and cluster DNS, with some 1.1-only fields.
pub fn sample_result(netns: &str) -> CniResult {
    serde_json::from_value(json!({
        "interfaces": [
            {"name": "fbl1a2b3c4d", "mac": "02:00:00:00:00:01", "mtu": 1500},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns, "mtu": 1500}
        ],
        "ips": [
            {"address": "10.0.1.5/24", "gateway": "10.0.1.1", "interface": 1},
            {"address": "fd00:0:0:1::5/64", "gateway": "fd00:0:0:1::1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1", "mtu": 1450}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    }))
    .unwrap()
}

/// What a chained agent returns: `prev`'s interfaces, IPs (re-indexed) and routes, then ours.
fn merge(prev: Option<CniResult>, ours: CniResult) -> CniResult {
    let Some(mut out) = prev else { return ours };
    let offset = out.interfaces.len();
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + offset);
        ip
    }));
    out.routes.extend(ours.routes);
    out
}

// ---------------------------------------------------------------------------------------------

/// The network config a runtime would pass, pointing at `socket`.
pub fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "fibril",
        "type": "fibril-cni",
        "agentSocket": socket,
        "agentTimeoutSeconds": 5,
    })
}

pub const K8S_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                            K8S_POD_INFRA_CONTAINER_ID=ctr-1;K8S_POD_UID=0c1d-uid";

/// One run of the real binary.
pub struct Plugin {
    env: Vec<(String, Option<String>)>,
    stdin: Vec<u8>,
    /// A file standing in for the pod's netns: the plugin only checks that it exists.
    netns: tempfile::NamedTempFile,
}

impl Plugin {
    /// A complete Kubernetes-style invocation of `command` with `config` on stdin.
    pub fn new(command: &str, config: &Value) -> Self {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let mut p = Self {
            env: Vec::new(),
            stdin: config.to_string().into_bytes(),
            netns,
        };
        let netns = p.netns_path();
        p = p
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "ctr-1")
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", K8S_ARGS)
            .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni");
        p
    }

    /// Only `CNI_COMMAND` set.
    pub fn bare(command: &str, stdin: &[u8]) -> Self {
        Self {
            env: vec![("CNI_COMMAND".into(), Some(command.into()))],
            stdin: stdin.to_vec(),
            netns: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    pub fn netns_path(&self) -> String {
        self.netns.path().display().to_string()
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), Some(value.into())));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    pub fn run(&self) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fibril-cni"));
        cmd.env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(&self.stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success with no output (DEL, CHECK, STATUS, GC).
    pub fn assert_silent_ok(&self) {
        assert_eq!(self.code, 0, "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
    }

    /// Asserts success and returns stdout as JSON.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.code, 0, "{self:#?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Asserts a spec error reply with `code` on stdout and a non-zero exit; returns it.
    pub fn error(&self, code: u32) -> Value {
        assert_ne!(self.code, 0, "{self:#?}");
        let v: Value =
            serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"));
        assert_eq!(v["code"], code, "{self:#?}");
        assert!(v["msg"].is_string(), "{self:#?}");
        assert!(v["cniVersion"].is_string(), "{self:#?}");
        v
    }

    pub fn msg(&self, code: u32) -> String {
        self.error(code)["msg"].as_str().unwrap().to_owned()
    }
}
