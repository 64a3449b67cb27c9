//! The kNN on two inputs. Every row counts 2*nq*m*d flops, so criterion's throughput column
//! (elements/s) reads directly as FLOP/s.
//! - The seed's shape: 4096 query patches (16 images of 16x16 patches) x 13107 bank rows (10%
//!   coreset) x 384 dims of N(0, 1) values, knn against plain sgemm (knn's figure over sgemm's is
//!   its efficiency).
//! - Predict's shape (issue 13): ResNet-18 (hashed weights) layer2+3 embeddings of synthetic
//!   256 px images, 1,024 patches and 384 dims each; a 10,240-row bank (10 images) and the
//!   queries of 1 or 8 other images, k = 1 as predict's patch scores. `f32` is `knn_topk`, the
//!   reference; `dispatched` is `CpuBackend::knn`, which screens (bf16 on AMX, f32 on other
//!   AVX-512 CPUs; the line printed first says which path it takes here).
//!
//! Run: `cargo bench --bench knn` (`-- predict` for the second group only).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use gemm::{gemm, Parallelism};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::cpu::{knn_topk, squared_norms};
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

/// `n` smooth synthetic 256 px images (a product surface: sine patterns with a random phase per
/// image, plus pixel noise), as a [n, 3, 256, 256] tensor.
fn images(n: usize, seed: u64) -> Tensor {
    const SIDE: usize = 256;
    let mut rng = SplitMix64::new(seed);
    let mut data = Vec::with_capacity(n * 3 * SIDE * SIDE);
    for _ in 0..n {
        let (px, py) = (rng.next_f64() as f32 * 6.3, rng.next_f64() as f32 * 6.3);
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let wave = (x as f32 * 0.3 + px).sin() * (y as f32 * 0.2 + py).cos();
                    data.push(0.8 * wave + 0.1 * c as f32 + 0.2 * rng.normal() as f32);
                }
            }
        }
    }
    Tensor::new(vec![n, 3, SIDE, SIDE], data)
}

/// ResNet-18 layer2+3 patch embeddings of `images`, one row per patch.
fn embeddings(net: &Backbone<CpuBackend>, images: &Tensor) -> Tensor {
    let features = net.forward(&CpuBackend::default(), images).expect("forward");
    let rows = CpuBackend::default().embed(&[&features[0], &features[1]]).expect("embed");
    let d = *rows.shape.last().expect("rank");
    Tensor::new(vec![rows.data.len() / d, d], rows.data)
}

fn predict_shape(c: &mut Criterion) {
    let backend = CpuBackend::default();
    println!("dispatched: {}", backend.describe());
    let net =
        Backbone::load(&backend, Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights)).expect("weights");
    let bank_rows = embeddings(&net, &images(10, 20));
    let bank = backend.prepare_bank(bank_rows.clone()).expect("bank");
    let [m, d] = [bank_rows.shape[0], bank_rows.shape[1]];
    let bank_norms = squared_norms(&bank_rows.data, d);
    for n_images in [1, 8] {
        let queries = embeddings(&net, &images(n_images, 30));
        let nq = queries.shape[0];
        let mut g = c.benchmark_group(format!("knn_predict_{nq}x{m}x{d}"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements((2 * nq * m * d) as u64));
        g.bench_function("f32_k1", |b| {
            b.iter(|| knn_topk(black_box(&queries.data), &bank_rows.data, &bank_norms, d, 1))
        });
        g.bench_function("dispatched_k1", |b| b.iter(|| backend.knn(black_box(&queries), &bank, 1).expect("knn")));
        g.finish();
    }
}

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::default();
    let queries = random(NQ, 1);
    let bank_rows = random(M, 2);
    let bank = backend.prepare_bank(bank_rows.clone()).expect("bank");
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
    let bank_norms = squared_norms(&bank_rows.data, D);
    for k in [1, 9] {
        g.bench_function(format!("f32_k{k}"), |b| {
            b.iter(|| knn_topk(black_box(&queries.data), &bank_rows.data, &bank_norms, D, k))
        });
        g.bench_function(format!("dispatched_k{k}"), |b| {
            b.iter(|| backend.knn(black_box(&queries), &bank, k).expect("knn"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, predict_shape);
criterion_main!(benches);
