//! The multi-stream methods' tensor path (`gradvec::device`, `methods::device`: flat gradients
//! as device tensors, only scalars to the host) against the host path (`methods::cs_dfd`,
//! `methods::fused`, `methods::combine`, the host branches of `SharpCore`/`RogaCore`), and
//! against methods.md's independent reference values, for every method kind.
//!
//! The device under test is the CPU in the default build. Built with `--features cuda` the same
//! tests run the tensor path on CUDA device 0 and compare it with the host path on the CPU; in
//! that binary a missing GPU is a failure, not a skip (`dev()`).
//!
//! Tolerances. Both paths form the same f64 products from the same f32 gradients and sum them in
//! f64, in different orders; each direction element is one f64 expression rounded to f32 once
//! (`gradvec::device`). So scalars (Gram entries, norms, cosines, mu) agree to f64 reduction order,
//! `~n * 1.1e-16` relative for the `n <= 4000` terms here: 1e-10 is asked. Direction elements agree
//! to one f32 rounding of slightly different f64 values: within 2 f32 ulps (`2^-22` relative) of
//! the largest element, asked as 1e-6 of the largest element.
use std::ops::Range;

use candle_core::{DType, Device, Result, Tensor};
use detectors::batch::{Batch, StepInput};
use detectors::config::OptimizerConfig;
use detectors::gradvec::device::GradPath;
use detectors::gradvec::{FlatGrad, ParamSet};
use detectors::methods::combine::{Pair, cagrad_reference, gram, pcgrad, uvs_gram, uvs_two_fixed};
use detectors::methods::cs_dfd::{self, HeadRule};
use detectors::methods::sharp::{Perturbation, RogaCore, RogaParams, SharpCore};
use detectors::methods::{Losses, MethodParams, ParamValue, build_method, device as dm, fused};
use detectors::model::{Detector, Mode};
use detectors::params::{Init, ParamStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The device the tensor path runs on.
#[cfg(feature = "cuda")]
fn dev() -> Device {
    Device::new_cuda(0).expect("this test binary was built with --features cuda: it needs CUDA device 0")
}
#[cfg(not(feature = "cuda"))]
fn dev() -> Device {
    Device::Cpu
}

fn up(x: &[f32]) -> Result<Tensor> {
    Tensor::from_vec(x.iter().map(|&v| v as f64).collect::<Vec<_>>(), x.len(), &dev())
}

fn down(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

fn assert_dir_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (*g as f64 - *w as f64).abs();
        assert!(d <= 1e-6 * scale, "{what}[{i}]: device {g} vs host {w} (scale {scale})");
    }
}

fn assert_scalar_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-10 * want.abs().max(1e-300), "{what}: device {got} vs host {want}");
}

/// `g1` random, `g2 = -0.7 g1 + noise`: conflicting (cos < 0), neither a multiple of the other.
fn conflicting(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g1: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let g2: Vec<f32> = g1.iter().map(|&x| -0.7 * x + rng.random_range(-0.5f32..0.5)).collect();
    (g1, g2)
}

fn cos(g1: &[f32], g2: &[f32]) -> f64 {
    let p = Pair::from_vectors(g1, g2, None);
    p.g12 / (p.g11 * p.g22).sqrt()
}

