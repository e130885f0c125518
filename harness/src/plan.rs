//! Plan expansion: protocol -> runs with stable ids; `bench validate`.
//!
//! A protocol expands to method x seed x fold x sweep point. Each run carries its fully resolved
//! `RunConfig`; its id hashes that config's canonical JSON (sorted keys, no whitespace), so it
//! depends on what is trained, never on how the file spells it (key order, comments, explicit
//! defaults). `description` and `[report]` do not enter run ids: they do not change training.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use detectors::config::OptimizerConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::exit::{CliError, Verbosity};
use crate::protocol::{
    self, DataConfig, Knob, MethodConfig, ModelConfig, ParamValue, Protocol, SweepAxis, TestRole, TestSet,
    TrainLength, TrainSet, TrainingConfig,
};

/// Everything one training run needs, with the fold, the sweep point and the method's training
/// overrides already applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub protocol: String,
    pub method: MethodConfig,
    pub seed: u64,
    /// The held-out manipulation of a leave-one-out fold.
    pub fold: Option<String>,
    /// The sweep point: canonical sweep path -> value (already applied below).
    pub sweep: BTreeMap<String, ParamValue>,
    pub data: DataConfig,
    pub train: TrainSet,
    pub tests: Vec<TestSet>,
    pub model: ModelConfig,
    pub training: TrainingConfig,
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `<method slug>-s<seed>-<12 hex digits of sha256(canonical config)>`.
    pub id: String,
    pub config: RunConfig,
}

/// Every run of a protocol, ordered method (file order), seed, fold, sweep point.
pub fn expand(p: &Protocol) -> Vec<Run> {
    let folds: Vec<Option<&String>> = match &p.folds {
        Some(f) => f.leave_one_out.iter().map(Some).collect(),
        None => vec![None],
    };
    let mut runs = Vec::new();
    for pm in &p.methods {
        let axes: Vec<&SweepAxis> =
            p.sweep.iter().filter(|a| a.method.as_ref().is_none_or(|m| *m == pm.method.name)).collect();
        let points = cartesian(&axes);
        for &seed in &p.seeds {
            for fold in &folds {
                for point in &points {
                    let mut cfg = RunConfig {
                        protocol: p.name.clone(),
                        method: pm.method.clone(),
                        seed,
                        fold: fold.cloned(),
                        sweep: BTreeMap::new(),
                        data: p.data.clone(),
                        train: p.train.clone(),
                        tests: p.tests.clone(),
                        model: p.model.clone(),
                        training: pm.training.clone(),
                        device: p.device.clone(),
                    };
                    if let Some(held) = fold {
                        apply_fold(&mut cfg, held);
                    }
                    for (axis, value) in axes.iter().zip(point) {
                        apply_knob(&mut cfg, &axis.knob, value);
                        cfg.sweep.insert(axis.path.clone(), value.clone());
                    }
                    runs.push(Run { id: run_id(&cfg), config: cfg });
                }
            }
        }
    }
    runs
}

/// All combinations of the axes' values, first axis slowest; one empty point without axes.
fn cartesian(axes: &[&SweepAxis]) -> Vec<Vec<ParamValue>> {
    let mut points: Vec<Vec<ParamValue>> = vec![Vec::new()];
    for axis in axes {
        points = points
            .into_iter()
            .flat_map(|pt| {
                axis.values.iter().map(move |v| {
                    let mut next = pt.clone();
                    next.push(v.clone());
                    next
                })
            })
            .collect();
    }
    points
}

/// Train without the held-out manipulation; test sets on the training dataset score real + it.
fn apply_fold(cfg: &mut RunConfig, held: &str) {
    cfg.train.manipulations.retain(|m| m != held);
    for t in &mut cfg.tests {
        if t.dataset == cfg.train.dataset {
            t.manipulations = vec![held.to_string()];
            t.role = TestRole::Unseen;
        }
    }
}

fn apply_knob(cfg: &mut RunConfig, knob: &Knob, v: &ParamValue) {
    // Values were type-checked against the knob when the protocol was loaded.
    let int = || v.as_i64().unwrap_or_default();
    match knob {
        Knob::Param(name) => {
            cfg.method.params.insert(name.clone(), v.clone());
        }
        Knob::Steps => cfg.training.length = TrainLength::Steps(int() as u64),
        Knob::BatchSize => cfg.training.batch_size = int() as u32,
        Knob::Lr => {
            let new = v.as_f64().unwrap_or_default();
            match &mut cfg.training.optimizer {
                OptimizerConfig::Sgd { lr, .. }
                | OptimizerConfig::Adam { lr, .. }
                | OptimizerConfig::Adamw { lr, .. } => *lr = new,
            }
        }
        Knob::Backbone => cfg.model.backbone = v.as_str().unwrap_or_default().to_string(),
        Knob::HeadLayers => cfg.model.head.layers = int() as u32,
        Knob::RealFakeRatio => cfg.train.real_fake_ratio = v.as_f64(),
        Knob::Resolution => cfg.data.resolution = int() as u32,
    }
}

