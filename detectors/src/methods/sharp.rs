//! Single-objective methods: ERM, SAM, ASAM, SAGM and CVaR+AUC (optionally with SAM), and the
//! multi-domain RoGA reconstruction. The perturbation logic is written against a `ParamSet` and a
//! loss closure, so the same code runs on a detector and on the reference quadratic of the tests.
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

use super::{LossKind, Losses, StepCtx, StreamNeeds, Streams, TrainingMethod};
use crate::batch::StepInput;
use crate::config::OptimizerConfig;
use crate::gradvec::device::{self as devflat, GradPath};
use crate::gradvec::{FlatGrad, ParamSet, Snapshot, tensors_norm};
use crate::model::{Detector, Mode};
use crate::optim::Optimizer;
use crate::trace::{DomainTrace, StepTrace};

/// Guard added to gradient norms before dividing (the SAM/SAGM reference code's 1e-12).
pub const NORM_EPS: f64 = 1e-12;

/// How the parameters are perturbed before the second gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Perturbation {
    /// Plain base-optimizer step on the first gradient.
    None,
    /// SAM: `e = rho g / (||g|| + 1e-12)`, step with `grad L(w + e)`.
    Sam { rho: f64 },
    /// ASAM: `e = rho T^2 g / ||T g||`, `T = |w| + eta` on parameters named `*weight*`, 1 elsewhere.
    Asam { rho: f64, eta: f64 },
    /// SAGM: `e = (rho / (||g|| + 1e-12) - alpha) g`, step with `(g + grad L(w + e)) / 2`.
    Sagm { rho: f64, alpha: f64 },
}

/// What one sharpness-aware step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SharpReport {
    pub loss: f64,
    pub l1: Option<f64>,
    pub l2: Option<f64>,
    /// `||g||` of the first pass.
    pub norm_g: f64,
    pub norm_update: f64,
    /// `(cos(g1, g2), |g1|, |g2|)` when [`SharpCore::probe_conflict`] asked for them.
    pub conflict: Option<(f64, f64, f64)>,
}

/// A base optimizer wrapped by one perturbation rule, with buffers reused across steps.
pub struct SharpCore {
    pub pert: Perturbation,
    pub opt: Optimizer,
    g: FlatGrad,
    gp: FlatGrad,
    e: FlatGrad,
    w: FlatGrad,
    saved: Snapshot,
    dir: Vec<Tensor>,
    /// Set before a step: also measure the per-stream gradients of an O+S objective (no
    /// perturbation only). Off by default.
    pub probe_conflict: bool,
    p1: FlatGrad,
    p2: FlatGrad,
    /// `None`: the host path on the CPU, device tensor ops elsewhere (`GradPath::for_device`).
    pub path: Option<GradPath>,
}

impl SharpCore {
    pub fn new(pert: Perturbation, optimizer: &OptimizerConfig) -> Self {
        Self {
            pert,
            opt: Optimizer::new(optimizer),
            g: FlatGrad::default(),
            gp: FlatGrad::default(),
            e: FlatGrad::default(),
            w: FlatGrad::default(),
            saved: Snapshot::default(),
            dir: Vec::new(),
            probe_conflict: false,
            p1: FlatGrad::default(),
            p2: FlatGrad::default(),
            path: None,
        }
    }

