//! `bench eval` end to end: values against the scikit-learn fixtures, `--out`, and exit 2 with
//! the file, row and column named for bad input.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics").join(name)
}

fn expected_case(file: &str) -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let exp: Value = serde_json::from_str(&text).unwrap();
    exp["cases"].as_array().unwrap().iter().find(|c| c["file"] == file).unwrap().clone()
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench")).arg("eval").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Metric values in the `--out` JSON (a number, or `{"undefined": ...}`) against sklearn's
/// (a number, or null).
fn assert_set(got: &Value, want: &Value, what: &str) {
    for k in ["n", "n_real", "n_fake"] {
        assert_eq!(got[k], want[k], "{what} {k}");
    }
    for k in ["auc", "ap", "eer", "eer_interp", "acc", "acc_real", "acc_fake"] {
        match (got[k].as_f64(), want[k].as_f64()) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9, "{what} {k}: {g} vs {w}"),
            (None, None) => assert!(got[k]["undefined"].is_string(), "{what} {k}: {}", got[k]),
            (g, w) => panic!("{what} {k}: {g:?} vs {w:?}"),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn json_out_per_group_agrees_with_sklearn() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.json");
    let o = bench(&[
        fixture("groups_videos.csv").to_str().unwrap(),
        "--group",
        "dataset",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want = expected_case("groups_videos.csv");
    assert_set(&got["overall"]["frame"], &want["overall"]["frame"], "overall frame");
    assert_set(&got["overall"]["video"], &want["overall"]["video"], "overall video");
    let groups = got["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 4);
    for g in groups {
        let name = g["group"].as_str().unwrap();
        assert_set(&g["frame"], &want["groups"][name]["frame"], &format!("{name} frame"));
        assert_set(&g["video"], &want["groups"][name]["video"], &format!("{name} video"));
    }
    assert!(got["overall"]["group"].is_null());
    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.json")]);

    // The table shows the overall frame AUC to 4 decimals and explains the undefined metrics.
    let text = stdout(&o);
    let auc = want["overall"]["frame"]["auc"].as_f64().unwrap();
    assert!(text.contains(&format!("{auc:.4}")), "{text}");
    assert!(text.contains("fakes-only frame: auc, ap, eer, eer_interp: only fake samples"), "{text}");
}

#[test]
fn renamed_columns_frame_level_csv_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.csv");
    let o = bench(&[
        fixture("imbalanced.csv").to_str().unwrap(),
        "--score",
        "prob",
        "--label",
        "y",
        "--level",
        "frame",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = expected_case("imbalanced.csv");
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    let headers = rdr.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1, "frame level only, no groups");
    let get = |k: &str| &rows[0][headers.iter().position(|h| h == k).unwrap()];
    assert_eq!(get("group"), "(overall)");
    assert_eq!(get("level"), "frame");
    for k in ["auc", "ap", "eer", "eer_interp", "acc", "acc_real", "acc_fake"] {
        let g: f64 = get(k).parse().unwrap();
        let w = want["overall"]["frame"][k].as_f64().unwrap();
        assert!((g - w).abs() <= 1e-9, "{k}: {g} vs {w}");
    }
    assert_eq!(get("n"), "900");
}

#[test]
fn without_a_video_column_frame_metrics_and_a_note_that_video_level_was_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.json");
    let o = bench(&[fixture("ties_small.csv").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("ties_small.csv") && e.contains("video-level metrics were skipped"), "{e}");
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(got["level"], "frame");
    assert!(got["video_skipped"].as_str().unwrap().contains("no `video` column"));
    assert!(got["overall"].get("video").is_none(), "{got}");
    // The same frame metrics as asking for the frame level explicitly.
    let explicit = tmp.path().join("f.json");
    let o = bench(&[fixture("ties_small.csv").to_str().unwrap(), "--level", "frame", "--out", explicit.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("skipped"), "{}", stderr(&o));
    let frame: serde_json::Value = serde_json::from_slice(&std::fs::read(&explicit).unwrap()).unwrap();
    assert_eq!(got["overall"]["frame"], frame["overall"]["frame"]);
    // Asking for the video level (or naming a video column) without the column is still an error.
    for args in [vec!["--level", "video"], vec!["--level", "both"], vec!["--video", "clip"]] {
        let mut a = vec![fixture("ties_small.csv").to_str().unwrap().to_owned()];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = bench(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("ties_small.csv") && e.contains("no column `") && e.contains("--level frame"), "{e}");
    }
}

#[test]
fn bad_input_exits_2_naming_file_row_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: Vec<(PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            write(d, "nonnum.csv", "video,label,score\na,0,0.1\nb,1,0.9\nc,1,high\n"),
            vec![],
            vec!["nonnum.csv", "row 3", "column `score`", "`high` is not a number"],
        ),
        (
            write(d, "nan.csv", "video,label,score\na,0,NaN\n"),
            vec![],
            vec!["nan.csv", "row 1", "column `score`", "not a finite number"],
        ),
        (
            write(d, "label.csv", "video,label,score\na,0,0.1\nb,2,0.9\n"),
            vec![],
            vec!["label.csv", "row 2", "column `label`", "`2` is not 0 (real) or 1 (fake)"],
        ),
        (
            write(d, "nolabel.csv", "video,lable,score\na,0,0.1\n"),
            vec![],
            vec!["nolabel.csv", "no column `label`", "did you mean `lable`?"],
        ),
        (
            write(d, "nogroup.csv", "video,label,score\na,0,0.1\n"),
            vec!["--group", "dataset"],
            vec!["nogroup.csv", "no column `dataset` (named by --group)"],
        ),
        (
            write(d, "ragged.csv", "video,label,score\na,0,0.1\nb,1\n"),
            vec![],
            vec!["ragged.csv", "row 2", "malformed CSV"],
        ),
        (
            write(d, "novideo.csv", "video,label,score\na,0,0.1\n,1,0.2\n"),
            vec![],
            vec!["novideo.csv", "row 2", "column `video`", "empty video name"],
        ),
        (d.join("absent.csv"), vec![], vec!["absent.csv", "cannot read"]),
        (
            write(d, "ok.csv", "video,label,score\na,0,0.1\n"),
            vec!["--out", "m.txt"],
            vec!["m.txt", "expected a file name ending in .json or .csv"],
        ),
    ];
    for (path, extra, needles) in cases {
        let mut args = vec![path.to_str().unwrap()];
        args.extend(extra);
        let o = bench(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {e}", path.display());
        for n in needles {
            assert!(e.contains(n), "{}: `{n}` not in {e}", path.display());
        }
    }
}

#[test]
fn header_only_file_reports_undefined() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "empty.csv", "video,label,score\n");
    let out = tmp.path().join("m.json");
    let o = bench(&[p.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(got["overall"]["frame"]["n"], 0);
    assert!(got["overall"]["frame"]["auc"]["undefined"].as_str().unwrap().contains("empty"));
}
