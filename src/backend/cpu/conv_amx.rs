//! Convolutions as AMX bf16 tile products, where the CPU has AMX-BF16 (see `amx`).
//!
//! The input is converted once per convolution to channels-last (NHWC) bf16, so that the patch
//! of an output position is `kernel` runs of `kernel * channels` contiguous values, one run per
//! kernel row: im2col becomes a few copies per position, done for 64 to 256 positions at a time in
//! a task's own buffer (AMX's A operand), and the products run while those rows are in L2. The
//! weights are packed as B tiles once, when the model loads (`PackedConv`). The products come out
//! position-major; the epilogue gathers each channel's from them into the NCHW output.
//!
//! Two precisions (`Arithmetic`):
//! - `Split`, the default: each value is split as x = hi + lo + r with hi, lo bf16 and
//!   |r| <= 2^-17 |x|, and a.w is taken as a_hi.w_hi + a_hi.w_lo + a_lo.w_hi, one product three
//!   times as deep ([a_hi | a_hi | a_lo] against [w_hi | w_lo | w_hi]). Dropping a_lo.w_lo and the residuals leaves each product within 3 2^-18 |a||w|, and
//!   AMX sums in f32: the output is within (3 2^-18 + gamma_3kk) sum |a||w| of the exact value,
//!   where the f32 im2col + sgemm is within gamma_kk of it (`tests::split_products_stay_within_the_bound`).
//! - `Bf16` (opt-in, `--precision bf16`): a_hi.w_hi only, one third of the work, each product within
//!   about 2^-7 |a||w|.

use super::amx::{self, split, to_bf16, TileBuf, Tiles, B_TILE_LEN, TILE_K, TILE_ROWS};
use super::conv::{finish, Geometry};
use crate::backend::{Activation, ConvWeights};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows (output positions) and columns (output channels) of one `Tiles::block_32x32`.
const BLOCK: usize = 2 * TILE_ROWS;
/// A task's split rows (AMX's A operand) are at most this many bytes, so that they stay in L2
/// while every output channel block is multiplied with them; a task has 64 to 256 positions.
/// Shallow convolutions get the long tasks: the stem's (7 x 7 x 3) 256 positions write each
/// output channel in runs of 1 KiB instead of 256 bytes (predict's conv1 186 -> 175 ms over 50
/// images at batch 8).
const TASK_BYTES: usize = 256 << 10;

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
}

impl Arithmetic {
    /// Segments of the A rows: [hi | hi | lo] or [hi].
    fn segments(self) -> usize {
        match self {
            Arithmetic::Split => 3,
            Arithmetic::Bf16 => 1,
        }
    }
}

/// A convolution's weights as AMX's B operand: per group of 16 output channels, three segments
/// [hi | lo | hi] of `kcs` packed tiles each over the depth (ky * kernel + kx) * channels + c
/// (channels-last, as the A rows are), zero-padded to whole tiles and to a multiple of 32 output
/// channels. `Bf16` reads the first segment only.
pub struct PackedConv {
    packed: TileBuf<u16>,
    kcs: usize,
    out_pad: usize,
}

