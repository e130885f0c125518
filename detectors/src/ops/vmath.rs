//! Element-wise math the fused CPU ops share: an `exp` that the compiler vectorises (libm's
//! `expf` is a call per element, which no loop around it can vectorise), the sigmoid and SiLU
//! built on it, and [`avx2_fn`], which compiles a loop for AVX2 where the processor has it.
//!
//! Every function here is a fixed sequence of IEEE operations on one element (no fused
//! multiply-add, no reassociation), so a loop over them gives the same bits whatever the vector
//! width the compiler picks, on any x86-64 or other target: the AVX2 copy of a loop is a speed
//! choice, never a numerical one.

/// `e^x` in f32 within 2 ulp of the exact value (tests: against f64 `exp` over the whole finite
/// range), branch-free so that a loop of it vectorises.
///
/// Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`ln 2` split in two so that `n ln 2`
/// is exact), `e^r` by a degree-7 minimax polynomial, then `2^n` put into the exponent bits.
/// The argument is clamped to where `2^n` stays a normal number: below `-87.3` the result is
/// the smallest normal instead of a subnormal or zero, above `88.37` the largest power the clamp
/// allows (these ops only take `e^x` inside `1 / (1 + e^x)`, where that is exact enough). NaN
/// stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even) in two
    // adds, and leaves that integer in the low mantissa bits of the intermediate sum.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.37);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    // `n` in [-126, 127]: its bits are those of `t` minus the magic number's.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) << 23) as u32);
    er * scale
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x * sigmoid(x)`, written as candle's `silu` writes it: `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The derivative of SiLU at `x`, as candle's backward builds it from the forward's value
/// `y = silu(x)`: `sigmoid(x) * (1 - y) + y`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    let y = x * s;
    s * (1.0 - y) + y
}

/// `fn $name(args) -> R = $body`: a function that runs `$body(args)` compiled for AVX2 where the
/// processor has it (checked per call: one cached atomic load), else as compiled for the baseline
/// target. `$body` must be `#[inline(always)]` (everything it calls too, as the element functions
/// above are), so that its whole loop is compiled into the AVX2 copy; a closure handed to a
/// `target_feature` function is not reliably inlined into it, hence a macro. Only the speed
/// differs between the two copies: see the module docs.
macro_rules! avx2_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor supports AVX2 (checked just above).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx2_fn;

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 and an exact (f64) value.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_exp_over_the_normal_range() {
        // Every 997th f32 in [-87.3, 88.37], both signs, plus the range ends and small values.
        let mut worst = (0f64, 0f32);
        let mut check = |x: f32| {
            let e = ulps(exp(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        };
        let mut b = 0u32;
        while f32::from_bits(b) <= 88.37 {
            let x = f32::from_bits(b);
            check(x);
            if x <= 87.3 {
                check(-x);
            }
            b += 997;
        }
        for x in [
            0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, -1e-30, 88.37, -87.3, 20.0, -20.0,
        ] {
            check(x);
        }
        assert!(worst.0 <= 2.0, "worst {} ulp at {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_clamps_out_of_range_and_keeps_nan() {
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.3e-38);
        assert_eq!(exp(1000.0), exp(88.37));
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 2e38);
        assert!(exp(f32::NAN).is_nan());
        // sigmoid and SiLU saturate cleanly.
        assert_eq!(sigmoid(200.0), 1.0);
        assert!(sigmoid(-200.0) < 1e-38);
        assert_eq!(silu(200.0), 200.0);
        assert!(silu(-200.0).abs() < 1e-35);
    }

    #[test]
    fn sigmoid_silu_and_its_gradient_match_f64() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01 + 0.003;
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            assert!(
                (sigmoid(x) as f64 - s).abs() <= 3e-7 * s.max(1e-30) + 1e-37,
                "sigmoid {x}"
            );
            assert!(
                (silu(x) as f64 - xd * s).abs() <= 4e-7 * (xd * s).abs() + 1e-37,
                "silu {x}"
            );
            let g = s * (1.0 + xd * (1.0 - s));
            assert!(
                (silu_grad(x) as f64 - g).abs() <= 1e-6 * (1.0 + g.abs()),
                "silu' {x}"
            );
        }
    }

    #[inline(always)]
    fn silu_grads_plain(xs: &[f32]) -> Vec<u32> {
        xs.iter().map(|&x| silu_grad(x).to_bits()).collect()
    }

    avx2_fn!(fn silu_grads_wide(xs: &[f32]) -> Vec<u32> = silu_grads_plain);

    #[test]
    fn avx2_copy_gives_the_same_bits() {
        let xs: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.5) * 0.037).collect();
        assert_eq!(silu_grads_plain(&xs), silu_grads_wide(&xs));
    }
}
