//! The source of every FLOP and byte figure: one function per operation (what its trace span
//! carries, `crate::trace::Work`), and a backend that computes only shapes and counts
//! convolution FLOPs with them: how benches turn a forward time into GFLOP/s without a
//! hand-kept table per architecture.
//!
//! FLOPs count a multiply-add as 2. Bytes are an operation's compulsory traffic: each f32
//! operand read and each result written once (what a roofline calls its minimum), so GB/s
//! from them is a lower bound on the memory traffic achieved.

use super::{Backend, BatchScores, ConvSpec, ConvWeights, HostRows};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::trace::Work;
use image::RgbImage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const F32: u64 = 4;

fn elements(shape: &[usize]) -> u64 {
    shape.iter().product::<usize>() as u64
}

/// The output shape of `spec` on an NCHW `input`.
pub fn conv_output(spec: &ConvSpec, input: &[usize]) -> Result<[usize; 4]> {
    let &[b, _, h, w] = input else { return Err(unsupported("conv2d on a non-NCHW shape")) };
    let (ho, _) = spec.padding.resolve(h, spec.kernel, spec.stride);
    let (wo, _) = spec.padding.resolve(w, spec.kernel, spec.stride);
    Ok([b, spec.out_channels, ho, wo])
}

/// A convolution (bias, residual and activation fused) on an NCHW `input`: 2 * multiply-adds;
/// bytes: input, weights, bias and output once.
pub fn conv(spec: &ConvSpec, input: &[usize]) -> Work {
    let Ok(out) = conv_output(spec, input) else { return Work::default() };
    let macs = elements(&out) * (spec.in_channels / spec.groups * spec.kernel * spec.kernel) as u64;
    let weights = elements(&spec.weight_shape()) + spec.out_channels as u64;
    Work::new(2 * macs, F32 * (elements(input) + weights + elements(&out)), input.to_vec())
}

/// Max pooling: one comparison per window tap of each output.
pub fn max_pool(input: &[usize], kernel: usize, stride: usize, padding: usize) -> Work {
    let out = |n: usize| (n + 2 * padding).saturating_sub(kernel) / stride + 1;
    let outputs = match input {
        &[b, c, h, w] => (b * c * out(h) * out(w)) as u64,
        _ => 0,
    };
    Work::new(outputs * (kernel * kernel) as u64, F32 * (elements(input) + outputs), input.to_vec())
}

/// A convolution with the max pooling of its output fused: the convolution's FLOPs, as the
/// FLOP counter counts them (the pooling's comparisons are about 1% of them in ResNet's stem);
/// bytes: the convolution's input, weights and bias, and the pooled output (the convolution's
/// output is not compulsory traffic).
pub fn conv_max_pool(spec: &ConvSpec, input: &[usize], kernel: usize, stride: usize, padding: usize) -> Work {
    let Ok(out) = conv_output(spec, input) else { return Work::default() };
    let (conv, pool) = (conv(spec, input), max_pool(&out, kernel, stride, padding));
    let between = F32 * elements(&out);
    Work::new(conv.flops, conv.bytes + pool.bytes - 2 * between, input.to_vec())
}

/// PatchCore's embedding of NCHW maps onto the first one's grid: a 3x3 average (9 adds and a
/// scale per value) on each map, a bilinear resize of the smaller ones (4 taps: 8 FLOPs per
/// output value); bytes: the maps in, the rows out.
pub fn embed(layers: &[&[usize]]) -> Work {
    let Some(&[b, _, h, w]) = layers.first().map(|s| &s[..]) else { return Work::default() };
    let channels: usize = layers.iter().map(|s| s.get(1).copied().unwrap_or(0)).sum();
    let pooled: u64 = layers.iter().map(|s| 10 * elements(s)).sum();
    let resized: u64 = layers[1..].iter().map(|s| 8 * (b * s.get(1).copied().unwrap_or(0) * h * w) as u64).sum();
    let input: u64 = layers.iter().map(|s| elements(s)).sum();
    let rows = b * h * w;
    Work::new(pooled + resized, F32 * (input + (rows * channels) as u64), vec![rows, channels])
}

