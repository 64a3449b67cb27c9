//! Decoding images and turning them into the network's input.

use crate::error::{Error, Result};
use crate::resample::antialias_spans;
use crate::tensor::Tensor;
use image::RgbImage;
use std::path::Path;

/// Decodes a PNG or JPEG into 8-bit RGB (gray is replicated to three channels). The error
/// says whether the file is missing, of a format this build cannot read, or damaged.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let span = crate::trace::span("decode");
    let image = decode_rgb(path)?;
    // Its bytes: the file read and the pixels written. No FLOPs: entropy decoding is integer
    // work, and a FLOP rate of it would mean nothing.
    drop(span.work(|| {
        let file = std::fs::metadata(path).map_or(0, |m| m.len());
        let pixels = 3 * u64::from(image.width()) * u64::from(image.height());
        crate::trace::Work::new(0, file + pixels, vec![image.height() as usize, image.width() as usize, 3])
            .arg("file_bytes", file)
    }));
    Ok(image)
}

fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(Error::image(path, format!("{other:?} images are not supported: convert it to PNG or JPEG")));
        }
        None => return Err(Error::image(path, "not a PNG or JPEG image (unrecognised content)")),
    }
    let decoded = reader.decode().map_err(|e| Error::image(path, format!("corrupt or truncated image: {e}")))?;
    Ok(decoded.into_rgb8())
}

