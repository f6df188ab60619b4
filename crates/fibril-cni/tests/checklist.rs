//! Black-box tests of the `fibril-cni` binary against a fake agent, one per row of
//! `shared/conformance/cni-spec-checklist.md` that a plugin can satisfy on its own. Rows about
//! interfaces, IPs and the datapath (ADD-01/04/05/07, DEL-01, CHK-02/03 on real state, GC-02)
//! are the agent's, and are tested there with real namespaces.

mod common;

use common::{conf, FakeAgent, Plugin, Reply, K8S_ARGS};
use fibril_core::cni_api::{code, CniOp, CniResponse};
use serde_json::{json, Value};

fn add_result(version: &str, agent: &FakeAgent) -> (Value, Plugin) {
    let plugin = Plugin::new("ADD", &conf(version, &agent.socket));
    let out = plugin.run().ok_json();
    (out, plugin)
}

// ---------------------------------------------------------------------------------------------
// A. Environment

#[test]
fn env_01_unknown_command_code_4() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("FOO", &conf("1.1.0", &agent.socket)).run();
    let msg = run.msg(code::INVALID_ENV);
    assert!(msg.contains("CNI_COMMAND") && msg.contains("FOO"), "{msg}");
    assert!(agent.requests().is_empty());
}

#[test]
fn env_01_every_spec_command_is_known() {
    let agent = FakeAgent::healthy();
    let mut gc = conf("1.1.0", &agent.socket);
    gc["cni.dev/valid-attachments"] = json!([]);
    for command in ["ADD", "DEL", "STATUS", "GC", "VERSION"] {
        let run = Plugin::new(command, &gc).run();
        assert_eq!(run.code, 0, "{command}: {run:#?}");
    }
}

#[test]
fn env_02_bad_container_id_code_4() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env("CNI_CONTAINERID", "-bad/id")
        .run();
    let msg = run.msg(code::INVALID_ENV);
    assert!(
        msg.contains("CNI_CONTAINERID") && msg.contains("-bad/id"),
        "{msg}"
    );
    assert!(agent.requests().is_empty());
}

#[test]
fn env_02_good_container_id_accepted() {
    let agent = FakeAgent::healthy();
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env("CNI_CONTAINERID", "abc_1.2-3")
        .run()
        .ok_json();
    let req = agent.only_request();
    let CniOp::Add(add) = req.op else {
        panic!("not an ADD")
    };
    assert_eq!(add.attachment.container_id.as_str(), "abc_1.2-3");
}

#[test]
fn env_03_add_needs_netns_del_does_not() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .unset("CNI_NETNS")
        .run();
    assert!(run.msg(code::INVALID_ENV).contains("CNI_NETNS"));
    Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .unset("CNI_NETNS")
        .run()
        .assert_silent_ok();
}

#[test]
fn env_04_long_ifname_code_4() {
    let agent = FakeAgent::healthy();
    for bad in ["averyveryverylongname", "..", "a/b", "a:b", "a b"] {
        let run = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
            .env("CNI_IFNAME", bad)
            .run();
        let msg = run.msg(code::INVALID_ENV);
        assert!(msg.contains("CNI_IFNAME") && msg.contains(bad), "{msg}");
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn env_05_cni_args_pod_identity_forwarded() {
    let agent = FakeAgent::healthy();
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env("CNI_ARGS", &format!("{K8S_ARGS};SOMETHING_ELSE=x"))
        .run()
        .ok_json();
    let raw = &agent.requests()[0];
    assert_eq!(
        raw["attachment"]["pod"],
        json!({"namespace": "default", "name": "web-0", "uid": "0c1d-uid",
               "infraContainerId": "ctr-1"})
    );
}

#[test]
fn env_05_no_cni_args_means_no_pod() {
    let agent = FakeAgent::healthy();
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .unset("CNI_ARGS")
        .run()
        .ok_json();
    assert!(agent.requests()[0]["attachment"].get("pod").is_none());
}

#[test]
fn env_05_unknown_args_without_ignore_unknown_code_4() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=BAR",
        )
        .run();
    let msg = run.msg(code::INVALID_ENV);
    assert!(msg.contains("CNI_ARGS") && msg.contains("FOO"), "{msg}");
}

