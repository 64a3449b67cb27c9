#![cfg(feature = "cuda")]
//! NVTX ranges end to end, without Nsight Systems: a stand-in injection library built here with
//! the C compiler takes the NVTX v3 handshake as a profiler's does (NVTX_INJECTION64_PATH names
//! it), records every nvtxRangePushA and nvtxRangePop with its OS thread, and the ranges of a real
//! `patchcore predict --trace` must be its spans: the same names, nesting and order per thread.
//! Skipped (saying why) where no C compiler exists, unless PATCHCORE_REQUIRE_EMULATION=1.

mod common;

use common::{build_library, fitted_model, s, skip_unless_required, stderr, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The tool's side of nvtxDetail/nvtxTypes.h: export table 1 (callbacks), module 1 (core),
/// callback ids 9 (RangePushA) and 11 (RangePop). Each call is one line, "TID push NAME" or
/// "TID pop", appended to $NVTX_STAND_IN_LOG (O_APPEND: lines of threads never interleave).
const STAND_IN: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
typedef void (*fp)(void);
typedef const void *(*GetExportTable)(unsigned);
typedef struct { size_t size; int (*GetModuleFunctionTable)(int, fp ***, unsigned *); } Callbacks;
static int log_fd = -1;
static void record(const char *what, const char *name) {
    char line[512];
    int n = snprintf(line, sizeof line, "%ld %s%s%s\n", (long)syscall(SYS_gettid), what, name ? " " : "", name ? name : "");
    if (write(log_fd, line, n) != n) abort();
}
static int push(const char *name) { record("push", name); return 0; }
static int pop(void) { record("pop", 0); return 0; }
int InitializeInjectionNvtx2(GetExportTable get) {
    const Callbacks *callbacks = get(1);
    fp **table = 0;
    unsigned size = 0;
    if (!callbacks || callbacks->size < sizeof(Callbacks)) return 0;
    if (!callbacks->GetModuleFunctionTable(1, &table, &size) || size < 12 || !table[9] || !table[11]) return 0;
    log_fd = open(getenv("NVTX_STAND_IN_LOG"), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log_fd < 0) return 0;
    *table[9] = (fp)push;
    *table[11] = (fp)pop;
    return 1;
}
"#;

/// Per thread, each closed range as (name, depth) in the order it closed; the threads sorted,
/// since the two sides number them differently.
type Ranges = Vec<Vec<(String, usize)>>;

fn ranges_of_log(log: &str) -> Ranges {
    let mut open: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut closed: BTreeMap<&str, Vec<(String, usize)>> = BTreeMap::new();
    for line in log.lines() {
        let (tid, call) = line.split_once(' ').unwrap();
        let stack = open.entry(tid).or_default();
        match call.strip_prefix("push ") {
            Some(name) => stack.push(name),
            None => {
                assert_eq!(call, "pop", "{line}");
                let name = stack.pop().unwrap_or_else(|| panic!("a pop without a push on thread {tid}"));
                closed.entry(tid).or_default().push((name.to_string(), stack.len()));
            }
        }
    }
    for (tid, stack) in &open {
        assert!(stack.is_empty(), "thread {tid} left ranges open: {stack:?}");
    }
    let mut threads: Ranges = closed.into_values().collect();
    threads.sort();
    threads
}

/// The trace's spans the same way: in each thread's order of ending (the file's order), with the
/// depth the number of that thread's spans that end later and enclose it.
fn ranges_of_trace(trace: &Path) -> Ranges {
    let json: Value = serde_json::from_slice(&std::fs::read(trace).unwrap()).unwrap();
    let mut spans: BTreeMap<u64, Vec<(String, f64, f64)>> = BTreeMap::new();
    for e in json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X") {
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        spans.entry(e["tid"].as_u64().unwrap()).or_default().push((e["name"].as_str().unwrap().into(), ts, ts + dur));
    }
    let mut threads: Ranges = spans
        .into_values()
        .map(|thread| {
            let depth = |i: usize| {
                let (_, ts, end) = &thread[i];
                thread[i + 1..].iter().filter(|(_, t, e)| t <= ts && end <= e).count()
            };
            (0..thread.len()).map(|i| (thread[i].0.clone(), depth(i))).collect()
        })
        .collect();
    threads.sort();
    threads
}

fn predict(model: &Path, images: &Path, trace: &Path, injection: Option<&Path>, log: &Path) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_patchcore"));
    command.args(["predict", "--device", "cpu", "--model", s(model), s(images), "--trace", s(trace)]);
    command.env_remove("NVTX_INJECTION64_PATH").env("NVTX_STAND_IN_LOG", log);
    if let Some(path) = injection {
        command.env("NVTX_INJECTION64_PATH", path);
    }
    let o = command.output().expect("binary runs");
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

#[test]
fn nvtx_ranges_are_the_spans_of_a_traced_predict() {
    let dir = TempDir::new("nvtx");
    let injection = dir.path().join("libstand-in-injection.so");
    if let Err(why) = build_library(dir.path(), "libstand-in-injection.so", STAND_IN) {
        skip_unless_required(&why);
        return;
    }
    let (model, data) = fitted_model(&dir, 64);
    let images = data.join("test/square");
    let (trace, log) = (dir.path().join("predict.json"), dir.path().join("nvtx.log"));

    predict(&model, &images, &trace, Some(&injection), &log);
    let ranges = ranges_of_log(&std::fs::read_to_string(&log).expect("the profiler was attached"));
    assert_eq!(ranges, ranges_of_trace(&trace));
    let all: Vec<&(String, usize)> = ranges.iter().flatten().collect();
    // Images are decoded on a thread of their own (a batch ahead of scoring): there `decode` is
    // a top-level range.
    for (name, depth) in [("predict", 0), ("load", 1), ("decode", 0), ("layer1.0.conv1", 1), ("anomaly_map", 1)] {
        assert!(all.iter().any(|(n, d)| n == name && *d == depth), "no range {name} at depth {depth}: {all:?}");
    }

    // No profiler, or one whose library is not there: no ranges and no complaint.
    std::fs::remove_file(&log).unwrap();
    predict(&model, &images, &trace, None, &log);
    let o = predict(&model, &images, &trace, Some(&dir.path().join("no-such-injection.so")), &log);
    assert!(!log.exists(), "ranges were recorded without a profiler");
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}
