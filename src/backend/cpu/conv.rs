//! Convolution as im2col + one matrix product per image and group, with bias, residual and
//! activation applied in the same pass over the output. Depthwise convolutions (one input
//! channel per group) skip im2col: a direct loop is cheaper than a product with one row.

use super::matmul::sgemm;
use crate::backend::{Activation, ConvWeights};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

pub fn conv2d(x: &Tensor, conv: &ConvWeights, residual: Option<&Tensor>) -> Result<Tensor> {
    let [b, c, h, w] = x.dims4()?;
    let s = &conv.spec;
    if c != s.in_channels {
        return Err(Error::Backend(format!("conv2d: input has {c} channels, the weights expect {}", s.in_channels)));
    }
    let (ho, pad_top) = s.padding.resolve(h, s.kernel, s.stride);
    let (wo, pad_left) = s.padding.resolve(w, s.kernel, s.stride);
    let out_shape = vec![b, s.out_channels, ho, wo];
    if let Some(r) = residual {
        if r.shape != out_shape {
            return Err(Error::Backend(format!("conv2d: residual {:?} does not match output {out_shape:?}", r.shape)));
        }
    }
    let g = Geometry { c, h, w, ho, wo, pad_top, pad_left, k: s.kernel, stride: s.stride };
    let depthwise = s.groups == c && s.groups == s.out_channels && s.groups > 1;
    let mut out = if depthwise { depthwise_direct(x, &conv.weight, &g) } else { batched_gemm(x, conv, &g) };
    epilogue(&mut out, conv, residual, ho * wo);
    Ok(Tensor::new(out_shape, out))
}

/// Input floats per im2col buffer: images are gathered into one product until this is
/// reached (small late-layer grids make thin products that parallelise badly one by one),
/// while keeping the buffer around 64 MB.
const COLS_BUDGET: usize = 16 << 20;

struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    pad_top: usize,
    pad_left: usize,
    k: usize,
    stride: usize,
}

impl Geometry {
    /// The output range [lo, hi) whose input coordinate o * stride + t - pad lies in [0, size).
    fn valid(&self, t: usize, pad: usize, size: usize, out: usize) -> (usize, usize) {
        let lo = pad.saturating_sub(t).div_ceil(self.stride);
        let hi = (size + pad).saturating_sub(t).div_ceil(self.stride);
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }
}

/// The product W[og x kk] * cols[kk x (images * plane)] per group, into [B, OC, plane].
fn batched_gemm(x: &Tensor, conv: &ConvWeights, g: &Geometry) -> Vec<f32> {
    let s = &conv.spec;
    let b = x.shape[0];
    let (cg, og, plane) = (g.c / s.groups, s.out_channels / s.groups, g.ho * g.wo);
    let kk = cg * g.k * g.k;
    let per_chunk = (COLS_BUDGET / (kk * plane).max(1)).clamp(1, b);
    let mut out = vec![0.0f32; b * s.out_channels * plane];
    let pointwise = g.k == 1 && g.stride == 1 && g.pad_top == 0 && g.pad_left == 0;
    let batched = per_chunk > 1;
    let mut cols = if pointwise && !batched { Vec::new() } else { vec![0.0f32; kk * per_chunk * plane] };
    let mut product = if batched { vec![0.0f32; og * per_chunk * plane] } else { Vec::new() };
    for first in (0..b).step_by(per_chunk) {
        let n_img = per_chunk.min(b - first);
        let n = n_img * plane;
        for grp in 0..s.groups {
            let group_input = |i: usize| &x.data[((first + i) * g.c + grp * cg) * g.h * g.w..][..cg * g.h * g.w];
            let weights = &conv.weight[grp * og * kk..(grp + 1) * og * kk];
            // One image: no gather, and the product lands in place. A 1x1 stride-1 convolution
            // of one image reads its input as is.
            let rhs: &[f32] = if pointwise && n_img == 1 {
                group_input(0)
            } else {
                for i in 0..n_img {
                    im2col(group_input(i), cg, g, &mut cols[..kk * n], n, i * plane);
                }
                &cols[..kk * n]
            };
            if n_img == 1 {
                let dst = &mut out[(first * s.out_channels + grp * og) * plane..][..og * plane];
                sgemm(og, n, kk, weights, rhs, false, dst, false, true);
                continue;
            }
            sgemm(og, n, kk, weights, rhs, false, &mut product[..og * n], false, true);
            // [og, images * plane] -> [image][grp * og + o][plane]
            for i in 0..n_img {
                for o in 0..og {
                    let dst = &mut out[((first + i) * s.out_channels + grp * og + o) * plane..][..plane];
                    dst.copy_from_slice(&product[o * n + i * plane..][..plane]);
                }
            }
        }
    }
    out
}

/// Writes one image's im2col rows into columns [col0, col0 + plane) of a buffer whose rows
/// are `stride` long: row (ci * k + ky) * k + kx holds input[ci][oy*s + ky - pad][ox*s + kx - pad],
/// zero outside the image.
fn im2col(input: &[f32], channels: usize, g: &Geometry, cols: &mut [f32], row_len: usize, col0: usize) {
    cols[..channels * g.k * g.k * row_len].par_chunks_mut(row_len).enumerate().for_each(|(row, line)| {
        let ci = row / (g.k * g.k);
        let (ky, kx) = ((row / g.k) % g.k, row % g.k);
        let src = &input[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let (y_lo, y_hi) = g.valid(ky, g.pad_top, g.h, g.ho);
        let (x_lo, x_hi) = g.valid(kx, g.pad_left, g.w, g.wo);
        let dst = &mut line[col0..col0 + g.ho * g.wo];
        for oy in 0..g.ho {
            let d = &mut dst[oy * g.wo..(oy + 1) * g.wo];
            if oy < y_lo || oy >= y_hi {
                d.fill(0.0);
                continue;
            }
            let iy = oy * g.stride + ky - g.pad_top;
            d[..x_lo].fill(0.0);
            d[x_hi..].fill(0.0);
            let ix0 = x_lo * g.stride + kx - g.pad_left;
            let srow = &src[iy * g.w..(iy + 1) * g.w];
            if g.stride == 1 {
                d[x_lo..x_hi].copy_from_slice(&srow[ix0..ix0 + (x_hi - x_lo)]);
            } else {
                for (j, v) in d[x_lo..x_hi].iter_mut().enumerate() {
                    *v = srow[ix0 + j * g.stride];
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

/// out = activation(out + bias + residual), one pass.
fn epilogue(out: &mut [f32], conv: &ConvWeights, residual: Option<&Tensor>, plane: usize) {
    let channels = conv.spec.out_channels;
    let activation = conv.spec.activation;
    out.par_chunks_mut(plane).enumerate().for_each(|(bc, chan)| {
        let bias = conv.bias[bc % channels];
        let res = residual.map(|r| &r.data[bc * plane..(bc + 1) * plane]);
        for (i, v) in chan.iter_mut().enumerate() {
            let mut y = *v + bias + res.map_or(0.0, |r| r[i]);
            y = match activation {
                Activation::None => y,
                Activation::Relu => y.max(0.0),
                Activation::Relu6 => y.clamp(0.0, 6.0),
            };
            *v = y;
        }
    });
}