/// CS-DFD (every ablation, with and without a head) on the device against the reference and
/// the fused host path.
fn check_cs_dfd(g1: &[f32], g2: &[f32], head: Option<&Range<usize>>, what: &str) -> Result<()> {
    let (t1, t2) = (up(g1)?, up(g2)?);
    for (uvs_c, rule) in [
        (Some(0.5), HeadRule::Cgr { tau: 0.01 }),
        (Some(0.5), HeadRule::Sum),
        (None, HeadRule::Cgr { tau: 0.01 }),
        (None, HeadRule::Sum),
        (Some(2.0), HeadRule::Cgr { tau: 0.5 }),
    ] {
        let label = format!("{what} cs-dfd c={uvs_c:?} {rule:?}");
        let mut want = vec![0f32; g1.len()];
        let host = cs_dfd::reference(g1, g2, head, uvs_c, rule, &mut want);
        let mut fused_out = vec![0f32; g1.len()];
        fused::cs_dfd_direction(g1, g2, head, uvs_c, rule, &mut fused_out);
        let got = dm::cs_dfd_direction(&t1, &t2, head, uvs_c, rule)?;
        let v = down(&got.v)?;
        assert_dir_close(&v, &want, &label);
        assert_dir_close(&v, &fused_out, &label);
        assert_scalar_close(got.nums.norm_g1, host.norm_g1, &label);
        assert_scalar_close(got.nums.norm_g2, host.norm_g2, &label);
        assert_scalar_close(got.nums.cos_g1_g2, host.cos_g1_g2, &label);
        assert!((got.nums.norm_update - host.norm_update).abs() <= 1e-6 * host.norm_update, "{label}");
        match (got.nums.mu, host.mu) {
            (Some(a), Some(b)) => assert!((a[0] - b[0]).abs() <= 1e-9, "{label}: mu {a:?} vs {b:?}"),
            (None, None) => {}
            other => panic!("{label}: mu {other:?}"),
        }
        let want_rel = match (rule, head) {
            (HeadRule::Cgr { tau }, Some(h)) => cs_dfd::cgr_relative(&g1[h.clone()], &g2[h.clone()], tau),
            _ => None,
        };
        match (got.cgr_rel, want_rel) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9 * b, "{label}: cgr_rel {a} vs {b}"),
            (None, None) => {}
            other => panic!("{label}: cgr_rel {other:?}"),
        }
        // UVS's invariant, independently of either implementation: ||v - g0|| = c ||g0|| outside
        // the head (f32 rounding of v only).
        if let Some(c) = uvs_c {
            let outside = |i: &usize| head.is_none_or(|h| !h.contains(i));
            let (mut dev_sq, mut g0_sq) = (0f64, 0f64);
            for i in (0..g1.len()).filter(outside) {
                let g0 = g1[i] as f64 + g2[i] as f64;
                dev_sq += (v[i] as f64 - g0).powi(2);
                g0_sq += g0 * g0;
            }
            let (lhs, rhs) = (dev_sq.sqrt(), c * g0_sq.sqrt());
            if rhs > 0.0 && got.nums.mu.is_some_and(|m| m[0] > 0.0 || m[1] > 0.0) {
                assert!((lhs - rhs).abs() <= 1e-5 * rhs, "{label}: ||v - g0|| = {lhs}, c ||g0|| = {rhs}");
            }
        }
    }
    // CAGrad over all parameters.
    let mut want = vec![0f32; g1.len()];
    let host = cagrad_reference(g1, g2, 0.5, &mut want);
    let got = dm::cagrad_direction(&t1, &t2, 0.5)?;
    assert_dir_close(&down(&got.v)?, &want, &format!("{what} cagrad"));
    assert!((got.nums.mu.unwrap()[0] - host.mu.unwrap()[0]).abs() <= 1e-9, "{what} cagrad mu");
    assert_scalar_close(got.nums.cos_g1_g2, host.cos_g1_g2, &format!("{what} cagrad cos"));
    // PCGrad in both inner orders (for two tasks each order is the other task).
    let orders = [vec![1usize], vec![0usize]];
    let mut want = vec![0f32; g1.len()];
    pcgrad(&[g1, g2], &orders, &mut want, &mut Vec::new());
    let got = dm::pcgrad_two(&t1, &t2, &orders)?;
    assert_dir_close(&down(&got.v)?, &want, &format!("{what} pcgrad"));
    assert_scalar_close(got.nums.cos_g1_g2, host.cos_g1_g2, &format!("{what} pcgrad cos"));
    Ok(())
}

#[test]
fn two_stream_rules_match_the_host_on_conflicting_gradients() -> Result<()> {
    for (n, seed, head) in [(4000, 1, Some(3100..3400)), (777, 2, None), (1000, 3, Some(0..64)), (1000, 4, Some(900..1000))]
    {
        let (g1, g2) = conflicting(n, seed);
        assert!(cos(&g1, &g2) < -0.5, "the test gradients conflict: cos {}", cos(&g1, &g2));
        check_cs_dfd(&g1, &g2, head.as_ref(), &format!("n={n} head={head:?}"))?;
    }
    Ok(())
}

/// (g1, g2, mu1, v*) of one of methods.md's reference cases.
type RefCase<'a> = (&'a [f32], &'a [f32], f64, &'a [f64]);

