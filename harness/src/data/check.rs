//! `bench data check`: counts and problems of a dataset.
//!
//! Reads a data root (its `dataset_json/*.json`, else its folder tree) or one DeepfakeBench JSON
//! (`--root` gives the data root; default: the folder holding its `dataset_json` folder), then
//! reports frame and video counts per dataset, label and split, and these problems: videos with
//! fewer frames than `--frames N`, frames that are missing or do not decode (every image is
//! decoded, in parallel), landmark files that are missing (unless `--allow-missing-landmarks`)
//! or unreadable. Exit 0 when clean, 1 with a summary when a problem was found, 2 for bad
//! arguments (missing target, JSON without a resolvable root).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rayon::prelude::*;

use super::index::{Index, IndexOptions, Split, VideoKey, landmark_path_for};
use super::loader::load_landmarks;
use crate::exit::{CliError, Verbosity};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A data root or a DeepfakeBench dataset JSON.
    pub target: PathBuf,
    /// Expected frames per video; shorter videos are reported as problems.
    #[arg(long, value_name = "N")]
    pub frames: Option<usize>,
    /// Data root that a JSON's relative frame paths resolve against (default: the parent of the
    /// JSON's `dataset_json` folder).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Do not count frames without a landmark file as problems (test-only sets need none).
    #[arg(long)]
    pub allow_missing_landmarks: bool,
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// (dataset, label, split) -> (videos, frames).
    pub counts: BTreeMap<(String, String, Split), (usize, usize)>,
    /// Videos with fewer frames than asked: (video, compression, the splits listing it, frames
    /// found). A video listed in several splits (DFD, UADFV, folder trees without split
    /// folders) is reported once.
    pub short_videos: Vec<(VideoKey, Option<String>, Vec<Split>, usize)>,
    /// Frames that are missing or do not decode, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Frames without a landmark file (frame paths).
    pub missing_landmarks: Vec<PathBuf>,
    /// Landmark files that exist but cannot be read, with the reason.
    pub bad_landmarks: Vec<(PathBuf, String)>,
    pub allow_missing_landmarks: bool,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.short_videos.len()
            + self.unreadable.len()
            + self.bad_landmarks.len()
            + if self.allow_missing_landmarks { 0 } else { self.missing_landmarks.len() }
    }

    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.unreadable.is_empty() {
            parts.push(format!("{} missing or unreadable frames", self.unreadable.len()));
        }
        if !self.short_videos.is_empty() {
            parts.push(format!("{} videos with too few frames", self.short_videos.len()));
        }
        if !self.missing_landmarks.is_empty() && !self.allow_missing_landmarks {
            parts.push(format!("{} frames without landmarks", self.missing_landmarks.len()));
        }
        if !self.bad_landmarks.is_empty() {
            parts.push(format!("{} unreadable landmark files", self.bad_landmarks.len()));
        }
        if parts.is_empty() {
            "no problems found".into()
        } else {
            format!("data check failed: {}", parts.join(", "))
        }
    }
}

/// Checks an index (built without frame limits so video lengths are real).
pub fn check_index(index: &Index, frames: Option<usize>, allow_missing_landmarks: bool) -> CheckReport {
    let mut rep = CheckReport { counts: index.counts(), allow_missing_landmarks, ..Default::default() };
    if let Some(n) = frames {
        let mut per_video: BTreeMap<(VideoKey, Option<String>), BTreeMap<Split, usize>> = BTreeMap::new();
        for e in &index.entries {
            *per_video
                .entry((e.video_key(), e.compression.clone()))
                .or_default()
                .entry(e.split)
                .or_default() += 1;
        }
        for ((k, comp), splits) in per_video {
            // The same video in several splits has the same frames; report the smallest count.
            let found = splits.values().copied().min().unwrap_or(0);
            if found < n {
                rep.short_videos.push((k, comp, splits.into_keys().collect(), found));
            }
        }
    }
    // A frame listed in several splits is decoded once.
    let paths: Vec<&Path> =
        index.entries.iter().map(|e| e.frame_path.as_path()).collect::<BTreeSet<_>>().into_iter().collect();
    let mut unreadable: Vec<(PathBuf, String)> = paths
        .par_iter()
        .filter_map(|p| {
            let r = std::fs::read(p).map_err(|e| format!("cannot read: {e}")).and_then(|b| {
                image::load_from_memory(&b).map(|_| ()).map_err(|e| format!("cannot decode: {e}"))
            });
            r.err().map(|why| (p.to_path_buf(), why))
        })
        .collect();
    unreadable.sort();
    rep.unreadable = unreadable;
    let mut missing = BTreeSet::new();
    let mut lms = BTreeSet::new();
    for e in &index.entries {
        match &e.landmark_path {
            Some(p) => {
                lms.insert(p.as_path());
            }
            None => {
                missing.insert(e.frame_path.clone());
            }
        }
    }
    rep.missing_landmarks = missing.into_iter().collect();
    let lms: Vec<&Path> = lms.into_iter().collect();
    let mut bad: Vec<(PathBuf, String)> = lms
        .par_iter()
        .filter_map(|p| load_landmarks(p).err().map(|e| (p.to_path_buf(), format!("{e:#}"))))
        .collect();
    bad.sort();
    rep.bad_landmarks = bad;
    rep
}

