//! Flat gradients as tensors on the parameters' own device (issue #18, item 1).
//!
//! The host path of [`super`] copies every parameter's gradient into a host `f32` buffer and
//! combines there; on a GPU that is one device-to-host copy per parameter per stream, and the
//! combined direction travels back the same way. Here a flat gradient is one `f64` tensor of
//! length [`ParamSet::total`] on the device (each parameter's gradient flattened, cast and
//! concatenated in the set's sorted order), every dot product and norm is a device reduction,
//! and only the scalars cross to the host, several at a time ([`sums`]: one synchronisation
//! for a whole list of reductions).
//!
//! Precision. The host path forms every product in f64 from the f32 gradients and sums the
//! products in f64. Casting the f32 gradients to f64 is exact, and each product of two f64
//! casts of f32 values is exact too (24 + 24 bits < 53), so both paths sum the *same* f64 terms;
//! they differ only in summation order (the host's lane-wise blocks against candle's sequential
//! CPU loop or a CUDA tree reduction). For `n` terms the relative difference of the two sums is
//! bounded by about `2 n eps_f64 * sum|t_i| / |sum t_i|` (eps_f64 = 1.1e-16): 2e-9 at a million
//! parameters for a sum of squares, where `sum|t_i| = |sum t_i|`. Element-wise combinations
//! (`a1 g1 + a2 g2`, CGR's term) are likewise formed in f64 and rounded to f32 once, as the host
//! does, so a direction agrees with the host's to one f32 rounding (relative 6e-8 per element)
//! plus the effect of the sums' last bits on the scalar coefficients.
//!
//! Used by the multi-stream methods whenever the parameters are not on the CPU
//! ([`GradPath::for_device`]); on the CPU the host path stays the default (its bits are the
//! committed results'), and tests select this path there explicitly to hold the two together.
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};

use super::{ParamSet, Snapshot};

/// Where the multi-stream methods combine their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradPath {
    /// Host f32 buffers with f64 accumulation (the CPU's bit-stable path).
    Host,
    /// Candle tensor ops on the parameters' device; only scalars reach the host.
    Tensor,
}

impl GradPath {
    /// The host path on the CPU (where gradients already are in host memory), the tensor path on
    /// every other device.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() { Self::Host } else { Self::Tensor }
    }
}

/// The gradients of every parameter of `set` from `grads` (zeros for a parameter outside the
/// graph) as one flat f64 tensor on the set's device, detached.
pub fn gather(set: &ParamSet, grads: &GradStore) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(set.len());
    for v in set.vars() {
        match grads.get(v.as_tensor()) {
            Some(g) => parts.push(g.detach().flatten_all()?.to_dtype(DType::F64)?),
            None => parts.push(Tensor::zeros(v.elem_count(), DType::F64, set.device())?),
        }
    }
    cat(&parts, set)
}

/// The current parameter values as one flat f64 tensor on the set's device.
pub fn values(set: &ParamSet) -> Result<Tensor> {
    let parts = set
        .vars()
        .iter()
        .map(|v| v.as_tensor().detach().flatten_all()?.to_dtype(DType::F64))
        .collect::<Result<Vec<_>>>()?;
    cat(&parts, set)
}

fn cat(parts: &[Tensor], set: &ParamSet) -> Result<Tensor> {
    if parts.is_empty() {
        return Tensor::zeros(0, DType::F64, set.device());
    }
    Tensor::cat(parts, 0)
}

/// Every sum of `terms` (each tensor summed over all its elements) in one device-to-host
/// transfer, as f64.
pub fn sums(terms: &[Tensor]) -> Result<Vec<f64>> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let s = terms.iter().map(|t| t.to_dtype(DType::F64)?.sum_all()).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&s, 0)?.to_vec1::<f64>()
}

/// `a . b` as a device tensor (a scalar), for [`sums`].
pub fn dot_term(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.mul(b)
}

/// The flat indices outside `skip` of a flat vector, as one (possibly copied) tensor.
pub fn outside(x: &Tensor, skip: Option<&Range<usize>>) -> Result<Tensor> {
    let n = x.dim(0)?;
    match skip {
        None => Ok(x.clone()),
        Some(r) => {
            let mut parts = Vec::new();
            if r.start > 0 {
                parts.push(x.narrow(0, 0, r.start)?);
            }
            if r.end < n {
                parts.push(x.narrow(0, r.end, n - r.end)?);
            }
            match parts.len() {
                0 => Tensor::zeros(0, x.dtype(), x.device()),
                1 => Ok(parts.pop().expect("one part")),
                _ => Tensor::cat(&parts, 0),
            }
        }
    }
}

