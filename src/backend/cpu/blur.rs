//! The anomaly map on the CPU: nearest upsample of the patch scores, then a separable
//! Gaussian blur with reflect padding.

use crate::backend::checks::map_args;
use crate::error::Result;
use crate::resample::nearest_index;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The normalised 1-D Gaussian: 2 * int(4 * sigma + 0.5) + 1 taps (33 for sigma = 4, as
/// anomalib's GaussianBlur2d), exp(-x^2 / 2 sigma^2), summing to 1.
pub fn gaussian_taps(sigma: f32) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let raw: Vec<f32> = (-radius..=radius).map(|x| (-((x * x) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = raw.iter().sum();
    raw.iter().map(|v| v / total).collect()
}

/// torch "reflect": mirror without repeating the edge (d c b | a b c d | c b a). Periodic
/// beyond one reflection, so maps smaller than the kernel radius never fail.
fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    (if m >= n as i64 { period - m } else { m }) as usize
}

pub fn anomaly_map(scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Result<Tensor> {
    let [b, h, w] = map_args(&scores.shape, out_h, out_w, sigma)?;
    let taps = gaussian_taps(sigma);
    let radius = (taps.len() / 2) as i64;
    let ny = nearest_index(h, out_h);
    let nx = nearest_index(w, out_w);
    let mut out = vec![0.0f32; b * out_h * out_w];
    out.par_chunks_mut(out_h * out_w).zip(scores.data.par_chunks(h * w)).for_each(|(dst, grid)| {
        // Horizontal pass straight from the (implicitly upsampled) grid.
        let mut rows = vec![0.0f32; out_h * out_w];
        for y in 0..out_h {
            let line = &grid[ny[y] * w..(ny[y] + 1) * w];
            for x in 0..out_w {
                rows[y * out_w + x] = taps
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| k * line[nx[reflect(x as i64 + t as i64 - radius, out_w)]])
                    .sum();
            }
        }
        for y in 0..out_h {
            for x in 0..out_w {
                dst[y * out_w + x] = taps
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| k * rows[reflect(y as i64 + t as i64 - radius, out_h) * out_w + x])
                    .sum();
            }
        }
    });
    Ok(Tensor::new(vec![b, out_h, out_w], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_match_anomalib_size_and_sum() {
        let t = gaussian_taps(4.0);
        assert_eq!(t.len(), 33);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(t[16] > t[15] && (t[15] - t[17]).abs() < 1e-9);
    }

    #[test]
    fn reflect_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn constant_scores_stay_constant() {
        let scores = Tensor::new(vec![1, 2, 2], vec![3.0; 4]);
        let map = anomaly_map(&scores, 8, 8, 4.0).unwrap();
        assert!(map.data.iter().all(|v| (v - 3.0).abs() < 1e-5));
    }
}
