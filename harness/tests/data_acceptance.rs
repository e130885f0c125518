//! Acceptance tests of the data layer: indexes (DeepfakeBench JSON and folder trees), loading,
//! SBI and `bench data check`. Fixtures are written by the tests into temporary folders.
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::data::index::{Index, IndexOptions, Selection, Split, is_real_label, linspace_indices};
use harness::data::loader::{
    EvalStream, FailurePolicy, FrameStore, LoaderConfig, TrainStream, load_landmarks,
};
use harness::data::sbi::{self, HullVariant, RATIOS};
use image::{Rgb, RgbImage};
use npyz::WriterBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// ------------------------------------------------------------------------------------------
// Fixture helpers

/// A face-like test image: gradient background, lighter ellipse, darker eyes and mouth.
fn face_image(size: u32, tint: u8) -> RgbImage {
    let s = size as f32;
    RgbImage::from_fn(size, size, |x, y| {
        let (fx, fy) = (x as f32 / s, y as f32 / s);
        let dx = (fx - 0.5) / 0.33;
        let dy = (fy - 0.52) / 0.42;
        let mut v = [(40.0 + 100.0 * fx) as u8, (60.0 + 80.0 * fy) as u8, tint];
        if dx * dx + dy * dy < 1.0 {
            v = [200, (150.0 + 40.0 * fx) as u8, (120u8).wrapping_add(tint / 2)];
        }
        let eye = ((fx - 0.38).powi(2) + (fy - 0.42).powi(2)).sqrt() < 0.04
            || ((fx - 0.62).powi(2) + (fy - 0.42).powi(2)).sqrt() < 0.04;
        if eye || ((fy - 0.72).abs() < 0.02 && (fx - 0.5).abs() < 0.1) {
            v = [50, 30, 30];
        }
        Rgb(v)
    })
}

/// 81 landmarks in dlib order + 13 forehead points for a face of `size` px.
fn face_landmarks(size: f32) -> Vec<[f32; 2]> {
    let (cx, cy, ax, ay) = (0.5 * size, 0.52 * size, 0.33 * size, 0.42 * size);
    let mut p = Vec::with_capacity(81);
    // Jaw 0..=16: lower half of the ellipse, from the left ear to the right.
    for i in 0..17 {
        let t = std::f32::consts::PI * (1.0 - i as f32 / 16.0);
        p.push([cx + ax * t.cos(), cy + ay * 0.2 + ay * 0.8 * t.sin()]);
    }
    // Brows 17..=26.
    for i in 0..10 {
        p.push([cx - 0.25 * size + 0.5 * size * i as f32 / 9.0, 0.36 * size]);
    }
    // Nose 27..=35.
    for i in 0..4 {
        p.push([cx, 0.42 * size + 0.04 * size * i as f32]);
    }
    for i in 0..5 {
        p.push([cx - 0.05 * size + 0.025 * size * i as f32, 0.6 * size]);
    }
    // Eyes 36..=47.
    for (ex, _) in [(0.38, 0), (0.62, 1)] {
        for i in 0..6 {
            let t = std::f32::consts::TAU * i as f32 / 6.0;
            p.push([ex * size + 0.05 * size * t.cos(), 0.42 * size + 0.02 * size * t.sin()]);
        }
    }
    // Mouth 48..=67.
    for i in 0..20 {
        let t = std::f32::consts::TAU * i as f32 / 20.0;
        p.push([cx + 0.1 * size * t.cos(), 0.72 * size + 0.03 * size * t.sin()]);
    }
    // Forehead 68..=80.
    for i in 0..13 {
        let t = std::f32::consts::PI * (1.0 + i as f32 / 12.0);
        p.push([cx + ax * 0.9 * t.cos(), 0.3 * size + 0.15 * size * t.sin()]);
    }
    assert_eq!(p.len(), 81);
    p
}

fn write_png(path: &Path, img: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn write_npy_i64(path: &Path, pts: &[[f32; 2]]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w =
        npyz::WriteOptions::new().default_dtype().shape(&[pts.len() as u64, 2]).writer(f).begin_nd().unwrap();
    for p in pts {
        w.push(&(p[0].round() as i64)).unwrap();
        w.push(&(p[1].round() as i64)).unwrap();
    }
    w.finish().unwrap();
}

fn write_npy_f32(path: &Path, pts: &[[f32; 2]]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w =
        npyz::WriteOptions::new().default_dtype().shape(&[pts.len() as u64, 2]).writer(f).begin_nd().unwrap();
    for p in pts {
        w.push(&p[0]).unwrap();
        w.push(&p[1]).unwrap();
    }
    w.finish().unwrap();
}

const FRAME_PX: u32 = 32;

/// A DeepfakeBench-format FF++ fixture:
/// real 001: 10 frames named 000, 007, ..., 063 (listed shuffled), landmark of 021 missing;
/// real 002: 2 frames (short); fake FF-DF 001_002: 10 frames with masks; test split: real 003.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    json: PathBuf,
}

