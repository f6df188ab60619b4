//! One worker per pod (upstream's pod workers): it sets up the sandbox (netns,
//! resolv.conf, CNI ADD), starts and restarts the containers, probes readiness, writes
//! the pod's status, and on deletion tears everything down and finishes the delete.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event, ObjectReference, Pod, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use fibril_netlink::NetNs;

use super::network::PodNet;
use super::process::{self, Exit, Launch, Started};
use super::record::{ContainerRecord, PodRecord};
use super::spec::{self, RunContext};
use super::status::{self, CState, ContainerView, PodView, SandboxView};
use super::Ctx;
use crate::controllers::podutil;

/// How often a worker wakes without events (probes, backoffs, status).
const TICK: Duration = Duration::from_millis(500);
/// First retry delay after a failed sandbox or container start, doubled up to the cap.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting restarts without backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Grace period ceiling: the lab does not wait 30 s for a pod to stop.
const MAX_GRACE: Duration = Duration::from_secs(5);
/// Attempts at CNI DEL before teardown goes on without it.
const CNI_DEL_ATTEMPTS: u32 = 4;
/// Attempts at the final API delete before leaving it to the next pod event.
const DELETE_ATTEMPTS: u32 = 5;
/// How long a single readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn now() -> Time {
    Time(Timestamp::now())
}

fn parse_time(s: &Option<String>) -> Option<Time> {
    s.as_deref().and_then(|s| s.parse().ok()).map(Time)
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_CAP)
}

/// A container's exit reported by its watcher task: (container, generation, exit).
type ExitEvent = (String, u64, Exit);

enum Sandbox {
    Creating {
        message: Option<String>,
        next_try: Instant,
        backoff: Duration,
    },
    Ready,
    /// The pod finished and its sandbox is gone.
    Finished,
}

struct Ctr {
    spec: Container,
    state: CState,
    last_state: Option<CState>,
    restart_count: i32,
    pid: Option<i32>,
    ticks: Option<u64>,
    /// Bumped on every start, so a late exit of an old process is ignored.
    generation: u64,
    started: Option<Instant>,
    next_start: Instant,
    backoff: Duration,
    ready: bool,
    next_probe: Instant,
    probe_failures: i32,
}

impl Ctr {
    fn new(spec: Container) -> Self {
        Ctr {
            spec,
            state: CState::waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            pid: None,
            ticks: None,
            generation: 0,
            started: None,
            next_start: Instant::now(),
            backoff: BACKOFF_START,
            ready: false,
            next_probe: Instant::now(),
            probe_failures: 0,
        }
    }
    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }
}

pub(crate) struct PodWorker {
    ctx: Arc<Ctx>,
    uid: String,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    rec: Option<PodRecord>,
    sandbox: Sandbox,
    ctrs: Vec<Ctr>,
    exit_tx: mpsc::UnboundedSender<ExitEvent>,
    exit_rx: mpsc::UnboundedReceiver<ExitEvent>,
    /// The status last written, to skip rewriting it while the watch catches up.
    written: Option<(Option<String>, k8s_openapi::api::core::v1::PodStatus)>,
    /// A pod we never ran that is already finished: only deletion concerns us.
    passive: bool,
}

/// Why a worker ended.
pub(crate) enum Outcome {
    /// Torn down and deleted from the API (or already gone there).
    Done,
    /// Torn down, but the final API delete failed; a later event retries it.
    DeletePending,
    /// The kubelet is shutting down; the pod keeps running for the next kubelet.
    Detached,
}

