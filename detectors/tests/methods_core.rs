//! Optimizers against hand-computed steps, schedules at known steps, loss gradients by finite
//! differences.
use candle_core::{DType, Device, Result, Tensor, Var};
use detectors::config::{OptimizerConfig, ScheduleConfig};
use detectors::gradvec::ParamSet;
use detectors::losses::{bce_with_logits, bce_with_logits_per_sample, cvar, cvar_auc, pairwise_auc};
use detectors::optim::Optimizer;
use detectors::params::{Init, ParamStore};
use detectors::methods::check_optimizer;
use detectors::schedule::{lr_at, validate};

/// Two optimizer steps on p0 = [1, -2] with directions [0.5, -1] then [0.2, 0.4], lr 0.1.
fn two_steps(cfg: OptimizerConfig) -> Result<Vec<Vec<f32>>> {
    let b = ParamStore::new(&Device::Cpu).builder(0);
    b.param("p", 2, Init::Zeros)?;
    let store = b.store();
    store.param("p").unwrap().set(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
    let set = ParamSet::from_store(&store);
    let mut opt = Optimizer::new(&cfg);
    let mut out = Vec::new();
    for d in [[0.5f32, -1.0], [0.2, 0.4]] {
        opt.step(&set, &[Tensor::new(&d, &Device::Cpu)?], 0.1)?;
        out.push(store.param("p").unwrap().as_tensor().to_vec1::<f32>()?);
    }
    Ok(out)
}

fn close(got: &[Vec<f32>], want: [[f64; 2]; 2], what: &str) {
    for s in 0..2 {
        for i in 0..2 {
            assert!(
                (got[s][i] as f64 - want[s][i]).abs() < 1e-6,
                "{what} step {}: {:?} vs {:?}",
                s + 1,
                got[s],
                want[s]
            );
        }
    }
}

#[test]
fn sgd_momentum_and_nesterov_match_pytorch() -> Result<()> {
    let sgd = |nesterov| OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov, weight_decay: 0.01 };
    close(&two_steps(sgd(false))?, [[0.949, -1.898], [0.882151, -1.844302]], "sgd momentum");
    close(&two_steps(sgd(true))?, [[0.9031, -1.8062], [0.82207411, -1.79614822]], "sgd nesterov");
    let plain = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 };
    close(&two_steps(plain)?, [[0.95, -1.9], [0.93, -1.94]], "sgd plain");
    Ok(())
}

#[test]
fn adam_and_adamw_match_pytorch() -> Result<()> {
    let adam = |wd| OptimizerConfig::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
    close(&two_steps(adam(0.0))?, [[0.900000002, -1.900000001], [0.810142484, -1.865439417]], "adam");
    close(&two_steps(adam(0.1))?, [[0.900000002, -1.900000001], [0.807281461, -1.846831886]], "adam l2");
    let adamw = OptimizerConfig::Adamw { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    close(&two_steps(adamw)?, [[0.890000002, -1.880000001], [0.791242484, -1.826639417]], "adamw");
    Ok(())
}

#[test]
fn schedules_at_known_steps() {
    let eq = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    let c = ScheduleConfig::Constant { warmup_steps: 4 };
    eq(lr_at(&c, 1.0, 0, 100), 0.25);
    eq(lr_at(&c, 1.0, 2, 100), 0.75);
    eq(lr_at(&c, 1.0, 3, 100), 1.0);
    eq(lr_at(&c, 1.0, 50, 100), 1.0);
    let s = ScheduleConfig::Step { step_size: 10, gamma: 0.1, warmup_steps: 0 };
    eq(lr_at(&s, 2.0, 9, 100), 2.0);
    eq(lr_at(&s, 2.0, 10, 100), 0.2);
    eq(lr_at(&s, 2.0, 25, 100), 0.02);
    let cos = ScheduleConfig::Cosine { min_lr: 0.0, warmup_steps: 0 };
    eq(lr_at(&cos, 1.0, 0, 11), 1.0);
    eq(lr_at(&cos, 1.0, 5, 11), 0.5);
    eq(lr_at(&cos, 1.0, 10, 11), 0.0);
    let cw = ScheduleConfig::Cosine { min_lr: 0.1, warmup_steps: 2 };
    eq(lr_at(&cw, 1.0, 0, 12), 0.5);
    eq(lr_at(&cw, 1.0, 1, 12), 1.0);
    eq(lr_at(&cw, 1.0, 2, 12), 1.0);
    eq(lr_at(&cw, 1.0, 7, 12), 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 5.0 / 9.0).cos()));
    eq(lr_at(&cw, 1.0, 11, 12), 0.1);
    eq(lr_at(&cw, 1.0, 30, 12), 0.1);
}

/// Central finite differences of `f` at `x0` (f64) against candle's gradient.
fn fd_check(x0: &[f64], f: impl Fn(&Tensor) -> Result<Tensor>, what: &str) -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(x0, &dev)?)?;
    let grads = f(x.as_tensor())?.backward()?;
    let g = grads.get(x.as_tensor()).expect("gradient").to_vec1::<f64>()?;
    let h = 1e-6;
    for i in 0..x0.len() {
        let mut xp = x0.to_vec();
        let mut xm = x0.to_vec();
        xp[i] += h;
        xm[i] -= h;
        let fp = f(&Tensor::new(xp.as_slice(), &dev)?)?.to_scalar::<f64>()?;
        let fm = f(&Tensor::new(xm.as_slice(), &dev)?)?.to_scalar::<f64>()?;
        let num = (fp - fm) / (2.0 * h);
        assert!(
            (num - g[i]).abs() < 1e-7 * (1.0 + num.abs()),
            "{what} d/dx{i}: autograd {} vs fd {num}",
            g[i]
        );
    }
    Ok(())
}

