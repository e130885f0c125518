//! The TOML protocol language: parsing, field-by-field validation, errors with file:line:col.
//!
//! `load` parses a protocol file into a spanned TOML document and walks it with its own checker
//! (`check`), collecting every error of the file instead of stopping at the first, and builds
//! the resolved configuration below with every default filled in. The language is documented
//! field by field in `protocols/README.md`.
pub mod datasets;

mod check;
mod reader;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use detectors::config::{OptimizerConfig, ScheduleConfig};
use serde::{Deserialize, Serialize};

pub use datasets::DatasetInfo;
pub use reader::suggest;

/// A hyperparameter value, typed by the method registry (`detectors::methods::spec`).
/// Floats written as integers (`c = 1`) are stored as floats, so they hash like `c = 1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl ParamValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(x) => Some(*x),
            Self::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => write!(f, "{s}"),
        }
    }
}

/// A protocol with every default resolved. Paths are absolute (resolved against the protocol
/// file's directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    /// Also the results folder name.
    pub name: String,
    pub description: String,
    /// The file it was loaded from.
    pub source: PathBuf,
    pub seeds: Vec<u64>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub data: DataConfig,
    pub train: TrainSet,
    pub tests: Vec<TestSet>,
    pub model: ModelConfig,
    /// Training settings shared by every method (before per-method overrides).
    pub training: TrainingConfig,
    /// In file order.
    pub methods: Vec<ProtocolMethod>,
    pub folds: Option<FoldsConfig>,
    /// In file order; the plan is their cartesian product (per method, see `SweepAxis`).
    pub sweep: Vec<SweepAxis>,
    pub report: ReportConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// The embedded synthetic benchmark, generated from `preset` and `synth_seed`.
    Synthetic,
    /// DeepfakeBench's preprocessed frames plus its `<Dataset>.json` index files.
    Deepfakebench,
    /// A plain folder tree (see `harness::data::index`).
    Folders,
}

impl DataFormat {
    pub const NAMES: &'static [&'static str] = &["synthetic", "deepfakebench", "folders"];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    pub format: DataFormat,
    /// Synthetic only: `small` or `medium`.
    pub preset: Option<String>,
    /// Synthetic only: seed of the generated benchmark (independent of the run seeds).
    pub synth_seed: Option<u64>,
    /// Frames root (DeepfakeBench / folders).
    pub root: Option<PathBuf>,
    /// DeepfakeBench: folder holding `<Dataset>.json` (defaults to `root`).
    pub json_dir: Option<PathBuf>,
    /// DeepfakeBench: prefix rewrites of the JSONs' frame paths, longest prefix first
    /// (`"/deepfakebench/datasets/rgb" = ""`). Left out of the run id when empty, so that ids of
    /// protocols without it are what they were before the key existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_map: Vec<(String, String)>,
    /// Whether absolute frame paths outside `root` may be read. Left out of the run id when
    /// false (its default), like `path_map`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_outside_root: bool,
    /// Side of the square network input, in pixels.
    pub resolution: u32,
    pub frames_per_video: PerSplit<u32>,
    pub normalisation: Normalisation,
    pub augmentation: Augmentation,
    pub on_missing: PerSplit<OnMissing>,
}

pub const SYNTH_PRESETS: &[&str] = &["small", "medium", "tiny", "bench"];

/// A value for training and one for testing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerSplit<T> {
    pub train: T,
    pub test: T,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// `data.normalisation = "NAME"`: the statistics a pretrained backbone was trained with.
pub const NORMALISATION_PRESETS: &[&str] = &["imagenet", "deepfakebench"];

