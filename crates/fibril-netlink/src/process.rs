//! Processes and namespaces: starting a child inside one, and finding who is inside.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// Make `cmd`'s child enter `ns` (its network namespace only) before it execs.
///
/// The namespace fd is opened now, in the parent, and moved into the hook, so the child
/// does nothing between fork and exec but `setns(2)`, which is async-signal-safe. The
/// fd is close-on-exec, so the program never sees it. Unlike `ip netns exec`, /etc and
/// /sys are left as they are.
pub fn setns_pre_exec(cmd: &mut Command, ns: &NetNs) -> Result<()> {
    let fd = ns.open_fd()?;
    // SAFETY: the hook only calls setns(2) on an fd it owns and reads errno; both are
    // async-signal-safe, and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The network namespace inode of the calling thread.
pub fn current_netns_inode() -> Result<u64> {
    let path = PathBuf::from("/proc/thread-self/ns/net");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| Error::Io {
            op: "stat",
            path,
            source,
        })
}

/// The network namespace inode of a process (of its main thread), if it can be read.
pub fn netns_inode_of(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Every process whose main thread is in the namespace with this inode, found by
/// scanning `/proc/*/ns/net`. Threads of other processes that entered the namespace
/// for a moment (as [`NetNs::run`] does) are not counted: the process is not "in" it.
pub fn pids_in_netns(inode: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| netns_inode_of(pid) == Some(inode))
        .collect();
    pids.sort_unstable();
    pids
}
