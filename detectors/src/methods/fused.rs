//! The fast path of `methods::cs_dfd` (and of CAGrad): CS-DFD's per-step flat-vector work in
//! one read of `g1, g2` and one write of the update, with the UVS statistics, the head norms of
//! CGR and the trace's norms gathered on the way. What it computes is what `cs_dfd::reference`
//! computes (Algorithm 1 of the paper, methods.md 2.1-2.2); only the order of the floating-point
//! sums differs, which `tests/methods_fused.rs` bounds. Everything below is about speed: SIMD
//! lanes, block merges, thread splits and non-temporal stores, each arranged so that the bits do
//! not depend on the CPU, the instruction set or the thread count.
use std::ops::Range;

use rayon::prelude::*;

use super::combine::{Pair, uvs_two_fixed};
pub use super::cs_dfd::{HeadRule, TwoStepNumbers};

// ---------------------------------------------------------------------------------------------
// Fused passes for the two-stream step.
//
// The step reads g1 and g2 from memory once (every statistic, `D` included) and writes `v` once.
// Every sum is accumulated lane-wise: a fixed `LANES` accumulators per quantity (element `j` of
// a block goes to lane `j mod LANES`), combined in a fixed tree per block of `BLOCK` elements,
// and the block totals added with Neumaier compensation. The lane count, the block boundaries
// (counted from each segment's start) and every combination order are constants of the code, so
// the results depend only on the inputs: not on the CPU, the instruction set the dispatcher picks
// or the thread count. The instruction sets differ only in how many lanes one instruction handles
// (`Simd`); FMA is used only to add a product of two f32 values, which is exact in f64, so it
// rounds exactly as the portable `mul` then `add` (Rust never contracts `a * b + c` itself), and
// each lane's result is the same everywhere. Long vectors are cut into tasks of whole blocks for
// the rayon pool (`Exec::parallel`); every block's sums land in a slot of their own and are merged
// in block order, so the thread count changes nothing either. Tests compare the paths bit for
// bit; another compares every statistic with a compensated sequential reference.
//
// `D = ||g2 - t (g1 - g2)||^2` with `t = B / A` (methods.md 2.1 asks for the residual form, not
// `(g11 g22 - g12^2) / A`, which cancels) needs `t` before it can be summed. Instead of a second
// pass over memory, each block computes its own `t_b` and re-reads itself from L1 for its
// residual sum `RSS_b`; blocks are merged exactly with the least-squares identity
// `RSS_{A+B} = RSS_A + RSS_B + (t_A - t_B)^2 S_A S_B / (S_A + S_B)` (S the sums of `d^2`), whose
// terms are all non-negative: no cancellation.
// ---------------------------------------------------------------------------------------------

/// Accumulators per quantity. Eight f64 lanes are two AVX2 registers or one AVX-512 register;
/// changing it changes results in the last bits (it is part of the summation order).
const LANES: usize = 8;
/// Elements per block: two f32 blocks (16 KiB) stay in L1 for `D`'s re-read, and the per-lane
/// chains stay short (256 adds) before the compensated block sum takes over.
const BLOCK: usize = 2048;

/// Neumaier's compensated running sum, for block totals.
#[derive(Clone, Copy, Default)]
struct Comp {
    s: f64,
    c: f64,
}

impl Comp {
    #[inline(always)]
    fn add(&mut self, v: f64) {
        let t = self.s + v;
        if self.s.abs() >= v.abs() {
            self.c += (self.s - t) + v;
        } else {
            self.c += (v - t) + self.s;
        }
        self.s = t;
    }
    #[inline(always)]
    fn value(&self) -> f64 {
        self.s + self.c
    }
}

