//! im2col + gemm convolution, forward and backward, over bands of output rows.
//!
//! Notation per sample and group: `X` the input channels of the group, `col` its im2col matrix
//! `[K = C_g kH kW, P]` (row `k = (ci kH + ki) kW + kj`, column = output position), `W` the weight
//! rows of the group `[O_g, K]`, `Y = W col`. A band is a range of output rows; its im2col
//! slice `[K, P_band]` fits in a per-thread scratch buffer sized for the L2 cache.
use rayon::prelude::*;

use super::{Geom, SyncPtr, batch_dw, scratch};
use crate::ops::profile::{PartClock, now_if};

/// Target size of one band's im2col slice, in floats (~384 KiB: the gemm's packed operands and
/// the band stay in a 1 MiB L2 cache).
const BAND_FLOATS: usize = 96 * 1024;

/// Upper bound on floats held by weight-gradient partial sums (beyond the first) in one backward.
const MAX_PARTIAL_FLOATS: usize = 1 << 22;

/// Most chunks the batch is split into for the weight-gradient reduction. Fixed (not the thread
/// count) so the summation order, hence the result, does not depend on the machine.
const MAX_CHUNKS: usize = 8;

pub(super) fn band_rows(g: &Geom) -> usize {
    (BAND_FLOATS / (g.k() * g.wo).max(1)).clamp(1, g.ho)
}

/// `dst[m, n] (+)= sum_k lhs[m, k] rhs[k, n]` with explicit row / column strides, single-threaded.
///
/// # Safety
/// The pointers must address the whole strided matrices, `dst` must not alias `lhs` or `rhs`, and
/// no other thread may access `dst`'s elements concurrently.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    // SAFETY: forwarded from the caller's contract; gemm's argument order is column stride first.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Writes the im2col slice of output rows `r0..r1` for input channels `c0..c0 + C_g` of one
/// sample (`xs`: `[C, H, W]`) into `col` (`[K, (r1 - r0) W_out]`), zeros where the kernel reads
/// padding.
fn im2col_band(g: &Geom, xs: &[f32], c0: usize, r0: usize, r1: usize, col: &mut [f32]) {
    let pt = (r1 - r0) * g.wo;
    assert!(col.len() >= g.k() * pt, "col holds K rows");
    // SAFETY: `col` holds the K rows of `pt` floats written, at row stride `pt`.
    unsafe { im2col_rows(g, xs, c0, r0, r1, col.as_mut_ptr(), pt) }
}

