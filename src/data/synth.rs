//! Synthetic MVTec-AD-shaped datasets: three textures and two objects, each with natural
//! variation between good images and two or three kinds of realistic defects with exact
//! ground-truth masks. They let `patchcore demo` and the tests run without downloading MVTec.
//!
//! Everything is drawn procedurally in design units (the image is 256 units wide whatever its
//! pixel size), so shapes and textures scale with `size`. Edges are anti-aliased from signed
//! distances. A defect is drawn with a weight field that is also its mask: a pixel is in the
//! mask iff its weight is at least one half, and weights fall to zero within a couple of pixels
//! of that boundary, so the mask is where the defect shows.

use crate::error::{Error, Result};
use crate::rng::{fnv1a32, mix64, SplitMix64};
use image::{GrayImage, Luma, RgbImage};
use rayon::prelude::*;
use std::f32::consts::{PI, TAU};
use std::path::{Path, PathBuf};

/// The categories [`generate`] knows: three textures, then two objects.
///
/// Their names differ from MVTec AD's (its `grid` and `wood` are real folders one might write
/// next to), since regenerating a category replaces its images.
pub const CATEGORIES: &[&str] = &["woven", "grain", "mesh", "washer", "chip"];
const KINDS: [Kind; 5] = [Kind::Woven, Kind::Grain, Kind::Mesh, Kind::Washer, Kind::Chip];

/// How many images of which size [`generate`] writes, and the seed that fixes their content.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthOptions {
    /// The side of the square images, in pixels.
    pub size: u32,
    /// Good images in `train/good`.
    pub train: usize,
    /// Good images in `test/good`.
    pub test_good: usize,
    /// Images in each `test/<defect>` folder.
    pub test_per_defect: usize,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { size: 256, train: 40, test_good: 10, test_per_defect: 5, seed: 0 }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSummary {
    pub category: String,
    /// `<out>/<category>`.
    pub root: PathBuf,
    pub train: usize,
    pub test_good: usize,
    /// Each defect's folder name and image count.
    pub defects: Vec<(String, usize)>,
}

/// Smaller images cannot hold the thinnest structures (weave threads, scratches).
const MIN_SIZE: u32 = 64;
const MAX_SIZE: u32 = 4096;

/// Writes `<out>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}`:
/// images `000.png`, `001.png` ... and, for defect images, `<name>_mask.png` (0/255, single
/// channel, the image's size). The bytes depend only on `category` and `options`.
pub fn generate(out: &Path, category: &str, options: &SynthOptions) -> Result<SynthSummary> {
    let kind = CATEGORIES.iter().position(|&c| c == category).map(|i| KINDS[i]).ok_or_else(|| {
        Error::option("--category", format!("`{category}`: expected one of {}", CATEGORIES.join(", ")))
    })?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&options.size) {
        return Err(Error::option("--size", format!("{}: expected {MIN_SIZE} to {MAX_SIZE} pixels", options.size)));
    }
    let root = out.join(category);
    let category_seed = mix64(mix64(options.seed) ^ fnv1a32(category.as_bytes()) as u64);
    let mut jobs = Vec::new();
    let mut folder = |split: u64, dir: PathBuf, masks: Option<PathBuf>, count: usize, defect: Option<Defect>| {
        let split_seed = mix64(category_seed ^ mix64(split));
        for index in 0..count {
            let name = format!("{index:03}");
            jobs.push(Job {
                image: dir.join(format!("{name}.png")),
                mask: masks.as_ref().map(|m| m.join(format!("{name}_mask.png"))),
                defect,
                seed: mix64(split_seed ^ index as u64),
            });
        }
        prepare(&dir, count, ".png")?;
        if let Some(m) = &masks {
            prepare(m, count, "_mask.png")?;
        }
        Ok::<(), Error>(())
    };
    folder(0, root.join("train/good"), None, options.train, None)?;
    folder(1, root.join("test/good"), None, options.test_good, None)?;
    let mut defects = Vec::new();
    for (k, &defect) in kind.defects().iter().enumerate() {
        let name = defect.name();
        let masks = Some(root.join("ground_truth").join(name));
        folder(2 + k as u64, root.join("test").join(name), masks, options.test_per_defect, Some(defect))?;
        defects.push((name.to_string(), options.test_per_defect));
    }
    jobs.par_iter().try_for_each(|job| {
        let (image, mask) = render(kind, options.size, job.seed, job.defect);
        save(image.save(&job.image), &job.image)?;
        match (mask, &job.mask) {
            (Some(mask), Some(path)) => save(mask.save(path), path),
            _ => Ok(()),
        }
    })?;
    Ok(SynthSummary {
        category: category.to_string(),
        root,
        train: options.train,
        test_good: options.test_good,
        defects,
    })
}

/// The crate's error for a failed PNG write: the file system's, or the encoder's.
fn save(written: image::ImageResult<()>, path: &Path) -> Result<()> {
    written.map_err(|e| match e {
        image::ImageError::IoError(e) => Error::io(path, e),
        other => Error::image(path, format!("cannot encode: {other}")),
    })
}

/// One image to render and where it and its mask go.
struct Job {
    image: PathBuf,
    mask: Option<PathBuf>,
    defect: Option<Defect>,
    seed: u64,
}

/// Creates `dir` and removes the images a previous, larger run left there (`NNN<suffix>` with
/// NNN at or beyond `count`), so that the folder holds exactly this run's images.
fn prepare(dir: &Path, count: usize, suffix: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let stem = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(suffix));
        let index = stem.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).map(str::parse::<usize>);
        if matches!(index, Some(Ok(i)) if i >= count) || matches!(index, Some(Err(_))) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Woven,
    Grain,
    Mesh,
    Washer,
    Chip,
}

impl Kind {
    fn defects(self) -> &'static [Defect] {
        match self {
            Kind::Woven => &[Defect::Hole, Defect::Stain, Defect::Thread],
            Kind::Grain => &[Defect::Scratch, Defect::Hole, Defect::Color],
            Kind::Mesh => &[Defect::Broken, Defect::Glue, Defect::Contamination],
            Kind::Washer => &[Defect::Missing, Defect::Scratch, Defect::Rust],
            Kind::Chip => &[Defect::Missing, Defect::Scratch, Defect::Contamination],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// A dark hole with a rim (frayed fibres on fabric, a darkened ring in wood).
    Hole,
    /// A soft-edged oil stain with a darker tide line.
    Stain,
    /// A broken weft thread: its floats are gone and the warp below shows in a dark gap.
    Thread,
    /// A thin curved line, brighter or darker than the surface.
    Scratch,
    /// A region of shifted hue (blue-stain fungus in wood).
    Color,
    /// Wires cut out of the mesh.
    Broken,
    /// A translucent amber blob filling the mesh.
    Glue,
    /// Small foreign particles: metal chips or solder balls.
    Contamination,
    /// A piece broken out of the part's outline, the background showing.
    Missing,
    /// A rust-coloured blotch.
    Rust,
}

impl Defect {
    fn name(self) -> &'static str {
        match self {
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Thread => "thread",
            Defect::Scratch => "scratch",
            Defect::Color => "color",
            Defect::Broken => "broken",
            Defect::Glue => "glue",
            Defect::Contamination => "contamination",
            Defect::Missing => "missing",
            Defect::Rust => "rust",
        }
    }
}

