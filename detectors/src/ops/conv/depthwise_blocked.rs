//! Channel-blocked depthwise kernels: the fast path of [`super::depthwise`] for one output
//! channel per input channel (EfficientNet's and Xception's depthwise convolutions).
//!
//! The reference kernels vectorise along an output row, which at 128 px leaves most of the work
//! in scalar tails: 22 of EfficientNet-B4's 32 blocks and Xception's middle flow run on 8x8 and
//! 4x4 planes, and stride-2 rows are read with `step_by`. Here each work item copies the planes
//! of 8 consecutive channels into a `[H][W][8]` block (the NCHW8c layout, per call and per item,
//! in cache), runs the reference's loops with every scalar operation widened to the 8 channels
//! (one 8-lane vector whatever the plane size or stride), and copies the result back to NCHW.
//! A last block of fewer than 8 channels runs with zero lanes that are never written back.
//!
//! Each lane performs exactly the reference's floating-point operations in the reference's order
//! (forward: the taps in `(ki, kj)` order over the valid ranges; input gradient: the same
//! scatter order; weight gradient: the same 8-accumulator dot per row, or the sequential sum for
//! strides above one, added in f64 per `(sample, row, tap)`), so the results are the reference's
//! bits, which the tests check, and thus independent of the thread count as the reference's are.
//! The loops are compiled for AVX2 where the processor has it (`vmath::avx2_fn!`); no fused
//! multiply-add, so that changes nothing either.
use rayon::prelude::*;

use super::{Geom, SyncPtr};
use crate::ops::vmath;

/// Channels per block: one AVX2 vector of f32.
const L: usize = 8;
type V = [f32; L];

/// Whether these kernels handle `g`: depthwise with one output channel per input channel.
pub(crate) fn handles(g: &Geom) -> bool {
    g.og == 1 && g.c == g.o
}

/// Channel blocks of `g`.
fn blocks(g: &Geom) -> usize {
    g.c.div_ceil(L)
}

/// Copies channels `c0..c0 + nc` (`nc <= 8`) of one sample's planes (`src`: its `[C][hw]`) into
/// the lanes of `dst` (`hw` vectors); lanes `nc..8` become zero.
#[inline(always)]
fn gather(src: &[f32], c0: usize, nc: usize, hw: usize, dst: &mut [V]) {
    for l in 0..L {
        if l < nc {
            for (d, &v) in dst.iter_mut().zip(&src[(c0 + l) * hw..][..hw]) {
                d[l] = v;
            }
        } else {
            for d in dst.iter_mut() {
                d[l] = 0.0;
            }
        }
    }
}

/// Writes lanes `0..nc` of `src` (`hw` vectors) to planes `c0..c0 + nc` of one sample's
/// `[C][hw]` buffer at `dst`.
///
/// # Safety
/// `dst` must point to that sample's planes, valid for writes (initialised or not), and no other
/// thread may access planes `c0..c0 + nc` of it meanwhile; `src` holds at least `hw` vectors.
#[inline(always)]
unsafe fn scatter(src: &[V], c0: usize, nc: usize, hw: usize, dst: *mut f32) {
    for l in 0..nc {
        // SAFETY: per the function's contract; written through the pointer, never read, so the
        // destination may be uninitialised.
        let plane = unsafe { dst.add((c0 + l) * hw) };
        for (i, s) in src[..hw].iter().enumerate() {
            unsafe { plane.add(i).write(s[l]) };
        }
    }
}

/// `d[l] += a[l] * b[l]`.
#[inline(always)]
fn axpy(d: &mut V, a: &V, b: &V) {
    for l in 0..L {
        d[l] += a[l] * b[l];
    }
}

