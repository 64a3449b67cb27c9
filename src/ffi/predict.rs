//! Loading, describing, running and freeing a model through the C ABI.

use super::handle::{lookup, register, release, Model, PatchcoreModel};
use super::pixels::{PatchcoreImage, Pixels};
use super::{c_path, c_str, guard, Failure, FfiResult, PatchcoreStatus};
use crate::backend::{AnyBackend, DeviceChoice, Precision};
use crate::patchcore::{map_to_image, PatchCore, Prediction};
use std::ffi::{c_char, CString};

/// The most images one `patchcore_predict_batch` call takes (the CLI's `--batch` limit).
pub const PATCHCORE_MAX_BATCH: usize = 1024;

/// One image's verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PatchcoreResult {
    /// The raw PatchCore image score (paper Eq. 7).
    pub score: f32,
    /// The score normalised to [0, 1], with the model's image threshold at 0.5.
    pub normalized: f32,
    /// `normalized > 0.5`: the score is above the image threshold.
    pub is_anomalous: bool,
}

/// What a model file records that a host may need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PatchcoreModelInfo {
    /// The model file's format version.
    pub format_version: u32,
    /// "resnet18", "wide_resnet50_2" or "efficientnet_lite0": a static string, never free it.
    pub backbone: *const c_char,
    /// The device the handle runs on ("cpu"): a static string.
    pub device: *const c_char,
    /// Images are resized to `resize` x `resize` ...
    pub resize: u32,
    /// ... then center-cropped to `input_size` x `input_size` (equal to `resize` without crop).
    pub input_size: u32,
    /// Dimensions of one patch embedding.
    pub embedding_dim: u32,
    /// The feature grid of one image: patches per column and per row.
    pub grid_height: u32,
    pub grid_width: u32,
    /// Rows in the memory bank.
    pub bank_rows: u32,
    /// Bank neighbours in the image score's reweighting.
    pub num_neighbors: u32,
    /// The raw image score threshold (normalised 0.5) and the min/max used to normalise.
    pub image_threshold: f32,
    pub image_min: f32,
    pub image_max: f32,
    /// The same for anomaly map values.
    pub pixel_threshold: f32,
    pub pixel_min: f32,
    pub pixel_max: f32,
}

/// Counts for the header's fixed-width fields; none comes near u32::MAX in a loadable model.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Loads a model file written by `patchcore fit` (or the Rust API) onto `device`: "cpu",
/// "cuda", "cuda:N" or "auto" (CUDA when present, else the CPU), in exact f32 arithmetic (on a
/// CPU with AMX, convolutions of split bf16 products within a few f32 roundings). On success
/// `*out` is a new handle; on failure it is NULL. A file of another format version gives
/// PATCHCORE_MODEL.
///
/// # Safety
/// `path` and `device` are NULL or NUL-terminated strings; `out` is NULL or points to
/// writable storage for one handle.
#[no_mangle]
pub unsafe extern "C" fn patchcore_load(
    path: *const c_char,
    device: *const c_char,
    out: *mut *mut PatchcoreModel,
) -> PatchcoreStatus {
    // SAFETY: the caller's guarantees are passed on unchanged.
    guard("patchcore_load", || unsafe { load(path, device, c"f32".as_ptr(), out) })
}

/// `patchcore_load` with a choice of arithmetic, as the CLI's `--precision`: "f32" (what
/// `patchcore_load` does); "bf16" on a CPU with AMX-BF16 or AVX512-BF16 (convolutions in bf16: faster, scores
/// within about 2%; the nearest-neighbour search stays exact), refused with
/// PATCHCORE_INVALID_ARGUMENT and the reason on a CPU without; "tf32" or "f16" on the GPU
/// (tensor cores: faster, looser), which a CPU computes in f32.
///
/// # Safety
/// `path`, `device` and `precision` are NULL or NUL-terminated strings; `out` is NULL or
/// points to writable storage for one handle.
#[no_mangle]
pub unsafe extern "C" fn patchcore_load_with_precision(
    path: *const c_char,
    device: *const c_char,
    precision: *const c_char,
    out: *mut *mut PatchcoreModel,
) -> PatchcoreStatus {
    // SAFETY: the caller's guarantees are passed on unchanged.
    guard("patchcore_load_with_precision", || unsafe { load(path, device, precision, out) })
}

