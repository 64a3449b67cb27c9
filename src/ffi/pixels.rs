//! The caller's pixel buffers: checked, then copied once into the RGB image pre-processing
//! reads. Also the decoder entry points, for hosts that have no PNG/JPEG decoder of their own.

use super::{c_path, guard, Failure, FfiResult, PatchcoreStatus};
use crate::data::image::load_rgb;
use image::RgbImage;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The largest width or height accepted.
pub const PATCHCORE_MAX_SIDE: u32 = 65536;
/// The largest width x height accepted (256 Mpx: 768 MB as RGB).
pub const PATCHCORE_MAX_PIXELS: u64 = 268435456;

/// An 8-bit image in caller memory (or decoded by `patchcore_image_load`): `height` rows of
/// `width` pixels of `channels` bytes (1: gray, 3: RGB in that order), each row starting
/// `stride_bytes` after the previous one. The buffer must hold
/// `stride_bytes * (height - 1) + width * channels` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PatchcoreImage {
    pub pixels: *const u8,
    pub width: u32,
    pub height: u32,
    pub stride_bytes: usize,
    pub channels: u32,
}

impl PatchcoreImage {
    fn empty() -> Self {
        PatchcoreImage { pixels: std::ptr::null(), width: 0, height: 0, stride_bytes: 0, channels: 0 }
    }
}

/// A checked view of the caller's pixels.
pub(crate) struct Pixels<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    channels: usize,
}

impl<'a> Pixels<'a> {
    /// Checks the description of a buffer and views it.
    ///
    /// # Safety
    /// When `image.pixels` is not NULL, it must point to at least
    /// `stride_bytes * (height - 1) + width * channels` readable bytes that nothing writes
    /// during the lifetime `'a` (the duration of the C call).
    pub(crate) unsafe fn new(image: &PatchcoreImage) -> FfiResult<Pixels<'a>> {
        let PatchcoreImage { pixels, width, height, stride_bytes, channels } = *image;
        if pixels.is_null() {
            return Err(Failure::null("pixels"));
        }
        if width == 0 || height == 0 {
            return Err(Failure::invalid(format!("image is {width}x{height}: both sides must be at least 1")));
        }
        if width > PATCHCORE_MAX_SIDE
            || height > PATCHCORE_MAX_SIDE
            || width as u64 * height as u64 > PATCHCORE_MAX_PIXELS
        {
            let limits = format!("{PATCHCORE_MAX_SIDE} per side and {PATCHCORE_MAX_PIXELS} pixels");
            return Err(Failure::invalid(format!("image is {width}x{height}: the limit is {limits}")));
        }
        if channels != 1 && channels != 3 {
            return Err(Failure::invalid(format!("channels is {channels}: expected 1 (gray) or 3 (RGB)")));
        }
        let (w, h, c) = (width as usize, height as usize, channels as usize);
        let row = w * c;
        if stride_bytes < row {
            return Err(Failure::invalid(format!(
                "stride_bytes {stride_bytes} is smaller than a row ({width} pixels x {channels} channels = {row} bytes)"
            )));
        }
        let len = stride_bytes
            .checked_mul(h - 1)
            .and_then(|n| n.checked_add(row))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| Failure::invalid(format!("stride_bytes {stride_bytes} x height {height} overflows")))?;
        // SAFETY: not NULL, and the caller guarantees `len` readable bytes, unchanged while
        // the call runs; `len` fits in isize as checked above.
        let data = unsafe { std::slice::from_raw_parts(pixels, len) };
        Ok(Pixels { data, width: w, height: h, stride: stride_bytes, channels: c })
    }

    /// The one copy the C boundary makes: rows gathered from the strided buffer, gray
    /// replicated to three channels.
    pub(crate) fn to_rgb(&self) -> RgbImage {
        let mut rgb = Vec::with_capacity(self.width * self.height * 3);
        for y in 0..self.height {
            let row = &self.data[y * self.stride..][..self.width * self.channels];
            if self.channels == 3 {
                rgb.extend_from_slice(row);
            } else {
                rgb.extend(row.iter().flat_map(|&g| [g, g, g]));
            }
        }
        RgbImage::from_raw(self.width as u32, self.height as u32, rgb).expect("width x height x 3 bytes")
    }
}

/// Buffers handed out by `patchcore_image_load`, by address, with their length: freeing needs
/// the length, and a pointer that is not here is refused instead of being freed.
static DECODED: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

/// Decodes a PNG or JPEG file into 8-bit RGB (`channels` 3, `stride_bytes` = 3 x width) owned
/// by the library; release it with `patchcore_image_free`. On failure `*out` is zeroed.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `PatchcoreImage`.
#[no_mangle]
pub unsafe extern "C" fn patchcore_image_load(
    path: *const std::ffi::c_char,
    out: *mut PatchcoreImage,
) -> PatchcoreStatus {
    guard("patchcore_image_load", || {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: not NULL, and the caller guarantees it points to a writable PatchcoreImage.
        unsafe { out.write(PatchcoreImage::empty()) };
        // SAFETY: the caller guarantees a NUL-terminated string when not NULL.
        let path = unsafe { c_path(path, "path") }?;
        let image = load_rgb(&path)?;
        let (width, height) = image.dimensions();
        let pixels = Box::into_raw(image.into_raw().into_boxed_slice());
        DECODED.lock().unwrap_or_else(PoisonError::into_inner).insert(pixels.cast::<u8>().addr(), pixels.len());
        let decoded =
            PatchcoreImage { pixels: pixels.cast(), width, height, stride_bytes: width as usize * 3, channels: 3 };
        // SAFETY: as above.
        unsafe { out.write(decoded) };
        Ok(())
    })
}

/// Frees the pixels of an image from `patchcore_image_load` and zeroes `*image`. NULL, or an
/// image whose `pixels` is NULL (already freed through this struct), is a no-op; pixels that
/// did not come from `patchcore_image_load`, or were freed through a copy of the struct, give
/// PATCHCORE_STALE_HANDLE.
///
/// # Safety
/// `image` is NULL or points to a writable `PatchcoreImage`.
#[no_mangle]
pub unsafe extern "C" fn patchcore_image_free(image: *mut PatchcoreImage) -> PatchcoreStatus {
    guard("patchcore_image_free", || {
        if image.is_null() {
            return Ok(());
        }
        // SAFETY: not NULL, and the caller guarantees it points to a PatchcoreImage.
        let pixels = unsafe { (*image).pixels };
        if pixels.is_null() {
            return Ok(());
        }
        let len = DECODED.lock().unwrap_or_else(PoisonError::into_inner).remove(&pixels.addr()).ok_or_else(|| {
            Failure::new(
                PatchcoreStatus::PATCHCORE_STALE_HANDLE,
                format!("pixels {pixels:p} were already freed, or did not come from patchcore_image_load"),
            )
        })?;
        // SAFETY: the registry holds exactly the boxed slices patchcore_image_load leaked, with
        // their lengths, and the entry was just removed, so this frees each at most once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(pixels.cast_mut(), len)) });
        // SAFETY: as above; zeroing makes a second free through this struct a no-op.
        unsafe { image.write(PatchcoreImage::empty()) };
        Ok(())
    })
}
