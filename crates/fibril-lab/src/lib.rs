//! fibril-lab: a Kubernetes-shaped cluster built from network namespaces and processes.
//!
//! One lab = a fabric netns (the L2 underlay), a control-plane netns running the API
//! server and controllers, N node netns each running a kubelet and a node agent, and a
//! world netns behind a router. Nothing is added to the root network namespace.

pub mod addons;
pub mod cni;
pub mod controllers;
pub mod fibril_cni;
pub mod kubelet;
pub mod lab;
pub mod node_agent;
pub mod supervisor;
pub mod topology;
pub mod workload;
