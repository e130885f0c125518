//! Frame- and video-level metrics (AUC, AP, EER, ACC), identical to scikit-learn/DeepfakeBench.
//!
//! Score = probability that the sample is *fake*; label 1 = fake, 0 = real.
//!
//! * **AUC**: area under the ROC curve (trapezoid), i.e. the Mann-Whitney statistic with ties
//!   counted 1/2 (`sklearn.metrics.roc_auc_score`). Computed exactly in integer counts.
//! * **AP**: `sklearn.metrics.average_precision_score`: sum over the distinct thresholds, high to
//!   low, of `(R_k - R_{k-1}) P_k` (step-wise, not interpolated).
//! * **EER**: as DeepfakeBench reports it: `fpr[nanargmin |fnr - fpr|]` (first minimum) over the
//!   points of `sklearn.metrics.roc_curve(y, s)` (default `drop_intermediate=True` pruning, with
//!   the `(0, 0)` point prepended), `fnr = 1 - tpr`. It is a point of the ROC, not a crossing.
//! * **EER (interpolated)**, `eer_interp`: the FPR where FNR and FPR cross on the full ROC,
//!   interpolating linearly between the two points around the crossing.
//! * **ACC**: fraction with `(score > 0.5) == label`; `acc_real` / `acc_fake` are the accuracies
//!   over the real / fake samples (computed per class, whatever the order of the labels).
//!
//! A metric that is not defined for the input is [`Metric::Undefined`] with the reason, never a
//! number: an empty set, one class only (AUC/AP/EER; ACC is still defined), NaN or infinite
//! scores, labels other than 0/1.
//!
//! Everything costs one sort of the scores (O(n log n)) and O(n) extra memory.

mod curve;
mod video;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use curve::SortedScores;
pub use video::{FrameScore, LevelMetrics, VideoScore, evaluate, video_scores};

/// A metric value, or the reason it is not defined for this input.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Always finite.
    Value(f64),
    /// Why there is no value (e.g. "only fake samples (n = 12)").
    Undefined(String),
}

impl Metric {
    /// The value, if defined.
    pub fn value(&self) -> Option<f64> {
        match self {
            Metric::Value(v) => Some(*v),
            Metric::Undefined(_) => None,
        }
    }

    pub fn is_defined(&self) -> bool {
        matches!(self, Metric::Value(_))
    }

    /// The reason it is undefined, if it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Metric::Value(_) => None,
            Metric::Undefined(r) => Some(r),
        }
    }

    fn undefined(reason: impl Into<String>) -> Self {
        Metric::Undefined(reason.into())
    }
}

impl fmt::Display for Metric {
    /// A defined value prints with the formatter's precision (4 decimals by default).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Value(v) => write!(f, "{:.*}", f.precision().unwrap_or(4), v),
            Metric::Undefined(r) => write!(f, "undefined ({r})"),
        }
    }
}

/// JSON form: a defined metric is a plain number, an undefined one `{"undefined": "reason"}`.
impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Metric::Value(v) => s.serialize_f64(*v),
            Metric::Undefined(r) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("undefined", r)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Value(f64),
            Undefined { undefined: String },
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Value(v) => Metric::Value(v),
            Repr::Undefined { undefined } => Metric::Undefined(undefined),
        })
    }
}

/// All metrics of one set of scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    pub auc: Metric,
    pub ap: Metric,
    /// DeepfakeBench's EER (a point of the pruned ROC); see the module documentation.
    pub eer: Metric,
    /// EER where FNR and FPR cross on the full ROC (linear interpolation).
    pub eer_interp: Metric,
    pub acc: Metric,
    pub acc_real: Metric,
    pub acc_fake: Metric,
    pub n: usize,
    pub n_real: usize,
    pub n_fake: usize,
}

