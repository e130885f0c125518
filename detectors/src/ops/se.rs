//! The squeeze-excite scale `x * sigmoid(z)` (`x` `[N, C, H, W]`, `z` `[N, C, 1, 1]` the gate's
//! logits) as one CPU op with its own backward (f32, contiguous).
//!
//! Composed from candle ops it is a sigmoid, a `broadcast_mul` and, backward, the sigmoid's
//! gradient chain plus the broadcast product's: `dy * gate` (full size), `dy * x` (full size),
//! its reduction over `H x W` (single-threaded in candle), each with its temporaries. EfficientNet
//! runs one per block (32 in B4). This op does the forward in one parallel pass over the `N x C`
//! planes and the backward in one more: each plane's `dx = dy * gate` is written while its
//! `sum_hw(dy * x)` accumulates, and `dz = gate (1 - gate) sum_hw(dy * x)`.
//!
//! Every plane's sum is computed by one work item in a fixed order (f32 lanes within short
//! blocks, f64 across them, as the BatchNorm op's sums), so the results are bit-identical across
//! calls and thread counts. The gate is computed in f64 and rounded once.
//!
//! [`scale_by_sigmoid`] dispatches here for f32 CPU tensors and to candle's ops otherwise.
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

/// `x * sigmoid(z)` with `z` broadcast over `x`'s `H x W`: the fused op for f32 on the CPU
/// (`x` rank 4, `z` `[N, C, 1, 1]`), candle's `broadcast_mul` and `sigmoid` otherwise.
pub fn scale_by_sigmoid(x: &Tensor, z: &Tensor) -> Result<Tensor> {
    let supported = match (x.dims(), z.dims()) {
        ([n, c, _, _], [zn, zc, 1, 1]) => n == zn && c == zc,
        _ => false,
    };
    if !supported || !x.device().is_cpu() || !z.device().is_cpu() || x.dtype() != DType::F32 || z.dtype() != DType::F32
    {
        return x.broadcast_mul(&candle_nn::ops::sigmoid(z)?);
    }
    x.contiguous()?.apply_op2(&z.contiguous()?, ScaleBySigmoid)
}

struct ScaleBySigmoid;

/// The gate `sigmoid(z)`, computed in f64 and rounded once.
fn gates(z: &[f32]) -> Vec<f32> {
    z.iter().map(|&v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32).collect()
}

/// Planes per rayon work item, so that small planes (4x4 at 128 px) do not drown in scheduling.
fn min_planes(hw: usize) -> usize {
    (4096 / hw.max(1)).max(1)
}

/// Lanes of independent f32 accumulators (vectorised sums; see `ops::batchnorm`).
const LANES: usize = 16;
/// Elements summed in f32 before the partial sums move to f64.
const BLOCK: usize = 16 * LANES;

/// `sum(dy * x)` over one plane, and `dx = dy * gate` written alongside when `dx` is given.
fn plane_backward(dy: &[f32], x: &[f32], gate: f32, mut dx: Option<&mut [MaybeUninit<f32>]>) -> f64 {
    let mut total = 0f64;
    for (bi, (db, xb)) in dy.chunks(BLOCK).zip(x.chunks(BLOCK)).enumerate() {
        let mut acc = [0f32; LANES];
        let mut dc = db.chunks_exact(LANES);
        let mut xc = xb.chunks_exact(LANES);
        for (d, v) in (&mut dc).zip(&mut xc) {
            for l in 0..LANES {
                acc[l] += d[l] * v[l];
            }
        }
        for (&d, &v) in dc.remainder().iter().zip(xc.remainder()) {
            acc[0] += d * v;
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
        if let Some(dx) = dx.as_deref_mut() {
            for (o, &d) in dx[bi * BLOCK..][..db.len()].iter_mut().zip(db) {
                o.write(d * gate);
            }
        }
    }
    total
}

/// [`super::f32_slice`] for this op's error messages.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::f32_slice("squeeze-excite scale", s, l, what)
}

/// `(N x C, H x W)` of the operands, checked.
fn planes(x: &[usize], z: &[usize]) -> Result<(usize, usize)> {
    match (x, z) {
        (&[n, c, h, w], &[zn, zc, 1, 1]) if n == zn && c == zc && n * c * h * w > 0 => Ok((n * c, h * w)),
        _ => bail!("squeeze-excite scale: expected input [N, C, H, W] and gate [N, C, 1, 1], got {x:?} and {z:?}"),
    }
}

