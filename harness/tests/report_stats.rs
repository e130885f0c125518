//! DeLong, bootstrap and AUC helpers against hand-computed and brute-force values.
use harness::stats::{self, BootVideo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// psi(x, y) of the Mann-Whitney kernel: 1 if the positive scores higher, 1/2 on a tie.
fn psi(x: f64, y: f64) -> f64 {
    if x > y {
        1.0
    } else if x == y {
        0.5
    } else {
        0.0
    }
}

/// DeLong's variance/covariance straight from the placement-value definition, O(m n).
fn brute(a: &[f64], b: &[f64], labels: &[u8]) -> (f64, f64, f64, f64, f64) {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    let place = |s: &[f64]| {
        let v10: Vec<f64> =
            pos.iter().map(|&i| neg.iter().map(|&j| psi(s[i], s[j])).sum::<f64>() / n).collect();
        let v01: Vec<f64> =
            neg.iter().map(|&j| pos.iter().map(|&i| psi(s[i], s[j])).sum::<f64>() / m).collect();
        let auc = v10.iter().sum::<f64>() / m;
        (auc, v10, v01)
    };
    let (aa, a10, a01) = place(a);
    let (ab, b10, b01) = place(b);
    let cov = |x: &[f64], y: &[f64], mx: f64, my: f64| {
        x.iter().zip(y).map(|(p, q)| (p - mx) * (q - my)).sum::<f64>() / (x.len() as f64 - 1.0)
    };
    let ma01 = a01.iter().sum::<f64>() / n;
    let mb01 = b01.iter().sum::<f64>() / n;
    let va = cov(&a10, &a10, aa, aa) / m + cov(&a01, &a01, ma01, ma01) / n;
    let vb = cov(&b10, &b10, ab, ab) / m + cov(&b01, &b01, mb01, mb01) / n;
    let c = cov(&a10, &b10, aa, ab) / m + cov(&a01, &b01, ma01, mb01) / n;
    (aa, ab, va, vb, c)
}

#[test]
fn delong_hand_checked_example() {
    // Positives 0.9, 0.6; negatives 0.7, 0.1. psi: (0.9,0.7)=1 (0.9,0.1)=1 (0.6,0.7)=0 (0.6,0.1)=1.
    // V10 = [1, 0.5], V01 = [0.5, 1]; AUC = 0.75; S10 = S01 = 0.125; Var = 0.125/2 + 0.125/2 = 0.125.
    let a = [0.9, 0.6, 0.7, 0.1];
    let l = [1, 1, 0, 0];
    let d = stats::delong(&a, &a, &l).unwrap();
    assert_eq!(d.auc_a, 0.75);
    assert!((d.var_a - 0.125).abs() < 1e-15, "{}", d.var_a);
    assert!((d.cov_ab - 0.125).abs() < 1e-15);
    assert_eq!(d.z, 0.0);
    assert_eq!(d.p, 1.0);
}

#[test]
fn delong_matches_brute_force_placements_with_ties() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for trial in 0..20 {
        let n = 15 + trial * 3;
        let labels: Vec<u8> = (0..n).map(|i| u8::from(i % 3 != 0)).collect();
        // Rounded to one decimal so ties within and across classes are frequent.
        let a: Vec<f64> =
            labels.iter().map(|&l| ((l as f64 * 0.3 + rng.random::<f64>()) * 10.0).round() / 10.0).collect();
        let b: Vec<f64> = a
            .iter()
            .zip(&labels)
            .map(|(x, &l)| ((x + 0.2 * rng.random::<f64>() - 0.1 * l as f64) * 10.0).round() / 10.0)
            .collect();
        let d = stats::delong(&a, &b, &labels).unwrap();
        let (aa, ab, va, vb, c) = brute(&a, &b, &labels);
        assert!((d.auc_a - aa).abs() < 1e-12 && (d.auc_b - ab).abs() < 1e-12);
        assert!((d.var_a - va).abs() < 1e-12, "var_a {} vs {va}", d.var_a);
        assert!((d.var_b - vb).abs() < 1e-12);
        assert!((d.cov_ab - c).abs() < 1e-12);
        let z = (aa - ab) / (va + vb - 2.0 * c).sqrt();
        assert!((d.z - z).abs() < 1e-9, "z {} vs {z}", d.z);
        // Antisymmetric in the two classifiers.
        let r = stats::delong(&b, &a, &labels).unwrap();
        assert!((r.z + d.z).abs() < 1e-12 && (r.p - d.p).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&d.p));
        // The fast AUC agrees with the brute force one and with the ROC trapezoid.
        assert!((stats::auc(&a, &labels).unwrap() - aa).abs() < 1e-12);
        let roc = stats::roc_points(&a, &labels).unwrap();
        let area: f64 = roc.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        assert!((area - aa).abs() < 1e-12, "trapezoid {area} vs {aa}");
    }
}

