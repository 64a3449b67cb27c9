// PatchCore's nearest-neighbour search on the GPU: for each query row, the k nearest memory-bank rows by
// squared L2 distance, without ever writing the nq x m distance matrix to global memory.
//
// Contract (the Rust host is written against it; names, parameter order and types are fixed)
// ---------------------------------------------------------------------------------------------
// All kernels are extern "C"; int is 32-bit and every size fits in int. Rows are row-major, d wide.
// The launch geometry comes from geometry.cuh (src/backend/cuda/geometry.rs, which the host launches with):
// below, 256 is BLOCK, 64 KNN_TILE, 4 KNN_LISTS and 16 KNN_MAX_K, values the code is written for and
// static_asserts pin; the merge works with any KNN_MERGE_BLOCK that is a whole number of warps.
// Distance: sq = max(0, (|q|^2 - 2 q.b) + |b|^2), evaluated in that order (the CPU's, anomalib's); a NaN
// stays NaN and never ranks. Ranking: smaller sq first, equal sq -> lower bank index first.
//
// squared_norms_{f32,tf32,f16}(rows, n, d, out)
//                                     out[i] = sum_j r(rows[i*d+j])^2 in double, rounded to float once, r the
//                                     rounding the products of that precision see: none, __float_to_tf32,
//                                     f16 round-to-nearest-even (as to_f16).
//                                     block 256, grid ceil(n/8): one warp per row.
// to_f16(src, dst, n)                 dst[i] = __float2half_rn(src[i]); grid-stride, any grid works.
// knn_partial_{f32,tf32,f16}_{k1,k16}(q, q_norms, nq, bank, bank_norms, m, d, k, chunk, cand_d, cand_i)
//                                     block 256 (1-D), no dynamic shared memory. Block (x, y) takes queries
//                                     [64x, min(nq, 64x+64)) against bank rows [y*chunk, min(m, (y+1)*chunk)),
//                                     chunk a multiple of 64 with gridDim.y*chunk >= m (a split may be empty).
//                                     _k1 only for k == 1, _k16 for 1 <= k <= 16. q and bank are float, or
//                                     __half for f16; the norms are float, from squared_norms_<same precision>.
//                                     Output: one list of k per (query, split), S = gridDim.y:
//                                       cand_d[(qi*S + y)*k + j], cand_i[same]
//                                     the split's best k by (sq, index), clamped squared distances in that
//                                     order; slots the split cannot fill hold (+inf, 0xFFFFFFFF). Inside the
//                                     block, 4 threads per query each keep list l: the best k of the rows b
//                                     with (b - y*chunk) % 4 == l (column l, l+4, ... of every 64-row tile);
//                                     the 4 lists partition the split and are merged in shared memory last.
// knn_merge(cand_d, cand_i, nq, per_query, k, out_d, out_i)
//                                     per_query = S*k contiguous candidates per query, in any order, whose
//                                     indices are distinct but for 0xFFFFFFFF. Best k by (sq, index),
//                                     skipping +inf/NaN and index 0xFFFFFFFF; out_d = sqrtf(sq) ascending,
//                                     out_i the bank index; a slot nothing fills is (NaN, 0), as on the CPU.
//                                     block KNN_MERGE_BLOCK, grid ceil(nq/(KNN_MERGE_BLOCK/32)), one warp per
//                                     query, k <= 16.
//
// Why this design
// ---------------
// * Split bank + merge: one block per 64 queries gives only ceil(nq/64) blocks (16 for nq = 1024), far
//   fewer than an H200's 132 SMs. Splitting the bank across gridDim.y fills the machine whatever nq is; the
//   price is a second pass over S*k candidates per query, which is noise next to the nq*m*d product.
// * 4 lists per query: a block has 256 threads and 64 queries, so 4 threads per query each fold a quarter
//   of every tile. All 256 threads fold in parallel, no list is shared between threads while folding (no
//   atomics), and each thread sees its columns in ascending bank order, which makes "lower index wins a
//   tie" a plain strict < (anything already kept has a lower index). Only after the last tile are the 4
//   sorted lists merged, once, in shared memory: k steps over 4 heads by one thread per query, and the
//   merge kernel reads k candidates per (query, split) instead of 4k.
// * The merge is a warp per query: with one thread per query, 1,024 queries were 1,024 threads (8 of the
//   132 SMs busy) each walking all S*k candidates. A warp's lanes walk every 32nd candidate (coalesced) into
//   their own top-k, and k rounds of a shuffle butterfly take the warp's best: a lane walks ceil(S*k/32).
// * The distance tile never leaves the SM: a 64 x 64 tile of dot products is built in registers or tensor-
//   core accumulators, parked in shared memory (it aliases the operand buffers, which are idle by then), and
//   folded into the register-resident top-k lists before the next tile overwrites it.
// * One pipeline for all precisions: the operand tiles are staged global -> registers -> shared (16-byte
//   loads when d and the pointers allow it, guarded scalar loads otherwise), the next k-step fetched while
//   the current one is multiplied (double-buffered shared tiles, one barrier per k-step), and the next bank
//   tile's first k-step fetched while the fold runs. Only the multiply differs: a 4x4 FMA micro-tile per
//   thread (f32), or wmma fragments (tf32, f16). Padded row strides (36 floats, 72 halves; 68 floats for
//   the distance tile) spread each warp's shared accesses over the banks.
// * Zero-filling everything outside [rows) x [0, d) makes ragged nq, m and any d (3, 100, 1536) add
//   exact zeros to the products; out-of-range tile columns are then skipped by the fold.
// * _k1 and _k16 differ only in the list length compiled in: 16 (distance, index) pairs cost 32 registers
//   a thread, which halves the blocks an SM holds, so k = 1 gets its own build.
// * Limit to know when tuning: the fixed 64-query block means every block streams its whole bank split,
//   so the bank is read ceil(nq/64) times (from L2): 4096 x 13107 x 384 moves ~0.64 GB in f16 and
//   ~1.3 GB in f32/tf32 per call, whatever the multiply does.

