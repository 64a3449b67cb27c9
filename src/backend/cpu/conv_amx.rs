//! Convolutions as tile products (`amx::Tiles`): bf16 on AMX or AVX512-BF16, or f32 on any CPU
//! with AVX-512F.
//!
//! The input is converted once per convolution to channels-last (NHWC) bf16 (or f32) with its
//! zero padding around each image. Where a kernel row's depth (`kernel * channels` values) is a
//! multiple of a tile row (32 bf16 or 16 f32) or fits one (all of ResNet's convolutions, the
//! stem's 7 x 3 in bf16 included), the tiles read it in place: an A tile is 16 output positions
//! of one row at one kernel tap and one tile row's channels (or one whole kernel row), its rows
//! `stride` pixels apart (`Job::by_taps`, no im2col). Otherwise (EfficientNet's 16 and 24
//! channels at 3 x 3 and 5 x 5, the stem in f32) the patch of an output position is `kernel` runs
//! of `kernel * channels` contiguous values, copied for 64 to 256 positions at a time into a
//! task's own buffer (`Job::by_patches`). The weights are packed as B tiles once, when the model
//! loads (`PackedConv`). The products come out position-major; the epilogue gathers each
//! channel's from them into the NCHW output.
//!
//! Three arithmetics (`Arithmetic`):
//! - `Split`, the default on AMX: each value is split as x = hi + lo + r with hi, lo bf16 and
//!   |r| <= 2^-17 |x|, and a.w is taken as a_hi.w_hi + a_hi.w_lo + a_lo.w_hi, one product three
//!   times as deep ([a_hi | a_hi | a_lo] against [w_hi | w_lo | w_hi]). Dropping a_lo.w_lo and
//!   the residuals leaves each product within 3 2^-18 |a||w|, and the tiles sum in f32: the
//!   output is within (3 2^-18 + gamma_3kk) sum |a||w| of the exact value, where the f32 im2col +
//!   sgemm is within gamma_kk of it (`tests::split_products_stay_within_the_bound`).
//! - `Bf16` (opt-in, `--precision bf16`): a_hi.w_hi only, one third of the work, each product
//!   within about 2^-7 |a||w|.
//! - `F32`, the default with AVX-512F but no AMX: the f32 values, one FMA per product, within
//!   gamma_kk as im2col + sgemm (`tests::f32_tiles_stay_within_the_bound`). Each f32 is stored
//!   as two 16-bit units, so that the bf16 layouts, steps and packing serve it unchanged. Unlike
//!   bf16, its inputs are not checked: where one tile row holds a whole kernel row (fewer than 16
//!   values, as EfficientNet's 3-channel stem) it reads the next pixels against zero weights, so
//!   an infinite or NaN input reaches a few more outputs than im2col's would.

use super::amx::{self, split, to_bf16, Engine, TileBuf, Tiles, B_TILE_LEN, TILE_K, TILE_ROWS};
use super::conv::{finish, Geometry};
#[cfg(target_arch = "x86_64")]
use super::transpose::transpose16;
use crate::backend::{Activation, ConvWeights};
use crate::tensor::Tensor;
use crate::wide::vectorised;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows (output positions) and columns (output channels) of one `Tiles::block_32x32`.
const BLOCK: usize = 2 * TILE_ROWS;
/// A task's split rows (AMX's A operand) are at most this many bytes, so that they stay in L2
/// while every output channel block is multiplied with them; a task has 64 to 256 positions.
/// Shallow convolutions get the long tasks: the stem's (7 x 7 x 3) 256 positions write each
/// output channel in runs of 1 KiB instead of 256 bytes (predict's conv1 186 -> 175 ms over 50
/// images at batch 8).
const TASK_BYTES: usize = 256 << 10;

/// Pooled rows per task of `Job::max_pooled`: a window row at a task's edge is computed by both
/// tasks, so ResNet's stem (pool 3, stride 2) computes 9 rows of products for 4 pooled rows. With
/// 1 pooled row a task (3 rows for 2) at 512 px, split bf16 lost to running the two in turn
/// (8.01 against 7.84 ms, `cargo bench --bench pipeline -- convs`).
const POOLED_ROWS: usize = 4;
/// The most bytes of products a task of `Job::max_pooled` holds: half of L2 on the 2-core Xeon
/// (9 rows of ResNet's stem at 512 px are 576 KiB).
const POOLED_BYTES: usize = 1 << 20;

/// Output positions per task for A rows of `width` bf16.
fn task_rows(width: usize) -> usize {
    (TASK_BYTES / (2 * width * BLOCK)).clamp(2, 8) * BLOCK
}

/// How the tile products approximate the f32 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// hi.hi + hi.lo + lo.hi: within a few f32 roundings of f32's result.
    Split,
    /// hi.hi: bf16's 8 significant bits.
    Bf16,
    /// The f32 values themselves, with FMA (`amx::Engine::Avx512F32`), as exact as im2col +
    /// sgemm: a value takes two 16-bit units where a bf16 takes one, so that the layouts,
    /// steps and packing of the bf16 tiles serve unchanged (16 f32 to a tile row, not 32 bf16).
    F32,
}

impl Arithmetic {
    /// Segments of the A rows: [hi | hi | lo] or [hi] (or the f32 values).
    fn segments(self) -> usize {
        match self {
            Arithmetic::Split => 3,
            Arithmetic::Bf16 | Arithmetic::F32 => 1,
        }
    }

    /// 16-bit units a value takes in the A rows and B tiles.
    fn units(self) -> usize {
        match self {
            Arithmetic::F32 => 2,
            Arithmetic::Split | Arithmetic::Bf16 => 1,
        }
    }

    /// Why this CPU cannot multiply tiles in this arithmetic, or `None` where it can.
    pub fn unavailable_reason(self) -> Option<&'static str> {
        match self {
            Arithmetic::F32 => amx::f32_unavailable_reason(),
            Arithmetic::Split | Arithmetic::Bf16 => amx::unavailable_reason(),
        }
    }

    /// The products on this thread.
    ///
    /// # Safety
    /// `unavailable_reason()` must be `None`.
    unsafe fn tiles(self) -> Tiles {
        // SAFETY: the caller's contract (`amx::engine` decides for bf16).
        unsafe {
            match self {
                Arithmetic::F32 => Tiles::on(Engine::Avx512F32),
                Arithmetic::Split | Arithmetic::Bf16 => Tiles::configure(),
            }
        }
    }
}

/// A convolution's weights as the tiles' B operand for one `Arithmetic`: per group of 16 output
/// channels, `Arithmetic::segments` segments ([hi | lo | hi] for `Split`, [hi] for `Bf16`, the
/// f32 values for `F32`) of `kcs` packed tiles each over the depth
/// ky * row + (kx * channels + c) * units (channels-last, as the A rows are), zero-padded to
/// whole tiles and to a multiple of 32 output channels.
pub struct PackedConv {
    packed: TileBuf<u16>,
    kcs: usize,
    /// What the weights were packed for, which the input must be staged in.
    arithmetic: Arithmetic,
    out_pad: usize,
    /// The depth of one kernel row: `kernel * channels`, or a whole tile's 32 where that holds
    /// more than one row (the stem's 7 x 3), so that `Job::by_taps` can read each kernel row's
    /// pixels in place as one tile.
    row: usize,
}

