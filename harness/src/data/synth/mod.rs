//! The embedded synthetic face-forgery benchmark (docs/synthetic-benchmark.md).
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn cmd_synth(args: SynthArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    Err(CliError::config(format!("{}: `bench data synth` is not available yet", args.out.display())).into())
}
