// PatchCore's patch embedding, one feature layer per launch (CPU reference:
// src/backend/cpu/embed.rs, and bilinear_taps / resize_bilinear in src/resample.rs).
//
// embed_layer(feat, batch, channels, h, w, gh, gw, row_width, col_offset, rows)
//   feat: NCHW [batch, channels, h, w] f32.
//   rows: [batch * gh * gw, row_width] f32, row-major; this launch writes the columns
//         [col_offset, col_offset + channels) of every row. The host launches once per layer
//         with that layer's column offset, which is the CPU's concatenation of layers.
//   rows[((b * gh + y) * gw + x) * row_width + col_offset + c] =
//       bilinear(avgpool3x3(feat[b, c]), h x w -> gh x gw)(y, x)
//   Launch: block BLOCK, grid min(ceil(batch * gh * gw * channels / BLOCK), 65535), grid-stride,
//   no shared memory.
//
// Each output is computed straight from the input: the (up to four) pooled taps it needs are
// pooled on the fly. No intermediate pooled tensor means no extra launch or buffer, and the
// inputs are small enough (one layer of one batch) to be re-read from L1/L2.
//
// Exactness: the pooling sum runs in the CPU's order (rows outer, columns inner, only in-bounds
// taps, from +0) and is divided by 9 with IEEE division; the bilinear weights and the blend use
// common.cuh's unfused helpers. When the layer already has the grid's size the CPU skips the
// resize, and so does this kernel: the taps would then be i0 = dst, w1 = 0 and give
// 1 * a + 0 * b = a for finite values, but 0 * b is NaN when a neighbour is infinite, so only
// skipping matches the CPU for every input.

#include "common.cuh"
#include "geometry.cuh"

namespace {

// `avg_pool3` at (y, x): 3x3, stride 1, zero padding counted in the divisor (always / 9).
__device__ __forceinline__ float pool3(const float* __restrict__ plane, int h, int w, int y, int x)
{
    float sum = 0.0f;
    const int y_end = min(y + 2, h);
    const int x_end = min(x + 2, w);
    for (int yy = max(y - 1, 0); yy < y_end; ++yy) {
        for (int xx = max(x - 1, 0); xx < x_end; ++xx) {
            sum = __fadd_rn(sum, __ldg(plane + yy * w + xx));
        }
    }
    return __fdiv_rn(sum, 9.0f);
}

}  // namespace

// Index order: plane-major, x fastest (i = ((b * channels + c) * gh + y) * gw + x). A warp then
// reads each of its up to 36 pooled taps from a few consecutive addresses of one plane row
// (coalesced), and writes 32 floats one row_width apart. Those writes are the smaller cost:
// one store per output against 9 or 36 loads, and the other channels of each 32-byte sector
// are written by the next few warps (the next planes), so L2 merges the sectors before they go
// to DRAM. The other order (c fastest) would coalesce the store but scatter every one of the
// loads over 32 planes.
extern "C" __global__ void __launch_bounds__(BLOCK) embed_layer(const float* __restrict__ feat, int batch, int channels,
                                                                int h, int w, int gh, int gw, int row_width,
                                                                int col_offset, float* __restrict__ rows)
{
    const long long total = (long long)batch * channels * gh * gw;
    const bool same_size = h == gh && w == gw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int x = (int)(i % gw);
        const long long bcy = i / gw;
        const int y = (int)(bcy % gh);
        const long long bc = bcy / gh;  // b * channels + c: the plane
        const int c = (int)(bc % channels);
        const long long b = bc / channels;
        const long long pixel = (b * gh + y) * gw + x;  // the output row
        const float* plane = feat + (size_t)bc * h * w;

        float v;
        if (same_size) {
            v = pool3(plane, h, w, y, x);
        } else {
            const kern::Taps2 ty = kern::bilinear_tap(h, gh, y);
            const kern::Taps2 tx = kern::bilinear_tap(w, gw, x);
            const float top =
                kern::lerp_exact(pool3(plane, h, w, ty.i0, tx.i0), pool3(plane, h, w, ty.i0, tx.i1), tx.w1);
            const float bottom =
                kern::lerp_exact(pool3(plane, h, w, ty.i1, tx.i0), pool3(plane, h, w, ty.i1, tx.i1), tx.w1);
            v = kern::lerp_exact(top, bottom, ty.w1);
        }
        rows[(size_t)pixel * row_width + col_offset + c] = v;
    }
}
