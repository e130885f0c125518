//! ReLU as a CPU op with its own backward (f32, contiguous), with candle's values bit for bit.
//!
//! candle runs its element-wise ops on the calling thread (`bench` sets `CANDLE_NUM_THREADS=1`)
//! and differentiates `relu` as `grad * to_dtype(x >= 0)`: three full-size passes and two fresh
//! temporaries per backward. ReLUs that no BatchNorm can absorb (a ResNet block's `relu(y + skip)`,
//! the ReLU at the start of every Xception block, which its skip must not see) cost several times
//! what PyTorch's one parallel pass does at 256 px. Here each direction is one parallel pass:
//! `y = max(x, 0)` and `dx = dy * (x >= 0 ? 1 : 0)`, candle's own formulas, so the values and
//! gradients are the same bits as `Tensor::relu` (tested), also at 0, -0 and NaN.
//!
//! [`relu`] dispatches here for f32 CPU tensors and to candle's `relu` otherwise.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel work item: large enough that scheduling is negligible.
const CHUNK: usize = 1 << 15;

/// `max(x, 0)`: the op for f32 CPU tensors, candle's `relu` otherwise.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

/// `f(a[i], b[i])` for every element, in parallel chunks, into a fresh vector (written once,
/// never zero-filled first).
fn zip_map_par(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(a.len());
    out.spare_capacity_mut()[..a.len()].par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let (at, len) = (i * CHUNK, o.len());
        for ((o, &u), &v) in o.iter_mut().zip(&a[at..at + len]).zip(&b[at..at + len]) {
            o.write(f(u, v));
        }
    });
    // SAFETY: every element of 0..len was written by exactly one chunk above.
    unsafe { out.set_len(a.len()) };
    out
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "dfbench-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice("relu", s, l, "input")?;
        // candle's `relu` for f32 is `v.max(0.0)` (a NaN becomes 0).
        Ok((CpuStorage::F32(zip_map_par(x, x, |v, _| v.max(0.0))), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (xs, xl) = arg.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs)) = (&*xs, &*gs) else {
            candle_core::bail!("relu backward: operands must be on the CPU");
        };
        let x = super::f32_slice("relu backward", xs, xl, "input")?;
        let dy = super::f32_slice("relu backward", gs, gl, "output gradient")?;
        if x.len() != dy.len() {
            candle_core::bail!("relu backward: input {:?} and output gradient {:?} differ", arg.dims(), grad.dims());
        }
        // candle: `grad * to_dtype(x >= 0)`; the product with 0.0 keeps its sign and NaNs as there.
        let dx = zip_map_par(x, dy, |v, d| d * if v >= 0.0 { 1.0 } else { 0.0 });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Values and gradients bit for bit against candle's `relu`, over more than one chunk, with
    /// zeros of both signs, NaNs, infinities and subnormals among the inputs and the gradients.
    #[test]
    fn same_bits_as_candle_relu() {
        let n = 3 * CHUNK + 17;
        let special = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40, -1e-40];
        let x: Vec<f32> = (0..n)
            .map(|i| if i % 11 == 0 { special[(i / 11) % special.len()] } else { ((i * 7919 % 2001) as f32 - 1000.0) / 97.0 })
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| if i % 13 == 0 { special[(i / 13) % special.len()] } else { ((i * 31 % 999) as f32 - 499.0) / 53.0 })
            .collect();
        let dev = Device::Cpu;
        let xv = Var::from_tensor(&Tensor::from_vec(x, n, &dev).unwrap()).unwrap();
        let upstream = Tensor::from_vec(up, n, &dev).unwrap();
        let ours = relu(xv.as_tensor()).unwrap();
        let theirs = xv.as_tensor().relu().unwrap();
        assert_eq!(bits(&ours), bits(&theirs), "forward");
        let g_ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(bits(g_ours.get(&xv).unwrap()), bits(g_theirs.get(&xv).unwrap()), "gradient");
    }

    #[test]
    fn same_bits_on_one_and_two_threads_and_non_contiguous_input() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 8, 40, 33), &dev).unwrap().transpose(2, 3).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| bits(&relu(&x).unwrap()))
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), bits(&x.relu().unwrap()));
    }
}
