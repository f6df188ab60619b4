//! Human-readable tables for `get` and `status`.

use kube::api::DynamicObject;
use serde_json::Value;

/// Print rows as left-aligned columns; the first row is the header.
pub fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `a,b` from a JSON array of strings.
fn join_strings(v: Option<&Value>) -> String {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_row(v: &Value, wide: bool) -> Vec<String> {
    let statuses = v
        .pointer("/status/containerStatuses")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let total = v
        .pointer("/spec/containers")
        .and_then(|c| c.as_array())
        .map(|c| c.len())
        .unwrap_or(0);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let waiting = statuses
        .iter()
        .find_map(|c| c.pointer("/state/waiting/reason").and_then(|r| r.as_str()));
    let status = if v.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating".to_string()
    } else if let Some(w) = waiting {
        w.to_string()
    } else {
        s(v, "/status/phase")
    };
    let mut row = vec![
        s(v, "/metadata/name"),
        format!("{ready}/{total}"),
        status,
        restarts.to_string(),
        s(v, "/status/podIP"),
        s(v, "/spec/nodeName"),
    ];
    if wide {
        row.push(s(v, "/status/message"));
    }
    row
}

fn ports(v: &Value) -> String {
    v.pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let np = p["nodePort"]
                        .as_i64()
                        .map(|n| format!(":{n}"))
                        .unwrap_or_default();
                    format!(
                        "{}{np}/{}",
                        p["port"],
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub fn print_objects(
    plural: &str,
    items: &[DynamicObject],
    with_namespace: bool,
    wide: bool,
) -> anyhow::Result<()> {
    let header: Vec<&str> = match plural {
        "pods" if wide => vec![
            "NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE", "MESSAGE",
        ],
        "pods" => vec!["NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE"],
        "services" => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
        "nodes" => vec!["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"],
        "deployments" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE"],
        "endpointslices" => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"],
        "events" => vec!["NAME", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "fibrilippools" => vec!["NAME", "CIDRS", "NODE-MASK", "BLOCKS-HELD"],
        "fibrilnodes" => vec!["NAME", "POD-CIDRS", "POOL"],
        _ => vec!["NAME", "CREATED"],
    };
    let mut rows = Vec::new();
    let mut h: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    if with_namespace {
        h.insert(0, "NAMESPACE".into());
    }
    rows.push(h);
    for item in items {
        let v = serde_json::to_value(item)?;
        let mut row = match plural {
            "pods" => pod_row(&v, wide),
            "services" => vec![
                s(&v, "/metadata/name"),
                s(&v, "/spec/type"),
                s(&v, "/spec/clusterIP"),
                v.pointer("/spec/externalIPs")
                    .and_then(|e| e.as_array())
                    .map(|e| {
                        e.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "<none>".into()),
                ports(&v),
            ],
            "nodes" => {
                let ready = v
                    .pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| {
                        if c["status"] == "True" {
                            "Ready"
                        } else {
                            "NotReady"
                        }
                    })
                    .unwrap_or("Unknown");
                let ip = v
                    .pointer("/status/addresses")
                    .and_then(|a| a.as_array())
                    .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("")
                    .to_string();
                vec![
                    s(&v, "/metadata/name"),
                    ready.into(),
                    ip,
                    s(&v, "/spec/podCIDR"),
                ]
            }
            "deployments" => vec![
                s(&v, "/metadata/name"),
                format!(
                    "{}/{}",
                    v.pointer("/status/readyReplicas")
                        .and_then(|r| r.as_i64())
                        .unwrap_or(0),
                    v.pointer("/spec/replicas")
                        .and_then(|r| r.as_i64())
                        .unwrap_or(1)
                ),
                s(&v, "/status/updatedReplicas"),
                s(&v, "/status/availableReplicas"),
            ],
            "endpointslices" => {
                let eps = v
                    .pointer("/endpoints")
                    .and_then(|e| e.as_array())
                    .map(|e| {
                        e.iter()
                            .map(|ep| {
                                let addr = ep["addresses"][0].as_str().unwrap_or("?");
                                let ready =
                                    ep.pointer("/conditions/ready") == Some(&Value::Bool(true));
                                if ready {
                                    addr.to_string()
                                } else {
                                    format!("{addr}(not ready)")
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let ps = v
                    .pointer("/ports")
                    .and_then(|p| p.as_array())
                    .map(|p| {
                        p.iter()
                            .map(|p| p["port"].to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                vec![s(&v, "/metadata/name"), s(&v, "/addressType"), ps, eps]
            }
            "events" => vec![
                s(&v, "/metadata/name"),
                s(&v, "/type"),
                s(&v, "/reason"),
                format!(
                    "{}/{}",
                    s(&v, "/involvedObject/kind").to_lowercase(),
                    s(&v, "/involvedObject/name")
                ),
                s(&v, "/message"),
            ],
            "fibrilippools" => vec![
                s(&v, "/metadata/name"),
                join_strings(v.pointer("/spec/cidrs")),
                format!("/{}", s(&v, "/spec/nodeMaskSize")),
                v.pointer("/status/blocks")
                    .and_then(|b| b.as_object())
                    .map_or(0, |b| b.len())
                    .to_string(),
            ],
            "fibrilnodes" => vec![
                s(&v, "/metadata/name"),
                join_strings(v.pointer("/spec/podCIDRs")),
                s(&v, "/spec/pool"),
            ],
            _ => vec![
                s(&v, "/metadata/name"),
                s(&v, "/metadata/creationTimestamp"),
            ],
        };
        if with_namespace {
            row.insert(0, s(&v, "/metadata/namespace"));
        }
        rows.push(row);
    }
    if rows.len() == 1 {
        println!("No resources found.");
    } else {
        table(&rows);
    }
    Ok(())
}
