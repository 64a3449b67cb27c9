//! Evaluation metrics (REFERENCE.md section 7): image and pixel AUROC, F1 at the stored
//! thresholds, and AUPRO. Every curve is exact (one point per distinct score, as sklearn and the
//! MVTec AD evaluation code), never binned: one sort of all scores, then one sweep.

use rayon::prelude::*;

use super::curve::{Curve, CurveBuilder};
use super::threshold::f1_at;

/// The FPR limit of AUPRO in anomalib and in the MVTec AD paper.
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

/// An unsigned key whose order is the numeric order of `score` (NaN excluded by the callers):
/// negatives have all bits flipped, positives only the sign bit, so a plain integer sort orders
/// by score and leaves room below for a payload. -0.0 becomes 0.0 first because the two compare
/// equal and must tie.
fn sort_key(score: f32) -> u64 {
    let bits = if score == 0.0 { 0 } else { score.to_bits() };
    u64::from(if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 })
}

/// The inverse of [`sort_key`] (for the thresholds of curve points).
fn score_of_key(key: u64) -> f32 {
    let bits = key as u32;
    f32::from_bits(if bits >> 31 == 1 { bits & 0x7FFF_FFFF } else { !bits })
}

/// The one ROC sweep behind [`auroc`] and [`roc_curve`]: every score sorted once, then walked
/// from the highest down in groups of equal scores.
struct RocSweep {
    /// Sort keys with the label in the lowest bit, ascending.
    keys: Vec<u64>,
    positives: u64,
    negatives: u64,
}

impl RocSweep {
    /// None when only one class is present or a score is NaN. Panics if the lengths differ.
    fn new(scores: &[f32], labels: &[bool]) -> Option<Self> {
        assert_eq!(scores.len(), labels.len(), "auroc: {} scores for {} labels", scores.len(), labels.len());
        let positives = labels.iter().filter(|&&l| l).count() as u64;
        let negatives = labels.len() as u64 - positives;
        if positives == 0 || negatives == 0 || scores.par_iter().any(|s| s.is_nan()) {
            return None;
        }
        // The label rides in the lowest bit, so sorting plain integers orders by score.
        let mut keys: Vec<u64> =
            scores.par_iter().zip(labels).map(|(&s, &l)| sort_key(s) << 1 | u64::from(l)).collect();
        keys.par_sort_unstable();
        Some(RocSweep { keys, positives, negatives })
    }

    /// (score, positives, negatives) of each distinct score, highest score first.
    fn groups(&self) -> impl Iterator<Item = (f32, u64, u64)> + '_ {
        let mut rest = self.keys.as_slice();
        std::iter::from_fn(move || {
            let &last = rest.last()?;
            let group = rest.iter().rev().take_while(|&&k| k >> 1 == last >> 1).count();
            let group_tp = rest[rest.len() - group..].iter().filter(|&&k| k & 1 == 1).count() as u64;
            rest = &rest[..rest.len() - group];
            Some((score_of_key(last >> 1), group_tp, group as u64 - group_tp))
        })
    }
}

/// Area under the ROC curve of `scores` against `labels` (true = anomalous), ties handled as
/// sklearn's `roc_auc_score`: one curve point per distinct score, trapezoids between them (a tie
/// of positives and negatives counts one half). None when only one class is present or a score
/// is NaN (sklearn refuses NaN).
///
/// Panics if the lengths differ.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let sweep = RocSweep::new(scores, labels)?;
    // Each group of equal scores adds one trapezoid. Twice its area in units of (one negative x
    // one positive) is an integer, so the sum is exact and the only rounding is the final division.
    let (mut tp, mut fp, mut twice_area) = (0u64, 0u64, 0u128);
    for (_, group_tp, group_fp) in sweep.groups() {
        twice_area += u128::from(group_fp) * u128::from(2 * tp + group_tp);
        tp += group_tp;
        fp += group_fp;
    }
    debug_assert_eq!((tp, fp), (sweep.positives, sweep.negatives));
    Some(twice_area as f64 / (2.0 * sweep.positives as f64 * sweep.negatives as f64))
}

