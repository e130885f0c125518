//! Training-step throughput of one detector on one device: the dfbench side of
//! `benches/reference/gpu_side_by_side.sh` (PyTorch side: `benches/reference/gpu_torch_step.py`).
//! Random inputs, Adam, `--warmup` untimed then `--steps` timed steps; prints one line
//! `dfbench model=.. px=.. batch=.. method=.. precision=.. img_s=.. step_ms=.. params=.. device=..`.
//!
//! `--method erm-o+s`: ERM on the original and online streams (loss L1 + L2, two batches of
//! `--batch` per step); `cs-dfd`: CS-DFD with its defaults (two backward passes, UVS and CGR).
//! Images per second count both streams. Kept in `detectors` (not `harness`) so that the CUDA
//! binary carried to a GPU machine stays small.
//!
//! Build: `cargo build --release --features cuda -p detectors --example gpu_train_step`
//! (scripts/build_cuda_bundle.sh). Also runs on the CPU (`--device cpu`).
use std::time::Instant;

use candle_core::{Device, Tensor};
use detectors::config::OptimizerConfig;
use detectors::methods::{MethodParams, ParamValue, build_method};
use detectors::model::Detector;
use detectors::{Batch, ParamStore, StepInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    model: String,
    px: usize,
    batch: usize,
    method: String,
    steps: usize,
    warmup: usize,
    device: String,
    head_layers: usize,
    tf32: bool,
    /// Print the device memory in use (driver's free memory, pool reservations count as used)
    /// after the warm-up and every 10 timed steps.
    mem: bool,
    /// After the timed steps, run `--steps` more with the custom CUDA ops timed one by one.
    profile: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "meso4".into(),
        px: 256,
        batch: 16,
        method: "erm-o+s".into(),
        steps: 10,
        warmup: 3,
        device: "cuda".into(),
        head_layers: 2,
        tf32: true,
        mem: false,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |f: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{f} needs a value"))?;
        v.parse().map_err(|_| format!("{f}: expected a non-negative integer, got `{v}`"))
    };
    while let Some(f) = it.next() {
        match f.as_str() {
            "--model" => a.model = it.next().ok_or("--model needs a backbone name")?,
            "--px" => a.px = num("--px", it.next())?,
            "--batch" => a.batch = num("--batch", it.next())?,
            "--method" => a.method = it.next().ok_or("--method needs erm-o+s or cs-dfd")?,
            "--steps" => a.steps = num("--steps", it.next())?,
            "--warmup" => a.warmup = num("--warmup", it.next())?,
            "--device" => a.device = it.next().ok_or("--device needs cpu, cuda or cuda:N")?,
            "--head-layers" => a.head_layers = num("--head-layers", it.next())?,
            "--no-tf32" => a.tf32 = false,
            "--mem" => a.mem = true,
            "--profile" => a.profile = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; expected --model, --px, --batch, --method, --steps, --warmup, \
                     --device, --head-layers, --no-tf32, --mem, --profile"
                ));
            }
        }
    }
    if !["erm-o+s", "cs-dfd"].contains(&a.method.as_str()) {
        return Err(format!("--method: expected erm-o+s or cs-dfd, got `{}`", a.method));
    }
    if a.batch < 2 || a.steps == 0 || a.px == 0 {
        return Err("--batch must be at least 2 (BatchNorm), --steps and --px at least 1".into());
    }
    Ok(a)
}

fn random_batch(rng: &mut ChaCha8Rng, n: usize, px: usize, dev: &Device) -> anyhow::Result<Batch> {
    let x: Vec<f32> = (0..n * 3 * px * px).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
    Ok(Batch { images: Tensor::from_vec(x, (n, 3, px, px), dev)?, labels: Tensor::from_vec(y, n, dev)? })
}