    /// One step: `loss_fn(Mode::Train)` at the current parameters, then (for a perturbation)
    /// `loss_fn(Mode::TrainFrozenStats)` at the perturbed ones, so BatchNorm running statistics
    /// move once per step. The parameters are restored from a stored copy before the base step.
    pub fn step(
        &mut self,
        set: &ParamSet,
        lr: f64,
        loss_fn: &mut dyn FnMut(Mode) -> Result<Losses>,
    ) -> Result<SharpReport> {
        if self.path.unwrap_or_else(|| GradPath::for_device(set.device())) == GradPath::Tensor {
            return self.step_tensor(set, lr, loss_fn);
        }
        let first = loss_fn(Mode::Train)?;
        let (loss, l1, l2) = first.values()?;
        let grads = first.total.backward()?;
        if let Perturbation::None = self.pert {
            // Before the update: the graph's saved weights are the optimizer's in-place buffers.
            let conflict = match (&first.l1, &first.l2) {
                (Some(a), Some(b)) if self.probe_conflict => Some(self.measure_conflict(set, a, b)?),
                _ => None,
            };
            set.grads_as_tensors(&grads, &mut self.dir)?;
            let n = tensors_norm(&self.dir)?;
            self.opt.step(set, &self.dir, lr)?;
            return Ok(SharpReport { loss, l1, l2, norm_g: n, norm_update: n, conflict });
        }
        self.g.fill_from(set, &grads)?;
        drop(grads);
        let norm_g = self.g.norm();
        self.e.resize(self.g.len());
        set.snapshot(&mut self.saved)?;
        match self.pert {
            Perturbation::None => unreachable!(),
            Perturbation::Sam { rho } => {
                self.e.copy_from(&self.g);
                self.e.scale(rho / (norm_g + NORM_EPS));
            }
            Perturbation::Sagm { rho, alpha } => {
                self.e.copy_from(&self.g);
                self.e.scale(rho / (norm_g + NORM_EPS) - alpha);
            }
            Perturbation::Asam { rho, eta } => {
                // The snapshot already holds the values on the CPU; elsewhere copy them out.
                let w = match self.saved.flat() {
                    Some(w) => w,
                    None => {
                        set.values(&mut self.w)?;
                        &self.w
                    }
                };
                // T g and its norm first, then e = rho T^2 g / ||T g||.
                let mut tg_sq = 0f64;
                for i in 0..set.len() {
                    let weighted = set.names()[i].contains("weight");
                    for j in set.range(i) {
                        let t = if weighted { w.data[j].abs() as f64 + eta } else { 1.0 };
                        let tg = t * self.g.data[j] as f64;
                        tg_sq += tg * tg;
                        self.e.data[j] = (t * tg) as f32;
                    }
                }
                self.e.scale(rho / (tg_sq.sqrt() + NORM_EPS));
            }
        }
        set.set_shifted(&self.saved, &self.e)?;
        let grads2 = perturbed_backward(set, &self.saved, loss_fn(Mode::TrainFrozenStats))?;
        let norm_update = match self.pert {
            Perturbation::Sagm { .. } => {
                self.gp.fill_from(set, &grads2)?;
                drop(grads2);
                self.gp.axpy(1.0, &self.g);
                self.gp.scale(0.5);
                set.restore(&self.saved)?;
                self.opt.step_flat(set, &self.gp.data, lr)?;
                self.gp.norm()
            }
            _ => {
                set.grads_as_tensors(&grads2, &mut self.dir)?;
                drop(grads2);
                set.restore(&self.saved)?;
                self.opt.step(set, &self.dir, lr)?;
                tensors_norm(&self.dir)?
            }
        };
        Ok(SharpReport { loss, l1, l2, norm_g, norm_update, conflict: None })
    }

