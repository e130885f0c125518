//! Hand-computed metric cases and property tests against brute-force definitions.
use harness::metrics::{FrameScore, Metric, MetricSet, binary_metrics, evaluate, roc_curve, video_scores};
use proptest::prelude::*;

fn val(m: &Metric) -> f64 {
    m.value().unwrap_or_else(|| panic!("expected a value, got {m}"))
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12, "{what}: {a} != {b}");
}

fn undefined_with(m: &Metric, needle: &str) {
    match m {
        Metric::Undefined(r) => assert!(r.contains(needle), "reason `{r}` lacks `{needle}`"),
        Metric::Value(v) => panic!("expected undefined ({needle}), got {v}"),
    }
}

#[test]
fn ties_between_classes_count_half() {
    // One fake tied with two reals at 0.5, one real below: pairs 1/2 + 1/2 + 1 over 3.
    let m = binary_metrics(&[0.5, 0.5, 0.5, 0.2], &[1, 0, 0, 0]);
    close(val(&m.auc), 2.0 / 3.0, "auc");
    // One threshold reaches the fake: precision 1/3 at recall 1.
    close(val(&m.ap), 1.0 / 3.0, "ap");
    // ROC (0,0), (2/3,1), (1,1): |fnr - fpr| = 1, 2/3, 1.
    close(val(&m.eer), 2.0 / 3.0, "eer");
    // On the segment (0,0)-(2/3,1): fnr = fpr at fpr = 0.4.
    close(val(&m.eer_interp), 0.4, "eer_interp");
    // 0.5 is not > 0.5: everything predicted real.
    close(val(&m.acc), 0.75, "acc");
    close(val(&m.acc_real), 1.0, "acc_real");
    close(val(&m.acc_fake), 0.0, "acc_fake");
    assert_eq!((m.n, m.n_real, m.n_fake), (4, 3, 1));
}

#[test]
fn all_equal_scores() {
    let m = binary_metrics(&[0.3; 4], &[0, 1, 0, 1]);
    close(val(&m.auc), 0.5, "auc");
    close(val(&m.ap), 0.5, "ap");
    // The ROC is (0,0), (1,1); both have |fnr - fpr| = 1 and the first wins: DeepfakeBench's
    // EER of a constant detector is 0. The interpolated EER is the meaningful 0.5.
    close(val(&m.eer), 0.0, "eer");
    close(val(&m.eer_interp), 0.5, "eer_interp");
    close(val(&m.acc), 0.5, "acc");
}

#[test]
fn perfect_classifier() {
    let m = binary_metrics(&[0.9, 0.1, 0.8, 0.2], &[1, 0, 1, 0]);
    for (name, x, want) in [
        ("auc", &m.auc, 1.0),
        ("ap", &m.ap, 1.0),
        ("eer", &m.eer, 0.0),
        ("eer_interp", &m.eer_interp, 0.0),
        ("acc", &m.acc, 1.0),
        ("acc_real", &m.acc_real, 1.0),
        ("acc_fake", &m.acc_fake, 1.0),
    ] {
        close(val(x), want, name);
    }
}

#[test]
fn inverted_classifier() {
    let m = binary_metrics(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]);
    close(val(&m.auc), 0.0, "auc");
    // Thresholds 0.2 (P 1/3, R 1/2) and 0.1 (P 1/2, R 1).
    close(val(&m.ap), 0.5 / 3.0 + 0.25, "ap");
    // Pruned ROC (0,0), (.5,0), (1,0), (1,1): |fnr - fpr| = 1, .5, 0, 1.
    close(val(&m.eer), 1.0, "eer");
    close(val(&m.eer_interp), 1.0, "eer_interp");
    close(val(&m.acc), 0.0, "acc");
    let roc = roc_curve(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1], true).unwrap();
    assert_eq!(roc.fpr, vec![0.0, 0.5, 1.0, 1.0]);
    assert_eq!(roc.tpr, vec![0.0, 0.0, 0.0, 1.0]);
    assert_eq!(roc.thresholds, vec![f64::INFINITY, 0.9, 0.8, 0.1]);
}

#[test]
fn eer_takes_the_first_of_equal_minima() {
    // Pruned ROC (0,0) (0,.25) (0,.5) (.25,.5) (.5,.75) (.5,1) (1,1): |fnr - fpr| is .25 at
    // both (.25,.5) and (.5,.75); numpy's argmin takes the first (verified with sklearn 1.9).
    let s = [0.9, 0.8, 0.6, 0.2, 0.7, 0.6, 0.1, 0.05];
    let y = [1, 1, 1, 1, 0, 0, 0, 0];
    let m = binary_metrics(&s, &y);
    close(val(&m.eer), 0.25, "eer");
    close(val(&m.eer_interp), 0.375, "eer_interp");
    let roc = roc_curve(&s, &y, true).unwrap();
    assert_eq!(roc.fpr, vec![0.0, 0.0, 0.0, 0.25, 0.5, 0.5, 1.0]);
    assert_eq!(roc.tpr, vec![0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]);
}

