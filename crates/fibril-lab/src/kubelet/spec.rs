//! Pure translations of a pod spec into what the kubelet runs: the resolv.conf it
//! writes, each container's argv and environment, the sandbox's container id and the
//! log file paths. No I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use fibril_core::consts;
use fibril_core::lab::LabLayout;

/// The `PATH` containers see (a Debian image's default).
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CNI container id of a pod's sandbox: derived from the pod UID only, so a
/// restarted kubelet finds the same id for CNI DEL.
pub fn sandbox_id(pod_uid: &str) -> String {
    pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The resolv.conf kubelet writes for this pod, or `None` when the pod should see the
/// node's own (dnsPolicy `Default`, or a host-network pod without
/// `ClusterFirstWithHostNet`).
pub fn resolv_conf(layout: &LabLayout, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (mut nameservers, mut searches, mut options): DnsParts = match policy {
        "ClusterFirst" if !host_network => cluster_dns(layout, ns),
        "ClusterFirstWithHostNet" => cluster_dns(layout, ns),
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        _ => return None,
    };
    if let Some(cfg) = spec.dns_config.as_ref() {
        nameservers.extend(cfg.nameservers.iter().flatten().cloned());
        for s in cfg.searches.iter().flatten() {
            if !searches.contains(s) {
                searches.push(s.clone());
            }
        }
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.clone() else { continue };
            options.retain(|(n, _)| *n != name);
            options.push((name, o.value.clone()));
        }
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for n in nameservers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .into_iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n,
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    Some(out)
}

type DnsParts = (Vec<String>, Vec<String>, Vec<(String, Option<String>)>);

fn cluster_dns(layout: &LabLayout, ns: &str) -> DnsParts {
    let d = consts::CLUSTER_DOMAIN;
    (
        vec![layout.cluster_dns_ip().to_string()],
        vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()],
        vec![("ndots".into(), Some(consts::CLUSTER_DNS_NDOTS.to_string()))],
    )
}

/// What the kubelet knows when it builds a container's process.
#[derive(Clone, Debug)]
pub struct RunContext<'a> {
    pub fibril_exe: &'a Path,
    pub node_name: &'a str,
    pub node_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
}

/// Why a container cannot be turned into a process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "image {image:?} has no built-in workload in the lab; set command to run a host binary"
    )]
    NoEntrypoint { image: String },
    #[error("invalid containerPort {port} for protocol {protocol}")]
    BadPort { port: i32, protocol: String },
}

/// The argv a container runs (before `ip netns exec`): `command` + `args` run host
/// binaries; the built-in `fibril/echo` image runs the echo workload on the
/// container's ports, and `fibril/dns` the cluster DNS server with the container's
/// args. `$(VAR)` references are expanded from `env` as upstream does.
pub fn container_argv(
    pod: &Pod,
    c: &Container,
    ctx: &RunContext<'_>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, SpecError> {
    let expand = |s: &String| expand_vars(s, env);
    if let Some(cmd) = c.command.as_ref().filter(|c| !c.is_empty()) {
        return Ok(cmd
            .iter()
            .chain(c.args.iter().flatten())
            .map(expand)
            .collect());
    }
    let image = c.image.clone().unwrap_or_default();
    if image_base(&image) == consts::DNS_IMAGE {
        // The image's entrypoint, then the container's args, as a runtime would.
        let mut argv = workload_argv(ctx, "dns");
        argv.extend(c.args.iter().flatten().map(expand));
        return Ok(argv);
    }
    if image_base(&image) == consts::NETPOL_SERVER_IMAGE {
        // The image's entrypoint with the pod's identity and ports, then the container's
        // args, as a runtime would.
        let mut argv = workload_argv(ctx, "netpol-server");
        argv.extend(pod_args(pod));
        argv.extend(flag_args(port_flags(c, true)?));
        argv.extend(c.args.iter().flatten().map(expand));
        return Ok(argv);
    }
    if image_base(&image) != consts::ECHO_IMAGE {
        return Err(SpecError::NoEntrypoint { image });
    }
    let mut argv = workload_argv(ctx, "echo");
    argv.extend(pod_args(pod));
    argv.extend(["--node".into(), ctx.node_name.into()]);
    argv.extend(flag_args(echo_ports(c)?));
    Ok(argv)
}