impl PackedConv {
    /// The packed form of `conv`, or `None` where the tile path does not apply: no usable AMX,
    /// a grouped convolution, or weights that are not finite or beyond `amx::suitable`'s limit.
    pub fn new(conv: &ConvWeights) -> Option<PackedConv> {
        let s = &conv.spec;
        if amx::unavailable_reason().is_some() || s.groups != 1 || !amx::suitable(&conv.weight) {
            return None;
        }
        let (c, taps) = (s.in_channels, s.kernel * s.kernel);
        let kcs = (c * taps).div_ceil(TILE_K);
        let out_pad = s.out_channels.div_ceil(BLOCK) * BLOCK;
        let width = kcs * TILE_K;
        let packed = amx::pack_b(s.out_channels, out_pad / TILE_ROWS, 3 * kcs, |o, depth| {
            for (i, &w) in conv.weight[o * c * taps..][..c * taps].iter().enumerate() {
                // PyTorch's order is (c, ky, kx); the A rows' is (ky, kx, c).
                let at = i % taps * c + i / taps;
                let (hi, lo) = split(w);
                (depth[at], depth[width + at], depth[2 * width + at]) = (hi, lo, hi);
            }
        });
        Some(PackedConv { packed, kcs, out_pad })
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
    if !amx::suitable(&x.data) {
        return None;
    }
    let (b, out_c, plane) = (x.shape[0], conv.spec.out_channels, g.ho * g.wo);
    // A 1x1 convolution without padding reads only every `stride`th pixel: convert those, and
    // run it as a stride-1 convolution of them (ResNet's strided downsampling, a quarter of the
    // conversion it would otherwise make).
    let (input, g) = match (g.k, g.pad_top, g.pad_left) {
        (1, 0, 0) => (ChannelsLast::of(x, arithmetic, g.stride), &Geometry { h: g.ho, w: g.wo, stride: 1, ..*g }),
        _ => (ChannelsLast::of(x, arithmetic, 1), g),
    };
    let segments = arithmetic.segments();
    let width = segments * packed.kcs * TILE_K;
    let total = b * plane;
    // Not zeroed: the tasks write every element (their positions cover 0..total, each for
    // every channel), and zeroing 32 MiB (the stem's output at batch 8) cost 2.6 ms a batch.
    let mut out: Vec<f32> = Vec::with_capacity(b * out_c * plane);
    let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr());
    let task_rows = task_rows(width);
    let tasks = total.div_ceil(task_rows);
    // At most 4 runs of tasks per thread, each allocating its buffers once (rayon calls `init`
    // per run): fine enough to balance, few enough that the allocations cost nothing.
    let per_run = tasks.div_ceil(4 * rayon::current_num_threads()).max(1);
    (0..tasks).into_par_iter().with_min_len(per_run).for_each_init(
        || (TileBuf::<u16>::zeroed(task_rows * width), TileBuf::<f32>::zeroed(task_rows * packed.out_pad)),
        |(rows, products), task| {
            let start = task * task_rows;
            let n = task_rows.min(total - start);
            for (r, row) in rows.chunks_exact_mut(width).take(n).enumerate() {
                input.patch(start + r, g, packed.kcs * TILE_K, row);
            }
            // SAFETY: `packed` exists, so `amx::unavailable_reason()` returned `None`.
            let tiles = unsafe { Tiles::configure() };
            multiply(&tiles, rows, packed, segments, n, products);
            drop(tiles);
            write_outputs(products, packed.out_pad, start, n, plane, conv, residual, dst);
        },
    );
    // SAFETY: the tasks initialised all b * out_c * plane elements (above).
    unsafe { out.set_len(b * out_c * plane) };
    Some(out)
}

/// activation(products + bias + residual) of positions [start, start + n) (`products`: `n` rows
/// of `stride` f32, position-major) into their places in the NCHW output: per run of positions
/// inside one image, channel by channel, so that every write is contiguous (`finish_run`).
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    products: &[f32],
    stride: usize,
    start: usize,
    n: usize,
    plane: usize,
    conv: &ConvWeights,
    residual: Option<&Tensor>,
    dst: SharedOut,
) {
    let out_c = conv.spec.out_channels;
    let mut r0 = 0;
    while r0 < n {
        let (image, at) = ((start + r0) / plane, (start + r0) % plane);
        let len = (plane - at).min(n - r0);
        for o in 0..out_c {
            let base = (image * out_c + o) * plane + at;
            // SAFETY: these `len` positions of channel o are written by this task only (the
            // tasks' position ranges are disjoint), and they lie inside `out`.
            let run = unsafe { dst.run(base, len) };
            let residual = residual.map(|r| &r.data[base..base + len]);
            let column = &products[r0 * stride + o..];
            finish_run(column, stride, run, conv.bias[o], residual, conv.spec.activation);
        }
        r0 += len;
    }
}

/// run[i] = finish(column[i * stride], bias, residual[i]): one channel's outputs from the
/// position-major products. With AVX-512 (every CPU with AMX has it) 16 at a time by a gather
/// from the products, in L1; the same bits as `finish` one by one (`tests::
/// gathered_outputs_finish_as_the_scalar_epilogue`).
fn finish_run(
    column: &[f32],
    stride: usize,
    run: &mut [MaybeUninit<f32>],
    bias: f32,
    residual: Option<&[f32]>,
    act: Activation,
) {
    assert!(run.is_empty() || (run.len() - 1) * stride < column.len(), "finish_run: products too short");
    assert!(residual.is_none_or(|r| r.len() == run.len()) && 16 * stride <= i32::MAX as usize);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected; the asserts bound every access.
        unsafe { finish_run_avx512(column, stride, run, bias, residual, act) };
        return;
    }
    for (i, v) in run.iter_mut().enumerate() {
        v.write(finish(column[i * stride], bias, residual.map_or(0.0, |r| r[i]), act));
    }
}

