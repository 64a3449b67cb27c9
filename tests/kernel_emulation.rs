#![cfg(feature = "cuda")]
//! Every kernel in kernels/*.cu against the CPU backend, without a GPU: the kernel sources are compiled as C++
//! against a CUDA emulation (tests/kernel_emulation/, see driver.cpp's header for what it models) and launched
//! with the geometry the CUDA backend computes (`patchcore::backend::cuda::launch`), in the order and with the
//! arguments src/backend/cuda/device.rs uses. The driver is built with g++; without one the tests print
//! "skipping: ..." and pass, unless PATCHCORE_REQUIRE_EMULATION=1 (as in CI).

mod common;

use common::{clustered, covering_radius, rel_err, TempDir};
use cudarc::driver::LaunchConfig;
use half::f16;
use patchcore::backend::cpu::{bound_tolerance, distance_eps, prune_factor, Subspace, PROJ};
use patchcore::backend::cpu::{gaussian_taps, l2_distance, reweighted_score, squared_norms, top_patches};
use patchcore::backend::cuda::launch::coreset_scan_config;
use patchcore::backend::cuda::launch::{
    conv_plan, coreset_config, grid_stride, knn_plan, norms_config, one_block_per_image, preprocess_runs, GRID_CAP,
    KNN_LISTS, KNN_TILE, MAX_BLUR_RADIUS,
};
use patchcore::backend::{Activation, Backend, ConvSpec, CpuBackend, Padding, Precision};
use patchcore::data::image::Preprocess;
use patchcore::rng::SplitMix64;
use patchcore::Tensor;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// What an uninitialised device allocation holds here (device.rs allocates outputs without clearing them): NaN
/// as f32, 0xFFFFFFFF as u32, so an output element a kernel forgets to write cannot pass for a result.
const POISON: u8 = 0xFF;
/// The SM counts the geometry is computed for. A small GPU: the coreset grid is 32 blocks that each take
/// several grid-stride steps, and the kNN bank is split several ways. An H200: one block per 16 coreset
/// rows, and a 64-row split per bank tile.
const SMALL_GPU_SMS: usize = 8;
const H200_SMS: usize = 132;

// ------------------------------------------------------------------------------------------------------------
// The driver and its scripts
// ------------------------------------------------------------------------------------------------------------

/// Why there is no driver: g++ is missing (a skip, unless required), or it failed to build (always a failure).
enum NoDriver {
    Skip(String),
    Fail(String),
}

/// The emulation driver, compiled once per test run; `None` after printing why the caller skips.
fn driver() -> Option<&'static Path> {
    static DRIVER: OnceLock<Result<PathBuf, NoDriver>> = OnceLock::new();
    let required = std::env::var("PATCHCORE_REQUIRE_EMULATION").is_ok_and(|v| v == "1");
    match DRIVER.get_or_init(build_driver) {
        Ok(path) => Some(path),
        Err(NoDriver::Skip(why)) if !required => {
            println!("skipping: {why}");
            None
        }
        Err(NoDriver::Skip(why)) => panic!("{why}, and PATCHCORE_REQUIRE_EMULATION=1"),
        Err(NoDriver::Fail(why)) => panic!("{why}"),
    }
}

fn build_driver() -> Result<PathBuf, NoDriver> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/kernel_emulation");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel_emulation");
    std::fs::create_dir_all(&out_dir).map_err(|e| NoDriver::Fail(format!("{}: {e}", out_dir.display())))?;
    // Built under a per-process name and renamed into place, so concurrent test runs never execute a
    // half-written binary.
    let tmp = out_dir.join(format!("driver.{}", std::process::id()));
    let started = Instant::now();
    let output = Command::new("g++")
        .args(["-std=c++20", "-O2", "-pthread", "-ffp-contract=off", "-o"])
        .arg(&tmp)
        .arg("-I")
        .arg(src.join("shim"))
        .arg("-I")
        .arg(root.join("kernels"))
        // geometry.cuh, which build.rs writes from the host's launch geometry.
        .arg("-I")
        .arg(env!("OUT_DIR"))
        .arg(src.join("driver.cpp"))
        .output()
        .map_err(|e| NoDriver::Skip(format!("cannot run g++ ({e}); the kernel emulation needs g++ 12 or newer")))?;
    if !output.status.success() {
        return Err(NoDriver::Fail(format!(
            "g++ failed to build the kernel emulation driver:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let driver = out_dir.join("driver");
    std::fs::rename(&tmp, &driver).map_err(|e| NoDriver::Fail(format!("{}: {e}", driver.display())))?;
    println!("emulation driver built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(driver)
}

/// A kernel argument, typed as the kernel's parameter (the driver checks the type).
#[derive(Clone, Copy)]
enum Arg<'a> {
    Buf(&'a str),
    Null,
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
}

impl std::fmt::Display for Arg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Buf(name) => write!(f, "buf:{name}"),
            Arg::Null => write!(f, "null"),
            Arg::I32(v) => write!(f, "i32:{v}"),
            Arg::U32(v) => write!(f, "u32:{v}"),
            Arg::I64(v) => write!(f, "i64:{v}"),
            // Display prints the shortest decimal that reads back as the same f32, and "inf".
            Arg::F32(v) => write!(f, "f32:{v}"),
        }
    }
}

use Arg::{Buf, Null, F32, I32, I64, U32};

/// One emulated stream: buffers and launches in order, run by the driver in one process.
struct Script {
    dir: TempDir,
    text: String,
    saved: Vec<String>,
}

impl Script {
    fn new(tag: &str) -> Self {
        Script { dir: TempDir::new(&format!("emu-{tag}")), text: String::new(), saved: Vec::new() }
    }

    /// A device buffer holding `bytes` (a host-to-device copy).
    fn load(&mut self, name: &str, bytes: Vec<u8>) {
        let path = self.dir.path().join(format!("{name}.in"));
        std::fs::write(&path, bytes).expect("write an input");
        writeln!(self.text, "load {name} {}", path.display()).unwrap();
    }

    fn load_f32(&mut self, name: &str, data: &[f32]) {
        self.load(name, data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }

    /// An allocation of `bytes`, every byte `fill` (POISON for device.rs's uninitialised `alloc`).
    fn alloc(&mut self, name: &str, bytes: usize, fill: u8) {
        writeln!(self.text, "alloc {name} {bytes} {fill}").unwrap();
    }

    fn launch(&mut self, kernel: &str, config: LaunchConfig, args: &[Arg]) {
        let (g, b) = (config.grid_dim, config.block_dim);
        write!(
            self.text,
            "launch {kernel} {} {} {} {} {} {} {}",
            g.0, g.1, g.2, b.0, b.1, b.2, config.shared_mem_bytes
        )
        .unwrap();
        for a in args {
            write!(self.text, " {a}").unwrap();
        }
        self.text.push('\n');
    }

    /// Marks `name` to be copied back after the run.
    fn save(&mut self, name: &str) {
        writeln!(self.text, "save {name} {}", self.dir.path().join(format!("{name}.out")).display()).unwrap();
        self.saved.push(name.to_string());
    }

    fn run(self, driver: &Path) -> Outputs {
        let path = self.dir.path().join("script.txt");
        std::fs::write(&path, &self.text).expect("write the script");
        let output = Command::new(driver).arg(&path).output().expect("run the emulation driver");
        assert!(
            output.status.success(),
            "the emulation failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let read = |name: &String| std::fs::read(self.dir.path().join(format!("{name}.out"))).expect("an output");
        Outputs(self.saved.iter().map(|name| (name.clone(), read(name))).collect())
    }
}

struct Outputs(HashMap<String, Vec<u8>>);

impl Outputs {
    fn words(&self, name: &str) -> impl Iterator<Item = [u8; 4]> + '_ {
        self.0[name].chunks_exact(4).map(|c| c.try_into().unwrap())
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.words(name).map(f32::from_le_bytes).collect()
    }

    fn u32s(&self, name: &str) -> Vec<u32> {
        self.words(name).map(u32::from_le_bytes).collect()
    }
}

// ------------------------------------------------------------------------------------------------------------
// Inputs and comparisons
// ------------------------------------------------------------------------------------------------------------

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Bit-identical, except that any NaN equals any NaN (the GPU's NaN payloads differ from x86's).
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let differ = |(_, (g, w)): &(usize, (&f32, &f32))| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan());
    let bad: Vec<_> = got.iter().zip(want).enumerate().filter(differ).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ, first at {}: {} vs CPU {}",
        bad.len(),
        got.len(),
        bad[0].0,
        bad[0].1 .0,
        bad[0].1 .1
    );
}

