//! Scale-out onto Slurm: `bench slurm` writes an sbatch array script with one task per shard of
//! the plan (`bench run P.toml --shard $SLURM_ARRAY_TASK_ID/N`), and `bench status` tells which
//! runs of a (merged) results directory are complete, failed, interrupted or missing, per shard.
//!
//! Every shard writes its own run directories under the same `<out>/<protocol>/`; a run counts as
//! complete only when its manifest says so, so re-submitting a shard (or the whole array) is safe:
//! complete runs are skipped and failed or interrupted ones are redone.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use clap::Parser;

use crate::exit::{CliError, Verbosity};
use crate::plan;
use crate::protocol::{DataFormat, Protocol};
use crate::results::{self, Manifest, RunStatus};
use crate::runner::{RunArgs, shard_of};

#[derive(Debug, clap::Args)]
pub struct SlurmArgs {
    /// Protocol file.
    pub protocol: PathBuf,
    /// Number of array tasks; task I runs shard I/N of the plan.
    #[arg(long, value_name = "N")]
    pub shards: u64,
    /// Slurm partition (`#SBATCH --partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per task: `MM`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task (also sets RAYON_NUM_THREADS in the task).
    #[arg(long, value_name = "C")]
    pub cpus_per_task: Option<u32>,
    /// Memory per node, e.g. `16G` or `8000M`.
    #[arg(long, value_name = "M")]
    pub mem: Option<String>,
    /// Generic resources, e.g. `gpu:1`.
    #[arg(long, value_name = "G")]
    pub gres: Option<String>,
    /// Job name (default `bench-<protocol name>`).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Results root shared by all tasks (must be on a filesystem every node sees).
    #[arg(long, default_value = "results/runs")]
    pub out: PathBuf,
    /// Synthetic-data cache shared by all tasks.
    #[arg(long, default_value = "data-cache", value_name = "DIR")]
    pub data_cache: PathBuf,
    /// Where to write the script (default `slurm/<protocol name>.sbatch`).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Directory of the per-task logs `%x-%A_%a.out` (created now: sbatch does not create it).
    #[arg(long, default_value = "slurm/logs", value_name = "DIR")]
    pub log_dir: PathBuf,
    /// Do not generate the protocol's synthetic benchmark now (the first tasks will, concurrently).
    #[arg(long)]
    pub no_prepare: bool,
    /// Further `bench run` arguments for every task (e.g. `-- --seeds 0 --no-weights`).
    #[arg(last = true, value_name = "BENCH RUN ARGS")]
    pub extra: Vec<String>,
}

/// Everything the sbatch script is made of; paths should be absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    pub bench: PathBuf,
    pub protocol: PathBuf,
    pub protocol_name: String,
    pub shards: u64,
    pub job_name: String,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub gres: Option<String>,
    pub out: PathBuf,
    pub data_cache: PathBuf,
    pub log_dir: PathBuf,
    pub extra: Vec<String>,
    /// Runs per shard (index = shard), shown in the script's header.
    pub runs_per_shard: Vec<usize>,
    /// The `--seeds` and `--only` among `extra` (empty: the protocol's).
    pub seeds: Vec<u64>,
    pub only: Vec<String>,
}

/// Quotes a word for bash: single quotes, with embedded `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_word(p: &Path) -> String {
    shell_quote(&p.to_string_lossy())
}

