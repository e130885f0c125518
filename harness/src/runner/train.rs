//! One run: data streams, detector, method, the training loop with periodic validation and model
//! selection, then scoring of every test set and the result tables.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use candle_core::{Device, Tensor, Var};
use detectors::methods::{self, MethodParams};
use detectors::model::Detector;
use detectors::{Mode, ParamStore, StepInput};

use super::progress::Progress;
use super::{RunContext, failure};
use crate::data::index::Index;
use crate::data::preflight;
use crate::data::loader::{EvalStream, FailurePolicy, FrameStore, LoaderConfig, TrainStream, mix_seed};
use crate::data::synth::{self, Preset};
use crate::metrics::{self, FrameScore, Metric, MetricSet};
use crate::plan::{Run, RunConfig};
use crate::protocol::{DataFormat, OnMissing, ParamValue, Selection, TestRole, TrainLength, ValMetric};
use crate::results::{Failure, Level, MetricRow, Role, RunDir, ScoreRow, TraceRow, WEIGHTS_FILE};

/// Indexes and frame stores shared by the runs of one `bench run` (decoding is the expensive
/// part of data loading; the decoded-frame cache lives in the `FrameStore`).
#[derive(Default)]
pub struct DataCache {
    roots: HashMap<String, PathBuf>,
    indexes: HashMap<(PathBuf, String, usize), Arc<Index>>,
    stores: HashMap<String, Arc<FrameStore>>,
}

/// What a finished run adds to its manifest.
pub struct RunOutput {
    pub skipped_files: BTreeMap<String, u64>,
    pub notes: Vec<String>,
    pub leakage: Vec<String>,
    pub frames_used: BTreeMap<String, BTreeMap<String, u64>>,
    /// Frames per label in each training batch, per stream; see `results::DataUsage`.
    pub train_batches: BTreeMap<String, BTreeMap<String, u64>>,
    pub real_fake_ratio: Option<f64>,
    /// Frame-level AUC per test set (`None`: undefined), for the end-of-run table.
    pub auc: Vec<(String, Option<f64>)>,
}

/// Decoded-frame cache per frame store: enough for the small synthetic preset many times over.
const CACHE_BYTES: usize = 2 << 30;

pub fn execute(
    run: &Run,
    run_dir: &RunDir,
    device: &Device,
    ctx: &mut RunContext,
    progress: &mut Progress,
) -> Result<RunOutput, Failure> {
    let c = &run.config;
    let prepared = prepare(c, device, ctx).map_err(|e| failure(None, format!("{e:#}")))?;
    let trained = train(run, &prepared, progress)?;
    let out =
        score_and_store(c, &prepared, &trained, run_dir, ctx).map_err(|e| failure(None, format!("{e:#}")))?;
    Ok(out)
}

struct Prepared {
    train_index: Index,
    val_index: Index,
    tests: Vec<(usize, Index)>,
    train_store: Arc<FrameStore>,
    test_store: Arc<FrameStore>,
    steps: usize,
    batch: usize,
    /// Train/test leakage found (and what `train.drop_overlap` dropped), for the manifest.
    leakage: Vec<String>,
    /// Frames per label of each set: `train`, `val`, `test:<name>`.
    frames_used: BTreeMap<String, BTreeMap<String, u64>>,
}

