//! Launch geometry for kernels/*.cu, kept apart from the launches so that it is tested without a
//! GPU. The constants the kernels are compiled with come from geometry.rs (see there); each size
//! that a kernel indexes with a 32-bit `int` is checked to fit here, before launch.

use super::super::{ConvSpec, Padding};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::resample::antialias_spans;
use cudarc::driver::LaunchConfig;
use std::ops::Range;

include!("geometry.rs");

/// The grid cap of grid-stride kernels: the loop covers the rest, so a cap only trades blocks
/// for iterations; 65,535 keeps any grid valid on every GPU generation.
pub const GRID_CAP: u32 = 65_535;
/// blur.cu keeps the taps in shared memory: 2 * 256 + 1 of them at most (sigma <= 63).
pub const MAX_BLUR_RADIUS: usize = 256;
/// The most candidates one `knn_merge` lane walks serially. Each split adds k candidates per
/// query, which the query's warp shares out over its 32 lanes, so the splits are capped at
/// 512 * 32 / k (1,024 for k = 16): far more than fill a GPU, so in practice the occupancy sets
/// them, not this cap.
pub const KNN_MERGE_LANE_CANDIDATES: usize = 512;
/// knn.cu's `knn_merge`: a warp per query.
pub const KNN_MERGE_QUERIES_PER_BLOCK: usize = KNN_MERGE_BLOCK as usize / 32;
/// knn.cu's `squared_norms_*`: one warp per row.
pub const NORM_ROWS_PER_BLOCK: usize = BLOCK as usize / 32;

/// Refuses sizes a kernel would index past `i32::MAX` with.
pub fn fits_i32(what: &str, values: &[usize]) -> Result<()> {
    match values.iter().find(|&&v| v > i32::MAX as usize) {
        None => Ok(()),
        Some(v) => Err(Error::invalid_backend_input(format!(
            "{what}: {v} elements is more than one launch indexes (2^31 - 1); split the batch"
        ))),
    }
}

/// A grid-stride launch over `total` items: one thread per item up to `cap` blocks.
pub fn grid_stride(total: usize, cap: u32, shared_mem_bytes: u32) -> LaunchConfig {
    let blocks = total.div_ceil(BLOCK as usize).clamp(1, cap as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes }
}

