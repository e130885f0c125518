//! Tensor operations the backbones call. Layers go through these wrappers so that faster CPU
//! kernels (custom ops with their own backward) can replace candle's without touching models.
use candle_core::{CpuStorage, Layout, Result, Tensor, bail};

pub mod batchnorm;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod pool;
pub mod profile;
pub mod relu;
pub mod se;
pub mod vmath;

/// 2-D convolution, NCHW input, `[C_out, C_in / groups, kH, kW]` weight, optional `[C_out]` bias.
///
/// f32 on the CPU runs [`conv::conv2d_cpu`] (own kernels and backward, no input gradient for an
/// input that needs none); f32 on CUDA (with the `cuda` feature) runs [`cuda::conv2d`]
/// (depthwise kernels, 1x1 as matmul, cuDNN); other devices and dtypes run candle's `conv2d`.
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
    } else if let Some(y) = cuda_conv2d(x, weight, stride, [padding; 4], dilation, groups)? {
        y
    } else {
        x.conv2d(weight, padding, stride, dilation, groups)?
    };
    add_bias(y, bias)
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// [`conv2d`] with per-side padding `[top, bottom, left, right]` (TF "SAME" pads the bottom and
/// right more). The CUDA depthwise kernel pads in place; elsewhere the input is padded explicitly
/// where the sides differ (on the CPU: the extra bottom/right rows when top equals left, else
/// every side) and convolved with symmetric padding.
pub fn conv2d_padded(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let [pt, pb, pl, pr] = pads;
    if pt == pb && pt == pl && pt == pr {
        return conv2d(x, weight, bias, stride, pt, dilation, groups);
    }
    if !conv::is_supported(x, weight)
        && let Some(y) = cuda_conv2d(x, weight, stride, pads, dilation, groups)?
    {
        return add_bias(y, bias);
    }
    if pt != pl || pb < pt || pr < pl {
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        return conv2d(&x, weight, bias, stride, 0, dilation, groups);
    }
    let mut x = x.clone();
    if pb > pt {
        x = x.pad_with_zeros(2, 0, pb - pt)?;
    }
    if pr > pl {
        x = x.pad_with_zeros(3, 0, pr - pl)?;
    }
    conv2d(&x, weight, bias, stride, pt, dilation, groups)
}

#[cfg(feature = "cuda")]
fn cuda_conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> Result<Option<Tensor>> {
    cuda::conv2d(x, w, stride, pads, dilation, groups)
}

/// Without the `cuda` feature no custom CUDA op exists.
#[cfg(not(feature = "cuda"))]
fn cuda_conv2d(
    _x: &Tensor,
    _w: &Tensor,
    _stride: usize,
    _pads: [usize; 4],
    _dilation: usize,
    _groups: usize,
) -> Result<Option<Tensor>> {
    Ok(None)
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