/// Distances and row indices: a kNN result (nq x k each).
type DistRows = (Vec<f32>, Vec<u32>);

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), data)
}

// ------------------------------------------------------------------------------------------------------------
// embed.cu
// ------------------------------------------------------------------------------------------------------------

#[test]
fn embed_layer_matches_the_cpu_embedding_bit_for_bit() {
    let Some(driver) = driver() else { return };
    // The first layer sets the 7 x 9 grid (no resize); the second is upsampled by 7/4 x 9/5, the third
    // resized by 7/11 x 9/4 (down one way, up the other).
    let shapes = [[2, 5, 7, 9], [2, 6, 4, 5], [2, 3, 11, 4]];
    let mut layers: Vec<Tensor> =
        shapes.iter().enumerate().map(|(i, s)| tensor(s, gaussian(s.iter().product(), 10 + i as u64))).collect();
    // An infinity is where skipping the resize matters (0 * inf is NaN), and the signed zero checks the
    // pooling sum's start.
    layers[0].data[17] = f32::INFINITY;
    layers[1].data[40] = f32::NEG_INFINITY;
    layers[2].data[3] = -0.0;
    let want = CpuBackend::default().embed(&layers.iter().collect::<Vec<_>>()).unwrap();

    // device.rs `embed`: one launch per layer into its columns of the rows.
    let [b, _, gh, gw] = shapes[0];
    let width: usize = shapes.iter().map(|s| s[1]).sum();
    let mut s = Script::new("embed");
    s.alloc("rows", b * gh * gw * width * 4, POISON);
    let mut offset = 0;
    for (i, (layer, &[_, c, h, w])) in layers.iter().zip(&shapes).enumerate() {
        let name = format!("feat{i}");
        s.load_f32(&name, &layer.data);
        let ints = [b, c, h, w, gh, gw, width, offset].map(|v| I32(v as i32));
        let mut args = vec![Buf(&name)];
        args.extend(ints);
        args.push(Buf("rows"));
        s.launch("embed_layer", grid_stride(b * gh * gw * c, GRID_CAP, 0), &args);
        offset += c;
    }
    s.save("rows");
    let got = s.run(driver).f32s("rows");
    assert_same_bits("embed rows", &got, &want.data);
}

// ------------------------------------------------------------------------------------------------------------
// blur.cu
// ------------------------------------------------------------------------------------------------------------

