//! `fibril status`: what each node's fibril agent reports on its status socket.

use std::path::PathBuf;

use anyhow::Context as _;
use fibril_core::lab::LabName;
use fibril_lab::lab::LabRecord;

use crate::OutputFormat;

/// Where to find the agents: a lab's nodes, or one status socket given directly.
pub enum Target {
    Lab { name: LabName, node: Option<String> },
    Socket(PathBuf),
}

pub fn run(target: Target, format: OutputFormat) -> anyhow::Result<std::process::ExitCode> {
    // (who, status socket, state dir where a refusal is recorded)
    let sockets: Vec<(String, PathBuf, Option<PathBuf>)> = match target {
        Target::Socket(p) => vec![(p.display().to_string(), p, None)],
        Target::Lab { name, node } => {
            let record = LabRecord::require(&name)?;
            let layout = record.layout();
            if record.spec.cni != fibril_core::lab::CniMode::Fibril {
                anyhow::bail!(
                    "lab {name} runs --cni {}: there is no fibril agent to ask (start a lab with --cni fibril)",
                    record.spec.cni
                );
            }
            let nodes = match node {
                Some(n) => {
                    layout
                        .node_index(&n)
                        .with_context(|| format!("lab {name} has no node {n:?}"))?;
                    vec![n]
                }
                None => layout.node_names(),
            };
            nodes
                .into_iter()
                .map(|n| {
                    let dir = fibril_lab::fibril_cni::agent_state_dir(&layout, &n);
                    (n, fibril_agent::status_socket_path(&dir), Some(dir))
                })
                .collect()
        }
    };
    let mut all = Vec::new();
    let mut failed = false;
    for (who, socket, state_dir) in sockets {
        match fibril_agent::read_status(&socket) {
            Ok(s) => {
                failed |= !s.ready;
                all.push(Ok(s));
            }
            Err(e) => {
                failed = true;
                // A refusing agent exits (and is restarted to check again): its recorded
                // refusal says why there is no socket to ask.
                let refusal = state_dir.as_deref().and_then(fibril_agent::read_refusal);
                all.push(Err((who, e.to_string(), refusal)));
            }
        }
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let docs: Vec<serde_json::Value> = all
                .iter()
                .map(|r| match r {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err((who, e, refusal)) => {
                        let mut v = serde_json::json!({"node": who, "ready": false, "error": e});
                        if let Some(r) = refusal {
                            v["refusal"] = serde_json::to_value(r).unwrap_or_default();
                        }
                        v
                    }
                })
                .collect();
            let doc = if docs.len() == 1 {
                docs.into_iter().next().unwrap_or_default()
            } else {
                serde_json::Value::Array(docs)
            };
            if format == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_yaml::to_string(&doc)?);
            }
        }
        OutputFormat::Text | OutputFormat::Wide => {
            for (i, r) in all.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                match r {
                    Ok(s) => print!("{}", s.render()),
                    Err((who, e, None)) => println!("{who}: {e}"),
                    Err((who, _, Some(r))) => {
                        println!("{:<16}{who}", "Node:");
                        println!("{:<16}no (the agent is not running)", "Ready:");
                        println!("{:<16}at {}: {}", "Refused:", r.at, r.reason);
                    }
                }
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
