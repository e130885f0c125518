//! Fused 2-D BatchNorm on CUDA, the semantics of [`crate::ops::batchnorm`] (statistics over
//! values shifted by the channel's first value, f64 totals, an optional ReLU folded in before or
//! after, the backward as `k1 g + k2 (x - mean) + k3`), in four kernels per direction instead of
//! candle's ~12 forward and ~25 backward ops.
//!
//! Statistics travel as an f64 `[3, C]` tensor `(mean, biased var, 1 / sqrt(var + eps))` held by
//! the normalisation op for its backward.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor, bail};

use super::{Arg, int, launch, partials, view, view_f64, with_cuda};
use crate::ops::batchnorm::Relu;

fn relu_code(r: Relu) -> i32 {
    match r {
        Relu::None => 0,
        Relu::Input => 1,
        Relu::Output => 2,
    }
}

fn no_cpu<T>(name: &str) -> Result<T> {
    bail!("{name}: CUDA-only op called on CPU tensors (ops::batchnorm routes CPU tensors to its own op)")
}

fn nchw(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] if n * c * h * w > 0 => Ok((n, c, h * w)),
        d => bail!("{op}: expected a non-empty input [N, C, H, W], got {d:?}"),
    }
}

/// [`nchw`] of the input, with the output gradient `dl` checked to have the input's shape.
fn nchw_with_grad(xl: &Layout, dl: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    if dl.dims() != xl.dims() {
        bail!("{op}: output gradient {:?} for input {:?}", dl.dims(), xl.dims());
    }
    nchw(xl, op)
}

/// Training mode: `(y, batch mean [C], biased batch variance [C])`, the statistics f32 and
/// detached, as [`crate::ops::batchnorm::batch_norm_train_with`].
pub fn train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, relu: Relu) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&BnStats { eps, relu })?;
    let op = BnApply { stats: stats.clone(), relu, batch: true };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let mean = stats.narrow(0, 0, 1)?.squeeze(0)?.to_dtype(DType::F32)?;
    let var = stats.narrow(0, 1, 1)?.squeeze(0)?.to_dtype(DType::F32)?;
    Ok((y, mean, var))
}

/// Evaluation mode with fixed statistics `(mean, var)` `[C]`, as
/// [`crate::ops::batchnorm::batch_norm_eval_with`].
pub fn eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: Relu,
) -> Result<Tensor> {
    let m = mean.detach().flatten_all()?.to_dtype(DType::F32)?.contiguous()?;
    let v = var.detach().flatten_all()?.to_dtype(DType::F32)?.contiguous()?;
    let stats = m.apply_op2_no_bwd(&v, &BnFixedStats { eps })?;
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnApply { stats, relu, batch: false })
}

/// `running <- running * (1 - momentum) + (batch * factor) * momentum`, in place on the device
/// (`factor` = n / (n - 1) turns the biased batch variance into the unbiased one).
pub fn update_running(running: &Tensor, batch: &Tensor, momentum: f64, factor: f64) -> Result<()> {
    let batch = batch.to_dtype(DType::F32)?.contiguous()?;
    running.inplace_op2(&batch, &RunningUpdate { momentum, factor })
}

/// Per-channel statistics of `x` (training mode): f64 `[3, C]`.
struct BnStats {
    eps: f64,
    relu: Relu,
}

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm-stats"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, hw) = nchw(xl, self.name())?;
        if n * hw < 2 {
            bail!("batch norm in training mode needs more than one value per channel, got {:?}", xl.dims());
        }
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let p = partials(n * hw);
        // SAFETY: thread (c, p) writes part[2 (c P + p) ..+2]; the final kernel writes all 3C.
        let mut part = unsafe { dev.alloc::<f32>(2 * c * p)? };
        let dims = || -> Result<Vec<Arg<'static>>> {
            Ok(vec![int(n, "batch")?, int(c, "channels")?, int(hw, "plane")?, Arg::I(relu_code(self.relu)), int(p, "partials")?])
        };
        let mut args = vec![Arg::In(view(self.name(), xs, xl, "input")?), Arg::Out(&mut part)];
        args.extend(dims()?);
        launch(&dev, "dfb_bn_stats_partial", c * p, &mut args)?;
        drop(args);
        let mut stats = unsafe { dev.alloc::<f64>(3 * c)? };
        let mut args = vec![Arg::In(view(self.name(), xs, xl, "input")?), Arg::In(part.slice(..)), Arg::OutF64(&mut stats)];
        args.extend(dims()?);
        args.push(Arg::D(self.eps));
        launch(&dev, "dfb_bn_stats_final", c, &mut args)?;
        drop(args);
        Ok((CudaStorage::wrap_cuda_slice(stats, dev), Shape::from((3, c))))
    }
}

/// Fixed statistics `(mean, var)` in the same f64 `[3, C]` layout.
struct BnFixedStats {
    eps: f64,
}

