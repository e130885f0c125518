// Runs one kernel of kernels.cu on the host (see host_shim.h), for tests/cuda_kernels_host.rs.
//
// usage: driver KERNEL ITEMS ARG...   with ARG one of
//   f:PATH       f32 buffer read from PATH (little-endian, raw)
//   d:PATH       f64 buffer read from PATH
//   of:PATH:LEN  f32 output of LEN values, written to PATH after the launch (starts as NaN, so a
//                value the kernel never writes shows up)
//   od:PATH:LEN  f64 output likewise
//   uf:PATH      f32 buffer read from PATH, updated in place and written back
//   i:INT  x:FLOAT  e:DOUBLE   scalars
// The launch is ceil(ITEMS / 256) blocks of 256 threads, as ops/cuda/mod.rs launches them.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "host_shim.h"

dfb_dim3 blockIdx, blockDim, threadIdx;

#include "kernels.cu"

struct Arg {
    std::string kind, path;
    std::vector<float> f;
    std::vector<double> d;
    long long i = 0;
    float x = 0;
    double e = 0;
};

static std::vector<char> slurp(const std::string& p) {
    FILE* fp = std::fopen(p.c_str(), "rb");
    if (!fp) { std::fprintf(stderr, "cannot open %s\n", p.c_str()); std::exit(2); }
    std::vector<char> buf;
    char tmp[65536];
    size_t k;
    while ((k = std::fread(tmp, 1, sizeof tmp, fp)) > 0) buf.insert(buf.end(), tmp, tmp + k);
    std::fclose(fp);
    return buf;
}

template <class T>
static void spit(const std::string& p, const std::vector<T>& v) {
    FILE* fp = std::fopen(p.c_str(), "wb");
    if (!fp || std::fwrite(v.data(), sizeof(T), v.size(), fp) != v.size()) {
        std::fprintf(stderr, "cannot write %s\n", p.c_str());
        std::exit(2);
    }
    std::fclose(fp);
}

int main(int argc, char** argv) {
    if (argc < 3) { std::fprintf(stderr, "usage: driver KERNEL ITEMS ARG...\n"); return 2; }
    const std::string name = argv[1];
    const long long items = std::atoll(argv[2]);
    std::vector<Arg> a(argc - 3);
    for (int k = 3; k < argc; ++k) {
        Arg& g = a[k - 3];
        std::string s = argv[k];
        size_t c1 = s.find(':');
        g.kind = s.substr(0, c1);
        std::string rest = s.substr(c1 + 1);
        if (g.kind == "f" || g.kind == "uf") {
            g.path = rest;
            auto b = slurp(rest);
            g.f.resize(b.size() / 4);
            std::memcpy(g.f.data(), b.data(), b.size());
        } else if (g.kind == "d") {
            auto b = slurp(rest);
            g.d.resize(b.size() / 8);
            std::memcpy(g.d.data(), b.data(), b.size());
        } else if (g.kind == "of" || g.kind == "od") {
            size_t c2 = rest.rfind(':');
            g.path = rest.substr(0, c2);
            long long len = std::atoll(rest.substr(c2 + 1).c_str());
            if (g.kind == "of") g.f.assign(len, std::numeric_limits<float>::quiet_NaN());
            else g.d.assign(len, std::numeric_limits<double>::quiet_NaN());
        } else if (g.kind == "i") {
            g.i = std::atoll(rest.c_str());
        } else if (g.kind == "x") {
            g.x = std::strtof(rest.c_str(), nullptr);
        } else if (g.kind == "e") {
            g.e = std::strtod(rest.c_str(), nullptr);
        } else {
            std::fprintf(stderr, "bad argument %s\n", s.c_str());
            return 2;
        }
    }
#define F(k) (a.at(k).f.data())
#define D(k) (a.at(k).d.data())
#define I(k) ((int)a.at(k).i)
#define X(k) (a.at(k).x)
#define E(k) (a.at(k).e)
#define LAUNCH(call)                                                        \
    do {                                                                    \
        blockDim.x = 256;                                                   \
        const long long blocks = (items + 255) / 256;                       \
        for (long long b = 0; b < blocks; ++b)                              \
            for (unsigned t = 0; t < 256; ++t) {                            \
                blockIdx.x = (unsigned)b;                                   \
                threadIdx.x = t;                                            \
                call;                                                       \
            }                                                               \
    } while (0)
#define DW_ARGS(k) I(k), I(k + 1), I(k + 2), I(k + 3), I(k + 4), I(k + 5), I(k + 6), I(k + 7), \
                   I(k + 8), I(k + 9), I(k + 10), I(k + 11), I(k + 12)
    if (name == "dfb_dw_fwd") LAUNCH(dfb_dw_fwd(F(0), F(1), F(2), DW_ARGS(3)));
    else if (name == "dfb_dw_bwd_data") LAUNCH(dfb_dw_bwd_data(F(0), F(1), F(2), DW_ARGS(3)));
    else if (name == "dfb_dw_bwd_weight_partial")
        LAUNCH(dfb_dw_bwd_weight_partial(F(0), F(1), F(2), DW_ARGS(3), I(16)));
    else if (name == "dfb_rows_sum") LAUNCH(dfb_rows_sum(F(0), F(1), I(2), I(3)));
    else if (name == "dfb_bn_stats_partial")
        LAUNCH(dfb_bn_stats_partial(F(0), F(1), I(2), I(3), I(4), I(5), I(6)));
    else if (name == "dfb_bn_stats_final")
        LAUNCH(dfb_bn_stats_final(F(0), F(1), D(2), I(3), I(4), I(5), I(6), I(7), E(8)));
    else if (name == "dfb_bn_fixed_stats") LAUNCH(dfb_bn_fixed_stats(F(0), F(1), D(2), I(3), E(4)));
    else if (name == "dfb_bn_apply")
        LAUNCH(dfb_bn_apply(F(0), F(1), F(2), D(3), F(4), I(5), I(6), I(7), I(8)));
    else if (name == "dfb_bn_bwd_partial")
        LAUNCH(dfb_bn_bwd_partial(F(0), F(1), F(2), F(3), D(4), F(5), I(6), I(7), I(8), I(9), I(10)));
    else if (name == "dfb_bn_bwd_final") LAUNCH(dfb_bn_bwd_final(F(0), D(1), D(2), I(3), I(4)));
    else if (name == "dfb_bn_bwd_dx")
        LAUNCH(dfb_bn_bwd_dx(F(0), F(1), F(2), F(3), D(4), D(5), F(6), I(7), I(8), I(9), I(10), I(11)));
    else if (name == "dfb_bn_running_update")
        LAUNCH(dfb_bn_running_update(F(0), F(1), I(2), X(3), X(4), X(5)));
    else { std::fprintf(stderr, "unknown kernel %s\n", name.c_str()); return 2; }
    for (auto& g : a) {
        if (g.kind == "of" || g.kind == "uf") spit(g.path, g.f);
        if (g.kind == "od") spit(g.path, g.d);
    }
    return 0;
}
