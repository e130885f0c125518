//! Learning-rate schedules, evaluated at every iteration (DeepfakeBench steps its scheduler once
//! per epoch-less run by mistake; here the caller asks for the rate of each step).
use crate::config::ScheduleConfig;

/// The learning rate of iteration `step` (0-based) out of `total_steps`.
///
/// Warm-up (all kinds): for `step < warmup_steps` the rate rises linearly,
/// `base_lr * (step + 1) / warmup_steps`, so the last warm-up step reaches `base_lr`. The schedule
/// proper then runs on `s = step - warmup_steps` over `total_steps - warmup_steps` iterations:
/// - constant: `base_lr`;
/// - step: `base_lr * gamma^floor(s / step_size)`;
/// - cosine: `min_lr + (base_lr - min_lr) (1 + cos(pi s / (T - 1))) / 2`, which is `base_lr` at
///   the first post-warm-up step and exactly `min_lr` at the last step (`T` = remaining steps).
///
/// Steps past `total_steps` keep the last value.
pub fn lr_at(cfg: &ScheduleConfig, base_lr: f64, step: usize, total_steps: usize) -> f64 {
    let warmup = match cfg {
        ScheduleConfig::Constant { warmup_steps }
        | ScheduleConfig::Step { warmup_steps, .. }
        | ScheduleConfig::Cosine { warmup_steps, .. } => *warmup_steps,
    };
    if step < warmup {
        return base_lr * (step + 1) as f64 / warmup as f64;
    }
    let s = step - warmup;
    match cfg {
        ScheduleConfig::Constant { .. } => base_lr,
        ScheduleConfig::Step { step_size, gamma, .. } => {
            let k = s / (*step_size).max(1);
            base_lr * gamma.powi(k.min(i32::MAX as usize) as i32)
        }
        ScheduleConfig::Cosine { min_lr, .. } => {
            let t = total_steps.saturating_sub(warmup);
            if t <= 1 {
                return base_lr;
            }
            let frac = (s.min(t - 1)) as f64 / (t - 1) as f64;
            min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
        }
    }
}

/// Checks a schedule against the run length; the message names the offending key.
pub fn validate(cfg: &ScheduleConfig, base_lr: f64, total_steps: usize) -> Result<(), String> {
    match cfg {
        ScheduleConfig::Step { step_size, gamma, .. } => {
            if *step_size == 0 {
                return Err("schedule.step_size must be at least 1".into());
            }
            if !(*gamma > 0.0 && *gamma <= 1.0) {
                return Err(format!("schedule.gamma must lie in (0, 1], got {gamma}"));
            }
        }
        ScheduleConfig::Cosine { min_lr, .. } => {
            if !(*min_lr >= 0.0 && *min_lr <= base_lr) {
                return Err(format!("schedule.min_lr must lie in [0, lr = {base_lr}], got {min_lr}"));
            }
        }
        ScheduleConfig::Constant { .. } => {}
    }
    let warmup = match cfg {
        ScheduleConfig::Constant { warmup_steps }
        | ScheduleConfig::Step { warmup_steps, .. }
        | ScheduleConfig::Cosine { warmup_steps, .. } => *warmup_steps,
    };
    if warmup > total_steps {
        return Err(format!("schedule.warmup_steps ({warmup}) exceeds the number of steps ({total_steps})"));
    }
    Ok(())
}
