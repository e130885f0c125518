//! Statistics over training runs in `bench report`: fixture runs whose AUCs are set by hand, so
//! that every paired difference, t interval, noise floor and verdict is known in advance.
use std::fs;
use std::path::Path;

use harness::report::{ReportArgs, generate};
use harness::results::{Level, Manifest, MetricRow, ReportSpec, ResultsStore, Role, RunStatus, ScoreRow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SETS: [(&str, Role); 3] = [("ffpp", Role::InDomain), ("celebdf", Role::Unseen), ("dfdc", Role::Unseen)];
const SEEDS: [u64; 5] = [0, 1, 2, 3, 4];
/// scipy.stats.t.ppf(0.975, 4).
const T975_4: f64 = 2.776_445_105_197_798_7;

/// Baseline AUC of seed `s` on test set `i`: varies with the seed by several points, as real runs do.
fn base_auc(i: usize, s: u64) -> f64 {
    0.70 + 0.02 * i as f64 + [0.00, 0.06, -0.05, 0.03, -0.04][s as usize]
}

/// Difference of each method to the baseline, per test set index and seed.
fn delta(method: &str, i: usize, s: u64) -> f64 {
    match method {
        "base" => 0.0,
        // Better in every seed by 3 points, give or take 0.5.
        "better" => 0.03 + [0.005, -0.005, 0.0, 0.002, -0.002][s as usize],
        // Sign flips with the seed.
        "flip" => [0.05, -0.04, 0.03, -0.05, 0.01][s as usize],
        // Rounding-level twin of the baseline: tiny differences of either sign.
        "twin" => [0.004, -0.006, 0.002, 0.008, -0.004][s as usize] * (1.0 + i as f64 / 10.0),
        // Consistently 0.3 points better: the t interval excludes 0, but it is within the floor.
        "tiny" => 0.003 + [0.0002, -0.0002, 0.0, 0.0001, -0.0001][s as usize],
        _ => unreachable!(),
    }
}

fn write_run(store: &ResultsStore, method: &str, seed: u64, report: &ReportSpec) {
    let id = format!("{method}-s{seed}");
    let run = store.create("seeds", &id).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed * 31 + method.len() as u64);
    let mut scores = Vec::new();
    let mut metrics = Vec::new();
    for (i, &(ts, role)) in SETS.iter().enumerate() {
        for v in 0..12 {
            let label = u8::from(v >= 6);
            for f in 0..2 {
                scores.push(ScoreRow {
                    test_set: ts.into(),
                    dataset: ts.into(),
                    label,
                    label_name: if label == 1 { "fake".into() } else { "real".into() },
                    video: format!("{v:03}"),
                    frame: format!("{f:03}.png"),
                    score: rng.random::<f64>() + 0.5 * label as f64,
                });
            }
        }
        // The reported AUC is the runs' own (metrics.parquet): set it by hand.
        let auc = base_auc(i, seed) + delta(method, i, seed);
        for level in [Level::Frame, Level::Video] {
            metrics.push(MetricRow {
                test_set: ts.into(),
                role,
                level,
                auc: Some(auc),
                ap: Some(auc),
                eer: Some(1.0 - auc),
                eer_interp: Some(1.0 - auc),
                acc: Some(auc),
                acc_real: Some(auc),
                acc_fake: Some(auc),
                undefined_reason: None,
                n: 24,
                n_real: 12,
                n_fake: 12,
            });
        }
    }
    let mut m = Manifest {
        run_id: id.clone(),
        protocol: "seeds".into(),
        method: method.into(),
        method_kind: "erm".into(),
        display: method.to_uppercase(),
        backbone: "meso4".into(),
        seed,
        fold: None,
        sweep: Default::default(),
        config: serde_json::json!({"method": method}),
        status: RunStatus::Complete,
        failure: None,
        git: Default::default(),
        versions: Default::default(),
        device: "cpu".into(),
        precision: None,
        tf32: None,
        host: "fixture".into(),
        started: None,
        ended: None,
        skipped_files: Default::default(),
        notes: vec![],
        report: report.clone(),
        files: Default::default(),
        data: Default::default(),
    };
    run.write_trace(&[]).unwrap();
    run.write_scores(&scores).unwrap();
    run.write_metrics(&metrics).unwrap();
    m.files = run.digest_files(false).unwrap();
    run.write_manifest(&m).unwrap();
}

fn fixture(root: &Path, noise_floor: &[&str]) -> std::path::PathBuf {
    let store = ResultsStore::new(root.join("runs"));
    let report = ReportSpec {
        baseline: Some("base".into()),
        tables: vec!["csdfd-table1".into()],
        plots: vec![],
        noise_floor: noise_floor.iter().map(|s| s.to_string()).collect(),
    };
    for method in ["base", "better", "flip", "twin", "tiny"] {
        for s in SEEDS {
            write_run(&store, method, s, &report);
        }
    }
    root.join("runs/seeds")
}

