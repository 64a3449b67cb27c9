//! Model files and weights files: round trip, and every way a file can be wrong.

mod common;

use common::{rewrite_model, synthetic_category, write_f32_safetensors, TempDir};
use patchcore::backbone::weights::{HashedWeights, SafetensorsFile, WeightSource};
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;
use patchcore::data::dataset::list_training_images;
use patchcore::data::image::load_rgb;
use patchcore::patchcore::{FitOptions, PatchCore};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

fn fit_small(dir: &Path) -> PatchCore<CpuBackend> {
    synthetic_category(dir, 64, 4, 1);
    let train = list_training_images(&dir.join("train/good")).unwrap();
    let backbone =
        Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
            .unwrap();
    let options = FitOptions {
        preprocess: Architecture::Resnet18.preprocess(64, None).unwrap(),
        ratio: 0.25,
        ..FitOptions::default()
    };
    PatchCore::fit(CpuBackend::default(), backbone, &train, None, &options, &mut |_, _, _| {}).unwrap()
}

/// The memory bank holds every training image whether or not a validation set is given: the
/// held-out fold only sets the thresholds (issue 9: anomalib's scores by default).
#[test]
fn fit_without_val_keeps_every_training_image_in_the_bank() {
    let dir = TempDir::new("full-bank");
    let cat = dir.path().join("cat");
    synthetic_category(&cat, 64, 5, 1);
    let train = list_training_images(&cat.join("train/good")).unwrap();
    let val = patchcore::data::dataset::list_labelled(&cat.join("test")).unwrap();
    let options = FitOptions {
        preprocess: Architecture::Resnet18.preprocess(64, None).unwrap(),
        ratio: 1.0,
        ..FitOptions::default()
    };
    let fit = |val: Option<&[patchcore::data::dataset::Sample]>| {
        let backbone =
            Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
                .unwrap();
        PatchCore::fit(CpuBackend::default(), backbone, &train, val, &options, &mut |_, _, _| {}).unwrap()
    };
    let (held_out, labelled) = (fit(None), fit(Some(&val)));
    let [h, w] = held_out.meta().grid;
    assert_eq!(held_out.bank_rows().shape, vec![5 * h * w, 384], "all 5 images x {h}x{w} patches");
    assert_eq!(held_out.meta().bank_rows, 5 * h * w);
    assert_eq!(held_out.meta().train_images, 5);
    assert_eq!(held_out.bank_rows(), labelled.bank_rows(), "the same bank with and without --val");
    // The held-out image was scored against a bank without it: its thresholds are not those
    // of an image scored against itself (0 at every patch).
    assert!(held_out.meta().image.threshold > 0.0, "{:?}", held_out.meta().image);
}

/// Rewrites a model file with its metadata JSON edited by `edit`.
fn rewrite_meta(path: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    rewrite_model(path, out, edit, |_| {});
}

