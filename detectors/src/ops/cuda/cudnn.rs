//! Dense and grouped 2-D convolutions through cuDNN (cudarc's safe API): forward, backward-data
//! and backward-filter, the group count passed to cuDNN (candle splits groups into separate
//! convolutions and never uses cuDNN in the backward).
//!
//! Per thread and device: one cuDNN handle on candle's stream, a plan per convolution shape
//! (descriptors and the heuristic's top algorithm for each of the three directions, picked once)
//! and one workspace that only grows. Math: TF32 tensor cores allowed
//! (`CUDNN_DEFAULT_MATH`) while [`crate::device::tf32_enabled`], else plain FMA
//! (`CUDNN_FMA_MATH`); the choice is part of the plan's key.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor, sys,
};
use cudarc::driver::CudaSlice;

use super::view;

/// Whether the cuDNN convolutions are on (`DFBENCH_CUDNN` is not `off`/`0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !super::env_off("DFBENCH_CUDNN"))
}

/// Hyper-parameters of one convolution (symmetric padding `[h, w]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Params {
    stride: usize,
    pad: [usize; 2],
    dilation: usize,
    groups: usize,
}

/// Convolution of `x` `[N, C, H, W]` with `w` `[O, C / groups, kH, kW]`, differentiable in both.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: [usize; 2], dilation: usize, groups: usize) -> Result<Tensor> {
    let p = Params { stride, pad, dilation, groups };
    out_dims(x.dims(), w.dims(), p)?;
    x.contiguous()?.apply_op2(&w.contiguous()?, ConvFwd { p })
}

/// The output shape, or an error naming what does not fit.
fn out_dims(xd: &[usize], wd: &[usize], p: Params) -> Result<[usize; 4]> {
    let (&[n, c, h, w], &[o, cg, kh, kw]) = (xd, wd) else {
        bail!("cudnn conv2d: expected input [N, C, H, W] and weight [O, C/groups, kH, kW], got {xd:?} and {wd:?}");
    };
    if p.groups == 0 || p.stride == 0 || p.dilation == 0 || cg * p.groups != c || o % p.groups != 0 {
        bail!("cudnn conv2d: input {xd:?} and weight {wd:?} do not fit {p:?}");
    }
    let (sh, sw) = (p.dilation * (kh.max(1) - 1) + 1, p.dilation * (kw.max(1) - 1) + 1);
    if n == 0 || kh == 0 || kw == 0 || h + 2 * p.pad[0] < sh || w + 2 * p.pad[1] < sw {
        bail!("cudnn conv2d: input {xd:?} (padding {:?}) smaller than the kernel {wd:?}", p.pad);
    }
    Ok([n, o, (h + 2 * p.pad[0] - sh) / p.stride + 1, (w + 2 * p.pad[1] - sw) / p.stride + 1])
}

fn no_cpu(name: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{name}: CUDA-only op called on CPU tensors (ops::conv2d routes CPU tensors to ops::conv)")
}

fn cerr(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cudnn conv2d: {what}: {e:?}"))
}

fn i32s(d: [usize; 4]) -> Result<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(d) {
        *o = i32::try_from(v).map_err(|_| cerr("dimension exceeds i32", d))?;
    }
    Ok(out)
}

/// Descriptors and algorithms of one convolution shape.
struct Plan {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    fwd: (sys::cudnnConvolutionFwdAlgo_t, usize),
    bwd_data: (sys::cudnnConvolutionBwdDataAlgo_t, usize),
    bwd_filter: (sys::cudnnConvolutionBwdFilterAlgo_t, usize),
}

type Key = (DeviceId, [usize; 4], [usize; 4], Params, bool);

thread_local! {
    /// Handles are never destroyed: a cuDNN handle's destructor synchronises the device, which
    /// may be gone when thread-locals are torn down at exit.
    static HANDLES: RefCell<HashMap<DeviceId, std::mem::ManuallyDrop<Arc<Cudnn>>>> = RefCell::new(HashMap::new());
    static PLANS: RefCell<HashMap<Key, Rc<Plan>>> = RefCell::new(HashMap::new());
    static WORKSPACE: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(c) = h.get(&dev.id()) {
            return Ok(Arc::clone(c));
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(|e| cerr("creating the handle", e))?;
        h.insert(dev.id(), std::mem::ManuallyDrop::new(Arc::clone(&c)));
        Ok(c)
    })
}

