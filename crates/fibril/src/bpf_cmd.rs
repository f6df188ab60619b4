//! `fibril bpf …`: dumps of fibril's pinned BPF maps.

use anyhow::Context as _;

use fibril_core::lab::LabName;
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

pub async fn counters(
    name: &LabName,
    node: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<()> {
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
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&out)?),
        _ => {
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
            output::table(&rows);
        }
    }
    Ok(())
}
