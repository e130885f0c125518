//! CUDA custom ops (only with the `cuda` feature): what candle 0.11 lacks for convnet training on
//! a GPU (docs/cuda.md, "What runs where").
//!
//! - [`depthwise`]: depthwise convolution with its own forward, input-gradient and
//!   weight-gradient kernels (candle runs a depthwise convolution as one convolution per channel
//!   plus a concatenation: ~28,000 nodes per EfficientNet-B4 forward);
//! - [`batchnorm`]: fused training/evaluation BatchNorm (statistics, normalisation and backward
//!   in four kernels instead of ~35 candle ops), running statistics updated in place;
//! - [`cudnn`]: dense and grouped convolutions through cuDNN, forward and both gradients
//!   (candle's own backward runs a naive transposed-convolution kernel);
//! - 1x1 stride-1 convolutions become batched cuBLAS matmuls ([`conv2d`]).
//!
//! The kernels (`kernels.cu`) are compiled with NVRTC at first use for the device's compute
//! capability, cached for the process, and loaded into candle's device as one module. They avoid
//! shared memory, barriers and atomics so that the same source also compiles and runs on the host
//! (`tests/cuda_kernels_host.rs` checks it against the CPU ops without a GPU).
//!
//! Setting `DFBENCH_CUDA_OPS=off` routes everything back through candle's own CUDA ops, and
//! `DFBENCH_CUDNN=off` only the cuDNN convolutions (for measuring and for ruling an op out).
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Storage, Tensor, bail};

pub mod batchnorm;
pub mod cudnn;
pub mod depthwise;

/// The CUDA C source of every kernel.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// Module name under which candle's device caches the compiled kernels.
const MODULE: &str = "dfbench_kernels";

/// Threads per block of every launch (one thread per output value).
const BLOCK: u32 = 256;

/// Compiles [`KERNELS_CU`] to PTX with NVRTC for `compute_<cc>` (e.g. `"90"`); needs only
/// `libnvrtc`, no GPU, so it also serves the compile check of `tests/cuda_ops.rs`.
pub fn compile_ptx(cc: &str) -> std::result::Result<String, String> {
    use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
    let opts = CompileOptions {
        // IEEE division and square root, no flush-to-zero: the CPU ops' arithmetic.
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec![format!("--gpu-architecture=compute_{cc}"), "--std=c++14".to_string()],
        name: Some("dfbench_kernels.cu".to_string()),
        ..Default::default()
    };
    compile_ptx_with_opts(KERNELS_CU, opts).map(|p| p.to_src()).map_err(|e| format!("{e:?}"))
}

static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// The kernels' PTX, compiled once per process for the first device that asks (a process with
/// GPUs of different compute capabilities gets the first one's; PTX runs on later ones too).
fn ptx(dev: &CudaDevice) -> Result<&'static str> {
    let res = PTX.get_or_init(|| {
        let (major, minor) = dev.cuda_stream().context().compute_capability().map_err(|e| format!("{e:?}"))?;
        compile_ptx(&format!("{major}{minor}"))
    });
    match res {
        Ok(p) => Ok(p.as_str()),
        Err(e) => bail!("dfbench CUDA kernels: NVRTC compilation failed: {e}"),
    }
}

/// Whether the custom ops are on (`DFBENCH_CUDA_OPS` is not `off`/`0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !env_off("DFBENCH_CUDA_OPS"))
}

fn env_off(key: &str) -> bool {
    std::env::var(key).map(|v| matches!(v.trim(), "off" | "0" | "false")).unwrap_or(false)
}

/// Whether `t` is an f32 tensor on a CUDA device, i.e. one the custom ops take.
pub fn is_cuda_f32(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32
}

