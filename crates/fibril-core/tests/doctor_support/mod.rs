//! Shared by the doctor's fixture tests: the fixture directories under `tests/doctor/`, and
//! each fixture's `args` loaded into [`Inputs`] the way the CLI reads them (the CLI's own test
//! runs the binary on the same files).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use fibril_core::doctor::{CniDir, CniEntry, Inputs, NodeInput, Reserved, TextInput};

pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/doctor")
}

pub fn read(dir: &Path, name: &str) -> TextInput {
    TextInput::new(name, fs::read_to_string(dir.join(name)).unwrap())
}

pub fn node_arg(dir: &Path, v: &str) -> NodeInput {
    let (node, file) = match v.split_once('=') {
        Some((n, f)) => (n.to_string(), f),
        None => (
            Path::new(v)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            v,
        ),
    };
    NodeInput::new(node, read(dir, file))
}

pub fn load(dir: &Path) -> Inputs {
    let args = fs::read_to_string(dir.join("args")).unwrap();
    let mut inputs = Inputs::default();
    for line in args.lines().filter(|l| !l.trim().is_empty()) {
        let (flag, v) = line.split_once(' ').unwrap();
        match flag {
            "--cilium-values" => inputs.cilium_values = Some(read(dir, v)),
            "--cilium-config" => inputs.cilium_config = Some(read(dir, v)),
            "--nodes" => inputs.nodes = Some(read(dir, v)),
            "--routes" => inputs.routes.push(node_arg(dir, v)),
            "--sysctls" => inputs.sysctls.push(node_arg(dir, v)),
            "--iptables" => inputs.iptables.push(node_arg(dir, v)),
            "--agent-status" => inputs.agent_status.push(node_arg(dir, v)),
            "--reserved" => inputs.reserved.push(Reserved {
                text: v.to_string(),
            }),
            "--now" => inputs.now = Some(v.parse().unwrap()),
            "--cni-dir" => {
                let (node, d) = match v.split_once('=') {
                    Some((n, d)) => (Some(n.to_string()), d),
                    None => (None, v),
                };
                let mut entries: Vec<CniEntry> = fs::read_dir(dir.join(d))
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        CniEntry {
                            name: e.file_name().to_string_lossy().into_owned(),
                            text: fs::read_to_string(e.path()).ok(),
                        }
                    })
                    .collect();
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                inputs.cni_dirs.push(CniDir {
                    node,
                    path: d.to_string(),
                    entries,
                });
            }
            "--manifests" => {
                let p = dir.join(v);
                if p.is_dir() {
                    let mut names: Vec<String> = fs::read_dir(&p)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    for n in names {
                        inputs.manifests.push(read(dir, &format!("{v}/{n}")));
                    }
                } else {
                    inputs.manifests.push(read(dir, v));
                }
            }
            other => panic!("{}: unknown flag {other}", dir.display()),
        }
    }
    inputs
}

/// Every fixture directory (one holding `args`), sorted.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(fixtures_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args").exists())
        .collect();
    dirs.sort();
    dirs
}
