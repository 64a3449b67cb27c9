//! The sparse random projection that makes the coreset search cheaper (anomalib's
//! SparseRandomProjection, after Li et al. 2006): each output dimension sums a random
//! ~1/sqrt(D) fraction of the input dimensions with random signs.

use crate::rng::SplitMix64;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Johnson-Lindenstrauss dimension for `n` points and distortion `eps`:
/// floor(4 ln n / (eps^2 / 2 - eps^3 / 3)), as sklearn's johnson_lindenstrauss_min_dim.
pub fn jl_dims(n: usize, eps: f64) -> usize {
    (4.0 * (n.max(2) as f64).ln() / (eps * eps / 2.0 - eps * eps * eps / 3.0)) as usize
}

/// anomalib's distortion: 0.9, about 24.7 ln n dimensions.
pub const EPS: f64 = 0.9;

pub struct SparseProjection {
    in_dims: usize,
    /// For each output dimension: the input dimensions it reads and whether negated.
    columns: Vec<Vec<(u32, bool)>>,
    scale: f32,
}

impl SparseProjection {
    /// A projection for `n` rows of `in_dims`, or None when the JL dimension is not smaller
    /// than the input (projecting would then cost time and buy nothing).
    pub fn new(n: usize, in_dims: usize, seed: u64) -> Option<Self> {
        let out_dims = jl_dims(n, EPS);
        if out_dims >= in_dims {
            return None;
        }
        let density = 1.0 / (in_dims as f64).sqrt();
        let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_C0DE);
        let columns = (0..out_dims)
            .map(|_| {
                let mut column = Vec::new();
                for i in 0..in_dims as u32 {
                    if rng.next_f64() < density {
                        column.push((i, rng.next_u64() & 1 == 1));
                    }
                }
                column
            })
            .collect();
        let scale = ((1.0 / density).sqrt() / (out_dims as f64).sqrt()) as f32;
        Some(SparseProjection { in_dims, columns, scale })
    }

    pub fn out_dims(&self) -> usize {
        self.columns.len()
    }

    /// The nonzero entries of the projection matrix.
    pub fn nonzeros(&self) -> usize {
        self.columns.iter().map(Vec::len).sum()
    }

    /// Projects rows x in_dims to rows x out_dims.
    pub fn apply(&self, rows: &Tensor) -> Tensor {
        let n = rows.data.len() / self.in_dims;
        let k = self.out_dims();
        let mut out = vec![0.0f32; n * k];
        out.par_chunks_mut(k).zip(rows.data.par_chunks(self.in_dims)).for_each(|(dst, row)| {
            for (d, column) in dst.iter_mut().zip(&self.columns) {
                let sum: f32 =
                    column.iter().map(|&(i, neg)| if neg { -row[i as usize] } else { row[i as usize] }).sum();
                *d = sum * self.scale;
            }
        });
        Tensor::new(vec![n, k], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jl_dims_matches_sklearn() {
        // sklearn.random_projection.johnson_lindenstrauss_min_dim(100000, eps=0.9) == 284
        assert_eq!(jl_dims(100_000, 0.9), 284);
        assert_eq!(jl_dims(1000, 0.9), 170);
    }

    #[test]
    fn projection_roughly_preserves_distances() {
        let mut rng = SplitMix64::new(1);
        let (n, d) = (200_000usize, 1536);
        let p = SparseProjection::new(n, d, 7).expect("projects");
        let rows = Tensor::new(vec![2, d], (0..2 * d).map(|_| rng.normal() as f32).collect());
        let z = p.apply(&rows);
        let dist = |v: &[f32], w: usize| (0..w).map(|i| (v[i] - v[w + i]).powi(2)).sum::<f32>().sqrt();
        let ratio = dist(&z.data, p.out_dims()) / dist(&rows.data, d);
        assert!((0.8..1.2).contains(&ratio), "distance ratio {ratio}");
    }
}
