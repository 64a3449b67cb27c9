// Greedy k-center coreset selection, pruned exactly as the CPU's (src/backend/cpu/coreset.rs:
// l2_distance, finish, beats, Projection and greedy_coreset), with the same selection bit for bit in
// f32: a row is skipped only where a bound proves that the new centre cannot come closer to it, so
// every min_dist, and hence every argmax, is the textbook loop's.
//
// The textbook loop: d_i = dist(z_i, z_start); n_select times: c = argmax d (first on ties),
// record c, d_i = min(d_i, dist(z_i, z_c)). Pruning (the CPU's module doc has the proofs): every row
// remembers its nearest centre a (its cluster); c can only lower d_i if D(a, c) < factor * d_i
// (triangle inequality; factor = 2 (1 + 4 eps) carries the rounding margins), so a cluster whose
// radius r_a has D(a, c) >= factor * r_a is skipped whole, and a row whose 16-dim projected distance
// to c already proves dist >= d_i is skipped alone. Only the rows left get the full-width distance.
//
// Device state for one selection (device.rs `coreset` allocates it, the host never reads it back):
//   min_dist [n] f32      d_i
//   owner    [n] u32      the cluster of row i: 0 for the start row, s + 1 for selected[s]
//   far      [n_select + 1] u64   per cluster, the largest key(d_i, i) of its members: its radius in
//                         the upper word, its farthest member in the lower one (see `key`)
//   proj     [n * 16] f64 U^T (z_i - mean), U and mean estimated by the host (coreset.rs `Subspace`)
//   bound    [3] f64      tol, sigma and the slack per unit of radius (coreset.rs `Projection`)
//   radius_sq [1] u64     the bits of the largest ||z_i - mean||^2 (f64), from coreset_project
//   reach    [n_select] f32, candidates [n] u32, count [1] u32, best [1] u64: per-step scratch
//
// Kernels, in launch order (block BLOCK; "rows" grid: coreset_config, a half-warp per item;
// "scan" grid: coreset_scan_config, a thread per item; all grid-stride):
//   coreset_project_{f32,f16}(rows, n, d, mean, basis, proj, radius_sq)       rows grid over n, once
//   coreset_init_{f32,f16}(rows, n, d, start, min_dist, owner, far)            rows grid over n, once
//   then for every step s = 0 .. n_select - 1 (K = s + 1 clusters exist), back to back:
//   coreset_pick(far, K, best, count)                  scan grid over K: best = max far; count = 0
//   coreset_reach_{f32,f16}(rows, d, start, s, selected, best, proj, bound, radius_sq, factor, far,
//                           reach)                     rows grid over K: c from best, selected[s] = c;
//                      reach[a] = D(a, c) if c may take members of a, else +inf; far[a] = 0 if in reach
//   coreset_filter(n, s, selected, owner, min_dist, reach, proj, bound, radius_sq, factor, far, best,
//                  candidates, count)                  scan grid over n: rows of clusters in reach that
//                      no bound rules out are appended to candidates; the others add their key to far
//                      (rebuilding it); best = 0 for the next pick
//   coreset_distance_{f32,f16}(rows, d, s, selected, candidates, count, min_dist, owner, far)
//                                                      rows grid over n (the count is only known on the
//                      device): candidates closer to c move to cluster s + 1; each adds its key to far
// best, far and count start at 0 (alloc_zeros). The launch boundaries are the grid-wide barriers
// between the phases, so the host never waits inside the loop.
//
// Exactness (f32 rows): the distance is bit-identical to l2_distance. Element j of a row is
// accumulated into lane j % 16 in increasing j, each term (p - q) * (p - q) rounded separately
// (no FMA), the 16 lanes are added pairwise (lane[i] += lane[i + 8] for i < 8, then 4, 2, 1)
// and the square root is IEEE. A half-warp handles one row: thread l of it *is* lane l, reads
// elements l, l + 16, ... (16 consecutive elements per half-warp: coalesced), and the pairwise
// reduction is __shfl_down_sync by 8, 4, 2, 1 within the 16-thread segment, so lane i < w adds
// lane i + w exactly as `finish` does. The bounds need not be the CPU's: any sound bound leaves
// the same d values. The projections are f64 sums in the CPU's order, but nvcc may fuse their
// products into FMAs; the slack covers that: its error bound holds for any rounding of the dim terms. f16
// rows are widened to f32 element by element and go through the same arithmetic (projections
// included), so the f16 selection is the textbook loop's on the f16-rounded rows.
//
// Non-finite rows (unspecified on the CPU too): a NaN distance never moves a row (NaN < d is
// false) and a NaN d has key 0, below every real key, so it never wins the argmax; if no row has a
// real key, row 0 is selected.
//
// Bandwidth per step: the pick reads 8 bytes per cluster, the reach 8 per cluster plus 256 bytes
// of projections and one row for each cluster that d_c leaves in reach, the filter 4 bytes (owner)
// per row plus 4 (reach, cached) and, for rows of clusters in reach, 4 (min_dist) and 128
// (projection); the full rows only for the candidates. See docs/PERFORMANCE.md, issue 11.