fn args(dir: &Path, out: &Path) -> ReportArgs {
    ReportArgs {
        dir: dir.into(),
        out: Some(out.into()),
        baseline: None,
        bootstrap: 200,
        seed: 0,
        level: "frame".into(),
        allow_damaged: false,
        protocol: None,
        only: Vec::new(),
        noise_floor: Vec::new(),
    }
}

/// seed-diff.csv rows keyed by (method, test set).
fn diff_rows(out: &Path) -> std::collections::BTreeMap<(String, String), csv::StringRecord> {
    let mut r = csv::Reader::from_path(out.join("tables/seed-diff.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let (mi, ti) = (h.iter().position(|x| x == "method").unwrap(), h.iter().position(|x| x == "test_set").unwrap());
    r.records().map(|x| x.unwrap()).map(|x| ((x[mi].to_string(), x[ti].to_string()), x)).collect()
}

fn col(out: &Path, name: &str) -> usize {
    let mut r = csv::Reader::from_path(out.join("tables/seed-diff.csv")).unwrap();
    r.headers().unwrap().iter().position(|x| x == name).unwrap()
}

#[test]
fn paired_differences_intervals_and_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), &["base", "twin"]);
    let out = tmp.path().join("report");
    generate(&args(&dir, &out)).unwrap();
    let rows = diff_rows(&out);
    let (c_mean, c_lo, c_hi, c_v, c_diffs, c_floor) = (
        col(&out, "mean"),
        col(&out, "t_lo"),
        col(&out, "t_hi"),
        col(&out, "verdict"),
        col(&out, "diffs"),
        col(&out, "noise_floor"),
    );
    let num = |r: &csv::StringRecord, c: usize| r[c].parse::<f64>().unwrap();

    // Hand computation of the t interval for `better` on celebdf (index 1).
    let d: Vec<f64> = SEEDS.iter().map(|&s| delta("better", 1, s)).collect();
    let mean = d.iter().sum::<f64>() / 5.0;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
    let half = T975_4 * sd / 5f64.sqrt();
    let r = &rows[&("better".to_string(), "celebdf".to_string())];
    assert!((num(r, c_mean) - 0.03).abs() < 1e-12, "{r:?}");
    assert!((num(r, c_lo) - (mean - half)).abs() < 1e-9 && (num(r, c_hi) - (mean + half)).abs() < 1e-9);
    assert_eq!(&r[c_v], "resolved");
    let got: Vec<f64> = r[c_diffs].split(';').map(|x| x.parse().unwrap()).collect();
    for (g, w) in got.iter().zip(&d) {
        assert!((g - w).abs() < 1e-12);
    }
    // AVG over the two unseen sets, and in-domain: better everywhere.
    for ts in ["ffpp", "AVG"] {
        assert_eq!(&rows[&("better".to_string(), ts.to_string())][c_v], "resolved", "{ts}");
    }
    // A sign that flips with the seed is not resolved, whatever DeLong says per seed.
    for ts in ["ffpp", "celebdf", "dfdc", "AVG"] {
        assert_eq!(&rows[&("flip".to_string(), ts.to_string())][c_v], "not resolved", "{ts}");
    }

    // Noise floor: RMS of the twin's per-seed differences, hand-computed per test set.
    for (i, ts) in ["ffpp", "celebdf", "dfdc"].iter().enumerate() {
        let tw: Vec<f64> = SEEDS.iter().map(|&s| delta("twin", i, s)).collect();
        let rms = (tw.iter().map(|x| x * x).sum::<f64>() / 5.0).sqrt();
        let r = &rows[&("tiny".to_string(), ts.to_string())];
        assert!((num(r, c_floor) - rms).abs() < 1e-12, "{ts}: {r:?} vs {rms}");
        // 0.3 points, consistent over seeds: the interval excludes 0, but it is rounding-sized.
        assert!(num(r, c_lo) > 0.0);
        assert_eq!(&r[c_v], "inside noise floor", "{ts}");
    }
    // The twin makes the floor: its own rows carry no verdict, whatever its interval.
    for ts in ["ffpp", "celebdf", "dfdc", "AVG"] {
        assert_eq!(&rows[&("twin".to_string(), ts.to_string())][c_v], "noise-floor twin", "{ts}");
    }
    let floor_md = fs::read_to_string(out.join("tables/noise-floor.md")).unwrap();
    assert!(floor_md.contains("TWIN against BASE"), "{floor_md}");
    let tw: Vec<f64> = SEEDS.iter().map(|&s| delta("twin", 1, s) * 100.0).collect();
    let rms = (tw.iter().map(|x| x * x).sum::<f64>() / 5.0).sqrt();
    assert!(floor_md.contains(&format!("| {rms:.2} |")), "{floor_md}");

    // Hierarchical intervals for every method and test set (their coverage is tested in
    // report_stats; here the hand-set AUCs do not come from the fixture's scores).
    let seed_ci = fs::read_to_string(out.join("tables/seed-ci.md")).unwrap();
    assert!(seed_ci.contains("hierarchical bootstrap"));
    let cells: usize = seed_ci
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
        .map(|l| l.matches(" [").count())
        .sum();
    assert_eq!(cells, 5 * 3, "{seed_ci}");

    // The README ends with the new section; DeLong is labelled for what it measures.
    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    let at = readme.find("## Statistics over training runs").expect("section");
    assert!(readme[at..].contains("Differences against BASE over training runs"));
    assert!(readme[at..].contains("Noise floor: TWIN against BASE"));
    assert!(readme.contains("test-set sampling for one fixed model per seed"));
    for f in ["tables/seed-diff.md", "tables/seed-diff.tex", "tables/noise-floor.csv", "tables/seed-ci.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Byte-identical on regeneration.
    let before = fs::read(out.join("tables/seed-ci.md")).unwrap();
    generate(&args(&dir, &out)).unwrap();
    assert_eq!(before, fs::read(out.join("tables/seed-ci.md")).unwrap());
}

