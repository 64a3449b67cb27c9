//! The coreset stage: which training rows the memory bank keeps.

use super::projection::SparseProjection;
use crate::backend::{flops, traced, Backend};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor::Tensor;
use crate::trace;

/// floor(ratio * n), at least one row. The ratio must lie in (0, 1].
pub fn coreset_size(n: usize, ratio: f64) -> Result<usize> {
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(Error::option("--ratio", format!("{ratio}: the coreset ratio must lie in (0, 1]")));
    }
    Ok(((ratio * n as f64).floor() as usize).clamp(1, n.max(1)))
}

/// Greedy k-center selection of floor(ratio * n) rows on a seeded sparse random projection
/// (anomalib's KCenterGreedy). The same seed and rows give the same selection. A ratio of 1
/// keeps every row in order without searching.
pub fn select<B: Backend>(backend: &B, rows: &Tensor, ratio: f64, seed: u64) -> Result<Vec<u32>> {
    let [n, d] = rows.dims2()?;
    let size = coreset_size(n, ratio)?;
    if size == n {
        return Ok((0..n as u32).collect());
    }
    let mut rng = SplitMix64::new(seed);
    let start = rng.below(n as u64) as usize;
    let projected = SparseProjection::new(n, d, rng.next_u64()).map(|p| {
        let _span = trace::span("projection").work(|| flops::projection(n, d, p.nonzeros(), p.out_dims()));
        p.apply(rows)
    });
    let host = projected.as_ref().unwrap_or(rows);
    let device_rows =
        traced(backend, || trace::span("upload").work(|| flops::transfer(&host.shape, 4)), || backend.upload(host))?;
    let [_, dims] = host.dims2()?;
    traced(
        backend,
        || trace::span("coreset").work(|| flops::coreset(n, dims, size)),
        || backend.coreset(&device_rows, size, start),
    )
}
