//! Thresholds and normalisation (anomalib >= 1.2 semantics, REFERENCE.md section 6).

/// The threshold that maximises F1 over the precision-recall curve: candidates are the distinct
/// scores, a score >= t is predicted anomalous, f1 = 2PR / (P + R + 1e-10) (torchmetrics, as
/// anomalib's F1AdaptiveThreshold). With no anomalous sample it is the highest normal score.
/// Returns None for an empty input.
pub fn f1_adaptive_threshold(scores: &[f32], anomalous: &[bool]) -> Option<f32> {
    let curve = pr_curve(scores, anomalous)?;
    if curve.positives == 0 {
        return scores.iter().copied().reduce(f32::max);
    }
    let mut best = (f64::NEG_INFINITY, curve.points[0].threshold);
    for p in &curve.points {
        let f1 = 2.0 * p.precision * p.recall / (p.precision + p.recall + 1e-10);
        // Ties go to the lower threshold, as torch.argmax over thresholds sorted ascending.
        if f1 >= best.0 {
            best = (f1, p.threshold);
        }
    }
    Some(best.1)
}

/// F1 of the labels a model with this threshold gives: anomalous when `score > threshold`
/// (normalised > 0.5), the same rule as [`Normalization::is_anomalous`].
pub fn f1_at(scores: &[f32], anomalous: &[bool], threshold: f32) -> f64 {
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    for (&s, &a) in scores.iter().zip(anomalous) {
        match (s > threshold, a) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            _ => {}
        }
    }
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fneg) as f64
}

pub struct PrPoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
}

pub struct PrCurve {
    pub positives: u64,
    /// One point per distinct score, thresholds ascending.
    pub points: Vec<PrPoint>,
}

/// The precision-recall curve over every distinct score (predicted anomalous: score >= t).
pub fn pr_curve(scores: &[f32], anomalous: &[bool]) -> Option<PrCurve> {
    if scores.is_empty() || scores.len() != anomalous.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = anomalous.iter().filter(|&&a| a).count() as u64;
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut points = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        while i < order.len() && scores[order[i]] == t {
            if anomalous[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = if positives == 0 { 0.0 } else { tp as f64 / positives as f64 };
        points.push(PrPoint { threshold: t, precision, recall });
    }
    points.reverse();
    Some(PrCurve { positives, points })
}

/// The statistics that turn raw scores into [0, 1] with the threshold at 0.5.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub threshold: f32,
    pub min: f32,
    pub max: f32,
}

impl Normalization {
    /// clamp((x - t) / (max - min) + 0.5, 0, 1); a degenerate range (max == min) divides by 1e-12
    /// instead, which still puts every score on the right side of 0.5.
    pub fn apply(&self, x: f32) -> f32 {
        let range = (self.max - self.min).max(1e-12);
        ((x - self.threshold) / range + 0.5).clamp(0.0, 1.0)
    }

    /// Anomalous when strictly above the threshold (normalised > 0.5).
    pub fn is_anomalous(&self, x: f32) -> bool {
        x > self.threshold
    }

    /// Statistics from observed scores: min and max of `scores`, and `threshold`.
    pub fn from_scores(threshold: f32, scores: &[f32]) -> Self {
        let min = scores.iter().copied().fold(f32::INFINITY, f32::min);
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Normalization { threshold, min: min.min(threshold), max: max.max(threshold) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_threshold_separates_a_clean_split() {
        let scores = [0.1, 0.2, 0.3, 0.8, 0.9];
        let labels = [false, false, false, true, true];
        assert_eq!(f1_adaptive_threshold(&scores, &labels), Some(0.8));
        assert_eq!(f1_at(&scores, &labels, 0.3), 1.0);
    }

    #[test]
    fn f1_threshold_hand_computed_overlap() {
        // t = 0.4: TP 2, FP 1 -> P 2/3, R 1 -> F1 0.8; t = 0.6: TP 1, FP 0 -> P 1, R 0.5 -> 0.667;
        // t = 0.2: P 2/4, R 1 -> 0.667. Best 0.4.
        let scores = [0.2, 0.4, 0.5, 0.6];
        let labels = [false, true, false, true];
        assert_eq!(f1_adaptive_threshold(&scores, &labels), Some(0.4));
    }

    #[test]
    fn no_anomalies_gives_the_highest_normal_score() {
        assert_eq!(f1_adaptive_threshold(&[0.3, 0.7, 0.5], &[false; 3]), Some(0.7));
        assert_eq!(f1_adaptive_threshold(&[], &[]), None);
    }

    #[test]
    fn normalisation_centres_the_threshold() {
        let n = Normalization { threshold: 2.0, min: 1.0, max: 5.0 };
        assert_eq!(n.apply(2.0), 0.5);
        assert_eq!(n.apply(3.0), 0.75);
        assert_eq!(n.apply(100.0), 1.0);
        assert_eq!(n.apply(-100.0), 0.0);
        assert!(n.is_anomalous(2.1) && !n.is_anomalous(2.0));
    }
}
