//! Meso4 training throughput (images per second): ERM with Adam on random inputs, the same
//! shapes, steps and threads as `benches/reference/meso4_torch.py`, and the same output format,
//! so that `benches/reference/side_by_side.sh` can run both back to back. Not a criterion bench:
//! the PyTorch figure it is compared with is a plain timed loop, and so is this.
//!
//! Run: `cargo bench -p harness --bench meso4_train -- [--sizes 128 256] [--steps 10] [--threads 2]`
//!
//! The detector is Meso4 (bias-free convolutions, one BatchNorm per convolution as in
//! `detectors/src/backbones/meso.rs`) plus a one-logit classifier and no projection head
//! (`--head-layers 0`), which the reference script builds too; both print their parameter count.
//!
//! `--backbone NAME`, `--head-layers N` and `--method erm|erm-os|cs-dfd|sam-os|sagm-os` (O+S: two batches of
//! `--batch` per step) time other configurations for BENCHMARKS.md's step-share figures. ERM on O
//! with no head has a PyTorch counterpart for meso4 (`reference/meso4_torch.py`) and for
//! resnet34, efficientnet-b4 and xception (`reference/cpu_backbones_torch.py`).
//!
//! `--profile` switches on `detectors::ops::profile` for the timed steps and prints, after each
//! size's throughput line, where a step's wall time goes per op kind (the same groups as
//! `cpu_backbones_torch.py --profile` prints for PyTorch). The timers only observe: the step's
//! results are the same bits with or without them.
use std::time::Instant;

use candle_core::{Device, Tensor};
use detectors::config::OptimizerConfig;
use detectors::methods::{MethodParams, ParamValue, build_method};
use detectors::model::Detector;
use detectors::ops::profile;
use detectors::{Batch, ParamStore, StepInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    sizes: Vec<usize>,
    batch: usize,
    steps: usize,
    warmup: usize,
    threads: usize,
    head_layers: usize,
    backbone: String,
    method: String,
    profile: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![128, 256],
        batch: 32,
        steps: 10,
        warmup: 3,
        threads: 2,
        head_layers: 0,
        backbone: "meso4".into(),
        method: "erm".into(),
        profile: false,
    };
    let mut it = std::env::args().skip(1).peekable();
    let num = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: expected a non-negative integer, got `{v}`"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--sizes" => {
                a.sizes.clear();
                while let Some(v) = it.peek().filter(|v| !v.starts_with("--")).cloned() {
                    it.next();
                    a.sizes.push(num("--sizes", Some(v))?);
                }
                if a.sizes.is_empty() {
                    return Err("--sizes needs at least one image size".into());
                }
            }
            "--batch" => a.batch = num("--batch", it.next())?,
            "--steps" => a.steps = num("--steps", it.next())?,
            "--warmup" => a.warmup = num("--warmup", it.next())?,
            "--threads" => a.threads = num("--threads", it.next())?,
            "--head-layers" => a.head_layers = num("--head-layers", it.next())?,
            // Other backbones only for rough step-time estimates (BENCHMARKS.md); no reference.
            "--backbone" => a.backbone = it.next().ok_or("--backbone needs a name")?,
            "--method" => {
                a.method = it.next().ok_or("--method needs a name")?;
                if !["erm", "erm-os", "cs-dfd", "sam-os", "sagm-os"].contains(&a.method.as_str()) {
                    return Err(format!(
                        "--method: expected erm, erm-os, cs-dfd, sam-os or sagm-os, got `{}`",
                        a.method
                    ));
                }
            }
            "--profile" => a.profile = true,
            // cargo bench hands `--bench` to every bench binary.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument `{other}`; expected --sizes N.., --batch, --steps, --warmup, --threads, \
                     --head-layers, --backbone, --method, --profile"
                ));
            }
        }
    }
    if a.batch == 0 || a.steps == 0 || a.threads == 0 {
        return Err("--batch, --steps and --threads must be at least 1".into());
    }
    Ok(a)
}

fn random_batch(rng: &mut ChaCha8Rng, batch: usize, size: usize) -> anyhow::Result<Batch> {
    let x: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y: Vec<f32> = (0..batch).map(|_| if rng.random_bool(0.5) { 1.0 } else { 0.0 }).collect();
    Ok(Batch {
        images: Tensor::from_vec(x, (batch, 3, size, size), &Device::Cpu)?,
        labels: Tensor::from_vec(y, batch, &Device::Cpu)?,
    })
}

