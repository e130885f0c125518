//! The embedded synthetic face-forgery benchmark (docs/synthetic-benchmark.md).
//!
//! `generate` writes FF++ (real + DF, F2F, FS, NT, split by video), Celeb-DF-v2, DFDC, DFDCP and
//! UADFV stand-ins in DeepfakeBench's preprocessed layout: `dataset_json/<Dataset>.json`, frame
//! PNGs, 81-point landmark `.npy` files and, for FF++ fakes, manipulation masks. `ensure` caches
//! one generation per (preset, seed, generator version) for protocols that name the benchmark.
//!
//! Determinism: every random choice comes from a ChaCha8 stream keyed by (seed, dataset, role,
//! video[, frame]) through SHA-256, so the parallel order of generation cannot change a byte.
mod capture;
mod face;
mod fakes;
mod img;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::exit::{CliError, Verbosity};
use capture::Capture;
use face::{Backdrop, FramePose, Identity, VideoLook};
use fakes::{FakeParams, Method};

/// Bumped whenever the generator's output bytes change for a given (preset, seed).
pub const GENERATOR_VERSION: u32 = 1;

/// Name of the marker file at the root of every generated benchmark.
pub const MARKER: &str = "SYNTHETIC.json";

const GENERATOR_NAME: &str = "dfbench-synth";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Preset {
    /// 96 px, 3 frames, a handful of videos: tests and smoke runs only.
    Tiny,
    /// 128 px, 8 frames per video: fast CPU training.
    Small,
    /// 256 px, 16 frames per video, several times more videos.
    Medium,
    /// `small`'s generator, frame size and FF++ part, with ten times the unseen datasets' videos
    /// (160 real + 160 fake each): the preset of the shipped cross-dataset results.
    Bench,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Medium => "medium",
            Preset::Bench => "bench",
        }
    }

    fn config(self) -> Config {
        match self {
            Preset::Tiny => Config {
                size: 96,
                frames: 3,
                ff: [2, 2, 2],
                celeb_ids: 2,
                celeb_per_id: 2,
                youtube: 1,
                celeb_fake: 3,
                dfdc: [3, 3],
                dfdcp_real: 3,
                dfdcp_fake_each: 2,
                uadfv: 3,
            },
            Preset::Small => Config {
                size: 128,
                frames: 8,
                ff: [40, 10, 12],
                celeb_ids: 5,
                celeb_per_id: 2,
                youtube: 6,
                celeb_fake: 16,
                dfdc: [16, 16],
                dfdcp_real: 16,
                dfdcp_fake_each: 8,
                uadfv: 16,
            },
            Preset::Medium => Config {
                size: 256,
                frames: 16,
                ff: [72, 16, 20],
                celeb_ids: 12,
                celeb_per_id: 2,
                youtube: 16,
                celeb_fake: 40,
                dfdc: [40, 40],
                dfdcp_real: 40,
                dfdcp_fake_each: 20,
                uadfv: 40,
            },
            // FF++ exactly as in `small` (same jobs, same bytes); each unseen dataset large
            // enough that one model's frame AUC has a standard error of about one point
            // (docs/synthetic-benchmark.md, "Power").
            Preset::Bench => Config {
                celeb_ids: 20,
                celeb_per_id: 5,
                youtube: 60,
                celeb_fake: 160,
                dfdc: [160, 160],
                dfdcp_real: 160,
                dfdcp_fake_each: 80,
                uadfv: 160,
                ..Preset::Small.config()
            },
        }
    }

    /// Frame side in pixels.
    pub fn frame_size(self) -> usize {
        self.config().size
    }

    /// Frames per video before the occasional dropped frame.
    pub fn frames_per_video(self) -> usize {
        self.config().frames
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            "medium" => Ok(Preset::Medium),
            "bench" => Ok(Preset::Bench),
            other => bail!("unknown synthetic preset `{other}`: expected `tiny`, `small`, `medium` or `bench`"),
        }
    }
}

struct Config {
    size: usize,
    frames: usize,
    /// FF++ real videos in train / val / test.
    ff: [usize; 3],
    celeb_ids: usize,
    celeb_per_id: usize,
    youtube: usize,
    celeb_fake: usize,
    /// DFDC real, fake.
    dfdc: [usize; 2],
    dfdcp_real: usize,
    dfdcp_fake_each: usize,
    /// UADFV real videos (and as many fakes).
    uadfv: usize,
}