/// methods.md 2.1's reference vectors (R1 interior, R2 boundary mu = (1, 0), R3 no conflict
/// mu = (0, 1)) and 3's PCGrad sums: the device path against the spec's own numbers.
#[test]
fn device_rules_give_the_spec_reference_values() -> Result<()> {
    let cases: [RefCase; 3] = [
        (&[1.0, -2.0, 0.5, 3.0], &[-1.5, 1.0, 2.0, -0.5], 0.099320839, &[-1.488737053, -0.445448882, 3.962150581, 2.379634816]),
        (
            &[0.3, -0.2, 0.1, 0.0, -0.4],
            &[-2.0, 1.0, 3.0, 0.5, 1.0],
            1.0,
            &[-0.684495199, 0.122996800, 3.438501600, 0.5, -0.754006401],
        ),
        (
            &[0.5, 1.0, -0.5, 2.0, 0.0, 1.5],
            &[1.0, 0.5, 0.5, 1.0, -1.0, 0.5],
            0.0,
            &[2.610555417, 2.055277708, 0.555277708, 4.110555417, -2.110555417, 2.555277708],
        ),
    ];
    for (g1, g2, mu1, v_want) in cases {
        let got = dm::cs_dfd_direction(&up(g1)?, &up(g2)?, None, Some(0.5), HeadRule::Sum)?;
        assert!((got.nums.mu.unwrap()[0] - mu1).abs() < 1e-6, "mu {:?} vs {mu1}", got.nums.mu);
        for (v, w) in down(&got.v)?.iter().zip(v_want) {
            assert!((*v as f64 - w).abs() < 1e-5, "v {v} vs {w}");
        }
    }
    // CAGrad in LibMTL's convention on R1.
    let got = dm::cagrad_direction(&up(&[1.0, -2.0, 0.5, 3.0])?, &up(&[-1.5, 1.0, 2.0, -0.5])?, 0.5)?;
    for (v, w) in down(&got.v)?.iter().zip([-0.595495, -0.178180, 1.584860, 0.951854]) {
        assert!((*v as f64 - w).abs() < 1e-5, "cagrad {v} vs {w}");
    }
    // PCGrad on R1 and on three tasks in both inner orders.
    let got = dm::pcgrad_two(&up(&[1.0, -2.0, 0.5, 3.0])?, &up(&[-1.5, 1.0, 2.0, -0.5])?, &[vec![1], vec![0]])?;
    for (v, w) in down(&got.v)?.iter().zip([-1.019298246, -1.028070175, 3.707017544, 3.075438596]) {
        assert!((*v as f64 - w).abs() < 1e-5, "pcgrad R1 {v} vs {w}");
    }
    let g = [up(&[2.0, 0.0, 1.0])?, up(&[-1.0, 1.0, 0.0])?, up(&[-1.0, -1.0, 0.5])?];
    let gs = [&g[0], &g[1], &g[2]];
    for (orders, want) in [
        (vec![vec![1, 2], vec![0, 2], vec![0, 1]], [-0.833333, 0.366667, 2.666667]),
        (vec![vec![2, 1], vec![2, 0], vec![1, 0]], [-0.266667, 0.333333, 2.533333]),
    ] {
        for (v, w) in down(&dm::pcgrad(&gs, &orders)?)?.iter().zip(want) {
            assert!((*v as f64 - w).abs() < 1e-5, "pcgrad K=3 {orders:?}: {v} vs {w}");
        }
    }
    // CGR's conflict term on R1 (methods.md 2.2), the whole vector being the head.
    let (g1, g2) = ([1.0f32, -2.0, 0.5, 3.0], [-1.5f32, 1.0, 2.0, -0.5]);
    let got = dm::cs_dfd_direction(&up(&g1)?, &up(&g2)?, Some(&(0..4)), None, HeadRule::Cgr { tau: 0.01 })?;
    let term = [-0.000725476, -0.001934603, -0.002418254, 0.003627381];
    for (i, v) in down(&got.v)?.iter().enumerate() {
        let want = g1[i] as f64 + g2[i] as f64 + term[i];
        assert!((*v as f64 - want).abs() < 1e-6, "cgr {i}: {v} vs {want}");
    }
    Ok(())
}

