//! Backbone shapes, parameter counts (against the reference architectures' published counts),
//! seeded initialisation, and one SGD step lowering a loss.
use candle_core::{DType, Device, Result, Tensor};
use detectors::backbones::{self, build, num_params};
use detectors::layers::Linear;
use detectors::{Backbone, Mode, ParamBuilder, ParamStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn images(b: usize, s: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..b * 3 * s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu)
}

fn built(name: &str, seed: u64, size: usize) -> Result<(Box<dyn Backbone>, ParamBuilder)> {
    let pb = ParamStore::new(&Device::Cpu).builder(seed);
    let bb = build(name, &pb.pp("backbone"), size)?;
    Ok((bb, pb))
}

/// Shape, feature width and trainable-parameter count of one backbone at `size` px.
fn check(name: &str, size: usize, feature_dim: usize) -> Result<()> {
    let (bb, pb) = built(name, 0, size)?;
    assert_eq!(bb.feature_dim(), feature_dim, "{name}");
    let f = bb.forward_features(&images(2, size, 1)?, Mode::Train)?;
    assert_eq!(f.dims(), &[2, feature_dim], "{name}");
    assert_eq!(backbones::feature_dim(name, size), Some(feature_dim), "{name}: without building");
    assert!(f.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()), "{name}");
    let store = pb.store();
    assert_eq!(store.num_trainable(), num_params(name, size).unwrap(), "{name}");
    assert!(store.trainable().all(|(n, _)| n.starts_with("backbone.")));
    Ok(())
}

#[test]
fn published_parameter_counts() {
    // Reference counts minus each classifier, computed independently of this crate:
    // torchvision resnet18 11,689,512 - 513,000; resnet34 21,797,672 - 513,000;
    // timm efficientnet_b0 5,288,548 - 1,281,000; efficientnet_b4 19,341,616 - 1,793,000;
    // Cadene xception 22,855,952 - 2,049,000; timm vit_base_patch16_224 86,567,656 - 769,000.
    assert_eq!(num_params("resnet18", 224), Some(11_176_512));
    assert_eq!(num_params("resnet34", 224), Some(21_284_672));
    assert_eq!(num_params("efficientnet-b0", 224), Some(4_007_548));
    assert_eq!(num_params("efficientnet-b4", 224), Some(17_548_616));
    assert_eq!(num_params("xception", 299), Some(20_806_952));
    assert_eq!(num_params("vit-b16", 224), Some(85_798_656));
    // Meso4 (bias-free convs, one BN per conv): 3*8*9 + 8*8*25 + 8*16*25 + 16*16*25
    // + 2*(8 + 8 + 16 + 16).
    assert_eq!(num_params("meso4", 256), Some(216 + 1600 + 3200 + 6400 + 96));
    // MesoInception4: inception 1 (3->1,4,4,2) and 2 (11->2,4,4,2) with their BNs, two 5x5 convs
    // each with its BN.
    let inc = |cin: usize, a: usize, b: usize, c: usize, d: usize| {
        cin * (a + b + c + d) + 9 * (b * b + c * c + d * d) + 2 * (a + b + c + d)
    };
    assert_eq!(
        num_params("meso4-inception", 256),
        Some(inc(3, 1, 4, 4, 2) + inc(11, 2, 4, 4, 2) + 12 * 16 * 25 + 16 * 16 * 25 + 32 + 32)
    );
    // vit-tiny at 64 px: 16 patches + cls.
    let d = 64;
    let block = 4 * d + 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d;
    assert_eq!(num_params("vit-tiny", 64), Some(3 * 256 * d + d + d + 17 * d + 2 * block + 2 * d));
    assert_eq!(num_params("nope", 64), None);
    assert_eq!(num_params("vit-tiny", 70), None);
    for info in backbones::registry() {
        assert!(num_params(info.name, 224).is_some(), "{}", info.name);
    }
}

