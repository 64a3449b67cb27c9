//! EfficientNet-Lite0 against PyTorch (scripts/make_fixtures.py): the architecture on hashed
//! weights, the bundled weights on a real picture, and (ignored: needs the full checkpoint)
//! the ImageNet classifier on two pictures with known labels.

mod common;

use common::{assert_close, fixture, fixture_path, rel_err, tensor};
use patchcore::backbone::weights::{HashedWeights, SafetensorsFile};
use patchcore::backbone::{efficientnet, Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;
use patchcore::data::image::load_rgb;
use patchcore::Tensor;
use std::path::PathBuf;

const ARCH: Architecture = Architecture::EfficientnetLite0;
/// Relative error (max abs diff / max abs) of activations: f32 against f32, as tests/reference.rs.
const TOL: f64 = 1e-4;

fn bundled_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet_lite0.safetensors")
}

#[test]
fn architecture_facts() {
    assert_eq!("efficientnet_lite0".parse::<Architecture>().unwrap(), ARCH);
    assert_eq!(ARCH.name(), "efficientnet_lite0");
    assert_eq!(serde_json::to_string(&ARCH).unwrap(), "\"efficientnet_lite0\"");
    assert_eq!(ARCH.spec().layers, ["blocks.4", "blocks.10"]);
    assert_eq!(ARCH.embedding_dim(), 152);
    assert_eq!(ARCH.spec().bn_eps, 1e-3);
    // TF input scaling: (x * 255 - 127) / 128 on 8-bit values.
    let (mean, std) = (ARCH.spec().mean, ARCH.spec().std);
    for v in [0.0f32, 127.0, 255.0] {
        let ours = (v / 255.0 - mean[0]) / std[0];
        assert!((ours - (v - 127.0) / 128.0).abs() < 1e-6, "{v}: {ours}");
    }
}

/// The architecture (TF-same padding, depthwise convolutions, ReLU6, residuals, eps 1e-3)
/// against plain PyTorch on hashed weights, on an input whose odd sizes pad asymmetrically.
#[test]
fn blocks_match_pytorch_on_hashed_weights() {
    let fx = fixture("efficientnet_lite0.safetensors");
    let shape = [2, 3, 64, 96];
    let input = Tensor::new(shape.to_vec(), tensor(&fx, "input", &shape));
    let net = Backbone::load(&CpuBackend::default(), ARCH, ConvOrigin::Torchvision(&HashedWeights)).unwrap();
    let out = net.forward(&CpuBackend::default(), &input).unwrap();
    assert_eq!(out[0].shape, vec![2, 40, 8, 12]);
    assert_eq!(out[1].shape, vec![2, 112, 4, 6]);
    assert_close("block4", &out[0].data, &tensor(&fx, "block4", &out[0].shape), TOL);
    assert_close("block10", &out[1].data, &tensor(&fx, "block10", &out[1].shape), TOL);
}

/// The committed weights file loads (every tensor blocks 0..10 need is there, with the right
/// shape) and gives PyTorch's activations on chelsea.png through our own pre-processing.
#[test]
fn bundled_weights_match_pytorch_on_chelsea() {
    let weights = SafetensorsFile::open(&bundled_path()).unwrap();
    let net = Backbone::load(&CpuBackend::default(), ARCH, ConvOrigin::Torchvision(&weights)).unwrap();
    let pre = ARCH.preprocess(128, None).unwrap();
    let input = pre.batch(&[load_rgb(&fixture_path("chelsea.png")).unwrap()]);
    let out = net.forward(&CpuBackend::default(), &input).unwrap();
    assert_eq!(out[0].shape, vec![1, 40, 16, 16]);
    assert_eq!(out[1].shape, vec![1, 112, 8, 8]);
    assert!(out.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
    let fx = fixture("efficientnet_bundled.safetensors");
    assert_close("block4", &out[0].data, &tensor(&fx, "block4", &out[0].shape), TOL);
    assert_close("block10", &out[1].data, &tensor(&fx, "block10", &out[1].shape), TOL);
}

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(5);
    order
}

/// The full classifier on the real weights: chelsea is a tabby cat (285), coffee an espresso
/// (967), and the logits match PyTorch's on the same weights and pre-processing. The
/// top-5 logits of both pictures are at least 0.13 apart, far above the tolerance.
#[test]
#[ignore = "needs the full EfficientNet-Lite0 weights: run scripts/make_bundled_weights.sh --full, then set PATCHCORE_EFFNET_FULL"]
fn classifies_chelsea_and_coffee_like_pytorch() {
    let path =
        PathBuf::from(std::env::var_os("PATCHCORE_EFFNET_FULL").expect("PATCHCORE_EFFNET_FULL names the full weights"));
    let full = SafetensorsFile::open(&path).unwrap();

    // The bundled file is an exact subset of the full checkpoint.
    let (bundled, full_bytes) = (std::fs::read(bundled_path()).unwrap(), std::fs::read(&path).unwrap());
    let ours = safetensors::SafeTensors::deserialize(&bundled).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&full_bytes).unwrap();
    assert_eq!(ours.len(), 165);
    for (name, view) in ours.tensors() {
        let t = theirs.tensor(&name).unwrap();
        assert!(view.dtype() == t.dtype() && view.shape() == t.shape() && view.data() == t.data(), "{name}");
    }

    let json = std::fs::read_to_string(fixture_path("efficientnet_classes.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pre = ARCH.preprocess(224, None).unwrap();
    let pictures = [("chelsea.png", 285), ("coffee.png", 967)];
    let images: Vec<_> = pictures.iter().map(|(png, _)| load_rgb(&fixture_path(png)).unwrap()).collect();
    let logits = efficientnet::classify(&CpuBackend::default(), &full, &pre.batch(&images)).unwrap();
    assert_eq!(logits.shape, vec![2, 1000]);
    for (i, (png, label)) in pictures.into_iter().enumerate() {
        let ours = &logits.data[i * 1000..(i + 1) * 1000];
        let theirs = &want["images"][png];
        let their_logits: Vec<f32> = serde_json::from_value(theirs["logits"].clone()).unwrap();
        let their_top5: Vec<usize> = serde_json::from_value(theirs["top5"].clone()).unwrap();
        println!(
            "{png}: top-5 {:?} (PyTorch {their_top5:?}), logit error {:.2e}",
            top5(ours),
            rel_err(ours, &their_logits)
        );
        assert_eq!(top5(ours)[0], label, "{png}");
        assert_eq!(top5(ours), their_top5, "{png}");
        assert_close(png, ours, &their_logits, TOL);
    }
}
