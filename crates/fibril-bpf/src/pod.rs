//! Endpoint counters on the host side of pod veths, without forwarding: the lab's
//! bridge-CNI baseline, where the kernel routes and fibril only counts.
//!
//! [`PodCounters`] loads `bpf/pod.bpf.c` with its configuration left at zero (routing
//! mode NONE), so `fib_from_pod` counts and passes every packet. The full datapath
//! ([`crate::Datapath`]) attaches the same programs, configured to route.
//!
//! # Maps
//!
//! The counter map is declared `LIBBPF_PIN_BY_NAME` in C, so it lives at
//! `<pin_dir>/<map name>`: loading reuses it (counts survive a restart) and
//! [`read_endpoint_counters`] reads it without loading any program. Links are pinned as
//! [`crate::tcx`] describes.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError, PerCpuHashMap};
use aya::Ebpf;

use crate::error::BpfError;
use crate::hook::Hook;
use crate::loader::{self, POD};
use crate::shared::{self, EpKey, EpStats};
use crate::tcx::{interface_exists, Attachments, Prepared};

/// The hooks of a pod veth, both in `pod.bpf.o`.
pub(crate) const POD_HOOKS: [Hook; 2] = [Hook::FromPod, Hook::ToPod];

/// Counters of one endpoint, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// ifindex of the host-side veth, in the node's network namespace.
    pub ifindex: u32,
    /// Sent by the pod (tc ingress on the host-side veth).
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    /// Delivered to the pod (tc egress on the host-side veth, or redirected into it).
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

impl EndpointCounters {
    fn new(key: EpKey, sum: EpStats) -> Self {
        // Destructured in full so that a field added to the C struct fails to compile here.
        let EpStats {
            from_pod_packets,
            from_pod_bytes,
            to_pod_packets,
            to_pod_bytes,
        } = sum;
        EndpointCounters {
            ifindex: key.ifindex,
            from_pod_packets,
            from_pod_bytes,
            to_pod_packets,
            to_pod_bytes,
        }
    }
}

/// The pod-veth programs in counting mode, loaded, with their maps pinned in a node's
/// pin dir.
pub struct PodCounters {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attachments: Attachments,
}

impl std::fmt::Debug for PodCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCounters")
            .field("pin_dir", &self.pin_dir)
            .field("attached", &self.attached())
            .finish()
    }
}

impl PodCounters {
    /// Loads the pod programs, reusing maps already pinned in `pin_dir` (so counts survive
    /// an agent restart) or pinning new ones there. Mounts bpffs if needed.
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        let ebpf = loader::load(POD, pin_dir, None)?;
        Ok(PodCounters {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attachments: Attachments::new(pin_dir),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the from-pod (tc ingress) and to-pod (tc egress) counters to `ifname` in
    /// the current network namespace (the caller has entered the node's netns).
    ///
    /// Idempotent: an interface already attached by this handle is left alone, and a link
    /// pinned by a previous agent is adopted and moved to this handle's programs.
    pub fn attach(&mut self, ifname: &str) -> Result<(), BpfError> {
        attach_pod_hooks(&mut self.ebpf, &mut self.attachments, ifname)
    }

    /// Detaches both programs from `ifname`, removes their pins and the endpoint's
    /// counters. Succeeds when there is nothing to detach (the device may already be gone).
    pub fn detach(&mut self, ifname: &str) -> Result<(), BpfError> {
        if let Some(ifindex) = self.attachments.detach(ifname)? {
            forget_detached_ep_stats(&self.pin_dir, ifindex)?;
        }
        Ok(())
    }

    /// Forgets interfaces that no longer exist in the current network namespace (their
    /// pod was deleted while nobody called [`detach`](Self::detach), e.g. while the agent
    /// was down): removes their link pins and counters. Returns their ifindexes.
    pub fn prune_gone(&mut self) -> Result<Vec<u32>, BpfError> {
        prune_gone(&self.pin_dir, &mut self.attachments)
    }

    /// Interfaces attached through this handle (including adopted ones), sorted.
    pub fn attached(&self) -> Vec<String> {
        self.attachments
            .list()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }
}

/// Attaches `fib_from_pod` and `fib_to_pod` of `ebpf` (a loaded `pod.bpf.o`) to `ifname`.
pub(crate) fn attach_pod_hooks(
    ebpf: &mut Ebpf,
    attachments: &mut Attachments,
    ifname: &str,
) -> Result<(), BpfError> {
    let ifindex = match attachments.prepare(ifname, &POD_HOOKS)? {
        Prepared::Done => return Ok(()),
        Prepared::Attach { ifindex } => ifindex,
    };
    let mut links = Vec::with_capacity(POD_HOOKS.len());
    for hook in POD_HOOKS {
        let prog = loader::program_mut(ebpf, POD, hook.program())?;
        links.push(attachments.attach_one(prog, hook, ifname, ifindex)?);
    }
    attachments.insert(ifname, ifindex, &POD_HOOKS, links);
    Ok(())
}

/// Forgets the interfaces (link pins and counters) that are gone from the current netns.
pub(crate) fn prune_gone(
    pin_dir: &Path,
    attachments: &mut Attachments,
) -> Result<Vec<u32>, BpfError> {
    let mut candidates: BTreeSet<u32> = attachments.pinned_ifindexes()?;
    candidates.extend(
        read_endpoint_counters(pin_dir)?
            .into_iter()
            .map(|c| c.ifindex),
    );
    let gone: Vec<u32> = candidates
        .into_iter()
        .filter(|&i| !interface_exists(i))
        .collect();
    for &ifindex in &gone {
        attachments.forget(ifindex)?;
        remove_ep_stats(pin_dir, ifindex)?;
    }
    Ok(gone)
}

fn open_ep_stats(pin_dir: &Path) -> Result<PerCpuHashMap<MapData, EpKey, EpStats>, BpfError> {
    let path = pin_dir.join(shared::MAP_EP_STATS);
    let map_err = |source| BpfError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let map = Map::from_map_data(data).map_err(map_err)?;
    // try_from checks the map type and the key and value sizes against ours.
    PerCpuHashMap::try_from(map).map_err(map_err)
}

/// Removes the counters of `ifindex`; tolerates them being gone.
/// How long a program that was mid-packet at detach may still run: well past an RCU
/// grace period on an idle machine.
const STRAGGLER_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Removes the counters of an endpoint whose programs were just detached. A program
/// already running on a packet when its link went away finishes after detach returns
/// (the kernel frees it after an RCU grace period) and can re-create the entry, so it is
/// removed again once such a straggler is done.
pub(crate) fn forget_detached_ep_stats(pin_dir: &Path, ifindex: u32) -> Result<(), BpfError> {
    remove_ep_stats(pin_dir, ifindex)?;
    std::thread::sleep(STRAGGLER_GRACE);
    remove_ep_stats(pin_dir, ifindex)
}

pub(crate) fn remove_ep_stats(pin_dir: &Path, ifindex: u32) -> Result<(), BpfError> {
    let mut map = open_ep_stats(pin_dir)?;
    match map.remove(&EpKey { ifindex }) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Map {
            path: pin_dir.join(shared::MAP_EP_STATS),
            source,
        }),
    }
}

