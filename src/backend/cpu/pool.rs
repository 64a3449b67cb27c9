//! Max pooling (ResNet's stem).

use crate::backend::checks::pool_output;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Max pooling with implicit -inf padding, as torch.nn.MaxPool2d.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let [b, c, ho, wo] = pool_output(&x.shape, kernel, stride, padding)?;
    let [_, _, h, w] = x.dims4()?;
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
