//! Direct kernels for depthwise convolutions (one input channel per group, `O_g` output channels
//! per input channel). A gemm per channel would have K = kH kW and a single row: all overhead.
//!
//! The inner loops run along an output row; with stride 1 they are contiguous `axpy` / dot
//! products the compiler vectorises. These are the reference kernels: [`forward`] and
//! [`backward`] run the channel-blocked ones of [`super::depthwise_blocked`] (the same bits,
//! vectorised across 8 channels instead of along short rows) where those apply, one output
//! channel per input channel, and these otherwise (channel multipliers above one).
use rayon::prelude::*;

use super::depthwise_blocked as blocked;
use super::{Geom, SyncPtr};

pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if blocked::handles(g) { blocked::forward(g, x, w) } else { forward_reference(g, x, w) }
}

/// Returns `(dx, dw)`, each only when asked for (see [`backward_reference`]).
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    if blocked::handles(g) {
        blocked::backward(g, x, w, dy, need_dx, need_dw)
    } else {
        backward_reference(g, x, w, dy, need_dx, need_dw)
    }
}

/// Dot product with eight independent accumulators so it vectorises (a single f32 accumulator
/// would force sequential order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One output plane: `y = sum_{ki,kj} w[ki,kj] * shifted(x)`.
fn forward_plane(g: &Geom, xp: &[f32], wk: &[f32], yp: &mut [f32]) {
    for (oh, yrow) in yp.chunks_exact_mut(g.wo).enumerate() {
        yrow.fill(0.0);
        for ki in 0..g.kh {
            let ih = (oh * g.s + ki * g.d) as isize - g.p as isize;
            if ih < 0 || ih >= g.h as isize {
                continue;
            }
            let xrow = &xp[ih as usize * g.w..][..g.w];
            for kj in 0..g.kw {
                let wv = wk[ki * g.kw + kj];
                let off = (kj * g.d) as isize - g.p as isize;
                let (lo, hi) = Geom::valid_range(off, g.s, g.w, g.wo);
                if lo == hi {
                    continue;
                }
                let start = (lo as isize * g.s as isize + off) as usize;
                if g.s == 1 {
                    for (y, x) in yrow[lo..hi].iter_mut().zip(&xrow[start..start + (hi - lo)]) {
                        *y += wv * *x;
                    }
                } else {
                    for (y, x) in yrow[lo..hi].iter_mut().zip(xrow[start..].iter().step_by(g.s)) {
                        *y += wv * *x;
                    }
                }
            }
        }
    }
}

pub(crate) fn forward_reference(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (ps, hw, kk) = (g.out_plane(), g.in_plane(), g.kh * g.kw);
    let mut y = vec![0f32; g.y_len()];
    y.par_chunks_mut(ps).enumerate().for_each(|(plane, yp)| {
        let (n, o) = (plane / g.o, plane % g.o);
        let c = o / g.og;
        forward_plane(g, &x[(n * g.c + c) * hw..][..hw], &w[o * kk..][..kk], yp);
    });
    y
}

/// Returns `(dx, dw)`, each only when asked for. One work item per input channel: it owns that
/// channel's input gradient in every sample and the weights of its output channels, and sums over
/// the batch in a fixed order (deterministic for any thread count).
pub(crate) fn backward_reference(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (ps, hw, kk) = (g.out_plane(), g.in_plane(), g.kh * g.kw);
    let mut dx = need_dx.then(|| vec![0f32; g.x_len()]);
    let dxp = SyncPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    // Weight gradient of one input channel's output channels, accumulated in f64 over up to
    // N * H_out rows of partial dot products.
    let mut dw = vec![0f32; g.w_len()];
    dw.par_chunks_mut(g.og * kk).enumerate().for_each(|(c, dw_c)| {
        let mut acc = vec![0f64; if need_dw { g.og * kk } else { 0 }];
        for j in 0..g.og {
            let o = c * g.og + j;
            let wk = &w[o * kk..][..kk];
            for n in 0..g.n {
                let xp = &x[(n * g.c + c) * hw..][..hw];
                let dyp = &dy[(n * g.o + o) * ps..][..ps];
                // SAFETY: plane (n, c) of the input gradient belongs to this work item alone.
                let mut dxpl = need_dx.then(|| unsafe {
                    std::slice::from_raw_parts_mut(dxp.get().add((n * g.c + c) * hw), hw)
                });
                for (oh, dyrow) in dyp.chunks_exact(g.wo).enumerate() {
                    for ki in 0..g.kh {
                        let ih = (oh * g.s + ki * g.d) as isize - g.p as isize;
                        if ih < 0 || ih >= g.h as isize {
                            continue;
                        }
                        let ih = ih as usize;
                        for kj in 0..g.kw {
                            let off = (kj * g.d) as isize - g.p as isize;
                            let (lo, hi) = Geom::valid_range(off, g.s, g.w, g.wo);
                            if lo == hi {
                                continue;
                            }
                            let start = ih * g.w + (lo as isize * g.s as isize + off) as usize;
                            let dys = &dyrow[lo..hi];
                            if need_dw {
                                let s = if g.s == 1 {
                                    dot(dys, &xp[start..start + (hi - lo)])
                                } else {
                                    dys.iter().zip(xp[start..].iter().step_by(g.s)).map(|(a, b)| a * b).sum()
                                };
                                acc[j * kk + ki * g.kw + kj] += s as f64;
                            }
                            if let Some(dxpl) = dxpl.as_deref_mut() {
                                let wv = wk[ki * g.kw + kj];
                                if g.s == 1 {
                                    for (d, v) in dxpl[start..start + (hi - lo)].iter_mut().zip(dys) {
                                        *d += wv * *v;
                                    }
                                } else {
                                    for (d, v) in dxpl[start..].iter_mut().step_by(g.s).zip(dys) {
                                        *d += wv * *v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for (d, a) in dw_c.iter_mut().zip(&acc) {
            *d = *a as f32;
        }
    });
    (dx, need_dw.then_some(dw))
}
