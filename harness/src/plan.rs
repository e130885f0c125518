//! Plan expansion: protocol -> runs with stable ids; `bench validate`.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Protocol file.
    pub protocol: PathBuf,
}

pub fn cmd_validate(args: ValidateArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench validate` is not available yet", args.protocol.display())).into())
}