/// The sbatch array script: one task per shard, each running its shard of the plan.
pub fn render_script(s: &ScriptSpec) -> String {
    let mut t = String::new();
    let total: usize = s.runs_per_shard.iter().sum();
    let _ = writeln!(t, "#!/bin/bash");
    let _ = writeln!(
        t,
        "# Written by `bench slurm` (dfbench {}): protocol {}, {total} runs in {} shards ({} runs per shard).",
        env!("CARGO_PKG_VERSION"),
        s.protocol_name,
        s.shards,
        s.runs_per_shard.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/")
    );
    let _ = writeln!(
        t,
        "# Re-submitting is safe: complete runs are skipped. One shard: sbatch --array=I <this file>"
    );
    let _ = writeln!(t, "#SBATCH --job-name={}", s.job_name);
    let _ = writeln!(t, "#SBATCH --array=0-{}", s.shards - 1);
    // sbatch does not expand variables in #SBATCH lines; the log path must be literal. Paths with
    // spaces cannot be written there at all (sbatch splits on them), so they are refused earlier.
    let _ = writeln!(t, "#SBATCH --output={}/%x-%A_%a.out", s.log_dir.display());
    if let Some(p) = &s.partition {
        let _ = writeln!(t, "#SBATCH --partition={p}");
    }
    if let Some(v) = &s.time {
        let _ = writeln!(t, "#SBATCH --time={v}");
    }
    if let Some(c) = s.cpus_per_task {
        let _ = writeln!(t, "#SBATCH --cpus-per-task={c}");
    }
    if let Some(m) = &s.mem {
        let _ = writeln!(t, "#SBATCH --mem={m}");
    }
    if let Some(g) = &s.gres {
        let _ = writeln!(t, "#SBATCH --gres={g}");
    }
    let _ = writeln!(t, "set -euo pipefail");
    let _ = writeln!(t, "if [ -z \"${{SLURM_ARRAY_TASK_ID:-}}\" ]; then");
    let _ = writeln!(t, "  echo \"$0: SLURM_ARRAY_TASK_ID is not set; submit this script with sbatch\" >&2");
    let _ = writeln!(t, "  exit 2");
    let _ = writeln!(t, "fi");
    // candle's CPU kernels size their thread pool from the machine, not from the allocation.
    let _ = writeln!(
        t,
        "if [ -n \"${{SLURM_CPUS_PER_TASK:-}}\" ]; then export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"; fi"
    );
    let _ = writeln!(
        t,
        "echo \"shard $SLURM_ARRAY_TASK_ID/{} on $(hostname) (job ${{SLURM_ARRAY_JOB_ID:-?}})\"",
        s.shards
    );
    let mut cmd = format!(
        "exec {} run {} --shard \"$SLURM_ARRAY_TASK_ID/{}\" --out {} --data-cache {}",
        path_word(&s.bench),
        path_word(&s.protocol),
        s.shards,
        path_word(&s.out),
        path_word(&s.data_cache)
    );
    for a in &s.extra {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    let _ = writeln!(t, "{cmd}");
    t
}

/// Slurm time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S` (all fields digits).
fn valid_time(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(digits) && parts.iter().all(|p| digits(p)) && (1..=3).contains(&parts.len())
}

/// Slurm memory: an integer with an optional K, M, G or T suffix.
fn valid_mem(s: &str) -> bool {
    let num = s.strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']).unwrap_or(s);
    !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit())
}

/// A value for an `#SBATCH` line: no whitespace, quotes or control characters (sbatch splits on
/// whitespace and a newline would start a new script line).
fn valid_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"`$\\#".contains(c))
}

/// `bench run` options that the script sets itself or that make no sense in a task.
const RESERVED: &[&str] = &["--shard", "--out", "--data-cache", "--dry-run"];

#[derive(Debug, Parser)]
#[command(name = "bench run", no_binary_name = false)]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make the path absolute", p.display()))
}

