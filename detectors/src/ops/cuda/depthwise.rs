//! Depthwise 2-D convolution on CUDA (input `[N, C, H, W]`, weight `[C * M, 1, kH, kW]`), with
//! per-side padding so that TF "SAME" (more padding at the bottom/right) needs no padded copy.
//!
//! PyTorch's `DepthwiseConv2d.cu` algorithm: one thread per output value forward, one thread per
//! input value for the input gradient (gathering the outputs that read it, so no atomics), and
//! the weight gradient as a reduction per `(output channel, tap)` over `N x H_out x W_out`
//! (P partial sums per tap, added in f64 by a second kernel: deterministic).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::{Arg, int, launch, partials, view};

/// Geometry of one depthwise convolution, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Channel multiplier: output channel `o` reads input channel `o / m`.
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
    pub stride: usize,
    /// `[top, bottom, left, right]`.
    pub pads: [usize; 4],
    pub dilation: usize,
}

impl DwGeom {
    pub fn new(xd: &[usize], wd: &[usize], stride: usize, pads: [usize; 4], dilation: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, one, kh, kw]) = (xd, wd) else {
            bail!("depthwise conv2d: expected input [N, C, H, W] and weight [C*M, 1, kH, kW], got {xd:?} and {wd:?}");
        };
        if one != 1 || c == 0 || o == 0 || o % c != 0 {
            bail!("depthwise conv2d: weight {wd:?} must be [C*M, 1, kH, kW] for input {xd:?}");
        }
        if stride == 0 || dilation == 0 || kh == 0 || kw == 0 || n == 0 {
            bail!("depthwise conv2d: empty input {xd:?} / weight {wd:?}, or stride {stride} / dilation {dilation} of 0");
        }
        let [pt, pb, pl, pr] = pads;
        let (sh, sw) = (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1);
        if h + pt + pb < sh || w + pl + pr < sw {
            bail!("depthwise conv2d: padded input {xd:?} (pads {pads:?}) smaller than the kernel {sh}x{sw}");
        }
        let ho = (h + pt + pb - sh) / stride + 1;
        let wo = (w + pl + pr - sw) / stride + 1;
        Ok(Self { n, c, h, w, m: o / c, kh, kw, ho, wo, stride, pads, dilation })
    }

    fn o(&self) -> usize {
        self.c * self.m
    }

    /// The integer arguments every depthwise kernel takes after its buffers, in order.
    fn args(&self) -> Result<Vec<Arg<'static>>> {
        let [pt, _, pl, _] = self.pads;
        // The largest flat index the kernels form in 32 bits is a plane offset; the totals are
        // 64-bit in the kernels.
        Ok(vec![
            int(self.n, "batch")?,
            int(self.c, "channels")?,
            int(self.h, "height")?,
            int(self.w, "width")?,
            int(self.m, "channel multiplier")?,
            int(self.kh, "kernel height")?,
            int(self.kw, "kernel width")?,
            int(self.ho, "output height")?,
            int(self.wo, "output width")?,
            int(self.stride, "stride")?,
            int(pt, "top padding")?,
            int(pl, "left padding")?,
            int(self.dilation, "dilation")?,
        ])
    }
}

/// Depthwise convolution of `x` with `w` (`groups = C_in`), differentiable in both.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pads: [usize; 4], dilation: usize) -> Result<Tensor> {
    DwGeom::new(x.dims(), w.dims(), stride, pads, dilation)?;
    x.contiguous()?.apply_op2(&w.contiguous()?, DwForward { stride, pads, dilation })
}

fn no_cpu(name: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{name}: CUDA-only op called on CPU tensors (ops::conv2d routes CPU tensors to ops::conv)")
}

struct DwForward {
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
}

