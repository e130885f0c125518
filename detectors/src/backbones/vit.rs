//! Vision Transformer with timm's `vit_base_patch16_224` names: `patch_embed.proj`, `cls_token`,
//! `pos_embed`, `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`;
//! no `head`. The feature is the final-norm class token (timm's `global_pool='token'`).
//! Pre-norm blocks, LayerNorm eps 1e-6, exact GELU, qkv with bias, no dropout (timm's defaults).
//!
//! Image sizes: `pos_embed` is created for the build-time grid `(S / patch)^2 + 1`. A checkpoint
//! trained at another size (224 -> 197 positions) is resized once at load time by
//! [`crate::weights::resize_pos_embed`] (bilinear, `align_corners = false`), when the load
//! options ask for it. The image must be a multiple of the patch size.
use candle_core::{D, Result, Tensor};

use crate::layers::{Activation, Conv2d, ConvCfg, ConvInit, LayerNorm, Linear};
use crate::model::{Backbone, Mode};
use crate::params::{Init, ParamBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitConfig {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
}

pub const VIT_B16: VitConfig = VitConfig { patch: 16, dim: 768, depth: 12, heads: 12, mlp_ratio: 4 };
pub const VIT_TINY: VitConfig = VitConfig { patch: 16, dim: 64, depth: 2, heads: 2, mlp_ratio: 4 };

impl VitConfig {
    /// Number of patches per side for an `image_size` square input.
    pub fn grid(&self, image_size: usize) -> Result<usize> {
        if image_size == 0 || !image_size.is_multiple_of(self.patch) {
            candle_core::bail!(
                "vit: image size {image_size} must be a positive multiple of the patch size {}",
                self.patch
            );
        }
        Ok(image_size / self.patch)
    }

    /// Trainable parameters without the head, from the layer shapes.
    pub fn num_params(&self, image_size: usize) -> Result<usize> {
        let d = self.dim;
        let g = self.grid(image_size)?;
        let hidden = d * self.mlp_ratio;
        let patch = 3 * self.patch * self.patch * d + d;
        let tokens = d + (g * g + 1) * d;
        let block =
            2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d);
        Ok(patch + tokens + self.depth * block + 2 * d)
    }
}

const LN_EPS: f64 = 1e-6;

fn linear(pb: &ParamBuilder, name: &str, i: usize, o: usize) -> Result<Linear> {
    Linear::with_init(&pb.pp(name), i, o, Init::TruncNormal { std: 0.02 }, Some(Init::Zeros))
}

struct VitBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl VitBlock {
    fn new(pb: &ParamBuilder, cfg: &VitConfig) -> Result<Self> {
        let d = cfg.dim;
        let attn = pb.pp("attn");
        let mlp = pb.pp("mlp");
        Ok(Self {
            norm1: LayerNorm::new(&pb.pp("norm1"), d, LN_EPS)?,
            qkv: linear(&attn, "qkv", d, 3 * d)?,
            proj: linear(&attn, "proj", d, d)?,
            norm2: LayerNorm::new(&pb.pp("norm2"), d, LN_EPS)?,
            fc1: linear(&mlp, "fc1", d, d * cfg.mlp_ratio)?,
            fc2: linear(&mlp, "fc2", d * cfg.mlp_ratio, d)?,
            heads: cfg.heads,
        })
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        // [B, N, 3, H, hd] -> [3, B, H, N, hd]
        let qkv = self.qkv.forward_nd(x)?.reshape((b, n, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)? * (1.0 / (hd as f64).sqrt()))?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        // Mixed precision: the two attention products in bf16 like the block's Linear layers
        // (`layers::Linear`), the softmax in f32.
        let bf16 = self.qkv.compute == candle_core::DType::BF16;
        let mm = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            if bf16 {
                let bf = candle_core::DType::BF16;
                a.to_dtype(bf)?.matmul(&b.to_dtype(bf)?)?.to_dtype(candle_core::DType::F32)
            } else {
                a.matmul(b)
            }
        };
        let att = mm(&q, &k.t()?.contiguous()?)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = mm(&att, &v)?.transpose(1, 2)?.reshape((b, n, d))?;
        self.proj.forward_nd(&y)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attention(&self.norm1.forward(x)?)?)?;
        let h = Activation::Gelu.forward(&self.fc1.forward_nd(&self.norm2.forward(&x)?)?)?;
        x + self.fc2.forward_nd(&h)?
    }
}

pub struct Vit {
    proj: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VitBlock>,
    norm: LayerNorm,
    cfg: VitConfig,
    image_size: usize,
}

impl Vit {
    pub fn new(pb: &ParamBuilder, cfg: VitConfig, image_size: usize) -> Result<Self> {
        let g = cfg.grid(image_size)?;
        if cfg.heads == 0 || !cfg.dim.is_multiple_of(cfg.heads) {
            candle_core::bail!("vit: width {} not divisible by {} heads", cfg.dim, cfg.heads);
        }
        let d = cfg.dim;
        let proj = Conv2d::new(
            &pb.pp("patch_embed").pp("proj"),
            3,
            d,
            cfg.patch,
            ConvCfg::default().stride(cfg.patch).bias(true),
            ConvInit::TorchDefault,
        )?;
        let cls_token = pb.param("cls_token", (1, 1, d), Init::Normal { std: 1e-6 })?;
        let pos_embed = pb.param("pos_embed", (1, g * g + 1, d), Init::TruncNormal { std: 0.02 })?;
        let blocks = (0..cfg.depth)
            .map(|i| VitBlock::new(&pb.pp("blocks").pp(i.to_string()), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&pb.pp("norm"), d, LN_EPS)?;
        Ok(Self { proj, cls_token, pos_embed, blocks, norm, cfg, image_size })
    }
}

impl Backbone for Vit {
    fn forward_features(&self, images: &Tensor, _mode: Mode) -> Result<Tensor> {
        super::check_images(images, "vit")?;
        let (b, _, h, w) = images.dims4()?;
        if h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "vit: built for {0}x{0} images (position embeddings), got {h}x{w}",
                self.image_size
            );
        }
        let d = self.cfg.dim;
        let x = self.proj.forward(images)?.flatten_from(2)?.transpose(1, 2)?; // [B, N, D]
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?;
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)
    }

    fn feature_dim(&self) -> usize {
        self.cfg.dim
    }
}
