//! What one training step consumes. The harness's data layer produces these; methods consume them.
use candle_core::Tensor;

/// One labelled mini-batch: `images` is `[B, 3, H, W]` f32 (already normalised),
/// `labels` is `[B]` f32 with 0 = real, 1 = fake.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
}

/// The streams available for one step (methods.md section 1). A method asks for the streams it
/// needs (`methods::StreamNeeds`); the runner fills only those.
#[derive(Debug, Clone, Default)]
pub struct StepInput {
    /// Real frames + fakes of the source manipulations (stream O).
    pub original: Option<Batch>,
    /// Real frames + online self-blended images (stream S).
    pub online: Option<Batch>,
    /// Per manipulation domain: real frames + that manipulation's fakes, in a fixed order.
    pub domains: Vec<(String, Batch)>,
}
