//! `--trace FILE` end to end: a real `patchcore predict` writes a Chrome trace whose spans nest,
//! cover the command, carry the FLOP-counting backend's figures, and name every stage.

mod common;

use common::{fitted_model, patchcore, s, stderr, TempDir};
use patchcore::backend::flops::FlopCounter;
use patchcore::patchcore::model_file;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

struct Span {
    name: String,
    cat: String,
    ts: f64,
    end: f64,
    flops: u64,
}

/// The two tests time commands that each use both cores: run side by side, each would preempt
/// the other's command between its spans, which a coverage figure cannot tell from untraced work.
static CORES: Mutex<()> = Mutex::new(());

#[test]
fn predict_trace_nests_covers_the_command_and_counts_conv_flops() {
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("trace-predict");
    // 128 px: enough work per image that the command's fixed untraced moments (argument
    // parsing, JSON lines) stay far under 5% even on a loaded machine.
    let (model, data) = fitted_model(&dir, 128);
    let trace = dir.path().join("predict.json");
    let overlays = dir.path().join("overlays");
    // Coverage is a timing: one preemption of the main thread between two spans (the decoding
    // thread starts just before `load`) can cost a loaded 2-core machine 6 ms of a 100 ms run.
    // Untraced work shows in every run, so the best of three runs must reach 95%.
    let mut best: Option<Coverage> = None;
    let mut threads = BTreeMap::new();
    for _ in 0..3 {
        let o = patchcore(&[
            "predict",
            "--model",
            s(&model),
            s(&data.join("test/good")),
            s(&data.join("test/square")),
            "--out",
            s(&overlays),
            "--batch",
            "8",
            "--trace",
            s(&trace),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        threads = read_spans(&trace);
        let coverage = nest_and_cover(&mut threads);
        if best.as_ref().is_none_or(|b| coverage.share > b.share) {
            best = Some(coverage);
        }
        if best.as_ref().is_some_and(|b| b.share >= 0.95) {
            break;
        }
    }
    let best = best.unwrap();
    assert!(
        best.share >= 0.95,
        "the stages cover {:.1}% of predict's {} us at best of 3 runs; that run's largest untraced gaps (us, before): {:?}",
        100.0 * best.share,
        best.root,
        best.gaps
    );

    let names: Vec<&str> = threads.values().flatten().map(|s| s.name.as_str()).collect();
    for want in
        ["load", "decode", "preprocess", "layer2.0.conv1", "conv1+max_pool", "embed", "knn", "eq7", "anomaly_map"]
    {
        assert!(names.contains(&want), "no `{want}` span in {names:?}");
    }
    for want in ["render", "write"] {
        assert!(names.contains(&want), "no `{want}` span in {names:?}");
    }

    // The one forward pass (6 images, batch 8) on the FLOP-counting backend, conv by conv.
    let counter = FlopCounter::default();
    let (_, backbone, ..) = model_file::load(&counter, &model).unwrap();
    backbone.forward(&counter, &vec![6, 3, 128, 128]).unwrap();
    let mut convs: Vec<&Span> = threads.values().flatten().filter(|s| s.cat == "conv").collect();
    convs.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    let traced: Vec<(&str, u64)> = convs.iter().map(|s| (s.name.as_str(), s.flops)).collect();
    let counted = counter.per_conv();
    assert_eq!(traced.len(), counted.len(), "one span per convolution run: {traced:?}");
    for ((name, flops), want) in traced.iter().zip(&counted) {
        assert_eq!(flops, want, "{name}: span FLOPs against the FLOP counter");
    }
    assert_eq!(traced.iter().find(|(n, _)| *n == "layer2.0.conv1").unwrap().1, {
        // 6 images, 128 x 16 x 16 outputs (128 px: layer1 is 32 x 32), 64 x 3 x 3 taps.
        2 * 6 * 128 * 16 * 16 * 64 * 9
    });
}

/// The trace's complete spans, by thread.
fn read_spans(trace: &std::path::Path) -> BTreeMap<u64, Vec<Span>> {
    let json: Value = serde_json::from_slice(&std::fs::read(trace).unwrap()).unwrap();
    let mut threads: BTreeMap<u64, Vec<Span>> = BTreeMap::new();
    for e in json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X") {
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        threads.entry(e["tid"].as_u64().unwrap()).or_default().push(Span {
            name: e["name"].as_str().unwrap().to_string(),
            cat: e["cat"].as_str().unwrap().to_string(),
            ts,
            end: ts + dur,
            flops: e["args"]["flops"].as_u64().unwrap(),
        });
    }
    assert!(!threads.is_empty(), "the trace has spans");
    threads
}

/// How much of the root span `predict` its top-level stages cover.
struct Coverage {
    share: f64,
    root: f64,
    /// The largest untraced gaps (us) and the stage each comes before, to say where a shortfall
    /// comes from.
    gaps: Vec<(f64, String)>,
}

/// Asserts that the spans nest, per thread: in start order (a parent before the children it
/// contains), each span lies within the innermost open span that it starts inside. Sorts each
/// thread's spans so.
fn nest_and_cover(threads: &mut BTreeMap<u64, Vec<Span>>) -> Coverage {
    const EPS: f64 = 0.01;
    let mut top_level_under_root = 0.0;
    let mut root = None;
    let (mut gaps, mut last_top_end, mut root_end) = (Vec::new(), 0.0f64, 0.0f64);
    for spans in threads.values_mut() {
        spans.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.end.total_cmp(&a.end)));
        let mut open: Vec<usize> = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            while open.last().is_some_and(|&p| spans[p].end <= span.ts + EPS) {
                open.pop();
            }
            if let Some(&p) = open.last() {
                let parent = &spans[p];
                assert!(
                    span.end <= parent.end + EPS,
                    "{} [{}, {}] overlaps its parent {} [{}, {}]",
                    span.name,
                    span.ts,
                    span.end,
                    parent.name,
                    parent.ts,
                    parent.end
                );
                if parent.name == "predict" && open.len() == 1 {
                    top_level_under_root += span.end - span.ts;
                    gaps.push((span.ts - last_top_end.max(parent.ts), span.name.clone()));
                    last_top_end = span.end;
                }
            } else if span.name == "predict" {
                assert!(root.is_none(), "one root span");
                root = Some(span.end - span.ts);
                root_end = span.end;
            }
            open.push(i);
        }
    }
    let root = root.expect("a root span named after the command");
    gaps.push((root_end - last_top_end, "the end".into()));
    gaps.sort_by(|a, b| b.0.total_cmp(&a.0));
    gaps.truncate(6);
    Coverage { share: top_level_under_root / root, root, gaps }
}

