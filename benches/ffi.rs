//! The C ABI's cost over the Rust API, measured in one process on the same model and image:
//! `patchcore_predict` on a caller's pixel buffer against `PatchCore::predict` on an
//! `RgbImage`, calls interleaved (in alternating order) so that drift in the machine's speed
//! hits both alike; then the two parts of the difference on their own (a call that does no
//! work, and the one copy of the pixels). Also writes the models `examples/c/bench.c` times
//! from C (their paths are printed). Run: `cargo bench --bench ffi` (or `scripts/c-bench.sh`
//! for both); add `efficientnet` or `resnet` to run one backbone. The figures are in
//! docs/PERFORMANCE.md.

mod common;

use common::wanted;
use patchcore::backbone::weights::{HashedWeights, SafetensorsFile, WeightSource};
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;

use patchcore::ffi::{
    patchcore_free, patchcore_load, patchcore_model_info, patchcore_predict, PatchcoreModelInfo, PatchcoreResult,
    PatchcoreStatus,
};
use patchcore::patchcore::{FitOptions, PatchCore};
use patchcore::rng::SplitMix64;
use std::ffi::CString;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SIDE: u32 = 256;
const ROUNDS: usize = 100;

/// A textured image like the pipeline bench's.
fn image(seed: u64) -> image::RgbImage {
    let mut rng = SplitMix64::new(seed);
    image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let v = 128.0 + 60.0 * ((x as f32 * 0.3).sin() * (y as f32 * 0.2).cos()) + 20.0 * rng.next_f64() as f32;
        image::Rgb([v as u8, (v * 0.8) as u8, (v * 0.6) as u8])
    })
}

/// Fits on 16 images with ratio 1 (a 16,384-row bank: a 10% coreset of 160 images, as the
/// pipeline bench) and saves the model where bench.c finds it.
fn fit(arch: Architecture, weights: &dyn WeightSource, dir: &Path) -> PathBuf {
    let train = dir.join("train");
    std::fs::create_dir_all(&train).unwrap();
    let paths: Vec<PathBuf> = (0..16)
        .map(|i| {
            let path = train.join(format!("{i:02}.png"));
            image(100 + i).save(&path).unwrap();
            path
        })
        .collect();
    let options =
        FitOptions { preprocess: arch.preprocess(SIDE as usize, None).unwrap(), ratio: 1.0, ..FitOptions::default() };
    let backbone = Backbone::load(&CpuBackend::default(), arch, ConvOrigin::Torchvision(weights)).unwrap();
    let model = PatchCore::fit(CpuBackend::default(), backbone, &paths, None, &options, &mut |_, _, _| {}).unwrap();
    let path = dir.join(format!("{arch}-{SIDE}.patchcore"));
    model.save(&path).unwrap();
    path
}

/// (p50, p99) in milliseconds, nearest rank.
fn percentiles(mut seconds: Vec<f64>) -> (f64, f64) {
    seconds.sort_by(f64::total_cmp);
    let at = |p: f64| seconds[((p * seconds.len() as f64).ceil() as usize).clamp(1, seconds.len()) - 1] * 1e3;
    (at(0.50), at(0.99))
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn compare(arch: Architecture, path: &Path) {
    let rust = PatchCore::load(CpuBackend::default(), path).unwrap();
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut handle = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings and a valid out pointer.
    let status = unsafe { patchcore_load(c_path.as_ptr(), c"cpu".as_ptr(), &mut handle) };
    assert_eq!(status, PatchcoreStatus::PATCHCORE_OK);
    let img = image(7);
    let pixels = img.as_raw();
    let images = std::slice::from_ref(&img);
    let mut result = PatchcoreResult::default();
    let mut c_call = || {
        // SAFETY: a SIDE x SIDE RGB buffer with rows 3 * SIDE apart, a result to write, no map.
        let status = unsafe {
            patchcore_predict(
                handle,
                pixels.as_ptr(),
                SIDE,
                SIDE,
                3 * SIDE as usize,
                3,
                &mut result,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, PatchcoreStatus::PATCHCORE_OK);
    };
    for _ in 0..5 {
        rust.predict(images).unwrap();
        c_call();
    }
    let (mut via_rust, mut via_c) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Which goes first alternates: the second call of a pair finds the caches and the
        // thread pool warmer.
        if round % 2 == 1 {
            via_c.push(time(&mut c_call));
        }
        via_rust.push(time(|| {
            black_box(rust.predict(images).unwrap());
        }));
        if round % 2 == 0 {
            via_c.push(time(&mut c_call));
        }
    }
    let (rust_p50, rust_p99) = percentiles(via_rust);
    let (c_p50, c_p99) = percentiles(via_c);
    println!(
        "{arch} {SIDE}px, {ROUNDS} interleaved calls each: Rust API p50 {rust_p50:.2} ms p99 {rust_p99:.2} ms | \
         C ABI p50 {c_p50:.2} ms p99 {c_p99:.2} ms | difference of medians {:+.3} ms ({:+.2}%)",
        c_p50 - rust_p50,
        100.0 * (c_p50 - rust_p50) / rust_p50
    );

    // The difference's two parts, each on its own.
    const CALLS: u32 = 200_000;
    // SAFETY: all-zero is a valid PatchcoreModelInfo (null pointers, zero numbers).
    let mut info: PatchcoreModelInfo = unsafe { std::mem::zeroed() };
    let fixed = time(|| {
        for _ in 0..CALLS {
            // SAFETY: a live handle and a writable struct.
            black_box(unsafe { patchcore_model_info(black_box(handle), &mut info) });
        }
    }) / CALLS as f64;
    let copy = time(|| {
        for _ in 0..1000 {
            // What the boundary does with a caller's buffer: gather the rows into a new image.
            let mut rgb = Vec::with_capacity(pixels.len());
            for row in black_box(pixels).chunks(3 * SIDE as usize) {
                rgb.extend_from_slice(row);
            }
            black_box(image::RgbImage::from_raw(SIDE, SIDE, rgb));
        }
    }) / 1000.0;
    println!(
        "  boundary parts: {:.0} ns per call (handle lookup, panic guard), \
         {:.1} us to copy the {SIDE}x{SIDE} RGB buffer",
        fixed * 1e9,
        copy * 1e6
    );
    assert_eq!(patchcore_free(handle), PatchcoreStatus::PATCHCORE_OK);
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-bench");
    let bundled = SafetensorsFile::bundled_efficientnet_lite0();
    let backbones: [(Architecture, &dyn WeightSource); 2] =
        [(Architecture::EfficientnetLite0, &bundled), (Architecture::Resnet18, &HashedWeights)];
    for (arch, weights) in backbones {
        if !wanted(arch.name()) {
            continue;
        }
        let path = fit(arch, weights, &dir);
        println!("model for examples/c/bench.c: {}", path.display());
        compare(arch, &path);
    }
}
