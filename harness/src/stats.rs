//! Statistics over stored results: DeLong's paired AUC test, video-level and hierarchical
//! (seeds, then videos) bootstrap confidence intervals, Student t intervals over seeds, ROC
//! points and small helpers.
//!
//! The AUC here is a private Mann-Whitney estimate (ties count 1/2, which equals sklearn's
//! trapezoidal ROC AUC) used *inside* DeLong and the bootstrap. The numbers reported in tables
//! are the runner's, computed by `crate::metrics` and read from `metrics.parquet`; the two agree
//! by definition, and the report checks nothing against this one.
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Mid-ranks (1-based, ties get the mean of their ranks) of `x`, written into `out`.
/// `order` is scratch space (indices), reused by callers in loops.
fn midranks_into(x: &[f64], order: &mut Vec<usize>, out: &mut Vec<f64>) {
    let n = x.len();
    order.clear();
    order.extend(0..n);
    order.sort_unstable_by(|&a, &b| x[a].total_cmp(&x[b]));
    out.clear();
    out.resize(n, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share rank mean((i+1)..=(j+1)).
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
}

fn midranks(x: &[f64]) -> Vec<f64> {
    let (mut o, mut r) = (Vec::new(), Vec::new());
    midranks_into(x, &mut o, &mut r);
    r
}

/// AUC = P(score_fake > score_real) + 1/2 P(equal), O(n log n). None when a class is missing.
/// `labels`: 1 = fake (positive), anything else real.
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut s = AucScratch::default();
    s.auc(scores, labels)
}

/// Reusable buffers so a bootstrap loop allocates nothing per replicate.
#[derive(Default)]
pub struct AucScratch {
    order: Vec<usize>,
    ranks: Vec<f64>,
}

impl AucScratch {
    pub fn auc(&mut self, scores: &[f64], labels: &[u8]) -> Option<f64> {
        assert_eq!(scores.len(), labels.len(), "scores and labels differ in length");
        midranks_into(scores, &mut self.order, &mut self.ranks);
        let mut n_pos = 0usize;
        let mut rank_sum = 0.0;
        for (r, &l) in self.ranks.iter().zip(labels) {
            if l == 1 {
                n_pos += 1;
                rank_sum += r;
            }
        }
        let n_neg = scores.len() - n_pos;
        if n_pos == 0 || n_neg == 0 {
            return None;
        }
        let (m, n) = (n_pos as f64, n_neg as f64);
        Some((rank_sum - m * (m + 1.0) / 2.0) / (m * n))
    }
}

/// ROC curve points (fpr, tpr) from (0, 0) to (1, 1), one point per distinct threshold (no
/// collinear pruning: these are for drawing). None when a class is missing.
pub fn roc_points(scores: &[f64], labels: &[u8]) -> Option<Vec<(f64, f64)>> {
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1
        } else {
            fp += 1
        }
        let last_of_threshold = k + 1 == idx.len() || scores[idx[k + 1]] != scores[i];
        if last_of_threshold {
            pts.push((fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
        }
    }
    Some(pts)
}

/// Result of DeLong's paired test of two correlated AUCs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeLong {
    pub auc_a: f64,
    pub auc_b: f64,
    pub var_a: f64,
    pub var_b: f64,
    pub cov_ab: f64,
    /// (auc_a - auc_b) / sd(auc_a - auc_b); 0 when both AUCs and all placements agree;
    /// +-infinity when the difference is nonzero but its estimated variance is 0.
    pub z: f64,
    /// Two-sided p-value under N(0, 1).
    pub p: f64,
    pub n_pos: usize,
    pub n_neg: usize,
}

