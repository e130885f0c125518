//! Training methods (methods.md sections 2-6). `spec` is the registry the protocol layer
//! validates against; the implementations live beside it and read their hyperparameters by the
//! registry's names.
//!
//! The runner builds one method per run with [`build_method`], asks it which streams it needs
//! ([`TrainingMethod::needs`]), fills a [`StepInput`] with those, and calls
//! [`TrainingMethod::step`] once per iteration with the scheduled learning rate.
use std::collections::BTreeMap;
use std::fmt;

use candle_core::{DType, Result, Tensor};

use crate::batch::{Batch, StepInput};
use crate::config::OptimizerConfig;
use crate::losses;
use crate::model::{Detector, Mode};
use crate::trace::StepTrace;

pub mod combine;
pub mod conflict;
pub mod cs_dfd;
pub mod device;
pub mod fused;
pub mod sharp;
pub mod spec;

pub use spec::{MethodSpec, ParamKind, ParamSpec, registry};

/// Which streams a method consumes each step (methods.md section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamNeeds {
    /// Stream O: real frames + the source manipulations' fakes.
    pub original: bool,
    /// Stream S: real frames + online self-blended images.
    pub online: bool,
    /// One batch per manipulation domain (RoGA).
    pub domains: bool,
}

/// One training method, stateful across steps (optimizer moments, reusable buffers, RNG).
pub trait TrainingMethod: Send {
    /// The registry kind (`erm`, `cs-dfd`, ...).
    fn kind(&self) -> &str;
    fn needs(&self) -> StreamNeeds;
    /// One iteration: gradients, combination, base-optimizer update at learning rate `lr`.
    fn step(&mut self, det: &Detector, input: &StepInput, step: usize, lr: f64) -> Result<StepTrace>;
    /// A caveat that must travel with every result (e.g. "RoGA (reconstructed)").
    fn note(&self) -> Option<&str> {
        None
    }
    /// Where flat gradients are combined from now on (default: the host on the CPU, device
    /// tensor ops elsewhere, `GradPath::for_device`); tests select the tensor path on the CPU.
    fn set_grad_path(&mut self, path: crate::gradvec::device::GradPath);
}

/// The streams a single-objective method trains on (the registry's `streams` choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    Original,
    Online,
    /// O+S: `L = L1 + L2`, one forward over the concatenated batches, one backward.
    Both,
}

impl Streams {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "original" => Some(Self::Original),
            "online" => Some(Self::Online),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
    pub fn needs(self) -> StreamNeeds {
        StreamNeeds {
            original: matches!(self, Self::Original | Self::Both),
            online: matches!(self, Self::Online | Self::Both),
            domains: false,
        }
    }
}

/// The per-stream loss of a single-objective method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    Bce,
    /// `CVaR_alpha(per-sample BCE) + gamma * pairwise AUC` (methods.md section 6).
    CvarAuc {
        alpha: f64,
        gamma: f64,
    },
}

impl LossKind {
    pub fn apply(self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match self {
            Self::Bce => bce_loss(logits, labels),
            Self::CvarAuc { alpha, gamma } => losses::cvar_auc(logits, labels, alpha, gamma),
        }
    }
}

/// A method's objective at some parameters: the total to differentiate and, where streams are
/// involved, the per-stream parts for the trace.
pub struct Losses {
    pub total: Tensor,
    pub l1: Option<Tensor>,
    pub l2: Option<Tensor>,
}

impl Losses {
    pub fn total_only(total: Tensor) -> Self {
        Self { total, l1: None, l2: None }
    }
    /// Host values `(total, l1, l2)`.
    pub fn values(&self) -> Result<(f64, Option<f64>, Option<f64>)> {
        let f = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
        Ok((f(&self.total)?, self.l1.as_ref().map(f).transpose()?, self.l2.as_ref().map(f).transpose()?))
    }
}

pub(crate) fn bce_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    losses::bce_with_logits(logits, labels)
}

/// What a method sees during one step.
pub(crate) struct StepCtx<'a> {
    pub kind: &'a str,
    pub det: &'a Detector,
    pub input: &'a StepInput,
}

