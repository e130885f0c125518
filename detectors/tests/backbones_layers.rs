//! Layer and pooling tests against hand computations, brute force and finite differences.
use candle_core::{DType, Device, Result, Tensor, Var};
use detectors::layers::{Activation, BatchNorm2d, ConvInit, Dropout, LayerNorm, SqueezeExcite, leaky_relu};
use detectors::ops::pool::{max_pool2d, max_pool2d_composed};
use detectors::{Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Distinct values (a shuffled grid with gaps of 0.01) so no window has a tie.
fn tie_free(dims: (usize, usize, usize, usize), seed: u64, dtype: DType) -> Result<Tensor> {
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - n as f64 * 0.005).collect();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

fn randn(dims: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    a.to_dtype(DType::F64)?.sub(&b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Brute-force PyTorch max-pool on nested loops, for the forward values.
fn brute_pool(
    x: &[f64],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (w + 2 * p - k) / s + 1;
    let mut out = Vec::new();
    for bc in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let (y, xx) =
                            ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            m = m.max(x[bc * h * w + y as usize * w + xx as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

#[test]
fn max_pool_forward_matches_brute_force_and_composition() -> Result<()> {
    let dims = (2, 3, 9, 8);
    for &(k, s, p) in &[(3, 2, 1), (3, 2, 0), (2, 2, 0), (4, 4, 0), (3, 1, 1), (5, 3, 2)] {
        let x = tie_free(dims, 1, DType::F64)?;
        let y = max_pool2d(&x, k, s, p)?;
        let want = brute_pool(&x.flatten_all()?.to_vec1::<f64>()?, dims, k, s, p);
        assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, want, "k{k} s{s} p{p}");
        let yc = max_pool2d_composed(&x, k, s, p)?;
        assert_eq!(y.dims(), yc.dims());
        assert_eq!(max_abs_diff(&y, &yc)?, 0.0);
    }
    // Hand case: 1x1x3x3, 3x3/2 pad 1 -> 2x2 windows of the padded grid.
    let x = Tensor::new(&[[[[1f32, 5., 2.], [7., 3., 4.], [0., 8., 6.]]]], &Device::Cpu)?;
    let y = max_pool2d(&x, 3, 2, 1)?;
    assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![7., 5., 8., 8.]);
    Ok(())
}

#[test]
fn max_pool_backward_finite_differences() -> Result<()> {
    let dims = (2, 2, 7, 6);
    let n = 2 * 2 * 7 * 6;
    for &(k, s, p) in &[(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0)] {
        let x0 = tie_free(dims, 7, DType::F64)?;
        let ho = (7 + 2 * p - k) / s + 1;
        let wo = (6 + 2 * p - k) / s + 1;
        let r = randn(&[2, 2, ho, wo], 3)?.to_dtype(DType::F64)?;
        let loss =
            |x: &Tensor| -> Result<f64> { (max_pool2d(x, k, s, p)? * &r)?.sum_all()?.to_scalar::<f64>() };
        let xv = Var::from_tensor(&x0)?;
        let l = (max_pool2d(xv.as_tensor(), k, s, p)? * &r)?.sum_all()?;
        let g = l.backward()?.get(xv.as_tensor()).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
        let base = x0.flatten_all()?.to_vec1::<f64>()?;
        let h = 1e-4; // far below the 0.01 gap between values: no argmax changes
        for i in 0..n {
            let mut up = base.clone();
            up[i] += h;
            let mut dn = base.clone();
            dn[i] -= h;
            let fd = (loss(&Tensor::from_vec(up, dims, &Device::Cpu)?)?
                - loss(&Tensor::from_vec(dn, dims, &Device::Cpu)?)?)
                / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-8, "k{k} s{s} p{p} i{i}: fd {fd} vs {}", g[i]);
        }
        // The composed fallback (non-CPU path) must agree on tie-free input.
        let xc = Var::from_tensor(&x0)?;
        let lc = (max_pool2d_composed(xc.as_tensor(), k, s, p)? * &r)?.sum_all()?;
        let gc = lc.backward()?.get(xc.as_tensor()).expect("gradient").clone();
        assert!(max_abs_diff(&gc, &Tensor::from_vec(g.clone(), dims, &Device::Cpu)?)? < 1e-12);
    }
    Ok(())
}

#[test]
fn max_pool_matches_candle_when_kernel_equals_stride() -> Result<()> {
    let x0 = tie_free((2, 3, 8, 8), 11, DType::F32)?;
    for k in [2, 4] {
        let a = Var::from_tensor(&x0)?;
        let b = Var::from_tensor(&x0)?;
        let r = randn(&[2, 3, 8 / k, 8 / k], 5)?;
        let ya = max_pool2d(a.as_tensor(), k, k, 0)?;
        let yb = b.as_tensor().max_pool2d(k)?;
        assert_eq!(max_abs_diff(&ya, &yb)?, 0.0);
        let ga = (ya * &r)?.sum_all()?.backward()?.get(a.as_tensor()).unwrap().clone();
        let gb = (yb * &r)?.sum_all()?.backward()?.get(b.as_tensor()).unwrap().clone();
        // candle 0.11's own backward multiplies by the window's share of maxima (`avg_pool` of
        // the max mask, 1/k^2 for a unique maximum) instead of dividing by their count, so its
        // gradient is k^2 times too small; ours is the finite-difference-checked one above.
        assert!(max_abs_diff(&ga, &(gb * (k * k) as f64)?)? < 1e-6);
        // Each output's gradient lands once: the totals agree.
        assert!((ga.sum_all()?.to_scalar::<f32>()? - r.sum_all()?.to_scalar::<f32>()?).abs() < 1e-4);
    }
    Ok(())
}

#[test]
fn max_pool_ties_send_gradient_to_first_maximum_only() -> Result<()> {
    let x = Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
    let g = max_pool2d(x.as_tensor(), 2, 2, 0)?.sum_all()?.backward()?;
    assert_eq!(g.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?, vec![1., 0., 0., 0.]);
    assert!(max_pool2d(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?, 3, 1, 0).is_err());
    assert!(max_pool2d(&Tensor::zeros((1, 2, 2), DType::F32, &Device::Cpu)?, 2, 2, 0).is_err());
    Ok(())
}

fn channel_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    // Per channel: mean, biased var, unbiased var, from plain loops.
    let (b, c, h, w) = x.dims4()?;
    let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let n = (b * h * w) as f64;
    let (mut mean, mut var_b, mut var_u) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..b)
            .flat_map(|bi| (0..h * w).map(move |i| (bi, i)))
            .map(|(bi, i)| v[(bi * c + ch) * h * w + i])
            .collect();
        let m = vals.iter().sum::<f64>() / n;
        let ss = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>();
        mean[ch] = m;
        var_b[ch] = ss / n;
        var_u[ch] = ss / (n - 1.0);
    }
    Ok((mean, var_b, var_u))
}

