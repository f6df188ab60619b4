//! Named network namespaces, as `ip netns` keeps them: a bind mount of a namespace file
//! on `/run/netns/<name>`, plus running code inside one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use crate::error::{Error, Result};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A sysctl registered only in the initial network namespace (net_core_table in
/// net/core/sysctl_net_core.c). Seeing it from inside a namespace means that namespace
/// is the host's; unlike /proc/1/ns/net it is readable without ptrace rights over PID 1.
const INIT_NET_ONLY_SYSCTL: &str = "/proc/sys/net/core/netdev_max_backlog";

/// A named network namespace. Holding one does not keep the namespace alive: every
/// operation opens `/run/netns/<name>` afresh, so [`NetNs::delete`] really removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name == "." || name == ".." {
        "must not be . or .."
    } else if name.contains('/') || name.contains('\0') {
        "must not contain / or NUL"
    } else if name.len() > 255 {
        "must be at most 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn is_netns_mount(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == NSFS_MAGIC)
}

/// Make /run/netns a shared mount point, as iproute2's `netns_add` does, so that a
/// namespace mounted there is visible in every mount namespace that shares it.
fn ensure_run_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let mut bound = false;
    loop {
        match mount(
            Some(""),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet; bind it onto itself once and retry.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
                bound = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl NetNs {
    fn at(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        Ok(NetNs {
            name: name.to_string(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Netns {
            op,
            netns: self.name.clone(),
            source,
        }
    }

    /// Create a new namespace, like `ip netns add`. Fails if `/run/netns/<name>` exists.
    pub fn create(name: &str) -> Result<NetNs> {
        let ns = NetNs::at(name)?;
        ensure_run_dir().map_err(ns.err("preparing /run/netns"))?;
        // The mount point: created exclusively so two creators never share a namespace.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&ns.path)
            .map_err(ns.err("creating the mount point"))?;
        // unshare(CLONE_NEWNET) affects only the calling thread, so a helper thread
        // gets the new namespace and bind-mounts its own namespace file; the thread and
        // its namespace reference end with it, the mount keeps the namespace alive.
        let path = ns.path.clone();
        let res = std::thread::scope(|s| {
            s.spawn(move || -> io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns creation thread panicked")))
        });
        if let Err(e) = res {
            let _ = std::fs::remove_file(&ns.path);
            return Err(ns.err("creating the namespace")(e));
        }
        Ok(ns)
    }

    /// Open an existing namespace, or create it. A leftover mount point that holds no
    /// namespace (a crashed create) is replaced.
    pub fn ensure(name: &str) -> Result<NetNs> {
        match NetNs::open(name) {
            Ok(ns) => Ok(ns),
            Err(Error::NotANetns { .. }) => {
                NetNs::delete(name)?;
                NetNs::create(name)
            }
            Err(e) if e.is_not_found() => match NetNs::create(name) {
                // Lost a race with another creator: theirs is as good as ours.
                Err(e) if e.errno() == Some(Errno::EEXIST) => NetNs::open(name),
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    /// Open an existing namespace; errors if absent or not a namespace mount.
    pub fn open(name: &str) -> Result<NetNs> {
        let ns = NetNs::at(name)?;
        if !is_netns_mount(&ns.path).map_err(ns.err("opening"))? {
            return Err(Error::NotANetns {
                netns: ns.name.clone(),
                path: ns.path.clone(),
            });
        }
        Ok(ns)
    }

    /// Open the namespace mounted at `path` (a runtime's `CNI_NETNS`, which need not be
    /// under /run/netns); errors if absent or not a namespace mount. Its name is the
    /// file name, used in errors only.
    pub fn open_path(path: &Path) -> Result<NetNs> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        validate_name(&name)?;
        let ns = NetNs {
            name,
            path: path.to_path_buf(),
        };
        if !is_netns_mount(&ns.path).map_err(ns.err("opening"))? {
            return Err(Error::NotANetns {
                netns: ns.name.clone(),
                path: ns.path.clone(),
            });
        }
        Ok(ns)
    }

    /// Remove a namespace, like `ip netns delete`; Ok if it is already gone. Processes
    /// still inside keep the namespace itself alive until they exit.
    pub fn delete(name: &str) -> Result<()> {
        let ns = NetNs::at(name)?;
        // A racing double create can stack mounts; peel all of them.
        for _ in 0..8 {
            match umount2(&ns.path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(e) => return Err(ns.err("unmounting")(e.into())),
            }
        }
        match std::fs::remove_file(&ns.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ns.err("removing the mount point")(e)),
        }
    }

    /// Names under /run/netns (empty if the directory does not exist).
    pub fn list() -> Result<Vec<String>> {
        let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "listing",
                    path: NETNS_RUN_DIR.into(),
                    source,
                })
            }
        };
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|source| Error::Io {
                op: "listing",
                path: NETNS_RUN_DIR.into(),
                source,
            })?;
            if let Some(n) = entry.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode: equal to `/proc/PID/ns/net`'s for every process inside it.
    pub fn inode(&self) -> Result<u64> {
        let fd = self.open_fd()?;
        let meta = File::from(fd).metadata().map_err(self.err("stat"))?;
        Ok(meta.ino())
    }

    /// An fd on the namespace, checked to be one (close-on-exec).
    pub(crate) fn open_fd(&self) -> Result<OwnedFd> {
        let file = File::open(&self.path).map_err(self.err("opening"))?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| self.err("opening")(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(Error::NotANetns {
                netns: self.name.clone(),
                path: self.path.clone(),
            });
        }
        Ok(file.into())
    }

    /// Run `f` on a new thread that has entered this namespace (the network namespace
    /// only: mounts, /sys and /etc stay the caller's). Refused if the namespace is the
    /// host's. A panic in `f` is resumed in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.run_inner(true, f)
    }

    /// Like [`NetNs::run`] but allowed on the host namespace; for read-only operations.
    pub(crate) fn run_read<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.run_inner(false, f)
    }

    fn run_inner<T: Send>(&self, mutating: bool, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.open_fd()?;
        let outcome = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns:{}", self.name))
                .spawn_scoped(s, move || -> Result<T> {
                    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| self.err("entering")(e.into()))?;
                    drop(fd);
                    if mutating && Path::new(INIT_NET_ONLY_SYSCTL).exists() {
                        return Err(Error::HostNetns {
                            netns: self.name.clone(),
                        });
                    }
                    Ok(f())
                })
                .map(|h| h.join())
        });
        match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => Err(self.err("spawning a thread")(e)),
        }
    }
}
