//! `fibril doctor` as a user runs it: the fixture's own `args`, from the fixture's directory.
//! The binary must find exactly the fixture's finding ids, exit by `--fail-on`, and keep going
//! past unreadable files. The privileged test plants `src_valid_mark=1` in a live lab node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fibril() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fibril"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/doctor")
}

fn doctor_in(dir: &Path, extra: &[&str]) -> Output {
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    let mut cmd = fibril();
    cmd.current_dir(dir).arg("doctor");
    for line in args.lines().filter(|l| !l.trim().is_empty()) {
        let (flag, v) = line.split_once(' ').unwrap();
        cmd.arg(flag).arg(v);
    }
    cmd.args(extra).output().unwrap()
}

fn ids(out: &Output) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn doctor_cli_finds_each_fixture_exactly() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 17);
    for d in dirs {
        let out = doctor_in(&d, &["-o", "json", "--fail-on", "info"]);
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap())
                .unwrap();
        let want: BTreeSet<String> = want["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids(&out), want, "{}", d.display());
        let code = out.status.code();
        assert_eq!(
            code,
            Some(if want.is_empty() { 0 } else { 1 }),
            "{}",
            d.display()
        );
    }
}

#[test]
fn doctor_cli_fail_on_and_formats() {
    let dir = fixtures().join("003-externalip-service"); // one warning
    assert_eq!(doctor_in(&dir, &[]).status.code(), Some(0));
    assert_eq!(
        doctor_in(&dir, &["--fail-on", "warning"]).status.code(),
        Some(1)
    );
    let text = doctor_in(&dir, &["-o", "text"]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.starts_with("SEVERITY"), "{s}");
    assert!(s.contains("external-ip-mitm"), "{s}");
    let sarif = doctor_in(&dir, &["-o", "sarif"]);
    let v: Value = serde_json::from_slice(&sarif.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"][0]["ruleId"], "external-ip-mitm");
}

#[test]
fn doctor_cli_reports_unreadable_files_and_checks_the_rest() {
    let rp = fixtures().join("002-aws-rp-filter/sysctls/ip-10-0-1-23.ec2.internal.txt");
    let out = fibril()
        .args([
            "doctor",
            "--routes",
            "/nonexistent/routes.json",
            "--sysctls",
        ])
        .arg(format!("ip-10-0-1-23={}", rp.display()))
        .args(["-o", "json"])
        .output()
        .unwrap();
    let got = ids(&out);
    assert!(
        got.contains("input-unparsable") && got.contains("rp-filter"),
        "{got:?}"
    );
    assert_eq!(out.status.code(), Some(1));
    // A malformed flag value is a clear error naming it.
    let out = fibril()
        .args(["doctor", "--now", "yesterday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--now"));
}

/// Removes the lab even when the test panics.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = fibril().args(["lab", "down", "--name", &self.0]).output();
    }
}

#[test]
#[ignore = "privileged: builds a lab (network namespaces) as root"]
fn doctor_lab_sees_src_valid_mark_planted_in_a_node() {
    let name = format!("dr{}", std::process::id() % 100_000);
    let guard = LabGuard(name.clone());
    let up = fibril()
        .args(["lab", "up", "--name", &name, "--nodes", "2"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let node = format!("{name}-node-1");
    // Only the lab node's own namespace is touched.
    fibril_netlink::NetNs::open(&node)
        .unwrap()
        .set_sysctl("net.ipv4.conf.all.src_valid_mark", "1")
        .unwrap();
    let policy = fixtures().join("002-gke-src-valid-mark/manifests");
    let out = fibril()
        .args(["doctor", "--lab", &name, "--manifests"])
        .arg(&policy)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    });
    let f = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "src-valid-mark")
        .unwrap_or_else(|| panic!("no src-valid-mark in {v:#}"));
    let ev = f["evidence"].as_array().unwrap();
    assert!(ev.iter().any(|e| e["file"] == format!("lab:{node}/sysctl")
        && e["key"] == "net.ipv4.conf.all.src_valid_mark"
        && e["value"] == "1"));
    // The other node was not planted and is not reported.
    assert!(!f["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{name}-node-2")));
    // Live routes were read too: the node's routes appear as an input (no unreadable finding).
    assert!(!v
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == "input-unparsable"));
    drop(guard);
}
