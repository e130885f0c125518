//! Xception (Chollet 2017) in the layout of DeepfakeBench's `training/networks/xception.py`
//! (itself Cadene's / FaceForensics' port), parameter names included: `conv1`, `bn1`, `conv2`,
//! `bn2`, `block{1..12}.rep.{i}.conv1` (depthwise) / `.pointwise` / BN at `rep.{i}`,
//! `block{n}.skip` / `skipbn`, `conv3.{conv1,pointwise}`, `bn3`, `conv4.*`, `bn4`.
//! `rep` indices count the ReLU and max-pool entries of the original `nn.Sequential`, so they
//! match the checkpoint keys. `last_linear` and DeepfakeBench's unused `adjust_channel` are not
//! part of the backbone. The feature is `mean_hw(relu(bn4(conv4(...))))`, 2048 wide (what
//! DeepfakeBench's classifier feeds to `last_linear`). Init: PyTorch defaults (DeepfakeBench
//! does not re-initialise).
use candle_core::{Result, Tensor};

use crate::layers::{BatchNorm2d, Conv2d, ConvCfg, ConvInit, global_avg_pool};
use crate::model::{Backbone, Mode};
use crate::ops::pool::max_pool2d;
use crate::params::ParamBuilder;

/// Cadene's xception (22,855,952) minus `last_linear` (2048 * 1000 + 1000).
pub const XCEPTION_PARAMS: usize = 20_806_952;

struct SeparableConv2d {
    conv1: Conv2d,
    pointwise: Conv2d,
}

impl SeparableConv2d {
    fn new(pb: &ParamBuilder, cin: usize, cout: usize) -> Result<Self> {
        let dw = ConvCfg::default().padding(1).groups(cin);
        Ok(Self {
            conv1: Conv2d::new(&pb.pp("conv1"), cin, cin, 3, dw, ConvInit::TorchDefault)?,
            pointwise: Conv2d::new(
                &pb.pp("pointwise"),
                cin,
                cout,
                1,
                ConvCfg::default(),
                ConvInit::TorchDefault,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.pointwise.forward(&self.conv1.forward(x)?)
    }
}

enum Rep {
    Relu,
    Sep(SeparableConv2d),
    Bn(BatchNorm2d),
    MaxPool(usize),
}

struct Block {
    rep: Vec<Rep>,
    skip: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        reps: usize,
        stride: usize,
        start_relu: bool,
        grow_first: bool,
    ) -> Result<Self> {
        // The original builds the skip first, then the `rep` list; keep that order for init draws.
        let skip = if cout != cin || stride != 1 {
            let conv = Conv2d::new(
                &pb.pp("skip"),
                cin,
                cout,
                1,
                ConvCfg::default().stride(stride),
                ConvInit::TorchDefault,
            )?;
            Some((conv, BatchNorm2d::new(&pb.pp("skipbn"), cout)?))
        } else {
            None
        };
        // (in, out) of each separable conv, in order.
        let mut seps = Vec::new();
        if grow_first {
            seps.push((cin, cout));
        }
        let mid = if grow_first { cout } else { cin };
        for _ in 0..reps - 1 {
            seps.push((mid, mid));
        }
        if !grow_first {
            seps.push((cin, cout));
        }
        let rp = pb.pp("rep");
        let mut rep = Vec::new();
        let mut idx = 0usize;
        for (i, (a, b)) in seps.into_iter().enumerate() {
            if i > 0 || start_relu {
                rep.push(Rep::Relu);
                idx += 1;
            }
            rep.push(Rep::Sep(SeparableConv2d::new(&rp.pp(idx.to_string()), a, b)?));
            idx += 1;
            rep.push(Rep::Bn(BatchNorm2d::new(&rp.pp(idx.to_string()), b)?));
            idx += 1;
        }
        if stride != 1 {
            rep.push(Rep::MaxPool(stride));
        }
        Ok(Self { rep, skip })
    }

    fn forward(&self, inp: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = inp.clone();
        let mut i = 0;
        while i < self.rep.len() {
            x = match (&self.rep[i], self.rep.get(i + 1)) {
                // A ReLU right after a BatchNorm (before every separable convolution but a
                // block's first) is folded into it: the bits of the two ops, two fewer passes.
                (Rep::Bn(bn), Some(Rep::Relu)) => {
                    i += 1;
                    bn.forward_then_relu(&x, mode)?
                }
                (Rep::Relu, _) => crate::ops::relu::relu(&x)?,
                (Rep::Sep(s), _) => s.forward(&x)?,
                (Rep::Bn(bn), _) => bn.forward(&x, mode)?,
                (Rep::MaxPool(s), _) => max_pool2d(&x, 3, *s, 1)?,
            };
            i += 1;
        }
        let skip = match &self.skip {
            Some((conv, bn)) => bn.forward(&conv.forward(inp)?, mode)?,
            None => inp.clone(),
        };
        x + skip
    }
}

pub struct Xception {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    blocks: Vec<Block>,
    conv3: SeparableConv2d,
    bn3: BatchNorm2d,
    conv4: SeparableConv2d,
    bn4: BatchNorm2d,
}

impl Xception {
    pub fn new(pb: &ParamBuilder) -> Result<Self> {
        let conv1 =
            Conv2d::new(&pb.pp("conv1"), 3, 32, 3, ConvCfg::default().stride(2), ConvInit::TorchDefault)?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), 32)?;
        let conv2 = Conv2d::new(&pb.pp("conv2"), 32, 64, 3, ConvCfg::default(), ConvInit::TorchDefault)?;
        let bn2 = BatchNorm2d::new(&pb.pp("bn2"), 64)?;
        let mut specs =
            vec![(64, 128, 2, 2, false, true), (128, 256, 2, 2, true, true), (256, 728, 2, 2, true, true)];
        specs.extend(std::iter::repeat_n((728, 728, 3, 1, true, true), 8));
        specs.push((728, 1024, 2, 2, true, false));
        let blocks = specs
            .into_iter()
            .enumerate()
            .map(|(i, (a, b, r, s, sr, gf))| {
                Block::new(&pb.pp(format!("block{}", i + 1)), a, b, r, s, sr, gf)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            blocks,
            conv3: SeparableConv2d::new(&pb.pp("conv3"), 1024, 1536)?,
            bn3: BatchNorm2d::new(&pb.pp("bn3"), 1536)?,
            conv4: SeparableConv2d::new(&pb.pp("conv4"), 1536, 2048)?,
            bn4: BatchNorm2d::new(&pb.pp("bn4"), 2048)?,
        })
    }
}

impl Backbone for Xception {
    fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        super::check_images(x, "xception")?;
        let x = self.bn1.forward_then_relu(&self.conv1.forward(x)?, mode)?;
        let mut x = self.bn2.forward_then_relu(&self.conv2.forward(&x)?, mode)?;
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
        }
        let x = self.bn3.forward_then_relu(&self.conv3.forward(&x)?, mode)?;
        let x = self.bn4.forward_then_relu(&self.conv4.forward(&x)?, mode)?;
        global_avg_pool(&x)
    }

    fn feature_dim(&self) -> usize {
        2048
    }
}
