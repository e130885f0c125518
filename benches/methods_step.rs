//! One full training step of each method on Meso4 at 128 px (batch 32 per stream, projection head
//! of 2 layers, Adam), side by side in one run: the cost of each method relative to ERM on the
//! same O+S data. See BENCHMARKS.md for the recorded ratios.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench -p harness --bench methods_step -- --warm-up-time 1 --measurement-time 3`
//! With `DFBENCH_STEP_RESNET18=1` it also times ERM O+S and CS-DFD on ResNet-18 (seconds per step).
//!
//! Lives in the harness crate so that it allocates as the `bench` binary does (the harness sets
//! mimalloc as the global allocator): the step times here should be the ones `bench run` sees.
use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
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
    let both = || ParamValue::Str("both".into());
    // (label, registry kind, parameters). SAM and SAGM run on O+S as well, so that every ratio
    // compares the same images; RoGA takes its four domain batches (4 x 32 images).
    let methods: Vec<(&str, &str, MethodParams)> = vec![
        ("erm_os", "erm", MethodParams::new().with("streams", both())),
        ("erm_o", "erm", MethodParams::new().with("streams", ParamValue::Str("original".into()))),
        ("cs_dfd", "cs-dfd", MethodParams::new()),
        ("uvs_only", "cs-dfd", MethodParams::new().with("cgr", ParamValue::Bool(false))),
        ("cgr_only", "cs-dfd", MethodParams::new().with("uvs", ParamValue::Bool(false))),
        ("roga_4dom", "roga", MethodParams::new()),
        ("sam_os", "sam", MethodParams::new().with("streams", both())),
        ("sagm_os", "sagm", MethodParams::new().with("streams", both())),
        ("pcgrad", "pcgrad", MethodParams::new()),
    ];
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
    for (label, kind, params) in [
        ("erm_os", "erm", MethodParams::new().with("streams", both())),
        ("cs_dfd", "cs-dfd", MethodParams::new()),
    ] {
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

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
