//! The detector: a backbone, an optional projection head (CGR's `phi`) and a one-logit classifier.
use candle_core::{Result, Tensor};

/// How a forward pass treats BatchNorm and dropout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running statistics updated, dropout active.
    Train,
    /// Batch statistics but running statistics left alone: the second (perturbed) pass of
    /// SAM/ASAM/SAGM/RoGA, so that one step updates them exactly once.
    TrainFrozenStats,
    /// Running statistics, no dropout.
    Eval,
}

impl Mode {
    pub fn is_training(self) -> bool {
        !matches!(self, Mode::Eval)
    }
}

/// A feature extractor: images `[B, 3, H, W]` to pooled features `[B, feature_dim]`.
pub trait Backbone: Send + Sync {
    fn forward_features(&self, images: &Tensor, mode: Mode) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
}