#[test]
fn meso_shapes_and_counts() -> Result<()> {
    check("meso4", 64, 16 * 2 * 2)?;
    check("meso4-inception", 64, 16 * 2 * 2)?;
    // DeepfakeBench's 256 px gives its 16*8*8 = 1024 input to fc1.
    let (bb, _) = built("meso4", 0, 256)?;
    assert_eq!(bb.feature_dim(), 1024);
    Ok(())
}

#[test]
fn resnet_shapes_and_counts() -> Result<()> {
    check("resnet18", 64, 512)?;
    check("resnet34", 32, 512)
}

#[test]
fn efficientnet_shapes_and_counts() -> Result<()> {
    check("efficientnet-b0", 64, 1280)?;
    check("efficientnet-b4", 32, 1792)?;
    check("tf-efficientnet-b0", 64, 1280)?;
    check("tf-efficientnet-b4", 32, 1792)?;
    check("efficientnet-pytorch-b0", 64, 1280)?;
    check("efficientnet-pytorch-b4", 32, 1792)
}

#[test]
fn xception_shape_and_count() -> Result<()> {
    check("xception", 32, 2048)
}

#[test]
fn vit_shapes_and_counts() -> Result<()> {
    check("vit-tiny", 64, 64)?;
    // ViT-B/16 at 32 px (4 patches) keeps the test cheap; the count differs from 224 px only by
    // the position embeddings, (197 - 5) * 768.
    check("vit-b16", 32, 768)?;
    assert_eq!(num_params("vit-b16", 224).unwrap() - num_params("vit-b16", 32).unwrap(), 192 * 768);
    // Built for 64 px, a 32 px batch is refused with a clear error.
    let (bb, _) = built("vit-tiny", 0, 64)?;
    let err = bb.forward_features(&images(1, 32, 0)?, Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("64x64"), "{err}");
    Ok(())
}

#[test]
fn build_rejects_bad_names_and_sizes() {
    let pb = ParamStore::new(&Device::Cpu).builder(0);
    let e = build("resnet50", &pb, 224).err().unwrap().to_string();
    assert!(e.contains("resnet50") && e.contains("resnet18"), "{e}");
    assert!(build("meso4", &pb, 16).is_err());
    assert!(build("vit-tiny", &pb, 40).is_err());
    let (bb, _) = built("meso4", 0, 32).unwrap();
    let gray = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = bb.forward_features(&gray, Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("meso4") && e.contains("[B, 3, H, W]") && e.contains("[2, 1, 32, 32]"), "{e}");
}

#[test]
fn torchvision_and_timm_names() -> Result<()> {
    let names = |name: &str, size| -> Result<Vec<String>> {
        let pb = ParamStore::new(&Device::Cpu).builder(0);
        build(name, &pb, size)?;
        let s = pb.store();
        Ok(s.trainable().chain(s.buffers()).map(|(n, _)| n.clone()).collect())
    };
    let r = names("resnet18", 64)?;
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
    ] {
        assert!(r.iter().any(|x| x == n), "{n}");
    }
    let e = names("efficientnet-b0", 64)?;
    for n in [
        "conv_stem.weight",
        "blocks.0.0.se.conv_reduce.bias",
        "blocks.1.0.conv_pwl.weight",
        "blocks.6.0.bn3.running_mean",
        "conv_head.weight",
    ] {
        assert!(e.iter().any(|x| x == n), "{n}");
    }
    let x = names("xception", 64)?;
    // block1 starts without ReLU: rep.0 sepconv, rep.1 BN, rep.2 ReLU, rep.3 sepconv, rep.4 BN.
    for n in [
        "block1.rep.0.conv1.weight",
        "block1.rep.4.running_mean",
        "block2.rep.1.pointwise.weight",
        "block12.skipbn.weight",
        "conv4.pointwise.weight",
    ] {
        assert!(x.iter().any(|y| y == n), "{n}");
    }
    let v = names("vit-tiny", 32)?;
    for n in [
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.1.attn.qkv.bias",
        "blocks.0.mlp.fc2.weight",
        "norm.weight",
    ] {
        assert!(v.iter().any(|y| y == n), "{n}");
    }
    Ok(())
}

