//! A CNI runtime: the caller side of the CNI contract, as containerd (via libcni) runs it.
//!
//! [`CniRuntime`] finds the node's network config in its conf dir, runs each plugin
//! binary with the spec's `CNI_*` environment and the config on stdin, chains
//! `prevResult`, and caches ADD results (like `/var/lib/cni/results`) for DEL and CHECK.
//! Any CNI works under it: the lab kubelet uses it for Debian's reference plugins and
//! for fibril's own.
//!
//! Plugin failures keep the plugin's type and its `{code, msg, details}`, so the kubelet
//! can show `plugin bridge failed (code 7): …` in the pod's status.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt as _;

/// How long one plugin invocation may take before it is killed.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Config file extensions libcni loads; `.conflist` is a list, the others one plugin.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

/// The oldest spec whose result format this runtime chains (0.1/0.2 results differ).
const MIN_VERSION: CniVersion = CniVersion(0, 3, 0);
/// CHECK arrived in spec 0.4.0.
const CHECK_VERSION: CniVersion = CniVersion(0, 4, 0);
/// STATUS arrived in spec 1.1.0.
const STATUS_VERSION: CniVersion = CniVersion(1, 1, 0);

/// A CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Status,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spec version `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CniVersion(pub u32, pub u32, pub u32);

impl std::str::FromStr for CniVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('.').map(|p| p.parse::<u32>());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => Ok(CniVersion(a, b, c)),
            _ => Err(format!(
                "invalid cniVersion {s:?}: expected major.minor.patch"
            )),
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One plugin of a network config list, with its config as the file has it.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// `type`: the plugin binary's name.
    pub plugin_type: String,
    /// The plugin's whole config object, passed through untouched (plus the injected keys).
    pub raw: Map<String, Value>,
}

/// A network configuration list, as libcni's `NetworkConfigList`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: CniVersion,
    /// The version string exactly as written (it is injected into each plugin's config).
    pub cni_version_str: String,
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// Why a config file was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

fn join_display<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("no valid network config found in {}: {}", dir.display(), join_display(problems, "; "))]
    NoValidConfig {
        dir: PathBuf,
        problems: Vec<ConfigProblem>,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidAttachment {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("plugin {plugin_type} not found in {}", join_paths(dirs))]
    MissingPlugin {
        plugin_type: String,
        dirs: Vec<PathBuf>,
    },
    #[error("running plugin {plugin_type} ({}): {source}", path.display())]
    Spawn {
        plugin_type: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("plugin {plugin_type} failed (code {code}): {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        plugin_type: String,
        command: CniCommand,
        code: u32,
        msg: String,
        details: String,
    },
    #[error(
        "plugin {plugin_type} {command} exited with {status} and no CNI error on stdout: {output}"
    )]
    PluginCrashed {
        plugin_type: String,
        command: CniCommand,
        status: String,
        output: String,
    },
    #[error("plugin {plugin_type} {command} printed an invalid result: {source}: {output}")]
    BadResult {
        plugin_type: String,
        command: CniCommand,
        output: String,
        source: serde_json::Error,
    },
    #[error("plugin {plugin_type} {command} timed out after {}s and was killed", timeout.as_secs())]
    Timeout {
        plugin_type: String,
        command: CniCommand,
        timeout: Duration,
    },
    #[error("network {network} (cniVersion {version}) does not support {command}")]
    Unsupported {
        network: String,
        version: CniVersion,
        command: CniCommand,
    },
    #[error(
        "no cached ADD result for container {container_id} interface {ifname} on network {network}"
    )]
    NoCachedResult {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("cached result {}: {source}", path.display())]
    BadCache {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{add}; cleaning up with DEL also failed: {}",
        join_display(cleanup, "; ")
    )]
    AddCleanup {
        add: Box<CniError>,
        cleanup: Vec<CniError>,
    },
    #[error("DEL failed: {}", join_display(errors, "; "))]
    Del { errors: Vec<CniError> },
}

impl CniError {
    /// The CNI error code a plugin returned, if this is a plugin error.
    pub fn plugin_code(&self) -> Option<u32> {
        match self {
            CniError::Plugin { code, .. } => Some(*code),
            CniError::AddCleanup { add, .. } => add.plugin_code(),
            _ => None,
        }
    }
}