fn run(a: &Args) -> anyhow::Result<()> {
    detectors::device::set_tf32(a.tf32);
    let dev = detectors::device::open(&a.device)?;
    let pb = ParamStore::new(&dev).builder(0);
    let det = Detector::new(&pb, a.head_layers, |pb| detectors::backbones::build(&a.model, pb, a.px))?;
    let adam = OptimizerConfig::Adam { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut params = MethodParams::new();
    let kind = if a.method == "cs-dfd" {
        "cs-dfd"
    } else {
        params.set("streams", ParamValue::Str("both".into()));
        "erm"
    };
    let mut method = build_method(kind, &params, &adam, &det, 0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let input = StepInput {
        original: Some(random_batch(&mut rng, a.batch, a.px, &dev)?),
        online: Some(random_batch(&mut rng, a.batch, a.px, &dev)?),
        ..Default::default()
    };
    for s in 0..a.warmup {
        method.step(&det, &input, s, 2e-4)?;
    }
    dev.synchronize()?;
    let base = used_mib(&dev)?;
    let mut curve = Vec::new();
    let start = Instant::now();
    let mut paused = 0.0;
    for s in 0..a.steps {
        method.step(&det, &input, a.warmup + s, 2e-4)?;
        if a.mem && (s + 1) % 10 == 0 {
            let t = Instant::now();
            curve.push(used_mib(&dev)? - base);
            paused += t.elapsed().as_secs_f64();
        }
    }
    dev.synchronize()?;
    let el = start.elapsed().as_secs_f64() - paused;
    if a.mem {
        eprintln!(
            "memory: {base} MiB in use after the warm-up; change after every 10 timed steps (MiB): {curve:?}"
        );
    }
    let precision = if dev.is_cuda() && a.tf32 { "fp32+tf32" } else { "fp32" };
    println!(
        "dfbench model={} px={} batch={} method={} precision={precision} img_s={:.2} step_ms={:.2} params={} device=\"{}\"",
        a.model,
        a.px,
        a.batch,
        a.method,
        (2 * a.batch * a.steps) as f64 / el,
        1e3 * el / a.steps as f64,
        det.params().total(),
        detectors::device::describe(&dev)
    );
    if a.profile {
        profile(a, &det, &mut *method, &input, &dev)?;
    }
    Ok(())
}

/// Runs `--steps` steps with every custom CUDA op synchronised and timed
/// (`ops::cuda::profile`), and prints ms per step per op and what the rest of the step took.
#[cfg(feature = "cuda")]
fn profile(
    a: &Args,
    det: &Detector,
    method: &mut dyn detectors::methods::TrainingMethod,
    input: &StepInput,
    dev: &Device,
) -> anyhow::Result<()> {
    use detectors::ops::cuda::profile;
    profile::set_enabled(true);
    let _ = profile::take();
    dev.synchronize()?;
    let start = Instant::now();
    for s in 0..a.steps {
        method.step(det, input, a.warmup + a.steps + s, 2e-4)?;
    }
    dev.synchronize()?;
    let total = start.elapsed().as_secs_f64() / a.steps as f64;
    profile::set_enabled(false);
    let ops = profile::take();
    let timed: f64 = ops.iter().map(|o| o.2).sum::<f64>() / a.steps as f64;
    eprintln!("profile {} {} ({} steps, every custom op synchronised): {:.2} ms per step", a.model, a.method, a.steps, 1e3 * total);
    for (name, calls, secs) in ops {
        let per = secs / a.steps as f64;
        eprintln!("  {:48} {:7.1} calls {:9.2} ms {:5.1}%", name, calls as f64 / a.steps as f64, 1e3 * per, 100.0 * per / total);
    }
    eprintln!("  {:48} {:7} {:9.2} ms {:5.1}%", "rest (candle ops, optimizer, host)", "", 1e3 * (total - timed), 100.0 * (total - timed) / total);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn profile(
    _: &Args,
    _: &Detector,
    _: &mut dyn detectors::methods::TrainingMethod,
    _: &StepInput,
    _: &Device,
) -> anyhow::Result<()> {
    anyhow::bail!("--profile times the custom CUDA ops: build with --features cuda")
}

/// Device memory in use, MiB (0 on the CPU).
fn used_mib(dev: &Device) -> anyhow::Result<i64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        dev.synchronize()?;
        let (free, total) = d.cuda_stream().context().mem_get_info().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        return Ok(((total - free) >> 20) as i64);
    }
    let _ = dev;
    Ok(0)
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_train_step: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("gpu_train_step: {e:#}");
        std::process::exit(1);
    }
}
