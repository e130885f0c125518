//! Self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022), following
//! `shared/spec/data-and-metrics.md` section 2. Every random choice comes from the caller's
//! generator, so one seed gives one image.
//!
//! Pipeline for one real aligned face `img` with landmarks (dlib 68-point order: 0-16 jaw,
//! 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth, plus 13 forehead points 68-80):
//! 1. 81 points: with p = 0.25 keep only the first 68.
//! 2. Hull mask, one of three variants chosen uniformly ([`HullVariant`]): the convex hull of
//!    all points; the union of the component hulls jaw+mouth / nose / eyes+brows(+forehead); the
//!    same components with the brows pushed up by their distance to the eyes.
//! 3. Source = copy of the target; with p = 0.5 the source is augmented, else the target (the
//!    target is then also the real twin): RGB shift (+-20, p 0.3), HSV shift (p 0.3),
//!    brightness/contrast (+-0.1, p 1), then one of: down-scale by 2 or 4 (nearest down, bilinear
//!    up) or sharpen (alpha 0.2..0.5, lightness 0.5..1).
//! 4. Affine of source and mask together (translate x +-3 %, y +-1.5 %, scale 0.95..1/0.95 about
//!    the centre), then an elastic deformation of the mask only (alpha 50, sigma 7 at 256 px).
//! 5. Blend mask: resize to a random size in [192, 256]^2, Gaussian blur (odd kernel 5..25,
//!    OpenCV's default sigma for that kernel), normalise to max 1, keep the saturated core
//!    (`>= 1`, all else 0), blur again (odd kernel 5..25, sigma 5..45), normalise, resize back.
//! 6. Ratio r from {0.25, 0.5, 0.75, 1, 1, 1}; `fake = r m source + (1 - r m) target`.
//! 7. Post-augmentation with the same parameters on the fake and its real twin: RGB shift (+-20,
//!    p 0.3), HSV shift (p 0.3), brightness/contrast (+-0.3, p 0.3), JPEG quality 40..100 (p 0.5).
//!
//! All pixel constants are for 256 px crops and scale with `s = min(H, W) / 256` (kernel sizes
//! stay odd and at least 3). HSV limits are ours (hue +-10 degrees, saturation and value +-0.1):
//! the original's +-0.3 on uint8 images rounds to no change at all.
//!
//! **Fallback mask.** Without usable landmarks (none, a count other than 68/81, a non-finite
//! value, or a hull smaller than 1 % of the image) the hull is an ellipse centred at
//! (0.5 W, 0.52 H) with semi-axes (0.33 W, 0.42 H), the face region of a DeepfakeBench-style
//! aligned crop; [`SbiSample::fallback`] says so and the loader counts it. If a mask would come
//! out empty (a hull thinner than the blur kernel) the un-thresholded blurred mask is used, so
//! every sample has a non-empty blend mask and label 1.
use image::RgbImage;
use rand::Rng;

/// Wall time per stage of [`self_blend`] on this thread, for `benches/sbi_speed.rs`. Off unless
/// [`enable`](profile::enable)d: then one `Instant::now()` pair per stage (~50 ns per image).
pub mod profile {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    static ON: AtomicBool = AtomicBool::new(false);
    thread_local! {
        static TOTALS: RefCell<Vec<(&'static str, f64, usize)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn enable(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// (stage, seconds, calls) accumulated on this thread since the last call, in first-seen
    /// order; resets them.
    pub fn take() -> Vec<(&'static str, f64, usize)> {
        TOTALS.with(|t| std::mem::take(&mut *t.borrow_mut()))
    }

    #[inline]
    pub(crate) fn time<T>(stage: &'static str, f: impl FnOnce() -> T) -> T {
        if !ON.load(Ordering::Relaxed) {
            return f();
        }
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        TOTALS.with(|t| {
            let mut t = t.borrow_mut();
            match t.iter_mut().find(|e| e.0 == stage) {
                Some(e) => {
                    e.1 += dt;
                    e.2 += 1;
                }
                None => t.push((stage, dt, 1)),
            }
        });
        r
    }
}
use profile::time;

/// The hull variant used for a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HullVariant {
    FaceHull,
    Components,
    ComponentsBrowsUp,
    /// The documented ellipse (no usable landmarks).
    FallbackEllipse,
}

/// Result of the blend stage (before post-augmentation), in f32 RGB interleaved 0..255.
#[derive(Debug, Clone)]
pub struct BlendStage {
    pub width: usize,
    pub height: usize,
    /// Hull mask before affine/elastic (0/1).
    pub hull: Vec<f32>,
    /// Final blend mask m in [0, 1] (max 1), without the ratio.
    pub mask: Vec<f32>,
    pub ratio: f32,
    pub source: Vec<f32>,
    /// The target, which is also the real twin.
    pub target: Vec<f32>,
    pub fake: Vec<f32>,
    pub variant: HullVariant,
    pub landmarks_used: usize,
}

/// One SBI pair after post-augmentation.
#[derive(Debug, Clone)]
pub struct SbiSample {
    /// Self-blended image, label 1.
    pub fake: RgbImage,
    /// Its real twin (same post-augmentation), label 0.
    pub real: RgbImage,
    pub variant: HullVariant,
    /// The blend mask m in [0, 1] (before the ratio), width x height: the blend is
    /// `ratio m source + (1 - ratio m) target`. Post-augmentation moves no pixel, so it lines up.
    pub mask: Vec<f32>,
    /// True when the fallback ellipse replaced missing or unusable landmarks.
    pub fallback: bool,
    pub ratio: f32,
    /// JPEG quality applied to both, if any.
    pub jpeg_quality: Option<u8>,
}

/// The blend ratios of step 6.
pub const RATIOS: [f32; 6] = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0];

/// Full SBI pipeline (steps 1-7). `landmarks` are (x, y) in the image's pixel coordinates.
/// Panics on an image smaller than 8x8 (a caller bug; the loader enforces 16 px at least).
pub fn self_blend<R: Rng>(img: &RgbImage, landmarks: Option<&[[f32; 2]]>, rng: &mut R) -> SbiSample {
    let st = blend_stage(img, landmarks, rng);
    let (w, h) = (st.width, st.height);
    let mut fake = st.fake;
    let mut real = st.target;
    let q = post_augment_pair(&mut fake, &mut real, w, h, rng);
    let (fake, real) = time("to_u8", || (to_rgb(&fake, w, h), to_rgb(&real, w, h)));
    SbiSample {
        fake,
        real,
        variant: st.variant,
        mask: st.mask,
        fallback: st.variant == HullVariant::FallbackEllipse,
        ratio: st.ratio,
        jpeg_quality: q,
    }
}

