//! The CPU backend: pure Rust, `gemm` for matrix products, rayon for threads. Every other
//! backend is checked against it.

mod amx;
mod blur;
mod conv;
mod conv_amx;
mod conv_chain;
mod coreset;
mod embed;
mod knn;
mod knn_chunks;
mod knn_screen;
mod matmul;
mod pool;
mod score;
mod transpose;

pub use amx::unavailable_reason as bf16_unavailable;
pub use blur::gaussian_taps;
pub use coreset::{bound_tolerance, distance_eps, l2_distance, prune_factor, Subspace, PROJ};
pub use knn::{knn_topk, squared_norms};
pub use knn_chunks::ClusterOrder;
pub use matmul::sgemm;
pub use score::{reweighted_score, top_patches};

use super::checks::{coreset_args, knn_args, preprocess_args, score_args};
use super::{conv2d_by_links, Backend, BatchScores, ConvWeights, HostRows, Link, Precision};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use amx::Engine;
use conv::CpuConv;
use conv_amx::Arithmetic;
use image::RgbImage;
use knn_screen::{Rounded, ScreenBank};
use std::sync::OnceLock;

/// The CPU backend. Its convolutions are tile products (`conv_amx`): on AMX in `Arithmetic::
/// Split` by default (within a few f32 roundings of f32), elsewhere with AVX-512F in `F32`, and
/// `Bf16` when asked where the CPU multiplies bf16 (`amx::engine`: AMX or AVX512-BF16); without
/// AVX-512, and for `CpuBackend::portable`, f32 im2col + sgemm. The kNN is exact either way.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    tiles: Option<Arithmetic>,
}

impl Default for CpuBackend {
    /// The fastest exact arithmetic this CPU has: split bf16 tiles on AMX, else f32 tiles with
    /// AVX-512F, else im2col + sgemm. Split products in AVX512-BF16 registers lose to f32: on the
    /// 2-core Xeon VDPBF16PS (32 products) issues at a quarter of an f32 FMA's rate (16), 1.2
    /// against 4.9 G instructions a second on a core, and the split takes three, so ResNet-18's
    /// layer1 convolutions took 8.2 ms an image against f32 tiles' 1.2 (docs/PERFORMANCE.md,
    /// round 8).
    fn default() -> Self {
        let tiles = if amx::engine() == Ok(Engine::Amx) {
            Some(Arithmetic::Split)
        } else {
            Arithmetic::F32.unavailable_reason().is_none().then_some(Arithmetic::F32)
        };
        CpuBackend { tiles }
    }
}

impl CpuBackend {
    /// The backend for `--precision`: `F32` is `default()`, `Bf16` needs bf16 tiles (an error naming
    /// why it is unusable otherwise); `Tf32` and `F16` are the GPU's and change nothing here.
    pub fn new(precision: Precision) -> Result<CpuBackend> {
        if precision != Precision::Bf16 {
            return Ok(CpuBackend::default());
        }
        match amx::unavailable_reason() {
            None => Ok(CpuBackend { tiles: Some(Arithmetic::Bf16) }),
            Some(reason) => {
                Err(Error::option("--precision", format!("bf16 needs AMX or AVX512-BF16 on the CPU: {reason}")))
            }
        }
    }

    /// f32 im2col + sgemm on every CPU: the reference the tile paths are tested against.
    pub fn portable() -> CpuBackend {
        CpuBackend { tiles: None }
    }

    /// The convolutions' arithmetic, in a word or two: "f32", "f32 tiles", "split bf16" or "bf16".
    pub fn convolutions(&self) -> &'static str {
        match self.tiles {
            None => "f32",
            Some(Arithmetic::F32) => "f32 tiles",
            Some(Arithmetic::Split) => "split bf16",
            Some(Arithmetic::Bf16) => "bf16",
        }
    }
}

/// A memory bank on the CPU: the rows, and where the CPU has AVX-512F, the form the kNN screens
/// it with (`knn_screen`).
pub struct CpuBank {
    rows: Tensor,
    /// Each row's squared norm, for the f32 search (`knn_topk`): computed when it first runs, as
    /// the screened search never needs them (2 ms of each load of a 10,240-row bank).
    sq_norms: OnceLock<Vec<f32>>,
    screen: Option<ScreenBank>,
}

impl CpuBank {
    fn sq_norms(&self) -> &[f32] {
        self.sq_norms.get_or_init(|| squared_norms(&self.rows.data, self.rows.shape[1]))
    }
}

impl HostRows for CpuBank {
    fn host_rows(&self) -> &Tensor {
        &self.rows
    }
}

