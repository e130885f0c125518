//! Decode, SBI and JPEG round-trip throughput (images per second) at 128, 256 and 380 px; the
//! round trip both ways: `data::jpeg::roundtrip` (no entropy coding) and the codec it matches.
//! Run briefly: `cargo bench -p harness --bench data_pipeline -- --warm-up-time 1 --measurement-time 3`.
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harness::data::jpeg;
use harness::data::loader::decode_frame;
use harness::data::sbi::self_blend;
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A textured face-like image (noise keeps PNG decoding honest: flat images compress to nothing).
fn face(size: u32) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(size as u64);
    RgbImage::from_fn(size, size, |x, y| {
        let n: u8 = rand::Rng::random_range(&mut rng, 0..40);
        let (fx, fy) = (x as f32 / size as f32 - 0.5, y as f32 / size as f32 - 0.52);
        let inside = (fx / 0.33).powi(2) + (fy / 0.42).powi(2) < 1.0;
        if inside { Rgb([180 + n, 140 + n, 120 + n]) } else { Rgb([40 + n, 60 + n, 90 + n]) }
    })
}

/// 81 points: an ellipse of 17 jaw points, the rest spread over the inner face.
fn landmarks(size: f32) -> Vec<[f32; 2]> {
    (0..81)
        .map(|i| {
            let t = std::f32::consts::TAU * i as f32 / 81.0;
            let r = if !(17..68).contains(&i) { 1.0 } else { 0.5 };
            [size * (0.5 + 0.33 * r * t.cos()), size * (0.52 + 0.42 * r * t.sin())]
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("dfbench-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Elements(1)).sample_size(10);
    for size in [128u32, 256, 380] {
        let img = face(size);
        let png = dir.join(format!("{size}.png"));
        img.save(&png).unwrap();
        g.bench_function(format!("decode_png_{size}"), |b| {
            b.iter(|| black_box(decode_frame(&png, size).unwrap()))
        });
        let lm = landmarks(size as f32);
        let x: Vec<f32> = img.as_raw().iter().map(|&v| v as f32).collect();
        g.bench_function(format!("jpeg_roundtrip_{size}"), |b| {
            b.iter(|| {
                let mut y = x.clone();
                jpeg::roundtrip(&mut y, size as usize, size as usize, 70);
                black_box(y)
            })
        });
        g.bench_function(format!("jpeg_codec_{size}"), |b| {
            b.iter(|| {
                let mut y = x.clone();
                jpeg::roundtrip_reference(&mut y, size as usize, size as usize, 70);
                black_box(y)
            })
        });
        let mut seed = 0u64;
        g.bench_function(format!("sbi_{size}"), |b| {
            b.iter(|| {
                seed += 1;
                black_box(self_blend(&img, Some(&lm), &mut ChaCha8Rng::seed_from_u64(seed)))
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