#[test]
fn env_05_del_tolerates_bad_cni_args() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .env("CNI_ARGS", "FOO=BAR;garbage")
        .run();
    run.assert_silent_ok();
    assert!(run.stderr.contains("ignoring invalid CNI_ARGS"), "{run:#?}");
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn env_06_gc_without_cni_path_code_4() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/valid-attachments"] = json!([]);
    let run = Plugin::new("GC", &config).unset("CNI_PATH").run();
    assert!(run.msg(code::INVALID_ENV).contains("CNI_PATH"));
    // Optional for the other commands.
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .unset("CNI_PATH")
        .run()
        .ok_json();
}

#[test]
fn env_07_missing_vars_named_code_4() {
    let agent = FakeAgent::healthy();
    let required: [(&str, &[&str]); 4] = [
        ("ADD", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
        ("CHECK", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
        ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME"]),
        ("GC", &["CNI_PATH"]),
    ];
    for (command, vars) in required {
        for var in vars {
            let run = Plugin::new(command, &conf("1.1.0", &agent.socket))
                .unset(var)
                .run();
            let msg = run.msg(code::INVALID_ENV);
            assert!(msg.contains(var), "{command} without {var}: {msg}");
        }
        // All of them at once are all named.
        let mut plugin = Plugin::new(command, &conf("1.1.0", &agent.socket));
        for var in vars {
            plugin = plugin.unset(var);
        }
        let msg = plugin.run().msg(code::INVALID_ENV);
        for var in vars {
            assert!(msg.contains(var), "{command}: {msg}");
        }
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn env_07_status_and_version_need_only_the_command() {
    let agent = FakeAgent::healthy();
    let config = conf("1.1.0", &agent.socket).to_string();
    Plugin::bare("STATUS", config.as_bytes())
        .run()
        .assert_silent_ok();
    Plugin::bare("VERSION", config.as_bytes()).run().ok_json();
}

#[test]
fn env_09_own_netns_code_8() {
    let agent = FakeAgent::healthy();
    for command in ["ADD", "DEL"] {
        let run = Plugin::new(command, &conf("1.1.0", &agent.socket))
            .env("CNI_NETNS", "/proc/self/ns/net")
            .run();
        assert!(run
            .msg(code::INVALID_NETNS)
            .contains("own network namespace"));
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn env_09_override_allows_own_netns() {
    let agent = FakeAgent::healthy();
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_NETNS_OVERRIDE", "1")
        .run()
        .ok_json();
}

// ---------------------------------------------------------------------------------------------
// B. Errors

#[test]
fn err_01_exit_nonzero_on_failure_zero_on_success() {
    let agent = FakeAgent::failing(code::NOT_AVAILABLE, "pool exhausted");
    let run = Plugin::new("ADD", &conf("1.1.0", &agent.socket)).run();
    assert_eq!(run.code, 1);
    let healthy = FakeAgent::healthy();
    assert_eq!(
        Plugin::new("ADD", &conf("1.1.0", &healthy.socket))
            .run()
            .code,
        0
    );
}

#[test]
fn err_02_error_json_on_stdout() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("ADD", &conf("1.0.0", &agent.socket))
        .unset("CNI_IFNAME")
        .run();
    let reply = run.error(code::INVALID_ENV);
    assert_eq!(reply["cniVersion"], "1.0.0", "the version in use");
    assert_eq!(run.stdout.lines().count(), 1);
    let keys: Vec<_> = reply.as_object().unwrap().keys().cloned().collect();
    assert!(keys
        .iter()
        .all(|k| ["cniVersion", "code", "msg", "details"].contains(&k.as_str())));
}

#[test]
fn err_03_bad_json_code_6() {
    let agent = FakeAgent::healthy();
    for stdin in [
        &b"{not json"[..],
        b"",
        b"[]",
        br#"{"cniVersion":"1.x","name":"n","type":"t"}"#,
    ] {
        Plugin::new("ADD", &conf("1.1.0", &agent.socket))
            .stdin(stdin)
            .run()
            .error(code::DECODE_FAILURE);
    }
}

#[test]
fn err_03_unsupported_version_code_1() {
    let agent = FakeAgent::healthy();
    for version in ["9.9.9", "2.0.0", "0.3.1"] {
        let msg = Plugin::new("ADD", &conf(version, &agent.socket))
            .run()
            .msg(code::INCOMPATIBLE_VERSION);
        assert!(msg.contains(version) && msg.contains("1.1.0"), "{msg}");
    }
}

#[test]
fn err_03_missing_or_bad_name_code_7() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config.as_object_mut().unwrap().remove("name");
    let msg = Plugin::new("ADD", &config).run().msg(code::INVALID_CONFIG);
    assert!(msg.contains("name: missing"), "{msg}");
    config["name"] = json!("bad/name");
    Plugin::new("ADD", &config)
        .run()
        .error(code::INVALID_CONFIG);
}

#[test]
fn err_03_invalid_values_code_7_naming_the_field() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["mtu"] = json!(20);
    config["agentSocket"] = json!("relative.sock");
    let msg = Plugin::new("ADD", &config).run().msg(code::INVALID_CONFIG);
    assert!(msg.contains("mtu") && msg.contains("agentSocket"), "{msg}");
}

#[test]
fn err_03_unsupported_field_code_2_names_key_and_value() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["ipam"] = json!({"type": "host-local"});
    let msg = Plugin::new("ADD", &config)
        .run()
        .msg(code::UNSUPPORTED_FIELD);
    assert!(msg.contains("ipam") && msg.contains("host-local"), "{msg}");
    assert!(agent.requests().is_empty());
}

#[test]
fn err_03_agent_errors_passed_through() {
    let agent = FakeAgent::failing(code::NOT_AVAILABLE, "IP pool 10.0.1.0/24 is exhausted");
    let reply = Plugin::new("ADD", &conf("1.0.0", &agent.socket))
        .run()
        .error(code::NOT_AVAILABLE);
    assert_eq!(reply["msg"], "IP pool 10.0.1.0/24 is exhausted");
    assert_eq!(reply["details"], "from the fake agent");
    assert_eq!(reply["cniVersion"], "1.0.0");
}

#[test]
fn err_03_protocol_violation_code_100() {
    let agent = FakeAgent::start(|_| Reply::Raw(b"HTTP/1.1 400 Bad Request\r\n\r\n\n".to_vec()));
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .run()
        .error(code::PROTOCOL_MISMATCH);
    let agent = FakeAgent::start(|_| {
        let mut result = common::sample_result("/x");
        result.ips[0].interface = Some(7);
        Reply::Respond(CniResponse::Ok(Some(result)))
    });
    let msg = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .run()
        .msg(code::PROTOCOL_MISMATCH);
    assert!(msg.contains("interface"), "{msg}");
}

#[test]
fn err_05_logs_do_not_corrupt_stdout() {
    let agent = FakeAgent::healthy();
    let (_, _) = add_result("1.1.0", &agent);
    let plugin = Plugin::new("ADD", &conf("1.1.0", &agent.socket));
    let run = plugin.run();
    run.ok_json();
    assert!(
        run.stderr.contains("fibril-cni["),
        "logs on stderr: {run:#?}"
    );
    assert!(!run.stdout.contains("fibril-cni["));

    let log = agent.dir().join("cni.log");
    let mut config = conf("1.1.0", &agent.socket);
    config["logFile"] = json!(log);
    let run = Plugin::new("ADD", &config).run();
    run.ok_json();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ADD: container ctr-1 ifname eth0 pod default/web-0"),
        "{logged}"
    );
    assert!(logged.contains("ADD: ok"), "{logged}");
}

// ---------------------------------------------------------------------------------------------
// C. ADD

#[test]
fn add_02_result_on_stdout() {
    let agent = FakeAgent::healthy();
    let (out, plugin) = add_result("1.1.0", &agent);
    for key in ["cniVersion", "interfaces", "ips", "routes", "dns"] {
        assert!(out.get(key).is_some(), "{key} in {out}");
    }
    let ifaces = out["interfaces"].as_array().unwrap();
    let eth0 = ifaces.iter().position(|i| i["name"] == "eth0").unwrap();
    assert_eq!(ifaces[eth0]["sandbox"], plugin.netns_path().as_str());
    assert!(
        ifaces.iter().any(|i| i.get("sandbox").is_none()),
        "host veth"
    );
    assert_eq!(out["ips"][0]["address"], "10.0.1.5/24");
    assert_eq!(out["ips"][0]["interface"], eth0);

    let req = agent.only_request();
    assert_eq!(req.config["name"], "fibril", "config forwarded verbatim");
    let CniOp::Add(add) = req.op else {
        panic!("not an ADD")
    };
    assert_eq!(add.netns.display().to_string(), plugin.netns_path());
    assert_eq!(add.attachment.ifname.as_str(), "eth0");
}

#[test]
fn add_03_prev_result_forwarded_and_preserved() {
    let agent = FakeAgent::healthy();
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "02:aa:00:00:00:01"}],
        "ips": [{"address": "192.168.5.2/24", "gateway": "192.168.5.1", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16", "gw": "192.168.5.1"}],
        "dns": {}
    });
    let mut config = conf("1.0.0", &agent.socket);
    config["prevResult"] = prev.clone();
    let out = Plugin::new("ADD", &config).run().ok_json();
    let CniOp::Add(add) = agent.only_request().op else {
        panic!("not an ADD")
    };
    assert_eq!(add.prev_result.unwrap().interfaces[0].name, "cni0");
    assert_eq!(out["interfaces"][0], prev["interfaces"][0]);
    assert_eq!(out["ips"][0], prev["ips"][0]);
    assert_eq!(out["routes"][0], prev["routes"][0]);
}

