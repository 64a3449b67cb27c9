//! knn_topk against plain sgemm on the seed's shape: 4096 query patches (16 images of 16x16
//! patches) x 13107 bank rows (10% coreset) x 384 dims. Both count 2*nq*m*d flops, so criterion's
//! throughput column (elements/s) reads directly as FLOP/s, and knn's figure over sgemm's is its
//! efficiency. knn goes through `CpuBackend::knn` (argument checks, then the kernel).
//! Run: `cargo bench --bench knn`.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use gemm::{gemm, Parallelism};
use patchcore::backend::{Backend, CpuBackend};
use patchcore::rng::SplitMix64;
use patchcore::Tensor;
use std::hint::black_box;
use std::time::Duration;

const NQ: usize = 4096;
const M: usize = 13107;
const D: usize = 384;

fn random(rows: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    Tensor::new(vec![rows, D], (0..rows * D).map(|_| rng.normal() as f32).collect())
}

fn bench(c: &mut Criterion) {
    let backend = CpuBackend;
    let queries = random(NQ, 1);
    let bank_rows = random(M, 2);
    let bank = backend.prepare_bank(&bank_rows).expect("bank");
    let mut full = vec![0f32; NQ * M];

    let mut g = c.benchmark_group(format!("knn_{NQ}x{M}x{D}"));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements((2 * NQ * M * D) as u64));
    g.bench_function("sgemm_full_output", |b| {
        b.iter(|| {
            // SAFETY: full is NQ x M row-major, the queries NQ x D row-major, the bank M x D
            // row-major read as a D x M matrix; all three outlive the call.
            unsafe {
                gemm(
                    NQ,
                    M,
                    D,
                    full.as_mut_ptr(),
                    1,
                    M as isize,
                    false,
                    queries.data.as_ptr(),
                    1,
                    D as isize,
                    bank_rows.data.as_ptr(),
                    D as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(0),
                );
            }
            black_box(&full);
        })
    });
    for k in [1, 9] {
        g.bench_function(format!("knn_topk_k{k}"), |b| {
            b.iter(|| backend.knn(black_box(&queries), &bank, k).expect("knn"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
