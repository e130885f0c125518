//! The allocator set-up of every harness binary (`harness::configure_allocator`).
use std::process::Command;

const CHILD: &str = "DFBENCH_ALLOCATOR_TEST_CHILD";

/// The option index the harness writes must be the one mimalloc reads `MIMALLOC_PURGE_DELAY`
/// into; otherwise the set-up would silently change some other allocator setting. Re-runs this
/// test binary with the variable set and reads the option back there.
#[test]
fn allocator_option_index_is_purge_delay() {
    if std::env::var_os(CHILD).is_some() {
        assert_eq!(harness::allocator_purge_delay_ms(), 1234, "MIMALLOC_PURGE_DELAY=1234 read elsewhere");
        // A user's own setting wins over the harness's.
        harness::configure_allocator();
        assert_eq!(harness::allocator_purge_delay_ms(), 1234);
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "allocator_option_index_is_purge_delay", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("MIMALLOC_PURGE_DELAY", "1234")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "child ran no test:\n{text}");
}

#[test]
fn freed_memory_is_kept_unless_the_user_says_otherwise() {
    if std::env::var_os(CHILD).is_some() || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    assert!(harness::allocator_purge_delay_ms() >= 0, "mimalloc's default purges freed memory");
    harness::configure_allocator();
    assert_eq!(harness::allocator_purge_delay_ms(), -1);
}
