//! Image loading: decode PNG/JPEG, resize, normalise, batch into candle tensors, with parallel
//! decoding (rayon), bounded prefetch (a producer thread per stream feeding a
//! `std::sync::mpsc::sync_channel`), a seeded sample order and a byte-bounded cache of decoded
//! frames shared by every stream of a run.
//!
//! * [`FrameStore`]: decode + resize + cache + failure policy + counters (skips, SBI fallbacks).
//! * [`TrainStream`]: endless training batches: [`TrainStream::original`] (real + fakes with an
//!   optional real fraction), [`TrainStream::sbi`] (real frames and their self-blended twins),
//!   [`TrainStream::domains`] (one original stream per manipulation).
//! * [`EvalStream`]: every frame of a selection once, in index order, with frame identities.
//!
//! Determinism: a stream's sample order is drawn from `ChaCha8Rng` seeded by the run seed mixed
//! with the stream's name; each SBI sample has its own generator seeded by (stream seed, batch
//! number, slot), so results do not depend on thread scheduling. The cache holds resized u8
//! frames; it fills until its byte budget is reached and never evicts (no thrashing when the
//! data set is larger than the budget: the first frames seen stay, the rest are decoded again).
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use detectors::Batch;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::index::{FrameEntry, Index, Split};
use super::sbi;

/// What to do with a missing, truncated or unreadable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Stop with an error naming the file.
    #[default]
    Fail,
    /// Leave the frame out, record it ([`FrameStore::skipped`]) and go on.
    Skip,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Frames are resized to `resolution x resolution` (bilinear) when they differ (16..=4096).
    pub resolution: u32,
    /// Per-channel normalisation `(x / 255 - mean) / std`, RGB order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub policy: FailurePolicy,
    /// Byte budget of the decoded-frame cache (0 disables it).
    pub cache_bytes: usize,
    /// Batches prepared ahead of the consumer per stream (at least 1).
    pub prefetch: usize,
    /// Probability that a training sample is mirrored left-right (the protocol's
    /// `data.augmentation.hflip`); drawn from the stream's seed. Evaluation never flips.
    pub hflip: f32,
    pub device: Device,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            resolution: 256,
            mean: [0.5; 3],
            std: [0.5; 3],
            policy: FailurePolicy::Fail,
            cache_bytes: 1 << 30,
            prefetch: 2,
            hflip: 0.0,
            device: Device::Cpu,
        }
    }
}

/// A frame that was left out under [`FailurePolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedFrame {
    pub path: PathBuf,
    pub reason: String,
}

/// Counters for the run manifest. SBI counters count consumed batches (not prefetched ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoaderStats {
    pub skipped_frames: usize,
    /// SBI samples made with the fallback ellipse (no usable landmarks).
    pub sbi_fallbacks: usize,
    /// Landmark files that existed but could not be read (counted within the fallbacks).
    pub landmark_errors: usize,
    pub sbi_samples: usize,
    pub cached_frames: usize,
    pub cached_bytes: usize,
}

struct Cached {
    img: Arc<RgbImage>,
    /// Size before resizing (landmarks are in these coordinates).
    orig: (u32, u32),
}

/// Decoding, resizing and caching of frames, shared by every stream of a run.
pub struct FrameStore {
    cfg: LoaderConfig,
    cache: RwLock<HashMap<PathBuf, Arc<Cached>>>,
    cache_used: AtomicUsize,
    bad: RwLock<HashSet<PathBuf>>,
    skipped: Mutex<Vec<SkippedFrame>>,
    sbi_fallbacks: AtomicUsize,
    landmark_errors: AtomicUsize,
    sbi_samples: AtomicUsize,
}

