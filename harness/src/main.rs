use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::exit::{self, Verbosity};

/// dfbench: train and compare deepfake detectors under declarative protocols.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print only errors and final results.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more detail (per-step logs, resolved configuration).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Expand a protocol into runs, train, score every test set and store the results.
    #[command(after_help = "Example:\n  bench run protocols/cross_dataset.toml --seeds 0")]
    Run(harness::runner::RunArgs),
    /// Score images, folders or a dataset JSON with a trained run's detector.
    #[command(after_help = "Examples:\n  bench predict --run results/runs/cross_dataset/cs-dfd-s0-d9e84e4c74e0 faces/ --out scores.csv\n  bench predict --run RUN_DIR data/synth/dataset_json/UADFV.json --out uadfv.csv\n  bench eval uadfv.csv --group dataset")]
    Predict(harness::predict::PredictArgs),
    /// Regenerate tables and plots from stored results.
    #[command(after_help = "Example:\n  bench report results/runs/cross_dataset")]
    Report(harness::report::ReportArgs),
    /// Compute metrics of any detector's scores from a CSV file.
    #[command(after_help = "Example:\n  bench eval scores.csv --score score --label label --video video --group dataset --out metrics.json")]
    Eval(harness::eval::EvalArgs),
    /// Generate the embedded synthetic benchmark or check a dataset.
    #[command(after_help = "Examples:\n  bench data synth --out data/synth --preset small --seed 0\n  bench data check data/synth")]
    Data(harness::data::DataArgs),
    /// Check a protocol file and print the runs it expands to.
    #[command(after_help = "Example:\n  bench validate protocols/cross_dataset.toml")]
    Validate(harness::plan::ValidateArgs),
    /// Write an sbatch array script running one shard of a protocol's plan per task.
    #[command(after_help = "Examples:\n  bench slurm protocols/cross_dataset.toml --shards 8 --partition gpu --time 04:00:00 --cpus-per-task 8 --mem 32G --gres gpu:1\n  bench slurm protocols/optimizers.toml --shards 4 --out /shared/runs --data-cache /shared/data-cache -- --seeds 0 --no-weights\n  sbatch slurm/cross_dataset.sbatch")]
    Slurm(harness::slurm::SlurmArgs),
    /// List complete, failed, interrupted and missing runs of a results directory (per shard).
    #[command(after_help = "Examples:\n  bench status results/runs\n  bench status results/runs --protocol protocols/cross_dataset.toml --shards 8\nExit status: 0 all complete, 1 some failed or missing, 2 bad usage.")]
    Status(harness::status::StatusArgs),
    /// Inspect a weights file (safetensors or PyTorch checkpoint) and find the backbone it fits.
    #[command(after_help = "Example:\n  bench weights inspect efficientnet-b4-6ed6700e.pth")]
    Weights(harness::weights_cmd::WeightsArgs),
    /// Write the pooled backbone features of images or of a tensor file.
    #[command(after_help = "Examples:\n  bench features --backbone tf-efficientnet-b4 --weights efficientnet-b4-6ed6700e.pth --size 256 faces/ --out feats.npy\n  bench features --backbone resnet18 --weights resnet18.safetensors --size 64 x.safetensors --out y.safetensors\n  bench features --run RUN_DIR data/synth/dataset_json/UADFV.json --out uadfv.csv")]
    Features(harness::features::FeaturesArgs),
    /// List the known methods, backbones, datasets and shipped protocols.
    #[command(after_help = "Example:\n  bench list")]
    List(harness::list::ListArgs),
}

fn main() -> ExitCode {
    harness::configure_process();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::BAD_CONFIG } else { exit::SUCCESS };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let result = match cli.command {
        Command::Run(a) => harness::runner::cmd_run(a, verbosity),
        Command::Predict(a) => harness::predict::cmd_predict(a, verbosity),
        Command::Report(a) => harness::report::cmd_report(a, verbosity),
        Command::Eval(a) => harness::eval::cmd_eval(a, verbosity),
        Command::Data(a) => harness::data::cmd_data(a, verbosity),
        Command::Validate(a) => harness::plan::cmd_validate(a, verbosity),
        Command::Slurm(a) => harness::slurm::cmd_slurm(a, verbosity),
        Command::Status(a) => harness::status::cmd_status(a, verbosity),
        Command::Weights(a) => harness::weights_cmd::cmd_weights(a, verbosity),
        Command::Features(a) => harness::features::cmd_features(a, verbosity),
        Command::List(a) => harness::list::cmd_list(a, verbosity),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of(&e)
        }
    }
}
