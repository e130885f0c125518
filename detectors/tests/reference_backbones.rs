//! Every backbone family against its PyTorch reference (timm, torchvision, efficientnet_pytorch,
//! Cadene names), through the real loaders, to 1e-5 of the feature vector's largest magnitude.
//!
//! The fixtures come from `scripts/reference_fixtures.py` (run by hand, never by CI; see
//! docs/pretrained.md). `formula/*.json`: full-size networks whose state-dict entries the script
//! fills by an integer hash, which `formula_values` regenerates bit for bit; this test writes them
//! under the reference's names to a safetensors file and loads that. `pth/*`: reduced-width
//! EfficientNets with random weights saved by `torch.save`, read directly.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};
use detectors::backbones::efficientnet::{EfficientNet, Variant};
use detectors::backbones::{CLASSIFIER_PREFIXES, build};
use detectors::model::Backbone;
use detectors::weights::{LoadOptions, LoadReport, load_weights};
use detectors::{Mode, ParamStore};
use detectors::reference_formula as formula;
use serde_json::Value;

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn formula_input(size: usize, batch: usize) -> Result<Tensor> {
    Tensor::from_vec(formula::input(size, batch), (batch, 3, size, size), &Device::Cpu)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pretrained_options(backbone: &str) -> LoadOptions {
    LoadOptions {
        family: Some(backbone.to_string()),
        ignore_prefixes: CLASSIFIER_PREFIXES.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// Largest |ours - reference| over the largest |reference|.
fn relative_error(ours: &Tensor, reference: &[f64]) -> Result<f64> {
    let ours = ours.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    assert_eq!(ours.len(), reference.len(), "feature count");
    let scale = reference.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(scale > 1e-6, "degenerate reference features (max |x| = {scale})");
    Ok(ours.iter().zip(reference).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale)
}

fn features_of(doc: &Value) -> Vec<f64> {
    doc["features"].as_array().expect("features").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn check_formula_case(case: &str) -> Result<()> {
    let doc = read_json(&fixtures().join("formula").join(format!("{case}.json")));
    let backbone = doc["backbone"].as_str().expect("backbone");
    let size = doc["size"].as_u64().expect("size") as usize;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (t, entry) in doc["names"].as_array().expect("names").iter().enumerate() {
        let name = entry[0].as_str().expect("name");
        let shape: Vec<usize> =
            entry[1].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
        let values = formula::values(t as u32, name, &shape);
        tensors.insert(name.to_string(), Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?);
    }
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join(format!("{case}.safetensors"));
    candle_core::safetensors::save(&tensors, &path)?;

    let pb = ParamStore::new(&Device::Cpu).builder(7);
    let net = build(backbone, &pb, size)?;
    let report = load_weights(&pb.store(), &path, &pretrained_options(backbone))?;
    assert!(report.missing_allowed.is_empty());
    let ours = net.forward_features(&formula_input(size, 1)?, Mode::Eval)?;
    let err = relative_error(&ours, &features_of(&doc))?;
    println!("{case} ({backbone}, {size} px): relative error {err:.2e}");
    assert!(err <= TOLERANCE, "{case}: relative error {err:.3e} > {TOLERANCE:e}");
    Ok(())
}

fn check_pth_case(case: &str) -> Result<LoadReport> {
    let dir = fixtures().join("pth");
    let doc = read_json(&dir.join(format!("{case}.json")));
    let backbone = doc["backbone"].as_str().expect("backbone");
    let width = doc["width"].as_f64().expect("width");
    let size = doc["size"].as_u64().expect("size") as usize;
    let batch = doc["input_shape"][0].as_u64().expect("batch") as usize;
    let variant = match (doc["nominal_size"].as_u64(), backbone.starts_with("tf-")) {
        (Some(n), _) => Variant::TfStatic(n as usize),
        (None, true) => Variant::Tf,
        (None, false) => Variant::Timm,
    };
    let pb = ParamStore::new(&Device::Cpu).builder(7);
    let net = EfficientNet::new(&pb, width, 1.0, variant)?;
    let report = load_weights(&pb.store(), dir.join(format!("{case}.pth")), &pretrained_options(backbone))?;
    assert!(report.missing_allowed.is_empty());
    let ours = net.forward_features(&formula_input(size, batch)?, Mode::Eval)?;
    let err = relative_error(&ours, &features_of(&doc))?;
    println!("{case} ({backbone} x{width}, {size} px): relative error {err:.2e}");
    assert!(err <= TOLERANCE, "{case}: relative error {err:.3e} > {TOLERANCE:e}");
    Ok(report)
}

#[test]
fn formula_matches_python() {
    // Literals printed by the script's `formula_raw` (numpy uint64 arithmetic).
    let got: Vec<i32> = (0..3).map(|i| formula::raw(0, i)).collect();
    assert_eq!(got, [1409, -1751, -372]);
    assert_eq!(formula::raw(7, 4), -775);
    assert_eq!([formula::raw(100_000, 0), formula::raw(100_000, 1)], [-1539, -1976]);
    // Every value is a multiple of 2^-12 (times a power of two) in the documented ranges.
    let w = formula::values(3, "conv.weight", &[8, 4, 3, 3]);
    assert!(w.iter().all(|v| v.abs() <= 0.5 / 4.0 && (v * 4096.0 * 4.0).fract() == 0.0));
    let var = formula::values(3, "bn.running_var", &[64]);
    assert!(var.iter().all(|v| (0.5..1.5).contains(v)));
}

#[test]
fn resnet18_torchvision() -> Result<()> {
    check_formula_case("resnet18_torchvision")
}

#[test]
fn resnet34_torchvision() -> Result<()> {
    check_formula_case("resnet34_torchvision")
}

#[test]
fn efficientnet_b0_timm() -> Result<()> {
    check_formula_case("efficientnet_b0_timm")
}

#[test]
fn efficientnet_b4_timm() -> Result<()> {
    check_formula_case("efficientnet_b4_timm")
}

#[test]
fn tf_efficientnet_b0_timm() -> Result<()> {
    check_formula_case("tf_efficientnet_b0_timm")
}

#[test]
fn tf_efficientnet_b4_timm() -> Result<()> {
    check_formula_case("tf_efficientnet_b4_timm")
}

#[test]
fn tf_efficientnet_b4_efficientnet_pytorch_names() -> Result<()> {
    check_formula_case("tf_efficientnet_b4_lukemelas")
}

/// efficientnet_pytorch as `from_pretrained` builds it (padding fixed for 380 px) run at 64 px.
#[test]
fn efficientnet_pytorch_b4_static_padding() -> Result<()> {
    // Deep in a formula-filled network the activations are nearly constant across space, so
    // this case checks names and eps; `pth_efficientnet_pytorch_static_padding` checks padding.
    check_formula_case("efficientnet_pytorch_b4_nominal380")?;
    Ok(())
}

#[test]
fn xception_timm_legacy_names() -> Result<()> {
    check_formula_case("xception_timm_legacy")
}

#[test]
fn xception_cadene_names() -> Result<()> {
    check_formula_case("xception_cadene")
}

#[test]
fn vit_b16_timm() -> Result<()> {
    check_formula_case("vit_b16_timm")
}

#[test]
fn pth_timm_tf_efficientnet() -> Result<()> {
    check_pth_case("timm_tf_efficientnet_w010").map(drop)
}

#[test]
fn pth_timm_efficientnet() -> Result<()> {
    check_pth_case("timm_efficientnet_w010").map(drop)
}

#[test]
fn pth_efficientnet_pytorch_nested_under_state_dict_with_module_prefix() -> Result<()> {
    check_pth_case("lukemelas_w010_nested").map(drop)
}

#[test]
fn pth_deepfakebench_detector_checkpoint() -> Result<()> {
    let report = check_pth_case("deepfakebench_w010")?;
    // The detector's own head is set aside; the backbone's classifier-like layers are ignored.
    assert!(report.ignored.contains(&"head.weight".to_string()), "{:?}", report.ignored);
    assert!(report.ignored.iter().any(|n| n.starts_with("efficientnet._fc.")), "{:?}", report.ignored);
    Ok(())
}

/// The symmetric and TF variants differ (the fixtures would not tell them apart otherwise).
#[test]
fn tf_padding_changes_the_features() -> Result<()> {
    let x = formula_input(40, 1)?;
    let pb = ParamStore::new(&Device::Cpu).builder(3);
    let a = EfficientNet::new(&pb.pp("a"), 0.1, 1.0, Variant::Timm)?;
    let pb2 = ParamStore::new(&Device::Cpu).builder(3);
    let b = EfficientNet::new(&pb2.pp("a"), 0.1, 1.0, Variant::Tf)?;
    let fa = a.forward_features(&x, Mode::Eval)?;
    let fb = b.forward_features(&x, Mode::Eval)?;
    let scale = fa.abs()?.max_all()?.to_scalar::<f32>()?;
    let d = (fa - fb)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d > 1e-3 * scale, "TF padding changed the features by only {d} (max |feature| {scale})");
    Ok(())
}

/// efficientnet_pytorch's padding fixed for 224 px, at 40 px (where per-input "SAME" differs:
/// the fourth stride-2 layer sees 5 px, odd, where the nominal size gives 28, even).
#[test]
fn pth_efficientnet_pytorch_static_padding() -> Result<()> {
    check_pth_case("lukemelas_w010_static224")?;
    let doc = read_json(&fixtures().join("pth/lukemelas_w010_static224.json"));
    let pb = ParamStore::new(&Device::Cpu).builder(7);
    let net = EfficientNet::new(&pb, 0.1, 1.0, Variant::Tf)?;
    let path = fixtures().join("pth/lukemelas_w010_static224.pth");
    load_weights(&pb.store(), path, &pretrained_options("tf-efficientnet-b0"))?;
    let err = relative_error(&net.forward_features(&formula_input(40, 2)?, Mode::Eval)?, &features_of(&doc))?;
    assert!(err > 1e-3, "per-input padding agreed with the static one ({err:e})");
    Ok(())
}

/// The pre-1.6 `torch.save` stream of the 2017-2019 checkpoints (Cadene, efficientnet_pytorch).
#[test]
fn pth_legacy_format() -> Result<()> {
    check_pth_case("lukemelas_w010_legacy").map(drop)
}

/// Truncated or foreign files are errors naming the file, never panics.
#[test]
fn damaged_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pth");
    for case in ["lukemelas_w010_legacy", "timm_tf_efficientnet_w010"] {
        let bytes = std::fs::read(src.join(format!("{case}.pth"))).unwrap();
        for cut in [20, bytes.len() / 2, bytes.len() - 100] {
            let p = dir.path().join(format!("{case}-{cut}.pth"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = detectors::weights::read_tensors(&p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }
    let p = dir.path().join("text.pth");
    std::fs::write(&p, "not a checkpoint").unwrap();
    let e = detectors::weights::read_tensors(&p).unwrap_err().to_string();
    assert!(e.contains("neither a safetensors file nor a PyTorch checkpoint"), "{e}");
}
