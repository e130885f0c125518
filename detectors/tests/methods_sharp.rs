//! SAM, ASAM, SAGM and RoGA on methods.md's quadratic reference problem, through the same
//! `SharpCore` / `RogaCore` code the detector methods run, with the loss computed by candle.
use candle_core::{Device, Result, Tensor};
use detectors::config::OptimizerConfig;
use detectors::gradvec::ParamSet;
use detectors::methods::Losses;
use detectors::methods::sharp::{Perturbation, RogaCore, RogaParams, SharpCore};
use detectors::model::Mode;
use detectors::params::{Init, ParamStore};

const H: [[f64; 4]; 4] =
    [[2.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, -1.0], [0.0, 0.0, -1.0, 1.5]];
const A: [f64; 4] = [1.0, -1.0, 0.5, 2.0];
const W0: [f32; 4] = [0.3, 0.8, -0.4, 1.0];

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 }
}

/// A one-parameter "model" named like a weight (ASAM scales parameters named `*weight*`).
fn quad_model() -> Result<(ParamStore, ParamSet)> {
    let b = ParamStore::new(&Device::Cpu).builder(0);
    b.pp("q").param("weight", 4, Init::Zeros)?;
    let store = b.store();
    store.param("q.weight").unwrap().set(&Tensor::new(&W0, &Device::Cpu)?)?;
    let set = ParamSet::from_store(&store);
    Ok((store, set))
}

/// `1/2 (w - a)^T H (w - a)` with candle (f32 parameters).
fn quad_loss(store: &ParamStore, a: &[f64; 4]) -> Result<Tensor> {
    let dev = Device::Cpu;
    let h: Vec<f32> = H.iter().flatten().map(|&x| x as f32).collect();
    let h = Tensor::from_vec(h, (4, 4), &dev)?;
    let a = Tensor::new(&a.map(|x| x as f32), &dev)?;
    let d = store.param("q.weight").unwrap().as_tensor().sub(&a)?;
    d.unsqueeze(0)?.matmul(&h)?.matmul(&d.unsqueeze(1)?)?.squeeze(0)?.squeeze(0)?.affine(0.5, 0.0)
}

fn w(store: &ParamStore) -> Vec<f32> {
    store.param("q.weight").unwrap().as_tensor().to_vec1::<f32>().unwrap()
}

fn run_sharp(pert: Perturbation) -> Result<(Vec<f32>, Vec<Mode>)> {
    let (store, set) = quad_model()?;
    let mut core = SharpCore::new(pert, &sgd());
    let mut modes = Vec::new();
    core.step(&set, 0.1, &mut |mode| {
        modes.push(mode);
        Ok(Losses::total_only(quad_loss(&store, &A)?))
    })?;
    Ok((w(&store), modes))
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() < tol, "{what}[{i}] = {g}, want {w} (all: {got:?})");
    }
}

#[test]
fn gradient_at_w0_is_the_reference() -> Result<()> {
    let (store, set) = quad_model()?;
    let g = quad_loss(&store, &A)?.backward()?;
    let g = g.get(set.vars()[0].as_tensor()).unwrap().to_vec1::<f32>()?;
    assert_close(&g, &[-0.5, 1.45, -1.7, -0.6], 1e-6, "g(w0)");
    Ok(())
}

#[test]
fn sam_reference_step_and_bn_modes() -> Result<()> {
    let (w1, modes) = run_sharp(Perturbation::Sam { rho: 0.05 })?;
    assert_close(&w1, &[0.350580914, 0.652465103, -0.220494136, 1.058310069], 1e-6, "SAM w1");
    // Running statistics move on the first pass only.
    assert_eq!(modes, vec![Mode::Train, Mode::TrainFrozenStats]);
    Ok(())
}

#[test]
fn asam_reference_step() -> Result<()> {
    let (w1, _) = run_sharp(Perturbation::Asam { rho: 0.5, eta: 0.01 })?;
    assert_close(&w1, &[0.337365876, 0.624134024, -0.221836819, 1.081046860], 1e-6, "ASAM w1");
    Ok(())
}

#[test]
fn sagm_reference_step() -> Result<()> {
    let (w1, _) = run_sharp(Perturbation::Sagm { rho: 0.05, alpha: 0.001 })?;
    assert_close(&w1, &[0.350276707, 0.653792551, -0.225472068, 1.059195034], 1e-6, "SAGM w1");
    let dir: Vec<f32> = W0.iter().zip(&w1).map(|(a, b)| (a - b) / 0.1).collect();
    assert_close(&dir, &[-0.502767069, 1.462074485, -1.745279319, -0.591950343], 1e-5, "SAGM direction");
    Ok(())
}

