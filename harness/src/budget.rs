//! Checks of a plan against what a run can physically do, before any training: the input size a
//! backbone accepts, and a lower bound on the memory one training step needs against the memory
//! there is. Both fail in `bench validate` and before `bench run` trains anything, naming the run
//! and the protocol keys to change, instead of every run failing (or the kernel killing the
//! process) later.
use crate::plan::Run;

/// Parameter-sized buffers a step holds at least: the weights, their gradients, Adam's two moments
/// and the transposed copy a linear layer's backward makes of its weight (SGD with momentum
/// holds one fewer). Two-stream methods hold each stream's gradient: one more.
const PARAM_COPIES: u64 = 5;

/// Batches of `training.batch_size` images one step runs through the network: two for methods
/// that train on both streams (O+S, CS-DFD, PCGrad, CAGrad, the SAM family on both), one
/// otherwise (RoGA's per-domain batches are counted as one, which keeps this a lower bound).
fn streams_per_step(run: &Run) -> u64 {
    let m = &run.config.method;
    let both = m.params.get("streams").and_then(|v| v.as_str()) == Some("both");
    if both || matches!(m.kind.as_str(), "cs-dfd" | "pcgrad" | "cagrad") { 2 } else { 1 }
}

/// Bytes a step holds per byte of its input images (f32 `3 x S x S` each), at least, by backbone
/// family: stored activations, their gradients and the convolutions' unfolded (im2col) inputs.
/// Calibrated on this harness's CPU path (peak RSS of 2-step O+S runs, 2026-12-06, minus
/// parameter state): Meso4 at 512 and 768 px about 40, ResNet-18 at 128 px about 60,
/// EfficientNet-B0 about 200 and Xception about 280 at 128 px. The factors sit well below those
/// measurements (ViT-B's is reasoned, not measured: 12 blocks of tokens of width 768), so the check
/// rejects only runs that surely do not fit, never one that would.
fn activation_factor(backbone: &str) -> u64 {
    match backbone {
        b if b.starts_with("meso4") => 24,
        b if b.starts_with("resnet") => 40,
        b if b.contains("efficientnet") => 120,
        "xception" => 150,
        b if b.starts_with("vit") => 100,
        _ => 24,
    }
}

/// A lower bound on the bytes one training step of `run` needs: parameter state plus the
/// activations of the step's batches.
pub fn step_bytes_lower_bound(run: &Run) -> Option<u64> {
    let c = &run.config;
    let size = c.data.resolution as usize;
    let backbone = c.model.backbone.as_str();
    let d = detectors::backbones::feature_dim(backbone, size)? as u64;
    let head = c.model.head.layers as u64 * (d * d + d);
    let params = detectors::backbones::num_params(backbone, size)? as u64 + head + d + 1;
    let image_bytes = 3 * (size as u64).pow(2) * 4;
    let streams = streams_per_step(run);
    let images = (c.training.batch_size as u64).saturating_mul(streams);
    let activations = images.saturating_mul(image_bytes).saturating_mul(1 + activation_factor(backbone));
    let copies = PARAM_COPIES + (streams - 1);
    Some(params.saturating_mul(4 * copies).saturating_add(activations))
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
/// protocol keys (bf16 on the CPU; a resolution below the backbone's minimum; a step's memory). `limit`: the memory to check against (`--max-memory`, else this machine's
/// available memory on the CPU; on CUDA only an explicit limit is checked, since the GPU's memory
/// is not known before the device opens).
pub fn check(runs: &[Run], limit: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in runs {
        let c = &r.config;
        let (backbone, size) = (c.model.backbone.as_str(), c.data.resolution as usize);
        // candle's CPU backend has no bf16 matmul (nor, through im2col, conv2d): bf16 is a GPU
        // setting. Checked after `--device` has replaced the protocol's device.
        if c.training.precision == crate::protocol::Precision::Bf16
            && c.device == "cpu"
            && seen.insert(format!("bf16 {}", c.method.name))
        {
            problems.push(format!(
                "run {}: training.precision = \"bf16\" needs a CUDA device (candle's CPU backend has no bf16 \
                 matmul or convolution) but the run's device is `cpu`; use precision = \"f32\" on the CPU, or \
                 --device cuda",
                r.id
            ));
            continue;
        }
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
                "run {}: one training step needs at least {} ({backbone} at {size} px, batch {}{}, {} head layer(s) \
                 of width {}) but {} is available; lower training.batch_size or data.resolution, or give \
                 --max-memory for the machine that will run it",
                r.id,
                human(need),
                c.training.batch_size,
                if streams_per_step(r) > 1 { " on each of 2 streams" } else { "" },
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
