//! Endpoint counters on the host side of pod veths (`bpf/pod.bpf.c`).
//!
//! # Attachment: TCX links, pinned
//!
//! Programs are attached with TCX links (Linux >= 6.6), not legacy clsact filters:
//! - a link is owned by its fd or pin, so a crash between attach and pin leaks nothing,
//!   and no other tool's `tc filter` command can silently replace or delete it;
//! - the kernel drops the attachment by itself when the device goes away;
//! - an agent upgrade replaces the program in place with `BPF_LINK_UPDATE`, atomically,
//!   so no packet goes uncounted;
//! - TCX orders multiple programs per hook without tc priority clashes.
//!
//! The cost is that a link lives only as long as an fd or a pin refers to it, so every
//! link is pinned at `<pin_dir>/tcx/<ifindex>/<program>`. The programs therefore stay
//! attached while the agent is down. On restart, [`PodCounters::attach`] finds the pinned
//! link, checks that it is still attached to that interface, and moves it to the newly
//! loaded program. Kernels without TCX are refused ([`BpfError::TcxUnsupported`]): there is
//! no silent fallback to clsact.
//!
//! Debian's bpftool 7.1 cannot show TCX links; [`tcx_programs`] lists what is attached.
//!
//! # Maps
//!
//! The counter map is declared `LIBBPF_PIN_BY_NAME` in C, so it lives at
//! `<pin_dir>/<map name>`: loading reuses it (counts survive a restart) and
//! [`read_endpoint_counters`] reads it without loading any program.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError, MapInfo, MapType, PerCpuHashMap};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use crate::bpffs::{ensure_bpffs, ensure_pin_dir};
use crate::error::{BpfError, Direction};
use crate::shared::{self, EpKey, EpStats};

/// The compiled `bpf/pod.bpf.c`.
pub static POD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.bpf.o"));
const POD_OBJECT_NAME: &str = "pod.bpf.o";

/// Directory under the pin dir that holds TCX links: `tcx/<ifindex>/<program>`.
pub const TCX_LINK_DIR: &str = "tcx";

/// One program and where it hooks in.
#[derive(Clone, Copy, Debug)]
struct Hook {
    direction: Direction,
    program: &'static str,
    attach_type: TcAttachType,
}

const HOOKS: [Hook; 2] = [
    Hook {
        direction: Direction::FromPod,
        program: shared::PROG_FROM_POD,
        attach_type: TcAttachType::Ingress,
    },
    Hook {
        direction: Direction::ToPod,
        program: shared::PROG_TO_POD,
        attach_type: TcAttachType::Egress,
    },
];

/// Counters of one endpoint, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// ifindex of the host-side veth, in the node's network namespace.
    pub ifindex: u32,
    /// Sent by the pod (tc ingress on the host-side veth).
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    /// Delivered to the pod (tc egress on the host-side veth).
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

/// The pod-veth programs, loaded, with their maps pinned in a node's pin dir.
pub struct PodCounters {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: BTreeMap<String, AttachedIf>,
}

