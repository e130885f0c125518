//! Base optimizers over a `ParamSet`, with PyTorch's update rules, taking an arbitrary update
//! direction (a raw gradient, UVS's v*, a projected or perturbed gradient) and the learning rate
//! of the current step (schedules are applied by the caller every iteration).
//!
//! candle-nn's SGD has no momentum and its AdamW defaults differ, so these are written here.
use candle_core::{Result, Tensor};

use crate::config::OptimizerConfig;
use crate::gradvec::ParamSet;

/// One optimizer with its per-parameter state (created lazily on the first step).
#[derive(Debug, Clone)]
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// SGD: momentum buffers. Adam/AdamW: first moments.
    m: Vec<Tensor>,
    /// Adam/AdamW: second moments.
    v: Vec<Tensor>,
    /// Number of steps taken (Adam's bias correction uses `t` starting at 1).
    t: u64,
}

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Self { cfg: cfg.clone(), m: Vec::new(), v: Vec::new(), t: 0 }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// The state tensors: SGD momentum buffers or Adam first moments, and Adam second moments
    /// (empty before the first step).
    pub fn state(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// `theta <- update(theta, direction, lr)`; `dir[i]` has the shape of parameter `i` of `set`.
    ///
    /// Every input is detached first, so the stored momentum/moment tensors never carry a
    /// backprop graph: a gradient from candle's own backward (its conv2d/matmul rules, used on
    /// CUDA) references the step's forward activations, and `m_t` built from it would reference
    /// `m_{t-1}` and so on, keeping every step's activations alive (a GPU OOM after ~85 Meso4
    /// steps). Detaching shares the storage, so values are unchanged.
    pub fn step(&mut self, set: &ParamSet, dir: &[Tensor], lr: f64) -> Result<()> {
        if dir.len() != set.len() {
            candle_core::bail!("optimizer step: {} directions for {} parameters", dir.len(), set.len());
        }
        self.t += 1;
        let first = self.m.is_empty();
        match self.cfg.clone() {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                for (i, (var, d)) in set.vars().iter().zip(dir).enumerate() {
                    let p = var.as_tensor().detach();
                    let mut d = d.detach();
                    if weight_decay != 0.0 {
                        d = d.add(&p.affine(weight_decay, 0.0)?)?;
                    }
                    if momentum != 0.0 {
                        // PyTorch: the buffer starts as the first (decayed) gradient, then
                        // buf = momentum * buf + g (dampening 0).
                        let buf = if first { d.copy()? } else { self.m[i].affine(momentum, 0.0)?.add(&d)? };
                        d = if nesterov { d.add(&buf.affine(momentum, 0.0)?)? } else { buf.clone() };
                        if first { self.m.push(buf) } else { self.m[i] = buf }
                    }
                    var.set(&p.sub(&d.affine(lr, 0.0)?)?)?;
                }
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                self.adam(set, dir, lr, beta1, beta2, eps, weight_decay, 0.0, first)?;
            }
            OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                self.adam(set, dir, lr, beta1, beta2, eps, 0.0, weight_decay, first)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn adam(
        &mut self,
        set: &ParamSet,
        dir: &[Tensor],
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        l2: f64,
        decoupled: f64,
        first: bool,
    ) -> Result<()> {
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (var, d)) in set.vars().iter().zip(dir).enumerate() {
            let p = var.as_tensor().detach();
            let mut g = d.detach();
            if l2 != 0.0 {
                g = g.add(&p.affine(l2, 0.0)?)?;
            }
            let (m_prev, v_prev) = if first {
                (g.zeros_like()?, g.zeros_like()?)
            } else {
                (self.m[i].clone(), self.v[i].clone())
            };
            let m = m_prev.affine(beta1, 0.0)?.add(&g.affine(1.0 - beta1, 0.0)?)?;
            let v = v_prev.affine(beta2, 0.0)?.add(&g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom.
            let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
            let mut base = p.clone();
            if decoupled != 0.0 {
                base = base.affine(1.0 - lr * decoupled, 0.0)?;
            }
            let upd = m.div(&denom)?.affine(lr / bc1, 0.0)?;
            var.set(&base.sub(&upd)?)?;
            if first {
                self.m.push(m);
                self.v.push(v);
            } else {
                self.m[i] = m;
                self.v[i] = v;
            }
        }
        Ok(())
    }
}