fn plan(dev: &CudaDevice, xd: [usize; 4], wd: [usize; 4], p: Params) -> Result<Rc<Plan>> {
    let tf32 = crate::device::tf32_enabled();
    let key = (dev.id(), xd, wd, p, tf32);
    if let Some(pl) = PLANS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(pl);
    }
    let yd = out_dims(&xd, &wd, p)?;
    let h = handle(dev)?;
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let i = |v: usize| i32::try_from(v).map_err(|_| cerr("parameter exceeds i32", v));
    let mut conv = h
        .create_conv2d::<f32>(
            [i(p.pad[0])?, i(p.pad[1])?],
            [i(p.stride)?, i(p.stride)?],
            [i(p.dilation)?, i(p.dilation)?],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(|e| cerr("conv descriptor", e))?;
    conv.set_group_count(i(p.groups)?).map_err(|e| cerr("group count", e))?;
    let math = if tf32 { sys::cudnnMathType_t::CUDNN_DEFAULT_MATH } else { sys::cudnnMathType_t::CUDNN_FMA_MATH };
    conv.set_math_type(math).map_err(|e| cerr("math type", e))?;
    let x = h.create_4d_tensor::<f32>(nchw, i32s(xd)?).map_err(|e| cerr("input descriptor", e))?;
    let w = h.create_4d_filter::<f32>(nchw, i32s(wd)?).map_err(|e| cerr("filter descriptor", e))?;
    let y = h.create_4d_tensor::<f32>(nchw, i32s(yd)?).map_err(|e| cerr("output descriptor", e))?;
    let fwd = {
        let op = ConvForward { conv: &conv, x: &x, w: &w, y: &y };
        let a = op.pick_algorithm().map_err(|e| cerr("forward algorithm", e))?;
        (a, op.get_workspace_size(a).map_err(|e| cerr("forward workspace", e))?)
    };
    let bwd_data = {
        let op = ConvBackwardData { conv: &conv, dx: &x, w: &w, dy: &y };
        let a = op.pick_algorithm().map_err(|e| cerr("backward-data algorithm", e))?;
        (a, op.get_workspace_size(a).map_err(|e| cerr("backward-data workspace", e))?)
    };
    let bwd_filter = {
        let op = ConvBackwardFilter { conv: &conv, x: &x, dw: &w, dy: &y };
        let a = op.pick_algorithm().map_err(|e| cerr("backward-filter algorithm", e))?;
        (a, op.get_workspace_size(a).map_err(|e| cerr("backward-filter workspace", e))?)
    };
    let pl = Rc::new(Plan { conv, x, w, y, fwd, bwd_data, bwd_filter });
    PLANS.with(|m| m.borrow_mut().insert(key, pl.clone()));
    Ok(pl)
}

/// Runs `f` with this thread's workspace for `dev`, grown to at least `bytes` (`None` for 0).
/// Reusing it across launches is safe: everything runs on candle's one stream, in order.
fn with_workspace<R>(dev: &CudaDevice, bytes: usize, f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        if ws.get(&dev.id()).is_none_or(|s| s.len() < bytes) {
            ws.remove(&dev.id());
            // SAFETY: a workspace is scratch memory, never read before cuDNN writes it.
            let s = unsafe { dev.alloc::<u8>(bytes)? };
            ws.insert(dev.id(), s);
        }
        f(ws.get_mut(&dev.id()))
    })
}

fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        d => bail!("cudnn conv2d: {what} must be rank 4, got {d:?}"),
    }
}

