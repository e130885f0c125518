//! The protocol checker: walks the spanned document, records every error with its position and
//! key path, and resolves the typed `Protocol` with all defaults filled in.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use detectors::config::{OptimizerConfig, ScheduleConfig};
use detectors::methods::{self, ParamKind};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::datasets::{self, COMPRESSIONS, SPLITS};
use super::reader::{Ctx, Tbl, Val, hint, join, split_path, to_value};
use super::*;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "seeds",
    "device",
    "data",
    "train",
    "test",
    "model",
    "training",
    "methods",
    "folds",
    "sweep",
    "report",
];
const DATA_KEYS: &[&str] = &[
    "format",
    "preset",
    "synth_seed",
    "root",
    "json_dir",
    "path_map",
    "allow_outside_root",
    "resolution",
    "frames_per_video",
    "normalisation",
    "augmentation",
    "on_missing",
];
const TRAIN_KEYS: &[&str] =
    &["dataset", "manipulations", "split", "compression", "real_fake_ratio", "drop_overlap"];
const TEST_KEYS: &[&str] = &["name", "dataset", "manipulations", "split", "compression", "role"];
/// Longest method name: run ids (`<slug>-s<seed>-<12 hex>`) must stay well inside the 255-byte
/// file-name limit of common filesystems.
const MAX_METHOD_NAME: usize = 64;
const MODEL_KEYS: &[&str] = &["backbone", "weights", "head"];
/// The largest `init_nudge_ulps`: 16 ulps is still a relative change of about 1e-6.
const MAX_NUDGE_ULPS: i64 = 16;

const TRAINING_KEYS: &[&str] =
    &["steps", "epochs", "batch_size", "optimizer", "schedule", "validation", "selection", "precision", "tf32", "init_nudge_ulps"];

pub(super) fn check(text: &str, path: &Path) -> Result<Protocol, ProtocolErrors> {
    let mut cx = Ctx::new(text, path);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A broken document would only produce follow-on noise: report the syntax errors alone.
        // The parser's recovery cascades (one missing `]` yields errors on every following line
        // of the array), so an error on the line right after a reported one is dropped.
        let mut last_line = 0;
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let (line, _) = cx.position(span.start);
            if last_line != 0 && line <= last_line + 1 {
                continue;
            }
            last_line = line;
            let mut msg = e.message().trim().to_string();
            if msg == "duplicate key"
                && let Some(key) = text.get(span.clone())
            {
                msg = format!("duplicate key `{key}`: it is already defined above");
            }
            cx.err(span, "", format!("TOML syntax error: {msg}"));
        }
        return Err(cx.finish());
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = Tbl { path: String::new(), span: 0..0, t: doc.get_ref() };
    let mut ck = Checker { cx, dir };
    let p = ck.protocol(&root);
    match p {
        Some(p) if !ck.cx.has_errors() => Ok(p),
        _ => {
            if !ck.cx.has_errors() {
                // Every rejection path records its reason; this only guards against a checker bug.
                ck.cx.err(
                    0..0,
                    "",
                    "internal error: the protocol was rejected without a reason; please report it",
                );
            }
            Err(ck.cx.finish())
        }
    }
}

struct Checker<'s> {
    cx: Ctx<'s>,
    dir: PathBuf,
}

/// Opens an optional sub-table.
fn sub<'a, 'i>(cx: &mut Ctx<'_>, t: &Tbl<'a, 'i>, key: &str) -> Option<Tbl<'a, 'i>> {
    t.get(key).and_then(|v| cx.table(&t.child(key), v))
}

