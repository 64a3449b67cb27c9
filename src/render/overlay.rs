//! Anomaly heat-map overlays in the style of anomalib's visualiser: the jet
//! heat map blended over the picture, the predicted region outlined, and the
//! verdict written in the corner.

use image::{Rgb, RgbImage};

use super::colormap::jet;
use super::font::draw_text_boxed;

/// How [`render_overlay`] draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayStyle {
    /// Weight of the heat colour; the picture gets `1 - alpha`. anomalib 0.x
    /// superimposes with 0.4.
    pub alpha: f32,
    /// Colour of the outline around the predicted anomalous region.
    pub outline: [u8; 3],
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self { alpha: 0.4, outline: [255, 0, 0] }
    }
}

/// Caption backgrounds: the verdict reads from its colour before its text.
const ANOMALY_BOX: [u8; 3] = [170, 0, 0];
const NORMAL_BOX: [u8; 3] = [0, 110, 0];
const CAPTION_TEXT: [u8; 3] = [255, 255, 255];

/// Renders what an operator looks at: `image` with the jet-coloured `heat`
/// blended over it ([`blend_heat`]), the predicted region (`heat > 0.5`)
/// outlined in `style.outline`, and a caption at the top-left.
///
/// `image` is the original picture at its own size. `heat` is the
/// normalised anomaly map (0..1, 0.5 = threshold), row-major, and must hold
/// `width * height` values: that is checked in debug builds, and in release
/// builds missing values count as 0 and extra ones are ignored.
///
/// `label` is the verdict (true = anomalous) and `confidence` the normalised
/// image score in [0, 1]. The caption gives the confidence that the verdict
/// is right, as anomalib does: "ANOMALY 87%" shows `confidence`, "NORMAL 93%"
/// shows `1 - confidence`.
///
/// Outline thickness and caption size grow with the picture so both stay
/// visible on large images; on tiny ones the caption is clipped.
pub fn render_overlay(image: &RgbImage, heat: &[f32], label: bool, confidence: f32, style: &OverlayStyle) -> RgbImage {
    let mut out = blend_heat(image, heat, style.alpha);
    let short_side = out.width().min(out.height());
    let region: Vec<bool> = heat.iter().map(|&v| v > 0.5).collect();
    render_mask_outline(&mut out, &region, style.outline, (short_side / 240).max(1));
    let background = if label { ANOMALY_BOX } else { NORMAL_BOX };
    draw_text_boxed(&mut out, 0, 0, &caption(label, confidence), (short_side / 160).max(1), CAPTION_TEXT, background);
    out
}

/// "ANOMALY 87%" or "NORMAL 93%": the percentage is how sure the verdict is.
fn caption(label: bool, confidence: f32) -> String {
    let confidence = confidence.clamp(0.0, 1.0);
    let (word, sure) = if label { ("ANOMALY", confidence) } else { ("NORMAL", 1.0 - confidence) };
    // A NaN confidence casts to 0%.
    format!("{word} {}%", (sure * 100.0).round() as u32)
}

/// The picture with the jet colour of each heat value blended over it:
/// `alpha * jet(uint8(255 * clamp(heat, 0, 1))) + (1 - alpha) * image`,
/// rounded as OpenCV's `addWeighted` does. The heat is truncated to u8 like
/// anomalib's `(map * 255).astype(np.uint8)`; NaN counts as 0. Same length rules as
/// [`render_overlay`].
pub fn blend_heat(image: &RgbImage, heat: &[f32], alpha: f32) -> RgbImage {
    debug_assert_eq!(
        heat.len(),
        image.width() as usize * image.height() as usize,
        "heat must have width * height values"
    );
    let mut out = image.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        // NaN heat casts to level 0.
        let level = (255.0 * heat.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0)) as u8;
        let colour = jet(level);
        for (c, heat_c) in px.0.iter_mut().zip(colour) {
            *c = (alpha * f32::from(heat_c) + (1.0 - alpha) * f32::from(*c)).round_ties_even() as u8;
        }
    }
    out
}

