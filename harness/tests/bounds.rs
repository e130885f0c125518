//! Values that cannot work are refused by `bench validate` (and before `bench run` trains), with
//! the run, the keys and the numbers; none of them panics or reaches the kernel's OOM killer.
use std::path::Path;
use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn protocol(resolution: u32, batch: u32, head: u32, method: &str) -> String {
    format!(
        r#"name = "bounds"
seeds = [0]
device = "cpu"
[data]
format = "synthetic"
preset = "tiny"
resolution = {resolution}
[train]
dataset = "FaceForensics++"
manipulations = ["FF-DF"]
[[test]]
name = "FF++"
dataset = "FaceForensics++"
[model]
backbone = "meso4"
head = {{ layers = {head} }}
[training]
steps = 2
batch_size = {batch}
[methods."{method}"]
kind = "erm"
streams = "original"
"#
    )
}

fn validate(dir: &Path, text: &str, extra: &[&str]) -> Output {
    let p = dir.join("p.toml");
    std::fs::write(&p, text).unwrap();
    Command::new(BENCH).arg("validate").arg(&p).args(extra).output().unwrap()
}

fn all(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn infeasible_protocols_fail_validation_with_the_numbers() {
    let d = tempfile::tempdir().unwrap();
    let ok = validate(d.path(), &protocol(128, 32, 2, "O"), &["--max-memory", "24G"]);
    assert_eq!(ok.status.code(), Some(0), "{}", all(&ok));

    let small = validate(d.path(), &protocol(24, 32, 2, "O"), &[]);
    assert_eq!(small.status.code(), Some(2), "{}", all(&small));
    assert!(all(&small).contains("data.resolution = 24 is below the 32 px that backbone `meso4` accepts"), "{}", all(&small));

    // 65536 images of 3 x 128 x 128 f32 are 12 GiB before a single activation is stored.
    let huge_batch = validate(d.path(), &protocol(128, 65536, 2, "O"), &["--max-memory", "24G"]);
    assert_eq!(huge_batch.status.code(), Some(2), "{}", all(&huge_batch));
    assert!(all(&huge_batch).contains("batch 65536") && all(&huge_batch).contains("24.0 GiB is available"), "{}", all(&huge_batch));

    // At 1024 px Meso4's feature is 16 x 32 x 32 = 16384 wide: two head layers of 16384^2
    // weights with gradients and Adam's moments are 8 GiB alone.
    let wide = validate(d.path(), &protocol(1024, 32, 2, "O"), &["--max-memory", "8G"]);
    assert_eq!(wide.status.code(), Some(2), "{}", all(&wide));
    assert!(all(&wide).contains("of width 16384"), "{}", all(&wide));

    let long_name = "M".repeat(300);
    let named = validate(d.path(), &protocol(128, 32, 2, &long_name), &[]);
    assert_eq!(named.status.code(), Some(2), "{}", all(&named));
    assert!(all(&named).contains("300 characters is too long"), "{}", all(&named));

    let bad_size = validate(d.path(), &protocol(128, 32, 2, "O"), &["--max-memory", "lots"]);
    assert_eq!(bad_size.status.code(), Some(2), "{}", all(&bad_size));
}

#[test]
fn cli_counts_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let status = Command::new(BENCH)
        .args(["status", "."])
        .arg("--protocol")
        .arg(d.path().join("none.toml"))
        .args(["--shards", "99999999999"])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2), "{}", all(&status));
    for n in ["18446744073709551615", "1e9", "100001"] {
        let report = Command::new(BENCH).args(["report", ".", "--bootstrap", n]).output().unwrap();
        assert_eq!(report.status.code(), Some(2), "--bootstrap {n}: {}", all(&report));
    }
}
