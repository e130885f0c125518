//! `bench eval`: metrics of any detector's scores from a CSV file.
//!
//! The file has a header row and one row per frame. The score is the probability of fake, the
//! label 0 (real) or 1 (fake). Video-level metrics average the frame scores of each
//! (group, label, video); with a group column (e.g. the test set), metrics are given per group
//! and overall.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::exit::{CliError, Verbosity};
use crate::metrics::{FrameScore, Metric, MetricSet, binary_metrics, video_scores};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// CSV file with a header row and one row per frame.
    pub scores: PathBuf,
    /// Column holding the score (probability of fake).
    #[arg(long, default_value = "score", value_name = "COLUMN")]
    pub score: String,
    /// Column holding the label: 0 = real, 1 = fake.
    #[arg(long, default_value = "label", value_name = "COLUMN")]
    pub label: String,
    /// Column naming each frame's video, for video-level metrics [default: video]. Without this
    /// option a file with no `video` column gets frame-level metrics and a note that the video
    /// level was skipped; a column named here must exist.
    #[arg(long, value_name = "COLUMN")]
    pub video: Option<String>,
    /// Column naming each frame's dataset / test set: metrics per group, then overall.
    #[arg(long, value_name = "COLUMN")]
    pub group: Option<String>,
    /// Also write the metrics to FILE: JSON (`.json`) or CSV (`.csv`), chosen by extension.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Which metrics: per frame, per video (mean frame score), or both [default: both, or frame
    /// when the file has no video column and none was named].
    #[arg(long, value_enum)]
    pub level: Option<Level>,
}

impl EvalArgs {
    fn video_column(&self) -> &str {
        self.video.as_deref().unwrap_or(DEFAULT_VIDEO_COLUMN)
    }
}

const DEFAULT_VIDEO_COLUMN: &str = "video";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Frame,
    Video,
    Both,
}

impl Level {
    fn frame(self) -> bool {
        self != Level::Video
    }
    fn video(self) -> bool {
        self != Level::Frame
    }
}

/// Metrics of one group of rows (or of all rows).
#[derive(Debug, Clone, Serialize)]
pub struct GroupMetrics {
    /// The group's value; `None` for all rows together.
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<MetricSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<MetricSet>,
}

#[derive(Debug, Serialize)]
struct Columns<'a> {
    score: &'a str,
    label: &'a str,
    video: Option<&'a str>,
    group: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    file: String,
    columns: Columns<'a>,
    level: Level,
    /// Why the video level was left out, when it was not asked for explicitly and could not be
    /// computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    video_skipped: Option<String>,
    /// One entry per group value, sorted; empty without a group column.
    groups: &'a [GroupMetrics],
    overall: &'a GroupMetrics,
}

#[derive(Clone, Copy)]
enum OutFormat {
    Json,
    Csv,
}

