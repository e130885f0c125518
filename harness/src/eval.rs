//! `bench eval`: metrics of any detector's scores from a CSV file.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// CSV file with one row per frame.
    pub scores: PathBuf,
}

pub fn cmd_eval(args: EvalArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench eval` is not available yet", args.scores.display())).into())
}
