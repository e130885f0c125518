//! The embedded synthetic benchmark: determinism, the DeepfakeBench layout contract, that each
//! manipulation changes the pixels it claims to, and the `ensure` cache.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use harness::data::synth::{self, Dataset, MARKER, Preset};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One tiny generation shared by the read-only tests (seed 11).
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // A fixed place under target/ (a static TempDir would never be deleted).
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("synth_tiny_seed11");
        if out.exists() {
            std::fs::remove_dir_all(&out).unwrap();
        }
        synth::generate(&out, Preset::Tiny, 11).unwrap();
        out
    })
}

/// SHA-256 of every file under `root`, keyed by relative path.
fn checksums(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap();
            let h: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            m.insert(rel, h);
        }
    }
    m
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let t = tempfile::tempdir().unwrap();
    // On one thread, while the shared copy was made on the default pool: scheduling order must
    // not matter.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let a = pool.install(|| synth::generate(&t.path().join("a"), Preset::Tiny, 11)).unwrap();
    let ca = checksums(&t.path().join("a"));
    let cb = checksums(tiny());
    assert!(ca.len() > 100, "{} files", ca.len());
    assert_eq!(ca, cb, "two generations with seed 11 differ");
    let c = synth::generate(&t.path().join("c"), Preset::Tiny, 12).unwrap();
    let cc = checksums(&t.path().join("c"));
    assert_ne!(a.sha256, c.sha256);
    let differing = ca.iter().filter(|(k, v)| cc.get(*k) != Some(*v)).count();
    // Frame names can differ between seeds; count only the files both have, which must differ.
    assert!(differing > ca.len() / 2, "only {differing} of {} files differ between seeds", ca.len());
    // The summary's digest is the one recorded in the marker.
    let marker: Value =
        serde_json::from_slice(&std::fs::read(t.path().join("a").join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["sha256"], Value::from(a.sha256.clone()));
    assert_eq!(a.files + 1, ca.len());
}

fn disk(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.replace('\\', "/"))
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<i32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.dtype(), npyz::DType::Plain("<i4".parse().unwrap()), "{}", path.display());
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<i32>().unwrap())
}

