//! `bench data check`: counts and problems of a dataset.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A data root or a DeepfakeBench dataset JSON.
    pub target: PathBuf,
}

pub fn cmd_check(args: CheckArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench data check` is not available yet", args.target.display())).into())
}
