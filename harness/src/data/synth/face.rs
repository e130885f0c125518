//! Procedural faces: identities, per-video looks (pose, lighting, background), per-frame jitter,
//! the renderer and the 81 landmarks (dlib 68 order + 13 forehead points).
//!
//! Geometry lives in normalised face coordinates (u across, v down; the face contour is
//! `u^2 / w(v)^2 + v^2 = 1` with a narrowing chin `w(v) = 1 - chin * max(v, 0)^2`). A frame maps
//! face coordinates to pixels by scale, roll and translation; yaw shifts the inner features
//! sideways inside the fixed contour. The renderer and the landmarks share this geometry, so the
//! landmarks outline exactly what is drawn.
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::img::Img;

/// Everything fixed about a person: shape, colours and textures.
#[derive(Clone, Debug)]
pub struct Identity {
    pub chin: f32,
    /// Face half-width / half-height relative to the frame size.
    pub half_w: f32,
    pub half_h: f32,
    pub eye_y: f32,
    pub eye_dx: f32,
    pub eye_w: f32,
    pub eye_h: f32,
    pub iris: [f32; 3],
    pub brow_gap: f32,
    pub brow_th: f32,
    pub brow_arch: f32,
    pub nose_y: f32,
    pub nose_w: f32,
    pub mouth_y: f32,
    pub mouth_w: f32,
    pub lip_up: f32,
    pub lip_lo: f32,
    pub lip: [f32; 3],
    pub skin: [f32; 3],
    pub hair: [f32; 3],
    /// v of the hairline (below -1: bald).
    pub hairline: f32,
    /// Size of the hair mass behind the head relative to the face.
    pub hair_volume: f32,
    /// Low- and mid-frequency skin texture (value-noise lattices, moves with the face).
    pub tex_lo: Lattice,
    pub tex_mid: Lattice,
    pub tex_hair: Lattice,
}

/// A periodic value-noise lattice sampled bilinearly in face coordinates.
#[derive(Clone, Debug)]
pub struct Lattice {
    pub n: usize,
    pub v: Vec<f32>,
    pub amp: f32,
}

