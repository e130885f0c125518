//! Statistics over training runs: paired seed-level differences against the baseline with
//! Student t intervals, the measured noise floor of a twin pair, and hierarchical bootstrap CIs.
//!
//! Why t and not a seed-level bootstrap for the paired differences: with the 2-5 seeds a
//! protocol affords, a percentile bootstrap over seeds never reaches beyond the observed
//! differences (for n = 3 its interval lies inside their range), so it is far too narrow; the t
//! interval is exact for normal differences and widens as it should when n is small.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::aggregate::{AVG, metric_value, run_avg};
use super::load::{Group, Run};
use super::tables::{Cell, Ctx, Table};
use super::{CiMap, boot_videos, matched_baseline};
use crate::results::Level;
use crate::stats::{self, TInterval};

/// Confidence level of every interval here.
const LEVEL: f64 = 0.95;

/// One run's AUC on a test set (or AVG over its unseen sets) at the report's level.
fn run_auc(run: &Run, test_set: &str, level: Level) -> Option<f64> {
    if test_set == AVG {
        return run_avg(run, level, "auc");
    }
    run.metrics.iter().find(|m| m.test_set == test_set && m.level == level).and_then(|m| metric_value(m, "auc"))
}

/// Test-set columns plus AVG.
fn columns(ctx: &Ctx) -> Vec<String> {
    let mut c: Vec<String> = ctx.agg.test_sets.iter().map(|(t, _)| t.clone()).collect();
    c.push(AVG.into());
    c
}

/// Per-seed differences `run(method) - run(reference)`, the reference run matched by backbone,
/// fold, seed and sweep point (as for DeLong), in seed order.
fn paired(ctx: &Ctx, runs: &[&Run], reference: &str, test_set: &str) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    for run in runs {
        let Some(base) = matched_baseline(ctx, run, reference) else {
            continue;
        };
        if let (Some(a), Some(b)) = (run_auc(run, test_set, ctx.level), run_auc(base, test_set, ctx.level)) {
            out.push((run.manifest.seed, a - b));
        }
    }
    out.sort_by_key(|&(s, _)| s);
    out
}

/// The spread between two methods whose runs differ only at rounding level, per test set.
pub struct NoiseFloor {
    pub pair: (String, String),
    /// test set -> per-seed differences (second minus first), pooled over backbones and folds.
    pub diffs: BTreeMap<String, Vec<(u64, f64)>>,
}

impl NoiseFloor {
    /// Root mean square of the twin differences: the typical size of a difference that
    /// training noise alone produces between two runs of one seed.
    pub fn floor(&self, test_set: &str) -> Option<f64> {
        let d = self.diffs.get(test_set).filter(|d| !d.is_empty())?;
        Some((d.iter().map(|(_, x)| x * x).sum::<f64>() / d.len() as f64).sqrt())
    }
}

pub fn noise_floor(ctx: &Ctx, a: &str, b: &str) -> NoiseFloor {
    let runs: Vec<&Run> = ctx.loaded.runs.iter().filter(|r| r.group.method == b).collect();
    let diffs = columns(ctx).into_iter().map(|ts| (ts.clone(), paired(ctx, &runs, a, &ts))).collect();
    NoiseFloor { pair: (a.to_string(), b.to_string()), diffs }
}

/// Whether an interval of the mean difference separates a method from the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interval excludes 0 and |mean| exceeds the noise floor (when one is measured).
    Resolved,
    /// The interval excludes 0 but |mean| is within the noise floor.
    InsideNoiseFloor,
    /// The interval contains 0.
    NotResolved,
    /// Fewer than two paired seeds: no interval.
    OneSeed,
    /// The twin of the noise-floor pair: its differences are the floor, so no verdict. Its
    /// interval still shows what a null difference looks like (about one cell in 20 excludes 0).
    Twin,
}

impl Verdict {
    pub fn of(ti: Option<&TInterval>, floor: Option<f64>) -> Self {
        match ti {
            None => Verdict::OneSeed,
            Some(t) if t.lo <= 0.0 && t.hi >= 0.0 => Verdict::NotResolved,
            Some(t) if floor.is_some_and(|f| t.mean.abs() <= f) => Verdict::InsideNoiseFloor,
            Some(_) => Verdict::Resolved,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Resolved => "resolved",
            Verdict::InsideNoiseFloor => "inside noise floor",
            Verdict::NotResolved => "not resolved",
            Verdict::OneSeed => "one seed",
            Verdict::Twin => "noise-floor twin",
        }
    }
}

pub struct DiffRow {
    pub group: Group,
    pub test_set: String,
    pub per_seed: Vec<(u64, f64)>,
    pub ti: Option<TInterval>,
    pub floor: Option<f64>,
    pub verdict: Verdict,
}