/// [`im2col_band`] into columns of a wider matrix: row `k` of the band goes to
/// `col[k * ld..][..(r1 - r0) W_out]`.
///
/// # Safety
/// `col` must address `K` rows of `(r1 - r0) W_out` floats at row stride `ld`, which no other
/// thread reads or writes during the call.
pub(super) unsafe fn im2col_rows(g: &Geom, xs: &[f32], c0: usize, r0: usize, r1: usize, col: *mut f32, ld: usize) {
    let pt = (r1 - r0) * g.wo;
    let mut kk = 0;
    for ci in 0..g.cg {
        let plane = &xs[(c0 + ci) * g.in_plane()..][..g.in_plane()];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                // SAFETY: row kk of the band, inside the caller's extent.
                let row = unsafe { std::slice::from_raw_parts_mut(col.add(kk * ld), pt) };
                kk += 1;
                let off = (kj * g.d) as isize - g.p as isize;
                let (lo, hi) = Geom::valid_range(off, g.s, g.w, g.wo);
                for (oh, dst) in (r0..r1).zip(row.chunks_exact_mut(g.wo)) {
                    let ih = (oh * g.s + ki * g.d) as isize - g.p as isize;
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.w..][..g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let start = (lo as isize * g.s as isize + off) as usize;
                    if g.s == 1 {
                        dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (d, s) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(g.s)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the im2col-shaped gradient `dcol` of output rows `r0..r1` back onto the input gradient of
/// one sample (`dxs`: `[C, H, W]`), channels `c0..c0 + C_g` (the adjoint of [`im2col_band`]).
fn col2im_band(g: &Geom, dcol: &[f32], c0: usize, r0: usize, r1: usize, dxs: &mut [f32]) {
    let pt = (r1 - r0) * g.wo;
    let mut rows = dcol.chunks_exact(pt);
    for ci in 0..g.cg {
        let plane = &mut dxs[(c0 + ci) * g.in_plane()..][..g.in_plane()];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = rows.next().expect("dcol holds K rows");
                let off = (kj * g.d) as isize - g.p as isize;
                let (lo, hi) = Geom::valid_range(off, g.s, g.w, g.wo);
                if lo == hi {
                    continue;
                }
                let start = (lo as isize * g.s as isize + off) as usize;
                for (oh, src) in (r0..r1).zip(row.chunks_exact(g.wo)) {
                    let ih = (oh * g.s + ki * g.d) as isize - g.p as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * g.w..][..g.w];
                    if g.s == 1 {
                        for (d, s) in dst[start..start + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[start..].iter_mut().step_by(g.s).zip(&src[lo..hi]) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, ps, hw) = (g.k(), g.out_plane(), g.in_plane());
    let rows = band_rows(g);
    let bands = g.ho.div_ceil(rows);
    let mut y = vec![0f32; g.y_len()];
    let yp = SyncPtr(y.as_mut_ptr());
    let pointwise = g.is_pointwise();
    (0..g.n * bands).into_par_iter().for_each(|item| {
        let (n, b) = (item / bands, item % bands);
        let (r0, r1) = (b * rows, ((b + 1) * rows).min(g.ho));
        let pt = (r1 - r0) * g.wo;
        let xs = &x[n * g.c * hw..][..g.c * hw];
        let col_len = if pointwise { 0 } else { k * pt };
        scratch::with_cols(col_len, 0, |col, _| {
            for grp in 0..g.groups {
                let (rhs, rhs_rs) = if pointwise {
                    (xs[grp * g.cg * hw + r0 * g.wo..].as_ptr(), hw)
                } else {
                    im2col_band(g, xs, grp * g.cg, r0, r1, col);
                    (col.as_ptr(), pt)
                };
                // SAFETY: this item alone writes output rows r0..r1 of sample n (every channel of
                // group grp); all strided extents lie inside y, w and xs / col.
                unsafe {
                    sgemm(
                        (g.og, pt, k),
                        yp.get().add(n * g.o * ps + grp * g.og * ps + r0 * g.wo),
                        (ps, 1),
                        false,
                        w[grp * g.og * k..].as_ptr(),
                        (k, 1),
                        rhs,
                        (rhs_rs, 1),
                    );
                }
            }
        });
    });
    y
}

/// Returns `(dx, dw)`, each only when asked for. With a `clock` (the profile on), the thread
/// time of the input-gradient work goes to its part `a` and of the weight-gradient work to `b`.
/// Narrow bands with wide weights take their weight gradient from [`super::batch_dw`].
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
    clock: Option<&PartClock>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    if !(need_dw && batch_dw::applies(g)) {
        return backward_banded(g, x, w, dy, need_dx, need_dw, clock);
    }
    let dx = if need_dx { backward_banded(g, x, w, dy, true, false, clock).0 } else { None };
    let t = now_if(clock.is_some());
    let dw = batch_dw::weight_gradient(g, x, dy);
    if let Some(c) = clock {
        c.add(t, false);
    }
    (dx, Some(dw))
}

/// The banded path's weight gradient: the reference [`super::batch_dw`] is tested against.
#[cfg(test)]
pub(super) fn banded_weight_gradient(g: &Geom, x: &[f32], w: &[f32], dy: &[f32]) -> Vec<f32> {
    backward_banded(g, x, w, dy, false, true, None).1.expect("asked for dw")
}

fn backward_banded(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
    clock: Option<&PartClock>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let timed = clock.is_some();
    let (k, ps, hw) = (g.k(), g.out_plane(), g.in_plane());
    let rows = band_rows(g);
    let bands = g.ho.div_ceil(rows);
    let pointwise = g.is_pointwise();
    let wl = g.w_len();
    // Chunks of the batch, each with its own weight-gradient partial sum; the count depends only
    // on the shapes.
    let chunks =
        if need_dw { g.n.min(MAX_CHUNKS).min(1 + MAX_PARTIAL_FLOATS / wl).max(g.n.min(2)) } else { g.n };
    let mut dx = need_dx.then(|| vec![0f32; g.x_len()]);
    let dxp = SyncPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let mut dw = need_dw.then(|| vec![0f32; wl]);
    let mut partials = if need_dw { scratch::take_partials(chunks - 1, wl) } else { Vec::new() };
    {
        let mut sinks: Vec<Option<&mut [f32]>> = Vec::with_capacity(chunks);
        match dw.as_mut() {
            Some(first) => {
                sinks.push(Some(first.as_mut_slice()));
                sinks.extend(partials.iter_mut().map(|p| Some(p.as_mut_slice())));
            }
            None => sinks.resize_with(chunks, || None),
        }
        sinks.into_par_iter().enumerate().for_each(|(chunk, mut dw_part)| {
            let (n0, n1) = (chunk * g.n / chunks, (chunk + 1) * g.n / chunks);
            let col_len = if pointwise || !need_dw { 0 } else { k * rows * g.wo };
            let dcol_len = if pointwise || !need_dx { 0 } else { k * rows * g.wo };
            scratch::with_cols(col_len, dcol_len, |col, dcol| {
                for n in n0..n1 {
                    let xs = &x[n * g.c * hw..][..g.c * hw];
                    for b in 0..bands {
                        let (r0, r1) = (b * rows, ((b + 1) * rows).min(g.ho));
                        let pt = (r1 - r0) * g.wo;
                        for grp in 0..g.groups {
                            let dy_band = dy[n * g.o * ps + grp * g.og * ps + r0 * g.wo..].as_ptr();
                            let w_grp = w[grp * g.og * k..].as_ptr();
                            if let Some(dwp) = dw_part.as_deref_mut() {
                                let t = now_if(timed);
                                let (rhs, rhs_cs) = if pointwise {
                                    (xs[grp * g.cg * hw + r0 * g.wo..].as_ptr(), hw)
                                } else {
                                    im2col_band(g, xs, grp * g.cg, r0, r1, col);
                                    (col.as_ptr(), pt)
                                };
                                // SAFETY: dwp is this chunk's own buffer; rhs is col^T (or X^T).
                                unsafe {
                                    sgemm(
                                        (g.og, k, pt),
                                        dwp[grp * g.og * k..].as_mut_ptr(),
                                        (k, 1),
                                        true,
                                        dy_band,
                                        (ps, 1),
                                        rhs,
                                        (1, rhs_cs),
                                    );
                                }
                                if let Some(c) = clock {
                                    c.add(t, false);
                                }
                            }
                            if need_dx {
                                let t = now_if(timed);
                                // SAFETY: samples n0..n1 belong to this chunk only, so it alone
                                // touches their input gradient; lhs is W_grp^T.
                                let dxs = unsafe { dxp.get().add(n * g.c * hw) };
                                if pointwise {
                                    // Each input position feeds exactly one output position:
                                    // the gemm writes the gradient in place.
                                    unsafe {
                                        sgemm(
                                            (g.cg, pt, g.og),
                                            dxs.add(grp * g.cg * hw + r0 * g.wo),
                                            (hw, 1),
                                            false,
                                            w_grp,
                                            (1, k),
                                            dy_band,
                                            (ps, 1),
                                        );
                                    }
                                } else {
                                    unsafe {
                                        sgemm(
                                            (k, pt, g.og),
                                            dcol.as_mut_ptr(),
                                            (pt, 1),
                                            false,
                                            w_grp,
                                            (1, k),
                                            dy_band,
                                            (ps, 1),
                                        );
                                    }
                                    let dxs = unsafe { std::slice::from_raw_parts_mut(dxs, g.c * hw) };
                                    col2im_band(g, &dcol[..k * pt], grp * g.cg, r0, r1, dxs);
                                }
                                if let Some(c) = clock {
                                    c.add(t, true);
                                }
                            }
                        }
                    }
                }
            });
        });
    }
    if let Some(dw) = dw.as_mut() {
        let t = now_if(timed);
        for p in &partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += *b;
            }
        }
        scratch::give_back_partials(partials);
        if let Some(c) = clock {
            c.add(t, false);
        }
    }
    (dx, dw)
}
