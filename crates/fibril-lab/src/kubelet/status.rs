//! Pure computation of a pod's `status` from what the kubelet knows, with upstream's
//! phases, conditions and container states. Transition times are carried over from the
//! previous status while a condition keeps its value, so an unchanged pod computes an
//! identical status and the kubelet writes nothing.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A container's state as the kubelet tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Option<Time>,
        finished_at: Time,
    },
}

impl CState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        CState::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn to_k8s(&self) -> ContainerState {
        match self {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            },
            CState::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    started_at: started_at.clone(),
                    finished_at: Some(finished_at.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }
}

/// One container as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<CState>,
    pub ready: bool,
    pub restart_count: i32,
}

impl ContainerView {
    /// Waiting and never run: the pod has not started it yet.
    fn never_started(&self) -> bool {
        matches!(self.state, CState::Waiting { .. }) && self.last_state.is_none()
    }
}

/// Where the pod's sandbox (netns + CNI) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxView {
    /// Not set up yet; `message` says why (CNI error, network not ready), if known.
    Creating {
        message: Option<String>,
    },
    Ready,
}

/// Everything the status is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub host_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    pub start_time: Option<Time>,
    pub sandbox: SandboxView,
    pub containers: Vec<ContainerView>,
}

/// Upstream's phase rules for a pod whose sandbox exists.
pub fn phase(view: &PodView) -> &'static str {
    if view.sandbox != SandboxView::Ready || view.containers.iter().any(|c| c.never_started()) {
        return "Pending";
    }
    let running = view
        .containers
        .iter()
        .any(|c| !matches!(c.state, CState::Terminated { .. }));
    if running || view.containers.is_empty() {
        return "Running";
    }
    let all_ok = view
        .containers
        .iter()
        .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }));
    if all_ok {
        "Succeeded"
    } else {
        "Failed"
    }
}

fn condition(
    prev: Option<&PodStatus>,
    now: &Time,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(Into::into),
        message,
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// The pod status for `view`. `prev` supplies unchanged conditions' transition times.
pub fn pod_status(prev: Option<&PodStatus>, view: &PodView, now: &Time) -> PodStatus {
    let phase = phase(view);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let sandbox_ready = view.sandbox == SandboxView::Ready && !terminal;
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = unready.is_empty() && !terminal;
    let (not_ready_reason, not_ready_msg) = if terminal {
        (Some("PodCompleted"), None)
    } else if all_ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        condition(
            prev,
            now,
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
        ),
        condition(prev, now, "Initialized", true, None, None),
        condition(
            prev,
            now,
            "Ready",
            all_ready,
            not_ready_reason,
            not_ready_msg.clone(),
        ),
        condition(
            prev,
            now,
            "ContainersReady",
            all_ready,
            not_ready_reason,
            not_ready_msg,
        ),
        condition(prev, now, "PodScheduled", true, None, None),
    ];
    let container_statuses = view
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: String::new(),
            container_id: c.container_id.clone(),
            ready: c.ready,
            started: Some(matches!(c.state, CState::Running { .. })),
            restart_count: c.restart_count,
            state: Some(c.state.to_k8s()),
            last_state: c.last_state.as_ref().map(CState::to_k8s),
            ..Default::default()
        })
        .collect();
    let message = match &view.sandbox {
        SandboxView::Creating { message } => message.clone(),
        SandboxView::Ready => None,
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(container_statuses),
        host_ip: Some(view.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.to_string(),
        }]),
        pod_ip: view.pod_ip.map(|ip| ip.to_string()),
        pod_ips: view.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: view.start_time.clone(),
        message,
        qos_class: Some("BestEffort".into()),
        ..Default::default()
    }
}

