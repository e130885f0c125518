//! EfficientNet-B0/B4 with timm's module layout and parameter names (`conv_stem`, `bn1`,
//! `blocks.{stage}.{block}.{conv_dw,bn1,se.conv_reduce,se.conv_expand,conv_pw,bn2}` for the
//! first (depthwise-separable) stage, `blocks.{s}.{b}.{conv_pw,bn1,conv_dw,bn2,se.*,conv_pwl,bn3}`
//! for the inverted-residual (MBConv) stages, `conv_head`, `bn2`), without `classifier`: the
//! feature is the global average pool of the head (1280 for B0, 1792 for B4).
//!
//! Choices (documented differences from some references):
//! - Symmetric PyTorch padding `k / 2` (timm's `efficientnet_b*`). timm's `tf_efficientnet_b*`
//!   weights have the same names and shapes and load, but were trained with TF "SAME" padding
//!   (asymmetric on stride-2 layers), so features shift slightly.
//! - BatchNorm eps 1e-3 (the TF/`efficientnet_pytorch` value, used by DeepfakeBench's B4),
//!   momentum 0.1 as everywhere in this crate.
//! - Drop-connect (stochastic depth) is omitted: timm's model default `drop_path_rate` is 0.
//! - Initialisation as timm (`_init_weight_goog`): convs N(0, 2 / fan_out), BN 1 / 0.
use candle_core::{Result, Tensor};

use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, ConvInit, SqueezeExcite, global_avg_pool};
use crate::model::{Backbone, Mode};
use crate::params::ParamBuilder;

/// timm efficientnet_b0 (5,288,548) minus the classifier (1280 * 1000 + 1000).
pub const EFFICIENTNET_B0_PARAMS: usize = 4_007_548;
/// timm efficientnet_b4 (19,341,616) minus the classifier (1792 * 1000 + 1000).
pub const EFFICIENTNET_B4_PARAMS: usize = 17_548_616;

/// BatchNorm eps used by every EfficientNet BatchNorm here.
pub const BN_EPS: f64 = 1e-3;

/// timm's `make_divisible(v, 8)`: nearest multiple of 8, never more than 10% below `v`.
pub fn round_channels(v: f64) -> usize {
    let divisor = 8.0;
    let mut new_v = ((v + divisor / 2.0) / divisor).floor() * divisor;
    new_v = new_v.max(divisor);
    if new_v < 0.9 * v {
        new_v += divisor;
    }
    new_v as usize
}

/// (repeats, kernel, stride, expansion, out channels) of the seven B0 stages.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

const ACT: Activation = Activation::Silu;

fn bn(pb: &ParamBuilder, name: &str, c: usize) -> Result<BatchNorm2d> {
    BatchNorm2d::with_eps(&pb.pp(name), c, BN_EPS)
}

enum Block {
    /// Stage 0: depthwise conv, BN, SiLU, SE, pointwise conv, BN.
    DepthwiseSeparable {
        conv_dw: Conv2d,
        bn1: BatchNorm2d,
        se: SqueezeExcite,
        conv_pw: Conv2d,
        bn2: BatchNorm2d,
        skip: bool,
    },
    /// MBConv: expand 1x1, BN, SiLU, depthwise, BN, SiLU, SE, project 1x1, BN.
    InvertedResidual {
        conv_pw: Conv2d,
        bn1: BatchNorm2d,
        conv_dw: Conv2d,
        bn2: BatchNorm2d,
        se: SqueezeExcite,
        conv_pwl: Conv2d,
        bn3: BatchNorm2d,
        skip: bool,
    },
}

