//! Custom CPU convolution kernels (forward and backward) as candle custom ops.