#[test]
fn loss_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let x0 = [-2.1, -0.7, 0.05, 0.9, 1.6, 3.2, -4.0, 0.4];
    let y = Tensor::new(&[0.0f64, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0], &dev)?;
    fd_check(&x0, |x| bce_with_logits(x, &y), "bce")?;
    // CVaR at 0.5: the top 4 per-sample losses (distinct, so the selection is locally fixed).
    fd_check(&x0, |x| cvar(&bce_with_logits_per_sample(x, &y)?, 0.5), "cvar")?;
    fd_check(&x0, |x| pairwise_auc(x, &y), "auc")?;
    fd_check(&x0, |x| cvar_auc(x, &y, 0.9, 0.6), "cvar+auc")?;
    Ok(())
}

#[test]
fn auc_value_matches_the_pairwise_definition() -> Result<()> {
    let dev = Device::Cpu;
    let s = [0.3f64, -1.2, 2.0, 0.1, -0.4];
    let lab = [1.0f64, 0.0, 1.0, 0.0, 1.0];
    let got = pairwise_auc(&Tensor::new(&s, &dev)?, &Tensor::new(&lab, &dev)?)?.to_scalar::<f64>()?;
    let mut sum = 0.0;
    let mut n = 0.0;
    for i in 0..5 {
        for j in 0..5 {
            if lab[i] > 0.5 && lab[j] < 0.5 {
                let p = (1.0 / (1.0 + (-(s[i] - s[j])).exp())).clamp(1e-6, 1.0 - 1e-6);
                sum += -p.ln();
                n += 1.0;
            }
        }
    }
    assert!((got - sum / n).abs() < 1e-12, "{got} vs {}", sum / n);
    // Top-k CVaR value by brute force on f32.
    let l = Tensor::new(&[0.3f32, 2.0, 0.7, 1.1, 0.2, 0.9, 1.5], &dev)?;
    let v = cvar(&l, 0.4)?.to_dtype(DType::F64)?.to_scalar::<f64>()?; // ceil(2.8) = 3
    assert!((v - (2.0 + 1.5 + 1.1) / 3.0).abs() < 1e-6);
    Ok(())
}

#[test]
fn bad_schedules_and_optimizers_are_named() {
    let e = validate(&ScheduleConfig::Step { step_size: 0, gamma: 0.1, warmup_steps: 0 }, 0.1, 10).unwrap_err();
    assert!(e.contains("schedule.step_size"), "{e}");
    let e = validate(&ScheduleConfig::Cosine { min_lr: 0.5, warmup_steps: 0 }, 0.1, 10).unwrap_err();
    assert!(e.contains("schedule.min_lr"), "{e}");
    let e = validate(&ScheduleConfig::Constant { warmup_steps: 20 }, 0.1, 10).unwrap_err();
    assert!(e.contains("warmup_steps"), "{e}");
    assert!(validate(&ScheduleConfig::Cosine { min_lr: 0.0, warmup_steps: 2 }, 0.1, 10).is_ok());
    let sgd = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: true, weight_decay: 0.0 };
    assert!(check_optimizer(&sgd).unwrap_err().contains("nesterov"));
    let adam = OptimizerConfig::Adam { lr: 0.1, beta1: 1.0, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    assert!(check_optimizer(&adam).unwrap_err().contains("optimizer.beta1"));
    assert!(check_optimizer(&OptimizerConfig::default()).is_ok());
}

/// A direction that still carries a backprop graph (as candle's own backward returns on CUDA)
/// must not leave that graph in the optimizer state, which lives across steps: a state tensor
/// built from it would reference the step's activations and the previous state, so memory
/// would grow with every step. The update itself must equal the one from a plain direction.
#[test]
fn optimizer_state_keeps_no_backprop_graph() -> Result<()> {
    let cfgs = [
        OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01 },
        OptimizerConfig::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        OptimizerConfig::Adamw { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
    ];
    for cfg in cfgs {
        let mut finals = Vec::new();
        for tracked in [true, false] {
            let b = ParamStore::new(&Device::Cpu).builder(0);
            b.param("p", 2, Init::Zeros)?;
            let store = b.store();
            store.param("p").unwrap().set(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
            let set = ParamSet::from_store(&store);
            let x = Var::new(&[0.5f32, -1.0], &Device::Cpu)?;
            let mut opt = Optimizer::new(&cfg);
            for _ in 0..3 {
                // x * 1: a tensor with an op whose graph reaches the variable `x`.
                let d = if tracked { x.as_tensor().affine(1.0, 0.0)? } else { x.as_tensor().detach() };
                assert_eq!(d.track_op(), tracked);
                opt.step(&set, &[d], 0.1)?;
                let (m, v) = opt.state();
                assert!(!m.is_empty(), "{cfg:?}: no state after a step");
                for t in m.iter().chain(v) {
                    assert!(!t.track_op(), "{cfg:?}: optimizer state carries a backprop graph");
                }
            }
            finals.push(store.param("p").unwrap().as_tensor().to_vec1::<f32>()?);
        }
        assert_eq!(finals[0], finals[1], "{cfg:?}: a tracked direction changed the update");
    }
    Ok(())
}