#include <cuda_fp16.h>
#include <mma.h>

#include "geometry.cuh"

namespace {

// The launch geometry (geometry.cuh, from src/backend/cuda/geometry.rs): BLOCK threads per partial block,
// KNN_TILE queries per block and bank rows per tile, KNN_LISTS lists per query, lists of at most KNN_MAX_K.
static_assert(KNN_TILE * KNN_LISTS == BLOCK, "a partial block has one thread per (query, list)");
constexpr int D_LD = KNN_TILE + 4;  // distance-tile row stride: the fold's warp reads 32 distinct banks
constexpr unsigned NO_INDEX = 0xFFFFFFFFu;

// ---------------------------------------------------------------------------------------------------------
// Register-resident top-k
// ---------------------------------------------------------------------------------------------------------

// Orders (sq, index) pairs. ASCENDING_INDEX = candidates arrive in ascending index order (the partial
// kernels), so a tie never displaces what is kept and comparing distances alone is the full rule.
template <bool ASCENDING_INDEX>
__device__ __forceinline__ bool before(float da, unsigned ia, float db, unsigned ib) {
    if (ASCENDING_INDEX) {
        return da < db;
    }
    return da < db || (da == db && ia < ib);
}

// The best k (runtime, 1..=N) candidates, sorted ascending in d[0..k). Every index into d/i is a compile-time
// constant after unrolling, with runtime k only in predicates, so the arrays stay in registers.
template <int N, bool ASCENDING_INDEX>
struct TopK {
    float d[N];
    unsigned i[N];
    float worst_d;  // d[k-1], cached: the gate every candidate is tested against
    unsigned worst_i;

    __device__ __forceinline__ void init() {
#pragma unroll
        for (int j = 0; j < N; ++j) {
            d[j] = INFINITY;
            i[j] = NO_INDEX;
        }
        worst_d = INFINITY;
        worst_i = NO_INDEX;
    }