/// Renders one image of `kind` (with `defect` drawn in, and then its mask). The scene, the
/// defect and the sensor noise draw from separate streams, so a defect image is exactly its
/// clean twin plus the defect.
fn render(kind: Kind, size: u32, seed: u64, defect: Option<Defect>) -> (RgbImage, Option<GrayImage>) {
    let plane = Plane { n: size as usize, pix: UNITS / size as f32 };
    let mut rng = SplitMix64::new(mix64(seed ^ 0x5CE4E));
    let scene = Scene::new(kind, &mut rng);
    let look = Look::new(&mut rng);
    let mut layers = scene.layers(&plane);
    let weights = defect.map(|d| draw(d, &scene, &plane, &mut layers, &mut SplitMix64::new(mix64(seed ^ 0xDEFEC7))));
    let image = look.finish(&plane, &layers, mix64(seed ^ 0x5E4502));
    let mask = weights
        .map(|w| GrayImage::from_fn(size, size, |x, y| Luma([if w[plane.index(x, y)] >= 0.5 { 255 } else { 0 }])));
    (image, mask)
}

// ---------------------------------------------------------------------------------------------
// Geometry and colour helpers.

/// The design width: geometry is written for a 256-pixel image and scaled to the actual size.
const UNITS: f32 = 256.0;

type Rgb = [f32; 3];

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [lerp(a[0], b[0], t), lerp(a[1], b[1], t), lerp(a[2], b[2], t)]
}

fn scale(a: Rgb, k: f32) -> Rgb {
    [a[0] * k, a[1] * k, a[2] * k]
}

fn luma(a: Rgb) -> f32 {
    0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Uniform in [lo, hi).
fn uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.next_f64() as f32
}

/// A normal deviate with standard deviation `sd`, clamped to 2.5 of them so that no image is
/// an outlier of the normal variation.
fn jitter(rng: &mut SplitMix64, sd: f32) -> f32 {
    (rng.normal() as f32).clamp(-2.5, 2.5) * sd
}

/// Lattice value in [-1, 1) at (ix, iy) of the noise named by `seed`. Callers name related
/// noises `seed ^ 1`, `seed ^ 2` ...: the multiplication spreads that difference over all bits,
/// so that no shift of the lattice maps one noise onto another.
fn lattice(seed: u64, ix: i32, iy: i32) -> f32 {
    let h = mix64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((ix as u32 as u64) << 32 | iy as u32 as u64));
    (h >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0
}

/// Value noise with quintic interpolation, in [-1, 1], one lattice cell per unit.
fn noise(seed: u64, x: f32, y: f32) -> f32 {
    let (ix, iy) = (floor(x), floor(y));
    let fade = |t: f32| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
    let (tx, ty) = (fade(x - ix as f32), fade(y - iy as f32));
    let top = lerp(lattice(seed, ix, iy), lattice(seed, ix + 1, iy), tx);
    let bottom = lerp(lattice(seed, ix, iy + 1), lattice(seed, ix + 1, iy + 1), tx);
    lerp(top, bottom, ty)
}

/// `x.floor()` as an integer, without the libm call `f32::floor` becomes on baseline x86-64.
fn floor(x: f32) -> i32 {
    let i = x as i32;
    i - (x < i as f32) as i32
}

