use super::category::evaluate_category;
use super::options::{batch_size, DeviceArgs};
use super::{backend_for, Bars};
use crate::data::dataset::Category;
use crate::error::Result;
use crate::eval::table::metrics_table;
use crate::patchcore::PatchCore;
use crate::render::report::write_report;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file written by `patchcore fit`.
    #[arg(long)]
    model: PathBuf,
    /// An MVTec-style category folder (train/good, test/good, test/<defect>, ground_truth/<defect>).
    #[arg(long)]
    data: PathBuf,
    /// Write overlays, metrics.json and report.html here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per forward pass (1 to 1024).
    #[arg(long, default_value_t = 8, value_parser = batch_size)]
    batch: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let category = Category::open(&args.data)?;
    let model = PatchCore::load(backend_for(args.device)?, &args.model)?;
    let mut bars = Bars::new();
    let overlays = args.out.as_ref().map(|o| o.join(&category.name));
    let (report, seconds) = evaluate_category(&model, &category, args.batch, overlays.as_deref(), &mut bars)?;
    let m = &report.metrics;
    if args.json {
        println!("{}", serde_json::json!({"category": category.name, "metrics": m, "seconds": seconds}));
    } else {
        print!("{}", metrics_table(&[(category.name.clone(), *m)], &[]));
        for note in &report.notes {
            println!("note: {note}");
        }
    }
    if let Some(out) = &args.out {
        let json = serde_json::json!({"category": category.name, "metrics": m});
        let path = out.join("metrics.json");
        crate::io::write_atomic(&path, json.to_string().as_bytes())?;
        let title = format!("patchcore eval: {}", category.name);
        let intro = format!("Model {} on {}.", args.model.display(), args.data.display());
        write_report(&out.join("report.html"), &title, &intro, &[report])?;
        if !args.json {
            println!("wrote {}", out.join("report.html").display());
        }
    }
    Ok(())
}
