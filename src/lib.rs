//! patchcore: PatchCore industrial anomaly detection (Roth et al., "Towards Total Recall in
//! Industrial Anomaly Detection"). A pure-Rust CPU backend is the numerical reference; the
//! stages call only the [`backend::Backend`] trait.

//!
//! Layers, lowest first (tests/layers.rs keeps them so): error, rng, resample, wide -> io,
//! tensor -> trace -> data -> backend, eval, convert -> backbone -> patchcore -> render -> cli,
//! ffi.
//!
//! Features: `cli` (default: the command line, with `convert`, `synth`, `render` and `bundled`
//! weights) and `cuda`. A host that only scores builds with `--no-default-features`.

pub mod backbone;
pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "convert")]
pub mod convert;
pub mod data;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod io;
pub mod patchcore;
#[cfg(feature = "render")]
pub mod render;
pub mod resample;
pub mod rng;
pub mod tensor;
pub mod trace;
mod wide;

pub use backend::AnyBackend;
pub use error::{Error, Result};
pub use patchcore::{FitOptions, PatchCore};
pub use tensor::Tensor;
