//! The PatchCore stages: embedding, memory bank and coreset, scoring and anomaly maps (one backend
//! operation, `Backend::score`), and the model that ties them together. Each stage calls only the
//! [`Backend`] trait.

pub mod coreset;
pub mod evaluate;
pub mod model_file;
pub mod projection;

use crate::backbone::{Architecture, Backbone};
use crate::backend::{flops, traced, Backend, HostRows};
use crate::data::dataset::Sample;
use crate::data::image::{load_rgb, Preprocess};
use crate::error::{Error, Result};
use crate::eval::threshold::{f1_adaptive_threshold, Normalization};
use crate::tensor::Tensor;
use crate::trace;
use evaluate::evaluate;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The model file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Gaussian sigma of the anomaly map, in input pixels (anomalib's 4).
pub const MAP_SIGMA: f32 = 4.0;

/// Everything a model file records besides its tensors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    pub backbone: Architecture,
    pub layers: Vec<String>,
    pub preprocess: Preprocess,
    pub embedding_dim: usize,
    /// Feature grid (height, width) of one image.
    pub grid: [usize; 2],
    pub bank_rows: usize,
    pub coreset_ratio: f64,
    pub num_neighbors: usize,
    pub seed: u64,
    pub train_images: usize,
    /// Image-score threshold and the min/max used for normalisation.
    pub image: Normalization,
    /// Anomaly-map threshold and min/max.
    pub pixel: Normalization,
    /// How the thresholds were set, in words (printed by `fit`).
    pub thresholds_from: String,
}

/// Fit settings. `Default` is anomalib's PatchCore at 256 px.
#[derive(Clone, Debug)]
pub struct FitOptions {
    pub preprocess: Preprocess,
    pub ratio: f64,
    pub seed: u64,
    pub num_neighbors: usize,
    /// Images per forward pass.
    pub batch: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            preprocess: Architecture::Resnet18.preprocess(256, None).expect("256 is valid"),
            ratio: 0.1,
            seed: 42,
            num_neighbors: 9,
            batch: 8,
        }
    }
}

impl FitOptions {
    /// Checks every option is in range, before any work starts.
    pub fn validate(&self) -> Result<()> {
        coreset::coreset_size(1, self.ratio)?;
        if self.num_neighbors == 0 || self.num_neighbors > 64 {
            return Err(Error::option("--num-neighbors", format!("{}: expected 1 to 64", self.num_neighbors)));
        }
        if self.batch == 0 || self.batch > 1024 {
            return Err(Error::option("--batch", format!("{}: expected 1 to 1024", self.batch)));
        }
        Ok(())
    }
}

/// Long-running steps report through this: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// One image's result before thresholds: the raw Eq. 7 score and the anomaly map at the
/// network's input size (row-major, side x side).
#[derive(Clone, Debug)]
pub struct RawScore {
    pub score: f32,
    /// The largest patch distance, before the Eq. 7 reweighting: comparing it with another
    /// implementation's tells a scoring difference from a feature difference.
    pub max_patch_distance: f32,
    pub map: Vec<f32>,
}

/// One image's verdict.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub score: f32,
    /// See [`RawScore::max_patch_distance`].
    pub max_patch_distance: f32,
    pub normalized: f32,
    pub anomalous: bool,
    /// The raw anomaly map at the network's input size (side x side).
    pub map: Vec<f32>,
    pub side: usize,
}

/// A fitted PatchCore model on a backend.
pub struct PatchCore<B: Backend> {
    backend: B,
    backbone: Backbone<B>,
    bank: B::Bank,
    meta: ModelMeta,
}

