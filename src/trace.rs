//! Profiling spans: one API for every stage (stage name, shape, FLOPs, bytes), nested per
//! thread, and the sinks that read them: a Chrome trace-event JSON file (opens in Perfetto and
//! chrome://tracing) and the `profile` command's table.
//!
//! Off, a span costs one relaxed atomic load and nothing else: no clock read, no allocation,
//! and its work figures (a closure) are never computed. On, a span reads the clock at both
//! ends and, when it ends, appends one event under a lock: spans are stages and convolutions,
//! a few hundred per batch, so the lock is never contended in practice.
//!
//! Turning it on: `--trace FILE` on the CLI (written when the command ends), or
//! `PATCHCORE_TRACE=FILE` for the Rust API and the C ABI, read once at the first model load or
//! fit; that file is rewritten, whole and atomically, each time a model is dropped
//! (`patchcore_free`), so after the last one it holds the whole run.
//!
//! Under a profiler (`nsys profile`), with the `cuda` feature, every span is also an NVTX range
//! of the same name on its thread (`nvtx`), whether or not spans are recorded:
//! `attach_profiler` looks for one once, at the CLI's start and at the first model load or fit.
//! The one atomic holds both switches, so with neither on a span still costs one load.
//!
//! On a device backend, `backend::traced` synchronises the stream at both ends of a
//! span while tracing is on, so a span times device work; tracing then serialises the stream.
//! The CUDA backend also times each such operation with a pair of CUDA events, and the GPU's
//! time goes on a track of its own, "CUDA stream" (`Span::on_device`).

use crate::error::Result;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Instant;

#[cfg(feature = "cuda")]
mod nvtx;
/// NVTX comes with the `cuda` feature; without it no profiler is ever attached.
#[cfg(not(feature = "cuda"))]
mod nvtx {
    pub fn attach() -> bool {
        false
    }
    pub fn push(_name: &str) {}
    pub fn pop() {}
}

/// `RECORD | NVTX`: what a span does when it opens; 0, nothing.
static ON: AtomicU8 = AtomicU8::new(0);
/// Spans are recorded into `EVENTS`.
const RECORD: u8 = 1;
/// Spans are NVTX ranges too: a profiler is attached.
const NVTX: u8 = 2;
static EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());
/// Where `PATCHCORE_TRACE` asked for the trace; `None` when tracing was started otherwise.
static ENV_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);
static NEXT_TID: AtomicU64 = AtomicU64::new(1);

/// The origin of every timestamp (first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, in microseconds on the trace's clock.
pub fn now_us() -> f64 {
    Instant::now().duration_since(epoch()).as_secs_f64() * 1e6
}

/// The track of the device's stream; threads are numbered from 1.
pub const STREAM_TID: u64 = 0;

/// An operation's time as the device measured it (CUDA events): from the backend's reference
/// event to the operation's start, and from its start to its end, with the host time at which
/// the reference completed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceTiming {
    pub reference_us: f64,
    pub from_reference_ms: f32,
    pub elapsed_ms: f32,
}

thread_local! {
    /// This thread's track number in the trace.
    static TID: u64 = NEXT_TID.fetch_add(1, Ordering::Relaxed);
    /// The open spans of this thread, innermost last: the time each one's children took so far.
    static STACK: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// What an operation does, for its span: the FLOP-counting backend's figures
/// (`backend::flops`), the operand shape, and named extras (`k`, `selections`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: u64,
    /// Bytes the operation reads and writes at least once (its compulsory traffic).
    pub bytes: u64,
    pub shape: Vec<usize>,
    pub args: Vec<(&'static str, u64)>,
}

impl Work {
    pub fn new(flops: u64, bytes: u64, shape: Vec<usize>) -> Self {
        Work { flops, bytes, shape, args: Vec::new() }
    }

    pub fn arg(mut self, key: &'static str, value: u64) -> Self {
        self.args.push((key, value));
        self
    }
}

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    /// "conv" for backbone convolutions, "stage" otherwise.
    pub cat: &'static str,
    pub tid: u64,
    /// Microseconds since the trace's epoch.
    pub start_us: f64,
    pub dur_us: f64,
    /// `dur_us` less the spans nested directly in it.
    pub self_us: f64,
    /// 0 for a span with no open parent on its thread.
    pub depth: usize,
    pub work: Work,
}

/// Whether spans are being recorded: one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed) & RECORD != 0
}

/// Starts recording into memory, from now on (events already recorded are kept).
pub fn start() {
    epoch();
    ON.fetch_or(RECORD, Ordering::Relaxed);
}

