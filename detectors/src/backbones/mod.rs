//! Backbone registry: every backbone a protocol may name.
//!
//! Parameter names under the builder's prefix follow the reference implementations (torchvision
//! for ResNet, timm for EfficientNet and ViT, DeepfakeBench for MesoNet and Xception) so that
//! pretrained weights load by name with [`crate::weights::load_safetensors`].
use candle_core::{Result, Tensor};

use crate::model::Backbone;
use crate::params::ParamBuilder;

pub mod efficientnet;
pub mod meso;
pub mod resnet;
pub mod vit;
pub mod xception;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackboneInfo {
    pub name: &'static str,
    pub description: &'static str,
}

static REGISTRY: &[BackboneInfo] = &[
    BackboneInfo { name: "meso4", description: "MesoNet-4 (Afchar et al. 2018)" },
    BackboneInfo { name: "meso4-inception", description: "MesoInception-4 (Afchar et al. 2018)" },
    BackboneInfo { name: "resnet18", description: "ResNet-18 (torchvision naming)" },
    BackboneInfo { name: "resnet34", description: "ResNet-34 (torchvision naming)" },
    BackboneInfo { name: "efficientnet-b0", description: "EfficientNet-B0, timm's efficientnet_b0" },
    BackboneInfo { name: "efficientnet-b4", description: "EfficientNet-B4, timm's efficientnet_b4" },
    BackboneInfo {
        name: "tf-efficientnet-b0",
        description: "EfficientNet-B0 with TF padding, timm's tf_efficientnet_b0",
    },
    BackboneInfo {
        name: "tf-efficientnet-b4",
        description: "EfficientNet-B4 with TF padding, timm's tf_efficientnet_b4",
    },
    BackboneInfo {
        name: "efficientnet-pytorch-b0",
        description: "EfficientNet-B0 as efficientnet_pytorch builds it (TF padding fixed for 224 px)",
    },
    BackboneInfo {
        name: "efficientnet-pytorch-b4",
        description: "EfficientNet-B4 as efficientnet_pytorch builds it (TF padding fixed for 380 px; DeepfakeBench, SBI, CS-DFD)",
    },
    BackboneInfo { name: "xception", description: "Xception (Chollet 2017), DeepfakeBench's default" },
    BackboneInfo { name: "vit-b16", description: "ViT-B/16 (timm naming)" },
    BackboneInfo { name: "vit-tiny", description: "a tiny ViT for CPU tests (patch 16, width 64, depth 2)" },
];

pub fn registry() -> &'static [BackboneInfo] {
    REGISTRY
}

pub fn find(name: &str) -> Option<&'static BackboneInfo> {
    REGISTRY.iter().find(|b| b.name == name)
}

fn unknown(name: &str) -> candle_core::Error {
    let known: Vec<&str> = REGISTRY.iter().map(|b| b.name).collect();
    candle_core::Error::Msg(format!("unknown backbone `{name}` (known: {})", known.join(", ")))
}

/// Builds a backbone by name for `image_size x image_size` inputs, drawing its initial
/// parameters from `pb` (names relative to `pb`'s prefix).
///
/// The image size fixes Meso's flattened feature width (`16 * (S/32)^2`) and ViT's position
/// embeddings; the CNNs with global pooling accept any size at least as large as
/// [`min_image_size`].
pub fn build(name: &str, pb: &ParamBuilder, image_size: usize) -> Result<Box<dyn Backbone>> {
    let min = min_image_size(name).ok_or_else(|| unknown(name))?;
    if image_size < min {
        candle_core::bail!("backbone `{name}` needs images of at least {min}x{min} pixels, got {image_size}");
    }
    Ok(match name {
        "meso4" => Box::new(meso::Meso4::new(pb, image_size)?),
        "meso4-inception" => Box::new(meso::MesoInception4::new(pb, image_size)?),
        "resnet18" => Box::new(resnet::ResNet::new(pb, [2, 2, 2, 2])?),
        "resnet34" => Box::new(resnet::ResNet::new(pb, [3, 4, 6, 3])?),
        "efficientnet-b0" | "efficientnet-b4" | "tf-efficientnet-b0" | "tf-efficientnet-b4"
        | "efficientnet-pytorch-b0" | "efficientnet-pytorch-b4" => {
            let (width, depth, variant) = efficientnet_config(name).ok_or_else(|| unknown(name))?;
            Box::new(efficientnet::EfficientNet::new(pb, width, depth, variant)?)
        }
        "xception" => Box::new(xception::Xception::new(pb)?),
        "vit-b16" => Box::new(vit::Vit::new(pb, vit::VIT_B16, image_size)?),
        "vit-tiny" => Box::new(vit::Vit::new(pb, vit::VIT_TINY, image_size)?),
        _ => return Err(unknown(name)),
    })
}