fn ff_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let lm = face_landmarks(FRAME_PX as f32);
    let write_video =
        |base: &str, video: &str, n: usize, tint: u8, with_mask: bool, missing_lm: Option<usize>| {
            let mut frames = Vec::new();
            let mut masks = Vec::new();
            for i in 0..n {
                let name = format!("{:03}", i * 7);
                let rel = format!("{base}\\frames\\{video}\\{name}.png");
                write_png(
                    &root.join(rel.replace('\\', "/")),
                    &face_image(FRAME_PX, tint.wrapping_add(i as u8 * 3)),
                );
                if missing_lm != Some(i * 7) {
                    let b = base.replace('\\', "/");
                    write_npy_i64(&root.join(format!("{b}/landmarks/{video}/{name}.npy")), &lm);
                }
                if with_mask {
                    let mrel = format!("{base}\\masks\\{video}\\{name}.png");
                    write_png(
                        &root.join(mrel.replace('\\', "/")),
                        &RgbImage::from_pixel(FRAME_PX, FRAME_PX, Rgb([255; 3])),
                    );
                    masks.push(mrel);
                }
                frames.push(rel);
            }
            // Listed out of order: the index must sort naturally before spreading.
            frames.reverse();
            masks.reverse();
            (frames, masks)
        };
    let real = "FaceForensics++\\original_sequences\\youtube\\c23";
    let fake = "FaceForensics++\\manipulated_sequences\\Deepfakes\\c23";
    let (f1, _) = write_video(real, "001", 10, 10, false, Some(21));
    let (f2, _) = write_video(real, "002", 2, 60, false, None);
    let (f3, m3) = write_video(fake, "001_002", 10, 110, true, None);
    let (f4, _) = write_video(real, "003", 3, 160, false, None);
    let json = serde_json::json!({
        "FaceForensics++": {
            "FF-real": {
                "train": {"c23": {
                    "001": {"label": "FF-real", "frames": f1},
                    "002": {"label": "FF-real", "frames": f2}}},
                "val": {"c23": {}},
                "test": {"c23": {"003": {"label": "FF-real", "frames": f4}}}
            },
            "FF-DF": {
                "train": {"c23": {"001_002": {"label": "FF-DF", "frames": f3, "masks": m3}}},
                "val": {"c23": {}}, "test": {"c23": {}}
            }
        }
    });
    let jdir = root.join("dataset_json");
    std::fs::create_dir_all(&jdir).unwrap();
    let jpath = jdir.join("FaceForensics++.json");
    std::fs::write(&jpath, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    Fixture { _dir: dir, root, json: jpath }
}

fn cfg(res: u32, policy: FailurePolicy) -> LoaderConfig {
    LoaderConfig { resolution: res, policy, cache_bytes: 1 << 24, prefetch: 2, ..Default::default() }
}

fn tensor_bytes(b: &detectors::Batch) -> (Vec<f32>, Vec<f32>) {
    (b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.labels.to_vec1::<f32>().unwrap())
}

// ------------------------------------------------------------------------------------------
// Index

