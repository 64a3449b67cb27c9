//! Convolution as im2col + one matrix product per image and group, with bias, residual and
//! activation applied in the same pass over the output, or where the CPU has AVX-512, as tile
//! products (`conv_amx`). Depthwise convolutions (one input channel per group) skip im2col: a
//! direct loop is cheaper than a product with one row.

use super::conv_amx::{self, Arithmetic, PackedConv};
use super::matmul::{sgemm_views, View};
use crate::backend::checks::{conv_output, pool_output};
use crate::backend::{Activation, ConvSpec, ConvWeights};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// A convolution prepared for the CPU: its weights, and where tiles are to be used and apply,
/// their packed form.
pub struct CpuConv {
    pub(super) weights: ConvWeights,
    pub(super) packed: Option<PackedConv>,
}

impl CpuConv {
    pub fn new(weights: &ConvWeights, tiles: Option<Arithmetic>) -> CpuConv {
        let packed = tiles.and_then(|arithmetic| PackedConv::new(weights, arithmetic));
        CpuConv { weights: weights.clone(), packed }
    }
}

/// activation(conv(x) + bias + residual): as tile products in `tiles` where the convolution was
/// packed for them and the input suits them, else through im2col + sgemm (or the depthwise loop).
pub fn conv2d(x: &Tensor, prepared: &CpuConv, tiles: Option<Arithmetic>, residual: Option<&Tensor>) -> Result<Tensor> {
    let conv = &prepared.weights;
    let s = &conv.spec;
    let (out_shape, g) = geometry(s, &x.shape, residual.map(|r| &r.shape[..]))?;
    let c = g.c;
    let depthwise = s.groups == c && s.groups == s.out_channels && s.groups > 1;
    let on_tiles = tiles.zip(prepared.packed.as_ref());
    let out = if let Some(out) = on_tiles.and_then(|(a, packed)| conv_amx::conv2d(x, conv, packed, a, residual, &g)) {
        out
    } else if depthwise {
        let mut out = depthwise_direct(x, &conv.weight, &g);
        epilogue(&mut out, conv, residual, g.ho * g.wo);
        out
    } else {
        banded_gemm(x, conv, residual, &g)
    };
    Ok(Tensor::new(out_shape.to_vec(), out))
}

/// max_pool(conv2d(x)) (`pool`: kernel, stride, padding) in one pass on the tiles, where
/// `conv2d` would take them and `conv_amx::to_max_pooled` applies; `None` otherwise (the caller
/// runs the two). The same bits as the two (`tests::pooled_convolutions_equal_the_two_in_turn`).
pub fn conv2d_max_pool(
    x: &Tensor,
    prepared: &CpuConv,
    tiles: Option<Arithmetic>,
    pool: [usize; 3],
) -> Result<Option<Tensor>> {
    let conv = &prepared.weights;
    let (out_shape, g) = geometry(&conv.spec, &x.shape, None)?;
    let [b, c, hp, wp] = pool_output(&out_shape, pool[0], pool[1], pool[2])?;
    let Some((arithmetic, packed)) = tiles.zip(prepared.packed.as_ref()) else { return Ok(None) };
    let Some((input, g)) = conv_amx::stage(x, arithmetic, &g) else { return Ok(None) };
    let pooled = conv_amx::to_max_pooled(&input, conv, packed, &g, pool, [hp, wp]);
    Ok(pooled.map(|out| Tensor::new(vec![b, c, hp, wp], out)))
}

/// The output shape of a convolution of `spec` on an input of `shape` (checked, with the
/// residual's) and the geometry it is computed with.
pub(super) fn geometry(spec: &ConvSpec, shape: &[usize], residual: Option<&[usize]>) -> Result<([usize; 4], Geometry)> {
    let out = conv_output(spec, shape, residual)?;
    let [_, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let [_, _, ho, wo] = out;
    let (_, pad_top) = spec.padding.resolve(h, spec.kernel, spec.stride);
    let (_, pad_left) = spec.padding.resolve(w, spec.kernel, spec.stride);
    Ok((out, Geometry { c, h, w, ho, wo, pad_top, pad_left, k: spec.kernel, stride: spec.stride }))
}

/// Floats of one im2col band: 8 MB, so the band the product reads stays in cache. A band is a
/// run of output positions, which may span images: late layers with small grids then still
/// make wide products, and early layers with large grids never build a huge buffer.
const BAND_FLOATS: usize = 2 << 20;

#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub k: usize,
    pub stride: usize,
}