/// The five datasets of the cross-dataset protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    Ffpp,
    CelebDf,
    Dfdc,
    Dfdcp,
    Uadfv,
}

impl Dataset {
    pub const ALL: [Dataset; 5] =
        [Dataset::Ffpp, Dataset::CelebDf, Dataset::Dfdc, Dataset::Dfdcp, Dataset::Uadfv];

    /// DeepfakeBench's dataset name (JSON file stem and top-level key).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Ffpp => "FaceForensics++",
            Dataset::CelebDf => "Celeb-DF-v2",
            Dataset::Dfdc => "DFDC",
            Dataset::Dfdcp => "DFDCP",
            Dataset::Uadfv => "UADFV",
        }
    }

    /// Label names, real first.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Dataset::Ffpp => &["FF-real", "FF-DF", "FF-F2F", "FF-FS", "FF-NT"],
            Dataset::CelebDf => &["CelebDFv2_real", "CelebDFv2_fake"],
            Dataset::Dfdc => &["DFDC_Real", "DFDC_Fake"],
            Dataset::Dfdcp => &["DFDCP_Real", "DFDCP_FakeA", "DFDCP_FakeB"],
            Dataset::Uadfv => &["UADFV_Real", "UADFV_Fake"],
        }
    }

    fn backdrop(self) -> Backdrop {
        match self {
            Dataset::Ffpp => Backdrop::Studio,
            Dataset::CelebDf => Backdrop::Bokeh,
            Dataset::Dfdc | Dataset::Dfdcp => Backdrop::Room,
            Dataset::Uadfv => Backdrop::Plain,
        }
    }

    /// FF++-family datasets carry a compression level between split and video.
    fn compression(self) -> Option<&'static str> {
        (self == Dataset::Ffpp).then_some("c23")
    }
}

pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Videos and frames of one (dataset, label, split) cell of the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRow {
    pub dataset: String,
    pub label: String,
    pub split: String,
    pub videos: usize,
    pub frames: usize,
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub preset: Preset,
    pub seed: u64,
    pub version: u32,
    pub frame_size: usize,
    pub frames_per_video: usize,
    /// Non-empty cells only, in dataset / label / split order.
    pub rows: Vec<CountRow>,
    /// Files written (frames, landmarks, masks, JSONs; the marker excluded).
    pub files: usize,
    pub bytes: u64,
    /// SHA-256 over the sorted (relative path, file SHA-256) list of those files.
    pub sha256: String,
    /// Wall-clock seconds (not part of the marker, which is byte-deterministic).
    pub seconds: f64,
}

impl Summary {
    fn marker_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"dataset": r.dataset, "label": r.label, "split": r.split,
                       "videos": r.videos, "frames": r.frames})
            })
            .collect();
        let mut m = Map::new();
        m.insert("bytes".into(), json!(self.bytes));
        m.insert("counts".into(), Value::Array(rows));
        m.insert("files".into(), json!(self.files));
        m.insert("frame_size".into(), json!(self.frame_size));
        m.insert("frames_per_video".into(), json!(self.frames_per_video));
        m.insert("generator".into(), json!(GENERATOR_NAME));
        m.insert("preset".into(), json!(self.preset.as_str()));
        m.insert("seed".into(), json!(self.seed));
        m.insert("sha256".into(), json!(self.sha256));
        m.insert("version".into(), json!(self.version));
        Value::Object(m)
    }

    /// Human-readable table (one row per non-empty cell) and totals.
    pub fn render(&self) -> String {
        let mut s = format!(
            "synthetic benchmark: preset {} seed {} generator v{} ({}x{} px, {} frames/video)\n",
            self.preset, self.seed, self.version, self.frame_size, self.frame_size, self.frames_per_video
        );
        s += &format!("{:<16} {:<15} {:<6} {:>7} {:>7}\n", "dataset", "label", "split", "videos", "frames");
        for r in &self.rows {
            s += &format!(
                "{:<16} {:<15} {:<6} {:>7} {:>7}\n",
                r.dataset, r.label, r.split, r.videos, r.frames
            );
        }
        s += &format!(
            "{} files, {:.1} MB, sha256 {}, {:.1} s\n",
            self.files,
            self.bytes as f64 / 1e6,
            &self.sha256[..16],
            self.seconds
        );
        s
    }
}

