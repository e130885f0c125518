//! Loading the runs of a results directory: complete runs with their tables, and every other
//! run with the reason it is left out.
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::results::{self, Manifest, MetricRow, RunStatus, ScoreRow, TraceRow};

/// Identity of a table row before the fold: one (backbone, method, sweep point). Seeds are the
/// replicates aggregated over; folds are columns of the leave-one-out tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    pub backbone: String,
    pub method: String,
    /// Sweep point label "path=value, ..." (sorted by path); "" without a sweep.
    pub sweep: String,
    /// Fold name; "" without folds.
    pub fold: String,
}

pub struct Run {
    pub id: String,
    pub manifest: Manifest,
    pub group: Group,
    pub metrics: Vec<MetricRow>,
    pub scores: Vec<ScoreRow>,
    pub trace: Vec<TraceRow>,
}

/// A run left out of the tables, with the reason.
pub struct Excluded {
    pub id: String,
    pub manifest: Option<Manifest>,
    pub reason: String,
}

pub struct Loaded {
    /// Complete runs sorted by (group, seed, id).
    pub runs: Vec<Run>,
    /// Every run directory in name order, with its status line, for runs.md.
    pub excluded: Vec<Excluded>,
    /// method -> display name.
    pub display: BTreeMap<String, String>,
    /// sweep label -> values in path order, for numeric sorting.
    pub sweep_values: BTreeMap<String, Vec<serde_json::Value>>,
}

/// The run's sweep point as `key=value, ...`; a swept `model.backbone` is left out, since the
/// backbone is a grouping and a column of its own.
pub fn sweep_label(m: &Manifest) -> String {
    m.sweep
        .iter()
        .filter(|(k, _)| k.as_str() != "model.backbone")
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Numbers compare numerically, anything else by its text; numbers sort before text.
pub fn cmp_values(a: &[serde_json::Value], b: &[serde_json::Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p.total_cmp(&q),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => value_text(x).cmp(&value_text(y)),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Run directories under `dir`; a subdirectory without a manifest that holds run directories
/// with manifests is a protocol directory of a merged tree (`results/runs/`), and its runs are
/// listed as `<protocol>/<run>`.
fn run_dirs(dir: &Path) -> Result<Vec<(String, results::RunDir)>> {
    let mut out = Vec::new();
    for rd in results::list_runs(dir)? {
        if !rd.file(results::MANIFEST_FILE).exists() {
            let inner = results::list_runs(rd.path())?;
            if inner.iter().any(|r| r.file(results::MANIFEST_FILE).exists()) {
                let prefix = format!("{}/", rd.name());
                out.extend(inner.into_iter().map(|r| (prefix.clone(), r)));
                continue;
            }
        }
        out.push((String::new(), rd));
    }
    Ok(out)
}

/// Reads every run directory under `dir`. Runs whose manifest is missing, unreadable, not
/// `complete`, or whose tables cannot be read are excluded with a reason; so is a second run of
/// the same (group, seed), which would otherwise count one seed twice.
pub fn load(dir: &Path) -> Result<Loaded> {
    let mut runs = Vec::new();
    let mut excluded = Vec::new();
    for (prefix, rd) in run_dirs(dir)? {
        let id = format!("{prefix}{}", rd.name());
        let manifest = match rd.read_manifest() {
            Ok(m) => m,
            Err(e) => {
                excluded.push(Excluded { id, manifest: None, reason: format!("{e:#}") });
                continue;
            }
        };
        match manifest.status {
            RunStatus::Complete => {}
            RunStatus::Running => {
                excluded.push(Excluded {
                    id,
                    manifest: Some(manifest),
                    reason: "still running or interrupted".into(),
                });
                continue;
            }
            RunStatus::Failed => {
                let reason = match &manifest.failure {
                    Some(f) => match f.step {
                        Some(s) => format!("failed at step {s}: {}", f.reason),
                        None => format!("failed: {}", f.reason),
                    },
                    None => "failed (no reason recorded)".into(),
                };
                excluded.push(Excluded { id, manifest: Some(manifest), reason });
                continue;
            }
        }
        let tables = (|| -> Result<_> { Ok((rd.read_metrics()?, rd.read_scores()?, rd.read_trace()?)) })();
        let (metrics, scores, trace) = match tables {
            Ok(t) => t,
            Err(e) => {
                excluded.push(Excluded { id, manifest: Some(manifest), reason: format!("{e:#}") });
                continue;
            }
        };
        let group = Group {
            backbone: manifest.backbone.clone(),
            method: manifest.method.clone(),
            sweep: sweep_label(&manifest),
            fold: manifest.fold.clone().unwrap_or_default(),
        };
        runs.push(Run { id, manifest, group, metrics, scores, trace });
    }
    runs.sort_by(|a, b| (&a.group, a.manifest.seed, &a.id).cmp(&(&b.group, b.manifest.seed, &b.id)));
    let mut kept: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        if let Some(prev) = kept.last()
            && prev.group == r.group
            && prev.manifest.seed == r.manifest.seed
        {
            let reason =
                format!("duplicate of run {} (same method, backbone, fold, sweep point and seed)", prev.id);
            excluded.push(Excluded { id: r.id, manifest: Some(r.manifest), reason });
            continue;
        }
        kept.push(r);
    }
    excluded.sort_by(|a, b| a.id.cmp(&b.id));
    let mut display = BTreeMap::new();
    let mut sweep_values = BTreeMap::new();
    for r in &kept {
        display.entry(r.manifest.method.clone()).or_insert_with(|| r.manifest.display.clone());
        sweep_values
            .entry(r.group.sweep.clone())
            .or_insert_with(|| r.manifest.sweep.values().cloned().collect());
    }
    Ok(Loaded { runs: kept, excluded, display, sweep_values })
}
