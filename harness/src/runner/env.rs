//! Facts about where and with what a run was made, for its manifest.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The git commit of the working tree containing `dir`, and whether it has uncommitted changes.
/// `None` outside a git checkout (a release tarball, say): the manifest then says so.
pub fn git_state(dir: &Path) -> Option<(String, bool)> {
    let commit = Command::new("git").arg("-C").arg(dir).args(["rev-parse", "HEAD"]).output().ok()?;
    if !commit.status.success() {
        return None;
    }
    let commit = String::from_utf8(commit.stdout).ok()?.trim().to_string();
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()?;
    let dirty = !status.stdout.is_empty();
    Some((commit, dirty))
}

/// The commit the running binary was built from and whether tracked files differed from it
/// (embedded at build time); `None` for a build outside a git checkout.
pub fn build_git_state() -> Option<(String, Option<bool>)> {
    let commit = env!("DFBENCH_BUILD_COMMIT");
    let dirty = match env!("DFBENCH_BUILD_DIRTY") {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    (!commit.is_empty()).then(|| (commit.to_string(), dirty))
}

/// Versions of dfbench, rustc and the crates that shape the numbers (embedded at build time).
pub fn versions() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("dfbench".to_string(), env!("CARGO_PKG_VERSION").to_string());
    out.insert("rustc".to_string(), env!("DFBENCH_RUSTC_VERSION").to_string());
    for pair in env!("DFBENCH_CRATE_VERSIONS").split(';') {
        if let Some((name, version)) = pair.split_once('=') {
            out.insert(name.to_string(), version.to_string());
        }
    }
    out
}

/// The host name, from the kernel when available.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_commit_is_embedded() {
        // Tests build from a git checkout (CI clones the repository).
        let (commit, dirty) = build_git_state().expect("built inside a git checkout");
        assert_eq!(commit.len(), 40, "{commit}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
        assert!(dirty.is_some());
    }

    #[test]
    fn versions_name_candle_and_rustc() {
        let v = versions();
        assert!(v["candle-core"].starts_with("0."), "{v:?}");
        assert!(v["rustc"].starts_with("rustc "), "{v:?}");
    }
}