/// UVS's closed form switches branch where mu* leaves the simplex's boundary (methods.md 2.1:
/// the `r >= sqrt(A)` / `r <= -sqrt(A)` tests and the clamp). Along `g2 = t u`, mu* puts all its
/// weight on the smaller of the two gradients at either end (mu1 = 0 for small t, 1 for large
/// t) and is interior in between; both switch points are found by bisection on the host's closed
/// form, and the device must follow the host on either side of each and at it. Also the
/// degenerate cases: g1 = g2 (A = 0) and g1 = -g2 (g0 = 0).
#[test]
fn uvs_kink_cases_match_the_host() -> Result<()> {
    let (g1, u) = conflicting(600, 9);
    let scaled = |t: f64| -> Vec<f32> { u.iter().map(|&x| (x as f64 * t) as f32).collect() };
    let mu1 = |t: f64| uvs_two_fixed(&Pair::from_vectors(&g1, &scaled(t), None), 0.5).mu[0];
    let (lo_end, hi_end) = (1e-3, 1e3);
    let (m_lo, m_hi) = (mu1(lo_end), mu1(hi_end));
    assert!(m_lo != m_hi && [m_lo, m_hi].iter().all(|m| *m == 0.0 || *m == 1.0), "ends on the boundary: {m_lo} {m_hi}");
    // Bisect (geometrically) for the last t with mu1 at `m_lo` and the first with mu1 at `m_hi`.
    let bisect = |on_left: &dyn Fn(f64) -> bool| -> f64 {
        let (mut a, mut b) = (lo_end, hi_end);
        for _ in 0..200 {
            let m = (a * b).sqrt();
            if on_left(m) { a = m } else { b = m }
        }
        a
    };
    let t1 = bisect(&|t| mu1(t) == m_lo);
    let t2 = bisect(&|t| mu1(t) != m_hi);
    assert!(t1 < t2, "an interior stretch between the kinks: {t1} {t2}");
    for (t, side) in [
        (t1 * (1.0 - 1e-3), "before the first kink"),
        (t1, "at the first kink"),
        (t1 * (1.0 + 1e-3), "after the first kink"),
        ((t1 * t2).sqrt(), "interior"),
        (t2 * (1.0 - 1e-3), "before the second kink"),
        (t2, "at the second kink"),
        (t2 * (1.0 + 1e-3), "after the second kink"),
    ] {
        let g2 = scaled(t);
        let m = mu1(t);
        eprintln!("t = {t:.6e} ({side}): host mu1 = {m}");
        check_cs_dfd(&g1, &g2, Some(&(100..160)), &format!("kink t={t:e} ({side})"))?;
    }
    assert_eq!(mu1(t1 * (1.0 - 1e-3)), m_lo, "left of the first kink is on the boundary");
    assert!(mu1(t1 * (1.0 + 1e-3)) != m_lo, "right of it is not");
    assert_eq!(mu1(t2 * (1.0 + 1e-3)), m_hi, "right of the second kink is on the other boundary");
    // Degenerate: identical gradients (A = 0, w = 1/2, v = (1 + c) g0) and opposite ones (g0 = 0).
    check_cs_dfd(&g1, &g1, None, "g1 = g2")?;
    let neg: Vec<f32> = g1.iter().map(|x| -x).collect();
    check_cs_dfd(&g1, &neg, None, "g1 = -g2")?;
    let got = dm::cs_dfd_direction(&up(&g1)?, &up(&g1)?, None, Some(0.5), HeadRule::Sum)?;
    for (v, g) in down(&got.v)?.iter().zip(&g1) {
        assert!((*v as f64 - 3.0 * *g as f64).abs() <= 1e-6, "g1 = g2: v = 1.5 (g1 + g2)");
    }
    Ok(())
}