/// Reads the pinned endpoint counters in `pin_dir` (no program needed), per-CPU values
/// summed, sorted by ifindex.
pub fn read_endpoint_counters(pin_dir: &Path) -> Result<Vec<EndpointCounters>, BpfError> {
    let counters = open_ep_stats(pin_dir)?;
    let path = pin_dir.join(shared::MAP_EP_STATS);
    let mut out = Vec::new();
    for item in counters.iter() {
        let (key, per_cpu) = item.map_err(|source| BpfError::Map {
            path: path.clone(),
            source,
        })?;
        let mut sum = EpStats::default();
        for v in per_cpu.iter() {
            sum.accumulate(v);
        }
        out.push(EndpointCounters::new(key, sum));
    }
    out.sort_by_key(|c| c.ifindex);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BPF_PROG_TEST_RUN, as cilium's bpf/tests: a crafted frame through each program,
    /// in a throwaway netns (unshared by the test thread), without attaching anything.
    /// In counting mode nothing is ever dropped or redirected.
    #[test]
    #[ignore = "privileged: needs root, bpf and netns"]
    fn programs_count_and_never_drop() {
        use aya::programs::{TestRun, TestRunOptions};

        const TC_ACT_OK: u32 = 0;
        const LOOPBACK_IFINDEX: u32 = 1;
        const RUNS: u32 = 7;
        // Ethernet (IPv4) + a 20-byte IPv4 header + payload: 100 bytes in all.
        let mut frame = vec![0_u8; 100];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&86_u16.to_be_bytes());
        // A malformed one (IHL 3) is not the counters' business either.
        let mut malformed = frame.clone();
        malformed[14] = 0x43;

        let pin_dir = PathBuf::from(fibril_core::consts::BPFFS_MOUNT)
            .join(format!("fibt{}unit", std::process::id()));
        let dir = pin_dir.clone();
        let result = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let mut pc = PodCounters::load(&dir).expect("load");
            let mut verdicts = Vec::new();
            for hook in POD_HOOKS {
                let prog = loader::program_mut(&mut pc.ebpf, POD, hook.program()).unwrap();
                let out = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        repeat: RUNS,
                        ..Default::default()
                    })
                    .expect("test run");
                verdicts.push(out.return_value);
            }
            let prog = loader::program_mut(&mut pc.ebpf, POD, Hook::FromPod.program()).unwrap();
            let out = prog
                .test_run(TestRunOptions {
                    data_in: Some(&malformed),
                    ..Default::default()
                })
                .expect("test run");
            verdicts.push(out.return_value);
            (verdicts, read_endpoint_counters(&dir))
        })
        .join();
        let _ = std::fs::remove_dir_all(&pin_dir);
        let (verdicts, counters) = result.expect("test thread");
        assert_eq!(verdicts, [TC_ACT_OK, TC_ACT_OK, TC_ACT_OK]);
        let counters = counters.expect("read counters");
        // Test runs happen on the netns' loopback device.
        assert_eq!(
            counters,
            [EndpointCounters {
                ifindex: LOOPBACK_IFINDEX,
                from_pod_packets: u64::from(RUNS) + 1,
                from_pod_bytes: u64::from(RUNS + 1) * 100,
                to_pod_packets: u64::from(RUNS),
                to_pod_bytes: u64::from(RUNS) * 100,
            }]
        );
    }
}
