//! Gradient combination rules on flat vectors (methods.md sections 2 and 3): UVS (closed form
//! for two gradients, projected gradient on the simplex for more), CAGrad in LibMTL's
//! convention, PCGrad and CGR's conflict term. Pure functions: every dot product in f64.
//!
//! CS-DFD's step reads as the paper's Algorithm 1 in `methods::cs_dfd`; `methods::fused` is its
//! fast path (one read of g1 and g2, one write of the update, bit-stable lane-wise sums).
use std::ops::Range;

use crate::gradvec::{dot, dot_outside};

/// The solution of UVS's dual `min_{mu in simplex} g_w . g0 + k ||g_w||` (sum convention,
/// `k = c ||g0||`), and the primal update `v* = sum_j coef_j g_j`.
#[derive(Debug, Clone, PartialEq)]
pub struct UvsSolution {
    pub mu: Vec<f64>,
    /// Optimal dual value, equal to `min_j g_j . v*` (strong duality).
    pub f_star: f64,
    /// `||g_w|| / (2 c ||g0||)`; infinite when the update falls back to `g0` (`||g0|| = 0`,
    /// `g_w = 0`).
    pub lambda: f64,
    /// `v* = sum_j coef_j g_j`, `coef_j = 1 + k mu_j / ||g_w||`.
    pub coef: Vec<f64>,
}

/// Relative size under which `||g1 - g2||^2` counts as zero (the two gradients coincide).
const SAME_REL: f64 = 1e-12;

/// The sufficient statistics of two gradients for the closed form, each a sum over the flat
/// indices outside `skip`, accumulated in f64: the Gram entries, `A = ||g1 - g2||^2` and
/// `D = ||g2 - (B/A)(g1 - g2)||^2` (computed from the residual vector, not by cancellation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub g11: f64,
    pub g12: f64,
    pub g22: f64,
    pub a: f64,
    pub d: f64,
}

impl Pair {
    /// Statistics over the flat indices outside `skip`; works on f32 buffers (the training
    /// path) and on f64 vectors (reference checks) alike.
    pub fn from_vectors<T: Copy + Into<f64>>(g1: &[T], g2: &[T], skip: Option<&Range<usize>>) -> Self {
        assert_eq!(g1.len(), g2.len(), "UVS on gradients of different lengths");
        let segs = match skip {
            None => [0..g1.len(), g1.len()..g1.len()],
            Some(r) => [0..r.start, r.end..g1.len()],
        };
        let (mut g11, mut g12, mut g22, mut a, mut bdot) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for s in segs.clone() {
            for i in s {
                let (x, y): (f64, f64) = (g1[i].into(), g2[i].into());
                g11 += x * x;
                g12 += x * y;
                g22 += y * y;
                let di = x - y;
                a += di * di;
                bdot += y * di;
            }
        }
        let mut d = 0f64;
        if a > 0.0 {
            let t = bdot / a;
            for s in segs {
                for i in s {
                    let (x, y): (f64, f64) = (g1[i].into(), g2[i].into());
                    let r = y - t * (x - y);
                    d += r * r;
                }
            }
        }
        Self { g11, g12, g22, a, d }
    }
}

/// UVS for two gradients in closed form (methods.md 2.1).
pub fn uvs_two(p: &Pair, c: f64) -> UvsSolution {
    let s = uvs_two_fixed(p, c);
    UvsSolution { mu: s.mu.to_vec(), f_star: s.f_star, lambda: s.lambda, coef: s.coef.to_vec() }
}

/// [`UvsSolution`] for `K = 2` in fixed-size arrays (no allocation in the training step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UvsTwo {
    pub mu: [f64; 2],
    pub f_star: f64,
    pub lambda: f64,
    pub coef: [f64; 2],
}

