//! Opt-in wall-clock timers per kind of CPU custom op (convolution forward / backward-data /
//! backward-filter, split into dense, depthwise and 1x1; BatchNorm; pooling) and the optimizer
//! step, for the per-op-kind profile of a training step (`benches/meso4_train.rs --profile`,
//! BENCHMARKS.md's CPU-parity section).
//!
//! Off by default. When off, every hook costs one relaxed atomic load and a branch; no clock is
//! read and nothing is written, and the ops compute the same values either way (the timers never
//! change what runs, only observe it).
//!
//! Times are wall-clock nanoseconds of the op call on the calling thread (the ops parallelise
//! inside the call, so this is the time the step waits for them). The one place that runs two
//! kinds in one parallel pass (dense and 1x1 convolution backward, which computes the input and
//! weight gradients band by band) splits the call's wall time between backward-data and
//! backward-filter in proportion to the thread time each part took (see [`split_record`]).
//!
//! The counters are process-wide: profile one training loop at a time. Ops that run concurrently
//! (the two-stream methods' side-by-side backward passes) are each timed in full, so their times
//! can add up to more than the step's; profile single-stream ERM (as the bench does) for shares.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What a timed span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Dense convolution (kernel larger than 1x1, not depthwise): forward.
    ConvFwd,
    /// Dense convolution: input gradient (im2col-shaped `W^T dY` and col2im).
    ConvBwdData,
    /// Dense convolution: weight gradient (im2col and `dY col^T`).
    ConvBwdFilter,
    /// Depthwise convolution (one input channel per group): forward.
    DepthwiseFwd,
    /// Depthwise convolution: backward (input and weight gradients come out of one fused loop).
    DepthwiseBwd,
    /// 1x1 convolution (any stride; SE blocks' reduce / expand included): forward.
    PointwiseFwd,
    /// 1x1 convolution: input gradient.
    PointwiseBwdData,
    /// 1x1 convolution: weight gradient.
    PointwiseBwdFilter,
    /// BatchNorm (with a folded ReLU where the model has one): forward.
    BatchNormFwd,
    /// BatchNorm: backward.
    BatchNormBwd,
    /// Max pooling forward and global average pooling forward.
    PoolFwd,
    /// Max pooling backward (global average pooling's backward is candle's broadcast, untimed).
    PoolBwd,
    /// One optimizer step over every parameter.
    Optimizer,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::ConvFwd,
        Kind::ConvBwdData,
        Kind::ConvBwdFilter,
        Kind::DepthwiseFwd,
        Kind::DepthwiseBwd,
        Kind::PointwiseFwd,
        Kind::PointwiseBwdData,
        Kind::PointwiseBwdFilter,
        Kind::BatchNormFwd,
        Kind::BatchNormBwd,
        Kind::PoolFwd,
        Kind::PoolBwd,
        Kind::Optimizer,
    ];

    /// Short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::ConvFwd => "dense conv forward",
            Kind::ConvBwdData => "dense conv backward-data",
            Kind::ConvBwdFilter => "dense conv backward-filter",
            Kind::DepthwiseFwd => "depthwise conv forward",
            Kind::DepthwiseBwd => "depthwise conv backward (data+filter)",
            Kind::PointwiseFwd => "1x1 conv forward",
            Kind::PointwiseBwdData => "1x1 conv backward-data",
            Kind::PointwiseBwdFilter => "1x1 conv backward-filter",
            Kind::BatchNormFwd => "BatchNorm forward",
            Kind::BatchNormBwd => "BatchNorm backward",
            Kind::PoolFwd => "pooling forward",
            Kind::PoolBwd => "pooling backward",
            Kind::Optimizer => "optimizer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const N: usize = Kind::ALL.len();

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static CALLS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Switches the timers on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the timers are on: the one atomic load a hook costs when they are off.
#[inline(always)]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Zeroes every counter.
pub fn reset() {
    for i in 0..N {
        NANOS[i].store(0, Ordering::Relaxed);
        CALLS[i].store(0, Ordering::Relaxed);
    }
}