impl CustomOp2 for BnFixedStats {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm-fixed-stats"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, ms: &CudaStorage, ml: &Layout, vs: &CudaStorage, vl: &Layout) -> Result<(CudaStorage, Shape)> {
        let c = ml.shape().elem_count();
        if vl.shape().elem_count() != c {
            bail!("{}: mean {:?} and variance {:?} differ in size", self.name(), ml.dims(), vl.dims());
        }
        let dev = ms.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        // SAFETY: the kernel writes all 3C values.
        let mut stats = unsafe { dev.alloc::<f64>(3 * c)? };
        let mut args = vec![
            Arg::In(view(self.name(), ms, ml, "running mean")?),
            Arg::In(view(self.name(), vs, vl, "running variance")?),
            Arg::OutF64(&mut stats),
            int(c, "channels")?,
            Arg::D(self.eps),
        ];
        launch(&dev, "dfb_bn_fixed_stats", c, &mut args)?;
        drop(args);
        Ok((CudaStorage::wrap_cuda_slice(stats, dev), Shape::from((3, c))))
    }
}

/// The normalisation `(x, gamma, beta) -> y` with the statistics it holds; its backward runs
/// [`BnBwdSums`] and [`BnBwdDx`].
struct BnApply {
    stats: Tensor,
    relu: Relu,
    /// Batch statistics (training mode): the input gradient includes their dependence on `x`.
    batch: bool,
}

/// Checks `gamma`/`beta` against `c` channels.
fn check_affine(op: &str, c: usize, gl: &Layout, bl: &Layout) -> Result<()> {
    if gl.shape().elem_count() != c || bl.shape().elem_count() != c {
        bail!("{op}: weight {:?} and bias {:?} must have {c} elements", gl.dims(), bl.dims());
    }
    Ok(())
}