impl Lattice {
    fn new(rng: &mut ChaCha8Rng, n: usize, amp: f32) -> Self {
        Self { n, v: (0..n * n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect(), amp }
    }

    /// Sample at face coordinates scaled so that [-1.5, 1.5] spans the lattice once.
    #[inline]
    pub fn at(&self, u: f32, v: f32, stretch: [f32; 2]) -> f32 {
        let n = self.n as f32;
        let x = ((u * stretch[0] + 1.5) / 3.0 * n).rem_euclid(n);
        let y = ((v * stretch[1] + 1.5) / 3.0 * n).rem_euclid(n);
        let (x0, y0) = (x.floor() as usize % self.n, y.floor() as usize % self.n);
        let (x1, y1) = ((x0 + 1) % self.n, (y0 + 1) % self.n);
        let (fx, fy) = (x - x.floor(), y - y.floor());
        let (fx, fy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let a = self.v[y0 * self.n + x0];
        let b = self.v[y0 * self.n + x1];
        let c = self.v[y1 * self.n + x0];
        let d = self.v[y1 * self.n + x1];
        self.amp * ((a + (b - a) * fx) * (1.0 - fy) + (c + (d - c) * fx) * fy)
    }
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn jitter3(rng: &mut ChaCha8Rng, c: [f32; 3], amp: f32) -> [f32; 3] {
    let mut o = c;
    for v in &mut o {
        *v = (*v * (1.0 + rng.random_range(-amp..amp))).clamp(0.0, 1.0);
    }
    o
}

impl Identity {
    pub fn sample(rng: &mut ChaCha8Rng) -> Self {
        let tone = rng.random::<f32>().powf(0.8);
        let skin = jitter3(rng, lerp3([0.95, 0.80, 0.70], [0.38, 0.25, 0.18], tone), 0.06);
        let hair_kind = rng.random::<f32>();
        let hair = if hair_kind < 0.55 {
            jitter3(rng, [0.10, 0.07, 0.05], 0.4)
        } else if hair_kind < 0.8 {
            jitter3(rng, [0.35, 0.22, 0.12], 0.25)
        } else if hair_kind < 0.93 {
            jitter3(rng, [0.80, 0.68, 0.45], 0.12)
        } else {
            jitter3(rng, [0.62, 0.60, 0.58], 0.15)
        };
        let iris = match rng.random_range(0..4) {
            0 => [0.25, 0.15, 0.08],
            1 => [0.35, 0.45, 0.60],
            2 => [0.32, 0.38, 0.22],
            _ => [0.12, 0.08, 0.05],
        };
        let lip = jitter3(rng, lerp3([0.80, 0.45, 0.45], [0.45, 0.20, 0.20], tone), 0.08);
        let bald = rng.random::<f32>() < 0.08;
        Self {
            chin: rng.random_range(0.12..0.38),
            half_w: rng.random_range(0.25..0.30),
            half_h: rng.random_range(0.34..0.38),
            eye_y: rng.random_range(-0.13..-0.03),
            eye_dx: rng.random_range(0.36..0.45),
            eye_w: rng.random_range(0.14..0.19),
            eye_h: rng.random_range(0.055..0.08),
            iris: jitter3(rng, iris, 0.15),
            brow_gap: rng.random_range(0.13..0.19),
            brow_th: rng.random_range(0.025..0.05),
            brow_arch: rng.random_range(0.01..0.05),
            nose_y: rng.random_range(0.24..0.33),
            nose_w: rng.random_range(0.12..0.18),
            mouth_y: rng.random_range(0.50..0.58),
            mouth_w: rng.random_range(0.22..0.31),
            lip_up: rng.random_range(0.035..0.055),
            lip_lo: rng.random_range(0.045..0.07),
            lip,
            skin,
            hair,
            hairline: if bald { -1.3 } else { rng.random_range(-0.75..-0.52) },
            hair_volume: rng.random_range(1.06..1.3),
            tex_lo: Lattice::new(rng, 6, 0.035),
            tex_mid: Lattice::new(rng, 24, 0.018),
            tex_hair: Lattice::new(rng, 32, 0.12),
        }
    }

    /// A face swap's face: the source's appearance and inner features drawn into the target's
    /// head (contour, size, hair), as a swap network trained on both would produce.
    pub fn swapped(target: &Identity, source: &Identity) -> Identity {
        Identity {
            chin: target.chin,
            half_w: target.half_w,
            half_h: target.half_h,
            hair: target.hair,
            hairline: target.hairline,
            hair_volume: target.hair_volume,
            tex_hair: target.tex_hair.clone(),
            ..source.clone()
        }
    }
}

/// Background style of a capture setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backdrop {
    /// News-studio gradients with panels (FF++).
    Studio,
    /// Soft out-of-focus blobs (Celeb-DF, YouTube).
    Bokeh,
    /// Dim rooms with furniture edges (DFDC / DFDCP actors).
    Room,
    /// Plain wall (UADFV).
    Plain,
}

/// Fixed per video: framing, pose, lighting, background, clothes.
#[derive(Clone, Debug)]
pub struct VideoLook {
    pub centre: [f32; 2],
    pub scale: f32,
    pub roll: f32,
    pub yaw: f32,
    pub light: [f32; 3],
    pub ambient: f32,
    pub diffuse: f32,
    pub tint: [f32; 3],
    pub bg: [[f32; 3]; 2],
    pub bg_angle: f32,
    pub backdrop: Backdrop,
    /// Background shapes: (centre x, centre y, radius x, radius y, colour), in frame units.
    pub shapes: Vec<([f32; 4], [f32; 3])>,
    pub clothes: [f32; 3],
}

impl VideoLook {
    pub fn sample(rng: &mut ChaCha8Rng, backdrop: Backdrop) -> Self {
        let la: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let lr: f32 = rng.random_range(0.1..0.6);
        let dark = matches!(backdrop, Backdrop::Room);
        let base = |rng: &mut ChaCha8Rng| -> [f32; 3] {
            let g = if dark { rng.random_range(0.12..0.45) } else { rng.random_range(0.25..0.85) };
            jitter3(rng, [g, g, g], 0.25)
        };
        let bg = [base(rng), base(rng)];
        let n_shapes = match backdrop {
            Backdrop::Plain => 0,
            Backdrop::Studio => rng.random_range(2..5),
            Backdrop::Bokeh => rng.random_range(4..9),
            Backdrop::Room => rng.random_range(2..4),
        };
        let shapes = (0..n_shapes)
            .map(|_| {
                let geo = [
                    rng.random_range(0.0..1.0),
                    rng.random_range(0.0..1.0),
                    rng.random_range(0.05..0.3),
                    rng.random_range(0.05..0.4),
                ];
                (geo, base(rng))
            })
            .collect();
        let grey = rng.random_range(0.1..0.8);
        let clothes = jitter3(rng, [grey; 3], 0.4);
        Self {
            centre: [0.5 + rng.random_range(-0.03..0.03), 0.50 + rng.random_range(-0.02..0.03)],
            scale: rng.random_range(0.93..1.06),
            roll: rng.random_range(-0.09..0.09),
            yaw: rng.random_range(-0.22..0.22),
            light: [lr * la.cos(), lr * la.sin() - 0.2, 1.0],
            ambient: rng.random_range(0.55..0.72),
            diffuse: rng.random_range(0.28..0.45),
            tint: jitter3(rng, [1.0, 1.0, 1.0], 0.05),
            bg,
            bg_angle: rng.random_range(0.0..std::f32::consts::TAU),
            backdrop,
            shapes,
            clothes,
        }
    }
}

/// What changes from frame to frame.
#[derive(Clone, Copy, Debug)]
pub struct FramePose {
    pub dx: f32,
    pub dy: f32,
    pub dscale: f32,
    pub droll: f32,
    pub dyaw: f32,
    pub light_gain: f32,
    /// Mouth opening in face units and eye openness (1 = open).
    pub mouth_open: f32,
    pub eye_open: f32,
    /// Mouth-corner shift (smile), face units.
    pub smile: f32,
}

impl FramePose {
    pub fn sample(rng: &mut ChaCha8Rng) -> Self {
        Self {
            dx: rng.random_range(-0.012..0.012),
            dy: rng.random_range(-0.012..0.012),
            dscale: rng.random_range(-0.015..0.015),
            droll: rng.random_range(-0.025..0.025),
            dyaw: rng.random_range(-0.05..0.05),
            light_gain: rng.random_range(0.97..1.03),
            mouth_open: if rng.random::<f32>() < 0.4 { rng.random_range(0.0..0.05) } else { 0.0 },
            eye_open: if rng.random::<f32>() < 0.08 { 0.25 } else { rng.random_range(0.85..1.05) },
            smile: rng.random_range(-0.01..0.02),
        }
    }
}

/// Number of landmarks written per frame.
pub const N_LANDMARKS: usize = 81;

/// One frame's geometry: the face-to-pixel map plus the expression.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub centre: [f32; 2],
    pub a: f32,
    pub b: f32,
    pub cos: f32,
    pub sin: f32,
    pub yaw_shift: f32,
    pub pose: FramePose,
    pub light: [f32; 3],
    pub ambient: f32,
    pub diffuse: f32,
}

impl Frame {
    pub fn new(size: usize, id: &Identity, look: &VideoLook, pose: FramePose) -> Self {
        let s = size as f32;
        let scale = look.scale * (1.0 + pose.dscale);
        let roll = look.roll + pose.droll;
        let l = look.light;
        let ln = (l[0] * l[0] + l[1] * l[1] + l[2] * l[2]).sqrt();
        Self {
            centre: [(look.centre[0] + pose.dx) * s, (look.centre[1] + pose.dy) * s],
            a: id.half_w * scale * s,
            b: id.half_h * scale * s,
            cos: roll.cos(),
            sin: roll.sin(),
            yaw_shift: 0.3 * (look.yaw + pose.dyaw),
            pose,
            light: [l[0] / ln, l[1] / ln, l[2] / ln],
            ambient: look.ambient * pose.light_gain,
            diffuse: look.diffuse * pose.light_gain,
        }
    }

