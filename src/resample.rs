//! Resampling weights, shared by the embedding, the anomaly map, pre-processing and display.
//! Each follows one PyTorch function exactly, named in its doc.

/// One output coordinate of a 2-tap interpolation: `value = w0 * in[i0] + w1 * in[i1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Taps2 {
    pub i0: usize,
    pub i1: usize,
    pub w1: f32,
}

/// Bilinear with align_corners = false (F.interpolate mode="bilinear"): the source coordinate
/// is (dst + 0.5) * in/out - 0.5 clamped at 0, the upper neighbour clamped at in - 1.
/// Computed in f32 as PyTorch does, so the weights match bit for bit.
pub fn bilinear_taps(input: usize, output: usize) -> Vec<Taps2> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            Taps2 { i0, i1, w1: src - i0 as f32 }
        })
        .collect()
}

/// Legacy "nearest" (F.interpolate mode="nearest"): src = floor(dst * in/out), in f32.
pub fn nearest_index(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output).map(|dst| ((dst as f32 * scale).floor() as usize).min(input - 1)).collect()
}

/// Resizes one row-major plane bilinearly (align_corners = false).
pub fn resize_bilinear(plane: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut out = vec![0.0; out_h * out_w];
    Bilinear::new(h, w, out_h, out_w).resize(plane, &mut out);
    out
}

/// A bilinear resize of h x w planes to out_h x out_w (align_corners = false), its taps computed
/// once for every plane it resizes.
pub struct Bilinear {
    w: usize,
    ty: Vec<Taps2>,
    tx: Vec<Taps2>,
}

impl Bilinear {
    pub fn new(h: usize, w: usize, out_h: usize, out_w: usize) -> Bilinear {
        Bilinear { w, ty: bilinear_taps(h, out_h), tx: bilinear_taps(w, out_w) }
    }

    /// `out` (out_h x out_w) = `plane` (h x w) resized: each source row's horizontal pass
    /// (PyTorch's `top` and `bottom`) once per run of output rows that read it, then the vertical
    /// blend over whole rows, which vectorises (a 16 x 16 plane to 32 x 32 took 3 us, every
    /// output interpolating both of its rows).
    /// Inlined, so that a caller compiled for wider vectors (`cpu::wide`) vectorises it too.
    #[inline(always)]
    pub fn resize(&self, plane: &[f32], out: &mut [f32]) {
        let (w, out_w) = (self.w, self.tx.len());
        let horizontal = |src: usize, line: &mut [f32]| {
            let r = &plane[src * w..][..w];
            for (x, o) in self.tx.iter().zip(line) {
                // The same expression order as PyTorch's kernel, so results match to the last bit.
                *o = (1.0 - x.w1) * r[x.i0] + x.w1 * r[x.i1];
            }
        };
        // The source rows whose horizontal passes `lines` holds (usize::MAX: none yet).
        let (mut held, mut lines) = ([usize::MAX; 2], vec![0.0f32; 2 * out_w]);
        for (y, out_row) in self.ty.iter().zip(out.chunks_exact_mut(out_w)) {
            if held[0] != y.i0 {
                if held[1] == y.i0 {
                    let (top, bottom) = lines.split_at_mut(out_w);
                    top.copy_from_slice(bottom);
                } else {
                    horizontal(y.i0, &mut lines[..out_w]);
                }
                held[0] = y.i0;
            }
            if held[1] != y.i1 {
                horizontal(y.i1, &mut lines[out_w..]);
                held[1] = y.i1;
            }
            let (top, bottom) = lines.split_at(out_w);
            for ((o, &t), &b) in out_row.iter_mut().zip(top).zip(bottom) {
                *o = (1.0 - y.w1) * t + y.w1 * b;
            }
        }
    }
}

/// The source span and normalised weights of one output pixel of an antialiased resize.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub start: usize,
    pub weights: Vec<f32>,
}

/// Antialiased bilinear (F.interpolate(..., mode="bilinear", antialias=True), which
/// torchvision v2's Resize uses): a triangle filter stretched by the scale when shrinking,
/// as in PIL. Used for pre-processing, where shrinking a large photograph without it aliases.
pub fn antialias_spans(input: usize, output: usize) -> Vec<Span> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    let inv = 1.0 / support;
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // Truncation toward zero, as the C++ `(int64_t)` cast.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let raw: Vec<f64> =
                (start..end).map(|j| (1.0 - ((j as f64 - center + 0.5) * inv).abs()).max(0.0)).collect();
            let total: f64 = raw.iter().sum();
            Span { start, weights: raw.iter().map(|w| (w / total) as f32).collect() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_identity_and_halving() {
        let same = bilinear_taps(5, 5);
        assert!(same.iter().enumerate().all(|(i, t)| t.i0 == i && t.w1 == 0.0));
        // Doubling: dst 1 reads src 0.25 -> 0.75 * in[0] + 0.25 * in[1].
        let up = bilinear_taps(4, 8);
        assert_eq!(up[0], Taps2 { i0: 0, i1: 1, w1: 0.0 });
        assert_eq!(up[1], Taps2 { i0: 0, i1: 1, w1: 0.25 });
        assert_eq!(up[7], Taps2 { i0: 3, i1: 3, w1: 0.25 });
    }

    /// Each output interpolated on its own, in PyTorch's expression order: the row-reusing
    /// resize gives its bits, enlarging and shrinking, on rows reused by several outputs or none.
    #[test]
    fn resize_gives_the_bits_of_each_pixel_interpolated_alone() {
        for (h, w, out_h, out_w) in [(16, 16, 32, 32), (5, 7, 13, 4), (9, 3, 2, 11), (1, 4, 3, 1), (6, 6, 6, 6)] {
            // Irregular values (no two neighbours in step), without `rng`, a module of this layer.
            let plane: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 1009) as f32 / 37.0 - 13.0).collect();
            let (ty, tx) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
            let mut want = Vec::new();
            for y in &ty {
                for x in &tx {
                    let at = |r: usize, c: usize| plane[r * w + c];
                    let top = (1.0 - x.w1) * at(y.i0, x.i0) + x.w1 * at(y.i0, x.i1);
                    let bottom = (1.0 - x.w1) * at(y.i1, x.i0) + x.w1 * at(y.i1, x.i1);
                    want.push((1.0 - y.w1) * top + y.w1 * bottom);
                }
            }
            let got = resize_bilinear(&plane, h, w, out_h, out_w);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h}x{w} -> {out_h}x{out_w}");
        }
    }

    #[test]
    fn nearest_repeats() {
        assert_eq!(nearest_index(2, 6), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(nearest_index(3, 2), vec![0, 1]);
    }

    #[test]
    fn antialias_weights_sum_to_one_and_cover_the_scale() {
        // 100 -> 7: the triangle spans +-14.3 source pixels, clipped at the borders.
        let spans = antialias_spans(100, 7);
        for (i, span) in spans.iter().enumerate() {
            let total: f32 = span.weights.iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            let expected = if i == 0 || i == 6 { 21..=22 } else { 28..=30 };
            assert!(expected.contains(&span.weights.len()), "span {i}: {} taps", span.weights.len());
        }
    }
}
