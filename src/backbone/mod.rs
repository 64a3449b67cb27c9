//! The feature extractors PatchCore runs to its chosen layers, built on the [`Backend`].

pub mod efficientnet;
mod resnet;
pub mod weights;

use crate::backend::{Backend, ConvSpec, ConvWeights};
use crate::data::image::{IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};
use efficientnet::EfficientNet;
use resnet::{Depth, ResNet};
use weights::WeightSource;

/// The backbones this engine knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    #[value(name = "resnet18")]
    #[serde(rename = "resnet18")]
    Resnet18,
    #[value(name = "wide_resnet50_2")]
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    /// The bundled backbone (weights/efficientnet_lite0.safetensors).
    #[value(name = "efficientnet_lite0")]
    #[serde(rename = "efficientnet_lite0")]
    EfficientnetLite0,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Resnet18 => "resnet18",
            Architecture::WideResnet50_2 => "wide_resnet50_2",
            Architecture::EfficientnetLite0 => "efficientnet_lite0",
        }
    }

    /// The layers whose features PatchCore concatenates, shallow first.
    pub fn layers(self) -> [&'static str; 2] {
        match self {
            Architecture::Resnet18 | Architecture::WideResnet50_2 => ["layer2", "layer3"],
            // 0-indexed `_blocks.N`: the last 40-channel and the last 112-channel block.
            Architecture::EfficientnetLite0 => ["blocks.4", "blocks.10"],
        }
    }

    /// Channels of each feature layer.
    pub fn channels(self) -> [usize; 2] {
        match self {
            Architecture::Resnet18 => [128, 256],
            Architecture::WideResnet50_2 => [512, 1024],
            Architecture::EfficientnetLite0 => [40, 112],
        }
    }

    pub fn embedding_dim(self) -> usize {
        self.channels().iter().sum()
    }

    /// Input pixels per feature cell of the first feature layer.
    pub fn stride(self) -> usize {
        8
    }

    /// The input normalisation (mean, std) its weights were trained with, on [0, 1] pixels.
    pub fn normalization(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Architecture::Resnet18 | Architecture::WideResnet50_2 => (IMAGENET_MEAN, IMAGENET_STD),
            // TensorFlow's (x * 255 - 127) / 128, as the Lite weights were trained.
            Architecture::EfficientnetLite0 => ([127.0 / 255.0; 3], [128.0 / 255.0; 3]),
        }
    }

    /// The BatchNorm epsilon its weights were trained with.
    pub fn bn_eps(self) -> f64 {
        match self {
            Architecture::Resnet18 | Architecture::WideResnet50_2 => 1e-5,
            // TensorFlow's BatchNorm default.
            Architecture::EfficientnetLite0 => 1e-3,
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Architecture {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resnet18" => Ok(Architecture::Resnet18),
            "wide_resnet50_2" => Ok(Architecture::WideResnet50_2),
            "efficientnet_lite0" => Ok(Architecture::EfficientnetLite0),
            _ => Err(Error::option(
                "backbone",
                format!("`{s}`: expected resnet18, wide_resnet50_2 or efficientnet_lite0"),
            )),
        }
    }
}

/// A residual block: one step of a backbone's chain.
trait Stage<B: Backend> {
    fn forward(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor>;
}

/// Runs a non-empty chain of blocks.
fn run_stages<B: Backend, S: Stage<B>>(backend: &B, stages: &[S], x: &B::Tensor) -> Result<B::Tensor> {
    let (first, rest) = stages.split_first().expect("a chain of blocks is never empty");
    let mut h = first.forward(backend, x)?;
    for stage in rest {
        h = stage.forward(backend, &h)?;
    }
    Ok(h)
}

/// Where the convolutions come from: torchvision weights with BatchNorm to fold, or a model
/// file's already folded ones.
pub enum ConvOrigin<'a> {
    Torchvision(&'a dyn WeightSource),
    Folded(&'a dyn WeightSource, &'a str),
}

/// Loads each convolution, keeps its folded host copy (to save in a model file) and prepares
/// it on the backend.
pub struct ConvLoader<'a, B: Backend> {
    backend: &'a B,
    origin: ConvOrigin<'a>,
    eps: f64,
    folded: Vec<(String, ConvWeights)>,
}

impl<'a, B: Backend> ConvLoader<'a, B> {
    pub fn new(backend: &'a B, origin: ConvOrigin<'a>, arch: Architecture) -> Self {
        ConvLoader { backend, origin, eps: arch.bn_eps(), folded: Vec::new() }
    }

    pub fn conv(&mut self, conv: &str, bn: &str, spec: ConvSpec) -> Result<B::Conv> {
        let weights = match &self.origin {
            ConvOrigin::Torchvision(source) => weights::load_folded(*source, conv, bn, spec, self.eps)?,
            ConvOrigin::Folded(source, prefix) => weights::load_prefolded(*source, &format!("{prefix}{conv}"), spec)?,
        };
        let prepared = self.backend.prepare_conv(&weights)?;
        self.folded.push((conv.to_string(), weights));
        Ok(prepared)
    }
}

enum Net<B: Backend> {
    ResNet(ResNet<B>),
    EfficientNet(EfficientNet<B>),
}

/// A loaded backbone, ready to run on its backend.
pub struct Backbone<B: Backend> {
    arch: Architecture,
    net: Net<B>,
    folded: Vec<(String, ConvWeights)>,
}

impl<B: Backend> Backbone<B> {
    pub fn load(backend: &B, arch: Architecture, origin: ConvOrigin<'_>) -> Result<Self> {
        let mut loader = ConvLoader::new(backend, origin, arch);
        let net = match arch {
            Architecture::Resnet18 => Net::ResNet(ResNet::load(Depth::Basic, &mut loader)?),
            Architecture::WideResnet50_2 => Net::ResNet(ResNet::load(Depth::WideBottleneck, &mut loader)?),
            Architecture::EfficientnetLite0 => Net::EfficientNet(EfficientNet::load(&mut loader, false)?),
        };
        Ok(Backbone { arch, net, folded: loader.folded })
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// The feature maps of [`Architecture::layers`], NCHW on the backend.
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> Result<Vec<B::Tensor>> {
        match &self.net {
            Net::ResNet(net) => net.forward(backend, x),
            Net::EfficientNet(net) => net.forward(backend, x),
        }
    }

    /// The folded convolutions by torchvision conv name, as a model file stores them.
    pub fn folded(&self) -> &[(String, ConvWeights)] {
        &self.folded
    }
}
