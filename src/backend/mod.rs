//! The compute backends. The PatchCore stages and the backbones call only the [`Backend`]
//! trait, so they never know which device runs them. `cpu` is always built and is the
//! numerical reference; `cuda` is a stub that explains itself unless the feature is on.
//! `AnyBackend` is the one the CLI and the C ABI hold: whichever `--device` chose.

mod any;
pub mod checks;
pub mod cpu;
pub mod cuda;
pub mod flops;
mod precision;

use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::RgbImage;

pub use any::{AnyBackend, AnyBank, AnyConv, AnyTensor};
pub use cpu::CpuBackend;
pub use cuda::{CudaBackend, GpuPeak, Mark, TransferCounts};
pub use precision::Precision;

/// The activation applied after a convolution's bias (and residual).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    Relu,
    Relu6,
}

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch `padding=p`).
    Symmetric(usize),
    /// TensorFlow "same": output = ceil(input / stride), the odd pixel of padding at the
    /// bottom/right (EfficientNet-Lite weights were trained this way).
    TfSame,
}

impl Padding {
    /// (output size, padding before) along one axis.
    pub fn resolve(self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric(p) => ((input + 2 * p).saturating_sub(kernel) / stride + 1, p),
            Padding::TfSame => {
                let out = input.div_ceil(stride);
                let total = (out.saturating_sub(1) * stride + kernel).saturating_sub(input);
                (out, total / 2)
            }
        }
    }
}

/// The shape and behaviour of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
    pub groups: usize,
    pub activation: Activation,
}

impl ConvSpec {
    /// The weight shape `[out, in / groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel]
    }
}

/// A convolution with BatchNorm folded in, on the host: what a backend prepares from.
#[derive(Clone, Debug)]
pub struct ConvWeights {
    pub spec: ConvSpec,
    /// `[out, in / groups, k, k]`, row-major. Shared: the loaded backbone keeps the weights it
    /// saves to a model file, and the CPU backend's prepared convolution the same ones (a copy
    /// was 11 MB of every ResNet-18 load).
    pub weight: std::sync::Arc<Vec<f32>>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// The host rows a memory bank was prepared from, in selection order (what a model file holds).
/// The CPU's bank searches them; the CUDA bank keeps them beside its device copy. Before the bank
/// kept them, the model kept a copy of its own: the CPU held the rows twice (15 MiB for
/// ResNet-18's 10,240 x 384 bank) and copied them at every load.
pub trait HostRows {
    fn host_rows(&self) -> &Tensor;
}

/// What [`Backend::score`] returns for a batch, per image.
#[derive(Clone, Debug)]
pub struct BatchScores {
    /// The image score of paper Eq. 7 (with anomalib's choices).
    pub scores: Vec<f32>,
    /// The largest patch distance, before the Eq. 7 reweighting.
    pub max_patch_distances: Vec<f32>,
    /// The anomaly maps `[B, out_h, out_w]`.
    pub maps: Tensor,
}

/// The operations PatchCore needs, and nothing else. Tensors stay on the backend's device
/// between calls; only `download` and the small results of `knn` and `coreset` come back.
pub trait Backend: Send + Sync {
    /// An NCHW activation or a rows x dims matrix, on the device.
    type Tensor: Send + Sync;
    /// A prepared convolution (weights on the device, algorithm chosen).
    type Conv: Send + Sync;
    /// A prepared memory bank (rows and their squared norms on the device), which keeps the host
    /// rows it was made from.
    type Bank: Send + Sync + HostRows;

    /// A short description for logs: "cpu (2 threads)".
    fn describe(&self) -> String;

    fn upload(&self, tensor: &Tensor) -> Result<Self::Tensor>;
    /// The network's input `[N, 3, S, S]` made from 8-bit images, as `Preprocess::batch` makes it
    /// (antialiased resize, center crop, normalisation); only the pixels cross to the device.
    /// The images may differ in size.
    fn preprocess(&self, images: &[RgbImage], preprocess: &Preprocess) -> Result<Self::Tensor>;
    fn download(&self, tensor: &Self::Tensor) -> Result<Tensor>;
    fn shape<'a>(&self, tensor: &'a Self::Tensor) -> &'a [usize];
    /// Rows `rows` of a rows x dims tensor, in that order: the few a caller needs (each image's
    /// most anomalous patch) without copying the rest back.
    fn download_rows(&self, tensor: &Self::Tensor, rows: &[u32]) -> Result<Tensor>;

