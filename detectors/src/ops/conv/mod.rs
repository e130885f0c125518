//! Fast CPU 2-D convolution (f32, NCHW) as a candle custom op with its own backward.
//!
//! candle 0.11's CPU conv2d materialises im2col for the whole batch (large fresh temporaries,
//! page faults), computes input gradients with a naive transposed convolution, computes them even
//! for the input image, and runs grouped convolutions one group at a time. This op instead:
//!
//! - works per (sample, band of output rows): im2col of one band goes into a per-thread scratch
//!   buffer that is reused across calls, then one `gemm` per group (1x1 stride-1 convolutions read
//!   the input in place, no im2col);
//! - runs samples / bands in parallel with rayon, each gemm single-threaded;
//! - in backward, computes the weight gradient (`dY x col^T`, accumulated per fixed chunk of the
//!   batch) and the input gradient (`W^T x dY`, then col2im) in one pass, and skips each one whose
//!   operand needs no gradient (an input image is neither a variable nor the result of an op);
//! - for narrow bands of wide weights (ResNet's layers 2-4, Xception's and EfficientNet's 1x1
//!   convolutions on small planes) computes the weight gradient over the whole batch instead
//!   (`batch_dw`): one multi-threaded gemm per tile of bands, no per-chunk partial sums;
//! - gives depthwise convolutions (one input channel per group) a direct loop kernel, vectorised
//!   across 8 channels of a per-call channel-blocked copy where each input channel has one output
//!   channel (`depthwise_blocked`, the same bits as the row-vectorised reference in `depthwise`).
//!
//! Results are bit-identical across calls and independent of the number of threads: every output
//! element is computed by one work item (or one gemm, which splits only its output between
//! threads) in a fixed order, and the weight gradient is reduced over a chunking of the batch, or
//! a tiling of it, that depends only on the shapes.
//!
//! [`crate::ops::conv2d`] dispatches here for f32 tensors on the CPU and to candle otherwise.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor, bail};

use super::profile::{self, Kind, PartClock};

mod batch_dw;
mod depthwise;
mod depthwise_blocked;
mod gemm_path;
mod scratch;

/// Hyper-parameters of a 2-D convolution (same meaning as PyTorch's `Conv2d`, symmetric padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

/// Whether [`conv2d_cpu`] handles these operands (f32 on the CPU, rank 4); the dispatcher in
/// [`crate::ops::conv2d`] falls back to candle's convolution otherwise.
pub fn is_supported(x: &Tensor, weight: &Tensor) -> bool {
    x.device().is_cpu()
        && weight.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.rank() == 4
        && weight.rank() == 4
}

/// Convolution of `x` `[N, C_in, H, W]` with `weight` `[C_out, C_in / groups, kH, kW]` (no bias)
/// through the custom CPU op; differentiable with respect to both operands.
pub fn conv2d_cpu(x: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<Tensor> {
    if !is_supported(x, weight) {
        bail!(
            "conv2d_cpu: needs rank-4 f32 tensors on the CPU, got input {:?} {:?} on {:?} and \
             weight {:?} {:?} on {:?}",
            x.dims(),
            x.dtype(),
            x.device().location(),
            weight.dims(),
            weight.dtype(),
            weight.device().location()
        );
    }
    // Validate before running so shape errors name the convolution, not a kernel.
    Geom::new(x.dims(), weight.dims(), params)?;
    // `contiguous` is free when already contiguous and keeps gradient tracking otherwise.
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    x.apply_op2_arc(&weight, Arc::new(Box::new(Conv2dOp { params })))
}

/// Shapes of one convolution, validated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
    pub groups: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Output channels per group.
    pub og: usize,
}