    /// [`SharpCore::step`] with the flat vectors as device tensors (`gradvec::device`): the
    /// gradient, the perturbation and SAGM's averaged direction never leave the device; the
    /// parameters are stored as device copies and restored from them bit for bit.
    fn step_tensor(
        &mut self,
        set: &ParamSet,
        lr: f64,
        loss_fn: &mut dyn FnMut(Mode) -> Result<Losses>,
    ) -> Result<SharpReport> {
        let first = loss_fn(Mode::Train)?;
        let (loss, l1, l2) = first.values()?;
        let grads = first.total.backward()?;
        if let Perturbation::None = self.pert {
            let conflict = match (&first.l1, &first.l2) {
                (Some(a), Some(b)) if self.probe_conflict => Some(conflict_on_device(set, a, b)?),
                _ => None,
            };
            set.grads_as_tensors(&grads, &mut self.dir)?;
            let n = devflat::tensors_norm(&self.dir)?;
            self.opt.step(set, &self.dir, lr)?;
            return Ok(SharpReport { loss, l1, l2, norm_g: n, norm_update: n, conflict });
        }
        let g = devflat::gather(set, &grads)?;
        drop(grads);
        let norm_g = devflat::sums(&[g.sqr()?])?[0].sqrt();
        set.snapshot_tensors(&mut self.saved)?;
        let e = match self.pert {
            Perturbation::None => unreachable!(),
            Perturbation::Sam { rho } => g.affine(rho / (norm_g + NORM_EPS), 0.0)?,
            Perturbation::Sagm { rho, alpha } => g.affine(rho / (norm_g + NORM_EPS) - alpha, 0.0)?,
            Perturbation::Asam { rho, eta } => {
                // T = |w| + eta on parameters named `*weight*`, 1 elsewhere; e = rho T^2 g / ||T g||.
                let parts = set
                    .vars()
                    .iter()
                    .zip(set.names())
                    .map(|(v, name)| {
                        if name.contains("weight") {
                            v.as_tensor().detach().flatten_all()?.to_dtype(candle_core::DType::F64)?.abs()?.affine(1.0, eta)
                        } else {
                            Tensor::ones(v.elem_count(), candle_core::DType::F64, set.device())
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                let t = Tensor::cat(&parts, 0)?;
                let tg = t.mul(&g)?;
                let tg_sq = devflat::sums(&[tg.sqr()?])?[0];
                t.mul(&tg)?.affine(rho / (tg_sq.sqrt() + NORM_EPS), 0.0)?
            }
        };
        set.set_shifted_tensor(&self.saved, &e)?;
        let grads2 = perturbed_backward(set, &self.saved, loss_fn(Mode::TrainFrozenStats))?;
        let norm_update = match self.pert {
            Perturbation::Sagm { .. } => {
                let dir = devflat::gather(set, &grads2)?.add(&g)?.affine(0.5, 0.0)?;
                drop(grads2);
                set.restore(&self.saved)?;
                self.opt.step(set, &devflat::split(set, &dir)?, lr)?;
                devflat::norm_sq_f32(&dir)?.sqrt()
            }
            _ => {
                set.grads_as_tensors(&grads2, &mut self.dir)?;
                drop(grads2);
                set.restore(&self.saved)?;
                self.opt.step(set, &self.dir, lr)?;
                devflat::tensors_norm(&self.dir)?
            }
        };
        Ok(SharpReport { loss, l1, l2, norm_g, norm_update, conflict: None })
    }

    /// `(cos(g1, g2), |g1|, |g2|)` of two stream losses of the step's graph, from one extra
    /// backward pass each (as two-stream methods take them; norms guarded at 1e-12 as there).
    /// Backward passes only read the graph, so the step's own gradient keeps its bits.
    fn measure_conflict(&mut self, set: &ParamSet, l1: &Tensor, l2: &Tensor) -> Result<(f64, f64, f64)> {
        let (r1, r2) = super::conflict::backward_pair(l1, l2, l1.device().is_cpu())?;
        self.p1.fill_from(set, &r1)?;
        self.p2.fill_from(set, &r2)?;
        let (n1, n2) = (self.p1.norm(), self.p2.norm());
        Ok((self.p1.dot(&self.p2) / (n1.max(1e-12) * n2.max(1e-12)), n1, n2))
    }
}

/// [`SharpCore`]'s conflict probe on the device: one transfer of three sums.
/// The backward pass at the perturbed weights; on failure the weights are restored first, so an
/// error never leaves the model perturbed.
fn perturbed_backward(set: &ParamSet, saved: &Snapshot, losses: Result<Losses>) -> Result<GradStore> {
    match losses.and_then(|l| l.total.backward()) {
        Ok(g) => Ok(g),
        Err(err) => {
            set.restore(saved)?;
            Err(err)
        }
    }
}

fn conflict_on_device(set: &ParamSet, l1: &Tensor, l2: &Tensor) -> Result<(f64, f64, f64)> {
    let (r1, r2) = super::conflict::backward_pair(l1, l2, l1.device().is_cpu())?;
    let (p1, p2) = (devflat::gather(set, &r1)?, devflat::gather(set, &r2)?);
    let s = devflat::sums(&[p1.sqr()?, p1.mul(&p2)?, p2.sqr()?])?;
    let (n1, n2) = (s[0].sqrt(), s[2].sqrt());
    Ok((s[1] / (n1.max(1e-12) * n2.max(1e-12)), n1, n2))
}

/// ERM, SAM, ASAM, SAGM or CVaR+AUC on one choice of streams.
pub struct SingleObjective {
    kind: &'static str,
    streams: Streams,
    loss: LossKind,
    core: SharpCore,
    /// Trace cos(g1, g2), |g1|, |g2| every this many steps (0: never); O+S without perturbation.
    conflict_every: usize,
}

impl SingleObjective {
    pub fn new(
        kind: &'static str,
        streams: Streams,
        loss: LossKind,
        pert: Perturbation,
        opt: &OptimizerConfig,
    ) -> Self {
        Self { kind, streams, loss, core: SharpCore::new(pert, opt), conflict_every: 0 }
    }

    /// ERM O+S's conflict diagnostics every `k` steps (steps 0, k, 2k, ...; 0: off).
    pub fn with_conflict_every(mut self, k: usize) -> Self {
        self.conflict_every = k;
        self
    }
}

impl TrainingMethod for SingleObjective {
    fn kind(&self) -> &str {
        self.kind
    }
    fn needs(&self) -> StreamNeeds {
        self.streams.needs()
    }
    fn set_grad_path(&mut self, path: GradPath) {
        self.core.path = Some(path);
    }
    fn step(&mut self, det: &Detector, input: &StepInput, step: usize, lr: f64) -> Result<StepTrace> {
        let t0 = Instant::now();
        let ctx = StepCtx { kind: self.kind, det, input };
        let (streams, loss) = (self.streams, self.loss);
        self.core.probe_conflict = self.conflict_every > 0 && step.is_multiple_of(self.conflict_every);
        let rep = self.core.step(det.params(), lr, &mut |mode| ctx.objective(streams, loss, mode))?;
        Ok(StepTrace {
            step,
            l1: rep.l1,
            l2: rep.l2,
            loss: rep.loss,
            cos_g1_g2: rep.conflict.map(|c| c.0),
            norm_g1: rep.conflict.map(|c| c.1),
            norm_g2: rep.conflict.map(|c| c.2),
            norm_update: Some(rep.norm_update),
            lr,
            wall_s: t0.elapsed().as_secs_f64(),
            ..Default::default()
        })
    }
}

/// RoGA as reconstructed in methods.md section 5 (per-domain SAGM-style perturbations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RogaParams {
    pub rho: f64,
    pub alpha: f64,
    /// direction = weight * g + (1 - weight) * mean_d gt_d (0.5 in the reconstruction).
    pub weight: f64,
}

/// What one RoGA step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RogaReport {
    pub losses: Vec<f64>,
    pub grad_norms: Vec<f64>,
    pub norm_update: f64,
}

pub struct RogaCore {
    pub params: RogaParams,
    pub opt: Optimizer,
    gd: Vec<FlatGrad>,
    gbar: FlatGrad,
    acc: FlatGrad,
    e: FlatGrad,
    saved: Snapshot,
    /// `None`: the host path on the CPU, device tensor ops elsewhere (`GradPath::for_device`).
    pub path: Option<GradPath>,
}

impl RogaCore {
    pub fn new(params: RogaParams, optimizer: &OptimizerConfig) -> Self {
        Self {
            params,
            opt: Optimizer::new(optimizer),
            gd: Vec::new(),
            gbar: FlatGrad::default(),
            acc: FlatGrad::default(),
            e: FlatGrad::default(),
            saved: Snapshot::default(),
            path: None,
        }
    }