impl Geometry {
    /// The output range [lo, hi) whose input coordinate o * stride + t - pad lies in [0, size).
    fn valid(&self, t: usize, pad: usize, size: usize, out: usize) -> (usize, usize) {
        let lo = pad.saturating_sub(t).div_ceil(self.stride);
        let hi = (size + pad).saturating_sub(t).div_ceil(self.stride);
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }
}

/// For each group and each band of output positions (over the whole batch): im2col the band,
/// multiply W[og x kk] by it, and write activation(product + bias + residual) into place.
fn banded_gemm(x: &Tensor, conv: &ConvWeights, residual: Option<&Tensor>, g: &Geometry) -> Vec<f32> {
    let s = &conv.spec;
    let b = x.shape[0];
    let (cg, og, plane) = (g.c / s.groups, s.out_channels / s.groups, g.ho * g.wo);
    let kk = cg * g.k * g.k;
    let total = b * plane;
    let band = (BAND_FLOATS / kk).max(256).min(total.max(1));
    let mut out = vec![0.0f32; b * s.out_channels * plane];
    let mut cols = vec![0.0f32; kk * band];
    let mut product = vec![0.0f32; og * band];
    for grp in 0..s.groups {
        let weights = &conv.weight[grp * og * kk..(grp + 1) * og * kk];
        for start in (0..total).step_by(band) {
            let n = band.min(total - start);
            im2col(x, grp * cg, cg, g, &mut cols[..kk * n], start);
            product_into(og, n, kk, weights, &cols[..kk * n], &mut product[..og * n]);
            let range = start..start + n;
            out.par_chunks_mut(plane).enumerate().for_each(|(bc, dst)| {
                let (image, channel) = (bc / s.out_channels, bc % s.out_channels);
                let Some(o) = channel.checked_sub(grp * og).filter(|&o| o < og) else { return };
                // This plane's positions that fall in the band.
                let lo = range.start.max(image * plane);
                let hi = range.end.min((image + 1) * plane);
                if lo >= hi {
                    return;
                }
                let src = &product[o * n + lo - start..o * n + hi - start];
                let res = residual.map(|r| &r.data[bc * plane + lo - image * plane..bc * plane + hi - image * plane]);
                let d = &mut dst[lo - image * plane..hi - image * plane];
                for (i, (v, &p)) in d.iter_mut().zip(src).enumerate() {
                    *v = finish(p, conv.bias[channel], res.map_or(0.0, |r| r[i]), s.activation);
                }
            });
        }
    }
    out
}

/// product[og x n] = weights[og x kk] * cols[kk x n]. With few output channels the product is
/// computed transposed (positions as the long `m` side), which the gemm crate's kernels run
/// 2-2.5x faster: measured 90 vs 40 GFLOP/s on ResNet's stem and 103 vs 37 on its layer1
/// (`cargo bench --bench pipeline -- convs`); from 256 channels the direct form wins.
fn product_into(og: usize, n: usize, kk: usize, weights: &[f32], cols: &[f32], product: &mut [f32]) {
    if og < 256 {
        sgemm_views(n, og, kk, View::transposed(cols, n), View::transposed(weights, kk), product, 1, n, true);
    } else {
        sgemm_views(og, n, kk, View::row_major(weights, kk), View::row_major(cols, n), product, n, 1, true);
    }
}