#[test]
fn batch_norm_modes_and_running_stats() -> Result<()> {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let bn = BatchNorm2d::new(&pb.pp("bn"), 3)?;
    let x = ((randn(&[4, 3, 5, 5], 1)? * 3.0)? + 1.5)?;
    let (mean, var_b, var_u) = channel_stats(&x)?;
    let rm = |bn: &BatchNorm2d| bn.running_mean.as_tensor().to_vec1::<f32>();
    let rv = |bn: &BatchNorm2d| bn.running_var.as_tensor().to_vec1::<f32>();

    // TrainFrozenStats: batch statistics, running stats untouched.
    let y_frozen = bn.forward(&x, Mode::TrainFrozenStats)?;
    assert_eq!(rm(&bn)?, vec![0.0; 3]);
    assert_eq!(rv(&bn)?, vec![1.0; 3]);
    let (ym, yv, _) = channel_stats(&y_frozen)?;
    for ch in 0..3 {
        assert!(ym[ch].abs() < 1e-5);
        assert!((yv[ch] - var_b[ch] / (var_b[ch] + 1e-5)).abs() < 1e-4);
    }
    // Eval before any update: running stats (0, 1), i.e. y = x / sqrt(1 + eps).
    let y_eval0 = bn.forward(&x, Mode::Eval)?;
    assert!(max_abs_diff(&y_eval0, &(&x / (1.0f64 + 1e-5).sqrt())?)? < 1e-5);
    assert_eq!(rm(&bn)?, vec![0.0; 3]);

    // Train: same output as frozen, running stats move with momentum 0.1 and the unbiased var.
    let y_train = bn.forward(&x, Mode::Train)?;
    assert!(max_abs_diff(&y_train, &y_frozen)? < 1e-6);
    for ch in 0..3 {
        assert!((rm(&bn)?[ch] as f64 - 0.1 * mean[ch]).abs() < 1e-5);
        assert!((rv(&bn)?[ch] as f64 - (0.9 + 0.1 * var_u[ch])).abs() < 1e-4);
    }
    // A second Train step compounds: r2 = 0.9 r1 + 0.1 s.
    let r1 = rm(&bn)?;
    bn.forward(&x, Mode::Train)?;
    for ch in 0..3 {
        assert!((rm(&bn)?[ch] as f64 - (0.9 * r1[ch] as f64 + 0.1 * mean[ch])).abs() < 1e-5);
    }
    // Eval uses the running statistics (and affine parameters).
    let (m2, v2) = (rm(&bn)?, rv(&bn)?);
    let y_eval = bn.forward(&x, Mode::Eval)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let xv = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    for (i, (&yi, &xi)) in y_eval.iter().zip(&xv).enumerate() {
        let ch = (i / 25) % 3;
        let want = (xi - m2[ch] as f64) / (v2[ch] as f64 + 1e-5).sqrt();
        assert!((yi - want).abs() < 1e-4, "{i}: {yi} vs {want}");
    }
    // Eval leaves the statistics alone.
    assert_eq!(rm(&bn)?, m2);
    // A single value per channel cannot be normalised in training mode.
    assert!(bn.forward(&randn(&[1, 3, 1, 1], 2)?, Mode::Train).is_err());
    Ok(())
}

