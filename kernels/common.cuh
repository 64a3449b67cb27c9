// Device helpers shared by embed.cu, blur.cu, coreset.cu, conv.cu and preprocess.cu: the index and
// weight rules of the CPU backend (src/resample.rs, src/backend/cpu/blur.rs,
// src/backend/cpu/coreset.rs), written once so that every kernel rounds exactly as the CPU does.
//
// Why the explicit __fadd_rn / __fmul_rn / __fdiv_rn: nvcc contracts a * b + c into one fused
// multiply-add (one rounding instead of two), and the division and square root follow compiler
// flags. The CPU (Rust) never fuses, so every product that feeds a sum is rounded on its own,
// and the results match bit for bit whatever flags the PTX is built with.
#pragma once

namespace kern {

// f32 ratio in / out, as Rust's `in as f32 / out as f32` (both resample rules start from it).
__device__ __forceinline__ float resample_scale(int in, int out)
{
    return __fdiv_rn(__int2float_rn(in), __int2float_rn(out));
}

// One output coordinate of a 2-tap bilinear interpolation: value = (1 - w1) * in[i0] + w1 * in[i1].
struct Taps2 {
    int i0;
    int i1;
    float w1;
};

// `bilinear_taps` (align_corners = false): src = max(scale * (dst + 0.5) - 0.5, 0) in f32,
// each operation rounded separately (a fused multiply-subtract would move the weights).
__device__ __forceinline__ Taps2 bilinear_tap(int in, int out, int dst)
{
    const float scale = resample_scale(in, out);
    const float src = fmaxf(__fsub_rn(__fmul_rn(scale, __fadd_rn(__int2float_rn(dst), 0.5f)), 0.5f), 0.0f);
    Taps2 t;
    t.i0 = min(__float2int_rz(src), in - 1);  // src >= 0: truncation is Rust's `as usize`
    t.i1 = t.i0 + 1 < in ? t.i0 + 1 : t.i0;
    t.w1 = __fsub_rn(src, __int2float_rn(t.i0));
    return t;
}

// `resize_bilinear`'s expression (1 - w1) * a + w1 * b, in its order and without fusing.
__device__ __forceinline__ float lerp_exact(float a, float b, float w1)
{
    return __fadd_rn(__fmul_rn(__fsub_rn(1.0f, w1), a), __fmul_rn(w1, b));
}

// `nearest_index` (legacy "nearest"): src = min(floor(dst * scale), in - 1) in f32. The scale
// is kept so that a kernel computing many indices divides once.
struct Nearest {
    float scale;
    int last;

    __device__ __forceinline__ Nearest(int in, int out) : scale(resample_scale(in, out)), last(in - 1) {}

    __device__ __forceinline__ int operator()(int dst) const
    {
        return min(__float2int_rz(floorf(__fmul_rn(__int2float_rn(dst), scale))), last);
    }
};

// The (plane, y, x) of flat index i over [planes, h, w], x fastest: the grid-stride kernels walk
// their outputs in memory order, so a warp's stores are consecutive.
struct Pixel {
    long long plane;
    int y;
    int x;
};

__device__ __forceinline__ Pixel pixel_of(long long i, int h, int w)
{
    const long long row = i / w;
    return Pixel{row / h, (int)(row % h), (int)(i % w)};
}

// torch "reflect" padding (d c b | a b c d | c b a), periodic beyond one reflection so that a
// blur radius larger than the map never reads out of bounds; n == 1 maps everything to 0.
__device__ __forceinline__ int reflect_index(int i, int n)
{
    if (n == 1) {
        return 0;
    }
    const int period = 2 * (n - 1);
    int m = i % period;
    if (m < 0) {
        m += period;  // rem_euclid
    }
    return m >= n ? period - m : m;
}

// The coreset's argmax order (`beats` in coreset.rs): the larger distance wins, a tie goes to
// the lower row index. NaN compares false both ways, so a NaN distance never wins; the pair
// order is total on non-NaN values with distinct indices, so any reduction tree picks the
// same winner as the CPU's sequential scan.
__device__ __forceinline__ bool beats(float da, unsigned ia, float db, unsigned ib)
{
    return da > db || (da == db && ia < ib);
}

}  // namespace kern