    /// One step over `k` domains; `loss_fn(d, mode)` is domain `d`'s loss. The clean passes run
    /// in `Mode::Train` (one BatchNorm update per domain batch, as separate forwards would in
    /// PyTorch), the perturbed ones in `Mode::TrainFrozenStats`.
    pub fn step(
        &mut self,
        set: &ParamSet,
        lr: f64,
        k: usize,
        loss_fn: &mut dyn FnMut(usize, Mode) -> Result<Tensor>,
    ) -> Result<RogaReport> {
        if k == 0 {
            candle_core::bail!("RoGA needs at least one domain batch");
        }
        if self.path.unwrap_or_else(|| GradPath::for_device(set.device())) == GradPath::Tensor {
            return self.step_tensor(set, lr, k, loss_fn);
        }
        let RogaParams { rho, alpha, weight } = self.params;
        self.gd.resize_with(k, FlatGrad::default);
        let mut losses = Vec::with_capacity(k);
        let mut grad_norms = Vec::with_capacity(k);
        for d in 0..k {
            let l = loss_fn(d, Mode::Train)?;
            losses.push(l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?);
            let grads = l.backward()?;
            self.gd[d].fill_from(set, &grads)?;
            grad_norms.push(self.gd[d].norm());
        }
        self.gbar.resize(set.total());
        self.gbar.fill(0.0);
        for d in 0..k {
            self.gbar.axpy(1.0 / k as f64, &self.gd[d]);
        }
        self.acc.resize(set.total());
        self.acc.fill(0.0);
        self.e.resize(set.total());
        set.snapshot(&mut self.saved)?;
        for d in 0..k {
            self.e.set_lin2(rho / (grad_norms[d] + NORM_EPS), &self.gd[d], -alpha, &self.gbar);
            let res = set.set_shifted(&self.saved, &self.e).and_then(|_| loss_fn(d, Mode::TrainFrozenStats));
            let grads = match res.and_then(|l| l.backward()) {
                Ok(g) => g,
                Err(err) => {
                    set.restore(&self.saved)?;
                    return Err(err);
                }
            };
            // Reuse e as the receiving buffer: the perturbation is no longer needed.
            self.e.fill_from(set, &grads)?;
            self.acc.axpy(1.0 / k as f64, &self.e);
        }
        set.restore(&self.saved)?;
        self.acc.scale(1.0 - weight);
        self.acc.axpy(weight, &self.gbar);
        self.opt.step_flat(set, &self.acc.data, lr)?;
        let norm_update = self.acc.norm();
        Ok(RogaReport { losses, grad_norms, norm_update })
    }

