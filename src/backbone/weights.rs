//! Where backbone weights come from, and BatchNorm folding. Every tensor is checked for
//! presence, shape, dtype and finiteness, and a failure names the tensor and the file.

use crate::backend::{ConvSpec, ConvWeights};
use crate::error::{Error, Result};
use crate::rng::{fnv1a32, hashed_uniform};
use crate::wide::vectorised;
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// A named store of tensors.
pub trait WeightSource {
    /// The tensor `name`, which must have exactly `shape`, as finite f32 values.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// The file the weights come from, for error messages.
    fn origin(&self) -> &Path;
}

/// A safetensors file, memory-mapped (nothing is read until a tensor is asked for), or the
/// bundled weights compiled into the binary.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Bytes,
    /// The header's length and what it says, parsed once: a model file's header names some forty
    /// tensors, and each tensor read used to parse all of it again.
    header: (usize, Metadata),
}

enum Bytes {
    Mapped(Mmap),
    #[cfg(feature = "bundled")]
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            #[cfg(feature = "bundled")]
            Bytes::Static(s) => s,
        }
    }
}

/// EfficientNet-Lite0's ImageNet weights up to block 10 (weights/NOTICE says where they come
/// from), compiled in so that `patchcore fit` works with nothing else (feature `bundled`).
#[cfg(feature = "bundled")]
static BUNDLED_EFFICIENTNET_LITE0: &[u8] = include_bytes!("../../weights/efficientnet_lite0.safetensors");

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed under us yields wrong numbers or an
        // error from the header checks, never unsoundness in this crate's own code.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(path, &map)?;
        Ok(SafetensorsFile { path: path.to_path_buf(), map: Bytes::Mapped(map), header })
    }

    /// The bundled EfficientNet-Lite0 weights.
    #[cfg(feature = "bundled")]
    pub fn bundled_efficientnet_lite0() -> Self {
        let path = PathBuf::from("<bundled weights/efficientnet_lite0.safetensors>");
        let header =
            parse(&path, BUNDLED_EFFICIENTNET_LITE0).expect("the bundled weights are a valid safetensors file");
        SafetensorsFile { path, map: Bytes::Static(BUNDLED_EFFICIENTNET_LITE0), header }
    }

    /// The tensor `name`: its dtype, shape and bytes, or `None` where the file has none of that name.
    fn view(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let (header_len, metadata) = &self.header;
        let info = metadata.info(name)?;
        // `parse` checked that every tensor's bytes lie in the file.
        let (start, end) = info.data_offsets;
        let data = &self.map[8 + header_len..];
        Some((info.dtype, &info.shape, &data[start..end]))
    }

    /// The U32 tensor `name` of `len` values, or `None` where the file has no tensor of that name.
    pub fn u32_values(&self, name: &str, len: usize) -> Result<Option<Vec<u32>>> {
        let Some((dtype, shape, bytes)) = self.view(name) else {
            return Ok(None);
        };
        if dtype != Dtype::U32 || shape != [len] {
            let found = format!("{dtype:?} of shape {shape:?}");
            return Err(Error::weights(&self.path, name, format!("{found}, expected U32 of shape [{len}]")));
        }
        Ok(Some(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }

    /// The JSON metadata map of the header, if any.
    pub fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.header.1.metadata().clone().unwrap_or_default()
    }
}

/// The header of the safetensors `bytes` (from `path`), checked: every tensor's bytes lie in the
/// file, one after another, as many as its dtype and shape say.
fn parse(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::model(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))
}

impl WeightSource for SafetensorsFile {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, found, bytes) = self.view(name).ok_or_else(|| {
            Error::weights(&self.path, name, "missing (weights of another architecture, or an incomplete file?)")
        })?;
        if found != shape {
            return Err(Error::weights(
                &self.path,
                name,
                format!("shape {found:?}, expected {shape:?} (weights of another architecture?)"),
            ));
        }
        let values: Vec<f32> = match dtype {
            Dtype::F32 => f32_values(bytes),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::weights(&self.path, name, format!("dtype {other:?}, expected F32, F16 or BF16")));
            }
        };
        if !all_finite(&values) {
            let i = values.iter().position(|v| !v.is_finite()).expect("a non-finite value");
            return Err(Error::weights(&self.path, name, format!("non-finite value {} at index {i}", values[i])));
        }
        Ok(values)
    }

    fn origin(&self) -> &Path {
        &self.path
    }
}

