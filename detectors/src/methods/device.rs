//! The two-stream combination rules (CS-DFD's UVS + CGR, CAGrad, PCGrad) on flat gradient
//! tensors on the parameters' device (`gradvec::device`): the same formulas as
//! `methods::cs_dfd` (the reference), `methods::fused` and `methods::combine`, written as candle
//! tensor ops so that a GPU combines its own gradients and only the scalars the closed forms need
//! (Gram entries, norms) cross to the host, in two transfers per step.
//!
//! `g1`, `g2` are flat f64 tensors (`gradvec::device::gather`); every direction comes back as a
//! flat f64 tensor, rounded to f32 by `gradvec::device::split` on its way to the optimizer. The
//! agreement with the host path is stated in `gradvec::device` and tested in
//! `tests/methods_device.rs`.
use std::ops::Range;

use candle_core::{Result, Tensor};

use super::combine::{Pair, UvsSolution, uvs_gram, uvs_two_fixed};
use super::cs_dfd::{HeadRule, TwoStepNumbers};
use crate::gradvec::device::{dot_term, lin2, norm_sq_f32, outside, slice, splice, sums};

/// A two-stream step's direction and trace numbers, as the host rules return them.
#[derive(Debug, Clone)]
pub struct TwoDirection {
    /// Flat f64 tensor on the gradients' device.
    pub v: Tensor,
    pub nums: TwoStepNumbers,
    /// CGR's relative contribution on the head (`cs_dfd::cgr_relative`), when CGR ran.
    pub cgr_rel: Option<f64>,
}

/// The whole-vector statistics every rule traces: `||g1||^2`, `g1 . g2`, `||g2||^2`.
fn full_terms(g1: &Tensor, g2: &Tensor) -> Result<Vec<Tensor>> {
    Ok(vec![g1.sqr()?, dot_term(g1, g2)?, g2.sqr()?])
}

/// UVS's closed-form statistics (methods.md 2.1) over the flat vectors `x`, `y` as device
/// reductions: the Gram entries, `A = ||x - y||^2`, `B' = y . (x - y)` and
/// `D = ||y - (B'/A)(x - y)||^2` from the residual vector (not by cancellation), as
/// `Pair::from_vectors` forms them. The ratio `B'/A` stays on the device, so `D` costs no extra
/// transfer: its term joins the others. Returns the terms to sum, in `Pair` order (g11, g12,
/// g22, A, B', D).
fn pair_terms(x: &Tensor, y: &Tensor) -> Result<Vec<Tensor>> {
    let d = x.sub(y)?;
    let a = d.sqr()?.sum_all()?;
    let bdot = y.mul(&d)?.sum_all()?;
    // Where A = 0 the ratio is not finite and D is unused (the closed form's A ~ 0 branch);
    // `pair_from` zeroes it as the host does.
    let t = bdot.div(&a)?;
    let r = y.sub(&d.broadcast_mul(&t)?)?;
    Ok(vec![x.sqr()?, dot_term(x, y)?, y.sqr()?, a, bdot, r.sqr()?])
}

fn pair_from(s: &[f64]) -> Pair {
    let (g11, g12, g22, a, _bdot, d) = (s[0], s[1], s[2], s[3], s[4], s[5]);
    Pair { g11, g12, g22, a, d: if a > 0.0 { d } else { 0.0 } }
}

fn numbers(full: &[f64], norm_update: f64, mu: Option<[f64; 2]>) -> TwoStepNumbers {
    let (n1, n2) = (full[0].sqrt(), full[2].sqrt());
    TwoStepNumbers {
        norm_g1: n1,
        norm_g2: n2,
        cos_g1_g2: full[1] / (n1.max(1e-12) * n2.max(1e-12)),
        norm_update,
        mu,
    }
}

