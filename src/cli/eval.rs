use super::category::{evaluate_category, plots_json};
use super::options::{ModelArgs, ReportArgs, TraceArgs};
use super::Bars;
use crate::data::dataset::Category;
use crate::error::Result;
use crate::eval::table::metrics_table;
use crate::render::report::write_report;
use crate::render::text_histogram::text_histogram;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// An MVTec-style category folder (train/good, test/good, test/<defect>, ground_truth/<defect>).
    #[arg(long)]
    data: PathBuf,
    /// Write overlays, metrics.json and report.html here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let category = Category::open(&args.data)?;
    let model = args.model.load()?;
    let mut bars = Bars::new();
    let overlays = args.out.as_ref().map(|o| o.join(&category.name));
    let (report, seconds) =
        evaluate_category(&model, &category, args.model.batch, overlays.as_deref(), args.report.examples, &mut bars)?;
    let m = &report.metrics;
    if args.json {
        println!("{}", serde_json::json!({"category": category.name, "metrics": m, "seconds": seconds}));
    } else {
        print!("{}", metrics_table(&[(category.name.clone(), *m)], &[]));
        // The report's histogram, bin for bin: the terminal and the page agree.
        if let Some(h) = &report.histogram {
            print!("\n{}", text_histogram(h));
        }
        for note in &report.notes {
            println!("note: {note}");
        }
    }
    if let Some(out) = &args.out {
        let json = serde_json::json!({"category": category.name, "metrics": m, "plots": plots_json(&report)});
        let path = out.join("metrics.json");
        crate::io::write_atomic(&path, json.to_string().as_bytes())?;
        let title = format!("patchcore eval: {}", category.name);
        let intro = format!("Model {} on {}.", args.model.model.display(), args.data.display());
        write_report(&out.join("report.html"), &title, &intro, &[report])?;
        if !args.json {
            println!("wrote {}", out.join("report.html").display());
        }
    }
    Ok(())
}
