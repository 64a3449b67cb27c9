// Greedy k-center coreset selection, one launch per selected row (CPU reference: l2_distance,
// finish, beats and greedy_coreset in src/backend/cpu/coreset.rs).
//
// The textbook loop:
//   min_dist[i] = +inf; centre = start
//   for s in 0..n_select:
//       min_dist[i] = min(min_dist[i], dist(row i, row centre)) for every i
//       centre = argmax_i min_dist[i] (ties -> lower index); selected[s] = centre
//
// coreset_step_f32(rows, n, d, start, step, min_dist, selected, block_d, block_i, counter)
// coreset_step_f16(same, rows as __half)
//   rows: [n, d] row-major; min_dist: [n] f32; selected: [n_select] u32;
//   block_d, block_i: [gridDim.x]; counter: one u32.
//   Launch: block BLOCK, grid G = min(ceil(n / CORESET_ROWS_PER_BLOCK), CORESET_BLOCKS_PER_SM * SM count)
//   (geometry.cuh, from src/backend/cuda/geometry.rs: 256, 16 and 4), no dynamic shared memory,
//   once for each step = 0..n_select-1, back to back on one stream. Before step 0 the host
//   fills min_dist with +inf (fill_f32) and zeroes *counter.
// fill_f32(p, n, v): p[0..n) = v. Launch: block BLOCK, grid min(ceil(n / BLOCK), 4096), grid-stride.
//
// Why one launch per step, and the "last block done" pattern: a step needs the previous step's
// argmax over all rows, i.e. a grid-wide barrier. The launch boundary provides it: the kernel
// reads its centre from selected[step - 1], written by the previous launch, so the host never
// waits for a result (no round trip per step) and no cooperative grid sync is needed. Within a
// step, each block publishes its best (min_dist, index); the block that finishes last (atomic
// ticket, as in the CUDA threadFenceReduction sample) reduces those G pairs, writes
// selected[step] and re-arms the counter for the next launch.
//
// Exactness (f32 rows): dist must be bit-identical to l2_distance. Element j of a row is
// accumulated into lane j % 16 in increasing j, each term (p - q) * (p - q) rounded separately
// (no FMA), the 16 lanes are added pairwise (lane[i] += lane[i + 8] for i < 8, then 4, 2, 1)
// and the square root is IEEE. A half-warp handles one row: thread l of it *is* lane l, reads
// elements l, l + 16, ... (16 consecutive elements per half-warp: coalesced), and the pairwise
// reduction is __shfl_down_sync by 8, 4, 2, 1 within the 16-thread segment, so lane i < w adds
// lane i + w exactly as `finish` does. min_dist and argmax then follow the CPU's textbook loop
// (the CPU's pruned search provably returns the same selection). f16 rows are widened to f32
// element by element and then go through the same arithmetic; their selection may differ from
// the f32 CPU one.
//
// NaN (only from non-finite rows, which the CPU leaves unspecified too): a NaN distance makes
// the row's min_dist NaN for good, and a NaN min_dist never wins the argmax. If no row has a
// non-NaN min_dist (e.g. the start row contains a NaN), row 0 is selected, as the CPU does when
// its maximum is NaN.
//
// Bandwidth: every step reads all n rows once (n * d * sizeof(T) bytes), which dominates
// everything else: min_dist is 4 bytes a row (written only where it shrinks), the centre row
// is staged once per block in shared memory, and the final reduction touches G pairs. Each
// thread issues a batch of independent row loads before it adds any of them, so that enough
// bytes are in flight to cover DRAM latency at the host's 4 blocks per SM.

#include <cuda_fp16.h>

#include "common.cuh"
#include "geometry.cuh"

namespace {

constexpr int LANES = 16;                 // of the distance sum: one thread per lane
constexpr int CENTRE_CAP = 2048;          // the widest centre row staged in shared memory
constexpr unsigned NO_ROW = 0xffffffffu;  // index of "no candidate": loses every tie
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

// Reduces (d, i) over the block by `beats`; the result is valid in thread 0. Called by all
// threads; it synchronises the block once, so two calls need a barrier between them.
// The warp's best (d, i) into lane 0 by the tie rule.
__device__ __forceinline__ void warp_argmax(float& d, unsigned& i)
{
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) {
        const float od = __shfl_down_sync(0xffffffffu, d, off);
        const unsigned oi = __shfl_down_sync(0xffffffffu, i, off);
        if (kern::beats(od, oi, d, i)) {
            d = od;
            i = oi;
        }
    }
}