/// The reference's `dot` per lane: eight accumulators over the full chunks of 8 positions, the
/// remainder summed on its own, then `acc[0] + ... + acc[7] + tail` (`Iterator::sum`'s order,
/// from -0).
#[inline(always)]
fn dot_lanes(a: &[V], b: &[V]) -> V {
    let full = a.len() / 8 * 8;
    let mut tail = [-0.0f32; L];
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        axpy(&mut tail, x, y);
    }
    let mut acc = [[0f32; L]; 8];
    for (xc, yc) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for i in 0..8 {
            axpy(&mut acc[i], &xc[i], &yc[i]);
        }
    }
    let mut s = [-0.0f32; L];
    for a in &acc {
        for l in 0..L {
            s[l] += a[l];
        }
    }
    for l in 0..L {
        s[l] += tail[l];
    }
    s
}

/// One block's output planes `yb` (`[Ho][Wo]` vectors) from its input planes `xb` and taps `wb`.
#[inline(always)]
fn forward_block(g: &Geom, xb: &[V], wb: &[V], yb: &mut [V]) {
    for (oh, yrow) in yb.chunks_exact_mut(g.wo).enumerate() {
        yrow.fill([0.0; L]);
        for ki in 0..g.kh {
            let ih = (oh * g.s + ki * g.d) as isize - g.p as isize;
            if ih < 0 || ih >= g.h as isize {
                continue;
            }
            let xrow = &xb[ih as usize * g.w..][..g.w];
            for kj in 0..g.kw {
                let wv = &wb[ki * g.kw + kj];
                let off = (kj * g.d) as isize - g.p as isize;
                let (lo, hi) = Geom::valid_range(off, g.s, g.w, g.wo);
                if lo == hi {
                    continue;
                }
                let start = (lo as isize * g.s as isize + off) as usize;
                for (y, x) in yrow[lo..hi].iter_mut().zip(xrow[start..].iter().step_by(g.s)) {
                    axpy(y, wv, x);
                }
            }
        }
    }
}

/// Per-thread buffers of one work item.
#[derive(Default)]
struct Scratch {
    x: Vec<V>,
    y: Vec<V>,
    dx: Vec<V>,
}

/// Sample `n`, channel block `cb` of the forward into `y` (the whole output).
#[inline(always)]
fn forward_item(g: &Geom, x: &[f32], w: &[f32], (n, cb): (usize, usize), y: SyncPtr, sc: &mut Scratch) {
    let (hw, ps, kk) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let (c0, nc) = (cb * L, L.min(g.c - cb * L));
    sc.x.resize(hw, [0.0; L]);
    sc.y.resize(ps, [0.0; L]);
    let mut wb = vec![[0f32; L]; kk];
    gather(&w[..g.c * kk], c0, nc, kk, &mut wb);
    gather(&x[n * g.c * hw..][..g.c * hw], c0, nc, hw, &mut sc.x);
    forward_block(g, &sc.x, &wb, &mut sc.y);
    // SAFETY: sample n's planes of channels c0..c0 + nc belong to this work item alone.
    unsafe { scatter(&sc.y, c0, nc, ps, y.get().add(n * g.c * ps)) };
}

vmath::avx2_fn!(
    fn forward_item_wide(g: &Geom, x: &[f32], w: &[f32], item: (usize, usize), y: SyncPtr, sc: &mut Scratch)
        = forward_item
);

/// A buffer of `len` values that the caller's work items write in full, not zeroed first (a
/// whole extra pass otherwise).
fn unfilled(len: usize) -> Vec<f32> {
    Vec::with_capacity(len)
}

pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    debug_assert!(handles(g));
    let mut y = unfilled(g.y_len());
    let yp = SyncPtr(y.as_mut_ptr());
    let nb = blocks(g);
    (0..g.n * nb).into_par_iter().for_each_init(Scratch::default, |sc, i| {
        forward_item_wide(g, x, w, (i / nb, i % nb), yp, sc);
    });
    // SAFETY: the items (n, cb) cover every sample and channel block, and each wrote all of its
    // planes (`scatter` writes whole planes for every channel of the block).
    unsafe { y.set_len(g.y_len()) };
    y
}

