//! MesoNet-4 and MesoInception-4 (Afchar et al. 2018) as in DeepfakeBench
//! (`training/networks/mesonet.py`), parameter names included.
//!
//! Convolutions have no bias, as in DeepfakeBench. Unlike DeepfakeBench's port, every
//! convolution has its own BatchNorm (`bn1`..`bn4` in Meso4, `bn1`/`bn2` after the two 5x5 convs
//! of MesoInception4), as in Afchar et al.'s original network: DeepfakeBench shares one BatchNorm
//! between two convolutions, so its running statistics average two layers' activations and
//! evaluation-mode outputs are normalised with statistics of neither layer (on our synthetic
//! benchmark that shifted almost every real test frame above 0.5). DeepfakeBench meso checkpoints
//! therefore do not load as they are. The inception branches have no activation.
//!
//! The feature is the flattened output of the last 4x4 max-pool: `16 * (S / 32)^2` for an
//! `S x S` input (1024 at DeepfakeBench's 256 px), i.e. what feeds the classifier's
//! dropout + 16-unit dense layer (which belong to the detector head, not here).
use candle_core::{Result, Tensor};

use crate::layers::{BatchNorm2d, Conv2d, ConvCfg, ConvInit};
use crate::model::{Backbone, Mode};
use crate::ops::pool::{max_pool2d, pool_out_size};
use crate::params::ParamBuilder;

/// Trainable parameters: 4 convs (216 + 1600 + 3200 + 6400) + bn1..bn4 (2 x (8 + 8 + 16 + 16)).
pub const MESO4_PARAMS: usize = 11_512;
/// Trainable parameters of MesoInception-4 (see the test for the sum).
pub const MESO_INCEPTION4_PARAMS: usize = 12_123;

fn conv(
    pb: &ParamBuilder,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    pad: usize,
    dil: usize,
) -> Result<Conv2d> {
    Conv2d::new(
        &pb.pp(name),
        cin,
        cout,
        k,
        ConvCfg::default().padding(pad).dilation(dil),
        ConvInit::TorchDefault,
    )
}

/// Side length after the four pools (2, 2, 2, 4), floor mode as PyTorch.
pub(crate) fn meso_out_side(image_size: usize) -> Result<usize> {
    let mut s = image_size;
    for k in [2, 2, 2, 4] {
        s = pool_out_size(s, k, k, 0)
            .map_err(|e| candle_core::Error::Msg(format!("meso: image size {image_size} too small ({e})")))?;
    }
    Ok(s)
}

pub struct Meso4 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    conv4: Conv2d,
    bn4: BatchNorm2d,
    feature_dim: usize,
}

impl Meso4 {
    pub fn new(pb: &ParamBuilder, image_size: usize) -> Result<Self> {
        let side = meso_out_side(image_size)?;
        let conv1 = conv(pb, "conv1", 3, 8, 3, 1, 1)?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), 8)?;
        let conv2 = conv(pb, "conv2", 8, 8, 5, 2, 1)?;
        let bn2 = BatchNorm2d::new(&pb.pp("bn2"), 8)?;
        let conv3 = conv(pb, "conv3", 8, 16, 5, 2, 1)?;
        let bn3 = BatchNorm2d::new(&pb.pp("bn3"), 16)?;
        let conv4 = conv(pb, "conv4", 16, 16, 5, 2, 1)?;
        let bn4 = BatchNorm2d::new(&pb.pp("bn4"), 16)?;
        Ok(Self { conv1, bn1, conv2, bn2, conv3, bn3, conv4, bn4, feature_dim: 16 * side * side })
    }
}

impl Backbone for Meso4 {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "meso4")?;
        let x = max_pool2d(&self.bn1.forward_after_relu(&self.conv1.forward(x)?, mode)?, 2, 2, 0)?;
        let x = max_pool2d(&self.bn2.forward_after_relu(&self.conv2.forward(&x)?, mode)?, 2, 2, 0)?;
        let x = max_pool2d(&self.bn3.forward_after_relu(&self.conv3.forward(&x)?, mode)?, 2, 2, 0)?;
        let x = max_pool2d(&self.bn4.forward_after_relu(&self.conv4.forward(&x)?, mode)?, 4, 4, 0)?;
        x.flatten_from(1)
    }

    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}

/// One inception layer: four branches (1x1; 1x1 then 3x3; 1x1 then 3x3 dilation 2; 1x1 then 3x3
/// dilation 3) concatenated, BatchNorm, 2x2 max-pool.
struct Inception {
    c1: Conv2d,
    c2_1: Conv2d,
    c2_2: Conv2d,
    c3_1: Conv2d,
    c3_2: Conv2d,
    c4_1: Conv2d,
    c4_2: Conv2d,
    bn: BatchNorm2d,
}

impl Inception {
    fn new(
        pb: &ParamBuilder,
        idx: usize,
        cin: usize,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> Result<Self> {
        let n = |s: &str| format!("Incption{idx}_{s}");
        Ok(Self {
            c1: conv(pb, &n("conv1"), cin, a, 1, 0, 1)?,
            c2_1: conv(pb, &n("conv2_1"), cin, b, 1, 0, 1)?,
            c2_2: conv(pb, &n("conv2_2"), b, b, 3, 1, 1)?,
            c3_1: conv(pb, &n("conv3_1"), cin, c, 1, 0, 1)?,
            c3_2: conv(pb, &n("conv3_2"), c, c, 3, 2, 2)?,
            c4_1: conv(pb, &n("conv4_1"), cin, d, 1, 0, 1)?,
            c4_2: conv(pb, &n("conv4_2"), d, d, 3, 3, 3)?,
            bn: BatchNorm2d::new(&pb.pp(n("bn")), a + b + c + d)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x1 = self.c1.forward(x)?;
        let x2 = self.c2_2.forward(&self.c2_1.forward(x)?)?;
        let x3 = self.c3_2.forward(&self.c3_1.forward(x)?)?;
        let x4 = self.c4_2.forward(&self.c4_1.forward(x)?)?;
        let y = Tensor::cat(&[x1, x2, x3, x4], 1)?;
        max_pool2d(&self.bn.forward(&y, mode)?, 2, 2, 0)
    }
}

pub struct MesoInception4 {
    inc1: Inception,
    inc2: Inception,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    feature_dim: usize,
}

impl MesoInception4 {
    pub fn new(pb: &ParamBuilder, image_size: usize) -> Result<Self> {
        let side = meso_out_side(image_size)?;
        let inc1 = Inception::new(pb, 1, 3, 1, 4, 4, 2)?;
        let inc2 = Inception::new(pb, 2, 11, 2, 4, 4, 2)?;
        let conv1 = conv(pb, "conv1", 12, 16, 5, 2, 1)?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), 16)?;
        let conv2 = conv(pb, "conv2", 16, 16, 5, 2, 1)?;
        let bn2 = BatchNorm2d::new(&pb.pp("bn2"), 16)?;
        Ok(Self { inc1, inc2, conv1, bn1, conv2, bn2, feature_dim: 16 * side * side })
    }
}

impl Backbone for MesoInception4 {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "meso4-inception")?;
        let x = self.inc2.forward(&self.inc1.forward(x, mode)?, mode)?;
        let x = max_pool2d(&self.bn1.forward_after_relu(&self.conv1.forward(&x)?, mode)?, 2, 2, 0)?;
        let x = max_pool2d(&self.bn2.forward_after_relu(&self.conv2.forward(&x)?, mode)?, 4, 4, 0)?;
        x.flatten_from(1)
    }

    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}
