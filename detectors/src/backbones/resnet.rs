//! ResNet-18/34 with torchvision's layout and parameter names (`conv1`, `bn1`,
//! `layer{1..4}.{i}.conv{1,2}`, `.bn{1,2}`, `.downsample.0` (1x1 conv) / `.downsample.1` (BN)),
//! without `fc`: the feature is the 512-wide global average pool. Initialisation as torchvision:
//! convs N(0, 2 / fan_out), BatchNorm weight 1 and bias 0.
use candle_core::{Result, Tensor};

use crate::layers::{BatchNorm2d, Conv2d, ConvCfg, ConvInit, global_avg_pool};
use crate::model::{Backbone, Mode};
use crate::ops::pool::max_pool2d;
use crate::params::ParamBuilder;

/// torchvision's resnet18 (11,689,512) minus `fc` (512 * 1000 + 1000).
pub const RESNET18_PARAMS: usize = 11_176_512;
/// torchvision's resnet34 (21,797,672) minus `fc`.
pub const RESNET34_PARAMS: usize = 21_284_672;

struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(pb: &ParamBuilder, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let c3 = ConvCfg::default().padding(1);
        let conv1 = Conv2d::new(&pb.pp("conv1"), cin, cout, 3, c3.stride(stride), ConvInit::KaimingFanOut)?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), cout)?;
        let conv2 = Conv2d::new(&pb.pp("conv2"), cout, cout, 3, c3, ConvInit::KaimingFanOut)?;
        let bn2 = BatchNorm2d::new(&pb.pp("bn2"), cout)?;
        let downsample = if stride != 1 || cin != cout {
            let ds = pb.pp("downsample");
            let conv = Conv2d::new(
                &ds.pp("0"),
                cin,
                cout,
                1,
                ConvCfg::default().stride(stride),
                ConvInit::KaimingFanOut,
            )?;
            Some((conv, BatchNorm2d::new(&ds.pp("1"), cout)?))
        } else {
            None
        };
        Ok(Self { conv1, bn1, conv2, bn2, downsample })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.bn1.forward_then_relu(&self.conv1.forward(x)?, mode)?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?, mode)?;
        let skip = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)?, mode)?,
            None => x.clone(),
        };
        crate::ops::relu::relu(&(y + skip)?)
    }
}

pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
}

impl ResNet {
    /// `layers`: blocks per stage, `[2, 2, 2, 2]` (resnet18) or `[3, 4, 6, 3]` (resnet34).
    pub fn new(pb: &ParamBuilder, layers: [usize; 4]) -> Result<Self> {
        let conv1 = Conv2d::new(
            &pb.pp("conv1"),
            3,
            64,
            7,
            ConvCfg::default().stride(2).padding(3),
            ConvInit::KaimingFanOut,
        )?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), 64)?;
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (stage, (&n, cout)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let lp = pb.pp(format!("layer{}", stage + 1));
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&lp.pp(i.to_string()), cin, cout, stride)?);
                cin = cout;
            }
        }
        Ok(Self { conv1, bn1, blocks })
    }
}

impl Backbone for ResNet {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "resnet")?;
        let x = self.bn1.forward_then_relu(&self.conv1.forward(x)?, mode)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
        }
        global_avg_pool(&x)
    }

    fn feature_dim(&self) -> usize {
        512
    }
}
