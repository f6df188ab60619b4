//! The lab's side of `--cni fibril`: each node's agent configuration file, its state dir,
//! and the `fibril-cni` plugin installed in the node's CNI bin dir (as a DaemonSet's init
//! container would). The agent itself is `fibril_agent`, run by the supervisor.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fibril_core::agent_config::{AgentConfig, IpamConfig, IpamMode, ServicesConfig};
use fibril_core::consts;
use fibril_core::lab::{LabLayout, RoutingMode};

use crate::lab::write_atomic;

/// The plugin binary's name; it must sit next to the `fibril` binary.
pub const FIBRIL_CNI_BIN: &str = "fibril-cni";

/// The node agent's state dir (IPAM allocations, endpoint records, status socket).
pub fn agent_state_dir(layout: &LabLayout, node: &str) -> PathBuf {
    layout.node_dir(node).join("agent")
}

/// The node agent's configuration file.
pub fn agent_config_path(layout: &LabLayout, node: &str) -> PathBuf {
    layout.node_dir(node).join("agent.yaml")
}

/// While this file exists the supervisor keeps the node's fibril agent stopped: written by
/// `fibril uninstall --node N` before it removes fibril from the node.
pub fn agent_uninstall_marker(layout: &LabLayout, node: &str) -> PathBuf {
    layout.node_dir(node).join("fibril-agent.uninstalled")
}

/// The `fibril-cni` binary shipped with `fibril_exe`.
pub fn fibril_cni_exe(fibril_exe: &Path) -> PathBuf {
    fibril_exe
        .parent()
        .unwrap_or(Path::new("."))
        .join(FIBRIL_CNI_BIN)
}

/// The agent configuration of a lab node: the lab's IPAM mode (kubernetes: the lab's node
/// IPAM controller assigns `spec.podCIDR`; cluster-pool: the agent claims a block of the
/// lab's pod CIDR), the lab's routing mode, every path inside the node's dir, and
/// strict host routing (no `allowDegraded`): a lab that cannot run the BPF datapath says
/// so in the agent's log instead of quietly forwarding with iptables-era routing.
pub fn agent_config(layout: &LabLayout, node: &str) -> AgentConfig {
    let spec = &layout.spec;
    let state = agent_state_dir(layout, node);
    AgentConfig {
        node_name: Some(node.to_string()),
        api_server: Some(layout.api_url()),
        routing_mode: spec.routing,
        native_routing_cidr: (spec.routing == RoutingMode::Native)
            .then(|| spec.pod_cidr.to_string()),
        ipam: match spec.ipam {
            IpamMode::Kubernetes => IpamConfig {
                mode: IpamMode::Kubernetes,
                ..IpamConfig::default()
            },
            IpamMode::ClusterPool => IpamConfig {
                mode: IpamMode::ClusterPool,
                cluster_pool_cidrs: vec![spec.pod_cidr.to_string()],
                node_mask_size: Some(spec.node_mask),
                reserved_cidrs: Vec::new(),
            },
        },
        service_cidr: Some(spec.service_cidr.to_string()),
        allow_degraded: false,
        tunnel_port: None,
        cni_conf_dir: layout.node_cni_conf_dir(node),
        cni_bin_dir: layout.node_cni_bin_dir(node),
        socket_path: state.join("agent.sock"),
        state_dir: state,
        bpf_pin_root: consts::BPF_PIN_ROOT.into(),
        services: ServicesConfig {
            allowed_external_ip_cidrs: vec![layout.external_ip_cidr().to_string()],
            proxy_name: None,
        },
    }
}

/// Writes every node's agent config and installs `fibril-cni` into its CNI bin dir.
pub fn install(layout: &LabLayout, fibril_exe: &Path) -> anyhow::Result<()> {
    let plugin = fibril_cni_exe(fibril_exe);
    for node in layout.node_names() {
        let cfg = agent_config(layout, &node);
        if let Err(e) = cfg.validate() {
            anyhow::bail!("the agent config of {node} is invalid:\n{e}");
        }
        let path = agent_config_path(layout, &node);
        write_atomic(&path, serde_yaml::to_string(&cfg)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        let bin = layout.node_cni_bin_dir(&node);
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        let dst = bin.join(FIBRIL_CNI_BIN);
        let tmp = bin.join(format!(".{FIBRIL_CNI_BIN}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        // A hard link where possible: a debug build of the plugin is tens of MB per node.
        if std::fs::hard_link(&plugin, &tmp).is_err() {
            std::fs::copy(&plugin, &tmp)
                .with_context(|| format!("copying {} to {}", plugin.display(), tmp.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("installing {}", dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::lab::{CniMode, LabSpec};

    #[test]
    fn node_configs_validate_in_both_modes() {
        for (routing, ipam) in [
            (RoutingMode::Native, IpamMode::Kubernetes),
            (RoutingMode::Tunnel, IpamMode::Kubernetes),
            (RoutingMode::Native, IpamMode::ClusterPool),
            (RoutingMode::Tunnel, IpamMode::ClusterPool),
        ] {
            let layout = LabSpec {
                cni: CniMode::Fibril,
                routing,
                ipam,
                ..LabSpec::default()
            }
            .layout();
            let cfg = agent_config(&layout, "fibril-node-1");
            let yaml = serde_yaml::to_string(&cfg).unwrap();
            let valid = AgentConfig::from_yaml(&yaml).unwrap().validate().unwrap();
            assert_eq!(valid.node_name.as_str(), "fibril-node-1");
            assert!(valid
                .paths
                .socket_path
                .starts_with(layout.node_dir("fibril-node-1")));
            assert_eq!(
                valid.bpf_pin_dir(),
                layout.node_bpf_pin_dir("fibril-node-1")
            );
        }
    }
}
