//! The CUDA custom ops (`ops::cuda`: depthwise convolution, fused BatchNorm, cuDNN convolution,
//! 1x1 convolution as matmul) against the CPU ops, forward and every gradient, on odd shapes:
//! odd sizes, stride 2 on odd inputs, TF "SAME" asymmetric padding, 1 < groups < C, dilation.
//! Bounds: see `common/cuda_refs.rs` (f32 summation bounds from the same computation on
//! absolute values), plus TF32's input rounding where it is on.
//!
//! Only compiled with `--features cuda`, and then it needs a GPU: each test fails, saying so,
//! when no CUDA device can be opened. `nvrtc_compiles_the_kernels` needs only libnvrtc.
#![cfg(feature = "cuda")]

#[path = "common/cuda_refs.rs"]
mod refs;

use std::sync::Mutex;

use candle_core::{Device, Tensor, Var};
use detectors::ops::{self, batchnorm::Relu};
use refs::{BN_EPS, BN_MOMENTUM, U, check, rand_vec, summation_bound, vecf};

/// TF32 is process-wide: tests that set it hold this lock.
static TF32: Mutex<()> = Mutex::new(());

fn gpu(test: &str) -> Device {
    detectors::device::open("cuda").unwrap_or_else(|e| {
        panic!("{test}: no CUDA device could be opened ({e}); this test binary is built with --features cuda and needs a GPU")
    })
}

fn var(v: &[f32], dims: &[usize], dev: &Device) -> Var {
    Var::from_tensor(&Tensor::from_slice(v, dims, dev).unwrap()).unwrap()
}

#[test]
fn nvrtc_compiles_the_kernels() {
    for cc in ["80", "90"] {
        let ptx = ops::cuda::compile_ptx(cc).unwrap_or_else(|e| panic!("NVRTC, compute_{cc}: {e}"));
        for k in [
            "dfb_dw_fwd",
            "dfb_dw_bwd_data",
            "dfb_dw_bwd_weight_partial",
            "dfb_rows_sum",
            "dfb_bn_stats_partial",
            "dfb_bn_stats_final",
            "dfb_bn_fixed_stats",
            "dfb_bn_apply",
            "dfb_bn_bwd_partial",
            "dfb_bn_bwd_final",
            "dfb_bn_bwd_dx",
            "dfb_bn_running_update",
        ] {
            assert!(ptx.contains(&format!(".entry {k}(")), "compute_{cc}: no kernel {k} in the PTX");
        }
    }
}

#[test]
fn depthwise_op_matches_the_cpu_op() {
    let dev = gpu("depthwise");
    for (i, case) in refs::dw_cases().iter().enumerate() {
        let rf = refs::dw_reference(case, 100 + 10 * i as u64);
        let x = var(&rf.x, &case.x_dims(), &dev);
        let w = var(&rf.w, &case.w_dims(), &dev);
        let y = ops::conv2d_padded(x.as_tensor(), w.as_tensor(), None, case.s, case.pads, case.d, case.c).unwrap();
        let r = Tensor::from_slice(&rf.r, y.dims(), &dev).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let used = [
            check(&format!("{case:?} forward"), &vecf(&y), &rf.y, &rf.y_tol),
            check(&format!("{case:?} input gradient"), &vecf(g.get(x.as_tensor()).unwrap()), &rf.dx, &rf.dx_tol),
            check(&format!("{case:?} weight gradient"), &vecf(g.get(w.as_tensor()).unwrap()), &rf.dw, &rf.dw_tol),
        ];
        eprintln!("depthwise {case:?}: fraction of the bound used (y, dx, dw) {used:.3?}");
    }
}

