//! Image folders: a training folder of good images, and MVTec-AD-shaped test folders
//! (`good/` and one folder per defect, masks in `../ground_truth/<defect>/<name>_mask.png`).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const READABLE: [&str; 3] = ["png", "jpg", "jpeg"];
const UNREADABLE: [&str; 7] = ["bmp", "tif", "tiff", "webp", "gif", "ppm", "pgm"];

/// The PNG and JPEG files directly inside `dir`, sorted by name. Images in formats this build
/// cannot decode are an error (rather than silently left out of a training set).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if READABLE.contains(&ext.as_str()) {
            images.push(path);
        } else if UNREADABLE.contains(&ext.as_str()) {
            return Err(Error::image(&path, format!(".{ext} images are not supported: convert them to PNG")));
        }
    }
    images.sort();
    Ok(images)
}

/// Like [`list_images`], but an empty folder is an error.
pub fn list_training_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let images = list_images(dir)?;
    if images.is_empty() {
        return Err(Error::dataset(dir, "no PNG or JPEG images in this folder: a model needs good images to fit"));
    }
    Ok(images)
}

/// One labelled test image.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// The defect folder's name, "good" for normal images.
    pub category: String,
    pub anomalous: bool,
    /// The ground-truth mask, where the dataset has one.
    pub mask: Option<PathBuf>,
}

/// The labelled images of an MVTec-style test folder: `dir/good/*` (normal) and
/// `dir/<defect>/*` (anomalous), masks looked up in `dir/../ground_truth/<defect>/`.
pub fn list_labelled(dir: &Path) -> Result<Vec<Sample>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut folders: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            folders.push(path);
        }
    }
    folders.sort();
    if !folders.iter().any(|f| f.file_name().is_some_and(|n| n == "good")) {
        return Err(Error::dataset(dir, "no `good/` folder: a labelled folder holds good/ and one folder per defect"));
    }
    let truth = dir.parent().map(|p| p.join("ground_truth"));
    let mut samples = Vec::new();
    for folder in folders {
        let category = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let anomalous = category != "good";
        for path in list_images(&folder)? {
            let mask = match (&truth, anomalous) {
                (Some(t), true) => {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    Some(t.join(&category).join(format!("{stem}_mask.png"))).filter(|m| m.is_file())
                }
                _ => None,
            };
            samples.push(Sample { path, category: category.clone(), anomalous, mask });
        }
    }
    if samples.is_empty() {
        return Err(Error::dataset(dir, "no images in good/ or the defect folders"));
    }
    Ok(samples)
}

/// An MVTec-AD-shaped category folder: `train/good/`, `test/good/` and `test/<defect>/`,
/// masks in `ground_truth/<defect>/<name>_mask.png`.
#[derive(Clone, Debug)]
pub struct Category {
    pub name: String,
    pub root: PathBuf,
    pub train: Vec<PathBuf>,
    pub test: Vec<Sample>,
}

impl Category {
    /// Opens and checks a category folder. Missing folders, and masks whose image does not
    /// exist, are errors that say what is missing where. Defect images without masks are
    /// allowed (evaluated at image level only).
    pub fn open(root: &Path) -> Result<Category> {
        for needed in ["train/good", "test/good"] {
            if !root.join(needed).is_dir() {
                return Err(Error::dataset(
                    root,
                    format!("not an MVTec-style category: `{needed}/` is missing (expected train/good, test/good, test/<defect>, ground_truth/<defect>)"),
                ));
            }
        }
        let train = list_training_images(&root.join("train/good"))?;
        let test = list_labelled(&root.join("test"))?;
        let truth = root.join("ground_truth");
        if truth.is_dir() {
            for defect in std::fs::read_dir(&truth).map_err(|e| Error::io(&truth, e))? {
                let defect = defect.map_err(|e| Error::io(&truth, e))?.path();
                if !defect.is_dir() {
                    continue;
                }
                for mask in list_images(&defect)? {
                    if !test.iter().any(|s| s.mask.as_deref() == Some(mask.as_path())) {
                        return Err(Error::dataset(
                            &mask,
                            "mask without an image: expected test/<defect>/<name>.png beside ground_truth/<defect>/<name>_mask.png",
                        ));
                    }
                }
            }
        }
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "category".into());
        Ok(Category { name, root: root.to_path_buf(), train, test })
    }

    /// The category folders directly inside `root` (those with `train/good/`), sorted.
    pub fn find_all(root: &Path) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let path = entry.map_err(|e| Error::io(root, e))?.path();
            if path.join("train/good").is_dir() {
                found.push(path);
            }
        }
        if found.is_empty() {
            return Err(Error::dataset(root, "no category folders here (folders with train/good/ inside)"));
        }
        found.sort();
        Ok(found)
    }
}