/// Paints the boundary of `mask` (row-major, `width * height` values, same
/// length rules as [`render_overlay`]) in `color`, `thickness` pixels wide.
///
/// The outline lies inside the region: a mask pixel is painted when a pixel
/// outside the mask, or beyond the image edge, is within `thickness` steps
/// (4-neighbour moves) of it. With thickness 1 that is every mask pixel with
/// a 4-neighbour outside. Keeping it inside leaves the surroundings visible
/// and lets two outlines (prediction, ground truth) sit side by side.
pub fn render_mask_outline(img: &mut RgbImage, mask: &[bool], color: [u8; 3], thickness: u32) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    debug_assert_eq!(mask.len(), w * h, "mask must have width * height values");
    let inside: Vec<bool> = (0..w * h).map(|i| mask.get(i) == Some(&true)).collect();
    // Erode `thickness` times with the 4-neighbour cross; what erosion
    // removed is the outline.
    let mut core = inside.clone();
    for _ in 0..thickness {
        if !core.contains(&true) {
            break;
        }
        let prev = core.clone();
        for (i, keep) in core.iter_mut().enumerate() {
            let (x, y) = (i % w, i / w);
            *keep = prev[i]
                && x > 0
                && prev[i - 1]
                && x + 1 < w
                && prev[i + 1]
                && y > 0
                && prev[i - w]
                && y + 1 < h
                && prev[i + w];
        }
    }
    for (i, (&is_in, &is_core)) in inside.iter().zip(&core).enumerate() {
        if is_in && !is_core {
            img.put_pixel((i % w) as u32, (i / w) as u32, Rgb(color));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The painted pixels of a black image, sorted.
    fn painted(img: &RgbImage) -> Vec<(u32, u32)> {
        img.enumerate_pixels().filter(|(_, _, p)| p.0 != [0; 3]).map(|(x, y, _)| (x, y)).collect()
    }

    fn square_mask(size: u32, from: u32, to: u32) -> Vec<bool> {
        (0..size * size).map(|i| (from..=to).contains(&(i % size)) && (from..=to).contains(&(i / size))).collect()
    }

    #[test]
    fn blending_follows_add_weighted() {
        let image = RgbImage::from_raw(2, 2, vec![10, 20, 30, 200, 100, 50, 0, 0, 0, 255, 255, 255]).unwrap();
        // Heat 0, 1, 0.5 and 0.25 give jet(0), jet(255), jet(127), jet(63).
        let out = blend_heat(&image, &[0.0, 1.0, 0.5, 0.25], 0.4);
        assert_eq!(jet(63), [0, 124, 255]);
        assert_eq!(out.into_raw(), vec![6, 12, 69, 171, 60, 30, 50, 102, 52, 153, 203, 255]);
    }

    #[test]
    fn outline_of_a_square_is_its_border() {
        let mut img = RgbImage::new(8, 8);
        render_mask_outline(&mut img, &square_mask(8, 2, 5), [0, 255, 0], 1);
        let mut expected = Vec::new();
        for y in 2..=5 {
            for x in 2..=5 {
                if x == 2 || x == 5 || y == 2 || y == 5 {
                    expected.push((x, y));
                }
            }
        }
        assert_eq!(painted(&img), expected);
        assert_eq!(img.get_pixel(2, 2).0, [0, 255, 0]);
    }

    #[test]
    fn thick_outline_is_a_ring_inside_the_region() {
        let mut img = RgbImage::new(9, 9);
        render_mask_outline(&mut img, &square_mask(9, 1, 7), [0, 255, 0], 2);
        let ring = |v: u32| v <= 2 || v >= 6;
        let expected: Vec<(u32, u32)> =
            (1..=7).flat_map(|y| (1..=7).map(move |x| (x, y))).filter(|&(x, y)| ring(x) || ring(y)).collect();
        let mut got = painted(&img);
        got.sort_by_key(|&(x, y)| (y, x));
        assert_eq!(got, expected);
    }

    #[test]
    fn image_edge_counts_as_outside() {
        let mut img = RgbImage::new(4, 3);
        render_mask_outline(&mut img, &[true; 12], [1, 2, 3], 1);
        let got = painted(&img);
        assert_eq!(got.len(), 10);
        assert!(!got.contains(&(1, 1)) && !got.contains(&(2, 1)));
    }

    #[test]
    fn overlay_outlines_the_region_and_captions_the_verdict() {
        let image = RgbImage::from_pixel(64, 64, Rgb([90, 90, 90]));
        // Hot square at x, y in 40..=55, away from the caption.
        let heat: Vec<f32> = square_mask(64, 40, 55).iter().map(|&m| if m { 0.9 } else { 0.1 }).collect();
        let style = OverlayStyle::default();
        let out = render_overlay(&image, &heat, true, 0.87, &style);
        assert_eq!(out.get_pixel(40, 47).0, style.outline);
        assert_eq!(out.get_pixel(55, 55).0, style.outline);
        assert_ne!(out.get_pixel(47, 47).0, style.outline);
        let cold = blend_heat(&RgbImage::from_pixel(1, 1, Rgb([90, 90, 90])), &[0.1], style.alpha);
        assert_eq!(out.get_pixel(39, 47), cold.get_pixel(0, 0));
        assert_eq!(out.get_pixel(0, 0).0, ANOMALY_BOX);
        let normal = render_overlay(&image, &heat, false, 0.07, &style);
        assert_eq!(normal.get_pixel(0, 0).0, NORMAL_BOX);
    }

    #[test]
    fn caption_gives_confidence_in_the_verdict() {
        assert_eq!(caption(true, 0.87), "ANOMALY 87%");
        assert_eq!(caption(false, 0.07), "NORMAL 93%");
        assert_eq!(caption(true, 1.7), "ANOMALY 100%");
        assert_eq!(caption(false, f32::NAN), "NORMAL 0%");
    }

    #[test]
    fn tiny_and_empty_images_do_not_panic() {
        for (w, h) in [(8, 8), (1, 1), (3, 1), (0, 0)] {
            let image = RgbImage::new(w, h);
            let heat = vec![0.9; (w * h) as usize];
            let out = render_overlay(&image, &heat, true, 0.5, &OverlayStyle::default());
            assert_eq!(out.dimensions(), (w, h));
        }
    }
}
