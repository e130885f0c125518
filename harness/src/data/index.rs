//! Dataset indexes: DeepfakeBench JSON files and plain folder trees, read into one flat list of
//! frames ([`Index`]) with selection and per-video grouping helpers.
//!
//! # Sources
//! * **DeepfakeBench JSON** (`dataset_json/<Dataset>.json`): `dataset -> label -> split ->
//!   [compression ->] video -> {"label", "frames", "masks"}`. The compression level is recognised
//!   because a video object has a `frames` key. Frame paths may use `\` or `/`; relative paths are
//!   resolved against the data root, absolute paths are used as they are. Any `..` component is
//!   refused (a path must not escape the data root). The label name of a frame is the video's
//!   `"label"` field (what DeepfakeBench trains on), else the label key.
//! * **Folder tree**: `<root>/<dataset>/<label>/<video>/<frame>.{png,jpg,jpeg}`. If a dataset
//!   folder holds any of `train`/`val`/`test`, the layout is `<root>/<dataset>/<split>/<label>/...`
//!   and only those split folders are read. Otherwise every frame belongs to every split (as
//!   DeepfakeBench does for DFD and UADFV): its entry is listed once per split. Landmarks come
//!   from the twin tree `<root>/landmarks/<same relative path>.npy`, masks from
//!   `<root>/masks/<same relative path>`. Top-level folders `landmarks`, `masks` and
//!   `dataset_json` are never datasets.
//!
//! # Side files
//! The landmark path of a frame replaces its last `frames` component by `landmarks` and the
//! extension by `.npy`; the mask path replaces it by `masks` (a JSON's `masks` list wins when
//! present). [`FrameEntry::landmark_path`] / [`FrameEntry::mask_path`] are `Some` only when the
//! file exists (checked once while indexing); [`landmark_path_for`] gives the expected path.
//!
//! # Frames per video
//! With [`IndexOptions::frames_per_video`] = `Some(k)`, a video with `n > k` frames keeps the
//! frames at `floor(linspace(0, n - 1, k))` of its naturally sorted frame list (spread evenly,
//! never the first `k`); a video with `n < k` keeps all and is listed in [`Index::short_videos`].
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Label names that mean "real" (0). Anything else is fake (1); see [`is_real_label`].
pub const REAL_LABELS: &[&str] = &[
    "FF-real",
    "CelebDFv1_real",
    "CelebDFv2_real",
    "DFDC_Real",
    "DFDCP_Real",
    "UADFV_Real",
    "DFD_real",
    "DF_real",
    "real",
];

/// True for the DeepfakeBench real label names, plain `real`, and any name ending in `_real` /
/// `-real` (case-insensitive). Everything else is a fake label.
pub fn is_real_label(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    REAL_LABELS.iter().any(|r| r.eq_ignore_ascii_case(name)) || l.ends_with("_real") || l.ends_with("-real")
}

/// Dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame of one video.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameEntry {
    /// Dataset name (the JSON's top-level key or the folder name), e.g. `FaceForensics++`.
    pub dataset: String,
    /// Label name as written in the source, e.g. `FF-real`, `FF-DF`, `CelebDFv2_fake`, `fake`.
    pub label_name: String,
    /// 0 = real, 1 = fake ([`is_real_label`]).
    pub label: u8,
    /// The manipulation of a fake (its label name); `None` for real frames.
    pub manipulation: Option<String>,
    pub split: Split,
    /// `c23` / `c40` / `raw` for the FF++ family; `None` when the source has no such level.
    pub compression: Option<String>,
    /// Video folder name (the path component before the frame).
    pub video: String,
    /// Frame file name (last path component), e.g. `014.png`.
    pub frame: String,
    /// Resolved frame path.
    pub frame_path: PathBuf,
    /// Landmark file, present only when it exists on disk.
    pub landmark_path: Option<PathBuf>,
    /// Mask file, present only when it exists on disk.
    pub mask_path: Option<PathBuf>,
}

impl FrameEntry {
    pub fn video_key(&self) -> VideoKey {
        VideoKey {
            dataset: self.dataset.clone(),
            label_name: self.label_name.clone(),
            video: self.video.clone(),
        }
    }
}

/// Identity of a video. Keyed on dataset + label + video (not the bare folder name: FF++ fakes
/// of four methods share names like `000_003`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct VideoKey {
    pub dataset: String,
    pub label_name: String,
    pub video: String,
}

impl fmt::Display for VideoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.dataset, self.label_name, self.video)
    }
}

/// Options applied while indexing.
#[derive(Debug, Clone, Default)]
pub struct IndexOptions {
    /// Keep at most this many frames per video, spread evenly.
    pub frames_per_video: Option<usize>,
    /// Prefix rewrites of JSON frame paths (`data.path_map`), tried in order; see [`map_path`].
    pub path_map: Vec<(String, String)>,
    /// Read absolute frame paths that lie outside the root (`data.allow_outside_root`). Off, such
    /// a path that exists is refused: a dataset JSON should not make a run read files it was not
    /// pointed at. One that does not exist is a missing frame, with the `path_map` hint.
    pub allow_outside_root: bool,
}