impl PackedConv {
    /// The packed form of `conv` for `arithmetic`, or `None` where the tile path does not apply:
    /// the CPU lacks the arithmetic, a grouped convolution, or bf16 of weights that are not
    /// finite or beyond `amx::suitable`'s limit.
    pub fn new(conv: &ConvWeights, arithmetic: Arithmetic) -> Option<PackedConv> {
        let s = &conv.spec;
        let f32 = arithmetic == Arithmetic::F32;
        if arithmetic.unavailable_reason().is_some() || s.groups != 1 || !(f32 || amx::suitable(&conv.weight)) {
            return None;
        }
        let (c, k, taps, units) = (s.in_channels, s.kernel, s.kernel * s.kernel, arithmetic.units());
        let row = if k * c * units < TILE_K { TILE_K } else { k * c * units };
        let kcs = (k * row).div_ceil(TILE_K);
        let out_pad = s.out_channels.div_ceil(BLOCK) * BLOCK;
        let (width, hi_lo) = (kcs * TILE_K, arithmetic == Arithmetic::Split);
        let (packed, _) = amx::pack_b(
            s.out_channels,
            out_pad / TILE_ROWS,
            arithmetic.segments() * kcs,
            #[inline(always)]
            |o, depth| {
                // PyTorch's order is (c, ky, kx); the A rows' is (ky, kx, c): the channel's
                // weights are transposed to (ky, kx, c) first, so that each tap's c weights are
                // converted and written as one run, which vectorises. The packing's CPU time in a
                // one-image predict of the chip model (`perf`, median of four alternating runs),
                // writing each weight to its place in PyTorch's order / in runs reading every
                // `taps`th weight / transposed first: 14 / 7.1 / 5.9 ms in bf16, 21 / 14.5 / 10.5
                // ms in the split arithmetic.
                let weights = &conv.weight[o * c * taps..][..c * taps];
                let mut by_tap = vec![0f32; c * taps];
                for (ci, kernel) in weights.chunks_exact(taps).enumerate() {
                    for (tap, &w) in kernel.iter().enumerate() {
                        by_tap[tap * c + ci] = w;
                    }
                }
                let (hi, rest) = depth.split_at_mut(width);
                let (lo, hi_again) = rest.split_at_mut(if hi_lo { width } else { 0 });
                for (tap, run) in by_tap.chunks_exact(c).enumerate() {
                    let at = tap / k * row + tap % k * c * units;
                    if f32 {
                        for (value, &w) in hi[at..][..2 * c].chunks_exact_mut(2).zip(run) {
                            // Low half first, as an f32 lies in memory.
                            (value[0], value[1]) = (w.to_bits() as u16, (w.to_bits() >> 16) as u16);
                        }
                    } else if hi_lo {
                        let runs = hi[at..][..c].iter_mut().zip(&mut lo[at..][..c]).zip(&mut hi_again[at..][..c]);
                        for (((h, l), h2), &w) in runs.zip(run) {
                            (*h, *l) = split(w);
                            *h2 = *h;
                        }
                    } else {
                        for (h, &w) in hi[at..][..c].iter_mut().zip(run) {
                            *h = to_bf16(w);
                        }
                    }
                }
            },
        );
        Some(PackedConv { packed, kcs, arithmetic, out_pad, row })
    }

    /// bf16 values from one group of 16 output channels to the next.
    fn group_len(&self) -> usize {
        self.arithmetic.segments() * self.kcs * B_TILE_LEN
    }
}

/// activation(conv(x) + bias + residual) through the tile products, or `None` when `x` holds
/// values `amx::suitable` refuses (the caller then takes the f32 path, which propagates them).
pub fn conv2d(
    x: &Tensor,
    conv: &ConvWeights,
    packed: &PackedConv,
    arithmetic: Arithmetic,
    residual: Option<&Tensor>,
    g: &Geometry,
) -> Option<Vec<f32>> {
    let (input, g) = stage(x, arithmetic, g)?;
    Some(to_tensor(&input, conv, packed, residual, &g))
}

/// `x` as the tiles read it for a convolution of geometry `g`, and the geometry they read it
/// with; `None` when the values read are not all within `amx::LIMIT` (`amx::suitable`).
pub fn stage(x: &Tensor, arithmetic: Arithmetic, g: &Geometry) -> Option<(ChannelsLast, Geometry)> {
    // A 1x1 convolution without padding reads only every `stride`th pixel: convert those, and
    // run it as a stride-1 convolution of them (ResNet's strided downsampling, a quarter of the
    // conversion it would otherwise make).
    let (step, g) = match (g.k, g.pad_top, g.pad_left) {
        (1, 0, 0) => (g.stride, Geometry { h: g.ho, w: g.wo, stride: 1, ..*g }),
        _ => (1, *g),
    };
    let shape = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    Some((ChannelsLast::padded(shape, arithmetic, step, &g, Some(x))?, g))
}

/// activation(conv(input) + bias + residual), NCHW.
pub fn to_tensor(
    input: &ChannelsLast,
    conv: &ConvWeights,
    packed: &PackedConv,
    residual: Option<&Tensor>,
    g: &Geometry,
) -> Vec<f32> {
    let len = input.batch * conv.spec.out_channels * g.ho * g.wo;
    // Not zeroed: the tasks write every element (their positions cover the batch, each for
    // every channel), and zeroing 32 MiB (the stem's output at batch 8) cost 2.6 ms a batch.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr());
    Job { input, conv, packed, g, out: Out::Tensor { dst, residual } }.run();
    // SAFETY: the tasks initialised all `len` elements (above).
    unsafe { out.set_len(len) };
    out
}

/// max_pool(activation(conv(input) + bias)), NCHW (`pool`: kernel, stride and padding;
/// `pooled`: the pooled height and width), without the convolution's output ever written
/// (`Job::max_pooled`): ResNet's stem wrote 4 MiB an image at 256 px that its pooling read
/// back. `None` where the convolution is not read by taps or its activation is other than ReLU
/// or none: the caller then runs the two.
pub fn to_max_pooled(
    input: &ChannelsLast,
    conv: &ConvWeights,
    packed: &PackedConv,
    g: &Geometry,
    pool: [usize; 3],
    pooled: [usize; 2],
) -> Option<Vec<f32>> {
    if !packed.row.is_multiple_of(TILE_K) || !matches!(conv.spec.activation, Activation::Relu | Activation::None) {
        return None;
    }
    let len = input.batch * conv.spec.out_channels * pooled[0] * pooled[1];
    // Not zeroed: the tasks write every element, as `to_tensor`'s.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr());
    Job { input, conv, packed, g, out: Out::Tensor { dst, residual: None } }.max_pooled(pool, pooled, dst);
    // SAFETY: the tasks initialised all `len` elements (each its pooled rows, every channel).
    unsafe { out.set_len(len) };
    Some(out)
}

/// activation(conv(input) + bias) written straight into the input of the next convolution, of
/// geometry `next` (stride 1 in its reading: `stage`'s step is not taken), with the same bits as
/// `stage` would make of `to_tensor`'s output; `None` where an output is beyond what
/// `amx::suitable` accepts (the next convolution must then take the f32 path).
pub fn to_next(
    input: &ChannelsLast,
    conv: &ConvWeights,
    packed: &PackedConv,
    g: &Geometry,
    next: &Geometry,
) -> Option<ChannelsLast> {
    let shape = [input.batch, conv.spec.out_channels, g.ho, g.wo];
    let mut staged =
        ChannelsLast::padded(shape, input.layout.arithmetic, 1, next, None).expect("only x's values are checked");
    let unsuitable = AtomicBool::new(false);
    let dst = SharedOut(staged.data.as_mut_ptr().cast());
    Job { input, conv, packed, g, out: Out::Next { dst, layout: staged.layout, unsuitable: &unsuitable } }.run();
    (!unsuitable.into_inner()).then_some(staged)
}

/// One convolution on the tiles: its input, weights and where its outputs go.
struct Job<'a> {
    input: &'a ChannelsLast,
    conv: &'a ConvWeights,
    packed: &'a PackedConv,
    g: &'a Geometry,
    out: Out<'a>,
}