#[test]
fn layout_matches_the_deepfakebench_contract() {
    let root = tiny();
    let size = Preset::Tiny.frame_size() as u32;
    let mut seen_json = BTreeSet::new();
    for e in std::fs::read_dir(root.join("dataset_json")).unwrap() {
        seen_json.insert(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    let want: BTreeSet<String> = Dataset::ALL.iter().map(|d| format!("{}.json", d.name())).collect();
    assert_eq!(seen_json, want);

    let mut ff_real: BTreeMap<String, String> = BTreeMap::new(); // video -> split
    let mut ff_fakes: Vec<(String, String, String)> = Vec::new(); // (label, split, video)
    for ds in Dataset::ALL {
        let path = root.join("dataset_json").join(format!("{}.json", ds.name()));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let top = v.as_object().unwrap();
        assert_eq!(top.keys().collect::<Vec<_>>(), vec![ds.name()]);
        let labels = top[ds.name()].as_object().unwrap();
        let got: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(got, ds.labels().iter().copied().collect::<BTreeSet<_>>(), "{}", ds.name());
        for (label, splits) in labels {
            let splits = splits.as_object().unwrap();
            let keys: BTreeSet<&str> = splits.keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["test", "train", "val"]), "{label}");
            for (split, cell) in splits {
                let videos = if ds == Dataset::Ffpp {
                    let c = cell.as_object().unwrap();
                    assert_eq!(c.keys().collect::<Vec<_>>(), vec!["c23"], "{label}/{split}");
                    c["c23"].as_object().unwrap()
                } else {
                    cell.as_object().unwrap()
                };
                match ds {
                    Dataset::Ffpp => assert!(!videos.is_empty(), "{label}/{split} empty"),
                    Dataset::Uadfv => assert!(!videos.is_empty()),
                    _ => assert_eq!(videos.is_empty(), split != "test", "{}/{label}/{split}", ds.name()),
                }
                for (video, entry) in videos {
                    assert_eq!(entry["label"], Value::from(label.clone()));
                    let frames: Vec<&str> =
                        entry["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
                    assert!(!frames.is_empty());
                    let is_ff_fake = ds == Dataset::Ffpp && label != "FF-real";
                    assert_eq!(entry.get("masks").is_some(), is_ff_fake, "{label}/{video}: masks key");
                    let mut idx = Vec::new();
                    for (k, f) in frames.iter().enumerate() {
                        assert!(!f.contains('/') && f.contains('\\'), "{f}");
                        assert!(f.starts_with(&format!("{}\\", ds.name())), "{f}");
                        let parts: Vec<&str> = f.split('\\').collect();
                        assert_eq!(parts[parts.len() - 2], video);
                        assert_eq!(parts[parts.len() - 3], "frames");
                        let stem = parts.last().unwrap().strip_suffix(".png").unwrap();
                        assert_eq!(stem.len(), 3);
                        idx.push(stem.parse::<u32>().unwrap());
                        let im = image::open(disk(root, f)).unwrap();
                        assert_eq!((im.width(), im.height()), (size, size));
                        assert_eq!(im.color(), image::ColorType::Rgb8);
                        let (shape, pts) =
                            read_npy(&disk(root, &f.replace("frames", "landmarks").replace(".png", ".npy")));
                        assert_eq!(shape, vec![81, 2]);
                        assert!(pts.iter().all(|&p| p >= 0 && p < size as i32));
                        check_landmarks_plausible(&pts, size as f32, f);
                        if is_ff_fake {
                            let m = entry["masks"][k].as_str().unwrap();
                            assert_eq!(m, f.replace("frames", "masks"));
                            let mi = image::open(disk(root, m)).unwrap().to_luma8();
                            assert!(mi.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
                            assert!(mi.pixels().any(|p| p.0[0] == 255), "{m}: empty mask");
                        }
                    }
                    // linspace indices: increasing, and not consecutive.
                    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{video}: {idx:?}");
                    if idx.len() >= 2 {
                        assert!(idx.windows(2).any(|w| w[1] - w[0] > 1), "{video}: {idx:?}");
                    }
                    if ds == Dataset::Ffpp {
                        if label == "FF-real" {
                            ff_real.insert(video.clone(), split.clone());
                        } else {
                            ff_fakes.push((label.clone(), split.clone(), video.clone()));
                        }
                    }
                }
            }
        }
    }
    // FF++: every manipulation fakes every real video, with a different identity of its split.
    assert_eq!(ff_real.len(), 6);
    for label in ["FF-DF", "FF-F2F", "FF-FS", "FF-NT"] {
        let mine: Vec<_> = ff_fakes.iter().filter(|f| f.0 == label).collect();
        assert_eq!(mine.len(), ff_real.len(), "{label}");
        for (_, split, video) in mine {
            let (t, s) = video.split_once('_').unwrap();
            assert_ne!(t, s);
            assert_eq!(&ff_real[t], split);
            assert_eq!(&ff_real[s], split);
        }
    }
}

/// The SBI implementation draws convex hulls of these points: the jaw must enclose the inner
/// features and the hull must be a face-sized region.
fn check_landmarks_plausible(pts: &[i32], size: f32, what: &str) {
    let p = |i: usize| (pts[2 * i] as f32, pts[2 * i + 1] as f32);
    // Chin below the nose tip, nose tip below the eyes, eyes below the brows, brows below forehead.
    assert!(p(8).1 > p(33).1 && p(33).1 > p(37).1 && p(37).1 > p(19).1 && p(19).1 > p(74).1, "{what}");
    // Left-to-right order of the jaw ends, eye corners and mouth corners.
    assert!(p(0).0 < p(16).0 && p(36).0 < p(39).0 && p(39).0 < p(42).0 && p(42).0 < p(45).0, "{what}");
    assert!(p(48).0 < p(54).0, "{what}");
    // Inner features strictly between the jaw ends.
    for i in 17..68 {
        assert!(p(i).0 > p(0).0 && p(i).0 < p(16).0, "{what}: point {i}");
    }
    // Shoelace area of the face outline (jaw then forehead arc back): 10%..70% of the frame.
    let outline: Vec<(f32, f32)> = (0..17).chain((68..81).rev()).map(p).collect();
    let mut area = 0.0;
    for i in 0..outline.len() {
        let (a, b) = (outline[i], outline[(i + 1) % outline.len()]);
        area += a.0 * b.1 - b.0 * a.1;
    }
    let frac = area.abs() / 2.0 / (size * size);
    assert!((0.1..0.7).contains(&frac), "{what}: face outline covers {frac:.2} of the frame");
}

fn load_rgb(path: &Path) -> (usize, Vec<f32>) {
    let im = image::open(path).unwrap().to_rgb8();
    (im.width() as usize, im.into_raw().into_iter().map(|v| v as f32 / 255.0).collect())
}

fn load_mask(path: &Path) -> Vec<bool> {
    image::open(path).unwrap().to_luma8().into_raw().into_iter().map(|v| v > 127).collect()
}

/// Per-pixel mean absolute RGB difference.
fn absdiff(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.chunks(3)
        .zip(b.chunks(3))
        .map(|(p, q)| (0..3).map(|k| (p[k] - q[k]).abs()).sum::<f32>() / 3.0)
        .collect()
}

fn mean_where(v: &[f32], m: &[bool], want: bool) -> f32 {
    let (s, n) =
        v.iter().zip(m).filter(|(_, b)| **b == want).fold((0.0, 0usize), |(s, n), (x, _)| (s + x, n + 1));
    s / n.max(1) as f32
}

/// Mean squared high-pass (minus a 3x3 box mean) of the signed luminance difference, over the
/// pixels where `m == want`.
fn high_freq_energy(a: &[f32], b: &[f32], size: usize, m: &[bool], want: bool) -> f32 {
    let d: Vec<f32> =
        a.chunks(3).zip(b.chunks(3)).map(|(p, q)| (0..3).map(|k| p[k] - q[k]).sum::<f32>() / 3.0).collect();
    let (mut hi, mut n) = (0.0, 0usize);
    for y in 1..size - 1 {
        for x in 1..size - 1 {
            if m[y * size + x] != want {
                continue;
            }
            let mut box3 = 0.0;
            for dy in 0..3 {
                for dx in 0..3 {
                    box3 += d[(y + dy - 1) * size + x + dx - 1];
                }
            }
            let h = d[y * size + x] - box3 / 9.0;
            hi += h * h;
            n += 1;
        }
    }
    hi / n.max(1) as f32
}

/// Periodicity of the signed luminance difference in a `w x w` window centred on `c`: the
/// largest DFT magnitude among frequencies of at least 0.2 cycles/pixel along both axes
/// (periods of 5 px or less; edges of re-drawn features put their energy near the axes instead)
/// over the median magnitude there. White noise gives about 3; a periodic texture far more.
fn high_band_peak_ratio(a: &[f32], b: &[f32], size: usize, c: (f32, f32), w: usize) -> f32 {
    let x0 = (c.0.round() as isize - w as isize / 2).clamp(0, (size - w) as isize) as usize;
    let y0 = (c.1.round() as isize - w as isize / 2).clamp(0, (size - w) as isize) as usize;
    let mut d = vec![0.0f32; w * w];
    for y in 0..w {
        for x in 0..w {
            let i = ((y0 + y) * size + x0 + x) * 3;
            d[y * w + x] = (0..3).map(|k| a[i + k] - b[i + k]).sum::<f32>() / 3.0;
        }
    }
    let mean = d.iter().sum::<f32>() / d.len() as f32;
    d.iter_mut().for_each(|v| *v -= mean);
    let tau = std::f32::consts::TAU;
    let mut high = Vec::new();
    for ky in 0..w {
        for kx in 0..w {
            let fx = (kx.min(w - kx)) as f32 / w as f32;
            let fy = (ky.min(w - ky)) as f32 / w as f32;
            if fx.min(fy) < 0.2 {
                continue;
            }
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for y in 0..w {
                for x in 0..w {
                    let ph = tau * ((kx * x) as f32 / w as f32 + (ky * y) as f32 / w as f32);
                    re += d[y * w + x] * ph.cos();
                    im -= d[y * w + x] * ph.sin();
                }
            }
            high.push((re * re + im * im).sqrt());
        }
    }
    high.sort_by(f32::total_cmp);
    high[high.len() - 1] / high[high.len() / 2].max(1e-9)
}

/// Centre of the mouth landmarks (48-67) of a frame.
fn mouth_centre(frame: &Path) -> (f32, f32) {
    let rel = frame.to_string_lossy().replace("/frames/", "/landmarks/").replace(".png", ".npy");
    let (_, p) = read_npy(Path::new(&rel));
    let (mut x, mut y) = (0.0, 0.0);
    for i in 48..68 {
        x += p[2 * i] as f32;
        y += p[2 * i + 1] as f32;
    }
    (x / 20.0, y / 20.0)
}

/// Pairs (real frame, fake frame, mask) of one FF++ manipulation across the tiny benchmark.
fn ff_pairs(method_dir: &str) -> Vec<(PathBuf, PathBuf, PathBuf)> {
    let root = tiny();
    let base = root.join("FaceForensics++/manipulated_sequences").join(method_dir).join("c23/frames");
    let mut out = Vec::new();
    for v in std::fs::read_dir(&base).unwrap() {
        let v = v.unwrap();
        let name = v.file_name().to_string_lossy().into_owned();
        let target = name.split_once('_').unwrap().0.to_owned();
        for f in std::fs::read_dir(v.path()).unwrap() {
            let f = f.unwrap().file_name().to_string_lossy().into_owned();
            let real =
                root.join("FaceForensics++/original_sequences/youtube/c23/frames").join(&target).join(&f);
            let mask = root
                .join("FaceForensics++/manipulated_sequences")
                .join(method_dir)
                .join("c23/masks")
                .join(&name)
                .join(&f);
            assert!(real.exists(), "{} has no real twin", real.display());
            out.push((real, v.path().join(&f), mask));
        }
    }
    out.sort();
    out
}

struct Stats {
    inside: f32,
    outside: f32,
    /// High-frequency energy of the difference inside the mask over that outside it (where
    /// only the two captures' independent sensor noise and compression differ).
    hf_ratio: f32,
    /// Median over frames of the mouth window's high-band DFT peak ratio.
    periodic: f32,
}

fn stats(method_dir: &str) -> Stats {
    let pairs = ff_pairs(method_dir);
    assert!(!pairs.is_empty());
    let (mut inside, mut outside, mut hf_in, mut hf_out) = (0.0, 0.0, 0.0, 0.0);
    let mut periodic = Vec::new();
    for (r, f, m) in &pairs {
        let (size, a) = load_rgb(r);
        let (_, b) = load_rgb(f);
        let mask = load_mask(m);
        let d = absdiff(&a, &b);
        inside += mean_where(&d, &mask, true);
        outside += mean_where(&d, &mask, false);
        hf_in += high_freq_energy(&b, &a, size, &mask, true);
        hf_out += high_freq_energy(&b, &a, size, &mask, false);
        periodic.push(high_band_peak_ratio(&b, &a, size, mouth_centre(f), size / 4));
    }
    periodic.sort_by(f32::total_cmp);
    let n = pairs.len() as f32;
    Stats {
        inside: inside / n,
        outside: outside / n,
        hf_ratio: hf_in / hf_out,
        periodic: periodic[periodic.len() / 2],
    }
}

#[test]
fn manipulations_change_their_claimed_regions() {
    let df = stats("Deepfakes");
    let f2f = stats("Face2Face");
    let fs = stats("FaceSwap");
    let nt = stats("NeuralTextures");
    for (name, s) in [("DF", &df), ("F2F", &f2f), ("FS", &fs), ("NT", &nt)] {
        eprintln!(
            "{name}: inside {:.4} outside {:.4} high-freq ratio {:.2} mouth periodicity {:.2}",
            s.inside, s.outside, s.hf_ratio, s.periodic
        );
        // Outside the mask only capture noise and compression differ.
        assert!(s.outside < 0.01, "{name}: outside-mask difference {:.4}", s.outside);
        // Face2Face and NeuralTextures change little (mouth and eyes, a faint texture) inside a
        // wide, soft blend region.
        let k = if name == "F2F" || name == "NT" { 2.5 } else { 3.5 };
        assert!(s.inside > k * s.outside, "{name}: inside {:.4} vs outside {:.4}", s.inside, s.outside);
        assert!(s.hf_ratio > 3.0, "{name}: high-frequency ratio {:.2}", s.hf_ratio);
    }
    // Swaps replace the whole inner face; FaceSwap's uncorrected colour most of all.
    assert!(df.inside > 6.0 * df.outside && fs.inside > 12.0 * fs.outside);
    assert!(fs.inside > 2.0 * df.inside, "FS {:.4} vs DF {:.4}", fs.inside, df.inside);
    // NeuralTextures adds a periodic pattern of period <= 4 px over the mouth: its difference
    // has a sharp high-band spectral peak there, the other methods' differences do not.
    for (name, s) in [("DF", &df), ("F2F", &f2f), ("FS", &fs)] {
        assert!(
            nt.periodic > 2.5 * s.periodic,
            "NT periodicity {:.2} vs {name} {:.2}",
            nt.periodic,
            s.periodic
        );
    }
    assert!(nt.periodic > 8.0, "NT periodicity {:.2}", nt.periodic);
}

#[test]
fn generate_refuses_foreign_non_empty_directory() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = synth::generate(&out, Preset::Tiny, 1).unwrap_err();
    let cli = err.downcast_ref::<harness::exit::CliError>().expect("a CliError");
    assert_eq!(cli.code, harness::exit::BAD_CONFIG);
    assert!(cli.message.contains("not empty"), "{}", cli.message);
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    // And through the binary: exit code 2.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["data", "synth", "--preset", "tiny", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(String::from_utf8_lossy(&st.stderr).contains("not empty"));
}

#[test]
fn ensure_caches_and_ignores_interrupted_generations() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let name = synth::cache_name(Preset::Tiny, 5);
    assert!(
        name.contains("tiny")
            && name.contains('5')
            && name.contains(&format!("v{}", synth::GENERATOR_VERSION))
    );
    // Leftover of an interrupted run by a process that no longer exists.
    let stale = root.join(format!(".{name}.tmp-4000000000-0"));
    std::fs::create_dir_all(stale.join("dataset_json")).unwrap();
    std::fs::write(stale.join("dataset_json/half.json"), "{").unwrap();

    // One of a live process (this one) is left alone.
    let live = root.join(format!(".{name}.tmp-{}-999", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();

    let (p1, s1) = synth::ensure_report(Preset::Tiny, 5, root).unwrap();
    assert!(live.is_dir(), "a live generation's directory was removed");
    std::fs::remove_dir(&live).unwrap();
    assert!(s1.is_some(), "first call generates");
    assert_eq!(p1, root.join(&name));
    assert!(!stale.exists(), "stale temporary directory removed");
    assert!(p1.join(MARKER).is_file());
    let before = checksums(&p1);
    let mtime = std::fs::metadata(p1.join(MARKER)).unwrap().modified().unwrap();

    let (p2, s2) = synth::ensure_report(Preset::Tiny, 5, root).unwrap();
    assert!(s2.is_none(), "second call does no work");
    assert_eq!(p1, p2);
    assert_eq!(synth::ensure(Preset::Tiny, 5, root).unwrap(), p1);
    assert_eq!(std::fs::metadata(p1.join(MARKER)).unwrap().modified().unwrap(), mtime);
    assert_eq!(checksums(&p1), before);
    // Nothing but the cache directory is left behind.
    let entries: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // A directory under the cache name without a valid marker is reported, not trusted.
    let bogus = root.join(synth::cache_name(Preset::Tiny, 6));
    std::fs::create_dir_all(&bogus).unwrap();
    let err = synth::ensure(Preset::Tiny, 6, root).unwrap_err().to_string();
    assert!(err.contains(MARKER), "{err}");
}

#[test]
fn previous_output_is_replaced_atomically() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("b");
    let a = synth::generate(&out, Preset::Tiny, 2).unwrap();
    let b = synth::generate(&out, Preset::Tiny, 3).unwrap();
    assert_ne!(a.sha256, b.sha256);
    let marker: Value = serde_json::from_slice(&std::fs::read(out.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["seed"], Value::from(3));
    let entries: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// Mean over a dataset's real frames of (mean squared 4-neighbour Laplacian of luminance, mean
/// red / blue ratio).
fn real_frame_stats(rel_dir: &str) -> (f32, f32) {
    let dir = tiny().join(rel_dir);
    let (mut lap, mut rb, mut n) = (0.0, 0.0, 0.0);
    for v in std::fs::read_dir(&dir).unwrap() {
        for f in std::fs::read_dir(v.unwrap().path()).unwrap() {
            let (size, px) = load_rgb(&f.unwrap().path());
            let lum: Vec<f32> = px.chunks(3).map(|p| (p[0] + p[1] + p[2]) / 3.0).collect();
            let mut e = 0.0;
            for y in 1..size - 1 {
                for x in 1..size - 1 {
                    let i = y * size + x;
                    let l = 4.0 * lum[i] - lum[i - 1] - lum[i + 1] - lum[i - size] - lum[i + size];
                    e += l * l;
                }
            }
            lap += e / ((size - 2) * (size - 2)) as f32;
            let (r, b) = px.chunks(3).fold((0.0, 0.0), |(r, b), p| (r + p[0], b + p[2]));
            rb += r / b;
            n += 1.0;
        }
    }
    (lap / n, rb / n)
}

#[test]
fn real_frames_shift_across_datasets() {
    let ff = real_frame_stats("FaceForensics++/original_sequences/youtube/c23/frames");
    let celeb = real_frame_stats("Celeb-DF-v2/Celeb-real/frames");
    let dfdcp = real_frame_stats("DFDCP/original_videos/frames");
    let uadfv = real_frame_stats("UADFV/real/frames");
    eprintln!("(laplacian energy, red/blue) ff {ff:?} celeb {celeb:?} dfdcp {dfdcp:?} uadfv {uadfv:?}");
    // Capture pipelines: UADFV's low-resolution and DFDCP's softer, more compressed footage lose
    // fine detail that FF++ c23 keeps; Celeb-DF is graded warmer than DFDCP.
    assert!(ff.0 > 3.0 * uadfv.0, "FF++ {:.5} vs UADFV {:.5}", ff.0, uadfv.0);
    assert!(ff.0 > 2.0 * dfdcp.0, "FF++ {:.5} vs DFDCP {:.5}", ff.0, dfdcp.0);
    assert!(celeb.1 > 1.05 * dfdcp.1, "Celeb-DF red/blue {:.3} vs DFDCP {:.3}", celeb.1, dfdcp.1);
}
