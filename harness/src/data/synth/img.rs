//! Small raster toolkit for the synthetic benchmark: float RGB images, separable Gaussian blur,
//! bilinear resampling, convex-hull masks, JPEG round trips and deterministic PNG / npy encoding.
//! Everything is plain loops over `f32` so that the output depends only on the inputs.

use anyhow::Context;
use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

/// Square RGB image, channels interleaved, values nominally in [0, 1].
#[derive(Clone, Debug)]
pub struct Img {
    pub size: usize,
    pub data: Vec<f32>,
}

impl Img {
    pub fn new(size: usize) -> Self {
        Self { size, data: vec![0.0; size * size * 3] }
    }

    #[inline]
    pub fn px(&self, x: usize, y: usize) -> [f32; 3] {
        let i = (y * self.size + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, c: [f32; 3]) {
        let i = (y * self.size + x) * 3;
        self.data[i..i + 3].copy_from_slice(&c);
    }

    /// Bilinear sample at continuous pixel coordinates (pixel centres at integers), clamped.
    #[inline]
    pub fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        let m = (self.size - 1) as f32;
        let x = x.clamp(0.0, m);
        let y = y.clamp(0.0, m);
        let x0 = x.floor() as usize;
        let y0 = y.floor() as usize;
        let x1 = (x0 + 1).min(self.size - 1);
        let y1 = (y0 + 1).min(self.size - 1);
        let fx = x - x0 as f32;
        let fy = y - y0 as f32;
        let a = self.px(x0, y0);
        let b = self.px(x1, y0);
        let c = self.px(x0, y1);
        let d = self.px(x1, y1);
        let mut o = [0.0; 3];
        for k in 0..3 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bot = c[k] + (d[k] - c[k]) * fx;
            o[k] = top + (bot - top) * fy;
        }
        o
    }

    /// `self = m * other + (1 - m) * self`, per pixel.
    pub fn blend_from(&mut self, other: &Img, mask: &Mask) {
        debug_assert_eq!(self.size, other.size);
        for (p, &m) in mask.data.iter().enumerate() {
            if m <= 0.0 {
                continue;
            }
            for k in 0..3 {
                let i = p * 3 + k;
                self.data[i] += m * (other.data[i] - self.data[i]);
            }
        }
    }

    /// Per-channel mean of the pixels weighted by `mask`.
    pub fn masked_mean(&self, mask: &Mask) -> [f32; 3] {
        let mut s = [0.0f64; 3];
        let mut w = 0.0f64;
        for (p, &m) in mask.data.iter().enumerate() {
            if m > 0.0 {
                for k in 0..3 {
                    s[k] += (m * self.data[p * 3 + k]) as f64;
                }
                w += m as f64;
            }
        }
        if w <= 0.0 {
            return [0.0; 3];
        }
        [(s[0] / w) as f32, (s[1] / w) as f32, (s[2] / w) as f32]
    }

    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect()
    }
}

/// Single-channel mask in [0, 1].
#[derive(Clone, Debug)]
pub struct Mask {
    pub size: usize,
    pub data: Vec<f32>,
}

impl Mask {
    pub fn new(size: usize) -> Self {
        Self { size, data: vec![0.0; size * size] }
    }

    /// Filled convex hull of `points`, anti-aliased over about one pixel.
    pub fn convex_hull(size: usize, points: &[[f32; 2]]) -> Self {
        let hull = convex_hull(points);
        let mut m = Self::new(size);
        if hull.len() < 3 {
            return m;
        }
        // Signed distance to a counter-clockwise convex polygon = max over edges of the
        // distance to the edge's supporting line (exact inside, a good bound outside).
        let edges: Vec<([f32; 2], [f32; 2])> = (0..hull.len())
            .map(|i| {
                let a = hull[i];
                let b = hull[(i + 1) % hull.len()];
                let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
                let len = (dx * dx + dy * dy).sqrt().max(1e-6);
                // Outward normal of a counter-clockwise polygon in y-down image coordinates.
                (a, [dy / len, -dx / len])
            })
            .collect();
        for y in 0..size {
            for x in 0..size {
                let (px, py) = (x as f32, y as f32);
                let mut d = f32::NEG_INFINITY;
                for (a, n) in &edges {
                    d = d.max((px - a[0]) * n[0] + (py - a[1]) * n[1]);
                }
                m.data[y * size + x] = (0.5 - d).clamp(0.0, 1.0);
            }
        }
        m
    }

