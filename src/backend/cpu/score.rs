//! Scoring on the CPU, the reference for every backend: patch scores from the nearest bank row,
//! each image's most anomalous patch, the image score of paper Eq. 7 with anomalib's choices, and
//! the anomaly map.

use super::blur::anomaly_map;
use super::knn;
use super::CpuBank;
use crate::backend::{flops, BatchScores};
use crate::error::Result;
use crate::tensor::Tensor;
use crate::trace;

/// Each image's most anomalous patch, as a row of `distances` (`per_image` patches per image): the
/// first maximum, as torch.argmax. A NaN never wins (it is no distance at all); an image of NaNs
/// only gets its first patch.
pub fn top_patches(distances: &[f32], per_image: usize) -> Vec<u32> {
    distances
        .chunks_exact(per_image)
        .enumerate()
        .map(|(image, patches)| {
            let mut top: Option<usize> = None;
            for (i, &v) in patches.iter().enumerate() {
                if !v.is_nan() && top.is_none_or(|t| v > patches[t]) {
                    top = Some(i);
                }
            }
            (image * per_image + top.unwrap_or(0)) as u32
        })
        .collect()
}

/// anomalib's distance, sqrt(max(0, |x|^2 - 2 x.y + |y|^2)), so scores match it bit for bit
/// in the common case.
fn expanded_distance(x: &[f32], y: &[f32]) -> f32 {
    let (mut xx, mut xy, mut yy) = (0.0f32, 0.0f32, 0.0f32);
    for (&a, &b) in x.iter().zip(y) {
        xx += a * a;
        xy += a * b;
        yy += b * b;
    }
    (xx - 2.0 * xy + yy).max(0.0).sqrt()
}

/// Paper Eq. 7 for one image: its most anomalous patch `query` (patch score `patch_score`), and
/// `support`, the bank rows nearest to that patch's nearest bank row m* (m* first): with
/// d_j = ||query - support_j||, (1 - softmax(d)[0]) * patch_score.
pub fn reweighted_score<'a>(query: &[f32], support: impl Iterator<Item = &'a [f32]>, patch_score: f32) -> f32 {
    let dist: Vec<f32> = support.map(|row| expanded_distance(query, row)).collect();
    // Softmax with the maximum subtracted: the same value, without overflow.
    let top = dist.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = dist.iter().map(|v| (v - top).exp()).sum();
    (1.0 - (dist[0] - top).exp() / total) * patch_score
}

/// `Backend::score` for arguments `score_args` has checked ([B, h, w, d]). One neighbour means the
/// plain maximum; the support sets of the whole batch come from one search. Traced as its three
/// stages: knn, eq7 (the top patches and the support search with it) and anomaly_map.
pub fn score(
    embedding: &Tensor,
    bank: &CpuBank,
    [b, h, w, d]: [usize; 4],
    num_neighbors: usize,
    [out_h, out_w]: [usize; 2],
    sigma: f32,
) -> Result<BatchScores> {
    let m = bank.rows.shape[0];
    let knn = trace::span("knn").work(|| flops::knn(b * h * w, m, d, 1));
    let (distances, nearest) = knn::nearest(&embedding.data, bank, d, 1);
    drop(knn);
    let eq7 = trace::span("eq7").work(|| flops::eq7(b, num_neighbors, d));
    let tops = top_patches(&distances, h * w);
    let max_patch_distances: Vec<f32> = tops.iter().map(|&r| distances[r as usize]).collect();
    let scores = if num_neighbors <= 1 {
        max_patch_distances.clone()
    } else {
        let m_star = bank.rows.gather_rows(&tops.iter().map(|&r| nearest[r as usize]).collect::<Vec<_>>())?;
        let (_, support) = knn::nearest(&m_star.data, bank, d, num_neighbors);
        let bank_row = |j: &u32| &bank.rows.data[*j as usize * d..][..d];
        tops.iter()
            .zip(support.chunks_exact(num_neighbors))
            .zip(&max_patch_distances)
            .map(|((&top, support), &s)| {
                reweighted_score(&embedding.data[top as usize * d..][..d], support.iter().map(bank_row), s)
            })
            .collect()
    };
    drop(eq7);
    let grids = Tensor::new(vec![b, h, w], distances);
    let _map = trace::span("anomaly_map").work(|| flops::anomaly_map(&grids.shape, out_h, out_w, sigma));
    let maps = anomaly_map(&grids, out_h, out_w, sigma)?;
    Ok(BatchScores { scores, max_patch_distances, maps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_patch_is_the_first_maximum_and_never_a_nan() {
        let nan = f32::NAN;
        let distances = [1.0, 3.0, 3.0, 2.0, nan, 0.5, nan, 0.5, nan, nan, nan, nan];
        assert_eq!(top_patches(&distances, 4), [1, 5, 8]);
    }
}
