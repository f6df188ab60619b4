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
    let sockets: Vec<(String, PathBuf)> = match target {
        Target::Socket(p) => vec![(p.display().to_string(), p)],
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
                    (n, fibril_agent::status_socket_path(&dir))
                })
                .collect()
        }
    };
    let mut all = Vec::new();
    let mut failed = false;
    for (who, socket) in sockets {
        match fibril_agent::read_status(&socket) {
            Ok(s) => {
                failed |= !s.ready;
                all.push(Ok(s));
            }
            Err(e) => {
                failed = true;
                all.push(Err((who, e.to_string())));
            }
        }
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let docs: Vec<serde_json::Value> = all
                .iter()
                .map(|r| match r {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err((who, e)) => serde_json::json!({"node": who, "error": e}),
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
                    Err((who, e)) => println!("{who}: {e}"),
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