/// Where a `Job` writes its outputs.
#[derive(Clone, Copy)]
enum Out<'a> {
    /// The NCHW f32 output, with the residual added (`write_outputs`).
    Tensor { dst: SharedOut<f32>, residual: Option<&'a Tensor> },
    /// The next convolution's input, of that layout (`stage_outputs`); `unsuitable` is set where
    /// a value is beyond `amx::LIMIT`.
    Next { dst: SharedOut<u16>, layout: Layout, unsuitable: &'a AtomicBool },
}

impl Job<'_> {
    fn run(&self) {
        // The products read `segments` of each packed group, and the steps index them.
        assert_eq!(self.input.layout.arithmetic, self.packed.arithmetic, "Job: input staged for other weights");
        if self.packed.row.is_multiple_of(TILE_K) {
            self.by_taps();
        } else {
            self.by_patches();
        }
    }

    /// The depth of one position's products: segments x kcs tiles of 32 values.
    fn width(&self) -> usize {
        self.input.layout.arithmetic.segments() * self.packed.kcs * TILE_K
    }

    /// Tasks of `task_rows` consecutive positions: each builds its positions' patches (im2col
    /// rows: per kernel row `kernel * channels` contiguous values, [hi | hi | lo] for `Split`) in
    /// its own buffer, then multiplies them by every output channel block. For kernel rows whose
    /// depth is neither a multiple of 32 nor under 32 (`PackedConv::row`).
    fn by_patches(&self) {
        let (g, packed, width) = (self.g, self.packed, self.width());
        let total = self.input.batch * g.ho * g.wo;
        let task_rows = task_rows(width);
        let tasks = total.div_ceil(task_rows);
        (0..tasks).into_par_iter().with_min_len(runs_of(tasks)).for_each_init(
            || (TileBuf::<u16>::zeroed(task_rows * width), TileBuf::<f32>::zeroed(task_rows * packed.out_pad)),
            |(rows, products), task| {
                let start = task * task_rows;
                let n = task_rows.min(total - start);
                for (r, row) in rows.chunks_exact_mut(width).take(n).enumerate() {
                    self.input.patch(start + r, g, packed, row);
                }
                // SAFETY: `packed` exists, so the CPU has the arithmetic.
                let tiles = unsafe { self.input.layout.arithmetic.tiles() };
                multiply(&tiles, rows, packed, self.input.layout.arithmetic.segments(), n, products);
                drop(tiles);
                self.write(products, start, n);
            },
        );
    }

    /// Tasks of whole output rows, with no im2col (`row_products`), each writing its rows.
    fn by_taps(&self) {
        let (g, packed) = (self.g, self.packed);
        let row_tiles = g.wo.div_ceil(TILE_ROWS);
        let rows_per_task = (task_rows(self.width()) / g.wo).max(1);
        let out_rows = self.input.batch * g.ho;
        let tasks = out_rows.div_ceil(rows_per_task);
        let steps = self.input.steps(g, packed);
        let pairs = (rows_per_task * row_tiles).div_ceil(2);
        (0..tasks).into_par_iter().with_min_len(runs_of(tasks)).for_each_init(
            || (TileBuf::<f32>::zeroed(pairs * BLOCK * packed.out_pad), Vec::with_capacity(2 * pairs)),
            |(products, tile_starts), task| {
                let rows = task * rows_per_task..((task + 1) * rows_per_task).min(out_rows);
                self.row_products(rows.clone(), &steps, products, tile_starts);
                if row_tiles * TILE_ROWS == g.wo {
                    self.write(products, rows.start * g.wo, rows.len() * g.wo);
                } else {
                    for (i, r) in rows.enumerate() {
                        self.write(&products[i * row_tiles * TILE_ROWS * packed.out_pad..], r * g.wo, g.wo);
                    }
                }
            },
        );
    }

    /// The products of output rows `rows` (image * ho + oy) with every output channel: row i's
    /// `row_tiles * 16` positions (`wo` rounded up to whole tiles) from position
    /// `i * row_tiles * 16` of `products`, `out_pad` f32 each. An A tile is 16 output positions
    /// of one row read in place from the padded channels-last input (rows `stride` pixels
    /// apart), one step per kernel tap and 32 channels, or per kernel row where one fits a tile
    /// (`steps`, `ChannelsLast::steps`). A row whose width is not a multiple of 16 ends in a tile
    /// whose last rows read past it; their products are computed and not read.
    fn row_products(
        &self,
        rows: Range<usize>,
        steps: &[[usize; 2]],
        products: &mut [f32],
        tile_starts: &mut Vec<usize>,
    ) {
        let (g, packed) = (self.g, self.packed);
        let row_tiles = g.wo.div_ceil(TILE_ROWS);
        tile_starts.clear();
        for r in rows {
            let (image, oy) = (r / g.ho, r % g.ho);
            tile_starts
                .extend((0..row_tiles).map(|t| self.input.layout.at(image, oy * g.stride, t * TILE_ROWS * g.stride)));
        }
        if tile_starts.len() % 2 == 1 {
            tile_starts.push(tile_starts[tile_starts.len() - 1]);
        }
        assert!(products.len() >= tile_starts.len() * TILE_ROWS * packed.out_pad, "row_products: products too short");
        let (group_len, a_stride) = (packed.group_len(), 2 * g.stride * self.input.layout.c);
        let data = self.input.data.as_ptr();
        // SAFETY: `packed` exists, so the CPU has the arithmetic.
        let tiles = unsafe { self.input.layout.arithmetic.tiles() };
        for cb in (0..packed.out_pad).step_by(BLOCK) {
            for (p, pair) in tile_starts.chunks_exact(2).enumerate() {
                // SAFETY: the A rows a step reads lie in `data` (`ChannelsLast::steps`); the B
                // tiles are group cb/16's and the next's (`segments` kcs tiles each, which the
                // steps name); the products' rows 32p..32p + 32, columns cb..cb + 32, lie inside
                // `products` (the assert).
                unsafe {
                    tiles.block_32x32(
                        data.add(pair[0]),
                        data.add(pair[1]),
                        a_stride,
                        steps,
                        packed.packed.as_ptr().add(cb / TILE_ROWS * group_len),
                        group_len,
                        products.as_mut_ptr().add(p * BLOCK * packed.out_pad + cb),
                        packed.out_pad * 4,
                    );
                }
            }
        }
    }

    /// `pool` (kernel, stride, padding) max pooling of this convolution's output, NCHW into
    /// `dst` (`pooled`: its height and width), without writing the convolution's output: each
    /// task computes the rows of products its pooled rows read (`row_products`; a window row at a
    /// task's edge is computed by both tasks), pools the products, and adds the bias and applies
    /// the activation to the pooled ones. Both are non-decreasing, so that is the same value as
    /// pooling the activated outputs; a NaN product is skipped by both orders alike for ReLU
    /// and none (`PooledConv`'s activations). For `by_taps` convolutions.
    fn max_pooled(&self, pool: [usize; 3], pooled: [usize; 2], dst: SharedOut<f32>) {
        assert_eq!(self.input.layout.arithmetic, self.packed.arithmetic, "Job: input staged for other weights");
        let (g, packed) = (self.g, self.packed);
        let ([k, stride, pad], [hp, wp]) = (pool, pooled);
        let row_len = g.wo.div_ceil(TILE_ROWS) * TILE_ROWS * packed.out_pad;
        // Pooled rows per task: `POOLED_ROWS`, fewer where their rows of products would not fit
        // in `POOLED_BYTES`.
        let fit = (POOLED_BYTES / (4 * row_len)).saturating_sub(k) / stride + 1;
        let task_rows = fit.min(POOLED_ROWS).min(hp);
        let per_image = hp.div_ceil(task_rows);
        let tasks = self.input.batch * per_image;
        let most_rows = (task_rows - 1) * stride + k;
        let steps = self.input.steps(g, packed);
        // The rows or columns of products a pooled row or column o reads, clipped to the output.
        let window = |o: usize, size: usize| {
            (o * stride).saturating_sub(pad).min(size)..(o * stride + k).saturating_sub(pad).min(size)
        };
        (0..tasks).into_par_iter().with_min_len(runs_of(tasks)).for_each_init(
            || {
                let products = TileBuf::<f32>::zeroed((most_rows * row_len).next_multiple_of(BLOCK * packed.out_pad));
                (products, Vec::new(), vec![0f32; task_rows * wp * packed.out_pad])
            },
            |(products, tile_starts, maxima), task| {
                let (image, first) = (task / per_image, task % per_image * task_rows);
                let pooled_rows = first..(first + task_rows).min(hp);
                let rows = window(first, g.ho).start..window(pooled_rows.end - 1, g.ho).end;
                self.row_products(image * g.ho + rows.start..image * g.ho + rows.end, &steps, products, tile_starts);
                let maxima = &mut maxima[..pooled_rows.len() * wp * packed.out_pad];
                vectorised(
                    #[inline(always)]
                    || {
                        for (i, max) in maxima.chunks_exact_mut(packed.out_pad).enumerate() {
                            let (py, px) = (first + i / wp, i % wp);
                            max.fill(f32::NEG_INFINITY);
                            for y in window(py, g.ho) {
                                let row = &products[(y - rows.start) * row_len..][..row_len];
                                for x in window(px, g.wo) {
                                    for (m, &v) in max.iter_mut().zip(&row[x * packed.out_pad..][..packed.out_pad]) {
                                        *m = m.max(v);
                                    }
                                }
                            }
                        }
                    },
                );
                let (start, n) = (image * hp * wp + first * wp, pooled_rows.len() * wp);
                write_outputs(maxima, packed.out_pad, start, n, hp * wp, self.conv, None, dst);
            },
        );
    }

    /// The outputs of positions [start, start + n) from their products.
    fn write(&self, products: &[f32], start: usize, n: usize) {
        let (stride, conv) = (self.packed.out_pad, self.conv);
        match self.out {
            Out::Tensor { dst, residual } => {
                write_outputs(products, stride, start, n, self.g.ho * self.g.wo, conv, residual, dst)
            }
            Out::Next { dst, layout, unsuitable } => {
                // SAFETY: the positions are this task's, which no other task writes; `dst` is the
                // buffer of `layout`, which has a pixel for each of them.
                if !unsafe { stage_outputs(products, stride, start..start + n, self.g, conv, dst, layout) } {
                    unsuitable.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Tasks per run of `rayon`'s splitting: at most 4 runs per thread, each allocating its buffers
/// once (rayon calls `init` per run), fine enough to balance, few enough that allocating costs
/// nothing.
fn runs_of(tasks: usize) -> usize {
    tasks.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// activation(products + bias + residual) of positions [start, start + n) (`products`: `n` rows
/// of `stride` f32, position-major) into their places in the NCHW output: per run of positions
/// inside one image, 16 channels at a time (`finish_block`).
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    products: &[f32],
    stride: usize,
    start: usize,
    n: usize,
    plane: usize,
    conv: &ConvWeights,
    residual: Option<&Tensor>,
    dst: SharedOut<f32>,
) {
    let out_c = conv.spec.out_channels;
    let mut r0 = 0;
    while r0 < n {
        let (image, at) = ((start + r0) / plane, (start + r0) % plane);
        let len = (plane - at).min(n - r0);
        for o0 in (0..out_c).step_by(16) {
            let block = Block { base: (image * out_c + o0) * plane + at, plane, len };
            let bias = &conv.bias[o0..(o0 + 16).min(out_c)];
            let residual = residual.map(|r| &r.data[..]);
            // SAFETY: these `len` positions of these channels are written by this task only (the
            // tasks' position ranges are disjoint), and they lie inside `dst`'s buffer, which
            // has the residual's shape.
            unsafe {
                finish_block(&products[r0 * stride + o0..], stride, bias, residual, block, conv.spec.activation, dst)
            };
        }
        r0 += len;
    }
}

/// Where a `finish_block` writes: channel o's `len` outputs from `base + o * plane`.
#[derive(Clone, Copy)]
struct Block {
    base: usize,
    plane: usize,
    len: usize,
}

/// out[base + o * plane + i] = finish(products[i * stride + o], bias[o], residual[same place])
/// for the channels o < bias.len() <= 16 and the positions i < len: channel-major outputs from
/// position-major products. With AVX-512 (every CPU with AMX has it) 16 positions x 16 channels
/// at a time, transposed in registers; the same bits as `finish` one by one (`tests::
/// transposed_outputs_finish_as_the_scalar_epilogue`).
///
/// # Safety
/// No other thread may access the outputs named while this runs, and they must lie inside
/// `dst`'s buffer (and the residual's, if any, which has the same shape).
unsafe fn finish_block(
    products: &[f32],
    stride: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    at: Block,
    act: Activation,
    dst: SharedOut<f32>,
) {
    assert!(bias.len() <= 16 && (at.len == 0 || (at.len - 1) * stride + 16 <= products.len()));
    assert!(bias.is_empty() || residual.is_none_or(|r| at.base + (bias.len() - 1) * at.plane + at.len <= r.len()));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected; the asserts and the caller's contract bound every access.
        unsafe { finish_block_avx512(products, stride, bias, residual, at, act, dst) };
        return;
    }
    for (o, &b) in bias.iter().enumerate() {
        let base = at.base + o * at.plane;
        // SAFETY: as the caller guarantees.
        let run = unsafe { dst.run(base, at.len) };
        for (i, v) in run.iter_mut().enumerate() {
            v.write(finish(products[i * stride + o], b, residual.map_or(0.0, |r| r[base + i]), act));
        }
    }
}

/// # Safety
/// As `finish_block`'s, its asserts holding, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_block_avx512(
    products: &[f32],
    stride: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    at: Block,
    act: Activation,
    dst: SharedOut<f32>,
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    for i0 in (0..at.len).step_by(16) {
        let n = (at.len - i0).min(16);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        // Row i: position i0 + i's 16 channels (zeros past the run); after the transpose, row o:
        // channel o's 16 positions.
        let mut rows = [zero; 16];
        for (i, row) in rows.iter_mut().enumerate().take(n) {
            // SAFETY: (i0 + i) * stride + 16 <= products.len() for i0 + i < len (the assert).
            *row = unsafe { _mm512_loadu_ps(products.as_ptr().add((i0 + i) * stride)) };
        }
        transpose16(&mut rows);
        for ((o, &b), &v) in bias.iter().enumerate().zip(&rows) {
            let place = at.base + o * at.plane + i0;
            // (v + bias) + residual, residual 0 when there is none, as `finish` adds (+0 turns -0 to 0).
            let r = match residual {
                // SAFETY: the masked lanes read residual[place..place + n], inside it (the assert).
                Some(r) => unsafe { _mm512_maskz_loadu_ps(mask, r.as_ptr().add(place)) },
                None => zero,
            };
            let y = finish16(v, _mm512_set1_ps(b), r, act);
            // SAFETY: the masked lanes write these n outputs, which the caller hands to this call.
            unsafe { _mm512_mask_storeu_ps(dst.run(place, n).as_mut_ptr().cast(), mask, y) };
        }
    }
}

/// `finish` on 16 lanes: activation((v + bias) + residual), the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn finish16(
    v: std::arch::x86_64::__m512,
    bias: std::arch::x86_64::__m512,
    residual: std::arch::x86_64::__m512,
    act: Activation,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let y = _mm512_add_ps(_mm512_add_ps(v, bias), residual);
    match act {
        Activation::None => y,
        // max(y, 0) returns its second operand for a NaN y, as f32::max does.
        Activation::Relu => _mm512_max_ps(y, zero),
        // f32::clamp keeps a NaN: blend it back over min(max(y, 0), 6).
        Activation::Relu6 => {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(y, y);
            _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_max_ps(y, zero), _mm512_set1_ps(6.0)), y)
        }
    }
}

