//! patchcore: PatchCore industrial anomaly detection (Roth et al., "Towards Total Recall in
//! Industrial Anomaly Detection"). A pure-Rust CPU backend is the numerical reference; the
//! stages call only the [`backend::Backend`] trait.

pub mod backbone;
pub mod backend;
pub mod cli;
pub mod convert;
pub mod data;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod io;
pub mod patchcore;
pub mod render;
pub mod resample;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
