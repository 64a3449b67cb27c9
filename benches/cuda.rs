//! The CUDA backend's figures (issue 4): the fused distance top-k against cuBLAS GEMM on the same
//! shape, the coreset against the HBM bandwidth it is bound by, and predict end to end. Prints a
//! Markdown table that docs/PERFORMANCE.md quotes; scripts/gpu-check.sh runs it. Needs a GPU:
//! `cargo bench --features cuda --bench cuda` (add a name to run one part: `-- knn`).
//! Every time is the median wall time of whole calls, each ending in a stream synchronisation,
//! so launch gaps and the copy of the (small) results are included.

mod common;

use common::{median_seconds, structured, wanted};
use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t, cublasSetMathMode};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use half::f16;
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::flops::FlopCounter;
use patchcore::backend::{Backend, CudaBackend, Precision};
use patchcore::patchcore::projection::{jl_dims, EPS};
use patchcore::patchcore::{FitOptions, PatchCore};
use patchcore::rng::SplitMix64;
use patchcore::Tensor;
use rayon::prelude::*;

/// The H200's HBM3e bandwidth, bytes/s (NVIDIA's datasheet: 4.8 TB/s).
const HBM_BYTES_PER_S: f64 = 4.8e12;
const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::F16];

/// Normal rows, generated in parallel (a coreset input is a billion values).
fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut data = vec![0.0f32; rows * cols];
    data.par_chunks_mut(1 << 20).enumerate().for_each(|(i, chunk)| {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        chunk.iter_mut().for_each(|v| *v = rng.normal() as f32);
    });
    Tensor::new(vec![rows, cols], data)
}

fn row(case: &str, precision: Precision, shape: &str, seconds: f64, figure: &str, target: &str) {
    println!("| {case} | {precision:?} | {shape} | {:.3} ms | {figure} | {target} |", seconds * 1e3);
}

/// Row-major C (nq x m) is column-major C^T (m x nq) = B (m x d, stored as d x m) ^T x Q^T.
fn gemm_config<T>(nq: usize, m: usize, d: usize, alpha: T, beta: T) -> GemmConfig<T> {
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: m as i32,
        n: nq as i32,
        k: d as i32,
        alpha,
        lda: d as i32,
        ldb: d as i32,
        beta,
        ldc: m as i32,
    }
}

