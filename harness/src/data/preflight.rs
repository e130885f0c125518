//! Data pre-flight of a plan (`bench validate`, and `bench run` before any training): indexes
//! every training, validation and test set of the runs the way the runner does, stats their
//! frames (no decoding), and reports counts, JSON quirks, missing frames, absent labels and
//! train/test leakage. The runner selects its sets with the same functions, so what the
//! pre-flight counts is what a run reads.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

use super::index::{
    FrameEntry, Index, IndexOptions, IssueKind, JsonIssue, Split, VideoKey, is_real_label, path_map_hint,
    suggest_path_map,
};
use crate::plan::{Run, RunConfig};
use crate::protocol::{DataFormat, OnMissing, Selection, TestSet};

/// Missing files named in an error before the total.
const FIRST_MISSING: usize = 5;

/// Reads one dataset of a run's data root (its JSON, or its folder) with the run's frame limit.
pub fn load_index(c: &RunConfig, root: &Path, dataset: &str, frames: usize) -> Result<Index> {
    let opts =
        IndexOptions {
            frames_per_video: (frames > 0).then_some(frames),
            path_map: c.data.path_map.clone(),
            allow_outside_root: c.data.allow_outside_root,
        };
    match (&c.data.format, &c.data.json_dir) {
        (DataFormat::Deepfakebench, Some(json_dir)) => {
            Index::from_json(&json_dir.join(format!("{dataset}.json")), root, &opts)
        }
        _ => Index::load_datasets(root, &[dataset.to_string()], &opts),
    }
}

pub fn parse_split(s: &str) -> Result<Split> {
    Split::parse(s).ok_or_else(|| anyhow!("unknown split `{s}`; expected train, val or test"))
}

/// Real frames and the listed fakes of the training dataset, in the training compression.
fn on_train_side(c: &RunConfig, e: &FrameEntry) -> bool {
    (e.label == 0 || c.train.manipulations.contains(&e.label_name))
        && c.train.compression.as_ref().is_none_or(|want| e.compression.as_ref().is_none_or(|have| have == want))
}

/// The training set of a run, from the training dataset's index.
pub fn select_train(all: &Index, c: &RunConfig) -> Result<Index> {
    let split = parse_split(&c.train.split)?;
    Ok(all.filter(|e| e.split == split && on_train_side(c, e)))
}

/// The validation set of a run (the validation split of the training data).
pub fn select_val(all: &Index, c: &RunConfig) -> Result<Index> {
    let split = parse_split(&c.training.validation.split)?;
    Ok(all.filter(|e| e.split == split && on_train_side(c, e)))
}

/// A test set: its split, real frames and the listed fakes (every fake when none are listed).
pub fn select_test(all: &Index, t: &TestSet) -> Result<Index> {
    let split = parse_split(&t.split)?;
    Ok(all.filter(|e| {
        e.split == split
            && (t.manipulations.is_empty() || e.label == 0 || t.manipulations.contains(&e.label_name))
            && t.compression.as_ref().is_none_or(|want| e.compression.as_ref().is_none_or(|have| have == want))
    }))
}

/// What two sets share: videos (dataset, label and video name) and frame files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlap {
    pub videos: BTreeSet<VideoKey>,
    pub frame_files: usize,
}

pub fn overlap(a: &Index, b: &Index) -> Overlap {
    let b_videos: BTreeSet<VideoKey> = b.entries.iter().map(FrameEntry::video_key).collect();
    let b_paths: BTreeSet<&Path> = b.entries.iter().map(|e| e.frame_path.as_path()).collect();
    let videos = a.entries.iter().map(FrameEntry::video_key).filter(|k| b_videos.contains(k)).collect();
    let a_paths: BTreeSet<&Path> = a.entries.iter().map(|e| e.frame_path.as_path()).collect();
    Overlap { videos, frame_files: a_paths.intersection(&b_paths).count() }
}

/// The training set without the videos (and frame files) that appear in any of `others`.
/// Returns the kept set and the number of videos dropped.
pub fn drop_overlap(train: &Index, others: &[&Index]) -> (Index, usize) {
    let videos: BTreeSet<VideoKey> =
        others.iter().flat_map(|o| o.entries.iter().map(FrameEntry::video_key)).collect();
    let paths: BTreeSet<&Path> =
        others.iter().flat_map(|o| o.entries.iter().map(|e| e.frame_path.as_path())).collect();
    let mut dropped = BTreeSet::new();
    for e in &train.entries {
        let k = e.video_key();
        if videos.contains(&k) || paths.contains(e.frame_path.as_path()) {
            dropped.insert(k);
        }
    }
    let kept = train.filter(|e| !dropped.contains(&e.video_key()));
    (kept, dropped.len())
}