#[test]
fn json_index_counts_labels_spreading_and_side_paths() {
    let fx = ff_fixture();
    let idx = Index::from_json(&fx.json, &fx.root, &IndexOptions { frames_per_video: Some(4), ..Default::default() }).unwrap();
    let train = idx.select(&Selection::new().split(Split::Train));
    // 001: 4 of 10 spread; 002: 2 (short); 001_002: 4 of 10.
    assert_eq!(train.len(), 10);
    assert_eq!(idx.select(&Selection::new().split(Split::Test)).len(), 3);
    let v001: Vec<&str> =
        train.entries.iter().filter(|e| e.video == "001").map(|e| e.frame.as_str()).collect();
    // linspace(0, 9, 4) = [0, 3, 6, 9] over frames named 7 * i.
    assert_eq!(v001, ["000.png", "021.png", "042.png", "063.png"]);
    assert_eq!(linspace_indices(10, 4), vec![0, 3, 6, 9]);
    // Short video reported once, with its count.
    assert_eq!(idx.short_videos.len(), 2, "{:?}", idx.short_videos); // 002 (train) and 003 (test)
    let s = idx.short_videos.iter().find(|s| s.key.video == "002").unwrap();
    assert_eq!((s.found, s.wanted, s.split), (2, 4, Split::Train));
    // Labels and manipulation.
    for e in &idx.entries {
        assert_eq!(e.dataset, "FaceForensics++");
        assert_eq!(e.compression.as_deref(), Some("c23"));
        if e.video == "001_002" {
            assert_eq!(
                (e.label, e.label_name.as_str(), e.manipulation.as_deref()),
                (1, "FF-DF", Some("FF-DF"))
            );
            let m = e.mask_path.as_ref().expect("fake has a mask");
            assert!(m.ends_with("Deepfakes/c23/masks/001_002/".to_string() + &e.frame));
        } else {
            assert_eq!((e.label, e.manipulation.as_deref()), (0, None));
            assert!(e.mask_path.is_none());
        }
        assert!(e.frame_path.starts_with(&fx.root) && e.frame_path.is_file(), "{:?}", e.frame_path);
    }
    // Side paths: landmarks by substitution; the one missing file detected.
    let missing: Vec<_> = idx.missing_landmarks().map(|e| (e.video.clone(), e.frame.clone())).collect();
    assert_eq!(missing, vec![("001".to_string(), "021.png".to_string())]);
    let e = idx.entries.iter().find(|e| e.video == "001" && e.frame == "042.png").unwrap();
    let lp = e.landmark_path.as_ref().unwrap();
    assert!(lp.ends_with("original_sequences/youtube/c23/landmarks/001/042.npy"), "{lp:?}");
    let lm = load_landmarks(lp).unwrap();
    assert_eq!(lm.len(), 81);
    assert_eq!(lm[8], [face_landmarks(32.0)[8][0].round(), face_landmarks(32.0)[8][1].round()]);
    // Per-video grouping keys on dataset + label + video.
    let videos = train.videos();
    assert_eq!(videos.len(), 3);
    // No frame limit: every frame.
    let all = Index::from_root(&fx.root, &IndexOptions::default()).unwrap();
    assert_eq!(all.len(), 10 + 2 + 10 + 3);
    assert!(all.short_videos.is_empty());
    // Selection by label names and compression.
    let df = all.select(&Selection::new().labels(["FF-DF"]).compression("c23"));
    assert_eq!(df.len(), 10);
    assert_eq!(all.select(&Selection::new().compression("c40")).len(), 0);
    assert_eq!(all.manipulations(), vec!["FF-DF".to_string()]);
}

