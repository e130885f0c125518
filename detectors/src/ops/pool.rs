//! Max pooling with a backward for every kernel/stride/padding combination.
//!
//! candle's `max_pool2d` has no backward when kernel != stride (ResNet's 3x3/2 stem pool,
//! Xception's 3x3/2 block pools), and where it has one it sends the gradient to every tied
//! maximum (common after a ReLU). [`max_pool2d`] follows PyTorch instead: floor output size,
//! implicit `-inf` padding, and the gradient of each window goes to its first maximum only.
//!
//! On CPU it runs as a candle [`CustomOp1`] whose forward records the argmax of every window and
//! whose backward scatters the output gradient to those positions. On other devices (CUDA) it
//! falls back to [`max_pool2d_composed`], a composition of candle ops that runs anywhere and has a
//! backward (ties there split the gradient, candle's `maximum` rule); it never calls the CPU
//! kernel on device memory.
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Output side length of a pooling window sweep (PyTorch's floor mode).
pub fn pool_out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        candle_core::bail!("max_pool2d: kernel ({kernel}) and stride ({stride}) must be positive");
    }
    if 2 * padding > kernel {
        candle_core::bail!("max_pool2d: padding {padding} must be at most half the kernel {kernel}");
    }
    if input + 2 * padding < kernel {
        candle_core::bail!(
            "max_pool2d: input size {input} (+2x padding {padding}) smaller than the kernel {kernel}"
        );
    }
    Ok((input + 2 * padding - kernel) / stride + 1)
}

/// Square max pooling of an NCHW tensor, PyTorch semantics (see the module comment).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if x.rank() != 4 {
        candle_core::bail!("max_pool2d: expected a [B, C, H, W] tensor, got shape {:?}", x.dims());
    }
    if !x.device().is_cpu() {
        return max_pool2d_composed(x, kernel, stride, padding);
    }
    let x = x.contiguous()?;
    x.apply_op1(MaxPool2dOp { kernel, stride, padding, argmax: Mutex::new(Vec::new()) })
}

struct MaxPool2dOp {
    kernel: usize,
    stride: usize,
    padding: usize,
    /// For every output element, the index of its window's maximum within its `H x W` plane.
    /// Filled by the forward and read by the backward of the same graph node.
    argmax: Mutex<Vec<u32>>,
}

trait PoolElem: Copy + PartialOrd + Default + Send + Sync + std::ops::AddAssign + 'static {}
impl PoolElem for f32 {}
impl PoolElem for f64 {}

impl MaxPool2dOp {
    fn forward_plane<T: PoolElem>(
        &self,
        src: &[T],
        (h, w, ho, wo): (usize, usize, usize, usize),
        out: &mut [T],
        arg: &mut [u32],
    ) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        for oy in 0..ho {
            let y0 = (oy * s).saturating_sub(p);
            let y1 = (oy * s + k - p).min(h);
            for ox in 0..wo {
                let x0 = (ox * s).saturating_sub(p);
                let x1 = (ox * s + k - p).min(w);
                let mut best_i = y0 * w + x0;
                let mut best = src[best_i];
                for y in y0..y1 {
                    let row = &src[y * w..(y + 1) * w];
                    for (xx, &v) in row.iter().enumerate().take(x1).skip(x0) {
                        // Strict `>` keeps the first maximum in scan order, as PyTorch does;
                        // `v != v` lets a NaN win so it propagates instead of vanishing.
                        #[allow(clippy::eq_op)]
                        if v > best || v != v {
                            best = v;
                            best_i = y * w + xx;
                        }
                    }
                }
                out[oy * wo + ox] = best;
                arg[oy * wo + ox] = best_i as u32;
            }
        }
    }

    fn forward_typed<T: PoolElem>(&self, src: &[T], dims: &[usize]) -> Result<(Vec<T>, Vec<u32>, Shape)> {
        let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        if h * w > u32::MAX as usize {
            candle_core::bail!("max_pool2d: plane of {h}x{w} too large");
        }
        let ho = pool_out_size(h, self.kernel, self.stride, self.padding)?;
        let wo = pool_out_size(w, self.kernel, self.stride, self.padding)?;
        let planes = b * c;
        let mut out = vec![T::default(); planes * ho * wo];
        let mut arg = vec![0u32; planes * ho * wo];
        if ho * wo > 0 {
            out.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo)).enumerate().for_each(
                |(pi, (o, a))| self.forward_plane(&src[pi * h * w..(pi + 1) * h * w], (h, w, ho, wo), o, a),
            );
        }
        Ok((out, arg, Shape::from((b, c, ho, wo))))
    }

    fn backward_typed<T: PoolElem + WithDType>(
        &self,
        arg_shape: &Shape,
        grad_res: &Tensor,
    ) -> Result<Tensor> {
        let dims = arg_shape.dims();
        let plane_in = dims[2] * dims[3];
        let g = grad_res.flatten_all()?.to_vec1::<T>()?;
        let argmax = self.argmax.lock().expect("max_pool2d argmax poisoned");
        if argmax.len() != g.len() {
            candle_core::bail!(
                "max_pool2d backward: gradient has {} elements, forward had {}",
                g.len(),
                argmax.len()
            );
        }
        let planes = dims[0] * dims[1];
        let mut grad_in = vec![T::default(); planes * plane_in];
        let plane_out = if planes == 0 { 0 } else { g.len() / planes };
        if plane_out > 0 && plane_in > 0 {
            grad_in.par_chunks_mut(plane_in).enumerate().for_each(|(pi, gi)| {
                let range = pi * plane_out..(pi + 1) * plane_out;
                for (&i, &v) in argmax[range.clone()].iter().zip(&g[range]) {
                    gi[i as usize] += v;
                }
            });
        }
        Tensor::from_vec(grad_in, arg_shape.clone(), grad_res.device())
    }
}

