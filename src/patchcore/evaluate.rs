//! Scoring a labelled test set with a fitted model and computing its metrics.

use super::{PatchCore, Prediction, Progress};
use crate::backend::Backend;
use crate::data::dataset::Sample;
use crate::data::image::{load_mask, load_rgb};
use crate::error::Result;
use crate::eval::metrics::{Curves, ImageResult, Metrics};
use image::RgbImage;

/// One scored test image, kept for reports and overlays.
pub struct Scored {
    pub sample: Sample,
    pub prediction: Prediction,
    /// The ground truth on the network's input grid (None: a defect image without a mask).
    pub truth: Option<Vec<bool>>,
}

pub struct Evaluation {
    pub metrics: Metrics,
    /// The image ROC and PRO curves, from the sweeps that gave the metrics.
    pub curves: Curves,
    pub images: Vec<Scored>,
}

/// Scores every sample (in batches of `batch`) and computes image and pixel metrics at the
/// model's thresholds. `keep` is called with each decoded image and its result, for callers
/// that render overlays without decoding twice.
pub fn evaluate<B: Backend>(
    model: &PatchCore<B>,
    samples: &[Sample],
    batch: usize,
    progress: Progress<'_>,
    keep: &mut dyn FnMut(&Scored, &RgbImage) -> Result<()>,
) -> Result<Evaluation> {
    let meta = model.meta();
    let side = meta.preprocess.input_size();
    let mut images = Vec::with_capacity(samples.len());
    for (i, chunk) in samples.chunks(batch.max(1)).enumerate() {
        let decoded = chunk.iter().map(|s| load_rgb(&s.path)).collect::<Result<Vec<_>>>()?;
        for ((sample, image), prediction) in chunk.iter().zip(&decoded).zip(model.predict(&decoded)?) {
            let truth = match (&sample.mask, sample.anomalous) {
                (Some(m), _) => Some(meta.preprocess.mask(&load_mask(m, image.width(), image.height())?)),
                (None, false) => Some(vec![false; side * side]),
                (None, true) => None,
            };
            let scored = Scored { sample: sample.clone(), prediction, truth };
            keep(&scored, image)?;
            images.push(scored);
        }
        progress("evaluate", (i * batch + chunk.len()).min(samples.len()), samples.len());
    }
    let results: Vec<ImageResult> = images
        .iter()
        .map(|s| ImageResult {
            score: s.prediction.score,
            anomalous: s.sample.anomalous,
            map: Some(&s.prediction.map),
            mask: s.truth.as_deref(),
        })
        .collect();
    let (metrics, curves) =
        Metrics::compute_with_curves(&results, side, side, meta.image.threshold, meta.pixel.threshold);
    Ok(Evaluation { metrics, curves, images })
}