/// The run's canonical JSON: object keys sorted at every level, no whitespace.
pub fn canonical_json(cfg: &RunConfig) -> String {
    let value = serde_json::to_value(cfg).expect("a RunConfig always serialises");
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `<method slug>-s<seed>-<first 12 hex digits of sha256(canonical_json)>`.
pub fn run_id(cfg: &RunConfig) -> String {
    let digest = Sha256::digest(canonical_json(cfg).as_bytes());
    let mut hex = String::with_capacity(12);
    for b in &digest[..6] {
        let _ = write!(hex, "{b:02x}");
    }
    format!("{}-s{}-{hex}", slug(&cfg.method.name), cfg.seed)
}

/// Lower-case letters and digits, runs of anything else as one `-` (`O+S` -> `o-s`).
pub fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "m".into() } else { s }
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Protocol file.
    pub protocol: PathBuf,
    /// Memory of the machine that will run the protocol (e.g. `64G`), for the check that each
    /// run's training step fits [default: this machine's available memory, for CPU runs].
    #[arg(long, value_name = "SIZE", value_parser = crate::budget::parse_size)]
    pub max_memory: Option<u64>,
}

/// Fails (exit 2) when a run of the plan cannot work: a resolution below what its backbone
/// accepts, or a training step that cannot fit in memory (see [`crate::budget`]).
pub fn check_feasible(runs: &[Run], max_memory: Option<u64>, path: &std::path::Path) -> Result<(), CliError> {
    let problems = crate::budget::check(runs, max_memory);
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("{}: {p}", path.display());
    }
    Err(CliError::config(format!("{} run configuration(s) of {} cannot run; nothing to run", problems.len(), path.display())))
}

/// Loads a protocol for a subcommand: on errors prints every one of them to stderr
/// (`file:line:col: key: message`) and returns the exit-code-2 error summarising them.
/// `bench validate` uses it, and so can `bench run`.
pub fn load_or_report(path: &std::path::Path) -> Result<Protocol, CliError> {
    protocol::load(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        let n = errors.0.len();
        let s = if n == 1 { "" } else { "s" };
        CliError::config(format!("{n} error{s} in {}; nothing to run", path.display()))
    })
}

pub fn cmd_validate(args: ValidateArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    let p = load_or_report(&args.protocol)?;
    let runs = expand(&p);
    check_feasible(&runs, args.max_memory, &args.protocol)?;
    let mut out = String::new();
    if v >= Verbosity::Normal {
        out.push_str(&plan_table(&runs));
    }
    if v == Verbosity::Verbose {
        for r in &runs {
            let _ = write!(out, "\n{}:\n{}\n", r.id, serde_json::to_string_pretty(&r.config)?);
        }
    }
    let folds = p.folds.as_ref().map_or(1, |f| f.leave_one_out.len());
    let s = |n: usize| if n == 1 { "" } else { "s" };
    let (m, seeds) = (p.methods.len(), p.seeds.len());
    let _ = write!(
        out,
        "{}: {} run{} = {m} method{} x {seeds} seed{} x {folds} fold{}",
        args.protocol.display(),
        runs.len(),
        s(runs.len()),
        s(m),
        s(seeds),
        s(folds)
    );
    if !p.sweep.is_empty() {
        let paths: Vec<&str> = p.sweep.iter().map(|a| a.path.as_str()).collect();
        let _ = write!(out, " x sweep points of {}", paths.join(", "));
    }
    let _ = writeln!(out, "; results in results/runs/{}", p.name);
    // Data pre-flight: what `bench run` would read, checked now (stat only, no decoding).
    let all: Vec<&Run> = runs.iter().collect();
    let pf = crate::data::preflight::applies(&all).then(|| crate::data::preflight::preflight(&all));
    if let Some(pf) = &pf {
        out.push_str("\ndata pre-flight:\n");
        out.push_str(&pf.render());
    }
    print_lines(out.lines())?;
    if let Some(pf) = pf
        && !pf.ok()
    {
        return Err(CliError::failed(format!(
            "{}: data pre-flight failed ({} error(s)): `bench run` would fail",
            args.protocol.display(),
            pf.errors.len()
        ))
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints lines to stdout; a closed pipe (`bench validate p.toml | head`) ends quietly.
pub fn print_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for l in lines {
        match writeln!(stdout, "{l}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
    }
    match stdout.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// The plan as an aligned text table: run id, method, kind, seed, fold, sweep point.
pub fn plan_table(runs: &[Run]) -> String {
    let header = ["run id", "method", "kind", "seed", "fold", "sweep point"];
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            let c = &r.config;
            let point = if c.sweep.is_empty() {
                "-".to_string()
            } else {
                c.sweep.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            };
            [
                r.id.clone(),
                c.method.name.clone(),
                c.method.kind.clone(),
                c.seed.to_string(),
                c.fold.clone().unwrap_or("-".into()),
                point,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}
