//! The weight gradient over the whole batch at once, for convolutions with narrow bands.
//!
//! The banded path ([`super::gemm_path`]) sums `dW += dY_band col_band^T` per (sample, band), in
//! fixed chunks of the batch that each hold a partial `dW`, then adds the partials on one thread.
//! Where a band is narrow (a few output rows of a small plane: Xception's 728-channel 1x1
//! convolutions on 8x8 planes, ResNet's layers 2-4 at 128 px) and the weight large, each gemm reduces
//! over a few dozen positions while reading and writing the whole `dW`, and the partials (up to
//! eight copies of `dW`) are summed serially. Here the batch's bands, in (sample, band) order, are
//! cut into tiles of about [`TILE_FLOATS`] im2col floats; each tile's im2col `[K, T]` and output
//! gradient `[O_g, T]` are gathered in parallel, and `dW += dY_tile col_tile^T` is one gemm per
//! tile, multi-threaded inside the gemm crate (which splits the output between threads, never the
//! reduction). No partial sums, and the result does not depend on the thread count: the tiles and
//! their order depend only on the shapes. The summation order differs from the banded path's, so
//! the two agree to rounding, not in every bit.
use rayon::prelude::*;

use super::gemm_path::{band_rows, im2col_rows};
use super::{Geom, SyncPtr, scratch};

/// Target im2col floats of one tile (8 MiB): hundreds of positions per gemm even for a 4608-long
/// weight row, and a bounded buffer at any batch size.
const TILE_FLOATS: usize = 2 << 20;

/// From this many output channels per group: the gemm crate splits its output in 16-row panels,
/// so below two panels a tile's gemm would run on one thread, where the banded path's chunks of
/// the batch keep both busy (Meso4's 8-16 channels stay there).
const MIN_ROWS: usize = 32;

/// Bands narrower than this many output positions take the batch path. Measured per layer
/// (BENCHMARKS.md): on wider bands (ResNet's stem, EfficientNet's 64x64 planes, Xception's entry
/// flow) the banded path is as fast or faster, since its band's im2col stays in L2.
const MAX_BAND_COLS: usize = 256;

/// Whether the weight gradient of `g` is computed here rather than by the banded path.
pub(super) fn applies(g: &Geom) -> bool {
    g.og >= MIN_ROWS && band_rows(g) * g.wo < MAX_BAND_COLS
}

/// A band of output rows `r0..r1` of sample `n`, at column `col0` of its tile.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Piece {
    n: usize,
    r0: usize,
    r1: usize,
    col0: usize,
}

#[derive(Debug, Default)]
struct Tile {
    pieces: Vec<Piece>,
    cols: usize,
}

/// The batch's bands (the banded path's), in (sample, band) order, grouped into tiles of at most
/// [`TILE_FLOATS`] im2col floats, or one band where a band alone is larger.
fn tiles(g: &Geom) -> Vec<Tile> {
    let rows = band_rows(g);
    let target = (TILE_FLOATS / g.k()).max(1);
    let mut out = Vec::new();
    let mut cur = Tile::default();
    for n in 0..g.n {
        for r0 in (0..g.ho).step_by(rows) {
            let r1 = (r0 + rows).min(g.ho);
            let pt = (r1 - r0) * g.wo;
            if cur.cols > 0 && cur.cols + pt > target {
                out.push(std::mem::take(&mut cur));
            }
            cur.pieces.push(Piece { n, r0, r1, col0: cur.cols });
            cur.cols += pt;
        }
    }
    if cur.cols > 0 {
        out.push(cur);
    }
    out
}