#[test]
fn seeded_initialisation_is_deterministic() -> Result<()> {
    let x = images(2, 64, 3)?;
    for name in ["meso4", "resnet18", "vit-tiny"] {
        let f = |seed| -> Result<Vec<f32>> {
            let (bb, _) = built(name, seed, 64)?;
            bb.forward_features(&x, Mode::Eval)?.flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(f(5)?, f(5)?, "{name}");
        assert_ne!(f(5)?, f(6)?, "{name}");
    }
    Ok(())
}

/// `max(z, 0) - z y + log(1 + exp(-|z|))`, the stable BCE with logits.
fn bce(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let t = (logits.relu()? - (logits * y)?)?;
    (t + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()
}

#[test]
fn one_sgd_step_lowers_the_loss() -> Result<()> {
    let x = images(4, 64, 9)?;
    let y = Tensor::new(&[1f32, 0., 1., 0.], &Device::Cpu)?.reshape((4, 1))?;
    for name in ["meso4", "resnet18", "vit-tiny"] {
        let (bb, pb) = built(name, 1, 64)?;
        let head = Linear::new(&pb.pp("head"), bb.feature_dim(), 1, true)?;
        let loss_of = |m| -> Result<Tensor> { bce(&head.forward(&bb.forward_features(&x, m)?)?, &y) };
        let store = pb.store();
        let l0 = loss_of(Mode::Train)?;
        let grads = l0.backward()?;
        let l0 = l0.to_scalar::<f32>()? as f64;
        let mut sq = 0.0f64;
        let mut updates = Vec::new();
        for (_, var) in store.trainable() {
            let g = grads.get(var.as_tensor()).expect("every parameter takes part in the loss");
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            updates.push((var, g.clone()));
        }
        // A step sized to lower the loss by 1% to first order: `lr * |g|^2 = 0.01 * l0`. The
        // actual change must match that prediction, which checks the gradient as a whole
        // (BatchNorm in training mode, max-pool, attention), not only its sign.
        let lr = 0.01 * l0 / sq;
        for (var, g) in updates {
            var.set(&(var.as_tensor() - (g * lr)?)?)?;
        }
        let l1 = loss_of(Mode::Train)?.to_scalar::<f32>()? as f64;
        let ratio = (l0 - l1) / (0.01 * l0);
        eprintln!("{name}: loss {l0} -> {l1}, first-order ratio {ratio:.3}");
        assert!(l1 < l0 && (0.9..1.1).contains(&ratio), "{name}: loss {l0} -> {l1}, ratio {ratio}");
        // Running statistics moved in the two Train passes (CNNs only).
        for (n, b) in store.buffers().filter(|(n, _)| n.ends_with("running_mean")) {
            let v = b.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            assert!(v.iter().any(|&m| m != 0.0), "{name}: {n} never updated");
        }
    }
    Ok(())
}

/// Forward + backward time of one batch of 8 at 128 px per backbone (CPU). Not part of the
/// suite: `cargo test --release -p detectors --test backbones_models -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_forward_backward_batch8_128px() -> Result<()> {
    let x = images(8, 128, 0)?;
    for info in backbones::registry() {
        let (bb, pb) = built(info.name, 0, 128)?;
        let head = Linear::new(&pb.pp("head"), bb.feature_dim(), 1, true)?;
        let y = Tensor::zeros((8, 1), DType::F32, &Device::Cpu)?;
        let t = std::time::Instant::now();
        let loss = bce(&head.forward(&bb.forward_features(&x, Mode::Train)?)?, &y)?;
        let t_fwd = t.elapsed();
        let _g = loss.backward()?;
        println!(
            "{:<16} forward {:>7.3} s  forward+backward {:>7.3} s",
            info.name,
            t_fwd.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