/// `split` on 16 lanes: (hi, lo) as bf16 bits in the low half of each 32-bit lane, the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn split16(v: std::arch::x86_64::__m512) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    // to_bf16: round to nearest even, then keep only the sign of a zero exponent.
    let round = |bits: __m512i| {
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
        let normal = _mm512_test_epi32_mask(rounded, _mm512_set1_epi32(0x7f80));
        _mm512_mask_blend_epi32(normal, _mm512_and_si512(rounded, _mm512_set1_epi32(0x8000)), rounded)
    };
    let hi = round(_mm512_castps_si512(v));
    let rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)));
    (hi, round(_mm512_castps_si512(rest)))
}

/// finish(products + bias) of the positions `range` (`products`: a row of `stride` f32 per
/// position, from range.start) written into the next convolution's input, of `layout`: each
/// position's channels, hi and for `Split` lo (or the f32 values), at its pixel, as
/// `ChannelsLast::padded` converts them from the NCHW output (the same bits: `conv_chain::tests`).
/// False where a value is beyond `amx::LIMIT` and the arithmetic is bf16.
///
/// # Safety
/// No other thread may access these positions' values while this runs, and `dst` must be the
/// buffer of `layout`, whose images hold the positions of `g`'s output.
unsafe fn stage_outputs(
    products: &[f32],
    stride: usize,
    range: std::ops::Range<usize>,
    g: &Geometry,
    conv: &ConvWeights,
    dst: SharedOut<u16>,
    layout: Layout,
) -> bool {
    let (c, plane, act) = (conv.spec.out_channels, g.ho * g.wo, conv.spec.activation);
    let (arithmetic, units) = (layout.arithmetic, layout.arithmetic.units() * c);
    assert!(units == layout.c && conv.bias.len() == c && products.len() >= range.len() * stride && c <= stride);
    // SAFETY: the units lie in the buffer and are this call's (the caller's contract); a
    // `ChannelsLast`'s buffer is initialised (a `TileBuf`).
    let run = |at: usize| unsafe { &mut *(dst.run(at, units) as *mut [MaybeUninit<u16>] as *mut [u16]) };
    let mut ok = true;
    for (r, pos) in range.enumerate() {
        let (image, oy, ox) = (pos / plane, pos % plane / g.wo, pos % g.wo);
        let at = layout.at(image, layout.top + oy, layout.left + ox);
        let row = &products[r * stride..][..c];
        let lo = (arithmetic == Arithmetic::Split).then(|| run(layout.part + at));
        let mut values = Values::new(arithmetic, run(at), lo);
        #[cfg(target_arch = "x86_64")]
        if c % 16 == 0 {
            // SAFETY: the tiles run only where the CPU has AVX-512F (`amx` and `F32` require it).
            ok &= unsafe { stage_pixel_avx512(row, &conv.bias, act, values) };
            continue;
        }
        for (j, (&p, &b)) in row.iter().zip(&conv.bias).enumerate() {
            let v = finish(p, b, 0.0, act);
            ok &= v.abs() <= amx::LIMIT;
            values.put(j, v);
        }
    }
    ok || arithmetic == Arithmetic::F32
}

/// One pixel of `stage_outputs`, 16 channels at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stage_pixel_avx512(row: &[f32], bias: &[f32], act: Activation, mut values: Values) -> bool {
    use std::arch::x86_64::*;
    let c = row.len();
    assert!(c.is_multiple_of(16) && bias.len() == c && values.len() == c);
    let (zero, limit) = (_mm512_setzero_ps(), _mm512_set1_ps(amx::LIMIT));
    let mut within: __mmask16 = 0xffff;
    for c0 in (0..c).step_by(16) {
        // SAFETY: c0 + 16 <= c, the length of row, bias and values (the assert).
        unsafe {
            let v = _mm512_loadu_ps(row.as_ptr().add(c0));
            let y = finish16(v, _mm512_loadu_ps(bias.as_ptr().add(c0)), zero, act);
            // |y| <= LIMIT, false for a NaN.
            within &= _mm512_cmp_ps_mask::<_CMP_LE_OQ>(_mm512_abs_ps(y), limit);
            values.put16(c0, y);
        }
    }
    within == 0xffff
}

