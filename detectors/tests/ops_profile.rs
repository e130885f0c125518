//! `ops::profile`: the timers count each op kind once per call where the tiny net below has one
//! of it, split a convolution backward into its data and filter parts without losing time, stay
//! silent when off, and never change a training step's results (same bits with and without).
//!
//! The counters are process-wide: the tests in this file take one lock so that they do not see
//! each other's calls (other test files run in other processes).
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use detectors::batch::{Batch, StepInput};
use detectors::config::OptimizerConfig;
use detectors::gradvec::ParamSet;
use detectors::methods::{MethodParams, ParamValue, build_method};
use detectors::model::Detector;
use detectors::ops::batchnorm::batch_norm_train;
use detectors::ops::pool::{global_avg_pool, max_pool2d};
use detectors::ops::profile::{self, Kind, Totals};
use detectors::ops::{conv2d, conv2d_padded};
use detectors::optim::Optimizer;
use detectors::params::{Init, ParamStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

static LOCK: Mutex<()> = Mutex::new(());

fn rand_var(shape: &[usize], seed: u64) -> Var {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn calls(s: &[Totals], k: Kind) -> u64 {
    s.iter().find(|t| t.kind == k).unwrap().calls
}

/// One of each kind: dense 3x3 conv (its input a variable, so both of its gradients are
/// computed), depthwise 3x3, 1x1, BatchNorm, 2x2 max pool, global average pool; then one Adam
/// step over the five parameters.
struct TinyNet {
    x: Var,
    w_dense: Tensor,
    w_dw: Tensor,
    w_pw: Tensor,
    gamma: Tensor,
    beta: Tensor,
    set: ParamSet,
}

impl TinyNet {
    fn new() -> Self {
        let pb = ParamStore::new(&Device::Cpu).builder(0);
        let u = Init::Uniform { lo: -1.0, hi: 1.0 };
        let w_dense = pb.param("dense", (4, 4, 3, 3), u).unwrap();
        let w_dw = pb.param("dw", (4, 1, 3, 3), u).unwrap();
        let w_pw = pb.param("pw", (6, 4, 1, 1), u).unwrap();
        let gamma = pb.param("gamma", 6, u).unwrap();
        let beta = pb.param("beta", 6, u).unwrap();
        let set = ParamSet::from_store(&pb.store());
        Self { x: rand_var(&[2, 4, 8, 8], 1), w_dense, w_dw, w_pw, gamma, beta, set }
    }

    fn loss(&self) -> Result<Tensor> {
        let h = conv2d(self.x.as_tensor(), &self.w_dense, None, 1, 1, 1, 1)?;
        let h = conv2d(&h, &self.w_dw, None, 1, 1, 1, 4)?;
        let h = conv2d(&h, &self.w_pw, None, 1, 0, 1, 1)?;
        let (h, _, _) = batch_norm_train(&h, &self.gamma, &self.beta, 1e-5)?;
        let h = max_pool2d(&h, 2, 2, 0)?;
        // A weighted sum, so that the BatchNorm's gradients are not identically zero.
        let r = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((1, 6))?;
        global_avg_pool(&h)?.broadcast_mul(&r)?.sum_all()
    }
}

/// Forward, backward and one Adam step of the tiny net.
fn tiny_step(net: &TinyNet) -> Result<()> {
    let grads = net.loss()?.backward()?;
    let dirs: Vec<Tensor> = net
        .set
        .vars()
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("every parameter has a gradient").clone())
        .collect();
    let cfg = OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    Optimizer::new(&cfg).step(&net.set, &dirs, 1e-3)
}

#[test]
fn each_kind_of_a_tiny_net_is_counted_once_per_call() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let net = TinyNet::new();
    tiny_step(&net).unwrap(); // warm (scratch buffers), untimed
    profile::reset();
    profile::set_enabled(true);
    let t0 = Instant::now();
    tiny_step(&net).unwrap();
    let wall = t0.elapsed().as_nanos() as u64;
    profile::set_enabled(false);
    let s = profile::snapshot();
    let expected = [
        (Kind::ConvFwd, 1),
        (Kind::ConvBwdData, 1),
        (Kind::ConvBwdFilter, 1),
        (Kind::DepthwiseFwd, 1),
        (Kind::DepthwiseBwd, 1),
        (Kind::PointwiseFwd, 1),
        (Kind::PointwiseBwdData, 1),
        (Kind::PointwiseBwdFilter, 1),
        (Kind::BatchNormFwd, 1),
        (Kind::BatchNormBwd, 1),
        // The max pool and the global average pool forward; the max pool backward.
        (Kind::PoolFwd, 2),
        (Kind::PoolBwd, 1),
        (Kind::Optimizer, 1),
    ];
    for (k, n) in expected {
        assert_eq!(calls(&s, k), n, "{k:?}: {s:?}");
        let t = s.iter().find(|t| t.kind == k).unwrap();
        assert!(t.nanos > 0, "{k:?} counted but timed 0 ns");
    }
    assert_eq!(s.len(), expected.len(), "every kind checked");
    // The spans are disjoint parts of the step, and a split backward hands out exactly the
    // wall time it measured: the sum cannot exceed the step.
    let timed: u64 = s.iter().map(|t| t.nanos).sum();
    assert!(timed <= wall, "timed {timed} ns > step {wall} ns");

    // Off: nothing recorded.
    profile::reset();
    tiny_step(&net).unwrap();
    assert!(profile::snapshot().iter().all(|t| t.calls == 0 && t.nanos == 0));
}