pub fn cmd_eval(args: EvalArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    let out_format = match &args.out {
        None => None,
        Some(p) => Some(out_format(p)?),
    };
    let (frames, level, video_skipped) = read_scores(&args)?;
    if let Some(why) = &video_skipped
        && v > Verbosity::Quiet
    {
        eprintln!("note: {why}");
    }

    let overall = metrics_of(None, &frames, level);
    let groups = match args.group {
        None => Vec::new(),
        Some(_) => {
            let mut by_group: BTreeMap<&str, Vec<FrameScore>> = BTreeMap::new();
            for f in &frames {
                by_group.entry(&f.dataset).or_default().push(f.clone());
            }
            by_group.iter().map(|(g, fs)| metrics_of(Some(g), fs, level)).collect()
        }
    };

    if v >= Verbosity::Verbose {
        eprintln!(
            "{}: {} rows; columns score=`{}` label=`{}`{}{}",
            args.scores.display(),
            frames.len(),
            args.score,
            args.label,
            if level.video() { format!(" video=`{}`", args.video_column()) } else { String::new() },
            args.group.as_ref().map(|g| format!(" group=`{g}`")).unwrap_or_default()
        );
    }
    print!("{}", render_table(&args.scores, &groups, &overall));

    if let (Some(path), Some(format)) = (&args.out, out_format) {
        let report = Report {
            file: args.scores.display().to_string(),
            columns: Columns {
                score: &args.score,
                label: &args.label,
                video: level.video().then_some(args.video_column()),
                group: args.group.as_deref(),
            },
            level,
            video_skipped,
            groups: &groups,
            overall: &overall,
        };
        let bytes = match format {
            OutFormat::Json => {
                let mut b = serde_json::to_vec_pretty(&report)?;
                b.push(b'\n');
                b
            }
            OutFormat::Csv => to_csv(&groups, &overall)?,
        };
        write_atomic(path, &bytes)?;
        if v >= Verbosity::Normal {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn out_format(path: &Path) -> Result<OutFormat, CliError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("json") => Ok(OutFormat::Json),
        Some("csv") => Ok(OutFormat::Csv),
        _ => Err(CliError::config(format!(
            "--out {}: unknown format; expected a file name ending in .json or .csv",
            path.display()
        ))),
    }
}

fn metrics_of(group: Option<&str>, frames: &[FrameScore], level: Level) -> GroupMetrics {
    let frame = level.frame().then(|| {
        let scores: Vec<f64> = frames.iter().map(|f| f.score).collect();
        let labels: Vec<u8> = frames.iter().map(|f| f.label).collect();
        binary_metrics(&scores, &labels)
    });
    let video = level.video().then(|| {
        let videos = video_scores(frames);
        let scores: Vec<f64> = videos.iter().map(|v| v.score).collect();
        let labels: Vec<u8> = videos.iter().map(|v| v.label).collect();
        binary_metrics(&scores, &labels)
    });
    GroupMetrics { group: group.map(str::to_owned), frame, video }
}

/// Reads the rows into frames; `dataset` holds the group value ("" without a group column) and
/// `video` the video name ("" when only frame-level metrics are computed). Returns the level
/// computed and, when the video level was dropped for want of a video column, why.
fn read_scores(args: &EvalArgs) -> Result<(Vec<FrameScore>, Level, Option<String>), CliError> {
    let file = args.scores.display();
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&args.scores)
        .map_err(|e| CliError::config(format!("{file}: cannot read: {e}")))?;
    let headers = rdr
        .headers()
        .map_err(|e| CliError::config(format!("{file}: cannot read the header row: {e}")))?
        .clone();
    let find = |col: &str, flag: &str| -> Result<usize, CliError> {
        headers.iter().position(|h| h == col).ok_or_else(|| {
            let mut msg = format!("{file}: no column `{col}` (named by {flag})");
            if let Some(best) = headers
                .iter()
                .map(|h| (strsim::normalized_levenshtein(&h.to_lowercase(), &col.to_lowercase()), h))
                .filter(|(s, _)| *s >= 0.5)
                .max_by(|a, b| a.0.total_cmp(&b.0))
            {
                let _ = write!(msg, "; did you mean `{}`?", best.1);
            }
            let cols: Vec<String> = headers.iter().map(|h| format!("`{h}`")).collect();
            let _ = write!(msg, " (columns: {})", cols.join(", "));
            if flag == "--video" {
                msg.push_str("; use --level frame for frame-level metrics only");
            }
            CliError::config(msg)
        })
    };
    let score_i = find(&args.score, "--score")?;
    let label_i = find(&args.label, "--label")?;
    let mut level = args.level.unwrap_or(Level::Both);
    let mut video_skipped = None;
    if args.level.is_none() && args.video.is_none() && !headers.iter().any(|h| h == DEFAULT_VIDEO_COLUMN) {
        level = Level::Frame;
        video_skipped = Some(format!(
            "{file}: no `{DEFAULT_VIDEO_COLUMN}` column, so video-level metrics were skipped (name the column with --video COLUMN)"
        ));
    }
    let video_i = if level.video() { Some(find(args.video_column(), "--video")?) } else { None };
    let group_i = match &args.group {
        Some(g) => Some(find(g, "--group")?),
        None => None,
    };

    let mut frames = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut row = 0usize;
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(CliError::config(format!("{file}: row {}: malformed CSV: {e}", row + 1)));
            }
        }
        row += 1;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let at = |col: &str| format!("{file}: row {row} (line {line}), column `{col}`");
        let cell = |i: usize| record.get(i).unwrap_or("");

        let raw = cell(score_i);
        let score = match raw.parse::<f64>() {
            Ok(s) if s.is_finite() => s,
            Ok(_) => {
                return Err(CliError::config(format!(
                    "{}: score `{raw}` is not a finite number",
                    at(&args.score)
                )));
            }
            Err(_) => {
                return Err(CliError::config(format!("{}: score `{raw}` is not a number", at(&args.score))));
            }
        };
        let raw = cell(label_i);
        let label = match raw.parse::<f64>() {
            Ok(l) if l == 0.0 => 0,
            Ok(l) if l == 1.0 => 1,
            _ => {
                return Err(CliError::config(format!(
                    "{}: label `{raw}` is not 0 (real) or 1 (fake)",
                    at(&args.label)
                )));
            }
        };
        let video = match video_i {
            Some(i) if cell(i).is_empty() => {
                return Err(CliError::config(format!("{}: empty video name", at(args.video_column()))));
            }
            Some(i) => cell(i).to_owned(),
            None => String::new(),
        };
        let dataset = group_i.map(|i| cell(i).to_owned()).unwrap_or_default();
        frames.push(FrameScore { dataset, label, video, score });
    }
    Ok((frames, level, video_skipped))
}

