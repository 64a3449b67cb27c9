//! `patchcore profile`: predict, traced into memory, as a per-stage table against the peak of
//! the device it ran on: the CPU's measured (sgemm, copy), or the GPU's from its properties and
//! a copy (`CudaBackend::peak`).

use super::options::{ModelArgs, TraceArgs};
use crate::backend::AnyBackend;
use crate::data::image::load_rgb;
use crate::error::{Error, Result};
use crate::trace::{self, Event};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images, or folders of images (decoded on every repeat, as predict does).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Traced runs of predict over all the images, after one untraced warm-up.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    // `--trace FILE` writes the traced runs (not the warm-up) as a Chrome trace too.
    #[command(flatten)]
    trace: TraceArgs,
}

/// One stage of the table.
#[derive(Debug, serde::Serialize)]
pub struct Stage {
    pub name: String,
    pub calls: usize,
    pub total_ms: f64,
    pub median_ms: f64,
    /// Of the root spans' total: the stages and `(untraced)` sum to 1.
    pub share: f64,
    pub flops: u64,
    pub bytes: u64,
    pub gflop_per_s: f64,
    pub gb_per_s: f64,
    /// Of the measured peak; absent when no peak was measured for the device.
    pub peak_flops_fraction: Option<f64>,
    pub peak_bytes_fraction: Option<f64>,
}

/// The device's peak: FLOP/s (absent when unknown for the device), bandwidth as a copy
/// reached it, and how the figures were had.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Peak {
    pub gflop_per_s: Option<f64>,
    pub copy_gb_per_s: f64,
    /// The bandwidth the device's properties promise (GPUs).
    pub spec_gb_per_s: Option<f64>,
    pub method: &'static str,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn best_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// A 1024^3 sgemm on all threads (the kernel the CPU convolutions and knn run on) and a
