//! The invocation environment (`CNI_*`): which variables each command needs, their rules,
//! and `CNI_ARGS`. Every problem is reported at once, each naming its variable.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use fibril_core::cni_api::{Attachment, ContainerId, IfName, InvalidId, PodIdentity};

use crate::command::Command;

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";
pub const CNI_PATH: &str = "CNI_PATH";
/// libcni's escape hatch for the own-netns check (ENV-09).
pub const CNI_NETNS_OVERRIDE: &str = "CNI_NETNS_OVERRIDE";

const VARS: [&str; 7] = [
    CNI_COMMAND,
    CNI_CONTAINERID,
    CNI_NETNS,
    CNI_IFNAME,
    CNI_ARGS,
    CNI_PATH,
    CNI_NETNS_OVERRIDE,
];

/// The `CNI_*` variables as the process got them. Empty counts as unset, as in libcni.
#[derive(Clone, Debug, Default)]
pub struct RawEnv {
    vars: HashMap<&'static str, OsString>,
}

impl RawEnv {
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let vars = VARS
            .into_iter()
            .filter_map(|name| lookup(name).map(|v| (name, v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Self { vars }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let map: HashMap<String, OsString> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), OsString::from(v)))
            .collect();
        Self::from_lookup(|name| map.get(name).cloned())
    }

    fn get(&self, name: &'static str) -> Result<Option<&str>, EnvProblem> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(Some)
                .ok_or(EnvProblem::NotUtf8 { var: name }),
        }
    }

    /// `CNI_COMMAND`, `None` when unset (libcni then prints what the plugin is).
    pub fn command(&self) -> Result<Option<&str>, EnvError> {
        self.get(CNI_COMMAND).map_err(|p| EnvError {
            missing: Vec::new(),
            problems: vec![p],
        })
    }
}

/// One invalid variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvProblem {
    #[error("{var} is not valid UTF-8")]
    NotUtf8 { var: &'static str },
    #[error(transparent)]
    Id(#[from] InvalidId),
    #[error("invalid CNI_ARGS: {0}")]
    Args(#[from] ArgsProblem),
}

/// All the environment's problems: the missing required variables and the invalid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    pub missing: Vec<&'static str>,
    pub problems: Vec<EnvProblem>,
}

impl std::error::Error for EnvError {}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            // libcni's wording, so tools matching it keep working.
            parts.push(format!(
                "required env variables [{}] missing",
                self.missing.join(",")
            ));
        }
        parts.extend(self.problems.iter().map(ToString::to_string));
        f.write_str(&parts.join("; "))
    }
}

/// A `CNI_ARGS` problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsProblem {
    #[error("{pair:?} is not KEY=VALUE")]
    BadPair { pair: String },
    #[error("unknown key {key:?} (fibril understands K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID; IgnoreUnknown=1 allows others)")]
    UnknownKey { key: String },
    #[error("IgnoreUnknown={value:?} is not a boolean")]
    BadBool { value: String },
    #[error("{present} without {missing}")]
    IncompletePod {
        present: &'static str,
        missing: &'static str,
    },
}

