//! EfficientNet-Lite0 (efficientnet_pytorch parameter names, TensorFlow "same" padding,
//! ReLU6, no squeeze-excitation). PatchCore runs it to block 10: blocks 11..15, the head and
//! the classifier are only loaded by [`classify`], which exists to check the weights.

use super::weights::WeightSource;
use super::{run_stages, Architecture, Conv, ConvLoader, ConvOrigin, Stage};
use crate::backend::{Activation, Backend, ConvSpec, ConvWeights, Padding};
use crate::error::Result;
use crate::tensor::Tensor;

/// (kernel, stride, expand ratio, output channels, repeats) of each stage; the stride applies
/// to a stage's first block only.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
];
/// The blocks whose outputs PatchCore takes: 40 channels at stride 8, 112 at stride 16.
const TAPS: [usize; 2] = [4, 10];
/// The sum of the stages' repeats.
const ALL_BLOCKS: usize = 16;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;
const CLASSES: usize = 1000;

fn spec(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    activation: Activation,
) -> ConvSpec {
    ConvSpec { in_channels, out_channels, kernel, stride, padding: Padding::TfSame, groups, activation }
}

/// One inverted-residual (MBConv) block: 1x1 expand, depthwise kxk, 1x1 project.
struct MbConv<B: Backend> {
    /// Absent in the first block, whose expand ratio is 1.
    expand: Option<Conv<B>>,
    depthwise: Conv<B>,
    /// Takes the block input as residual when `residual` is set.
    project: Conv<B>,
    residual: bool,
}

/// The stem and the loaded blocks, BatchNorm folded into every convolution.
pub struct EfficientNet<B: Backend> {
    stem: Conv<B>,
    blocks: Vec<MbConv<B>>,
}

impl<B: Backend> EfficientNet<B> {
    /// Loads the stem and blocks 0..=10 (what PatchCore runs), or all 16 blocks if `all`.
    pub fn load(load: &mut ConvLoader<'_, B>, all: bool) -> Result<Self> {
        let relu6 = Activation::Relu6;
        let stem = load.conv("_conv_stem", "_bn0", spec(3, STEM_CHANNELS, 3, 2, 1, relu6))?;
        let shapes =
            STAGES.iter().flat_map(|&(k, s, e, out, n)| (0..n).map(move |i| (k, if i == 0 { s } else { 1 }, e, out)));
        let n_blocks = if all { ALL_BLOCKS } else { TAPS[1] + 1 };
        let mut blocks = Vec::with_capacity(n_blocks);
        let mut in_ch = STEM_CHANNELS;
        for (i, (kernel, stride, expand, out_ch)) in shapes.take(n_blocks).enumerate() {
            let p = format!("_blocks.{i}");
            let mid = in_ch * expand;
            // efficientnet_pytorch keeps the depthwise BN `_bn1` and the project BN `_bn2`
            // even in the block without an expansion (and so without `_bn0`).
            let expand = if expand == 1 {
                None
            } else {
                Some(load.conv(&format!("{p}._expand_conv"), &format!("{p}._bn0"), spec(in_ch, mid, 1, 1, 1, relu6))?)
            };
            let dw = spec(mid, mid, kernel, stride, mid, relu6);
            let depthwise = load.conv(&format!("{p}._depthwise_conv"), &format!("{p}._bn1"), dw)?;
            let proj = spec(mid, out_ch, 1, 1, 1, Activation::None);
            let project = load.conv(&format!("{p}._project_conv"), &format!("{p}._bn2"), proj)?;
            blocks.push(MbConv { expand, depthwise, project, residual: stride == 1 && in_ch == out_ch });
            in_ch = out_ch;
        }
        Ok(EfficientNet { stem, blocks })
    }

    /// The outputs of blocks 4 and 10; later blocks, even if loaded, are not run.
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> Result<Vec<B::Tensor>> {
        let stem = self.stem.run(backend, x, None)?;
        let shallow = run_stages(backend, &self.blocks[..=TAPS[0]], &stem)?;
        let deep = run_stages(backend, &self.blocks[TAPS[0] + 1..=TAPS[1]], &shallow)?;
        Ok(vec![shallow, deep])
    }
}

impl<B: Backend> Stage<B> for MbConv<B> {
    fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let expanded = self.expand.as_ref().map(|c| c.run(backend, x, None)).transpose()?;
        let h = self.depthwise.run(backend, expanded.as_ref().unwrap_or(x), None)?;
        self.project.run(backend, &h, self.residual.then_some(x))
    }
}

/// The full ImageNet classifier on torchvision-style (unfolded BN) EfficientNet-Lite0 weights:
/// all 16 blocks, head 1x1 conv -> 1280 + BN + ReLU6, global average pool, fc. Returns
/// `[B, 1000]` logits. Only used to check weights and architecture against known labels.
pub fn classify<B: Backend>(backend: &B, source: &dyn WeightSource, x: &B::Tensor) -> Result<Tensor> {
    let mut load = ConvLoader::new(backend, ConvOrigin::Torchvision(source), Architecture::EfficientnetLite0);
    let net = EfficientNet::load(&mut load, true)?;
    let head =
        load.conv("_conv_head", "_bn1", spec(STAGES[STAGES.len() - 1].3, HEAD_CHANNELS, 1, 1, 1, Activation::Relu6))?;

    let stem = net.stem.run(backend, x, None)?;
    let h = run_stages(backend, &net.blocks, &stem)?;
    let features = backend.download(&head.run(backend, &h, None)?)?;
    let [b, c, fh, fw] = features.dims4()?;
    let pooled = features.data.chunks(fh * fw).map(|plane| plane.iter().sum::<f32>() / plane.len() as f32).collect();
    // The fully connected layer is a 1x1 convolution on the pooled [B, 1280, 1, 1] map.
    let fc = ConvWeights {
        spec: spec(c, CLASSES, 1, 1, 1, Activation::None),
        weight: source.tensor("_fc.weight", &[CLASSES, c])?.into(),
        bias: source.tensor("_fc.bias", &[CLASSES])?,
    };
    let pooled = backend.upload(&Tensor::new(vec![b, c, 1, 1], pooled))?;
    let logits = backend.download(&backend.conv2d(&pooled, &backend.prepare_conv(&fc)?, None)?)?;
    Ok(Tensor::new(vec![b, CLASSES], logits.data))
}
