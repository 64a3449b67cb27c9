//! A request's IMAGE tensor, checked and turned into the RGB images the engine reads.

use image::{DynamicImage, GrayImage, RgbImage};
use patchcore::ffi::{PATCHCORE_MAX_PIXELS, PATCHCORE_MAX_SIDE};

/// The input's name in config.pbtxt.
pub const IMAGE: &str = "IMAGE";

/// One request's IMAGE tensor as Triton hands it over: the batch dimension first (the model
/// has `max_batch_size` > 0), then height, width and channels.
pub struct ImageTensor<'a> {
    pub datatype: &'a str,
    pub shape: &'a [i64],
    pub bytes: &'a [u8],
}

/// The images of one request; they share one size, which the anomaly maps are returned at.
pub struct ImageBatch {
    pub images: Vec<RgbImage>,
    pub width: u32,
    pub height: u32,
}

/// Checks the tensor and copies it into RGB images, gray replicated to three channels as the
/// C ABI does. The message names the input and what is wrong with it.
pub fn decode(tensor: &ImageTensor) -> Result<ImageBatch, String> {
    if tensor.datatype != "UINT8" {
        return Err(format!("{IMAGE} has datatype {}: expected UINT8", tensor.datatype));
    }
    let &[n, h, w, c] = tensor.shape else {
        return Err(format!(
            "{IMAGE} has shape {:?}: expected [batch, height, width, channels] with channels 1 or 3",
            tensor.shape
        ));
    };
    if n < 1 {
        return Err(format!("{IMAGE} has shape {:?}: the batch holds no image", tensor.shape));
    }
    if h < 1 || w < 1 {
        return Err(format!("{IMAGE} is {w}x{h} (width x height): both sides must be at least 1"));
    }
    let max_side = i64::from(PATCHCORE_MAX_SIDE);
    if h > max_side || w > max_side || (h * w) as u64 > PATCHCORE_MAX_PIXELS {
        return Err(format!(
            "{IMAGE} is {w}x{h}: the limit is {PATCHCORE_MAX_SIDE} per side and {PATCHCORE_MAX_PIXELS} pixels"
        ));
    }
    if c != 1 && c != 3 {
        return Err(format!("{IMAGE} has {c} channels: expected 1 (gray) or 3 (RGB)"));
    }
    // Every factor is positive and h * w is bounded above, so the product fits.
    let per_image = (h * w * c) as usize;
    let want = per_image.checked_mul(n as usize).filter(|&b| b <= isize::MAX as usize);
    if want != Some(tensor.bytes.len()) {
        return Err(format!(
            "{IMAGE} has shape {:?} but {} bytes of data (expected {})",
            tensor.shape,
            tensor.bytes.len(),
            want.map_or_else(|| "more than memory holds".to_string(), |b| b.to_string())
        ));
    }
    let (width, height) = (w as u32, h as u32);
    let images = tensor
        .bytes
        .chunks_exact(per_image)
        .map(|pixels| {
            let pixels = pixels.to_vec();
            if c == 3 {
                RgbImage::from_raw(width, height, pixels).expect("width x height x 3 bytes")
            } else {
                let gray = GrayImage::from_raw(width, height, pixels).expect("width x height bytes");
                DynamicImage::ImageLuma8(gray).to_rgb8()
            }
        })
        .collect();
    Ok(ImageBatch { images, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor<'a>(datatype: &'a str, shape: &'a [i64], bytes: &'a [u8]) -> ImageTensor<'a> {
        ImageTensor { datatype, shape, bytes }
    }

    #[test]
    fn rgb_and_gray_batches_become_rgb_images() {
        let rgb: Vec<u8> = (0..2 * 2 * 3 * 3).map(|v| v as u8).collect();
        let batch = decode(&tensor("UINT8", &[2, 2, 3, 3], &rgb)).unwrap();
        assert_eq!((batch.images.len(), batch.width, batch.height), (2, 3, 2));
        assert_eq!(batch.images[1].as_raw().as_slice(), &rgb[18..]);

        let gray = [7u8, 9, 11];
        let batch = decode(&tensor("UINT8", &[1, 1, 3, 1], &gray)).unwrap();
        assert_eq!(batch.images[0].as_raw().as_slice(), &[7, 7, 7, 9, 9, 9, 11, 11, 11]);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let cases: [(&str, &[i64], usize, &str); 7] = [
            ("FP32", &[1, 2, 2, 3], 48, "datatype FP32: expected UINT8"),
            ("UINT8", &[2, 2, 3], 12, "expected [batch, height, width, channels]"),
            ("UINT8", &[0, 2, 2, 3], 0, "the batch holds no image"),
            ("UINT8", &[1, 0, 0, 3], 0, "is 0x0 (width x height): both sides must be at least 1"),
            ("UINT8", &[1, 2, 2, 4], 16, "4 channels: expected 1 (gray) or 3 (RGB)"),
            ("UINT8", &[1, 2, 2, 3], 11, "but 11 bytes of data (expected 12)"),
            ("UINT8", &[1, 70000, 2, 3], 0, "the limit is 65536 per side"),
        ];
        for (datatype, shape, len, want) in cases {
            let bytes = vec![0u8; len];
            let message = decode(&tensor(datatype, shape, &bytes)).err().unwrap_or_default();
            assert!(message.starts_with(IMAGE) && message.contains(want), "{shape:?}: {message:?} lacks {want:?}");
        }
    }
}