    // NaN fails every comparison, so it is never kept; neither is +inf (the empty slots' value).
    __device__ __forceinline__ void push(float sq, unsigned idx, int k) {
        if (!before<ASCENDING_INDEX>(sq, idx, worst_d, worst_i)) {
            return;
        }
        // Top-down insertion: slot j takes slot j-1's entry if the newcomer goes in front of it, else the
        // newcomer if it goes in front of slot j's old entry. Slot j-1 is still unmodified when read.
        // Selects rather than branches: with branches ptxas spilled the merge's list at 56 registers and
        // gave the k16 partial kernels 180-200 registers (one block per SM); with selects, 46 and <= 128.
#pragma unroll
        for (int j = N - 1; j >= 1; --j) {
            if (j < k) {
                const bool shift = before<ASCENDING_INDEX>(sq, idx, d[j - 1], i[j - 1]);
                const bool place = before<ASCENDING_INDEX>(sq, idx, d[j], i[j]);
                d[j] = shift ? d[j - 1] : place ? sq : d[j];
                i[j] = shift ? i[j - 1] : place ? idx : i[j];
            }
        }
        if (before<ASCENDING_INDEX>(sq, idx, d[0], i[0])) {
            d[0] = sq;
            i[0] = idx;
        }
        worst_d = d[0];
        worst_i = i[0];
#pragma unroll
        for (int j = 1; j < N; ++j) {
            if (j < k) {
                worst_d = d[j];
                worst_i = i[j];
            }
        }
    }

    // Drops the best entry: the rest move up and the last slot empties (slots past k are empty already).
    __device__ __forceinline__ void pop() {
#pragma unroll
        for (int j = 0; j + 1 < N; ++j) {
            d[j] = d[j + 1];
            i[j] = i[j + 1];
        }
        d[N - 1] = INFINITY;
        i[N - 1] = NO_INDEX;
        worst_d = INFINITY;
        worst_i = NO_INDEX;
    }
};

// The best k of a query's KNN_LISTS lists, each sorted by (sq, index), entry j of list l at
// sd[j * BLOCK + l], written in order to out_d/out_i: the smallest of the 4 heads, k times. The lists hold
// distinct indices, so (sq, index) orders them totally; a list is never read past its k entries, because
// taking all k of one list is already the whole output. Unrolled to N steps: for N = 1 the heads fold away.
template <int N>
__device__ __forceinline__ void merge_lists(const float* sd, const unsigned* si, int k, float* __restrict__ out_d,
                                            unsigned* __restrict__ out_i) {
    int head[KNN_LISTS] = {};
#pragma unroll
    for (int j = 0; j < N; ++j) {
        if (j >= k) {
            break;
        }
        float best_d = sd[head[0] * BLOCK];
        unsigned best_i = si[head[0] * BLOCK];
        int best_l = 0;
#pragma unroll
        for (int l = 1; l < KNN_LISTS; ++l) {
            const float dl = sd[head[l] * BLOCK + l];
            const unsigned il = si[head[l] * BLOCK + l];
            if (before<false>(dl, il, best_d, best_i)) {
                best_d = dl;
                best_i = il;
                best_l = l;
            }
        }
        out_d[j] = best_d;
        out_i[j] = best_i;
#pragma unroll
        for (int l = 0; l < KNN_LISTS; ++l) {
            head[l] += l == best_l ? 1 : 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Multiply policies: element type, k-step, shared row stride, and how a 64 x 64 tile of dots is accumulated
// and parked in the distance tile. Operand tiles are [64 rows][LD] in shared memory, row = query (A) or
// bank row (B), k contiguous: exactly the global layout, so staging is a straight 16-byte copy.
// ---------------------------------------------------------------------------------------------------------

// Exact f32: each thread owns a 4x4 micro-tile, rows ty + 16*a and columns tx + 16*b. The stride-16
// interleave (rather than 4 adjacent rows) puts the 8 rows a quarter-warp reads at once in 8 distinct bank
// quads with LD = 36, so the 128-bit shared loads are conflict-free. Each dot is one fmaf chain in k order.
struct PolicyF32 {
    static_assert(BLOCK == 16 * 16 && KNN_TILE == 4 * 16, "a 16 x 16 grid of threads, 4 x 4 outputs each");
    using T = float;
    static constexpr int KS = 32;
    static constexpr int LD = KS + 4;

    struct Acc {
        float v[4][4];
    };

    __device__ __forceinline__ static void zero(Acc& acc) {
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                acc.v[a][b] = 0.0f;
            }
        }
    }

    __device__ __forceinline__ static void step(Acc& acc, const T* sa, const T* sb, int tid) {
        const int tx = tid & 15;
        const int ty = tid >> 4;
#pragma unroll
        for (int kk = 0; kk < KS; kk += 4) {
            float4 av[4];
            float4 bv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                av[a] = *reinterpret_cast<const float4*>(sa + (ty + 16 * a) * LD + kk);
            }
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                bv[b] = *reinterpret_cast<const float4*>(sb + (tx + 16 * b) * LD + kk);
            }
#pragma unroll
            for (int a = 0; a < 4; ++a) {
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    float s = acc.v[a][b];
                    s = fmaf(av[a].x, bv[b].x, s);
                    s = fmaf(av[a].y, bv[b].y, s);
                    s = fmaf(av[a].z, bv[b].z, s);
                    s = fmaf(av[a].w, bv[b].w, s);
                    acc.v[a][b] = s;
                }
            }
        }
    }

    __device__ __forceinline__ static void store(const Acc& acc, float* sd, int tid) {
        const int tx = tid & 15;
        const int ty = tid >> 4;
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                sd[(ty + 16 * a) * D_LD + tx + 16 * b] = acc.v[a][b];
            }
        }
    }
};