struct AttachedIf {
    ifindex: u32,
    /// Held for the life of this handle; the pins keep the links alive beyond it.
    _links: Vec<FdLink>,
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
        ensure_bpffs()?;
        ensure_pin_dir(pin_dir)?;
        check_pinned_ep_stats(&pin_dir.join(shared::MAP_EP_STATS))?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(POD_OBJECT)
            .map_err(|source| BpfError::Load {
                object: POD_OBJECT_NAME,
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for hook in HOOKS {
            program_mut(&mut ebpf, hook.program)?
                .load()
                .map_err(|source| BpfError::Program {
                    program: hook.program,
                    source,
                })?;
        }
        Ok(PodCounters {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
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
        require_tcx()?;
        let ifindex = ifindex_of(ifname)?;
        if let Some(prev) = self.attached.get(ifname) {
            if prev.ifindex == ifindex {
                return Ok(());
            }
            // Same name, new device: the old one is gone, and with it its attachment.
            let old = prev.ifindex;
            self.attached.remove(ifname);
            remove_link_pins(&self.link_dir(old))?;
        }

        let dir = self.link_dir(ifindex);
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::Io {
            op: "creating link pin dir",
            path: dir.clone(),
            source,
        })?;
        let mut links = Vec::with_capacity(HOOKS.len());
        for hook in HOOKS {
            let pin = dir.join(hook.program);
            let prog = program_mut(&mut self.ebpf, hook.program)?;
            let link = match adopt_pinned(prog, hook, ifname, &pin)? {
                Some(link) => link,
                None => attach_new(prog, hook, ifname, &pin)?,
            };
            links.push(link);
        }
        self.attached.insert(
            ifname.to_string(),
            AttachedIf {
                ifindex,
                _links: links,
            },
        );
        Ok(())
    }

    /// Detaches both programs from `ifname`, removes their pins and the endpoint's
    /// counters. Succeeds when there is nothing to detach (the device may already be gone).
    pub fn detach(&mut self, ifname: &str) -> Result<(), BpfError> {
        let ifindex = match self.attached.remove(ifname) {
            Some(a) => a.ifindex,
            None => match ifindex_of(ifname) {
                Ok(i) => i,
                Err(_) => return Ok(()),
            },
        };
        self.forget(ifindex)
    }

    /// Forgets interfaces that no longer exist in the current network namespace (their
    /// pod was deleted while nobody called [`detach`](Self::detach), e.g. while the agent
    /// was down): removes their link pins and counters. Returns their ifindexes.
    pub fn prune_gone(&mut self) -> Result<Vec<u32>, BpfError> {
        let mut candidates = std::collections::BTreeSet::new();
        let tcx_dir = self.pin_dir.join(TCX_LINK_DIR);
        match std::fs::read_dir(&tcx_dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if let Some(i) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                        candidates.insert(i);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BpfError::Io {
                    op: "listing link pins",
                    path: tcx_dir,
                    source,
                })
            }
        }
        let map_path = self.pin_dir.join(shared::MAP_EP_STATS);
        let counters = self.counters_map()?;
        for key in counters.keys() {
            let key = key.map_err(|source| BpfError::Map {
                path: map_path.clone(),
                source,
            })?;
            candidates.insert(key.ifindex);
        }
        let gone: Vec<u32> = candidates
            .into_iter()
            .filter(|&i| !interface_exists(i))
            .collect();
        for &ifindex in &gone {
            self.attached.retain(|_, a| a.ifindex != ifindex);
            self.forget(ifindex)?;
        }
        Ok(gone)
    }

    /// Removes the link pins and the counters of `ifindex`. Dropping our fds (done by the
    /// callers) and the pins (here) releases the links.
    fn forget(&mut self, ifindex: u32) -> Result<(), BpfError> {
        remove_link_pins(&self.link_dir(ifindex))?;
        let map_path = self.pin_dir.join(shared::MAP_EP_STATS);
        match self.counters_map()?.remove(&EpKey { ifindex }) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                Ok(())
            }
            Err(source) => Err(BpfError::Map {
                path: map_path,
                source,
            }),
        }
    }

    fn counters_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, EpKey, EpStats>, BpfError> {
        let map = self
            .ebpf
            .map_mut(shared::MAP_EP_STATS)
            .ok_or(BpfError::MissingMap {
                object: POD_OBJECT_NAME,
                map: shared::MAP_EP_STATS,
            })?;
        PerCpuHashMap::try_from(map).map_err(|source| BpfError::Map {
            path: self.pin_dir.join(shared::MAP_EP_STATS),
            source,
        })
    }

    /// Interfaces attached through this handle (including adopted ones), sorted.
    pub fn attached(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    fn link_dir(&self, ifindex: u32) -> PathBuf {
        link_dir(&self.pin_dir, ifindex)
    }
}

/// `<pin_dir>/tcx/<ifindex>`: where the links of one interface are pinned.
pub fn link_dir(pin_dir: &Path, ifindex: u32) -> PathBuf {
    pin_dir.join(TCX_LINK_DIR).join(ifindex.to_string())
}

/// Reads the pinned endpoint counters in `pin_dir` (no program needed), per-CPU values
/// summed, sorted by ifindex.
pub fn read_endpoint_counters(pin_dir: &Path) -> Result<Vec<EndpointCounters>, BpfError> {
    let path = pin_dir.join(shared::MAP_EP_STATS);
    let map_err = |source| BpfError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let map = Map::from_map_data(data).map_err(map_err)?;
    // try_from checks the map type and the key and value sizes against ours.
    let counters: PerCpuHashMap<MapData, EpKey, EpStats> =
        PerCpuHashMap::try_from(map).map_err(map_err)?;
    let mut out = Vec::new();
    for item in counters.iter() {
        let (key, per_cpu) = item.map_err(map_err)?;
        let mut sum = EpStats::default();
        for v in per_cpu.iter() {
            sum.accumulate(v);
        }
        out.push(EndpointCounters::new(key, sum));
    }
    out.sort_by_key(|c| c.ifindex);
    Ok(out)
}

