//! Errors of the bpf layer: each names the object, path or interface involved.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::pin::PinError;
use aya::programs::links::LinkError;
use aya::programs::ProgramError;

/// A tc attach direction on the host side of a pod veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// tc ingress: packets sent by the pod.
    FromPod,
    /// tc egress: packets delivered to the pod.
    ToPod,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::FromPod => "tc ingress (from pod)",
            Direction::ToPod => "tc egress (to pod)",
        })
    }
}

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
    #[error("attaching {program} to {ifname} at {direction}: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: Direction,
        source: ProgramError,
    },
    #[error("pinning link at {}: {source}", path.display())]
    PinLink { path: PathBuf, source: PinError },
    #[error("pinned link {}: {source}", path.display())]
    PinnedLink { path: PathBuf, source: LinkError },
    #[error("map {}: {source}", path.display())]
    Map { path: PathBuf, source: MapError },
}