/// Seconds of cuBLAS's C = Q B^T for nq x d queries and m x d bank rows, in `precision`.
fn cublas_seconds(backend: &CudaBackend, q: &Tensor, bank: &Tensor, precision: Precision) -> f64 {
    let stream = backend.stream().clone();
    let blas = CudaBlas::new(stream.clone()).expect("cuBLAS handle");
    let ([nq, d], [m, _]) = (q.dims2().unwrap(), bank.dims2().unwrap());
    let sync = || stream.synchronize().expect("synchronize");
    match precision {
        Precision::F16 => {
            let half = |t: &Tensor| stream.clone_htod(&t.data.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
            let (qd, bd) = (half(q).unwrap(), half(bank).unwrap());
            let mut c = stream.alloc_zeros::<f16>(nq * m).unwrap();
            let (one, zero) = (f16::ONE, f16::ZERO);
            // SAFETY: qd is nq x d, bd m x d and c nq x m, as the config describes.
            median_seconds(5, || {
                unsafe { blas.gemm(gemm_config(nq, m, d, one, zero), &bd, &qd, &mut c) }.unwrap();
                sync();
            })
        }
        _ => {
            let math = match precision {
                Precision::Tf32 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                _ => cublasMath_t::CUBLAS_DEFAULT_MATH,
            };
            // SAFETY: a valid handle and a math mode the library defines.
            unsafe { cublasSetMathMode(*blas.handle(), math) };
            let (qd, bd) = (stream.clone_htod(&q.data).unwrap(), stream.clone_htod(&bank.data).unwrap());
            let mut c = stream.alloc_zeros::<f32>(nq * m).unwrap();
            // SAFETY: as above.
            median_seconds(5, || {
                unsafe { blas.gemm(gemm_config(nq, m, d, 1.0f32, 0.0), &bd, &qd, &mut c) }.unwrap();
                sync();
            })
        }
    }
}

fn knn() {
    for precision in PRECISIONS {
        let backend = CudaBackend::new(0, precision).expect("a GPU");
        // The seed's case: one image's 4,096 patches against a 13,107-row bank.
        let (q, bank) = (random(4096, 384, 1), random(13_107, 384, 2));
        let (qd, bd) = (backend.upload(&q).unwrap(), backend.prepare_bank(bank.clone()).unwrap());
        let t = median_seconds(20, || {
            backend.knn(&qd, &bd, 1).unwrap();
        });
        let tflops = 2.0 * 4096.0 * 13_107.0 * 384.0 / t / 1e12;
        row("knn k=1", precision, "4096 x 13107 x 384", t, &format!("{tflops:.1} TFLOP/s"), "< 0.1 ms (f16/tf32)");
        // WRN-50 at 256 px: 1,024 patches per image, batch 32, against a 10% bank of 1,536 dims.
        let (q, bank) = (random(32 * 1024, 1536, 3), random(21_401, 1536, 4));
        let (qd, bd) = (backend.upload(&q).unwrap(), backend.prepare_bank(bank.clone()).unwrap());
        let gemm = cublas_seconds(&backend, &q, &bank, precision);
        let shape = "32768 x 21401 x 1536";
        row(
            "cuBLAS GEMM",
            precision,
            shape,
            gemm,
            &format!("{:.1} TFLOP/s", 2.0 * 32768.0 * 21401.0 * 1536.0 / gemm / 1e12),
            "reference",
        );
        for k in [1, 9] {
            let t = median_seconds(5, || {
                backend.knn(&qd, &bd, k).unwrap();
            });
            let share = format!("{:.0}% of cuBLAS", 100.0 * gemm / t);
            row(&format!("knn k={k}"), precision, shape, t, &share, "> 50% of cuBLAS");
        }
    }
}

fn coreset() {
    // 1,000,000 WRN-50 rows of 1,536 dims, projected as fit projects them, to 10%.
    let (n, dims) = (1_000_000, jl_dims(1_000_000, EPS));
    let shape = format!("1000000 x {dims} (projected from 1536)");
    // Embedding-like rows (low intrinsic dimension, common::structured), where the pruning skips most
    // rows: the whole 10%, once after a 16-selection call that loads the module and allocates.
    let rows = Tensor::new(vec![n, dims], structured(n, dims, 5));
    for precision in [Precision::F32, Precision::F16] {
        let backend = CudaBackend::new(0, precision).expect("a GPU");
        let device_rows = backend.upload(&rows).unwrap();
        backend.coreset(&device_rows, 16, 0).unwrap();
        let started = std::time::Instant::now();
        backend.coreset(&device_rows, n / 10, 0).unwrap();
        let t = started.elapsed().as_secs_f64();
        row("coreset 10%, embedding-like", precision, &shape, t, "-", "< 10 s");
    }
    // Isotropic noise, the worst case: no bound prunes, every selection reads every row. 1% of the
    // selections, timed once, scaled to the 10%: the cost per selection is flat here.
    let rows = random(n, dims, 5);
    for precision in [Precision::F32, Precision::F16] {
        let backend = CudaBackend::new(0, precision).expect("a GPU");
        let device_rows = backend.upload(&rows).unwrap();
        backend.coreset(&device_rows, 16, 0).unwrap();
        let started = std::time::Instant::now();
        backend.coreset(&device_rows, n / 100, 0).unwrap();
        let t = started.elapsed().as_secs_f64() * 10.0;
        let element = if precision == Precision::F16 { 2.0 } else { 4.0 };
        // Per selection: every row read once, its d, owner and 16-dim f64 projection read too.
        let bytes = (n / 10) as f64 * n as f64 * (dims as f64 * element + 8.0 + 128.0);
        let figure = format!("{:.2} TB/s, {:.0}% of HBM", bytes / t / 1e12, 100.0 * bytes / t / HBM_BYTES_PER_S);
        row("coreset 10%, isotropic (1% timed, x10)", precision, &shape, t, &figure, "-");
    }
}

fn predict() {
    let dir = std::env::temp_dir().join(format!("patchcore-cuda-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = SplitMix64::new(11);
    let images: Vec<image::RgbImage> = (0..64)
        .map(|_| {
            image::RgbImage::from_fn(256, 256, |x, y| {
                let v = 128.0 + 60.0 * ((x as f32 * 0.3).sin() * (y as f32 * 0.2).cos()) + 20.0 * rng.next_f64() as f32;
                image::Rgb([v as u8, (v * 0.8) as u8, (v * 0.6) as u8])
            })
        })
        .collect();
    let paths: Vec<_> = images[..16]
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let path = dir.join(format!("{i}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect();
    let arch = Architecture::Resnet18;
    // Ratio 1 on 16 images: a 16,384-row bank, the size of a 10% coreset of 160 images.
    let options = FitOptions {
        preprocess: Architecture::Resnet18.preprocess(256, None).unwrap(),
        ratio: 1.0,
        batch: 16,
        ..FitOptions::default()
    };
    let pre = Architecture::Resnet18.preprocess(256, None).unwrap();
    let input = pre.batch(&images);
    // Pre-processing does not depend on the precision: one row, the device op against the host
    // path it replaced (Preprocess::batch, then an upload of the f32 tensor).
    let backend = CudaBackend::new(0, Precision::F32).expect("a GPU");
    let sync = || backend.stream().synchronize().unwrap();
    let host = median_seconds(5, || {
        backend.upload(&pre.batch(&images)).unwrap();
        sync();
    });
    let t = median_seconds(20, || {
        backend.preprocess(&images, &pre).unwrap();
        sync();
    });
    let figure = format!("{:.0} images/s; host path {:.3} ms", 64.0 / t, host * 1e3);
    row("preprocess", Precision::F32, "batch 64, 256 px", t, &figure, "");
    drop(backend);
    let counter = FlopCounter::default();
    Backbone::load(&counter, arch, ConvOrigin::Torchvision(&HashedWeights))
        .unwrap()
        .forward(&counter, &input.shape)
        .unwrap();
    for precision in PRECISIONS {
        let backend = CudaBackend::new(0, precision).expect("a GPU");
        let backbone = Backbone::load(&backend, arch, ConvOrigin::Torchvision(&HashedWeights)).unwrap();
        let x = backend.upload(&input).unwrap();
        let t = median_seconds(5, || {
            let out = backbone.forward(&backend, &x).unwrap();
            backend.download_rows(&backend.embed(&[&out[0], &out[1]]).unwrap(), &[0]).unwrap();
        });
        let figure =
            format!("{:.0} images/s, {:.1} TFLOP/s in convolutions", 64.0 / t, counter.flops() as f64 / t / 1e12);
        row("resnet18 forward + embed", precision, "batch 64, 256 px", t, &figure, "");
        let model = PatchCore::fit(backend, backbone, &paths, None, &options, &mut |_, _, _| {}).unwrap();
        let t = median_seconds(5, || {
            model.predict(&images).unwrap();
        });
        row(
            "predict resnet18",
            precision,
            "batch 64, 256 px",
            t,
            &format!("{:.0} images/s", 64.0 / t),
            "> 5000 images/s",
        );
        let t = median_seconds(20, || {
            model.predict(&images[..1]).unwrap();
        });
        row("predict resnet18", precision, "batch 1, 256 px", t, "latency", "< 2 ms");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let backend = match CudaBackend::new(0, Precision::F32) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cuda bench: nothing measured: {e}");
            std::process::exit(2);
        }
    };
    println!("device: {}", backend.describe());
    drop(backend);
    println!("| case | precision | shape | median | figure | target |");
    println!("| --- | --- | --- | ---: | --- | --- |");
    if wanted("knn") {
        knn();
    }
    if wanted("coreset") {
        coreset();
    }
    if wanted("predict") {
        predict();
    }
}