#[test]
fn delong_identical_scores_give_zero_and_clear_difference_is_significant() {
    let labels: Vec<u8> = (0..60).map(|i| u8::from(i % 2 == 0)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let good: Vec<f64> = labels.iter().map(|&l| l as f64 + rng.random::<f64>() * 0.8).collect();
    let d = stats::delong(&good, &good, &labels).unwrap();
    assert_eq!((d.z, d.p), (0.0, 1.0));
    let noise: Vec<f64> = labels.iter().map(|_| rng.random::<f64>()).collect();
    let d = stats::delong(&good, &noise, &labels).unwrap();
    assert!(d.auc_a > 0.99 && d.z > 3.0 && d.p < 0.01, "{d:?}");
    // One class only, or a single positive: no test.
    assert!(stats::delong(&[0.1, 0.2], &[0.1, 0.2], &[1, 1]).is_none());
    assert!(stats::delong(&[0.1, 0.2, 0.3], &[0.1, 0.2, 0.3], &[1, 0, 0]).is_none());
}

fn videos(seed: u64, n_real: usize, n_fake: usize, runs: usize) -> Vec<BootVideo> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n_real + n_fake)
        .map(|v| {
            let label = u8::from(v >= n_real);
            let per_run = (0..runs)
                .map(|_| (0..4).map(|_| label as f64 * 0.4 + rng.random::<f64>()).collect())
                .collect();
            BootVideo { label, per_run }
        })
        .collect()
}

#[test]
fn bootstrap_ci_contains_estimate_and_is_seeded() {
    let vids = videos(3, 20, 25, 2);
    for video_level in [false, true] {
        // Point estimate: mean over runs of the AUC on all videos.
        let mut point = 0.0;
        for r in 0..2 {
            let (mut s, mut l) = (vec![], vec![]);
            for v in &vids {
                if video_level {
                    s.push(v.per_run[r].iter().sum::<f64>() / 4.0);
                    l.push(v.label);
                } else {
                    s.extend(&v.per_run[r]);
                    l.extend(std::iter::repeat_n(v.label, 4));
                }
            }
            point += stats::auc(&s, &l).unwrap() / 2.0;
        }
        let ci = stats::bootstrap_auc_ci(&vids, video_level, 400, 0.95, 11).unwrap();
        assert!(ci.lo < point && point < ci.hi, "{ci:?} vs {point}");
        assert!(ci.hi - ci.lo > 0.01 && ci.hi - ci.lo < 0.5);
        assert_eq!(ci, stats::bootstrap_auc_ci(&vids, video_level, 400, 0.95, 11).unwrap());
        assert_ne!(ci, stats::bootstrap_auc_ci(&vids, video_level, 400, 0.95, 12).unwrap());
    }
    let one_class: Vec<BootVideo> = vids.into_iter().filter(|v| v.label == 1).collect();
    assert!(stats::bootstrap_auc_ci(&one_class, false, 100, 0.95, 0).is_none());
}

