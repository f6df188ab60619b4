//! `CNI_COMMAND`: the operations of spec 1.1.

use std::fmt;
use std::str::FromStr;

use fibril_core::cni_api::CniVersion;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// A `CNI_COMMAND` that is not one of the spec's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI_COMMAND {value:?}: expected one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
pub struct UnknownCommand {
    pub value: String,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The first spec version that has this command (skel refuses older configs with code 1).
    pub fn since(self) -> CniVersion {
        match self {
            Command::Add | Command::Del | Command::Version => CniVersion(0, 1, 0),
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
        }
    }
}

impl FromStr for Command {
    type Err = UnknownCommand;
    /// Case-sensitive, as runtimes send it and libcni's skel matches it.
    fn from_str(s: &str) -> Result<Self, UnknownCommand> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCommand {
                value: s.to_owned(),
            })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_unknown_is_refused() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>().unwrap(), c);
        }
        assert!("FOO".parse::<Command>().is_err());
        assert!("add".parse::<Command>().is_err());
        assert_eq!(Command::Gc.since(), CniVersion::V1_1_0);
    }
}
