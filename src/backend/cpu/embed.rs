//! PatchCore's neighbourhood-aware patch embedding on the CPU.

use crate::backend::checks::embed_args;
use crate::error::Result;
use crate::resample::resize_bilinear;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// 3x3 average pooling, stride 1, zero padding 1, padding counted in the divisor (always / 9,
/// torch.nn.AvgPool2d(3, 1, 1) with count_include_pad = True). Each output sums its window from
/// 0.0 row by row, left to right (the CUDA kernel's order: kernel_emulation.rs compares them bit
/// for bit); inner columns add their three taps per row across the whole row at once, which
/// vectorises and keeps every output's order.
fn avg_pool3(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let window = |y: usize, x: usize| {
        let mut sum = 0.0f32;
        for yy in y.saturating_sub(1)..(y + 2).min(h) {
            for xx in x.saturating_sub(1)..(x + 2).min(w) {
                sum += plane[yy * w + xx];
            }
        }
        sum
    };
    let mut sums = vec![0.0f32; w];
    for (y, row_out) in out.chunks_exact_mut(w).enumerate() {
        sums.fill(0.0);
        for line in plane[y.saturating_sub(1) * w..(y + 2).min(h) * w].chunks_exact(w) {
            for ((s, taps), _) in sums[1..].iter_mut().zip(line.windows(3)).zip(1..w - 1) {
                *s = ((*s + taps[0]) + taps[1]) + taps[2];
            }
        }
        for (x, (o, &s)) in row_out.iter_mut().zip(&sums).enumerate() {
            let sum = if x == 0 || x + 1 == w { window(y, x) } else { s };
            *o = sum / 9.0;
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

#[cfg(test)]
mod tests {
    use super::avg_pool3;

    /// The pooling's definition, one window at a time, summed from 0.0 in the CUDA kernel's order.
    fn by_definition(plane: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0.0f32;
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        sum += plane[yy * w + xx];
                    }
                }
                out.push(sum / 9.0);
            }
        }
        out
    }

    #[test]
    fn row_sums_give_the_bits_of_the_definition() {
        let mut rng = crate::rng::SplitMix64::new(4);
        let specials = [-0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e30, -1e-30];
        for (h, w) in [(1, 1), (1, 5), (4, 1), (2, 2), (7, 9), (16, 16), (3, 33)] {
            let plane: Vec<f32> = (0..h * w)
                .map(|i| if i % 11 == 3 { specials[i / 11 % specials.len()] } else { (10.0 * rng.normal()) as f32 })
                .collect();
            let mut got = vec![7.0f32; h * w];
            avg_pool3(&plane, h, w, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&by_definition(&plane, h, w)), "{h} x {w}");
        }
        // All -0.0: each sum starts at +0.0, so every output is +0.0.
        let mut got = vec![7.0f32; 9];
        avg_pool3(&[-0.0; 9], 3, 3, &mut got);
        assert!(got.iter().all(|v| v.to_bits() == 0));
    }
}
