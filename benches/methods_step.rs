//! One full training step of each method on Meso4 at 128 px (batch 32 per stream, projection head
//! of 2 layers, Adam), side by side in one run: the cost of each method relative to ERM on the
//! same O+S data. See BENCHMARKS.md for the recorded ratios.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench -p harness --bench methods_step -- --warm-up-time 1 --measurement-time 3`
//! With `DFBENCH_STEP_RESNET18=1` it also times ERM O+S and CS-DFD on ResNet-18 (seconds per step).
//!
//! Lives in the harness crate so that it allocates as the `bench` binary does (the harness sets
//! mimalloc as the global allocator): the step times here should be the ones `bench run` sees.
//!
//! **Device timing mode** (issue #18's GPU check): any of the flags below switches criterion off
//! and times `--warmup` untimed then `--steps` timed steps per method, each ended by a device
//! synchronisation, on any device, backbone, size, batch and precision, printing one CSV row per
//! case (and appending them to `--csv FILE`) with each method's median step time over ERM O+S's
//! of the same precision, and f32 over bf16 for every method run in both:
//!
//!     cargo bench -p harness --features cuda --bench methods_step -- --device cuda:0 \
//!       --backbone efficientnet-pytorch-b4 --size 256 --batch 16 --precision f32,bf16 \
//!       --methods erm_os,cs_dfd,roga_4dom --warmup 3 --steps 10 --csv gpu_steps.csv
//!
//! Flags: `--device` (cpu, cuda, cuda:N), `--precision` (f32 and/or bf16, comma-separated),
//! `--tf32 on|off`, `--backbone`, `--size`, `--batch` (per stream and per domain batch),
//! `--methods` (labels from the table in `cases`), `--grad-path auto|host|tensor` (where the
//! multi-stream methods combine gradients: `auto` = the host on the CPU, device tensors elsewhere;
//! `host` on a GPU is the pre-#18 path of copies, for a before/after in one call), `--warmup`,
//! `--steps`, `--csv`.
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use candle_core::{Device, Tensor};
use criterion::Criterion;
use detectors::config::OptimizerConfig;
use detectors::methods::{MethodParams, ParamValue, build_method};
use detectors::model::Detector;
use detectors::{Batch, ParamStore, StepInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 128;
const BATCH: usize = 32;
const HEAD_LAYERS: usize = 2;

fn batch(rng: &mut ChaCha8Rng) -> Batch {
    let n = BATCH * 3 * SIZE * SIZE;
    let images: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // Half real, half fake, so that both classes contribute to every loss.
    let labels: Vec<f32> = (0..BATCH).map(|i| (i % 2) as f32).collect();
    Batch {
        images: Tensor::from_vec(images, (BATCH, 3, SIZE, SIZE), &Device::Cpu).unwrap(),
        labels: Tensor::from_vec(labels, BATCH, &Device::Cpu).unwrap(),
    }
}

fn detector(backbone: &str, seed: u64) -> Detector {
    let pb = ParamStore::new(&Device::Cpu).builder(seed);
    Detector::new(&pb, HEAD_LAYERS, |pb| detectors::backbones::build(backbone, pb, SIZE)).unwrap()
}

fn bench(c: &mut Criterion) {
    harness::configure_process();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let input = StepInput {
        original: Some(batch(&mut rng)),
        online: Some(batch(&mut rng)),
        domains: ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
            .iter()
            .map(|d| (d.to_string(), batch(&mut rng)))
            .collect(),
    };
    let adam = OptimizerConfig::Adam { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    // Every method of the timing mode but CAGrad (timed there, with `--methods cagrad`): SAM and
    // SAGM run on O+S as well, so that every ratio compares the same images; RoGA takes its four
    // domain batches (4 x 32 images).
    let methods: Vec<_> = cases().into_iter().filter(|(label, ..)| *label != "cagrad").collect();
    let mut group = c.benchmark_group("meso4_128px_step");
    group.sample_size(10);
    for (label, kind, params) in methods {
        // A fresh detector per method: every method starts from the same seeded weights.
        let det = detector("meso4", 5);
        let mut method = build_method(kind, &params, &adam, &det, 3).unwrap();
        let mut step = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                step += 1;
                black_box(method.step(&det, &input, step, 2e-4).unwrap())
            })
        });
    }
    group.finish();

    // The denominator of "UVS + CGR as a share of a CS-DFD step" for an 11.7M-parameter model:
    // seconds per step, so opt-in (DFBENCH_STEP_RESNET18=1) and only ERM O+S and CS-DFD.
    if std::env::var_os("DFBENCH_STEP_RESNET18").is_none() {
        return;
    }
    let mut group = c.benchmark_group("resnet18_128px_step");
    group.sample_size(10);
    for (label, kind, params) in cases().into_iter().filter(|(label, ..)| matches!(*label, "erm_os" | "cs_dfd")) {
        let det = detector("resnet18", 5);
        let mut method = build_method(kind, &params, &adam, &det, 3).unwrap();
        let mut step = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                step += 1;
                black_box(method.step(&det, &input, step, 2e-4).unwrap())
            })
        });
    }
    group.finish();
}