/// Steps 1-6.
pub fn blend_stage<R: Rng>(img: &RgbImage, landmarks: Option<&[[f32; 2]]>, rng: &mut R) -> BlendStage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // Precondition (the loader guarantees it: resolution >= 16): masks and kernels need room.
    assert!(w >= 8 && h >= 8, "SBI needs an image of at least 8x8 pixels, got {w}x{h}");
    let s = (w.min(h) as f32 / 256.0).max(1e-3);
    let mut target: Vec<f32> = time("to_f32", || img.as_raw().iter().map(|&v| v as f32).collect());

    // Steps 1-2.
    let usable = landmarks.filter(|l| {
        (l.len() == 68 || l.len() == 81) && l.iter().all(|p| p[0].is_finite() && p[1].is_finite())
    });
    let mut hull = vec![0f32; w * h];
    let mut variant = HullVariant::FallbackEllipse;
    let mut landmarks_used = 0;
    if let Some(lm) = usable {
        let n = if lm.len() == 81 && rng.random_bool(0.25) { 68 } else { lm.len() };
        let pts: Vec<[f32; 2]> = lm[..n]
            .iter()
            .map(|p| [p[0].clamp(0.0, (w - 1) as f32), p[1].clamp(0.0, (h - 1) as f32)])
            .collect();
        let v = match rng.random_range(0..3) {
            0 => HullVariant::FaceHull,
            1 => HullVariant::Components,
            _ => HullVariant::ComponentsBrowsUp,
        };
        time("hull", || hull_mask(&pts, v, w, h, &mut hull));
        let area: f32 = hull.iter().sum();
        if area >= 0.01 * (w * h) as f32 {
            variant = v;
            landmarks_used = n;
        }
    }
    if variant == HullVariant::FallbackEllipse {
        ellipse_mask(w, h, &mut hull);
    }

    // Step 3.
    let mut source = target.clone();
    if rng.random_bool(0.5) {
        time("source_aug", || source_augment(&mut source, w, h, rng));
    } else {
        time("source_aug", || source_augment(&mut target, w, h, rng));
    }

    // Step 4.
    let tx = rng.random_range(-0.03f32..=0.03) * w as f32;
    let ty = rng.random_range(-0.015f32..=0.015) * h as f32;
    let sc = rng.random_range(0.95f32..=1.0 / 0.95);
    let source = time("affine_src", || warp_affine(&source, w, h, 3, sc, tx, ty, true));
    let mask = time("affine_mask", || warp_affine(&hull, w, h, 1, sc, tx, ty, false));
    let mask = time("elastic", || elastic(&mask, w, h, 50.0 * s, 7.0 * s, rng));

    // Step 5.
    let mask = time("blend_mask", || blend_mask(&mask, &hull, w, h, s, rng));

    // Step 6.
    let ratio = RATIOS[rng.random_range(0..RATIOS.len())];
    let mut fake = vec![0f32; w * h * 3];
    time("blend", || {
        vectorised(|| {
            let px = source.chunks_exact(3).zip(target.chunks_exact(3));
            for ((f, (s, t)), &mv) in fake.chunks_exact_mut(3).zip(px).zip(&mask) {
                let m = ratio * mv;
                for c in 0..3 {
                    f[c] = m * s[c] + (1.0 - m) * t[c];
                }
            }
        })
    });
    BlendStage { width: w, height: h, hull, mask, ratio, source, target, fake, variant, landmarks_used }
}

/// Step 7 on a fake and its real twin with the same drawn parameters. Returns the JPEG quality.
pub fn post_augment_pair<R: Rng>(
    a: &mut [f32],
    b: &mut [f32],
    w: usize,
    h: usize,
    rng: &mut R,
) -> Option<u8> {
    if rng.random_bool(0.3) {
        let d = [
            rng.random_range(-20f32..=20.0),
            rng.random_range(-20f32..=20.0),
            rng.random_range(-20f32..=20.0),
        ];
        time("post_rgb", || {
            rgb_shift(a, d);
            rgb_shift(b, d);
        });
    }
    if rng.random_bool(0.3) {
        let p = hsv_params(rng);
        time("post_hsv", || {
            hsv_shift(a, p);
            hsv_shift(b, p);
        });
    }
    if rng.random_bool(0.3) {
        let alpha = 1.0 + rng.random_range(-0.3f32..=0.3);
        let beta = rng.random_range(-0.3f32..=0.3) * 255.0;
        time("post_bc", || {
            brightness_contrast(a, alpha, beta);
            brightness_contrast(b, alpha, beta);
        });
    }
    if rng.random_bool(0.5) {
        let q = rng.random_range(40u8..=100);
        time("jpeg", || {
            super::jpeg::roundtrip(a, w, h, q);
            super::jpeg::roundtrip(b, w, h, q);
        });
        return Some(q);
    }
    None
}

fn source_augment<R: Rng>(x: &mut [f32], w: usize, h: usize, rng: &mut R) {
    if rng.random_bool(0.3) {
        let d = [
            rng.random_range(-20f32..=20.0),
            rng.random_range(-20f32..=20.0),
            rng.random_range(-20f32..=20.0),
        ];
        rgb_shift(x, d);
    }
    if rng.random_bool(0.3) {
        let p = hsv_params(rng);
        time("src.hsv", || hsv_shift(x, p));
    }
    let alpha = 1.0 + rng.random_range(-0.1f32..=0.1);
    let beta = rng.random_range(-0.1f32..=0.1) * 255.0;
    brightness_contrast(x, alpha, beta);
    if rng.random_bool(0.5) {
        let f = if rng.random_bool(0.5) { 2 } else { 4 };
        // The factor is relative (a 4x down-scale loses the same share of detail at any size).
        time("src.downscale", || downscale(x, w, h, f));
    } else {
        let alpha = rng.random_range(0.2f32..=0.5);
        let light = rng.random_range(0.5f32..=1.0);
        time("src.sharpen", || sharpen(x, w, h, alpha, light));
    }
}

fn hsv_params<R: Rng>(rng: &mut R) -> [f32; 3] {
    [rng.random_range(-10f32..=10.0), rng.random_range(-0.1f32..=0.1), rng.random_range(-0.1f32..=0.1)]
}

fn rgb_shift(x: &mut [f32], d: [f32; 3]) {
    for px in x.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = (px[c] + d[c]).clamp(0.0, 255.0);
        }
    }
}

fn brightness_contrast(x: &mut [f32], alpha: f32, beta: f32) {
    for v in x.iter_mut() {
        *v = (*v * alpha + beta).clamp(0.0, 255.0);
    }
}

/// Hue shift in degrees, saturation and value shifts in [0, 1] units.
fn hsv_shift(x: &mut [f32], p: [f32; 3]) {
    vectorised(|| hsv_shift_impl(x, p))
}

