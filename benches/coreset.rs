//! greedy_coreset on 100,000 rows -> 10,000 selections (PatchCore's 10% coreset of a 400-image
//! training set's patches, roughly), at 384 dims (unprojected, the worst case) and 284 dims (what
//! anomalib's sparse random projection gives at N = 100,000: 24.7 ln N).
//!
//! Inputs and baselines:
//! - "structured": a synthetic stand-in for patch embeddings, which have low intrinsic dimension.
//!   `common::structured` documents the generator.
//! - "isotropic": iid N(0, 1) rows. In 384 dims all distances concentrate near sqrt(2 * 384), the
//!   bounds prune nothing, and every selection rescans every row; it runs at
//!   20,000 rows -> 2,000 so one iteration stays short. Its throughput is reported in bytes of
//!   rows scanned (n * dim * 4 per selection), which also extrapolates the full size.
//! - "brute_force": the textbook loop (parallel, vectorised) at 20,000 rows -> 2,000 selections,
//!   on structured data against greedy_coreset on the same input (the speedup), and on isotropic
//!   data (the worst case, where pruning cannot help).
//!
//! Each iteration is seconds long; criterion's minimum of 10 samples makes a full run take several
//! minutes. Filter with e.g. `cargo bench --bench coreset -- structured_100000_to_10000/384`.

mod common;

use common::structured;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use patchcore::backend::cpu::l2_distance;
use patchcore::backend::{Backend, CpuBackend};
use patchcore::rng::SplitMix64;
use patchcore::Tensor;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

fn isotropic(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n * dim).map(|_| rng.normal() as f32).collect()
}

/// The textbook loop as fast as it goes without pruning: one parallel pass per selection that
/// updates d and finds the next argmax (first maximum) together.
fn brute_force(rows: &[f32], dim: usize, n_select: usize, start: usize) -> Vec<u32> {
    let z = |i: usize| &rows[i * dim..][..dim];
    let mut d: Vec<f32> = rows.par_chunks_exact(dim).map(|r| l2_distance(r, z(start))).collect();
    let first_max = |a: (f32, usize), b: (f32, usize)| if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) { b } else { a };
    let mut c = d.iter().copied().enumerate().map(|(i, x)| (x, i)).fold((f32::NEG_INFINITY, 0), first_max).1;
    let mut out = Vec::with_capacity(n_select);
    for _ in 0..n_select {
        out.push(c as u32);
        d[c] = 0.0;
        let zc = z(c);
        c = d
            .par_iter_mut()
            .zip(rows.par_chunks_exact(dim))
            .enumerate()
            .map(|(i, (di, r))| {
                *di = di.min(l2_distance(r, zc));
                (*di, i)
            })
            .reduce(|| (f32::NEG_INFINITY, 0), first_max)
            .1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::default();
    let select = |rows: &Tensor, n_select: usize| backend.coreset(black_box(rows), n_select, 0).expect("coreset");
    let mut g = c.benchmark_group("coreset");
    // Flat sampling: 10 samples of equally many iterations (criterion's default linear ramp
    // would run 55 iterations of a multi-second benchmark).
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for dim in [384, 284] {
        let rows = Tensor::new(vec![100_000, dim], structured(100_000, dim, 7));
        g.throughput(Throughput::Elements(10_000));
        g.bench_with_input(BenchmarkId::new("structured_100000_to_10000", dim), &rows, |b, rows| {
            b.iter(|| select(rows, 10_000))
        });
        let rows = Tensor::new(vec![20_000, dim], isotropic(20_000, dim, 8));
        // Bytes of rows read per iteration: 2,000 selections, each scanning all 20,000 rows.
        g.throughput(Throughput::Bytes((2_000 * 20_000 * dim * 4) as u64));
        g.bench_with_input(BenchmarkId::new("isotropic_20000_to_2000", dim), &rows, |b, rows| {
            b.iter(|| select(rows, 2_000))
        });
    }
    let rows = Tensor::new(vec![20_000, 384], structured(20_000, 384, 9));
    assert_eq!(select(&rows, 2_000), brute_force(&rows.data, 384, 2_000, 0), "different selections");
    g.throughput(Throughput::Elements(2_000));
    g.bench_with_input(BenchmarkId::new("structured_20000_to_2000", "384_pruned"), &rows, |b, rows| {
        b.iter(|| select(rows, 2_000))
    });
    g.bench_with_input(BenchmarkId::new("structured_20000_to_2000", "384_brute_force"), &rows, |b, rows| {
        b.iter(|| brute_force(black_box(&rows.data), 384, 2_000, 0))
    });
    // The worst case against the brute force: pruning fails, both read every row every step.
    let rows = isotropic(20_000, 384, 8);
    g.throughput(Throughput::Bytes(2_000 * 20_000 * 384 * 4));
    g.bench_with_input(BenchmarkId::new("isotropic_20000_to_2000", "384_brute_force"), &rows, |b, rows| {
        b.iter(|| brute_force(black_box(rows), 384, 2_000, 0))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