#include <cuda_fp16.h>

#include "common.cuh"
#include "geometry.cuh"

namespace {

constexpr int LANES = 16;                 // of the distance sum: one thread per lane
constexpr int CENTRE_CAP = 2048;          // the widest centre row staged in shared memory
static_assert(BLOCK / LANES == CORESET_ROWS_PER_BLOCK, "a half-warp per row");

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// (p - q) * (p - q), both operations rounded (the CPU does not fuse).
__device__ __forceinline__ float sq_diff(float p, float q)
{
    const float t = __fsub_rn(p, q);
    return __fmul_rn(t, t);
}

// Where the centre's elements come from: shared memory (widened to f32 once per block) when the
// row fits, else straight from global memory, where it stays hot in L1/L2.
struct SharedCentre {
    const float* s;
    __device__ __forceinline__ float operator()(int j) const { return s[j]; }
};

template <typename T>
struct GlobalCentre {
    const T* p;
    __device__ __forceinline__ float operator()(int j) const { return to_float(__ldg(p + j)); }
};

// Adds chunks k0 .. k0 + N - 1 of the thread's lane (elements lane + 16 k) to acc: all N loads are
// issued before the first add, so N loads per thread are in flight at once. Unclamped, every
// thread must own all N chunks; then the addresses are one register plus constant offsets.
// Clamped (the last chunks of a row), the index is clamped to the row's last element and a
// chunk k >= count is loaded but not added. The loads stay unconditional on purpose: a
// predicated load holds one of the 7 predicate registers until it lands, which limited ptxas to
// about 5 loads in flight; the clamped extra loads hit sectors the batch fetches anyway.
template <int N, bool CLAMP, typename T, typename Centre>
__device__ __forceinline__ float add_chunks(float acc, const T* __restrict__ row, int d, int lane, int count, int k0,
                                            const Centre& centre)
{
    T p[N];
    float q[N];
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const int j = CLAMP ? min(lane + (k0 + u) * LANES, d - 1) : lane + (k0 + u) * LANES;
        p[u] = __ldg(row + j);
        q[u] = centre(j);
    }
#pragma unroll
    for (int u = 0; u < N; ++u) {
        if (!CLAMP || k0 + u < count) {
            acc = __fadd_rn(acc, sq_diff(to_float(p[u]), q[u]));
        }
    }
    return acc;
}

