//! Max pooling (ResNet's stem).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Max pooling with implicit -inf padding, as torch.nn.MaxPool2d.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let [b, c, h, w] = x.dims4()?;
    if kernel == 0 || stride == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        return Err(Error::Backend(format!("max_pool: kernel {kernel} stride {stride} does not fit {h}x{w}")));
    }
    let ho = (h + 2 * padding - kernel) / stride + 1;
    let wo = (w + 2 * padding - kernel) / stride + 1;
    let mut out = vec![0.0f32; b * c * ho * wo];
    out.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(dst, src)| {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..kernel {
                    let Some(iy) = (oy * stride + ky).checked_sub(padding).filter(|&v| v < h) else { continue };
                    for kx in 0..kernel {
                        if let Some(ix) = (ox * stride + kx).checked_sub(padding).filter(|&v| v < w) {
                            m = m.max(src[iy * w + ix]);
                        }
                    }
                }
                dst[oy * wo + ox] = m;
            }
        }
    });
    Ok(Tensor::new(vec![b, c, ho, wo], out))
}
