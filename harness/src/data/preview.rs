//! `bench data preview`: the training batches a protocol feeds the model, drawn by the runner's
//! own streams (`runner::train::preview_streams`) and de-normalised from the batch tensor, so the
//! picture shows the pixels after augmentation, flips and SBI, in batch order.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use image::{Rgb, RgbImage};
use plotters::prelude::*;

use super::loader::SampleInfo;
use crate::exit::{CliError, Verbosity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewStream {
    /// Real frames and the manipulations' fakes (stream O).
    Original,
    /// Real twins beside their self-blended images, with the blend mask (stream S).
    Online,
    /// One original stream per manipulation (per-domain methods), one row block each.
    Domains,
}

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// Protocol file.
    pub protocol: PathBuf,
    #[arg(long, value_enum, default_value = "original")]
    pub stream: PreviewStream,
    /// Samples to draw, from consecutive batches (online: rounded up to whole real/blend pairs).
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Seed of the run whose batches are drawn (default: the protocol's first seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the synthetic benchmark is generated or found (as for `bench run`).
    #[arg(long, default_value = "data-cache", value_name = "DIR")]
    pub data_cache: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// One drawn sample: the RGB pixels the model receives, and what it is.
pub struct Drawn {
    pub image: RgbImage,
    pub info: SampleInfo,
}

const REAL: Rgb<u8> = Rgb([30, 150, 60]);
const FAKE: Rgb<u8> = Rgb([200, 40, 40]);
const BLEND: Rgb<u8> = Rgb([230, 140, 0]);
const MASK: Rgb<u8> = Rgb([90, 90, 90]);
const BORDER: u32 = 3;
const CAPTION: u32 = 28;
const GAP: u32 = 6;
const HEADER: u32 = 50;

pub fn cmd_preview(args: PreviewArgs, v: Verbosity) -> Result<ExitCode> {
    if args.n == 0 {
        return Err(CliError::config("--n: draw at least one sample").into());
    }
    if args.out.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
        return Err(CliError::config(format!("--out {}: the preview is a PNG; name it *.png", args.out.display())).into());
    }
    let mut protocol = crate::plan::load_or_report(&args.protocol)?;
    if let Some(s) = args.seed {
        protocol.seeds = vec![s];
    }
    protocol.device = "cpu".into();
    let runs = crate::plan::expand(&protocol);
    let run = runs.first().ok_or_else(|| CliError::config("the protocol expands to no run"))?;
    let blocks = crate::runner::train::preview_samples(run, args.stream, args.n, &args.data_cache, v)?;
    let title = format!(
        "{}: stream {}, seed {}, batch size {} ({} of run {}), {} px, as fed to the model",
        protocol.name,
        stream_name(args.stream),
        run.config.seed,
        run.config.training.batch_size,
        run.config.method.name,
        run.id,
        run.config.data.resolution,
    );
    let canvas = render(&title, &blocks, args.stream == PreviewStream::Online)?;
    crate::results::write_atomic(&args.out, |f| {
        canvas
            .write_to(f, image::ImageFormat::Png)
            .map_err(|e| anyhow!("encoding the PNG: {e}"))
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    if v != Verbosity::Quiet {
        let n: usize = blocks.iter().map(|(_, d)| d.len()).sum();
        eprintln!("{n} samples of stream {} -> {}", stream_name(args.stream), args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn stream_name(s: PreviewStream) -> &'static str {
    match s {
        PreviewStream::Original => "original",
        PreviewStream::Online => "online (SBI)",
        PreviewStream::Domains => "domains",
    }
}

/// One tile: an image (or mask) with a coloured border and two caption lines.
struct Tile {
    image: RgbImage,
    colour: Rgb<u8>,
    lines: [String; 2],
}

fn caption(d: &Drawn) -> [String; 2] {
    let flip = if d.info.flipped { ", flipped" } else { "" };
    match (&d.info.sbi, d.info.label) {
        (Some(s), 1) => [
            format!("SBI blend r={}{flip}", s.ratio),
            match s.jpeg_quality {
                Some(q) => format!("{:?}, jpeg {q}", s.variant),
                None => format!("{:?}", s.variant),
            },
        ],
        (Some(_), _) => [format!("real twin{flip}"), format!("{} {}", d.info.video, d.info.frame)],
        (None, _) => [format!("{}{flip}", d.info.label_name), format!("{} {}", d.info.video, d.info.frame)],
    }
}

fn tiles(blocks: &[(String, Vec<Drawn>)], pairs: bool) -> Vec<(String, Vec<Tile>)> {
    blocks
        .iter()
        .map(|(name, drawn)| {
            let mut out = Vec::new();
            if pairs {
                // Batch order is all real twins, then all blends: pair each blend with its twin.
                for blend in drawn.iter().filter(|d| d.info.label == 1) {
                    let Some(s) = &blend.info.sbi else { continue };
                    if let Some(twin) =
                        drawn.iter().find(|d| d.info.label == 0 && d.info.sbi.as_ref().is_some_and(|t| t.twin == s.twin))
                    {
                        out.push(Tile { image: twin.image.clone(), colour: REAL, lines: caption(twin) });
                    }
                    out.push(Tile { image: blend.image.clone(), colour: BLEND, lines: caption(blend) });
                    let (w, h) = blend.image.dimensions();
                    let mask = RgbImage::from_fn(w, h, |x, y| {
                        let m = s.mask.get((y * w + x) as usize).copied().unwrap_or(0.0) * s.ratio;
                        let g = (m.clamp(0.0, 1.0) * 255.0).round() as u8;
                        Rgb([g, g, g])
                    });
                    out.push(Tile {
                        image: mask,
                        colour: MASK,
                        lines: ["blend mask x r".into(), "white: source face".into()],
                    });
                }
            } else {
                for d in drawn {
                    let colour = if d.info.label == 0 { REAL } else { FAKE };
                    out.push(Tile { image: d.image.clone(), colour, lines: caption(d) });
                }
            }
            (name.clone(), out)
        })
        .collect()
}

/// The grid: a title and legend, then per block a heading and rows of tiles (8 per row; 12 for
/// SBI: four twin/blend/mask triples).
fn render(title: &str, blocks: &[(String, Vec<Drawn>)], pairs: bool) -> Result<RgbImage> {
    let blocks = tiles(blocks, pairs);
    let res = blocks
        .iter()
        .flat_map(|(_, t)| t.first())
        .map(|t| t.image.width())
        .next()
        .ok_or_else(|| anyhow!("nothing was drawn"))?;
    // Small inputs are enlarged (nearest neighbour) so a caption fits under each.
    let scale = 128u32.div_ceil(res).max(1);
    let side = res * scale;
    let per_row = if pairs { 12 } else { 8 };
    let cell_w = side + 2 * BORDER + GAP;
    let cell_h = side + 2 * BORDER + CAPTION + GAP;
    let heading = 22u32;
    let width = (per_row as u32 * cell_w + GAP).max(900);
    let height = HEADER
        + blocks
            .iter()
            .map(|(_, t)| heading + (t.len().div_ceil(per_row) as u32) * cell_h)
            .sum::<u32>()
        + GAP;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut texts: Vec<(String, i32, i32, u32)> = vec![(title.to_string(), GAP as i32, 6, 15)];
    texts.push((
        if pairs {
            "green border: real twin (label 0)   orange: its self-blended image (label 1)   grey: blend mask x ratio".into()
        } else {
            "green border: real (label 0)   red: fake (label 1)".into()
        },
        GAP as i32,
        28,
        13,
    ));
    let mut y = HEADER;
    for (name, ts) in &blocks {
        if !name.is_empty() {
            texts.push((name.clone(), GAP as i32, y as i32 + 3, 14));
        }
        y += heading;
        for (k, t) in ts.iter().enumerate() {
            let (col, row) = ((k % per_row) as u32, (k / per_row) as u32);
            let x0 = GAP + col * cell_w;
            let y0 = y + row * cell_h;
            for yy in 0..side + 2 * BORDER {
                for xx in 0..side + 2 * BORDER {
                    canvas.put_pixel(x0 + xx, y0 + yy, t.colour);
                }
            }
            for yy in 0..side {
                for xx in 0..side {
                    let p = *t.image.get_pixel(xx / scale, yy / scale);
                    canvas.put_pixel(x0 + BORDER + xx, y0 + BORDER + yy, p);
                }
            }
            let ty = (y0 + side + 2 * BORDER + 1) as i32;
            texts.push((t.lines[0].clone(), x0 as i32, ty, 11));
            texts.push((t.lines[1].clone(), x0 as i32, ty + 13, 11));
        }
        y += (ts.len().div_ceil(per_row) as u32) * cell_h;
    }
    crate::report::register_font()?;
    {
        let backend = BitMapBackend::with_buffer(&mut canvas, (width, height));
        let area = backend.into_drawing_area();
        for (s, x, y, size) in &texts {
            let style = ("sans-serif", *size as f64).into_font().color(&BLACK);
            area.draw(&Text::new(s.clone(), (*x, *y), style)).map_err(|e| anyhow!("drawing text: {e}"))?;
        }
        area.present().map_err(|e| anyhow!("drawing text: {e}"))?;
    }
    Ok(canvas)
}

/// The RGB pixels of sample `k` of a normalised `[B, 3, R, R]` batch: `(x std + mean) 255`.
pub fn denormalise(data: &[f32], k: usize, r: usize, mean: [f32; 3], std: [f32; 3]) -> RgbImage {
    let plane = r * r;
    let base = k * 3 * plane;
    RgbImage::from_fn(r as u32, r as u32, |x, y| {
        let i = y as usize * r + x as usize;
        Rgb(std::array::from_fn(|c| {
            ((data[base + c * plane + i] * std[c] + mean[c]) * 255.0).round().clamp(0.0, 255.0) as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denormalise_inverts_the_loader_normalisation() {
        // Two 1x1 samples, planes R, G, B each; mean 0.5, std 0.5 (pixel = (x / 2 + 0.5) 255).
        let data = [0.0, 0.0, 0.0, -1.0, 1.0, 0.2];
        let px = denormalise(&data, 1, 1, [0.5; 3], [0.5; 3]);
        assert_eq!(px.get_pixel(0, 0), &Rgb([0, 255, 153]));
        // Another normalisation: mean 0.25, std 2 -> (x 2 + 0.25) 255, clamped.
        let px = denormalise(&data, 1, 1, [0.25; 3], [2.0; 3]);
        assert_eq!(px.get_pixel(0, 0), &Rgb([0, 255, 166]));
    }
}