    fn prepare_conv(&self, weights: &ConvWeights) -> Result<Self::Conv>;
    /// activation(conv(x) + bias + residual): the residual add of a ResNet block is fused here.
    fn conv2d(&self, x: &Self::Tensor, conv: &Self::Conv, residual: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// The links' convolutions applied in turn, the last one adding `residual`: a residual
    /// block's main path, each link in its own trace span (see [`traced`]). An output between
    /// two links is read by the next link only, so a backend may keep it in the layout its
    /// convolutions read; the default (`conv2d_by_links`) runs `conv2d` link by link.
    fn conv2d_chain(
        &self,
        x: &Self::Tensor,
        links: &[Link<'_, Self::Conv>],
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        conv2d_by_links(self, x, links, residual)
    }
    /// Max pooling with -inf padding (ResNet's stem: kernel 3, stride 2, padding 1).
    fn max_pool(&self, x: &Self::Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Self::Tensor>;
    /// `max_pool(conv2d(x, conv))`, no residual (ResNet's stem and its pooling): one pass where a
    /// backend can pool the convolution's output as it computes it; the default runs the two.
    fn conv2d_max_pool(
        &self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self::Tensor> {
        self.max_pool(&self.conv2d(x, conv, None)?, kernel, stride, padding)
    }

    /// PatchCore's patch embedding: each feature map gets a 3x3 average pool (stride 1, zero
    /// padding counted in the divisor), is resized bilinearly (align_corners = false) to the
    /// first map's grid, and the channels are concatenated into rows ordered (image, y, x).
    fn embed(&self, layers: &[&Self::Tensor]) -> Result<Self::Tensor>;

    /// The bank the kNN searches, from its rows (m x d, in selection order), which it keeps
    /// (`HostRows`): the model's one copy on the host.
    fn prepare_bank(&self, rows: Tensor) -> Result<Self::Bank>;
    /// `prepare_bank`, given an order of the rows that clusters them (the model file's), which a
    /// backend that searches the bank by clusters (the CPU) takes instead of finding its own.
    /// An order of another number of rows is an error.
    fn prepare_clustered_bank(&self, rows: Tensor, order: cpu::ClusterOrder) -> Result<Self::Bank> {
        order.check(&rows)?;
        self.prepare_bank(rows)
    }
    /// For each query row, the `k` nearest bank rows (true L2, ascending; ties to the lower
    /// index): (distances, indices), each rows x k.
    fn knn(&self, queries: &Self::Tensor, bank: &Self::Bank, k: usize) -> Result<(Vec<f32>, Vec<u32>)>;
    /// Greedy k-center selection of `n_select` rows, seeded by `start` (not itself selected).
    fn coreset(&self, rows: &Self::Tensor, n_select: usize, start: usize) -> Result<Vec<u32>>;
    /// PatchCore's scoring of a batch whose patch embedding is `embedding` (rows ordered (image, y, x) on a
    /// `grid` of h x w per image): the patch scores (each patch's nearest bank row), each image's largest
    /// one (the first maximum; a NaN never wins), its Eq. 7 score with `num_neighbors` support rows, and
    /// the anomaly map of its patch scores at `map_size` (h, w) blurred by `sigma`. One operation, so that
    /// a device keeps every intermediate and returns only the results.
    fn score(
        &self,
        embedding: &Self::Tensor,
        bank: &Self::Bank,
        grid: [usize; 2],
        num_neighbors: usize,
        map_size: [usize; 2],
        sigma: f32,
    ) -> Result<BatchScores>;
    /// Patch-score grids `[B, h, w]` -> nearest upsample to `out_h x out_w` -> Gaussian blur
    /// (reflect padding) -> `[B, out_h, out_w]`.
    fn anomaly_map(&self, scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Result<Tensor>;

    /// Waits for the work queued so far: a no-op on a backend whose operations return only when
    /// done (the CPU). [`traced`] calls it, only while tracing is on.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// A timing point on the device's queue, for [`traced`] while tracing; None on a backend
    /// whose operations are done when they return (the CPU): their host spans are their times.
    fn mark(&self) -> Result<Option<Mark>> {
        Ok(None)
    }
}

/// One convolution of [`Backend::conv2d_chain`] and the trace span it runs in.
pub struct Link<'a, C> {
    pub conv: &'a C,
    pub span: &'a dyn Fn() -> crate::trace::Span,
}

/// [`Backend::conv2d_chain`] as one `conv2d` per link: the default, and a backend's fallback
/// where its own chain does not apply.
pub fn conv2d_by_links<B: Backend + ?Sized>(
    backend: &B,
    x: &B::Tensor,
    links: &[Link<'_, B::Conv>],
    residual: Option<&B::Tensor>,
) -> Result<B::Tensor> {
    let Some((last, first)) = links.split_last() else {
        return Err(Error::invalid_backend_input("conv2d_chain: no convolutions"));
    };
    let mut h = None;
    for link in first {
        h = Some(traced(backend, link.span, || backend.conv2d(h.as_ref().unwrap_or(x), link.conv, None))?);
    }
    traced(backend, last.span, || backend.conv2d(h.as_ref().unwrap_or(x), last.conv, residual))
}

/// Runs `op` inside `span`. While tracing is on, the backend is synchronised before the span
/// starts and before it ends, so on a device backend the span times the device work (tracing
/// then serialises the stream), and the device's own time between a mark before `op` and one
/// after goes on its track too; off, this is `op()` after one atomic load.
pub fn traced<B: Backend + ?Sized, T>(
    backend: &B,
    span: impl FnOnce() -> crate::trace::Span,
    op: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !crate::trace::enabled() {
        return op();
    }
    backend.synchronize()?;
    let span = span();
    let start = backend.mark()?;
    let out = op()?;
    let end = backend.mark()?;
    backend.synchronize()?;
    if let (Some(start), Some(end)) = (start, end) {
        span.on_device(start.timing(&end)?);
    }
    drop(span);
    Ok(out)
}

/// Where to run, as the user says it on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    /// CUDA when it is present, else the CPU with a notice.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "auto" => Ok(DeviceChoice::Auto),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| Error::option("--device", format!("`{s}`: expected cpu, cuda, cuda:N or auto"))),
        }
    }
}
