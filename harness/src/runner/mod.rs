//! `bench run`: protocol -> plan -> for each pending run: train with periodic validation, select
//! the model by the protocol's rule (never on a test set), score every test set, store results.
//!
//! A run directory counts as complete only when its manifest says so; complete runs are skipped
//! on a re-run (so a crash or kill loses at most the run in progress), `--force` redoes them.
pub mod env;
pub mod progress;
pub mod signals;
pub mod train;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;

use crate::exit::{CliError, Verbosity};
use crate::plan::{self, Run};
use crate::protocol::Precision;
use crate::results::{self, Failure, GitInfo, Manifest, ReportSpec, ResultsStore, RunStatus, Versions};
use progress::Progress;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Protocol file.
    pub protocol: PathBuf,
    /// Run only this method (by its name in the protocol); repeatable.
    #[arg(long = "only", value_name = "METHOD")]
    pub only: Vec<String>,
    /// Seeds to run instead of the protocol's, comma-separated (e.g. `--seeds 0` or `--seeds 0,1`).
    #[arg(long, value_delimiter = ',', value_name = "SEEDS")]
    pub seeds: Vec<u64>,
    /// Device instead of the protocol's: `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// TF32 tensor cores for f32 matmuls and convolutions on CUDA, instead of every run's
    /// `training.tf32` (default on, as PyTorch on Ampere and later GPUs): `on` or `off`. Off
    /// enters the run ids, as the key does.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub tf32: Option<bool>,
    /// Results root; runs go to `<out>/<protocol>/<run-id>/`.
    #[arg(long, default_value = "results/runs")]
    pub out: PathBuf,
    /// Where the embedded synthetic benchmark is generated and cached.
    #[arg(long, default_value = "data-cache", value_name = "DIR")]
    pub data_cache: PathBuf,
    /// Print the plan with each run's status and exit without training.
    #[arg(long)]
    pub dry_run: bool,
    /// Redo runs that are already complete.
    #[arg(long)]
    pub force: bool,
    /// Memory of this machine to plan with (e.g. `64G`) [default: the available memory, for CPU runs].
    #[arg(long, value_name = "SIZE", value_parser = crate::budget::parse_size)]
    pub max_memory: Option<u64>,
    /// Do not store each run's trained weights (`weights.safetensors`, needed by `bench predict`).
    #[arg(long)]
    pub no_weights: bool,
    /// Run only shard I of N (I in 0..N): a balanced partition of the plan by sorted run id (sizes
    /// differ by at most one), so N processes (e.g. a Slurm array with
    /// `--shard $SLURM_ARRAY_TASK_ID/N`) cover every run exactly once.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
}

/// One part of a partition of the plan: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// The runs of `runs` that fall into this shard (see [`assign_shards`]).
    pub fn select<'a>(&self, runs: &'a [Run]) -> Vec<&'a Run> {
        let shard = assign_shards(runs.iter().map(|r| r.id.as_str()), self.count);
        runs.iter().filter(|r| shard.get(r.id.as_str()) == Some(&self.index)).collect()
    }
}

/// A balanced partition of a plan: the run ids sorted, the k-th goes to shard k mod count, so
/// shard sizes differ by at most one. It depends on the set of ids alone (each a hash of the
/// fully resolved configuration), not on their order or the machine, so N processes given the
/// same protocol and the same `--seeds`/`--only` agree on it.
pub fn assign_shards<'a>(ids: impl IntoIterator<Item = &'a str>, count: u64) -> BTreeMap<&'a str, u64> {
    let sorted: BTreeSet<&str> = ids.into_iter().collect();
    sorted.into_iter().zip((0..count.max(1)).cycle()).collect()
}

/// The runs `bench run --seeds S --only M` considers (before sharding and before skipping
/// complete ones), in plan order.
pub fn select_runs(protocol: &crate::protocol::Protocol, seeds: &[u64], only: &[String]) -> Vec<Run> {
    let mut p = protocol.clone();
    if !seeds.is_empty() {
        p.seeds = seeds.to_vec();
    }
    plan::expand(&p).into_iter().filter(|r| only.is_empty() || only.contains(&r.config.method.name)).collect()
}

