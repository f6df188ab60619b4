//! Probing many cells at once from inside pods: each probe's socket is created in its
//! source pod's network namespace (a short-lived thread enters the namespace, makes the
//! sockets and leaves; a socket keeps the namespace it was made in), then every probe
//! runs concurrently on the runtime, at most `parallel` at a time, each within the probe
//! timeout. A step therefore costs about one timeout however many cells it denies.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use fibril_core::services::L4Proto;
use fibril_lab::workload::netpol::{new_socket, probe, ProbeOutcome};
use fibril_netlink::NetNs;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// One probe: from inside `netns`, to `dst` over `proto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub netns: String,
    pub dst: SocketAddrV4,
    pub proto: L4Proto,
}

/// How probes run.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    pub timeout: Duration,
    pub parallel: usize,
}

/// Runs every job; the outcomes are in job order.
pub async fn run(jobs: &[Job], settings: ProbeSettings) -> Vec<ProbeOutcome> {
    let mut by_netns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        by_netns.entry(&j.netns).or_default().push(i);
    }
    let mut outcomes: Vec<Option<ProbeOutcome>> = vec![None; jobs.len()];
    let mut makers = JoinSet::new();
    for (netns, idx) in by_netns {
        let netns = netns.to_string();
        let protos: Vec<L4Proto> = idx.iter().map(|&i| jobs[i].proto).collect();
        makers.spawn_blocking(move || {
            let made = NetNs::open(&netns).and_then(|ns| {
                ns.run(|| protos.iter().map(|p| new_socket(*p)).collect::<Vec<_>>())
            });
            (netns, idx, made)
        });
    }
    let gate = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let mut probes = JoinSet::new();
    while let Some(joined) = makers.join_next().await {
        let (netns, idx, made) = match joined {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let sockets = match made {
            Ok(s) => s,
            Err(e) => {
                for i in idx {
                    outcomes[i] = Some(ProbeOutcome::Failed(format!(
                        "entering the source pod's network namespace {netns}: {e}"
                    )));
                }
                continue;
            }
        };
        for (i, sock) in idx.into_iter().zip(sockets) {
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    outcomes[i] = Some(ProbeOutcome::Failed(format!(
                        "creating a {} socket in {netns}: {e}",
                        jobs[i].proto
                    )));
                    continue;
                }
            };
            let job = jobs[i].clone();
            let gate = gate.clone();
            let timeout = settings.timeout;
            probes.spawn(async move {
                let _permit = gate.acquire_owned().await;
                (i, probe(sock, job.proto, job.dst, timeout).await)
            });
        }
    }
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| ProbeOutcome::Failed("the probe did not run".into())))
        .collect()
}
