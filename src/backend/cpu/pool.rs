//! Max pooling (ResNet's stem).

use crate::backend::checks::pool_output;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::wide::vectorised;
use rayon::prelude::*;

/// Max pooling with implicit -inf padding, as torch.nn.MaxPool2d.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let [b, c, ho, wo] = pool_output(&x.shape, kernel, stride, padding)?;
    let [_, _, h, w] = x.dims4()?;
    let mut out = vec![0.0f32; b * c * ho * wo];
    // The window of output o along a column: rows [o * stride - padding, + kernel) clipped.
    let window = |o: usize| {
        let lo = (o * stride).saturating_sub(padding).min(h);
        (lo, (o * stride + kernel).saturating_sub(padding).clamp(lo, h))
    };
    // Separable: the window's rows reduced column by column (contiguous, vectorised), then each
    // output's columns of that, from a copy of the column maxima with `padding` -inf on each side
    // (and enough past the end) so that every window is whole: no clipping per output, and for
    // ResNet's 3-wide windows a fixed-size fold (predict's max_pool 45 -> 30 ms over 50 images
    // at batch 8). f32::max skips NaN, as a per-tap loop would; -inf taps change nothing.
    let padded_w = ((wo - 1) * stride + kernel).max(padding + w);
    out.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(dst, src)| {
        vectorised(
            #[inline(always)]
            || {
                // 32 more, so that `max3_stride2`'s vectors reach the end of the row.
                let mut columns = vec![f32::NEG_INFINITY; padded_w + 32];
                for (oy, row) in dst.chunks_exact_mut(wo).enumerate() {
                    let (y0, y1) = window(oy);
                    let inner = &mut columns[padding..padding + w];
                    inner.fill(f32::NEG_INFINITY);
                    for line in src[y0 * w..y1 * w].chunks_exact(w) {
                        for (m, &v) in inner.iter_mut().zip(line) {
                            *m = m.max(v);
                        }
                    }
                    let taps = |ox: usize| &columns[ox * stride..][..kernel];
                    let done = if (kernel, stride) == (3, 2) { max3_stride2(&columns, row) } else { 0 };
                    let row = &mut row[done..];
                    let taps = |ox: usize| taps(done + ox);
                    match kernel {
                        3 => row.iter_mut().enumerate().for_each(|(ox, v)| {
                            let t: &[f32; 3] = taps(ox).try_into().expect("3 taps");
                            *v = f32::NEG_INFINITY.max(t[0]).max(t[1]).max(t[2]);
                        }),
                        _ => row.iter_mut().enumerate().for_each(|(ox, v)| {
                            *v = taps(ox).iter().fold(f32::NEG_INFINITY, |m, &p| m.max(p));
                        }),
                    }
                }
            },
        )
    });
    Ok(Tensor::new(vec![b, c, ho, wo], out))
}

/// The first outputs of a row of 3-wide windows at stride 2 over `columns` (output o is the
/// largest of columns 2o..2o + 3), 16 at a time where the CPU has AVX-512F: the even, odd and
/// next even columns of 32 taken apart by permutes, where the compiler left the strided reads
/// scalar (ResNet's stem pooling at 256 px, with `wide::vectorised` too: predict's max_pool 0.41
/// -> 0.23-0.27 ms an image). Returns how many it wrote; the caller does the rest. The column
/// maxima are never NaN (each folds from -inf, and f32::max skips NaN), so VMAXPS gives
/// f32::max's values.
fn max3_stride2(columns: &[f32], row: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        return unsafe { max3_stride2_avx512(columns, row) };
    }
    let _ = (columns, row);
    0
}

/// `max3_stride2` on AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max3_stride2_avx512(columns: &[f32], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    // 16 outputs from o read columns 2o..2o + 34.
    let whole = row.len().min(columns.len().saturating_sub(2) / 2) / 16 * 16;
    for o in (0..whole).step_by(16) {
        // SAFETY: 2o + 34 <= 2 whole + 2 <= columns.len(), and o + 16 <= whole <= row.len().
        unsafe {
            let at = columns.as_ptr().add(2 * o);
            let (lo, hi) = (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)));
            let (lo2, hi2) = (_mm512_loadu_ps(at.add(2)), _mm512_loadu_ps(at.add(18)));
            let first = _mm512_permutex2var_ps(lo, even, hi);
            let second = _mm512_permutex2var_ps(lo, odd, hi);
            let third = _mm512_permutex2var_ps(lo2, even, hi2);
            _mm512_storeu_ps(row.as_mut_ptr().add(o), _mm512_max_ps(_mm512_max_ps(first, second), third));
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::max_pool;
    use crate::tensor::Tensor;

    /// Each output the fold of its window's taps from -inf, one tap at a time, in raster order.
    fn by_definition(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Vec<f32> {
        let [b, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let out = |n: usize| (n + 2 * padding - kernel) / stride + 1;
        let mut values = Vec::new();
        for plane in x.data.chunks_exact(h * w).take(b * c) {
            for oy in 0..out(h) {
                for ox in 0..out(w) {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let (y, x) =
                                ((oy * stride + ky).wrapping_sub(padding), (ox * stride + kx).wrapping_sub(padding));
                            if y < h && x < w {
                                m = m.max(plane[y * w + x]);
                            }
                        }
                    }
                    values.push(m);
                }
            }
        }
        values
    }

    #[test]
    fn pooling_gives_the_values_of_the_definition() {
        let mut rng = crate::rng::SplitMix64::new(9);
        let specials = [f32::NAN, f32::NEG_INFINITY, -0.0, 0.0, f32::INFINITY];
        for (kernel, stride, padding, h, w) in [
            (3, 2, 1, 9, 12),
            (3, 2, 1, 8, 7),
            (3, 2, 1, 5, 70),
            (3, 2, 0, 3, 67),
            (2, 2, 0, 6, 5),
            (3, 1, 1, 4, 4),
            (5, 3, 2, 11, 13),
            (1, 1, 0, 3, 2),
        ] {
            let data: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| if i % 7 == 2 { specials[i / 7 % specials.len()] } else { (5.0 * rng.normal()) as f32 })
                .collect();
            let x = Tensor::new(vec![2, 3, h, w], data);
            let got = max_pool(&x, kernel, stride, padding).unwrap();
            // Equal as values: no output is NaN (every fold starts at -inf and f32::max skips
            // NaN), and which of -0.0 and 0.0 wins a tie is f32::max's choice, in any order.
            let want = by_definition(&x, kernel, stride, padding);
            assert_eq!(got.data, want, "{kernel}/{stride}/{padding} {h}x{w}");
        }
    }
}
