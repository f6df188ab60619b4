//! The lab supervisor: starts every lab component in its namespace and restarts one
//! that dies, as a DaemonSet (or a static-pod kubelet) would.
//!
//! It runs detached in the root network namespace (it owns no sockets) and records the
//! live state of every component in `<state_dir>/components.json`, which `fibril lab
//! status` reads. SIGTERM stops all components, then the supervisor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use fibril_core::lab::{CniMode, LabLayout};

use crate::lab::{write_atomic, LabRecord};

/// What a component is; each kind is one hidden `fibril lab component <kind>` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    ApiServer,
    Controllers,
    Kubelet,
    /// The per-node network agent: the lab's bridge agent for `--cni bridge`.
    BridgeAgent,
    /// fibril's own node agent, for `--cni fibril`.
    FibrilAgent,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::ApiServer => "apiserver",
            ComponentKind::Controllers => "controllers",
            ComponentKind::Kubelet => "kubelet",
            ComponentKind::BridgeAgent => "bridge-agent",
            ComponentKind::FibrilAgent => "fibril-agent",
        }
    }
}

/// One supervised process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Unique within the lab: `apiserver`, `kubelet/<node>`, …
    pub id: String,
    pub kind: ComponentKind,
    pub node: Option<String>,
    /// The network namespace it runs in.
    pub netns: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentState {
    Starting,
    Running,
    /// Exited; waiting out the back-off before the next start.
    Restarting,
    Stopped,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    #[serde(flatten)]
    pub spec: ComponentSpec,
    pub state: ComponentState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub started_at: Option<String>,
    pub log: PathBuf,
}

/// The file the supervisor keeps current.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsFile {
    pub supervisor_pid: u32,
    pub components: Vec<ComponentStatus>,
}

pub fn read_components(layout: &LabLayout) -> Option<ComponentsFile> {
    let text = std::fs::read_to_string(layout.components_file()).ok()?;
    serde_json::from_str(&text).ok()
}

/// The components a lab runs, in start order.
pub fn component_specs(layout: &LabLayout) -> Vec<ComponentSpec> {
    let mut v = vec![
        ComponentSpec {
            id: "apiserver".into(),
            kind: ComponentKind::ApiServer,
            node: None,
            netns: layout.cp_netns(),
        },
        ComponentSpec {
            id: "controllers".into(),
            kind: ComponentKind::Controllers,
            node: None,
            netns: layout.cp_netns(),
        },
    ];
    for node in layout.node_names() {
        v.push(ComponentSpec {
            id: format!("kubelet/{node}"),
            kind: ComponentKind::Kubelet,
            node: Some(node.clone()),
            netns: node.clone(),
        });
        match layout.spec.cni {
            CniMode::Bridge => v.push(ComponentSpec {
                id: format!("bridge-agent/{node}"),
                kind: ComponentKind::BridgeAgent,
                node: Some(node.clone()),
                netns: node,
            }),
            CniMode::Fibril => v.push(ComponentSpec {
                id: format!("fibril-agent/{node}"),
                kind: ComponentKind::FibrilAgent,
                node: Some(node.clone()),
                netns: node,
            }),
        }
    }
    v
}

fn log_path(layout: &LabLayout, spec: &ComponentSpec) -> PathBuf {
    layout
        .log_dir()
        .join(format!("{}.log", spec.id.replace('/', "_")))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Shared {
    layout: LabLayout,
    statuses: Mutex<BTreeMap<String, ComponentStatus>>,
}

impl Shared {
    fn update(&self, id: &str, f: impl FnOnce(&mut ComponentStatus)) {
        let mut st = self.statuses.lock().expect("status lock poisoned");
        if let Some(s) = st.get_mut(id) {
            f(s);
        }
        let file = ComponentsFile {
            supervisor_pid: std::process::id(),
            components: st.values().cloned().collect(),
        };
        drop(st);
        let path = self.layout.components_file();
        match serde_json::to_vec_pretty(&file) {
            Ok(bytes) => {
                if let Err(e) = write_atomic(&path, &bytes) {
                    tracing::error!(path = %path.display(), error = %e, "cannot write component state");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode component state"),
        }
    }
}

/// Run the supervisor until SIGTERM/SIGINT.
pub async fn run(record: LabRecord) -> anyhow::Result<()> {
    let layout = record.spec.layout();
    std::fs::create_dir_all(layout.log_dir())
        .with_context(|| format!("creating {}", layout.log_dir().display()))?;
    write_atomic(
        &layout.supervisor_pid_file(),
        std::process::id().to_string().as_bytes(),
    )?;

    let specs = component_specs(&layout);
    let shared = Arc::new(Shared {
        statuses: Mutex::new(
            specs
                .iter()
                .map(|s| {
                    (
                        s.id.clone(),
                        ComponentStatus {
                            spec: s.clone(),
                            state: ComponentState::Starting,
                            pid: None,
                            restarts: 0,
                            last_exit: None,
                            started_at: None,
                            log: log_path(&layout, s),
                        },
                    )
                })
                .collect(),
        ),
        layout: layout.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for spec in specs {
        let shared = shared.clone();
        let exe = record.fibril_exe.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            supervise_one(shared, exe, spec, stop).await
        }));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping all components"),
        _ = int.recv() => tracing::info!("SIGINT: stopping all components"),
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(layout.supervisor_pid_file());
    Ok(())
}

fn command_for(
    layout: &LabLayout,
    exe: &Path,
    spec: &ComponentSpec,
) -> anyhow::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "lab",
        "component",
        spec.kind.as_str(),
        "--name",
        layout.name().as_str(),
    ]);
    if let Some(node) = &spec.node {
        cmd.args(["--node", node]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(layout, spec))
        .with_context(|| format!("opening log for {}", spec.id))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", fibril_core::consts::COMPONENT_LOG_FILTER);
    }
    let ns = fibril_netlink::NetNs::open(&spec.netns)
        .with_context(|| format!("opening netns {} for {}", spec.netns, spec.id))?;
    fibril_netlink::setns_pre_exec(&mut cmd, &ns)
        .with_context(|| format!("preparing {} to enter netns {}", spec.id, spec.netns))?;
    Ok(cmd)
}

