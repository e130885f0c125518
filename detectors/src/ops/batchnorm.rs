//! Fused 2-D batch normalisation (f32, contiguous NCHW, CPU) as a candle custom op.
//!
//! Composed from candle ops, a training-mode BatchNorm costs two strided `ReduceSum`s over
//! `(0, 2, 3)` in the forward (candle runs them single-threaded), five broadcast element-wise ops
//! with their temporaries, and in the backward one more reduction per broadcast operand. This op
//! does the forward in two passes over `x` (statistics, then normalise) and the backward in two
//! passes over `x` and `dy` (the two per-channel sums, then `dx`), parallel over the `N x C`
//! planes, and delivers the gradients of `x`, `gamma` and `beta` itself (it is a [`CustomOp3`]).
//!
//! Statistics are accumulated over values shifted by one sample of their channel
//! (`x[0, c, 0, 0]`): the shift keeps the one-pass `E[(x-s)^2] - E[x-s]^2` free of the
//! cancellation that plain `E[x^2] - E[x]^2` suffers when `|mean| >> std`. Sums run in f32 over
//! short blocks (vectorised) and in f64 across blocks, which keeps them exact enough for any batch
//! a CPU can hold, so one read of `x` suffices where a two-pass (mean, then centred squares)
//! scheme would need two.
//!
//! Results are bit-identical across calls and thread counts: every plane's partial sums are
//! computed by one work item in a fixed order, and the per-channel totals add the planes in
//! sample order.
//!
//! [`batch_norm_train`] and [`batch_norm_eval`] dispatch here for f32 CPU tensors and to the
//! composed candle code ([`batch_norm_train_composed`], [`batch_norm_eval_composed`]) otherwise.
//!
//! A ReLU next to the op can be folded into it ([`Relu`]): on its input (Meso4 applies ReLU
//! between each convolution and its BatchNorm) or on its output (ResNet, Xception). candle's
//! ReLU costs a pass and a tensor forward, and five passes with four temporaries backward (`ge`,
//! `to_dtype`, `mul`, the gradient sum). The fused op computes the same values with the same
//! operations (`v.max(0)` as candle's ReLU; the incoming gradient times the `v >= 0` mask, plus
//! candle's zero gradient accumulator, as candle's ReLU backward; the BatchNorm output the mask
//! needs recomputed by the forward's own expression), so it gives the bits of the separate ops,
//! which the tests check.
//!
//! A SiLU on the output can be folded in too (`silu(bn(x))`, timm's `BatchNormAct2d` in
//! EfficientNet: [`batch_norm_train_then_silu`], [`batch_norm_eval_then_silu`]). candle's SiLU
//! costs a scalar `expf` per element forward and about nine passes backward; folded, the forward
//! writes `v / (1 + e^-v)` with the BatchNorm's output `v`, and the backward's first pass
//! recomputes `v`, multiplies the incoming gradient by `silu'(v)` and keeps the product in the
//! buffer that becomes the input gradient, which the second pass reads back; all with
//! [`super::vmath`]'s vectorised `exp` (within 2 ulp of the exact one, so the values are within a
//! few ulp of the separate ops', not their bits) in loops compiled for AVX2 where the processor
//! has it. CUDA and non-f32 operands run the BatchNorm, then candle's `silu`.
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::vmath;

/// Whether the fused op handles these operands: f32 on the CPU, `x` rank 4, `gamma`/`beta` of
/// one element per channel.
pub fn is_supported(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    let c = match x.dims() {
        [_, c, _, _] => *c,
        _ => return false,
    };
    [x, gamma, beta].iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && gamma.elem_count() == c
        && beta.elem_count() == c
}

/// Whether the fused CUDA op ([`super::cuda::batchnorm`]) handles these operands: f32 on a CUDA
/// device, `x` rank 4, one `gamma`/`beta` element per channel, custom ops not switched off.
#[cfg(feature = "cuda")]
fn cuda_supported(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    use super::cuda::is_cuda_f32;
    let c = match x.dims() {
        [_, c, _, _] => *c,
        _ => return false,
    };
    super::cuda::enabled()
        && is_cuda_f32(x)
        && is_cuda_f32(gamma)
        && is_cuda_f32(beta)
        && gamma.elem_count() == c
        && beta.elem_count() == c
}

/// PyTorch's running-statistics update after a training-mode forward over `count` values per
/// channel: `r <- (1 - momentum) r + momentum s`, the variance made unbiased (`count / (count -
/// 1)`). In place by one kernel per statistic for f32 on CUDA; candle ops (the CPU's bits)
/// elsewhere.
pub fn update_running_stats(
    (running_mean, running_var): (&candle_core::Var, &candle_core::Var),
    (mean, var): (Tensor, Tensor),
    momentum: f64,
    count: usize,
) -> Result<()> {
    let m = momentum;
    let unbiased = count as f64 / (count as f64 - 1.0);
    #[cfg(feature = "cuda")]
    if super::cuda::enabled()
        && super::cuda::is_cuda_f32(running_mean.as_tensor())
        && super::cuda::is_cuda_f32(running_var.as_tensor())
    {
        super::cuda::batchnorm::update_running(running_mean.as_tensor(), &mean, m, 1.0)?;
        return super::cuda::batchnorm::update_running(running_var.as_tensor(), &var, m, unbiased);
    }
    let bm = mean.to_dtype(DType::F32)?;
    let bv = (var * unbiased)?.to_dtype(DType::F32)?;
    let rm = ((running_mean.as_tensor() * (1.0 - m))? + (bm * m)?)?;
    let rv = ((running_var.as_tensor() * (1.0 - m))? + (bv * m)?)?;
    running_mean.set(&rm)?;
    running_var.set(&rv)
}

/// Where a ReLU folded into the op sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relu {
    None,
    /// `bn(relu(x))`.
    Input,
    /// `relu(bn(x))`.
    Output,
}

impl Relu {
    /// The composed fallback's input and output maps.
    fn before(self, x: &Tensor) -> Result<Tensor> {
        if self == Relu::Input { x.relu() } else { Ok(x.clone()) }
    }
    fn after(self, y: Tensor) -> Result<Tensor> {
        if self == Relu::Output { y.relu() } else { Ok(y) }
    }
}

/// Training-mode batch norm over `(0, 2, 3)` of `x` `[N, C, H, W]`: returns
/// `(y, batch_mean [C], biased_batch_var [C])`; the statistics are detached, in `x`'s dtype.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_with(x, gamma, beta, eps, Relu::None)
}

