//! Data: image decoding, pre-processing and dataset folders.

pub mod dataset;
pub mod image;
#[cfg(feature = "synth")]
pub mod synth;