// Tensor cores through wmma: 8 warps, warp w owns output rows 16*(w/2).. and the two 16-column blocks
// 32*(w%2)... B(k, n) = bank row n, element k = sb[n*LD + k], which is B stored column-major.
// FragElem is the fragment's precision tag (precision::tf32 or __half). TF32 rounds each f32 operand to
// nearest tf32 as the fragment is filled; left alone the tensor cores would truncate the low 13 bits.
// (nvcc 13.0 lowers the tf32 fragment loads and stores to generic ld/st, not ld.shared as for f16: correct,
// a few cycles slower; the wmma API has no way to say "shared".)
template <class Elem, class FragElem, int WK, int KSTEP, bool TF32>
struct PolicyWmma {
    static_assert(BLOCK == 8 * 32 && KNN_TILE == 4 * 16 && KNN_TILE == 2 * 32, "8 warps, two 16 x 16 blocks each");
    using T = Elem;
    static constexpr int KS = KSTEP;
    static constexpr int LD = KS + 16 / static_cast<int>(sizeof(T));  // pad one 16-byte group per row

    using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, WK, FragElem, nvcuda::wmma::row_major>;
    using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, WK, FragElem, nvcuda::wmma::col_major>;
    using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, WK, float>;

    struct Acc {
        FragC c[2];
    };

    template <class Frag>
    __device__ __forceinline__ static void round_operand(Frag& f) {
        if (TF32) {
#pragma unroll
            for (int e = 0; e < f.num_elements; ++e) {
                f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
            }
        }
    }

    __device__ __forceinline__ static void zero(Acc& acc) {
        nvcuda::wmma::fill_fragment(acc.c[0], 0.0f);
        nvcuda::wmma::fill_fragment(acc.c[1], 0.0f);
    }

    __device__ __forceinline__ static void step(Acc& acc, const T* sa, const T* sb, int tid) {
        const int warp = tid >> 5;
        const int row0 = 16 * (warp >> 1);
        const int col0 = 32 * (warp & 1);
#pragma unroll
        for (int kk = 0; kk < KS; kk += WK) {
            FragA fa;
            nvcuda::wmma::load_matrix_sync(fa, sa + row0 * LD + kk, LD);
            round_operand(fa);
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                FragB fb;
                nvcuda::wmma::load_matrix_sync(fb, sb + (col0 + 16 * c) * LD + kk, LD);
                round_operand(fb);
                nvcuda::wmma::mma_sync(acc.c[c], fa, fb, acc.c[c]);
            }
        }
    }

    __device__ __forceinline__ static void store(Acc& acc, float* sd, int tid) {
        const int warp = tid >> 5;
        const int row0 = 16 * (warp >> 1);
        const int col0 = 32 * (warp & 1);
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            nvcuda::wmma::store_matrix_sync(sd + row0 * D_LD + col0 + 16 * c, acc.c[c], D_LD,
                                            nvcuda::wmma::mem_row_major);
        }
    }
};

