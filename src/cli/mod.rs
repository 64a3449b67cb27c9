//! The `patchcore` command line: argument parsing, progress bars and output formats. Each
//! subcommand lives in its own file and calls the library.

mod benchmark;
mod category;
mod convert;
mod demo;
mod eval;
mod fit;
mod memory;
mod options;
mod predict;
mod profile;
mod synth;

pub use memory::keep_freed_memory;

use crate::backend::AnyBackend;
use crate::error::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use options::{DeviceArgs, TraceArgs};

#[derive(Parser, Debug)]
#[command(name = "patchcore", version, about = "PatchCore industrial anomaly detection")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fit a model on good images and write it to one file.
    Fit(fit::Args),
    /// Score images with a fitted model: one JSON line per image, overlays with --out.
    Predict(predict::Args),
    /// Evaluate a model on an MVTec-style category: AUROC, F1, AUPRO, overlays, a report.
    Eval(eval::Args),
    /// Fit and evaluate every category of an MVTec-style root; the seed's tables.
    Benchmark(benchmark::Args),
    /// Run predict, traced, and print each stage's time, share, GFLOP/s and GB/s against this
    /// machine's measured peak.
    Profile(profile::Args),
    /// Write a synthetic MVTec-layout dataset.
    Synth(synth::Args),
    /// Generate data, fit, evaluate, write overlays and a report: the whole job, no arguments.
    Demo(demo::Args),
    /// Convert a PyTorch checkpoint (.pth, zip or legacy) to safetensors, without Python.
    Convert(convert::Args),
}

/// Runs the command line; the error, if any, is printed by `main`.
pub fn run(cli: Cli) -> Result<()> {
    // Before the command's root span, so that a profiler sees it too.
    crate::trace::attach_profiler();
    match cli.command {
        Command::Fit(args) => with_trace(args.trace.clone(), "fit", || fit::run(args)),
        Command::Predict(args) => with_trace(args.trace.clone(), "predict", || predict::run(args)),
        Command::Eval(args) => with_trace(args.trace.clone(), "eval", || eval::run(args)),
        Command::Benchmark(args) => with_trace(args.trace.clone(), "benchmark", || benchmark::run(args)),
        Command::Profile(args) => profile::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Demo(args) => with_trace(args.trace.clone(), "demo", || demo::run(args)),
        Command::Convert(args) => convert::run(args),
    }
}

/// Runs a command; with `--trace FILE`, inside a root span named after it, and writes the
/// trace when it ends (an error of the command is returned before one of the write).
fn with_trace(trace: TraceArgs, command: &str, run: impl FnOnce() -> Result<()>) -> Result<()> {
    let Some(path) = trace.trace else { return run() };
    crate::trace::start();
    let result = {
        let _root = crate::trace::span(command);
        run()
    };
    let written = crate::trace::write_chrome(&path, &crate::trace::stop());
    result.and(written)
}

/// The backend for `--device`: `cuda` fails with the reason CUDA is unusable, `auto` falls
/// back to the CPU and says why, once per process (`demo` and `benchmark` ask per category).
fn backend_for(args: DeviceArgs) -> Result<AnyBackend> {
    AnyBackend::open(args.device, args.precision, |e| {
        static NOTICE: std::sync::Once = std::sync::Once::new();
        NOTICE.call_once(|| eprintln!("note: using the CPU ({e})"));
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal), driven by the library's
/// (stage, done, total) reports.
struct Bars {
    bar: Option<ProgressBar>,
    stage: String,
}

impl Bars {
    fn new() -> Self {
        Bars { bar: None, stage: String::new() }
    }

    fn update(&mut self, stage: &str, done: usize, total: usize) {
        if stage != self.stage {
            if let Some(b) = self.bar.take() {
                b.finish();
            }
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(stage.to_string());
            self.bar = Some(bar);
            self.stage = stage.to_string();
        }
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