fn prepare(c: &RunConfig, device: &Device, ctx: &mut RunContext) -> anyhow::Result<Prepared> {
    let root = data_root(c, ctx)?;
    let frames_train = c.data.frames_per_video.train as usize;
    let frames_test = c.data.frames_per_video.test as usize;
    let train_all = dataset_index(c, &root, &c.train.dataset, frames_train, ctx)?;
    let mut train_index = preflight::select_train(&train_all, c)?;
    let val_index = preflight::select_val(&train_all, c)?;
    if train_index.entries.is_empty() {
        bail!(
            "training selection is empty: dataset {} split {} labels real + {:?}",
            c.train.dataset,
            c.train.split,
            c.train.manipulations
        );
    }
    let mut tests = Vec::new();
    for (i, t) in c.tests.iter().enumerate() {
        let all = dataset_index(c, &root, &t.dataset, frames_test, ctx)?;
        let index = preflight::select_test(&all, t)?;
        if index.entries.is_empty() {
            bail!("test set `{}` is empty: dataset {} split {}", t.name, t.dataset, t.split);
        }
        tests.push((i, index));
    }
    let tests_named: Vec<(&str, &Index)> = tests.iter().map(|(i, ix)| (c.tests[*i].name.as_str(), ix)).collect();
    let mut leakage = preflight::leakage(&train_index, &val_index, &tests_named);
    if c.train.drop_overlap {
        let others: Vec<&Index> = std::iter::once(&val_index).chain(tests.iter().map(|t| &t.1)).collect();
        let (kept, dropped) = preflight::drop_overlap(&train_index, &others);
        if dropped > 0 {
            leakage.push(format!("train.drop_overlap: {dropped} overlapping videos dropped from training"));
        }
        if kept.entries.is_empty() {
            bail!("training selection is empty after train.drop_overlap removed {dropped} videos shared with the test or validation sets");
        }
        train_index = kept;
    }
    let mut frames_used = BTreeMap::new();
    frames_used.insert("train".to_string(), preflight::frames_per_label(&train_index));
    frames_used.insert("val".to_string(), preflight::frames_per_label(&val_index));
    for (i, ix) in &tests {
        frames_used.insert(format!("test:{}", c.tests[*i].name), preflight::frames_per_label(ix));
    }
    let train_store = frame_store(c, device, c.data.on_missing.train, c.data.augmentation.hflip, ctx)?;
    let test_store = frame_store(c, device, c.data.on_missing.test, 0.0, ctx)?;
    let batch = c.training.batch_size as usize;
    let steps = match c.training.length {
        TrainLength::Steps(n) => n as usize,
        TrainLength::Epochs(e) => (e as usize * train_index.entries.len()).div_ceil(batch.max(1)),
    };
    Ok(Prepared { train_index, val_index, tests, train_store, test_store, steps, batch, leakage, frames_used })
}

fn data_root(c: &RunConfig, ctx: &mut RunContext) -> anyhow::Result<PathBuf> {
    let key = serde_json::to_string(&(&c.data.format, &c.data.preset, &c.data.synth_seed, &c.data.root))?;
    if let Some(root) = ctx.data.roots.get(&key) {
        return Ok(root.clone());
    }
    let root = match c.data.format {
        DataFormat::Synthetic => {
            let name = c.data.preset.as_deref().unwrap_or("small");
            let preset = Preset::from_str(name).map_err(|e| anyhow!("data.preset: {e}"))?;
            let seed = c.data.synth_seed.unwrap_or(0);
            let (root, generated) = synth::ensure_report(preset, seed, &ctx.data_cache)?;
            if generated.is_some() && ctx.verbosity != crate::exit::Verbosity::Quiet {
                eprintln!("generated the synthetic benchmark ({name}, seed {seed}) in {}", root.display());
            }
            root
        }
        DataFormat::Deepfakebench | DataFormat::Folders => c
            .data
            .root
            .clone()
            .ok_or_else(|| anyhow!("data.root is required for format {:?}", c.data.format))?,
    };
    ctx.data.roots.insert(key, root.clone());
    Ok(root)
}

fn dataset_index(
    c: &RunConfig,
    root: &Path,
    dataset: &str,
    frames: usize,
    ctx: &mut RunContext,
) -> anyhow::Result<Arc<Index>> {
    let key = (root.to_path_buf(), dataset.to_string(), frames);
    if let Some(ix) = ctx.data.indexes.get(&key) {
        return Ok(ix.clone());
    }
    let index = preflight::load_index(c, root, dataset, frames)?;
    let index = Arc::new(index);
    ctx.data.indexes.insert(key, index.clone());
    Ok(index)
}

