//! fibril's CNI plugin (spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION).
//!
//! The plugin does no networking itself. It validates the invocation (environment, network
//! config, version), forwards it to the node agent over the agent's unix socket with the
//! protocol of [`fibril_core::cni_api`], and turns the answer into the runtime's reply. Every
//! failure becomes the spec's error JSON on stdout in one place, [`CniError::into_reply`];
//! logs go to stderr or the config's `logFile`.
//!
//! The binary (`main.rs`) only gathers the process's environment and stdin and calls [`run`].

pub mod client;
pub mod command;
pub mod config;
pub mod env;
pub mod error;
pub mod log;
pub mod plugin;
pub mod version;

pub use command::Command;
pub use error::{CniError, ErrorReply};
pub use plugin::{run, Outcome};