#[test]
fn profile_json_has_every_stage_shares_summing_to_one_and_consistent_rates() {
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("trace-profile");
    let (model, data) = fitted_model(&dir, 64);
    let o = patchcore(&[
        "profile",
        "--model",
        s(&model),
        s(&data.join("test/good")),
        s(&data.join("test/square")),
        "--batch",
        "4",
        "--repeat",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stages = json["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in ["decode", "preprocess", "conv1+max_pool", "layer2.0.conv1", "embed", "knn", "eq7", "anomaly_map"] {
        assert!(names.contains(&want), "no `{want}` stage in {names:?}");
    }
    assert!(names.contains(&"(untraced)"));
    let shares: f64 = stages.iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 0.01, "shares sum to {shares}");
    assert!(json["peak"]["gflop_per_s"].as_f64().unwrap() > 0.0);
    for stage in stages {
        let (flops, ms) = (stage["flops"].as_f64().unwrap(), stage["total_ms"].as_f64().unwrap());
        let rate = stage["gflop_per_s"].as_f64().unwrap();
        assert!((rate - flops / (ms * 1e-3) / 1e9).abs() <= 1e-6 * rate.max(1.0), "{stage}");
        // 2 repeats of 2 batches (6 images by 4).
        if stage["name"] == "layer2.0.conv1" {
            assert_eq!(stage["calls"], 4);
            assert!(flops > 0.0);
        }
    }
}
