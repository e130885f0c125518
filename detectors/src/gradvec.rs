//! Flat gradient vectors over all trainable parameters, in the store's sorted-name order.
//!
//! Methods that combine per-stream gradients (UVS, PCGrad, CAGrad, CGR, the sharpness-aware
//! family) need dot products and norms over *every* parameter at once. Those are computed on a
//! host copy of the gradient in f32 storage with f64 accumulation, so that a Gram entry over
//! millions of parameters does not lose digits. The buffers are allocated once per method and
//! reused every step. `gradvec::device` holds the same vectors as tensors on the parameters'
//! device, for GPUs (only scalars cross to the host there).
use std::cell::RefCell;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Shape, Storage, Tensor, Var};

use crate::params::ParamStore;

pub mod device;

/// The trainable parameters of a model in flat order: names sorted, each with its offset.
#[derive(Debug, Clone)]
pub struct ParamSet {
    names: Vec<String>,
    vars: Vec<Var>,
    shapes: Vec<Shape>,
    offsets: Vec<usize>,
    total: usize,
    device: Device,
}

impl ParamSet {
    /// All trainable parameters of `store`, in its (sorted) order.
    pub fn from_store(store: &ParamStore) -> Self {
        let mut names = Vec::new();
        let mut vars = Vec::new();
        let mut shapes = Vec::new();
        let mut offsets = Vec::new();
        let mut total = 0;
        for (name, var) in store.trainable() {
            names.push(name.clone());
            shapes.push(var.shape().clone());
            offsets.push(total);
            total += var.elem_count();
            vars.push(var.clone());
        }
        Self { names, vars, shapes, offsets, total, device: store.device().clone() }
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
    /// Total number of scalars (the length of every `FlatGrad` for this set).
    pub fn total(&self) -> usize {
        self.total
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Flat index range of parameter `i`.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i] + self.shapes[i].elem_count()
    }

    /// The smallest flat range covering every parameter whose name starts with `prefix`
    /// (contiguous because names are sorted), or `None` when there is none.
    pub fn prefix_range(&self, prefix: &str) -> Option<Range<usize>> {
        let idx: Vec<usize> = (0..self.len()).filter(|&i| self.names[i].starts_with(prefix)).collect();
        let (first, last) = (*idx.first()?, *idx.last()?);
        debug_assert_eq!(last - first + 1, idx.len(), "sorted names make a prefix contiguous");
        Some(self.offsets[first]..self.range(last).end)
    }

    /// Stores the current parameter values in `out` (for SAM-style restore: store, never
    /// subtract). On the CPU they go into `out`'s flat host buffer, reused across steps;
    /// elsewhere into detached per-parameter copies.
    pub fn snapshot(&self, out: &mut Snapshot) -> Result<()> {
        out.tensors.clear();
        if self.vars.iter().all(|v| cpu_f32(v.as_tensor())) {
            self.values(&mut out.flat)?;
            out.flat_valid = true;
            return Ok(());
        }
        out.flat_valid = false;
        for v in &self.vars {
            // A copy of a `Var` records a Copy op on it; the snapshot needs only the values.
            out.tensors.push(v.as_tensor().copy()?.detach());
        }
        Ok(())
    }

    /// Writes back values taken by `snapshot`, bit for bit.
    pub fn restore(&self, saved: &Snapshot) -> Result<()> {
        if saved.flat_valid {
            self.check_flat(&saved.flat)?;
            for (i, v) in self.vars.iter().enumerate() {
                let src = &saved.flat.data[self.range(i)];
                with_values_mut(v.as_tensor(), |dst| {
                    dst.copy_from_slice(src);
                    Ok(())
                })?;
            }
            return Ok(());
        }
        for (v, s) in self.vars.iter().zip(&saved.tensors) {
            v.set(s)?;
        }
        Ok(())
    }

