// PatchCore's scoring after the patch search, on the GPU (Backend::score): each image's most anomalous patch,
// the nearest bank rows of those patches gathered for the support search, and paper Eq. 7 with anomalib's
// choices, so that predict's intermediate results never leave the device (issue 11). CPU reference:
// src/backend/cpu/score.rs (top_patches, reweighted_score).
//
// Contract (the Rust host is written against it; names, parameter order and types are fixed)
// ---------------------------------------------------------------------------------------------
// All kernels are extern "C"; int is 32-bit and every size fits in int. Rows are row-major, d wide.
//
// top_patch(distances, nearest, images, per_image, top_rows, m_star, max_distance)
//   distances, nearest: images x per_image, the patch search's k = 1 result (knn_merge's out_d, out_i).
//   top_rows[b] = b * per_image + i, i the first maximum of image b's distances, a NaN never winning (an image
//   of NaNs only: i = 0); m_star[b] = nearest[top_rows[b]]; max_distance[b] = distances[top_rows[b]].
//   block BLOCK, grid images: one block per image.
// gather_rows(src, rows, n, d, dst)
//   dst[i*d + j] = src[rows[i]*d + j], i < n, j < d. Grid-stride over n * d: any grid works.
// eq7_scores(embedding, top_rows, bank, support, max_distance, images, d, k, scores)
//   For image b, q = embedding row top_rows[b], s = max_distance[b], n_j = bank row support[b*k + j]:
//   dist_j = sqrt(max(0, (|q|^2 - 2 q.n_j) + |n_j|^2)), each sum accumulated in dimension order;
//   scores[b] = (1 - exp(dist_0 - top) / sum_j exp(dist_j - top)) * s, top = max_j dist_j.
//   k == 1: scores[b] = s (the plain maximum; support is not read and may be null). 1 <= k <= KNN_MAX_K.
//   block BLOCK, grid images: one block per image.
//
// Why this design
// ---------------
// * One block per image everywhere: a batch has a few images and each needs a reduction over its patches
//   (1,024 at 256 px) or k <= 16 distances; these kernels are microseconds next to the patch search, and
//   what they save is the host round trips between the search, the support search and the map.
// * eq7_scores computes each distance with one thread, in the CPU's order and without fused multiply-adds
//   (common.cuh), so the distances are the CPU's bit for bit: Eq. 7 subtracts the distance of m* from its
//   neighbours', and at small distances that difference is what the score is made of. Only expf may differ
//   from the CPU's exp by an ulp. k * d multiply-adds per image is nothing to parallelise.
// * The argmax scans with kern::beats (larger first, lower index on ties), so any reduction tree picks the
//   CPU's sequential scan's winner; NaNs are skipped before they are compared.

#include "common.cuh"
#include "geometry.cuh"

namespace {

constexpr unsigned NO_PATCH = 0xFFFFFFFFu;

static_assert((BLOCK & (BLOCK - 1)) == 0, "top_patch halves the block in its reduction");
static_assert(KNN_MAX_K <= BLOCK, "eq7_scores has one thread per support row");

}  // namespace

extern "C" __global__ void __launch_bounds__(BLOCK)
    top_patch(const float* __restrict__ distances, const unsigned* __restrict__ nearest, int images, int per_image,
              unsigned* __restrict__ top_rows, unsigned* __restrict__ m_star, float* __restrict__ max_distance)
{
    __shared__ float best_d[BLOCK];
    __shared__ unsigned best_i[BLOCK];
    const int image = blockIdx.x;
    const float* patches = distances + (size_t)image * per_image;
    // -inf with no index loses to every patch, -inf included (equal distance, lower index).
    float d = -INFINITY;
    unsigned i = NO_PATCH;
    for (int p = threadIdx.x; p < per_image; p += BLOCK) {
        const float v = patches[p];
        if (!isnan(v) && kern::beats(v, p, d, i)) {
            d = v;
            i = p;
        }
    }
    best_d[threadIdx.x] = d;
    best_i[threadIdx.x] = i;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && kern::beats(best_d[threadIdx.x + half], best_i[threadIdx.x + half],
                                              best_d[threadIdx.x], best_i[threadIdx.x])) {
            best_d[threadIdx.x] = best_d[threadIdx.x + half];
            best_i[threadIdx.x] = best_i[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const size_t row = (size_t)image * per_image + (best_i[0] == NO_PATCH ? 0 : best_i[0]);
        top_rows[image] = (unsigned)row;
        m_star[image] = nearest[row];
        max_distance[image] = distances[row];
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) gather_rows(const float* __restrict__ src,
                                                                const unsigned* __restrict__ rows, int n, int d,
                                                                float* __restrict__ dst)
{
    const long long total = (long long)n * d;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        dst[e] = src[(size_t)rows[e / d] * d + e % d];
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    eq7_scores(const float* __restrict__ embedding, const unsigned* __restrict__ top_rows,
               const float* __restrict__ bank, const unsigned* __restrict__ support,
               const float* __restrict__ max_distance, int images, int d, int k, float* __restrict__ scores)
{
    __shared__ float dist[KNN_MAX_K];
    const int image = blockIdx.x;
    const float s = max_distance[image];
    if (k == 1) {
        if (threadIdx.x == 0) {
            scores[image] = s;
        }
        return;
    }
    if (threadIdx.x < k) {
        const float* q = embedding + (size_t)top_rows[image] * d;
        const float* n = bank + (size_t)support[image * k + threadIdx.x] * d;
        float qq = 0.0f, qn = 0.0f, nn = 0.0f;
        for (int j = 0; j < d; ++j) {
            qq = __fadd_rn(qq, __fmul_rn(q[j], q[j]));
            qn = __fadd_rn(qn, __fmul_rn(q[j], n[j]));
            nn = __fadd_rn(nn, __fmul_rn(n[j], n[j]));
        }
        dist[threadIdx.x] = __fsqrt_rn(fmaxf(__fadd_rn(__fsub_rn(qq, __fmul_rn(2.0f, qn)), nn), 0.0f));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        // Softmax with the maximum subtracted, as the CPU: the same value, without overflow.
        float top = -INFINITY;
        for (int j = 0; j < k; ++j) {
            top = fmaxf(top, dist[j]);
        }
        float total = -0.0f;  // Rust's f32 `Sum` starts from -0.0
        for (int j = 0; j < k; ++j) {
            total = __fadd_rn(total, expf(__fsub_rn(dist[j], top)));
        }
        scores[image] = __fmul_rn(__fsub_rn(1.0f, __fdiv_rn(expf(__fsub_rn(dist[0], top)), total)), s);
    }
}
