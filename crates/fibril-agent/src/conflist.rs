//! The CNI network config the agent installs once it is ready, and removes on uninstall.
//! It is never removed on a crash or restart: existing pods (and their DEL) keep working.

use std::path::{Path, PathBuf};

use crate::persist::{remove_durable, write_atomic, PersistIoError};

/// Its file name: sorts before the usual `10-*` configs, so runtimes pick fibril's.
pub const CONFLIST_FILE: &str = "05-fibril.conflist";
/// The network's name.
pub const NETWORK_NAME: &str = "fibril";
/// The plugin binary's name.
pub const PLUGIN_TYPE: &str = "fibril-cni";
/// The spec version of the conflist (STATUS and GC need 1.1.0).
pub const CNI_VERSION: &str = "1.1.0";

pub fn conflist(agent_socket: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            { "type": PLUGIN_TYPE, "agentSocket": agent_socket }
        ]
    })
}

pub fn conflist_path(conf_dir: &Path) -> PathBuf {
    conf_dir.join(CONFLIST_FILE)
}

/// Writes the conflist atomically (readers never see half of it).
pub fn install(conf_dir: &Path, agent_socket: &Path) -> Result<PathBuf, PersistIoError> {
    let path = conflist_path(conf_dir);
    let bytes = serde_json::to_vec_pretty(&conflist(agent_socket)).expect("plain JSON");
    write_atomic(&path, &bytes, 0o644)?;
    Ok(path)
}

/// Removes the conflist (uninstall). Ok if absent.
pub fn uninstall(conf_dir: &Path) -> Result<(), PersistIoError> {
    remove_durable(&conflist_path(conf_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_decodes_as_fibril_network_config() {
        let c = conflist(Path::new("/run/fibril/agent.sock"));
        let plugin = c["plugins"][0].clone();
        let mut conf = plugin.as_object().unwrap().clone();
        conf.insert("cniVersion".into(), c["cniVersion"].clone());
        conf.insert("name".into(), c["name"].clone());
        let nc: fibril_core::cni_api::NetworkConfig =
            serde_json::from_value(serde_json::Value::Object(conf)).unwrap();
        assert!(nc.validate().is_empty());
        assert_eq!(nc.plugin_type, PLUGIN_TYPE);
        let d = tempfile::tempdir().unwrap();
        let p = install(d.path(), Path::new("/run/fibril/agent.sock")).unwrap();
        assert!(p.exists());
        uninstall(d.path()).unwrap();
        assert!(!p.exists());
        uninstall(d.path()).unwrap();
    }
}