using PolicyTF32 = PolicyWmma<float, nvcuda::wmma::precision::tf32, 8, 32, true>;
using PolicyF16 = PolicyWmma<__half, __half, 16, 64, false>;

// ---------------------------------------------------------------------------------------------------------
// Staging: a 64-row x KS-element operand tile is 512 groups of 16 bytes, two per thread; 8 consecutive
// threads cover one row's 128 contiguous bytes, so each warp's loads are 4 full lines.
// ---------------------------------------------------------------------------------------------------------

template <class T>
struct Raw;  // the element's bit pattern type, so staging never does float/half arithmetic

template <>
struct Raw<float> {
    using U = unsigned;
};

template <>
struct Raw<__half> {
    using U = unsigned short;
};

__device__ __forceinline__ uint4 pack(const unsigned (&e)[4]) {
    return make_uint4(e[0], e[1], e[2], e[3]);
}

__device__ __forceinline__ uint4 pack(const unsigned short (&e)[8]) {
    return make_uint4(e[0] | (unsigned(e[1]) << 16), e[2] | (unsigned(e[3]) << 16), e[4] | (unsigned(e[5]) << 16),
                      e[6] | (unsigned(e[7]) << 16));
}

template <class T, int KS>
struct Stager {
    static constexpr int G = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte group
    static constexpr int GROUPS_PER_ROW = KS / G;
    static constexpr int PER_THREAD = KNN_TILE * GROUPS_PER_ROW / BLOCK;
    static_assert(KS % G == 0 && (KNN_TILE * GROUPS_PER_ROW) % BLOCK == 0, "tile must split evenly into groups");

    using U = typename Raw<T>::U;

    // rows [row0, row0 + nrows) of src, elements [k0, k0 + KS) of each; zero outside the rows and past d.
    // vec: d % G == 0 and src is 16-byte aligned, so a group inside the row is one aligned 16-byte load.
    __device__ __forceinline__ static void load(uint4 (&st)[PER_THREAD], const T* src, int row0, int nrows, int k0,
                                                int d, bool vec, int tid) {
        const U* raw = reinterpret_cast<const U*>(src);
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            const int g = tid + BLOCK * p;
            const int row = g / GROUPS_PER_ROW;
            const int col = k0 + (g % GROUPS_PER_ROW) * G;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (row < nrows && col < d) {
                const U* ptr = raw + (static_cast<size_t>(row0 + row) * static_cast<size_t>(d) + col);
                if (vec) {
                    v = __ldg(reinterpret_cast<const uint4*>(ptr));
                } else {
                    U e[G];
#pragma unroll
                    for (int t = 0; t < G; ++t) {
                        e[t] = col + t < d ? ptr[t] : U(0);
                    }
                    v = pack(e);
                }
            }
            st[p] = v;
        }
    }

    __device__ __forceinline__ static void store(const uint4 (&st)[PER_THREAD], T* dst, int ld, int tid) {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            const int g = tid + BLOCK * p;
            const int row = g / GROUPS_PER_ROW;
            const int col = (g % GROUPS_PER_ROW) * G;
            *reinterpret_cast<uint4*>(dst + row * ld + col) = st[p];
        }
    }
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<size_t>(p) & 15) == 0;
}

// ---------------------------------------------------------------------------------------------------------
// The partial top-k body shared by all six kernels.
// ---------------------------------------------------------------------------------------------------------