    /// Face coordinates -> pixel coordinates.
    #[inline]
    pub fn to_px(&self, u: f32, v: f32) -> [f32; 2] {
        let (x, y) = (u * self.a, v * self.b);
        [self.centre[0] + self.cos * x - self.sin * y, self.centre[1] + self.sin * x + self.cos * y]
    }

    /// Pixel coordinates -> face coordinates.
    #[inline]
    pub fn to_face(&self, px: f32, py: f32) -> (f32, f32) {
        let (dx, dy) = (px - self.centre[0], py - self.centre[1]);
        ((self.cos * dx + self.sin * dy) / self.a, (-self.sin * dx + self.cos * dy) / self.b)
    }
}

#[inline]
fn contour_w(id: &Identity, v: f32) -> f32 {
    let t = v.max(0.0);
    1.0 - id.chin * t * t
}

/// Lip curves at horizontal position `x` (face units from the mouth centre): outer top, inner
/// top, inner bottom, outer bottom (v increases downwards). None outside the mouth.
#[inline]
fn lips(id: &Identity, f: &Frame, x: f32) -> Option<[f32; 4]> {
    let mw = id.mouth_w + f.pose.smile;
    let t = x / mw;
    if t.abs() >= 1.0 {
        return None;
    }
    let s = (1.0 - t * t).sqrt();
    // Corners rise a little when smiling.
    let my = id.mouth_y - f.pose.smile * 2.0 * t * t;
    let open = f.pose.mouth_open * s;
    Some([my - open * 0.5 - id.lip_up * s, my - open * 0.5, my + open * 0.5, my + open * 0.5 + id.lip_lo * s])
}

/// The 81 landmarks in pixel coordinates (float; rounding happens when written).
pub fn landmarks(id: &Identity, f: &Frame) -> [[f32; 2]; N_LANDMARKS] {
    let mut p = [[0.0f32; 2]; N_LANDMARKS];
    let ys = f.yaw_shift;
    // 0-16: jaw from the image-left temple, round the chin, to the image-right temple.
    for (k, q) in p.iter_mut().take(17).enumerate() {
        let phi = std::f32::consts::PI + 0.12 - (std::f32::consts::PI + 0.24) * k as f32 / 16.0;
        let v = phi.sin();
        let u = phi.cos() * contour_w(id, v);
        *q = f.to_px(u, v);
    }
    // 17-21 / 22-26: brows, each from its outer to inner end on the left, inner to outer on the right.
    let by = id.eye_y - id.brow_gap;
    for k in 0..5 {
        let t = k as f32 / 4.0;
        let ul = -id.eye_dx - id.eye_w * 1.2 + t * id.eye_w * 2.1;
        let arch = id.brow_arch * (1.0 - (2.0 * t - 1.1).powi(2)).max(0.0);
        p[17 + k] = f.to_px(ul + ys, by - arch);
        p[26 - k] = f.to_px(-ul + ys, by - arch);
    }
    // 27-30: nose bridge down to the tip; 31-35: nostril base.
    for k in 0..4 {
        let v = id.eye_y + (id.nose_y - id.eye_y) * k as f32 / 3.0;
        p[27 + k] = f.to_px(ys * (1.0 + 0.3 * k as f32 / 3.0), v);
    }
    for k in 0..5 {
        let t = k as f32 / 4.0 * 2.0 - 1.0;
        p[31 + k] = f.to_px(t * id.nose_w * 0.8 + ys * 1.2, id.nose_y + 0.05 - 0.02 * t.abs());
    }
    // 36-41 left eye (outer corner, two top, inner corner, two bottom); 42-47 right eye
    // (inner corner, two top, outer corner, two bottom).
    let eh = id.eye_h * f.pose.eye_open * 0.943;
    let l = -id.eye_dx + ys;
    let r = id.eye_dx + ys;
    let (w, w3, y) = (id.eye_w, id.eye_w / 3.0, id.eye_y);
    let left =
        [[l - w, y], [l - w3, y - eh], [l + w3, y - eh], [l + w, y], [l + w3, y + eh], [l - w3, y + eh]];
    let right =
        [[r - w, y], [r - w3, y - eh], [r + w3, y - eh], [r + w, y], [r + w3, y + eh], [r - w3, y + eh]];
    for k in 0..6 {
        p[36 + k] = f.to_px(left[k][0], left[k][1]);
        p[42 + k] = f.to_px(right[k][0], right[k][1]);
    }
    // 48-59 outer lips (left corner, top left->right, right corner, bottom right->left);
    // 60-67 inner lips likewise.
    let mw = id.mouth_w + f.pose.smile;
    let corner_y = id.mouth_y - f.pose.smile * 2.0;
    let at = |x: f32, k: usize| lips(id, f, x).map(|c| c[k]).unwrap_or(corner_y);
    p[48] = f.to_px(-mw + ys, corner_y);
    p[54] = f.to_px(mw + ys, corner_y);
    for (j, t) in [-2.0f32, -1.0, 0.0, 1.0, 2.0].iter().enumerate() {
        let x = t / 3.0 * mw;
        p[49 + j] = f.to_px(x + ys, at(x, 0));
        p[59 - j] = f.to_px(x + ys, at(x, 3));
    }
    p[60] = f.to_px(-mw * 0.9 + ys, corner_y);
    p[64] = f.to_px(mw * 0.9 + ys, corner_y);
    for (j, t) in [-1.0f32, 0.0, 1.0].iter().enumerate() {
        let x = t / 3.0 * mw;
        p[61 + j] = f.to_px(x + ys, at(x, 1));
        p[67 - j] = f.to_px(x + ys, at(x, 2));
    }
    // 68-80: forehead arc from the left temple over the hairline to the right temple.
    let top = id.hairline.max(-0.92) + 0.04;
    for k in 0..13 {
        let th = std::f32::consts::PI * (1.0 - k as f32 / 12.0);
        let u = 0.93 * th.cos();
        let v = -0.22 - (top + 0.22).abs() * th.sin();
        p[68 + k] = f.to_px(u + ys * 0.3 * th.sin(), v);
    }
    p
}

#[inline]
fn cover(d_px: f32) -> f32 {
    (0.5 - d_px).clamp(0.0, 1.0)
}

#[inline]
fn mix(dst: &mut [f32; 3], c: [f32; 3], alpha: f32) {
    if alpha > 0.0 {
        for k in 0..3 {
            dst[k] += alpha * (c[k] - dst[k]);
        }
    }
}

fn scale3(c: [f32; 3], k: f32) -> [f32; 3] {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Render one frame: background, hair, neck, face with shading and texture, features.
pub fn render(out: &mut Img, id: &Identity, look: &VideoLook, f: &Frame) {
    let n = out.size;
    let s = n as f32;
    let (ga, gb) = (look.bg_angle.cos(), look.bg_angle.sin());
    let px_u = 1.0 / f.a; // one pixel in face units (horizontal)
    let px_v = 1.0 / f.b;
    let amin = f.a.min(f.b);
    for y in 0..n {
        for x in 0..n {
            let (fx, fy) = (x as f32, y as f32);
            // Background: two-colour gradient plus soft shapes.
            let t = (((fx / s - 0.5) * ga + (fy / s - 0.5) * gb) + 0.5).clamp(0.0, 1.0);
            let mut c = lerp3(look.bg[0], look.bg[1], t);
            for (g, col) in &look.shapes {
                let du = (fx / s - g[0]) / g[2];
                let dv = (fy / s - g[1]) / g[3];
                let q = du * du + dv * dv;
                let alpha = match look.backdrop {
                    Backdrop::Bokeh => (1.0 - q).max(0.0) * 0.6,
                    Backdrop::Studio | Backdrop::Room => {
                        // Panels: axis-aligned boxes with hard edges.
                        let d = (du.abs().max(dv.abs()) - 1.0) * g[2].min(g[3]) * s;
                        cover(d) * 0.8
                    }
                    Backdrop::Plain => 0.0,
                };
                mix(&mut c, *col, alpha);
            }
            let (u, v) = f.to_face(fx, fy);
            // Neck (drawn before the face, which covers its top) and clothes below.
            if v > 0.3 {
                let neck = cover((u.abs() - 0.52) * f.a);
                mix(&mut c, scale3(id.skin, 0.8 * (f.ambient + 0.5 * f.diffuse)), neck);
                let shoulders = cover((1.5 + 0.25 * (1.0 - u * u).max(0.0) - v) * f.b);
                mix(&mut c, look.clothes, shoulders);
            }
            // Hair mass behind the head.
            let hv = id.hair_volume;
            if id.hairline > -1.0 {
                let qu = u / hv;
                let qv = (v + 0.12) / (hv * 0.98);
                if qv < 0.55 {
                    let d = ((qu * qu + qv * qv).sqrt() - 1.0) * amin * hv;
                    let a = cover(d) * cover((qv - 0.55) * f.b);
                    let tex = id.tex_hair.at(u, v, [3.0, 0.6]);
                    mix(&mut c, scale3(id.hair, 1.0 + tex), a);
                }
            }
            // Face.
            let w = contour_w(id, v);
            let qf = (u / w) * (u / w) + v * v;
            if qf < 1.3 {
                let d = (qf.sqrt() - 1.0) * amin;
                let a = cover(d);
                if a > 0.0 {
                    let fc = shade_face(id, f, u, v, px_u, px_v);
                    mix(&mut c, fc, a);
                }
            }
            for k in 0..3 {
                c[k] *= look.tint[k];
            }
            out.set(x, y, c);
        }
    }
}

/// Colour of the face surface at face coordinates (u, v), features included.
fn shade_face(id: &Identity, f: &Frame, u: f32, v: f32, px_u: f32, px_v: f32) -> [f32; 3] {
    // Ellipsoid normal for Lambertian shading.
    let nz = (1.0 - 0.8 * u * u - 0.6 * v * v).max(0.05).sqrt();
    let (nx, ny) = (u * 0.8, v * 0.5);
    let nl = (nx * nx + ny * ny + nz * nz).sqrt();
    let lam = ((nx * f.light[0] + ny * f.light[1] + nz * f.light[2]) / nl).max(0.0);
    let shade = f.ambient + f.diffuse * lam;
    let tex = id.tex_lo.at(u, v, [1.0, 1.0]) + id.tex_mid.at(u, v, [1.0, 1.0]);
    let mut c = scale3(id.skin, shade * (1.0 + tex));
    // Hair over the forehead above the hairline.
    if v < id.hairline + 0.05 {
        let d = (v - id.hairline) / px_v;
        let a = cover(d);
        let tex = id.tex_hair.at(u, v, [3.0, 0.6]);
        mix(&mut c, scale3(id.hair, (0.7 + 0.5 * shade) * (1.0 + tex)), a);
    }
    // Inner features are drawn relative to the yaw-shifted centre line.
    let ui = u - f.yaw_shift;
    // Brows.
    let by = id.eye_y - id.brow_gap;
    for side in [-1.0f32, 1.0] {
        // t = 0 at the outer end, 1 at the inner end, as in `landmarks`.
        let t = (id.eye_dx + id.eye_w * 1.2 - ui * side) / (id.eye_w * 2.1);
        if (-0.05..1.05).contains(&t) {
            let arch = id.brow_arch * (1.0 - (2.0 * t - 1.1).powi(2)).max(0.0);
            let half = id.brow_th * (0.6 + 0.4 * t);
            let d = ((v - (by - arch)).abs() - half) / px_v;
            let dend = ((t - 0.5).abs() - 0.5) * id.eye_w * 2.1 / px_u;
            mix(&mut c, scale3(id.hair, 0.8 * shade), cover(d.max(dend)) * 0.9);
        }
    }
    // Eyes: sclera, iris, pupil, lid line.
    let eh = (id.eye_h * f.pose.eye_open).max(0.004);
    for side in [-1.0f32, 1.0] {
        let ex = (ui - side * id.eye_dx) / id.eye_w;
        let ey = (v - id.eye_y) / eh;
        let q = ex * ex + ey * ey;
        if q < 2.0 {
            let d = (q.sqrt() - 1.0) * (eh / px_v).min(id.eye_w / px_u);
            let a = cover(d);
            // Eye socket shadow around the eye.
            let sock = (1.0 - (q / 2.0)).max(0.0) * 0.12;
            c = scale3(c, 1.0 - sock);
            if a > 0.0 {
                let mut e = scale3([0.93, 0.91, 0.88], shade);
                let ir = id.eye_h * 1.05;
                let dx = (ui - side * id.eye_dx) / ir;
                let dy = (v - id.eye_y) / ir;
                let ri = (dx * dx + dy * dy).sqrt();
                mix(&mut e, scale3(id.iris, shade), cover((ri - 1.0) * ir / px_v));
                mix(&mut e, [0.03, 0.03, 0.03], cover((ri - 0.45) * ir / px_v));
                mix(&mut c, e, a);
                // Dark lid line along the eye boundary.
                let rim = cover(((q.sqrt() - 1.0).abs() * eh / px_v) - 0.6);
                mix(&mut c, scale3(id.hair, 0.4), rim * 0.8);
            }
        }
    }
    // Nose: side shading and nostrils.
    let nv = (v - id.eye_y) / (id.nose_y - id.eye_y);
    if (0.0..1.15).contains(&nv) {
        let wside = id.nose_w * (0.35 + 0.65 * nv.max(0.0));
        let side = if f.light[0] > 0.0 { -1.0 } else { 1.0 };
        let d = (ui - side * wside).abs() / px_u;
        let a = (1.0 - d / 2.5).max(0.0) * 0.18 * nv.min(1.0);
        c = scale3(c, 1.0 - a);
    }
    for side in [-1.0f32, 1.0] {
        let dx = (ui - side * id.nose_w * 0.45) / (id.nose_w * 0.28);
        let dy = (v - id.nose_y - 0.03) / 0.022;
        let q = (dx * dx + dy * dy).sqrt();
        let a = cover((q - 1.0) * 0.022 / px_v) * 0.75;
        mix(&mut c, scale3(id.skin, 0.25), a);
    }
    // Mouth: lips, dark opening, teeth when open wide.
    if let Some([ot, it, ib, ob]) = lips(id, f, ui) {
        let dout = ((ot - v) / px_v).max((v - ob) / px_v);
        let a = cover(dout);
        if a > 0.0 {
            let lipc = scale3(id.lip, shade * (1.0 + 0.5 * id.tex_mid.at(u, v, [1.0, 1.0])));
            mix(&mut c, lipc, a);
            let din = ((it - v) / px_v).max((v - ib) / px_v);
            let ai = cover(din);
            if ai > 0.0 {
                let mut inner = [0.22, 0.07, 0.07];
                if f.pose.mouth_open > 0.025 {
                    let teeth = cover((v - (it + 0.012)) / px_v);
                    mix(&mut inner, [0.85, 0.83, 0.78], teeth * 0.9);
                }
                mix(&mut c, scale3(inner, shade), ai);
            }
            // The line between the lips when closed.
            let seam = cover(((v - (it + ib) * 0.5).abs()) / px_v - 0.3) * 0.6;
            mix(&mut c, scale3(id.lip, 0.45 * shade), seam);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn landmarks_inside_frame_and_ordered() {
        for seed in 0..50u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let id = Identity::sample(&mut rng);
            let look = VideoLook::sample(&mut rng, Backdrop::Studio);
            let pose = FramePose::sample(&mut rng);
            let f = Frame::new(128, &id, &look, pose);
            let p = landmarks(&id, &f);
            for q in &p {
                assert!(q[0] >= 0.0 && q[0] < 128.0 && q[1] >= 0.0 && q[1] < 128.0, "{seed}: {q:?}");
            }
            // Chin (8) below the nose tip (30), below the eyes, which are below the brows.
            assert!(p[8][1] > p[30][1] && p[30][1] > p[37][1] && p[37][1] > p[19][1]);
            // Image-left eye corner left of the image-right eye corner; mouth corners ordered.
            assert!(p[36][0] < p[45][0] && p[48][0] < p[54][0]);
            // Forehead points above the brows.
            assert!(p[74][1] < p[19][1]);
        }
    }
}
