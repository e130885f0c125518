//! `bench predict`: score images with a trained run's detector.
//!
//! The detector is rebuilt from the run's manifest (the fully resolved configuration: backbone,
//! head, resolution, normalisation) and its `weights.safetensors`, whose names must match the
//! detector's exactly. Frames are decoded, resized and normalised by the same `FrameStore` code
//! as in training and evaluation, so a run's own test frames get the scores in its
//! `scores.parquet`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use candle_core::{DType, Device};
use detectors::model::Detector;
use detectors::{Mode, ParamStore};
use rayon::prelude::*;

use crate::data::index::{Index, IndexOptions, Split};
use crate::data::loader::{FailurePolicy, FrameStore, LoaderConfig, SkippedFrame};
use crate::exit::{CliError, Verbosity};
use crate::plan::RunConfig;
use crate::results::{self, MANIFEST_FILE, RunStatus, WEIGHTS_FILE};

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// A completed run directory (`<results>/<protocol>/<run-id>/`) with its weights.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Image files (png/jpg), folders (searched recursively, sorted) or DeepfakeBench dataset
    /// JSON files.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output CSV: path, score (probability of fake) and, for dataset JSON inputs, dataset,
    /// label (0 real, 1 fake), label_name, video (`<label_name>/<video>`, unique) and frame.
    #[arg(long, default_value = "scores.csv", value_name = "FILE")]
    pub out: PathBuf,
    /// Images per forward pass (default: the run's training batch size).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Device: `cpu`, `cuda` or `cuda:N` (default: the run's device).
    #[arg(long)]
    pub device: Option<String>,
    /// Data root that a dataset JSON's relative frame paths resolve against (default: the
    /// parent of the JSON's `dataset_json/` folder, else the JSON's folder).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Only the frames of this split of a dataset JSON: train, val or test (default: all; note
    /// that some datasets, e.g. UADFV, list every video in all three splits).
    #[arg(long, value_name = "SPLIT")]
    pub split: Option<String>,
    /// Frames per video taken from a dataset JSON, spread evenly (default: every listed frame).
    #[arg(long, value_name = "N")]
    pub frames_per_video: Option<usize>,
}

/// One frame to score; `meta` is set for frames listed in a dataset JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub meta: Option<FrameMeta>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FrameMeta {
    pub dataset: String,
    pub label: u8,
    pub label_name: String,
    pub video: String,
    pub frame: String,
}

/// A scored frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub item: Item,
    pub score: f64,
}

/// A trained detector with the preprocessing it was trained with.
pub struct LoadedRun {
    pub config: RunConfig,
    pub detector: Detector,
    pub store: std::sync::Arc<FrameStore>,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The images of `inputs` (files, folders, dataset JSONs; `--split` for JSONs), an error when
/// there are none. Shared by `bench predict` and `bench features`.
pub fn collect_images(
    inputs: &[PathBuf],
    root: Option<&Path>,
    frames_per_video: Option<usize>,
    split: Option<&str>,
) -> anyhow::Result<Vec<Item>> {
    let split = match split {
        Some(s) => Some(
            Split::parse(s)
                .ok_or_else(|| CliError::config(format!("--split {s}: expected train, val or test")))?,
        ),
        None => None,
    };
    let items = collect_inputs(inputs, root, frames_per_video, split)?;
    if items.is_empty() {
        return Err(CliError::config("no image found in the inputs (looked for .png, .jpg, .jpeg)").into());
    }
    Ok(items)
}

pub fn cmd_predict(args: PredictArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    if args.batch == Some(0) {
        return Err(CliError::config("--batch must be at least 1").into());
    }
    if args.frames_per_video == Some(0) {
        return Err(CliError::config("--frames-per-video must be at least 1").into());
    }
    let items = collect_images(&args.inputs, args.root.as_deref(), args.frames_per_video, args.split.as_deref())?;
    let run = load_run(&args.run, args.device.as_deref())?;
    let batch = args.batch.unwrap_or(run.config.training.batch_size as usize).max(1);
    if verbosity != Verbosity::Quiet {
        eprintln!(
            "scoring {} frames with {} ({}, {} px) in batches of {batch}",
            items.len(),
            args.run.display(),
            run.config.model.backbone,
            run.config.data.resolution
        );
    }
    let (scored, skipped) = score_items(&run, &items, batch)?;
    // A NaN score is no prediction: metrics computed from it downstream would be silently wrong.
    let not_finite: Vec<&Scored> = scored.iter().filter(|s| !s.score.is_finite()).collect();
    if let Some(first) = not_finite.first() {
        let shown: Vec<String> =
            not_finite.iter().take(5).map(|s| s.item.path.display().to_string()).collect();
        return Err(CliError::failed(format!(
            "the detector of {} gave {} non-finite score(s) (first: {} for {}; inputs: {}{}); nothing \
             written to {}. Its weights may have diverged: check the run's trace",
            args.run.display(),
            not_finite.len(),
            first.score,
            first.item.path.display(),
            shown.join(", "),
            if not_finite.len() > shown.len() { ", ..." } else { "" },
            args.out.display()
        ))
        .into());
    }
    write_csv(&args.out, &scored)?;
    if verbosity != Verbosity::Quiet {
        eprintln!("wrote {} scores to {}", scored.len(), args.out.display());
    }
    if skipped.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for s in &skipped {
            eprintln!("not scored: {}", s.reason);
        }
        Err(CliError::failed(format!(
            "{} of {} images could not be scored (listed above); the others are in {}",
            skipped.len(),
            items.len(),
            args.out.display()
        ))
        .into())
    }
}