/// CS-DFD's direction (Algorithm 1, steps 2-3; `cs_dfd::reference`): `head_rule` on `head`, UVS
/// with `c` on every other index when `uvs_c = Some(c)`, else `g1 + g2` there.
pub fn cs_dfd_direction(
    g1: &Tensor,
    g2: &Tensor,
    head: Option<&Range<usize>>,
    uvs_c: Option<f64>,
    head_rule: HeadRule,
) -> Result<TwoDirection> {
    let n = g1.dim(0)?;
    let h = head.cloned().unwrap_or(n..n);
    if h.start > h.end || h.end > n || g2.dim(0)? != n {
        candle_core::bail!("CS-DFD on gradients of {n} and {} values with head {h:?}", g2.dim(0)?);
    }
    // Zero-length tensors are avoided throughout (a CUDA launch over no elements is an error):
    // without a head there are no head terms, and UVS's statistics cover the whole vector.
    let head_parts = if h.is_empty() { None } else { Some((slice(g1, &h)?, slice(g2, &h)?)) };
    // Transfer 1: whole-vector and head norms, and UVS's statistics outside the head.
    let mut terms = full_terms(g1, g2)?;
    if let Some((h1, h2)) = &head_parts {
        terms.extend([h1.sqr()?, h2.sqr()?]);
    }
    let n_head_terms = if head_parts.is_some() { 2 } else { 0 };
    let with_uvs = uvs_c.is_some() && h.len() < n;
    if with_uvs {
        terms.extend(pair_terms(&outside(g1, head)?, &outside(g2, head)?)?);
    }
    let s = sums(&terms)?;
    let (head11, head22) = if head_parts.is_some() { (s[3], s[4]) } else { (0.0, 0.0) };
    let (coef, mu) = match uvs_c {
        Some(c) => {
            let pair = if with_uvs {
                pair_from(&s[3 + n_head_terms..9 + n_head_terms])
            } else {
                Pair { g11: 0.0, g12: 0.0, g22: 0.0, a: 0.0, d: 0.0 }
            };
            let sol = uvs_two_fixed(&pair, c);
            (sol.coef, Some(sol.mu))
        }
        None => ([1.0, 1.0], None),
    };
    let lin = lin2(coef[0], g1, coef[1], g2)?;
    let (v, head_sum_and_term) = match &head_parts {
        None => (lin, None),
        Some((h1, h2)) => {
            let sum_h = h1.add(h2)?;
            let (head_v, term) = match head_rule {
                HeadRule::Sum => (sum_h.clone(), None),
                HeadRule::Cgr { tau } => {
                    // eq. 24: g1_p + g2_p - gamma g1_p g2_p (g1_p + g2_p), gamma = tau / (|g1_p| |g2_p|)
                    // with the norms guarded like PyTorch's cosine.
                    let gamma = tau / (head11.sqrt().max(1e-8) * head22.sqrt().max(1e-8));
                    let term = h1.mul(h2)?.mul(&sum_h)?.affine(gamma, 0.0)?;
                    (sum_h.sub(&term)?, Some(term))
                }
            };
            (splice(&lin, &h, &head_v)?, term.map(|t| (sum_h, t)))
        }
    };
    // Transfer 2: the update's norm (of the f32 values the optimizer gets) and CGR's share.
    let v32 = v.to_dtype(candle_core::DType::F32)?.to_dtype(candle_core::DType::F64)?;
    let mut terms = vec![v32.sqr()?];
    if let Some((sum_h, term)) = &head_sum_and_term {
        terms.extend([term.sqr()?, sum_h.sqr()?]);
    }
    let s2 = sums(&terms)?;
    let cgr_rel = head_sum_and_term.as_ref().and_then(|_| (s2[2] > 0.0).then(|| (s2[1] / s2[2]).sqrt()));
    Ok(TwoDirection { nums: numbers(&s[..3], s2[0].sqrt(), mu), v, cgr_rel })
}

