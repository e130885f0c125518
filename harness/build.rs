//! Embeds the versions of the crates that determine numerical results (read from Cargo.lock) and
//! of rustc, so every run manifest can record them.
use std::path::Path;
use std::process::Command;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut versions = Vec::new();
    for wanted in ["candle-core", "candle-nn", "polars", "image", "rand_chacha"] {
        let version = lock_version(&text, wanted).unwrap_or_else(|| "unknown".to_string());
        versions.push(format!("{wanted}={version}"));
    }
    println!("cargo:rustc-env=DFBENCH_CRATE_VERSIONS={}", versions.join(";"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DFBENCH_RUSTC_VERSION={rustc_version}");
}

/// The version of the first `[[package]]` entry named `name` in a Cargo.lock.
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let next = lines.next()?;
            return next.trim().strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string);
        }
    }
    None
}
