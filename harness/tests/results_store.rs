//! Results store: round trips, atomicity and errors that name the file.
use std::collections::BTreeMap;
use std::fs;

use harness::results::{
    self, Failure, GitInfo, Level, Manifest, MetricRow, ReportSpec, ResultsStore, Role, RunDir, RunStatus,
    ScoreRow, TraceRow, Versions,
};

fn manifest(id: &str, status: RunStatus) -> Manifest {
    let mut sweep = BTreeMap::new();
    sweep.insert("method.uvs.c".to_string(), serde_json::json!(0.5));
    Manifest {
        run_id: id.into(),
        protocol: "cross_dataset".into(),
        method: "cs-dfd".into(),
        method_kind: "cs-dfd".into(),
        display: "CS-DFD".into(),
        backbone: "meso4".into(),
        seed: 3,
        fold: Some("DF".into()),
        sweep,
        config: serde_json::json!({"train": {"steps": 10, "lr": 1e-3}}),
        status,
        failure: (status == RunStatus::Failed)
            .then(|| Failure { step: Some(7), reason: "loss is NaN".into() }),
        git: GitInfo {
            commit: Some("abc123".into()),
            dirty: Some(false),
            build_commit: Some("def456".into()),
            build_dirty: Some(true),
        },
        versions: Versions { dfbench: "0.1.0".into(), candle: Some("0.11.1".into()), rustc: None, crates: Default::default() },
        device: "cpu".into(),
        precision: Some("f32".into()),
        tf32: None,
        host: "test-host".into(),
        started: Some("2026-11-22T20:00:00Z".into()),
        ended: None,
        skipped_files: [("test/celebdf".to_string(), 2u64)].into_iter().collect(),
        notes: vec!["a note".into()],
        report: ReportSpec {
            baseline: Some("o".into()),
            tables: vec!["csdfd-table1".into()],
            plots: vec!["roc".into()],
            noise_floor: Vec::new(),
        },
        files: Default::default(),
        data: Default::default(),
    }
}

fn traces() -> Vec<TraceRow> {
    vec![
        TraceRow {
            step: 0,
            loss: Some(1.5),
            l1: Some(0.7),
            l2: Some(0.8),
            cos_g1_g2: Some(-0.2),
            lr: Some(1e-3),
            ..Default::default()
        },
        TraceRow { step: 0, domain: Some("DF".into()), loss: Some(0.4), ..Default::default() },
        TraceRow {
            step: 1,
            domain: None,
            loss: Some(1.25),
            l1: Some(0.6),
            l2: Some(0.65),
            cos_g1_g2: Some(0.1),
            norm_g1: Some(2.0),
            norm_g2: Some(3.0),
            norm_update: Some(2.5),
            mu1: Some(0.4),
            mu2: Some(0.6),
            lr: Some(9e-4),
            wall_s: Some(0.125),
            cgr_rel: Some(2.5e-8),
        },
    ]
}

fn scores() -> Vec<ScoreRow> {
    (0..6)
        .map(|i| ScoreRow {
            test_set: if i < 3 { "ffpp" } else { "celebdf" }.into(),
            dataset: "FF-DF".into(),
            label: (i % 2) as u8,
            label_name: if i % 2 == 1 { "fake" } else { "real" }.into(),
            video: format!("00{}", i / 2),
            frame: format!("{i:03}.png"),
            score: i as f64 / 7.0,
        })
        .collect()
}

fn metrics() -> Vec<MetricRow> {
    vec![
        MetricRow {
            test_set: "ffpp".into(),
            role: Role::InDomain,
            level: Level::Frame,
            auc: Some(0.9),
            ap: Some(0.8),
            eer: Some(0.1),
            eer_interp: Some(0.11),
            acc: Some(0.7),
            acc_real: Some(0.6),
            acc_fake: Some(0.8),
            undefined_reason: None,
            n: 10,
            n_real: 5,
            n_fake: 5,
        },
        MetricRow {
            test_set: "onlyfake".into(),
            role: Role::Unseen,
            level: Level::Video,
            auc: None,
            ap: None,
            eer: None,
            eer_interp: None,
            acc: Some(1.0),
            acc_real: None,
            acc_fake: Some(1.0),
            undefined_reason: Some("one class only (fake)".into()),
            n: 4,
            n_real: 0,
            n_fake: 4,
        },
    ]
}

#[test]
fn write_then_read_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ResultsStore::new(tmp.path().join("runs"));
    let run = store.create("cross_dataset", "cs-dfd-s3").unwrap();
    assert_eq!(run.path(), tmp.path().join("runs/cross_dataset/cs-dfd-s3"));
    let m = manifest("cs-dfd-s3", RunStatus::Complete);
    run.write_manifest(&m).unwrap();
    run.write_trace(&traces()).unwrap();
    run.write_scores(&scores()).unwrap();
    run.write_metrics(&metrics()).unwrap();
    assert_eq!(run.read_manifest().unwrap(), m);
    assert_eq!(run.read_trace().unwrap(), traces());
    assert_eq!(run.read_scores().unwrap(), scores());
    assert_eq!(run.read_metrics().unwrap(), metrics());
    assert!(run.is_complete());
    // The CSV twin: header in the documented order, nulls as empty fields.
    let csv = fs::read_to_string(run.file(results::METRICS_CSV_FILE)).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "test_set,role,level,auc,ap,eer,eer_interp,acc,acc_real,acc_fake,undefined_reason,n,n_real,n_fake"
    );
    assert!(lines.next().unwrap().starts_with("ffpp,in-domain,frame,0.9,"));
    assert!(
        lines.next().unwrap().starts_with("onlyfake,unseen,video,,,,,1.0,,1.0,one class only (fake),4,0,4")
    );
    // Empty tables round-trip too.
    run.write_trace(&[]).unwrap();
    assert!(run.read_trace().unwrap().is_empty());
    // The manifest is plain JSON with the documented status words.
    let text = fs::read_to_string(run.file(results::MANIFEST_FILE)).unwrap();
    assert!(text.contains("\"status\": \"complete\""), "{text}");
    let listed = store.list_runs("cross_dataset").unwrap();
    assert_eq!(listed, vec![RunDir::open(run.path()).unwrap()]);
}