#[test]
fn without_a_twin_pair_rounding_differences_look_resolved_and_the_flag_sets_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path(), &[]);
    let out = tmp.path().join("report");
    generate(&args(&dir, &out)).unwrap();
    let c_v = col(&out, "verdict");
    // No floor known: the consistent 0.3-point difference counts as resolved (and the notes say so).
    assert_eq!(&diff_rows(&out)[&("tiny".to_string(), "celebdf".to_string())][c_v], "resolved");
    assert!(!out.join("tables/noise-floor.md").exists());
    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("No noise floor is measured here"));

    // --noise-floor sets the pair without touching the runs.
    let mut a = args(&dir, &out);
    a.noise_floor = vec!["base".into(), "twin".into()];
    generate(&a).unwrap();
    assert_eq!(&diff_rows(&out)[&("tiny".to_string(), "celebdf".to_string())][c_v], "inside noise floor");

    // A pair without runs is a usage error naming what is missing.
    a.noise_floor = vec!["base".into(), "nosuch".into()];
    let e = format!("{:#}", generate(&a).unwrap_err());
    assert!(e.contains("--noise-floor") && e.contains("nosuch"), "{e}");
}

/// `report.noise_floor` and a twin method block leave every other run id as it was: the shipped
/// cross_dataset protocol, which has a CS-DFD twin of O+S (UVS and CGR off: the update is g1 + g2,
/// as O+S's), expands to the ids of the same protocol without the twin plus one twin run per seed,
/// and all of them are pinned.
#[test]
fn noise_floor_key_and_twin_block_keep_run_ids() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = fs::read_to_string(repo.join("protocols/cross_dataset.toml")).unwrap();
    let block = "[methods.\"O+S twin\"]\nkind = \"cs-dfd\"\nuvs = false\ncgr = false\n";
    let floor = "noise_floor = [\"O+S\", \"O+S twin\"]\n";
    assert!(text.contains(block) && text.contains(floor), "the shipped protocol has its twin");
    let plain = text.replace(block, "").replace(floor, "");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
    fs::write(&a, &plain).unwrap();
    fs::write(&b, &text).unwrap();
    let pa = harness::protocol::load(&a).unwrap_or_else(|e| panic!("{e:?}"));
    let pb = harness::protocol::load(&b).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(pa.report.noise_floor.is_empty());
    assert_eq!(pb.report.noise_floor, vec!["O+S".to_string(), "O+S twin".to_string()]);
    let ids_a: Vec<String> = harness::plan::expand(&pa).into_iter().map(|r| r.id).collect();
    let ids_b: Vec<String> = harness::plan::expand(&pb).into_iter().map(|r| r.id).collect();
    let pinned = fs::read_to_string(repo.join("harness/tests/fixtures/shipped_run_ids.txt")).unwrap();
    for id in &ids_a {
        assert!(ids_b.contains(id), "{id} changed");
    }
    for id in &ids_b {
        assert!(pinned.lines().any(|l| l == format!("{} {id}", pb.name)), "{id} not pinned");
    }
    assert_eq!(ids_b.len(), ids_a.len() + ids_a.len() / 5, "one twin run per seed");
}