/// A pod's network attachment: the arguments of one ADD/DEL/CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub netns_path: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Attachment {
    /// `CNI_ARGS` as the kubelet/containerd pass them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }

    /// libcni's checks; they also keep the cache file name inside the cache dir.
    fn validate(&self) -> Result<(), CniError> {
        validate_id("container_id", &self.container_id)?;
        validate_ifname(&self.ifname)?;
        for (field, value) in [
            ("pod_namespace", &self.pod_namespace),
            ("pod_name", &self.pod_name),
            ("pod_uid", &self.pod_uid),
        ] {
            if value.contains([';', '=']) {
                return Err(CniError::InvalidAttachment {
                    field,
                    value: value.clone(),
                    reason: "must not contain ';' or '=' (CNI_ARGS separators)",
                });
            }
        }
        Ok(())
    }
}

fn validate_id(field: &'static str, value: &str) -> Result<(), CniError> {
    let err = |reason| CniError::InvalidAttachment {
        field,
        value: value.to_string(),
        reason,
    };
    let mut chars = value.chars();
    match chars.next() {
        None => return Err(err("must not be empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(err("must start with a letter or digit"))
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(err("may contain only letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

fn validate_ifname(ifname: &str) -> Result<(), CniError> {
    let err = |reason| CniError::InvalidAttachment {
        field: "ifname",
        value: ifname.to_string(),
        reason,
    };
    if ifname.is_empty() {
        return Err(err("must not be empty"));
    }
    if ifname.len() > 15 {
        return Err(err("must be at most 15 bytes (IFNAMSIZ)"));
    }
    if ifname == "." || ifname == ".." {
        return Err(err("must not be '.' or '..'"));
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(err("must not contain '/', ':' or whitespace"));
    }
    Ok(())
}

/// The cached outcome of an ADD (libcni keeps the same under `/var/lib/cni/results`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedResult {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    cni_args: String,
    netns: PathBuf,
    result: Value,
}

const CACHE_KIND: &str = "fibrilCniCacheV1";

/// The caller side of CNI for one node.
#[derive(Clone, Debug)]
pub struct CniRuntime {
    /// containerd's `/etc/cni/net.d`.
    pub conf_dir: PathBuf,
    /// containerd's `/opt/cni/bin`, searched in order; also `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// Cached ADD results live in `<cache_dir>/results/`.
    pub cache_dir: PathBuf,
}

impl CniRuntime {
    /// The network config, with libcni's rules: `*.conflist`, `*.conf` and `*.json` in
    /// the conf dir, sorted by file name; the first valid one wins and a single-plugin
    /// config is wrapped into a list. Invalid files are skipped and reported only when no
    /// file is valid.
    pub fn load_network(&self) -> Result<NetworkConfigList, CniError> {
        let entries = match std::fs::read_dir(&self.conf_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CniError::NoConfig {
                    dir: self.conf_dir.clone(),
                })
            }
            Err(source) => {
                return Err(CniError::Io {
                    op: "reading CNI conf dir",
                    path: self.conf_dir.clone(),
                    source,
                })
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| CONF_EXTENSIONS.contains(&x))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CniError::NoConfig {
                dir: self.conf_dir.clone(),
            });
        }
        let mut problems = Vec::new();
        for path in files {
            match load_file(&path) {
                Ok(list) => {
                    if !problems.is_empty() {
                        tracing::warn!(
                            skipped = %join_display(&problems, "; "),
                            using = %path.display(),
                            "skipped invalid CNI config files"
                        );
                    }
                    return Ok(list);
                }
                Err(reason) => problems.push(ConfigProblem { path, reason }),
            }
        }
        Err(CniError::NoValidConfig {
            dir: self.conf_dir.clone(),
            problems,
        })
    }

    /// Runs ADD for every plugin in order, chaining `prevResult`, and caches the final
    /// result. On failure, runs DEL for the attachment before returning, as containerd does.
    pub async fn add(&self, att: &Attachment) -> Result<Value, CniError> {
        att.validate()?;
        let net = self.load_network()?;
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self
                .invoke(CniCommand::Add, &net, plugin, Some(att), prev.as_ref())
                .await
            {
                Ok(result) => prev = Some(result.unwrap_or_else(|| Value::Object(Map::new()))),
                Err(add) => {
                    let mut cleanup = self.del_plugins(&net, att, prev.as_ref()).await;
                    // A plugin missing now did not run ADD in this call: nothing to undo.
                    cleanup.retain(|e| !matches!(e, CniError::MissingPlugin { .. }));
                    return Err(if cleanup.is_empty() {
                        add
                    } else {
                        CniError::AddCleanup {
                            add: Box::new(add),
                            cleanup,
                        }
                    });
                }
            }
        }
        let result = prev.unwrap_or_else(|| Value::Object(Map::new()));
        let cached = CachedResult {
            kind: CACHE_KIND.to_string(),
            container_id: att.container_id.clone(),
            if_name: att.ifname.clone(),
            network_name: net.name.clone(),
            cni_args: att.cni_args(),
            netns: att.netns_path.clone(),
            result: result.clone(),
        };
        if let Err(e) = self.write_cache(&net, att, &cached) {
            // Without the cache DEL would lack prevResult: undo, as for a plugin failure.
            let cleanup = self.del_plugins(&net, att, Some(&result)).await;
            return Err(if cleanup.is_empty() {
                e
            } else {
                CniError::AddCleanup {
                    add: Box::new(e),
                    cleanup,
                }
            });
        }
        Ok(result)
    }

    /// Runs DEL for every plugin in reverse order with the cached result as `prevResult`,
    /// then removes the cache entry. Every plugin runs even if one fails; all failures
    /// are reported and the cache entry is kept for a retry.
    pub async fn del(&self, att: &Attachment) -> Result<(), CniError> {
        att.validate()?;
        let net = self.load_network()?;
        let cached = self.read_cache(&net, att)?;
        let errors = self
            .del_plugins(&net, att, cached.as_ref().map(|c| &c.result))
            .await;
        if !errors.is_empty() {
            return Err(CniError::Del { errors });
        }
        let path = self.cache_path(&net, att);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io {
                op: "removing cached result",
                path,
                source,
            }),
        }
    }

    /// Runs CHECK for every plugin in order with the cached result as `prevResult`.
    pub async fn check(&self, att: &Attachment) -> Result<(), CniError> {
        att.validate()?;
        let net = self.load_network()?;
        if net.cni_version < CHECK_VERSION {
            return Err(CniError::Unsupported {
                network: net.name,
                version: net.cni_version,
                command: CniCommand::Check,
            });
        }
        if net.disable_check {
            return Ok(());
        }
        let cached = self
            .read_cache(&net, att)?
            .ok_or_else(|| CniError::NoCachedResult {
                network: net.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            })?;
        for plugin in &net.plugins {
            self.invoke(
                CniCommand::Check,
                &net,
                plugin,
                Some(att),
                Some(&cached.result),
            )
            .await?;
        }
        Ok(())
    }

    /// Spec 1.1 STATUS: whether every plugin is ready for ADDs. Networks older than 1.1.0
    /// have no STATUS and are taken as ready, as libcni does.
    pub async fn status(&self) -> Result<(), CniError> {
        let net = self.load_network()?;
        if net.cni_version < STATUS_VERSION {
            return Ok(());
        }
        for plugin in &net.plugins {
            self.invoke(CniCommand::Status, &net, plugin, None, None)
                .await?;
        }
        Ok(())
    }

    async fn del_plugins(
        &self,
        net: &NetworkConfigList,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Vec<CniError> {
        let mut errors = Vec::new();
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self
                .invoke(CniCommand::Del, net, plugin, Some(att), prev)
                .await
            {
                errors.push(e);
            }
        }
        errors
    }

    fn find_plugin(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        for dir in &self.bin_dirs {
            let candidate = dir.join(plugin_type);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        Err(CniError::MissingPlugin {
            plugin_type: plugin_type.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs one plugin; returns its parsed stdout (`None` when it printed nothing).
    async fn invoke(
        &self,
        command: CniCommand,
        net: &NetworkConfigList,
        plugin: &PluginConfig,
        att: Option<&Attachment>,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let binary = self.find_plugin(&plugin.plugin_type)?;
        let stdin = plugin_stdin(net, plugin, prev);
        let mut cmd = tokio::process::Command::new(&binary);
        // The plugin inherits our environment (PATH for iptables etc.), minus any stray
        // CNI_* of our own caller.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_PATH", self.cni_path());
        if let Some(att) = att {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns_path)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", att.cni_args());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_err = |source| CniError::Spawn {
            plugin_type: plugin.plugin_type.clone(),
            path: binary.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let mut child_stdin = child.stdin.take().expect("stdin is piped");
        let run = async {
            // A plugin that exits without reading stdin closes the pipe: that is its
            // business, its exit status tells the rest.
            let _ = child_stdin.write_all(&stdin).await;
            drop(child_stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(INVOKE_TIMEOUT, run).await {
            Ok(out) => out.map_err(spawn_err)?,
            // Dropping the future drops the child, which kill_on_drop kills.
            Err(_elapsed) => {
                return Err(CniError::Timeout {
                    plugin_type: plugin.plugin_type.clone(),
                    command,
                    timeout: INVOKE_TIMEOUT,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !stderr.trim().is_empty() {
            tracing::debug!(plugin = %plugin.plugin_type, %command, stderr = %stderr.trim(), "plugin stderr");
        }
        if !output.status.success() {
            return Err(plugin_failure(
                plugin,
                command,
                &output.status,
                &stdout,
                &stderr,
            ));
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(&stdout).map_err(|source| CniError::BadResult {
            plugin_type: plugin.plugin_type.clone(),
            command,
            output: stdout.clone(),
            source,
        })?;
        // Some plugins print an error object yet exit 0; the spec says the code decides,
        // but an explicit error must not pass as a result.
        if let Some(err) = error_reply(&value) {
            return Err(CniError::Plugin {
                plugin_type: plugin.plugin_type.clone(),
                command,
                code: err.code,
                msg: err.msg,
                details: err.details,
            });
        }
        Ok(Some(value))
    }

    fn cache_path(&self, net: &NetworkConfigList, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{}-{}-{}", net.name, att.container_id, att.ifname))
    }

    fn write_cache(
        &self,
        net: &NetworkConfigList,
        att: &Attachment,
        cached: &CachedResult,
    ) -> Result<(), CniError> {
        let path = self.cache_path(net, att);
        let bytes = serde_json::to_vec_pretty(cached).expect("a JSON value serialises");
        write_atomic(&path, &bytes).map_err(|source| CniError::Io {
            op: "writing cached result",
            path,
            source,
        })
    }

    fn read_cache(
        &self,
        net: &NetworkConfigList,
        att: &Attachment,
    ) -> Result<Option<CachedResult>, CniError> {
        let path = self.cache_path(net, att);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CniError::Io {
                    op: "reading cached result",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CniError::BadCache { path, source })
    }
}

/// Writes via a temp file and rename, so a crash never leaves a half-written cache.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("file name").to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The plugin's stdin: its own config plus `name` and `cniVersion` from the list, and
/// `prevResult` when there is one (libcni's `buildOneConfig`).
fn plugin_stdin(net: &NetworkConfigList, plugin: &PluginConfig, prev: Option<&Value>) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert(
        "cniVersion".into(),
        Value::String(net.cni_version_str.clone()),
    );
    match prev {
        Some(prev) => {
            conf.insert("prevResult".into(), prev.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    serde_json::to_vec(&Value::Object(conf)).expect("a JSON object serialises")
}

struct ErrorReply {
    code: u32,
    msg: String,
    details: String,
}

/// A spec error object: `{"cniVersion", "code", "msg", "details"}`, with `code` set.
fn error_reply(v: &Value) -> Option<ErrorReply> {
    let obj = v.as_object()?;
    let code = obj.get("code")?.as_u64()?;
    Some(ErrorReply {
        code: u32::try_from(code).unwrap_or(u32::MAX),
        msg: obj
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        details: obj
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

fn plugin_failure(
    plugin: &PluginConfig,
    command: CniCommand,
    status: &std::process::ExitStatus,
    stdout: &str,
    stderr: &str,
) -> CniError {
    if let Some(err) = serde_json::from_str::<Value>(stdout)
        .ok()
        .as_ref()
        .and_then(error_reply)
    {
        return CniError::Plugin {
            plugin_type: plugin.plugin_type.clone(),
            command,
            code: err.code,
            msg: err.msg,
            details: err.details,
        };
    }
    let output = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    CniError::PluginCrashed {
        plugin_type: plugin.plugin_type.clone(),
        command,
        status: status.to_string(),
        output,
    }
}

/// Loads one config file, or says why it is not a usable network config.
fn load_file(path: &Path) -> Result<NetworkConfigList, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let is_list = path.extension().and_then(|x| x.to_str()) == Some("conflist");
    let name = match obj.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(_) => return Err("name: must be a non-empty string".into()),
        None => return Err("name: missing".into()),
    };
    validate_id("network name", &name).map_err(|e| e.to_string())?;
    let version_str = match obj.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err("cniVersion: must be a string".into()),
        // libcni defaults a missing version to the oldest, 0.1.0.
        None => return Err("cniVersion: missing".into()),
    };
    let cni_version: CniVersion = version_str
        .parse()
        .map_err(|e| format!("cniVersion: {e}"))?;
    if cni_version < MIN_VERSION {
        return Err(format!(
            "cniVersion: {cni_version} is not supported (needs {MIN_VERSION} or later)"
        ));
    }
    let (plugins, disable_check) = if is_list {
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            Some(Value::Array(_)) => return Err("plugins: empty".into()),
            Some(_) => return Err("plugins: must be an array".into()),
            None => return Err("plugins: missing".into()),
        };
        let disable_check = match obj.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            // libcni accepts the string forms too.
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err("disableCheck: must be a boolean".into()),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| plugin_config(p).map_err(|e| format!("plugins[{i}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        (plugins, disable_check)
    } else {
        if obj.contains_key("plugins") && !obj.contains_key("type") {
            return Err("type: missing (is this a .conflist?)".into());
        }
        (vec![plugin_config(&Value::Object(obj.clone()))?], false)
    };
    Ok(NetworkConfigList {
        name,
        cni_version,
        cni_version_str: version_str,
        disable_check,
        plugins,
        path: path.to_path_buf(),
    })
}

fn plugin_config(v: &Value) -> Result<PluginConfig, String> {
    let Value::Object(raw) = v else {
        return Err("must be an object".into());
    };
    let plugin_type = match raw.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err("type: must be a non-empty string".into()),
        None => return Err("type: missing".into()),
    };
    // The type names a binary inside the bin dirs, never a path.
    if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(format!("type: {plugin_type:?} must be a plain binary name"));
    }
    Ok(PluginConfig {
        plugin_type,
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(version: &str) -> NetworkConfigList {
        NetworkConfigList {
            name: "net".into(),
            cni_version: version.parse().unwrap(),
            cni_version_str: version.into(),
            disable_check: false,
            plugins: vec![],
            path: PathBuf::new(),
        }
    }

    #[test]
    fn stdin_injects_name_version_and_prev_result() {
        let net = list("1.0.0");
        let plugin = plugin_config(&serde_json::json!({
            "type": "bridge", "bridge": "cni0", "name": "stale", "prevResult": {"x": 1}
        }))
        .unwrap();
        let v: Value = serde_json::from_slice(&plugin_stdin(&net, &plugin, None)).unwrap();
        assert_eq!(v["name"], "net");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["bridge"], "cni0");
        assert!(v.get("prevResult").is_none());
        let prev = serde_json::json!({"ips": []});
        let v: Value = serde_json::from_slice(&plugin_stdin(&net, &plugin, Some(&prev))).unwrap();
        assert_eq!(v["prevResult"], prev);
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s: &str| s.parse::<CniVersion>().unwrap();
        assert!(v("0.10.0") > v("0.4.0"));
        assert!(v("1.1.0") >= STATUS_VERSION);
        assert!(v("1.0.0") < STATUS_VERSION);
        assert!("1.0".parse::<CniVersion>().is_err());
    }

    #[test]
    fn attachment_validation_names_the_field() {
        let ok = Attachment {
            container_id: "abc-1.x_y".into(),
            netns_path: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u-1".into(),
        };
        ok.validate().unwrap();
        for (att, field) in [
            (
                Attachment {
                    container_id: "../etc".into(),
                    ..ok.clone()
                },
                "container_id",
            ),
            (
                Attachment {
                    ifname: "a/b".into(),
                    ..ok.clone()
                },
                "ifname",
            ),
            (
                Attachment {
                    ifname: "0123456789abcdef".into(),
                    ..ok.clone()
                },
                "ifname",
            ),
            (
                Attachment {
                    pod_name: "a;b".into(),
                    ..ok.clone()
                },
                "pod_name",
            ),
        ] {
            match att.validate() {
                Err(CniError::InvalidAttachment { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn cni_args_carry_the_pod() {
        let att = Attachment {
            container_id: "c1".into(),
            netns_path: "/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: "ns".into(),
            pod_name: "web".into(),
            pod_uid: "uid".into(),
        };
        assert_eq!(
            att.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=uid"
        );
    }

    #[test]
    fn plugin_errors_display_type_code_and_message() {
        let e = CniError::Plugin {
            plugin_type: "bridge".into(),
            command: CniCommand::Add,
            code: 7,
            msg: "bad config".into(),
            details: String::new(),
        };
        assert_eq!(e.to_string(), "plugin bridge failed (code 7): bad config");
        assert_eq!(e.plugin_code(), Some(7));
    }
}
