use super::category::{evaluate_category, fit_category, plots_json};
use super::options::{BackboneArgs, DeviceArgs, FitArgs, ReportArgs, TraceArgs};
use super::{backend_for, Bars};
use crate::backbone::weights::WeightSource;
use crate::backbone::Architecture;
use crate::data::dataset::Category;
use crate::error::{Error, Result};
use crate::eval::table::{csv, seed_tables};
use crate::io::write_atomic;
use crate::patchcore::FitOptions;
use crate::render::report::{write_report, CategoryReport};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A folder of MVTec-style categories (e.g. the MVTec AD root).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    backbone: BackboneArgs,
    #[command(flatten)]
    fit: FitArgs,
    /// Where benchmark.csv, benchmark.json, overlays and report.html go.
    #[arg(long, default_value = "benchmark-out")]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Fit + eval over every category found; the seed's tables as Markdown on stdout.
pub fn run(args: Args) -> Result<()> {
    let arch = args.backbone.backbone;
    let options = args.fit.options(arch)?;
    let weights = args.backbone.source()?;
    let categories = Category::find_all(&args.data)?;
    let reports = run_categories(&categories, arch, &weights, &options, args.device, &args.out, args.report)?;
    let rows: Vec<_> = reports.iter().map(|r| (r.name.clone(), r.metrics)).collect();
    print!("{}", seed_tables(&rows));
    let intro = format!("{arch} on {}, {} categories.", args.data.display(), reports.len());
    write_outputs(&args.out, "patchcore benchmark", &intro, arch, &reports)?;
    println!("wrote {}/benchmark.csv, benchmark.json and report.html", args.out.display());
    Ok(())
}

/// Fits each category (its test set sets the thresholds, as anomalib's MVTec default) and
/// evaluates it, writing overlays under `out/<category>/`. Timings: fit and evaluate.
pub fn run_categories(
    dirs: &[PathBuf],
    arch: Architecture,
    weights: &dyn WeightSource,
    options: &FitOptions,
    device: DeviceArgs,
    out: &Path,
    report: ReportArgs,
) -> Result<Vec<CategoryReport>> {
    let mut bars = Bars::new();
    let mut reports = Vec::new();
    for dir in dirs {
        let category = Category::open(dir)?;
        eprintln!(
            "{}: fitting on {} images, evaluating on {}",
            category.name,
            category.train.len(),
            category.test.len()
        );
        let (model, fit_s) = fit_category(backend_for(device)?, arch, weights, &category, options, &mut bars)?;
        let overlays = out.join(&category.name);
        let (mut evaluated, eval_s) =
            evaluate_category(&model, &category, options.batch, Some(&overlays), report.examples, &mut bars)?;
        evaluated.timings = vec![("fit".into(), fit_s), ("evaluate".into(), eval_s)];
        reports.push(evaluated);
    }
    Ok(reports)
}

/// benchmark.csv, benchmark.json and report.html in `out`.
pub fn write_outputs(
    out: &Path,
    title: &str,
    intro: &str,
    arch: Architecture,
    reports: &[CategoryReport],
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let rows: Vec<_> = reports.iter().map(|r| (r.name.clone(), r.metrics)).collect();
    write_atomic(&out.join("benchmark.csv"), csv(&rows).as_bytes())?;
    let json: Vec<_> = reports
        .iter()
        .map(|r| {
            serde_json::json!({"category": r.name, "metrics": r.metrics, "seconds": r.timings, "plots": plots_json(r)})
        })
        .collect();
    let summary = serde_json::json!({"backbone": arch, "categories": json});
    write_atomic(&out.join("benchmark.json"), summary.to_string().as_bytes())?;
    write_report(&out.join("report.html"), title, intro, reports)
}