/// The ROC curve whose area [`auroc`] is: (false positive rate, true positive rate) for every
/// distinct score from the highest down, from (0, 0) to (1, 1), thinned as
/// [`CurveBuilder`] says. None where [`auroc`] is. Panics if the lengths differ.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Option<Curve> {
    let sweep = RocSweep::new(scores, labels)?;
    let mut curve = CurveBuilder::new(scores.len());
    let (mut tp, mut fp) = (0u64, 0u64);
    for (score, group_tp, group_fp) in sweep.groups() {
        tp += group_tp;
        fp += group_fp;
        curve.push(fp as f64 / sweep.negatives as f64, tp as f64 / sweep.positives as f64, score);
    }
    Some(curve.finish())
}

/// Labels the 8-connected regions of a row-major `width x height` mask: 0 for background,
/// 1..=n for the regions; returns the labels and each region's size (index label - 1).
/// 8-connectivity is what both references use: anomalib's `connected_components_cpu`
/// (`cv2.connectedComponents`, default connectivity 8) and the MVTec AD evaluation code
/// (`scipy.ndimage.label` with a 3x3 structure of ones).
fn label_regions(mask: &[bool], width: usize, height: usize) -> (Vec<u32>, Vec<u32>) {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes: Vec<u32> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        sizes.push(0);
        let label = sizes.len() as u32;
        labels[start] = label;
        stack.push(start);
        while let Some(p) = stack.pop() {
            sizes[label as usize - 1] += 1;
            let (x, y) = (p % width, p / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let q = ny * width + nx;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
    }
    (labels, sizes)
}

/// Area under the per-region-overlap curve up to `fpr_limit`, divided by `fpr_limit` (anomalib's
/// AUPRO, defined as in the MVTec AD paper). Regions are the 8-connected components of each
/// ground-truth mask. For every distinct score t (pixels >= t predicted anomalous): FPR = the
/// fraction of all normal pixels (mask false, across all images) at or above t, PRO = the mean
/// over all regions of the fraction of the region at or above t. The curve from (0, 0) is
/// integrated with the trapezoid rule, its last segment cut at `fpr_limit` with the PRO
/// interpolated there. Exact: one sort of every pixel, one sweep.
///
/// None when there is no region or no normal pixel, or a score is NaN. Panics if a map or mask
/// is not `width * height` long, the counts of maps and masks differ, or `fpr_limit` is not in
/// (0, 1].
pub fn aupro(maps: &[&[f32]], masks: &[&[bool]], width: usize, height: usize, fpr_limit: f64) -> Option<f64> {
    pro_curve(maps, masks, width, height, fpr_limit).map(|p| p.aupro)
}

/// [`aupro`] and the curve it integrates, from (0, 0) to the point cut at `fpr_limit`, thinned as
/// [`CurveBuilder`] says (one candidate point per distinct pixel score).
pub struct ProCurve {
    pub aupro: f64,
    pub curve: Curve,
}

/// The sweep of [`aupro`], keeping the curve's points: one computation for both.
pub fn pro_curve(maps: &[&[f32]], masks: &[&[bool]], width: usize, height: usize, fpr_limit: f64) -> Option<ProCurve> {
    assert!(fpr_limit > 0.0 && fpr_limit <= 1.0, "aupro: fpr_limit {fpr_limit} outside (0, 1]");
    assert_eq!(maps.len(), masks.len(), "aupro: {} maps for {} masks", maps.len(), masks.len());
    let pixels = width * height;
    for (map, mask) in maps.iter().zip(masks) {
        assert!(map.len() == pixels && mask.len() == pixels, "aupro: map or mask is not {width} x {height}");
    }
    if maps.par_iter().any(|m| m.iter().any(|s| s.is_nan())) {
        return None;
    }
    let labelled: Vec<(Vec<u32>, Vec<u32>)> = masks.par_iter().map(|m| label_regions(m, width, height)).collect();
    // Regions are numbered across images; 0 stays "normal pixel".
    let mut offsets = Vec::with_capacity(maps.len());
    let mut region_weight: Vec<f64> = Vec::new();
    for (_, sizes) in &labelled {
        offsets.push(region_weight.len() as u64);
        region_weight.extend(sizes.iter().map(|&s| 1.0 / f64::from(s)));
    }
    let regions = region_weight.len();
    let normals = masks.par_iter().map(|m| m.iter().filter(|&&a| !a).count()).sum::<usize>();
    if regions == 0 || normals == 0 {
        return None;
    }
    // Score in the high 32 bits, region number in the low 32: one integer sort orders by score.
    let mut keys = vec![0u64; maps.len() * pixels];
    keys.par_chunks_mut(pixels).zip(maps.par_iter().zip(&labelled).zip(&offsets)).for_each(
        |(out, ((map, (labels, _)), &offset))| {
            for ((k, &s), &l) in out.iter_mut().zip(map.iter()).zip(labels) {
                let region = if l == 0 { 0 } else { offset + u64::from(l) };
                *k = sort_key(s) << 32 | region;
            }
        },
    );
    keys.par_sort_unstable();

    let (mut fp, mut overlap) = (0u64, 0.0f64);
    let (mut x0, mut y0, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let mut curve = CurveBuilder::new(keys.len());
    let mut rest = keys.as_slice();
    while let Some(&last) = rest.last() {
        let score = score_of_key(last >> 32);
        let group = rest.iter().rev().take_while(|&&k| k >> 32 == last >> 32).count();
        for &k in &rest[rest.len() - group..] {
            match (k & 0xFFFF_FFFF) as usize {
                0 => fp += 1,
                region => overlap += region_weight[region - 1],
            }
        }
        rest = &rest[..rest.len() - group];
        let x1 = fp as f64 / normals as f64;
        let y1 = overlap / regions as f64;
        if x1 > fpr_limit {
            let y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0);
            area += 0.5 * (y0 + y_limit) * (fpr_limit - x0);
            curve.push(fpr_limit, y_limit, score);
            return Some(ProCurve { aupro: area / fpr_limit, curve: curve.finish() });
        }
        area += 0.5 * (y0 + y1) * (x1 - x0);
        curve.push(x1, y1, score);
        (x0, y0) = (x1, y1);
    }
    // Only reached when fpr_limit is 1: the last point is (1, 1).
    Some(ProCurve { aupro: area / fpr_limit, curve: curve.finish() })
}

/// One test image as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct ImageResult<'a> {
    pub score: f32,
    /// The ground-truth image label: true for a defect image.
    pub anomalous: bool,
    /// The anomaly map, row-major at the common `width x height`; None takes the image out of the
    /// pixel metrics (a run that made no maps).
    pub map: Option<&'a [f32]>,
    /// The ground-truth mask, same layout. None on a good image means all normal; on a defect
    /// image it means the mask is missing: the image is then left out of the pixel metrics and
    /// counted in [`Metrics::skipped_masks`].
    pub mask: Option<&'a [bool]>,
}