fn frame_store(
    c: &RunConfig,
    device: &Device,
    on_missing: OnMissing,
    hflip: f64,
    ctx: &mut RunContext,
) -> anyhow::Result<Arc<FrameStore>> {
    let policy = match on_missing {
        OnMissing::Skip => FailurePolicy::Skip,
        OnMissing::Fail => FailurePolicy::Fail,
    };
    let n = &c.data.normalisation;
    let key = serde_json::to_string(&(c.data.resolution, n, policy, hflip, format!("{device:?}")))?;
    if let Some(s) = ctx.data.stores.get(&key) {
        return Ok(s.clone());
    }
    let cfg = LoaderConfig {
        resolution: c.data.resolution,
        mean: n.mean.map(|x| x as f32),
        std: n.std.map(|x| x as f32),
        policy,
        cache_bytes: CACHE_BYTES,
        prefetch: 2,
        hflip: hflip as f32,
        device: device.clone(),
    };
    let store = FrameStore::new(cfg)?;
    ctx.data.stores.insert(key, store.clone());
    Ok(store)
}

struct Trained {
    det: Detector,
    trace: Vec<TraceRow>,
    notes: Vec<String>,
    train_batches: BTreeMap<String, BTreeMap<String, u64>>,
    real_fake_ratio: Option<f64>,
}

/// When `train.real_fake_ratio` is omitted the original and domain streams draw balanced
/// batches (half real, half fake), not the data's own ratio: shipped results were made so.
pub fn real_fraction(ratio: Option<f64>) -> f64 {
    ratio.map(|r| r / (1.0 + r)).unwrap_or(0.5)
}

/// What each stream of `needs` puts in one batch of `batch` frames (see `results::DataUsage`).
fn batch_composition(
    needs: &detectors::methods::StreamNeeds,
    domain_names: &[String],
    batch: usize,
    real_fraction: f64,
) -> (BTreeMap<String, BTreeMap<String, u64>>, Option<f64>) {
    let (n_real, n_fake) = crate::data::loader::original_batch_split(batch, real_fraction);
    let split = |real: usize, fake: usize| {
        BTreeMap::from([("real".to_string(), real as u64), ("fake".to_string(), fake as u64)])
    };
    let mut out = BTreeMap::new();
    if needs.original {
        out.insert("original".to_string(), split(n_real, n_fake));
    }
    if needs.online {
        out.insert("online".to_string(), split(batch / 2, batch / 2));
    }
    for m in domain_names {
        out.insert(format!("domain:{m}"), split(n_real, n_fake));
    }
    let reads_original = needs.original || !domain_names.is_empty();
    let ratio = (reads_original && n_fake > 0).then(|| n_real as f64 / n_fake as f64);
    (out, ratio)
}

