//! Gradient combination rules against methods.md's reference vectors and invariants.
use detectors::methods::combine::{
    Pair, cagrad_libmtl, cgr_head, gram, pcgrad, project_simplex, uvs_gram, uvs_two,
};
use proptest::prelude::*;

const C: f64 = 0.5;

struct Ref {
    g1: &'static [f64],
    g2: &'static [f64],
    mu: (f64, f64),
    f_star: f64,
    lambda: f64,
    v: &'static [f64],
}

const R1: Ref = Ref {
    g1: &[1.0, -2.0, 0.5, 3.0],
    g2: &[-1.5, 1.0, 2.0, -0.5],
    mu: (0.099320839, 0.900679161),
    f_star: 8.522140450,
    lambda: 0.632978151,
    v: &[-1.488737053, -0.445448882, 3.962150581, 2.379634816],
};
const R2: Ref = Ref {
    g1: &[0.3, -0.2, 0.1, 0.0, -0.4],
    g2: &[-2.0, 1.0, 3.0, 0.5, 1.0],
    mu: (1.0, 0.0),
    f_star: 0.415504801,
    lambda: 0.147709789,
    v: &[-0.684495199, 0.122996800, 3.438501600, 0.5, -0.754006401],
};
const R3: Ref = Ref {
    g1: &[0.5, 1.0, -0.5, 2.0, 0.0, 1.5],
    g2: &[1.0, 0.5, 0.5, 1.0, -1.0, 0.5],
    mu: (0.0, 1.0),
    f_star: 11.414582812,
    lambda: 0.450225169,
    v: &[2.610555417, 2.055277708, 0.555277708, 4.110555417, -2.110555417, 2.555277708],
};

