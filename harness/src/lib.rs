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
pub fn configure_process() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called before any other thread is started (see above), so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

pub mod data;
pub mod eval;
pub mod exit;
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
