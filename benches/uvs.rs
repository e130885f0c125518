//! The flat-vector math of CS-DFD (UVS statistics and closed form, CGR's conflict term, the
//! combination and the trace's norms, as `TwoStream::step` runs it) against a same-size axpy,
//! the memory-bandwidth bound, for 1e4 to 1e7 parameters; also the pre-fusion multi-pass code. See BENCHMARKS.md for the recorded ratios.
//!
//! Run: `cargo bench -p detectors --bench uvs -- --warm-up-time 1 --measurement-time 3`
//! 1e8 parameters (3 vectors of 400 MB, ~1.2 GB in all) only with `DFBENCH_UVS_1E8=1` in the
//! environment: the shared development machine has neither the memory headroom nor the time to
//! make it part of the default run.
use std::hint::black_box;
use std::ops::Range;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use detectors::gradvec::FlatGrad;
use detectors::methods::combine::{
    HeadRule, Pair, cgr_head, cs_dfd_direction, two_stream_stats, uvs_two, uvs_two_fixed, write_two,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
/// cosine, CGR's head norms, UVS's sums outside the head), the residual pass for `D`, the closed
/// form, and the fused write of `v` (UVS outside the head, CGR on it) with `||v||`.
fn cs_dfd_combine(g1: &FlatGrad, g2: &FlatGrad, v: &mut FlatGrad, head: &Range<usize>) -> f64 {
    let r =
        cs_dfd_direction(&g1.data, &g2.data, Some(head), Some(0.5), HeadRule::Cgr { tau: 0.01 }, &mut v.data);
    r.norm_update + r.cos_g1_g2
}

/// The same work as the step did it before the fusion (about eight passes over the vectors),
/// kept for the side-by-side comparison; same results bit for bit.
fn cs_dfd_combine_multipass(g1: &FlatGrad, g2: &FlatGrad, v: &mut FlatGrad, head: &Range<usize>) -> f64 {
    let n1 = g1.norm();
    let n2 = g2.norm();
    let cos = g1.dot(g2) / (n1.max(1e-12) * n2.max(1e-12));
    let sol = uvs_two(&Pair::from_vectors(&g1.data, &g2.data, Some(head)), 0.5);
    v.set_lin2(sol.coef[0], g1, sol.coef[1], g2);
    cgr_head(&g1.data[head.clone()], &g2.data[head.clone()], 0.01, &mut v.data[head.clone()]);
    v.norm() + cos
}

/// PROTOTYPE, not used by the library and not bit-identical to it: the read side with UVS's
/// sums in four lanes instead of sequential chains and `D` from per-block residuals (blocks of
/// `BLOCK` elements re-read from cache with the block's own `t`, merged exactly by
/// `RSS = RSS_A + RSS_B + (t_A - t_B)^2 S_A S_B / (S_A + S_B)`, no cancellation), so that `g1, g2`
/// are read from memory once. Measured only to show what giving up bit-identity would buy.
fn stats_lanewise_prototype(g1: &[f32], g2: &[f32], head: &Range<usize>) -> [f64; 8] {
    const BLOCK: usize = 2048;
    let (mut w, mut hh) = ([0f64; 3], [0f64; 3]);
    for (x, y) in g1[head.clone()].iter().zip(&g2[head.clone()]) {
        let (x, y) = (*x as f64, *y as f64);
        hh[0] += x * x;
        hh[1] += y * y;
        hh[2] += x * y;
    }
    let (mut s_dd, mut s_yd, mut rss, mut t) = (0f64, 0f64, 0f64, 0f64);
    let mut sums = [0f64; 3];
    for seg in [0..head.start, head.end..g1.len()] {
        for (b1, b2) in g1[seg.clone()].chunks(BLOCK).zip(g2[seg].chunks(BLOCK)) {
            let mut acc = [[0f64; 4]; 5];
            for (x4, y4) in b1.chunks_exact(4).zip(b2.chunks_exact(4)) {
                for l in 0..4 {
                    let (x, y) = (x4[l] as f64, y4[l] as f64);
                    let di = x - y;
                    acc[0][l] += x * x;
                    acc[1][l] += x * y;
                    acc[2][l] += y * y;
                    acc[3][l] += di * di;
                    acc[4][l] += y * di;
                }
            }
            let mut b = acc.map(|a| (a[0] + a[1]) + (a[2] + a[3]));
            let r = b1.len() & !3;
            for (x, y) in b1[r..].iter().zip(&b2[r..]) {
                let (x, y) = (*x as f64, *y as f64);
                let di = x - y;
                b[0] += x * x;
                b[1] += x * y;
                b[2] += y * y;
                b[3] += di * di;
                b[4] += y * di;
            }
            let tb = if b[3] > 0.0 { b[4] / b[3] } else { 0.0 };
            let mut rl = [0f64; 4];
            for (x4, y4) in b1.chunks_exact(4).zip(b2.chunks_exact(4)) {
                for l in 0..4 {
                    let (x, y) = (x4[l] as f64, y4[l] as f64);
                    let q = y - tb * (x - y);
                    rl[l] += q * q;
                }
            }
            let mut rb = (rl[0] + rl[1]) + (rl[2] + rl[3]);
            for (x, y) in b1[r..].iter().zip(&b2[r..]) {
                let (x, y) = (*x as f64, *y as f64);
                let q = y - tb * (x - y);
                rb += q * q;
            }
            let s = s_dd + b[3];
            rss += rb + if s > 0.0 { (t - tb) * (t - tb) * s_dd * b[3] / s } else { 0.0 };
            s_dd = s;
            s_yd += b[4];
            t = if s_dd > 0.0 { s_yd / s_dd } else { 0.0 };
            for k in 0..3 {
                sums[k] += b[k];
            }
        }
    }
    for k in 0..3 {
        w[k] = sums[k] + [hh[0], hh[2], hh[1]][k];
    }
    [w[0], w[1], w[2], hh[0], hh[1], s_dd, s_yd, rss]
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
        group.bench_function(BenchmarkId::new("dot", n), |b| b.iter(|| black_box(g1.dot(&g2))));
        group.bench_function(BenchmarkId::new("stats_fused_read", n), |b| {
            b.iter(|| black_box(two_stream_stats(&g1.data, &g2.data, Some(&head), true)))
        });
        let stats = two_stream_stats(&g1.data, &g2.data, Some(&head), true);
        let pair = stats.pair.expect("asked for");
        // The prototype's D must agree with the exact residual D before its time means anything.
        let proto = stats_lanewise_prototype(&g1.data, &g2.data, &head);
        let exact_d = pair.d;
        assert!((proto[7] - exact_d).abs() <= 1e-10 * exact_d, "prototype D {} vs {exact_d}", proto[7]);
        group.bench_function(BenchmarkId::new("stats_lanewise_prototype", n), |b| {
            b.iter(|| black_box(stats_lanewise_prototype(&g1.data, &g2.data, &head)))
        });
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