/// `dW` `[O, C_g, kH, kW]` of the convolution `g` with input `x` and output gradient `dy`.
pub(super) fn weight_gradient(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, ps, sample) = (g.k(), g.out_plane(), g.c * g.in_plane());
    let tiles = tiles(g);
    let max_cols = tiles.iter().map(|t| t.cols).max().unwrap_or(0);
    let mut col = scratch::take_tile(k * max_cols);
    let mut dyt = scratch::take_tile(g.og * max_cols);
    let mut dw = vec![0f32; g.w_len()];
    for grp in 0..g.groups {
        for (i, tile) in tiles.iter().enumerate() {
            let t = tile.cols;
            let (cp, dp) = (SyncPtr(col.as_mut_ptr()), SyncPtr(dyt.as_mut_ptr()));
            tile.pieces.par_iter().for_each(|pc| {
                let pt = (pc.r1 - pc.r0) * g.wo;
                let xs = &x[pc.n * sample..][..sample];
                // SAFETY: each band writes only its own columns col0..col0 + pt of the K rows of
                // col and of the O_g rows of dyt; both buffers hold at least that many rows of T.
                unsafe { im2col_rows(g, xs, grp * g.cg, pc.r0, pc.r1, cp.get().add(pc.col0), t) };
                for o in 0..g.og {
                    let src = &dy[(pc.n * g.o + grp * g.og + o) * ps + pc.r0 * g.wo..][..pt];
                    // SAFETY: as above, row o of dyt, this band's columns only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dp.get().add(o * t + pc.col0), pt) };
                    dst.copy_from_slice(src);
                }
            });
            // SAFETY: dw's group rows are O_g x K (row stride K); dyt is O_g x T and col K x T,
            // read transposed (row stride 1, column stride T); the buffers do not alias.
            unsafe {
                gemm::gemm(
                    g.og,
                    k,
                    t,
                    dw[grp * g.og * k..].as_mut_ptr(),
                    1,
                    k as isize,
                    i > 0,
                    dyt.as_ptr(),
                    1,
                    t as isize,
                    col.as_ptr(),
                    t as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
        }
    }
    scratch::give_back_tiles([col, dyt]);
    dw
}

#[cfg(test)]
mod tests {
    use super::super::gemm_path;
    use super::*;
    use crate::ops::conv::Conv2dParams;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn geom(x: [usize; 4], w: [usize; 4], (stride, padding, dilation, groups): (usize, usize, usize, usize)) -> Geom {
        Geom::new(&x, &w, Conv2dParams { stride, padding, dilation, groups }).unwrap()
    }

    fn rand_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|a| a.to_bits()).collect()
    }

    /// Shapes the batch path takes: ResNet's layer 4 at 128 px over two tiles, Xception's middle
    /// flow 1x1, a strided 3x3, a grouped + dilated one, two bands per sample.
    fn cases() -> Vec<(Geom, &'static str)> {
        vec![
            (geom([32, 512, 4, 4], [512, 512, 3, 3], (1, 1, 1, 1)), "resnet layer 4, 2 tiles"),
            (geom([3, 96, 8, 8], [96, 96, 1, 1], (1, 0, 1, 1)), "pointwise, small plane"),
            (geom([3, 40, 9, 7], [48, 40, 3, 3], (2, 1, 1, 1)), "strided 3x3"),
            (geom([2, 24, 12, 10], [64, 12, 3, 3], (1, 2, 2, 2)), "grouped, dilated"),
            (geom([2, 256, 16, 16], [64, 256, 3, 3], (1, 1, 1, 1)), "two bands per sample"),
        ]
    }

    /// Against the banded path's weight gradient, to rounding: another summation order of the
    /// same f32 terms. (The public op's tests in `tests/conv_op.rs` check this path against the
    /// f64 definition, candle and finite differences.)
    #[test]
    fn matches_the_banded_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for (g, what) in cases() {
            assert!(applies(&g), "{what}: should take the batch path");
            let x = rand_vec(&mut rng, g.x_len());
            let dy = rand_vec(&mut rng, g.y_len());
            let w = rand_vec(&mut rng, g.w_len());
            let ours = weight_gradient(&g, &x, &dy);
            let banded = gemm_path::banded_weight_gradient(&g, &x, &w, &dy);
            let scale = banded.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in ours.iter().zip(&banded).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale, "{what}: dw[{i}] {a} vs banded {b} (scale {scale})");
            }
        }
    }

    #[test]
    fn independent_of_the_thread_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for (g, what) in cases() {
            let x = rand_vec(&mut rng, g.x_len());
            let dy = rand_vec(&mut rng, g.y_len());
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| bits(&weight_gradient(&g, &x, &dy)))
            };
            let one = run(1);
            assert!(one == run(2), "{what}: 2 threads differ from 1");
            assert!(one == run(3), "{what}: 3 threads differ from 1");
        }
    }

    #[test]
    fn tiles_cover_every_band_once_in_order() {
        for (g, what) in cases() {
            let ts = tiles(&g);
            let rows = band_rows(&g);
            let got: Vec<(usize, usize)> = ts.iter().flat_map(|t| t.pieces.iter().map(|p| (p.n, p.r0))).collect();
            let want: Vec<(usize, usize)> = (0..g.n).flat_map(|n| (0..g.ho).step_by(rows).map(move |r| (n, r))).collect();
            assert_eq!(got, want, "{what}");
            for t in &ts {
                let mut col = 0;
                for p in &t.pieces {
                    assert_eq!(p.col0, col, "{what}");
                    col += (p.r1 - p.r0) * g.wo;
                }
                assert_eq!(col, t.cols, "{what}");
                assert!(t.pieces.len() == 1 || t.cols * g.k() <= TILE_FLOATS, "{what}: tile too large");
            }
        }
        assert_eq!(tiles(&cases()[0].0).len(), 2, "layer 4 at batch 32 spans two tiles");
    }

    #[test]
    fn meso4_and_wide_bands_keep_the_banded_path() {
        // Meso4 at 128 px (its shipped results depend on the banded path's bits), a ResNet stem,
        // EfficientNet's 64x64 1x1.
        for (g, what) in [
            (geom([32, 3, 128, 128], [8, 3, 3, 3], (1, 1, 1, 1)), "meso4 conv1"),
            (geom([32, 8, 64, 64], [8, 8, 5, 5], (1, 2, 1, 1)), "meso4 conv2"),
            (geom([32, 8, 32, 32], [16, 8, 5, 5], (1, 2, 1, 1)), "meso4 conv3"),
            (geom([32, 16, 16, 16], [16, 16, 5, 5], (1, 2, 1, 1)), "meso4 conv4"),
            (geom([16, 3, 128, 128], [64, 3, 7, 7], (2, 3, 1, 1)), "resnet stem"),
            (geom([8, 32, 64, 64], [192, 32, 1, 1], (1, 0, 1, 1)), "1x1 on 64x64"),
        ] {
            assert!(!applies(&g), "{what}");
        }
    }
}
