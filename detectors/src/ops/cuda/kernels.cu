// dfbench's CUDA kernels: depthwise convolution (forward, input gradient, weight gradient) and
// fused 2-D BatchNorm (statistics, normalisation, backward), f32, contiguous NCHW.
//
// Compiled at run time with NVRTC (ops/cuda/mod.rs) and, for the host emulation test, as C99
// by the system C compiler through tests/cuda_host/host_shim.h (tests/cuda_kernels_host.rs), so
// it sticks to the common subset of C99 and CUDA C++. So that the emulation is exact, every kernel is one thread per output value with no shared memory,
// no __syncthreads and no atomics: reductions are split into a "partial" kernel (thread p of a
// row sums the elements p, p + P, p + 2P, ... in f32; neighbouring threads read neighbouring
// addresses) and a "final" kernel that adds the row's P partials in f64 in index order. The
// results are therefore deterministic (no atomics, fixed order), and the same on the host.
//
// Flat indices into tensors use long long (N*C*H*W can exceed 2^31); indices within one plane
// (H*W, HO*WO) and the batch index are int, as the wrappers pass every size as int.

#ifndef DFB_HOST_EMULATION
typedef long long i64;
#define DFB_KERNEL extern "C" __global__
#endif

__device__ __forceinline__ i64 dfb_thread_index(void) {
    return (i64)blockIdx.x * (i64)blockDim.x + (i64)threadIdx.x;
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution: input [N, C, H, W], weight [O, 1, KH, KW] with O = C * M (channel
// multiplier M; output channel o reads input channel o / M), output [N, O, HO, WO].
// Padding may differ per side (TF "SAME"): pt / pl are the top / left pads; the bottom / right
// pads only decide HO and WO, which the caller passes.
// ---------------------------------------------------------------------------------------------

// One thread per output value; taps summed row by row, left to right (the CPU op's order).
DFB_KERNEL void dfb_dw_fwd(const float* __restrict__ x, const float* __restrict__ w,
                           float* __restrict__ y, int n, int c, int h, int wd, int m, int kh,
                           int kw, int ho, int wo, int s, int pt, int pl, int d) {
    const i64 idx = dfb_thread_index();
    const int o_ch = c * m;
    const i64 total = (i64)n * o_ch * ho * wo;
    if (idx >= total) return;
    const int ow = (int)(idx % wo);
    const int oh = (int)((idx / wo) % ho);
    const int o = (int)((idx / ((i64)wo * ho)) % o_ch);
    const int b = (int)(idx / ((i64)wo * ho * o_ch));
    const int ci = o / m;
    const float* xp = x + ((i64)b * c + ci) * h * wd;
    const float* wp = w + (i64)o * kh * kw;
    float acc = 0.0f;
    for (int ki = 0; ki < kh; ++ki) {
        const int ih = oh * s - pt + ki * d;
        if (ih < 0 || ih >= h) continue;
        for (int kj = 0; kj < kw; ++kj) {
            const int iw = ow * s - pl + kj * d;
            if (iw < 0 || iw >= wd) continue;
            acc += wp[ki * kw + kj] * xp[(i64)ih * wd + iw];
        }
    }
    y[idx] = acc;
}

// Input gradient: one thread per input value, gathering every (output channel, tap) that read it.
DFB_KERNEL void dfb_dw_bwd_data(const float* __restrict__ dy, const float* __restrict__ w,
                                float* __restrict__ dx, int n, int c, int h, int wd, int m,
                                int kh, int kw, int ho, int wo, int s, int pt, int pl, int d) {
    const i64 idx = dfb_thread_index();
    const i64 total = (i64)n * c * h * wd;
    if (idx >= total) return;
    const int iw = (int)(idx % wd);
    const int ih = (int)((idx / wd) % h);
    const int ci = (int)((idx / ((i64)wd * h)) % c);
    const int b = (int)(idx / ((i64)wd * h * c));
    const int o_ch = c * m;
    float acc = 0.0f;
    for (int j = 0; j < m; ++j) {
        const int o = ci * m + j;
        const float* dyp = dy + ((i64)b * o_ch + o) * ho * wo;
        const float* wp = w + (i64)o * kh * kw;
        for (int ki = 0; ki < kh; ++ki) {
            const int th = ih + pt - ki * d;  // = oh * s when (oh, ki) reads row ih
            if (th < 0 || th % s != 0) continue;
            const int oh = th / s;
            if (oh >= ho) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int tw = iw + pl - kj * d;
                if (tw < 0 || tw % s != 0) continue;
                const int ow = tw / s;
                if (ow >= wo) continue;
                acc += wp[ki * kw + kj] * dyp[(i64)oh * wo + ow];
            }
        }
    }
    dx[idx] = acc;
}

// Weight gradient, first stage: row r = (o, ki, kj) of O*KH*KW rows, P partial sums per row.
// Thread (r, p) sums dy * x over the output positions e = p, p + P, ... of all N*HO*WO.
DFB_KERNEL void dfb_dw_bwd_weight_partial(const float* __restrict__ x,
                                          const float* __restrict__ dy, float* __restrict__ part,
                                          int n, int c, int h, int wd, int m, int kh, int kw,
                                          int ho, int wo, int s, int pt, int pl, int d, int p_cnt) {
    const i64 idx = dfb_thread_index();
    const int o_ch = c * m;
    const int kk = kh * kw;
    const i64 rows = (i64)o_ch * kk;
    if (idx >= rows * p_cnt) return;
    const int p = (int)(idx % p_cnt);
    const i64 r = idx / p_cnt;
    const int o = (int)(r / kk);
    const int tap = (int)(r % kk);
    const int ki = tap / kw;
    const int kj = tap % kw;
    const int ci = o / m;
    const int plane = ho * wo;
    float acc = 0.0f;
    // Element e = b * plane + q, stepped by P without 64-bit divisions: q += P, carrying into b.
    int b = p / plane;
    int q = p % plane;
    const int db = p_cnt / plane;
    const int dq = p_cnt % plane;
    while (b < n) {
        const int oh = q / wo;
        const int ow = q - oh * wo;
        const int ih = oh * s - pt + ki * d;
        const int iw = ow * s - pl + kj * d;
        if (ih >= 0 && ih < h && iw >= 0 && iw < wd)
            acc += dy[((i64)b * o_ch + o) * plane + q] * x[(((i64)b * c + ci) * h + ih) * wd + iw];
        b += db;
        q += dq;
        if (q >= plane) {
            q -= plane;
            b += 1;
        }
    }
    part[idx] = acc;
}

// Second stage of any one-value row reduction: out[r] = sum_p part[r * P + p], added in f64.
DFB_KERNEL void dfb_rows_sum(const float* __restrict__ part, float* __restrict__ out, int rows,
                             int p_cnt) {
    const i64 r = dfb_thread_index();
    if (r >= rows) return;
    double acc = 0.0;
    for (int p = 0; p < p_cnt; ++p) acc += (double)part[r * p_cnt + p];
    out[r] = (float)acc;
}

// ---------------------------------------------------------------------------------------------
// BatchNorm over (N, H, W) of x [N, C, H, W] (HW = H*W), gamma / beta [C].
// relu: 0 none, 1 on the input (bn(relu(x))), 2 on the output (relu(bn(x))), as ops::batchnorm.
// stats: f64 [3, C] = (mean, biased variance, 1 / sqrt(var + eps)).
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float dfb_relu(float v) { return v > 0.0f ? v : 0.0f; }

// The value normalised: relu(x) with an input ReLU.
__device__ __forceinline__ float dfb_bn_in(float v, int relu) { return relu == 1 ? dfb_relu(v) : v; }

// candle's ReLU backward mask, (v >= 0) as f32.
__device__ __forceinline__ float dfb_mask(float v) { return v >= 0.0f ? 1.0f : 0.0f; }

// Statistics, first stage: thread (c, p) sums (v - shift) and (v - shift)^2 over the elements
// e = p, p + P, ... of channel c (e = n * HW + i), shift = the channel's first value: the shift
// keeps the one-pass variance free of cancellation when |mean| >> std (as the CPU op).
DFB_KERNEL void dfb_bn_stats_partial(const float* __restrict__ x, float* __restrict__ part, int n,
                                     int c, int hw, int relu, int p_cnt) {
    const i64 idx = dfb_thread_index();
    if (idx >= (i64)c * p_cnt) return;
    const int p = (int)(idx % p_cnt);
    const int ci = (int)(idx / p_cnt);
    const float shift = dfb_bn_in(x[(i64)ci * hw], relu);
    float s1 = 0.0f, s2 = 0.0f;
    // Element e = b * HW + i, stepped by P without 64-bit divisions (see the weight gradient).
    int b = p / hw;
    int i = p % hw;
    const int db = p_cnt / hw;
    const int di = p_cnt % hw;
    while (b < n) {
        const float v = dfb_bn_in(x[((i64)b * c + ci) * hw + i], relu) - shift;
        s1 += v;
        s2 += v * v;
        b += db;
        i += di;
        if (i >= hw) {
            i -= hw;
            b += 1;
        }
    }
    part[2 * idx] = s1;
    part[2 * idx + 1] = s2;
}

// Statistics, second stage: one thread per channel.
DFB_KERNEL void dfb_bn_stats_final(const float* __restrict__ x, const float* __restrict__ part,
                                   double* __restrict__ stats, int n, int c, int hw, int relu,
                                   int p_cnt, double eps) {
    const i64 ci = dfb_thread_index();
    if (ci >= c) return;
    double t1 = 0.0, t2 = 0.0;
    for (int p = 0; p < p_cnt; ++p) {
        t1 += (double)part[2 * (ci * p_cnt + p)];
        t2 += (double)part[2 * (ci * p_cnt + p) + 1];
    }
    const double cnt = (double)n * (double)hw;
    const double dm = t1 / cnt;
    const double shift = (double)dfb_bn_in(x[ci * hw], relu);
    double var = t2 / cnt - dm * dm;
    if (var < 0.0) var = 0.0;
    stats[ci] = shift + dm;
    stats[c + ci] = var;
    stats[2 * c + ci] = 1.0 / sqrt(var + eps);
}

// Fixed (running) statistics in the same f64 [3, C] layout, for evaluation mode.
DFB_KERNEL void dfb_bn_fixed_stats(const float* __restrict__ mean, const float* __restrict__ var,
                                   double* __restrict__ stats, int c, double eps) {
    const i64 ci = dfb_thread_index();
    if (ci >= c) return;
    const double v = (double)var[ci];
    stats[ci] = (double)mean[ci];
    stats[c + ci] = v;
    stats[2 * c + ci] = 1.0 / sqrt(v + eps);
}

// y = act_out((act_in(x) - mean) * (gamma * inv_std) + beta), centred first (as the CPU op).
DFB_KERNEL void dfb_bn_apply(const float* __restrict__ x, const float* __restrict__ gamma,
                             const float* __restrict__ beta, const double* __restrict__ stats,
                             float* __restrict__ y, int n, int c, int hw, int relu) {
    const i64 idx = dfb_thread_index();
    if (idx >= (i64)n * c * hw) return;
    const int ci = (int)((idx / hw) % c);
    const float mu = (float)stats[ci];
    const float sc = (float)((double)gamma[ci] * stats[2 * c + ci]);
    float v = (dfb_bn_in(x[idx], relu) - mu) * sc + beta[ci];
    if (relu == 2) v = dfb_relu(v);
    y[idx] = v;
}

// The gradient at the BatchNorm's output: dy, or behind an output ReLU candle's ReLU backward
// 0 + dy * (bn(x) >= 0), with bn(x) recomputed by the forward's expression.
__device__ __forceinline__ float dfb_bn_out_grad(float g, float v, float mu, float sc, float bb,
                                                 int relu) {
    if (relu != 2) return g;
    return 0.0f + g * dfb_mask((dfb_bn_in(v, relu) - mu) * sc + bb);
}

// Backward, first stage: thread (c, p) sums g and g * (act_in(x) - mean), g the output gradient
// reaching the normalisation (dfb_bn_out_grad).
DFB_KERNEL void dfb_bn_bwd_partial(const float* __restrict__ x, const float* __restrict__ dy,
                                   const float* __restrict__ gamma, const float* __restrict__ beta,
                                   const double* __restrict__ stats, float* __restrict__ part,
                                   int n, int c, int hw, int relu, int p_cnt) {
    const i64 idx = dfb_thread_index();
    if (idx >= (i64)c * p_cnt) return;
    const int p = (int)(idx % p_cnt);
    const int ci = (int)(idx / p_cnt);
    const float mu = (float)stats[ci];
    const float sc = (float)((double)gamma[ci] * stats[2 * c + ci]);
    const float bb = beta[ci];
    float s1 = 0.0f, s2 = 0.0f;
    int b = p / hw;
    int i = p % hw;
    const int db = p_cnt / hw;
    const int di = p_cnt % hw;
    while (b < n) {
        const i64 at = ((i64)b * c + ci) * hw + i;
        const float v = x[at];
        const float g = dfb_bn_out_grad(dy[at], v, mu, sc, bb, relu);
        s1 += g;
        s2 += g * (dfb_bn_in(v, relu) - mu);
        b += db;
        i += di;
        if (i >= hw) {
            i -= hw;
            b += 1;
        }
    }
    part[2 * idx] = s1;
    part[2 * idx + 1] = s2;
}

// Backward, second stage: f64 [4, C] = (sum g, sum g * (x - mean), dgamma, dbeta) with the
// affine gradients dgamma = sum g (x - mean) * inv_std and dbeta = sum g rounded to f32 (as the
// CPU op rounds them).
DFB_KERNEL void dfb_bn_bwd_final(const float* __restrict__ part, const double* __restrict__ stats,
                                 double* __restrict__ sums, int c, int p_cnt) {
    const i64 ci = dfb_thread_index();
    if (ci >= c) return;
    double t1 = 0.0, t2 = 0.0;
    for (int p = 0; p < p_cnt; ++p) {
        t1 += (double)part[2 * (ci * p_cnt + p)];
        t2 += (double)part[2 * (ci * p_cnt + p) + 1];
    }
    sums[ci] = t1;
    sums[c + ci] = t2;
    sums[2 * c + ci] = (double)(float)(t2 * stats[2 * c + ci]);
    sums[3 * c + ci] = (double)(float)t1;
}

// dx = (k1 g + k2 (act_in(x) - mean) + k3) * relu_in_mask(x), k1 = gamma inv_std and, with batch
// statistics (batch != 0), k2 = -k1 inv_std^2 sum(g (x - mean)) / cnt, k3 = -k1 sum(g) / cnt.
DFB_KERNEL void dfb_bn_bwd_dx(const float* __restrict__ x, const float* __restrict__ dy,
                              const float* __restrict__ gamma, const float* __restrict__ beta,
                              const double* __restrict__ stats, const double* __restrict__ sums,
                              float* __restrict__ dx, int n, int c, int hw, int relu, int batch) {
    const i64 idx = dfb_thread_index();
    if (idx >= (i64)n * c * hw) return;
    const int ci = (int)((idx / hw) % c);
    const double is = stats[2 * c + ci];
    const double k1d = (double)gamma[ci] * is;
    const double cnt = (double)n * (double)hw;
    const float k1 = (float)k1d;
    const float k2 = batch ? (float)(-k1d * is * is * sums[c + ci] / cnt) : 0.0f;
    const float k3 = batch ? (float)(-k1d * sums[ci] / cnt) : 0.0f;
    const float mu = (float)stats[ci];
    const float v = x[idx];
    const float g = dfb_bn_out_grad(dy[idx], v, mu, k1, beta[ci], relu);
    const float in_mask = relu == 1 ? dfb_mask(v) : 1.0f;
    dx[idx] = (k1 * g + k2 * (dfb_bn_in(v, relu) - mu) + k3) * in_mask;
}

// Running statistics in place: r = r * (1 - momentum) + (s * factor) * momentum, f32 products
// as the CPU's candle expression computes them (factor n / (n - 1) for the variance).
DFB_KERNEL void dfb_bn_running_update(float* __restrict__ r, const float* __restrict__ s, int c,
                                      float keep, float factor, float momentum) {
    const i64 ci = dfb_thread_index();
    if (ci >= c) return;
    const float a = __fmul_rn(r[ci], keep);
    const float b = __fmul_rn(__fmul_rn(s[ci], factor), momentum);
    r[ci] = __fadd_rn(a, b);
}
