//! The backend `--device` chose, as one type: the CLI, the C ABI and the tests hold an
//! `AnyBackend` instead of being generic, and its tensors remember which device they live on.
//! Without the `cuda` feature the CUDA variants are uninhabited and cost nothing.

use super::cpu::ClusterOrder;
use super::{Backend, BatchScores, ConvWeights, CpuBackend, CudaBackend, DeviceChoice, HostRows, Link, Precision};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::RgbImage;

// One lives per model, so the size of the CUDA variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    Cpu(CpuBackend),
    Cuda(CudaBackend),
}

pub enum AnyTensor {
    Cpu(<CpuBackend as Backend>::Tensor),
    Cuda(<CudaBackend as Backend>::Tensor),
}

pub enum AnyConv {
    Cpu(<CpuBackend as Backend>::Conv),
    Cuda(<CudaBackend as Backend>::Conv),
}

// One per model, like the backend.
#[allow(clippy::large_enum_variant)]
pub enum AnyBank {
    Cpu(<CpuBackend as Backend>::Bank),
    Cuda(<CudaBackend as Backend>::Bank),
}

impl HostRows for AnyBank {
    fn host_rows(&self) -> &Tensor {
        match self {
            AnyBank::Cpu(bank) => bank.host_rows(),
            AnyBank::Cuda(bank) => bank.host_rows(),
        }
    }
}

impl AnyBackend {
    /// The backend for `device`. `Auto` takes CUDA device 0, or the CPU when CUDA is
    /// unavailable, calling `notice` with the reason; a GPU that failed is an error there too
    /// (`cuda_or_fallback`). `Cuda(n)` fails with the reason.
    pub fn open(device: DeviceChoice, precision: Precision, notice: impl FnOnce(&Error)) -> Result<Self> {
        match device {
            DeviceChoice::Cpu => CpuBackend::new(precision).map(AnyBackend::Cpu),
            DeviceChoice::Cuda(n) => CudaBackend::new(n, precision).map(AnyBackend::Cuda),
            DeviceChoice::Auto => cuda_or_fallback(
                CudaBackend::new(0, precision).map(AnyBackend::Cuda),
                || CpuBackend::new(precision).map(AnyBackend::Cpu),
                notice,
            ),
        }
    }
}

/// `--device auto`'s rule: CUDA when it opened; `fallback` (after `notice` with the reason)
/// only when CUDA is unavailable. A GPU that is there but failed is returned as the error:
/// falling back then would hide a broken driver or device behind a silently slower run.
fn cuda_or_fallback<T>(
    cuda: Result<T>,
    fallback: impl FnOnce() -> Result<T>,
    notice: impl FnOnce(&Error),
) -> Result<T> {
    match cuda {
        Err(e @ Error::CudaUnavailable { .. }) => {
            notice(&e);
            fallback()
        }
        opened_or_failed => opened_or_failed,
    }
}

impl AnyTensor {
    /// A tensor knows its own shape, whichever backend asks.
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyTensor::Cpu(t) => &t.shape,
            AnyTensor::Cuda(t) => cuda_shape(t),
        }
    }
}

impl AnyTensor {
    fn as_cpu(&self) -> Option<&<CpuBackend as Backend>::Tensor> {
        match self {
            AnyTensor::Cpu(t) => Some(t),
            AnyTensor::Cuda(_) => None,
        }
    }

    fn as_cuda(&self) -> Option<&<CudaBackend as Backend>::Tensor> {
        match self {
            AnyTensor::Cuda(t) => Some(t),
            AnyTensor::Cpu(_) => None,
        }
    }
}

/// Every tensor of `layers` on one device (`on` picks it out), or the mixed-device error.
fn all<'a, T>(layers: &[&'a AnyTensor], on: impl Fn(&'a AnyTensor) -> Option<&'a T>) -> Result<Vec<&'a T>> {
    layers.iter().map(|l| on(l).ok_or_else(|| mixed("embed"))).collect()
}

/// A tensor, convolution or bank of one backend handed to another: a programming error, but
/// reported, never a panic.
fn mixed(what: &str) -> Error {
    Error::invalid_backend_input(format!("{what}: operands live on different devices"))
}

/// The links with their convolutions on one backend (`conv` picks its variant), or `None` where
/// one lives on another.
fn links_on<'a, C>(
    links: &[Link<'a, AnyConv>],
    conv: impl Fn(&'a AnyConv) -> Option<&'a C>,
) -> Option<Vec<Link<'a, C>>> {
    links.iter().map(|link| Some(Link { conv: conv(link.conv)?, span: link.span })).collect()
}

impl Backend for AnyBackend {
    type Tensor = AnyTensor;
    type Conv = AnyConv;
    type Bank = AnyBank;

    fn describe(&self) -> String {
        match self {
            AnyBackend::Cpu(b) => b.describe(),
            AnyBackend::Cuda(b) => b.describe(),
        }
    }