    /// Sets every parameter to `saved + delta` (delta in flat order), each element one f32
    /// addition as candle's `add` performs it.
    pub fn set_shifted(&self, saved: &Snapshot, delta: &FlatGrad) -> Result<()> {
        self.check_flat(delta)?;
        if saved.flat_valid {
            self.check_flat(&saved.flat)?;
            for (i, v) in self.vars.iter().enumerate() {
                let (s, d) = (&saved.flat.data[self.range(i)], &delta.data[self.range(i)]);
                with_values_mut(v.as_tensor(), |dst| {
                    for ((p, &a), &b) in dst.iter_mut().zip(s).zip(d) {
                        *p = a + b;
                    }
                    Ok(())
                })?;
            }
            return Ok(());
        }
        for (i, (v, s)) in self.vars.iter().zip(&saved.tensors).enumerate() {
            let d = Tensor::from_slice(&delta.data[self.range(i)], self.shapes[i].clone(), &self.device)?;
            v.set(&s.add(&d)?)?;
        }
        Ok(())
    }

    fn check_flat(&self, x: &FlatGrad) -> Result<()> {
        if x.len() != self.total {
            candle_core::bail!("a flat vector of {} values for {} parameters", x.len(), self.total);
        }
        Ok(())
    }

    /// The current parameter values as one flat host vector.
    pub fn values(&self, out: &mut FlatGrad) -> Result<()> {
        out.resize(self.total);
        for (i, v) in self.vars.iter().enumerate() {
            copy_into(v.as_tensor(), &mut out.data[self.range(i)])?;
        }
        Ok(())
    }

    /// Per-parameter gradient tensors from a `GradStore` (zeros for a parameter outside the
    /// graph), for methods that hand the raw gradient to the optimizer without host copies.
    pub fn grads_as_tensors(&self, grads: &GradStore, out: &mut Vec<Tensor>) -> Result<()> {
        out.clear();
        for v in &self.vars {
            match grads.get(v.as_tensor()) {
                // Detached: the caller keeps `out` across steps, and a gradient from candle's
                // backward (CUDA conv/matmul rules) references this step's forward graph.
                Some(g) => out.push(g.detach()),
                None => out.push(v.as_tensor().zeros_like()?),
            }
        }
        Ok(())
    }
}

/// Parameter values saved by [`ParamSet::snapshot`], with their buffers kept across steps.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// All parameters in flat order, when every one is contiguous f32 on the CPU.
    flat: FlatGrad,
    flat_valid: bool,
    /// Detached copies, otherwise.
    tensors: Vec<Tensor>,
}

impl Snapshot {
    /// The saved values in flat order, when they were taken on the CPU.
    pub fn flat(&self) -> Option<&FlatGrad> {
        self.flat_valid.then_some(&self.flat)
    }
}

/// Contiguous f32 on the CPU: what the in-place passes handle.
pub(crate) fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// candle's hook for writing a tensor's storage in place, used to hand its values to `f`.
struct WithValues<F> {
    f: RefCell<Option<F>>,
}

impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for WithValues<F> {
    fn name(&self) -> &'static str {
        "in-place-values"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (CpuStorage::F32(data), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("in-place pass on a tensor that is not contiguous f32");
        };
        let f = self.f.borrow_mut().take().expect("called once");
        f(&mut data[a..b])
    }
}

/// Runs `f` on the values of `t` (contiguous f32 on the CPU, else an error), which it may
/// overwrite: the optimizer's pass and SAM's shift and restore, without a new tensor.
pub(crate) fn with_values_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&WithValues { f: RefCell::new(Some(f)) })
}

/// Runs `f` on a tensor's values where they lie, when it is a contiguous f32 tensor on the CPU
/// (`None` otherwise): no copy, no allocation.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(src)), Some((a, b))) => Some(f(&src[a..b])),
        _ => None,
    }
}

/// Copies a tensor's values (any layout, any device) into `dst`; on a contiguous CPU f32 tensor
/// this reads the storage directly without an intermediate allocation.
fn copy_into(t: &Tensor, dst: &mut [f32]) -> Result<()> {
    if dst.len() != t.elem_count() {
        candle_core::bail!("flat copy: {} values into a slot of {}", t.elem_count(), dst.len());
    }
    if with_cpu_f32(t, |src| dst.copy_from_slice(src)).is_some() {
        return Ok(());
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    dst.copy_from_slice(&v);
    Ok(())
}

/// One flat vector over a `ParamSet` (a gradient, an update direction, a perturbation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatGrad {
    pub data: Vec<f32>,
}

