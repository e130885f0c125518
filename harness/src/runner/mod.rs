//! `bench run`: plan -> training runs -> stored results. (Filled by the `bench run` issue.)
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Protocol file.
    pub protocol: PathBuf,
}

pub fn cmd_run(args: RunArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench run` is not available in this build yet", args.protocol.display())).into())
}

pub mod env;
pub mod progress;
