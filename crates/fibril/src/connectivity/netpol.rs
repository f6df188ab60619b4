//! `fibril connectivity netpol`: the upstream NetworkPolicy conformance cases on a lab.
//!
//! 1. The model goes into the lab ([`super::manifests`]): namespaces x/y/z, pods a/b/c
//!    running `fibril/netpol-server`, pinned to the lab nodes the model names, and a
//!    ClusterIP Service per pod. The runner waits until every pod is Ready and listed by its
//!    Service for every port, and every server answers inside its own pod.
//! 2. **Baseline**: with no policy at all, every cell of every model probe must be allowed.
//!    A cell that is not can show nothing about policy (a denial there would be a false
//!    pass), so every case counts it as not probed.
//! 3. Each case starts from the model (policies deleted, labels reset, pods and namespaces
//!    from earlier cases removed or restored), re-derives its ipBlocks from the lab's pod
//!    addresses, and runs its steps cumulatively: the actions go to the lab (and to a model
//!    of the cluster that says which pods are present), then after the settle time every
//!    expected cell is probed through the destination's Service ClusterIP, concurrently.
//!    Cells that do not match are probed again up to `retries` times (upstream polls until
//!    convergence too); the last observation counts.
//!
//! What counts as what ([`classify`]): the destination's identity line back is "allowed";
//! a silent drop (timeout) is "denied"; anything else (a refusal, an error, another pod
//! answering, a connection with no answer) is "not probed", as is a cell whose destination
//! serves no such port, whose pod is absent, or whose server does not answer inside its
//! own pod. SCTP cells on a kernel without SCTP are "unsupported", and probed over TCP
//! instead as stand-ins, expected as the policy model decides (a policy for SCTP must leave
//! TCP closed where it isolates). Only "allowed" and "denied" can match an expectation; a
//! case whose only mismatches are unsupported cells, with its stand-ins right, is
//! UNSUPPORTED, never PASS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::Client;
use tokio::time::Instant;

use fibril_core::lab::LabLayout;
use fibril_core::policy::conformance::{
    apply_action, check_step, present_pods, tcp_stand_ins, Action, Case, CaseReport, Cell,
    Mismatch, Model, Observed, Probe, StandIns, Step, StepReport,
};
use fibril_core::policy::{ClusterState, Compiler, PodKey};
use fibril_core::services::L4Proto;
use fibril_lab::workload::netpol::{identity, ProbeOutcome};

use super::labops::{self, Target};
use super::manifests::{self, Containers};
use super::probe::{self, Job, ProbeSettings};
use super::report::{Baseline, CaseResult};

/// How a run behaves (from the command line).
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub settle: Duration,
    pub probe: ProbeSettings,
    pub retries: u32,
    pub retry_interval: Duration,
    pub ready_timeout: Duration,
    pub target: TargetKind,
}

/// Which address of the destination a probe connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// The destination's Service ClusterIP, as current upstream e2e probes (policy applies
    /// after service translation).
    ServiceIp,
    /// The destination pod's own address (policy-assistant's `--destination-type pod-ip`).
    PodIp,
}

/// The model and the cases of a directory, parsed strictly before anything touches the lab.
pub struct CaseSet {
    pub model: Model,
    /// (file, case), by file name.
    pub cases: Vec<(PathBuf, Case)>,
}

