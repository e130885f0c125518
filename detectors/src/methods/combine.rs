//! Gradient combination rules on flat vectors (methods.md sections 2 and 3): UVS (closed form
//! for two gradients, projected gradient on the simplex for more), CAGrad in LibMTL's
//! convention, PCGrad and CGR's conflict term, and the fused passes the two-stream step runs
//! ([`cs_dfd_direction`], [`two_stream_stats`], [`write_two`]). Pure functions: every dot
//! product in f64.
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

// ---------------------------------------------------------------------------------------------
// Fused passes for the two-stream step.
//
// The step used to read g1 and g2 about eight times (three trace dots, two `Pair` passes, the
// combination, CGR, `||v||`). The functions below read them once (plus the residual pass that
// `D` needs, methods.md 2.1) and write `v` once, with every accumulator summed in exactly the
// order the multi-pass code used: the whole-vector dots keep `gradvec::dot`'s four lanes by
// index mod 4 and its sequential tail, the head norms keep `dot`'s lanes relative to the head's
// start, and the `Pair` sums stay single sequential chains. Results are therefore bit for bit
// those of the old code (a test in this module checks it against a copy of that code), so runs
// recorded before the fusion reproduce. The price: those chains cannot be vectorised or split
// (each add waits for the previous one), which is what bounds this code at several times an
// axpy; BENCHMARKS.md ("UVS + CGR") has the figures and what relaxing the order would buy.
// ---------------------------------------------------------------------------------------------

/// Four `gradvec::dot`-style lanes: element `i` (a global index) goes to lane `i & 3` while it
/// lies before the last partial group of four; the rest is a sequential tail added after the
/// lanes are combined.
#[derive(Clone, Copy)]
struct Lanes {
    acc: [f64; 4],
}

impl Lanes {
    const ZERO: Self = Self { acc: [0.0; 4] };
    /// `dot`'s combination `(l0 + l1) + (l2 + l3)`, where local lane `j` of a slice starting at
    /// global index `start` is global lane `(start + j) & 3`.
    fn combine(&self, start: usize) -> f64 {
        let l = |j: usize| self.acc[(start + j) & 3];
        (l(0) + l(1)) + (l(2) + l(3))
    }
}

/// Everything CS-DFD's step (and CAGrad's, PCGrad's) reads from the two stream gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoStats {
    /// `||g1||^2`, `g1 . g2`, `||g2||^2` over the whole vector (bits of `gradvec::dot`).
    pub n11: f64,
    pub n12: f64,
    pub n22: f64,
    /// `||g1_h||^2`, `||g2_h||^2` over the head range (bits of `gradvec::dot` on the head's
    /// slices); zero without a head.
    pub head11: f64,
    pub head22: f64,
    /// UVS's statistics outside the head (bits of `Pair::from_vectors`), when asked for.
    pub pair: Option<Pair>,
}

/// Splits `0..n` around `head` (an empty head at the end when there is none).
fn head_or_empty(n: usize, head: Option<&Range<usize>>) -> Range<usize> {
    let h = head.cloned().unwrap_or(n..n);
    assert!(h.start <= h.end && h.end <= n, "head range {h:?} outside a vector of {n}");
    h
}

/// The aligned body of `s..e`: `[b0, b1)` with `b0 = s` rounded up to 4 and `b1 <= cap`
/// rounded down to 4, so that every element in it gets the same treatment lane by lane.
fn body(s: usize, e: usize, cap: usize) -> (usize, usize) {
    let b0 = s.next_multiple_of(4).min(e);
    let b1 = (cap.min(e) & !3).max(b0);
    (b0, b1)
}

struct Pass1 {
    n4: usize,
    h4: usize,
    w11: Lanes,
    w12: Lanes,
    w22: Lanes,
    h11: Lanes,
    h22: Lanes,
    /// `Pair`'s sequential sums: g11, g12, g22, A, g2 . (g1 - g2).
    s: [f64; 5],
}

impl Pass1 {
    #[inline(always)]
    fn elem<const HEAD: bool, const PAIR: bool>(&mut self, i: usize, x: f32, y: f32) {
        let (x, y) = (x as f64, y as f64);
        let (p11, p12, p22) = (x * x, x * y, y * y);
        let l = i & 3;
        if i < self.n4 {
            self.w11.acc[l] += p11;
            self.w12.acc[l] += p12;
            self.w22.acc[l] += p22;
        }
        if HEAD {
            if i < self.h4 {
                self.h11.acc[l] += p11;
                self.h22.acc[l] += p22;
            }
        } else if PAIR {
            self.s[0] += p11;
            self.s[1] += p12;
            self.s[2] += p22;
            let di = x - y;
            self.s[3] += di * di;
            self.s[4] += y * di;
        }
    }

