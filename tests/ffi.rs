//! The C ABI, called as a C host would: results against the Rust API, every refusal with its
//! status and message, stale handles, concurrent threads.

mod common;

use common::{rewrite_model, synthetic_category, synthetic_image, TempDir};
use patchcore::backbone::weights::HashedWeights;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::CpuBackend;
use patchcore::data::dataset::list_training_images;
use patchcore::ffi::PatchcoreStatus::{self, *};
use patchcore::ffi::*;
use patchcore::patchcore::{map_to_image, FitOptions, PatchCore, Prediction};
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

/// One small model for the whole file (ResNet-18 with hashed weights at 64 px), fitted once.
fn model() -> &'static PatchCore<CpuBackend> {
    static MODEL: OnceLock<PatchCore<CpuBackend>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = TempDir::new("ffi-fit");
        synthetic_category(dir.path(), 64, 6, 1);
        let train = list_training_images(&dir.path().join("train/good")).unwrap();
        let backbone =
            Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
                .unwrap();
        let options = FitOptions {
            preprocess: Architecture::Resnet18.preprocess(64, None).unwrap(),
            ratio: 0.25,
            ..FitOptions::default()
        };
        PatchCore::fit(CpuBackend::default(), backbone, &train, None, &options, &mut |_, _, _| {}).unwrap()
    })
}

fn c(text: &str) -> CString {
    CString::new(text).unwrap()
}

fn path_c(path: &Path) -> CString {
    c(path.to_str().unwrap())
}

fn last_error() -> String {
    // SAFETY: never NULL; valid until the next failure on this thread.
    unsafe { CStr::from_ptr(patchcore_last_error()) }.to_string_lossy().into_owned()
}

/// Asserts a status, and for a failure that the message names `what`.
#[track_caller]
fn expect(status: PatchcoreStatus, want: PatchcoreStatus, what: &str) {
    assert_eq!(status, want, "last error: {}", last_error());
    if want != PATCHCORE_OK {
        let message = last_error();
        assert!(message.contains(what), "`{message}` should mention `{what}`");
    }
}

/// A model file in `dir`, loaded through the C ABI.
fn load(dir: &TempDir) -> *mut PatchcoreModel {
    let path = dir.path().join("model.patchcore");
    model().save(&path).unwrap();
    let mut handle = null_mut();
    // SAFETY: NUL-terminated strings and a valid out pointer.
    let status = unsafe { patchcore_load(path_c(&path).as_ptr(), c"cpu".as_ptr(), &mut handle) };
    expect(status, PATCHCORE_OK, "");
    assert!(!handle.is_null());
    handle
}

/// Scores an RGB or gray buffer through the C ABI, with the map.
fn predict_c(
    handle: *const PatchcoreModel,
    pixels: &[u8],
    (width, height, stride, channels): (u32, u32, usize, u32),
) -> (PatchcoreResult, Vec<f32>) {
    assert!(pixels.len() >= stride * (height as usize - 1) + (width * channels) as usize);
    let mut result = PatchcoreResult::default();
    let mut map = vec![f32::NAN; (width * height) as usize];
    // SAFETY: the buffer holds the rows described (asserted above); result and map are ours.
    let status = unsafe {
        patchcore_predict(
            handle,
            pixels.as_ptr(),
            width,
            height,
            stride,
            channels,
            &mut result,
            map.as_mut_ptr(),
            map.len(),
        )
    };
    expect(status, PATCHCORE_OK, "");
    (result, map)
}

/// The verdict and normalised map the Rust API gives for `image`.
fn predict_rust(image: &image::RgbImage) -> (PatchcoreResult, Vec<f32>) {
    let model = model();
    let p: Prediction = model.predict(std::slice::from_ref(image)).unwrap().remove(0);
    let raw = map_to_image(&p.map, &model.meta().preprocess, image.width(), image.height());
    let map = raw.into_iter().map(|v| model.meta().pixel.apply(v)).collect();
    (PatchcoreResult { score: p.score, normalized: p.normalized, is_anomalous: p.anomalous }, map)
}

/// A `w x h` test image (not square, so width and height cannot be swapped unnoticed).
fn test_image(w: u32, h: u32, seed: u64, defect: bool) -> image::RgbImage {
    let (img, _) = synthetic_image(w.max(h), seed, defect);
    image::imageops::crop_imm(&img, 0, 0, w, h).to_image()
}

