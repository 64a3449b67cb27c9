//! The screened kNN's bank chunks as balls, so that a block of queries can skip a chunk whole.
//!
//! The bank is reordered once, when the model loads, by recursive bisection: each group of rows is
//! split at a multiple of the chunk size along its principal direction (power iteration on a
//! sample), until groups are one chunk. Each chunk then has a centre c (its mean, in f32) and a
//! radius r >= max |m - c| over its rows (float64, rounded up). For a query q every row m of the
//! chunk has |q - m| >= |q - c| - r, so once a query's k-th best squared distance so far is below
//! (|q - c| - r)^2 no row of the chunk can enter its answer. On ResNet-18 embeddings of 256 px
//! images (a 10,240-row coreset) the bound, given each query's true nearest distance, rules out
//! 54% of the (32-query block, chunk) pairs with chunks of 256 rows and 68% with 64; in the
//! bank's own order (the coreset's, which spreads its rows on purpose) 0.1% (a one-off
//! experiment, docs/PERFORMANCE.md).

use super::knn::squared_distance;
use super::knn_screen::CHUNK;
use super::matmul::sgemm;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::wide::vectorised;
use rayon::prelude::*;

/// An order of a bank's m rows (a permutation of 0..m) that makes each run of the screened
/// kNN's `CHUNK` rows a tight group: `cluster_order`'s. The model file keeps it with the rows, so
/// that a load need not bisect the bank again (12-19 ms of the chip model's 47-58 ms load). The
/// search is exact in any order; a looser one only skips fewer chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOrder(pub(super) Vec<u32>);

impl ClusterOrder {
    /// The order `cluster_order` finds for the m x d `rows`.
    pub fn of(rows: &[f32], d: usize) -> ClusterOrder {
        ClusterOrder(cluster_order(rows, d, CHUNK))
    }

    /// `order` as the order of m rows, or what is wrong with it: it must hold each of 0..m once.
    pub fn new(order: Vec<u32>, m: usize) -> Result<ClusterOrder, String> {
        if order.len() != m {
            return Err(format!("{} entries for {m} rows", order.len()));
        }
        let mut seen = vec![false; m];
        for (at, &i) in order.iter().enumerate() {
            match seen.get_mut(i as usize) {
                None => return Err(format!("row {i} (at {at}) is beyond the {m} rows")),
                Some(true) => return Err(format!("row {i} comes twice (again at {at})")),
                Some(seen) => *seen = true,
            }
        }
        Ok(ClusterOrder(order))
    }

    /// Row i of the order is the bank's row `as_slice()[i]`.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// Whether this is an order of `rows` (m x d): of m rows, not another bank's.
    pub fn check(&self, rows: &Tensor) -> Result<()> {
        let ([m, _], n) = (rows.dims2()?, self.0.len());
        match n == m {
            true => Ok(()),
            false => Err(Error::invalid_backend_input(format!("a cluster order of {n} rows for a bank of {m}"))),
        }
    }
}

/// The order of the bank's rows that makes each run of `chunk` rows a tight group.
pub fn cluster_order(rows: &[f32], d: usize, chunk: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..(rows.len() / d) as u32).collect();
    bisect(rows, d, chunk, &mut order);
    order
}

/// Sorts `ids` (in place) so that its first part, a multiple of `chunk` rows, lies on one side of
/// the group's principal direction, then does the same within each part. Compiled for the CPU's
/// widest vectors (`wide`): the model's load spends most of the bank's preparation here (27-30 ms
/// of 47-51 on the chip model with the SSE build).
fn bisect(rows: &[f32], d: usize, chunk: usize, ids: &mut [u32]) {
    vectorised(
        #[inline(always)]
        || split_by_direction(rows, d, chunk, ids),
    )
}