    /// One segment that lies either wholly inside the head (`HEAD`) or wholly outside it.
    fn run<const HEAD: bool, const PAIR: bool>(&mut self, g1: &[f32], g2: &[f32], r: Range<usize>) {
        let cap = if HEAD { self.n4.min(self.h4) } else { self.n4 };
        let (b0, b1) = body(r.start, r.end, cap);
        for i in r.start..b0 {
            self.elem::<HEAD, PAIR>(i, g1[i], g2[i]);
        }
        // Locals so that the accumulators live in registers across the hot loop.
        let (mut w11, mut w12, mut w22, mut h11, mut h22, mut s) =
            (self.w11.acc, self.w12.acc, self.w22.acc, self.h11.acc, self.h22.acc, self.s);
        for (x4, y4) in g1[b0..b1].chunks_exact(4).zip(g2[b0..b1].chunks_exact(4)) {
            for l in 0..4 {
                let (x, y) = (x4[l] as f64, y4[l] as f64);
                let (p11, p12, p22) = (x * x, x * y, y * y);
                w11[l] += p11;
                w12[l] += p12;
                w22[l] += p22;
                if HEAD {
                    h11[l] += p11;
                    h22[l] += p22;
                } else if PAIR {
                    s[0] += p11;
                    s[1] += p12;
                    s[2] += p22;
                    let di = x - y;
                    s[3] += di * di;
                    s[4] += y * di;
                }
            }
        }
        (self.w11.acc, self.w12.acc, self.w22.acc, self.h11.acc, self.h22.acc, self.s) =
            (w11, w12, w22, h11, h22, s);
        for i in b1..r.end {
            self.elem::<HEAD, PAIR>(i, g1[i], g2[i]);
        }
    }
}

/// One read pass over `g1, g2` for the trace's norms and cosine, CGR's head norms and (with
/// `with_pair`) UVS's statistics outside `head`; then, when UVS needs it, the residual pass for
/// `D` over the indices outside the head (methods.md 2.1 asks for `D` from the residual vector,
/// which needs `B/A` from the first pass).
pub fn two_stream_stats(g1: &[f32], g2: &[f32], head: Option<&Range<usize>>, with_pair: bool) -> TwoStats {
    assert_eq!(g1.len(), g2.len(), "two-stream statistics of gradients of different lengths");
    let n = g1.len();
    let h = head_or_empty(n, head);
    let mut p = Pass1 {
        n4: n & !3,
        h4: h.start + (h.len() & !3),
        w11: Lanes::ZERO,
        w12: Lanes::ZERO,
        w22: Lanes::ZERO,
        h11: Lanes::ZERO,
        h22: Lanes::ZERO,
        s: [0.0; 5],
    };
    if with_pair {
        p.run::<false, true>(g1, g2, 0..h.start);
        p.run::<true, true>(g1, g2, h.clone());
        p.run::<false, true>(g1, g2, h.end..n);
    } else {
        p.run::<false, false>(g1, g2, 0..h.start);
        p.run::<true, false>(g1, g2, h.clone());
        p.run::<false, false>(g1, g2, h.end..n);
    }
    let (mut n11, mut n12, mut n22) = (p.w11.combine(0), p.w12.combine(0), p.w22.combine(0));
    for i in p.n4..n {
        let (x, y) = (g1[i] as f64, g2[i] as f64);
        n11 += x * x;
        n12 += x * y;
        n22 += y * y;
    }
    let (mut head11, mut head22) = (p.h11.combine(h.start), p.h22.combine(h.start));
    for i in p.h4..h.end {
        let (x, y) = (g1[i] as f64, g2[i] as f64);
        head11 += x * x;
        head22 += y * y;
    }
    let pair = with_pair.then(|| {
        let [g11, g12, g22, a, bdot] = p.s;
        let d = if a > 0.0 { residual_d(g1, g2, &h, bdot / a) } else { 0.0 };
        Pair { g11, g12, g22, a, d }
    });
    TwoStats { n11, n12, n22, head11, head22, pair }
}

