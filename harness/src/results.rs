//! Results store: one directory per training run, written atomically, read back with errors
//! that name the file.
//!
//! # Layout (the contract between `bench run` and `bench report`; see `docs/results-format.md`)
//!
//! ```text
//! results/runs/<protocol>/<run-id>/
//!   manifest.json      Manifest (serde JSON, pretty-printed); status running | complete | failed
//!   trace.parquet      TraceRow per step (and per domain; domain null = the aggregate row)
//!   scores.parquet     ScoreRow per test frame (score = probability of fake)
//!   metrics.parquet    MetricRow per (test set, level)
//!   metrics.csv        the same table as CSV
//!   weights.safetensors  optional, written by the runner itself
//! ```
//!
//! A run counts as complete only when its `manifest.json` parses and says `"status":
//! "complete"`. The runner should write the manifest with `running` first, then the tables,
//! then the manifest again with `complete` (or `failed` plus a `failure`), so an interrupted run
//! is never mistaken for a finished one.
//!
//! Every write goes to a hidden temporary file in the same directory (`.<name>.tmp-<pid>-<n>`),
//! is fsynced, then renamed over the final name, and the directory is fsynced. Readers only
//! open the final names, so a leftover temporary file from a crash is ignored; `list_runs`
//! skips hidden entries.
//!
//! Rows are plain Rust structs; the conversion to and from polars DataFrames happens only here,
//! so callers never depend on polars. Nullable numbers are `Option<f64>` and are stored as
//! parquet nulls (never NaN).
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const TRACE_FILE: &str = "trace.parquet";
pub const SCORES_FILE: &str = "scores.parquet";
pub const METRICS_FILE: &str = "metrics.parquet";
pub const METRICS_CSV_FILE: &str = "metrics.csv";
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Lifecycle of a run as recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Complete,
    Failed,
    /// Stopped by SIGINT/SIGTERM; `bench run` trains it again from the start.
    Interrupted,
}

/// Why a run failed: the step it reached (None before training started) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    /// Commit hash of the working tree `bench run` ran in (the protocol file's), None outside a
    /// git checkout.
    pub commit: Option<String>,
    /// Whether tracked files had uncommitted changes; None when unknown.
    pub dirty: Option<bool>,
    /// Commit the `bench` binary was built from, None for a build outside a git checkout (and in
    /// manifests written before it was recorded). This is the code that made the numbers; it
    /// differs from `commit` when a binary built elsewhere or earlier runs in this tree.
    #[serde(default)]
    pub build_commit: Option<String>,
    /// Whether the build's tracked files differed from `build_commit`.
    #[serde(default)]
    pub build_dirty: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub dfbench: String,
    #[serde(default)]
    pub candle: Option<String>,
    #[serde(default)]
    pub rustc: Option<String>,
    /// Versions of the other crates that shape the numbers (candle-nn, polars, image, ...).
    #[serde(default)]
    pub crates: BTreeMap<String, String>,
}

/// The protocol's `[report]` section, copied into every manifest so that a results directory
/// is self-describing (`bench report` needs no protocol file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSpec {
    /// Method name (as in the protocol) every other method is compared against (DeLong).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Table ids: csdfd-table1, csdfd-table2, csdfd-table3, roga-table2, roga-table4,
    /// sensitivity, imbalance.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Plot ids: loss-conflict, cosine, roc, sensitivity, auc-bar.
    #[serde(default)]
    pub plots: Vec<String>,
    /// `report.noise_floor`: two methods whose runs differ only at rounding level. Omitted from
    /// the JSON when empty, so manifests without it are byte-identical to before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise_floor: Vec<String>,
}