/// `--only` names must be methods of the protocol (the tasks would all fail on a typo).
pub fn check_only(protocol: &crate::protocol::Protocol, only: &[String], path: &Path) -> Result<(), CliError> {
    let names: Vec<&str> = protocol.methods.iter().map(|m| m.method.name.as_str()).collect();
    for name in only {
        if !names.contains(&name.as_str()) {
            let hint = crate::protocol::suggest(name, names.iter().copied())
                .first()
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(CliError::config(format!(
                "--only {name}: no method of that name in {} (methods: {}){hint}",
                path.display(),
                names.join(", ")
            )));
        }
    }
    Ok(())
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected I/N, e.g. 0/4"))?;
    let index: u64 = i.trim().parse().map_err(|_| format!("`{s}`: shard index `{i}` is not a number"))?;
    let count: u64 = n.trim().parse().map_err(|_| format!("`{s}`: shard count `{n}` is not a number"))?;
    if count == 0 || index >= count {
        return Err(format!("`{s}`: expected 0 <= I < N"));
    }
    Ok(Shard { index, count })
}

/// Everything a run needs that is shared across the runs of one invocation.
pub struct RunContext {
    pub data_cache: PathBuf,
    pub verbosity: Verbosity,
    pub save_weights: bool,
    /// Dataset indexes and decoded-frame caches, built on first use and reused by every run.
    pub data: train::DataCache,
}