/// Little-endian f32 bytes as values, in a loop (not `collect`, whose code is not inlined) that
/// `vectorised` compiles wide: the bank's 15 MB at every load.
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    let mut values = vec![0f32; bytes.len() / 4];
    vectorised(
        #[inline(always)]
        || {
            for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        },
    );
    values
}

/// Whether every value is finite, tested without a branch a value so that it vectorises (the
/// bank's 3.9 M values are tested at every load).
fn all_finite(values: &[f32]) -> bool {
    vectorised(
        #[inline(always)]
        || values.iter().fold(true, |all, v| all & v.is_finite()),
    )
}

/// Deterministic pseudo-random weights, a pure function of each tensor's name and shape.
/// scripts/make_fixtures.py implements the same rule, so the PyTorch golden outputs can be
/// reproduced without shipping megabytes of weights; benches use them too.
pub struct HashedWeights;

impl WeightSource for HashedWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = fnv1a32(name.as_bytes());
        let n: usize = shape.iter().product();
        let u = |i: usize| hashed_uniform(key, i as u64);
        let values = match shape.len() {
            // Variance 2 / fan_in (He): uniform(-0.5, 0.5) has variance 1/12.
            4 | 2 => {
                let fan_in: usize = shape[1..].iter().product();
                let scale = (24.0 / fan_in as f64).sqrt();
                (0..n).map(|i| (u(i) * scale) as f32).collect()
            }
            _ if name.ends_with("running_var") => (0..n).map(|i| (1.0 + 0.4 * u(i)) as f32).collect(),
            _ if name.ends_with("running_mean") => (0..n).map(|i| (0.1 * u(i)) as f32).collect(),
            _ if name.ends_with(".weight") => (0..n).map(|i| (1.0 + 0.2 * u(i)) as f32).collect(),
            _ => (0..n).map(|i| (0.1 * u(i)) as f32).collect(),
        };
        Ok(values)
    }

    fn origin(&self) -> &Path {
        Path::new("<hashed test weights>")
    }
}

/// Loads convolution `conv` with BatchNorm `bn` (torchvision names) and folds the BN in:
/// w' = w * g / sqrt(var + eps), b' = beta - mean * g / sqrt(var + eps), in f64.
pub fn load_folded(source: &dyn WeightSource, conv: &str, bn: &str, spec: ConvSpec, eps: f64) -> Result<ConvWeights> {
    let shape = spec.weight_shape();
    let weight = source.tensor(&format!("{conv}.weight"), &shape)?;
    let c = [spec.out_channels];
    let gamma = source.tensor(&format!("{bn}.weight"), &c)?;
    let beta = source.tensor(&format!("{bn}.bias"), &c)?;
    let mean = source.tensor(&format!("{bn}.running_mean"), &c)?;
    let var = source.tensor(&format!("{bn}.running_var"), &c)?;
    if let Some(i) = var.iter().position(|&v| v as f64 + eps <= 0.0) {
        return Err(Error::weights(
            source.origin(),
            format!("{bn}.running_var"),
            format!("value {} at {i} is not positive", var[i]),
        ));
    }
    let per_out = weight.len() / spec.out_channels;
    let scale: Vec<f64> = gamma.iter().zip(&var).map(|(&g, &v)| g as f64 / (v as f64 + eps).sqrt()).collect();
    let weight = weight.iter().enumerate().map(|(i, &w)| (w as f64 * scale[i / per_out]) as f32).collect::<Vec<_>>();
    let bias = (0..spec.out_channels).map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32).collect();
    Ok(ConvWeights { spec, weight: weight.into(), bias })
}

/// Loads an already folded convolution (`{name}.weight`, `{name}.bias`), as a model file stores it.
pub fn load_prefolded(source: &dyn WeightSource, name: &str, spec: ConvSpec) -> Result<ConvWeights> {
    let weight = source.tensor(&format!("{name}.weight"), &spec.weight_shape())?;
    let bias = source.tensor(&format!("{name}.bias"), &[spec.out_channels])?;
    Ok(ConvWeights { spec, weight: weight.into(), bias })
}
