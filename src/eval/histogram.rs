//! The image scores of good and defective test images binned side by side, with the threshold
//! on a bin edge: what the report's histogram and `eval`'s terminal histogram both draw.

/// Bins of equal width `width`, bin i covering (lo + i * width, lo + (i + 1) * width] (the
/// lowest score goes into bin 0). The threshold is the edge after `bins_below` bins, so the bars
/// left of it are exactly the images predicted normal (score <= threshold, as
/// [`super::threshold::Normalization::is_anomalous`]) and those right of it the ones flagged.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreHistogram {
    pub lo: f64,
    pub width: f64,
    pub threshold: f32,
    pub bins_below: usize,
    /// Good images per bin.
    pub good: Vec<u32>,
    /// Defective images per bin.
    pub defective: Vec<u32>,
}

impl ScoreHistogram {
    /// About `bins` bins over the scores and the threshold (one or two more when the threshold
    /// falls inside the range; at least one). None without scores or with a non-finite score or
    /// threshold. Panics if the lengths differ.
    pub fn new(scores: &[f32], anomalous: &[bool], threshold: f32, bins: usize) -> Option<Self> {
        assert_eq!(scores.len(), anomalous.len(), "histogram: {} scores for {} labels", scores.len(), anomalous.len());
        if scores.is_empty() || !threshold.is_finite() || scores.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let t = f64::from(threshold);
        let min = scores.iter().map(|&s| f64::from(s)).fold(t, f64::min);
        let max = scores.iter().map(|&s| f64::from(s)).fold(t, f64::max);
        // All scores equal to the threshold: any positive width draws one bar left of the line.
        let width = if max > min { (max - min) / bins.max(1) as f64 } else { t.abs().max(1.0) * 1e-3 };
        // A score at the threshold needs a bin left of the line even when it is the lowest score.
        let at_or_below = scores.iter().any(|&s| f64::from(s) <= t);
        let bins_below = (((t - min) / width).ceil() as usize).max(usize::from(at_or_below));
        let bins_above = ((max - t) / width).ceil() as usize;
        let total = bins_below + bins_above;
        let mut histogram = ScoreHistogram {
            lo: t - bins_below as f64 * width,
            width,
            threshold,
            bins_below,
            good: vec![0; total],
            defective: vec![0; total],
        };
        for (&s, &a) in scores.iter().zip(anomalous) {
            // Measured from the threshold, so its side is exact whatever the rounding of the edges.
            let d = f64::from(s) - t;
            let bin = if d <= 0.0 {
                bins_below - 1 - ((-d / width).floor() as usize).min(bins_below - 1)
            } else {
                bins_below + ((d / width).ceil() as usize).saturating_sub(1).min(bins_above - 1)
            };
            let counts = if a { &mut histogram.defective } else { &mut histogram.good };
            counts[bin] += 1;
        }
        Some(histogram)
    }

    pub fn bins(&self) -> usize {
        self.good.len()
    }

    /// The left edge of bin `i` (`i == bins()` gives the right edge of the last).
    pub fn edge(&self, i: usize) -> f64 {
        self.lo + i as f64 * self.width
    }

    /// Good images above the threshold: the false alarms.
    pub fn false_alarms(&self) -> u32 {
        self.good[self.bins_below..].iter().sum()
    }

    /// Defective images at or below the threshold: the misses.
    pub fn misses(&self) -> u32 {
        self.defective[..self.bins_below].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_splits_the_bins_exactly() {
        let scores = [0.0, 1.0, 2.0, 2.0, 2.5, 3.0, 10.0];
        let labels = [false, false, false, true, false, true, true];
        let h = ScoreHistogram::new(&scores, &labels, 2.0, 10).unwrap();
        assert_eq!(h.good.iter().sum::<u32>(), 4);
        assert_eq!(h.defective.iter().sum::<u32>(), 3);
        // 2.5 (good) is above 2.0; the defect at exactly 2.0 is not flagged.
        assert_eq!((h.false_alarms(), h.misses()), (1, 1));
        assert!((h.edge(h.bins_below) - 2.0).abs() < 1e-12);
        assert!(h.edge(0) <= 0.0 && h.edge(h.bins()) >= 10.0 - 1e-9);
    }

    #[test]
    fn equal_scores_and_bad_input() {
        let h = ScoreHistogram::new(&[5.0, 5.0], &[false, true], 5.0, 20).unwrap();
        assert_eq!((h.good.clone(), h.defective.clone(), h.bins_below), (vec![1], vec![1], 1));
        // The threshold at the lowest score: that score is still left of the line.
        let h = ScoreHistogram::new(&[1.0, 3.0], &[false, true], 1.0, 4).unwrap();
        assert_eq!((h.bins_below, h.false_alarms(), h.misses()), (1, 0, 0));
        assert_eq!(ScoreHistogram::new(&[], &[], 1.0, 10), None);
        assert_eq!(ScoreHistogram::new(&[f32::NAN], &[true], 1.0, 10), None);
    }
}
