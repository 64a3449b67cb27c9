//! The pixel grid in design units, colours, and the layers a scene and its defect are painted
//! into.

use super::shapes::Bounds;

/// The design width: geometry is written for a 256-pixel image and scaled to the actual size.
pub(super) const UNITS: f32 = 256.0;

pub(super) type Rgb = [f32; 3];

pub(super) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

pub(super) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [lerp(a[0], b[0], t), lerp(a[1], b[1], t), lerp(a[2], b[2], t)]
}

pub(super) fn scale(a: Rgb, k: f32) -> Rgb {
    [a[0] * k, a[1] * k, a[2] * k]
}

pub(super) fn luma(a: Rgb) -> f32 {
    0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
}

pub(super) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// `x.floor()` as an integer, without the libm call `f32::floor` becomes on baseline x86-64.
pub(super) fn floor(x: f32) -> i32 {
    let i = x as i32;
    i - (x < i as f32) as i32
}

/// The pixel grid in design units.
pub(super) struct Plane {
    pub(super) n: usize,
    /// The side of a pixel in design units.
    pub(super) pix: f32,
}

impl Plane {
    pub(super) fn len(&self) -> usize {
        self.n * self.n
    }

    pub(super) fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.n + x as usize
    }

    /// The centre of pixel `i` in design units.
    pub(super) fn point(&self, i: usize) -> (f32, f32) {
        (((i % self.n) as f32 + 0.5) * self.pix, ((i / self.n) as f32 + 0.5) * self.pix)
    }

    /// `f` at the pixels whose centres lie within `bounds`, zero elsewhere.
    pub(super) fn field(&self, bounds: Bounds, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        let span = |lo: f32, hi: f32| {
            let first = ((lo / self.pix - 0.5).max(0.0) as usize).min(self.n);
            let last = ((hi / self.pix + 0.5).max(0.0) as usize).min(self.n);
            first..last
        };
        for y in span(bounds.1, bounds.3) {
            for x in span(bounds.0, bounds.2) {
                let i = y * self.n + x;
                let (px, py) = self.point(i);
                out[i] = f(px, py);
            }
        }
        out
    }

    /// Anti-aliased coverage of a pixel whose centre lies at signed distance `d` (design units,
    /// negative inside) from an edge: one half exactly on the edge.
    pub(super) fn cover(&self, d: f32) -> f32 {
        (0.5 - d / self.pix).clamp(0.0, 1.0)
    }

    /// Like [`Plane::cover`] but with a soft edge `band` units wide on either side (at least a
    /// pixel, so that it is still anti-aliased on small images).
    pub(super) fn soft(&self, d: f32, band: f32) -> f32 {
        let band = band.max(self.pix);
        smoothstep(band, -band, d)
    }
}

/// What is drawn before the defect: a foreground (threads, wires, the part) with its coverage
/// over a background. Defects paint the foreground, cut its coverage, or paint on top once the
/// layers are flattened.
pub(super) struct Layers {
    bg: Vec<Rgb>,
    fg: Vec<Rgb>,
    cov: Vec<f32>,
}

impl Layers {
    pub(super) fn build(plane: &Plane, f: impl Fn(f32, f32) -> (Rgb, Rgb, f32)) -> Layers {
        let (mut bg, mut fg, mut cov) =
            (Vec::with_capacity(plane.len()), Vec::with_capacity(plane.len()), Vec::with_capacity(plane.len()));
        for i in 0..plane.len() {
            let (x, y) = plane.point(i);
            let (b, f, c) = f(x, y);
            bg.push(b);
            fg.push(f);
            cov.push(c);
        }
        Layers { bg, fg, cov }
    }

    pub(super) fn pixel(&self, i: usize) -> Rgb {
        mix(self.bg[i], self.fg[i], self.cov[i])
    }

    /// Merges the layers into the foreground, so that what is painted next covers everything.
    pub(super) fn flatten(&mut self) {
        for i in 0..self.fg.len() {
            self.fg[i] = self.pixel(i);
            self.cov[i] = 1.0;
        }
    }

    /// The mask weight of a defect of weight `g` on the foreground: where it shows.
    pub(super) fn visible(&self, g: &[f32]) -> Vec<f32> {
        g.iter().zip(&self.cov).map(|(g, c)| g * c).collect()
    }

    /// Blends the foreground towards `recolour((x, y), colour)` by `g`.
    pub(super) fn paint(&mut self, plane: &Plane, g: &[f32], recolour: impl Fn((f32, f32), Rgb) -> Rgb) {
        for (i, &w) in g.iter().enumerate() {
            if w > 0.0 {
                self.fg[i] = mix(self.fg[i], recolour(plane.point(i), self.fg[i]), w);
            }
        }
    }

    /// Removes the foreground where `g` covers it, showing the background.
    pub(super) fn cut(&mut self, g: &[f32]) {
        for (c, w) in self.cov.iter_mut().zip(g) {
            *c *= 1.0 - w;
        }
    }
}