fn train(run: &Run, p: &Prepared, progress: &mut Progress) -> Result<Trained, Failure> {
    let c = &run.config;
    let setup = |e: anyhow::Error| failure(None, format!("{e:#}"));
    let device = p.train_store.config().device.clone();
    detectors::device::set_tf32(c.training.tf32);
    let pb = ParamStore::new(&device)
        .with_compute_dtype(c.training.precision.compute_dtype())
        .map_err(|e| setup(e.into()))?
        .builder(mix_seed(c.seed, 0x1417_1a11));
    let backbone = c.model.backbone.clone();
    let resolution = c.data.resolution as usize;
    let det = Detector::new(&pb, c.model.head.layers as usize, |pb| {
        detectors::backbones::build(&backbone, pb, resolution)
    })
    .map_err(|e| setup(e.into()))?;
    if let Some(weights) = &c.model.weights {
        // Backbone files (safetensors or PyTorch checkpoints) in any naming scheme the family
        // knows: their classifier tensors are dropped and our projection head and classifier
        // keep their seeded initialisation.
        let opts = detectors::weights::LoadOptions {
            family: Some(backbone.clone()),
            strip_prefix: None,
            add_prefix: Some("backbone.".into()),
            ignore_prefixes: detectors::backbones::CLASSIFIER_PREFIXES
                .iter()
                .map(|p| format!("backbone.{p}"))
                .collect(),
            allow_missing_prefixes: vec!["head.".into(), "classifier.".into()],
            resize_pos_embed: true,
        };
        detectors::weights::load_weights(det.store(), weights, &opts)
            .with_context(|| format!("loading pretrained weights {}", weights.display()))
            .map_err(setup)?;
    }
    // After loading, so that a twin of a pretrained run starts from the nudged checkpoint.
    det.store()
        .nudge_ulps(c.training.init_nudge_ulps)
        .context("training.init_nudge_ulps")
        .map_err(setup)?;
    let params = method_params(&c.method.params);
    let mut method = methods::build_method(&c.method.kind, &params, &c.training.optimizer, &det, c.seed)
        .with_context(|| format!("method `{}`", c.method.name))
        .map_err(setup)?;
    let needs = method.needs();
    let fraction = real_fraction(c.train.real_fake_ratio);
    let real_fraction = Some(fraction);
    let seed = c.seed;
    let mut original = needs
        .original
        .then(|| TrainStream::original(p.train_store.clone(), &p.train_index, p.batch, real_fraction, seed))
        .transpose()
        .map_err(setup)?;
    let mut online = needs
        .online
        .then(|| TrainStream::sbi(p.train_store.clone(), &p.train_index, p.batch, seed))
        .transpose()
        .map_err(setup)?;
    let mut domains = if needs.domains {
        TrainStream::domains(
            p.train_store.clone(),
            &p.train_index,
            &c.train.manipulations,
            p.batch,
            real_fraction,
            seed,
        )
        .map_err(setup)?
    } else {
        Vec::new()
    };

    let validate_every = c.training.validation.every as usize;
    let select_best = c.training.selection == Selection::BestVal;
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut trace = Vec::with_capacity(p.steps);
    let base_lr = c.training.optimizer.lr();
    progress.start_run(&run.id, p.steps);
    for step in 0..p.steps {
        let at = |e: anyhow::Error| failure(Some(step as u64), format!("{e:#}"));
        let lr = detectors::schedule::lr_at(&c.training.schedule, base_lr, step, p.steps);
        let input = StepInput {
            original: original.as_mut().map(|s| s.next_batch()).transpose().map_err(at)?,
            online: online.as_mut().map(|s| s.next_batch()).transpose().map_err(at)?,
            domains: domains
                .iter_mut()
                .map(|(name, s)| Ok((name.clone(), s.next_batch()?)))
                .collect::<anyhow::Result<_>>()
                .map_err(at)?,
        };
        let t = method.step(&det, &input, step, lr).map_err(|e| at(e.into()))?;
        if !t.loss.is_finite() {
            return Err(failure(
                Some(step as u64),
                format!("training loss became {} at step {step}", t.loss),
            ));
        }
        push_trace(&mut trace, &t);
        progress.step(step, t.loss);
        if let Some(sig) = super::signals::received() {
            return Err(failure(Some(step as u64), format!("interrupted by {} after step {step}", super::signals::name(sig))));
        }
        let last = step + 1 == p.steps;
        if select_best && validate_every > 0 && ((step + 1) % validate_every == 0 || last) {
            let score = validation_score(&det, p, c.training.validation.metric).map_err(at)?;
            if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
                best = Some((score, step + 1, snapshot(det.store()).map_err(|e| at(e.into()))?));
            }
        }
    }
    let mut notes = Vec::new();
    if let Some(note) = method.note() {
        notes.push(note.to_string());
    }
    match best {
        Some((score, step, weights)) if select_best => {
            restore(det.store(), &weights).map_err(|e| failure(None, e))?;
            notes.push(format!(
                "model selected on the {} split at step {step} ({} {score:.4})",
                c.training.validation.split,
                match c.training.validation.metric {
                    ValMetric::Auc => "frame AUC",
                    ValMetric::Loss => "negative BCE",
                }
            ));
        }
        _ => notes.push(format!("model from the last step ({})", p.steps)),
    }
    let domain_names: Vec<String> = domains.iter().map(|(m, _)| m.clone()).collect();
    let (train_batches, real_fake_ratio) =
        batch_composition(&needs, &domain_names, p.batch, fraction);
    Ok(Trained { det, trace, notes, train_batches, real_fake_ratio })
}

