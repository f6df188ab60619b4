//! Attaching programs with TCX links, pinned so that they outlive the agent.
//!
//! Programs are attached with TCX links (Linux >= 6.6), not legacy clsact filters:
//! - a link is owned by its fd or pin, so a crash between attach and pin leaks nothing,
//!   and no other tool's `tc filter` command can silently replace or delete it;
//! - the kernel drops the attachment by itself when the device goes away;
//! - an agent upgrade replaces the program in place with `BPF_LINK_UPDATE`, atomically,
//!   so no packet goes unrouted or uncounted;
//! - TCX orders multiple programs per hook without tc priority clashes.
//!
//! The cost is that a link lives only as long as an fd or a pin refers to it, so every
//! link is pinned at `<pin_dir>/tcx/<ifindex>/<program>`. The programs therefore stay
//! attached while the agent is down. On restart, attaching again finds the pinned link,
//! checks that it is still attached to that interface, and moves it to the newly loaded
//! program. Kernels without TCX are refused ([`BpfError::TcxUnsupported`]): there is no
//! silent fallback to clsact.
//!
//! Debian's bpftool 7.1 cannot show TCX links; [`tcx_programs`] lists what is attached.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkError, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{ProgramInfo, SchedClassifier};
use aya::util::KernelVersion;

use crate::error::BpfError;
use crate::hook::Hook;

/// Directory under the pin dir that holds TCX links: `tcx/<ifindex>/<program>`.
pub const TCX_LINK_DIR: &str = "tcx";

/// `<pin_dir>/tcx/<ifindex>`: where the links of one interface are pinned.
pub fn link_dir(pin_dir: &Path, ifindex: u32) -> PathBuf {
    pin_dir.join(TCX_LINK_DIR).join(ifindex.to_string())
}

/// Programs attached with TCX to `ifname` in the current netns at `hook`, in order.
pub fn tcx_programs(ifname: &str, hook: Hook) -> Result<Vec<ProgramInfo>, BpfError> {
    SchedClassifier::query_tcx(ifname, hook.attach_type())
        .map(|(_revision, progs)| progs)
        .map_err(|source| BpfError::Attach {
            program: hook.program(),
            ifname: ifname.to_string(),
            hook,
            source,
        })
}

/// The kernel's ids of a pinned link and of the program it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

/// The link pinned for `hook` on interface `ifindex`, if any.
pub fn pinned_link(pin_dir: &Path, ifindex: u32, hook: Hook) -> Result<Option<LinkIds>, BpfError> {
    let path = link_dir(pin_dir, ifindex).join(hook.program());
    let link: FdLink = match PinnedLink::from_pin(&path) {
        Ok(p) => p.into(),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(source) => return Err(BpfError::PinnedLink { path, source }),
    };
    let info = link
        .info()
        .map_err(|source| BpfError::PinnedLink { path, source })?;
    Ok(Some(LinkIds {
        link_id: info.id(),
        program_id: info.program_id(),
    }))
}