impl Checker<'_> {
    fn protocol(&mut self, root: &Tbl<'_, '_>) -> Option<Protocol> {
        let cx = &mut self.cx;
        cx.check_keys(root, TOP_KEYS);

        let name = cx.require(root, "name", "a string naming the results folder").and_then(|v| {
            let s = cx.string("name", v)?;
            let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                cx.err(v.span(), "name", format!("`{s}` is not a valid folder name: use letters, digits, `_`, `-` and `.`, starting with a letter or digit"));
                return None;
            }
            Some(s)
        });
        let description =
            root.get("description").and_then(|v| cx.string("description", v)).unwrap_or_default();
        let seeds = self.seeds(root);
        let device = self.device(root);

        let data = match self.cx.require(root, "data", "a [data] table") {
            Some(v) => self.cx.table("data", v).and_then(|t| self.data(&t)),
            None => None,
        };
        let train = match self.cx.require(root, "train", "a [train] table") {
            Some(v) => self.cx.table("train", v).and_then(|t| self.train(&t, data.as_ref())),
            None => None,
        };
        let tests = self.tests(root, data.as_ref(), train.as_ref());
        let model = match self.cx.require(root, "model", "a [model] table") {
            Some(v) => self.cx.table("model", v).and_then(|t| self.model(&t)),
            None => None,
        };
        let training = match sub(&mut self.cx, root, "training") {
            Some(t) => {
                self.cx.check_keys(&t, TRAINING_KEYS);
                self.training_fields(&t, default_training())
            }
            None if root.get("training").is_some() => None,
            None => Some(default_training()),
        };
        // Methods are read even when `[training]` is broken (against the defaults) so that their
        // own errors, and those of the sweep and report naming them, are reported too.
        let read = self.cx.require(root, "methods", "a [methods.<name>] table per method").map(|v| {
            let base = training.clone().unwrap_or_else(default_training);
            self.methods(v, &base)
        });
        let folds =
            sub(&mut self.cx, root, "folds").and_then(|t| self.folds(&t, train.as_ref(), tests.as_deref()));
        let folds_ok = root.get("folds").is_none() || folds.is_some();
        let sweep = match (root.get("sweep"), &read) {
            (None, _) => Some(Vec::new()),
            (Some(v), Some(r)) => {
                self.cx.table("sweep", v).and_then(|t| self.sweep(&t, &r.methods, &r.failed))
            }
            (Some(_), None) => None,
        };
        let report = match sub(&mut self.cx, root, "report") {
            Some(t) => self.report(&t, read.as_ref()),
            None if root.get("report").is_some() => None,
            None => Some(ReportConfig::default()),
        };
        if let (Some(r), Some(tr), Some(md)) = (&read, &train, &model) {
            self.method_data_checks(root, &r.methods, tr, md, folds.as_ref());
            if let Some(axes) = &sweep {
                self.sweep_point_checks(root, axes, &r.methods, md);
            }
        }
        let methods = read.filter(|r| r.failed.is_empty() && training.is_some()).map(|r| r.methods);
        if !folds_ok {
            return None;
        }
        Some(Protocol {
            name: name?,
            description,
            source: absolute(self.cx.file.clone()),
            seeds: seeds?,
            device: device?,
            data: data?,
            train: train?,
            tests: tests?,
            model: model?,
            training: training?,
            methods: methods?,
            folds,
            sweep: sweep?,
            report: report?,
        })
    }

    fn seeds(&mut self, root: &Tbl<'_, '_>) -> Option<Vec<u64>> {
        let cx = &mut self.cx;
        let v = cx.require(root, "seeds", "a non-empty array of integers, e.g. [0, 1, 2]")?;
        let items = cx.array("seeds", v)?;
        if items.is_empty() {
            cx.err(v.span(), "seeds", "no seeds: list at least one, e.g. seeds = [0]");
            return None;
        }
        let mut out: Vec<u64> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("seeds[{i}]");
            match cx.int(&p, item, 0, i64::MAX) {
                Some(s) if out.contains(&(s as u64)) => {
                    cx.err(item.span(), &p, format!("seed {s} is listed twice"));
                    ok = false;
                }
                Some(s) => out.push(s as u64),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn device(&mut self, root: &Tbl<'_, '_>) -> Option<String> {
        let Some(v) = root.get("device") else { return Some("cpu".into()) };
        let s = self.cx.string("device", v)?;
        let ok = s == "cpu"
            || s == "cuda"
            || s.strip_prefix("cuda:")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && n.len() < 4);
        if ok {
            Some(s)
        } else {
            self.cx.err(
                v.span(),
                "device",
                format!("unknown device `{s}`{}", hint(&s, ["cpu", "cuda", "cuda:0"])),
            );
            None
        }
    }

    /// A path relative to the protocol file's directory that must exist (`dir`: a directory).
    fn existing_path(&mut self, key: &str, v: &Val<'_>, dir: bool) -> Option<PathBuf> {
        let s = self.cx.string(key, v)?;
        if s.is_empty() {
            self.cx.err(v.span(), key, "empty path");
            return None;
        }
        let p = self.dir.join(&s);
        let kind = if dir { "directory" } else { "file" };
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() == dir => Some(absolute(p)),
            Ok(_) => {
                self.cx.err(v.span(), key, format!("`{}` is not a {kind}", p.display()));
                None
            }
            Err(e) => {
                self.cx.err(
                    v.span(),
                    key,
                    format!("{kind} `{}` does not exist ({e}; relative paths resolve against the protocol file's directory)", p.display()),
                );
                None
            }
        }
    }

    fn data(&mut self, t: &Tbl<'_, '_>) -> Option<DataConfig> {
        self.cx.check_keys(t, DATA_KEYS);
        let cx = &mut self.cx;
        let format =
            cx.require(t, "format", "\"synthetic\", \"deepfakebench\" or \"folders\"").and_then(|v| {
                cx.choice("data.format", v, "data format", DataFormat::NAMES).map(|s| match s.as_str() {
                    "synthetic" => DataFormat::Synthetic,
                    "deepfakebench" => DataFormat::Deepfakebench,
                    _ => DataFormat::Folders,
                })
            });
        let mut ok = true;
        let (mut preset, mut synth_seed, mut root, mut json_dir) = (None, None, None, None);
        let not_for = |cx: &mut Ctx<'_>, key: &str, fmt: &str| {
            if let Some(span) = t.key_span(key) {
                cx.err(span, &t.child(key), format!("`{key}` is not used with format = \"{fmt}\""));
                true
            } else {
                false
            }
        };
        match format {
            Some(DataFormat::Synthetic) => {
                preset = Some(match t.get("preset") {
                    Some(v) => {
                        cx.choice("data.preset", v, "synthetic preset", SYNTH_PRESETS).unwrap_or_else(|| {
                            ok = false;
                            String::new()
                        })
                    }
                    None => "small".into(),
                });
                synth_seed = Some(match t.get("synth_seed") {
                    Some(v) => cx.int("data.synth_seed", v, 0, i64::MAX).map_or_else(
                        || {
                            ok = false;
                            0
                        },
                        |x| x as u64,
                    ),
                    None => 0,
                });
                for k in ["root", "json_dir", "path_map", "allow_outside_root"] {
                    ok &= !not_for(cx, k, "synthetic");
                }
            }
            Some(fmt @ (DataFormat::Deepfakebench | DataFormat::Folders)) => {
                let name = if fmt == DataFormat::Folders { "folders" } else { "deepfakebench" };
                for k in ["preset", "synth_seed"] {
                    ok &= !not_for(cx, k, name);
                }
                if fmt == DataFormat::Folders {
                    ok &= !not_for(cx, "json_dir", name);
                    ok &= !not_for(cx, "path_map", name);
                    ok &= !not_for(cx, "allow_outside_root", name);
                }
                let rv = cx.require(t, "root", "the frames root directory");
                root = rv.and_then(|v| self.existing_path("data.root", v, true));
                ok &= root.is_some();
                if fmt == DataFormat::Deepfakebench {
                    json_dir = match t.get("json_dir") {
                        Some(v) => self.existing_path("data.json_dir", v, true),
                        None => root.clone(),
                    };
                    ok &= json_dir.is_some();
                }
            }
            None => ok = false,
        }
        let cx = &mut self.cx;
        let resolution = t
            .get("resolution")
            .map_or(Some(256), |v| cx.int("data.resolution", v, 16, 2048).map(|x| x as u32));
        let frames_per_video = match t.get("frames_per_video") {
            None => Some(PerSplit { train: 8, test: 8 }),
            Some(v) => {
                per_split(cx, "data.frames_per_video", v, |cx, p, v| cx.int(p, v, 1, 4096).map(|x| x as u32))
            }
        };
        let normalisation = match t.get("normalisation") {
            None => Some(Normalisation { mean: [0.5; 3], std: [0.5; 3] }),
            Some(v) => normalisation(cx, v),
        };
        let augmentation = match t.get("augmentation") {
            None => Some(Augmentation { hflip: 0.5 }),
            Some(v) => cx.table("data.augmentation", v).and_then(|a| {
                cx.check_keys(&a, &["hflip"]);
                match a.get("hflip") {
                    None => Some(Augmentation { hflip: 0.5 }),
                    Some(h) => cx
                        .float("data.augmentation.hflip", h, 0.0, 1.0, false)
                        .map(|hflip| Augmentation { hflip }),
                }
            }),
        };
        let path_map = match t.get("path_map") {
            None => Some(Vec::new()),
            Some(v) => cx.table("data.path_map", v).and_then(|m| {
                let mut map = Vec::new();
                let mut good = true;
                for (k, val) in m.t.iter() {
                    let from = k.get_ref().to_string();
                    let p = m.child(&from);
                    if from.trim_matches(['/', '\\']).is_empty() {
                        cx.err(k.span(), &p, "empty prefix: write the leading part of the JSON's frame paths to replace, e.g. '/deepfakebench/datasets/rgb' = ''");
                        good = false;
                        continue;
                    }
                    match cx.string(&p, val) {
                        Some(to) => map.push((from, to)),
                        None => good = false,
                    }
                }
                // Longest prefix first, so that a more specific rewrite wins whatever the file order.
                map.sort_by(|a: &(String, String), b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
                good.then_some(map)
            }),
        };
        let allow_outside_root = match t.get("allow_outside_root") {
            None => Some(false),
            Some(v) => cx.boolean("data.allow_outside_root", v),
        };
        let on_missing = match t.get("on_missing") {
            None => Some(PerSplit { train: OnMissing::Skip, test: OnMissing::Fail }),
            Some(v) => per_split(cx, "data.on_missing", v, |cx, p, v| {
                cx.choice(p, v, "policy", &["skip", "fail"])
                    .map(|s| if s == "skip" { OnMissing::Skip } else { OnMissing::Fail })
            }),
        };
        if !ok {
            return None;
        }
        Some(DataConfig {
            format: format?,
            preset,
            synth_seed,
            root,
            json_dir,
            path_map: path_map?,
            allow_outside_root: allow_outside_root?,
            resolution: resolution?,
            frames_per_video: frames_per_video?,
            normalisation: normalisation?,
            augmentation: augmentation?,
            on_missing: on_missing?,
        })
    }

    /// Checks a dataset name against the registry (and, for DeepfakeBench data, its JSON file).
    fn dataset(&mut self, path: &str, v: &Val<'_>, data: Option<&DataConfig>) -> Option<String> {
        let s = self.cx.string(path, v)?;
        let known = datasets::find(&s).is_some();
        let names = || datasets::registry().iter().map(|d| d.name);
        match data.map(|d| (d.format, d.json_dir.as_ref())) {
            Some((DataFormat::Deepfakebench, Some(dir))) => {
                let json = dir.join(format!("{s}.json"));
                if !json.is_file() {
                    self.cx.err(
                        v.span(),
                        path,
                        format!(
                            "no DeepfakeBench index `{}` for dataset `{s}`{}",
                            json.display(),
                            if known { String::new() } else { hint(&s, names()) }
                        ),
                    );
                    return None;
                }
            }
            Some((DataFormat::Folders, _)) => {}
            _ if !known => {
                self.cx.err(v.span(), path, format!("unknown dataset `{s}`{}", hint(&s, names())));
                return None;
            }
            _ => {}
        }
        Some(s)
    }

    /// `manipulations`, `split` and `compression` shared by the train and test tables.
    fn labels(
        &mut self,
        t: &Tbl<'_, '_>,
        dataset: Option<&str>,
        default_split: &str,
    ) -> (Option<Vec<String>>, Option<String>, Option<Option<String>>) {
        let info = dataset.and_then(datasets::find);
        let cx = &mut self.cx;
        let manip_path = t.child("manipulations");
        let manipulations = match t.get("manipulations") {
            Some(v) => cx.string_list(&manip_path, v).and_then(|list| {
                let mut ok = true;
                if let Some(info) = info {
                    for (i, (m, span)) in list.iter().enumerate() {
                        let p = format!("{manip_path}[{i}]");
                        if m == info.real {
                            cx.err(span.clone(), &p, format!("`{m}` is the real label of {}; list only the fakes (real frames are always used)", info.name));
                            ok = false;
                        } else if !info.fakes.contains(&m.as_str()) {
                            cx.err(span.clone(), &p, format!("`{m}` is not a fake label of {}{}", info.name, hint(m, info.fakes.iter().copied())));
                            ok = false;
                        }
                    }
                }
                ok.then(|| list.into_iter().map(|(m, _)| m).collect())
            }),
            None => match (info, dataset) {
                (Some(info), _) => Some(info.default_fakes.iter().map(|s| s.to_string()).collect()),
                (None, Some(d)) => {
                    cx.err(t.span.clone(), &manip_path, format!("dataset `{d}` is not in the built-in list, so its fake labels must be listed in `manipulations`"));
                    None
                }
                (None, None) => None,
            },
        };
        let split = match t.get("split") {
            Some(v) => cx.choice(&t.child("split"), v, "split", SPLITS),
            None => Some(default_split.to_string()),
        };
        let compression = match t.get("compression") {
            Some(v) => match info {
                Some(i) if !i.compressed => {
                    cx.err(
                        v.span(),
                        &t.child("compression"),
                        format!("{} has no compression levels (only FF++-family datasets do)", i.name),
                    );
                    None
                }
                _ => cx.choice(&t.child("compression"), v, "compression", COMPRESSIONS).map(Some),
            },
            None => Some(info.filter(|i| i.compressed).map(|_| "c23".to_string())),
        };
        (manipulations, split, compression)
    }

    fn train(&mut self, t: &Tbl<'_, '_>, data: Option<&DataConfig>) -> Option<TrainSet> {
        self.cx.check_keys(t, TRAIN_KEYS);
        let dataset = self
            .cx
            .require(t, "dataset", "a dataset name, e.g. \"FaceForensics++\"")
            .and_then(|v| self.dataset("train.dataset", v, data));
        let (manipulations, split, compression) = self.labels(t, dataset.as_deref(), "train");
        let real_fake_ratio = match t.get("real_fake_ratio") {
            Some(v) => self.cx.float("train.real_fake_ratio", v, 0.0, 1000.0, true).map(Some),
            None => Some(None),
        };
        let drop_overlap = match t.get("drop_overlap") {
            Some(v) => self.cx.boolean("train.drop_overlap", v),
            None => Some(false),
        };
        Some(TrainSet {
            dataset: dataset?,
            manipulations: manipulations?,
            split: split?,
            compression: compression?,
            real_fake_ratio: real_fake_ratio?,
            drop_overlap: drop_overlap?,
        })
    }

    fn tests(
        &mut self,
        root: &Tbl<'_, '_>,
        data: Option<&DataConfig>,
        train: Option<&TrainSet>,
    ) -> Option<Vec<TestSet>> {
        let v = self.cx.require(root, "test", "one [[test]] table per test set")?;
        let items: Vec<&Val<'_>> = match v.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            DeValue::Table(_) => vec![v],
            other => {
                let found = super::reader::type_name(other);
                self.cx.err(v.span(), "test", format!("expected [[test]] tables, found {found}"));
                return None;
            }
        };
        if items.is_empty() {
            self.cx.err(v.span(), "test", "no test set: add at least one [[test]] table");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut names: Vec<String> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("test[{i}]");
            let Some(t) = self.cx.table(&path, item) else {
                ok = false;
                continue;
            };
            self.cx.check_keys(&t, TEST_KEYS);
            let dataset = self
                .cx
                .require(&t, "dataset", "a dataset name")
                .and_then(|v| self.dataset(&t.child("dataset"), v, data));
            let name = match t.get("name") {
                Some(v) => self.cx.string(&t.child("name"), v).filter(|s| {
                    let empty = s.trim().is_empty();
                    if empty {
                        self.cx.err(v.span(), &t.child("name"), "empty test set name");
                    }
                    !empty
                }),
                None => dataset.clone(),
            };
            if let Some(n) = &name {
                if names.contains(n) {
                    let span = t.get("name").map_or(t.span.clone(), |v| v.span());
                    self.cx.err(span, &t.child("name"), format!("duplicate test set name `{n}`: each [[test]] needs its own name (it labels a table column)"));
                    ok = false;
                }
                names.push(n.clone());
            }
            let (manipulations, split, compression) = self.labels(&t, dataset.as_deref(), "test");
            let role = match t.get("role") {
                Some(v) => self
                    .cx
                    .choice(&t.child("role"), v, "role", &["in-domain", "unseen"])
                    .map(|s| if s == "unseen" { TestRole::Unseen } else { TestRole::InDomain }),
                None => Some(match (train, &dataset) {
                    (Some(tr), Some(d)) if tr.dataset == *d => TestRole::InDomain,
                    _ => TestRole::Unseen,
                }),
            };
            let (Some(name), Some(dataset), Some(manipulations), Some(split), Some(compression), Some(role)) =
                (name, dataset, manipulations, split, compression, role)
            else {
                ok = false;
                continue;
            };
            let ts = TestSet { name, dataset, manipulations, split, compression, role };
            if let Some(tr) = train
                && ts.role == TestRole::Unseen
                && same_data(tr, &ts)
            {
                let span = t.get("role").map_or(t.span.clone(), |v| v.span());
                self.cx.err(
                    span,
                    &t.child("role"),
                    format!("test set `{}` is marked unseen but is the training set itself (same dataset, split, compression and labels)", ts.name),
                );
                ok = false;
            }
            out.push(ts);
        }
        ok.then_some(out)
    }

    fn model(&mut self, t: &Tbl<'_, '_>) -> Option<ModelConfig> {
        self.cx.check_keys(t, MODEL_KEYS);
        let cx = &mut self.cx;
        let backbone = cx.require(t, "backbone", "a backbone name (see `bench list`)").and_then(|v| {
            let names: Vec<&str> = detectors::backbones::registry().iter().map(|b| b.name).collect();
            cx.choice("model.backbone", v, "backbone", &names)
        });
        let weights = match t.get("weights") {
            Some(v) => self.existing_path("model.weights", v, false).map(Some),
            None => Some(None),
        };
        let cx = &mut self.cx;
        let head = match t.get("head") {
            None => Some(HeadConfig { layers: 2 }),
            Some(v) => cx.table("model.head", v).and_then(|h| {
                cx.check_keys(&h, &["layers"]);
                match h.get("layers") {
                    None => Some(HeadConfig { layers: 2 }),
                    Some(l) => cx.int("model.head.layers", l, 0, 16).map(|x| HeadConfig { layers: x as u32 }),
                }
            }),
        };
        Some(ModelConfig { backbone: backbone?, weights: weights?, head: head? })
    }

    /// Reads the training keys present in `t` on top of `base` (the defaults for `[training]`,
    /// the protocol's `[training]` for a method block).
    fn training_fields(&mut self, t: &Tbl<'_, '_>, base: TrainingConfig) -> Option<TrainingConfig> {
        let cx = &mut self.cx;
        let mut out = base;
        let mut ok = true;
        match (t.get("steps"), t.get("epochs")) {
            (Some(_), Some(e)) => {
                cx.err(e.span(), &t.child("epochs"), "give either `steps` or `epochs`, not both");
                ok = false;
            }
            (Some(s), None) => match cx.int(&t.child("steps"), s, 1, i64::MAX) {
                Some(n) => out.length = TrainLength::Steps(n as u64),
                None => ok = false,
            },
            (None, Some(e)) => match cx.int(&t.child("epochs"), e, 1, 100_000) {
                Some(n) => out.length = TrainLength::Epochs(n as u64),
                None => ok = false,
            },
            (None, None) => {}
        }
        if let Some(v) = t.get("batch_size") {
            match cx.int(&t.child("batch_size"), v, 1, 1 << 16) {
                Some(n) => out.batch_size = n as u32,
                None => ok = false,
            }
        }
        if let Some(v) = t.get("optimizer") {
            match self.optimizer(&t.child("optimizer"), v) {
                Some(o) => out.optimizer = o,
                None => ok = false,
            }
        }
        if let Some(v) = t.get("schedule") {
            match self.schedule(&t.child("schedule"), v) {
                Some(s) => out.schedule = s,
                None => ok = false,
            }
        }
        let cx = &mut self.cx;
        if let Some(v) = t.get("validation") {
            let path = t.child("validation");
            match cx.table(&path, v) {
                Some(vt) => {
                    cx.check_keys(&vt, &["split", "every", "metric"]);
                    if let Some(s) = vt.get("split") {
                        match cx.string(&vt.child("split"), s) {
                            Some(name) if name == "test" => {
                                cx.err(
                                    s.span(),
                                    &vt.child("split"),
                                    "selecting checkpoints on the test split leaks test data into the result; use \"val\" (or \"train\")",
                                );
                                ok = false;
                            }
                            Some(_) => {
                                match cx.choice(&vt.child("split"), s, "validation split", &["val", "train"])
                                {
                                    Some(s) => out.validation.split = s,
                                    None => ok = false,
                                }
                            }
                            None => ok = false,
                        }
                    }
                    if let Some(e) = vt.get("every") {
                        match cx.int(&vt.child("every"), e, 1, i64::MAX) {
                            Some(n) => out.validation.every = n as u64,
                            None => ok = false,
                        }
                    }
                    if let Some(m) = vt.get("metric") {
                        match cx.choice(&vt.child("metric"), m, "validation metric", &["auc", "loss"]) {
                            Some(m) => {
                                out.validation.metric =
                                    if m == "auc" { ValMetric::Auc } else { ValMetric::Loss }
                            }
                            None => ok = false,
                        }
                    }
                }
                None => ok = false,
            }
        }
        if let Some(v) = t.get("selection") {
            match cx.choice(&t.child("selection"), v, "selection", &["best-val", "last"]) {
                Some(s) => out.selection = if s == "last" { Selection::Last } else { Selection::BestVal },
                None => ok = false,
            }
        }
        if let Some(v) = t.get("precision") {
            match cx.choice(&t.child("precision"), v, "precision", Precision::NAMES) {
                Some(s) => out.precision = if s == "bf16" { Precision::Bf16 } else { Precision::F32 },
                None => ok = false,
            }
        }
        if let Some(v) = t.get("tf32") {
            match cx.boolean(&t.child("tf32"), v) {
                Some(b) => out.tf32 = b,
                None => ok = false,
            }
        }
        if let Some(v) = t.get("init_nudge_ulps") {
            // A few ulps are plenty to start a twin; more would stop being "rounding level".
            match cx.int(&t.child("init_nudge_ulps"), v, 0, MAX_NUDGE_ULPS) {
                Some(n) => out.init_nudge_ulps = n as u32,
                None => ok = false,
            }
        }
        // Checked on the merged result: a method block may shorten `steps` under the shared
        // schedule, or bring its own schedule under the shared `steps`.
        if ok
            && (t.get("steps").is_some() || t.get("schedule").is_some())
            && let TrainLength::Steps(n) = out.length
        {
            let warmup = match &out.schedule {
                ScheduleConfig::Constant { warmup_steps }
                | ScheduleConfig::Step { warmup_steps, .. }
                | ScheduleConfig::Cosine { warmup_steps, .. } => *warmup_steps as u64,
            };
            if warmup >= n {
                let in_schedule = t
                    .get("schedule")
                    .and_then(|v| v.get_ref().as_table())
                    .and_then(|s| s.get("warmup_steps"));
                let (key, span) = match (in_schedule, t.get("steps")) {
                    (Some(w), _) => (join(&t.child("schedule"), "warmup_steps"), w.span()),
                    (None, Some(st)) => (t.child("steps"), st.span()),
                    (None, None) => (t.child("schedule"), t.span.clone()),
                };
                self.cx.err(
                    span,
                    &key,
                    format!("{warmup} warm-up steps leave no training: expected fewer than the {n} steps"),
                );
                ok = false;
            }
        }
        if ok
            && (t.get("optimizer").is_some() || t.get("schedule").is_some())
            && let ScheduleConfig::Cosine { min_lr, .. } = out.schedule
            && min_lr >= out.optimizer.lr()
        {
            let lr = out.optimizer.lr();
            let in_schedule =
                t.get("schedule").and_then(|v| v.get_ref().as_table()).and_then(|s| s.get("min_lr"));
            let in_optimizer =
                t.get("optimizer").and_then(|v| v.get_ref().as_table()).and_then(|s| s.get("lr"));
            let (key, span) = match (in_schedule, in_optimizer) {
                (Some(m), _) => (join(&t.child("schedule"), "min_lr"), m.span()),
                (None, Some(l)) => (join(&t.child("optimizer"), "lr"), l.span()),
                (None, None) => (t.child("schedule"), t.span.clone()),
            };
            self.cx.err(
                span,
                &key,
                format!("the cosine schedule's min_lr = {min_lr} must be below the learning rate {lr}"),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    /// Deserialises a serde-typed sub-table, turning serde's messages into positioned errors.
    fn serde_table<T: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        v: &Val<'_>,
        what: &str,
    ) -> Option<T> {
        let t = self.cx.table(path, v)?;
        let Some(value) = to_value(v.get_ref()) else {
            self.cx.err(v.span(), path, "contains a number that does not fit in 64 bits");
            return None;
        };
        if t.get("name").is_none() {
            self.cx.err(
                t.span.clone(),
                &join(path, "name"),
                format!("missing required key `name` (the {what})"),
            );
            return None;
        }
        match T::deserialize(value) {
            Ok(x) => Some(x),
            Err(e) => {
                let msg = e.message().to_string();
                let quoted = backticked(&msg);
                if let Some(field) = msg.strip_prefix("unknown field ").and_then(|_| quoted.first()) {
                    let span = t.key_span(field).unwrap_or(t.span.clone());
                    let name = t.get("name").and_then(|n| n.get_ref().as_str()).unwrap_or("?").to_string();
                    let h = hint(field, quoted[1..].iter().map(String::as_str));
                    self.cx.err(
                        span,
                        &join(path, field),
                        format!("unknown key `{field}` for {what} `{name}`{h}"),
                    );
                } else if msg.starts_with("unknown variant ") && !quoted.is_empty() {
                    let span = t.get("name").map_or(t.span.clone(), |n| n.span());
                    let h = hint(&quoted[0], quoted[1..].iter().map(String::as_str));
                    self.cx.err(span, &join(path, "name"), format!("unknown {what} `{}`{h}", quoted[0]));
                } else if let Some(field) = msg.strip_prefix("missing field ").and_then(|_| quoted.first()) {
                    self.cx.err(
                        t.span.clone(),
                        &join(path, field),
                        format!("missing required key `{field}`"),
                    );
                } else {
                    self.cx.err(t.span.clone(), path, format!("invalid {what}: {msg}"));
                }
                None
            }
        }
    }

    fn optimizer(&mut self, path: &str, v: &Val<'_>) -> Option<OptimizerConfig> {
        let o: OptimizerConfig = self.serde_table(path, v, "optimizer")?;
        let t = match v.get_ref() {
            DeValue::Table(t) => t,
            _ => return None,
        };
        let mut ok = true;
        let mut bad = |cx: &mut Ctx<'_>, key: &str, value: f64, good: bool, expected: &str| {
            if !good {
                let span = t.get(key).map_or(v.span(), |x| x.span());
                cx.err(span, &join(path, key), format!("{value} is out of range: expected {expected}"));
                ok = false;
            }
        };
        let lr = o.lr();
        bad(&mut self.cx, "lr", lr, lr.is_finite() && lr > 0.0 && lr <= 10.0, "a learning rate in (0, 10]");
        match &o {
            OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                bad(&mut self.cx, "momentum", *momentum, (0.0..1.0).contains(momentum), "a number in [0, 1)");
                bad(
                    &mut self.cx,
                    "weight_decay",
                    *weight_decay,
                    (0.0..=1.0).contains(weight_decay),
                    "a number in [0, 1]",
                );
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. }
            | OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                bad(&mut self.cx, "beta1", *beta1, (0.0..1.0).contains(beta1), "a number in [0, 1)");
                bad(&mut self.cx, "beta2", *beta2, (0.0..1.0).contains(beta2), "a number in [0, 1)");
                bad(&mut self.cx, "eps", *eps, *eps > 0.0 && *eps <= 1.0, "a number in (0, 1]");
                bad(
                    &mut self.cx,
                    "weight_decay",
                    *weight_decay,
                    (0.0..=1.0).contains(weight_decay),
                    "a number in [0, 1]",
                );
            }
        }
        ok.then_some(o)
    }

    fn schedule(&mut self, path: &str, v: &Val<'_>) -> Option<ScheduleConfig> {
        let s: ScheduleConfig = self.serde_table(path, v, "schedule")?;
        let t = match v.get_ref() {
            DeValue::Table(t) => t,
            _ => return None,
        };
        let span = |key: &str| t.get(key).map_or(v.span(), |x| x.span());
        let mut ok = true;
        match &s {
            ScheduleConfig::Step { step_size, gamma, .. } => {
                if *step_size == 0 {
                    self.cx.err(
                        span("step_size"),
                        &join(path, "step_size"),
                        "0 is out of range: expected a positive number of steps",
                    );
                    ok = false;
                }
                if !(*gamma > 0.0 && *gamma <= 1.0) {
                    self.cx.err(
                        span("gamma"),
                        &join(path, "gamma"),
                        format!("{gamma} is out of range: expected a factor in (0, 1]"),
                    );
                    ok = false;
                }
            }
            ScheduleConfig::Cosine { min_lr, .. } => {
                if !(*min_lr >= 0.0 && min_lr.is_finite()) {
                    self.cx.err(
                        span("min_lr"),
                        &join(path, "min_lr"),
                        format!("{min_lr} is out of range: expected a number >= 0"),
                    );
                    ok = false;
                }
            }
            ScheduleConfig::Constant { .. } => {}
        }
        ok.then_some(s)
    }

    fn methods(&mut self, v: &Val<'_>, training: &TrainingConfig) -> MethodsRead {
        let mut read = MethodsRead { methods: Vec::new(), failed: Vec::new() };
        let Some(t) = self.cx.table("methods", v) else {
            read.failed.push(String::new());
            return read;
        };
        if t.t.is_empty() {
            self.cx.err(
                t.span.clone(),
                "methods",
                "no methods: add at least one [methods.<name>] table with a `kind`",
            );
            read.failed.push(String::new());
            return read;
        }
        // File order (the document map is sorted by name): tables list methods as written.
        let mut entries: Vec<_> = t.t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let kinds: Vec<&str> = methods::registry().iter().map(|m| m.kind).collect();
        let mut seen: Vec<String> = Vec::new();
        for (k, mv) in entries {
            let name: &str = k.get_ref();
            let path = join("methods", name);
            if name.trim().is_empty() || name.trim() != name || name.chars().any(char::is_control) {
                self.cx.err(
                    k.span(),
                    &path,
                    "a method name must be non-empty, without leading/trailing spaces or control characters",
                );
                read.failed.push(name.to_string());
                continue;
            }
            if name.chars().count() > MAX_METHOD_NAME {
                self.cx.err(
                    k.span(),
                    &path,
                    format!(
                        "a method name of {} characters is too long: at most {MAX_METHOD_NAME} (it names table rows and, \
                         with the seed and a hash, each run's directory)",
                        name.chars().count()
                    ),
                );
                read.failed.push(name.to_string());
                continue;
            }
            if let Some(other) = seen.iter().find(|o| o.to_lowercase() == name.to_lowercase()) {
                self.cx.err(k.span(), &path, format!("method names `{other}` and `{name}` differ only by case; tables could not tell them apart"));
                read.failed.push(name.to_string());
            }
            seen.push(name.to_string());
            let Some(mt) = self.cx.table(&path, mv) else {
                read.failed.push(name.to_string());
                continue;
            };
            let spec = self.cx.require(&mt, "kind", "a method kind (see `bench list`)").and_then(|kv| {
                let kind = self.cx.choice(&mt.child("kind"), kv, "method kind", &kinds)?;
                methods::spec::find(&kind)
            });
            let Some(spec) = spec else {
                // Without a kind its hyperparameters are unknown; check only the training keys.
                let _ = self.training_fields(&mt, training.clone());
                read.failed.push(name.to_string());
                continue;
            };
            let mut allowed: Vec<&str> = vec!["kind"];
            allowed.extend(spec.params.iter().map(|p| p.name));
            allowed.extend(TRAINING_KEYS);
            self.cx.check_keys(&mt, &allowed);
            let mut params = BTreeMap::new();
            let mut ok = true;
            for p in spec.params {
                let value = match mt.get(p.name) {
                    Some(pv) => self.cx.param(&mt.child(p.name), pv, &p.kind),
                    None => Some(default_param(&p.kind)),
                };
                match value {
                    // Left out of the configuration (and the run id) at its default; the method
                    // reads the registry default for a missing name.
                    Some(x) if !p.recorded_at_default && x == default_param(&p.kind) => {}
                    Some(x) => {
                        params.insert(p.name.to_string(), x);
                    }
                    None => ok = false,
                }
            }
            let tr = self.training_fields(&mt, training.clone());
            let (Some(tr), true) = (tr, ok) else {
                read.failed.push(name.to_string());
                continue;
            };
            read.methods.push(ProtocolMethod {
                method: MethodConfig {
                    name: name.to_string(),
                    kind: spec.kind.to_string(),
                    display: display_name(name, spec),
                    note: spec.note.map(str::to_string),
                    params,
                },
                training: tr,
            });
        }
        read
    }

    /// Methods whose streams or domains the training data cannot give.
    fn method_data_checks(
        &mut self,
        root: &Tbl<'_, '_>,
        methods: &[ProtocolMethod],
        train: &TrainSet,
        model: &ModelConfig,
        folds: Option<&FoldsConfig>,
    ) {
        let Some(mtab) = root.get("methods").and_then(|v| v.get_ref().as_table()) else { return };
        let n_fakes = train.manipulations.len().saturating_sub(usize::from(folds.is_some()));
        for pm in methods {
            let m = &pm.method;
            let Some((k, mv)) = mtab.get_key_value(m.name.as_str()) else { continue };
            let path = join("methods", &m.name);
            let mt = mv.get_ref().as_table();
            // Point at the hyperparameter when it is written out, else at the method's kind.
            let at = |key: &str| -> (String, std::ops::Range<usize>) {
                match mt.and_then(|t| t.get(key)) {
                    Some(v) => (join(&path, key), v.span()),
                    None => {
                        (join(&path, "kind"), mt.and_then(|t| t.get("kind")).map_or(k.span(), |v| v.span()))
                    }
                }
            };
            let streams = m.params.get("streams").and_then(ParamValue::as_str);
            let needs_original = match m.kind.as_str() {
                "cs-dfd" | "pcgrad" | "cagrad" | "roga" => true,
                _ => streams != Some("online"),
            };
            if needs_original && train.manipulations.is_empty() {
                let (key, span) = at("streams");
                self.cx.err(
                    span,
                    &key,
                    format!("`{}` trains on the original stream, but train.manipulations is empty (real frames only); list fakes or use streams = \"online\"", m.kind),
                );
            }
            if m.kind == "roga" && !train.manipulations.is_empty() && n_fakes < 2 {
                let extra = if folds.is_some() { " after holding one out for the fold" } else { "" };
                let (key, span) = at("kind");
                self.cx.err(
                    span,
                    &key,
                    format!("roga perturbs each training manipulation (domain) separately and needs at least 2; the training set has {n_fakes}{extra}"),
                );
            }
            if m.kind == "erm"
                && m.params.get("conflict_every").is_some_and(|v| *v != ParamValue::Int(0))
                && streams != Some("both")
            {
                let (key, span) = at("conflict_every");
                self.cx.err(
                    span,
                    &key,
                    "conflict_every traces the two stream gradients of O+S; it needs streams = \"both\"",
                );
            }
            if m.kind == "cs-dfd"
                && m.params.get("cgr") == Some(&ParamValue::Bool(true))
                && model.head.layers == 0
            {
                let (key, span) = at("cgr");
                self.cx.err(span, &key, "CGR updates the projection head, but model.head.layers = 0; set layers >= 1 or cgr = false");
            }
        }
    }

    fn folds(
        &mut self,
        t: &Tbl<'_, '_>,
        train: Option<&TrainSet>,
        tests: Option<&[TestSet]>,
    ) -> Option<FoldsConfig> {
        self.cx.check_keys(t, &["leave_one_out"]);
        let v =
            self.cx.require(t, "leave_one_out", "the training manipulations to hold out, one fold each")?;
        let list = self.cx.string_list("folds.leave_one_out", v)?;
        if list.is_empty() {
            self.cx.err(
                v.span(),
                "folds.leave_one_out",
                "no folds: list the manipulations to hold out, or remove [folds]",
            );
            return None;
        }
        let train = train?;
        let mut ok = true;
        for (i, (m, span)) in list.iter().enumerate() {
            if !train.manipulations.contains(m) {
                self.cx.err(
                    span.clone(),
                    &format!("folds.leave_one_out[{i}]"),
                    format!(
                        "`{m}` is not one of the training manipulations{}",
                        hint(m, train.manipulations.iter().map(String::as_str))
                    ),
                );
                ok = false;
            }
        }
        if ok && train.manipulations.len() < 2 {
            self.cx.err(
                v.span(),
                "folds.leave_one_out",
                "holding out the only training manipulation leaves nothing fake to train on",
            );
            ok = false;
        }
        if ok && tests.is_some_and(|ts| !ts.iter().any(|s| s.dataset == train.dataset)) {
            self.cx.err(
                v.span(),
                "folds.leave_one_out",
                format!("no [[test]] uses the training dataset `{}`, so the held-out manipulation would never be scored", train.dataset),
            );
            ok = false;
        }
        ok.then(|| FoldsConfig { leave_one_out: list.into_iter().map(|(m, _)| m).collect() })
    }

    fn sweep(
        &mut self,
        t: &Tbl<'_, '_>,
        methods: &[ProtocolMethod],
        failed: &[String],
    ) -> Option<Vec<SweepAxis>> {
        let mut entries: Vec<_> = t.t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut out: Vec<SweepAxis> = Vec::new();
        let mut ok = true;
        let mut candidates: Vec<String> = GLOBAL_KNOBS.iter().map(|(p, _)| p.to_string()).collect();
        for pm in methods {
            let base = join("methods", &pm.method.name);
            for p in methods::spec::find(&pm.method.kind).map_or(&[][..], |s| s.params) {
                candidates.push(join(&base, p.name));
            }
            for k in ["steps", "batch_size", "optimizer.lr"] {
                candidates.push(format!("{base}.{k}"));
            }
        }
        for (k, v) in entries {
            let raw: &str = k.get_ref();
            let path = join("sweep", raw);
            let segs = split_path(raw);
            if let Some(segs) = &segs
                && segs.len() >= 2
                && segs[0] == "methods"
                && failed.contains(&segs[1])
            {
                // The method itself is in error (reported above); its sweep cannot be checked.
                ok = false;
                continue;
            }
            let resolved = resolve_knob(raw, methods);
            let Some((method, knob, kind)) = resolved else {
                let h = hint(raw, candidates.iter().map(String::as_str));
                let h = if h.starts_with("; did") { h } else { String::new() };
                self.cx.err(
                    k.span(),
                    &path,
                    format!("`{raw}` does not name a hyperparameter: expected methods.<method>.<hyperparameter> (or .steps, .batch_size, .optimizer.lr) or one of {}{h}",
                        GLOBAL_KNOBS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")),
                );
                ok = false;
                continue;
            };
            let Some(items) = self.cx.array(&path, v) else {
                ok = false;
                continue;
            };
            if items.is_empty() {
                self.cx.err(v.span(), &path, "empty sweep: list at least one value");
                ok = false;
                continue;
            }
            let mut values: Vec<ParamValue> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let value = match &kind {
                    SweepValue::Param(pk) => self.cx.param(&p, item, pk),
                    SweepValue::PosInt(max) => self.cx.int(&p, item, 1, *max).map(ParamValue::Int),
                    SweepValue::NonNegInt(max) => self.cx.int(&p, item, 0, *max).map(ParamValue::Int),
                    SweepValue::Lr => self.cx.float(&p, item, 0.0, 10.0, true).map(ParamValue::Float),
                    SweepValue::Ratio => self.cx.float(&p, item, 0.0, 1000.0, true).map(ParamValue::Float),
                    SweepValue::Backbone => {
                        let names: Vec<&str> =
                            detectors::backbones::registry().iter().map(|b| b.name).collect();
                        self.cx.choice(&p, item, "backbone", &names).map(ParamValue::Str)
                    }
                };
                match value {
                    Some(x) if values.contains(&x) => {
                        self.cx.err(item.span(), &p, format!("{x} is listed twice"));
                        ok = false;
                    }
                    Some(x) => values.push(x),
                    None => ok = false,
                }
            }
            // Two entries setting the same thing for one method would make identical runs.
            if let Some(other) = out
                .iter()
                .find(|a| a.knob == knob && (a.method.is_none() || method.is_none() || a.method == method))
            {
                self.cx.err(
                    k.span(),
                    &path,
                    format!("sets the same value as sweep entry `{}` for the same method(s)", other.path),
                );
                ok = false;
            }
            // The canonical spelling: `methods."CS-DFD".c` and `methods.CS-DFD.c` are one path.
            let canon = split_path(raw)
                .map_or(raw.to_string(), |segs| segs.iter().fold(String::new(), |a, s| join(&a, s)));
            out.push(SweepAxis { path: canon, method, knob, values });
        }
        ok.then_some(out)
    }

    /// Sweep values that are valid on their own but not for a method they apply to (the same
    /// cross-checks as for the written values: warm-up, cosine floor, CGR's projection head).
    fn sweep_point_checks(
        &mut self,
        root: &Tbl<'_, '_>,
        axes: &[SweepAxis],
        methods: &[ProtocolMethod],
        model: &ModelConfig,
    ) {
        let Some(table) = root.get("sweep").and_then(|v| v.get_ref().as_table()) else { return };
        for (k, v) in table.iter() {
            let raw: &str = k.get_ref();
            let canon = split_path(raw).map(|segs| segs.iter().fold(String::new(), |a, s| join(&a, s)));
            let Some(axis) = axes.iter().find(|a| Some(&a.path) == canon.as_ref()) else { continue };
            let Some(items) = v.get_ref().as_array() else { continue };
            let path = join("sweep", raw);
            for (i, (value, item)) in axis.values.iter().zip(items.iter()).enumerate() {
                let p = format!("{path}[{i}]");
                for pm in methods.iter().filter(|m| axis.method.as_ref().is_none_or(|n| *n == m.method.name))
                {
                    let name = &pm.method.name;
                    let cgr = pm.method.params.get("cgr") == Some(&ParamValue::Bool(true));
                    let problem = match &axis.knob {
                        Knob::HeadLayers if value.as_i64() == Some(0) && cgr => Some(format!(
                            "0 head layers leave CGR of method `{name}` without a projection head"
                        )),
                        Knob::Param(n)
                            if n == "cgr" && *value == ParamValue::Bool(true) && model.head.layers == 0 =>
                        {
                            Some("CGR updates the projection head, but model.head.layers = 0".to_string())
                        }
                        Knob::Steps => {
                            let warmup = match &pm.training.schedule {
                                ScheduleConfig::Constant { warmup_steps }
                                | ScheduleConfig::Step { warmup_steps, .. }
                                | ScheduleConfig::Cosine { warmup_steps, .. } => *warmup_steps as i64,
                            };
                            let n = value.as_i64().unwrap_or(0);
                            (warmup >= n).then(|| format!("{n} steps leave no training after the {warmup} warm-up steps of method `{name}`"))
                        }
                        Knob::Lr => match &pm.training.schedule {
                            ScheduleConfig::Cosine { min_lr, .. }
                                if value.as_f64().is_some_and(|lr| lr <= *min_lr) =>
                            {
                                Some(format!(
                                    "{value} is not above the cosine schedule's min_lr = {min_lr} of method `{name}`"
                                ))
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(msg) = problem {
                        self.cx.err(item.span(), &p, msg);
                        break;
                    }
                }
            }
        }
    }

    fn report(&mut self, t: &Tbl<'_, '_>, methods: Option<&MethodsRead>) -> Option<ReportConfig> {
        self.cx.check_keys(t, &["baseline", "tables", "plots", "noise_floor"]);
        let mut ok = true;
        let baseline = match t.get("baseline") {
            None => None,
            Some(v) => match (self.cx.string("report.baseline", v), methods) {
                (Some(b), Some(r))
                    if !r.methods.iter().any(|m| m.method.name == b) && !r.failed.contains(&b) =>
                {
                    let h = hint(&b, r.methods.iter().map(|m| m.method.name.as_str()));
                    self.cx.err(v.span(), "report.baseline", format!("no method named `{b}`{h}"));
                    ok = false;
                    None
                }
                (Some(b), _) => Some(b),
                (None, _) => {
                    ok = false;
                    None
                }
            },
        };
        let mut ids = |cx: &mut Ctx<'_>, key: &str, known: &[&str], what: &str| -> Vec<String> {
            let Some(v) = t.get(key) else { return Vec::new() };
            let path = t.child(key);
            let Some(list) = cx.string_list(&path, v) else {
                ok = false;
                return Vec::new();
            };
            for (i, (s, span)) in list.iter().enumerate() {
                if !known.contains(&s.as_str()) {
                    cx.err(
                        span.clone(),
                        &format!("{path}[{i}]"),
                        format!("unknown {what} `{s}`{}", hint(s, known.iter().copied())),
                    );
                    ok = false;
                }
            }
            list.into_iter().map(|(s, _)| s).collect()
        };
        let tables = ids(&mut self.cx, "tables", TABLE_IDS, "table id");
        let plots = ids(&mut self.cx, "plots", PLOT_IDS, "plot id");
        let noise_floor = self.noise_floor(t, methods, &mut ok);
        ok.then_some(ReportConfig { baseline, tables, plots, noise_floor })
    }

    /// `report.noise_floor = ["A", "B"]`: two methods whose runs differ only at rounding level
    /// (e.g. O+S and CS-DFD with uvs = false, cgr = false); the report measures their spread.
    fn noise_floor(&mut self, t: &Tbl<'_, '_>, methods: Option<&MethodsRead>, ok: &mut bool) -> Vec<String> {
        let Some(v) = t.get("noise_floor") else { return Vec::new() };
        let path = t.child("noise_floor");
        let Some(list) = self.cx.string_list(&path, v) else {
            *ok = false;
            return Vec::new();
        };
        if list.len() != 2 || list[0].0 == list[1].0 {
            self.cx.err(
                v.span(),
                &path,
                format!(
                    "expected two different method names, e.g. noise_floor = [\"O+S\", \"O+S twin\"]; got {} name(s){}",
                    list.len(),
                    if list.len() == 2 { ", both the same" } else { "" }
                ),
            );
            *ok = false;
            return Vec::new();
        }
        if let Some(r) = methods {
            for (i, (name, span)) in list.iter().enumerate() {
                if !r.methods.iter().any(|m| m.method.name == *name) && !r.failed.contains(name) {
                    let h = hint(name, r.methods.iter().map(|m| m.method.name.as_str()));
                    self.cx.err(span.clone(), &format!("{path}[{i}]"), format!("no method named `{name}`{h}"));
                    *ok = false;
                }
            }
        }
        list.into_iter().map(|(s, _)| s).collect()
    }
}

/// The method blocks that were read without error, and the names of those that were not.
struct MethodsRead {
    methods: Vec<ProtocolMethod>,
    failed: Vec<String>,
}

/// Sweepable paths that apply to every method.
pub(crate) const GLOBAL_KNOBS: &[(&str, Knob)] = &[
    ("training.steps", Knob::Steps),
    ("training.batch_size", Knob::BatchSize),
    ("training.optimizer.lr", Knob::Lr),
    ("model.backbone", Knob::Backbone),
    ("model.head.layers", Knob::HeadLayers),
    ("train.real_fake_ratio", Knob::RealFakeRatio),
    ("data.resolution", Knob::Resolution),
];

enum SweepValue {
    Param(ParamKind),
    PosInt(i64),
    NonNegInt(i64),
    Lr,
    Ratio,
    Backbone,
}

fn knob_values(knob: &Knob) -> SweepValue {
    match knob {
        Knob::Steps => SweepValue::PosInt(i64::MAX),
        Knob::BatchSize => SweepValue::PosInt(1 << 16),
        Knob::Lr => SweepValue::Lr,
        Knob::Backbone => SweepValue::Backbone,
        Knob::HeadLayers => SweepValue::NonNegInt(16),
        Knob::RealFakeRatio => SweepValue::Ratio,
        Knob::Resolution => SweepValue::PosInt(2048),
        Knob::Param(_) => unreachable!("parameters carry their registry kind"),
    }
}

fn resolve_knob(raw: &str, methods: &[ProtocolMethod]) -> Option<(Option<String>, Knob, SweepValue)> {
    let segs = split_path(raw)?;
    if let Some((_, knob)) = GLOBAL_KNOBS.iter().find(|(p, _)| split_path(p).as_deref() == Some(&segs[..])) {
        let kind = knob_values(knob);
        return Some((None, knob.clone(), kind));
    }
    if segs.len() < 3 || segs[0] != "methods" {
        return None;
    }
    let pm = methods.iter().find(|m| m.method.name == segs[1])?;
    let rest: Vec<&str> = segs[2..].iter().map(String::as_str).collect();
    let knob = match rest[..] {
        ["steps"] => Knob::Steps,
        ["batch_size"] => Knob::BatchSize,
        ["optimizer", "lr"] => Knob::Lr,
        [p] => {
            let spec = methods::spec::find(&pm.method.kind)?.param(p)?;
            return Some((
                Some(pm.method.name.clone()),
                Knob::Param(p.to_string()),
                SweepValue::Param(spec.kind),
            ));
        }
        _ => return None,
    };
    let kind = knob_values(&knob);
    Some((Some(pm.method.name.clone()), knob, kind))
}

fn default_param(kind: &ParamKind) -> ParamValue {
    match *kind {
        ParamKind::Float { default, .. } => ParamValue::Float(default),
        ParamKind::Int { default, .. } => ParamValue::Int(default),
        ParamKind::Bool { default } => ParamValue::Bool(default),
        ParamKind::Choice { options } => {
            ParamValue::Str(options.first().copied().unwrap_or_default().to_string())
        }
    }
}

pub(crate) fn default_training() -> TrainingConfig {
    TrainingConfig {
        length: TrainLength::Steps(600),
        batch_size: 32,
        optimizer: OptimizerConfig::default(),
        schedule: ScheduleConfig::default(),
        validation: ValidationConfig { split: "val".into(), every: 100, metric: ValMetric::Auc },
        selection: Selection::BestVal,
        precision: Precision::F32,
        tf32: true,
        init_nudge_ulps: 0,
    }
}

/// Same dataset, split, compression and fake labels (order ignored).
fn same_data(train: &TrainSet, test: &TestSet) -> bool {
    let mut a = train.manipulations.clone();
    let mut b = test.manipulations.clone();
    a.sort();
    b.sort();
    train.dataset == test.dataset
        && train.split == test.split
        && train.compression == test.compression
        && a == b
}

/// A value given once for both splits (`x`) or per split (`{ train = x, test = y }`).
fn per_split<T: Copy>(
    cx: &mut Ctx<'_>,
    path: &str,
    v: &Val<'_>,
    read: impl Fn(&mut Ctx<'_>, &str, &Val<'_>) -> Option<T>,
) -> Option<PerSplit<T>> {
    match v.get_ref() {
        DeValue::Table(_) => {
            let t = cx.table(path, v)?;
            cx.check_keys(&t, &["train", "test"]);
            let train =
                cx.require(&t, "train", "the training value").and_then(|x| read(cx, &t.child("train"), x));
            let test = cx.require(&t, "test", "the test value").and_then(|x| read(cx, &t.child("test"), x));
            Some(PerSplit { train: train?, test: test? })
        }
        _ => read(cx, path, v).map(|x| PerSplit { train: x, test: x }),
    }
}

/// A preset name (`"imagenet"`, `"deepfakebench"`) or a `{ mean, std }` table.
fn normalisation(cx: &mut Ctx<'_>, v: &Val<'_>) -> Option<Normalisation> {
    if matches!(v.get_ref(), DeValue::String(_)) {
        let name = cx.choice("data.normalisation", v, "normalisation preset", super::NORMALISATION_PRESETS)?;
        return Normalisation::preset(&name);
    }
    let t = cx.table("data.normalisation", v)?;
    cx.check_keys(&t, &["mean", "std"]);
    let mut triple = |key: &str, positive: bool| -> Option<[f64; 3]> {
        let Some(x) = t.get(key) else { return Some([0.5; 3]) };
        let path = t.child(key);
        let items = cx.array(&path, x)?;
        if items.len() != 3 {
            cx.err(
                x.span(),
                &path,
                format!("expected 3 numbers (one per RGB channel), found {}", items.len()),
            );
            return None;
        }
        let mut out = [0.0; 3];
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match if positive {
                cx.float(&p, item, 0.0, 1e6, true)
            } else {
                cx.float(&p, item, -1e6, 1e6, false)
            } {
                Some(f) => out[i] = f,
                None => ok = false,
            }
        }
        ok.then_some(out)
    };
    let mean = triple("mean", false);
    let std = triple("std", true);
    Some(Normalisation { mean: mean?, std: std? })
}

/// The names between backticks in a serde message, in order.
fn backticked(msg: &str) -> Vec<String> {
    msg.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn absolute(p: PathBuf) -> PathBuf {
    std::fs::canonicalize(&p).or_else(|_| std::path::absolute(&p)).unwrap_or(p)
}

/// How tables label a method: the protocol's own name (so `O`, `S` and `O+S` stay apart although
/// all three are ERM), marked "(reconstructed)" for a method whose registry entry carries that
/// caveat (RoGA) unless the name already says so.
fn display_name(name: &str, spec: &detectors::methods::MethodSpec) -> String {
    match spec.note {
        Some(_) if spec.display.contains("(reconstructed)") && !name.contains("reconstructed") => {
            format!("{name} (reconstructed)")
        }
        _ => name.to_string(),
    }
}