/// [`uvs_two`] without allocation.
pub fn uvs_two_fixed(p: &Pair, c: f64) -> UvsTwo {
    let Pair { g11, g12, g22, a, d } = *p;
    let n0 = (g11 + 2.0 * g12 + g22).max(0.0).sqrt();
    let k = c * n0;
    if n0 == 0.0 || k == 0.0 {
        return UvsTwo { mu: [0.5, 0.5], f_star: 0.0, lambda: f64::INFINITY, coef: [1.0, 1.0] };
    }
    let b = g12 - g22;
    let gw_sq_gram =
        |w: f64| (w * w * g11 + 2.0 * w * (1.0 - w) * g12 + (1.0 - w) * (1.0 - w) * g22).max(0.0);
    let (w, gw_sq) = if a <= SAME_REL * (g11 + g22) {
        (0.5, gw_sq_gram(0.5))
    } else {
        let r = -(g11 - g22) / k;
        let sa = a.sqrt();
        let w = if r >= sa {
            1.0
        } else if r <= -sa {
            0.0
        } else {
            (r * (d / (a * (a - r * r))).sqrt() - b / a).clamp(0.0, 1.0)
        };
        let u = w + b / a;
        (w, (d + a * u * u).max(0.0))
    };
    let gw = gw_sq.sqrt();
    let gw_dot_g0 = w * (g11 + g12) + (1.0 - w) * (g12 + g22);
    let f_star = gw_dot_g0 + k * gw;
    if gw <= 1e-30 {
        return UvsTwo { mu: [w, 1.0 - w], f_star, lambda: f64::INFINITY, coef: [1.0, 1.0] };
    }
    UvsTwo {
        mu: [w, 1.0 - w],
        f_star,
        lambda: gw / (2.0 * k),
        coef: [1.0 + k * w / gw, 1.0 + k * (1.0 - w) / gw],
    }
}

/// Euclidean projection onto the probability simplex (Duchi et al. 2008), in place.
pub fn project_simplex(x: &mut [f64]) {
    let mut u: Vec<f64> = x.to_vec();
    u.sort_by(|a, b| b.total_cmp(a));
    let mut css = 0.0;
    let mut theta = 0.0;
    for (i, &ui) in u.iter().enumerate() {
        css += ui;
        let t = (css - 1.0) / (i + 1) as f64;
        if ui - t > 0.0 {
            theta = t;
        }
    }
    for xi in x.iter_mut() {
        *xi = (*xi - theta).max(0.0);
    }
}