impl StepCtx<'_> {
    fn original(&self) -> Result<&Batch> {
        self.input.original.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "method `{}` needs the original stream (O) but the step input has none",
                self.kind
            ))
        })
    }
    fn online(&self) -> Result<&Batch> {
        self.input.online.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "method `{}` needs the online stream (S) but the step input has none",
                self.kind
            ))
        })
    }

    /// Logits of O and S from one forward over their concatenation.
    fn two_stream_logits(&self, mode: Mode) -> Result<(Tensor, Tensor)> {
        let (o, s) = (self.original()?, self.online()?);
        let b1 = o.images.dim(0)?;
        let b2 = s.images.dim(0)?;
        let logits = self.det.forward(&Tensor::cat(&[&o.images, &s.images], 0)?, mode)?;
        Ok((logits.narrow(0, 0, b1)?, logits.narrow(0, b1, b2)?))
    }

    /// BCE losses `(L1, L2)` of the two streams on one graph.
    pub fn two_streams(&self, mode: Mode) -> Result<(Tensor, Tensor)> {
        let (z1, z2) = self.two_stream_logits(mode)?;
        Ok((bce_loss(&z1, &self.original()?.labels)?, bce_loss(&z2, &self.online()?.labels)?))
    }

    /// The single objective on the chosen streams.
    pub fn objective(&self, streams: Streams, loss: LossKind, mode: Mode) -> Result<Losses> {
        match streams {
            Streams::Original => {
                let b = self.original()?;
                let l = loss.apply(&self.det.forward(&b.images, mode)?, &b.labels)?;
                Ok(Losses { total: l.clone(), l1: Some(l), l2: None })
            }
            Streams::Online => {
                let b = self.online()?;
                let l = loss.apply(&self.det.forward(&b.images, mode)?, &b.labels)?;
                Ok(Losses { total: l.clone(), l1: None, l2: Some(l) })
            }
            Streams::Both => {
                let (z1, z2) = self.two_stream_logits(mode)?;
                let l1 = loss.apply(&z1, &self.original()?.labels)?;
                let l2 = loss.apply(&z2, &self.online()?.labels)?;
                Ok(Losses { total: l1.add(&l2)?, l1: Some(l1), l2: Some(l2) })
            }
        }
    }
}

/// One hyperparameter value as a protocol gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float(x) => write!(f, "{x}"),
            Self::Int(x) => write!(f, "{x}"),
            Self::Bool(x) => write!(f, "{x}"),
            Self::Str(x) => write!(f, "\"{x}\""),
        }
    }
}

/// Hyperparameters by registry name; a missing name takes the registry default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodParams(pub BTreeMap<String, ParamValue>);

impl MethodParams {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with(mut self, name: &str, value: ParamValue) -> Self {
        self.0.insert(name.to_string(), value);
        self
    }
    pub fn set(&mut self, name: &str, value: ParamValue) {
        self.0.insert(name.to_string(), value);
    }
}

/// Checks `params` against the registry entry of `kind`: unknown names, wrong types and values
/// outside the documented range are errors naming the key and what was expected.
pub fn validate_params(
    kind: &str,
    params: &MethodParams,
) -> std::result::Result<&'static MethodSpec, String> {
    let spec = spec::find(kind).ok_or_else(|| {
        let kinds: Vec<&str> = registry().iter().map(|m| m.kind).collect();
        format!("unknown method kind `{kind}`; expected one of {}", kinds.join(", "))
    })?;
    for (name, value) in &params.0 {
        let p = spec.param(name).ok_or_else(|| {
            let names: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
            if names.is_empty() {
                format!("method `{kind}` takes no parameters, got `{name}`")
            } else {
                format!("method `{kind}` has no parameter `{name}`; expected one of {}", names.join(", "))
            }
        })?;
        check_value(kind, p, value)?;
    }
    Ok(spec)
}