/// `manifest.json` of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub protocol: String,
    /// Method name as written in the protocol (unique within it).
    pub method: String,
    /// Registry kind of the method (e.g. "cs-dfd", "roga", "erm").
    pub method_kind: String,
    /// Name shown in tables, e.g. "RoGA (reconstructed)".
    pub display: String,
    pub backbone: String,
    pub seed: u64,
    /// Fold name for leave-one-out protocols (e.g. the held-out manipulation).
    #[serde(default)]
    pub fold: Option<String>,
    /// Sweep point: config path -> value (BTreeMap: sorted, so the JSON is stable).
    #[serde(default)]
    pub sweep: BTreeMap<String, serde_json::Value>,
    /// The fully resolved run configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    pub status: RunStatus,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub git: GitInfo,
    #[serde(default)]
    pub versions: Versions,
    #[serde(default)]
    pub device: String,
    /// `training.precision` the run trained with (`f32`, `bf16`); absent in manifests written
    /// before the key existed, which all trained in f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Whether f32 matmuls and convolutions on the run's CUDA device could use TF32 tensor cores;
    /// absent for CPU runs (which never use TF32) and in manifests written before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
    #[serde(default)]
    pub host: String,
    /// RFC 3339 timestamps.
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub ended: Option<String>,
    /// Files skipped while loading (unreadable image, missing landmarks), per stream / test set.
    #[serde(default)]
    pub skipped_files: BTreeMap<String, u64>,
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub report: ReportSpec,
    /// Size and SHA-256 of every result file, recorded when the run completes, so that a
    /// truncated, garbled or deleted file is detected (see [`RunDir::damage`]). Empty in manifests
    /// written before checksums were recorded: those runs cannot be verified.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileDigest>,
    /// What the run read: frames per set and label, leakage between its sets.
    #[serde(default, skip_serializing_if = "DataUsage::is_empty")]
    pub data: DataUsage,
}

/// Size in bytes and SHA-256 (lowercase hex) of one result file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

/// The data a run used (`Manifest::data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataUsage {
    /// Frames each set actually used, per label: `train`, `val`, `test:<name>` -> label -> frames.
    #[serde(default)]
    pub frames_used: BTreeMap<String, BTreeMap<String, u64>>,
    /// Train/test leakage: shared videos or frame files, a validation set that is a test set,
    /// and what `train.drop_overlap` dropped.
    #[serde(default)]
    pub leakage: Vec<String>,
    /// Frames per label in every training batch of each stream the method read (`original`,
    /// `online`, `domain:<manipulation>`) -> label -> frames. Empty in manifests written before
    /// it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub train_batches: BTreeMap<String, BTreeMap<String, u64>>,
    /// Real frames per fake frame in each batch of the original (or domain) streams, as used:
    /// `train.real_fake_ratio` after rounding to whole frames, 1 when the key is omitted. None
    /// when the method reads no such stream, or a batch holds no fake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_fake_ratio: Option<f64>,
}

impl DataUsage {
    pub fn is_empty(&self) -> bool {
        self.frames_used.is_empty()
            && self.leakage.is_empty()
            && self.train_batches.is_empty()
            && self.real_fake_ratio.is_none()
    }
}

impl Manifest {
    /// A manifest with status `running`, this build's dfbench version and empty optional fields;
    /// the runner fills in the rest (fold, sweep, config, git, device, host, started, report).
    pub fn new(
        run_id: impl Into<String>,
        protocol: impl Into<String>,
        method: impl Into<String>,
        method_kind: impl Into<String>,
        display: impl Into<String>,
        backbone: impl Into<String>,
        seed: u64,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            protocol: protocol.into(),
            method: method.into(),
            method_kind: method_kind.into(),
            display: display.into(),
            backbone: backbone.into(),
            seed,
            fold: None,
            sweep: BTreeMap::new(),
            config: serde_json::Value::Null,
            status: RunStatus::Running,
            failure: None,
            git: GitInfo::default(),
            versions: Versions {
                dfbench: env!("CARGO_PKG_VERSION").to_string(),
                candle: None,
                rustc: None,
                crates: BTreeMap::new(),
            },
            device: String::new(),
            precision: None,
            tf32: None,
            host: String::new(),
            started: None,
            ended: None,
            skipped_files: BTreeMap::new(),
            notes: Vec::new(),
            report: ReportSpec::default(),
            files: BTreeMap::new(),
            data: DataUsage::default(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.status == RunStatus::Complete
    }
}

/// One row of `trace.parquet`. `domain` None is the aggregate row of a step; per-domain methods
/// (RoGA) add one row per domain with the same `step`. Quantities a method does not have are None.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    pub step: u32,
    pub domain: Option<String>,
    pub loss: Option<f64>,
    pub l1: Option<f64>,
    pub l2: Option<f64>,
    pub cos_g1_g2: Option<f64>,
    pub norm_g1: Option<f64>,
    pub norm_g2: Option<f64>,
    pub norm_update: Option<f64>,
    pub mu1: Option<f64>,
    pub mu2: Option<f64>,
    pub lr: Option<f64>,
    pub wall_s: Option<f64>,
    /// CS-DFD with CGR: `||CGR term|| / ||g1_p + g2_p||` on the projection head. Null for other
    /// methods and in trace files written before the column existed.
    #[serde(default)]
    pub cgr_rel: Option<f64>,
}

