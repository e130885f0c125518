//! `bench status`: which runs of a results directory (one protocol's folder, the results root,
//! or a tree merged from several machines) are complete, failed, interrupted or missing, compared
//! with a protocol's plan when given, and grouped by the shards of `bench run --shard I/N`.
//!
//! A run's state is read from its manifest alone, so the listing is the same whether the runs
//! came from one process, a Slurm array (`crate::slurm`) or several workstations.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::exit::{CliError, Verbosity};
use crate::plan;
use crate::protocol::Protocol;
use crate::results::{self, Manifest, RunStatus};
use crate::runner::{assign_shards, check_only, select_runs};


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
    /// Manifest says `running` but no process holds the run's lock, or it says `interrupted`
    /// (SIGINT/SIGTERM): killed or stopped in the middle of this run.
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
        let assigned = shards.map(|n| assign_shards(planned_runs.iter().map(|r| r.id.as_str()), n));
        for r in planned_runs {
            let (state, _) = found.remove(&r.id).unwrap_or((RunState::Missing, String::new()));
            let shard = assigned.as_ref().and_then(|a| a.get(r.id.as_str()).copied());
            runs.push(RunEntry {
                id: r.id.clone(),
                method: r.config.method.name.clone(),
                state,
                shard,
                planned: true,
            });
        }
    }
    // A directory outside the plan belongs to no shard of it.
    let planned = plan.is_none();
    for (id, (state, method)) in found {
        runs.push(RunEntry { id, method, state, shard: None, planned });
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
            let runs = select_runs(&p, &args.seeds, &args.only);
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