/// How an image becomes a normalised NCHW input: resize (antialiased bilinear, as
/// torchvision v2), an optional center crop, then (x / 255 - mean) / std.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// The square side images are resized to.
    pub resize: usize,
    /// The square center crop taken after resizing, if any (256 -> 224 is the paper's setting).
    pub crop: Option<usize>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// Checks the sizes; `mean` and `std` are the backbone's (its `ArchSpec`).
    pub fn new(resize: usize, crop: Option<usize>, mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        if !(32..=4096).contains(&resize) {
            return Err(Error::option("--size", format!("{resize}: expected 32 to 4096 pixels")));
        }
        if let Some(c) = crop {
            if c < 32 || c > resize {
                return Err(Error::option("--crop", format!("{c}: expected 32 to --size ({resize})")));
            }
        }
        Ok(Preprocess { resize, crop, mean, std })
    }

    /// The side of the square the network sees.
    pub fn input_size(&self) -> usize {
        self.crop.unwrap_or(self.resize)
    }

    /// Where the center crop starts in the resized square, along either axis: torchvision's
    /// center_crop rounds (size - crop) / 2 half to even.
    pub fn crop_offset(&self) -> usize {
        ((self.resize - self.input_size()) as f64 / 2.0).round_ties_even() as usize
    }

    /// Writes the normalised `[3, S, S]` planes of one image to `out`: resized, then
    /// center-cropped. An image already at the network's size is normalised straight into `out`
    /// (at 256 px a copy and a zeroed buffer of 0.8 MB fewer; with the table in `normalize`,
    /// predict's preprocess 0.24 -> 0.17-0.18 ms an image).
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) {
        let (s, side) = (self.resize, self.input_size());
        if side == s && (img.height() as usize, img.width() as usize) == (s, s) {
            return self.normalize(img, out);
        }
        let full = self.resize_normalize(img, s, s);
        let off = self.crop_offset();
        let rows =
            full.chunks_exact(s * s).flat_map(|plane| (off..off + side).map(move |y| &plane[y * s + off..][..side]));
        for (dst, row) in out.chunks_exact_mut(side).zip(rows) {
            dst.copy_from_slice(row);
        }
    }

    /// `[3, out_h, out_w]`: pixels scaled to [0, 1], resized width first then height with
    /// antialiased bilinear, then (x - mean) / std.
    pub fn resize_normalize(&self, img: &RgbImage, out_h: usize, out_w: usize) -> Vec<f32> {
        if (img.height() as usize, img.width() as usize) == (out_h, out_w) {
            let mut out = vec![0.0; 3 * out_h * out_w];
            self.normalize(img, &mut out);
            return out;
        }
        self.resample_normalize(img, out_h, out_w)
    }

    /// `resize_normalize` at the image's own size, into `out`. Its antialiased spans are then one
    /// tap of weight 1 (and one of weight 0): the same values, without the resampling's two
    /// passes (predict's `preprocess` at 256 px, 0.83 -> 0.20 ms per image); and each channel's
    /// 256 possible values computed once and looked up, without two divisions a value.
    fn normalize(&self, img: &RgbImage, out: &mut [f32]) {
        let table: Vec<[f32; 256]> =
            (0..3).map(|c| std::array::from_fn(|u| (u as f32 / 255.0 - self.mean[c]) / self.std[c])).collect();
        let plane = img.width() as usize * img.height() as usize;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (((pixel, r), g), b) in img.as_raw().chunks_exact(3).zip(r).zip(g).zip(b) {
            (*r, *g, *b) = (table[0][pixel[0] as usize], table[1][pixel[1] as usize], table[2][pixel[2] as usize]);
        }
    }

    fn resample_normalize(&self, img: &RgbImage, out_h: usize, out_w: usize) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let cols = antialias_spans(w, out_w);
        let rows = antialias_spans(h, out_h);
        let mut out = vec![0.0f32; 3 * out_h * out_w];
        let mut horizontal = vec![0.0f32; h * out_w];
        let pixels = img.as_raw();
        for c in 0..3 {
            for y in 0..h {
                for (x, span) in cols.iter().enumerate() {
                    horizontal[y * out_w + x] = span
                        .weights
                        .iter()
                        .enumerate()
                        .map(|(t, wt)| wt * pixels[(y * w + span.start + t) * 3 + c] as f32 / 255.0)
                        .sum();
                }
            }
            let plane = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
            for (y, span) in rows.iter().enumerate() {
                for x in 0..out_w {
                    let v: f32 = span
                        .weights
                        .iter()
                        .enumerate()
                        .map(|(t, wt)| wt * horizontal[(span.start + t) * out_w + x])
                        .sum();
                    plane[y * out_w + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }

    /// A batch `[N, 3, S, S]` from images, one image per thread at a time.
    pub fn batch(&self, images: &[RgbImage]) -> Tensor {
        use rayon::prelude::*;
        let side = self.input_size();
        let mut data = vec![0.0f32; images.len() * 3 * side * side];
        data.par_chunks_mut((3 * side * side).max(1)).zip(images).for_each(|(dst, img)| self.apply(img, dst));
        Tensor::new(vec![images.len(), 3, side, side], data)
    }
}

/// Decodes a ground-truth mask (any pixel above 127 is defective) and checks it has the size
/// of the image it belongs to.
pub fn load_mask(path: &Path, width: u32, height: u32) -> Result<image::GrayImage> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mask = reader.decode().map_err(|e| Error::image(path, format!("corrupt or truncated mask: {e}")))?.to_luma8();
    if mask.dimensions() != (width, height) {
        return Err(Error::image(
            path,
            format!("mask is {}x{} but its image is {width}x{height}", mask.width(), mask.height()),
        ));
    }
    Ok(mask)
}

impl Preprocess {
    /// A mask brought to the network's input grid: nearest resize, then the same center crop.
    pub fn mask(&self, mask: &image::GrayImage) -> Vec<bool> {
        let s = self.resize;
        let ys = crate::resample::nearest_index(mask.height() as usize, s);
        let xs = crate::resample::nearest_index(mask.width() as usize, s);
        let side = self.input_size();
        let off = self.crop_offset();
        let mut out = Vec::with_capacity(side * side);
        for y in 0..side {
            for x in 0..side {
                out.push(mask.get_pixel(xs[x + off] as u32, ys[y + off] as u32)[0] > 127);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Preprocess;

    /// The crop is the centre square of the resized planes ((50 - 33) / 2 = 8.5 rounds to 8), and
    /// an image at the network's size is normalised in place: both as `resize_normalize` says.
    #[test]
    fn apply_crops_the_centre_of_the_resized_planes() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut noise = |w, h| image::RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.next_u64() as u8; 3]));
        for (p, img, off) in [
            (Preprocess::new(50, Some(33), [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]).unwrap(), noise(23, 29), 8),
            (Preprocess::new(40, None, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]).unwrap(), noise(40, 40), 0),
        ] {
            let (s, side) = (p.resize, p.input_size());
            let full = p.resize_normalize(&img, s, s);
            let mut got = vec![f32::NAN; 3 * side * side];
            p.apply(&img, &mut got);
            for (i, v) in got.iter().enumerate() {
                let (c, y, x) = (i / (side * side), i / side % side, i % side);
                assert_eq!(v.to_bits(), full[(c * s + y + off) * s + x + off].to_bits(), "{s} -> {side}: {i}");
            }
        }
    }

    /// At the image's own size the direct normalisation writes the resampling's bits.
    #[test]
    fn normalising_in_place_equals_resampling_to_the_same_size() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let p = Preprocess::new(64, None, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).unwrap();
        for (w, h) in [(1, 1), (37, 5), (64, 64)] {
            let img = image::RgbImage::from_fn(w, h, |x, y| match (x + y) % 5 {
                0 => image::Rgb([0, 255, 128]),
                _ => image::Rgb([rng.next_u64() as u8, rng.next_u64() as u8, rng.next_u64() as u8]),
            });
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let (oh, ow) = (h as usize, w as usize);
            let mut direct = vec![0.0; 3 * oh * ow];
            p.normalize(&img, &mut direct);
            assert_eq!(bits(direct), bits(p.resample_normalize(&img, oh, ow)), "{w}x{h}");
            assert_eq!(p.resize_normalize(&img, oh, ow).len(), 3 * oh * ow);
        }
    }
}
