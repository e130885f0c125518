//! End to end: `bench run` on tiny protocols over the `tiny` synthetic preset, through the real
//! binary. Each test writes its own protocol and output folder; the synthetic data are generated
//! once per test process and shared (read-only) through `--data-cache`.
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::data::synth::{self, Preset};
use harness::results::{self, RunDir, RunStatus};
use polars::prelude::*;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// The tiny synthetic benchmark, generated once for every test of this file.
fn data_cache() -> &'static Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            synth::ensure(Preset::Tiny, 0, dir.path()).unwrap();
            dir
        })
        .path()
}

/// A protocol on the tiny preset: 64 px, batch 8, `steps` steps, validation every 2 steps,
/// FF++ (in-domain) and UADFV (unseen) test sets, and the given `[methods.*]` blocks.
fn protocol(name: &str, seeds: &str, steps: u32, methods: &str) -> String {
    format!(
        r#"name = "{name}"
seeds = [{seeds}]
device = "cpu"

[data]
format = "synthetic"
preset = "tiny"
synth_seed = 0
resolution = 64
frames_per_video = {{ train = 3, test = 3 }}
normalisation = {{ mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
on_missing = {{ train = "skip", test = "fail" }}

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
head = {{ layers = 1 }}

[training]
steps = {steps}
batch_size = 8
optimizer = {{ name = "adam", lr = 1e-3 }}
validation = {{ split = "val", every = 2 }}
selection = "best-val"

{methods}
"#
    )
}

const TWO_METHODS: &str = r#"
[methods.O]
kind = "erm"
streams = "original"

[methods.CS-DFD]
kind = "cs-dfd"
c = 0.5
tau = 0.01
"#;

struct Case {
    dir: tempfile::TempDir,
    protocol: PathBuf,
    name: String,
}

impl Case {
    fn new(name: &str, text: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let protocol = dir.path().join(format!("{name}.toml"));
        std::fs::write(&protocol, text).unwrap();
        Case {
            dir,
            protocol,
            name: name.to_string(),
        }
    }
    fn out(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
    fn command(&self, out: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(BENCH);
        c.arg("run")
            .arg(&self.protocol)
            .arg("--out")
            .arg(self.out(out))
            .arg("--data-cache")
            .arg(data_cache())
            .args(extra);
        c
    }
    fn run(&self, out: &str, extra: &[&str]) -> Output {
        self.command(out, extra).output().unwrap()
    }
    fn protocol_dir(&self, out: &str) -> PathBuf {
        self.out(out).join(&self.name)
    }
    fn runs(&self, out: &str) -> Vec<RunDir> {
        results::list_runs(&self.protocol_dir(out)).unwrap()
    }
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

fn columns(path: &Path) -> Vec<String> {
    let df = ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap();
    df.get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// started timestamp and manifest inode (atomic rewrites always give a new inode).
fn manifest_stamp(r: &RunDir) -> (Option<String>, u64) {
    let m = r.read_manifest().unwrap();
    (
        m.started,
        std::fs::metadata(r.file(results::MANIFEST_FILE))
            .unwrap()
            .ino(),
    )
}

#[test]
fn run_completes_with_documented_files_then_skips_and_force_redoes() {
    let case = Case::new(
        "e2e_complete",
        &protocol("e2e_complete", "0", 4, TWO_METHODS),
    );
    let o = case.run("out", &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let runs = case.runs("out");
    assert_eq!(runs.len(), 2);
    let mut methods = BTreeSet::new();
    for r in &runs {
        let m = r.read_manifest().unwrap();
        assert_eq!(m.status, RunStatus::Complete, "{}", r.path().display());
        assert!(m.failure.is_none());
        assert_eq!(m.seed, 0);
        assert_eq!(m.protocol, "e2e_complete");
        assert_eq!(m.run_id, r.name());
        methods.insert(m.method.clone());
        // The temp dir lies outside any git checkout only if the system temp dir does; either
        // way both fields are present and agree with each other.
        assert_eq!(m.git.commit.is_some(), m.git.dirty.is_some(), "{:?}", m.git);
        assert!(!m.versions.dfbench.is_empty());
        assert!(
            m.versions
                .candle
                .as_deref()
                .is_some_and(|v| v.starts_with("0.")),
            "{:?}",
            m.versions
        );
        assert!(
            m.versions
                .rustc
                .as_deref()
                .is_some_and(|v| v.starts_with("rustc")),
            "{:?}",
            m.versions
        );
        assert!(m.device.starts_with("cpu"), "{}", m.device);
        assert!(!m.host.is_empty());
        let (started, ended) = (m.started.clone().unwrap(), m.ended.clone().unwrap());
        assert!(
            humantime::parse_rfc3339(&started).is_ok() && humantime::parse_rfc3339(&ended).is_ok()
        );
        assert!(started <= ended, "{started} > {ended}");
        assert!(
            m.notes
                .iter()
                .any(|n| n.contains("model selected on the val split")),
            "{:?}",
            m.notes
        );
        assert_eq!(m.config["data"]["resolution"], 64);
        // `train.real_fake_ratio` omitted: balanced batches of 8, recorded as used.
        let half = BTreeMap::from([("fake".to_string(), 4u64), ("real".to_string(), 4u64)]);
        let mut batches = BTreeMap::from([("original".to_string(), half.clone())]);
        if m.method == "CS-DFD" {
            batches.insert("online".to_string(), half);
        }
        assert_eq!(m.data.train_batches, batches, "{}", m.method);
        assert_eq!(m.data.real_fake_ratio, Some(1.0));

        assert_eq!(
            columns(&r.file(results::TRACE_FILE)),
            strings(&[
                "step",
                "domain",
                "loss",
                "l1",
                "l2",
                "cos_g1_g2",
                "norm_g1",
                "norm_g2",
                "norm_update",
                "mu1",
                "mu2",
                "lr",
                "wall_s",
                "cgr_rel"
            ])
        );
        // CGR's relative contribution: traced every step for CS-DFD (cgr on by default), a small
        // positive number; null for the ERM run.
        let trace = r.read_trace().unwrap();
        assert_eq!(trace.len(), 4);
        for t in &trace {
            match m.method.as_str() {
                "CS-DFD" => assert!(t.cgr_rel.is_some_and(|x| x > 0.0 && x < 1.0), "{t:?}"),
                _ => assert_eq!(t.cgr_rel, None),
            }
        }
        assert_eq!(
            columns(&r.file(results::SCORES_FILE)),
            strings(&[
                "test_set",
                "dataset",
                "label",
                "label_name",
                "video",
                "frame",
                "score"
            ])
        );
        let metric_cols = strings(&[
            "test_set",
            "role",
            "level",
            "auc",
            "ap",
            "eer",
            "eer_interp",
            "acc",
            "acc_real",
            "acc_fake",
            "undefined_reason",
            "n",
            "n_real",
            "n_fake",
        ]);
        assert_eq!(columns(&r.file(results::METRICS_FILE)), metric_cols);
        let csv = std::fs::read_to_string(r.file(results::METRICS_CSV_FILE)).unwrap();
        assert_eq!(csv.lines().next().unwrap(), metric_cols.join(","));
        assert_eq!(
            csv.lines().count(),
            1 + 4,
            "two test sets x frame/video:\n{csv}"
        );

        let trace = r.read_trace().unwrap();
        let steps: BTreeSet<u32> = trace.iter().map(|t| t.step).collect();
        assert_eq!(steps, (0..4).collect(), "one trace step per training step");
        assert!(trace.iter().all(|t| t.loss.is_some_and(f64::is_finite)));
        let scores = r.read_scores().unwrap();
        let sets: BTreeSet<&str> = scores.iter().map(|s| s.test_set.as_str()).collect();
        assert_eq!(sets, BTreeSet::from(["FF++", "UADFV"]));
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(&s.score)));
        let metrics = r.read_metrics().unwrap();
        assert_eq!(metrics.len(), 4);
        for mrow in &metrics {
            let n = scores
                .iter()
                .filter(|s| s.test_set == mrow.test_set)
                .count() as u64;
            if mrow.level == results::Level::Frame {
                assert_eq!(mrow.n, n, "{}", mrow.test_set);
            }
            assert!(
                mrow.auc.is_some_and(|a| (0.0..=1.0).contains(&a)),
                "{mrow:?}"
            );
        }
        assert!(r.file(results::WEIGHTS_FILE).is_file());
    }
    assert_eq!(
        methods,
        BTreeSet::from(["O".to_string(), "CS-DFD".to_string()])
    );

    // The plan shows both runs as complete and trains nothing.
    let before: Vec<_> = runs.iter().map(manifest_stamp).collect();
    let o = case.run("out", &["--dry-run"]);
    assert_eq!(code(&o), 0);
    let out = text(&o);
    for r in &runs {
        let line = out
            .lines()
            .find(|l| l.starts_with(&r.name()))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("complete (skipped)"), "{line}");
    }
    assert!(out.contains("2 runs, 0 to do"), "{out}");

    // Re-running skips complete runs: manifests untouched.
    let o = case.run("out", &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("2 runs, 2 complete, 0 to do"),
        "{}",
        text(&o)
    );
    let again: Vec<_> = runs.iter().map(manifest_stamp).collect();
    assert_eq!(before, again, "skipped runs must keep their manifests");

    // --force redoes them (new manifests), and they are complete again.
    let o = case.run("out", &["--force"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("2 to do"), "{}", text(&o));
    for (r, (_, ino)) in runs.iter().zip(&before) {
        assert_ne!(manifest_stamp(r).1, *ino, "{} was not redone", r.name());
        assert!(r.is_complete());
    }
}

#[test]
fn erm_conflict_every_traces_o_plus_s_and_stays_out_of_the_run_id_when_off() {
    let methods = |extra: &str| format!("[methods.OS]\nkind = \"erm\"\nstreams = \"both\"\n{extra}");
    let plain = Case::new("e2e_probe", &protocol("e2e_probe", "0", 4, &methods("")));
    let at_default = Case::new("e2e_probe", &protocol("e2e_probe", "0", 4, &methods("conflict_every = 0\n")));
    let probed = Case::new("e2e_probe", &protocol("e2e_probe", "0", 4, &methods("conflict_every = 2\n")));
    for c in [&plain, &at_default, &probed] {
        let o = c.run("out", &["--no-weights"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }
    let (a, b, p) = (&plain.runs("out")[0], &at_default.runs("out")[0], &probed.runs("out")[0]);
    assert_eq!(a.name(), b.name(), "conflict_every = 0 is the default and not in the run id");
    assert_ne!(a.name(), p.name(), "conflict_every = 2 is a different configuration");
    let (off, on) = (a.read_trace().unwrap(), p.read_trace().unwrap());
    assert!(off.iter().all(|t| t.cos_g1_g2.is_none()));
    for t in &on {
        assert_eq!(t.cos_g1_g2.is_some(), t.step % 2 == 0, "{t:?}");
        assert_eq!(t.norm_g1.is_some() && t.norm_g2.is_some(), t.step % 2 == 0, "{t:?}");
    }
    // The update is unchanged: the same losses and the same scores bit for bit.
    let losses = |tr: &[results::TraceRow]| tr.iter().map(|t| t.loss.map(f64::to_bits)).collect::<Vec<_>>();
    assert_eq!(losses(&off), losses(&on));
    assert_eq!(
        std::fs::read(a.file(results::SCORES_FILE)).unwrap(),
        std::fs::read(p.file(results::SCORES_FILE)).unwrap()
    );
}

/// `init_nudge_ulps` (the noise floor's generic twin): left out of the run id at 0, recorded
/// when set, and it starts the same method from weights one ulp away, so the twin's first loss
/// differs from the plain run's only at rounding level and its scores are not the plain run's.
#[test]
fn init_nudge_twin_differs_only_at_rounding_level_and_stays_out_of_the_id_at_zero() {
    let methods = |extra: &str| format!("[methods.O]\nkind = \"erm\"\nstreams = \"original\"\n{extra}");
    let plain = Case::new("e2e_twin", &protocol("e2e_twin", "0", 3, &methods("")));
    let zero = Case::new("e2e_twin", &protocol("e2e_twin", "0", 3, &methods("init_nudge_ulps = 0\n")));
    let twin = Case::new("e2e_twin", &protocol("e2e_twin", "0", 3, &methods("init_nudge_ulps = 1\n")));
    for c in [&plain, &zero, &twin] {
        let o = c.run("out", &["--no-weights"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }
    let (plain, zero, twin) = (&plain.runs("out")[0], &zero.runs("out")[0], &twin.runs("out")[0]);
    assert_eq!(plain.name(), zero.name(), "0 ulps is the default and not in the run id");
    assert_ne!(plain.name(), twin.name());
    let cfg = |r: &RunDir| r.read_manifest().unwrap().config["training"].get("init_nudge_ulps").cloned();
    assert_eq!(cfg(zero), None);
    assert_eq!(cfg(twin), Some(serde_json::json!(1)));
    let first_loss = |r: &RunDir| r.read_trace().unwrap()[0].loss.unwrap();
    let (a, b) = (first_loss(plain), first_loss(twin));
    assert_ne!(a.to_bits(), b.to_bits(), "the twin starts from other weights");
    assert!((a - b).abs() <= 1e-5 * a.abs(), "but only at rounding level: {a} vs {b}");
    assert_ne!(
        std::fs::read(plain.file(results::SCORES_FILE)).unwrap(),
        std::fs::read(twin.file(results::SCORES_FILE)).unwrap()
    );
    let bad = Case::new("e2e_twin_bad", &protocol("e2e_twin_bad", "0", 3, &methods("init_nudge_ulps = 17\n")));
    let v = Command::new(BENCH).arg("validate").arg(&bad.protocol).output().unwrap();
    assert_eq!(code(&v), 2, "{}", text(&v));
    assert!(text(&v).contains("init_nudge_ulps"), "{}", text(&v));
}

/// `training.precision` and TF32 through `bench run`: bf16 on the CPU is refused before any
/// training with an error naming the key (candle's CPU backend has no bf16 matmul); f32 runs
/// record their precision (and no TF32: the CPU never uses it); `--tf32 off` changes the run ids;
/// and `bench report` over runs of mixed precision (one manifest marked bf16, as a GPU run would
/// be) names the precisions and warns.
#[test]
fn precision_and_tf32_are_checked_recorded_and_reported() {
    let bf16 = "[methods.O-bf16]\nkind = \"erm\"\nstreams = \"original\"\nprecision = \"bf16\"\n";
    let case = Case::new("e2e_bf16", &protocol("e2e_bf16", "0", 2, bf16));
    let o = case.run("out", &["--no-weights"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("training.precision = \"bf16\" needs a CUDA device"), "{}", text(&o));
    assert!(!case.protocol_dir("out").exists() || case.runs("out").is_empty(), "nothing trained");
    let v = Command::new(BENCH).arg("validate").arg(&case.protocol).output().unwrap();
    assert_eq!(code(&v), 2, "bench validate refuses it too: {}", text(&v));

    let two = "[methods.O]\nkind = \"erm\"\nstreams = \"original\"\n\n\
               [methods.S]\nkind = \"erm\"\nstreams = \"online\"\n";
    let case = Case::new("e2e_prec", &protocol("e2e_prec", "0", 2, two));
    let o = case.run("out", &["--no-weights"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let runs = case.runs("out");
    for r in &runs {
        let m = r.read_manifest().unwrap();
        assert_eq!(m.precision.as_deref(), Some("f32"));
        assert_eq!(m.tf32, None, "TF32 is not recorded for a CPU run");
        assert!(m.config["training"].get("precision").is_none(), "f32 stays out of the config (and the id)");
    }
    let d = case.run("dry", &["--dry-run", "--tf32", "off"]);
    assert_eq!(code(&d), 0, "{}", text(&d));
    for r in &runs {
        assert!(!text(&d).contains(&*r.name()), "--tf32 off gives other run ids:\n{}", text(&d));
    }
    let bad = case.run("dry", &["--dry-run", "--tf32", "maybe"]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));

    let out = case.protocol_dir("out");
    let report = |what: &str| {
        let rep = Command::new(BENCH).arg("report").arg(&out).output().unwrap();
        let readme = std::fs::read_to_string(out.join("report/README.md")).unwrap_or_default();
        (format!("{what}: {}", text(&rep)), readme)
    };
    let (log, readme) = report("all f32");
    assert!(!readme.contains("Precision:") && !readme.contains("precisions are mixed"), "{log}\n{readme}");
    // Mark one run as a bf16 run (the manifest is not among the digested result files).
    let path = runs[0].file(results::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["precision"] = serde_json::json!("bf16");
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let (log, readme) = report("mixed");
    assert!(readme.contains("Precision: bf16 (1 run(s)); f32 (1 run(s))."), "{log}\n{readme}");
    assert!(readme.contains("runs of different training precisions are mixed here"), "{log}\n{readme}");
}

#[test]
fn manifest_records_the_real_fake_ratio_used() {
    // 3 reals per fake in batches of 8: round(8 * 3/4) = 6 reals and 2 fakes. 2.5 rounds to
    // round(8 * 2.5/3.5) = round(5.71) = 6 reals too, so the ratio used is 3, not 2.5.
    for (ratio, used) in [("3.0", 3.0), ("2.5", 3.0)] {
        let proto = protocol("e2e_ratio", "0", 1, "[methods.O]\nkind = \"erm\"\nstreams = \"original\"\n")
            .replace("compression = \"c23\"\n", &format!("compression = \"c23\"\nreal_fake_ratio = {ratio}\n"));
        let case = Case::new("e2e_ratio", &proto);
        let o = case.run("out", &["--no-weights"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        let m = case.runs("out")[0].read_manifest().unwrap();
        let split = BTreeMap::from([("fake".to_string(), 2u64), ("real".to_string(), 6u64)]);
        assert_eq!(m.data.train_batches, BTreeMap::from([("original".to_string(), split)]));
        assert_eq!(m.data.real_fake_ratio, Some(used), "ratio {ratio}");
        assert_eq!(m.config["train"]["real_fake_ratio"], serde_json::json!(ratio.parse::<f64>().unwrap()));
    }
}

#[test]
fn same_protocol_and_seed_give_bit_identical_results() {
    let case = Case::new("e2e_repro", &protocol("e2e_repro", "0", 4, TWO_METHODS));
    for out in ["a", "b"] {
        let o = case.run(out, &[]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }
    let (a, b) = (case.runs("a"), case.runs("b"));
    assert_eq!(a.len(), 2);
    assert_eq!(
        a.iter().map(RunDir::name).collect::<Vec<_>>(),
        b.iter().map(RunDir::name).collect::<Vec<_>>()
    );
    for (ra, rb) in a.iter().zip(&b) {
        let (sa, sb) = (ra.read_scores().unwrap(), rb.read_scores().unwrap());
        assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(&sb) {
            assert_eq!(
                (&x.test_set, &x.video, &x.frame),
                (&y.test_set, &y.video, &y.frame)
            );
            assert_eq!(
                x.score.to_bits(),
                y.score.to_bits(),
                "{} {}/{}",
                ra.name(),
                x.video,
                x.frame
            );
        }
        let (ma, mb) = (ra.read_metrics().unwrap(), rb.read_metrics().unwrap());
        let bits = |m: &results::MetricRow| {
            [
                m.auc,
                m.ap,
                m.eer,
                m.eer_interp,
                m.acc,
                m.acc_real,
                m.acc_fake,
            ]
            .map(|v| v.map(f64::to_bits))
        };
        assert_eq!(ma.len(), mb.len());
        for (x, y) in ma.iter().zip(&mb) {
            assert_eq!((&x.test_set, x.level, x.n), (&y.test_set, y.level, y.n));
            assert_eq!(
                bits(x),
                bits(y),
                "{} {} {:?}",
                ra.name(),
                x.test_set,
                x.level
            );
        }
        let losses = |r: &RunDir| {
            r.read_trace()
                .unwrap()
                .iter()
                .map(|t| t.loss.map(f64::to_bits))
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(ra), losses(rb));
    }
}

#[test]
fn killed_run_resumes_without_redoing_complete_runs() {
    // The second method trains long enough (tens of steps) to be killed in the middle.
    let methods = r#"
[methods.O]
kind = "erm"
streams = "original"

[methods.Long]
kind = "erm"
streams = "original"
steps = 30
"#;
    let case = Case::new("e2e_kill", &protocol("e2e_kill", "0", 4, methods));
    let mut child = case
        .command("out", &["-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pdir = case.protocol_dir("out");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for: the first run complete and the second one started (its manifest says running).
    let (first, second) = loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the runs to start"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bench run ended ({status}) before it could be killed");
        }
        let runs = results::list_runs(&pdir).unwrap_or_default();
        let manifests: Vec<_> = runs
            .iter()
            .filter_map(|r| r.read_manifest().ok().map(|m| (r.clone(), m)))
            .collect();
        let done = manifests
            .iter()
            .find(|(_, m)| m.method == "O" && m.status == RunStatus::Complete);
        let running = manifests
            .iter()
            .find(|(_, m)| m.method == "Long" && m.status == RunStatus::Running);
        if let (Some(d), Some(r)) = (done, running) {
            break (d.0.clone(), r.0.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let m = second.read_manifest().unwrap();
    assert_eq!(
        m.status,
        RunStatus::Running,
        "the long run must still be in progress when killed"
    );
    let first_stamp = manifest_stamp(&first);
    // A leftover temporary file of an interrupted write is hidden and never a run.
    std::fs::write(pdir.join(".manifest.json.tmp-99999-0"), b"{partial").unwrap();
    std::fs::create_dir_all(pdir.join(".stale.tmp-1")).unwrap();

    let o = case.run("out", &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("2 runs, 1 complete, 1 to do"),
        "{}",
        text(&o)
    );
    assert_eq!(
        manifest_stamp(&first),
        first_stamp,
        "the complete run was redone"
    );
    let runs = case.runs("out");
    assert_eq!(runs.iter().map(RunDir::name).collect::<Vec<_>>(), {
        let mut v = vec![first.name(), second.name()];
        v.sort();
        v
    });
    for r in &runs {
        assert!(r.is_complete(), "{}", r.name());
        r.read_trace().unwrap();
        r.read_scores().unwrap();
        r.read_metrics().unwrap();
    }
    assert_eq!(
        second
            .read_trace()
            .unwrap()
            .iter()
            .filter(|t| t.domain.is_none())
            .count(),
        30
    );
}

#[test]
fn diverging_run_fails_with_its_step_and_the_others_go_on() {
    // SGD with the largest learning rate the protocol language allows (10) and heavy momentum:
    // the loss overflows to a non-finite value within a few steps.
    let methods = r#"
[methods.Diverge]
kind = "erm"
streams = "original"
steps = 8
optimizer = { name = "sgd", lr = 10.0, momentum = 0.9 }

[methods.O]
kind = "erm"
streams = "original"
"#;
    let case = Case::new("e2e_diverge", &protocol("e2e_diverge", "0", 4, methods));
    let o = case.run("out", &[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let out = text(&o);
    let by_method: BTreeMap<String, results::Manifest> = case
        .runs("out")
        .iter()
        .map(|r| {
            let m = r.read_manifest().unwrap();
            (m.method.clone(), m)
        })
        .collect();
    let bad = &by_method["Diverge"];
    assert_eq!(bad.status, RunStatus::Failed);
    let failure = bad.failure.as_ref().unwrap();
    let step = failure.step.expect("the failing step is recorded");
    assert!(step < 8, "{failure:?}");
    assert!(failure.reason.contains("loss became"), "{failure:?}");
    assert!(out.contains(&format!("failed at step {step}")), "{out}");
    assert!(out.contains(&bad.run_id), "{out}");
    assert!(bad.ended.is_some());
    assert_eq!(
        by_method["O"].status,
        RunStatus::Complete,
        "the run after the failed one must go on"
    );

    // A failed run is not complete: it is retried (and fails the same way) on a re-run.
    let o = case.run("out", &["--dry-run"]);
    assert!(text(&o).contains("1 to do"), "{}", text(&o));
}

#[test]
fn dry_run_and_usage_errors() {
    let case = Case::new("e2e_cli", &protocol("e2e_cli", "0, 1", 4, TWO_METHODS));
    let o = case.run("out", &["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = text(&o);
    assert_eq!(
        out.lines().filter(|l| l.contains("pending")).count(),
        4,
        "{out}"
    );
    assert!(out.contains("4 runs, 4 to do"), "{out}");
    assert!(
        !case.out("out").exists(),
        "--dry-run must not create results"
    );

    let o = case.run("out", &["--only", "CSDFD"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("did you mean `CS-DFD`"), "{}", text(&o));

    let o = case.run("out", &["--device", "cuda"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("no CUDA support"), "{}", text(&o));
    assert!(
        !case.out("out").join("e2e_cli").exists(),
        "nothing may be trained"
    );

    // A dry run checks the device as a real run would (without opening it).
    for (device, why) in [("cuda:0", "no CUDA support"), ("gpu", "unknown device `gpu`")] {
        let o = case.run("out", &["--dry-run", "--device", device]);
        assert_eq!(code(&o), 2, "{}", text(&o));
        assert!(text(&o).contains(why), "{}", text(&o));
    }

    let o = case.run("out", &["--shard", "2/2"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
}

#[test]
fn shards_together_make_the_unsharded_plan() {
    let methods = r#"
[methods.O]
kind = "erm"
streams = "original"

[methods.O2]
kind = "erm"
streams = "original"
optimizer = { name = "sgd", lr = 0.01 }
"#;
    let case = Case::new("e2e_shard", &protocol("e2e_shard", "0, 1", 2, methods));
    let o = case.run("out", &["--dry-run"]);
    let plan: BTreeSet<String> = text(&o)
        .lines()
        .filter(|l| l.contains("pending"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(plan.len(), 4);
    let mut made: Vec<Vec<String>> = Vec::new();
    let mut planned = 0;
    for shard in ["0/2", "1/2"] {
        let before: BTreeMap<String, (Option<String>, u64)> =
            results::list_runs(&case.protocol_dir("out"))
                .unwrap_or_default()
                .iter()
                .map(|r| (r.name(), manifest_stamp(r)))
                .collect();
        let o = case.run("out", &["--shard", shard]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        // "<protocol>: K runs, ..." counts this shard's part of the plan.
        let head = text(&o)
            .lines()
            .find(|l| l.starts_with("e2e_shard: "))
            .unwrap()
            .to_string();
        planned += head["e2e_shard: ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap();
        let now = case.runs("out");
        for r in &now {
            if let Some(stamp) = before.get(&r.name()) {
                assert_eq!(
                    &manifest_stamp(r),
                    stamp,
                    "shard {shard} touched {}",
                    r.name()
                );
            }
        }
        made.push(
            now.iter()
                .map(RunDir::name)
                .filter(|n| !before.contains_key(n))
                .collect(),
        );
    }
    assert_eq!(
        planned, 4,
        "the shards' plans must add up to the whole plan"
    );
    let all: Vec<String> = made.concat();
    let got: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(got.len(), all.len(), "a run was made twice");
    assert_eq!(got, plan);
    assert!(case.runs("out").iter().all(RunDir::is_complete));
    // Nothing left to do for the unsharded run.
    let o = case.run("out", &[]);
    assert!(
        text(&o).contains("4 runs, 4 complete, 0 to do"),
        "{}",
        text(&o)
    );
}

#[test]
fn data_preview_draws_labelled_sbi_pairs_with_their_masks() {
    let case = Case::new("e2e_preview", &protocol("e2e_preview", "0", 1, TWO_METHODS));
    let png = case.out("s.png");
    let preview = |stream: &str, seed: &str, out: &Path| {
        Command::new(BENCH)
            .args(["data", "preview"])
            .arg(&case.protocol)
            .args(["--stream", stream, "--n", "4", "--seed", seed, "--data-cache"])
            .arg(data_cache())
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = preview("online", "0", &png);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let img = image::open(&png).unwrap().to_rgb8();
    // 64 px inputs drawn at 128 px with a 3 px border, 12 tiles a row (four twin/blend/mask
    // triples), 28 px of caption: 2 pairs make one row of 6 tiles under a 50 px header.
    assert_eq!(img.dimensions(), (1686, 50 + 22 + (134 + 28 + 6) + 6));
    let (top, cell) = (50 + 22, 140);
    let border = |k: u32| *img.get_pixel(6 + k * cell, top);
    let (green, orange, grey) = (image::Rgb([30, 150, 60]), image::Rgb([230, 140, 0]), image::Rgb([90, 90, 90]));
    assert_eq!([border(0), border(1), border(2), border(3), border(4), border(5)], [green, orange, grey, green, orange, grey]);
    let inside = |k: u32| (0..128).flat_map(move |y| (0..128).map(move |x| (6 + k * cell + 3 + x, top + 3 + y)));
    // A mask tile is grey levels with some blended (non-black) pixels; a face tile is in colour.
    for k in [2, 5] {
        assert!(inside(k).all(|(x, y)| {
            let p = img.get_pixel(x, y);
            p[0] == p[1] && p[1] == p[2]
        }));
        assert!(inside(k).any(|(x, y)| img.get_pixel(x, y)[0] > 0));
    }
    assert!(inside(0).any(|(x, y)| {
        let p = img.get_pixel(x, y);
        p[0] != p[1] || p[1] != p[2]
    }));
    let other = case.out("s1.png");
    let o = preview("online", "1", &other);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_ne!(std::fs::read(&png).unwrap(), std::fs::read(&other).unwrap(), "another seed, other batches");
    let again = case.out("s0.png");
    assert_eq!(code(&preview("online", "0", &again)), 0);
    assert_eq!(std::fs::read(&png).unwrap(), std::fs::read(&again).unwrap(), "same seed, same batches");

    let o = preview("original", "0", &case.out("o.png"));
    assert_eq!(code(&o), 0, "{}", text(&o));
    // Four of a balanced batch of 8: two reals, then two fakes (a part keeps the batch's mix).
    let orig = image::open(case.out("o.png")).unwrap().to_rgb8();
    let red = image::Rgb([200, 40, 40]);
    let tops: Vec<_> = (0..4).map(|k| *orig.get_pixel(6 + k * cell, top)).collect();
    assert_eq!(tops, [green, green, red, red]);
    let o = preview("domains", "0", &case.out("d.png"));
    assert_eq!(code(&o), 0, "{}", text(&o));
    let d = image::open(case.out("d.png")).unwrap().to_rgb8();
    // Four manipulations, one block each of 4 samples (one row of 8 columns).
    assert_eq!(d.height(), 50 + 4 * (22 + 168) + 6);

    let o = preview("online", "0", &case.out("s.jpg"));
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("--out") && text(&o).contains("png"), "{}", text(&o));
    assert!(!case.out("s.jpg").exists());
}
