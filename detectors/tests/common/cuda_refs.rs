//! CPU references and error bounds for the CUDA ops, shared by `cuda_kernels_host.rs` (the
//! kernels emulated on the host) and `cuda_ops.rs` (the kernels on a GPU).
//!
//! Every reference value comes from the CPU ops (`ops::conv`, `ops::batchnorm`, themselves
//! checked against brute force and finite differences in `conv_op.rs` and the batchnorm unit
//! tests), with its gradients from candle's autograd of the weighted loss `sum(r * y)`.
//!
//! Tolerances are error bounds, not fitted numbers. With `u = 2^-24` (f32 unit roundoff) a sum
//! of K rounded f32 terms, in any order, is within `gamma_K = K u / (1 - K u)` of the exact
//! sum, relative to the sum of the terms' magnitudes (Higham, Accuracy and Stability, 3.1).
//! Two implementations that each meet that bound differ by at most twice it. So each compared
//! value gets `2 (gamma_K + u) * magnitude`, where the magnitude is the same computation on
//! absolute values (e.g. `conv(|x|, |w|)`), computed by the CPU op as well.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use detectors::ops::{self, batchnorm::Relu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// f32 unit roundoff.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// `gamma_K`, the relative bound of a K-term f32 sum.
pub fn summation_bound(k: usize) -> f64 {
    let ku = k as f64 * U;
    ku / (1.0 - ku)
}

pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn vecf(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|a| a.abs()).collect()
}

