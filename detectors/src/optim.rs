//! Base optimizers over a `ParamSet`, with PyTorch's update rules, taking an arbitrary update
//! direction (a raw gradient, UVS's v*, a projected or perturbed gradient) and the learning rate
//! of the current step (schedules are applied by the caller every iteration).
//!
//! candle-nn's SGD has no momentum and its AdamW defaults differ, so these are written here.
//!
//! Two implementations of every rule, with the same bits: candle tensor ops (any device), and on
//! the CPU a single in-place pass per parameter that performs the same f32 operations in the
//! same order. The tensor-op chain allocates about ten full-size temporaries per parameter and
//! reads and writes memory once per op (about 57 ms per Adam step at 10M parameters on the
//! development machine, BENCHMARKS.md); the pass reads each value once.
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::config::OptimizerConfig;
use crate::gradvec::{ParamSet, cpu_f32, with_cpu_f32, with_values_mut as with_values};

/// One optimizer with its per-parameter state (created lazily on the first step).
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// SGD: momentum buffers. Adam/AdamW: first moments.
    m: Vec<Tensor>,
    /// Adam/AdamW: second moments.
    v: Vec<Tensor>,
    /// Number of steps taken (Adam's bias correction uses `t` starting at 1).
    t: u64,
    /// Whether CPU parameters are updated by the in-place pass (the default) rather than by
    /// candle tensor ops.
    in_place: bool,
}