pub fn cmd_run(args: RunArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let mut protocol = plan::load_or_report(&args.protocol)?;
    let mut seen = BTreeSet::new();
    if let Some(twice) = args.seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(CliError::config(format!(
            "--seeds: seed {twice} is given twice (each seed is one run per method; list it once)"
        ))
        .into());
    }
    if !args.seeds.is_empty() {
        protocol.seeds = args.seeds.clone();
    }
    if let Some(device) = &args.device {
        protocol.device = device.clone();
    }
    if let Some(on) = args.tf32 {
        protocol.training.tf32 = on;
        for m in &mut protocol.methods {
            m.training.tf32 = on;
        }
    }
    check_only(&protocol, &args.only, &args.protocol)?;
    let mut runs: Vec<Run> = select_runs(&protocol, &[], &args.only);
    if let Some(shard) = args.shard {
        runs = shard.select(&runs).into_iter().cloned().collect();
    }
    plan::check_feasible(&runs, args.max_memory, &args.protocol)?;
    let store = ResultsStore::new(&args.out);
    let pending: Vec<&Run> = runs
        .iter()
        .filter(|r| args.force || !results::is_complete_and_intact(&store.protocol_dir(&protocol.name).join(&r.id)))
        .collect();

    if args.dry_run {
        detectors::device::check(&protocol.device)
            .map_err(|e| CliError::config(format!("{}: device: {e}", args.protocol.display())))?;
        println!("{:<40} {:<12} {:<6} {:<10} status", "run", "method", "seed", "fold");
        for r in &runs {
            let done = results::is_complete_and_intact(&store.protocol_dir(&protocol.name).join(&r.id));
            let status = if done && !args.force { "complete (skipped)" } else { "pending" };
            let fold = r.config.fold.as_deref().unwrap_or("-");
            println!("{:<40} {:<12} {:<6} {:<10} {status}", r.id, r.config.method.name, r.config.seed, fold);
        }
        println!("{} runs, {} to do", runs.len(), pending.len());
        return Ok(ExitCode::SUCCESS);
    }

    // Data pre-flight: every set of every pending run is indexed and its frames stat'ed before a
    // minute of training is spent.
    if crate::data::preflight::applies(&pending) {
        let pf = crate::data::preflight::preflight(&pending);
        if verbosity != Verbosity::Quiet || !pf.ok() {
            eprint!("{}", pf.render());
        }
        if !pf.ok() {
            return Err(CliError::failed(format!(
                "{}: data pre-flight failed ({} error(s)); nothing was trained",
                args.protocol.display(),
                pf.errors.len()
            ))
            .into());
        }
    }

    // The device is opened once up front so that asking for CUDA from a CPU build is a
    // configuration error (exit 2), not a failure of every run. TF32 is set before it opens
    // (and again before each run, which may set `training.tf32` otherwise).
    detectors::device::set_tf32(pending.first().map_or(protocol.training.tf32, |r| r.config.training.tf32));
    let device = detectors::device::open(&protocol.device)
        .map_err(|e| CliError::config(format!("{}: device: {e}", args.protocol.display())))?;
    if pending.iter().any(|r| r.config.training.precision == Precision::Bf16) {
        check_bf16(&device).map_err(|e| {
            CliError::config(format!(
                "{}: training.precision = \"bf16\": device `{}` cannot run bf16 convolutions and matmuls ({e}); \
                 use \"f32\" or a GPU with bf16 support (compute capability 8.0 or later)",
                args.protocol.display(),
                protocol.device
            ))
        })?;
    }

    let mut ctx = RunContext {
        data_cache: args.data_cache.clone(),
        verbosity,
        save_weights: !args.no_weights,
        data: train::DataCache::default(),
    };
    let mut progress = Progress::new(pending.len(), verbosity);
    progress.println(&format!(
        "{}: {} runs, {} complete, {} to do -> {}",
        protocol.name,
        runs.len(),
        runs.len() - pending.len(),
        pending.len(),
        store.protocol_dir(&protocol.name).display()
    ));
    let report = ReportSpec {
        baseline: protocol.report.baseline.clone(),
        tables: protocol.report.tables.clone(),
        plots: protocol.report.plots.clone(),
        noise_floor: protocol.report.noise_floor.clone(),
    };
    let repo_dir = args.protocol.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let git = env::git_state(repo_dir);
    if let (Some((tree, _)), Some((built, _))) = (&git, env::build_git_state())
        && *tree != built
    {
        progress.println(&format!(
            "warning: bench was built from commit {} but {} is at {}; the manifests record both",
            &built[..12.min(built.len())],
            repo_dir.display(),
            &tree[..12.min(tree.len())]
        ));
    }
    let mut failed = Vec::new();
    let holder = format!("{} {}", env::host(), std::process::id());
    signals::install().context("installing the SIGINT/SIGTERM handlers")?;
    let resume = format!("bench run {} --out {}", args.protocol.display(), args.out.display());
    let mut finished: Vec<RunAucs> = Vec::new();
    for run in pending {
        if let Some(sig) = signals::received() {
            progress.finish();
            eprintln!("stopped by {}; to resume (complete runs are skipped): {resume}", signals::name(sig));
            return Ok(ExitCode::from(signals::exit_code(sig)));
        }
        let run_dir = store.create(&protocol.name, &run.id)?;
        // One writer per run: a second `bench run` on the same --out (another terminal, a Slurm
        // task given the same shard) moves on to the next run instead of training this one again.
        let _lock = match run_dir.try_lock(&holder)? {
            results::LockOutcome::Acquired(lock) => lock,
            results::LockOutcome::HeldBy(who) => {
                progress.println(&format!("run {} is being trained by {who}; skipped", run.id));
                progress.finish_run("skipped (locked)");
                continue;
            }
        };
        // The plan was made before the lock: another process may have completed the run since.
        if !args.force && results::is_complete_and_intact(run_dir.path()) {
            progress.println(&format!("run {} was completed by another process; skipped", run.id));
            progress.finish_run("skipped (complete)");
            continue;
        }
        run_dir.remove_stale_temporaries()?;
        let mut manifest = new_manifest(run, &report, &device, git.as_ref())?;
        run_dir.write_manifest(&manifest)?;
        let outcome = train::execute(run, &run_dir, &device, &mut ctx, &mut progress);
        manifest.ended = Some(now());
        match outcome {
            Ok(out) => {
                manifest.status = RunStatus::Complete;
                manifest.skipped_files = out.skipped_files;
                manifest.notes.extend(out.notes);
                manifest.files = run_dir.digest_files(ctx.save_weights)?;
                manifest.data = results::DataUsage {
                    frames_used: out.frames_used,
                    leakage: out.leakage,
                    train_batches: out.train_batches,
                    real_fake_ratio: out.real_fake_ratio,
                };
                run_dir.write_manifest(&manifest)?;
                finished.push((run.id.clone(), out.auc));
                progress.finish_run("complete");
            }
            Err(failure) if signals::received().is_some() => {
                let sig = signals::received().unwrap_or_default();
                manifest.status = RunStatus::Interrupted;
                manifest.failure = Some(failure);
                run_dir.write_manifest(&manifest)?;
                progress.finish_run("interrupted");
                progress.finish();
                eprintln!(
                    "run {} interrupted by {}; to resume (complete runs are skipped): {resume}",
                    run.id,
                    signals::name(sig)
                );
                return Ok(ExitCode::from(signals::exit_code(sig)));
            }
            Err(failure) if out_of_disk(&failure.reason) => {
                manifest.status = RunStatus::Failed;
                manifest.failure = Some(failure.clone());
                // The manifest may not fit either; the message below says what happened.
                let _ = run_dir.write_manifest(&manifest);
                progress.finish_run("failed");
                progress.finish();
                return Err(CliError::failed(format!(
                    "run {}: {}; stopped, since the next runs would fail alike: free space, then run \
                     the same command again (complete runs are skipped)",
                    run.id, failure.reason
                ))
                .into());
            }
            Err(failure) => {
                // Why a run failed is an error message: printed under -q too.
                progress.error(&format!(
                    "run {} failed{}: {}",
                    run.id,
                    failure.step.map(|s| format!(" at step {s}")).unwrap_or_default(),
                    failure.reason
                ));
                manifest.status = RunStatus::Failed;
                manifest.failure = Some(failure);
                run_dir.write_manifest(&manifest)?;
                progress.finish_run("failed");
                failed.push(run.id.clone());
            }
        }
    }
    progress.finish();
    if verbosity != Verbosity::Quiet && !finished.is_empty() {
        print!("{}", auc_table(&finished));
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::failed(format!("{} run(s) failed: {}", failed.len(), failed.join(", "))).into())
    }
}