/// UVS for K > 2 (projected gradient on the simplex): the device's Gram matrix equals the host's
/// to reduction order, and mu and v* equal the host's to the solver's own precision; for K = 2 it agrees with the closed form, and the
/// invariant `||v - g0|| = c ||g0||` holds.
#[test]
fn uvs_for_many_gradients_matches_the_host() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let n = 900;
    let base: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // Three conflicting gradients: each the base rotated away by its own noise, one against it.
    let gs: Vec<Vec<f32>> = [1.0f32, -0.8, 0.3]
        .iter()
        .map(|s| base.iter().map(|&x| s * x + rng.random_range(-0.6f32..0.6)).collect())
        .collect();
    let slices: Vec<&[f32]> = gs.iter().map(|g| g.as_slice()).collect();
    let ups = gs.iter().map(|g| up(g)).collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = ups.iter().collect();
    for kk in [2usize, 3] {
        let host_gram = gram(&slices[..kk], None);
        let dev_gram = dm::gram(&refs[..kk])?;
        for (a, b) in dev_gram.iter().zip(&host_gram) {
            assert_scalar_close(*a, *b, "Gram entry");
        }
        assert!(host_gram[1] < 0.0, "g1 and g2 conflict");
        let host = uvs_gram(&host_gram, kk, 0.5);
        let (v, sol) = dm::uvs_many(&refs[..kk], 0.5)?;
        // The projected-gradient solve is iterative: Gram matrices equal to the last bits can
        // stop it at points ~1e-9 apart (measured 2e-9), so mu is compared to 1e-7, not 1e-9.
        for (a, b) in sol.mu.iter().zip(&host.mu) {
            assert!((a - b).abs() <= 1e-7, "K={kk}: mu {:?} vs {:?}", sol.mu, host.mu);
        }
        let want: Vec<f32> = (0..n)
            .map(|i| (0..kk).map(|j| host.coef[j] * slices[j][i] as f64).sum::<f64>() as f32)
            .collect();
        let v = down(&v)?;
        assert_dir_close(&v, &want, &format!("UVS K={kk}"));
        let g0: Vec<f64> = (0..n).map(|i| (0..kk).map(|j| slices[j][i] as f64).sum()).collect();
        let dist = v.iter().zip(&g0).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>().sqrt();
        let radius = 0.5 * g0.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((dist - radius).abs() <= 1e-4 * radius, "K={kk}: ||v - g0|| = {dist}, c ||g0|| = {radius}");
        if kk == 2 {
            let closed = uvs_two_fixed(&Pair::from_vectors(slices[0], slices[1], None), 0.5);
            assert!((sol.mu[0] - closed.mu[0]).abs() <= 1e-6, "K=2: projected gradient vs closed form");
        }
    }
    Ok(())
}

// ---- SAM family and RoGA: perturb-and-restore on methods.md's quadratic ----------------------

const H: [[f64; 4]; 4] = [[2.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, -1.0], [0.0, 0.0, -1.0, 1.5]];
const A: [f64; 4] = [1.0, -1.0, 0.5, 2.0];
const A2: [f64; 4] = [0.0, 1.0, -1.0, 0.5];
const W0: [f32; 4] = [0.3, 0.8, -0.4, 1.0];

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 }
}

/// A "weight" (ASAM scales it) and a bias, so ASAM's T = 1 branch is exercised too.
fn quad_model(d: &Device) -> Result<(ParamStore, ParamSet)> {
    let b = ParamStore::new(d).builder(0);
    b.pp("q").param("weight", 4, Init::Zeros)?;
    b.pp("q").param("bias", 1, Init::Zeros)?;
    let store = b.store();
    store.param("q.weight").unwrap().set(&Tensor::new(&W0, d)?)?;
    store.param("q.bias").unwrap().set(&Tensor::new(&[0.25f32], d)?)?;
    let set = ParamSet::from_store(&store);
    Ok((store, set))
}

/// `1/2 (w - a)^T H (w - a) + (bias - 1)^2`.
fn quad_loss(store: &ParamStore, a: &[f64; 4]) -> Result<Tensor> {
    let w = store.param("q.weight").unwrap();
    let d = w.device().clone();
    let h = Tensor::from_vec(H.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(), (4, 4), &d)?;
    let a = Tensor::new(&a.map(|x| x as f32), &d)?;
    let x = w.as_tensor().sub(&a)?;
    let q = x.unsqueeze(0)?.matmul(&h)?.matmul(&x.unsqueeze(1)?)?.squeeze(0)?.squeeze(0)?.affine(0.5, 0.0)?;
    q.add(&store.param("q.bias").unwrap().as_tensor().affine(1.0, -1.0)?.sqr()?.sum_all()?)
}

fn values(set: &ParamSet) -> Result<Vec<f32>> {
    let mut v = FlatGrad::default();
    set.values(&mut v)?;
    Ok(v.data)
}

fn sharp_step(pert: Perturbation, path: GradPath, d: &Device, steps: usize) -> Result<(Vec<f32>, Vec<f64>)> {
    let (store, set) = quad_model(d)?;
    let mut core = SharpCore::new(pert, &sgd());
    core.path = Some(path);
    let mut norms = Vec::new();
    for _ in 0..steps {
        let rep = core.step(&set, 0.1, &mut |_| Ok(Losses::total_only(quad_loss(&store, &A)?)))?;
        norms.extend([rep.norm_g, rep.norm_update]);
    }
    Ok((values(&set)?, norms))
}