/// Programs attached with TCX to `ifname` in the current netns at `direction`, in order.
pub fn tcx_programs(ifname: &str, direction: Direction) -> Result<Vec<ProgramInfo>, BpfError> {
    let hook = HOOKS
        .iter()
        .find(|h| h.direction == direction)
        .expect("every direction has a hook");
    SchedClassifier::query_tcx(ifname, hook.attach_type)
        .map(|(_revision, progs)| progs)
        .map_err(|source| BpfError::Attach {
            program: hook.program,
            ifname: ifname.to_string(),
            direction,
            source,
        })
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram {
            object: POD_OBJECT_NAME,
            program: name,
        })?
        .try_into()
        .map_err(|source| BpfError::Program {
            program: name,
            source,
        })
}

fn require_tcx() -> Result<(), BpfError> {
    let kernel = KernelVersion::current().map_err(|e| BpfError::TcxUnsupported {
        kernel: format!("unknown ({e})"),
    })?;
    if kernel < KernelVersion::new(6, 6, 0) {
        return Err(BpfError::TcxUnsupported {
            kernel: format!("{kernel:?}"),
        });
    }
    Ok(())
}

fn ifindex_of(ifname: &str) -> Result<u32, BpfError> {
    let no_such = |source| BpfError::NoSuchInterface {
        ifname: ifname.to_string(),
        source,
    };
    let c = CString::new(ifname)
        .map_err(|e| no_such(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(no_such(io::Error::last_os_error()));
    }
    Ok(index)
}

fn interface_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

/// Reuses the link pinned at `pin` if it is still attached to `ifname`, moving it to
/// `prog`. Removes a stale pin (its device is gone) and returns `None`.
fn adopt_pinned(
    prog: &mut SchedClassifier,
    hook: Hook,
    ifname: &str,
    pin: &Path,
) -> Result<Option<FdLink>, BpfError> {
    let pinned = match PinnedLink::from_pin(pin) {
        Ok(p) => p,
        Err(aya::programs::links::LinkError::SyscallError(e))
            if e.io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(BpfError::PinnedLink {
                path: pin.to_path_buf(),
                source,
            })
        }
    };
    let link_err = |source| BpfError::PinnedLink {
        path: pin.to_path_buf(),
        source,
    };
    let attach_err = |source| BpfError::Attach {
        program: hook.program,
        ifname: ifname.to_string(),
        direction: hook.direction,
        source,
    };
    let link: FdLink = pinned.into();
    let linked_prog = link.info().map_err(link_err)?.program_id();
    let (_, on_device) =
        SchedClassifier::query_tcx(ifname, hook.attach_type).map_err(attach_err)?;
    if !on_device.iter().any(|p| p.id() == linked_prog) {
        // The link outlived its device (detached by the kernel); the ifindex now
        // belongs to a new device.
        drop(link);
        std::fs::remove_file(pin).map_err(|source| BpfError::Io {
            op: "removing stale link pin",
            path: pin.to_path_buf(),
            source,
        })?;
        return Ok(None);
    }
    let ours = prog.info().map_err(attach_err)?.id();
    if linked_prog == ours {
        return Ok(Some(link));
    }
    let link = SchedClassifierLink::try_from(link).map_err(link_err)?;
    let id = prog.attach_to_link(link).map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    Ok(Some(FdLink::try_from(link).map_err(link_err)?))
}

