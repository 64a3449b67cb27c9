//! The CPU's convolution arithmetics end to end, on one model fitted with f32 im2col + sgemm
//! (`CpuBackend::portable`, the reference): the default's tiles (split bf16 where the CPU has
//! AMX, f32 tiles with AVX-512F) give scores within 2e-5 of the largest score of it (1.7e-3 at
//! these hashed weights' scores of about 86; split measured 9.4e-4, the size of f32's own
//! summation-order differences: a fourth split product, lo.lo, moved it to 1.1e-3), bf16 tiles
//! (`--precision bf16`) scores within 2% and the same ranking of good and defective images.
//! Where the CPU has no tiles the cases print why and check nothing; the portable path is then
//! the one every other test runs. `PATCHCORE_BF16_PRODUCTS=avx512` or `off` (as CI sets) runs
//! them on what a CPU without AMX runs.

mod common;

use common::{synthetic_category, TempDir};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::cpu::bf16_unavailable;
use patchcore::backend::{CpuBackend, Precision};
use patchcore::data::dataset::{list_labelled, list_training_images};
use patchcore::data::image::load_rgb;
use patchcore::patchcore::{FitOptions, PatchCore, RawScore};
use std::path::{Path, PathBuf};

/// A 128 px ResNet-18 model fitted by the portable backend, and its category.
fn fitted(dir: &TempDir) -> (PathBuf, PathBuf) {
    let data = dir.path().join("cat");
    synthetic_category(&data, 128, 6, 4);
    let train = list_training_images(&data.join("train/good")).unwrap();
    let backend = CpuBackend::portable();
    let backbone = Backbone::load(&backend, Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights)).unwrap();
    let options = FitOptions {
        preprocess: Architecture::Resnet18.preprocess(128, None).unwrap(),
        ratio: 0.5,
        ..FitOptions::default()
    };
    let model = PatchCore::fit(backend, backbone, &train, None, &options, &mut |_, _, _| {}).unwrap();
    let path = dir.path().join("model.patchcore");
    model.save(&path).unwrap();
    (path, data)
}

/// The test images' raw scores through `backend`, and whether each is defective.
fn scores(backend: CpuBackend, model: &Path, data: &Path) -> (Vec<RawScore>, Vec<bool>) {
    let model = PatchCore::load(backend, model).unwrap();
    let samples = list_labelled(&data.join("test")).unwrap();
    let images: Vec<_> = samples.iter().map(|s| load_rgb(&s.path).unwrap()).collect();
    (model.score_images(&images).unwrap(), samples.iter().map(|s| s.anomalous).collect())
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn default_tiles_score_within_2e_5_of_the_largest_f32_score() {
    let default = CpuBackend::default();
    if default.convolutions() == CpuBackend::portable().convolutions() {
        println!("skipped: the CPU has no AVX-512F, so the default is im2col + sgemm");
        return;
    }
    let convolutions = default.convolutions();
    let dir = TempDir::new("cpu-default");
    let (model, data) = fitted(&dir);
    let (reference, _) = scores(CpuBackend::portable(), &model, &data);
    let (split, _) = scores(default, &model, &data);
    let field = |s: &[RawScore], f: fn(&RawScore) -> f32| s.iter().map(f).collect::<Vec<_>>();
    let score = largest_difference(&field(&split, |s| s.score), &field(&reference, |s| s.score));
    let distance =
        largest_difference(&field(&split, |s| s.max_patch_distance), &field(&reference, |s| s.max_patch_distance));
    let map = split.iter().zip(&reference).map(|(a, b)| largest_difference(&a.map, &b.map)).fold(0.0, f32::max);
    let top = reference.iter().map(|s| s.score).fold(0.0, f32::max);
    println!(
        "{convolutions} vs f32: scores (up to {top:.1}) within {score:.2e}, patch distances {distance:.2e}, maps {map:.2e}"
    );
    let tolerance = 2e-5 * top;
    assert!(score <= tolerance && distance <= tolerance && map <= tolerance, "{score} {distance} {map}");
}

#[test]
fn bf16_tiles_keep_the_ranking_within_2_percent() {
    let backend = match CpuBackend::new(Precision::Bf16) {
        Ok(b) => b,
        Err(e) => {
            // The refusal names the reason; nothing else to check without bf16 products.
            assert!(e.to_string().contains(bf16_unavailable().expect("refused only without bf16 products")), "{e}");
            println!("skipped: {e}");
            return;
        }
    };
    let dir = TempDir::new("cpu-bf16");
    let (model, data) = fitted(&dir);
    let (reference, defective) = scores(CpuBackend::portable(), &model, &data);
    let (bf16, _) = scores(backend, &model, &data);
    let relative = bf16.iter().zip(&reference).map(|(a, b)| ((a.score - b.score) / b.score).abs()).fold(0.0, f32::max);
    println!("bf16 vs f32: per-image scores within {:.3}%", 100.0 * relative);
    assert!(relative <= 0.02, "bf16 moved a score by {:.2}%", 100.0 * relative);
    // Every defective image still outscores every good one, as in f32.
    let split = |s: &[RawScore], bad: bool| -> Vec<f32> {
        s.iter().zip(&defective).filter(|(_, &d)| d == bad).map(|(s, _)| s.score).collect()
    };
    for scores in [&reference, &bf16] {
        let best_good = split(scores, false).into_iter().fold(f32::MIN, f32::max);
        assert!(split(scores, true).iter().all(|&b| b > best_good));
    }
}