/// Everything `patchcore eval` prints for a set of images. A metric is None when it is undefined
/// on these images: AUROC with one class only, F1 with no anomalous sample (sklearn would warn
/// and report 0), pixel metrics with no image that has a map and a known mask, AUPRO with no
/// defect region or no normal pixel.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub image_f1: Option<f64>,
    pub pixel_f1: Option<f64>,
    /// AUPRO at [`AUPRO_FPR_LIMIT`].
    pub aupro: Option<f64>,
    /// Defect images without a ground-truth mask, left out of the pixel metrics.
    pub skipped_masks: usize,
}

/// The curves behind the image AUROC and the AUPRO, for plots and metrics.json; None where the
/// metric is.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    pub image_roc: Option<Curve>,
    /// Up to [`AUPRO_FPR_LIMIT`].
    pub pro: Option<Curve>,
}

impl Metrics {
    /// The metrics of `images`, F1 evaluated at the given thresholds (anomalous when strictly
    /// above, as [`f1_at`]). Pixel metrics pool every pixel of the images that have a map and are
    /// good or have a mask. Panics if a map or mask is not `width * height` long.
    pub fn compute(
        images: &[ImageResult],
        width: usize,
        height: usize,
        image_threshold: f32,
        pixel_threshold: f32,
    ) -> Metrics {
        Self::compute_with_curves(images, width, height, image_threshold, pixel_threshold).0
    }

