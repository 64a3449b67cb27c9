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
    let plane = ho * wo;
    let per_image = s.out_channels * plane;
    let mut out = vec![0.0f32; b * per_image];
    // Bias and residual first: the product then accumulates onto them.
    for (i, image_out) in out.chunks_mut(per_image).enumerate() {
        for (oc, chan) in image_out.chunks_mut(plane).enumerate() {
            match residual {
                Some(r) => {
                    let src = &r.data[i * per_image + oc * plane..][..plane];
                    chan.iter_mut().zip(src).for_each(|(o, &v)| *o = v + conv.bias[oc]);
                }
                None => chan.fill(conv.bias[oc]),
            }
        }
    }
    let geometry = Geometry { c, h, w, ho, wo, pad_top, pad_left, k: s.kernel, stride: s.stride };
    let depthwise = s.groups == c && s.groups == s.out_channels && s.groups > 1;
    for (i, image_out) in out.chunks_mut(per_image).enumerate() {
        let image = &x.data[i * c * h * w..(i + 1) * c * h * w];
        if depthwise {
            depthwise_direct(image, &conv.weight, &geometry, image_out);
        } else {
            grouped_gemm(image, conv, &geometry, image_out);
        }
    }
    activate(&mut out, s.activation);
    Ok(Tensor::new(out_shape, out))
}

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
    /// The input coordinate read by output coordinate `o` at tap `t`, if inside the image.
    #[inline]
    fn source(o: usize, t: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
        (o * stride + t).checked_sub(pad).filter(|&v| v < size)
    }
}

fn grouped_gemm(image: &[f32], conv: &ConvWeights, g: &Geometry, out: &mut [f32]) {
    let s = &conv.spec;
    let cg = g.c / s.groups;
    let og = s.out_channels / s.groups;
    let plane = g.ho * g.wo;
    let kk = cg * g.k * g.k;
    let pointwise = g.k == 1 && g.stride == 1 && g.pad_top == 0 && g.pad_left == 0;
    let mut cols = if pointwise { Vec::new() } else { vec![0.0f32; kk * plane] };
    for grp in 0..s.groups {
        let input = &image[grp * cg * g.h * g.w..(grp + 1) * cg * g.h * g.w];
        let rhs: &[f32] = if pointwise {
            input
        } else {
            im2col(input, cg, g, &mut cols);
            &cols
        };
        let weights = &conv.weight[grp * og * kk..(grp + 1) * og * kk];
        sgemm(og, plane, kk, weights, rhs, false, &mut out[grp * og * plane..(grp + 1) * og * plane], true, true);
    }
}

/// cols[(ci * k + ky) * k + kx][oy * wo + ox] = input[ci][oy*s + ky - pad][ox*s + kx - pad] (0 outside).
fn im2col(input: &[f32], channels: usize, g: &Geometry, cols: &mut [f32]) {
    let plane = g.ho * g.wo;
    cols[..channels * g.k * g.k * plane].par_chunks_mut(plane).enumerate().for_each(|(row, col)| {
        let ci = row / (g.k * g.k);
        let (ky, kx) = ((row / g.k) % g.k, row % g.k);
        let src = &input[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for oy in 0..g.ho {
            let dst = &mut col[oy * g.wo..(oy + 1) * g.wo];
            match Geometry::source(oy, ky, g.stride, g.pad_top, g.h) {
                None => dst.fill(0.0),
                Some(iy) => {
                    let line = &src[iy * g.w..(iy + 1) * g.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        *d = Geometry::source(ox, kx, g.stride, g.pad_left, g.w).map_or(0.0, |ix| line[ix]);
                    }
                }
            }
        }
    });
}

fn depthwise_direct(image: &[f32], weight: &[f32], g: &Geometry, out: &mut [f32]) {
    let plane = g.ho * g.wo;
    out.par_chunks_mut(plane).enumerate().for_each(|(ch, dst)| {
        let src = &image[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        let taps = &weight[ch * g.k * g.k..(ch + 1) * g.k * g.k];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let wv = taps[ky * g.k + kx];
                for oy in 0..g.ho {
                    let Some(iy) = Geometry::source(oy, ky, g.stride, g.pad_top, g.h) else { continue };
                    let line = &src[iy * g.w..(iy + 1) * g.w];
                    let row = &mut dst[oy * g.wo..(oy + 1) * g.wo];
                    for (ox, d) in row.iter_mut().enumerate() {
                        if let Some(ix) = Geometry::source(ox, kx, g.stride, g.pad_left, g.w) {
                            *d += wv * line[ix];
                        }
                    }
                }
            }
        }
    });
}

fn activate(data: &mut [f32], activation: Activation) {
    match activation {
        Activation::None => {}
        Activation::Relu => data.par_iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => data.par_iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
    }
}