/// Asserts `|got - want| <= tol` element-wise; the message names the worst element. Returns the
/// largest `|got - want| / tol` (how much of the bound was used).
pub fn check(what: &str, got: &[f32], want: &[f32], tol: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    assert_eq!(tol.len(), want.len(), "{what}: tolerance length");
    let mut worst = (0.0f64, 0usize);
    for i in 0..got.len() {
        assert!(got[i].is_finite(), "{what}: element {i} is {} (expected {})", got[i], want[i]);
        let d = (got[i] as f64 - want[i] as f64).abs();
        // A zero bound (all terms zero) allows only an exact match.
        let r = if tol[i] > 0.0 { d / tol[i] as f64 } else if d == 0.0 { 0.0 } else { f64::INFINITY };
        if r > worst.0 {
            worst = (r, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} is {} but the CPU op gives {} (difference {:e} > bound {:e}, {:.2}x)",
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        tol[i],
        worst.0
    );
    worst.0
}

// ------------------------------------------------------------------------------------------
// Depthwise convolution
// ------------------------------------------------------------------------------------------

/// A depthwise convolution: input `[n, c, h, w]`, weight `[c * m, 1, k, k]`, per-side padding
/// `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug)]
pub struct DwCase {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub k: usize,
    pub s: usize,
    pub pads: [usize; 4],
    pub d: usize,
}

impl DwCase {
    pub fn out_hw(&self) -> (usize, usize) {
        let span = self.d * (self.k - 1) + 1;
        let [pt, pb, pl, pr] = self.pads;
        ((self.h + pt + pb - span) / self.s + 1, (self.w + pl + pr - span) / self.s + 1)
    }
    pub fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    pub fn w_dims(&self) -> [usize; 4] {
        [self.c * self.m, 1, self.k, self.k]
    }
}

/// Odd sizes, stride 2 on odd inputs, kernels 3/5/7, TF "SAME" asymmetric padding (more at the
/// bottom/right, and bottom-only), a channel multiplier and dilation.
pub fn dw_cases() -> Vec<DwCase> {
    let c = |n, c, (h, w), m, k, s, pads, d| DwCase { n, c, h, w, m, k, s, pads, d };
    vec![
        c(2, 3, (7, 9), 1, 3, 1, [1, 1, 1, 1], 1),
        c(2, 5, (9, 11), 1, 3, 2, [0, 1, 0, 1], 1), // SAME, k 3, s 2, odd input
        c(3, 4, (11, 8), 1, 5, 2, [1, 2, 1, 2], 1), // SAME, k 5
        c(1, 6, (13, 13), 1, 7, 2, [2, 3, 2, 3], 1), // SAME, k 7
        c(2, 3, (10, 9), 1, 5, 1, [2, 2, 2, 2], 1),
        c(2, 2, (9, 7), 2, 3, 2, [1, 1, 1, 1], 1), // channel multiplier 2
        c(1, 3, (12, 10), 1, 3, 1, [2, 2, 2, 2], 2), // dilation 2
        c(2, 3, (8, 8), 1, 3, 2, [1, 1, 0, 2], 1), // top/left and bottom/right differ per axis
        c(4, 7, (5, 6), 1, 7, 1, [3, 3, 3, 3], 1),
    ]
}

/// Inputs, CPU results and bounds of one depthwise case.
pub struct DwRef {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    /// The output gradient (`r` of the loss `sum(r * y)`).
    pub r: Vec<f32>,
    pub y: Vec<f32>,
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub y_tol: Vec<f32>,
    pub dx_tol: Vec<f32>,
    pub dw_tol: Vec<f32>,
}

/// `(y, dx, dw)` of the CPU op (`ops::conv2d_padded`, groups = C).
fn dw_cpu(case: &DwCase, x: &[f32], w: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dev = Device::Cpu;
    let (ho, wo) = case.out_hw();
    let xv = Var::from_tensor(&Tensor::from_slice(x, &case.x_dims(), &dev).unwrap()).unwrap();
    let wv = Var::from_tensor(&Tensor::from_slice(w, &case.w_dims(), &dev).unwrap()).unwrap();
    let y = ops::conv2d_padded(xv.as_tensor(), wv.as_tensor(), None, case.s, case.pads, case.d, case.c).unwrap();
    assert_eq!(y.dims(), &[case.n, case.c * case.m, ho, wo], "{case:?}");
    let rt = Tensor::from_slice(r, y.dims(), &dev).unwrap();
    let g = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    (vecf(&y), vecf(g.get(xv.as_tensor()).unwrap()), vecf(g.get(wv.as_tensor()).unwrap()))
}

pub fn dw_reference(case: &DwCase, seed: u64) -> DwRef {
    let (ho, wo) = case.out_hw();
    let nx: usize = case.x_dims().iter().product();
    let nw: usize = case.w_dims().iter().product();
    let x = rand_vec(nx, seed, -1.0, 1.0);
    let w = rand_vec(nw, seed + 1, -1.0, 1.0);
    let r = rand_vec(case.n * case.c * case.m * ho * wo, seed + 2, -1.0, 1.0);
    let (y, dx, dw) = dw_cpu(case, &x, &w, &r);
    // The same sums over |terms|: y = sum |w||x|, dx = sum |w||r|, dw = sum |r||x|.
    let (my, mdx, mdw) = dw_cpu(case, &abs(&x), &abs(&w), &abs(&r));
    let kk = case.k * case.k;
    let bound = |m: &[f32], k: usize| m.iter().map(|&v| (2.0 * (summation_bound(k) + U) * v as f64) as f32).collect();
    DwRef {
        y_tol: bound(&my, kk),
        dx_tol: bound(&mdx, case.m * kk),
        dw_tol: bound(&mdw, case.n * ho * wo),
        x,
        w,
        r,
        y,
        dx,
        dw,
    }
}

// ------------------------------------------------------------------------------------------
// BatchNorm
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub struct BnCase {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub relu: Relu,
    /// Added to every input: |mean| >> std tests the shifted statistics.
    pub offset: f32,
}

pub fn bn_cases() -> Vec<BnCase> {
    let mut v = Vec::new();
    for relu in [Relu::None, Relu::Input, Relu::Output] {
        v.push(BnCase { n: 3, c: 4, h: 5, w: 7, relu, offset: 0.0 });
        v.push(BnCase { n: 2, c: 3, h: 9, w: 11, relu, offset: 0.3 });
    }
    v.push(BnCase { n: 5, c: 3, h: 1, w: 1, relu: Relu::None, offset: 0.0 }); // 5 values per channel
    v.push(BnCase { n: 2, c: 2, h: 33, w: 31, relu: Relu::None, offset: 50.0 }); // |mean| >> std
    v.push(BnCase { n: 16, c: 3, h: 23, w: 19, relu: Relu::Output, offset: 0.0 }); // several partials
    v
}

pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.1;

/// Inputs, CPU results and bounds of one BatchNorm case, training and evaluation mode.
pub struct BnRef {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub r: Vec<f32>,
    /// Running statistics before the step (used by evaluation mode and the update).
    pub rm: Vec<f32>,
    pub rv: Vec<f32>,
    // training mode
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
    /// Running statistics after the training step's update (`layers::BatchNorm2d`'s rule).
    pub rm_new: Vec<f32>,
    pub rv_new: Vec<f32>,
    pub y_tol: Vec<f32>,
    pub mean_tol: Vec<f32>,
    pub var_tol: Vec<f32>,
    pub dx_tol: Vec<f32>,
    pub dgamma_tol: Vec<f32>,
    pub dbeta_tol: Vec<f32>,
    // evaluation mode (running statistics rm, rv)
    pub y_eval: Vec<f32>,
    pub dx_eval: Vec<f32>,
    pub dgamma_eval: Vec<f32>,
    pub dbeta_eval: Vec<f32>,
    pub y_eval_tol: Vec<f32>,
    pub dx_eval_tol: Vec<f32>,
    pub dgamma_eval_tol: Vec<f32>,
    pub dbeta_eval_tol: Vec<f32>,
}

impl BnCase {
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    pub fn count(&self) -> usize {
        self.n * self.h * self.w
    }
}

fn act_in(relu: Relu, v: f32) -> f32 {
    if relu == Relu::Input { v.max(0.0) } else { v }
}

pub fn bn_reference(case: &BnCase, seed: u64) -> BnRef {
    let dev = Device::Cpu;
    let [n, c, h, w] = case.dims();
    let hw = h * w;
    let len = n * c * hw;
    let x: Vec<f32> = rand_vec(len, seed, -1.0, 1.0).iter().map(|v| v + case.offset).collect();
    let gamma = rand_vec(c, seed + 1, 0.5, 1.5);
    let beta = rand_vec(c, seed + 2, -0.5, 0.5);
    let r = rand_vec(len, seed + 3, -1.0, 1.0);
    let rm = rand_vec(c, seed + 4, -0.2, 0.2).iter().map(|v| v + case.offset).collect::<Vec<_>>();
    let rv = rand_vec(c, seed + 5, 0.5, 1.5);
    let t = |v: &[f32], d: &[usize]| Tensor::from_slice(v, d, &dev).unwrap();
    let xv = Var::from_tensor(&t(&x, &case.dims())).unwrap();
    let gv = Var::from_tensor(&t(&gamma, &[c])).unwrap();
    let bv = Var::from_tensor(&t(&beta, &[c])).unwrap();
    let rt = t(&r, &case.dims());

    // Training mode.
    let (y, mean, var) =
        ops::batchnorm::batch_norm_train_with(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), BN_EPS, case.relu)
            .unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = |v: &Var| vecf(grads.get(v.as_tensor()).unwrap());
    let (dx, dgamma, dbeta) = (gr(&xv), gr(&gv), gr(&bv));
    let (y, mean, var) = (vecf(&y), vecf(&mean), vecf(&var));
    let rmv = Var::from_tensor(&t(&rm, &[c])).unwrap();
    let rvv = Var::from_tensor(&t(&rv, &[c])).unwrap();
    ops::batchnorm::update_running_stats((&rmv, &rvv), (t(&mean, &[c]), t(&var, &[c])), BN_MOMENTUM, case.count())
        .unwrap();
    let (rm_new, rv_new) = (vecf(rmv.as_tensor()), vecf(rvv.as_tensor()));

    // Evaluation mode.
    let ye = ops::batchnorm::batch_norm_eval_with(
        xv.as_tensor(),
        gv.as_tensor(),
        bv.as_tensor(),
        (&t(&rm, &[c]), &t(&rv, &[c])),
        BN_EPS,
        case.relu,
    )
    .unwrap();
    let grads = (&ye * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = |v: &Var| vecf(grads.get(v.as_tensor()).unwrap());
    let (dx_eval, dgamma_eval, dbeta_eval) = (gr(&xv), gr(&gv), gr(&bv));
    let y_eval = vecf(&ye);

    // Bounds, per channel from f64 statistics of the data (see the module docs). An f32 partial
    // sums at most 256 terms on either side (the CPU op: 16 per lane per block; the kernels:
    // `partials` gives each thread <= 256), later sums are in f64.
    let g256 = summation_bound(256);
    let cnt = case.count() as f64;
    let mut y_tol = vec![0f32; len];
    let mut dx_tol = vec![0f32; len];
    let mut y_eval_tol = vec![0f32; len];
    let mut dx_eval_tol = vec![0f32; len];
    let (mut mean_tol, mut var_tol) = (vec![0f32; c], vec![0f32; c]);
    let (mut dgamma_tol, mut dbeta_tol) = (vec![0f32; c], vec![0f32; c]);
    let (mut dgamma_eval_tol, mut dbeta_eval_tol) = (vec![0f32; c], vec![0f32; c]);
    for ci in 0..c {
        let idx: Vec<usize> = (0..n).flat_map(|b| (0..hw).map(move |i| (b * c + ci) * hw + i)).collect();
        let v: Vec<f64> = idx.iter().map(|&i| act_in(case.relu, x[i]) as f64).collect();
        let shift = v[0];
        let m = v.iter().sum::<f64>() / cnt;
        let var_c = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / cnt;
        let is = 1.0 / (var_c + BN_EPS).sqrt();
        let s = gamma[ci] as f64 * is;
        let b = beta[ci] as f64;
        let e_abs = v.iter().map(|a| (a - shift).abs()).sum::<f64>() / cnt; // E|v - shift|
        let e_sq = v.iter().map(|a| (a - shift).powi(2)).sum::<f64>() / cnt;
        // Statistics: sums of (v - shift) and (v - shift)^2, each within gamma_256 of the sum of
        // magnitudes (plus one rounding of each square), on both sides.
        let dm = 2.0 * g256 * e_abs;
        let dvar = 2.0 * (g256 + U) * e_sq + 2.0 * (m - shift).abs() * dm;
        mean_tol[ci] = (dm + 2.0 * U * m.abs()) as f32;
        var_tol[ci] = (dvar + 2.0 * U * var_c) as f32;
        // inv_std's relative error: half the variance's relative error (of var + eps).
        let dis_rel = 0.5 * dvar / (var_c + BN_EPS);
        // Output gradients at the normalisation, |g| (an output ReLU only zeroes some).
        let gabs: Vec<f64> = idx.iter().map(|&i| r[i].abs() as f64).collect();
        let sum_g = gabs.iter().sum::<f64>();
        let sum_gxc = gabs.iter().zip(&v).map(|(g, a)| g * (a - m).abs()).sum::<f64>();
        dbeta_tol[ci] = (2.0 * (g256 + U) * sum_g) as f32;
        dgamma_tol[ci] = (2.0 * (g256 + U) * is * sum_gxc + is * sum_g * dm + dis_rel * is * sum_gxc) as f32;
        // Evaluation mode: fixed f32 statistics, so only the f32 sums of the gradients and the
        // few roundings per element remain.
        let is_e = 1.0 / (rv[ci] as f64 + BN_EPS).sqrt();
        let sum_gxc_e = gabs.iter().zip(&v).map(|(g, a)| g * (a - rm[ci] as f64).abs()).sum::<f64>();
        dbeta_eval_tol[ci] = (2.0 * (g256 + U) * sum_g) as f32;
        dgamma_eval_tol[ci] = (2.0 * (g256 + U) * is_e * sum_gxc_e) as f32;
        let k1 = s.abs();
        for (j, &i) in idx.iter().enumerate() {
            let xc = (v[j] - m).abs();
            // y = (v - mean) * scale + beta: mean and scale errors, then 3 roundings.
            y_tol[i] = (k1 * dm + k1 * xc * dis_rel + 4.0 * U * (k1 * xc + b.abs())) as f32;
            // dx = k1 g + k2 (v - m) + k3 with k2 = -k1 is^2 S2 / cnt, k3 = -k1 S1 / cnt; each
            // term's error from its sum and the statistics, then 5 roundings of the result.
            let t1 = k1 * gabs[j];
            let t2 = k1 * is * is * sum_gxc / cnt * xc;
            let t3 = k1 * sum_g / cnt;
            dx_tol[i] = (2.0 * (g256 + U) * (t2 + t3)
                + (t1 + 3.0 * t2 + t3) * dis_rel * 2.0
                + k1 * is * is * sum_gxc / cnt * dm
                + 6.0 * U * (t1 + t2 + t3)) as f32;
            let s_e = gamma[ci] as f64 * is_e;
            let xc_e = (v[j] - rm[ci] as f64).abs();
            y_eval_tol[i] = (4.0 * U * (s_e * xc_e + b.abs())) as f32;
            dx_eval_tol[i] = (4.0 * U * s_e * gabs[j]) as f32;
        }
    }
    BnRef {
        x,
        gamma,
        beta,
        r,
        rm,
        rv,
        y,
        mean,
        var,
        dx,
        dgamma,
        dbeta,
        rm_new,
        rv_new,
        y_tol,
        mean_tol,
        var_tol,
        dx_tol,
        dgamma_tol,
        dbeta_tol,
        y_eval,
        dx_eval,
        dgamma_eval,
        dbeta_eval,
        y_eval_tol,
        dx_eval_tol,
        dgamma_eval_tol,
        dbeta_eval_tol,
    }
}