#[test]
fn json_errors_name_file_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    std::fs::write(
        &p,
        r#"{"X": {"X_real": {"train": {"v1": {"label": "X_real", "frames": ["X\\frames\\v1\\000.png", 5]}}}}}"#,
    )
    .unwrap();
    let e = format!("{:#}", Index::from_json(&p, dir.path(), &IndexOptions::default()).unwrap().strict().unwrap_err());
    assert!(
        e.contains("bad.json") && e.contains(r#"["v1"]["frames"][1]"#) && e.contains("expected a string"),
        "{e}"
    );

    std::fs::write(&p, r#"{"X": {"X_real": {"training": {}}}}"#).unwrap();
    let e = format!("{:#}", Index::from_json(&p, dir.path(), &IndexOptions::default()).unwrap().strict().unwrap_err());
    assert!(e.contains(r#"$["X"]["X_real"]["training"]"#) && e.contains("unknown split"), "{e}");

    // A path escaping the data root is refused.
    std::fs::write(
        &p,
        r#"{"X": {"X_real": {"test": {"v1": {"label": "X_real", "frames": ["X\\..\\..\\..\\etc\\frames\\v1\\0.png"]}}}}}"#,
    )
    .unwrap();
    let e = format!("{:#}", Index::from_json(&p, dir.path(), &IndexOptions::default()).unwrap().strict().unwrap_err());
    assert!(
        e.contains("bad.json") && e.contains("escapes the data root") && e.contains("[\"frames\"][0]"),
        "{e}"
    );
}

#[test]
fn folder_tree_index() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let lm = face_landmarks(FRAME_PX as f32);
    // No split folders: every frame in every split.
    for (label, video, n) in [("real", "a", 3), ("fake", "b", 5), ("UADFV_Real", "c", 1)] {
        for i in 0..n {
            write_png(&r.join(format!("UADFV/{label}/{video}/{i:03}.png")), &face_image(FRAME_PX, i as u8));
        }
    }
    write_npy_f32(&r.join("landmarks/UADFV/real/a/001.npy"), &lm);
    // Split folders.
    write_png(&r.join("Other/train/real/v/0.jpg"), &face_image(FRAME_PX, 1));
    write_png(&r.join("Other/test/fake/w/0.png"), &face_image(FRAME_PX, 2));
    std::fs::write(r.join("Other/test/fake/w/notes.txt"), "ignored").unwrap();

    let idx = Index::from_root(r, &IndexOptions { frames_per_video: Some(2), ..Default::default() }).unwrap();
    let uadfv = idx.select(&Selection::new().dataset("UADFV"));
    for s in Split::ALL {
        let sub = uadfv.select(&Selection::new().split(s));
        // 2 of a, 2 of b, 1 of c.
        assert_eq!(sub.len(), 5, "{s}");
    }
    let a: Vec<&str> = uadfv
        .entries
        .iter()
        .filter(|e| e.video == "a" && e.split == Split::Train)
        .map(|e| e.frame.as_str())
        .collect();
    assert_eq!(a, ["000.png", "002.png"]); // linspace(0, 2, 2) = [0, 2]
    assert!(uadfv.entries.iter().filter(|e| e.video == "c").all(|e| e.label == 0));
    assert!(
        uadfv
            .entries
            .iter()
            .filter(|e| e.video == "b")
            .all(|e| e.label == 1 && e.manipulation.as_deref() == Some("fake"))
    );
    assert_eq!(uadfv.entries.iter().filter(|e| e.landmark_path.is_some()).count(), 0); // 001 not kept for a
    let idx_all = Index::from_root(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx_all.entries.iter().filter(|e| e.landmark_path.is_some()).count(), 3); // once per split
    let other = idx.select(&Selection::new().dataset("Other"));
    assert_eq!(other.len(), 2);
    assert_eq!(other.entries[0].split, Split::Test);
    assert_eq!(other.entries[1].split, Split::Train);
    assert!(is_real_label("real") && !is_real_label("fake"));
    // The short video c (1 frame < 2) is listed once per split.
    assert_eq!(idx.short_videos.iter().filter(|s| s.key.video == "c").count(), 3);
}

// ------------------------------------------------------------------------------------------
// Loader

#[test]
fn tensors_have_shape_and_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    for (i, c) in [[255u8, 0, 128], [0, 255, 64]].iter().enumerate() {
        write_png(&dir.path().join(format!("D/real/v{i}/000.png")), &RgbImage::from_pixel(24, 24, Rgb(*c)));
    }
    let idx = Index::from_root(dir.path(), &IndexOptions::default())
        .unwrap()
        .select(&Selection::new().split(Split::Test));
    let mut c = cfg(16, FailurePolicy::Fail);
    c.mean = [0.5, 0.4, 0.3];
    c.std = [0.5, 0.25, 0.2];
    let store = FrameStore::new(c).unwrap();
    let mut ev = EvalStream::new(store.clone(), &idx, 8).unwrap();
    let b = ev.next().unwrap().unwrap();
    assert!(ev.next().is_none());
    assert_eq!(b.batch.images.dims(), &[2, 3, 16, 16]);
    assert_eq!(b.batch.labels.dims(), &[2]);
    let (x, y) = tensor_bytes(&b.batch);
    assert_eq!(y, vec![0.0, 0.0]);
    let plane = 16 * 16;
    let expect = |v: u8, c: usize| (v as f32 / 255.0 - [0.5, 0.4, 0.3][c]) / [0.5, 0.25, 0.2][c];
    for (img, col) in [[255u8, 0, 128], [0, 255, 64]].iter().enumerate() {
        for c in 0..3 {
            let s = &x[(img * 3 + c) * plane..(img * 3 + c + 1) * plane];
            assert!(s.iter().all(|v| (v - expect(col[c], c)).abs() < 1e-5), "img {img} ch {c}: {}", s[0]);
        }
    }
    assert_eq!(b.frames[0].video, "v0");
    assert_eq!(b.frames[1].video, "v1");
    assert_eq!(store.stats().cached_frames, 2);
}

fn truncated_fixture() -> (tempfile::TempDir, Index, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_png(&dir.path().join(format!("D/real/v/{i:03}.png")), &face_image(FRAME_PX, i * 10));
    }
    let bad = dir.path().join("D/real/v/002.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let idx = Index::from_root(dir.path(), &IndexOptions::default())
        .unwrap()
        .select(&Selection::new().split(Split::Test));
    (dir, idx, bad)
}

#[test]
fn fail_vs_skip_on_truncated_png() {
    let (_d, idx, bad) = truncated_fixture();
    // fail: the evaluation pass errors naming the file.
    let store = FrameStore::new(cfg(32, FailurePolicy::Fail)).unwrap();
    let errs: Vec<String> =
        EvalStream::new(store, &idx, 2).unwrap().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains(&bad.display().to_string()), "{}", errs[0]);
    // skip: four frames scored, the skip recorded once even when met again in training.
    let store = FrameStore::new(cfg(32, FailurePolicy::Skip)).unwrap();
    let batches: Vec<_> = EvalStream::new(store.clone(), &idx, 2).unwrap().map(|r| r.unwrap()).collect();
    let frames: Vec<String> = batches.iter().flat_map(|b| b.frames.iter().map(|f| f.frame.clone())).collect();
    assert_eq!(frames, ["000.png", "001.png", "003.png", "004.png"]);
    let mut ts = TrainStream::original(store.clone(), &idx, 4, None, 1).unwrap();
    for _ in 0..5 {
        assert_eq!(ts.next_batch().unwrap().images.dims(), &[4, 3, 32, 32]);
    }
    let sk = store.skipped();
    assert_eq!(sk.len(), 1);
    assert_eq!(sk[0].path, bad);
    assert_eq!(store.stats().skipped_frames, 1);
    // Training under `fail` stops with the path.
    let store = FrameStore::new(cfg(32, FailurePolicy::Fail)).unwrap();
    let mut ts = TrainStream::original(store, &idx, 5, None, 1).unwrap();
    let e = format!("{:#}", ts.next_batch().unwrap_err());
    assert!(e.contains(&bad.display().to_string()), "{e}");
}