    /// [`Metrics::compute`] and the curves, from the same sweeps.
    pub fn compute_with_curves(
        images: &[ImageResult],
        width: usize,
        height: usize,
        image_threshold: f32,
        pixel_threshold: f32,
    ) -> (Metrics, Curves) {
        let scores: Vec<f32> = images.iter().map(|i| i.score).collect();
        let labels: Vec<bool> = images.iter().map(|i| i.anomalous).collect();
        let any_anomalous = labels.contains(&true);
        let image_f1 = any_anomalous.then(|| f1_at(&scores, &labels, image_threshold));

        let all_normal = vec![false; width * height];
        let (maps, masks): (Vec<&[f32]>, Vec<&[bool]>) = images
            .iter()
            .filter_map(|i| match (i.map, i.mask) {
                (Some(map), Some(mask)) => Some((map, mask)),
                (Some(map), None) if !i.anomalous => Some((map, all_normal.as_slice())),
                _ => None,
            })
            .unzip();
        let pixel_scores: Vec<f32> = maps.concat();
        let pixel_labels: Vec<bool> = masks.concat();
        let pixel_f1 = pixel_labels.contains(&true).then(|| f1_at(&pixel_scores, &pixel_labels, pixel_threshold));
        let ((image_auroc, pixel_auroc), pro) = rayon::join(
            || (auroc(&scores, &labels), auroc(&pixel_scores, &pixel_labels)),
            || pro_curve(&maps, &masks, width, height, AUPRO_FPR_LIMIT),
        );
        let metrics = Metrics {
            image_auroc,
            pixel_auroc,
            image_f1,
            pixel_f1,
            aupro: pro.as_ref().map(|p| p.aupro),
            skipped_masks: images.iter().filter(|i| i.anomalous && i.mask.is_none()).count(),
        };
        (metrics, Curves { image_roc: roc_curve(&scores, &labels), pro: pro.map(|p| p.curve) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_orders_as_the_numbers() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, 0.0, 1e-30, 0.25, 7.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(sort_key(w[0]) < sort_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(sort_key(-0.0), sort_key(0.0));
        for x in xs {
            assert_eq!(score_of_key(sort_key(x)), x);
        }
    }

    #[test]
    fn roc_curve_is_the_curve_auroc_integrates() {
        // One tie across the classes (0.3): one diagonal step, as the half-counted pair.
        let c = roc_curve(&[0.1, 0.3, 0.3, 0.4], &[false, false, true, true]).unwrap();
        assert_eq!((c.x, c.y), (vec![0.0, 0.0, 0.5, 1.0], vec![0.0, 0.5, 1.0, 1.0]));
        assert_eq!(c.threshold, [f32::INFINITY, 0.4, 0.3, 0.1]);
        assert_eq!(roc_curve(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn pro_curve_ends_at_the_fpr_limit() {
        // The region (0.9) is found first: (0, 1); the next score flags 1 of 3 normal pixels, past
        // 0.3, so the curve is cut at (0.3, 1).
        let map = [0.9, 0.1, 0.5, 0.2];
        let p = pro_curve(&[&map], &[&[true, false, false, false]], 4, 1, 0.3).unwrap();
        assert_eq!((p.curve.x, p.curve.y), (vec![0.0, 0.0, 0.3], vec![0.0, 1.0, 1.0]));
        assert_eq!(p.curve.threshold, [f32::INFINITY, 0.9, 0.5]);
        assert_eq!(p.aupro, 1.0);
    }

    #[test]
    fn regions_join_diagonal_neighbours() {
        // x . .
        // . x .     one region (corner contact), and a separate one at the bottom right
        // . . . x
        #[rustfmt::skip]
        let mask = [
            true,  false, false, false,
            false, true,  false, false,
            false, false, false, true,
        ];
        let (labels, sizes) = label_regions(&mask, 4, 3);
        assert_eq!(sizes, vec![2, 1]);
        assert_eq!((labels[0], labels[5], labels[11]), (1, 1, 2));
    }
}
