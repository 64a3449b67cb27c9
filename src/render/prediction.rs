//! Overlays of PatchCore results: the model's normalised heat map over the original picture,
//! and, where the ground truth is known, its outline beside the prediction's.

use super::{render_mask_outline, render_overlay, OverlayStyle};
use crate::patchcore::{map_to_image, ModelMeta, Prediction};
use image::{GrayImage, RgbImage};

/// Ground-truth outlines are green, predicted regions red (the overlay's default).
pub const TRUTH_COLOUR: [u8; 3] = [40, 220, 60];

/// The overlay `predict` writes: heat map at the image's own size, predicted region outlined,
/// verdict and confidence in the corner; with `truth`, the defect's outline in green too.
pub fn prediction_overlay(
    image: &RgbImage,
    prediction: &Prediction,
    meta: &ModelMeta,
    truth: Option<&GrayImage>,
) -> RgbImage {
    let _span = crate::trace::span("render");
    let raw = map_to_image(&prediction.map, &meta.preprocess, image.width(), image.height());
    let heat: Vec<f32> = raw.iter().map(|&v| meta.pixel.apply(v)).collect();
    let mut out = render_overlay(image, &heat, prediction.anomalous, prediction.normalized, &OverlayStyle::default());
    if let Some(mask) = truth {
        let inside: Vec<bool> = mask.pixels().map(|p| p[0] > 127).collect();
        let thickness = (image.width().min(image.height()) / 240).max(1);
        render_mask_outline(&mut out, &inside, TRUTH_COLOUR, thickness);
    }
    out
}

/// The original and its overlay side by side, for reports.
pub fn side_by_side(left: &RgbImage, right: &RgbImage) -> RgbImage {
    let gap = 4;
    let height = left.height().max(right.height());
    let mut out = RgbImage::from_pixel(left.width() + gap + right.width(), height, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, left, 0, 0);
    image::imageops::replace(&mut out, right, (left.width() + gap) as i64, 0);
    out
}

/// Writes an image as PNG, atomically.
pub fn write_png(path: &std::path::Path, image: &RgbImage) -> crate::Result<()> {
    let _span = crate::trace::span("write");
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| crate::Error::image(path, format!("cannot encode PNG: {e}")))?;
    crate::io::write_atomic(path, &png)
}