/// [`batch_norm_train`] with a ReLU before or after it, fused on the CPU (same bits as the two
/// ops); the statistics are those of the normalised input (`relu(x)` for [`Relu::Input`]).
pub fn batch_norm_train_with(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: Relu,
) -> Result<(Tensor, Tensor, Tensor)> {
    train_impl(x, gamma, beta, eps, relu, false)
}

/// `silu(bn(x))` in training mode (timm's `BatchNormAct2d` with SiLU, EfficientNet's), fused on
/// the CPU for f32 (the SiLU computed with [`super::vmath`]'s vectorised `exp`, within a few ulp
/// of candle's separate `silu`); on CUDA and for other dtypes the BatchNorm (fused where it is)
/// then candle's `silu`. Statistics as [`batch_norm_train`].
pub fn batch_norm_train_then_silu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    train_impl(x, gamma, beta, eps, Relu::None, true)
}

/// `relu` and `silu` (an output SiLU) are not both set: the callers above pass one or the other.
fn train_impl(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: Relu,
    silu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    if n * h * w < 2 {
        bail!("batch norm in training mode needs more than one value per channel, got {:?}", x.dims());
    }
    let then_silu = |y: Tensor| if silu { y.silu() } else { Ok(y) };
    #[cfg(feature = "cuda")]
    if cuda_supported(x, gamma, beta) {
        let (y, m, v) = super::cuda::batchnorm::train(x, gamma, beta, eps, relu)?;
        return Ok((then_silu(y)?, m, v));
    }
    if !is_supported(x, gamma, beta) {
        let (y, m, v) = batch_norm_train_composed(&relu.before(x)?, gamma, beta, eps)?;
        return Ok((then_silu(relu.after(y)?)?, m, v));
    }
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = BatchNormOp { eps, fixed: None, relu, silu, saved: saved.clone() };
    let y =
        x.contiguous()?.apply_op3_arc(&gamma.contiguous()?, &beta.contiguous()?, Arc::new(Box::new(op)))?;
    let s = saved.lock().expect("batch norm state poisoned");
    let to_t = |v: &[f64]| Tensor::from_vec(v.iter().map(|&a| a as f32).collect::<Vec<_>>(), c, &Device::Cpu);
    Ok((y, to_t(&s.mean)?, to_t(&s.var)?))
}

/// Inference-mode batch norm with fixed statistics `mean`/`var` `[C]` (the running ones):
/// `y = (x - mean) / sqrt(var + eps) * gamma + beta`. Differentiable with respect to `x`,
/// `gamma` and `beta`; never with respect to the statistics.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    batch_norm_eval_with(x, gamma, beta, (mean, var), eps, Relu::None)
}

/// [`batch_norm_eval`] with a ReLU before or after it, fused on the CPU (same bits as the two
/// ops). `stats` are the fixed `(mean, var)`.
pub fn batch_norm_eval_with(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: (&Tensor, &Tensor),
    eps: f64,
    relu: Relu,
) -> Result<Tensor> {
    eval_impl(x, gamma, beta, stats, eps, relu, false)
}

/// `silu(bn(x))` with fixed statistics, fused as [`batch_norm_train_then_silu`] is.
pub fn batch_norm_eval_then_silu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: (&Tensor, &Tensor),
    eps: f64,
) -> Result<Tensor> {
    eval_impl(x, gamma, beta, stats, eps, Relu::None, true)
}

fn eval_impl(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: Relu,
    silu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let then_silu = |y: Tensor| if silu { y.silu() } else { Ok(y) };
    #[cfg(feature = "cuda")]
    if cuda_supported(x, gamma, beta) && mean.elem_count() == c && var.elem_count() == c {
        return then_silu(super::cuda::batchnorm::eval(x, gamma, beta, (mean, var), eps, relu)?);
    }
    if !is_supported(x, gamma, beta) || mean.elem_count() != c || var.elem_count() != c {
        let y = relu.after(batch_norm_eval_composed(&relu.before(x)?, gamma, beta, mean, var, eps)?)?;
        return then_silu(y);
    }
    let read = |t: &Tensor| -> Result<Vec<f64>> { t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>() };
    let op = BatchNormOp { eps, fixed: Some((read(mean)?, read(var)?)), relu, silu, saved: Arc::default() };
    x.contiguous()?.apply_op3_arc(&gamma.contiguous()?, &beta.contiguous()?, Arc::new(Box::new(op)))
}

/// Training-mode batch norm from candle ops (any device and dtype); same contract as
/// [`batch_norm_train`].
pub fn batch_norm_train_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _, _) = x.dims4()?;
    let shape = (1, c, 1, 1);
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let scale = inv_std.broadcast_mul(&gamma.reshape(shape)?)?;
    let y = xc.broadcast_mul(&scale)?.broadcast_add(&beta.reshape(shape)?)?;
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// Inference-mode batch norm from candle ops (any device and dtype); same contract as
/// [`batch_norm_eval`].
pub fn batch_norm_eval_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let shape = (1, c, 1, 1);
    // Fold the statistics into one scale and shift: two passes over x.
    let rm = mean.detach().to_dtype(x.dtype())?;
    let rv = var.detach().to_dtype(x.dtype())?;
    let scale = (gamma.to_dtype(x.dtype())? / (rv + eps)?.sqrt()?)?;
    let shift = (beta.to_dtype(x.dtype())? - (rm * &scale)?)?;
    x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)
}

/// Per-channel statistics of the last forward, read by its backward (and, for the batch
/// statistics, by the caller to update the running statistics).
#[derive(Default)]
struct Saved {
    mean: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    inv_std: Vec<f64>,
}

struct BatchNormOp {
    eps: f64,
    /// `Some((mean, var))`: normalise with these fixed statistics (eval mode), whose gradient is
    /// not wanted; `None`: with the batch statistics (training mode).
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// A ReLU folded in (see the module docs).
    relu: Relu,
    /// A SiLU folded in on the output (with `relu` [`Relu::None`]).
    silu: bool,
    saved: Arc<Mutex<Saved>>,
}

/// `v`, or candle's ReLU of it.
#[inline(always)]
fn act<const RELU: bool>(v: f32) -> f32 {
    if RELU { v.max(0f32) } else { v }
}

/// The op's output from the BatchNorm's: `v`, its ReLU, or its SiLU.
#[inline(always)]
fn act_out<const RELU: bool, const SILU: bool>(v: f32) -> f32 {
    if SILU { vmath::silu(v) } else { act::<RELU>(v) }
}

/// What candle's ReLU backward multiplies the incoming gradient by: `(v >= 0)` as f32.
#[inline(always)]
fn act_mask<const RELU: bool>(v: f32) -> f32 {
    if !RELU || v >= 0.0 { 1.0 } else { 0.0 }
}

