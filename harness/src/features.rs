//! `bench features`: the pooled backbone features (eval mode) of images or of a tensor, from a
//! named backbone with optional pretrained weights or from a trained run's detector.
//!
//! Images go through the same decoding, resizing and normalisation as training (`FrameStore`);
//! a tensor file (`.safetensors` holding one `[B, 3, H, W]` tensor, or `.npy`) is taken as
//! already normalised. The output format follows the extension: `.safetensors` (one tensor
//! `features`, `[B, D]` f32), `.npy` (`[B, D]` f32) or `.csv` (`input`, `f0` .. `f{D-1}`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use candle_core::{DType, Device, Tensor};
use detectors::model::Backbone;
use detectors::{Mode, ParamStore};
use rayon::prelude::*;

use crate::data::loader::{FailurePolicy, FrameStore, LoaderConfig};
use crate::exit::{CliError, Verbosity};
use crate::predict::load_run;
use crate::protocol::Normalisation;
use crate::results;

#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// A registered backbone (`bench list`), initialised from the seed unless --weights is given.
    #[arg(long, value_name = "NAME", conflicts_with = "run", required_unless_present = "run")]
    pub backbone: Option<String>,
    /// Pretrained weights for --backbone: safetensors or a PyTorch checkpoint (.pth/.pt/.bin),
    /// in any naming scheme the backbone knows (`bench weights inspect FILE` tells).
    #[arg(long, value_name = "FILE", requires = "backbone")]
    pub weights: Option<PathBuf>,
    /// Input size the backbone is built for, and images are resized to (default: the tensor's
    /// height for tensor inputs, else 224).
    #[arg(long, value_name = "N", requires = "backbone")]
    pub size: Option<usize>,
    /// Image normalisation with --backbone: `imagenet` (default), `deepfakebench` (0.5/0.5) or
    /// `M,M,M/S,S,S`.
    #[arg(long, value_name = "PRESET", requires = "backbone")]
    pub normalisation: Option<String>,
    /// A completed run directory: its detector's backbone, resolution and normalisation.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// Image files, folders, DeepfakeBench dataset JSONs, or one tensor file (.safetensors with
    /// one [B,3,H,W] tensor, or .npy) holding normalised images.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output file: .safetensors, .npy or .csv.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch: usize,
    /// Device: `cpu`, `cuda` or `cuda:N` (default: cpu, or the run's device).
    #[arg(long)]
    pub device: Option<String>,
    /// Seed of the initial parameters of --backbone without --weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data root for dataset JSON inputs (as `bench predict`).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Only this split of a dataset JSON: train, val or test.
    #[arg(long, value_name = "SPLIT")]
    pub split: Option<String>,
    /// Frames per video taken from a dataset JSON.
    #[arg(long, value_name = "N")]
    pub frames_per_video: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    Safetensors,
    Npy,
    Csv,
}

fn out_format(path: &Path) -> anyhow::Result<OutFormat> {
    match ext(path).as_str() {
        "safetensors" => Ok(OutFormat::Safetensors),
        "npy" => Ok(OutFormat::Npy),
        "csv" => Ok(OutFormat::Csv),
        _ => Err(CliError::config(format!(
            "--out {}: expected a .safetensors, .npy or .csv file name",
            path.display()
        ))
        .into()),
    }
}

fn ext(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

fn is_tensor_file(p: &Path) -> bool {
    matches!(ext(p).as_str(), "safetensors" | "npy")
}

/// Parses `imagenet`, `deepfakebench` or `M,M,M/S,S,S`.
pub fn parse_normalisation(s: &str) -> Option<Normalisation> {
    if let Some(n) = Normalisation::preset(s) {
        return Some(n);
    }
    let (m, sd) = s.split_once('/')?;
    let triple = |t: &str| -> Option<[f64; 3]> {
        let v: Vec<f64> = t.split(',').map(|x| x.trim().parse::<f64>().ok()).collect::<Option<_>>()?;
        <[f64; 3]>::try_from(v).ok()
    };
    let (mean, std) = (triple(m)?, triple(sd)?);
    std.iter().all(|x| *x > 0.0 && x.is_finite()).then_some(Normalisation { mean, std })
}

/// Reads a tensor input: one `[B, 3, H, W]` tensor from a safetensors file or a `.npy`.
pub fn read_tensor_input(path: &Path) -> anyhow::Result<Tensor> {
    let bad = |m: String| -> anyhow::Error { CliError::config(format!("{}: {m}", path.display())).into() };
    let t = if ext(path) == "npy" {
        let f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).map_err(|e| bad(format!("not a .npy file: {e}")))?;
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        if matches!(npy.order(), npyz::Order::Fortran) {
            return Err(bad("Fortran-ordered arrays are not read; save with np.ascontiguousarray".into()));
        }
        let data: Vec<f32> = match npy.dtype() {
            npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Float && ts.size_field() == 4 => {
                npy.into_vec::<f32>().map_err(|e| bad(format!("{e}")))?
            }
            npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Float && ts.size_field() == 8 => {
                npy.into_vec::<f64>().map_err(|e| bad(format!("{e}")))?.into_iter().map(|x| x as f32).collect()
            }
            d => return Err(bad(format!("expected float32 or float64 values, found {}", d.descr()))),
        };
        Tensor::from_vec(data, shape, &Device::Cpu)?
    } else {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read safetensors file: {e}")))?;
        if map.len() != 1 {
            let names: Vec<&String> = map.keys().collect();
            return Err(bad(format!("expected exactly one tensor, found {} ({names:?})", map.len())));
        }
        map.into_values().next().ok_or_else(|| anyhow!("empty"))?.to_dtype(DType::F32)?
    };
    match t.dims() {
        [_, 3, h, w] if h == w && *h > 0 => Ok(t),
        [_, 3, h, w] => Err(bad(format!("expected square images, found {h}x{w}"))),
        d => Err(bad(format!("expected one tensor of shape [B, 3, H, W], found {d:?}"))),
    }
}