impl Block {
    fn new(pb: &ParamBuilder, cin: usize, cout: usize, k: usize, stride: usize, exp: usize) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let skip = stride == 1 && cin == cout;
        // timm reduces SE relative to the block input (`se_ratio / exp_ratio` of the mid width).
        let rd = ((cin as f64) * 0.25).round() as usize;
        let dw_cfg = |c: usize| ConvCfg::default().stride(stride).padding(k / 2).groups(c);
        if exp == 1 {
            Ok(Block::DepthwiseSeparable {
                conv_dw: Conv2d::new(&pb.pp("conv_dw"), cin, cin, k, dw_cfg(cin), init)?,
                bn1: bn(pb, "bn1", cin)?,
                se: SqueezeExcite::new(&pb.pp("se"), cin, rd, ACT, init)?,
                conv_pw: Conv2d::new(&pb.pp("conv_pw"), cin, cout, 1, ConvCfg::default(), init)?,
                bn2: bn(pb, "bn2", cout)?,
                skip,
            })
        } else {
            let mid = round_channels((cin * exp) as f64);
            Ok(Block::InvertedResidual {
                conv_pw: Conv2d::new(&pb.pp("conv_pw"), cin, mid, 1, ConvCfg::default(), init)?,
                bn1: bn(pb, "bn1", mid)?,
                conv_dw: Conv2d::new(&pb.pp("conv_dw"), mid, mid, k, dw_cfg(mid), init)?,
                bn2: bn(pb, "bn2", mid)?,
                se: SqueezeExcite::new(&pb.pp("se"), mid, rd, ACT, init)?,
                conv_pwl: Conv2d::new(&pb.pp("conv_pwl"), mid, cout, 1, ConvCfg::default(), init)?,
                bn3: bn(pb, "bn3", cout)?,
                skip,
            })
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (y, skip) = match self {
            Block::DepthwiseSeparable { conv_dw, bn1, se, conv_pw, bn2, skip } => {
                let y = ACT.forward(&bn1.forward(&conv_dw.forward(x)?, mode)?)?;
                let y = se.forward(&y)?;
                (bn2.forward(&conv_pw.forward(&y)?, mode)?, *skip)
            }
            Block::InvertedResidual { conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, skip } => {
                let y = ACT.forward(&bn1.forward(&conv_pw.forward(x)?, mode)?)?;
                let y = ACT.forward(&bn2.forward(&conv_dw.forward(&y)?, mode)?)?;
                let y = se.forward(&y)?;
                (bn3.forward(&conv_pwl.forward(&y)?, mode)?, *skip)
            }
        };
        if skip { y + x } else { Ok(y) }
    }
}

pub struct EfficientNet {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    conv_head: Conv2d,
    bn2: BatchNorm2d,
    feature_dim: usize,
}

impl EfficientNet {
    /// `width`/`depth`: the compound-scaling multipliers (B0: 1.0/1.0, B4: 1.4/1.8).
    pub fn new(pb: &ParamBuilder, width: f64, depth: f64) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let ch = |c: usize| round_channels(c as f64 * width);
        let stem = ch(32);
        let conv_stem =
            Conv2d::new(&pb.pp("conv_stem"), 3, stem, 3, ConvCfg::default().stride(2).padding(1), init)?;
        let bn1 = bn(pb, "bn1", stem)?;
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (si, &(repeats, k, stride, exp, cout)) in STAGES.iter().enumerate() {
            let cout = ch(cout);
            // timm `depth_trunc='ceil'`; one block string per stage, so just ceil(r * depth).
            let n = (repeats as f64 * depth).ceil() as usize;
            let sp = pb.pp("blocks").pp(si.to_string());
            for bi in 0..n {
                let s = if bi == 0 { stride } else { 1 };
                blocks.push(Block::new(&sp.pp(bi.to_string()), cin, cout, k, s, exp)?);
                cin = cout;
            }
        }
        let head = ch(1280);
        let conv_head = Conv2d::new(&pb.pp("conv_head"), cin, head, 1, ConvCfg::default(), init)?;
        let bn2 = bn(pb, "bn2", head)?;
        Ok(Self { conv_stem, bn1, blocks, conv_head, bn2, feature_dim: head })
    }
}

impl Backbone for EfficientNet {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "efficientnet")?;
        let mut x = ACT.forward(&self.bn1.forward(&self.conv_stem.forward(x)?, mode)?)?;
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
        }
        let x = ACT.forward(&self.bn2.forward(&self.conv_head.forward(&x)?, mode)?)?;
        global_avg_pool(&x)
    }

    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}
