//! Two-stream gradient-conflict methods: CS-DFD (UVS + CGR and its ablations), PCGrad and
//! CAGrad. One forward over the concatenated O and S batches (as ERM O+S does, so the methods
//! differ only in how they combine gradients), then one backward per stream loss on that graph.
use std::ops::Range;
use std::time::Instant;

use candle_core::{Result, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::combine::{Pair, cagrad_libmtl, cgr_head, pcgrad, uvs_two};
use super::{StepCtx, StreamNeeds, TrainingMethod};
use crate::batch::StepInput;
use crate::config::OptimizerConfig;
use crate::gradvec::FlatGrad;
use crate::model::{Detector, Mode};
use crate::optim::Optimizer;
use crate::trace::StepTrace;

/// How the two stream gradients become one update direction.
#[derive(Debug, Clone)]
pub enum Rule {
    /// CS-DFD (methods.md 2.1-2.2). UVS acts on every parameter outside the projection head;
    /// the head gets `g1 + g2` plus, with `cgr`, the conflict term.
    CsDfd { c: f64, tau: f64, uvs: bool, cgr: bool },
    /// PCGrad with a seeded random inner order.
    PcGrad { rng: ChaCha8Rng },
    /// CAGrad, LibMTL convention, over all parameters.
    CaGrad { c: f64 },
}

pub struct TwoStream {
    kind: &'static str,
    rule: Rule,
    opt: Optimizer,
    g1: FlatGrad,
    g2: FlatGrad,
    v: FlatGrad,
    scratch: Vec<f32>,
    dir: Vec<Tensor>,
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
            dir: Vec::new(),
        }
    }

    pub fn pcgrad_seeded(seed: u64) -> Rule {
        Rule::PcGrad { rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

/// `out = a1 g1 + a2 g2` over the flat indices outside `skip`.
fn lin2_outside(out: &mut [f32], a1: f64, g1: &[f32], a2: f64, g2: &[f32], skip: Option<&Range<usize>>) {
    let n = out.len();
    let segs = match skip {
        None => [0..n, n..n],
        Some(r) => [0..r.start, r.end..n],
    };
    for s in segs {
        for i in s {
            out[i] = (a1 * g1[i] as f64 + a2 * g2[i] as f64) as f32;
        }
    }
}

impl TrainingMethod for TwoStream {
    fn kind(&self) -> &str {
        self.kind
    }
    fn needs(&self) -> StreamNeeds {
        StreamNeeds { original: true, online: true, domains: false }
    }
    fn step(&mut self, det: &Detector, input: &StepInput, step: usize, lr: f64) -> Result<StepTrace> {
        let t0 = Instant::now();
        let set = det.params();
        let ctx = StepCtx { kind: self.kind, det, input };
        let (l1, l2) = ctx.two_streams(Mode::Train)?;
        self.g1.fill_from(set, &l1.backward()?)?;
        self.g2.fill_from(set, &l2.backward()?)?;
        let l1v = l1.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let l2v = l2.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let n1 = self.g1.norm();
        let n2 = self.g2.norm();
        let cos = self.g1.dot(&self.g2) / (n1.max(1e-12) * n2.max(1e-12));
        let n = set.total();
        self.v.resize(n);
        let (g1, g2) = (&self.g1.data, &self.g2.data);
        let mut mu = None;
        match &mut self.rule {
            Rule::CsDfd { c, tau, uvs, cgr } => {
                let head = det.head_range();
                if *cgr && head.is_none() {
                    candle_core::bail!("cs-dfd with cgr = true needs a projection head (head_layers >= 1)");
                }
                let (a1, a2) = if *uvs {
                    let sol = uvs_two(&Pair::from_vectors(g1, g2, head.as_ref()), *c);
                    mu = Some((sol.mu[0], sol.mu[1]));
                    (sol.coef[0], sol.coef[1])
                } else {
                    (1.0, 1.0)
                };
                lin2_outside(&mut self.v.data, a1, g1, a2, g2, head.as_ref());
                if let Some(h) = head {
                    if *cgr {
                        cgr_head(&g1[h.clone()], &g2[h.clone()], *tau, &mut self.v.data[h]);
                    } else {
                        lin2_outside(&mut self.v.data[h.clone()], 1.0, &g1[h.clone()], 1.0, &g2[h], None);
                    }
                }
            }
            Rule::CaGrad { c } => {
                let sol = uvs_two(&Pair::from_vectors(g1, g2, None), *c);
                mu = Some((sol.mu[0], sol.mu[1]));
                let a = cagrad_libmtl(&sol, *c);
                lin2_outside(&mut self.v.data, a[0], g1, a[1], g2, None);
            }
            Rule::PcGrad { rng } => {
                let mut orders = vec![vec![1usize], vec![0usize]];
                for o in &mut orders {
                    o.shuffle(rng);
                }
                pcgrad(&[g1, g2], &orders, &mut self.v.data, &mut self.scratch);
            }
        }
        let norm_update = self.v.norm();
        self.v.to_tensors(set, &mut self.dir)?;
        self.opt.step(set, &self.dir, lr)?;
        Ok(StepTrace {
            step,
            l1: Some(l1v),
            l2: Some(l2v),
            loss: l1v + l2v,
            cos_g1_g2: Some(cos),
            norm_g1: Some(n1),
            norm_g2: Some(n2),
            norm_update: Some(norm_update),
            mu1: mu.map(|m| m.0),
            mu2: mu.map(|m| m.1),
            lr,
            wall_s: t0.elapsed().as_secs_f64(),
            domains: Vec::new(),
        })
    }
}
