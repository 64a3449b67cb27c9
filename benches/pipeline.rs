//! Backbone forward, embedding and predict end to end on the CPU backend, with the hashed
//! test weights (the numbers do not depend on the weight values), and what tracing costs
//! (`-- trace`: predict with it off and on, and one span while it is off), and the model file's
//! load (`-- load`). Run:
//! `cargo bench --bench pipeline` (add a name to run one: `-- forward`); with
//! `PATCHCORE_BF16_PRODUCTS=off` (or `avx512`) a CPU with AMX runs what one without it runs.

mod common;

use common::{median_seconds, sgemm_gflops, wanted};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::flops::FlopCounter;
use patchcore::backend::{Backend, CpuBackend, Precision};

use patchcore::patchcore::{FitOptions, PatchCore};
use patchcore::rng::SplitMix64;
use patchcore::Tensor;

fn input(batch: usize, side: usize) -> Tensor {
    let mut rng = SplitMix64::new(3);
    Tensor::new(vec![batch, 3, side, side], (0..batch * 3 * side * side).map(|_| rng.normal() as f32).collect())
}

fn conv_flops(arch: Architecture, x: &Tensor) -> f64 {
    let counter = FlopCounter::default();
    let net = Backbone::load(&counter, arch, ConvOrigin::Torchvision(&HashedWeights)).expect("weights");
    net.forward(&counter, &x.shape).expect("shapes");
    counter.flops() as f64
}

fn main() {
    // The CLI's allocation policy, so that these rows are what `patchcore predict` gets.
    patchcore::cli::keep_freed_memory();
    println!("threads: {}", rayon::current_num_threads());
    let reference = sgemm_gflops(256, 4096, 1152, 5);
    println!("plain sgemm 256x4096x1152 (layer3-sized conv at 512 px): {reference:.1} GFLOP/s");
    let backend = CpuBackend::default();
    for (arch, side, batch) in [
        (Architecture::Resnet18, 256, 1),
        (Architecture::Resnet18, 512, 1),
        (Architecture::Resnet18, 256, 8),
        (Architecture::WideResnet50_2, 256, 1),
    ] {
        for (convs, backend) in arithmetics() {
            let name = format!("forward {arch} {side}px batch {batch} ({convs})");
            if !wanted(&name) {
                continue;
            }
            let x = input(batch, side);
            let net = Backbone::load(&backend, arch, ConvOrigin::Torchvision(&HashedWeights)).unwrap();
            let t = median_seconds(5, || {
                net.forward(&backend, &x).unwrap();
            });
            let gflops = conv_flops(arch, &x) / t / 1e9;
            println!(
                "{name}: {:.1} ms/image, {gflops:.1} GFLOP/s over its convolutions ({:.0}% of plain sgemm)",
                t * 1e3 / batch as f64,
                100.0 * gflops / reference
            );
        }
    }
    if wanted("convs") {
        conv_shapes();
    }
    if wanted("embed") {
        let net = Backbone::load(&backend, Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights)).unwrap();
        for side in [256, 512] {
            let features = net.forward(&backend, &input(1, side)).unwrap();
            let t = median_seconds(10, || {
                backend.embed(&[&features[0], &features[1]]).unwrap();
            });
            println!("embed resnet18 {side}px: {:.2} ms/image", t * 1e3);
        }
    }
    if wanted("predict") || wanted("trace") || wanted("load") {
        predict_end_to_end();
    }
}

/// The CPU's convolution arithmetics this machine has: f32 im2col + sgemm always; the default
/// where it differs (split bf16 tiles on AMX, f32 tiles with AVX-512F); bf16 tiles (`--precision
/// bf16`) where the CPU multiplies bf16.
fn arithmetics() -> Vec<(&'static str, CpuBackend)> {
    let mut all = vec![CpuBackend::portable(), CpuBackend::default()];
    match CpuBackend::new(Precision::Bf16) {
        Ok(bf16) => all.push(bf16),
        Err(e) => println!("bf16 tiles skipped: {e}"),
    }
    all.dedup_by_key(|backend| backend.convolutions());
    all.into_iter().map(|backend| (backend.convolutions(), backend)).collect()
}

