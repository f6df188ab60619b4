//! `fibril lab …`: thin glue from parsed arguments to `fibril_lab` and the API server.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;

use fibril_core::lab::{LabName, LabSpec};
use fibril_core::manifest::KindInfo;
use fibril_lab::lab::{self, LabRecord, UpOutcome};

use crate::output;
use crate::{ComponentArg, OutputFormat, UpArgs};

pub async fn up(a: UpArgs) -> anyhow::Result<()> {
    let spec = LabSpec {
        name: a.lab.name,
        nodes: a.nodes,
        cni: a.cni,
        routing: a.routing,
        fabric_cidr: a.fabric_cidr,
        pod_cidr: a.pod_cidr,
        node_mask: a.node_mask,
        service_cidr: a.service_cidr,
        world_cidr: a.world_cidr,
        ipam: a.ipam,
        world_subnets: a.world_subnets,
    };
    let name = spec.name.clone();
    let exe = std::env::current_exe().context("locating the fibril binary")?;
    let started = std::time::Instant::now();
    let mut progress = |s: &str| {
        println!("[{:>5.1}s] {s}", started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    };
    match lab::up(spec, exe, Duration::from_secs(a.timeout_secs), &mut progress).await? {
        UpOutcome::Created => progress(&format!(
            "lab {name} is up. Try: fibril lab status --name {name}; fibril lab get nodes --name {name}"
        )),
        UpOutcome::AlreadyUp => progress(&format!("lab {name} was already up; nothing changed")),
    }
    Ok(())
}

pub fn down(name: &LabName) -> anyhow::Result<()> {
    let mut progress = |s: &str| println!("{s}");
    lab::down(name, &mut progress)?;
    println!("lab {name} removed");
    Ok(())
}

pub async fn status(name: &LabName, format: OutputFormat) -> anyhow::Result<()> {
    let st = lab::status(name).await?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&st)?),
        OutputFormat::Text | OutputFormat::Wide => {
            println!(
                "lab {}: {} nodes, cni {}, routing {}, ipam {}, pods {}, services {}",
                st.name,
                st.spec.nodes,
                st.spec.cni,
                st.spec.routing,
                st.spec.ipam,
                st.spec.pod_cidr,
                st.spec.service_cidr
            );
            if !st.spec.world_subnets.is_empty() {
                let w: Vec<String> = st
                    .spec
                    .world_subnets
                    .iter()
                    .map(|w| w.to_string())
                    .collect();
                println!("world subnets (routed in every node): {}", w.join(", "));
            }
            println!(
                "supervisor: {}",
                match (st.supervisor.running, st.supervisor.pid) {
                    (true, Some(p)) => format!("running (pid {p})"),
                    (_, Some(p)) => format!("NOT running (last pid {p})"),
                    _ => "NOT running".into(),
                }
            );
            println!(
                "API server: {} {} (socket {})",
                st.api_url,
                if st.api_reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                },
                st.api_socket.display()
            );
            let mut rows = vec![vec![
                "COMPONENT".to_string(),
                "NODE".into(),
                "STATE".into(),
                "PID".into(),
                "RESTARTS".into(),
                "LAST EXIT".into(),
            ]];
            for c in &st.components {
                rows.push(vec![
                    c.spec.id.clone(),
                    c.spec.node.clone().unwrap_or_else(|| "-".into()),
                    format!("{:?}", c.state).to_lowercase(),
                    c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    c.restarts.to_string(),
                    c.last_exit.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            output::table(&rows);
            let mut rows = vec![vec![
                "NODE".to_string(),
                "READY".into(),
                "INTERNAL-IP".into(),
                "POD-CIDR".into(),
            ]];
            for n in &st.nodes {
                rows.push(vec![
                    n.name.clone(),
                    n.ready.to_string(),
                    n.internal_ip.clone().unwrap_or_default(),
                    n.pod_cidr.clone().unwrap_or_default(),
                ]);
            }
            output::table(&rows);
            for n in &st.nodes {
                if let Some(r) = &n.agent_refusal {
                    println!("fibril agent on {} REFUSED to start: {r}", n.name);
                }
            }
            println!("pods: {}", st.pods);
        }
    }
    Ok(())
}

fn api_resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let info = fibril_core::manifest::kind_info(api_version, kind)
        .with_context(|| format!("the lab API server does not serve {api_version} {kind}"))?;
    Ok((resource_of(info), info.namespaced))
}

