//! The custom CPU convolution against three independent references: a brute-force f64
//! convolution (forward and both gradients written as plain loops), candle's own `conv2d` with its
//! backward, and central finite differences. Plus the gradient skips, determinism, dispatch and
//! errors.
use candle_core::{DType, Device, Tensor, Var, backprop::GradStore};
use detectors::ops::{
    self,
    conv::{Conv2dParams, conv2d_cpu},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    o: usize,
    (kh, kw): (usize, usize),
    s: usize,
    p: usize,
    d: usize,
    g: usize,
) -> Case {
    Case { n, c, h, w, o, kh, kw, s, p, d, g }
}

impl Case {
    fn params(&self) -> Conv2dParams {
        Conv2dParams { stride: self.s, padding: self.p, dilation: self.d, groups: self.g }
    }
    fn x_dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.h, self.w)
    }
    fn w_dims(&self) -> (usize, usize, usize, usize) {
        (self.o, self.c / self.g, self.kh, self.kw)
    }
    fn out_hw(&self) -> (usize, usize) {
        let span = |k: usize| self.d * (k - 1) + 1;
        (
            (self.h + 2 * self.p - span(self.kh)) / self.s + 1,
            (self.w + 2 * self.p - span(self.kw)) / self.s + 1,
        )
    }
}

/// Odd shapes: non-square images and kernels, channel counts that are multiples of nothing,
/// strides 1-3, padding 0-3, dilation 2, groups 1 / 2 / depthwise (with and without a channel
/// multiplier), batches 1 and 3, kernels 1, 3, 5, 7, pointwise (grouped too) and strided 1x1.
const CASES: &[Case] = &[
    case(1, 3, (7, 9), 5, (3, 3), 1, 1, 1, 1),
    case(3, 5, (11, 8), 7, (3, 3), 2, 0, 1, 1),
    case(3, 4, (10, 13), 6, (5, 5), 3, 2, 1, 2),
    case(3, 6, (9, 12), 6, (3, 3), 1, 3, 2, 6),
    case(3, 7, (8, 6), 11, (1, 1), 1, 0, 1, 1),
    case(1, 6, (9, 9), 4, (1, 1), 2, 0, 1, 2),
    case(3, 3, (15, 14), 5, (7, 7), 2, 3, 1, 1),
    case(3, 4, (12, 10), 9, (3, 5), 1, 2, 1, 1),
    case(1, 3, (10, 11), 6, (3, 3), 2, 1, 1, 3),
    case(3, 8, (13, 11), 8, (5, 5), 2, 2, 1, 8),
    case(3, 5, (14, 12), 4, (3, 3), 1, 2, 2, 1),
    case(1, 1, (9, 7), 3, (5, 3), 1, 1, 1, 1),
    case(3, 5, (6, 17), 3, (7, 7), 3, 3, 1, 1),
    case(1, 4, (8, 8), 10, (3, 3), 3, 0, 2, 2),
    case(3, 6, (5, 7), 4, (1, 1), 1, 0, 1, 2),
    // Two row bands per sample (grouped + dilated, strided).
    case(3, 12, (60, 50), 8, (3, 3), 1, 2, 2, 2),
    case(2, 4, (90, 70), 6, (5, 5), 2, 1, 1, 1),
    // At least 32 output channels per group on small planes: the weight gradient over the whole
    // batch (`ops::conv::batch_dw`); 3x3, pointwise, strided and grouped.
    case(3, 6, (7, 9), 40, (3, 3), 1, 1, 1, 1),
    case(2, 16, (5, 6), 48, (1, 1), 1, 0, 1, 1),
    case(3, 8, (9, 9), 64, (3, 3), 2, 1, 1, 2),
];

