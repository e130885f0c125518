//! Data: dataset indexes (DeepfakeBench JSON, folder trees), loading, SBI synthesis, the
//! embedded synthetic benchmark and `bench data`.
pub mod check;
pub mod index;
pub mod jpeg;
pub mod loader;
pub mod preflight;
pub mod preview;
pub mod sbi;
pub mod synth;

use std::process::ExitCode;

use crate::exit::Verbosity;

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write the embedded synthetic face-forgery benchmark in DeepfakeBench layout.
    Synth(synth::SynthArgs),
    /// Count and check a dataset root or a DeepfakeBench JSON.
    Check(check::CheckArgs),
    /// Draw the training batches a protocol feeds the model (after augmentation and SBI) to a PNG.
    Preview(preview::PreviewArgs),
}

pub fn cmd_data(args: DataArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Synth(a) => synth::cmd_synth(a, v),
        DataCommand::Check(a) => check::cmd_check(a, v),
        DataCommand::Preview(a) => preview::cmd_preview(a, v),
    }
}