fn method_params(params: &BTreeMap<String, ParamValue>) -> MethodParams {
    let mut out = MethodParams::new();
    for (k, v) in params {
        let v = match v {
            ParamValue::Bool(b) => methods::ParamValue::Bool(*b),
            ParamValue::Int(i) => methods::ParamValue::Int(*i),
            ParamValue::Float(f) => methods::ParamValue::Float(*f),
            ParamValue::Str(s) => methods::ParamValue::Str(s.clone()),
        };
        out.set(k, v);
    }
    out
}

fn push_trace(rows: &mut Vec<TraceRow>, t: &detectors::trace::StepTrace) {
    rows.push(TraceRow {
        step: t.step as u32,
        domain: None,
        loss: Some(t.loss),
        l1: t.l1,
        l2: t.l2,
        cos_g1_g2: t.cos_g1_g2,
        norm_g1: t.norm_g1,
        norm_g2: t.norm_g2,
        norm_update: t.norm_update,
        mu1: t.mu1,
        mu2: t.mu2,
        lr: Some(t.lr),
        wall_s: Some(t.wall_s),
        cgr_rel: t.cgr_rel,
    });
    // Per-domain rows: the domain's loss and, in `norm_g1`, the norm of its gradient.
    for d in &t.domains {
        rows.push(TraceRow {
            step: t.step as u32,
            domain: Some(d.name.clone()),
            loss: Some(d.loss),
            norm_g1: Some(d.grad_norm),
            ..TraceRow::default()
        });
    }
}

/// Higher is better: frame-level AUC, or the negative mean BCE.
fn validation_score(det: &Detector, p: &Prepared, metric: ValMetric) -> anyhow::Result<f64> {
    if p.val_index.entries.is_empty() {
        bail!("validation split is empty; use selection = \"last\" or a split with frames");
    }
    let (scores, labels, _) = predict(det, &p.train_store, &p.val_index, p.batch)?;
    match metric {
        ValMetric::Auc => metrics::binary_metrics(&scores, &labels)
            .auc
            .value()
            .ok_or_else(|| anyhow!("validation AUC is undefined (one class in the validation split?)")),
        ValMetric::Loss => {
            let eps = 1e-7;
            let bce: f64 = scores
                .iter()
                .zip(&labels)
                .map(|(&s, &y)| {
                    let s = s.clamp(eps, 1.0 - eps);
                    if y == 1 { -s.ln() } else { -(1.0 - s).ln() }
                })
                .sum::<f64>()
                / scores.len() as f64;
            Ok(-bce)
        }
    }
}

/// Scores (probability of fake) of every frame of `index`, in index order.
fn predict(
    det: &Detector,
    store: &Arc<FrameStore>,
    index: &Index,
    batch: usize,
) -> anyhow::Result<(Vec<f64>, Vec<u8>, Vec<crate::data::loader::FrameId>)> {
    let mut scores = Vec::with_capacity(index.entries.len());
    let mut labels = Vec::with_capacity(index.entries.len());
    let mut ids = Vec::with_capacity(index.entries.len());
    for b in EvalStream::new(store.clone(), index, batch)? {
        let b = b?;
        let logits = det.forward(&b.batch.images, Mode::Eval)?;
        let logits = logits.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        for (z, id) in logits.into_iter().zip(b.frames) {
            scores.push(1.0 / (1.0 + (-z).exp()));
            labels.push(id.label);
            ids.push(id);
        }
    }
    Ok((scores, labels, ids))
}

fn snapshot(store: &ParamStore) -> candle_core::Result<Vec<Tensor>> {
    // Detached: a copy of a `Var` records a Copy op on it, and the best-val snapshot only needs values.
    store.trainable().chain(store.buffers()).map(|(_, v)| Ok(v.as_tensor().copy()?.detach())).collect()
}