/// k nearest neighbours of `queries` rows among `bank` rows of `dims`: the distance matrix is
/// a matrix product, 2 * queries * bank * dims; bytes: both operands and the k results (a
/// distance and an index each) once. Shape: queries x bank x dims.
pub fn knn(queries: usize, bank: usize, dims: usize, k: usize) -> Work {
    let flops = 2 * (queries * bank * dims) as u64;
    let bytes = F32 * ((queries * dims + bank * dims) as u64 + 2 * (queries * k) as u64);
    Work::new(flops, bytes, vec![queries, bank, dims]).arg("k", k as u64)
}

/// Greedy k-center selection of `selections` rows of `rows x dims`: each selection updates
/// every row's distance to the new center (a dot product, 2 * dims FLOPs per row) and streams
/// the rows once.
pub fn coreset(rows: usize, dims: usize, selections: usize) -> Work {
    let per_selection = (rows * dims) as u64;
    Work::new(2 * per_selection * selections as u64, F32 * per_selection * selections as u64, vec![rows, dims])
        .arg("selections", selections as u64)
}

/// Paper Eq. 7 for `images` top patches: `k` distances of `dims` each (3 FLOPs per term:
/// x^2, xy, y^2) and a softmax; bytes: the query and its k support rows.
pub fn eq7(images: usize, k: usize, dims: usize) -> Work {
    let flops = (images * k * (6 * dims + 4)) as u64;
    Work::new(flops, F32 * (images * (k + 1) * dims) as u64, vec![images, k, dims]).arg("k", k as u64)
}

/// Score grids `[B, h, w]` upsampled to `out x out` and blurred by a separable Gaussian of
/// 2*int(4*sigma+0.5)+1 taps (a multiply-add per tap and pass); bytes: grids in, maps out.
pub fn anomaly_map(grids: &[usize], out_h: usize, out_w: usize, sigma: f32) -> Work {
    let taps = 2 * (4.0 * sigma + 0.5) as u64 + 1;
    let maps = (grids.first().copied().unwrap_or(0) * out_h * out_w) as u64;
    Work::new(2 * 2 * taps * maps, F32 * (elements(grids) + maps), grids.to_vec())
}

/// 8-bit images made into the network's input `[N, 3, S, S]`: bytes in and out. FLOPs, per
/// channel: a multiply-add per filter tap of the antialiased resize (across each input row to
/// the new width, then down each new column), 2 for normalising each resized value; the center
/// crop only moves values. The taps depend on each image's size (`Preprocess::resize_normalize`).
pub fn preprocess(images: &[RgbImage], preprocess: &Preprocess) -> Work {
    let side = preprocess.input_size();
    let s = preprocess.resize;
    let taps = |input: u32, output: usize| -> u64 {
        crate::resample::antialias_spans(input as usize, output).iter().map(|span| span.weights.len() as u64).sum()
    };
    let per_channel = |i: &RgbImage| u64::from(i.height()) * taps(i.width(), s) + (s as u64) * taps(i.height(), s);
    let flops = images.iter().map(|i| 3 * 2 * (per_channel(i) + (s * s) as u64)).sum();
    let pixels: u64 = images.iter().map(|i| 3 * u64::from(i.width()) * u64::from(i.height())).sum();
    let out = [images.len(), 3, side, side];
    Work::new(flops, pixels + F32 * elements(&out), out.to_vec())
}

/// A sparse random projection of `rows x in_dims` with `nonzeros` entries to `out_dims`: an add
/// per nonzero and a scale per output value, for each row; bytes: rows in and out.
pub fn projection(rows: usize, in_dims: usize, nonzeros: usize, out_dims: usize) -> Work {
    let flops = (rows * (nonzeros + out_dims)) as u64;
    Work::new(flops, F32 * (rows * (in_dims + out_dims)) as u64, vec![rows, in_dims, out_dims])
}

/// A copy between host and device (or decoded pixels, `bytes` of them): bytes only.
pub fn transfer(shape: &[usize], bytes_per_value: u64) -> Work {
    Work::new(0, bytes_per_value * elements(shape), shape.to_vec())
}

#[derive(Default)]
pub struct FlopCounter {
    flops: AtomicU64,
    per_conv: Mutex<Vec<u64>>,
}

