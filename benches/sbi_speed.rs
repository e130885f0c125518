//! SBI synthesis throughput (img/s of `data::sbi::self_blend`, one thread) and, with `--profile`,
//! where an image's time goes per stage. The dfbench side of `reference/sbi_original.sh`, which
//! times the original SBI code on the same input (written by `--write-input`).
//!
//!   cargo bench -p harness --bench sbi_speed -- [--sizes 256,380] [--seconds 3] [--profile]
//!   cargo bench -p harness --bench sbi_speed -- --write-input DIR [--sizes 256,380]
//!
//! Input: a face-like crop (skin ellipse on a background, smooth shading and noise) with 81
//! landmarks in dlib order (jaw, brows, nose, eyes, mouth, 13 forehead points), the same at every
//! run. Seeds 1, 2, ... so every run draws the same augmentations.
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use harness::data::sbi::{profile, self_blend};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn face(size: u32) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(size as u64);
    RgbImage::from_fn(size, size, |x, y| {
        let n: i32 = rng.random_range(0..24);
        let (fx, fy) = (x as f32 / size as f32 - 0.5, y as f32 / size as f32 - 0.52);
        let inside = (fx / 0.33).powi(2) + (fy / 0.42).powi(2) < 1.0;
        let g = (40.0 * (fx * 6.0).sin() * (fy * 5.0).cos()) as i32;
        let base = if inside { [180, 135, 115] } else { [50, 65, 90] };
        Rgb(base.map(|b: i32| (b + n + g).clamp(0, 255) as u8))
    })
}

/// 81 points in dlib order where an aligned face crop has them.
fn landmarks(size: f32) -> Vec<[f32; 2]> {
    let mut p = Vec::with_capacity(81);
    let at = |u: f32, v: f32| [size * (0.5 + u), size * (0.52 + v)];
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
        p.push(at(if i < 6 { -0.12 } else { 0.12 } + 0.05 * t.cos(), -0.08 + 0.02 * t.sin()));
    }
    for i in 0..20 {
        let t = std::f32::consts::TAU * i as f32 / 20.0;
        p.push(at(0.1 * t.cos(), 0.2 + 0.04 * t.sin()));
    }
    for i in 0..13 {
        let t = std::f32::consts::PI * (1.0 + i as f32 / 12.0);
        p.push(at(0.3 * t.cos(), -0.15 + 0.2 * t.sin()));
    }
    p
}

struct Args {
    sizes: Vec<u32>,
    seconds: f64,
    profile: bool,
    write_input: Option<std::path::PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { sizes: vec![256, 380], seconds: 3.0, profile: false, write_input: None };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--sizes" => {
                a.sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse().ok().filter(|&v| (16..=4096).contains(&v)))
                    .collect::<Option<_>>()
                    .ok_or("--sizes: expected comma-separated sizes in 16..=4096")?
            }
            "--seconds" => {
                a.seconds = val()?.parse().ok().filter(|&v: &f64| v > 0.0).ok_or("--seconds: expected a positive number")?
            }
            "--profile" => a.profile = true,
            "--write-input" => a.write_input = Some(val()?.into()),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sbi_speed: {e}\nusage: sbi_speed [--sizes 256,380] [--seconds S] [--profile] [--write-input DIR]");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &a.write_input {
        for &s in &a.sizes {
            let r = std::fs::create_dir_all(dir)
                .and_then(|_| face(s).save(dir.join(format!("face_{s}.png"))).map_err(std::io::Error::other))
                .and_then(|_| {
                    let txt: String = landmarks(s as f32).iter().map(|p| format!("{} {}\n", p[0], p[1])).collect();
                    std::fs::write(dir.join(format!("landmarks_{s}.txt")), txt)
                });
            if let Err(e) = r {
                eprintln!("sbi_speed: cannot write the input to {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    profile::enable(a.profile);
    for &s in &a.sizes {
        let (img, lm) = (face(s), landmarks(s as f32));
        let mut seed = 0u64;
        let mut run = |secs: f64| {
            let t0 = Instant::now();
            let mut n = 0usize;
            while n == 0 || t0.elapsed().as_secs_f64() < secs {
                seed += 1;
                black_box(self_blend(&img, Some(&lm), &mut ChaCha8Rng::seed_from_u64(seed)));
                n += 1;
            }
            (n, t0.elapsed().as_secs_f64())
        };
        run(0.5);
        profile::take();
        let (n, secs) = run(a.seconds);
        println!("dfbench sbi {s}px: {:.1} img/s ({:.3} ms/img, {n} images)", n as f64 / secs, 1e3 * secs / n as f64);
        if a.profile {
            // Pipeline order; sub-stages (`src.*`, `mask.*`) under their stage.
            const ORDER: [&str; 23] = [
                "to_f32", "hull", "source_aug", "src.hsv", "src.downscale", "src.sharpen", "affine_src",
                "affine_mask", "elastic", "elastic.noise", "elastic.smooth", "elastic.sample", "blend_mask", "mask.resize_down", "mask.blur1", "mask.blur2",
                "mask.resize_up", "blend", "post_rgb", "post_hsv", "post_bc", "jpeg", "to_u8",
            ];
            let mut stages = profile::take();
            stages.sort_by_key(|e| ORDER.iter().position(|o| *o == e.0).unwrap_or(ORDER.len()));
            let total: f64 = stages.iter().filter(|e| !e.0.contains('.')).map(|e| e.1).sum();
            println!("  {:<18} {:>9} {:>7} {:>6}", "stage", "ms/img", "share", "calls");
            for (name, t, calls) in stages {
                let ind = if name.contains('.') { "  " } else { "" };
                println!("  {ind}{name:<width$} {:>9.3} {:>6.1}% {calls:>6}", 1e3 * t / n as f64, 100.0 * t / secs, width = 18 - ind.len());
            }
            println!("  {:<18} {:>9.3} {:>6.1}%  (untimed: glue, allocation)", "timed stages", 1e3 * total / n as f64, 100.0 * total / secs);
        }
    }
    ExitCode::SUCCESS
}