#[test]
fn loader_is_deterministic_and_respects_ratio() {
    let fx = ff_fixture();
    let idx = Index::from_json(&fx.json, &fx.root, &IndexOptions::default())
        .unwrap()
        .select(&Selection::new().split(Split::Train));
    let run = |seed: u64, cache: usize| {
        let mut c = cfg(FRAME_PX, FailurePolicy::Fail);
        c.cache_bytes = cache;
        let store = FrameStore::new(c).unwrap();
        let mut o = TrainStream::original(store.clone(), &idx, 8, Some(0.25), seed).unwrap();
        let mut s = TrainStream::sbi(store.clone(), &idx, 6, seed).unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(tensor_bytes(&o.next_batch().unwrap()));
            out.push(tensor_bytes(&s.next_batch().unwrap()));
        }
        (out, store.stats())
    };
    let (a, st) = run(7, 1 << 24);
    let (b, _) = run(7, 0); // the cache does not change results
    let (c, _) = run(8, 1 << 24);
    assert!(a == b, "same seed must give the same batches");
    assert!(a != c, "another seed must give other batches");
    // Ratio 0.25 of 8: 2 reals then 6 fakes.
    assert_eq!(a[0].1, vec![0., 0., 1., 1., 1., 1., 1., 1.]);
    // SBI: 3 real twins then 3 self-blended images.
    assert_eq!(a[1].1, vec![0., 0., 0., 1., 1., 1.]);
    assert!(a.iter().all(|(x, _)| x.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v))));
    assert_eq!(st.sbi_samples, 9);
    assert!(st.cached_frames > 0);
    // The SBI stream self-blends only reals; one real frame has no landmarks -> fallbacks counted.
    assert!(st.sbi_fallbacks <= st.sbi_samples);

    // Domain streams: one per manipulation, fakes only of that manipulation.
    let store = FrameStore::new(cfg(FRAME_PX, FailurePolicy::Fail)).unwrap();
    let mut d = TrainStream::domains(store, &idx, &[], 4, Some(0.5), 3).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, "FF-DF");
    assert_eq!(tensor_bytes(&d[0].1.next_batch().unwrap()).1, vec![0., 0., 1., 1.]);
    // Bad arguments are errors, not panics.
    let store = FrameStore::new(cfg(FRAME_PX, FailurePolicy::Fail)).unwrap();
    assert!(TrainStream::sbi(store.clone(), &idx, 5, 0).is_err());
    assert!(TrainStream::original(store.clone(), &idx, 4, Some(1.5), 0).is_err());
    assert!(TrainStream::original(store, &idx.reals(), 4, Some(0.5), 0).is_err());
}

#[test]
fn sbi_stream_counts_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write_png(&dir.path().join(format!("D/real/v/{i}.png")), &face_image(64, i * 20));
    }
    let idx = Index::from_root(dir.path(), &IndexOptions::default())
        .unwrap()
        .select(&Selection::new().split(Split::Train));
    let store = FrameStore::new(cfg(32, FailurePolicy::Fail)).unwrap();
    let mut s = TrainStream::sbi(store.clone(), &idx, 4, 0).unwrap();
    let b = s.next_batch().unwrap();
    assert_eq!(b.images.dims(), &[4, 3, 32, 32]);
    drop(s);
    let st = store.stats();
    assert_eq!((st.sbi_samples, st.sbi_fallbacks), (2, 2));
}

