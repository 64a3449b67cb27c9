//! PatchCore's neighbourhood-aware patch embedding on the CPU.

use crate::backend::checks::embed_args;
use crate::error::Result;
use crate::resample::resize_bilinear;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// 3x3 average pooling, stride 1, zero padding 1, padding counted in the divisor (always / 9,
/// torch.nn.AvgPool2d(3, 1, 1) with count_include_pad = True).
fn avg_pool3(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0.0f32;
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    sum += plane[yy * w + xx];
                }
            }
            out[y * w + x] = sum / 9.0;
        }
    }
}

pub fn embed(layers: &[&Tensor]) -> Result<Tensor> {
    let shapes: Vec<&[usize]> = layers.iter().map(|l| &l.shape[..]).collect();
    let dims = embed_args(&shapes)?;
    let [b, _, gh, gw] = dims[0];
    let total: usize = dims.iter().map(|d| d[1]).sum();
    let mut rows = vec![0.0f32; b * gh * gw * total];
    let mut offset = 0;
    for (layer, &[_, c, h, w]) in layers.iter().zip(&dims) {
        // Pool and resize each channel plane, then scatter it into its column of the rows.
        let planes: Vec<Vec<f32>> = layer
            .data
            .par_chunks(h * w)
            .map(|plane| {
                let mut pooled = vec![0.0f32; h * w];
                avg_pool3(plane, h, w, &mut pooled);
                if (h, w) == (gh, gw) {
                    return pooled;
                }
                resize_bilinear(&pooled, h, w, gh, gw)
            })
            .collect();
        // 16 rows at a time, each getting its c values in turn: the 16 rows' cache lines and the
        // 16 values read from each plane stay in L1 (a whole image's rows at once would not).
        rows.par_chunks_mut(16 * total).enumerate().for_each(|(chunk, block)| {
            for (i, row) in block.chunks_exact_mut(total).enumerate() {
                let r = chunk * 16 + i;
                let (img, p) = (r / (gh * gw), r % (gh * gw));
                for (ch, v) in row[offset..offset + c].iter_mut().enumerate() {
                    *v = planes[img * c + ch][p];
                }
            }
        });
        offset += c;
    }
    Ok(Tensor::new(vec![b * gh * gw, total], rows))
}
