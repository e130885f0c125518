//! Reused temporaries: per-thread im2col buffers and a pool of weight-gradient partial sums.
//!
//! Fresh multi-megabyte allocations on every call cost page faults (about a tenth of candle's
//! convolution time here); these buffers grow to the largest size seen and stay.
use std::cell::RefCell;
use std::sync::Mutex;

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static DCOL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Runs `f` with this thread's two scratch buffers of at least `col_len` and `dcol_len` floats
/// (contents unspecified). `f` must not re-enter this function on the same thread, which holds
/// as long as it calls no rayon-parallel code (the gemm calls inside are single-threaded).
pub(crate) fn with_cols<R>(
    col_len: usize,
    dcol_len: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    COL.with_borrow_mut(|col| DCOL.with_borrow_mut(|dcol| f(grown(col, col_len), grown(dcol, dcol_len))))
}

static PARTIALS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Takes `count` zeroed buffers of `len` floats from the pool (allocating what is missing).
pub(crate) fn take_partials(count: usize, len: usize) -> Vec<Vec<f32>> {
    let mut pool = PARTIALS.lock().unwrap_or_else(|e| e.into_inner());
    (0..count)
        .map(|_| {
            let mut v = pool.pop().unwrap_or_default();
            v.clear();
            v.resize(len, 0.0);
            v
        })
        .collect()
}

/// Returns buffers to the pool for the next call.
pub(crate) fn give_back_partials(bufs: Vec<Vec<f32>>) {
    let mut pool = PARTIALS.lock().unwrap_or_else(|e| e.into_inner());
    pool.extend(bufs);
}

static TILES: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Takes a buffer of at least `len` floats (contents unspecified) from the pool of whole-batch
/// tiles; concurrent convolutions each get their own.
pub(crate) fn take_tile(len: usize) -> Vec<f32> {
    let mut v = TILES.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

/// Returns tile buffers to the pool for the next call.
pub(crate) fn give_back_tiles(bufs: impl IntoIterator<Item = Vec<f32>>) {
    TILES.lock().unwrap_or_else(|e| e.into_inner()).extend(bufs);
}
