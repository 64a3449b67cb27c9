//! Fit and evaluate one MVTec-style category: shared by `eval`, `benchmark` and `demo`.

use super::Bars;
use crate::backbone::weights::WeightSource;
use crate::backbone::{Architecture, Backbone, ConvOrigin};
use crate::backend::Backend;
use crate::data::dataset::Category;
use crate::data::image::load_mask;
use crate::error::{Error, Result};
use crate::patchcore::evaluate::evaluate;
use crate::patchcore::{FitOptions, PatchCore};
use crate::render::report::{CategoryReport, Example};
use crate::render::{prediction_overlay, side_by_side, write_png};
use std::path::Path;
use std::time::Instant;

/// Fits on the category's train/good with its test set as validation (anomalib's MVTec
/// default), returning the model and the seconds it took.
pub fn fit_category<B: Backend>(
    backend: B,
    arch: Architecture,
    weights: &dyn WeightSource,
    category: &Category,
    options: &FitOptions,
    bars: &mut Bars,
) -> Result<(PatchCore<B>, f64)> {
    let started = Instant::now();
    let backbone = Backbone::load(&backend, arch, ConvOrigin::Torchvision(weights))?;
    let model = PatchCore::fit(backend, backbone, &category.train, Some(&category.test), options, &mut |s, d, t| {
        bars.update(s, d, t)
    })?;
    bars.finish();
    Ok((model, started.elapsed().as_secs_f64()))
}

/// Evaluates on the category's test set. With `out`, writes every image's original and
/// overlay side by side to `out/<defect>/<name>.png` and picks report examples: two good
/// images and the first of each defect.
pub fn evaluate_category<B: Backend>(
    model: &PatchCore<B>,
    category: &Category,
    batch: usize,
    out: Option<&Path>,
    bars: &mut Bars,
) -> Result<(CategoryReport, f64)> {
    let started = Instant::now();
    let mut examples = Vec::new();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let evaluation =
        evaluate(model, &category.test, batch, &mut |s, d, t| bars.update(s, d, t), &mut |scored, image| {
            let Some(dir) = out else { return Ok(()) };
            let sample = &scored.sample;
            let mask = sample.mask.as_deref().map(|m| load_mask(m, image.width(), image.height())).transpose()?;
            let overlay = prediction_overlay(image, &scored.prediction, model.meta(), mask.as_ref());
            let name = sample.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let folder = dir.join(&sample.category);
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            let file = folder.join(format!("{name}.png"));
            write_png(&file, &side_by_side(image, &overlay))?;
            let count = seen.entry(sample.category.clone()).or_default();
            *count += 1;
            if *count <= if sample.anomalous { 1 } else { 2 } {
                let verdict = if scored.prediction.anomalous { "flagged anomalous" } else { "passed as normal" };
                examples.push(Example {
                    file: format!("{}/{}/{name}.png", category.name, sample.category),
                    caption: format!("{} / {name}: score {:.3} ({verdict})", sample.category, scored.prediction.score),
                    anomalous: sample.anomalous,
                });
            }
            Ok(())
        })?;
    bars.finish();
    let mut notes = Vec::new();
    if evaluation.metrics.skipped_masks > 0 {
        notes.push(format!(
            "{} defect image(s) have no ground-truth mask: evaluated at image level, skipped by the pixel metrics",
            evaluation.metrics.skipped_masks
        ));
    }
    let report = CategoryReport {
        name: category.name.clone(),
        metrics: evaluation.metrics,
        timings: Vec::new(),
        examples,
        notes,
    };
    Ok((report, started.elapsed().as_secs_f64()))
}