#[inline(always)]
fn hsv_shift_impl(x: &mut [f32], p: [f32; 3]) {
    for px in x.chunks_exact_mut(3) {
        let (r, g, b) = (px[0] / 255.0, px[1] / 255.0, px[2] / 255.0);
        let mx = r.max(g).max(b);
        let mn = r.min(g).min(b);
        let d = mx - mn;
        let mut hh = if d <= 0.0 {
            0.0
        } else if mx == r {
            // `rem_euclid(6.0)` without libm's fmod: |g - b| <= max - min, so the quotient lies
            // in [-1, 1] where `q % 6 == q` and only the negative side moves (by the same add).
            let q = (g - b) / d;
            60.0 * if q < 0.0 { q + 6.0 } else { q }
        } else if mx == g {
            60.0 * ((b - r) / d + 2.0)
        } else {
            60.0 * ((r - g) / d + 4.0)
        };
        let sat = if mx <= 0.0 { 0.0 } else { d / mx };
        // `rem_euclid(360.0)` for a value in [-10, 370]: fmod is exact, and so is `v - 360`
        // there (Sterbenz), so the branches give the same bits.
        let v = hh + p[0];
        let v = if v >= 360.0 { v - 360.0 } else { v };
        hh = if v < 0.0 { v + 360.0 } else { v };
        let sat = (sat + p[1]).clamp(0.0, 1.0);
        let val = (mx + p[2]).clamp(0.0, 1.0);
        let c = val * sat;
        let hp = hh / 60.0;
        // `hp % 2.0` for hp in [0, 6]: exact subtractions (Sterbenz), as fmod's result.
        let m2 = if hp >= 6.0 {
            hp - 6.0
        } else if hp >= 4.0 {
            hp - 4.0
        } else if hp >= 2.0 {
            hp - 2.0
        } else {
            hp
        };
        let xx = c * (1.0 - (m2 - 1.0).abs());
        let (r1, g1, b1) = match hp as u32 {
            0 => (c, xx, 0.0),
            1 => (xx, c, 0.0),
            2 => (0.0, c, xx),
            3 => (0.0, xx, c),
            4 => (xx, 0.0, c),
            _ => (c, 0.0, xx),
        };
        let m = val - c;
        px[0] = ((r1 + m) * 255.0).clamp(0.0, 255.0);
        px[1] = ((g1 + m) * 255.0).clamp(0.0, 255.0);
        px[2] = ((b1 + m) * 255.0).clamp(0.0, 255.0);
    }
}

/// Nearest down-scale by `f`, bilinear back up.
fn downscale(x: &mut [f32], w: usize, h: usize, f: usize) {
    let (sw, sh) = ((w / f).max(1), (h / f).max(1));
    let mut small = vec![0f32; sw * sh * 3];
    for y in 0..sh {
        let yy = ((y as f32 + 0.5) * h as f32 / sh as f32) as usize;
        for xq in 0..sw {
            let xx = ((xq as f32 + 0.5) * w as f32 / sw as f32) as usize;
            let (yy, xx) = (yy.min(h - 1), xx.min(w - 1));
            small[3 * (y * sw + xq)..3 * (y * sw + xq) + 3]
                .copy_from_slice(&x[3 * (yy * w + xx)..3 * (yy * w + xx) + 3]);
        }
    }
    let up = resize_bilinear(&small, sw, sh, 3, w, h);
    x.copy_from_slice(&up);
}

/// 3x3 sharpen: `(1 - a) I + a [[-1,-1,-1],[-1,8+l,-1],[-1,-1,-1]]`.
fn sharpen(x: &mut [f32], w: usize, h: usize, a: f32, l: f32) {
    vectorised(|| sharpen_impl(x, w, h, a, l))
}

#[inline(always)]
fn sharpen_impl(x: &mut [f32], w: usize, h: usize, a: f32, l: f32) {
    let src = x.to_vec();
    let centre = (1.0 - a) + a * (8.0 + l);
    let xm: Vec<usize> = (0..w).map(|i| reflect101(i as isize - 1, w)).collect();
    let xp: Vec<usize> = (0..w).map(|i| reflect101(i as isize + 1, w)).collect();
    for y in 0..h {
        let rows = [reflect101(y as isize - 1, h), y, reflect101(y as isize + 1, h)];
        // Interior columns: the same nine-term sum in the same order (rows, then columns), over
        // whole rows at once so that it vectorises; the border columns below reflect.
        if w >= 3 {
            let row = |r: usize| &src[3 * r * w..3 * (r + 1) * w];
            let (up, mid, dn) = (row(rows[0]), row(rows[1]), row(rows[2]));
            let o = &mut x[3 * y * w + 3..3 * (y + 1) * w - 3];
            for (k, o) in o.iter_mut().enumerate() {
                let k = k + 3;
                let mut s9 = 0.0f32;
                s9 += up[k - 3];
                s9 += up[k];
                s9 += up[k + 3];
                s9 += mid[k - 3];
                s9 += mid[k];
                s9 += mid[k + 3];
                s9 += dn[k - 3];
                s9 += dn[k];
                s9 += dn[k + 3];
                let v = mid[k];
                *o = (centre * v - a * (s9 - v)).clamp(0.0, 255.0);
            }
        }
        for xx in 0..w {
            if xx > 0 && xx + 1 < w {
                continue;
            }
            let cols = [xm[xx], xx, xp[xx]];
            for c in 0..3 {
                let mut s9 = 0.0;
                for &r in &rows {
                    for &q in &cols {
                        s9 += src[3 * (r * w + q) + c];
                    }
                }
                let v = src[3 * (y * w + xx) + c];
                x[3 * (y * w + xx) + c] = (centre * v - a * (s9 - v)).clamp(0.0, 255.0);
            }
        }
    }
}

/// Rounds and clamps an f32 RGB buffer to an 8-bit image.
#[allow(clippy::manual_clamp)] // `max(0).min(255)` sends NaN to 0, `clamp` would keep it
pub fn to_rgb(x: &[f32], w: usize, h: usize) -> RgbImage {
    // `+ 0.5` then truncation rounds (values are non-negative after the clamp) without libm.
    // `max`/`min` send NaN to 0 like the saturating cast of `(v.clamp(0, 255) + 0.5) as u8`,
    // and leave a finite value in [0.5, 255.5] whose unchecked truncation vectorises.
    let data: Vec<u8> = vectorised(|| {
        x.iter()
            .map(|v| {
                let c = v.max(0.0).min(255.0) + 0.5;
                // SAFETY: c is finite and in [0.5, 255.5], inside the i32 range.
                unsafe { c.to_int_unchecked::<i32>() as u8 }
            })
            .collect()
    });
    RgbImage::from_raw(w as u32, h as u32, data).expect("buffer size matches")
}

// ---------------------------------------------------------------------------------------------
// Masks

/// Runs `f` compiled for AVX2 where the CPU has it, else as is. The loops it reaches are
/// `#[inline(always)]`, so they are compiled into the AVX2 wrapper and vectorise 8 wide instead
/// of 4. Same bits either way: only IEEE adds, multiplies, compares and conversions, which are
/// exact per element at any width, and Rust never fuses a multiply and an add on its own (and
/// FMA is not enabled here).
#[inline(always)]
fn vectorised<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<T>(f: impl FnOnce() -> T) -> T {
            f()
        }
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

fn ellipse_mask(w: usize, h: usize, out: &mut [f32]) {
    let (cx, cy) = (0.5 * w as f32, 0.52 * h as f32);
    let (ax, ay) = (0.33 * w as f32, 0.42 * h as f32);
    for y in 0..h {
        for x in 0..w {
            let dx = (x as f32 + 0.5 - cx) / ax;
            let dy = (y as f32 + 0.5 - cy) / ay;
            out[y * w + x] = if dx * dx + dy * dy <= 1.0 { 1.0 } else { 0.0 };
        }
    }
}