/// A kernel argument: a device buffer or an integer / float scalar, kept alive for the launch.
pub(crate) enum Arg<'a> {
    In(CudaView<'a, f32>),
    InF64(CudaView<'a, f64>),
    Out(&'a mut CudaSlice<f32>),
    OutF64(&'a mut CudaSlice<f64>),
    InOut(CudaViewMut<'a, f32>),
    I(i32),
    F(f32),
    D(f64),
}

/// Launches kernel `name` with one thread per item of `items` (1-D grid of [`BLOCK`] threads).
pub(crate) fn launch(dev: &CudaDevice, name: &str, items: usize, args: &mut [Arg<'_>]) -> Result<()> {
    if items == 0 {
        return Ok(());
    }
    let blocks = items.div_ceil(BLOCK as usize);
    if blocks > i32::MAX as usize {
        bail!("{name}: {items} threads exceed one grid");
    }
    let func = dev.get_or_load_custom_func(name, MODULE, ptx(dev)?)?;
    let mut b = func.builder();
    for a in args.iter_mut() {
        match a {
            Arg::In(v) => b.arg(&*v),
            Arg::InF64(v) => b.arg(&*v),
            Arg::Out(s) => b.arg(&mut **s),
            Arg::OutF64(s) => b.arg(&mut **s),
            Arg::InOut(v) => b.arg(v),
            Arg::I(v) => b.arg(&*v),
            Arg::F(v) => b.arg(&*v),
            Arg::D(v) => b.arg(&*v),
        };
    }
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: every kernel of kernels.cu takes exactly the arguments its wrapper passes (the
    // wrappers in this module's submodules mirror the C signatures) and guards `idx < total`.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// An i32 kernel argument, or an error naming what overflowed.
pub(crate) fn int(v: usize, what: &str) -> Result<Arg<'static>> {
    match i32::try_from(v) {
        Ok(i) => Ok(Arg::I(i)),
        Err(_) => bail!("CUDA op: {what} = {v} exceeds the kernels' 32-bit index range"),
    }
}

/// The f32 device values of a contiguous operand, from its start offset.
pub(crate) fn view<'a>(op: &str, s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous (layout {l:?})");
    };
    if s.dtype() != DType::F32 {
        bail!("{op}: {what} must be f32, got {:?}", s.dtype());
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// The f64 device values of a contiguous operand.
pub(crate) fn view_f64<'a>(op: &str, s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f64>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous (layout {l:?})");
    };
    Ok(s.as_cuda_slice::<f64>()?.slice(a..b))
}

/// Runs `f` on the CUDA storage of `t` (which the caller keeps alive and unchanged).
pub(crate) fn with_cuda<R>(t: &Tensor, op: &str, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else {
        bail!("{op}: tensor of shape {:?} is not on a CUDA device", t.dims());
    };
    f(s, l)
}

/// Reduction split: `P` partial sums per row for `per_row` elements, each thread summing about
/// 256 of them in f32 (then the P partials are added in f64), P a power of two up to 1024.
pub(crate) fn partials(per_row: usize) -> usize {
    per_row.div_ceil(256).next_power_of_two().clamp(1, 1024)
}

/// 2-D convolution on a CUDA device with per-side padding `[top, bottom, left, right]`, or
/// `None` when no custom op applies (not f32 on CUDA, ops switched off): depthwise through
/// [`depthwise`], 1x1 stride-1 unpadded through batched matmuls, the rest through [`cudnn`].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> Result<Option<Tensor>> {
    if !enabled() || !is_cuda_f32(x) || !is_cuda_f32(w) || x.rank() != 4 || w.rank() != 4 {
        return Ok(None);
    }
    let (_, c_in, _, _) = x.dims4()?;
    let (c_out, cg, kh, kw) = w.dims4()?;
    if groups > 1 && groups == c_in && cg == 1 {
        return depthwise::conv2d(x, w, stride, pads, dilation).map(Some);
    }
    if groups == 1 && kh == 1 && kw == 1 && stride == 1 && pads == [0; 4] {
        return pointwise(x, w, c_out).map(Some);
    }
    if !cudnn::enabled() {
        return Ok(None);
    }
    let [pt, pb, pl, pr] = pads;
    if pt == pb && pl == pr {
        return cudnn::conv2d(x, w, stride, [pt, pl], dilation, groups).map(Some);
    }
    // cuDNN pads symmetrically: add the extra bottom/right rows explicitly.
    if pb >= pt && pr >= pl {
        let xp = x.pad_with_zeros(2, 0, pb - pt)?.pad_with_zeros(3, 0, pr - pl)?;
        return cudnn::conv2d(&xp, w, stride, [pt, pl], dilation, groups).map(Some);
    }
    let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
    cudnn::conv2d(&xp, w, stride, [0, 0], dilation, groups).map(Some)
}

/// 1x1 stride-1 convolution as `W [O, C] x X_n [C, HW]` for every sample: one strided-batched
/// cuBLAS GEMM with the weight broadcast (batch stride 0); candle's matmul gives both gradients.
fn pointwise(x: &Tensor, w: &Tensor, c_out: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let _prof = profile::scope("dfbench-matmul-1x1-conv-fwd", x.device().as_cuda_device()?);
    let x3 = x.contiguous()?.reshape((n, c, h * wd))?;
    let w2 = w.contiguous()?.reshape((c_out, c))?;
    w2.broadcast_left(n)?.matmul(&x3)?.reshape((n, c_out, h, wd))
}

/// Per-op wall time of the custom CUDA ops, for finding the op that holds a step back (off by
/// default: when on, every op synchronises the stream before and after itself, which slows the
/// whole step; compare the totals with the step time of an unprofiled run).
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use candle_core::cuda_backend::CudaDevice;

    static ON: AtomicBool = AtomicBool::new(false);
    static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

    /// Turns profiling on or off (process-wide).
    pub fn set_enabled(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// `(op name, calls, seconds)` accumulated since the last [`take`], and resets them.
    pub fn take() -> Vec<(&'static str, u64, f64)> {
        let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let out = t.iter().map(|(k, (n, s))| (*k, *n, *s)).collect();
        t.clear();
        out
    }

    /// Times the rest of the enclosing scope as op `name` (a no-op unless profiling is on).
    pub(crate) struct Scope {
        name: &'static str,
        dev: Option<CudaDevice>,
        start: Instant,
    }

    pub(crate) fn scope(name: &'static str, dev: &CudaDevice) -> Scope {
        let dev = ON.load(Ordering::Relaxed).then(|| dev.clone());
        if let Some(d) = &dev {
            let _ = d.cuda_stream().synchronize();
        }
        Scope { name, dev, start: Instant::now() }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            if let Some(d) = &self.dev {
                let _ = d.cuda_stream().synchronize();
                let dt = self.start.elapsed().as_secs_f64();
                let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
                let e = t.entry(self.name).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += dt;
            }
        }
    }
}