/// Reads `dir/model.yaml` and every other `dir/*.yaml` as a case. `only` keeps the cases
/// whose name or file name starts with one of its entries; each entry must match.
pub fn load_cases(dir: &Path, only: &[String]) -> anyhow::Result<CaseSet> {
    let model_path = dir.join("model.yaml");
    let text = std::fs::read_to_string(&model_path)
        .with_context(|| format!("reading {}", model_path.display()))?;
    let model = Model::parse(&model_path.display().to_string(), &text)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    files.retain(|p| {
        p.extension().is_some_and(|e| e == "yaml")
            && p.file_name().is_some_and(|n| n != "model.yaml")
    });
    files.sort();
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        match Case::parse(&f.display().to_string(), &text) {
            Ok(c) => cases.push((f, c)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} case file(s) rejected, nothing was run:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    if !only.is_empty() {
        for o in only {
            if !cases.iter().any(|(f, c)| matches_filter(f, c, o)) {
                bail!("--case {o:?} matches no case in {}", dir.display());
            }
        }
        cases.retain(|(f, c)| only.iter().any(|o| matches_filter(f, c, o)));
    }
    if cases.is_empty() {
        bail!(
            "no case files (*.yaml besides model.yaml) in {}",
            dir.display()
        );
    }
    Ok(CaseSet { model, cases })
}

fn matches_filter(file: &Path, case: &Case, prefix: &str) -> bool {
    case.name.starts_with(prefix)
        || file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
}

/// What a probe outcome means for a cell whose destination is `expected`.
pub fn classify(outcome: &ProbeOutcome, expected: &str) -> Observed {
    match outcome {
        ProbeOutcome::Answered(id) if id == expected => Observed::Allowed,
        ProbeOutcome::Answered(id) => Observed::Unprobed(format!(
            "the connection reached {id}, not {expected}: service translation sent it elsewhere"
        )),
        ProbeOutcome::Silent(why) => Observed::Unprobed(why.clone()),
        ProbeOutcome::Timeout => Observed::Denied,
        ProbeOutcome::Refused => Observed::Unprobed(
            "refused (a TCP reset or an ICMP port unreachable): something answered, so this is \
             not a policy drop"
                .into(),
        ),
        ProbeOutcome::Failed(e) => Observed::Unprobed(e.clone()),
    }
}

/// How long the baseline waits for cells to open (new Services reach the datapath in
/// well under a second).
const BASELINE_CONVERGE: Duration = Duration::from_secs(20);

type CellKey = (PodKey, PodKey, Probe);

fn cell_key(c: &Cell) -> CellKey {
    (c.from.clone(), c.to.clone(), c.probe())
}

/// A cell either needs a probe or its observation is known without one.
enum Plan {
    Probe { job: Job, expected: String },
    Known(Observed),
}

/// The runner's view of the lab during a run.
pub struct Runner {
    client: Client,
    layout: LabLayout,
    model: Model,
    containers: Containers,
    settings: RunSettings,
    /// Why SCTP cannot be probed here, if it cannot.
    sctp_unsupported: Option<String>,
    targets: BTreeMap<PodKey, Target>,
    /// Cells unreachable with no policy: why.
    baseline: BTreeMap<CellKey, String>,
    /// (pod, probe) whose server does not answer inside its own pod: why.
    servers_down: BTreeMap<(PodKey, Probe), String>,
    created_namespaces: BTreeSet<String>,
    created_pods: BTreeSet<PodKey>,
}

fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

impl Runner {
    pub fn new(
        client: Client,
        layout: LabLayout,
        model: Model,
        settings: RunSettings,
        sctp_unsupported: Option<String>,
    ) -> Runner {
        let containers = manifests::model_containers(&model);
        Runner {
            client,
            layout,
            model,
            containers,
            settings,
            sctp_unsupported,
            targets: BTreeMap::new(),
            baseline: BTreeMap::new(),
            servers_down: BTreeMap::new(),
            created_namespaces: BTreeSet::new(),
            created_pods: BTreeSet::new(),
        }
    }

    /// Lab node for a model node: `node-N` → `<lab>-node-N`.
    fn lab_node(&self, model_node: &str) -> anyhow::Result<String> {
        let n = model_node
            .strip_prefix("node-")
            .and_then(|i| i.parse::<u8>().ok())
            .with_context(|| format!("model node {model_node:?} is not node-<N>"))?;
        if self.layout.node_index(&self.layout.node_name(n)).is_none() {
            bail!(
                "the model places pods on {model_node}, and lab {} has no node {} (it has {:?})",
                self.layout.spec.name,
                self.layout.node_name(n),
                self.layout.node_names()
            );
        }
        Ok(self.layout.node_name(n))
    }

    fn model_namespaces(&self) -> Vec<String> {
        self.model.namespaces.keys().cloned().collect()
    }

    fn served_by_model_pod(&self) -> Vec<Probe> {
        manifests::served(&self.containers)
    }

    /// Puts the model into the lab (idempotently) and waits for every model pod. Pods that
    /// had to be (re)created get a fresh target.
    async fn ensure_model(&mut self) -> anyhow::Result<()> {
        for (ns, labels) in &self.model.namespaces {
            labops::ensure_namespace(&self.client, ns, labels).await?;
        }
        let served = self.served_by_model_pod();
        let mut wait = BTreeMap::new();
        for (key, p) in &self.model.pods {
            let node = self.lab_node(&p.node)?;
            let desired = manifests::pod(
                key,
                &p.labels,
                &self.containers,
                Some(&node),
                self.sctp_unsupported.is_some(),
            );
            let created = labops::ensure_pod(&self.client, &desired).await?;
            labops::ensure_service(&self.client, &manifests::service(key, &served)).await?;
            if created || !self.targets.contains_key(key) {
                self.targets.remove(key);
                wait.insert(key.clone(), served.clone());
            }
        }
        if !wait.is_empty() {
            let ready = labops::wait_targets(
                &self.client,
                &self.layout,
                &wait,
                self.settings.ready_timeout,
            )
            .await?;
            self.targets.extend(ready);
        }
        Ok(())
    }

    fn plan(&self, c: &Cell) -> Plan {
        let probe = c.probe();
        if probe.protocol == L4Proto::Sctp {
            if let Some(why) = &self.sctp_unsupported {
                return Plan::Known(Observed::Unsupported(why.clone()));
            }
        }
        let (Some(src), Some(dst)) = (self.targets.get(&c.from), self.targets.get(&c.to)) else {
            let missing = if self.targets.contains_key(&c.from) {
                &c.to
            } else {
                &c.from
            };
            return Plan::Known(Observed::Unprobed(format!(
                "pod {missing} is not running in the lab"
            )));
        };
        if !dst.served.contains(&probe) {
            return Plan::Known(Observed::Unprobed(format!(
                "{} serves nothing on {probe}: no answer could be told from a denial",
                c.to
            )));
        }
        if let Some(why) = self.servers_down.get(&(c.to.clone(), probe)) {
            return Plan::Known(Observed::Unprobed(format!(
                "the server of {} on {probe} does not answer inside its own pod: {why}",
                c.to
            )));
        }
        if let Some(why) = self.baseline.get(&cell_key(c)) {
            return Plan::Known(Observed::Unprobed(format!(
                "not reachable with no policy at all either (baseline: {why})"
            )));
        }
        Plan::Probe {
            job: Job {
                netns: src.netns.clone(),
                dst: SocketAddrV4::new(
                    match self.settings.target {
                        TargetKind::ServiceIp => dst.cluster_ip,
                        TargetKind::PodIp => dst.ip,
                    },
                    probe.port,
                ),
                proto: probe.protocol,
            },
            expected: identity(&c.to.namespace, &c.to.name),
        }
    }

    /// Observes every cell, probing concurrently what needs probing.
    async fn observe(&self, cells: &[&Cell]) -> Vec<Observed> {
        let plans: Vec<Plan> = cells.iter().map(|c| self.plan(c)).collect();
        let jobs: Vec<Job> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Probe { job, .. } => Some(job.clone()),
                Plan::Known(_) => None,
            })
            .collect();
        let mut outcomes = probe::run(&jobs, self.settings.probe).await.into_iter();
        plans
            .into_iter()
            .map(|p| match p {
                Plan::Known(o) => o,
                Plan::Probe { expected, .. } => match outcomes.next() {
                    Some(o) => classify(&o, &expected),
                    None => Observed::Unprobed("the probe did not run".into()),
                },
            })
            .collect()
    }

    /// Observes `cells`, then probes the ones that do not match again, up to `retries`
    /// times, `retry_interval` apart (convergence after a change can take longer than the
    /// settle time; upstream polls as well).
    async fn observe_until_stable(&self, cells: &[&Cell]) -> Vec<Observed> {
        let mut obs = self.observe(cells).await;
        for _ in 0..self.settings.retries {
            let redo: Vec<usize> = (0..cells.len())
                .filter(|&i| {
                    !cells[i].matches(&obs[i]) && !matches!(obs[i], Observed::Unsupported(_))
                })
                .collect();
            if redo.is_empty() {
                break;
            }
            tokio::time::sleep(self.settings.retry_interval).await;
            let again: Vec<&Cell> = redo.iter().map(|&i| cells[i]).collect();
            for (i, o) in redo.into_iter().zip(self.observe(&again).await) {
                obs[i] = o;
            }
        }
        obs
    }

    /// From inside each pod, to its own address: every server answers, or the reason.
    async fn check_servers(&self, pods: &[PodKey]) -> BTreeMap<(PodKey, Probe), String> {
        let mut keys = Vec::new();
        let mut jobs = Vec::new();
        for key in pods {
            let Some(t) = self.targets.get(key) else {
                continue;
            };
            for p in &t.served {
                if p.protocol == L4Proto::Sctp && self.sctp_unsupported.is_some() {
                    continue;
                }
                keys.push((key.clone(), *p));
                jobs.push(Job {
                    netns: t.netns.clone(),
                    dst: SocketAddrV4::new(t.ip, p.port),
                    proto: p.protocol,
                });
            }
        }
        let outcomes = probe::run(&jobs, self.settings.probe).await;
        keys.into_iter()
            .zip(outcomes)
            .filter_map(|((key, p), o)| {
                let expected = identity(&key.namespace, &key.name);
                match o {
                    ProbeOutcome::Answered(id) if id == expected => None,
                    other => Some(((key, p), format!("{other:?}"))),
                }
            })
            .collect()
    }

    /// Server checks polled until they pass or `timeout` ends; what still fails.
    async fn check_servers_until(
        &self,
        pods: &[PodKey],
        timeout: Duration,
    ) -> BTreeMap<(PodKey, Probe), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let down = self.check_servers(pods).await;
            if down.is_empty() || Instant::now() > deadline {
                return down;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Model into the lab, no policies, servers answering, then the baseline.
    pub async fn setup(&mut self, json: bool) -> anyhow::Result<Baseline> {
        let setup_start = Instant::now();
        let namespaces = self.model_namespaces();
        // Leftover policies first: pods must come up into an open network.
        labops::delete_policies(&self.client, &namespaces).await?;
        self.ensure_model().await?;
        let pods: Vec<PodKey> = self.model.pods.keys().cloned().collect();
        self.servers_down = self
            .check_servers_until(&pods, self.settings.ready_timeout)
            .await;
        for ((k, p), why) in &self.servers_down {
            progress(
                json,
                &format!("server {k} {p} does not answer in its pod: {why}"),
            );
        }
        progress(
            json,
            &format!(
                "model ready: {} namespaces, {} pods, {} services ({:.1}s)",
                self.model.namespaces.len(),
                self.targets.len(),
                self.targets.len(),
                setup_start.elapsed().as_secs_f64()
            ),
        );
        // The baseline: every ordered pair, every probe the model serves.
        tokio::time::sleep(self.settings.settle).await;
        let cells: Vec<Cell> = self
            .served_by_model_pod()
            .into_iter()
            .flat_map(|p| {
                let pods = &pods;
                pods.iter().flat_map(move |a| {
                    pods.iter().filter(move |b| *b != a).map(move |b| Cell {
                        from: a.clone(),
                        to: b.clone(),
                        port: p.port,
                        protocol: p.protocol,
                        allowed: true,
                    })
                })
            })
            .collect();
        let refs: Vec<&Cell> = cells.iter().collect();
        // Services may still be converging in the datapath: poll the failing cells, for a
        // while (a cell that stays closed with no policy will not open by waiting).
        let deadline = Instant::now() + self.settings.ready_timeout.min(BASELINE_CONVERGE);
        let mut obs = self.observe(&refs).await;
        loop {
            let redo: Vec<usize> = (0..refs.len())
                .filter(|&i| matches!(obs[i], Observed::Denied | Observed::Unprobed(_)))
                .collect();
            if redo.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(self.settings.retry_interval).await;
            let again: Vec<&Cell> = redo.iter().map(|&i| refs[i]).collect();
            for (i, o) in redo.into_iter().zip(self.observe(&again).await) {
                obs[i] = o;
            }
        }
        let mut baseline = Baseline {
            cells: cells.len(),
            ..Default::default()
        };
        for (c, o) in cells.iter().zip(obs) {
            match o {
                Observed::Allowed => baseline.reachable += 1,
                Observed::Unsupported(_) => baseline.unsupported += 1,
                other => {
                    self.baseline.insert(cell_key(c), other.to_string());
                    baseline.unreachable.push(Mismatch {
                        from: c.from.clone(),
                        to: c.to.clone(),
                        port: c.port,
                        protocol: c.protocol,
                        expected: true,
                        observed: other,
                    });
                }
            }
        }
        let line = if baseline.unreachable.is_empty() {
            format!(
                "baseline (no policies): {} cells: {} reachable, {} unsupported ({:.1}s)",
                baseline.cells,
                baseline.reachable,
                baseline.unsupported,
                setup_start.elapsed().as_secs_f64()
            )
        } else {
            let mut s = format!(
                "baseline (no policies): {} cells: {} reachable, {} unsupported, {} NOT \
                 reachable; every case counts these as not probed:",
                baseline.cells,
                baseline.reachable,
                baseline.unsupported,
                baseline.unreachable.len(),
            );
            for m in baseline.unreachable.iter().take(10) {
                s.push_str(&format!("\n  {m}"));
            }
            if baseline.unreachable.len() > 10 {
                s.push_str(&format!(
                    "\n  ... and {} more",
                    baseline.unreachable.len() - 10
                ));
            }
            s
        };
        progress(json, &line);
        Ok(baseline)
    }

    /// Back to the model: policies, created pods and namespaces removed, labels reset,
    /// deleted model objects restored.
    async fn reset(&mut self) -> anyhow::Result<()> {
        let mut namespaces = self.model_namespaces();
        namespaces.extend(self.created_namespaces.iter().cloned());
        labops::delete_policies(&self.client, &namespaces).await?;
        for ns in std::mem::take(&mut self.created_namespaces) {
            labops::delete_namespace(&self.client, &ns).await?;
            self.targets.retain(|k, _| k.namespace != ns);
        }
        for key in std::mem::take(&mut self.created_pods) {
            labops::delete_pod(&self.client, &key).await?;
            self.targets.remove(&key);
        }
        self.ensure_model().await
    }

    /// Applies one action to the lab (the cluster model has accepted it).
    async fn apply_to_lab(&mut self, action: &Action, state: &ClusterState) -> anyhow::Result<()> {
        match action {
            Action::CreatePolicy(np) => labops::create_policy(&self.client, np).await,
            Action::UpdatePolicy(np) => labops::update_policy(&self.client, np).await,
            Action::DeletePolicy(r) => labops::delete_policy(&self.client, r).await,
            Action::DeleteAllPolicies {} => {
                let ns: Vec<String> = state.namespaces.keys().cloned().collect();
                labops::delete_policies(&self.client, &ns).await.map(|_| ())
            }
            Action::SetNamespaceLabels { namespace, labels } => {
                labops::set_namespace_labels(&self.client, namespace, labels).await
            }
            Action::SetPodLabels { pod, labels } => {
                labops::set_pod_labels(&self.client, pod, labels).await
            }
            Action::CreateNamespace { namespace, labels } => {
                self.created_namespaces.insert(namespace.clone());
                labops::ensure_namespace(&self.client, namespace, labels).await
            }
            Action::DeleteNamespace { namespace } => {
                self.targets.retain(|k, _| k.namespace != *namespace);
                labops::delete_namespace(&self.client, namespace).await
            }
            Action::CreatePod {
                pod, labels, ports, ..
            } => {
                // The lab's IPAM assigns the address; a case's `ip` only mattered for
                // ipBlocks derived from it, which are re-derived from the lab.
                let containers = match ports {
                    Some(p) => manifests::containers_for_ports(p),
                    None => self.containers.clone(),
                };
                let served = manifests::served(&containers);
                if !self.model.pods.contains_key(pod) {
                    self.created_pods.insert(pod.clone());
                }
                let desired = manifests::pod(
                    pod,
                    labels,
                    &containers,
                    None,
                    self.sctp_unsupported.is_some(),
                );
                labops::ensure_pod(&self.client, &desired).await?;
                labops::ensure_service(&self.client, &manifests::service(pod, &served)).await?;
                let ready = labops::wait_targets(
                    &self.client,
                    &self.layout,
                    &[(pod.clone(), served)].into(),
                    self.settings.ready_timeout,
                )
                .await?;
                self.targets.extend(ready);
                let down = self
                    .check_servers_until(std::slice::from_ref(pod), self.settings.ready_timeout)
                    .await;
                self.servers_down.retain(|(k, _), _| k != pod);
                self.servers_down.extend(down);
                Ok(())
            }
            Action::DeletePod { pod } => {
                self.targets.remove(pod);
                labops::delete_pod(&self.client, pod).await
            }
        }
    }

    /// Runs one case from the model; the report says why it failed, if it did.
    pub async fn run_case(&mut self, case: &Case) -> CaseReport {
        let mut report = CaseReport {
            name: case.name.clone(),
            steps: Vec::new(),
        };
        let failed_setup = |report: &mut CaseReport, e: String| {
            report.steps.push(StepReport {
                label: "setup".into(),
                errors: vec![e],
                ..Default::default()
            });
        };
        if let Err(e) = self.reset().await {
            failed_setup(
                &mut report,
                format!("resetting the lab to the model: {e:#}"),
            );
            return report;
        }
        let pods: Vec<PodKey> = self.targets.keys().cloned().collect();
        self.servers_down = self
            .check_servers_until(&pods, Duration::from_secs(2))
            .await;
        let pod_ips: BTreeMap<PodKey, Ipv4Addr> = self
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.ip))
            .collect();
        let case = match case.rederive(&pod_ips) {
            Ok(c) => c,
            Err(e) => {
                failed_setup(
                    &mut report,
                    format!("re-deriving ipBlocks from the lab's pod IPs: {e}"),
                );
                return report;
            }
        };
        let mut state = self.model.cluster_state();
        for step in &case.steps {
            let mut errors = Vec::new();
            for a in &step.actions {
                if let Err(e) = apply_action(&mut state, &self.model, a) {
                    errors.push(format!("{a}: {e}"));
                    continue;
                }
                if let Err(e) = self.apply_to_lab(a, &state).await {
                    errors.push(format!("{a}: the lab refused: {e:#}"));
                }
            }
            tokio::time::sleep(self.settings.settle).await;
            let present = present_pods(step, &state);
            let cells: Vec<&Cell> = step
                .expected
                .iter()
                .filter(|c| present.contains(&c.from) && present.contains(&c.to))
                .collect();
            let observed: BTreeMap<CellKey, Observed> = cells
                .iter()
                .map(|c| cell_key(c))
                .zip(self.observe_until_stable(&cells).await)
                .collect();
            let mut r = check_step(step, &present, |c| {
                observed
                    .get(&cell_key(c))
                    .cloned()
                    .unwrap_or_else(|| Observed::Unprobed("not observed".into()))
            });
            errors.append(&mut r.errors);
            if self.sctp_unsupported.is_some() {
                match self.stand_ins(step, &present, &state).await {
                    Ok(s) => r.stand_ins = s,
                    Err(e) => errors.push(format!("the TCP stand-ins for SCTP: {e}")),
                }
            }
            r.errors = errors;
            report.steps.push(r);
        }
        report
    }

    /// SCTP cannot be carried here: the step's SCTP cells probed over TCP instead, expected
    /// as the policy model decides for the step's state with the lab's pod addresses (see
    /// [`tcp_stand_ins`]). None when the step has no SCTP cell.
    async fn stand_ins(
        &self,
        step: &Step,
        present: &[PodKey],
        state: &ClusterState,
    ) -> anyhow::Result<Option<StandIns>> {
        if !step.expected.iter().any(|c| c.protocol == L4Proto::Sctp) {
            return Ok(None);
        }
        let mut state = state.clone();
        for (key, pod) in state.pods.iter_mut() {
            pod.ip = self.targets.get(key).map(|t| t.ip).or(pod.ip);
        }
        let compiled = Compiler::new().compile(&state)?;
        let cells = tcp_stand_ins(step, present, L4Proto::Sctp, &compiled)?;
        let refs: Vec<&Cell> = cells.iter().collect();
        let observed = self.observe_until_stable(&refs).await;
        let mismatches = cells
            .iter()
            .zip(observed)
            .filter_map(|(c, o)| c.mismatch(o))
            .collect();
        Ok(Some(StandIns {
            for_protocol: L4Proto::Sctp,
            cells: cells.len(),
            mismatches,
        }))
    }

    /// Removes the policies the run left (and with `all`, the whole model).
    pub async fn finish(&mut self, all: bool) -> anyhow::Result<()> {
        let mut namespaces = self.model_namespaces();
        namespaces.extend(self.created_namespaces.iter().cloned());
        labops::delete_policies(&self.client, &namespaces).await?;
        for ns in std::mem::take(&mut self.created_namespaces) {
            labops::delete_namespace(&self.client, &ns).await?;
        }
        for key in std::mem::take(&mut self.created_pods) {
            labops::delete_pod(&self.client, &key).await?;
        }
        if all {
            for ns in self.model_namespaces() {
                labops::delete_namespace(&self.client, &ns).await?;
            }
        }
        Ok(())
    }
}

