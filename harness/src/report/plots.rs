//! Plots as PNG and SVG, drawn with plotters and the embedded DejaVu Sans (no system fonts), so
//! the output is the same on every machine. Each figure is drawn twice (once per backend) from
//! the same data; PNG bytes are encoded here so the files are written atomically like the rest.
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::aggregate::AVG;
use super::load::{Group, Run};
use super::tables::Ctx;
use crate::results::Level;
use crate::stats;

pub const PLOT_IDS: [&str; 5] = ["loss-conflict", "cosine", "roc", "sensitivity", "auc-bar"];

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() -> Result<()> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok();
    });
    if ok { Ok(()) } else { Err(anyhow!("the embedded font DejaVuSans.ttf could not be loaded")) }
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws `fig` to `<stem>.svg` and `<stem>.png` (returned as bytes).
fn render_both<F: Figure>(fig: &F, stem: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let (w, h) = fig.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgb, w, h, image::ColorType::Rgb8)
            .map_err(|e| anyhow!("PNG encoding failed: {e}"))?;
    }
    Ok(vec![(format!("{stem}.png"), png), (format!("{stem}.svg"), svg.into_bytes())])
}

fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}

fn range_of(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Points (x, y) with an optional symmetric error bar.
struct Series {
    name: String,
    points: Vec<(f64, f64, Option<f64>)>,
}

struct LinePanel {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
    x_range: Option<(f64, f64)>,
    y_range: Option<(f64, f64)>,
    hline: Option<f64>,
    diagonal: bool,
    markers: bool,
    legend: SeriesLabelPosition,
    /// Per-step quantities over seeds, drawn under `series`.
    traces: Vec<TraceSeries>,
    /// The x axis counts steps: ticks at whole numbers only.
    integer_x: bool,
}

/// A per-step quantity over the seeds of one group: the per-step mean (drawn faint), its moving
/// average (drawn solid), and a band of ± one standard deviation over the seeds' smoothed curves.
struct TraceSeries {
    name: String,
    raw: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
    /// (step, lo, hi); empty with a single seed.
    band: Vec<(f64, f64, f64)>,
}

/// Centred moving average over `2k + 1` points (fewer at the ends), k about 1/40 of the length:
/// enough to show the trend of a noisy per-step curve without hiding its turns.
fn smooth(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let k = (n / 40).max(1);
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(k), (i + k + 1).min(n));
            values[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

impl TraceSeries {
    /// From each seed's `(step, value)` points (any order, steps may differ between seeds).
    fn over_seeds(name: String, per_seed: &[Vec<(u32, f64)>]) -> Option<Self> {
        use std::collections::BTreeMap;
        let per_seed: Vec<&Vec<(u32, f64)>> = per_seed.iter().filter(|p| !p.is_empty()).collect();
        if per_seed.is_empty() {
            return None;
        }
        // Each seed's curve smoothed on its own steps, then the seeds pooled per step.
        let mut raw: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        let mut smoothed: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for pts in &per_seed {
            let mut pts: Vec<(u32, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
            pts.sort_by_key(|p| p.0);
            let sm = smooth(&pts.iter().map(|p| p.1).collect::<Vec<_>>());
            for ((step, v), s) in pts.iter().zip(sm) {
                raw.entry(*step).or_default().push(*v);
                smoothed.entry(*step).or_default().push(s);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let raw: Vec<(f64, f64)> = raw.iter().map(|(s, v)| (*s as f64, mean(v))).collect();
        let smooth: Vec<(f64, f64)> = smoothed.iter().map(|(s, v)| (*s as f64, mean(v))).collect();
        let band = if per_seed.len() > 1 {
            smoothed
                .iter()
                .filter_map(|(s, v)| {
                    let (m, sd) = stats::mean_std(v)?;
                    sd.map(|sd| (*s as f64, m - sd, m + sd))
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(TraceSeries { name, raw, smooth, band })
    }

    fn y_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.raw.iter().map(|p| p.1).chain(self.band.iter().flat_map(|b| [b.1, b.2]))
    }
}

impl LinePanel {
    fn new(title: String, x_label: &str, y_label: &str) -> Self {
        LinePanel {
            title,
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            x_range: None,
            y_range: None,
            hline: None,
            diagonal: false,
            markers: false,
            legend: SeriesLabelPosition::UpperRight,
            traces: Vec::new(),
            integer_x: false,
        }
    }

    /// The y range the panel would choose by itself (for sharing one among panels).
    fn natural_y(&self) -> (f64, f64) {
        range_of(
            self.series
                .iter()
                .flat_map(|s| s.points.iter().flat_map(|p| [p.1 - p.2.unwrap_or(0.0), p.1 + p.2.unwrap_or(0.0)]))
                .chain(self.traces.iter().flat_map(|t| t.y_values())),
        )
    }

    fn draw_on<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let xr = self.x_range.unwrap_or_else(|| {
            range_of(
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .chain(self.traces.iter().flat_map(|t| t.raw.iter().map(|p| p.0))),
            )
        });
        let yr = self.y_range.unwrap_or_else(|| self.natural_y());
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .map_err(pe)?;
        let whole = |x: &f64| format!("{}", x.round() as i64);
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_label.as_str()).y_desc(self.y_label.as_str()).label_style(font(12)).axis_desc_style(font(14));
        if self.integer_x {
            // At most one tick per step, so that no two ticks round to the same whole number.
            let span = (xr.1 - xr.0).floor().max(1.0) as usize;
            mesh.x_labels(span.min(10) + 1).x_label_formatter(&whole);
        }
        mesh.draw().map_err(pe)?;
        for (i, t) in self.traces.iter().enumerate() {
            let c = color(i);
            if !t.band.is_empty() {
                let poly: Vec<(f64, f64)> = t
                    .band
                    .iter()
                    .map(|b| (b.0, b.1))
                    .chain(t.band.iter().rev().map(|b| (b.0, b.2)))
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.15).filled()))).map_err(pe)?;
            }
            chart.draw_series(LineSeries::new(t.raw.iter().copied(), c.mix(0.3).stroke_width(1))).map_err(pe)?;
            chart
                .draw_series(LineSeries::new(t.smooth.iter().copied(), c.stroke_width(2)))
                .map_err(pe)?
                .label(t.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        if let Some(y) = self.hline {
            chart.draw_series(LineSeries::new([(xr.0, y), (xr.1, y)], BLACK.mix(0.4))).map_err(pe)?;
        }
        if self.diagonal {
            chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(pe)?;
        }
        for (i, s) in self.series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))
                .map_err(pe)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
            if self.markers {
                chart
                    .draw_series(s.points.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))
                    .map_err(pe)?;
            }
            let bars: Vec<_> = s.points.iter().filter_map(|p| p.2.map(|e| (p.0, p.1, e))).collect();
            chart
                .draw_series(
                    bars.iter()
                        .map(|&(x, y, e)| PathElement::new([(x, y - e), (x, y + e)], c.stroke_width(1))),
                )
                .map_err(pe)?;
        }
        chart
            .configure_series_labels()
            .label_font(font(12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .position(self.legend.clone())
            .draw()
            .map_err(pe)?;
        Ok(())
    }
}

/// One or more line panels side by side (at most three per row).
struct Panels(Vec<LinePanel>);

impl Figure for Panels {
    fn size(&self) -> (u32, u32) {
        let n = self.0.len().max(1) as u32;
        let cols = n.min(3);
        let rows = n.div_ceil(3);
        (520 * cols, 400 * rows)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(pe)?;
        let n = self.0.len().max(1);
        let areas = root.split_evenly((n.div_ceil(3), n.min(3)));
        for (p, a) in self.0.iter().zip(&areas) {
            p.draw_on(a)?;
        }
        Ok(())
    }
}

/// Grouped bars: categories on x, one bar per series, with std whiskers.
struct Bars {
    title: String,
    y_label: String,
    categories: Vec<String>,
    series: Vec<(String, Vec<Option<(f64, Option<f64>)>>)>,
}

impl Figure for Bars {
    fn size(&self) -> (u32, u32) {
        ((160 * self.categories.len() as u32).max(640), 460)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(pe)?;
        let nc = self.categories.len();
        let ymax = self
            .series
            .iter()
            .flat_map(|s| s.1.iter().flatten().map(|(m, sd)| m + sd.unwrap_or(0.0)))
            .fold(1.0f64, f64::max)
            * 1.08;
        let cats = self.categories.clone();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..nc as f64, 0.0..ymax)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(nc.max(1) * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 && i < cats.len() {
                    cats[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(self.y_label.as_str())
            .label_style(font(12))
            .axis_desc_style(font(14))
            .draw()
            .map_err(pe)?;
        let ns = self.series.len().max(1) as f64;
        let width = 0.8 / ns;
        for (si, (name, vals)) in self.series.iter().enumerate() {
            let c = color(si);
            let rects: Vec<_> = vals
                .iter()
                .enumerate()
                .filter_map(|(ci, v)| v.map(|(m, _)| (ci, m)))
                .map(|(ci, m)| {
                    let x0 = ci as f64 + 0.1 + si as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.92, m)], c.filled())
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(pe)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            let whiskers: Vec<_> = vals
                .iter()
                .enumerate()
                .filter_map(|(ci, v)| v.and_then(|(m, sd)| sd.map(|s| (ci, m, s))))
                .map(|(ci, m, s)| {
                    let x = ci as f64 + 0.1 + (si as f64 + 0.46) * width;
                    PathElement::new([(x, m - s), (x, m + s)], BLACK.stroke_width(1))
                })
                .collect();
            chart.draw_series(whiskers).map_err(pe)?;
        }
        chart
            .configure_series_labels()
            .label_font(font(12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(pe)?;
        Ok(())
    }
}

/// Series name of a group: display name plus what varies among `all`.
fn name_of(ctx: &Ctx, g: &Group, all: &[Group]) -> String {
    ctx.label(g, all, true, true)
}

/// The lowest-seed run of each group (runs are sorted by group, then seed).
fn first_runs<'a>(ctx: &Ctx<'a>) -> Vec<&'a Run> {
    let mut out: Vec<&Run> = Vec::new();
    for g in ctx.groups() {
        if let Some(r) = ctx.loaded.runs.iter().find(|r| r.group == g) {
            out.push(r);
        }
    }
    out
}

/// The runs of one group, in seed order.
fn runs_of<'a>(ctx: &Ctx<'a>, g: &Group) -> Vec<&'a Run> {
    ctx.loaded.runs.iter().filter(|r| &r.group == g).collect()
}