/// One step of `bisect`: the split of `ids`, then `bisect` of each part in parallel.
#[inline(always)]
fn split_by_direction(rows: &[f32], d: usize, chunk: usize, ids: &mut [u32]) {
    if ids.len() <= chunk {
        return;
    }
    let row = |i: u32| &rows[i as usize * d..][..d];
    // A few steps of power iteration on at most 512 rows of the group, centred on their own
    // mean: a direction close to the group's widest is enough for tight halves, and the model's
    // load time pays for every pass over the group (this leaves one, the split's).
    let sample: Vec<u32> = ids.iter().step_by(ids.len().div_ceil(512)).copied().collect();
    let mut mean = vec![0f32; d];
    for &i in &sample {
        for (m, &x) in mean.iter_mut().zip(row(i)) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= sample.len() as f32);
    // (row - mean) . v, as row . v - mean . v: plain dot products, which vectorise.
    let centred = |i: u32, v: &[f32], mean_v: f32| dot(row(i), v) - mean_v;
    let mut v: Vec<f32> = (0..d).map(|j| if j % 2 == 0 { 1.0 } else { -0.5 }).collect();
    for _ in 0..5 {
        // next = sum of p (row - mean) over the sample, p = (row - mean) . v.
        let (mut next, mut total) = (vec![0f32; d], 0f32);
        let mean_v = dot(&mean, &v);
        for &i in &sample {
            let p = centred(i, &v, mean_v);
            total += p;
            for (a, &x) in next.iter_mut().zip(row(i)) {
                *a += p * x;
            }
        }
        for (a, &m) in next.iter_mut().zip(&mean) {
            *a -= total * m;
        }
        let norm = next.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            break;
        }
        v = next.iter().map(|x| x / norm).collect();
    }
    // Sequential within a group: the halves below run in parallel (`rayon::join`). By row . v:
    // the order of (row - mean) . v, as the mean's term is the same for every row.
    // A loop, not a collected map, which the compiler kept out of line (and so 4 lanes wide).
    let mut keyed = Vec::with_capacity(ids.len());
    for &i in ids.iter() {
        keyed.push((dot(row(i), &v), i));
    }
    keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (dst, (_, i)) in ids.iter_mut().zip(keyed) {
        *dst = i;
    }
    let half = (ids.len() / 2).div_ceil(chunk) * chunk;
    let (left, right) = ids.split_at_mut(half);
    rayon::join(|| bisect(rows, d, chunk, left), || bisect(rows, d, chunk, right));
}

/// a . b in 16 lanes (a plain sum does not vectorise: f32 addition is not reassociated).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let tail = a.len() - a.len() % LANES;
    acc.iter().sum::<f32>() + a[tail..].iter().zip(&b[tail..]).map(|(&x, &y)| x * y).sum::<f32>()
}

/// Per chunk of `chunk` rows of the `cluster_order`: centre, |centre|^2, radius.
pub struct Balls {
    centres: Vec<f32>,
    sq_norms: Vec<f32>,
    radii: Vec<f32>,
}

impl Balls {
    /// The balls of `rows` taken in `order`, `chunk` at a time.
    pub fn new(rows: &[f32], order: &[u32], d: usize, chunk: usize) -> Balls {
        let row = |i: &u32| &rows[*i as usize * d..][..d];
        let (centres, radii): (Vec<Vec<f32>>, Vec<f32>) = order
            .par_chunks(chunk)
            .map(|group| {
                vectorised(
                    #[inline(always)]
                    || {
                        let mut sum = vec![0f64; d];
                        for r in group.iter().map(row) {
                            for (c, &x) in sum.iter_mut().zip(r) {
                                *c += x as f64;
                            }
                        }
                        let centre: Vec<f32> = sum.iter().map(|&c| (c / group.len() as f64) as f32).collect();
                        // In lanes: a sum of d terms in one chain waits on each addition (the
                        // balls of a 10,240-row bank took 3.5 ms of each load).
                        let radius =
                            group.iter().map(row).map(|r| squared_distance(r, &centre)).fold(0f64, f64::max).sqrt();
                        // Rounded up: the f64 sum is within 1e-13 of itself, the cast within 2^-24.
                        (centre, (radius * (1.0 + 1e-6)) as f32)
                    },
                )
            })
            .unzip();
        let centres: Vec<f32> = centres.concat();
        let sq_norms = super::knn::squared_norms(&centres, d);
        Balls { centres, sq_norms, radii }
    }

    pub fn len(&self) -> usize {
        self.radii.len()
    }