/// One row of `scores.parquet`: one test frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub test_set: String,
    pub dataset: String,
    /// 0 = real, 1 = fake.
    pub label: u8,
    pub label_name: String,
    pub video: String,
    pub frame: String,
    /// Probability of fake.
    pub score: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    #[serde(rename = "in-domain")]
    InDomain,
    #[serde(rename = "unseen")]
    Unseen,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::InDomain => "in-domain",
            Role::Unseen => "unseen",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in-domain" => Some(Role::InDomain),
            "unseen" => Some(Role::Unseen),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Frame,
    Video,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Frame => "frame",
            Level::Video => "video",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "frame" => Some(Level::Frame),
            "video" => Some(Level::Video),
            _ => None,
        }
    }
}

/// One row of `metrics.parquet` / `metrics.csv`. A metric is None when undefined (e.g. a test
/// set with one class has no AUC), with `undefined_reason` saying why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub test_set: String,
    pub role: Role,
    pub level: Level,
    pub auc: Option<f64>,
    pub ap: Option<f64>,
    pub eer: Option<f64>,
    pub eer_interp: Option<f64>,
    pub acc: Option<f64>,
    pub acc_real: Option<f64>,
    pub acc_fake: Option<f64>,
    pub undefined_reason: Option<String>,
    pub n: u64,
    pub n_real: u64,
    pub n_fake: u64,
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: a hidden temporary file in the same directory, fsync, rename,
/// then fsync of the directory so the rename itself survives a crash.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?.to_string_lossy();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut file =
            File::create(&tmp).with_context(|| format!("{}: cannot create temporary file", tmp.display()))?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all().with_context(|| format!("{}: fsync failed", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        // Directory fsync is best effort: not every platform/filesystem allows opening a dir.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// `write_atomic` for an in-memory byte buffer.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |f| {
        f.write_all(bytes)?;
        Ok(())
    })
}

fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    write_atomic(path, |f| {
        ParquetWriter::new(f)
            .with_compression(ParquetCompression::Uncompressed)
            .finish(df)
            .map_err(|e| anyhow!("parquet encoding failed: {e}"))?;
        Ok(())
    })
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow!("{}: not a readable parquet file: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// DataFrame conversion

fn col<T, V>(name: &str, values: V) -> Column
where
    Series: NamedFrom<V, T>,
    T: ?Sized,
{
    Series::new(name.into(), values).into()
}

pub fn trace_frame(rows: &[TraceRow]) -> Result<DataFrame> {
    let f = |g: fn(&TraceRow) -> Option<f64>| rows.iter().map(g).collect::<Vec<_>>();
    let cols = vec![
        col("step", rows.iter().map(|r| r.step).collect::<Vec<u32>>()),
        col("domain", rows.iter().map(|r| r.domain.clone()).collect::<Vec<Option<String>>>()),
        col("loss", f(|r| r.loss)),
        col("l1", f(|r| r.l1)),
        col("l2", f(|r| r.l2)),
        col("cos_g1_g2", f(|r| r.cos_g1_g2)),
        col("norm_g1", f(|r| r.norm_g1)),
        col("norm_g2", f(|r| r.norm_g2)),
        col("norm_update", f(|r| r.norm_update)),
        col("mu1", f(|r| r.mu1)),
        col("mu2", f(|r| r.mu2)),
        col("lr", f(|r| r.lr)),
        col("wall_s", f(|r| r.wall_s)),
        col("cgr_rel", f(|r| r.cgr_rel)),
    ];
    DataFrame::new(rows.len(), cols).map_err(|e| anyhow!("building the trace table: {e}"))
}

pub fn scores_frame(rows: &[ScoreRow]) -> Result<DataFrame> {
    let s = |g: fn(&ScoreRow) -> &str| rows.iter().map(|r| g(r).to_string()).collect::<Vec<String>>();
    let cols = vec![
        col("test_set", s(|r| &r.test_set)),
        col("dataset", s(|r| &r.dataset)),
        // Int32: polars' minimal feature set has no UInt8 dtype; readers accept any integer type.
        col("label", rows.iter().map(|r| i32::from(r.label)).collect::<Vec<i32>>()),
        col("label_name", s(|r| &r.label_name)),
        col("video", s(|r| &r.video)),
        col("frame", s(|r| &r.frame)),
        col("score", rows.iter().map(|r| r.score).collect::<Vec<f64>>()),
    ];
    DataFrame::new(rows.len(), cols).map_err(|e| anyhow!("building the scores table: {e}"))
}

pub fn metrics_frame(rows: &[MetricRow]) -> Result<DataFrame> {
    let f = |g: fn(&MetricRow) -> Option<f64>| rows.iter().map(g).collect::<Vec<_>>();
    let u = |g: fn(&MetricRow) -> u64| rows.iter().map(g).collect::<Vec<u64>>();
    let cols = vec![
        col("test_set", rows.iter().map(|r| r.test_set.clone()).collect::<Vec<String>>()),
        col("role", rows.iter().map(|r| r.role.as_str()).collect::<Vec<&str>>()),
        col("level", rows.iter().map(|r| r.level.as_str()).collect::<Vec<&str>>()),
        col("auc", f(|r| r.auc)),
        col("ap", f(|r| r.ap)),
        col("eer", f(|r| r.eer)),
        col("eer_interp", f(|r| r.eer_interp)),
        col("acc", f(|r| r.acc)),
        col("acc_real", f(|r| r.acc_real)),
        col("acc_fake", f(|r| r.acc_fake)),
        col(
            "undefined_reason",
            rows.iter().map(|r| r.undefined_reason.clone()).collect::<Vec<Option<String>>>(),
        ),
        col("n", u(|r| r.n)),
        col("n_real", u(|r| r.n_real)),
        col("n_fake", u(|r| r.n_fake)),
    ];
    DataFrame::new(rows.len(), cols).map_err(|e| anyhow!("building the metrics table: {e}"))
}

/// Typed column access with errors naming the file and the column.
struct Cols<'a> {
    df: &'a DataFrame,
    file: &'a Path,
}

impl Cols<'_> {
    fn get(&self, name: &str, dtype: &DataType) -> Result<Series> {
        let c =
            self.df.column(name).map_err(|_| anyhow!("{}: missing column `{name}`", self.file.display()))?;
        c.as_materialized_series().strict_cast(dtype).map_err(|e| {
            anyhow!("{}: column `{name}` has type {}, expected {dtype}: {e}", self.file.display(), c.dtype())
        })
    }
    fn f64_opt(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let s = self.get(name, &DataType::Float64)?;
        Ok(s.f64().expect("cast to f64").iter().collect())
    }
    /// A nullable column added after files were written: all null when the file lacks it.
    fn f64_added(&self, name: &str) -> Result<Vec<Option<f64>>> {
        if self.df.column(name).is_err() {
            return Ok(vec![None; self.df.height()]);
        }
        self.f64_opt(name)
    }
    fn f64_req(&self, name: &str) -> Result<Vec<f64>> {
        self.f64_opt(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(x) if x.is_finite() => Ok(x),
                _ => bail!("{}: row {i}: column `{name}` must be a finite number", self.file.display()),
            })
            .collect()
    }
    fn i64_req(&self, name: &str) -> Result<Vec<i64>> {
        let s = self.get(name, &DataType::Int64)?;
        s.i64()
            .expect("cast to i64")
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| anyhow!("{}: row {i}: column `{name}` is null", self.file.display()))
            })
            .collect()
    }
    fn str_opt(&self, name: &str) -> Result<Vec<Option<String>>> {
        let s = self.get(name, &DataType::String)?;
        Ok(s.str().expect("cast to str").iter().map(|v| v.map(str::to_string)).collect())
    }
    fn str_req(&self, name: &str) -> Result<Vec<String>> {
        self.str_opt(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| anyhow!("{}: row {i}: column `{name}` is null", self.file.display()))
            })
            .collect()
    }
}