/// (width, depth, variant) of a registered EfficientNet.
fn efficientnet_config(name: &str) -> Option<(f64, f64, efficientnet::Variant)> {
    use efficientnet::Variant::{Tf, TfStatic, Timm};
    Some(match name {
        "efficientnet-b0" => (1.0, 1.0, Timm),
        "efficientnet-b4" => (1.4, 1.8, Timm),
        "tf-efficientnet-b0" => (1.0, 1.0, Tf),
        "tf-efficientnet-b4" => (1.4, 1.8, Tf),
        // efficientnet_pytorch's nominal sizes (`efficientnet_params`).
        "efficientnet-pytorch-b0" => (1.0, 1.0, TfStatic(224)),
        "efficientnet-pytorch-b4" => (1.4, 1.8, TfStatic(380)),
        _ => return None,
    })
}

/// Translates a tensor name of a reference checkpoint into this backbone's own name: the one
/// place per family that knows the other naming schemes (torchvision, timm, Cadene and
/// DeepfakeBench use ours already; efficientnet_pytorch is mapped by
/// [`efficientnet::reference_name`]). Names it does not know pass through unchanged.
pub fn reference_name(backbone: &str, name: &str) -> String {
    match efficientnet_config(backbone) {
        Some((_, depth, _)) => efficientnet::reference_name(name, depth),
        None => name.to_string(),
    }
}

/// The reference's classifier (and other non-backbone) tensors, by our name: dropped when
/// pretrained weights are loaded.
/// (`last_layer.`, `adjust_channel.`: DeepfakeBench's backbone heads.)
pub const CLASSIFIER_PREFIXES: &[&str] =
    &["fc.", "head.", "classifier.", "last_linear.", "last_layer.", "adjust_channel."];

/// Refuses anything but an RGB batch `[B, 3, H, W]` with a clear message.
pub(crate) fn check_images(x: &Tensor, backbone: &str) -> Result<()> {
    match x.dims() {
        [_, 3, _, _] => Ok(()),
        d => candle_core::bail!("backbone `{backbone}`: expected images [B, 3, H, W], got shape {d:?}"),
    }
}

/// Smallest square input each backbone accepts (Meso: 32, as its pools divide by 32; Xception:
/// its two unpadded stem convs and four stride-2 stages need 29; ViT: one patch).
pub fn min_image_size(name: &str) -> Option<usize> {
    Some(match name {
        "meso4" | "meso4-inception" => 32,
        "resnet18" | "resnet34" => 32,
        "efficientnet-b0" | "efficientnet-b4" | "tf-efficientnet-b0" | "tf-efficientnet-b4" => 32,
        "efficientnet-pytorch-b0" | "efficientnet-pytorch-b4" => 32,
        "xception" => 32,
        "vit-b16" | "vit-tiny" => 16,
        _ => return None,
    })
}

/// Width of the pooled feature a backbone gives for a square input, without building it (what the
/// projection head and the classifier take); `None` for an unknown name or a size it rejects.
pub fn feature_dim(name: &str, image_size: usize) -> Option<usize> {
    if image_size < min_image_size(name)? {
        return None;
    }
    Some(match name {
        "meso4" | "meso4-inception" => 16 * meso::meso_out_side(image_size).ok()?.pow(2),
        "resnet18" | "resnet34" => 512,
        "efficientnet-b0" | "tf-efficientnet-b0" | "efficientnet-pytorch-b0" => 1280,
        "efficientnet-b4" | "tf-efficientnet-b4" | "efficientnet-pytorch-b4" => 1792,
        "xception" => 2048,
        "vit-b16" => 768,
        "vit-tiny" => 64,
        _ => return None,
    })
}

/// Trainable parameters of a backbone (no classifier), without building it; `None` for an
/// unknown name or an image size the backbone rejects. Only ViT's count depends on the size
/// (position embeddings). Every constant is checked against a built model in the tests.
pub fn num_params(name: &str, image_size: usize) -> Option<usize> {
    Some(match name {
        "meso4" => meso::MESO4_PARAMS,
        "meso4-inception" => meso::MESO_INCEPTION4_PARAMS,
        "resnet18" => resnet::RESNET18_PARAMS,
        "resnet34" => resnet::RESNET34_PARAMS,
        "efficientnet-b0" | "tf-efficientnet-b0" | "efficientnet-pytorch-b0" => efficientnet::EFFICIENTNET_B0_PARAMS,
        "efficientnet-b4" | "tf-efficientnet-b4" | "efficientnet-pytorch-b4" => efficientnet::EFFICIENTNET_B4_PARAMS,
        "xception" => xception::XCEPTION_PARAMS,
        "vit-b16" => vit::VIT_B16.num_params(image_size).ok()?,
        "vit-tiny" => vit::VIT_TINY.num_params(image_size).ok()?,
        _ => return None,
    })
}
