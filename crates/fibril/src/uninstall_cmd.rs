//! `fibril uninstall --node N`: removes fibril from one node of a lab.
//!
//! The agent runs inside the `fibril` binary (as `lab component fibril-agent`), under the
//! lab's supervisor, so uninstalling is a lab operation: stop the agent for good (the
//! supervisor would restart it and it would put everything back), then let the agent's own
//! library remove what it created ([`fibril_agent::uninstall`]), then give the node's
//! cluster-pool block back.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fibril_agent::{UninstallError, UninstallOptions};
use fibril_core::agent_config::AgentConfig;
use fibril_core::lab::{CniMode, LabName};
use fibril_lab::lab::LabRecord;

use crate::OutputFormat;

/// How long the stopped agent may take to go away.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(
    name: &LabName,
    node: &str,
    force: bool,
    format: OutputFormat,
) -> anyhow::Result<std::process::ExitCode> {
    let record = LabRecord::require(name)?;
    let layout = record.layout();
    if record.spec.cni != CniMode::Fibril {
        bail!(
            "lab {name} runs --cni {}: fibril is not installed on its nodes",
            record.spec.cni
        );
    }
    layout
        .node_index(node)
        .with_context(|| format!("lab {name} has no node {node:?}"))?;
    let path = fibril_lab::fibril_cni::agent_config_path(&layout, node);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the agent config {}", path.display()))?;
    let config = AgentConfig::from_yaml(&text)
        .and_then(|c| c.validate())
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;

    // 1. Stop the agent and keep it stopped.
    let marker = fibril_lab::fibril_cni::agent_uninstall_marker(&layout, node);
    fibril_lab::lab::write_atomic(&marker, b"uninstalled by `fibril uninstall`\n")
        .with_context(|| format!("writing {}", marker.display()))?;
    let socket = fibril_agent::status_socket_path(&config.paths.state_dir);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&marker);
            bail!(
                "the fibril agent of {node} did not stop within {STOP_TIMEOUT:?} (is the lab's \
                 supervisor running? `fibril lab status --name {name}`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2. Remove what it created on the node.
    let netns = fibril_netlink::NetNs::open(node)
        .with_context(|| format!("opening the network namespace of {node}"))?;
    let result = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            fibril_agent::uninstall(&config, &netns, UninstallOptions { force })
        })
        .await?
    };
    let report = match result {
        Ok(r) => r,
        Err(e @ (UninstallError::LiveEndpoints { .. } | UninstallError::AgentRunning { .. })) => {
            // Nothing was removed: the agent goes back to work.
            let _ = std::fs::remove_file(&marker);
            return Err(anyhow::anyhow!(e).context(format!(
                "fibril was not uninstalled from {node}; its agent is started again"
            )));
        }
        Err(e) => return Err(e.into()),
    };

    // 3. The node's block goes back to the pool (cluster-pool mode).
    let mut released = Vec::new();
    if let fibril_core::agent_config::IpamSource::ClusterPool(_) = &config.ipam {
        let client = fibril_lab::lab::client(&layout)?;
        if let Some(blocks) = fibril_agent::pool::release(&client, &config.node_name)
            .await
            .context("giving the node's block back to the cluster pool")?
        {
            released.extend(blocks.iter().map(|b| b.to_string()));
        }
        fibril_agent::pool::forget_node(&client, &config.node_name)
            .await
            .with_context(|| format!("deleting FibrilNode/{node}"))?;
    }

    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let doc = serde_json::json!({
                "node": node,
                "removed": report.removed,
                "releasedBlocks": released,
            });
            if format == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_yaml::to_string(&doc)?);
            }
        }
        OutputFormat::Text | OutputFormat::Wide => {
            println!("fibril uninstalled from {node}:");
            for r in &report.removed {
                println!("  removed {r}");
            }
            for b in &released {
                println!("  gave block {b} back to the cluster pool");
            }
            println!(
                "the node's fibril agent stays stopped; `fibril lab down --name {name}` removes \
                 the lab"
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