fn combine(coef: &[f64], gs: &[&[f64]]) -> Vec<f64> {
    (0..gs[0].len()).map(|i| gs.iter().zip(coef).map(|(g, a)| a * g[i]).sum()).collect()
}
fn dotf(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn uvs_closed_form_matches_reference_vectors_in_f64() {
    for (name, r) in [("R1", &R1), ("R2", &R2), ("R3", &R3)] {
        let sol = uvs_two(&Pair::from_vectors(r.g1, r.g2, None), C);
        assert!((sol.mu[0] - r.mu.0).abs() < 1e-9, "{name} mu1 {}", sol.mu[0]);
        assert!((sol.mu[1] - r.mu.1).abs() < 1e-9, "{name} mu2 {}", sol.mu[1]);
        assert!((sol.f_star - r.f_star).abs() < 1e-9, "{name} F* {}", sol.f_star);
        assert!((sol.lambda - r.lambda).abs() < 1e-9, "{name} lambda {}", sol.lambda);
        let v = combine(&sol.coef, &[r.g1, r.g2]);
        for (i, (a, b)) in v.iter().zip(r.v).enumerate() {
            assert!((a - b).abs() < 1e-9, "{name} v[{i}] = {a}, want {b}");
        }
    }
}

#[test]
fn uvs_through_the_f32_path_within_1e6() {
    for (name, r) in [("R1", &R1), ("R2", &R2), ("R3", &R3)] {
        let (g1, g2) = (to_f32(r.g1), to_f32(r.g2));
        let sol = uvs_two(&Pair::from_vectors(&g1, &g2, None), C);
        assert!((sol.mu[0] - r.mu.0).abs() < 1e-6, "{name}");
        assert!((sol.f_star - r.f_star).abs() < 1e-6, "{name}");
        assert!((sol.lambda - r.lambda).abs() < 1e-6, "{name}");
        let v: Vec<f32> = g1
            .iter()
            .zip(&g2)
            .map(|(&a, &b)| (sol.coef[0] * a as f64 + sol.coef[1] * b as f64) as f32)
            .collect();
        for (a, b) in v.iter().zip(r.v) {
            assert!((*a as f64 - b).abs() < 1e-6, "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn uvs_degenerate_cases() {
    // g1 == g2: w = 1/2 and v = (1 + c) g0.
    let g = [1.0, -2.0, 0.5];
    let sol = uvs_two(&Pair::from_vectors(&g, &g, None), C);
    assert_eq!(sol.mu, vec![0.5, 0.5]);
    let v = combine(&sol.coef, &[&g, &g]);
    for (vi, gi) in v.iter().zip(&g) {
        assert!((vi - 1.5 * 2.0 * gi).abs() < 1e-12);
    }
    // g0 == 0: v = 0.
    let h = [-1.0, 2.0, -0.5];
    let sol = uvs_two(&Pair::from_vectors(&g, &h, None), C);
    let v = combine(&sol.coef, &[&g, &h]);
    assert!(v.iter().all(|x| x.abs() < 1e-12), "{v:?}");
}

#[test]
fn uvs_on_a_subset_ignores_the_skipped_range() {
    // Garbage inside the skipped range must not change the solution.
    let mut g1 = R1.g1.to_vec();
    let mut g2 = R1.g2.to_vec();
    g1.splice(2..2, [100.0, -7.0]);
    g2.splice(2..2, [-3.0, 55.0]);
    let sol = uvs_two(&Pair::from_vectors(&g1, &g2, Some(&(2..4))), C);
    assert!((sol.mu[0] - R1.mu.0).abs() < 1e-9);
    assert!((sol.f_star - R1.f_star).abs() < 1e-9);
}

#[test]
fn pgd_on_the_simplex_agrees_with_the_closed_form() {
    for r in [&R1, &R2, &R3] {
        let g = gram(&[&to_f32(r.g1), &to_f32(r.g2)], None);
        let sol = uvs_gram(&g, 2, C);
        assert!((sol.mu[0] - r.mu.0).abs() < 1e-6, "{:?} vs {:?}", sol.mu, r.mu);
        assert!((sol.f_star - r.f_star).abs() < 1e-8, "{} vs {}", sol.f_star, r.f_star);
    }
}

#[test]
fn simplex_projection() {
    let mut x = [0.2, 0.3, 0.5];
    project_simplex(&mut x);
    assert_eq!(x, [0.2, 0.3, 0.5]);
    let mut y = [2.0, 0.0, -1.0];
    project_simplex(&mut y);
    assert_eq!(y, [1.0, 0.0, 0.0]);
    let mut z = [0.5, 0.5, 0.5];
    project_simplex(&mut z);
    for v in z {
        assert!((v - 1.0 / 3.0).abs() < 1e-15);
    }
}

#[test]
fn cagrad_libmtl_on_r1() {
    let sol = uvs_two(&Pair::from_vectors(R1.g1, R1.g2, None), C);
    let a = cagrad_libmtl(&sol, C);
    let v = combine(&a, &[R1.g1, R1.g2]);
    let want = [-0.595495, -0.178180, 1.584860, 0.951854];
    for (x, y) in v.iter().zip(want) {
        assert!((x - y).abs() < 1e-6, "{v:?}");
    }
}

#[test]
fn cgr_conflict_term_on_r1() {
    let (g1, g2) = (to_f32(R1.g1), to_f32(R1.g2));
    let mut out = vec![0f32; 4];
    cgr_head(&g1, &g2, 0.01, &mut out);
    let want = [-0.000725476, -0.001934603, -0.002418254, 0.003627381];
    for i in 0..4 {
        let term = out[i] as f64 - (R1.g1[i] + R1.g2[i]);
        assert!((term - want[i]).abs() < 1e-6, "{i}: {term}");
    }
    // The whole update against the formula evaluated in f64.
    let n1 = dotf(R1.g1, R1.g1).sqrt();
    let n2 = dotf(R1.g2, R1.g2).sqrt();
    for i in 0..4 {
        let (a, b) = (R1.g1[i], R1.g2[i]);
        let f = a + b - 0.01 * a * b * (a + b) / (n1 * n2);
        assert!((out[i] as f64 - f).abs() < 1e-6);
    }
    // Zero gradients are guarded (no NaN).
    let mut z = vec![1f32; 2];
    cgr_head(&[0.0, 0.0], &[0.0, 0.0], 0.01, &mut z);
    assert_eq!(z, vec![0.0, 0.0]);
}

fn pc(grads: &[Vec<f32>], orders: &[Vec<usize>]) -> Vec<f32> {
    let refs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
    let mut out = vec![0f32; grads[0].len()];
    let mut scratch = Vec::new();
    pcgrad(&refs, orders, &mut out, &mut scratch);
    out
}

#[test]
fn pcgrad_two_tasks_r1() {
    let g = vec![to_f32(R1.g1), to_f32(R1.g2)];
    let sum = pc(&g, &[vec![1], vec![0]]);
    let want = [-1.019298246, -1.028070175, 3.707017544, 3.075438596];
    for (a, b) in sum.iter().zip(want) {
        assert!((*a as f64 - b).abs() < 1e-6, "{sum:?}");
    }
    // Each projected gradient separately: g1' (project g1 only).
    let g1p = pc(&[g[0].clone(), g[1].clone()], &[vec![1], vec![]]);
    let g1_want = [0.2, -1.466666667, 1.566666667, 2.733333333];
    for i in 0..4 {
        let g1p_i = g1p[i] as f64 - R1.g2[i];
        assert!((g1p_i - g1_want[i]).abs() < 1e-6, "{g1p:?}");
    }
}

#[test]
fn pcgrad_three_tasks_with_injected_orders() {
    let g = vec![vec![2.0f32, 0.0, 1.0], vec![-1.0, 1.0, 0.0], vec![-1.0, -1.0, 0.5]];
    let fwd = pc(&g, &[vec![1, 2], vec![0, 2], vec![0, 1]]);
    for (a, b) in fwd.iter().zip([-0.833333, 0.366667, 2.666667]) {
        assert!((*a as f64 - b).abs() < 1e-6, "{fwd:?}");
    }
    let rev = pc(&g, &[vec![2, 1], vec![2, 0], vec![1, 0]]);
    for (a, b) in rev.iter().zip([-0.266667, 0.333333, 2.533333]) {
        assert!((*a as f64 - b).abs() < 1e-6, "{rev:?}");
    }
    // Without conflicts PCGrad is the plain sum.
    let nc = pc(&[vec![1.0, 0.0], vec![0.5, 0.5]], &[vec![1], vec![0]]);
    assert_eq!(nc, vec![1.5, 0.5]);
}

fn vec_strategy() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (2usize..12)
        .prop_flat_map(|n| (prop::collection::vec(-5.0f64..5.0, n), prop::collection::vec(-5.0f64..5.0, n)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn uvs_invariants_hold((g1, g2) in vec_strategy(), c in 0.05f64..2.0) {
        let g0: Vec<f64> = g1.iter().zip(&g2).map(|(a, b)| a + b).collect();
        let n0 = dotf(&g0, &g0).sqrt();
        prop_assume!(n0 > 1e-3);
        let sol = uvs_two(&Pair::from_vectors(&g1, &g2, None), c);
        prop_assume!(sol.lambda.is_finite());
        let v = combine(&sol.coef, &[&g1, &g2]);
        let dv: Vec<f64> = v.iter().zip(&g0).map(|(a, b)| a - b).collect();
        // v lies on the sphere ||v - g0|| = c ||g0||.
        prop_assert!((dotf(&dv, &dv).sqrt() - c * n0).abs() <= 1e-9 * (1.0 + c * n0));
        // Strong duality: min_j g_j . v = F(mu*).
        let m = dotf(&g1, &v).min(dotf(&g2, &v));
        let scale = 1.0 + dotf(&g1, &g1) + dotf(&g2, &g2);
        prop_assert!((m - sol.f_star).abs() <= 1e-9 * scale, "min {m} vs F* {}", sol.f_star);
        // mu* minimises F over a grid of the simplex.
        let f = |w: f64| {
            let gw: Vec<f64> = g1.iter().zip(&g2).map(|(a, b)| w * a + (1.0 - w) * b).collect();
            dotf(&gw, &g0) + c * n0 * dotf(&gw, &gw).sqrt()
        };
        for k in 0..=200 {
            prop_assert!(sol.f_star <= f(k as f64 / 200.0) + 1e-9 * scale);
        }
    }

    #[test]
    fn uvs_k3_by_pgd_satisfies_duality(
        g in prop::collection::vec(prop::collection::vec(-3.0f64..3.0, 6), 3),
        c in 0.1f64..1.5,
    ) {
        let g32: Vec<Vec<f32>> = g.iter().map(|x| to_f32(x)).collect();
        let gd: Vec<Vec<f64>> = g32.iter().map(|x| x.iter().map(|&y| y as f64).collect()).collect();
        let refs: Vec<&[f32]> = g32.iter().map(|x| x.as_slice()).collect();
        let sol = uvs_gram(&gram(&refs, None), 3, c);
        prop_assume!(sol.lambda.is_finite());
        let grefs: Vec<&[f64]> = gd.iter().map(|x| x.as_slice()).collect();
        let v = combine(&sol.coef, &grefs);
        let g0 = combine(&[1.0, 1.0, 1.0], &grefs);
        let n0 = dotf(&g0, &g0).sqrt();
        prop_assume!(n0 > 1e-2);
        let m = gd.iter().map(|x| dotf(x, &v)).fold(f64::INFINITY, f64::min);
        let scale = 1.0 + gd.iter().map(|x| dotf(x, x)).sum::<f64>();
        prop_assert!((m - sol.f_star).abs() <= 1e-6 * scale, "min {m} vs F* {}", sol.f_star);
        let dv: Vec<f64> = v.iter().zip(&g0).map(|(a, b)| a - b).collect();
        prop_assert!((dotf(&dv, &dv).sqrt() - c * n0).abs() <= 1e-9 * (1.0 + n0));
        prop_assert!((sol.mu.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