/// The gradient reaching the BatchNorm's output: `dy` itself, or with an output ReLU what
/// candle's ReLU backward hands on, `0 + dy * (y >= 0)` with `y` the BatchNorm's output before
/// the ReLU (recomputed from the input by the forward's expression); with an output SiLU,
/// `dy * silu'(y)`.
#[inline(always)]
fn out_grad<const IN: bool, const OUT: bool, const SILU: bool>(dy: f32, v: f32, m: f32, s: f32, bb: f32) -> f32 {
    if SILU {
        dy * vmath::silu_grad((act::<IN>(v) - m) * s + bb)
    } else if OUT {
        0.0 + dy * act_mask::<true>((act::<IN>(v) - m) * s + bb)
    } else {
        dy
    }
}

/// [`super::f32_slice`] for this op's error messages.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::f32_slice("batch norm", s, l, what)
}

/// Lanes of independent f32 accumulators: lets the compiler vectorise the sums (a single
/// accumulator is a serial chain of dependent adds).
const LANES: usize = 16;
/// Elements summed in f32 before the partial sums move to f64: 16 terms per lane keeps the f32
/// rounding below ~1e-6 relative, and the f64 totals keep planes of any size exact enough.
const BLOCK: usize = 16 * LANES;

/// Sums `(f(a, b), g(a, b))` over paired elements of `a` and `b`, in f32 blocks added in f64.
#[inline(always)]
fn pair_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> [f64; 2] {
    let (mut t1, mut t2) = (0f64, 0f64);
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut s1 = [0f32; LANES];
        let mut s2 = [0f32; LANES];
        let mut ac = ab.chunks_exact(LANES);
        let mut bc = bb.chunks_exact(LANES);
        for (x, y) in (&mut ac).zip(&mut bc) {
            for l in 0..LANES {
                let (u, v) = f(x[l], y[l]);
                s1[l] += u;
                s2[l] += v;
            }
        }
        for (&x, &y) in ac.remainder().iter().zip(bc.remainder()) {
            let (u, v) = f(x, y);
            s1[0] += u;
            s2[0] += v;
        }
        t1 += s1.iter().map(|&v| v as f64).sum::<f64>();
        t2 += s2.iter().map(|&v| v as f64).sum::<f64>();
    }
    [t1, t2]
}

/// `(sum (a - s), sum (a - s)^2)` over one plane (of `act(a)`).
fn shifted_moments<const RELU: bool>(a: &[f32], s: f32) -> [f64; 2] {
    pair_sums(a, a, |v, _| {
        let d = act::<RELU>(v) - s;
        (d, d * d)
    })
}

/// `(sum g, sum g * (x - m))` over one plane (of `act(x)`), `g` the gradient at the BatchNorm's
/// output ([`out_grad`]; `(s, bb)` the plane's scale and shift, used with an output ReLU only).
#[inline(always)]
fn grad_moments<const IN: bool, const OUT: bool, const SILU: bool>(
    dy: &[f32],
    x: &[f32],
    m: f32,
    (s, bb): (f32, f32),
) -> [f64; 2] {
    pair_sums(dy, x, |d, v| {
        let g = out_grad::<IN, OUT, SILU>(d, v, m, s, bb);
        (g, g * (act::<IN>(v) - m))
    })
}

/// One plane of the forward's output from its input plane; `(m, s, bb)`: the channel's mean,
/// scale and shift.
#[inline(always)]
fn forward_plane<const IN: bool, const OUT: bool, const SILU: bool>(
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    (m, s, bb): (f32, f32, f32),
) {
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(act_out::<OUT, SILU>((act::<IN>(v) - m) * s + bb));
    }
}

/// One plane of the input gradient, `k1 * g + k2 * (x - m) + k3` with `g` the gradient at the
/// BatchNorm's output ([`out_grad`]), masked by an input ReLU.
#[inline(always)]
fn dx_plane<const IN: bool, const OUT: bool, const SILU: bool>(
    dy: &[f32],
    x: &[f32],
    o: &mut [MaybeUninit<f32>],
    (m, s, bb): (f32, f32, f32),
    [k1, k2, k3]: [f32; 3],
) {
    for ((o, &d), &v) in o.iter_mut().zip(dy).zip(x) {
        let d = out_grad::<IN, OUT, SILU>(d, v, m, s, bb);
        o.write((k1 * d + k2 * (act::<IN>(v) - m) + k3) * act_mask::<IN>(v));
    }
}

/// [`grad_moments`] of the SiLU variant that also keeps the gradient at the BatchNorm's output
/// (`g`, fully written): the backward's second pass reads it back instead of recomputing it. The
/// sums are those of [`grad_moments`] (the same `g`, added in the same order).
#[inline(always)]
fn grad_moments_keep_silu(dy: &[f32], x: &[f32], g: &mut [MaybeUninit<f32>], m: f32, (s, bb): (f32, f32)) -> [f64; 2] {
    for ((o, &d), &v) in g.iter_mut().zip(dy).zip(x) {
        o.write(out_grad::<false, false, true>(d, v, m, s, bb));
    }
    // SAFETY: `g` is as long as `dy` (the callers' planes), so the loop wrote all of it, and
    // `MaybeUninit<f32>` has `f32`'s layout.
    let g: &[f32] = unsafe { &*(g as *const [MaybeUninit<f32>] as *const [f32]) };
    pair_sums(g, x, |g, v| (g, g * (v - m)))
}

/// [`dx_plane`] of the SiLU variant from the kept output gradient, in place: `g` becomes dx.
#[inline(always)]
fn dx_from_kept_silu(g: &mut [f32], x: &[f32], m: f32, [k1, k2, k3]: [f32; 3]) {
    for (o, &v) in g.iter_mut().zip(x) {
        *o = (k1 * *o + k2 * (act::<false>(v) - m) + k3) * act_mask::<false>(v);
    }
}

// The SiLU variant's plane loops, compiled for AVX2 where the processor has it: the `exp`
// polynomial is worth the wider vectors (same bits either way). The ReLU variants keep the code
// they shipped with.
vmath::avx2_fn!(
    fn forward_plane_silu(x: &[f32], y: &mut [MaybeUninit<f32>], msb: (f32, f32, f32))
        = forward_plane::<false, false, true>
);
vmath::avx2_fn!(
    fn grad_moments_silu(dy: &[f32], x: &[f32], m: f32, sbb: (f32, f32)) -> [f64; 2]
        = grad_moments::<false, false, true>
);
vmath::avx2_fn!(
    fn grad_moments_keep_silu_wide(dy: &[f32], x: &[f32], g: &mut [MaybeUninit<f32>], m: f32, sbb: (f32, f32))
        -> [f64; 2] = grad_moments_keep_silu
);
vmath::avx2_fn!(
    fn dx_from_kept_silu_wide(g: &mut [f32], x: &[f32], m: f32, k: [f32; 3]) = dx_from_kept_silu
);
vmath::avx2_fn!(
    fn dx_plane_silu(dy: &[f32], x: &[f32], o: &mut [MaybeUninit<f32>], msb: (f32, f32, f32), k: [f32; 3])
        = dx_plane::<false, false, true>
);