/// A deep copy: the state tensors are updated in place, so a clone must not share them.
impl Clone for Optimizer {
    fn clone(&self) -> Self {
        let copy = |ts: &[Tensor]| ts.iter().map(Tensor::copy).collect::<Result<Vec<_>>>();
        Self {
            cfg: self.cfg.clone(),
            m: copy(&self.m).expect("copying optimizer state"),
            v: copy(&self.v).expect("copying optimizer state"),
            t: self.t,
            in_place: self.in_place,
        }
    }
}

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Self { cfg: cfg.clone(), m: Vec::new(), v: Vec::new(), t: 0, in_place: true }
    }

    /// The same optimizer running candle tensor ops on every device, as it does off the CPU
    /// (the reference the in-place pass is tested against, and a fallback to compare with).
    pub fn with_tensor_ops(mut self) -> Self {
        self.in_place = false;
        self
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
        self.step_from(set, Directions::Tensors(dir), lr)
    }

    /// [`Optimizer::step`] with the direction as one flat vector over `set` (a combined
    /// gradient): the in-place pass reads it where it lies, the tensor-op path makes each
    /// parameter's slice a tensor first.
    pub fn step_flat(&mut self, set: &ParamSet, dir: &[f32], lr: f64) -> Result<()> {
        if dir.len() != set.total() {
            candle_core::bail!(
                "optimizer step: a direction of {} values for {} parameters",
                dir.len(),
                set.total()
            );
        }
        self.step_from(set, Directions::Flat(dir), lr)
    }

    fn step_from(&mut self, set: &ParamSet, dir: Directions, lr: f64) -> Result<()> {
        let _span = crate::ops::profile::start(crate::ops::profile::Kind::Optimizer);
        self.t += 1;
        let first = self.m.is_empty();
        let rule = self.rule(lr, first);
        for (i, var) in set.vars().iter().enumerate() {
            let p = var.as_tensor();
            if self.in_place && cpu_f32(p) {
                match dir {
                    Directions::Flat(v) => {
                        self.update_in_place(i, p, &v[set.range(i)], rule, first)?;
                        continue;
                    }
                    Directions::Tensors(ts) if direction_fits(p, &ts[i]) => {
                        let done = with_cpu_f32(&ts[i], |d| self.update_in_place(i, p, d, rule, first));
                        done.expect("checked by direction_fits")?;
                        continue;
                    }
                    Directions::Tensors(_) => {}
                }
            }
            let d = match dir {
                Directions::Tensors(ts) => ts[i].detach(),
                Directions::Flat(v) => {
                    Tensor::from_slice(&v[set.range(i)], set.shapes()[i].clone(), set.device())?
                }
            };
            self.update_with_tensor_ops(i, var, d, lr, first)?;
        }
        Ok(())
    }

    /// The step's constants as the in-place pass uses them: converted to f32 as candle's
    /// `affine` converts them (`f64 as f32`).
    fn rule(&self, lr: f64, first: bool) -> Rule {
        match self.cfg {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => Rule::Sgd(Sgd {
                lr: lr as f32,
                weight_decay: (weight_decay != 0.0).then_some(weight_decay as f32),
                momentum: (momentum != 0.0).then_some(momentum as f32),
                nesterov,
                first,
            }),
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                Rule::Adam(self.adam_rule(lr, beta1, beta2, eps, weight_decay, 0.0, first))
            }
            OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                Rule::Adam(self.adam_rule(lr, beta1, beta2, eps, 0.0, weight_decay, first))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adam_rule(
        &self,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        l2: f64,
        decoupled: f64,
        first: bool,
    ) -> Adam {
        let (bc1, bc2) = self.bias_corrections(beta1, beta2);
        Adam {
            l2: (l2 != 0.0).then_some(l2 as f32),
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            denom_scale: (1.0 / bc2.sqrt()) as f32,
            eps: eps as f32,
            decay: (decoupled != 0.0).then_some((1.0 - lr * decoupled) as f32),
            step: (lr / bc1) as f32,
            first,
        }
    }

    /// Adam's `1 - beta^t` for the step being taken.
    fn bias_corrections(&self, beta1: f64, beta2: f64) -> (f64, f64) {
        (1.0 - beta1.powi(self.t as i32), 1.0 - beta2.powi(self.t as i32))
    }

    /// Parameter `i` (`p`, contiguous f32 on the CPU) and its state, updated in place.
    fn update_in_place(&mut self, i: usize, p: &Tensor, d: &[f32], rule: Rule, first: bool) -> Result<()> {
        match rule {
            Rule::Sgd(rule) => {
                if rule.momentum.is_some() && first {
                    self.m.push(p.zeros_like()?);
                }
                let m = self.m.get(i);
                with_values(p, |p| with_opt_values(m, |m| sgd_pass(rule, p, m, d)))
            }
            Rule::Adam(rule) => {
                if first {
                    self.m.push(p.zeros_like()?);
                    self.v.push(p.zeros_like()?);
                }
                let (m, v) = (&self.m[i], &self.v[i]);
                with_values(p, |p| with_values(m, |m| with_values(v, |v| adam_pass(rule, p, m, v, d))))
            }
        }
    }

    /// Parameter `i` and its state, updated by candle tensor ops (any device).
    fn update_with_tensor_ops(&mut self, i: usize, var: &Var, d: Tensor, lr: f64, first: bool) -> Result<()> {
        let p = var.as_tensor().detach();
        match self.cfg {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                let mut d = d;
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
                var.set(&p.sub(&d.affine(lr, 0.0)?)?)
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                self.adam_with_tensor_ops(i, var, p, d, lr, (beta1, beta2, eps), weight_decay, 0.0, first)
            }
            OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                self.adam_with_tensor_ops(i, var, p, d, lr, (beta1, beta2, eps), 0.0, weight_decay, first)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adam_with_tensor_ops(
        &mut self,
        i: usize,
        var: &Var,
        p: Tensor,
        d: Tensor,
        lr: f64,
        (beta1, beta2, eps): (f64, f64, f64),
        l2: f64,
        decoupled: f64,
        first: bool,
    ) -> Result<()> {
        let (bc1, bc2) = self.bias_corrections(beta1, beta2);
        let mut g = d;
        if l2 != 0.0 {
            g = g.add(&p.affine(l2, 0.0)?)?;
        }
        let (m_prev, v_prev) =
            if first { (g.zeros_like()?, g.zeros_like()?) } else { (self.m[i].clone(), self.v[i].clone()) };
        let m = m_prev.affine(beta1, 0.0)?.add(&g.affine(1.0 - beta1, 0.0)?)?;
        let v = v_prev.affine(beta2, 0.0)?.add(&g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
        // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom.
        let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
        let mut base = p;
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
        Ok(())
    }
}

/// Where a step's direction comes from.
#[derive(Clone, Copy)]
enum Directions<'a> {
    /// One tensor per parameter.
    Tensors(&'a [Tensor]),
    /// One flat vector over the parameter set.
    Flat(&'a [f32]),
}

/// A step's rule with its constants, for the in-place pass.
#[derive(Clone, Copy)]
enum Rule {
    Sgd(Sgd),
    Adam(Adam),
}

// ---------------------------------------------------------------------------------------------
// The in-place pass. Each rule below is the tensor-op chain above written per element: every
// `affine(a, b)` is `x * a + b` in f32 with `a`, `b` converted from f64 (the `+ 0.0` turns -0
// into +0, as candle's does), every `add`/`sub`/`div`/`sqr`/`sqrt` the f32 operation. Rust never
// fuses a multiply and an add, so each element rounds exactly as the chain does, and the order
// of elements does not matter: the pass can run in parallel chunks.
// ---------------------------------------------------------------------------------------------

/// Elements per parallel chunk; shorter parameters run on the calling thread.
const CHUNK: usize = 32 * 1024;

/// Whether direction `d` can feed the in-place pass of parameter `p` (itself checked by
/// `cpu_f32`): contiguous f32 on the CPU, of `p`'s shape, in separate storage (a direction sharing
/// the parameter's storage would be read while the parameter is written).
fn direction_fits(p: &Tensor, d: &Tensor) -> bool {
    cpu_f32(d) && p.dims() == d.dims() && {
        let (sp, _) = p.storage_and_layout();
        let (sd, _) = d.storage_and_layout();
        !std::ptr::eq(&*sp, &*sd)
    }
}

/// [`with_values`] for a state tensor that may not exist (SGD without momentum).
fn with_opt_values(t: Option<&Tensor>, f: impl FnOnce(Option<&mut [f32]>) -> Result<()>) -> Result<()> {
    match t {
        Some(t) => with_values(t, |x| f(Some(x))),
        None => f(None),
    }
}

#[derive(Clone, Copy)]
struct Sgd {
    lr: f32,
    weight_decay: Option<f32>,
    momentum: Option<f32>,
    nesterov: bool,
    first: bool,
}

impl Sgd {
    #[inline(always)]
    fn apply(self, p: &mut f32, buf: &mut f32, d: f32) {
        let mut d = d;
        if let Some(wd) = self.weight_decay {
            d += *p * wd + 0.0;
        }
        if let Some(mu) = self.momentum {
            let b = if self.first { d } else { (*buf * mu + 0.0) + d };
            d = if self.nesterov { d + (b * mu + 0.0) } else { b };
            *buf = b;
        }
        *p -= d * self.lr + 0.0;
    }
}

fn sgd_pass(rule: Sgd, p: &mut [f32], m: Option<&mut [f32]>, d: &[f32]) -> Result<()> {
    let chunk = |(p, d): (&mut [f32], &[f32]), m: Option<&mut [f32]>| match m {
        Some(m) => {
            for ((p, m), &d) in p.iter_mut().zip(m).zip(d) {
                rule.apply(p, m, d);
            }
        }
        None => {
            let mut unused = 0f32;
            for (p, &d) in p.iter_mut().zip(d) {
                rule.apply(p, &mut unused, d);
            }
        }
    };
    if p.len() < 2 * CHUNK {
        chunk((p, d), m);
        return Ok(());
    }
    let pd = p.par_chunks_mut(CHUNK).zip(d.par_chunks(CHUNK));
    match m {
        Some(m) => pd.zip(m.par_chunks_mut(CHUNK)).for_each(|(pd, m)| chunk(pd, Some(m))),
        None => pd.for_each(|pd| chunk(pd, None)),
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Adam {
    l2: Option<f32>,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    denom_scale: f32,
    eps: f32,
    decay: Option<f32>,
    step: f32,
    first: bool,
}

impl Adam {
    #[inline(always)]
    fn apply(self, p: &mut f32, m: &mut f32, v: &mut f32, d: f32) {
        let mut g = d;
        if let Some(l2) = self.l2 {
            g += *p * l2 + 0.0;
        }
        let (m_prev, v_prev) = if self.first { (0.0, 0.0) } else { (*m, *v) };
        let m_new = (m_prev * self.beta1 + 0.0) + (g * self.one_minus_beta1 + 0.0);
        let v_new = (v_prev * self.beta2 + 0.0) + ((g * g) * self.one_minus_beta2 + 0.0);
        let denom = v_new.sqrt() * self.denom_scale + self.eps;
        let base = match self.decay {
            Some(k) => *p * k + 0.0,
            None => *p,
        };
        *p = base - ((m_new / denom) * self.step + 0.0);
        *m = m_new;
        *v = v_new;
    }
}

/// One chunk of the Adam pass: parameters, first and second moments, direction.
type AdamChunk<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), &'a [f32]);

fn adam_pass(rule: Adam, p: &mut [f32], m: &mut [f32], v: &mut [f32], d: &[f32]) -> Result<()> {
    let chunk = |(((p, m), v), d): AdamChunk| {
        for (((p, m), v), &d) in p.iter_mut().zip(m).zip(v).zip(d) {
            rule.apply(p, m, v, d);
        }
    };
    if p.len() < 2 * CHUNK {
        chunk((((p, m), v), d));
    } else {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(d.par_chunks(CHUNK))
            .for_each(chunk);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::params::{Init, ParamStore};

    /// Values over many binades, with exact zeros of both signs (the `+ 0.0` of `affine`).
    fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| match rng.random_range(0..20) {
                0 => 0.0,
                1 => -0.0,
                _ => rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-20..3)),
            })
            .collect()
    }

    fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
        ts.iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    type Bits = Vec<Vec<u32>>;

    /// Parameters of odd sizes, one long enough for the parallel chunks, and random directions
    /// for a few steps; both implementations from the same start. The parameters and the state
    /// after every step.
    fn run(cfg: &OptimizerConfig, in_place: bool, flat: bool) -> Result<Vec<(Bits, Bits, Bits)>> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let sizes = [1usize, 7, 1000, 3 * CHUNK + 5];
        let b = ParamStore::new(&Device::Cpu).builder(0);
        for (i, &n) in sizes.iter().enumerate() {
            b.param(&format!("p{i}"), n, Init::Zeros)?;
        }
        let store = b.store();
        let set = ParamSet::from_store(&store);
        for v in set.vars() {
            v.set(&Tensor::from_vec(values(&mut rng, v.elem_count()), v.shape(), &Device::Cpu)?)?;
        }
        let mut opt = Optimizer::new(cfg);
        if !in_place {
            opt = opt.with_tensor_ops();
        }
        let mut after = Vec::new();
        for step in 0..4 {
            let dir: Vec<Tensor> = set
                .shapes()
                .iter()
                .map(|s| Tensor::from_vec(values(&mut rng, s.elem_count()), s.clone(), &Device::Cpu))
                .collect::<Result<_>>()?;
            let lr = 0.05 / (1 + step) as f64;
            if flat {
                let mut v = crate::gradvec::FlatGrad::zeros(set.total());
                for (i, d) in dir.iter().enumerate() {
                    v.data[set.range(i)].copy_from_slice(&d.to_vec1::<f32>()?);
                }
                opt.step_flat(&set, &v.data, lr)?;
            } else {
                opt.step(&set, &dir, lr)?;
            }
            let params: Vec<Tensor> = set.vars().iter().map(|v| v.as_tensor().clone()).collect();
            let (m, v) = opt.state();
            after.push((bits(&params), bits(m), bits(v)));
        }
        Ok(after)
    }

    #[test]
    fn the_in_place_pass_and_flat_directions_give_the_tensor_ops_bits() -> Result<()> {
        let sgd = |momentum, nesterov, weight_decay| OptimizerConfig::Sgd {
            lr: 0.1,
            momentum,
            nesterov,
            weight_decay,
        };
        let adam = |weight_decay| OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        };
        let adamw = |weight_decay| OptimizerConfig::Adamw {
            lr: 0.1,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay,
        };
        let cfgs = [
            sgd(0.0, false, 0.0),
            sgd(0.0, false, 0.01),
            sgd(0.9, false, 0.0),
            sgd(0.9, true, 0.01),
            adam(0.0),
            adam(0.01),
            adamw(0.0),
            adamw(0.1),
        ];
        for cfg in &cfgs {
            let want = run(cfg, false, false)?;
            // In place from tensors and from a flat vector; tensor ops from a flat vector.
            for (in_place, flat) in [(true, false), (true, true), (false, true)] {
                let got = run(cfg, in_place, flat)?;
                for (step, (got, want)) in got.iter().zip(&want).enumerate() {
                    let how = format!("{cfg:?} (in place {in_place}, flat {flat})");
                    assert!(got.0 == want.0, "{how}: parameters differ after step {}", step + 1);
                    assert!(
                        got.1 == want.1 && got.2 == want.2,
                        "{how}: state differs after step {}",
                        step + 1
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_clone_does_not_share_the_state() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(0);
        b.param("p", 3, Init::Zeros)?;
        let set = ParamSet::from_store(&b.store());
        let cfg = OptimizerConfig::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(&cfg);
        let d = [Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu)?];
        opt.step(&set, &d, 0.1)?;
        let copy = opt.clone();
        let before = bits(copy.state().0);
        opt.step(&set, &d, 0.1)?;
        assert_eq!(bits(copy.state().0), before, "a step of the original changed its clone's moments");
        assert_ne!(bits(opt.state().0), before);
        Ok(())
    }
}