fn restore(store: &ParamStore, saved: &[Tensor]) -> Result<(), String> {
    let vars: Vec<&Var> = store.trainable().chain(store.buffers()).map(|(_, v)| v).collect();
    if vars.len() != saved.len() {
        return Err("model snapshot does not match the parameter store".into());
    }
    for (v, t) in vars.into_iter().zip(saved) {
        v.set(t).map_err(|e| format!("restoring the selected model: {e}"))?;
    }
    Ok(())
}

fn score_and_store(
    c: &RunConfig,
    p: &Prepared,
    t: &Trained,
    run_dir: &RunDir,
    ctx: &RunContext,
) -> anyhow::Result<RunOutput> {
    let mut score_rows = Vec::new();
    let mut metric_rows = Vec::new();
    for (i, index) in &p.tests {
        let test = &c.tests[*i];
        let (scores, _, ids) = predict(&t.det, &p.test_store, index, p.batch)
            .with_context(|| format!("scoring test set `{}`", test.name))?;
        // Video identity must include the label name (FF++ fakes of four methods share names).
        let frames: Vec<FrameScore> = ids
            .iter()
            .zip(&scores)
            .map(|(id, &s)| FrameScore {
                dataset: id.dataset.clone(),
                label: id.label,
                video: format!("{}/{}", id.label_name, id.video),
                score: s,
            })
            .collect();
        let levels = metrics::evaluate(&frames);
        let role = match test.role {
            TestRole::InDomain => Role::InDomain,
            TestRole::Unseen => Role::Unseen,
        };
        metric_rows.push(metric_row(&test.name, role, Level::Frame, &levels.frame));
        metric_rows.push(metric_row(&test.name, role, Level::Video, &levels.video));
        for (id, s) in ids.into_iter().zip(scores) {
            score_rows.push(ScoreRow {
                test_set: test.name.clone(),
                dataset: id.dataset,
                label: id.label,
                label_name: id.label_name,
                video: id.video,
                frame: id.frame,
                score: s,
            });
        }
    }
    run_dir.write_trace(&t.trace)?;
    run_dir.write_scores(&score_rows)?;
    run_dir.write_metrics(&metric_rows)?;
    if ctx.save_weights {
        detectors::weights::save_safetensors(t.det.store(), run_dir.file(WEIGHTS_FILE))?;
    }
    let mut skipped_files = BTreeMap::new();
    let train_paths: HashSet<&Path> =
        p.train_index.entries.iter().chain(&p.val_index.entries).map(|e| e.frame_path.as_path()).collect();
    let skipped_train =
        p.train_store.skipped().iter().filter(|s| train_paths.contains(s.path.as_path())).count();
    skipped_files.insert("train".to_string(), skipped_train as u64);
    let stats = p.train_store.stats();
    let mut notes = t.notes.clone();
    if stats.sbi_fallbacks > 0 {
        notes.push(format!(
            "SBI used the fallback ellipse mask for {} of {} samples (missing or unreadable landmarks)",
            stats.sbi_fallbacks, stats.sbi_samples
        ));
    }
    let auc = metric_rows
        .iter()
        .filter(|r| r.level == Level::Frame)
        .map(|r| (r.test_set.clone(), r.auc))
        .collect();
    Ok(RunOutput {
        skipped_files,
        notes,
        leakage: p.leakage.clone(),
        frames_used: p.frames_used.clone(),
        train_batches: t.train_batches.clone(),
        real_fake_ratio: t.real_fake_ratio,
        auc,
    })
}

