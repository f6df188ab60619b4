//! Errors of the bpf layer: each names the object, path or interface involved.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::pin::PinError;
use aya::programs::links::LinkError;
use aya::programs::ProgramError;

use crate::hook::Hook;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("mounting bpffs at {}: {source}", path.display())]
    MountBpffs { path: PathBuf, source: io::Error },
    #[error("{} is not on a bpf filesystem: BPF objects can only be pinned on bpffs", path.display())]
    NotBpffs { path: PathBuf },
    #[error(
        "TCX attachment needs Linux >= 6.6, this kernel is {kernel}; fibril does not fall back to \
         legacy tc filters"
    )]
    TcxUnsupported { kernel: String },
    #[error("loading BPF object {object} (maps pinned in {}): {source}", pin_dir.display())]
    Load {
        object: &'static str,
        pin_dir: PathBuf,
        // Boxed: aya's error is large and would bloat every Result here.
        source: Box<aya::EbpfError>,
    },
    #[error(
        "pinned map {} is incompatible with this build (pinned: {found}; expected: {expected}); \
         remove it to start counting afresh",
        path.display()
    )]
    IncompatiblePinnedMap {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("program {program} not found in BPF object {object}")]
    MissingProgram {
        object: &'static str,
        program: &'static str,
    },
    #[error("map {map} not found in BPF object {object}")]
    MissingMap {
        object: &'static str,
        map: &'static str,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("interface {ifname:?} not found in the current network namespace: {source}")]
    NoSuchInterface { ifname: String, source: io::Error },
    #[error("attaching {program} to {ifname} at {hook}: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        hook: Hook,
        source: ProgramError,
    },
    #[error("invalid datapath configuration: {}", join(problems))]
    Config { problems: Vec<ConfigProblem> },
    #[error("cannot attach {hook} to {ifname}: the datapath runs in {mode} routing mode")]
    WrongRoutingMode {
        ifname: String,
        hook: Hook,
        mode: &'static str,
    },
    #[error(
        "{ifname} (ifindex {ifindex}) is not the tunnel device the datapath was loaded for \
         (ifindex {configured})"
    )]
    TunnelDeviceMismatch {
        ifname: String,
        ifindex: u32,
        configured: u32,
    },
    #[error("interface {ifname} is {hook} already; detach it first")]
    AttachedElsewhere { ifname: String, hook: Hook },
    #[error("event of {found} bytes in {}, expected {expected}", path.display())]
    EventSize {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("event in {} has an unknown {field} {value}: is the reader older than the programs?", path.display())]
    UnknownEventCode {
        path: PathBuf,
        field: &'static str,
        value: u32,
    },
    #[error("identity {identity} does not fit in the 24 bits of a VXLAN VNI")]
    IdentityOutOfRange { identity: u32 },
    #[error("{} has an entry with prefix length {prefix_len}", path.display())]
    BadIpcacheKey { path: PathBuf, prefix_len: u32 },
    #[error("{} holds {ip} with unknown flags {flags:#x}: is the reader older than the writer?", path.display())]
    UnknownEndpointFlags {
        path: PathBuf,
        ip: std::net::Ipv4Addr,
        flags: u32,
    },
    #[error("pinning link at {}: {source}", path.display())]
    PinLink { path: PathBuf, source: PinError },
    #[error("pinned link {}: {source}", path.display())]
    PinnedLink { path: PathBuf, source: LinkError },
    #[error("map {}: {source}", path.display())]
    Map { path: PathBuf, source: MapError },
    #[error("service table refused: {}", join(problems))]
    InvalidServiceTable {
        problems: Vec<crate::services::TableProblem>,
    },
    #[error("{} holds a {what} with an unknown {field} {value}: is the reader older than the writer?", path.display())]
    BadServiceMapEntry {
        path: PathBuf,
        what: String,
        field: &'static str,
        value: u32,
    },
    #[error("{}: the service entry of {frontend} has no {part} {index}", path.display())]
    MissingServicePart {
        path: PathBuf,
        frontend: String,
        part: &'static str,
        index: u32,
    },
}

/// One problem with a [`DatapathConfig`](crate::DatapathConfig), naming its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    #[error(
        "node_ip: {addr} cannot be a node's address (unspecified, loopback, broadcast or \
         multicast)"
    )]
    NodeIp { addr: std::net::Ipv4Addr },
    #[error("routing.tunnel.device_ifindex: 0 is not an interface index")]
    TunnelIfindex,
}

fn join<T: ToString>(problems: &[T]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
