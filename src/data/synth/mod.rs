//! Synthetic MVTec-AD-shaped datasets: three textures and two objects, each with natural
//! variation between good images and two or three kinds of realistic defects with exact
//! ground-truth masks. They let `patchcore demo` and the tests run without downloading MVTec.
//!
//! Everything is drawn procedurally in design units (the image is 256 units wide whatever its
//! pixel size), so shapes and textures scale with `size`. Edges are anti-aliased from signed
//! distances. A defect is drawn with a weight field that is also its mask: a pixel is in the
//! mask iff its weight is at least one half, and weights fall to zero within a couple of pixels
//! of that boundary, so the mask is where the defect shows.
//!
//! Here: the public API, the categories and writing the dataset. The parts of an image are in
//! `scenes` (the good textures and objects, and the camera's look) and `defects`, and what both
//! draw with in `raster` (the pixel grid, colour, layers), `shapes` and `random`.

mod defects;
mod random;
mod raster;
mod scenes;
mod shapes;

use crate::error::{Error, Result};
use crate::rng::{fnv1a32, mix64, SplitMix64};
use defects::{draw, Defect};
use image::{GrayImage, Luma, RgbImage};
use raster::{Plane, UNITS};
use rayon::prelude::*;
use scenes::{Look, Scene};
use std::path::{Path, PathBuf};

/// The categories [`generate`] knows: three textures, then two objects.
///
/// Their names differ from MVTec AD's (its `grid` and `wood` are real folders one might write
/// next to), since regenerating a category replaces its images.
pub const CATEGORIES: &[&str] = &{
    let mut names = [""; KINDS.len()];
    let mut i = 0;
    while i < KINDS.len() {
        names[i] = KINDS[i].name();
        i += 1;
    }
    names
};
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
    let kind = KINDS.into_iter().find(|k| k.name() == category).ok_or_else(|| {
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
    /// The category's name: its folder, and what `--category` takes.
    const fn name(self) -> &'static str {
        match self {
            Kind::Woven => "woven",
            Kind::Grain => "grain",
            Kind::Mesh => "mesh",
            Kind::Washer => "washer",
            Kind::Chip => "chip",
        }
    }

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