impl FrameStore {
    pub fn new(cfg: LoaderConfig) -> Result<Arc<FrameStore>> {
        if !(16..=4096).contains(&cfg.resolution) {
            bail!("loader: resolution must be between 16 and 4096 pixels (got {})", cfg.resolution);
        }
        if cfg.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || cfg.mean.iter().any(|m| !m.is_finite()) {
            bail!(
                "loader: normalisation std must be finite and positive, mean finite (got mean {:?}, std {:?})",
                cfg.mean,
                cfg.std
            );
        }
        Ok(Arc::new(FrameStore {
            cfg,
            cache: RwLock::new(HashMap::new()),
            cache_used: AtomicUsize::new(0),
            bad: RwLock::new(HashSet::new()),
            skipped: Mutex::new(Vec::new()),
            sbi_fallbacks: AtomicUsize::new(0),
            landmark_errors: AtomicUsize::new(0),
            sbi_samples: AtomicUsize::new(0),
        }))
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Frames left out so far (policy `skip`), each once.
    pub fn skipped(&self) -> Vec<SkippedFrame> {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stats(&self) -> LoaderStats {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        LoaderStats {
            skipped_frames: self.skipped.lock().unwrap_or_else(|e| e.into_inner()).len(),
            sbi_fallbacks: self.sbi_fallbacks.load(Ordering::Relaxed),
            landmark_errors: self.landmark_errors.load(Ordering::Relaxed),
            sbi_samples: self.sbi_samples.load(Ordering::Relaxed),
            cached_frames: cache.len(),
            cached_bytes: self.cache_used.load(Ordering::Relaxed),
        }
    }

    /// The frame at `path`, resized. `Ok(None)`: unreadable and skipped (policy `skip`).
    pub fn load(&self, path: &Path) -> Result<Option<Arc<RgbImage>>> {
        Ok(self.load_cached(path)?.map(|c| c.img.clone()))
    }

    fn load_cached(&self, path: &Path) -> Result<Option<Arc<Cached>>> {
        if let Some(c) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(Some(c.clone()));
        }
        if self.bad.read().unwrap_or_else(|e| e.into_inner()).contains(path) {
            return Ok(None);
        }
        match decode_frame(path, self.cfg.resolution) {
            Ok((img, orig)) => {
                let c = Arc::new(Cached { img: Arc::new(img), orig });
                let bytes = c.img.as_raw().len();
                if self.cache_used.load(Ordering::Relaxed) + bytes <= self.cfg.cache_bytes {
                    let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                    if !cache.contains_key(path)
                        && self.cache_used.load(Ordering::Relaxed) + bytes <= self.cfg.cache_bytes
                    {
                        self.cache_used.fetch_add(bytes, Ordering::Relaxed);
                        cache.insert(path.to_path_buf(), c.clone());
                    }
                }
                Ok(Some(c))
            }
            Err(e) => match self.cfg.policy {
                FailurePolicy::Fail => Err(e),
                FailurePolicy::Skip => {
                    let mut bad = self.bad.write().unwrap_or_else(|e| e.into_inner());
                    if bad.insert(path.to_path_buf()) {
                        self.skipped
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(SkippedFrame { path: path.to_path_buf(), reason: format!("{e:#}") });
                    }
                    Ok(None)
                }
            },
        }
    }

    /// Landmarks of `entry` scaled to the loaded resolution; `Ok(None)` when there is no file,
    /// `Err` when it exists but cannot be read (the caller counts it and falls back).
    fn landmarks_for(
        &self,
        entry: &FrameEntry,
        orig: (u32, u32),
    ) -> std::result::Result<Option<Vec<[f32; 2]>>, ()> {
        let Some(p) = entry.landmark_path.as_ref() else { return Ok(None) };
        match load_landmarks(p) {
            Ok(mut lm) => {
                let r = self.cfg.resolution as f32;
                let (sx, sy) = (r / orig.0 as f32, r / orig.1 as f32);
                for q in &mut lm {
                    q[0] *= sx;
                    q[1] *= sy;
                }
                Ok(Some(lm))
            }
            Err(_) => Err(()),
        }
    }

    /// Normalised `[B, 3, R, R]` images and `[B]` labels on the configured device.
    pub fn to_batch(&self, images: &[&RgbImage], labels: &[f32]) -> Result<Batch> {
        self.to_batch_flipped(images, labels, &[])
    }

    /// As [`FrameStore::to_batch`], mirroring image `i` left-right where `flips[i]` is true
    /// (`flips` may be empty: no flips).
    pub fn to_batch_flipped(&self, images: &[&RgbImage], labels: &[f32], flips: &[bool]) -> Result<Batch> {
        if images.len() != labels.len() || (!flips.is_empty() && flips.len() != images.len()) {
            bail!("to_batch: {} images but {} labels", images.len(), labels.len());
        }
        let r = self.cfg.resolution as usize;
        let plane = r * r;
        let mut data = vec![0f32; images.len() * 3 * plane];
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.cfg.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| -self.cfg.mean[c] / self.cfg.std[c]);
        data.par_chunks_mut(3 * plane).zip(images.par_iter()).enumerate().try_for_each(
            |(k, (out, img))| {
                if img.width() as usize != r || img.height() as usize != r {
                    bail!("to_batch: image is {}x{}, expected {r}x{r}", img.width(), img.height());
                }
                let flip = flips.get(k).copied().unwrap_or(false);
                let (o0, rest) = out.split_at_mut(plane);
                let (o1, o2) = rest.split_at_mut(plane);
                for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
                    // Mirrored: pixel (y, x) goes to (y, r - 1 - x).
                    let j = if flip { i - i % r + (r - 1 - i % r) } else { i };
                    o0[j] = px[0] as f32 * scale[0] + shift[0];
                    o1[j] = px[1] as f32 * scale[1] + shift[1];
                    o2[j] = px[2] as f32 * scale[2] + shift[2];
                }
                Ok(())
            },
        )?;
        let images = Tensor::from_vec(data, (images.len(), 3, r, r), &self.cfg.device)?;
        let labels = Tensor::from_vec(labels.to_vec(), labels.len(), &self.cfg.device)?;
        Ok(Batch { images, labels })
    }
}

