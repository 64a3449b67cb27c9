//! PatchCore's neighbourhood-aware patch embedding on the CPU.

#[cfg(target_arch = "x86_64")]
use super::transpose::transpose16;
use crate::backend::checks::embed_args;
use crate::error::Result;
use crate::resample::Bilinear;
use crate::tensor::Tensor;
use crate::wide::vectorised;
use rayon::prelude::*;

/// 3x3 average pooling, stride 1, zero padding 1, padding counted in the divisor (always / 9,
/// torch.nn.AvgPool2d(3, 1, 1) with count_include_pad = True). Each output sums its window from
/// 0.0 row by row, left to right (the CUDA kernel's order: kernel_emulation.rs compares them bit
/// for bit); inner columns add their three taps per row across the whole row at once, which
/// vectorises and keeps every output's order.
#[inline(always)]
fn avg_pool3(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    // The edge columns' windows are clipped to two columns (one where w = 1): summed line by line
    // beside the inner ones, in the same order.
    let (left, right) = (0..w.min(2), w.saturating_sub(2)..w);
    let mut sums = vec![0.0f32; w];
    for (y, row_out) in out.chunks_exact_mut(w).enumerate() {
        sums.fill(0.0);
        let (mut first, mut last) = (0.0f32, 0.0f32);
        for line in plane[y.saturating_sub(1) * w..(y + 2).min(h) * w].chunks_exact(w) {
            if w > 2 {
                let (left, centre, right) = (&line[..w - 2], &line[1..w - 1], &line[2..]);
                for (((s, &a), &b), &c) in sums[1..w - 1].iter_mut().zip(left).zip(centre).zip(right) {
                    *s = ((*s + a) + b) + c;
                }
            }
            first = line[left.clone()].iter().fold(first, |s, &v| s + v);
            last = line[right.clone()].iter().fold(last, |s, &v| s + v);
        }
        (sums[0], sums[w - 1]) = (first, last);
        // One division per output in a pass of its own, which vectorises (inside the loops above
        // it took 2.5 ns an output).
        for (o, &s) in row_out.iter_mut().zip(&sums) {
            *o = s / 9.0;
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
                vectorised(
                    #[inline(always)]
                    || {
                        if (h, w) == (gh, gw) {
                            avg_pool3(plane, h, w, dst);
                        } else {
                            avg_pool3(plane, h, w, pooled);
                            resize.resize(pooled, dst);
                        }
                    },
                )
            },
        );
        // 16 rows at a time, each getting its c values in turn: the 16 rows' cache lines and the
        // 16 values read from each plane stay in L1 (a whole image's rows at once would not).
        rows.par_chunks_mut(16 * total).enumerate().for_each(|(chunk, block)| {
            let (img, p0) = (chunk * 16 / grid, chunk * 16 % grid);
            let n = block.len() / total;
            #[cfg(target_arch = "x86_64")]
            if p0 + n <= grid && std::arch::is_x86_feature_detected!("avx512f") {
                let src = &planes[img * c * grid + p0..(img + 1) * c * grid];
                // SAFETY: AVX-512F was detected; the block's n positions lie in this image.
                unsafe { scatter_avx512(src, grid, c, block, total, offset) };
                return;
            }
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

/// The scatter of `embed` for one block of rows (at most 16) inside one image: row i's columns
/// offset..offset + c = src[ch * grid + i] for ch < c, 16 positions x 16 channels at a time
/// transposed in registers (`cargo bench --bench pipeline -- embed`, two alternating runs
/// against the build before: 0.90-0.98 -> 0.80-0.82 ms per image at 256 px, 3.0-3.2 -> 2.6-2.8
/// at 512).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scatter_avx512(src: &[f32], grid: usize, c: usize, block: &mut [f32], total: usize, offset: usize) {
    use std::arch::x86_64::*;
    let n = block.len() / total;
    assert!(n <= 16 && offset + c <= total && (n == 0 || (c - 1) * grid + n <= src.len()));
    let positions: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
    for ch0 in (0..c).step_by(16) {
        let nc = (c - ch0).min(16);
        let channels: __mmask16 = if nc == 16 { 0xffff } else { (1u16 << nc) - 1 };
        let mut rows = [_mm512_setzero_ps(); 16];
        for (j, row) in rows.iter_mut().enumerate().take(nc) {
            // SAFETY: the masked lanes i < n read src[(ch0 + j) * grid + i], inside src (the assert).
            *row = unsafe { _mm512_maskz_loadu_ps(positions, src.as_ptr().add((ch0 + j) * grid)) };
        }
        transpose16(&mut rows);
        for (i, &row) in rows.iter().enumerate().take(n) {
            // SAFETY: the masked lanes write block[i * total + offset + ch0 ..][..nc], inside row i.
            unsafe { _mm512_mask_storeu_ps(block.as_mut_ptr().add(i * total + offset + ch0), channels, row) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{avg_pool3, embed};
    use crate::resample::resize_bilinear;
    use crate::tensor::Tensor;

    /// Row (image, p) is every layer's pooled (and resized) planes at p, in order: checked on
    /// grids whose blocks of 16 rows straddle images, and channel counts that are not multiples of
    /// 16, where the scatter's vector path hands over to the scalar one.
    #[test]
    fn rows_gather_each_position_across_the_layers() {
        let mut rng = crate::rng::SplitMix64::new(6);
        for (grid, coarse, b) in [((6, 7), (3, 4), 3), ((8, 8), (4, 4), 2)] {
            let shapes = [[b, 20, grid.0, grid.1], [b, 35, coarse.0, coarse.1]];
            let layers: Vec<Tensor> = shapes
                .iter()
                .map(|s| Tensor::new(s.to_vec(), (0..s.iter().product()).map(|_| rng.normal() as f32).collect()))
                .collect();
            let got = embed(&[&layers[0], &layers[1]]).unwrap();
            let g = grid.0 * grid.1;
            assert_eq!(got.shape, vec![b * g, 55]);
            for (layer, offset) in layers.iter().zip([0, 20]) {
                let [_, c, h, w] = [layer.shape[0], layer.shape[1], layer.shape[2], layer.shape[3]];
                for (i, plane) in layer.data.chunks_exact(h * w).enumerate() {
                    let (img, ch) = (i / c, i % c);
                    let mut pooled = vec![0.0; h * w];
                    avg_pool3(plane, h, w, &mut pooled);
                    let want = if (h, w) == grid { pooled } else { resize_bilinear(&pooled, h, w, grid.0, grid.1) };
                    for (p, &v) in want.iter().enumerate() {
                        assert_eq!(
                            got.data[(img * g + p) * 55 + offset + ch].to_bits(),
                            v.to_bits(),
                            "{grid:?} {i} {p}"
                        );
                    }
                }
            }
        }
    }

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