/// The fixed combination order of the lanes.
#[inline(always)]
fn tree(l: &[f64; LANES]) -> f64 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// Eight f64 lanes, the unit every fused kernel computes with. Each backend applies the same
/// IEEE operation to every lane (f32 -> f64 widening is exact; f64 -> f32 rounds to nearest
/// even; add, sub and mul round once), so a kernel written once against this trait gives the
/// same bits on every backend.
trait V8: Copy {
    fn zero() -> Self;
    fn splat(x: f64) -> Self;
    fn load(p: &[f32; LANES]) -> Self;
    fn store(self, p: &mut [f32; LANES]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `self + a * b` for `a`, `b` widened from f32. Their product has at most 48 significant
    /// bits, so it is exact in f64 and a fused multiply-add rounds once where `mul` then `add`
    /// would too: the same bits. The SIMD backends use FMA (one instruction instead of two), the
    /// portable one `mul` then `add`. Only for such operands; anything else would change bits.
    fn add_f32_product(self, a: Self, b: Self) -> Self;
    fn lanes(self) -> [f64; LANES];
    /// Stores `self` rounded to f32 as `store` does, but with non-temporal stores where the
    /// backend has them (`p` must then be 16-byte aligned), and returns the rounded values
    /// widened again: what `load(p)` would give, without reading back a line that bypassed the
    /// cache.
    fn stream_rounded(self, p: &mut [f32; LANES]) -> Self;
    /// Orders earlier non-temporal stores before later stores (they are weakly ordered).
    fn stream_fence();
}

/// Plain arrays: what the build's baseline target makes of them.
#[derive(Clone, Copy)]
struct Portable([f64; LANES]);

impl V8 for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Self([0.0; LANES])
    }
    #[inline(always)]
    fn splat(x: f64) -> Self {
        Self([x; LANES])
    }
    #[inline(always)]
    fn load(p: &[f32; LANES]) -> Self {
        Self(p.map(|x| x as f64))
    }
    #[inline(always)]
    fn store(self, p: &mut [f32; LANES]) {
        *p = self.0.map(|x| x as f32);
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
    #[inline(always)]
    fn add_f32_product(self, a: Self, b: Self) -> Self {
        self.add(a.mul(b))
    }
    #[inline(always)]
    fn lanes(self) -> [f64; LANES] {
        self.0
    }
    #[inline(always)]
    fn stream_rounded(self, p: &mut [f32; LANES]) -> Self {
        self.store(p);
        Self::load(p)
    }
    #[inline(always)]
    fn stream_fence() {}
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{LANES, V8};

    // SAFETY (every `unsafe` block below): these methods are only ever inlined into functions
    // compiled with `#[target_feature(enable = "avx2,fma")]` (`Avx2`) or `"avx512f"` (`Avx512`),
    // which the dispatcher calls only after `is_x86_feature_detected!` confirmed the feature;
    // the loads and stores go through `&[f32; 8]` / `&mut [f32; 8]`, so they are in bounds, and
    // `write_blocks` takes `stream_rounded` only for outputs it checked to be 16-byte aligned.

    /// Two 256-bit registers.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256d, __m256d);

    impl V8 for Avx2 {
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Self(_mm256_setzero_pd(), _mm256_setzero_pd()) }
        }
        #[inline(always)]
        fn splat(x: f64) -> Self {
            unsafe { Self(_mm256_set1_pd(x), _mm256_set1_pd(x)) }
        }
        #[inline(always)]
        fn load(p: &[f32; LANES]) -> Self {
            unsafe {
                let q = p.as_ptr();
                Self(_mm256_cvtps_pd(_mm_loadu_ps(q)), _mm256_cvtps_pd(_mm_loadu_ps(q.add(4))))
            }
        }
        #[inline(always)]
        fn store(self, p: &mut [f32; LANES]) {
            unsafe {
                let q = p.as_mut_ptr();
                _mm_storeu_ps(q, _mm256_cvtpd_ps(self.0));
                _mm_storeu_ps(q.add(4), _mm256_cvtpd_ps(self.1));
            }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Self(_mm256_add_pd(self.0, o.0), _mm256_add_pd(self.1, o.1)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Self(_mm256_sub_pd(self.0, o.0), _mm256_sub_pd(self.1, o.1)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Self(_mm256_mul_pd(self.0, o.0), _mm256_mul_pd(self.1, o.1)) }
        }
        #[inline(always)]
        fn add_f32_product(self, a: Self, b: Self) -> Self {
            unsafe { Self(_mm256_fmadd_pd(a.0, b.0, self.0), _mm256_fmadd_pd(a.1, b.1, self.1)) }
        }
        #[inline(always)]
        fn lanes(self) -> [f64; LANES] {
            let mut r = [0f64; LANES];
            unsafe {
                _mm256_storeu_pd(r.as_mut_ptr(), self.0);
                _mm256_storeu_pd(r.as_mut_ptr().add(4), self.1);
            }
            r
        }
        #[inline(always)]
        fn stream_rounded(self, p: &mut [f32; LANES]) -> Self {
            unsafe {
                let (lo, hi) = (_mm256_cvtpd_ps(self.0), _mm256_cvtpd_ps(self.1));
                _mm_stream_ps(p.as_mut_ptr(), lo);
                _mm_stream_ps(p.as_mut_ptr().add(4), hi);
                Self(_mm256_cvtps_pd(lo), _mm256_cvtps_pd(hi))
            }
        }
        #[inline(always)]
        fn stream_fence() {
            unsafe { _mm_sfence() }
        }
    }

    /// One 512-bit register.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512d);

    impl V8 for Avx512 {
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Self(_mm512_setzero_pd()) }
        }
        #[inline(always)]
        fn splat(x: f64) -> Self {
            unsafe { Self(_mm512_set1_pd(x)) }
        }
        #[inline(always)]
        fn load(p: &[f32; LANES]) -> Self {
            unsafe { Self(_mm512_cvtps_pd(_mm256_loadu_ps(p.as_ptr()))) }
        }
        #[inline(always)]
        fn store(self, p: &mut [f32; LANES]) {
            unsafe { _mm256_storeu_ps(p.as_mut_ptr(), _mm512_cvtpd_ps(self.0)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Self(_mm512_add_pd(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Self(_mm512_sub_pd(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Self(_mm512_mul_pd(self.0, o.0)) }
        }
        #[inline(always)]
        fn add_f32_product(self, a: Self, b: Self) -> Self {
            unsafe { Self(_mm512_fmadd_pd(a.0, b.0, self.0)) }
        }
        #[inline(always)]
        fn lanes(self) -> [f64; LANES] {
            let mut r = [0f64; LANES];
            unsafe { _mm512_storeu_pd(r.as_mut_ptr(), self.0) };
            r
        }
        #[inline(always)]
        fn stream_rounded(self, p: &mut [f32; LANES]) -> Self {
            unsafe {
                let f = _mm512_cvtpd_ps(self.0);
                _mm_stream_ps(p.as_mut_ptr(), _mm256_castps256_ps128(f));
                _mm_stream_ps(p.as_mut_ptr().add(4), _mm256_extractf128_ps::<1>(f));
                Self(_mm512_cvtps_pd(f))
            }
        }
        #[inline(always)]
        fn stream_fence() {
            unsafe { _mm_sfence() }
        }
    }
}

/// The last `< LANES` elements of a block, zero-padded to a full lane group. Zeros add `+0` to
/// every lane sum (lanes start at `+0` and never become `-0`), so padding changes no bits.
#[inline(always)]
fn padded(r: &[f32]) -> [f32; LANES] {
    let mut p = [0f32; LANES];
    p[..r.len()].copy_from_slice(r);
    p
}

/// `[sum x^2, sum x y, sum y^2]` over one block.
#[inline(always)]
fn block3<V: V8>(x: &[f32], y: &[f32]) -> [f64; 3] {
    let (mut s11, mut s12, mut s22) = (V::zero(), V::zero(), V::zero());
    let (x8, xr) = x.as_chunks::<LANES>();
    let (y8, yr) = y.as_chunks::<LANES>();
    let mut step = |x8: &[f32; LANES], y8: &[f32; LANES]| {
        let (a, b) = (V::load(x8), V::load(y8));
        s11 = s11.add_f32_product(a, a);
        s12 = s12.add_f32_product(a, b);
        s22 = s22.add_f32_product(b, b);
    };
    for (x8, y8) in x8.iter().zip(y8) {
        step(x8, y8);
    }
    if !xr.is_empty() {
        step(&padded(xr), &padded(yr));
    }
    [tree(&s11.lanes()), tree(&s12.lanes()), tree(&s22.lanes())]
}

/// UVS's running sums over one block, lane-wise: `g11, g12, g22, A = sum d^2, B = sum y d` with
/// `d = x - y`. Separate fields rather than an array: with an array (or a chained tail iterator)
/// the compiler kept an accumulator on the stack, which put a store-to-load round trip into its
/// dependency chain (the read pass ran at a third of its arithmetic throughput).
#[derive(Clone, Copy)]
struct PairAcc<V> {
    s11: V,
    s12: V,
    s22: V,
    sdd: V,
    syd: V,
}

impl<V: V8> PairAcc<V> {
    #[inline(always)]
    fn new() -> Self {
        Self { s11: V::zero(), s12: V::zero(), s22: V::zero(), sdd: V::zero(), syd: V::zero() }
    }
    #[inline(always)]
    fn add(&mut self, a: V, b: V) {
        let d = a.sub(b);
        self.s11 = self.s11.add_f32_product(a, a);
        self.s12 = self.s12.add_f32_product(a, b);
        self.s22 = self.s22.add_f32_product(b, b);
        // `d` is rounded (f32 values far apart in magnitude): these two stay mul then add.
        self.sdd = self.sdd.add(d.mul(d));
        self.syd = self.syd.add(b.mul(d));
    }
    #[inline(always)]
    fn totals(&self) -> [f64; 5] {
        [
            tree(&self.s11.lanes()),
            tree(&self.s12.lanes()),
            tree(&self.s22.lanes()),
            tree(&self.sdd.lanes()),
            tree(&self.syd.lanes()),
        ]
    }
}

/// `t_b = B / A` of one block, splatted.
#[inline(always)]
fn block_t<V: V8>(s: &[f64; 5]) -> V {
    V::splat(if s[3] > 0.0 { s[4] / s[3] } else { 0.0 })
}

/// One term of the residual sum `sum (y - t d)^2`.
#[inline(always)]
fn residual_add<V: V8>(r: V, t: V, a: V, b: V) -> V {
    let q = b.sub(t.mul(a.sub(b)));
    r.add(q.mul(q))
}

/// UVS's sums over one block, `[g11, g12, g22, A, B]`, and the block's own residual sum
/// `sum (y - t_b d)^2`, `t_b = B / A`.
#[inline(always)]
fn block_pair<V: V8>(x: &[f32], y: &[f32]) -> ([f64; 5], f64) {
    let (x8, xr) = x.as_chunks::<LANES>();
    let (y8, yr) = y.as_chunks::<LANES>();
    let (xp, yp) = (padded(xr), padded(yr));
    let mut acc = PairAcc::<V>::new();
    for (x8, y8) in x8.iter().zip(y8) {
        acc.add(V::load(x8), V::load(y8));
    }
    if !xr.is_empty() {
        acc.add(V::load(&xp), V::load(&yp));
    }
    let s = acc.totals();
    let t = block_t::<V>(&s);
    let mut r = V::zero();
    for (x8, y8) in x8.iter().zip(y8) {
        r = residual_add(r, t, V::load(x8), V::load(y8));
    }
    if !xr.is_empty() {
        r = residual_add(r, t, V::load(&xp), V::load(&yp));
    }
    (s, tree(&r.lanes()))
}

/// Everything CS-DFD's step (and CAGrad's, PCGrad's) reads from the two stream gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoStats {
    /// `||g1||^2`, `g1 . g2`, `||g2||^2` over the whole vector (outside-head sums plus head sums).
    pub n11: f64,
    pub n12: f64,
    pub n22: f64,
    /// `||g1_h||^2`, `||g2_h||^2` over the head range; zero without a head.
    pub head11: f64,
    pub head22: f64,
    /// UVS's statistics outside the head, when asked for.
    pub pair: Option<Pair>,
}

/// Splits `0..n` around `head` (an empty head at the end when there is none).
fn head_or_empty(n: usize, head: Option<&Range<usize>>) -> Range<usize> {
    let h = head.cloned().unwrap_or(n..n);
    assert!(h.start <= h.end && h.end <= n, "head range {h:?} outside a vector of {n}");
    h
}

/// The instruction set the fused passes run on. Every variant runs the same code with the same
/// lane count, combination order and per-lane operations (FMA only where it rounds as `mul`
/// then `add` do, see `V8::add_f32_product`), so all give the same bits; they differ in speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// Whatever the build targets (baseline x86-64: SSE2).
    Portable,
    /// x86-64 with AVX2 and FMA (four f64 per instruction).
    Avx2,
    /// x86-64 with AVX-512F (eight f64 per instruction).
    Avx512,
}

impl Simd {
    /// The widest variant this CPU supports (what the public passes use).
    ///
    /// AVX2 comes first: its two 256-bit registers per eight lanes are two independent dependency
    /// chains per sum, where AVX-512 has one, and the per-block sums are latency-bound chains. On
    /// the development machine's EPYC (which executes 512-bit operations as two 256-bit halves)
    /// AVX2 ran the CS-DFD combination 1.2x faster at 1e4-1e6 parameters and as fast at 1e7
    /// (docs/perf-log.md). AVX-512 stays available through [`Simd::available`].
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if Simd::Avx2.supported() {
                return Simd::Avx2;
            }
            if Simd::Avx512.supported() {
                return Simd::Avx512;
            }
        }
        Simd::Portable
    }

    /// Every variant this CPU supports, `Portable` first.
    pub fn available() -> Vec<Self> {
        [Simd::Portable, Simd::Avx2, Simd::Avx512].into_iter().filter(|s| s.supported()).collect()
    }

    fn supported(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn check(self) {
        assert!(self.supported(), "{self:?} is not supported by this CPU");
    }
}

