//! `fibril doctor` as a user runs it.
//! - Offline: each fixture's own `args`, from the fixture's directory. The binary must find
//!   exactly the fixture's finding ids, exit by `--fail-on`, print SARIF that validates against
//!   the official SARIF 2.1.0 schema and JSON that validates against ours, and keep going past
//!   unreadable files.
//! - `--local` (privileged): run with `ip netns exec` inside a namespace the test made and
//!   planted (src_valid_mark, a route, a nat table, a CNI dir with a leftover config, a fibril
//!   agent's status socket); the findings carry live evidence, and neither that namespace nor
//!   the root namespace is changed.
//! - `--lab` (privileged): src_valid_mark and a KUBE-SERVICES-before-hostPort nat table planted
//!   in one lab node's namespace are found on that node only, with its real routes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::{ensure_fibril_cni, unique_name, Lab, FIBRIL};

fn fibril() -> Command {
    Command::new(FIBRIL)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/doctor")
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("schemas").join(name)).unwrap(),
    )
    .unwrap();
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {}", errors.join("\n"));
}

fn fixture_args(dir: &Path) -> Vec<String> {
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    let mut out = Vec::new();
    for line in args.lines().filter(|l| !l.trim().is_empty()) {
        let (flag, v) = line.split_once(' ').unwrap();
        out.push(flag.to_string());
        out.push(v.to_string());
    }
    out
}

