//! One base-optimizer step (Adam, and SGD with momentum 0.9) over 1e5 to 1e7 parameters split into
//! ResNet-like tensors: the in-place CPU pass every method uses against the same rule in candle
//! tensor ops (`Optimizer::with_tensor_ops`, what other devices run; same bits, tested in
//! `detectors::optim`). See BENCHMARKS.md for the recorded ratios.
//!
//! Run: `cargo bench -p harness --bench optim -- --warm-up-time 1 --measurement-time 3`
//!
//! Lives in the harness crate so that it allocates as the `bench` binary does (mimalloc): the
//! tensor-op chain allocates about ten full-size temporaries per parameter and step.
use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use detectors::config::OptimizerConfig;
use detectors::gradvec::ParamSet;
use detectors::optim::Optimizer;
use detectors::params::{Init, ParamStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// The harness library sets the global allocator; this makes sure it is linked in.
use harness as _;

/// About `n` parameters as ResNet lays them out: weight tensors of `n / 20` and a bias of 512
/// after each.
fn params(n: usize) -> candle_core::Result<(ParamStore, ParamSet)> {
    let b = ParamStore::new(&Device::Cpu).builder(0);
    for i in 0..20 {
        b.param(&format!("layer{i:02}.weight"), n / 20, Init::Zeros)?;
        b.param(&format!("layer{i:02}.bias"), 512, Init::Zeros)?;
    }
    let store = b.store();
    let set = ParamSet::from_store(&store);
    Ok((store, set))
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut group = c.benchmark_group("optimizer_step");
    group.sample_size(10);
    let adam = OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let sgd = OptimizerConfig::Sgd { lr: 5e-3, momentum: 0.9, nesterov: false, weight_decay: 0.0 };
    for n in [100_000usize, 1_000_000, 10_000_000] {
        let (_store, set) = params(n).expect("parameters");
        let dir: Vec<Tensor> = set
            .shapes()
            .iter()
            .map(|s| {
                let v: Vec<f32> = (0..s.elem_count()).map(|_| rng.random_range(-1e-3f32..1e-3)).collect();
                Tensor::from_vec(v, s.clone(), &Device::Cpu).expect("direction")
            })
            .collect();
        group.throughput(Throughput::Elements(set.total() as u64));
        for (name, cfg) in [("adam", &adam), ("sgd_momentum", &sgd)] {
            for in_place in [true, false] {
                let mut opt = Optimizer::new(cfg);
                if !in_place {
                    opt = opt.with_tensor_ops();
                }
                // The first step creates the state; time the steps after it.
                opt.step(&set, &dir, 1e-3).expect("step");
                let id = format!("{name}_{}", if in_place { "in_place" } else { "tensor_ops" });
                group.bench_function(BenchmarkId::new(id, set.total()), |b| {
                    b.iter(|| opt.step(&set, black_box(&dir), 1e-3).expect("step"))
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