fn resource_of(info: &KindInfo) -> ApiResource {
    ApiResource {
        group: info.group.to_string(),
        version: info.version.to_string(),
        api_version: info.api_version.to_string(),
        kind: info.kind.to_string(),
        plural: info.plural.to_string(),
    }
}

/// Parse and strictly validate every document before touching the cluster: a bad
/// manifest is rejected whole, with the document and field path of every problem.
fn load_manifests(file: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let docs = fibril_core::manifest::parse_documents(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if let Err(e) = fibril_core::manifest::decode_strict(doc) {
            let what = format!(
                "{} {}",
                doc.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
                doc.pointer("/metadata/name")
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
            );
            problems.push(format!("  document {} ({what}): {e}", i + 1));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} rejected, nothing was applied:\n{}",
            file.display(),
            problems.join("\n")
        );
    }
    Ok(docs)
}

fn dynamic_api(
    client: &kube::Client,
    doc: &serde_json::Value,
    default_ns: &str,
) -> anyhow::Result<(Api<DynamicObject>, ApiResource, String)> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (ar, namespaced) = api_resource(api_version, kind)?;
    let name = doc
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let api = if namespaced {
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or(default_ns);
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    Ok((api, ar, name))
}

pub async fn apply(name: &LabName, file: &Path, namespace: &str) -> anyhow::Result<()> {
    let docs = load_manifests(file)?;
    let record = LabRecord::require(name)?;
    let client = lab::client(&record.layout())?;
    for doc in docs {
        let (api, ar, obj_name) = dynamic_api(&client, &doc, namespace)?;
        let existed = api.get_opt(&obj_name).await?.is_some();
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        api.patch(
            &obj_name,
            &PatchParams::apply("fibril").force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {obj_name}", ar.kind))?;
        println!(
            "{}/{obj_name} {}",
            ar.kind.to_lowercase(),
            if existed { "configured" } else { "created" }
        );
    }
    Ok(())
}

pub async fn delete(name: &LabName, file: &Path, namespace: &str) -> anyhow::Result<()> {
    let docs = load_manifests(file)?;
    let record = LabRecord::require(name)?;
    let client = lab::client(&record.layout())?;
    for doc in docs {
        let (api, ar, obj_name) = dynamic_api(&client, &doc, namespace)?;
        match api.delete(&obj_name, &DeleteParams::default()).await {
            Ok(_) => println!("{}/{obj_name} deleted", ar.kind.to_lowercase()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                println!("{}/{obj_name} not found", ar.kind.to_lowercase())
            }
            Err(e) => return Err(e).with_context(|| format!("deleting {} {obj_name}", ar.kind)),
        }
    }
    Ok(())
}

fn kind_alias(kind: &str) -> &str {
    match kind.to_lowercase().as_str() {
        "po" | "pod" | "pods" => "pods",
        "svc" | "service" | "services" => "services",
        "no" | "node" | "nodes" => "nodes",
        "ns" | "namespace" | "namespaces" => "namespaces",
        "ep" | "eps" | "endpointslice" | "endpointslices" => "endpointslices",
        "deploy" | "deployment" | "deployments" => "deployments",
        "netpol" | "networkpolicy" | "networkpolicies" => "networkpolicies",
        "ev" | "event" | "events" => "events",
        "fippool" | "fibrilippool" | "fibrilippools" => "fibrilippools",
        "fnode" | "fibrilnode" | "fibrilnodes" => "fibrilnodes",
        _ => "",
    }
}

pub async fn get(
    name: &LabName,
    kind: &str,
    obj: Option<&str>,
    namespace: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let plural = kind_alias(kind);
    let info = fibril_core::manifest::KINDS
        .iter()
        .find(|r| r.plural == plural)
        .with_context(|| {
            format!("unknown kind {kind:?}: expected pods, services, nodes, namespaces, endpointslices, deployments, networkpolicies, events, fibrilippools or fibrilnodes")
        })?;
    let ar = resource_of(info);
    let record = LabRecord::require(name)?;
    let client = lab::client(&record.layout())?;
    let api: Api<DynamicObject> = match (info.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client, ns, &ar),
        _ => Api::all_with(client, &ar),
    };
    let items = match obj {
        Some(o) => vec![api.get(o).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    match format {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = items
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            if obj.is_some() {
                println!("{}", serde_json::to_string_pretty(&v[0])?);
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "apiVersion": "v1", "kind": "List", "items": v
                    }))?
                );
            }
        }
        OutputFormat::Yaml => {
            for i in &items {
                println!("---\n{}", serde_yaml::to_string(i)?.trim_end());
            }
        }
        OutputFormat::Text | OutputFormat::Wide => {
            output::print_objects(
                plural,
                &items,
                namespace.is_none() && info.namespaced,
                format == OutputFormat::Wide,
            )?;
        }
    }
    Ok(())
}

