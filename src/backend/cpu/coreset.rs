//! Greedy k-center coreset selection (PatchCore's memory-bank subsampling), exact but pruned.
//!
//! The textbook loop reads every row once per selection: 100,000 x 384 rows to 10% is 1.5 TB of
//! memory traffic. Here every row remembers the centre it is closest to, rows are grouped into one
//! cluster per centre, and lower bounds on distances rule out whole clusters, then single rows,
//! that the new centre cannot come closer to:
//! - the triangle inequality through the row's own centre a: ||z_i - z_c|| >= D(a, c) - d_i;
//! - a projection onto the data's top principal subspace: ||U^T (z_i - z_c)|| <= ||z_i - z_c||
//!   for an orthonormal U. Embeddings have low intrinsic dimension, so 16 principal directions
//!   capture most of a distance, and the bound costs 16 flops instead of `dim`.
//!
//! Only distances that could lower some row's d are computed, with the same f32 function, so every
//! d, every argmax and hence the selection are bit-for-bit those of the textbook loop. Both bounds
//! carry margins for the rounding of the computed distances (see `greedy_coreset` and
//! `Projection::proves_at_least`). When the bounds leave most rows in play (the first steps, or
//! data without low-dimensional structure) a step sweeps all rows in index order instead, which
//! streams through memory; then a step costs a little more than a brute-force one.

use crate::rng::SplitMix64;
use rayon::prelude::*;

/// Rows per parallel work item: a big cluster is scanned in chunks of this many members. Tiny in
/// tests, so that their small inputs take every path.
const SPLIT: usize = if cfg!(test) { 64 } else { 4096 };
/// Rows whose distance is needed are fetched this many candidates ahead: they are scattered over
/// the whole input, and the hardware prefetcher only catches on within a row.
const PREFETCH_AHEAD: usize = 2;
/// When the clusters in reach hold more than 1/SWEEP_FRACTION of all rows, all rows are swept in
/// index order instead.
const SWEEP_FRACTION: usize = 8;
/// Lanes of the distance sum: row element j goes to partial sum j % LANES.
const LANES: usize = 16;
/// Dimensions of the projection used for lower bounds.
pub const PROJ: usize = 16;
/// Rows (evenly spaced) that the principal subspace is estimated from, and subspace iterations.
const SAMPLE: usize = 4096;
const POWER_ITERATIONS: usize = 3;

type Proj = [f64; PROJ];

/// ||x - y|| in f32, the distance `greedy_coreset` uses. The squares are summed in 16 lanes
/// (element j into lane j % 16) and the lanes are then added pairwise; there is no FMA. The AVX path
/// and the portable one perform exactly these operations, so every machine gets the same bits.
pub fn l2_distance(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX.
        return unsafe { l2_distance_avx(x, y) };
    }
    l2_distance_portable(x, y)
}

fn l2_distance_portable(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for ((s, &p), &q) in acc.iter_mut().zip(a).zip(b) {
            *s += (p - q) * (p - q);
        }
    }
    finish(acc, tail.0, tail.1)
}

/// Adds the `< LANES` trailing elements into lanes 0.., reduces the lanes pairwise, takes the root.
#[inline(always)]
fn finish(mut acc: [f32; LANES], x_tail: &[f32], y_tail: &[f32]) -> f32 {
    for ((s, &p), &q) in acc.iter_mut().zip(x_tail).zip(y_tail) {
        *s += (p - q) * (p - q);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        let (lo, hi) = acc.split_at_mut(width);
        for (s, &t) in lo.iter_mut().zip(&*hi) {
            *s += t;
        }
    }
    acc[0].sqrt()
}

/// `l2_distance` with two 8-lane AVX accumulators (the SSE2 baseline the crate is compiled for
/// halves the throughput, which matters when the rows are in cache).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn l2_distance_avx(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let body = n - n % LANES;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (px, py) = (x.as_ptr(), y.as_ptr());
    let mut j = 0;
    while j < body {
        // SAFETY: j + 16 <= body <= n, the length of both slices.
        let d0 = _mm256_sub_ps(_mm256_loadu_ps(px.add(j)), _mm256_loadu_ps(py.add(j)));
        let d1 = _mm256_sub_ps(_mm256_loadu_ps(px.add(j + 8)), _mm256_loadu_ps(py.add(j + 8)));
        lo = _mm256_add_ps(lo, _mm256_mul_ps(d0, d0));
        hi = _mm256_add_ps(hi, _mm256_mul_ps(d1, d1));
        j += LANES;
    }
    let mut acc = [0f32; LANES];
    _mm256_storeu_ps(acc.as_mut_ptr(), lo);
    _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
    finish(acc, &x[body..n], &y[body..n])
}