#[test]
fn add_03_undecodable_prev_result_code_7() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.0.0", &agent.socket);
    config["prevResult"] = json!({"ips": [{"address": "not-an-ip"}]});
    let msg = Plugin::new("ADD", &config).run().msg(code::INVALID_CONFIG);
    assert!(msg.contains("prevResult"), "{msg}");
}

#[test]
fn add_06_result_version_matches_input() {
    let agent = FakeAgent::healthy();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let (out, _) = add_result(version, &agent);
        assert_eq!(out["cniVersion"], version);
        assert_eq!(
            agent
                .typed_requests()
                .last()
                .unwrap()
                .cni_version
                .to_string(),
            version
        );
    }
}

#[test]
fn add_06_result_converted_to_0_4_0_shape() {
    let agent = FakeAgent::healthy();
    let (v040, _) = add_result("0.4.0", &agent);
    assert_eq!(v040["ips"][0]["version"], "4");
    assert_eq!(v040["ips"][1]["version"], "6");
    assert!(v040["interfaces"][0].get("mtu").is_none(), "1.1 field");
    assert!(v040["routes"][0].get("mtu").is_none(), "1.1 field");
    let (v100, _) = add_result("1.0.0", &agent);
    assert!(v100["ips"][0].get("version").is_none());
    assert!(v100["interfaces"][0].get("mtu").is_none());
    let (v110, _) = add_result("1.1.0", &agent);
    assert_eq!(v110["interfaces"][0]["mtu"], 1500);
    assert_eq!(v110["routes"][0]["mtu"], 1450);
}

