//! A backend that computes only shapes and counts convolution FLOPs: how benches turn a
//! forward time into GFLOP/s without a hand-kept table per architecture.

use super::{Backend, BatchScores, ConvWeights};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::RgbImage;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct FlopCounter {
    flops: AtomicU64,
}

impl FlopCounter {
    /// 2 * multiply-adds of every convolution run so far.
    pub fn flops(&self) -> u64 {
        self.flops.load(Ordering::Relaxed)
    }
}

fn unsupported(op: &str) -> Error {
    Error::invalid_backend_input(format!("FlopCounter counts convolutions only; `{op}` is not modelled"))
}

impl Backend for FlopCounter {
    /// Just the shape.
    type Tensor = Vec<usize>;
    type Conv = ConvWeights;
    type Bank = ();

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
        let s = &conv.spec;
        let &[b, _, h, w] = &x[..] else { return Err(unsupported("conv2d on a non-NCHW shape")) };
        let (ho, _) = s.padding.resolve(h, s.kernel, s.stride);
        let (wo, _) = s.padding.resolve(w, s.kernel, s.stride);
        let macs = b * s.out_channels * ho * wo * (s.in_channels / s.groups) * s.kernel * s.kernel;
        self.flops.fetch_add(2 * macs as u64, Ordering::Relaxed);
        Ok(vec![b, s.out_channels, ho, wo])
    }
    fn max_pool(&self, x: &Vec<usize>, kernel: usize, stride: usize, padding: usize) -> Result<Vec<usize>> {
        let out = |n: usize| (n + 2 * padding - kernel) / stride + 1;
        Ok(vec![x[0], x[1], out(x[2]), out(x[3])])
    }
    fn embed(&self, _: &[&Vec<usize>]) -> Result<Vec<usize>> {
        Err(unsupported("embed"))
    }
    fn prepare_bank(&self, _: &Tensor) -> Result<()> {
        Err(unsupported("prepare_bank"))
    }
    fn knn(&self, _: &Vec<usize>, _: &(), _: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        Err(unsupported("knn"))
    }
    fn coreset(&self, _: &Vec<usize>, _: usize, _: usize) -> Result<Vec<u32>> {
        Err(unsupported("coreset"))
    }
    fn score(&self, _: &Vec<usize>, _: &(), _: [usize; 2], _: usize, _: [usize; 2], _: f32) -> Result<BatchScores> {
        Err(unsupported("score"))
    }
    fn anomaly_map(&self, _: &Tensor, _: usize, _: usize, _: f32) -> Result<Tensor> {
        Err(unsupported("anomaly_map"))
    }
}
