// The convolution epilogue, for the layers where cuDNN cannot fuse it (CPU reference: `finish`
// and `epilogue` in src/backend/cpu/conv.rs).
//
// bias_act(y, bias, residual, batch, channels, hw, act)
//   y: NCHW [batch, channels, hw] f32, updated in place; bias: [channels];
//   residual: [batch, channels, hw] or a null pointer.
//   y[b, c, p] = act((y[b, c, p] + bias[c]) + (residual ? residual[b, c, p] : 0))
//   act: 0 none, 1 ReLU, 2 ReLU6.
//   Launch: block BLOCK, grid min(ceil(batch * channels * hw / BLOCK), 65535), grid-stride.
//
// pad_nchw(x, planes, h, w, top, left, ph, pw, y)
//   x: [planes, h, w]; y: [planes, ph, pw]; y[p, yy, xx] = x[p, yy - top, xx - left] inside the
//   image, 0 outside. cuDNN pads both sides alike; TF-same convolutions with an odd total padding
//   (EfficientNet-Lite's strided layers) put the extra pixel bottom/right, so the host copies the
//   input into this padded buffer and runs cuDNN without padding.
//   Launch: block BLOCK, grid min(ceil(planes * ph * pw / BLOCK), 65535), grid-stride.
//
// Exactness: the additions run in the CPU's order, and a missing residual still adds +0.0 as the
// CPU's does (which turns a -0.0 into +0.0). The activations keep the CPU's NaN behaviour:
// Rust's f32::max(NaN, 0) is 0 (as fmaxf), while clamp(NaN, 0, 6) stays NaN, so ReLU6 is two
// comparisons rather than fminf(fmaxf(...)), which would return 0 for NaN.

#include "common.cuh"
#include "geometry.cuh"

namespace {

__device__ __forceinline__ float activate(float v, int act)
{
    if (act == 1) {
        return fmaxf(v, 0.0f);
    }
    if (act == 2) {
        // f32::clamp: `if v < min { v = min } if v > max { v = max }`; NaN passes through.
        v = v < 0.0f ? 0.0f : v;
        return v > 6.0f ? 6.0f : v;
    }
    return v;
}

}  // namespace

// Flat index order = memory order, so loads and stores are coalesced; the channel is recovered
// per element for the bias (a cached broadcast-like load). residual is read with a plain load,
// not __ldg, in case a caller ever passes the output itself as the residual.
extern "C" __global__ void __launch_bounds__(BLOCK) bias_act(float* y, const float* __restrict__ bias,
                                                             const float* residual, int batch, int channels, int hw,
                                                             int act)
{
    const long long total = (long long)batch * channels * hw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / hw) % channels);
        const float v = __fadd_rn(y[i], __ldg(bias + c));
        y[i] = activate(__fadd_rn(v, residual != nullptr ? residual[i] : 0.0f), act);
    }
}

// Flat index over the padded output, so stores are coalesced and loads are too within a row.
extern "C" __global__ void __launch_bounds__(BLOCK) pad_nchw(const float* __restrict__ x, int planes, int h, int w,
                                                             int top, int left, int ph, int pw, float* __restrict__ y)
{
    const long long total = (long long)planes * ph * pw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const kern::Pixel p = kern::pixel_of(i, ph, pw);
        const int sy = p.y - top, sx = p.x - left;
        y[i] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? __ldg(x + (p.plane * h + sy) * w + sx) : 0.0f;
    }
}
