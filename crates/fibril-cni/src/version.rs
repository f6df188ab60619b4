//! Spec versions: which ones fibril speaks, the VERSION reply, and rendering a result in the
//! shape of the version in use.

use fibril_core::cni_api::{CniResult, CniVersion};
use serde_json::{json, Map, Value};

/// The versions fibril's plugin speaks. 0.4.0 is the oldest with CHECK; runtimes still on
/// 0.4.0 configs (older containerd, CRI-O) keep working.
pub const SUPPORTED_VERSIONS: [CniVersion; 3] =
    [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

/// The newest supported version: used in replies when the input names none.
pub const LATEST: CniVersion = CniVersion::V1_1_0;

pub fn is_supported(version: CniVersion) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The `cniVersion` on stdin, if it is a well-formed version string.
pub fn stdin_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<Peek>(stdin)
        .ok()?
        .cni_version
        .parse()
        .ok()
}

/// The version to put in an error reply: the one in use if we support it, else [`LATEST`].
pub fn reply_version(stdin: &[u8]) -> CniVersion {
    stdin_version(stdin)
        .filter(|v| is_supported(*v))
        .unwrap_or(LATEST)
}

/// The VERSION reply. `cniVersion` echoes the input's; VERSION never fails, so a runtime can
/// always discover what we speak, whatever it sent.
pub fn version_info(stdin: &[u8]) -> Value {
    let version = stdin_version(stdin).unwrap_or(LATEST);
    json!({
        "cniVersion": version.to_string(),
        "supportedVersions": SUPPORTED_VERSIONS.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Fields that exist only since 1.1.0, stripped for older versions.
const INTERFACE_FIELDS_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

/// `result` as the spec version `version` defines it, with `cniVersion` set to it.
/// 0.4.0 adds `ips[].version`; versions before 1.1.0 lose the 1.1-only fields.
pub fn render_result(result: &CniResult, version: CniVersion) -> Value {
    let mut value = serde_json::to_value(result).expect("results serialize");
    let obj = value.as_object_mut().expect("a result is an object");
    if version < CniVersion::V1_1_0 {
        strip(obj, "interfaces", &INTERFACE_FIELDS_1_1);
        strip(obj, "routes", &ROUTE_FIELDS_1_1);
    }
    if version < CniVersion::V1_0_0 {
        for (ip, rendered) in result.ips.iter().zip(items(obj, "ips")) {
            let family = if ip.address.addr().is_ipv4() {
                "4"
            } else {
                "6"
            };
            rendered.insert("version".into(), json!(family));
        }
    }
    obj.insert("cniVersion".into(), json!(version.to_string()));
    value
}

fn items<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn strip(obj: &mut Map<String, Value>, key: &str, fields: &[&str]) {
    for item in items(obj, key) {
        for field in fields {
            item.remove(*field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CniResult {
        serde_json::from_value(json!({
            "interfaces": [{"name": "lxc1", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x",
                            "mtu": 1450, "socketPath": "/s", "pciID": "p"}],
            "ips": [{"address": "10.0.1.5/24", "gateway": "10.0.1.1", "interface": 1},
                    {"address": "fd00::5/64", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1", "mtu": 1400, "scope": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}
        }))
        .unwrap()
    }

    #[test]
    fn renders_1_1_unchanged() {
        let v = render_result(&result(), CniVersion::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        assert_eq!(v["routes"][0]["scope"], 0);
        assert!(v["ips"][0].get("version").is_none());
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, result());
    }

    #[test]
    fn renders_1_0_without_1_1_fields() {
        let v = render_result(&result(), CniVersion::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["interfaces"][1].get("pciID").is_none());
        assert!(v["routes"][0].get("scope").is_none());
        assert_eq!(v["routes"][0]["gw"], "10.0.1.1");
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn renders_0_4_with_ip_versions() {
        let v = render_result(&result(), CniVersion::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["interfaces"][1].get("mtu").is_none());
        for key in ["interfaces", "ips", "routes", "dns"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn version_info_echoes_input() {
        let v = version_info(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version_info(b"")["cniVersion"], "1.1.0");
        assert_eq!(reply_version(br#"{"cniVersion":"9.9.9"}"#), LATEST);
        assert_eq!(
            reply_version(br#"{"cniVersion":"0.4.0"}"#),
            CniVersion::V0_4_0
        );
    }
}