/// Rebuilds the detector of a completed run and loads its weights. Every problem with the run
/// directory is a configuration error naming the file.
pub fn load_run(run_dir: &Path, device: Option<&str>) -> anyhow::Result<LoadedRun> {
    let manifest_path = run_dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(CliError::config(format!(
            "{}: no such file; --run must be a run directory (<results>/<protocol>/<run-id>/)",
            manifest_path.display()
        ))
        .into());
    }
    let manifest = results::read_manifest(&manifest_path).map_err(|e| CliError::config(format!("{e:#}")))?;
    if manifest.status != RunStatus::Complete {
        return Err(CliError::config(format!(
            "{}: the run is {}, not complete; finish it with `bench run` first",
            manifest_path.display(),
            format!("{:?}", manifest.status).to_lowercase()
        ))
        .into());
    }
    let config: RunConfig = serde_json::from_value(manifest.config.clone()).map_err(|e| {
        CliError::config(format!("{}: `config` is not a run configuration: {e}", manifest_path.display()))
    })?;
    let weights = run_dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(CliError::config(format!(
            "{}: no such file; the run was made with --no-weights (rerun it with `bench run --force` to store them)",
            weights.display()
        ))
        .into());
    }
    let spec = device.unwrap_or(&config.device);
    let device: Device = detectors::device::open(spec)
        .map_err(|e| CliError::config(format!("device `{spec}`: {e} (use --device cpu)")))?;
    let pb = ParamStore::new(&device).builder(config.seed);
    let backbone = config.model.backbone.clone();
    let resolution = config.data.resolution as usize;
    let detector = Detector::new(&pb, config.model.head.layers as usize, |pb| {
        detectors::backbones::build(&backbone, pb, resolution)
    })
    .with_context(|| format!("{}: building backbone `{backbone}`", manifest_path.display()))?;
    detectors::weights::load_safetensors(detector.store(), &weights, &Default::default()).map_err(|e| {
        CliError::config(format!("{}: does not fit the run's detector: {e}", weights.display()))
    })?;
    let n = &config.data.normalisation;
    let store = FrameStore::new(LoaderConfig {
        resolution: config.data.resolution,
        mean: n.mean.map(|x| x as f32),
        std: n.std.map(|x| x as f32),
        // Unreadable images are reported, not fatal: the readable ones are still scored.
        policy: FailurePolicy::Skip,
        // Each frame is read once; caching would only hold memory.
        cache_bytes: 0,
        prefetch: 1,
        // Scoring never augments.
        hflip: 0.0,
        device,
    })
    .with_context(|| format!("{}: data configuration", manifest_path.display()))?;
    Ok(LoadedRun { config, detector, store })
}