fn check_value(kind: &str, p: &ParamSpec, value: &ParamValue) -> std::result::Result<(), String> {
    let name = p.name;
    match (p.kind, value) {
        (ParamKind::Float { min, max, min_exclusive, .. }, ParamValue::Float(_) | ParamValue::Int(_)) => {
            let x = match value {
                ParamValue::Float(x) => *x,
                ParamValue::Int(i) => *i as f64,
                _ => unreachable!(),
            };
            let low_ok = if min_exclusive { x > min } else { x >= min };
            if !x.is_finite() || !low_ok || x > max {
                let lo = if min_exclusive { "(" } else { "[" };
                return Err(format!("{kind}.{name} = {x} is outside {lo}{min}, {max}]"));
            }
        }
        (ParamKind::Int { min, max, .. }, ParamValue::Int(i)) => {
            if *i < min || *i > max {
                return Err(format!("{kind}.{name} = {i} is outside [{min}, {max}]"));
            }
        }
        (ParamKind::Bool { .. }, ParamValue::Bool(_)) => {}
        (ParamKind::Choice { options }, ParamValue::Str(s)) => {
            if !options.contains(&s.as_str()) {
                return Err(format!("{kind}.{name} = \"{s}\" is not one of {}", options.join(", ")));
            }
        }
        (kind_expected, v) => {
            let want = match kind_expected {
                ParamKind::Float { .. } => "a number",
                ParamKind::Int { .. } => "an integer",
                ParamKind::Bool { .. } => "true or false",
                ParamKind::Choice { .. } => "a string",
            };
            return Err(format!("{kind}.{name} must be {want}, got {v}"));
        }
    }
    Ok(())
}

/// Typed access to validated parameters with registry defaults.
struct Reader<'a> {
    spec: &'static MethodSpec,
    params: &'a MethodParams,
}

impl Reader<'_> {
    fn float(&self, name: &str) -> f64 {
        match self.params.0.get(name) {
            Some(ParamValue::Float(x)) => *x,
            Some(ParamValue::Int(i)) => *i as f64,
            _ => match self.spec.param(name).map(|p| p.kind) {
                Some(ParamKind::Float { default, .. }) => default,
                other => panic!("registry: `{}.{name}` is not a float ({other:?})", self.spec.kind),
            },
        }
    }
    fn int(&self, name: &str) -> i64 {
        match self.params.0.get(name) {
            Some(ParamValue::Int(i)) => *i,
            _ => match self.spec.param(name).map(|p| p.kind) {
                Some(ParamKind::Int { default, .. }) => default,
                other => panic!("registry: `{}.{name}` is not an integer ({other:?})", self.spec.kind),
            },
        }
    }
    fn boolean(&self, name: &str) -> bool {
        match self.params.0.get(name) {
            Some(ParamValue::Bool(b)) => *b,
            _ => match self.spec.param(name).map(|p| p.kind) {
                Some(ParamKind::Bool { default }) => default,
                other => panic!("registry: `{}.{name}` is not a bool ({other:?})", self.spec.kind),
            },
        }
    }
    fn choice(&self, name: &str) -> String {
        match self.params.0.get(name) {
            Some(ParamValue::Str(s)) => s.clone(),
            _ => match self.spec.param(name).map(|p| p.kind) {
                Some(ParamKind::Choice { options }) => options[0].to_string(),
                other => panic!("registry: `{}.{name}` is not a choice ({other:?})", self.spec.kind),
            },
        }
    }
    fn streams(&self) -> Streams {
        let s = self.choice("streams");
        Streams::parse(&s).expect("validated against the registry's options")
    }
}