#[test]
fn quantile_and_helpers() {
    assert_eq!(stats::quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    assert_eq!(stats::quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.0), 1.0);
    assert!((stats::pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-15);
    assert!(stats::pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    let (m, s) = stats::mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(m, 2.5);
    assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
    assert_eq!(stats::mean_std(&[2.0]).unwrap(), (2.0, None));
    assert_ne!(stats::derive_seed(0, "a"), stats::derive_seed(0, "b"));
}

#[test]
fn student_t_quantiles_match_scipy() {
    // scipy.stats.t.ppf(q, df), as scipy prints them.
    let cases = [
        (0.975, 1.0, 12.706_204_736_174_707),
        (0.975, 2.0, 4.302_652_729_749_464),
        (0.975, 3.0, 3.182_446_305_284_263),
        (0.975, 4.0, 2.776_445_105_197_798_7),
        (0.975, 5.0, 2.570_581_835_636_314_6),
        (0.975, 9.0, 2.262_157_162_854_099_3),
        (0.975, 29.0, 2.045_229_642_132_703),
        (0.95, 10.0, 1.812_461_122_810_733_5),
        (0.995, 4.0, 4.604_094_871_415_897),
    ];
    for (q, df, want) in cases {
        let got = stats::student_t_quantile(q, df);
        assert!((got - want).abs() < 1e-9 * want, "t.ppf({q}, {df}) = {got}, scipy {want}");
        assert!((stats::student_t_quantile(1.0 - q, df) + want).abs() < 1e-9 * want);
    }
    // Closed forms: df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert!((stats::student_t_cdf(1.0, 1.0) - 0.75).abs() < 1e-14);
    for t in [-3.0, -0.5, 0.0, 0.7, 5.0] {
        let want = 0.5 + t / (2.0 * (2.0f64 + t * t).sqrt());
        assert!((stats::student_t_cdf(t, 2.0) - want).abs() < 1e-14, "t = {t}");
    }
}

#[test]
fn t_interval_hand_computed() {
    // Differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), half width t_{0.975, 3} sd / 2.
    let ti = stats::t_interval(&[1.0, 2.0, 3.0, 4.0], 0.95).unwrap();
    let half = 3.182_446_305_284_263 * (5.0f64 / 3.0).sqrt() / 2.0;
    assert_eq!((ti.n, ti.mean), (4, 2.5));
    assert!((ti.lo - (2.5 - half)).abs() < 1e-9 && (ti.hi - (2.5 + half)).abs() < 1e-9, "{ti:?}");
    assert!((ti.lo - 0.445_739_7).abs() < 1e-6, "{ti:?}");
    // One seed: no interval. Equal differences: a zero-width interval at the mean.
    assert!(stats::t_interval(&[1.0], 0.95).is_none());
    let z = stats::t_interval(&[0.5, 0.5, 0.5], 0.95).unwrap();
    assert_eq!((z.lo, z.hi), (0.5, 0.5));
}

#[test]
fn hierarchical_bootstrap_covers_seed_spread() {
    // Two runs of one model class whose scores are shifted: run 1 separates the classes much better.
    let mut vids = videos(4, 30, 30, 2);
    for v in &mut vids {
        if v.label == 1 {
            for x in &mut v.per_run[1] {
                *x += 0.8;
            }
        }
    }
    let fixed = stats::bootstrap_auc_ci(&vids, false, 600, 0.95, 3).unwrap();
    let hier = stats::hierarchical_bootstrap_auc_ci(&vids, false, 600, 0.95, 3).unwrap();
    // Resampling the seeds too must widen the interval when the seeds disagree.
    assert!(hier.hi - hier.lo > 1.5 * (fixed.hi - fixed.lo), "{hier:?} vs {fixed:?}");
    assert_eq!(hier, stats::hierarchical_bootstrap_auc_ci(&vids, false, 600, 0.95, 3).unwrap());
    let one_run = videos(4, 30, 30, 1);
    assert!(stats::hierarchical_bootstrap_auc_ci(&one_run, false, 100, 0.95, 0).is_none());
}