fn doctor_in(dir: &Path, extra: &[&str]) -> Output {
    fibril()
        .current_dir(dir)
        .arg("doctor")
        .args(fixture_args(dir))
        .args(extra)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ids(out: &Output) -> BTreeSet<String> {
    json_of(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The finding with this id, or a panic showing all of them.
fn finding<'a>(findings: &'a Value, id: &str) -> &'a Value {
    findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {findings:#}"))
}

/// Whether a finding has evidence from `file` (and `key`, when given).
fn has_evidence(f: &Value, file: &str, key: Option<&str>) -> bool {
    f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["file"] == file && key.is_none_or(|k| e["key"] == k))
}

fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn doctor_cli_finds_each_fixture_exactly_and_its_output_validates() {
    let sarif_schema = validator("sarif-schema-2.1.0.json");
    let json_schema = validator("findings.schema.json");
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 18, "{dirs:?}");
    for d in dirs {
        let name = d.display().to_string();
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
        assert_eq!(ids(&out), want, "{name}");
        assert_eq!(
            out.status.code(),
            Some(if want.is_empty() { 0 } else { 1 }),
            "{name}"
        );
        // Offline runs read nothing live and say nothing about sources.
        assert!(
            out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_valid(&json_schema, &json_of(&out), &name);
        let sarif = json_of(&doctor_in(&d, &["-o", "sarif"]));
        assert_valid(&sarif_schema, &sarif, &name);
        let results: BTreeSet<String> = sarif["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ruleId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(results, want, "{name}: SARIF results");
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
    assert_eq!(
        doctor_in(&dir, &["--fail-on", "info"]).status.code(),
        Some(1)
    );
    assert_eq!(
        doctor_in(&dir, &["--fail-on", "error"]).status.code(),
        Some(0)
    );
    // An error fails the default threshold.
    let err = fixtures().join("003-leftover-cni-config");
    assert_eq!(doctor_in(&err, &[]).status.code(), Some(1));
    // Clean passes even at info.
    let clean = fixtures().join("clean");
    assert_eq!(
        doctor_in(&clean, &["--fail-on", "info"]).status.code(),
        Some(0)
    );
    let text = doctor_in(&dir, &["-o", "text"]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.starts_with("SEVERITY"), "{s}");
    assert!(s.contains("external-ip-mitm"), "{s}");
    let v = json_of(&doctor_in(&dir, &["-o", "sarif"]));
    assert_eq!(v["version"], "2.1.0");
    let r = &v["runs"][0]["results"][0];
    assert_eq!(r["ruleId"], "external-ip-mitm");
    assert_eq!(r["level"], "warning");
    let rule = &v["runs"][0]["tool"]["driver"]["rules"][r["ruleIndex"].as_u64().unwrap() as usize];
    assert_eq!(rule["id"], "external-ip-mitm");
    assert!(rule["help"]["text"].as_str().unwrap().contains("Fix: "));
    assert_eq!(
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "service.yaml"
    );
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
        .args(["--manifests", "/nonexistent/dir/", "-o", "json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    let got = ids(&out);
    assert!(
        got.contains("input-unparsable") && got.contains("rp-filter"),
        "{got:?}"
    );
    let bad: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "input-unparsable")
        .collect();
    assert_eq!(bad.len(), 2, "{v:#}");
    assert!(bad
        .iter()
        .any(|f| has_evidence(f, "/nonexistent/routes.json", None)));
    assert_eq!(out.status.code(), Some(1));
    // A malformed flag value is a clear error naming it.
    let out = fibril()
        .args(["doctor", "--now", "yesterday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--now"));
}

/// With no input the doctor checks this host live and lists what it read. Only reads (the
/// namespace is whichever the test runs in). A missing iptables-save is a finding naming it.
#[test]
fn doctor_cli_without_inputs_checks_this_host_and_names_its_sources() {
    let empty = std::env::temp_dir().join(format!("{}-nopath", unique_name()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = fibril()
        .args(["doctor", "-o", "json", "--fail-on", "info"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    let v = json_of(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no input given: checking this host live (--local)"),
        "{err}"
    );
    for source in [
        "live:local/routes",
        "live:local/sysctl",
        "live:local/agent-status",
    ] {
        assert!(err.contains(source), "{source} not listed:\n{err}");
    }
    let f = finding(&v, "input-unavailable");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("iptables-save is not installed"),
        "{f:#}"
    );
    assert!(has_evidence(f, "live:local/iptables-save", None));
    assert!(err.contains("live:local/iptables-save: NOT READ"), "{err}");
    assert_eq!(out.status.code(), Some(1));
}

// ---------------------------------------------------------------------------------------
// Privileged: live namespaces.

/// A namespace of the test's own; deleted on drop, also on panic.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = fibril_netlink::NetNs::delete(&self.0);
    }
}

/// A directory of the test's own; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("{}-doctor", unique_name()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS ARGS...` (or the root namespace when `ns` is None), reading only.
fn ip_netns(ns: Option<&str>, args: &[&str]) -> String {
    let mut cmd = match ns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n]);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    run_ok(&mut cmd)
}

/// What the doctor could change in a namespace: routes of every table, links, the
/// net.ipv4.conf sysctls, iptables rules.
fn snapshot(ns: Option<&str>) -> String {
    let mut s = String::new();
    s += &ip_netns(ns, &["ip", "-j", "route", "show", "table", "all"]);
    s += &ip_netns(ns, &["ip", "-o", "link", "show"])
        .lines()
        .map(|l| l.split(" link/").next().unwrap_or(l).to_string() + "\n")
        .collect::<String>();
    let sysctls = ip_netns(ns, &["sysctl", "-a", "-r", r"^net\.ipv4\.conf\."]);
    s += &sysctls;
    s += &ip_netns(ns, &["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    s
}

const HOSTPORT_AFTER_KUBE: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
COMMIT
";

/// Serves one fibril agent status (as the agent's status socket does: the JSON, then EOF)
/// to every connection, from a thread that ends with the test process.
fn fake_agent(socket: &Path, status: Value) {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = std::io::Write::write_all(&mut c, status.to_string().as_bytes());
        }
    });
}

#[test]
#[ignore = "privileged: creates a network namespace and runs the doctor inside it as root"]
fn doctor_local_reads_the_namespace_it_runs_in_and_changes_nothing() {
    use fibril_netlink::{NetNs, Route};
    let name = format!("{}-drl", unique_name());
    let _guard = NsGuard(name.clone());
    let ns = NetNs::create(&name).unwrap();
    let root_before = snapshot(None);

    // Plant, only inside the test's namespace: src_valid_mark, an uplink with a route, a nat
    // table where KUBE-SERVICES comes before the CNI's hostPort chain.
    ns.set_sysctl("net.ipv4.conf.all.src_valid_mark", "1")
        .unwrap();
    ns.ensure_veth("uplink0", "uplink0p", &ns).unwrap();
    ns.ensure_addr("uplink0", "10.99.0.1/24".parse().unwrap())
        .unwrap();
    ns.set_up("uplink0").unwrap();
    ns.set_up("uplink0p").unwrap();
    ns.replace_route(&Route {
        dst: "10.98.0.0/16".parse().unwrap(),
        via: Some("10.99.0.254".parse().unwrap()),
        dev: Some("uplink0".into()),
    })
    .unwrap();
    let mut restore = Command::new("ip");
    restore
        .args(["netns", "exec", &name, "iptables-restore"])
        .stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        HOSTPORT_AFTER_KUBE.as_bytes(),
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore in {name}"
    );

    // A CNI dir with a leftover Cilium config beside the AWS one, and a fibril agent that
    // runs degraded.
    let tmp = TempDir::new();
    let cni = tmp.0.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    for f in ["05-cilium.conflist", "10-aws.conflist"] {
        std::fs::copy(
            fixtures().join("003-leftover-cni-config/cni").join(f),
            cni.join(f),
        )
        .unwrap();
    }
    let mut status: Value = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures().join("001-fibril-agent-legacy-host-routing/agent-status.json"),
        )
        .unwrap(),
    )
    .unwrap();
    status["node"] = "drnode".into();
    let socket = tmp.0.join("agent-status.sock");
    fake_agent(&socket, status);
    let ns_before = snapshot(Some(&name));

    let doctor = |format: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                FIBRIL,
                "doctor",
                "--local",
                "--cni-dir",
            ])
            .arg(&cni)
            .arg("--agent-socket")
            .arg(&socket)
            // An FQDN policy (src_valid_mark matters with a DNS proxy) and the default pool
            // 10.0.0.0/8 (which the planted route overlaps).
            .arg("--manifests")
            .arg(fixtures().join("002-gke-src-valid-mark/manifests"))
            .arg("--cilium-values")
            .arg(fixtures().join("000-azure-firewall-overlap/values.yaml"))
            .args(["-o", format])
            .output()
            .unwrap()
    };
    let out = doctor("json");
    let v = json_of(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{v:#}");

    let svm = finding(&v, "src-valid-mark");
    let ev = svm["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == "live:local/sysctl")
        .unwrap_or_else(|| panic!("{svm:#}"));
    assert_eq!(ev["key"], "net.ipv4.conf.all.src_valid_mark");
    assert_eq!(ev["value"], "1");
    assert!(ev.get("line").is_none(), "live evidence has no line: {ev}");

    let cni_f = finding(&v, "cni-config-conflict");
    for f in ["05-cilium.conflist", "10-aws.conflist"] {
        let file = cni.join(f).display().to_string();
        assert!(has_evidence(cni_f, &file, None), "{file}: {cni_f:#}");
    }

    let hp = finding(&v, "hostport-chain-order");
    assert!(has_evidence(
        hp,
        "live:local/iptables-save",
        Some("nat PREROUTING")
    ));
    assert!(
        hp["message"].as_str().unwrap().contains("node drnode"),
        "{hp:#}"
    );

    let legacy = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["id"] == "legacy-host-routing" && has_evidence(f, "live:local/agent-status", None)
        })
        .unwrap_or_else(|| panic!("no legacy-host-routing from the agent: {v:#}"));
    assert!(has_evidence(
        legacy,
        "live:local/agent-status",
        Some("hostRouting.cause")
    ));

    let overlap = finding(&v, "pod-cidr-overlap");
    assert!(
        overlap["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["file"] == "live:local/routes"
                && e["value"]
                    .as_str()
                    .unwrap()
                    .starts_with("10.98.0.0/16 via 10.99.0.254 dev uplink0")),
        "{overlap:#}"
    );
    // Every live source was read, and said so.
    assert!(!ids(&out).contains("input-unavailable"), "{v:#}");
    assert!(!ids(&out).contains("input-unparsable"), "{v:#}");
    for line in [
        "live:local/routes: read",
        "live:local/sysctl: read",
        "live:local/iptables-save: read (2 rules",
        "live:local/agent-status: read",
        "CNI config dir: from --cni-dir",
    ] {
        assert!(err.contains(line), "{line:?} not in:\n{err}");
    }

    // SARIF of the same run: valid, with live locations and the sources as notes.
    let sarif = json_of(&doctor("sarif"));
    assert_valid(&validator("sarif-schema-2.1.0.json"), &sarif, "live sarif");
    let uris: BTreeSet<String> = sarif["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["locations"].as_array().unwrap().clone())
        .filter_map(|l| {
            l["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(uris.contains("live:local/sysctl"), "{uris:?}");
    assert!(
        sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["message"]["text"]
                .as_str()
                .unwrap()
                .starts_with("live:local/routes: read"))
    );

    // Read-only: the namespace it inspected and the root namespace are as they were.
    assert_eq!(
        snapshot(Some(&name)),
        ns_before,
        "the doctor changed {name}"
    );
    assert_eq!(snapshot(None), root_before, "the root namespace changed");
}

/// Pod pool 172.16.0.0/12: overlaps the lab's fabric subnet 172.18.0.0/16, so a
/// `pod-cidr-overlap` finding proves the nodes' real routes were read.
const LAB_VALUES: &str = "kubeProxyReplacement: true
k8sServiceHost: 172.18.0.2
k8sServicePort: 6443
bpf:
  masquerade: true
routingMode: tunnel
ipam:
  mode: cluster-pool
  operator:
    clusterPoolIPv4PodCIDRList: [\"172.16.0.0/12\"]
";

#[test]
#[ignore = "privileged: builds a lab (network namespaces) as root"]
fn doctor_lab_sees_src_valid_mark_and_hostport_order_planted_in_a_node() {
    let lab = Lab::up(2, &["--cni", "bridge"]);
    let node1 = lab.node(1);
    let node2 = lab.node(2);
    let root_before = snapshot(None);
    // Only the lab node's own namespace is touched.
    fibril_netlink::NetNs::open(&node1)
        .unwrap()
        .set_sysctl("net.ipv4.conf.all.src_valid_mark", "1")
        .unwrap();
    // KUBE-SERVICES jumped to from PREROUTING before the CNI's hostPort chain. Added to
    // whatever the bridge plugin has in the node's nat table, not replacing it.
    let ipt = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &node1, "iptables", "-t", "nat"])
            .args(args);
        c.output().unwrap()
    };
    for chain in ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"] {
        if !ipt(&["-S", chain]).status.success() {
            assert!(ipt(&["-N", chain]).status.success(), "creating {chain}");
        }
    }
    let add = ipt(&[
        "-A",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let ins = ipt(&[
        "-I",
        "PREROUTING",
        "1",
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]);
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );

    let tmp = TempDir::new();
    let values = tmp.0.join("values.yaml");
    std::fs::write(&values, LAB_VALUES).unwrap();
    let policy = fixtures().join("002-gke-src-valid-mark/manifests");
    let doctor = |format: &str| {
        lab.cmd(&["doctor", "--lab", &lab.name, "-o", format])
            .arg("--manifests")
            .arg(&policy)
            .arg("--cilium-values")
            .arg(&values)
            .output()
            .unwrap()
    };
    let out = doctor("json");
    let v = json_of(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();

    let f = finding(&v, "src-valid-mark");
    let sysctl1 = format!("live:{node1}/sysctl");
    assert!(f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["file"] == sysctl1
            && e["key"] == "net.ipv4.conf.all.src_valid_mark"
            && e["value"] == "1"
            && e.get("line").is_none()));
    // The other node was not planted and is not reported.
    let all = v.to_string();
    assert!(!all.contains(&format!("live:{node2}/sysctl")), "{v:#}");

    let hp = finding(&v, "hostport-chain-order");
    let ipt1 = format!("live:{node1}/iptables-save");
    assert!(has_evidence(hp, &ipt1, Some("nat PREROUTING")), "{hp:#}");
    assert!(hp["message"].as_str().unwrap().contains(&node1), "{hp:#}");
    assert!(
        !all.contains(&format!("live:{node2}/iptables-save")),
        "{v:#}"
    );

    // The nodes' real routes: the fabric subnet on eth0 overlaps the pool.
    let overlap = finding(&v, "pod-cidr-overlap");
    assert!(
        overlap["evidence"].as_array().unwrap().iter().any(|e| {
            e["file"].as_str().unwrap().ends_with("/routes")
                && e["value"].as_str().unwrap().starts_with("172.18.0.0/16")
        }),
        "{overlap:#}"
    );
    // Every live source was read and listed; none is unavailable.
    assert!(!ids(&out).contains("input-unparsable"), "{v:#}");
    assert!(!ids(&out).contains("input-unavailable"), "{v:#}");
    for n in [&node1, &node2] {
        for s in ["routes", "sysctl", "iptables-save"] {
            let line = format!("live:{n}/{s}: read");
            assert!(err.contains(&line), "{line:?} not in:\n{err}");
        }
    }
    assert!(err.contains("runs --cni bridge: no fibril agents"), "{err}");

    let sarif = json_of(&doctor("sarif"));
    assert_valid(&validator("sarif-schema-2.1.0.json"), &sarif, "lab sarif");
    assert_eq!(snapshot(None), root_before, "the root namespace changed");
}

/// A lab of fibril agents: each node's agent is asked on its status socket, and an agent in
/// BPF host routing gives no legacy-host-routing finding.
#[test]
#[ignore = "privileged: builds a lab with fibril agents (network namespaces, BPF) as root"]
fn doctor_lab_reads_each_fibril_agent() {
    ensure_fibril_cni();
    let lab = Lab::up(2, &["--cni", "fibril", "--routing", "native"]);
    let out = lab.run(&[
        "doctor",
        "--lab",
        &lab.name,
        "-o",
        "json",
        "--fail-on",
        "info",
    ]);
    let v = json_of(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for i in 1..=2 {
        let node = lab.node(i);
        let line = format!("live:{node}/agent-status: read from");
        assert!(err.contains(&line), "{line:?} not in:\n{err}");
        let status = lab.status(&node);
        assert_eq!(status["hostRouting"]["mode"], "BPF", "{status:#}");
    }
    let got = ids(&out);
    assert!(!got.contains("legacy-host-routing"), "{v:#}");
    assert!(!got.contains("input-unavailable"), "{v:#}");
    assert!(!got.contains("input-unparsable"), "{v:#}");
    assert_valid(&validator("findings.schema.json"), &v, "fibril lab json");
}
