//! `PATCHCORE_TRACE=FILE` for a C host: a model written by the library, loaded, used and freed
//! through the C ABI, leaves a Chrome trace of the run in FILE. Its own test binary, because the
//! variable is read once per process.

mod common;

use common::{synthetic_category, synthetic_image, TempDir};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;
use patchcore::data::dataset::list_training_images;
use patchcore::ffi::PatchcoreStatus::PATCHCORE_OK;
use patchcore::ffi::{patchcore_free, patchcore_load, patchcore_predict, PatchcoreResult};
use patchcore::{FitOptions, PatchCore};
use std::ffi::CString;
use std::ptr::null_mut;

#[test]
fn the_c_abi_writes_the_trace_patchcore_trace_names_when_a_model_is_freed() {
    let dir = TempDir::new("trace-env");
    let trace = dir.path().join("run.json");
    // Set before any model is fitted or loaded in this process, which is when it is read.
    std::env::set_var("PATCHCORE_TRACE", &trace);
    synthetic_category(dir.path(), 64, 4, 1);
    let train = list_training_images(&dir.path().join("train/good")).unwrap();
    let backbone =
        Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
            .unwrap();
    let options = FitOptions { preprocess: Architecture::Resnet18.preprocess(64, None).unwrap(), ..Default::default() };
    let path = dir.path().join("model.patchcore");
    PatchCore::fit(CpuBackend::default(), backbone, &train, None, &options, &mut |_, _, _| {})
        .unwrap()
        .save(&path)
        .unwrap();
    assert!(trace.exists(), "the fitted model's drop writes the trace");

    let mut handle = null_mut();
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a valid out pointer.
    assert_eq!(unsafe { patchcore_load(c_path.as_ptr(), c"cpu".as_ptr(), &mut handle) }, PATCHCORE_OK);
    let (image, _) = synthetic_image(64, 7, true);
    let mut result = PatchcoreResult::default();
    // SAFETY: a live handle, a 64 x 64 RGB buffer with its stride, no map.
    let status =
        unsafe { patchcore_predict(handle, image.as_raw().as_ptr(), 64, 64, 192, 3, &mut result, null_mut(), 0) };
    assert_eq!(status, PATCHCORE_OK);
    assert_eq!(patchcore_free(handle), PATCHCORE_OK);

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let spans: Vec<&serde_json::Value> =
        json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    let count = |name: &str| spans.iter().filter(|e| e["name"] == name).count();
    // fit: the fold's and the final bank's coresets; the C host's predict after it.
    assert_eq!(count("coreset"), 2, "both of fit's coresets");
    assert!(count("layer2.0.conv1") >= 3, "the fit's forward passes and the C host's one");
    assert!(count("knn") >= 2, "the fold's thresholds and the C host's predict");
    let last_knn = spans.iter().filter(|e| e["name"] == "knn").map(|e| e["ts"].as_f64().unwrap()).fold(0.0, f64::max);
    let last_coreset =
        spans.iter().filter(|e| e["name"] == "coreset").map(|e| e["ts"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(last_knn > last_coreset, "the C host's predict, after fit, is in the file");
}