/// Integer column values as an unsigned type; a negative or too large value names its row.
fn to_unsigned<T: TryFrom<i64>>(file: &Path, name: &str, v: Vec<i64>) -> Result<Vec<T>> {
    v.into_iter()
        .enumerate()
        .map(|(i, x)| {
            T::try_from(x).map_err(|_| {
                anyhow!(
                    "{}: row {i}: `{name}` = {x} is out of range (expected a non-negative count)",
                    file.display()
                )
            })
        })
        .collect()
}

pub fn trace_rows(df: &DataFrame, file: &Path) -> Result<Vec<TraceRow>> {
    let c = Cols { df, file };
    let step = to_unsigned(file, "step", c.i64_req("step")?)?;
    let domain = c.str_opt("domain")?;
    let [loss, l1, l2, cos, ng1, ng2, nu, mu1, mu2, lr, wall] =
        ["loss", "l1", "l2", "cos_g1_g2", "norm_g1", "norm_g2", "norm_update", "mu1", "mu2", "lr", "wall_s"]
            .map(|n| c.f64_opt(n));
    let (loss, l1, l2, cos, ng1, ng2, nu, mu1, mu2, lr, wall) =
        (loss?, l1?, l2?, cos?, ng1?, ng2?, nu?, mu1?, mu2?, lr?, wall?);
    let cgr_rel = c.f64_added("cgr_rel")?;
    Ok((0..df.height())
        .map(|i| TraceRow {
            step: step[i],
            // "" is accepted as the aggregate row too (documented), normalised to None.
            domain: domain[i].clone().filter(|d| !d.is_empty()),
            loss: loss[i],
            l1: l1[i],
            l2: l2[i],
            cos_g1_g2: cos[i],
            norm_g1: ng1[i],
            norm_g2: ng2[i],
            norm_update: nu[i],
            mu1: mu1[i],
            mu2: mu2[i],
            lr: lr[i],
            wall_s: wall[i],
            cgr_rel: cgr_rel[i],
        })
        .collect())
}

pub fn score_rows(df: &DataFrame, file: &Path) -> Result<Vec<ScoreRow>> {
    let c = Cols { df, file };
    let test_set = c.str_req("test_set")?;
    let dataset = c.str_req("dataset")?;
    let label = c.i64_req("label")?;
    let label_name = c.str_req("label_name")?;
    let video = c.str_req("video")?;
    let frame = c.str_req("frame")?;
    let score = c.f64_req("score")?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let l = match label[i] {
            0 => 0,
            1 => 1,
            x => bail!("{}: row {i}: `label` = {x}, expected 0 (real) or 1 (fake)", file.display()),
        };
        out.push(ScoreRow {
            test_set: test_set[i].clone(),
            dataset: dataset[i].clone(),
            label: l,
            label_name: label_name[i].clone(),
            video: video[i].clone(),
            frame: frame[i].clone(),
            score: score[i],
        });
    }
    Ok(out)
}