/// `D = sum (g2 - t (g1 - g2))^2` over the indices outside `h`, one sequential sum.
fn residual_d(g1: &[f32], g2: &[f32], h: &Range<usize>, t: f64) -> f64 {
    let mut d = 0f64;
    for r in [0..h.start, h.end..g1.len()] {
        for (&x, &y) in g1[r.clone()].iter().zip(&g2[r]) {
            let (x, y) = (x as f64, y as f64);
            let r = y - t * (x - y);
            d += r * r;
        }
    }
    d
}

/// How the head's slice of the update is formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadRule {
    /// `g1 + g2` (CS-DFD without CGR).
    Sum,
    /// CGR with this `tau` (methods.md 2.2), the same formula as [`cgr_head`].
    Cgr { tau: f64 },
}

struct Pass2 {
    n4: usize,
    lanes: [f64; 4],
}

impl Pass2 {
    /// Writes `out[i] = f(g1[i], g2[i])` over `r` and adds `out[i]^2` to the lanes of `||out||`
    /// (in index order, as `dot(out, out)` would after the fact).
    #[inline(always)]
    fn run(&mut self, out: &mut [f32], g1: &[f32], g2: &[f32], r: Range<usize>, f: impl Fn(f64, f64) -> f32) {
        let (b0, b1) = body(r.start, r.end, self.n4);
        let n4 = self.n4;
        let mut lanes = self.lanes;
        let edge = |i: usize, out: &mut [f32], lanes: &mut [f64; 4]| {
            let v = f(g1[i] as f64, g2[i] as f64);
            out[i] = v;
            if i < n4 {
                lanes[i & 3] += v as f64 * v as f64;
            }
        };
        for i in r.start..b0 {
            edge(i, out, &mut lanes);
        }
        let chunks =
            out[b0..b1].chunks_exact_mut(4).zip(g1[b0..b1].chunks_exact(4)).zip(g2[b0..b1].chunks_exact(4));
        for ((o4, x4), y4) in chunks {
            for l in 0..4 {
                let v = f(x4[l] as f64, y4[l] as f64);
                o4[l] = v;
                lanes[l] += v as f64 * v as f64;
            }
        }
        for i in b1..r.end {
            edge(i, out, &mut lanes);
        }
        self.lanes = lanes;
    }
}

/// One write pass: `out = a1 g1 + a2 g2` outside `head`, the head's slice by `rule`, and
/// `||out||^2` accumulated on the fly (bits of `gradvec::dot(out, out)`). `stats` supplies the
/// head norms CGR needs.
pub fn write_two(
    out: &mut [f32],
    g1: &[f32],
    g2: &[f32],
    (a1, a2): (f64, f64),
    head: Option<(&Range<usize>, HeadRule)>,
    stats: &TwoStats,
) -> f64 {
    let n = g1.len();
    assert!(g2.len() == n && out.len() == n, "combination of vectors of different lengths");
    let h = head_or_empty(n, head.map(|(r, _)| r));
    let rule = head.map_or(HeadRule::Sum, |(_, r)| r);
    let mut p = Pass2 { n4: n & !3, lanes: [0.0; 4] };
    let lin = move |x: f64, y: f64| (a1 * x + a2 * y) as f32;
    p.run(out, g1, g2, 0..h.start, lin);
    match rule {
        HeadRule::Sum => p.run(out, g1, g2, h.clone(), |x, y| (1.0 * x + 1.0 * y) as f32),
        HeadRule::Cgr { tau } => {
            let gamma = tau / (stats.head11.sqrt().max(1e-8) * stats.head22.sqrt().max(1e-8));
            p.run(out, g1, g2, h.clone(), move |a, b| (a + b - gamma * a * b * (a + b)) as f32)
        }
    }
    p.run(out, g1, g2, h.end..n, lin);
    let mut s = Lanes { acc: p.lanes }.combine(0);
    for &v in &out[p.n4..] {
        s += v as f64 * v as f64;
    }
    s
}

/// What a two-stream step reports besides the update direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoStepNumbers {
    pub norm_g1: f64,
    pub norm_g2: f64,
    pub cos_g1_g2: f64,
    pub norm_update: f64,
    /// UVS's simplex weights, when UVS ran.
    pub mu: Option<[f64; 2]>,
}