// ------------------------------------------------------------------------------------------
// SBI

/// Chebyshev dilation of a 0/1 mask by `r` pixels.
fn dilate(m: &[f32], w: usize, h: usize, r: usize) -> Vec<bool> {
    let mut rows = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let lo = x.saturating_sub(r);
            let hi = (x + r).min(w - 1);
            rows[y * w + x] = (lo..=hi).any(|xx| m[y * w + xx] > 0.0);
        }
    }
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let lo = y.saturating_sub(r);
            let hi = (y + r).min(h - 1);
            out[y * w + x] = (lo..=hi).any(|yy| rows[yy * w + x]);
        }
    }
    out
}

#[test]
fn sbi_blend_is_confined_to_the_dilated_mask_and_respects_the_ratio() {
    for size in [64u32, 128] {
        let img = face_image(size, 30);
        let lm = face_landmarks(size as f32);
        let n = (size * size) as usize;
        for seed in 0..12 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let st = sbi::blend_stage(&img, Some(&lm), &mut rng);
            assert!(RATIOS.contains(&st.ratio));
            assert_ne!(st.variant, HullVariant::FallbackEllipse);
            let mmax = st.mask.iter().copied().fold(0.0f32, f32::max);
            assert!((mmax - 1.0).abs() < 1e-5, "mask max {mmax}");
            // Affine (<= 3 % + 5 % of half the diagonal), elastic and blur spread stay within 20 %.
            let near = dilate(&st.hull, size as usize, size as usize, (0.2 * size as f32) as usize);
            for i in 0..n {
                let m = st.ratio * st.mask[i];
                for c in 0..3 {
                    let k = 3 * i + c;
                    let want = m * st.source[k] + (1.0 - m) * st.target[k];
                    assert!((st.fake[k] - want).abs() < 1e-3, "fake = r m src + (1 - r m) tgt");
                    if st.mask[i] == 0.0 {
                        assert_eq!(st.fake[k], st.target[k]);
                    }
                }
                if !near[i] {
                    assert_eq!(st.mask[i], 0.0, "mask leaks outside the dilated hull at {i} (seed {seed})");
                    assert_eq!(&st.fake[3 * i..3 * i + 3], &st.target[3 * i..3 * i + 3]);
                }
            }
            // Something was blended.
            assert!(st.fake.iter().zip(&st.target).any(|(a, b)| a != b));
        }
    }
}

#[test]
fn sbi_ratio_and_landmark_count_distributions() {
    let img = face_image(32, 0);
    let lm = face_landmarks(32.0);
    let mut counts = [0usize; 4];
    let mut used68 = 0;
    let trials = 600;
    for seed in 0..trials {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
        let st = sbi::blend_stage(&img, Some(&lm), &mut rng);
        let k = [0.25, 0.5, 0.75, 1.0].iter().position(|r| *r == st.ratio).expect("ratio in the set");
        counts[k] += 1;
        used68 += (st.landmarks_used == 68) as usize;
    }
    let f = |c: usize| c as f64 / trials as f64;
    for k in 0..3 {
        assert!((f(counts[k]) - 1.0 / 6.0).abs() < 0.06, "{counts:?}");
    }
    assert!((f(counts[3]) - 0.5).abs() < 0.07, "{counts:?}");
    assert!((f(used68) - 0.25).abs() < 0.06, "68-point share {}", f(used68));
}

#[test]
fn sbi_same_seed_same_image() {
    let img = face_image(64, 9);
    let lm = face_landmarks(64.0);
    let a = sbi::self_blend(&img, Some(&lm), &mut ChaCha8Rng::seed_from_u64(5));
    let b = sbi::self_blend(&img, Some(&lm), &mut ChaCha8Rng::seed_from_u64(5));
    let c = sbi::self_blend(&img, Some(&lm), &mut ChaCha8Rng::seed_from_u64(6));
    assert_eq!(a.fake.as_raw(), b.fake.as_raw());
    assert_eq!(a.real.as_raw(), b.real.as_raw());
    assert!(a.fake.as_raw() != c.fake.as_raw());
    assert!(a.fake.as_raw() != a.real.as_raw());
}

