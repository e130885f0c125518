//! `protocols/paper/*.toml` (the papers' settings for DeepfakeBench-preprocessed data on a GPU)
//! stay valid: each file, unchanged, is validated by `bench validate` against a tiny stand-in of
//! DeepfakeBench's layout (the synthetic `tiny` preset, which writes that layout), linked where
//! the protocols expect a user's data (`<checkout>/data/deepfakebench/{rgb,dataset_json}`, here
//! inside a temporary copy of the checkout's layout). The pre-flight indexes every dataset each
//! protocol names, so a renamed dataset, label or key fails here. Also checked: what the files
//! promise in their comments (the papers' numbers, and a GPU time per 1,000 steps that is either
//! measured or says it is not).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use harness::protocol::{self, DataFormat, Precision};

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn paper_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols/paper")
}

fn paper_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(paper_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// A checkout-shaped tree, made once per test process: `protocols/paper/` (a copy of every
/// paper protocol, unchanged) beside `data/deepfakebench/{rgb,dataset_json}` linked to the tiny
/// synthetic benchmark. Returns the copies' directory.
fn layout() -> &'static Path {
    static TREE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, pdir) = TREE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let synth = tmp.path().join("synth");
        let (code, out) = bench(&["data", "synth", "--out", synth.to_str().unwrap(), "--preset", "tiny"]);
        assert_eq!(code, 0, "bench data synth: {out}");
        let data = tmp.path().join("data/deepfakebench");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&synth, data.join("rgb")).unwrap();
        std::os::unix::fs::symlink(synth.join("dataset_json"), data.join("dataset_json")).unwrap();
        let pdir = tmp.path().join("protocols/paper");
        std::fs::create_dir_all(&pdir).unwrap();
        for src in paper_files() {
            std::fs::copy(&src, pdir.join(src.file_name().unwrap())).unwrap();
        }
        (tmp, pdir)
    });
    pdir
}

#[test]
fn every_paper_protocol_validates_against_a_deepfakebench_layout() {
    let files = paper_files();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["csdfd_table1.toml", "csdfd_table2.toml", "roga_table2.toml", "roga_table4.toml"] {
        assert!(names.iter().any(|n| n == want), "protocols/paper/{want} is missing ({names:?})");
    }
    for src in &files {
        let text = std::fs::read_to_string(src).unwrap();
        let copy = layout().join(src.file_name().unwrap());
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), text, "validated unchanged");

        // Loads as a GPU protocol on DeepfakeBench data, in f32 (the papers' precision).
        let p = protocol::load(&copy).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert_eq!(p.data.format, DataFormat::Deepfakebench, "{}", src.display());
        assert!(p.device.starts_with("cuda"), "{}: device {}", src.display(), p.device);
        assert!(p.methods.iter().all(|m| m.training.precision == Precision::F32), "{}", src.display());

        let (code, out) = bench(&["validate", copy.to_str().unwrap()]);
        assert_eq!(code, 0, "bench validate {}:\n{out}", src.display());
        assert!(out.contains("data pre-flight"), "{}: no pre-flight in\n{out}", src.display());

        // The comment about GPU time: measured (a number of seconds or minutes) or plainly not yet.
        let line = text
            .lines()
            .find(|l| l.starts_with("# Time per 1,000 steps on a GPU:"))
            .unwrap_or_else(|| panic!("{}: no `# Time per 1,000 steps on a GPU:` comment", src.display()));
        let measured = line.chars().any(|c| c.is_ascii_digit() && c != '1') && (line.contains(" s") || line.contains("min"));
        assert!(line.contains("not yet measured") || measured, "{}: {line}", src.display());
    }
}

/// The settings the papers state, as the files encode them (CS-DFD Sec. V-A; RoGA Sec. V-A).
#[test]
fn paper_protocols_carry_the_papers_settings() {
    // Loading checks that the data's JSONs exist: load the copies in the stand-in layout.
    let load = |name: &str| protocol::load(layout().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));

    let t1 = load("csdfd_table1.toml");
    assert_eq!(t1.model.backbone, "efficientnet-pytorch-b4");
    assert_eq!(t1.data.resolution, 256);
    assert_eq!(t1.training.batch_size, 16);
    let csdfd = t1.methods.iter().find(|m| m.method.kind == "cs-dfd").unwrap();
    assert_eq!(csdfd.method.params["c"].as_f64(), Some(0.5));
    assert_eq!(csdfd.method.params["tau"].as_f64(), Some(0.01));
    let mut kinds: Vec<String> = t1.methods.iter().map(|m| m.method.name.clone()).collect();
    kinds.sort();
    assert_eq!(kinds, ["CS-DFD", "O", "O+S", "S"]);
    let tests: Vec<&str> = t1.tests.iter().map(|t| t.dataset.as_str()).collect();
    assert_eq!(tests, ["FaceForensics++", "Celeb-DF-v2", "DFDC", "DFDCP", "UADFV"]);

    let t2 = load("csdfd_table2.toml");
    let backbones: Vec<&str> = t2.sweep.iter().flat_map(|a| a.values.iter().filter_map(|v| v.as_str())).collect();
    assert_eq!(backbones, ["xception", "vit-b16"]);

    for name in ["roga_table2.toml", "roga_table4.toml"] {
        let p = load(name);
        assert_eq!(p.model.backbone, "resnet34", "{name}");
        let roga = p.methods.iter().find(|m| m.method.kind == "roga").unwrap();
        assert_eq!(roga.method.params["rho"].as_f64(), Some(0.1), "{name}");
        assert_eq!(roga.method.params["alpha"].as_f64(), Some(0.0002), "{name}");
        match roga.training.optimizer {
            detectors::config::OptimizerConfig::Sgd { lr, .. } => assert_eq!(lr, 0.005, "{name}"),
            ref other => panic!("{name}: RoGA's base optimizer {other:?}"),
        }
    }
    let t4 = load("roga_table4.toml");
    assert_eq!(t4.folds.as_ref().unwrap().leave_one_out, ["FF-DF"]);
    let opts: Vec<&str> = t4.methods.iter().map(|m| m.method.name.as_str()).collect();
    assert_eq!(opts, ["Adam", "SGD", "SAM", "SAGM", "RoGA"]);
}
