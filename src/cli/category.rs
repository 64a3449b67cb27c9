//! Fit and evaluate one MVTec-style category: shared by `eval`, `benchmark` and `demo`.

use super::Bars;
use crate::backbone::weights::WeightSource;
use crate::backbone::{Architecture, Backbone, ConvOrigin};
use crate::backend::Backend;
use crate::data::dataset::{Category, Sample};
use crate::data::image::load_mask;
use crate::error::{Error, Result};
use crate::eval::curve::{Curve, MAX_CURVE_POINTS};
use crate::eval::histogram::ScoreHistogram;
use crate::eval::metrics::AUPRO_FPR_LIMIT;
use crate::patchcore::evaluate::evaluate;
use crate::patchcore::{FitOptions, PatchCore};
use crate::render::examples::pick_examples;
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

/// Bins of the report's score histogram: fine enough to show the shape of 800 scores, wide
/// enough to read each bar.
const REPORT_BINS: usize = 40;

/// An image's side-by-side overlay under the category's output folder: `<defect>/<stem>.png`.
fn overlay_file(sample: &Sample) -> String {
    let name = sample.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{}/{name}.png", sample.category)
}

/// Evaluates on the category's test set. With `out`, writes every image's original and
/// overlay side by side to `out/<defect>/<name>.png`, and the report shows up to `examples`
/// of them: the worst cases first ([`pick_examples`]).
pub fn evaluate_category<B: Backend>(
    model: &PatchCore<B>,
    category: &Category,
    batch: usize,
    out: Option<&Path>,
    examples: usize,
    bars: &mut Bars,
) -> Result<(CategoryReport, f64)> {
    let started = Instant::now();
    let evaluation =
        evaluate(model, &category.test, batch, &mut |s, d, t| bars.update(s, d, t), &mut |scored, image| {
            let Some(dir) = out else { return Ok(()) };
            let sample = &scored.sample;
            let mask = sample.mask.as_deref().map(|m| load_mask(m, image.width(), image.height())).transpose()?;
            let overlay = prediction_overlay(image, &scored.prediction, model.meta(), mask.as_ref());
            let file = dir.join(overlay_file(sample));
            if let Some(folder) = file.parent() {
                std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
            }
            write_png(&file, &side_by_side(image, &overlay))
        })?;
    bars.finish();
    let threshold = model.meta().image.threshold;
    let scores: Vec<f32> = evaluation.images.iter().map(|s| s.prediction.score).collect();
    let labels: Vec<bool> = evaluation.images.iter().map(|s| s.sample.anomalous).collect();
    let mut notes = Vec::new();
    if evaluation.metrics.skipped_masks > 0 {
        notes.push(format!(
            "{} defect image(s) have no ground-truth mask: evaluated at image level, skipped by the pixel metrics",
            evaluation.metrics.skipped_masks
        ));
    }
    let mut shown = Vec::new();
    if out.is_some() {
        let picks = pick_examples(&scores, &labels, examples);
        let defective = labels.iter().filter(|&&a| a).count();
        notes.push(format!(
            "{} test images ({} good, {defective} defective); shown below: {}, worst first. Every image's overlay \
             is in {}/<defect>/.",
            scores.len(),
            scores.len() - defective,
            picks.len(),
            category.name
        ));
        shown = picks
            .iter()
            .map(|p| {
                let scored = &evaluation.images[p.index];
                let file = overlay_file(&scored.sample);
                Example {
                    caption: format!(
                        "{}: {}",
                        file.trim_end_matches(".png"),
                        p.caption(scored.prediction.score, threshold)
                    ),
                    file: format!("{}/{file}", category.name),
                    anomalous: scored.sample.anomalous,
                    gallery: p.gallery,
                }
            })
            .collect();
    }
    let report = CategoryReport {
        name: category.name.clone(),
        metrics: evaluation.metrics,
        timings: Vec::new(),
        examples: shown,
        notes,
        curves: evaluation.curves,
        histogram: ScoreHistogram::new(&scores, &labels, threshold, REPORT_BINS),
    };
    Ok((report, started.elapsed().as_secs_f64()))
}

/// The curves and histogram of a category for metrics.json and benchmark.json, so other tools
/// can plot them.
pub fn plots_json(report: &CategoryReport) -> serde_json::Value {
    let curve =
        |c: &Curve, y: &str| serde_json::json!({"fpr": c.x, y: c.y, "threshold": c.threshold, "thinned": c.thinned});
    let histogram = report.histogram.as_ref().map(|h| {
        serde_json::json!({
            "edges": (0..=h.bins()).map(|i| h.edge(i)).collect::<Vec<_>>(),
            "good": h.good,
            "defective": h.defective,
            "threshold": h.threshold,
            "false_alarms": h.false_alarms(),
            "misses": h.misses(),
        })
    });
    serde_json::json!({
        "image_roc": report.curves.image_roc.as_ref().map(|c| curve(c, "tpr")),
        "pro": report.curves.pro.as_ref().map(|c| curve(c, "pro")),
        "pro_fpr_limit": AUPRO_FPR_LIMIT,
        "curve_note": format!(
            "A point counts scores >= its threshold as anomalous (null threshold: the origin, nothing flagged). \
             A curve with more than {MAX_CURVE_POINTS} candidate points is thinned (\"thinned\": true) to points \
             at least {} apart in fpr or in the other axis, keeping its last point; the metrics use every point.",
            2.0 / MAX_CURVE_POINTS as f64
        ),
        "score_histogram": histogram,
    })
}