/// `--pod-name N --pod-namespace NS`: who a built-in workload serves as.
fn pod_args(pod: &Pod) -> [String; 4] {
    [
        "--pod-name".into(),
        pod.metadata.name.clone().unwrap_or_default(),
        "--pod-namespace".into(),
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    ]
}

/// `[(flag, port)]` → `flag port ...`.
fn flag_args(flags: Vec<(&'static str, u16)>) -> impl Iterator<Item = String> {
    flags
        .into_iter()
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
}

/// `fibril lab workload <name>`: the entrypoint of a built-in image.
fn workload_argv(ctx: &RunContext<'_>, name: &str) -> Vec<String> {
    vec![
        ctx.fibril_exe.display().to_string(),
        "lab".into(),
        "workload".into(),
        name.into(),
    ]
}

/// The image name without tag or digest: `fibril/echo:1.0` → `fibril/echo`.
pub fn image_base(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Whether the container runs the built-in echo workload.
pub fn is_echo(c: &Container) -> bool {
    c.command.as_ref().is_none_or(|c| c.is_empty())
        && c.image.as_deref().map(image_base) == Some(consts::ECHO_IMAGE)
}

/// `(--tcp|--udp, port)` for every container port, in spec order.
fn echo_ports(c: &Container) -> Result<Vec<(&'static str, u16)>, SpecError> {
    port_flags(c, false)
}

/// `(--tcp|--udp|--sctp, port)` for every container port, in spec order; SCTP only when
/// the workload serves it.
fn port_flags(c: &Container, sctp: bool) -> Result<Vec<(&'static str, u16)>, SpecError> {
    let mut out = Vec::new();
    for p in c.ports.iter().flatten() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let bad = || SpecError::BadPort {
            port: p.container_port,
            protocol: protocol.to_string(),
        };
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        let flag = match protocol {
            "TCP" => "--tcp",
            "UDP" => "--udp",
            "SCTP" if sctp => "--sctp",
            _ => return Err(bad()),
        };
        out.push((flag, port));
    }
    Ok(out)
}

/// The TCP ports the echo workload should accept connections on (its implicit
/// readiness check).
pub fn echo_tcp_ports(c: &Container) -> Vec<u16> {
    echo_ports(c)
        .unwrap_or_default()
        .into_iter()
        .filter(|(f, _)| *f == "--tcp")
        .map(|(_, p)| p)
        .collect()
}

/// The container's environment: a clean base, then `env` in order with `$(VAR)`
/// expansion and the downward-API fields a lab pod can know.
pub fn container_env(pod: &Pod, c: &Container, ctx: &RunContext<'_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), CONTAINER_PATH.to_string());
    env.insert(
        "HOSTNAME".to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    env.insert("HOME".to_string(), "/root".to_string());
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand_vars(v, &env)),
            (None, Some(from)) => from
                .field_ref
                .as_ref()
                .and_then(|f| field_value(pod, &f.field_path, ctx)),
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            env.insert(e.name.clone(), v);
        }
    }
    env
}

fn field_value(pod: &Pod, path: &str, ctx: &RunContext<'_>) -> Option<String> {
    let m = &pod.metadata;
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => Some(ctx.node_name.to_string()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => Some(ctx.node_ip.to_string()),
        "status.podIP" => ctx.pod_ip.map(|ip| ip.to_string()),
        p => {
            let (map, key) = if let Some(k) = p.strip_prefix("metadata.labels['") {
                (m.labels.as_ref(), k)
            } else if let Some(k) = p.strip_prefix("metadata.annotations['") {
                (m.annotations.as_ref(), k)
            } else {
                return None;
            };
            map?.get(key.strip_suffix("']")?).cloned()
        }
    }
}

