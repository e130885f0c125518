//! Manipulations. Each takes the clean (pre-capture) target frame and returns the manipulated
//! frame, the region it touched and the landmarks a detector would find on it. Every method
//! leaves its own trace on purpose (docs/synthetic-benchmark.md, "Fakes"):
//! FF++ methods have method-specific artifacts, the unseen datasets mix blending boundaries of
//! different strength with artifacts that FF++ lacks.
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::face::{self, FramePose, Identity, N_LANDMARKS, VideoLook};
use super::img::{self, Img, Mask};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// FF++ Deepfakes: low-resolution swapped inner face, colour-corrected, soft mask.
    Df,
    /// FF++ Face2Face: same identity, re-rendered mouth and eyes, resampled, very soft mask.
    F2f,
    /// FF++ FaceSwap: warped other identity, hard edge, colour mismatch.
    Fs,
    /// FF++ NeuralTextures: periodic high-frequency texture over a re-rendered mouth.
    Nt,
    /// Celeb-DF: full-resolution, well-blended swap, subtle boundary, slight colour mismatch.
    Celeb,
    /// DFDC: mid-resolution swap with partial colour correction.
    DfdcSwap,
    /// DFDC: swap through a nearest-neighbour up-sampler (blocky checkerboard).
    DfdcBlocks,
    /// DFDC: same identity with smoothed ("beautified") and re-sharpened skin.
    DfdcSmooth,
    /// DFDCP method A: full-resolution swap without colour correction, medium boundary.
    DfdcpA,
    /// DFDCP method B: half-resolution swap with sharpening halos.
    DfdcpB,
    /// UADFV (FakeApp): very low-resolution face, visible boundary, brightness mismatch.
    Uadfv,
}

/// Per fake video: everything the method draws once so that frames of a video are consistent.
#[derive(Clone, Debug)]
pub struct FakeParams {
    pub tint: [f32; 3],
    pub resolution: f32,
    pub feather: f32,
    pub correction: f32,
    pub warp_scale: f32,
    pub warp_angle: f32,
    pub period: [f32; 2],
    pub phase: [f32; 2],
    pub amp: f32,
    pub mouth_delta: f32,
    pub eye_delta: f32,
    pub smile_delta: f32,
    pub brightness: f32,
}

impl FakeParams {
    pub fn sample(method: Method, rng: &mut ChaCha8Rng) -> Self {
        let mut tint = [1.0f32; 3];
        let tamp = match method {
            Method::Fs => 0.08,
            Method::Celeb => 0.025,
            Method::DfdcpA => 0.05,
            _ => 0.03,
        };
        for t in &mut tint {
            *t = 1.0 + rng.random_range(-tamp..tamp);
        }
        Self {
            tint,
            resolution: match method {
                Method::Df => rng.random_range(0.35..0.5),
                Method::DfdcSwap => rng.random_range(0.6..0.8),
                Method::DfdcpB => 0.5,
                Method::Uadfv => rng.random_range(0.22..0.32),
                _ => 1.0,
            },
            // Mask feather (Gaussian sigma) as a fraction of the frame size.
            feather: match method {
                Method::Df => rng.random_range(0.03..0.04),
                Method::F2f => rng.random_range(0.05..0.065),
                Method::Fs => 0.004,
                Method::Nt => 0.025,
                Method::Celeb => rng.random_range(0.05..0.07),
                Method::DfdcSwap => rng.random_range(0.025..0.04),
                Method::DfdcBlocks => 0.03,
                Method::DfdcSmooth => 0.035,
                Method::DfdcpA => rng.random_range(0.015..0.025),
                Method::DfdcpB => 0.03,
                Method::Uadfv => rng.random_range(0.01..0.016),
            },
            correction: match method {
                Method::Df => 0.95,
                Method::Fs => 0.5,
                Method::Celeb => 1.0,
                Method::DfdcSwap | Method::DfdcBlocks => 0.7,
                Method::DfdcpB => 0.5,
                _ => 0.0,
            },
            warp_scale: rng.random_range(1.025..1.07),
            warp_angle: rng.random_range(-0.04..0.04),
            period: [rng.random_range(2.5..4.0), rng.random_range(2.5..4.0)],
            phase: [rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)],
            amp: rng.random_range(0.06..0.08),
            mouth_delta: rng.random_range(0.03..0.06),
            eye_delta: if rng.random::<bool>() {
                rng.random_range(0.12..0.3)
            } else {
                rng.random_range(-0.45..-0.2)
            },
            smile_delta: rng.random_range(0.005..0.02),
            brightness: if rng.random::<bool>() {
                rng.random_range(1.06..1.12)
            } else {
                rng.random_range(0.88..0.94)
            },
        }
    }
}