/// A seeded stream for one purpose: SHA-256 of the seed and the key parts.
fn stream(seed: u64, parts: &[&str]) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"dfbench-synth");
    h.update(seed.to_le_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    ChaCha8Rng::from_seed(h.finalize().into())
}

fn identity(seed: u64, ds: Dataset, key: &str) -> Identity {
    Identity::sample(&mut stream(seed, &[ds.name(), "identity", key]))
}

/// Per scene (the real video a fake is made from shares its scene): look, camera, which frames
/// of the notional video were kept, and each frame's pose.
struct Scene {
    look: VideoLook,
    capture: Capture,
    frames: Vec<(usize, FramePose)>,
}

impl Scene {
    fn new(seed: u64, ds: Dataset, key: &str, n_frames: usize) -> Self {
        let mut rng = stream(seed, &[ds.name(), "scene", key]);
        let look = VideoLook::sample(&mut rng, ds.backdrop());
        let capture = Capture::sample(ds, &mut rng);
        // Frames are named by their index in a longer video, spread with linspace as
        // DeepfakeBench does; now and then a frame "had no detected face" and is missing.
        let len: usize = rng.random_range(120..990);
        let dropped = if n_frames > 2 && rng.random::<f32>() < 0.1 {
            Some(rng.random_range(1..n_frames))
        } else {
            None
        };
        let mut frames = Vec::with_capacity(n_frames);
        for k in 0..n_frames {
            let idx = if n_frames == 1 { 0 } else { (k * (len - 1) + (n_frames - 1) / 2) / (n_frames - 1) };
            let pose = FramePose::sample(&mut rng);
            if Some(k) != dropped {
                frames.push((idx, pose));
            }
        }
        Self { look, capture, frames }
    }
}

/// One output video.
#[derive(Debug, Clone)]
struct Job {
    ds: Dataset,
    label: &'static str,
    splits: &'static [&'static str],
    video: String,
    /// Backslash path of the video's parent directory before `frames`.
    prefix: String,
    scene: String,
    identity: String,
    fake: Option<(Method, String)>,
    masks: bool,
}

const TEST_ONLY: &[&str] = &["test"];
const EVERY_SPLIT: &[&str] = &["train", "val", "test"];