/// Expands the inputs into frames: image files as given, folders recursively (sorted by path),
/// dataset JSONs in their index order. A missing or unsupported input is a usage error.
pub fn collect_inputs(
    inputs: &[PathBuf],
    root: Option<&Path>,
    frames_per_video: Option<usize>,
    split: Option<Split>,
) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk_images(input, &mut found)?;
            found.sort();
            items.extend(found.into_iter().map(|path| Item { path, meta: None }));
        } else if input.is_file() {
            let ext = extension(input);
            if ext == "json" {
                let root = match root {
                    Some(r) => r.to_path_buf(),
                    None => default_root(input),
                };
                // The user named this JSON on the command line: its absolute paths are theirs to read.
                let opts = IndexOptions { frames_per_video, allow_outside_root: true, ..Default::default() };
                let index = Index::from_json(input, &root, &opts)
                    .and_then(Index::strict)
                    .map_err(|e| CliError::config(format!("{e:#}")))?;
                let entries = index.entries.into_iter().filter(|e| split.is_none_or(|s| e.split == s));
                items.extend(entries.map(|e| Item {
                    path: e.frame_path,
                    meta: Some(FrameMeta {
                        dataset: e.dataset,
                        label: e.label,
                        label_name: e.label_name,
                        video: e.video,
                        frame: e.frame,
                    }),
                }));
            } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                items.push(Item { path: input.clone(), meta: None });
            } else {
                return Err(CliError::config(format!(
                    "{}: expected an image (.png, .jpg), a folder or a dataset JSON (.json)",
                    input.display()
                ))
                .into());
            }
        } else {
            return Err(CliError::config(format!("{}: no such file or folder", input.display())).into());
        }
    }
    Ok(items)
}

fn extension(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

fn default_root(json: &Path) -> PathBuf {
    let dir = json.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "dataset_json") {
        dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let path = e.path();
        if path.is_dir() {
            walk_images(&path, out)?;
        } else if IMAGE_EXTENSIONS.contains(&extension(&path).as_str()) {
            out.push(path);
        }
    }
    Ok(())
}

/// Scores `items` in order, `batch` at a time. Frames that cannot be decoded are left out and
/// returned separately (each with a reason naming its file).
pub fn score_items(
    run: &LoadedRun,
    items: &[Item],
    batch: usize,
) -> anyhow::Result<(Vec<Scored>, Vec<SkippedFrame>)> {
    let mut scored = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let loaded: Vec<_> =
            chunk.par_iter().map(|it| run.store.load(&it.path)).collect::<anyhow::Result<Vec<_>>>()?;
        let kept: Vec<(&Item, &image::RgbImage)> =
            chunk.iter().zip(&loaded).filter_map(|(it, img)| img.as_deref().map(|img| (it, img))).collect();
        if kept.is_empty() {
            continue;
        }
        let images: Vec<&image::RgbImage> = kept.iter().map(|(_, img)| *img).collect();
        let labels = vec![0f32; images.len()];
        let b = run.store.to_batch(&images, &labels)?;
        let logits = run.detector.forward(&b.images, Mode::Eval)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if logits.len() != kept.len() {
            return Err(anyhow!("the detector returned {} scores for {} images", logits.len(), kept.len()));
        }
        for ((it, _), z) in kept.into_iter().zip(logits) {
            // Same expression as the runner's scoring, so scores match bit for bit.
            scored.push(Scored { item: it.clone(), score: 1.0 / (1.0 + (-z).exp()) });
        }
    }
    Ok((scored, run.store.skipped()))
}

/// Writes the scores CSV atomically. The dataset columns appear when any frame came from a
/// dataset JSON (empty for the others).
pub fn write_csv(out: &Path, scored: &[Scored]) -> anyhow::Result<()> {
    let with_meta = scored.iter().any(|s| s.item.meta.is_some());
    results::write_atomic(out, |f| {
        let mut w = csv::Writer::from_writer(f);
        let mut header = vec!["path", "score"];
        if with_meta {
            header.extend(["dataset", "label", "label_name", "video", "frame"]);
        }
        w.write_record(&header)?;
        for s in scored {
            let mut rec = vec![s.item.path.to_string_lossy().into_owned(), format!("{}", s.score)];
            if with_meta {
                match &s.item.meta {
                    Some(m) => rec.extend([
                        m.dataset.clone(),
                        m.label.to_string(),
                        m.label_name.clone(),
                        format!("{}/{}", m.label_name, m.video),
                        m.frame.clone(),
                    ]),
                    None => rec.extend(std::iter::repeat_n(String::new(), 5)),
                }
            }
            w.write_record(&rec)?;
        }
        w.flush()?;
        Ok(())
    })
    .map_err(|e| anyhow!("{e:#}"))
}
