use super::options::{ModelArgs, TraceArgs};
use super::Bars;
use crate::data::dataset::list_images;
use crate::data::image::load_rgb;
use crate::error::{Error, Result};
use crate::render::{prediction_overlay, write_png};
use image::RgbImage;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

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
///
/// The images are decoded on a thread of their own, a batch ahead of the one being scored (and
/// the first batch while the model loads): PNG decoding is serial, and the forward pass leaves
/// gaps on both cores that it fills. One batch waits decoded at most, so memory stays at three
/// batches' images however many are named.
pub fn run(args: Args) -> Result<()> {
    let paths = expand(&args.inputs)?;
    let batch = args.model.batch;
    let (decoded, batches) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let paths = &paths;
        scope.spawn(move || {
            for chunk in paths.chunks(batch) {
                let images: Vec<_> = chunk.iter().map(|path| (path, load_rgb(path))).collect();
                // The receiver is gone when scoring stopped on an error: nothing more to decode.
                if decoded.send(images).is_err() {
                    break;
                }
            }
        });
        score(&args, paths.len(), batches)
    })
}

/// Scores the decoded `batches` of `total` images as `run` describes.
fn score(args: &Args, total: usize, batches: Receiver<Vec<(&PathBuf, Result<RgbImage>)>>) -> Result<()> {
    let model = args.model.load()?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut names = HashSet::new();
    let (mut failures, mut done) = (0, 0);
    let mut bars = Bars::new();
    for chunk in batches {
        done += chunk.len();
        // The lines keep the inputs' order, an error line in place of an image that failed.
        let mut images = Vec::new();
        let errors: Vec<(&PathBuf, Option<String>)> = chunk
            .into_iter()
            .map(|(path, image)| match image {
                Ok(image) => {
                    images.push(image);
                    (path, None)
                }
                Err(e) => (path, Some(e.to_string())),
            })
            .collect();
        let mut scored = images.iter().zip(model.predict(&images)?);
        for (path, error) in errors {
            if let Some(error) = error {
                failures += 1;
                println!("{}", serde_json::json!({"path": path, "error": error}));
                continue;
            }
            let (image, pred) = scored.next().expect("a prediction for each decoded image");
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
        bars.update("predict", done, total);
    }
    bars.finish();
    if failures > 0 {
        return Err(Error::option(
            "inputs",
            format!("{failures} of {total} images could not be read (see their lines)"),
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
