//! Fused pairwise-distance top-k: PatchCore's nearest-neighbour search against the memory bank.
//!
//! The distance matrix for a real model (4096 query patches x 13k bank rows) is 215 MB; this kernel
//! never builds it. Query tiles run in parallel; each multiplies its `TILE_Q` queries against
//! `TILE_M` bank rows at a time with a single-threaded sgemm into a small scratch tile (kept hot in
//! cache) and folds that tile into per-query running top-k lists before the next one overwrites it.

use super::knn_screen::knn_screened;
use super::CpuBank;
use crate::wide::vectorised;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Queries per parallel task. 4096 queries make 16 tasks: enough to balance 2 (or 16) threads,
/// and large enough that gemm's repacking of each bank tile is amortised over many rows.
/// (Measured on 2 cores at 4096 x 13107 x 384: 256 x 1024 tiles were the fastest of 128..1024 x
/// 512..4096, and a sequential loop over 1024 x 1024 tiles with gemm's own rayon parallelism and a
/// parallel fold was no faster.)
const TILE_Q: usize = 256;
/// Bank rows per gemm call. The `TILE_Q x TILE_M` scratch tile is 1 MiB per running task.
const TILE_M: usize = 1024;
/// Columns the fold tests at once with a branch-free (vectorised) comparison before looking at
/// individual candidates; once the top-k lists have settled almost every block is rejected whole.
const FOLD_BLOCK: usize = 64;

/// |row|^2 for each `d`-wide row, accumulated in f64 so the norm adds no error of its own to the
/// cancellation-prone |q|^2 - 2 q.m + |m|^2.
pub fn squared_norms(rows: &[f32], d: usize) -> Vec<f32> {
    assert!(
        d > 0 && rows.len().is_multiple_of(d),
        "squared_norms: {} values is not a whole number of {d}-wide rows",
        rows.len()
    );
    vectorised(
        #[inline(always)]
        || rows.chunks_exact(d).map(|r| squared_norm(r) as f32).collect(),
    )
}