/// # Safety
/// The CPU must support AVX-512F; `column` must hold (run.len() - 1) * stride + 1 values and
/// `residual` (if any) run.len(), with 16 * stride within i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_run_avx512(
    column: &[f32],
    stride: usize,
    run: &mut [MaybeUninit<f32>],
    bias: f32,
    residual: Option<&[f32]>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let (zero, six, bias) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0), _mm512_set1_ps(bias));
    for i0 in (0..run.len()).step_by(16) {
        let mask: __mmask16 = if run.len() - i0 >= 16 { 0xffff } else { (1u16 << (run.len() - i0)) - 1 };
        // SAFETY (all three): the masked lanes i < run.len() - i0 read column[(i0 + i) * stride],
        // residual[i0 + i] and write run[i0 + i], inside their slices by the caller's contract.
        let v = unsafe { _mm512_mask_i32gather_ps::<4>(zero, mask, offsets, column.as_ptr().add(i0 * stride)) };
        // (v + bias) + residual, residual 0 when there is none, as `finish` adds (+0 turns -0 to 0).
        let r = match residual {
            Some(r) => unsafe { _mm512_maskz_loadu_ps(mask, r.as_ptr().add(i0)) },
            None => zero,
        };
        let mut y = _mm512_add_ps(_mm512_add_ps(v, bias), r);
        y = match act {
            Activation::None => y,
            // max(y, 0) returns its second operand for a NaN y, as f32::max does.
            Activation::Relu => _mm512_max_ps(y, zero),
            // f32::clamp keeps a NaN: blend it back over min(max(y, 0), 6).
            Activation::Relu6 => {
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(y, y);
                _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_max_ps(y, zero), six), y)
            }
        };
        unsafe { _mm512_mask_storeu_ps(run.as_mut_ptr().add(i0).cast(), mask, y) };
    }
}

/// products[r][o] = row r of `rows` . output channel o, for the first `n` rows (rounded up to a
/// `BLOCK`) and every padded output channel.
fn multiply(tiles: &Tiles, rows: &[u16], packed: &PackedConv, segments: usize, n: usize, products: &mut [f32]) {
    let width = segments * packed.kcs * TILE_K;
    let group_len = 3 * packed.kcs * B_TILE_LEN;
    assert!(rows.len() >= n.div_ceil(BLOCK) * BLOCK * width && products.len() >= rows.len() / width * packed.out_pad);
    for cb in (0..packed.out_pad).step_by(BLOCK) {
        for rb in (0..n).step_by(BLOCK) {
            // SAFETY: rows rb..rb+32 of `rows` (width bf16 each, 64-byte aligned as width is a
            // multiple of 32) exist by the assert; groups cb/16 and cb/16 + 1 of the packed weights
            // hold 3 kcs tiles each, of which the first `segments * kcs` are read; products rows
            // rb..rb+32, columns cb..cb+32 lie inside its rows of out_pad f32.
            unsafe {
                tiles.block_32x32(
                    rows.as_ptr().add(rb * width),
                    width * 2,
                    packed.packed.as_ptr().add(cb / TILE_ROWS * group_len),
                    group_len,
                    segments * packed.kcs,
                    products.as_mut_ptr().add(rb * packed.out_pad + cb),
                    packed.out_pad * 4,
                );
            }
        }
    }
}

/// The input in channels-last bf16: `hi` and, for `Split`, `lo`, each [image][y][x][c].
struct ChannelsLast {
    hi: Vec<u16>,
    /// Only for `Split`: for `Bf16` it keeps the spare buffer, unread.
    lo: Vec<u16>,
    arithmetic: Arithmetic,
    c: usize,
}

