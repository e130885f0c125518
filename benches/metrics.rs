//! Metrics on large score sets: `binary_metrics` (AUC, AP, EER, ACC) and `evaluate` (frame and
//! video level) on 1e6 and 1e7 scores. See BENCHMARKS.md.
//!
//! Run: `cargo bench -p harness --bench metrics -- --warm-up-time 1 --measurement-time 3`
//! (about 1.5 GB of memory at 1e7 frames for `evaluate`: each frame owns two strings).
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use harness::metrics::{FrameScore, binary_metrics, evaluate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Frames per video in `evaluate`'s input (DeepfakeBench samples 32 frames per video).
const FRAMES_PER_VIDEO: usize = 32;

/// Overlapping classes with scores on a 1e-4 grid, so that ties occur as with real detectors'
/// rounded sigmoid outputs and the tie handling is part of the timing.
fn scores(rng: &mut ChaCha8Rng, n: usize) -> (Vec<f64>, Vec<u8>) {
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..2u8)).collect();
    let scores = labels
        .iter()
        .map(|&l| {
            let s: f64 = rng.random_range(0.0..0.7) + 0.3 * l as f64;
            (s * 1e4).round() / 1e4
        })
        .collect();
    (scores, labels)
}

fn frames(scores: &[f64], labels: &[u8]) -> Vec<FrameScore> {
    scores
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (&score, &label))| FrameScore {
            dataset: "FF++".into(),
            label,
            video: format!("{:07}", i / FRAMES_PER_VIDEO),
            score,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let mut group = c.benchmark_group("metrics");
    group.sample_size(10);
    for n in [1_000_000usize, 10_000_000] {
        let (s, l) = scores(&mut rng, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("binary_metrics", n), |b| {
            b.iter(|| black_box(binary_metrics(&s, &l)))
        });
        let f = frames(&s, &l);
        group.bench_function(BenchmarkId::new("evaluate_frames_and_videos", n), |b| {
            b.iter(|| black_box(evaluate(&f)))
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