/// Whether `have` already says what `want` says, for the fields the kubelet owns.
pub fn status_matches(have: Option<&PodStatus>, want: &PodStatus) -> bool {
    let Some(have) = have else { return false };
    have.phase == want.phase
        && have.conditions == want.conditions
        && have.container_statuses == want.container_statuses
        && have.host_ip == want.host_ip
        && have.host_ips == want.host_ips
        && have.pod_ip == want.pod_ip
        && have.pod_ips == want.pod_ips
        && have.start_time == want.start_time
        && have.message == want.message
        && have.qos_class == want.qos_class
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn running(name: &str, ready: bool) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "fibril/echo".into(),
            container_id: Some("fibril://x".into()),
            state: CState::Running { started_at: t(10) },
            last_state: None,
            ready,
            restart_count: 0,
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            host_ip: "172.18.0.11".parse().unwrap(),
            pod_ip: Some("10.244.0.5".parse().unwrap()),
            start_time: Some(t(5)),
            sandbox: SandboxView::Ready,
            containers,
        }
    }

    fn cond<'a>(st: &'a PodStatus, ty: &str) -> &'a PodCondition {
        st.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap()
    }

    #[test]
    fn running_and_ready() {
        let st = pod_status(None, &view(vec![running("a", true)]), &t(20));
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(st.host_ip.as_deref(), Some("172.18.0.11"));
        assert_eq!(cond(&st, "Ready").status, "True");
        assert_eq!(cond(&st, "ContainersReady").status, "True");
        assert_eq!(cond(&st, "PodScheduled").status, "True");
        assert_eq!(cond(&st, "Initialized").status, "True");
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true));
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn unchanged_view_gives_identical_status() {
        let v = view(vec![running("a", false), running("b", true)]);
        let first = pod_status(None, &v, &t(20));
        assert_eq!(
            cond(&first, "Ready").message.as_deref(),
            Some("containers with unready status: [a]")
        );
        let again = pod_status(Some(&first), &v, &t(99));
        assert_eq!(first, again);
        assert!(status_matches(Some(&first), &again));
        // A flip gets a new transition time.
        let v2 = view(vec![running("a", true), running("b", true)]);
        let flipped = pod_status(Some(&first), &v2, &t(99));
        assert_eq!(cond(&flipped, "Ready").last_transition_time, Some(t(99)));
        assert_eq!(
            cond(&flipped, "PodScheduled").last_transition_time,
            Some(t(20))
        );
        assert!(!status_matches(Some(&first), &flipped));
    }

    #[test]
    fn cni_failure_keeps_the_pod_pending_with_the_message() {
        let msg = "Failed to create pod sandbox: plugin type=\"nope\" failed (add): code 7: failed to find plugin";
        let v = PodView {
            pod_ip: None,
            sandbox: SandboxView::Creating {
                message: Some(msg.into()),
            },
            containers: vec![ContainerView {
                state: CState::waiting("ContainerCreating", Some(msg.into())),
                ready: false,
                container_id: None,
                ..running("a", false)
            }],
            ..view(vec![])
        };
        let st = pod_status(None, &v, &t(1));
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        assert_eq!(st.message.as_deref(), Some(msg));
        assert_eq!(st.pod_ip, None);
        assert_eq!(cond(&st, "PodReadyToStartContainers").status, "False");
        let w = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert_eq!(w.message.as_deref(), Some(msg));
    }

    #[test]
    fn phases_of_finished_and_restarting_pods() {
        let done = |code| ContainerView {
            state: CState::Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                started_at: Some(t(1)),
                finished_at: t(2),
            },
            ready: false,
            ..running("a", false)
        };
        assert_eq!(phase(&view(vec![done(0)])), "Succeeded");
        assert_eq!(phase(&view(vec![done(0), done(1)])), "Failed");
        assert_eq!(phase(&view(vec![done(0), running("b", true)])), "Running");
        let backoff = ContainerView {
            state: CState::waiting("CrashLoopBackOff", None),
            last_state: Some(done(1).state),
            restart_count: 2,
            ..running("a", false)
        };
        assert_eq!(phase(&view(vec![backoff])), "Running");
        let st = pod_status(None, &view(vec![done(0)]), &t(3));
        assert_eq!(cond(&st, "Ready").reason.as_deref(), Some("PodCompleted"));
    }
}
