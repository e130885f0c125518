//! Loading pretrained weights from safetensors files and PyTorch checkpoints (`.pth`, `.pt`,
//! `.bin`: `torch.save`'s zip format and its legacy pre-1.6 stream), and saving a run's weights
//! to safetensors.
//!
//! [`read_tensors`] reads either format (a checkpoint's `state_dict`, `model` or `net` entry when
//! the tensors are nested one level). With [`LoadOptions::family`] set, a `module.` prefix
//! (DataParallel) is dropped, a DeepfakeBench detector checkpoint is reduced to its `backbone.`
//! tensors, and the family's other naming schemes are translated by
//! [`crate::backbones::reference_name`]. Tensors are then matched by name against the store's
//! trainable parameters and buffers. The names each backbone family expects (relative to the
//! backbone's builder prefix):
//!
//! - `resnet18` / `resnet34` (torchvision): `conv1.weight`, `bn1.{weight,bias,running_mean,
//!   running_var}`, `layer{1-4}.{i}.conv{1,2}.weight`, `layer{1-4}.{i}.bn{1,2}.*`,
//!   `layer{2-4}.0.downsample.0.weight`, `layer{2-4}.0.downsample.1.*`. Ignore `fc.`.
//! - `efficientnet-b0` / `-b4` (timm `efficientnet_b*`) and `tf-efficientnet-b0` / `-b4` (timm
//!   `tf_efficientnet_b*`; efficientnet_pytorch's `_conv_stem`, `_bn0`, `_blocks.N.*` are mapped
//!   by [`crate::backbones::efficientnet::reference_name`]): `conv_stem.weight`,
//!   `bn1.*`, `blocks.{s}.{b}.conv_dw.weight`, `.bn1.*`, `.se.conv_reduce.{weight,bias}`,
//!   `.se.conv_expand.{weight,bias}`, `.conv_pw.weight`, `.bn2.*` (stage 0) and
//!   `.conv_pw`, `.bn1`, `.conv_dw`, `.bn2`, `.se.*`, `.conv_pwl`, `.bn3` (stages 1-6),
//!   `conv_head.weight`, `bn2.*`. Ignore `classifier.`.
//! - `xception` (DeepfakeBench / Cadene): `conv1.weight`, `bn1.*`, `conv2.weight`, `bn2.*`,
//!   `block{1-12}.rep.{i}.conv1.weight` (depthwise), `.rep.{i}.pointwise.weight`,
//!   `.rep.{i}.{weight,bias,running_mean,running_var}` (BN), `block{n}.skip.weight`,
//!   `block{n}.skipbn.*`, `conv3.{conv1,pointwise}.weight`, `bn3.*`, `conv4.*`, `bn4.*`. Ignore
//!   `last_linear.` and `adjust_channel.`. Cadene's ImageNet file stores the pointwise weights as
//!   `[out, in]`; any `[out, in]` tensor whose model shape is `[out, in, 1, 1]` is reshaped.
//! - `meso4`: `conv{1-4}.weight`, `bn1.*` (8 channels), `bn2.*` (16). `meso4-inception`:
//!   `Incption{1,2}_conv{1,2_1,2_2,3_1,3_2,4_1,4_2}.weight`, `Incption{1,2}_bn.*`,
//!   `conv{1,2}.weight`, `bn1.*`. Ignore `fc1.` and `fc2.` (the classifier).
//! - `vit-b16` / `vit-tiny` (timm): `patch_embed.proj.{weight,bias}`, `cls_token`, `pos_embed`,
//!   `blocks.{i}.norm1.*`, `.attn.qkv.*`, `.attn.proj.*`, `.norm2.*`, `.mlp.fc1.*`, `.mlp.fc2.*`,
//!   `norm.{weight,bias}`. Ignore `head.`. Set [`LoadOptions::resize_pos_embed`] to load a 224 px
//!   checkpoint into a model built for another size.
//!
//! PyTorch's `num_batches_tracked` counters are always skipped (reported as ignored).
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use crate::params::ParamStore;

/// How file names map onto store names, and what may be left over.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The backbone whose reference naming schemes are translated (see the module docs); also
    /// drops `module.` prefixes and keeps only the `backbone.` tensors of a detector checkpoint.
    pub family: Option<String>,
    /// Removed from the start of a file tensor's name when present (e.g. `"module."`).
    pub strip_prefix: Option<String>,
    /// Prepended after stripping (e.g. `"backbone."` when the backbone was built under that prefix).
    pub add_prefix: Option<String>,
    /// File tensors whose (mapped) name starts with one of these are skipped (e.g. `"fc."`).
    pub ignore_prefixes: Vec<String>,
    /// Store entries starting with one of these may be absent from the file (keep their init).
    pub allow_missing_prefixes: Vec<String>,
    /// Resize a `pos_embed` of another grid size bilinearly to the store's grid.
    pub resize_pos_embed: bool,
}

