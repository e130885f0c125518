//! Loading the runs of a results directory: complete runs with their tables, and every other
//! run with the reason it is left out.
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::exit::CliError;
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
    /// Runs whose manifest says complete but whose files are damaged (checksum mismatch,
    /// missing or unreadable table): `(run, what is wrong)`. Also in `excluded`.
    pub damaged: Vec<(String, String)>,
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

/// Which runs of a directory a report covers (`bench report --protocol`, `--only`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only runs of this protocol (the manifests' `protocol`).
    pub protocol: Option<String>,
    /// Only runs whose resolved configuration has these values: `(dot path, value)`, e.g.
    /// `("training.length.steps", "240")`; the value is compared as JSON, or as text when it
    /// does not parse as JSON.
    pub only: Vec<(String, String)>,
}

impl Selection {
    /// Parses `PATH=VALUE` items of `--only`.
    pub fn parse_only(items: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
        items
            .iter()
            .map(|it| match it.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
                _ => Err(format!(
                    "--only {it}: expected PATH=VALUE with a path into the runs' resolved configuration, \
                     e.g. --only training.length.steps=240"
                )),
            })
            .collect()
    }

    fn keeps(&self, m: &Manifest) -> bool {
        self.protocol.as_ref().is_none_or(|p| *p == m.protocol)
            && self.only.iter().all(|(path, want)| {
                let got = path.split('.').try_fold(&m.config, |v, k| v.get(k));
                let want_json = serde_json::from_str::<serde_json::Value>(want)
                    .unwrap_or_else(|_| serde_json::Value::String(want.clone()));
                got.is_some_and(|g| *g == want_json || value_text(g) == *want)
            })
    }
}

/// Dot paths at which two JSON values differ (objects are descended; anything else compared whole).
fn differing_paths(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differing_paths(p, q, &path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(if at.is_empty() { "(whole configuration)".into() } else { at.to_string() }),
        _ => {}
    }
}

/// A run's resolved configuration without its seed: what must be equal between the seeds
/// aggregated in one table row.
fn config_without_seed(m: &Manifest) -> serde_json::Value {
    let mut c = m.config.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("seed");
    }
    c
}

/// Refuses what must not be mixed in one report: two protocols, runs of one table row whose
/// configurations differ beyond the seed (e.g. different step counts), and run directories
/// whose name is not their manifest's run id (a copied or renamed run).
fn check_consistent(runs: &[Run]) -> Result<()> {
    let protocols: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.manifest.protocol.as_str()).collect();
    if protocols.len() > 1 {
        let list: Vec<&str> = protocols.into_iter().collect();
        return Err(CliError::config(format!(
            "the runs come from {} protocols ({}); report one at a time with --protocol NAME",
            list.len(),
            list.join(", ")
        ))
        .into());
    }
    let mut first_of_group: BTreeMap<&Group, &Run> = BTreeMap::new();
    for r in runs {
        let Some(first) = first_of_group.get(&r.group).copied() else {
            first_of_group.insert(&r.group, r);
            continue;
        };
        let mut keys = Vec::new();
        differing_paths(&config_without_seed(&first.manifest), &config_without_seed(&r.manifest), "", &mut keys);
        if !keys.is_empty() {
            let shown: Vec<&str> = keys.iter().take(6).map(String::as_str).collect();
            let example = keys[0].clone();
            return Err(CliError::config(format!(
                "runs {} and {} ({}) differ in more than the seed: {}{}; they would be averaged as if \
                 they were seeds. Report one configuration with --only {example}=VALUE, or move one set \
                 of runs to another directory",
                first.id,
                r.id,
                r.manifest.display,
                shown.join(", "),
                if keys.len() > shown.len() { format!(" and {} more", keys.len() - shown.len()) } else { String::new() },
            ))
            .into());
        }
    }
    Ok(())
}

/// Reads every run directory under `dir`. Runs whose manifest is missing, unreadable, not
/// `complete`, or whose tables cannot be read are excluded with a reason; so is a second run of
/// the same (group, seed), which would otherwise count one seed twice.
pub fn load(dir: &Path, select: &Selection) -> Result<Loaded> {
    let mut runs = Vec::new();
    let mut excluded = Vec::new();
    let mut damaged = Vec::new();
    for (prefix, rd) in run_dirs(dir)? {
        let id = format!("{prefix}{}", rd.name());
        let manifest = match rd.read_manifest() {
            Ok(m) => m,
            Err(e) => {
                excluded.push(Excluded { id, manifest: None, reason: format!("{e:#}") });
                continue;
            }
        };
        if !select.keeps(&manifest) {
            continue;
        }
        if manifest.run_id != rd.name() {
            return Err(CliError::config(format!(
                "{}: the directory is named {} but its manifest is run {}; a copied or renamed run \
                 would be reported as another run (rename it back or remove it)",
                rd.path().display(),
                rd.name(),
                manifest.run_id
            ))
            .into());
        }
        match manifest.status {
            RunStatus::Complete => {}
            RunStatus::Running | RunStatus::Interrupted => {
                let reason = if manifest.status == RunStatus::Interrupted {
                    "interrupted (SIGINT/SIGTERM)"
                } else {
                    "still running or interrupted"
                };
                excluded.push(Excluded { id, manifest: Some(manifest), reason: reason.into() });
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
        let problems = rd.damage(&manifest);
        if !problems.is_empty() {
            let reason = format!("damaged: {}", problems.join("; "));
            damaged.push((id.clone(), problems.join("; ")));
            excluded.push(Excluded { id, manifest: Some(manifest), reason });
            continue;
        }
        let tables = (|| -> Result<_> { Ok((rd.read_metrics()?, rd.read_scores()?, rd.read_trace()?)) })();
        let (metrics, scores, trace) = match tables {
            Ok(t) => t,
            Err(e) => {
                damaged.push((id.clone(), format!("{e:#}")));
                excluded.push(Excluded { id, manifest: Some(manifest), reason: format!("damaged: {e:#}") });
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
    check_consistent(&runs)?;
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
    Ok(Loaded { runs: kept, damaged, excluded, display, sweep_values })
}
