//! Randomness: the per-image draws of shapes and parameters, and the hashed noise fields the
//! textures and the sensor grain are made of.

use super::raster::{floor, lerp};
use crate::rng::{mix64, SplitMix64};

/// Uniform in [lo, hi).
pub(super) fn uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.next_f64() as f32
}

/// A normal deviate with standard deviation `sd`, clamped to 2.5 of them so that no image is
/// an outlier of the normal variation.
pub(super) fn jitter(rng: &mut SplitMix64, sd: f32) -> f32 {
    (rng.normal() as f32).clamp(-2.5, 2.5) * sd
}

/// Lattice value in [-1, 1) at (ix, iy) of the noise named by `seed`. Callers name related
/// noises `seed ^ 1`, `seed ^ 2` ...: the multiplication spreads that difference over all bits,
/// so that no shift of the lattice maps one noise onto another.
pub(super) fn lattice(seed: u64, ix: i32, iy: i32) -> f32 {
    let h = mix64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((ix as u32 as u64) << 32 | iy as u32 as u64));
    (h >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0
}

/// Value noise with quintic interpolation, in [-1, 1], one lattice cell per unit.
pub(super) fn noise(seed: u64, x: f32, y: f32) -> f32 {
    let (ix, iy) = (floor(x), floor(y));
    let fade = |t: f32| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
    let (tx, ty) = (fade(x - ix as f32), fade(y - iy as f32));
    let top = lerp(lattice(seed, ix, iy), lattice(seed, ix + 1, iy), tx);
    let bottom = lerp(lattice(seed, ix, iy + 1), lattice(seed, ix + 1, iy + 1), tx);
    lerp(top, bottom, ty)
}

/// Fractal noise: `octaves` of [`noise`], each twice the frequency and half the amplitude.
pub(super) fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
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
pub(super) fn grain3(h: u64) -> [f32; 3] {
    std::array::from_fn(|k| {
        let (a, b) = ((h >> (20 * k)) & 0x3FF, (h >> (20 * k + 10)) & 0x3FF);
        ((a + b) as f32 / 1024.0 - 1.0) * 6f32.sqrt()
    })
}