/// Checks the arguments and builds the script's content (no file is written).
pub fn plan_script(args: &SlurmArgs, protocol: &Protocol, bench: &Path) -> anyhow::Result<ScriptSpec> {
    if args.shards == 0 {
        return Err(CliError::config("--shards: expected at least 1").into());
    }
    if args.shards > 100_000 {
        return Err(CliError::config(format!(
            "--shards {}: more array tasks than Slurm allows",
            args.shards
        ))
        .into());
    }
    if let Some(t) = &args.time
        && !valid_time(t)
    {
        return Err(CliError::config(format!(
            "--time {t}: expected MM, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (digits)"
        ))
        .into());
    }
    if let Some(m) = &args.mem
        && !valid_mem(m)
    {
        return Err(CliError::config(format!(
            "--mem {m}: expected an integer with an optional K/M/G/T suffix, e.g. 16G"
        ))
        .into());
    }
    if args.cpus_per_task == Some(0) {
        return Err(CliError::config("--cpus-per-task: expected at least 1").into());
    }
    for (flag, v) in
        [("--partition", &args.partition), ("--gres", &args.gres), ("--job-name", &args.job_name)]
    {
        if let Some(v) = v
            && !valid_word(v)
        {
            return Err(CliError::config(format!(
                "{flag} {v:?}: expected one word without spaces, quotes, `$`, `#` or backslashes"
            ))
            .into());
        }
    }
    for a in &args.extra {
        let flag = a.split('=').next().unwrap_or(a);
        if RESERVED.contains(&flag) {
            return Err(CliError::config(format!(
                "-- {a}: the script sets {flag} itself (use `bench slurm --out/--data-cache`; shards come from the array)"
            ))
            .into());
        }
    }
    // The extra arguments are parsed now, so that a typo fails here and not in N tasks later.
    let mut argv = vec!["bench run".to_string(), args.protocol.to_string_lossy().into_owned()];
    argv.extend(args.extra.iter().cloned());
    let run = RunOnly::try_parse_from(&argv).map_err(|e| {
        CliError::config(format!(
            "extra `bench run` arguments {:?}: {}",
            args.extra,
            e.render().to_string().trim().trim_start_matches("error: ")
        ))
    })?;

    let log_dir = absolute(&args.log_dir)?;
    if log_dir.to_string_lossy().chars().any(|c| c.is_whitespace() || c.is_control() || c == '%') {
        return Err(CliError::config(format!(
            "--log-dir {}: sbatch cannot take a log path with spaces or `%`; choose another directory",
            log_dir.display()
        ))
        .into());
    }
    let job_name = args.job_name.clone().unwrap_or_else(|| format!("bench-{}", protocol.name));
    if !valid_word(&job_name) {
        return Err(CliError::config(format!("job name {job_name:?}: choose one with --job-name")).into());
    }
    check_only(protocol, &run.args.only, &args.protocol)?;
    let runs = selected_runs(protocol, &run.args.seeds, &run.args.only);
    let mut runs_per_shard = vec![0usize; args.shards as usize];
    for r in &runs {
        runs_per_shard[shard_of(&r.id, args.shards) as usize] += 1;
    }
    Ok(ScriptSpec {
        bench: bench.to_path_buf(),
        protocol: absolute(&args.protocol)?,
        protocol_name: protocol.name.clone(),
        shards: args.shards,
        job_name,
        partition: args.partition.clone(),
        time: args.time.clone(),
        cpus_per_task: args.cpus_per_task,
        mem: args.mem.clone(),
        gres: args.gres.clone(),
        out: absolute(&args.out)?,
        data_cache: absolute(&args.data_cache)?,
        log_dir,
        extra: args.extra.clone(),
        runs_per_shard,
        seeds: run.args.seeds,
        only: run.args.only,
    })
}

/// The runs `bench run --seeds S --only M` would consider (before skipping complete ones); the
/// same selection as the runner's, so that ids and shards agree with what the tasks run.
pub fn selected_runs(protocol: &Protocol, seeds: &[u64], only: &[String]) -> Vec<plan::Run> {
    let mut p = protocol.clone();
    if !seeds.is_empty() {
        p.seeds = seeds.to_vec();
    }
    plan::expand(&p).into_iter().filter(|r| only.is_empty() || only.contains(&r.config.method.name)).collect()
}