impl CustomOp2 for ScaleBySigmoid {
    fn name(&self) -> &'static str {
        "dfbench-se-scale"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (np, hw) = planes(l1.dims(), l2.dims())?;
        let x = f32_slice(s1, l1, "input")?;
        let gate = gates(f32_slice(s2, l2, "gate")?);
        let mut y: Vec<f32> = Vec::with_capacity(np * hw);
        y.spare_capacity_mut()[..np * hw]
            .par_chunks_mut(hw)
            .with_min_len(min_planes(hw))
            .enumerate()
            .for_each(|(p, yp)| {
                for (o, &v) in yp.iter_mut().zip(&x[p * hw..(p + 1) * hw]) {
                    o.write(v * gate[p]);
                }
            });
        // SAFETY: the chunks cover `0..np * hw` and each writes every element of its plane.
        unsafe { y.set_len(np * hw) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, z: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dz) = (x.track_op(), z.track_op());
        if !need_dx && !need_dz {
            return Ok((None, None));
        }
        let (np, hw) = planes(x.dims(), z.dims())?;
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        if grad.dims() != x.dims() {
            bail!("squeeze-excite scale backward: output gradient {:?} for input {:?}", grad.dims(), x.dims());
        }
        let (xs, xl) = x.storage_and_layout();
        let (zs, zl) = z.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(zs), Storage::Cpu(ds)) = (&*xs, &*zs, &*ds) else {
            bail!("squeeze-excite scale backward: operands must be on the CPU");
        };
        let xv = f32_slice(xs, xl, "input")?;
        let gate = gates(f32_slice(zs, zl, "gate")?);
        let dy = f32_slice(ds, dl, "output gradient")?;
        let len = np * hw;
        let mut dx: Vec<f32> = Vec::with_capacity(if need_dx { len } else { 0 });
        let sums: Vec<f64> = if need_dx {
            dx.spare_capacity_mut()[..len]
                .par_chunks_mut(hw)
                .with_min_len(min_planes(hw))
                .enumerate()
                .map(|(p, o)| plane_backward(&dy[p * hw..][..hw], &xv[p * hw..][..hw], gate[p], Some(o)))
                .collect()
        } else {
            (0..np)
                .into_par_iter()
                .with_min_len(min_planes(hw))
                .map(|p| plane_backward(&dy[p * hw..][..hw], &xv[p * hw..][..hw], gate[p], None))
                .collect()
        };
        let dx = if need_dx {
            // SAFETY: `plane_backward` wrote every element of every plane.
            unsafe { dx.set_len(len) };
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?)
        } else {
            None
        };
        let dz = need_dz
            .then(|| {
                let dz: Vec<f32> =
                    sums.iter().zip(&gate).map(|(&s, &g)| (g as f64 * (1.0 - g as f64) * s) as f32).collect();
                Tensor::from_vec(dz, z.shape(), &Device::Cpu)
            })
            .transpose()?;
        Ok((dx, dz))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn rand_t(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vecf(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Largest `|a - b| / (1 + |b|)`.
    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max)
    }

    /// `(y, dx, dz)` of `sum(r * scale(x, z))`, by the fused op or candle's composition.
    fn run(fused: bool, x: &Var, z: &Var, r: &Tensor) -> Result<[Vec<f32>; 3]> {
        let (xt, zt) = (x.as_tensor(), z.as_tensor());
        let y = if fused { scale_by_sigmoid(xt, zt)? } else { xt.broadcast_mul(&candle_nn::ops::sigmoid(zt)?)? };
        let g = (&y * r)?.sum_all()?.backward()?;
        Ok([vecf(&y), vecf(g.get(xt).unwrap()), vecf(g.get(zt).unwrap())])
    }

    #[test]
    fn matches_candle_broadcast_mul_of_sigmoid_forward_and_backward() -> Result<()> {
        // Odd planes, a 1x1 plane, planes longer than one f32 block (16 x 17 = 272 > 256).
        for (dims, seed) in [([2, 3, 5, 7], 1), ([3, 4, 1, 1], 2), ([2, 5, 16, 17], 3), ([1, 2, 4, 4], 4)] {
            let [n, c, _, _] = dims;
            let x = Var::from_tensor(&rand_t(&dims, seed, -2.0, 2.0))?;
            let z = Var::from_tensor(&rand_t(&[n, c, 1, 1], seed + 10, -6.0, 6.0))?;
            let r = rand_t(&dims, seed + 20, -1.0, 1.0);
            let (fused, plain) = (run(true, &x, &z, &r)?, run(false, &x, &z, &r)?);
            for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
                let err = rel_err(a, b);
                assert!(err < 1e-6, "{dims:?}: output {i} off by {err}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dims = [2, 3, 3, 5];
        let x = Var::from_tensor(&rand_t(&dims, 5, -2.0, 2.0))?;
        let z = Var::from_tensor(&rand_t(&[2, 3, 1, 1], 6, -3.0, 3.0))?;
        let r = rand_t(&dims, 7, -1.0, 1.0);
        let [_, dx, dz] = run(true, &x, &z, &r)?;
        let (xv, zv, rv) = (vecf(x.as_tensor()), vecf(z.as_tensor()), vecf(&r));
        let hw = 15;
        // The loss in f64 from plain loops.
        let f = |x: &[f64], z: &[f64]| -> f64 {
            (0..x.len()).map(|i| x[i] / (1.0 + (-z[i / hw]).exp()) * rv[i] as f64).sum()
        };
        let (x64, z64): (Vec<f64>, Vec<f64>) =
            (xv.iter().map(|&v| v as f64).collect(), zv.iter().map(|&v| v as f64).collect());
        let h = 1e-6;
        let num = |which: usize, i: usize| {
            let (mut xp, mut zp, mut xm, mut zm) = (x64.clone(), z64.clone(), x64.clone(), z64.clone());
            if which == 0 {
                xp[i] += h;
                xm[i] -= h;
            } else {
                zp[i] += h;
                zm[i] -= h;
            }
            ((f(&xp, &zp) - f(&xm, &zm)) / (2.0 * h)) as f32
        };
        let want_dx: Vec<f32> = (0..dx.len()).map(|i| num(0, i)).collect();
        let want_dz: Vec<f32> = (0..dz.len()).map(|i| num(1, i)).collect();
        assert!(rel_err(&dx, &want_dx) < 1e-5, "{dx:?} vs {want_dx:?}");
        assert!(rel_err(&dz, &want_dz) < 1e-5, "{dz:?} vs {want_dz:?}");
        Ok(())
    }

    #[test]
    fn bit_identical_across_thread_counts() -> Result<()> {
        let dims = [4, 7, 19, 23];
        let x = Var::from_tensor(&rand_t(&dims, 8, -2.0, 2.0))?;
        let z = Var::from_tensor(&rand_t(&[4, 7, 1, 1], 9, -3.0, 3.0))?;
        let r = rand_t(&dims, 10, -1.0, 1.0);
        let go = |n: usize| -> Vec<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
            let out = pool.install(|| run(true, &x, &z, &r)).unwrap();
            out.iter().map(|v| v.iter().map(|f| f.to_bits()).collect()).collect()
        };
        assert!(go(1) == go(2), "1 and 2 threads differ");
        Ok(())
    }

    #[test]
    fn gradient_only_where_needed_and_bad_shapes_fall_back_or_fail() -> Result<()> {
        // A constant input (no gradient) with a variable gate: only the gate's gradient.
        let x = rand_t(&[2, 3, 4, 4], 11, -1.0, 1.0);
        let z = Var::from_tensor(&rand_t(&[2, 3, 1, 1], 12, -1.0, 1.0))?;
        let g = scale_by_sigmoid(&x, z.as_tensor())?.sum_all()?.backward()?;
        assert!(g.get(&x).is_none() && g.get(z.as_tensor()).is_some());
        // A gate of another shape takes candle's broadcast (here: one gate per channel for all
        // samples), which agrees with the plain composition.
        let zc = rand_t(&[1, 3, 1, 1], 13, -1.0, 1.0);
        let want = x.broadcast_mul(&candle_nn::ops::sigmoid(&zc)?)?;
        assert_eq!(vecf(&scale_by_sigmoid(&x, &zc)?), vecf(&want));
        // A gate that cannot broadcast is an error, not a panic.
        assert!(scale_by_sigmoid(&x, &rand_t(&[2, 4, 1, 1], 14, -1.0, 1.0)).is_err());
        Ok(())
    }
}