impl FlatGrad {
    pub fn zeros(n: usize) -> Self {
        Self { data: vec![0.0; n] }
    }
    pub fn from_vec(data: Vec<f32>) -> Self {
        Self { data }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Resizes (no-op after the first step, so buffers are allocated once).
    pub fn resize(&mut self, n: usize) {
        self.data.resize(n, 0.0);
    }

    /// Gathers the gradients of every parameter of `set` from `grads` (zero where a parameter
    /// is outside the graph).
    pub fn fill_from(&mut self, set: &ParamSet, grads: &GradStore) -> Result<()> {
        self.resize(set.total());
        for (i, v) in set.vars().iter().enumerate() {
            let r = set.range(i);
            match grads.get(v.as_tensor()) {
                Some(g) => copy_into(g, &mut self.data[r])?,
                None => self.data[r].fill(0.0),
            }
        }
        Ok(())
    }

    pub fn copy_from(&mut self, other: &FlatGrad) {
        self.data.clear();
        self.data.extend_from_slice(&other.data);
    }

    pub fn fill(&mut self, x: f32) {
        self.data.fill(x);
    }

    pub fn dot(&self, other: &FlatGrad) -> f64 {
        dot(&self.data, &other.data)
    }
    pub fn norm_sq(&self) -> f64 {
        dot(&self.data, &self.data)
    }
    pub fn norm(&self) -> f64 {
        self.norm_sq().sqrt()
    }
    /// `self += a * x`, the product formed in f64 before rounding.
    pub fn axpy(&mut self, a: f64, x: &FlatGrad) {
        axpy(&mut self.data, a, &x.data);
    }
    /// `self *= a`.
    pub fn scale(&mut self, a: f64) {
        for s in &mut self.data {
            *s = (*s as f64 * a) as f32;
        }
    }
    /// `self = a * x + b * y` in one pass.
    pub fn set_lin2(&mut self, a: f64, x: &FlatGrad, b: f64, y: &FlatGrad) {
        self.resize(x.len());
        for ((s, &xi), &yi) in self.data.iter_mut().zip(&x.data).zip(&y.data) {
            *s = (a * xi as f64 + b * yi as f64) as f32;
        }
    }
}

/// Dot product of two equally long slices, accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    // Four accumulators let the compiler vectorise without reordering a single f64 chain much.
    let mut acc = [0f64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for k in 0..4 {
            acc[k] += a[4 * c + k] as f64 * b[4 * c + k] as f64;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..a.len() {
        s += a[i] as f64 * b[i] as f64;
    }
    s
}

/// `y += a * x`.
pub fn axpy(y: &mut [f32], a: f64, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy of vectors of different lengths");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = (*yi as f64 + a * xi as f64) as f32;
    }
}

/// `a . b` restricted to the flat indices outside `skip` (e.g. everything but the CGR head).
pub fn dot_outside(a: &[f32], b: &[f32], skip: Option<&Range<usize>>) -> f64 {
    match skip {
        None => dot(a, b),
        Some(r) => dot(&a[..r.start], &b[..r.start]) + dot(&a[r.end..], &b[r.end..]),
    }
}

/// The Euclidean norm of a list of tensors (one gradient as per-parameter tensors), with the
/// per-tensor sums of squares accumulated in f64.
pub fn tensors_norm(ts: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for t in ts {
        s += t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Init;

    #[test]
    fn flat_round_trip_and_prefix_ranges() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(3);
        b.pp("head").param("w", (2, 3), Init::Normal { std: 1.0 })?;
        b.pp("backbone").param("w", 4, Init::Normal { std: 1.0 })?;
        b.pp("classifier").param("b", 1, Init::Zeros)?;
        let set = ParamSet::from_store(&b.store());
        assert_eq!(set.names(), ["backbone.w", "classifier.b", "head.w"]);
        assert_eq!(set.total(), 11);
        assert_eq!(set.prefix_range("head."), Some(5..11));
        assert_eq!(set.prefix_range("nope."), None);
        let mut vals = FlatGrad::default();
        set.values(&mut vals)?;
        assert_eq!(set.shapes()[2].dims(), &[2, 3]);
        let head = set.vars()[2].as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(head, vals.data[set.range(2)].to_vec());
        Ok(())
    }

    #[test]
    fn dot_axpy_in_f64() {
        let a = FlatGrad::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut b = FlatGrad::from_vec(vec![1.0; 5]);
        assert_eq!(a.dot(&b), 15.0);
        b.axpy(-1.0, &a);
        assert_eq!(b.data, vec![0.0, -1.0, -2.0, -3.0, -4.0]);
        assert_eq!(dot_outside(&a.data, &a.data, Some(&(1..3))), 1.0 + 16.0 + 25.0);
        // 1 + 1e-8 rounds to 1 in f32 but the f64 sum keeps every term.
        let big = vec![1e-4f32; 1_000_000];
        assert!((dot(&big, &big) - 1e-2).abs() < 1e-9);
    }

    fn bits(set: &ParamSet) -> Result<Vec<u32>> {
        let mut v = FlatGrad::default();
        set.values(&mut v)?;
        Ok(v.data.iter().map(|x| x.to_bits()).collect())
    }

    /// The in-place shift and restore on the CPU must give the bits of the tensor path (candle's
    /// `add`, `Var::set`) that produced the committed SAM, SAGM and RoGA results.
    #[test]
    fn in_place_shift_and_restore_give_the_tensor_paths_bits() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(5);
        b.pp("a").param("w", (3, 5), Init::Normal { std: 1.0 })?;
        b.pp("b").param("bias", 7, Init::Zeros)?;
        b.pp("c").param("w", (2, 2, 3), Init::Normal { std: 1e-3 })?;
        let set = ParamSet::from_store(&b.store());
        let n = set.total();
        // Signed zeros, subnormals, a value the shift rounds, a huge one that overflows.
        let special = [0.0, -0.0, 1e-40, -1e-40, 1.0 + f32::EPSILON, 3e38, -2.5];
        set.vars()[1].set(&Tensor::new(&special, &Device::Cpu)?)?;
        let original = bits(&set)?;
        let delta = FlatGrad::from_vec(
            (0..n)
                .map(|i| [-0.0, 0.0, 1e-40, 0.7, -1e-7, 3e38, 1.5e-8][i % 7] * (1 + i % 3) as f32)
                .collect(),
        );

        let mut flat = Snapshot::default();
        set.snapshot(&mut flat)?;
        assert!(flat.flat_valid && flat.tensors.is_empty(), "CPU parameters take the flat path");
        let tensors = Snapshot {
            tensors: set
                .vars()
                .iter()
                .map(|v| v.as_tensor().copy().map(|t| t.detach()))
                .collect::<Result<_>>()?,
            ..Default::default()
        };

        set.set_shifted(&flat, &delta)?;
        let shifted_in_place = bits(&set)?;
        set.restore(&flat)?;
        assert_eq!(bits(&set)?, original, "in-place restore");
        set.set_shifted(&tensors, &delta)?;
        let shifted_by_tensors = bits(&set)?;
        set.restore(&tensors)?;
        assert_eq!(bits(&set)?, original, "tensor restore");
        assert_eq!(shifted_in_place, shifted_by_tensors);
        assert_ne!(shifted_in_place, original, "the shift moved something");

        // The buffers are reused: a second snapshot after a change stores the new values.
        set.set_shifted(&flat, &delta)?;
        set.snapshot(&mut flat)?;
        set.restore(&flat)?;
        assert_eq!(bits(&set)?, shifted_in_place);
        assert!(set.set_shifted(&flat, &FlatGrad::zeros(n - 1)).is_err(), "a delta of the wrong length");
        Ok(())
    }
}
