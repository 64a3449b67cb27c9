//! PatchCore's neighbourhood-aware patch embedding on the CPU.

use crate::backend::checks::embed_args;
use crate::error::Result;
use crate::resample::Bilinear;
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
        if w > 2 {
            for line in plane[y.saturating_sub(1) * w..(y + 2).min(h) * w].chunks_exact(w) {
                let (left, centre, right) = (&line[..w - 2], &line[1..w - 1], &line[2..]);
                for (((s, &a), &b), &c) in sums[1..w - 1].iter_mut().zip(left).zip(centre).zip(right) {
                    *s = ((*s + a) + b) + c;
                }
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
    let (total, grid): (usize, usize) = (dims.iter().map(|d| d[1]).sum(), gh * gw);
    let mut rows = vec![0.0f32; b * grid * total];
    let mut offset = 0;
    for (layer, &[_, c, h, w]) in layers.iter().zip(&dims) {
        // Pool and resize each channel plane into one buffer, [image][channel][grid position],
        // then scatter it into its columns of the rows.
        let mut planes = vec![0.0f32; b * c * grid];
        let resize = Bilinear::new(h, w, gh, gw);
        planes.par_chunks_mut(grid).zip(layer.data.par_chunks(h * w)).for_each_init(
            || vec![0.0f32; h * w],
            |pooled, (dst, plane)| {
                if (h, w) == (gh, gw) {
                    avg_pool3(plane, h, w, dst);
                } else {
                    avg_pool3(plane, h, w, pooled);
                    resize.resize(pooled, dst);
                }
            },
        );
        // 16 rows at a time, each getting its c values in turn: the 16 rows' cache lines and the
        // 16 values read from each plane stay in L1 (a whole image's rows at once would not).
        rows.par_chunks_mut(16 * total).enumerate().for_each(|(chunk, block)| {
            for (i, row) in block.chunks_exact_mut(total).enumerate() {
                let (img, p) = ((chunk * 16 + i) / grid, (chunk * 16 + i) % grid);
                let column = planes[img * c * grid + p..].iter().step_by(grid);
                for (v, &x) in row[offset..offset + c].iter_mut().zip(column) {
                    *v = x;
                }
            }
        });
        offset += c;
    }
    Ok(Tensor::new(vec![b * grid, total], rows))
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