fn hull_mask(pts: &[[f32; 2]], v: HullVariant, w: usize, h: usize, out: &mut [f32]) {
    out.fill(0.0);
    let idx = |r: std::ops::RangeInclusive<usize>| -> Vec<[f32; 2]> {
        r.filter_map(|i| pts.get(i).copied()).collect()
    };
    match v {
        HullVariant::FaceHull | HullVariant::FallbackEllipse => {
            fill_convex(&convex_hull(pts.to_vec()), w, h, out)
        }
        HullVariant::Components | HullVariant::ComponentsBrowsUp => {
            let mut jaw_mouth = idx(0..=16);
            jaw_mouth.extend(idx(48..=67));
            let nose = idx(27..=35);
            let mut brows = idx(17..=26);
            if v == HullVariant::ComponentsBrowsUp {
                let eye_y = idx(36..=47).iter().map(|p| p[1]).sum::<f32>() / 12.0;
                let brow_y = brows.iter().map(|p| p[1]).sum::<f32>() / brows.len().max(1) as f32;
                let push = (eye_y - brow_y).max(0.0);
                for p in &mut brows {
                    p[1] = (p[1] - push).max(0.0);
                }
            }
            let mut eyes_brows = brows;
            eyes_brows.extend(idx(36..=47));
            eyes_brows.extend(idx(68..=80));
            for part in [jaw_mouth, nose, eyes_brows] {
                fill_convex(&convex_hull(part), w, h, out);
            }
        }
    }
}

/// Andrew's monotone chain; counter-clockwise in image coordinates' orientation sign.
fn convex_hull(mut p: Vec<[f32; 2]>) -> Vec<[f32; 2]> {
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross =
        |o: [f32; 2], a: [f32; 2], b: [f32; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut hull: Vec<[f32; 2]> = Vec::with_capacity(2 * p.len());
    for &q in &p {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    let lower = hull.len() + 1;
    for &q in p.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    hull.pop();
    hull
}

/// Sets to 1 every pixel (at integer coordinates, as OpenCV's fillConvexPoly) inside the hull.
fn fill_convex(hull: &[[f32; 2]], w: usize, h: usize, out: &mut [f32]) {
    if hull.len() < 3 {
        return;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for p in hull {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let n = hull.len();
    let (xa, xb) = (x0.floor().max(0.0) as isize, (x1.ceil() as isize).min(w as isize - 1));
    for y in (y0.floor().max(0.0) as usize)..=(y1.ceil() as usize).min(h - 1) {
        let py = y as f32;
        // A pixel is inside when every edge's test `A - B (px - a0) >= -1e-3` passes. Each test
        // is monotone in px (every rounded step of it is), so it passes on a prefix (B > 0), a
        // suffix (B < 0) or everywhere or nowhere (B = 0), and the pixels passing all of them
        // form one run [lo, hi]: bisect for its ends with the exact test instead of testing
        // every pixel against every edge.
        let (mut lo, mut hi) = (xa, xb);
        for i in 0..n {
            if lo > hi {
                break;
            }
            let a = hull[i];
            let b = hull[(i + 1) % n];
            let pass = |x: isize| {
                let px = x as f32;
                (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]) >= -1e-3
            };
            let slope = b[1] - a[1];
            if slope > 0.0 {
                if !pass(lo) {
                    hi = lo - 1;
                } else if !pass(hi) {
                    let (mut l, mut r) = (lo, hi); // pass(l), !pass(r)
                    while r - l > 1 {
                        let m = l + (r - l) / 2;
                        if pass(m) { l = m } else { r = m }
                    }
                    hi = l;
                }
            } else if slope < 0.0 {
                if !pass(hi) {
                    hi = lo - 1;
                } else if !pass(lo) {
                    let (mut l, mut r) = (lo, hi); // !pass(l), pass(r)
                    while r - l > 1 {
                        let m = l + (r - l) / 2;
                        if pass(m) { r = m } else { l = m }
                    }
                    lo = r;
                }
            } else if !pass(lo) {
                hi = lo - 1;
            }
        }
        if lo <= hi {
            out[y * w + lo as usize..=y * w + hi as usize].fill(1.0);
        }
    }
}

/// Step 5. `hull` is only used if the thresholded core comes out empty.
fn blend_mask<R: Rng>(mask: &[f32], hull: &[f32], w: usize, h: usize, s: f32, rng: &mut R) -> Vec<f32> {
    let lo_w = ((192.0 * s).round() as usize).clamp(1, w);
    let lo_h = ((192.0 * s).round() as usize).clamp(1, h);
    let (sw, sh) = (rng.random_range(lo_w..=w), rng.random_range(lo_h..=h));
    let k1 = scaled_odd(2 * rng.random_range(2..=12) + 1, s);
    let k2 = scaled_odd(2 * rng.random_range(2..=12) + 1, s);
    let sigma2 = rng.random_range(5.0f32..=45.0) * s;
    let small = time("mask.resize_down", || resize_bilinear(mask, w, h, 1, sw, sh));
    let mut b1 = time("mask.blur1", || blur_with_kernel(&small, sw, sh, &opencv_default_kernel(k1)));
    normalise_max(&mut b1);
    let mut core: Vec<f32> = b1.iter().map(|&v| if v >= 1.0 - 1e-4 { 1.0 } else { 0.0 }).collect();
    if core.iter().all(|&v| v == 0.0) {
        // A region thinner than the kernel has no saturated core: keep the blurred mask instead.
        core = b1;
        if core.iter().all(|&v| v <= 0.0) {
            core = resize_bilinear(hull, w, h, 1, sw, sh);
        }
    }
    let mut b2 = time("mask.blur2", || gaussian_blur(&core, sw, sh, k2, sigma2));
    normalise_max(&mut b2);
    let mut out = time("mask.resize_up", || resize_bilinear(&b2, sw, sh, 1, w, h));
    normalise_max(&mut out);
    if out.iter().all(|&v| v <= 0.0) {
        // Unreachable in practice (the ellipse/hull is never empty); never emit an empty mask.
        let mut e = vec![0f32; w * h];
        ellipse_mask(w, h, &mut e);
        return e;
    }
    out
}

fn normalise_max(x: &mut [f32]) {
    let m = x.iter().copied().fold(0.0f32, f32::max);
    if m > 0.0 {
        let inv = 1.0 / m;
        x.iter_mut().for_each(|v| *v = (*v * inv).min(1.0));
    }
}

fn scaled_odd(k256: usize, s: f32) -> usize {
    let k = (k256 as f32 * s).round() as usize;
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    k.max(3)
}

/// OpenCV's kernel for `sigma = 0`: its fixed tables up to 7 taps, else a Gaussian with
/// `sigma = 0.3 ((k - 1) / 2 - 1) + 0.8`.
fn opencv_default_kernel(k: usize) -> Vec<f32> {
    match k {
        3 => vec![0.25, 0.5, 0.25],
        5 => vec![0.0625, 0.25, 0.375, 0.25, 0.0625],
        7 => vec![0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
        _ => gaussian_kernel(k, 0.3 * ((k as f32 - 1.0) * 0.5 - 1.0) + 0.8),
    }
}

fn gaussian_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let r = (k / 2) as isize;
    let mut g: Vec<f32> = (-r..=r).map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= sum);
    g
}

fn reflect101(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let mut i = i;
    // Reflect about the edge pixels (OpenCV BORDER_REFLECT_101), repeated for large radii.
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * n - 2 - i;
        } else {
            return i as usize;
        }
    }
}

/// Separable Gaussian blur of a single-channel plane with reflect-101 borders.
pub fn gaussian_blur(x: &[f32], w: usize, h: usize, k: usize, sigma: f32) -> Vec<f32> {
    blur_with_kernel(x, w, h, &gaussian_kernel(k, sigma.max(1e-3)))
}