// l2_distance(row, centre), computed by the 16 threads of a half-warp; `lane` is the thread's
// index in it. `row` must point at a real row even for a row past the end (its result is then
// ignored). The result is valid in lane 0. All 32 threads of the warp must call this together
// (shuffles); every branch below depends on d only, so they do.
template <typename T, typename Centre>
__device__ __forceinline__ float half_warp_distance(const T* __restrict__ row, int d, int lane, const Centre& centre)
{
    const int full = d / LANES;                                         // chunks every lane owns
    const int chunks = (d + LANES - 1) / LANES;                         // chunks some lane owns
    const int count = lane < d ? (d - lane + LANES - 1) / LANES : 0;    // chunks this lane owns
    // Chunks in increasing order, as each lane's sum must be: batches of 16 while every lane owns
    // them, then at most one of 8, then one clamped batch for the rest (<= 8 chunks, at most
    // one partial), sized so that few loads are wasted and the clamped addresses fit in registers.
    float acc = 0.0f;
    int k0 = 0;
    for (; k0 + 16 <= full; k0 += 16) {
        acc = add_chunks<16, false>(acc, row, d, lane, count, k0, centre);
    }
    if (chunks - k0 > 8) {  // then full - k0 >= 8, as chunks <= full + 1
        acc = add_chunks<8, false>(acc, row, d, lane, count, k0, centre);
        k0 += 8;
    }
    if (chunks - k0 > 4) {
        acc = add_chunks<8, true>(acc, row, d, lane, count, k0, centre);
    } else if (chunks - k0 > 0) {
        acc = add_chunks<4, true>(acc, row, d, lane, count, k0, centre);
    }
    // finish(): lane i += lane i + w for w = 8, 4, 2, 1. With width 16, thread i < w reads thread
    // i + w of its own half-warp; threads >= w get garbage, but each step only reads threads
    // that were < w in the step before.
#pragma unroll
    for (int w = LANES / 2; w >= 1; w /= 2) {
        acc = __fadd_rn(acc, __shfl_down_sync(0xffffffffu, acc, w, LANES));
    }
    return __fsqrt_rn(acc);
}


// key(d, i): the argmax order of `beats` as one integer, so that atomicMax reduces it. A distance is
// >= +0, and non-negative floats order as their bits; ~i puts the lower index first on ties. NaN
// gets 0, which no real key is below (i < 2^32 - 1 as n <= u32::MAX).
__device__ __forceinline__ unsigned long long key(float d, unsigned i)
{
    return isnan(d) ? 0ull : ((unsigned long long)__float_as_uint(d) << 32) | (0xffffffffu - i);
}

__device__ __forceinline__ float key_distance(unsigned long long k) { return __uint_as_float((unsigned)(k >> 32)); }

__device__ __forceinline__ unsigned key_row(unsigned long long k) { return k == 0 ? 0u : 0xffffffffu - (unsigned)k; }

// far[a] = max(far[a], k). Within a launch a cluster's far only grows (from 0 after coreset_reach
// cleared it, or from its value before the step), so a value read here is at most the current one:
// when it is already >= k, the atomic would change nothing and is skipped. That spares most of them,
// which matters where many rows share a cluster (the first steps; data the bounds cannot prune).
__device__ __forceinline__ void raise(unsigned long long* far, unsigned long long k)
{
    if (k > __ldcg(far)) {
        atomicMax(far, k);
    }
}

// The warp's largest u64 into lane 0. All 32 threads call it.
__device__ __forceinline__ unsigned long long warp_max(unsigned long long v)
{
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) {
        const unsigned long long o = __shfl_down_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    return v;
}

// Projection::proves_at_least: the projections a, b of two rows prove that their l2_distance is at
// least `threshold`. The same terms as the CPU's (f64 throughout); only the order of rounding may
// differ, which the (1 + 1e-12) and the doubled slack absorb.
struct Bound {
    double tol;
    double sigma;
    double slack;

    __device__ __forceinline__ Bound(const double* __restrict__ bound, const unsigned long long* __restrict__ radius_sq)
        : tol(bound[0]), sigma(bound[1]), slack(bound[2] * sqrt(__longlong_as_double((long long)*radius_sq)))
    {
    }

    __device__ __forceinline__ bool proves_at_least(const double* __restrict__ a, const double* __restrict__ b,
                                                    float threshold) const
    {
        double sq = 0.0;
#pragma unroll
        for (int j = 0; j < CORESET_PROJ; ++j) {
            const double t = a[j] - b[j];
            sq += t * t;
        }
        const double need = ((double)threshold * tol * sigma + slack) * (1.0 + 1e-12);
        return sq >= need * need;
    }
};

