//! fibril-agent: the per-node daemon of fibril.
//!
//! It owns, for one node:
//! - **IPAM**: the node's pod range (`node.spec.podCIDR` in kubernetes mode, a block claimed
//!   from the cluster pool's `FibrilIPPool` with optimistic concurrency in cluster-pool mode,
//!   [`pool`]), refused when it overlaps a route, a node subnet, the Service range or a
//!   reserved range (seed 000), and the address allocator, persisted before any address is
//!   handed out (seed 002);
//! - the **CNI server** on `socketPath` ([`fibril_core::cni_api`]): ADD, DEL, CHECK, STATUS
//!   and GC for the `fibril-cni` plugin ([`agent`]), answering "not available" (50) until
//!   ready;
//! - the **CNI conflist**, written only once IPAM and the dataplane are ready ([`conflist`]);
//! - **routing** between nodes: routes to peers' pod ranges (native) or the VXLAN device and
//!   ipcache entries (tunnel);
//! - the **dataplane** behind the [`dataplane::Dataplane`] seam, strict by default: legacy
//!   host routing is refused unless `allowDegraded` (seed 001);
//! - **Services** ([`services`]): Services and EndpointSlices translated for this node
//!   and synced into the datapath's service maps (the kube-proxy replacement);
//! - **NetworkPolicy** ([`policy`]): compiled from the cluster on every change and written
//!   to the datapath's policy maps and ipcache;
//! - the **status socket** ([`status`]) that `fibril status` reads;
//! - **uninstall** ([`uninstall`]): removing everything it created on the node.
//!
//! The agent runs inside its node's network namespace in the lab; every netlink change
//! goes through [`fibril_netlink::NetNs`] on that namespace, so nothing else is touched.

pub mod agent;
pub mod conflist;
mod controller;
pub mod dataplane;
pub mod endpoint;
pub mod heap;
pub mod ipam;
pub mod persist;
pub mod policy;
pub mod pool;
pub mod probe;
pub mod server;
pub mod services;
pub mod status;
pub mod svc_health;
pub mod uninstall;

pub use agent::{Agent, Readiness};
pub use controller::{run, run_with, run_with_options, RunOptions, TUNNEL_DEVICE};
pub use status::{read_refusal, read_status, status_socket_path, AgentStatus, Refusal};
pub use uninstall::{uninstall, UninstallError, UninstallOptions, UninstallReport};
