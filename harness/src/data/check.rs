//! `bench data check`: counts and problems of a dataset.
//!
//! Reads a data root (each of its `dataset_json/*.json`, else its folder tree) or one
//! DeepfakeBench JSON (`--root` gives the data root; default: the folder holding its
//! `dataset_json` folder), then prints one row per dataset, label and split (videos, frames,
//! missing, undecodable, short videos, frames without landmarks) and a few examples of each
//! problem (`-v` lists all): videos with fewer frames than `--frames N`, frames that are missing
//! or do not decode (every image is decoded, in parallel), landmark files that are missing
//! (unless `--allow-missing-landmarks`; a missing frame is not counted again) or unreadable.
//! Quirks of the released JSONs (flattened or empty splits) and train/test leakage are
//! warnings. Every JSON of a root is read even when one of them fails.
//! Exit 0 when clean, 1 when a problem was found, 2 for bad arguments or unreadable or
//! malformed input (invalid JSON, a split that cannot be read).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rayon::prelude::*;

use super::index::{
    FrameEntry, Index, IndexOptions, IssueKind, Split, VideoKey, landmark_path_for, path_map_hint,
    suggest_path_map,
};
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
    /// Rewrite a frame path prefix, as the protocol's `data.path_map` does (`FROM=TO`, e.g.
    /// `--path-map /deepfakebench/datasets/rgb=`); repeatable.
    #[arg(long = "path-map", value_name = "FROM=TO", value_parser = parse_map)]
    pub path_map: Vec<(String, String)>,
    /// Read absolute frame paths outside the root, as the protocol's `data.allow_outside_root`.
    #[arg(long)]
    pub allow_outside_root: bool,
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
    /// Frames that do not exist (a subset of `unreadable`).
    pub missing: BTreeSet<PathBuf>,
    /// One row per (dataset, label, split): videos, frames, missing, undecodable, short videos,
    /// frames without landmarks.
    pub rows: BTreeMap<(String, String, Split), [usize; 6]>,
    /// Quirks of the JSONs that were read anyway (flattened or empty splits).
    pub warnings: Vec<String>,
    /// Train/test leakage within each dataset.
    pub leakage: Vec<String>,
    /// Labels that some splits of a dataset have and others lack.
    pub absent_labels: Vec<String>,
    /// Unreadable or malformed input (exit 2).
    pub fatal: Vec<String>,
    /// The `path_map` prefix that would make the missing frames resolve, if one does.
    pub path_map_hint: Option<String>,
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
        if !self.fatal.is_empty() {
            parts.insert(0, format!("{} unreadable or malformed inputs", self.fatal.len()));
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
    rep.missing = unreadable.iter().filter(|(p, _)| !p.exists()).map(|(p, _)| p.clone()).collect();
    rep.unreadable = unreadable;
    let mut missing = BTreeSet::new();
    let mut lms = BTreeSet::new();
    for e in &index.entries {
        match &e.landmark_path {
            Some(p) => {
                lms.insert(p.as_path());
            }
            // A missing frame is reported as such, not again for its landmarks.
            None if !rep.missing.contains(&e.frame_path) => {
                missing.insert(e.frame_path.clone());
            }
            None => {}
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
    rep.rows = rows(index, &rep);
    let mut empty = Vec::new();
    for issue in &index.issues {
        match issue.kind {
            IssueKind::Malformed(_) => rep.fatal.push(issue.to_string()),
            IssueKind::Flattened => rep.warnings.push(issue.to_string()),
            IssueKind::Empty => empty.push(format!(
                "{}/{}/{}",
                issue.dataset,
                issue.label,
                issue.split.map_or("?", Split::as_str)
            )),
        }
    }
    if !empty.is_empty() {
        rep.warnings.push(format!(
            "empty splits ({}): {} (released DeepfakeBench JSONs leave unused splits empty, e.g. DFDC's train)",
            empty.len(),
            empty.join(", ")
        ));
    }
    (rep.leakage, rep.absent_labels) = dataset_leakage(index);
    rep
}

fn rows(index: &Index, rep: &CheckReport) -> BTreeMap<(String, String, Split), [usize; 6]> {
    let unreadable: BTreeSet<&Path> = rep.unreadable.iter().map(|(p, _)| p.as_path()).collect();
    let no_lm: BTreeSet<&Path> = rep.missing_landmarks.iter().map(PathBuf::as_path).collect();
    let mut rows: BTreeMap<(String, String, Split), [usize; 6]> = BTreeMap::new();
    for ((d, l, sp), (videos, frames)) in index.counts() {
        rows.insert((d, l, sp), [videos, frames, 0, 0, 0, 0]);
    }
    for e in &index.entries {
        let Some(r) = rows.get_mut(&(e.dataset.clone(), e.label_name.clone(), e.split)) else { continue };
        if rep.missing.contains(&e.frame_path) {
            r[2] += 1;
        } else if unreadable.contains(e.frame_path.as_path()) {
            r[3] += 1;
        }
        if no_lm.contains(e.frame_path.as_path()) {
            r[5] += 1;
        }
    }
    for (k, _, splits, _) in &rep.short_videos {
        for sp in splits {
            if let Some(r) = rows.get_mut(&(k.dataset.clone(), k.label_name.clone(), *sp)) {
                r[4] += 1;
            }
        }
    }
    rows
}

/// Leakage inside each dataset of an index: videos (dataset, label, video) and frame files that
/// the train split shares with val or test, `val` identical to `test` or to `train`, and labels
/// that some splits have and others lack (the second list).
pub fn dataset_leakage(index: &Index) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut absent_labels = Vec::new();
    for dataset in index.datasets() {
        let of = |sp: Split| -> Vec<&FrameEntry> {
            index.entries.iter().filter(|e| e.dataset == dataset && e.split == sp).collect()
        };
        let videos = |v: &[&FrameEntry]| -> BTreeSet<VideoKey> { v.iter().map(|e| e.video_key()).collect() };
        let paths = |v: &[&FrameEntry]| -> BTreeSet<PathBuf> { v.iter().map(|e| e.frame_path.clone()).collect() };
        let (train, val, test) = (of(Split::Train), of(Split::Val), of(Split::Test));
        let (tv, vv, sv) = (videos(&train), videos(&val), videos(&test));
        let (tp, vp, sp) = (paths(&train), paths(&val), paths(&test));
        let pairs = [("train", "test", &tv, &sv, &tp, &sp), ("train", "val", &tv, &vv, &tp, &vp), ("val", "test", &vv, &sv, &vp, &sp)];
        for (a, b, av, bv, ap, bp) in pairs {
            if av.is_empty() || bv.is_empty() {
                continue;
            }
            if av == bv {
                out.push(format!("{dataset}: {a} and {b} are the same {} videos", av.len()));
                continue;
            }
            if a == "val" {
                continue;
            }
            let shared: Vec<&VideoKey> = av.intersection(bv).collect();
            let files = ap.intersection(bp).count();
            if !shared.is_empty() || files > 0 {
                let ex: Vec<String> = shared.iter().take(3).map(|k| k.to_string()).collect();
                let by_label: BTreeMap<&str, usize> = shared.iter().fold(BTreeMap::new(), |mut m, k| {
                    *m.entry(k.label_name.as_str()).or_default() += 1;
                    m
                });
                let per: Vec<String> = by_label.iter().map(|(l, n)| format!("{n} {l}")).collect();
                out.push(format!(
                    "{dataset}: {a} and {b} share {} videos ({}; e.g. {}) and {files} frame files",
                    shared.len(),
                    per.join(", "),
                    ex.join(", ")
                ));
            }
        }
        let labels: BTreeSet<&str> =
            index.entries.iter().filter(|e| e.dataset == dataset).map(|e| e.label_name.as_str()).collect();
        for split in Split::ALL {
            let here: BTreeSet<&str> = of(split).iter().map(|e| e.label_name.as_str()).collect();
            if here.is_empty() {
                continue;
            }
            let absent: Vec<&str> = labels.difference(&here).copied().collect();
            if !absent.is_empty() {
                absent_labels.push(format!("{dataset}: split {split} has no frames of {}", absent.join(", ")));
            }
        }
    }
    (out, absent_labels)
}

fn parse_map(s: &str) -> Result<(String, String), String> {
    let (from, to) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected FROM=TO, e.g. /deepfakebench/datasets/rgb="))?;
    if from.trim_matches(['/', '\\']).is_empty() {
        return Err(format!("`{s}`: empty prefix"));
    }
    Ok((from.to_string(), to.to_string()))
}

/// Resolves the target to an index. Bad arguments are errors (exit 2); a JSON that cannot be
/// read is recorded in the second value and the others are still read.
pub fn index_target(
    target: &Path,
    root: Option<&Path>,
    path_map: &[(String, String)],
    allow_outside_root: bool,
) -> anyhow::Result<(Index, Vec<String>)> {
    let opts = IndexOptions { frames_per_video: None, path_map: path_map.to_vec(), allow_outside_root };
    if target.is_dir() {
        if root.is_some() {
            return Err(CliError::config(format!(
                "{}: --root applies to a JSON target; a directory target is its own root",
                target.display()
            ))
            .into());
        }
        let json_dir = target.join("dataset_json");
        if json_dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&json_dir)
                .map_err(|e| CliError::config(format!("{}: cannot list: {e}", json_dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(CliError::config(format!("{}: no *.json dataset file", json_dir.display())).into());
            }
            let mut all = Index::default();
            let mut fatal = Vec::new();
            for f in files {
                match Index::from_json(&f, target, &opts) {
                    Ok(ix) => all.extend(ix),
                    Err(e) => fatal.push(format!("{e:#}")),
                }
            }
            return Ok((all, fatal));
        }
        return Index::from_folder_tree(target, &opts)
            .map(|ix| (ix, Vec::new()))
            .map_err(|e| CliError::config(format!("{e:#}")).into());
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
        return match Index::from_json(target, &root, &opts) {
            Ok(ix) => Ok((ix, Vec::new())),
            Err(e) => Ok((Index::default(), vec![format!("{e:#}")])),
        };
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
    let (index, fatal) = index_target(&args.target, args.root.as_deref(), &args.path_map, args.allow_outside_root)?;
    let mut rep = check_index(&index, args.frames, args.allow_missing_landmarks);
    rep.fatal.splice(0..0, fatal);
    let root = args.root.clone().unwrap_or_else(|| {
        if args.target.is_dir() {
            args.target.clone()
        } else {
            args.target.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
        }
    });
    let missing: Vec<&Path> = rep.missing.iter().map(PathBuf::as_path).collect();
    rep.path_map_hint = suggest_path_map(&root, &missing);
    // The released JSONs of some datasets (UADFV's `/deepfakebench/datasets/rgb\...`) carry the
    // prefix of the machine they were made on. That is a quirk of the file, not missing data:
    // check the frames where they are, and say which path_map a protocol needs to read them.
    if let (Some(prefix), true) = (rep.path_map_hint.clone(), args.path_map.is_empty()) {
        let map = vec![(prefix.clone(), String::new())];
        let (index, fatal) = index_target(&args.target, args.root.as_deref(), &map, args.allow_outside_root)?;
        let mut mapped = check_index(&index, args.frames, args.allow_missing_landmarks);
        mapped.fatal.splice(0..0, fatal);
        mapped.warnings.insert(
            0,
            format!(
                "the frame paths carry the prefix `{prefix}`, which is not under this root: checked with it \
                 removed; a protocol reading this JSON needs it too ({})",
                path_map_hint(&prefix)
            ),
        );
        rep = mapped;
    }
    if v != Verbosity::Quiet {
        print!("{}", render(&rep, v));
    }
    if !rep.fatal.is_empty() {
        return Err(CliError::config(format!("{}: {}", args.target.display(), rep.summary())).into());
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
    let _ = writeln!(
        s,
        "{:<20} {:<18} {:<6} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7}",
        "dataset", "label", "split", "videos", "frames", "missing", "bad", "short", "no-lmk"
    );
    for ((d, l, sp), [vids, frames, miss, bad, short, nolm]) in &rep.rows {
        let _ = writeln!(
            s,
            "{d:<20} {l:<18} {:<6} {vids:>7} {frames:>8} {miss:>8} {bad:>6} {short:>6} {nolm:>7}",
            sp.as_str()
        );
    }
    let limit = if v == Verbosity::Verbose { usize::MAX } else { 3 };
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
    list("unreadable or malformed input", rep.fatal.clone());
    list("warnings", rep.warnings.clone());
    list("leakage", rep.leakage.clone());
    list("labels absent from a split", rep.absent_labels.clone());
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
    if let Some(prefix) = &rep.path_map_hint {
        let _ = writeln!(
            s,
            "the missing frames resolve with the prefix `{prefix}` removed: {} (here: --path-map '{prefix}=')",
            path_map_hint(prefix)
        );
    }
    s
}
