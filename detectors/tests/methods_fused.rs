//! The fast path (`methods::fused`) against the reference that reads as the paper
//! (`methods::cs_dfd`, `combine::cagrad_reference`), on random and adversarial gradients.
//!
//! Not bit-equal, by construction: the fast path sums in eight lanes per block with compensated
//! block merges and takes `||g_w||` from the Gram entries, the reference sums in index order and
//! takes `||g_w||` from the vector `g_w`; CGR's `x + y - gamma x y (x + y)` is eq. 24's
//! `x + y - gamma (x x y + y y x)` reordered. Both form each element's value in f64 from
//! coefficients that agree to far better than f32 precision and round it to f32 once, so an
//! element may differ by the f32 rounding of each side plus that tiny disagreement: the bound
//! is `ULPS` units of 2^-24 times the magnitude of the terms the element is made of (`scale`),
//! which is 2 f32 ulps of the larger term. Where the update itself is ill-defined (UVS's kink
//! `g_w = 0`, reached with anti-parallel gradients and c >= 1), only the paper's invariant is
//! checked: `v*` lies in the ball `||v - g0|| <= c ||g0||`.
use std::ops::Range;

use detectors::methods::combine::{Pair, cagrad_reference, uvs_two};
use detectors::methods::cs_dfd::{self, HeadRule, TwoStepNumbers};
use detectors::methods::fused::{self, Exec, Simd, two_stream_stats, write_two};
use proptest::prelude::*;

const ULPS: f64 = 4.0;
const HALF_ULP: f64 = 1.0 / (1u64 << 24) as f64;

struct Case<'a> {
    g1: &'a [f32],
    g2: &'a [f32],
    head: Option<Range<usize>>,
    uvs_c: Option<f64>,
    rule: HeadRule,
}

/// Per element, the magnitude of the terms the update is made of.
fn scale(case: &Case) -> Vec<f64> {
    let n = case.g1.len();
    let h = case.head.clone().unwrap_or(n..n);
    let outside = |i: usize| !h.contains(&i);
    let theta: Vec<usize> = (0..n).filter(|&i| outside(i)).collect();
    let pick = |g: &[f32]| theta.iter().map(|&i| g[i]).collect::<Vec<f32>>();
    let coef = match case.uvs_c {
        Some(c) => {
            let s = uvs_two(&Pair::from_vectors(&pick(case.g1), &pick(case.g2), None), c);
            [s.coef[0].abs(), s.coef[1].abs()]
        }
        None => [1.0, 1.0],
    };
    let norm = |g: &[f32]| h.clone().map(|i| g[i] as f64 * g[i] as f64).sum::<f64>().sqrt().max(1e-8);
    let gamma = match case.rule {
        HeadRule::Cgr { tau } => tau / (norm(case.g1) * norm(case.g2)),
        HeadRule::Sum => 0.0,
    };
    (0..n)
        .map(|i| {
            let (a, b) = (case.g1[i].abs() as f64, case.g2[i].abs() as f64);
            if outside(i) { coef[0] * a + coef[1] * b } else { a + b + gamma * a * b * (a + b) }
        })
        .collect()
}

/// Runs both paths; checks the update element by element within the bound, and the trace.
fn agree(case: &Case) -> Result<(), TestCaseError> {
    let n = case.g1.len();
    let (mut fast, mut reference) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    let head = case.head.as_ref();
    let f = fused::cs_dfd_direction(case.g1, case.g2, head, case.uvs_c, case.rule, &mut fast);
    let r = cs_dfd::reference(case.g1, case.g2, head, case.uvs_c, case.rule, &mut reference);
    let scale = scale(case);
    for i in 0..n {
        let (x, y) = (fast[i] as f64, reference[i] as f64);
        let bound = ULPS * HALF_ULP * scale[i] + f64::from(f32::from_bits(1));
        prop_assert!(x.is_finite() && y.is_finite(), "element {i}: fast {x}, reference {y}");
        prop_assert!((x - y).abs() <= bound, "element {i}: fast {x}, reference {y}, bound {bound}");
    }
    trace_agrees(&f, &r)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-300
}