/// device.rs `anomaly_map`: blur_rows then blur_cols, the taps in dynamic shared memory.
fn emulated_anomaly_map(driver: &Path, scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Vec<f32> {
    let [b, h, w] = [scores.shape[0], scores.shape[1], scores.shape[2]];
    let taps = gaussian_taps(sigma);
    let radius = taps.len() / 2;
    assert!(radius <= MAX_BLUR_RADIUS);
    let total = b * out_h * out_w;
    let config = grid_stride(total, GRID_CAP, (taps.len() * 4) as u32);
    let [b, h, w, oh, ow, r] = [b, h, w, out_h, out_w, radius].map(|v| I32(v as i32));
    let mut s = Script::new("blur");
    s.load_f32("grid", &scores.data);
    s.load_f32("taps", &taps);
    s.alloc("tmp", total * 4, POISON);
    s.alloc("out", total * 4, POISON);
    s.launch("blur_rows", config, &[Buf("grid"), b, h, w, oh, ow, Buf("taps"), r, Buf("tmp")]);
    s.launch("blur_cols", config, &[Buf("tmp"), b, oh, ow, Buf("taps"), r, Buf("out")]);
    s.save("out");
    s.run(driver).f32s("out")
}

#[test]
fn blur_matches_the_cpu_anomaly_map_bit_for_bit() {
    let Some(driver) = driver() else { return };
    // Upsampled by 23/5 x 31/7, and a map smaller than the 16-pixel blur radius (reflection wraps around).
    for (shape, out_h, out_w) in [([3, 5, 7], 23, 31), ([1, 3, 2], 10, 7)] {
        let mut scores = tensor(&shape, gaussian(shape.iter().product(), 20).iter().map(|v| v.abs()).collect());
        scores.data[1] = -0.0;
        let want = CpuBackend::default().anomaly_map(&scores, out_h, out_w, 4.0).unwrap();
        let got = emulated_anomaly_map(driver, &scores, out_h, out_w, 4.0);
        assert_same_bits(&format!("anomaly map {shape:?} -> {out_h}x{out_w}"), &got, &want.data);
    }
}

// ------------------------------------------------------------------------------------------------------------
// coreset.cu
// ------------------------------------------------------------------------------------------------------------

/// What an emulated selection leaves on the device.
struct CoresetRun {
    selected: Vec<u32>,
    /// Each row's final d: its distance to the nearest of the start and every selected row.
    min_dist: Vec<f32>,
    /// The rows that took the full-width distance in the last step (coreset_filter's survivors).
    last_candidates: u32,
}

/// device.rs `coreset`: the subspace estimated from the CPU's sample (device.rs gathers those rows on the device
/// and downloads them; here they come straight from the host's copy, the same values), coreset_project and
/// coreset_init, then pick, reach, filter and distance for every selection, back to back.
fn emulated_coreset(driver: &Path, rows: &Tensor, n_select: usize, start: usize, half: bool, sms: usize) -> CoresetRun {
    let [n, d] = rows.dims2().unwrap();
    let rows_config = coreset_config(n, d, sms).unwrap();
    let sample: Vec<f32> = Subspace::sample(n).flat_map(|i| &rows.data[i * d..(i + 1) * d]).copied().collect();
    let subspace = Subspace::estimate(&sample, d);
    let eps = distance_eps(d);
    let factor = prune_factor(eps);
    let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut s = Script::new("coreset");
    s.load_f32("rows", &rows.data);
    s.load("bound", f64s(&[bound_tolerance(eps), subspace.sigma, subspace.slack_per_radius(d)]));
    s.load("mean", f64s(&subspace.mean));
    s.load("basis", f64s(&subspace.basis));
    for (name, bytes) in [("radius_sq", 8), ("far", (n_select + 1) * 8), ("best", 8), ("count", 4)] {
        s.alloc(name, bytes, 0);
    }
    for (name, bytes) in [("proj", n * PROJ * 8), ("min_dist", n * 4), ("owner", n * 4), ("reach", n_select * 4)] {
        s.alloc(name, bytes, POISON);
    }
    s.alloc("candidates", n * 4, POISON);
    s.alloc("selected", n_select * 4, POISON);
    let (suffix, source) = if half {
        s.alloc("rows16", n * d * 2, POISON);
        s.launch("to_f16", grid_stride(n * d, 4096, 0), &[Buf("rows"), Buf("rows16"), I64((n * d) as i64)]);
        ("f16", "rows16")
    } else {
        ("f32", "rows")
    };
    let (n32, d32, start32) = (I32(n as i32), I32(d as i32), U32(start as u32));
    let project = [Buf(source), n32, d32, Buf("mean"), Buf("basis"), Buf("proj"), Buf("radius_sq")];
    s.launch(&format!("coreset_project_{suffix}"), rows_config, &project);
    let init = [Buf(source), n32, d32, start32, Buf("min_dist"), Buf("owner"), Buf("far")];
    s.launch(&format!("coreset_init_{suffix}"), rows_config, &init);
    let bound = [Buf("proj"), Buf("bound"), Buf("radius_sq"), F32(factor)];
    for step in 0..n_select {
        let s32 = I32(step as i32);
        let pick = [Buf("far"), I32(step as i32 + 1), Buf("best"), Buf("count")];
        s.launch("coreset_pick", coreset_scan_config(step + 1, sms), &pick);
        let reach = [Buf(source), d32, start32, s32, Buf("selected"), Buf("best")];
        s.launch(
            &format!("coreset_reach_{suffix}"),
            coreset_config(step + 1, d, sms).unwrap(),
            &[&reach[..], &bound[..], &[Buf("far"), Buf("reach")]].concat(),
        );
        let filter = [n32, s32, Buf("selected"), Buf("owner"), Buf("min_dist"), Buf("reach")];
        let rest = [Buf("far"), Buf("best"), Buf("candidates"), Buf("count")];
        s.launch("coreset_filter", coreset_scan_config(n, sms), &[&filter[..], &bound[..], &rest[..]].concat());
        let distance = [Buf(source), d32, s32, Buf("selected"), Buf("candidates"), Buf("count")];
        let state = [Buf("min_dist"), Buf("owner"), Buf("far")];
        s.launch(&format!("coreset_distance_{suffix}"), rows_config, &[&distance[..], &state[..]].concat());
    }
    for name in ["selected", "min_dist", "count"] {
        s.save(name);
    }
    let out = s.run(driver);
    CoresetRun { selected: out.u32s("selected"), min_dist: out.f32s("min_dist"), last_candidates: out.u32s("count")[0] }
}

/// The textbook loop's min_dist after selecting `selected` from `start`: each row's smallest `l2_distance` to the
/// start and every selected row.
fn cpu_min_dist(rows: &Tensor, start: usize, selected: &[u32]) -> Vec<f32> {
    let [n, d] = rows.dims2().unwrap();
    let row = |i: usize| &rows.data[i * d..(i + 1) * d];
    let centres: Vec<usize> = std::iter::once(start).chain(selected.iter().map(|&c| c as usize)).collect();
    (0..n).map(|i| centres.iter().map(|&c| l2_distance(row(i), row(c))).fold(f32::INFINITY, f32::min)).collect()
}

#[test]
fn coreset_f32_selection_equals_the_cpu_selection() {
    let Some(driver) = driver() else { return };
    let mut rng = SplitMix64::new(30);
    // Few distinct rows of small integers: once they are all selected every distance is 0, and before
    // that many distances tie exactly, so the order rests on "ties go to the lower index".
    let base: Vec<f32> = (0..30 * 33).map(|_| rng.below(5) as f32 - 2.0).collect();
    let duplicates: Vec<f32> =
        (0..1200).flat_map(|_| base.chunks(33).nth(rng.below(30) as usize).unwrap()).copied().collect();
    let cases = [
        // d = 50: three full 16-element chunks per lane sum and a partial one; 32 blocks of ~4 grid-stride steps.
        ("gaussian", tensor(&[2000, 50], gaussian(2000 * 50, 31)), 100, 1234, SMALL_GPU_SMS),
        ("duplicates", tensor(&[1200, 33], duplicates), 60, 7, H200_SMS),
        // Wider than the 2048 floats coreset.cu stages in shared memory: the centre is read from global memory.
        ("wide", tensor(&[201, 2100], gaussian(201 * 2100, 32)), 12, 150, 4),
        // 263 blocks: more blocks than rows per block in the scan kernels.
        ("many blocks", tensor(&[4201, 20], gaussian(4201 * 20, 34)), 30, 4200, H200_SMS),
        // Where the bounds prune: clusters ruled out whole, rows ruled out by the projection.
        ("clustered", tensor(&[3000, 40], clustered(3000, 40, 12, 35)), 150, 5, SMALL_GPU_SMS),
    ];
    for (what, rows, n_select, start, sms) in cases {
        let started = Instant::now();
        let want = CpuBackend::default().coreset(&rows, n_select, start).unwrap();
        let run = emulated_coreset(driver, &rows, n_select, start, false, sms);
        assert_eq!(run.selected, want, "{what}: the pruned coreset kernels vs CpuBackend::coreset");
        // The distances behind the selection, bit for bit (a selection can survive a rounding difference).
        assert_same_bits(&format!("{what}: min_dist"), &run.min_dist, &cpu_min_dist(&rows, start, &want));
        println!(
            "coreset {what} {:?}: {n_select} steps equal, {} full distances in the last, in {:.1} s",
            rows.shape,
            run.last_candidates,
            started.elapsed().as_secs_f64()
        );
    }
}

/// The pruning is real: on clustered rows, the last selection computes full-width distances for a small
/// fraction of the rows (the textbook loop: all of them).
#[test]
fn coreset_prunes_most_rows_on_clustered_data() {
    let Some(driver) = driver() else { return };
    let rows = tensor(&[3000, 40], clustered(3000, 40, 12, 36));
    let run = emulated_coreset(driver, &rows, 150, 0, false, SMALL_GPU_SMS);
    assert_eq!(run.selected, CpuBackend::default().coreset(&rows, 150, 0).unwrap());
    println!("coreset clustered: {} of 3000 rows took the full distance in the last step", run.last_candidates);
    assert!(run.last_candidates > 0, "the new centre itself always takes a full distance");
    // Either bound alone leaves more: without the row-level projection test about 200 rows here.
    assert!(run.last_candidates < 3000 / 50, "{} of 3000 rows took the full distance", run.last_candidates);
}

#[test]
fn coreset_f16_covers_within_ten_percent_of_the_f32_selection() {
    let Some(driver) = driver() else { return };
    // Offset by 16, where f16 steps are 1/64: the f16 rows round visibly and the selection departs from f32's.
    let rows = tensor(&[2000, 50], gaussian(2000 * 50, 33).iter().map(|v| 16.0 + v).collect());
    let exact = CpuBackend::default().coreset(&rows, 100, 99).unwrap();
    let half = emulated_coreset(driver, &rows, 100, 99, true, SMALL_GPU_SMS).selected;
    let mut sorted = half.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), half.len(), "every row selected once");
    let (r_half, r_exact) = (covering_radius(&rows, &half), covering_radius(&rows, &exact));
    let same = half.iter().zip(&exact).filter(|(a, b)| a == b).count();
    println!("coreset f16 covering radius {r_half} vs f32 {r_exact}, {same} of 100 selections equal");
    assert!((r_half / r_exact - 1.0).abs() <= 0.10, "covering radius {r_half} vs f32 selection {r_exact}");
}