impl FlopCounter {
    /// 2 * multiply-adds of every convolution run so far.
    pub fn flops(&self) -> u64 {
        self.flops.load(Ordering::Relaxed)
    }

    /// The FLOPs of each convolution run so far, in the order they ran.
    pub fn per_conv(&self) -> Vec<u64> {
        self.per_conv.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn unsupported(op: &str) -> Error {
    Error::invalid_backend_input(format!("FlopCounter counts convolutions only; `{op}` is not modelled"))
}

/// The flop counter's bank is its rows.
impl HostRows for Tensor {
    fn host_rows(&self) -> &Tensor {
        self
    }
}

impl Backend for FlopCounter {
    /// Just the shape.
    type Tensor = Vec<usize>;
    type Conv = ConvWeights;
    type Bank = Tensor;

    fn describe(&self) -> String {
        "flop counter".into()
    }
    fn upload(&self, tensor: &Tensor) -> Result<Vec<usize>> {
        Ok(tensor.shape.clone())
    }
    fn preprocess(&self, images: &[RgbImage], preprocess: &Preprocess) -> Result<Vec<usize>> {
        let side = preprocess.input_size();
        Ok(vec![images.len(), 3, side, side])
    }
    fn download(&self, _: &Vec<usize>) -> Result<Tensor> {
        Err(unsupported("download"))
    }
    fn shape<'a>(&self, tensor: &'a Vec<usize>) -> &'a [usize] {
        tensor
    }
    fn download_rows(&self, _: &Vec<usize>, _: &[u32]) -> Result<Tensor> {
        Err(unsupported("download"))
    }
    fn prepare_conv(&self, weights: &ConvWeights) -> Result<ConvWeights> {
        Ok(weights.clone())
    }
    fn conv2d(&self, x: &Vec<usize>, conv: &ConvWeights, _: Option<&Vec<usize>>) -> Result<Vec<usize>> {
        let out = conv_output(&conv.spec, x)?;
        let flops = self::conv(&conv.spec, x).flops;
        self.flops.fetch_add(flops, Ordering::Relaxed);
        self.per_conv.lock().unwrap_or_else(|e| e.into_inner()).push(flops);
        Ok(out.to_vec())
    }
    fn max_pool(&self, x: &Vec<usize>, kernel: usize, stride: usize, padding: usize) -> Result<Vec<usize>> {
        let out = |n: usize| (n + 2 * padding - kernel) / stride + 1;
        Ok(vec![x[0], x[1], out(x[2]), out(x[3])])
    }
    fn embed(&self, _: &[&Vec<usize>]) -> Result<Vec<usize>> {
        Err(unsupported("embed"))
    }
    /// Nothing to prepare: the counter's bank is its rows, so that a model file loads on it.
    fn prepare_bank(&self, rows: Tensor) -> Result<Tensor> {
        Ok(rows)
    }
    fn knn(&self, _: &Vec<usize>, _: &Tensor, _: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        Err(unsupported("knn"))
    }
    fn coreset(&self, _: &Vec<usize>, _: usize, _: usize) -> Result<Vec<u32>> {
        Err(unsupported("coreset"))
    }
    fn score(&self, _: &Vec<usize>, _: &Tensor, _: [usize; 2], _: usize, _: [usize; 2], _: f32) -> Result<BatchScores> {
        Err(unsupported("score"))
    }
    fn anomaly_map(&self, _: &Tensor, _: usize, _: usize, _: f32) -> Result<Tensor> {
        Err(unsupported("anomaly_map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_counts_each_resize_tap_and_the_normalisation() {
        // 64 -> 32 halves: the triangle filter spans 4 input pixels (start 2i-1), clipped to 3
        // at either edge, so each pass has 30 x 4 + 2 x 3 = 126 taps per line; 64 input rows
        // across, then 32 new columns down, and 32 x 32 values normalised, for 3 channels.
        let p = Preprocess::new(32, None, [0.0; 3], [1.0; 3]).unwrap();
        let image = RgbImage::new(64, 64);
        let work = preprocess(&[image.clone(), image], &p);
        assert_eq!(work.flops, 2 * 3 * 2 * (64 * 126 + 32 * 126 + 32 * 32));
        assert_eq!(work.bytes, 2 * (3 * 64 * 64 + 4 * 3 * 32 * 32));
    }
}