/// Decodes a PNG/JPEG frame to RGB and resizes it (bilinear) to `res x res`. Returns the image
/// and its original size. Errors name the path.
pub fn decode_frame(path: &Path, res: u32) -> Result<(RgbImage, (u32, u32))> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read frame", path.display()))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| {
            anyhow!("{}: cannot decode image (missing, truncated or not PNG/JPEG): {e}", path.display())
        })?
        .to_rgb8();
    let orig = img.dimensions();
    if orig.0 == 0 || orig.1 == 0 {
        bail!("{}: empty image", path.display());
    }
    let img = if orig == (res, res) {
        img
    } else {
        image::imageops::resize(&img, res, res, image::imageops::FilterType::Triangle)
    };
    Ok((img, orig))
}

/// Reads an `(N, 2)` landmark array (N = 68 or 81; int32/int64/float32/float64), (x, y).
pub fn load_landmarks(path: &Path) -> Result<Vec<[f32; 2]>> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open landmarks", path.display()))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f))
        .with_context(|| format!("{}: not an npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 || shape[1] != 2 || !(shape[0] == 68 || shape[0] == 81) {
        bail!("{}: landmarks have shape {shape:?}, expected (81, 2) or (68, 2)", path.display());
    }
    let order_f = matches!(npy.order(), npyz::Order::Fortran);
    let flat: Vec<f32> = match npy.dtype() {
        npyz::DType::Plain(ts) => {
            let size = ts.size_field();
            let ctx = || format!("{}: cannot read landmark values", path.display());
            match (ts.type_char(), size) {
                (npyz::TypeChar::Int, 4) => {
                    npy.into_vec::<i32>().with_context(ctx)?.into_iter().map(|v| v as f32).collect()
                }
                (npyz::TypeChar::Int, 8) => {
                    npy.into_vec::<i64>().with_context(ctx)?.into_iter().map(|v| v as f32).collect()
                }
                (npyz::TypeChar::Uint, 2) => {
                    npy.into_vec::<u16>().with_context(ctx)?.into_iter().map(|v| v as f32).collect()
                }
                (npyz::TypeChar::Float, 4) => npy.into_vec::<f32>().with_context(ctx)?,
                (npyz::TypeChar::Float, 8) => {
                    npy.into_vec::<f64>().with_context(ctx)?.into_iter().map(|v| v as f32).collect()
                }
                (c, s) => bail!(
                    "{}: landmark dtype {c:?}{s} not supported (int32, int64, float32, float64)",
                    path.display()
                ),
            }
        }
        other => bail!("{}: landmark dtype {other:?} not supported", path.display()),
    };
    let n = shape[0] as usize;
    let pts: Vec<[f32; 2]> = (0..n)
        .map(|i| if order_f { [flat[i], flat[n + i]] } else { [flat[2 * i], flat[2 * i + 1]] })
        .collect();
    if pts.iter().any(|p| !p[0].is_finite() || !p[1].is_finite()) {
        bail!("{}: landmarks contain a non-finite value", path.display());
    }
    Ok(pts)
}

