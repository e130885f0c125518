//! Parameter storage with deterministic, seeded initialisation.
//!
//! candle's CPU generator cannot be seeded and `VarMap` iterates a `HashMap`, so the project keeps
//! its own store: names in a `BTreeMap` (one fixed order for flattening gradients) and every
//! initial value drawn from a ChaCha generator seeded by the protocol.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f64),
    /// N(0, std^2).
    Normal { std: f64 },
    /// N(0, std^2) truncated to +-2 std (timm's ViT init).
    TruncNormal { std: f64 },
    /// U(lo, hi).
    Uniform { lo: f64, hi: f64 },
    /// He/Kaiming normal, fan-in mode, ReLU gain: N(0, 2/fan_in).
    KaimingNormal { fan_in: usize },
    /// PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    TorchDefault { fan_in: usize },
}

/// All trainable parameters and non-trainable buffers (BatchNorm running statistics) of a model.
#[derive(Debug, Clone)]
pub struct ParamStore {
    device: Device,
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    /// The dtype convolutions and matmuls compute in (`layers::Conv2d`, `layers::Linear`); the
    /// parameters themselves stay f32 (master weights) whatever it is.
    compute: DType,
}

impl ParamStore {
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone(), params: BTreeMap::new(), buffers: BTreeMap::new(), compute: DType::F32 }
    }

    /// Layers built from this store compute their convolutions and matmuls in `dtype` (F32 or
    /// BF16: mixed precision with f32 master weights, f32 BatchNorm and loss). Set it before
    /// building the model: layers read it when they are created.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            candle_core::bail!("compute dtype {dtype:?}: expected F32 or BF16");
        }
        self.compute = dtype;
        Ok(self)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// See [`ParamStore::with_compute_dtype`].
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Trainable parameters, sorted by name: the fixed order of every flat gradient view.
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.params.iter()
    }

    /// Non-trainable state (BatchNorm running mean/var), sorted by name.
    pub fn buffers(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.buffers.iter()
    }

    pub fn param(&self, name: &str) -> Option<&Var> {
        self.params.get(name)
    }

    pub fn buffer(&self, name: &str) -> Option<&Var> {
        self.buffers.get(name)
    }

    /// Total number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Moves every trainable f32 scalar `ulps` representable values up (`f32::next_up`): a
    /// model that is the same as this one to rounding level. Training it gives a run that differs
    /// from the unnudged one only through how rounding differences grow, which is what the noise
    /// floor of docs/statistics.md measures. Buffers (BatchNorm statistics) are left alone.
    pub fn nudge_ulps(&self, ulps: u32) -> Result<()> {
        if ulps == 0 {
            return Ok(());
        }
        for var in self.params.values() {
            let t = var.as_tensor();
            if t.dtype() != DType::F32 {
                candle_core::bail!("nudge_ulps: parameters are f32 master weights, found {:?}", t.dtype());
            }
            let mut values = t.flatten_all()?.to_vec1::<f32>()?;
            for x in &mut values {
                for _ in 0..ulps {
                    *x = x.next_up();
                }
            }
            var.set(&Tensor::from_vec(values, t.shape(), t.device())?)?;
        }
        Ok(())
    }

    /// A builder that creates parameters under `prefix` using a generator seeded with `seed`.
    pub fn builder(self, seed: u64) -> ParamBuilder {
        ParamBuilder {
            inner: Arc::new(Mutex::new(BuilderInner { store: self, rng: ChaCha8Rng::seed_from_u64(seed) })),
            prefix: String::new(),
        }
    }
}

struct BuilderInner {
    store: ParamStore,
    rng: ChaCha8Rng,
}

/// Creates named parameters; `pp` gives a builder for a sub-module (`prefix.name`).
/// Cloning is cheap and all clones share one store and one generator, so the draw order is
/// the construction order, which is deterministic.
#[derive(Clone)]
pub struct ParamBuilder {
    inner: Arc<Mutex<BuilderInner>>,
    prefix: String,
}

