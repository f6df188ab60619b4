//! fibril-netlink owns fibril's privileged view of the network: named network
//! namespaces (create, open, delete, run code inside), typed rtnetlink operations on
//! links, addresses, routes, neighbours and VXLAN devices inside one, per-namespace `net.*` sysctls, and finding
//! or starting processes in a namespace. No `ip` command is built here.
//!
//! The API is synchronous. Each operation runs on a short-lived thread that has
//! entered the target namespace, so it is safe to call from any thread; async callers
//! wrap calls in `spawn_blocking`. Operations that change state refuse a namespace that
//! turns out to be the host's initial one ([`Error::HostNetns`]).

mod error;
mod neigh;
mod netns;
mod ops;
mod process;
mod sysctl;
mod vxlan;

pub use error::{Error, NlError, Result};
pub use neigh::NeighInfo;
pub use netns::{NetNs, NETNS_RUN_DIR};
pub use ops::{AddrInfo, Change, LinkInfo, MacAddr, Route, RouteInfo};
pub use process::{current_netns_inode, netns_inode_of, pids_in_netns, setns_pre_exec};
pub use sysctl::sysctl_path;
pub use vxlan::{VxlanInfo, VxlanOptions};