impl Normalisation {
    /// `imagenet`: torchvision/timm ImageNet statistics (timm's `tf_efficientnet_b*`,
    /// efficientnet_pytorch, torchvision ResNet); `deepfakebench`: 0.5 / 0.5 (DeepfakeBench's
    /// configs, Cadene Xception, timm's ViT and `legacy_xception`).
    pub fn preset(name: &str) -> Option<Normalisation> {
        match name {
            "imagenet" => Some(Normalisation { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }),
            "deepfakebench" => Some(Normalisation { mean: [0.5; 3], std: [0.5; 3] }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Probability of a horizontal flip of a training image.
    pub hflip: f64,
}

/// What to do with a frame (or its landmarks) that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Drop it, count it and report the count.
    Skip,
    /// Stop with an error naming the file.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSet {
    pub dataset: String,
    /// Labels of the fakes in the original stream (the real label is always included).
    pub manipulations: Vec<String>,
    pub split: String,
    /// FF++-family only.
    pub compression: Option<String>,
    /// Real frames per fake frame in the original stream; `None` keeps the data's own ratio.
    pub real_fake_ratio: Option<f64>,
    /// Drop training videos that also appear in a test or validation set (same dataset, label
    /// and video, or the same frame file). Left out of the run id when false (the default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_overlap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestRole {
    InDomain,
    Unseen,
}

impl TestRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InDomain => "in-domain",
            Self::Unseen => "unseen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSet {
    /// Column name in tables.
    pub name: String,
    pub dataset: String,
    /// Fake labels scored (the real label is always included).
    pub manipulations: Vec<String>,
    pub split: String,
    pub compression: Option<String>,
    pub role: TestRole,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub backbone: String,
    /// Initial backbone weights (safetensors).
    pub weights: Option<PathBuf>,
    pub head: HeadConfig,
}

/// The projection head between the pooled feature and the classifier (CGR's `phi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Linear layers, each keeping the feature width, ReLU between them; 0 = no head.
    pub layers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainLength {
    Steps(u64),
    Epochs(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    pub length: TrainLength,
    pub batch_size: u32,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub validation: ValidationConfig,
    pub selection: Selection,
    /// Compute precision of convolutions and matmuls. Left out of the run id at its default
    /// (`f32`), so ids of protocols without the key are what they were before it existed.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Whether f32 matmuls and convolutions on a CUDA device may use TF32 tensor cores
    /// (`detectors::device::set_tf32`). Left out of the run id at its default (on).
    #[serde(default = "tf32_default", skip_serializing_if = "is_tf32_default")]
    pub tf32: bool,
    /// Move every initial trainable weight this many f32 ulps up before training
    /// (`ParamStore::nudge_ulps`): a rounding-level twin of a method, for the noise floor
    /// (docs/statistics.md). Left out of the run id at its default (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub init_nudge_ulps: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn tf32_default() -> bool {
    true
}
fn is_tf32_default(on: &bool) -> bool {
    *on
}

/// `training.precision`: f32 throughout, or bf16 convolutions and matmuls with f32 master
/// weights, f32 BatchNorm statistics, loss and gradient combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub const NAMES: &'static [&'static str] = &["f32", "bf16"];
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
    /// The dtype the model's convolutions and matmuls compute in.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationConfig {
    /// `val` or `train` (never `test`: selecting on the test set is DeepfakeBench's defect).
    pub split: String,
    /// Validate every this many steps (and after the last step).
    pub every: u64,
    pub metric: ValMetric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValMetric {
    Auc,
    Loss,
}

/// Which checkpoint is scored on the test sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    BestVal,
    Last,
}

/// One method as a run uses it: its registry kind and every hyperparameter (defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    /// The protocol's name for it (`O+S`, `CS-DFD`): table labels.
    pub name: String,
    /// Registry kind (`erm`, `cs-dfd`, ...).
    pub kind: String,
    /// How tables label the method: its protocol name, plus "(reconstructed)" for RoGA.
    pub display: String,
    /// A caveat that travels with every result (RoGA's reconstruction note).
    pub note: Option<String>,
    pub params: BTreeMap<String, ParamValue>,
}

/// A method block of the protocol: the method and its training settings (the protocol's
/// `[training]` with the block's overrides applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolMethod {
    pub method: MethodConfig,
    pub training: TrainingConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldsConfig {
    /// Each entry is one fold: train without that manipulation, test on real + it.
    pub leave_one_out: Vec<String>,
}

/// What a sweep entry changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Knob {
    /// A registry hyperparameter of the scoped method.
    Param(String),
    Steps,
    BatchSize,
    Lr,
    Backbone,
    HeadLayers,
    RealFakeRatio,
    Resolution,
}

/// One `[sweep]` entry. `method = Some(m)` entries multiply only method `m`'s runs; the others
/// (`model.backbone`, `training.optimizer.lr`, ...) multiply every method's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepAxis {
    /// The path as written, e.g. `methods.CS-DFD.c`.
    pub path: String,
    pub method: Option<String>,
    pub knob: Knob,
    pub values: Vec<ParamValue>,
}

pub const TABLE_IDS: &[&str] = &[
    "csdfd-table1",
    "csdfd-table2",
    "csdfd-table3",
    "roga-table2",
    "roga-table4",
    "sensitivity",
    "imbalance",
];
pub const PLOT_IDS: &[&str] = &["loss-conflict", "cosine", "roc", "sensitivity", "auc-bar"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportConfig {
    /// Method the others are compared with (differences, significance).
    pub baseline: Option<String>,
    pub tables: Vec<String>,
    pub plots: Vec<String>,
    /// Two methods that differ only at rounding level: their spread is the report's noise floor.
    /// Not part of any run id (nothing under `[report]` is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise_floor: Vec<String>,
}

/// One problem in a protocol file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub file: PathBuf,
    /// 1-based line and column (column in characters).
    pub line: usize,
    pub col: usize,
    /// Key path such as `methods.CS-DFD.tau`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a protocol file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolErrors(pub Vec<ProtocolError>);

impl fmt::Display for ProtocolErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProtocolErrors {}

/// Reads, checks and resolves a protocol file.
pub fn load(path: impl AsRef<Path>) -> Result<Protocol, ProtocolErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProtocolErrors(vec![ProtocolError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            key: String::new(),
            message: format!("cannot read the protocol file: {e}"),
        }])
    })?;
    load_str(&text, path)
}

/// Checks and resolves protocol text as if read from `path` (relative paths inside it resolve
/// against `path`'s directory; `path` itself need not exist).
pub fn load_str(text: &str, path: &Path) -> Result<Protocol, ProtocolErrors> {
    check::check(text, path)
}
