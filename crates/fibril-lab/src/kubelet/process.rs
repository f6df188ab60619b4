//! Container processes: started with `ip netns exec <podns>` (which also bind-mounts
//! the pod's `/etc/netns/<podns>/resolv.conf`), each in its own session so that the
//! whole process group can be signalled, with stdout and stderr appended to a log file.
//!
//! A process is identified by pid plus its start time, so a restarted kubelet can tell
//! a container it started earlier from an unrelated process that reused the pid.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// iproute2, whose `netns exec` is how containerd-less labs enter a pod.
const IP_BIN: &str = "ip";

/// How to start one container.
#[derive(Clone, Debug)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The pod netns; `None` runs in the kubelet's own (host-network pods).
    pub netns: Option<String>,
    pub log: PathBuf,
    pub working_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("empty command")]
    Empty,
    #[error("opening log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started (or adopted) container process.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub start_ticks: Option<u64>,
    pub child: Option<tokio::process::Child>,
}

/// How a process ended. Both are `None` for an adopted process whose parent was
/// another kubelet: its exit status is not ours to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    /// The container's exit code as upstream reports it (128 + signal when killed).
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Start a container process.
pub fn spawn(l: &Launch) -> Result<Started, LaunchError> {
    let (program, args) = l.argv.split_first().ok_or(LaunchError::Empty)?;
    if let Some(dir) = l.log.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::Log {
            path: l.log.clone(),
            source,
        })?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .map_err(|source| LaunchError::Log {
            path: l.log.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| LaunchError::Log {
        path: l.log.clone(),
        source,
    })?;
    let mut cmd = match &l.netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new(IP_BIN);
            c.args(["netns", "exec", ns.as_str(), program]);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.args(args)
        .env_clear()
        .envs(&l.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    if let Some(dir) = &l.working_dir {
        cmd.current_dir(dir);
    }
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_default();
    Ok(Started {
        pid,
        start_ticks: start_ticks(pid),
        child: Some(child),
    })
}

/// The process's start time in clock ticks after boot (`/proc/<pid>/stat` field 22),
/// or `None` if it is gone or a zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3), field 22 is the 19th.
    fields.nth(18)?.parse().ok()
}

/// Whether the process we started (pid + start time) is still running.
pub fn alive(pid: i32, ticks: Option<u64>) -> bool {
    match (start_ticks(pid), ticks) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Signal the process group led by `pid` (each container is its own session).
pub fn signal_group(pid: i32, sig: libc::c_int) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// Wait until the process ends.
pub async fn wait(mut started: Started) -> Exit {
    if let Some(child) = started.child.as_mut() {
        return match child.wait().await {
            Ok(st) => Exit {
                code: st.code(),
                signal: st.signal(),
            },
            Err(_) => Exit {
                code: None,
                signal: None,
            },
        };
    }
    while alive(started.pid, started.start_ticks) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Exit {
        code: None,
        signal: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_in_own_session_logs_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let l = Launch {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo out $FOO; echo err >&2; [ $(ps -o sid= -p $$) -eq $$ ] && exit 3".into(),
            ],
            env: [
                ("FOO".to_string(), "bar".to_string()),
                (
                    "PATH".to_string(),
                    crate::kubelet::spec::CONTAINER_PATH.to_string(),
                ),
            ]
            .into(),
            netns: None,
            log: log.clone(),
            working_dir: None,
        };
        let s = spawn(&l).unwrap();
        assert!(s.pid > 0);
        let exit = wait(s).await;
        assert_eq!(
            exit.code,
            Some(3),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out bar") && text.contains("err"), "{text}");
    }

    #[tokio::test]
    async fn group_signal_and_adopted_wait() {
        let dir = tempfile::tempdir().unwrap();
        let l = Launch {
            argv: vec!["sleep".into(), "100".into()],
            env: [(
                "PATH".to_string(),
                crate::kubelet::spec::CONTAINER_PATH.to_string(),
            )]
            .into(),
            netns: None,
            log: dir.path().join("s.log"),
            working_dir: None,
        };
        let s = spawn(&l).unwrap();
        let (pid, ticks) = (s.pid, s.start_ticks);
        assert!(ticks.is_some());
        assert!(alive(pid, ticks));
        assert!(!alive(pid, ticks.map(|t| t + 1)));
        // Watch it as an adopted process would be watched, while the child handle reaps.
        let adopted = tokio::spawn(wait(Started {
            pid,
            start_ticks: ticks,
            child: None,
        }));
        signal_group(pid, libc::SIGTERM);
        let exit = wait(s).await;
        assert_eq!(exit.signal, Some(libc::SIGTERM));
        assert_eq!(exit.exit_code(), 128 + libc::SIGTERM);
        tokio::time::timeout(Duration::from_secs(5), adopted)
            .await
            .unwrap()
            .unwrap();
        assert!(!alive(pid, ticks));
    }
}