fn seeds_text(runs: &[&Run]) -> String {
    match runs {
        [one] => format!("seed {}", one.manifest.seed),
        _ => format!("mean of {} seeds, band ± 1 sd", runs.len()),
    }
}

fn aggregate_trace(run: &Run) -> Vec<&crate::results::TraceRow> {
    let mut rows: Vec<_> = run.trace.iter().filter(|t| t.domain.is_none()).collect();
    rows.sort_by_key(|t| t.step);
    rows
}

/// Renders plot `id`; None for an unknown id; Some(empty) when there is nothing to draw.
pub fn render(ctx: &Ctx, id: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
    register_font()?;
    let groups = ctx.groups();
    let firsts = first_runs(ctx);
    let files = match id {
        "loss-conflict" => {
            let mut panels = Vec::new();
            for g in &groups {
                let runs = runs_of(ctx, g);
                let per_seed = |f: fn(&crate::results::TraceRow) -> Option<f64>| -> Vec<Vec<(u32, f64)>> {
                    runs.iter()
                        .map(|r| aggregate_trace(r).iter().filter_map(|x| f(x).map(|v| (x.step, v))).collect())
                        .collect()
                };
                let l1 = TraceSeries::over_seeds("L1 (original fakes)".into(), &per_seed(|x| x.l1));
                let l2 = TraceSeries::over_seeds("L2 (synthesized fakes)".into(), &per_seed(|x| x.l2));
                let (Some(l1), Some(l2)) = (l1, l2) else { continue };
                let mut p = LinePanel::new(
                    format!("{} ({})", name_of(ctx, g, &groups), seeds_text(&runs)),
                    "step",
                    "loss",
                );
                p.traces = vec![l1, l2];
                p.integer_x = true;
                panels.push(p);
            }
            // Panels compare methods: one y scale for all of them.
            let shared = panels.iter().map(|p| p.natural_y()).reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
            for p in &mut panels {
                p.y_range = shared;
            }
            if panels.is_empty() { vec![] } else { render_both(&Panels(panels), "loss-conflict")? }
        }
        "cosine" => {
            let mut n_seeds = std::collections::BTreeSet::new();
            let traces: Vec<TraceSeries> = groups
                .iter()
                .filter_map(|g| {
                    let runs = runs_of(ctx, g);
                    let per_seed: Vec<Vec<(u32, f64)>> = runs
                        .iter()
                        .map(|r| {
                            aggregate_trace(r)
                                .iter()
                                .filter_map(|x| x.cos_g1_g2.filter(|c| c.is_finite()).map(|c| (x.step, c)))
                                .collect()
                        })
                        .collect();
                    let t = TraceSeries::over_seeds(name_of(ctx, g, &groups), &per_seed)?;
                    n_seeds.insert(per_seed.iter().filter(|p| !p.is_empty()).count());
                    Some(t)
                })
                .collect();
            if traces.is_empty() {
                vec![]
            } else {
                let seeds = n_seeds.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/");
                let mut p = LinePanel::new(
                    format!("cos(g1, g2) per step (mean of {seeds} seed(s), band ± 1 sd)"),
                    "step",
                    "cosine",
                );
                p.traces = traces;
                p.y_range = Some((-1.05, 1.05));
                p.hline = Some(0.0);
                p.integer_x = true;
                render_both(&Panels(vec![p]), "cosine")?
            }
        }
        "roc" => {
            let mut files = Vec::new();
            for (ts, _) in &ctx.agg.test_sets {
                let mut series = Vec::new();
                for r in &firsts {
                    let (mut s, mut l) = (Vec::new(), Vec::new());
                    match ctx.level {
                        Level::Frame => {
                            for x in r.scores.iter().filter(|x| &x.test_set == ts) {
                                s.push(x.score);
                                l.push(x.label);
                            }
                        }
                        Level::Video => {
                            let mut m: std::collections::BTreeMap<(&str, u8, &str), (f64, usize)> =
                                Default::default();
                            for x in r.scores.iter().filter(|x| &x.test_set == ts) {
                                let e = m.entry((x.dataset.as_str(), x.label, x.video.as_str())).or_default();
                                e.0 += x.score;
                                e.1 += 1;
                            }
                            for ((_, lab, _), (sum, n)) in m {
                                s.push(sum / n as f64);
                                l.push(lab);
                            }
                        }
                    }
                    if let Some(pts) = stats::roc_points(&s, &l) {
                        series.push(Series {
                            name: name_of(ctx, &r.group, &groups),
                            points: pts.into_iter().map(|(x, y)| (x, y, None)).collect(),
                        });
                    }
                }
                if series.is_empty() {
                    continue;
                }
                let p = LinePanel {
                    title: format!("ROC, {ts} ({} level, lowest seed)", ctx.level.as_str()),
                    x_label: "false positive rate".into(),
                    y_label: "true positive rate".into(),
                    series,
                    x_range: Some((0.0, 1.0)),
                    y_range: Some((0.0, 1.0)),
                    hline: None,
                    diagonal: true,
                    markers: false,
                    legend: SeriesLabelPosition::LowerRight,
                    traces: Vec::new(),
                    integer_x: false,
                };
                files.extend(render_both(&Panels(vec![p]), &format!("roc-{}", file_safe(ts)))?);
            }
            files
        }
        "sensitivity" => {
            // Groups that differ only in their sweep point belong to one method (with its
            // backbone and fold).
            let mut lines: Vec<(Group, Vec<&Group>)> = Vec::new();
            for g in groups.iter().filter(|g| !g.sweep.is_empty()) {
                let base = Group { sweep: String::new(), ..g.clone() };
                match lines.iter_mut().find(|(b, _)| *b == base) {
                    Some((_, v)) => v.push(g),
                    None => lines.push((base, vec![g])),
                }
            }
            let bases: Vec<Group> = lines.iter().map(|(b, _)| b.clone()).collect();
            let mut panels = Vec::new();
            for (base, gs) in &lines {
                let method = name_of(ctx, base, &bases);
                let parsed: Option<Vec<(&Group, Vec<(String, f64)>)>> =
                    gs.iter().map(|g| Some((*g, numeric_sweep(&g.sweep)?))).collect();
                match parsed {
                    Some(parsed) => panels.extend(sensitivity_panels(ctx, &method, &parsed)),
                    // Non-numeric sweep values: the points in table order.
                    None => {
                        let points: Vec<_> = gs
                            .iter()
                            .enumerate()
                            .filter_map(|(i, g)| {
                                let s = ctx.agg.get(g, AVG, ctx.level, "auc")?;
                                Some((i as f64, s.mean * 100.0, s.std.map(|v| v * 100.0)))
                            })
                            .collect();
                        if !points.is_empty() {
                            panels.push(sensitivity_panel(
                                format!("{method}: AVG AUC (%)"),
                                "sweep point (index, see the sensitivity table)".into(),
                                vec![Series { name: method.clone(), points }],
                            ));
                        }
                    }
                }
            }
            if panels.is_empty() { vec![] } else { render_both(&Panels(panels), "sensitivity")? }
        }
        "auc-bar" => {
            let mut categories: Vec<String> = ctx.agg.test_sets.iter().map(|(t, _)| t.clone()).collect();
            categories.push(AVG.into());
            let series = groups
                .iter()
                .map(|g| {
                    let vals = categories
                        .iter()
                        .map(|c| {
                            ctx.agg
                                .get(g, c, ctx.level, "auc")
                                .map(|s| (s.mean * 100.0, s.std.map(|v| v * 100.0)))
                        })
                        .collect();
                    (name_of(ctx, g, &groups), vals)
                })
                .collect();
            let fig = Bars {
                title: format!("{} AUC (%), mean ± std over seeds", ctx.level.as_str()),
                y_label: "AUC (%)".into(),
                categories,
                series,
            };
            render_both(&fig, "auc-bar")?
        }
        _ => return Ok(None),
    };
    Ok(Some(files))
}

