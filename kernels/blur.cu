// The anomaly map: nearest upsample of the patch scores, then a separable Gaussian blur with
// torch "reflect" padding, horizontal pass first (CPU reference: anomaly_map and reflect in
// src/backend/cpu/blur.rs, nearest_index in src/resample.rs).
//
// blur_rows(scores, batch, h, w, out_h, out_w, taps, radius, tmp)
//   scores: [batch, h, w] f32; tmp: [batch, out_h, out_w] f32.
//   tmp[b, y, x] = sum_{t = 0..2 radius} taps[t] * scores[b, ny(y), nx(reflect(x + t - radius, out_w))]
// blur_cols(tmp, batch, out_h, out_w, taps, radius, out)
//   out[b, y, x] = sum_{t = 0..2 radius} taps[t] * tmp[b, reflect(y + t - radius, out_h), x]
//   taps: 2 radius + 1 f32 on the device (any radius; 33 taps for sigma 4).
//   Launch (both): block BLOCK, grid min(ceil(batch * out_h * out_w / BLOCK), 65535), grid-stride,
//   dynamic shared memory (2 radius + 1) * 4 bytes, which holds the taps.
//
// Why the upsample is folded into the horizontal pass: the upsampled map is never stored (the
// CPU reads the grid through the nearest indices too), which saves a launch and a buffer.
// Why two launches: the vertical pass needs every row of the horizontal one, and the launch
// boundary is the cheapest grid-wide barrier.
//
// Exactness: each tap's product is rounded before it is added (no fused multiply-add), in tap
// order, from -0.0 as Rust's f32 `Sum` does (-0.0 + v == v for every v, so the sum equals the
// first term plus the rest, including the sign of an all-zero sum).

#include "common.cuh"
#include "geometry.cuh"

namespace {

// Copies the taps into shared memory once per block: every output reads all of them, and a
// broadcast from shared memory costs less than a global load per tap.
__device__ __forceinline__ const float* stage_taps(const float* __restrict__ taps, int radius)
{
    extern __shared__ float taps_s[];
    for (int t = threadIdx.x; t <= 2 * radius; t += blockDim.x) {
        taps_s[t] = taps[t];
    }
    __syncthreads();
    return taps_s;
}

}  // namespace

// x is the fastest coordinate: a warp reads (nearly) consecutive source pixels of one line and
// writes 32 consecutive floats.
extern "C" __global__ void __launch_bounds__(BLOCK) blur_rows(const float* __restrict__ scores, int batch, int h, int w,
                                                              int out_h, int out_w, const float* __restrict__ taps,
                                                              int radius, float* __restrict__ tmp)
{
    const float* k = stage_taps(taps, radius);
    const kern::Nearest ny(h, out_h);
    const kern::Nearest nx(w, out_w);
    const long long total = (long long)batch * out_h * out_w;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const kern::Pixel p = kern::pixel_of(i, out_h, out_w);
        const float* line = scores + ((size_t)p.plane * h + ny(p.y)) * w;
        float acc = -0.0f;
        for (int t = 0; t <= 2 * radius; ++t) {
            const float v = __ldg(line + nx(kern::reflect_index(p.x + t - radius, out_w)));
            acc = __fadd_rn(acc, __fmul_rn(k[t], v));
        }
        tmp[i] = acc;
    }
}

// x is the fastest coordinate: for every tap a warp reads 32 consecutive floats of one row.
extern "C" __global__ void __launch_bounds__(BLOCK) blur_cols(const float* __restrict__ tmp, int batch, int out_h,
                                                              int out_w, const float* __restrict__ taps, int radius,
                                                              float* __restrict__ out)
{
    const float* k = stage_taps(taps, radius);
    const long long total = (long long)batch * out_h * out_w;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const kern::Pixel p = kern::pixel_of(i, out_h, out_w);
        const float* column = tmp + (size_t)p.plane * out_h * out_w + p.x;  // (b, 0, x)
        float acc = -0.0f;
        for (int t = 0; t <= 2 * radius; ++t) {
            const float v = __ldg(column + (size_t)kern::reflect_index(p.y + t - radius, out_h) * out_w);
            acc = __fadd_rn(acc, __fmul_rn(k[t], v));
        }
        out[i] = acc;
    }
}