/// Separable blur with an odd-length normalised kernel, reflect-101 borders.
fn blur_with_kernel(x: &[f32], w: usize, h: usize, g: &[f32]) -> Vec<f32> {
    vectorised(|| blur_with_kernel_impl(x, w, h, g))
}

#[inline(always)]
fn blur_with_kernel_impl(x: &[f32], w: usize, h: usize, g: &[f32]) -> Vec<f32> {
    let k = g.len();
    let r = (k / 2) as isize;
    let mut tmp = vec![0f32; w * h];
    let ru = r as usize;
    // Interior outputs: taps in the outer loop so that the sum runs over a whole row at once
    // (vectorised), each output still accumulating `0 + g0 x0 + g1 x1 + ...` in tap order.
    let n_in = w.saturating_sub(2 * ru);
    for y in 0..h {
        let row = &x[y * w..(y + 1) * w];
        let out = &mut tmp[y * w..(y + 1) * w];
        if n_in > 0 {
            let o = &mut out[ru..ru + n_in];
            for (j, gv) in g.iter().enumerate() {
                for (d, s) in o.iter_mut().zip(&row[j..j + n_in]) {
                    *d += gv * s;
                }
            }
        }
        for (xx, o) in out.iter_mut().enumerate() {
            if xx >= ru && xx + ru < w {
                continue;
            }
            let mut acc = 0.0;
            for (j, gv) in g.iter().enumerate() {
                acc += gv * row[reflect101(xx as isize + j as isize - r, w)];
            }
            *o = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    // Row by row, all taps into one output row while it sits in L1 (each element still sums
    // its taps in tap order).
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        for (j, gv) in g.iter().enumerate() {
            let yy = reflect101(y as isize + j as isize - r, h);
            let src = &tmp[yy * w..(yy + 1) * w];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += gv * s;
            }
        }
    }
    out
}

/// Gaussian approximation by three box blurs whose widths give variance sigma^2 (Kovesi 2010),
/// replicate borders.
fn box_gauss(x: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let n = 3.0f32;
    let ideal = (12.0 * sigma * sigma / n + 1.0).sqrt();
    let mut wl = ideal.floor() as i64;
    if wl % 2 == 0 {
        wl -= 1;
    }
    let wl = wl.max(1);
    let wu = wl + 2;
    let m = ((12.0 * sigma * sigma - n * (wl * wl) as f32 - 4.0 * n * wl as f32 - 3.0 * n)
        / (-4.0 * wl as f32 - 4.0))
        .round()
        .clamp(0.0, 3.0) as usize;
    let mut cur = x.to_vec();
    let mut tmp = vec![0f32; w * h];
    for pass in 0..3 {
        let r = (if pass < m { wl } else { wu } as usize) / 2;
        box_pass(&cur, &mut tmp, w, h, r);
        std::mem::swap(&mut cur, &mut tmp);
    }
    cur
}

/// One 2-D box blur of radius r (running sums, replicate borders): `src` -> `dst`.
fn box_pass(src: &[f32], dst: &mut [f32], w: usize, h: usize, r: usize) {
    vectorised(|| box_pass_impl(src, dst, w, h, r))
}

#[inline(always)]
fn box_pass_impl(src: &[f32], dst: &mut [f32], w: usize, h: usize, r: usize) {
    if r == 0 {
        dst.copy_from_slice(src);
        return;
    }
    let inv = 1.0 / (2 * r + 1) as f32;
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0f32; w * h];
    // The running sum along a row is one long dependency chain; eight rows advance together so
    // that their chains overlap (each row's sum still runs in its own order).
    let idx: Vec<(usize, usize)> =
        (0..w).map(|xx| (clamp(xx as isize + r as isize + 1, w), clamp(xx as isize - r as isize, w))).collect();
    let full = h / 8 * 8;
    for y0 in (0..full).step_by(8) {
        box_rows::<8>(src, &mut rows, w, y0, r, inv, &idx);
    }
    for y0 in full..h {
        box_rows::<1>(src, &mut rows, w, y0, r, inv, &idx);
    }
    let mut acc = vec![0f32; w];
    for j in -(r as isize)..=r as isize {
        let yy = clamp(j, h);
        for (a, v) in acc.iter_mut().zip(&rows[yy * w..(yy + 1) * w]) {
            *a += v;
        }
    }
    for y in 0..h {
        for (o, a) in dst[y * w..(y + 1) * w].iter_mut().zip(&acc) {
            *o = a * inv;
        }
        let add = clamp(y as isize + r as isize + 1, h);
        let sub = clamp(y as isize - r as isize, h);
        let (pa, ps) = (&rows[add * w..(add + 1) * w], &rows[sub * w..(sub + 1) * w]);
        for ((a, p), m) in acc.iter_mut().zip(pa).zip(ps) {
            *a += p - m;
        }
    }
}

/// The horizontal running sums of rows `y0..y0 + N` (see [`box_pass`]); `idx[x]`: the columns
/// entering and leaving the window after output x.
#[inline(always)]
fn box_rows<const N: usize>(src: &[f32], rows: &mut [f32], w: usize, y0: usize, r: usize, inv: f32, idx: &[(usize, usize)]) {
    let src: [&[f32]; N] = std::array::from_fn(|l| &src[(y0 + l) * w..(y0 + l + 1) * w]);
    let mut acc = [0f32; N];
    for (a, row) in acc.iter_mut().zip(&src) {
        *a = (-(r as isize)..=r as isize).map(|j| row[j.clamp(0, w as isize - 1) as usize]).sum();
    }
    let (_, rest) = rows.split_at_mut(y0 * w);
    let out: [&mut [f32]; N] = {
        let mut rest = rest;
        std::array::from_fn(|_| {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(w);
            rest = b;
            a
        })
    };
    for (xx, &(add, sub)) in idx.iter().enumerate() {
        for l in 0..N {
            out[l][xx] = acc[l] * inv;
            acc[l] += src[l][add] - src[l][sub];
        }
    }
}

/// Bilinear resize with half-pixel centres (OpenCV INTER_LINEAR), `c` interleaved channels.
pub fn resize_bilinear(x: &[f32], w: usize, h: usize, c: usize, nw: usize, nh: usize) -> Vec<f32> {
    if nw == w && nh == h {
        return x.to_vec();
    }
    match c {
        1 => resize_bilinear_c::<1>(x, w, h, nw, nh),
        3 => resize_bilinear_c::<3>(x, w, h, nw, nh),
        _ => unreachable!("SBI resizes RGB images and masks"),
    }
}

/// Each output is `top + (bot - top) ty` with `top`/`bot` the horizontal interpolation of source
/// rows y0/y1 at the output's column. That horizontal interpolation depends only on (source row,
/// output column), so it is computed once per source row and reused by every output row that
/// reads it (2-16 of them when enlarging), with the same expressions and bits.
fn resize_bilinear_c<const C: usize>(x: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    vectorised(|| resize_bilinear_impl::<C>(x, w, h, nw, nh))
}