/// Checks that `paths` share one size, reading only their headers (a training folder with
/// mixed sizes is almost always a mix-up; the first image's size is the reference).
fn check_same_size(paths: &[PathBuf]) -> Result<()> {
    let mut reference: Option<(&PathBuf, (u32, u32))> = None;
    for path in paths {
        let size = image::image_dimensions(path)
            .map_err(|e| Error::image(path, format!("not a PNG or JPEG image, or a corrupt one: {e}")))?;
        match reference {
            None => reference = Some((path, size)),
            Some((first, (w, h))) if size != (w, h) => {
                return Err(Error::image(
                    path,
                    format!(
                        "{}x{} differs from {w}x{h} of {}: all images of a set must have one size",
                        size.0,
                        size.1,
                        first.display()
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Patch embeddings of a batch: rows `[B * h * w, D]` on the backend, and the grid (h, w).
fn embed_images<B: Backend>(
    backend: &B,
    backbone: &Backbone<B>,
    preprocess: &Preprocess,
    images: &[RgbImage],
) -> Result<(B::Tensor, [usize; 2])> {
    let input = traced(
        backend,
        || trace::span("preprocess").work(|| flops::preprocess(images, preprocess)),
        || backend.preprocess(images, preprocess),
    )?;
    let features = backbone.forward(backend, &input)?;
    let grid = match backend.shape(&features[0]) {
        [_, _, h, w] => [*h, *w],
        other => return Err(Error::invalid_backend_input(format!("backbone returned shape {other:?}"))),
    };
    let refs: Vec<&B::Tensor> = features.iter().collect();
    let shapes: Vec<&[usize]> = refs.iter().map(|t| backend.shape(t)).collect();
    let embedding = traced(backend, || trace::span("embed").work(|| flops::embed(&shapes)), || backend.embed(&refs))?;
    Ok((embedding, grid))
}

impl<B: Backend> PatchCore<B> {
    /// Fits on the good images `train`; the memory bank always holds every one of them, as in
    /// anomalib and the paper. With labelled `val` samples the thresholds are F1-adaptive.
    /// Without, a tenth of `train` (at least one image, chosen by the seed) is scored against a
    /// bank built without it (a fold) and its highest scores become the thresholds; the final
    /// bank is then selected from all images.
    pub fn fit(
        backend: B,
        backbone: Backbone<B>,
        train: &[PathBuf],
        val: Option<&[Sample]>,
        options: &FitOptions,
        progress: Progress<'_>,
    ) -> Result<Self> {
        trace::init_from_env();
        options.validate()?;
        if train.is_empty() {
            return Err(Error::option("training set", "no training images"));
        }
        check_same_size(train)?;
        let mut rows = Vec::new();
        let mut grid = [0, 0];
        for (i, chunk) in train.chunks(options.batch).enumerate() {
            let images = chunk.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>>>()?;
            let (embedding, g) = embed_images(&backend, &backbone, &options.preprocess, &images)?;
            grid = g;
            let shape = backend.shape(&embedding);
            let span = || trace::span("download").work(|| flops::transfer(shape, 4));
            rows.extend(traced(&backend, span, || backend.download(&embedding))?.data);
            progress("embed", (i * options.batch + chunk.len()).min(train.len()), train.len());
        }
        let dim = backbone.architecture().embedding_dim();
        let all = Tensor::new(vec![rows.len() / dim, dim], rows);
        let arch = backbone.architecture();
        let placeholder = Normalization { threshold: 0.0, min: 0.0, max: 1.0 };
        let meta = ModelMeta {
            format_version: FORMAT_VERSION,
            backbone: arch,
            layers: arch.spec().layers.iter().map(|s| s.to_string()).collect(),
            preprocess: options.preprocess.clone(),
            embedding_dim: dim,
            grid,
            bank_rows: 0,
            coreset_ratio: options.ratio,
            num_neighbors: options.num_neighbors,
            seed: options.seed,
            train_images: train.len(),
            image: placeholder,
            pixel: placeholder,
            thresholds_from: String::new(),
        };
        let mut model = match val {
            Some(samples) => {
                let bank = memory_bank(&backend, &all, options, "coreset", progress)?;
                let mut model = PatchCore { backend, backbone, bank, meta };
                model.thresholds_from_labelled(samples, options.batch, progress)?;
                model
            }
            None => {
                let held = held_out(train.len(), options.seed);
                let fold_rows = image_rows(&all, grid[0] * grid[1], |i| !held[i] || held.iter().all(|&h| h))?;
                let bank = memory_bank(&backend, &fold_rows, options, "fold coreset", progress)?;
                drop(fold_rows);
                let mut model = PatchCore { backend, backbone, bank, meta };
                let samples: Vec<Sample> = train
                    .iter()
                    .zip(&held)
                    .filter(|(_, &h)| h)
                    .map(|(path, _)| Sample {
                        path: path.clone(),
                        category: "good".into(),
                        anomalous: false,
                        mask: None,
                    })
                    .collect();
                model.thresholds_from_labelled(&samples, options.batch, progress)?;
                model.meta.thresholds_from = format!(
                    "no validation set: {} held-out training image(s), scored against a bank built without them, \
                     set the thresholds at their highest score; the bank holds all {} images \
                     (pass --val for F1-adaptive thresholds)",
                    samples.len(),
                    train.len()
                );
                model.bank = memory_bank(&model.backend, &all, options, "coreset", progress)?;
                model
            }
        };
        model.meta.bank_rows = model.bank_rows().shape[0];
        Ok(model)
    }

    /// Scores `samples` and sets F1-adaptive image and pixel thresholds and min/max from them.
    /// Pixel thresholds use the images with masks (and good images, whose mask is empty);
    /// with no mask at all the pixel threshold is the image threshold, as anomalib does.
    fn thresholds_from_labelled(&mut self, samples: &[Sample], batch: usize, progress: Progress<'_>) -> Result<()> {
        let scored = evaluate(self, samples, batch, progress, &mut |_, _| Ok(()))?.images;
        let scores: Vec<f32> = scored.iter().map(|s| s.prediction.score).collect();
        let labels: Vec<bool> = scored.iter().map(|s| s.sample.anomalous).collect();
        let (mut pixels, mut pixel_labels, mut all_pixels) = (Vec::new(), Vec::new(), Vec::new());
        for s in &scored {
            if let Some(truth) = &s.truth {
                pixels.extend_from_slice(&s.prediction.map);
                pixel_labels.extend_from_slice(truth);
            }
            all_pixels.extend_from_slice(&s.prediction.map);
        }
        let masked = scored.iter().filter(|s| s.sample.anomalous && s.truth.is_some()).count();
        let image_t = f1_adaptive_threshold(&scores, &labels)
            .ok_or_else(|| Error::option("validation set", "no images to set thresholds from"))?;
        let pixel_t =
            if masked > 0 { f1_adaptive_threshold(&pixels, &pixel_labels).unwrap_or(image_t) } else { image_t };
        self.meta.image = Normalization::from_scores(image_t, &scores);
        self.meta.pixel = Normalization::from_scores(pixel_t, &all_pixels);
        let anomalies = labels.iter().filter(|&&a| a).count();
        self.meta.thresholds_from = format!(
            "validation set of {} images ({} anomalous, {} with masks): F1-adaptive thresholds",
            samples.len(),
            anomalies,
            masked
        );
        Ok(())
    }

    /// Raw scores and anomaly maps of a batch of images.
    pub fn score_images(&self, images: &[RgbImage]) -> Result<Vec<RawScore>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (embedding, grid) = embed_images(&self.backend, &self.backbone, &self.meta.preprocess, images)?;
        let side = self.meta.preprocess.input_size();
        let batch =
            self.backend.score(&embedding, &self.bank, grid, self.meta.num_neighbors, [side, side], MAP_SIGMA)?;
        Ok(batch
            .scores
            .into_iter()
            .zip(batch.max_patch_distances)
            .zip(batch.maps.data.chunks(side * side))
            .map(|((score, max_patch_distance), map)| RawScore { score, max_patch_distance, map: map.to_vec() })
            .collect())
    }

    /// Scores, normalised scores and labels of a batch of images.
    pub fn predict(&self, images: &[RgbImage]) -> Result<Vec<Prediction>> {
        let side = self.meta.preprocess.input_size();
        Ok(self
            .score_images(images)?
            .into_iter()
            .map(|r| Prediction {
                score: r.score,
                max_patch_distance: r.max_patch_distance,
                normalized: self.meta.image.apply(r.score),
                anomalous: self.meta.image.is_anomalous(r.score),
                map: r.map,
                side,
            })
            .collect())
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The memory bank rows on the host, in selection order.
    pub fn bank_rows(&self) -> &Tensor {
        self.bank.host_rows()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        model_file::save(path, &self.meta, self.bank_rows(), self.backbone.folded())
    }

    pub fn load(backend: B, path: &Path) -> Result<Self> {
        trace::init_from_env();
        let _span = trace::span("load");
        let (meta, backbone, bank) = model_file::load(&backend, path)?;
        Ok(PatchCore { backend, backbone, bank, meta })
    }
}

/// `PATCHCORE_TRACE`'s file is rewritten with the whole trace so far when a model goes.
impl<B: Backend> Drop for PatchCore<B> {
    fn drop(&mut self) {
        trace::flush_env();
    }
}

/// Which of `count` training images score the fold that sets the thresholds: a tenth (at
/// least one), chosen by the seed. A single image is its own fold: it is both bank and
/// held-out image.
fn held_out(count: usize, seed: u64) -> Vec<bool> {
    let mut picked = vec![false; count];
    let mut left = count.div_ceil(10);
    let mut rng = crate::rng::SplitMix64::new(seed ^ 0x4F1D);
    while left > 0 {
        let i = rng.below(count as u64) as usize;
        if !picked[i] {
            picked[i] = true;
            left -= 1;
        }
    }
    picked
}

/// The rows of the images `keep` accepts, `per_image` rows each, order kept.
fn image_rows(all: &Tensor, per_image: usize, keep: impl Fn(usize) -> bool) -> Result<Tensor> {
    let images = all.shape[0] / per_image;
    let rows: Vec<u32> =
        (0..images).filter(|&i| keep(i)).flat_map(|i| (i * per_image) as u32..((i + 1) * per_image) as u32).collect();
    all.gather_rows(&rows)
}

/// The backend's bank built from the coreset of `rows` (its host rows in selection order).
fn memory_bank<B: Backend>(
    backend: &B,
    rows: &Tensor,
    options: &FitOptions,
    stage: &str,
    progress: Progress<'_>,
) -> Result<B::Bank> {
    progress(stage, 0, 1);
    let selected = coreset::select(backend, rows, options.ratio, options.seed)?;
    progress(stage, 1, 1);
    if selected.len() < options.num_neighbors {
        return Err(Error::option(
            "--num-neighbors",
            format!(
                "{} exceeds the memory bank ({} rows): raise --ratio or add training images",
                options.num_neighbors,
                selected.len()
            ),
        ));
    }
    backend.prepare_bank(rows.gather_rows(&selected)?)
}

/// A raw anomaly map (input side x side) brought back over the original `width x height`
/// picture for display: placed where the center crop took it from (the cropped-away border
/// reads 0), then resized bilinearly.
pub fn map_to_image(map: &[f32], preprocess: &Preprocess, width: u32, height: u32) -> Vec<f32> {
    let (s, side) = (preprocess.resize, preprocess.input_size());
    let full = if side == s {
        map.to_vec()
    } else {
        let off = ((s - side) as f64 / 2.0).round_ties_even() as usize;
        let mut canvas = vec![0.0f32; s * s];
        for y in 0..side {
            canvas[(y + off) * s + off..][..side].copy_from_slice(&map[y * side..(y + 1) * side]);
        }
        canvas
    };
    crate::resample::resize_bilinear(&full, s, s, height as usize, width as usize)
}
