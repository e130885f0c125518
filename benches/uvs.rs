//! The flat-vector math of CS-DFD (UVS statistics and closed form, CGR's conflict term, the
//! combination and the trace's norms, as `TwoStream::step` runs it) against a same-size axpy,
//! the memory-bandwidth bound, for 1e4 to 1e7 parameters. Also: the combination on one thread,
//! on the narrower instruction sets, with plain instead of streaming stores, and the pre-fusion
//! multi-pass code; and a pass that only reads g1 and g2 (their norms), the floor of either of
//! the combination's two passes. The step's passes spread long vectors over the rayon pool, so
//! the axpy is timed on one thread (`axpy`, `FlatGrad::axpy`) and on the whole pool
//! (`axpy_pool`, fixed chunks of 128 Ki elements) as well. See BENCHMARKS.md for the recorded
//! ratios.
//!
//! Run: `cargo bench -p detectors --bench uvs -- --warm-up-time 1 --measurement-time 3`
//! 1e8 parameters (3 vectors of 400 MB, ~1.2 GB in all) only with `DFBENCH_UVS_1E8=1` in the
//! environment: the shared development machine has neither the memory headroom nor the time to
//! make it part of the default run.
use std::hint::black_box;
use std::ops::Range;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use detectors::gradvec::FlatGrad;
use detectors::methods::combine::{Pair, cgr_head, uvs_two, uvs_two_fixed};
use detectors::methods::fused::{
    Exec, HeadRule, Simd, cs_dfd_direction, cs_dfd_direction_on, two_stream_stats, write_two,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// `y += a x` on the rayon pool: what memory bandwidth allows with every core reading.
fn axpy_pool(y: &mut [f32], a: f64, x: &[f32]) {
    const CHUNK: usize = 128 * 1024;
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| detectors::gradvec::axpy(y, a, x));
}

/// [`cs_dfd_combine`] as `exec` says.
fn cs_dfd_combine_on(exec: Exec, g1: &FlatGrad, g2: &FlatGrad, v: &mut FlatGrad, head: &Range<usize>) -> f64 {
    let rule = HeadRule::Cgr { tau: 0.01 };
    let r = cs_dfd_direction_on(exec, &g1.data, &g2.data, Some(head), Some(0.5), rule, &mut v.data);
    r.norm_update + r.cos_g1_g2
}

