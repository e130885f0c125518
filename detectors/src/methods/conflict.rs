//! Two-stream gradient-conflict methods: CS-DFD (UVS + CGR and its ablations), PCGrad and
//! CAGrad. One forward over the concatenated O and S batches (as ERM O+S does, so the methods
//! differ only in how they combine gradients), then one backward per stream loss on that graph.
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::combine::{cagrad_reference, pcgrad, uvs_two_fixed};
use super::cs_dfd::{self, HeadRule};
use super::fused::{cs_dfd_direction, trace_numbers, two_stream_stats, write_two};
use super::{StepCtx, StreamNeeds, TrainingMethod};
use crate::batch::StepInput;
use crate::config::OptimizerConfig;
use crate::gradvec::FlatGrad;
use crate::gradvec::device::{self as devflat, GradPath};
use crate::model::{Detector, Mode};
use crate::optim::Optimizer;
use crate::trace::StepTrace;

/// How the two stream gradients become one update direction.
#[derive(Debug, Clone)]
pub enum Rule {
    /// CS-DFD (methods.md 2.1-2.2). UVS acts on every parameter outside the projection head;
    /// the head gets `g1 + g2` plus, with `cgr`, the conflict term. `reference` computes it with
    /// `cs_dfd::reference` instead of the fused fast path.
    CsDfd { c: f64, tau: f64, uvs: bool, cgr: bool, reference: bool },
    /// PCGrad with a seeded random inner order.
    PcGrad { rng: ChaCha8Rng },
    /// CAGrad, LibMTL convention, over all parameters; `reference` as for CS-DFD.
    CaGrad { c: f64, reference: bool },
}

pub struct TwoStream {
    kind: &'static str,
    rule: Rule,
    opt: Optimizer,
    g1: FlatGrad,
    g2: FlatGrad,
    v: FlatGrad,
    scratch: Vec<f32>,
    /// `None`: the host path on the CPU, the tensor path elsewhere (`GradPath::for_device`).
    path: Option<GradPath>,
}

impl TwoStream {
    pub fn new(kind: &'static str, rule: Rule, opt: &OptimizerConfig) -> Self {
        Self {
            kind,
            rule,
            opt: Optimizer::new(opt),
            g1: FlatGrad::default(),
            g2: FlatGrad::default(),
            v: FlatGrad::default(),
            scratch: Vec::new(),
            path: None,
        }
    }

    /// Combines on the host or with device tensor ops whatever the device (tests hold the two
    /// together on the CPU).
    pub fn with_grad_path(mut self, path: GradPath) -> Self {
        self.path = Some(path);
        self
    }

    /// The step's combination as device tensor ops (`methods::device`): the flat gradients stay
    /// on the device, only scalars reach the host.
    fn combine_on_device(
        &mut self,
        det: &Detector,
        r1: &GradStore,
        r2: &GradStore,
    ) -> Result<super::device::TwoDirection> {
        let set = det.params();
        let (g1, g2) = (devflat::gather(set, r1)?, devflat::gather(set, r2)?);
        // `path = "reference"` selects between the host implementations; the tensor path has one.
        let dir = match &mut self.rule {
            Rule::CsDfd { c, tau, uvs, cgr, .. } => {
                let head = det.head_range();
                if *cgr && head.is_none() {
                    candle_core::bail!("cs-dfd with cgr = true needs a projection head (head_layers >= 1)");
                }
                let rule = if *cgr { HeadRule::Cgr { tau: *tau } } else { HeadRule::Sum };
                super::device::cs_dfd_direction(&g1, &g2, head.as_ref(), uvs.then_some(*c), rule)?
            }
            Rule::CaGrad { c, .. } => super::device::cagrad_direction(&g1, &g2, *c)?,
            Rule::PcGrad { rng } => {
                // The same draws from the same generator as the host path.
                let mut orders = [vec![1usize], vec![0usize]];
                for o in &mut orders {
                    o.shuffle(rng);
                }
                super::device::pcgrad_two(&g1, &g2, &orders)?
            }
        };
        Ok(dir)
    }

