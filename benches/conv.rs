//! Forward + backward (and forward alone) of one convolution layer: dfbench's CPU conv op against
//! candle's `conv2d`, side by side in one run, on Meso4's layer shapes (batch 32, 128 px input),
//! ResNet-18 shapes and a depthwise (EfficientNet-like) shape. See BENCHMARKS.md for the recorded ratios.
//!
//! Run: `cargo bench -p detectors --bench conv -- --warm-up-time 1 --measurement-time 3`
use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use detectors::ops::conv::{Conv2dParams, conv2d_cpu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Layer {
    name: &'static str,
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    params: Conv2dParams,
    /// The network's input image needs no gradient; deeper layers' inputs do.
    input_grad: bool,
}

const fn layer(
    name: &'static str,
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    (stride, padding, groups): (usize, usize, usize),
    input_grad: bool,
) -> Layer {
    Layer { name, x, w, params: Conv2dParams { stride, padding, dilation: 1, groups }, input_grad }
}

const LAYERS: &[Layer] = &[
    // Meso4 at 128 px: conv + BN + pool 2, three times, then pool 4.
    layer("meso4_c1_3to8_k3_128px", (32, 3, 128, 128), (8, 3, 3, 3), (1, 1, 1), false),
    layer("meso4_c2_8to8_k5_64px", (32, 8, 64, 64), (8, 8, 5, 5), (1, 2, 1), true),
    layer("meso4_c3_8to16_k5_32px", (32, 8, 32, 32), (16, 8, 5, 5), (1, 2, 1), true),
    layer("meso4_c4_16to16_k5_16px", (32, 16, 16, 16), (16, 16, 5, 5), (1, 2, 1), true),
    // ResNet-18 shapes.
    layer("resnet_64to64_k3_32px", (32, 64, 32, 32), (64, 64, 3, 3), (1, 1, 1), true),
    layer("resnet_128to128_k3_16px", (32, 128, 16, 16), (128, 128, 3, 3), (1, 1, 1), true),
    layer("resnet_down_64to128_k1_s2_32px", (32, 64, 32, 32), (128, 64, 1, 1), (2, 0, 1), true),
    // Depthwise 3x3 (EfficientNet-b0 first block at 128 px).
    layer("depthwise_32ch_k3_64px", (32, 32, 64, 64), (32, 1, 3, 3), (1, 1, 32), true),
];

type ConvFn<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Tensor;

fn rand_tensor(rng: &mut ChaCha8Rng, dims: (usize, usize, usize, usize)) -> Tensor {
    let len = dims.0 * dims.1 * dims.2 * dims.3;
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for l in LAYERS {
        let x = rand_tensor(&mut rng, l.x);
        let xv = Var::from_tensor(&x).unwrap();
        let input = if l.input_grad { xv.as_tensor().clone() } else { x.clone() };
        let w = Var::from_tensor(&rand_tensor(&mut rng, l.w)).unwrap();
        let p = l.params;
        let ours = |x: &Tensor, w: &Tensor| conv2d_cpu(x, w, p).unwrap();
        let candle = |x: &Tensor, w: &Tensor| x.conv2d(w, p.padding, p.stride, p.dilation, p.groups).unwrap();
        let mut group = c.benchmark_group(l.name);
        group.sample_size(10);
        let impls: [(&str, ConvFn); 2] = [("ours", &ours), ("candle", &candle)];
        for (name, conv) in impls {
            group.bench_function(name, |b| {
                b.iter(|| {
                    // Back-propagating from y itself seeds it with a contiguous tensor of ones: no
                    // loss computation in the timing.
                    let grads = conv(&input, w.as_tensor()).backward().unwrap();
                    std::hint::black_box(grads.get(&w).unwrap().dims().len())
                })
            });
            group.bench_function(format!("{name}_forward_only"), |b| {
                b.iter(|| std::hint::black_box(conv(&x, w.as_tensor()).dims().len()))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
