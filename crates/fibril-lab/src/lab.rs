//! Lab lifecycle: `up`, `down`, `status`, and the record persisted in the state dir.
//!
//! `up` builds the topology, starts the detached supervisor and waits until every node
//! is Ready. `down` works from the lab's name alone, so it also cleans up a lab whose
//! processes were killed or whose state dir is damaged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use fibril_core::consts;
use fibril_core::kinds::FibrilNode;
use fibril_core::lab::{CniMode, LabLayout, LabName, LabSpec};

use crate::supervisor::{self, ComponentState, ComponentStatus};
use crate::topology;

/// What `lab up` persisted: the spec and the binary that runs every component.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabRecord {
    pub spec: LabSpec,
    pub fibril_exe: PathBuf,
    pub created_at: String,
}

/// Write a file so that readers see the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl LabRecord {
    pub fn load(name: &LabName) -> anyhow::Result<Option<LabRecord>> {
        let path = LabLayout::state_dir_of(name).join("lab.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "lab state {} is damaged; `fibril lab down --name {name}` removes it",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Like [`LabRecord::load`], but a missing lab is an error that says how to make one.
    pub fn require(name: &LabName) -> anyhow::Result<LabRecord> {
        Self::load(name)?.with_context(|| {
            format!("no lab named {name:?} is up; start one with `fibril lab up --name {name}`")
        })
    }

    pub fn layout(&self) -> LabLayout {
        self.spec.layout()
    }
}

pub fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn supervisor_pid(layout: &LabLayout) -> Option<u32> {
    std::fs::read_to_string(layout.supervisor_pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Is this pid the supervisor of this lab (and not a recycled pid)?
fn is_our_supervisor(pid: u32, name: &LabName) -> bool {
    topology::is_lab_supervisor(pid as i32, name.as_str())
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and must run as root");
    }
    Ok(())
}

/// Check for what the chosen CNI needs, naming the package that provides it.
fn check_prerequisites(spec: &LabSpec, fibril_exe: &Path) -> anyhow::Result<()> {
    match spec.cni {
        CniMode::Bridge => {
            for plugin in ["bridge", "host-local", "loopback"] {
                let p = Path::new(consts::CNI_REFERENCE_PLUGIN_DIR).join(plugin);
                if !p.exists() {
                    bail!(
                        "--cni bridge needs the reference CNI plugin {} (missing); install it with `apt-get install containernetworking-plugins`",
                        p.display()
                    );
                }
            }
        }
        CniMode::Fibril => {
            let plugin = crate::fibril_cni::fibril_cni_exe(fibril_exe);
            if !plugin.is_file() {
                bail!(
                    "--cni fibril needs the fibril-cni plugin next to the fibril binary ({} is missing); build it with `cargo build -p fibril-cni`",
                    plugin.display()
                );
            }
        }
    }
    if which("ip").is_none() {
        bail!("the lab needs `ip` from iproute2 to run pod processes; install iproute2");
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// How `up` ended.
pub enum UpOutcome {
    Created,
    AlreadyUp,
}

/// Bring a lab up and wait until every node is Ready.
pub async fn up(
    spec: LabSpec,
    fibril_exe: PathBuf,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<UpOutcome> {
    if let Err(errs) = spec.validate() {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        bail!("invalid lab settings:\n{}", lines.join("\n"));
    }
    require_root()?;
    let layout = spec.layout();
    let name = layout.name().clone();

    if let Some(existing) = LabRecord::load(&name)? {
        let alive = supervisor_pid(&layout)
            .map(|p| pid_alive(p) && is_our_supervisor(p, &name))
            .unwrap_or(false);
        if existing.spec != spec {
            bail!(
                "lab {name:?} already exists with different settings ({} nodes, cni {}, pod CIDR {}); run `fibril lab down --name {name}` first",
                existing.spec.nodes, existing.spec.cni, existing.spec.pod_cidr
            );
        }
        if !alive {
            bail!(
                "lab {name:?} exists but its supervisor is not running; run `fibril lab down --name {name}` to clean it up, then `fibril lab up` again"
            );
        }
        progress(&format!("lab {name:?} is already up with these settings"));
        wait_ready(&layout, timeout, progress).await?;
        return Ok(UpOutcome::AlreadyUp);
    }
    if topology::exists(&layout) {
        bail!(
            "namespaces of lab {name:?} exist but it has no state; run `fibril lab down --name {name}` to remove the leftovers first"
        );
    }
    check_prerequisites(&spec, &fibril_exe)?;

    std::fs::create_dir_all(layout.state_dir())
        .with_context(|| format!("creating {}", layout.state_dir().display()))?;
    let record = LabRecord {
        spec: spec.clone(),
        fibril_exe: fibril_exe.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    write_atomic(&layout.state_file(), &serde_json::to_vec_pretty(&record)?)?;

    let res = async {
        progress(&format!(
            "building the network: fabric {}, control plane, {} nodes, world {}",
            spec.fabric_cidr, spec.nodes, spec.world_cidr
        ));
        let mut p = |s: &str| progress(&format!("  {s}"));
        topology::create(&layout, &mut p).context("building the lab network")?;
        fibril_bpf::ensure_bpffs().context("mounting bpffs")?;
        if spec.cni == CniMode::Fibril {
            progress("installing fibril-cni and the node agents' configs");
            crate::fibril_cni::install(&layout, &fibril_exe)?;
        }
        progress("starting the supervisor (API server, controllers, kubelets, node agents)");
        spawn_supervisor(&layout, &fibril_exe)?;
        wait_ready(&layout, timeout, progress).await?;
        crate::addons::install(&layout, timeout, progress).await
    }
    .await;
    if let Err(e) = res {
        progress(&format!("lab up failed: {e:#}"));
        if e.downcast_ref::<AgentsRefused>().is_some() {
            // The lab works as built; fibril refused the configuration it was given. Leave
            // it up so that the refusal can be inspected where it happened.
            progress(&format!(
                "the lab is left up so that the refusal can be inspected: `fibril status --name \
                 {name}`, `fibril lab status --name {name}`; remove it with `fibril lab down \
                 --name {name}`"
            ));
        } else {
            progress("removing what was created");
            let _ = down(&name, &mut |_| {});
        }
        return Err(e);
    }
    Ok(UpOutcome::Created)
}

/// How long `up` waits, after the first agent refused, for the other nodes to be Ready or
/// refuse too before it reports.
const REFUSAL_GRACE: Duration = Duration::from_secs(5);

/// fibril's agent refused to start on some nodes (a pool overlapping a route, an exhausted
/// pool, legacy host routing in strict mode, ...): each node with its refusal.
#[derive(Debug, thiserror::Error)]
#[error("fibril's agent refused to start on {}", refusals.iter().map(|(n, r)| format!("{n}: {r}")).collect::<Vec<_>>().join("; "))]
pub struct AgentsRefused {
    pub refusals: Vec<(String, String)>,
}

/// The last refusal of `node`'s fibril agent, if it has refused since it was last ready.
pub fn agent_refusal(layout: &LabLayout, node: &str) -> Option<fibril_agent::Refusal> {
    if layout.spec.cni != CniMode::Fibril {
        return None;
    }
    fibril_agent::read_refusal(&crate::fibril_cni::agent_state_dir(layout, node))
}

/// Pod CIDR blocks fibril's agents claimed (cluster-pool mode), by node.
async fn claimed_blocks(client: &kube::Client) -> std::collections::BTreeMap<String, String> {
    let api: Api<FibrilNode> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|f| Some((f.metadata.name.clone()?, f.pod_cidr()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn spawn_supervisor(layout: &LabLayout, exe: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(layout.log_dir())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log_dir().join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["lab", "supervise", "--name", layout.name().as_str()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", fibril_core::consts::COMPONENT_LOG_FILTER);
    }
    // Its own session: the supervisor outlives the `lab up` command and its terminal.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the lab supervisor")?;
    write_atomic(
        &layout.supervisor_pid_file(),
        child.id().to_string().as_bytes(),
    )?;
    Ok(())
}

/// A kube client for the lab's API server over its unix socket.
pub fn client(layout: &LabLayout) -> anyhow::Result<kube::Client> {
    fibril_apiserver::client_for_socket(&layout.api_socket())
}

async fn wait_ready(
    layout: &LabLayout,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let client = loop {
        if layout.api_socket().exists() {
            if let Ok(c) = client(layout) {
                if c.apiserver_version().await.is_ok() {
                    break c;
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the API server did not come up within {timeout:?}; see {}",
                layout.log_dir().join("apiserver.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    progress(&format!(
        "API server ready at {} (and {})",
        layout.api_url(),
        layout.api_socket().display()
    ));
    let nodes: Api<Node> = Api::all(client.clone());
    let want = layout.node_names();
    let mut reported = std::collections::BTreeSet::new();
    let mut first_refusal: Option<Instant> = None;
    loop {
        let list = nodes.list(&ListParams::default()).await?;
        let blocks = if layout.spec.ipam == fibril_core::agent_config::IpamMode::ClusterPool {
            claimed_blocks(&client).await
        } else {
            Default::default()
        };
        for n in &list.items {
            let name = n.metadata.name.clone().unwrap_or_default();
            if node_ready(n) && reported.insert(name.clone()) {
                let cidr = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .or_else(|| blocks.get(&name).cloned())
                    .unwrap_or_default();
                progress(&format!("node {name} Ready (pod CIDR {cidr})"));
            }
        }
        if want.iter().all(|w| reported.contains(w)) {
            return Ok(());
        }
        // A refusal is final for this configuration: say so now rather than at the timeout,
        // once every node not Ready has refused too (or a few seconds passed), so that the
        // report covers all of them.
        let waiting: Vec<&String> = want.iter().filter(|w| !reported.contains(*w)).collect();
        let refusals: Vec<(String, String)> = waiting
            .iter()
            .filter_map(|w| agent_refusal(layout, w).map(|r| ((*w).clone(), r.reason)))
            .collect();
        if !refusals.is_empty() {
            let first = *first_refusal.get_or_insert_with(Instant::now);
            if refusals.len() == waiting.len() || first.elapsed() > REFUSAL_GRACE {
                return Err(AgentsRefused { refusals }.into());
            }
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.iter().filter(|w| !reported.contains(*w)).collect();
            let why: Vec<String> = list
                .items
                .iter()
                .filter(|n| missing.contains(&&n.metadata.name.clone().unwrap_or_default()))
                .map(|n| {
                    format!(
                        "{}: {}",
                        n.metadata.name.clone().unwrap_or_default(),
                        ready_message(n)
                    )
                })
                .collect();
            bail!(
                "nodes not Ready within {timeout:?}: {missing:?} {why:?}; logs in {}",
                layout.log_dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn ready_message(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            format!(
                "Ready={} {}",
                c.status,
                c.message.clone().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "not registered".into())
}

/// Remove everything of a lab: stop the supervisor (so nothing restarts), then destroy
/// the topology, which also kills any process left in the lab's namespaces.
pub fn down(name: &LabName, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    require_root()?;
    let layout_hint = LabRecord::load(name)
        .ok()
        .flatten()
        .map(|r| r.layout())
        .unwrap_or_else(|| {
            LabSpec {
                name: name.clone(),
                ..LabSpec::default()
            }
            .layout()
        });
    if let Some(pid) = supervisor_pid(&layout_hint) {
        if pid_alive(pid) && is_our_supervisor(pid, name) {
            progress(&format!("stopping supervisor (pid {pid})"));
            let p = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(8);
            while pid_alive(pid) && Instant::now() < deadline {
                // Reap it if it is our child (it is not, normally: it has its own session).
                let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_alive(pid) {
                progress("supervisor did not stop; killing it");
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let report = topology::destroy(name, progress).context("removing the lab")?;
    if !report.failures.is_empty() {
        let lines: Vec<String> = report.failures.iter().map(|f| format!("  {f}")).collect();
        bail!(
            "lab {name:?} was only partly removed:\n{}",
            lines.join("\n")
        );
    }
    Ok(())
}

/// `fibril lab status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    pub name: String,
    pub spec: LabSpec,
    pub state_dir: PathBuf,
    pub api_url: String,
    pub api_socket: PathBuf,
    pub api_reachable: bool,
    pub supervisor: SupervisorStatus,
    pub components: Vec<ComponentStatus>,
    pub nodes: Vec<NodeSummary>,
    pub pods: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorStatus {
    pub pid: Option<u32>,
    pub running: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub name: String,
    pub ready: bool,
    pub internal_ip: Option<String>,
    /// `spec.podCIDR`, or in cluster-pool mode the block the node's agent claimed.
    pub pod_cidr: Option<String>,
    pub message: String,
    /// The node's fibril agent refused to start, and why (`--cni fibril`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_refusal: Option<String>,
}

pub async fn status(name: &LabName) -> anyhow::Result<LabStatus> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    let sup_pid = supervisor_pid(&layout);
    let sup_running = sup_pid.is_some_and(|p| pid_alive(p) && is_our_supervisor(p, name));
    let mut components = supervisor::read_components(&layout)
        .map(|f| f.components)
        .unwrap_or_default();
    for c in &mut components {
        // The file goes stale if the supervisor itself died: trust only live pids.
        if c.pid.is_some_and(|p| !pid_alive(p)) {
            c.state = ComponentState::Stopped;
            c.pid = None;
        }
    }
    let mut api_reachable = false;
    let mut nodes = Vec::new();
    let mut pods = 0;
    if let Ok(c) = client(&layout) {
        let blocks = tokio::time::timeout(Duration::from_secs(3), claimed_blocks(&c))
            .await
            .unwrap_or_default();
        let nodes_api: Api<Node> = Api::all(c.clone());
        if let Ok(list) = tokio::time::timeout(
            Duration::from_secs(3),
            nodes_api.list(&ListParams::default()),
        )
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(anyhow::Error::from))
        {
            api_reachable = true;
            for n in list.items {
                let internal_ip = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                    .map(|a| a.address.clone());
                let name = n.metadata.name.clone().unwrap_or_default();
                nodes.push(NodeSummary {
                    ready: node_ready(&n),
                    internal_ip,
                    pod_cidr: n
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.clone())
                        .or_else(|| blocks.get(&name).cloned()),
                    message: ready_message(&n),
                    agent_refusal: agent_refusal(&layout, &name).map(|r| r.reason),
                    name,
                });
            }
            let pods_api: Api<Pod> = Api::all(c);
            pods = pods_api
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
        }
    }
    Ok(LabStatus {
        name: name.to_string(),
        state_dir: layout.state_dir(),
        api_url: layout.api_url(),
        api_socket: layout.api_socket(),
        spec: record.spec,
        api_reachable,
        supervisor: SupervisorStatus {
            pid: sup_pid,
            running: sup_running,
        },
        components,
        nodes,
        pods,
    })
}
