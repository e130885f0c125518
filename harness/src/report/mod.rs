//! `bench report`: tables and plots regenerated from stored results (see `crate::results`).
//!
//! Output (under `--out`, default `DIR/report/`, next to the runs, so that a report never
//! overwrites the committed `results/<protocol>/` unless `--out` names it):
//! - `README.md`: settings, the list of outputs and every table inline;
//! - `runs.md`: every run directory with its status; incomplete and failed runs are excluded
//!   from all tables and plots and listed there with the reason;
//! - `tables/<id>.{md,csv,tex}` for each table id in the manifests' `report.tables`;
//! - `tables/conflict.{md,csv,tex}`: gradient-conflict summaries per method from trace.parquet;
//! - `tables/delong.{md,csv}`: paired DeLong tests against the baseline, per seed;
//! - `summary.csv`: every aggregate (mean, std, seeds) plus 95% bootstrap CIs of the AUC;
//! - `tables/ci.{md,csv,tex}`: AUC with its bootstrap CI per row and test set;
//! - `plots/<id>[-<test set>].{png,svg}` for each id in `report.plots`.
//! - statistics over training runs (`seeds`; a last README section): `tables/seed-diff.{md,csv,tex}`
//!   (paired per-seed differences against the baseline, t intervals, verdicts),
//!   `tables/noise-floor.{md,csv,tex}` (with a twin pair: `report.noise_floor`/`--noise-floor`),
//!   `tables/seed-ci.{md,csv,tex}` (hierarchical bootstrap: seeds, then videos).
//!
//! Reported metric values come from each run's `metrics.parquet` (computed by `crate::metrics`);
//! the private AUC in `crate::stats` is used only for DeLong and the bootstrap.
//! Everything is a function of the stored files, `--bootstrap`, `--seed`, `--baseline` and
//! `--level`: no timestamps, sorted orders, seeded resampling, so regeneration is byte-identical.
mod aggregate;
mod load;
mod plots;
mod seeds;
pub(crate) use plots::register_font;
mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::exit::{self, CliError, Verbosity};
use crate::results::{Level, ScoreRow, write_bytes_atomic};
use crate::stats;
use aggregate::AVG;
use load::{Group, Loaded, Run};
use tables::{Cell, Ctx, Table};

pub use plots::PLOT_IDS;
pub use tables::TABLE_IDS;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A protocol's results directory (`results/runs/<protocol>`) or a merged one.
    pub dir: PathBuf,
    /// Output directory [default: DIR/report/, next to the runs; the committed reports are
    /// regenerated with `--out results/<protocol>`].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Method (protocol name) the others are tested against [default: the manifests' report.baseline].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Bootstrap replicates for the 95% confidence intervals (0 disables them; at most 100000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub bootstrap: u64,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Level of the tables and ROC plots: frame or video.
    #[arg(long, default_value = "frame", value_parser = ["frame", "video"])]
    pub level: String,
    /// Exit 0 even when complete runs are damaged (files that no longer match their checksums,
    /// or unreadable tables); they are left out of the tables either way.
    #[arg(long)]
    pub allow_damaged: bool,
    /// Report only the runs of this protocol (needed when a directory holds several).
    #[arg(long, value_name = "NAME")]
    pub protocol: Option<String>,
    /// Report only runs whose resolved configuration has this value, e.g.
    /// `--only training.length.steps=240`; repeatable.
    #[arg(long = "only", value_name = "PATH=VALUE")]
    pub only: Vec<String>,
    /// Two methods whose runs differ only at rounding level (e.g. O+S and CS-DFD with
    /// uvs = false, cgr = false): their spread is the noise floor [default: the manifests'
    /// report.noise_floor].
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub noise_floor: Vec<String>,
}

/// What one report generation produced.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    pub out: PathBuf,
    pub complete_runs: usize,
    pub excluded_runs: usize,
    /// Files written, relative to `out`, sorted.
    pub files: Vec<String>,
    pub warnings: Vec<String>,
    /// Complete runs left out because a result file is damaged: `(run, what is wrong)`.
    pub damaged: Vec<(String, String)>,
}