fn rand_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn tensor(v: &[f32], dims: (usize, usize, usize, usize)) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Brute-force convolution in f64: `(y, dx, dw)` for upstream gradient `r`.
fn brute(cs: &Case, x: &[f32], w: &[f32], r: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = cs.out_hw();
    let (cg, og) = (cs.c / cs.g, cs.o / cs.g);
    let mut y = vec![0f64; cs.n * cs.o * ho * wo];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    for n in 0..cs.n {
        for o in 0..cs.o {
            let grp = o / og;
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((n * cs.o + o) * ho + oy) * wo + ox;
                    for ci in 0..cg {
                        let c = grp * cg + ci;
                        for ki in 0..cs.kh {
                            for kj in 0..cs.kw {
                                let iy = (oy * cs.s + ki * cs.d) as isize - cs.p as isize;
                                let ix = (ox * cs.s + kj * cs.d) as isize - cs.p as isize;
                                if iy < 0 || ix < 0 || iy >= cs.h as isize || ix >= cs.w as isize {
                                    continue;
                                }
                                let xi = ((n * cs.c + c) * cs.h + iy as usize) * cs.w + ix as usize;
                                let wi = ((o * cg + ci) * cs.kh + ki) * cs.kw + kj;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += r[yi] as f64 * w[wi] as f64;
                                dw[wi] += r[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    got.iter().zip(want).fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs())) / scale
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Runs `conv` (ours or candle's) on variables, back-propagates `sum(y * r)`, returns `(y, dx, dw)`.
fn run_with_grads(
    conv: impl Fn(&Tensor, &Tensor) -> Tensor,
    x: &[f32],
    w: &[f32],
    r: &[f32],
    cs: &Case,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let xv = Var::from_tensor(&tensor(x, cs.x_dims())).unwrap();
    let wv = Var::from_tensor(&tensor(w, cs.w_dims())).unwrap();
    let y = conv(xv.as_tensor(), wv.as_tensor());
    let rt = Tensor::from_slice(r, y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    (flat(&y), flat(grads.get(&xv).unwrap()), flat(grads.get(&wv).unwrap()))
}

fn ours(cs: Case) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    move |x, w| conv2d_cpu(x, w, cs.params()).unwrap()
}

fn data(cs: &Case, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (ho, wo) = cs.out_hw();
    let x = rand_vec(&mut rng, cs.n * cs.c * cs.h * cs.w);
    let w = rand_vec(&mut rng, cs.o * (cs.c / cs.g) * cs.kh * cs.kw);
    let r = rand_vec(&mut rng, cs.n * cs.o * ho * wo);
    (x, w, r)
}

const TOL: f64 = 1e-4;

#[test]
fn matches_brute_force_forward_and_gradients() {
    for (i, cs) in CASES.iter().enumerate() {
        let (x, w, r) = data(cs, 100 + i as u64);
        let (y_ref, dx_ref, dw_ref) = brute(cs, &x, &w, &r);
        let (y, dx, dw) = run_with_grads(ours(*cs), &x, &w, &r, cs);
        let (ey, ex, ew) = (rel_err(&y, &y_ref), rel_err(&dx, &dx_ref), rel_err(&dw, &dw_ref));
        assert!(ey < TOL && ex < TOL && ew < TOL, "{cs:?}: rel err y {ey:e} dx {ex:e} dw {ew:e}");
    }
}

/// candle's conv2d is a second, independent implementation. Its backward errors out on some
/// shapes (it derives the transposed convolution's output padding from the height only, so
/// strided non-square inputs fail with a shape mismatch); there only the forward is compared.
fn compare_with_candle(cs: &Case, seed: u64) -> bool {
    let (x, w, r) = data(cs, seed);
    let p = cs.params();
    let xv = Var::from_tensor(&tensor(&x, cs.x_dims())).unwrap();
    let wv = Var::from_tensor(&tensor(&w, cs.w_dims())).unwrap();
    let y_c = xv.as_tensor().conv2d(wv.as_tensor(), p.padding, p.stride, p.dilation, p.groups).unwrap();
    let (y, dx, dw) = run_with_grads(ours(*cs), &x, &w, &r, cs);
    let ey = rel_err(&y, &to_f64(&flat(&y_c)));
    assert!(ey < TOL, "{cs:?}: forward rel err {ey:e} against candle");
    let rt = Tensor::from_slice(&r, y_c.shape(), &Device::Cpu).unwrap();
    let Ok(grads) = (&y_c * &rt).unwrap().sum_all().unwrap().backward() else {
        return false;
    };
    let (dx_c, dw_c) = (flat(grads.get(&xv).unwrap()), flat(grads.get(&wv).unwrap()));
    let (ex, ew) = (rel_err(&dx, &to_f64(&dx_c)), rel_err(&dw, &to_f64(&dw_c)));
    assert!(ex < TOL && ew < TOL, "{cs:?}: rel err against candle dx {ex:e} dw {ew:e}");
    true
}

#[test]
fn matches_candle_conv2d_and_its_backward() {
    let ran: Vec<bool> =
        CASES.iter().enumerate().map(|(i, cs)| compare_with_candle(cs, 200 + i as u64)).collect();
    let with_grads = ran.iter().filter(|b| **b).count();
    // candle 0.11.1 fails on 4 of the 20 (strided, non-square); guard against the comparison
    // silently degrading to forward-only.
    assert!(with_grads >= CASES.len() - 4, "candle's backward ran on only {with_grads} cases");
}

/// Larger shapes that exercise several row bands per sample, several batch chunks with uneven
/// sizes, and the multi-threaded paths; candle is the reference (the brute force would be slow).
#[test]
fn matches_candle_on_banded_and_chunked_shapes() {
    let cases = [
        case(9, 16, (40, 36), 12, (3, 3), 1, 1, 1, 1),
        case(5, 24, (23, 29), 20, (5, 5), 2, 2, 1, 2),
        case(7, 20, (31, 30), 20, (3, 3), 1, 1, 1, 20),
        case(10, 32, (17, 19), 48, (1, 1), 1, 0, 1, 1),
    ];
    for (i, cs) in cases.iter().enumerate() {
        assert!(compare_with_candle(cs, 300 + i as u64), "{cs:?}: candle's backward failed");
    }
}

/// Central differences of `L = sum(conv(x, w) * r)` through our forward. `L` is linear in each
/// operand, so the difference quotient is exact up to rounding even for a large step: a step of
/// 0.5 keeps the f32 rounding of `L` far below the tolerance.
#[test]
fn gradients_match_finite_differences() {
    let tiny = [
        case(1, 2, (5, 4), 3, (3, 3), 1, 1, 1, 1),
        case(2, 4, (6, 5), 4, (3, 3), 2, 1, 1, 2),
        case(1, 3, (7, 6), 3, (3, 3), 1, 2, 2, 3),
        case(2, 3, (4, 5), 2, (1, 1), 1, 0, 1, 1),
        case(2, 3, (4, 5), 32, (3, 3), 1, 1, 1, 1),
    ];
    let eps = 0.5f32;
    for (i, cs) in tiny.iter().enumerate() {
        let (x, w, r) = data(cs, 400 + i as u64);
        let (_, dx, dw) = run_with_grads(ours(*cs), &x, &w, &r, cs);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let y = flat(&conv2d_cpu(&tensor(x, cs.x_dims()), &tensor(w, cs.w_dims()), cs.params()).unwrap());
            y.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let fd = |v: &[f32], j: usize, f: &dyn Fn(&[f32]) -> f64| {
            let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
            plus[j] += eps;
            minus[j] -= eps;
            (f(&plus) - f(&minus)) / (2.0 * eps as f64)
        };
        let fd_dx: Vec<f64> = (0..x.len()).map(|j| fd(&x, j, &|xp| loss(xp, &w))).collect();
        let fd_dw: Vec<f64> = (0..w.len()).map(|j| fd(&w, j, &|wp| loss(&x, wp))).collect();
        let (ex, ew) = (rel_err(&dx, &fd_dx), rel_err(&dw, &fd_dw));
        assert!(ex < 1e-4 && ew < 1e-4, "{cs:?}: finite differences rel err dx {ex:e} dw {ew:e}");
    }
}

/// The input image is a plain tensor: no gradient is produced for it, the weight's is still right.
/// Symmetrically a frozen (non-variable) weight gets none while the input's is right.
#[test]
fn skips_gradients_nobody_needs() {
    for cs in [CASES[0], CASES[3], CASES[4]] {
        let (x, w, r) = data(&cs, 500);
        let (_, dx_ref, dw_ref) = brute(&cs, &x, &w, &r);
        let backward = |xt: &Tensor, wt: &Tensor| -> GradStore {
            let y = ops::conv2d(xt, wt, None, cs.s, cs.p, cs.d, cs.g).unwrap();
            let rt = Tensor::from_slice(&r, y.shape(), &Device::Cpu).unwrap();
            (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let image = tensor(&x, cs.x_dims());
        let wv = Var::from_tensor(&tensor(&w, cs.w_dims())).unwrap();
        let grads = backward(&image, wv.as_tensor());
        assert!(grads.get(&image).is_none(), "{cs:?}: gradient computed for a non-variable input");
        let ew = rel_err(&flat(grads.get(&wv).unwrap()), &dw_ref);
        assert!(ew < TOL, "{cs:?}: weight gradient rel err {ew:e} without input gradient");

        let xv = Var::from_tensor(&image).unwrap();
        let frozen = tensor(&w, cs.w_dims());
        let grads = backward(xv.as_tensor(), &frozen);
        assert!(grads.get(&frozen).is_none(), "{cs:?}: gradient computed for a frozen weight");
        let ex = rel_err(&flat(grads.get(&xv).unwrap()), &dx_ref);
        assert!(ex < TOL, "{cs:?}: input gradient rel err {ex:e} without weight gradient");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|a| a.to_bits()).collect()
}

/// Bit-identical results across calls and across thread counts (1, 2, 3 rayon threads).
#[test]
fn deterministic_across_calls_and_thread_counts() {
    let cases = [
        case(11, 12, (33, 27), 10, (3, 3), 1, 1, 1, 1),
        case(6, 16, (21, 20), 16, (5, 5), 2, 2, 1, 16),
        case(9, 8, (16, 16), 24, (1, 1), 1, 0, 1, 2),
        // The batch weight gradient: the gemm crate's own threads split it.
        case(7, 24, (8, 8), 96, (3, 3), 1, 1, 1, 1),
    ];
    for (i, cs) in cases.iter().enumerate() {
        let (x, w, r) = data(cs, 600 + i as u64);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (y, dx, dw) = run_with_grads(ours(*cs), &x, &w, &r, cs);
                (bits(&y), bits(&dx), bits(&dw))
            })
        };
        let first = run(2);
        assert!(first == run(2), "{cs:?}: two calls differ");
        assert!(first == run(1), "{cs:?}: 1 thread differs from 2");
        assert!(first == run(3), "{cs:?}: 3 threads differ from 2");
    }
}

#[test]
fn dispatcher_adds_bias_and_falls_back_for_other_dtypes() {
    let cs = CASES[2];
    let (x, w, r) = data(&cs, 700);
    let bias: Vec<f32> = (0..cs.o).map(|i| i as f32 * 0.25 - 1.0).collect();
    let (y_ref, _, _) = brute(&cs, &x, &w, &r);
    let (ho, wo) = cs.out_hw();
    let want: Vec<f64> =
        y_ref.iter().enumerate().map(|(i, v)| v + bias[(i / (ho * wo)) % cs.o] as f64).collect();
    let b = Tensor::from_slice(&bias, cs.o, &Device::Cpu).unwrap();
    let (xt, wt) = (tensor(&x, cs.x_dims()), tensor(&w, cs.w_dims()));
    let y = ops::conv2d(&xt, &wt, Some(&b), cs.s, cs.p, cs.d, cs.g).unwrap();
    assert!(rel_err(&flat(&y), &want) < TOL);

    // f64 goes to candle's convolution and agrees.
    let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let y64 = ops::conv2d(&to64(&xt), &to64(&wt), Some(&to64(&b)), cs.s, cs.p, cs.d, cs.g).unwrap();
    assert_eq!(y64.dtype(), DType::F64);
    let y64 = flat(&y64.to_dtype(DType::F32).unwrap());
    assert!(rel_err(&y64, &want) < TOL);
}

/// A strided view (here a transposed-and-back input) is accepted and its gradient flows back.
#[test]
fn non_contiguous_input_is_handled() {
    let cs = CASES[1];
    let (x, w, r) = data(&cs, 800);
    let (y_ref, dx_ref, _) = brute(&cs, &x, &w, &r);
    // Store x as [N, C, W, H] and view it as [N, C, H, W].
    let xt = tensor(&x, cs.x_dims()).transpose(2, 3).unwrap().contiguous().unwrap();
    let xv = Var::from_tensor(&xt).unwrap();
    let view = xv.as_tensor().transpose(2, 3).unwrap();
    assert!(!view.is_contiguous());
    let y = conv2d_cpu(&view, &tensor(&w, cs.w_dims()), cs.params()).unwrap();
    assert!(rel_err(&flat(&y), &y_ref) < TOL);
    let rt = Tensor::from_slice(&r, y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&xv).unwrap().transpose(2, 3).unwrap();
    assert!(rel_err(&flat(&dx), &dx_ref) < TOL);
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = Tensor::zeros((2, 6, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let msg = conv2d_cpu(&x, &w, Conv2dParams::default()).unwrap_err().to_string();
    assert!(msg.contains("groups"), "{msg}");
    let w = Tensor::zeros((4, 6, 11, 11), DType::F32, &Device::Cpu).unwrap();
    let msg = conv2d_cpu(&x, &w, Conv2dParams::default()).unwrap_err().to_string();
    assert!(msg.contains("smaller than the dilated kernel"), "{msg}");
    let w = Tensor::zeros((4, 6, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let bad = Conv2dParams { stride: 0, ..Default::default() };
    assert!(conv2d_cpu(&x, &w, bad).is_err());
    let x3 = Tensor::zeros((6, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_cpu(&x3, &w, Conv2dParams::default()).is_err());
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(conv2d_cpu(&x64, &w, Conv2dParams::default()).is_err());
}

/// Convolutions launched from inside an outer rayon loop (several models or streams at once)
/// share the per-thread scratch buffers safely and give the same bits as sequential calls.
#[test]
fn nested_in_outer_parallel_loop() {
    use rayon::prelude::*;
    let cs = case(4, 6, (20, 18), 8, (3, 3), 1, 1, 1, 2);
    let inputs: Vec<_> = (0..6).map(|i| data(&cs, 900 + i)).collect();
    let run = |(x, w, r): &(Vec<f32>, Vec<f32>, Vec<f32>)| {
        let (y, dx, dw) = run_with_grads(ours(cs), x, w, r, &cs);
        (bits(&y), bits(&dx), bits(&dw))
    };
    let sequential: Vec<_> = inputs.iter().map(run).collect();
    let parallel: Vec<_> = inputs.par_iter().map(run).collect();
    assert!(sequential == parallel);
}