impl CustomOp1 for MaxPool2dOp {
    fn name(&self) -> &'static str {
        "dfbench-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::start(super::profile::Kind::PoolFwd);
        let (o1, o2) = match layout.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("max_pool2d: input must be contiguous"),
        };
        let dims = layout.dims();
        let (out, arg, shape) = match storage {
            CpuStorage::F32(v) => {
                let (o, a, s) = self.forward_typed(&v[o1..o2], dims)?;
                (CpuStorage::F32(o), a, s)
            }
            CpuStorage::F64(v) => {
                let (o, a, s) = self.forward_typed(&v[o1..o2], dims)?;
                (CpuStorage::F64(o), a, s)
            }
            _ => candle_core::bail!("max_pool2d: only f32 and f64 tensors are supported"),
        };
        *self.argmax.lock().expect("max_pool2d argmax poisoned") = arg;
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let _span = super::profile::start(super::profile::Kind::PoolBwd);
        let grad = match arg.dtype() {
            DType::F32 => self.backward_typed::<f32>(arg.shape(), &grad_res.to_dtype(DType::F32)?)?,
            DType::F64 => self.backward_typed::<f64>(arg.shape(), &grad_res.to_dtype(DType::F64)?)?,
            dt => candle_core::bail!("max_pool2d backward: dtype {dt:?} not supported"),
        };
        Ok(Some(grad))
    }
}

/// Device-independent max pooling from candle ops (pad with `-inf`, take the `k*k` strided
/// shifted views, reduce with `maximum`). Slower and more memory-hungry than the CPU kernel; used
/// for non-CPU tensors. Ties split the gradient between the tied entries.
pub fn max_pool2d_composed(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ho = pool_out_size(h, kernel, stride, padding)?;
    let wo = pool_out_size(w, kernel, stride, padding)?;
    // Every shifted view reads `stride * out` entries from offset `k_i < kernel`, so the padded
    // tensor needs `kernel - 1 + stride * out` entries per side; the surplus is `-inf`.
    let hp = kernel - 1 + stride * ho;
    let wp = kernel - 1 + stride * wo;
    let neg = |dims: (usize, usize, usize, usize)| -> Result<Tensor> {
        Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())
    };
    let pad_axis = |t: Tensor, axis: usize, size: usize, target: usize| -> Result<Tensor> {
        let mut parts = Vec::with_capacity(3);
        let mut dims = t.dims4()?;
        let set = |d: &mut (usize, usize, usize, usize), n: usize| {
            if axis == 2 { d.2 = n } else { d.3 = n }
        };
        if padding > 0 {
            set(&mut dims, padding);
            parts.push(neg(dims)?);
        }
        parts.push(t.clone());
        let t_tail = target.saturating_sub(size + padding);
        if t_tail > 0 {
            set(&mut dims, t_tail);
            parts.push(neg(dims)?);
        }
        // Rows/cols past `target` are never inside a window (floor mode).
        Tensor::cat(&parts, axis)?.narrow(axis, 0, target)
    };
    let xp = pad_axis(x.clone(), 2, h, hp)?;
    let xp = pad_axis(xp, 3, w, wp)?;
    let mut acc: Option<Tensor> = None;
    for ki in 0..kernel {
        let rows =
            xp.narrow(2, ki, stride * ho)?.reshape((b, c, ho, stride, wp))?.narrow(3, 0, 1)?.squeeze(3)?;
        for kj in 0..kernel {
            let v = rows
                .narrow(3, kj, stride * wo)?
                .reshape((b, c, ho, wo, stride))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            acc = Some(match acc {
                None => v,
                Some(a) => a.maximum(&v)?,
            });
        }
    }
    acc.expect("kernel >= 1").contiguous()
}

/// Global average pooling: `[B, C, H, W]` -> `[B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let _span = super::profile::start(super::profile::Kind::PoolFwd);
    x.mean((2, 3))
}
