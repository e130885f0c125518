//! `bench list`: known methods, backbones, datasets and shipped protocols.
use std::process::ExitCode;

use crate::exit::Verbosity;

#[derive(Debug, clap::Args)]
pub struct ListArgs {}

pub fn cmd_list(_args: ListArgs, _v: Verbosity) -> anyhow::Result<ExitCode> {
    for m in detectors::methods::registry() {
        println!("method    {:<10} {}", m.kind, m.help);
    }
    for b in detectors::backbones::registry() {
        println!("backbone  {:<16} {}", b.name, b.description);
    }
    Ok(ExitCode::SUCCESS)
}
