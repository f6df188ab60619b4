//! End-to-end: a real 3-node lab on fibril's own CNI (`--cni fibril`), driven through the
//! `fibril` CLI: the full pod-to-pod matrix over TCP, UDP and ICMP in native and tunnel
//! mode, the BPF programs attached and their counters moving, an agent SIGKILLed under load
//! with zero failed requests, and cluster-pool IPAM (each agent claims its own block).
//!
//! Privileged (root, netns, BPF): `#[ignore]`d for plain `cargo test`; CI runs them with
//! `--include-ignored`. Each lab has a unique `fibt…` name and is removed on drop.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{ensure_fibril_cni, ready, wait_for, Lab};

impl Lab {
    fn up_fibril(routing: &str) -> Lab {
        ensure_fibril_cni();
        Lab::up(3, &["--cni", "fibril", "--routing", routing])
    }

    fn exec_ok(&self, pod: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["lab", "exec", "-n", "demo", pod, "--"];
        args.extend_from_slice(cmd);
        let out = self.run(&args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Deploys `replicas` echo pods and returns them once all are Ready.
    fn echo_pods(&self, replicas: usize) -> Vec<Value> {
        let m = self.state_root.join("app.yaml");
        std::fs::write(&m, manifest(replicas)).unwrap();
        self.ok(&["lab", "apply", "-f", m.to_str().unwrap()]);
        wait_for("Ready echo pods", Duration::from_secs(90), || {
            let v = self.json(&["lab", "get", "pods", "-n", "demo", "-o", "json"]);
            let items = v["items"].as_array().cloned().unwrap_or_default();
            (items.len() == replicas && items.iter().all(ready)).then_some(items)
        })
    }

    /// Packets counted by the pod programs of every node (from and to pods).
    fn counted_packets(&self) -> u64 {
        let v = self.json(&["bpf", "counters", "-o", "json"]);
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| e["fromPodPackets"].as_u64().unwrap() + e["toPodPackets"].as_u64().unwrap())
            .sum()
    }
}

fn manifest(replicas: usize) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: demo
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      containers:
        - name: echo
          image: fibril/echo
          ports:
            - {{name: http, containerPort: 8080, protocol: TCP}}
            - {{name: udp-echo, containerPort: 9090, protocol: UDP}}
"#
    )
}

fn name_of(p: &Value) -> &str {
    p["metadata"]["name"].as_str().unwrap()
}

fn ip_of(p: &Value) -> &str {
    p["status"]["podIP"].as_str().unwrap()
}

fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap()
}

