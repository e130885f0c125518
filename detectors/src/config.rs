//! Serde-readable configuration of optimizers and learning-rate schedules. Protocol files embed
//! these tables directly, so field names here are the protocol's key names.
use serde::{Deserialize, Serialize};

/// Base optimizer. Sharpness-aware methods (SAM, ASAM, SAGM, RoGA) wrap it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient (PyTorch `Adam(weight_decay=...)`).
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay (PyTorch's AdamW default 0.01).
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } | Self::Adamw { lr, .. } => *lr,
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::Adam { lr: 2e-4, beta1: default_beta1(), beta2: default_beta2(), eps: default_eps(), weight_decay: 0.0 }
    }
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

/// Learning-rate schedule, stepped once per iteration (never once per run, the DeepfakeBench bug).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleConfig {
    Constant {
        #[serde(default)]
        warmup_steps: usize,
    },
    /// Multiply by `gamma` every `step_size` iterations.
    Step {
        step_size: usize,
        #[serde(default = "default_gamma")]
        gamma: f64,
        #[serde(default)]
        warmup_steps: usize,
    },
    /// Cosine from the base lr down to `min_lr` at the last step.
    Cosine {
        #[serde(default)]
        min_lr: f64,
        #[serde(default)]
        warmup_steps: usize,
    },
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self::Constant { warmup_steps: 0 }
    }
}

fn default_gamma() -> f64 {
    0.1
}