#[inline(always)]
fn resize_bilinear_impl<const C: usize>(x: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    let (fx, fy) = (w as f32 / nw as f32, h as f32 / nh as f32);
    let xs: Vec<(usize, usize, f32)> = (0..nw)
        .map(|i| {
            let sx = ((i as f32 + 0.5) * fx - 0.5).max(0.0);
            let x0 = (sx as usize).min(w - 1); // sx >= 0: truncation is floor
            (x0, (x0 + 1).min(w - 1), sx - x0 as f32)
        })
        .collect();
    let ys: Vec<(usize, usize, f32)> = (0..nh)
        .map(|j| {
            let sy = ((j as f32 + 0.5) * fy - 0.5).max(0.0);
            let y0 = (sy as usize).min(h - 1);
            (y0, (y0 + 1).min(h - 1), sy - y0 as f32)
        })
        .collect();
    let row_len = nw * C;
    // Horizontally interpolated source rows, computed on first use.
    let mut hrows = vec![0f32; h * row_len];
    let mut done = vec![false; h];
    let mut out = vec![0f32; nh * row_len];
    for (j, &(y0, y1, ty)) in ys.iter().enumerate() {
        for y in [y0, y1] {
            if !done[y] {
                let src = &x[y * w * C..(y + 1) * w * C];
                let dst = &mut hrows[y * row_len..(y + 1) * row_len];
                for (o, &(x0, x1, tx)) in dst.chunks_exact_mut(C).zip(&xs) {
                    for ch in 0..C {
                        let (a, b) = (src[x0 * C + ch], src[x1 * C + ch]);
                        o[ch] = a + (b - a) * tx;
                    }
                }
                done[y] = true;
            }
        }
        let top = &hrows[y0 * row_len..(y0 + 1) * row_len];
        let bot = &hrows[y1 * row_len..(y1 + 1) * row_len];
        for ((o, &t), &b) in out[j * row_len..(j + 1) * row_len].iter_mut().zip(top).zip(bot) {
            *o = t + (b - t) * ty;
        }
    }
    out
}

/// Scale `sc` about the centre then translate by (tx, ty); replicate or zero borders.
///
/// The sample point of output (x, y) is (f(x), g(y)), so the bilinear taps and weights of
/// [`sample_bilinear`] are computed once per column and once per row (same expressions, same
/// bits) instead of once per pixel (`tests::sample_bilinear` is the per-pixel form).
#[allow(clippy::too_many_arguments)]
fn warp_affine(
    x: &[f32],
    w: usize,
    h: usize,
    c: usize,
    sc: f32,
    tx: f32,
    ty: f32,
    replicate: bool,
) -> Vec<f32> {
    match c {
        1 => warp_affine_c::<1>(x, w, h, sc, tx, ty, replicate),
        3 => warp_affine_c::<3>(x, w, h, sc, tx, ty, replicate),
        _ => unreachable!("SBI warps RGB images and masks"),
    }
}

/// One axis of [`sample_bilinear`]: outside the zero-border range, the two taps, the weight.
#[derive(Clone, Copy)]
struct Tap {
    outside: bool,
    i0: usize,
    i1: usize,
    t: f32,
}

fn taps(n: usize, centre: f32, shift: f32, sc: f32) -> Vec<Tap> {
    (0..n)
        .map(|p| {
            let sp = (p as f32 - centre - shift) / sc + centre;
            let outside = sp < -0.5 || sp > n as f32 - 0.5;
            let sp = sp.clamp(0.0, (n - 1) as f32);
            let i0 = sp as usize; // clamped to >= 0: truncation is floor
            Tap { outside, i0, i1: (i0 + 1).min(n - 1), t: sp - i0 as f32 }
        })
        .collect()
}

fn warp_affine_c<const C: usize>(x: &[f32], w: usize, h: usize, sc: f32, tx: f32, ty: f32, replicate: bool) -> Vec<f32> {
    vectorised(|| warp_affine_impl::<C>(x, w, h, sc, tx, ty, replicate))
}

#[inline(always)]
fn warp_affine_impl<const C: usize>(x: &[f32], w: usize, h: usize, sc: f32, tx: f32, ty: f32, replicate: bool) -> Vec<f32> {
    let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
    let xs = taps(w, cx, tx, sc);
    let ys = taps(h, cy, ty, sc);
    let mut out = vec![0f32; w * h * C];
    for (y, ay) in ys.iter().enumerate() {
        if !replicate && ay.outside {
            continue; // zeros
        }
        let r0 = &x[ay.i0 * w * C..(ay.i0 + 1) * w * C];
        let r1 = &x[ay.i1 * w * C..(ay.i1 + 1) * w * C];
        let row = &mut out[y * w * C..(y + 1) * w * C];
        for (o, ax) in row.chunks_exact_mut(C).zip(&xs) {
            if !replicate && ax.outside {
                continue;
            }
            let (a0, a1, b0, b1) = (&r0[ax.i0 * C..][..C], &r0[ax.i1 * C..][..C], &r1[ax.i0 * C..][..C], &r1[ax.i1 * C..][..C]);
            for ch in 0..C {
                let top = a0[ch] + (a1[ch] - a0[ch]) * ax.t;
                let bot = b0[ch] + (b1[ch] - b0[ch]) * ax.t;
                o[ch] = top + (bot - top) * ay.t;
            }
        }
    }
    out
}

/// Fills `x` with `rng.random_range(-1.0f32..=1.0)` draws, in order. That is rand 0.9's
/// `UniformFloat::sample_single_inclusive`: one `u32` per draw, its top 23 bits as the mantissa
/// of a value in [1, 2), minus 1, times `high - low = 2`, plus `low = -1`. The draws come first
/// and the (vectorised) arithmetic after, the same operations in the same order per value.
fn uniform_pm1<R: Rng>(x: &mut [f32], rng: &mut R) {
    let mut bits = vec![0u32; x.len()];
    bits.iter_mut().for_each(|b| *b = rng.random::<u32>());
    for (v, b) in x.iter_mut().zip(&bits) {
        let v12 = f32::from_bits((b >> 9) | (127 << 23));
        *v = (v12 - 1.0) * 2.0 + -1.0;
    }
}

