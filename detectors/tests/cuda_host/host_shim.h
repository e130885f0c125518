/* Host emulation of the CUDA built-ins that detectors/src/ops/cuda/kernels.cu uses, so that a C99
 * compiler turns the same kernel source into plain functions. A launch is a loop over every
 * (block, thread) pair; this is exact for kernels without shared memory, barriers or atomics,
 * which is how kernels.cu is written. */
#ifndef DFB_HOST_SHIM_H
#define DFB_HOST_SHIM_H
#include <math.h>

#define DFB_HOST_EMULATION 1
typedef long long i64;

typedef struct {
    unsigned int x, y, z;
} dfb_dim3;
extern dfb_dim3 blockIdx, blockDim, threadIdx;

#define DFB_KERNEL
#define __global__
#define __device__ static inline
#define __forceinline__
#define __restrict__ restrict

/* Round-to-nearest products and sums: with -ffp-contract=off the host does exactly these. */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
#endif
