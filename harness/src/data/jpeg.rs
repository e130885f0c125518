//! The JPEG round trip of SBI's post-augmentation (encode at a quality, decode again), in two
//! implementations that give the same bits:
//!
//! - [`roundtrip_reference`]: the real thing, `image` 0.24's baseline encoder and its decoder
//!   (`jpeg-decoder` 0.3). It defines the output.
//! - [`roundtrip`]: the same integer pipeline without the entropy coding, which is lossless and
//!   costs most of the time (and the decoder spawns a thread per component for every image).
//!
//! What the pair does, step by step, and what the fast path copies exactly:
//! 1. f32 -> u8 (`+ 0.5`, truncation) as [`super::sbi::to_rgb`].
//! 2. RGB -> YCbCr in f32 with the encoder's JFIF coefficients, truncated to u8; 4:4:4 (the
//!    encoder writes every component at 1x1 sampling, so there is no subsampling and the decoder
//!    upsamples nothing).
//! 3. 8x8 blocks, the right and bottom edge replicated into the padding.
//! 4. The encoder's integer forward DCT (IJG `jfdctint`, results scaled by 8).
//! 5. Quantisation: `((c / 8) as f32 / q).round()` with the libjpeg-scaled standard tables.
//! 6. Decoder: dequantise and inverse DCT. On x86 with SSSE3 (every x86-64 CPU since 2006),
//!    `jpeg-decoder` uses its SSSE3 kernel, whose 16-bit fixed point rounds differently from its
//!    scalar stb_image kernel; the fast path runs that same kernel.
//! 7. YCbCr -> RGB per row: the SSSE3 kernel for the first `8 (floor(w / 8) - 1)` pixels, the
//!    scalar fixed-point formula (20 fractional bits) for the rest, as the decoder splits a row.
//!
//! Where the decoder would take its scalar kernels (no SSSE3, or not x86) the fast path is not
//! used and [`roundtrip`] calls the reference: the scalar kernels are not reachable here to test
//! against, and an untested copy must not decide training data.
#![allow(unsafe_code)]

/// The reference: encode with `image`'s JPEG encoder at quality `q`, decode, write back.
/// Leaves `x` as it was if encoding or decoding fails (neither happens for 8-bit RGB up to
/// 65535 px a side).
pub fn roundtrip_reference(x: &mut [f32], w: usize, h: usize, q: u8) {
    let img = super::sbi::to_rgb(x, w, h);
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q);
    if img.write_with_encoder(enc).is_err() {
        return;
    }
    if let Ok(dec) = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg) {
        let dec = dec.to_rgb8();
        if dec.width() as usize == w && dec.height() as usize == h {
            for (d, s) in x.iter_mut().zip(dec.as_raw()) {
                *d = *s as f32;
            }
        }
    }
}

/// Same output bits as [`roundtrip_reference`] (tested on random and structured images, every
/// quality 1..=100, sizes that are not multiples of 8), without entropy coding.
pub fn roundtrip(x: &mut [f32], w: usize, h: usize, q: u8) {
    assert_eq!(x.len(), w * h * 3, "roundtrip: buffer is not {w}x{h} RGB");
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("ssse3") && w > 0 && h > 0 && w <= 65535 && h <= 65535 {
        // SAFETY: SSSE3 is present (checked just above).
        unsafe { x86::roundtrip_ssse3(x, w, h, q) };
        return;
    }
    roundtrip_reference(x, w, h, q)
}

/// The encoder's quantisation tables for quality `q` (libjpeg scaling of tables K.1 and K.2),
/// natural (row-major) order: [luma, chroma].
fn quant_tables(q: u8) -> [[u16; 64]; 2] {
    #[rustfmt::skip]
    const LUMA: [u16; 64] = [
        16, 11, 10, 16,  24,  40,  51,  61,
        12, 12, 14, 19,  26,  58,  60,  55,
        14, 13, 16, 24,  40,  57,  69,  56,
        14, 17, 22, 29,  51,  87,  80,  62,
        18, 22, 37, 56,  68, 109, 103,  77,
        24, 35, 55, 64,  81, 104, 113,  92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103,  99,
    ];
    #[rustfmt::skip]
    const CHROMA: [u16; 64] = [
        17, 18, 24, 47, 99, 99, 99, 99,
        18, 21, 26, 66, 99, 99, 99, 99,
        24, 26, 56, 99, 99, 99, 99, 99,
        47, 66, 99, 99, 99, 99, 99, 99,
        99, 99, 99, 99, 99, 99, 99, 99,
        99, 99, 99, 99, 99, 99, 99, 99,
        99, 99, 99, 99, 99, 99, 99, 99,
        99, 99, 99, 99, 99, 99, 99, 99,
    ];
    let s = u32::from(q.clamp(1, 100));
    let s = if s < 50 { 5000 / s } else { 200 - s * 2 };
    [LUMA, CHROMA].map(|t| t.map(|v| ((u32::from(v) * s + 50) / 100).clamp(1, 255) as u16))
}