/// Both loads: `*out` is NULL until the model is loaded.
///
/// # Safety
/// As `patchcore_load_with_precision`'s.
unsafe fn load(
    path: *const c_char,
    device: *const c_char,
    precision: *const c_char,
    out: *mut *mut PatchcoreModel,
) -> FfiResult {
    if out.is_null() {
        return Err(Failure::null("out"));
    }
    // SAFETY: not NULL, and the caller guarantees room for one handle.
    unsafe { out.write(std::ptr::null_mut()) };
    // SAFETY: the caller guarantees NUL-terminated strings when not NULL.
    let (path, device, precision) =
        unsafe { (c_path(path, "path")?, c_str(device, "device")?, c_str(precision, "precision")?) };
    let choice: DeviceChoice = device
        .parse()
        .map_err(|_| Failure::invalid(format!("device `{device}`: expected cpu, cuda, cuda:N or auto")))?;
    let precision: Precision = precision
        .parse()
        .map_err(|_| Failure::invalid(format!("precision `{precision}`: expected f32, tf32, f16 or bf16")))?;
    // "auto" falls back to the CPU silently: the host reads the device back from the model info.
    let backend = AnyBackend::open(choice, precision, |_| {})?;
    let device = match backend {
        AnyBackend::Cpu(_) => c"cpu",
        AnyBackend::Cuda(_) => c"cuda",
    };
    let core = PatchCore::load(backend, &path)?;
    let backbone = CString::new(core.meta().backbone.name()).expect("backbone names have no NUL");
    let handle = register(Model { core, device, backbone });
    // SAFETY: as above.
    unsafe { out.write(handle) };
    Ok(())
}

/// Releases a handle. NULL is a no-op; a handle already freed gives PATCHCORE_STALE_HANDLE.
/// A prediction running on another thread with this handle finishes normally, and the model's
/// memory is released when it returns.
#[no_mangle]
pub extern "C" fn patchcore_free(model: *mut PatchcoreModel) -> PatchcoreStatus {
    guard("patchcore_free", || if model.is_null() { Ok(()) } else { release(model) })
}

/// Writes the model's metadata into `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `PatchcoreModelInfo`.
#[no_mangle]
pub unsafe extern "C" fn patchcore_model_info(
    model: *const PatchcoreModel,
    out: *mut PatchcoreModelInfo,
) -> PatchcoreStatus {
    guard("patchcore_model_info", || {
        let model = lookup(model)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let meta = model.core.meta();
        let info = PatchcoreModelInfo {
            format_version: meta.format_version,
            backbone: model.backbone.as_ptr(),
            device: model.device.as_ptr(),
            resize: count(meta.preprocess.resize),
            input_size: count(meta.preprocess.input_size()),
            embedding_dim: count(meta.embedding_dim),
            grid_height: count(meta.grid[0]),
            grid_width: count(meta.grid[1]),
            bank_rows: count(meta.bank_rows),
            num_neighbors: count(meta.num_neighbors),
            image_threshold: meta.image.threshold,
            image_min: meta.image.min,
            image_max: meta.image.max,
            pixel_threshold: meta.pixel.threshold,
            pixel_min: meta.pixel.min,
            pixel_max: meta.pixel.max,
        };
        // SAFETY: not NULL, and the caller guarantees it points to a writable PatchcoreModelInfo.
        unsafe { out.write(info) };
        Ok(())
    })
}

/// A caller's map buffer, checked against its image; written only after the pixels are
/// copied, so the two buffers are never viewed at once even if a caller makes them overlap.
struct MapOut {
    ptr: *mut f32,
    len: usize,
}

impl MapOut {
    /// `None` for a NULL `map`; a refusal when `map_len` is not `width * height`.
    fn check(map: *mut f32, map_len: usize, width: u32, height: u32) -> FfiResult<Option<MapOut>> {
        if map.is_null() {
            return Ok(None);
        }
        let want = width as usize * height as usize;
        if map_len != want {
            return Err(Failure::invalid(format!(
                "map_len is {map_len}, but the map of a {width}x{height} image has {want} values"
            )));
        }
        Ok(Some(MapOut { ptr: map, len: map_len }))
    }

    /// Writes the anomaly map at the image's own size, normalised as the CLI's overlays colour
    /// it: 0.5 is the pixel threshold, values clamped to [0, 1].
    ///
    /// # Safety
    /// `ptr` points to `len` writable floats that nothing else accesses during the call.
    unsafe fn write(&self, model: &Model, prediction: &Prediction, width: u32, height: u32) {
        let meta = model.core.meta();
        let raw = map_to_image(&prediction.map, &meta.preprocess, width, height);
        // SAFETY: not NULL (checked), and the caller guarantees `len` writable floats.
        let out = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
        for (o, v) in out.iter_mut().zip(raw) {
            *o = meta.pixel.apply(v);
        }
    }
}

fn verdict(prediction: &Prediction) -> PatchcoreResult {
    PatchcoreResult { score: prediction.score, normalized: prediction.normalized, is_anomalous: prediction.anomalous }
}

