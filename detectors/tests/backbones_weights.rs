//! Safetensors save/load round trip, mismatch reporting and position-embedding resizing.
use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};
use detectors::backbones::build;
use detectors::weights::{LoadOptions, load_safetensors, resize_pos_embed, save_safetensors};
use detectors::{Mode, ParamStore};

fn values(store: &ParamStore) -> Result<Vec<(String, Vec<f32>)>> {
    store
        .trainable()
        .chain(store.buffers())
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

#[test]
fn save_then_load_round_trip() -> Result<()> {
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("meso.safetensors");
    let pb = ParamStore::new(&Device::Cpu).builder(1);
    let bb = build("meso4", &pb, 64)?;
    // Move the running statistics away from their initial values so buffers are tested too.
    let x = (Tensor::arange(0f32, (2 * 3 * 64 * 64) as f32, &Device::Cpu)? * 0.37)?
        .sin()?
        .reshape((2, 3, 64, 64))?;
    bb.forward_features(&x, Mode::Train)?;
    let src = pb.store();
    save_safetensors(&src, &path)?;
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).map_err(candle_core::Error::wrap)?.count(), 1);

    let pb2 = ParamStore::new(&Device::Cpu).builder(2);
    build("meso4", &pb2, 64)?;
    let dst = pb2.store();
    assert_ne!(values(&src)?, values(&dst)?);
    let report = load_safetensors(&dst, &path, &LoadOptions::default())?;
    assert_eq!(report.loaded.len(), src.trainable().count() + src.buffers().count());
    assert_eq!(values(&src)?, values(&dst)?);
    Ok(())
}

#[test]
fn mismatches_are_listed_and_nothing_is_copied() -> Result<()> {
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("w.safetensors");
    let dev = Device::Cpu;
    let mut m: HashMap<String, Tensor> = HashMap::new();
    m.insert("module.conv1.weight".into(), Tensor::ones((8, 3, 3, 3), candle_core::DType::F32, &dev)?);
    m.insert("module.conv2.weight".into(), Tensor::ones((8, 8, 3, 3), candle_core::DType::F32, &dev)?); // wrong k
    m.insert("module.extra.weight".into(), Tensor::ones(2, candle_core::DType::F32, &dev)?);
    m.insert("module.fc1.weight".into(), Tensor::ones(2, candle_core::DType::F32, &dev)?);
    m.insert("module.bn1.num_batches_tracked".into(), Tensor::new(&[3i64], &dev)?);
    candle_core::safetensors::save(&m, &path)?;

    let pb = ParamStore::new(&Device::Cpu).builder(0);
    build("meso4", &pb, 64)?;
    let store = pb.store();
    let before = values(&store)?;
    let opts = LoadOptions {
        strip_prefix: Some("module.".into()),
        ignore_prefixes: vec!["fc1.".into()],
        ..Default::default()
    };
    let err = load_safetensors(&store, &path, &opts).unwrap_err().to_string();
    assert!(err.contains("w.safetensors"), "{err}");
    assert!(err.contains("conv3.weight") && err.contains("bn2.running_var"), "missing: {err}");
    assert!(err.contains("module.extra.weight"), "unexpected: {err}");
    assert!(err.contains("conv2.weight: file [8, 8, 3, 3], model [8, 8, 5, 5]"), "shape: {err}");
    assert!(!err.contains("fc1") && !err.contains("num_batches_tracked"), "{err}");
    assert_eq!(values(&store)?, before, "a failed load must not copy anything");

    // Allowing the rest to be missing and dropping the bad tensors, the good one loads.
    let mut m2 = HashMap::new();
    m2.insert("module.conv1.weight".to_string(), m["module.conv1.weight"].clone());
    m2.insert("module.bn1.num_batches_tracked".to_string(), m["module.bn1.num_batches_tracked"].clone());
    candle_core::safetensors::save(&m2, &path)?;
    let opts = LoadOptions { allow_missing_prefixes: vec!["conv".into(), "bn".into()], ..opts };
    let rep = load_safetensors(&store, &path, &opts)?;
    assert_eq!(rep.loaded, vec!["conv1.weight".to_string()]);
    assert_eq!(rep.ignored, vec!["module.bn1.num_batches_tracked".to_string()]);
    assert_eq!(
        store.param("conv1.weight").unwrap().as_tensor().flatten_all()?.to_vec1::<f32>()?,
        vec![1.0; 216]
    );
    let missing =
        load_safetensors(&store, dir.path().join("absent.safetensors"), &opts).unwrap_err().to_string();
    assert!(missing.contains("absent.safetensors"), "{missing}");
    Ok(())
}

#[test]
fn pos_embed_bilinear_resize_by_hand() -> Result<()> {
    // 2x2 grid, 1 channel: [[0, 1], [2, 3]] plus cls 9 -> 4x4 (align_corners = false): per axis
    // the taps are a, .75a + .25b, .25a + .75b, b.
    let pos = Tensor::new(&[9f32, 0., 1., 2., 3.], &Device::Cpu)?.reshape((1, 5, 1))?;
    let r = resize_pos_embed(&pos, &[1, 17, 1])?.flatten_all()?.to_vec1::<f32>()?;
    let axis = [0.0f32, 0.25, 0.75, 1.0];
    let mut want = vec![9.0];
    for &wy in &axis {
        for &wx in &axis {
            want.push(wx + 2.0 * wy);
        }
    }
    assert_eq!(r, want);
    // Same size is the identity; non-square counts are refused.
    assert_eq!(
        resize_pos_embed(&pos, &[1, 5, 1])?.flatten_all()?.to_vec1::<f32>()?,
        vec![9., 0., 1., 2., 3.]
    );
    assert!(resize_pos_embed(&pos, &[1, 6, 1]).is_err());
    Ok(())
}

#[test]
fn vit_checkpoint_at_another_size_loads_with_resize() -> Result<()> {
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("vit.safetensors");
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    build("vit-tiny", &pb, 32)?;
    save_safetensors(&pb.store(), &path)?;
    let pb64 = ParamStore::new(&Device::Cpu).builder(1);
    build("vit-tiny", &pb64, 64)?;
    let store = pb64.store();
    let err = load_safetensors(&store, &path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("pos_embed: file [1, 5, 64], model [1, 17, 64]"), "{err}");
    let rep = load_safetensors(&store, &path, &LoadOptions { resize_pos_embed: true, ..Default::default() })?;
    assert_eq!(rep.resized, vec!["pos_embed".to_string()]);
    assert_eq!(store.param("pos_embed").unwrap().dims(), &[1, 17, 64]);
    Ok(())
}

#[test]
fn linear_shaped_pointwise_weights_are_reshaped() -> Result<()> {
    // Cadene's Xception file stores `pointwise.weight` as [out, in]; the model has [out, in, 1, 1].
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("pw.safetensors");
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    build("xception", &pb, 32)?;
    let store = pb.store();
    let name = "block1.rep.0.pointwise.weight";
    let w = Tensor::arange(0f32, (128 * 64) as f32, &Device::Cpu)?.reshape((128, 64))?;
    let mut m = HashMap::new();
    m.insert(name.to_string(), w.clone());
    candle_core::safetensors::save(&m, &path)?;
    let opts = LoadOptions { allow_missing_prefixes: vec![String::new()], ..Default::default() };
    let rep = load_safetensors(&store, &path, &opts)?;
    assert_eq!(rep.loaded, vec![name.to_string()]);
    let got = store.param(name).unwrap();
    assert_eq!(got.dims(), &[128, 64, 1, 1]);
    assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}