/// Images per second, seconds per step, the number of trainable parameters and, with
/// `--profile`, the op-kind totals of the timed steps.
fn images_per_second(a: &Args, size: usize) -> anyhow::Result<(f64, f64, usize, Vec<profile::Totals>)> {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let det = Detector::new(&pb, a.head_layers, |pb| detectors::backbones::build(&a.backbone, pb, size))?;
    let adam = OptimizerConfig::Adam { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    // `erm` (stream O only) is what the PyTorch reference does; the others (O and S batches of
    // `--batch` each) give step times for BENCHMARKS.md's share estimates.
    let (kind, streams) = match a.method.as_str() {
        "erm" => ("erm", Some("original")),
        "erm-os" => ("erm", Some("both")),
        "sam-os" => ("sam", Some("both")),
        "sagm-os" => ("sagm", Some("both")),
        _ => ("cs-dfd", None),
    };
    let mut params = MethodParams::new();
    if let Some(st) = streams {
        params.set("streams", ParamValue::Str(st.into()));
    }
    let mut method = build_method(kind, &params, &adam, &det, 0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let original = Some(random_batch(&mut rng, a.batch, size)?);
    let two = streams != Some("original");
    let online = if two { Some(random_batch(&mut rng, a.batch, size)?) } else { None };
    let input = StepInput { original, online, ..Default::default() };
    let images = if two { 2 * a.batch } else { a.batch };
    for s in 0..a.warmup {
        method.step(&det, &input, s, 2e-4)?;
    }
    profile::reset();
    profile::set_enabled(a.profile);
    let start = Instant::now();
    for s in 0..a.steps {
        method.step(&det, &input, a.warmup + s, 2e-4)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    profile::set_enabled(false);
    let totals = if a.profile { profile::snapshot() } else { Vec::new() };
    Ok(((images * a.steps) as f64 / elapsed, elapsed / a.steps as f64, det.params().total(), totals))
}

/// The per-op-kind table of one profiled size: milliseconds per step, share of the step and calls
/// per step, in the groups `cpu_backbones_torch.py --profile` uses, with our finer kinds indented
/// under their group. The untimed rest (candle's element-wise ops and activations outside the
/// fused BatchNorm, the classifier's matmul, the loss, autograd bookkeeping) is the step time
/// minus the timed kinds.
fn print_profile(label: &str, step_secs: f64, steps: usize, totals: &[profile::Totals]) {
    use profile::Kind as K;
    let step_ms = step_secs * 1000.0;
    let per_step = |kinds: &[K]| -> (f64, f64) {
        let t: Vec<&profile::Totals> = totals.iter().filter(|t| kinds.contains(&t.kind)).collect();
        let ms = t.iter().map(|t| t.nanos as f64).sum::<f64>() / 1e6 / steps as f64;
        let calls = t.iter().map(|t| t.calls as f64).sum::<f64>() / steps as f64;
        (ms, calls)
    };
    let row = |name: &str, (ms, calls): (f64, f64)| {
        println!("  {name:<44} {ms:>9.2} {:>6.1}% {calls:>7.0}", 100.0 * ms / step_ms);
    };
    println!("profile {label}: per step, mean of {steps} timed steps");
    println!("  {:<44} {:>9} {:>7} {:>7}", "op kind", "ms", "share", "calls");
    let groups: [(&str, &[K]); 8] = [
        ("dense conv forward", &[K::ConvFwd]),
        ("dense conv backward-data", &[K::ConvBwdData]),
        ("dense conv backward-filter", &[K::ConvBwdFilter]),
        ("depthwise conv (fwd+bwd)", &[K::DepthwiseFwd, K::DepthwiseBwd]),
        ("1x1 conv (fwd+bwd)", &[K::PointwiseFwd, K::PointwiseBwdData, K::PointwiseBwdFilter]),
        ("BatchNorm (fwd+bwd)", &[K::BatchNormFwd, K::BatchNormBwd]),
        ("pooling (fwd+bwd)", &[K::PoolFwd, K::PoolBwd]),
        ("optimizer", &[K::Optimizer]),
    ];
    let mut timed = 0.0;
    for (name, kinds) in groups {
        let v = per_step(kinds);
        timed += v.0;
        row(name, v);
        if kinds.len() > 1 && v.1 > 0.0 {
            for &k in kinds {
                row(&format!("  {}", k.label()), per_step(&[k]));
            }
        }
    }
    println!(
        "  {:<44} {:>9.2} {:>6.1}%",
        "element-wise, linear/loss, other (rest)",
        step_ms - timed,
        100.0 * (step_ms - timed) / step_ms
    );
    println!("  {:<44} {:>9.2} {:>6.1}%", "step", step_ms, 100.0);
}

fn main() {
    harness::configure_process();
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meso4_train: {e}");
            std::process::exit(2);
        }
    };
    // candle's matmuls read RAYON_NUM_THREADS; set it before any thread pool exists.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string()) };
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global().expect("first pool");
    println!(
        "dfbench (candle, ops::conv + ops::batchnorm), {} threads, batch {}, {} timed steps after {} warm-up",
        a.threads, a.batch, a.steps, a.warmup
    );
    for &size in &a.sizes {
        match images_per_second(&a, size) {
            Ok((ips, secs, n, totals)) => {
                let label = format!(
                    "{}{} train {size}px",
                    a.backbone,
                    if a.method == "erm" { String::new() } else { format!(" {}", a.method) }
                );
                println!("{label}: {ips:.1} img/s ({:.1} ms/step), {n} parameters", secs * 1000.0);
                if a.profile {
                    print_profile(&label, secs, a.steps, &totals);
                }
            }
            Err(e) => {
                eprintln!("meso4_train: {size} px: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