#[inline]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch has no architectural effect and cannot fault.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Selection order: larger d first, then the lower row index (the first maximum of an argmax).
#[inline]
fn beats(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// An estimate of the data's top-`PROJ` principal subspace, from a sample of the rows: what a
/// projection for lower bounds needs besides the rows themselves. The CUDA backend estimates it
/// here too, from the same sample, and projects the rows on the device.
pub struct Subspace {
    /// The sample's mean, `dim` values.
    pub mean: Vec<f64>,
    /// U, dim x PROJ, element-major (basis[k * PROJ + j] = U[k][j]), with (near-)orthonormal or zero columns.
    pub basis: Vec<f64>,
    /// An upper bound on ||U||_2 (at least 1): ||U^T v|| <= sigma ||v||.
    pub sigma: f64,
}

impl Subspace {
    /// The rows (evenly spaced) the subspace is estimated from.
    pub fn sample(n: usize) -> impl Iterator<Item = usize> {
        (0..n).step_by((n / SAMPLE).max(1))
    }

    /// Randomised subspace iteration on `sample` (the rows `Subspace::sample` names, concatenated).
    /// Its accuracy only affects how much is pruned: the bounds hold for any U, because sigma is
    /// measured from the U actually used.
    pub fn estimate(sample: &[f32], dim: usize) -> Self {
        let sample: Vec<&[f32]> = sample.chunks_exact(dim).collect();
        let mut mean = vec![0f64; dim];
        for r in &sample {
            for (m, &x) in mean.iter_mut().zip(*r) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= sample.len() as f64);

        // U is stored element-major, so projecting a row is one PROJ-wide multiply-add per element,
        // which vectorises without reassociating a sum.
        let mut rng = SplitMix64::new(0x9E37_79B9);
        let mut basis: Vec<f64> = (0..dim * PROJ).map(|_| rng.normal()).collect();
        orthonormalise(&mut basis);
        for _ in 0..POWER_ITERATIONS {
            // basis <- orth(X^T X U), X the centred sample; partial sums are added in chunk order.
            let parts: Vec<Vec<f64>> = sample
                .par_chunks(256)
                .map(|chunk| {
                    let mut w = vec![0f64; dim * PROJ];
                    for r in chunk {
                        let t = project(r, &mean, &basis);
                        for ((&x, &m), wk) in r.iter().zip(&mean).zip(w.chunks_exact_mut(PROJ)) {
                            let v = x as f64 - m;
                            for (wj, &tj) in wk.iter_mut().zip(&t) {
                                *wj += v * tj;
                            }
                        }
                    }
                    w
                })
                .collect();
            basis.iter_mut().for_each(|b| *b = 0.0);
            for w in parts {
                basis.iter_mut().zip(w).for_each(|(b, x)| *b += x);
            }
            orthonormalise(&mut basis);
        }

        // ||U||_2^2 = lambda_max(U^T U) <= max row sum of |U^T U| (Gershgorin); the 1e-12 covers
        // the rounding of the Gram matrix itself.
        let mut norm_sq = 0f64;
        for i in 0..PROJ {
            let row_sum: f64 =
                (0..PROJ).map(|j| basis.chunks_exact(PROJ).map(|u| u[i] * u[j]).sum::<f64>().abs()).sum();
            norm_sq = norm_sq.max(row_sum);
        }
        let sigma = (norm_sq * (1.0 + 1e-12)).sqrt().max(1.0);
        Subspace { mean, basis, sigma }
    }

    /// The slack of projected distances per unit of `radius`, the largest ||z - mean|| over the
    /// rows: an upper bound on the f64 rounding error of ||y_i - y_j|| against the exact
    /// ||U^T (z_i - z_j)|| is this times the radius. Each coordinate of a projection is a dim-term
    /// f64 dot product, summed in any order: its error is at most (dim + 2) u ||U[:, j]|| ||z - mean||
    /// (u = f64::EPSILON / 2), so a projected vector is off by at most sqrt(PROJ) (dim + 2) u sigma
    /// radius, and a difference of two by twice that. Doubled again for the rounding of the bound's
    /// own arithmetic.
    pub fn slack_per_radius(&self, dim: usize) -> f64 {
        2.0 * (PROJ as f64).sqrt() * (dim as f64 + 2.0) * f64::EPSILON * self.sigma
    }
}

/// The relative error bound of `l2_distance` against the exact distance, for `dim`-wide rows: a
/// rounded difference and square per element, a sum of dim positive terms, a square root.
pub fn distance_eps(dim: usize) -> f32 {
    (dim as f32 + 8.0) * f32::EPSILON
}

/// The factor of the triangle-inequality test, 2 (1 + 4 eps): see `greedy_coreset`.
pub fn prune_factor(eps: f32) -> f32 {
    2.0 * (1.0 + 4.0 * eps)
}

/// The tolerance of the projected bound, 1 + 3 eps: see `Projection::proves_at_least`.
pub fn bound_tolerance(eps: f32) -> f64 {
    1.0 + 3.0 * eps as f64
}

/// Every row projected onto a `Subspace`, in f64, with what it takes to turn projected distances
/// into safe lower bounds on `l2_distance`.
struct Projection {
    /// U^T (z_i - mean) for every row i.
    rows: Vec<Proj>,
    /// The subspace's sigma.
    sigma: f64,
    /// An upper bound on the f64 rounding error of ||y_i - y_j|| against the exact ||U^T (z_i - z_j)||.
    slack: f64,
    /// 1 + 3 eps, eps the relative error bound of `l2_distance` (see `greedy_coreset`).
    tol: f64,
}

impl Projection {
    fn new(rows: &[f32], dim: usize, eps: f32) -> Self {
        let n = rows.len() / dim;
        let sample: Vec<f32> = Subspace::sample(n).flat_map(|i| &rows[i * dim..][..dim]).copied().collect();
        let subspace = Subspace::estimate(&sample, dim);
        let (mean, basis) = (&subspace.mean, &subspace.basis);
        let projected: Vec<(Proj, f64)> = rows
            .par_chunks_exact(dim)
            .map(|r| {
                let radius_sq: f64 = r.iter().zip(mean).map(|(&x, &m)| (x as f64 - m) * (x as f64 - m)).sum();
                (project(r, mean, basis), radius_sq)
            })
            .collect();
        let radius = projected.iter().fold(0f64, |a, p| a.max(p.1)).sqrt();
        let slack = subspace.slack_per_radius(dim) * radius;
        let tol = bound_tolerance(eps);
        Projection { rows: projected.into_iter().map(|p| p.0).collect(), sigma: subspace.sigma, slack, tol }
    }

    /// True when the projections `a`, `b` of two rows prove that `l2_distance` of those rows is at
    /// least `threshold`. Exact ||U^T (z_a - z_b)|| >= ||a - b|| - slack and it is <= sigma times
    /// the exact distance, which `l2_distance` reproduces within a relative eps; `tol` = 1 + 3 eps
    /// absorbs that and the rounding of this test (all f64, far finer than eps).
    #[inline]
    fn proves_at_least(&self, a: &Proj, b: &Proj, threshold: f32) -> bool {
        let sq: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let need = (threshold as f64 * self.tol * self.sigma + self.slack) * (1.0 + 1e-12);
        sq >= need * need
    }
}

/// U^T (row - mean) for an element-major `basis`.
fn project(row: &[f32], mean: &[f64], basis: &[f64]) -> Proj {
    let mut y = [0f64; PROJ];
    for ((&x, &m), u) in row.iter().zip(mean).zip(basis.chunks_exact(PROJ)) {
        let v = x as f64 - m;
        for (yj, &uj) in y.iter_mut().zip(u) {
            *yj += uj * v;
        }
    }
    y
}

/// Modified Gram-Schmidt, twice (one pass leaves rounding-level correlations), on the PROJ columns
/// of an element-major dim x PROJ matrix. A column that is numerically dependent on the earlier
/// ones (rank-deficient data, dim < PROJ) is zeroed rather than normalised noise.
fn orthonormalise(basis: &mut [f64]) {
    let column_norm = |b: &[f64], j: usize| b.chunks_exact(PROJ).map(|u| u[j] * u[j]).sum::<f64>().sqrt();
    for j in 0..PROJ {
        let before = column_norm(basis, j);
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = basis.chunks_exact(PROJ).map(|u| u[i] * u[j]).sum();
                basis.chunks_exact_mut(PROJ).for_each(|u| u[j] -= dot * u[i]);
            }
        }
        let after = column_norm(basis, j);
        let scale = if after > 1e-6 * before { 1.0 / after } else { 0.0 };
        basis.chunks_exact_mut(PROJ).for_each(|u| u[j] *= scale);
    }
}

