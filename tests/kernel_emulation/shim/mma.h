// nvcuda::wmma for the emulation: the subset knn.cu uses (16 x 16 x 8 tf32 and 16 x 16 x 16 f16 products with
// f32 accumulators), with the documented semantics and alignment rules.
//
// A fragment is distributed over the warp as on the GPU: element e of lane l is element l + 32 e of the tile
// (row-major), so num_elements is the tile size / 32. The real element-to-lane map is opaque (the documentation
// leaves it unspecified), and a kernel may only apply the same operation to every element, as knn.cu's
// rounding does; any map is then equivalent. mma_sync gathers the warp's fragments through a warp barrier, so a
// lane that skips it deadlocks here as it would misbehave on the GPU. Each product is a * b in f32, exact for
// tf32 and f16 operands (at most 11 + 11 significant bits), accumulated in k order; the tensor cores' own
// accumulation order and rounding are not modelled, hence the test's tolerance.
#pragma once

#include <type_traits>

#include "cuda_emu.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest with ties away from zero.
inline float __float_to_tf32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) != 0x7F800000u) {
        u = (u + 0x1000u) & 0xFFFFE000u;
    }
    memcpy(&f, &u, 4);
    return f;
}

template <class T>
struct storage {
    using type = T;
};
template <>
struct storage<precision::tf32> {
    using type = float;
};

template <class Use, int M, int N, int K>
constexpr int tile_elements() {
    return std::is_same_v<Use, matrix_a> ? M * K : std::is_same_v<Use, matrix_b> ? K * N : M * N;
}

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static constexpr int num_elements = tile_elements<Use, M, N, K>() / 32;
    typename storage<T>::type x[num_elements];
};

inline unsigned lane() { return emu::g_block->cur->tid % 32; }

template <class P>
inline void check_pointer(const P* p, unsigned ldm, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
        emu::fail("%s: pointer %p is not 256-bit aligned", what, static_cast<const void*>(p));
    }
    if (ldm * sizeof(P) % 16 != 0) {
        emu::fail("%s: ldm %u is not a multiple of 16 bytes", what, ldm);
    }
}

// Element (r, c) of a rows x cols operand tile stored with the fragment's layout.
template <class Layout, class P>
inline float element(const P* p, unsigned ldm, int r, int c) {
    return static_cast<float>(std::is_same_v<Layout, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]);
}

template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
    static_assert(!std::is_same_v<Use, accumulator>, "knn.cu loads operands only");
    check_pointer(p, ldm, "load_matrix_sync");
    constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    for (int e = 0; e < f.num_elements; ++e) {
        const int idx = int(lane()) + 32 * e;
        f.x[e] = element<Layout>(p, ldm, idx / cols, idx % cols);
    }
}

template <int M, int N, int K, class T>
inline void fill_fragment(fragment<accumulator, M, N, K, T>& f, float v) {
    for (auto& e : f.x) {
        e = v;
    }
}

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c,
                     const std::source_location& site = std::source_location::current()) {
    static_assert(M * K <= emu::MMA_TILE && K * N <= emu::MMA_TILE && M * N <= emu::MMA_TILE, "scratch size");
    emu::Block& blk = *emu::g_block;
    const unsigned l = lane(), w = blk.cur->tid / 32;
    auto& scratch = blk.mma[w][blk.warp_gen[w] & 1];
    for (int e = 0; e < a.num_elements; ++e) {
        scratch[0][l + 32 * e] = static_cast<float>(a.x[e]);
    }
    for (int e = 0; e < b.num_elements; ++e) {
        scratch[1][l + 32 * e] = static_cast<float>(b.x[e]);
    }
    for (int e = 0; e < c.num_elements; ++e) {
        scratch[2][l + 32 * e] = c.x[e];
    }
    emu::warp_sync(0xFFFFFFFFu, site);
    if constexpr (std::is_same_v<T, precision::tf32>) {
        // The documented contract: tf32 operands are converted with __float_to_tf32 first (the tensor cores
        // would otherwise drop the low 13 bits). NaN passes unchanged.
        auto rounded = [](const float* v, int n) {
            return std::all_of(v, v + n, [](float x) { return __float_to_tf32(x) == x || x != x; });
        };
        if (!rounded(scratch[0], M * K) || !rounded(scratch[1], K * N)) {
            emu::fail("mma_sync: a tf32 operand was not rounded with __float_to_tf32");
        }
    }
    for (int e = 0; e < d.num_elements; ++e) {
        const int idx = int(l) + 32 * e, i = idx / N, n = idx % N;
        float s = scratch[2][idx];
        for (int k = 0; k < K; ++k) {
            s += scratch[0][i * K + k] * scratch[1][k * N + n];
        }
        d.x[e] = s;
    }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    check_pointer(p, ldm, "store_matrix_sync");
    for (int e = 0; e < f.num_elements; ++e) {
        const int idx = int(lane()) + 32 * e, r = idx / N, c = idx % N;
        p[layout == mem_row_major ? size_t(r) * ldm + c : size_t(c) * ldm + r] = f.x[e];
    }
}

}  // namespace wmma
}  // namespace nvcuda