/// Eight blocks side by side: element `k` of a block is lane `b` of `V[k]`, so every step of the
/// scalar DCT becomes one 8-wide vector operation (plain loops that LLVM vectorises).
#[derive(Clone, Copy)]
struct V([i32; 8]);

impl V {
    #[inline(always)]
    fn map2(self, o: V, f: impl Fn(i32, i32) -> i32) -> V {
        V(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
    #[inline(always)]
    fn muls(self, c: i32) -> V {
        V(self.0.map(|v| v * c))
    }
    #[inline(always)]
    fn adds(self, c: i32) -> V {
        V(self.0.map(|v| v + c))
    }
    #[inline(always)]
    fn shr(self, s: u32) -> V {
        V(self.0.map(|v| v >> s))
    }
    #[inline(always)]
    fn shl(self, s: u32) -> V {
        V(self.0.map(|v| v << s))
    }
}

impl std::ops::Add for V {
    type Output = V;
    #[inline(always)]
    fn add(self, o: V) -> V {
        self.map2(o, |a, b| a + b)
    }
}

impl std::ops::Sub for V {
    type Output = V;
    #[inline(always)]
    fn sub(self, o: V) -> V {
        self.map2(o, |a, b| a - b)
    }
}

/// `image` 0.24's forward DCT (its Rust port of IJG `jfdctint.c`, libjpeg 9a), operation for
/// operation, on eight blocks at once. Input: samples 0..=255; output: coefficients times 8.
#[inline(always)]
fn fdct8(s: &[V; 64], c: &mut [V; 64]) {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    const FIX_0_298631336: i32 = 2446;
    const FIX_0_390180644: i32 = 3196;
    const FIX_0_541196100: i32 = 4433;
    const FIX_0_765366865: i32 = 6270;
    const FIX_0_899976223: i32 = 7373;
    const FIX_1_175875602: i32 = 9633;
    const FIX_1_501321110: i32 = 12_299;
    const FIX_1_847759065: i32 = 15_137;
    const FIX_1_961570560: i32 = 16_069;
    const FIX_2_053119869: i32 = 16_819;
    const FIX_2_562915447: i32 = 20_995;
    const FIX_3_072711026: i32 = 25_172;
    for y in 0..8 {
        let y0 = y * 8;
        let t0 = s[y0] + s[y0 + 7];
        let t1 = s[y0 + 1] + s[y0 + 6];
        let t2 = s[y0 + 2] + s[y0 + 5];
        let t3 = s[y0 + 3] + s[y0 + 4];
        let t10 = t0 + t3;
        let t12 = t0 - t3;
        let t11 = t1 + t2;
        let t13 = t1 - t2;
        let t0 = s[y0] - s[y0 + 7];
        let t1 = s[y0 + 1] - s[y0 + 6];
        let t2 = s[y0 + 2] - s[y0 + 5];
        let t3 = s[y0 + 3] - s[y0 + 4];
        c[y0] = (t10 + t11).adds(-8 * 128).shl(PASS1_BITS);
        c[y0 + 4] = (t10 - t11).shl(PASS1_BITS);
        let z1 = (t12 + t13).muls(FIX_0_541196100).adds(1 << (CONST_BITS - PASS1_BITS - 1));
        c[y0 + 2] = (z1 + t12.muls(FIX_0_765366865)).shr(CONST_BITS - PASS1_BITS);
        c[y0 + 6] = (z1 - t13.muls(FIX_1_847759065)).shr(CONST_BITS - PASS1_BITS);
        let t12 = t0 + t2;
        let t13 = t1 + t3;
        let z1 = (t12 + t13).muls(FIX_1_175875602).adds(1 << (CONST_BITS - PASS1_BITS - 1));
        let t12 = t12.muls(-FIX_0_390180644) + z1;
        let t13 = t13.muls(-FIX_1_961570560) + z1;
        let z1 = (t0 + t3).muls(-FIX_0_899976223);
        let t0 = t0.muls(FIX_1_501321110) + (z1 + t12);
        let t3 = t3.muls(FIX_0_298631336) + (z1 + t13);
        let z1 = (t1 + t2).muls(-FIX_2_562915447);
        let t1 = t1.muls(FIX_3_072711026) + (z1 + t13);
        let t2 = t2.muls(FIX_2_053119869) + (z1 + t12);
        c[y0 + 1] = t0.shr(CONST_BITS - PASS1_BITS);
        c[y0 + 3] = t1.shr(CONST_BITS - PASS1_BITS);
        c[y0 + 5] = t2.shr(CONST_BITS - PASS1_BITS);
        c[y0 + 7] = t3.shr(CONST_BITS - PASS1_BITS);
    }
    // Columns (the original walks x from 7 down to 0; columns are independent, order is moot).
    for x in 0..8 {
        let t0 = c[x] + c[x + 56];
        let t1 = c[x + 8] + c[x + 48];
        let t2 = c[x + 16] + c[x + 40];
        let t3 = c[x + 24] + c[x + 32];
        let t10 = (t0 + t3).adds(1 << (PASS1_BITS - 1));
        let t12 = t0 - t3;
        let t11 = t1 + t2;
        let t13 = t1 - t2;
        let t0 = c[x] - c[x + 56];
        let t1 = c[x + 8] - c[x + 48];
        let t2 = c[x + 16] - c[x + 40];
        let t3 = c[x + 24] - c[x + 32];
        c[x] = (t10 + t11).shr(PASS1_BITS);
        c[x + 32] = (t10 - t11).shr(PASS1_BITS);
        let z1 = (t12 + t13).muls(FIX_0_541196100).adds(1 << (CONST_BITS + PASS1_BITS - 1));
        c[x + 16] = (z1 + t12.muls(FIX_0_765366865)).shr(CONST_BITS + PASS1_BITS);
        c[x + 48] = (z1 - t13.muls(FIX_1_847759065)).shr(CONST_BITS + PASS1_BITS);
        let t12 = t0 + t2;
        let t13 = t1 + t3;
        // (sic) The encoder's odd part of pass 2 rounds with CONST_BITS - PASS1_BITS - 1.
        let z1 = (t12 + t13).muls(FIX_1_175875602).adds(1 << (CONST_BITS - PASS1_BITS - 1));
        let t12 = t12.muls(-FIX_0_390180644) + z1;
        let t13 = t13.muls(-FIX_1_961570560) + z1;
        let z1 = (t0 + t3).muls(-FIX_0_899976223);
        let t0 = t0.muls(FIX_1_501321110) + (z1 + t12);
        let t3 = t3.muls(FIX_0_298631336) + (z1 + t13);
        let z1 = (t1 + t2).muls(-FIX_2_562915447);
        let t1 = t1.muls(FIX_3_072711026) + (z1 + t13);
        let t2 = t2.muls(FIX_2_053119869) + (z1 + t12);
        c[x + 8] = t0.shr(CONST_BITS + PASS1_BITS);
        c[x + 24] = t1.shr(CONST_BITS + PASS1_BITS);
        c[x + 40] = t2.shr(CONST_BITS + PASS1_BITS);
        c[x + 56] = t3.shr(CONST_BITS + PASS1_BITS);
    }
}

/// The encoder's RGB -> YCbCr (JFIF coefficients for a maximum of 255, f32, truncated).
#[inline(always)]
fn ycbcr(r: f32, g: f32, b: f32) -> (u8, u8, u8) {
    let max = 255.0f32;
    let y = 76.245 / max * r + 149.685 / max * g + 29.07 / max * b;
    let cb = -43.0185 / max * r - 84.4815 / max * g + 127.5 / max * b + 128.;
    let cr = 127.5 / max * r - 106.7685 / max * g - 20.7315 / max * b + 128.;
    // The encoder's `as u8` truncates; for r, g, b in 0..=255 all three lie in [0, 255.5], so
    // the truncation to i32 is exact and in range (and vectorises, unlike the saturating cast).
    debug_assert!([y, cb, cr].iter().all(|v| (0.0..256.0).contains(v)));
    // SAFETY: finite and in [0, 256) (above).
    unsafe { (y.to_int_unchecked::<i32>() as u8, cb.to_int_unchecked::<i32>() as u8, cr.to_int_unchecked::<i32>() as u8) }
}

/// The decoder's scalar YCbCr -> RGB (libjpeg-turbo's formula, 20 fractional bits).
#[inline(always)]
fn rgb_scalar(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const FIX: i32 = 20;
    let f2f = |x: f32| (x * ((1 << FIX) as f32) + 0.5) as i32;
    let clamp = |v: i32| (v >> FIX).clamp(0, 255) as u8;
    let y = y as i32 * (1 << FIX) + (1 << FIX) / 2;
    let (cb, cr) = (cb as i32 - 128, cr as i32 - 128);
    [clamp(y + f2f(1.40200) * cr), clamp(y - f2f(0.34414) * cb - f2f(0.71414) * cr), clamp(y + f2f(1.77200) * cb)]
}

/// Quantised coefficients of the three component planes, block-major (`bw * bh` blocks of 64
/// natural-order coefficients each), with the tables and the block counts per row and column.
struct Coefs {
    planes: [Vec<i16>; 3],
    tables: [[u16; 64]; 2],
    bw: usize,
    bh: usize,
}

/// Steps 1-5 for one image. The arithmetic is integer or IEEE f32 without fused operations, so
/// the AVX2 build of the same code gives the same bits (it only vectorises wider).
fn forward(x: &[f32], w: usize, h: usize, q: u8) -> Coefs {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { forward_avx2(x, w, h, q) };
    }
    forward_impl(x, w, h, q)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn forward_avx2(x: &[f32], w: usize, h: usize, q: u8) -> Coefs {
    forward_impl(x, w, h, q)
}

// Lane loops index several arrays by lane; `max(0).min(255)` is not `clamp` (NaN goes to 0).
#[allow(clippy::needless_range_loop, clippy::manual_clamp)]
#[inline(always)]
fn forward_impl(x: &[f32], w: usize, h: usize, q: u8) -> Coefs {
    let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
    // Planes padded to whole groups of 8 blocks so every group loads 8 full lanes; the padding
    // replicates the last column and row, as the encoder's `pixel_at_or_near` does for every
    // block on the edge (lanes past `bw` are computed and dropped).
    let pw = bw.div_ceil(8) * 64;
    let ph = bh * 8;
    let mut planes = [vec![0u8; pw * ph], vec![0u8; pw * ph], vec![0u8; pw * ph]];
    let mut px = vec![0f32; 3 * w];
    let (mut fr, mut fg, mut fb) = (vec![0f32; w], vec![0f32; w], vec![0f32; w]);
    for yy in 0..h {
        // Step 1 as `sbi::to_rgb` (`(v.clamp(0, 255) + 0.5) as u8`), kept in f32 as the encoder
        // converts the u8 back: `max`/`min` send NaN to 0 as the saturating cast does, and
        // `floor` is the truncation of a positive value.
        for (d, &v) in px.iter_mut().zip(&x[3 * w * yy..3 * w * (yy + 1)]) {
            *d = (v.max(0.0).min(255.0) + 0.5).floor();
        }
        for (((s, r), g), b) in px.chunks_exact(3).zip(&mut fr).zip(&mut fg).zip(&mut fb) {
            (*r, *g, *b) = (s[0], s[1], s[2]);
        }
        let [py, pb, pr] = &mut planes;
        let (ry, rb, rr) = (&mut py[pw * yy..pw * (yy + 1)], &mut pb[pw * yy..pw * (yy + 1)], &mut pr[pw * yy..pw * (yy + 1)]);
        for i in 0..w {
            let (a, b, c) = ycbcr(fr[i], fg[i], fb[i]);
            ry[i] = a;
            rb[i] = b;
            rr[i] = c;
        }
        for r in [ry, rb, rr] {
            let last = r[w - 1];
            r[w..].fill(last);
        }
    }
    for p in &mut planes {
        for yy in h..ph {
            p.copy_within(pw * (h - 1)..pw * h, pw * yy);
        }
    }
    let tables = quant_tables(q);
    let qf: [[f32; 64]; 2] = tables.map(|t| t.map(|v| v as f32));
    let mut coefs = [vec![0i16; bw * bh * 64], vec![0i16; bw * bh * 64], vec![0i16; bw * bh * 64]];
    let mut s = [V([0; 8]); 64];
    let mut c = [V([0; 8]); 64];
    let mut qz = [[0i16; 8]; 64];
    for (ci, plane) in planes.iter().enumerate() {
        let qf = &qf[(ci > 0) as usize];
        for by in 0..bh {
            for bx0 in (0..bw).step_by(8) {
                for yy in 0..8 {
                    let row: &[u8; 64] = plane[pw * (by * 8 + yy) + bx0 * 8..][..64].try_into().unwrap();
                    for xx in 0..8 {
                        for l in 0..8 {
                            s[yy * 8 + xx].0[l] = row[l * 8 + xx] as i32;
                        }
                    }
                }
                fdct8(&s, &mut c);
                for k in 0..64 {
                    for l in 0..8 {
                        // The encoder's `((c / 8) as f32 / q).round() as i32`: `/ 8` truncates
                        // toward zero; `round` (half away from zero) is written out with a
                        // truncation and the exact fractional part, |v| < 2^12 here, so that it
                        // vectorises instead of calling libm.
                        let v = (c[k].0[l] / 8) as f32 / qf[k];
                        // SAFETY: |c| < 2^16 (an 8x8 integer DCT of bytes), so v is finite and
                        // far inside the i32 range.
                        let t = unsafe { v.to_int_unchecked::<i32>() };
                        let f = v - t as f32;
                        qz[k][l] = (t + (f >= 0.5) as i32 - (f <= -0.5) as i32) as i16;
                    }
                }
                let n = (bw - bx0).min(8);
                let out = &mut coefs[ci][(by * bw + bx0) * 64..];
                for l in 0..n {
                    for k in 0..64 {
                        out[l * 64 + k] = qz[k][l];
                    }
                }
            }
        }
    }
    Coefs { planes: coefs, tables, bw, bh }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod x86 {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// [`super::roundtrip`] where the decoder takes its SSSE3 kernels.
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn roundtrip_ssse3(x: &mut [f32], w: usize, h: usize, q: u8) {
        let super::Coefs { planes: coefs, tables, bw, bh } = super::forward(x, w, h, q);
        let pw = bw * 8;
        let mut planes = [vec![0u8; pw * bh * 8], vec![0u8; pw * bh * 8], vec![0u8; pw * bh * 8]];
        for ci in 0..3 {
            let qt = &tables[(ci > 0) as usize];
            for b in 0..bw * bh {
                let (by, bx) = (b / bw, b % bw);
                let blk: &[i16; 64] = coefs[ci][b * 64..b * 64 + 64].try_into().unwrap();
                // SAFETY: SSSE3 per this function's contract; the output slice holds 8 rows of
                // stride `pw` from the block's corner.
                unsafe { idct_block(blk, qt, pw, &mut planes[ci][by * 8 * pw + bx * 8..]) };
            }
        }
        let mut line = vec![0u8; 3 * w];
        let n_simd = (w / 8).saturating_sub(1) * 8;
        for yy in 0..h {
            let r = pw * yy..pw * yy + w;
            let (py, pb, pr) = (&planes[0][r.clone()], &planes[1][r.clone()], &planes[2][r]);
            // SAFETY: SSSE3 per this function's contract.
            unsafe { color_convert_line(py, pb, pr, &mut line, n_simd / 8) };
            for i in n_simd..w {
                line[3 * i..3 * i + 3].copy_from_slice(&super::rgb_scalar(py[i], pb[i], pr[i]));
            }
            for (d, s) in x[3 * w * yy..3 * w * (yy + 1)].iter_mut().zip(&line) {
                *d = *s as f32;
            }
        }
    }

    // The two kernels below are `jpeg-decoder` 0.3.2's `src/arch/ssse3.rs` (MIT/Apache-2.0),
    // unchanged but for the bounds handling: the same intrinsics in the same order give the same
    // bits as the decoder on the same CPU.

    #[target_feature(enable = "ssse3")]
    fn idct8(data: &mut [__m128i; 8]) {
        let p2 = data[2];
        let p3 = data[6];
        let p1 = _mm_mulhrs_epi16(_mm_adds_epi16(p2, p3), _mm_set1_epi16(17734));
        let t2 = _mm_subs_epi16(_mm_subs_epi16(p1, p3), _mm_mulhrs_epi16(p3, _mm_set1_epi16(27779)));
        let t3 = _mm_adds_epi16(p1, _mm_mulhrs_epi16(p2, _mm_set1_epi16(25079)));
        let p2 = data[0];
        let p3 = data[4];
        let t0 = _mm_adds_epi16(p2, p3);
        let t1 = _mm_subs_epi16(p2, p3);
        let x0 = _mm_adds_epi16(t0, t3);
        let x3 = _mm_subs_epi16(t0, t3);
        let x1 = _mm_adds_epi16(t1, t2);
        let x2 = _mm_subs_epi16(t1, t2);
        let t0 = data[7];
        let t1 = data[5];
        let t2 = data[3];
        let t3 = data[1];
        let p3 = _mm_adds_epi16(t0, t2);
        let p4 = _mm_adds_epi16(t1, t3);
        let p1 = _mm_adds_epi16(t0, t3);
        let p2 = _mm_adds_epi16(t1, t2);
        let p5 = _mm_adds_epi16(p3, p4);
        let p5 = _mm_adds_epi16(p5, _mm_mulhrs_epi16(p5, _mm_set1_epi16(5763)));
        let t0 = _mm_mulhrs_epi16(t0, _mm_set1_epi16(9786));
        let t1 = _mm_adds_epi16(_mm_adds_epi16(t1, t1), _mm_mulhrs_epi16(t1, _mm_set1_epi16(1741)));
        let t2 = _mm_adds_epi16(
            _mm_adds_epi16(t2, _mm_adds_epi16(t2, t2)),
            _mm_mulhrs_epi16(t2, _mm_set1_epi16(2383)),
        );
        let t3 = _mm_adds_epi16(t3, _mm_mulhrs_epi16(t3, _mm_set1_epi16(16427)));
        let p1 = _mm_subs_epi16(p5, _mm_mulhrs_epi16(p1, _mm_set1_epi16(29490)));
        let p2 = _mm_subs_epi16(
            _mm_subs_epi16(_mm_subs_epi16(p5, p2), p2),
            _mm_mulhrs_epi16(p2, _mm_set1_epi16(18446)),
        );
        let p3 = _mm_subs_epi16(_mm_mulhrs_epi16(p3, _mm_set1_epi16(-31509)), p3);
        let p4 = _mm_mulhrs_epi16(p4, _mm_set1_epi16(-12785));
        let t3 = _mm_adds_epi16(_mm_adds_epi16(p1, p4), t3);
        let t2 = _mm_adds_epi16(_mm_adds_epi16(p2, p3), t2);
        let t1 = _mm_adds_epi16(_mm_adds_epi16(p2, p4), t1);
        let t0 = _mm_adds_epi16(_mm_adds_epi16(p1, p3), t0);
        data[0] = _mm_adds_epi16(x0, t3);
        data[7] = _mm_subs_epi16(x0, t3);
        data[1] = _mm_adds_epi16(x1, t2);
        data[6] = _mm_subs_epi16(x1, t2);
        data[2] = _mm_adds_epi16(x2, t1);
        data[5] = _mm_subs_epi16(x2, t1);
        data[3] = _mm_adds_epi16(x3, t0);
        data[4] = _mm_subs_epi16(x3, t0);
    }

    #[target_feature(enable = "ssse3")]
    fn transpose8(data: &mut [__m128i; 8]) {
        let d01l = _mm_unpacklo_epi16(data[0], data[1]);
        let d23l = _mm_unpacklo_epi16(data[2], data[3]);
        let d45l = _mm_unpacklo_epi16(data[4], data[5]);
        let d67l = _mm_unpacklo_epi16(data[6], data[7]);
        let d01h = _mm_unpackhi_epi16(data[0], data[1]);
        let d23h = _mm_unpackhi_epi16(data[2], data[3]);
        let d45h = _mm_unpackhi_epi16(data[4], data[5]);
        let d67h = _mm_unpackhi_epi16(data[6], data[7]);
        let d0123ll = _mm_unpacklo_epi32(d01l, d23l);
        let d0123lh = _mm_unpackhi_epi32(d01l, d23l);
        let d4567ll = _mm_unpacklo_epi32(d45l, d67l);
        let d4567lh = _mm_unpackhi_epi32(d45l, d67l);
        let d0123hl = _mm_unpacklo_epi32(d01h, d23h);
        let d0123hh = _mm_unpackhi_epi32(d01h, d23h);
        let d4567hl = _mm_unpacklo_epi32(d45h, d67h);
        let d4567hh = _mm_unpackhi_epi32(d45h, d67h);
        data[0] = _mm_unpacklo_epi64(d0123ll, d4567ll);
        data[1] = _mm_unpackhi_epi64(d0123ll, d4567ll);
        data[2] = _mm_unpacklo_epi64(d0123lh, d4567lh);
        data[3] = _mm_unpackhi_epi64(d0123lh, d4567lh);
        data[4] = _mm_unpacklo_epi64(d0123hl, d4567hl);
        data[5] = _mm_unpackhi_epi64(d0123hl, d4567hl);
        data[6] = _mm_unpacklo_epi64(d0123hh, d4567hh);
        data[7] = _mm_unpackhi_epi64(d0123hh, d4567hh);
    }

    /// Dequantise and inverse-DCT one block into 8 rows of `out` (stride `stride`).
    ///
    /// # Safety
    /// SSSE3; `out` holds at least `7 * stride + 8` bytes.
    #[target_feature(enable = "ssse3")]
    unsafe fn idct_block(coefficients: &[i16; 64], qt: &[u16; 64], stride: usize, out: &mut [u8]) {
        assert!(out.len() >= 7 * stride + 8);
        const SHIFT: i32 = 3;
        let mut data = [_mm_setzero_si128(); 8];
        for (i, item) in data.iter_mut().enumerate() {
            // SAFETY: reads 8 i16 / u16 at i * 8 < 64.
            let (c, q) = unsafe {
                (
                    _mm_loadu_si128(coefficients.as_ptr().add(i * 8) as *const _),
                    _mm_loadu_si128(qt.as_ptr().add(i * 8) as *const _),
                )
            };
            *item = _mm_slli_epi16(_mm_mullo_epi16(c, q), SHIFT);
        }
        idct8(&mut data);
        transpose8(&mut data);
        idct8(&mut data);
        transpose8(&mut data);
        for (i, item) in data.iter().enumerate() {
            const OFFSET: i16 = 128 << (SHIFT + 3);
            const ROUNDING_BIAS: i16 = (1 << (SHIFT + 3)) >> 1;
            let v = _mm_adds_epi16(*item, _mm_set1_epi16(OFFSET + ROUNDING_BIAS));
            let packed = _mm_packus_epi16(_mm_srai_epi16(v, SHIFT + 3), _mm_setzero_si128());
            // SAFETY: 8 bytes at i * stride <= 7 * stride, inside `out` (asserted above).
            unsafe { _mm_storel_epi64(out.as_mut_ptr().add(stride * i) as *mut _, packed) };
        }
    }

    /// YCbCr -> RGB for the first `8 n_vecs` pixels of a row; the decoder takes
    /// `n_vecs = floor(w / 8) - 1` (its 16-byte loads need one spare vector).
    ///
    /// # Safety
    /// SSSE3; `y`, `cb`, `cr` hold at least `8 n_vecs + 8` bytes, `output` `24 n_vecs`.
    #[target_feature(enable = "ssse3")]
    unsafe fn color_convert_line(y: &[u8], cb: &[u8], cr: &[u8], output: &mut [u8], n_vecs: usize) {
        assert!(n_vecs == 0 || (y.len().min(cb.len()).min(cr.len()) >= 8 * n_vecs + 8 && output.len() >= 24 * n_vecs));
        for i in 0..n_vecs {
            const SHIFT: i32 = 6;
            // SAFETY: 16 bytes at 8 i <= 8 n_vecs - 8: inside the inputs (asserted above).
            let (y, cb, cr) = unsafe {
                (
                    _mm_loadu_si128(y.as_ptr().add(i * 8) as *const _),
                    _mm_loadu_si128(cb.as_ptr().add(i * 8) as *const _),
                    _mm_loadu_si128(cr.as_ptr().add(i * 8) as *const _),
                )
            };
            let shuf16 = _mm_setr_epi8(0, -0x7F, 1, -0x7F, 2, -0x7F, 3, -0x7F, 4, -0x7F, 5, -0x7F, 6, -0x7F, 7, -0x7F);
            let y = _mm_slli_epi16(_mm_shuffle_epi8(y, shuf16), SHIFT);
            let cb = _mm_slli_epi16(_mm_shuffle_epi8(cb, shuf16), SHIFT);
            let cr = _mm_slli_epi16(_mm_shuffle_epi8(cr, shuf16), SHIFT);
            let c128 = _mm_set1_epi16(128 << SHIFT);
            let y = _mm_adds_epi16(y, _mm_set1_epi16((1 << SHIFT) >> 1));
            let cb = _mm_subs_epi16(cb, c128);
            let cr = _mm_subs_epi16(cr, c128);
            let cr_140200 = _mm_adds_epi16(_mm_mulhrs_epi16(cr, _mm_set1_epi16(13173)), cr);
            let cb_034414 = _mm_mulhrs_epi16(cb, _mm_set1_epi16(11276));
            let cr_071414 = _mm_mulhrs_epi16(cr, _mm_set1_epi16(23401));
            let cb_177200 = _mm_adds_epi16(_mm_mulhrs_epi16(cb, _mm_set1_epi16(25297)), cb);
            let r = _mm_adds_epi16(y, cr_140200);
            let g = _mm_subs_epi16(y, _mm_adds_epi16(cb_034414, cr_071414));
            let b = _mm_adds_epi16(y, cb_177200);
            let zero = _mm_setzero_si128();
            let r = _mm_packus_epi16(_mm_srai_epi16(r, SHIFT), zero);
            let g = _mm_packus_epi16(_mm_srai_epi16(g, SHIFT), zero);
            let b = _mm_packus_epi16(_mm_srai_epi16(b, SHIFT), zero);
            let shufr = _mm_setr_epi8(0, -0x7F, -0x7F, 1, -0x7F, -0x7F, 2, -0x7F, -0x7F, 3, -0x7F, -0x7F, 4, -0x7F, -0x7F, 5);
            let shufg = _mm_setr_epi8(-0x7F, 0, -0x7F, -0x7F, 1, -0x7F, -0x7F, 2, -0x7F, -0x7F, 3, -0x7F, -0x7F, 4, -0x7F, -0x7F);
            let shufb = _mm_alignr_epi8(shufg, shufg, 15);
            let rgb_low = _mm_or_si128(
                _mm_shuffle_epi8(r, shufr),
                _mm_or_si128(_mm_shuffle_epi8(g, shufg), _mm_shuffle_epi8(b, shufb)),
            );
            let shufr1 = _mm_add_epi8(shufb, _mm_set1_epi8(6));
            let shufg1 = _mm_add_epi8(shufr, _mm_set1_epi8(5));
            let shufb1 = _mm_add_epi8(shufg, _mm_set1_epi8(5));
            let rgb_hi = _mm_or_si128(
                _mm_shuffle_epi8(r, shufr1),
                _mm_or_si128(_mm_shuffle_epi8(g, shufg1), _mm_shuffle_epi8(b, shufb1)),
            );
            let mut data = [0u8; 32];
            // SAFETY: 32-byte local buffer; two 16-byte stores.
            unsafe {
                _mm_storeu_si128(data.as_mut_ptr() as *mut _, rgb_low);
                _mm_storeu_si128(data.as_mut_ptr().add(16) as *mut _, rgb_hi);
            }
            output[24 * i..24 * i + 24].copy_from_slice(&data[..24]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random, flat, saturated, gradient and checkerboard images (each hits other corners of
    /// the integer pipeline: clamping in the IDCT and colour conversion, zero AC blocks, large
    /// coefficients).
    fn image(kind: usize, w: usize, h: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut x = vec![0f32; w * h * 3];
        for yy in 0..h {
            for xx in 0..w {
                for c in 0..3 {
                    x[3 * (yy * w + xx) + c] = match kind {
                        0 => rng.random_range(-10.0f32..265.0),
                        1 => [0.0, 255.0, 128.4][c],
                        2 => ((xx * 255) / w.max(1)) as f32 + c as f32 * 0.3,
                        3 => if (xx / 3 + yy / 2 + c) % 2 == 0 { 255.0 } else { 0.0 },
                        4 => (if (xx + yy) % 2 == 0 { 250.0 } else { 5.0 }) + rng.random_range(-3.0f32..3.0),
                        _ => 128.0 + 100.0 * ((xx as f32 * 0.3 + c as f32).sin() * (yy as f32 * 0.2).cos()),
                    };
                }
            }
        }
        x
    }

    fn check(x: &[f32], w: usize, h: usize, q: u8) {
        let mut a = x.to_vec();
        let mut b = x.to_vec();
        roundtrip_reference(&mut a, w, h, q);
        roundtrip(&mut b, w, h, q);
        let diff = a.iter().zip(&b).position(|(p, q)| p.to_bits() != q.to_bits());
        assert!(diff.is_none(), "{w}x{h} q {q}: first difference at {diff:?}");
    }

    #[test]
    fn fast_roundtrip_matches_the_codec_at_every_quality() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for q in 1..=100u8 {
            let (w, h) = (rng.random_range(1..70), rng.random_range(1..70));
            for kind in 0..6 {
                check(&image(kind, w, h, &mut rng), w, h, q);
            }
        }
    }

    #[test]
    fn fast_roundtrip_matches_the_codec_at_odd_and_benchmark_sizes() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (w, h) in [(1, 1), (7, 9), (8, 8), (9, 17), (16, 15), (23, 31), (63, 65), (127, 129), (128, 128), (201, 173), (256, 256), (380, 380)] {
            for kind in 0..6 {
                check(&image(kind, w, h, &mut rng), w, h, rng.random_range(40..=100));
            }
        }
    }

    #[test]
    fn vector_builds_agree_with_the_baseline_build() {
        // `forward` takes the AVX2 build where the CPU has it; the baseline (SSE2) build of the
        // same code must give the same coefficients.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (w, h) in [(13, 21), (64, 64), (200, 99)] {
            for kind in 0..6 {
                let x = image(kind, w, h, &mut rng);
                let q = rng.random_range(1..=100);
                let (a, b) = (forward(&x, w, h, q), forward_impl(&x, w, h, q));
                assert!(a.planes == b.planes && a.tables == b.tables, "{w}x{h} kind {kind} q {q}");
            }
        }
    }

    #[test]
    fn roundtrip_changes_the_image() {
        // Guard against both sides being no-ops: q 40 on noise must move pixels.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = image(0, 32, 32, &mut rng);
        let mut y = x.clone();
        roundtrip(&mut y, 32, 32, 40);
        let moved = x.iter().zip(&y).filter(|(a, b)| (**a - **b).abs() > 2.0).count();
        assert!(moved > 100, "only {moved} values moved");
    }
}