/// |row|^2 in float64, in 8 lanes so that it vectorises: one sum chained through every value
/// waits on each addition's latency (1,024 rows of 384 values: 0.23 ms, in lanes 0.075 ms).
#[inline(always)]
fn squared_norm(row: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64 * x as f64).sum();
    for chunk in chunks {
        for (s, &x) in acc.iter_mut().zip(chunk) {
            *s += x as f64 * x as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// |x - y|^2 in float64, in 8 lanes so that it vectorises (as `squared_norm`). The direct form
/// rather than the expanded one: each difference of two f32 is exact in f64 (for exponents less
/// than 29 apart) and the terms are non-negative, so the sum is within d 2^-53 of the distance
/// itself, where the expanded form |x|^2 - 2 x.y + |y|^2 would only be within that of |x|^2 +
/// |y|^2 (50x the distance for ResNet-18 neighbours) and needs no norms.
#[inline(always)]
pub fn squared_distance(x: &[f32], y: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f64 = xc.remainder().iter().zip(yc.remainder()).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    for (a, b) in xc.zip(yc) {
        for ((s, &p), &q) in acc.iter_mut().zip(a).zip(b) {
            let e = p as f64 - q as f64;
            *s += e * e;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The search `CpuBackend::knn` and predict's scoring run: through the bf16 screening pass
/// (`knn_screen`, the float64 neighbours and distances rounded to f32, so `knn_topk`'s up to its
/// f32 rounding) where the bank has its screening form and the queries suit it, else `knn_topk`.
pub fn nearest(queries: &[f32], bank: &CpuBank, d: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    bank.screen
        .as_ref()
        .and_then(|screen| knn_screened(queries, &bank.rows.data, screen, d, k))
        .unwrap_or_else(|| knn_topk(queries, &bank.rows.data, bank.sq_norms(), d, k))
}

/// For each query row, the `k` nearest bank rows by true L2 distance, ascending; ties go to the lower index.
/// `queries`: nq x d row-major, `bank`: m x d row-major, `bank_sq_norms`: |m_j|^2 for each bank row (precomputed once per model).
/// Distances are sqrt(max(0, |q|^2 - 2 q.m + |m|^2)), as anomalib >= 0.7 computes them.
/// Returns (distances, indices), each nq * k, row-major. Precondition: 1 <= k <= m (the caller validates; debug_assert).
///
/// Ranking is by the clamped squared distance (the square root is monotone), so "ties" are equal
/// squared distances. A slot that no bank row fills (k > m, or distances that are all NaN because
/// the inputs hold NaN or infinity) comes back as (NaN, 0).
///
/// Extra memory, independent of m: per running task a `TILE_Q x TILE_M` f32 tile (1 MiB), gemm's
/// packed bank tile (at most d x TILE_M f32, 1.5 MiB at d = 384), its packed query tile (at most
/// TILE_Q x d f32) and its thread-local L2-sized slab; at most min(threads, ceil(nq / TILE_Q))
/// tasks run at once. At nq = 4096, d = 384: about 3.4 MiB per task, 7 MiB on 2 threads and
/// 55 MiB at most on any thread count (16 tasks).
pub fn knn_topk(queries: &[f32], bank: &[f32], bank_sq_norms: &[f32], d: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    assert!(
        d > 0 && queries.len().is_multiple_of(d) && bank.len().is_multiple_of(d),
        "knn_topk: inputs are not whole {d}-wide rows"
    );
    let (nq, m) = (queries.len() / d, bank.len() / d);
    assert_eq!(bank_sq_norms.len(), m, "knn_topk: one squared norm per bank row");
    assert!(m <= u32::MAX as usize, "knn_topk: bank indices must fit in u32");
    debug_assert!(1 <= k && k <= m, "knn_topk: need 1 <= k ({k}) <= bank rows ({m})");
    let mut dist = vec![f32::INFINITY; nq * k];
    let mut idx = vec![0u32; nq * k];
    if k == 0 || nq == 0 {
        return (dist, idx);
    }
    dist.par_chunks_mut(TILE_Q * k).zip(idx.par_chunks_mut(TILE_Q * k)).enumerate().for_each(
        |(t, (tile_d, tile_i))| {
            let tq = tile_d.len() / k;
            let qs = &queries[t * TILE_Q * d..][..tq * d];
            let q_norms = squared_norms(qs, d);
            let mut dots = vec![0f32; tq * TILE_M.min(m)];
            // Bank tiles in ascending order: every candidate a query has already kept has a lower
            // index than the ones still to come, so "ties go to the lower index" is a strict `<`.
            for b0 in (0..m).step_by(TILE_M) {
                let tb = TILE_M.min(m - b0);
                // SAFETY: dst is tq x tb (row stride tb) inside `dots`; lhs is the tq x d query tile
                // (row stride d); rhs is bank rows b0..b0+tb read as a d x tb matrix (column stride d).
                // All three lie within their slices, which outlive the call.
                unsafe {
                    gemm(
                        tq,
                        tb,
                        d,
                        dots.as_mut_ptr(), // dst: tq x tb, row-major
                        1,
                        tb as isize,
                        false,       // dst is overwritten, so alpha is ignored
                        qs.as_ptr(), // lhs: tq x d, row-major
                        1,
                        d as isize,
                        bank[b0 * d..].as_ptr(), // rhs: d x tb, column j = bank row b0 + j
                        d as isize,
                        1,
                        0.0,
                        -2.0, // dots = -2 q.m: scaling by 2 is exact
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                let norms = &bank_sq_norms[b0..b0 + tb];
                for (r, row) in dots[..tq * tb].chunks_exact(tb).enumerate() {
                    fold_row(row, q_norms[r], norms, b0 as u32, &mut tile_d[r * k..][..k], &mut tile_i[r * k..][..k]);
                }
            }
            for (dd, ii) in tile_d.iter_mut().zip(tile_i.iter_mut()) {
                if *dd == f32::INFINITY {
                    (*dd, *ii) = (f32::NAN, 0);
                } else {
                    *dd = dd.sqrt();
                }
            }
        },
    );
    (dist, idx)
}

/// Folds one query's row of `-2 q.m` values for bank rows `base..` into its sorted top-k list of
/// squared distances (`best_d` ascending, +inf in unfilled slots).
fn fold_row(neg2_dots: &[f32], q_norm: f32, bank_norms: &[f32], base: u32, best_d: &mut [f32], best_i: &mut [u32]) {
    let k = best_d.len();
    let mut worst = best_d[k - 1];
    for (blk, (dots, norms)) in neg2_dots.chunks(FOLD_BLOCK).zip(bank_norms.chunks(FOLD_BLOCK)).enumerate() {
        // Unclamped values: anything whose clamped value beats `worst` is flagged, and a few false
        // positives (negative values against worst == 0) are rejected below.
        let hit = dots.iter().zip(norms).fold(false, |h, (&t, &n)| h | ((q_norm + t) + n < worst));
        if !hit {
            continue;
        }
        for (j, (&t, &n)) in dots.iter().zip(norms).enumerate() {
            // anomalib's order: (|q|^2 - 2 q.m) + |m|^2, clamped at 0; NaN stays NaN and never ranks.
            let raw = (q_norm + t) + n;
            let sq = if raw < 0.0 { 0.0 } else { raw };
            if sq < worst {
                // Equal distances already kept have lower indices, so they stay in front.
                let pos = best_d.iter().position(|&b| b > sq).unwrap_or(k - 1);
                best_d.copy_within(pos..k - 1, pos + 1);
                best_i.copy_within(pos..k - 1, pos + 1);
                best_d[pos] = sq;
                best_i[pos] = base + (blk * FOLD_BLOCK + j) as u32;
                worst = best_d[k - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Float64 brute force for one query: the distance to every bank row, by index.
    fn exact_distances(qr: &[f32], bank: &[f32], d: usize) -> Vec<f64> {
        bank.chunks_exact(d)
            .map(|br| qr.iter().zip(br).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt())
            .collect()
    }

    fn check(nq: usize, m: usize, d: usize, k: usize, seed: u64) {
        let q = random(nq * d, seed);
        let bank = random(m * d, seed + 1);
        let (dist, idx) = knn_topk(&q, &bank, &squared_norms(&bank, d), d, k);
        assert_eq!((dist.len(), idx.len()), (nq * k, nq * k));
        for (i, qr) in q.chunks_exact(d).enumerate() {
            let truth = exact_distances(qr, &bank, d);
            // Stable sort: ties go to the lower index.
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| truth[a].total_cmp(&truth[b]));
            let exact: Vec<(f64, u32)> = order.iter().map(|&j| (truth[j], j as u32)).collect();
            for s in 0..k {
                let (got_d, got_i) = (dist[i * k + s], idx[i * k + s]);
                let (want_d, want_i) = exact[s];
                // The expanded form |q|^2 - 2 q.m + |m|^2 cancels catastrophically for near-identical
                // rows, so its error is absolute (relative to the norms), not relative to the distance.
                assert!((got_d as f64 - want_d).abs() <= 1e-4 * want_d.max(1.0), "q {i} slot {s}: {got_d} vs {want_d}");
                if got_i != want_i {
                    // f32 may order near-ties differently: accept only a candidate whose exact
                    // distance is within 1e-5 relative of the reference's.
                    let alt = truth[got_i as usize];
                    assert!(
                        (alt - want_d).abs() <= 1e-5 * want_d.max(1e-30),
                        "q {i} slot {s}: index {got_i} ({alt}) vs {want_i} ({want_d})"
                    );
                }
            }
            let mut seen = idx[i * k..(i + 1) * k].to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), k, "query {i} repeats an index");
        }
    }

    #[test]
    fn awkward_sizes_match_float64() {
        for &k in &[1, 3, 9] {
            check(37, 1000, 19, k, 10 + k as u64);
            check(300, 4500, 7, k, 20 + k as u64); // more than one query tile and bank tile, ragged ends
        }
    }

    #[test]
    fn bank_smaller_than_tile_and_k_equals_m() {
        check(5, 100, 33, 9, 3);
        check(11, 9, 5, 9, 4);
        check(3, 1, 8, 1, 5);
    }

    #[test]
    fn duplicate_bank_rows_tie_to_lower_index() {
        let d = 6;
        let base = random(4 * d, 7);
        // Rows 1, 3, 4 and 6 are the same vector; row 0, 2 and 5 differ.
        let order = [0usize, 1, 2, 1, 1, 3, 1];
        let bank: Vec<f32> = order.iter().flat_map(|&r| base[r * d..(r + 1) * d].to_vec()).collect();
        let query = base[d..2 * d].to_vec();
        let (dist, idx) = knn_topk(&query, &bank, &squared_norms(&bank, d), d, 4);
        assert_eq!(&idx, &[1, 3, 4, 6]);
        assert!(dist.iter().all(|&x| x.abs() < 1e-3), "{dist:?}");
        // k = 1 over a bank of identical rows: index 0, whatever the query.
        let same: Vec<f32> = (0..5).flat_map(|_| base[..d].to_vec()).collect();
        let (_, idx) = knn_topk(&base[2 * d..3 * d], &same, &squared_norms(&same, d), d, 1);
        assert_eq!(idx, vec![0]);
    }

    #[test]
    fn empty_queries() {
        let bank = random(10 * 4, 1);
        let (dist, idx) = knn_topk(&[], &bank, &squared_norms(&bank, 4), 4, 3);
        assert!(dist.is_empty() && idx.is_empty());
    }
}