/// Every method the timing mode knows, by label: (label, registry kind, parameters).
fn cases() -> Vec<(&'static str, &'static str, MethodParams)> {
    let both = || ParamValue::Str("both".into());
    vec![
        ("erm_os", "erm", MethodParams::new().with("streams", both())),
        ("erm_o", "erm", MethodParams::new().with("streams", ParamValue::Str("original".into()))),
        ("cs_dfd", "cs-dfd", MethodParams::new()),
        ("uvs_only", "cs-dfd", MethodParams::new().with("cgr", ParamValue::Bool(false))),
        ("cgr_only", "cs-dfd", MethodParams::new().with("uvs", ParamValue::Bool(false))),
        ("roga_4dom", "roga", MethodParams::new()),
        ("sam_os", "sam", MethodParams::new().with("streams", both())),
        ("sagm_os", "sagm", MethodParams::new().with("streams", both())),
        ("pcgrad", "pcgrad", MethodParams::new()),
        ("cagrad", "cagrad", MethodParams::new()),
    ]
}

struct TimingArgs {
    device: String,
    precisions: Vec<String>,
    tf32: bool,
    backbone: String,
    size: usize,
    batch: usize,
    methods: Vec<String>,
    warmup: usize,
    steps: usize,
    csv: Option<String>,
    grad_path: Option<detectors::gradvec::device::GradPath>,
}

/// Our flags, or `None` when there are none (criterion's run). Unknown flags are an error.
fn timing_args() -> Result<Option<TimingArgs>, String> {
    let raw: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let ours = [
        "--device", "--precision", "--tf32", "--backbone", "--size", "--batch", "--methods", "--warmup", "--steps", "--csv",
        "--grad-path",
    ];
    if !raw.iter().any(|a| ours.contains(&a.as_str())) {
        return Ok(None);
    }
    let mut t = TimingArgs {
        device: "cpu".into(),
        precisions: vec!["f32".into()],
        tf32: true,
        backbone: "meso4".into(),
        size: SIZE,
        batch: BATCH,
        methods: vec!["erm_os".into(), "cs_dfd".into(), "roga_4dom".into()],
        warmup: 3,
        steps: 10,
        csv: None,
        grad_path: None,
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag} {v}: expected a positive integer"));
        let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
        match flag.as_str() {
            "--device" => t.device = v,
            "--precision" => t.precisions = list(&v),
            "--tf32" => t.tf32 = matches!(v.as_str(), "on" | "true" | "1"),
            "--backbone" => t.backbone = v,
            "--size" => t.size = num(&v)?,
            "--batch" => t.batch = num(&v)?,
            "--methods" => t.methods = list(&v),
            "--warmup" => t.warmup = num(&v)?,
            "--steps" => t.steps = num(&v)?.max(1),
            "--csv" => t.csv = Some(v),
            "--grad-path" => {
                use detectors::gradvec::device::GradPath;
                t.grad_path = match v.as_str() {
                    "auto" => None,
                    "host" => Some(GradPath::Host),
                    "tensor" => Some(GradPath::Tensor),
                    _ => return Err(format!("--grad-path {v}: expected auto, host or tensor")),
                }
            }
            other => return Err(format!("unknown flag {other}; expected one of {}", ours.join(", "))),
        }
    }
    for p in &t.precisions {
        if p != "f32" && p != "bf16" {
            return Err(format!("--precision {p}: expected f32 or bf16"));
        }
    }
    let known: Vec<&str> = cases().iter().map(|c| c.0).collect();
    for m in &t.methods {
        if !known.contains(&m.as_str()) {
            return Err(format!("--methods {m}: expected some of {}", known.join(", ")));
        }
    }
    Ok(Some(t))
}