/// Makes every span from now on an NVTX range too, when a profiler that takes NVTX is attached
/// to this process (with the `cuda` feature; see `nvtx`). Looks once.
pub fn attach_profiler() {
    if nvtx::attach() {
        ON.fetch_or(NVTX, Ordering::Relaxed);
    }
}

/// Stops recording and returns every event recorded so far, in the order they ended.
pub fn stop() -> Vec<Event> {
    ON.fetch_and(!RECORD, Ordering::Relaxed);
    take()
}

/// The events recorded so far, removed from the record; recording goes on if it was on.
pub fn take() -> Vec<Event> {
    std::mem::take(&mut *EVENTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `PATCHCORE_TRACE=FILE`: read once, at the first model load or fit; starts recording unless
/// something (the CLI's `--trace`) already did. Attaches to a profiler, if any, too.
pub fn init_from_env() {
    attach_profiler();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Some(path) = std::env::var_os("PATCHCORE_TRACE").filter(|p| !p.is_empty()) {
            if !enabled() {
                *ENV_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(PathBuf::from(path));
                start();
            }
        }
    });
}

/// Rewrites `PATCHCORE_TRACE`'s file with everything recorded so far (a model was dropped).
/// Does nothing when tracing was not started by the variable. A failure is printed, not
/// returned: it happens in a destructor.
pub fn flush_env() {
    let Some(path) = ENV_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    let events = EVENTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(e) = write_chrome(&path, &events) {
        eprintln!("patchcore: cannot write the trace PATCHCORE_TRACE names: {e}");
    }
}

/// Writes `events` to `path` as a Chrome trace-event JSON object (atomically).
pub fn write_chrome(path: &Path, events: &[Event]) -> Result<()> {
    crate::io::write_atomic(path, chrome_json(events).to_string().as_bytes())
}

/// The Trace Event Format: one complete event (`"ph":"X"`, microseconds) per span, each thread
/// on its own track, with FLOPs, bytes, shape and extras in `args`.
pub fn chrome_json(events: &[Event]) -> serde_json::Value {
    let pid = std::process::id();
    let mut tids: Vec<u64> = events.iter().map(|e| e.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    let names = tids.iter().map(|&tid| {
        let name = if tid == STREAM_TID { "CUDA stream".to_string() } else { format!("thread {tid}") };
        serde_json::json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
    });
    let spans = events.iter().map(|e| {
        let mut args = serde_json::json!({"flops": e.work.flops, "bytes": e.work.bytes, "shape": e.work.shape});
        for (key, value) in &e.work.args {
            args[*key] = (*value).into();
        }
        serde_json::json!({
            "name": e.name, "cat": e.cat, "ph": "X", "pid": pid, "tid": e.tid,
            "ts": e.start_us, "dur": e.dur_us, "args": args,
        })
    });
    serde_json::json!({"traceEvents": names.chain(spans).collect::<Vec<_>>(), "displayTimeUnit": "ms"})
}

/// An open span; it is recorded when dropped. Spans of one thread must end in the reverse
/// order they began (scopes do that).
#[must_use = "a span times the scope it lives in"]
pub struct Span {
    /// The span being recorded.
    open: Option<Box<Open>>,
    /// An NVTX range was pushed for it.
    nvtx: bool,
}

const OFF: Span = Span { open: None, nvtx: false };

struct Open {
    name: String,
    cat: &'static str,
    start: Instant,
    depth: usize,
    work: Work,
}

/// A span for a stage.
#[inline]
pub fn span(name: &str) -> Span {
    match ON.load(Ordering::Relaxed) {
        0 => OFF,
        on => Span::begin(name, "stage", on),
    }
}

/// A span for a backbone convolution, named as in the weights (`layer2.0.conv1`).
#[inline]
pub fn conv_span(name: &str) -> Span {
    match ON.load(Ordering::Relaxed) {
        0 => OFF,
        on => Span::begin(name, "conv", on),
    }
}

impl Span {
    #[cold]
    fn begin(name: &str, cat: &'static str, on: u8) -> Span {
        let nvtx = on & NVTX != 0;
        if nvtx {
            nvtx::push(name);
        }
        if on & RECORD == 0 {
            return Span { open: None, nvtx };
        }
        let depth = STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.push(0.0);
            s.len() - 1
        });
        let open = Open { name: name.to_string(), cat, start: Instant::now(), depth, work: Work::default() };
        Span { open: Some(Box::new(open)), nvtx }
    }

    /// Whether this span is recording.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.open.is_some()
    }

    /// Records this span's operation once more, on the stream's track as the device timed it: the
    /// same name, category and figures. Does nothing when the span is not recording.
    pub fn on_device(&self, timing: DeviceTiming) {
        if let Some(open) = &self.open {
            EVENTS.lock().unwrap_or_else(|e| e.into_inner()).push(device_event(open, timing));
        }
    }

    /// Attaches the operation's figures; `work` runs only while tracing is on.
    #[inline]
    pub fn work(mut self, work: impl FnOnce() -> Work) -> Self {
        if let Some(open) = &mut self.open {
            open.work = work();
        }
        self
    }
}

