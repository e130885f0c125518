//! CS-DFD's gradient step as the paper writes it: steps 2 and 3 of Algorithm 1 of Liu, Cheng,
//! Luo and Xu, "Suppressing Gradient Conflict for Generalizable Deepfake Detection" (methods.md
//! 2.1-2.2), over plain slices, in the paper's symbols and order. This is the reference implementation: `methods::fused` computes
//! the same update in one pass over memory (and is what training runs unless a protocol sets
//! `path = "reference"` on the method); `tests/methods_fused.rs` checks the two against each
//! other.
//!
//! The parameters split in two: the projection head `theta_p` (CGR's, eq. 24) and everything
//! else `theta` (backbone and classifier, UVS's, eqs. 9-16). `g1`, `g2` are the gradients of the
//! two stream losses L1 (original fakes) and L2 (online SBI fakes) over all parameters, flat, in
//! the parameter store's order; the head is a contiguous range of that order.
use std::ops::Range;

use super::combine::{Pair, uvs_two_fixed};

/// How the head's slice of the update is formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadRule {
    /// `g1 + g2` (CS-DFD without CGR).
    Sum,
    /// CGR with this `tau` (methods.md 2.2, eq. 24).
    Cgr { tau: f64 },
}

/// What a two-stream step reports besides the update direction (the trace, methods.md 7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoStepNumbers {
    pub norm_g1: f64,
    pub norm_g2: f64,
    pub cos_g1_g2: f64,
    pub norm_update: f64,
    /// UVS's simplex weights, when UVS ran.
    pub mu: Option<[f64; 2]>,
}