/// DeLong, DeLong & Clarke-Pearson (1988), with the mid-rank computation of Sun & Xu (2014):
/// the placement value of positive i is V10_i = (R_i - R^pos_i) / n, of negative j
/// V01_j = 1 - (R_j - R^neg_j) / m, where R are mid-ranks in the pooled sample and R^pos, R^neg
/// within each class (m positives, n negatives). Var(AUC) = S10/m + S01/n with S the sample
/// covariances (denominator m-1, n-1) of the placement values of the two classifiers.
/// Scores a and b must be for the same samples in the same order. Needs >= 2 of each class.
pub fn delong(scores_a: &[f64], scores_b: &[f64], labels: &[u8]) -> Option<DeLong> {
    assert_eq!(scores_a.len(), labels.len(), "scores_a and labels differ in length");
    assert_eq!(scores_b.len(), labels.len(), "scores_b and labels differ in length");
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != 1).collect();
    let (m, n) = (pos.len(), neg.len());
    if m < 2 || n < 2 {
        return None;
    }
    let placements = |s: &[f64]| -> (f64, Vec<f64>, Vec<f64>) {
        let r_all = midranks(s);
        let r_pos = midranks(&pos.iter().map(|&i| s[i]).collect::<Vec<_>>());
        let r_neg = midranks(&neg.iter().map(|&i| s[i]).collect::<Vec<_>>());
        let v10: Vec<f64> = pos.iter().zip(&r_pos).map(|(&i, rp)| (r_all[i] - rp) / n as f64).collect();
        let v01: Vec<f64> = neg.iter().zip(&r_neg).map(|(&j, rn)| 1.0 - (r_all[j] - rn) / m as f64).collect();
        let auc = v10.iter().sum::<f64>() / m as f64;
        (auc, v10, v01)
    };
    let (auc_a, a10, a01) = placements(scores_a);
    let (auc_b, b10, b01) = placements(scores_b);
    let cov = |x: &[f64], y: &[f64]| -> f64 {
        let k = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / k, y.iter().sum::<f64>() / k);
        x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum::<f64>() / (k - 1.0)
    };
    let var_a = cov(&a10, &a10) / m as f64 + cov(&a01, &a01) / n as f64;
    let var_b = cov(&b10, &b10) / m as f64 + cov(&b01, &b01) / n as f64;
    let cov_ab = cov(&a10, &b10) / m as f64 + cov(&a01, &b01) / n as f64;
    let var_diff = (var_a + var_b - 2.0 * cov_ab).max(0.0);
    let diff = auc_a - auc_b;
    // Placement values are multiples of 1/(2n) or 1/(2m); a relative tolerance keeps float noise
    // in identical inputs from producing a huge spurious z.
    let eps = 1e-12;
    let z = if var_diff <= eps * eps {
        if diff.abs() <= eps { 0.0 } else { diff.signum() * f64::INFINITY }
    } else {
        diff / var_diff.sqrt()
    };
    let p = two_sided_p(z);
    Some(DeLong { auc_a, auc_b, var_a, var_b, cov_ab, z, p, n_pos: m, n_neg: n })
}

/// Two-sided normal p-value 2 (1 - Phi(|z|)) = erfc(|z| / sqrt 2).
pub fn two_sided_p(z: f64) -> f64 {
    if z.is_infinite() {
        return 0.0;
    }
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// Complementary error function, W. J. Cody's rational approximations (1969), relative error
/// below 1e-15 over the real line.
// The coefficients keep the digits Cody published, so they can be checked against the paper.
#[allow(clippy::excessive_precision)]
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 0.5 {
        return 1.0 - erf_small(x);
    }
    if x > 27.0 {
        return 0.0;
    }
    const P: [f64; 9] = [
        5.641_884_969_886_700_9e-1,
        8.883_149_794_388_375_9,
        6.611_919_063_714_163e1,
        2.986_351_381_974_001_3e2,
        8.819_522_212_417_691e2,
        1.712_047_612_634_070_6e3,
        2.051_078_377_826_071_5e3,
        1.230_339_354_797_997_2e3,
        2.153_115_354_744_038_5e-8,
    ];
    const Q: [f64; 8] = [
        1.574_492_611_070_983_5e1,
        1.176_939_508_913_125e2,
        5.371_811_018_620_098_6e2,
        1.621_389_574_566_690_3e3,
        3.290_799_235_733_459_7e3,
        4.362_619_090_143_247e3,
        3.439_367_674_143_721_6e3,
        1.230_339_354_803_749_5e3,
    ];
    const PL: [f64; 6] = [
        3.053_266_349_612_323_6e-1,
        3.603_448_999_498_044_5e-1,
        1.257_817_261_112_292_6e-1,
        1.608_378_514_874_227_5e-2,
        6.587_491_615_298_378_5e-4,
        1.631_538_713_730_709_6e-2,
    ];
    const QL: [f64; 5] = [
        2.568_520_192_289_822_4,
        1.872_952_849_923_460_4,
        5.279_051_029_514_284_5e-1,
        6.051_834_131_244_131_9e-2,
        2.335_204_976_268_691_8e-3,
    ];
    let frac = if x <= 4.0 {
        let mut num = P[8] * x;
        let mut den = x;
        for i in 0..7 {
            num = (num + P[i]) * x;
            den = (den + Q[i]) * x;
        }
        (num + P[7]) / (den + Q[7])
    } else {
        let z = 1.0 / (x * x);
        let mut num = PL[5] * z;
        let mut den = z;
        for i in 0..4 {
            num = (num + PL[i]) * z;
            den = (den + QL[i]) * z;
        }
        let r = z * (num + PL[4]) / (den + QL[4]);
        (1.0 / std::f64::consts::PI.sqrt() - r) / x
    };
    // exp(-x^2) split as in Cody to keep precision for large x.
    let xs = (x * 16.0).trunc() / 16.0;
    let del = (x - xs) * (x + xs);
    (-xs * xs).exp() * (-del).exp() * frac
}

