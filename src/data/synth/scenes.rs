//! The good images: three textures (woven fabric, planed wood, wire mesh) and two objects (a
//! washer, a chip), each with its natural variation, and the camera's look over them.

use super::random::{fbm, grain3, jitter, lattice, noise, uniform};
use super::raster::{floor, mix, scale, smoothstep, Layers, Plane, Rgb, UNITS};
use super::shapes::{box_sdf, Pose};
use super::Kind;
use crate::rng::{mix64, SplitMix64};
use image::RgbImage;
use std::f32::consts::{PI, TAU};

pub(super) enum Scene {
    Woven(Woven),
    Grain(Grain),
    Mesh(Mesh),
    Washer(Washer),
    Chip(Chip),
}

impl Scene {
    pub(super) fn new(kind: Kind, rng: &mut SplitMix64) -> Scene {
        match kind {
            Kind::Woven => Scene::Woven(Woven::new(rng)),
            Kind::Grain => Scene::Grain(Grain::new(rng)),
            Kind::Mesh => Scene::Mesh(Mesh::new(rng)),
            Kind::Washer => Scene::Washer(Washer::new(rng)),
            Kind::Chip => Scene::Chip(Chip::new(rng)),
        }
    }

    pub(super) fn layers(&self, plane: &Plane) -> Layers {
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
    pub(super) fn holds(&self, x: f32, y: f32) -> bool {
        match self {
            Scene::Chip(s) => {
                let (u, v) = s.pose.local(x, y);
                u.abs() < CHIP_BODY.0 - 3.0 && v.abs() < CHIP_BODY.1 - 3.0
            }
            _ => (4.0..UNITS - 4.0).contains(&x) && (4.0..UNITS - 4.0).contains(&y),
        }
    }

    /// A random point on the inspected surface, where a defect may sit.
    pub(super) fn spot(&self, rng: &mut SplitMix64) -> (f32, f32) {
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
pub(super) struct Look {
    gain: f32,
    tint: Rgb,
    slope: (f32, f32),
}

/// Sensor noise, in grey levels.
const NOISE: f32 = 2.0;

impl Look {
    pub(super) fn new(rng: &mut SplitMix64) -> Look {
        Look {
            gain: 1.0 + jitter(rng, 0.04),
            tint: [1.0 + jitter(rng, 0.012), 1.0 + jitter(rng, 0.012), 1.0 + jitter(rng, 0.012)],
            slope: (jitter(rng, 0.03), jitter(rng, 0.03)),
        }
    }

    pub(super) fn finish(&self, plane: &Plane, layers: &Layers, seed: u64) -> RgbImage {
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
pub(super) struct Woven {
    pub(super) pose: Pose,
    seed: u64,
    warp: Rgb,
    pub(super) weft: Rgb,
}

/// Thread pitch, in design units.
pub(super) const WEAVE: f32 = 10.0;

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
    pub(super) fn coords(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v) = self.pose.local(x, y);
        let s = self.seed;
        (u + 1.2 * noise(s ^ 1, u / 30.0, v / 30.0), v + 1.2 * noise(s ^ 2, u / 30.0, v / 30.0))
    }

    /// The fabric's colour; with `weft_gone` as where a weft thread broke: the warp shows
    /// everywhere, sunk and shadowed.
    pub(super) fn colour(&self, x: f32, y: f32, weft_gone: bool) -> Rgb {
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
pub(super) struct Grain {
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
pub(super) struct Mesh {
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
pub(super) struct Washer {
    pub(super) pose: Pose,
    seed: u64,
    steel: Rgb,
    belt: Rgb,
    light: f32,
}

pub(super) const WASHER_OUTER: f32 = 88.0;
pub(super) const WASHER_INNER: f32 = 38.0;

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
pub(super) struct Chip {
    pub(super) pose: Pose,
    seed: u64,
    board: Rgb,
}

/// Body half extents, in design units.
pub(super) const CHIP_BODY: (f32, f32) = (52.0, 46.0);
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