#[test]
fn sam_family_on_the_device_matches_the_host_and_the_spec() -> Result<()> {
    // methods.md 4's w1 (the weight part; the bias takes the same rule on its own quadratic).
    let spec: [(Perturbation, [f64; 4]); 4] = [
        (Perturbation::None, [0.35, 0.655, -0.23, 1.06]),
        (Perturbation::Sam { rho: 0.05 }, [0.350580914, 0.652465103, -0.220494136, 1.058310069]),
        (Perturbation::Asam { rho: 0.5, eta: 0.01 }, [0.337365876, 0.624134024, -0.221836819, 1.081046860]),
        (Perturbation::Sagm { rho: 0.05, alpha: 0.001 }, [0.350276707, 0.653792551, -0.225472068, 1.059195034]),
    ];
    for (pert, _) in spec {
        let (host, host_norms) = sharp_step(pert, GradPath::Host, &Device::Cpu, 3)?;
        let (got, got_norms) = sharp_step(pert, GradPath::Tensor, &dev(), 3)?;
        assert_dir_close(&got, &host, &format!("{pert:?} after 3 steps"));
        for (a, b) in got_norms.iter().zip(&host_norms) {
            // The host traces ERM's and SAM's norms from f32 sums; the device sums in f64.
            assert!((a - b).abs() <= 1e-6 * b, "{pert:?} norms {got_norms:?} vs {host_norms:?}");
        }
    }
    // The spec's w1 on its own one-parameter model, through the tensor path.
    for (pert, w1) in spec {
        let b = ParamStore::new(&dev()).builder(0);
        b.pp("q").param("weight", 4, Init::Zeros)?;
        let store = b.store();
        store.param("q.weight").unwrap().set(&Tensor::new(&W0, &dev())?)?;
        let set = ParamSet::from_store(&store);
        let mut core = SharpCore::new(pert, &sgd());
        core.path = Some(GradPath::Tensor);
        let mut modes = Vec::new();
        core.step(&set, 0.1, &mut |m| {
            modes.push(m);
            let w = store.param("q.weight").unwrap();
            let h = Tensor::from_vec(H.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(), (4, 4), &dev())?;
            let x = w.as_tensor().sub(&Tensor::new(&A.map(|x| x as f32), &dev())?)?;
            let q = x.unsqueeze(0)?.matmul(&h)?.matmul(&x.unsqueeze(1)?)?.squeeze(0)?.squeeze(0)?.affine(0.5, 0.0)?;
            Ok(Losses::total_only(q))
        })?;
        let got = values(&set)?;
        for (g, w) in got.iter().zip(w1) {
            assert!((*g as f64 - w).abs() < 1e-6, "{pert:?}: w1 {got:?} vs {w1:?}");
        }
        let want_modes =
            if pert == Perturbation::None { vec![Mode::Train] } else { vec![Mode::Train, Mode::TrainFrozenStats] };
        assert_eq!(modes, want_modes, "{pert:?}: BatchNorm statistics move on the first pass only");
    }
    Ok(())
}

#[test]
fn perturbed_weights_are_restored_bit_for_bit_on_the_device() -> Result<()> {
    for pert in [Perturbation::Sam { rho: 0.05 }, Perturbation::Asam { rho: 0.5, eta: 0.01 }, Perturbation::Sagm { rho: 0.05, alpha: 0.001 }] {
        let (store, set) = quad_model(&dev())?;
        let before: Vec<u32> = values(&set)?.iter().map(|x| x.to_bits()).collect();
        let mut core = SharpCore::new(pert, &sgd());
        core.path = Some(GradPath::Tensor);
        core.step(&set, 0.0, &mut |_| Ok(Losses::total_only(quad_loss(&store, &A)?)))?;
        assert_eq!(values(&set)?.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), before, "{pert:?}");
    }
    let (store, set) = quad_model(&dev())?;
    let before = values(&set)?;
    let mut core = RogaCore::new(RogaParams { rho: 0.1, alpha: 0.001, weight: 0.5 }, &sgd());
    core.path = Some(GradPath::Tensor);
    core.step(&set, 0.0, 2, &mut |d, _| quad_loss(&store, if d == 0 { &A } else { &A2 }))?;
    assert_eq!(values(&set)?, before, "RoGA restores");
    Ok(())
}

