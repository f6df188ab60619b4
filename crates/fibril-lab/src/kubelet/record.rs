//! The kubelet's on-disk record of each pod it runs (netns, sandbox id, CNI result,
//! container pids), one JSON file per pod, written atomically. A restarted kubelet
//! reads these to adopt running pods, and to clean up pods deleted while it was down.
//!
//! The record is written before the netns is created and before CNI ADD runs, so a
//! crash at any point leaves enough to undo.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One container's process, as last started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub pid: Option<i32>,
    /// `/proc/<pid>/stat` start time (clock ticks since boot): tells our process from
    /// a later one that reused the pid.
    pub start_ticks: Option<u64>,
    /// RFC 3339.
    pub started_at: Option<String>,
    pub restart_count: i32,
}

/// A pod the kubelet has (or had) a sandbox for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Empty for host-network pods.
    pub netns: String,
    pub sandbox_id: String,
    /// The final CNI ADD result, once ADD succeeded.
    pub cni_result: Option<serde_json::Value>,
    pub pod_ip: Option<Ipv4Addr>,
    /// RFC 3339.
    pub start_time: Option<String>,
    /// The pod finished (Succeeded/Failed) and its sandbox is already gone.
    #[serde(default)]
    pub finished: bool,
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod record {path} is damaged: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The directory of pod records: `<node_kubelet_dir>/pods/`.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl RecordStore {
    pub fn new(kubelet_dir: &Path) -> Self {
        RecordStore {
            dir: kubelet_dir.join("pods"),
        }
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// Write atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, rec: &PodRecord) -> Result<(), RecordError> {
        let path = self.path(&rec.uid);
        let io = |op| {
            let path = path.clone();
            move |source| RecordError::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating the directory of"))?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            rec.uid,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = serde_json::to_vec_pretty(rec).expect("a pod record serialises");
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map_err(io("writing"))
    }

    pub fn remove(&self, uid: &str) -> Result<(), RecordError> {
        let path = self.path(uid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// Every record; a damaged one is reported and skipped, never deleted.
    pub fn load_all(&self) -> Result<Vec<PodRecord>, RecordError> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RecordError::Io {
                    op: "listing",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !entry.file_name().to_string_lossy().starts_with('.');
            if !is_record {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|source| RecordError::Io {
                    op: "reading",
                    path: path.clone(),
                    source,
                })
                .and_then(|b| {
                    serde_json::from_slice::<PodRecord>(&b).map_err(|source| RecordError::Parse {
                        path: path.clone(),
                        source,
                    })
                });
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!("{e}"),
            }
        }
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_ignore_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        assert!(store.load_all().unwrap().is_empty());
        let mut rec = PodRecord {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "p".into(),
            netns: "fibril-pod-u1".into(),
            sandbox_id: "u1".into(),
            pod_ip: Some("10.244.0.5".parse().unwrap()),
            ..Default::default()
        };
        rec.containers.insert(
            "c".into(),
            ContainerRecord {
                pid: Some(42),
                start_ticks: Some(7),
                started_at: Some("2024-01-01T00:00:00Z".into()),
                restart_count: 1,
            },
        );
        store.save(&rec).unwrap();
        store.save(&rec).unwrap();
        std::fs::write(dir.path().join("pods/.u2.1.2.tmp"), b"{").unwrap();
        std::fs::write(dir.path().join("pods/broken.json"), b"{").unwrap();
        assert_eq!(store.load_all().unwrap(), vec![rec]);
        store.remove("u1").unwrap();
        store.remove("u1").unwrap();
        assert!(store.load_all().unwrap().is_empty());
    }
}
