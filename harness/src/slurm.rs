//! Scale-out onto Slurm: `bench slurm` writes an sbatch array script with one task per shard of
//! the plan (`bench run P.toml --shard $SLURM_ARRAY_TASK_ID/N`); `crate::status` then tells which
//! runs are complete, failed, interrupted or missing, per shard.
//!
//! Every shard writes its own run directories under the same `<out>/<protocol>/`; a run counts as
//! complete only when its manifest says so, so re-submitting a shard (or the whole array) is safe:
//! complete runs are skipped and failed or interrupted ones are redone.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use clap::Parser;

use crate::exit::{CliError, Verbosity};
use crate::plan;
use crate::protocol::{DataFormat, Protocol};
use crate::results;
use crate::runner::{RunArgs, assign_shards, check_only, select_runs};

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
    /// Where to write the script (default `slurm/<protocol name>.sbatch`; `/slurm/` is git-ignored).
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
    let runs = select_runs(protocol, &run.args.seeds, &run.args.only);
    let mut runs_per_shard = vec![0usize; args.shards as usize];
    for shard in assign_shards(runs.iter().map(|r| r.id.as_str()), args.shards).into_values() {
        runs_per_shard[shard as usize] += 1;
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