/// One bf16 convolution and matmul with their backward on `device`, as a bf16 run's layers
/// perform them: an error here is a configuration error, reported before any run starts.
pub fn check_bf16(device: &candle_core::Device) -> candle_core::Result<()> {
    use candle_core::{DType, Tensor, Var};
    let x = Tensor::ones((1, 2, 4, 4), DType::F32, device)?;
    let w = Var::from_tensor(&Tensor::ones((3, 2, 3, 3), DType::F32, device)?)?;
    let m = Var::from_tensor(&Tensor::ones((3, 2), DType::F32, device)?)?;
    let y = x.to_dtype(DType::BF16)?.conv2d(&w.as_tensor().to_dtype(DType::BF16)?, 1, 1, 1, 1)?;
    let z = y.to_dtype(DType::F32)?.mean(3)?.mean(2)?;
    let z = z.to_dtype(DType::BF16)?.matmul(&m.as_tensor().to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?;
    let grads = z.sum_all()?.backward()?;
    let g = grads.get(w.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no weight gradient".into()))?;
    // 2 input channels x 9 taps of ones, all inside a padded 4x4 map on average: a sane value.
    let s = g.sum_all()?.to_scalar::<f32>()?;
    if !s.is_finite() || s <= 0.0 {
        candle_core::bail!("a bf16 convolution's weight gradient came out as {s}");
    }
    Ok(())
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("`{s}`: expected `on` or `off`")),
    }
}

fn new_manifest(
    run: &Run,
    report: &ReportSpec,
    device: &candle_core::Device,
    git: Option<&(String, bool)>,
) -> anyhow::Result<Manifest> {
    let c = &run.config;
    let mut m = Manifest::new(
        run.id.clone(),
        c.protocol.clone(),
        c.method.name.clone(),
        c.method.kind.clone(),
        c.method.display.clone(),
        c.model.backbone.clone(),
        c.seed,
    );
    m.fold = c.fold.clone();
    m.sweep = c
        .sweep
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v)?)))
        .collect::<serde_json::Result<_>>()?;
    m.config = serde_json::to_value(c).context("serialising the run configuration")?;
    let build = env::build_git_state();
    m.git = GitInfo {
        commit: git.map(|g| g.0.clone()),
        dirty: git.map(|g| g.1),
        build_commit: build.as_ref().map(|b| b.0.clone()),
        build_dirty: build.and_then(|b| b.1),
    };
    let mut crates = env::versions();
    m.versions = Versions {
        dfbench: crates.remove("dfbench").unwrap_or_default(),
        candle: crates.remove("candle-core"),
        rustc: crates.remove("rustc"),
        crates,
    };
    m.device = detectors::device::describe(device);
    m.precision = Some(c.training.precision.name().to_string());
    m.tf32 = (!device.is_cpu()).then_some(c.training.tf32);
    m.host = env::host();
    m.started = Some(now());
    m.report = report.clone();
    if let Some(note) = &c.method.note {
        m.notes.push(note.clone());
    }
    Ok(m)
}

/// A run id and its frame-level AUC per test set (`None`: undefined).
pub type RunAucs = (String, Vec<(String, Option<f64>)>);