/// What a successful load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Store names that received a tensor.
    pub loaded: Vec<String>,
    /// File names skipped (ignored prefixes, `num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Store names left at their initial value (allowed by `allow_missing_prefixes`).
    pub missing_allowed: Vec<String>,
    /// Store names whose tensor was resized (position embeddings).
    pub resized: Vec<String>,
}

fn map_name(name: &str, opts: &LoadOptions) -> String {
    let stripped = match &opts.strip_prefix {
        Some(p) => name.strip_prefix(p.as_str()).unwrap_or(name),
        None => name,
    };
    let native = match &opts.family {
        Some(f) => crate::backbones::reference_name(f, stripped),
        None => stripped.to_string(),
    };
    match &opts.add_prefix {
        Some(p) => format!("{p}{native}"),
        None => native,
    }
}

/// Keys under which training scripts nest a `state_dict` in a checkpoint, tried in order.
pub const NESTING_KEYS: &[&str] = &["state_dict", "model", "net", "model_state_dict", "module"];

/// The storage format of a weights file, from its first bytes (not its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save`'s zip format (PyTorch >= 1.6).
    PyTorchZip,
    /// `torch.save`'s legacy stream (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`).
    PyTorchLegacy,
}

pub fn detect_format(path: &Path) -> Result<Format> {
    use std::io::Read;
    let err = |m: String| candle_core::Error::Msg(format!("{}: {m}", path.display()));
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let n = f.read(&mut head).map_err(|e| err(format!("cannot read: {e}")))?;
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(Format::PyTorchZip);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    if n >= 2 && head[..2] == [0x80, 0x02] {
        return Ok(Format::PyTorchLegacy);
    }
    Err(err("neither a safetensors file nor a PyTorch checkpoint (.pth/.pt/.bin zip)".into()))
}

/// Every tensor of a weights file (safetensors or PyTorch zip checkpoint), sorted by name, in
/// the file's dtype on the CPU. A checkpoint whose tensors are nested under one of
/// [`NESTING_KEYS`] is read from there.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let err = |m: String| candle_core::Error::Msg(format!("{}: {m}", path.display()));
    let format = detect_format(path)?;
    let mut tensors: Vec<(String, Tensor)> = match format {
        Format::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| err(format!("cannot read safetensors file: {e}")))?
            .into_iter()
            .collect(),
        Format::PyTorchZip | Format::PyTorchLegacy => {
            let (found, _) = if matches!(format, Format::PyTorchZip) {
                crate::pth::read(path, NESTING_KEYS)?
            } else {
                crate::pth::read_legacy(path, NESTING_KEYS)?
            };
            if found.is_empty() {
                return Err(err(format!(
                    "no tensors found at the top level or under {}",
                    NESTING_KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )));
            }
            found
        }
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// Drops a `module.` prefix (DataParallel) from every name that has it and, when any name
/// starts with `backbone.` (a DeepfakeBench detector checkpoint) or `net.` (SBI's detector), keeps
/// only those, without the prefix. Returns the kept tensors and the names set aside.
pub fn unwrap_checkpoint(tensors: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, Vec<String>) {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| match n.strip_prefix("module.") {
            Some(rest) => (rest.to_string(), t),
            None => (n, t),
        })
        .collect();
    let Some(prefix) = ["backbone.", "net."].into_iter().find(|p| tensors.iter().any(|(n, _)| n.starts_with(p)))
    else {
        return (tensors, Vec::new());
    };
    let mut kept = Vec::new();
    let mut aside = Vec::new();
    for (n, t) in tensors {
        match n.strip_prefix(prefix) {
            Some(rest) => kept.push((rest.to_string(), t)),
            None => aside.push(n),
        }
    }
    (kept, aside)
}