__device__ __forceinline__ void block_argmax(float& d, unsigned& i)
{
    __shared__ float warp_d[BLOCK / 32];
    __shared__ unsigned warp_i[BLOCK / 32];
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    warp_argmax(d, i);
    if (lane == 0) {
        warp_d[warp] = d;
        warp_i[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        d = lane < BLOCK / 32 ? warp_d[lane] : -INFINITY;
        i = lane < BLOCK / 32 ? warp_i[lane] : NO_ROW;
        warp_argmax(d, i);
    }
}

// Updates min_dist for this block's rows against the centre and returns the block-local best
// candidate of each row's lane-0 thread in (best_d, best_i) (others keep "no candidate").
template <typename T, typename Centre>
__device__ __forceinline__ void sweep(const T* __restrict__ rows, int n, int d, const Centre& centre,
                                      float* __restrict__ min_dist, float& best_d, unsigned& best_i)
{
    const int lane = threadIdx.x % LANES;
    // The loop condition depends on the block only, so all threads stay in step for the shuffles.
    for (long long first = (long long)blockIdx.x * CORESET_ROWS_PER_BLOCK; first < n;
         first += (long long)gridDim.x * CORESET_ROWS_PER_BLOCK) {
        const long long r = first + threadIdx.x / LANES;
        const bool valid = r < n;
        float md = 0.0f;
        if (valid && lane == 0) {
            md = min_dist[r];  // issued before the row's loads, so its latency overlaps theirs
        }
        const float dist = half_warp_distance(rows + (size_t)(valid ? r : 0) * d, d, lane, centre);
        if (valid && lane == 0) {
            // A NaN distance is stored (the row drops out of the argmax for good); otherwise
            // min() as the CPU's, written back only when it shrinks.
            if (dist < md || isnan(dist)) {
                md = dist;
                min_dist[r] = md;
            }
            if (kern::beats(md, (unsigned)r, best_d, best_i)) {
                best_d = md;
                best_i = (unsigned)r;
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void coreset_step(const T* __restrict__ rows, int n, int d, unsigned start, int step,
                                             float* __restrict__ min_dist, unsigned* __restrict__ selected,
                                             float* __restrict__ block_d, unsigned* __restrict__ block_i,
                                             unsigned* __restrict__ counter)
{
    __shared__ float centre_s[CENTRE_CAP];
    __shared__ bool last;

    // Written by the previous launch on this stream, which completed before this one started,
    // so every block reads the same centre.
    const unsigned c = step == 0 ? start : selected[step - 1];
    const T* centre_row = rows + (size_t)c * d;

    float best_d = -INFINITY;
    unsigned best_i = NO_ROW;
    if (d <= CENTRE_CAP) {
        for (int j = threadIdx.x; j < d; j += BLOCK) {
            centre_s[j] = to_float(__ldg(centre_row + j));
        }
        __syncthreads();
        sweep(rows, n, d, SharedCentre{centre_s}, min_dist, best_d, best_i);
    } else {
        sweep(rows, n, d, GlobalCentre<T>{centre_row}, min_dist, best_d, best_i);
    }
    block_argmax(best_d, best_i);

    if (threadIdx.x == 0) {
        block_d[blockIdx.x] = best_d;
        block_i[blockIdx.x] = best_i;
        // Release: this block's pair is visible device-wide before its ticket is counted.
        __threadfence();
        const bool is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
        if (is_last) {
            __threadfence();  // acquire: the other blocks' pairs are read after their tickets
        }
        last = is_last;
    }
    __syncthreads();
    if (!last) {
        return;
    }

    // The last block: reduce the G block results. __ldcg reads them from L2, never from a
    // possibly stale L1 line.
    best_d = -INFINITY;
    best_i = NO_ROW;
    for (unsigned b = threadIdx.x; b < gridDim.x; b += BLOCK) {
        const float od = __ldcg(block_d + b);
        const unsigned oi = __ldcg(block_i + b);
        if (kern::beats(od, oi, best_d, best_i)) {
            best_d = od;
            best_i = oi;
        }
    }
    block_argmax(best_d, best_i);
    if (threadIdx.x == 0) {
        selected[step] = best_i == NO_ROW ? 0u : best_i;
        *counter = 0;  // every block has taken its ticket: re-arm for the next step
    }
}

}  // namespace

// __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM), i.e. (256, 4): at most 64 registers a thread,
// so the host's 4 blocks per SM are all resident at once (one wave, no tail of late blocks).
extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM)
    coreset_step_f32(const float* __restrict__ rows, int n, int d, unsigned start, int step,
                     float* __restrict__ min_dist, unsigned* __restrict__ selected, float* __restrict__ block_d,
                     unsigned* __restrict__ block_i, unsigned* __restrict__ counter)
{
    coreset_step(rows, n, d, start, step, min_dist, selected, block_d, block_i, counter);
}

extern "C" __global__ void __launch_bounds__(BLOCK, CORESET_BLOCKS_PER_SM)
    coreset_step_f16(const __half* __restrict__ rows, int n, int d, unsigned start, int step,
                     float* __restrict__ min_dist, unsigned* __restrict__ selected, float* __restrict__ block_d,
                     unsigned* __restrict__ block_i, unsigned* __restrict__ counter)
{
    coreset_step(rows, n, d, start, step, min_dist, selected, block_d, block_i, counter);
}

extern "C" __global__ void __launch_bounds__(BLOCK) fill_f32(float* __restrict__ p, long long n, float v)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        p[i] = v;
    }
}