    /// Axis-aligned filled ellipse (centre, radii in pixels), anti-aliased.
    pub fn ellipse(size: usize, c: [f32; 2], r: [f32; 2]) -> Self {
        let mut m = Self::new(size);
        let rmin = r[0].min(r[1]).max(1e-3);
        for y in 0..size {
            for x in 0..size {
                let u = (x as f32 - c[0]) / r[0];
                let v = (y as f32 - c[1]) / r[1];
                let d = ((u * u + v * v).sqrt() - 1.0) * rmin;
                m.data[y * size + x] = (0.5 - d).clamp(0.0, 1.0);
            }
        }
        m
    }

    pub fn max_with(&mut self, other: &Mask) {
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a = a.max(b);
        }
    }

    pub fn blur(&mut self, sigma: f32) {
        let size = self.size;
        gaussian_blur(&mut self.data, size, 1, sigma);
    }

    /// The 0/255 PNG written next to FF++ fakes: every pixel the manipulation touched noticeably.
    pub fn to_binary_u8(&self, threshold: f32) -> Vec<u8> {
        self.data.iter().map(|&m| if m > threshold { 255 } else { 0 }).collect()
    }
}

/// Andrew's monotone chain; returns the hull counter-clockwise in y-down coordinates
/// (i.e. clockwise on screen), without repeated end point.
pub fn convex_hull(points: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let mut p: Vec<[f32; 2]> = points.to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross =
        |o: [f32; 2], a: [f32; 2], b: [f32; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut lower: Vec<[f32; 2]> = Vec::new();
    for &q in &p {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], q) <= 0.0 {
            lower.pop();
        }
        lower.push(q);
    }
    let mut upper: Vec<[f32; 2]> = Vec::new();
    for &q in p.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], q) <= 0.0 {
            upper.pop();
        }
        upper.push(q);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// In-place separable Gaussian blur of an interleaved `size x size x ch` buffer, edges clamped.
pub fn gaussian_blur(data: &mut [f32], size: usize, ch: usize, sigma: f32) {
    if sigma < 0.05 {
        return;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let mut k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let n = size as isize;
    let mut tmp = vec![0.0f32; data.len()];
    // Horizontal pass into tmp, vertical pass back into data.
    for y in 0..n {
        for x in 0..n {
            for c in 0..ch {
                let mut acc = 0.0;
                for (j, w) in k.iter().enumerate() {
                    let xx = (x + j as isize - r).clamp(0, n - 1);
                    acc += w * data[((y * n + xx) as usize) * ch + c];
                }
                tmp[((y * n + x) as usize) * ch + c] = acc;
            }
        }
    }
    for y in 0..n {
        for x in 0..n {
            for c in 0..ch {
                let mut acc = 0.0;
                for (j, w) in k.iter().enumerate() {
                    let yy = (y + j as isize - r).clamp(0, n - 1);
                    acc += w * tmp[((yy * n + x) as usize) * ch + c];
                }
                data[((y * n + x) as usize) * ch + c] = acc;
            }
        }
    }
}

/// Box-filtered down-sampling to `small` pixels followed by bilinear up-sampling back: the
/// "rendered at lower resolution and scaled up" look of early face swaps and old cameras.
pub fn down_up(img: &Img, small: usize) -> Img {
    let n = img.size;
    let small = small.clamp(2, n);
    if small == n {
        return img.clone();
    }
    let mut lo = Img::new(small);
    let f = n as f32 / small as f32;
    for y in 0..small {
        for x in 0..small {
            let (x0, x1) = ((x as f32 * f) as usize, (((x + 1) as f32 * f).ceil() as usize).min(n));
            let (y0, y1) = ((y as f32 * f) as usize, (((y + 1) as f32 * f).ceil() as usize).min(n));
            let mut acc = [0.0f32; 3];
            for yy in y0..y1 {
                for xx in x0..x1 {
                    let p = img.px(xx, yy);
                    for k in 0..3 {
                        acc[k] += p[k];
                    }
                }
            }
            let cnt = ((y1 - y0) * (x1 - x0)).max(1) as f32;
            lo.set(x, y, [acc[0] / cnt, acc[1] / cnt, acc[2] / cnt]);
        }
    }
    let mut out = Img::new(n);
    let g = small as f32 / n as f32;
    for y in 0..n {
        for x in 0..n {
            let sx = (x as f32 + 0.5) * g - 0.5;
            let sy = (y as f32 + 0.5) * g - 0.5;
            out.set(x, y, lo.sample(sx, sy));
        }
    }
    out
}

/// Nearest-neighbour down-sampling by 2 and back up: the blocky checkerboard of a naive
/// up-sampling layer (an artifact no FF++ manipulation has).
pub fn nearest_blocks(img: &Img, block: usize) -> Img {
    let n = img.size;
    let mut out = Img::new(n);
    for y in 0..n {
        for x in 0..n {
            out.set(x, y, img.px((x / block) * block, (y / block) * block));
        }
    }
    out
}

/// Similarity warp about `centre` (scale, rotation, shift), resampled bilinearly. Bilinear
/// interpolation low-passes and leaves the periodic smoothing of a re-rendered region.
pub fn warp(img: &Img, centre: [f32; 2], scale: f32, angle: f32, shift: [f32; 2]) -> Img {
    let n = img.size;
    let mut out = Img::new(n);
    let (s, c) = angle.sin_cos();
    for y in 0..n {
        for x in 0..n {
            // Inverse map: output pixel -> source pixel.
            let dx = x as f32 - centre[0] - shift[0];
            let dy = y as f32 - centre[1] - shift[1];
            let sx = (c * dx + s * dy) / scale + centre[0];
            let sy = (-s * dx + c * dy) / scale + centre[1];
            out.set(x, y, img.sample(sx, sy));
        }
    }
    out
}

/// Unsharp masking (`img + amount * (img - blur(img))`): sharpening halos.
pub fn sharpen(img: &mut Img, sigma: f32, amount: f32) {
    let mut b = img.data.clone();
    gaussian_blur(&mut b, img.size, 3, sigma);
    for (v, &bv) in img.data.iter_mut().zip(&b) {
        *v += amount * (*v - bv);
    }
}

/// Encode to JPEG at `quality` and decode again (the capture / compression step).
pub fn jpeg_roundtrip(rgb: &[u8], size: usize, quality: u8) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(rgb.len() / 4);
    JpegEncoder::new_with_quality(&mut buf, quality)
        .write_image(rgb, size as u32, size as u32, image::ColorType::Rgb8)
        .context("JPEG encoding of a synthetic frame")?;
    let dec = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)
        .context("JPEG decoding of a synthetic frame")?;
    Ok(dec.to_rgb8().into_raw())
}