    /// [`RogaCore::step`] with the per-domain gradients, their mean, the perturbations and the
    /// accumulated direction as device tensors (`gradvec::device`); the norms of all domain
    /// gradients cross to the host in one transfer.
    fn step_tensor(
        &mut self,
        set: &ParamSet,
        lr: f64,
        k: usize,
        loss_fn: &mut dyn FnMut(usize, Mode) -> Result<Tensor>,
    ) -> Result<RogaReport> {
        let RogaParams { rho, alpha, weight } = self.params;
        let mut losses = Vec::with_capacity(k);
        let mut gd = Vec::with_capacity(k);
        for d in 0..k {
            let l = loss_fn(d, Mode::Train)?;
            losses.push(l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?);
            gd.push(devflat::gather(set, &l.backward()?)?);
        }
        let grad_norms: Vec<f64> = devflat::sums(&gd.iter().map(|g| g.sqr()).collect::<Result<Vec<_>>>()?)?
            .into_iter()
            .map(f64::sqrt)
            .collect();
        let mut gbar = gd[0].affine(1.0 / k as f64, 0.0)?;
        for g in &gd[1..] {
            gbar = gbar.add(&g.affine(1.0 / k as f64, 0.0)?)?;
        }
        set.snapshot_tensors(&mut self.saved)?;
        let mut acc: Option<Tensor> = None;
        for d in 0..k {
            let e = devflat::lin2(rho / (grad_norms[d] + NORM_EPS), &gd[d], -alpha, &gbar)?;
            let res = set.set_shifted_tensor(&self.saved, &e).and_then(|_| loss_fn(d, Mode::TrainFrozenStats));
            let gt = match res.and_then(|l| l.backward()).and_then(|g| devflat::gather(set, &g)) {
                Ok(g) => g.affine(1.0 / k as f64, 0.0)?,
                Err(err) => {
                    set.restore(&self.saved)?;
                    return Err(err);
                }
            };
            acc = Some(match acc {
                None => gt,
                Some(a) => a.add(&gt)?,
            });
        }
        set.restore(&self.saved)?;
        let dir = devflat::lin2(1.0 - weight, &acc.expect("k >= 1"), weight, &gbar)?;
        self.opt.step(set, &devflat::split(set, &dir)?, lr)?;
        let norm_update = devflat::norm_sq_f32(&dir)?.sqrt();
        Ok(RogaReport { losses, grad_norms, norm_update })
    }
}

/// RoGA on the detector, one domain batch per manipulation type (`StepInput::domains`).
pub struct Roga {
    core: RogaCore,
}

impl Roga {
    pub fn new(params: RogaParams, opt: &OptimizerConfig) -> Self {
        Self { core: RogaCore::new(params, opt) }
    }
}

pub const ROGA_NOTE: &str = "RoGA (reconstructed)";

impl TrainingMethod for Roga {
    fn kind(&self) -> &str {
        "roga"
    }
    fn needs(&self) -> StreamNeeds {
        StreamNeeds { original: false, online: false, domains: true }
    }
    fn note(&self) -> Option<&str> {
        Some(ROGA_NOTE)
    }
    fn set_grad_path(&mut self, path: GradPath) {
        self.core.path = Some(path);
    }
    fn step(&mut self, det: &Detector, input: &StepInput, step: usize, lr: f64) -> Result<StepTrace> {
        let t0 = Instant::now();
        if input.domains.is_empty() {
            candle_core::bail!("method `roga` needs per-domain batches but the step input has none");
        }
        let doms = &input.domains;
        let rep = self.core.step(det.params(), lr, doms.len(), &mut |d, mode| {
            let b = &doms[d].1;
            super::bce_loss(&det.forward(&b.images, mode)?, &b.labels)
        })?;
        let k = doms.len() as f64;
        let domains = doms
            .iter()
            .zip(rep.losses.iter().zip(&rep.grad_norms))
            .map(|((name, _), (&loss, &grad_norm))| DomainTrace { name: name.clone(), loss, grad_norm })
            .collect();
        Ok(StepTrace {
            step,
            loss: rep.losses.iter().sum::<f64>() / k,
            norm_update: Some(rep.norm_update),
            lr,
            wall_s: t0.elapsed().as_secs_f64(),
            domains,
            ..Default::default()
        })
    }
}