/// The projection head's share of the flat vector: ResNet-18 with a 2-layer 512-wide head has
/// 2 * (512 * 512 + 512) = 525,312 head parameters of 11.7M, about 1/22; 1/16 is used here. The
/// split barely matters for the cost: every element is read by UVS's statistics or by CGR.
fn head_of(n: usize) -> Range<usize> {
    n - n / 16..n
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> FlatGrad {
    FlatGrad::from_vec((0..n).map(|_| rng.random_range(-1e-3f32..1e-3)).collect())
}

/// Everything CS-DFD does on the flat gradients in one step, exactly as `TwoStream::step` calls
/// it with the default `uvs = true, cgr = true`: the fused statistics pass (trace norms and
/// cosine, CGR's head norms, UVS's sums and `D` outside the head), the closed form, and the fused
/// write of `v` (UVS outside the head, CGR on it) with `||v||`, on the widest instruction set.
fn cs_dfd_combine(g1: &FlatGrad, g2: &FlatGrad, v: &mut FlatGrad, head: &Range<usize>) -> f64 {
    let r =
        cs_dfd_direction(&g1.data, &g2.data, Some(head), Some(0.5), HeadRule::Cgr { tau: 0.01 }, &mut v.data);
    r.norm_update + r.cos_g1_g2
}

/// The same work as the step did it before the fusion (about eight passes over the vectors, UVS's
/// sums and `D` as sequential chains), kept for the side-by-side comparison.
fn cs_dfd_combine_multipass(g1: &FlatGrad, g2: &FlatGrad, v: &mut FlatGrad, head: &Range<usize>) -> f64 {
    let n1 = g1.norm();
    let n2 = g2.norm();
    let cos = g1.dot(g2) / (n1.max(1e-12) * n2.max(1e-12));
    let sol = uvs_two(&Pair::from_vectors(&g1.data, &g2.data, Some(head)), 0.5);
    v.set_lin2(sol.coef[0], g1, sol.coef[1], g2);
    cgr_head(&g1.data[head.clone()], &g2.data[head.clone()], 0.01, &mut v.data[head.clone()]);
    v.norm() + cos
}

fn bench(c: &mut Criterion) {
    let mut sizes = vec![10_000usize, 100_000, 1_000_000, 10_000_000];
    if std::env::var_os("DFBENCH_UVS_1E8").is_some() {
        sizes.push(100_000_000);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut group = c.benchmark_group("uvs_cgr");
    group.sample_size(10);
    for &n in &sizes {
        let g1 = random(&mut rng, n);
        let g2 = random(&mut rng, n);
        let mut v = FlatGrad::zeros(n);
        let head = head_of(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("axpy", n), |b| {
            // y += a x with a tiny a keeps y bounded over many iterations.
            b.iter(|| v.axpy(black_box(1e-9), &g1))
        });
        group.bench_function(BenchmarkId::new("axpy_pool", n), |b| {
            b.iter(|| axpy_pool(&mut v.data, black_box(1e-9), &g1.data))
        });
        group.bench_function(BenchmarkId::new("dot", n), |b| b.iter(|| black_box(g1.dot(&g2))));
        // The read pass without UVS's sums (the three norms only, three FMAs per eight
        // elements): reading g1 and g2 once on the pool, the floor of any pass over both.
        group.bench_function(BenchmarkId::new("read_g1_g2_norms_only", n), |b| {
            b.iter(|| black_box(two_stream_stats(&g1.data, &g2.data, Some(&head), false)))
        });
        group.bench_function(BenchmarkId::new("stats_fused_read", n), |b| {
            b.iter(|| black_box(two_stream_stats(&g1.data, &g2.data, Some(&head), true)))
        });
        let stats = two_stream_stats(&g1.data, &g2.data, Some(&head), true);
        let pair = stats.pair.expect("asked for");
        group.bench_function(BenchmarkId::new("uvs_two_closed_form", n), |b| {
            b.iter(|| black_box(uvs_two_fixed(black_box(&pair), 0.5)))
        });
        let coef = uvs_two_fixed(&pair, 0.5).coef;
        group.bench_function(BenchmarkId::new("write_fused", n), |b| {
            b.iter(|| {
                let rule = Some((&head, HeadRule::Cgr { tau: 0.01 }));
                black_box(write_two(&mut v.data, &g1.data, &g2.data, (coef[0], coef[1]), rule, &stats))
            })
        });
        group.bench_function(BenchmarkId::new("cs_dfd_combine", n), |b| {
            b.iter(|| black_box(cs_dfd_combine(&g1, &g2, &mut v, &head)))
        });
        // The same on the pool with plain stores at every length (`Exec::best` streams the
        // write pass from `fused::STREAM_FROM` elements on).
        let cached = Exec { stream_from: usize::MAX, ..Exec::best() };
        group.bench_function(BenchmarkId::new("cs_dfd_combine_plain_stores", n), |b| {
            b.iter(|| black_box(cs_dfd_combine_on(cached, &g1, &g2, &mut v, &head)))
        });
        // The same function on one thread, on every instruction set (same bits).
        for simd in Simd::available() {
            let name = format!("cs_dfd_combine_1thread_{simd:?}").to_lowercase();
            let exec = Exec::sequential(simd);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(cs_dfd_combine_on(exec, &g1, &g2, &mut v, &head)))
            });
        }
        group.bench_function(BenchmarkId::new("cs_dfd_combine_multipass", n), |b| {
            b.iter(|| black_box(cs_dfd_combine_multipass(&g1, &g2, &mut v, &head)))
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