/// A manipulated frame before capture.
pub struct Faked {
    pub img: Img,
    /// Blend weight actually used (1 = fully manipulated pixel).
    pub mask: Mask,
    pub landmarks: [[f32; 2]; N_LANDMARKS],
}

/// Scale points about their centroid (shrinks a hull so the blend stays inside the face).
fn shrink(points: &[[f32; 2]], k: f32) -> Vec<[f32; 2]> {
    let n = points.len() as f32;
    let cx = points.iter().map(|p| p[0]).sum::<f32>() / n;
    let cy = points.iter().map(|p| p[1]).sum::<f32>() / n;
    points.iter().map(|p| [cx + (p[0] - cx) * k, cy + (p[1] - cy) * k]).collect()
}

/// Inner face: jaw 1..=15 and the brows, as the landmark hull FF++-style masks use.
fn inner_face(lm: &[[f32; 2]; N_LANDMARKS], size: usize, k: f32) -> Mask {
    let pts: Vec<[f32; 2]> = lm[1..=15].iter().chain(&lm[17..=26]).copied().collect();
    Mask::convex_hull(size, &shrink(&pts, k))
}

fn bbox(points: &[[f32; 2]]) -> ([f32; 2], [f32; 2]) {
    let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
    for p in points {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    ([(lo[0] + hi[0]) * 0.5, (lo[1] + hi[1]) * 0.5], [(hi[0] - lo[0]) * 0.5, (hi[1] - lo[1]) * 0.5])
}

/// Region around the mouth, widened to cover lips and the skin between nose and chin.
fn mouth_region(lm: &[[f32; 2]; N_LANDMARKS], size: usize, kx: f32, ky: f32) -> Mask {
    let (c, r) = bbox(&lm[48..=67]);
    let ry = r[1].max(size as f32 * 0.025);
    Mask::ellipse(size, c, [r[0] * kx, ry * ky])
}

fn eye_regions(lm: &[[f32; 2]; N_LANDMARKS], size: usize) -> Mask {
    let mut m = Mask::new(size);
    for (eye, brow) in [(36..=41, 17..=21), (42..=47, 22..=26)] {
        let pts: Vec<[f32; 2]> = lm[eye].iter().chain(&lm[brow]).copied().collect();
        let (c, r) = bbox(&pts);
        m.max_with(&Mask::ellipse(size, c, [r[0] * 1.35, r[1] * 1.6]));
    }
    m
}

/// Shift `src`'s colour mean inside `mask` towards `dst`'s by the fraction `k`.
fn colour_transfer(src: &mut Img, dst: &Img, mask: &Mask, k: f32) {
    if k <= 0.0 {
        return;
    }
    let ms = src.masked_mean(mask);
    let md = dst.masked_mean(mask);
    for (i, v) in src.data.iter_mut().enumerate() {
        let c = i % 3;
        *v += k * (md[c] - ms[c]);
    }
}

fn tint(img: &mut Img, t: [f32; 3], gain: f32) {
    for (i, v) in img.data.iter_mut().enumerate() {
        *v *= t[i % 3] * gain;
    }
}

/// Render the frame of `id` in the target's scene.
fn render_as(
    id: &Identity,
    look: &VideoLook,
    pose: FramePose,
    size: usize,
) -> (Img, [[f32; 2]; N_LANDMARKS]) {
    let f = face::Frame::new(size, id, look, pose);
    let mut im = Img::new(size);
    face::render(&mut im, id, look, &f);
    (im, face::landmarks(id, &f))
}

/// Build one manipulated frame. `clean` is the target's rendered (pre-capture) frame and
/// `target_lm` its landmarks.
#[allow(clippy::too_many_arguments)]
pub fn manipulate(
    method: Method,
    p: &FakeParams,
    target: &Identity,
    source: &Identity,
    look: &VideoLook,
    pose: FramePose,
    clean: &Img,
    target_lm: &[[f32; 2]; N_LANDMARKS],
) -> Faked {
    let size = clean.size;
    let s = size as f32;
    let swap = Identity::swapped(target, source);
    let swapped = || render_as(&swap, look, pose, size);
    let lowres = |im: &Img, r: f32| img::down_up(im, ((s * r).round() as usize).max(8));
    let finish = |mut mask: Mask, content: &Img, feather: f32, lm: [[f32; 2]; N_LANDMARKS]| {
        mask.blur(feather * s);
        let mut out = clean.clone();
        out.blend_from(content, &mask);
        Faked { img: out, mask, landmarks: lm }
    };
    match method {
        Method::Df => {
            let (mut sw, lm) = swapped();
            let mask = inner_face(&lm, size, 0.94);
            colour_transfer(&mut sw, clean, &mask, p.correction);
            finish(mask, &lowres(&sw, p.resolution), p.feather, lm)
        }
        Method::F2f => {
            let mut pose2 = pose;
            pose2.mouth_open = (pose.mouth_open + p.mouth_delta).max(0.0);
            pose2.eye_open = (pose.eye_open + p.eye_delta).clamp(0.2, 1.1);
            pose2.smile = pose.smile + p.smile_delta;
            let (re, lm) = render_as(target, look, pose2, size);
            // Re-projection: a sub-pixel similarity warp and a mild rescale, both bilinear.
            let c = lm[30];
            let re = img::warp(&re, c, 1.0 + (p.warp_scale - 1.0) * 0.2, 0.0, [0.45, 0.35]);
            let re = lowres(&re, 0.72);
            let mut mask = mouth_region(&lm, size, 1.5, 2.6);
            mask.max_with(&eye_regions(&lm, size));
            finish(mask, &re, p.feather, lm)
        }
        Method::Fs => {
            let (mut sw, lm) = swapped();
            let c = lm[30];
            sw = img::warp(&sw, c, p.warp_scale, p.warp_angle, [0.0, 0.0]);
            // Partial colour matching: the pasted face keeps a visible tone and tint mismatch.
            colour_transfer(&mut sw, clean, &inner_face(&lm, size, 0.92), p.correction);
            tint(&mut sw, p.tint, 1.0);
            // The landmark fit of the pasted face follows the warp.
            let (sn, cs) = p.warp_angle.sin_cos();
            let mut wl = lm;
            for q in &mut wl {
                let (dx, dy) = (q[0] - c[0], q[1] - c[1]);
                *q = [c[0] + p.warp_scale * (cs * dx - sn * dy), c[1] + p.warp_scale * (sn * dx + cs * dy)];
            }
            let mask = inner_face(&wl, size, 0.92);
            finish(mask, &sw, p.feather, wl)
        }
        Method::Nt => {
            let mut pose2 = pose;
            pose2.mouth_open = (pose.mouth_open + p.mouth_delta * 0.3).max(0.0);
            let (mut re, lm) = render_as(target, look, pose2, size);
            let tau = std::f32::consts::TAU;
            for y in 0..size {
                for x in 0..size {
                    let t = (tau * (x as f32 / p.period[0] + p.phase[0])).sin()
                        * (tau * (y as f32 / p.period[1] + p.phase[1])).sin();
                    let i = (y * size + x) * 3;
                    for k in 0..3 {
                        re.data[i + k] += p.amp * t;
                    }
                }
            }
            let mask = mouth_region(&lm, size, 1.6, 3.0);
            finish(mask, &re, p.feather, lm)
        }
        Method::Celeb | Method::DfdcSwap | Method::DfdcpA | Method::Uadfv => {
            let (mut sw, lm) = swapped();
            let shrink_k = if method == Method::Celeb { 0.9 } else { 0.93 };
            let mask = inner_face(&lm, size, shrink_k);
            colour_transfer(&mut sw, clean, &mask, p.correction);
            let gain = if method == Method::Uadfv { p.brightness } else { 1.0 };
            tint(&mut sw, p.tint, gain);
            let content = if p.resolution < 0.999 { lowres(&sw, p.resolution) } else { sw };
            finish(mask, &content, p.feather, lm)
        }
        Method::DfdcBlocks => {
            let (mut sw, lm) = swapped();
            let mask = inner_face(&lm, size, 0.93);
            colour_transfer(&mut sw, clean, &mask, p.correction);
            let block = if size >= 192 { 4 } else { 2 };
            finish(mask, &img::nearest_blocks(&sw, block), p.feather, lm)
        }
        Method::DfdcSmooth => {
            let mut sm = clean.clone();
            img::gaussian_blur(&mut sm.data, size, 3, 1.6 * s / 128.0);
            img::sharpen(&mut sm, 0.8 * s / 128.0, 1.2);
            let mask = inner_face(target_lm, size, 0.93);
            finish(mask, &sm, p.feather, *target_lm)
        }
        Method::DfdcpB => {
            let (mut sw, lm) = swapped();
            let mask = inner_face(&lm, size, 0.93);
            colour_transfer(&mut sw, clean, &mask, p.correction);
            tint(&mut sw, p.tint, 1.0);
            let mut lr = lowres(&sw, p.resolution);
            img::sharpen(&mut lr, 1.2 * s / 128.0, 1.0);
            finish(mask, &lr, p.feather, lm)
        }
    }
}