impl MetricSet {
    /// The metrics with their names (the field names), in a fixed order, for tables and files.
    pub fn named(&self) -> [(&'static str, &Metric); 7] {
        [
            ("auc", &self.auc),
            ("ap", &self.ap),
            ("eer", &self.eer),
            ("eer_interp", &self.eer_interp),
            ("acc", &self.acc),
            ("acc_real", &self.acc_real),
            ("acc_fake", &self.acc_fake),
        ]
    }

    fn all_undefined(n: usize, n_real: usize, n_fake: usize, reason: &str) -> Self {
        let u = || Metric::undefined(reason);
        MetricSet {
            auc: u(),
            ap: u(),
            eer: u(),
            eer_interp: u(),
            acc: u(),
            acc_real: u(),
            acc_fake: u(),
            n,
            n_real,
            n_fake,
        }
    }
}

/// Checks the input every metric needs; returns `(n_real, n_fake)` or why nothing is defined.
fn check(scores: &[f64], labels: &[u8]) -> Result<(usize, usize), String> {
    if scores.len() != labels.len() {
        return Err(format!("{} scores but {} labels", scores.len(), labels.len()));
    }
    if scores.is_empty() {
        return Err("empty set (no scores)".into());
    }
    let (mut n_real, mut n_fake) = (0, 0);
    for (i, &l) in labels.iter().enumerate() {
        match l {
            0 => n_real += 1,
            1 => n_fake += 1,
            _ => return Err(format!("label {l} at index {i} is not 0 (real) or 1 (fake)")),
        }
    }
    let bad = scores.iter().filter(|s| !s.is_finite()).count();
    if bad > 0 {
        let first = scores.iter().position(|s| !s.is_finite()).unwrap_or(0);
        return Err(format!(
            "{bad} score(s) are NaN or infinite (first at index {first}: {})",
            scores[first]
        ));
    }
    Ok((n_real, n_fake))
}

/// Why the ranking metrics are undefined when one class is missing.
fn one_class_reason(n_real: usize, n_fake: usize) -> Option<String> {
    match (n_real, n_fake) {
        (0, n) => Some(format!("only fake samples (n = {n}), needs both classes")),
        (n, 0) => Some(format!("only real samples (n = {n}), needs both classes")),
        _ => None,
    }
}

/// AUC, AP, EER (both), ACC (overall and per class) of `scores` (probability of fake) against
/// `labels` (0 = real, 1 = fake). Never panics; undefined metrics carry their reason.
pub fn binary_metrics(scores: &[f64], labels: &[u8]) -> MetricSet {
    let n = scores.len();
    let (n_real, n_fake) = match check(scores, labels) {
        Ok(c) => c,
        Err(reason) => {
            let n_real = labels.iter().filter(|&&l| l == 0).count();
            let n_fake = labels.iter().filter(|&&l| l == 1).count();
            return MetricSet::all_undefined(n, n_real, n_fake, &reason);
        }
    };

    let (mut ok_real, mut ok_fake) = (0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        let pred_fake = s > 0.5;
        if l == 1 {
            ok_fake += pred_fake as usize;
        } else {
            ok_real += !pred_fake as usize;
        }
    }
    let ratio = |ok: usize, total: usize, what: &str| {
        if total == 0 {
            Metric::undefined(format!("no {what} samples"))
        } else {
            Metric::Value(ok as f64 / total as f64)
        }
    };
    let acc = Metric::Value((ok_real + ok_fake) as f64 / n as f64);
    let acc_real = ratio(ok_real, n_real, "real");
    let acc_fake = ratio(ok_fake, n_fake, "fake");

    let (auc, ap, eer, eer_interp) = match one_class_reason(n_real, n_fake) {
        Some(reason) => {
            let u = || Metric::undefined(reason.clone());
            (u(), u(), u(), u())
        }
        None => {
            let sorted = SortedScores::new(scores, labels);
            let r = ranking_metrics(&sorted);
            (Metric::Value(r.auc), Metric::Value(r.ap), Metric::Value(r.eer), Metric::Value(r.eer_interp))
        }
    };
    MetricSet { auc, ap, eer, eer_interp, acc, acc_real, acc_fake, n, n_real, n_fake }
}

struct Ranking {
    auc: f64,
    ap: f64,
    eer: f64,
    eer_interp: f64,
}

/// The threshold-free metrics; both classes are present.
fn ranking_metrics(sorted: &SortedScores) -> Ranking {
    let (p, n) = (sorted.n_pos(), sorted.n_neg());
    let (pf, nf) = (p as f64, n as f64);

    // AUC as twice the trapezoid area in counts (exact integers), divided once at the end.
    let mut area2: u128 = 0;
    // AP: sum of (tp_k - tp_{k-1}) * precision_k, divided by P at the end. Neumaier summation
    // keeps the error far below the 1e-9 agreement with scikit-learn for 1e7 terms.
    let (mut ap_sum, mut ap_comp) = (0.0f64, 0.0f64);
    // Interpolated EER: D = P N (fnr - fpr) = P N - tp N - fp P, strictly decreasing along the
    // curve; find the first point where it is <= 0 and interpolate from the one before.
    let pn = p as i128 * n as i128;
    let (mut prev_fp, mut prev_tp, mut prev_d) = (0u64, 0u64, pn);
    let mut eer_interp = None;
    for (_, fp, tp) in sorted.points() {
        area2 += (fp - prev_fp) as u128 * (tp + prev_tp) as u128;
        let dtp = tp - prev_tp;
        if dtp > 0 {
            let term = dtp as f64 * (tp as f64 / (tp + fp) as f64);
            let t = ap_sum + term;
            ap_comp += if ap_sum.abs() >= term.abs() { (ap_sum - t) + term } else { (term - t) + ap_sum };
            ap_sum = t;
        }
        let d = pn - tp as i128 * n as i128 - fp as i128 * p as i128;
        if eer_interp.is_none() && d <= 0 {
            eer_interp = Some(if d == 0 {
                fp as f64 / nf
            } else {
                // Crossing at fraction w between the previous point and this one.
                let w = prev_d as f64 / (prev_d - d) as f64;
                (prev_fp as f64 + w * (fp - prev_fp) as f64) / nf
            });
        }
        (prev_fp, prev_tp, prev_d) = (fp, tp, d);
    }
    let auc = area2 as f64 / (2.0 * pf * nf);
    let ap = (ap_sum + ap_comp) / pf;

    // DeepfakeBench's EER: evaluated in the same floating-point operations as numpy so that
    // exact ties between points resolve to the same (first) one.
    let (mut best, mut eer) = (1.0f64, 0.0f64); // the prepended (0, 0) point: |1 - 0 - 0| = 1
    sorted.for_each_roc_point(true, |_, fp, tp| {
        let fpr = fp as f64 / nf;
        let tpr = tp as f64 / pf;
        let v = ((1.0 - tpr) - fpr).abs();
        if v < best {
            best = v;
            eer = fpr;
        }
    });

    // The last point is (1, 1) where D = -P N < 0, so a crossing always exists.
    Ranking { auc, ap, eer, eer_interp: eer_interp.unwrap_or(f64::NAN) }
}

/// A ROC curve as `sklearn.metrics.roc_curve` returns it: the first point is `(0, 0)` with
/// threshold `+inf`, then one point per (kept) distinct score, high to low, ending at `(1, 1)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Roc {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    /// A sample is predicted fake when its score is >= the threshold.
    pub thresholds: Vec<f64>,
}