/// RoGA on two and three domains: the tensor path against the host path and, for two domains,
/// against a direct f64 implementation of methods.md section 5.
#[test]
fn roga_per_domain_directions_on_the_device() -> Result<()> {
    let (rho, alpha, weight, lr) = (0.1, 0.002, 0.3, 0.1);
    let a3 = [0.5, 0.5, 0.5, -0.5];
    let doms = [A, A2, a3];
    for k in [2usize, 3] {
        let mut out = Vec::new();
        for (path, d) in [(GradPath::Host, Device::Cpu), (GradPath::Tensor, dev())] {
            let (store, set) = quad_model(&d)?;
            let mut core = RogaCore::new(RogaParams { rho, alpha, weight }, &sgd());
            core.path = Some(path);
            let mut modes = Vec::new();
            let mut reps = Vec::new();
            for _ in 0..2 {
                reps.push(core.step(&set, lr, k, &mut |i, m| {
                    modes.push((i, m));
                    quad_loss(&store, &doms[i])
                })?);
            }
            let mut want_modes: Vec<(usize, Mode)> = (0..k).map(|i| (i, Mode::Train)).collect();
            want_modes.extend((0..k).map(|i| (i, Mode::TrainFrozenStats)));
            assert_eq!(modes[..2 * k], want_modes[..], "{path:?} K={k}");
            out.push((values(&set)?, reps));
        }
        let ((host, hrep), (got, grep)) = (&out[0], &out[1]);
        assert_dir_close(got, host, &format!("RoGA K={k} after 2 steps"));
        // Step 1 starts from the same parameters on both paths.
        let (g, h) = (&grep[0], &hrep[0]);
        for (a, b) in g.grad_norms.iter().zip(&h.grad_norms) {
            assert!((a - b).abs() <= 1e-6 * b, "RoGA grad norms: {a} vs {b}");
        }
        for (a, b) in g.losses.iter().zip(&h.losses) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "RoGA losses: {a} vs {b}");
        }
        assert!((g.norm_update - h.norm_update).abs() <= 1e-6 * h.norm_update);
    }
    // methods.md 5 by hand in f64, K = 2 (the weight block; the bias's gradient is 2 (b - 1)).
    let grad = |w: &[f64; 5], a: &[f64; 4]| -> [f64; 5] {
        let mut g = [0.0; 5];
        for i in 0..4 {
            for j in 0..4 {
                g[i] += H[i][j] * (w[j] - a[j]);
            }
        }
        g[4] = 2.0 * (w[4] - 1.0);
        g
    };
    // Flat order is the sorted names: q.bias, then q.weight.
    let w0 = [W0[0] as f64, W0[1] as f64, W0[2] as f64, W0[3] as f64, 0.25];
    let gs = [grad(&w0, &A), grad(&w0, &A2)];
    let gbar: Vec<f64> = (0..5).map(|i| (gs[0][i] + gs[1][i]) / 2.0).collect();
    let mut gt_mean = [0.0; 5];
    for (d, a) in [&A, &A2].into_iter().enumerate() {
        let n = gs[d].iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut wp = [0.0; 5];
        for i in 0..5 {
            wp[i] = w0[i] + rho * gs[d][i] / (n + 1e-12) - alpha * gbar[i];
        }
        let gt = grad(&wp, a);
        for i in 0..5 {
            gt_mean[i] += gt[i] / 2.0;
        }
    }
    let want: Vec<f64> = (0..5).map(|i| w0[i] - lr * (weight * gbar[i] + (1.0 - weight) * gt_mean[i])).collect();
    let (store, set) = quad_model(&dev())?;
    let mut core = RogaCore::new(RogaParams { rho, alpha, weight }, &sgd());
    core.path = Some(GradPath::Tensor);
    core.step(&set, lr, 2, &mut |d, _| quad_loss(&store, if d == 0 { &A } else { &A2 }))?;
    let got = values(&set)?;
    let want_flat = [want[4], want[0], want[1], want[2], want[3]];
    for (g, w) in got.iter().zip(want_flat) {
        assert!((*g as f64 - w).abs() < 1e-6, "RoGA K=2 by hand: {got:?} vs {want_flat:?}");
    }
    Ok(())
}

// ---- Every method kind on Meso4: the tensor path against the host path on one device --------

fn batch(rng: &mut ChaCha8Rng, d: &Device, side: usize, ch: usize) -> Result<Batch> {
    let n = 8;
    let mut data: Vec<f32> = (0..n * 3 * side * side).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let labels: Vec<f32> = (0..n).map(|i| (i >= n / 2) as u8 as f32).collect();
    for b in n / 2..n {
        for y in 0..side / 2 {
            for x in 0..side / 2 {
                data[((b * 3 + ch) * side + y) * side + x] += 0.5;
            }
        }
    }
    Ok(Batch { images: Tensor::from_vec(data, (n, 3, side, side), d)?, labels: Tensor::from_vec(labels, n, d)? })
}

