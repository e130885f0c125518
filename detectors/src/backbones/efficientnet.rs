//! EfficientNet-B0/B4 with timm's module layout and parameter names (`conv_stem`, `bn1`,
//! `blocks.{stage}.{block}.{conv_dw,bn1,se.conv_reduce,se.conv_expand,conv_pw,bn2}` for the
//! first (depthwise-separable) stage, `blocks.{s}.{b}.{conv_pw,bn1,conv_dw,bn2,se.*,conv_pwl,bn3}`
//! for the inverted-residual (MBConv) stages, `conv_head`, `bn2`), without `classifier`: the
//! feature is the global average pool of the head (1280 for B0, 1792 for B4).
//!
//! Two variants with the same names and shapes, each equal to its reference in eval mode:
//! - [`Variant::Timm`] (`efficientnet-b0/b4`): timm's `efficientnet_b*`, symmetric PyTorch
//!   padding `k / 2`, BatchNorm eps 1e-5.
//! - [`Variant::Tf`] (`tf-efficientnet-b0/b4`): the TensorFlow original as ported by timm
//!   (`tf_efficientnet_b*`) and by efficientnet_pytorch (`efficientnet-b*`, the weights
//!   DeepfakeBench, SBI and CS-DFD start from): TF "SAME" padding computed from each input's size
//!   (on stride-2 layers of even-sized inputs the extra row/column goes bottom/right), eps 1e-3.
//! - [`Variant::TfStatic`] (`efficientnet-pytorch-b0/b4`): efficientnet_pytorch as
//!   `EfficientNet.from_pretrained` builds it, which DeepfakeBench, SBI and CS-DFD use: TF "SAME"
//!   padding fixed when the model is built, for its nominal image size (224 px for B0, 380 px for
//!   B4), and applied to inputs of any size. It equals `Tf` when every stride-2 layer sees an input
//!   of the same parity as at the nominal size (B4: sizes 28 mod 32, e.g. 380, 316, 412), and
//!   differs otherwise (e.g. DeepfakeBench's 256 px).
//! - BatchNorm momentum 0.1 as everywhere in this crate (training only).
//! - Drop-connect (stochastic depth) is omitted: timm's model default `drop_path_rate` is 0.
//! - Initialisation as timm (`_init_weight_goog`): convs N(0, 2 / fan_out), BN 1 / 0.
//!
//! efficientnet_pytorch's names (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...) are
//! mapped onto these by [`reference_name`], the one place that knows them.
use candle_core::{Result, Tensor};

use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, ConvInit, SqueezeExcite, global_avg_pool};
use crate::model::{Backbone, Mode};
use crate::params::ParamBuilder;

/// timm efficientnet_b0 (5,288,548) minus the classifier (1280 * 1000 + 1000).
pub const EFFICIENTNET_B0_PARAMS: usize = 4_007_548;
/// timm efficientnet_b4 (19,341,616) minus the classifier (1792 * 1000 + 1000).
pub const EFFICIENTNET_B4_PARAMS: usize = 17_548_616;

/// Which reference an EfficientNet reproduces (padding and BatchNorm eps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// timm `efficientnet_b*`: symmetric padding, eps 1e-5.
    Timm,
    /// timm `tf_efficientnet_b*`: TF "SAME" padding for each input's size, eps 1e-3.
    Tf,
    /// efficientnet_pytorch: TF "SAME" padding for this nominal input size, eps 1e-3.
    TfStatic(usize),
}

impl Variant {
    pub fn bn_eps(self) -> f64 {
        match self {
            Variant::Timm => 1e-5,
            Variant::Tf | Variant::TfStatic(_) => 1e-3,
        }
    }
}

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

/// The blocks' activation. After a BatchNorm it is folded into it (`forward_then_silu`, timm's
/// `BatchNormAct2d`); this constant is the squeeze-excite's.
const ACT: Activation = Activation::Silu;

fn bn(pb: &ParamBuilder, name: &str, c: usize, v: Variant) -> Result<BatchNorm2d> {
    BatchNorm2d::with_eps(&pb.pp(name), c, v.bn_eps())
}

/// A convolution with odd kernel `k` padded as its variant's reference does.
struct PaddedConv {
    conv: Conv2d,
    kernel: usize,
    variant: Variant,
    /// `TfStatic`: the size this layer's input has at the nominal image size.
    nominal_input: usize,
}