/// Accumulated totals of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub kind: Kind,
    /// Calls (op invocations) recorded since the last [`reset`].
    pub calls: u64,
    /// Wall-clock nanoseconds recorded since the last [`reset`].
    pub nanos: u64,
}

/// The totals of every kind, in [`Kind::ALL`] order.
pub fn snapshot() -> Vec<Totals> {
    Kind::ALL
        .iter()
        .map(|&k| Totals {
            kind: k,
            calls: CALLS[k.index()].load(Ordering::Relaxed),
            nanos: NANOS[k.index()].load(Ordering::Relaxed),
        })
        .collect()
}

/// Adds one call of `nanos` to `kind`.
pub(crate) fn record(kind: Kind, nanos: u64) {
    NANOS[kind.index()].fetch_add(nanos, Ordering::Relaxed);
    CALLS[kind.index()].fetch_add(1, Ordering::Relaxed);
}

/// A running span: records its wall time under its kind when dropped. Inert (no clock read) when
/// the timers were off at [`start`].
#[must_use = "the span is timed until the guard is dropped"]
pub struct Span(Option<(Kind, Instant)>);

/// Starts timing `kind` if the timers are on.
#[inline(always)]
pub fn start(kind: Kind) -> Span {
    Span(if enabled() { Some((kind, Instant::now())) } else { None })
}

impl Drop for Span {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some((kind, t0)) = self.0.take() {
            record(kind, t0.elapsed().as_nanos() as u64);
        }
    }
}

/// Thread time of the two parts of a call that interleaves them inside one parallel pass, summed
/// over the worker threads. Only touched when the timers are on.
#[derive(Default)]
pub(crate) struct PartClock {
    pub a: AtomicU64,
    pub b: AtomicU64,
}

impl PartClock {
    /// Adds the time since `t0` (if timing) to part `a` or `b`.
    #[inline(always)]
    pub(crate) fn add(&self, t0: Option<Instant>, to_a: bool) {
        if let Some(t0) = t0 {
            let ns = t0.elapsed().as_nanos() as u64;
            (if to_a { &self.a } else { &self.b }).fetch_add(ns, Ordering::Relaxed);
        }
    }
}

/// Records one call of `wall` nanoseconds split between `kind_a` and `kind_b` in proportion to
/// the thread time `parts` measured for each (the whole of it to one kind when the other part
/// did not run). A kind whose part did not run gets no call counted.
pub(crate) fn split_record(kind_a: Kind, kind_b: Kind, parts: &PartClock, wall: u64) {
    let (a, b) = (parts.a.load(Ordering::Relaxed), parts.b.load(Ordering::Relaxed));
    let total = a + b;
    let wall_a = if total == 0 { wall / 2 } else { (wall as u128 * a as u128 / total as u128) as u64 };
    if a > 0 || total == 0 {
        record(kind_a, wall_a);
    }
    if b > 0 || total == 0 {
        record(kind_b, wall - wall_a);
    }
}

/// The clock read for one timed part when the timers are on.
#[inline(always)]
pub(crate) fn now_if(on: bool) -> Option<Instant> {
    if on { Some(Instant::now()) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_record_shares_wall_time_by_part_time() {
        // Only this unit test touches these two kinds' counters inside the library's unit
        // tests; integration tests run in another process.
        let parts = PartClock::default();
        parts.a.store(300, Ordering::Relaxed);
        parts.b.store(100, Ordering::Relaxed);
        let before = snapshot();
        split_record(Kind::PointwiseBwdData, Kind::PointwiseBwdFilter, &parts, 1000);
        let after = snapshot();
        let d = |k: Kind| {
            let i = k.index();
            (after[i].calls - before[i].calls, after[i].nanos - before[i].nanos)
        };
        assert_eq!(d(Kind::PointwiseBwdData), (1, 750));
        assert_eq!(d(Kind::PointwiseBwdFilter), (1, 250));
    }
}
