//! The bpf filesystem: fibril pins maps and links there so they outlive the agent.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fibril_core::consts::BPFFS_MOUNT;

use crate::BpfError;

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Serialises the check-then-mount in this process, so concurrent callers never
/// stack two bpffs mounts.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool, BpfError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| BpfError::Io {
        op: "statfs",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is large enough for statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(BpfError::Io {
            op: "statfs",
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: statfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_MOUNT`] unless it already is one.
///
/// Mounts act on the calling thread's mount namespace; `ip netns exec` makes a new one
/// and hides the host's bpffs, which is why fibril enters only the network namespace.
pub fn ensure_bpffs() -> Result<(), BpfError> {
    let _guard = MOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(BPFFS_MOUNT);
    if is_bpffs(&path)? {
        return Ok(());
    }
    let target = CString::new(BPFFS_MOUNT).expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpfError::MountBpffs {
            path,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates `dir` (and parents) and checks it is on bpffs.
pub(crate) fn ensure_pin_dir(dir: &Path) -> Result<(), BpfError> {
    std::fs::create_dir_all(dir).map_err(|source| BpfError::Io {
        op: "creating pin dir",
        path: dir.to_path_buf(),
        source,
    })?;
    if !is_bpffs(dir)? {
        return Err(BpfError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}