fn sized_batch(rng: &mut ChaCha8Rng, n: usize, size: usize, device: &Device) -> Batch {
    let images: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
    Batch {
        images: Tensor::from_vec(images, (n, 3, size, size), device).unwrap(),
        labels: Tensor::from_vec(labels, n, device).unwrap(),
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

/// The timing mode: every (precision, method) case, medians and ratios as CSV.
fn time_steps(t: &TimingArgs) -> Result<(), String> {
    detectors::device::set_tf32(t.tf32);
    let device = detectors::device::open(&t.device).map_err(|e| e.to_string())?;
    let described = detectors::device::describe(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let input = StepInput {
        original: Some(sized_batch(&mut rng, t.batch, t.size, &device)),
        online: Some(sized_batch(&mut rng, t.batch, t.size, &device)),
        domains: ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
            .iter()
            .map(|d| (d.to_string(), sized_batch(&mut rng, t.batch, t.size, &device)))
            .collect(),
    };
    let adam = OptimizerConfig::Adam { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let header = "device,backbone,size,batch,precision,tf32,grad_path,method,warmup,steps,median_s,mean_s,min_s,ratio_to_erm_os,f32_over_bf16";
    let path = match t.grad_path {
        None => "auto",
        Some(detectors::gradvec::device::GradPath::Host) => "host",
        Some(detectors::gradvec::device::GradPath::Tensor) => "tensor",
    };
    let mut rows: Vec<(String, String, f64, f64, f64)> = Vec::new();
    for precision in &t.precisions {
        let dtype = if precision == "bf16" { candle_core::DType::BF16 } else { candle_core::DType::F32 };
        for (label, kind, params) in cases().into_iter().filter(|c| t.methods.iter().any(|m| m == c.0)) {
            let pb = ParamStore::new(&device).with_compute_dtype(dtype).map_err(|e| e.to_string())?.builder(5);
            let det = Detector::new(&pb, HEAD_LAYERS, |pb| detectors::backbones::build(&t.backbone, pb, t.size))
                .map_err(|e| format!("{}: {e}", t.backbone))?;
            let mut method = build_method(kind, &params, &adam, &det, 3).map_err(|e| e.to_string())?;
            if let Some(p) = t.grad_path {
                method.set_grad_path(p);
            }
            let mut times = Vec::with_capacity(t.steps);
            for step in 0..t.warmup + t.steps {
                let t0 = Instant::now();
                black_box(method.step(&det, &input, step, 2e-4).map_err(|e| format!("{label}: {e}"))?);
                device.synchronize().map_err(|e| e.to_string())?;
                if step >= t.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(&mut times);
            eprintln!("{described} {} {}px b{} {precision}: {label} median {med:.4} s/step", t.backbone, t.size, t.batch);
            rows.push((precision.clone(), label.to_string(), med, mean, min));
        }
    }
    let find = |p: &str, m: &str| rows.iter().find(|r| r.0 == p && r.1 == m).map(|r| r.2);
    let mut out = vec![header.to_string()];
    for (p, m, med, mean, min) in &rows {
        let ratio = find(p, "erm_os").map_or(String::new(), |e| format!("{:.3}", med / e));
        let speedup = match (find("f32", m), find("bf16", m)) {
            (Some(a), Some(b)) if p == "bf16" => format!("{:.3}", a / b),
            _ => String::new(),
        };
        out.push(format!(
            "\"{described}\",{},{},{},{p},{},{path},{m},{},{},{med:.6},{mean:.6},{min:.6},{ratio},{speedup}",
            t.backbone,
            t.size,
            t.batch,
            if t.tf32 { "on" } else { "off" },
            t.warmup,
            t.steps
        ));
    }
    for l in &out {
        println!("{l}");
    }
    if let Some(path) = &t.csv {
        let new = !std::path::Path::new(path).exists();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{path}: {e}"))?;
        for l in out.iter().skip(if new { 0 } else { 1 }) {
            writeln!(f, "{l}").map_err(|e| format!("{path}: {e}"))?;
        }
    }
    Ok(())
}

fn main() {
    match timing_args() {
        Ok(Some(t)) => {
            harness::configure_process();
            if let Err(e) = time_steps(&t) {
                eprintln!("methods_step: {e}");
                std::process::exit(2);
            }
        }
        Ok(None) => {
            let mut c = Criterion::default().without_plots().configure_from_args();
            bench(&mut c);
            c.final_summary();
        }
        Err(e) => {
            eprintln!("methods_step: {e}");
            std::process::exit(2);
        }
    }
}