pub(crate) fn require_tcx() -> Result<(), BpfError> {
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

pub(crate) fn ifindex_of(ifname: &str) -> Result<u32, BpfError> {
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

pub(crate) fn interface_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

/// The interfaces a loader attached, by name, and their links.
pub(crate) struct Attachments {
    pin_dir: PathBuf,
    by_name: BTreeMap<String, Attached>,
}

struct Attached {
    ifindex: u32,
    hooks: Vec<Hook>,
    /// Held for the life of the loader; the pins keep the links alive beyond it.
    _links: Vec<FdLink>,
}

/// What [`Attachments::prepare`] decided.
pub(crate) enum Prepared {
    /// Attached by this loader already, with the same hooks: nothing to do.
    Done,
    /// Attach the hooks to this ifindex (adopting links a previous agent pinned).
    Attach { ifindex: u32 },
}

impl Attachments {
    pub fn new(pin_dir: &Path) -> Self {
        Attachments {
            pin_dir: pin_dir.to_path_buf(),
            by_name: BTreeMap::new(),
        }
    }

    /// Checks that `ifname` can take `hooks`: idempotent for the same hooks; a device
    /// that replaced an attached one of the same name drops the old one's pins; a device
    /// that carries other fibril hooks is refused.
    pub fn prepare(&mut self, ifname: &str, hooks: &[Hook]) -> Result<Prepared, BpfError> {
        require_tcx()?;
        let ifindex = ifindex_of(ifname)?;
        if let Some(prev) = self.by_name.get(ifname) {
            if prev.ifindex == ifindex {
                if prev.hooks == hooks {
                    return Ok(Prepared::Done);
                }
                return Err(BpfError::AttachedElsewhere {
                    ifname: ifname.to_string(),
                    hook: prev.hooks[0],
                });
            }
            // Same name, new device: the old one is gone, and with it its attachment.
            let old = prev.ifindex;
            self.by_name.remove(ifname);
            remove_link_pins(&link_dir(&self.pin_dir, old))?;
        }
        // Pins of other hooks, left by a previous agent: refused while they are live.
        let dir = link_dir(&self.pin_dir, ifindex);
        for other in Hook::ALL.into_iter().filter(|h| !hooks.contains(h)) {
            let pin = dir.join(other.program());
            if pin.exists() && live_pinned_link(other, ifname, &pin)?.is_some() {
                return Err(BpfError::AttachedElsewhere {
                    ifname: ifname.to_string(),
                    hook: other,
                });
            }
        }
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::Io {
            op: "creating link pin dir",
            path: dir,
            source,
        })?;
        Ok(Prepared::Attach { ifindex })
    }

    /// Attaches (or adopts) one hook's program on `ifindex`; the caller collects the
    /// links and hands them to [`insert`](Self::insert).
    pub fn attach_one(
        &self,
        prog: &mut SchedClassifier,
        hook: Hook,
        ifname: &str,
        ifindex: u32,
    ) -> Result<FdLink, BpfError> {
        let pin = link_dir(&self.pin_dir, ifindex).join(hook.program());
        match adopt_pinned(prog, hook, ifname, &pin)? {
            Some(link) => Ok(link),
            None => attach_new(prog, hook, ifname, &pin),
        }
    }

    pub fn insert(&mut self, ifname: &str, ifindex: u32, hooks: &[Hook], links: Vec<FdLink>) {
        self.by_name.insert(
            ifname.to_string(),
            Attached {
                ifindex,
                hooks: hooks.to_vec(),
                _links: links,
            },
        );
    }

    /// Forgets `ifname` and removes its link pins, which detaches its programs once this
    /// loader's fds are dropped (here). Returns its ifindex, `None` when there was nothing
    /// to detach (the device may already be gone).
    pub fn detach(&mut self, ifname: &str) -> Result<Option<u32>, BpfError> {
        let ifindex = match self.by_name.remove(ifname) {
            Some(a) => a.ifindex,
            None => match ifindex_of(ifname) {
                Ok(i) => i,
                Err(_) => return Ok(None),
            },
        };
        remove_link_pins(&link_dir(&self.pin_dir, ifindex))?;
        Ok(Some(ifindex))
    }

    /// Forgets `ifindex` (its device is gone) and removes its link pins.
    pub fn forget(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.by_name.retain(|_, a| a.ifindex != ifindex);
        remove_link_pins(&link_dir(&self.pin_dir, ifindex))
    }

    /// ifindexes with a link pin dir.
    pub fn pinned_ifindexes(&self) -> Result<BTreeSet<u32>, BpfError> {
        let mut out = BTreeSet::new();
        let tcx_dir = self.pin_dir.join(TCX_LINK_DIR);
        match std::fs::read_dir(&tcx_dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if let Some(i) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                        out.insert(i);
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
        Ok(out)
    }

    /// Attached interfaces and their hooks, sorted by name.
    pub fn list(&self) -> Vec<(String, Vec<Hook>)> {
        self.by_name
            .iter()
            .map(|(n, a)| (n.clone(), a.hooks.clone()))
            .collect()
    }
}

/// The link pinned at `pin` if it is still attached to `ifname` at `hook`. A stale pin
/// (its device is gone, and the ifindex may now belong to another device) is removed.
fn live_pinned_link(hook: Hook, ifname: &str, pin: &Path) -> Result<Option<FdLink>, BpfError> {
    let pinned = match PinnedLink::from_pin(pin) {
        Ok(p) => p,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(source) => {
            return Err(BpfError::PinnedLink {
                path: pin.to_path_buf(),
                source,
            })
        }
    };
    let link: FdLink = pinned.into();
    let linked_prog = link
        .info()
        .map_err(|source| BpfError::PinnedLink {
            path: pin.to_path_buf(),
            source,
        })?
        .program_id();
    let on_device = tcx_programs(ifname, hook)?;
    if on_device.iter().any(|p| p.id() == linked_prog) {
        return Ok(Some(link));
    }
    drop(link);
    std::fs::remove_file(pin).map_err(|source| BpfError::Io {
        op: "removing stale link pin",
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(None)
}

/// Reuses the link pinned at `pin` if it is still attached to `ifname`, moving it to
/// `prog` (`BPF_LINK_UPDATE`: atomic, no packet sees no program).
fn adopt_pinned(
    prog: &mut SchedClassifier,
    hook: Hook,
    ifname: &str,
    pin: &Path,
) -> Result<Option<FdLink>, BpfError> {
    let Some(link) = live_pinned_link(hook, ifname, pin)? else {
        return Ok(None);
    };
    let link_err = |source| BpfError::PinnedLink {
        path: pin.to_path_buf(),
        source,
    };
    let attach_err = |source| BpfError::Attach {
        program: hook.program(),
        ifname: ifname.to_string(),
        hook,
        source,
    };
    let linked_prog = link.info().map_err(link_err)?.program_id();
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
        program: hook.program(),
        ifname: ifname.to_string(),
        hook,
        source,
    };
    let id = prog
        .attach_with_options(
            ifname,
            hook.attach_type(),
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

/// Removes the link pins of one interface (every pin in its dir, whichever program);
/// tolerates them being gone already.
fn remove_link_pins(dir: &Path) -> Result<(), BpfError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BpfError::Io {
                op: "listing link pins",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let pin = entry.path();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_live_under_the_pin_dir() {
        assert_eq!(
            link_dir(Path::new("/sys/fs/bpf/fibril/n1"), 7).join(Hook::FromPod.program()),
            Path::new("/sys/fs/bpf/fibril/n1/tcx/7/fib_from_pod")
        );
    }
}
