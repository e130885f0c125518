//! SBI synthesis throughput (img/s of `data::sbi::self_blend`, one thread) and, with `--profile`,
//! where an image's time goes per stage. The dfbench side of `reference/sbi_original.sh`, which
//! times the original SBI code on the same input (written by `--write-input`).
//!
//!   cargo bench -p harness --bench sbi_speed -- [--sizes 256,380] [--seconds 3] [--profile]
//!   cargo bench -p harness --bench sbi_speed -- --write-input DIR [--sizes 256,380]
//!
//! Input: one clean face of the embedded benchmark (`data::synth::sample_face`, seed 1) with its
//! 81 landmarks in dlib order, the same at every run. Seeds 1, 2, ... so every run draws the same augmentations.
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use harness::data::sbi::{profile, self_blend};
use harness::data::synth::sample_face;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
                                .and_then(|_| {
                    let (img, lm) = sample_face(s as usize, 1);
                    img.save(dir.join(format!("face_{s}.png"))).map_err(std::io::Error::other)?;
                    let txt: String = lm.iter().map(|p| format!("{} {}\n", p[0], p[1])).collect();
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
        let (img, lm) = sample_face(s as usize, 1);
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