/// Channel block `cb` of the backward, over every sample: writes its planes of `dx` (when
/// `dx` is non-null) and returns its weight-gradient sums per tap and lane (when `need_dw`).
#[inline(always)]
fn backward_item(
    g: &Geom,
    (x, w, dy): (&[f32], &[f32], &[f32]),
    cb: usize,
    (dx, need_dw): (SyncPtr, bool),
    sc: &mut Scratch,
) -> Vec<[f64; L]> {
    let (hw, ps, kk) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let (c0, nc) = (cb * L, L.min(g.c - cb * L));
    let need_dx = !dx.get().is_null();
    let mut wb = vec![[0f32; L]; kk];
    gather(&w[..g.c * kk], c0, nc, kk, &mut wb);
    let mut acc = vec![[0f64; L]; if need_dw { kk } else { 0 }];
    sc.x.resize(hw, [0.0; L]);
    sc.y.resize(ps, [0.0; L]);
    sc.dx.resize(if need_dx { hw } else { 0 }, [0.0; L]);
    for n in 0..g.n {
        if need_dw {
            gather(&x[n * g.c * hw..][..g.c * hw], c0, nc, hw, &mut sc.x);
        }
        gather(&dy[n * g.c * ps..][..g.c * ps], c0, nc, ps, &mut sc.y);
        sc.dx.fill([0.0; L]);
        for (oh, dyrow) in sc.y.chunks_exact(g.wo).enumerate() {
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
                    let tap = ki * g.kw + kj;
                    if need_dw {
                        let s = if g.s == 1 {
                            dot_lanes(dys, &sc.x[start..start + (hi - lo)])
                        } else {
                            let mut s = [-0.0f32; L];
                            for (d, xv) in dys.iter().zip(sc.x[start..].iter().step_by(g.s)) {
                                axpy(&mut s, d, xv);
                            }
                            s
                        };
                        for l in 0..L {
                            acc[tap][l] += s[l] as f64;
                        }
                    }
                    if need_dx {
                        let wv = &wb[tap];
                        for (d, v) in sc.dx[start..].iter_mut().step_by(g.s).zip(dys) {
                            axpy(d, wv, v);
                        }
                    }
                }
            }
        }
        if need_dx {
            // SAFETY: sample n's planes of channels c0..c0 + nc belong to this work item alone.
            unsafe { scatter(&sc.dx, c0, nc, hw, dx.get().add(n * g.c * hw)) };
        }
    }
    acc
}

vmath::avx2_fn!(
    #[allow(clippy::type_complexity)]
    fn backward_item_wide(
        g: &Geom,
        xwdy: (&[f32], &[f32], &[f32]),
        cb: usize,
        out: (SyncPtr, bool),
        sc: &mut Scratch,
    ) -> Vec<[f64; L]> = backward_item
);

