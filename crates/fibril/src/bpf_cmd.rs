//! `fibril bpf …`: dumps of fibril's pinned BPF maps.

use anyhow::Context as _;

use fibril_core::lab::{LabLayout, LabName};
use fibril_core::services::ServiceEntry;
use fibril_lab::lab::LabRecord;

use crate::output;
use crate::OutputFormat;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeCounters {
    node: String,
    pin_dir: std::path::PathBuf,
    endpoints: Vec<EndpointRow>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointRow {
    ifindex: u32,
    ifname: Option<String>,
    from_pod_packets: u64,
    from_pod_bytes: u64,
    to_pod_packets: u64,
    to_pod_bytes: u64,
}

/// The lab's layout and the nodes asked for (one, or all).
fn lab_nodes(name: &LabName, node: Option<&str>) -> anyhow::Result<(LabLayout, Vec<String>)> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    let nodes: Vec<String> = match node {
        Some(n) => {
            layout
                .node_index(n)
                .with_context(|| format!("lab {name} has no node {n:?}"))?;
            vec![n.to_string()]
        }
        None => layout.node_names(),
    };
    Ok((layout, nodes))
}

pub async fn counters(
    name: &LabName,
    node: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let (layout, nodes) = lab_nodes(name, node)?;
    let mut out = Vec::new();
    for n in nodes {
        let pin_dir = layout.node_bpf_pin_dir(&n);
        let counters = fibril_bpf::read_endpoint_counters(&pin_dir)
            .with_context(|| format!("reading counters of {n} from {}", pin_dir.display()))?;
        let links = fibril_netlink::NetNs::open(&n)
            .and_then(|ns| ns.links())
            .unwrap_or_default();
        let endpoints = counters
            .into_iter()
            .map(|c| EndpointRow {
                ifindex: c.ifindex,
                ifname: links
                    .iter()
                    .find(|l| l.index == c.ifindex)
                    .map(|l| l.name.clone()),
                from_pod_packets: c.from_pod_packets,
                from_pod_bytes: c.from_pod_bytes,
                to_pod_packets: c.to_pod_packets,
                to_pod_bytes: c.to_pod_bytes,
            })
            .collect();
        out.push(NodeCounters {
            node: n,
            pin_dir,
            endpoints,
        });
    }
    print_data(&out, format, || {
        let mut rows = vec![vec![
            "NODE".to_string(),
            "IFINDEX".into(),
            "VETH".into(),
            "FROM-POD PKTS".into(),
            "FROM-POD BYTES".into(),
            "TO-POD PKTS".into(),
            "TO-POD BYTES".into(),
        ]];
        for n in &out {
            for e in &n.endpoints {
                rows.push(vec![
                    n.node.clone(),
                    e.ifindex.to_string(),
                    e.ifname.clone().unwrap_or_else(|| "(gone)".into()),
                    e.from_pod_packets.to_string(),
                    e.from_pod_bytes.to_string(),
                    e.to_pod_packets.to_string(),
                    e.to_pod_bytes.to_string(),
                ]);
            }
        }
        rows
    })
}

/// `out` as JSON or YAML, or the table `rows` makes.
fn print_data<T: serde::Serialize>(
    out: &T,
    format: OutputFormat,
    rows: impl FnOnce() -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(out)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(out)?),
        OutputFormat::Text | OutputFormat::Wide => output::table(&rows()),
    }
    Ok(())
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeServices {
    node: String,
    pin_dir: std::path::PathBuf,
    /// The service maps as a table: one entry per frontend and scope.
    entries: Vec<ServiceEntry>,
}

/// `fibril bpf services`: what each node's service maps hold.
pub fn services(name: &LabName, node: Option<&str>, format: OutputFormat) -> anyhow::Result<()> {
    let (layout, nodes) = lab_nodes(name, node)?;
    let mut out = Vec::new();
    for n in nodes {
        let pin_dir = layout.node_bpf_pin_dir(&n);
        let what = || {
            format!(
                "reading the service maps of {n} from {} (is the node's agent running with \
                 --cni fibril?)",
                pin_dir.display()
            )
        };
        let table = fibril_bpf::ServiceMaps::open(&pin_dir)
            .with_context(what)?
            .dump()
            .with_context(what)?;
        out.push(NodeServices {
            node: n,
            pin_dir,
            entries: table.entries,
        });
    }
    print_data(&out, format, || {
        let mut rows = vec![vec![
            "NODE".to_string(),
            "SERVICE".into(),
            "PORT".into(),
            "KIND".into(),
            "SCOPE".into(),
            "FRONTEND".into(),
            "BACKENDS".into(),
            "AFFINITY".into(),
        ]];
        for n in &out {
            for e in &n.entries {
                let backends = if e.backends.is_empty() {
                    "(none: rejects)".to_string()
                } else {
                    e.backends
                        .iter()
                        .map(|b| {
                            let mut s = format!("{}:{}", b.ip, b.port);
                            if b.local {
                                s.push_str("(local)");
                            }
                            if b.terminating {
                                s.push_str("(terminating)");
                            }
                            s
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                };
                rows.push(vec![
                    n.node.clone(),
                    e.service.to_string(),
                    if e.port_name.is_empty() {
                        "-".into()
                    } else {
                        e.port_name.clone()
                    },
                    format!("{:?}", e.kind),
                    format!("{:?}", e.scope),
                    e.frontend.to_string(),
                    backends,
                    e.affinity_timeout_secs
                        .map(|t| format!("ClientIP {t}s"))
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        rows
    })
}