fn metric_row(test_set: &str, role: Role, level: Level, m: &MetricSet) -> MetricRow {
    let reasons: Vec<String> = m
        .named()
        .iter()
        .filter_map(|(name, metric)| metric.reason().map(|r| format!("{name}: {r}")))
        .collect();
    let v = |x: &Metric| x.value();
    MetricRow {
        test_set: test_set.to_string(),
        role,
        level,
        auc: v(&m.auc),
        ap: v(&m.ap),
        eer: v(&m.eer),
        eer_interp: v(&m.eer_interp),
        acc: v(&m.acc),
        acc_real: v(&m.acc_real),
        acc_fake: v(&m.acc_fake),
        undefined_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        n: m.n as u64,
        n_real: m.n_real as u64,
        n_fake: m.n_fake as u64,
    }
}

/// `bench data preview`: the first `n` samples of `stream` of `run`, built exactly as `train`
/// builds its streams (same index selection, frame store, real fraction and seed), one block
/// per stream (`domains`: one per manipulation), each sample de-normalised from the batch.
pub fn preview_samples(
    run: &Run,
    stream: crate::data::preview::PreviewStream,
    n: usize,
    data_cache: &Path,
    verbosity: crate::exit::Verbosity,
) -> anyhow::Result<Vec<(String, Vec<crate::data::preview::Drawn>)>> {
    use crate::data::preview::{Drawn, PreviewStream, denormalise};
    let c = &run.config;
    let mut ctx = RunContext {
        data_cache: data_cache.to_path_buf(),
        verbosity,
        save_weights: false,
        data: DataCache::default(),
    };
    let p = prepare(c, &Device::Cpu, &mut ctx)?;
    let real_fraction = Some(real_fraction(c.train.real_fake_ratio));
    let streams: Vec<(String, TrainStream)> = match stream {
        PreviewStream::Original => vec![(
            String::new(),
            TrainStream::original(p.train_store.clone(), &p.train_index, p.batch, real_fraction, c.seed)?,
        )],
        PreviewStream::Online => {
            vec![(String::new(), TrainStream::sbi(p.train_store.clone(), &p.train_index, p.batch, c.seed)?)]
        }
        PreviewStream::Domains => TrainStream::domains(
            p.train_store.clone(),
            &p.train_index,
            &c.train.manipulations,
            p.batch,
            real_fraction,
            c.seed,
        )?
        .into_iter()
        .map(|(m, s)| (format!("domain {m}"), s))
        .collect(),
    };
    // SBI samples come in pairs (twin, blend): draw whole pairs.
    let want = if stream == PreviewStream::Online { n.div_ceil(2) * 2 } else { n };
    let cfg = p.train_store.config();
    let r = cfg.resolution as usize;
    let mut out = Vec::new();
    for (name, mut s) in streams {
        let mut drawn = Vec::new();
        let mut batch_no = 0;
        while drawn.len() < want {
            let (batch, infos) = s.next_batch_described()?;
            let data = batch.images.flatten_all()?.to_vec1::<f32>()?;
            let take = if stream == PreviewStream::Online {
                // Keep pairs together: the first `k` twins (first half) and their blends.
                let half = infos.len() / 2;
                let k = ((want - drawn.len()) / 2).min(half);
                (0..k).chain(half..half + k).collect::<Vec<_>>()
            } else {
                // A part of a batch keeps its real:fake mix: the first reals and fakes in proportion.
                let k = infos.len().min(want - drawn.len());
                let (reals, fakes): (Vec<usize>, Vec<usize>) = (0..infos.len()).partition(|&i| infos[i].label == 0);
                let k_real = ((k * reals.len()) as f64 / infos.len().max(1) as f64).round() as usize;
                let k_real = k_real.min(reals.len()).max(k.saturating_sub(fakes.len()));
                reals[..k_real].iter().chain(&fakes[..k - k_real]).copied().collect()
            };
            for i in take {
                let mut info = infos[i].clone();
                // Twins are paired within a batch: make the pairing unique across batches.
                if let Some(sbi) = info.sbi.as_mut() {
                    sbi.twin += batch_no * infos.len();
                }
                drawn.push(Drawn { image: denormalise(&data, i, r, cfg.mean, cfg.std), info });
            }
            batch_no += 1;
        }
        out.push((name, drawn));
    }
    Ok(out)
}