const METRIC_HEADS: [&str; 7] = ["AUC", "AP", "EER", "EER_int", "ACC", "ACC_real", "ACC_fake"];

/// The results as a text table; undefined metrics show `-` and are explained below the table.
fn render_table(file: &Path, groups: &[GroupMetrics], overall: &GroupMetrics) -> String {
    let label_of = |g: &GroupMetrics| g.group.clone().unwrap_or_else(|| "(overall)".into());
    let mut rows: Vec<(String, &'static str, &MetricSet)> = Vec::new();
    for g in groups.iter().chain(std::iter::once(overall)) {
        if let Some(m) = &g.frame {
            rows.push((label_of(g), "frame", m));
        }
        if let Some(m) = &g.video {
            rows.push((label_of(g), "video", m));
        }
    }
    let gw = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(5);
    let mut out = String::new();
    let _ = writeln!(out, "{}", file.display());
    let _ = write!(out, "{:<gw$}  {:<5}  {:>8}  {:>8}  {:>8}", "group", "level", "n", "n_real", "n_fake");
    for h in METRIC_HEADS {
        let _ = write!(out, "  {h:>8}");
    }
    out.push('\n');
    let mut notes = Vec::new();
    for (g, level, m) in &rows {
        let _ = write!(out, "{g:<gw$}  {level:<5}  {:>8}  {:>8}  {:>8}", m.n, m.n_real, m.n_fake);
        for (_, metric) in m.named() {
            match metric {
                Metric::Value(x) => {
                    let _ = write!(out, "  {x:>8.4}");
                }
                Metric::Undefined(_) => {
                    let _ = write!(out, "  {:>8}", "-");
                }
            }
        }
        out.push('\n');
        if let Some(n) = undefined_note(m) {
            notes.push(format!("  {g} {level}: {n}"));
        }
    }
    if !notes.is_empty() {
        out.push_str("undefined:\n");
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// "auc, ap, eer, eer_interp: only fake samples (n = 3); acc_real: no real samples", or `None`
/// when every metric is defined.
fn undefined_note(m: &MetricSet) -> Option<String> {
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, metric) in m.named() {
        if let Some(r) = metric.reason() {
            match by_reason.iter_mut().find(|(reason, _)| *reason == r) {
                Some((_, names)) => names.push(name),
                None => by_reason.push((r, vec![name])),
            }
        }
    }
    if by_reason.is_empty() {
        return None;
    }
    Some(
        by_reason
            .iter()
            .map(|(r, names)| format!("{}: {r}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// One row per group and level; undefined metrics are empty cells explained in `undefined`.
fn to_csv(groups: &[GroupMetrics], overall: &GroupMetrics) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "group",
        "level",
        "n",
        "n_real",
        "n_fake",
        "auc",
        "ap",
        "eer",
        "eer_interp",
        "acc",
        "acc_real",
        "acc_fake",
        "undefined",
    ])?;
    for g in groups.iter().chain(std::iter::once(overall)) {
        let name = g.group.clone().unwrap_or_else(|| "(overall)".into());
        for (level, m) in [("frame", &g.frame), ("video", &g.video)] {
            let Some(m) = m else { continue };
            let mut rec =
                vec![name.clone(), level.into(), m.n.to_string(), m.n_real.to_string(), m.n_fake.to_string()];
            rec.extend(m.named().iter().map(|(_, x)| x.value().map(|v| v.to_string()).unwrap_or_default()));
            rec.push(undefined_note(m).unwrap_or_default());
            w.write_record(&rec)?;
        }
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Writes through a temporary file in the same directory, then renames it over `path`, so a
/// reader never sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("--out {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
