//! Checks of a plan against what a run can physically do, before any training: the input size a
//! backbone accepts, and a lower bound on the memory one training step needs against the memory
//! there is. Both fail in `bench validate` and before `bench run` trains anything, naming the run
//! and the protocol keys to change, instead of every run failing (or the kernel killing the
//! process) later.
use crate::plan::Run;

/// Parameter-sized buffers a step holds at least: the weights, their gradients and Adam's two
/// moments (SGD with momentum holds one fewer; taking four keeps the estimate a usable bound for
/// the common case, and the activations dominate for every shipped backbone anyway).
const PARAM_COPIES: u64 = 4;

/// Activation bytes kept for the backward pass per input byte (f32 image `3 x S x S`), at least,
/// by backbone family. Lower bounds counted from each architecture's stored outputs at full and
/// reduced resolution (conv, BatchNorm and activation outputs of the first stages, which hold most
/// of the memory): Meso4's first 8-channel stage alone stores 3 x 8/3 = 8 input sizes; ResNet's
/// 64-channel stem at 1/2 and first stage at 1/4 resolution over 30; EfficientNet's expanded
/// depthwise stages over 60; Xception's 32/64-channel stem and 128/256-channel entry flow over
/// 40; ViT-B's 12 blocks of 197 x 768 tokens (about 20 stored tensors a block) over 100. Being
/// lower bounds, they can only reject runs that surely do not fit, never one that would.
fn activation_factor(backbone: &str) -> u64 {
    match backbone {
        b if b.starts_with("meso4") => 8,
        b if b.starts_with("resnet") => 30,
        b if b.contains("efficientnet") => 60,
        "xception" => 40,
        b if b.starts_with("vit") => 100,
        _ => 8,
    }
}

/// A lower bound on the bytes one training step of `run` needs: parameter state plus the
/// activations of one batch of one stream.
pub fn step_bytes_lower_bound(run: &Run) -> Option<u64> {
    let c = &run.config;
    let size = c.data.resolution as usize;
    let backbone = c.model.backbone.as_str();
    let d = detectors::backbones::feature_dim(backbone, size)? as u64;
    let head = c.model.head.layers as u64 * (d * d + d);
    let params = detectors::backbones::num_params(backbone, size)? as u64 + head + d + 1;
    let image_bytes = 3 * (size as u64).pow(2) * 4;
    let batch = c.training.batch_size as u64;
    let activations = batch.saturating_mul(image_bytes).saturating_mul(1 + activation_factor(backbone));
    Some(params.saturating_mul(4 * PARAM_COPIES).saturating_add(activations))
}

/// Memory this machine can give a new process now (`MemAvailable` of /proc/meminfo), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses `--max-memory`: bytes, or a number with K, M, G or T (powers of 1024), e.g. `16G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("`{s}`: expected a size such as 16G, 512M or a number of bytes")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}`: expected a size such as 16G, 512M or a number of bytes"))?;
    if !(v > 0.0) || !v.is_finite() || v * mult as f64 > u64::MAX as f64 {
        return Err(format!("`{s}`: expected a positive size"));
    }
    Ok((v * mult as f64) as u64)
}

pub fn human(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1.0 { format!("{g:.1} GiB") } else { format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64) }
}

/// What stops the plan's runs before training: one line per problem, naming the run and the
/// protocol keys. `limit`: the memory to check against (`--max-memory`, else this machine's
/// available memory on the CPU; on CUDA only an explicit limit is checked, since the GPU's memory
/// is not known before the device opens).
pub fn check(runs: &[Run], limit: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in runs {
        let c = &r.config;
        let (backbone, size) = (c.model.backbone.as_str(), c.data.resolution as usize);
        if let Some(min) = detectors::backbones::min_image_size(backbone)
            && size < min
        {
            if seen.insert(format!("size {backbone} {size}")) {
                problems.push(format!(
                    "run {}: data.resolution = {size} is below the {min} px that backbone `{backbone}` accepts",
                    r.id
                ));
            }
            continue;
        }
        let on_cpu = c.device == "cpu";
        let Some(limit) = limit.or_else(|| if on_cpu { available_memory() } else { None }) else { continue };
        if let Some(need) = step_bytes_lower_bound(r)
            && need > limit
            && seen.insert(format!("mem {backbone} {size} {} {}", c.training.batch_size, c.model.head.layers))
        {
            problems.push(format!(
                "run {}: one training step needs at least {} ({backbone} at {size} px, batch {}, {} head layer(s) \
                 of width {}) but {} is available; lower training.batch_size or data.resolution, or give \
                 --max-memory for the machine that will run it",
                r.id,
                human(need),
                c.training.batch_size,
                c.model.head.layers,
                detectors::backbones::feature_dim(backbone, size).unwrap_or(0),
                human(limit),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "G", "-1G", "0", "12Q", "nan", "1e30T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