// ------------------------------------------------------------------------------------------------------------
// knn.cu
// ------------------------------------------------------------------------------------------------------------

/// A value as the distance products of precision `p` see it: tf32 (cvt.rna: 10 mantissa bits, ties away
/// from zero) or f16 (round to nearest even) operands, written here from the formats' definitions.
fn seen(v: f32, p: Precision) -> f32 {
    match p {
        Precision::F32 => v,
        Precision::Tf32 if v.is_finite() => f32::from_bits((v.to_bits() + 0x1000) & 0xFFFF_E000),
        Precision::Tf32 => v,
        Precision::F16 => f16::from_f32(v).to_f32(),
        Precision::Bf16 => panic!("bf16 is a CPU precision, not a CUDA kernel's"),
    }
}

/// device.rs `prepare_bank` + `knn`: query and bank norms on the device, of the rows as the precision's
/// products see them, queries and bank converted on the device for f16, the partial top-k over the split
/// bank, the merge. The device's norms and f16 rows must equal the host's (`squared_norms` of the rounded
/// rows, `f16::from_f32`) bit for bit.
fn emulated_knn(driver: &Path, q: &[f32], bank: &[f32], d: usize, k: usize, p: Precision, sms: usize) -> DistRows {
    let (nq, m) = (q.len() / d, bank.len() / d);
    // 4 resident blocks per SM (a real GPU's figure comes from the occupancy API): what matters here is
    // that the bank splits raggedly.
    let plan = knn_plan(nq, m, d, k, 4 * sms).unwrap();
    let int = |v: usize| I32(v as i32);
    let precision = match p {
        Precision::F32 => "f32",
        Precision::Tf32 => "tf32",
        Precision::F16 => "f16",
        Precision::Bf16 => panic!("bf16 is a CPU precision, not a CUDA kernel's"),
    };
    let norms = format!("squared_norms_{precision}");
    let mut s = Script::new("knn");
    s.load_f32("q", q);
    s.load_f32("bank32", bank);
    s.alloc("q_norms", nq * 4, POISON);
    s.alloc("bank_norms", m * 4, POISON);
    s.launch(&norms, norms_config(nq), &[Buf("q"), int(nq), int(d), Buf("q_norms")]);
    s.launch(&norms, norms_config(m), &[Buf("bank32"), int(m), int(d), Buf("bank_norms")]);
    let (queries, bank_rows) = if p == Precision::F16 {
        s.alloc("q16", nq * d * 2, POISON);
        s.alloc("bank16", m * d * 2, POISON);
        s.launch("to_f16", grid_stride(nq * d, 4096, 0), &[Buf("q"), Buf("q16"), I64((nq * d) as i64)]);
        s.launch("to_f16", grid_stride(m * d, 4096, 0), &[Buf("bank32"), Buf("bank16"), I64((m * d) as i64)]);
        ("q16", "bank16")
    } else {
        ("q", "bank32")
    };
    let kernel = format!("knn_partial_{precision}_{}", if k == 1 { "k1" } else { "k16" });
    // An unwritten candidate slot would read as (0, 0), a perfect match with bank row 0 that the merge keeps.
    s.alloc("cand_d", nq * plan.per_query * 4, 0);
    s.alloc("cand_i", nq * plan.per_query * 4, 0);
    let (cand_d, cand_i) = (Buf("cand_d"), Buf("cand_i"));
    let args = [Buf(queries), Buf("q_norms"), int(nq), Buf(bank_rows), Buf("bank_norms")];
    s.launch(&kernel, plan.partial, &[&args[..], &[int(m), int(d), int(k), int(plan.chunk), cand_d, cand_i]].concat());
    s.alloc("out_d", nq * k * 4, POISON);
    s.alloc("out_i", nq * k * 4, POISON);
    let args = [cand_d, cand_i, int(nq), int(plan.per_query), int(k), Buf("out_d"), Buf("out_i")];
    s.launch("knn_merge", plan.merge, &args);
    s.save("out_d");
    s.save("out_i");
    s.save("q_norms");
    s.save("bank_norms");
    if p == Precision::F16 {
        s.save("q16");
        s.save("bank16");
    }
    let out = s.run(driver);
    for (rows, name) in [(q, "q"), (bank, "bank")] {
        let rounded: Vec<f32> = rows.iter().map(|&v| seen(v, p)).collect();
        assert_same_bits(
            &format!("{norms} of {name}"),
            &out.f32s(&format!("{name}_norms")),
            &squared_norms(&rounded, d),
        );
        if p == Precision::F16 {
            let want: Vec<u8> = rows.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            assert!(out.0[&format!("{name}16")] == want, "to_f16 of {name} differs from f16::from_f32");
        }
    }
    (out.f32s("out_d"), out.u32s("out_i"))
}