fn attach_new(
    prog: &mut SchedClassifier,
    hook: Hook,
    ifname: &str,
    pin: &Path,
) -> Result<FdLink, BpfError> {
    let attach_err = |source| BpfError::Attach {
        program: hook.program,
        ifname: ifname.to_string(),
        direction: hook.direction,
        source,
    };
    let id = prog
        .attach_with_options(
            ifname,
            hook.attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let link = FdLink::try_from(link).map_err(|source| BpfError::PinnedLink {
        path: pin.to_path_buf(),
        source,
    })?;
    let pinned = link.pin(pin).map_err(|source| BpfError::PinLink {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(pinned.into())
}

/// Removes the link pins of one interface; tolerates them being gone already.
fn remove_link_pins(dir: &Path) -> Result<(), BpfError> {
    for hook in HOOKS {
        let pin = dir.join(hook.program);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BpfError::Io {
                    op: "removing link pin",
                    path: pin,
                    source,
                })
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Io {
            op: "removing link pin dir",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// aya reuses a pinned map without comparing it to the ELF's definition; a map pinned by
/// an older, different build would otherwise be used silently.
fn check_pinned_ep_stats(path: &Path) -> Result<(), BpfError> {
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(source) => {
            return Err(BpfError::Map {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let expected = MapShape {
        map_type: Some(MapType::PerCpuHash),
        key_size: size_of::<EpKey>() as u32,
        value_size: size_of::<EpStats>() as u32,
        max_entries: shared::FIBRIL_EP_STATS_MAX_ENTRIES,
    };
    let found = MapShape {
        map_type: info.map_type().ok(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    if found != expected {
        return Err(BpfError::IncompatiblePinnedMap {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

#[derive(PartialEq)]
struct MapShape {
    map_type: Option<MapType>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.map_type {
            Some(t) => write!(f, "{t:?}")?,
            None => f.write_str("unknown type")?,
        }
        write!(
            f,
            ", key {} B, value {} B, {} entries",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader opens maps and programs by the header's names; this checks the compiled
    /// ELF has every one of them, with the header's key/value sizes, so C and Rust cannot
    /// drift apart.
    #[test]
    fn elf_matches_shared_header() {
        let obj = aya_obj::Object::parse(POD_OBJECT).expect("pod.bpf.o parses");
        for name in shared::MAP_NAMES {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} missing from pod.bpf.o; maps: {:?}",
                obj.maps.keys().collect::<Vec<_>>()
            );
        }
        for name in shared::PROGRAM_NAMES {
            assert!(
                obj.programs.contains_key(*name),
                "program {name} missing from pod.bpf.o; programs: {:?}",
                obj.programs.keys().collect::<Vec<_>>()
            );
        }
        for hook in HOOKS {
            assert!(shared::PROGRAM_NAMES.contains(&hook.program));
        }
        let ep = &obj.maps[shared::MAP_EP_STATS];
        assert_eq!(ep.key_size() as usize, size_of::<EpKey>());
        assert_eq!(ep.value_size() as usize, size_of::<EpStats>());
        assert_eq!(ep.max_entries(), shared::FIBRIL_EP_STATS_MAX_ENTRIES);
        assert_eq!(
            ep.map_type(),
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH as u32
        );
        assert_eq!(ep.pinning(), aya_obj::maps::PinningType::ByName);
    }

    #[test]
    fn programs_are_classifiers() {
        let obj = aya_obj::Object::parse(POD_OBJECT).expect("pod.bpf.o parses");
        for name in shared::PROGRAM_NAMES {
            let prog = &obj.programs[*name];
            assert!(
                matches!(prog.section, aya_obj::ProgramSection::SchedClassifier),
                "{name} is in section {:?}, aya attaches tc programs from \"classifier\"",
                prog.section
            );
        }
    }

    #[test]
    fn names_fit_the_kernel_name_length() {
        // BPF_OBJ_NAME_LEN is 16 including the NUL; longer names are truncated in bpftool.
        for name in shared::MAP_NAMES.iter().chain(shared::PROGRAM_NAMES) {
            assert!(name.len() < 16, "{name} is longer than 15 characters");
        }
    }

    /// BPF_PROG_TEST_RUN, as cilium's bpf/tests: a crafted frame through each program,
    /// in a throwaway netns (unshared by the test thread), without attaching anything.
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

        let pin_dir = PathBuf::from(fibril_core::consts::BPFFS_MOUNT)
            .join(format!("fibt{}unit", std::process::id()));
        let dir = pin_dir.clone();
        let result = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let mut pc = PodCounters::load(&dir).expect("load");
            let mut verdicts = Vec::new();
            for hook in HOOKS {
                let prog = program_mut(&mut pc.ebpf, hook.program).unwrap();
                let out = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        repeat: RUNS,
                        ..Default::default()
                    })
                    .expect("test run");
                verdicts.push(out.return_value);
            }
            (verdicts, read_endpoint_counters(&dir))
        })
        .join();
        let _ = std::fs::remove_dir_all(&pin_dir);
        let (verdicts, counters) = result.expect("test thread");
        assert_eq!(verdicts, [TC_ACT_OK, TC_ACT_OK]);
        let counters = counters.expect("read counters");
        // Test runs happen on the netns' loopback device.
        assert_eq!(
            counters,
            [EndpointCounters {
                ifindex: LOOPBACK_IFINDEX,
                from_pod_packets: u64::from(RUNS),
                from_pod_bytes: u64::from(RUNS) * 100,
                to_pod_packets: u64::from(RUNS),
                to_pod_bytes: u64::from(RUNS) * 100,
            }]
        );
    }

    #[test]
    fn link_pins_live_under_the_pin_dir() {
        assert_eq!(
            link_dir(Path::new("/sys/fs/bpf/fibril/n1"), 7).join(shared::PROG_FROM_POD),
            Path::new("/sys/fs/bpf/fibril/n1/tcx/7/fib_from_pod")
        );
    }
}
