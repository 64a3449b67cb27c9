//! The CUDA backend's place. This build has no CUDA support; asking for it explains how to
//! get it instead of failing somewhere deeper.

use crate::error::{Error, Result};

/// Why CUDA cannot be used from this build.
pub fn unavailable() -> Error {
    Error::Backend("this build of patchcore has no CUDA backend: rebuild with `--features cuda`".into())
}

/// Probes for a usable GPU; without the feature there never is one.
pub fn probe(_ordinal: usize) -> Result<()> {
    Err(unavailable())
}