/// Per-plane pair sums reduced per channel in sample order (deterministic for any thread count).
fn per_channel(n: usize, c: usize, hw: usize, f: impl Fn(usize) -> [f64; 2] + Sync + Send) -> Vec<[f64; 2]> {
    let planes: Vec<[f64; 2]> = (0..n * c).into_par_iter().with_min_len(min_planes(hw)).map(f).collect();
    channel_totals(&planes, c)
}

/// Per-plane pair sums (plane `p` of channel `p % c`) added per channel in sample order.
fn channel_totals(planes: &[[f64; 2]], c: usize) -> Vec<[f64; 2]> {
    let mut tot = vec![[0f64; 2]; c];
    for (p, v) in planes.iter().enumerate() {
        let t = &mut tot[p % c];
        t[0] += v[0];
        t[1] += v[1];
    }
    tot
}

/// Planes per rayon work item, so that small planes (late ResNet layers, 7x7) do not drown in
/// scheduling overhead.
fn min_planes(hw: usize) -> usize {
    (4096 / hw.max(1)).max(1)
}

/// A new buffer of `len` values whose `hw`-sized planes `fill(plane_index, plane)` writes in
/// parallel. `fill` must write every element of its plane. Not zero-initialised: below the
/// `mmap` threshold the allocator hands back used memory, and zeroing it costs a full extra pass.
fn planewise(len: usize, hw: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    debug_assert!(hw > 0 && len.is_multiple_of(hw));
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(hw)
        .with_min_len(min_planes(hw))
        .enumerate()
        .for_each(|(p, plane)| fill(p, plane));
    // SAFETY: the chunks cover `0..len` and every caller writes each element of its chunk.
    unsafe { out.set_len(len) };
    out
}

/// The per-channel f32 scale `gamma * inv_std` the forward normalises with (and an output
/// ReLU's backward recomputes the output with).
fn scales(g: &[f32], inv_std: &[f64]) -> Vec<f32> {
    g.iter().zip(inv_std).map(|(&g, &is)| (g as f64 * is) as f32).collect()
}

impl BatchNormOp {
    fn forward(&self, x: &[f32], g: &[f32], b: &[f32], dims: (usize, usize, usize)) -> Vec<f32> {
        match (self.relu, self.silu) {
            (Relu::None, true) => self.forward_on::<false, false, true>(x, g, b, dims),
            (Relu::None, false) => self.forward_on::<false, false, false>(x, g, b, dims),
            (Relu::Input, _) => self.forward_on::<true, false, false>(x, g, b, dims),
            (Relu::Output, _) => self.forward_on::<false, true, false>(x, g, b, dims),
        }
    }

    fn forward_on<const IN: bool, const OUT: bool, const SILU: bool>(
        &self,
        x: &[f32],
        g: &[f32],
        b: &[f32],
        (n, c, hw): (usize, usize, usize),
    ) -> Vec<f32> {
        let (mean, var) = match &self.fixed {
            Some((m, v)) => (m.clone(), v.clone()),
            None => {
                let cnt = (n * hw) as f64;
                let shift: Vec<f32> = (0..c).map(|ci| act::<IN>(x[ci * hw])).collect();
                let tot = per_channel(n, c, hw, |p| {
                    shifted_moments::<IN>(&x[p * hw..(p + 1) * hw], shift[p % c])
                });
                let mut mean = Vec::with_capacity(c);
                let mut var = Vec::with_capacity(c);
                for (ci, t) in tot.iter().enumerate() {
                    let d = t[0] / cnt;
                    mean.push(shift[ci] as f64 + d);
                    var.push((t[1] / cnt - d * d).max(0.0));
                }
                (mean, var)
            }
        };
        let inv_std: Vec<f64> = var.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
        let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let scale = scales(g, &inv_std);
        // Centre first: `x * scale + shift` would lose the low bits of `x - mean` when
        // |mean| >> std.
        let y = planewise(x.len(), hw, |p, yp| {
            let ci = p % c;
            let (xp, msb) = (&x[p * hw..(p + 1) * hw], (mean32[ci], scale[ci], b[ci]));
            if SILU {
                forward_plane_silu(xp, yp, msb)
            } else {
                forward_plane::<IN, OUT, SILU>(xp, yp, msb)
            }
        });
        *self.saved.lock().expect("batch norm state poisoned") = Saved { mean, var, inv_std };
        y
    }