/// `rows` copied into a buffer with `pad` spare bytes after each row (filled with 0xAB, which
/// would change the result if read as pixels).
fn padded(rows: &[u8], row_bytes: usize, pad: usize) -> Vec<u8> {
    rows.chunks(row_bytes).flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0xAB, pad))).collect()
}

#[test]
fn rgb_predict_matches_the_rust_api_exactly() {
    let dir = TempDir::new("ffi-rgb");
    let handle = load(&dir);
    for (seed, defect) in [(5000, false), (5001, true)] {
        let img = test_image(72, 56, seed, defect);
        let want = predict_rust(&img);
        let (w, h) = img.dimensions();
        assert_eq!(predict_c(handle, img.as_raw(), (w, h, w as usize * 3, 3)), want);
        // Padded rows: the stride is honoured and the padding never read.
        let buffer = padded(img.as_raw(), w as usize * 3, 13);
        assert_eq!(predict_c(handle, &buffer, (w, h, w as usize * 3 + 13, 3)), want);
        assert!(want.1.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // The defective image scores higher and its map peaks higher.
    let good = predict_rust(&test_image(72, 56, 5000, false));
    let bad = predict_rust(&test_image(72, 56, 5001, true));
    assert!(bad.0.score > good.0.score);
    expect(patchcore_free(handle), PATCHCORE_OK, "");
}

#[test]
fn gray_buffers_are_replicated_to_rgb() {
    let dir = TempDir::new("ffi-gray");
    let handle = load(&dir);
    let gray = image::imageops::grayscale(&test_image(40, 48, 5002, true));
    let rgb = image::RgbImage::from_fn(40, 48, |x, y| {
        let g = gray.get_pixel(x, y)[0];
        image::Rgb([g, g, g])
    });
    let want = predict_rust(&rgb);
    assert_eq!(predict_c(handle, gray.as_raw(), (40, 48, 40, 1)), want);
    assert_eq!(predict_c(handle, &padded(gray.as_raw(), 40, 3), (40, 48, 43, 1)), want);
    patchcore_free(handle);
}

#[test]
fn predict_without_a_map_gives_the_same_verdict() {
    let dir = TempDir::new("ffi-nomap");
    let handle = load(&dir);
    let img = test_image(64, 64, 5003, true);
    let mut result = PatchcoreResult::default();
    // SAFETY: a 64x64 RGB buffer, a result to write, no map.
    let status =
        unsafe { patchcore_predict(handle, img.as_raw().as_ptr(), 64, 64, 192, 3, &mut result, null_mut(), 12345) };
    expect(status, PATCHCORE_OK, "");
    assert_eq!(result, predict_rust(&img).0);
    patchcore_free(handle);
}

#[test]
fn batch_matches_single_calls() {
    let dir = TempDir::new("ffi-batch");
    let handle = load(&dir);
    let images: Vec<image::RgbImage> =
        (0..3).map(|i| test_image(48 + 16 * i, 64 - 8 * i, 5010 + i as u64, i == 1)).collect();
    let described: Vec<PatchcoreImage> = images
        .iter()
        .map(|img| PatchcoreImage {
            pixels: img.as_raw().as_ptr(),
            width: img.width(),
            height: img.height(),
            stride_bytes: img.width() as usize * 3,
            channels: 3,
        })
        .collect();
    let mut results = [PatchcoreResult::default(); 3];
    let mut map0 = vec![f32::NAN; (images[0].width() * images[0].height()) as usize];
    let mut map2 = vec![f32::NAN; (images[2].width() * images[2].height()) as usize];
    let maps = [map0.as_mut_ptr(), null_mut(), map2.as_mut_ptr()];
    let lens = [map0.len(), 0, map2.len()];
    // SAFETY: three described buffers, three results, maps as their lengths say.
    let status = unsafe {
        patchcore_predict_batch(handle, described.as_ptr(), 3, results.as_mut_ptr(), maps.as_ptr(), lens.as_ptr())
    };
    expect(status, PATCHCORE_OK, "");
    // One forward pass of three images against three of one: equal up to float rounding.
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    for (i, (img, got)) in images.iter().zip(&results).enumerate() {
        let (want, want_map) = predict_rust(img);
        assert!(close(got.score, want.score) && close(got.normalized, want.normalized), "image {i}: {got:?} {want:?}");
        assert_eq!(got.is_anomalous, want.is_anomalous);
        let map = [Some(&map0), None, Some(&map2)][i];
        if let Some(map) = map {
            assert!(map.iter().zip(&want_map).all(|(&a, &b)| close(a, b)), "map {i}");
        }
    }
    // Without maps at all, and count 0 (a no-op even with NULL arrays).
    // SAFETY: as above, no maps.
    let status =
        unsafe { patchcore_predict_batch(handle, described.as_ptr(), 3, results.as_mut_ptr(), null(), null()) };
    expect(status, PATCHCORE_OK, "");
    // SAFETY: nothing is read for count 0.
    expect(unsafe { patchcore_predict_batch(handle, null(), 0, null_mut(), null(), null()) }, PATCHCORE_OK, "");
    patchcore_free(handle);
}

#[test]
fn model_info_reports_the_metadata() {
    let dir = TempDir::new("ffi-info");
    let handle = load(&dir);
    // SAFETY: all-zero is a valid PatchcoreModelInfo (null pointers, zero numbers).
    let mut info: PatchcoreModelInfo = unsafe { std::mem::zeroed() };
    // SAFETY: a live handle and a writable struct.
    expect(unsafe { patchcore_model_info(handle, &mut info) }, PATCHCORE_OK, "");
    let meta = model().meta();
    // SAFETY: static NUL-terminated strings.
    let (backbone, device) = unsafe { (CStr::from_ptr(info.backbone), CStr::from_ptr(info.device)) };
    assert_eq!(backbone.to_str().unwrap(), "resnet18");
    assert_eq!(device.to_str().unwrap(), "cpu");
    assert_eq!((info.format_version, info.resize, info.input_size), (meta.format_version, 64, 64));
    assert_eq!((info.embedding_dim, info.grid_height, info.grid_width), (384, 8, 8));
    assert_eq!((info.bank_rows as usize, info.num_neighbors), (meta.bank_rows, 9));
    assert_eq!(
        (info.image_threshold, info.image_min, info.image_max),
        (meta.image.threshold, meta.image.min, meta.image.max)
    );
    assert_eq!(
        (info.pixel_threshold, info.pixel_min, info.pixel_max),
        (meta.pixel.threshold, meta.pixel.min, meta.pixel.max)
    );
    patchcore_free(handle);
}

#[test]
fn null_pointers_are_refused() {
    let dir = TempDir::new("ffi-null");
    let handle = load(&dir);
    let path = path_c(&dir.path().join("model.patchcore"));
    let mut out = null_mut();
    let pixels = [0u8; 12];
    let mut result = PatchcoreResult::default();
    // SAFETY (every call below): each pointer is NULL or valid for what it describes.
    unsafe {
        expect(patchcore_load(null(), c"cpu".as_ptr(), &mut out), PATCHCORE_NULL_ARGUMENT, "`path` is NULL");
        assert!(out.is_null());
        expect(patchcore_load(path.as_ptr(), null(), &mut out), PATCHCORE_NULL_ARGUMENT, "`device` is NULL");
        expect(patchcore_load(path.as_ptr(), c"cpu".as_ptr(), null_mut()), PATCHCORE_NULL_ARGUMENT, "`out` is NULL");
        let p = pixels.as_ptr();
        let m = null_mut();
        expect(patchcore_predict(null(), p, 2, 2, 6, 3, &mut result, m, 0), PATCHCORE_NULL_ARGUMENT, "`model`");
        expect(patchcore_predict(handle, null(), 2, 2, 6, 3, &mut result, m, 0), PATCHCORE_NULL_ARGUMENT, "`pixels`");
        expect(patchcore_predict(handle, p, 2, 2, 6, 3, null_mut(), m, 0), PATCHCORE_NULL_ARGUMENT, "`result`");
        let image = PatchcoreImage { pixels: p, width: 2, height: 2, stride_bytes: 6, channels: 3 };
        let lens = [4usize];
        let batch = |images, results, maps, lens| patchcore_predict_batch(handle, images, 1, results, maps, lens);
        expect(batch(null(), &mut result, null(), null()), PATCHCORE_NULL_ARGUMENT, "`images`");
        expect(batch(&image, null_mut(), null(), null()), PATCHCORE_NULL_ARGUMENT, "`results`");
        expect(batch(&image, &mut result, null(), lens.as_ptr()), PATCHCORE_NULL_ARGUMENT, "`maps`");
        let no_image = PatchcoreImage { pixels: null(), ..image };
        expect(batch(&no_image, &mut result, null(), null()), PATCHCORE_NULL_ARGUMENT, "image 0: `pixels`");
        expect(patchcore_model_info(null(), &mut std::mem::zeroed()), PATCHCORE_NULL_ARGUMENT, "`model`");
        expect(patchcore_model_info(handle, null_mut()), PATCHCORE_NULL_ARGUMENT, "`out`");
        expect(patchcore_image_load(null(), &mut std::mem::zeroed()), PATCHCORE_NULL_ARGUMENT, "`path`");
        expect(patchcore_image_load(path.as_ptr(), null_mut()), PATCHCORE_NULL_ARGUMENT, "`out`");
        // Freeing NULL is a no-op, as free(NULL) is.
        expect(patchcore_free(null_mut()), PATCHCORE_OK, "");
        expect(patchcore_image_free(null_mut()), PATCHCORE_OK, "");
    }
    patchcore_free(handle);
}

#[test]
fn bad_sizes_strides_and_channels_are_refused_before_reading() {
    let dir = TempDir::new("ffi-sizes");
    let handle = load(&dir);
    // Only 64 bytes exist: every refusal below must happen before the buffer is read.
    let pixels = [7u8; 64];
    let mut result = PatchcoreResult::default();
    let mut map = [0f32; 4];
    let m = null_mut();
    let predict = |w, h, stride, ch, result: &mut PatchcoreResult, map: *mut f32, len| {
        // SAFETY: the claimed sizes exceed the buffer only where the call must refuse them.
        unsafe { patchcore_predict(handle, pixels.as_ptr(), w, h, stride, ch, result, map, len) }
    };
    let r = &mut result;
    expect(predict(0, 2, 6, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "0x2");
    expect(predict(2, 0, 6, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "2x0");
    expect(predict(65537, 1, 1 << 20, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "the limit is 65536 per side");
    expect(predict(1, u32::MAX, 3, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "the limit");
    expect(predict(65536, 65536, 1 << 18, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "268435456 pixels");
    expect(predict(2, 2, 6, 2, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "channels is 2");
    expect(predict(2, 2, 8, 4, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "channels is 4");
    expect(predict(4, 2, 11, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "stride_bytes 11 is smaller than a row");
    expect(predict(4, 2, 3, 1, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "stride_bytes 3 is smaller than a row");
    expect(predict(2, 3, usize::MAX / 2, 3, r, m, 0), PATCHCORE_INVALID_ARGUMENT, "overflows");
    expect(predict(2, 2, 6, 3, r, map.as_mut_ptr(), 5), PATCHCORE_INVALID_ARGUMENT, "map_len is 5");
    expect(predict(2, 2, 6, 3, r, map.as_mut_ptr(), 0), PATCHCORE_INVALID_ARGUMENT, "map_len is 0");
    assert_eq!(result, PatchcoreResult::default(), "a refused call writes nothing");

    let good = PatchcoreImage { pixels: pixels.as_ptr(), width: 2, height: 2, stride_bytes: 6, channels: 3 };
    let images = [good, PatchcoreImage { stride_bytes: 5, ..good }];
    let mut results = [PatchcoreResult::default(); 2];
    // SAFETY: the second description is refused before any buffer is read.
    let status = unsafe { patchcore_predict_batch(handle, images.as_ptr(), 2, results.as_mut_ptr(), null(), null()) };
    expect(status, PATCHCORE_INVALID_ARGUMENT, "image 1: stride_bytes 5");
    let maps = [map.as_mut_ptr(), map.as_mut_ptr()];
    let lens = [4, 3];
    let images = [good, good];
    // SAFETY: as above; the second map length is refused before any work.
    let status = unsafe {
        patchcore_predict_batch(handle, images.as_ptr(), 2, results.as_mut_ptr(), maps.as_ptr(), lens.as_ptr())
    };
    expect(status, PATCHCORE_INVALID_ARGUMENT, "image 1: map_len is 3");
    // SAFETY: refused on the count alone.
    let status =
        unsafe { patchcore_predict_batch(handle, images.as_ptr(), 1025, results.as_mut_ptr(), null(), null()) };
    expect(status, PATCHCORE_INVALID_ARGUMENT, "at most 1024");
    patchcore_free(handle);
}

#[test]
fn freed_and_foreign_handles_are_refused() {
    let dir = TempDir::new("ffi-stale");
    let handle = load(&dir);
    expect(patchcore_free(handle), PATCHCORE_OK, "");
    let pixels = [0u8; 12];
    let mut result = PatchcoreResult::default();
    // SAFETY: valid buffers; only the handle is wrong.
    let status = unsafe { patchcore_predict(handle, pixels.as_ptr(), 2, 2, 6, 3, &mut result, null_mut(), 0) };
    expect(status, PATCHCORE_STALE_HANDLE, "already freed");
    // SAFETY: as above.
    expect(unsafe { patchcore_model_info(handle, &mut std::mem::zeroed()) }, PATCHCORE_STALE_HANDLE, "not live");
    expect(patchcore_free(handle), PATCHCORE_STALE_HANDLE, "already freed");
    // A new model never reuses the old token.
    let again = load(&dir);
    assert_ne!(again, handle);
    expect(patchcore_free(handle), PATCHCORE_STALE_HANDLE, "not live");
    // Something that never was a handle.
    let foreign = std::ptr::without_provenance_mut::<PatchcoreModel>(1);
    expect(patchcore_free(foreign), PATCHCORE_STALE_HANDLE, "did not come from patchcore_load");
    let image = PatchcoreImage { pixels: pixels.as_ptr(), width: 2, height: 2, stride_bytes: 6, channels: 3 };
    // SAFETY: valid buffers; only the handle is wrong.
    let status = unsafe { patchcore_predict_batch(foreign, &image, 1, &mut result, null(), null()) };
    expect(status, PATCHCORE_STALE_HANDLE, "not live");
    expect(patchcore_free(again), PATCHCORE_OK, "");
}

#[test]
fn load_refusals_name_the_file_and_the_fix() {
    let dir = TempDir::new("ffi-load");
    let path = dir.path().join("model.patchcore");
    model().save(&path).unwrap();
    let mut out = std::ptr::without_provenance_mut(0x99);
    let load = |path: &Path, device: &CStr, out: &mut *mut PatchcoreModel| {
        // SAFETY: NUL-terminated strings and a valid out pointer.
        unsafe { patchcore_load(path_c(path).as_ptr(), device.as_ptr(), out) }
    };
    expect(load(&dir.path().join("missing.patchcore"), c"cpu", &mut out), PATCHCORE_IO, "missing.patchcore");
    assert!(out.is_null(), "a failed load leaves NULL behind");
    expect(load(&path, c"gpu", &mut out), PATCHCORE_INVALID_ARGUMENT, "device `gpu`: expected cpu, cuda");
    // Without the feature the fix is a rebuild; with it (and no usable GPU) the probe's reason.
    let no_cuda = if cfg!(feature = "cuda") { "CUDA" } else { "--features cuda" };
    if patchcore::backend::cuda::probe(0).is_err() {
        expect(load(&path, c"cuda", &mut out), PATCHCORE_BACKEND, no_cuda);
    }
    expect(load(&path, c"cuda:4096", &mut out), PATCHCORE_BACKEND, "CUDA");

    // A model file of another format version.
    let newer = dir.path().join("v2.patchcore");
    rewrite_model(&path, &newer, |json| json["format_version"] = 2.into(), |_| {});
    expect(load(&newer, c"cpu", &mut out), PATCHCORE_MODEL, "model format version 2, but this build reads version 1");
    assert!(out.is_null());

    // Not a model at all: a PNG.
    let png = dir.path().join("image.png");
    test_image(8, 8, 1, false).save(&png).unwrap();
    expect(load(&png, c"cpu", &mut out), PATCHCORE_MODEL, "not a valid safetensors file");

    // "auto" falls back to the CPU without a word on stderr; the info says so.
    expect(load(&path, c"auto", &mut out), PATCHCORE_OK, "");
    // SAFETY: all-zero is a valid PatchcoreModelInfo.
    let mut info: PatchcoreModelInfo = unsafe { std::mem::zeroed() };
    // SAFETY: a live handle and a writable struct.
    expect(unsafe { patchcore_model_info(out, &mut info) }, PATCHCORE_OK, "");
    // SAFETY: a static string.
    assert_eq!(unsafe { CStr::from_ptr(info.device) }.to_str().unwrap(), "cpu");
    patchcore_free(out);
}

/// `patchcore_load_with_precision`: "f32" is `patchcore_load`; "bf16" runs the bf16
/// convolutions where the CPU has AMX (scores within 3% of f32's, and not the same bits) and
/// is refused with the reason elsewhere; a precision that does not exist, or NULL, is refused.
#[test]
fn precision_is_chosen_at_load() {
    let dir = TempDir::new("ffi-precision");
    let path = dir.path().join("model.patchcore");
    model().save(&path).unwrap();
    let load = |precision: *const std::ffi::c_char, out: &mut *mut PatchcoreModel| {
        // SAFETY: NUL-terminated strings (or NULL) and a valid out pointer.
        unsafe { patchcore_load_with_precision(path_c(&path).as_ptr(), c"cpu".as_ptr(), precision, out) }
    };
    let mut out = std::ptr::without_provenance_mut(0x99);
    expect(load(c"f64".as_ptr(), &mut out), PATCHCORE_INVALID_ARGUMENT, "precision `f64`: expected f32, tf32, f16");
    assert!(out.is_null(), "a failed load leaves NULL behind");
    expect(load(null(), &mut out), PATCHCORE_NULL_ARGUMENT, "`precision` is NULL");

    let images = [test_image(72, 56, 5000, false), test_image(72, 56, 5001, true)];
    let scores = |handle| -> Vec<f32> {
        images.iter().map(|img| predict_c(handle, img.as_raw(), (72, 56, 72 * 3, 3)).0.score).collect()
    };
    expect(load(c"f32".as_ptr(), &mut out), PATCHCORE_OK, "");
    let f32_scores = scores(out);
    assert_eq!(f32_scores, images.iter().map(|img| predict_rust(img).0.score).collect::<Vec<_>>());
    expect(patchcore_free(out), PATCHCORE_OK, "");
    match patchcore::backend::cpu::bf16_unavailable() {
        None => {
            expect(load(c"bf16".as_ptr(), &mut out), PATCHCORE_OK, "");
            let bf16_scores = scores(out);
            for (bf16, f32) in bf16_scores.iter().zip(&f32_scores) {
                assert!((bf16 - f32).abs() <= 0.03 * f32.abs(), "bf16 {bf16} against f32 {f32}");
            }
            assert_ne!(bf16_scores, f32_scores, "bf16 convolutions round differently");
            expect(patchcore_free(out), PATCHCORE_OK, "");
        }
        Some(reason) => {
            let why = format!("bf16 needs AMX or AVX512-BF16 on the CPU: {reason}");
            expect(load(c"bf16".as_ptr(), &mut out), PATCHCORE_INVALID_ARGUMENT, &why);
            assert!(out.is_null());
        }
    }
}

#[test]
fn decoded_images_score_like_caller_buffers_and_free_once() {
    let dir = TempDir::new("ffi-decode");
    let handle = load(&dir);
    let img = test_image(50, 30, 5020, true);
    let path = dir.path().join("part.png");
    img.save(&path).unwrap();
    // SAFETY: all-zero is a valid PatchcoreImage.
    let mut decoded: PatchcoreImage = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable struct.
    expect(unsafe { patchcore_image_load(path_c(&path).as_ptr(), &mut decoded) }, PATCHCORE_OK, "");
    assert_eq!((decoded.width, decoded.height, decoded.stride_bytes, decoded.channels), (50, 30, 150, 3));
    // SAFETY: the decoded buffer holds width x height x 3 bytes.
    let pixels = unsafe { std::slice::from_raw_parts(decoded.pixels, 50 * 30 * 3) };
    assert_eq!(pixels, img.as_raw().as_slice());
    assert_eq!(predict_c(handle, pixels, (50, 30, 150, 3)), predict_rust(&img));

    let copy = decoded;
    // SAFETY: the struct patchcore_image_load filled.
    expect(unsafe { patchcore_image_free(&mut decoded) }, PATCHCORE_OK, "");
    assert!(decoded.pixels.is_null());
    // SAFETY: a second free through the zeroed struct is a no-op; through the copy it is refused.
    unsafe {
        expect(patchcore_image_free(&mut decoded), PATCHCORE_OK, "");
        let mut copy = copy;
        expect(patchcore_image_free(&mut copy), PATCHCORE_STALE_HANDLE, "already freed");
        let mut foreign = PatchcoreImage { pixels: pixels.as_ptr().wrapping_add(1), ..copy };
        expect(patchcore_image_free(&mut foreign), PATCHCORE_STALE_HANDLE, "did not come from patchcore_image_load");
    }

    let load_image = |path: &Path, out: &mut PatchcoreImage| {
        // SAFETY: a NUL-terminated path and a writable struct.
        unsafe { patchcore_image_load(path_c(path).as_ptr(), out) }
    };
    expect(load_image(&dir.path().join("missing.png"), &mut decoded), PATCHCORE_IO, "missing.png");
    std::fs::write(dir.path().join("text.png"), b"not an image").unwrap();
    expect(load_image(&dir.path().join("text.png"), &mut decoded), PATCHCORE_IMAGE, "text.png");
    assert!(decoded.pixels.is_null() && decoded.width == 0);
    patchcore_free(handle);
}

/// Several threads at once, four with a handle each and four sharing one, each scoring its
/// own images repeatedly: every result equals the single-threaded one, bit for bit.
#[test]
fn concurrent_threads_match_the_single_threaded_results() {
    let dir = TempDir::new("ffi-threads");
    let images: Vec<image::RgbImage> = (0..8).map(|i| test_image(64, 48, 5100 + i, i % 3 == 0)).collect();
    let shared = load(&dir);
    let alone: Vec<_> = images.iter().map(|img| predict_c(shared, img.as_raw(), (64, 48, 192, 3))).collect();
    // Handles are tokens, plain integers to move between threads.
    let shared_token = shared.addr();
    std::thread::scope(|scope| {
        for (t, (img, want)) in images.iter().zip(&alone).enumerate() {
            let own = (t < 4).then(|| load(&dir).addr());
            scope.spawn(move || {
                let handle = std::ptr::without_provenance::<PatchcoreModel>(own.unwrap_or(shared_token));
                for _ in 0..3 {
                    assert_eq!(&predict_c(handle, img.as_raw(), (64, 48, 192, 3)), want, "thread {t}");
                }
                if let Some(own) = own {
                    expect(patchcore_free(std::ptr::without_provenance_mut(own)), PATCHCORE_OK, "");
                }
            });
        }
    });
    patchcore_free(shared);
}

/// Freeing a handle while another thread predicts with it: that prediction completes or is
/// refused as stale, never crashes or reads freed memory.
#[test]
fn free_racing_a_prediction_is_safe() {
    let dir = TempDir::new("ffi-race");
    let handle = load(&dir);
    let token = handle.addr();
    let img = test_image(64, 64, 5200, false);
    let want = predict_rust(&img).0;
    let worker = std::thread::spawn(move || {
        let handle = std::ptr::without_provenance::<PatchcoreModel>(token);
        let mut outcomes = Vec::new();
        loop {
            let mut result = PatchcoreResult::default();
            // SAFETY: a 64x64 RGB buffer and a result to write.
            let status =
                unsafe { patchcore_predict(handle, img.as_raw().as_ptr(), 64, 64, 192, 3, &mut result, null_mut(), 0) };
            outcomes.push(status);
            match status {
                PATCHCORE_OK => assert_eq!(result, want),
                PATCHCORE_STALE_HANDLE => return outcomes,
                other => panic!("{other:?}: {}", last_error()),
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(30));
    expect(patchcore_free(handle), PATCHCORE_OK, "");
    let outcomes = worker.join().unwrap();
    assert_eq!(outcomes.last(), Some(&PATCHCORE_STALE_HANDLE));
}

#[test]
fn version_and_abi() {
    assert_eq!(patchcore_abi_version(), PATCHCORE_ABI_VERSION);
    // SAFETY: a static string.
    let version = unsafe { CStr::from_ptr(patchcore_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    // The structs the header declares have the layout a 64-bit C compiler gives them.
    if cfg!(target_pointer_width = "64") {
        assert_eq!(std::mem::size_of::<PatchcoreImage>(), 32);
        assert_eq!(std::mem::size_of::<PatchcoreResult>(), 12);
        assert_eq!(std::mem::size_of::<PatchcoreModelInfo>(), 80);
    }
}
