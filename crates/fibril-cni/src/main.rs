//! `fibril-cni`: run by the container runtime once per CNI command.

use std::io::{self, Write};
use std::process::ExitCode;

use fibril_cni::env::RawEnv;
use fibril_cni::log::Log;

fn main() -> ExitCode {
    let mut log = Log::stderr();
    let outcome = fibril_cni::run(&RawEnv::from_process(), &mut io::stdin().lock(), &mut log);
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush())
    {
        log.error(format_args!("writing the reply to stdout: {e}"));
        return ExitCode::FAILURE;
    }
    ExitCode::from(outcome.exit_code)
}