#[test]
fn one_class_is_undefined_but_accuracy_is_not() {
    let m = binary_metrics(&[0.9, 0.4, 0.7], &[1, 1, 1]);
    for x in [&m.auc, &m.ap, &m.eer, &m.eer_interp] {
        undefined_with(x, "only fake samples (n = 3)");
    }
    close(val(&m.acc), 2.0 / 3.0, "acc");
    close(val(&m.acc_fake), 2.0 / 3.0, "acc_fake");
    undefined_with(&m.acc_real, "no real samples");

    let m = binary_metrics(&[0.9, 0.4], &[0, 0]);
    undefined_with(&m.auc, "only real samples");
    close(val(&m.acc_real), 0.5, "acc_real");
    undefined_with(&m.acc_fake, "no fake samples");
    assert!(roc_curve(&[0.9, 0.4], &[0, 0], true).unwrap_err().contains("only real"));
}

#[test]
fn empty_set_is_undefined() {
    let m = binary_metrics(&[], &[]);
    for (_, x) in m.named() {
        undefined_with(x, "empty");
    }
    assert_eq!((m.n, m.n_real, m.n_fake), (0, 0, 0));
    assert!(roc_curve(&[], &[], false).is_err());
}

#[test]
fn non_finite_scores_are_undefined() {
    let m = binary_metrics(&[0.1, f64::NAN, 0.7, 0.2], &[0, 1, 1, 0]);
    for (_, x) in m.named() {
        undefined_with(x, "NaN or infinite (first at index 1");
    }
    assert_eq!((m.n, m.n_real, m.n_fake), (4, 2, 2));
    let m = binary_metrics(&[0.1, f64::INFINITY], &[0, 1]);
    undefined_with(&m.auc, "1 score(s) are NaN or infinite");
}

#[test]
fn bad_labels_and_lengths_are_undefined() {
    let m = binary_metrics(&[0.1, 0.2], &[0, 2]);
    undefined_with(&m.acc, "label 2 at index 1");
    let m = binary_metrics(&[0.1, 0.2], &[0]);
    undefined_with(&m.auc, "2 scores but 1 labels");
}

#[test]
fn per_class_accuracy_with_unsorted_labels() {
    // Reals at positions 1, 3, 4 (0.6 wrong, 0.1 and 0.2 right); fakes at 0, 2 (0.9 right, 0.4
    // wrong). A positional split (DeepfakeBench) would get both wrong.
    let m = binary_metrics(&[0.9, 0.6, 0.4, 0.1, 0.2], &[1, 0, 1, 0, 0]);
    close(val(&m.acc_real), 2.0 / 3.0, "acc_real");
    close(val(&m.acc_fake), 0.5, "acc_fake");
    close(val(&m.acc), 0.6, "acc");
}

fn frame(dataset: &str, label: u8, video: &str, score: f64) -> FrameScore {
    FrameScore { dataset: dataset.into(), label, video: video.into(), score }
}

#[test]
fn videos_key_on_dataset_label_and_name() {
    let frames = [
        frame("FF-DF", 1, "000_003", 0.8),
        frame("FF-F2F", 1, "000_003", 0.2),
        frame("FF-DF", 0, "000_003", 0.4),
        frame("FF-DF", 1, "000_003", 0.6),
        frame("FF-DF", 0, "000_003", 0.2),
    ];
    let v = video_scores(&frames);
    let got: Vec<(&str, u8, &str, f64, usize)> =
        v.iter().map(|v| (v.dataset.as_str(), v.label, v.video.as_str(), v.score, v.n_frames)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, got[0].1, got[0].2, got[0].4), ("FF-DF", 0, "000_003", 2));
    close(got[0].3, (0.4 + 0.2) / 2.0, "real mean");
    assert_eq!((got[1].0, got[1].1, got[1].4), ("FF-DF", 1, 2));
    close(got[1].3, 0.7, "FF-DF fake mean");
    assert_eq!((got[2].0, got[2].1, got[2].3, got[2].4), ("FF-F2F", 1, 0.2, 1));

    let lm = evaluate(&frames);
    assert_eq!((lm.frame.n, lm.video.n, lm.video.n_real, lm.video.n_fake), (5, 3, 1, 2));
    // Real video 0.3 against fakes 0.7 (above) and 0.2 (below).
    close(val(&lm.video.auc), 0.5, "video auc");
    // Frames: reals {0.4, 0.2} vs fakes {0.8, 0.2, 0.6}: 2 + (0 + 1/2) + 2 out of 6 pairs.
    close(val(&lm.frame.auc), 4.5 / 6.0, "frame auc");
}