/// Scores one image. `pixels` holds `height` rows of `width` pixels of `channels` bytes (1:
/// gray, 3: RGB), rows `stride_bytes` apart; it is read once, during the call, and not kept.
/// The verdict goes to `*result`. When `map` is not NULL it receives the anomaly map at the
/// image's size (`map_len` must be `width * height`), row-major, normalised to [0, 1] with the
/// pixel threshold at 0.5. On failure `*result` and `map` are left untouched.
///
/// # Safety
/// `pixels` is NULL or holds `stride_bytes * (height - 1) + width * channels` readable bytes;
/// `result` is NULL or points to a writable `PatchcoreResult`; `map` is NULL or points to
/// `map_len` writable floats. None of them changes during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // The flat signature is the C API; a struct would only move them.
pub unsafe extern "C" fn patchcore_predict(
    model: *const PatchcoreModel,
    pixels: *const u8,
    width: u32,
    height: u32,
    stride_bytes: usize,
    channels: u32,
    result: *mut PatchcoreResult,
    map: *mut f32,
    map_len: usize,
) -> PatchcoreStatus {
    guard("patchcore_predict", || {
        let model = lookup(model)?;
        if result.is_null() {
            return Err(Failure::null("result"));
        }
        let image = PatchcoreImage { pixels, width, height, stride_bytes, channels };
        // SAFETY: the caller guarantees the buffer the header describes.
        let pixels = unsafe { Pixels::new(&image) }?;
        let map = MapOut::check(map, map_len, width, height)?;
        let rgb = pixels.to_rgb();
        let predictions = model.core.predict(std::slice::from_ref(&rgb))?;
        let prediction = predictions.first().expect("one prediction per image");
        if let Some(map) = map {
            // SAFETY: the caller guarantees `map_len` writable floats; the pixels are no longer viewed.
            unsafe { map.write(&model, prediction, width, height) };
        }
        // SAFETY: not NULL, and the caller guarantees a writable PatchcoreResult.
        unsafe { result.write(verdict(prediction)) };
        Ok(())
    })
}

/// Scores `count` images in one forward pass (the results equal single calls' up to float
/// rounding); they may differ in size. `results` has `count` elements. `maps` and `map_lens`
/// are both NULL (no maps) or both arrays of `count`: `maps[i]` NULL skips image i's map,
/// otherwise `map_lens[i]` must be `images[i].width * images[i].height`. Every image and
/// buffer is checked before any work; the message of a refusal names the image's index.
/// `count` 0 is a no-op; more than `PATCHCORE_MAX_BATCH` is refused.
///
/// # Safety
/// `images` points to `count` descriptions of buffers as in `patchcore_predict`; `results`
/// to `count` writable `PatchcoreResult`s; `maps` and `map_lens`, when not NULL, to `count`
/// elements each, with `maps[i]` NULL or pointing to `map_lens[i]` writable floats.
#[no_mangle]
pub unsafe extern "C" fn patchcore_predict_batch(
    model: *const PatchcoreModel,
    images: *const PatchcoreImage,
    count: usize,
    results: *mut PatchcoreResult,
    maps: *const *mut f32,
    map_lens: *const usize,
) -> PatchcoreStatus {
    guard("patchcore_predict_batch", || {
        let model = lookup(model)?;
        if count == 0 {
            return Ok(());
        }
        if count > PATCHCORE_MAX_BATCH {
            return Err(Failure::invalid(format!("count is {count}: at most {PATCHCORE_MAX_BATCH} images per call")));
        }
        if images.is_null() {
            return Err(Failure::null("images"));
        }
        if results.is_null() {
            return Err(Failure::null("results"));
        }
        if maps.is_null() != map_lens.is_null() {
            return Err(Failure::null(if maps.is_null() { "maps" } else { "map_lens" }));
        }
        // SAFETY: not NULL, and the caller guarantees `count` descriptions.
        let images = unsafe { std::slice::from_raw_parts(images, count) };
        let views = images
            .iter()
            .enumerate()
            // SAFETY: the caller guarantees every description matches its buffer.
            .map(|(i, image)| unsafe { Pixels::new(image) }.map_err(|f| f.in_image(i)))
            .collect::<FfiResult<Vec<_>>>()?;
        let mut outs = Vec::with_capacity(count);
        if !maps.is_null() {
            // SAFETY: not NULL (checked together above), `count` elements each.
            let (maps, lens) =
                unsafe { (std::slice::from_raw_parts(maps, count), std::slice::from_raw_parts(map_lens, count)) };
            for (i, image) in images.iter().enumerate() {
                outs.push(MapOut::check(maps[i], lens[i], image.width, image.height).map_err(|f| f.in_image(i))?);
            }
        }
        let rgb: Vec<_> = views.iter().map(Pixels::to_rgb).collect();
        // The pixel views end here, before any map is written.
        drop(views);
        let predictions = model.core.predict(&rgb)?;
        for ((image, prediction), out) in images.iter().zip(&predictions).zip(&outs) {
            if let Some(out) = out {
                // SAFETY: the caller guarantees `map_lens[i]` writable floats at `maps[i]`.
                unsafe { out.write(&model, prediction, image.width, image.height) };
            }
        }
        // SAFETY: not NULL, and the caller guarantees `count` writable results.
        let results = unsafe { std::slice::from_raw_parts_mut(results, count) };
        for (slot, prediction) in results.iter_mut().zip(&predictions) {
            *slot = verdict(prediction);
        }
        Ok(())
    })
}