/// What the clusters need to know about the new centre c.
struct Step<'a> {
    z_c: &'a [f32],
    /// c's projection.
    y_c: &'a Proj,
    /// c's own d: the smallest computed distance from c to any centre.
    d_c: f32,
    /// 2 (1 + 4 eps): see `greedy_coreset`.
    factor: f32,
    proj: &'a Projection,
}

/// The rows whose nearest selected centre (or, before any has taken them, the start row) is this
/// cluster's centre. A centre is its own member at d = 0, so no cluster ever empties.
struct Cluster {
    /// The centre's projection.
    y: Proj,
    members: Vec<u32>,
    /// `farthest` over the members; `far.0` is the cluster's radius.
    far: (f32, u32),
}

impl Cluster {
    fn new(y: Proj, members: Vec<u32>, d: &[f32]) -> Self {
        let far = farthest(&members, d);
        Cluster { y, members, far }
    }

    /// D(a, c) if c might take some member away (`z_a` is this cluster's centre row), else
    /// infinity. A member i can only move if D(a, c) < factor * d_i, so only if D(a, c) < factor *
    /// radius. D(a, c) >= d_c exactly (d_c is c's minimum over all centres), so d_c may settle it
    /// already; then the projection; only then is D computed.
    fn reach(&self, s: &Step, z_a: &[f32]) -> f32 {
        let bound = s.factor * self.far.0;
        if s.d_c >= bound || s.proj.proves_at_least(&self.y, s.y_c, bound) {
            return f32::INFINITY;
        }
        let big_d = l2_distance(z_a, s.z_c);
        if big_d < bound {
            big_d
        } else {
            f32::INFINITY
        }
    }
}

