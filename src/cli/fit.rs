use super::{backend_for, Bars};
use crate::backbone::weights::SafetensorsFile;
use crate::backbone::{Architecture, Backbone, ConvOrigin};
use crate::backend::DeviceChoice;
use crate::data::dataset::{list_labelled, list_training_images};
use crate::data::image::Preprocess;
use crate::error::Result;
use crate::patchcore::{FitOptions, PatchCore};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backbone architecture of --weights.
    #[arg(long, value_enum)]
    backbone: Architecture,
    /// Backbone weights as safetensors with torchvision names (`patchcore convert` makes them).
    #[arg(long)]
    weights: PathBuf,
    /// A folder of good images.
    #[arg(long)]
    train: PathBuf,
    /// A labelled folder (good/ and one folder per defect, masks in ../ground_truth/) for
    /// F1-adaptive thresholds. Without it, a tenth of --train is held out to set them.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Where to write the model file.
    #[arg(long)]
    out: PathBuf,
    /// Images are resized to this square side.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Center crop after resizing (224 with --size 256 is the paper's setting).
    #[arg(long)]
    crop: Option<usize>,
    /// Fraction of patch embeddings kept in the memory bank, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    ratio: f64,
    /// Seed of the coreset's random projection and start point.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Neighbours in the image score's reweighting (paper Eq. 7); 1 gives the plain maximum.
    #[arg(long, default_value_t = 9)]
    num_neighbors: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let options = FitOptions {
        preprocess: Preprocess::for_backbone(args.backbone, args.size, args.crop)?,
        ratio: args.ratio,
        seed: args.seed,
        num_neighbors: args.num_neighbors,
        batch: args.batch,
    };
    options.validate()?;
    let backend = backend_for(args.device)?;
    let train = list_training_images(&args.train)?;
    let val = args.val.as_deref().map(list_labelled).transpose()?;
    let weights = SafetensorsFile::open(&args.weights)?;
    let backbone = Backbone::load(&backend, args.backbone, ConvOrigin::Torchvision(&weights))?;
    let mut bars = Bars::new();
    let model =
        PatchCore::fit(backend, backbone, &train, val.as_deref(), &options, &mut |s, d, t| bars.update(s, d, t))?;
    bars.finish();
    model.save(&args.out)?;
    let meta = model.meta();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let summary = serde_json::json!({
            "model": args.out, "seconds": seconds, "meta": meta,
        });
        println!("{summary}");
    } else {
        println!("wrote {} in {seconds:.1} s", args.out.display());
        println!(
            "  {} on {} training images: {} bank rows of {} dims ({}x{} patches per image, ratio {})",
            meta.backbone,
            meta.train_images,
            meta.bank_rows,
            meta.embedding_dim,
            meta.grid[0],
            meta.grid[1],
            meta.coreset_ratio
        );
        println!("  thresholds: {}", meta.thresholds_from);
        println!(
            "  image threshold {:.4} (min {:.4}, max {:.4}); pixel threshold {:.4} (min {:.4}, max {:.4})",
            meta.image.threshold, meta.image.min, meta.image.max, meta.pixel.threshold, meta.pixel.min, meta.pixel.max
        );
    }
    Ok(())
}