struct ConvFwd {
    p: Params,
}

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "dfbench-cudnn-conv2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (xd, wd) = (dims4(xl, "input")?, dims4(wl, "weight")?);
        let yd = out_dims(&xd, &wd, self.p)?;
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let pl = plan(&dev, xd, wd, self.p)?;
        let x = view(self.name(), xs, xl, "input")?;
        let w = view(self.name(), ws, wl, "weight")?;
        // SAFETY: beta = 0, so cuDNN writes every output without reading it.
        let mut y = unsafe { dev.alloc::<f32>(yd.iter().product())? };
        let op = ConvForward { conv: &pl.conv, x: &pl.x, w: &pl.w, y: &pl.y };
        with_workspace(&dev, pl.fwd.1, |wsp| {
            // SAFETY: descriptors were built from these operands' shapes (f32, NCHW, contiguous).
            unsafe { op.launch(pl.fwd.0, wsp, (1f32, 0f32), &x, &w, &mut y) }.map_err(|e| cerr("forward", e))
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from(yd.to_vec())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let xd = x.dims4()?;
        let wd = w.dims4()?;
        let (xd, wd) = ([xd.0, xd.1, xd.2, xd.3], [wd.0, wd.1, wd.2, wd.3]);
        // The input image needs no gradient: skipping it saves the first layer's largest pass.
        let dx = if x.track_op() { Some(w.apply_op2_no_bwd(&grad, &ConvBwdData { p: self.p, xd })?) } else { None };
        let dw = if w.track_op() { Some(x.apply_op2_no_bwd(&grad, &ConvBwdFilter { p: self.p, wd })?) } else { None };
        Ok((dx, dw))
    }
}

/// `dx` from `(w, dy)`.
struct ConvBwdData {
    p: Params,
    xd: [usize; 4],
}

impl CustomOp2 for ConvBwdData {
    fn name(&self) -> &'static str {
        "dfbench-cudnn-conv2d-bwd-data"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, ws: &CudaStorage, wl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let wd = dims4(wl, "weight")?;
        let yd = out_dims(&self.xd, &wd, self.p)?;
        if dl.dims() != yd {
            bail!("{}: output gradient {:?}, expected {yd:?}", self.name(), dl.dims());
        }
        let dev = ws.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let pl = plan(&dev, self.xd, wd, self.p)?;
        let w = view(self.name(), ws, wl, "weight")?;
        let dy = view(self.name(), ds, dl, "output gradient")?;
        // SAFETY: beta = 0: cuDNN writes every input-gradient value.
        let mut dx = unsafe { dev.alloc::<f32>(self.xd.iter().product())? };
        let op = ConvBackwardData { conv: &pl.conv, dx: &pl.x, w: &pl.w, dy: &pl.y };
        with_workspace(&dev, pl.bwd_data.1, |wsp| {
            // SAFETY: as in the forward.
            unsafe { op.launch(pl.bwd_data.0, wsp, (1f32, 0f32), &mut dx, &w, &dy) }.map_err(|e| cerr("backward data", e))
        })?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), Shape::from(self.xd.to_vec())))
    }
}

/// `dw` from `(x, dy)`.
struct ConvBwdFilter {
    p: Params,
    wd: [usize; 4],
}

impl CustomOp2 for ConvBwdFilter {
    fn name(&self) -> &'static str {
        "dfbench-cudnn-conv2d-bwd-filter"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let xd = dims4(xl, "input")?;
        let yd = out_dims(&xd, &self.wd, self.p)?;
        if dl.dims() != yd {
            bail!("{}: output gradient {:?}, expected {yd:?}", self.name(), dl.dims());
        }
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let pl = plan(&dev, xd, self.wd, self.p)?;
        let x = view(self.name(), xs, xl, "input")?;
        let dy = view(self.name(), ds, dl, "output gradient")?;
        // SAFETY: beta = 0: cuDNN writes every weight-gradient value.
        let mut dw = unsafe { dev.alloc::<f32>(self.wd.iter().product())? };
        let op = ConvBackwardFilter { conv: &pl.conv, x: &pl.x, dw: &pl.w, dy: &pl.y };
        with_workspace(&dev, pl.bwd_filter.1, |wsp| {
            // SAFETY: as in the forward.
            unsafe { op.launch(pl.bwd_filter.0, wsp, (1f32, 0f32), &x, &mut dw, &dy) }
                .map_err(|e| cerr("backward filter", e))
        })?;
        Ok((CudaStorage::wrap_cuda_slice(dw, dev), Shape::from(self.wd.to_vec())))
    }
}
