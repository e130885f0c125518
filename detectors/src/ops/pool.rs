//! Pooling ops candle lacks a backward for (overlapping max-pool), as custom ops.