/// How a fused pass runs: on which instruction set, whether its blocks may be spread over the
/// rayon pool, and from which length the write pass streams its output past the caches. None of
/// it changes a bit of the results: every block is computed by the same code whichever thread
/// runs it, the block totals are merged in block order afterwards, and a streamed value is the
/// value a plain store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec {
    pub simd: Simd,
    pub parallel: bool,
    /// Write passes over at least this many elements use non-temporal stores (on AVX2 and
    /// AVX-512, where the output is 16-byte aligned). `usize::MAX`: never.
    pub stream_from: usize,
}

/// The length from which [`Exec::best`] streams the write pass: 4 Mi elements, 16 MiB per
/// vector, so `g1` and `g2` alone fill a last-level cache of 32 MiB. The output's lines would be
/// evicted before anything read them again, and a plain store first reads each one into the
/// cache (read-for-ownership: 16 bytes of traffic per element where 12 are needed). Below it the
/// output is better left in cache for the copy back into the parameters' gradients.
pub const STREAM_FROM: usize = 1 << 22;

impl Exec {
    /// The widest instruction set, in parallel, streaming long outputs (what the public passes
    /// use).
    pub fn best() -> Self {
        Self { simd: Simd::best(), parallel: true, stream_from: STREAM_FROM }
    }