/// Identity of a scored frame (for score files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FrameId {
    pub dataset: String,
    pub label_name: String,
    pub label: u8,
    pub split: Split,
    pub compression: Option<String>,
    pub video: String,
    pub frame: String,
}

impl FrameId {
    pub fn of(e: &FrameEntry) -> FrameId {
        FrameId {
            dataset: e.dataset.clone(),
            label_name: e.label_name.clone(),
            label: e.label,
            split: e.split,
            compression: e.compression.clone(),
            video: e.video.clone(),
            frame: e.frame.clone(),
        }
    }
}

/// A batch of an evaluation pass with the identity of each row.
#[derive(Debug, Clone)]
pub struct EvalBatch {
    pub batch: Batch,
    pub frames: Vec<FrameId>,
}

/// 64-bit mix (splitmix64) used to derive independent seeds.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B3_E37D);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a stream name (stable across Rust releases, unlike `DefaultHasher`).
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// An endlessly reshuffled pool of entry indices.
struct Cycle {
    items: Vec<usize>,
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl Cycle {
    fn new(items: Vec<usize>, seed: u64) -> Cycle {
        Cycle { items, order: Vec::new(), pos: 0, rng: ChaCha8Rng::seed_from_u64(seed) }
    }
    fn next(&mut self) -> Option<usize> {
        if self.items.is_empty() {
            return None;
        }
        if self.pos >= self.order.len() {
            self.order.clone_from(&self.items);
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        self.pos += 1;
        Some(self.order[self.pos - 1])
    }
    /// Drops an unreadable item for good (from the pool and from the current pass's order).
    fn remove(&mut self, item: usize) {
        self.items.retain(|&i| i != item);
        if let Some(k) = self.order.iter().position(|&i| i == item) {
            self.order.remove(k);
            // Keep pointing at the same next item.
            if k < self.pos {
                self.pos -= 1;
            }
        }
    }
}

enum Plan {
    /// One pool with mixed labels (the data's own real:fake ratio).
    Pooled {
        all: Cycle,
        n: usize,
    },
    /// Pools of entry indices with a number of slots each, label per pool.
    Original {
        pools: Vec<(Cycle, usize, f32)>,
    },
    Sbi {
        reals: Cycle,
        pairs: usize,
    },
}

/// A prepared batch with the SBI counts it carries; counted when consumed, not when prefetched.
struct Produced {
    batch: Batch,
    samples: Vec<SampleInfo>,
    sbi_samples: usize,
    sbi_fallbacks: usize,
    landmark_errors: usize,
}

impl Produced {
    fn plain(batch: Batch, samples: Vec<SampleInfo>) -> Produced {
        Produced { batch, samples, sbi_samples: 0, sbi_fallbacks: 0, landmark_errors: 0 }
    }
}

/// Where one sample of a training batch came from (`bench data preview` labels its tiles so).
#[derive(Debug, Clone)]
pub struct SampleInfo {
    /// 0 real, 1 fake (an SBI blend is 1).
    pub label: u8,
    /// Label name of the source frame (`FF-real`, `FF-DF`, ...).
    pub label_name: String,
    pub video: String,
    pub frame: String,
    /// Mirrored by the horizontal-flip augmentation.
    pub flipped: bool,
    /// For an SBI blend and its real twin: the blend's details.
    pub sbi: Option<SbiInfo>,
}

#[derive(Debug, Clone)]
pub struct SbiInfo {
    /// Position of the real twin in the batch (for the twin itself, its own position).
    pub twin: usize,
    /// Blend mask in [0, 1] before the ratio, `resolution x resolution`, mirrored as the image.
    pub mask: Vec<f32>,
    pub ratio: f32,
    pub variant: sbi::HullVariant,
    pub jpeg_quality: Option<u8>,
}

fn sample_info(e: &FrameEntry, label: u8, flipped: bool, sbi: Option<SbiInfo>) -> SampleInfo {
    SampleInfo {
        label,
        label_name: e.label_name.clone(),
        video: e.video.clone(),
        frame: e.frame.clone(),
        flipped,
        sbi,
    }
}

/// `mask` (row-major `r x r`) mirrored left-right.
fn mirror(mask: &[f32], r: usize) -> Vec<f32> {
    mask.chunks_exact(r).flat_map(|row| row.iter().rev().copied()).collect()
}

struct Producer {
    store: Arc<FrameStore>,
    entries: Arc<Vec<FrameEntry>>,
    plan: Plan,
    seed: u64,
    batch_no: u64,
    name: String,
}

impl Producer {
    /// Fills `n` slots from `cycle`, replacing skipped frames by further draws.
    fn fill(
        store: &FrameStore,
        entries: &[FrameEntry],
        cycle: &mut Cycle,
        n: usize,
        name: &str,
    ) -> Result<Vec<(usize, Arc<Cached>)>> {
        let mut got: Vec<(usize, Arc<Cached>)> = Vec::with_capacity(n);
        while got.len() < n {
            let want = n - got.len();
            let picks: Vec<usize> = (0..want)
                .map(|_| {
                    cycle.next().ok_or_else(|| {
                        anyhow!("stream {name}: every frame of the pool is unreadable (see skipped frames)")
                    })
                })
                .collect::<Result<_>>()?;
            let loaded: Vec<Result<Option<Arc<Cached>>>> =
                picks.par_iter().map(|&i| store.load_cached(&entries[i].frame_path)).collect();
            for (i, r) in picks.into_iter().zip(loaded) {
                match r? {
                    Some(c) => got.push((i, c)),
                    None => cycle.remove(i),
                }
            }
        }
        Ok(got)
    }

    /// Which samples of batch `batch_no` are mirrored (empty when augmentation is off).
    fn flips(&self, batch_no: u64, n: usize) -> Vec<bool> {
        let p = self.store.cfg.hflip;
        if p <= 0.0 {
            return Vec::new();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(mix_seed(self.seed, batch_no), 0xF11F));
        (0..n).map(|_| rng.random::<f32>() < p).collect()
    }

    fn produce(&mut self) -> Result<Produced> {
        let batch_no = self.batch_no;
        self.batch_no += 1;
        match &mut self.plan {
            Plan::Pooled { all, n } => {
                let got = Self::fill(&self.store, &self.entries, all, *n, &self.name)?;
                let refs: Vec<&RgbImage> = got.iter().map(|(_, c)| c.img.as_ref()).collect();
                let labels: Vec<f32> = got.iter().map(|(i, _)| self.entries[*i].label as f32).collect();
                let flips = self.flips(batch_no, refs.len());
                let samples = got
                    .iter()
                    .enumerate()
                    .map(|(k, (i, _))| {
                        let e = &self.entries[*i];
                        sample_info(e, e.label, flips.get(k).copied().unwrap_or(false), None)
                    })
                    .collect();
                Ok(Produced::plain(self.store.to_batch_flipped(&refs, &labels, &flips)?, samples))
            }
            Plan::Original { pools } => {
                let mut imgs: Vec<Arc<Cached>> = Vec::new();
                let mut labels = Vec::new();
                let mut picked = Vec::new();
                for (cycle, n, label) in pools.iter_mut() {
                    for (i, c) in Self::fill(&self.store, &self.entries, cycle, *n, &self.name)? {
                        imgs.push(c);
                        labels.push(*label);
                        picked.push(i);
                    }
                }
                let refs: Vec<&RgbImage> = imgs.iter().map(|c| c.img.as_ref()).collect();
                let flips = self.flips(batch_no, refs.len());
                let samples = picked
                    .iter()
                    .zip(&labels)
                    .enumerate()
                    .map(|(k, (&i, &l))| {
                        sample_info(&self.entries[i], l as u8, flips.get(k).copied().unwrap_or(false), None)
                    })
                    .collect();
                Ok(Produced::plain(self.store.to_batch_flipped(&refs, &labels, &flips)?, samples))
            }
            Plan::Sbi { reals, pairs } => {
                let got = Self::fill(&self.store, &self.entries, reals, *pairs, &self.name)?;
                let seed = self.seed;
                let store = &self.store;
                let entries = &self.entries;
                let made: Vec<(sbi::SbiSample, bool)> = got
                    .par_iter()
                    .enumerate()
                    .map(|(slot, (i, c))| {
                        let lm = store.landmarks_for(&entries[*i], c.orig);
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(mix_seed(mix_seed(seed, batch_no), slot as u64));
                        let lm_ref = lm.as_ref().ok().and_then(|l| l.as_deref());
                        (sbi::self_blend(&c.img, lm_ref, &mut rng), lm.is_err())
                    })
                    .collect();
                let fallbacks = made.iter().filter(|s| s.0.fallback).count();
                let landmark_errors = made.iter().filter(|s| s.1).count();
                let made: Vec<sbi::SbiSample> = made.into_iter().map(|s| s.0).collect();
                let mut refs: Vec<&RgbImage> = made.iter().map(|s| &s.real).collect();
                refs.extend(made.iter().map(|s| &s.fake));
                let mut labels = vec![0f32; made.len()];
                labels.extend(std::iter::repeat_n(1f32, made.len()));
                let flips = self.flips(batch_no, refs.len());
                let flipped = |k: usize| flips.get(k).copied().unwrap_or(false);
                let r = store.cfg.resolution as usize;
                let mut samples = Vec::with_capacity(refs.len());
                for half in [0u8, 1] {
                    for (slot, (s, (i, _))) in made.iter().zip(&got).enumerate() {
                        let k = half as usize * made.len() + slot;
                        let info = SbiInfo {
                            twin: slot,
                            mask: if flipped(k) { mirror(&s.mask, r) } else { s.mask.clone() },
                            ratio: s.ratio,
                            variant: s.variant,
                            jpeg_quality: s.jpeg_quality,
                        };
                        samples.push(sample_info(&entries[*i], half, flipped(k), Some(info)));
                    }
                }
                Ok(Produced {
                    batch: store.to_batch_flipped(&refs, &labels, &flips)?,
                    samples,
                    sbi_samples: made.len(),
                    sbi_fallbacks: fallbacks,
                    landmark_errors,
                })
            }
        }
    }
}

/// Reals and fakes in every batch of an original or domain stream with real fraction `f`:
/// `round(f B)` reals, the rest fakes. The runner records this split in the manifest.
pub fn original_batch_split(batch_size: usize, real_fraction: f64) -> (usize, usize) {
    let n_real = ((batch_size as f64) * real_fraction).round() as usize;
    let n_real = n_real.min(batch_size);
    (n_real, batch_size - n_real)
}

/// An endless stream of training batches prepared by a background thread.
pub struct TrainStream {
    name: String,
    rx: Option<Receiver<Result<Produced>>>,
    handle: Option<JoinHandle<()>>,
    failed: bool,
    store: Arc<FrameStore>,
}

impl TrainStream {
    fn spawn(mut producer: Producer, prefetch: usize) -> TrainStream {
        let (tx, rx): (SyncSender<Result<Produced>>, Receiver<Result<Produced>>) =
            sync_channel(prefetch.max(1));
        let name = producer.name.clone();
        let store = producer.store.clone();
        let handle = std::thread::Builder::new()
            .name(format!("dfbench-loader-{name}"))
            .spawn(move || {
                loop {
                    let b = producer.produce();
                    let stop = b.is_err();
                    if tx.send(b).is_err() || stop {
                        break;
                    }
                }
            })
            .expect("spawning a loader thread");
        TrainStream { name, rx: Some(rx), handle: Some(handle), failed: false, store }
    }

    /// The original stream: the real and fake frames of `index`. With `real_fraction = Some(f)`
    /// each batch holds `round(f B)` reals and the rest fakes (each pool reshuffled per pass);
    /// with `None` frames are drawn from the pooled set (the data's own ratio).
    pub fn original(
        store: Arc<FrameStore>,
        index: &Index,
        batch_size: usize,
        real_fraction: Option<f64>,
        seed: u64,
    ) -> Result<TrainStream> {
        Self::original_named(store, index, batch_size, real_fraction, seed, "original")
    }

    fn original_named(
        store: Arc<FrameStore>,
        index: &Index,
        batch_size: usize,
        real_fraction: Option<f64>,
        seed: u64,
        name: &str,
    ) -> Result<TrainStream> {
        if batch_size == 0 {
            bail!("stream {name}: batch size must be at least 1");
        }
        let entries = Arc::new(index.entries.clone());
        let s = mix_seed(seed, name_hash(name));
        let reals: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].label == 0).collect();
        let fakes: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].label == 1).collect();
        let plan = match real_fraction {
            None => {
                if entries.is_empty() {
                    bail!("stream {name}: the selection has no frames");
                }
                Plan::Pooled { all: Cycle::new((0..entries.len()).collect(), mix_seed(s, 3)), n: batch_size }
            }
            Some(f) => {
                if !(0.0..=1.0).contains(&f) {
                    bail!("stream {name}: real fraction {f} is outside [0, 1]");
                }
                let (n_real, n_fake) = original_batch_split(batch_size, f);
                if n_real > 0 && reals.is_empty() {
                    bail!("stream {name}: the selection has no real frames");
                }
                if n_fake > 0 && fakes.is_empty() {
                    bail!("stream {name}: the selection has no fake frames");
                }
                Plan::Original {
                    pools: vec![
                        (Cycle::new(reals, mix_seed(s, 1)), n_real, 0.0),
                        (Cycle::new(fakes, mix_seed(s, 2)), n_fake, 1.0),
                    ],
                }
            }
        };
        let prefetch = store.cfg.prefetch;
        let p = Producer { store, entries, plan, seed: s, batch_no: 0, name: name.to_string() };
        Ok(Self::spawn(p, prefetch))
    }

    /// The online SBI stream: `batch_size / 2` real frames of `index` (labels 0; each the
    /// post-augmented real twin) followed by their self-blended images (label 1). Fake frames
    /// of `index` are ignored. `batch_size` must be even.
    pub fn sbi(store: Arc<FrameStore>, index: &Index, batch_size: usize, seed: u64) -> Result<TrainStream> {
        if batch_size < 2 || !batch_size.is_multiple_of(2) {
            bail!("stream online: SBI batch size must be even and at least 2 (got {batch_size})");
        }
        let entries = Arc::new(index.entries.clone());
        let reals: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].label == 0).collect();
        if reals.is_empty() {
            bail!("stream online: the selection has no real frames to self-blend");
        }
        let s = mix_seed(seed, name_hash("online"));
        let prefetch = store.cfg.prefetch;
        let p = Producer {
            store,
            entries,
            plan: Plan::Sbi { reals: Cycle::new(reals, mix_seed(s, 1)), pairs: batch_size / 2 },
            seed: s,
            batch_no: 0,
            name: "online".into(),
        };
        Ok(Self::spawn(p, prefetch))
    }

    /// One original stream per manipulation in `manipulations` (or every manipulation of
    /// `index` when empty): the real frames of `index` plus that manipulation's fakes.
    pub fn domains(
        store: Arc<FrameStore>,
        index: &Index,
        manipulations: &[String],
        batch_size: usize,
        real_fraction: Option<f64>,
        seed: u64,
    ) -> Result<Vec<(String, TrainStream)>> {
        let manips = if manipulations.is_empty() { index.manipulations() } else { manipulations.to_vec() };
        let mut out = Vec::with_capacity(manips.len());
        for m in manips {
            let sub = index.filter(|e| e.label == 0 || e.manipulation.as_deref() == Some(m.as_str()));
            if !sub.entries.iter().any(|e| e.label == 1) {
                bail!("domain stream {m}: no fake frames of this manipulation in the selection");
            }
            let s = Self::original_named(
                store.clone(),
                &sub,
                batch_size,
                real_fraction,
                seed,
                &format!("domain:{m}"),
            )?;
            out.push((m, s));
        }
        Ok(out)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next batch (blocks only if the producer is behind). After an error the stream is
    /// finished and every further call errors.
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.next_batch_described().map(|(b, _)| b)
    }

    /// As [`TrainStream::next_batch`], with where each sample came from (the same batch: the
    /// description is made alongside and draws no random number).
    pub fn next_batch_described(&mut self) -> Result<(Batch, Vec<SampleInfo>)> {
        if self.failed {
            bail!("stream {}: stopped after an earlier error", self.name);
        }
        let rx = self.rx.as_ref().ok_or_else(|| anyhow!("stream {} is closed", self.name))?;
        match rx.recv() {
            Ok(Ok(p)) => {
                self.store.sbi_samples.fetch_add(p.sbi_samples, Ordering::Relaxed);
                self.store.sbi_fallbacks.fetch_add(p.sbi_fallbacks, Ordering::Relaxed);
                self.store.landmark_errors.fetch_add(p.landmark_errors, Ordering::Relaxed);
                Ok((p.batch, p.samples))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Err(e.context(format!("stream {}", self.name)))
            }
            Err(_) => {
                self.failed = true;
                bail!("stream {}: loader thread ended unexpectedly", self.name)
            }
        }
    }
}

