//! The deterministic parameter values of the reference fixtures, shared with
//! `scripts/reference_fixtures.py` (`formula_raw`, `formula_values`, `formula_input`).
//!
//! Integer hashing makes exact binary fractions (multiples of 2^-12, scaled by powers of two), so
//! the script and these functions produce the same f32 bits without sharing a libm; the fixtures
//! then only need the reference's names, shapes and output features.

/// The tensor index the script uses for the input images.
pub const INPUT_TENSOR_INDEX: u32 = 100_000;

/// Integers in [-2048, 2048) from a 32-bit hash of (tensor index, element index).
pub fn raw(tensor_index: u32, i: usize) -> i32 {
    let mut x = tensor_index
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add((i as u32).wrapping_mul(0x85EB_CA77))
        .wrapping_add(0x1656_67B1);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2C1B_3C6D);
    x ^= x >> 12;
    ((x >> 8) & 0xFFF) as i32 - 2048
}

/// The values of tensor `tensor_index` (its position in the reference's sorted names): `1 + v`
/// for BatchNorm/LayerNorm scales and running variances, `v * 2^-k` with `4^k ~ fan_in` for
/// weights of rank >= 2, `v` otherwise, `v` in [-0.5, 0.5).
pub fn values(tensor_index: u32, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let scale = if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let k = (usize::BITS - 1 - fan_in.leading_zeros()) / 2;
        2f64.powi(-(k as i32))
    } else {
        1.0
    };
    let offset = name.ends_with("running_var") || (shape.len() == 1 && name.ends_with("weight"));
    (0..n)
        .map(|i| {
            let v = raw(tensor_index, i) as f64 / 4096.0;
            (if offset { 1.0 + v } else { v * scale }) as f32
        })
        .collect()
}

/// The input images `[batch, 3, size, size]`, in [-2, 2).
pub fn input(size: usize, batch: usize) -> Vec<f32> {
    values(INPUT_TENSOR_INDEX, "input", &[batch, 3, size, size]).iter().map(|x| x * 4.0).collect()
}