/// `--only` names must be methods of the protocol (the tasks would all fail on a typo).
fn check_only(protocol: &Protocol, only: &[String], path: &Path) -> Result<(), CliError> {
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

pub fn cmd_slurm(args: SlurmArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let protocol = plan::load_or_report(&args.protocol)?;
    let bench = std::env::current_exe().context("cannot find the path of the running bench executable")?;
    let spec = plan_script(&args, &protocol, &bench)?;
    let script = match &args.script {
        Some(s) => absolute(s)?,
        None => absolute(&Path::new("slurm").join(format!("{}.sbatch", protocol.name)))?,
    };

    // N tasks starting together would all generate the same synthetic benchmark; doing it once
    // here (on the submitting host, into the shared cache) leaves them nothing to generate.
    if !args.no_prepare && protocol.data.format == DataFormat::Synthetic {
        let name = protocol.data.preset.as_deref().unwrap_or("small");
        let preset = crate::data::synth::Preset::from_str(name)
            .map_err(|e| CliError::config(format!("{}: data.preset: {e}", args.protocol.display())))?;
        let seed = protocol.data.synth_seed.unwrap_or(0);
        let (dir, generated) = crate::data::synth::ensure_report(preset, seed, &spec.data_cache)?;
        if verbosity != Verbosity::Quiet {
            let what = if generated.is_some() { "generated" } else { "found" };
            println!("{what} the synthetic benchmark ({name}, seed {seed}) in {}", dir.display());
        }
    }

    std::fs::create_dir_all(&spec.log_dir)
        .with_context(|| format!("{}: cannot create the log directory", spec.log_dir.display()))?;
    if let Some(parent) = script.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    results::write_bytes_atomic(&script, render_script(&spec).as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{}: cannot make executable", script.display()))?;
    }
    let total: usize = spec.runs_per_shard.iter().sum();
    let empty = spec.runs_per_shard.iter().filter(|&&n| n == 0).count();
    if verbosity != Verbosity::Quiet {
        println!(
            "wrote {}: {} array tasks for {total} runs of {} (runs per shard: {})",
            script.display(),
            spec.shards,
            protocol.name,
            spec.runs_per_shard.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")
        );
        if empty > 0 {
            println!("note: {empty} shard(s) have no run (more shards than runs); their tasks end at once");
        }
        println!("logs: {}/{}-<job>_<task>.out", spec.log_dir.display(), spec.job_name);
        println!("submit with:");
    }
    println!("  sbatch {}", path_word(&script));
    if verbosity != Verbosity::Quiet {
        let mut select = String::new();
        if !spec.seeds.is_empty() {
            let seeds: Vec<String> = spec.seeds.iter().map(|s| s.to_string()).collect();
            select.push_str(&format!(" --seeds {}", seeds.join(",")));
        }
        for m in &spec.only {
            select.push_str(&format!(" --only {}", shell_quote(m)));
        }
        println!(
            "then: bench status {} --protocol {} --shards {}{select}",
            path_word(&spec.out),
            path_word(&spec.protocol),
            spec.shards
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// bench status

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Results directory: the results root (`results/runs`) or one protocol's folder in it.
    pub dir: PathBuf,
    /// Compare with this protocol's plan, so that runs never started are listed as missing.
    #[arg(long, value_name = "P.toml")]
    pub protocol: Option<PathBuf>,
    /// Group the plan into the shards of `bench run --shard I/N` (needs --protocol).
    #[arg(long, value_name = "N", requires = "protocol", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub shards: Option<u64>,
    /// The `--seeds` the runs were started with, if not the protocol's (needs --protocol).
    #[arg(long, value_delimiter = ',', value_name = "SEEDS", requires = "protocol")]
    pub seeds: Vec<u64>,
    /// The `--only` methods the runs were started with; repeatable (needs --protocol).
    #[arg(long = "only", value_name = "METHOD", requires = "protocol")]
    pub only: Vec<String>,
}

/// The state of one run as its directory shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Complete,
    Failed {
        step: Option<u64>,
        reason: String,
    },
    /// Manifest says `running`: still training, or its process was killed.
    Running {
        host: String,
        started: Option<String>,
    },
    /// Manifest says `running` but no process holds the run's lock: killed or interrupted.
    Interrupted {
        host: String,
        started: Option<String>,
    },
    /// Complete, but a result file no longer matches the manifest's checksums.
    Damaged {
        problems: String,
    },
    /// A directory without a readable manifest (a task killed before its first write, or damage).
    Unreadable {
        reason: String,
    },
    /// In the plan, no directory.
    Missing,
}

impl RunState {
    pub fn is_complete(&self) -> bool {
        matches!(self, RunState::Complete)
    }
    fn label(&self) -> &'static str {
        match self {
            RunState::Complete => "complete",
            RunState::Failed { .. } => "failed",
            RunState::Running { .. } => "running",
            RunState::Interrupted { .. } => "interrupted",
            RunState::Damaged { .. } => "damaged",
            RunState::Unreadable { .. } => "unreadable",
            RunState::Missing => "missing",
        }
    }
    fn detail(&self) -> String {
        match self {
            RunState::Failed { step, reason } => match step {
                Some(s) => format!("at step {s}: {reason}"),
                None => reason.clone(),
            },
            RunState::Running { host, started } | RunState::Interrupted { host, started } => {
                format!(
                    "on {} since {}",
                    if host.is_empty() { "?" } else { host },
                    started.as_deref().unwrap_or("?")
                )
            }
            RunState::Unreadable { reason } => reason.clone(),
            RunState::Damaged { problems } => format!("{problems}; `bench run` trains it again"),
            _ => String::new(),
        }
    }
}

/// One run in a status listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEntry {
    pub id: String,
    /// Method name (from the plan or the manifest; empty when neither says).
    pub method: String,
    pub state: RunState,
    /// The shard the run falls into, when a shard count was given.
    pub shard: Option<u64>,
    /// False for a directory the protocol's plan does not contain.
    pub planned: bool,
}