fn plan(cfg: &Config, seed: u64) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    // FaceForensics++: ids numbered through the splits; every manipulation fakes every real
    // video with the identity half a split away (so pairs a_b and b_a both exist, as in FF++).
    let ds = Dataset::Ffpp;
    let mut next = 0usize;
    for (si, &n) in cfg.ff.iter().enumerate() {
        let split: &'static [&'static str] = &EVERY_SPLIT[si..=si];
        let ids: Vec<String> = (next..next + n).map(|i| format!("{i:03}")).collect();
        next += n;
        for (i, id) in ids.iter().enumerate() {
            let real = Job {
                ds,
                label: "FF-real",
                splits: split,
                video: id.clone(),
                prefix: r"FaceForensics++\original_sequences\youtube\c23".into(),
                scene: id.clone(),
                identity: id.clone(),
                fake: None,
                masks: false,
            };
            jobs.push(real);
            let src = &ids[(i + n / 2) % n];
            for (label, dir, m) in [
                ("FF-DF", "Deepfakes", Method::Df),
                ("FF-F2F", "Face2Face", Method::F2f),
                ("FF-FS", "FaceSwap", Method::Fs),
                ("FF-NT", "NeuralTextures", Method::Nt),
            ] {
                jobs.push(Job {
                    ds,
                    label,
                    splits: split,
                    video: format!("{id}_{src}"),
                    prefix: format!(r"FaceForensics++\manipulated_sequences\{dir}\c23"),
                    scene: id.clone(),
                    identity: id.clone(),
                    fake: Some((m, src.clone())),
                    masks: true,
                });
            }
        }
    }
    // Celeb-DF-v2: celebrities with several interview videos, extra YouTube identities, and
    // swaps between celebrities made from the Celeb-real videos.
    let ds = Dataset::CelebDf;
    let mut celeb_real = Vec::new();
    for t in 0..cfg.celeb_ids {
        for j in 0..cfg.celeb_per_id {
            let v = format!("id{t}_{j:04}");
            celeb_real.push((t, j, v.clone()));
            jobs.push(Job {
                ds,
                label: "CelebDFv2_real",
                splits: TEST_ONLY,
                video: v.clone(),
                prefix: r"Celeb-DF-v2\Celeb-real".into(),
                scene: v,
                identity: format!("id{t}"),
                fake: None,
                masks: false,
            });
        }
    }
    for k in 0..cfg.youtube {
        let v = format!("{k:05}");
        jobs.push(Job {
            ds,
            label: "CelebDFv2_real",
            splits: TEST_ONLY,
            video: v.clone(),
            prefix: r"Celeb-DF-v2\YouTube-real".into(),
            scene: format!("yt{v}"),
            identity: format!("yt{v}"),
            fake: None,
            masks: false,
        });
    }
    for k in 0..cfg.celeb_fake {
        let (t, j, v) = &celeb_real[k % celeb_real.len()];
        let s = (t + 1 + k / celeb_real.len()) % cfg.celeb_ids;
        jobs.push(Job {
            ds,
            label: "CelebDFv2_fake",
            splits: TEST_ONLY,
            video: format!("id{t}_id{s}_{j:04}"),
            prefix: r"Celeb-DF-v2\Celeb-synthesis".into(),
            scene: v.clone(),
            identity: format!("id{t}"),
            fake: Some((Method::Celeb, format!("id{s}"))),
            masks: false,
        });
    }
    // DFDC: paid actors, random video names, three kinds of fakes, own scenes.
    let ds = Dataset::Dfdc;
    let names = dfdc_names(seed, cfg.dfdc[0] + cfg.dfdc[1]);
    for (k, name) in names.iter().enumerate() {
        let fake = k >= cfg.dfdc[0];
        let method = [Method::DfdcSwap, Method::DfdcBlocks, Method::DfdcSmooth][k % 3];
        jobs.push(Job {
            ds,
            label: if fake { "DFDC_Fake" } else { "DFDC_Real" },
            splits: TEST_ONLY,
            video: name.clone(),
            prefix: r"DFDC\test".into(),
            scene: name.clone(),
            identity: format!("actor-{name}"),
            fake: fake.then(|| (method, format!("source-{name}"))),
            masks: false,
        });
    }
    // DFDCP: originals and two methods applied to them.
    let ds = Dataset::Dfdcp;
    let reals: Vec<String> = (0..cfg.dfdcp_real).map(|k| format!("{:07}", 1_000_000 + 37 * k)).collect();
    for v in &reals {
        jobs.push(Job {
            ds,
            label: "DFDCP_Real",
            splits: TEST_ONLY,
            video: v.clone(),
            prefix: r"DFDCP\original_videos".into(),
            scene: v.clone(),
            identity: v.clone(),
            fake: None,
            masks: false,
        });
    }
    for (mi, (label, dir, m)) in
        [("DFDCP_FakeA", "method_A", Method::DfdcpA), ("DFDCP_FakeB", "method_B", Method::DfdcpB)]
            .into_iter()
            .enumerate()
    {
        for k in 0..cfg.dfdcp_fake_each {
            let ti = (k + mi * cfg.dfdcp_fake_each) % reals.len();
            let si = (ti + 1 + mi) % reals.len();
            jobs.push(Job {
                ds,
                label,
                splits: TEST_ONLY,
                video: format!("{}_{}", reals[ti], reals[si]),
                prefix: format!(r"DFDCP\{dir}"),
                scene: reals[ti].clone(),
                identity: reals[ti].clone(),
                fake: Some((m, reals[si].clone())),
                masks: false,
            });
        }
    }
    // UADFV: each fake made from the real video of the same number. DeepfakeBench's JSON lists
    // every UADFV video in every split; so does this one.
    let ds = Dataset::Uadfv;
    for k in 0..cfg.uadfv {
        let v = format!("{k:04}");
        let src = format!("{:04}", (k + 1) % cfg.uadfv);
        for fake in [false, true] {
            jobs.push(Job {
                ds,
                label: if fake { "UADFV_Fake" } else { "UADFV_Real" },
                splits: EVERY_SPLIT,
                video: if fake { format!("{v}_fake") } else { v.clone() },
                prefix: if fake { r"UADFV\fake".into() } else { r"UADFV\real".into() },
                scene: v.clone(),
                identity: v.clone(),
                fake: fake.then(|| (Method::Uadfv, src.clone())),
                masks: false,
            });
        }
    }
    // Internal consistency: unique (dataset, label, video); swaps never use the target itself.
    let mut seen = HashSet::new();
    for j in &jobs {
        if !seen.insert((j.ds, j.label, j.video.clone())) {
            bail!("synthetic plan: duplicate video {} / {} / {}", j.ds.name(), j.label, j.video);
        }
        if let Some((m, src)) = &j.fake
            && !matches!(m, Method::F2f | Method::Nt | Method::DfdcSmooth)
            && *src == j.identity
        {
            bail!("synthetic plan: {} swaps {} with itself", j.video, src);
        }
    }
    Ok(jobs)
}