    fn upload(&self, tensor: &Tensor) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(b) => b.upload(tensor).map(AnyTensor::Cpu),
            AnyBackend::Cuda(b) => b.upload(tensor).map(AnyTensor::Cuda),
        }
    }

    fn preprocess(&self, images: &[RgbImage], preprocess: &Preprocess) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(b) => b.preprocess(images, preprocess).map(AnyTensor::Cpu),
            AnyBackend::Cuda(b) => b.preprocess(images, preprocess).map(AnyTensor::Cuda),
        }
    }

    fn download(&self, tensor: &AnyTensor) -> Result<Tensor> {
        match (self, tensor) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(t)) => b.download(t),
            (AnyBackend::Cuda(b), AnyTensor::Cuda(t)) => b.download(t),
            _ => Err(mixed("download")),
        }
    }

    fn shape<'a>(&self, tensor: &'a AnyTensor) -> &'a [usize] {
        tensor.shape()
    }

    fn download_rows(&self, tensor: &AnyTensor, rows: &[u32]) -> Result<Tensor> {
        match (self, tensor) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(t)) => b.download_rows(t, rows),
            (AnyBackend::Cuda(b), AnyTensor::Cuda(t)) => b.download_rows(t, rows),
            _ => Err(mixed("download_rows")),
        }
    }

    fn prepare_conv(&self, weights: &ConvWeights) -> Result<AnyConv> {
        match self {
            AnyBackend::Cpu(b) => b.prepare_conv(weights).map(AnyConv::Cpu),
            AnyBackend::Cuda(b) => b.prepare_conv(weights).map(AnyConv::Cuda),
        }
    }

    fn conv2d(&self, x: &AnyTensor, conv: &AnyConv, residual: Option<&AnyTensor>) -> Result<AnyTensor> {
        match (self, x, conv, residual) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(x), AnyConv::Cpu(c), None) => b.conv2d(x, c, None).map(AnyTensor::Cpu),
            (AnyBackend::Cpu(b), AnyTensor::Cpu(x), AnyConv::Cpu(c), Some(AnyTensor::Cpu(r))) => {
                b.conv2d(x, c, Some(r)).map(AnyTensor::Cpu)
            }
            (AnyBackend::Cuda(b), AnyTensor::Cuda(x), AnyConv::Cuda(c), None) => {
                b.conv2d(x, c, None).map(AnyTensor::Cuda)
            }
            (AnyBackend::Cuda(b), AnyTensor::Cuda(x), AnyConv::Cuda(c), Some(AnyTensor::Cuda(r))) => {
                b.conv2d(x, c, Some(r)).map(AnyTensor::Cuda)
            }
            _ => Err(mixed("conv2d")),
        }
    }

    fn conv2d_chain(
        &self,
        x: &AnyTensor,
        links: &[Link<'_, AnyConv>],
        residual: Option<&AnyTensor>,
    ) -> Result<AnyTensor> {
        let mixed = || mixed("conv2d_chain");
        match (self, x) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(x)) => {
                let links =
                    links_on(links, |c| if let AnyConv::Cpu(c) = c { Some(c) } else { None }).ok_or_else(mixed)?;
                let residual = match residual {
                    Some(AnyTensor::Cpu(r)) => Some(r),
                    None => None,
                    Some(_) => return Err(mixed()),
                };
                b.conv2d_chain(x, &links, residual).map(AnyTensor::Cpu)
            }
            (AnyBackend::Cuda(b), AnyTensor::Cuda(x)) => {
                let links =
                    links_on(links, |c| if let AnyConv::Cuda(c) = c { Some(c) } else { None }).ok_or_else(mixed)?;
                let residual = match residual {
                    Some(AnyTensor::Cuda(r)) => Some(r),
                    None => None,
                    Some(_) => return Err(mixed()),
                };
                b.conv2d_chain(x, &links, residual).map(AnyTensor::Cuda)
            }
            _ => Err(mixed()),
        }
    }

    fn max_pool(&self, x: &AnyTensor, kernel: usize, stride: usize, padding: usize) -> Result<AnyTensor> {
        match (self, x) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(x)) => b.max_pool(x, kernel, stride, padding).map(AnyTensor::Cpu),
            (AnyBackend::Cuda(b), AnyTensor::Cuda(x)) => b.max_pool(x, kernel, stride, padding).map(AnyTensor::Cuda),
            _ => Err(mixed("max_pool")),
        }
    }

    fn conv2d_max_pool(
        &self,
        x: &AnyTensor,
        conv: &AnyConv,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<AnyTensor> {
        match (self, x, conv) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(x), AnyConv::Cpu(c)) => {
                b.conv2d_max_pool(x, c, kernel, stride, padding).map(AnyTensor::Cpu)
            }
            (AnyBackend::Cuda(b), AnyTensor::Cuda(x), AnyConv::Cuda(c)) => {
                b.conv2d_max_pool(x, c, kernel, stride, padding).map(AnyTensor::Cuda)
            }
            _ => Err(mixed("conv2d_max_pool")),
        }
    }

    fn embed(&self, layers: &[&AnyTensor]) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(b) => b.embed(&all(layers, AnyTensor::as_cpu)?).map(AnyTensor::Cpu),
            AnyBackend::Cuda(b) => b.embed(&all(layers, AnyTensor::as_cuda)?).map(AnyTensor::Cuda),
        }
    }

    fn prepare_bank(&self, rows: Tensor) -> Result<AnyBank> {
        match self {
            AnyBackend::Cpu(b) => b.prepare_bank(rows).map(AnyBank::Cpu),
            AnyBackend::Cuda(b) => b.prepare_bank(rows).map(AnyBank::Cuda),
        }
    }

    fn prepare_clustered_bank(&self, rows: Tensor, order: ClusterOrder) -> Result<AnyBank> {
        match self {
            AnyBackend::Cpu(b) => b.prepare_clustered_bank(rows, order).map(AnyBank::Cpu),
            AnyBackend::Cuda(b) => b.prepare_clustered_bank(rows, order).map(AnyBank::Cuda),
        }
    }

    fn knn(&self, queries: &AnyTensor, bank: &AnyBank, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        match (self, queries, bank) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(q), AnyBank::Cpu(m)) => b.knn(q, m, k),
            (AnyBackend::Cuda(b), AnyTensor::Cuda(q), AnyBank::Cuda(m)) => b.knn(q, m, k),
            _ => Err(mixed("knn")),
        }
    }

    fn coreset(&self, rows: &AnyTensor, n_select: usize, start: usize) -> Result<Vec<u32>> {
        match (self, rows) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(r)) => b.coreset(r, n_select, start),
            (AnyBackend::Cuda(b), AnyTensor::Cuda(r)) => b.coreset(r, n_select, start),
            _ => Err(mixed("coreset")),
        }
    }

    fn score(
        &self,
        embedding: &AnyTensor,
        bank: &AnyBank,
        grid: [usize; 2],
        num_neighbors: usize,
        map_size: [usize; 2],
        sigma: f32,
    ) -> Result<BatchScores> {
        match (self, embedding, bank) {
            (AnyBackend::Cpu(b), AnyTensor::Cpu(e), AnyBank::Cpu(m)) => {
                b.score(e, m, grid, num_neighbors, map_size, sigma)
            }
            (AnyBackend::Cuda(b), AnyTensor::Cuda(e), AnyBank::Cuda(m)) => {
                b.score(e, m, grid, num_neighbors, map_size, sigma)
            }
            _ => Err(mixed("score")),
        }
    }

    fn anomaly_map(&self, scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Result<Tensor> {
        match self {
            AnyBackend::Cpu(b) => b.anomaly_map(scores, out_h, out_w, sigma),
            AnyBackend::Cuda(b) => b.anomaly_map(scores, out_h, out_w, sigma),
        }
    }

    fn synchronize(&self) -> Result<()> {
        match self {
            AnyBackend::Cpu(b) => b.synchronize(),
            AnyBackend::Cuda(b) => Backend::synchronize(b),
        }
    }

    fn mark(&self) -> Result<Option<super::Mark>> {
        match self {
            AnyBackend::Cpu(b) => b.mark(),
            AnyBackend::Cuda(b) => b.mark(),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_shape(t: &<CudaBackend as Backend>::Tensor) -> &[usize] {
    t.shape()
}

#[cfg(not(feature = "cuda"))]
fn cuda_shape(t: &<CudaBackend as Backend>::Tensor) -> &[usize] {
    match *t {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cuda_or_fallback` made of `cuda`, and the reason it noticed, if any.
    fn auto(cuda: Result<&'static str>) -> (Result<&'static str>, Option<String>) {
        let mut noticed = None;
        let chosen = cuda_or_fallback(cuda, || Ok("cpu"), |e| noticed = Some(e.to_string()));
        (chosen, noticed)
    }

    #[test]
    fn auto_takes_the_cpu_when_cuda_is_unavailable_and_says_why() {
        let (chosen, noticed) = auto(Err(Error::cuda_unavailable("libcudnn was not found")));
        assert_eq!(chosen.unwrap(), "cpu");
        assert_eq!(noticed.as_deref(), Some("CUDA is unavailable: libcudnn was not found"));
    }

    #[test]
    fn auto_returns_a_device_failure_instead_of_falling_back() {
        let (chosen, noticed) = auto(Err(Error::device_failure("CUDA allocation failed: out of memory")));
        assert!(matches!(chosen, Err(Error::DeviceFailure { .. })), "{chosen:?}");
        assert_eq!(noticed, None);
    }

    #[test]
    fn auto_takes_cuda_when_it_opened() {
        let (chosen, noticed) = auto(Ok("cuda"));
        assert_eq!(chosen.unwrap(), "cuda");
        assert_eq!(noticed, None);
    }
}
