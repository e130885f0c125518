//! DeepfakeBench's dataset JSONs as released: trimmed copies of DFDC, FF-DF, Celeb-DF-v1/v2
//! and UADFV with their quirks (DFDC's flattened `val` and empty `train`, UADFV's absolute
//! `/deepfakebench/datasets/rgb\...` prefix and identical splits, Celeb-DF's `val` = `test` and
//! real test videos that are also in `train`, Windows-ordered frame lists with four-digit
//! stems), a Windows drive path, frames generated as tiny PNGs with landmark files. Checked:
//! indexing, `bench data check`, `bench validate`'s pre-flight and a cross-dataset `bench run`.
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::data::index::{Index, IndexOptions, IssueKind, Split};
use harness::data::preflight;
use image::{Rgb, RgbImage};
use npyz::WriterBuilder;
use serde_json::{Value, json};

const PREFIX: &str = "/deepfakebench/datasets/rgb";

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Writes a 16 px frame and its landmark file for a JSON path (`\` separators, relative to the
/// root once `strip` is removed).
fn write_frame(root: &Path, json_path: &str, strip: &str, tint: u8) {
    let rel = json_path.strip_prefix(strip).unwrap_or(json_path).replace('\\', "/");
    let rel = rel.trim_start_matches('/');
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(16, 16, |x, y| Rgb([tint, (x * 12) as u8, (y * 12) as u8]));
    img.save(&p).unwrap();
    let lm = harness::data::index::landmark_path_for(&p).unwrap();
    std::fs::create_dir_all(lm.parent().unwrap()).unwrap();
    let f = std::fs::File::create(lm).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[81, 2]).writer(f).begin_nd().unwrap();
    for i in 0..162i64 {
        w.push(&(4 + i % 8)).unwrap();
    }
    w.finish().unwrap();
}

/// A video object with the frames `stems` under `dir\frames\<video>`.
fn video(label: &str, dir: &str, name: &str, stems: &[&str]) -> Value {
    let frames: Vec<String> = stems.iter().map(|s| format!("{dir}\\frames\\{name}\\{s}.png")).collect();
    json!({"label": label, "frames": frames})
}

fn videos(label: &str, dir: &str, names: &[&str], stems: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for n in names {
        m.insert(n.to_string(), video(label, dir, n, stems));
    }
    Value::Object(m)
}

const STEMS: &[&str] = &["000", "010", "020", "030"];

/// Every frame path of a JSON value.
fn frame_paths(v: &Value, out: &mut Vec<(String, bool)>) {
    match v {
        Value::Object(m) => {
            let real = m.get("label").and_then(Value::as_str).is_some_and(harness::data::index::is_real_label);
            if let Some(Value::Array(fr)) = m.get("frames") {
                out.extend(fr.iter().filter_map(Value::as_str).map(|s| (s.to_string(), real)));
            }
            for (k, x) in m {
                if k != "frames" {
                    frame_paths(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| frame_paths(x, out)),
        _ => {}
    }
}

/// The five released JSONs, trimmed.
fn released() -> Vec<(&'static str, Value)> {
    let ffr = "FaceForensics++\\original_sequences\\youtube\\c23";
    let ffd = "FaceForensics++\\manipulated_sequences\\Deepfakes\\c23";
    let ff = json!({"FF-DF": {
        "FF-real": {
            "train": {"c23": videos("FF-real", ffr, &["071", "072", "073", "074"], STEMS)},
            "val": {"c23": videos("FF-real", ffr, &["075", "076"], STEMS)},
            "test": {"c23": videos("FF-real", ffr, &["077", "078"], STEMS)}},
        "FF-DF": {
            "train": {"c23": videos("FF-DF", ffd, &["071_072", "072_071", "073_074", "074_073"], STEMS)},
            "val": {"c23": videos("FF-DF", ffd, &["075_076", "076_075"], STEMS)},
            "test": {"c23": videos("FF-DF", ffd, &["077_078", "078_077"], STEMS)}}}});
    // Celeb-DF: real `train` is YouTube-real only, `val` = `test`, and YouTube-real test videos
    // are also training videos. One test video has more than 1000 frames, listed in Windows
    // (lexicographic) order.
    let celeb = |v: &str| {
        let (real, fake) = (format!("CelebDF{v}_real"), format!("CelebDF{v}_fake"));
        let root = format!("Celeb-DF-{v}");
        let yt = format!("{root}\\YouTube-real");
        let cr = format!("{root}\\Celeb-real");
        let syn = format!("{root}\\Celeb-synthesis");
        let mut test_real = videos(&real, &yt, &["00000", "00001"], STEMS);
        test_real["id0_0000"] = video(&real, &cr, "id0_0000", &["000", "038", "1009", "116"]);
        let test_fake = videos(&fake, &syn, &["id1_id2_0000", "id2_id1_0000"], STEMS);
        let mut top = serde_json::Map::new();
        top.insert(
            root.clone(),
            json!({
                real.clone(): {"train": videos(&real, &yt, &["00000", "00001", "00002"], STEMS),
                               "val": test_real.clone(), "test": test_real},
                fake.clone(): {"train": videos(&fake, &syn, &["id0_id1_0000", "id0_id2_0000"], STEMS),
                               "val": test_fake.clone(), "test": test_fake}}),
        );
        Value::Object(top)
    };
    // DFDC: empty `train`, `val` flattened into one {"label", "frames"} object.
    let dt = "DFDC\\test";
    let dfdc = json!({"DFDC": {
        "DFDC_Real": {"train": {}, "val": video("DFDC_Real", dt, "aaqaifqrwn", STEMS),
                      "test": videos("DFDC_Real", dt, &["aaqaifqrwn", "abofeumbvv"], STEMS)},
        "DFDC_Fake": {"train": {}, "val": {},
                      "test": videos("DFDC_Fake", dt, &["aayfryxljh", "acazlolrpz"], STEMS)}}});
    // UADFV: absolute prefix, every video in every split.
    let ur = format!("{PREFIX}\\UADFV\\real");
    let uf = format!("{PREFIX}\\UADFV\\fake");
    let real = videos("UADFV_Real", &ur, &["0000", "0001"], STEMS);
    let fake = videos("UADFV_Fake", &uf, &["0000_fake", "0001_fake"], STEMS);
    let uadfv = json!({"UADFV": {
        "UADFV_Real": {"train": real.clone(), "val": real.clone(), "test": real},
        "UADFV_Fake": {"train": fake.clone(), "val": fake.clone(), "test": fake}}});
    vec![("FF-DF", ff), ("Celeb-DF-v1", celeb("v1")), ("Celeb-DF-v2", celeb("v2")), ("DFDC", dfdc), ("UADFV", uadfv)]
}

/// A data root with the released JSONs in `dataset_json/` and every frame they list.
fn released_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(root.join("dataset_json")).unwrap();
    for (name, v) in released() {
        std::fs::write(root.join(format!("dataset_json/{name}.json")), serde_json::to_string(&v).unwrap()).unwrap();
        let mut paths = Vec::new();
        frame_paths(&v, &mut paths);
        for (p, real) in paths {
            write_frame(&root, &p, PREFIX, if real { 60 } else { 190 });
        }
    }
    (dir, root)
}

#[test]
fn released_quirks_are_read_as_deepfakebench_does() {
    let (_d, root) = released_root();
    let opts = IndexOptions::default();
    let dfdc = Index::from_json(&root.join("dataset_json/DFDC.json"), &root, &opts).unwrap();
    // The flattened `val` is one video of four frames, with a warning naming the key.
    let val: Vec<_> = dfdc.entries.iter().filter(|e| e.split == Split::Val).collect();
    assert_eq!(val.len(), 4);
    assert!(val.iter().all(|e| e.video == "aaqaifqrwn" && e.label_name == "DFDC_Real" && e.frame_path.is_file()));
    let flat: Vec<_> = dfdc.issues.iter().filter(|i| i.kind == IssueKind::Flattened).collect();
    assert_eq!(flat.len(), 1);
    let msg = flat[0].to_string();
    assert!(msg.contains(r#"$["DFDC"]["DFDC_Real"]["val"]"#) && msg.contains("rearrange.py"), "{msg}");
    // Empty `train` splits are noted, not errors; nothing is malformed.
    assert_eq!(dfdc.issues.iter().filter(|i| i.kind == IssueKind::Empty).count(), 3);
    assert!(dfdc.issues.iter().all(|i| !i.is_malformed()));
    assert_eq!(dfdc.entries.iter().filter(|e| e.split == Split::Test).count(), 16);

    // Windows-ordered frame list 000, 038, 1009, 116: spread over the numeric order
    // (000, 038, 116, 1009), two frames = the first and the last (1009), never 116.
    let two = IndexOptions { frames_per_video: Some(2), ..Default::default() };
    let celeb = Index::from_json(&root.join("dataset_json/Celeb-DF-v2.json"), &root, &two).unwrap();
    let picked: Vec<&str> = celeb
        .entries
        .iter()
        .filter(|e| e.video == "id0_0000" && e.split == Split::Test)
        .map(|e| e.frame.as_str())
        .collect();
    assert_eq!(picked, ["000.png", "1009.png"]);
    let three = IndexOptions { frames_per_video: Some(3), ..Default::default() };
    let celeb = Index::from_json(&root.join("dataset_json/Celeb-DF-v2.json"), &root, &three).unwrap();
    let picked: Vec<&str> = celeb
        .entries
        .iter()
        .filter(|e| e.video == "id0_0000" && e.split == Split::Test)
        .map(|e| e.frame.as_str())
        .collect();
    // floor(linspace(0, 3, 3)) = [0, 1, 3].
    assert_eq!(picked, ["000.png", "038.png", "1009.png"]);

    // UADFV's absolute prefix: without a path map the frames are looked for at the absolute
    // path (and are missing); with it they resolve under the root.
    let u = Index::from_json(&root.join("dataset_json/UADFV.json"), &root, &opts).unwrap();
    assert!(u.entries.iter().all(|e| e.frame_path.starts_with(PREFIX) && !e.frame_path.is_file()));
    let mapped = IndexOptions { path_map: vec![(PREFIX.into(), String::new())], ..Default::default() };
    let u = Index::from_json(&root.join("dataset_json/UADFV.json"), &root, &mapped).unwrap();
    assert!(u.entries.iter().all(|e| e.frame_path.starts_with(&root) && e.frame_path.is_file()));
}

#[test]
fn data_check_passes_every_released_json_with_warnings() {
    let (_d, root) = released_root();
    let r = root.to_str().unwrap();
    for name in ["FF-DF", "Celeb-DF-v1", "Celeb-DF-v2", "DFDC"] {
        let json = root.join(format!("dataset_json/{name}.json"));
        let (code, out) = bench(&["data", "check", json.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains("no problems found"), "{out}");
    }
    let dfdc = root.join("dataset_json/DFDC.json");
    let (_, out) = bench(&["data", "check", dfdc.to_str().unwrap()]);
    assert!(out.contains("warnings") && out.contains("flattened split") && out.contains(r#"["val"]"#), "{out}");
    assert!(out.contains("empty splits (3): DFDC/DFDC_Fake/train, DFDC/DFDC_Fake/val, DFDC/DFDC_Real/train"), "{out}");
    assert!(out.contains("labels absent from a split") && out.contains("DFDC: split val has no frames of DFDC_Fake"), "{out}");

    // The Celeb-DF leakage: YouTube-real test videos are training videos, and val = test.
    let celeb = root.join("dataset_json/Celeb-DF-v2.json");
    let (_, out) = bench(&["data", "check", celeb.to_str().unwrap()]);
    assert!(
        out.contains("Celeb-DF-v2: train and test share 2 videos (2 CelebDFv2_real")
            && out.contains("Celeb-DF-v2/CelebDFv2_real/00000")
            && out.contains("8 frame files")
            && out.contains("Celeb-DF-v2: val and test are the same 5 videos"),
        "{out}"
    );

    // UADFV as released: the absolute prefix is a quirk of the file. The check strips it, passes,
    // and says which path_map a protocol needs.
    let uadfv = root.join("dataset_json/UADFV.json");
    let (code, out) = bench(&["data", "check", uadfv.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("carry the prefix `{PREFIX}`")), "{out}");
    assert!(out.contains(&format!("path_map = {{ '{PREFIX}' = '' }}")), "{out}");
    assert!(out.contains("UADFV: train and test are the same 4 videos"), "{out}");

    // With a path map that does not apply, every frame is missing: counted once (not again as
    // "without landmarks"), a few examples, and the path_map line that fixes it.
    let (code, out) = bench(&["data", "check", uadfv.to_str().unwrap(), "--path-map", "/elsewhere="]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("16 missing or unreadable frames") && !out.contains("without landmarks"), "{out}");
    assert!(out.contains("... and 13 more") && out.lines().count() < 40, "{out}");
    assert!(out.contains(&format!("path_map = {{ '{PREFIX}' = '' }}")), "{out}");
    let (code, out) = bench(&["data", "check", uadfv.to_str().unwrap(), "--path-map", &format!("{PREFIX}=")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("UADFV: train and test are the same 4 videos"), "{out}");

    // The whole root: the good datasets are reported even when one JSON is broken, and broken
    // input exits 2.
    std::fs::write(root.join("dataset_json/Broken.json"), "{\"Broken\": [").unwrap();
    std::fs::write(
        root.join("dataset_json/Odd.json"),
        r#"{"Odd": {"Odd_real": {"train": {"v": {"label": "Odd_real", "frames": "x.png"}}}}}"#,
    )
    .unwrap();
    let (code, out) = bench(&["data", "check", r, "--path-map", &format!("{PREFIX}=")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("Broken.json") && out.contains("invalid JSON"), "{out}");
    assert!(out.contains(r#"$["Odd"]["Odd_real"]["train"]["v"]["frames"]"#) && out.contains("expected an array"), "{out}");
    for d in ["FF-DF", "Celeb-DF-v1", "Celeb-DF-v2", "DFDC", "UADFV"] {
        assert!(out.lines().any(|l| l.starts_with(d)), "{d} missing from the summary: {out}");
    }
}

#[test]
fn windows_drive_paths_get_a_path_map_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("dataset_json")).unwrap();
    let v = json!({"UADFV": {"UADFV_Real": {"test": videos("UADFV_Real", "T:\\data\\UADFV\\real", &["0000"], STEMS)},
                             "UADFV_Fake": {"test": videos("UADFV_Fake", "T:\\data\\UADFV\\fake", &["0000_fake"], STEMS)}}});
    let json = root.join("dataset_json/UADFV.json");
    std::fs::write(&json, v.to_string()).unwrap();
    let mut paths = Vec::new();
    frame_paths(&v, &mut paths);
    for (p, _) in &paths {
        write_frame(root, p, "T:\\data", 90);
    }
    // data check reads the drive-prefixed file, with the path_map a protocol needs as a warning.
    let (code, out) = bench(&["data", "check", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("carry the prefix `T:/data`") && out.contains("path_map = { 'T:/data' = '' }"), "{out}");
    // Without the rewrite (a path map that does not apply) the frames are missing, named as written.
    let (code, out) = bench(&["data", "check", json.to_str().unwrap(), "--path-map", "/elsewhere="]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("T:/data/UADFV/fake/frames/0000_fake/000.png"), "{out}");
    assert!(out.contains("path_map = { 'T:/data' = '' }"), "{out}");
    let (code, out) = bench(&["data", "check", json.to_str().unwrap(), "--path-map", "T:\\data="]);
    assert_eq!(code, 0, "{out}");
}

fn protocol_text(name: &str, train: &str, tests: &[&str], extra_train: &str, steps: u32) -> String {
    let mut t = format!(
        r#"name = "{name}"
seeds = [0]
device = "cpu"

[data]
format = "deepfakebench"
root = "data"
json_dir = "data/dataset_json"
path_map = {{ "{PREFIX}" = "" }}
resolution = 64
frames_per_video = {{ train = 4, test = 4 }}

[train]
{train}
{extra_train}

[model]
backbone = "meso4"

[training]
steps = {steps}
batch_size = 8
optimizer = {{ name = "adam", lr = 1e-3 }}
validation = {{ split = "val", every = 2 }}

[methods.ERM]
kind = "erm"
streams = "original"
"#
    );
    for d in tests {
        t.push_str(&format!("\n[[test]]\ndataset = \"{d}\"\nsplit = \"test\"\n"));
    }
    t
}

#[test]
fn cross_dataset_protocol_on_the_released_jsons_runs_to_completion() {
    let (d, _root) = released_root();
    let text = protocol_text(
        "ffdf-cross",
        "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\ncompression = \"c23\"",
        &["Celeb-DF-v1", "Celeb-DF-v2", "DFDC", "UADFV"],
        "",
        4,
    );
    let p = d.path().join("ffdf.toml");
    std::fs::write(&p, text).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Counts per set, dataset, label and split.
    assert!(out.contains("data pre-flight"), "{out}");
    assert!(out.lines().any(|l| l.contains("test `DFDC`") && l.contains("DFDC_Fake") && l.contains(" 8 ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("train") && l.contains("FF-real") && l.contains(" 16 ")), "{out}");
    // DFDC's flattened val is not used: a warning, not an error.
    assert!(out.contains("flattened split") && out.contains("not used by this protocol"), "{out}");

    let results = d.path().join("results");
    let (code, out) = bench(&["run", p.to_str().unwrap(), "--out", results.to_str().unwrap(), "--no-weights"]);
    assert_eq!(code, 0, "{out}");
    // The end-of-run table: AUC per test set and their mean.
    let header = out.lines().find(|l| l.starts_with("run ") && l.contains("AVG")).unwrap_or_else(|| panic!("{out}"));
    for t in ["Celeb-DF-v1", "Celeb-DF-v2", "DFDC", "UADFV"] {
        assert!(header.contains(t), "{header}");
    }
    let row = out.lines().find(|l| l.starts_with("erm-s0-")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<f64> = row.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
    assert_eq!(cells.len(), 5, "{row}");
    let mean = cells[..4].iter().sum::<f64>() / 4.0;
    assert!((mean - cells[4]).abs() < 1e-4, "AVG is the mean of the four: {row}");
    // The manifest records the frames each set used, per label.
    let run_dir = std::fs::read_dir(results.join("ffdf-cross")).unwrap().next().unwrap().unwrap().path();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "complete");
    let used = &m["data"]["frames_used"];
    assert_eq!(used["train"]["FF-real"], 16);
    assert_eq!(used["train"]["FF-DF"], 16);
    assert_eq!(used["test:DFDC"]["DFDC_Real"], 8);
    assert_eq!(used["test:UADFV"]["UADFV_Fake"], 8);
}

#[test]
fn missing_test_frames_fail_validate_and_run_before_training() {
    let (d, root) = released_root();
    for v in ["abofeumbvv", "acazlolrpz"] {
        std::fs::remove_dir_all(root.join(format!("DFDC/test/frames/{v}"))).unwrap();
    }
    let text = protocol_text(
        "missing",
        "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\ncompression = \"c23\"",
        &["DFDC"],
        "",
        2,
    );
    let p = d.path().join("missing.toml");
    std::fs::write(&p, text).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("8 of 16 frames of the test `DFDC` set")
            && out.contains("DFDC/test/frames/abofeumbvv/000.png")
            && out.contains(", ..."),
        "{out}"
    );
    let results = d.path().join("results");
    let (code, out) = bench(&["run", p.to_str().unwrap(), "--out", results.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing was trained") && out.contains("abofeumbvv"), "{out}");
    assert!(!results.join("missing").exists(), "no run directory is created: {out}");
}

#[test]
fn celeb_df_leakage_is_reported_and_can_be_dropped() {
    let (d, root) = released_root();
    let text = protocol_text(
        "celeb-in",
        "dataset = \"Celeb-DF-v2\"",
        &["Celeb-DF-v2"],
        "",
        2,
    );
    let p = d.path().join("celeb.toml");
    std::fs::write(&p, &text).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("leakage: training set and test set `Celeb-DF-v2` share 2 videos (Celeb-DF-v2/CelebDFv2_real/00000")
            && out.contains("the validation set is test set `Celeb-DF-v2`")
            && out.contains("train.drop_overlap = true"),
        "{out}"
    );
    // drop_overlap removes exactly the shared videos.
    let protocol = harness::protocol::load_str(
        &text.replacen("dataset = \"Celeb-DF-v2\"\n", "dataset = \"Celeb-DF-v2\"\ndrop_overlap = true\n", 1),
        &p,
    )
    .unwrap();
    let runs = harness::plan::expand(&protocol);
    let c = &runs[0].config;
    assert!(c.train.drop_overlap);
    let all = preflight::load_index(c, &root, "Celeb-DF-v2", 4).unwrap();
    let train = preflight::select_train(&all, c).unwrap();
    let test = preflight::select_test(&all, &c.tests[0]).unwrap();
    let (kept, dropped) = preflight::drop_overlap(&train, &[&test]);
    assert_eq!(dropped, 2);
    let kept_videos: std::collections::BTreeSet<&str> = kept.entries.iter().map(|e| e.video.as_str()).collect();
    assert_eq!(kept_videos, ["00002", "id0_id1_0000", "id0_id2_0000"].into_iter().collect());
    assert!(preflight::overlap(&kept, &test).videos.is_empty());
    // The option is part of the run id only when set.
    let plain = harness::plan::expand(&harness::protocol::load_str(&text, &p).unwrap());
    assert_ne!(plain[0].id, runs[0].id);
    assert!(!harness::plan::canonical_json(&plain[0].config).contains("drop_overlap"));
}

/// The new protocol keys (`data.path_map`, `train.drop_overlap`) stay out of the run ids when
/// unset: every shipped protocol expands to the ids that the code before them gave
/// (`fixtures/shipped_run_ids.txt`, written by `bench validate` of the previous commit).
#[test]
fn shipped_run_ids_are_unchanged() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pinned = std::fs::read_to_string(repo.join("harness/tests/fixtures/shipped_run_ids.txt")).unwrap();
    let mut expected: Vec<(String, String)> = pinned
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(p, id)| (p.to_string(), id.to_string())))
        .collect();
    expected.sort();
    let mut got = Vec::new();
    for entry in std::fs::read_dir(repo.join("protocols")).unwrap() {
        let f = entry.unwrap().path();
        if f.extension().is_some_and(|x| x == "toml") {
            let p = harness::protocol::load(&f).unwrap();
            got.extend(harness::plan::expand(&p).into_iter().map(|r| (p.name.clone(), r.id)));
        }
    }
    got.sort();
    assert_eq!(got.len(), 247);
    assert_eq!(got, expected);
}

#[test]
fn labels_the_data_lacks_are_warned_about() {
    // FF-DF.json standing in for FaceForensics++: the protocol's default fakes are FF-DF,
    // FF-F2F, FF-FS and FF-NT, the data has only FF-DF.
    let (d, root) = released_root();
    std::fs::copy(root.join("dataset_json/FF-DF.json"), root.join("dataset_json/FaceForensics++.json")).unwrap();
    let text = protocol_text("ffpp", "dataset = \"FaceForensics++\"", &["DFDC"], "", 2);
    let p = d.path().join("ffpp.toml");
    std::fs::write(&p, text).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: the train set (dataset FaceForensics++ split train) has no `FF-F2F`, `FF-FS`, `FF-NT`"),
        "{out}"
    );
}

#[test]
fn path_map_and_drop_overlap_are_checked_like_every_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let p = dir.path().join("p.toml");
    let text = protocol_text("x", "dataset = \"UADFV\"\ndrop_overlap = \"yes\"", &["UADFV"], "", 2)
        .replace(&format!("path_map = {{ \"{PREFIX}\" = \"\" }}"), "path_map = { \"/a\" = 3, \"\" = \"b\" }");
    let errs = harness::protocol::load_str(&text, &p).unwrap_err().to_string();
    assert!(errs.contains("data.path_map./a") || errs.contains("data.path_map.\"/a\""), "{errs}");
    assert!(errs.contains("empty prefix") && errs.contains("train.drop_overlap"), "{errs}");
    let synth = "name = \"s\"\nseeds = [0]\n[data]\nformat = \"synthetic\"\npath_map = { \"/a\" = \"\" }\n[train]\ndataset = \"UADFV\"\n[[test]]\ndataset = \"UADFV\"\n[methods.O]\nkind = \"erm\"\n";
    let errs = harness::protocol::load_str(synth, &p).unwrap_err().to_string();
    assert!(errs.contains("`path_map` is not used with format = \"synthetic\""), "{errs}");
}

#[test]
fn quirks_a_protocol_reads_are_warnings_or_errors_as_they_deserve() {
    let (d, root) = released_root();
    // A flattened split that a test set reads: one video, with a warning saying who uses it.
    let text = protocol_text("flat", "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\ncompression = \"c23\"", &["DFDC"], "", 2)
        .replace("dataset = \"DFDC\"\nsplit = \"test\"", "dataset = \"DFDC\"\nsplit = \"val\"");
    let p = d.path().join("flat.toml");
    std::fs::write(&p, text).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read as one video (used by the test `DFDC` set)"), "{out}");
    assert!(
        out.contains("the test `DFDC` set (dataset DFDC split val) has no `DFDC_Fake` (the protocol asks for them; one class: its AUC, EER and AP are undefined)"),
        "{out}"
    );

    // A malformed split: an error naming the key when a set reads it, a warning when none does.
    let json = root.join("dataset_json/FF-DF.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    v["FF-DF"]["FF-DF"]["test"]["c23"]["077_078"]["frames"] = json!("not a list");
    std::fs::write(&json, v.to_string()).unwrap();
    let in_domain = protocol_text("bad", "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\ncompression = \"c23\"", &["FF-DF"], "", 2)
        .replace("dataset = \"FF-DF\"\nsplit = \"test\"", "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\nsplit = \"test\"");
    let p = d.path().join("bad.toml");
    std::fs::write(&p, &in_domain).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"error: "#)
            && out.contains(r#"at $["FF-DF"]["FF-DF"]["test"]["c23"]["077_078"]["frames"]: expected an array"#)
            && out.contains("the test `FF-DF` set needs it: fix the JSON"),
        "{out}"
    );
    let cross = protocol_text("ok", "dataset = \"FF-DF\"\nmanipulations = [\"FF-DF\"]\ncompression = \"c23\"", &["DFDC"], "", 2);
    std::fs::write(&p, &cross).unwrap();
    let (code, out) = bench(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#"["077_078"]["frames"]: expected an array; the test split of FF-DF is skipped (not used by this protocol)"#), "{out}");
}

#[test]
fn drop_overlap_trains_without_the_shared_videos() {
    let (d, _root) = released_root();
    let text = protocol_text("celeb-drop", "dataset = \"Celeb-DF-v2\"\ndrop_overlap = true", &["Celeb-DF-v2"], "", 2);
    let p = d.path().join("drop.toml");
    std::fs::write(&p, text).unwrap();
    let results = d.path().join("results");
    let (code, out) = bench(&["run", p.to_str().unwrap(), "--out", results.to_str().unwrap(), "--no-weights"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("train.drop_overlap = true: 2 overlapping videos are dropped from training"), "{out}");
    let run_dir = std::fs::read_dir(results.join("celeb-drop")).unwrap().next().unwrap().unwrap().path();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("manifest.json")).unwrap()).unwrap();
    // Real training videos 00000 and 00001 are test videos: only 00002 (4 frames) is left.
    assert_eq!(m["data"]["frames_used"]["train"]["CelebDFv2_real"], 4, "{m}");
    assert_eq!(m["data"]["frames_used"]["train"]["CelebDFv2_fake"], 8, "{m}");
    let leakage: Vec<&str> = m["data"]["leakage"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(leakage.iter().any(|l| l.contains("2 overlapping videos dropped from training")), "{leakage:?}");
    assert!(leakage.iter().any(|l| l.contains("the validation set is test set `Celeb-DF-v2`")), "{leakage:?}");
}