/// Builds a method by registry kind. `params` are validated here (the protocol layer validates
/// too; a clear error beats a panic either way). `seed` feeds the method's own randomness
/// (PCGrad's order). `det` is checked for what the method needs (CGR's projection head).
pub fn build_method(
    kind: &str,
    params: &MethodParams,
    optimizer: &OptimizerConfig,
    det: &Detector,
    seed: u64,
) -> anyhow::Result<Box<dyn TrainingMethod>> {
    use conflict::{Rule, TwoStream};
    use sharp::{Perturbation, Roga, RogaParams, SingleObjective};
    let spec = validate_params(kind, params).map_err(anyhow::Error::msg)?;
    check_optimizer(optimizer).map_err(anyhow::Error::msg)?;
    let r = Reader { spec, params };
    let m: Box<dyn TrainingMethod> = match spec.kind {
        "erm" => {
            let every = r.int("conflict_every");
            if every > 0 && r.streams() != Streams::Both {
                anyhow::bail!(
                    "erm.conflict_every = {every} traces the two stream gradients of O+S; it needs streams = \"both\""
                );
            }
            let m = SingleObjective::new("erm", r.streams(), LossKind::Bce, Perturbation::None, optimizer);
            Box::new(m.with_conflict_every(every as usize))
        }
        "sam" => Box::new(SingleObjective::new(
            "sam",
            r.streams(),
            LossKind::Bce,
            Perturbation::Sam { rho: r.float("rho") },
            optimizer,
        )),
        "asam" => Box::new(SingleObjective::new(
            "asam",
            r.streams(),
            LossKind::Bce,
            Perturbation::Asam { rho: r.float("rho"), eta: r.float("eta") },
            optimizer,
        )),
        "sagm" => Box::new(SingleObjective::new(
            "sagm",
            r.streams(),
            LossKind::Bce,
            Perturbation::Sagm { rho: r.float("rho"), alpha: r.float("alpha") },
            optimizer,
        )),
        "cvar-auc" => {
            let rho = r.float("sam_rho");
            let pert = if rho > 0.0 { Perturbation::Sam { rho } } else { Perturbation::None };
            let loss = LossKind::CvarAuc { alpha: r.float("alpha"), gamma: r.float("gamma") };
            Box::new(SingleObjective::new("cvar-auc", r.streams(), loss, pert, optimizer))
        }
        "cs-dfd" => {
            let (uvs, cgr) = (r.boolean("uvs"), r.boolean("cgr"));
            if cgr && det.head_range().is_none() {
                anyhow::bail!(
                    "cs-dfd.cgr = true needs a projection head; build the detector with at least one head layer \
                     (or set cgr = false for the UVS-only ablation)"
                );
            }
            let reference = r.choice("path") == "reference";
            let rule = Rule::CsDfd { c: r.float("c"), tau: r.float("tau"), uvs, cgr, reference };
            Box::new(TwoStream::new("cs-dfd", rule, optimizer))
        }
        "pcgrad" => Box::new(TwoStream::new("pcgrad", TwoStream::pcgrad_seeded(seed), optimizer)),
        "cagrad" => {
            let rule = Rule::CaGrad { c: r.float("c"), reference: r.choice("path") == "reference" };
            Box::new(TwoStream::new("cagrad", rule, optimizer))
        }
        "roga" => Box::new(Roga::new(
            RogaParams { rho: r.float("rho"), alpha: r.float("alpha"), weight: r.float("weight") },
            optimizer,
        )),
        other => anyhow::bail!("method kind `{other}` is registered but has no implementation"),
    };
    Ok(m)
}

/// Sanity of the base optimizer's numbers (the serde layer only checks the shape).
pub fn check_optimizer(cfg: &OptimizerConfig) -> std::result::Result<(), String> {
    let bad = |what: &str, v: f64| Err(format!("optimizer.{what} = {v} is out of range"));
    match *cfg {
        OptimizerConfig::Sgd { lr, momentum, weight_decay, nesterov } => {
            if !(lr > 0.0 && lr.is_finite()) {
                return bad("lr", lr);
            }
            if !(0.0..1.0).contains(&momentum) {
                return bad("momentum", momentum);
            }
            if !(weight_decay >= 0.0) {
                return bad("weight_decay", weight_decay);
            }
            if nesterov && momentum == 0.0 {
                return Err("optimizer.nesterov = true needs momentum > 0 (as in PyTorch)".into());
            }
        }
        OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay }
        | OptimizerConfig::Adamw { lr, beta1, beta2, eps, weight_decay } => {
            if !(lr > 0.0 && lr.is_finite()) {
                return bad("lr", lr);
            }
            if !(0.0..1.0).contains(&beta1) {
                return bad("beta1", beta1);
            }
            if !(0.0..1.0).contains(&beta2) {
                return bad("beta2", beta2);
            }
            if !(eps > 0.0) {
                return bad("eps", eps);
            }
            if !(weight_decay >= 0.0) {
                return bad("weight_decay", weight_decay);
            }
        }
    }
    Ok(())
}