/// A video with fewer frames than [`IndexOptions::frames_per_video`] asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortVideo {
    pub key: VideoKey,
    pub split: Split,
    pub found: usize,
    pub wanted: usize,
}

/// A flat list of frames. Entries are ordered by source, then dataset, label, split,
/// compression, video and natural frame order; selections keep that order.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub entries: Vec<FrameEntry>,
    pub short_videos: Vec<ShortVideo>,
    /// Parts of the source JSONs that were skipped or read in a degraded way.
    pub issues: Vec<JsonIssue>,
}

/// Which frames to keep ([`Index::select`]). Each `None` field accepts everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub datasets: Option<Vec<String>>,
    pub splits: Option<Vec<Split>>,
    /// Compression levels; an entry without a compression level passes any compression filter.
    pub compressions: Option<Vec<String>>,
    /// Label names (real and fake), e.g. `["FF-real", "FF-DF"]`.
    pub label_names: Option<Vec<String>>,
}

impl Selection {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn dataset(mut self, d: impl Into<String>) -> Self {
        self.datasets.get_or_insert_with(Vec::new).push(d.into());
        self
    }
    pub fn split(mut self, s: Split) -> Self {
        self.splits.get_or_insert_with(Vec::new).push(s);
        self
    }
    pub fn compression(mut self, c: impl Into<String>) -> Self {
        self.compressions.get_or_insert_with(Vec::new).push(c.into());
        self
    }
    pub fn labels<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.label_names.get_or_insert_with(Vec::new).extend(names.into_iter().map(Into::into));
        self
    }
    pub fn matches(&self, e: &FrameEntry) -> bool {
        self.datasets.as_ref().is_none_or(|d| d.contains(&e.dataset))
            && self.splits.as_ref().is_none_or(|s| s.contains(&e.split))
            && self.compressions.as_ref().is_none_or(|c| match &e.compression {
                Some(ec) => c.iter().any(|x| x == ec),
                None => true,
            })
            && self.label_names.as_ref().is_none_or(|l| l.contains(&e.label_name))
    }
}