impl CustomOp2 for DwForward {
    fn name(&self) -> &'static str {
        "dfbench-cuda-depthwise-conv2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = DwGeom::new(xl.dims(), wl.dims(), self.stride, self.pads, self.dilation)?;
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let x = view(self.name(), xs, xl, "input")?;
        let w = view(self.name(), ws, wl, "weight")?;
        let len = g.n * g.o() * g.ho * g.wo;
        // SAFETY: the kernel writes every one of the `len` outputs.
        let mut y = unsafe { dev.alloc::<f32>(len)? };
        let mut args = vec![Arg::In(x), Arg::In(w), Arg::Out(&mut y)];
        args.extend(g.args()?);
        launch(&dev, "dfb_dw_fwd", len, &mut args)?;
        drop(args);
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((g.n, g.o(), g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = DwGeom::new(x.dims(), w.dims(), self.stride, self.pads, self.dilation)?;
        // The input image (no variable behind it) needs no gradient: skip its kernel.
        let dx = if x.track_op() { Some(w.apply_op2_no_bwd(&grad, &DwBackwardData { g })?) } else { None };
        let dw = if w.track_op() { Some(x.apply_op2_no_bwd(&grad, &DwBackwardWeight { g })?) } else { None };
        Ok((dx, dw))
    }
}

/// `dx` from `(w, dy)`.
struct DwBackwardData {
    g: DwGeom,
}

impl CustomOp2 for DwBackwardData {
    fn name(&self) -> &'static str {
        "dfbench-cuda-depthwise-conv2d-bwd-data"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, ws: &CudaStorage, wl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.g;
        if dl.dims() != [g.n, g.o(), g.ho, g.wo] {
            bail!("{}: output gradient {:?}, expected {:?}", self.name(), dl.dims(), [g.n, g.o(), g.ho, g.wo]);
        }
        let dev = ws.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let w = view(self.name(), ws, wl, "weight")?;
        let dy = view(self.name(), ds, dl, "output gradient")?;
        let len = g.n * g.c * g.h * g.w;
        // SAFETY: one thread writes each of the `len` input-gradient values.
        let mut dx = unsafe { dev.alloc::<f32>(len)? };
        let mut args = vec![Arg::In(dy), Arg::In(w), Arg::Out(&mut dx)];
        args.extend(g.args()?);
        launch(&dev, "dfb_dw_bwd_data", len, &mut args)?;
        drop(args);
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// `dw` from `(x, dy)`.
struct DwBackwardWeight {
    g: DwGeom,
}

impl CustomOp2 for DwBackwardWeight {
    fn name(&self) -> &'static str {
        "dfbench-cuda-depthwise-conv2d-bwd-weight"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.g;
        if dl.dims() != [g.n, g.o(), g.ho, g.wo] {
            bail!("{}: output gradient {:?}, expected {:?}", self.name(), dl.dims(), [g.n, g.o(), g.ho, g.wo]);
        }
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let x = view(self.name(), xs, xl, "input")?;
        let dy = view(self.name(), ds, dl, "output gradient")?;
        let rows = g.o() * g.kh * g.kw;
        let p = partials(g.n * g.ho * g.wo);
        // SAFETY: thread (row, p) writes part[row * P + p]; the second kernel writes each row.
        let mut part = unsafe { dev.alloc::<f32>(rows * p)? };
        let mut args = vec![Arg::In(x), Arg::In(dy), Arg::Out(&mut part)];
        args.extend(g.args()?);
        args.push(int(p, "partials")?);
        launch(&dev, "dfb_dw_bwd_weight_partial", rows * p, &mut args)?;
        drop(args);
        let mut dw = unsafe { dev.alloc::<f32>(rows)? };
        let mut args = vec![Arg::In(part.slice(..)), Arg::Out(&mut dw), int(rows, "weights")?, int(p, "partials")?];
        launch(&dev, "dfb_rows_sum", rows, &mut args)?;
        drop(args);
        Ok((CudaStorage::wrap_cuda_slice(dw, dev), Shape::from((g.o(), 1, g.kh, g.kw))))
    }
}
