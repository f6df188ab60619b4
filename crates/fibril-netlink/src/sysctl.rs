//! Per-namespace sysctls: `/proc/sys/net/...` read and written from a thread inside the
//! namespace (procfs resolves `net.*` entries against the caller's namespace).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`. A key holding `/` is taken
/// as a path (`net/ipv4/conf/eth0.100/rp_filter`), as sysctl(8) allows for names with
/// dots. Only `net.*` keys are accepted: others are machine-wide.
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let bad = |reason| Error::SysctlKey {
        key: key.to_string(),
        reason,
    };
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    if parts.first() != Some(&"net") {
        return Err(bad("must start with net."));
    }
    if parts.len() < 2 {
        return Err(bad("names no entry under net"));
    }
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." {
            return Err(bad("has an empty or relative component"));
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
        {
            return Err(bad("has a character outside [A-Za-z0-9_.@-]"));
        }
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(parts);
    Ok(path)
}

impl NetNs {
    /// Write a `net.*` sysctl inside this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        self.run(|| std::fs::write(&path, value.as_bytes()))?
            .map_err(|source| Error::Sysctl {
                op: "writing",
                netns: self.name().to_string(),
                key: key.to_string(),
                source,
            })
    }

    /// Read a `net.*` sysctl inside this namespace, without the trailing newline.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        let raw = self
            .run_read(|| std::fs::read_to_string(&path))?
            .map_err(|source| Error::Sysctl {
                op: "reading",
                netns: self.name().to_string(),
                key: key.to_string(),
                source,
            })?;
        Ok(raw.trim_end_matches('\n').to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn non_net_and_traversal_keys_are_refused() {
        for k in [
            "kernel.hostname",
            "net",
            "net..ipv4",
            "net/../kernel/hostname",
            "net.ipv4.ip forward",
            "",
        ] {
            assert!(
                matches!(sysctl_path(k), Err(Error::SysctlKey { .. })),
                "{k}"
            );
        }
    }
}
