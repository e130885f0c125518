//! `bench predict` on a run trained by `bench run`: the stored weights reproduce the run's own
//! test scores, and bad inputs give the documented exit codes and name the file.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::results::{self, RunDir};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

const PROTOCOL: &str = r#"name = "predict_e2e"
seeds = [0]
device = "cpu"

[data]
format = "synthetic"
preset = "tiny"
synth_seed = 0
resolution = 64
frames_per_video = { train = 3, test = 3 }
normalisation = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }

[train]
dataset = "FaceForensics++"
manipulations = ["FF-DF", "FF-F2F", "FF-FS", "FF-NT"]
split = "train"
compression = "c23"

[[test]]
name = "FF++"
dataset = "FaceForensics++"
split = "test"
role = "in-domain"

[[test]]
name = "UADFV"
dataset = "UADFV"
split = "test"
role = "unseen"

[model]
backbone = "meso4"
head = { layers = 2 }

[training]
steps = 4
batch_size = 8
optimizer = { name = "adam", lr = 1e-3 }
validation = { split = "val", every = 2 }
selection = "best-val"

[methods.O]
kind = "erm"
streams = "original"
"#;

fn bench(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BENCH).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Rows of a predict CSV, as header name -> value maps.
fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

struct Trained {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    run: RunDir,
}