/// Leakage between a training set and the sets a run validates and tests on: shared videos or
/// frame files, and a validation set that is a test set.
pub fn leakage(train: &Index, val: &Index, tests: &[(&str, &Index)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut describe = |what: &str, o: &Overlap| {
        if o.videos.is_empty() && o.frame_files == 0 {
            return;
        }
        let examples: Vec<String> = o.videos.iter().take(3).map(|k| k.to_string()).collect();
        let more = if o.videos.len() > 3 { ", ..." } else { "" };
        out.push(format!(
            "training set and {what} share {} videos ({}{more}) and {} frame files",
            o.videos.len(),
            examples.join(", "),
            o.frame_files
        ));
    };
    describe("the validation set", &overlap(train, val));
    for (name, t) in tests {
        describe(&format!("test set `{name}`"), &overlap(train, t));
    }
    let val_videos: BTreeSet<VideoKey> = val.entries.iter().map(FrameEntry::video_key).collect();
    for (name, t) in tests {
        let tv: BTreeSet<VideoKey> = t.entries.iter().map(FrameEntry::video_key).collect();
        if !val_videos.is_empty() && tv == val_videos {
            out.push(format!(
                "the validation set is test set `{name}` (the same {} videos): model selection sees the test data",
                tv.len()
            ));
        }
    }
    out
}

/// Frame counts per label name.
pub fn frames_per_label(ix: &Index) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in &ix.entries {
        *m.entry(e.label_name.clone()).or_default() += 1;
    }
    m
}

/// Labels a set asks for and that have no frame in it.
fn absent_labels(c: &RunConfig, set: &SetSpec, ix: &Index) -> Vec<String> {
    let present: BTreeSet<&str> = ix.entries.iter().map(|e| e.label_name.as_str()).collect();
    let mut out = Vec::new();
    if !ix.entries.iter().any(|e| e.label == 0) {
        out.push("real frames".to_string());
    }
    let wanted: &[String] = match &set.role {
        Role::Train | Role::Val => &c.train.manipulations,
        Role::Test(i) => &c.tests[*i].manipulations,
    };
    for m in wanted {
        if !present.contains(m.as_str()) {
            out.push(format!("`{m}`"));
        }
    }
    if matches!(set.role, Role::Test(_)) && wanted.is_empty() && !ix.entries.iter().any(|e| e.label == 1) {
        out.push("fake frames".to_string());
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Train,
    Val,
    /// Index into the run's tests.
    Test(usize),
}

/// A pre-flight table row: set role and name, dataset, label, split.
type RowKey = (Role, String, String, String, Split);
/// Videos, frames, missing frames per row.
type Rows = BTreeMap<RowKey, [usize; 3]>;

/// One set as a run reads it; equal specs are checked once.
#[derive(Debug, Clone)]
struct SetSpec {
    role: Role,
    name: String,
    dataset: String,
    split: Split,
    frames: usize,
    on_missing: OnMissing,
}

/// The outcome of a pre-flight: a text report, warnings and errors.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Counts per set, dataset, label and split.
    pub table: String,
    pub warnings: Vec<String>,
    pub leakage: Vec<String>,
    pub errors: Vec<String>,
}

