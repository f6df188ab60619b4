//! The CNI runtime against config files and fake plugins (shell scripts that record how
//! they were called). No root needed: the fake plugins never touch the network.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use fibril_lab::cni::{Attachment, CniError, CniRuntime};
use serde_json::{json, Value};

struct Fixture {
    _tmp: tempfile::TempDir,
    rt: CniRuntime,
    bin: PathBuf,
    extra_bin: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let conf = root.join("net.d");
        let bin = root.join("bin");
        let extra_bin = root.join("bin2");
        let log = root.join("log");
        for d in [&conf, &bin, &extra_bin, &log] {
            std::fs::create_dir_all(d).unwrap();
        }
        Fixture {
            rt: CniRuntime {
                conf_dir: conf,
                bin_dirs: vec![bin.clone(), extra_bin.clone()],
                cache_dir: root.join("cache"),
            },
            _tmp: tmp,
            bin,
            extra_bin,
            log,
        }
    }

    fn conf(&self, file: &str, content: &str) {
        std::fs::write(self.rt.conf_dir.join(file), content).unwrap();
    }

    fn conflist(&self, version: &str, plugins: &[&str]) {
        let plugins: Vec<Value> = plugins
            .iter()
            .map(|t| json!({"type": t, "opt": format!("{t}-opt")}))
            .collect();
        let list = json!({"cniVersion": version, "name": "testnet", "plugins": plugins});
        self.conf("10-test.conflist", &list.to_string());
    }

    /// A fake plugin: logs the call, its `CNI_*` env and stdin, then runs the shell
    /// snippet for the command (default: succeed silently).
    fn plugin(&self, name: &str, add: &str, del: &str, check: &str, status: &str) {
        self.plugin_in(&self.bin, name, add, del, check, status);
    }

    fn plugin_in(&self, dir: &Path, name: &str, add: &str, del: &str, check: &str, status: &str) {
        let log = self.log.display();
        let script = format!(
            r#"#!/bin/sh
input=$(cat)
echo "{name} $CNI_COMMAND" >> "{log}/calls"
printf '%s' "$input" > "{log}/{name}.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "{log}/{name}.$CNI_COMMAND.env"
case "$CNI_COMMAND" in
  ADD) {add} ;;
  DEL) {del} ;;
  CHECK) {check} ;;
  STATUS) {status} ;;
