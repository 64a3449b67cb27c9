//! Shapes in design units, each with a signed distance for anti-aliased edges: boxes, rigid
//! placements, blobs and strokes.

use super::random::uniform;
use crate::rng::SplitMix64;
use std::f32::consts::{PI, TAU};

/// Signed distance to a box of half extents (hx, hy) centred at the origin.
pub(super) fn box_sdf(x: f32, y: f32, hx: f32, hy: f32) -> f32 {
    let (qx, qy) = (x.abs() - hx, y.abs() - hy);
    qx.max(0.0).hypot(qy.max(0.0)) + qx.max(qy).min(0.0)
}

/// A box (x0, y0, x1, y1) in design units.
pub(super) type Bounds = (f32, f32, f32, f32);

pub(super) fn union(a: Bounds, b: Bounds) -> Bounds {
    (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
}

/// The box of half side `r` around `c`.
pub(super) fn around(c: (f32, f32), r: f32) -> Bounds {
    (c.0 - r, c.1 - r, c.0 + r, c.1 + r)
}

/// A rigid placement: `local` maps image points into the frame of a part or texture.
#[derive(Clone, Copy)]
pub(super) struct Pose {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) cos: f32,
    pub(super) sin: f32,
}

impl Pose {
    /// Centred on (cx, cy) within `shift` units, rotated by up to `degrees` either way.
    pub(super) fn random(rng: &mut SplitMix64, (cx, cy): (f32, f32), shift: f32, degrees: f32) -> Pose {
        let angle = uniform(rng, -degrees, degrees).to_radians();
        Pose {
            cx: cx + uniform(rng, -shift, shift),
            cy: cy + uniform(rng, -shift, shift),
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    pub(super) fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy)
    }

    pub(super) fn world(&self, u: f32, v: f32) -> (f32, f32) {
        (self.cx + self.cos * u - self.sin * v, self.cy + self.sin * u + self.cos * v)
    }
}

/// A star-shaped blob: an ellipse whose radius wobbles with the angle (harmonics 2 to 5).
pub(super) struct Blob {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    cos: f32,
    sin: f32,
    wobble: [(f32, f32); 4],
}

impl Blob {
    /// Mean radius `r`, axis ratio down to `1 - aspect`, radius wobbling by up to `rough`.
    pub(super) fn random(rng: &mut SplitMix64, (cx, cy): (f32, f32), r: f32, aspect: f32, rough: f32) -> Blob {
        let ratio = 1.0 - uniform(rng, 0.0, aspect);
        let angle = uniform(rng, 0.0, PI);
        let mut wobble = [(0.0, 0.0); 4];
        for (h, w) in wobble.iter_mut().enumerate() {
            *w = (rough * uniform(rng, 0.0, 1.0) / (h as f32 + 1.0), uniform(rng, 0.0, TAU));
        }
        Blob { cx, cy, rx: r / ratio.sqrt(), ry: r * ratio.sqrt(), cos: angle.cos(), sin: angle.sin(), wobble }
    }

    /// Signed distance along the ray from the centre (negative inside): exact for circles and
    /// close to the true distance for these gentle shapes, which is all anti-aliasing needs.
    pub(super) fn sdf(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (a, b) = ((self.cos * dx + self.sin * dy) / self.rx, (-self.sin * dx + self.cos * dy) / self.ry);
        let rho = a.hypot(b).max(1e-6);
        let theta = b.atan2(a);
        let k = 1.0
            + self
                .wobble
                .iter()
                .enumerate()
                .map(|(h, (amp, ph))| amp * ((h + 2) as f32 * theta + ph).cos())
                .sum::<f32>();
        dx.hypot(dy) * (1.0 - k / rho)
    }

    /// A box holding the blob grown by `grow`.
    pub(super) fn bounds(&self, grow: f32) -> Bounds {
        let wobble: f32 = self.wobble.iter().map(|w| w.0).sum();
        around((self.cx, self.cy), self.rx.max(self.ry) * (1.0 + wobble) + grow)
    }

    /// Position within the blob: (dx, dy) over its mean radius, for shading it as a dome.
    pub(super) fn unit(&self, x: f32, y: f32) -> (f32, f32) {
        let r = (self.rx * self.ry).sqrt();
        ((x - self.cx) / r, (y - self.cy) / r)
    }
}

/// A scratch: a cubic Bézier stroke that tapers to its ends.
pub(super) struct Stroke {
    pub(super) points: Vec<(f32, f32)>,
    half: f32,
    /// Holds the stroke and a margin around it.
    pub(super) bounds: Bounds,
}

impl Stroke {
    /// From `start` in direction `angle`, `len` long, bending sideways up to `bend`.
    pub(super) fn random(
        rng: &mut SplitMix64,
        start: (f32, f32),
        angle: f32,
        len: f32,
        bend: f32,
        half: f32,
    ) -> Stroke {
        let (dx, dy) = (angle.cos(), angle.sin());
        let at = |t: f32, side: f32| (start.0 + dx * len * t - dy * side, start.1 + dy * len * t + dx * side);
        let (s1, s2) = (uniform(rng, -bend, bend), uniform(rng, -bend, bend));
        Stroke::through([at(0.0, 0.0), at(1.0 / 3.0, s1), at(2.0 / 3.0, s2), at(1.0, 0.0)], half)
    }

    /// The Bézier curve of these control points.
    pub(super) fn through(control: [(f32, f32); 4], half: f32) -> Stroke {
        let points: Vec<(f32, f32)> = (0..=24)
            .map(|k| {
                let t = k as f32 / 24.0;
                let w = [(1.0 - t).powi(3), 3.0 * t * (1.0 - t).powi(2), 3.0 * t * t * (1.0 - t), t.powi(3)];
                (0..4).fold((0.0, 0.0), |(x, y), j| (x + w[j] * control[j].0, y + w[j] * control[j].1))
            })
            .collect();
        let bounds = points.iter().map(|&p| around(p, half + 2.0)).reduce(union).expect("25 points");
        Stroke { points, half, bounds }
    }

    /// The same stroke moved by (dx, dy).
    pub(super) fn shifted(&self, dx: f32, dy: f32) -> Stroke {
        let points = self.points.iter().map(|&(x, y)| (x + dx, y + dy)).collect();
        let b = self.bounds;
        Stroke { points, half: self.half, bounds: (b.0 + dx, b.1 + dy, b.2 + dx, b.3 + dy) }
    }

    /// Signed distance to the stroke's edge (negative inside).
    pub(super) fn sdf(&self, x: f32, y: f32) -> f32 {
        let segments = (self.points.len() - 1) as f32;
        let (mut best, mut at) = (f32::MAX, 0.0);
        for (k, pair) in self.points.windows(2).enumerate() {
            let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
            let (ex, ey) = (bx - ax, by - ay);
            let s = (((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey).max(1e-9)).clamp(0.0, 1.0);
            let d = (x - ax - s * ex).hypot(y - ay - s * ey);
            if d < best {
                best = d;
                at = (k as f32 + s) / segments;
            }
        }
        let taper = (6.0 * at * (1.0 - at)).min(1.0).sqrt();
        best - self.half * taper
    }
}
