// TEMP (not committed): per-shape CPU time of fwd, dx-only, dw-only.
use candle_core::{Device, Tensor, Var};
use detectors::ops::conv::{Conv2dParams, conv2d_cpu};
fn cpu() -> f64 {
    let mut ns = 0u64;
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        if let Ok(t) = std::fs::read_to_string(e.unwrap().path().join("schedstat")) {
            ns += t.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    ns as f64 * 1e-6
}
fn main() {
    let wall = std::env::var_os("WALL").is_some();
    let now = || if wall { std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64() * 1e3 } else { cpu() };
    let layers: [(&str, usize, usize, usize, usize, usize, usize); 6] = [
        ("xc mid 1x1 728 8x8", 728, 728, 8, 1, 1, 8),
        ("xc exit 1x1 1024-1536 4x4", 1024, 1536, 4, 1, 1, 8),
        ("xc entry 1x1 256 32x32", 256, 256, 32, 1, 1, 8),
        ("r34 l1 64 3x3", 64, 64, 32, 3, 1, 16),
        ("r34 l3 256 3x3", 256, 256, 8, 3, 1, 16),
        ("r34 l4 512 3x3", 512, 512, 4, 3, 1, 16),
    ];
    for (name, ci, co, hw, k, st, n) in layers {
        let x = Tensor::randn(0f32, 1., (n, ci, hw, hw), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k), &Device::Cpu).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let p = Conv2dParams { stride: st, padding: k / 2, dilation: 1, groups: 1 };
        let (mut f, mut dx, mut dw) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..7 {
            let t = now();
            let y = conv2d_cpu(&x, &w, p).unwrap();
            let _ = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
            f = f.min(now() - t);
            let y = conv2d_cpu(xv.as_tensor(), &w, p).unwrap().sum_all().unwrap();
            let t = now();
            let g = y.backward().unwrap();
            let _ = g.get(&xv).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            dx = dx.min(now() - t);
            let y = conv2d_cpu(&x, wv.as_tensor(), p).unwrap().sum_all().unwrap();
            let t = now();
            let g = y.backward().unwrap();
            let _ = g.get(&wv).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            dw = dw.min(now() - t);
        }
        println!("{name:28} fwd {f:6.1}  dx {dx:6.1}  dw {dw:6.1} ms");
    }
}
