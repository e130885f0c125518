//! Layers built on the seeded parameter store.
//!
//! Parameter names follow PyTorch (`weight`, `bias`, `running_mean`, `running_var`) so that
//! torchvision/timm state dicts load by name (see [`crate::weights`]).
use std::sync::Mutex;

use candle_core::{D, DType, Result, Tensor, Var};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::Mode;
use crate::ops::batchnorm::{self, Relu};
use crate::params::{Init, ParamBuilder};

/// Mixed precision (`ParamStore::with_compute_dtype(BF16)`): the operands of a convolution or
/// matmul are cast to bf16 (the f32 parameter stays the master copy; candle's cast has a
/// backward, so the gradient arrives in f32), the product runs in bf16 with f32 accumulation in
/// cuBLAS / candle's CPU gemm, and the output is cast back to f32, so BatchNorm, activations,
/// pooling and the loss see f32 (and keep using the f32-only custom CPU ops). The bias is added in
/// f32.
///
/// CUDA only: candle's CPU backend has no bf16 matmul (nor, through im2col, conv2d), and this
/// says so rather than letting the first product fail with a bare dtype error.
fn bf16_operand(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        candle_core::bail!(
            "bf16 convolutions and matmuls need a CUDA device (candle's CPU backend has no bf16 matmul); \
             build the model in f32 on the CPU"
        );
    }
    x.to_dtype(DType::BF16)
}