impl Index {
    /// Reads every `dataset_json/*.json` under `root` if that folder exists, else the folder tree.
    pub fn from_root(root: &Path, opts: &IndexOptions) -> Result<Index> {
        if !root.is_dir() {
            bail!("{}: not a directory (expected a data root)", root.display());
        }
        let json_dir = root.join("dataset_json");
        if json_dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&json_dir)
                .with_context(|| format!("{}: cannot list", json_dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no *.json dataset file", json_dir.display());
            }
            let mut all = Index::default();
            for f in files {
                all.extend(Index::from_json(&f, root, opts)?);
            }
            Ok(all)
        } else {
            Index::from_folder_tree(root, opts)
        }
    }

    /// Reads one DeepfakeBench dataset JSON; relative frame paths resolve against `root`.
    pub fn from_json(json: &Path, root: &Path, opts: &IndexOptions) -> Result<Index> {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("{}: cannot read", json.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", json.display()))?;
        Index::from_json_value(&value, json, root, opts)
    }

    /// As [`Index::from_json`] for an already parsed value; `source` names it in errors.
    pub fn from_json_value(value: &Value, source: &Path, root: &Path, opts: &IndexOptions) -> Result<Index> {
        let top = value.as_object().ok_or_else(|| {
            anyhow!("{}: at $: expected an object {{dataset: {{label: {{split: ...}}}}}}", source.display())
        })?;
        let mut out = Index::default();
        let issue = |dataset: &str, label: &str, split: Option<Split>, key: String, kind: IssueKind| JsonIssue {
            source: source.to_path_buf(),
            dataset: dataset.to_string(),
            label: label.to_string(),
            split,
            key,
            kind,
        };
        for (dataset, labels) in top {
            let kp = format!("$[{dataset:?}]");
            let Some(labels) = labels.as_object() else {
                let why = "expected an object {label: {split: ...}}; this dataset is skipped".to_string();
                out.issues.push(issue(dataset, "", None, kp, IssueKind::Malformed(why)));
                continue;
            };
            for (label_key, splits) in labels {
                let kp = format!("{kp}[{label_key:?}]");
                let Some(splits) = splits.as_object() else {
                    let why = "expected an object {split: {...}}; this label is skipped".to_string();
                    out.issues.push(issue(dataset, label_key, None, kp, IssueKind::Malformed(why)));
                    continue;
                };
                for (split_key, level) in splits {
                    let kp = format!("{kp}[{split_key:?}]");
                    let Some(split) = Split::parse(split_key) else {
                        let why = format!("unknown split {split_key:?} (expected train, val or test); skipped");
                        out.issues.push(issue(dataset, label_key, None, kp, IssueKind::Malformed(why)));
                        continue;
                    };
                    let place = SplitPlace { dataset, label_key, split, root, opts };
                    match read_split(&place, level, &kp) {
                        Ok(read) => {
                            if read.flattened {
                                out.issues.push(issue(dataset, label_key, Some(split), kp.clone(), IssueKind::Flattened));
                            }
                            if read.videos == 0 {
                                out.issues.push(issue(dataset, label_key, Some(split), kp, IssueKind::Empty));
                            }
                            out.entries.extend(read.entries);
                            out.short_videos.extend(read.short_videos);
                        }
                        Err((at, why)) => {
                            let why = format!("{why}; the {split} split of {label_key} is skipped");
                            out.issues.push(issue(dataset, label_key, Some(split), at, IssueKind::Malformed(why)));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads a folder tree (see the module documentation).
    pub fn from_folder_tree(root: &Path, opts: &IndexOptions) -> Result<Index> {
        let mut out = Index::default();
        for dataset_dir in sorted_dirs(root)? {
            let dataset = file_name(&dataset_dir);
            if is_reserved_dir(&dataset) {
                continue;
            }
            out.index_dataset_dir(root, &dataset_dir, opts)?;
        }
        if out.entries.is_empty() {
            bail!(
                "{}: no frames found (expected dataset_json/*.json or <dataset>/[<split>/]<label>/<video>/<frame>.png)",
                root.display()
            );
        }
        Ok(out)
    }

    /// Only the named datasets of a root: `dataset_json/<name>.json` when it exists, else the
    /// folder `<root>/<name>`. Errors list what the root offers.
    pub fn load_datasets(root: &Path, names: &[String], opts: &IndexOptions) -> Result<Index> {
        if !root.is_dir() {
            bail!("{}: not a directory (expected a data root)", root.display());
        }
        let mut out = Index::default();
        for name in names {
            let json = root.join("dataset_json").join(format!("{name}.json"));
            let dir = root.join(name);
            if json.is_file() {
                out.extend(Index::from_json(&json, root, opts)?);
            } else if dir.is_dir() && !is_reserved_dir(name) {
                let before = out.entries.len();
                out.index_dataset_dir(root, &dir, opts)?;
                if out.entries.len() == before {
                    bail!(
                        "{}: no frames found (expected [<split>/]<label>/<video>/<frame>.png)",
                        dir.display()
                    );
                }
            } else {
                bail!(
                    "dataset {name:?} not found under {}: no dataset_json/{name}.json and no {name}/ folder (available: {})",
                    root.display(),
                    available_datasets(root).join(", ")
                );
            }
        }
        Ok(out)
    }

    fn index_dataset_dir(&mut self, root: &Path, dataset_dir: &Path, opts: &IndexOptions) -> Result<()> {
        let out = self;
        let dataset = file_name(dataset_dir);
        let split_dirs: Vec<PathBuf> =
            sorted_dirs(dataset_dir)?.into_iter().filter(|d| Split::parse(&file_name(d)).is_some()).collect();
        let groups: Vec<(PathBuf, Vec<Split>)> = if split_dirs.is_empty() {
            vec![(dataset_dir.to_path_buf(), Split::ALL.to_vec())]
        } else {
            split_dirs.into_iter().map(|d| (d.clone(), vec![Split::parse(&file_name(&d)).unwrap()])).collect()
        };
        for (base, splits) in groups {
            for label_dir in sorted_dirs(&base)? {
                let label_name = file_name(&label_dir);
                let label = if is_real_label(&label_name) { 0 } else { 1 };
                for video_dir in sorted_dirs(&label_dir)? {
                    let video = file_name(&video_dir);
                    let mut frames: Vec<(String, PathBuf)> = std::fs::read_dir(&video_dir)
                        .with_context(|| format!("{}: cannot list", video_dir.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_image_path(p))
                        .map(|p| (file_name(&p), p))
                        .collect();
                    let found = frames.len();
                    if found == 0 {
                        continue;
                    }
                    frames = spread_sorted(frames, opts.frames_per_video, |f| f.0.as_str());
                    for &split in &splits {
                        if let Some(w) = opts.frames_per_video
                            && found < w
                        {
                            out.short_videos.push(ShortVideo {
                                key: VideoKey {
                                    dataset: dataset.clone(),
                                    label_name: label_name.clone(),
                                    video: video.clone(),
                                },
                                split,
                                found,
                                wanted: w,
                            });
                        }
                        for (frame, path) in &frames {
                            let rel = path.strip_prefix(root).unwrap_or(path);
                            let lm = root.join("landmarks").join(rel).with_extension("npy");
                            let mk = root.join("masks").join(rel);
                            out.entries.push(FrameEntry {
                                dataset: dataset.clone(),
                                label_name: label_name.clone(),
                                label,
                                manipulation: (label == 1).then(|| label_name.clone()),
                                split,
                                compression: None,
                                video: video.clone(),
                                frame: frame.clone(),
                                frame_path: path.clone(),
                                landmark_path: lm.is_file().then_some(lm),
                                mask_path: (label == 1 && mk.is_file()).then_some(mk),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends another index (e.g. several dataset JSONs).
    pub fn extend(&mut self, other: Index) {
        self.entries.extend(other.entries);
        self.short_videos.extend(other.short_videos);
        self.issues.extend(other.issues);
    }

    /// Fails on the first malformed part of a source JSON (for callers that read a JSON
    /// whole, such as `bench predict`); flattened and empty splits pass.
    pub fn strict(self) -> Result<Index> {
        match self.issues.iter().find(|i| i.is_malformed()) {
            Some(i) => Err(anyhow!("{i}")),
            None => Ok(self),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries matching `sel`, in index order.
    pub fn select(&self, sel: &Selection) -> Index {
        Index {
            entries: self.entries.iter().filter(|e| sel.matches(e)).cloned().collect(),
            short_videos: self
                .short_videos
                .iter()
                .filter(|s| {
                    sel.datasets.as_ref().is_none_or(|d| d.contains(&s.key.dataset))
                        && sel.splits.as_ref().is_none_or(|x| x.contains(&s.split))
                        && sel.label_names.as_ref().is_none_or(|l| l.contains(&s.key.label_name))
                })
                .cloned()
                .collect(),
            issues: self.issues.clone(),
        }
    }

    /// The entries for which `keep` is true.
    pub fn filter(&self, keep: impl Fn(&FrameEntry) -> bool) -> Index {
        Index {
            entries: self.entries.iter().filter(|e| keep(e)).cloned().collect(),
            short_videos: Vec::new(),
            issues: self.issues.clone(),
        }
    }

    pub fn reals(&self) -> Index {
        self.filter(|e| e.label == 0)
    }
    pub fn fakes(&self) -> Index {
        self.filter(|e| e.label == 1)
    }

    /// Distinct dataset names, sorted.
    pub fn datasets(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.dataset.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }
    /// Distinct manipulations (fake label names), sorted.
    pub fn manipulations(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| e.manipulation.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Entry indices per video, keyed on (dataset, label, video), in index order within a video.
    /// A video listed in several splits or compressions is one key; select first to separate them.
    pub fn videos(&self) -> BTreeMap<VideoKey, Vec<usize>> {
        let mut m: BTreeMap<VideoKey, Vec<usize>> = BTreeMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            m.entry(e.video_key()).or_default().push(i);
        }
        m
    }

    /// Frame counts per (dataset, label name, split).
    pub fn counts(&self) -> BTreeMap<(String, String, Split), (usize, usize)> {
        let mut videos: BTreeMap<(String, String, Split), BTreeSet<(Option<String>, String)>> =
            BTreeMap::new();
        let mut frames: BTreeMap<(String, String, Split), usize> = BTreeMap::new();
        for e in &self.entries {
            let k = (e.dataset.clone(), e.label_name.clone(), e.split);
            *frames.entry(k.clone()).or_default() += 1;
            videos.entry(k).or_default().insert((e.compression.clone(), e.video.clone()));
        }
        frames.into_iter().map(|(k, f)| (k.clone(), (videos[&k].len(), f))).collect()
    }

    /// Entries whose landmark file is missing.
    pub fn missing_landmarks(&self) -> impl Iterator<Item = &FrameEntry> {
        self.entries.iter().filter(|e| e.landmark_path.is_none())
    }
}

/// A part of a dataset JSON that was skipped or read in a degraded way. Released DeepfakeBench
/// JSONs have such parts (DFDC's flattened `val`, empty `train` splits), so they do not stop the
/// indexing: whoever needs the split decides (an error for a split a protocol trains or tests
/// on, a warning otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonIssue {
    pub source: PathBuf,
    pub dataset: String,
    /// Label key; empty when a whole dataset was skipped.
    pub label: String,
    /// `None` when the problem is above the split level (a label that is not an object, an
    /// unknown split key).
    pub split: Option<Split>,
    /// JSON key path of the problem, e.g. `$["DFDC"]["DFDC_Real"]["val"]`.
    pub key: String,
    pub kind: IssueKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueKind {
    /// The split is one `{"label", "frames"}` video object instead of `{video: {...}}`; its
    /// frames were read as one video.
    Flattened,
    /// The split lists no video.
    Empty,
    /// Unreadable; nothing of it was read. The text says what was expected.
    Malformed(String),
}

impl JsonIssue {
    pub fn is_malformed(&self) -> bool {
        matches!(self.kind, IssueKind::Malformed(_))
    }

    /// Whether this issue affects frames of `dataset`/`label`/`split` (an issue above the split
    /// level affects every split of its label, or of its dataset).
    pub fn affects(&self, dataset: &str, label: &str, split: Split) -> bool {
        self.dataset == dataset
            && (self.label.is_empty() || self.label == label)
            && self.split.is_none_or(|s| s == split)
    }

    pub fn message(&self) -> String {
        match &self.kind {
            IssueKind::Flattened => "flattened split: one {\"label\", \"frames\"} object instead of {video: {...}} \
                 (a known defect of DeepfakeBench's rearrange.py); read as one video"
                .to_string(),
            IssueKind::Empty => "empty split: no videos (released DeepfakeBench JSONs leave unused splits empty, \
                 e.g. DFDC's train)"
                .to_string(),
            IssueKind::Malformed(why) => why.clone(),
        }
    }
}

impl fmt::Display for JsonIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: at {}: {}", self.source.display(), self.key, self.message())
    }
}

/// Where a split sits in its JSON, and how to read it.
struct SplitPlace<'a> {
    dataset: &'a str,
    label_key: &'a str,
    split: Split,
    root: &'a Path,
    opts: &'a IndexOptions,
}

struct SplitRead {
    entries: Vec<FrameEntry>,
    short_videos: Vec<ShortVideo>,
    videos: usize,
    flattened: bool,
}

/// Reads one split: `{video: {...}}`, `{compression: {video: {...}}}`, or the flattened
/// `{"label", "frames"}` of one video. An error carries the key path of the offending value.
fn read_split(place: &SplitPlace<'_>, level: &Value, kp: &str) -> std::result::Result<SplitRead, (String, String)> {
    let err = |path: &str, what: &str| (path.to_string(), what.to_string());
    let level = level.as_object().ok_or_else(|| err(kp, "expected an object {video: {\"frames\": [...]}}"))?;
    let mut read = SplitRead { entries: Vec::new(), short_videos: Vec::new(), videos: 0, flattened: false };
    if level.get("frames").is_some_and(Value::is_array) {
        // DeepfakeBench's rearrange.py bug: the split is the video object itself. Its name is
        // the folder of its first frame.
        read.flattened = true;
        let name = level["frames"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .and_then(|s| s.split(['\\', '/']).filter(|p| !p.is_empty()).rev().nth(1))
            .unwrap_or(place.label_key)
            .to_string();
        read_video(place, None, &name, &Value::Object(level.clone()), kp, &mut read)?;
        return Ok(read);
    }
    // Either videos directly, or one more level of compressions.
    let has_videos = level.values().any(|v| v.get("frames").is_some());
    if has_videos {
        for (video_key, video) in level {
            read_video(place, None, video_key, video, &format!("{kp}[{video_key:?}]"), &mut read)?;
        }
    } else {
        for (comp, videos) in level {
            let kp = format!("{kp}[{comp:?}]");
            let videos = videos
                .as_object()
                .ok_or_else(|| err(&kp, "expected an object of videos {video: {\"frames\": [...]}}"))?;
            for (video_key, video) in videos {
                read_video(place, Some(comp), video_key, video, &format!("{kp}[{video_key:?}]"), &mut read)?;
            }
        }
    }
    Ok(read)
}

fn read_video(
    place: &SplitPlace<'_>,
    comp: Option<&str>,
    video_key: &str,
    video: &Value,
    kp: &str,
    read: &mut SplitRead,
) -> std::result::Result<(), (String, String)> {
    let err = |path: String, what: String| (path, what);
    let vobj = video
        .as_object()
        .ok_or_else(|| err(kp.to_string(), "expected a video object {\"label\", \"frames\", \"masks\"}".into()))?;
    let label_name = match vobj.get("label") {
        None => place.label_key.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err(format!("{kp}[\"label\"]"), "expected a string".into())),
    };
    let frames = vobj
        .get("frames")
        .ok_or_else(|| err(kp.to_string(), "missing key \"frames\"".into()))?
        .as_array()
        .ok_or_else(|| err(format!("{kp}[\"frames\"]"), "expected an array".into()))?;
    let masks = match vobj.get("masks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => return Err(err(format!("{kp}[\"masks\"]"), "expected an array".into())),
    };
    let (root, map, outside) = (place.root, &place.opts.path_map, place.opts.allow_outside_root);
    let mut items = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let fkp = format!("{kp}[\"frames\"][{i}]");
        let s = f.as_str().ok_or_else(|| err(fkp.clone(), "expected a string path".into()))?;
        let (path, parts) = resolve(root, s, map, outside).map_err(|e| err(fkp.clone(), e))?;
        if parts.len() < 2 {
            return Err(err(fkp, format!("{s:?}: expected <video>/<frame> at least")));
        }
        let mask = match masks.and_then(|m| m.get(i)) {
            Some(Value::String(m)) => {
                Some(resolve(root, m, map, outside).map_err(|e| err(format!("{kp}[\"masks\"][{i}]"), e))?.0)
            }
            Some(Value::Null) | None => None,
            Some(_) => return Err(err(format!("{kp}[\"masks\"][{i}]"), "expected a string path".into())),
        };
        let video = parts[parts.len() - 2].clone();
        let frame = parts[parts.len() - 1].clone();
        items.push((video, frame, path, mask));
    }
    read.videos += 1;
    let wanted = place.opts.frames_per_video;
    let found = items.len();
    let kept = spread_sorted(items, wanted, |it| it.1.as_str());
    let label = if is_real_label(&label_name) { 0 } else { 1 };
    if let Some(w) = wanted
        && found < w
    {
        read.short_videos.push(ShortVideo {
            key: VideoKey {
                dataset: place.dataset.to_string(),
                label_name: label_name.clone(),
                video: video_key.to_string(),
            },
            split: place.split,
            found,
            wanted: w,
        });
    }
    for (video, frame, path, mask) in kept {
        let landmark_path = landmark_path_for(&path).filter(|p| p.is_file());
        let mask_path = mask.or_else(|| side_path(&path, "masks", None)).filter(|p| label == 1 && p.is_file());
        read.entries.push(FrameEntry {
            dataset: place.dataset.to_string(),
            label_name: label_name.clone(),
            label,
            manipulation: (label == 1).then(|| label_name.clone()),
            split: place.split,
            compression: comp.map(str::to_string),
            video,
            frame,
            frame_path: path,
            landmark_path,
            mask_path,
        });
    }
    Ok(())
}

/// Expected landmark path of a frame: the last `frames` component becomes `landmarks`, the
/// extension `.npy`. `None` when the path has no `frames` component.
pub fn landmark_path_for(frame: &Path) -> Option<PathBuf> {
    side_path(frame, "landmarks", Some("npy"))
}

/// Expected mask path of a frame (`frames` -> `masks`).
pub fn mask_path_for(frame: &Path) -> Option<PathBuf> {
    side_path(frame, "masks", None)
}

fn side_path(frame: &Path, dir: &str, ext: Option<&str>) -> Option<PathBuf> {
    let comps: Vec<Component> = frame.components().collect();
    let pos = comps.iter().rposition(|c| c.as_os_str() == "frames")?;
    let mut p = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        if i == pos { p.push(dir) } else { p.push(c.as_os_str()) }
    }
    if let Some(ext) = ext {
        p.set_extension(ext);
    }
    Some(p)
}

/// Rewrites the first matching prefix of `raw` (`data.path_map`). Separators are compared as
/// `/` (`T:\\data` matches `T:\data\UADFV\...` and `T:/data/UADFV/...`), and a prefix matches
/// whole components only. The result is relative to the data root unless the replacement is
/// absolute. `None` when no prefix matches.
pub fn map_path(raw: &str, map: &[(String, String)]) -> Option<String> {
    let norm = raw.replace('\\', "/");
    for (from, to) in map {
        let from = from.replace('\\', "/");
        let from = from.trim_end_matches('/');
        let Some(rest) = norm.strip_prefix(from) else { continue };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let rest = rest.trim_start_matches('/');
        let to = to.replace('\\', "/");
        return Some(if to.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", to.trim_end_matches('/'))
        });
    }
    None
}

/// Whether a path starts with a Windows drive (`T:\...`, `T:/...`).
fn has_drive(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic()
}

/// Resolves a JSON frame path against the root, after the `path_map` rewrites. Returns the path
/// and its components. An absolute path is used as it is; a Windows drive path that no rewrite
/// matched cannot exist here: it is kept as written (with `/`) so that it is reported as a
/// missing file, with the `path_map` line that would fix it ([`suggest_path_map`]).
fn resolve(
    root: &Path,
    raw: &str,
    map: &[(String, String)],
    allow_outside_root: bool,
) -> std::result::Result<(PathBuf, Vec<String>), String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    let mapped = map_path(raw, map);
    let s = mapped.as_deref().unwrap_or(raw);
    let absolute = mapped.is_none() && (s.starts_with('/') || s.starts_with('\\'));
    let parts: Vec<String> =
        s.split(['\\', '/']).filter(|s| !s.is_empty() && *s != ".").map(str::to_string).collect();
    if parts.iter().any(|p| p == "..") {
        return Err(format!("{raw:?}: path escapes the data root ('..' is not allowed)"));
    }
    if parts.is_empty() {
        return Err(format!("{raw:?}: empty after the data.path_map rewrite"));
    }
    let mut p = if has_drive(s) {
        PathBuf::new()
    } else if absolute || s.starts_with('/') {
        PathBuf::from("/")
    } else {
        root.to_path_buf()
    };
    for part in &parts {
        p.push(part);
    }
    if absolute && !allow_outside_root && p.exists() {
        let root_abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        if !p.starts_with(&root_abs) {
            return Err(format!(
                "{raw:?} lies outside the data root {}: set data.allow_outside_root = true to read it, or \
                 rewrite its prefix with data.path_map",
                root_abs.display()
            ));
        }
    }
    Ok((p, parts))
}

/// The `path_map` entry that would make missing frames resolve: the shortest leading part of
/// their paths whose removal makes the first of them exist under `root`, checked against a few
/// more. Returns the prefix as written in the frame path (relative to `root` when the path was
/// resolved under it).
pub fn suggest_path_map(root: &Path, missing: &[&Path]) -> Option<String> {
    let first = missing.first()?;
    let rel = first.strip_prefix(root).unwrap_or(first);
    let comps: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let absolute = rel.is_absolute();
    for k in 1..comps.len().saturating_sub(1) {
        let prefix: Vec<&str> = comps[..k].iter().map(String::as_str).collect();
        let rest: PathBuf = comps[k..].iter().collect();
        if !root.join(&rest).is_file() {
            continue;
        }
        // The same prefix must help the others too (a handful is enough evidence).
        let helps = missing.iter().skip(1).take(8).all(|m| {
            let r = m.strip_prefix(root).unwrap_or(m);
            let c: Vec<String> = r
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            c.len() > k && c[..k].iter().map(String::as_str).eq(prefix.iter().copied()) && root.join(c[k..].iter().collect::<PathBuf>()).is_file()
        });
        if helps {
            let joined = prefix.join("/");
            return Some(if absolute { format!("/{joined}") } else { joined });
        }
    }
    None
}

/// The TOML lines that add a `path_map` entry removing `prefix`.
pub fn path_map_hint(prefix: &str) -> String {
    format!("add to the protocol's [data] table: path_map = {{ '{prefix}' = '' }}")
}

/// Natural order key: a frame stem made of digits sorts by its number, otherwise by name.
fn natural_key(name: &str) -> (u64, String) {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    match stem.parse::<u64>() {
        Ok(n) => (n, String::new()),
        Err(_) => (u64::MAX, name.to_string()),
    }
}

/// Sorts naturally and keeps `floor(linspace(0, n - 1, k))` when `n > k`.
fn spread_sorted<T>(mut items: Vec<T>, k: Option<usize>, name: impl Fn(&T) -> &str) -> Vec<T> {
    items.sort_by_cached_key(|t| natural_key(name(t)));
    match k {
        Some(k) if items.len() > k => {
            let keep = linspace_indices(items.len(), k);
            let mut out = Vec::with_capacity(k);
            let mut next = keep.iter().peekable();
            for (i, it) in items.into_iter().enumerate() {
                if next.peek() == Some(&&i) {
                    out.push(it);
                    next.next();
                }
            }
            out
        }
        _ => items,
    }
}

/// `floor(linspace(0, n - 1, k))` as numpy computes it (distinct and increasing for `k <= n`).
pub fn linspace_indices(n: usize, k: usize) -> Vec<usize> {
    match k {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..k).map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).floor() as usize).collect(),
    }
}

fn is_reserved_dir(name: &str) -> bool {
    matches!(name, "landmarks" | "masks" | "dataset_json") || name.starts_with('.')
}

/// Dataset names a root offers: JSON file stems and dataset folders.
pub fn available_datasets(root: &Path) -> Vec<String> {
    let mut v: BTreeSet<String> = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(root.join("dataset_json")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(stem) = p.file_stem()
            {
                v.insert(stem.to_string_lossy().into_owned());
            }
        }
    }
    if let Ok(dirs) = sorted_dirs(root) {
        v.extend(dirs.iter().map(|d| file_name(d)).filter(|n| !is_reserved_dir(n)));
    }
    v.into_iter().collect()
}

pub(crate) fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        // np.linspace(0, 99, 32).astype(int)[:6] = [0, 3, 6, 9, 12, 15]; last = 99.
        let v = linspace_indices(100, 32);
        assert_eq!(&v[..6], &[0, 3, 6, 9, 12, 15]);
        assert_eq!(*v.last().unwrap(), 99);
        assert_eq!(linspace_indices(5, 3), vec![0, 2, 4]);
        assert_eq!(linspace_indices(10, 4), vec![0, 3, 6, 9]);
    }

    #[test]
    fn side_paths() {
        let p = Path::new("/d/FF/manip/DF/c23/frames/000_003/014.png");
        assert_eq!(landmark_path_for(p).unwrap(), Path::new("/d/FF/manip/DF/c23/landmarks/000_003/014.npy"));
        assert_eq!(mask_path_for(p).unwrap(), Path::new("/d/FF/manip/DF/c23/masks/000_003/014.png"));
        assert!(landmark_path_for(Path::new("/d/x/001/000.png")).is_none());
    }

    #[test]
    fn resolve_refuses_escape() {
        let e = resolve(Path::new("/r"), "a\\..\\..\\etc\\frames\\v\\0.png", &[], false).unwrap_err();
        assert!(e.contains("escapes"), "{e}");
        let (p, parts) = resolve(Path::new("/r"), "A\\frames/v\\000.png", &[], false).unwrap();
        assert_eq!(p, Path::new("/r/A/frames/v/000.png"));
        assert_eq!(parts.len(), 4);
        assert_eq!(
            resolve(Path::new("/r"), "/abs/frames/v/0.png", &[], false).unwrap().0,
            Path::new("/abs/frames/v/0.png")
        );
    }

    #[test]
    fn absolute_paths_outside_the_root_are_read_only_when_allowed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("A/frames/v")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere/v")).unwrap();
        let inside = root.join("A/frames/v/0.png");
        let outside = d.path().join("elsewhere/v/0.png");
        std::fs::write(&inside, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();

        assert_eq!(resolve(&root, &s(&inside), &[], false).unwrap().0, inside);
        let e = resolve(&root, &s(&outside), &[], false).unwrap_err();
        assert!(e.contains("outside the data root") && e.contains("allow_outside_root"), "{e}");
        assert_eq!(resolve(&root, &s(&outside), &[], true).unwrap().0, outside);
        // Absent, it cannot be read anyway: a missing frame, reported with the path_map hint.
        let absent = d.path().join("gone/v/0.png");
        assert_eq!(resolve(&root, &s(&absent), &[], false).unwrap().0, absent);
        // A path the user mapped on purpose is theirs.
        let map = vec![("/mapped".to_string(), s(&d.path().join("elsewhere")))];
        assert_eq!(resolve(&root, "/mapped/v/0.png", &map, false).unwrap().0, outside);
    }

    #[test]
    fn path_map_rewrites_whole_components_with_either_separator() {
        let map = vec![
            ("/deepfakebench/datasets/rgb".to_string(), String::new()),
            ("T:\\data".to_string(), String::new()),
            ("old".to_string(), "/mnt/new".to_string()),
        ];
        assert_eq!(
            map_path("/deepfakebench/datasets/rgb\\UADFV\\frames\\0001\\000.png", &map).as_deref(),
            Some("UADFV/frames/0001/000.png")
        );
        assert_eq!(map_path("T:\\data\\DFDC\\v\\1.png", &map).as_deref(), Some("DFDC/v/1.png"));
        assert_eq!(map_path("T:/data/DFDC/v/1.png", &map).as_deref(), Some("DFDC/v/1.png"));
        // `T:\\database` does not start with the component `T:\\data`.
        assert_eq!(map_path("T:\\database\\v\\1.png", &map), None);
        assert_eq!(map_path("old/x/v/1.png", &map).as_deref(), Some("/mnt/new/x/v/1.png"));
        let (p, _) = resolve(Path::new("/r"), "T:\\data\\DFDC\\v\\1.png", &map, false).unwrap();
        assert_eq!(p, Path::new("/r/DFDC/v/1.png"));
        let (p, _) = resolve(Path::new("/r"), "/deepfakebench/datasets/rgb\\U\\v\\1.png", &map, false).unwrap();
        assert_eq!(p, Path::new("/r/U/v/1.png"));
        assert_eq!(resolve(Path::new("/r"), "old/x/v/1.png", &map, false).unwrap().0, Path::new("/mnt/new/x/v/1.png"));
        // An unmapped drive path stays as written, never under the root.
        let (p, _) = resolve(Path::new("/r"), "T:\\other\\v\\1.png", &[], false).unwrap();
        assert_eq!(p, Path::new("T:/other/v/1.png"));
    }

    #[test]
    fn path_map_suggestion_finds_the_prefix_to_strip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["UADFV/frames/0001/000.png", "UADFV/frames/0001/001.png"] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let a = PathBuf::from("/deepfakebench/datasets/rgb/UADFV/frames/0001/000.png");
        let b = PathBuf::from("/deepfakebench/datasets/rgb/UADFV/frames/0001/001.png");
        assert_eq!(suggest_path_map(root, &[&a, &b]).as_deref(), Some("/deepfakebench/datasets/rgb"));
        let w = PathBuf::from("T:/data/UADFV/frames/0001/000.png");
        assert_eq!(suggest_path_map(root, &[&w]).as_deref(), Some("T:/data"));
        let nowhere = PathBuf::from("/x/y/z/0.png");
        assert_eq!(suggest_path_map(root, &[&nowhere]), None);
    }

    #[test]
    fn labels() {
        assert!(is_real_label("FF-real") && is_real_label("DFDC_Real") && is_real_label("real"));
        assert!(!is_real_label("FF-DF") && !is_real_label("DFDCP_FakeA") && !is_real_label("fake"));
    }
}