/// `x[r]` (an empty range gives an empty tensor).
pub fn slice(x: &Tensor, r: &Range<usize>) -> Result<Tensor> {
    x.narrow(0, r.start, r.end - r.start)
}

/// `x` with `x[r]` replaced by `mid` (`mid` has `r`'s length).
pub fn splice(x: &Tensor, r: &Range<usize>, mid: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut parts = Vec::with_capacity(3);
    if r.start > 0 {
        parts.push(x.narrow(0, 0, r.start)?);
    }
    if !r.is_empty() {
        parts.push(mid.clone());
    }
    if r.end < n {
        parts.push(x.narrow(0, r.end, n - r.end)?);
    }
    match parts.len() {
        0 => Tensor::zeros(0, x.dtype(), x.device()),
        _ => Tensor::cat(&parts, 0),
    }
}

/// `a x + b y` in the dtype of `x` (f64 here: the products and the sum round once each, as the
/// host's `(a * x as f64 + b * y as f64)` does).
pub fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    x.affine(a, 0.0)?.add(&y.affine(b, 0.0)?)
}

/// A flat direction (any float dtype) as per-parameter f32 tensors of the set's shapes, for
/// [`crate::optim::Optimizer::step`]. On the CPU each piece is a contiguous view of one f32
/// buffer, which the optimizer's in-place pass reads where it lies.
pub fn split(set: &ParamSet, flat: &Tensor) -> Result<Vec<Tensor>> {
    if flat.dim(0)? != set.total() {
        candle_core::bail!("a flat direction of {} values for {} parameters", flat.dim(0)?, set.total());
    }
    let flat = flat.to_dtype(DType::F32)?;
    (0..set.len())
        .map(|i| {
            let r = set.range(i);
            flat.narrow(0, r.start, r.len())?.reshape(set.shapes()[i].clone())
        })
        .collect()
}

/// The squared Euclidean norm of a direction as [`split`] hands it to the optimizer (its f32
/// values), one transfer.
pub fn norm_sq_f32(flat: &Tensor) -> Result<f64> {
    let x = flat.to_dtype(DType::F32)?.to_dtype(DType::F64)?;
    Ok(sums(&[x.sqr()?])?[0])
}

/// The Euclidean norm of a gradient held as per-parameter tensors (ERM's and SAM's directions),
/// the squares formed and summed in f64 on the device, one transfer. (The host path's
/// `gradvec::tensors_norm` sums each tensor in f32 and transfers once per parameter.)
pub fn tensors_norm(ts: &[Tensor]) -> Result<f64> {
    let terms = ts.iter().map(|t| t.to_dtype(DType::F64)?.sqr()).collect::<Result<Vec<_>>>()?;
    Ok(sums(&terms)?.iter().sum::<f64>().sqrt())
}

impl ParamSet {
    /// [`ParamSet::snapshot`] as detached device copies on every device, the CPU included (the
    /// tensor path's store-and-restore; [`ParamSet::restore`] writes them back bit for bit).
    pub fn snapshot_tensors(&self, out: &mut Snapshot) -> Result<()> {
        out.flat_valid = false;
        out.tensors.clear();
        for v in self.vars() {
            out.tensors.push(v.as_tensor().copy()?.detach());
        }
        Ok(())
    }