    /// `lower[q * len + c]`: a lower bound on the squared distance from query q (of `qs`, with
    /// squared norms `q_sq`) to every row of chunk c. |q - c|^2 comes from the expanded form in
    /// f32 (one sgemm), whose error is below (d + 8) u (|q|^2 + |c|^2): twice that is taken off
    /// before the square root, and the result rounded down by 1e-6.
    pub fn lower_bounds(&self, qs: &[f32], q_sq: &[f32], d: usize) -> Vec<f32> {
        let (nq, n) = (q_sq.len(), self.len());
        let mut lower = vec![0f32; nq * n];
        sgemm(nq, n, d, qs, &self.centres, true, &mut lower, false);
        let u = f32::EPSILON / 2.0;
        for (row, &qq) in lower.chunks_exact_mut(n).zip(q_sq) {
            for ((v, &cc), &r) in row.iter_mut().zip(&self.sq_norms).zip(&self.radii) {
                let sum = qq + cc;
                let estimate = sum - 2.0 * *v - 2.0 * (d as f32 + 8.0) * u * sum;
                let apart = estimate.max(0.0).sqrt() * (1.0 - 1e-6) - r;
                *v = if apart > 0.0 { apart * apart * (1.0 - 1e-6) } else { 0.0 };
            }
        }
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::knn::squared_norms;
    use crate::rng::SplitMix64;

    /// `clusters` groups of `size` rows around centres 50 apart (noise 1), interleaved.
    fn clustered(clusters: usize, size: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let centres: Vec<f32> = (0..clusters * d).map(|_| (50.0 * rng.normal()) as f32).collect();
        (0..clusters * size)
            .flat_map(|i| (0..d).map(|j| centres[(i % clusters) * d + j]).collect::<Vec<_>>())
            .map(|c| c + rng.normal() as f32)
            .collect()
    }

    fn sq_distance(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum()
    }

    #[test]
    fn chunks_are_the_clusters_and_rule_the_others_out() {
        let (d, size) = (24, 64);
        let rows = clustered(4, size, d, 1);
        let order = cluster_order(&rows, d, size);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..4 * size as u32).collect::<Vec<_>>(), "a permutation");
        for chunk in order.chunks(size) {
            // Rows were interleaved by cluster: row i belongs to cluster i % 4.
            assert!(chunk.iter().all(|&i| i % 4 == chunk[0] % 4), "one cluster per chunk: {chunk:?}");
        }
        let ordered: Vec<f32> = order.iter().flat_map(|&i| &rows[i as usize * d..][..d]).copied().collect();
        let balls = Balls::new(&rows, &order, d, size);
        // A query on a row of the first chunk: the other three chunks' bounds exceed its distance
        // to that row, the first chunk's bound is 0.
        let q = &ordered[5 * d..6 * d];
        let lower = balls.lower_bounds(q, &squared_norms(q, d), d);
        assert_eq!(lower[0], 0.0);
        assert!(lower[1..].iter().all(|&l| l > 100.0), "{lower:?}");
    }

    #[test]
    fn an_order_holds_each_row_once() {
        assert_eq!(ClusterOrder::new(vec![2, 0, 1], 3).map(|o| o.as_slice().to_vec()), Ok(vec![2, 0, 1]));
        assert_eq!(ClusterOrder::new(vec![2, 0], 3), Err("2 entries for 3 rows".into()));
        assert_eq!(ClusterOrder::new(vec![2, 0, 3], 3), Err("row 3 (at 2) is beyond the 3 rows".into()));
        assert_eq!(ClusterOrder::new(vec![1, 0, 1], 3), Err("row 1 comes twice (again at 2)".into()));
        let rows = clustered(3, 50, 8, 4);
        let found = ClusterOrder::of(&rows, 8);
        assert_eq!(ClusterOrder::new(found.as_slice().to_vec(), 150).as_ref(), Ok(&found));
    }

    #[test]
    fn lower_bounds_never_exceed_a_rows_distance() {
        let d = 40;
        let rows = clustered(6, 50, d, 2);
        let order = cluster_order(&rows, d, 64);
        let ordered: Vec<f32> = order.iter().flat_map(|&i| &rows[i as usize * d..][..d]).copied().collect();
        let balls = Balls::new(&rows, &order, d, 64);
        // Queries: rows themselves, points between clusters, far points, large norms.
        let mut rng = SplitMix64::new(3);
        let mut queries: Vec<f32> = rows[..10 * d].to_vec();
        queries.extend((0..20 * d).map(|i| rows[i % rows.len()] * 0.5 + rows[(i * 7) % rows.len()] * 0.5));
        queries.extend((0..10 * d).map(|_| (1e3 * rng.normal()) as f32));
        let q_sq = squared_norms(&queries, d);
        let lower = balls.lower_bounds(&queries, &q_sq, d);
        let mut tight = 0f64;
        for (qi, q) in queries.chunks_exact(d).enumerate() {
            for (c, group) in ordered.chunks(64 * d).enumerate() {
                let nearest = group.chunks_exact(d).map(|m| sq_distance(q, m)).fold(f64::INFINITY, f64::min);
                let l = lower[qi * balls.len() + c] as f64;
                assert!(l <= nearest, "query {qi} chunk {c}: bound {l} above a row at {nearest}");
                tight = tight.max(l / nearest);
            }
        }
        assert!(tight > 0.3, "the bounds rule nothing out: largest bound / distance {tight}");
    }
}