/// The exact (f64) distance between query row `qi` and bank row `bi`.
fn true_distance(q: &[f32], bank: &[f32], d: usize, qi: usize, bi: usize) -> f64 {
    let (a, b) = (&q[qi * d..(qi + 1) * d], &bank[bi * d..(bi + 1) * d]);
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

/// The emulated search against the CPU's, to `tol` relative to the largest distance: the distances; each
/// returned row's true distance; and the rows themselves, which may differ from the CPU's only where the two
/// are tied at that tolerance. Returns how many such near-ties changed places.
fn check_knn(what: &str, q: &[f32], bank: &[f32], d: usize, got: &DistRows, want: &DistRows, tol: f64) -> usize {
    let k = got.0.len() / (q.len() / d);
    let e = rel_err(&got.0, &want.0);
    assert!(e <= tol, "{what}: distances differ from the CPU's by {e:.2e} (relative), more than {tol:e}");
    let scale = want.0.iter().fold(0.0f64, |m, &v| m.max(v as f64));
    let mut swapped = 0;
    for (qi, ((gd, gi), wi)) in got.0.chunks(k).zip(got.1.chunks(k)).zip(want.1.chunks(k)).enumerate() {
        for j in 0..k {
            let (g, w) = (gi[j] as usize, wi[j] as usize);
            if want.0[qi * k + j].is_nan() {
                assert!(gd[j].is_nan() && g == w, "{what}: query {qi} slot {j}: ({}, {g}), CPU (NaN, {w})", gd[j]);
                continue;
            }
            assert!(g < bank.len() / d && !gi[..j].contains(&gi[j]), "{what}: query {qi} slot {j} holds row {g}");
            let t = true_distance(q, bank, d, qi, g);
            assert!((t - gd[j] as f64).abs() <= tol * scale, "{what}: query {qi} row {g}: {} vs true {t}", gd[j]);
            if g != w {
                let tw = true_distance(q, bank, d, qi, w);
                assert!(
                    (t - tw).abs() <= tol * scale,
                    "{what}: query {qi} slot {j}: row {g} ({t}) vs CPU's {w} ({tw})"
                );
                swapped += 1;
            }
        }
    }
    swapped
}

const PRECISIONS: [(Precision, f64); 3] = [(Precision::F32, 1e-5), (Precision::Tf32, 5e-3), (Precision::F16, 5e-3)];

#[test]
fn knn_matches_the_cpu_search_in_every_precision() {
    let Some(driver) = driver() else { return };
    // Ragged: 300 queries are 4 blocks of 64 and one of 44, and the 1000-row bank is split into 6 chunks of
    // 192 rows (the last one 40) on the small GPU. d = 100 takes the 16-byte staging loads in f32/tf32 and
    // the scalar ones in f16 (100 is not a multiple of 8 halves); d = 37 the scalar ones everywhere.
    let cases = [(300, 1000, 100, [1, 9, 16]), (130, 450, 37, [1, 9, 16])];
    for (nq, m, d, ks) in cases {
        let mut q = gaussian(nq * d, 50);
        let mut bank = gaussian(m * d, 51);
        // A NaN distance never ranks: bank row 5 is never found, and query 7 finds nothing ((NaN, 0) slots).
        bank[5 * d + 3] = f32::NAN;
        q[7 * d] = f32::NAN;
        let cpu_bank = CpuBackend::default().prepare_bank(tensor(&[m, d], bank.clone())).unwrap();
        for k in ks {
            let want = CpuBackend::default().knn(&tensor(&[nq, d], q.clone()), &cpu_bank, k).unwrap();
            for (p, tol) in PRECISIONS {
                let started = Instant::now();
                let got = emulated_knn(driver, &q, &bank, d, k, p, SMALL_GPU_SMS);
                let what = format!("knn {p:?} {nq}x{m}x{d} k={k}");
                let swapped = check_knn(&what, &q, &bank, d, &got, &want, tol);
                println!("{what}: {swapped} near-ties swapped, {:.1} s", started.elapsed().as_secs_f64());
            }
        }
    }
}

#[test]
fn knn_breaks_exact_ties_as_the_cpu_in_every_precision() {
    let Some(driver) = driver() else { return };
    // Small integers are exact in tf32 and f16 and every dot product is an exact integer, so each precision
    // computes the CPU's distances exactly, and with duplicated bank rows and few distinct values many of them
    // tie: the rows returned must be the CPU's exactly (ties to the lower index, across lists and splits).
    let (nq, m) = (130, 700);
    let mut rng = SplitMix64::new(60);
    for d in [37, 64] {
        let q: Vec<f32> = (0..nq * d).map(|_| rng.below(5) as f32 - 2.0).collect();
        let mut bank: Vec<f32> = (0..m * d).map(|_| rng.below(5) as f32 - 2.0).collect();
        for j in (0..m - 200).step_by(7) {
            bank.copy_within(j * d..(j + 1) * d, (j + 131) * d); // the same row in another split and list
        }
        let cpu_bank = CpuBackend::default().prepare_bank(tensor(&[m, d], bank.clone())).unwrap();
        for k in [1, 16] {
            let want = CpuBackend::default().knn(&tensor(&[nq, d], q.clone()), &cpu_bank, k).unwrap();
            for (p, _) in PRECISIONS {
                let got = emulated_knn(driver, &q, &bank, d, k, p, H200_SMS);
                assert_same_bits(&format!("knn {p:?} ties d={d} k={k} distances"), &got.0, &want.0);
                assert_eq!(got.1, want.1, "knn {p:?} ties d={d} k={k}: rows");
            }
        }
    }
}

#[test]
fn knn_merges_lists_and_splits_as_the_cpu_where_the_best_rows_crowd_one_list() {
    let Some(driver) = driver() else { return };
    // Integers again (exact in every precision, so distances must match the CPU's bits and rows exactly). The
    // queries lie in [-2, 2]^d and the bank's "far" rows in [8, 12]^d; the 16 rows 1, 5, ..., 61 lie in
    // [-1, 1]^d, nearer than any far row: every query's 16 best are in list 1 of split 0, which the in-block
    // merge must take whole. Row 9 repeats row 5 (a tie inside that list). 131 queries: two full blocks of 64
    // and one of 3, and not a whole number of merge blocks.
    let (nq, m, d) = (131, 760, 12);
    let mut rng = SplitMix64::new(80);
    let mut int_in = |lo: i64, hi: i64| lo as f32 + rng.below((hi - lo + 1) as u64) as f32;
    let q: Vec<f32> = (0..nq * d).map(|_| int_in(-2, 2)).collect();
    let mut bank: Vec<f32> = (0..m * d).map(|_| int_in(8, 12)).collect();
    for row in (1..KNN_TILE).step_by(KNN_LISTS) {
        bank[row * d..(row + 1) * d].iter_mut().for_each(|v| *v = int_in(-1, 1));
    }
    bank.copy_within(5 * d..6 * d, 9 * d);
    let cpu_bank = CpuBackend::default().prepare_bank(tensor(&[m, d], bank.clone())).unwrap();
    for (k, sms) in [(16, SMALL_GPU_SMS), (9, H200_SMS), (1, SMALL_GPU_SMS)] {
        let splits = knn_plan(nq, m, d, k, 4 * sms).unwrap().splits;
        assert!(splits > 1, "k={k}: the bank must split for this test, not {splits} way");
        let want = CpuBackend::default().knn(&tensor(&[nq, d], q.clone()), &cpu_bank, k).unwrap();
        assert!(want.1.iter().all(|&r| r % 4 == 1 && (r as usize) < KNN_TILE), "the CPU's rows crowd list 1");
        for (p, _) in PRECISIONS {
            let got = emulated_knn(driver, &q, &bank, d, k, p, sms);
            assert_same_bits(&format!("knn {p:?} one list k={k} distances"), &got.0, &want.0);
            assert_eq!(got.1, want.1, "knn {p:?} one list k={k} ({splits} splits): rows");
        }
    }
}

#[test]
fn knn_leaves_the_slots_it_cannot_fill_as_the_cpu() {
    let Some(driver) = driver() else { return };
    // A bank of NaN rows but 5 (a NaN distance never ranks), spread over the 3 splits and several lists, with
    // ties: rows 64 and 65 are equal (two lists of one split), and 129 equals 3 (two splits). k = 9 and 16 leave
    // 4 and 11 slots (NaN, 0), as on the CPU; query 7 is NaN itself and finds nothing.
    let (nq, m, d) = (70, 130, 20);
    let mut rng = SplitMix64::new(81);
    let mut q: Vec<f32> = (0..nq * d).map(|_| rng.below(5) as f32 - 2.0).collect();
    q[7 * d + 4] = f32::NAN;
    let mut bank = vec![f32::NAN; m * d];
    for row in [3, 64, 100] {
        bank[row * d..(row + 1) * d].iter_mut().for_each(|v| *v = rng.below(5) as f32 - 2.0);
    }
    bank.copy_within(64 * d..65 * d, 65 * d);
    bank.copy_within(3 * d..4 * d, 129 * d);
    let cpu_bank = CpuBackend::default().prepare_bank(tensor(&[m, d], bank.clone())).unwrap();
    for k in [9, 16] {
        assert_eq!(knn_plan(nq, m, d, k, 4 * SMALL_GPU_SMS).unwrap().splits, m.div_ceil(KNN_TILE));
        let want = CpuBackend::default().knn(&tensor(&[nq, d], q.clone()), &cpu_bank, k).unwrap();
        assert_eq!(want.0.iter().filter(|v| v.is_nan()).count(), (nq - 1) * (k - 5) + k, "the CPU's empty slots");
        for (p, _) in PRECISIONS {
            let got = emulated_knn(driver, &q, &bank, d, k, p, SMALL_GPU_SMS);
            assert_same_bits(&format!("knn {p:?} unfilled k={k} distances"), &got.0, &want.0);
            assert_eq!(got.1, want.1, "knn {p:?} unfilled k={k}: rows");
        }
    }
}

/// `knn_merge` alone, on candidates the partial kernels never write but its contract allows: finite
/// distances with index 0xFFFFFFFF, NaN and +inf, in no order, per_query neither a multiple of 32 nor of 4,
/// and 6 queries (a merge block of 4 warps and a half-idle one).
/// The reference: the valid candidates sorted by (squared distance, index), the first k square-rooted.
#[test]
fn knn_merge_takes_the_best_valid_candidates_whichever_lane_holds_them() {
    let Some(driver) = driver() else { return };
    let (nq, per_query) = (6, 530);
    let mut rng = SplitMix64::new(82);
    let mut cand_d = Vec::with_capacity(nq * per_query);
    let mut cand_i = Vec::with_capacity(nq * per_query);
    for qi in 0..nq {
        // Distinct indices per query, in random order; distances from 5 values, so ties abound.
        let mut idx: Vec<u32> = (0..per_query as u32).map(|i| i * 7 + qi as u32).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (c, &i) in idx.iter().enumerate() {
            let sq = match rng.below(10) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                v => (v % 5) as f32 * 0.25,
            };
            // Query 2's 17 best (tied at 0) are all lane 3's (candidates 3, 35, ..., 515), so for k = 16 the
            // warp takes every result from one lane; query 4 has 3 valid candidates only; a finite distance
            // with no index is never a result.
            let sq = match qi {
                2 if c % 32 == 3 => 0.0,
                2 => sq + 1.0,
                4 if c < 3 => c as f32 * 0.5,
                4 => f32::NAN,
                _ => sq,
            };
            let (sq, i) = if c == 10 { (0.0, u32::MAX) } else { (sq, i) };
            cand_d.push(sq);
            cand_i.push(i);
        }
    }
    for k in [1, 9, 16] {
        let mut s = Script::new("knn_merge");
        s.load_f32("cand_d", &cand_d);
        s.load("cand_i", u32_bytes(&cand_i));
        s.alloc("out_d", nq * k * 4, POISON);
        s.alloc("out_i", nq * k * 4, POISON);
        let plan = knn_plan(nq, 1000, 8, k, 1).unwrap(); // the merge's launch as the host computes it
        let args = [Buf("cand_d"), Buf("cand_i"), I32(nq as i32), I32(per_query as i32), I32(k as i32)];
        s.launch("knn_merge", plan.merge, &[&args[..], &[Buf("out_d"), Buf("out_i")]].concat());
        s.save("out_d");
        s.save("out_i");
        let out = s.run(driver);
        let (got_d, got_i) = (out.f32s("out_d"), out.u32s("out_i"));
        for qi in 0..nq {
            let range = qi * per_query..(qi + 1) * per_query;
            let mut valid: Vec<(f32, u32)> = cand_d[range.clone()]
                .iter()
                .zip(&cand_i[range])
                .filter(|&(&sq, &i)| sq < f32::INFINITY && i != u32::MAX)
                .map(|(&sq, &i)| (sq, i))
                .collect();
            valid.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut want_d: Vec<f32> = valid.iter().take(k).map(|&(sq, _)| sq.sqrt()).collect();
            let mut want_i: Vec<u32> = valid.iter().take(k).map(|&(_, i)| i).collect();
            want_d.resize(k, f32::NAN);
            want_i.resize(k, 0);
            let slots = qi * k..(qi + 1) * k;
            assert_same_bits(&format!("knn_merge k={k} query {qi} distances"), &got_d[slots.clone()], &want_d);
            assert_eq!(got_i[slots], want_i, "knn_merge k={k} query {qi}: rows");
        }
    }
}