#[test]
fn video_with_a_nan_frame_is_undefined() {
    let frames = [frame("d", 1, "a", f64::NAN), frame("d", 0, "b", 0.1)];
    let lm = evaluate(&frames);
    undefined_with(&lm.video.auc, "NaN");
}

#[test]
fn a_million_scores_run_in_one_pass() {
    // Guards against quadratic behaviour by size alone (no timing assertion): 1e6 scores with
    // heavy ties. Labels independent of scores: AUC near 0.5; a perfect split: AUC 1.
    let n = 1_000_000usize;
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut scores = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        scores.push((next() % 1000) as f64 / 1000.0);
        labels.push((next() & 1) as u8);
    }
    let m = binary_metrics(&scores, &labels);
    assert!((val(&m.auc) - 0.5).abs() < 0.01, "{}", m.auc);
    assert!((val(&m.eer_interp) - 0.5).abs() < 0.01, "{}", m.eer_interp);
    let labels: Vec<u8> = scores.iter().map(|&s| (s >= 0.5) as u8).collect();
    let m = binary_metrics(&scores, &labels);
    assert_eq!(val(&m.auc), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Brute-force definitions, written independently of the library's streaming implementation.

fn brute_auc(s: &[f64], y: &[u8]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..s.len() {
        for j in 0..s.len() {
            if y[i] == 1 && y[j] == 0 {
                den += 1.0;
                num += if s[i] > s[j] {
                    1.0
                } else if s[i] == s[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    num / den
}

/// Distinct thresholds, high to low, with (fp, tp) = counts of scores >= threshold.
fn brute_points(s: &[f64], y: &[u8]) -> Vec<(f64, f64, f64)> {
    let mut t: Vec<f64> = s.to_vec();
    t.sort_by(|a, b| b.partial_cmp(a).unwrap());
    t.dedup();
    t.iter()
        .map(|&th| {
            let tp = s.iter().zip(y).filter(|&(&x, &l)| x >= th && l == 1).count() as f64;
            let fp = s.iter().zip(y).filter(|&(&x, &l)| x >= th && l == 0).count() as f64;
            (th, fp, tp)
        })
        .collect()
}

fn brute_ap(s: &[f64], y: &[u8]) -> f64 {
    let p = y.iter().filter(|&&l| l == 1).count() as f64;
    let mut prev_r = 0.0;
    let mut ap = 0.0;
    for (_, fp, tp) in brute_points(s, y) {
        let r = tp / p;
        ap += (r - prev_r) * tp / (tp + fp);
        prev_r = r;
    }
    ap
}

/// sklearn's pruned ROC (vectorised rule on the unpruned sequence) and DeepfakeBench's EER.
fn brute_roc_and_eer(s: &[f64], y: &[u8]) -> (Vec<f64>, Vec<f64>, f64) {
    let p = y.iter().filter(|&&l| l == 1).count() as f64;
    let n = y.len() as f64 - p;
    let pts = brute_points(s, y);
    let m = pts.len();
    let keep: Vec<bool> = (0..m)
        .map(|i| {
            m <= 2
                || i == 0
                || i == m - 1
                || pts[i - 1].1 - 2.0 * pts[i].1 + pts[i + 1].1 != 0.0
                || pts[i - 1].2 - 2.0 * pts[i].2 + pts[i + 1].2 != 0.0
        })
        .collect();
    let mut fpr = vec![0.0];
    let mut tpr = vec![0.0];
    for (i, &(_, fp, tp)) in pts.iter().enumerate() {
        if keep[i] {
            fpr.push(fp / n);
            tpr.push(tp / p);
        }
    }
    let d: Vec<f64> = fpr.iter().zip(&tpr).map(|(f, t)| ((1.0 - t) - f).abs()).collect();
    let mut best = 0;
    for i in 1..d.len() {
        if d[i] < d[best] {
            best = i;
        }
    }
    let eer = fpr[best];
    (fpr, tpr, eer)
}

fn brute_eer_interp(s: &[f64], y: &[u8]) -> f64 {
    let p = y.iter().filter(|&&l| l == 1).count() as f64;
    let n = y.len() as f64 - p;
    let mut prev = (0.0, 0.0);
    for (_, fp, tp) in brute_points(s, y) {
        let cur = (fp / n, tp / p);
        let (d0, d1) = (1.0 - prev.1 - prev.0, 1.0 - cur.1 - cur.0);
        if d1 <= 0.0 {
            if d1 == 0.0 {
                return cur.0;
            }
            return prev.0 + d0 / (d0 - d1) * (cur.0 - prev.0);
        }
        prev = cur;
    }
    unreachable!("the last point is (1, 1)")
}

fn scored(max_len: usize, levels: u32) -> impl Strategy<Value = (Vec<f64>, Vec<u8>)> {
    prop::collection::vec((0..levels, 0u8..2), 0..max_len).prop_map(move |v| {
        // A few distinct values (many ties), spread over [0, 1] so 0.5 itself occurs.
        let scores = v.iter().map(|&(k, _)| k as f64 / (levels - 1) as f64).collect();
        let labels = v.iter().map(|&(_, l)| l).collect();
        (scores, labels)
    })
}

fn check_against_brute(s: &[f64], y: &[u8]) -> Result<(), TestCaseError> {
    let m: MetricSet = binary_metrics(s, y);
    let (n_fake, n_real) = (y.iter().filter(|&&l| l == 1).count(), y.iter().filter(|&&l| l == 0).count());
    prop_assert_eq!((m.n, m.n_real, m.n_fake), (s.len(), n_real, n_fake));
    if s.is_empty() {
        prop_assert!(!m.acc.is_defined());
        return Ok(());
    }
    let acc = s.iter().zip(y).filter(|&(&x, &l)| (x > 0.5) == (l == 1)).count() as f64 / s.len() as f64;
    prop_assert!((val(&m.acc) - acc).abs() < 1e-12);
    if n_real == 0 || n_fake == 0 {
        prop_assert!(!m.auc.is_defined() && !m.ap.is_defined() && !m.eer.is_defined());
        return Ok(());
    }
    prop_assert!((val(&m.auc) - brute_auc(s, y)).abs() < 1e-12, "auc {} vs {}", m.auc, brute_auc(s, y));
    prop_assert!((val(&m.ap) - brute_ap(s, y)).abs() < 1e-12, "ap {} vs {}", m.ap, brute_ap(s, y));
    let (fpr, tpr, eer) = brute_roc_and_eer(s, y);
    prop_assert_eq!(val(&m.eer), eer);
    prop_assert!((val(&m.eer_interp) - brute_eer_interp(s, y)).abs() < 1e-12);
    let roc = roc_curve(s, y, true).unwrap();
    prop_assert_eq!(&roc.fpr, &fpr);
    prop_assert_eq!(&roc.tpr, &tpr);
    // The unpruned curve has one point per distinct score (plus (0, 0)), and its trapezoid
    // area is the AUC.
    let full = roc_curve(s, y, false).unwrap();
    prop_assert_eq!(full.fpr.len(), brute_points(s, y).len() + 1);
    let area: f64 =
        full.fpr.windows(2).zip(full.tpr.windows(2)).map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0).sum();
    prop_assert!((area - val(&m.auc)).abs() < 1e-12);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn matches_brute_force_with_many_ties((s, y) in scored(60, 5)) {
        check_against_brute(&s, &y)?;
    }

    #[test]
    fn matches_brute_force_with_few_ties((s, y) in scored(120, 1000)) {
        check_against_brute(&s, &y)?;
    }

    #[test]
    fn order_of_rows_does_not_matter((s, y) in scored(80, 7), rot in 0usize..80) {
        let m = binary_metrics(&s, &y);
        let k = if s.is_empty() { 0 } else { rot % s.len() };
        let (mut s2, mut y2) = (s.clone(), y.clone());
        s2.rotate_left(k);
        y2.rotate_left(k);
        prop_assert_eq!(m, binary_metrics(&s2, &y2));
    }
}

/// Measurement only (no assertion on time): `cargo test --release -p harness --test
/// metrics_cases -- --ignored --nocapture time_1e7`.
#[test]
#[ignore]
fn time_1e7() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 10_000_000usize;
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..2u8)).collect();
    let scores: Vec<f64> = labels.iter().map(|&l| rng.random::<f64>() * 0.8 + 0.2 * l as f64).collect();
    let t = std::time::Instant::now();
    let m = binary_metrics(&scores, &labels);
    println!(
        "1e7 random scores: binary_metrics {:.3} s (auc {}, eer {})",
        t.elapsed().as_secs_f64(),
        m.auc,
        m.eer
    );
    let frames: Vec<FrameScore> = scores
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (&s, &l))| frame("d", l, &format!("{}", i / 32), s))
        .collect();
    let t = std::time::Instant::now();
    let lm = evaluate(&frames);
    println!(
        "1e7 frames in 312500 videos: evaluate {:.3} s (video auc {})",
        t.elapsed().as_secs_f64(),
        lm.video.auc
    );
}
