//! Strict decoding of the network config on stdin, in the order that gives each failure its
//! spec code: undecodable JSON (6), a bad version string (6), an unsupported version (1),
//! unsupported keys (2, naming key and value), then an invalid config (7, every problem).

use fibril_core::cni_api::{CniVersion, NetworkConfig, NetworkName, MAX_MESSAGE_BYTES};
use serde_json::{Map, Value};

use crate::error::{CniError, UnsupportedField};
use crate::version::is_supported;

/// The largest config we read: it has to fit in one request to the agent.
pub const STDIN_LIMIT: usize = MAX_MESSAGE_BYTES / 2;

/// A decoded config and the object it came from (forwarded verbatim to the agent).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedConfig {
    pub config: NetworkConfig,
    pub raw: Map<String, Value>,
}

/// The longest value quoted in an "unsupported field" message.
const QUOTE_LIMIT: usize = 120;

pub fn parse_config(stdin: &[u8]) -> Result<ParsedConfig, CniError> {
    if stdin.len() > STDIN_LIMIT {
        return Err(CniError::StdinTooLarge { limit: STDIN_LIMIT });
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode {
        reason: if stdin.iter().all(u8::is_ascii_whitespace) {
            "stdin is empty".into()
        } else {
            e.to_string()
        },
    })?;
    let Value::Object(raw) = value else {
        return Err(CniError::Decode {
            reason: format!("expected a JSON object, got {}", kind(&value)),
        });
    };

    let version = match raw.get("cniVersion") {
        None => {
            return Err(CniError::InvalidConfig {
                problems: vec!["cniVersion: missing".into()],
            })
        }
        Some(Value::String(s)) => s
            .parse::<CniVersion>()
            .map_err(|source| CniError::DecodeVersion { source })?,
        Some(other) => {
            return Err(CniError::Decode {
                reason: format!("cniVersion must be a string, got {}", kind(other)),
            })
        }
    };
    if !is_supported(version) {
        return Err(CniError::IncompatibleVersion { version });
    }

    let unsupported: Vec<_> = raw
        .iter()
        .filter(|(k, _)| !NetworkConfig::is_known_key(k))
        .map(|(key, value)| UnsupportedField {
            key: key.clone(),
            value: quote(value),
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(CniError::UnsupportedFields {
            fields: unsupported,
        });
    }

    // Required keys first, so that all of them are named at once; serde stops at the first.
    let mut problems = Vec::new();
    for key in ["name", "type"] {
        match raw.get(key) {
            None => problems.push(format!("{key}: missing")),
            Some(Value::String(s)) if key == "name" => {
                if let Err(e) = s.parse::<NetworkName>() {
                    problems.push(format!("name: {e}"));
                }
            }
            Some(Value::String(_)) => {}
            Some(other) => problems.push(format!("{key}: expected a string, got {}", kind(other))),
        }
    }
    if !problems.is_empty() {
        return Err(CniError::InvalidConfig { problems });
    }

    let config: NetworkConfig = serde_path_to_error::deserialize(&Value::Object(raw.clone()))
        .map_err(|e| CniError::InvalidConfig {
            problems: vec![format!("{}: {}", e.path(), e.inner())],
        })?;
    let problems: Vec<_> = config.validate().iter().map(ToString::to_string).collect();
    if !problems.is_empty() {
        return Err(CniError::InvalidConfig { problems });
    }
    Ok(ParsedConfig { config, raw })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quote(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= QUOTE_LIMIT {
        return s;
    }
    let mut end = QUOTE_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::cni_api::code;
    use serde_json::json;

    fn parse(v: Value) -> Result<ParsedConfig, CniError> {
        parse_config(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "fibril", "type": "fibril-cni"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let p = parse(base()).unwrap();
        assert_eq!(p.config.name.as_str(), "fibril");
        assert_eq!(
            p.config.agent_socket.to_str(),
            Some("/run/fibril/agent.sock")
        );
        assert_eq!(p.raw.len(), 3);
    }

    #[test]
    fn full_config_decodes() {
        let v = json!({"cniVersion": "1.0.0", "name": "fibril", "type": "fibril-cni",
            "agentSocket": "/tmp/a.sock", "agentTimeoutSeconds": 3, "mtu": 1450,
            "logFile": "/var/log/fibril-cni.log", "dns": {"nameservers": ["10.96.0.10"]},
            "capabilities": {"portMappings": true}, "runtimeConfig": {"portMappings": []},
            "args": {"cni": {}}, "prevResult": {"cniVersion": "1.0.0"},
            "cni.dev/valid-attachments": []});
        let p = parse(v).unwrap();
        assert_eq!(p.config.mtu, Some(1450));
        assert_eq!(p.config.agent_timeout_seconds, 3);
    }

    #[test]
    fn codes_in_order() {
        let cases = [
            (b"{not json".to_vec(), code::DECODE_FAILURE),
            (b"".to_vec(), code::DECODE_FAILURE),
            (b"[1]".to_vec(), code::DECODE_FAILURE),
            (
                with("cniVersion", json!("1.x")).to_string().into_bytes(),
                code::DECODE_FAILURE,
            ),
            (
                with("cniVersion", json!(1)).to_string().into_bytes(),
                code::DECODE_FAILURE,
            ),
            (
                with("cniVersion", json!("9.9.9")).to_string().into_bytes(),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                with("cniVersion", json!("0.3.1")).to_string().into_bytes(),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                with("ipam", json!({"type": "host-local"}))
                    .to_string()
                    .into_bytes(),
                code::UNSUPPORTED_FIELD,
            ),
            (
                json!({"cniVersion": "1.0.0"}).to_string().into_bytes(),
                code::INVALID_CONFIG,
            ),
            (
                with("name", json!("bad/name")).to_string().into_bytes(),
                code::INVALID_CONFIG,
            ),
            (
                with("mtu", json!("big")).to_string().into_bytes(),
                code::INVALID_CONFIG,
            ),
            (
                with("mtu", json!(9)).to_string().into_bytes(),
                code::INVALID_CONFIG,
            ),
        ];
        for (input, expected) in cases {
            let err = parse_config(&input).unwrap_err();
            assert_eq!(
                err.code(),
                expected,
                "{}: {err}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn unsupported_fields_name_key_and_value() {
        let mut v = with("ipam", json!({"type": "host-local"}));
        v["ipMasq"] = json!(true);
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains(r#"ipam = {"type":"host-local"}"#), "{msg}");
        assert!(msg.contains("ipMasq = true"), "{msg}");
        assert!(parse(with("cni.dev/whatever", json!(1))).is_ok());
    }

    #[test]
    fn missing_required_keys_named_together() {
        let msg = parse(json!({"cniVersion": "1.1.0"}))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("name: missing") && msg.contains("type: missing"),
            "{msg}"
        );
        let msg = parse(with("mtu", json!("big"))).unwrap_err().to_string();
        assert!(msg.contains("mtu:"), "{msg}");
    }

    #[test]
    fn long_values_are_truncated() {
        let msg = parse(with("junk", json!("x".repeat(1000))))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}