#[test]
fn completeness_and_leftover_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = RunDir::create(root, "p", "a").unwrap();
    let b = RunDir::create(root, "p", "b").unwrap();
    let c = RunDir::create(root, "p", "c").unwrap();
    a.write_manifest(&manifest("a", RunStatus::Complete)).unwrap();
    b.write_manifest(&manifest("b", RunStatus::Running)).unwrap();
    c.write_manifest(&manifest("c", RunStatus::Failed)).unwrap();
    assert!(results::is_complete(a.path()));
    assert!(!results::is_complete(b.path()));
    assert!(!results::is_complete(c.path()));
    // A crash mid-write leaves a hidden temporary file: ignored by readers and listings.
    fs::write(a.path().join(".manifest.json.tmp-999-0"), "{\"status\": \"fail").unwrap();
    fs::create_dir(root.join("p/.tmp-run")).unwrap();
    fs::write(root.join("p/stray.txt"), "x").unwrap();
    assert!(a.is_complete());
    assert_eq!(a.read_manifest().unwrap().run_id, "a");
    let names: Vec<String> = results::list_runs(&root.join("p")).unwrap().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    // No temporary file survives a successful write.
    let hidden: Vec<_> = fs::read_dir(b.path()).unwrap().filter_map(|e| e.ok()).collect();
    assert!(hidden.iter().all(|e| !e.file_name().to_string_lossy().starts_with('.')));
    // A truncated or missing manifest is not complete.
    let text = fs::read_to_string(a.file("manifest.json")).unwrap();
    fs::write(a.file("manifest.json"), &text[..text.len() / 2]).unwrap();
    assert!(!a.is_complete());
    let err = format!("{:#}", a.read_manifest().unwrap_err());
    assert!(err.contains("manifest.json") && err.contains("not a valid manifest"), "{err}");
    fs::remove_file(a.file("manifest.json")).unwrap();
    assert!(!a.is_complete());
    // The constructor's defaults: running, not complete, this crate's version.
    let fresh = Manifest::new("d", "p", "o", "erm", "O", "meso4", 0);
    assert_eq!(fresh.status, RunStatus::Running);
    assert!(!fresh.is_complete() && !fresh.versions.dfbench.is_empty());
    let d = RunDir::create(root, "p", "d").unwrap();
    d.write_manifest(&fresh).unwrap();
    assert!(!d.is_complete());
    d.write_manifest(&Manifest { status: RunStatus::Complete, ..fresh }).unwrap();
    assert!(d.is_complete());
    // Bad names are refused instead of escaping the store.
    assert!(RunDir::create(root, "p", "../x").is_err());
    assert!(RunDir::create(root, "", "x").is_err());
}

#[test]
fn trace_files_from_before_cgr_rel_read_with_it_null() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "p", "r").unwrap();
    let mut old = results::trace_frame(&traces()).unwrap().drop("cgr_rel").unwrap();
    let f = fs::File::create(run.file("trace.parquet")).unwrap();
    ParquetWriter::new(f).finish(&mut old).unwrap();
    let want: Vec<TraceRow> = traces().into_iter().map(|r| TraceRow { cgr_rel: None, ..r }).collect();
    assert_eq!(run.read_trace().unwrap(), want);
}

#[test]
fn errors_name_the_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "p", "r").unwrap();
    let err = format!("{:#}", run.read_scores().unwrap_err());
    assert!(err.contains("scores.parquet") && err.contains("cannot open"), "{err}");
    fs::write(run.file("metrics.parquet"), b"not parquet at all").unwrap();
    let err = format!("{:#}", run.read_metrics().unwrap_err());
    assert!(err.contains("metrics.parquet") && err.contains("parquet"), "{err}");
    // A parquet file with the wrong columns: the trace table stored as scores.
    run.write_trace(&traces()).unwrap();
    fs::copy(run.file("trace.parquet"), run.file("scores.parquet")).unwrap();
    let err = format!("{:#}", run.read_scores().unwrap_err());
    assert!(err.contains("scores.parquet") && err.contains("missing column `test_set`"), "{err}");
    // Out-of-range label.
    let mut bad = scores();
    bad[0].label = 2;
    run.write_scores(&bad).unwrap();
    let err = format!("{:#}", run.read_scores().unwrap_err());
    assert!(err.contains("scores.parquet") && err.contains("row 0") && err.contains("label"), "{err}");
}

#[test]
fn manifests_written_before_the_build_commit_was_recorded_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ResultsStore::new(tmp.path().join("runs"));
    let run = store.create("cross_dataset", "o-s0").unwrap();
    run.write_manifest(&manifest("o-s0", RunStatus::Complete)).unwrap();
    let path = run.path().join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let git = json["git"].as_object_mut().unwrap();
    assert!(git.remove("build_commit").is_some() && git.remove("build_dirty").is_some());
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let read = run.read_manifest().unwrap();
    assert_eq!(read.git.commit.as_deref(), Some("abc123"));
    assert_eq!((read.git.build_commit, read.git.build_dirty), (None, None));
}