fn dfdc_names(seed: u64, n: usize) -> Vec<String> {
    let mut rng = stream(seed, &["DFDC", "names"]);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let s: String = (0..10).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect();
        if seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

/// What one job wrote.
struct JobOut {
    frames: Vec<String>,
    masks: Vec<String>,
    /// (relative path with `/`, SHA-256, length)
    files: Vec<(String, [u8; 32], u64)>,
}

fn write_file(root: &Path, rel_backslash: &str, bytes: &[u8], out: &mut JobOut) -> anyhow::Result<()> {
    let rel = rel_backslash.replace('\\', "/");
    let path = root.join(&rel);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    out.files.push((rel, Sha256::digest(bytes).into(), bytes.len() as u64));
    Ok(())
}

fn run_job(root: &Path, cfg: &Config, seed: u64, job: &Job) -> anyhow::Result<JobOut> {
    let size = cfg.size;
    let target = identity(seed, job.ds, &job.identity);
    let scene = Scene::new(seed, job.ds, &job.scene, cfg.frames);
    let fake = job.fake.as_ref().map(|(m, src)| {
        let source = identity(seed, job.ds, src);
        let params =
            FakeParams::sample(*m, &mut stream(seed, &[job.ds.name(), "fake", job.label, &job.video]));
        (*m, source, params)
    });
    let mut out = JobOut { frames: Vec::new(), masks: Vec::new(), files: Vec::new() };
    let kinds: &[&str] = if job.masks { &["frames", "landmarks", "masks"] } else { &["frames", "landmarks"] };
    for kind in kinds {
        let dir = root.join(format!(r"{}\{kind}\{}", job.prefix, job.video).replace('\\', "/"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut clean = img::Img::new(size);
    for (idx, pose) in &scene.frames {
        let f = face::Frame::new(size, &target, &scene.look, *pose);
        face::render(&mut clean, &target, &scene.look, &f);
        let lm_clean = face::landmarks(&target, &f);
        let (frame, lm, mask) = match &fake {
            None => (None, lm_clean, None),
            Some((m, source, params)) => {
                let fk =
                    fakes::manipulate(*m, params, &target, source, &scene.look, *pose, &clean, &lm_clean);
                (Some(fk.img), fk.landmarks, Some(fk.mask))
            }
        };
        let frame = frame.as_ref().unwrap_or(&clean);
        let mut noise = stream(seed, &[job.ds.name(), "noise", job.label, &job.video, &idx.to_string()]);
        let rgb = scene.capture.apply(frame, &mut noise)?;
        let name = format!("{idx:03}");
        let frame_rel = format!(r"{}\frames\{}\{name}.png", job.prefix, job.video);
        write_file(root, &frame_rel, &img::png_bytes(&rgb, size, image::ColorType::Rgb8)?, &mut out)?;
        let max = (size - 1) as f32;
        let pts: Vec<[i32; 2]> = lm
            .iter()
            .map(|p| [p[0].round().clamp(0.0, max) as i32, p[1].round().clamp(0.0, max) as i32])
            .collect();
        let lm_rel = format!(r"{}\landmarks\{}\{name}.npy", job.prefix, job.video);
        write_file(root, &lm_rel, &img::npy_i32_n2(&pts), &mut out)?;
        if job.masks {
            let m = mask.as_ref().map(|m| m.to_binary_u8(0.1)).unwrap_or_else(|| vec![0; size * size]);
            let mask_rel = format!(r"{}\masks\{}\{name}.png", job.prefix, job.video);
            write_file(root, &mask_rel, &img::png_bytes(&m, size, image::ColorType::L8)?, &mut out)?;
            out.masks.push(mask_rel);
        }
        out.frames.push(frame_rel);
    }
    Ok(out)
}

/// Writes the benchmark into `dir`, which must be new or empty; the marker is written last.
fn build(dir: &Path, preset: Preset, seed: u64) -> anyhow::Result<Summary> {
    let t0 = Instant::now();
    let cfg = preset.config();
    let jobs = plan(&cfg, seed)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let outs: Vec<JobOut> =
        jobs.par_iter().map(|j| run_job(dir, &cfg, seed, j)).collect::<anyhow::Result<Vec<_>>>()?;

    let mut files: Vec<(String, [u8; 32], u64)> = Vec::new();
    let jdir = dir.join("dataset_json");
    std::fs::create_dir_all(&jdir).with_context(|| format!("creating {}", jdir.display()))?;
    let mut rows = Vec::new();
    for ds in Dataset::ALL {
        // label -> split -> video -> entry, every label and split present.
        let mut tree: BTreeMap<&str, BTreeMap<&str, BTreeMap<String, Value>>> = BTreeMap::new();
        for label in ds.labels() {
            tree.insert(*label, SPLITS.iter().map(|s| (*s, BTreeMap::new())).collect());
        }
        for (job, out) in jobs.iter().zip(&outs).filter(|(j, _)| j.ds == ds) {
            let mut e = Map::new();
            e.insert("frames".into(), json!(out.frames));
            e.insert("label".into(), json!(job.label));
            if job.masks {
                e.insert("masks".into(), json!(out.masks));
            }
            for split in job.splits {
                let cell =
                    tree.get_mut(job.label).and_then(|t| t.get_mut(*split)).expect("label and split exist");
                cell.insert(job.video.clone(), Value::Object(e.clone()));
            }
        }
        let mut labels = Map::new();
        for (label, splits) in &tree {
            let mut sm = Map::new();
            for (split, videos) in splits {
                let frames: usize = videos
                    .values()
                    .map(|v| v.get("frames").and_then(Value::as_array).map_or(0, Vec::len))
                    .sum();
                if !videos.is_empty() {
                    rows.push(CountRow {
                        dataset: ds.name().into(),
                        label: (*label).into(),
                        split: (*split).into(),
                        videos: videos.len(),
                        frames,
                    });
                }
                let vids: Map<String, Value> = videos.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let cell = match ds.compression() {
                    Some(c) => {
                        let mut cm = Map::new();
                        cm.insert(c.into(), Value::Object(vids));
                        Value::Object(cm)
                    }
                    None => Value::Object(vids),
                };
                sm.insert((*split).into(), cell);
            }
            labels.insert((*label).into(), Value::Object(sm));
        }
        let mut top = Map::new();
        top.insert(ds.name().into(), Value::Object(labels));
        let mut bytes = serde_json::to_vec(&Value::Object(top))?;
        bytes.push(b'\n');
        let rel = format!("dataset_json/{}.json", ds.name());
        std::fs::write(dir.join(&rel), &bytes)
            .with_context(|| format!("writing {}", dir.join(&rel).display()))?;
        files.push((rel, Sha256::digest(&bytes).into(), bytes.len() as u64));
    }
    // Rows in dataset order, then the label order of `labels()`, then split order.
    rows.sort_by_key(|r| {
        let ds = Dataset::ALL.iter().position(|d| d.name() == r.dataset).unwrap_or(0);
        let label = Dataset::ALL[ds].labels().iter().position(|l| *l == r.label).unwrap_or(0);
        let split = SPLITS.iter().position(|s| *s == r.split).unwrap_or(0);
        (ds, label, split)
    });
    for o in outs {
        files.extend(o.files);
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let mut total = 0u64;
    for (rel, sha, len) in &files {
        h.update(rel.as_bytes());
        h.update([0u8]);
        h.update(sha);
        total += len;
    }
    let summary = Summary {
        preset,
        seed,
        version: GENERATOR_VERSION,
        frame_size: cfg.size,
        frames_per_video: cfg.frames,
        rows,
        files: files.len(),
        bytes: total,
        sha256: hex(&h.finalize()),
        seconds: 0.0,
    };
    let mut marker = serde_json::to_vec_pretty(&summary.marker_json())?;
    marker.push(b'\n');
    std::fs::write(dir.join(MARKER), marker)
        .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    Ok(Summary { seconds: t0.elapsed().as_secs_f64(), ..summary })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The marker of a previous generation in `dir`, if `dir` holds one.
pub fn read_marker(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    (v.get("generator").and_then(Value::as_str) == Some(GENERATOR_NAME)).then_some(v)
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none())
}

fn sibling(out: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| CliError::config(format!("{}: output path has no final component", out.display())))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Unique per call as well as per process, so concurrent calls never share a directory.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    // The host is part of the name because a cache on a shared filesystem is written by processes
    // of several machines (Slurm array tasks): a process id says nothing about another host's.
    Ok(parent.join(format!(".{}.{tag}-{}-{n}-{}", name.to_string_lossy(), std::process::id(), host_tag())))
}

/// This machine's hostname, reduced to characters safe in a file name.
fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let tag: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' })
        .collect();
    if tag.is_empty() { "unknown".to_string() } else { tag }
}

/// Generate the benchmark at `out`. `out` must not exist, be an empty directory, or hold a
/// previous synthetic benchmark (which is replaced). The data are written into a temporary
/// sibling directory and renamed into place, so `out` is never half-written.
pub fn generate(out: &Path, preset: Preset, seed: u64) -> anyhow::Result<Summary> {
    let mut replace = false;
    if out.exists() {
        if !out.is_dir() {
            return Err(CliError::config(format!("{}: exists and is not a directory", out.display())).into());
        }
        if read_marker(out).is_some() {
            replace = true;
        } else if !is_empty_dir(out)? {
            return Err(CliError::config(format!(
                "{}: directory is not empty and is not a previous `bench data synth` output (no {MARKER}); \
                 choose a new or empty directory",
                out.display()
            ))
            .into());
        }
    }
    if let (Some(parent), Some(name)) = (out.parent(), out.file_name()) {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if parent.is_dir() {
            remove_stale_temps(parent, &name.to_string_lossy())?;
        }
    }
    let tmp = sibling(out, "tmp")?;
    let summary = match build(&tmp, preset, seed) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let moved = (|| -> anyhow::Result<()> {
        if replace {
            let old = sibling(out, "old")?;
            std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        } else {
            if out.exists() {
                std::fs::remove_dir(out).with_context(|| format!("removing empty {}", out.display()))?;
            }
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&tmp);
        // A concurrent `bench data synth` of the same preset and seed got there first: it wrote
        // the same bytes (generation is a function of both), so this one has nothing to add.
        if cached_ok(out, preset, seed) {
            return Ok(summary);
        }
        return Err(e);
    }
    Ok(summary)
}

/// One clean face of the embedded benchmark at `size` px (identity, look and pose drawn from
/// `seed`, FF++'s studio backdrop, before the capture chain) with its 81 landmarks in dlib order:
/// a realistic SBI input for benchmarks (`benches/sbi_speed.rs`).
pub fn sample_face(size: usize, seed: u64) -> (image::RgbImage, Vec<[f32; 2]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let id = Identity::sample(&mut rng);
    let look = VideoLook::sample(&mut rng, Backdrop::Studio);
    let frame = face::Frame::new(size, &id, &look, FramePose::sample(&mut rng));
    let mut im = img::Img::new(size);
    face::render(&mut im, &id, &look, &frame);
    let rgb = image::RgbImage::from_raw(size as u32, size as u32, im.to_u8()).expect("size x size RGB");
    (rgb, face::landmarks(&id, &frame).to_vec())
}

/// Cache directory name for a generation: preset, seed and generator version.
pub fn cache_name(preset: Preset, seed: u64) -> String {
    format!("synth-{preset}-seed{seed}-v{GENERATOR_VERSION}")
}

/// Path of the cached benchmark, generating it first if absent. Protocols that name the
/// synthetic benchmark call this.
pub fn ensure(preset: Preset, seed: u64, cache_root: &Path) -> anyhow::Result<PathBuf> {
    ensure_report(preset, seed, cache_root).map(|(p, _)| p)
}

/// Like `ensure`, also returning the summary when this call generated the data (None: cached).
pub fn ensure_report(
    preset: Preset,
    seed: u64,
    cache_root: &Path,
) -> anyhow::Result<(PathBuf, Option<Summary>)> {
    let name = cache_name(preset, seed);
    let dir = cache_root.join(&name);
    if cached_ok(&dir, preset, seed) {
        return Ok((dir, None));
    }
    if dir.exists() {
        bail!(
            "{}: exists but is not a complete synthetic benchmark for preset {preset}, seed {seed}, \
             generator v{GENERATOR_VERSION} (bad or missing {MARKER}); remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(cache_root).with_context(|| format!("creating {}", cache_root.display()))?;
    remove_stale_temps(cache_root, &name)?;
    let tmp = sibling(&dir, "tmp")?;
    let summary = match build(&tmp, preset, seed) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another process may have finished the same generation first.
        let _ = std::fs::remove_dir_all(&tmp);
        if cached_ok(&dir, preset, seed) {
            return Ok((dir, None));
        }
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()));
    }
    Ok((dir, Some(summary)))
}

fn cached_ok(dir: &Path, preset: Preset, seed: u64) -> bool {
    read_marker(dir).is_some_and(|m| {
        m.get("version").and_then(Value::as_u64) == Some(GENERATOR_VERSION as u64)
            && m.get("preset").and_then(Value::as_str) == Some(preset.as_str())
            && m.get("seed").and_then(Value::as_u64) == Some(seed)
    })
}

/// Temporary directories of interrupted generations (`.<name>.tmp-<pid>-<n>-<host>` of this host
/// whose process is gone) are removed; those of a live process, this one included, and those of
/// other hosts (whose processes cannot be checked from here) are left alone.
fn remove_stale_temps(root: &Path, name: &str) -> anyhow::Result<()> {
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.old-")];
    let me = host_tag();
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = prefixes.iter().find_map(|p| fname.strip_prefix(p.as_str())) else { continue };
        let mut parts = rest.splitn(3, '-');
        let Some(pid) = parts.next().and_then(|p| p.parse().ok()) else { continue };
        // Names without a host come from before hosts were recorded: treated as this host's.
        let host = parts.nth(1);
        if host.is_some_and(|h| h != me) {
            continue;
        }
        if !pid_alive(pid) {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing stale {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    // Without /proc there is no cheap portable check: assume alive and leave the directory.
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output directory (new, empty, or a previous `bench data synth` output to replace).
    #[arg(long)]
    pub out: PathBuf,
    /// Size preset: small (128 px, 8 frames/video), bench (small with 160 real + 160 fake videos
    /// in each unseen dataset) or medium (256 px, 16 frames/video, more videos); tiny is for tests.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// Seed of every random choice; same seed, same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn cmd_synth(args: SynthArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    let summary = generate(&args.out, args.preset, args.seed)?;
    if v == Verbosity::Quiet {
        println!("{}: {} files, sha256 {}", args.out.display(), summary.files, summary.sha256);
    } else {
        print!("{}", summary.render());
        println!("written to {}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(jobs: &[Job], ds: Dataset, label: &str) -> usize {
        jobs.iter().filter(|j| j.ds == ds && j.label == label).count()
    }

    /// `bench` is `small` with larger unseen datasets: its FF++ jobs are `small`'s, field for
    /// field (so the same frames, the same training data and the same FF++ test set), and each
    /// unseen dataset has 160 real and 160 fake videos.
    #[test]
    fn bench_preset_is_small_with_large_unseen_sets() {
        let (small, bench) = (Preset::Small.config(), Preset::Bench.config());
        assert_eq!((bench.size, bench.frames, bench.ff), (small.size, small.frames, small.ff));
        let js = plan(&small, 0).unwrap();
        let jb = plan(&bench, 0).unwrap();
        let ff = |jobs: &[Job]| -> Vec<String> {
            jobs.iter().filter(|j| j.ds == Dataset::Ffpp).map(|j| format!("{j:?}")).collect()
        };
        assert_eq!(ff(&js), ff(&jb));
        assert_eq!(ff(&jb).len(), 62 * 5);
        let want = [
            (Dataset::CelebDf, "CelebDFv2_real", 160),
            (Dataset::CelebDf, "CelebDFv2_fake", 160),
            (Dataset::Dfdc, "DFDC_Real", 160),
            (Dataset::Dfdc, "DFDC_Fake", 160),
            (Dataset::Dfdcp, "DFDCP_Real", 160),
            (Dataset::Dfdcp, "DFDCP_FakeA", 80),
            (Dataset::Dfdcp, "DFDCP_FakeB", 80),
            (Dataset::Uadfv, "UADFV_Real", 160),
            (Dataset::Uadfv, "UADFV_Fake", 160),
        ];
        for (ds, label, n) in want {
            assert_eq!(count(&jb, ds, label), n, "{label}");
        }
        // small's unseen sets for comparison: 16 + 16 each.
        assert_eq!(count(&js, Dataset::Uadfv, "UADFV_Fake"), 16);
        assert_eq!("bench".parse::<Preset>().unwrap(), Preset::Bench);
        assert_eq!(cache_name(Preset::Bench, 0), format!("synth-bench-seed0-v{GENERATOR_VERSION}"));
    }
}
