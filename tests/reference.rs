//! The engine against PyTorch golden outputs (tests/fixtures, written by
//! scripts/make_fixtures.py). Tolerance: relative error (max abs diff / max abs value) at most
//! 1e-4 for activations, embeddings, scores and maps, in f32.

mod common;

use common::{assert_close, fixture, fixture_path, tensor};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::{Backend, CpuBackend};
use patchcore::data::image::load_rgb;
use patchcore::patchcore::MAP_SIGMA;
use patchcore::Tensor;

const TOL: f64 = 1e-4;
const INPUT: [usize; 4] = [2, 3, 64, 96];

fn backbone(arch: Architecture) -> Backbone<CpuBackend> {
    Backbone::load(&CpuBackend::default(), arch, ConvOrigin::Torchvision(&HashedWeights)).expect("hashed weights load")
}

fn check_backbone(arch: Architecture, file: &str) {
    let fx = fixture(file);
    let &[c2, c3] = arch.spec().channels else { panic!("two feature layers") };
    let input = Tensor::new(INPUT.to_vec(), tensor(&fx, "input", &INPUT));
    let out = backbone(arch).forward(&CpuBackend::default(), &input).unwrap();
    assert_eq!(out[0].shape, vec![2, c2, 8, 12]);
    assert_eq!(out[1].shape, vec![2, c3, 4, 6]);
    assert_close("layer2", &out[0].data, &tensor(&fx, "layer2", &out[0].shape), TOL);
    assert_close("layer3", &out[1].data, &tensor(&fx, "layer3", &out[1].shape), TOL);
}

#[test]
fn resnet18_layers_match_torchvision() {
    check_backbone(Architecture::Resnet18, "resnet18.safetensors");
}

#[test]
fn wide_resnet50_2_layers_match_torchvision() {
    check_backbone(Architecture::WideResnet50_2, "wide_resnet50_2.safetensors");
}

fn embedding_of(input: &Tensor) -> Tensor {
    let features = backbone(Architecture::Resnet18).forward(&CpuBackend::default(), input).unwrap();
    CpuBackend::default().embed(&[&features[0], &features[1]]).unwrap()
}

#[test]
fn embedding_matches_anomalib() {
    let fx = fixture("resnet18.safetensors");
    let emb = embedding_of(&Tensor::new(INPUT.to_vec(), tensor(&fx, "input", &INPUT)));
    assert_eq!(emb.shape, vec![192, 384]);
    assert_close("embedding", &emb.data, &tensor(&fx, "embedding", &[192, 384]), TOL);
    let bank = embedding_of(&Tensor::new(vec![3, 3, 64, 96], tensor(&fx, "bank_input", &[3, 3, 64, 96])));
    assert_close("bank", &bank.data, &tensor(&fx, "bank", &[288, 384]), TOL);
}

/// Patch scores, Eq. 7 image scores (at the fixture's scale and at 1/16, where the softmax
/// weight is far from 1) and anomaly maps, from the fixture's own embedding and bank.
#[test]
fn scores_and_maps_match_anomalib() {
    let fx = fixture("resnet18.safetensors");
    for (scale, key) in [(1.0f32, "image_score"), (1.0 / 16.0, "image_score_scaled")] {
        let scaled = |name: &str, shape: &[usize]| {
            Tensor::new(shape.to_vec(), tensor(&fx, name, shape).iter().map(|v| v * scale).collect())
        };
        let queries = scaled("embedding", &[192, 384]);
        let bank_rows = scaled("bank", &[288, 384]);
        let bank = CpuBackend::default().prepare_bank(bank_rows.clone()).unwrap();
        let (dist, _) = CpuBackend::default().knn(&queries, &bank, 1).unwrap();
        let want_scores: Vec<f32> = tensor(&fx, "patch_scores", &[2, 8, 12]).iter().map(|v| v * scale).collect();
        assert_close("patch scores", &dist, &want_scores, TOL);
        let got = CpuBackend::default().score(&queries, &bank, [8, 12], 9, [64, 96], MAP_SIGMA).unwrap();
        assert_close(key, &got.scores, &tensor(&fx, key, &[2]), TOL);
        let maxima: Vec<f32> = want_scores.chunks(96).map(|p| p.iter().copied().fold(f32::MIN, f32::max)).collect();
        assert_close("max patch distances", &got.max_patch_distances, &maxima, TOL);
        if scale == 1.0 {
            assert_close("anomaly map", &got.maps.data, &tensor(&fx, "anomaly_map", &[2, 64, 96]), TOL);
        }
    }
}

#[test]
fn preprocessing_matches_torchvision_v2() {
    let fx = fixture("preprocess.safetensors");
    let img = load_rgb(&fixture_path("preprocess_input.png")).unwrap();
    let p = Architecture::Resnet18.preprocess(256, None).unwrap();
    assert_close("downscale", &p.resize_normalize(&img, 24, 36), &tensor(&fx, "down", &[3, 24, 36]), TOL);
    assert_close("upscale", &p.resize_normalize(&img, 96, 128), &tensor(&fx, "up", &[3, 96, 128]), TOL);
}

/// The CLI's default path against anomalib (issue 9): `fit` without `--val` at ratio 1 keeps
/// every training row, so `predict`'s scores, its largest patch distances and the model's maps
/// are anomalib's for the same PNG files (tests/fixtures/pipeline/, scripts/make_fixtures.py).
#[test]
fn cli_default_fit_and_predict_match_anomalib() {
    use common::{patchcore, s, stderr, write_hashed_weights, TempDir};
    use patchcore::patchcore::PatchCore;

    let dir = TempDir::new("reference-cli");
    let weights = dir.path().join("resnet18.safetensors");
    write_hashed_weights(Architecture::Resnet18, &weights);
    let model = dir.path().join("model.patchcore");
    let run = |args: &[&str]| {
        let o = patchcore(args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let data = fixture_path("pipeline");
    let train = data.join("train/good");
    let (weights, train, model_arg) = (s(&weights), s(&train), s(&model));
    run(&[
        "fit",
        "--backbone",
        "resnet18",
        "--weights",
        weights,
        "--train",
        train,
        "--ratio",
        "1",
        "--size",
        "64",
        "--out",
        model_arg,
    ]);
    let tests = [data.join("test/good.png"), data.join("test/defect.png")];
    let out = run(&["predict", "--model", model_arg, s(&tests[0]), s(&tests[1])]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |key: &str| -> Vec<f32> { lines.iter().map(|l| l[key].as_f64().unwrap() as f32).collect() };
    let fx = fixture("pipeline.safetensors");
    assert_close("image score", &field("score"), &tensor(&fx, "image_score", &[2]), TOL);
    assert_close("max patch distance", &field("max_patch_distance"), &tensor(&fx, "max_patch_distance", &[2]), TOL);

    let fitted = PatchCore::load(CpuBackend::default(), &model).unwrap();
    assert_eq!(fitted.meta().bank_rows, 4 * 8 * 8, "every row of the 4 training images");
    let images: Vec<_> = tests.iter().map(|p| load_rgb(p).unwrap()).collect();
    let maps: Vec<f32> = fitted.predict(&images).unwrap().into_iter().flat_map(|p| p.map).collect();
    assert_close("anomaly map", &maps, &tensor(&fx, "anomaly_map", &[2, 64, 64]), TOL);
}
