//! fibril-core: pure logic and types shared by every fibril crate.
//!
//! Nothing in here performs I/O. Privileged work (netlink, bpf, netns) lives in
//! thin crates on top of these types, so that all of this is testable without root.

pub mod agent_config;
/// CIDR arithmetic, shared by the doctor and IPAM.
pub mod cidr;
pub mod cni_api;
pub mod consts;
pub mod doctor;
pub mod ipam;
pub mod kinds;
pub mod lab;
pub mod manifest;
pub mod policy;
pub mod services;