/// Upstream's `$(VAR)` expansion: known variables are replaced, `$$` escapes a `$`,
/// unknown references are left as written.
pub fn expand_vars(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let name = &inner[..j];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The kubelet's per-pod directory: `<node_kubelet_dir>/pods/<uid>/`.
pub fn pod_dir(layout: &LabLayout, node: &str, pod_uid: &str) -> PathBuf {
    layout.node_kubelet_dir(node).join("pods").join(pod_uid)
}

/// The log file of one container (stdout and stderr), as `/var/log/pods` would keep
/// it: `<node_kubelet_dir>/logs/<ns>_<pod>_<uid>/<container>.log`.
pub fn container_log_path(
    layout: &LabLayout,
    node: &str,
    pod_namespace: &str,
    pod_name: &str,
    pod_uid: &str,
    container: &str,
) -> PathBuf {
    layout
        .node_kubelet_dir(node)
        .join("logs")
        .join(format!("{pod_namespace}_{pod_name}_{pod_uid}"))
        .join(format!("{container}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodDNSConfig, PodDNSConfigOption,
        PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn layout() -> LabLayout {
        fibril_core::lab::LabSpec::default().layout()
    }

    fn pod(ns: &str, spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some(ns.into()),
                uid: Some("0f1e2d3c-aaaa-bbbb-cccc-123456789abc".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn ctx() -> RunContext<'static> {
        RunContext {
            fibril_exe: Path::new("/usr/bin/fibril"),
            node_name: "fibril-node-1",
            node_ip: "172.18.0.11".parse().unwrap(),
            pod_ip: Some("10.244.0.5".parse().unwrap()),
        }
    }

    #[test]
    fn resolv_conf_is_what_kubelet_writes() {
        let p = pod("shop", PodSpec::default());
        assert_eq!(
            resolv_conf(&layout(), &p).unwrap(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n"
        );
    }

    /// Seed 003's ndots fixture: the resolv.conf the lab kubelet writes for its pod has the
    /// ndots that `fibril doctor`'s dns-ndots finding reports, so the doctor warns about what
    /// the cluster really does.
    #[test]
    fn seed_003_ndots_matches_what_the_kubelet_writes() {
        let text =
            include_str!("../../../../tests/doctor/003-ndots-external-lookups/deployment.yaml");
        let d: k8s_openapi::api::apps::v1::Deployment = serde_yaml::from_str(text).unwrap();
        let template = d.spec.template;
        let p = Pod {
            metadata: ObjectMeta {
                namespace: d.metadata.namespace.clone(),
                ..template.metadata.unwrap_or_default()
            },
            spec: template.spec,
            status: None,
        };
        let resolv = resolv_conf(&layout(), &p).unwrap();
        let ndots = format!("ndots:{}", consts::CLUSTER_DNS_NDOTS);
        assert!(resolv.contains(&format!("options {ndots}\n")), "{resolv}");

        let inputs = fibril_core::doctor::Inputs {
            manifests: vec![fibril_core::doctor::TextInput::new("deployment.yaml", text)],
            ..Default::default()
        };
        let findings = fibril_core::doctor::diagnose(&inputs);
        let f = findings
            .iter()
            .find(|f| f.id == fibril_core::doctor::RuleId::DnsNdots)
            .expect("the dns-ndots finding");
        assert!(f.message.contains(&ndots), "{}", f.message);
    }

    #[test]
    fn resolv_conf_honours_dns_policy_and_config() {
        let mut spec = PodSpec {
            dns_policy: Some("Default".into()),
            ..Default::default()
        };
        assert_eq!(resolv_conf(&layout(), &pod("a", spec.clone())), None);
        spec.dns_policy = None;
        spec.host_network = Some(true);
        assert_eq!(resolv_conf(&layout(), &pod("a", spec.clone())), None);
        spec.dns_policy = Some("ClusterFirst".into());
        spec.host_network = None;
        spec.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["corp.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        });
        assert_eq!(
            resolv_conf(&layout(), &pod("a", spec.clone())).unwrap(),
            "search a.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.96.0.10\nnameserver 1.1.1.1\n\
             options ndots:2 edns0\n"
        );
        spec.dns_policy = Some("None".into());
        assert_eq!(
            resolv_conf(&layout(), &pod("a", spec)).unwrap(),
            "search corp.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn echo_image_runs_the_echo_workload_on_its_ports() {
        let c = Container {
            name: "echo".into(),
            image: Some("fibril/echo:latest".into()),
            ports: Some(vec![
                ContainerPort {
                    container_port: 8080,
                    name: Some("http".into()),
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 5353,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 9000,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let p = pod("default", PodSpec::default());
        let argv = container_argv(&p, &c, &ctx(), &BTreeMap::new()).unwrap();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/fibril lab workload echo --pod-name web-1 --pod-namespace default \
             --node fibril-node-1 --tcp 8080 --udp 5353 --tcp 9000"
        );
        assert!(is_echo(&c));
        assert_eq!(echo_tcp_ports(&c), vec![8080, 9000]);
    }

    #[test]
    fn dns_image_runs_the_dns_workload_with_its_args() {
        let c = Container {
            name: "dns".into(),
            image: Some("fibril/dns:latest".into()),
            args: Some(vec!["--api-socket".into(), "/run/x/api.sock".into()]),
            ..Default::default()
        };
        let p = pod("kube-system", PodSpec::default());
        let argv = container_argv(&p, &c, &ctx(), &BTreeMap::new()).unwrap();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/fibril lab workload dns --api-socket /run/x/api.sock"
        );
        assert!(!is_echo(&c));
    }

    #[test]
    fn netpol_server_image_serves_every_protocol_then_takes_its_args() {
        let port = |n, proto: &str| ContainerPort {
            container_port: n,
            protocol: Some(proto.into()),
            ..Default::default()
        };
        let mut c = Container {
            name: "cont-80-sctp".into(),
            image: Some("fibril/netpol-server".into()),
            ports: Some(vec![port(80, "SCTP"), port(81, "TCP"), port(82, "UDP")]),
            args: Some(vec!["--skip-unsupported-sctp".into()]),
            ..Default::default()
        };
        let p = pod("x", PodSpec::default());
        let argv = container_argv(&p, &c, &ctx(), &BTreeMap::new()).unwrap();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/fibril lab workload netpol-server --pod-name web-1 --pod-namespace x \
             --sctp 80 --tcp 81 --udp 82 --skip-unsupported-sctp"
        );
        assert!(!is_echo(&c));
        // The echo image still refuses SCTP.
        c.image = Some("fibril/echo".into());
        assert_eq!(
            container_argv(&p, &c, &ctx(), &BTreeMap::new()).unwrap_err(),
            SpecError::BadPort {
                port: 80,
                protocol: "SCTP".into()
            }
        );
    }

    #[test]
    fn command_and_args_run_host_binaries_with_expansion() {
        let c = Container {
            name: "c".into(),
            image: Some("busybox".into()),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(MSG) $$(MSG) $(NOPE) on $(NODE)".into()]),
            env: Some(vec![
                EnvVar {
                    name: "MSG".into(),
                    value: Some("hi".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "NODE".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "spec.nodeName".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar {
                    name: "APP".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let p = pod("default", PodSpec::default());
        let env = container_env(&p, &c, &ctx());
        assert_eq!(env["NODE"], "fibril-node-1");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["HOSTNAME"], "web-1");
        let argv = container_argv(&p, &c, &ctx(), &env).unwrap();
        assert_eq!(
            argv,
            vec!["sh", "-c", "echo hi $(MSG) $(NOPE) on fibril-node-1"]
        );
        assert!(!is_echo(&c));
    }

    #[test]
    fn unknown_image_without_command_is_an_error() {
        let c = Container {
            name: "c".into(),
            image: Some("nginx:1.27".into()),
            ..Default::default()
        };
        let p = pod("default", PodSpec::default());
        let err = container_argv(&p, &c, &ctx(), &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("nginx:1.27"), "{err}");
    }

    #[test]
    fn ids_and_paths_are_stable() {
        assert_eq!(
            sandbox_id("0F1E2D3C-aaaa-bbbb-cccc-123456789abc"),
            "0f1e2d3caaaabbbbcccc123456789abc"
        );
        assert_eq!(image_base("fibril/echo"), "fibril/echo");
        assert_eq!(
            image_base("reg:5000/fibril/echo:v1"),
            "reg:5000/fibril/echo"
        );
        assert_eq!(image_base("fibril/echo@sha256:abc"), "fibril/echo");
        let l = layout();
        let p = container_log_path(&l, "fibril-node-1", "default", "web-1", "u1", "c");
        assert!(
            p.ends_with("nodes/fibril-node-1/kubelet/logs/default_web-1_u1/c.log"),
            "{p:?}"
        );
    }
}