impl Geom {
    pub(crate) fn new(xd: &[usize], wd: &[usize], prm: Conv2dParams) -> Result<Self> {
        let (&[n, c, h, w], &[o, cg, kh, kw]) = (xd, wd) else {
            bail!(
                "conv2d: expected input [N, C, H, W] and weight [C_out, C_in/groups, kH, kW], got {xd:?} and {wd:?}"
            );
        };
        let Conv2dParams { stride: s, padding: p, dilation: d, groups } = prm;
        if s == 0 || d == 0 || groups == 0 {
            bail!("conv2d: stride, dilation and groups must be >= 1, got {prm:?}");
        }
        if c % groups != 0 || o % groups != 0 || cg * groups != c {
            bail!(
                "conv2d: input channels {c} and output channels {o} must both split into {groups} \
                 groups, with weight's second dimension {cg} = {c} / {groups} (weight {wd:?})"
            );
        }
        if n == 0 || c == 0 || o == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: empty dimension in input {xd:?} or weight {wd:?}");
        }
        let span = |k: usize| d * (k - 1) + 1;
        if h + 2 * p < span(kh) || w + 2 * p < span(kw) {
            bail!(
                "conv2d: padded input {}x{} smaller than the dilated kernel {}x{} (input {xd:?}, \
                 weight {wd:?}, {prm:?})",
                h + 2 * p,
                w + 2 * p,
                span(kh),
                span(kw)
            );
        }
        let ho = (h + 2 * p - span(kh)) / s + 1;
        let wo = (w + 2 * p - span(kw)) / s + 1;
        Ok(Self { n, c, h, w, o, kh, kw, ho, wo, s, p, d, groups, cg, og: o / groups })
    }

    /// Rows of one group's im2col matrix (= columns of its weight matrix).
    pub(crate) fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    pub(crate) fn in_plane(&self) -> usize {
        self.h * self.w
    }

    pub(crate) fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// 1x1, stride 1, no padding: the input itself is the im2col matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }

    /// Each output channel reads a single input channel (depthwise, possibly with a multiplier).
    pub(crate) fn is_depthwise(&self) -> bool {
        self.cg == 1 && self.groups > 1
    }

    /// The profile's kinds for this convolution: forward, backward-data, backward-filter
    /// (depthwise has one backward kind: its kernel computes both gradients in one loop).
    fn profile_kinds(&self) -> [Kind; 3] {
        if self.is_depthwise() {
            [Kind::DepthwiseFwd, Kind::DepthwiseBwd, Kind::DepthwiseBwd]
        } else if self.kh == 1 && self.kw == 1 {
            [Kind::PointwiseFwd, Kind::PointwiseBwdData, Kind::PointwiseBwdFilter]
        } else {
            [Kind::ConvFwd, Kind::ConvBwdData, Kind::ConvBwdFilter]
        }
    }

    pub(crate) fn x_len(&self) -> usize {
        self.n * self.c * self.in_plane()
    }

    pub(crate) fn w_len(&self) -> usize {
        self.o * self.k()
    }

    pub(crate) fn y_len(&self) -> usize {
        self.n * self.o * self.out_plane()
    }

    /// Output positions `j` in `0..n_out` whose input coordinate `j * s + off` lies in `0..len`,
    /// as a half-open range (empty ranges have `lo == hi`).
    pub(crate) fn valid_range(off: isize, s: usize, len: usize, n_out: usize) -> (usize, usize) {
        let si = s as isize;
        let lo = if off >= 0 { 0 } else { ((-off + si - 1) / si) as usize };
        let last = len as isize - 1 - off;
        let hi = if last < 0 { 0 } else { (last / si + 1) as usize };
        let hi = hi.min(n_out);
        (lo.min(hi), hi)
    }
}

/// Raw pointer that work items use to write disjoint parts of one output buffer in parallel.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: every user writes through it only to index ranges no other concurrent work item touches
// (argued at each use), and the buffer outlives the parallel section.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Through a method so closures capture the whole wrapper (edition 2024 closures would
    /// otherwise capture the bare pointer field, which is not `Sync`).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

struct Conv2dOp {
    params: Conv2dParams,
}

/// [`super::f32_slice`] for this op's error messages.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::ops::f32_slice("conv2d_cpu", s, l, what)
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "dfbench-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.params)?;
        let _span = profile::start(g.profile_kinds()[0]);
        let x = f32_slice(s1, l1, "input")?;
        let w = f32_slice(s2, l2, "weight")?;
        let y = if g.is_depthwise() { depthwise::forward(&g, x, w) } else { gemm_path::forward(&g, x, w) };
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // An operand that is neither a variable nor computed from one (the input image, a frozen
        // weight) gets no gradient: skipping it is most of the saving on a first layer.
        let need_dx = x.track_op();
        let need_dw = w.track_op();
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let g = Geom::new(x.dims(), w.dims(), self.params)?;
        // Timed from here to the gradients' tensors; the gemm path's wall time is split between
        // its data and filter parts by the thread time each took.
        let profiling = profile::enabled();
        let t0 = profile::now_if(profiling);
        let clock = PartClock::default();
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            bail!("conv2d_cpu backward: operands must be on the CPU");
        };
        let xv = f32_slice(xs, xl, "input")?;
        let wv = f32_slice(ws, wl, "weight")?;
        let dy = f32_slice(gs, gl, "output gradient")?;
        if dy.len() != g.y_len() {
            bail!(
                "conv2d_cpu backward: output gradient has shape {:?}, expected {:?}",
                grad.dims(),
                (g.n, g.o, g.ho, g.wo)
            );
        }
        let (dx, dw) = if g.is_depthwise() {
            depthwise::backward(&g, xv, wv, dy, need_dx, need_dw)
        } else {
            gemm_path::backward(&g, xv, wv, dy, need_dx, need_dw, profiling.then_some(&clock))
        };
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), &Device::Cpu)).transpose()?;
        let dw = dw.map(|v| Tensor::from_vec(v, w.shape(), &Device::Cpu)).transpose()?;
        if let Some(t0) = t0 {
            let wall = t0.elapsed().as_nanos() as u64;
            let [_, data_kind, filter_kind] = g.profile_kinds();
            if g.is_depthwise() {
                profile::record(data_kind, wall);
            } else {
                profile::split_record(data_kind, filter_kind, &clock, wall);
            }
        }
        Ok((dx, dw))
    }
}