pub fn diff_rows(ctx: &Ctx, baseline: &str, floor: Option<&NoiseFloor>) -> Vec<DiffRow> {
    let mut out = Vec::new();
    for g in ctx.groups().into_iter().filter(|g| g.method != baseline) {
        let runs: Vec<&Run> = ctx.loaded.runs.iter().filter(|r| r.group == g).collect();
        for ts in columns(ctx) {
            let per_seed = paired(ctx, &runs, baseline, &ts);
            if per_seed.is_empty() {
                continue;
            }
            let values: Vec<f64> = per_seed.iter().map(|&(_, d)| d).collect();
            let ti = stats::t_interval(&values, LEVEL);
            let fl = floor.and_then(|f| f.floor(&ts));
            let verdict = if floor.is_some_and(|f| f.pair.1 == g.method) {
                Verdict::Twin
            } else {
                Verdict::of(ti.as_ref(), fl)
            };
            out.push(DiffRow { group: g.clone(), test_set: ts, per_seed, ti, floor: fl, verdict });
        }
    }
    out
}

fn pp(x: f64) -> String {
    format!("{:+.2}", x * 100.0)
}

fn qualifier(g: &Group) -> String {
    [g.backbone.as_str(), g.sweep.as_str(), g.fold.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn diff_table(ctx: &Ctx, baseline: &str, rows: &[DiffRow], floor: Option<&NoiseFloor>) -> Table {
    let body = rows
        .iter()
        .map(|r| {
            let seeds = r.per_seed.iter().map(|(s, d)| format!("{s}: {}", pp(*d))).collect::<Vec<_>>().join("; ");
            let (mean, ci) = match &r.ti {
                Some(t) => (pp(t.mean), format!("[{}, {}]", pp(t.lo), pp(t.hi))),
                None => (pp(r.per_seed[0].1), "–".into()),
            };
            (
                vec![ctx.display(&r.group.method), qualifier(&r.group), r.test_set.clone()],
                vec![
                    Cell::Text(r.per_seed.len().to_string()),
                    Cell::Text(seeds),
                    Cell::Text(mean),
                    Cell::Text(ci),
                    r.floor.map_or(Cell::Missing, |f| Cell::Text(format!("{:.2}", f * 100.0))),
                    Cell::Text(r.verdict.as_str().into()),
                ],
            )
        })
        .collect();
    let mut notes = vec![
        format!(
            "{} AUC difference (method − {}) in percentage points, paired by seed (same seed = same data order \
             and initialisation; matched by backbone, fold and sweep point as for DeLong). AVG: the per-run mean \
             over the unseen test sets.",
            ctx.level.as_str(),
            ctx.display(baseline)
        ),
        "95% interval: mean ± t(0.975, n−1) · sd / √n over the seeds' differences (Student t; a seed-level \
         bootstrap would be too narrow with this few seeds). It covers the variation between training runs, \
         which DeLong does not."
            .into(),
    ];
    notes.push(match floor {
        Some(f) => format!(
            "resolved: the interval excludes 0 and |mean| exceeds the noise floor (RMS of the per-seed differences \
             between {} and {}, runs that differ only at rounding level); \"inside noise floor\": the interval \
             excludes 0 but the difference is no larger than rounding noise. {} itself gets no verdict \
             (\"noise-floor twin\"): its differences make the floor, and with a 95% interval per cell about one \
             null difference in 20 excludes 0 by chance, as some of its cells may show.",
            ctx.display(&f.pair.1),
            ctx.display(&f.pair.0),
            ctx.display(&f.pair.1)
        ),
        None => "resolved: the interval excludes 0. No noise floor is measured (set report.noise_floor to a twin \
                 pair, see docs/statistics.md), so rounding-level differences may show as resolved."
            .into(),
    });
    Table {
        id: "seed-diff".into(),
        title: format!("Differences against {} over training runs (seeds)", ctx.display(baseline)),
        label_header: vec!["Method".into(), "Backbone / setting".into(), "Test set".into()],
        columns: vec![
            "seeds".into(),
            "per-seed Δ (pp)".into(),
            "mean Δ (pp)".into(),
            "95% t interval (pp)".into(),
            "noise floor (pp)".into(),
            "verdict".into(),
        ],
        rows: body,
        percent: false,
        notes,
    }
}

fn csv_field(x: &str) -> String {
    if x.contains([',', '"', '\n']) { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.to_string() }
}

/// Long form with full-precision numbers (fractions, not percent) for re-analysis.
pub fn diff_csv(ctx: &Ctx, baseline: &str, rows: &[DiffRow]) -> String {
    let mut out = String::from(
        "method,display,baseline,backbone,sweep,fold,test_set,level,metric,n_seeds,seeds,diffs,mean,sd,t_lo,t_hi,\
         noise_floor,verdict\n",
    );
    for r in rows {
        let seeds = r.per_seed.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(";");
        let diffs = r.per_seed.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>().join(";");
        let (mean, sd, lo, hi) = match &r.ti {
            Some(t) => (t.mean.to_string(), t.sd.to_string(), t.lo.to_string(), t.hi.to_string()),
            None => (r.per_seed[0].1.to_string(), String::new(), String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},auc,{},{},{},{},{},{},{},{},{}",
            csv_field(&r.group.method),
            csv_field(&ctx.display(&r.group.method)),
            csv_field(baseline),
            csv_field(&r.group.backbone),
            csv_field(&r.group.sweep),
            csv_field(&r.group.fold),
            csv_field(&r.test_set),
            ctx.level.as_str(),
            r.per_seed.len(),
            seeds,
            diffs,
            mean,
            sd,
            lo,
            hi,
            r.floor.map(|f| f.to_string()).unwrap_or_default(),
            r.verdict.as_str()
        );
    }
    out
}

pub fn floor_table(ctx: &Ctx, f: &NoiseFloor) -> Table {
    let rows = columns(ctx)
        .into_iter()
        .filter_map(|ts| {
            let d = f.diffs.get(&ts).filter(|d| !d.is_empty())?;
            let seeds = d.iter().map(|(s, x)| format!("{s}: {}", pp(*x))).collect::<Vec<_>>().join("; ");
            let max = d.iter().map(|(_, x)| x.abs()).fold(0.0f64, f64::max);
            Some((
                vec![ts.clone()],
                vec![
                    Cell::Text(d.len().to_string()),
                    Cell::Text(seeds),
                    Cell::Text(format!("{:.2}", f.floor(&ts).unwrap_or(0.0) * 100.0)),
                    Cell::Text(format!("{:.2}", max * 100.0)),
                ],
            ))
        })
        .collect();
    Table {
        id: "noise-floor".into(),
        title: format!(
            "Noise floor: {} against {} (runs that differ only at rounding level)",
            ctx.display(&f.pair.1),
            ctx.display(&f.pair.0)
        ),
        label_header: vec!["Test set".into()],
        columns: vec!["pairs".into(), "per-seed Δ (pp)".into(), "RMS (pp)".into(), "max |Δ| (pp)".into()],
        rows,
        percent: false,
        notes: vec![format!(
            "{} AUC of {} minus {}, paired by seed; the RMS is the noise floor used in seed-diff. A difference \
             between methods no larger than this is what training noise alone produces.",
            ctx.level.as_str(),
            ctx.display(&f.pair.1),
            ctx.display(&f.pair.0)
        )],
    }
}

/// 95% hierarchical bootstrap CIs (seeds, then videos) of the seed-mean AUC for every group and
/// test set at the report's level.
pub fn hierarchical_cis(ctx: &Ctx, n_boot: usize, seed: u64) -> CiMap {
    use rayon::prelude::*;
    let keys: Vec<&super::aggregate::Key> =
        ctx.agg.stats.keys().filter(|k| k.metric == "auc" && k.test_set != AVG && k.level == ctx.level).collect();
    keys.par_iter()
        .filter_map(|k| {
            let runs: Vec<&Run> = ctx.loaded.runs.iter().filter(|r| r.group == k.group).collect();
            let videos = boot_videos(&runs, &k.test_set);
            let key = [
                "hierarchical",
                k.group.backbone.as_str(),
                k.group.method.as_str(),
                k.group.sweep.as_str(),
                k.group.fold.as_str(),
                k.test_set.as_str(),
                k.level.as_str(),
            ]
            .join("\u{1f}");
            stats::hierarchical_bootstrap_auc_ci(
                &videos,
                k.level == Level::Video,
                n_boot,
                LEVEL,
                stats::derive_seed(seed, &key),
            )
            .map(|ci| ((k.group.clone(), k.test_set.clone(), k.level), ci))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

pub fn hierarchical_table(ctx: &Ctx, cis: &CiMap, n_boot: usize) -> Table {
    let groups = ctx.groups();
    let columns: Vec<String> = ctx.agg.test_sets.iter().map(|(t, _)| t.clone()).collect();
    let rows = groups
        .iter()
        .map(|g| {
            let cells = columns
                .iter()
                .map(|ts| match (ctx.agg.get(g, ts, ctx.level, "auc"), cis.get(&(g.clone(), ts.clone(), ctx.level))) {
                    (Some(s), Some(ci)) => {
                        Cell::Text(format!("{:.2} [{:.2}, {:.2}]", s.mean * 100.0, ci.lo * 100.0, ci.hi * 100.0))
                    }
                    (Some(s), None) => Cell::Text(format!("{:.2}", s.mean * 100.0)),
                    _ => Cell::Missing,
                })
                .collect();
            (vec![ctx.label(g, &groups, true, true)], cells)
        })
        .collect();
    Table {
        id: "seed-ci".into(),
        title: format!("{} AUC (%) with 95% hierarchical bootstrap intervals (seeds, then videos)", ctx.level.as_str()),
        label_header: vec!["Method".into()],
        columns,
        rows,
        percent: false,
        notes: vec![format!(
            "Mean over seeds [2.5th, 97.5th percentile of {n_boot} replicates]; each replicate draws the seeds with \
             replacement, then the test videos with replacement within each class, and averages the drawn seeds' \
             AUCs. Unlike tables/ci (videos only, the trained models held fixed), it covers the variation between \
             training runs. No interval with a single seed."
        )],
    }
}
