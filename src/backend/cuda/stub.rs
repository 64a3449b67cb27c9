//! The CUDA backend's place in a build without the `cuda` feature: a backend that cannot be
//! constructed, and a probe that says how to get the real one instead of failing deeper.

use super::{GpuPeak, TransferCounts};
use crate::backend::Precision;
use crate::backend::{Backend, BatchScores, ConvWeights, HostRows};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::RgbImage;
use std::convert::Infallible;

/// Why CUDA cannot be used from this build.
fn unavailable() -> Error {
    Error::cuda_unavailable("this build of patchcore has no CUDA backend: rebuild with `--features cuda`")
}

/// Probes for a usable GPU; without the feature there never is one.
pub fn probe(_ordinal: usize) -> Result<()> {
    Err(unavailable())
}

/// A point on a CUDA stream, for device time in the trace: none exists without the feature.
pub enum Mark {}

impl Mark {
    pub fn timing(&self, _end: &Mark) -> Result<crate::trace::DeviceTiming> {
        match *self {}
    }
}

/// Uninhabited: without the feature no value of it exists, so every method is unreachable and
/// the code that dispatches over backends needs no `cfg`.
pub enum CudaBackend {}

impl CudaBackend {
    pub fn new(_ordinal: usize, _precision: Precision) -> Result<Self> {
        Err(unavailable())
    }

    pub fn transfer_counts(&self) -> TransferCounts {
        match *self {}
    }

    pub fn peak(&self) -> Result<GpuPeak> {
        match *self {}
    }
}

impl HostRows for Infallible {
    fn host_rows(&self) -> &Tensor {
        match *self {}
    }
}

impl Backend for CudaBackend {
    type Tensor = Infallible;
    type Conv = Infallible;
    type Bank = Infallible;

    fn describe(&self) -> String {
        match *self {}
    }
    fn upload(&self, _: &Tensor) -> Result<Infallible> {
        match *self {}
    }
    fn preprocess(&self, _: &[RgbImage], _: &Preprocess) -> Result<Infallible> {
        match *self {}
    }
    fn download(&self, _: &Infallible) -> Result<Tensor> {
        match *self {}
    }
    fn shape<'a>(&self, _: &'a Infallible) -> &'a [usize] {
        match *self {}
    }
    fn download_rows(&self, _: &Infallible, _: &[u32]) -> Result<Tensor> {
        match *self {}
    }
    fn prepare_conv(&self, _: &ConvWeights) -> Result<Infallible> {
        match *self {}
    }
    fn conv2d(&self, _: &Infallible, _: &Infallible, _: Option<&Infallible>) -> Result<Infallible> {
        match *self {}
    }
    fn max_pool(&self, _: &Infallible, _: usize, _: usize, _: usize) -> Result<Infallible> {
        match *self {}
    }
    fn embed(&self, _: &[&Infallible]) -> Result<Infallible> {
        match *self {}
    }
    fn prepare_bank(&self, _: Tensor) -> Result<Infallible> {
        match *self {}
    }
    fn knn(&self, _: &Infallible, _: &Infallible, _: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        match *self {}
    }
    fn coreset(&self, _: &Infallible, _: usize, _: usize) -> Result<Vec<u32>> {
        match *self {}
    }
    fn score(
        &self,
        _: &Infallible,
        _: &Infallible,
        _: [usize; 2],
        _: usize,
        _: [usize; 2],
        _: f32,
    ) -> Result<BatchScores> {
        match *self {}
    }
    fn anomaly_map(&self, _: &Tensor, _: usize, _: usize, _: f32) -> Result<Tensor> {
        match *self {}
    }
}