/// The pod identity from `CNI_ARGS` (`K=V;K=V`), as Kubernetes runtimes pass it:
/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`.
///
/// As libcni's `LoadArgs`: unknown keys are refused unless `IgnoreUnknown` is true. `None` when
/// there is no pod (podman and other non-Kubernetes runtimes).
pub fn parse_cni_args(args: &str) -> Result<Option<PodIdentity>, Vec<ArgsProblem>> {
    let mut problems = Vec::new();
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    let (mut namespace, mut name, mut uid, mut infra) = (None, None, None, None);
    // Empty segments (a trailing `;`) are tolerated.
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=').filter(|(_, v)| !v.contains('=')) else {
            problems.push(ArgsProblem::BadPair {
                pair: pair.to_owned(),
            });
            continue;
        };
        let value = value.to_owned();
        match key {
            "IgnoreUnknown" => match value.to_ascii_lowercase().as_str() {
                "1" | "true" => ignore_unknown = true,
                "0" | "false" => ignore_unknown = false,
                _ => problems.push(ArgsProblem::BadBool { value }),
            },
            "K8S_POD_NAMESPACE" => namespace = Some(value),
            "K8S_POD_NAME" => name = Some(value),
            "K8S_POD_UID" => uid = Some(value),
            "K8S_POD_INFRA_CONTAINER_ID" => infra = Some(value),
            _ => unknown.push(key.to_owned()),
        }
    }
    if !ignore_unknown {
        problems.extend(
            unknown
                .into_iter()
                .map(|key| ArgsProblem::UnknownKey { key }),
        );
    }
    let pod = match (namespace, name) {
        (Some(namespace), Some(name)) => Some(PodIdentity {
            namespace,
            name,
            uid,
            infra_container_id: infra,
        }),
        (Some(_), None) => {
            problems.push(ArgsProblem::IncompletePod {
                present: "K8S_POD_NAMESPACE",
                missing: "K8S_POD_NAME",
            });
            None
        }
        // podman's CNI backend sends only `K8S_POD_NAME=<container name>` (containers/podman
        // #12083): not a Kubernetes pod, so no pod identity, as libcni's plugins read it.
        (None, Some(_)) | (None, None) => None,
    };
    if problems.is_empty() {
        Ok(pod)
    } else {
        Err(problems)
    }
}

/// A validated invocation: what each command needs, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    Add {
        attachment: Attachment,
        netns: PathBuf,
    },
    Check {
        attachment: Attachment,
        netns: PathBuf,
    },
    Del {
        attachment: Attachment,
        /// `CNI_NETNS` is optional for DEL.
        netns: Option<PathBuf>,
        /// `CNI_ARGS` problems DEL tolerated (logged, the pod identity dropped).
        ignored_args: Vec<ArgsProblem>,
    },
    Status,
    Gc,
    Version,
}

impl Invocation {
    /// The `CNI_NETNS` to check against the plugin's own namespace (ENV-09).
    pub fn netns(&self) -> Option<&PathBuf> {
        match self {
            Invocation::Add { netns, .. } | Invocation::Check { netns, .. } => Some(netns),
            Invocation::Del { netns, .. } => netns.as_ref(),
            _ => None,
        }
    }
}

/// Whether `CNI_NETNS_OVERRIDE` allows the plugin's own netns.
pub fn netns_override(env: &RawEnv) -> bool {
    matches!(
        env.get(CNI_NETNS_OVERRIDE)
            .ok()
            .flatten()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("1" | "true")
    )
}

/// Checks the variables `command` needs (ENV-02, 04, 05, 06, 07).
///
/// Required: ADD and CHECK need `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`; DEL needs
/// `CNI_CONTAINERID` and `CNI_IFNAME`; GC needs `CNI_PATH`; STATUS and VERSION nothing.
/// `CNI_ARGS` problems fail ADD and CHECK, but DEL only logs them: DEL must stay possible for
/// whatever the runtime attached.
pub fn parse_env(command: Command, env: &RawEnv) -> Result<Invocation, EnvError> {
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    let mut required = |var: &'static str| match env.get(var) {
        Ok(Some(v)) => Some(v.to_owned()),
        Ok(None) => {
            missing.push(var);
            None
        }
        Err(p) => {
            problems.push(p);
            None
        }
    };

    match command {
        Command::Version => return Ok(Invocation::Version),
        Command::Status => return Ok(Invocation::Status),
        Command::Gc => {
            required(CNI_PATH);
            return finish(missing, problems, Invocation::Gc);
        }
        Command::Add | Command::Check | Command::Del => {}
    }

    let container_id = required(CNI_CONTAINERID);
    let netns = if command == Command::Del {
        None
    } else {
        required(CNI_NETNS)
    };
    let ifname = required(CNI_IFNAME);

    let container_id = container_id.and_then(|v| {
        v.parse::<ContainerId>()
            .map_err(|e| problems.push(e.into()))
            .ok()
    });
    let ifname = ifname.and_then(|v| {
        v.parse::<IfName>()
            .map_err(|e| problems.push(e.into()))
            .ok()
    });

    let (pod, args_problems) = match env.get(CNI_ARGS) {
        Ok(None) => (None, Vec::new()),
        Ok(Some(args)) => match parse_cni_args(args) {
            Ok(pod) => (pod, Vec::new()),
            Err(p) => (None, p),
        },
        Err(p) => {
            problems.push(p);
            (None, Vec::new())
        }
    };
    let mut ignored_args = Vec::new();
    if command == Command::Del {
        ignored_args = args_problems;
    } else {
        problems.extend(args_problems.into_iter().map(EnvProblem::Args));
    }

    let (Some(container_id), Some(ifname)) = (container_id, ifname) else {
        return Err(EnvError { missing, problems });
    };
    let attachment = Attachment {
        container_id,
        ifname,
        pod,
    };
    let invocation = match command {
        Command::Add => Invocation::Add {
            attachment,
            netns: netns.map(PathBuf::from).unwrap_or_default(),
        },
        Command::Check => Invocation::Check {
            attachment,
            netns: netns.map(PathBuf::from).unwrap_or_default(),
        },
        _ => Invocation::Del {
            attachment,
            netns: env.get(CNI_NETNS).ok().flatten().map(PathBuf::from),
            ignored_args,
        },
    };
    finish(missing, problems, invocation)
}

fn finish(
    missing: Vec<&'static str>,
    problems: Vec<EnvProblem>,
    invocation: Invocation,
) -> Result<Invocation, EnvError> {
    if missing.is_empty() && problems.is_empty() {
        Ok(invocation)
    } else {
        Err(EnvError { missing, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![
            (CNI_CONTAINERID, "abc"),
            (CNI_NETNS, "/run/netns/x"),
            (CNI_IFNAME, "eth0"),
            (CNI_PATH, "/opt/cni/bin"),
        ]
    }

    #[test]
    fn cni_args_kubernetes_identity() {
        let pod = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;OTHER=x;",
        )
        .unwrap()
        .unwrap();
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.name, "web-0");
        assert_eq!(pod.uid.as_deref(), Some("u-1"));
        assert_eq!(pod.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(parse_cni_args("").unwrap(), None);
        assert_eq!(parse_cni_args("IgnoreUnknown=true;FOO=BAR").unwrap(), None);
    }

    #[test]
    fn cni_args_problems_are_all_reported() {
        let problems =
            parse_cni_args("FOO=BAR;novalue;A=b=c;IgnoreUnknown=maybe;K8S_POD_NAME=x").unwrap_err();
        assert_eq!(
            problems,
            vec![
                ArgsProblem::BadPair {
                    pair: "novalue".into()
                },
                ArgsProblem::BadPair {
                    pair: "A=b=c".into()
                },
                ArgsProblem::BadBool {
                    value: "maybe".into()
                },
                ArgsProblem::UnknownKey { key: "FOO".into() },
            ]
        );
        // What podman sends: a name without a namespace is a container, not a pod.
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web").unwrap(),
            None
        );
        assert!(matches!(
            parse_cni_args("IgnoreUnknown=0;FOO=1").unwrap_err()[..],
            [ArgsProblem::UnknownKey { .. }]
        ));
    }

    #[test]
    fn required_vars_per_command() {
        let cases: [(Command, &[&str]); 6] = [
            (Command::Add, &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME]),
            (Command::Check, &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME]),
            (Command::Del, &[CNI_CONTAINERID, CNI_IFNAME]),
            (Command::Gc, &[CNI_PATH]),
            (Command::Status, &[]),
            (Command::Version, &[]),
        ];
        for (command, required) in cases {
            assert!(parse_env(command, &RawEnv::from_pairs(full())).is_ok());
            let err = parse_env(command, &RawEnv::default());
            assert_eq!(
                err.err().map(|e| e.missing).unwrap_or_default(),
                required,
                "{command}"
            );
        }
    }

    #[test]
    fn invalid_values_are_reported_together() {
        let mut vars = full();
        vars[0] = (CNI_CONTAINERID, "-bad/id");
        vars[2] = (CNI_IFNAME, "averyveryverylongname");
        vars.retain(|(k, _)| *k != CNI_NETNS);
        let err = parse_env(Command::Add, &RawEnv::from_pairs(vars)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("required env variables [CNI_NETNS] missing"),
            "{msg}"
        );
        assert!(msg.contains("CNI_CONTAINERID \"-bad/id\""), "{msg}");
        assert!(
            msg.contains("CNI_IFNAME \"averyveryverylongname\""),
            "{msg}"
        );
    }

    #[test]
    fn del_tolerates_bad_args_and_missing_netns() {
        let mut vars = full();
        vars.retain(|(k, _)| *k != CNI_NETNS);
        vars.push((CNI_ARGS, "FOO=BAR"));
        let Invocation::Del {
            netns,
            ignored_args,
            attachment,
        } = parse_env(Command::Del, &RawEnv::from_pairs(vars.clone())).unwrap()
        else {
            panic!("not a DEL");
        };
        assert_eq!(netns, None);
        assert_eq!(attachment.pod, None);
        assert_eq!(ignored_args.len(), 1);
        vars.push((CNI_NETNS, "/run/netns/x"));
        assert!(parse_env(Command::Add, &RawEnv::from_pairs(vars)).is_err());
    }

    #[test]
    fn empty_counts_as_unset() {
        let mut vars = full();
        vars[1] = (CNI_NETNS, "");
        let err = parse_env(Command::Add, &RawEnv::from_pairs(vars)).unwrap_err();
        assert_eq!(err.missing, [CNI_NETNS]);
    }
}