// Stages row c widened to f32 in shared memory when it fits, then runs f(centre) with the accessor
// for wherever it lives. All threads of the block call it.
template <typename T, typename F>
__device__ __forceinline__ void with_centre(const T* __restrict__ centre_row, int d, F f)
{
    __shared__ float centre_s[CENTRE_CAP];
    if (d <= CENTRE_CAP) {
        for (int j = threadIdx.x; j < d; j += BLOCK) {
            centre_s[j] = to_float(__ldg(centre_row + j));
        }
        __syncthreads();
        f(SharedCentre{centre_s});
    } else {
        f(GlobalCentre<T>{centre_row});
    }
}

template <typename T>
__device__ __forceinline__ void project(const T* __restrict__ rows, int n, int d, const double* __restrict__ mean,
                                        const double* __restrict__ basis, double* __restrict__ proj,
                                        unsigned long long* __restrict__ radius_sq)
{
    // Lane j of a half-warp computes coordinate j of its row, reading the row's elements in order
    // (the same address across the half-warp) and U's rows (16 consecutive doubles).
    const int lane = threadIdx.x % LANES;
    double widest = 0.0;
    for (long long r = (long long)blockIdx.x * CORESET_ROWS_PER_BLOCK + threadIdx.x / LANES; r < n;
         r += (long long)gridDim.x * CORESET_ROWS_PER_BLOCK) {
        const T* row = rows + (size_t)r * d;
        double y = 0.0, rsq = 0.0;
        for (int k = 0; k < d; ++k) {
            const double v = (double)to_float(__ldg(row + k)) - mean[k];
            y += basis[(size_t)k * CORESET_PROJ + lane] * v;
            rsq += v * v;
        }
        proj[(size_t)r * CORESET_PROJ + lane] = y;
        widest = rsq > widest ? rsq : widest;
    }
    // Non-negative doubles order as their bits.
    const unsigned long long m = warp_max((unsigned long long)__double_as_longlong(widest));
    if (threadIdx.x % 32 == 0) {
        atomicMax(radius_sq, m);
    }
}

template <typename T>
__device__ __forceinline__ void init(const T* __restrict__ rows, int n, int d, unsigned start,
                                     float* __restrict__ min_dist, unsigned* __restrict__ owner,
                                     unsigned long long* __restrict__ far)
{
    const int lane = threadIdx.x % LANES;
    unsigned long long best = 0;
    with_centre(rows + (size_t)start * d, d, [&](const auto& centre) {
        // The loop condition depends on the block only, so all threads stay in step for the shuffles.
        for (long long first = (long long)blockIdx.x * CORESET_ROWS_PER_BLOCK; first < n;
             first += (long long)gridDim.x * CORESET_ROWS_PER_BLOCK) {
            const long long r = first + threadIdx.x / LANES;
            const bool valid = r < n;
            const float dist = half_warp_distance(rows + (size_t)(valid ? r : 0) * d, d, lane, centre);
            if (valid && lane == 0) {
                min_dist[r] = dist;
                owner[r] = 0;
                const unsigned long long k = key(dist, (unsigned)r);
                best = k > best ? k : best;
            }
        }
    });
    const unsigned long long m = warp_max(best);
    if (threadIdx.x % 32 == 0) {
        atomicMax(far, m);
    }
}