impl PodWorker {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        uid: String,
        rx: watch::Receiver<Option<Arc<Pod>>>,
        rec: Option<PodRecord>,
    ) -> Self {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let pod = rx.borrow().clone();
        let passive = rec.is_none() && pod.as_deref().is_some_and(podutil::is_terminal);
        let mut w = PodWorker {
            ctx,
            uid,
            rx,
            rec: None,
            sandbox: Sandbox::Creating {
                message: None,
                next_try: Instant::now(),
                backoff: BACKOFF_START,
            },
            ctrs: Vec::new(),
            exit_tx,
            exit_rx,
            written: None,
            passive,
        };
        if let Some(p) = pod.as_deref() {
            w.ctrs = p
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().cloned())
                .map(Ctr::new)
                .collect();
        }
        if let Some(r) = rec {
            w.adopt(r);
        }
        w
    }

    fn pod_key(&self) -> String {
        match &self.rec {
            Some(r) => format!("{}/{}", r.namespace, r.name),
            None => self
                .rx
                .borrow()
                .as_deref()
                .map(podutil::key)
                .unwrap_or_else(|| self.uid.clone()),
        }
    }

    /// Take over what a previous kubelet left: live processes are watched again, dead
    /// ones are restarted (as after a node reboot), the sandbox is kept.
    fn adopt(&mut self, rec: PodRecord) {
        if rec.finished {
            self.sandbox = Sandbox::Finished;
        }
        for c in &mut self.ctrs {
            let Some(cr) = rec.containers.get(&c.spec.name) else {
                continue;
            };
            c.restart_count = cr.restart_count;
            let started_at = parse_time(&cr.started_at).unwrap_or_else(now);
            match cr.pid {
                Some(pid) if process::alive(pid, cr.start_ticks) => {
                    tracing::info!(pod = %rec.name, container = %c.spec.name, pid, "adopted running container");
                    c.pid = Some(pid);
                    c.ticks = cr.start_ticks;
                    c.state = CState::Running { started_at };
                    c.started = Some(Instant::now());
                    c.generation += 1;
                    let tx = self.exit_tx.clone();
                    let (name, gen) = (c.spec.name.clone(), c.generation);
                    let started = Started {
                        pid,
                        start_ticks: cr.start_ticks,
                        child: None,
                    };
                    tokio::spawn(async move {
                        let exit = process::wait(started).await;
                        let _ = tx.send((name, gen, exit));
                    });
                }
                Some(_) => {
                    c.last_state = Some(CState::Terminated {
                        exit_code: 255,
                        signal: None,
                        reason: "Unknown".into(),
                        started_at: Some(started_at),
                        finished_at: now(),
                    });
                }
                None => {}
            }
        }
        self.rec = Some(rec);
    }

    fn save(&self) {
        if let Some(r) = &self.rec {
            if let Err(e) = self.ctx.records.save(r) {
                tracing::error!(pod = %self.pod_key(), "persisting pod record: {e}");
            }
        }
    }

    pub(crate) async fn run(mut self) -> Outcome {
        loop {
            let pod = self.rx.borrow_and_update().clone();
            let pod = match pod {
                Some(p) if !podutil::is_terminating(&p) => p,
                other => return self.terminate(other.as_deref()).await,
            };
            if !self.passive {
                self.step(&pod).await;
                self.sync_status(&pod).await;
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Outcome::Detached;
                    }
                }
                Some(ev) = self.exit_rx.recv() => self.on_exit(&pod, ev),
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn host_network(pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    fn run_ctx<'a>(&'a self, pod_ip: Option<Ipv4Addr>) -> RunContext<'a> {
        RunContext {
            fibril_exe: &self.ctx.cfg.fibril_exe,
            node_name: &self.ctx.cfg.node_name,
            node_ip: self.ctx.cfg.node_ip,
            pod_ip,
        }
    }

    fn pod_ip(&self, pod: &Pod) -> Option<Ipv4Addr> {
        if Self::host_network(pod) {
            return Some(self.ctx.cfg.node_ip);
        }
        self.rec.as_ref().and_then(|r| r.pod_ip)
    }

    async fn step(&mut self, pod: &Pod) {
        match &self.sandbox {
            Sandbox::Finished => return,
            Sandbox::Creating { next_try, .. } if Instant::now() >= *next_try => {
                self.setup_sandbox(pod).await;
            }
            _ => {}
        }
        if !matches!(self.sandbox, Sandbox::Ready) {
            return;
        }
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let startable = !c.running()
                && Instant::now() >= c.next_start
                && !matches!(c.state, CState::Terminated { .. });
            if startable {
                self.start_container(pod, i);
            }
        }
        self.probe(pod).await;
        if !self.ctrs.is_empty()
            && self
                .ctrs
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { .. }))
        {
            // Finished for good: free the pod's address as upstream does.
            tracing::info!(pod = %podutil::key(pod), "all containers finished; removing the sandbox");
            self.remove_sandbox().await;
            self.sandbox = Sandbox::Finished;
            if let Some(r) = self.rec.as_mut() {
                r.finished = true;
            }
            self.save();
        }
    }

    /// Netns, resolv.conf, CNI ADD. Leaves `self.sandbox` Ready or Creating (with why).
    async fn setup_sandbox(&mut self, pod: &Pod) {
        let layout = &self.ctx.cfg.layout;
        let host_network = Self::host_network(pod);
        let rec = self.rec.get_or_insert_with(|| PodRecord {
            uid: self.uid.clone(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            netns: if host_network {
                String::new()
            } else {
                layout.pod_netns(&self.uid)
            },
            sandbox_id: spec::sandbox_id(&self.uid),
            start_time: Some(Timestamp::now().to_string()),
            ..Default::default()
        });
        let netns = rec.netns.clone();
        let already = rec.cni_result.is_some() || host_network;
        self.save();
        if already
            && (host_network
                || tokio::task::spawn_blocking({
                    let n = netns.clone();
                    move || NetNs::open(&n).is_ok()
                })
                .await
                .unwrap_or(false))
        {
            self.sandbox = Sandbox::Ready;
            return;
        }
        let backoff = match &self.sandbox {
            Sandbox::Creating { backoff, .. } => *backoff,
            _ => BACKOFF_START,
        };
        let fail = |w: &mut Self, msg: String, grow: bool| {
            let wait = if grow { backoff } else { BACKOFF_START };
            w.sandbox = Sandbox::Creating {
                message: Some(msg),
                next_try: Instant::now() + wait,
                backoff: if grow { next_backoff(backoff) } else { backoff },
            };
        };

        if let Err(why) = self.ctx.network.ready() {
            tracing::debug!(pod = %podutil::key(pod), "network not ready: {why}");
            fail(
                self,
                format!(
                    "network is not ready: {}",
                    super::node::NETWORK_NOT_READY_MESSAGE
                ),
                false,
            );
            return;
        }

        let ns_res = tokio::task::spawn_blocking({
            let n = netns.clone();
            move || -> Result<(), fibril_netlink::Error> {
                let ns = NetNs::ensure(&n)?;
                ns.set_up("lo")
            }
        })
        .await;
        match ns_res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(self, format!("Failed to create pod sandbox: {e}"), true),
            Err(e) => return fail(self, format!("Failed to create pod sandbox: {e}"), true),
        }
        let resolv_path = layout.pod_resolv_conf(&netns);
        let resolv = match spec::resolv_conf(layout, pod) {
            Some(text) => write_file(&resolv_path, text.as_bytes()),
            None => match std::fs::remove_file(&resolv_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = resolv {
            return fail(
                self,
                format!(
                    "Failed to create pod sandbox: writing {}: {e}",
                    resolv_path.display()
                ),
                true,
            );
        }

        let net = self.pod_net();
        match self.ctx.network.add(&net).await {
            Ok((result, ip)) => {
                tracing::info!(pod = %podutil::key(pod), ip = ?ip, "sandbox ready");
                if let Some(r) = self.rec.as_mut() {
                    r.cni_result = Some(result);
                    r.pod_ip = ip;
                }
                self.save();
                self.sandbox = Sandbox::Ready;
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create pod sandbox: failed to setup network for sandbox {:?}: {e}",
                    net.sandbox_id
                );
                tracing::warn!(pod = %podutil::key(pod), "{msg}");
                self.event(pod, "Warning", "FailedCreatePodSandBox", &msg)
                    .await;
                // The runtime already ran DEL to undo the partial ADD, as containerd does.
                fail(self, msg, true);
            }
        }
    }

    fn pod_net(&self) -> PodNet {
        let rec = self.rec.as_ref();
        PodNet {
            sandbox_id: spec::sandbox_id(&self.uid),
            netns_path: PathBuf::from(fibril_netlink::NETNS_RUN_DIR)
                .join(rec.map(|r| r.netns.as_str()).unwrap_or_default()),
            pod_namespace: rec.map(|r| r.namespace.clone()).unwrap_or_default(),
            pod_name: rec.map(|r| r.name.clone()).unwrap_or_default(),
            pod_uid: self.uid.clone(),
        }
    }

    fn start_container(&mut self, pod: &Pod, i: usize) {
        let pod_ip = self.pod_ip(pod);
        let host_network = Self::host_network(pod);
        let ctx = self.run_ctx(pod_ip);
        let c = &self.ctrs[i].spec;
        let env = spec::container_env(pod, c, &ctx);
        let argv = spec::container_argv(pod, c, &ctx, &env);
        let rec = self.rec.as_ref();
        let log = spec::container_log_path(
            &self.ctx.cfg.layout,
            &self.ctx.cfg.node_name,
            rec.map(|r| r.namespace.as_str()).unwrap_or("default"),
            rec.map(|r| r.name.as_str()).unwrap_or_default(),
            &self.uid,
            &c.name,
        );
        let netns = (!host_network).then(|| rec.map(|r| r.netns.clone()).unwrap_or_default());
        let working_dir = c.working_dir.clone().map(PathBuf::from);
        let name = c.name.clone();
        let started = argv
            .map_err(|e| ("CreateContainerError", e.to_string()))
            .and_then(|argv| {
                process::spawn(&Launch {
                    argv,
                    env,
                    netns,
                    log,
                    working_dir,
                })
                .map_err(|e| ("RunContainerError", e.to_string()))
            });
        let key = podutil::key(pod);
        let ctr = &mut self.ctrs[i];
        match started {
            Ok(s) => {
                if ctr.last_state.is_some() {
                    ctr.restart_count += 1;
                }
                ctr.generation += 1;
                ctr.pid = Some(s.pid);
                ctr.ticks = s.start_ticks;
                ctr.started = Some(Instant::now());
                ctr.state = CState::Running { started_at: now() };
                ctr.ready = false;
                ctr.probe_failures = 0;
                ctr.next_probe = Instant::now()
                    + ctr
                        .spec
                        .readiness_probe
                        .as_ref()
                        .and_then(|p| p.initial_delay_seconds)
                        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                        .unwrap_or_default();
                tracing::info!(pod = %key, container = %name, pid = s.pid, "started container");
                let tx = self.exit_tx.clone();
                let gen = ctr.generation;
                tokio::spawn(async move {
                    let exit = process::wait(s).await;
                    let _ = tx.send((name, gen, exit));
                });
            }
            Err((reason, message)) => {
                tracing::warn!(pod = %key, container = %name, "{reason}: {message}");
                ctr.state = CState::waiting(reason, Some(message));
                ctr.next_start = Instant::now() + ctr.backoff;
                ctr.backoff = next_backoff(ctr.backoff);
            }
        }
        self.record_containers();
    }

    fn record_containers(&mut self) {
        let Some(rec) = self.rec.as_mut() else { return };
        rec.containers = self
            .ctrs
            .iter()
            .map(|c| {
                let started_at = match &c.state {
                    CState::Running { started_at } => Some(started_at.0.to_string()),
                    _ => None,
                };
                (
                    c.spec.name.clone(),
                    ContainerRecord {
                        pid: c.pid,
                        start_ticks: c.ticks,
                        started_at,
                        restart_count: c.restart_count,
                    },
                )
            })
            .collect();
        self.save();
    }

    fn on_exit(&mut self, pod: &Pod, (name, gen, exit): ExitEvent) {
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let key = podutil::key(pod);
        let uid = self.uid.clone();
        let Some(c) = self
            .ctrs
            .iter_mut()
            .find(|c| c.spec.name == name && c.generation == gen && c.running())
        else {
            return;
        };
        let code = exit.exit_code();
        let started_at = match &c.state {
            CState::Running { started_at } => Some(started_at.clone()),
            _ => None,
        };
        let terminated = CState::Terminated {
            exit_code: code,
            signal: exit.signal,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at,
            finished_at: now(),
        };
        tracing::info!(pod = %key, container = %name, code, "container exited");
        c.pid = None;
        c.ticks = None;
        c.ready = false;
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            if c.started
                .is_some_and(|s| s.elapsed() >= BACKOFF_RESET_AFTER)
            {
                c.backoff = BACKOFF_START;
            }
            let delay = if c.restart_count == 0 && c.last_state.is_none() {
                Duration::ZERO
            } else {
                c.backoff
            };
            c.last_state = Some(terminated);
            c.state = CState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({uid})",
                    delay.as_secs(),
                    name,
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                )),
            );
            c.next_start = Instant::now() + delay;
            if !delay.is_zero() {
                c.backoff = next_backoff(c.backoff);
            }
        } else {
            c.state = terminated;
        }
        self.record_containers();
    }

    /// Readiness: an explicit readinessProbe if the container has one; for the echo
    /// image, its TCP ports accepting connections inside the pod; else running.
    async fn probe(&mut self, pod: &Pod) {
        let pod_ip = self.pod_ip(pod);
        let netns = (!Self::host_network(pod))
            .then(|| self.rec.as_ref().map(|r| r.netns.clone()))
            .flatten();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if !c.running() {
                continue;
            }
            let check = match (&c.spec.readiness_probe, spec::is_echo(&c.spec)) {
                (Some(p), _) => Check::from_probe(p, &c.spec),
                (None, true) => Check::Tcp(spec::echo_tcp_ports(&c.spec)),
                (None, false) => Check::None,
            };
            if matches!(check, Check::None) {
                self.ctrs[i].ready = true;
                continue;
            }
            if Instant::now() < c.next_probe {
                continue;
            }
            let ok = match pod_ip {
                Some(ip) => check.run(ip, netns.clone()).await,
                None => false,
            };
            let period = match &c.spec.readiness_probe {
                Some(p) => {
                    Duration::from_secs(u64::try_from(p.period_seconds.unwrap_or(10)).unwrap_or(10))
                }
                None if ok => Duration::from_secs(5),
                None => Duration::from_millis(500),
            };
            let threshold = c
                .spec
                .readiness_probe
                .as_ref()
                .and_then(|p| p.failure_threshold)
                .unwrap_or(3);
            let c = &mut self.ctrs[i];
            if ok {
                c.ready = true;
                c.probe_failures = 0;
            } else {
                c.probe_failures += 1;
                if !c.ready || c.probe_failures >= threshold {
                    c.ready = false;
                }
            }
            // Until first ready, look again soon; after that, every period.
            c.next_probe = Instant::now()
                + if c.ready {
                    period
                } else {
                    period.min(Duration::from_secs(1))
                };
        }
    }

    fn view(&self, pod: &Pod) -> PodView {
        let sandbox = match &self.sandbox {
            Sandbox::Creating { message, .. } => SandboxView::Creating {
                message: message.clone(),
            },
            Sandbox::Ready | Sandbox::Finished => SandboxView::Ready,
        };
        let creating_msg = match &sandbox {
            SandboxView::Creating { message } => Some(message.clone()),
            SandboxView::Ready => None,
        };
        let sandbox_id = spec::sandbox_id(&self.uid);
        let containers = self
            .ctrs
            .iter()
            .map(|c| ContainerView {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                container_id: (c.generation > 0)
                    .then(|| format!("fibril://{sandbox_id}-{}-{}", c.spec.name, c.restart_count)),
                state: match &creating_msg {
                    Some(m) => CState::waiting("ContainerCreating", m.clone()),
                    None => c.state.clone(),
                },
                last_state: c.last_state.clone(),
                ready: c.ready && c.running(),
                restart_count: c.restart_count,
            })
            .collect();
        PodView {
            host_ip: self.ctx.cfg.node_ip,
            pod_ip: self.pod_ip(pod),
            start_time: self
                .rec
                .as_ref()
                .and_then(|r| parse_time(&r.start_time))
                .or_else(|| Some(now())),
            sandbox,
            containers,
        }
    }

    async fn sync_status(&mut self, pod: &Pod) {
        let have = pod.status.as_ref();
        let want = status::pod_status(have, &self.view(pod), &now());
        if status::status_matches(have, &want) {
            return;
        }
        // Our last write may simply not be visible in the watch yet.
        if let Some((rv, written)) = &self.written {
            if *rv == pod.metadata.resource_version && status::status_matches(Some(written), &want)
            {
                return;
            }
        }
        let mut body = serde_json::to_value(&want).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            // Merge patch: absent means "keep", so clear what we no longer report.
            for k in ["message", "podIP", "podIPs", "reason"] {
                obj.entry(k).or_insert(serde_json::Value::Null);
            }
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": body })),
            )
            .await
        {
            Ok(_) => self.written = Some((pod.metadata.resource_version.clone(), want)),
            Err(e) => tracing::warn!(pod = %podutil::key(pod), "updating status: {e}"),
        }
    }

    async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let t = now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    pod.metadata.name.as_deref().unwrap_or("pod")
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            first_timestamp: Some(t.clone()),
            last_timestamp: Some(t),
            count: Some(1),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("kubelet".into()),
                host: Some(self.ctx.cfg.node_name.clone()),
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.ctx.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!("recording event {reason}: {e}");
        }
    }

    /// Stop everything and finish the pod's deletion.
    async fn terminate(mut self, pod: Option<&Pod>) -> Outcome {
        let key = self.pod_key();
        tracing::info!(pod = %key, "stopping pod");
        let grace = pod
            .and_then(|p| {
                p.metadata.deletion_grace_period_seconds.or_else(|| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
            })
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(MAX_GRACE)
            .min(MAX_GRACE);
        self.stop_containers(grace).await;
        if !matches!(self.sandbox, Sandbox::Finished) || self.rec.is_some() {
            self.remove_sandbox().await;
        }
        if let Err(e) = self.ctx.records.remove(&self.uid) {
            tracing::error!(pod = %key, "removing pod record: {e}");
        }
        let Some(pod) = pod else {
            return Outcome::Done;
        };
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=DELETE_ATTEMPTS {
            match api.delete(name, &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %key, "pod deleted");
                    return Outcome::Done;
                }
                // Gone already, or the name now belongs to a newer pod.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Outcome::Done,
                Err(e) => {
                    tracing::warn!(pod = %key, "finishing deletion (attempt {attempt}): {e}");
                    tokio::time::sleep(delay).await;
                    delay = next_backoff(delay);
                }
            }
        }
        Outcome::DeletePending
    }

    /// SIGTERM every container's process group, SIGKILL what is left after `grace`,
    /// then anything else still inside the pod netns.
    async fn stop_containers(&mut self, grace: Duration) {
        let running: Vec<(i32, Option<u64>)> = self
            .ctrs
            .iter()
            .filter_map(|c| Some((c.pid?, c.ticks)))
            .chain(
                // Pods adopted from a record whose containers left the spec.
                self.rec
                    .iter()
                    .flat_map(|r| r.containers.values())
                    .filter_map(|c| Some((c.pid?, c.start_ticks))),
            )
            .filter(|(pid, ticks)| process::alive(*pid, *ticks))
            .collect();
        for (pid, _) in &running {
            process::signal_group(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && running.iter().any(|(p, t)| process::alive(*p, *t)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (pid, ticks) in &running {
            if process::alive(*pid, *ticks) {
                process::signal_group(*pid, libc::SIGKILL);
            }
        }
        // Strays that left the process group (daemonised children).
        if let Some(netns) = self
            .rec
            .as_ref()
            .map(|r| r.netns.clone())
            .filter(|n| !n.is_empty())
        {
            let strays = tokio::task::spawn_blocking(move || {
                NetNs::open(&netns)
                    .and_then(|ns| ns.inode())
                    .map(fibril_netlink::pids_in_netns)
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            for pid in strays {
                // SAFETY: kill(2) on a pid inside this pod's own netns.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle && running.iter().any(|(p, t)| process::alive(*p, *t)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for c in &mut self.ctrs {
            c.pid = None;
            c.ready = false;
        }
    }

    /// CNI DEL (retried, never forever), then the netns and its /etc/netns dir.
    async fn remove_sandbox(&mut self) {
        let Some(rec) = self.rec.clone() else { return };
        if rec.netns.is_empty() {
            return;
        }
        let key = format!("{}/{}", rec.namespace, rec.name);
        let net = self.pod_net();
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=CNI_DEL_ATTEMPTS {
            match self.ctx.network.del(&net).await {
                Ok(()) => break,
                Err(e) if attempt == CNI_DEL_ATTEMPTS => {
                    tracing::error!(pod = %key, "CNI DEL failed {attempt} times, giving up: {e}")
                }
                Err(e) => {
                    tracing::warn!(pod = %key, "CNI DEL failed (attempt {attempt}): {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        let netns = rec.netns.clone();
        match tokio::task::spawn_blocking(move || NetNs::delete(&netns)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(pod = %key, "deleting netns: {e}"),
            Err(e) => tracing::error!(pod = %key, "deleting netns: {e}"),
        }
        let etc = PathBuf::from(fibril_core::consts::NETNS_ETC_DIR).join(&rec.netns);
        match std::fs::remove_dir_all(&etc) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::error!(pod = %key, "removing {}: {e}", etc.display())
            }
            _ => {}
        }
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".resolv.conf.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// One readiness check.
enum Check {
    None,
    Tcp(Vec<u16>),
    Http { port: u16, path: String },
    Exec(Vec<String>),
}

fn probe_port(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

impl Check {
    fn from_probe(p: &Probe, c: &Container) -> Check {
        if let Some(t) = &p.tcp_socket {
            return probe_port(&t.port, c).map_or(Check::Tcp(vec![0]), |p| Check::Tcp(vec![p]));
        }
        if let Some(h) = &p.http_get {
            return Check::Http {
                port: probe_port(&h.port, c).unwrap_or(0),
                path: h.path.clone().unwrap_or_else(|| "/".into()),
            };
        }
        if let Some(e) = &p.exec {
            return Check::Exec(e.command.clone().unwrap_or_default());
        }
        Check::None
    }

    /// Run the check from inside the pod netns (or the node's, for host-network pods).
    async fn run(&self, ip: Ipv4Addr, netns: Option<String>) -> bool {
        match self {
            Check::None => true,
            Check::Exec(argv) => {
                let mut cmd = match &netns {
                    Some(ns) => {
                        let mut c = tokio::process::Command::new("ip");
                        c.args(["netns", "exec", ns.as_str()]);
                        c.args(argv);
                        c
                    }
                    None => {
                        let Some((p, rest)) = argv.split_first() else {
                            return false;
                        };
                        let mut c = tokio::process::Command::new(p);
                        c.args(rest);
                        c
                    }
                };
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                matches!(
                    tokio::time::timeout(PROBE_TIMEOUT * 5, cmd.status()).await,
                    Ok(Ok(s)) if s.success()
                )
            }
            Check::Tcp(ports) => {
                let ports = ports.clone();
                in_netns(netns, move || {
                    ports.iter().all(|p| {
                        *p != 0
                            && TcpStream::connect_timeout(
                                &SocketAddr::from((ip, *p)),
                                PROBE_TIMEOUT,
                            )
                            .is_ok()
                    })
                })
                .await
            }
            Check::Http { port, path } => {
                let (port, path) = (*port, path.clone());
                in_netns(netns, move || http_ok(ip, port, &path)).await
            }
        }
    }
}

async fn in_netns(netns: Option<String>, f: impl FnOnce() -> bool + Send + 'static) -> bool {
    tokio::task::spawn_blocking(move || match netns {
        Some(n) => NetNs::open(&n).and_then(|ns| ns.run(f)).unwrap_or(false),
        None => f(),
    })
    .await
    .unwrap_or(false)
}

/// An HTTP/1.0 GET: success is a 2xx or 3xx status, as upstream's httpGet probe.
fn http_ok(ip: Ipv4Addr, port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    if port == 0 {
        return false;
    }
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let code: Option<u16> = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    matches!(code, Some(200..=399))
}