pub enum ExecTarget {
    Pod { namespace: String, name: String },
    Node(String),
    World,
}

pub async fn exec(
    name: &LabName,
    target: ExecTarget,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    let netns = match target {
        ExecTarget::Node(n) => {
            if layout.node_index(&n).is_none() {
                bail!(
                    "lab {name} has no node {n:?}; its nodes are {:?}",
                    layout.node_names()
                );
            }
            layout.node_netns(layout.node_index(&n).unwrap_or(1))
        }
        ExecTarget::World => layout.world_netns(),
        ExecTarget::Pod {
            namespace,
            name: pod,
        } => {
            let client = lab::client(&layout)?;
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            let p = pods
                .get_opt(&pod)
                .await?
                .with_context(|| format!("pod {namespace}/{pod} not found"))?;
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let ns = layout.pod_netns(&uid);
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if !Path::new(fibril_core::consts::NETNS_RUN_DIR)
                .join(&ns)
                .exists()
            {
                bail!("pod {namespace}/{pod} has no network namespace yet (phase {phase})");
            }
            ns
        }
    };
    // `ip netns exec` also bind-mounts /etc/netns/<ns>/resolv.conf, as a pod sees it.
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(command)
        .status()
        .with_context(|| format!("running {command:?} in netns {netns}"))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

pub fn kubeconfig(name: &LabName) -> anyhow::Result<()> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    print!(
        "{}",
        fibril_apiserver::kubeconfig_yaml(&layout.api_url(), &format!("fibril-{name}"))
    );
    Ok(())
}

pub fn logs(name: &LabName, component: &str) -> anyhow::Result<()> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    let path = layout
        .log_dir()
        .join(format!("{}.log", component.replace('/', "_")));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no log for {component:?} at {}; components are listed by `fibril lab status`",
            path.display()
        )
    })?;
    print!("{text}");
    Ok(())
}

pub async fn supervise(name: &LabName) -> anyhow::Result<()> {
    let record = LabRecord::require(name)?;
    fibril_lab::supervisor::run(record).await
}

pub async fn component(
    kind: ComponentArg,
    name: &LabName,
    node: Option<String>,
) -> anyhow::Result<()> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    let node_of = |node: Option<String>| -> anyhow::Result<(String, std::net::Ipv4Addr)> {
        let n = node.context("--node is required for this component")?;
        let i = layout
            .node_index(&n)
            .with_context(|| format!("lab {name} has no node {n:?}"))?;
        Ok((n, layout.node_ip(i)))
    };
    match kind {
        ComponentArg::Apiserver => {
            fibril_apiserver::run(fibril_apiserver::ApiServerConfig {
                data_dir: layout.api_data_dir(),
                tcp_addr: Some(std::net::SocketAddr::from((
                    layout.cp_ip(),
                    fibril_core::consts::API_SERVER_PORT,
                ))),
                unix_socket: Some(layout.api_socket()),
                service_cidr: layout.spec.service_cidr,
                bookmark_interval: Duration::from_secs(5),
            })
            .await
        }
        ComponentArg::Controllers => {
            let client = fibril_apiserver::client_for_url(&layout.api_url())?;
            fibril_lab::controllers::run(client, layout).await
        }
        ComponentArg::Kubelet => {
            let (node_name, node_ip) = node_of(node)?;
            let client = fibril_apiserver::client_for_url(&layout.api_url())?;
            fibril_lab::kubelet::run(
                client,
                fibril_lab::kubelet::KubeletConfig {
                    layout: layout.clone(),
                    node_name,
                    node_ip,
                    fibril_exe: record.fibril_exe.clone(),
                },
            )
            .await
        }
        ComponentArg::BridgeAgent => {
            let (node_name, _) = node_of(node)?;
            let client = fibril_apiserver::client_for_url(&layout.api_url())?;
            fibril_lab::node_agent::run(client, layout, node_name).await
        }
        ComponentArg::FibrilAgent => {
            let (node_name, _) = node_of(node)?;
            let path = fibril_lab::fibril_cni::agent_config_path(&layout, &node_name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the agent config {}", path.display()))?;
            let config = fibril_core::agent_config::AgentConfig::from_yaml(&text)
                .and_then(|c| c.validate())
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
            fibril_agent::run(config).await
        }
    }
}