template <typename T>
__device__ __forceinline__ void reach_of(const T* __restrict__ rows, int d, unsigned start, int step,
                                         unsigned* __restrict__ selected, const unsigned long long* __restrict__ best,
                                         const double* __restrict__ proj, const Bound& bound, float factor,
                                         unsigned long long* __restrict__ far, float* __restrict__ reach)
{
    const int clusters = step + 1;
    const unsigned long long best_key = *best;
    const unsigned c = key_row(best_key);
    // c's own d: the smallest distance from c to any centre (0 when no row has a real key).
    const float d_c = best_key == 0 ? 0.0f : key_distance(best_key);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        selected[step] = c;
    }
    const double* y_c = proj + (size_t)c * CORESET_PROJ;
    const int lane = threadIdx.x % LANES;
    with_centre(rows + (size_t)c * d, d, [&](const auto& centre) {
        for (int first = blockIdx.x * CORESET_ROWS_PER_BLOCK; first < clusters;
             first += gridDim.x * CORESET_ROWS_PER_BLOCK) {
            const int a = first + threadIdx.x / LANES;
            const bool valid = a < clusters;
            // Cluster::reach: c can only take a member i if D(a, c) < factor * d_i <= factor * radius,
            // and D(a, c) >= d_c; a bound that settles it spares the distance.
            const float radius = valid ? key_distance(far[a]) : 0.0f;
            const float limit = __fmul_rn(factor, radius);
            const unsigned z_a = a == 0 ? start : selected[valid ? a - 1 : 0];
            const bool open = valid && !(d_c >= limit) &&
                              !bound.proves_at_least(proj + (size_t)z_a * CORESET_PROJ, y_c, limit);
            // Both half-warps of the warp take the shuffles of the distance together: the one that
            // needs none computes one on row c, and ignores it.
            const bool other = __shfl_xor_sync(0xffffffffu, (int)open, LANES) != 0;
            float big_d = INFINITY;
            if (open || other) {
                big_d = half_warp_distance(rows + (size_t)(open ? z_a : c) * d, d, lane, centre);
            }
            if (valid && lane == 0) {
                const float r = open && big_d < limit ? big_d : INFINITY;
                reach[a] = r;
                if (r != INFINITY) {
                    far[a] = 0;  // rebuilt by coreset_filter and coreset_distance from every member
                }
            }
        }
    });
}

template <typename T>
__device__ __forceinline__ void distance(const T* __restrict__ rows, int d, int step,
                                         const unsigned* __restrict__ selected,
                                         const unsigned* __restrict__ candidates, const unsigned* __restrict__ count,
                                         float* __restrict__ min_dist, unsigned* __restrict__ owner,
                                         unsigned long long* __restrict__ far)
{
    const unsigned c = selected[step];
    const long long total = *count;
    const int lane = threadIdx.x % LANES;
    if ((long long)blockIdx.x * CORESET_ROWS_PER_BLOCK >= total) {
        return;  // the whole block has no candidate: skip staging the centre
    }
    with_centre(rows + (size_t)c * d, d, [&](const auto& centre) {
        for (long long first = (long long)blockIdx.x * CORESET_ROWS_PER_BLOCK; first < total;
             first += (long long)gridDim.x * CORESET_ROWS_PER_BLOCK) {
            const long long slot = first + threadIdx.x / LANES;
            const bool valid = slot < total;
            const unsigned i = valid ? candidates[slot] : c;
            const float dist = half_warp_distance(rows + (size_t)i * d, d, lane, centre);
            if (valid && lane == 0) {
                const float di = min_dist[i];
                if (dist < di) {  // c itself moves here too (0 < d_c): "set d_c = 0"
                    min_dist[i] = dist;
                    owner[i] = step + 1;
                    raise(far + step + 1, key(dist, i));
                } else {
                    raise(far + owner[i], key(di, i));
                }
            }
        }
    });
}

}  // namespace

