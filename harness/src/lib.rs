//! dfbench harness: protocol files to plans, data, training runs, metrics, stored results and
//! reports. The `bench` binary (src/main.rs) is a thin CLI over these modules.

/// Every binary built on the harness (`bench`, its tests and benches) allocates with mimalloc.
/// Training frees and re-allocates the same activation and gradient buffers every step, several
/// of them 32 MiB or more at batch 64 and 128 px; glibc serves blocks that large with a fresh
/// `mmap` whatever `mallopt` says (its mmap threshold tops out at 32 MiB), so each step
/// page-faulted them in zeroed and unmapped them again (TLB shootdowns on every core). mimalloc
/// keeps them in its arenas: a Meso4 O+S step took 124-154 ms against 224-241 ms (median of 10
/// steps, 4 runs side by side, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Process set-up for the `bench` binary and the benches that time training: unless the user set
/// `CANDLE_NUM_THREADS`, candle runs its CPU element-wise ops on the calling thread. candle keeps
/// a pool of its own for them (all cores by default) whose workers spin between ops, beside the
/// rayon pool that runs our convolution, BatchNorm and pooling kernels and the matmuls; with both
/// busy, as in CS-DFD's two concurrent backward passes, two threads compete for every core. On
/// 2 cores a CS-DFD step took 203-214 ms against 238-267 ms with candle's pool, ERM O+S the same
/// within noise (BENCHMARKS.md). Results do not change: candle's element-wise maps compute each
/// element alike on any number of threads. Call it first thing in `main`, before any thread exists.
/// It also keeps freed memory in mimalloc's arenas ([`configure_allocator`]).
pub fn configure_process() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called before any other thread is started (see above), so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // With RUST_BACKTRACE set, candle attaches a backtrace to every error's message, which
        // then lands in manifests and `bench status`. Library backtraces stay off unless asked
        // for by name; panics still print theirs under RUST_BACKTRACE.
        // SAFETY: as above, no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    configure_allocator();
}

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers; the test
/// `allocator_option_index_is_purge_delay` checks it against `MIMALLOC_PURGE_DELAY`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Unless the user set `MIMALLOC_PURGE_DELAY`, mimalloc never gives freed memory back to the OS.
/// By default (v3) it purges (decommits) a freed range about a second after the free, and a training step frees
/// its activations and gradients and allocates them again in the next step, so every step faulted
/// the same memory back in and the kernel zeroed it page by page (with transparent huge pages, 2 MiB
/// at a time): `clear_page_erms` took 19-24% of a ResNet-18 step's CPU time under `perf`. Keeping
/// it made a Meso4 O+S step at 256 px 2.3x faster and a ResNet-18 one about 1.5x, for about 20%
/// more peak RSS (BENCHMARKS.md). The peak is what a step needs anyway; it is held, not grown.
pub fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// mimalloc's current purge delay in milliseconds (-1: never purge), for tests and manifests.
pub fn allocator_purge_delay_ms() -> i64 {
    // SAFETY: reads an allocator option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

pub mod budget;
pub mod data;
pub mod eval;
pub mod exit;
pub mod features;
pub mod list;
pub mod metrics;
pub mod plan;
pub mod predict;
pub mod protocol;
pub mod report;
pub mod results;
pub mod runner;
pub mod slurm;
pub mod stats;
pub mod status;
pub mod weights_cmd;
