use super::options::{BackboneArgs, DeviceArgs, FitArgs, TraceArgs};
use super::{backend_for, Bars};
use crate::backbone::{Backbone, ConvOrigin};
use crate::data::dataset::{list_labelled, list_training_images};
use crate::error::Result;
use crate::patchcore::PatchCore;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// A folder of good images.
    #[arg(long)]
    train: PathBuf,
    /// A labelled folder (good/ and one folder per defect, masks in ../ground_truth/) for
    /// F1-adaptive thresholds. Without it, a tenth of --train, scored against a bank built
    /// without it, sets them; the bank holds every training image either way.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Where to write the model file.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let arch = args.backbone.backbone;
    let options = args.fit.options(arch)?;
    let backend = backend_for(args.device)?;
    let train = list_training_images(&args.train)?;
    let val = args.val.as_deref().map(list_labelled).transpose()?;
    let weights = args.backbone.source()?;
    let backbone = Backbone::load(&backend, arch, ConvOrigin::Torchvision(&weights))?;
    let mut bars = Bars::new();
    let model =
        PatchCore::fit(backend, backbone, &train, val.as_deref(), &options, &mut |s, d, t| bars.update(s, d, t))?;
    bars.finish();
    model.save(&args.out)?;
    let meta = model.meta();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::json!({"model": args.out, "seconds": seconds, "meta": meta}));
        return Ok(());
    }
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
    Ok(())
}
