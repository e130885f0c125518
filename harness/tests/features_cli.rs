//! `bench features` and `bench weights inspect` end to end, against the PyTorch features of the
//! reference fixtures (`detectors/tests/fixtures/reference`, written by
//! `scripts/reference_fixtures.py`), and the `data.normalisation` presets.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use detectors::reference_formula as formula;
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().expect("bench runs")
}

fn fixture(case: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../detectors/tests/fixtures/reference/formula")
        .join(format!("{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Writes the fixture's formula weights under the reference's names.
fn write_weights(doc: &Value, path: &Path) {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (t, entry) in doc["names"].as_array().unwrap().iter().enumerate() {
        let name = entry[0].as_str().unwrap();
        let shape: Vec<usize> = entry[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let v = formula::values(t as u32, name, &shape);
        tensors.insert(name.to_string(), Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap());
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn write_input(size: usize, path: &Path) {
    let x = Tensor::from_vec(formula::input(size, 1), (1, 3, size, size), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("x".to_string(), x)]), path).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn out_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn features_match_pytorch_in_every_output_format() {
    let dir = tempfile::tempdir().unwrap();
    let doc = fixture("resnet18_torchvision");
    let (w, x) = (dir.path().join("resnet18.safetensors"), dir.path().join("x.safetensors"));
    write_weights(&doc, &w);
    write_input(64, &x);
    let reference: Vec<f64> = doc["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    let y = dir.path().join("y.safetensors");
    let o = bench(&["-q", "features", "--backbone", "resnet18", "--weights", s(&w), "--size", "64", s(&x), "--out", s(&y)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let file = candle_core::safetensors::load(&y, &Device::Cpu).unwrap();
    let feats = &file["features"];
    assert_eq!(feats.dims(), &[1, 512]);
    let ours: Vec<f32> = feats.flatten_all().unwrap().to_vec1().unwrap();
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = ours.iter().zip(&reference).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs())) / scale;
    assert!(err <= 1e-5, "relative error {err:e}");

    // .npy and .csv hold the same numbers.
    let npy = dir.path().join("y.npy");
    let o = bench(&["-q", "features", "--backbone", "resnet18", "--weights", s(&w), "--size", "64", s(&x), "--out", s(&npy)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let f = npyz::NpyFile::new(std::io::BufReader::new(std::fs::File::open(&npy).unwrap())).unwrap();
    assert_eq!(f.shape(), &[1, 512]);
    assert_eq!(f.into_vec::<f32>().unwrap(), ours);
    let csv_path = dir.path().join("y.csv");
    let o = bench(&["-q", "features", "--backbone", "resnet18", "--weights", s(&w), "--size", "64", s(&x), "--out", s(&csv_path)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let mut r = csv::Reader::from_path(&csv_path).unwrap();
    let header = r.headers().unwrap().clone();
    assert_eq!((&header[0], &header[1], header.len()), ("input", "f0", 513));
    let row = r.records().next().unwrap().unwrap();
    assert!(row[0].ends_with("x.safetensors#0"));
    let parsed: Vec<f32> = (1..row.len()).map(|i| row[i].parse().unwrap()).collect();
    assert_eq!(parsed, ours);
}

#[test]
fn features_reject_bad_usage_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.safetensors");
    write_input(32, &x);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--backbone".into(), "resnet18".into(), s(&x).into(), "--out".into(), "y.txt".into()], ".safetensors, .npy or .csv"),
        (vec!["--backbone".into(), "resnet99".into(), s(&x).into(), "--out".into(), "y.npy".into()], "unknown backbone `resnet99`"),
        (
            vec!["--backbone".into(), "resnet18".into(), "--weights".into(), "absent.pth".into(), s(&x).into(), "--out".into(), "y.npy".into()],
            "absent.pth",
        ),
        (vec!["--backbone".into(), "resnet18".into(), "nothing.safetensors".into(), "--out".into(), "y.npy".into()], "nothing.safetensors"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["features"];
        full.extend(args.iter().map(String::as_str));
        let o = bench(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {}", out_text(&o));
        assert!(out_text(&o).contains(needle), "{full:?}: `{needle}` not in {}", out_text(&o));
    }
    // A tensor of the wrong shape names the file and the expected shape.
    let bad = dir.path().join("bad.safetensors");
    let t = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("x".to_string(), t)]), &bad).unwrap();
    let o = bench(&["features", "--backbone", "resnet18", s(&bad), "--out", "y.npy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(out_text(&o).contains("[B, 3, H, W]"), "{}", out_text(&o));
}

fn inspect_best(case: &str) -> (String, Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join(format!("{case}.safetensors"));
    write_weights(&fixture(case), &w);
    let o = bench(&["-q", "weights", "inspect", s(&w)]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let best = text
        .lines()
        .skip_while(|l| !l.starts_with("loads into"))
        .nth(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .unwrap_or_default();
    (best, o, w, dir)
}

#[test]
fn inspect_names_the_backbone_of_reference_files() {
    let (best, o, _, _d) = inspect_best("tf_efficientnet_b4_lukemelas");
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(best, "efficientnet-pytorch-b4", "{}", out_text(&o));
    let (best, o, w, _d) = inspect_best("xception_cadene");
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(best, "xception", "{}", out_text(&o));

    // Against the wrong backbone: exit 1 with the unmatched names counted.
    let o = bench(&["-q", "weights", "inspect", s(&w), "--backbone", "resnet18"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out_text(&o).contains("resnet18: 0 matched, 95 missing, 229 unexpected, 5 mis-shaped"), "{}", out_text(&o));
    let o = bench(&["-q", "weights", "inspect", s(&w), "--backbone", "xception"]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(out_text(&o).contains("xception: 234 matched, 0 missing, 0 unexpected, 0 mis-shaped, 2 ignored - loads"), "{}", out_text(&o));
}

#[test]
fn normalisation_presets_and_their_errors() {
    let base = include_str!("fixtures/protocols/base.toml");
    let dir = tempfile::tempdir().unwrap();
    let load = |value: &str| {
        let text = base.replacen("resolution = 64\n", &format!("resolution = 64\nnormalisation = {value}\n"), 1);
        let p = dir.path().join("p.toml");
        std::fs::write(&p, text).unwrap();
        harness::protocol::load(&p)
    };
    let n = load("\"imagenet\"").unwrap().data.normalisation;
    assert_eq!((n.mean, n.std), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]));
    let n = load("\"deepfakebench\"").unwrap().data.normalisation;
    assert_eq!((n.mean, n.std), ([0.5; 3], [0.5; 3]));
    let n = load("{ mean = [0.1, 0.2, 0.3], std = [1, 2, 3] }").unwrap().data.normalisation;
    assert_eq!((n.mean, n.std), ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]));
    let errs = load("\"imagnet\"").unwrap_err().0;
    let msg = errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(msg.contains("data.normalisation") && msg.contains("imagnet") && msg.contains("imagenet"), "{msg}");
}
