//! Layers built on the seeded parameter store.
use candle_core::{Result, Tensor};

use crate::params::{Init, ParamBuilder};

/// `y = x W^T + b`, PyTorch's layout (`weight: [out, in]`) and default initialisation.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = pb.param("weight", (out_dim, in_dim), Init::TorchDefault { fan_in: in_dim })?;
        let bias = if bias { Some(pb.param("bias", out_dim, Init::TorchDefault { fan_in: in_dim })?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x`: `[B, in]` -> `[B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