// __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM), i.e. (256, 4): at most 64 registers a thread,
// so the host's 4 blocks per SM are all resident at once (one wave, no tail of late blocks).
#define CORESET_ROW_KERNELS(SUFFIX, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM)                                     \
        coreset_project_##SUFFIX(const T* __restrict__ rows, int n, int d, const double* __restrict__ mean,         \
                                 const double* __restrict__ basis, double* __restrict__ proj,                       \
                                 unsigned long long* __restrict__ radius_sq)                                        \
    {                                                                                                               \
        project(rows, n, d, mean, basis, proj, radius_sq);                                                          \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM)                                     \
        coreset_init_##SUFFIX(const T* __restrict__ rows, int n, int d, unsigned start, float* __restrict__ min_dist, \
                              unsigned* __restrict__ owner, unsigned long long* __restrict__ far)                   \
    {                                                                                                               \
        init(rows, n, d, start, min_dist, owner, far);                                                              \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM) coreset_reach_##SUFFIX(             \
        const T* __restrict__ rows, int d, unsigned start, int step, unsigned* __restrict__ selected,               \
        const unsigned long long* __restrict__ best, const double* __restrict__ proj,                               \
        const double* __restrict__ bound, const unsigned long long* __restrict__ radius_sq, float factor,           \
        unsigned long long* __restrict__ far, float* __restrict__ reach)                                            \
    {                                                                                                               \
        reach_of(rows, d, start, step, selected, best, proj, Bound(bound, radius_sq), factor, far, reach);          \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM) coreset_distance_##SUFFIX(          \
        const T* __restrict__ rows, int d, int step, const unsigned* __restrict__ selected,                         \
        const unsigned* __restrict__ candidates, const unsigned* __restrict__ count, float* __restrict__ min_dist,   \
        unsigned* __restrict__ owner, unsigned long long* __restrict__ far)                                         \
    {                                                                                                               \
        distance(rows, d, step, selected, candidates, count, min_dist, owner, far);                                 \
    }

CORESET_ROW_KERNELS(f32, float)
CORESET_ROW_KERNELS(f16, __half)

extern "C" __global__ void __launch_bounds__(BLOCK) coreset_pick(const unsigned long long* __restrict__ far,
                                                                 int clusters, unsigned long long* __restrict__ best,
                                                                 unsigned* __restrict__ count)
{
    unsigned long long m = 0;
    for (int a = blockIdx.x * BLOCK + threadIdx.x; a < clusters; a += gridDim.x * BLOCK) {
        m = far[a] > m ? far[a] : m;
    }
    m = warp_max(m);
    if (threadIdx.x % 32 == 0) {
        atomicMax(best, m);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        *count = 0;  // coreset_distance of the previous step has read it
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    coreset_filter(int n, int step, const unsigned* __restrict__ selected, const unsigned* __restrict__ owner,
                   const float* __restrict__ min_dist, const float* __restrict__ reach, const double* __restrict__ proj,
                   const double* __restrict__ bound, const unsigned long long* __restrict__ radius_sq, float factor,
                   unsigned long long* __restrict__ far, unsigned long long* __restrict__ best,
                   unsigned* __restrict__ candidates, unsigned* __restrict__ count)
{
    __shared__ unsigned block_count, block_base;
    const Bound b(bound, radius_sq);
    const unsigned c = selected[step];
    const double* y_c = proj + (size_t)c * CORESET_PROJ;
    // The loop condition depends on the block only: every thread reaches the barriers.
    for (long long first = (long long)blockIdx.x * BLOCK; first < n; first += (long long)gridDim.x * BLOCK) {
        const long long i = first + threadIdx.x;
        bool in_play = false;
        if (i < n) {
            const unsigned o = owner[i];
            const float r = reach[o];
            if (r != INFINITY) {
                // greedy_coreset's in_play: only a cluster in reach and a row the projection cannot rule out.
                const float di = min_dist[i];
                in_play = r < __fmul_rn(factor, di) && !b.proves_at_least(proj + i * CORESET_PROJ, y_c, di);
                if (!in_play) {
                    raise(far + o, key(di, (unsigned)i));
                }
            }
        }
        // One atomic on the global count per block: the block's candidates take consecutive slots.
        if (threadIdx.x == 0) {
            block_count = 0;
        }
        __syncthreads();
        const unsigned slot = in_play ? atomicAdd(&block_count, 1u) : 0u;
        __syncthreads();
        if (threadIdx.x == 0) {
            block_base = block_count == 0 ? 0u : atomicAdd(count, block_count);
        }
        __syncthreads();
        if (in_play) {
            candidates[block_base + slot] = (unsigned)i;
        }
        __syncthreads();  // block_count is reset for the next round only after every thread used it
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        *best = 0;  // coreset_reach has read it; the next step's pick starts from 0
    }
}