#[test]
fn batchnorm_op_matches_the_cpu_op_in_both_modes() {
    let dev = gpu("batchnorm");
    for (i, case) in refs::bn_cases().iter().enumerate() {
        let rf = refs::bn_reference(case, 500 + 10 * i as u64);
        let c = case.c;
        let x = var(&rf.x, &case.dims(), &dev);
        let gm = var(&rf.gamma, &[c], &dev);
        let bt = var(&rf.beta, &[c], &dev);
        let r = Tensor::from_slice(&rf.r, &case.dims(), &dev).unwrap();
        let what = |s: &str| format!("{case:?}: {s}");

        let (y, mean, var_b) =
            ops::batchnorm::batch_norm_train_with(x.as_tensor(), gm.as_tensor(), bt.as_tensor(), BN_EPS, case.relu)
                .unwrap();
        assert!(mean.device().is_cuda() && var_b.device().is_cuda(), "statistics must stay on the device");
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        check(&what("training output"), &vecf(&y), &rf.y, &rf.y_tol);
        check(&what("batch mean"), &vecf(&mean), &rf.mean, &rf.mean_tol);
        check(&what("batch variance"), &vecf(&var_b), &rf.var, &rf.var_tol);
        check(&what("training input gradient"), &vecf(g.get(x.as_tensor()).unwrap()), &rf.dx, &rf.dx_tol);
        check(&what("training weight gradient"), &vecf(g.get(gm.as_tensor()).unwrap()), &rf.dgamma, &rf.dgamma_tol);
        check(&what("training bias gradient"), &vecf(g.get(bt.as_tensor()).unwrap()), &rf.dbeta, &rf.dbeta_tol);

        // Running statistics, in place: the CPU's f32 expression applied to the device's batch
        // statistics, bit for bit.
        let rm = var(&rf.rm, &[c], &dev);
        let rv = var(&rf.rv, &[c], &dev);
        let (gmean, gvar) = (vecf(&mean), vecf(&var_b));
        ops::batchnorm::update_running_stats((&rm, &rv), (mean, var_b), BN_MOMENTUM, case.count()).unwrap();
        let cpu_rm = Var::from_slice(&rf.rm, c, &Device::Cpu).unwrap();
        let cpu_rv = Var::from_slice(&rf.rv, c, &Device::Cpu).unwrap();
        let t = |v: &[f32]| Tensor::from_slice(v, c, &Device::Cpu).unwrap();
        ops::batchnorm::update_running_stats((&cpu_rm, &cpu_rv), (t(&gmean), t(&gvar)), BN_MOMENTUM, case.count())
            .unwrap();
        assert_eq!(vecf(rm.as_tensor()), vecf(cpu_rm.as_tensor()), "{}", what("running mean"));
        assert_eq!(vecf(rv.as_tensor()), vecf(cpu_rv.as_tensor()), "{}", what("running variance"));

        let stats = (&Tensor::from_slice(&rf.rm, c, &dev).unwrap(), &Tensor::from_slice(&rf.rv, c, &dev).unwrap());
        let ye =
            ops::batchnorm::batch_norm_eval_with(x.as_tensor(), gm.as_tensor(), bt.as_tensor(), stats, BN_EPS, case.relu)
                .unwrap();
        let g = (&ye * &r).unwrap().sum_all().unwrap().backward().unwrap();
        check(&what("evaluation output"), &vecf(&ye), &rf.y_eval, &rf.y_eval_tol);
        check(&what("evaluation input gradient"), &vecf(g.get(x.as_tensor()).unwrap()), &rf.dx_eval, &rf.dx_eval_tol);
        check(
            &what("evaluation weight gradient"),
            &vecf(g.get(gm.as_tensor()).unwrap()),
            &rf.dgamma_eval,
            &rf.dgamma_eval_tol,
        );
        check(&what("evaluation bias gradient"), &vecf(g.get(bt.as_tensor()).unwrap()), &rf.dbeta_eval, &rf.dbeta_eval_tol);
    }
}

/// A dense or grouped convolution: `(n, c, (h, w), o, k, stride, pad, dilation, groups)`.
type ConvCase = (usize, usize, (usize, usize), usize, usize, usize, usize, usize, usize);

const CONV_CASES: [ConvCase; 8] = [
    (2, 3, (9, 11), 5, 3, 1, 1, 1, 1),
    (2, 3, (13, 13), 8, 7, 2, 3, 1, 1), // ResNet-like stem, odd input
    (2, 6, (9, 7), 4, 3, 2, 1, 1, 2),   // groups 2, stride 2, odd sizes
    (1, 8, (10, 10), 12, 5, 1, 2, 1, 4), // 1 < groups < C
    (2, 4, (8, 9), 6, 3, 1, 2, 2, 2),   // dilation 2
    (2, 8, (9, 9), 16, 1, 2, 0, 1, 1),  // strided 1x1 (ResNet downsample)
    (3, 7, (5, 6), 9, 1, 1, 0, 1, 1),   // 1x1 stride 1: the matmul path
    (2, 6, (7, 7), 6, 3, 1, 1, 1, 3),   // grouped, 2 channels per group
];

