//! Argument checks shared by every backend, so that each refuses the same inputs with the same
//! words before any device work starts.

use super::ConvSpec;
use crate::error::{Error, Result};
use crate::tensor::dims;
use image::RgbImage;

/// The output shape of `spec` applied to `x`, after checking the channels and the residual.
pub fn conv_output(spec: &ConvSpec, x: &[usize], residual: Option<&[usize]>) -> Result<[usize; 4]> {
    let [b, c, h, w] = dims(x)?;
    if c != spec.in_channels {
        return Err(Error::invalid_backend_input(format!(
            "conv2d: input has {c} channels, the weights expect {}",
            spec.in_channels
        )));
    }
    if h == 0 || w == 0 {
        return Err(Error::invalid_backend_input(format!("conv2d: empty {h}x{w} input")));
    }
    let (ho, _) = spec.padding.resolve(h, spec.kernel, spec.stride);
    let (wo, _) = spec.padding.resolve(w, spec.kernel, spec.stride);
    let out = [b, spec.out_channels, ho, wo];
    if let Some(r) = residual {
        if r != out {
            return Err(Error::invalid_backend_input(format!("conv2d: residual {r:?} does not match output {out:?}")));
        }
    }
    Ok(out)
}

/// The output shape of a max pool (floor mode, as torch.nn.MaxPool2d).
pub fn pool_output(x: &[usize], kernel: usize, stride: usize, padding: usize) -> Result<[usize; 4]> {
    let [b, c, h, w] = dims(x)?;
    if kernel == 0 || stride == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel || 2 * padding > kernel {
        return Err(Error::invalid_backend_input(format!(
            "max_pool: kernel {kernel} stride {stride} padding {padding} does not fit {h}x{w}"
        )));
    }
    Ok([b, c, (h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1])
}

/// (query rows, dims) after checking the queries against a bank of `bank_rows` x `bank_dims`.
pub fn knn_args(queries: &[usize], bank_rows: usize, bank_dims: usize, k: usize) -> Result<[usize; 2]> {
    let [nq, d] = dims(queries)?;
    if d != bank_dims {
        return Err(Error::invalid_backend_input(format!("knn: queries have {d} dims, the bank {bank_dims}")));
    }
    if k == 0 || k > bank_rows {
        return Err(Error::invalid_backend_input(format!("knn: k = {k} must be in 1..={bank_rows} (the bank size)")));
    }
    Ok([nq, d])
}

/// (rows, dims) after checking that `n_select` rows can be chosen starting from `start`.
pub fn coreset_args(rows: &[usize], n_select: usize, start: usize) -> Result<[usize; 2]> {
    let [n, d] = dims(rows)?;
    if n_select > n || start >= n {
        return Err(Error::invalid_backend_input(format!(
            "coreset: cannot select {n_select} of {n} rows from start {start}"
        )));
    }
    Ok([n, d])
}

/// [B, h, w] of the patch-score grids, after checking the map's size and sigma.
pub fn map_args(scores: &[usize], out_h: usize, out_w: usize, sigma: f32) -> Result<[usize; 3]> {
    let [b, h, w] = dims(scores)
        .map_err(|_| Error::invalid_backend_input(format!("anomaly_map: expected [B, h, w] scores, got {scores:?}")))?;
    if sigma.is_nan() || sigma <= 0.0 || out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(Error::invalid_backend_input(format!(
            "anomaly_map: sigma {sigma}, {h}x{w} -> {out_h}x{out_w} is invalid"
        )));
    }
    Ok([b, h, w])
}

/// [B, h, w, d] of a batch's patch embedding rows, after checking them against the bank, the grid,
/// the neighbours and the map.
pub fn score_args(
    embedding: &[usize],
    bank_rows: usize,
    bank_dims: usize,
    [h, w]: [usize; 2],
    num_neighbors: usize,
    [out_h, out_w]: [usize; 2],
    sigma: f32,
) -> Result<[usize; 4]> {
    let [rows, d] = knn_args(embedding, bank_rows, bank_dims, num_neighbors)?;
    if h * w == 0 || rows == 0 || rows % (h * w) != 0 {
        return Err(Error::invalid_backend_input(format!("score: {rows} patch rows are not whole {h}x{w} grids")));
    }
    let [b, h, w] = map_args(&[rows / (h * w), h, w], out_h, out_w, sigma)?;
    Ok([b, h, w, d])
}

/// The feature maps' shapes [B, C, h, w] after checking they share a batch; the first sets the grid.
pub fn embed_args(layers: &[&[usize]]) -> Result<Vec<[usize; 4]>> {
    if layers.is_empty() {
        return Err(Error::invalid_backend_input("embed: no feature maps"));
    }
    let shapes = layers.iter().map(|s| dims::<4>(s)).collect::<Result<Vec<_>>>()?;
    if let Some(s) = shapes.iter().find(|s| s[0] != shapes[0][0]) {
        return Err(Error::invalid_backend_input(format!("embed: batch sizes differ ({} vs {})", s[0], shapes[0][0])));
    }
    Ok(shapes)
}

/// Refuses an empty batch, and an empty image (it has no pixels to resize from).
pub fn preprocess_args(images: &[RgbImage]) -> Result<()> {
    if images.is_empty() {
        return Err(Error::invalid_backend_input("preprocess: no images"));
    }
    match images.iter().position(|img| img.width() == 0 || img.height() == 0) {
        Some(i) => Err(Error::invalid_backend_input(format!(
            "preprocess: image {i} is {}x{} pixels",
            images[i].width(),
            images[i].height()
        ))),
        None => Ok(()),
    }
}