impl ParamBuilder {
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { inner: self.inner.clone(), prefix }
    }

    pub fn device(&self) -> Device {
        self.inner.lock().expect("param builder poisoned").store.device.clone()
    }

    /// The dtype convolutions and matmuls of layers built here compute in
    /// ([`ParamStore::with_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.inner.lock().expect("param builder poisoned").store.compute
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// A trainable parameter. Its tensor shares storage with the stored `Var`, so optimizer
    /// updates are seen by the layer that holds it.
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let full = self.full_name(name);
        let mut inner = self.inner.lock().expect("param builder poisoned");
        if inner.store.params.contains_key(&full) || inner.store.buffers.contains_key(&full) {
            candle_core::bail!("parameter `{full}` created twice");
        }
        let shape = shape.into();
        let device = inner.store.device.clone();
        let t = sample(&mut inner.rng, &shape, init, &device)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        inner.store.params.insert(full, var);
        Ok(out)
    }

    /// A non-trainable buffer (e.g. BatchNorm running statistics) filled with `value`.
    pub fn buffer(&self, name: &str, shape: impl Into<Shape>, value: f64) -> Result<Var> {
        let full = self.full_name(name);
        let mut inner = self.inner.lock().expect("param builder poisoned");
        if inner.store.params.contains_key(&full) || inner.store.buffers.contains_key(&full) {
            candle_core::bail!("buffer `{full}` created twice");
        }
        let device = inner.store.device.clone();
        let var = Var::from_tensor(&Tensor::full(value as f32, shape.into(), &device)?)?;
        inner.store.buffers.insert(full, var.clone());
        Ok(var)
    }

    /// Draws from the shared generator, for layers that need randomness at build time.
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        let mut inner = self.inner.lock().expect("param builder poisoned");
        f(&mut inner.rng)
    }

    /// The store with everything created so far (the builder and its clones keep working on it).
    pub fn store(&self) -> ParamStore {
        self.inner.lock().expect("param builder poisoned").store.clone()
    }
}

fn sample(rng: &mut ChaCha8Rng, shape: &Shape, init: Init, device: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let data: Vec<f32> = match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(c) => vec![c as f32; n],
        Init::Normal { std } => (0..n).map(|_| (normal(rng) * std) as f32).collect(),
        Init::TruncNormal { std } => (0..n)
            .map(|_| loop {
                let z = normal(rng);
                if z.abs() <= 2.0 {
                    break (z * std) as f32;
                }
            })
            .collect(),
        Init::Uniform { lo, hi } => (0..n).map(|_| rng.random_range(lo..hi) as f32).collect(),
        Init::KaimingNormal { fan_in } => {
            let std = (2.0 / fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| (normal(rng) * std) as f32).collect()
        }
        Init::TorchDefault { fan_in } => {
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        }
    };
    Tensor::from_vec(data, shape.clone(), device)?.to_dtype(DType::F32)
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_sorted_names() -> Result<()> {
        let build = |seed| -> Result<(Vec<String>, Vec<f32>)> {
            let b = ParamStore::new(&Device::Cpu).builder(seed);
            b.pp("z").param("w", (3, 2), Init::KaimingNormal { fan_in: 2 })?;
            b.pp("a").param("w", 4, Init::TorchDefault { fan_in: 4 })?;
            let store = b.store();
            let names = store.trainable().map(|(n, _)| n.clone()).collect();
            let vals = store.param("z.w").unwrap().flatten_all()?.to_vec1::<f32>()?;
            Ok((names, vals))
        };
        let (n1, v1) = build(7)?;
        let (_, v2) = build(7)?;
        let (_, v3) = build(8)?;
        assert_eq!(n1, vec!["a.w".to_string(), "z.w".to_string()]);
        assert_eq!(v1, v2);
        assert_ne!(v1, v3);
        Ok(())
    }

    /// The nudge against the IEEE-754 bit pattern (for finite non-negative x the next value up
    /// is bits + 1; for negative x it is bits - 1; -0.0 and 0.0 both go to the smallest
    /// subnormal), on hand-picked values; buffers are untouched.
    #[test]
    fn nudge_moves_each_weight_up_by_whole_ulps_and_leaves_buffers() -> Result<()> {
        let b = ParamStore::new(&Device::Cpu).builder(0);
        b.param("w", 6, Init::Zeros)?;
        b.buffer("running_var", 2, 1.0)?;
        let store = b.store();
        let w = [1.0f32, -1.0, 0.0, -0.0, 3.5e-3, -7.25e4];
        store.param("w").unwrap().set(&Tensor::new(&w[..], &Device::Cpu)?)?;
        store.nudge_ulps(0)?;
        let read = |s: &ParamStore| s.param("w").unwrap().to_vec1::<f32>();
        assert_eq!(read(&store)?, w, "0 ulps changes nothing");
        store.nudge_ulps(2)?;
        let by_bits = |x: f32| -> f32 {
            if x == 0.0 {
                f32::from_bits(1)
            } else if x > 0.0 {
                f32::from_bits(x.to_bits() + 1)
            } else {
                f32::from_bits(x.to_bits() - 1)
            }
        };
        let expected: Vec<u32> = w.iter().map(|&x| by_bits(by_bits(x)).to_bits()).collect();
        let got: Vec<u32> = read(&store)?.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, expected);
        assert_eq!(f32::from_bits(expected[0]), 1.0 + 2.0 * f32::EPSILON);
        assert_eq!(store.buffer("running_var").unwrap().to_vec1::<f32>()?, vec![1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn duplicate_names_are_refused() {
        let b = ParamStore::new(&Device::Cpu).builder(0);
        b.param("w", 2, Init::Zeros).unwrap();
        assert!(b.param("w", 2, Init::Zeros).is_err());
    }
}
