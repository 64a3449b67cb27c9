//! `--precision`: the arithmetic a backend may use. `F32` is the default everywhere; the others
//! trade accuracy for speed on the hardware that has them, and are opt-in.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// The GPU: f32 FMA (cuDNN without tensor-core math, the SIMT distance kernel), matching the
    /// CPU backend to 1e-4. The CPU: f32 (tile products with AVX-512F), or where it has AMX,
    /// convolutions of split bf16 products within a few f32 roundings of f32's (`cpu::conv_amx`).
    #[default]
    F32,
    /// GPU only: TF32 tensor cores (10-bit mantissa, f32 accumulation) for convolutions and
    /// distances.
    Tf32,
    /// GPU only: TF32 convolutions; the memory bank, queries and coreset rows in f16, accumulated
    /// in f32.
    F16,
    /// CPU only, where it has AMX-BF16 or AVX512-BF16: the convolutions' products in bf16 (8-bit mantissa, f32
    /// accumulation); the kNN stays exact.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::option("--precision", format!("`{s}`: expected f32, tf32, f16 or bf16"))),
        }
    }
}