pub fn metric_rows(df: &DataFrame, file: &Path) -> Result<Vec<MetricRow>> {
    let c = Cols { df, file };
    let test_set = c.str_req("test_set")?;
    let role = c.str_req("role")?;
    let level = c.str_req("level")?;
    let [auc, ap, eer, eer_i, acc, acc_r, acc_f] =
        ["auc", "ap", "eer", "eer_interp", "acc", "acc_real", "acc_fake"].map(|n| c.f64_opt(n));
    let (auc, ap, eer, eer_i, acc, acc_r, acc_f) = (auc?, ap?, eer?, eer_i?, acc?, acc_r?, acc_f?);
    let reason = c.str_opt("undefined_reason")?;
    let n = to_unsigned(file, "n", c.i64_req("n")?)?;
    let n_real = to_unsigned(file, "n_real", c.i64_req("n_real")?)?;
    let n_fake = to_unsigned(file, "n_fake", c.i64_req("n_fake")?)?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        out.push(MetricRow {
            test_set: test_set[i].clone(),
            role: Role::parse(&role[i]).ok_or_else(|| {
                anyhow!(
                    "{}: row {i}: `role` = {:?}, expected \"in-domain\" or \"unseen\"",
                    file.display(),
                    role[i]
                )
            })?,
            level: Level::parse(&level[i]).ok_or_else(|| {
                anyhow!(
                    "{}: row {i}: `level` = {:?}, expected \"frame\" or \"video\"",
                    file.display(),
                    level[i]
                )
            })?,
            auc: auc[i],
            ap: ap[i],
            eer: eer[i],
            eer_interp: eer_i[i],
            acc: acc[i],
            acc_real: acc_r[i],
            acc_fake: acc_f[i],
            undefined_reason: reason[i].clone(),
            n: n[i],
            n_real: n_real[i],
            n_fake: n_fake[i],
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Run directories

/// One run's directory `<root>/<protocol>/<run-id>/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunDir {
    path: PathBuf,
}

/// The store root, usually `results/runs`.
#[derive(Debug, Clone)]
pub struct ResultsStore {
    root: PathBuf,
}

impl ResultsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn protocol_dir(&self, protocol: &str) -> PathBuf {
        self.root.join(protocol)
    }
    /// Creates (or reopens) `<root>/<protocol>/<run_id>/`.
    pub fn create(&self, protocol: &str, run_id: &str) -> Result<RunDir> {
        RunDir::create(&self.root, protocol, run_id)
    }
    /// The runs of a protocol (see [`list_runs`]).
    pub fn list_runs(&self, protocol: &str) -> Result<Vec<RunDir>> {
        list_runs(&self.protocol_dir(protocol))
    }
}

fn check_component(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.starts_with('.') || s.contains(['/', '\\']) || s.chars().any(|c| c.is_control()) {
        bail!(
            "{what} {s:?} cannot be used as a directory name (empty, hidden, or contains a path separator)"
        );
    }
    Ok(())
}

impl RunDir {
    /// Creates (or reopens, for a resumed run) `<root>/<protocol>/<run_id>/`.
    pub fn create(root: &Path, protocol: &str, run_id: &str) -> Result<Self> {
        check_component("protocol name", protocol)?;
        check_component("run id", run_id)?;
        let path = root.join(protocol).join(run_id);
        fs::create_dir_all(&path)
            .with_context(|| format!("{}: cannot create run directory", path.display()))?;
        Ok(Self { path })
    }
    /// Opens an existing run directory (nothing is read yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if !path.is_dir() {
            bail!("{}: not a run directory", path.display());
        }
        Ok(Self { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The directory name, which is the run id.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let mut text = serde_json::to_string_pretty(m).context("serialising the manifest")?;
        text.push('\n');
        write_bytes_atomic(&self.file(MANIFEST_FILE), text.as_bytes())
    }
    pub fn write_trace(&self, rows: &[TraceRow]) -> Result<()> {
        write_parquet(&self.file(TRACE_FILE), &mut trace_frame(rows)?)
    }
    pub fn write_scores(&self, rows: &[ScoreRow]) -> Result<()> {
        write_parquet(&self.file(SCORES_FILE), &mut scores_frame(rows)?)
    }
    /// Writes `metrics.parquet` and `metrics.csv` (CSV: empty field = null).
    pub fn write_metrics(&self, rows: &[MetricRow]) -> Result<()> {
        let mut df = metrics_frame(rows)?;
        write_parquet(&self.file(METRICS_FILE), &mut df)?;
        write_atomic(&self.file(METRICS_CSV_FILE), |f| {
            CsvWriter::new(f)
                .include_header(true)
                .finish(&mut df)
                .map_err(|e| anyhow!("CSV encoding failed: {e}"))
        })
    }

    pub fn read_manifest(&self) -> Result<Manifest> {
        read_manifest(&self.file(MANIFEST_FILE))
    }
    pub fn read_trace(&self) -> Result<Vec<TraceRow>> {
        let p = self.file(TRACE_FILE);
        trace_rows(&read_parquet(&p)?, &p)
    }
    pub fn read_scores(&self) -> Result<Vec<ScoreRow>> {
        let p = self.file(SCORES_FILE);
        score_rows(&read_parquet(&p)?, &p)
    }
    pub fn read_metrics(&self) -> Result<Vec<MetricRow>> {
        let p = self.file(METRICS_FILE);
        metric_rows(&read_parquet(&p)?, &p)
    }
    pub fn is_complete(&self) -> bool {
        is_complete(&self.path)
    }
}

pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}:{}:{}: not a valid manifest: {e}", path.display(), e.line(), e.column()))
}

/// True only when `<run_dir>/manifest.json` parses and says `complete`.
pub fn is_complete(run_dir: &Path) -> bool {
    read_manifest(&run_dir.join(MANIFEST_FILE)).is_ok_and(|m| m.status == RunStatus::Complete)
}