/// CS-DFD's flat-vector work for one step (methods.md 2.1-2.2), as `TwoStream::step` runs it:
/// with `uvs_c = Some(c)`, UVS with that `c` on every index outside `head`, else `g1 + g2`
/// there; `head_rule` on the head. Writes the direction into `out` and returns the trace's
/// numbers. Two reads of `g1, g2` (three with UVS) and one write of `out`.
pub fn cs_dfd_direction(
    g1: &[f32],
    g2: &[f32],
    head: Option<&Range<usize>>,
    uvs_c: Option<f64>,
    head_rule: HeadRule,
    out: &mut [f32],
) -> TwoStepNumbers {
    let stats = two_stream_stats(g1, g2, head, uvs_c.is_some());
    let (coef, mu) = match (uvs_c, &stats.pair) {
        (Some(c), Some(pair)) => {
            let sol = uvs_two_fixed(pair, c);
            ((sol.coef[0], sol.coef[1]), Some(sol.mu))
        }
        _ => ((1.0, 1.0), None),
    };
    let norm_update = write_two(out, g1, g2, coef, head.map(|h| (h, head_rule)), &stats).sqrt();
    trace_numbers(&stats, norm_update, mu)
}

/// The trace's norms and cosine from fused statistics (the formulas the step always used).
pub fn trace_numbers(stats: &TwoStats, norm_update: f64, mu: Option<[f64; 2]>) -> TwoStepNumbers {
    let (n1, n2) = (stats.n11.sqrt(), stats.n22.sqrt());
    TwoStepNumbers {
        norm_g1: n1,
        norm_g2: n2,
        cos_g1_g2: stats.n12 / (n1.max(1e-12) * n2.max(1e-12)),
        norm_update,
        mu,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The step's flat-vector code as it was before the fusion (several passes), kept verbatim
    /// in substance as the reference the fused code must match bit for bit.
    fn old_step(
        g1: &[f32],
        g2: &[f32],
        head: Option<&Range<usize>>,
        uvs_c: Option<f64>,
        cgr_tau: Option<f64>,
    ) -> (Vec<f32>, TwoStepNumbers, Option<Pair>) {
        fn lin2_outside(
            out: &mut [f32],
            a1: f64,
            g1: &[f32],
            a2: f64,
            g2: &[f32],
            skip: Option<&Range<usize>>,
        ) {
            let n = out.len();
            let segs = match skip {
                None => [0..n, n..n],
                Some(r) => [0..r.start, r.end..n],
            };
            for s in segs {
                for i in s {
                    out[i] = (a1 * g1[i] as f64 + a2 * g2[i] as f64) as f32;
                }
            }
        }
        let n1 = dot(g1, g1).sqrt();
        let n2 = dot(g2, g2).sqrt();
        let cos = dot(g1, g2) / (n1.max(1e-12) * n2.max(1e-12));
        let mut v = vec![0f32; g1.len()];
        let (mut mu, mut pair) = (None, None);
        let (a1, a2) = match uvs_c {
            Some(c) => {
                let p = Pair::from_vectors(g1, g2, head);
                let sol = uvs_two(&p, c);
                (mu, pair) = (Some([sol.mu[0], sol.mu[1]]), Some(p));
                (sol.coef[0], sol.coef[1])
            }
            None => (1.0, 1.0),
        };
        lin2_outside(&mut v, a1, g1, a2, g2, head);
        if let Some(h) = head {
            match cgr_tau {
                Some(tau) => cgr_head(&g1[h.clone()], &g2[h.clone()], tau, &mut v[h.clone()]),
                None => lin2_outside(&mut v[h.clone()], 1.0, &g1[h.clone()], 1.0, &g2[h.clone()], None),
            }
        }
        let norm_update = dot(&v, &v).sqrt();
        (v, TwoStepNumbers { norm_g1: n1, norm_g2: n2, cos_g1_g2: cos, norm_update, mu }, pair)
    }

    /// Values spread over many binades, so that any change of summation order shows in the bits.
    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m: f32 = rng.random_range(-1.0..1.0);
                m * 2f32.powi(rng.random_range(-30..4))
            })
            .collect()
    }

    fn bits(x: f64) -> u64 {
        x.to_bits()
    }

    fn check_pair(p: &Pair, q: &Pair, what: &str) {
        for (name, a, b) in [
            ("g11", p.g11, q.g11),
            ("g12", p.g12, q.g12),
            ("g22", p.g22, q.g22),
            ("a", p.a, q.a),
            ("d", p.d, q.d),
        ] {
            assert_eq!(bits(a), bits(b), "{what}: pair.{name} {a:e} vs {b:e}");
        }
    }

    #[test]
    fn fused_step_is_bit_identical_to_the_multi_pass_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut cases = 0;
        for &n in &[1usize, 2, 3, 5, 7, 8, 13, 31, 1001, 4099, 10_007] {
            let mut heads: Vec<Option<Range<usize>>> = vec![None, Some(0..n), Some(n..n), Some(0..n / 2)];
            for _ in 0..6 {
                let a = rng.random_range(0..=n);
                let b = rng.random_range(a..=n);
                heads.push(Some(a..b));
            }
            heads.push(Some(n - n / 16..n));
            heads.push(Some(n.min(3)..(n - n / 3).max(n.min(3))));
            let g1 = random(&mut rng, n);
            let mut g2 = random(&mut rng, n);
            if n == 31 {
                g2.copy_from_slice(&g1); // A = 0: the degenerate branch
            }
            for head in &heads {
                for (uvs_c, cgr_tau) in
                    [(Some(0.5), Some(0.01)), (Some(0.5), None), (None, Some(0.01)), (None, None)]
                {
                    let what = format!("n = {n}, head = {head:?}, uvs = {uvs_c:?}, cgr = {cgr_tau:?}");
                    let (v_old, num_old, pair_old) = old_step(&g1, &g2, head.as_ref(), uvs_c, cgr_tau);
                    let rule = cgr_tau.map_or(HeadRule::Sum, |tau| HeadRule::Cgr { tau });
                    let mut v = vec![f32::NAN; n];
                    let num = cs_dfd_direction(&g1, &g2, head.as_ref(), uvs_c, rule, &mut v);
                    let vb: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                    let vb_old: Vec<u32> = v_old.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(vb, vb_old, "{what}: update vector");
                    for (name, a, b) in [
                        ("norm_g1", num.norm_g1, num_old.norm_g1),
                        ("norm_g2", num.norm_g2, num_old.norm_g2),
                        ("cos", num.cos_g1_g2, num_old.cos_g1_g2),
                        ("norm_update", num.norm_update, num_old.norm_update),
                    ] {
                        assert_eq!(bits(a), bits(b), "{what}: {name} {a:e} vs {b:e}");
                    }
                    assert_eq!(num.mu.map(|m| m.map(bits)), num_old.mu.map(|m| m.map(bits)), "{what}: mu");
                    let st = two_stream_stats(&g1, &g2, head.as_ref(), uvs_c.is_some());
                    if let Some(p) = pair_old {
                        check_pair(&st.pair.expect("pair asked for"), &p, &what);
                    }
                    let h = head.clone().unwrap_or(n..n);
                    assert_eq!(bits(st.head11), bits(dot(&g1[h.clone()], &g1[h.clone()])), "{what}: head11");
                    assert_eq!(bits(st.head22), bits(dot(&g2[h.clone()], &g2[h.clone()])), "{what}: head22");
                    assert_eq!(bits(st.n12), bits(dot(&g1, &g2)), "{what}: g1 . g2");
                    cases += 1;
                }
            }
        }
        assert!(cases > 400);
    }

    /// The bit comparison above can fail: on these inputs a plain sequential sum (one order
    /// change) already differs from `dot`'s lanes, so matching bits means matching order.
    #[test]
    fn the_inputs_are_sensitive_to_summation_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let g = random(&mut rng, 4099);
        let seq = g.iter().fold(0f64, |s, &x| s + x as f64 * x as f64);
        assert_ne!(bits(seq), bits(dot(&g, &g)));
    }

    #[test]
    fn uvs_two_fixed_agrees_with_uvs_two() {
        let p = Pair::from_vectors(&[1.0f64, -2.0, 0.5, 3.0], &[-1.5, 1.0, 2.0, -0.5], None);
        let (a, b) = (uvs_two(&p, 0.5), uvs_two_fixed(&p, 0.5));
        assert_eq!((a.mu, a.coef, a.f_star, a.lambda), (b.mu.to_vec(), b.coef.to_vec(), b.f_star, b.lambda));
        assert!((b.mu[0] - 0.099320839).abs() < 1e-9, "R1 mu");
    }
}