/// PNG bytes with fixed encoder settings (same pixels, same bytes for the pinned `png` crate).
pub fn png_bytes(pixels: &[u8], size: usize, color: image::ColorType) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(pixels.len() / 2);
    PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, FilterType::Adaptive)
        .write_image(pixels, size as u32, size as u32, color)
        .context("PNG encoding of a synthetic frame")?;
    Ok(buf)
}

/// `.npy` (format 1.0) of an `n x 2` little-endian int32 array, header padded to 64 bytes.
pub fn npy_i32_n2(points: &[[i32; 2]]) -> Vec<u8> {
    let dict = format!("{{'descr': '<i4', 'fortran_order': False, 'shape': ({}, 2), }}", points.len());
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + header_len + points.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for p in points {
        out.extend_from_slice(&p[0].to_le_bytes());
        out.extend_from_slice(&p[1].to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_square_with_inner_points() {
        let pts = [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [2.0, 2.0], [1.0, 3.0]];
        let h = convex_hull(&pts);
        assert_eq!(h.len(), 4);
        assert!(!h.contains(&[2.0, 2.0]));
    }

    #[test]
    fn hull_mask_area_matches_polygon() {
        // Square 10..30 x 10..30: area 400; anti-aliasing keeps the area to within the border.
        let m = Mask::convex_hull(40, &[[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]]);
        let area: f32 = m.data.iter().sum();
        assert!((area - 441.0).abs() < 45.0, "area {area}");
        assert_eq!(m.data[20 * 40 + 20], 1.0);
        assert_eq!(m.data[5 * 40 + 5], 0.0);
    }

    #[test]
    fn blur_preserves_mass_and_constant() {
        let mut d = vec![0.0f32; 32 * 32];
        d[16 * 32 + 16] = 1.0;
        gaussian_blur(&mut d, 32, 1, 2.0);
        let s: f32 = d.iter().sum();
        assert!((s - 1.0).abs() < 1e-4);
        let mut c = vec![0.7f32; 16 * 16 * 3];
        gaussian_blur(&mut c, 16, 3, 1.5);
        assert!(c.iter().all(|&v| (v - 0.7).abs() < 1e-5));
    }

    #[test]
    fn npy_header_is_aligned() {
        let b = npy_i32_n2(&[[1, 2]; 81]);
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(b.len(), 10 + hl + 81 * 8);
        assert_eq!(b[10 + hl - 1], b'\n');
    }
}