/// Every agent: ready, BPF host routing, the routing mode asked for, programs on the uplink
/// (and the tunnel device) and on every endpoint's veth.
fn check_agents(lab: &Lab, routing: &str, pods: &[Value]) {
    for i in 1..=3 {
        let node = lab.node(i);
        let st = lab.status(&node);
        assert_eq!(st["ready"], true, "{st}");
        assert_eq!(st["routingMode"], routing, "{st}");
        assert_eq!(st["hostRouting"]["mode"], "BPF", "{st}");
        assert!(st.get("degraded").is_none(), "{st}");
        assert_eq!(st["api"]["connected"], true, "{st}");
        let programs = st["programs"].as_array().unwrap();
        let hooks_of = |ifname: &str| -> Vec<String> {
            programs
                .iter()
                .find(|p| p["ifname"] == ifname)
                .map(|p| {
                    p["hooks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h.as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert!(
            hooks_of("eth0").iter().any(|h| h.contains("from-netdev")),
            "{st}"
        );
        if routing == "tunnel" {
            assert!(
                hooks_of("fibril_vxlan")
                    .iter()
                    .any(|h| h.contains("from-tunnel")),
                "{st}"
            );
        }
        // Every pod of the node has an endpoint: the test's and the lab's own (cluster DNS).
        let system = lab.json(&["lab", "get", "pods", "-n", "kube-system", "-o", "json"]);
        let system = system["items"].as_array().cloned().unwrap_or_default();
        let here: Vec<&Value> = pods
            .iter()
            .chain(&system)
            .filter(|p| node_of(p) == node)
            .collect();
        let endpoints = st["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), here.len(), "{st}");
        for e in endpoints {
            let veth = e["hostVeth"].as_str().unwrap();
            let hooks = hooks_of(veth);
            assert!(
                hooks.iter().any(|h| h.contains("from-pod"))
                    && hooks.iter().any(|h| h.contains("to-pod")),
                "{veth}: {st}"
            );
            assert!(
                here.iter().any(|p| ip_of(p) == e["ip"].as_str().unwrap()),
                "{e} is one of this node's pods"
            );
        }
        let peers = st["nodes"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "{st}");
        for p in peers {
            assert_eq!(p["programmed"], true, "{st}");
        }
    }
}

/// Every pod reaches every other pod over TCP, UDP and ICMP.
fn check_matrix(lab: &Lab, pods: &[Value]) {
    let mut failures = Vec::new();
    let (mut same, mut cross) = (0, 0);
    for src in pods {
        for dst in pods {
            if name_of(src) == name_of(dst) {
                continue;
            }
            if node_of(src) == node_of(dst) {
                same += 1;
            } else {
                cross += 1;
            }
            let (s, ip, want) = (name_of(src), ip_of(dst), name_of(dst));
            let what = format!("{s} ({}) -> {want} ({})", node_of(src), node_of(dst));
            let url = format!("http://{ip}:8080/hostname");
            match lab.exec_ok(s, &["curl", "-s", "--max-time", "5", &url]) {
                Ok(b) if b.trim() == want => {}
                other => failures.push(format!("TCP {what}: {other:?}")),
            }
            let udp = format!("printf hostname | nc -u -w2 {ip} 9090");
            match lab.exec_ok(s, &["sh", "-c", &udp]) {
                Ok(b) if b.trim() == want => {}
                other => failures.push(format!("UDP {what}: {other:?}")),
            }
            if let Err(e) = lab.exec_ok(s, &["ping", "-c1", "-W2", ip]) {
                failures.push(format!("ICMP {what}: {e}"));
            }
        }
    }
    assert!(same > 0 && cross > 0, "both same-node and cross-node pairs");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn pod_matrix(routing: &str) {
    let lab = Lab::up_fibril(routing);
    // The supervisor runs fibril's agent (not the bridge agent) on every node.
    let status = lab.json(&["lab", "status", "-o", "json"]);
    for i in 1..=3 {
        let id = format!("fibril-agent/{}", lab.node(i));
        let c = status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no component {id}: {status}"));
        assert_eq!(c["state"], "running", "{c}");
    }
    let pods = lab.echo_pods(6);
    for p in &pods {
        let ip: Ipv4Addr = ip_of(p).parse().unwrap();
        assert!(
            "10.244.0.0/16"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&ip),
            "{ip} is from fibril's IPAM"
        );
    }
    check_agents(&lab, routing, &pods);
    let before = lab.counted_packets();
    check_matrix(&lab, &pods);
    check_bulk_cross_node(&lab, routing, &pods);
    let after = lab.counted_packets();
    // 30 pairs × (TCP handshake + request + UDP + ICMP), each counted leaving one pod and
    // entering another.
    assert!(
        after >= before + 30 * 8,
        "the BPF counters saw the traffic: {before} -> {after}"
    );
}

fn pod_ns(lab: &Lab, pod: &Value) -> fibril_netlink::NetNs {
    let layout = fibril_core::lab::LabSpec {
        name: lab.name.parse().unwrap(),
        ..fibril_core::lab::LabSpec::default()
    }
    .layout();
    fibril_netlink::NetNs::open(&layout.pod_netns(pod["metadata"]["uid"].as_str().unwrap()))
        .unwrap()
}

/// Full-size segments across nodes: 1 MiB through the echo workload's raw TCP echo, and in
/// tunnel mode a pod MTU that leaves room for the VXLAN headers.
fn check_bulk_cross_node(lab: &Lab, routing: &str, pods: &[Value]) {
    let src = pods.iter().find(|p| node_of(p) == lab.node(1)).unwrap();
    let dst = pods.iter().find(|p| node_of(p) == lab.node(3)).unwrap();
    let ns = pod_ns(lab, src);
    let mtu = ns.link("eth0").unwrap().unwrap().mtu.unwrap();
    let uplink_mtu = fibril_netlink::NetNs::open(&lab.node(1))
        .unwrap()
        .link("eth0")
        .unwrap()
        .unwrap()
        .mtu
        .unwrap();
    match routing {
        "tunnel" => assert_eq!(mtu, uplink_mtu - 50, "pod MTU in tunnel mode"),
        _ => assert_eq!(mtu, uplink_mtu, "pod MTU in native mode"),
    }
    let ip: Ipv4Addr = ip_of(dst).parse().unwrap();
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("1 MiB echoed across nodes");
    writer.join().unwrap().unwrap();
    assert!(back == data, "the echoed bytes differ");
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn native_routing_pod_matrix_through_bpf() {
    pod_matrix("native");
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn tunnel_routing_pod_matrix_through_bpf() {
    pod_matrix("tunnel");
}

/// One HTTP request on a new connection from inside `netns`.
fn request(ns: &fibril_netlink::NetNs, ip: Ipv4Addr, want: &str) -> Result<(), String> {
    ns.run(|| -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(b"GET /hostname HTTP/1.0\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut body = String::new();
        s.read_to_string(&mut body)
            .map_err(|e| format!("read: {e}"))?;
        if body.trim_end().ends_with(want) {
            Ok(())
        } else {
            Err(format!("unexpected answer {body:?}"))
        }
    })
    .map_err(|e| e.to_string())?
}

#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn agent_sigkill_and_restart_loses_no_request() {
    let lab = Lab::up_fibril("native");
    let pods = lab.echo_pods(3);
    let client = pods.iter().find(|p| node_of(p) == lab.node(1)).unwrap();
    let server = pods.iter().find(|p| node_of(p) == lab.node(2)).unwrap();
    let client_ns = pod_ns(&lab, client);
    let server_ip: Ipv4Addr = ip_of(server).parse().unwrap();
    let want = name_of(server).to_string();

    // One established connection held across the restart, too: the echo workload treats
    // a connection whose first bytes are not HTTP as raw TCP echo.
    let mut held = client_ns
        .run(|| TcpStream::connect_timeout(&(server_ip, 8080).into(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = |s: &mut TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    };
    echo(&mut held, b"held-before");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, ns, want) = (stop.clone(), client_ns.clone(), want.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match request(&ns, server_ip, &want) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed, start.elapsed())
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let id = format!("fibril-agent/{}", lab.node(1));
    let pid_of = || lab.component(&id);
    let (pid, _) = pid_of().unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    std::thread::sleep(Duration::from_secs(2));
    wait_for(
        "the agent restarted and ready",
        Duration::from_secs(60),
        || {
            let (p, state) = pid_of()?;
            let st = lab.run(&["status", "--node", &lab.node(1), "-o", "json"]);
            let st: Value = serde_json::from_slice(&st.stdout).ok()?;
            (p != pid && state == "running" && st["ready"] == true).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, took) = load.join().unwrap();
    let rate = f64::from(ok) / took.as_secs_f64();
    eprintln!(
        "{ok} requests in {took:?} ({rate:.0}/s) across the agent's SIGKILL, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(rate >= 50.0, "{ok} requests in {took:?}: {rate:.0}/s");

    // The held connection still works, and the restarted agent re-adopted its endpoint.
    echo(&mut held, b"held-after");
    let st = lab.status(&lab.node(1));
    assert_eq!(st["hostRouting"]["mode"], "BPF", "{st}");
    let all = lab.json(&["lab", "get", "pods", "-A", "-o", "json"]);
    let on_node1 = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| node_of(p) == lab.node(1))
        .count();
    assert_eq!(st["endpoints"].as_array().unwrap().len(), on_node1, "{st}");
    assert_eq!(
        st["programs"].as_array().unwrap().len(),
        on_node1 + 1,
        "a veth per endpoint + the uplink: {st}"
    );
}

/// cluster-pool IPAM in a lab: the node IPAM controller stays out, each agent claims its own
/// block of the pool through the FibrilIPPool object and records it in its FibrilNode, pods
/// get addresses from their node's block, and they reach each other across nodes.
#[test]
#[ignore = "privileged: needs root, netns and BPF"]
fn cluster_pool_lab_gives_each_node_its_own_block_and_pods_reach_across() {
    ensure_fibril_cni();
    let pool: ipnet::Ipv4Net = "10.240.0.0/16".parse().unwrap();
    let lab = Lab::up(
        3,
        &[
            "--ipam",
            "cluster-pool",
            "--cluster-pool-cidr",
            "10.240.0.0/16",
            "--cluster-pool-mask",
            "26",
        ],
    );
    // No spec.podCIDR from a controller: the agents' claims are the only IPAM.
    let nodes = lab.json(&["lab", "get", "nodes", "-o", "json"]);
    for n in nodes["items"].as_array().unwrap() {
        assert!(n.pointer("/spec/podCIDR").is_none(), "{n}");
    }
    let fnodes = lab.json(&["lab", "get", "fibrilnodes", "-o", "json"]);
    let mut blocks = std::collections::BTreeMap::new();
    for f in fnodes["items"].as_array().unwrap() {
        let b: ipnet::Ipv4Net = f["spec"]["podCIDRs"][0].as_str().unwrap().parse().unwrap();
        assert_eq!(b.prefix_len(), 26, "{f}");
        assert!(pool.contains(&b), "{b} is a block of the pool");
        blocks.insert(f["metadata"]["name"].as_str().unwrap().to_string(), b);
    }
    assert_eq!(blocks.len(), 3, "one FibrilNode per node: {fnodes}");
    let distinct: std::collections::BTreeSet<_> = blocks.values().collect();
    assert_eq!(distinct.len(), 3, "distinct blocks: {blocks:?}");
    let pool_obj = lab.json(&["lab", "get", "fibrilippools", "default", "-o", "json"]);
    assert_eq!(pool_obj["spec"]["cidrs"][0], "10.240.0.0/16", "{pool_obj}");
    assert_eq!(
        pool_obj["status"]["blocks"].as_object().unwrap().len(),
        3,
        "{pool_obj}"
    );
    let table = lab.ok(&["lab", "get", "fibrilippools"]);
    assert!(
        table.contains("10.240.0.0/16") && table.contains("/26"),
        "{table}"
    );
    for i in 1..=3 {
        let node = lab.node(i);
        let st = lab.status(&node);
        assert_eq!(st["ipam"]["mode"], "cluster-pool", "{st}");
        assert_eq!(st["ipam"]["pool"][0], "10.240.0.0/16", "{st}");
        assert_eq!(
            st["ipam"]["nodeCidr"].as_str().unwrap(),
            blocks[&node].to_string(),
            "{st}"
        );
        assert_eq!(st["ipam"]["poolBlocks"]["held"], 3, "{st}");
        assert_eq!(st["ipam"]["poolBlocks"]["total"], 1024, "{st}");
        let text = lab.ok(&["status", "--node", &node]);
        assert!(
            text.contains(&format!(
                "cluster-pool, pool 10.240.0.0/16, node CIDR {}",
                blocks[&node]
            )),
            "{text}"
        );
    }
    // lab status shows the claimed blocks where spec.podCIDR would be.
    let status = lab.json(&["lab", "status", "-o", "json"]);
    for n in status["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        assert_eq!(
            n["podCidr"].as_str(),
            Some(blocks[name].to_string().as_str()),
            "{n}"
        );
    }
    let pods = lab.echo_pods(6);
    for p in &pods {
        let ip: Ipv4Addr = ip_of(p).parse().unwrap();
        let block = blocks[node_of(p)];
        assert!(
            block.contains(&ip),
            "{} has {ip}, outside its node's block {block}",
            name_of(p)
        );
    }
    check_agents(&lab, "native", &pods);
    check_matrix(&lab, &pods);
}