/// The runs of one protocol folder.
#[derive(Debug, Clone)]
pub struct ProtocolStatus {
    pub name: String,
    pub dir: PathBuf,
    pub runs: Vec<RunEntry>,
    pub shards: Option<u64>,
}

impl ProtocolStatus {
    /// Planned runs (or, without a plan, every directory) not complete.
    pub fn incomplete(&self) -> impl Iterator<Item = &RunEntry> {
        self.runs.iter().filter(|r| r.planned && !r.state.is_complete())
    }
    /// Shards (ascending) with at least one planned run not complete.
    pub fn failing_shards(&self) -> Vec<u64> {
        self.incomplete().filter_map(|r| r.shard).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

fn state_of(run_dir: &Path) -> (RunState, String) {
    let manifest = run_dir.join(results::MANIFEST_FILE);
    if !manifest.exists() {
        return (
            RunState::Unreadable { reason: "no manifest.json (killed before its first write?)".into() },
            String::new(),
        );
    }
    match results::read_manifest(&manifest) {
        Err(e) => (RunState::Unreadable { reason: format!("{e:#}") }, String::new()),
        Ok(m) => {
            let rd = results::RunDir::open(run_dir).ok();
            let damage = rd.as_ref().map(|rd| rd.damage(&m)).unwrap_or_default();
            let Manifest { status, failure, host, started, method, .. } = m;
            let state = match status {
                RunStatus::Complete if !damage.is_empty() => RunState::Damaged { problems: damage.join("; ") },
                RunStatus::Complete => RunState::Complete,
                RunStatus::Interrupted => RunState::Interrupted { host, started },
                RunStatus::Running if rd.as_ref().and_then(|rd| rd.is_locked()) == Some(false) => {
                    RunState::Interrupted { host, started }
                }
                RunStatus::Failed => {
                    let f = failure
                        .unwrap_or(results::Failure { step: None, reason: "no reason recorded".into() });
                    RunState::Failed { step: f.step, reason: f.reason }
                }
                RunStatus::Running => RunState::Running { host, started },
            };
            (state, method)
        }
    }
}

fn has_run_dirs(dir: &Path) -> bool {
    results::list_runs(dir).is_ok_and(|runs| runs.iter().any(|r| r.file(results::MANIFEST_FILE).exists()))
}

/// The state of every run directory under `protocol_dir`, compared with the protocol's whole plan
/// when given (see [`plan_status`] for a selection of it).
pub fn protocol_status(
    protocol_dir: &Path,
    plan: Option<(&Protocol, Option<u64>)>,
) -> anyhow::Result<ProtocolStatus> {
    match plan {
        Some((p, shards)) => plan_status(protocol_dir, &p.name, Some((&plan::expand(p), shards))),
        None => plan_status(protocol_dir, "", None),
    }
}

/// The state of every run directory under `protocol_dir`, compared with `runs` (split into
/// `shards` shards) when given; `name` labels the listing (empty: the folder's name).
pub fn plan_status(
    protocol_dir: &Path,
    name: &str,
    plan: Option<(&[plan::Run], Option<u64>)>,
) -> anyhow::Result<ProtocolStatus> {
    let mut found: BTreeMap<String, (RunState, String)> = BTreeMap::new();
    if protocol_dir.is_dir() {
        for r in results::list_runs(protocol_dir)? {
            found.insert(r.name(), state_of(r.path()));
        }
    }
    let name = match name {
        "" => protocol_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        n => n.to_string(),
    };
    let shards = plan.and_then(|(_, n)| n);
    let mut runs = Vec::new();
    if let Some((planned_runs, _)) = plan {
        for r in planned_runs {
            let (state, _) = found.remove(&r.id).unwrap_or((RunState::Missing, String::new()));
            let shard = shards.map(|n| shard_of(&r.id, n));
            runs.push(RunEntry {
                id: r.id.clone(),
                method: r.config.method.name.clone(),
                state,
                shard,
                planned: true,
            });
        }
    }
    let planned = plan.is_none();
    for (id, (state, method)) in found {
        let shard = shards.map(|n| shard_of(&id, n));
        runs.push(RunEntry { id, method, state, shard, planned });
    }
    Ok(ProtocolStatus { name, dir: protocol_dir.to_path_buf(), runs, shards })
}

/// Renders a status report; returns the text.
pub fn render_status(st: &ProtocolStatus, verbosity: Verbosity) -> String {
    let mut t = String::new();
    let planned: Vec<&RunEntry> = st.runs.iter().filter(|r| r.planned).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &planned {
        *counts.entry(r.state.label()).or_default() += 1;
    }
    let order = ["complete", "damaged", "failed", "running", "interrupted", "unreadable", "missing"];
    let summary: Vec<String> =
        order.iter().filter_map(|k| counts.get(k).map(|n| format!("{n} {k}"))).collect();
    let _ = writeln!(
        t,
        "{}: {} runs: {} ({})",
        st.name,
        planned.len(),
        if summary.is_empty() { "none".to_string() } else { summary.join(", ") },
        st.dir.display()
    );
    let width = st.runs.iter().map(|r| r.id.len()).max().unwrap_or(0);
    for label in order {
        let list: Vec<&&RunEntry> = planned.iter().filter(|r| r.state.label() == label).collect();
        if list.is_empty() || (label == "complete" && verbosity != Verbosity::Verbose) {
            continue;
        }
        let _ = writeln!(t, "{label}:");
        for r in list {
            let shard = r.shard.map(|s| format!("  [shard {s}]")).unwrap_or_default();
            let detail = r.state.detail();
            let sep = if detail.is_empty() { "" } else { "  " };
            let _ = writeln!(t, "  {:<width$}  {}{shard}{sep}{detail}", r.id, r.method);
        }
    }
    let extra: Vec<&RunEntry> = st.runs.iter().filter(|r| !r.planned).collect();
    if !extra.is_empty() {
        let _ = writeln!(
            t,
            "not in the plan ({}; another version of the protocol, or outside --seeds/--only):",
            extra.len()
        );
        for r in extra {
            let _ = writeln!(t, "  {:<width$}  {}", r.id, r.state.label());
        }
    }
    if let Some(n) = st.shards {
        let _ = writeln!(t, "shards ({n}):");
        for s in 0..n {
            let mine: Vec<&&RunEntry> = planned.iter().filter(|r| r.shard == Some(s)).collect();
            let done = mine.iter().filter(|r| r.state.is_complete()).count();
            let mut bad: BTreeMap<&str, usize> = BTreeMap::new();
            for r in mine.iter().filter(|r| !r.state.is_complete()) {
                *bad.entry(r.state.label()).or_default() += 1;
            }
            let bad: Vec<String> =
                order.iter().filter_map(|k| bad.get(k).map(|c| format!("{c} {k}"))).collect();
            let tail =
                if bad.is_empty() { "ok".to_string() } else { format!("NOT DONE: {}", bad.join(", ")) };
            let _ = writeln!(t, "  shard {s}: {done}/{} complete  {tail}", mine.len());
        }
        let failing = st.failing_shards();
        if !failing.is_empty() {
            let list = failing.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
            let _ = writeln!(
                t,
                "re-run the shards not done (complete runs are skipped): sbatch --array={list} <script>"
            );
        }
    }
    t
}

pub fn cmd_status(args: StatusArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    if args.shards == Some(0) {
        return Err(CliError::config("--shards: expected at least 1").into());
    }
    let statuses = match &args.protocol {
        Some(path) => {
            let p = plan::load_or_report(path)?;
            // DIR may be the results root or the protocol's own folder.
            let dir = if args.dir.join(&p.name).is_dir() || !args.dir.is_dir() || !has_run_dirs(&args.dir) {
                args.dir.join(&p.name)
            } else {
                args.dir.clone()
            };
            if !args.dir.is_dir() && verbosity != Verbosity::Quiet {
                eprintln!("note: {} does not exist yet; every run is missing", args.dir.display());
            }
            check_only(&p, &args.only, path)?;
            let runs = selected_runs(&p, &args.seeds, &args.only);
            vec![plan_status(&dir, &p.name, Some((&runs, args.shards)))?]
        }
        None => {
            if !args.dir.is_dir() {
                return Err(
                    CliError::config(format!("{}: no such results directory", args.dir.display())).into()
                );
            }
            if has_run_dirs(&args.dir) {
                vec![plan_status(&args.dir, "", None)?]
            } else {
                let mut v = Vec::new();
                for sub in results::list_runs(&args.dir)? {
                    if has_run_dirs(sub.path()) {
                        v.push(plan_status(sub.path(), "", None)?);
                    }
                }
                if v.is_empty() {
                    return Err(CliError::failed(format!(
                        "{}: no runs found (expected <protocol>/<run-id>/manifest.json below it)",
                        args.dir.display()
                    ))
                    .into());
                }
                v
            }
        }
    };
    let mut all_done = true;
    for st in &statuses {
        print!("{}", render_status(st, verbosity));
        all_done &= st.incomplete().next().is_none() && st.runs.iter().any(|r| r.planned);
    }
    Ok(if all_done { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::SOME_FAILED) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_bash() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn time_and_mem_formats() {
        for ok in ["30", "30:00", "01:30:00", "2-0", "2-12:00", "2-12:00:00"] {
            assert!(valid_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "-1", "2-", "a:00", "1 :00"] {
            assert!(!valid_time(bad), "{bad}");
        }
        for ok in ["16G", "8000", "512M", "1T"] {
            assert!(valid_mem(ok), "{ok}");
        }
        for bad in ["", "G", "16GB", "1.5G", "-1G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
    }
}