/// parallel copy of 256 MiB (read + write counted, far above any cache): a few hundred ms.
fn measure_peak() -> Peak {
    let n = 1024;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    let t = best_seconds(5, || crate::backend::cpu::sgemm(n, n, n, &a, &b, false, &mut c, true));
    let sgemm = 2.0 * (n * n * n) as f64 / t / 1e9;
    let len = 64 << 20;
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let chunk = 1 << 16;
    let t = best_seconds(5, || {
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    Peak {
        gflop_per_s: Some(sgemm),
        copy_gb_per_s: 2.0 * 4.0 * len as f64 / t / 1e9,
        spec_gb_per_s: None,
        method: "measured: 1024^3 sgemm, 256 MiB copy",
    }
}

/// The peak of the device `backend` runs on.
fn device_peak(backend: &AnyBackend) -> Result<Peak> {
    match backend {
        AnyBackend::Cpu(_) => Ok(measure_peak()),
        AnyBackend::Cuda(gpu) => {
            let p = gpu.peak()?;
            Ok(Peak {
                gflop_per_s: p.fp32_gflop_per_s,
                copy_gb_per_s: p.copy_gb_per_s,
                spec_gb_per_s: p.spec_gb_per_s,
                method: "FP32 from the GPU's properties, a measured 256 MiB device copy",
            })
        }
    }
}

/// The table of `events` from runs whose root spans are named `root`: one row per stage nested
/// directly in a root, in order of first appearance, and `(untraced)` for the rest of the roots.
pub fn stages(events: &[Event], root: &str, peak: Option<&Peak>) -> Vec<Stage> {
    let roots: Vec<&Event> = events.iter().filter(|e| e.depth == 0 && e.name == root).collect();
    let whole: f64 = roots.iter().map(|e| e.dur_us).sum();
    let mut order: Vec<String> = Vec::new();
    let mut by_name: std::collections::HashMap<String, Vec<&Event>> = Default::default();
    // Each root's time left to no stage.
    let mut untraced: Vec<f64> = roots.iter().map(|r| r.dur_us).collect();
    for e in events.iter().filter(|e| e.depth == 1) {
        let root = roots
            .iter()
            .position(|r| r.tid == e.tid && r.start_us <= e.start_us && e.start_us <= r.start_us + r.dur_us);
        if let Some(i) = root {
            untraced[i] -= e.dur_us;
            if !by_name.contains_key(&e.name) {
                order.push(e.name.clone());
            }
            by_name.entry(e.name.clone()).or_default().push(e);
        }
    }
    let row = |name: String, durations: Vec<f64>, flops: u64, bytes: u64| {
        let total_us: f64 = durations.iter().sum();
        let seconds = total_us * 1e-6;
        let rate = |v: u64| if seconds > 0.0 { v as f64 / seconds / 1e9 } else { 0.0 };
        let (gflop_per_s, gb_per_s) = (rate(flops), rate(bytes));
        Stage {
            name,
            calls: durations.len(),
            total_ms: total_us * 1e-3,
            median_ms: median(&mut durations.clone()) * 1e-3,
            share: if whole > 0.0 { total_us / whole } else { 0.0 },
            flops,
            bytes,
            gflop_per_s,
            gb_per_s,
            peak_flops_fraction: peak.and_then(|p| p.gflop_per_s).map(|peak| gflop_per_s / peak),
            peak_bytes_fraction: peak.map(|p| gb_per_s / p.copy_gb_per_s),
        }
    };
    let mut rows: Vec<Stage> = order
        .into_iter()
        .map(|name| {
            let spans = &by_name[&name];
            let durations = spans.iter().map(|e| e.dur_us).collect();
            let flops = spans.iter().map(|e| e.work.flops).sum();
            let bytes = spans.iter().map(|e| e.work.bytes).sum();
            row(name, durations, flops, bytes)
        })
        .collect();
    rows.push(row("(untraced)".into(), untraced, 0, 0));
    rows
}

pub fn run(args: Args) -> Result<()> {
    if args.repeat == 0 {
        return Err(Error::option("--repeat", "0: expected at least 1"));
    }
    let paths = super::predict::expand(&args.images)?;
    let model = args.model.load()?;
    // Measured before the runs, with nothing else of ours running.
    let peak = device_peak(model.backend())?;
    let predict_all = || -> Result<()> {
        let _root = trace::span("predict");
        for chunk in paths.chunks(args.model.batch) {
            let images = chunk.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>>>()?;
            model.predict(&images)?;
        }
        Ok(())
    };
    predict_all()?;
    trace::start();
    let result = (0..args.repeat).try_for_each(|_| predict_all());
    let events = trace::stop();
    result?;
    if let Some(path) = &args.trace.trace {
        trace::write_chrome(path, &events)?;
    }
    let rows = stages(&events, "predict", Some(&peak));
    let describe = crate::backend::Backend::describe(model.backend());
    if args.json {
        let out = serde_json::json!({
            "device": describe,
            "images": paths.len(),
            "batch": args.model.batch,
            "repeat": args.repeat,
            "peak": peak,
            "stages": rows,
        });
        println!("{out}");
        return Ok(());
    }
    println!("{} images, batch {}, {} runs on {describe}", paths.len(), args.model.batch, args.repeat);
    let flops = peak.gflop_per_s.map_or("unknown for this device".into(), |f| format!("{f:.1} GFLOP/s"));
    let spec = peak.spec_gb_per_s.map_or(String::new(), |b| format!(" (properties: {b:.1} GB/s)"));
    println!("peak ({}): {flops}, copy {:.1} GB/s{spec}", peak.method, peak.copy_gb_per_s);
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>7} {:>9} {:>7} {:>7} {:>7}",
        "stage", "calls", "total ms", "median ms", "share", "GFLOP/s", "GB/s", "%flops", "%bw"
    );
    let pct = |f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.1}", 100.0 * f));
    for r in &rows {
        println!(
            "{:<22} {:>6} {:>10.2} {:>10.3} {:>6.1}% {:>9.2} {:>7.2} {:>7} {:>7}",
            r.name,
            r.calls,
            r.total_ms,
            r.median_ms,
            100.0 * r.share,
            r.gflop_per_s,
            r.gb_per_s,
            pct(r.peak_flops_fraction),
            pct(r.peak_bytes_fraction)
        );
    }
    Ok(())
}