#[test]
fn sbi_fallback_and_never_empty_mask() {
    let img = face_image(48, 3);
    let degenerate = vec![[20.0f32, 20.0]; 81];
    let wrong_count = face_landmarks(48.0)[..30].to_vec();
    let mut nan = face_landmarks(48.0);
    nan[5][0] = f32::NAN;
    let mut jpeg_seen = false;
    for seed in 0..40u64 {
        for lm in [None, Some(&degenerate[..]), Some(&wrong_count[..]), Some(&nan[..])] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let st = sbi::blend_stage(&img, lm, &mut rng);
            assert_eq!(st.variant, HullVariant::FallbackEllipse);
            assert!(st.mask.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
            assert!(st.mask.iter().sum::<f32>() > 1.0, "empty mask");
            let s = sbi::self_blend(&img, lm, &mut ChaCha8Rng::seed_from_u64(seed));
            assert!(s.fallback);
            jpeg_seen |= s.jpeg_quality.is_some_and(|q| (40..=100).contains(&q));
        }
        // A tiny but valid hull never yields an empty mask either.
        let tiny: Vec<[f32; 2]> =
            face_landmarks(48.0).iter().map(|p| [20.0 + p[0] * 0.05, 20.0 + p[1] * 0.05]).collect();
        let st = sbi::blend_stage(&img, Some(&tiny), &mut ChaCha8Rng::seed_from_u64(seed));
        assert!(st.mask.iter().sum::<f32>() > 0.0);
    }
    assert!(jpeg_seen);
}

