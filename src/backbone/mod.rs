//! The feature extractors PatchCore runs to its chosen layers, built on the [`Backend`].

pub mod efficientnet;
mod resnet;
pub mod weights;

use crate::backend::{flops, Backend, ConvSpec, ConvWeights};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use efficientnet::EfficientNet;
use resnet::{Depth, ResNet};
use weights::WeightSource;

/// The backbones this engine knows. Everything that differs between them besides the network
/// itself is in its [`ArchSpec`]; adding a backbone adds a variant, a spec and a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Architecture {
    Resnet18,
    WideResnet50_2,
    /// The bundled backbone (weights/efficientnet_lite0.safetensors).
    EfficientnetLite0,
}

/// What a backbone's weights and PatchCore's use of them fix: its one name (CLI, model files,
/// the C ABI), the feature layers, and the input and BatchNorm conventions it was trained with.
#[derive(Debug, PartialEq)]
pub struct ArchSpec {
    pub name: &'static str,
    /// The layers whose features PatchCore concatenates, shallow first.
    pub layers: &'static [&'static str],
    /// Channels of each feature layer.
    pub channels: &'static [usize],
    /// The input normalisation (mean, std) on [0, 1] pixels.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub bn_eps: f64,
}

/// ImageNet statistics, which torchvision's weights expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

static RESNET18: ArchSpec = ArchSpec {
    name: "resnet18",
    layers: &["layer2", "layer3"],
    channels: &[128, 256],
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
    bn_eps: 1e-5,
};

static WIDE_RESNET50_2: ArchSpec = ArchSpec {
    name: "wide_resnet50_2",
    layers: &["layer2", "layer3"],
    channels: &[512, 1024],
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
    bn_eps: 1e-5,
};

static EFFICIENTNET_LITE0: ArchSpec = ArchSpec {
    name: "efficientnet_lite0",
    // 0-indexed `_blocks.N`: the last 40-channel and the last 112-channel block.
    layers: &["blocks.4", "blocks.10"],
    channels: &[40, 112],
    // TensorFlow's (x * 255 - 127) / 128, as the Lite weights were trained.
    mean: [127.0 / 255.0; 3],
    std: [128.0 / 255.0; 3],
    // TensorFlow's BatchNorm default.
    bn_eps: 1e-3,
};

impl Architecture {
    pub const ALL: [Architecture; 3] =
        [Architecture::Resnet18, Architecture::WideResnet50_2, Architecture::EfficientnetLite0];

    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Architecture::Resnet18 => &RESNET18,
            Architecture::WideResnet50_2 => &WIDE_RESNET50_2,
            Architecture::EfficientnetLite0 => &EFFICIENTNET_LITE0,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn embedding_dim(self) -> usize {
        self.spec().channels.iter().sum()
    }

    /// The pre-processing its weights expect, at this size.
    pub fn preprocess(self, resize: usize, crop: Option<usize>) -> Result<Preprocess> {
        let spec = self.spec();
        Preprocess::new(resize, crop, spec.mean, spec.std)
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
        Architecture::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Architecture::ALL.iter().map(|a| a.name()).collect();
            Error::option("backbone", format!("`{s}`: expected one of {}", names.join(", ")))
        })
    }
}

impl From<Architecture> for &'static str {
    fn from(arch: Architecture) -> Self {
        arch.name()
    }
}

impl TryFrom<String> for Architecture {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
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

/// `convs` applied in turn to `x`, the last adding `residual`, as one [`Backend::conv2d_chain`]
/// (a backend may keep the outputs between them in its own layout); each in its span.
fn run_chain<B: Backend>(backend: &B, convs: &[Conv<B>], x: &B::Tensor, residual: &B::Tensor) -> Result<B::Tensor> {
    // Each convolution's input shape, for its span.
    let mut inputs = vec![backend.shape(x).to_vec()];
    for conv in convs {
        let input = inputs.last().expect("starts with x's shape");
        inputs.push(crate::backend::checks::conv_output(&conv.spec, input, None)?.to_vec());
    }
    let spans: Vec<_> = convs.iter().zip(&inputs).map(|(conv, input)| move || conv.span(input)).collect();
    let links: Vec<_> =
        convs.iter().zip(&spans).map(|(conv, span)| crate::backend::Link { conv: &conv.prepared, span }).collect();
    backend.conv2d_chain(x, &links, Some(residual))
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
        ConvLoader { backend, origin, eps: arch.spec().bn_eps, folded: Vec::new() }
    }

    pub fn conv(&mut self, conv: &str, bn: &str, spec: ConvSpec) -> Result<Conv<B>> {
        let weights = match &self.origin {
            ConvOrigin::Torchvision(source) => weights::load_folded(*source, conv, bn, spec, self.eps)?,
            ConvOrigin::Folded(source, prefix) => weights::load_prefolded(*source, &format!("{prefix}{conv}"), spec)?,
        };
        let prepared = self.backend.prepare_conv(&weights)?;
        self.folded.push((conv.to_string(), weights));
        Ok(Conv { name: conv.to_string(), spec, prepared })
    }
}

/// A prepared convolution with its name in the weights (`layer2.0.conv1`), which its trace
/// span carries.
pub struct Conv<B: Backend> {
    name: String,
    spec: ConvSpec,
    prepared: B::Conv,
}

impl<B: Backend> Conv<B> {
    /// activation(conv(x) + bias + residual), in its span.
    pub fn run(&self, backend: &B, x: &B::Tensor, residual: Option<&B::Tensor>) -> Result<B::Tensor> {
        crate::backend::traced(backend, || self.span(backend.shape(x)), || backend.conv2d(x, &self.prepared, residual))
    }

    /// max_pool(activation(conv(x) + bias)) (`pool`: kernel, stride, padding), in one span
    /// named `<conv>+max_pool`: a backend may pool the output as it computes it
    /// (`Backend::conv2d_max_pool`), so the two have no times of their own.
    pub fn run_max_pooled(&self, backend: &B, x: &B::Tensor, pool: [usize; 3]) -> Result<B::Tensor> {
        let [kernel, stride, padding] = pool;
        let span = || {
            let input = backend.shape(x);
            crate::trace::conv_span(&format!("{}+max_pool", self.name))
                .work(|| flops::conv_max_pool(&self.spec, input, kernel, stride, padding))
        };
        crate::backend::traced(backend, span, || backend.conv2d_max_pool(x, &self.prepared, kernel, stride, padding))
    }

    /// The span of this convolution on an `input` of that shape, with its FLOPs and bytes.
    fn span(&self, input: &[usize]) -> crate::trace::Span {
        crate::trace::conv_span(&self.name).work(|| flops::conv(&self.spec, input))
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// The feature maps of [`ArchSpec::layers`], NCHW on the backend.
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