/// The folder `bench report` writes into by default, inside a protocol's results directory; it
/// is not a run.
pub const REPORT_DIR: &str = "report";

/// The run directories under a protocol directory, sorted by name; hidden entries (temporary
/// files, `.DS_Store`), plain files and the `report/` folder are skipped. Completeness is not
/// checked here.
pub fn list_runs(protocol_dir: &Path) -> Result<Vec<RunDir>> {
    let entries = fs::read_dir(protocol_dir)
        .with_context(|| format!("{}: cannot list runs", protocol_dir.display()))?;
    let mut runs = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list runs", protocol_dir.display()))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') || name == REPORT_DIR || !e.path().is_dir() {
            continue;
        }
        runs.push(RunDir { path: e.path() });
    }
    runs.sort();
    Ok(runs)
}

// ---------------------------------------------------------------------------------------------
// Checksums

/// The tables every complete run has; `weights.safetensors` is recorded too when it was written.
pub const RESULT_FILES: [&str; 4] = [TRACE_FILE, SCORES_FILE, METRICS_FILE, METRICS_CSV_FILE];

/// Size and SHA-256 of a file, read in blocks (weights files can be hundreds of MB).
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileDigest { size, sha256 })
}

impl RunDir {
    /// Digests of the result tables and, with `with_weights`, of `weights.safetensors`: what the
    /// runner records in the manifest when it marks the run complete.
    pub fn digest_files(&self, with_weights: bool) -> Result<BTreeMap<String, FileDigest>> {
        let mut names: Vec<&str> = RESULT_FILES.to_vec();
        if with_weights {
            names.push(WEIGHTS_FILE);
        }
        names.into_iter().map(|n| Ok((n.to_string(), digest_file(&self.file(n))?))).collect()
    }

    /// What is wrong with the files of a complete run, one line per file: missing, another size
    /// (truncated or replaced) or another SHA-256 (changed in place). Empty when every recorded
    /// file matches, and for manifests that predate checksums (nothing to check against).
    pub fn damage(&self, m: &Manifest) -> Vec<String> {
        if m.files.is_empty() {
            return Vec::new();
        }
        let mut problems = Vec::new();
        for name in RESULT_FILES {
            if !m.files.contains_key(name) {
                problems.push(format!("{name}: not recorded in the manifest's checksums"));
            }
        }
        for (name, want) in &m.files {
            let path = self.file(name);
            match digest_file(&path) {
                Err(_) if !path.exists() => problems.push(format!("{name}: missing")),
                Err(e) => problems.push(format!("{name}: {e:#}")),
                Ok(got) if got.size != want.size => problems.push(format!(
                    "{name}: {} bytes where the manifest records {} (truncated or replaced)",
                    got.size, want.size
                )),
                Ok(got) if got.sha256 != want.sha256 => {
                    problems.push(format!("{name}: contents differ from the recorded SHA-256 (changed or damaged)"))
                }
                Ok(_) => {}
            }
        }
        problems
    }
}