/// The bank of `rows`, screened in `order` (found if `None`).
fn bank(rows: Tensor, order: Option<ClusterOrder>) -> Result<CpuBank> {
    let [_, d] = rows.dims2()?;
    let screen = ScreenBank::new(&rows.data, d, order).ok();
    Ok(CpuBank { sq_norms: OnceLock::new(), screen, rows })
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type Conv = CpuConv;
    type Bank = CpuBank;

    fn describe(&self) -> String {
        let on = match self.tiles {
            Some(Arithmetic::Split | Arithmetic::Bf16) => amx::engine().map_or("", |e| e.name()),
            Some(Arithmetic::F32) => Engine::Avx512F32.name(),
            None => "im2col + sgemm",
        };
        let knn = Rounded::here().map_or("f32 search", Rounded::describe);
        format!(
            "cpu ({} threads, convolutions: {} on {on}, kNN: {knn})",
            rayon::current_num_threads(),
            self.convolutions()
        )
    }

    fn upload(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }

    /// The reference: `Preprocess::batch`, already in host memory.
    fn preprocess(&self, images: &[RgbImage], preprocess: &Preprocess) -> Result<Tensor> {
        preprocess_args(images)?;
        Ok(preprocess.batch(images))
    }

    fn download(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }

    fn shape<'a>(&self, tensor: &'a Tensor) -> &'a [usize] {
        &tensor.shape
    }

    fn download_rows(&self, tensor: &Tensor, rows: &[u32]) -> Result<Tensor> {
        tensor.gather_rows(rows)
    }

    fn prepare_conv(&self, weights: &ConvWeights) -> Result<CpuConv> {
        Ok(CpuConv::new(weights, self.tiles))
    }

    fn conv2d(&self, x: &Tensor, conv: &CpuConv, residual: Option<&Tensor>) -> Result<Tensor> {
        conv::conv2d(x, conv, self.tiles, residual)
    }

    /// On the tiles, each link's output goes straight into the next one's input (`conv_chain`).
    fn conv2d_chain(&self, x: &Tensor, links: &[Link<'_, CpuConv>], residual: Option<&Tensor>) -> Result<Tensor> {
        if let Some(arithmetic) = self.tiles {
            if let Some(out) = conv_chain::conv2d_chain(self, x, links, arithmetic, residual)? {
                return Ok(out);
            }
        }
        conv2d_by_links(self, x, links, residual)
    }

    fn max_pool(&self, x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        pool::max_pool(x, kernel, stride, padding)
    }

    /// On the tiles, the convolution's output is pooled as its rows are computed
    /// (`conv_amx::to_max_pooled`).
    fn conv2d_max_pool(
        &self,
        x: &Tensor,
        conv: &CpuConv,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        if let Some(pooled) = conv::conv2d_max_pool(x, conv, self.tiles, [kernel, stride, padding])? {
            return Ok(pooled);
        }
        pool::max_pool(&self.conv2d(x, conv, None)?, kernel, stride, padding)
    }

    fn embed(&self, layers: &[&Tensor]) -> Result<Tensor> {
        embed::embed(layers)
    }

    fn prepare_bank(&self, rows: Tensor) -> Result<CpuBank> {
        bank(rows, None)
    }

    fn prepare_clustered_bank(&self, rows: Tensor, order: ClusterOrder) -> Result<CpuBank> {
        order.check(&rows)?;
        bank(rows, Some(order))
    }

    fn knn(&self, queries: &Tensor, bank: &CpuBank, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        let [m, bank_d] = bank.rows.dims2()?;
        let [_, d] = knn_args(&queries.shape, m, bank_d, k)?;
        Ok(knn::nearest(&queries.data, bank, d, k))
    }

    fn coreset(&self, rows: &Tensor, n_select: usize, start: usize) -> Result<Vec<u32>> {
        let [_, d] = coreset_args(&rows.shape, n_select, start)?;
        Ok(coreset::greedy_coreset(&rows.data, d, n_select, start))
    }

    fn score(
        &self,
        embedding: &Tensor,
        bank: &CpuBank,
        grid: [usize; 2],
        num_neighbors: usize,
        map_size: [usize; 2],
        sigma: f32,
    ) -> Result<BatchScores> {
        let [m, d] = bank.rows.dims2()?;
        let dims = score_args(&embedding.shape, m, d, grid, num_neighbors, map_size, sigma)?;
        score::score(embedding, bank, dims, num_neighbors, map_size, sigma)
    }

    fn anomaly_map(&self, scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Result<Tensor> {
        blur::anomaly_map(scores, out_h, out_w, sigma)
    }
}