    /// One thread on `simd`, otherwise as [`Exec::best`].
    pub fn sequential(simd: Simd) -> Self {
        Self { simd, parallel: false, stream_from: STREAM_FROM }
    }
}

/// Blocks per parallel task (128 Ki elements, 1 MiB of `g1` and `g2`), elements per task, and
/// the fewest blocks for which a pass goes parallel at all (smaller vectors take microseconds
/// either way).
const TASK_BLOCKS: usize = 64;
const TASK: usize = TASK_BLOCKS * BLOCK;
const PAR_MIN_BLOCKS: usize = 2 * TASK_BLOCKS;

/// One block's read-pass sums: `[g11, g12, g22, A, B]` (the last two zero for `block3`) and,
/// for `block_pair`, its own residual sum.
#[derive(Clone, Copy, Default)]
struct BlockSums {
    s: [f64; 5],
    rss: f64,
}

#[inline(always)]
fn read_blocks<V: V8>(x: &[f32], y: &[f32], pair: bool, slots: &mut [BlockSums]) {
    for ((xb, yb), slot) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(slots) {
        *slot = if pair {
            let (s, rss) = block_pair::<V>(xb, yb);
            BlockSums { s, rss }
        } else {
            let [a, b, c] = block3::<V>(xb, yb);
            BlockSums { s: [a, b, c, 0.0, 0.0], rss: 0.0 }
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn read_blocks_avx2(x: &[f32], y: &[f32], pair: bool, slots: &mut [BlockSums]) {
    read_blocks::<x86::Avx2>(x, y, pair, slots)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_blocks_avx512(x: &[f32], y: &[f32], pair: bool, slots: &mut [BlockSums]) {
    read_blocks::<x86::Avx512>(x, y, pair, slots)
}

fn read_blocks_on(simd: Simd, x: &[f32], y: &[f32], pair: bool, slots: &mut [BlockSums]) {
    match simd {
        // SAFETY (both arms): every public entry point ran `Simd::check` before getting here.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { read_blocks_avx2(x, y, pair, slots) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { read_blocks_avx512(x, y, pair, slots) },
        _ => read_blocks::<Portable>(x, y, pair, slots),
    }
}

fn stats_body(exec: Exec, g1: &[f32], g2: &[f32], h: Range<usize>, with_pair: bool) -> TwoStats {
    let n = g1.len();
    let segs = [h.clone(), 0..h.start, h.end..n];
    let counts = segs.clone().map(|r| r.len().div_ceil(BLOCK));
    let mut blocks = vec![BlockSums::default(); counts.iter().sum()];
    let parallel = exec.parallel && blocks.len() >= PAR_MIN_BLOCKS;
    let mut rest = &mut blocks[..];
    for (i, seg) in segs.iter().enumerate() {
        let (slots, tail) = std::mem::take(&mut rest).split_at_mut(counts[i]);
        rest = tail;
        // The head takes the three norms only; UVS's sums are over the rest.
        let pair = with_pair && i > 0;
        let (x, y) = (&g1[seg.clone()], &g2[seg.clone()]);
        let task =
            |((x, y), s): ((&[f32], &[f32]), &mut [BlockSums])| read_blocks_on(exec.simd, x, y, pair, s);
        if parallel {
            x.par_chunks(TASK).zip(y.par_chunks(TASK)).zip(slots.par_chunks_mut(TASK_BLOCKS)).for_each(task);
        } else {
            x.chunks(TASK).zip(y.chunks(TASK)).zip(slots.chunks_mut(TASK_BLOCKS)).for_each(task);
        }
    }
    // Merged in block order: the head's, then the segments before and after it.
    let (head_blocks, outside) = blocks.split_at(counts[0]);
    let mut head = [Comp::default(); 3];
    for b in head_blocks {
        for (h, &v) in head.iter_mut().zip(&b.s) {
            h.add(v);
        }
    }
    // g11, g12, g22, A, B outside the head, and the merged residual sum.
    let mut out = [Comp::default(); 5];
    let mut rss = Comp::default();
    for b in outside {
        if with_pair {
            let (sa, sb) = (out[3].value(), b.s[3]);
            rss.add(b.rss);
            if sa > 0.0 && sb > 0.0 {
                let dt = out[4].value() / sa - b.s[4] / sb;
                rss.add(dt * dt * (sa * sb / (sa + sb)));
            }
            for (o, &v) in out.iter_mut().zip(&b.s) {
                o.add(v);
            }
        } else {
            for (o, &v) in out[..3].iter_mut().zip(&b.s) {
                o.add(v);
            }
        }
    }
    let v = |c: &Comp| c.value();
    let pair = with_pair.then(|| {
        let a = v(&out[3]);
        Pair { g11: v(&out[0]), g12: v(&out[1]), g22: v(&out[2]), a, d: if a > 0.0 { v(&rss) } else { 0.0 } }
    });
    TwoStats {
        n11: v(&out[0]) + v(&head[0]),
        n12: v(&out[1]) + v(&head[1]),
        n22: v(&out[2]) + v(&head[2]),
        head11: v(&head[0]),
        head22: v(&head[2]),
        pair,
    }
}

/// One read pass over `g1, g2` for the trace's norms and cosine, CGR's head norms and (with
/// `with_pair`) UVS's statistics outside `head`, `D` included, on the widest instruction set
/// available and in parallel for long vectors (same bits either way).
pub fn two_stream_stats(g1: &[f32], g2: &[f32], head: Option<&Range<usize>>, with_pair: bool) -> TwoStats {
    two_stream_stats_on(Exec::best(), g1, g2, head, with_pair)
}

/// [`two_stream_stats`] as `exec` says (panics when the CPU lacks its instruction set).
pub fn two_stream_stats_on(
    exec: Exec,
    g1: &[f32],
    g2: &[f32],
    head: Option<&Range<usize>>,
    with_pair: bool,
) -> TwoStats {
    assert_eq!(g1.len(), g2.len(), "two-stream statistics of gradients of different lengths");
    let h = head_or_empty(g1.len(), head);
    exec.simd.check();
    stats_body(exec, g1, g2, h, with_pair)
}

/// The per-element map of one segment of the write pass, on eight lanes at a time.
trait ElemRule: Copy {
    fn apply<V: V8>(self, x: V, y: V) -> V;
}

/// `a1 x + a2 y`.
#[derive(Clone, Copy)]
struct Lin(f64, f64);
impl ElemRule for Lin {
    #[inline(always)]
    fn apply<V: V8>(self, x: V, y: V) -> V {
        V::splat(self.0).mul(x).add(V::splat(self.1).mul(y))
    }
}

/// CGR's `x + y - gamma x y (x + y)`, in `combine::cgr_head`'s order of operations.
#[derive(Clone, Copy)]
struct Cgr(f64);
impl ElemRule for Cgr {
    #[inline(always)]
    fn apply<V: V8>(self, x: V, y: V) -> V {
        let s = x.add(y);
        s.sub(V::splat(self.0).mul(x).mul(y).mul(s))
    }
}

/// The map of one segment, as the dispatcher passes it to the instruction-set wrappers.
#[derive(Clone, Copy)]
enum SegRule {
    Lin(f64, f64),
    Cgr(f64),
}

/// Writes `out[i] = rule(g1[i], g2[i])` (rounded to f32) block by block and stores each block's
/// `sum out[i]^2` of the rounded values (lane-wise, as the read pass) in its slot. With `STREAM`
/// the full lane groups go out with non-temporal stores (`out` must be 16-byte aligned): the same
/// values, without first reading every line of `out` into the cache.
#[inline(always)]
fn write_blocks<V: V8, R: ElemRule, const STREAM: bool>(
    out: &mut [f32],
    g1: &[f32],
    g2: &[f32],
    rule: R,
    slots: &mut [f64],
) {
    debug_assert!(!STREAM || (out.as_ptr() as usize).is_multiple_of(16));
    for (((o, x), y), slot) in out.chunks_mut(BLOCK).zip(g1.chunks(BLOCK)).zip(g2.chunks(BLOCK)).zip(slots) {
        let mut sq = V::zero();
        let (o8, or) = o.as_chunks_mut::<LANES>();
        let (x8, xr) = x.as_chunks::<LANES>();
        let (y8, yr) = y.as_chunks::<LANES>();
        for ((o8, x8), y8) in o8.iter_mut().zip(x8).zip(y8) {
            let r = rule.apply(V::load(x8), V::load(y8));
            let v = if STREAM {
                r.stream_rounded(o8)
            } else {
                r.store(o8);
                V::load(o8)
            };
            sq = sq.add_f32_product(v, v);
        }
        if !or.is_empty() {
            let mut p = [0f32; LANES];
            rule.apply(V::load(&padded(xr)), V::load(&padded(yr))).store(&mut p);
            // Padded lanes hold rule(0, 0) = 0; only the real ones are written and squared.
            p[or.len()..].fill(0.0);
            or.copy_from_slice(&p[..or.len()]);
            let v = V::load(&p);
            sq = sq.add_f32_product(v, v);
        }
        *slot = tree(&sq.lanes());
    }
    if STREAM {
        // Before the task returns, so the data is visible to whichever thread reads `out` next.
        V::stream_fence();
    }
}

/// One task of the write pass, as the dispatcher hands it to the instruction-set wrappers.
struct WriteTask<'a> {
    out: &'a mut [f32],
    g1: &'a [f32],
    g2: &'a [f32],
    rule: SegRule,
    /// Streaming stores asked for (taken where `out` is 16-byte aligned).
    stream: bool,
    slots: &'a mut [f64],
}

#[inline(always)]
fn write_blocks_rule<V: V8>(t: WriteTask) {
    let WriteTask { out, g1, g2, rule, stream, slots } = t;
    let stream = stream && (out.as_ptr() as usize).is_multiple_of(16);
    match (rule, stream) {
        (SegRule::Lin(a, b), false) => write_blocks::<V, _, false>(out, g1, g2, Lin(a, b), slots),
        (SegRule::Lin(a, b), true) => write_blocks::<V, _, true>(out, g1, g2, Lin(a, b), slots),
        (SegRule::Cgr(g), false) => write_blocks::<V, _, false>(out, g1, g2, Cgr(g), slots),
        (SegRule::Cgr(g), true) => write_blocks::<V, _, true>(out, g1, g2, Cgr(g), slots),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn write_blocks_avx2(t: WriteTask) {
    write_blocks_rule::<x86::Avx2>(t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn write_blocks_avx512(t: WriteTask) {
    write_blocks_rule::<x86::Avx512>(t)
}

fn write_blocks_on(simd: Simd, t: WriteTask) {
    match simd {
        // SAFETY (both arms): every public entry point ran `Simd::check` before getting here.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { write_blocks_avx2(t) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { write_blocks_avx512(t) },
        _ => write_blocks_rule::<Portable>(t),
    }
}

fn write_body(
    exec: Exec,
    out: &mut [f32],
    g1: &[f32],
    g2: &[f32],
    lin: (f64, f64),
    h: Range<usize>,
    gamma: Option<f64>,
) -> f64 {
    let n = g1.len();
    let lin = SegRule::Lin(lin.0, lin.1);
    let head_rule = match gamma {
        // `1 x + 1 y` is `x + y` exactly: the Sum rule is the linear one with unit weights.
        None => SegRule::Lin(1.0, 1.0),
        Some(g) => SegRule::Cgr(g),
    };
    let (out0, rest) = out.split_at_mut(h.start);
    let (out_head, out2) = rest.split_at_mut(h.len());
    let segs = [(out0, 0..h.start, lin), (out_head, h.clone(), head_rule), (out2, h.end..n, lin)];
    let counts = [h.start, h.len(), n - h.end].map(|len| len.div_ceil(BLOCK));
    let mut sq = vec![0f64; counts.iter().sum()];
    let parallel = exec.parallel && sq.len() >= PAR_MIN_BLOCKS;
    // Decided on the whole vector: every segment and task of a long one streams.
    let stream = n >= exec.stream_from;
    let mut rest = &mut sq[..];
    for (i, (o, seg, rule)) in segs.into_iter().enumerate() {
        let (slots, tail) = std::mem::take(&mut rest).split_at_mut(counts[i]);
        rest = tail;
        let (x, y) = (&g1[seg.clone()], &g2[seg]);
        type Task<'a> = ((&'a mut [f32], (&'a [f32], &'a [f32])), &'a mut [f64]);
        let task = |((out, (g1, g2)), slots): Task| {
            write_blocks_on(exec.simd, WriteTask { out, g1, g2, rule, stream, slots })
        };
        if parallel {
            let xy = x.par_chunks(TASK).zip(y.par_chunks(TASK));
            o.par_chunks_mut(TASK).zip(xy).zip(slots.par_chunks_mut(TASK_BLOCKS)).for_each(task);
        } else {
            let xy = x.chunks(TASK).zip(y.chunks(TASK));
            o.chunks_mut(TASK).zip(xy).zip(slots.chunks_mut(TASK_BLOCKS)).for_each(task);
        }
    }
    // `||out||^2`, block totals merged in element order.
    let mut acc = Comp::default();
    for &b in &sq {
        acc.add(b);
    }
    acc.value()
}

/// One write pass: `out = a1 g1 + a2 g2` outside `head`, the head's slice by `rule`, and
/// `||out||^2` accumulated on the fly (lane-wise, as the read pass). `stats` supplies the head
/// norms CGR needs.
pub fn write_two(
    out: &mut [f32],
    g1: &[f32],
    g2: &[f32],
    coef: (f64, f64),
    head: Option<(&Range<usize>, HeadRule)>,
    stats: &TwoStats,
) -> f64 {
    write_two_on(Exec::best(), out, g1, g2, coef, head, stats)
}

/// [`write_two`] as `exec` says (panics when the CPU lacks its instruction set).
pub fn write_two_on(
    exec: Exec,
    out: &mut [f32],
    g1: &[f32],
    g2: &[f32],
    coef: (f64, f64),
    head: Option<(&Range<usize>, HeadRule)>,
    stats: &TwoStats,
) -> f64 {
    let n = g1.len();
    assert!(g2.len() == n && out.len() == n, "combination of vectors of different lengths");
    let h = head_or_empty(n, head.map(|(r, _)| r));
    let gamma = match head.map_or(HeadRule::Sum, |(_, r)| r) {
        HeadRule::Sum => None,
        HeadRule::Cgr { tau } => Some(tau / (stats.head11.sqrt().max(1e-8) * stats.head22.sqrt().max(1e-8))),
    };
    exec.simd.check();
    write_body(exec, out, g1, g2, coef, h, gamma)
}

/// CS-DFD's flat-vector work for one step (methods.md 2.1-2.2), as `TwoStream::step` runs it:
/// with `uvs_c = Some(c)`, UVS with that `c` on every index outside `head`, else `g1 + g2`
/// there; `head_rule` on the head. Writes the direction into `out` and returns the trace's
/// numbers. One read of `g1, g2` and one write of `out`.
pub fn cs_dfd_direction(
    g1: &[f32],
    g2: &[f32],
    head: Option<&Range<usize>>,
    uvs_c: Option<f64>,
    head_rule: HeadRule,
    out: &mut [f32],
) -> TwoStepNumbers {
    cs_dfd_direction_on(Exec::best(), g1, g2, head, uvs_c, head_rule, out)
}

/// [`cs_dfd_direction`] as `exec` says (panics when the CPU lacks its instruction set).
pub fn cs_dfd_direction_on(
    exec: Exec,
    g1: &[f32],
    g2: &[f32],
    head: Option<&Range<usize>>,
    uvs_c: Option<f64>,
    head_rule: HeadRule,
    out: &mut [f32],
) -> TwoStepNumbers {
    let stats = two_stream_stats_on(exec, g1, g2, head, uvs_c.is_some());
    let (coef, mu) = match (uvs_c, &stats.pair) {
        (Some(c), Some(pair)) => {
            let sol = uvs_two_fixed(pair, c);
            ((sol.coef[0], sol.coef[1]), Some(sol.mu))
        }
        _ => ((1.0, 1.0), None),
    };
    let norm_update = write_two_on(exec, out, g1, g2, coef, head.map(|h| (h, head_rule)), &stats).sqrt();
    trace_numbers(&stats, norm_update, mu)
}

/// The trace's norms and cosine from fused statistics (the formulas the step always used).
pub fn trace_numbers(stats: &TwoStats, norm_update: f64, mu: Option<[f64; 2]>) -> TwoStepNumbers {
    let (n1, n2) = (stats.n11.sqrt(), stats.n22.sqrt());
    TwoStepNumbers {
        norm_g1: n1,
        norm_g2: n2,
        cos_g1_g2: stats.n12 / (n1.max(1e-12) * n2.max(1e-12)),
        norm_update,
        mu,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::methods::combine::*;

    /// Sequential Neumaier sum of `terms`, each formed in f64: the independent reference.
    fn kahan(terms: impl Iterator<Item = f64>) -> (f64, f64) {
        let (mut c, mut abs) = (Comp::default(), 0f64);
        for t in terms {
            c.add(t);
            abs += t.abs();
        }
        (c.value(), abs)
    }

    /// Reference statistics by brute force: one compensated sequential sum per quantity over
    /// the indices outside (or inside) the head, `D` from the residual with the global `t`.
    /// Returns `(value, sum of |terms|)` pairs, the latter to bound signed sums.
    struct Reference {
        out: [(f64, f64); 5],
        d: (f64, f64),
        head: [(f64, f64); 3],
    }

    fn reference(g1: &[f32], g2: &[f32], h: &Range<usize>) -> Reference {
        let n = g1.len();
        let outside = || (0..h.start).chain(h.end..n).map(|i| (g1[i] as f64, g2[i] as f64));
        let inside = || h.clone().map(|i| (g1[i] as f64, g2[i] as f64));
        let out = [
            kahan(outside().map(|(x, _)| x * x)),
            kahan(outside().map(|(x, y)| x * y)),
            kahan(outside().map(|(_, y)| y * y)),
            kahan(outside().map(|(x, y)| (x - y) * (x - y))),
            kahan(outside().map(|(x, y)| y * (x - y))),
        ];
        let t = if out[3].0 > 0.0 { out[4].0 / out[3].0 } else { 0.0 };
        let d = if out[3].0 > 0.0 {
            kahan(outside().map(|(x, y)| (y - t * (x - y)).powi(2)))
        } else {
            (0.0, 0.0)
        };
        let head = [
            kahan(inside().map(|(x, _)| x * x)),
            kahan(inside().map(|(x, y)| x * y)),
            kahan(inside().map(|(_, y)| y * y)),
        ];
        Reference { out, d, head }
    }

    /// Values spread over many binades, so that summation order shows in the low bits.
    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m: f32 = rng.random_range(-1.0..1.0);
                m * 2f32.powi(rng.random_range(-30..4))
            })
            .collect()
    }

    /// `g1`, `g2` and the head ranges to try on them.
    type Case = (Vec<f32>, Vec<f32>, Vec<Option<Range<usize>>>);

    /// Odd lengths (below a lane group, below and across blocks) and heads at unaligned places.
    fn cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
        let mut v = Vec::new();
        for &n in &[1usize, 3, 7, 9, 31, 1001, 2049, 4099, 10_007, 300_007] {
            let mut heads: Vec<Option<Range<usize>>> = vec![None, Some(0..n), Some(n..n), Some(0..n / 2)];
            for _ in 0..4 {
                let a = rng.random_range(0..=n);
                let b = rng.random_range(a..=n);
                heads.push(Some(a..b));
            }
            heads.push(Some(n - n / 16..n));
            let g1 = random(rng, n);
            let mut g2 = random(rng, n);
            if n == 31 {
                g2.copy_from_slice(&g1); // A = 0: the degenerate branch
            }
            if n == 10_007 {
                // The first blocks have g1 = g2 (S = 0 on one side of the block merge).
                g2[..5000].copy_from_slice(&g1[..5000]);
            }
            v.push((g1, g2, heads));
        }
        v
    }

    fn rules() -> [(Option<f64>, HeadRule); 4] {
        let cgr = HeadRule::Cgr { tau: 0.01 };
        [(Some(0.5), cgr), (Some(0.5), HeadRule::Sum), (None, cgr), (None, HeadRule::Sum)]
    }

    #[track_caller]
    fn close(got: f64, (want, abs): (f64, f64), what: &str) {
        assert!(
            (got - want).abs() <= 1e-12 * abs,
            "{what}: {got:e} vs reference {want:e} (sum |terms| {abs:e})"
        );
    }

    #[test]
    fn stats_match_a_compensated_sequential_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut checked = 0;
        for (g1, g2, heads) in cases(&mut rng) {
            for head in &heads {
                let what = format!("n = {}, head = {head:?}", g1.len());
                let h = head.clone().unwrap_or(g1.len()..g1.len());
                let r = reference(&g1, &g2, &h);
                let st = two_stream_stats(&g1, &g2, head.as_ref(), true);
                let p = st.pair.expect("asked for");
                for (name, got, want) in [
                    ("g11", p.g11, r.out[0]),
                    ("g12", p.g12, r.out[1]),
                    ("g22", p.g22, r.out[2]),
                    ("A", p.a, r.out[3]),
                    ("D", p.d, r.d),
                    ("head11", st.head11, r.head[0]),
                    ("head22", st.head22, r.head[2]),
                    ("n11", st.n11, (r.out[0].0 + r.head[0].0, r.out[0].1 + r.head[0].1)),
                    ("n12", st.n12, (r.out[1].0 + r.head[1].0, r.out[1].1 + r.head[1].1)),
                    ("n22", st.n22, (r.out[2].0 + r.head[2].0, r.out[2].1 + r.head[2].1)),
                ] {
                    close(got, want, &format!("{what}: {name}"));
                }
                // Without UVS the same whole-vector and head sums.
                let st3 = two_stream_stats(&g1, &g2, head.as_ref(), false);
                assert_eq!(st3.pair, None);
                assert_eq!((st3.n11, st3.n12, st3.n22), (st.n11, st.n12, st.n22), "{what}");
                assert_eq!((st3.head11, st3.head22), (st.head11, st.head22), "{what}");
                checked += 1;
            }
        }
        assert!(checked >= 70);
    }

    /// The update vector and the trace against a brute-force step built from the reference
    /// statistics: every element within f32 rounding of its own terms, the norms to 1e-12.
    #[test]
    fn step_matches_a_brute_force_step() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (g1, g2, heads) in cases(&mut rng) {
            let n = g1.len();
            for head in &heads {
                let h = head.clone().unwrap_or(n..n);
                let r = reference(&g1, &g2, &h);
                for (uvs_c, rule) in rules() {
                    let what = format!("n = {n}, head = {head:?}, uvs = {uvs_c:?}, rule = {rule:?}");
                    let mut v = vec![f32::NAN; n];
                    let num = cs_dfd_direction(&g1, &g2, head.as_ref(), uvs_c, rule, &mut v);
                    let (a1, a2, mu) = match uvs_c {
                        Some(c) => {
                            let pair = Pair {
                                g11: r.out[0].0,
                                g12: r.out[1].0,
                                g22: r.out[2].0,
                                a: r.out[3].0,
                                d: r.d.0,
                            };
                            let s = uvs_two(&pair, c);
                            (s.coef[0], s.coef[1], Some([s.mu[0], s.mu[1]]))
                        }
                        None => (1.0, 1.0, None),
                    };
                    match (num.mu, mu) {
                        (Some(m), Some(w)) => {
                            assert!(
                                (m[0] - w[0]).abs() <= 1e-9 && (m[1] - w[1]).abs() <= 1e-9,
                                "{what}: mu {m:?} vs {w:?}"
                            )
                        }
                        (m, w) => assert_eq!(m, w, "{what}: mu"),
                    }
                    let gamma = 0.01 / (r.head[0].0.sqrt().max(1e-8) * r.head[2].0.sqrt().max(1e-8));
                    for i in 0..n {
                        let (x, y) = (g1[i] as f64, g2[i] as f64);
                        let (want, scale) = if h.contains(&i) {
                            match rule {
                                HeadRule::Sum => (x + y, x.abs() + y.abs()),
                                HeadRule::Cgr { .. } => {
                                    let c = gamma * x * y * (x + y);
                                    (x + y - c, x.abs() + y.abs() + c.abs())
                                }
                            }
                        } else {
                            (a1 * x + a2 * y, (a1 * x).abs() + (a2 * y).abs())
                        };
                        let err = (v[i] as f64 - want).abs();
                        // Half an f32 ulp of the result, plus the coefficients' f64 error.
                        let tol = 0.5 * f32::EPSILON as f64 * want.abs() + 1e-9 * scale + f64::MIN_POSITIVE;
                        assert!(err <= tol, "{what}: v[{i}] = {:e}, brute force {want:e}", v[i]);
                    }
                    let nv = kahan(v.iter().map(|&x| x as f64 * x as f64));
                    close(num.norm_update * num.norm_update, nv, &format!("{what}: ||v||^2"));
                    let n11 = r.out[0].0 + r.head[0].0;
                    let n22 = r.out[2].0 + r.head[2].0;
                    assert!((num.norm_g1 - n11.sqrt()).abs() <= 1e-12 * n11.sqrt(), "{what}: norm_g1");
                    assert!((num.norm_g2 - n22.sqrt()).abs() <= 1e-12 * n22.sqrt(), "{what}: norm_g2");
                }
            }
        }
    }

    /// Every instruction set gives the same bits as the portable code (the same lanes, the
    /// same order, no FMA); on a CPU without AVX this only checks the portable path.
    #[test]
    fn every_instruction_set_and_thread_count_gives_the_same_bits() {
        let seq = |simd| Exec { simd, parallel: false, stream_from: usize::MAX };
        // `stream_from: 0` sends every case through the streaming stores.
        let execs: Vec<Exec> = Simd::available()
            .into_iter()
            .flat_map(|simd| {
                let par = Exec { parallel: true, ..seq(simd) };
                [seq(simd), par, Exec { stream_from: 0, ..seq(simd) }, Exec { stream_from: 0, ..par }]
            })
            .collect();
        eprintln!("compared with {:?}: {execs:?}", seq(Simd::Portable));
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut went_parallel = false;
        for (g1, g2, heads) in cases(&mut rng) {
            let n = g1.len();
            went_parallel |= n.div_ceil(BLOCK) >= PAR_MIN_BLOCKS;
            for head in &heads {
                for (uvs_c, rule) in rules() {
                    let what = format!("n = {n}, head = {head:?}, uvs = {uvs_c:?}, rule = {rule:?}");
                    let mut v0 = vec![f32::NAN; n];
                    let e0 = seq(Simd::Portable);
                    let num0 = cs_dfd_direction_on(e0, &g1, &g2, head.as_ref(), uvs_c, rule, &mut v0);
                    let st0 = two_stream_stats_on(e0, &g1, &g2, head.as_ref(), uvs_c.is_some());
                    for &exec in &execs[1..] {
                        // Aligned, so that the streaming stores can run.
                        let mut buf = vec![f32::NAN; n + 8];
                        let at = buf.as_ptr().align_offset(32);
                        let v = &mut buf[at..at + n];
                        let num = cs_dfd_direction_on(exec, &g1, &g2, head.as_ref(), uvs_c, rule, v);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert!(bits(v) == bits(&v0), "{what}: {exec:?} update vector");
                        let nb = |m: &TwoStepNumbers| {
                            [m.norm_g1, m.norm_g2, m.cos_g1_g2, m.norm_update].map(f64::to_bits)
                        };
                        assert_eq!(nb(&num), nb(&num0), "{what}: {exec:?} trace");
                        assert_eq!(num.mu.map(|m| m.map(f64::to_bits)), num0.mu.map(|m| m.map(f64::to_bits)));
                        let st = two_stream_stats_on(exec, &g1, &g2, head.as_ref(), uvs_c.is_some());
                        let sb = |s: &TwoStats| {
                            let p = s.pair.map(|p| [p.g11, p.g12, p.g22, p.a, p.d].map(f64::to_bits));
                            ([s.n11, s.n12, s.n22, s.head11, s.head22].map(f64::to_bits), p)
                        };
                        assert_eq!(sb(&st), sb(&st0), "{what}: {exec:?} statistics");
                    }
                }
            }
        }
        assert!(went_parallel, "no case is long enough for the parallel passes");
    }

    /// The bit comparison above can fail: on these inputs a different lane count (four instead
    /// of eight) already changes the bits, so matching bits means matching order.
    #[test]
    fn the_inputs_are_sensitive_to_summation_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let g = random(&mut rng, 4099);
        let st = two_stream_stats_on(Exec::sequential(Simd::Portable), &g, &g, None, false);
        assert_ne!(st.n11.to_bits(), crate::gradvec::dot(&g, &g).to_bits());
        let seq = g.iter().fold(0f64, |s, &x| s + x as f64 * x as f64);
        assert_ne!(st.n11.to_bits(), seq.to_bits());
    }
}