template <class P, int N>
__device__ __forceinline__ void knn_partial(const typename P::T* __restrict__ q, const float* __restrict__ q_norms,
                                            int nq, const typename P::T* __restrict__ bank,
                                            const float* __restrict__ bank_norms, int m, int d, int k, int chunk,
                                            float* __restrict__ cand_d, unsigned* __restrict__ cand_i) {
    using T = typename P::T;
    using St = Stager<T, P::KS>;
    constexpr int OPERAND_BYTES = KNN_TILE * P::LD * static_cast<int>(sizeof(T));
    constexpr int PIPE_BYTES = 4 * OPERAND_BYTES;  // A and B, two buffers each
    constexpr int DIST_BYTES = KNN_TILE * D_LD * static_cast<int>(sizeof(float));
    constexpr int SMEM_BYTES = PIPE_BYTES > DIST_BYTES ? PIPE_BYTES : DIST_BYTES;
    static_assert(OPERAND_BYTES % 128 == 0, "wmma needs 32-byte aligned tiles; keep buffers line-aligned");
    static_assert(SMEM_BYTES + KNN_TILE * sizeof(float) <= 48 * 1024, "static shared memory is capped at 48 KB");

    // The distance tile aliases the operand buffers: it is written only after the last k-step's barrier and
    // read before the barrier that precedes the next tile's first staging store.
    __shared__ __align__(128) unsigned char smem[SMEM_BYTES];
    __shared__ float s_bn[KNN_TILE];
    // Buffer b of A at 2b * OPERAND_BYTES, of B right after it. Computed, not an array of pointers: a
    // runtime index into a local array would put it in local memory.
    auto s_a = [&](int b) { return reinterpret_cast<T*>(smem + 2 * b * OPERAND_BYTES); };
    auto s_b = [&](int b) { return reinterpret_cast<T*>(smem + (2 * b + 1) * OPERAND_BYTES); };
    float* const s_d = reinterpret_cast<float*>(smem);

    const int tid = threadIdx.x;
    const int q0 = blockIdx.x * KNN_TILE;
    const int nqv = min(KNN_TILE, nq - q0);
    const long long begin_ll = static_cast<long long>(blockIdx.y) * chunk;
    const int begin = static_cast<int>(min(begin_ll, static_cast<long long>(m)));
    const int end = static_cast<int>(min(begin_ll + chunk, static_cast<long long>(m)));
    const int nsteps = (d + P::KS - 1) / P::KS;
    const bool vec = d % St::G == 0 && aligned16(q) && aligned16(bank);

    // This thread's list: query r of the block, bank columns l, l+4, ..., l+60 of every tile. With D_LD = 68
    // a warp (8 queries x 4 lists) reads 32 distinct banks of the distance tile at each step.
    const int r = tid >> 2;  // tid / KNN_LISTS, KNN_LISTS being 4
    const int l = tid & 3;
    const float qn = r < nqv ? q_norms[q0 + r] : 0.0f;
    TopK<N, true> top;
    top.init();

    uint4 st_a[St::PER_THREAD];
    uint4 st_b[St::PER_THREAD];
    if (begin < end) {
        St::load(st_a, q, q0, nqv, 0, d, vec, tid);
        St::load(st_b, bank, begin, min(KNN_TILE, end - begin), 0, d, vec, tid);
    }
    for (int b0 = begin; b0 < end; b0 += KNN_TILE) {
        const int nb = min(KNN_TILE, end - b0);
        if (tid < KNN_TILE) {
            s_bn[tid] = tid < nb ? bank_norms[b0 + tid] : 0.0f;
        }
        typename P::Acc acc;
        P::zero(acc);
        St::store(st_a, s_a(0), P::LD, tid);
        St::store(st_b, s_b(0), P::LD, tid);
        __syncthreads();
        for (int s = 0; s < nsteps; ++s) {
            const bool more = s + 1 < nsteps;
            if (more) {
                St::load(st_a, q, q0, nqv, (s + 1) * P::KS, d, vec, tid);
                St::load(st_b, bank, b0, nb, (s + 1) * P::KS, d, vec, tid);
            }
            P::step(acc, s_a(s & 1), s_b(s & 1), tid);
            if (more) {
                // The other buffer was last read in step s-1, which ended with a barrier.
                St::store(st_a, s_a((s + 1) & 1), P::LD, tid);
                St::store(st_b, s_b((s + 1) & 1), P::LD, tid);
            }
            __syncthreads();
        }
        P::store(acc, s_d, tid);
        if (b0 + KNN_TILE < end) {
            // The next tile's first k-step is in flight while this tile is folded.
            St::load(st_a, q, q0, nqv, 0, d, vec, tid);
            St::load(st_b, bank, b0 + KNN_TILE, min(KNN_TILE, end - b0 - KNN_TILE), 0, d, vec, tid);
        }
        __syncthreads();
        const float* row = s_d + r * D_LD;
#pragma unroll
        for (int j = 0; j < KNN_TILE / KNN_LISTS; ++j) {
            const int c = KNN_LISTS * j + l;
            if (c < nb) {
                const float raw = (qn + -2.0f * row[c]) + s_bn[c];
                const float sq = raw < 0.0f ? 0.0f : raw;  // not fmaxf: a NaN must stay NaN and never rank
                top.push(sq, static_cast<unsigned>(b0 + c), k);
            }
        }
        __syncthreads();
    }

    // The 4 lists of each query, merged into one: entry j of thread tid's list at [j][tid], so a warp's
    // stores fill 32 banks. The operand buffers are idle: the tile loop ended with a barrier, or never ran.
    float* const s_ld = reinterpret_cast<float*>(smem);
    unsigned* const s_li = reinterpret_cast<unsigned*>(smem + N * BLOCK * sizeof(float));
    static_assert(N * BLOCK * (sizeof(float) + sizeof(unsigned)) <= SMEM_BYTES, "the lists fit the tile buffers");
#pragma unroll
    for (int j = 0; j < N; ++j) {
        if (j < k) {
            s_ld[j * BLOCK + tid] = top.d[j];
            s_li[j * BLOCK + tid] = top.i[j];
        }
    }
    __syncthreads();
    if (l == 0 && r < nqv) {
        const size_t base = (static_cast<size_t>(q0 + r) * gridDim.y + blockIdx.y) * k;
        merge_lists<N>(s_ld + tid, s_li + tid, k, cand_d + base, cand_i + base);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------

// The norms must be of the very operands the products see: |q|^2 - 2 q.b + |b|^2 cancels to 0 for q == b
// only when all three terms come from the same values. TF32 and f16 products use rounded rows (the tf32
// x tf32 and f16 x f16 products are exact in f32), so their norms are taken of the rounded rows too; with
// norms of the unrounded rows a row's distance to itself came out near 0.1-0.6 instead of 0.
struct AsF32 {
    __device__ __forceinline__ static float seen(float v) { return v; }
};
struct AsTF32 {
    __device__ __forceinline__ static float seen(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
struct AsF16 {
    __device__ __forceinline__ static float seen(float v) { return __half2float(__float2half_rn(v)); }
};

template <class Rounding>
__device__ __forceinline__ void squared_norms(const float* __restrict__ rows, int n, int d, float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) {
        return;  // the whole warp leaves together, so the shuffles below see all 32 lanes
    }
    const float* x = rows + static_cast<size_t>(row) * static_cast<size_t>(d);
    double s = 0.0;
    for (int j = lane; j < d; j += 32) {
        const double v = Rounding::seen(x[j]);
        s += v * v;  // a float squared is exact in double: only the additions round
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
    }
    if (lane == 0) {
        out[row] = static_cast<float>(s);
    }
}

#define SQUARED_NORMS(NAME, ROUNDING)                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK)                                                         \
        NAME(const float* __restrict__ rows, int n, int d, float* __restrict__ out) {                          \
        squared_norms<ROUNDING>(rows, n, d, out);                                                               \
    }

SQUARED_NORMS(squared_norms_f32, AsF32)
SQUARED_NORMS(squared_norms_tf32, AsTF32)
SQUARED_NORMS(squared_norms_f16, AsF16)

extern "C" __global__ void __launch_bounds__(BLOCK) to_f16(const float* __restrict__ src, __half* __restrict__ dst,
                                                             long long n) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        dst[i] = __float2half_rn(src[i]);
    }
}

#define KNN_PARTIAL(NAME, POLICY, N)                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK)                                                         \
        NAME(const POLICY::T* __restrict__ q, const float* __restrict__ q_norms, int nq,                        \
             const POLICY::T* __restrict__ bank, const float* __restrict__ bank_norms, int m, int d, int k,     \
             int chunk, float* __restrict__ cand_d, unsigned* __restrict__ cand_i) {                            \
        knn_partial<POLICY, N>(q, q_norms, nq, bank, bank_norms, m, d, k, chunk, cand_d, cand_i);               \
    }

static_assert(KNN_MAX_K == 16, "the longest lists are the _k16 kernels' (the host names them)");
KNN_PARTIAL(knn_partial_f32_k1, PolicyF32, 1)
KNN_PARTIAL(knn_partial_f32_k16, PolicyF32, KNN_MAX_K)
KNN_PARTIAL(knn_partial_tf32_k1, PolicyTF32, 1)
KNN_PARTIAL(knn_partial_tf32_k16, PolicyTF32, KNN_MAX_K)
KNN_PARTIAL(knn_partial_f16_k1, PolicyF16, 1)
KNN_PARTIAL(knn_partial_f16_k16, PolicyF16, KNN_MAX_K)

#undef KNN_PARTIAL

// Candidates come from different splits in no particular index order, so ties are broken on the index
// explicitly here. One warp per query (see "Why this design").
static_assert(KNN_MERGE_BLOCK % 32 == 0, "the merge block is whole warps, one query each");
extern "C" __global__ void __launch_bounds__(KNN_MERGE_BLOCK) knn_merge(const float* __restrict__ cand_d,
                                                                          const unsigned* __restrict__ cand_i, int nq,
                                                                          int per_query, int k,
                                                                          float* __restrict__ out_d,
                                                                          unsigned* __restrict__ out_i) {
    constexpr unsigned FULL = 0xFFFFFFFFu;
    const int lane = threadIdx.x & 31;
    const int qi = blockIdx.x * (KNN_MERGE_BLOCK / 32) + (threadIdx.x >> 5);
    if (qi >= nq) {
        return;  // the whole warp leaves together, so the shuffles below see all 32 lanes
    }
    const float* cd = cand_d + static_cast<size_t>(qi) * static_cast<size_t>(per_query);
    const unsigned* ci = cand_i + static_cast<size_t>(qi) * static_cast<size_t>(per_query);
    TopK<KNN_MAX_K, false> top;
    top.init();
    // Lane t takes candidates t, t + 32, ...: each load instruction of the warp reads 128 contiguous bytes,
    // and groups of 4 put several loads in flight rather than one load's latency per candidate.
    constexpr int GROUP = 4;
    int c = lane;
    for (; c + 32 * (GROUP - 1) < per_query; c += 32 * GROUP) {
        float sq[GROUP];
        unsigned idx[GROUP];
#pragma unroll
        for (int u = 0; u < GROUP; ++u) {
            sq[u] = cd[c + 32 * u];
            idx[u] = ci[c + 32 * u];
        }
#pragma unroll
        for (int u = 0; u < GROUP; ++u) {
            if (sq[u] < INFINITY && idx[u] != NO_INDEX) {  // false for NaN too
                top.push(sq[u], idx[u], k);
            }
        }
    }
    for (; c < per_query; c += 32) {
        if (cd[c] < INFINITY && ci[c] != NO_INDEX) {
            top.push(cd[c], ci[c], k);
        }
    }
    // Round j: the smallest of the 32 list heads by (sq, index), which the xor butterfly gives every lane;
    // the lane holding it (indices are distinct) drops it, and lane j keeps it for the store below.
    float kept_d = INFINITY;
    unsigned kept_i = NO_INDEX;
    for (int j = 0; j < k; ++j) {
        float best_d = top.d[0];
        unsigned best_i = top.i[0];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float other_d = __shfl_xor_sync(FULL, best_d, off);
            const unsigned other_i = __shfl_xor_sync(FULL, best_i, off);
            if (before<false>(other_d, other_i, best_d, best_i)) {
                best_d = other_d;
                best_i = other_i;
            }
        }
        if (best_i == NO_INDEX) {
            break;  // every list is empty; the same on every lane, so the warp stays together
        }
        if (top.i[0] == best_i) {
            top.pop();
        }
        if (lane == j) {
            kept_d = best_d;
            kept_i = best_i;
        }
    }
    if (lane < k) {
        const size_t slot = static_cast<size_t>(qi) * static_cast<size_t>(k) + lane;
        const bool filled = kept_i != NO_INDEX;
        out_d[slot] = filled ? sqrtf(kept_d) : __int_as_float(0x7FC00000);  // the CPU's f32::NAN
        out_i[slot] = filled ? kept_i : 0u;
    }
}