pub fn cmd_report(args: ReportArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    let s = generate(&args)?;
    if v > Verbosity::Quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "report: {} complete run(s), {} excluded (see runs.md); {} file(s) written to {}",
            s.complete_runs,
            s.excluded_runs,
            s.files.len(),
            s.out.display()
        );
        if v == Verbosity::Verbose {
            for f in &s.files {
                println!("  {f}");
            }
        }
    }
    if !s.damaged.is_empty() {
        for (id, why) in &s.damaged {
            eprintln!("warning: run {id} is damaged and left out of the report: {why}");
        }
        if !args.allow_damaged {
            eprintln!(
                "{} damaged run(s): `bench run` with the same protocol and --out trains them again; \
                 --allow-damaged reports without them and exits 0",
                s.damaged.len()
            );
            return Ok(ExitCode::from(exit::SOME_FAILED));
        }
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

/// Output files collected in memory, written atomically at the end in sorted order.
struct Outputs {
    files: BTreeMap<String, Vec<u8>>,
}

impl Outputs {
    fn add(&mut self, rel: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.files.insert(rel.into(), bytes.into());
    }
    fn add_table(&mut self, t: &Table, with_tex: bool) {
        self.add(format!("tables/{}.md", t.id), tables::to_markdown(t));
        self.add(format!("tables/{}.csv", t.id), tables::to_csv(t));
        if with_tex {
            self.add(format!("tables/{}.tex", t.id), tables::to_latex(t));
        }
    }
}

/// `DIR/report/`: inside the (git-ignored) results tree, and skipped when runs are listed
/// (`results::REPORT_DIR`), so a report can be regenerated in place any number of times.
fn default_out(dir: &Path) -> PathBuf {
    dir.join(crate::results::REPORT_DIR)
}

/// Generates the report for `args.dir`; the library entry point behind `bench report`.
pub fn generate(args: &ReportArgs) -> Result<ReportSummary> {
    if !args.dir.is_dir() {
        return Err(CliError::config(format!("{}: no such results directory", args.dir.display())).into());
    }
    let level = Level::parse(&args.level)
        .ok_or_else(|| CliError::config(format!("--level {}: expected frame or video", args.level)))?;
    let select = load::Selection {
        protocol: args.protocol.clone(),
        only: load::Selection::parse_only(&args.only).map_err(CliError::config)?,
    };
    let loaded = load::load(&args.dir, &select)?;
    let mut warnings = Vec::new();
    if loaded.runs.is_empty() {
        return Err(CliError::failed(format!(
            "{}: no complete run among {} run director{} (a run counts once its manifest says \"complete\")",
            args.dir.display(),
            loaded.excluded.len(),
            if loaded.excluded.len() == 1 { "y" } else { "ies" }
        ))
        .into());
    }
    let protocols: BTreeSet<&str> = loaded.runs.iter().map(|r| r.manifest.protocol.as_str()).collect();
    let protocol = if protocols.len() == 1 {
        protocols.first().expect("one").to_string()
    } else {
        let name = args.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("merged".into());
        warnings.push(format!("runs from several protocols ({}); reporting them together as {name}", {
            protocols.iter().copied().collect::<Vec<_>>().join(", ")
        }));
        name
    };
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.dir));

    // The report section: union of the manifests' ids in first-seen order over sorted runs.
    let mut table_ids: Vec<String> = Vec::new();
    let mut plot_ids: Vec<String> = Vec::new();
    let mut baselines: BTreeSet<String> = BTreeSet::new();
    for r in &loaded.runs {
        for t in &r.manifest.report.tables {
            if !table_ids.contains(t) {
                table_ids.push(t.clone());
            }
        }
        for p in &r.manifest.report.plots {
            if !plot_ids.contains(p) {
                plot_ids.push(p.clone());
            }
        }
        if let Some(b) = &r.manifest.report.baseline {
            baselines.insert(b.clone());
        }
    }
    if table_ids.is_empty() && plot_ids.is_empty() {
        warnings
            .push("the manifests name no tables or plots; producing csdfd-table1, auc-bar and roc".into());
        table_ids = vec!["csdfd-table1".into()];
        plot_ids = vec!["auc-bar".into(), "roc".into()];
    }
    let methods: BTreeSet<&str> = loaded.runs.iter().map(|r| r.manifest.method.as_str()).collect();
    let baseline = match &args.baseline {
        Some(b) => {
            if !methods.contains(b.as_str()) {
                return Err(CliError::config(format!(
                    "--baseline {b}: no complete run of that method; methods: {}",
                    methods.iter().copied().collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
            Some(b.clone())
        }
        None => {
            if baselines.len() > 1 {
                warnings.push(format!(
                    "manifests name several baselines ({}); using the first",
                    baselines.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            match baselines.into_iter().next() {
                Some(b) if methods.contains(b.as_str()) => Some(b),
                Some(b) => {
                    warnings.push(format!("baseline {b} has no complete run; DeLong tests skipped"));
                    None
                }
                None => None,
            }
        }
    };

    let agg = aggregate::aggregate(&loaded.runs)?;
    let ctx = Ctx { loaded: &loaded, agg: &agg, baseline: baseline.as_deref(), level };
    let mut outputs = Outputs { files: BTreeMap::new() };

    let mut built = Vec::new();
    for id in &table_ids {
        match ctx.build(id) {
            Some(t) => {
                outputs.add_table(&t, true);
                built.push(t);
            }
            None => warnings
                .push(format!("unknown table id {id:?} in the manifests; known: {}", TABLE_IDS.join(", "))),
        }
    }
    let conflict = conflict_table(&ctx);
    if let Some(t) = &conflict {
        outputs.add_table(t, true);
    }
    let delong = baseline.as_ref().map(|b| delong_table(&ctx, b));
    if let Some(t) = &delong {
        outputs.add(format!("tables/{}.md", t.id), tables::to_markdown(t));
        outputs.add(format!("tables/{}.csv", t.id), delong_csv(&ctx, b_or(&baseline)));
    }
    let n_boot = args.bootstrap as usize;

    // Statistics over training runs (new files; the section at the end of README.md).
    let twin = noise_floor_pair(args, &loaded, &methods, &mut warnings)?;
    let floor = twin.as_ref().map(|(a, b)| seeds::noise_floor(&ctx, a, b));
    let floor_table = floor.as_ref().map(|f| seeds::floor_table(&ctx, f));
    if let Some(t) = &floor_table {
        outputs.add_table(t, true);
    }
    let seed_diff = baseline.as_ref().map(|b| {
        let rows = seeds::diff_rows(&ctx, b, floor.as_ref());
        outputs.add("tables/seed-diff.csv", seeds::diff_csv(&ctx, b, &rows));
        seeds::diff_table(&ctx, b, &rows, floor.as_ref())
    });
    if let Some(t) = &seed_diff {
        outputs.add("tables/seed-diff.md", tables::to_markdown(t));
        outputs.add("tables/seed-diff.tex", tables::to_latex(t));
    }
    let seed_ci = (n_boot > 0).then(|| {
        let cis = seeds::hierarchical_cis(&ctx, n_boot, args.seed);
        seeds::hierarchical_table(&ctx, &cis, n_boot)
    });
    if let Some(t) = &seed_ci {
        outputs.add_table(t, true);
    }

    let cis = bootstrap_cis(&ctx, n_boot, args.seed);
    let ci = (n_boot > 0).then(|| ci_table(&ctx, &cis, n_boot));
    if let Some(t) = &ci {
        outputs.add_table(t, true);
    }
    outputs.add("summary.csv", summary_csv(&ctx, &cis));
    outputs.add("runs.md", runs_md(&loaded));

    for id in &plot_ids {
        match plots::render(&ctx, id) {
            Ok(Some(files)) => {
                for (name, bytes) in files {
                    outputs.add(format!("plots/{name}"), bytes);
                }
            }
            Ok(None) => warnings.push(format!("unknown plot id {id:?}; known: {}", PLOT_IDS.join(", "))),
            Err(e) => warnings.push(format!("plot {id}: {e:#}")),
        }
    }

    let mut readme = String::new();
    let _ = writeln!(readme, "# Report: {protocol}\n");
    let _ = writeln!(
        readme,
        "Generated by `bench report` from {} complete run(s); {} run(s) excluded (see [runs.md](runs.md)).",
        loaded.runs.len(),
        loaded.excluded.len()
    );
    let _ = writeln!(
        readme,
        "Level: {}. Baseline: {}. Bootstrap: {} replicates, seed {} (95% percentile CIs in summary.csv).\n",
        level.as_str(),
        baseline.as_deref().map(|b| ctx.display(b)).unwrap_or_else(|| "none".into()),
        args.bootstrap,
        args.seed
    );
    // Which machines produced the numbers: CPU and CUDA runs agree only to rounding, which
    // training amplifies, so a table mixing them compares devices as much as methods.
    let mut devices: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &loaded.runs {
        *devices.entry(r.manifest.device.as_str()).or_default() += 1;
    }
    let kinds: BTreeSet<&str> =
        devices.keys().map(|d| if d.starts_with("cuda") { "cuda" } else { "cpu" }).collect();
    let listed: Vec<String> = devices.iter().map(|(d, n)| format!("{d} ({n} run(s))")).collect();
    let _ = writeln!(readme, "Device: {}.\n", listed.join("; "));
    if kinds.len() > 1 {
        warnings.push(
            "runs from the CPU and from CUDA are mixed here; they agree only to rounding, which training \
             amplifies, so differences between them are partly the device's"
                .into(),
        );
    }
    // Precision and TF32 change a run's numerics the way the device does. Manifests older than
    // the keys trained in f32; a CUDA run without a TF32 record predates the switch.
    let mut precisions: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tf32: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &loaded.runs {
        *precisions.entry(r.manifest.precision.as_deref().unwrap_or("f32")).or_default() += 1;
        if r.manifest.device.starts_with("cuda") {
            let state = match r.manifest.tf32 {
                Some(true) => "on",
                Some(false) => "off",
                None => "unrecorded",
            };
            *tf32.entry(state).or_default() += 1;
        }
    }
    if precisions.keys().any(|p| *p != "f32") || tf32.keys().any(|t| *t != "unrecorded") {
        let p: Vec<String> = precisions.iter().map(|(k, n)| format!("{k} ({n} run(s))")).collect();
        let t: Vec<String> = tf32.iter().map(|(k, n)| format!("{k} ({n} run(s))")).collect();
        let t = if t.is_empty() { "not used (CPU)".to_string() } else { t.join("; ") };
        let _ = writeln!(readme, "Precision: {}. TF32 on CUDA: {t}.\n", p.join("; "));
    }
    if precisions.len() > 1 {
        let p: Vec<String> = precisions.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        warnings.push(format!(
            "runs of different training precisions are mixed here ({}); bf16 rounds every convolution and \
             matmul, which training amplifies, so differences between them are partly the precision's",
            p.join(", ")
        ));
    }
    if tf32.len() > 1 {
        let t: Vec<String> = tf32.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        warnings.push(format!(
            "CUDA runs with and without TF32 are mixed here ({}); TF32 rounds matmul inputs to 10 mantissa \
             bits, so differences between them are partly TF32's",
            t.join(", ")
        ));
    }
    let _ = writeln!(
        readme,
        "Metric values are the runs' own (metrics.parquet); means and sample standard deviations are over seeds.\n"
    );
    for t in built.iter().chain(ci.iter()).chain(conflict.iter()).chain(delong.iter()) {
        readme.push_str(&tables::to_markdown(t));
        readme.push('\n');
    }
    for w in &warnings {
        let _ = writeln!(readme, "- warning: {w}");
    }
    let plot_files: Vec<&String> =
        outputs.files.keys().filter(|k| k.starts_with("plots/") && k.ends_with(".svg")).collect();
    if !plot_files.is_empty() {
        let _ = writeln!(readme, "\n## Plots\n");
        let plot_lines: Vec<String> = plot_files.iter().map(|p| format!("![{p}]({p})")).collect();
        readme.push_str(&plot_lines.join("\n\n"));
        readme.push('\n');
    }
    let stats_tables: Vec<&Table> = seed_diff.iter().chain(floor_table.iter()).chain(seed_ci.iter()).collect();
    if !stats_tables.is_empty() {
        let _ = writeln!(readme, "\n## Statistics over training runs\n");
        let _ = writeln!(
            readme,
            "Whether a method differs from the baseline is a question about training runs: the paired seed-level \
             intervals below answer it. The DeLong tests above hold each trained model fixed and measure only the \
             sampling of the test set, so they cannot tell a method from seed (or rounding) noise. {}\n",
            match &twin {
                Some((a, b)) => format!(
                    "Noise floor: {} against {}, runs that differ only at rounding level.",
                    ctx.display(b),
                    ctx.display(a)
                ),
                None => "No noise floor is measured here (report.noise_floor or --noise-floor names a twin pair; \
                         see docs/statistics.md)."
                    .into(),
            }
        );
        for t in stats_tables {
            readme.push_str(&tables::to_markdown(t));
            readme.push('\n');
        }
    }
    outputs.add("README.md", readme);

    for (rel, bytes) in &outputs.files {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create directory", parent.display()))?;
        }
        write_bytes_atomic(&path, bytes)?;
    }
    Ok(ReportSummary {
        out,
        complete_runs: loaded.runs.len(),
        excluded_runs: loaded.excluded.len(),
        files: outputs.files.keys().cloned().collect(),
        warnings,
        damaged: loaded.damaged.clone(),
    })
}

/// The twin pair of the noise floor: `--noise-floor A B`, else the manifests' report.noise_floor.
/// A pair named on the command line must have runs; one from the manifests without runs is a warning.
fn noise_floor_pair(
    args: &ReportArgs,
    loaded: &Loaded,
    methods: &BTreeSet<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<(String, String)>> {
    let missing =
        |pair: &[String]| -> Vec<String> { pair.iter().filter(|m| !methods.contains(m.as_str())).cloned().collect() };
    if !args.noise_floor.is_empty() {
        let m = missing(&args.noise_floor);
        if args.noise_floor.len() != 2 || args.noise_floor[0] == args.noise_floor[1] || !m.is_empty() {
            return Err(CliError::config(format!(
                "--noise-floor {}: expected two different methods with complete runs{}; methods: {}",
                args.noise_floor.join(" "),
                if m.is_empty() { String::new() } else { format!(" (no complete run of {})", m.join(", ")) },
                methods.iter().copied().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        return Ok(Some((args.noise_floor[0].clone(), args.noise_floor[1].clone())));
    }
    let Some(pair) = loaded.runs.iter().map(|r| &r.manifest.report.noise_floor).find(|p| p.len() == 2) else {
        return Ok(None);
    };
    let m = missing(pair);
    if !m.is_empty() {
        warnings.push(format!("report.noise_floor names {} without complete runs; no noise floor measured", m.join(", ")));
        return Ok(None);
    }
    Ok(Some((pair[0].clone(), pair[1].clone())))
}

fn b_or(b: &Option<String>) -> &str {
    b.as_deref().unwrap_or_default()
}

fn runs_md(loaded: &Loaded) -> String {
    let mut rows: Vec<(String, String, String, String, String, String, String)> = Vec::new();
    let fmt_m = |m: &crate::results::Manifest| {
        (
            m.display.clone(),
            m.backbone.clone(),
            m.seed.to_string(),
            m.fold.clone().unwrap_or_default(),
            load::sweep_label(m),
        )
    };
    for r in &loaded.runs {
        let (d, b, s, f, sw) = fmt_m(&r.manifest);
        rows.push((r.id.clone(), d, b, s, f, sw, "complete (included)".into()));
    }
    for e in &loaded.excluded {
        let (d, b, s, f, sw) = e.manifest.as_ref().map(fmt_m).unwrap_or_default();
        rows.push((e.id.clone(), d, b, s, f, sw, format!("excluded: {}", e.reason.replace('\n', " "))));
    }
    rows.sort();
    let mut out = String::from(
        "# Runs\n\n| run | method | backbone | seed | fold | sweep | status |\n|---|---|---|---|---|---|---|\n",
    );
    for (id, d, b, s, f, sw, st) in rows {
        let cells = [id, d, b, s, f, sw, st].map(|c| c.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// Per-run conflict summaries from the aggregate trace rows (domain null).
struct Conflict {
    steps: usize,
    frac_neg_cos: Option<f64>,
    corr_dl: Option<f64>,
    /// Median over steps of CGR's `||term|| / ||g1_p + g2_p||` (CS-DFD with CGR).
    cgr_rel: Option<f64>,
}

fn conflict_of(run: &Run) -> Option<Conflict> {
    let mut rows: Vec<_> = run.trace.iter().filter(|t| t.domain.is_none()).collect();
    rows.sort_by_key(|t| t.step);
    let cos: Vec<f64> = rows.iter().filter_map(|t| t.cos_g1_g2).filter(|c| c.is_finite()).collect();
    let frac_neg_cos =
        (!cos.is_empty()).then(|| cos.iter().filter(|&&c| c < 0.0).count() as f64 / cos.len() as f64);
    let (mut d1, mut d2) = (Vec::new(), Vec::new());
    for w in rows.windows(2) {
        if let (Some(a1), Some(b1), Some(a2), Some(b2)) = (w[0].l1, w[1].l1, w[0].l2, w[1].l2) {
            d1.push(b1 - a1);
            d2.push(b2 - a2);
        }
    }
    let corr_dl = stats::pearson(&d1, &d2);
    let mut rel: Vec<f64> = rows.iter().filter_map(|t| t.cgr_rel).filter(|x| x.is_finite()).collect();
    rel.sort_by(f64::total_cmp);
    let cgr_rel = (!rel.is_empty()).then(|| stats::quantile_sorted(&rel, 0.5));
    (frac_neg_cos.is_some() || corr_dl.is_some()).then_some(Conflict {
        steps: rows.len(),
        frac_neg_cos,
        corr_dl,
        cgr_rel,
    })
}

fn conflict_table(ctx: &Ctx) -> Option<Table> {
    let mut by_group: BTreeMap<&Group, Vec<Conflict>> = BTreeMap::new();
    for r in &ctx.loaded.runs {
        if let Some(c) = conflict_of(r) {
            by_group.entry(&r.group).or_default().push(c);
        }
    }
    if by_group.is_empty() {
        return None;
    }
    let groups: Vec<Group> = ctx.groups().into_iter().filter(|g| by_group.contains_key(g)).collect();
    // Only where some run traced it, so reports of older runs keep their shape.
    let with_cgr = by_group.values().flatten().any(|c| c.cgr_rel.is_some());
    let stat = |v: Vec<f64>| -> Cell {
        match stats::mean_std(&v) {
            Some((mean, std)) => Cell::Stat(aggregate::Stat { mean, std, n: v.len() }),
            None => Cell::Missing,
        }
    };
    let rows = groups
        .iter()
        .map(|g| {
            let cs = &by_group[g];
            let label = ctx.display(&g.method);
            let q: Vec<&str> = [g.backbone.as_str(), g.sweep.as_str(), g.fold.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            let steps = cs.iter().map(|c| c.steps).max().unwrap_or(0);
            let mut cells = vec![
                Cell::Text(steps.to_string()),
                stat(cs.iter().filter_map(|c| c.frac_neg_cos).collect()),
                stat(cs.iter().filter_map(|c| c.corr_dl).collect()),
            ];
            if with_cgr {
                // Tiny numbers: scientific notation, mean over seeds of each run's median.
                let rel: Vec<f64> = cs.iter().filter_map(|c| c.cgr_rel).collect();
                cells.push(match rel.is_empty() {
                    true => Cell::Missing,
                    false => Cell::Text(format!("{:.2e}", rel.iter().sum::<f64>() / rel.len() as f64)),
                });
            }
            (vec![label, q.join(", ")], cells)
        })
        .collect();
    Some(Table {
        id: "conflict".into(),
        title: "Gradient conflict during training (per-step trace)".into(),
        label_header: vec!["Method".into(), "Backbone / setting".into()],
        columns: [
            vec!["steps".into(), "P(cos(g1,g2) < 0)".into(), "corr(ΔL1, ΔL2)".into()],
            if with_cgr { vec!["CGR rel. (head)".into()] } else { vec![] },
        ]
        .concat(),
        rows,
        percent: false,
        notes: [
            if with_cgr {
                vec!["CGR rel. (head): norm of CGR's conflict term (eq. 24) over the norm of the head's plain \
                      gradient g1 + g2, median over the steps of a run, mean over seeds. A typical head element \
                      changes by about tau / n_p (n_p head parameters), which f32 (6e-8 relative) often rounds \
                      away; see docs/methods.md."
                    .into()]
            } else {
                vec![]
            },
            vec![
            "P(cos < 0): fraction of steps whose stream gradients point against each other.".into(),
            "corr(ΔL1, ΔL2): Pearson correlation of step-to-step changes of the two stream losses; negative \
             means the losses trade off (the \"1 + 1 < 2\" signature)."
                .into(),
            "Mean ± sample std over seeds; computed on the aggregate trace rows (domain null).".into(),
            ],
        ]
        .concat(),
    })
}

/// (dataset, label, label name, video, frame): FF++'s fakes of four manipulations share the
/// source video's name and frame file names, so the label name is part of a sample's identity.
type FrameKey = (String, u8, String, String, String);
type VideoKey = (String, u8, String, String);

fn scores_of<'a>(run: &'a Run, test_set: &str) -> impl Iterator<Item = &'a ScoreRow> {
    let ts = test_set.to_string();
    run.scores.iter().filter(move |s| s.test_set == ts)
}

/// (score, label) pairs of one run and test set at a level; video level averages the frames of
/// each (dataset, label, label name, video), so that FF++ fakes sharing a folder name stay apart.
fn keyed_scores(run: &Run, test_set: &str, level: Level) -> BTreeMap<FrameKey, f64> {
    let mut m = BTreeMap::new();
    match level {
        Level::Frame => {
            for s in scores_of(run, test_set) {
                m.insert(
                    (s.dataset.clone(), s.label, s.label_name.clone(), s.video.clone(), s.frame.clone()),
                    s.score,
                );
            }
        }
        Level::Video => {
            let mut acc: BTreeMap<VideoKey, (f64, usize)> = BTreeMap::new();
            for s in scores_of(run, test_set) {
                let e = acc
                    .entry((s.dataset.clone(), s.label, s.label_name.clone(), s.video.clone()))
                    .or_default();
                e.0 += s.score;
                e.1 += 1;
            }
            for ((d, l, ln, v), (sum, n)) in acc {
                m.insert((d, l, ln, v, String::new()), sum / n as f64);
            }
        }
    }
    m
}

/// The baseline run matched to `run`: same backbone, fold and seed; the same sweep point when the
/// baseline has it, else the baseline's first sweep point in sorted order.
fn matched_baseline<'a>(ctx: &Ctx<'a>, run: &Run, baseline: &str) -> Option<&'a Run> {
    let cands: Vec<&Run> = ctx
        .loaded
        .runs
        .iter()
        .filter(|b| {
            b.group.method == baseline
                && b.group.backbone == run.group.backbone
                && b.group.fold == run.group.fold
                && b.manifest.seed == run.manifest.seed
        })
        .collect();
    cands.iter().find(|b| b.group.sweep == run.group.sweep).or_else(|| cands.first()).copied()
}

struct DeLongRow {
    group: Group,
    seed: u64,
    test_set: String,
    d: Option<stats::DeLong>,
    n_paired: usize,
}

fn delong_rows(ctx: &Ctx, baseline: &str) -> Vec<DeLongRow> {
    let mut out = Vec::new();
    let groups = ctx.groups();
    for g in groups.iter().filter(|g| g.method != baseline) {
        for run in ctx.loaded.runs.iter().filter(|r| &r.group == g) {
            let Some(base) = matched_baseline(ctx, run, baseline) else { continue };
            for (ts, _) in &ctx.agg.test_sets {
                let a = keyed_scores(run, ts, ctx.level);
                if a.is_empty() {
                    continue;
                }
                let b = keyed_scores(base, ts, ctx.level);
                let (mut sa, mut sb, mut l) = (Vec::new(), Vec::new(), Vec::new());
                for (k, va) in &a {
                    if let Some(vb) = b.get(k) {
                        sa.push(*va);
                        sb.push(*vb);
                        l.push(k.1);
                    }
                }
                let d = stats::delong(&sa, &sb, &l);
                out.push(DeLongRow {
                    group: g.clone(),
                    seed: run.manifest.seed,
                    test_set: ts.clone(),
                    d,
                    n_paired: l.len(),
                });
            }
        }
    }
    out
}

fn fmt_p(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}

fn delong_table(ctx: &Ctx, baseline: &str) -> Table {
    let rows = delong_rows(ctx, baseline)
        .into_iter()
        .map(|r| {
            let q: Vec<&str> = [r.group.backbone.as_str(), r.group.sweep.as_str(), r.group.fold.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            let cells = match r.d {
                Some(d) => vec![
                    Cell::Text(r.n_paired.to_string()),
                    Cell::Text(format!("{:.2}", d.auc_a * 100.0)),
                    Cell::Text(format!("{:.2}", d.auc_b * 100.0)),
                    Cell::Text(format!("{:.3}", d.z)),
                    Cell::Text(fmt_p(d.p)),
                ],
                None => {
                    let mut c = vec![Cell::Text(r.n_paired.to_string())];
                    c.extend((0..4).map(|_| Cell::Missing));
                    c
                }
            };
            (vec![ctx.display(&r.group.method), q.join(", "), r.seed.to_string(), r.test_set], cells)
        })
        .collect();
    Table {
        id: "delong".into(),
        title: format!(
            "Paired DeLong tests against {}: test-set sampling for one fixed model per seed",
            ctx.display(baseline)
        ),
        label_header: vec!["Method".into(), "Backbone / setting".into(), "Seed".into(), "Test set".into()],
        columns: vec!["n paired".into(), "AUC (%)".into(), "baseline AUC (%)".into(), "z".into(), "p".into()],
        rows,
        percent: false,
        notes: vec![
            format!(
                "Per seed: each run is paired with the baseline run of the same backbone, fold and seed, on the \
                 {}s both scored (keyed by dataset, label, video{}). Two-sided p; \"–\" = fewer than two of a class.",
                ctx.level.as_str(),
                if ctx.level == Level::Frame { ", frame" } else { "" }
            ),
            "AUCs here are recomputed from scores.parquet (Mann-Whitney, ties 1/2) and equal the runs' reported AUC \
             when both runs scored the same samples."
                .into(),
            "DeLong holds both trained models fixed: a small p says the two models rank this test set differently, \
             not that the methods differ; runs that differ only by rounding get small p too. For methods, see \
             tables/seed-diff (intervals over seeds)."
                .into(),
        ],
    }
}

fn delong_csv(ctx: &Ctx, baseline: &str) -> String {
    let mut out = String::from(
        "method,display,baseline,backbone,sweep,fold,seed,test_set,level,n_pos,n_neg,auc,auc_baseline,var,var_baseline,cov,z,p\n",
    );
    for r in delong_rows(ctx, baseline) {
        let f = |x: &str| {
            if x.contains([',', '"']) { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.to_string() }
        };
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},",
            f(&r.group.method),
            f(&ctx.display(&r.group.method)),
            f(baseline),
            f(&r.group.backbone),
            f(&r.group.sweep),
            f(&r.group.fold),
            r.seed,
            f(&r.test_set),
            ctx.level.as_str()
        );
        match r.d {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    d.n_pos, d.n_neg, d.auc_a, d.auc_b, d.var_a, d.var_b, d.cov_ab, d.z, d.p
                );
            }
            None => out.push_str(",,,,,,,,\n"),
        }
    }
    out
}

/// Bootstrap videos of a group and test set: every (dataset, label, label name, video) seen in any seed, in
/// key order, with its frame scores per seed run.
fn boot_videos(runs: &[&Run], test_set: &str) -> Vec<stats::BootVideo> {
    let mut map: BTreeMap<VideoKey, Vec<Vec<f64>>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        for s in scores_of(r, test_set) {
            let e = map
                .entry((s.dataset.clone(), s.label, s.label_name.clone(), s.video.clone()))
                .or_insert_with(|| vec![Vec::new(); runs.len()]);
            e[i].push(s.score);
        }
    }
    map.into_iter().map(|((_, label, _, _), per_run)| stats::BootVideo { label, per_run }).collect()
}

type CiMap = BTreeMap<(Group, String, Level), stats::Ci>;

/// 95% bootstrap CIs of the seed-mean AUC for every group, test set and level that has an AUC.
fn bootstrap_cis(ctx: &Ctx, n_boot: usize, seed: u64) -> CiMap {
    use rayon::prelude::*;
    let keys: Vec<&aggregate::Key> =
        ctx.agg.stats.keys().filter(|k| k.metric == "auc" && k.test_set != AVG).collect();
    // Each key has its own seeded stream, so the parallel order cannot change the result.
    keys.par_iter()
        .filter_map(|k| {
            let runs: Vec<&Run> = ctx.loaded.runs.iter().filter(|r| r.group == k.group).collect();
            let videos = boot_videos(&runs, &k.test_set);
            let key = [
                k.group.backbone.as_str(),
                k.group.method.as_str(),
                k.group.sweep.as_str(),
                k.group.fold.as_str(),
                k.test_set.as_str(),
                k.level.as_str(),
            ]
            .join("\u{1f}");
            let level = k.level == Level::Video;
            stats::bootstrap_auc_ci(&videos, level, n_boot, 0.95, stats::derive_seed(seed, &key))
                .map(|ci| ((k.group.clone(), k.test_set.clone(), k.level), ci))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// AUC with its bootstrap CI per row and test set, at the report's level.
fn ci_table(ctx: &Ctx, cis: &CiMap, n_boot: usize) -> Table {
    let groups = ctx.groups();
    let columns: Vec<String> = ctx.agg.test_sets.iter().map(|(t, _)| t.clone()).collect();
    let rows = groups
        .iter()
        .map(|g| {
            let cells = columns
                .iter()
                .map(|ts| {
                    match (ctx.agg.get(g, ts, ctx.level, "auc"), cis.get(&(g.clone(), ts.clone(), ctx.level)))
                    {
                        (Some(s), Some(ci)) => Cell::Text(format!(
                            "{:.2} [{:.2}, {:.2}]",
                            s.mean * 100.0,
                            ci.lo * 100.0,
                            ci.hi * 100.0
                        )),
                        (Some(s), None) => Cell::Text(format!("{:.2}", s.mean * 100.0)),
                        _ => Cell::Missing,
                    }
                })
                .collect();
            (vec![ctx.label(g, &groups, true, true)], cells)
        })
        .collect();
    Table {
        id: "ci".into(),
        title: format!("{} AUC (%) with 95% bootstrap confidence intervals", ctx.level.as_str()),
        label_header: vec!["Method".into()],
        columns,
        rows,
        percent: false,
        notes: vec![format!(
            "Mean over seeds [2.5th, 97.5th percentile of {n_boot} replicates]; each replicate resamples the test \
             videos with replacement within each class (the same videos for every seed) and averages the seeds' AUCs."
        )],
    }
}

fn summary_csv(ctx: &Ctx, cis: &CiMap) -> String {
    let mut out = String::from(
        "backbone,method,display,sweep,fold,test_set,level,metric,mean,std,n_seeds,ci95_lo,ci95_hi\n",
    );
    let f = |x: &str| {
        if x.contains([',', '"']) { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.to_string() }
    };
    for (k, s) in &ctx.agg.stats {
        let ci = cis.get(&(k.group.clone(), k.test_set.clone(), k.level)).filter(|_| k.metric == "auc");
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            f(&k.group.backbone),
            f(&k.group.method),
            f(&ctx.display(&k.group.method)),
            f(&k.group.sweep),
            f(&k.group.fold),
            f(&k.test_set),
            k.level.as_str(),
            k.metric,
            s.mean,
            s.std.map(|v| v.to_string()).unwrap_or_default(),
            s.n,
            ci.map(|c| c.lo.to_string()).unwrap_or_default(),
            ci.map(|c| c.hi.to_string()).unwrap_or_default(),
        );
    }
    out
}