/// A case's result, timed.
pub fn result(case: &Case, file: &Path, report: CaseReport, seconds: f64) -> CaseResult {
    let verdict = report.verdict(case);
    CaseResult::new(report, file.display().to_string(), verdict, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_identity_is_allowed_and_only_a_silent_drop_is_denied() {
        let to = "x/a";
        assert_eq!(
            classify(&ProbeOutcome::Answered("x/a".into()), to),
            Observed::Allowed
        );
        assert_eq!(classify(&ProbeOutcome::Timeout, to), Observed::Denied);
        for o in [
            ProbeOutcome::Answered("x/b".into()),
            ProbeOutcome::Silent("connected, nothing said".into()),
            ProbeOutcome::Refused,
            ProbeOutcome::Failed("no route to host".into()),
        ] {
            assert!(
                matches!(classify(&o, to), Observed::Unprobed(_)),
                "{o:?} must not count as probed"
            );
        }
    }

    #[test]
    fn cases_load_strictly_and_filter_by_prefix() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/conformance/netpol"
        ));
        let all = load_cases(dir, &[]).unwrap();
        assert_eq!(all.cases.len(), 48);
        let cells: usize = all
            .cases
            .iter()
            .flat_map(|(_, c)| &c.steps)
            .map(|s| s.expected.len())
            .sum();
        assert_eq!(cells, 4680);
        let some = load_cases(dir, &["e2e-16".into(), "e2e-4".into()]).unwrap();
        let names: Vec<&str> = some.cases.iter().map(|(_, c)| c.name.as_str()).collect();
        assert_eq!(names.len(), 10, "{names:?}");
        assert!(names.contains(&"e2e-16-allow-all"));
        let e = load_cases(dir, &["nope".into()]).err().unwrap();
        assert!(
            e.to_string().contains("--case \"nope\" matches no case"),
            "{e}"
        );

        let tmp = std::env::temp_dir().join(format!("netpol-load-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::copy(dir.join("model.yaml"), tmp.join("model.yaml")).unwrap();
        std::fs::write(tmp.join("bad.yaml"), "name: bad\nprobes: []\n").unwrap();
        let e = load_cases(&tmp, &[]).err().unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(e.to_string().contains("nothing was run"), "{e}");
        assert!(e.to_string().contains("bad.yaml"), "{e}");
    }
}