    /// `(dx, dgamma, dbeta)`, each only where `need` asks for it.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &[f32],
        (g, b): (&[f32], &[f32]),
        dy: &[f32],
        dims: (usize, usize, usize),
        need: [bool; 3],
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
        match (self.relu, self.silu) {
            (Relu::None, true) => self.backward_on::<false, false, true>(x, (g, b), dy, dims, need),
            (Relu::None, false) => self.backward_on::<false, false, false>(x, (g, b), dy, dims, need),
            (Relu::Input, _) => self.backward_on::<true, false, false>(x, (g, b), dy, dims, need),
            (Relu::Output, _) => self.backward_on::<false, true, false>(x, (g, b), dy, dims, need),
        }
    }

    #[allow(clippy::type_complexity)]
    fn backward_on<const IN: bool, const OUT: bool, const SILU: bool>(
        &self,
        x: &[f32],
        (g, b): (&[f32], &[f32]),
        dy: &[f32],
        (n, c, hw): (usize, usize, usize),
        need: [bool; 3],
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
        // Copied out rather than held: two backward passes over one graph (CS-DFD's) may run
        // this node's backward at the same time.
        let (mean, inv_std) = {
            let saved = self.saved.lock().expect("batch norm state poisoned");
            (saved.mean.clone(), saved.inv_std.clone())
        };
        let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let scale = scales(g, &inv_std);
        let batch = self.fixed.is_none();
        // The sums are needed for the affine gradients, and in training mode for dx too
        // (the batch statistics depend on every x).
        // With a SiLU and dx wanted, the first pass keeps the gradient at the BatchNorm's output
        // (`dy * silu'(v)`: an exp and a division per element) in the buffer that becomes dx,
        // and the second pass reads it back: the same values, one `silu'` per element.
        let mut kept: Option<Vec<f32>> = None;
        let sums = if SILU && need[0] && (need[1] || need[2] || batch) {
            let len = x.len();
            let mut buf: Vec<f32> = Vec::with_capacity(len);
            let planes: Vec<[f64; 2]> = buf.spare_capacity_mut()[..len]
                .par_chunks_mut(hw)
                .with_min_len(min_planes(hw))
                .enumerate()
                .map(|(p, gp)| {
                    let (r, ci) = (p * hw..(p + 1) * hw, p % c);
                    grad_moments_keep_silu_wide(&dy[r.clone()], &x[r], gp, mean32[ci], (scale[ci], b[ci]))
                })
                .collect();
            // SAFETY: the planes cover `0..len` and each was written in full.
            unsafe { buf.set_len(len) };
            kept = Some(buf);
            channel_totals(&planes, c)
        } else if need[1] || need[2] || (batch && need[0]) {
            per_channel(n, c, hw, |p| {
                let r = p * hw..(p + 1) * hw;
                let ci = p % c;
                let (dyp, xp, sbb) = (&dy[r.clone()], &x[r], (scale[ci], b[ci]));
                if SILU {
                    grad_moments_silu(dyp, xp, mean32[ci], sbb)
                } else {
                    grad_moments::<IN, OUT, SILU>(dyp, xp, mean32[ci], sbb)
                }
            })
        } else {
            Vec::new()
        };
        let dgamma =
            need[1].then(|| sums.iter().zip(&inv_std).map(|(s, &is)| (s[1] * is) as f32).collect());
        let dbeta = need[2].then(|| sums.iter().map(|s| s[0] as f32).collect());
        let dx = need[0].then(|| {
            // dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)) in training mode,
            // gamma * inv_std * dy with fixed statistics; written as k1 * dy + k2 * (x - mean) + k3.
            let cnt = (n * hw) as f64;
            let coef: Vec<[f32; 3]> = (0..c)
                .map(|ci| {
                    let is = inv_std[ci];
                    let k1 = g[ci] as f64 * is;
                    if batch {
                        let [sdy, sdyxc] = sums[ci];
                        [k1 as f32, (-k1 * is * is * sdyxc / cnt) as f32, (-k1 * sdy / cnt) as f32]
                    } else {
                        [k1 as f32, 0.0, 0.0]
                    }
                })
                .collect();
            if let Some(mut g) = kept {
                g.par_chunks_mut(hw).with_min_len(min_planes(hw)).enumerate().for_each(|(p, gp)| {
                    let ci = p % c;
                    dx_from_kept_silu_wide(gp, &x[p * hw..(p + 1) * hw], mean32[ci], coef[ci]);
                });
                return g;
            }
            planewise(x.len(), hw, |p, o| {
                let ci = p % c;
                let msb = (mean32[ci], scale[ci], b[ci]);
                let r = p * hw..(p + 1) * hw;
                let (dyp, xp) = (&dy[r.clone()], &x[r]);
                if SILU {
                    dx_plane_silu(dyp, xp, o, msb, coef[ci])
                } else {
                    dx_plane::<IN, OUT, SILU>(dyp, xp, o, msb, coef[ci])
                }
            })
        });
        (dx, dgamma, dbeta)
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "dfbench-batch-norm2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l1.dims() else {
            bail!("batch norm: expected input [N, C, H, W], got {:?}", l1.dims());
        };
        let x = f32_slice(s1, l1, "input")?;
        let g = f32_slice(s2, l2, "weight")?;
        let b = f32_slice(s3, l3, "bias")?;
        if g.len() != c || b.len() != c {
            bail!("batch norm: weight {:?} and bias {:?} must have {c} elements", l2.dims(), l3.dims());
        }
        if let Some((m, v)) = &self.fixed
            && (m.len() != c || v.len() != c)
        {
            bail!("batch norm: statistics have {} and {} elements, expected {c}", m.len(), v.len());
        }
        if n * c * h * w == 0 {
            bail!("batch norm: empty input {:?}", l1.dims());
        }
        let _span = super::profile::start(super::profile::Kind::BatchNormFwd);
        let y = self.forward(x, g, b, (n, c, h * w));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = [x.track_op(), gamma.track_op(), beta.track_op()];
        if need == [false; 3] {
            return Ok((None, None, None));
        }
        let _span = super::profile::start(super::profile::Kind::BatchNormBwd);
        let (n, c, h, w) = x.dims4()?;
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        if grad.dims() != x.dims() {
            bail!("batch norm backward: output gradient {:?} for input {:?}", grad.dims(), x.dims());
        }
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = gamma.storage_and_layout();
        let (bs, bl) = beta.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs), Storage::Cpu(bs), Storage::Cpu(ds)) = (&*xs, &*gs, &*bs, &*ds)
        else {
            bail!("batch norm backward: operands must be on the CPU");
        };
        let xv = f32_slice(xs, xl, "input")?;
        let gv = f32_slice(gs, gl, "weight")?;
        let bv = f32_slice(bs, bl, "bias")?;
        let dy = f32_slice(ds, dl, "output gradient")?;
        let (dx, dg, db) = self.backward(xv, (gv, bv), dy, (n, c, h * w), need);
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), &Device::Cpu)).transpose()?;
        let dg = dg.map(|v| Tensor::from_vec(v, gamma.shape(), &Device::Cpu)).transpose()?;
        let db = db.map(|v| Tensor::from_vec(v, beta.shape(), &Device::Cpu)).transpose()?;
        Ok((dx, dg, db))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vecf(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Largest `|a - b| / (1 + |b|)`.
    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max)
    }

    /// Training-mode batch norm in f64 with plain loops (two-pass statistics), and the weighted
    /// loss `sum r * y` that the gradient tests differentiate.
    fn brute_train(x: &[f64], g: &[f64], b: &[f64], dims: [usize; 4], eps: f64) -> Vec<f64> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let mut y = vec![0.0; x.len()];
        for ci in 0..c {
            let idx: Vec<usize> =
                (0..n).flat_map(|ni| (0..hw).map(move |i| (ni * c + ci) * hw + i)).collect();
            let m = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
            let v = idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / idx.len() as f64;
            for &i in &idx {
                y[i] = (x[i] - m) / (v + eps).sqrt() * g[ci] + b[ci];
            }
        }
        y
    }

    fn loss(y: &[f64], r: &[f64]) -> f64 {
        y.iter().zip(r).map(|(a, b)| a * b).sum()
    }

    struct Case {
        x: Var,
        g: Var,
        b: Var,
        r: Tensor,
    }

    fn case(dims: [usize; 4], seed: u64, offset: f32) -> Case {
        let [_, c, _, _] = dims;
        let len = dims.iter().product();
        let x = rand_vec(len, seed, -2.0, 2.0).into_iter().map(|v| v + offset).collect();
        Case {
            x: Var::from_tensor(&t(x, &dims)).unwrap(),
            g: Var::from_tensor(&t(rand_vec(c, seed + 1, 0.5, 1.5), &[c])).unwrap(),
            b: Var::from_tensor(&t(rand_vec(c, seed + 2, -1.0, 1.0), &[c])).unwrap(),
            r: t(rand_vec(len, seed + 3, -1.0, 1.0), &dims),
        }
    }

    #[test]
    fn train_forward_matches_composed_and_brute_force() -> Result<()> {
        for (dims, offset) in [
            ([3, 5, 7, 4], 0.0),
            ([2, 3, 1, 1], 0.0),
            ([4, 2, 9, 11], 50.0),
            ([1, 1, 3, 5], 0.0),
            ([2, 3, 40, 33], 3.0),
        ] {
            let k = case(dims, 7, offset);
            let (y, m, v) = batch_norm_train(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
            let (yc, mc, vc) =
                batch_norm_train_composed(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
            assert_eq!(y.dims(), &dims);
            assert!(rel_err(&vecf(&y), &vecf(&yc)) < 1e-5, "{dims:?}");
            assert!(rel_err(&vecf(&m), &vecf(&mc)) < 1e-5, "{dims:?}");
            assert!(rel_err(&vecf(&v), &vecf(&vc)) < 1e-4, "{dims:?}");
            let f64v = |t: &Tensor| vecf(t).iter().map(|&a| a as f64).collect::<Vec<_>>();
            let want = brute_train(
                &f64v(k.x.as_tensor()),
                &f64v(k.g.as_tensor()),
                &f64v(k.b.as_tensor()),
                dims,
                1e-5,
            );
            let want: Vec<f32> = want.iter().map(|&a| a as f32).collect();
            assert!(rel_err(&vecf(&y), &want) < 1e-5, "{dims:?} vs f64 reference");
            // Same bits on a second call (fixed reduction order).
            let (y2, _, _) = batch_norm_train(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
            assert_eq!(vecf(&y), vecf(&y2));
        }
        Ok(())
    }

    /// A folded ReLU must give the bits of candle's ReLU and the op as separate nodes: outputs,
    /// statistics and all three gradients, in training and evaluation mode, before and after
    /// the op, with exact zeros (where candle's mask passes the gradient) and negative values at
    /// the ReLU, and a `beta` that puts part of every channel's output below zero.
    #[test]
    fn folded_relu_gives_the_bits_of_separate_relu_and_batch_norm() -> Result<()> {
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        for (dims, offset) in [([3, 5, 7, 4], 0.0), ([2, 3, 1, 2], 0.5), ([4, 2, 19, 23], -0.4)] {
            let k = case(dims, 17, offset);
            // A third of the values exact zeros (+0 and -0).
            let x: Vec<f32> = vecf(k.x.as_tensor())
                .iter()
                .enumerate()
                .map(|(i, &v)| match i % 6 {
                    0 => 0.0,
                    3 => -0.0,
                    _ => v,
                })
                .collect();
            let x = Var::from_tensor(&t(x, &dims))?;
            let (g, b) = (k.g.as_tensor(), k.b.as_tensor());
            let rm = t(rand_vec(dims[1], 60, -1.0, 1.0), &[dims[1]]);
            let rv = t(rand_vec(dims[1], 61, 0.2, 3.0), &[dims[1]]);
            for relu in [Relu::Input, Relu::Output] {
                for train in [true, false] {
                    let run = |fused: bool| -> Result<Vec<Vec<u32>>> {
                        let xt = x.as_tensor();
                        let mut out = Vec::new();
                        let y = if fused {
                            if train {
                                let (y, m, v) = batch_norm_train_with(xt, g, b, 1e-5, relu)?;
                                out.extend([bits(vecf(&m)), bits(vecf(&v))]);
                                y
                            } else {
                                batch_norm_eval_with(xt, g, b, (&rm, &rv), 1e-5, relu)?
                            }
                        } else {
                            let xin = if relu == Relu::Input { xt.relu()? } else { xt.clone() };
                            let y = if train {
                                let (y, m, v) = batch_norm_train(&xin, g, b, 1e-5)?;
                                out.extend([bits(vecf(&m)), bits(vecf(&v))]);
                                y
                            } else {
                                batch_norm_eval(&xin, g, b, &rm, &rv, 1e-5)?
                            };
                            if relu == Relu::Output { y.relu()? } else { y }
                        };
                        out.push(bits(vecf(&y)));
                        let grads = (y * &k.r)?.sum_all()?.backward()?;
                        for v in [&x, &k.g, &k.b] {
                            out.push(bits(vecf(grads.get(v.as_tensor()).unwrap())));
                        }
                        Ok(out)
                    };
                    let (fused, plain) = (run(true)?, run(false)?);
                    assert_eq!(fused.len(), plain.len());
                    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
                        let what = format!("{dims:?} {relu:?} train={train}: output {i}");
                        assert!(a == b, "{what} differs from the separate ops");
                    }
                    // The masks matter: some inputs (input ReLU) or outputs (output ReLU) are cut.
                    let dx = &fused[fused.len() - 3];
                    let y = &fused[fused.len() - 4];
                    let cut = |i: usize| match relu {
                        Relu::Input => vecf(x.as_tensor())[i] < 0.0,
                        _ => f32::from_bits(y[i]) == 0.0,
                    };
                    // (With an output ReLU in training mode the batch statistics spread every
                    // gradient over all inputs, so only the three other cases show the mask in dx.)
                    if relu == Relu::Input || !train {
                        let cuts = (0..dx.len()).filter(|&i| cut(i)).count();
                        assert!(cuts > 0 && cuts < dx.len(), "{relu:?} train={train}: {cuts} cut");
                        for i in 0..dx.len() {
                            assert_eq!(cut(i), f32::from_bits(dx[i]) == 0.0, "{relu:?} train={train} element {i}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on a rayon pool of `n` threads.
    fn in_pool<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(f)
    }

    /// Fused `silu(bn(x))` against the composed BatchNorm then candle's `silu`, in training and
    /// evaluation mode: output, statistics (bitwise: the SiLU does not touch them) and the three
    /// gradients, on odd planes, a large offset and outputs on both sides of zero.
    #[test]
    fn folded_silu_matches_batch_norm_then_candle_silu() -> Result<()> {
        for (dims, offset) in [
            ([3, 5, 7, 4], 0.0),
            ([2, 3, 1, 1], 0.3),
            ([4, 2, 19, 23], 20.0),
            ([1, 7, 5, 3], -1.0),
        ] {
            let k = case(dims, 23, offset);
            let (x, g, b) = (k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor());
            let rm = t(rand_vec(dims[1], 62, -1.0, 1.0), &[dims[1]]);
            let rv = t(rand_vec(dims[1], 63, 0.2, 3.0), &[dims[1]]);
            for train in [true, false] {
                let run = |fused: bool| -> Result<Vec<Vec<f32>>> {
                    let mut out = Vec::new();
                    let y = if train {
                        let (y, m, v) = if fused {
                            batch_norm_train_then_silu(x, g, b, 1e-5)?
                        } else {
                            let (y, m, v) = batch_norm_train(x, g, b, 1e-5)?;
                            (y.silu()?, m, v)
                        };
                        out.extend([vecf(&m), vecf(&v)]);
                        y
                    } else if fused {
                        batch_norm_eval_then_silu(x, g, b, (&rm, &rv), 1e-5)?
                    } else {
                        batch_norm_eval(x, g, b, &rm, &rv, 1e-5)?.silu()?
                    };
                    out.push(vecf(&y));
                    let grads = (y * &k.r)?.sum_all()?.backward()?;
                    for v in [&k.x, &k.g, &k.b] {
                        out.push(vecf(grads.get(v.as_tensor()).unwrap()));
                    }
                    Ok(out)
                };
                let (fused, plain) = (run(true)?, run(false)?);
                let stats = if train { 2 } else { 0 };
                for i in 0..stats {
                    assert_eq!(fused[i], plain[i], "{dims:?}: statistic {i}");
                }
                let y = &plain[stats];
                if train && y.len() > 20 {
                    assert!(
                        y.iter().any(|&v| v < 0.0) && y.iter().any(|&v| v > 0.5),
                        "{dims:?}: both branches"
                    );
                }
                for (i, (a, p)) in fused.iter().zip(&plain).enumerate().skip(stats) {
                    let err = rel_err(a, p);
                    assert!(
                        err < 2e-6,
                        "{dims:?} train={train}: output {i} off by {err}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn folded_silu_gradients_match_finite_differences() -> Result<()> {
        let dims = [2, 3, 3, 3];
        let k = case(dims, 9, 0.4);
        let (y, _, _) =
            batch_norm_train_then_silu(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-3)?;
        let grads = (y * &k.r)?.sum_all()?.backward()?;
        let f64v = |t: &Tensor| vecf(t).iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (x, g, b, r) = (
            f64v(k.x.as_tensor()),
            f64v(k.g.as_tensor()),
            f64v(k.b.as_tensor()),
            f64v(&k.r),
        );
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let f = |x: &[f64], g: &[f64], b: &[f64]| {
            let y: Vec<f64> = brute_train(x, g, b, dims, 1e-3)
                .into_iter()
                .map(silu)
                .collect();
            loss(&y, &r)
        };
        let h = 1e-6;
        for (which, v) in [&k.x, &k.g, &k.b].iter().enumerate() {
            let got = vecf(grads.get(v.as_tensor()).unwrap());
            let want: Vec<f32> = (0..got.len())
                .map(|i| {
                    let mut p = [x.clone(), g.clone(), b.clone()];
                    let mut m = p.clone();
                    p[which][i] += h;
                    m[which][i] -= h;
                    ((f(&p[0], &p[1], &p[2]) - f(&m[0], &m[1], &m[2])) / (2.0 * h)) as f32
                })
                .collect();
            assert!(
                rel_err(&got, &want) < 1e-4,
                "operand {which}: {got:?} vs {want:?}"
            );
        }
        Ok(())
    }

    /// The fused SiLU variant (and the plain op, for comparison) gives the same bits on one and
    /// two threads, forward and backward, in both modes.
    #[test]
    fn folded_silu_is_bit_identical_across_thread_counts() -> Result<()> {
        let dims = [5, 6, 17, 13];
        let k = case(dims, 31, 0.2);
        let rm = t(rand_vec(6, 64, -1.0, 1.0), &[6]);
        let rv = t(rand_vec(6, 65, 0.2, 3.0), &[6]);
        let run = || -> Result<Vec<Vec<u32>>> {
            let bits = |t: &Tensor| vecf(t).into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let (x, g, b) = (k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor());
            let mut out = Vec::new();
            for train in [true, false] {
                let y = if train {
                    let (y, m, v) = batch_norm_train_then_silu(x, g, b, 1e-5)?;
                    out.extend([bits(&m), bits(&v)]);
                    y
                } else {
                    batch_norm_eval_then_silu(x, g, b, (&rm, &rv), 1e-5)?
                };
                out.push(bits(&y));
                let grads = (y * &k.r)?.sum_all()?.backward()?;
                for v in [&k.x, &k.g, &k.b] {
                    out.push(bits(grads.get(v.as_tensor()).unwrap()));
                }
            }
            Ok(out)
        };
        let one = in_pool(1, run)?;
        let two = in_pool(2, run)?;
        assert!(one == two, "1 and 2 threads differ");
        Ok(())
    }

    #[test]
    fn large_offset_keeps_variance_accurate() -> Result<()> {
        // |mean| / std = 1e4: the naive E[x^2] - E[x]^2 in f32 would return garbage.
        let dims = [4, 2, 8, 8];
        let x: Vec<f32> = rand_vec(512, 3, -1.0, 1.0).into_iter().map(|v| 1e4 + v).collect();
        let xf: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let (y, _, v) = batch_norm_train(&t(x, &dims), &t(vec![1.0; 2], &[2]), &t(vec![0.0; 2], &[2]), 1e-5)?;
        let want: Vec<f32> =
            brute_train(&xf, &[1.0; 2], &[0.0; 2], dims, 1e-5).iter().map(|&a| a as f32).collect();
        assert!(rel_err(&vecf(&y), &want) < 1e-3);
        assert!(vecf(&v).iter().all(|&a| (a - 1.0 / 3.0).abs() < 0.05), "{:?}", vecf(&v));
        Ok(())
    }

    #[test]
    fn train_gradients_match_composed_autograd() -> Result<()> {
        for dims in [[3, 5, 7, 4], [2, 3, 1, 2], [5, 2, 3, 3], [2, 2, 30, 21]] {
            let k = case(dims, 11, 0.3);
            let run = |fused: bool| -> Result<Vec<Vec<f32>>> {
                let (y, _, _) = if fused {
                    batch_norm_train(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-5)?
                } else {
                    batch_norm_train_composed(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-5)?
                };
                let grads = (y * &k.r)?.sum_all()?.backward()?;
                Ok([&k.x, &k.g, &k.b].iter().map(|v| vecf(grads.get(v.as_tensor()).unwrap())).collect())
            };
            let (fused, composed) = (run(true)?, run(false)?);
            for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
                assert!(rel_err(a, b) < 1e-4, "{dims:?} operand {i}: {a:?} vs {b:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn train_gradients_match_finite_differences() -> Result<()> {
        let dims = [2, 3, 2, 3];
        let k = case(dims, 5, 0.7);
        let (y, _, _) = batch_norm_train(k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor(), 1e-3)?;
        let grads = (y * &k.r)?.sum_all()?.backward()?;
        let f64v = |t: &Tensor| vecf(t).iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (x, g, b, r) = (f64v(k.x.as_tensor()), f64v(k.g.as_tensor()), f64v(k.b.as_tensor()), f64v(&k.r));
        let f = |x: &[f64], g: &[f64], b: &[f64]| loss(&brute_train(x, g, b, dims, 1e-3), &r);
        let h = 1e-6;
        let numeric = |which: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    let mut p = [x.clone(), g.clone(), b.clone()];
                    let mut m = p.clone();
                    p[which][i] += h;
                    m[which][i] -= h;
                    ((f(&p[0], &p[1], &p[2]) - f(&m[0], &m[1], &m[2])) / (2.0 * h)) as f32
                })
                .collect()
        };
        for (which, v) in [&k.x, &k.g, &k.b].iter().enumerate() {
            let got = vecf(grads.get(v.as_tensor()).unwrap());
            let want = numeric(which, got.len());
            assert!(rel_err(&got, &want) < 1e-4, "operand {which}: {got:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn eval_mode_forward_and_gradients() -> Result<()> {
        let dims = [3, 5, 7, 4];
        let k = case(dims, 21, 1.0);
        let rm = t(rand_vec(5, 30, -1.0, 1.0), &[5]);
        let rv = t(rand_vec(5, 31, 0.2, 3.0), &[5]);
        let fwd = |fused: bool| -> Result<Tensor> {
            let (x, g, b) = (k.x.as_tensor(), k.g.as_tensor(), k.b.as_tensor());
            if fused {
                batch_norm_eval(x, g, b, &rm, &rv, 1e-5)
            } else {
                batch_norm_eval_composed(x, g, b, &rm, &rv, 1e-5)
            }
        };
        let (y, yc) = (fwd(true)?, fwd(false)?);
        assert!(rel_err(&vecf(&y), &vecf(&yc)) < 1e-5);
        // Hand formula on one element: x[1, 2, 3, 1].
        let i = ((5 + 2) * 7 + 3) * 4 + 1;
        let (xv, gv, bv, m, v) =
            (vecf(k.x.as_tensor()), vecf(k.g.as_tensor()), vecf(k.b.as_tensor()), vecf(&rm), vecf(&rv));
        let want = (xv[i] - m[2]) / (v[2] + 1e-5).sqrt() * gv[2] + bv[2];
        assert!((vecf(&y)[i] - want).abs() < 1e-5);
        let grads = |y: Tensor| -> Result<Vec<Vec<f32>>> {
            let gr = (y * &k.r)?.sum_all()?.backward()?;
            Ok([&k.x, &k.g, &k.b].iter().map(|v| vecf(gr.get(v.as_tensor()).unwrap())).collect())
        };
        for (i, (a, b)) in grads(y)?.iter().zip(&grads(yc)?).enumerate() {
            assert!(rel_err(a, b) < 1e-4, "operand {i}");
        }
        Ok(())
    }

    #[test]
    fn input_without_gradient_and_strided_input() -> Result<()> {
        // A plain tensor input gets no gradient, the affine parameters still do.
        let k = case([2, 3, 4, 5], 41, 0.0);
        let x = k.x.as_tensor().detach();
        let (y, _, _) = batch_norm_train(&x, k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
        let gr = (y * &k.r)?.sum_all()?.backward()?;
        assert!(gr.get(&x).is_none());
        assert_eq!(vecf(gr.get(k.b.as_tensor()).unwrap()).len(), 3);
        // A non-contiguous view (channels and height swapped back) gives the contiguous result.
        let xt = x.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
        assert!(!xt.is_contiguous());
        let (yt, _, _) = batch_norm_train(&xt, k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
        let (y0, _, _) = batch_norm_train(&x, k.g.as_tensor(), k.b.as_tensor(), 1e-5)?;
        assert_eq!(vecf(&yt), vecf(&y0));
        // Bad shapes are errors, not panics.
        assert!(batch_norm_train(&x, &t(vec![1.0; 2], &[2]), k.b.as_tensor(), 1e-5).is_err());
        assert!(
            batch_norm_train(&t(vec![1.0; 3], &[1, 3, 1, 1]), k.g.as_tensor(), k.b.as_tensor(), 1e-5)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn layer_running_stats_match_composed_update() -> Result<()> {
        use crate::layers::BatchNorm2d;
        use crate::model::Mode;
        use crate::params::ParamStore;
        let pb = ParamStore::new(&Device::Cpu).builder(0);
        let bn = BatchNorm2d::new(&pb.pp("bn"), 5)?;
        let x = case([3, 5, 7, 4], 51, 2.0).x.as_tensor().clone();
        let (rm, rv) = (vecf(bn.running_mean.as_tensor()), vecf(bn.running_var.as_tensor()));
        bn.forward(&x, Mode::TrainFrozenStats)?;
        assert_eq!(
            (vecf(bn.running_mean.as_tensor()), vecf(bn.running_var.as_tensor())),
            (rm.clone(), rv.clone())
        );
        bn.forward(&x, Mode::Train)?;
        // The update the composed layer made: momentum 0.1, unbiased variance.
        let (_, m, v) = batch_norm_train_composed(&x, &bn.weight, &bn.bias, 1e-5)?;
        let n = (3 * 7 * 4) as f32;
        let want_m: Vec<f32> = rm.iter().zip(vecf(&m)).map(|(r, m)| 0.9 * r + 0.1 * m).collect();
        let want_v: Vec<f32> =
            rv.iter().zip(vecf(&v)).map(|(r, v)| 0.9 * r + 0.1 * v * n / (n - 1.0)).collect();
        assert!(rel_err(&vecf(bn.running_mean.as_tensor()), &want_m) < 1e-6);
        assert!(rel_err(&vecf(bn.running_var.as_tensor()), &want_v) < 1e-6);
        Ok(())
    }
}