/// im2col of the output positions [start, start + n) of the whole batch (position = image *
/// plane + oy * wo + ox) for input channels [c0, c0 + channels): row (ci * k + ky) * k + kx of
/// `cols` holds input[image][c0 + ci][oy*s + ky - pad][ox*s + kx - pad], zero outside the image.
fn im2col(x: &Tensor, c0: usize, channels: usize, g: &Geometry, cols: &mut [f32], start: usize) {
    let plane = g.ho * g.wo;
    let n = cols.len() / (channels * g.k * g.k);
    cols.par_chunks_mut(n).enumerate().for_each(|(row, line)| {
        let ci = c0 + row / (g.k * g.k);
        let (ky, kx) = ((row / g.k) % g.k, row % g.k);
        let (y_lo, y_hi) = g.valid(ky, g.pad_top, g.h, g.ho);
        let (x_lo, x_hi) = g.valid(kx, g.pad_left, g.w, g.wo);
        let mut j = 0;
        while j < n {
            // One output row (or the part of it inside the band) at a time.
            let pos = start + j;
            let (image, oy, ox0) = (pos / plane, (pos % plane) / g.wo, pos % g.wo);
            let len = (g.wo - ox0).min(n - j);
            let d = &mut line[j..j + len];
            j += len;
            if oy < y_lo || oy >= y_hi {
                d.fill(0.0);
                continue;
            }
            let iy = oy * g.stride + ky - g.pad_top;
            let src = &x.data[((image * g.c + ci) * g.h + iy) * g.w..][..g.w];
            // Zeros left of the image, the image's pixels (a plain copy at stride 1), zeros right.
            let lo = x_lo.clamp(ox0, ox0 + len) - ox0;
            let hi = x_hi.clamp(ox0, ox0 + len) - ox0;
            d[..lo].fill(0.0);
            d[hi.max(lo)..].fill(0.0);
            if hi > lo {
                let first = (ox0 + lo) * g.stride + kx - g.pad_left;
                if g.stride == 1 {
                    d[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                } else {
                    for (t, v) in d[lo..hi].iter_mut().enumerate() {
                        *v = src[first + t * g.stride];
                    }
                }
            }
        }
    });
}

fn depthwise_direct(x: &Tensor, weight: &[f32], g: &Geometry) -> Vec<f32> {
    let plane = g.ho * g.wo;
    let mut out = vec![0.0f32; x.shape[0] * g.c * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(bc, dst)| {
        let ch = bc % g.c;
        let src = &x.data[bc * g.h * g.w..(bc + 1) * g.h * g.w];
        let taps = &weight[ch * g.k * g.k..(ch + 1) * g.k * g.k];
        for ky in 0..g.k {
            let (y_lo, y_hi) = g.valid(ky, g.pad_top, g.h, g.ho);
            for kx in 0..g.k {
                let (x_lo, x_hi) = g.valid(kx, g.pad_left, g.w, g.wo);
                let wv = taps[ky * g.k + kx];
                for oy in y_lo..y_hi {
                    let line = &src[(oy * g.stride + ky - g.pad_top) * g.w..][..g.w];
                    let row = &mut dst[oy * g.wo..(oy + 1) * g.wo];
                    for ox in x_lo..x_hi {
                        row[ox] += wv * line[ox * g.stride + kx - g.pad_left];
                    }
                }
            }
        }
    });
    out
}

/// activation(v + bias + residual): the epilogue every convolution output goes through.
#[inline]
pub(super) fn finish(v: f32, bias: f32, residual: f32, activation: Activation) -> f32 {
    let y = v + bias + residual;
    match activation {
        Activation::None => y,
        Activation::Relu => y.max(0.0),
        Activation::Relu6 => y.clamp(0.0, 6.0),
    }
}

/// out = activation(out + bias + residual) in place (the depthwise path).
fn epilogue(out: &mut [f32], conv: &ConvWeights, residual: Option<&Tensor>, plane: usize) {
    let channels = conv.spec.out_channels;
    out.par_chunks_mut(plane).enumerate().for_each(|(bc, chan)| {
        let res = residual.map(|r| &r.data[bc * plane..(bc + 1) * plane]);
        for (i, v) in chan.iter_mut().enumerate() {
            *v = finish(*v, conv.bias[bc % channels], res.map_or(0.0, |r| r[i]), conv.spec.activation);
        }
    });
}