/// A query equal to a bank row is at distance ~0 in every precision (issue 11): the norms come from the rows
/// as the products see them. With norms of the unrounded rows, TF32 and f16 gave 0.1-0.6 here.
#[test]
fn knn_finds_a_row_at_distance_zero_from_itself_in_every_precision() {
    let Some(driver) = driver() else { return };
    let (m, d) = (200, 384);
    // |q| about 0.4, where f32's own cancellation error in |q|^2 - 2 q.b + |b|^2 (about 4e-4 in distance,
    // as on the CPU) stays under the bound, while the unrounded norms' bias (|q| 2^-6, about 6e-3) does not.
    let bank: Vec<f32> = gaussian(m * d, 70).into_iter().map(|v| v * 0.02).collect();
    let picks = [0usize, 17, 63, 64, 199];
    let q: Vec<f32> = picks.iter().flat_map(|&r| bank[r * d..(r + 1) * d].to_vec()).collect();
    for (p, _) in PRECISIONS {
        let (dist, rows) = emulated_knn(driver, &q, &bank, d, 1, p, SMALL_GPU_SMS);
        for (i, &r) in picks.iter().enumerate() {
            assert_eq!(rows[i] as usize, r, "{p:?}: query {i} (bank row {r}) found row {}", rows[i]);
            assert!(dist[i] <= 1e-3, "{p:?}: bank row {r} is at distance {} from itself", dist[i]);
        }
        println!("knn {p:?}: self-distances {dist:?}");
    }
}

// ------------------------------------------------------------------------------------------------------------
// conv.cu
// ------------------------------------------------------------------------------------------------------------