impl PaddedConv {
    fn new(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        (stride, groups): (usize, usize),
        variant: Variant,
        nominal_input: usize,
    ) -> Result<Self> {
        let cfg = ConvCfg::default().stride(stride).padding(k / 2).groups(groups);
        let conv = Conv2d::new(pb, cin, cout, k, cfg, ConvInit::KaimingFanOut)?;
        Ok(Self { conv, kernel: k, variant, nominal_input })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.conv.cfg;
        if self.variant == Variant::Timm || c.stride == 1 {
            // For stride 1 and an odd kernel TF's "SAME" is the symmetric k / 2.
            return self.conv.forward(x);
        }
        // TF "SAME": total padding max((ceil(n / s) - 1) s + k - n, 0), the smaller half first.
        // Padding symmetrically by the smaller half and adding the remainder at the end equals it.
        let (_, _, h, w) = x.dims4()?;
        let total = |n: usize| ((n.div_ceil(c.stride) - 1) * c.stride + self.kernel).saturating_sub(n);
        let (th, tw) = match self.variant {
            // efficientnet_pytorch's `Conv2dStaticSamePadding`: computed once, for the nominal size.
            Variant::TfStatic(_) => (total(self.nominal_input), total(self.nominal_input)),
            _ => (total(h), total(w)),
        };
        let (ph, pw) = (th / 2, tw / 2);
        // Per-side padding: the CUDA depthwise kernel pads in place, the CPU pads explicitly
        // where the sides differ (as this layer always did), bf16 pads and uses candle's conv.
        self.conv.forward_with_pads(x, [ph, th - ph, pw, tw - pw])
    }
}

enum Block {
    /// Stage 0: depthwise conv, BN, SiLU, SE, pointwise conv, BN.
    DepthwiseSeparable {
        conv_dw: PaddedConv,
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
        conv_dw: PaddedConv,
        bn2: BatchNorm2d,
        se: SqueezeExcite,
        conv_pwl: Conv2d,
        bn3: BatchNorm2d,
        skip: bool,
    },
}

impl Block {
    fn new(
        pb: &ParamBuilder,
        (cin, cout): (usize, usize),
        k: usize,
        stride: usize,
        exp: usize,
        v: Variant,
        nominal_input: usize,
    ) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let skip = stride == 1 && cin == cout;
        // timm reduces SE relative to the block input (`se_ratio / exp_ratio` of the mid width);
        // efficientnet_pytorch's `int(input_filters * 0.25)` agrees for multiples of 4.
        let rd = ((cin as f64) * 0.25).round().max(1.0) as usize;
        let pw = |name: &str, a: usize, b: usize| Conv2d::new(&pb.pp(name), a, b, 1, ConvCfg::default(), init);
        if exp == 1 {
            Ok(Block::DepthwiseSeparable {
                conv_dw: PaddedConv::new(&pb.pp("conv_dw"), cin, cin, k, (stride, cin), v, nominal_input)?,
                bn1: bn(pb, "bn1", cin, v)?,
                se: SqueezeExcite::new(&pb.pp("se"), cin, rd, ACT, init)?,
                conv_pw: pw("conv_pw", cin, cout)?,
                bn2: bn(pb, "bn2", cout, v)?,
                skip,
            })
        } else {
            let mid = round_channels((cin * exp) as f64);
            Ok(Block::InvertedResidual {
                conv_pw: pw("conv_pw", cin, mid)?,
                bn1: bn(pb, "bn1", mid, v)?,
                conv_dw: PaddedConv::new(&pb.pp("conv_dw"), mid, mid, k, (stride, mid), v, nominal_input)?,
                bn2: bn(pb, "bn2", mid, v)?,
                se: SqueezeExcite::new(&pb.pp("se"), mid, rd, ACT, init)?,
                conv_pwl: pw("conv_pwl", mid, cout)?,
                bn3: bn(pb, "bn3", cout, v)?,
                skip,
            })
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (y, skip) = match self {
            Block::DepthwiseSeparable { conv_dw, bn1, se, conv_pw, bn2, skip } => {
                let y = bn1.forward_then_silu(&conv_dw.forward(x)?, mode)?;
                let y = se.forward(&y)?;
                (bn2.forward(&conv_pw.forward(&y)?, mode)?, *skip)
            }
            Block::InvertedResidual { conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, skip } => {
                let y = bn1.forward_then_silu(&conv_pw.forward(x)?, mode)?;
                let y = bn2.forward_then_silu(&conv_dw.forward(&y)?, mode)?;
                let y = se.forward(&y)?;
                (bn3.forward(&conv_pwl.forward(&y)?, mode)?, *skip)
            }
        };
        if skip { y + x } else { Ok(y) }
    }
}

pub struct EfficientNet {
    conv_stem: PaddedConv,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    conv_head: Conv2d,
    bn2: BatchNorm2d,
    feature_dim: usize,
}