/// Fractal noise: `octaves` of [`noise`], each twice the frequency and half the amplitude.
fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
    let (mut sum, mut amp, mut freq, mut norm) = (0.0, 1.0, 1.0, 0.0);
    for o in 0..octaves {
        sum += amp * noise(mix64(seed ^ o as u64), x * freq, y * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

/// Three deviates of unit variance from 64 hashed bits, one per channel: each the sum of two
/// 10-bit uniforms (a triangular distribution, close enough to a sensor's Gaussian noise).
fn grain3(h: u64) -> [f32; 3] {
    std::array::from_fn(|k| {
        let (a, b) = ((h >> (20 * k)) & 0x3FF, (h >> (20 * k + 10)) & 0x3FF);
        ((a + b) as f32 / 1024.0 - 1.0) * 6f32.sqrt()
    })
}

/// Signed distance to a box of half extents (hx, hy) centred at the origin.
fn box_sdf(x: f32, y: f32, hx: f32, hy: f32) -> f32 {
    let (qx, qy) = (x.abs() - hx, y.abs() - hy);
    qx.max(0.0).hypot(qy.max(0.0)) + qx.max(qy).min(0.0)
}

/// A box (x0, y0, x1, y1) in design units.
type Bounds = (f32, f32, f32, f32);

fn union(a: Bounds, b: Bounds) -> Bounds {
    (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
}

/// The box of half side `r` around `c`.
fn around(c: (f32, f32), r: f32) -> Bounds {
    (c.0 - r, c.1 - r, c.0 + r, c.1 + r)
}

/// The pixel grid in design units.
struct Plane {
    n: usize,
    /// The side of a pixel in design units.
    pix: f32,
}

impl Plane {
    fn len(&self) -> usize {
        self.n * self.n
    }

    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.n + x as usize
    }

    /// The centre of pixel `i` in design units.
    fn point(&self, i: usize) -> (f32, f32) {
        (((i % self.n) as f32 + 0.5) * self.pix, ((i / self.n) as f32 + 0.5) * self.pix)
    }

    /// `f` at the pixels whose centres lie within `bounds`, zero elsewhere.
    fn field(&self, bounds: Bounds, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
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
    fn cover(&self, d: f32) -> f32 {
        (0.5 - d / self.pix).clamp(0.0, 1.0)
    }

    /// Like [`Plane::cover`] but with a soft edge `band` units wide on either side (at least a
    /// pixel, so that it is still anti-aliased on small images).
    fn soft(&self, d: f32, band: f32) -> f32 {
        let band = band.max(self.pix);
        smoothstep(band, -band, d)
    }
}

/// A rigid placement: `local` maps image points into the frame of a part or texture.
#[derive(Clone, Copy)]
struct Pose {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
}

impl Pose {
    /// Centred on (cx, cy) within `shift` units, rotated by up to `degrees` either way.
    fn random(rng: &mut SplitMix64, (cx, cy): (f32, f32), shift: f32, degrees: f32) -> Pose {
        let angle = uniform(rng, -degrees, degrees).to_radians();
        Pose {
            cx: cx + uniform(rng, -shift, shift),
            cy: cy + uniform(rng, -shift, shift),
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy)
    }

    fn world(&self, u: f32, v: f32) -> (f32, f32) {
        (self.cx + self.cos * u - self.sin * v, self.cy + self.sin * u + self.cos * v)
    }
}

/// A star-shaped blob: an ellipse whose radius wobbles with the angle (harmonics 2 to 5).
struct Blob {
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
    fn random(rng: &mut SplitMix64, (cx, cy): (f32, f32), r: f32, aspect: f32, rough: f32) -> Blob {
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
    fn sdf(&self, x: f32, y: f32) -> f32 {
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
    fn bounds(&self, grow: f32) -> Bounds {
        let wobble: f32 = self.wobble.iter().map(|w| w.0).sum();
        around((self.cx, self.cy), self.rx.max(self.ry) * (1.0 + wobble) + grow)
    }

    /// Position within the blob: (dx, dy) over its mean radius, for shading it as a dome.
    fn unit(&self, x: f32, y: f32) -> (f32, f32) {
        let r = (self.rx * self.ry).sqrt();
        ((x - self.cx) / r, (y - self.cy) / r)
    }
}

/// A scratch: a cubic Bézier stroke that tapers to its ends.
struct Stroke {
    points: Vec<(f32, f32)>,
    half: f32,
    /// Holds the stroke and a margin around it.
    bounds: Bounds,
}

impl Stroke {
    /// From `start` in direction `angle`, `len` long, bending sideways up to `bend`.
    fn random(rng: &mut SplitMix64, start: (f32, f32), angle: f32, len: f32, bend: f32, half: f32) -> Stroke {
        let (dx, dy) = (angle.cos(), angle.sin());
        let at = |t: f32, side: f32| (start.0 + dx * len * t - dy * side, start.1 + dy * len * t + dx * side);
        let (s1, s2) = (uniform(rng, -bend, bend), uniform(rng, -bend, bend));
        Stroke::through([at(0.0, 0.0), at(1.0 / 3.0, s1), at(2.0 / 3.0, s2), at(1.0, 0.0)], half)
    }

    /// The Bézier curve of these control points.
    fn through(control: [(f32, f32); 4], half: f32) -> Stroke {
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
    fn shifted(&self, dx: f32, dy: f32) -> Stroke {
        let points = self.points.iter().map(|&(x, y)| (x + dx, y + dy)).collect();
        let b = self.bounds;
        Stroke { points, half: self.half, bounds: (b.0 + dx, b.1 + dy, b.2 + dx, b.3 + dy) }
    }

    /// Signed distance to the stroke's edge (negative inside).
    fn sdf(&self, x: f32, y: f32) -> f32 {
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

// ---------------------------------------------------------------------------------------------
// Scenes: the good images.

/// What is drawn before the defect: a foreground (threads, wires, the part) with its coverage
/// over a background. Defects paint the foreground, cut its coverage, or paint on top once the
/// layers are flattened.
struct Layers {
    bg: Vec<Rgb>,
    fg: Vec<Rgb>,
    cov: Vec<f32>,
}

impl Layers {
    fn build(plane: &Plane, f: impl Fn(f32, f32) -> (Rgb, Rgb, f32)) -> Layers {
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

    fn pixel(&self, i: usize) -> Rgb {
        mix(self.bg[i], self.fg[i], self.cov[i])
    }

    /// Merges the layers into the foreground, so that what is painted next covers everything.
    fn flatten(&mut self) {
        for i in 0..self.fg.len() {
            self.fg[i] = self.pixel(i);
            self.cov[i] = 1.0;
        }
    }

    /// The mask weight of a defect of weight `g` on the foreground: where it shows.
    fn visible(&self, g: &[f32]) -> Vec<f32> {
        g.iter().zip(&self.cov).map(|(g, c)| g * c).collect()
    }

    /// Blends the foreground towards `recolour((x, y), colour)` by `g`.
    fn paint(&mut self, plane: &Plane, g: &[f32], recolour: impl Fn((f32, f32), Rgb) -> Rgb) {
        for (i, &w) in g.iter().enumerate() {
            if w > 0.0 {
                self.fg[i] = mix(self.fg[i], recolour(plane.point(i), self.fg[i]), w);
            }
        }
    }

    /// Removes the foreground where `g` covers it, showing the background.
    fn cut(&mut self, g: &[f32]) {
        for (c, w) in self.cov.iter_mut().zip(g) {
            *c *= 1.0 - w;
        }
    }
}

enum Scene {
    Woven(Woven),
    Grain(Grain),
    Mesh(Mesh),
    Washer(Washer),
    Chip(Chip),
}

impl Scene {
    fn new(kind: Kind, rng: &mut SplitMix64) -> Scene {
        match kind {
            Kind::Woven => Scene::Woven(Woven::new(rng)),
            Kind::Grain => Scene::Grain(Grain::new(rng)),
            Kind::Mesh => Scene::Mesh(Mesh::new(rng)),
            Kind::Washer => Scene::Washer(Washer::new(rng)),
            Kind::Chip => Scene::Chip(Chip::new(rng)),
        }
    }

    fn layers(&self, plane: &Plane) -> Layers {
        let black = [0.0; 3];
        match self {
            Scene::Woven(s) => Layers::build(plane, |x, y| (black, s.colour(x, y, false), 1.0)),
            Scene::Grain(s) => Layers::build(plane, |x, y| (black, s.colour(x, y), 1.0)),
            Scene::Mesh(s) => Layers::build(plane, |x, y| s.sample(plane, x, y)),
            Scene::Washer(s) => Layers::build(plane, |x, y| s.sample(plane, x, y)),
            Scene::Chip(s) => Layers::build(plane, |x, y| s.sample(plane, x, y)),
        }
    }

    /// Whether a scratch may pass through (x, y): on a chip, only its body (the leads are
    /// another material); elsewhere anywhere in the image.
    fn holds(&self, x: f32, y: f32) -> bool {
        match self {
            Scene::Chip(s) => {
                let (u, v) = s.pose.local(x, y);
                u.abs() < CHIP_BODY.0 - 3.0 && v.abs() < CHIP_BODY.1 - 3.0
            }
            _ => (4.0..UNITS - 4.0).contains(&x) && (4.0..UNITS - 4.0).contains(&y),
        }
    }

    /// A random point on the inspected surface, where a defect may sit.
    fn spot(&self, rng: &mut SplitMix64) -> (f32, f32) {
        match self {
            Scene::Washer(s) => {
                let (r, a) = (uniform(rng, WASHER_INNER + 14.0, WASHER_OUTER - 14.0), uniform(rng, 0.0, TAU));
                s.pose.world(r * a.cos(), r * a.sin())
            }
            Scene::Chip(s) => s.pose.world(
                uniform(rng, -CHIP_BODY.0 + 14.0, CHIP_BODY.0 - 14.0),
                uniform(rng, -CHIP_BODY.1 + 14.0, CHIP_BODY.1 - 14.0),
            ),
            _ => (uniform(rng, 40.0, 216.0), uniform(rng, 40.0, 216.0)),
        }
    }
}

/// Per-image lighting and the sensor: brightness drift, a gentle illumination gradient, white
/// balance, and noise.
struct Look {
    gain: f32,
    tint: Rgb,
    slope: (f32, f32),
}

/// Sensor noise, in grey levels.
const NOISE: f32 = 2.0;

impl Look {
    fn new(rng: &mut SplitMix64) -> Look {
        Look {
            gain: 1.0 + jitter(rng, 0.04),
            tint: [1.0 + jitter(rng, 0.012), 1.0 + jitter(rng, 0.012), 1.0 + jitter(rng, 0.012)],
            slope: (jitter(rng, 0.03), jitter(rng, 0.03)),
        }
    }

    fn finish(&self, plane: &Plane, layers: &Layers, seed: u64) -> RgbImage {
        let n = plane.n as u32;
        RgbImage::from_fn(n, n, |x, y| {
            let i = plane.index(x, y);
            let (px, py) = plane.point(i);
            let light = self.gain * (1.0 + self.slope.0 * (px / 128.0 - 1.0) + self.slope.1 * (py / 128.0 - 1.0));
            let (c, grain) = (layers.pixel(i), grain3(mix64(seed ^ i as u64)));
            image::Rgb(std::array::from_fn(|k| {
                (c[k] * self.tint[k] * light + NOISE * grain[k] + 0.5).clamp(0.0, 255.0) as u8
            }))
        })
    }
}

/// A plain-woven fabric: vertical warp and horizontal weft threads passing over and under
/// each other in a checkerboard.
struct Woven {
    pose: Pose,
    seed: u64,
    warp: Rgb,
    weft: Rgb,
}

/// Thread pitch, in design units.
const WEAVE: f32 = 10.0;

impl Woven {
    fn new(rng: &mut SplitMix64) -> Woven {
        let shade = 1.0 + jitter(rng, 0.02);
        Woven {
            pose: Pose::random(rng, (128.0, 128.0), 500.0, 3.0),
            seed: rng.next_u64(),
            warp: scale([196.0, 184.0, 162.0], shade),
            weft: scale([184.0, 170.0, 146.0], shade),
        }
    }

    /// Fabric coordinates of an image point: threads wander a little from straight lines.
    fn coords(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v) = self.pose.local(x, y);
        let s = self.seed;
        (u + 1.2 * noise(s ^ 1, u / 30.0, v / 30.0), v + 1.2 * noise(s ^ 2, u / 30.0, v / 30.0))
    }

    /// The fabric's colour; with `weft_gone` as where a weft thread broke: the warp shows
    /// everywhere, sunk and shadowed.
    fn colour(&self, x: f32, y: f32, weft_gone: bool) -> Rgb {
        let (u, v) = self.coords(x, y);
        let (gu, gv) = (u / WEAVE, v / WEAVE);
        let (i, j) = (floor(gu), floor(gv));
        let warp_over = (i + j) & 1 == 0;
        let (fu, fv) = (gu - i as f32, gv - j as f32);
        let (across, along, id, base, fibre) = if warp_over || weft_gone {
            (fu, fv, i, self.warp, noise(self.seed ^ 3, u / 1.3, v / 7.0))
        } else {
            (fv, fu, j ^ 0x4000_0000, self.weft, noise(self.seed ^ 4, v / 1.3, u / 7.0))
        };
        // Across the visible thread: a round profile with a narrow gap to the next; along it:
        // dipping where it passes under the crossing thread. Lit from the top left, the
        // rising flank of each bump is brighter than the falling one.
        let a = ((across - 0.07) / 0.86).clamp(0.0, 1.0);
        let profile = (PI * a).sin().powf(0.6);
        let crimp = 0.6 + 0.4 * (PI * along).sin();
        let lit = 1.0 + 0.2 * (PI * a).cos() + 0.12 * (PI * along).cos();
        let thread = 1.0 + 0.07 * lattice(self.seed ^ 5, id, 0);
        let blotch = 1.0 + 0.03 * noise(self.seed ^ 6, x / 50.0, y / 50.0);
        let k = profile * crimp * lit * thread * (1.0 + 0.12 * fibre);
        let sunk = match (weft_gone, warp_over) {
            (false, _) => 1.0,
            (true, true) => 0.6,
            (true, false) => 0.45,
        };
        scale(base, (0.2 + 0.75 * k) * blotch * sunk)
    }
}

/// Planed wood: growth rings (light earlywood, dark latewood) running along the board, with
/// fibres and pores.
struct Grain {
    pose: Pose,
    seed: u64,
    period: f32,
    early: Rgb,
    late: Rgb,
}

impl Grain {
    fn new(rng: &mut SplitMix64) -> Grain {
        let shade = 1.0 + jitter(rng, 0.03);
        let red = jitter(rng, 0.02);
        Grain {
            pose: Pose::random(rng, (128.0, 128.0), 500.0, 2.5),
            seed: rng.next_u64(),
            period: uniform(rng, 13.0, 18.0),
            early: [212.0 * shade * (1.0 + red), 168.0 * shade, 118.0 * shade * (1.0 - red)],
            late: [148.0 * shade * (1.0 + red), 98.0 * shade, 58.0 * shade * (1.0 - red)],
        }
    }

    fn colour(&self, x: f32, y: f32) -> Rgb {
        let (u, v) = self.pose.local(x, y);
        let s = self.seed;
        let warp = 26.0 * fbm(s ^ 1, u / 180.0, v / 70.0, 3) + 4.0 * noise(s ^ 2, u / 30.0, v / 12.0);
        let f = ((v + warp) / self.period).rem_euclid(1.0);
        // Earlywood darkens gradually into latewood, which ends sharply at the next ring.
        let late = smoothstep(0.5, 0.88, f) * (1.0 - smoothstep(0.93, 1.0, f));
        let fibre = noise(s ^ 3, u / 16.0, v / 0.9);
        let pore = smoothstep(0.55, 0.9, noise(s ^ 4, u / 4.0, v / 0.8));
        let k = (1.0 + 0.07 * fibre) * (1.0 - 0.18 * pore);
        scale(mix(self.early, self.late, 0.85 * late), k)
    }
}

/// A woven wire mesh over a dark backing, wires alternately over and under at crossings.
struct Mesh {
    pose: Pose,
    seed: u64,
    wire: Rgb,
    backing: Rgb,
}

/// Wire pitch and half width, in design units.
const PITCH: f32 = 20.0;
const WIRE: f32 = 2.6;

impl Mesh {
    fn new(rng: &mut SplitMix64) -> Mesh {
        Mesh {
            pose: Pose::random(rng, (128.0, 128.0), 500.0, 3.0),
            seed: rng.next_u64(),
            wire: scale([172.0, 175.0, 180.0], 1.0 + jitter(rng, 0.03)),
            backing: scale([40.0, 42.0, 47.0], 1.0 + jitter(rng, 0.06)),
        }
    }

    /// (background, wire colour, wire coverage) at an image point.
    fn sample(&self, plane: &Plane, x: f32, y: f32) -> (Rgb, Rgb, f32) {
        let (u, v) = self.pose.local(x, y);
        let s = self.seed;
        let (i, j) = (floor(u / PITCH + 0.5), floor(v / PITCH + 0.5));
        // Each wire sits slightly off its nominal line and wanders a little.
        let cu = i as f32 * PITCH + 0.6 * lattice(s ^ 1, i, 0) + 0.5 * noise(s ^ 2, i as f32 * 7.3, v / 30.0);
        let cv = j as f32 * PITCH + 0.6 * lattice(s ^ 3, j, 0) + 0.5 * noise(s ^ 4, j as f32 * 7.3, u / 30.0);
        let (du, dv) = (u - cu, v - cv);
        let vertical_over = (i + j) & 1 == 0;
        let wire = |d: f32, along: f32, under: bool| {
            let t = (d / WIRE).clamp(-1.0, 1.0);
            let round = (1.0 - t * t).sqrt();
            let glint = (1.0 - t * t).powi(8);
            // A wire passing under another is in its shadow near the crossing.
            let shadow = if under { 1.0 - 0.45 * (-(along / 5.0).powi(2)).exp() } else { 1.0 };
            scale(self.wire, (0.4 + 0.5 * round + 0.3 * glint) * shadow)
        };
        let (vc, hc) = (plane.cover(du.abs() - WIRE), plane.cover(dv.abs() - WIRE));
        let (vcol, hcol) = (wire(du, dv, !vertical_over), wire(dv, du, vertical_over));
        let ((top, tc), (low, lc)) = if vertical_over { ((vcol, vc), (hcol, hc)) } else { ((hcol, hc), (vcol, vc)) };
        let cov = tc + lc * (1.0 - tc);
        let fg = if cov > 0.0 {
            let w = tc / cov;
            mix(low, top, w)
        } else {
            self.wire
        };
        let bg = scale(self.backing, 1.0 + 0.08 * fbm(s ^ 5, x / 40.0, y / 40.0, 2));
        (bg, fg, cov)
    }
}

/// A flat steel tab washer on a dark conveyor belt: a turned surface with bevelled edges and
/// a key tab inside the hole that shows its rotation.
struct Washer {
    pose: Pose,
    seed: u64,
    steel: Rgb,
    belt: Rgb,
    light: f32,
}

const WASHER_OUTER: f32 = 88.0;
const WASHER_INNER: f32 = 38.0;

impl Washer {
    fn new(rng: &mut SplitMix64) -> Washer {
        Washer {
            pose: Pose::random(rng, (128.0, 128.0), 3.5, 6.0),
            seed: rng.next_u64(),
            steel: scale([150.0, 153.0, 158.0], 1.0 + jitter(rng, 0.03)),
            belt: scale([56.0, 59.0, 66.0], 1.0 + jitter(rng, 0.04)),
            light: (-135.0 + jitter(rng, 4.0)).to_radians(),
        }
    }

    /// Signed distance to the washer's material (local coordinates) and to its hole.
    fn sdf(u: f32, v: f32) -> (f32, f32) {
        let r = u.hypot(v);
        let tab = box_sdf(u, v + WASHER_INNER - 3.5, 6.0, 5.5);
        let hole = (r - WASHER_INNER).max(-tab);
        ((r - WASHER_OUTER).max(-hole), hole)
    }

    fn sample(&self, plane: &Plane, x: f32, y: f32) -> (Rgb, Rgb, f32) {
        let s = self.seed;
        let belt = 1.0 + 0.05 * fbm(s ^ 1, x / 60.0, y / 60.0, 2) + 0.05 * noise(s ^ 2, x / 1.5, y / 1.5);
        let bg = scale(self.belt, belt);
        let (u, v) = self.pose.local(x, y);
        let (d, hole) = Washer::sdf(u, v);
        let cov = plane.cover(d);
        if cov == 0.0 {
            return (bg, self.steel, 0.0);
        }
        let r = u.hypot(v);
        // Turning leaves concentric grooves, which light up in two lobes facing the lamp.
        let facing = ((y - self.pose.cy).atan2(x - self.pose.cx) - self.light).cos();
        let lobes = 1.0 + 0.22 * (2.0 * facing * facing - 1.0);
        let grooves = 0.035 * (r * 2.7 + 3.0 * noise(s ^ 3, r / 6.0, 0.5)).sin();
        let outer = 1.0 - smoothstep(0.0, 3.5, WASHER_OUTER - r);
        let inner = 1.0 - smoothstep(0.0, 3.5, hole);
        let bevel = 0.55 * facing * (outer - inner);
        let speckle = 0.03 * noise(s ^ 4, x / 1.2, y / 1.2);
        (bg, scale(self.steel, lobes + grooves + bevel + speckle), cov)
    }
}

/// A black SOIC-like package with gull-wing leads soldered to a green board, pin-1 dimple and
/// a laser marking.
struct Chip {
    pose: Pose,
    seed: u64,
    board: Rgb,
}

/// Body half extents, in design units.
const CHIP_BODY: (f32, f32) = (52.0, 46.0);
const LEADS: i32 = 7;
const LEAD_PITCH: f32 = 12.0;

impl Chip {
    fn new(rng: &mut SplitMix64) -> Chip {
        Chip {
            pose: Pose::random(rng, (128.0, 128.0), 3.5, 2.5),
            seed: rng.next_u64(),
            board: scale([38.0, 96.0, 62.0], 1.0 + jitter(rng, 0.04)),
        }
    }

    /// Whether cell (col, row) of glyph `g` of the marking is lasered: the same marking on
    /// every part (it is a part number).
    fn marked(g: usize, col: usize, row: usize) -> bool {
        (mix64(0xC41F ^ g as u64) >> (col + 3 * row)) & 1 == 1
    }

    fn sample(&self, plane: &Plane, x: f32, y: f32) -> (Rgb, Rgb, f32) {
        let s = self.seed;
        let (u, v) = self.pose.local(x, y);
        let weave = 0.04 * noise(s ^ 1, x / 2.0, y / 2.0) + 0.06 * noise(s ^ 2, x / 50.0, y / 50.0);
        let mut bg = scale(self.board, 1.0 + weave);
        // Solder pads under the lead feet.
        let row = floor(v / LEAD_PITCH + 0.5).clamp(-LEADS / 2, LEADS / 2) as f32;
        let (lu, lv) = (u.abs(), v - row * LEAD_PITCH);
        let pad = plane.cover(box_sdf(lu - 69.0, lv, 8.0, 4.8));
        bg = mix(bg, scale([178.0, 176.0, 168.0], 1.0 + 0.05 * noise(s ^ 3, x / 1.5, y / 1.5)), pad);
        // The leads: out of the body, down a knee, flat on the pad.
        let lead = plane.cover(box_sdf(lu - 62.0, lv, 10.0, 3.2));
        let t = ((lu - CHIP_BODY.0) / 20.0).clamp(0.0, 1.0);
        let knee = 0.7 + 0.3 * (TAU * t).cos();
        let round = 0.85 + 0.15 * (1.0 - (lv / 3.2).clamp(-1.0, 1.0).powi(2)).sqrt();
        let lead_col = scale([196.0, 198.0, 196.0], knee * round);
        let body_d = box_sdf(u, v, CHIP_BODY.0 - 2.0, CHIP_BODY.1 - 2.0) - 2.0;
        let body = plane.cover(body_d);
        if body == 0.0 {
            return (bg, lead_col, lead);
        }
        // Mould compound: matte black, its bevel lit from the top left.
        let edge = 1.0 - smoothstep(0.0, 3.0, -body_d);
        let facing = if u.abs() - CHIP_BODY.0 > v.abs() - CHIP_BODY.1 { -u.signum() } else { -v.signum() };
        let mut k = 1.0 + 0.5 * edge * facing + 0.05 * noise(s ^ 4, x / 1.3, y / 1.3);
        let dimple = plane.cover((u + 38.0).hypot(v + 30.0) - 4.5);
        k *= 1.0 - 0.35 * dimple;
        let mut col = scale([36.0, 36.0, 39.0], k);
        // The marking's cells are small: 2x2 supersampling anti-aliases them.
        let q = plane.pix / 4.0;
        let ink = [(-q, -q), (q, -q), (-q, q), (q, q)].iter().filter(|(du, dv)| Chip::ink(u + du, v + dv)).count();
        if ink > 0 {
            col = mix(col, scale([92.0, 92.0, 96.0], 1.0 + 0.04 * noise(s ^ 5, x, y)), ink as f32 / 4.0);
        }
        (bg, mix(lead_col, col, body), lead.max(body))
    }

    /// Whether local point (u, v) is lasered: 5 glyphs of 3x5 cells and a gap column, in two
    /// lines with a gap row.
    fn ink(u: f32, v: f32) -> bool {
        let (mu, mv) = ((u + 24.0) / 2.4, (v + 12.0) / 2.4);
        if !(0.0..20.0).contains(&mu) || !(0.0..11.0).contains(&mv) {
            return false;
        }
        let (gc, gr) = ((mu / 4.0) as usize, (mv / 6.0) as usize);
        let (col, row) = (mu - gc as f32 * 4.0, mv - gr as f32 * 6.0);
        col < 3.0 && row < 5.0 && Chip::marked(gc + 5 * gr, col as usize, row as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// Defects.

/// Bounds on a defect mask's area, as fractions of the image: shapes outside are redrawn, so
/// that no defect vanishes at the network's resolution or fills the image.
const MIN_AREA: f32 = 0.005;
const MAX_AREA: f32 = 0.08;
const TRIES: usize = 64;

/// Draws `defect` into `layers` and returns its mask weights.
fn draw(defect: Defect, scene: &Scene, plane: &Plane, layers: &mut Layers, rng: &mut SplitMix64) -> Vec<f32> {
    let seed = rng.next_u64();
    let mut p = Painter { scene, plane, layers, rng };
    match (scene, defect) {
        (Scene::Woven(_), Defect::Hole) => {
            // Frayed fibres around the hole, lighter than the cloth; the dark backing inside.
            let fuzz = move |(x, y): (f32, f32), c: Rgb| {
                let fibre = noise(seed, x / 1.5, y / 1.5);
                mix(c, scale([230.0, 222.0, 206.0], 0.9 + 0.1 * fibre), 0.75)
            };
            p.holes(1, (8.0, 16.0), 0.35, 2.5, fuzz, [22.0, 20.0, 18.0])
        }
        (Scene::Grain(_), Defect::Hole) => {
            // Worm holes, each in a dark ring of crushed fibres.
            p.holes(2, (5.0, 10.0), 0.15, 2.5, |_, c| scale(c, 0.5), [30.0, 19.0, 11.0])
        }
        (_, Defect::Stain) => p.stain((14.0, 30.0), 3.0, |blob, (x, y), c| {
            // Oil darkens and browns the cloth, most of all along its tide line.
            let tide = 1.0 - 0.22 * (-((blob.sdf(x, y) + 2.5) / 2.0).powi(2)).exp();
            [c[0] * 0.62 * tide, c[1] * 0.54 * tide, c[2] * 0.42 * tide]
        }),
        (_, Defect::Color) => p.stain((14.0, 32.0), 4.0, move |_, (x, y), c| {
            // Blue stain: the wood turns grey-blue, keeping its figure.
            let l = luma(c) * (1.0 + 0.1 * noise(seed, x / 6.0, y / 6.0));
            [l * 0.55, l * 0.6, l * 0.67]
        }),
        (_, Defect::Rust) => p.stain((12.0, 24.0), 2.5, move |_, (x, y), c| {
            let grit = 0.8 + 0.35 * noise(seed, x / 2.5, y / 2.5);
            scale([160.0, 80.0, 38.0], luma(c) / 150.0 * grit)
        }),
        (Scene::Woven(w), Defect::Thread) => p.thread(w),
        (Scene::Grain(_), Defect::Scratch) => {
            let bright = p.rng.next_f64() < 0.5;
            let ink = move |c| if bright { mix(c, [250.0, 236.0, 206.0], 0.85) } else { scale(c, 0.4) };
            p.scratch(|rng| straight(rng, scene, (80.0, 160.0), (1.5, 2.4)), ink)
        }
        (Scene::Washer(s), Defect::Scratch) => {
            let bright = p.rng.next_f64() < 0.5;
            let ink = move |c| if bright { [238.0, 240.0, 244.0] } else { scale(c, 0.35) };
            // Handling scratches on a turned part run roughly along its grooves.
            p.scratch(
                |rng| {
                    let (r, a0) = (uniform(rng, WASHER_INNER + 12.0, WASHER_OUTER - 12.0), uniform(rng, 0.0, TAU));
                    let sweep = uniform(rng, 60.0, 110.0) / r * if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
                    let control = std::array::from_fn(|k| {
                        let (rk, ak) = (r + uniform(rng, -6.0, 6.0), a0 + sweep * k as f32 / 3.0);
                        s.pose.world(rk * ak.cos(), rk * ak.sin())
                    });
                    Stroke::through(control, uniform(rng, 1.4, 2.2))
                },
                ink,
            )
        }
        (_, Defect::Scratch) => {
            p.scratch(|rng| straight(rng, scene, (55.0, 100.0), (1.5, 2.3)), |_| [170.0, 170.0, 176.0])
        }
        (Scene::Mesh(_), Defect::Broken) => p.bite((14.0, 24.0), (0.0, None), |rng, _| scene.spot(rng)),
        (_, Defect::Glue) => {
            p.layers.flatten();
            p.stain((14.0, 28.0), 3.0, |blob, (x, y), c| {
                // A translucent amber dome, thickest and glossiest in the middle.
                let (a, b) = blob.unit(x, y);
                let dome = (1.0 - (a * a + b * b).min(1.0)).sqrt();
                let glint = 70.0 * (-((a + 0.35).powi(2) + (b + 0.35).powi(2)) / 0.04).exp();
                mix(c, scale([200.0, 150.0, 70.0], 0.8 + 0.3 * dome), 0.85).map(|v| v + glint)
            })
        }
        // Metal chips: irregular flakes of copper.
        (Scene::Mesh(_), Defect::Contamination) => p.particles((5, 9), (3.5, 7.0), 0.45, [200.0, 120.0, 64.0]),
        // Solder balls: small round tin spheres.
        (_, Defect::Contamination) => p.particles((4, 8), (3.5, 6.5), 0.12, [215.0, 215.0, 210.0]),
        // Fresh fractures: bright on steel, light grey in mould compound.
        (Scene::Washer(s), Defect::Missing) => p.bite((15.0, 26.0), (2.0, Some([215.0, 218.0, 222.0])), |rng, r| {
            let a = uniform(rng, 0.0, TAU);
            let at = WASHER_OUTER + r * uniform(rng, -0.1, 0.35);
            s.pose.world(at * a.cos(), at * a.sin())
        }),
        (Scene::Chip(s), Defect::Missing) => p.bite((11.0, 18.0), (2.0, Some([112.0, 112.0, 115.0])), |rng, r| {
            // On the long edges, clear of the leads.
            let side = if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
            s.pose.world(uniform(rng, -24.0, 24.0), side * (CHIP_BODY.1 + r * uniform(rng, -0.2, 0.3)))
        }),
        _ => unreachable!("{defect:?} is not a defect of this category"),
    }
}

/// A gently curved scratch from a point on the surface in any direction, within the surface.
fn straight(rng: &mut SplitMix64, scene: &Scene, len: (f32, f32), half: (f32, f32)) -> Stroke {
    let mut draw = || {
        let (start, angle) = (scene.spot(rng), uniform(rng, 0.0, TAU));
        let (len, half) = (uniform(rng, len.0, len.1), uniform(rng, half.0, half.1));
        Stroke::random(rng, start, angle, len, 0.15 * len, half)
    };
    let mut stroke = draw();
    for _ in 0..TRIES * 16 {
        if stroke.points.iter().all(|&(x, y)| scene.holds(x, y)) {
            break;
        }
        stroke = draw();
    }
    stroke
}

/// What drawing a defect needs at hand.
struct Painter<'a> {
    scene: &'a Scene,
    plane: &'a Plane,
    layers: &'a mut Layers,
    rng: &'a mut SplitMix64,
}

impl Painter<'_> {
    /// Draws shapes from `sample` (a shape and its weight field) until one's visible part fits
    /// the area bounds; the last one drawn if none does.
    fn fit<T>(&mut self, mut sample: impl FnMut(&mut SplitMix64) -> (T, Vec<f32>)) -> (T, Vec<f32>) {
        let mut tries = 1;
        loop {
            let (shape, g) = sample(self.rng);
            let shown = self.layers.visible(&g).iter().filter(|&&w| w >= 0.5).count();
            let area = shown as f32 / self.plane.len() as f32;
            if (MIN_AREA..=MAX_AREA).contains(&area) || tries == TRIES {
                return (shape, g);
            }
            tries += 1;
        }
    }

    /// `count` dark holes (the first on the surface, the others near it), each in a rim
    /// `rim` units wide recoloured by `rim_colour`; the holes show `inside`, darkest deep down.
    fn holes(
        &mut self,
        count: u64,
        radius: (f32, f32),
        rough: f32,
        rim: f32,
        rim_colour: impl Fn((f32, f32), Rgb) -> Rgb,
        inside: Rgb,
    ) -> Vec<f32> {
        self.layers.flatten();
        let (scene, plane) = (self.scene, self.plane);
        let (blobs, g) = self.fit(|rng| {
            let first = scene.spot(rng);
            let n = 1 + rng.below(count);
            let blobs: Vec<Blob> = (0..n)
                .map(|k| {
                    let off = if k == 0 { 0.0 } else { 22.0 };
                    let at = (first.0 + uniform(rng, -off, off), first.1 + uniform(rng, -off, off));
                    let r = uniform(rng, radius.0, radius.1);
                    Blob::random(rng, at, r, 0.4, rough)
                })
                .collect();
            let bounds = blobs.iter().map(|b| b.bounds(rim + 2.0)).reduce(union).expect("at least one hole");
            let g =
                plane.field(bounds, |x, y| blobs.iter().map(|b| plane.cover(b.sdf(x, y) - rim)).fold(0.0, f32::max));
            (blobs, g)
        });
        let mask = self.layers.visible(&g);
        self.layers.paint(plane, &g, rim_colour);
        let bounds = blobs.iter().map(|b| b.bounds(2.0)).reduce(union).expect("at least one hole");
        let hole = plane.field(bounds, |x, y| blobs.iter().map(|b| plane.cover(b.sdf(x, y))).fold(0.0, f32::max));
        self.layers.paint(plane, &hole, |(x, y), _| {
            let depth = blobs.iter().map(|b| -b.sdf(x, y)).fold(0.0, f32::max);
            scale(inside, 1.6 - 0.6 * smoothstep(0.0, 4.0, depth))
        });
        mask
    }

    /// A soft-edged blob on the surface, `band` units soft, recoloured by `recolour`.
    fn stain(&mut self, radius: (f32, f32), band: f32, recolour: impl Fn(&Blob, (f32, f32), Rgb) -> Rgb) -> Vec<f32> {
        let (scene, plane) = (self.scene, self.plane);
        let (blob, g) = self.fit(|rng| {
            let (at, r) = (scene.spot(rng), uniform(rng, radius.0, radius.1));
            let blob = Blob::random(rng, at, r, 0.45, 0.3);
            let g = plane.field(blob.bounds(band + plane.pix), |x, y| plane.soft(blob.sdf(x, y), band));
            (blob, g)
        });
        let mask = self.layers.visible(&g);
        self.layers.paint(plane, &g, |at, c| recolour(&blob, at, c));
        mask
    }

    /// A scratch drawn by `path`, sometimes doubled by a parallel one (a dragged burr scores
    /// two), inked by `ink`.
    fn scratch(&mut self, path: impl Fn(&mut SplitMix64) -> Stroke, ink: impl Fn(Rgb) -> Rgb) -> Vec<f32> {
        let (scene, plane) = (self.scene, self.plane);
        let (_, g) = self.fit(|rng| {
            let first = path(rng);
            let (a, b) = (first.points[0], first.points[first.points.len() - 1]);
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let apart = uniform(rng, 5.0, 9.0) / dx.hypot(dy).max(1e-3);
            let second = first.shifted(-dy * apart, dx * apart);
            let double = rng.next_f64() < 0.6 && second.points.iter().all(|&(x, y)| scene.holds(x, y));
            let strokes = if double { vec![second, first] } else { vec![first] };
            let bounds = strokes.iter().map(|s| s.bounds).reduce(union).expect("a stroke");
            let g = plane.field(bounds, |x, y| strokes.iter().map(|s| plane.cover(s.sdf(x, y))).fold(0.0, f32::max));
            (strokes, g)
        });
        let mask = self.layers.visible(&g);
        self.layers.paint(plane, &g, |_, c| ink(c));
        mask
    }

    /// A cluster of small shiny particles of `colour`, shaded as domes lit from the top left;
    /// `rough` from round (0) to irregular.
    fn particles(&mut self, count: (u64, u64), radius: (f32, f32), rough: f32, colour: Rgb) -> Vec<f32> {
        self.layers.flatten();
        let (scene, plane) = (self.scene, self.plane);
        let (blobs, g) = self.fit(|rng| {
            let centre = scene.spot(rng);
            let n = count.0 + rng.below(count.1 - count.0 + 1);
            let blobs: Vec<Blob> = (0..n)
                .map(|_| {
                    let at = (centre.0 + jitter(rng, 10.0), centre.1 + jitter(rng, 10.0));
                    let r = uniform(rng, radius.0, radius.1);
                    Blob::random(rng, at, r, rough, rough)
                })
                .collect();
            let bounds = blobs.iter().map(|b| b.bounds(2.0)).reduce(union).expect("at least one particle");
            let g = plane.field(bounds, |x, y| blobs.iter().map(|b| plane.cover(b.sdf(x, y))).fold(0.0, f32::max));
            (blobs, g)
        });
        let mask = self.layers.visible(&g);
        self.layers.paint(plane, &g, |(x, y), _| {
            let blob = blobs.iter().min_by(|a, b| a.sdf(x, y).total_cmp(&b.sdf(x, y))).expect("at least one particle");
            let (a, b) = blob.unit(x, y);
            let z = (1.0 - (a * a + b * b).min(1.0)).sqrt();
            let lit = (-0.5 * a - 0.5 * b + 0.7 * z).max(0.0);
            let glint = 90.0 * lit.powi(12);
            scale(colour, 0.3 + 0.8 * lit).map(|v| v + glint)
        });
        mask
    }

    /// Breaks a blob of radius `radius`, centred at `centre(rng, r)`, out of the foreground,
    /// leaving a fracture face `rim` units wide of colour `face`, if any.
    fn bite(
        &mut self,
        radius: (f32, f32),
        (rim, face): (f32, Option<Rgb>),
        centre: impl Fn(&mut SplitMix64, f32) -> (f32, f32),
    ) -> Vec<f32> {
        let plane = self.plane;
        let (blob, g) = self.fit(|rng| {
            let r = uniform(rng, radius.0, radius.1);
            let at = centre(rng, r);
            let blob = Blob::random(rng, at, r, 0.3, 0.25);
            let g = plane.field(blob.bounds(rim + 2.0), |x, y| plane.cover(blob.sdf(x, y) - rim));
            (blob, g)
        });
        let mask = self.layers.visible(&g);
        if let Some(face) = face {
            let seed = self.rng.next_u64();
            self.layers.paint(plane, &g, |(x, y), _| scale(face, 0.9 + 0.2 * noise(seed, x / 1.5, y / 1.5)));
        }
        self.layers.cut(&plane.field(blob.bounds(2.0), |x, y| plane.cover(blob.sdf(x, y))));
        mask
    }

    /// A broken weft: one or two weft threads gone over a stretch, the warp sunk in the gap,
    /// frayed strands of the broken ends curling into it.
    fn thread(&mut self, fabric: &Woven) -> Vec<f32> {
        let (scene, plane) = (self.scene, self.plane);
        let ((u, mid, half), g) = self.fit(|rng| {
            let (x, y) = scene.spot(rng);
            let (u, v) = fabric.coords(x, y);
            let rows = 1.0 + rng.below(2) as f32;
            let top = (v / WEAVE).floor() * WEAVE;
            let half = uniform(rng, 20.0, 55.0);
            let g = plane.field(around((x, y), half + 2.0 * WEAVE + 4.0), |x, y| {
                let (fu, fv) = fabric.coords(x, y);
                let inside = (fv - top).min(top + rows * WEAVE - fv).min(half - (fu - u).abs());
                plane.cover(-inside)
            });
            ((u, top + rows * WEAVE / 2.0, half), g)
        });
        self.layers.paint(plane, &g, |(x, y), _| fabric.colour(x, y, true));
        // Fabric coordinates are image coordinates rotated, up to the threads' small wander.
        let pose = fabric.pose;
        let along = pose.sin.atan2(pose.cos);
        let strands: Vec<Stroke> = [(-1.0, 0.0), (-1.0, 0.0), (1.0, PI), (1.0, PI)]
            .iter()
            .map(|&(side, turn)| {
                let start = pose.world(u + side * (half - 1.0), mid + uniform(self.rng, -3.0, 3.0));
                let (len, width) = (uniform(self.rng, 7.0, 15.0), uniform(self.rng, 1.1, 1.6));
                let angle = along + turn + uniform(self.rng, -0.5, 0.5);
                Stroke::random(self.rng, start, angle, len, 3.0, width)
            })
            .collect();
        let bounds = strands.iter().map(|s| s.bounds).reduce(union).expect("four strands");
        let fibres = plane.field(bounds, |x, y| strands.iter().map(|s| plane.cover(s.sdf(x, y))).fold(0.0, f32::max));
        let seed = self.rng.next_u64();
        self.layers.paint(plane, &fibres, |(x, y), _| scale(fabric.weft, 0.85 + 0.15 * noise(seed, x, y)));
        g.iter().zip(&fibres).map(|(a, b)| a.max(*b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every defect changes its mask and nothing else: against its clean twin (same seed, no
    /// defect), pixels inside the mask differ by more than 20 grey levels on average, and the
    /// rest (the anti-aliased fringe included) by less than one.
    #[test]
    fn defects_change_exactly_their_mask() {
        for kind in KINDS {
            for &defect in kind.defects() {
                for seed in 0..3 {
                    let (clean, none) = render(kind, 128, seed, None);
                    let (dirty, mask) = render(kind, 128, seed, Some(defect));
                    assert!(none.is_none());
                    let mask = mask.expect("a defect image has a mask");
                    let (mut inside, mut outside) = ((0.0, 0), (0.0, 0));
                    for (x, y, m) in mask.enumerate_pixels() {
                        let (a, b) = (clean.get_pixel(x, y), dirty.get_pixel(x, y));
                        let diff = (0..3).map(|k| (a[k] as f64 - b[k] as f64).abs()).sum::<f64>() / 3.0;
                        let side = if m[0] == 255 { &mut inside } else { &mut outside };
                        side.0 += diff;
                        side.1 += 1;
                    }
                    let (inside, outside) = (inside.0 / inside.1 as f64, outside.0 / outside.1 as f64);
                    let what = format!("{kind:?}/{defect:?} seed {seed}");
                    assert!(inside > 20.0, "{what}: mean change inside the mask {inside:.1}");
                    assert!(outside < 1.0, "{what}: mean change outside the mask {outside:.2}");
                }
            }
        }
    }
}
