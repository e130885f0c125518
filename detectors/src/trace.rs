//! Per-step training trace (methods.md section 7; the CS-DFD paper's Fig. 2 and 5).
use serde::{Deserialize, Serialize};

/// One domain's share of a multi-domain step (RoGA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainTrace {
    pub name: String,
    /// Loss at the unperturbed parameters.
    pub loss: f64,
    /// Norm of that loss's gradient over all trainable parameters.
    pub grad_norm: f64,
}

/// What one step measured. `None` where the method has no such quantity (e.g. ERM O+S takes
/// one backward of L1 + L2, so it never sees g1 and g2 separately).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    pub step: usize,
    /// Loss on the original stream (O).
    pub l1: Option<f64>,
    /// Loss on the online stream (S).
    pub l2: Option<f64>,
    /// The objective the method minimised at the unperturbed parameters.
    pub loss: f64,
    /// Cosine of the per-stream gradients over all trainable parameters.
    pub cos_g1_g2: Option<f64>,
    pub norm_g1: Option<f64>,
    pub norm_g2: Option<f64>,
    /// Norm of the direction handed to the base optimizer.
    pub norm_update: Option<f64>,
    /// UVS / CAGrad simplex weights.
    pub mu1: Option<f64>,
    pub mu2: Option<f64>,
    /// CS-DFD with CGR: `||CGR term|| / ||g1_p + g2_p||` on the projection head (eq. 24's
    /// conflict term against the plain head gradient).
    #[serde(default)]
    pub cgr_rel: Option<f64>,
    pub lr: f64,
    /// Wall-clock seconds of the whole step (forwards, backwards, combination, update).
    pub wall_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainTrace>,
}

/// Summaries worth tabulating over a run (section 7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub steps: usize,
    /// Fraction of the steps with a measured cosine where `cos(g1, g2) < 0`.
    pub frac_conflict: Option<f64>,
    pub mean_cos: Option<f64>,
    /// Pearson correlation of the step-to-step changes of L1 and L2 (negative: the two losses
    /// trade off, the paper's "1 + 1 < 2" signature).
    pub corr_dl1_dl2: Option<f64>,
    pub mean_wall_s: f64,
}

pub fn summarize(trace: &[StepTrace]) -> TraceSummary {
    let cos: Vec<f64> = trace.iter().filter_map(|t| t.cos_g1_g2).filter(|c| c.is_finite()).collect();
    let (frac_conflict, mean_cos) = if cos.is_empty() {
        (None, None)
    } else {
        let n = cos.len() as f64;
        (Some(cos.iter().filter(|&&c| c < 0.0).count() as f64 / n), Some(cos.iter().sum::<f64>() / n))
    };
    let mut d1 = Vec::new();
    let mut d2 = Vec::new();
    for w in trace.windows(2) {
        if let (Some(a1), Some(b1), Some(a2), Some(b2)) = (w[0].l1, w[1].l1, w[0].l2, w[1].l2) {
            d1.push(b1 - a1);
            d2.push(b2 - a2);
        }
    }
    let mean_wall_s =
        if trace.is_empty() { 0.0 } else { trace.iter().map(|t| t.wall_s).sum::<f64>() / trace.len() as f64 };
    TraceSummary { steps: trace.len(), frac_conflict, mean_cos, corr_dl1_dl2: pearson(&d1, &d2), mean_wall_s }
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 { None } else { Some(sxy / (sxx * syy).sqrt()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_conflicts_and_correlates_changes() {
        let mk = |l1, l2, cos| StepTrace {
            l1: Some(l1),
            l2: Some(l2),
            cos_g1_g2: Some(cos),
            ..Default::default()
        };
        let tr = vec![mk(1.0, 1.0, -0.5), mk(0.5, 1.5, 0.2), mk(1.0, 1.0, -0.1), mk(0.0, 2.0, 0.3)];
        let s = summarize(&tr);
        assert_eq!(s.frac_conflict, Some(0.5));
        assert!((s.corr_dl1_dl2.unwrap() + 1.0).abs() < 1e-12);
        let json = serde_json::to_string(&tr[0]).unwrap();
        let back: StepTrace = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tr[0]);
    }
}
