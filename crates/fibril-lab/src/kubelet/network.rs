//! The kubelet's side of CNI, as containerd drives it: the node's conf dir, its bin
//! dir then Debian's reference plugins, one cache dir, `eth0`, and `K8S_POD_*` args.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use fibril_core::consts;
use fibril_core::lab::LabLayout;

use crate::cni::{Attachment, CniError, CniRuntime};

/// A pod's attachment, as the kubelet identifies it to CNI.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub sandbox_id: String,
    pub netns_path: PathBuf,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

pub struct Network {
    rt: CniRuntime,
}

impl Network {
    pub fn for_node(layout: &LabLayout, node: &str) -> Self {
        Network {
            rt: CniRuntime {
                conf_dir: layout.node_cni_conf_dir(node),
                bin_dirs: vec![
                    layout.node_cni_bin_dir(node),
                    PathBuf::from(consts::CNI_REFERENCE_PLUGIN_DIR),
                ],
                cache_dir: layout.node_cni_state_dir(node),
            },
        }
    }

    /// `Ok` once the conf dir holds a loadable network config.
    pub fn ready(&self) -> Result<(), String> {
        self.rt
            .load_network()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn attachment(p: &PodNet) -> Attachment {
        Attachment {
            container_id: p.sandbox_id.clone(),
            netns_path: p.netns_path.clone(),
            ifname: consts::POD_IFNAME.into(),
            pod_namespace: p.pod_namespace.clone(),
            pod_name: p.pod_name.clone(),
            pod_uid: p.pod_uid.clone(),
        }
    }

    /// CNI ADD: the result and the pod's IPv4 address from it.
    pub async fn add(&self, p: &PodNet) -> Result<(serde_json::Value, Option<Ipv4Addr>), CniError> {
        let result = self.rt.add(&Self::attachment(p)).await?;
        let ip = result_ipv4(&result);
        Ok((result, ip))
    }

    /// CNI DEL.
    pub async fn del(&self, p: &PodNet) -> Result<(), CniError> {
        self.rt.del(&Self::attachment(p)).await
    }
}

/// The first IPv4 address of a CNI result (`ips[].address`, CIDR notation).
pub fn result_ipv4(result: &serde_json::Value) -> Option<Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .find_map(|a| a.split('/').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_from_cni_result() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "fd00::5/64"}, {"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]
        });
        assert_eq!(result_ipv4(&r), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(result_ipv4(&serde_json::json!({})), None);
    }
}