    pub fn pcgrad_seeded(seed: u64) -> Rule {
        Rule::PcGrad { rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

/// The gradients of two losses on one graph. With `concurrent` the two backward passes run side
/// by side on the rayon pool: either alone is a chain of ops (candle's element-wise maps and
/// gradient sums, our per-layer kernels) too short to keep two cores busy, and both only read the
/// shared graph. Every op computes the same bits whatever the interleaving, so the gradients are
/// those of the sequential passes (tested below). Not used on CUDA, where both passes would queue
/// on one stream anyway.
pub(crate) fn backward_pair(l1: &Tensor, l2: &Tensor, concurrent: bool) -> Result<(GradStore, GradStore)> {
    if concurrent {
        let (a, b) = rayon::join(|| l1.backward(), || l2.backward());
        Ok((a?, b?))
    } else {
        Ok((l1.backward()?, l2.backward()?))
    }
}

impl TrainingMethod for TwoStream {
    fn kind(&self) -> &str {
        self.kind
    }
    fn needs(&self) -> StreamNeeds {
        StreamNeeds { original: true, online: true, domains: false }
    }
    fn set_grad_path(&mut self, path: GradPath) {
        self.path = Some(path);
    }
    fn step(&mut self, det: &Detector, input: &StepInput, step: usize, lr: f64) -> Result<StepTrace> {
        let t0 = Instant::now();
        let set = det.params();
        let ctx = StepCtx { kind: self.kind, det, input };
        let (l1, l2) = ctx.two_streams(Mode::Train)?;
        let (r1, r2) = backward_pair(&l1, &l2, l1.device().is_cpu())?;
        let l1v = l1.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let l2v = l2.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if self.path.unwrap_or_else(|| GradPath::for_device(set.device())) == GradPath::Tensor {
            let dir = self.combine_on_device(det, &r1, &r2)?;
            drop((r1, r2));
            let dirs = devflat::split(set, &dir.v)?;
            self.opt.step(set, &dirs, lr)?;
            return Ok(trace_of(step, l1v, l2v, &dir.nums, dir.cgr_rel, lr, t0));
        }
        self.g1.fill_from(set, &r1)?;
        self.g2.fill_from(set, &r2)?;
        let n = set.total();
        self.v.resize(n);
        let (g1, g2) = (&self.g1.data, &self.g2.data);
        let mut cgr_rel = None;
        let nums = match &mut self.rule {
            Rule::CsDfd { c, tau, uvs, cgr, reference } => {
                let head = det.head_range();
                if *cgr && head.is_none() {
                    candle_core::bail!("cs-dfd with cgr = true needs a projection head (head_layers >= 1)");
                }
                let rule = if *cgr { HeadRule::Cgr { tau: *tau } } else { HeadRule::Sum };
                if let (true, Some(p)) = (*cgr, head.as_ref()) {
                    cgr_rel = cs_dfd::cgr_relative(&g1[p.clone()], &g2[p.clone()], *tau);
                }
                let direction = if *reference { cs_dfd::reference } else { cs_dfd_direction };
                direction(g1, g2, head.as_ref(), uvs.then_some(*c), rule, &mut self.v.data)
            }
            Rule::CaGrad { c, reference: true } => cagrad_reference(g1, g2, *c, &mut self.v.data),
            Rule::CaGrad { c, reference: false } => {
                let stats = two_stream_stats(g1, g2, None, true);
                let pair = stats.pair.expect("asked for UVS statistics");
                let sol = uvs_two_fixed(&pair, *c);
                // `cagrad_libmtl` for K = 2, without its allocation.
                let a = sol.coef.map(|a| a / (2.0 * (1.0 + *c * *c)));
                let sq = write_two(&mut self.v.data, g1, g2, (a[0], a[1]), None, &stats);
                trace_numbers(&stats, sq.sqrt(), Some(sol.mu))
            }
            Rule::PcGrad { rng } => {
                let stats = two_stream_stats(g1, g2, None, false);
                let mut orders = [vec![1usize], vec![0usize]];
                for o in &mut orders {
                    o.shuffle(rng);
                }
                pcgrad(&[g1, g2], &orders, &mut self.v.data, &mut self.scratch);
                trace_numbers(&stats, self.v.norm(), None)
            }
        };
        self.opt.step_flat(set, &self.v.data, lr)?;
        Ok(trace_of(step, l1v, l2v, &nums, cgr_rel, lr, t0))
    }
}

fn trace_of(
    step: usize,
    l1v: f64,
    l2v: f64,
    nums: &cs_dfd::TwoStepNumbers,
    cgr_rel: Option<f64>,
    lr: f64,
    t0: Instant,
) -> StepTrace {
    StepTrace {
        step,
        l1: Some(l1v),
        l2: Some(l2v),
        loss: l1v + l2v,
        cos_g1_g2: Some(nums.cos_g1_g2),
        norm_g1: Some(nums.norm_g1),
        norm_g2: Some(nums.norm_g2),
        norm_update: Some(nums.norm_update),
        mu1: nums.mu.map(|m| m[0]),
        mu2: nums.mu.map(|m| m[1]),
        cgr_rel,
        lr,
        wall_s: t0.elapsed().as_secs_f64(),
        domains: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::batch::Batch;
    use crate::params::ParamStore;

    fn batch(rng: &mut ChaCha8Rng, n: usize, side: usize) -> Batch {
        let images: Vec<f32> = (0..n * 3 * side * side).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
        Batch {
            images: Tensor::from_vec(images, (n, 3, side, side), &Device::Cpu).unwrap(),
            labels: Tensor::from_vec(labels, n, &Device::Cpu).unwrap(),
        }
    }

    #[test]
    fn concurrent_backward_passes_give_the_sequential_bits() -> Result<()> {
        let pb = ParamStore::new(&Device::Cpu).builder(7);
        let det = Detector::new(&pb, 2, |pb| crate::backbones::build("meso4", pb, 64))?;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let input = StepInput {
            original: Some(batch(&mut rng, 6, 64)),
            online: Some(batch(&mut rng, 6, 64)),
            domains: vec![],
        };
        let ctx = StepCtx { kind: "cs-dfd", det: &det, input: &input };
        let (l1, l2) = ctx.two_streams(Mode::Train)?;
        let bits = |g: &GradStore| -> Result<Vec<Vec<u32>>> {
            det.params()
                .vars()
                .iter()
                .map(|v| {
                    let g = g.get(v.as_tensor()).expect("every parameter gets a gradient");
                    Ok(g.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
                })
                .collect()
        };
        let (s1, s2) = backward_pair(&l1, &l2, false)?;
        let want = (bits(&s1)?, bits(&s2)?);
        // Interleavings differ between repeats; every one must give the same bits.
        for _ in 0..4 {
            let (c1, c2) = backward_pair(&l1, &l2, true)?;
            assert!(bits(&c1)? == want.0, "g1 differs between concurrent and sequential backward passes");
            assert!(bits(&c2)? == want.1, "g2 differs between concurrent and sequential backward passes");
        }
        Ok(())
    }
}