/// Resolves the target to an index (errors carry exit code 2 for bad arguments, 1 for broken
/// data).
pub fn index_target(target: &Path, root: Option<&Path>) -> anyhow::Result<Index> {
    let opts = IndexOptions::default();
    if target.is_dir() {
        if root.is_some() {
            return Err(CliError::config(format!(
                "{}: --root applies to a JSON target; a directory target is its own root",
                target.display()
            ))
            .into());
        }
        return Index::from_root(target, &opts).map_err(|e| CliError::failed(format!("{e:#}")).into());
    }
    if target.is_file() {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => {
                let parent = target.parent().filter(|p| p.file_name().is_some_and(|n| n == "dataset_json"));
                match parent.and_then(Path::parent) {
                    Some(r) => r.to_path_buf(),
                    None => {
                        return Err(CliError::config(format!(
                            "{}: give the data root with --root (the JSON is not inside a dataset_json folder)",
                            target.display()
                        ))
                        .into());
                    }
                }
            }
        };
        if !root.is_dir() {
            return Err(CliError::config(format!("{}: data root is not a directory", root.display())).into());
        }
        return Index::from_json(target, &root, &opts).map_err(|e| CliError::failed(format!("{e:#}")).into());
    }
    Err(CliError::config(format!(
        "{}: no such file or directory (expected a data root or a dataset JSON)",
        target.display()
    ))
    .into())
}

pub fn cmd_check(args: CheckArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    if args.frames == Some(0) {
        return Err(CliError::config("--frames must be at least 1").into());
    }
    let index = index_target(&args.target, args.root.as_deref())?;
    let rep = check_index(&index, args.frames, args.allow_missing_landmarks);
    if v != Verbosity::Quiet {
        print!("{}", render(&rep, v));
    }
    if rep.problems() > 0 {
        return Err(CliError::failed(format!("{}: {}", args.target.display(), rep.summary())).into());
    }
    if v != Verbosity::Quiet {
        println!("{}: {}", args.target.display(), rep.summary());
    }
    Ok(ExitCode::SUCCESS)
}

fn render(rep: &CheckReport, v: Verbosity) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{:<20} {:<18} {:<6} {:>8} {:>9}", "dataset", "label", "split", "videos", "frames");
    for ((d, l, sp), (vids, frames)) in &rep.counts {
        let _ = writeln!(s, "{d:<20} {l:<18} {:<6} {vids:>8} {frames:>9}", sp.as_str());
    }
    let limit = if v == Verbosity::Verbose { usize::MAX } else { 20 };
    let mut list = |title: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        let _ = writeln!(s, "{title} ({}):", items.len());
        for it in items.iter().take(limit) {
            let _ = writeln!(s, "  {it}");
        }
        if items.len() > limit {
            let _ = writeln!(s, "  ... and {} more (-v lists all)", items.len() - limit);
        }
    };
    list(
        "missing or unreadable frames",
        rep.unreadable.iter().map(|(p, w)| format!("{}: {w}", p.display())).collect(),
    );
    list(
        "videos with too few frames",
        rep.short_videos
            .iter()
            .map(|(k, comp, sp, n)| {
                let sp: Vec<&str> = sp.iter().map(|s| s.as_str()).collect();
                let comp = comp.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
                format!("{k}{comp} [{}]: {n} frames", sp.join(", "))
            })
            .collect(),
    );
    let title = if rep.allow_missing_landmarks {
        "frames without landmarks (allowed)"
    } else {
        "frames without landmarks"
    };
    list(
        title,
        rep.missing_landmarks
            .iter()
            .map(|p| match landmark_path_for(p) {
                Some(l) => format!("{} (no {})", p.display(), l.display()),
                None => p.display().to_string(),
            })
            .collect(),
    );
    list(
        "unreadable landmark files",
        rep.bad_landmarks.iter().map(|(p, w)| format!("{}: {w}", p.display())).collect(),
    );
    s
}
