//! One error type for the whole crate. Every variant names the file (or option) at fault and
//! says what is wrong, so the CLI can print it as is and the C ABI can map it to a code.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system refused: missing file, permissions, disk full.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// An image that cannot be decoded or does not fit the others.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },

    /// A backbone weights file with a missing, misshaped, mistyped or non-finite tensor.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Weights { path: PathBuf, tensor: String, reason: String },

    /// A PyTorch checkpoint that `convert` cannot read.
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },

    /// A model (or weights) file that is truncated, of another version or inconsistent.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },

    /// A training or test folder that is empty or not shaped as expected.
    #[error("{}: {reason}", path.display())]
    Dataset { path: PathBuf, reason: String },

    /// An option outside its valid range.
    #[error("invalid {option}: {reason}")]
    InvalidOption { option: String, reason: String },

    /// CUDA cannot be used at all: a build without it, or a missing driver, library or device.
    /// The one backend error on which `--device auto` takes the CPU instead.
    #[error("CUDA is unavailable: {reason}")]
    CudaUnavailable { reason: String },

    /// Tensors or arguments a backend operation refuses (a shape, size or index out of range),
    /// before any device work: a caller's mistake or a model the backend cannot run.
    #[error("invalid input to the backend: {reason}")]
    InvalidBackendInput { reason: String },

    /// A GPU that is there but failed, on start or in use: a driver, allocation, kernel or
    /// cuDNN error.
    #[error("the GPU failed: {reason}")]
    DeviceFailure { reason: String },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn image(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Image { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
    pub fn weights(path: impl AsRef<Path>, tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Weights { path: path.as_ref().to_path_buf(), tensor: tensor.into(), reason: reason.into() }
    }
    pub fn checkpoint(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
    pub fn model(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Model { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
    pub fn dataset(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Dataset { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
    pub fn option(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidOption { option: option.into(), reason: reason.into() }
    }
    pub fn cuda_unavailable(reason: impl Into<String>) -> Self {
        Error::CudaUnavailable { reason: reason.into() }
    }
    pub fn invalid_backend_input(reason: impl Into<String>) -> Self {
        Error::InvalidBackendInput { reason: reason.into() }
    }
    pub fn device_failure(reason: impl Into<String>) -> Self {
        Error::DeviceFailure { reason: reason.into() }
    }
}
