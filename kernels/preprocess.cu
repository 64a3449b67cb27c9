// Pre-processing on the GPU: 8-bit RGB images -> the network's normalised NCHW input, as the CPU's
// `Preprocess::batch` makes it (src/data/image.rs: antialiased bilinear resize as torchvision v2, width first
// then height, center crop, then (x / 255 - mean) / std). Two launches per run of same-size images.
//
// Contract (the Rust host is written against it; names, parameter order and types are fixed)
// ---------------------------------------------------------------------------------------------
// int is 32-bit and every size fits in int. A resample table of one axis (`ResampleTable` in
// src/backend/cuda/launch.rs, built on the host from `antialias_spans`) is starts[out] (int) and
// weights[out * taps] (float): output i = sum_{t < taps} weights[i * taps + t] * in[starts[i] + t], every
// starts[i] + t inside the input. The crop is in the tables (they hold only the kept outputs), so the
// kernels know nothing of it.
//
// preprocess_rows(pixels, pixel_offset, images, h, w, out_w, col_starts, col_weights, col_taps, tmp)
//   pixels + pixel_offset: `images` images of h x w pixels, each row-major RGB, 3 bytes a pixel
//                          (image::RgbImage's buffer), one after another.
//   tmp: [images, 3, h, out_w] f32.
//   tmp[n, c, y, x] = sum_t col_weights[x * col_taps + t] * pixel(n, y, col_starts[x] + t, c) / 255
// preprocess_cols(tmp, images, h, out_w, out_h, row_starts, row_weights, row_taps,
//                 mean0, mean1, mean2, std0, std1, std2, first_image, out)
//   out: [N, 3, out_h, out_w] f32, N > first_image + images - 1; this launch writes images
//        [first_image, first_image + images).
//   out[first_image + n, c, y, x] = (sum_t row_weights[y * row_taps + t] * tmp[n, c, row_starts[y] + t, x]
//                                    - mean_c) / std_c
//   Launch (both): block BLOCK, grid min(ceil(outputs / BLOCK), 65535), grid-stride, no shared memory.
//
// Why two launches: the vertical pass needs every row of the horizontal one (as blur.cu), and the CPU sums
// the horizontal pass first; doing both in one kernel would recompute each horizontal value for every
// vertical tap that reads it (taps_y times, 9 at 1024 -> 256).
// Why the weights come from the host: they are the CPU's own (`antialias_spans`, in f64, rounded once), so
// they agree bit for bit without a second copy of that arithmetic here, and a table is out * taps floats
// (9 KB for 1024 -> 256: 9 taps), computed once per run of same-size images.
//
// Exactness: each term is (w * p) / 255, then w * h, rounded as the CPU's `wt * p as f32 / 255.0` and
// `wt * horizontal`, summed in tap order from +0 without fused multiply-adds (common.cuh explains the _rn
// helpers). The zero-weight taps a table pads a short span with add +0 (every term is >= +0), so the sums
// are the CPU's bit for bit.

#include "common.cuh"
#include "geometry.cuh"

// x is the fastest coordinate: a warp reads the bytes of nearby source pixels of one image row and writes 32
// consecutive floats.
extern "C" __global__ void __launch_bounds__(BLOCK)
    preprocess_rows(const unsigned char* __restrict__ pixels, long long pixel_offset, int images, int h, int w,
                    int out_w, const int* __restrict__ col_starts, const float* __restrict__ col_weights,
                    int col_taps, float* __restrict__ tmp)
{
    const unsigned char* run = pixels + pixel_offset;
    const long long total = (long long)images * 3 * h * out_w;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const kern::Pixel p = kern::pixel_of(i, h, out_w);  // plane = n * 3 + c
        const long long n = p.plane / 3;
        const int c = (int)(p.plane % 3);
        const unsigned char* line = run + ((size_t)n * h + p.y) * w * 3 + c;
        const unsigned char* source = line + (size_t)__ldg(col_starts + p.x) * 3;
        const float* weights = col_weights + (size_t)p.x * col_taps;
        float acc = 0.0f;
        for (int t = 0; t < col_taps; ++t) {
            const float value = (float)__ldg(source + (size_t)t * 3);
            acc = __fadd_rn(acc, __fdiv_rn(__fmul_rn(__ldg(weights + t), value), 255.0f));
        }
        tmp[i] = acc;
    }
}

// x is the fastest coordinate: for every tap a warp reads 32 consecutive floats of one row of tmp.
extern "C" __global__ void __launch_bounds__(BLOCK)
    preprocess_cols(const float* __restrict__ tmp, int images, int h, int out_w, int out_h,
                    const int* __restrict__ row_starts, const float* __restrict__ row_weights, int row_taps,
                    float mean0, float mean1, float mean2, float std0, float std1, float std2, int first_image,
                    float* __restrict__ out)
{
    const long long total = (long long)images * 3 * out_h * out_w;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const kern::Pixel p = kern::pixel_of(i, out_h, out_w);  // plane = n * 3 + c
        const int c = (int)(p.plane % 3);
        const float* column = tmp + ((size_t)p.plane * h + __ldg(row_starts + p.y)) * out_w + p.x;
        const float* weights = row_weights + (size_t)p.y * row_taps;
        float acc = 0.0f;
        for (int t = 0; t < row_taps; ++t) {
            acc = __fadd_rn(acc, __fmul_rn(__ldg(weights + t), __ldg(column + (size_t)t * out_w)));
        }
        const float mean = c == 0 ? mean0 : c == 1 ? mean1 : mean2;
        const float deviation = c == 0 ? std0 : c == 1 ? std1 : std2;
        out[(size_t)first_image * 3 * out_h * out_w + i] = __fdiv_rn(__fsub_rn(acc, mean), deviation);
    }
}