#[test]
fn conv_epilogue_and_padding_match_a_reference() {
    let Some(driver) = driver() else { return };
    let (b, c, hw) = (2, 3, 35);
    let n = b * c * hw;
    // Spread over the ReLU6 range, with the values whose handling differs between activations.
    let mut y: Vec<f32> = gaussian(n, 70).iter().map(|v| 4.0 * v).collect();
    y[..7].copy_from_slice(&[f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, 6.0, -1e-30, 0.0]);
    let bias = gaussian(c, 71);
    let residual = gaussian(n, 72);
    // kernels/conv.cu's contract, as the CPU's conv epilogue: act((y + bias) + residual), 0.0 without one.
    let reference = |i: usize, act: i32, with_residual: bool| {
        let v = y[i] + bias[i / hw % c] + if with_residual { residual[i] } else { 0.0 };
        match act {
            0 => v,
            1 => v.max(0.0),
            _ => v.clamp(0.0, 6.0),
        }
    };
    // TF-same 3x3 stride 2 on 9 x 10 pads one pixel bottom/right only: the case that needs pad_nchw.
    let spec = ConvSpec {
        in_channels: c,
        out_channels: c,
        kernel: 3,
        stride: 2,
        padding: Padding::TfSame,
        groups: 1,
        activation: Activation::Relu,
    };
    let (h, w) = (9, 10);
    let pad = conv_plan(&spec, [b, c, h, w]).explicit.expect("an asymmetric padding");
    let x = gaussian(b * c * h * w, 73);

    let mut s = Script::new("conv");
    s.load_f32("bias", &bias);
    s.load_f32("residual", &residual);
    let cases: Vec<(i32, bool)> = (0..3).flat_map(|act| [(act, false), (act, true)]).collect();
    for &(act, with_residual) in &cases {
        let name = format!("y{act}{with_residual}");
        s.load_f32(&name, &y);
        let res = if with_residual { Buf("residual") } else { Null };
        let args = [Buf(&name), Buf("bias"), res, I32(b as i32), I32(c as i32), I32(hw as i32), I32(act)];
        s.launch("bias_act", grid_stride(n, GRID_CAP, 0), &args);
        s.save(&name);
    }
    s.load_f32("x", &x);
    let total = b * c * pad.height * pad.width;
    s.alloc("padded", total * 4, POISON);
    let dims = [b * c, h, w, pad.top, pad.left, pad.height, pad.width].map(|v| I32(v as i32));
    s.launch("pad_nchw", grid_stride(total, GRID_CAP, 0), &[&[Buf("x")], &dims[..], &[Buf("padded")]].concat());
    s.save("padded");
    let out = s.run(driver);

    for &(act, with_residual) in &cases {
        let want: Vec<f32> = (0..n).map(|i| reference(i, act, with_residual)).collect();
        let what = format!("bias_act act={act} residual={with_residual}");
        assert_same_bits(&what, &out.f32s(&format!("y{act}{with_residual}")), &want);
    }
    let want: Vec<f32> = (0..total)
        .map(|i| {
            let (plane, yy, xx) = (i / (pad.height * pad.width), i / pad.width % pad.height, i % pad.width);
            let (sy, sx) = (yy.wrapping_sub(pad.top), xx.wrapping_sub(pad.left));
            if sy < h && sx < w {
                x[(plane * h + sy) * w + sx]
            } else {
                0.0
            }
        })
        .collect();
    assert_same_bits("pad_nchw", &out.f32s("padded"), &want);
}

// ------------------------------------------------------------------------------------------------------------
// preprocess.cu
// ------------------------------------------------------------------------------------------------------------

/// device.rs `preprocess`: the images' pixels packed into one buffer, then per run of same-size images its
/// four tables, preprocess_rows into a scratch buffer and preprocess_cols into the run's images of the batch.
fn emulated_preprocess(driver: &Path, images: &[image::RgbImage], pre: &Preprocess) -> Vec<f32> {
    let sizes: Vec<(u32, u32)> = images.iter().map(image::RgbImage::dimensions).collect();
    let runs = preprocess_runs(&sizes, pre).unwrap();
    let side = pre.input_size();
    let int = |v: usize| I32(v as i32);
    let mut s = Script::new("preprocess");
    s.load("pixels", images.iter().flat_map(|img| img.as_raw().iter().copied()).collect());
    s.alloc("out", images.len() * 3 * side * side * 4, POISON);
    for (i, run) in runs.iter().enumerate() {
        let [col_starts, col_weights, row_starts, row_weights, tmp] =
            ["col_starts", "col_weights", "row_starts", "row_weights", "tmp"].map(|name| format!("{name}{i}"));
        s.load(&col_starts, run.cols.starts.iter().flat_map(|v| v.to_le_bytes()).collect());
        s.load_f32(&col_weights, &run.cols.weights);
        s.load(&row_starts, run.rows.starts.iter().flat_map(|v| v.to_le_bytes()).collect());
        s.load_f32(&row_weights, &run.rows.weights);
        s.alloc(&tmp, run.images * 3 * run.height * side * 4, POISON);
        let (images, h, w) = (int(run.images), int(run.height), int(run.width));
        let args = [Buf("pixels"), I64(run.pixel_offset as i64), images, h, w, int(side)];
        let table = [Buf(&col_starts), Buf(&col_weights), int(run.cols.taps), Buf(&tmp)];
        s.launch("preprocess_rows", run.horizontal, &[&args[..], &table[..]].concat());
        let args =
            [Buf(&tmp), images, h, int(side), int(side), Buf(&row_starts), Buf(&row_weights), int(run.rows.taps)];
        let normalise: Vec<Arg> = pre.mean.iter().chain(&pre.std).map(|&v| F32(v)).collect();
        let out = [int(run.first), Buf("out")];
        s.launch("preprocess_cols", run.vertical, &[&args[..], &normalise[..], &out[..]].concat());
    }
    s.save("out");
    s.run(driver).f32s("out")
}

fn noise_image(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let mut rng = SplitMix64::new(seed);
    image::RgbImage::from_fn(width, height, |_, _| image::Rgb(std::array::from_fn(|_| rng.below(256) as u8)))
}

/// Bit for bit, which is more than the 1e-4 (max abs) the GPU is held to in tests/backends.rs: the kernels round
/// every step as the CPU does (kernels/preprocess.cu), and the weights are the CPU's own.
#[test]
fn preprocess_matches_the_cpu_preprocessing_bit_for_bit() {
    let Some(driver) = driver() else { return };
    let imagenet = |resize, crop| Preprocess::new(resize, crop, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).unwrap();
    let (wide, tall, small) = (noise_image(97, 61, 80), noise_image(45, 71, 81), noise_image(23, 29, 82));
    let cases = [
        // Downscale, non-square: 97 -> 40 and 61 -> 40, spans of 4-5 and 2-4 taps (the short ones at the borders).
        ("downscale", vec![wide.clone()], imagenet(40, None)),
        // Upscale (23 -> 50, 29 -> 50: 1-2 taps) with a crop whose offset (50 - 33) / 2 = 8.5 rounds to even, 8.
        ("upscale, crop", vec![small], imagenet(50, Some(33))),
        // Up one way (45 -> 64), down the other (71 -> 64), cropped.
        ("up and down, crop", vec![tall.clone()], imagenet(64, Some(48))),
        // Two sizes in three runs (wide, wide | tall | wide): each run writes only its own images.
        ("two sizes", vec![wide.clone(), wide.clone(), tall, wide], imagenet(56, Some(41))),
    ];
    for (what, images, pre) in cases {
        let want = pre.batch(&images);
        let got = emulated_preprocess(driver, &images, &pre);
        assert_same_bits(&format!("preprocess {what}"), &got, &want.data);
    }
}

// ------------------------------------------------------------------------------------------------------------
// score.cu
// ------------------------------------------------------------------------------------------------------------

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// What the score.cu kernels wrote, each per image (m* rows: images x d).
struct EmulatedScore {
    top_rows: Vec<u32>,
    m_star: Vec<u32>,
    max_distance: Vec<f32>,
    m_star_rows: Vec<f32>,
    scores: Vec<f32>,
}