impl EfficientNet {
    /// `width`/`depth`: the compound-scaling multipliers (B0: 1.0/1.0, B4: 1.4/1.8; the tests
    /// also build reduced ones, which timm and efficientnet_pytorch accept too).
    pub fn new(pb: &ParamBuilder, width: f64, depth: f64, variant: Variant) -> Result<Self> {
        let init = ConvInit::KaimingFanOut;
        let ch = |c: usize| round_channels(c as f64 * width);
        let stem = ch(32);
        // efficientnet_pytorch's static padding follows the nominal size through the strides.
        let mut nominal = match variant {
            Variant::TfStatic(size) => size,
            _ => 0,
        };
        let conv_stem = PaddedConv::new(&pb.pp("conv_stem"), 3, stem, 3, (2, 1), variant, nominal)?;
        nominal = nominal.div_ceil(2);
        let bn1 = bn(pb, "bn1", stem, variant)?;
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (si, &(repeats, k, stride, exp, cout)) in STAGES.iter().enumerate() {
            let cout = ch(cout);
            // timm `depth_trunc='ceil'`; one block string per stage, so just ceil(r * depth).
            let n = (repeats as f64 * depth).ceil() as usize;
            let sp = pb.pp("blocks").pp(si.to_string());
            for bi in 0..n {
                let s = if bi == 0 { stride } else { 1 };
                blocks.push(Block::new(&sp.pp(bi.to_string()), (cin, cout), k, s, exp, variant, nominal)?);
                nominal = nominal.div_ceil(s);
                cin = cout;
            }
        }
        let head = ch(1280);
        let conv_head = Conv2d::new(&pb.pp("conv_head"), cin, head, 1, ConvCfg::default(), init)?;
        let bn2 = bn(pb, "bn2", head, variant)?;
        Ok(Self { conv_stem, bn1, blocks, conv_head, bn2, feature_dim: head })
    }
}

impl Backbone for EfficientNet {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "efficientnet")?;
        let mut x = self.bn1.forward_then_silu(&self.conv_stem.forward(x)?, mode)?;
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
        }
        let x = self.bn2.forward_then_silu(&self.conv_head.forward(&x)?, mode)?;
        global_avg_pool(&x)
    }

    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}

/// efficientnet_pytorch (lukemelas) and DeepfakeBench names -> timm names; timm names pass
/// through. `_blocks.N` is the N-th block overall, numbered across stages, so the stage table
/// and the depth multiplier (`depth`, as in [`EfficientNet::new`]) place it.
///
/// | efficientnet_pytorch | timm (stage 0: no expansion) | timm (stages 1-6) |
/// |---|---|---|
/// | `_conv_stem`, `_bn0` | `conv_stem`, `bn1` | |
/// | `_blocks.N._expand_conv`, `._bn0` | - | `blocks.s.b.conv_pw`, `.bn1` |
/// | `_blocks.N._depthwise_conv`, `._bn1` | `blocks.0.b.conv_dw`, `.bn1` | `.conv_dw`, `.bn2` |
/// | `_blocks.N._se_reduce`, `._se_expand` | `.se.conv_reduce`, `.se.conv_expand` | same |
/// | `_blocks.N._project_conv`, `._bn2` | `.conv_pw`, `.bn2` | `.conv_pwl`, `.bn3` |
/// | `_conv_head`, `_bn1`, `_fc` | `conv_head`, `bn2`, `classifier` | |
///
/// DeepfakeBench's detectors hold the network as `efficientnet.`; that prefix is dropped.
pub fn reference_name(name: &str, depth: f64) -> String {
    let name = name.strip_prefix("efficientnet.").unwrap_or(name);
    let top = [("_conv_stem.", "conv_stem."), ("_bn0.", "bn1."), ("_conv_head.", "conv_head."), ("_bn1.", "bn2."), ("_fc.", "classifier.")];
    for (from, to) in top {
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    let Some(rest) = name.strip_prefix("_blocks.") else { return name.to_string() };
    let Some((n, rest)) = rest.split_once('.') else { return name.to_string() };
    let Ok(mut n) = n.parse::<usize>() else { return name.to_string() };
    let mut stage = None;
    for (si, &(repeats, ..)) in STAGES.iter().enumerate() {
        let count = (repeats as f64 * depth).ceil() as usize;
        if n < count {
            stage = Some((si, n));
            break;
        }
        n -= count;
    }
    let Some((si, bi)) = stage else { return name.to_string() };
    let (module, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let mapped = match (si == 0, module) {
        (_, "_se_reduce") => "se.conv_reduce",
        (_, "_se_expand") => "se.conv_expand",
        (_, "_depthwise_conv") => "conv_dw",
        (false, "_expand_conv") => "conv_pw",
        (false, "_bn0") => "bn1",
        (false, "_bn1") => "bn2",
        (false, "_project_conv") => "conv_pwl",
        (false, "_bn2") => "bn3",
        (true, "_bn1") => "bn1",
        (true, "_project_conv") => "conv_pw",
        (true, "_bn2") => "bn2",
        _ => return name.to_string(),
    };
    format!("blocks.{si}.{bi}.{mapped}.{tail}")
}