#[test]
fn model_file_round_trip_and_refusals() {
    let dir = TempDir::new("model-file");
    let model = fit_small(&dir.path().join("cat"));
    let path = dir.path().join("m.safetensors");
    model.save(&path).unwrap();
    let loaded = PatchCore::load(CpuBackend::default(), &path).unwrap();
    assert_eq!(loaded.meta(), model.meta());
    assert!(model.meta().thresholds_from.contains("held-out"), "{}", model.meta().thresholds_from);
    let img = load_rgb(&dir.path().join("cat/test/square/000.png")).unwrap();
    let (a, b) = (&model.predict(std::slice::from_ref(&img)).unwrap()[0], &loaded.predict(&[img]).unwrap()[0]);
    assert_eq!((a.score, a.normalized, a.anomalous), (b.score, b.normalized, b.anomalous));
    assert_eq!(a.map, b.map);

    let err = |p: &Path| PatchCore::load(CpuBackend::default(), p).err().expect("refused").to_string();

    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let e = err(&truncated);
    assert!(e.contains("truncated.safetensors") && e.contains("truncated or corrupt"), "{e}");

    let newer = dir.path().join("v2.safetensors");
    rewrite_meta(&path, &newer, |j| j["format_version"] = 2.into());
    let e = err(&newer);
    assert!(e.contains("v2.safetensors") && e.contains("format version 2") && e.contains("reads version 1"), "{e}");

    // Another backbone: the metadata says WRN-50; its layer1 convolutions are not in the file.
    let other = dir.path().join("other.safetensors");
    rewrite_meta(&path, &other, |j| {
        j["backbone"] = "wide_resnet50_2".into();
        j["embedding_dim"] = 1536.into();
    });
    let e = err(&other);
    assert!(e.contains("other.safetensors") && e.contains("backbone.layer1.0.") && e.contains("missing"), "{e}");

    let no_meta = dir.path().join("plain.safetensors");
    write_f32_safetensors(&no_meta, &[("x".into(), vec![1], vec![1.0])], None);
    assert!(err(&no_meta).contains("not a patchcore model"));

    // The atomic write leaves no temporary file behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

/// The file keeps the bank's cluster order (found when it is written, so that a load need not):
/// a file without one (written before it) and one in another order load and score the same; an
/// order that is not one of the bank's rows, or not U32, is refused, naming the file and tensor.
#[test]
fn the_banks_cluster_order_is_optional_and_checked() {
    const ORDER: &str = "memory_bank.cluster_order";
    let dir = TempDir::new("bank-order");
    let model = fit_small(&dir.path().join("cat"));
    let path = dir.path().join("m.patchcore");
    model.save(&path).unwrap();
    let m = model.meta().bank_rows;
    let saved = SafetensorsFile::open(&path).unwrap().u32_values(ORDER, m).unwrap().expect("written");
    let mut sorted = saved.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..m as u32).collect::<Vec<_>>(), "each row once");

    // The model file with its order replaced by `order` (f32 values where `f32`), or removed.
    let with_order = |name: &str, order: Option<Vec<u32>>, f32: bool| {
        let out = dir.path().join(name);
        rewrite_model(
            &path,
            &out,
            |_| {},
            |tensors| {
                tensors.retain(|t| t.0 != ORDER);
                if let Some(order) = order {
                    let (dtype, bytes) = match f32 {
                        true => (Dtype::F32, order.iter().flat_map(|&i| (i as f32).to_le_bytes()).collect()),
                        false => (Dtype::U32, order.iter().flat_map(|i| i.to_le_bytes()).collect()),
                    };
                    tensors.push((ORDER.into(), dtype, vec![order.len()], bytes));
                }
            },
        );
        out
    };
    let img = load_rgb(&dir.path().join("cat/test/square/000.png")).unwrap();
    let want = model.predict(std::slice::from_ref(&img)).unwrap().remove(0);
    let reversed: Vec<u32> = (0..m as u32).rev().collect();
    for (name, order) in [("none.patchcore", None), ("reversed.patchcore", Some(reversed.clone()))] {
        let loaded = PatchCore::load(CpuBackend::default(), &with_order(name, order, false)).unwrap();
        let got = loaded.predict(std::slice::from_ref(&img)).unwrap().remove(0);
        assert_eq!((got.score, &got.map), (want.score, &want.map), "{name}");
    }

    let err = |p: &Path| PatchCore::load(CpuBackend::default(), p).err().expect("refused").to_string();
    let mut twice = reversed.clone();
    twice[m - 1] = twice[0];
    let e = err(&with_order("twice.patchcore", Some(twice), false));
    assert!(
        e.contains("twice.patchcore") && e.contains(ORDER) && e.contains(&format!("row {} comes twice", m - 1)),
        "{e}"
    );
    let e = err(&with_order("short.patchcore", Some(reversed[1..].to_vec()), false));
    assert!(e.contains(ORDER) && e.contains(&format!("expected U32 of shape [{m}]")), "{e}");
    let e = err(&with_order("f32.patchcore", Some(reversed), true));
    assert!(e.contains(ORDER) && e.contains("F32"), "{e}");
}

/// Every resnet18 tensor, from the hashed weights, to be spoiled one way at a time.
fn hashed_resnet18(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let path = dir.join("good.safetensors");
    common::write_hashed_weights(Architecture::Resnet18, &path);
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = parsed.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let shape = parsed.tensor(&n).unwrap().shape().to_vec();
            let v = HashedWeights.tensor(&n, &shape).unwrap();
            (n, shape, v)
        })
        .collect()
}

fn load_error(path: &Path) -> String {
    let file = SafetensorsFile::open(path).unwrap();
    Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&file))
        .err()
        .expect("refused")
        .to_string()
}

#[test]
fn weights_files_name_the_bad_tensor() {
    let dir = TempDir::new("weights");
    let tensors = hashed_resnet18(dir.path());
    let target = "layer2.0.conv1.weight";
    let at = tensors.iter().position(|t| t.0 == target).unwrap();
    let path = dir.path().join("bad.safetensors");

    let mut missing = tensors.clone();
    missing.remove(at);
    write_f32_safetensors(&path, &missing, None);
    let e = load_error(&path);
    assert!(e.contains("bad.safetensors") && e.contains(target) && e.contains("missing"), "{e}");

    let mut misshaped = tensors.clone();
    misshaped[at].1 = vec![128, 64, 3, 3 * 2];
    let copy = misshaped[at].2.clone();
    misshaped[at].2.extend(copy);
    write_f32_safetensors(&path, &misshaped, None);
    let e = load_error(&path);
    assert!(e.contains(target) && e.contains("shape [128, 64, 3, 6]"), "{e}");

    let mut nan = tensors.clone();
    nan[at].2[17] = f32::NAN;
    write_f32_safetensors(&path, &nan, None);
    let e = load_error(&path);
    assert!(e.contains(target) && e.contains("non-finite") && e.contains("index 17"), "{e}");

    // The same tensor stored as f64: refused by dtype.
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, _, v))| {
            if i == at {
                v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .enumerate()
        .map(|(i, (n, s, _))| {
            let dtype = if i == at { safetensors::Dtype::F64 } else { safetensors::Dtype::F32 };
            (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), &bytes[i]).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()).unwrap();
    let e = load_error(&path);
    assert!(e.contains(target) && e.contains("dtype F64"), "{e}");
}
