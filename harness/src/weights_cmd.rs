//! `bench weights inspect FILE [--backbone NAME]`: what a weights file holds and which backbone
//! it loads into, with the loader's own name mapping (see `detectors::weights`).
use std::path::PathBuf;
use std::process::ExitCode;

use detectors::weights::{Fit, fit, read_tensors};

use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// List a safetensors file's or PyTorch checkpoint's tensors and match them to a backbone.
    #[command(after_help = "Examples:\n  bench weights inspect efficientnet-b4-6ed6700e.pth\n  bench weights inspect xception-b5690688.pth --backbone xception\nExit status: 0 the file fits (the named or some backbone), 1 it does not, 2 bad usage.")]
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A .safetensors file or a PyTorch checkpoint (.pth/.pt/.bin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Match against this backbone: matched, missing, unexpected and mis-shaped names.
    /// Without it, every registered backbone is tried and the ones that fit are listed.
    #[arg(long, value_name = "NAME")]
    pub backbone: Option<String>,
    /// Image size the backbone is built for (only ViT's position embeddings depend on it).
    #[arg(long, default_value_t = 224, value_name = "N")]
    pub size: usize,
    /// Print every tensor (default: the first 20) and every unmatched name.
    #[arg(long)]
    pub all: bool,
}

pub fn cmd_weights(args: WeightsArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    match args.command {
        WeightsCommand::Inspect(a) => inspect(a, verbosity),
    }
}

fn list(title: &str, names: &[String], all: bool) {
    if names.is_empty() {
        return;
    }
    println!("  {title} ({}):", names.len());
    let shown = if all { names.len() } else { names.len().min(10) };
    for n in &names[..shown] {
        println!("    {n}");
    }
    if shown < names.len() {
        println!("    ... {} more (--all lists them)", names.len() - shown);
    }
}

fn print_fit(f: &Fit, all: bool) {
    println!(
        "{}: {} matched, {} missing, {} unexpected, {} mis-shaped, {} ignored{}",
        f.backbone,
        f.matched.len(),
        f.missing.len(),
        f.unexpected.len(),
        f.mismatched.len(),
        f.ignored.len(),
        if f.is_exact() { " - loads" } else { "" }
    );
    list("missing in the file", &f.missing, all);
    list("unexpected in the file", &f.unexpected, all);
    list("mis-shaped", &f.mismatched, all);
    if all {
        list("ignored", &f.ignored, all);
    }
}

fn inspect(args: InspectArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    if !args.file.is_file() {
        return Err(CliError::config(format!("{}: no such file", args.file.display())).into());
    }
    let tensors = read_tensors(&args.file).map_err(|e| CliError::config(e.to_string()))?;
    let values: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!("{}: {} tensors, {values} values", args.file.display(), tensors.len());
    if verbosity != Verbosity::Quiet {
        let shown = if args.all { tensors.len() } else { tensors.len().min(20) };
        for (n, t) in &tensors[..shown] {
            println!("  {n}  {:?} {:?}", t.dtype(), t.dims());
        }
        if shown < tensors.len() {
            println!("  ... {} more (--all lists them)", tensors.len() - shown);
        }
    }
    let registry = detectors::backbones::registry();
    match &args.backbone {
        Some(name) => {
            if detectors::backbones::find(name).is_none() {
                let known: Vec<&str> = registry.iter().map(|b| b.name).collect();
                return Err(CliError::config(format!("unknown backbone `{name}` (known: {})", known.join(", "))).into());
            }
            let f = fit(&tensors, name, args.size).map_err(|e| CliError::config(e.to_string()))?;
            print_fit(&f, args.all);
            Ok(if f.is_exact() { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::SOME_FAILED) })
        }
        None => {
            let mut fits = Vec::new();
            for b in registry {
                // A backbone that cannot be built at this size is no candidate.
                if let Ok(f) = fit(&tensors, b.name, args.size.max(detectors::backbones::min_image_size(b.name).unwrap_or(0))) {
                    fits.push(f);
                }
            }
            // efficientnet_pytorch's names hold TF-trained weights that its own code runs with
            // padding fixed for the nominal size: that variant first, then timm's TF port (timm's
            // two variants share names and are not told apart).
            let lukemelas = tensors.iter().any(|(n, _)| n.contains("_conv_stem.") || n.contains("_blocks."));
            let rank = |f: &Fit| match (lukemelas, f.backbone.as_str()) {
                (true, b) if b.starts_with("efficientnet-pytorch-") => 2,
                (true, b) if b.starts_with("tf-") => 1,
                _ => 0,
            };
            fits.sort_by(|a, b| {
                b.is_exact()
                    .cmp(&a.is_exact())
                    .then(b.score().total_cmp(&a.score()))
                    .then(rank(b).cmp(&rank(a)))
            });
            let exact: Vec<&Fit> = fits.iter().filter(|f| f.is_exact()).collect();
            if exact.is_empty() {
                println!("no registered backbone loads this file; the closest:");
                for f in fits.iter().take(3) {
                    print_fit(f, args.all);
                }
                return Ok(ExitCode::from(crate::exit::SOME_FAILED));
            }
            println!("loads into (best first):");
            for f in &exact {
                println!(
                    "  {}  ({} tensors matched, {} ignored)",
                    f.backbone,
                    f.matched.len(),
                    f.ignored.len()
                );
            }
            if lukemelas {
                println!(
                    "efficientnet_pytorch names: efficientnet-pytorch-* computes what efficientnet_pytorch does \
                     (padding fixed for 224/380 px); tf-efficientnet-* pads for each input's size, as timm"
                );
            } else if exact.iter().any(|f| f.backbone.contains("efficientnet")) {
                println!(
                    "note: efficientnet-b* (timm efficientnet_b*) and tf-efficientnet-b* (timm tf_efficientnet_b*) \
                     share names but not padding; use the one the weights were trained with"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
