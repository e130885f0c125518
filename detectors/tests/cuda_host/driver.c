/* Runs one kernel of kernels.cu on the host (see host_shim.h), for tests/cuda_kernels_host.rs.
 *
 * usage: driver KERNEL ITEMS ARG...   with ARG one of
 *   f:PATH       f32 buffer read from PATH (raw, native byte order)
 *   d:PATH       f64 buffer read from PATH
 *   of:PATH:LEN  f32 output of LEN values, written to PATH after the launch (starts as NaN, so a
 *                value the kernel never writes shows up)
 *   od:PATH:LEN  f64 output likewise
 *   uf:PATH      f32 buffer read from PATH, updated in place and written back
 *   i:INT  x:FLOAT  e:DOUBLE   scalars
 * The launch is ceil(ITEMS / 256) blocks of 256 threads, as ops/cuda/mod.rs launches them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_shim.h"

dfb_dim3 blockIdx, blockDim, threadIdx;

#include "kernels.cu"

typedef struct {
    char kind[3];
    const char* path;
    float* f;
    double* d;
    long long len;
    long long i;
    float x;
    double e;
} Arg;

static void die(const char* what, const char* arg) {
    fprintf(stderr, "driver: %s %s\n", what, arg);
    exit(2);
}

/* Reads a whole file into a fresh buffer of `size`-byte elements; sets *len. */
static void* slurp(const char* path, size_t size, long long* len) {
    FILE* fp = fopen(path, "rb");
    long bytes;
    void* buf;
    if (!fp || fseek(fp, 0, SEEK_END) != 0 || (bytes = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
        die("cannot read", path);
    buf = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (!buf || fread(buf, 1, (size_t)bytes, fp) != (size_t)bytes) die("cannot read", path);
    fclose(fp);
    *len = bytes / (long)size;
    return buf;
}

static void spit(const char* path, const void* data, size_t size, long long len) {
    FILE* fp = fopen(path, "wb");
    if (!fp || fwrite(data, size, (size_t)len, fp) != (size_t)len) die("cannot write", path);
    fclose(fp);
}

int main(int argc, char** argv) {
    int k, n;
    long long items, b, j;
    unsigned t;
    const char* name;
    Arg* a;
    if (argc < 3) die("usage: driver KERNEL ITEMS ARG...", "");
    name = argv[1];
    items = atoll(argv[2]);
    n = argc - 3;
    a = (Arg*)calloc((size_t)(n > 0 ? n : 1), sizeof(Arg));
    for (k = 0; k < n; ++k) {
        char* s = argv[k + 3];
        char* colon = strchr(s, ':');
        char* rest;
        if (!colon || colon - s > 2) die("bad argument", s);
        memcpy(a[k].kind, s, (size_t)(colon - s));
        rest = colon + 1;
        if (!strcmp(a[k].kind, "f") || !strcmp(a[k].kind, "uf")) {
            a[k].path = rest;
            a[k].f = (float*)slurp(rest, sizeof(float), &a[k].len);
        } else if (!strcmp(a[k].kind, "d")) {
            a[k].d = (double*)slurp(rest, sizeof(double), &a[k].len);
        } else if (!strcmp(a[k].kind, "of") || !strcmp(a[k].kind, "od")) {
            char* c2 = strrchr(rest, ':');
            if (!c2) die("output needs PATH:LEN", s);
            *c2 = '\0';
            a[k].path = rest;
            a[k].len = atoll(c2 + 1);
            if (!strcmp(a[k].kind, "of")) {
                a[k].f = (float*)malloc((size_t)(a[k].len + 1) * sizeof(float));
                for (j = 0; j < a[k].len; ++j) a[k].f[j] = NAN;
            } else {
                a[k].d = (double*)malloc((size_t)(a[k].len + 1) * sizeof(double));
                for (j = 0; j < a[k].len; ++j) a[k].d[j] = NAN;
            }
        } else if (!strcmp(a[k].kind, "i")) {
            a[k].i = atoll(rest);
        } else if (!strcmp(a[k].kind, "x")) {
            a[k].x = strtof(rest, NULL);
        } else if (!strcmp(a[k].kind, "e")) {
            a[k].e = strtod(rest, NULL);
        } else {
            die("bad argument", s);
        }
    }
#define F(k) (a[k].f)
#define D(k) (a[k].d)
#define I(k) ((int)a[k].i)
#define X(k) (a[k].x)
#define E(k) (a[k].e)
#define NEED(count) \
    if (n != (count)) die("wrong number of arguments for", name)
#define LAUNCH(call)                                  \
    do {                                              \
        blockDim.x = 256;                             \
        for (b = 0; b < (items + 255) / 256; ++b)     \
            for (t = 0; t < 256; ++t) {               \
                blockIdx.x = (unsigned)b;             \
                threadIdx.x = t;                      \
                call;                                 \
            }                                         \
    } while (0)
#define DW_ARGS(k) I(k), I(k + 1), I(k + 2), I(k + 3), I(k + 4), I(k + 5), I(k + 6), I(k + 7), \
                   I(k + 8), I(k + 9), I(k + 10), I(k + 11), I(k + 12)
    if (!strcmp(name, "dfb_dw_fwd")) {
        NEED(16);
        LAUNCH(dfb_dw_fwd(F(0), F(1), F(2), DW_ARGS(3)));
    } else if (!strcmp(name, "dfb_dw_bwd_data")) {
        NEED(16);
        LAUNCH(dfb_dw_bwd_data(F(0), F(1), F(2), DW_ARGS(3)));
    } else if (!strcmp(name, "dfb_dw_bwd_weight_partial")) {
        NEED(17);
        LAUNCH(dfb_dw_bwd_weight_partial(F(0), F(1), F(2), DW_ARGS(3), I(16)));
    } else if (!strcmp(name, "dfb_rows_sum")) {
        NEED(4);
        LAUNCH(dfb_rows_sum(F(0), F(1), I(2), I(3)));
    } else if (!strcmp(name, "dfb_bn_stats_partial")) {
        NEED(7);
        LAUNCH(dfb_bn_stats_partial(F(0), F(1), I(2), I(3), I(4), I(5), I(6)));
    } else if (!strcmp(name, "dfb_bn_stats_final")) {
        NEED(9);
        LAUNCH(dfb_bn_stats_final(F(0), F(1), D(2), I(3), I(4), I(5), I(6), I(7), E(8)));
    } else if (!strcmp(name, "dfb_bn_fixed_stats")) {
        NEED(5);
        LAUNCH(dfb_bn_fixed_stats(F(0), F(1), D(2), I(3), E(4)));
    } else if (!strcmp(name, "dfb_bn_apply")) {
        NEED(9);
        LAUNCH(dfb_bn_apply(F(0), F(1), F(2), D(3), F(4), I(5), I(6), I(7), I(8)));
    } else if (!strcmp(name, "dfb_bn_bwd_partial")) {
        NEED(11);
        LAUNCH(dfb_bn_bwd_partial(F(0), F(1), F(2), F(3), D(4), F(5), I(6), I(7), I(8), I(9), I(10)));
    } else if (!strcmp(name, "dfb_bn_bwd_final")) {
        NEED(5);
        LAUNCH(dfb_bn_bwd_final(F(0), D(1), D(2), I(3), I(4)));
    } else if (!strcmp(name, "dfb_bn_bwd_dx")) {
        NEED(12);
        LAUNCH(dfb_bn_bwd_dx(F(0), F(1), F(2), F(3), D(4), D(5), F(6), I(7), I(8), I(9), I(10), I(11)));
    } else if (!strcmp(name, "dfb_bn_running_update")) {
        NEED(6);
        LAUNCH(dfb_bn_running_update(F(0), F(1), I(2), X(3), X(4), X(5)));
    } else {
        die("unknown kernel", name);
    }
    for (k = 0; k < n; ++k) {
        if (!strcmp(a[k].kind, "of") || !strcmp(a[k].kind, "uf")) spit(a[k].path, a[k].f, sizeof(float), a[k].len);
        if (!strcmp(a[k].kind, "od")) spit(a[k].path, a[k].d, sizeof(double), a[k].len);
    }
    return 0;
}