#[test]
fn batch_norm_gradient_flows_to_affine_and_input() -> Result<()> {
    // d/dbias of sum(y) is the element count per channel; d/dx of sum(y) is ~0 (normalisation).
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let bn = BatchNorm2d::with_eps(&pb.pp("bn"), 2, 1e-3)?;
    assert_eq!(bn.eps, 1e-3);
    let x = Var::from_tensor(&randn(&[3, 2, 4, 4], 9)?)?;
    let g = bn.forward(x.as_tensor(), Mode::Train)?.sum_all()?.backward()?;
    assert_eq!(g.get(&bn.bias).unwrap().to_vec1::<f32>()?, vec![48.0, 48.0]);
    assert!(
        g.get(x.as_tensor()).unwrap().abs()?.max_keepdim(0)?.flatten_all()?.max(0)?.to_scalar::<f32>()?
            < 1e-4
    );
    // No gradient reaches the running statistics.
    assert!(g.get(bn.running_mean.as_tensor()).is_none());
    Ok(())
}

/// The squeeze-excite block (its scale as one op on the CPU) against the same block from
/// candle's own ops (`conv2d`, `silu`, `sigmoid`, `broadcast_mul`): output and the gradients of
/// the input and all four parameters.
#[test]
fn squeeze_excite_matches_candle_ops() -> Result<()> {
    for (dims, rd, seed) in [([3, 12, 5, 7], 3, 1), ([2, 8, 1, 1], 2, 2), ([4, 16, 4, 4], 4, 3)] {
        let pb = ParamStore::new(&Device::Cpu).builder(seed);
        let se = SqueezeExcite::new(&pb.pp("se"), dims[1], rd, Activation::Silu, ConvInit::TorchDefault)?;
        let x = Var::from_tensor(&randn(&dims, seed + 10)?)?;
        let r = randn(&dims, seed + 20)?;
        let (cr, ce) = (&se.conv_reduce, &se.conv_expand);
        let (wr, br, we, be) = (&cr.weight, cr.bias.as_ref().unwrap(), &ce.weight, ce.bias.as_ref().unwrap());
        let run = |ours: bool| -> Result<Vec<Tensor>> {
            let y = if ours {
                se.forward(x.as_tensor())?
            } else {
                let b4 = |b: &Tensor| b.reshape((1, b.dim(0).unwrap(), 1, 1));
                let s = x.as_tensor().mean_keepdim((2, 3))?;
                let s = s.conv2d(wr, 0, 1, 1, 1)?.broadcast_add(&b4(br)?)?.silu()?;
                let z = s.conv2d(we, 0, 1, 1, 1)?.broadcast_add(&b4(be)?)?;
                x.as_tensor().broadcast_mul(&candle_nn::ops::sigmoid(&z)?)?
            };
            let g = (&y * &r)?.sum_all()?.backward()?;
            let mut out = vec![y];
            for t in [x.as_tensor(), wr, br, we, be] {
                out.push(g.get(t).unwrap().clone());
            }
            Ok(out)
        };
        let (ours, theirs) = (run(true)?, run(false)?);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.dims(), b.dims(), "{dims:?}: output {i}");
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
            let err = max_abs_diff(a, b)?;
            assert!(err <= 1e-5 * (1.0 + scale), "{dims:?}: output {i} off by {err} (scale {scale})");
        }
    }
    Ok(())
}