/// products[r][o] = row r of `rows` . output channel o, for the first `n` rows (rounded up to a
/// `BLOCK`) and every padded output channel.
fn multiply(tiles: &Tiles, rows: &[u16], packed: &PackedConv, segments: usize, n: usize, products: &mut [f32]) {
    let width = segments * packed.kcs * TILE_K;
    let group_len = packed.group_len();
    let steps = amx::in_order(segments * packed.kcs);
    assert!(rows.len() >= n.div_ceil(BLOCK) * BLOCK * width && products.len() >= rows.len() / width * packed.out_pad);
    for cb in (0..packed.out_pad).step_by(BLOCK) {
        for rb in (0..n).step_by(BLOCK) {
            // SAFETY: rows rb..rb+32 of `rows` (width units each, 64-byte aligned as width is a
            // multiple of 32) exist by the assert; groups cb/16 and cb/16 + 1 of the packed weights
            // hold `packed.segments` kcs tiles each, of which the first `segments * kcs` are read; products rows
            // rb..rb+32, columns cb..cb+32 lie inside its rows of out_pad f32.
            unsafe {
                let a = rows.as_ptr().add(rb * width);
                tiles.block_32x32(
                    a,
                    a.add(TILE_ROWS * width),
                    width * 2,
                    &steps,
                    packed.packed.as_ptr().add(cb / TILE_ROWS * group_len),
                    group_len,
                    products.as_mut_ptr().add(rb * packed.out_pad + cb),
                    packed.out_pad * 4,
                );
            }
        }
    }
}

/// A convolution's input in channels-last bf16 (or f32, two units a value) with its zero padding
/// around each image: `data` holds [image][y][x][c] of hi and, for `Split`, then the same of lo
/// (`Layout`), then `slack` zeros that the last tiles of `Job::by_taps` may read into.
pub struct ChannelsLast {
    data: TileBuf<u16>,
    layout: Layout,
    batch: usize,
}

/// Where a pixel's values lie in a `ChannelsLast`.
#[derive(Clone, Copy)]
struct Layout {
    arithmetic: Arithmetic,
    /// Units in the hi part (and in the lo part for `Split`).
    part: usize,
    /// A pixel's units: its channels times `Arithmetic::units`.
    c: usize,
    /// The padded height and width.
    hp: usize,
    wp: usize,
    /// Where an image's pixel (0, 0) lies in its padded rows and columns.
    top: usize,
    left: usize,
}

impl Layout {
    /// Where padded pixel (y, x) of `image` starts in `data`.
    fn at(&self, image: usize, y: usize, x: usize) -> usize {
        ((image * self.hp + y) * self.wp + x) * self.c
    }
}

thread_local! {
    /// The last convolutions' `ChannelsLast` buffers, for the next ones on this thread: their
    /// pages are then neither zeroed nor faulted in again (8 MiB for ResNet's layer1 at batch 8).
    /// Two, as a chain (`conv_chain`) holds a link's input and output at once.
    static SPARE: std::cell::RefCell<Vec<TileBuf<u16>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for ChannelsLast {
    fn drop(&mut self) {
        let data = std::mem::replace(&mut self.data, TileBuf::zeroed(0));
        SPARE.with_borrow_mut(|spare| {
            if spare.len() == 2 {
                spare.remove(0);
            }
            spare.push(data);
        });
    }
}

impl ChannelsLast {
    /// x[:, :, ::step, ::step] (all of it for step 1; `shape` is x's) in channels-last bf16 (or
    /// f32), padded as `g` reads it: `g.pad_top` rows and `g.pad_left` columns of zeros before
    /// each image's pixels, and after them as many as its last output reads; `None` where a
    /// value read is beyond `amx::LIMIT` (checked as it is converted) and the arithmetic is bf16. Without `x`, only the padding is
    /// written: the pixels are the caller's to write (`stage_outputs`).
    fn padded(
        shape: [usize; 4],
        arithmetic: Arithmetic,
        step: usize,
        g: &Geometry,
        x: Option<&Tensor>,
    ) -> Option<ChannelsLast> {
        let [b, c, h, w] = shape;
        // A pixel's units.
        let cu = c * arithmetic.units();
        let (hs, ws) = (h.div_ceil(step), w.div_ceil(step));
        let hp = (g.pad_top + hs).max((g.ho - 1) * g.stride + g.k);
        let wp = (g.pad_left + ws).max((g.wo - 1) * g.stride + g.k);
        let part = b * hp * wp * cu;
        let slack = TILE_ROWS * g.stride * cu + TILE_K;
        let segments = if arithmetic == Arithmetic::Split { 2 } else { 1 };
        let len = segments * part + slack;
        // Every value is written (here or by the caller): reusing an earlier convolution's buffer
        // faults in only what it grows by.
        let spare = SPARE.with_borrow_mut(|spare| {
            let fits = spare.iter().position(|buf| buf.capacity() >= len);
            fits.or(spare.len().checked_sub(1)).map(|i| spare.remove(i))
        });
        let spare = spare.unwrap_or_else(|| TileBuf::zeroed(0));
        let mut data = spare.reuse(len);
        let (parts, tail) = data.split_at_mut(segments * part);
        tail.fill(0);
        let (hi, lo) = parts.split_at_mut(part);
        // One padded row, hi and (for `Split`) lo: zeros, then inside the image's rows the `ws`
        // pixels of source row y from column `pad_left`.
        let convert = |row: usize, mut parts: [Option<&mut [u16]>; 2]| {
            let (image, y) = (row / hp, row % hp);
            let inside = y.checked_sub(g.pad_top).filter(|&y| y < hs);
            let pixels = g.pad_left * cu..(g.pad_left + ws) * cu;
            for part in parts.iter_mut().flatten() {
                if inside.is_none() {
                    part.fill(0);
                } else {
                    part[..pixels.start].fill(0);
                    part[pixels.end..].fill(0);
                }
            }
            let (Some(y), Some(x)) = (inside, x) else { return true };
            let source = &x.data[image * c * h * w + y * step * w..];
            let [Some(hi), lo] = parts.map(|p| p.map(|p| &mut p[pixels.clone()])) else {
                unreachable!("hi is always given")
            };
            let values = Values::new(arithmetic, hi, lo);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F was detected.
                return unsafe { gather_pixels(source, c, h * w, step, values) } || arithmetic == Arithmetic::F32;
            }
            gather_row(source, c, h * w, step, values) || arithmetic == Arithmetic::F32
        };
        let within = match arithmetic {
            Arithmetic::Split => hi
                .par_chunks_mut(wp * cu)
                .zip(lo.par_chunks_mut(wp * cu))
                .enumerate()
                .all(|(row, (hi, lo))| convert(row, [Some(hi), Some(lo)])),
            Arithmetic::Bf16 | Arithmetic::F32 => {
                hi.par_chunks_mut(wp * cu).enumerate().all(|(row, hi)| convert(row, [Some(hi), None]))
            }
        };
        let layout = Layout { arithmetic, part, c: cu, hp, wp, top: g.pad_top, left: g.pad_left };
        within.then_some(ChannelsLast { data, layout, batch: b })
    }

    /// The A row of output position `pos` (image * ho * wo + oy * wo + ox): per kernel row its
    /// `kernel * c` values at `packed.row` intervals, in each segment of the packed depth: [hi |
    /// hi | lo] for `Split`, [hi] for `Bf16` (the f32 values for `F32`). Values between and past the runs (the padding to
    /// whole tiles) are never written and stay zero.
    fn patch(&self, pos: usize, g: &Geometry, packed: &PackedConv, row: &mut [u16]) {
        let (image, oy, ox) = (pos / (g.ho * g.wo), pos % (g.ho * g.wo) / g.wo, pos % g.wo);
        let l = &self.layout;
        let (run, width) = (g.k * l.c, packed.kcs * TILE_K);
        // Segment 1 (hi again, for `Split`) is copied from segment 0 at the end, in one piece.
        let segments: &[(usize, usize)] = match l.arithmetic {
            Arithmetic::Split => &[(0, 0), (l.part, 2)],
            Arithmetic::Bf16 | Arithmetic::F32 => &[(0, 0)],
        };
        for ky in 0..g.k {
            let at = l.at(image, oy * g.stride + ky, ox * g.stride);
            for &(part, segment) in segments {
                copy_run(&mut row[segment * width + ky * packed.row..][..run], &self.data[part + at..][..run]);
            }
        }
        if l.arithmetic == Arithmetic::Split {
            row.copy_within(..width, width);
        }
    }

    /// `Job::by_taps`'s steps [A, B] in bytes: for each kernel row ky and each 32 values d0 of its
    /// depth (`packed.row`: a tap's 32 channels, or the whole row), A from the tile's first
    /// position's pixel (ky, 0) plus d0 and B from the packed tile of depth ky * row + d0: hi.w_hi,
    /// then for `Split` hi.w_lo and lo.w_hi. Every A row read lies in `data`: a valid position's
    /// taps are inside its image's padded pixels (up to 31 values past its last tap when a tile
    /// holds the row), and the last tile of a row reads at most 15 positions (15 stride pixels)
    /// past it, into the next padded row or `slack`.
    fn steps(&self, g: &Geometry, packed: &PackedConv) -> Vec<[usize; 2]> {
        let (l, tile) = (&self.layout, 2 * B_TILE_LEN);
        let mut steps = Vec::with_capacity(3 * packed.kcs);
        for ky in 0..g.k {
            for d0 in (0..packed.row).step_by(TILE_K) {
                let a = 2 * (l.at(0, ky, 0) + d0);
                let depth = (ky * packed.row + d0) / TILE_K;
                steps.push([a, depth * tile]);
                if l.arithmetic == Arithmetic::Split {
                    steps.push([a, (packed.kcs + depth) * tile]);
                    steps.push([a + 2 * l.part, depth * tile]);
                }
            }
        }
        steps
    }
}