/// device.rs `score` after the patch search: top_patch over the search's (distances, nearest rows), then
/// gather_rows of each image's m* from the bank and eq7_scores with the support rows `support` (b x k, the
/// search from m*, here the CPU's).
fn emulated_score(
    driver: &Path,
    search: &DistRows,
    per_image: usize,
    embedding: &Tensor,
    bank: &Tensor,
    support: &[u32],
) -> EmulatedScore {
    let (images, [_, d]) = (search.0.len() / per_image, bank.dims2().unwrap());
    let k = support.len() / images;
    let int = |v: usize| I32(v as i32);
    let mut s = Script::new("score");
    s.load_f32("distances", &search.0);
    s.load("nearest", u32_bytes(&search.1));
    s.load_f32("embedding", &embedding.data);
    s.load_f32("bank", &bank.data);
    s.load("support", u32_bytes(support));
    for (name, len) in [("top_rows", images), ("m_star", images), ("max_distance", images), ("scores", images)] {
        s.alloc(name, len * 4, POISON);
    }
    s.alloc("m_star_rows", images * d * 4, POISON);
    let out = ["top_rows", "m_star", "max_distance"].map(Buf);
    let args = [Buf("distances"), Buf("nearest"), int(images), int(per_image)];
    s.launch("top_patch", one_block_per_image(images), &[&args[..], &out[..]].concat());
    let args = [Buf("bank"), Buf("m_star"), int(images), int(d), Buf("m_star_rows")];
    s.launch("gather_rows", grid_stride(images * d, GRID_CAP, 0), &args);
    let support = if k > 1 { Buf("support") } else { Null };
    let args = [Buf("embedding"), Buf("top_rows"), Buf("bank"), support, Buf("max_distance")];
    let sizes = [int(images), int(d), int(k), Buf("scores")];
    s.launch("eq7_scores", one_block_per_image(images), &[&args[..], &sizes[..]].concat());
    for name in ["top_rows", "m_star", "max_distance", "m_star_rows", "scores"] {
        s.save(name);
    }
    let out = s.run(driver);
    EmulatedScore {
        top_rows: out.u32s("top_rows"),
        m_star: out.u32s("m_star"),
        max_distance: out.f32s("max_distance"),
        m_star_rows: out.f32s("m_star_rows"),
        scores: out.f32s("scores"),
    }
}

#[test]
fn top_patch_takes_the_first_maximum_and_never_a_nan_as_the_cpu() {
    let Some(driver) = driver() else { return };
    // 600 patches an image: each of the 256 threads scans two or three, so ties meet inside a thread's scan
    // and across the reduction tree.
    let per_image = 600;
    let mut distances: Vec<f32> = gaussian(5 * per_image, 90).iter().map(|v| v.abs()).collect();
    let image = |i: usize| i * per_image;
    // Image 0: the maximum three times, the first of them in the scan of a later thread than the others.
    for p in [300, 45, 557] {
        distances[image(0) + p] = 9.0;
    }
    distances[image(0) + 300 - 256] = 9.0; // thread 44, before patch 45
                                           // Image 1: NaNs, the first patch among them, around a maximum.
    for p in [0, 1, 200, 599] {
        distances[image(1) + p] = f32::NAN;
    }
    distances[image(1) + 201] = 7.0;
    // Image 2: NaNs only (its first patch); image 3: one value everywhere (the first patch); image 4: a maximum
    // at the last patch.
    distances[image(2)..image(3)].fill(f32::NAN);
    distances[image(3)..image(4)].fill(0.25);
    distances[image(4) + per_image - 1] = 8.0;
    let mut rng = SplitMix64::new(91);
    let nearest: Vec<u32> = (0..distances.len()).map(|_| rng.below(40) as u32).collect();
    let bank = tensor(&[40, 3], gaussian(120, 92));
    let embedding = tensor(&[5 * per_image, 3], gaussian(5 * per_image * 3, 93));
    let got = emulated_score(driver, &(distances.clone(), nearest.clone()), per_image, &embedding, &bank, &[0; 5]);
    let want = top_patches(&distances, per_image);
    assert_eq!(want, [44, 601 + 200, 1200, 1800, 2999].map(|v| v as u32), "the CPU's rule itself");
    assert_eq!(got.top_rows, want);
    assert_eq!(got.m_star, want.iter().map(|&r| nearest[r as usize]).collect::<Vec<_>>());
    let maxima: Vec<f32> = want.iter().map(|&r| distances[r as usize]).collect();
    assert_same_bits("max_distance", &got.max_distance, &maxima);
    // One neighbour: the score is the plain maximum.
    assert_same_bits("k = 1 scores", &got.scores, &maxima);
}

/// Eq. 7 at a scale where the softmax weight is far from 1 (tests/reference.rs `image_score_scaled`): the
/// support distances are then close to each other and the score rests on their differences. The whole chain
/// after the searches: top_patch -> gather_rows of m* (bit for bit) -> eq7_scores, against the CPU's
/// `Backend::score`.
#[test]
fn eq7_scores_match_the_cpu_where_the_weight_is_far_from_one() {
    let Some(driver) = driver() else { return };
    let (images, per_image, m, d, k) = (3, 70, 500, 64, 9);
    let scaled = |n: usize, seed: u64| gaussian(n, seed).into_iter().map(|v| v / 16.0).collect::<Vec<f32>>();
    let embedding = tensor(&[images * per_image, d], scaled(images * per_image * d, 94));
    let bank_rows = tensor(&[m, d], scaled(m * d, 95));
    let bank = CpuBackend::default().prepare_bank(bank_rows.clone()).unwrap();
    let search = CpuBackend::default().knn(&embedding, &bank, 1).unwrap();
    let tops = top_patches(&search.0, per_image);
    let m_star: Vec<u32> = tops.iter().map(|&r| search.1[r as usize]).collect();
    let m_star_rows = bank_rows.gather_rows(&m_star).unwrap();
    let (_, support) = CpuBackend::default().knn(&m_star_rows, &bank, k).unwrap();
    let got = emulated_score(driver, &search, per_image, &embedding, &bank_rows, &support);
    assert_eq!((got.top_rows, got.m_star), (tops.clone(), m_star));
    assert_same_bits("m* rows", &got.m_star_rows, &m_star_rows.data);
    let want = CpuBackend::default().score(&embedding, &bank, [7, 10], k, [7, 10], 4.0).unwrap();
    let weights: Vec<f32> = want.scores.iter().zip(&want.max_patch_distances).map(|(s, m)| s / m).collect();
    assert!(weights.iter().all(|&w| w < 0.95), "weights {weights:?}: the scale does not test the softmax");
    let row = |j: &u32| &bank_rows.data[*j as usize * d..][..d];
    for (b, &top) in tops.iter().enumerate() {
        let by_hand = reweighted_score(
            &embedding.data[top as usize * d..][..d],
            support[b * k..][..k].iter().map(row),
            want.max_patch_distances[b],
        );
        assert_eq!(by_hand.to_bits(), want.scores[b].to_bits(), "the CPU's score is reweighted_score");
    }
    // expf may differ from the CPU's exp by an ulp or two; everything else is rounded as the CPU rounds.
    let e = rel_err(&got.scores, &want.scores);
    assert!(e <= 1e-6, "Eq. 7 scores {:?} vs CPU {:?}: relative error {e:.1e}", got.scores, want.scores);
    assert_same_bits("max_distance", &got.max_distance, &want.max_patch_distances);
}