#[test]
fn dropout_is_seeded_scaled_and_off_in_eval() -> Result<()> {
    let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu)?;
    let make = |seed| -> Result<Dropout> { Dropout::new(&ParamStore::new(&Device::Cpu).builder(seed), 0.25) };
    let (a, b, c) = (make(1)?, make(1)?, make(2)?);
    let ya = a.forward(&x, Mode::Train)?.flatten_all()?.to_vec1::<f32>()?;
    let yb = b.forward(&x, Mode::Train)?.flatten_all()?.to_vec1::<f32>()?;
    let yc = c.forward(&x, Mode::Train)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(ya, yb);
    assert_ne!(ya, yc);
    let zeros = ya.iter().filter(|&&v| v == 0.0).count() as f64 / ya.len() as f64;
    assert!((zeros - 0.25).abs() < 0.03, "drop fraction {zeros}");
    assert!(ya.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // The next call draws a fresh mask.
    assert_ne!(a.forward(&x, Mode::Train)?.flatten_all()?.to_vec1::<f32>()?, ya);
    assert_eq!(a.forward(&x, Mode::Eval)?.flatten_all()?.to_vec1::<f32>()?, vec![1.0; 4096]);
    assert!(Dropout::new(&ParamStore::new(&Device::Cpu).builder(0), 1.0).is_err());
    Ok(())
}

#[test]
fn layer_norm_and_leaky_relu_by_hand() -> Result<()> {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let ln = LayerNorm::new(&pb.pp("ln"), 4, 1e-6)?;
    let x = Tensor::new(&[[1f32, 2., 3., 4.], [2., 2., 2., 6.]], &Device::Cpu)?;
    let y = ln.forward(&x)?.to_vec2::<f32>()?;
    // Row 1: mean 2.5, var 1.25; row 2: mean 3, var 3.
    let s1 = 1.25f32.sqrt();
    let s2 = 3f32.sqrt();
    let want = [[-1.5 / s1, -0.5 / s1, 0.5 / s1, 1.5 / s1], [-1. / s2, -1. / s2, -1. / s2, 3. / s2]];
    for r in 0..2 {
        for c in 0..4 {
            assert!((y[r][c] - want[r][c]).abs() < 1e-5);
        }
    }
    let l = leaky_relu(&Tensor::new(&[-2f32, 0., 3.], &Device::Cpu)?, 0.1)?.to_vec1::<f32>()?;
    assert_eq!(l, vec![-0.2, 0.0, 3.0]);
    Ok(())
}
