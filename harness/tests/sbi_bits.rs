//! SBI output bits are pinned: every shipped protocol trains on the S stream, so a change to
//! `self_blend`'s output for a given seed would silently change shipped results. The fixture
//! `fixtures/sbi_bits.txt` holds a hash of every output (fake, real, mask, ratio, variant, JPEG
//! quality) for a spread of seeds, sizes (square and not, not multiples of 8) and landmark
//! sets, written by the implementation before the speed work of issue 22 (commit e6ca899).
//! Regenerate only for a deliberate, documented change:
//! `SBI_BITS_WRITE=1 cargo test --release -p harness --test sbi_bits`.
use harness::data::sbi::{self, HullVariant};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A face-like image: two flat regions, smooth gradients (JPEG keeps some of it) and noise
/// (JPEG loses some of it), so every stage of the round trip matters.
fn face(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(w, h, |x, y| {
        let n: i32 = rng.random_range(0..40);
        let (fx, fy) = (x as f32 / w as f32 - 0.5, y as f32 / h as f32 - 0.52);
        let inside = (fx / 0.33).powi(2) + (fy / 0.42).powi(2) < 1.0;
        let g = (60.0 * (fx * 9.0).sin() * (fy * 7.0).cos()) as i32;
        let base = if inside { [170, 130, 110] } else { [40, 60, 90] };
        Rgb(base.map(|b: i32| (b + n + g).clamp(0, 255) as u8))
    })
}

/// 81 points in dlib order, roughly where a face crop has them: jaw 0-16, brows 17-26,
/// nose 27-35, eyes 36-47, mouth 48-67, forehead 68-80.
fn landmarks(w: f32, h: f32, jitter: u64) -> Vec<[f32; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(jitter);
    let mut p = Vec::with_capacity(81);
    let at = |u: f32, v: f32| [w * (0.5 + u), h * (0.52 + v)];
    for i in 0..17 {
        let t = std::f32::consts::PI * (i as f32 / 16.0);
        p.push(at(-0.33 * t.cos(), 0.05 + 0.35 * t.sin()));
    }
    for i in 0..10 {
        p.push(at(-0.25 + 0.05 * i as f32 + if i >= 5 { 0.03 } else { 0.0 }, -0.15));
    }
    for i in 0..9 {
        p.push(at(-0.04 + 0.01 * i as f32, -0.1 + 0.025 * i as f32));
    }
    for i in 0..12 {
        let t = std::f32::consts::TAU * (i % 6) as f32 / 6.0;
        let cx = if i < 6 { -0.12 } else { 0.12 };
        p.push(at(cx + 0.05 * t.cos(), -0.08 + 0.02 * t.sin()));
    }
    for i in 0..20 {
        let t = std::f32::consts::TAU * i as f32 / 20.0;
        p.push(at(0.1 * t.cos(), 0.2 + 0.04 * t.sin()));
    }
    for i in 0..13 {
        let t = std::f32::consts::PI * (1.0 + i as f32 / 12.0);
        p.push(at(0.3 * t.cos(), -0.15 + 0.2 * t.sin()));
    }
    for q in &mut p {
        q[0] += rng.random_range(-2.0f32..2.0);
        q[1] += rng.random_range(-2.0f32..2.0);
    }
    p
}

/// FNV-1a, 64 bit: no dependency, and any flipped bit changes it.
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn cases() -> Vec<(u32, u32, bool, u64)> {
    let mut c = Vec::new();
    // (width, height, landmarks?, seeds); 380 and 256 are the benchmark sizes.
    for &(w, h, lm, n) in &[
        (128, 128, true, 40),
        (256, 256, true, 40),
        (380, 380, true, 24),
        (201, 173, true, 24),
        (99, 131, true, 16),
        (256, 256, false, 8),
        (64, 64, true, 16),
    ] {
        for s in 0..n {
            c.push((w, h, lm, s));
        }
    }
    c
}

fn line(w: u32, h: u32, lm: bool, seed: u64) -> String {
    let img = face(w, h, seed ^ 0x5eed);
    let pts = landmarks(w as f32, h as f32, seed);
    let s = sbi::self_blend(&img, lm.then_some(&pts[..]), &mut ChaCha8Rng::seed_from_u64(seed));
    let mut f = Fnv::new();
    f.bytes(s.fake.as_raw());
    let fake = f.0;
    let mut f = Fnv::new();
    f.bytes(s.real.as_raw());
    let real = f.0;
    let mut f = Fnv::new();
    s.mask.iter().for_each(|v| f.bytes(&v.to_bits().to_le_bytes()));
    let variant = match s.variant {
        HullVariant::FaceHull => "hull",
        HullVariant::Components => "comp",
        HullVariant::ComponentsBrowsUp => "brows",
        HullVariant::FallbackEllipse => "ellipse",
    };
    format!(
        "{w}x{h} lm={lm} seed={seed} {variant} r={} q={:?} fake={fake:016x} real={real:016x} mask={:016x}",
        s.ratio, s.jpeg_quality, f.0
    )
}

#[test]
fn sbi_outputs_match_the_pinned_bits() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sbi_bits.txt");
    let got: Vec<String> = cases().into_iter().map(|(w, h, lm, s)| line(w, h, lm, s)).collect();
    if std::env::var_os("SBI_BITS_WRITE").is_some() {
        std::fs::write(&path, got.join("\n") + "\n").unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).expect("tests/fixtures/sbi_bits.txt");
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(want.len(), got.len(), "fixture has {} lines, cases give {}", want.len(), got.len());
    let bad: Vec<String> =
        want.iter().zip(&got).filter(|(a, b)| *a != b).map(|(a, b)| format!("want {a}\n got {b}")).collect();
    assert!(bad.is_empty(), "{} of {} SBI outputs changed:\n{}", bad.len(), got.len(), bad.join("\n"));
    // The cases exercise what they should: every variant, JPEG on and off, the fallback.
    for needle in ["hull", "comp", "brows", "ellipse", "q=None", "q=Some"] {
        assert!(got.iter().any(|l| l.contains(needle)), "no case with {needle}");
    }
}
