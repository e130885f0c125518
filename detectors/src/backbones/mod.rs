//! Backbone registry: every backbone a protocol may name.
use candle_core::Result;

use crate::model::Backbone;
use crate::params::ParamBuilder;

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
    BackboneInfo { name: "efficientnet-b0", description: "EfficientNet-B0 (timm naming)" },
    BackboneInfo { name: "efficientnet-b4", description: "EfficientNet-B4 (timm naming)" },
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

/// Builds a backbone by name, drawing its initial parameters from `pb`.
pub fn build(name: &str, _pb: &ParamBuilder) -> Result<Box<dyn Backbone>> {
    match find(name) {
        None => candle_core::bail!("unknown backbone `{name}`"),
        Some(_) => candle_core::bail!("backbone `{name}` is not built yet"),
    }
}