fn mp(pairs: &[(&str, ParamValue)]) -> MethodParams {
    let mut m = MethodParams::new();
    for (k, v) in pairs {
        m.set(k, v.clone());
    }
    m
}

/// Every registry kind and CS-DFD's ablations, three SGD-with-momentum steps each on a Meso4
/// detector (32 px, head of 2 layers) on the device under test, once per path: same parameters
/// after the steps (to the direction tolerance, accumulated over three steps), same trace. Both
/// paths see the same gradients on the first step (same device, same bits), so this isolates the
/// combination and the store-and-restore.
#[test]
fn every_method_kind_steps_alike_on_both_paths() -> Result<()> {
    let d = dev();
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let input = StepInput {
        original: Some(batch(&mut rng, &d, 32, 0)?),
        online: Some(batch(&mut rng, &d, 32, 1)?),
        domains: vec![("FF-DF".into(), batch(&mut rng, &d, 32, 0)?), ("FF-NT".into(), batch(&mut rng, &d, 32, 2)?)],
    };
    let s = |x: &str| ParamValue::Str(x.into());
    let methods: Vec<(&str, &str, MethodParams)> = vec![
        ("erm O+S", "erm", mp(&[("streams", s("both"))])),
        ("erm O+S probe", "erm", mp(&[("streams", s("both")), ("conflict_every", ParamValue::Int(1))])),
        ("cs-dfd", "cs-dfd", mp(&[])),
        ("cs-dfd uvs-only", "cs-dfd", mp(&[("cgr", ParamValue::Bool(false))])),
        ("cs-dfd cgr-only", "cs-dfd", mp(&[("uvs", ParamValue::Bool(false))])),
        ("pcgrad", "pcgrad", mp(&[])),
        ("cagrad", "cagrad", mp(&[])),
        ("sam", "sam", mp(&[("streams", s("both"))])),
        ("asam", "asam", mp(&[("streams", s("both")), ("rho", ParamValue::Float(0.1))])),
        ("sagm", "sagm", mp(&[("streams", s("both"))])),
        ("roga", "roga", mp(&[])),
        ("cvar-auc+sam", "cvar-auc", mp(&[("streams", s("both")), ("sam_rho", ParamValue::Float(0.05))])),
    ];
    let opt = OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 1e-4 };
    for (label, kind, params) in methods {
        let mut runs = Vec::new();
        for path in [GradPath::Host, GradPath::Tensor] {
            let pb = ParamStore::new(&d).builder(3);
            let det = Detector::new(&pb, 2, |pb| detectors::backbones::build("meso4", pb, 32))?;
            let before = values(det.params())?;
            let mut m = build_method(kind, &params, &opt, &det, 7).unwrap();
            m.set_grad_path(path);
            let traces = (0..3).map(|step| m.step(&det, &input, step, 0.05)).collect::<Result<Vec<_>>>()?;
            let after = values(det.params())?;
            let update: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            runs.push((update, traces));
        }
        let ((hu, ht), (du, dt)) = (&runs[0], &runs[1]);
        let scale = hu.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        assert!(scale > 0.0, "{label}: the parameters moved");
        let worst = hu.iter().zip(du).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
        eprintln!("{label:16} max |update difference| / max |update| = {:.2e}", worst / scale);
        // Three steps of f32 rounding of the direction, carried through the model's gradients.
        assert!(worst <= 1e-4 * scale, "{label}: updates differ by {worst} (scale {scale})");
        assert_eq!(ht[0].loss, dt[0].loss, "{label}: the first loss is the same forward");
        for (h, g) in ht.iter().zip(dt) {
            let close = |a: Option<f64>, b: Option<f64>, what: &str| match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-6), "{label} {what}: {a} vs {b}"),
                (None, None) => {}
                other => panic!("{label} {what}: {other:?}"),
            };
            close(h.cos_g1_g2, g.cos_g1_g2, "cos");
            close(h.norm_g1, g.norm_g1, "|g1|");
            close(h.norm_update, g.norm_update, "|v|");
            close(h.mu1, g.mu1, "mu1");
            close(h.cgr_rel, g.cgr_rel, "cgr_rel");
            assert!((h.loss - g.loss).abs() <= 1e-4 * h.loss.abs(), "{label}: loss {} vs {}", h.loss, g.loss);
        }
    }
    Ok(())
}
