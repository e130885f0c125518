//! Tensor operations the backbones call. Layers go through these wrappers so that faster CPU
//! kernels (custom ops with their own backward) can replace candle's without touching models.
use candle_core::{CpuStorage, Layout, Result, Tensor, bail};

pub mod batchnorm;
pub mod conv;
pub mod pool;

/// 2-D convolution, NCHW input, `[C_out, C_in / groups, kH, kW]` weight, optional `[C_out]` bias.
///
/// f32 on the CPU runs [`conv::conv2d_cpu`] (own kernels and backward, no input gradient for an
/// input that needs none); other devices and dtypes run candle's `conv2d`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let y = if conv::is_supported(x, weight) {
        conv::conv2d_cpu(x, weight, conv::Conv2dParams { stride, padding, dilation, groups })?
    } else {
        x.conv2d(weight, padding, stride, dilation, groups)?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// The f32 values a custom op reads from a CPU operand: an error naming the op and the operand
/// (`what`) unless it is f32 and contiguous.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: {what} must be f32, got {:?}", candle_core::backend::BackendStorage::dtype(s));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: {what} must be contiguous (layout {l:?})"),
    }
}
