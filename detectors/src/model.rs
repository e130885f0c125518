//! The detector: a backbone, an optional projection head (CGR's `phi`) and a one-logit classifier.
use std::ops::Range;

use candle_core::{Result, Tensor};

use crate::gradvec::ParamSet;
use crate::layers::Linear;
use crate::params::{ParamBuilder, ParamStore};

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

/// Name prefixes of the detector's parameters (sorted: backbone < classifier < head).
pub const BACKBONE_PREFIX: &str = "backbone.";
pub const HEAD_PREFIX: &str = "head.";
pub const CLASSIFIER_PREFIX: &str = "classifier.";

/// Backbone, optional projection head `phi` and a one-logit classifier, all parameters in one
/// seeded `ParamStore` under `backbone.`, `head.` and `classifier.`.
pub struct Detector {
    backbone: Box<dyn Backbone>,
    /// Linear layers of `phi`, ReLU between consecutive ones; empty when there is no head.
    head: Vec<Linear>,
    classifier: Linear,
    store: ParamStore,
    params: ParamSet,
    head_range: Option<Range<usize>>,
}

impl Detector {
    /// Builds the backbone from `pb.pp("backbone")` with `build_backbone`, then a projection
    /// head of `head_layers` Linear layers of the feature width (ReLU between them; 0 = no head)
    /// and the classifier. Parameters are drawn in that order from `pb`'s seeded generator.
    pub fn new(
        pb: &ParamBuilder,
        head_layers: usize,
        build_backbone: impl FnOnce(&ParamBuilder) -> Result<Box<dyn Backbone>>,
    ) -> Result<Self> {
        let backbone = build_backbone(&pb.pp("backbone"))?;
        let d = backbone.feature_dim();
        if d == 0 {
            candle_core::bail!("backbone reports a feature width of 0");
        }
        let hp = pb.pp("head");
        let head = (0..head_layers)
            .map(|i| Linear::new(&hp.pp(i.to_string()), d, d, true))
            .collect::<Result<Vec<_>>>()?;
        let classifier = Linear::new(&pb.pp("classifier"), d, 1, true)?;
        let store = pb.store();
        for (name, _) in store.trainable() {
            if ![BACKBONE_PREFIX, HEAD_PREFIX, CLASSIFIER_PREFIX].iter().any(|p| name.starts_with(p)) {
                candle_core::bail!("parameter `{name}` lies outside backbone./head./classifier.");
            }
        }
        let params = ParamSet::from_store(&store);
        let head_range = params.prefix_range(HEAD_PREFIX);
        Ok(Self { backbone, head, classifier, store, params, head_range })
    }

    /// Logits `[B]` (score = sigmoid(logit) = probability of *fake*).
    pub fn forward(&self, images: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut f = self.backbone.forward_features(images, mode)?;
        for (i, l) in self.head.iter().enumerate() {
            if i > 0 {
                f = f.relu()?;
            }
            f = l.forward(&f)?;
        }
        self.classifier.forward(&f)?.squeeze(1)
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }
    /// The trainable parameters in flat (sorted-name) order.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }
    /// Flat index range of the projection head's parameters (CGR's `theta_p`), if any.
    pub fn head_range(&self) -> Option<Range<usize>> {
        self.head_range.clone()
    }
    pub fn head_layers(&self) -> usize {
        self.head.len()
    }
    pub fn feature_dim(&self) -> usize {
        self.backbone.feature_dim()
    }
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }
}