/// Frame-level AUC of each finished run per test set, and their mean (AVG, over the defined ones).
pub fn auc_table(runs: &[RunAucs]) -> String {
    use std::fmt::Write;
    let mut sets: Vec<&str> = Vec::new();
    for (_, aucs) in runs {
        for (name, _) in aucs {
            if !sets.contains(&name.as_str()) {
                sets.push(name);
            }
        }
    }
    let id_w = runs.iter().map(|r| r.0.len()).max().unwrap_or(3).max(3);
    let widths: Vec<usize> = sets.iter().map(|s| s.chars().count().max(6)).collect();
    let mut s = String::new();
    let _ = write!(s, "{:<id_w$}", "run");
    for (name, w) in sets.iter().zip(&widths) {
        let _ = write!(s, "  {name:>w$}");
    }
    let _ = writeln!(s, "  {:>6}", "AVG");
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (id, aucs) in runs {
        let _ = write!(s, "{id:<id_w$}");
        for (name, w) in sets.iter().zip(&widths) {
            let v = aucs.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
            let _ = write!(s, "  {:>w$}", cell(v));
        }
        let defined: Vec<f64> = aucs.iter().filter_map(|(_, v)| *v).collect();
        let avg = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
        let _ = writeln!(s, "  {:>6}", cell(avg));
    }
    let _ = writeln!(s, "(frame-level AUC per test set; - = undefined, e.g. a test set with one class)");
    s
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Converts any error of a run into a failure record (the step is unknown here). A backtrace
/// some library appended to its message is cut off: manifests and `bench status` carry what went
/// wrong, not where in the code.
pub fn failure(step: Option<u64>, err: impl std::fmt::Display) -> Failure {
    Failure { step, reason: without_backtrace(&err.to_string()) }
}

/// `text` up to the first line of a std backtrace (`stack backtrace:`, `   0: frame`, or
/// `disabled backtrace`).
pub fn without_backtrace(text: &str) -> String {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        l.len() > t.len() && t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim() == "stack backtrace:" || line.trim() == "disabled backtrace" || is_frame(line) {
            break;
        }
        out.push(line);
    }
    out.join("\n").trim_end().to_string()
}

/// Whether an error message says the disk (or the user's quota) is full: ENOSPC (os error 28)
/// or EDQUOT (os error 122). Failures travel as text, so this reads the io::Error's wording.
fn out_of_disk(reason: &str) -> bool {
    reason.contains("(os error 28)") || reason.contains("(os error 122)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_run_ids_in_balanced_parts() {
        let ids: Vec<String> = (0..200).map(|i| format!("run-{i}")).collect();
        for count in [1u64, 2, 3, 7, 15, 16, 250] {
            let shard = assign_shards(ids.iter().map(String::as_str), count);
            assert_eq!(shard.len(), ids.len(), "every id has one shard");
            let mut sizes = vec![0usize; count as usize];
            for &s in shard.values() {
                sizes[s as usize] += 1;
            }
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{count} shards: sizes {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), 200);
        }
        // 15 runs in 4 shards: 4/4/4/3 (a hash partition gave 4/2/6/3).
        let fifteen: Vec<String> = (0..15).map(|i| format!("r{i:02}")).collect();
        let shard = assign_shards(fifteen.iter().map(String::as_str), 4);
        let sizes: Vec<usize> = (0..4).map(|s| shard.values().filter(|&&v| v == s).count()).collect();
        assert_eq!(sizes, [4, 4, 4, 3]);
        // Fixed partition, pinned: sorted ids in turn, whatever order they come in.
        let ids = ["o-s1-bb", "cs-dfd-s0-d9e84e4c74e0", "s-s0-aa", "o-s0-cc", "roga-s0-dd"];
        let shard = assign_shards(ids, 2);
        assert_eq!(shard["cs-dfd-s0-d9e84e4c74e0"], 0);
        assert_eq!(shard["o-s0-cc"], 1);
        assert_eq!(shard["o-s1-bb"], 0);
        assert_eq!(shard["roga-s0-dd"], 1);
        assert_eq!(shard["s-s0-aa"], 0);
    }

    #[test]
    fn backtraces_are_cut_from_failure_reasons() {
        let candle_like = "shape mismatch in matmul, lhs: [8, 3], rhs: [4, 2]\n   0: candle_core::error::Error::bt\n             at src/error.rs:1\n   1: harness::x";
        assert_eq!(without_backtrace(candle_like), "shape mismatch in matmul, lhs: [8, 3], rhs: [4, 2]");
        let two_lines = "reading a.png: bad header\ncaused by: truncated\nstack backtrace:\n  0: x";
        assert_eq!(without_backtrace(two_lines), "reading a.png: bad header\ncaused by: truncated");
        assert_eq!(without_backtrace("step 3: 10: not a frame"), "step 3: 10: not a frame");
        assert!(out_of_disk("writing x: No space left on device (os error 28)"));
        assert!(!out_of_disk("loss is NaN (os error 2)"));
    }

    #[test]
    fn shard_syntax() {
        assert_eq!(parse_shard("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("0/0").is_err());
        assert!(parse_shard("x/2").is_err());
        assert!(parse_shard("3").is_err());
    }
}