// ------------------------------------------------------------------------------------------
// `bench data check`

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn data_check_exit_codes() {
    // Good fixture: a folder tree with landmarks for every frame.
    let good = tempfile::tempdir().unwrap();
    let lm = face_landmarks(FRAME_PX as f32);
    for (label, v) in [("real", "a"), ("fake", "b")] {
        for i in 0..3 {
            write_png(&good.path().join(format!("DS/test/{label}/{v}/{i}.png")), &face_image(FRAME_PX, i));
            write_npy_i64(&good.path().join(format!("landmarks/DS/test/{label}/{v}/{i}.npy")), &lm);
        }
    }
    let g = good.path().to_str().unwrap();
    let (code, out) = bench(&["data", "check", g, "--frames", "3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no problems") && out.contains("DS"), "{out}");
    let (code, out) = bench(&["data", "check", g, "--frames", "4"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("too few frames"), "{out}");

    // Broken: the DeepfakeBench fixture has a missing landmark; then truncate a frame.
    let fx = ff_fixture();
    let r = fx.root.to_str().unwrap();
    let (code, out) = bench(&["data", "check", r]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 frames without landmarks") && out.contains("021.png"), "{out}");
    let (code, out) = bench(&["data", "check", fx.json.to_str().unwrap(), "--allow-missing-landmarks"]);
    assert_eq!(code, 0, "{out}");
    let bad = fx.root.join("FaceForensics++/original_sequences/youtube/c23/frames/002/007.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n trunc").unwrap();
    let (code, out) =
        bench(&["data", "check", fx.json.to_str().unwrap(), "--root", r, "--allow-missing-landmarks"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreadable") && out.contains("002/007.png"), "{out}");

    // Bad arguments.
    let (code, out) = bench(&["data", "check", "/nonexistent/dfbench-data"]);
    assert_eq!(code, 2, "{out}");
    let loose = good.path().join("loose.json");
    std::fs::write(&loose, "{}").unwrap();
    let (code, out) = bench(&["data", "check", loose.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--root"), "{out}");
}

// ------------------------------------------------------------------------------------------
// Landmark files

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], vals: &[T]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    for v in vals {
        w.push(v).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn landmark_dtypes_shapes_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pts: Vec<(i32, i32)> = (0..81).map(|i| (i, 100 + i)).collect();
    let i32s: Vec<i32> = pts.iter().flat_map(|p| [p.0, p.1]).collect();
    write_npy(&d.join("a.npy"), &[81, 2], &i32s);
    let f64s: Vec<f64> = i32s.iter().map(|&v| v as f64 + 0.5).collect();
    write_npy(&d.join("b.npy"), &[81, 2], &f64s);
    write_npy(&d.join("c.npy"), &[68, 2], &i32s[..136].iter().map(|&v| v as i64).collect::<Vec<_>>());
    write_npy(&d.join("bad_shape.npy"), &[54, 3], &i32s[..162]);
    write_npy(&d.join("bad_type.npy"), &[81, 2], &i32s.iter().map(|&v| v as u8).collect::<Vec<_>>());
    std::fs::write(d.join("garbage.npy"), b"not an npy file at all").unwrap();

    let a = load_landmarks(&d.join("a.npy")).unwrap();
    assert_eq!((a.len(), a[3], a[80]), (81, [3.0, 103.0], [80.0, 180.0]));
    assert_eq!(load_landmarks(&d.join("b.npy")).unwrap()[5], [5.5, 105.5]);
    let c = load_landmarks(&d.join("c.npy")).unwrap();
    assert_eq!((c.len(), c[67]), (68, [67.0, 167.0]));
    for (name, what) in
        [("bad_shape.npy", "shape"), ("bad_type.npy", "not supported"), ("garbage.npy", "npy")]
    {
        let e = format!("{:#}", load_landmarks(&d.join(name)).unwrap_err());
        assert!(e.contains(name) && e.contains(what), "{e}");
    }
}

#[test]
fn unreadable_landmarks_fall_back_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write_png(&r.join("D/real/v/0.png"), &face_image(64, 1));
    std::fs::create_dir_all(r.join("landmarks/D/real/v")).unwrap();
    std::fs::write(r.join("landmarks/D/real/v/0.npy"), b"broken").unwrap();
    let idx =
        Index::from_root(r, &IndexOptions::default()).unwrap().select(&Selection::new().split(Split::Train));
    assert!(idx.entries[0].landmark_path.is_some());
    let store = FrameStore::new(cfg(32, FailurePolicy::Fail)).unwrap();
    let mut s = TrainStream::sbi(store.clone(), &idx, 2, 4).unwrap();
    for _ in 0..3 {
        let (x, y) = tensor_bytes(&s.next_batch().unwrap());
        assert_eq!(y, vec![0.0, 1.0]);
        assert!(x.iter().all(|v| v.is_finite()));
    }
    let st = store.stats();
    assert_eq!((st.sbi_samples, st.sbi_fallbacks, st.landmark_errors), (3, 3, 3));
    // `bench data check` reports the file.
    let (code, out) = bench(&["data", "check", r.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreadable landmark files") && out.contains("0.npy"), "{out}");
}

#[test]
fn check_reports_a_short_video_once_across_splits() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        write_png(&dir.path().join(format!("U/real/v/{i}.png")), &face_image(16, i));
    }
    let idx = Index::from_root(dir.path(), &IndexOptions::default()).unwrap();
    let rep = harness::data::check::check_index(&idx, Some(3), true);
    assert_eq!(rep.short_videos.len(), 1);
    assert_eq!(rep.short_videos[0].2, Split::ALL.to_vec());
    assert_eq!(rep.short_videos[0].3, 2);
    assert!(rep.unreadable.is_empty());
    assert_eq!(rep.missing_landmarks.len(), 2); // each frame once, not once per split
    assert_eq!(rep.problems(), 1);
}

#[test]
fn load_named_datasets() {
    let fx = ff_fixture();
    write_png(&fx.root.join("Extra/test/fake/v/0.png"), &face_image(16, 0));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ff = Index::load_datasets(&fx.root, &names(&["FaceForensics++"]), &IndexOptions::default()).unwrap();
    assert_eq!(ff.len(), 25);
    let both =
        Index::load_datasets(&fx.root, &names(&["FaceForensics++", "Extra"]), &IndexOptions::default())
            .unwrap();
    assert_eq!(both.datasets(), names(&["Extra", "FaceForensics++"]));
    assert_eq!(both.len(), 26);
    let e = format!(
        "{:#}",
        Index::load_datasets(&fx.root, &names(&["Celeb-DF-v2"]), &IndexOptions::default()).unwrap_err()
    );
    assert!(e.contains("Celeb-DF-v2") && e.contains("available: Extra, FaceForensics++"), "{e}");
}

/// `data.augmentation.hflip`: a flipped sample is the exact left-right mirror of the unflipped one.
#[test]
fn hflip_mirrors_columns_exactly() {
    let store = FrameStore::new(cfg(16, FailurePolicy::Fail)).unwrap();
    let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 13 + y) as u8, (y * 9) as u8, (x * 7 + 3) as u8]));
    let batch = store.to_batch_flipped(&[&img, &img], &[0.0, 1.0], &[false, true]).unwrap();
    let plain = batch.images.get(0).unwrap().to_vec3::<f32>().unwrap();
    let mirrored = batch.images.get(1).unwrap().to_vec3::<f32>().unwrap();
    for c in 0..3 {
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(mirrored[c][y][x], plain[c][y][15 - x], "channel {c} row {y} col {x}");
            }
        }
    }
    assert_ne!(plain, mirrored, "the test image is not symmetric");
    // A length mismatch between flips and images is an error, not a panic.
    assert!(store.to_batch_flipped(&[&img], &[0.0], &[true, false]).is_err());
}