/// `(y, dx, dw)` of a convolution on `dev` through `ops::conv2d`.
fn conv_run(cs: ConvCase, x: &[f32], w: &[f32], r: &[f32], dev: &Device) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, c, (h, wd), o, k, s, p, d, g) = cs;
    let xv = var(x, &[n, c, h, wd], dev);
    let wv = var(w, &[o, c / g, k, k], dev);
    let y = ops::conv2d(xv.as_tensor(), wv.as_tensor(), None, s, p, d, g).unwrap();
    let rt = Tensor::from_slice(r, y.dims(), dev).unwrap();
    let gr = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    (vecf(&y), vecf(gr.get(xv.as_tensor()).unwrap()), vecf(gr.get(wv.as_tensor()).unwrap()))
}

#[test]
fn cudnn_and_matmul_convolutions_match_the_cpu_op() {
    let _lock = TF32.lock().unwrap_or_else(|e| e.into_inner());
    let dev = gpu("cudnn");
    for tf32 in [false, true] {
        detectors::device::set_tf32(tf32);
        for (i, &cs) in CONV_CASES.iter().enumerate() {
            let (n, c, (h, wd), o, k, s, p, d, g) = cs;
            let span = d * (k - 1) + 1;
            let (ho, wo) = ((h + 2 * p - span) / s + 1, (wd + 2 * p - span) / s + 1);
            let seed = 300 + 10 * i as u64;
            let x = rand_vec(n * c * h * wd, seed, -1.0, 1.0);
            let w = rand_vec(o * (c / g) * k * k, seed + 1, -1.0, 1.0);
            let r = rand_vec(n * o * ho * wo, seed + 2, -1.0, 1.0);
            let cpu = conv_run(cs, &x, &w, &r, &Device::Cpu);
            let ab = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
            let mag = conv_run(cs, &ab(&x), &ab(&w), &ab(&r), &Device::Cpu);
            let cuda = conv_run(cs, &x, &w, &r, &dev);
            // Terms per value: y sums C/g k^2 products, dx O/g k^2, dw N Ho Wo. TF32 rounds both
            // factors of each product to 10 mantissa bits (relative 2^-11 each), so a product is
            // within 2^-10 (+ 2^-22) of exact. cuDNN may pick Winograd or FFT algorithms, whose
            // transforms magnify the rounding error; the factor 8 allows for that growth (Lavin &
            // Gray 2016 measure fp32 Winograd F(2x2,3x3) errors within ~an order of magnitude of
            // direct convolution). Without TF32 and for the direct/GEMM algorithms the plain
            // summation bound applies, well inside this.
            let t32 = if tf32 { 2f64.powi(-10) + 2f64.powi(-22) } else { 0.0 };
            let bound =
                |m: &[f32], k: usize| m.iter().map(|&v| (8.0 * (2.0 * (summation_bound(k) + U) + t32) * v as f64) as f32).collect::<Vec<_>>();
            let what = |s: &str| format!("{cs:?} tf32={tf32}: {s}");
            let used = [
                check(&what("forward"), &cuda.0, &cpu.0, &bound(&mag.0, c / g * k * k)),
                check(&what("input gradient"), &cuda.1, &cpu.1, &bound(&mag.1, o / g * k * k)),
                check(&what("weight gradient"), &cuda.2, &cpu.2, &bound(&mag.2, n * ho * wo)),
            ];
            eprintln!("conv {cs:?} tf32={tf32}: fraction of the bound used {used:.3?}");
        }
    }
    detectors::device::set_tf32(true);
}

/// The ReLU folding flags reach the kernels: relu(bn(x)) must differ from bn(x) (a wrong flag
/// would make the two cases above agree by accident only if the data had no negatives).
#[test]
fn folded_relu_variants_differ_on_the_device() {
    let dev = gpu("relu flags");
    let x = Tensor::from_slice(&rand_vec(2 * 3 * 5 * 5, 1, -2.0, 2.0), (2, 3, 5, 5), &dev).unwrap();
    let g = Tensor::ones(3, candle_core::DType::F32, &dev).unwrap();
    let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
    let run = |relu| vecf(&ops::batchnorm::batch_norm_train_with(&x, &g, &b, BN_EPS, relu).unwrap().0);
    let (none, out) = (run(Relu::None), run(Relu::Output));
    assert!(none.iter().any(|&v| v < 0.0) && out.iter().all(|&v| v >= 0.0));
}