/// ResNet-18's convolution shapes at 512 px, batch 1: our conv2d (im2col + product + epilogue,
/// or tile products) in each arithmetic against plain sgemm on the product it performs, to
/// separate the shape's own efficiency from what the convolution adds.
fn conv_shapes() {
    use patchcore::backend::{Activation, ConvSpec, ConvWeights, Padding};
    for (name, cin, cout, k, stride, side) in [
        ("stem 7x7/2", 3, 64, 7, 2, 512),
        ("layer1 3x3", 64, 64, 3, 1, 128),
        ("layer2 3x3", 128, 128, 3, 1, 64),
        ("layer3 3x3", 256, 256, 3, 1, 32),
    ] {
        let spec = ConvSpec {
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            stride,
            padding: Padding::Symmetric(k / 2),
            groups: 1,
            activation: Activation::Relu,
        };
        let conv = ConvWeights { spec, weight: vec![0.01; cout * cin * k * k].into(), bias: vec![0.0; cout] };
        let x = input(1, side).data.into_iter().cycle().take(cin * side * side).collect::<Vec<f32>>();
        let x = Tensor::new(vec![1, cin, side, side], x);
        let out = side / stride;
        let flops = 2.0 * (cout * cin * k * k * out * out) as f64;
        let plain = sgemm_gflops(cout, out * out, cin * k * k, 5);
        let swapped = sgemm_gflops(out * out, cout, cin * k * k, 5);
        println!(
            "  plain sgemm transposed (positions x channels) {}x{cout}x{}: {swapped:.1} GFLOP/s",
            out * out,
            cin * k * k
        );
        println!("plain sgemm {cout}x{}x{}: {plain:.1} GFLOP/s", out * out, cin * k * k);
        for (convs, backend) in arithmetics() {
            let conv = backend.prepare_conv(&conv).unwrap();
            let t = median_seconds(5, || {
                backend.conv2d(&x, &conv, None).unwrap();
            });
            println!("conv {name} at {side}px ({convs}): {:.1} GFLOP/s", flops / t / 1e9);
            if k == 7 {
                // ResNet's stem is followed by its max pooling: the two in turn, then in one pass
                // (`Backend::conv2d_max_pool`, fused on the tiles).
                let apart = median_seconds(5, || {
                    backend.max_pool(&backend.conv2d(&x, &conv, None).unwrap(), 3, 2, 1).unwrap();
                });
                let fused = median_seconds(5, || {
                    backend.conv2d_max_pool(&x, &conv, 3, 2, 1).unwrap();
                });
                println!(
                    "  {name} + max_pool 3/2 at {side}px ({convs}): in turn {:.2} ms, conv2d_max_pool {:.2} ms",
                    apart * 1e3,
                    fused * 1e3
                );
            }
        }
    }
}

/// Fit on 16 synthetic 256 px images with ratio 1 (a 16,384-row bank, the size of a 10%
/// coreset of 160 images), then time predict on batches of 1 and 8.
fn predict_end_to_end() {
    let dir = std::env::temp_dir().join(format!("patchcore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = SplitMix64::new(11);
    let mut paths = Vec::new();
    let mut images = Vec::new();
    for i in 0..16 {
        let img = image::RgbImage::from_fn(256, 256, |x, y| {
            let v = 128.0 + 60.0 * ((x as f32 * 0.3).sin() * (y as f32 * 0.2).cos()) + 20.0 * rng.next_f64() as f32;
            image::Rgb([v as u8, (v * 0.8) as u8, (v * 0.6) as u8])
        });
        let path = dir.join(format!("{i}.png"));
        img.save(&path).unwrap();
        paths.push(path);
        images.push(img);
    }
    let options = FitOptions {
        preprocess: Architecture::Resnet18.preprocess(256, None).unwrap(),
        ratio: 1.0,
        ..FitOptions::default()
    };
    let backbone =
        Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
            .unwrap();
    let model = PatchCore::fit(CpuBackend::default(), backbone, &paths, None, &options, &mut |_, _, _| {}).unwrap();
    println!("predict bank: {} rows x {}", model.meta().bank_rows, model.meta().embedding_dim);
    if wanted("predict") {
        for batch in [1, 8] {
            let t = median_seconds(3, || {
                model.predict(&images[..batch]).unwrap();
            });
            println!("predict resnet18 256px batch {batch}: {:.1} ms/image", t * 1e3 / batch as f64);
        }
    }
    if wanted("trace") {
        tracing_cost(&images[..8], |batch| {
            model.predict(batch).unwrap();
        });
    }
    if wanted("load") {
        // The model file's load in each arithmetic: what a CLI run or a C host pays before its
        // first image (the file in the page cache, as after the first run).
        let path = dir.join("model.patchcore");
        model.save(&path).unwrap();
        for (name, backend) in arithmetics() {
            let t = median_seconds(10, || {
                PatchCore::load(backend.clone(), &path).unwrap();
            });
            println!(
                "load resnet18 model ({} bank rows), {name} convolutions: {:.1} ms",
                model.meta().bank_rows,
                t * 1e3
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Predict on `batch` with tracing off (the default) and on, interleaved so that the load of a
/// shared machine falls on both alike; then what one span costs while tracing is off, and so
/// what the spans of one batch cost off.
fn tracing_cost(batch: &[image::RgbImage], predict: impl Fn(&[image::RgbImage])) {
    use patchcore::trace;
    trace::start();
    predict(batch);
    let spans = trace::stop().len();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        off.push(median_seconds(1, || predict(batch)));
        trace::start();
        on.push(median_seconds(1, || predict(batch)));
        trace::stop();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "predict resnet18 256px batch {}: tracing off {:.1} ms, on {:.1} ms ({:+.1}%), {spans} spans a batch",
        batch.len(),
        off * 1e3,
        on * 1e3,
        100.0 * (on / off - 1.0)
    );
    const N: u32 = 10_000_000;
    let t = median_seconds(5, || {
        for _ in 0..N {
            drop(std::hint::black_box(trace::span(std::hint::black_box("knn"))));
        }
    });
    let per_span = t / f64::from(N);
    println!(
        "one span, tracing off: {:.2} ns; {spans} of them are {:.1e} of the batch",
        per_span * 1e9,
        spans as f64 * per_span / off
    );
}
