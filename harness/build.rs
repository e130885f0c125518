//! Embeds the versions of the crates that determine numerical results (read from Cargo.lock), of
//! rustc, and the git commit the binary is built from (with whether tracked files differed from
//! it), so every run manifest can record them.
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
    build_commit(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
}

/// `DFBENCH_BUILD_COMMIT` (empty outside a git checkout) and `DFBENCH_BUILD_DIRTY` (`true`,
/// `false` or empty). Rerun when the checked-out commit moves or a source file changes, so that
/// neither goes stale.
fn build_commit(root: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    for watched in ["harness/src", "harness/build.rs", "detectors/src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for git_path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", git_path])
            && Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = if commit.is_empty() {
        String::new()
    } else {
        let status = git(&["status", "--porcelain", "--untracked-files=no"]);
        status.map(|s| (!s.is_empty()).to_string()).unwrap_or_default()
    };
    println!("cargo:rustc-env=DFBENCH_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=DFBENCH_BUILD_DIRTY={dirty}");
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