impl Drop for TrainStream {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, which ends its loop.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Every frame of a selection once, in index order, in batches of `batch_size` (the last may be
/// shorter; under policy `skip` unreadable frames are left out of their batch).
pub struct EvalStream {
    rx: Option<Receiver<Result<EvalBatch>>>,
    handle: Option<JoinHandle<()>>,
    done: bool,
}

impl EvalStream {
    pub fn new(store: Arc<FrameStore>, index: &Index, batch_size: usize) -> Result<EvalStream> {
        if batch_size == 0 {
            bail!("evaluation batch size must be at least 1");
        }
        let entries = index.entries.clone();
        let (tx, rx) = sync_channel(store.cfg.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("dfbench-loader-eval".into())
            .spawn(move || {
                for chunk in entries.chunks(batch_size) {
                    let r = Self::make(&store, chunk);
                    let stop = r.is_err();
                    let item = match r {
                        Ok(Some(b)) => Ok(b),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    };
                    if tx.send(item).is_err() || stop {
                        break;
                    }
                }
            })
            .expect("spawning a loader thread");
        Ok(EvalStream { rx: Some(rx), handle: Some(handle), done: false })
    }

    fn make(store: &FrameStore, chunk: &[FrameEntry]) -> Result<Option<EvalBatch>> {
        let loaded: Vec<Result<Option<Arc<RgbImage>>>> =
            chunk.par_iter().map(|e| store.load(&e.frame_path)).collect();
        let mut imgs = Vec::with_capacity(chunk.len());
        let mut frames = Vec::with_capacity(chunk.len());
        let mut labels = Vec::with_capacity(chunk.len());
        for (e, r) in chunk.iter().zip(loaded) {
            if let Some(img) = r? {
                imgs.push(img);
                frames.push(FrameId::of(e));
                labels.push(e.label as f32);
            }
        }
        if imgs.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RgbImage> = imgs.iter().map(|i| i.as_ref()).collect();
        Ok(Some(EvalBatch { batch: store.to_batch(&refs, &labels)?, frames }))
    }
}

impl Iterator for EvalStream {
    type Item = Result<EvalBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(Ok(b)) => Some(Ok(b)),
            Ok(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

impl Drop for EvalStream {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_remove_keeps_the_next_item_and_passes_cover_the_pool() {
        let mut c = Cycle::new((0..6).collect(), 1);
        let first: Vec<usize> = (0..3).map(|_| c.next().unwrap()).collect();
        let rest_expected = c.order[3..].to_vec();
        c.remove(first[1]);
        let rest: Vec<usize> = (0..3).map(|_| c.next().unwrap()).collect();
        assert_eq!(rest, rest_expected);
        let mut next: Vec<usize> = (0..5).map(|_| c.next().unwrap()).collect();
        next.sort_unstable();
        assert_eq!(next, (0..6).filter(|&i| i != first[1]).collect::<Vec<_>>());
        let mut empty = Cycle::new(vec![3], 0);
        empty.remove(3);
        assert!(empty.next().is_none());
    }

    #[test]
    fn seeds_and_names_mix_apart() {
        assert_ne!(mix_seed(1, 2), mix_seed(2, 1));
        assert_ne!(name_hash("domain:FF-DF"), name_hash("domain:FF-F2F"));
        // FNV-1a reference: fnv1a64("a") = 0xaf63dc4c8601ec8c.
        assert_eq!(name_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
