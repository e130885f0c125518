//! Losses on one logit per image (methods.md sections 1 and 6).
//!
//! candle-nn's `binary_cross_entropy_with_logit` computes `sigmoid(x).log()` and goes NaN within
//! a few steps; every loss here uses `relu(x) - x t + log(1 + exp(-|x|))`, which never
//! exponentiates a positive number.
use candle_core::{DType, Result, Tensor};

/// Per-sample binary cross-entropy with logits: `[B]` logits and `[B]` targets in `[0, 1]`.
pub fn bce_with_logits_per_sample(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = targets.to_dtype(logits.dtype())?;
    let softplus_tail = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    logits.relu()?.sub(&logits.mul(&t)?)?.add(&softplus_tail)
}

/// Mean binary cross-entropy with logits (a scalar tensor).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    bce_with_logits_per_sample(logits, targets)?.mean_all()
}

/// Conditional value-at-risk of per-sample losses at level `alpha` in (0, 1]: the mean of the
/// largest `ceil(alpha B)` losses, i.e. `min_lam lam + mean(relu(l - lam)) / alpha` with `lam`
/// at the k-th largest loss. The gradient flows through the selected samples only (ties at the
/// threshold are broken by index, which does not change the value).
pub fn cvar(per_sample: &Tensor, alpha: f64) -> Result<Tensor> {
    if !(alpha > 0.0 && alpha <= 1.0) {
        candle_core::bail!("CVaR level alpha must lie in (0, 1], got {alpha}");
    }
    let b = per_sample.elem_count();
    if b == 0 {
        candle_core::bail!("CVaR of an empty batch");
    }
    // Guard against alpha * B landing a hair above an integer through rounding.
    let k = (((alpha * b as f64) - 1e-9).ceil() as usize).clamp(1, b);
    if k == b {
        return per_sample.mean_all();
    }
    let vals = per_sample.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut idx: Vec<u32> = (0..b as u32).collect();
    // Descending by loss; `total_cmp` keeps the order total even with NaN.
    idx.sort_by(|&i, &j| vals[j as usize].total_cmp(&vals[i as usize]).then(i.cmp(&j)));
    idx.truncate(k);
    let sel = Tensor::from_slice(&idx, k, per_sample.device())?;
    per_sample.flatten_all()?.index_select(&sel, 0)?.mean_all()
}

/// Probabilities in the AUC term are clamped to `[AUC_CLAMP, 1 - AUC_CLAMP]`.
pub const AUC_CLAMP: f64 = 1e-6;

/// Pairwise logistic AUC surrogate: `mean_{i in P, j in N} -log(sigmoid(s_i - s_j))` over the
/// positives (label > 0.5) and negatives of the batch, probabilities clamped to
/// `[1e-6, 1 - 1e-6]`. A batch with one class only falls back to mean BCE.
pub fn pairwise_auc(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let labels = targets.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        if l > 0.5 { pos.push(i as u32) } else { neg.push(i as u32) }
    }
    if pos.is_empty() || neg.is_empty() {
        return bce_with_logits(logits, targets);
    }
    let dev = logits.device();
    let s = logits.flatten_all()?;
    let sp = s.index_select(&Tensor::from_slice(&pos, pos.len(), dev)?, 0)?;
    let sn = s.index_select(&Tensor::from_slice(&neg, neg.len(), dev)?, 0)?;
    let diff = sp.unsqueeze(1)?.broadcast_sub(&sn.unsqueeze(0)?)?;
    let p = candle_nn::ops::sigmoid(&diff)?.clamp(AUC_CLAMP, 1.0 - AUC_CLAMP)?;
    p.log()?.neg()?.mean_all()
}

/// The SP_CUP objective on one batch: `CVaR_alpha(BCE) + gamma * AUC`.
pub fn cvar_auc(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let l = cvar(&bce_with_logits_per_sample(logits, targets)?, alpha)?;
    if gamma == 0.0 {
        return Ok(l);
    }
    l.add(&pairwise_auc(logits, targets)?.affine(gamma, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn bce_matches_the_textbook_formula_and_stays_finite() -> Result<()> {
        let x = [-3.0f32, -0.5, 0.0, 0.7, 4.0];
        let y = [0.0f32, 1.0, 1.0, 0.0, 1.0];
        let got = bce_with_logits_per_sample(&t(&x), &t(&y))?.to_vec1::<f32>()?;
        for i in 0..5 {
            let p = 1.0 / (1.0 + (-(x[i] as f64)).exp());
            let want = -(y[i] as f64 * p.ln() + (1.0 - y[i] as f64) * (1.0 - p).ln());
            assert!((got[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", got[i]);
        }
        let extreme = bce_with_logits_per_sample(&t(&[200.0, -200.0]), &t(&[0.0, 1.0]))?.to_vec1::<f32>()?;
        assert_eq!(extreme, vec![200.0, 200.0]);
        Ok(())
    }

    #[test]
    fn cvar_is_the_mean_of_the_top_ceil_alpha_b() -> Result<()> {
        let l = t(&[0.1, 0.9, 0.5, 0.3, 0.7]);
        // ceil(0.5 * 5) = 3: 0.9, 0.7, 0.5.
        assert!((cvar(&l, 0.5)?.to_scalar::<f32>()? - 0.7).abs() < 1e-7);
        assert!((cvar(&l, 1.0)?.to_scalar::<f32>()? - 0.5).abs() < 1e-7);
        // ceil(0.9 * 10) must be 9 even though 0.9 * 10 = 9.000000000000002 in f64.
        let l10 = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!((cvar(&l10, 0.9)?.to_scalar::<f32>()? - 6.0).abs() < 1e-6);
        assert!(cvar(&l, 0.0).is_err());
        Ok(())
    }

    #[test]
    fn auc_single_class_falls_back_to_bce() -> Result<()> {
        let x = t(&[0.3, -1.0]);
        let y = t(&[1.0, 1.0]);
        let a = pairwise_auc(&x, &y)?.to_scalar::<f32>()?;
        let b = bce_with_logits(&x, &y)?.to_scalar::<f32>()?;
        assert_eq!(a, b);
        Ok(())
    }
}