/// A test-set name usable in a file name.
/// `k1=v1, k2=v2` with every value a number, as `[(k1, v1), (k2, v2)]`.
fn numeric_sweep(label: &str) -> Option<Vec<(String, f64)>> {
    label
        .split(", ")
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}

fn sensitivity_panel(title: String, x_label: String, series: Vec<Series>) -> LinePanel {
    LinePanel {
        title,
        x_label,
        y_label: "AVG AUC (%)".into(),
        series,
        x_range: None,
        y_range: None,
        hline: None,
        diagonal: false,
        markers: true,
        legend: SeriesLabelPosition::LowerRight,
        traces: Vec::new(),
        integer_x: false,
    }
}

/// One panel per swept key of one method: AVG AUC against that key's value (log10 when the
/// values span 20x or more, as tau's 0.001-0.1 do), one line per value of the other keys, with
/// the seeds' standard deviation as error bars.
fn sensitivity_panels(ctx: &Ctx, method: &str, points: &[(&Group, Vec<(String, f64)>)]) -> Vec<LinePanel> {
    let short = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let keys: Vec<String> = points[0].1.iter().map(|(k, _)| k.clone()).collect();
    let mut panels = Vec::new();
    for (ki, key) in keys.iter().enumerate() {
        let xs: Vec<f64> = points.iter().filter_map(|(_, kv)| kv.get(ki).map(|p| p.1)).collect();
        let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let log = lo > 0.0 && hi / lo >= 20.0;
        let mut series: Vec<Series> = Vec::new();
        for (g, kv) in points {
            let (Some((k, x)), Some(s)) = (kv.get(ki), ctx.agg.get(g, AVG, ctx.level, "auc")) else {
                continue;
            };
            if k != key {
                continue;
            }
            let others: Vec<String> = kv
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != ki)
                .map(|(_, (k, v))| format!("{}={v}", short(k)))
                .collect();
            let name = if others.is_empty() { method.to_string() } else { others.join(", ") };
            let x = if log { x.log10() } else { *x };
            let point = (x, s.mean * 100.0, s.std.map(|v| v * 100.0));
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => series.push(Series { name, points: vec![point] }),
            }
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if series.is_empty() {
            continue;
        }
        let k = short(key);
        let x_label = if log { format!("log10({k})") } else { k.clone() };
        panels.push(sensitivity_panel(format!("{method}: AVG AUC (%) against {k}"), x_label, series));
    }
    panels
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod sweep_tests {
    use super::numeric_sweep;

    #[test]
    fn numeric_sweep_labels_parse_and_others_do_not() {
        assert_eq!(
            numeric_sweep("methods.CS-DFD.c=0.5, methods.CS-DFD.tau=0.01"),
            Some(vec![("methods.CS-DFD.c".to_string(), 0.5), ("methods.CS-DFD.tau".to_string(), 0.01)])
        );
        assert_eq!(
            numeric_sweep("train.real_fake_ratio=16.0"),
            Some(vec![("train.real_fake_ratio".into(), 16.0)])
        );
        assert_eq!(numeric_sweep("training.optimizer.name=sgd"), None);
        assert_eq!(numeric_sweep("no equals sign"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_by_hand() {
        // n = 5: k = 1, windows shrink at the ends.
        assert_eq!(smooth(&[1.0, 2.0, 3.0, 4.0, 5.0]), vec![1.5, 2.0, 3.0, 4.0, 4.5]);
        // n = 80: k = 2, a window of five.
        let v: Vec<f64> = (0..80).map(|i| if i == 40 { 5.0 } else { 0.0 }).collect();
        let s = smooth(&v);
        assert_eq!((s[37], s[38], s[40], s[42], s[43]), (0.0, 1.0, 1.0, 1.0, 0.0));
    }

    #[test]
    fn trace_over_seeds_mean_and_band() {
        let a: Vec<(u32, f64)> = (0..3).map(|s| (s, 1.0)).collect();
        let b: Vec<(u32, f64)> = vec![(2, 3.0), (0, 3.0), (1, 3.0)];
        let t = TraceSeries::over_seeds("x".into(), &[a.clone(), b, Vec::new()]).unwrap();
        assert_eq!(t.raw, vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]);
        assert_eq!(t.smooth, t.raw);
        // Sample sd of {1, 3} is sqrt(2).
        for (i, &(x, lo, hi)) in t.band.iter().enumerate() {
            assert_eq!(x, i as f64);
            assert!((lo - (2.0 - 2f64.sqrt())).abs() < 1e-12 && (hi - (2.0 + 2f64.sqrt())).abs() < 1e-12);
        }
        // One seed: no band; no seeds: nothing.
        assert!(TraceSeries::over_seeds("x".into(), &[a]).unwrap().band.is_empty());
        assert!(TraceSeries::over_seeds("x".into(), &[Vec::new()]).is_none());
    }
}