/// dst = src, for a patch's runs: the stem's are 21 values, where a call to memcpy per run cost
/// more than the copy. Short runs move blocks of 16 values (32 bytes) or 4 (8 bytes), the last
/// block overlapping the one before (with 4-value blocks only, the stem's patches took 13.8 ms of
/// thread time a batch of 8 at 256 px in the split arithmetic, 11.6 ms with 16-value blocks;
/// bf16's one segment stayed at 7.7).
#[inline(always)]
fn copy_run(dst: &mut [u16], src: &[u16]) {
    let n = src.len();
    if !(4..64).contains(&n) {
        dst.copy_from_slice(src);
        return;
    }
    let block = if n >= 16 { 16 } else { 4 };
    let mut at = 0;
    while at + block < n {
        copy_block(&mut dst[at..], &src[at..], block);
        at += block;
    }
    copy_block(&mut dst[n - block..], &src[n - block..], block);
}

/// dst[..len] = src[..len] for len 4 or 16, as one fixed-size move.
#[inline(always)]
fn copy_block(dst: &mut [u16], src: &[u16], len: usize) {
    match len {
        16 => dst[..16].copy_from_slice(&<[u16; 16]>::try_from(&src[..16]).expect("16 values")),
        _ => dst[..4].copy_from_slice(&<[u16; 4]>::try_from(&src[..4]).expect("4 values")),
    }
}

/// A run of pixels' values in a `ChannelsLast`, in the form of its `Arithmetic`.
enum Values<'a> {
    /// bf16: hi, and lo (the same run in the lo part) for `Split`.
    Bf16 { hi: &'a mut [u16], lo: Option<&'a mut [u16]> },
    /// The f32 values, two units each.
    F32(&'a mut [f32]),
}

impl<'a> Values<'a> {
    /// The values of `arithmetic` in the units `hi` (and `lo` for `Split`).
    fn new(arithmetic: Arithmetic, hi: &'a mut [u16], lo: Option<&'a mut [u16]>) -> Values<'a> {
        assert!(lo.as_ref().is_none_or(|lo| lo.len() == hi.len()), "Values: hi and lo of one run");
        if arithmetic != Arithmetic::F32 {
            return Values::Bf16 { hi, lo };
        }
        // SAFETY: any bits are a valid f32; the assert keeps the view inside `hi`.
        let (before, values, after) = unsafe { hi.align_to_mut::<f32>() };
        assert!(before.is_empty() && after.is_empty(), "Values: f32 units must start an f32 and pair up");
        Values::F32(values)
    }

    fn len(&self) -> usize {
        match self {
            Values::Bf16 { hi, .. } => hi.len(),
            Values::F32(values) => values.len(),
        }
    }

    /// Value i = v.
    #[inline(always)]
    fn put(&mut self, i: usize, v: f32) {
        match self {
            Values::Bf16 { hi, lo } => {
                let (h, l) = split(v);
                hi[i] = h;
                if let Some(lo) = lo {
                    lo[i] = l;
                }
            }
            Values::F32(values) => values[i] = v,
        }
    }

    /// Values i..i + 16 = v, as `put` does one by one (`split16` for bf16).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn put16(&mut self, i: usize, v: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        assert!(i + 16 <= self.len(), "put16: past the run");
        // SAFETY: i + 16 values lie in each slice (the assert, and `new`'s for lo).
        unsafe {
            match self {
                Values::Bf16 { hi, lo } => {
                    let (h, l) = split16(v);
                    _mm256_storeu_si256(hi.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(h));
                    if let Some(lo) = lo {
                        _mm256_storeu_si256(lo.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(l));
                    }
                }
                Values::F32(values) => _mm512_storeu_ps(values.as_mut_ptr().add(i), v),
            }
        }
    }
}

/// Writes every `step`th pixel of one image row of an NCHW tensor (`src` from the row's first
/// value in channel 0, channels `plane` apart) to `out` as [x][c]; whether every value written
/// is within `amx::LIMIT` (so finite). In blocks of 16 pixels x 16 channels: every cache line
/// read is used at once (a pixel's channels, 64 KiB apart at 128 px, would all fall in one set
/// of L1).
fn gather_row(src: &[f32], c: usize, plane: usize, step: usize, mut out: Values) -> bool {
    const B: usize = 16;
    let w = out.len() / c;
    let mut within = true;
    for x0 in (0..w).step_by(B) {
        let nx = B.min(w - x0);
        for c0 in (0..c).step_by(B) {
            let nc = B.min(c - c0);
            let mut block = [[0f32; B]; B];
            for (j, line) in block.iter_mut().enumerate().take(nc) {
                let values = src[(c0 + j) * plane + x0 * step..].iter().step_by(step).take(nx);
                for (v, &x) in line.iter_mut().zip(values) {
                    within &= x.abs() <= amx::LIMIT;
                    *v = x;
                }
            }
            for i in 0..nx {
                for (j, line) in block.iter().enumerate().take(nc) {
                    out.put((x0 + i) * c + c0 + j, line[i]);
                }
            }
        }
    }
    within
}

/// `gather_row` with AVX-512, the same bits and answer: 16 pixels x 16 channels at a time, each
/// channel's pixels read as one vector (contiguous for step 1, else gathered from the same few
/// lines), so that every source line is read whole and the planes' pages are touched 16 values
/// at a time (a gather of one pixel's 16 channels touched 16 pages: `perf` of predict at batch 1,
/// 5.1% -> 3.6% of its samples), checked against `amx::LIMIT` and split 16 lanes wide. A whole
/// block of 16 channels is transposed in registers and stored as 16 contiguous bf16 per pixel;
/// fewer channels (the stem's 3) go through a small array, as `gather_row` does.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_pixels(src: &[f32], c: usize, plane: usize, step: usize, mut out: Values) -> bool {
    use std::arch::x86_64::*;
    let w = out.len() / c;
    assert!(out.len() == w * c);
    assert!(w == 0 || (c - 1) * plane + (w - 1) * step < src.len(), "gather_pixels: source too short");
    assert!(16 * step <= i32::MAX as usize, "gather_pixels: steps too large for 32-bit offsets");
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(step as i32),
    );
    let limit = _mm512_set1_ps(amx::LIMIT);
    let mut within = true;
    for x0 in (0..w).step_by(16) {
        let n = (w - x0).min(16);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        for c0 in (0..c).step_by(16) {
            let nc = (c - c0).min(16);
            // Row j: channel c0 + j at pixels x0..x0 + n (zeros past them and past nc).
            let mut rows = [_mm512_setzero_ps(); 16];
            for (j, row) in rows.iter_mut().enumerate().take(nc) {
                let at = (c0 + j) * plane + x0 * step;
                // SAFETY: the masked lanes i < n read element at + i * step, that is
                // (c0 + j) * plane + (x0 + i) * step with x0 + i < w: inside src (the assert).
                *row = unsafe {
                    match step {
                        1 => _mm512_maskz_loadu_ps(mask, src.as_ptr().add(at)),
                        _ => _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, src.as_ptr().add(at)),
                    }
                };
                // |v| <= LIMIT, false for a NaN; the zeros past n pass.
                within &= _mm512_cmp_ps_mask::<_CMP_LE_OQ>(_mm512_abs_ps(*row), limit) == 0xffff;
            }
            // Fewer than 16 channels: through a block of lines, each a channel's n pixels.
            if nc < 16 {
                match &mut out {
                    Values::F32(values) => {
                        let mut block = [[0f32; 16]; 16];
                        for (j, &row) in rows.iter().enumerate().take(nc) {
                            // SAFETY: the store writes one of the block's lines of 16 values.
                            unsafe { _mm512_storeu_ps(block[j].as_mut_ptr(), row) };
                        }
                        for i in 0..n {
                            for (j, line) in block.iter().enumerate().take(nc) {
                                values[(x0 + i) * c + c0 + j] = line[i];
                            }
                        }
                    }
                    Values::Bf16 { hi, lo } => {
                        let mut block = [[0u16; 16]; 2 * 16];
                        for (j, &row) in rows.iter().enumerate().take(nc) {
                            let (high, low) = split16(row);
                            // SAFETY: each store writes one of the block's lines of 16 values.
                            unsafe {
                                _mm256_storeu_si256(block[j].as_mut_ptr().cast(), _mm512_cvtepi32_epi16(high));
                                _mm256_storeu_si256(block[16 + j].as_mut_ptr().cast(), _mm512_cvtepi32_epi16(low));
                            }
                        }
                        let (highs, lows) = block.split_at(16);
                        for i in 0..n {
                            let at = (x0 + i) * c + c0;
                            for (j, (high, low)) in highs.iter().zip(lows).enumerate().take(nc) {
                                hi[at + j] = high[i];
                                if let Some(lo) = lo.as_deref_mut() {
                                    lo[at + j] = low[i];
                                }
                            }
                        }
                    }
                }
                continue;
            }
            // Transposed, row i: pixel x0 + i's 16 channels.
            transpose16(&mut rows);
            for (i, &v) in rows.iter().enumerate().take(n) {
                out.put16((x0 + i) * c + c0, v);
            }
        }
    }
    within
}