/// UVS for `K` gradients from their Gram matrix (row-major `K x K`), by projected gradient
/// descent on the simplex with backtracking (F is convex). For `K = 2` prefer `uvs_two`.
pub fn uvs_gram(gram: &[f64], kk: usize, c: f64) -> UvsSolution {
    assert_eq!(gram.len(), kk * kk, "Gram matrix must be K x K");
    let b: Vec<f64> = (0..kk).map(|i| (0..kk).map(|j| gram[i * kk + j]).sum()).collect();
    let n0 = b.iter().sum::<f64>().max(0.0).sqrt();
    let k = c * n0;
    let uniform = vec![1.0 / kk as f64; kk];
    if n0 == 0.0 || k == 0.0 {
        return UvsSolution { mu: uniform, f_star: 0.0, lambda: f64::INFINITY, coef: vec![1.0; kk] };
    }
    let quad = |m: &[f64]| -> f64 {
        let mut s = 0.0;
        for i in 0..kk {
            for j in 0..kk {
                s += m[i] * gram[i * kk + j] * m[j];
            }
        }
        s.max(0.0)
    };
    let f = |m: &[f64]| -> f64 { m.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() + k * quad(m).sqrt() };
    let scale: f64 = (0..kk).map(|i| gram[i * kk + i]).sum::<f64>().max(1e-300);
    let mut mu = uniform;
    let mut fx = f(&mu);
    let mut step = 1.0 / scale;
    let mut grad = vec![0.0; kk];
    let mut cand = vec![0.0; kk];
    for _ in 0..10_000 {
        let gw = quad(&mu).sqrt().max(1e-300);
        for i in 0..kk {
            let gm: f64 = (0..kk).map(|j| gram[i * kk + j] * mu[j]).sum();
            grad[i] = b[i] + k * gm / gw;
        }
        // Backtracking on the projected step (sufficient decrease along the projection arc).
        let mut accepted = false;
        for _ in 0..60 {
            for i in 0..kk {
                cand[i] = mu[i] - step * grad[i];
            }
            project_simplex(&mut cand);
            let fc = f(&cand);
            let diff_sq: f64 = cand.iter().zip(&mu).map(|(a, b)| (a - b) * (a - b)).sum();
            let lin: f64 = grad.iter().zip(cand.iter().zip(&mu)).map(|(g, (a, b))| g * (a - b)).sum();
            if fc <= fx + lin + diff_sq / (2.0 * step) + 1e-15 * fx.abs() {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
        let moved: f64 = cand.iter().zip(&mu).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        mu.copy_from_slice(&cand);
        fx = f(&mu);
        step *= 2.0;
        if moved < 1e-15 {
            break;
        }
    }
    let gw = quad(&mu).sqrt();
    if gw <= 1e-30 {
        return UvsSolution { f_star: fx, lambda: f64::INFINITY, coef: vec![1.0; kk], mu };
    }
    let coef = mu.iter().map(|m| 1.0 + k * m / gw).collect();
    UvsSolution { f_star: fx, lambda: gw / (2.0 * k), coef, mu }
}

/// Gram matrix (row-major) of `grads` over the flat indices outside `skip`.
pub fn gram(grads: &[&[f32]], skip: Option<&Range<usize>>) -> Vec<f64> {
    let kk = grads.len();
    let mut g = vec![0.0; kk * kk];
    for i in 0..kk {
        for j in i..kk {
            let v = dot_outside(grads[i], grads[j], skip);
            g[i * kk + j] = v;
            g[j * kk + i] = v;
        }
    }
    g
}

/// CAGrad as LibMTL ships it: mean `g0`, the same dual, output divided by `1 + c^2`. Returns the
/// coefficients `a_j` of `sum_j a_j g_j` (and the simplex weights). Since `F_mean = F_sum / K`,
/// the weights equal UVS's and `v_mean = v_sum / K`.
pub fn cagrad_libmtl(sol_sum: &UvsSolution, c: f64) -> Vec<f64> {
    let kk = sol_sum.coef.len() as f64;
    sol_sum.coef.iter().map(|a| a / (kk * (1.0 + c * c))).collect()
}

/// CAGrad for two gradients over plain slices (the reference of `TwoStream`'s fused CAGrad):
/// UVS's weights from the Gram entries, `out = a1 g1 + a2 g2` with LibMTL's coefficients.
pub fn cagrad_reference(g1: &[f32], g2: &[f32], c: f64, out: &mut [f32]) -> super::cs_dfd::TwoStepNumbers {
    assert!(g2.len() == g1.len() && out.len() == g1.len(), "CAGrad on vectors of different lengths");
    let sol = uvs_two_fixed(&Pair::from_vectors(g1, g2, None), c);
    let a = sol.coef.map(|a| a / (2.0 * (1.0 + c * c)));
    for ((v, &x), &y) in out.iter_mut().zip(g1).zip(g2) {
        *v = (a[0] * x as f64 + a[1] * y as f64) as f32;
    }
    super::cs_dfd::trace(g1, g2, out, Some(sol.mu))
}

/// PCGrad (Yu et al. 2020): `out = sum_i g_i'`, where `g_i'` starts at `g_i` and, for each `j`
/// in `orders[i]`, loses its component along the original `g_j` when `g_i' . g_j < 0`.
/// `scratch` is reused across steps.
pub fn pcgrad(grads: &[&[f32]], orders: &[Vec<usize>], out: &mut [f32], scratch: &mut Vec<f32>) {
    let kk = grads.len();
    assert_eq!(orders.len(), kk, "one order per task");
    let norms_sq: Vec<f64> = grads.iter().map(|g| dot(g, g)).collect();
    out.fill(0.0);
    for i in 0..kk {
        scratch.clear();
        scratch.extend_from_slice(grads[i]);
        for &j in &orders[i] {
            if j == i {
                continue;
            }
            let d = dot(scratch, grads[j]);
            // Sign tested strictly before dividing: a zero g_j never gets here.
            if d < 0.0 {
                let a = -d / norms_sq[j];
                crate::gradvec::axpy(scratch, a, grads[j]);
            }
        }
        for (o, s) in out.iter_mut().zip(scratch.iter()) {
            *o += *s;
        }
    }
}

/// CGR on the projection head (methods.md 2.2): `out = g1 + g2 - tau g1 g2 (g1 + g2) /
/// (max(||g1||, 1e-8) max(||g2||, 1e-8))`, elementwise over the head's slice.
pub fn cgr_head(g1: &[f32], g2: &[f32], tau: f64, out: &mut [f32]) {
    let n1 = dot(g1, g1).sqrt().max(1e-8);
    let n2 = dot(g2, g2).sqrt().max(1e-8);
    let gamma = tau / (n1 * n2);
    for ((o, &a), &b) in out.iter_mut().zip(g1).zip(g2) {
        let (a, b) = (a as f64, b as f64);
        *o = (a + b - gamma * a * b * (a + b)) as f32;
    }
}
