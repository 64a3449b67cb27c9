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
    // The window of output o along an axis of `size`: [o * stride - padding, + kernel) clipped.
    let window = |o: usize, size: usize| {
        let lo = (o * stride).saturating_sub(padding).min(size);
        (lo, (o * stride + kernel).saturating_sub(padding).clamp(lo, size))
    };
    // Separable: the window's rows reduced column by column (contiguous, vectorised), then each
    // output's columns of that. f32::max skips NaN, as a per-tap loop would.
    out.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(dst, src)| {
        let mut columns = vec![f32::NEG_INFINITY; w];
        for (oy, row) in dst.chunks_exact_mut(wo).enumerate() {
            let (y0, y1) = window(oy, h);
            columns.fill(f32::NEG_INFINITY);
            for line in src[y0 * w..y1 * w].chunks_exact(w) {
                for (m, &v) in columns.iter_mut().zip(line) {
                    *m = m.max(v);
                }
            }
            for (ox, v) in row.iter_mut().enumerate() {
                let (x0, x1) = window(ox, w);
                *v = columns[x0..x1].iter().fold(f32::NEG_INFINITY, |m, &p| m.max(p));
            }
        }
    });
    Ok(Tensor::new(vec![b, c, ho, wo], out))
}
