//! Aggregation over seeds with polars: mean, sample std (ddof 1) and count of the per-run
//! metrics, per (backbone, method, sweep point, fold, test set, level, metric).
use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use polars::prelude::*;

use super::load::{Group, Run};
use crate::results::{Level, MetricRow, Role};

/// Pseudo test set holding the per-run mean over the unseen test sets.
pub const AVG: &str = "AVG";

pub const METRICS: [&str; 7] = ["auc", "ap", "eer", "eer_interp", "acc", "acc_real", "acc_fake"];

pub fn metric_value(r: &MetricRow, metric: &str) -> Option<f64> {
    match metric {
        "auc" => r.auc,
        "ap" => r.ap,
        "eer" => r.eer,
        "eer_interp" => r.eer_interp,
        "acc" => r.acc,
        "acc_real" => r.acc_real,
        "acc_fake" => r.acc_fake,
        _ => None,
    }
    .filter(|v| v.is_finite())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// None with a single seed.
    pub std: Option<f64>,
    /// Number of seeds with a defined value.
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub group: Group,
    pub test_set: String,
    pub level: Level,
    pub metric: String,
}

pub struct Aggregates {
    pub stats: BTreeMap<Key, Stat>,
    /// Test sets in order of first appearance over the sorted runs, with their role.
    pub test_sets: Vec<(String, Role)>,
    /// True when AVG is over the unseen sets; false when there are none and it is over all sets.
    pub avg_over_unseen: bool,
}

impl Aggregates {
    pub fn get(&self, group: &Group, test_set: &str, level: Level, metric: &str) -> Option<Stat> {
        let key = Key { group: group.clone(), test_set: test_set.into(), level, metric: metric.into() };
        self.stats.get(&key).copied()
    }
}

/// The per-run value of AVG for one level and metric: the mean over the run's unseen test sets
/// (all its test sets when it has no unseen one; leave-one-out folds each have their own).
/// None when any of them is undefined: an average over fewer sets would not be comparable.
pub(super) fn run_avg(run: &Run, level: Level, metric: &str) -> Option<f64> {
    let rows: Vec<&MetricRow> = run.metrics.iter().filter(|r| r.level == level).collect();
    let unseen: Vec<&MetricRow> = rows.iter().copied().filter(|r| r.role == Role::Unseen).collect();
    let sets = if unseen.is_empty() { rows } else { unseen };
    let mut sum = 0.0;
    for r in &sets {
        sum += metric_value(r, metric)?;
    }
    (!sets.is_empty()).then(|| sum / sets.len() as f64)
}

pub fn aggregate(runs: &[Run]) -> Result<Aggregates> {
    let mut test_sets: Vec<(String, Role)> = Vec::new();
    for r in runs {
        for m in &r.metrics {
            if !test_sets.iter().any(|(t, _)| *t == m.test_set) {
                test_sets.push((m.test_set.clone(), m.role));
            }
        }
    }
    let avg_over_unseen = test_sets.iter().any(|(_, r)| *r == Role::Unseen);

    // Long table: one row per (run, test set, level, metric).
    let (mut backbone, mut method, mut sweep, mut fold) = (vec![], vec![], vec![], vec![]);
    let (mut test_set, mut level, mut metric, mut value) = (vec![], vec![], vec![], vec![]);
    let mut push = |g: &Group, ts: &str, lv: Level, me: &str, v: Option<f64>| {
        backbone.push(g.backbone.clone());
        method.push(g.method.clone());
        sweep.push(g.sweep.clone());
        fold.push(g.fold.clone());
        test_set.push(ts.to_string());
        level.push(lv.as_str());
        metric.push(me.to_string());
        value.push(v);
    };
    for r in runs {
        for m in &r.metrics {
            for me in METRICS {
                push(&r.group, &m.test_set, m.level, me, metric_value(m, me));
            }
        }
        for lv in [Level::Frame, Level::Video] {
            if r.metrics.iter().any(|m| m.level == lv) {
                for me in METRICS {
                    push(&r.group, AVG, lv, me, run_avg(r, lv, me));
                }
            }
        }
    }
    let n = value.len();
    let cols: Vec<Column> = vec![
        Series::new("backbone".into(), backbone).into(),
        Series::new("method".into(), method).into(),
        Series::new("sweep".into(), sweep).into(),
        Series::new("fold".into(), fold).into(),
        Series::new("test_set".into(), test_set).into(),
        Series::new("level".into(), level).into(),
        Series::new("metric".into(), metric).into(),
        Series::new("value".into(), value).into(),
    ];
    let long = DataFrame::new(n, cols).map_err(|e| anyhow!("building the metrics table: {e}"))?;
    let keys = ["backbone", "method", "sweep", "fold", "test_set", "level", "metric"];
    let agg = long
        .lazy()
        .group_by(keys.map(col))
        .agg([
            col("value").mean().alias("mean"),
            col("value").std(1).alias("std"),
            col("value").count().cast(DataType::UInt64).alias("n"),
        ])
        .sort(keys, SortMultipleOptions::default())
        .collect()
        .map_err(|e| anyhow!("aggregating metrics over seeds: {e}"))?;

    let s = |name: &str| -> Result<Vec<String>> {
        let c = agg.column(name).map_err(|e| anyhow!("{e}"))?;
        Ok(c.str().map_err(|e| anyhow!("{e}"))?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    let f = |name: &str| -> Result<Vec<Option<f64>>> {
        let c = agg.column(name).map_err(|e| anyhow!("{e}"))?;
        Ok(c.f64().map_err(|e| anyhow!("{e}"))?.iter().collect())
    };
    let (bb, me, sw, fo, ts, lv, mt) =
        (s("backbone")?, s("method")?, s("sweep")?, s("fold")?, s("test_set")?, s("level")?, s("metric")?);
    let (mean, std) = (f("mean")?, f("std")?);
    let cnt: Vec<Option<u64>> =
        agg.column("n").map_err(|e| anyhow!("{e}"))?.u64().map_err(|e| anyhow!("{e}"))?.iter().collect();
    let mut stats = BTreeMap::new();
    for i in 0..agg.height() {
        let n = cnt[i].unwrap_or(0) as usize;
        let Some(m) = mean[i].filter(|v| v.is_finite()) else { continue };
        let sd = std[i].filter(|v| v.is_finite() && n > 1);
        let key = Key {
            group: Group {
                backbone: bb[i].clone(),
                method: me[i].clone(),
                sweep: sw[i].clone(),
                fold: fo[i].clone(),
            },
            test_set: ts[i].clone(),
            level: Level::parse(&lv[i]).expect("levels written above"),
            metric: mt[i].clone(),
        };
        stats.insert(key, Stat { mean: m, std: sd, n });
    }
    Ok(Aggregates { stats, test_sets, avg_over_unseen })
}