/// `(dx, dw)`, each only when asked for; one work item per channel block, over the whole batch.
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    debug_assert!(handles(g));
    let kk = g.kh * g.kw;
    let mut dx = need_dx.then(|| unfilled(g.x_len()));
    let dxp = SyncPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let sums: Vec<Vec<[f64; L]>> = (0..blocks(g))
        .into_par_iter()
        .map_init(Scratch::default, |sc, cb| backward_item_wide(g, (x, w, dy), cb, (dxp, need_dw), sc))
        .collect();
    if let Some(dx) = dx.as_mut() {
        // SAFETY: every channel block wrote all of its planes in every sample.
        unsafe { dx.set_len(g.x_len()) };
    }
    let dw = need_dw.then(|| {
        let mut dw = vec![0f32; g.w_len()];
        for (cb, acc) in sums.iter().enumerate() {
            for l in 0..L.min(g.c - cb * L) {
                for (tap, a) in acc.iter().enumerate() {
                    dw[(cb * L + l) * kk + tap] = a[l] as f32;
                }
            }
        }
        dw
    });
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::{Conv2dParams, depthwise};
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// `(n, c, (h, w), (kh, kw), stride, padding, dilation)`: the 128 px shapes of EfficientNet-B4
    /// and Xception (8x8 and 4x4 planes, stride 2, 5x5 kernels) and odd ones: planes narrower
    /// than the kernel's reach, 1-pixel planes, a lone channel, channel counts on both sides of
    /// a multiple of 8, rows longer than 8 (the dot's full chunks and remainders), dilation 2.
    type Case = (usize, usize, (usize, usize), (usize, usize), usize, usize, usize);
    const CASES: &[Case] = &[
        (2, 16, (8, 8), (3, 3), 1, 1, 1),
        (3, 13, (4, 4), (5, 5), 1, 2, 1),
        (2, 24, (9, 9), (5, 5), 2, 2, 1),
        (2, 9, (8, 8), (3, 3), 2, 1, 1),
        (1, 1, (1, 1), (3, 3), 1, 1, 1),
        (3, 7, (19, 23), (3, 3), 1, 1, 1),
        (2, 17, (21, 18), (3, 5), 2, 2, 1),
        (2, 8, (12, 11), (3, 3), 1, 2, 2),
        (1, 5, (7, 5), (3, 3), 3, 0, 1),
        (2, 11, (33, 35), (5, 5), 1, 2, 1),
    ];

    fn geom(&(n, c, (h, w), (kh, kw), s, p, d): &Case) -> Geom {
        let prm = Conv2dParams { stride: s, padding: p, dilation: d, groups: c };
        Geom::new(&[n, c, h, w], &[c, 1, kh, kw], prm).unwrap()
    }

    /// Forward and both gradients (each alone and both together) of the blocked kernels equal
    /// the reference kernels bit for bit.
    #[test]
    fn blocked_kernels_give_the_reference_bits() {
        for (i, cs) in CASES.iter().enumerate() {
            let g = geom(cs);
            assert!(handles(&g));
            let seed = 100 * i as u64;
            let (x, w, dy) = (rand_vec(g.x_len(), seed), rand_vec(g.w_len(), seed + 1), rand_vec(g.y_len(), seed + 2));
            assert_eq!(bits(&forward(&g, &x, &w)), bits(&depthwise::forward_reference(&g, &x, &w)), "{cs:?} forward");
            for (need_dx, need_dw) in [(true, true), (true, false), (false, true)] {
                let (dx, dw) = backward(&g, &x, &w, &dy, need_dx, need_dw);
                let (rdx, rdw) = depthwise::backward_reference(&g, &x, &w, &dy, need_dx, need_dw);
                assert_eq!(dx.is_some(), need_dx);
                assert_eq!(dw.is_some(), need_dw);
                assert_eq!(dx.map(|v| bits(&v)), rdx.map(|v| bits(&v)), "{cs:?} dx");
                assert_eq!(dw.map(|v| bits(&v)), rdw.map(|v| bits(&v)), "{cs:?} dw");
            }
        }
    }

    /// A hand-computed case: 3x3 plane, 3x3 kernel of ones, padding 1, two channels (the second
    /// scaled by -2): each output is the sum of its in-plane 3x3 neighbourhood.
    #[test]
    fn blocked_forward_by_hand() {
        let g = geom(&(1, 2, (3, 3), (3, 3), 1, 1, 1));
        let plane: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let x: Vec<f32> = plane.iter().copied().chain(plane.iter().map(|v| -2.0 * v)).collect();
        let y = forward(&g, &x, &[1.0; 18]);
        let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
        assert_eq!(&y[..9], &want);
        assert_eq!(y[9..].to_vec(), want.iter().map(|v| -2.0 * v).collect::<Vec<f32>>());
    }

    #[test]
    fn blocked_kernels_are_bit_identical_across_thread_counts() {
        let g = geom(&CASES[6]);
        let (x, w, dy) = (rand_vec(g.x_len(), 7), rand_vec(g.w_len(), 8), rand_vec(g.y_len(), 9));
        let run = |n: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
            pool.install(|| {
                let y = forward(&g, &x, &w);
                let (dx, dw) = backward(&g, &x, &w, &dy, true, true);
                [bits(&y), bits(&dx.unwrap()), bits(&dw.unwrap())]
            })
        };
        assert!(run(1) == run(2), "1 and 2 threads differ");
    }
}
