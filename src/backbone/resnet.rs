//! ResNet-18 and Wide-ResNet-50-2 (torchvision layout, parameter names and strides), run to
//! layer3. layer4 and fc are never loaded or computed.

use super::{run_chain, run_stages, Conv, ConvLoader, Stage};
use crate::backend::{Activation, Backend, ConvSpec, Padding};
use crate::error::Result;

/// One residual block: 2 convolutions (basic) or 3 (bottleneck); the last takes the residual.
struct Block<B: Backend> {
    convs: Vec<Conv<B>>,
    downsample: Option<Conv<B>>,
}

pub struct ResNet<B: Backend> {
    stem: Conv<B>,
    /// layer1, layer2, layer3.
    layers: Vec<Vec<Block<B>>>,
}

/// The two torchvision families PatchCore uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// BasicBlock x [2, 2, 2] (ResNet-18).
    Basic,
    /// Bottleneck x [3, 4, 6], width 2x (Wide-ResNet-50-2: width_per_group = 128).
    WideBottleneck,
}

fn spec(in_channels: usize, out_channels: usize, kernel: usize, stride: usize, activation: Activation) -> ConvSpec {
    ConvSpec {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding: Padding::Symmetric(kernel / 2),
        groups: 1,
        activation,
    }
}

impl<B: Backend> ResNet<B> {
    pub fn load(depth: Depth, load: &mut ConvLoader<'_, B>) -> Result<Self> {
        let stem = load.conv("conv1", "bn1", spec(3, 64, 7, 2, Activation::Relu))?;
        let (repeats, expansion) = match depth {
            Depth::Basic => ([2, 2, 2], 1),
            Depth::WideBottleneck => ([3, 4, 6], 4),
        };
        let mut in_ch = 64;
        let mut layers = Vec::new();
        for (li, (&n, planes)) in repeats.iter().zip([64usize, 128, 256]).enumerate() {
            let mut blocks = Vec::new();
            for bi in 0..n {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{bi}", li + 1);
                let out_ch = planes * expansion;
                let downsample = if stride != 1 || in_ch != out_ch {
                    let name = format!("{p}.downsample.0");
                    Some(load.conv(
                        &name,
                        &format!("{p}.downsample.1"),
                        spec(in_ch, out_ch, 1, stride, Activation::None),
                    )?)
                } else {
                    None
                };
                let relu = Activation::Relu;
                let convs = match depth {
                    Depth::Basic => vec![
                        load.conv(&format!("{p}.conv1"), &format!("{p}.bn1"), spec(in_ch, planes, 3, stride, relu))?,
                        load.conv(&format!("{p}.conv2"), &format!("{p}.bn2"), spec(planes, planes, 3, 1, relu))?,
                    ],
                    Depth::WideBottleneck => {
                        let width = planes * 2;
                        vec![
                            load.conv(&format!("{p}.conv1"), &format!("{p}.bn1"), spec(in_ch, width, 1, 1, relu))?,
                            // torchvision (v1.5) strides the 3x3, not the first 1x1.
                            load.conv(&format!("{p}.conv2"), &format!("{p}.bn2"), spec(width, width, 3, stride, relu))?,
                            load.conv(&format!("{p}.conv3"), &format!("{p}.bn3"), spec(width, out_ch, 1, 1, relu))?,
                        ]
                    }
                };
                blocks.push(Block { convs, downsample });
                in_ch = out_ch;
            }
            layers.push(blocks);
        }
        Ok(ResNet { stem, layers })
    }

    /// The outputs of layer2 and layer3.
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> Result<Vec<B::Tensor>> {
        let pooled = self.stem.run_max_pooled(backend, x, [3, 2, 1])?;
        let layer1 = run_stages(backend, &self.layers[0], &pooled)?;
        let layer2 = run_stages(backend, &self.layers[1], &layer1)?;
        let layer3 = run_stages(backend, &self.layers[2], &layer2)?;
        Ok(vec![layer2, layer3])
    }
}

impl<B: Backend> Stage<B> for Block<B> {
    fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let identity = self.downsample.as_ref().map(|d| d.run(backend, x, None)).transpose()?;
        run_chain(backend, &self.convs, x, identity.as_ref().unwrap_or(x))
    }
}