#[test]
fn add_agent_not_ready_code_50() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let msg = Plugin::new("ADD", &conf("1.1.0", &socket))
        .run()
        .msg(code::NOT_AVAILABLE);
    assert!(
        msg.starts_with("plugin not available: the fibril agent on this node is not ready ("),
        "{msg}"
    );
    assert!(msg.contains(&socket.display().to_string()), "{msg}");

    // A socket file nobody listens on (the agent died): refused, same answer.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    Plugin::new("ADD", &conf("1.1.0", &socket))
        .run()
        .error(code::NOT_AVAILABLE);
}

#[test]
fn add_netns_missing_code_3() {
    let agent = FakeAgent::healthy();
    let msg = Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .env("CNI_NETNS", "/run/netns/fibril-test-does-not-exist")
        .run()
        .msg(code::UNKNOWN_CONTAINER);
    assert!(msg.contains("fibril-test-does-not-exist"), "{msg}");
    assert!(agent.requests().is_empty());
}

#[test]
fn add_agent_timeout_code_11() {
    let agent = FakeAgent::start(|_| Reply::Hang);
    let mut config = conf("1.1.0", &agent.socket);
    config["agentTimeoutSeconds"] = json!(1);
    let started = std::time::Instant::now();
    let msg = Plugin::new("ADD", &config).run().msg(code::TRY_AGAIN_LATER);
    assert!(
        msg.contains("no answer from the fibril agent") && msg.contains("1s"),
        "{msg}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn add_agent_closes_without_answer_code_11() {
    let agent = FakeAgent::start(|_| Reply::Close);
    Plugin::new("ADD", &conf("1.1.0", &agent.socket))
        .run()
        .error(code::TRY_AGAIN_LATER);
}

// ---------------------------------------------------------------------------------------------
// D. DEL

fn del_request(agent: &FakeAgent, index: usize) -> fibril_core::cni_api::DelRequest {
    match agent.typed_requests().remove(index).op {
        CniOp::Del(d) => d,
        other => panic!("not a DEL: {other:?}"),
    }
}

#[test]
fn del_02_twice_both_succeed() {
    let agent = FakeAgent::healthy();
    let plugin = Plugin::new("DEL", &conf("1.1.0", &agent.socket));
    plugin.run().assert_silent_ok();
    plugin.run().assert_silent_ok();
    assert_eq!(agent.requests().len(), 2);
}

#[test]
fn del_02_unknown_container_succeeds() {
    // A strict agent that says "unknown container" still makes DEL succeed.
    let agent = FakeAgent::failing(code::UNKNOWN_CONTAINER, "no attachment ctr-1/eth0");
    Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .run()
        .assert_silent_ok();
}

#[test]
fn del_03_deleted_netns_forwards_none() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .env("CNI_NETNS", "/run/netns/fibril-test-gone")
        .run();
    run.assert_silent_ok();
    assert!(run.stderr.contains("is gone"), "{run:#?}");
    assert_eq!(del_request(&agent, 0).netns, None);
}