/// `y = x W^T + b`, PyTorch's layout (`weight: [out, in]`) and default initialisation.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// F32, or BF16 for mixed precision (see [`bf16_operand`]).
    pub compute: DType,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = pb.param("weight", (out_dim, in_dim), Init::TorchDefault { fan_in: in_dim })?;
        let bias =
            if bias { Some(pb.param("bias", out_dim, Init::TorchDefault { fan_in: in_dim })?) } else { None };
        Ok(Self { weight, bias, compute: pb.compute_dtype() })
    }

    /// A Linear layer with explicit initialisers (timm's ViT: truncated normal weight, zero bias).
    pub fn with_init(
        pb: &ParamBuilder,
        in_dim: usize,
        out_dim: usize,
        weight_init: Init,
        bias_init: Option<Init>,
    ) -> Result<Self> {
        let weight = pb.param("weight", (out_dim, in_dim), weight_init)?;
        let bias = match bias_init {
            Some(init) => Some(pb.param("bias", out_dim, init)?),
            None => None,
        };
        Ok(Self { weight, bias, compute: pb.compute_dtype() })
    }

    /// `x`: `[B, in]` -> `[B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.compute == DType::BF16 {
            bf16_operand(x)?.matmul(&bf16_operand(&self.weight)?.t()?)?.to_dtype(DType::F32)?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x`: `[..., in]` -> `[..., out]` for any number of leading dimensions.
    pub fn forward_nd(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&0);
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let y = self.forward(&x.reshape((lead, in_dim))?)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(out_dims)
    }
}

/// Geometry of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCfg {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
}

impl Default for ConvCfg {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1, bias: false }
    }
}

impl ConvCfg {
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = d;
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// How a convolution's weight is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvInit {
    /// PyTorch's default (`kaiming_uniform_(a = sqrt 5)`): U(+-1/sqrt(fan_in)), bias likewise.
    TorchDefault,
    /// N(0, 2 / fan_out), `fan_out = out * k * k / groups` (torchvision ResNet, timm EfficientNet,
    /// Cadene's Xception); bias zero.
    KaimingFanOut,
}

/// 2-D convolution, weight `[out, in / groups, k, k]`, through [`crate::ops::conv2d`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub cfg: ConvCfg,
    /// F32, or BF16 for mixed precision (see [`bf16_operand`]).
    pub compute: DType,
}

impl Conv2d {
    pub fn new(
        pb: &ParamBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        cfg: ConvCfg,
        init: ConvInit,
    ) -> Result<Self> {
        if cfg.groups == 0 || !in_ch.is_multiple_of(cfg.groups) || !out_ch.is_multiple_of(cfg.groups) {
            candle_core::bail!("conv: {in_ch} -> {out_ch} channels not divisible into {} groups", cfg.groups);
        }
        let fan_in = in_ch / cfg.groups * kernel * kernel;
        let fan_out = out_ch / cfg.groups * kernel * kernel;
        let (w_init, b_init) = match init {
            ConvInit::TorchDefault => (Init::TorchDefault { fan_in }, Init::TorchDefault { fan_in }),
            // `KaimingNormal` is N(0, 2/n); passing fan-out as n gives torchvision's fan_out mode.
            ConvInit::KaimingFanOut => (Init::KaimingNormal { fan_in: fan_out }, Init::Zeros),
        };
        let weight = pb.param("weight", (out_ch, in_ch / cfg.groups, kernel, kernel), w_init)?;
        let bias = if cfg.bias { Some(pb.param("bias", out_ch, b_init)?) } else { None };
        Ok(Self { weight, bias, cfg, compute: pb.compute_dtype() })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_padding(x, self.cfg.padding)
    }

    /// [`Conv2d::forward`] with another symmetric padding (EfficientNet's TF "SAME" padding is
    /// computed per input).
    pub fn forward_with_padding(&self, x: &Tensor, padding: usize) -> Result<Tensor> {
        let c = self.cfg;
        if self.compute == DType::BF16 {
            // candle's own conv2d (its bf16 kernels), not `ops::conv2d`, whose custom CPU kernels
            // are f32-only.
            let y = bf16_operand(x)?
                .conv2d(&bf16_operand(&self.weight)?, padding, c.stride, c.dilation, c.groups)?
                .to_dtype(DType::F32)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
                None => Ok(y),
            };
        }
        crate::ops::conv2d(x, &self.weight, self.bias.as_ref(), c.stride, padding, c.dilation, c.groups)
    }

    /// As [`Self::forward_with_padding`] with per-side padding `[top, bottom, left, right]`
    /// (TF "SAME" pads the bottom and right more).
    pub fn forward_with_pads(&self, x: &Tensor, pads: [usize; 4]) -> Result<Tensor> {
        if self.compute == DType::BF16 {
            let [pt, pb, pl, pr] = pads;
            let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
            return self.forward_with_padding(&x, 0);
        }
        let c = self.cfg;
        crate::ops::conv2d_padded(x, &self.weight, self.bias.as_ref(), c.stride, pads, c.dilation, c.groups)
    }
}

/// PyTorch's `BatchNorm2d`: affine `weight`/`bias` (trainable) and `running_mean`/`running_var`
/// buffers.
///
/// - `Mode::Train`: normalises with the batch mean and biased batch variance and updates the
///   running statistics, `r <- (1 - momentum) r + momentum * s`, with the *unbiased* batch
///   variance (`n / (n - 1)` correction), exactly as PyTorch.
/// - `Mode::TrainFrozenStats`: batch statistics, running statistics untouched.
/// - `Mode::Eval`: running statistics.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    pub momentum: f64,
    channels: usize,
}

impl BatchNorm2d {
    /// eps 1e-5, momentum 0.1 (PyTorch's defaults).
    pub fn new(pb: &ParamBuilder, channels: usize) -> Result<Self> {
        Self::with_eps(pb, channels, 1e-5)
    }

    pub fn with_eps(pb: &ParamBuilder, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.param("weight", channels, Init::Ones)?,
            bias: pb.param("bias", channels, Init::Zeros)?,
            running_mean: pb.buffer("running_mean", channels, 0.0)?,
            running_var: pb.buffer("running_var", channels, 1.0)?,
            eps,
            momentum: 0.1,
            channels,
        })
    }

    /// Runs [`crate::ops::batchnorm`]: a fused kernel for f32 on the CPU, candle ops elsewhere.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, Relu::None)
    }

    /// `self.forward(&x.relu()?, mode)`, with the ReLU folded into the fused kernel on the CPU
    /// (same values and gradients, two fewer tensors and five fewer passes per step).
    pub fn forward_after_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, Relu::Input)
    }

    /// `self.forward(x, mode)?.relu()`, folded likewise.
    pub fn forward_then_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, Relu::Output)
    }

    /// `self.forward(x, mode)?.silu()` (timm's `BatchNormAct2d` with SiLU), with the SiLU folded
    /// into the fused kernel for f32 on the CPU (within a few ulp of candle's `silu`: a
    /// vectorised `exp`); the two separate ops elsewhere.
    pub fn forward_then_silu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_act(x, mode, Relu::None, true)
    }

    fn forward_with(&self, x: &Tensor, mode: Mode, relu: Relu) -> Result<Tensor> {
        self.forward_act(x, mode, relu, false)
    }

    /// `silu`: an output SiLU, only with `relu` [`Relu::None`].
    fn forward_act(&self, x: &Tensor, mode: Mode, relu: Relu, silu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels {
            candle_core::bail!("batch norm: expected {} channels, got input {:?}", self.channels, x.dims());
        }
        match mode {
            Mode::Eval => {
                let stats = (self.running_mean.as_tensor(), self.running_var.as_tensor());
                if silu {
                    batchnorm::batch_norm_eval_then_silu(x, &self.weight, &self.bias, stats, self.eps)
                } else {
                    batchnorm::batch_norm_eval_with(x, &self.weight, &self.bias, stats, self.eps, relu)
                }
            }
            Mode::Train | Mode::TrainFrozenStats => {
                let (y, mean, var) = if silu {
                    batchnorm::batch_norm_train_then_silu(x, &self.weight, &self.bias, self.eps)?
                } else {
                    batchnorm::batch_norm_train_with(x, &self.weight, &self.bias, self.eps, relu)?
                };
                if mode == Mode::Train {
                    batchnorm::update_running_stats(
                        (&self.running_mean, &self.running_var),
                        (mean, var),
                        self.momentum,
                        b * h * w,
                    )?;
                }
                Ok(y)
            }
        }
    }
}

/// Element-wise dropout with masks from a seeded generator (candle's own RNG cannot be seeded).
/// Active in `Train` and `TrainFrozenStats`; identity in `Eval`.
#[derive(Debug)]
pub struct Dropout {
    pub p: f64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    /// Seeds its generator from the builder's generator, so the masks are a function of the seed.
    pub fn new(pb: &ParamBuilder, p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability must be in [0, 1), got {p}");
        }
        let seed: u64 = pb.with_rng(|r| r.random());
        Ok(Self { p, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng poisoned");
            (0..n).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Layer normalisation over the last dimension with affine `weight`/`bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.param("weight", dim, Init::Ones)?,
            bias: pb.param("bias", dim, Init::Zeros)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Activation functions used by the backbones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu(f64),
    Silu,
    /// Exact (erf) GELU, PyTorch's and timm's default.
    Gelu,
    Sigmoid,
}

