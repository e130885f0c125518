//! `bench report` on fixture results built with the store API from a seeded generator: table
//! numbers against a direct computation, valid plots, byte-identical regeneration.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::report::{ReportArgs, generate};
use harness::results::{
    Failure, Level, Manifest, MetricRow, ReportSpec, ResultsStore, Role, RunStatus, ScoreRow, TraceRow,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// O(m n) Mann-Whitney AUC, independent of harness::stats.
fn brute_auc(s: &[f64], l: &[u8]) -> Option<f64> {
    let (mut num, mut m, mut n) = (0.0, 0usize, 0usize);
    for i in 0..s.len() {
        if l[i] == 1 {
            m += 1;
        } else {
            n += 1;
        }
        for j in 0..s.len() {
            if l[i] == 1 && l[j] == 0 {
                num += if s[i] > s[j] {
                    1.0
                } else if s[i] == s[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    (m > 0 && n > 0).then(|| num / (m * n) as f64)
}

struct Spec<'a> {
    method: &'a str,
    display: &'a str,
    backbone: &'a str,
    seed: u64,
    fold: Option<&'a str>,
    sweep: Option<(&'a str, serde_json::Value)>,
    test_sets: &'a [(&'a str, Role)],
    status: RunStatus,
    report: ReportSpec,
}

fn metric_rows(scores: &[ScoreRow], test_sets: &[(&str, Role)]) -> Vec<MetricRow> {
    let mut out = Vec::new();
    for &(ts, role) in test_sets {
        for level in [Level::Frame, Level::Video] {
            let (mut s, mut l) = (Vec::new(), Vec::new());
            if level == Level::Frame {
                for r in scores.iter().filter(|r| r.test_set == ts) {
                    s.push(r.score);
                    l.push(r.label);
                }
            } else {
                let mut v: BTreeMap<(u8, String, String), Vec<f64>> = BTreeMap::new();
                for r in scores.iter().filter(|r| r.test_set == ts) {
                    v.entry((r.label, r.label_name.clone(), r.video.clone())).or_default().push(r.score);
                }
                for ((lab, _, _), xs) in v {
                    s.push(xs.iter().sum::<f64>() / xs.len() as f64);
                    l.push(lab);
                }
            }
            let acc =
                s.iter().zip(&l).filter(|(x, y)| (**x > 0.5) == (**y == 1)).count() as f64 / s.len() as f64;
            let n_fake = l.iter().filter(|&&x| x == 1).count() as u64;
            out.push(MetricRow {
                test_set: ts.into(),
                role,
                level,
                auc: brute_auc(&s, &l),
                ap: Some(0.5 + acc / 3.0),
                eer: Some(1.0 - acc),
                eer_interp: Some(1.0 - acc),
                acc: Some(acc),
                acc_real: Some(acc),
                acc_fake: Some(acc),
                undefined_reason: None,
                n: s.len() as u64,
                n_real: s.len() as u64 - n_fake,
                n_fake,
            });
        }
    }
    out
}

fn write_run(store: &ResultsStore, protocol: &str, sp: &Spec) -> String {
    let mut id = format!("{}-{}-s{}", sp.method, sp.backbone, sp.seed);
    if let Some(f) = sp.fold {
        id.push_str(&format!("-{f}"));
    }
    if let Some((k, v)) = &sp.sweep {
        id.push_str(&format!("-{k}{v}"));
    }
    let run = store.create(protocol, &id).unwrap();
    let key = id.to_string();
    let mut h = 0u64;
    for b in key.bytes() {
        h = h.wrapping_mul(131).wrapping_add(b as u64);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let strength = match sp.method {
        "erm" => 0.25,
        "cs-dfd" => 0.45,
        _ => 0.35,
    };
    let mut scores = Vec::new();
    for &(ts, _) in sp.test_sets {
        for v in 0..16 {
            let label = u8::from(v >= 8);
            let vshift: f64 = rng.random::<f64>() * 0.3 - 0.15;
            for f in 0..3 {
                let noise: f64 = rng.random::<f64>() * 0.6 - 0.3;
                let score =
                    (0.5 + strength * (label as f64 - 0.5) * 2.0 * 0.5 + vshift + noise).clamp(0.0, 1.0);
                scores.push(ScoreRow {
                    test_set: ts.into(),
                    dataset: ts.to_uppercase(),
                    label,
                    // As in FF++: real and fake videos share names, and so do the fakes of two
                    // manipulations (000-003 each), so identity needs the label name.
                    label_name: match (label, v % 2) {
                        (0, _) => "real",
                        (_, 0) => "FF-DF",
                        _ => "FF-F2F",
                    }
                    .into(),
                    video: if label == 0 { format!("{v:03}") } else { format!("{:03}", (v - 8) / 2) },
                    frame: format!("{f:03}.png"),
                    score,
                });
            }
        }
    }
    let mut trace = Vec::new();
    let (mut l1, mut l2) = (0.7, 0.7);
    for step in 0..40u32 {
        l1 += rng.random::<f64>() * 0.1 - 0.06;
        l2 += rng.random::<f64>() * 0.1 - 0.06;
        trace.push(TraceRow {
            step,
            loss: Some(l1 + l2),
            l1: Some(l1),
            l2: Some(l2),
            cos_g1_g2: Some(rng.random::<f64>() * 2.0 - 0.8),
            lr: Some(1e-3),
            // CGR's relative contribution, 1e-8 .. 4e-7 over the 40 steps: median 20.5e-8.
            cgr_rel: (sp.method == "cs-dfd").then_some(1e-8 * (1.0 + step as f64)),
            ..Default::default()
        });
        if sp.method == "roga" {
            trace.push(TraceRow {
                step,
                domain: Some("DF".into()),
                loss: Some(9.0),
                cos_g1_g2: Some(-1.0),
                ..Default::default()
            });
        }
    }
    let mut m = Manifest {
        run_id: id.clone(),
        protocol: protocol.into(),
        method: sp.method.into(),
        method_kind: sp.method.into(),
        display: sp.display.into(),
        backbone: sp.backbone.into(),
        seed: sp.seed,
        fold: sp.fold.map(String::from),
        sweep: sp.sweep.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        config: serde_json::json!({"method": sp.method}),
        status: sp.status,
        failure: (sp.status == RunStatus::Failed)
            .then(|| Failure { step: Some(12), reason: "loss is NaN".into() }),
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
        report: sp.report.clone(),
        files: Default::default(),
        data: Default::default(),
    };
    if sp.status == RunStatus::Complete {
        run.write_trace(&trace).unwrap();
        run.write_scores(&scores).unwrap();
        run.write_metrics(&metric_rows(&scores, sp.test_sets)).unwrap();
        m.files = run.digest_files(false).unwrap();
    }
    run.write_manifest(&m).unwrap();
    id
}

const SETS: [(&str, Role); 3] = [("ffpp", Role::InDomain), ("celebdf", Role::Unseen), ("dfdc", Role::Unseen)];
const METHODS: [(&str, &str); 3] =
    [("erm", "EfficientNet (O)"), ("cs-dfd", "CS-DFD"), ("roga", "RoGA (reconstructed)")];

fn cross_fixture(root: &Path) -> PathBuf {
    let store = ResultsStore::new(root.join("results/runs"));
    let report = ReportSpec {
        baseline: Some("erm".into()),
        tables: vec!["csdfd-table1".into(), "csdfd-table3".into()],
        plots: vec!["loss-conflict".into(), "cosine".into(), "roc".into(), "auc-bar".into()],
        noise_floor: Vec::new(),
    };
    for (method, display) in METHODS {
        for seed in [0, 1] {
            let sp = Spec {
                method,
                display,
                backbone: "meso4",
                seed,
                fold: None,
                sweep: None,
                test_sets: &SETS,
                status: RunStatus::Complete,
                report: report.clone(),
            };
            write_run(&store, "cross", &sp);
        }
    }
    for (seed, status) in [(2, RunStatus::Failed), (5, RunStatus::Running)] {
        let sp = Spec {
            method: "cs-dfd",
            display: "CS-DFD",
            backbone: "meso4",
            seed,
            fold: None,
            sweep: None,
            test_sets: &SETS,
            status,
            report: report.clone(),
        };
        write_run(&store, "cross", &sp);
    }
    // A crash leftover that must be ignored.
    fs::write(root.join("results/runs/cross/.cs-dfd-meso4-s9.tmp-1-0"), "x").unwrap();
    root.join("results/runs/cross")
}

fn args(dir: &Path, out: Option<PathBuf>, boot: usize) -> ReportArgs {
    ReportArgs {
        dir: dir.into(),
        out,
        baseline: None,
        bootstrap: boot as u64,
        seed: 0,
        level: "frame".into(),
        allow_damaged: false,
        protocol: None,
        only: Vec::new(),
        noise_floor: Vec::new(),
    }
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
    (header, rows)
}

fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            out.insert(
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Per-seed AUCs of a method on a test set, recomputed from its stored scores.
fn seed_aucs(dir: &Path, method: &str, ts: &str) -> Vec<f64> {
    [0, 1]
        .iter()
        .map(|s| {
            let run = harness::results::RunDir::open(dir.join(format!("{method}-meso4-s{s}"))).unwrap();
            let sc = run.read_scores().unwrap();
            let (x, l): (Vec<f64>, Vec<u8>) =
                sc.iter().filter(|r| r.test_set == ts).map(|r| (r.score, r.label)).unzip();
            brute_auc(&x, &l).unwrap()
        })
        .collect()
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let m = x.iter().sum::<f64>() / x.len() as f64;
    let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (x.len() as f64 - 1.0);
    (m, v.sqrt())
}

#[test]
fn report_tables_plots_and_byte_identical_regeneration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cross_fixture(tmp.path());
    let summary = generate(&args(&dir, None, 200)).unwrap();
    // Default output: DIR/report/, next to the runs (never the committed results/<protocol>/).
    assert_eq!(summary.out, dir.join("report"));
    assert!(!tmp.path().join("results/cross").exists());
    assert_eq!((summary.complete_runs, summary.excluded_runs), (6, 2));
    let out = summary.out.clone();
    for f in [
        "README.md",
        "runs.md",
        "summary.csv",
        "tables/csdfd-table1.md",
        "tables/csdfd-table1.csv",
        "tables/csdfd-table1.tex",
        "tables/csdfd-table3.md",
        "tables/conflict.md",
        "tables/conflict.csv",
        "tables/delong.md",
        "tables/delong.csv",
        "tables/ci.md",
        "tables/ci.tex",
        "plots/loss-conflict.png",
        "plots/loss-conflict.svg",
        "plots/cosine.png",
        "plots/roc-ffpp.png",
        "plots/roc-celebdf.svg",
        "plots/roc-dfdc.png",
        "plots/auc-bar.png",
        "plots/auc-bar.svg",
    ] {
        assert!(out.join(f).is_file(), "missing {f}; got {:?}", summary.files);
    }

    // The README says which device produced the runs.
    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("Device: cpu (6 run(s))."), "{readme}");
    assert!(!readme.contains("are mixed"), "{readme}");

    // Table I numbers against a direct computation from the stored scores.
    let (header, rows) = read_csv(&out.join("tables/csdfd-table1.csv"));
    assert_eq!(header[..4], ["Method", "ffpp", "ffpp std", "ffpp n"]);
    let labels: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(labels, ["EfficientNet (O)", "CS-DFD", "RoGA (reconstructed)"], "baseline first");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (method, display) in METHODS {
        let row = rows.iter().find(|r| r[0] == display).unwrap();
        let mut avg_per_seed = [0.0; 2];
        for (ts, role) in SETS {
            let a = seed_aucs(&dir, method, ts);
            let (m, s) = mean_std(&a);
            assert_eq!(row[col(ts)], format!("{:.4}", m * 100.0), "{method} {ts}");
            assert_eq!(row[col(&format!("{ts} std"))], format!("{:.4}", s * 100.0));
            assert_eq!(row[col(&format!("{ts} n"))], "2");
            if role == Role::Unseen {
                for k in 0..2 {
                    avg_per_seed[k] += a[k] / 2.0;
                }
            }
        }
        let (m, s) = mean_std(&avg_per_seed);
        assert_eq!(row[col("AVG")], format!("{:.4}", m * 100.0));
        assert_eq!(row[col("AVG std")], format!("{:.4}", s * 100.0));
    }
    let md = fs::read_to_string(out.join("tables/csdfd-table1.md")).unwrap();
    assert!(md.contains("| RoGA (reconstructed) |"), "{md}");
    assert!(md.contains("RoGA (reconstructed): the update rule is reconstructed"), "{md}");
    assert!(md.contains("AVG: per-seed mean over the run's unseen test sets (celebdf, dfdc)"));
    let (m, s) = mean_std(&seed_aucs(&dir, "cs-dfd", "celebdf"));
    assert!(md.contains(&format!("{:.2} ± {:.2}", m * 100.0, s * 100.0)));
    let tex = fs::read_to_string(out.join("tables/csdfd-table1.tex")).unwrap();
    assert!(tex.contains("\\begin{tabular}{lcccc}") && tex.contains("$\\pm$"), "{tex}");

    // DeLong: per seed and test set, each method paired with the baseline of the same seed.
    let (h, rows) = read_csv(&out.join("tables/delong.csv"));
    assert_eq!(rows.len(), 2 * 2 * 3);
    let c = |n: &str| h.iter().position(|x| x == n).unwrap();
    for r in &rows {
        let seed: usize = r[c("seed")].parse().unwrap();
        let ts = &r[c("test_set")];
        let auc: f64 = r[c("auc")].parse().unwrap();
        let base: f64 = r[c("auc_baseline")].parse().unwrap();
        assert!((auc - seed_aucs(&dir, &r[c("method")], ts)[seed]).abs() < 1e-12);
        assert!((base - seed_aucs(&dir, "erm", ts)[seed]).abs() < 1e-12);
        let p: f64 = r[c("p")].parse().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert_eq!((&r[c("n_pos")][..], &r[c("n_neg")][..]), ("24", "24"));
    }

    // Bootstrap CIs bracket the seed-mean AUC.
    let (h, rows) = read_csv(&out.join("summary.csv"));
    let c = |n: &str| h.iter().position(|x| x == n).unwrap();
    let mut n_ci = 0;
    for r in rows.iter().filter(|r| r[c("metric")] == "auc" && !r[c("ci95_lo")].is_empty()) {
        let (lo, mean, hi): (f64, f64, f64) = (
            r[c("ci95_lo")].parse().unwrap(),
            r[c("mean")].parse().unwrap(),
            r[c("ci95_hi")].parse().unwrap(),
        );
        assert!(lo <= mean && mean <= hi, "{r:?}");
        n_ci += 1;
    }
    assert_eq!(n_ci, 3 * 3 * 2, "methods x test sets x levels");
    let (h, rows) = read_csv(&out.join("tables/ci.csv"));
    let i = h.iter().position(|x| x == "celebdf").unwrap();
    let cell = &rows.iter().find(|r| r[0] == "CS-DFD").unwrap()[i];
    let (m, _) = mean_std(&seed_aucs(&dir, "cs-dfd", "celebdf"));
    assert!(cell.starts_with(&format!("{:.2} [", m * 100.0)), "{cell}");

    // Conflict summary: fraction of steps with cos < 0 from the aggregate rows only.
    let (h, rows) = read_csv(&out.join("tables/conflict.csv"));
    let c = |n: &str| h.iter().position(|x| x == n).unwrap();
    for (method, display) in METHODS {
        let fr: Vec<f64> = [0, 1]
            .iter()
            .map(|s| {
                let run = harness::results::RunDir::open(dir.join(format!("{method}-meso4-s{s}"))).unwrap();
                let t: Vec<TraceRow> =
                    run.read_trace().unwrap().into_iter().filter(|t| t.domain.is_none()).collect();
                t.iter().filter(|t| t.cos_g1_g2.unwrap() < 0.0).count() as f64 / t.len() as f64
            })
            .collect();
        let row = rows.iter().find(|r| r[0] == display).unwrap();
        assert_eq!(row[c("P(cos(g1,g2) < 0)")], format!("{:.4}", mean_std(&fr).0));
    }
    let cgr = rows.iter().find(|r| r[0] == "CS-DFD").unwrap();
    assert_eq!(cgr[c("CGR rel. (head)")], "2.05e-7");

    let runs = fs::read_to_string(out.join("runs.md")).unwrap();
    assert!(runs.contains("excluded: failed at step 12: loss is NaN"), "{runs}");
    assert!(runs.contains("excluded: still running or interrupted"));
    assert!(!runs.contains("s9"), "temporary leftovers are not runs");

    // Plots: decodable PNGs, well-formed SVGs with the embedded font's text.
    for name in ["loss-conflict", "cosine", "roc-celebdf", "auc-bar"] {
        let png = fs::read(out.join(format!("plots/{name}.png"))).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert!(img.width() >= 500 && img.height() >= 300);
        // Not a blank canvas: some dark pixels (text, axes).
        assert!(img.to_rgb8().pixels().any(|p| p.0.iter().all(|&v| v < 60)));
        let svg = fs::read_to_string(out.join(format!("plots/{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    assert!(fs::read_to_string(out.join("plots/auc-bar.svg")).unwrap().contains("CS-DFD"));
    // Trace plots show every seed (mean and band), not the lowest seed alone, on integer step ticks.
    for name in ["loss-conflict", "cosine"] {
        let svg = fs::read_to_string(out.join(format!("plots/{name}.svg"))).unwrap();
        assert!(svg.contains("mean of 2 seeds") || svg.contains("mean of 2 seed(s)"), "{name}");
        assert!(!svg.contains("lowest seed") && !svg.contains(">2.5<") && !svg.contains(">7.5<"), "{name}");
    }

    // Regeneration is byte-identical, in place and into a fresh directory.
    let first = all_files(&out);
    if let Some(keep) = std::env::var_os("DFBENCH_KEEP_REPORT") {
        // Debug aid: keep a copy of the fixture runs and report for inspection.
        for (rel, bytes) in &all_files(tmp.path()) {
            let p = Path::new(&keep).join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
    }
    // Regenerating in place: the report folder inside DIR is not taken for a run.
    let again = generate(&args(&dir, None, 200)).unwrap();
    assert_eq!((again.complete_runs, again.excluded_runs), (6, 2));
    assert_eq!(first, all_files(&out));
    let other = tmp.path().join("again");
    generate(&args(&dir, Some(other.clone()), 200)).unwrap();
    assert_eq!(first, all_files(&other));
}

#[test]
fn folds_sweeps_and_the_remaining_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ResultsStore::new(tmp.path().join("runs"));
    let report = ReportSpec {
        baseline: Some("erm".into()),
        tables: ["roga-table2", "roga-table4", "sensitivity", "imbalance", "csdfd-table2", "no-such-table"]
            .map(String::from)
            .to_vec(),
        plots: vec!["sensitivity".into()],
        noise_floor: Vec::new(),
    };
    for fold in ["DF", "FS"] {
        let sets = [("ffpp", Role::InDomain), (fold, Role::Unseen)];
        for (method, display) in [("erm", "ERM"), ("roga", "RoGA (reconstructed)")] {
            let sp = Spec {
                method,
                display,
                backbone: "meso4",
                seed: 0,
                fold: Some(fold),
                sweep: None,
                test_sets: &sets,
                status: RunStatus::Complete,
                report: report.clone(),
            };
            write_run(&store, "loo", &sp);
        }
    }
    // Sweep points 2 and 10: numeric order, not text order.
    for c in [10, 2] {
        for seed in [0, 1] {
            let sp = Spec {
                method: "cs-dfd",
                display: "CS-DFD",
                backbone: "meso4",
                seed,
                fold: Some("DF"),
                sweep: Some(("c", serde_json::json!(c))),
                test_sets: &[("ffpp", Role::InDomain), ("DF", Role::Unseen)],
                status: RunStatus::Complete,
                report: report.clone(),
            };
            write_run(&store, "loo", &sp);
        }
    }
    let out = tmp.path().join("out");
    let s = generate(&args(&tmp.path().join("runs/loo"), Some(out.clone()), 50)).unwrap();
    assert!(s.warnings.iter().any(|w| w.contains("no-such-table")), "{:?}", s.warnings);
    let (h, rows) = read_csv(&out.join("tables/roga-table2.csv"));
    assert_eq!(h[0], "Method");
    assert!(h.contains(&"DF AUC".to_string()) && h.contains(&"FS ACC".to_string()), "{h:?}");
    assert!(!h.iter().any(|x| x.starts_with("ffpp")), "held-out sets only: {h:?}");
    let roga = rows.iter().find(|r| r[0] == "RoGA (reconstructed)").unwrap();
    let run = harness::results::RunDir::open(tmp.path().join("runs/loo/roga-meso4-s0-FS")).unwrap();
    let m = run.read_metrics().unwrap();
    let fs_auc = m.iter().find(|r| r.test_set == "FS" && r.level == Level::Frame).unwrap().auc.unwrap();
    let i = h.iter().position(|x| x == "FS AUC").unwrap();
    assert_eq!(roga[i], format!("{:.4}", fs_auc * 100.0));
    let (h4, _) = read_csv(&out.join("tables/roga-table4.csv"));
    assert!(h4.contains(&"DF → ffpp AUC".to_string()) && h4.contains(&"FS → FS ACC".to_string()), "{h4:?}");
    let sens = fs::read_to_string(out.join("tables/sensitivity.md")).unwrap();
    let (p2, p10) = (sens.find("| c=2 |").unwrap(), sens.find("| c=10 |").unwrap());
    assert!(p2 < p10, "{sens}");
    let imb = fs::read_to_string(out.join("tables/imbalance.md")).unwrap();
    assert!(imb.contains("| c=2 |") && imb.contains("CS-DFD"), "{imb}");
    assert!(fs::read_to_string(out.join("tables/csdfd-table2.md")).unwrap().contains("meso4 (ERM"));
    assert!(s.warnings.len() == 1, "{:?}", s.warnings);
    assert!(out.join("plots/sensitivity.png").is_file() && out.join("plots/sensitivity.svg").is_file());
}

#[test]
fn mixed_devices_are_named_and_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cross_fixture(tmp.path());
    let manifest = dir.join("erm-meso4-s0/manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\"device\": \"cpu\""), "{text}");
    fs::write(&manifest, text.replace("\"device\": \"cpu\"", "\"device\": \"cuda:0 (H100)\"")).unwrap();
    let summary = generate(&args(&dir, None, 20)).unwrap();
    let readme = fs::read_to_string(summary.out.join("README.md")).unwrap();
    assert!(readme.contains("Device: cpu (5 run(s)); cuda:0 (H100) (1 run(s))."), "{readme}");
    assert!(readme.contains("warning: runs from the CPU and from CUDA are mixed"), "{readme}");
}

#[test]
fn cli_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cross_fixture(tmp.path());
    let bench = env!("CARGO_BIN_EXE_bench");
    let out = tmp.path().join("cli-out");
    let st = Command::new(bench)
        .args(["-q", "report"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .args(["--bootstrap", "20", "--baseline", "cs-dfd"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(fs::read_to_string(out.join("tables/delong.md")).unwrap().contains("against CS-DFD"));
    let o = Command::new(bench).args(["report"]).arg(tmp.path().join("nope")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such results directory"));
    let o = Command::new(bench)
        .args(["report"])
        .arg(&dir)
        .args(["--baseline", "sgd", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--baseline sgd"));
    // A merged tree (results/runs with protocol subdirectories) reports the same numbers.
    let merged = tmp.path().join("merged-out");
    let st = Command::new(bench)
        .args(["-q", "report"])
        .arg(tmp.path().join("results/runs"))
        .arg("--out")
        .arg(&merged)
        .args(["--bootstrap", "20", "--baseline", "cs-dfd"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    for f in ["tables/csdfd-table1.csv", "tables/delong.csv", "summary.csv"] {
        assert_eq!(fs::read(out.join(f)).unwrap(), fs::read(merged.join(f)).unwrap(), "{f}");
    }
    assert!(fs::read_to_string(merged.join("runs.md")).unwrap().contains("| cross/cs-dfd-meso4-s2 |"));
    // A directory without complete runs is a failure (1), not a crash.
    let empty = tmp.path().join("results/runs/empty");
    fs::create_dir_all(&empty).unwrap();
    let o = Command::new(bench).args(["report"]).arg(&empty).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
}