#[test]
fn an_input_without_gradient_counts_no_backward_data() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // A first layer: the image is a plain tensor, so the backward computes the weight gradient
    // only, and the whole call is backward-filter. Uneven TF-style padding goes through
    // `conv2d_padded` (an explicit pad, then the same op).
    let x = rand_var(&[2, 3, 9, 9], 7).as_tensor().detach();
    let w = rand_var(&[5, 3, 3, 3], 8);
    profile::reset();
    profile::set_enabled(true);
    let y = conv2d_padded(&x, w.as_tensor(), None, 2, [0, 1, 0, 1], 1, 1).unwrap();
    let _ = y.sum_all().unwrap().backward().unwrap();
    profile::set_enabled(false);
    let s = profile::snapshot();
    assert_eq!(calls(&s, Kind::ConvFwd), 1);
    assert_eq!(calls(&s, Kind::ConvBwdData), 0, "{s:?}");
    assert_eq!(calls(&s, Kind::ConvBwdFilter), 1);
}

/// Every parameter's and buffer's bits after `steps` ERM steps of `backbone` from seed 0, and the
/// step losses' bits.
fn train_bits(backbone: &str, size: usize, steps: usize) -> Vec<u32> {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let det = Detector::new(&pb, 0, |pb| detectors::backbones::build(backbone, pb, size)).unwrap();
    let adam = OptimizerConfig::Adam { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut params = MethodParams::new();
    params.set("streams", ParamValue::Str("original".into()));
    let mut method = build_method("erm", &params, &adam, &det, 0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = 4;
    let x: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
    let batch = Batch {
        images: Tensor::from_vec(x, (n, 3, size, size), &Device::Cpu).unwrap(),
        labels: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    };
    let input = StepInput { original: Some(batch), ..Default::default() };
    let mut bits = Vec::new();
    for s in 0..steps {
        let tr = method.step(&det, &input, s, 2e-4).unwrap();
        bits.push((tr.loss.to_bits() >> 32) as u32);
        bits.push(tr.loss.to_bits() as u32);
    }
    let store = pb.store();
    let tensors = det.params().vars().iter().chain(store.buffers().map(|(_, v)| v));
    for t in tensors {
        bits.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()));
    }
    bits
}

#[test]
fn profiling_leaves_training_steps_bit_identical() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // EfficientNet-B0 has every kind: dense stem, depthwise, 1x1 (SE included), BatchNorm, the
    // global pool; Meso4 adds max pooling.
    for (backbone, size) in [("efficientnet-b0", 32), ("meso4", 32)] {
        profile::set_enabled(false);
        let off = train_bits(backbone, size, 2);
        profile::reset();
        profile::set_enabled(true);
        let on = train_bits(backbone, size, 2);
        profile::set_enabled(false);
        let s = profile::snapshot();
        assert!(calls(&s, Kind::Optimizer) == 2, "{backbone}: {s:?}");
        assert!(calls(&s, Kind::BatchNormFwd) > 0 && calls(&s, Kind::ConvFwd) > 0, "{backbone}: {s:?}");
        if backbone == "efficientnet-b0" {
            assert!(calls(&s, Kind::DepthwiseBwd) > 0 && calls(&s, Kind::PointwiseBwdFilter) > 0, "{s:?}");
        }
        assert_eq!(off.len(), on.len());
        let first_diff = off.iter().zip(&on).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{backbone}: profiling changed value {first_diff:?}");
    }
}