#[test]
fn plain_step_is_gradient_descent() -> Result<()> {
    let (w1, modes) = run_sharp(Perturbation::None)?;
    assert_close(&w1, &[0.35, 0.655, -0.23, 1.06], 1e-6, "SGD w1");
    assert_eq!(modes, vec![Mode::Train]);
    Ok(())
}

#[test]
fn perturbed_weights_are_restored_bit_for_bit() -> Result<()> {
    // With lr = 0 the base step is a no-op, so anything but the original bits means the
    // perturbation was undone by subtraction (or not at all).
    for pert in [
        Perturbation::Sam { rho: 0.05 },
        Perturbation::Asam { rho: 0.5, eta: 0.01 },
        Perturbation::Sagm { rho: 0.05, alpha: 0.001 },
    ] {
        let (store, set) = quad_model()?;
        let mut core = SharpCore::new(pert, &sgd());
        core.step(&set, 0.0, &mut |_| Ok(Losses::total_only(quad_loss(&store, &A)?)))?;
        let bits: Vec<u32> = w(&store).iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, W0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{pert:?}");
    }
    let (store, set) = quad_model()?;
    let mut core = RogaCore::new(RogaParams { rho: 0.1, alpha: 0.001, weight: 0.5 }, &sgd());
    core.step(&set, 0.0, 2, &mut |_, _| quad_loss(&store, &A))?;
    assert_eq!(w(&store), W0.to_vec());
    Ok(())
}

#[test]
fn roga_with_one_domain_is_sagm() -> Result<()> {
    let (store, set) = quad_model()?;
    let mut core = RogaCore::new(RogaParams { rho: 0.05, alpha: 0.001, weight: 0.5 }, &sgd());
    let rep = core.step(&set, 0.1, 1, &mut |_, _| quad_loss(&store, &A))?;
    assert_close(&w(&store), &[0.350276707, 0.653792551, -0.225472068, 1.059195034], 1e-6, "RoGA(K=1) w1");
    assert!((rep.grad_norms[0] - (0.25f64 + 1.45 * 1.45 + 1.7 * 1.7 + 0.36).sqrt()).abs() < 1e-6);
    Ok(())
}

/// RoGA on two domains (two quadratics with different minima) against a direct f64
/// implementation of methods.md section 5.
#[test]
fn roga_two_domains_matches_the_reconstruction() -> Result<()> {
    let a2 = [0.0, 1.0, -1.0, 0.5];
    let grad = |w: &[f64; 4], a: &[f64; 4]| -> [f64; 4] {
        let mut g = [0.0; 4];
        for i in 0..4 {
            for j in 0..4 {
                g[i] += H[i][j] * (w[j] - a[j]);
            }
        }
        g
    };
    let (rho, alpha, weight, lr) = (0.1, 0.002, 0.3, 0.1);
    let w0 = W0.map(|x| x as f64);
    let gs = [grad(&w0, &A), grad(&w0, &a2)];
    let gbar: Vec<f64> = (0..4).map(|i| (gs[0][i] + gs[1][i]) / 2.0).collect();
    let mut gt_mean = [0.0; 4];
    for (d, a) in [&A, &a2].into_iter().enumerate() {
        let n = gs[d].iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut wp = [0.0; 4];
        for i in 0..4 {
            wp[i] = w0[i] + rho * gs[d][i] / (n + 1e-12) - alpha * gbar[i];
        }
        let gt = grad(&wp, a);
        for i in 0..4 {
            gt_mean[i] += gt[i] / 2.0;
        }
    }
    let want: Vec<f64> =
        (0..4).map(|i| w0[i] - lr * (weight * gbar[i] + (1.0 - weight) * gt_mean[i])).collect();

    let (store, set) = quad_model()?;
    let mut core = RogaCore::new(RogaParams { rho, alpha, weight }, &sgd());
    let mut modes = Vec::new();
    core.step(&set, lr, 2, &mut |d, mode| {
        modes.push((d, mode));
        quad_loss(&store, if d == 0 { &A } else { &a2 })
    })?;
    assert_close(&w(&store), &want, 1e-6, "RoGA(K=2) w1");
    assert_eq!(
        modes,
        vec![(0, Mode::Train), (1, Mode::Train), (0, Mode::TrainFrozenStats), (1, Mode::TrainFrozenStats)]
    );
    Ok(())
}