#[test]
fn del_03_agent_errors_are_not_swallowed() {
    let agent = FakeAgent::failing(code::TRY_AGAIN_LATER, "IPAM store busy");
    Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .run()
        .error(code::TRY_AGAIN_LATER);
}

#[test]
fn del_04_netns_unset_forwards_none() {
    let agent = FakeAgent::healthy();
    Plugin::new("DEL", &conf("1.1.0", &agent.socket))
        .unset("CNI_NETNS")
        .run()
        .assert_silent_ok();
    let del = del_request(&agent, 0);
    assert_eq!(del.netns, None);
    assert_eq!(del.attachment.container_id.as_str(), "ctr-1");
}

#[test]
fn del_04_existing_netns_forwarded() {
    let agent = FakeAgent::healthy();
    let plugin = Plugin::new("DEL", &conf("1.1.0", &agent.socket));
    plugin.run().assert_silent_ok();
    assert_eq!(
        del_request(&agent, 0).netns.unwrap().display().to_string(),
        plugin.netns_path()
    );
}

#[test]
fn del_05_with_and_without_prev_result() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    Plugin::new("DEL", &config).run().assert_silent_ok();
    config["prevResult"] = serde_json::to_value(common::sample_result("/x")).unwrap();
    Plugin::new("DEL", &config).run().assert_silent_ok();
    config["prevResult"] = json!({});
    Plugin::new("DEL", &config).run().assert_silent_ok();
    config["prevResult"] = json!({"ips": "garbage"});
    Plugin::new("DEL", &config).run().assert_silent_ok();
    let prevs: Vec<_> = (0..4).map(|i| del_request(&agent, i).prev_result).collect();
    assert_eq!(prevs[0], None);
    assert_eq!(
        prevs[1].as_ref().unwrap().ips[0].address.to_string(),
        "10.0.1.5/24"
    );
    assert_eq!(prevs[2], Some(Default::default()));
    assert_eq!(
        prevs[3], None,
        "undecodable prevResult dropped, DEL goes on"
    );
}

#[test]
fn del_07_stdout_empty() {
    let agent = FakeAgent::healthy();
    let run = Plugin::new("DEL", &conf("0.4.0", &agent.socket)).run();
    run.assert_silent_ok();
}