    /// Sets every parameter to `saved + delta`, `delta` a flat tensor on the set's device (any
    /// float dtype; rounded to f32 first, then one f32 addition per element, as the host path's
    /// `set_shifted` adds its f32 delta). `saved` must come from [`ParamSet::snapshot_tensors`].
    pub fn set_shifted_tensor(&self, saved: &Snapshot, delta: &Tensor) -> Result<()> {
        if saved.flat_valid || saved.tensors.len() != self.len() {
            candle_core::bail!("set_shifted_tensor needs a snapshot taken by snapshot_tensors");
        }
        let pieces = split(self, delta)?;
        for ((v, s), d) in self.vars().iter().zip(&saved.tensors).zip(&pieces) {
            v.set(&s.add(d)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::gradvec::FlatGrad;
    use crate::params::{Init, ParamStore};

    /// Gathered gradients equal the host path's flat copy exactly (casts to f64 are exact), and
    /// the device sums of products equal the host's f64 dots to reduction order.
    #[test]
    fn gather_and_sums_agree_with_the_host_flat_vectors() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(11);
        b.pp("a").param("w", (7, 5), Init::Normal { std: 1.0 })?;
        b.pp("b").param("bias", 3, Init::Normal { std: 1.0 })?;
        b.pp("c").param("w", (2, 2, 3), Init::Normal { std: 1e-3 })?;
        let store = b.store();
        let set = ParamSet::from_store(&store);
        // A loss that leaves `b.bias` outside the graph (its gradient is the zero fill).
        let loss = store.param("a.w").unwrap().as_tensor().sqr()?.sum_all()?.add(
            &store.param("c.w").unwrap().as_tensor().affine(3.0, 1.0)?.powf(3.0)?.sum_all()?,
        )?;
        let grads = loss.backward()?;
        let mut host = FlatGrad::default();
        host.fill_from(&set, &grads)?;
        let dev = gather(&set, &grads)?;
        assert_eq!(dev.to_vec1::<f64>()?, host.data.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let mut vals = FlatGrad::default();
        set.values(&mut vals)?;
        assert_eq!(values(&set)?.to_vec1::<f64>()?, vals.data.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let s = sums(&[dev.sqr()?, dot_term(&dev, &values(&set)?)?])?;
        let (want0, want1) = (host.norm_sq(), host.dot(&vals));
        assert!((s[0] - want0).abs() <= 1e-14 * want0, "{} vs {want0}", s[0]);
        assert!((s[1] - want1).abs() <= 1e-13 * want0.max(want1.abs()), "{} vs {want1}", s[1]);

        // outside / slice / splice around a middle range and the ends.
        let x = Tensor::arange(0f64, 10.0, &Device::Cpu)?;
        assert_eq!(outside(&x, Some(&(3..6)))?.to_vec1::<f64>()?, [0., 1., 2., 6., 7., 8., 9.]);
        assert_eq!(outside(&x, Some(&(0..10)))?.dim(0)?, 0);
        assert_eq!(slice(&x, &(8..10))?.to_vec1::<f64>()?, [8., 9.]);
        let mid = Tensor::new(&[-1f64, -2.0], &Device::Cpu)?;
        assert_eq!(splice(&x, &(8..10), &mid)?.to_vec1::<f64>()?, [0., 1., 2., 3., 4., 5., 6., 7., -1., -2.]);
        assert_eq!(splice(&x, &(0..0), &x.narrow(0, 0, 0)?)?.to_vec1::<f64>()?, x.to_vec1::<f64>()?);
        Ok(())
    }

    /// The tensor snapshot and shift give the host path's bits.
    #[test]
    fn tensor_shift_and_restore_match_the_host_path() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(2);
        b.pp("a").param("w", (3, 4), Init::Normal { std: 1.0 })?;
        b.pp("b").param("bias", 5, Init::Normal { std: 1e-3 })?;
        let set = ParamSet::from_store(&b.store());
        let n = set.total();
        let delta: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 1e-3).collect();
        let bits = |set: &ParamSet| -> Result<Vec<u32>> {
            let mut v = FlatGrad::default();
            set.values(&mut v)?;
            Ok(v.data.iter().map(|x| x.to_bits()).collect())
        };
        let original = bits(&set)?;
        let mut host = Snapshot::default();
        set.snapshot(&mut host)?;
        set.set_shifted(&host, &FlatGrad::from_vec(delta.clone()))?;
        let want = bits(&set)?;
        set.restore(&host)?;
        let mut dev = Snapshot::default();
        set.snapshot_tensors(&mut dev)?;
        let d = Tensor::from_vec(delta.iter().map(|&x| x as f64).collect::<Vec<_>>(), n, &Device::Cpu)?;
        set.set_shifted_tensor(&dev, &d)?;
        assert_eq!(bits(&set)?, want);
        set.restore(&dev)?;
        assert_eq!(bits(&set)?, original);
        assert!(set.set_shifted_tensor(&host, &d).is_err(), "a host snapshot is refused");
        Ok(())
    }
}