/// The ROC curve of `scores` against `labels` (0 = real, 1 = fake), with scikit-learn's
/// `drop_intermediate` pruning of collinear points when asked. Errors (with the reason) when the
/// curve is undefined: empty input, one class, non-finite scores, labels other than 0/1.
pub fn roc_curve(scores: &[f64], labels: &[u8], drop_intermediate: bool) -> Result<Roc, String> {
    let (n_real, n_fake) = check(scores, labels)?;
    if let Some(reason) = one_class_reason(n_real, n_fake) {
        return Err(reason);
    }
    let sorted = SortedScores::new(scores, labels);
    let (pf, nf) = (sorted.n_pos() as f64, sorted.n_neg() as f64);
    let mut roc = Roc { fpr: vec![0.0], tpr: vec![0.0], thresholds: vec![f64::INFINITY] };
    sorted.for_each_roc_point(drop_intermediate, |t, fp, tp| {
        roc.fpr.push(fp as f64 / nf);
        roc.tpr.push(tp as f64 / pf);
        roc.thresholds.push(t);
    });
    Ok(roc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(m: &Metric) -> f64 {
        m.value().unwrap_or_else(|| panic!("undefined: {m}"))
    }

    #[test]
    fn pruning_matches_sklearn_small_case() {
        // sklearn: roc_curve([0,0,1,1], [0.1,0.4,0.35,0.8]) ->
        // fpr [0, 0, .5, .5, 1], tpr [0, .5, .5, 1, 1], thr [inf, .8, .4, .35, .1]
        let roc = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], true).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(roc.thresholds, vec![f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
        let m = binary_metrics(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
        assert_eq!(v(&m.auc), 0.75);
        // AP = 0.5 * 1 + 0.5 * (2/3)
        assert!((v(&m.ap) - (0.5 + 1.0 / 3.0)).abs() < 1e-15);
        assert_eq!(v(&m.eer), 0.5);
        // FNR - FPR: (0,.5) -> .5, (.5,.5) -> 0: crossing exactly at fpr .5.
        assert_eq!(v(&m.eer_interp), 0.5);
    }

    #[test]
    fn collinear_points_are_dropped() {
        // Three negatives at distinct scores below all positives: the inner points on the
        // horizontal segment tpr = 1 are collinear and dropped.
        let roc = roc_curve(&[0.9, 0.3, 0.2, 0.1], &[1, 0, 0, 0], true).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 1.0, 1.0]);
        let full = roc_curve(&[0.9, 0.3, 0.2, 0.1], &[1, 0, 0, 0], false).unwrap();
        assert_eq!(full.fpr.len(), 5);
    }

    #[test]
    fn negative_zero_is_the_same_threshold() {
        let roc = roc_curve(&[-0.0, 0.0], &[0, 1], false).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 1.0]);
        assert_eq!(binary_metrics(&[-0.0, 0.0], &[0, 1]).auc, Metric::Value(0.5));
    }

    #[test]
    fn metric_json_round_trip() {
        let m = binary_metrics(&[0.2, 0.7], &[1, 1]);
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains(r#""auc":{"undefined":"only fake samples (n = 2), needs both classes"}"#), "{s}");
        assert!(s.contains(r#""acc":0.5"#), "{s}");
        let back: MetricSet = serde_json::from_str(&s).unwrap();
        assert_eq!(back, m);
    }
}