esac
exit 0
"#
        );
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin whose ADD prints `result`; every other command succeeds.
    fn ok_plugin(&self, name: &str, result: &Value) {
        let add = format!("echo '{result}'");
        self.plugin(name, &add, ":", ":", ":");
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.log.join("calls"));
    }

    fn stdin(&self, name: &str, command: &str) -> Value {
        let path = self.log.join(format!("{name}.{command}.stdin"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn env(&self, name: &str, command: &str) -> Vec<String> {
        std::fs::read_to_string(self.log.join(format!("{name}.{command}.env")))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn cache_file(&self) -> PathBuf {
        self.rt.cache_dir.join("results").join("testnet-ctr1-eth0")
    }
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "ctr1".into(),
        netns_path: "/run/netns/fibt-fake".into(),
        ifname: "eth0".into(),
        pod_namespace: "shop".into(),
        pod_name: "web-0".into(),
        pod_uid: "1234-abcd".into(),
    }
}

fn result_of(plugin: &str) -> Value {
    json!({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24"}], "by": plugin})
}

// ---- load_network -------------------------------------------------------------------

#[test]
fn an_empty_or_missing_conf_dir_has_no_config() {
    let f = Fixture::new();
    let err = f.rt.load_network().unwrap_err();
    assert!(matches!(err, CniError::NoConfig { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("no network config found in {}", f.rt.conf_dir.display())
    );

    let missing = CniRuntime {
        conf_dir: f.rt.conf_dir.join("nope"),
        ..f.rt.clone()
    };
    assert!(matches!(
        missing.load_network(),
        Err(CniError::NoConfig { .. })
    ));

    f.conf("README.txt", "not a config");
    assert!(matches!(
        f.rt.load_network(),
        Err(CniError::NoConfig { .. })
    ));
}

#[test]
fn first_file_by_name_wins_and_a_conf_is_wrapped_into_a_list() {
    let f = Fixture::new();
    f.conf(
        "20-b.conflist",
        r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    );
    f.conf(
        "10-a.conf",
        r#"{"cniVersion":"0.4.0","name":"a","type":"ptp","ipam":{"type":"host-local"}}"#,
    );
    let net = f.rt.load_network().unwrap();
    assert_eq!(net.name, "a");
    assert_eq!(net.cni_version_str, "0.4.0");
    assert_eq!(net.plugins.len(), 1);
    assert_eq!(net.plugins[0].plugin_type, "ptp");
    assert_eq!(net.plugins[0].raw["ipam"]["type"], "host-local");
    assert!(net.path.ends_with("10-a.conf"));

    std::fs::remove_file(f.rt.conf_dir.join("10-a.conf")).unwrap();
    let net = f.rt.load_network().unwrap();
    assert_eq!(net.name, "b");
    let types: Vec<_> = net.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
    assert_eq!(types, ["bridge", "portmap"]);
}

#[test]
fn a_json_file_is_a_single_plugin_config() {
    let f = Fixture::new();
    f.conf(
        "50-x.json",
        r#"{"cniVersion":"1.0.0","name":"x","type":"macvlan"}"#,
    );
    let net = f.rt.load_network().unwrap();
    assert_eq!(net.plugins[0].plugin_type, "macvlan");
}

#[test]
fn invalid_files_are_skipped_for_the_next_valid_one() {
    let f = Fixture::new();
    f.conf("01-broken.conflist", "{ not json");
    f.conf(
        "02-empty.conflist",
        r#"{"cniVersion":"1.0.0","name":"e","plugins":[]}"#,
    );
    f.conf("03-notype.conf", r#"{"cniVersion":"1.0.0","name":"n"}"#);
    f.conf(
        "04-list-in-conf.conf",
        r#"{"cniVersion":"1.0.0","name":"l","plugins":[{"type":"bridge"}]}"#,
    );
    f.conf(
        "05-old.conflist",
        r#"{"cniVersion":"0.2.0","name":"o","plugins":[{"type":"bridge"}]}"#,
    );
    f.conf(
        "06-path.conflist",
        r#"{"cniVersion":"1.0.0","name":"p","plugins":[{"type":"../../bin/sh"}]}"#,
    );
    f.conf(
        "09-good.conflist",
        r#"{"cniVersion":"1.0.0","name":"good","plugins":[{"type":"bridge"}]}"#,
    );
    assert_eq!(f.rt.load_network().unwrap().name, "good");
}

#[test]
fn when_nothing_is_valid_every_problem_is_named() {
    let f = Fixture::new();
    f.conf("01-broken.conflist", "{ not json");
    f.conf(
        "02-noplugins.conflist",
        r#"{"cniVersion":"1.0.0","name":"e"}"#,
    );
    f.conf(
        "03-badtype.conflist",
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge"},{"x":1}]}"#,
    );
    let err = f.rt.load_network().unwrap_err();
    let CniError::NoValidConfig { problems, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(problems.len(), 3, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("01-broken.conflist: invalid JSON"), "{msg}");
    assert!(
        msg.contains("02-noplugins.conflist: plugins: missing"),
        "{msg}"
    );
    assert!(
        msg.contains("03-badtype.conflist: plugins[1].type: missing"),
        "{msg}"
    );
}

// ---- ADD / DEL / CHECK ----------------------------------------------------------------

#[tokio::test]
async fn add_runs_plugins_in_order_chaining_prev_result_and_caches_it() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1", "p2"]);
    f.ok_plugin("p1", &result_of("p1"));
    f.ok_plugin("p2", &result_of("p2"));

    let result = f.rt.add(&attachment()).await.unwrap();
    assert_eq!(result, result_of("p2"));
    assert_eq!(f.calls(), ["p1 ADD", "p2 ADD"]);

    let s1 = f.stdin("p1", "ADD");
    assert_eq!(s1["name"], "testnet");
    assert_eq!(s1["cniVersion"], "1.0.0");
    assert_eq!(s1["type"], "p1");
    assert_eq!(s1["opt"], "p1-opt");
    assert!(s1.get("prevResult").is_none(), "{s1}");
    assert_eq!(f.stdin("p2", "ADD")["prevResult"], result_of("p1"));

    let bin_path = format!("{}:{}", f.bin.display(), f.extra_bin.display());
    assert_eq!(
        f.env("p1", "ADD"),
        [
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID=1234-abcd".to_string(),
            "CNI_COMMAND=ADD".into(),
            "CNI_CONTAINERID=ctr1".into(),
            "CNI_IFNAME=eth0".into(),
            "CNI_NETNS=/run/netns/fibt-fake".into(),
            format!("CNI_PATH={bin_path}"),
        ]
    );

    let cached: Value =
        serde_json::from_str(&std::fs::read_to_string(f.cache_file()).unwrap()).unwrap();
    assert_eq!(cached["result"], result_of("p2"));
    assert_eq!(cached["containerId"], "ctr1");
}

#[tokio::test]
async fn plugins_are_found_in_later_bin_dirs() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.plugin_in(&f.extra_bin, "p1", "echo '{}'", ":", ":", ":");
    f.rt.add(&attachment()).await.unwrap();
    assert_eq!(f.calls(), ["p1 ADD"]);
}

#[tokio::test]
async fn del_runs_in_reverse_with_the_cached_result_and_is_idempotent() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1", "p2"]);
    f.ok_plugin("p1", &result_of("p1"));
    f.ok_plugin("p2", &result_of("p2"));
    f.rt.add(&attachment()).await.unwrap();
    f.clear_calls();

    f.rt.del(&attachment()).await.unwrap();
    assert_eq!(f.calls(), ["p2 DEL", "p1 DEL"]);
    assert_eq!(f.stdin("p2", "DEL")["prevResult"], result_of("p2"));
    assert_eq!(f.stdin("p1", "DEL")["prevResult"], result_of("p2"));
    assert!(f.env("p1", "DEL").contains(&"CNI_COMMAND=DEL".to_string()));
    assert!(!f.cache_file().exists());

    // Again: nothing cached, plugins still run (they must tolerate it), no error.
    f.clear_calls();
    f.rt.del(&attachment()).await.unwrap();
    assert_eq!(f.calls(), ["p2 DEL", "p1 DEL"]);
    assert!(f.stdin("p1", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn del_runs_every_plugin_and_reports_every_failure() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1", "p2"]);
    let fail = |code: u32| format!(r#"echo '{{"code":{code},"msg":"del {code}"}}'; exit 1"#);
    f.plugin("p1", "echo '{}'", &fail(11), ":", ":");
    f.plugin("p2", "echo '{}'", &fail(12), ":", ":");
    f.rt.add(&attachment()).await.unwrap();
    f.clear_calls();

    let err = f.rt.del(&attachment()).await.unwrap_err();
    assert_eq!(f.calls(), ["p2 DEL", "p1 DEL"]);
    let CniError::Del { errors } = &err else {
        panic!("{err:?}")
    };
    let codes: Vec<_> = errors.iter().filter_map(|e| e.plugin_code()).collect();
    assert_eq!(codes, [12, 11]);
    assert!(f.cache_file().exists(), "kept for a retry");
}

#[tokio::test]
async fn check_passes_the_cached_result_and_needs_one() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1", "p2"]);
    f.ok_plugin("p1", &result_of("p1"));
    f.ok_plugin("p2", &result_of("p2"));

    let err = f.rt.check(&attachment()).await.unwrap_err();
    assert!(matches!(err, CniError::NoCachedResult { .. }), "{err:?}");

    f.rt.add(&attachment()).await.unwrap();
    f.clear_calls();
    f.rt.check(&attachment()).await.unwrap();
    assert_eq!(f.calls(), ["p1 CHECK", "p2 CHECK"]);
    assert_eq!(f.stdin("p1", "CHECK")["prevResult"], result_of("p2"));
}

#[tokio::test]
async fn check_is_refused_before_spec_0_4_0() {
    let f = Fixture::new();
    f.conflist("0.3.1", &["p1"]);
    f.ok_plugin("p1", &result_of("p1"));
    let err = f.rt.check(&attachment()).await.unwrap_err();
    assert!(matches!(err, CniError::Unsupported { .. }), "{err:?}");
    assert!(f.calls().is_empty());
}

// ---- failures ---------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_binary_names_the_type_and_the_dirs_searched() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["nope"]);
    let err = f.rt.add(&attachment()).await.unwrap_err();
    let CniError::MissingPlugin { plugin_type, dirs } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(plugin_type, "nope");
    assert_eq!(dirs, &f.rt.bin_dirs);
    assert_eq!(
        err.to_string(),
        format!(
            "plugin nope not found in {}, {}",
            f.bin.display(),
            f.extra_bin.display()
        )
    );
}

#[tokio::test]
async fn a_plugin_error_is_surfaced_with_code_and_message_and_add_is_undone() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1", "p2"]);
    f.ok_plugin("p1", &result_of("p1"));
    f.plugin(
        "p2",
        r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid bridge name","details":"too long"}'; exit 1"#,
        ":",
        ":",
        ":",
    );

    let err = f.rt.add(&attachment()).await.unwrap_err();
    let CniError::Plugin {
        plugin_type,
        code,
        msg,
        details,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (plugin_type.as_str(), *code, msg.as_str(), details.as_str()),
        ("p2", 7, "invalid bridge name", "too long")
    );
    assert_eq!(
        err.to_string(),
        "plugin p2 failed (code 7): invalid bridge name: too long"
    );
    // containerd's rollback: DEL for the whole list, in reverse.
    assert_eq!(f.calls(), ["p1 ADD", "p2 ADD", "p2 DEL", "p1 DEL"]);
    assert!(!f.cache_file().exists());
}

#[tokio::test]
async fn a_failed_rollback_is_reported_with_the_add_error() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.plugin(
        "p1",
        r#"echo '{"code":11,"msg":"no addresses"}'; exit 1"#,
        r#"echo '{"code":5,"msg":"stuck"}'; exit 1"#,
        ":",
        ":",
    );
    let err = f.rt.add(&attachment()).await.unwrap_err();
    assert!(matches!(err, CniError::AddCleanup { .. }), "{err:?}");
    assert_eq!(err.plugin_code(), Some(11));
    let msg = err.to_string();
    assert!(
        msg.starts_with("plugin p1 failed (code 11): no addresses"),
        "{msg}"
    );
    assert!(msg.contains("plugin p1 failed (code 5): stuck"), "{msg}");
}

#[tokio::test]
async fn a_crash_without_a_cni_error_keeps_the_output() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.plugin("p1", "echo 'segfault-ish' >&2; exit 139", ":", ":", ":");
    let err = f.rt.add(&attachment()).await.unwrap_err();
    let CniError::PluginCrashed { output, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(output.contains("segfault-ish"), "{err}");
}

#[tokio::test]
async fn a_non_json_result_is_an_error() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.plugin("p1", "echo 'not json'", ":", ":", ":");
    let err = f.rt.add(&attachment()).await.unwrap_err();
    assert!(matches!(err, CniError::BadResult { .. }), "{err:?}");
}

#[tokio::test]
async fn an_invalid_attachment_is_refused_before_any_plugin_runs() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.ok_plugin("p1", &result_of("p1"));
    let att = Attachment {
        container_id: "../../etc/passwd".into(),
        ..attachment()
    };
    let err = f.rt.add(&att).await.unwrap_err();
    assert!(
        matches!(
            err,
            CniError::InvalidAttachment {
                field: "container_id",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(f.calls().is_empty());
}

// ---- STATUS -----------------------------------------------------------------------------

#[tokio::test]
async fn status_asks_every_plugin_from_spec_1_1() {
    let f = Fixture::new();
    f.conflist("1.1.0", &["p1", "p2"]);
    f.ok_plugin("p1", &result_of("p1"));
    f.plugin(
        "p2",
        ":",
        ":",
        ":",
        r#"echo '{"code":50,"msg":"agent not ready"}'; exit 1"#,
    );
    let err = f.rt.status().await.unwrap_err();
    assert_eq!(f.calls(), ["p1 STATUS", "p2 STATUS"]);
    assert_eq!(
        err.to_string(),
        "plugin p2 failed (code 50): agent not ready"
    );
    let env = f.env("p1", "STATUS");
    assert!(env.contains(&"CNI_COMMAND=STATUS".to_string()), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("CNI_CONTAINERID")),
        "{env:?}"
    );
    assert_eq!(f.stdin("p1", "STATUS")["cniVersion"], "1.1.0");
}

#[tokio::test]
async fn status_is_skipped_before_spec_1_1() {
    let f = Fixture::new();
    f.conflist("1.0.0", &["p1"]);
    f.plugin("p1", ":", ":", ":", "exit 1");
    f.rt.status().await.unwrap();
    assert!(f.calls().is_empty());
}