impl Preflight {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = self.table.clone();
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for l in &self.leakage {
            let _ = writeln!(s, "leakage: {l}");
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}

/// Whether a plan reads data that the pre-flight can check (the synthetic benchmark is
/// generated by the runner and consistent by construction).
pub fn applies(runs: &[&Run]) -> bool {
    runs.iter().any(|r| r.config.data.format != DataFormat::Synthetic)
}

/// Checks the data of every run (see the module documentation).
pub fn preflight(runs: &[&Run]) -> Preflight {
    let mut pf = Preflight::default();
    let mut indexes: HashMap<(PathBuf, String, usize), Option<Index>> = HashMap::new();
    let mut exists: HashMap<PathBuf, bool> = HashMap::new();
    let mut seen_sets: BTreeSet<String> = BTreeSet::new();
    let mut seen_groups: BTreeSet<String> = BTreeSet::new();
    let mut used_issues: BTreeSet<(PathBuf, String)> = BTreeSet::new();
    let mut all_issues: Vec<JsonIssue> = Vec::new();
    let mut rows: Rows = BTreeMap::new();
    let mut messages: BTreeSet<String> = BTreeSet::new();
    let mut push = |list: &mut Vec<String>, msg: String| {
        if messages.insert(msg.clone()) {
            list.push(msg);
        }
    };
    for run in runs.iter().filter(|r| r.config.data.format != DataFormat::Synthetic) {
        let c = &run.config;
        let Some(root) = c.data.root.clone() else {
            push(&mut pf.errors, format!("data.root is required for format {:?}", c.data.format));
            continue;
        };
        let (ftrain, ftest) = (c.data.frames_per_video.train as usize, c.data.frames_per_video.test as usize);
        let mut specs = vec![
            SetSpec {
                role: Role::Train,
                name: "train".into(),
                dataset: c.train.dataset.clone(),
                split: parse_split(&c.train.split).unwrap_or(Split::Train),
                frames: ftrain,
                on_missing: c.data.on_missing.train,
            },
            SetSpec {
                role: Role::Val,
                name: "val".into(),
                dataset: c.train.dataset.clone(),
                split: parse_split(&c.training.validation.split).unwrap_or(Split::Val),
                frames: ftrain,
                on_missing: c.data.on_missing.train,
            },
        ];
        for (i, t) in c.tests.iter().enumerate() {
            specs.push(SetSpec {
                role: Role::Test(i),
                name: format!("test `{}`", t.name),
                dataset: t.dataset.clone(),
                split: parse_split(&t.split).unwrap_or(Split::Test),
                frames: ftest,
                on_missing: c.data.on_missing.test,
            });
        }
        let mut selected: Vec<Option<Index>> = Vec::new();
        for spec in &specs {
            let key = (root.clone(), spec.dataset.clone(), spec.frames);
            let all = indexes.entry(key).or_insert_with(|| match load_index(c, &root, &spec.dataset, spec.frames) {
                Ok(ix) => {
                    all_issues.extend(ix.issues.iter().cloned());
                    Some(ix)
                }
                Err(e) => {
                    push(&mut pf.errors, format!("{e:#}"));
                    None
                }
            });
            let Some(all) = all.as_ref() else {
                selected.push(None);
                continue;
            };
            let ix = match &spec.role {
                Role::Train => select_train(all, c),
                Role::Val => select_val(all, c),
                Role::Test(i) => select_test(all, &c.tests[*i]),
            };
            let ix = match ix {
                Ok(ix) => ix,
                Err(e) => {
                    push(&mut pf.errors, format!("{e:#}"));
                    selected.push(None);
                    continue;
                }
            };
            // The JSON parts this set reads.
            let wants_label = |label: &str| match &spec.role {
                Role::Train | Role::Val => is_real_label(label) || c.train.manipulations.iter().any(|m| m == label),
                Role::Test(i) => {
                    let t = &c.tests[*i];
                    t.manipulations.is_empty() || is_real_label(label) || t.manipulations.iter().any(|m| m == label)
                }
            };
            for issue in &all.issues {
                let needed = issue.dataset == spec.dataset
                    && (issue.label.is_empty() || wants_label(&issue.label))
                    && issue.split.is_none_or(|s| s == spec.split);
                if !needed {
                    continue;
                }
                used_issues.insert((issue.source.clone(), issue.key.clone()));
                match issue.kind {
                    IssueKind::Malformed(_) => push(
                        &mut pf.errors,
                        format!("{issue}; the {} set needs it: fix the JSON there, or choose another split or labels in the protocol", spec.name),
                    ),
                    IssueKind::Flattened => push(&mut pf.warnings, format!("{issue} (used by the {} set)", spec.name)),
                    IssueKind::Empty => {}
                }
            }
            let set_key = format!("{}|{:?}|{}|{:?}", root.display(), spec.dataset, spec.name, spec.frames)
                + &serde_json::to_string(&(&c.train, &c.tests, &c.training.validation.split)).unwrap_or_default();
            if seen_sets.insert(set_key) {
                check_set(c, spec, &ix, &root, &mut exists, &mut rows, &mut pf, &mut push);
            }
            selected.push(Some(ix));
        }
        // Leakage of this run's sets (runs of one protocol mostly share them: report once).
        if let (Some(Some(train)), Some(Some(val))) = (selected.first(), selected.get(1)) {
            let tests: Vec<(&str, &Index)> = specs[2..]
                .iter()
                .zip(&selected[2..])
                .filter_map(|(s, ix)| {
                    let Role::Test(i) = s.role else { return None };
                    ix.as_ref().map(|ix| (c.tests[i].name.as_str(), ix))
                })
                .collect();
            let group = serde_json::to_string(&(&c.train, &c.tests, &c.training.validation.split)).unwrap_or_default();
            if seen_groups.insert(group) {
                let mut found = leakage(train, val, &tests);
                if c.train.drop_overlap && !found.is_empty() {
                    let others: Vec<&Index> = std::iter::once(val).chain(tests.iter().map(|t| t.1)).collect();
                    let (_, n) = drop_overlap(train, &others);
                    found.push(format!("train.drop_overlap = true: {n} overlapping videos are dropped from training"));
                } else if !found.is_empty() {
                    found.push("set train.drop_overlap = true to train without the shared videos".into());
                }
                for l in found {
                    push(&mut pf.leakage, l);
                }
            }
        }
        if c.training.selection == Selection::BestVal
            && let Some(Some(val)) = selected.get(1)
            && val.entries.is_empty()
        {
            push(
                &mut pf.errors,
                format!(
                    "the validation set is empty: dataset {} split {} (use training.selection = \"last\", or training.validation.split = \"train\")",
                    c.train.dataset, c.training.validation.split
                ),
            );
        }
    }
    // Quirks in parts of the JSONs that no run reads.
    let mut unused: BTreeSet<String> = BTreeSet::new();
    for issue in &all_issues {
        if !used_issues.contains(&(issue.source.clone(), issue.key.clone())) && issue.kind != IssueKind::Empty {
            unused.insert(format!("{issue} (not used by this protocol)"));
        }
    }
    for u in unused {
        push(&mut pf.warnings, u);
    }
    let mut t = String::new();
    if !rows.is_empty() {
        let w = |f: &dyn Fn(&RowKey) -> usize, min: usize| {
            rows.keys().map(f).max().unwrap_or(0).max(min)
        };
        let (ws, wd, wl) = (w(&|k| k.1.chars().count(), 3), w(&|k| k.2.chars().count(), 7), w(&|k| k.3.chars().count(), 5));
        let _ = writeln!(
            t,
            "{:<ws$}  {:<wd$}  {:<wl$}  {:<5}  {:>7}  {:>8}  {:>8}",
            "set", "dataset", "label", "split", "videos", "frames", "missing"
        );
        for ((_, set, d, l, sp), [v, f, m]) in &rows {
            let _ = writeln!(t, "{set:<ws$}  {d:<wd$}  {l:<wl$}  {:<5}  {v:>7}  {f:>8}  {m:>8}", sp.as_str());
        }
    }
    pf.table = t;
    pf
}

#[allow(clippy::too_many_arguments)]
fn check_set(
    c: &RunConfig,
    spec: &SetSpec,
    ix: &Index,
    root: &Path,
    exists: &mut HashMap<PathBuf, bool>,
    rows: &mut Rows,
    pf: &mut Preflight,
    push: &mut impl FnMut(&mut Vec<String>, String),
) {
    let what = format!("{} set (dataset {} split {})", spec.name, spec.dataset, spec.split);
    if ix.entries.is_empty() {
        if spec.role != Role::Val {
            push(&mut pf.errors, format!("the {what} has no frames for the protocol's labels"));
        }
        return;
    }
    let mut missing: Vec<&Path> = Vec::new();
    // (dataset, label, compression, video)
    let mut videos: BTreeSet<(&str, &str, Option<&str>, &str)> = BTreeSet::new();
    for e in &ix.entries {
        let here = *exists.entry(e.frame_path.clone()).or_insert_with(|| e.frame_path.is_file());
        let row = rows
            .entry((spec.role.clone(), spec.name.clone(), e.dataset.clone(), e.label_name.clone(), e.split))
            .or_default();
        row[1] += 1;
        if !here {
            row[2] += 1;
            missing.push(&e.frame_path);
        }
        videos.insert((&e.dataset, &e.label_name, e.compression.as_deref(), &e.video));
    }
    for (d, l, _, _) in videos {
        if let Some(row) = rows.get_mut(&(spec.role.clone(), spec.name.clone(), d.to_string(), l.to_string(), spec.split)) {
            row[0] += 1;
        }
    }
    let absent = absent_labels(c, spec, ix);
    if !absent.is_empty() {
        let one_class = !(ix.entries.iter().any(|e| e.label == 0) && ix.entries.iter().any(|e| e.label == 1));
        let note = if one_class && matches!(spec.role, Role::Test(_)) {
            "; one class: its AUC, EER and AP are undefined"
        } else {
            ""
        };
        push(&mut pf.warnings, format!("the {what} has no {} (the protocol asks for them{note})", absent.join(", ")));
    }
    if missing.is_empty() {
        return;
    }
    let mut uniq: Vec<&Path> = missing.clone();
    uniq.sort();
    uniq.dedup();
    let names: Vec<String> = uniq.iter().take(FIRST_MISSING).map(|p| p.display().to_string()).collect();
    let more = if uniq.len() > FIRST_MISSING { ", ..." } else { "" };
    let hint = suggest_path_map(root, &uniq)
        .map(|p| format!("; the paths resolve with the prefix `{p}` removed: {}", path_map_hint(&p)))
        .unwrap_or_default();
    let msg = format!(
        "{} of {} frames of the {what} are missing under {}: {}{more}{hint}",
        uniq.len(),
        ix.entries.len(),
        root.display(),
        names.join(", ")
    );
    if spec.on_missing == OnMissing::Fail || missing.len() == ix.entries.len() {
        push(&mut pf.errors, msg);
    } else {
        push(&mut pf.warnings, format!("{msg} (skipped: data.on_missing = \"skip\")"));
    }
}