enum Source {
    Images(Vec<crate::predict::Item>),
    Tensor(PathBuf, Tensor),
}

pub fn cmd_features(args: FeaturesArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let format = out_format(&args.out)?;
    if args.batch == 0 {
        return Err(CliError::config("--batch must be at least 1").into());
    }
    let tensors = args.inputs.iter().filter(|p| is_tensor_file(p)).count();
    let source = if tensors > 0 {
        if args.inputs.len() != 1 {
            return Err(CliError::config("a tensor input (.safetensors/.npy) must be the only input").into());
        }
        let p = args.inputs[0].clone();
        let t = read_tensor_input(&p)?;
        Source::Tensor(p, t)
    } else {
        Source::Images(crate::predict::collect_images(
            &args.inputs,
            args.root.as_deref(),
            args.frames_per_video,
            args.split.as_deref(),
        )?)
    };

    // The backbone, the image store that feeds it, and a description for the log.
    let (holder, store, what): (Holder, Option<std::sync::Arc<FrameStore>>, String) = match &args.run {
        Some(run_dir) => {
            let run = load_run(run_dir, args.device.as_deref())?;
            let what = format!("{} ({}, {} px)", run_dir.display(), run.config.model.backbone, run.config.data.resolution);
            if let Source::Tensor(p, t) = &source {
                let r = run.config.data.resolution as usize;
                if t.dim(2)? != r {
                    return Err(CliError::config(format!(
                        "{}: images of {} px, but the run was trained at {r} px",
                        p.display(),
                        t.dim(2)?
                    ))
                    .into());
                }
            }
            (Holder::Run(Box::new(run.detector)), Some(run.store), what)
        }
        None => {
            let name = args.backbone.clone().ok_or_else(|| CliError::config("give --backbone NAME or --run RUN_DIR"))?;
            if detectors::backbones::find(&name).is_none() {
                let known: Vec<&str> = detectors::backbones::registry().iter().map(|b| b.name).collect();
                return Err(CliError::config(format!("unknown backbone `{name}` (known: {})", known.join(", "))).into());
            }
            let size = match (&source, args.size) {
                (_, Some(s)) => s,
                (Source::Tensor(_, t), None) => t.dim(2)?,
                (Source::Images(_), None) => 224,
            };
            let spec = args.device.as_deref().unwrap_or("cpu");
            let device: Device = detectors::device::open(spec)
                .map_err(|e| CliError::config(format!("device `{spec}`: {e} (use --device cpu)")))?;
            let pb = ParamStore::new(&device).builder(args.seed);
            let backbone = detectors::backbones::build(&name, &pb, size).map_err(|e| CliError::config(e.to_string()))?;
            if let Some(w) = &args.weights {
                let opts = detectors::weights::LoadOptions {
                    family: Some(name.clone()),
                    ignore_prefixes: detectors::backbones::CLASSIFIER_PREFIXES.iter().map(|p| p.to_string()).collect(),
                    resize_pos_embed: true,
                    ..Default::default()
                };
                let report = detectors::weights::load_weights(&pb.store(), w, &opts)
                    .map_err(|e| CliError::config(format!("{e} (try `bench weights inspect {} --backbone {name}`)", w.display())))?;
                if verbosity == Verbosity::Verbose {
                    eprintln!("loaded {} tensors, ignored {}", report.loaded.len(), report.ignored.len());
                }
            }
            let norm = match &args.normalisation {
                Some(s) => parse_normalisation(s).ok_or_else(|| {
                    CliError::config(format!("--normalisation {s}: expected imagenet, deepfakebench or M,M,M/S,S,S"))
                })?,
                None => Normalisation::preset("imagenet").expect("a preset"),
            };
            let store = match &source {
                Source::Images(_) => Some(FrameStore::new(LoaderConfig {
                    resolution: size as u32,
                    mean: norm.mean.map(|x| x as f32),
                    std: norm.std.map(|x| x as f32),
                    policy: FailurePolicy::Skip,
                    cache_bytes: 0,
                    prefetch: 1,
                    hflip: 0.0,
                    device: device.clone(),
                })?),
                Source::Tensor(..) => None,
            };
            let what = format!("{name} ({size} px{})", args.weights.as_ref().map(|w| format!(", {}", w.display())).unwrap_or_default());
            (Holder::Backbone(backbone, device), store, what)
        }
    };

    let (labels, rows, skipped) = match source {
        Source::Tensor(p, t) => {
            let n = t.dim(0)?;
            let mut rows = Vec::with_capacity(n);
            for start in (0..n).step_by(args.batch) {
                let len = args.batch.min(n - start);
                let x = t.narrow(0, start, len)?.to_device(holder.device())?;
                rows.push(holder.features(&x)?);
            }
            let labels = (0..n).map(|i| format!("{}#{i}", p.display())).collect::<Vec<_>>();
            (labels, rows, 0)
        }
        Source::Images(items) => {
            let store = store.expect("an image store for image inputs");
            if verbosity != Verbosity::Quiet {
                eprintln!("features of {} images with {what}", items.len());
            }
            let mut labels = Vec::new();
            let mut rows = Vec::new();
            for chunk in items.chunks(args.batch) {
                let loaded: Vec<_> = chunk.par_iter().map(|it| store.load(&it.path)).collect::<anyhow::Result<Vec<_>>>()?;
                let kept: Vec<(&crate::predict::Item, &image::RgbImage)> =
                    chunk.iter().zip(&loaded).filter_map(|(it, img)| img.as_deref().map(|img| (it, img))).collect();
                if kept.is_empty() {
                    continue;
                }
                let images: Vec<&image::RgbImage> = kept.iter().map(|(_, i)| *i).collect();
                let b = store.to_batch(&images, &vec![0f32; images.len()])?;
                rows.push(holder.features(&b.images)?);
                labels.extend(kept.iter().map(|(it, _)| it.path.to_string_lossy().into_owned()));
            }
            let skipped = store.skipped();
            for s in &skipped {
                eprintln!("not read: {}", s.reason);
            }
            (labels, rows, skipped.len())
        }
    };
    if rows.is_empty() {
        return Err(CliError::failed("no input could be read").into());
    }
    let features = Tensor::cat(&rows, 0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    write_features(&args.out, format, &features, &labels)?;
    if verbosity != Verbosity::Quiet {
        let (n, d) = features.dims2()?;
        eprintln!("wrote {n} x {d} features to {}", args.out.display());
    }
    if skipped > 0 {
        return Err(CliError::failed(format!("{skipped} images could not be read (listed above)")).into());
    }
    Ok(ExitCode::SUCCESS)
}

enum Holder {
    Run(Box<detectors::model::Detector>),
    Backbone(Box<dyn Backbone>, Device),
}

impl Holder {
    fn device(&self) -> &Device {
        match self {
            Holder::Run(d) => d.store().device(),
            Holder::Backbone(_, dev) => dev,
        }
    }

    fn features(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        let b: &dyn Backbone = match self {
            Holder::Run(d) => d.backbone(),
            Holder::Backbone(b, _) => b.as_ref(),
        };
        Ok(b.forward_features(x, Mode::Eval)?)
    }
}

/// Writes `[B, D]` features atomically in the chosen format.
fn write_features(out: &Path, format: OutFormat, features: &Tensor, labels: &[String]) -> anyhow::Result<()> {
    let (n, d) = features.dims2()?;
    let values = features.flatten_all()?.to_vec1::<f32>()?;
    results::write_atomic(out, |f| {
        match format {
            OutFormat::Safetensors => {
                let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, d], &data)?;
                let bytes = safetensors::serialize([("features", view)], None)?;
                std::io::Write::write_all(f, &bytes)?;
            }
            OutFormat::Npy => {
                use npyz::WriterBuilder;
                let mut w = npyz::WriteOptions::new().default_dtype().shape(&[n as u64, d as u64]).writer(f).begin_nd()?;
                w.extend(values.iter().copied())?;
                w.finish()?;
            }
            OutFormat::Csv => {
                let mut w = csv::Writer::from_writer(f);
                let mut header = vec!["input".to_string()];
                header.extend((0..d).map(|j| format!("f{j}")));
                w.write_record(&header)?;
                for (i, label) in labels.iter().enumerate() {
                    let mut rec = vec![label.clone()];
                    rec.extend(values[i * d..(i + 1) * d].iter().map(|v| format!("{v}")));
                    w.write_record(&rec)?;
                }
                w.flush()?;
            }
        }
        Ok(())
    })
    .with_context(|| format!("{}: cannot write features", out.display()))
}