/// Elastic deformation: displacement fields of U(-1, 1) noise, Gaussian-smoothed, times alpha.
/// The smoothing of the noise fields uses three box passes matched to sigma (cost independent of
/// sigma; the fields are random, so the small difference to a true Gaussian does not matter).
fn elastic<R: Rng>(mask: &[f32], w: usize, h: usize, alpha: f32, sigma: f32, rng: &mut R) -> Vec<f32> {
    let mut noise = vec![0f32; w * h];
    time("elastic.noise", || uniform_pm1(&mut noise, rng));
    let dx = time("elastic.smooth", || box_gauss(&noise, w, h, sigma));
    time("elastic.noise", || uniform_pm1(&mut noise, rng));
    let dy = time("elastic.smooth", || box_gauss(&noise, w, h, sigma));
    let mut out = vec![0f32; w * h];
    time("elastic.sample", || vectorised(|| {
        // `tests::sample_bilinear(mask, .., sx, sy, false)` per pixel, in two passes per row: the
        // coordinates, taps and weights (branch-free, so they vectorise), then the gathers.
        let (wf, hf) = (w as f32, h as f32);
        let (wm, hm) = ((w - 1) as f32, (h - 1) as f32);
        let mut taps = vec![[0u32; 4]; w];
        let mut wts = vec![[0f32; 2]; w];
        let mut outside = vec![false; w];
        for y in 0..h {
            let row = y * w..(y + 1) * w;
            for (x, (((t, wt), out_f), (&ddx, &ddy))) in
                taps.iter_mut().zip(&mut wts).zip(&mut outside).zip(dx[row.clone()].iter().zip(&dy[row.clone()])).enumerate()
            {
                let (sx, sy) = (x as f32 + alpha * ddx, y as f32 + alpha * ddy);
                *out_f = sx < -0.5 || sy < -0.5 || sx > wf - 0.5 || sy > hf - 0.5;
                let sx = sx.clamp(0.0, wm);
                let sy = sy.clamp(0.0, hm);
                // Clamped to [0, n - 1]: truncation is floor (and NaN gives 0 as `as usize` does).
                let x0 = sx as i32 as u32;
                let y0 = sy as i32 as u32;
                *t = [x0, (x0 + 1).min(w as u32 - 1), y0, (y0 + 1).min(h as u32 - 1)];
                *wt = [sx - x0 as f32, sy - y0 as f32];
            }
            for (((o, t), wt), &out_f) in out[row].iter_mut().zip(&taps).zip(&wts).zip(&outside) {
                if out_f {
                    continue; // zero
                }
                let [x0, x1, y0, y1] = t.map(|v| v as usize);
                let (a, b, c, d) = (mask[y0 * w + x0], mask[y0 * w + x1], mask[y1 * w + x0], mask[y1 * w + x1]);
                let top = a + (b - a) * wt[0];
                let bot = c + (d - c) * wt[0];
                *o = top + (bot - top) * wt[1];
            }
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_square() {
        let h = convex_hull(vec![[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0]]);
        assert_eq!(h.len(), 4);
        let mut m = vec![0f32; 16];
        fill_convex(&h, 4, 4, &mut m);
        // 3x3 integer points inside [0,2]^2.
        assert_eq!(m.iter().sum::<f32>(), 9.0);
    }

    /// `fill_convex` as written before issue 22: every pixel of the box against every edge.
    fn fill_convex_every_pixel(hull: &[[f32; 2]], w: usize, h: usize, out: &mut [f32]) {
        if hull.len() < 3 {
            return;
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in hull {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
        let n = hull.len();
        for y in (y0.floor().max(0.0) as usize)..=(y1.ceil() as usize).min(h - 1) {
            for x in (x0.floor().max(0.0) as usize)..=(x1.ceil() as usize).min(w - 1) {
                let (px, py) = (x as f32, y as f32);
                let inside = (0..n).all(|i| {
                    let a = hull[i];
                    let b = hull[(i + 1) % n];
                    (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]) >= -1e-3
                });
                if inside {
                    out[y * w + x] = 1.0;
                }
            }
        }
    }

    #[test]
    fn fill_convex_runs_match_the_per_pixel_test() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (w, h) = (67, 53);
        let mut filled = 0;
        for case in 0..3000 {
            let k = rng.random_range(1..12);
            // Integer points (edges through pixel centres, the tolerance matters), fractional
            // ones, thin slivers and points clamped to the border.
            let pts: Vec<[f32; 2]> = (0..k)
                .map(|_| match case % 4 {
                    0 => [rng.random_range(0..w) as f32, rng.random_range(0..h) as f32],
                    1 => [rng.random_range(-5.0f32..(w + 5) as f32).clamp(0.0, (w - 1) as f32), rng.random_range(0.0f32..(h - 1) as f32)],
                    2 => {
                        let t = rng.random_range(0.0f32..1.0);
                        [3.0 + 50.0 * t + rng.random_range(-0.01f32..0.01), 7.0 + 30.0 * t]
                    }
                    _ => [rng.random_range(10.0f32..14.0), rng.random_range(20.0f32..22.0)],
                })
                .collect();
            let hull = convex_hull(pts);
            let (mut a, mut b) = (vec![0f32; w * h], vec![0f32; w * h]);
            fill_convex(&hull, w, h, &mut a);
            fill_convex_every_pixel(&hull, w, h, &mut b);
            assert!(a == b, "case {case}: hull {hull:?}");
            filled += a.iter().any(|&v| v > 0.0) as usize;
        }
        assert!(filled > 2000, "only {filled} of 3000 hulls cover a pixel");
    }

/// Bilinear sample of all `c` channels at (sx, sy) into `out`; outside the image: replicate
/// the border or give 0.
#[allow(clippy::too_many_arguments)]
fn sample_bilinear(
    x: &[f32],
    w: usize,
    h: usize,
    c: usize,
    sx: f32,
    sy: f32,
    replicate: bool,
    out: &mut [f32],
) {
    if !replicate && (sx < -0.5 || sy < -0.5 || sx > w as f32 - 0.5 || sy > h as f32 - 0.5) {
        out.fill(0.0);
        return;
    }
    let sx = sx.clamp(0.0, (w - 1) as f32);
    let sy = sy.clamp(0.0, (h - 1) as f32);
    let x0 = sx as usize; // clamped to >= 0: truncation is floor
    let y0 = sy as usize;
    let x1 = (x0 + 1).min(w - 1);
    let y1 = (y0 + 1).min(h - 1);
    let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
    let (i00, i01, i10, i11) = ((y0 * w + x0) * c, (y0 * w + x1) * c, (y1 * w + x0) * c, (y1 * w + x1) * c);
    for (ch, o) in out.iter_mut().enumerate() {
        let top = x[i00 + ch] + (x[i01 + ch] - x[i00 + ch]) * tx;
        let bot = x[i10 + ch] + (x[i11 + ch] - x[i10 + ch]) * tx;
        *o = top + (bot - top) * ty;
    }
}

    #[test]
    fn warp_affine_matches_per_pixel_sampling() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for (w, h) in [(1, 1), (5, 3), (64, 64), (97, 41)] {
            for c in [1, 3] {
                let x: Vec<f32> = (0..w * h * c).map(|_| rng.random_range(0.0f32..255.0)).collect();
                for replicate in [true, false] {
                    let (sc, tx, ty) = (rng.random_range(0.8f32..1.25), rng.random_range(-9.0f32..9.0), rng.random_range(-5.0f32..5.0));
                    let got = warp_affine(&x, w, h, c, sc, tx, ty, replicate);
                    let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
                    let mut want = vec![0f32; w * h * c];
                    for y in 0..h {
                        let sy = (y as f32 - cy - ty) / sc + cy;
                        for xx in 0..w {
                            let sx = (xx as f32 - cx - tx) / sc + cx;
                            let i = (y * w + xx) * c;
                            sample_bilinear(&x, w, h, c, sx, sy, replicate, &mut want[i..i + c]);
                        }
                    }
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{w}x{h}x{c} replicate {replicate} sc {sc} t ({tx}, {ty})");
                }
            }
        }
    }

    #[test]
    fn blur_preserves_constant_and_mass() {
        let x = vec![3.0f32; 20 * 10];
        let y = gaussian_blur(&x, 20, 10, 7, 2.0);
        assert!(y.iter().all(|v| (v - 3.0).abs() < 1e-4));
        // OpenCV: getGaussianKernel(9, 0) has sigma 1.7; its centre tap is 0.2364 (hand-computed:
        // 1 / sum_{i=-4..4} exp(-i^2 / (2 * 1.7^2)) = 1 / 4.2304).
        let g = opencv_default_kernel(9);
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((g[4] - 1.0 / 4.2304).abs() < 1e-4, "{g:?}");
        for k in [3, 5, 7, 9, 25] {
            assert!((opencv_default_kernel(k).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // A one-pixel impulse spreads as the kernel (separable: outer product).
        let mut imp = vec![0f32; 11 * 11];
        imp[5 * 11 + 5] = 1.0;
        let b = blur_with_kernel(&imp, 11, 11, &opencv_default_kernel(5));
        assert!((b[5 * 11 + 5] - 0.375 * 0.375).abs() < 1e-6);
        assert!((b[3 * 11 + 6] - 0.0625 * 0.25).abs() < 1e-6);
    }

    #[test]
    fn box_gauss_matches_gaussian_variance() {
        for sigma in [3.5f32, 7.0] {
            let n = 81;
            let mut imp = vec![0f32; n * n];
            imp[40 * n + 40] = 1.0;
            let b = box_gauss(&imp, n, n, sigma);
            let mass: f32 = b.iter().sum();
            assert!((mass - 1.0).abs() < 1e-4);
            let var: f32 = (0..n).map(|x| (x as f32 - 40.0).powi(2) * b[40 * n + x]).sum::<f32>()
                / (0..n).map(|x| b[40 * n + x]).sum::<f32>();
            assert!((var.sqrt() - sigma).abs() / sigma < 0.06, "sigma {sigma}: got {}", var.sqrt());
            assert!(box_gauss(&vec![2.0; 40 * 30], 40, 30, sigma).iter().all(|v| (v - 2.0).abs() < 1e-4));
        }
    }

    #[test]
    fn sharpen_matches_direct_kernel() {
        let (w, h) = (5, 4);
        let x: Vec<f32> = (0..w * h * 3).map(|i| ((i * 37) % 251) as f32).collect();
        let mut y = x.clone();
        sharpen(&mut y, w, h, 0.3, 0.7);
        // Interior pixel (2, 1), channel 1, by hand: (1 - a) v + a ((8 + l) v - sum of 8 neighbours).
        let at = |xx: usize, yy: usize| x[3 * (yy * w + xx) + 1];
        let nb: f32 = [(1, 0), (2, 0), (3, 0), (1, 1), (3, 1), (1, 2), (2, 2), (3, 2)]
            .iter()
            .map(|&(a, b)| at(a, b))
            .sum();
        let want = (0.7 * at(2, 1) + 0.3 * (8.7 * at(2, 1) - nb)).clamp(0.0, 255.0);
        assert!((y[3 * (w + 2) + 1] - want).abs() < 1e-3);
    }

    #[test]
    fn resize_identity_and_constant() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&x, 4, 3, 1, 4, 3), x);
        let c = vec![7.0f32; 30 * 3];
        assert!(resize_bilinear(&c, 10, 3, 3, 17, 9).iter().all(|v| (v - 7.0).abs() < 1e-5));
    }

    /// `hsv_shift` as written before issue 22 (libm's fmod via `rem_euclid` and `%`).
    fn hsv_shift_fmod(x: &mut [f32], p: [f32; 3]) {
        for px in x.chunks_exact_mut(3) {
            let (r, g, b) = (px[0] / 255.0, px[1] / 255.0, px[2] / 255.0);
            let mx = r.max(g).max(b);
            let mn = r.min(g).min(b);
            let d = mx - mn;
            let mut hh = if d <= 0.0 {
                0.0
            } else if mx == r {
                60.0 * ((g - b) / d).rem_euclid(6.0)
            } else if mx == g {
                60.0 * ((b - r) / d + 2.0)
            } else {
                60.0 * ((r - g) / d + 4.0)
            };
            let sat = if mx <= 0.0 { 0.0 } else { d / mx };
            hh = (hh + p[0]).rem_euclid(360.0);
            let sat = (sat + p[1]).clamp(0.0, 1.0);
            let val = (mx + p[2]).clamp(0.0, 1.0);
            let c = val * sat;
            let hp = hh / 60.0;
            let xx = c * (1.0 - ((hp % 2.0) - 1.0).abs());
            let (r1, g1, b1) = match hp as u32 {
                0 => (c, xx, 0.0),
                1 => (xx, c, 0.0),
                2 => (0.0, c, xx),
                3 => (0.0, xx, c),
                4 => (xx, 0.0, c),
                _ => (c, 0.0, xx),
            };
            let m = val - c;
            px[0] = ((r1 + m) * 255.0).clamp(0.0, 255.0);
            px[1] = ((g1 + m) * 255.0).clamp(0.0, 255.0);
            px[2] = ((b1 + m) * 255.0).clamp(0.0, 255.0);
        }
    }

    #[test]
    fn uniform_pm1_is_random_range() {
        use rand::SeedableRng;
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let mut b = a.clone();
        let mut x = vec![0f32; 10_007];
        uniform_pm1(&mut x, &mut a);
        for (i, v) in x.iter().enumerate() {
            assert_eq!(v.to_bits(), b.random_range(-1.0f32..=1.0).to_bits(), "draw {i}");
        }
        assert_eq!(a.random::<u64>(), b.random::<u64>(), "both generators at the same point");
    }

    #[test]
    fn hsv_shift_without_fmod_gives_the_same_bits() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // Integer pixels (the usual case), arbitrary floats, and the hue edges: grey, pure
        // primaries, red with a tiny negative (g - b).
        let mut x: Vec<f32> = (0..30_000).map(|i| if i % 2 == 0 { rng.random_range(0..=255) as f32 } else { rng.random_range(0.0f32..=255.0) }).collect();
        x.extend([0.0, 0.0, 0.0, 255.0, 0.0, 0.0, 0.0, 255.0, 0.0, 0.0, 0.0, 255.0, 255.0, 0.0, 1e-5, 200.0, 10.0, 10.000001, 7.0, 7.0, 7.0]);
        x.truncate(x.len() / 3 * 3);
        for _ in 0..40 {
            let p = hsv_params(&mut rng);
            for p in [p, [10.0, p[1], p[2]], [-10.0, p[1], p[2]], [0.0, 0.0, 0.0]] {
                let (mut a, mut b) = (x.clone(), x.clone());
                hsv_shift(&mut a, p);
                hsv_shift_fmod(&mut b, p);
                let bad = a.iter().zip(&b).position(|(u, v)| u.to_bits() != v.to_bits());
                assert!(bad.is_none(), "p {p:?}: pixel {:?}", bad.map(|i| &x[i / 3 * 3..i / 3 * 3 + 3]));
            }
        }
    }

    #[test]
    fn to_rgb_rounds_and_saturates_like_the_cast() {
        let mut v: Vec<f32> = (-2000..300_000).map(|i| i as f32 * 1e-3).collect();
        v.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.49999997, 0.5, 254.5, 254.49998, 1e30, 128.0]);
        let n = v.len() / 3 * 3;
        let got = to_rgb(&v[..n], n / 3, 1);
        for (a, b) in got.as_raw().iter().zip(&v[..n]) {
            assert_eq!(*a, (b.clamp(0.0, 255.0) + 0.5) as u8, "{b}");
        }
    }

    #[test]
    fn hsv_zero_shift_is_identity() {
        let mut x = vec![10.0, 200.0, 90.0, 255.0, 0.0, 0.0, 30.0, 30.0, 30.0];
        let y = x.clone();
        hsv_shift(&mut x, [0.0, 0.0, 0.0]);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-3);
        }
    }
}