#[test]
fn del_agent_down_code_11() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let msg = Plugin::new("DEL", &conf("1.1.0", &socket))
        .run()
        .msg(code::TRY_AGAIN_LATER);
    assert!(
        msg.contains("not reachable") && msg.contains("try again later"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// E. CHECK

fn check_config(agent: &FakeAgent, netns: &str) -> Value {
    let mut config = conf("1.1.0", &agent.socket);
    config["prevResult"] = serde_json::to_value(common::sample_result(netns)).unwrap();
    config
}

#[test]
fn chk_01_prev_result_forwarded() {
    let agent = FakeAgent::healthy();
    let plugin = Plugin::new("CHECK", &json!({}));
    let netns = plugin.netns_path();
    let plugin = plugin.stdin(check_config(&agent, &netns).to_string());
    plugin.run().assert_silent_ok();
    let CniOp::Check(check) = agent.only_request().op else {
        panic!("not a CHECK")
    };
    assert_eq!(
        check.prev_result,
        common::sample_result(&plugin.netns_path())
    );
    assert_eq!(check.netns.display().to_string(), plugin.netns_path());
}

#[test]
fn chk_03_agent_finding_is_an_error() {
    let agent = FakeAgent::failing(code::INVALID_CONFIG, "eth0 has no address 10.0.1.5/24");
    let plugin = Plugin::new("CHECK", &check_config(&agent, "/x"));
    let msg = plugin.run().msg(code::INVALID_CONFIG);
    assert_eq!(msg, "eth0 has no address 10.0.1.5/24");
}

#[test]
fn chk_04_agent_down_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = conf("1.1.0", &dir.path().join("agent.sock"));
    config["prevResult"] = serde_json::to_value(common::sample_result("/x")).unwrap();
    Plugin::new("CHECK", &config)
        .run()
        .error(code::NOT_AVAILABLE);
}

#[test]
fn chk_06_check_right_after_add() {
    let agent = FakeAgent::healthy();
    let (result, plugin) = add_result("1.1.0", &agent);
    let mut config = conf("1.1.0", &agent.socket);
    config["prevResult"] = result;
    plugin
        .env("CNI_COMMAND", "CHECK")
        .stdin(config.to_string())
        .run()
        .assert_silent_ok();
}

#[test]
fn chk_08_missing_prev_result_code_7() {
    let agent = FakeAgent::healthy();
    let msg = Plugin::new("CHECK", &conf("1.1.0", &agent.socket))
        .run()
        .msg(code::INVALID_CONFIG);
    assert!(msg.contains("prevResult"), "{msg}");
    assert!(agent.requests().is_empty());
}

#[test]
fn chk_09_success_prints_nothing_and_old_version_code_1() {
    let agent = FakeAgent::healthy();
    let mut config = check_config(&agent, "/x");
    config["cniVersion"] = json!("0.4.0");
    Plugin::new("CHECK", &config).run().assert_silent_ok();
    config["cniVersion"] = json!("0.3.1");
    Plugin::new("CHECK", &config)
        .run()
        .error(code::INCOMPATIBLE_VERSION);
}

// ---------------------------------------------------------------------------------------------
// G. VERSION

#[test]
fn ver_01_only_command_needed() {
    let out = Plugin::bare("VERSION", br#"{"cniVersion":"1.0.0"}"#)
        .run()
        .ok_json();
    assert_eq!(out["cniVersion"], "1.0.0");
}

#[test]
fn ver_02_echo_and_supported_versions() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let stdin = json!({"cniVersion": version}).to_string();
        let out = Plugin::bare("VERSION", stdin.as_bytes()).run().ok_json();
        assert_eq!(out["cniVersion"], version);
        assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
    // Discovery never fails, whatever the runtime sent.
    let out = Plugin::bare("VERSION", b"").run().ok_json();
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn ver_03_unsupported_version_code_1() {
    let agent = FakeAgent::healthy();
    for command in ["ADD", "DEL", "CHECK", "STATUS"] {
        Plugin::new(command, &conf("2.0.0", &agent.socket))
            .run()
            .error(code::INCOMPATIBLE_VERSION);
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn ver_05_no_command_prints_about() {
    let run = Plugin::bare("VERSION", b"").unset("CNI_COMMAND").run();
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0"),
        "{run:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// H. STATUS

#[test]
fn sts_01_agent_ready_exit_0() {
    let agent = FakeAgent::healthy();
    Plugin::new("STATUS", &conf("1.1.0", &agent.socket))
        .run()
        .assert_silent_ok();
    let req = agent.only_request();
    assert_eq!(req.op, CniOp::Status);
    assert_eq!(agent.requests()[0]["command"], "STATUS");
}

#[test]
fn sts_01_agent_down_code_50() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let msg = Plugin::new("STATUS", &conf("1.1.0", &socket))
        .run()
        .msg(code::NOT_AVAILABLE);
    assert!(
        msg.starts_with("plugin not available: the fibril agent on this node is not ready"),
        "{msg}"
    );
}

#[test]
fn sts_01_agent_reports_51_passed_through() {
    let agent = FakeAgent::failing(code::LIMITED_CONNECTIVITY, "datapath programs detached");
    Plugin::new("STATUS", &conf("1.1.0", &agent.socket))
        .run()
        .error(code::LIMITED_CONNECTIVITY);
}

#[test]
fn sts_02_agent_not_ready_yet_code_50() {
    // The socket answers, but the agent has no IPAM block yet: ADD is refused the same way.
    let agent = FakeAgent::failing(
        code::NOT_AVAILABLE,
        "no pod CIDR allocated to this node yet",
    );
    for command in ["STATUS", "ADD"] {
        Plugin::new(command, &conf("1.1.0", &agent.socket))
            .run()
            .error(code::NOT_AVAILABLE);
    }
}

#[test]
fn sts_05_config_1_0_code_1() {
    let agent = FakeAgent::healthy();
    let msg = Plugin::new("STATUS", &conf("1.0.0", &agent.socket))
        .run()
        .msg(code::INCOMPATIBLE_VERSION);
    assert!(msg.contains("STATUS"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// I. GC

fn gc_request(agent: &FakeAgent) -> Vec<(String, String)> {
    match agent.only_request().op {
        CniOp::Gc(gc) => gc
            .valid_attachments
            .into_iter()
            .map(|k| (k.container_id.to_string(), k.ifname.to_string()))
            .collect(),
        other => panic!("not a GC: {other:?}"),
    }
}

#[test]
fn gc_01_valid_attachments_forwarded() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/valid-attachments"] =
        json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]);
    Plugin::new("GC", &config).run().assert_silent_ok();
    assert_eq!(
        gc_request(&agent),
        [("a".into(), "eth0".into()), ("b".into(), "net1".into())]
    );
}

#[test]
fn gc_01_falls_back_to_attachments_key() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    Plugin::new("GC", &config).run().assert_silent_ok();
    assert_eq!(gc_request(&agent), [("a".into(), "eth0".into())]);
}

#[test]
fn gc_01_both_keys_merged() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    config["cni.dev/attachments"] =
        json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "c", "ifname": "eth0"}]);
    Plugin::new("GC", &config).run().assert_silent_ok();
    assert_eq!(
        gc_request(&agent),
        [("a".into(), "eth0".into()), ("c".into(), "eth0".into())]
    );
}