async fn supervise_one(
    shared: Arc<Shared>,
    exe: PathBuf,
    spec: ComponentSpec,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    // `fibril uninstall --node N` marks the node's fibril agent uninstalled: it is stopped
    // and stays stopped (as deleting a DaemonSet's pod from a node would leave it).
    let uninstalled = || match (&spec.kind, &spec.node) {
        (ComponentKind::FibrilAgent, Some(node)) => {
            crate::fibril_cni::agent_uninstall_marker(&shared.layout, node).exists()
        }
        _ => false,
    };
    loop {
        if *stop.borrow() {
            break;
        }
        if uninstalled() {
            shared.update(&spec.id, |s| {
                s.state = ComponentState::Stopped;
                s.pid = None;
                s.last_exit = Some("uninstalled".into());
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = stop.changed() => break,
            }
        }
        let child = command_for(&shared.layout, &exe, &spec)
            .and_then(|c| tokio::process::Command::from(c).spawn().map_err(Into::into));
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(component = %spec.id, error = %format!("{e:#}"), "cannot start");
                shared.update(&spec.id, |s| {
                    s.state = ComponentState::Restarting;
                    s.pid = None;
                    s.last_exit = Some(format!("start failed: {e:#}"));
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let pid = child.id();
        let started = std::time::Instant::now();
        tracing::info!(component = %spec.id, pid, "started");
        shared.update(&spec.id, |s| {
            s.state = ComponentState::Running;
            s.pid = pid;
            s.started_at = Some(now());
        });
        tokio::select! {
            res = child.wait() => {
                let what = match res {
                    Ok(st) => st.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::warn!(component = %spec.id, exit = %what, "exited; restarting");
                // A component that ran for a while gets a fresh back-off.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(500);
                }
                shared.update(&spec.id, |s| {
                    s.state = ComponentState::Restarting;
                    s.pid = None;
                    s.restarts += 1;
                    s.last_exit = Some(what);
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            _ = stop.changed() => {
                stop_child(&mut child, &spec.id).await;
                break;
            }
            _ = async {
                while !uninstalled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } => {
                tracing::info!(component = %spec.id, "uninstalled: stopping it for good");
                stop_child(&mut child, &spec.id).await;
            }
        }
    }
    shared.update(&spec.id, |s| {
        s.state = ComponentState::Stopped;
        s.pid = None;
    });
}

async fn stop_child(child: &mut tokio::process::Child, id: &str) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            tracing::warn!(component = %id, "did not stop within 3s; killing");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::lab::LabSpec;

    #[test]
    fn every_component_runs_in_its_namespace() {
        let layout = LabSpec {
            nodes: 2,
            cni: CniMode::Bridge,
            ..LabSpec::default()
        }
        .layout();
        let specs = component_specs(&layout);
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "apiserver",
                "controllers",
                "kubelet/fibril-node-1",
                "bridge-agent/fibril-node-1",
                "kubelet/fibril-node-2",
                "bridge-agent/fibril-node-2",
            ]
        );
        for s in &specs {
            match s.kind {
                ComponentKind::ApiServer | ComponentKind::Controllers => {
                    assert_eq!(s.netns, "fibril-cp");
                    assert_eq!(s.node, None);
                }
                ComponentKind::Kubelet
                | ComponentKind::BridgeAgent
                | ComponentKind::FibrilAgent => {
                    assert_eq!(Some(&s.netns), s.node.as_ref());
                }
            }
        }
        // Log files are per component and never collide.
        let logs: std::collections::BTreeSet<_> =
            specs.iter().map(|s| log_path(&layout, s)).collect();
        assert_eq!(logs.len(), specs.len());
    }

    #[test]
    fn fibril_cni_runs_the_fibril_agent_on_every_node() {
        let layout = LabSpec {
            nodes: 2,
            cni: CniMode::Fibril,
            ..LabSpec::default()
        }
        .layout();
        let agents: Vec<_> = component_specs(&layout)
            .into_iter()
            .filter(|s| s.kind != ComponentKind::Kubelet && s.node.is_some())
            .map(|s| (s.id, s.kind, s.netns))
            .collect();
        assert_eq!(
            agents,
            [
                (
                    "fibril-agent/fibril-node-1".to_string(),
                    ComponentKind::FibrilAgent,
                    "fibril-node-1".to_string()
                ),
                (
                    "fibril-agent/fibril-node-2".to_string(),
                    ComponentKind::FibrilAgent,
                    "fibril-node-2".to_string()
                ),
            ]
        );
    }
}