/// Kept for callers that predate PyTorch checkpoints: [`load_weights`] under its old name.
pub fn load_safetensors(store: &ParamStore, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<LoadReport> {
    load_weights(store, path, opts)
}

/// Copies every tensor of a weights file (see [`read_tensors`]) into the store's parameters and
/// buffers, by name.
///
/// All-or-nothing: names and shapes are checked first; any missing store entry (not allowed),
/// unexpected file tensor (not ignored) or shape mismatch returns an error listing all of them,
/// and nothing is copied. Tensors are converted to the store's dtype (f32) and device.
pub fn load_weights(store: &ParamStore, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<LoadReport> {
    let path = path.as_ref();
    let tensors = read_tensors(path)?;
    let (tensors, aside) = if opts.family.is_some() { unwrap_checkpoint(tensors) } else { (tensors, Vec::new()) };
    let mut report = load_tensors(store, tensors, path, opts)?;
    report.ignored.extend(aside);
    Ok(report)
}

/// [`load_weights`] for tensors already read; `source` names them in errors.
pub fn load_tensors(
    store: &ParamStore,
    file: Vec<(String, Tensor)>,
    source: &Path,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let path = source;

    let mut targets: BTreeMap<&str, &candle_core::Var> = BTreeMap::new();
    for (n, v) in store.trainable().chain(store.buffers()) {
        targets.insert(n.as_str(), v);
    }

    let mut report = LoadReport::default();
    let mut unexpected = Vec::new();
    let mut mismatched = Vec::new();
    let mut mismatched_names = std::collections::BTreeSet::new();
    let mut plan: Vec<(String, Tensor)> = Vec::new();
    for (fname, tensor) in &file {
        let name = map_name(fname, opts);
        if name.ends_with("num_batches_tracked")
            || opts.ignore_prefixes.iter().any(|p| name.starts_with(p.as_str()))
        {
            report.ignored.push(fname.clone());
            continue;
        }
        let Some(var) = targets.get(name.as_str()) else {
            unexpected.push(if &name == fname { name } else { format!("{fname} (as {name})") });
            continue;
        };
        let want = var.dims();
        let mut t = tensor.clone();
        if t.dims() != want && opts.resize_pos_embed && name.ends_with("pos_embed") {
            match resize_pos_embed(&t, want) {
                Ok(r) => {
                    t = r;
                    report.resized.push(name.clone());
                }
                Err(e) => {
                    mismatched.push(format!("{name}: file {:?}, model {want:?} ({e})", tensor.dims()));
                    mismatched_names.insert(name);
                    continue;
                }
            }
        }
        // Cadene's Xception stores 1x1 (pointwise) conv weights as `[out, in]`.
        if t.dims() != want && t.rank() == 2 && want.len() == 4 && want[2..] == [1, 1] && t.dims() == &want[..2] {
            t = t.reshape(want)?;
        }
        if t.dims() != want {
            mismatched.push(format!("{name}: file {:?}, model {want:?}", tensor.dims()));
            mismatched_names.insert(name);
            continue;
        }
        plan.push((name, t));
    }
    let loaded: std::collections::BTreeSet<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing = Vec::new();
    for name in targets.keys() {
        if loaded.contains(name) || mismatched_names.contains(*name) {
            continue;
        }
        if opts.allow_missing_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            report.missing_allowed.push(name.to_string());
        } else {
            missing.push(name.to_string());
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        candle_core::bail!(
            "{}: weights do not match the model; missing in file ({}): {}; unexpected in file ({}): {}; \
             shape mismatches ({}): {}",
            path.display(),
            missing.len(),
            list(&missing),
            unexpected.len(),
            list(&unexpected),
            mismatched.len(),
            list(&mismatched)
        );
    }
    for (name, t) in plan {
        let var = targets[name.as_str()];
        let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&t)
            .map_err(|e| candle_core::Error::Msg(format!("{}: setting `{name}`: {e}", path.display())))?;
        report.loaded.push(name);
    }
    Ok(report)
}

/// Writes every parameter and buffer of the store (f32, by name) to `path` atomically: a
/// temporary file in the same directory, then a rename.
pub fn save_safetensors(store: &ParamStore, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (n, v) in store.trainable().chain(store.buffers()) {
        map.insert(n.clone(), v.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| candle_core::Error::Msg(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let write = candle_core::safetensors::save(&map, &tmp)
        .and_then(|_| std::fs::rename(&tmp, path).map_err(candle_core::Error::from));
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        candle_core::bail!("{}: cannot write weights: {e}", path.display());
    }
    Ok(())
}

/// Resizes a ViT position embedding `[1, 1 + g0^2, D]` (one class token first) to the shape
/// `want = [1, 1 + g^2, D]` by bilinear interpolation of the patch grid (PyTorch's
/// `interpolate(mode='bilinear', align_corners=False)`); the class token's entry is kept.
pub fn resize_pos_embed(pos: &Tensor, want: &[usize]) -> Result<Tensor> {
    let dims = pos.dims();
    if dims.len() != 3 || want.len() != 3 || dims[0] != 1 || want[0] != 1 || dims[2] != want[2] {
        candle_core::bail!("pos_embed resize: cannot map {dims:?} to {want:?}");
    }
    let isqrt = |n: usize| -> Option<usize> {
        let r = (n as f64).sqrt().round() as usize;
        (r * r == n).then_some(r)
    };
    let (Some(g0), Some(g)) = (isqrt(dims[1] - 1), isqrt(want[1] - 1)) else {
        candle_core::bail!("pos_embed resize: {dims:?} or {want:?} is not 1 + a square number of positions");
    };
    let d = dims[2];
    let src = pos.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // Source coordinate, lower index, upper index and weight of the upper one, per output index.
    let taps: Vec<(usize, usize, f32)> = (0..g)
        .map(|o| {
            let s = ((o as f64 + 0.5) * g0 as f64 / g as f64 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(g0 - 1);
            let i1 = (i0 + 1).min(g0 - 1);
            (i0, i1, (s - i0 as f64) as f32)
        })
        .collect();
    let mut out = Vec::with_capacity(want[1] * d);
    out.extend_from_slice(&src[..d]);
    let at = |y: usize, x: usize, c: usize| src[d + (y * g0 + x) * d + c];
    for &(y0, y1, wy) in &taps {
        for &(x0, x1, wx) in &taps {
            for c in 0..d {
                let top = at(y0, x0, c) * (1.0 - wx) + at(y0, x1, c) * wx;
                let bot = at(y1, x0, c) * (1.0 - wx) + at(y1, x1, c) * wx;
                out.push(top * (1.0 - wy) + bot * wy);
            }
        }
    }
    Tensor::from_vec(out, (1, want[1], d), pos.device())
}

/// How well a file's tensors fit a backbone (`bench weights inspect`).
#[derive(Debug, Clone, Default)]
pub struct Fit {
    pub backbone: String,
    /// Store names that a file tensor fills.
    pub matched: Vec<String>,
    /// Store names no file tensor fills.
    pub missing: Vec<String>,
    /// File names (as in the file) that are no store name.
    pub unexpected: Vec<String>,
    /// `name: file [..], model [..]`.
    pub mismatched: Vec<String>,
    /// File names skipped: classifiers, `num_batches_tracked`, a detector's non-backbone parts.
    pub ignored: Vec<String>,
}

impl Fit {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty() && !self.matched.is_empty()
    }

    /// Fraction of the backbone's tensors filled, less the fraction of the file left unused:
    /// 1 for an exact fit.
    pub fn score(&self) -> f64 {
        let store = (self.matched.len() + self.missing.len() + self.mismatched.len()).max(1) as f64;
        let file = (self.matched.len() + self.unexpected.len() + self.mismatched.len()).max(1) as f64;
        self.matched.len() as f64 / store - self.unexpected.len() as f64 / file
    }
}

/// Matches a file's tensors against `backbone` built for `image_size` pixels, with the loader's
/// own name mapping (`module.`/`backbone.` unwrapping, the family's naming schemes, classifier
/// tensors ignored) and shape rules (Cadene's `[out, in]` pointwise weights; a `pos_embed` of
/// another grid, which loading resizes).
pub fn fit(tensors: &[(String, Tensor)], backbone: &str, image_size: usize) -> Result<Fit> {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    crate::backbones::build(backbone, &pb, image_size)?;
    let store = pb.store();
    let targets: BTreeMap<&str, Vec<usize>> =
        store.trainable().chain(store.buffers()).map(|(n, v)| (n.as_str(), v.dims().to_vec())).collect();
    let opts = LoadOptions {
        family: Some(backbone.to_string()),
        ignore_prefixes: crate::backbones::CLASSIFIER_PREFIXES.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let (kept, aside) =
        unwrap_checkpoint(tensors.iter().map(|(n, t)| (n.clone(), t.clone())).collect());
    let mut fit = Fit { backbone: backbone.to_string(), ignored: aside, ..Default::default() };
    let mut seen = std::collections::BTreeSet::new();
    for (fname, t) in &kept {
        let name = map_name(fname, &opts);
        if name.ends_with("num_batches_tracked") || opts.ignore_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            fit.ignored.push(fname.clone());
            continue;
        }
        let Some(want) = targets.get(name.as_str()) else {
            fit.unexpected.push(fname.clone());
            continue;
        };
        seen.insert(name.clone());
        let got = t.dims();
        let pointwise = got.len() == 2 && want.len() == 4 && want[2..] == [1, 1] && got == &want[..2];
        let pos_embed = name.ends_with("pos_embed") && got.len() == 3 && want.len() == 3 && got[2] == want[2];
        if got == want.as_slice() || pointwise || pos_embed {
            fit.matched.push(name);
        } else {
            fit.mismatched.push(format!("{name}: file {got:?}, model {want:?}"));
        }
    }
    fit.missing = targets.keys().filter(|n| !seen.contains(**n)).map(|n| n.to_string()).collect();
    Ok(fit)
}
