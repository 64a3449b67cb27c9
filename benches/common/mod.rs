//! Timing for the benches: a warm-up run, then the median of repeated runs. The figures are
//! printed as a table that docs/PERFORMANCE.md quotes.
#![allow(dead_code)]

use std::time::Instant;

/// Median seconds of `reps` runs of `f` after one warm-up run.
pub fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// GFLOP/s of plain sgemm (the `gemm` crate, all threads) on m x k times k x n.
pub fn sgemm_gflops(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let t = median_seconds(reps, || patchcore::backend::cpu::sgemm(m, n, k, &a, &b, false, &mut c, true));
    2.0 * (m * n * k) as f64 / t / 1e9
}

/// Only the benches named on the command line run (`cargo bench --bench X -- NAME`); all
/// when none is named.
pub fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Structured rows: a mixture of 500 Gaussian clusters. Cluster centres are N(0, 4^2 I) in a
/// 16-dim latent space; a cluster's members are its centre plus N(0, s^2 I) latent noise with s
/// uniform in [0.25, 1.5] (radii vary 6x); cluster sizes follow lognormal weights exp(N(0, 1))
/// (from a handful to a few thousand rows at n = 100,000). The latent points are mapped to
/// `dim` dims by a fixed Gaussian matrix with N(0, 1/dim) entries (which roughly preserves
/// lengths: centres ~23 apart, clusters 1.4 to 8.5 across) and get isotropic N(0, 0.05^2) noise
/// in all `dim` dims (norm ~1), which keeps the data full-rank as real embeddings are and is not
/// small next to the final covering radius. Rows are drawn in parallel blocks of 4,096, each from
/// its own stream (a GPU bench asks for a million).
pub fn structured(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    use patchcore::rng::SplitMix64;
    use rayon::prelude::*;
    const CLUSTERS: usize = 500;
    const LATENT: usize = 16;
    const BLOCK_ROWS: usize = 4096;
    let mut rng = SplitMix64::new(seed);
    let map: Vec<f64> = (0..dim * LATENT).map(|_| rng.normal() / (dim as f64).sqrt()).collect();
    let centres: Vec<f64> = (0..CLUSTERS * LATENT).map(|_| 4.0 * rng.normal()).collect();
    let spread: Vec<f64> = (0..CLUSTERS).map(|_| 0.25 + 1.25 * rng.next_f64()).collect();
    let weights: Vec<f64> = (0..CLUSTERS).map(|_| rng.normal().exp()).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut rows = vec![0f32; n * dim];
    rows.par_chunks_mut(BLOCK_ROWS * dim).enumerate().for_each(|(b, block)| {
        let mut rng = SplitMix64::new(seed ^ (b as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut latent = [0f64; LATENT];
        for row in block.chunks_exact_mut(dim) {
            let u = rng.next_f64();
            let c = cumulative.iter().position(|&p| u < p).unwrap_or(CLUSTERS - 1);
            for (j, l) in latent.iter_mut().enumerate() {
                *l = centres[c * LATENT + j] + spread[c] * rng.normal();
            }
            for (r, out) in row.iter_mut().enumerate() {
                let x: f64 = map[r * LATENT..][..LATENT].iter().zip(&latent).map(|(a, b)| a * b).sum();
                *out = (x + 0.05 * rng.normal()) as f32;
            }
        }
    });
    rows
}
