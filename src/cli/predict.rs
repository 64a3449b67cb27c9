use super::options::{ModelArgs, TraceArgs};
use super::Bars;
use crate::data::dataset::list_images;
use crate::data::image::load_rgb;
use crate::error::{Error, Result};
use crate::render::{prediction_overlay, write_png};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images, or folders of images.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Write an overlay PNG per image into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Every image named or inside a named folder, in the given order (folders sorted). A named
/// folder without images is an error, not nothing to score: a category's `test` folder, whose
/// images lie in subfolders, would otherwise pass silently.
pub(super) fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = list_images(input)?;
            if found.is_empty() {
                let reason = "no PNG or JPEG images in this folder (subfolders are not searched: name them)";
                return Err(Error::dataset(input, reason));
            }
            images.extend(found);
        } else {
            images.push(input.clone());
        }
    }
    Ok(images)
}

/// An image that fails to decode is reported on its own JSON line and the rest are still
/// scored; the exit status is then non-zero.
pub fn run(args: Args) -> Result<()> {
    let paths = expand(&args.inputs)?;
    let model = args.model.load()?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut names = HashSet::new();
    let mut failures = 0;
    let mut bars = Bars::new();
    for (i, chunk) in paths.chunks(args.model.batch).enumerate() {
        let mut images = Vec::new();
        let mut ok_paths = Vec::new();
        for path in chunk {
            match load_rgb(path) {
                Ok(img) => {
                    images.push(img);
                    ok_paths.push(path);
                }
                Err(e) => {
                    failures += 1;
                    println!("{}", serde_json::json!({"path": path, "error": e.to_string()}));
                }
            }
        }
        for ((path, image), pred) in ok_paths.iter().zip(&images).zip(model.predict(&images)?) {
            println!(
                "{}",
                serde_json::json!({
                    "path": path,
                    "score": pred.score,
                    "max_patch_distance": pred.max_patch_distance,
                    "normalized": pred.normalized,
                    "label": if pred.anomalous { "anomalous" } else { "normal" },
                })
            );
            if let Some(dir) = &args.out {
                let target = unique_name(dir, path, &mut names);
                write_png(&target, &prediction_overlay(image, &pred, model.meta(), None))?;
            }
        }
        bars.update("predict", (i * args.model.batch + chunk.len()).min(paths.len()), paths.len());
    }
    bars.finish();
    if failures > 0 {
        return Err(Error::option(
            "inputs",
            format!("{failures} of {} images could not be read (see their lines)", paths.len()),
        ));
    }
    Ok(())
}

/// `<stem>.png` in `dir`, with `-2`, `-3`, ... when two inputs share a stem.
fn unique_name(dir: &Path, path: &Path, taken: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut candidate = dir.join(format!("{stem}.png"));
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = dir.join(format!("{stem}-{n}.png"));
        n += 1;
    }
    candidate
}