#[test]
fn gc_01_missing_list_code_7() {
    let agent = FakeAgent::healthy();
    let msg = Plugin::new("GC", &conf("1.1.0", &agent.socket))
        .run()
        .msg(code::INVALID_CONFIG);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
    assert!(
        agent.requests().is_empty(),
        "never a GC that would drop everything"
    );
}

#[test]
fn gc_03_agent_errors_reported() {
    let agent = FakeAgent::failing(code::TRY_AGAIN_LATER, "2 of 3 stale attachments released");
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/valid-attachments"] = json!([]);
    Plugin::new("GC", &config)
        .run()
        .error(code::TRY_AGAIN_LATER);
}

#[test]
fn gc_05_stdout_empty_no_container_vars() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.1.0", &agent.socket);
    config["cni.dev/valid-attachments"] = json!([]);
    let run = Plugin::bare("GC", config.to_string().as_bytes())
        .env("CNI_PATH", "/opt/cni/bin")
        .run();
    run.assert_silent_ok();
    assert!(gc_request(&agent).is_empty());
}

#[test]
fn gc_06_config_1_0_code_1() {
    let agent = FakeAgent::healthy();
    let mut config = conf("1.0.0", &agent.socket);
    config["cni.dev/valid-attachments"] = json!([]);
    Plugin::new("GC", &config)
        .run()
        .error(code::INCOMPATIBLE_VERSION);
    assert!(agent.requests().is_empty());
}

#[test]
fn gc_agent_down_code_50() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = conf("1.1.0", &dir.path().join("agent.sock"));
    config["cni.dev/valid-attachments"] = json!([]);
    Plugin::new("GC", &config).run().error(code::NOT_AVAILABLE);
}

// ---------------------------------------------------------------------------------------------
// The protocol as the agent sees it

#[test]
fn protocol_request_is_one_json_line() {
    let agent = FakeAgent::healthy();
    add_result("1.1.0", &agent);
    let raw = &agent.requests()[0];
    assert_eq!(raw["protocol"], 1);
    assert_eq!(raw["command"], "ADD");
    assert_eq!(raw["cniVersion"], "1.1.0");
    assert_eq!(raw["attachment"]["containerID"], "ctr-1");
    assert_eq!(raw["attachment"]["ifname"], "eth0");
    assert_eq!(raw["config"]["type"], "fibril-cni");
}