/// score.cu's `top_patch` and `eq7_scores`: a block per image of the batch.
pub fn one_block_per_image(images: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (images.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// `squared_norms`: a warp per row.
pub fn norms_config(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(NORM_ROWS_PER_BLOCK).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// How one kNN call is cut up: query blocks x bank splits for the partial top-k, then a merge.
#[derive(Clone, Copy, Debug)]
pub struct KnnPlan {
    pub partial: LaunchConfig,
    /// Bank rows per split, a multiple of KNN_TILE; splits * chunk >= m.
    pub chunk: usize,
    pub splits: usize,
    /// Candidates per query the merge reads: splits * k (the partial kernel merges its
    /// KNN_LISTS lists of a query into one before writing).
    pub per_query: usize,
    pub merge: LaunchConfig,
}

/// Splits the bank until `resident_blocks` blocks (what the GPU runs at once: its SMs times the
/// partial kernel's blocks per SM, from the occupancy API) are in flight: a small query batch
/// (one image is 1,024 queries, 16 blocks) would otherwise leave most of an H200's 132 SMs
/// idle. Every split adds k candidates per query for the merge's warp to walk, so the splits
/// stop where a lane would walk more than KNN_MERGE_LANE_CANDIDATES of them.
pub fn knn_plan(nq: usize, m: usize, d: usize, k: usize, resident_blocks: usize) -> Result<KnnPlan> {
    if nq == 0 || m == 0 || d == 0 || k == 0 || k > KNN_MAX_K.min(m) {
        return Err(Error::invalid_backend_input(format!(
            "knn: {nq} queries, {m} bank rows, {d} dims, k = {k}: need all non-zero and k <= {KNN_MAX_K} on CUDA"
        )));
    }
    let query_blocks = nq.div_ceil(KNN_TILE);
    let bank_tiles = m.div_ceil(KNN_TILE);
    let most_splits = (KNN_MERGE_LANE_CANDIDATES * 32 / k).clamp(1, bank_tiles);
    let wanted = resident_blocks.max(1).div_ceil(query_blocks).clamp(1, most_splits);
    let chunk = bank_tiles.div_ceil(wanted) * KNN_TILE;
    let splits = m.div_ceil(chunk);
    let per_query = splits * k;
    fits_i32("knn", &[nq * d, m * d, nq * per_query, query_blocks])?;
    Ok(KnnPlan {
        partial: LaunchConfig {
            grid_dim: (query_blocks as u32, splits as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        },
        chunk,
        splits,
        per_query,
        merge: LaunchConfig {
            grid_dim: (nq.div_ceil(KNN_MERGE_QUERIES_PER_BLOCK) as u32, 1, 1),
            block_dim: (KNN_MERGE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        },
    })
}

/// coreset.cu's row kernels (`coreset_{project,init,reach,distance}_*`, a half-warp per item of `n`
/// d-wide rows): CORESET_BLOCKS_PER_SM blocks per SM stream the rows, all resident at once.
pub fn coreset_config(n: usize, d: usize, sm_count: usize) -> Result<LaunchConfig> {
    fits_i32("coreset", &[n * d])?;
    let blocks = n.div_ceil(CORESET_ROWS_PER_BLOCK).clamp(1, CORESET_BLOCKS_PER_SM * sm_count.max(1)) as u32;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// coreset.cu's `coreset_pick` and `coreset_filter`, a thread per item (cluster or row), as many
/// blocks as the row kernels at most: each block ends with one atomic, so fewer blocks mean fewer.
pub fn coreset_scan_config(items: usize, sm_count: usize) -> LaunchConfig {
    let blocks = items.div_ceil(BLOCK as usize).clamp(1, CORESET_BLOCKS_PER_SM * sm_count.max(1)) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One axis of an antialiased resize as kernels/preprocess.cu reads it: output i is
/// `sum_t weights[i * taps + t] * input[starts[i] + t]`, every tap inside the input.
#[derive(Clone, Debug, PartialEq)]
pub struct ResampleTable {
    pub taps: usize,
    pub starts: Vec<i32>,
    pub weights: Vec<f32>,
}

/// `antialias_spans(input, resized)` for the outputs `kept` (the center crop), each span widened
/// with zero weights to the longest one's tap count, so that the kernel's loop has one trip count
/// for the whole axis. That count is about 2 * scale + 1 when shrinking by `scale` and 2 when
/// enlarging; only spans cut by the input's borders are shorter. A span is padded after its own
/// taps, or before them where that would run past the input's end (no span is longer than the
/// input): every tap stays in bounds, and the extra terms add +0 to a sum of terms >= +0, which
/// leaves the CPU's sum unchanged.
pub fn resample_table(input: usize, resized: usize, kept: Range<usize>) -> ResampleTable {
    let spans = &antialias_spans(input, resized)[kept];
    let taps = spans.iter().map(|s| s.weights.len()).max().unwrap_or(0);
    let mut starts = Vec::with_capacity(spans.len());
    let mut weights = Vec::with_capacity(spans.len() * taps);
    for span in spans {
        let start = span.start.min(input - taps);
        starts.push(start as i32);
        weights.resize(weights.len() + span.start - start, 0.0);
        weights.extend_from_slice(&span.weights);
        weights.resize(starts.len() * taps, 0.0);
    }
    ResampleTable { taps, starts, weights }
}

/// A run of consecutive same-size images in a batch: what kernels/preprocess.cu's two launches
/// take. A batch of one size is one run; a run per distinct size would need the output images
/// scattered through an index table, for batches that a production line does not send.
#[derive(Clone, Debug)]
pub struct PreprocessRun {
    /// The run's first image in the batch, and its number of images.
    pub first: usize,
    pub images: usize,
    pub width: usize,
    pub height: usize,
    /// Where the run's pixels start in the batch's packed 8-bit RGB buffer.
    pub pixel_offset: usize,
    /// Image rows -> the network's rows, image columns -> its columns (both cropped).
    pub rows: ResampleTable,
    pub cols: ResampleTable,
    /// `preprocess_rows` over [images, 3, height, side], `preprocess_cols` over [images, 3, side, side].
    pub horizontal: LaunchConfig,
    pub vertical: LaunchConfig,
}

/// The runs of a batch of images of `sizes` ((width, height), as `RgbImage::dimensions`), whose
/// pixels are packed one image after another.
pub fn preprocess_runs(sizes: &[(u32, u32)], preprocess: &Preprocess) -> Result<Vec<PreprocessRun>> {
    let (resize, side, offset) = (preprocess.resize, preprocess.input_size(), preprocess.crop_offset());
    fits_i32("preprocess", &[sizes.len() * 3 * side * side])?;
    let mut runs = Vec::new();
    let (mut first, mut pixel_offset) = (0, 0);
    for run in sizes.chunk_by(|a, b| a == b) {
        let (images, (width, height)) = (run.len(), (run[0].0 as usize, run[0].1 as usize));
        fits_i32("preprocess", &[images * 3 * width * height, images * 3 * height * side])?;
        runs.push(PreprocessRun {
            first,
            images,
            width,
            height,
            pixel_offset,
            rows: resample_table(height, resize, offset..offset + side),
            cols: resample_table(width, resize, offset..offset + side),
            horizontal: grid_stride(images * 3 * height * side, GRID_CAP, 0),
            vertical: grid_stride(images * 3 * side * side, GRID_CAP, 0),
        });
        first += images;
        pixel_offset += images * 3 * width * height;
    }
    Ok(runs)
}

/// Zero padding that cuDNN cannot express (it pads both sides alike): TF-same with an odd total
/// puts the extra pixel at the bottom/right, so the input is copied into a padded buffer first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExplicitPad {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// How a convolution runs on cuDNN: its output shape, the symmetric padding cuDNN applies, and
/// the explicit padding copy when one is needed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    pub out: [usize; 4],
    pub pad: [usize; 2],
    pub explicit: Option<ExplicitPad>,
}

pub fn conv_plan(spec: &ConvSpec, x: [usize; 4]) -> ConvPlan {
    let [b, _, h, w] = x;
    let (ho, top) = spec.padding.resolve(h, spec.kernel, spec.stride);
    let (wo, left) = spec.padding.resolve(w, spec.kernel, spec.stride);
    let out = [b, spec.out_channels, ho, wo];
    // Total padding along an axis, from the output size (TF-same can need none: saturate).
    let total = |o: usize, i: usize| ((o - 1) * spec.stride + spec.kernel).saturating_sub(i);
    let (total_h, total_w) = (total(ho, h), total(wo, w));
    let symmetric = match spec.padding {
        Padding::Symmetric(_) => true,
        Padding::TfSame => total_h == 2 * top && total_w == 2 * left,
    };
    if symmetric {
        ConvPlan { out, pad: [top, left], explicit: None }
    } else {
        let explicit = ExplicitPad { top, left, height: h + total_h, width: w + total_w };
        ConvPlan { out, pad: [0, 0], explicit: Some(explicit) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    fn spec(kernel: usize, stride: usize, padding: Padding) -> ConvSpec {
        ConvSpec { in_channels: 8, out_channels: 16, kernel, stride, padding, groups: 1, activation: Activation::Relu }
    }

    /// cuDNN's output size for symmetric padding `pad`.
    fn cudnn_out(input: usize, pad: usize, kernel: usize, stride: usize) -> usize {
        (input + 2 * pad - kernel) / stride + 1
    }

    #[test]
    fn conv_plans_reproduce_the_padding_rule_through_cudnn_arithmetic() {
        for padding in [Padding::TfSame, Padding::Symmetric(0), Padding::Symmetric(1), Padding::Symmetric(3)] {
            for (kernel, stride) in [(1, 1), (1, 2), (3, 1), (3, 2), (5, 1), (5, 2), (7, 2)] {
                for size in [1usize, 2, 7, 8, 13, 14, 224, 225] {
                    if let Padding::Symmetric(p) = padding {
                        if size + 2 * p < kernel {
                            continue;
                        }
                    }
                    let s = spec(kernel, stride, padding);
                    let plan = conv_plan(&s, [2, 8, size, size + 1]);
                    let (h, w) = plan.explicit.map_or((size, size + 1), |e| (e.height, e.width));
                    let got = [cudnn_out(h, plan.pad[0], kernel, stride), cudnn_out(w, plan.pad[1], kernel, stride)];
                    assert_eq!(got, [plan.out[2], plan.out[3]], "{padding:?} k{kernel} s{stride} {size}");
                    if let Some(e) = plan.explicit {
                        // The copy keeps the image at (top, left) and pads the rest with zeros.
                        assert!(e.top + size <= e.height && e.left + size < e.width);
                        assert!(e.height - size - e.top >= e.top, "the extra pixel goes bottom/right");
                    }
                }
            }
        }
    }

    #[test]
    fn tf_same_pads_explicitly_only_when_the_total_is_odd() {
        // EfficientNet-Lite's stem: 3x3 stride 2 on 224 -> 112 needs 1 pixel, bottom/right.
        let plan = conv_plan(&spec(3, 2, Padding::TfSame), [1, 8, 224, 224]);
        assert_eq!(plan.out, [1, 16, 112, 112]);
        assert_eq!(plan.explicit, Some(ExplicitPad { top: 0, left: 0, height: 225, width: 225 }));
        // 3x3 stride 1 needs 1 on each side: cuDNN's own padding.
        let plan = conv_plan(&spec(3, 1, Padding::TfSame), [1, 8, 56, 56]);
        assert_eq!((plan.pad, plan.explicit), ([1, 1], None));
    }

    #[test]
    fn knn_plan_covers_the_bank_once_and_fills_the_gpu() {
        for (nq, m, k) in [(1, 1, 1), (1024, 21_401, 9), (4096, 13_107, 1), (65, 64, 16), (32_768, 21_401, 9)] {
            let plan = knn_plan(nq, m, 384, k, 4 * 132).unwrap();
            assert_eq!(plan.chunk % KNN_TILE, 0);
            assert!(plan.splits * plan.chunk >= m && (plan.splits - 1) * plan.chunk < m, "no empty split");
            assert!(plan.partial.grid_dim.0 as usize * KNN_TILE >= nq);
            assert_eq!(plan.partial.grid_dim.1 as usize, plan.splits);
            assert_eq!(plan.per_query, plan.splits * k);
            let lane = plan.per_query.div_ceil(32);
            assert!(lane <= KNN_MERGE_LANE_CANDIDATES, "{nq}x{m} k={k}: a lane walks {lane} candidates");
            assert!(plan.merge.grid_dim.0 as usize * KNN_MERGE_QUERIES_PER_BLOCK >= nq);
            assert!((plan.merge.grid_dim.0 as usize - 1) * KNN_MERGE_QUERIES_PER_BLOCK < nq, "no idle merge block");
            let blocks = plan.partial.grid_dim.0 as usize * plan.splits;
            let most = nq.div_ceil(KNN_TILE) * m.div_ceil(KNN_TILE).min(KNN_MERGE_LANE_CANDIDATES * 32 / k);
            assert!(blocks >= (4 * 132).min(most) / 2, "{nq}x{m}: {blocks} blocks");
        }
        // One query against a bank of 2,048 tiles on a GPU that holds 100,000 blocks: the lane cap,
        // not the occupancy, stops the splits, at exactly KNN_MERGE_LANE_CANDIDATES a lane.
        let plan = knn_plan(1, 2048 * KNN_TILE, 8, 16, 100_000).unwrap();
        assert_eq!(plan.per_query.div_ceil(32), KNN_MERGE_LANE_CANDIDATES, "{} splits", plan.splits);
    }

    #[test]
    fn knn_plan_refuses_what_the_kernels_cannot_do() {
        assert!(knn_plan(10, 100, 8, 17, 528).unwrap_err().to_string().contains("k <= 16"));
        assert!(knn_plan(10, 5, 8, 6, 528).is_err());
        assert!(knn_plan(0, 5, 8, 1, 528).is_err());
        let err = knn_plan(3_000_000, 100, 1536, 1, 528).unwrap_err().to_string();
        assert!(err.contains("split the batch"), "{err}");
    }

    #[test]
    fn resample_tables_are_the_cpu_spans_padded_in_bounds() {
        // Shrinking (edge spans cut short), enlarging, and a crop that keeps the middle only.
        for (input, resized, kept) in [(100, 7, 0..7), (13, 40, 0..40), (301, 256, 16..240), (5, 5, 0..5)] {
            let table = resample_table(input, resized, kept.clone());
            let spans = &antialias_spans(input, resized)[kept];
            assert_eq!(table.starts.len(), spans.len());
            assert_eq!(table.weights.len(), spans.len() * table.taps);
            for (i, span) in spans.iter().enumerate() {
                let start = table.starts[i] as usize;
                assert!(start + table.taps <= input, "{input} -> {resized}: output {i} reads past the input");
                // Tap t reads input start + t: the span's weights at their own inputs, zeros elsewhere.
                let weights = &table.weights[i * table.taps..(i + 1) * table.taps];
                for (t, &w) in weights.iter().enumerate() {
                    let want = (start + t).checked_sub(span.start).and_then(|j| span.weights.get(j)).copied();
                    assert_eq!(w, want.unwrap_or(0.0), "{input} -> {resized}: output {i} tap {t}");
                }
            }
        }
    }

    #[test]
    fn preprocess_runs_group_consecutive_sizes_and_pack_the_pixels() {
        let pre = Preprocess::new(64, Some(48), [0.5; 3], [0.25; 3]).unwrap();
        let runs = preprocess_runs(&[(90, 70), (90, 70), (33, 50), (90, 70)], &pre).unwrap();
        let summary: Vec<_> = runs.iter().map(|r| (r.first, r.images, r.width, r.height, r.pixel_offset)).collect();
        let pixels = 3 * 90 * 70;
        assert_eq!(summary, [(0, 2, 90, 70, 0), (2, 1, 33, 50, 2 * pixels), (3, 1, 90, 70, 2 * pixels + 3 * 33 * 50)]);
        let run = &runs[1];
        assert_eq!(run.cols, resample_table(33, 64, 8..56));
        assert_eq!(run.rows, resample_table(50, 64, 8..56));
        assert_eq!(run.horizontal.grid_dim.0 as usize, (3 * 50 * 48usize).div_ceil(BLOCK as usize));
        assert_eq!(run.vertical.grid_dim.0 as usize, (3 * 48 * 48usize).div_ceil(BLOCK as usize));
        let err = preprocess_runs(&[(50_000, 50_000)], &pre).unwrap_err().to_string();
        assert!(err.contains("split the batch"), "{err}");
    }

    #[test]
    fn grids_are_capped_and_never_empty() {
        assert_eq!(grid_stride(0, GRID_CAP, 0).grid_dim.0, 1);
        assert_eq!(grid_stride(257, GRID_CAP, 0).grid_dim.0, 2);
        assert_eq!(grid_stride(usize::MAX / 2, GRID_CAP, 0).grid_dim.0, GRID_CAP);
        assert_eq!(norms_config(17).grid_dim.0, 3);
        assert_eq!(one_block_per_image(8).grid_dim, (8, 1, 1));
        assert_eq!(one_block_per_image(8).block_dim.0, BLOCK);
        let c = coreset_config(1_000_000, 341, 132).unwrap();
        assert_eq!(c.grid_dim.0, 528);
        assert_eq!(coreset_config(20, 4, 132).unwrap().grid_dim.0, 2);
        assert!(coreset_config(2_000_000, 1536, 132).is_err());
        assert_eq!(coreset_scan_config(0, 132).grid_dim.0, 1);
        assert_eq!(coreset_scan_config(300, 132).grid_dim.0, 2);
        assert_eq!(coreset_scan_config(1_000_000, 132).grid_dim.0, 528);
    }
}