/// The (d, index) among `members` that an argmax would pick.
fn farthest(members: &[u32], d: &[f32]) -> (f32, u32) {
    let mut it = members.iter().map(|&i| (d[i as usize], i));
    let first = it.next().unwrap_or((f32::NEG_INFINITY, 0));
    it.fold(first, |best, cand| if beats(cand, best) { cand } else { best })
}

/// Greedy k-center selection (PatchCore's coreset, anomalib's KCenterGreedy). `rows`: n x dim row-major (already
/// randomly projected by the caller). The min-distance array starts as the distances to rows[start]; `start` itself is
/// NOT selected. Then n_select times: c = argmax d (first maximum on ties), record c, set d_c = 0, d_i = min(d_i, ||z_i - z_c||).
/// Distances are computed directly as the norm of the difference (as anomalib's torch.linalg.norm(features - center)).
/// Returns the selected indices in selection order. Preconditions: n_select <= n, start < n.
///
/// Distances are `l2_distance`'s. Rows must be finite, and squared coordinate differences must
/// neither overflow nor underflow f32 (the rounding margins assume normal numbers); otherwise the
/// selection is unspecified, though still n_select valid indices.
/// Extra memory: about 140 bytes per row (projection, d, owner, cluster lists) plus a copy of the
/// selected rows.
pub fn greedy_coreset(rows: &[f32], dim: usize, n_select: usize, start: usize) -> Vec<u32> {
    if n_select == 0 {
        return Vec::new();
    }
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "greedy_coreset: {} values is not a whole number of {dim}-wide rows",
        rows.len()
    );
    let n = rows.len() / dim;
    assert!(
        start < n && n_select <= n && n <= u32::MAX as usize,
        "greedy_coreset: need start ({start}) < n ({n}) and n_select ({n_select}) <= n"
    );
    let row = |i: u32| &rows[i as usize * dim..][..dim];

    // Pruning through the row's centre a: d_i = dist(z_i, z_a), and c can only lower d_i if
    // ||z_i - z_c|| < d_i, while ||z_i - z_c|| >= D(a, c) - d_i; so D(a, c) >= 2 d_i rules i out,
    // and D(a, c) >= 2 radius(a) the whole cluster. The test uses computed values, each within a
    // relative eps = (dim + 8) * f32::EPSILON of the exact one (a rounded difference and square per
    // element, a sum of dim positive terms, a square root). Requiring D >= 2 d (1 + 4 eps) leaves
    // the exact D >= 2 d (1 + eps) or so, the exact ||z_i - z_c|| >= d (1 + 2 eps), and the
    // computed one at least d (1 + eps) > computed d. A skipped row would never have moved, so the
    // d values, and the selection, equal the brute force's exactly.
    let eps = distance_eps(dim);
    let factor = prune_factor(eps);
    let proj = Projection::new(rows, dim, eps);

    let z_start = row(start as u32);
    let mut d: Vec<f32> = rows.par_chunks_exact(dim).map(|r| l2_distance(r, z_start)).collect();
    // owner[i]: the cluster row i belongs to (its position in `clusters`).
    let mut owner = vec![0u32; n];
    let mut clusters = vec![Cluster::new(proj.rows[start], (0..n as u32).collect(), &d)];
    // The centres' rows, contiguous in cluster order: each step reads the centres it cannot rule
    // out, and a compact copy (15 MB at 10,000 x 384) stays largely in cache.
    let mut centres = Vec::with_capacity((n_select + 1) * dim);
    centres.extend_from_slice(z_start);
    let mut selected = Vec::with_capacity(n_select);
    // Each step runs a few parallel loops, most of them short. Called from outside the pool, every
    // one would be handed to a worker and waited for (two thread switches); run from a worker, they
    // start in place and only split when other threads are idle.
    rayon::scope(|_| {
        while selected.len() < n_select {
            let (d_c, c) =
                clusters.iter().map(|cl| cl.far).fold((f32::NEG_INFINITY, 0), |a, b| if beats(b, a) { b } else { a });
            if d_c <= 0.0 || d_c.is_nan() {
                // Every d is 0 (NaN only from non-finite input): the first maximum is row 0 from now
                // on, and selecting it changes nothing.
                selected.resize(n_select, 0);
                break;
            }
            selected.push(c);
            let z_c = row(c);
            let y_c = &proj.rows[c as usize];
            let step = Step { z_c, y_c, d_c, factor, proj: &proj };
            let reach: Vec<f32> =
                clusters.par_iter().zip(centres.par_chunks_exact(dim)).map(|(cl, z_a)| cl.reach(&step, z_a)).collect();

            // The rows c takes, as (index, new d). Each is decided from d, owner and reach alone, all
            // read-only here, so the set does not depend on scheduling. c itself is among them
            // (dist(z_c, z_c) = 0 < d_c), which is "set d_c = 0".
            let in_play = |i: u32| {
                let di = d[i as usize];
                reach[owner[i as usize] as usize] < factor * di
                    && !proj.proves_at_least(&proj.rows[i as usize], y_c, di)
            };
            let closer = |i: u32| {
                let nd = l2_distance(row(i), z_c);
                (nd < d[i as usize]).then_some((i, nd))
            };
            let candidates: usize =
                clusters.iter().zip(&reach).filter(|(_, r)| r.is_finite()).map(|(cl, _)| cl.members.len()).sum();
            let moved: Vec<(u32, f32)> = if candidates > n / SWEEP_FRACTION {
                // Most rows are in play (early on, or data the bounds cannot prune): visit them in
                // index order, which streams through memory instead of jumping between rows.
                (0..n as u32).into_par_iter().with_min_len(SPLIT).filter(|&i| in_play(i)).filter_map(closer).collect()
            } else {
                // Members of the clusters in reach, in chunks of at most SPLIT (a big cluster is split).
                let chunks: Vec<&[u32]> = clusters
                    .iter()
                    .zip(&reach)
                    .filter(|(_, r)| r.is_finite())
                    .flat_map(|(cl, _)| cl.members.chunks(SPLIT))
                    .collect();
                chunks
                    .par_iter()
                    .flat_map_iter(|members| {
                        // The rows in play lie anywhere in the input: fetch them a few ahead.
                        let todo: Vec<u32> = members.iter().copied().filter(|&i| in_play(i)).collect();
                        todo.iter().take(PREFETCH_AHEAD).for_each(|&i| prefetch(row(i)));
                        let mut out = Vec::new();
                        for (k, &i) in todo.iter().enumerate() {
                            if let Some(&ahead) = todo.get(k + PREFETCH_AHEAD) {
                                prefetch(row(ahead));
                            }
                            out.extend(closer(i));
                        }
                        out
                    })
                    .collect()
            };

            let id = clusters.len() as u32;
            let mut lost = vec![false; clusters.len()];
            for &(i, nd) in &moved {
                lost[owner[i as usize] as usize] = true;
                owner[i as usize] = id;
                d[i as usize] = nd;
            }
            clusters.par_iter_mut().zip(lost).filter(|(_, l)| *l).for_each(|(cl, _)| {
                cl.members.retain(|&i| owner[i as usize] != id);
                cl.far = farthest(&cl.members, &d);
            });
            clusters.push(Cluster::new(*y_c, moved.iter().map(|m| m.0).collect(), &d));
            centres.extend_from_slice(z_c);
        }
    });
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The textbook loop, with the same distance function.
    fn brute_force(rows: &[f32], dim: usize, n_select: usize, start: usize) -> Vec<u32> {
        let row = |i: usize| &rows[i * dim..][..dim];
        let n = rows.len() / dim;
        let mut d: Vec<f32> = (0..n).map(|i| l2_distance(row(i), row(start))).collect();
        let mut out = Vec::new();
        for _ in 0..n_select {
            let mut c = 0;
            for i in 1..n {
                if d[i] > d[c] {
                    c = i;
                }
            }
            out.push(c as u32);
            d[c] = 0.0;
            for (i, di) in d.iter_mut().enumerate() {
                *di = di.min(l2_distance(row(i), row(c)));
            }
        }
        out
    }

    fn gaussian(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n * dim).map(|_| rng.normal() as f32).collect()
    }

    /// `k` clusters with centres spread out and radii varying 30x.
    fn clustered(n: usize, dim: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let centres: Vec<f32> = (0..k * dim).map(|_| 10.0 * rng.normal() as f32).collect();
        let radii: Vec<f32> = (0..k).map(|_| 0.1 + 3.0 * rng.next_f64() as f32).collect();
        let mut rows = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = rng.below(k as u64) as usize;
            rows.extend((0..dim).map(|j| centres[c * dim + j] + radii[c] * rng.normal() as f32));
        }
        rows
    }

    fn same(rows: &[f32], dim: usize, n_select: usize, start: usize) -> Vec<u32> {
        let fast = greedy_coreset(rows, dim, n_select, start);
        assert_eq!(fast, brute_force(rows, dim, n_select, start));
        fast
    }

    #[test]
    fn distance_paths_agree_bitwise() {
        let v = gaussian(2 * 400, 1, 9);
        for len in [0, 1, 15, 16, 17, 64, 284, 384, 399] {
            let (x, y) = (&v[..len], &v[400..400 + len]);
            assert_eq!(l2_distance(x, y).to_bits(), l2_distance_portable(x, y).to_bits(), "length {len}");
        }
    }

    #[test]
    fn gaussian_matches_brute_force() {
        same(&gaussian(2000, 64, 1), 64, 200, 17);
    }

    #[test]
    fn clustered_matches_brute_force() {
        // 5000 rows > SPLIT, so the first steps take the parallel path.
        same(&clustered(5000, 32, 40, 2), 32, 500, 0);
        same(&clustered(3000, 5, 7, 3), 5, 600, 2999); // dim < PROJ, many selections per cluster
                                                       // Large enough that most steps scan a few clusters rather than sweep every row.
        same(&clustered(20_000, 48, 150, 4), 48, 1500, 123);
    }

    #[test]
    fn duplicates_and_ties() {
        // 8 distinct points, each repeated 50 times in a scrambled order: distances tie everywhere,
        // and after the 7 distinct points other than the start's are taken every d is 0.
        let dim = 3;
        let base = gaussian(8, dim, 4);
        let mut rng = SplitMix64::new(5);
        let rows: Vec<f32> = (0..400).flat_map(|_| base[rng.below(8) as usize * dim..][..dim].to_vec()).collect();
        let sel = same(&rows, dim, 40, 5);
        assert!(sel[7..].iter().all(|&i| i == 0), "{sel:?}");
        // Symmetric ties: the corners of a square, equidistant from the centre (the start).
        let square = [0.0, 0.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        assert_eq!(same(&square, 2, 5, 0), vec![1, 2, 3, 4, 0]);
    }

    #[test]
    fn constant_rows_select_row_zero() {
        // All distances are 0: the first maximum of all-zero d is row 0, every time.
        let rows = vec![1.5f32; 30 * 4];
        assert_eq!(same(&rows, 4, 30, 7), vec![0; 30]);
    }

    #[test]
    fn select_all_and_none() {
        let rows = gaussian(300, 8, 6);
        let all = same(&rows, 8, 300, 3);
        // Every row but the start has d > 0 until picked, so the first 299 are a permutation of
        // them; then all d are 0 and row 0 comes last.
        let mut head = all[..299].to_vec();
        head.sort_unstable();
        assert_eq!(head, (0..300).filter(|&i| i != 3).collect::<Vec<_>>());
        assert_eq!(all[299], 0);
        assert!(greedy_coreset(&rows, 8, 0, 3).is_empty());
        assert!(greedy_coreset(&[], 8, 0, 0).is_empty());
    }
}