#[allow(clippy::excessive_precision)]
fn erf_small(x: f64) -> f64 {
    const A: [f64; 5] = [
        3.161_123_743_870_565_6,
        1.138_641_541_510_501_6e2,
        3.774_852_376_853_020_2e2,
        3.209_377_589_138_469_5e3,
        1.857_777_061_846_031_5e-1,
    ];
    const B: [f64; 4] = [
        2.360_129_095_234_412_1e1,
        2.440_246_379_344_441_7e2,
        1.282_616_526_077_372_3e3,
        2.844_236_833_439_170_6e3,
    ];
    let z = x * x;
    let mut num = A[4] * z;
    let mut den = z;
    for i in 0..3 {
        num = (num + A[i]) * z;
        den = (den + B[i]) * z;
    }
    x * (num + A[3]) / (den + B[3])
}

/// A percentile bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ci {
    pub lo: f64,
    pub hi: f64,
}

/// Linear-interpolated quantile of sorted data (numpy's default, "type 7").
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty());
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// A derived seed for one (global seed, key) pair, so that each bootstrap stream is independent
/// of the order in which the report visits groups.
pub fn derive_seed(seed: u64, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One test video for the bootstrap: its label and, per replicate run (seed), the scores of its
/// frames. A run that lacks the video has an empty list.
#[derive(Debug, Clone)]
pub struct BootVideo {
    pub label: u8,
    pub per_run: Vec<Vec<f64>>,
}

/// Percentile CI of the mean over runs of the AUC, resampling *videos* with replacement within
/// each class (stratified, so every replicate has both classes), the same resample for every
/// run (seed). `video_level`: each video contributes the mean of its frame scores (video AUC);
/// otherwise all its frames (frame AUC, cluster bootstrap). None when a class is missing or
/// `n_boot` is 0. Deterministic for a given `seed`.
pub fn bootstrap_auc_ci(
    videos: &[BootVideo],
    video_level: bool,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> Option<Ci> {
    let pos: Vec<usize> = (0..videos.len()).filter(|&i| videos[i].label == 1).collect();
    let neg: Vec<usize> = (0..videos.len()).filter(|&i| videos[i].label != 1).collect();
    if pos.is_empty() || neg.is_empty() || n_boot == 0 {
        return None;
    }
    let n_runs = videos.first().map_or(0, |v| v.per_run.len());
    // Each run's samples sorted once; a replicate is then a weighted O(N) sweep (weight of a
    // sample = times its video was drawn), not a fresh sort of the resampled scores.
    let sorted = sorted_per_run(videos, n_runs, video_level);
    let is_pos: Vec<bool> = videos.iter().map(|v| v.label == 1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = vec![0u32; videos.len()];
    let mut reps = Vec::with_capacity(n_boot);
    for _ in 0..n_boot {
        weights.fill(0);
        for class in [&pos, &neg] {
            for _ in 0..class.len() {
                weights[class[rng.random_range(0..class.len())]] += 1;
            }
        }
        reps.extend(mean_weighted_auc(sorted.iter(), &weights, &is_pos));
    }
    percentile_ci(reps, level)
}

/// Mean AUC of one bootstrap replicate over the given runs' samples (runs whose replicate has one
/// class only are left out); `None` when none has an AUC. Summed in the runs' order.
fn mean_weighted_auc<'a>(
    runs: impl Iterator<Item = &'a SortedSamples>,
    weights: &[u32],
    is_pos: &[bool],
) -> Option<f64> {
    let mut sum = 0.0;
    let mut k = 0usize;
    for s in runs {
        if let Some(a) = s.weighted_auc(weights, is_pos) {
            sum += a;
            k += 1;
        }
    }
    (k > 0).then(|| sum / k as f64)
}

/// The central `level` percentile interval of the replicates.
fn percentile_ci(mut reps: Vec<f64>, level: f64) -> Option<Ci> {
    if reps.is_empty() {
        return None;
    }
    reps.sort_unstable_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Some(Ci { lo: quantile_sorted(&reps, alpha), hi: quantile_sorted(&reps, 1.0 - alpha) })
}

/// Each run's samples (frame scores, or video means at video level) sorted once, tagged with
/// their video, so that a bootstrap replicate is a weighted O(N) sweep instead of a fresh sort.
fn sorted_per_run(videos: &[BootVideo], n_runs: usize, video_level: bool) -> Vec<SortedSamples> {
    (0..n_runs)
        .map(|r| {
            let mut items = Vec::new();
            for (v, video) in videos.iter().enumerate() {
                let frames = &video.per_run[r];
                if frames.is_empty() {
                    continue;
                }
                if video_level {
                    items.push((frames.iter().sum::<f64>() / frames.len() as f64, v));
                } else {
                    items.extend(frames.iter().map(|&x| (x, v)));
                }
            }
            SortedSamples::new(items)
        })
        .collect()
}

/// Scores sorted ascending with the index of their video, and where each run of tied scores ends.
pub struct SortedSamples {
    items: Vec<(f64, usize)>,
    tie_ends: Vec<usize>,
}

impl SortedSamples {
    pub fn new(mut items: Vec<(f64, usize)>) -> Self {
        items.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut tie_ends = Vec::new();
        for i in 0..items.len() {
            if i + 1 == items.len() || items[i + 1].0 != items[i].0 {
                tie_ends.push(i + 1);
            }
        }
        Self { items, tie_ends }
    }

    /// Mann-Whitney AUC of the multiset in which sample i appears `weights[video_i]` times:
    /// each positive scores 1 per lower negative and 1/2 per tied one. None if a class is empty.
    pub fn weighted_auc(&self, weights: &[u32], is_pos: &[bool]) -> Option<f64> {
        let (mut neg_below, mut num, mut m, mut n) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mut start = 0;
        for &end in &self.tie_ends {
            let (mut p, mut q) = (0.0, 0.0);
            for &(_, v) in &self.items[start..end] {
                let w = weights[v] as f64;
                if is_pos[v] { p += w } else { q += w }
            }
            num += p * (neg_below + 0.5 * q);
            neg_below += q;
            m += p;
            n += q;
            start = end;
        }
        (m > 0.0 && n > 0.0).then(|| num / (m * n))
    }
}

/// Pearson correlation; None with fewer than 3 pairs or zero variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    if n < 3 {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n as f64, y.iter().sum::<f64>() / n as f64);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Mean and sample standard deviation (ddof 1; None for a single value), as polars' `std(1)`.
pub fn mean_std(x: &[f64]) -> Option<(f64, Option<f64>)> {
    if x.is_empty() {
        return None;
    }
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let sd = (x.len() > 1).then(|| (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((m, sd))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=400 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta I_x(a, b).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(T <= t) for Student's t with `df` > 0 degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * inc_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The `p` quantile of Student's t with `df` > 0 degrees of freedom (0 < p < 1), by bisection on
/// the CDF to machine precision (cheap: the report needs a handful).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0 && df > 0.0, "t quantile of p = {p}, df = {df}");
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while student_t_cdf(hi, df) < p {
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if student_t_cdf(mid, df) < p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// Mean of paired differences over seeds with its Student t interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TInterval {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (ddof 1).
    pub sd: f64,
    pub lo: f64,
    pub hi: f64,
}

/// `level` (e.g. 0.95) two-sided Student t interval of the mean of `x`: mean ± t_{n-1} sd / √n.
/// None with fewer than two values (no spread to measure).
pub fn t_interval(x: &[f64], level: f64) -> Option<TInterval> {
    let (mean, sd) = mean_std(x)?;
    let sd = sd?;
    let n = x.len();
    let half = student_t_quantile(0.5 + level / 2.0, (n - 1) as f64) * sd / (n as f64).sqrt();
    Some(TInterval { n, mean, sd, lo: mean - half, hi: mean + half })
}

/// Percentile CI of the mean over seeds of the AUC by a two-level (hierarchical) bootstrap: each
/// replicate draws the runs (seeds) with replacement, then the videos within each class with
/// replacement (the same video draw for every drawn run, since all runs score the same test set),
/// and averages the drawn runs' AUCs. Unlike [`bootstrap_auc_ci`], which holds the trained models
/// fixed, the interval also covers the variation between training runs. `video_level` as there.
/// None when a class is missing, there are fewer than two runs, or `n_boot` is 0.
pub fn hierarchical_bootstrap_auc_ci(
    videos: &[BootVideo],
    video_level: bool,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> Option<Ci> {
    let pos: Vec<usize> = (0..videos.len()).filter(|&i| videos[i].label == 1).collect();
    let neg: Vec<usize> = (0..videos.len()).filter(|&i| videos[i].label != 1).collect();
    let n_runs = videos.first().map_or(0, |v| v.per_run.len());
    if pos.is_empty() || neg.is_empty() || n_boot == 0 || n_runs < 2 {
        return None;
    }
    let sorted = sorted_per_run(videos, n_runs, video_level);
    let is_pos: Vec<bool> = videos.iter().map(|v| v.label == 1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = vec![0u32; videos.len()];
    let mut reps = Vec::with_capacity(n_boot);
    for _ in 0..n_boot {
        let drawn: Vec<usize> = (0..n_runs).map(|_| rng.random_range(0..n_runs)).collect();
        weights.fill(0);
        for class in [&pos, &neg] {
            for _ in 0..class.len() {
                weights[class[rng.random_range(0..class.len())]] += 1;
            }
        }
        reps.extend(mean_weighted_auc(drawn.iter().map(|&r| &sorted[r]), &weights, &is_pos));
    }
    percentile_ci(reps, level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midranks_ties() {
        assert_eq!(midranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn weighted_auc_equals_auc_of_the_expanded_multiset() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let nv = 12;
            let is_pos: Vec<bool> = (0..nv).map(|v| v % 3 == 0).collect();
            // Two frames per video, scores rounded so that ties occur.
            let items: Vec<(f64, usize)> = (0..2 * nv)
                .map(|i| {
                    (((rng.random::<f64>() + is_pos[i / 2] as u8 as f64 * 0.3) * 8.0).round() / 8.0, i / 2)
                })
                .collect();
            let w: Vec<u32> = (0..nv).map(|_| rng.random_range(0..3)).collect();
            let (mut s, mut l) = (Vec::new(), Vec::new());
            for &(x, v) in &items {
                for _ in 0..w[v] {
                    s.push(x);
                    l.push(is_pos[v] as u8);
                }
            }
            let fast = SortedSamples::new(items).weighted_auc(&w, &is_pos);
            match (fast, auc(&s, &l)) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn erfc_known_values() {
        // Reference values from Python's math.erfc (libm).
        assert!((erfc(0.0) - 1.0).abs() < 1e-15);
        assert!((erfc(1.0) - 0.157_299_207_050_285_13).abs() < 1e-15);
        assert!((erfc(0.3) - 0.671_373_240_540_872_6).abs() < 1e-15);
        assert!((erfc(3.2) / 6.025_761_151_762_088e-6 - 1.0).abs() < 1e-14);
        assert!((erfc(10.0) / 2.088_487_583_762_545e-45 - 1.0).abs() < 1e-14);
        assert!((erfc(5.0) - 1.537_459_794_428_034_8e-12).abs() < 1e-24);
        assert!((erfc(-1.0) - 1.842_700_792_949_715).abs() < 1e-14);
        assert!((two_sided_p(1.959_963_984_540_054) - 0.05).abs() < 1e-12);
    }
}
