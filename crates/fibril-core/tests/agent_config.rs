//! Agent config: parse errors name field and line; validation reports every problem at once,
//! each naming its field.

use fibril_core::agent_config::{
    AgentConfig, ConfigErrors, IpamConfig, IpamMode, IpamSource, Routing, RoutingMode,
    DEFAULT_SOCKET_PATH, DEFAULT_TUNNEL_PORT,
};
use fibril_core::ipam::{Candidate, NodeSubnet, RouteInfo};

const NATIVE: &str = "\
nodeName: lab-node-1
apiServer: https://172.18.0.2:6443
routingMode: native
nativeRoutingCidr: 10.244.0.0/16
ipam:
  mode: cluster-pool
  clusterPoolCidrs: [10.244.0.0/17, 10.244.128.0/17]
  nodeMaskSize: 24
  reservedCidrs: [192.168.50.0/24]
serviceCidr: 10.96.0.0/16
";

fn errors(yaml: &str) -> ConfigErrors {
    AgentConfig::from_yaml(yaml)
        .expect("parses")
        .validate()
        .expect_err("invalid")
}

#[test]
fn a_native_cluster_pool_config_is_valid() {
    let v = AgentConfig::from_yaml(NATIVE).unwrap().validate().unwrap();
    assert_eq!(v.node_name.as_str(), "lab-node-1");
    assert_eq!(v.api_server.as_deref(), Some("https://172.18.0.2:6443"));
    assert_eq!(v.routing.mode(), RoutingMode::Native);
    assert_eq!(
        v.native_routing_cidr().map(|c| c.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );
    let IpamSource::ClusterPool(pool) = &v.ipam else {
        panic!("cluster-pool expected")
    };
    assert_eq!(pool.mask(), 24);
    assert_eq!(pool.block_count(), 256);
    assert_eq!(v.service_cidr.to_string(), "10.96.0.0/16");
    assert_eq!(v.reserved[0].origin, "ipam.reservedCidrs[0]");
    assert!(!v.allow_degraded);
    assert_eq!(v.paths.socket_path.to_str(), Some(DEFAULT_SOCKET_PATH));
    assert_eq!(
        v.bpf_pin_dir().to_str(),
        Some("/sys/fs/bpf/fibril/lab-node-1")
    );
    // The node's overlap checks carry the configured Service and reserved ranges.
    let checks = v.overlap_check(
        vec![RouteInfo::new("0.0.0.0/0".parse().unwrap()).dev("eth0")],
        vec![NodeSubnet::new("172.18.0.10/16".parse().unwrap(), "eth0")],
    );
    assert!(checks
        .check(Candidate::block(
            "10.244.0.0/24".parse::<ipnet::IpNet>().unwrap()
        ))
        .is_empty());
    assert_eq!(
        checks.check(Candidate::block(
            "192.168.50.0/25".parse::<ipnet::IpNet>().unwrap()
        ))[0]
            .to_string(),
        "block 192.168.50.0/25 overlaps reserved range 192.168.50.0/24 (ipam.reservedCidrs[0])"
    );
}

#[test]
fn defaults_are_documented_values() {
    let c = AgentConfig::from_yaml(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\nipam: {clusterPoolCidrs: [10.244.0.0/16]}\n",
    )
    .unwrap();
    assert_eq!(
        c,
        AgentConfig {
            node_name: Some("n1".into()),
            service_cidr: Some("10.96.0.0/12".into()),
            ipam: IpamConfig {
                cluster_pool_cidrs: vec!["10.244.0.0/16".into()],
                ..IpamConfig::default()
            },
            ..AgentConfig::default()
        }
    );
    assert_eq!(c.routing_mode, RoutingMode::Tunnel);
    assert_eq!(c.ipam.mode, IpamMode::ClusterPool);
    assert_eq!(c.cni_conf_dir.to_str(), Some("/etc/cni/net.d"));
    assert_eq!(c.cni_bin_dir.to_str(), Some("/opt/cni/bin"));
    assert_eq!(c.state_dir.to_str(), Some("/var/lib/fibril"));
    assert_eq!(c.bpf_pin_root.to_str(), Some("/sys/fs/bpf/fibril"));
    let v = c.validate().unwrap();
    assert_eq!(
        v.routing,
        Routing::Tunnel {
            port: DEFAULT_TUNNEL_PORT
        }
    );
    assert_eq!(DEFAULT_TUNNEL_PORT, 8472);
    let IpamSource::ClusterPool(pool) = &v.ipam else {
        panic!()
    };
    assert_eq!(pool.mask(), 24);
}

#[test]
fn ipv6_pools_get_an_ipv6_default_mask() {
    let v = AgentConfig::from_yaml(
        "nodeName: n1\nserviceCidr: fd00:96::/108\nipam: {clusterPoolCidrs: ['fd00:244::/96']}\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    let IpamSource::ClusterPool(pool) = &v.ipam else {
        panic!()
    };
    assert_eq!(pool.mask(), 112);
}

#[test]
fn round_trips_through_yaml() {
    let c = AgentConfig::from_yaml(NATIVE).unwrap();
    let text = serde_yaml::to_string(&c).unwrap();
    assert_eq!(AgentConfig::from_yaml(&text).unwrap(), c);
}

#[test]
fn parse_errors_name_the_field_path_and_line() {
    let e =
        AgentConfig::from_yaml("nodeName: a\nipam:\n  mode: cluster-pool\n  nodeMaskSize: big\n")
            .unwrap_err();
    assert_eq!(e.fields(), ["ipam.nodeMaskSize"]);
    assert_eq!(
        e.to_string(),
        "ipam.nodeMaskSize: line 4 column 17: invalid type: string \"big\", expected u8"
    );

    let e = AgentConfig::from_yaml("nodeName: a\nipam:\n  clusterPoolCidr: [10.0.0.0/8]\n")
        .unwrap_err();
    assert_eq!(e.fields(), ["ipam.clusterPoolCidr"]);
    let msg = e.about("ipam.clusterPoolCidr")[0];
    assert!(
        msg.starts_with("line 3 column 3: unknown field `clusterPoolCidr`"),
        "{msg}"
    );
    assert!(msg.contains("clusterPoolCidrs"), "{msg}");

    let e = AgentConfig::from_yaml("routingMode: sideways\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "routingMode: line 1 column 14: unknown variant `sideways`, expected `native` or `tunnel`"
    );

    let e = AgentConfig::from_yaml("ipam: {mode: whatever}\n").unwrap_err();
    assert_eq!(e.fields(), ["ipam.mode"]);
    assert!(
        e.to_string().contains("`kubernetes` or `cluster-pool`"),
        "{e}"
    );

    let e = AgentConfig::from_yaml("tunnelPort: 70000\n").unwrap_err();
    assert_eq!(e.fields(), ["tunnelPort"]);

    let e = AgentConfig::from_yaml("- a\n").unwrap_err();
    assert_eq!(e.fields(), ["(document)"]);

    let e = AgentConfig::from_yaml("nodeName: [\n").unwrap_err();
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn an_empty_file_lists_every_required_field() {
    let e = errors("");
    assert_eq!(
        e.fields(),
        ["nodeName", "serviceCidr", "ipam.clusterPoolCidrs"]
    );
    assert!(e.about("ipam.clusterPoolCidrs")[0].contains("no default pool"));
}

#[test]
fn every_problem_is_reported_at_once_each_naming_its_field() {
    let e = errors(
        "\
nodeName: Lab_Node
apiServer: 172.18.0.2:6443
routingMode: native
nativeRoutingCidr: 10.244.0.0/17
tunnelPort: 8472
ipam:
  clusterPoolCidrs: [10.244.0.0/16, 10.300.0.0/16, 10.244.0.1/24]
  nodeMaskSize: 8
  reservedCidrs: [10.244.64.0/24, nope]
serviceCidr: 10.244.0.0/12
cniConfDir: etc/cni
stateDir: /var/lib/../fibril
socketPath: /run/fibril/agent.sock
",
    );
    let text = e.to_string();
    for field in [
        "nodeName",
        "apiServer",
        "serviceCidr",
        "ipam.reservedCidrs[1]",
        "tunnelPort",
        "ipam.clusterPoolCidrs[1]",
        "ipam.clusterPoolCidrs[2]",
        "ipam.nodeMaskSize",
        "cniConfDir",
        "stateDir",
    ] {
        assert!(e.fields().contains(&field), "{field} missing from:\n{text}");
    }
    // Every line is `field: message`.
    assert_eq!(text.lines().count(), e.errors.len());
    for (line, err) in text.lines().zip(&e.errors) {
        assert!(line.starts_with(&format!("{}: ", err.field)), "{line}");
    }
    assert!(e.about("serviceCidr")[0].contains("did you mean 10.240.0.0/12"));
    assert!(e.about("ipam.clusterPoolCidrs[2]")[0].contains("did you mean 10.244.0.0/24"));
    assert!(e.about("ipam.nodeMaskSize")[0].contains("/8 is outside pool 10.244.0.0/16"));
}

#[test]
fn native_routing_cidr_must_cover_every_pool() {
    let yaml = NATIVE.replace(
        "nativeRoutingCidr: 10.244.0.0/16",
        "nativeRoutingCidr: 10.244.0.0/17",
    );
    let e = errors(&yaml);
    assert_eq!(e.fields(), ["nativeRoutingCidr"]);
    assert_eq!(
        e.about("nativeRoutingCidr")[0],
        "10.244.0.0/17 does not cover pool 10.244.128.0/17 (ipam.clusterPoolCidrs[1]): traffic \
         of pods in it would be SNATed and bypass encryption and policy (seed 002). Make \
         nativeRoutingCidr cover every pool range"
    );
    let e = errors(&NATIVE.replace("nativeRoutingCidr: 10.244.0.0/16\n", ""));
    assert_eq!(e.fields(), ["nativeRoutingCidr"]);
    assert!(e.about("nativeRoutingCidr")[0].starts_with("required when routingMode is native"));
}

#[test]
fn pool_overlapping_service_or_reserved_names_both_ranges() {
    let yaml = NATIVE
        .replace(
            "reservedCidrs: [192.168.50.0/24]",
            "reservedCidrs: [192.168.50.0/24, 10.244.200.0/24]",
        )
        .replace("serviceCidr: 10.96.0.0/16", "serviceCidr: 10.244.96.0/20");
    let e = errors(&yaml);
    assert_eq!(
        e.to_string(),
        "ipam.clusterPoolCidrs[0]: pool 10.244.0.0/17 overlaps service CIDR 10.244.96.0/20 \
         (serviceCidr)\n\
         ipam.clusterPoolCidrs[1]: pool 10.244.128.0/17 overlaps reserved range \
         10.244.200.0/24 (ipam.reservedCidrs[1])"
    );
}

#[test]
fn settings_of_the_other_mode_are_refused_not_ignored() {
    let tunnel = "nodeName: n1\nserviceCidr: 10.96.0.0/12\nroutingMode: tunnel\n\
                  nativeRoutingCidr: 10.0.0.0/8\ntunnelPort: 0\n\
                  ipam: {mode: kubernetes, clusterPoolCidrs: [10.244.0.0/16], nodeMaskSize: 24}\n";
    let e = errors(tunnel);
    assert_eq!(
        e.fields(),
        [
            "nativeRoutingCidr",
            "tunnelPort",
            "ipam.clusterPoolCidrs",
            "ipam.nodeMaskSize"
        ]
    );
    assert!(e.about("tunnelPort")[0].contains("between 1 and 65535"));
    assert!(e.about("ipam.clusterPoolCidrs")[0].contains("node.spec.podCIDR"));

    let e = errors(&format!("{NATIVE}tunnelPort: 4789\n"));
    assert_eq!(e.fields(), ["tunnelPort"]);
    assert!(e.about("tunnelPort")[0].contains("only used when routingMode is tunnel"));
}

#[test]
fn kubernetes_mode_needs_no_pool() {
    let v = AgentConfig::from_yaml(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\nroutingMode: native\n\
         nativeRoutingCidr: 10.244.0.0/16\nipam: {mode: kubernetes}\nallowDegraded: true\n\
         tunnelPort: null\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    assert!(matches!(v.ipam, IpamSource::Kubernetes));
    assert!(v.allow_degraded);
}

#[test]
fn pools_must_not_overlap_or_mix_families() {
    let e = errors(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\n\
         ipam: {clusterPoolCidrs: [10.244.0.0/16, 10.244.128.0/17, 'fd00::/64']}\n",
    );
    assert_eq!(
        e.fields(),
        ["ipam.clusterPoolCidrs[1]", "ipam.clusterPoolCidrs[2]"]
    );
    assert!(e.about("ipam.clusterPoolCidrs[1]")[0]
        .contains("10.244.0.0/16 and 10.244.128.0/17 overlap"));
    assert!(e.about("ipam.clusterPoolCidrs[2]")[0].contains("mix IPv4 and IPv6"));
}

#[test]
fn mask_too_long_to_leave_a_pod_address() {
    let e = errors(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\nipam: {clusterPoolCidrs: [10.244.0.0/16], nodeMaskSize: 31}\n",
    );
    assert_eq!(e.fields(), ["ipam.nodeMaskSize"]);
    assert!(e.about("ipam.nodeMaskSize")[0].contains("between /16 and /30"));
    let e = errors(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\nipam: {clusterPoolCidrs: [10.244.0.0/25]}\n",
    );
    assert!(e.about("ipam.nodeMaskSize")[0].contains("(the default; set ipam.nodeMaskSize)"));
}

#[test]
fn socket_path_must_fit_sun_path() {
    let long = format!("/run/{}/agent.sock", "x".repeat(120));
    let e = errors(&format!("{NATIVE}socketPath: {long}\n"));
    assert_eq!(e.fields(), ["socketPath"]);
    assert!(e.about("socketPath")[0].contains("at most 107"));
}

#[test]
fn unparsable_pools_are_reported_once_each() {
    let e = errors(
        "nodeName: n1\nserviceCidr: 10.96.0.0/12\nipam: {clusterPoolCidrs: [nope, 10.0.0.1/8]}\n",
    );
    assert_eq!(
        e.fields(),
        ["ipam.clusterPoolCidrs[0]", "ipam.clusterPoolCidrs[1]"]
    );
}

#[test]
fn services_allowed_external_ip_ranges_are_typed_and_checked() {
    // Default: no range, so every externalIP is refused.
    let v = AgentConfig::from_yaml(NATIVE).unwrap().validate().unwrap();
    assert!(v.services.allowed_external_ips.is_empty());
    assert_eq!(v.services.proxy_name, None);

    let ok = format!(
        "{NATIVE}services:\n  allowedExternalIpCidrs: [198.51.100.0/25, 203.0.113.250/32]\n  proxyName: fibril\n"
    );
    let v = AgentConfig::from_yaml(&ok).unwrap().validate().unwrap();
    let ranges: Vec<String> = v
        .services
        .allowed_external_ips
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(ranges, ["198.51.100.0/25", "203.0.113.250/32"]);
    assert_eq!(v.services.proxy_name.as_deref(), Some("fibril"));

    let bad = format!(
        "{NATIVE}services:\n  allowedExternalIpCidrs: [198.51.100.5/24, 10.96.1.0/24, fd00::/64, nope]\n  proxyName: \"-x\"\n"
    );
    let e = errors(&bad);
    assert_eq!(
        e.fields(),
        [
            "services.allowedExternalIpCidrs[0]",
            "services.allowedExternalIpCidrs[1]",
            "services.allowedExternalIpCidrs[2]",
            "services.allowedExternalIpCidrs[3]",
            "services.proxyName",
        ],
        "{e}"
    );
    assert!(
        e.about("services.allowedExternalIpCidrs[0]")[0].contains("did you mean 198.51.100.0/24")
    );
    assert!(e.about("services.allowedExternalIpCidrs[1]")[0].contains("overlaps serviceCidr"));
    assert!(e.about("services.allowedExternalIpCidrs[2]")[0].contains("IPv6"));

    // A misspelt key is refused, naming it.
    let typo = format!("{NATIVE}services:\n  allowedExternalIPs: [198.51.100.0/25]\n");
    let e = AgentConfig::from_yaml(&typo).unwrap_err();
    assert!(e.to_string().contains("allowedExternalIPs"), "{e}");
}