/// `open`'s operation on the stream's track: the device's operations there do not nest, so
/// every one is a root and all its time is its own.
fn device_event(open: &Open, t: DeviceTiming) -> Event {
    let dur_us = f64::from(t.elapsed_ms) * 1e3;
    Event {
        name: open.name.clone(),
        cat: open.cat,
        tid: STREAM_TID,
        start_us: t.reference_us + f64::from(t.from_reference_ms) * 1e3,
        dur_us,
        self_us: dur_us,
        depth: 0,
        work: open.work.clone(),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if self.nvtx {
            nvtx::pop();
        }
        let Some(open) = self.open.take() else { return };
        let end = Instant::now();
        let at = |t: Instant| t.duration_since(epoch()).as_secs_f64() * 1e6;
        let (start_us, end_us) = (at(open.start), at(end));
        let dur_us = end_us - start_us;
        let children = STACK.with(|s| {
            let mut s = s.borrow_mut();
            let children = s.pop().unwrap_or(0.0);
            if let Some(parent) = s.last_mut() {
                *parent += dur_us;
            }
            children
        });
        let event = Event {
            name: open.name,
            cat: open.cat,
            tid: TID.with(|t| *t),
            start_us,
            dur_us,
            self_us: (dur_us - children).max(0.0),
            depth: open.depth,
            work: open.work,
        };
        EVENTS.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tracing is process-wide: these tests take turns.
    static TURN: Mutex<()> = Mutex::new(());

    #[test]
    fn off_records_nothing() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        stop();
        let mut computed = false;
        {
            let outer = span("outer").work(|| {
                computed = true;
                Work::default()
            });
            assert!(!outer.is_on());
            let _inner = conv_span("layer2.0.conv1");
        }
        assert!(!computed, "work figures are computed only while tracing");
        assert!(take().is_empty());
        STACK.with(|s| assert!(s.borrow().is_empty()));
    }

    #[test]
    fn on_records_nested_spans_with_their_work() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        start();
        {
            let _outer = span("outer");
            let _inner = conv_span("layer2.0.conv1").work(|| Work::new(10, 20, vec![1, 2]).arg("k", 3));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let tid = TID.with(|t| *t);
        let events: Vec<Event> = stop().into_iter().filter(|e| e.tid == tid).collect();
        assert_eq!(events.len(), 2);
        let (inner, outer) = (&events[0], &events[1]);
        assert_eq!((inner.name.as_str(), inner.cat, inner.depth), ("layer2.0.conv1", "conv", 1));
        assert_eq!((outer.name.as_str(), outer.depth), ("outer", 0));
        assert!(outer.start_us <= inner.start_us && inner.start_us + inner.dur_us <= outer.start_us + outer.dur_us);
        assert!((outer.self_us - (outer.dur_us - inner.dur_us)).abs() < 1e-6);
        assert_eq!(inner.work, Work::new(10, 20, vec![1, 2]).arg("k", 3));
        let json = chrome_json(&events);
        let x = json["traceEvents"].as_array().unwrap().iter().find(|e| e["ph"] == "X").unwrap().clone();
        assert_eq!(x["args"]["flops"], 10);
        assert_eq!(x["args"]["k"], 3);
    }

    #[test]
    fn device_time_goes_on_the_stream_track_at_the_reference_plus_its_offset() {
        let open = Open {
            name: "layer1.0.conv1".into(),
            cat: "conv",
            start: Instant::now(),
            depth: 2,
            work: Work::new(100, 40, vec![1, 64, 56, 56]),
        };
        let e = device_event(&open, DeviceTiming { reference_us: 1000.0, from_reference_ms: 2.5, elapsed_ms: 0.25 });
        assert_eq!((e.name.as_str(), e.cat, e.tid, e.depth), ("layer1.0.conv1", "conv", STREAM_TID, 0));
        assert_eq!((e.start_us, e.dur_us, e.self_us), (3500.0, 250.0, 250.0));
        assert_eq!(e.work, open.work);
        let json = chrome_json(&[e]);
        let track = json["traceEvents"].as_array().unwrap().iter().find(|e| e["ph"] == "M").unwrap().clone();
        assert_eq!((track["tid"].as_u64(), track["args"]["name"].as_str()), (Some(STREAM_TID), Some("CUDA stream")));
    }
}
