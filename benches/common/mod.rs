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
