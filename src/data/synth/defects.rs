//! The defects: what each looks like on each category, and how it is drawn into a scene's
//! layers with a weight field that is also its mask.

use super::random::{jitter, noise, uniform};
use super::raster::{luma, mix, scale, smoothstep, Layers, Plane, Rgb};
use super::scenes::{Scene, Woven, CHIP_BODY, WASHER_INNER, WASHER_OUTER, WEAVE};
use super::shapes::{around, union, Blob, Stroke};
use crate::rng::SplitMix64;
use std::f32::consts::{PI, TAU};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Defect {
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
    pub(super) fn name(self) -> &'static str {
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

/// Bounds on a defect mask's area, as fractions of the image: shapes outside are redrawn, so
/// that no defect vanishes at the network's resolution or fills the image.
const MIN_AREA: f32 = 0.005;
const MAX_AREA: f32 = 0.08;
const TRIES: usize = 64;

/// Draws `defect` into `layers` and returns its mask weights.
pub(super) fn draw(
    defect: Defect,
    scene: &Scene,
    plane: &Plane,
    layers: &mut Layers,
    rng: &mut SplitMix64,
) -> Vec<f32> {
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