fn train() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    std::fs::write(p.join("p.toml"), PROTOCOL).unwrap();
    let o = bench(&[
        os("run"),
        os(&p.join("p.toml")),
        os("--out"),
        os(&p.join("out")),
        os("--data-cache"),
        os(&p.join("cache")),
        os("-q"),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let runs = results::list_runs(&p.join("out/predict_e2e")).unwrap();
    assert_eq!(runs.len(), 1);
    let data = std::fs::read_dir(p.join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    Trained {
        _dir: dir,
        dir: p,
        data,
        run: runs[0].clone(),
    }
}

#[test]
fn predict_reproduces_the_runs_test_scores_and_reports_bad_inputs() {
    let t = train();
    let scores = t.run.read_scores().unwrap();
    let json = |name: &str| t.data.join("dataset_json").join(format!("{name}.json"));
    let csv_path = t.dir.join("pred.csv");
    // Batch 3 differs from the run's 8: scores must not depend on batch composition.
    let o = bench(&[
        os("predict"),
        os("--run"),
        os(t.run.path()),
        os(&json("FaceForensics++")),
        os(&json("UADFV")),
        os("--split"),
        os("test"),
        os("--batch"),
        os("3"),
        os("--out"),
        os(&csv_path),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let rows = read_csv(&csv_path);
    let mut by_key: HashMap<(String, String, String), (f64, String)> = HashMap::new();
    for r in &rows {
        // `video` is `<label_name>/<video>` so that FF++ fakes of different methods stay apart.
        let video = r["video"]
            .strip_prefix(&format!("{}/", r["label_name"]))
            .unwrap()
            .to_string();
        assert!(r["path"].ends_with(&r["frame"]), "{r:?}");
        assert!(r["path"].contains(&video), "{r:?}");
        let key = (r["label_name"].clone(), video, r["frame"].clone());
        assert!(
            by_key
                .insert(key, (r["score"].parse().unwrap(), r["label"].clone()))
                .is_none(),
            "{r:?}"
        );
    }
    assert!(!scores.is_empty());
    assert_eq!(
        rows.len(),
        scores.len(),
        "predict scored other frames than the run's test sets"
    );
    for s in &scores {
        let key = (s.label_name.clone(), s.video.clone(), s.frame.clone());
        let (p, label) = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not scored by predict"));
        assert_eq!(label, &s.label.to_string());
        assert!(
            (p - s.score).abs() <= 1e-6,
            "{key:?}: predict {p} vs run {}",
            s.score
        );
    }

    // `bench eval` on predict's CSV gives the run's own metrics: the `video` column keeps FF++
    // fakes of different manipulations apart, as the runner does.
    let eval_out = t.dir.join("eval.csv");
    let o = bench(&[
        os("eval"),
        os(&csv_path),
        os("--group"),
        os("dataset"),
        os("--out"),
        os(&eval_out),
        os("-q"),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let evaluated = read_csv(&eval_out);
    let dataset_of = HashMap::from([("FF++", "FaceForensics++"), ("UADFV", "UADFV")]);
    let metrics = t.run.read_metrics().unwrap();
    assert_eq!(metrics.len(), 4);
    for m in &metrics {
        let e = evaluated
            .iter()
            .find(|e| {
                e["group"] == dataset_of[m.test_set.as_str()] && e["level"] == m.level.as_str()
            })
            .unwrap_or_else(|| panic!("{} {:?} missing from {evaluated:?}", m.test_set, m.level));
        assert_eq!(e["n"], m.n.to_string(), "{m:?}");
        let auc: f64 = e["auc"].parse().unwrap();
        assert!(
            (auc - m.auc.unwrap()).abs() <= 1e-9,
            "{} {:?}: eval {auc} vs run {:?}",
            m.test_set,
            m.level,
            m.auc
        );
    }

    // Folders and single images: same scores, columns path and score only.
    let folder = t.data.join("UADFV");
    let csv2 = t.dir.join("folder.csv");
    let bad = t.dir.join("broken.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let o = bench(&[
        os("predict"),
        os("--run"),
        os(t.run.path()),
        os(&folder),
        os(&bad),
        os("--out"),
        os(&csv2),
    ]);
    assert_eq!(
        code(&o),
        1,
        "an unreadable image means exit 1: {}",
        text(&o)
    );
    assert!(text(&o).contains("broken.png"), "{}", text(&o));
    let rows2 = read_csv(&csv2);
    assert_eq!(rows2.len(), 18, "every UADFV frame once");
    assert_eq!(rows2[0].len(), 2);
    let paths: Vec<&String> = rows2.iter().map(|r| &r["path"]).collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "folder frames are sorted"
    );
    let from_json: HashMap<&str, f64> = rows
        .iter()
        .map(|r| (r["path"].as_str(), r["score"].parse().unwrap()))
        .collect();
    for r in &rows2 {
        let s: f64 = r["score"].parse().unwrap();
        // Other batches than above: equal up to f32 summation order.
        let j = from_json[r["path"].as_str()];
        assert!((s - j).abs() <= 1e-6, "{}: {s} vs {j}", r["path"]);
    }

    // Usage errors: exit 2, naming the file.
    let missing = t.dir.join("nope.png");
    let o = bench(&[os("predict"), os("--run"), os(t.run.path()), os(&missing)]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("nope.png"), "{}", text(&o));
    let o = bench(&[os("predict"), os("--run"), os(&t.dir), os(&folder)]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("manifest.json"), "{}", text(&o));
    std::fs::remove_file(t.run.file(results::WEIGHTS_FILE)).unwrap();
    let o = bench(&[
        os("predict"),
        os("--run"),
        os(t.run.path()),
        os(&folder),
        os("--out"),
        os(&csv2),
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("weights.safetensors"), "{}", text(&o));
    let mut m = t.run.read_manifest().unwrap();
    m.status = results::RunStatus::Running;
    t.run.write_manifest(&m).unwrap();
    let o = bench(&[os("predict"), os("--run"), os(t.run.path()), os(&folder)]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("not complete"), "{}", text(&o));
}

#[test]
fn inputs_expand_recursively_sorted_and_reject_unknown_files() {
    use harness::predict::collect_inputs;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for f in [
        "b/2.PNG",
        "b/a/1.jpg",
        "a.jpeg",
        "notes.txt",
        "c/deep/x.png",
    ] {
        std::fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
        std::fs::write(p.join(f), b"").unwrap();
    }
    let items = collect_inputs(&[p.to_path_buf()], None, None, None).unwrap();
    let names: Vec<String> = items
        .iter()
        .map(|i| {
            i.path
                .strip_prefix(p)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["a.jpeg", "b/2.PNG", "b/a/1.jpg", "c/deep/x.png"]);
    assert!(items.iter().all(|i| i.meta.is_none()));

    let err = collect_inputs(&[p.join("notes.txt")], None, None, None).unwrap_err();
    assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
    let err = collect_inputs(&[p.join("absent")], None, None, None).unwrap_err();
    assert!(format!("{err:#}").contains("absent"), "{err:#}");

    // A dataset JSON under `dataset_json/` resolves its relative, backslashed paths against the
    // folder above; a broken JSON is an error naming it.
    std::fs::create_dir_all(p.join("dataset_json")).unwrap();
    let json = r#"{"DS": {"DS_real": {"train": {}, "val": {}, "test": {"v1": {"label": "DS_real",
        "frames": ["DS\\frames\\v1\\000.png", "DS\\frames\\v1\\007.png"]}}}}}"#;
    std::fs::write(p.join("dataset_json/DS.json"), json).unwrap();
    let items = collect_inputs(&[p.join("dataset_json/DS.json")], None, None, None).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].path, p.join("DS/frames/v1/007.png"));
    let m = items[0].meta.as_ref().unwrap();
    assert_eq!(
        (
            m.dataset.as_str(),
            m.label,
            m.video.as_str(),
            m.frame.as_str()
        ),
        ("DS", 0, "v1", "000.png")
    );
    let other_root = collect_inputs(
        &[p.join("dataset_json/DS.json")],
        Some(Path::new("/r")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(other_root[0].path, Path::new("/r/DS/frames/v1/000.png"));
    std::fs::write(p.join("dataset_json/Bad.json"), "{").unwrap();
    let err = collect_inputs(&[p.join("dataset_json/Bad.json")], None, None, None).unwrap_err();
    assert!(format!("{err:#}").contains("Bad.json"), "{err:#}");
}

#[test]
fn predict_refuses_to_write_non_finite_scores() {
    let t = train();
    let weights = t.run.file(results::WEIGHTS_FILE);
    let dev = candle_core::Device::Cpu;
    let poisoned: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&weights, &dev)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let nan = v.affine(0.0, f64::NAN).unwrap();
            (k, nan)
        })
        .collect();
    candle_core::safetensors::save(&poisoned, &weights).unwrap();
    let out = t.dir.join("nan.csv");
    let json = t.data.join("dataset_json").join("UADFV.json");
    let o = bench(&[os("predict"), os("--run"), os(t.run.path()), os(&json), os("--out"), os(&out)]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("non-finite score"), "{}", text(&o));
    assert!(!out.exists(), "no CSV of NaN scores is written");
}