/// The output (maybe not yet initialised), written by the tasks at disjoint positions.
struct SharedOut<T>(*mut MaybeUninit<T>);

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedOut<T> {}

// SAFETY: the tasks write disjoint elements (each its own output positions) and nothing reads
// the buffer until they have all finished.
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The `len` elements from `at`.
    ///
    /// # Safety
    /// They must lie inside the buffer, and no other thread may access them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, at: usize, len: usize) -> &mut [MaybeUninit<T>] {
        // SAFETY: as the caller guarantees.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::{conv2d, CpuConv};
    use super::{amx, Arithmetic};
    use crate::backend::{Activation, ConvSpec, ConvWeights, Padding};
    use crate::rng::SplitMix64;
    use crate::tensor::Tensor;

    /// The convolutions the backbones have (stem, 3x3, strided, 1x1 downsample, TF padding), with
    /// output channels that are not a multiple of 32 and positions that end mid-task; channels
    /// that are a multiple of 32 (by taps) and others (by patches), and by taps rows of 1 to 3
    /// tiles that end mid-tile, and 1x1 over fewer than 32 channels (a tile row reads into the
    /// next pixel, against zero weights).
    const SHAPES: [(usize, usize, usize, usize, Padding, usize); 9] = [
        (3, 64, 7, 2, Padding::Symmetric(3), 29),
        (16, 40, 3, 1, Padding::Symmetric(1), 13),
        (64, 32, 3, 2, Padding::Symmetric(1), 17),
        (64, 96, 1, 2, Padding::Symmetric(0), 11),
        (24, 48, 5, 2, Padding::TfSame, 15),
        (32, 16, 3, 1, Padding::Symmetric(1), 3),
        (64, 40, 3, 1, Padding::Symmetric(1), 36),
        (32, 48, 5, 2, Padding::TfSame, 40),
        (24, 40, 1, 1, Padding::Symmetric(0), 13),
    ];

    fn random(n: usize, scale: f64, rng: &mut SplitMix64) -> Vec<f32> {
        (0..n).map(|_| (scale * rng.normal()) as f32).collect()
    }

    /// The exact result in float64 and, per output, sum |a||w| (the scale of its rounding).
    fn float64(x: &Tensor, conv: &ConvWeights, residual: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let s = &conv.spec;
        let [b, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let (ho, top) = s.padding.resolve(h, s.kernel, s.stride);
        let (wo, left) = s.padding.resolve(w, s.kernel, s.stride);
        let (mut exact, mut scale) = (Vec::new(), Vec::new());
        for (image, o, oy, ox) in (0..b)
            .flat_map(|i| (0..s.out_channels).map(move |o| (i, o)))
            .flat_map(|(i, o)| (0..ho).flat_map(move |y| (0..wo).map(move |x| (i, o, y, x))))
        {
            let (mut sum, mut abs) = (conv.bias[o] as f64, 0.0);
            for ci in 0..c {
                for ky in 0..s.kernel {
                    for kx in 0..s.kernel {
                        let (iy, ix) = (
                            (oy * s.stride + ky) as isize - top as isize,
                            (ox * s.stride + kx) as isize - left as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let a = x.data[((image * c + ci) * h + iy as usize) * w + ix as usize] as f64;
                        let wt = conv.weight[((o * c + ci) * s.kernel + ky) * s.kernel + kx] as f64;
                        (sum, abs) = (sum + a * wt, abs + (a * wt).abs());
                    }
                }
            }
            sum += residual.data[((image * s.out_channels + o) * ho + oy) * wo + ox] as f64;
            exact.push(sum.max(0.0));
            scale.push(abs);
        }
        (exact, scale)
    }

    /// Each arithmetic against float64, within its bound times `slack` (as documented in the
    /// module: u = 2^-24, gamma_n = n u / (1 - n u); the epilogue adds 2 roundings of the result).
    fn check(arithmetic: Option<Arithmetic>) {
        let mut rng = SplitMix64::new(5);
        for (c, out, k, stride, padding, side) in SHAPES {
            let spec = ConvSpec {
                in_channels: c,
                out_channels: out,
                kernel: k,
                stride,
                padding,
                groups: 1,
                activation: Activation::Relu,
            };
            let conv = ConvWeights {
                spec,
                weight: random(out * c * k * k, 0.2, &mut rng).into(),
                bias: random(out, 0.5, &mut rng),
            };
            let x = Tensor::new(vec![3, c, side, side], random(3 * c * side * side, 1.0, &mut rng));
            let (ho, _) = padding.resolve(side, k, stride);
            let residual = Tensor::new(vec![3, out, ho, ho], random(3 * out * ho * ho, 1.0, &mut rng));
            let prepared = CpuConv::new(&conv, arithmetic);
            assert_eq!(prepared.packed.is_some(), arithmetic.is_some(), "the tile path must be the one tested");
            let got = conv2d(&x, &prepared, arithmetic, Some(&residual)).unwrap();
            let (exact, scale) = float64(&x, &conv, &residual);
            let u = f64::from(f32::EPSILON) / 2.0;
            let kk = (c * k * k) as f64;
            let gamma = |n: f64| n * u / (1.0 - n * u);
            let per_product = match arithmetic {
                None | Some(Arithmetic::F32) => gamma(kk),
                Some(Arithmetic::Split) => 3.0 * 2f64.powi(-18) + gamma(3.0 * kk),
                // hi within 2^-9 |x| of x: each product within (2^-8 + 2^-18) |a||w|.
                Some(Arithmetic::Bf16) => 2f64.powi(-8) + 2f64.powi(-18) + gamma(kk),
            };
            let mut worst = 0f64;
            for ((&g, &e), &s) in got.data.iter().zip(&exact).zip(&scale) {
                let bound = per_product * s + 3.0 * u * (e.abs() + s) + 1e-30;
                worst = worst.max((g as f64 - e).abs() / bound);
            }
            println!("{arithmetic:?} {c}->{out} k{k}/{stride}: largest error / bound {worst:.3}");
            assert!(worst <= 1.0, "{arithmetic:?} {c}->{out} k{k}/{stride}: error {worst} x its bound");
        }
    }

    /// The AVX-512 conversion writes the same bits as the scalar one, for every rounding case.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn runs_of_every_length_copy_whole() {
        // Lengths through every block size and overlap: 4- and 16-value blocks, memcpy.
        for n in 0..80 {
            let src: Vec<u16> = (0..n as u16).map(|v| v * 7 + 1).collect();
            let mut dst = vec![0u16; n];
            super::copy_run(&mut dst, &src);
            assert_eq!(dst, src, "{n} values");
        }
    }

    /// The AVX-512 conversion writes the same bits as the scalar one and gives the same answer
    /// on the values' range, for every rounding case, whole and partial blocks of 16 channels
    /// (the stem's 3, EfficientNet's 24), both steps; a value past `amx::LIMIT` or a NaN in the
    /// pixels read is refused, one in a pixel that a step skips is not.
    #[test]
    fn gathered_pixels_round_and_check_as_the_scalar_split() {
        use super::{gather_pixels, gather_row, Arithmetic, TileBuf, Values};
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: the CPU has no AVX-512F");
            return;
        }
        let mut rng = SplitMix64::new(8);
        // Ties to even both ways, subnormals (flushed), signed zeros, large and tiny values.
        let edges = [f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), 1e-40, -1e-45, -0.0, 3e14, 1e-30];
        let (h, w) = (3, 21);
        for c in [3, 24, 32] {
            let data: Vec<f32> = (0..c * h * w)
                .map(|i: usize| if i.is_multiple_of(7) { edges[i / 7 % edges.len()] } else { rng.normal() as f32 })
                .collect();
            // Pixel 1 (skipped at step 2) of the middle row, then pixel 2 (read at both steps).
            let cases = [(None, [true, true]), (Some((1, 2e15)), [false, true]), (Some((2, f32::NAN)), [false, false])];
            for (bad, within_by_step) in cases {
                let mut data = data.clone();
                if let Some((pixel, value)) = bad {
                    data[(c - 1) * h * w + w + pixel] = value;
                }
                for (step, within) in [1, 2].into_iter().zip(within_by_step) {
                    let ws = w.div_ceil(step);
                    let src = &data[w..]; // image row 1
                    let (mut hi, mut lo) = (vec![0u16; ws * c], vec![0u16; ws * c]);
                    let split = Arithmetic::Split;
                    // SAFETY: AVX-512F was detected above.
                    let got = unsafe { gather_pixels(src, c, h * w, step, Values::new(split, &mut hi, Some(&mut lo))) };
                    let (mut want_hi, mut want_lo) = (vec![1u16; ws * c], vec![1u16; ws * c]);
                    let want = gather_row(src, c, h * w, step, Values::new(split, &mut want_hi, Some(&mut want_lo)));
                    assert_eq!((got, want), (within, within), "{c} channels, step {step}, {bad:?}");
                    assert_eq!((hi, lo), (want_hi, want_lo), "{c} channels, step {step}");
                    // F32: the values themselves, in either order of the units' halves.
                    let mut units = vec![TileBuf::<u16>::zeroed(2 * ws * c), TileBuf::<u16>::zeroed(2 * ws * c)];
                    // SAFETY: AVX-512F was detected above.
                    unsafe { gather_pixels(src, c, h * w, step, Values::new(Arithmetic::F32, &mut units[0], None)) };
                    gather_row(src, c, h * w, step, Values::new(Arithmetic::F32, &mut units[1], None));
                    let values: Vec<u32> = (0..ws * c).map(|i| src[i % c * h * w + i / c * step].to_bits()).collect();
                    for got in &units {
                        let got: Vec<u32> = got.chunks(2).map(|u| u[0] as u32 | (u[1] as u32) << 16).collect();
                        assert_eq!(got, values, "f32, {c} channels, step {step}");
                    }
                }
            }
        }
    }

    /// The AVX-512 epilogue writes the same bits as `finish` one output at a time, for every
    /// number of positions and channels in a block.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposed_outputs_finish_as_the_scalar_epilogue() {
        use super::super::conv::finish;
        use super::{finish_block, Block, MaybeUninit, SharedOut};
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: the CPU has no AVX-512F");
            return;
        }
        let mut rng = SplitMix64::new(12);
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 6.0, -6.5, 1e30];
        let mut value =
            |i: usize| if i.is_multiple_of(5) { specials[i / 5 % specials.len()] } else { (4.0 * rng.normal()) as f32 };
        for (len, stride, channels) in [(1, 16, 1), (16, 64, 16), (37, 32, 5), (64, 96, 16), (20, 48, 13)] {
            let products: Vec<f32> = (0..len * stride).map(&mut value).collect();
            let (plane, base) = (len + 3, 2);
            let residual: Vec<f32> = (0..channels * plane + base).map(|i| value(i + 2)).collect();
            let biases: Vec<f32> = (0..channels).map(|o| [0.5, -0.0, f32::INFINITY][o % 3]).collect();
            for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                for res in [None, Some(&residual[..])] {
                    let mut out = vec![MaybeUninit::new(7.0f32); residual.len()];
                    let at = Block { base, plane, len };
                    // SAFETY: the block's outputs lie inside `out`, which only this call uses.
                    unsafe { finish_block(&products, stride, &biases, res, at, act, SharedOut(out.as_mut_ptr())) };
                    // SAFETY: every element was initialised (7.0 where the block writes nothing).
                    let got: Vec<u32> = out.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect();
                    let mut want = vec![7.0f32.to_bits(); residual.len()];
                    for (o, &b) in biases.iter().enumerate() {
                        for i in 0..len {
                            let place = base + o * plane + i;
                            let r = res.map_or(0.0, |r| r[place]);
                            want[place] = finish(products[i * stride + o], b, r, act).to_bits();
                        }
                    }
                    assert_eq!(got, want, "{len} positions x {channels} channels, {act:?}, residual {}", res.is_some());
                }
            }
        }
    }

    /// A convolution pooled as its rows are computed (`conv2d_max_pool`) has the bits of
    /// `max_pool` of its output, in each arithmetic on the tiles: ResNet's stem (pool 3, stride
    /// 2, padding 1) on an odd size, a batch of 2, and at 256 px, where an image's pooled rows
    /// are split between tasks; a 3x3 convolution with a pool whose windows do not overlap and
    /// no activation. Where the fused pass does not apply (ReLU6, a convolution read by
    /// patches) it says so, and the backend's `conv2d_max_pool` runs the two.
    #[test]
    fn pooled_convolutions_equal_the_two_in_turn() {
        use super::super::conv::conv2d_max_pool;
        use super::super::{pool::max_pool, CpuBackend};
        use crate::backend::Backend;
        let mut rng = SplitMix64::new(8);
        let (relu, none, relu6) = (Activation::Relu, Activation::None, Activation::Relu6);
        let cases = [
            (2, 3, 64, 7, 2, 29, relu, [3, 2, 1]),
            (1, 3, 64, 7, 2, 256, relu, [3, 2, 1]),
            (2, 32, 40, 3, 1, 21, none, [2, 2, 0]),
            (1, 3, 64, 7, 2, 29, relu6, [3, 2, 1]),
            (1, 16, 40, 3, 1, 13, relu, [3, 2, 1]),
        ];
        for arithmetic in [Arithmetic::Split, Arithmetic::Bf16, Arithmetic::F32] {
            if let Some(reason) = arithmetic.unavailable_reason() {
                println!("{arithmetic:?} skipped: {reason}");
                continue;
            }
            let backend = CpuBackend { tiles: Some(arithmetic) };
            for (b, c, out, k, stride, side, activation, pool) in cases {
                let padding = Padding::Symmetric(k / 2);
                let spec =
                    ConvSpec { in_channels: c, out_channels: out, kernel: k, stride, padding, groups: 1, activation };
                let conv = ConvWeights {
                    spec,
                    weight: random(out * c * k * k, 0.2, &mut rng).into(),
                    bias: random(out, 0.5, &mut rng),
                };
                let x = Tensor::new(vec![b, c, side, side], random(b * c * side * side, 1.0, &mut rng));
                let prepared = CpuConv::new(&conv, Some(arithmetic));
                let [pk, ps, pp] = pool;
                let want = max_pool(&conv2d(&x, &prepared, Some(arithmetic), None).unwrap(), pk, ps, pp).unwrap();
                let fused = conv2d_max_pool(&x, &prepared, Some(arithmetic), pool).unwrap();
                let by_taps = prepared.packed.as_ref().unwrap().row.is_multiple_of(super::TILE_K);
                let case =
                    format!("{arithmetic:?} {c}->{out} k{k}/{stride} at {side} px, {activation:?}, pool {pool:?}");
                assert_eq!(fused.is_some(), by_taps && activation != relu6, "{case}: whether the pass is fused");
                let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                for got in fused.into_iter().chain([backend.conv2d_max_pool(&x, &prepared, pk, ps, pp).unwrap()]) {
                    assert_eq!(got.shape, want.shape, "{case}");
                    assert!(bits(&got) == bits(&want), "{case}");
                }
            }
        }
    }

    #[test]
    fn f32_products_stay_within_the_bound() {
        check(None);
    }

    #[test]
    fn f32_tiles_stay_within_the_bound() {
        match Arithmetic::F32.unavailable_reason() {
            Some(reason) => println!("skipped: {reason}"),
            None => check(Some(Arithmetic::F32)),
        }
    }

    #[test]
    fn split_products_stay_within_the_bound() {
        match amx::unavailable_reason() {
            Some(reason) => println!("skipped: {reason}"),
            None => check(Some(Arithmetic::Split)),
        }
    }

    #[test]
    fn bf16_products_stay_within_the_bound() {
        match amx::unavailable_reason() {
            Some(reason) => println!("skipped: {reason}"),
            None => check(Some(Arithmetic::Bf16)),
        }
    }
}
