//! Curve points for people and plotting tools (the image ROC, the PRO curve), kept to a size a
//! report and a JSON file can carry. The areas (AUROC, AUPRO) are always computed exactly from
//! every point by [`super::metrics`]; only the points handed out are thinned.

/// At most about this many points per curve: every point when the curve has fewer candidate
/// points (the image ROC of any real test set), else thinned as [`CurveBuilder`] says. 2000
/// points are finer than any printed plot and keep a curve in the JSON near 100 kB.
pub const MAX_CURVE_POINTS: usize = 2000;

/// A monotone curve from (0, 0), as columns: `x[i]`, `y[i]` and the score threshold that gives
/// the point (predicted anomalous: score >= threshold; +inf at the origin, where nothing is).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub threshold: Vec<f32>,
    /// True when points were dropped by the thinning.
    pub thinned: bool,
}

impl Curve {
    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
}

/// Collects the points of a curve that rises in x and y, one at a time, without holding them
/// all: a curve over every pixel of a test set has millions of candidate points. A point is
/// kept when it is at least `step` away from the last kept one in x or in y; with step
/// 2 / MAX_CURVE_POINTS and x, y in [0, 1], at most MAX_CURVE_POINTS + 2 points stay. The last
/// point is always kept, so the curve ends where the exact one does.
pub struct CurveBuilder {
    step: f64,
    curve: Curve,
    pending: Option<(f64, f64, f32)>,
}

impl CurveBuilder {
    /// For a curve of at most `candidates` points (after the origin): no thinning when they fit.
    pub fn new(candidates: usize) -> Self {
        let step = if candidates <= MAX_CURVE_POINTS { 0.0 } else { 2.0 / MAX_CURVE_POINTS as f64 };
        let curve = Curve { x: vec![0.0], y: vec![0.0], threshold: vec![f32::INFINITY], thinned: false };
        CurveBuilder { step, curve, pending: None }
    }

    pub fn push(&mut self, x: f64, y: f64, threshold: f32) {
        // A pending point is dropped by whatever comes next: kept only if it ends the curve.
        if self.pending.take().is_some() {
            self.curve.thinned = true;
        }
        let (last_x, last_y) = (self.curve.x[self.curve.len() - 1], self.curve.y[self.curve.len() - 1]);
        if (x - last_x).max(y - last_y) >= self.step {
            self.keep(x, y, threshold);
        } else {
            self.pending = Some((x, y, threshold));
        }
    }

    pub fn finish(mut self) -> Curve {
        if let Some((x, y, t)) = self.pending.take() {
            self.keep(x, y, t);
        }
        self.curve
    }

    fn keep(&mut self, x: f64, y: f64, threshold: f32) {
        self.curve.x.push(x);
        self.curve.y.push(y);
        self.curve.threshold.push(threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_curves_keep_every_point() {
        let mut b = CurveBuilder::new(3);
        for (x, y) in [(0.0, 0.5), (0.0, 0.5000001), (1.0, 1.0)] {
            b.push(x, y, 1.0);
        }
        let c = b.finish();
        assert_eq!(c.len(), 4);
        assert!(!c.thinned);
    }

    #[test]
    fn long_curves_are_thinned_but_keep_their_end() {
        let n = 100 * MAX_CURVE_POINTS;
        let mut b = CurveBuilder::new(n);
        for i in 1..=n {
            let t = i as f64 / n as f64;
            b.push(t, t.sqrt(), -(i as f32));
        }
        let c = b.finish();
        assert!(c.thinned);
        assert!(c.len() <= MAX_CURVE_POINTS + 2 && c.len() > MAX_CURVE_POINTS / 4, "{} points", c.len());
        assert_eq!((c.x[c.len() - 1], c.y[c.len() - 1], c.threshold[c.len() - 1]), (1.0, 1.0, -(n as f32)));
        assert_eq!((c.x[0], c.y[0]), (0.0, 0.0));
    }
}