/// CAGrad in LibMTL's convention over all parameters (`combine::cagrad_reference`): UVS's
/// weights from the Gram entries, `v = a1 g1 + a2 g2` with `a_j = coef_j / (2 (1 + c^2))`.
pub fn cagrad_direction(g1: &Tensor, g2: &Tensor, c: f64) -> Result<TwoDirection> {
    let mut terms = full_terms(g1, g2)?;
    terms.extend(pair_terms(g1, g2)?);
    let s = sums(&terms)?;
    let sol = uvs_two_fixed(&pair_from(&s[3..9]), c);
    let a = sol.coef.map(|a| a / (2.0 * (1.0 + c * c)));
    let v = lin2(a[0], g1, a[1], g2)?;
    let nu = norm_sq_f32(&v)?.sqrt();
    Ok(TwoDirection { nums: numbers(&s[..3], nu, Some(sol.mu)), v, cgr_rel: None })
}

/// The Gram matrix (row-major `K x K`) of `grads` as device reductions, one transfer: the input
/// of UVS's projected-gradient solve for `K > 2` (`combine::gram` on the host).
pub fn gram(grads: &[&Tensor]) -> Result<Vec<f64>> {
    let kk = grads.len();
    let mut terms = Vec::with_capacity(kk * (kk + 1) / 2);
    for i in 0..kk {
        for j in i..kk {
            terms.push(dot_term(grads[i], grads[j])?);
        }
    }
    let s = sums(&terms)?;
    let mut g = vec![0.0; kk * kk];
    let mut it = s.into_iter();
    for i in 0..kk {
        for j in i..kk {
            let v = it.next().expect("one sum per pair");
            g[i * kk + j] = v;
            g[j * kk + i] = v;
        }
    }
    Ok(g)
}

/// UVS for `K` gradients (methods.md 2.1, sum convention): the Gram matrix on the device, the
/// dual's projected-gradient solve on the host (`combine::uvs_gram`: K x K numbers), and
/// `v* = sum_j coef_j g_j` on the device.
pub fn uvs_many(grads: &[&Tensor], c: f64) -> Result<(Tensor, UvsSolution)> {
    let kk = grads.len();
    if kk == 0 {
        candle_core::bail!("UVS needs at least one gradient");
    }
    let sol = uvs_gram(&gram(grads)?, kk, c);
    let mut v = grads[0].affine(sol.coef[0], 0.0)?;
    for (g, &a) in grads.iter().zip(&sol.coef).skip(1) {
        v = v.add(&g.affine(a, 0.0)?)?;
    }
    Ok((v, sol))
}

/// PCGrad (Yu et al. 2020; `combine::pcgrad`): `v = sum_i g_i'`, where `g_i'` starts at `g_i`
/// and, for each `j` in `orders[i]`, loses its component along the original `g_j` when
/// `g_i' . g_j < 0`. One transfer per projection test.
pub fn pcgrad(grads: &[&Tensor], orders: &[Vec<usize>]) -> Result<Tensor> {
    let kk = grads.len();
    if orders.len() != kk || kk == 0 {
        candle_core::bail!("PCGrad: {} orders for {kk} tasks", orders.len());
    }
    let norms_sq = sums(&grads.iter().map(|g| g.sqr()).collect::<Result<Vec<_>>>()?)?;
    let mut out: Option<Tensor> = None;
    for i in 0..kk {
        let mut gi = grads[i].clone();
        for &j in &orders[i] {
            if j == i {
                continue;
            }
            let d = sums(&[dot_term(&gi, grads[j])?])?[0];
            // Sign tested strictly before dividing: a zero g_j never gets here.
            if d < 0.0 {
                gi = gi.add(&grads[j].affine(-d / norms_sq[j], 0.0)?)?;
            }
        }
        out = Some(match out {
            None => gi,
            Some(o) => o.add(&gi)?,
        });
    }
    Ok(out.expect("at least one task"))
}

/// PCGrad on two streams with the trace numbers `TwoStream` records.
pub fn pcgrad_two(g1: &Tensor, g2: &Tensor, orders: &[Vec<usize>; 2]) -> Result<TwoDirection> {
    let full = sums(&full_terms(g1, g2)?)?;
    let v = pcgrad(&[g1, g2], orders)?;
    let nu = norm_sq_f32(&v)?.sqrt();
    Ok(TwoDirection { nums: numbers(&full, nu, None), v, cgr_rel: None })
}