fn trace_agrees(f: &TwoStepNumbers, r: &TwoStepNumbers) -> Result<(), TestCaseError> {
    prop_assert!(close(f.norm_g1, r.norm_g1, 1e-12) && close(f.norm_g2, r.norm_g2, 1e-12), "{f:?} {r:?}");
    prop_assert!((f.cos_g1_g2 - r.cos_g1_g2).abs() <= 1e-12, "{f:?} {r:?}");
    prop_assert!(close(f.norm_update, r.norm_update, 1e-6), "{f:?} {r:?}");
    match (f.mu, r.mu) {
        (None, None) => {}
        (Some(a), Some(b)) => prop_assert!((a[0] - b[0]).abs() <= 1e-9, "mu {a:?} vs {b:?}"),
        _ => prop_assert!(false, "UVS ran on one path only: {f:?} {r:?}"),
    }
    Ok(())
}

fn rules() -> impl Strategy<Value = (Option<f64>, HeadRule)> {
    (prop::option::weighted(0.8, 0.05f64..3.0), prop::option::weighted(0.7, 0.0f64..1.0))
        .prop_map(|(c, tau)| (c, tau.map_or(HeadRule::Sum, |tau| HeadRule::Cgr { tau })))
}

/// Gradients whose entries span several orders of magnitude, with a head somewhere in them.
fn gradients() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Option<Range<usize>>)> {
    (1usize..5000).prop_flat_map(|n| {
        let g = prop::collection::vec((-1.0f32..1.0, -6i32..3), n)
            .prop_map(|v| v.into_iter().map(|(m, e)| m * 10f32.powi(e)).collect::<Vec<f32>>());
        (g.clone(), g, prop::option::of((0..=n, 0..=n).prop_map(|(a, b)| a.min(b)..a.max(b))))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn fast_path_agrees_with_the_reference_on_random_gradients(
        (g1, g2, head) in gradients(), (uvs_c, rule) in rules()
    ) {
        agree(&Case { g1: &g1, g2: &g2, head, uvs_c, rule })?;
    }

    /// Conflicting streams: g2 = -a g1 + small noise (cos near -1), and a mix of the two.
    #[test]
    fn fast_path_agrees_with_the_reference_on_conflicting_gradients(
        (g1, noise, head) in gradients(), a in 0.05f32..4.0, eps in 0.0f32..0.3, (uvs_c, rule) in rules()
    ) {
        let g2: Vec<f32> = g1.iter().zip(&noise).map(|(x, e)| -a * x + eps * e).collect();
        let uvs_c = uvs_c.map(|c| c.min(0.95));
        agree(&Case { g1: &g1, g2: &g2, head, uvs_c, rule })?;
    }

    /// UVS's kink: exactly anti-parallel streams with c >= 1 put the minimiser at g_w = 0, where
    /// v* has no direction; both paths must still stay in the trust region.
    #[test]
    fn at_the_kink_both_paths_stay_in_the_trust_region(
        (g1, _, _) in gradients(), a in 0.1f32..3.0, c in 1.0f64..10.0
    ) {
        let g2: Vec<f32> = g1.iter().map(|x| -a * x).collect();
        let g0: Vec<f64> = g1.iter().zip(&g2).map(|(&x, &y)| x as f64 + y as f64).collect();
        let norm_g0 = g0.iter().map(|x| x * x).sum::<f64>().sqrt();
        for path in 0..2 {
            let mut v = vec![0f32; g1.len()];
            if path == 0 {
                fused::cs_dfd_direction(&g1, &g2, None, Some(c), HeadRule::Sum, &mut v);
            } else {
                cs_dfd::reference(&g1, &g2, None, Some(c), HeadRule::Sum, &mut v);
            }
            let dist = v.iter().zip(&g0).map(|(&x, y)| (x as f64 - y).powi(2)).sum::<f64>().sqrt();
            let tol = 1e-5 * (norm_g0 + g1.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt());
            prop_assert!(v.iter().all(|x| x.is_finite()), "path {path}");
            prop_assert!(dist <= c * norm_g0 + tol, "path {path}: ||v - g0|| = {dist} > c ||g0|| = {}", c * norm_g0);
        }
    }

    #[test]
    fn cagrad_fast_path_agrees_with_its_reference((g1, g2, _) in gradients(), c in 0.05f64..3.0) {
        let n = g1.len();
        let (mut fast, mut reference) = (vec![0f32; n], vec![0f32; n]);
        // The fused CAGrad as `TwoStream` runs it.
        let stats = two_stream_stats(&g1, &g2, None, true);
        let sol = uvs_two(&stats.pair.unwrap(), c);
        let a: Vec<f64> = sol.coef.iter().map(|x| x / (2.0 * (1.0 + c * c))).collect();
        write_two(&mut fast, &g1, &g2, (a[0], a[1]), None, &stats);
        let r = cagrad_reference(&g1, &g2, c, &mut reference);
        prop_assert!((r.mu.unwrap()[0] - sol.mu[0]).abs() <= 1e-9);
        for i in 0..n {
            let s = (a[0] * g1[i] as f64).abs() + (a[1] * g2[i] as f64).abs();
            let bound = ULPS * HALF_ULP * s + f64::from(f32::from_bits(1));
            prop_assert!((fast[i] as f64 - reference[i] as f64).abs() <= bound, "element {i}");
        }
    }
}

/// Hand-made edge cases: zero gradients, g1 = -g2 (g0 = 0), g1 = g2, one stream zero, the spec's
/// boundary vectors R2 (mu = (1, 0)) and R3 (mu = (0, 1)), denormal and huge entries.
#[test]
fn fast_path_agrees_with_the_reference_on_edge_cases() {
    let r2 = ([0.3f32, -0.2, 0.1, 0.0, -0.4], [-2.0f32, 1.0, 3.0, 0.5, 1.0]);
    let r3 = ([0.5f32, 1.0, -0.5, 2.0, 0.0, 1.5], [1.0f32, 0.5, 0.5, 1.0, -1.0, 0.5]);
    let g: Vec<f32> = (0..3000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
    let neg: Vec<f32> = g.iter().map(|x| -x).collect();
    let zero = vec![0f32; g.len()];
    let tiny: Vec<f32> = g.iter().map(|x| x * 1e-38).collect();
    let huge: Vec<f32> = g.iter().map(|x| x * 1e30).collect();
    let cases: Vec<(&[f32], &[f32])> = vec![
        (&r2.0, &r2.1),
        (&r3.0, &r3.1),
        (&zero, &zero),
        (&g, &neg),
        (&g, &g),
        (&g, &zero),
        (&zero, &g),
        (&tiny, &g),
        (&huge, &neg),
    ];
    for (g1, g2) in cases {
        let n = g1.len();
        for head in [None, Some(0..0), Some(n / 3..n / 2), Some(0..n)] {
            for uvs_c in [None, Some(0.5), Some(0.999)] {
                for rule in [HeadRule::Sum, HeadRule::Cgr { tau: 0.01 }, HeadRule::Cgr { tau: 1.0 }] {
                    let case = Case { g1, g2, head: head.clone(), uvs_c, rule };
                    agree(&case).unwrap_or_else(|e| panic!("n = {n}, head {head:?}, {uvs_c:?}, {rule:?}: {e}"));
                }
            }
        }
    }
}

/// Long enough for the fast path's parallel tasks and streamed stores, on every instruction set
/// this CPU has.
#[test]
fn long_vectors_on_every_instruction_set() {
    let n = (1 << 22) + 12_345;
    let g1: Vec<f32> = (0..n).map(|i| (((i * 7919) % 1000) as f32 - 500.0) * 1e-4).collect();
    let g2: Vec<f32> = (0..n).map(|i| (((i * 104_729) % 997) as f32 - 480.0) * -2e-4).collect();
    let head = Some(1000..5000);
    let case = Case { g1: &g1, g2: &g2, head: head.clone(), uvs_c: Some(0.5), rule: HeadRule::Cgr { tau: 0.01 } };
    agree(&case).unwrap();
    let mut reference = vec![0f32; n];
    cs_dfd::reference(&g1, &g2, head.as_ref(), Some(0.5), HeadRule::Cgr { tau: 0.01 }, &mut reference);
    let scale = scale(&case);
    for simd in Simd::available() {
        let mut fast = vec![0f32; n];
        fused::cs_dfd_direction_on(Exec { simd, parallel: true, stream_from: fused::STREAM_FROM }, &g1, &g2, head.as_ref(), Some(0.5), case.rule, &mut fast);
        for i in 0..n {
            let bound = ULPS * HALF_ULP * scale[i] + f64::from(f32::from_bits(1));
            assert!((fast[i] as f64 - reference[i] as f64).abs() <= bound, "{simd:?} element {i}");
        }
    }
}