impl Activation {
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => crate::ops::relu::relu(x),
            Activation::LeakyRelu(slope) => leaky_relu(x, slope),
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        }
    }
}

/// `max(x, 0) + slope * min(x, 0)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    let zeros = x.zeros_like()?;
    x.maximum(&zeros)? + (x.minimum(&zeros)? * slope)?
}

/// Squeeze-and-excitation with timm's names (`conv_reduce`, `conv_expand`, both with bias):
/// `x * sigmoid(expand(act(reduce(mean_hw(x)))))`.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    pub conv_reduce: Conv2d,
    pub conv_expand: Conv2d,
    pub act: Activation,
}

impl SqueezeExcite {
    pub fn new(
        pb: &ParamBuilder,
        channels: usize,
        reduced: usize,
        act: Activation,
        init: ConvInit,
    ) -> Result<Self> {
        let cfg = ConvCfg::default().bias(true);
        Ok(Self {
            conv_reduce: Conv2d::new(&pb.pp("conv_reduce"), channels, reduced, 1, cfg, init)?,
            conv_expand: Conv2d::new(&pb.pp("conv_expand"), reduced, channels, 1, cfg, init)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.mean_keepdim((2, 3))?;
        let s = self.act.forward(&self.conv_reduce.forward(&s)?)?;
        // `x * sigmoid(logits)` in one op with its own backward on the CPU (f32).
        crate::ops::se::scale_by_sigmoid(x, &self.conv_expand.forward(&s)?)
    }
}

/// Global average pooling: `[B, C, H, W]` -> `[B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    crate::ops::pool::global_avg_pool(x)
}