thread_local! {
    /// The last convolution's `ChannelsLast` buffers, for the next one on this thread: their pages
    /// are then neither zeroed nor faulted in again (4 MiB each for ResNet's layer1 at batch 8).
    static SPARE: std::cell::Cell<(Vec<u16>, Vec<u16>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

impl Drop for ChannelsLast {
    fn drop(&mut self) {
        SPARE.set((std::mem::take(&mut self.hi), std::mem::take(&mut self.lo)));
    }
}

impl ChannelsLast {
    /// x[:, :, ::step, ::step] (all of it for step 1) in channels-last bf16.
    fn of(x: &Tensor, arithmetic: Arithmetic, step: usize) -> ChannelsLast {
        let [_, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let (hs, ws) = (h.div_ceil(step), w.div_ceil(step));
        let source = |row: usize| &x.data[(row / hs) * c * h * w + (row % hs) * step * w..];
        let (mut hi, mut lo) = SPARE.take();
        // Every element is written below: resizing the last convolution's buffers only fills
        // what they grow by.
        hi.resize(x.shape[0] * hs * ws * c, 0);
        let convert = |row: usize, hi: &mut [u16], lo: Option<&mut [u16]>| {
            #[cfg(target_arch = "x86_64")]
            if c % 16 == 0 {
                // SAFETY: this runs only where AMX is usable, and `amx` requires AVX-512F with it.
                unsafe { gather_pixels(source(row), c, h * w, step, hi, lo) };
                return;
            }
            gather_row(source(row), c, h * w, step, hi, to_bf16);
            if let Some(lo) = lo {
                gather_row(source(row), c, h * w, step, lo, |v| split(v).1);
            }
        };
        match arithmetic {
            Arithmetic::Split => {
                lo.resize(hi.len(), 0);
                hi.par_chunks_mut(ws * c)
                    .zip(lo.par_chunks_mut(ws * c))
                    .enumerate()
                    .for_each(|(row, (hi, lo))| convert(row, hi, Some(lo)));
            }
            Arithmetic::Bf16 => hi.par_chunks_mut(ws * c).enumerate().for_each(|(row, hi)| convert(row, hi, None)),
        }
        ChannelsLast { hi, lo, arithmetic, c }
    }

    /// The A row of output position `pos` (image * ho * wo + oy * wo + ox): per kernel row its
    /// `kernel * c` values, zero outside the image, in each segment of `width`: [hi | hi | lo]
    /// for `Split`, [hi] for `Bf16`. Values past the patch (the padding to whole tiles) are
    /// never written and stay zero.
    fn patch(&self, pos: usize, g: &Geometry, width: usize, row: &mut [u16]) {
        let c = self.c;
        let (image, oy, ox) = (pos / (g.ho * g.wo), pos % (g.ho * g.wo) / g.wo, pos % g.wo);
        let run = g.k * c;
        // The taps kx with 0 <= ox * stride + kx - pad_left < w.
        let left = (g.pad_left.saturating_sub(ox * g.stride)).min(g.k);
        let right = (g.w + g.pad_left).saturating_sub(ox * g.stride).clamp(left, g.k);
        // Segment 1 (hi again, for `Split`) is copied from segment 0 at the end, in one piece.
        let segments: &[(&[u16], usize)] =
            if self.arithmetic == Arithmetic::Bf16 { &[(&self.hi, 0)] } else { &[(&self.hi, 0), (&self.lo, 2)] };
        for ky in 0..g.k {
            let iy = (oy * g.stride + ky).checked_sub(g.pad_top).filter(|&iy| iy < g.h);
            for &(values, segment) in segments {
                let dst = &mut row[segment * width + ky * run..][..run];
                let Some(iy) = iy else {
                    dst.fill(0);
                    continue;
                };
                // Most positions lie inside the image: no zeros to write (and no memset call).
                if left > 0 {
                    dst[..left * c].fill(0);
                }
                if right < g.k {
                    dst[right * c..].fill(0);
                }
                if right > left {
                    let ix = ox * g.stride + left - g.pad_left;
                    let src = &values[((image * g.h + iy) * g.w + ix) * c..][..(right - left) * c];
                    copy_run(&mut dst[left * c..right * c], src);
                }
            }
        }
        if self.arithmetic == Arithmetic::Split {
            row.copy_within(..g.k * run, width);
        }
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

/// Writes `part` of every `step`th pixel of one image row of an NCHW tensor (`src` from the row's
/// first value in channel 0, channels `plane` apart) to `row` as [x][c], in blocks of 16 pixels x 16 channels transposed
/// in registers: every cache line read is used at once (a pixel's channels, 64 KiB apart at 128
/// px, would all fall in one set of L1), and every write is 16 contiguous values.
#[inline(always)]
fn gather_row(src: &[f32], c: usize, plane: usize, step: usize, row: &mut [u16], part: impl Fn(f32) -> u16) {
    const B: usize = 16;
    let w = row.len() / c;
    for x0 in (0..w).step_by(B) {
        let nx = B.min(w - x0);
        for c0 in (0..c).step_by(B) {
            let nc = B.min(c - c0);
            let mut block = [[0u16; B]; B];
            for (j, line) in block.iter_mut().enumerate().take(nc) {
                let values = src[(c0 + j) * plane + x0 * step..].iter().step_by(step).take(nx);
                for (v, &x) in line.iter_mut().zip(values) {
                    *v = part(x);
                }
            }
            for i in 0..nx {
                let dst = &mut row[(x0 + i) * c + c0..][..nc];
                for (j, v) in dst.iter_mut().enumerate() {
                    *v = block[j][i];
                }
            }
        }
    }
}

/// `gather_row` for a multiple of 16 channels, with AVX-512: each pixel's channels 16 at a time
/// by one gather (the row's source lines stay in cache from one pixel to the next), split and
/// rounded as `split` does, in registers, and stored as 16 contiguous bf16 (and lo parts).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_pixels(src: &[f32], c: usize, plane: usize, step: usize, hi: &mut [u16], mut lo: Option<&mut [u16]>) {
    use std::arch::x86_64::*;
    let w = hi.len() / c;
    assert!(c.is_multiple_of(16) && lo.as_ref().is_none_or(|lo| lo.len() == hi.len()));
    assert!(w == 0 || (c - 1) * plane + (w - 1) * step < src.len(), "gather_pixels: source too short");
    assert!(16 * plane <= i32::MAX as usize, "gather_pixels: planes too large for 32-bit offsets");
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(plane as i32),
    );
    // to_bf16 on 16 lanes: round to nearest even, then keep only the sign of a zero exponent.
    let round = |bits: __m512i| {
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
        let normal = _mm512_test_epi32_mask(rounded, _mm512_set1_epi32(0x7f80));
        _mm512_mask_blend_epi32(normal, _mm512_and_si512(rounded, _mm512_set1_epi32(0x8000)), rounded)
    };
    for x in 0..w {
        for c0 in (0..c).step_by(16) {
            // SAFETY: elements (c0 + j) * plane + x * step, j < 16, lie inside src (the assert).
            let v = unsafe { _mm512_i32gather_ps::<4>(offsets, src.as_ptr().add(c0 * plane + x * step)) };
            let high = round(_mm512_castps_si512(v));
            // SAFETY: x * c + c0 + 16 <= hi.len(), as c0 + 16 <= c and x < w.
            unsafe { _mm256_storeu_si256(hi.as_mut_ptr().add(x * c + c0).cast(), _mm512_cvtepi32_epi16(high)) };
            if let Some(lo) = lo.as_deref_mut() {
                let rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(high)));
                let low = round(_mm512_castps_si512(rest));
                // SAFETY: as for hi, lo having hi's length.
                unsafe { _mm256_storeu_si256(lo.as_mut_ptr().add(x * c + c0).cast(), _mm512_cvtepi32_epi16(low)) };
            }
        }
    }
}

/// The output (not yet initialised), written by the tasks at disjoint positions.
#[derive(Clone, Copy)]
struct SharedOut(*mut MaybeUninit<f32>);

// SAFETY: the tasks write disjoint elements (each its own output positions) and nothing reads
// the buffer until they have all finished.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The `len` elements from `at`.
    ///
    /// # Safety
    /// They must lie inside the buffer, and no other thread may access them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, at: usize, len: usize) -> &mut [MaybeUninit<f32>] {
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
    /// output channels that are not a multiple of 32 and positions that end mid-task.
    const SHAPES: [(usize, usize, usize, usize, Padding, usize); 6] = [
        (3, 64, 7, 2, Padding::Symmetric(3), 29),
        (16, 40, 3, 1, Padding::Symmetric(1), 13),
        (64, 32, 3, 2, Padding::Symmetric(1), 17),
        (64, 96, 1, 2, Padding::Symmetric(0), 11),
        (24, 48, 5, 2, Padding::TfSame, 15),
        (32, 16, 3, 1, Padding::Symmetric(1), 3),
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
            let conv =
                ConvWeights { spec, weight: random(out * c * k * k, 0.2, &mut rng), bias: random(out, 0.5, &mut rng) };
            let x = Tensor::new(vec![3, c, side, side], random(3 * c * side * side, 1.0, &mut rng));
            let (ho, _) = padding.resolve(side, k, stride);
            let residual = Tensor::new(vec![3, out, ho, ho], random(3 * out * ho * ho, 1.0, &mut rng));
            let prepared = CpuConv::new(&conv, arithmetic.is_some());
            assert_eq!(prepared.packed.is_some(), arithmetic.is_some(), "the tile path must be the one tested");
            let got = conv2d(&x, &prepared, arithmetic, Some(&residual)).unwrap();
            let (exact, scale) = float64(&x, &conv, &residual);
            let u = f64::from(f32::EPSILON) / 2.0;
            let kk = (c * k * k) as f64;
            let gamma = |n: f64| n * u / (1.0 - n * u);
            let per_product = match arithmetic {
                None => gamma(kk),
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

    #[test]
    fn gathered_pixels_round_as_the_scalar_split() {
        use super::{gather_pixels, gather_row, split};
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: the CPU has no AVX-512F");
            return;
        }
        let mut rng = SplitMix64::new(8);
        // Ties to even both ways, subnormals (flushed), signed zeros, large and tiny values.
        let edges = [f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), 1e-40, -1e-45, -0.0, 3e38, 1e-30];
        let (c, h, w) = (32, 3, 21);
        let data: Vec<f32> = (0..c * h * w)
            .map(|i: usize| if i.is_multiple_of(7) { edges[i / 7 % edges.len()] } else { rng.normal() as f32 })
            .collect();
        for step in [1, 2] {
            let ws = w.div_ceil(step);
            let src = &data[w..]; // image row 1
            let (mut hi, mut lo) = (vec![0u16; ws * c], vec![0u16; ws * c]);
            // SAFETY: AVX-512F was detected above.
            unsafe { gather_pixels(src, c, h * w, step, &mut hi, Some(&mut lo)) };
            let (mut want_hi, mut want_lo) = (vec![1u16; ws * c], vec![1u16; ws * c]);
            gather_row(src, c, h * w, step, &mut want_hi, |v| split(v).0);
            gather_row(src, c, h * w, step, &mut want_lo, |v| split(v).1);
            assert_eq!((hi, lo), (want_hi, want_lo), "step {step}");
        }
    }

    /// The AVX-512 epilogue writes the same bits as `finish` one output at a time.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gathered_outputs_finish_as_the_scalar_epilogue() {
        use super::super::conv::finish;
        use super::{finish_run, MaybeUninit};
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: the CPU has no AVX-512F");
            return;
        }
        let mut rng = SplitMix64::new(12);
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 6.0, -6.5, 1e30];
        let mut value =
            |i: usize| if i.is_multiple_of(5) { specials[i / 5 % specials.len()] } else { (4.0 * rng.normal()) as f32 };
        for (len, stride) in [(1, 3), (16, 64), (37, 5), (64, 96)] {
            let column: Vec<f32> = (0..len * stride).map(&mut value).collect();
            let residual: Vec<f32> = (0..len).map(|i| value(i + 2)).collect();
            for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                for (bias, res) in [(0.5, None), (-0.0, Some(&residual[..])), (f32::INFINITY, Some(&residual[..]))] {
                    let mut got = vec![MaybeUninit::uninit(); len];
                    finish_run(&column, stride, &mut got, bias, res, act);
                    // SAFETY: finish_run writes every element of its run.
                    let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                    let want: Vec<f32> =
                        (0..len).map(|i| finish(column[i * stride], bias, res.map_or(0.0, |r| r[i]), act)).collect();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{len} x {stride}, {act:?}, bias {bias}");
                }
            }
        }
    }

    #[test]
    fn f32_products_stay_within_the_bound() {
        check(None);
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