impl CustomOp3 for BnApply {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let name = self.name();
        let (n, c, hw) = nchw(xl, name)?;
        check_affine(name, c, gl, bl)?;
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let len = n * c * hw;
        // SAFETY: one thread writes each output.
        let mut y = unsafe { dev.alloc::<f32>(len)? };
        with_cuda(&self.stats, name, |ss, sl| {
            let mut args = vec![
                Arg::In(view(name, xs, xl, "input")?),
                Arg::In(view(name, gs, gl, "weight")?),
                Arg::In(view(name, bs, bl, "bias")?),
                Arg::InF64(view_f64(name, ss, sl, "statistics")?),
                Arg::Out(&mut y),
                int(n, "batch")?,
                int(c, "channels")?,
                int(hw, "plane")?,
                Arg::I(relu_code(self.relu)),
            ];
            launch(&dev, "dfb_bn_apply", len, &mut args)
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
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
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        if grad.dims() != x.dims() {
            bail!("batch norm backward: output gradient {:?} for input {:?}", grad.dims(), x.dims());
        }
        let ctx = BnCtx { stats: self.stats.clone(), gamma: gamma.clone(), beta: beta.clone(), relu: self.relu };
        // The sums give the affine gradients, and with batch statistics dx needs them too.
        let sums = if need[1] || need[2] || (self.batch && need[0]) {
            Some(x.apply_op2_no_bwd(&grad, &BnBwdSums { ctx: ctx.clone() })?)
        } else {
            None
        };
        let dx = if need[0] {
            Some(x.apply_op2_no_bwd(&grad, &BnBwdDx { ctx, sums: sums.clone(), batch: self.batch })?)
        } else {
            None
        };
        let row = |i: usize| -> Result<Option<Tensor>> {
            match &sums {
                Some(s) => Ok(Some(s.narrow(0, i, 1)?.squeeze(0)?.to_dtype(DType::F32)?.reshape(gamma.shape())?)),
                None => Ok(None),
            }
        };
        let dgamma = if need[1] { row(2)? } else { None };
        let dbeta = if need[2] { row(3)? } else { None };
        Ok((dx, dgamma, dbeta))
    }
}

/// What the backward kernels read besides `(x, dy)`.
#[derive(Clone)]
struct BnCtx {
    stats: Tensor,
    gamma: Tensor,
    beta: Tensor,
    relu: Relu,
}

impl BnCtx {
    /// Runs `f` with device views of the statistics, gamma and beta.
    fn with<R>(
        &self,
        op: &str,
        f: impl FnOnce(CudaView<'_, f64>, Arg<'_>, Arg<'_>) -> Result<R>,
    ) -> Result<R> {
        with_cuda(&self.stats, op, |ss, sl| {
            with_cuda(&self.gamma, op, |gs, gl| {
                with_cuda(&self.beta, op, |bs, bl| {
                    f(
                        view_f64(op, ss, sl, "statistics")?,
                        Arg::In(view(op, gs, gl, "weight")?),
                        Arg::In(view(op, bs, bl, "bias")?),
                    )
                })
            })
        })
    }
}

/// `(x, dy) -> f64 [4, C]`: sum g, sum g (x - mean), dgamma, dbeta.
struct BnBwdSums {
    ctx: BnCtx,
}

impl CustomOp2 for BnBwdSums {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm-bwd-sums"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let name = self.name();
        let (n, c, hw) = nchw_with_grad(xl, dl, name)?;
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let p = partials(n * hw);
        // SAFETY: thread (c, p) writes its two partials; the final kernel writes all 4C sums.
        let mut part = unsafe { dev.alloc::<f32>(2 * c * p)? };
        let mut sums = unsafe { dev.alloc::<f64>(4 * c)? };
        self.ctx.with(name, |stats, g, b| {
            let mut args = vec![
                Arg::In(view(name, xs, xl, "input")?),
                Arg::In(view(name, ds, dl, "output gradient")?),
                g,
                b,
                Arg::InF64(stats.slice(..)),
                Arg::Out(&mut part),
                int(n, "batch")?,
                int(c, "channels")?,
                int(hw, "plane")?,
                Arg::I(relu_code(self.ctx.relu)),
                int(p, "partials")?,
            ];
            launch(&dev, "dfb_bn_bwd_partial", c * p, &mut args)?;
            drop(args);
            let mut args =
                vec![Arg::In(part.slice(..)), Arg::InF64(stats), Arg::OutF64(&mut sums), int(c, "channels")?, int(p, "partials")?];
            launch(&dev, "dfb_bn_bwd_final", c, &mut args)
        })?;
        Ok((CudaStorage::wrap_cuda_slice(sums, dev), Shape::from((4, c))))
    }
}

/// `(x, dy) -> dx`.
struct BnBwdDx {
    ctx: BnCtx,
    /// [`BnBwdSums`]' output; only read with batch statistics.
    sums: Option<Tensor>,
    batch: bool,
}

impl CustomOp2 for BnBwdDx {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm-bwd-dx"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let name = self.name();
        let (n, c, hw) = nchw_with_grad(xl, dl, name)?;
        let dev = xs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let len = n * c * hw;
        // SAFETY: one thread writes each input-gradient value.
        let mut dx = unsafe { dev.alloc::<f32>(len)? };
        let sums = match (&self.sums, self.batch) {
            (Some(s), true) => Some(s),
            (None, true) => bail!("{name}: batch statistics need the gradient sums"),
            _ => None,
        };
        self.ctx.with(name, |stats, g, b| {
            let run = |sums: CudaView<'_, f64>| {
                let mut args = vec![
                    Arg::In(view(name, xs, xl, "input")?),
                    Arg::In(view(name, ds, dl, "output gradient")?),
                    g,
                    b,
                    Arg::InF64(stats.slice(..)),
                    Arg::InF64(sums),
                    Arg::Out(&mut dx),
                    int(n, "batch")?,
                    int(c, "channels")?,
                    int(hw, "plane")?,
                    Arg::I(relu_code(self.ctx.relu)),
                    Arg::I(self.batch as i32),
                ];
                launch(&dev, "dfb_bn_bwd_dx", len, &mut args)
            };
            match sums {
                Some(s) => with_cuda(s, name, |us, ul| run(view_f64(name, us, ul, "gradient sums")?)),
                // Without batch statistics the kernel never reads the sums: the statistics stand
                // in (one lock per storage: no second read lock on the statistics).
                None => run(stats.slice(..)),
            }
        })?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()))
    }
}

/// In-place running-statistics update (see [`update_running`]).
struct RunningUpdate {
    momentum: f64,
    factor: f64,
}

impl InplaceOp2 for RunningUpdate {
    fn name(&self) -> &'static str {
        "dfbench-cuda-batch-norm-running-update"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, rs: &mut CudaStorage, rl: &Layout, ss: &CudaStorage, sl: &Layout) -> Result<()> {
        let name = self.name();
        let c = rl.shape().elem_count();
        if sl.shape().elem_count() != c {
            bail!("{name}: running statistic {:?} and batch statistic {:?} differ in size", rl.dims(), sl.dims());
        }
        let Some((a, b)) = rl.contiguous_offsets() else {
            bail!("{name}: running statistic must be contiguous (layout {rl:?})");
        };
        let dev = rs.device().clone();
        let _prof = super::profile::scope(self.name(), &dev);
        let s = view(name, ss, sl, "batch statistic")?;
        let r = rs.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        // The f32 factors candle's `affine` would use for `r * (1 - m)` and `(s * f) * m`.
        let mut args = vec![
            Arg::InOut(r),
            Arg::In(s),
            int(c, "channels")?,
            Arg::F((1.0 - self.momentum) as f32),
            Arg::F(self.factor as f32),
            Arg::F(self.momentum as f32),
        ];
        launch(&dev, "dfb_bn_running_update", c, &mut args)
    }
}