/// `x . y` accumulated in f64, in index order.
fn dot(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// The update direction `out` of one CS-DFD step from the two stream gradients (Algorithm 1,
/// steps 2-3): `head_rule` on the head `theta_p` (step 2), then UVS's `v*` on `theta` when
/// `uvs_c = Some(c)`, else `g0 = g1 + g2` there (step 3). Step 1 (features through the
/// projection head, and the two backward passes) is the model's; step 4
/// (`theta <- theta - alpha v*`) is the optimizer's.
pub fn reference(
    g1: &[f32],
    g2: &[f32],
    head: Option<&Range<usize>>,
    uvs_c: Option<f64>,
    head_rule: HeadRule,
    out: &mut [f32],
) -> TwoStepNumbers {
    let n = g1.len();
    assert!(g2.len() == n && out.len() == n, "CS-DFD on gradients of different lengths");
    let p = head.cloned().unwrap_or(n..n);
    assert!(p.start <= p.end && p.end <= n, "head range {p:?} outside a vector of {n}");

    // Step 2 on theta_p: the head's gradient with CGR's conflict term (eq. 24), or plain
    // g1 + g2 without it.
    let (g1_p, g2_p) = (&g1[p.clone()], &g2[p.clone()]);
    match head_rule {
        HeadRule::Sum => {
            for (v, g) in out[p.clone()].iter_mut().zip(g0(g1_p, g2_p)) {
                *v = g as f32;
            }
        }
        HeadRule::Cgr { tau } => cgr(g1_p, g2_p, tau, &mut out[p.clone()]),
    }

    // Step 3 on theta (every parameter outside the head, one vector to UVS): g0 <- v*.
    let theta = |g: &[f32]| -> Vec<f32> { [&g[..p.start], &g[p.end..]].concat() };
    let (g1_theta, g2_theta) = (theta(g1), theta(g2));
    let (v_theta, mu) = match uvs_c {
        Some(c) => {
            let (v, mu) = uvs(&g1_theta, &g2_theta, c);
            (v, Some(mu))
        }
        None => (g0(&g1_theta, &g2_theta).iter().map(|&x| x as f32).collect(), None),
    };
    out[..p.start].copy_from_slice(&v_theta[..p.start]);
    out[p.end..].copy_from_slice(&v_theta[p.start..]);

    trace(g1, g2, out, mu)
}

/// The trace's numbers of a step (methods.md 7): the stream gradients' norms and cosine (the
/// norms guarded at 1e-12), the update's norm and UVS's weights.
pub(crate) fn trace(g1: &[f32], g2: &[f32], v: &[f32], mu: Option<[f64; 2]>) -> TwoStepNumbers {
    let (norm_g1, norm_g2) = (dot(g1, g1).sqrt(), dot(g2, g2).sqrt());
    TwoStepNumbers {
        norm_g1,
        norm_g2,
        cos_g1_g2: dot(g1, g2) / (norm_g1.max(1e-12) * norm_g2.max(1e-12)),
        norm_update: dot(v, v).sqrt(),
        mu,
    }
}

/// `g0 = g1 + g2`, the sum of the stream gradients (the paper's sum convention).
fn g0(g1: &[f32], g2: &[f32]) -> Vec<f64> {
    g1.iter().zip(g2).map(|(&a, &b)| a as f64 + b as f64).collect()
}

/// CGR (Conflict Gradient Reduction, eqs. 23-24) on the projection head: the gradient of the
/// conflict loss `-cos(g1_p, g2_p)` with each Hessian approximated by `tau g (x) g` (eq. 23),
/// added to `g1_p + g2_p`:
/// `grad_p = g1_p + g2_p - gamma (g1_p (x) g1_p (x) g2_p + g2_p (x) g2_p (x) g1_p)` (eq. 24),
/// `gamma = tau / (||g1_p|| ||g2_p||)`, the norms guarded like PyTorch's cosine.
pub fn cgr(g1_p: &[f32], g2_p: &[f32], tau: f64, out: &mut [f32]) {
    let gamma = tau / (dot(g1_p, g1_p).sqrt().max(1e-8) * dot(g2_p, g2_p).sqrt().max(1e-8));
    for ((v, &a), &b) in out.iter_mut().zip(g1_p).zip(g2_p) {
        let (a, b) = (a as f64, b as f64);
        *v = (a + b - gamma * (a * a * b + b * b * a)) as f32;
    }
}

/// CGR's relative contribution on the head: `||t|| / ||g1_p + g2_p||` with `t` eq. 24's conflict
/// term `-gamma (g1_p (x) g1_p (x) g2_p + g2_p (x) g2_p (x) g1_p)`, in f64 from the same
/// gradients as [`cgr`] (it reads them only, so tracing it leaves the update's bits alone).
/// Each element of `t` is `gamma a b (a + b)`, i.e. `(tau / (|g1_p| |g2_p|)) a b` times the
/// element of `g1_p + g2_p`: with `n_p` head parameters and elements of typical size
/// `|g_p| / sqrt(n_p)`, the factor is about `tau / n_p` (docs/methods.md). None when
/// `g1_p + g2_p = 0`.
pub fn cgr_relative(g1_p: &[f32], g2_p: &[f32], tau: f64) -> Option<f64> {
    let gamma = tau / (dot(g1_p, g1_p).sqrt().max(1e-8) * dot(g2_p, g2_p).sqrt().max(1e-8));
    let (mut term_sq, mut sum_sq) = (0f64, 0f64);
    for (&a, &b) in g1_p.iter().zip(g2_p) {
        let (a, b) = (a as f64, b as f64);
        let t = gamma * (a * a * b + b * b * a);
        term_sq += t * t;
        sum_sq += (a + b) * (a + b);
    }
    (sum_sq > 0.0).then(|| (term_sq / sum_sq).sqrt())
}

/// UVS (Update Vector Search, eqs. 9-16): the update `v*` that maximises the smaller of the two
/// stream improvements `g_j . v` within the ball `||v - g0|| <= c ||g0||` (eqs. 9-10), through
/// its Lagrangian dual (eqs. 11-13). Returns `v*` (rounded to f32) and `mu*`.
pub fn uvs(g1: &[f32], g2: &[f32], c: f64) -> (Vec<f32>, [f64; 2]) {
    // Eq. 9: the search is centred on g0 = g1 + g2.
    let g0 = g0(g1, g2);
    let norm_g0 = g0.iter().map(|x| x * x).sum::<f64>().sqrt();

    // Eq. 15: mu* = argmin over the simplex of g_w . g0 + c ||g0|| ||g_w||, g_w = mu1 g1 + mu2 g2.
    // The paper descends on mu (eq. 16); for two gradients the minimiser has a closed form in the
    // Gram entries (methods.md 2.1), which is exact where the iteration is approximate.
    let mu = uvs_two_fixed(&Pair::from_vectors(g1, g2, None), c).mu;
    let g_w: Vec<f64> = g1.iter().zip(g2).map(|(&a, &b)| mu[0] * a as f64 + mu[1] * b as f64).collect();
    let norm_g_w = g_w.iter().map(|x| x * x).sum::<f64>().sqrt();

    // Eq. 14: lambda* = ||g_w|| / (2 c ||g0||) and v* = g0 + g_w / (2 lambda*), i.e. g0 moved by
    // c ||g0|| along g_w. Where g0 = 0 (the ball is a point) or g_w = 0 (no direction to move
    // along; lambda* = 0) v* is g0 itself, as in the fast path.
    let v_star: Vec<f64> = if norm_g0 == 0.0 || c == 0.0 || norm_g_w <= 1e-30 {
        g0
    } else {
        let lambda_star = norm_g_w / (2.0 * c * norm_g0);
        g0.iter().zip(&g_w).map(|(g, w)| g + w / (2.0 * lambda_star)).collect()
    };
    (v_star.into_iter().map(|x| x as f32).collect(), mu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// methods.md 2.1's reference vectors R1 (interior), R2 (boundary) and R3 (no conflict),
    /// c = 0.5: mu* and v* as the spec gives them.
    #[test]
    fn uvs_gives_the_spec_reference_vectors() {
        let cases: [(&[f32], &[f32], f64, &[f64]); 3] = [
            (
                &[1.0, -2.0, 0.5, 3.0],
                &[-1.5, 1.0, 2.0, -0.5],
                0.099320839,
                &[-1.488737053, -0.445448882, 3.962150581, 2.379634816],
            ),
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
            let (v, mu) = uvs(g1, g2, 0.5);
            assert!((mu[0] - mu1).abs() < 1e-6 && (mu[0] + mu[1] - 1.0).abs() < 1e-12, "mu {mu:?}");
            for (got, want) in v.iter().zip(v_want) {
                assert!((*got as f64 - want).abs() < 1e-5, "v {v:?} vs {v_want:?}");
            }
        }
    }

    /// methods.md 2.2's R1 example: the conflict term with tau = 0.01.
    #[test]
    fn cgr_gives_the_spec_conflict_term() {
        let (g1, g2) = ([1.0f32, -2.0, 0.5, 3.0], [-1.5f32, 1.0, 2.0, -0.5]);
        let mut out = [0f32; 4];
        cgr(&g1, &g2, 0.01, &mut out);
        let term = [-0.000725476, -0.001934603, -0.002418254, 0.003627381];
        for i in 0..4 {
            let want = g1[i] as f64 + g2[i] as f64 + term[i];
            assert!((out[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", out[i]);
        }
    }

    /// The relative contribution of methods.md 2.2's R1 example, from the spec's literal conflict
    /// term: ||t|| / ||g1 + g2|| with g1 + g2 = (-0.5, -1, 2.5, 2.5).
    #[test]
    fn cgr_relative_is_the_term_over_the_plain_head_gradient() {
        let (g1, g2) = ([1.0f32, -2.0, 0.5, 3.0], [-1.5f32, 1.0, 2.0, -0.5]);
        let term: [f64; 4] = [-0.000725476, -0.001934603, -0.002418254, 0.003627381];
        let want = term.iter().map(|t| t * t).sum::<f64>().sqrt() / 13.75f64.sqrt();
        let got = cgr_relative(&g1, &g2, 0.01).unwrap();
        assert!((got - want).abs() < 1e-8, "{got} vs {want}");
        // Linear in tau; undefined where the plain head gradient is zero.
        assert!((cgr_relative(&g1, &g2, 0.02).unwrap() - 2.0 * got).abs() < 1e-12);
        assert_eq!(cgr_relative(&g1, &g1.map(|x| -x), 0.01), None);
    }

    /// The head splits theta in two ranges, which UVS treats as one vector: the same v* as UVS
    /// on the concatenation, and CGR's formula on the head.
    #[test]
    fn theta_around_the_head_is_one_vector_to_uvs() {
        let g1 = [1.0f32, -2.0, 9.0, -7.0, 0.5, 3.0];
        let g2 = [-1.5f32, 1.0, 4.0, 2.0, 2.0, -0.5];
        let mut out = [0f32; 6];
        let nums = reference(&g1, &g2, Some(&(2..4)), Some(0.5), HeadRule::Sum, &mut out);
        assert!((nums.mu.unwrap()[0] - 0.099320839).abs() < 1e-6);
        let r1 = [-1.488737053, -0.445448882, 3.962150581, 2.379634816];
        for (got, want) in [out[0], out[1], out[4], out[5]].iter().zip(r1) {
            assert!((*got as f64 - want).abs() < 1e-5, "{out:?}");
        }
        assert_eq!(&out[2..4], &[13.0, -5.0]);
        // Without UVS theta gets g0; g2 = -g1 gives a zero update and a zero cosine guard.
        let nums = reference(&g1, &g1.map(|x| -x), None, None, HeadRule::Sum, &mut out);
        assert_eq!(out, [0.0; 6]);
        assert!((nums.cos_g1_g2 + 1.0).abs() < 1e-12);
        assert_eq!(nums.norm_update, 0.0);
    }
}
