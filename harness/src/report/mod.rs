//! `bench report`: tables and plots from stored results. (Filled by the `bench run` issue.)
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A protocol's results directory.
    pub dir: PathBuf,
}

pub fn cmd_report(args: ReportArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench report` is not available in this build yet", args.dir.display())).into())
}
