//! The demo's pipeline on one small generated category: the bundled EfficientNet-Lite0,
//! default PatchCore settings, F1-adaptive thresholds. A regression in any stage (data,
//! backbone, embedding, coreset, scoring, maps, metrics) shows up as lost separation.

mod common;

use common::TempDir;
use patchcore::backbone::weights::SafetensorsFile;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;
use patchcore::data::dataset::Category;

use patchcore::data::synth::{generate, SynthOptions};
use patchcore::patchcore::evaluate::evaluate;
use patchcore::patchcore::{FitOptions, PatchCore};

#[test]
fn demo_pipeline_separates_defective_from_good() {
    let dir = TempDir::new("demo");
    let synth = SynthOptions { size: 128, train: 12, test_good: 6, test_per_defect: 3, seed: 5 };
    let root = generate(dir.path(), "grain", &synth).unwrap().root;
    let category = Category::open(&root).unwrap();
    let arch = Architecture::EfficientnetLite0;
    let weights = SafetensorsFile::bundled_efficientnet_lite0();
    let backbone = Backbone::load(&CpuBackend::default(), arch, ConvOrigin::Torchvision(&weights)).unwrap();
    let options = FitOptions { preprocess: arch.preprocess(128, None).unwrap(), ..FitOptions::default() };
    let model = PatchCore::fit(
        CpuBackend::default(),
        backbone,
        &category.train,
        Some(&category.test),
        &options,
        &mut |_, _, _| {},
    )
    .unwrap();
    let metrics = evaluate(&model, &category.test, 8, &mut |_, _, _| {}, &mut |_, _| Ok(())).unwrap().metrics;
    let image = metrics.image_auroc.unwrap();
    let pixel = metrics.pixel_auroc.unwrap();
    assert!(image > 0.9, "image AUROC {image}");
    assert!(pixel > 0.9, "pixel AUROC {pixel}");
}
