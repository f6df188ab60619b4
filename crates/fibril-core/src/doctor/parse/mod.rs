//! Readers for each export format. Each returns typed values and pushes a finding for
//! whatever it could not read, instead of failing.

pub mod cilium;
pub mod fibril;
pub mod host;
pub mod k8s;
