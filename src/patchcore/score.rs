//! Scoring: patch scores from the nearest bank row, and the image score of paper Eq. 7.

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

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

/// Paper Eq. 7 with anomalib's choices, for a batch of images: for each image's most anomalous
/// patch q (row of `queries`, score s, nearest bank row m*), take the `num_neighbors` bank rows
/// nearest to m* (m* first), d_j = ||q - n_j||, and return (1 - softmax(d)[0]) * s. One
/// neighbour means the plain maximum. The support sets of the whole batch come from one search.
pub fn image_scores<B: Backend>(
    backend: &B,
    bank: &B::Bank,
    bank_rows: &Tensor,
    queries: &Tensor,
    patch_scores: &[f32],
    nearest: &[u32],
    num_neighbors: usize,
) -> Result<Vec<f32>> {
    if num_neighbors <= 1 {
        return Ok(patch_scores.to_vec());
    }
    let m_star = backend.upload(&bank_rows.gather_rows(nearest)?)?;
    let (_, support) = backend.knn(&m_star, bank, num_neighbors)?;
    let [_, d] = bank_rows.dims2()?;
    let scores = queries.data.chunks_exact(d).zip(support.chunks_exact(num_neighbors)).zip(patch_scores);
    Ok(scores
        .map(|((query, support), &patch_score)| {
            let dist: Vec<f32> =
                support.iter().map(|&j| expanded_distance(query, &bank_rows.data[j as usize * d..][..d])).collect();
            // Softmax with the maximum subtracted: the same value, without overflow.
            let top = dist.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = dist.iter().map(|v| (v - top).exp()).sum();
            (1.0 - (dist[0] - top).exp() / total) * patch_score
        })
        .collect())
}