/// True when `<run_dir>` holds a complete run whose recorded files are intact; a damaged run is
/// not complete, so `bench run` trains it again.
pub fn is_complete_and_intact(run_dir: &Path) -> bool {
    match read_manifest(&run_dir.join(MANIFEST_FILE)) {
        Ok(m) if m.status == RunStatus::Complete => RunDir { path: run_dir.to_path_buf() }.damage(&m).is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// One writer per run

/// Name of the lock file inside a run directory (hidden, so listings skip it).
pub const LOCK_FILE: &str = ".lock";
/// The create-exclusive lock file used where the filesystem refuses advisory locks.
pub const EXCLUSIVE_LOCK_FILE: &str = ".lock.excl";

/// Held while one process trains a run; dropping it releases the run.
///
/// The lock is an advisory `flock` on `<run>/.lock`: the kernel releases it when the process
/// dies, however it dies, so a stale lock never blocks. Linux maps `flock` onto NFS byte-range
/// locks (NFSv3 with lockd, NFSv4 natively); Lustre mounted without `-o flock` refuses it
/// (ENOSYS/EOPNOTSUPP/ENOLCK). There the lock falls back to creating `<run>/.lock.excl`
/// exclusively (atomic on NFSv3+ and Lustre), holding `host pid`; such a lock left by a dead
/// process is taken over when it names this host and the pid no longer exists, and is otherwise
/// reported with its holder so the user can remove it.
#[derive(Debug)]
pub struct RunLock {
    _file: Option<File>,
    exclusive_file: Option<PathBuf>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(p) = &self.exclusive_file {
            let _ = fs::remove_file(p);
        }
    }
}

#[derive(Debug)]
pub enum LockOutcome {
    Acquired(RunLock),
    /// Another live process holds the run; its `host pid` when known.
    HeldBy(String),
}

fn lock_unsupported(e: &std::io::Error) -> bool {
    // ENOLCK 37, ENOSYS 38, EOPNOTSUPP 95 on Linux.
    e.kind() == std::io::ErrorKind::Unsupported || matches!(e.raw_os_error(), Some(37 | 38 | 95))
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists() || !Path::new("/proc/self").exists()
}

impl RunDir {
    /// Takes the run for this process, or says who holds it. `holder` (e.g. `host pid`) is
    /// written into the lock file for whoever finds it taken.
    pub fn try_lock(&self, holder: &str) -> Result<LockOutcome> {
        let path = self.file(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                // Best effort: the holder's name only serves messages.
                let _ = file.set_len(0).and_then(|_| file.write_all(holder.as_bytes()));
                Ok(LockOutcome::Acquired(RunLock { _file: Some(file), exclusive_file: None }))
            }
            Err(fs::TryLockError::WouldBlock) => {
                let who = fs::read_to_string(&path).unwrap_or_default();
                Ok(LockOutcome::HeldBy(if who.trim().is_empty() { "another process".into() } else { who.trim().into() }))
            }
            Err(fs::TryLockError::Error(e)) if lock_unsupported(&e) => self.try_lock_exclusive(holder, true),
            Err(fs::TryLockError::Error(e)) => {
                Err(anyhow!("{}: cannot lock the run: {e}", path.display()))
            }
        }
    }

    /// Whether a live process holds the run: `None` when the run has no lock file (written by a
    /// version without locks) or the filesystem cannot tell. Looks only; creates nothing.
    pub fn is_locked(&self) -> Option<bool> {
        if self.file(EXCLUSIVE_LOCK_FILE).exists() {
            return Some(true);
        }
        let file = fs::OpenOptions::new().read(true).write(true).open(self.file(LOCK_FILE)).ok()?;
        match file.try_lock() {
            Ok(()) => Some(false),
            Err(fs::TryLockError::WouldBlock) => Some(true),
            Err(fs::TryLockError::Error(_)) => None,
        }
    }

    /// The fallback lock: `create_new` of `.lock.excl`. Public for tests of filesystems without
    /// advisory locks.
    pub fn try_lock_exclusive(&self, holder: &str, retry_stale: bool) -> Result<LockOutcome> {
        let path = self.file(EXCLUSIVE_LOCK_FILE);
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(holder.as_bytes())
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("{}: cannot write the lock file", path.display()))?;
                Ok(LockOutcome::Acquired(RunLock { _file: None, exclusive_file: Some(path) }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let who = fs::read_to_string(&path).unwrap_or_default();
                let mut words = who.split_whitespace();
                let (host, pid) = (words.next(), words.next().and_then(|p| p.parse::<u32>().ok()));
                let this_host = holder.split_whitespace().next();
                if retry_stale && host.is_some() && host == this_host && pid.is_some_and(|p| !pid_alive(p)) {
                    let _ = fs::remove_file(&path);
                    return self.try_lock_exclusive(holder, false);
                }
                Ok(LockOutcome::HeldBy(format!(
                    "{} (lock file {}; remove it if that process is gone)",
                    if who.trim().is_empty() { "another process" } else { who.trim() },
                    path.display()
                )))
            }
            Err(e) => Err(anyhow!("{}: cannot create the lock file: {e}", path.display())),
        }
    }

    /// Removes temporary files left by writers that died mid-write. Call only while holding the
    /// run's lock: no other process writes here then, so every temporary file is stale.
    pub fn remove_stale_temporaries(&self) -> Result<usize> {
        let mut removed = 0;
        for e in fs::read_dir(&self.path).with_context(|| format!("{}: cannot list", self.path.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
