//! The CUDA backend: cuDNN convolutions, our kernels (kernels/*.cu, compiled to PTX by build.rs)
//! for the embedding, the distance top-k, the coreset, the scoring and the map, all on one stream. Built only
//! with the `cuda` feature; the libraries are loaded at run time, and `probe` checks for each
//! before anything touches them (cudarc panics on a missing library).
//! Without the feature, `stub` stands in and explains how to get the real one.

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod dnn;
#[cfg(feature = "cuda")]
mod events;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(feature = "cuda")]
mod peak;
#[cfg(feature = "cuda")]
mod probe;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
pub use device::{CudaBackend, CudaBank, CudaConv, CudaTensor};
#[cfg(feature = "cuda")]
pub use events::Mark;
#[cfg(feature = "cuda")]
pub use peak::Properties;
#[cfg(feature = "cuda")]
pub use probe::probe;
#[cfg(not(feature = "cuda"))]
pub use stub::{probe, CudaBackend, Mark};

/// A GPU's peak for `patchcore profile` (`CudaBackend::peak`): FP32 from its properties (None
/// for a compute capability the table predates, or a driver that reports no clock), the best of
/// a few timed device-to-device copies (read + write), and the bandwidth its properties promise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuPeak {
    pub fp32_gflop_per_s: Option<f64>,
    pub copy_gb_per_s: f64,
    pub spec_gb_per_s: Option<f64>,
}

/// How often a CUDA backend has made the host wait for the GPU (a stream or event synchronisation)
/// and copied between host and device since it opened (`CudaBackend::transfer_counts`): the round
/// trips that bound a small batch's throughput.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    pub synchronizations: u64,
    pub copies_to_device: u64,
    pub copies_to_host: u64,
}
