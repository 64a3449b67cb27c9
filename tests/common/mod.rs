//! Shared by the integration tests: fixture access and the error measure.
#![allow(dead_code)]

use patchcore::backbone::weights::{SafetensorsFile, WeightSource};
use std::path::PathBuf;

/// Runs the `patchcore` binary of this build.
pub fn patchcore(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_patchcore")).args(args).output().expect("binary runs")
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as a command-line argument (the test paths are UTF-8).
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn fixture(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(&fixture_path(name)).expect("fixture present (scripts/make_fixtures.py writes it)")
}

pub fn tensor(file: &SafetensorsFile, name: &str, shape: &[usize]) -> Vec<f32> {
    file.tensor(name, shape).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
}

/// The error measure of every comparison: max |got - want| / max |want|, so one number bounds
/// every element relative to the tensor's scale (elementwise relative error is meaningless
/// for values near zero after a ReLU).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} exceeds {tol:e}");
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("patchcore-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (name, shape, values) of f32 tensors.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Writes the hashed test weights of `arch` (torchvision names, BatchNorm unfolded) as a
/// safetensors file, by recording every tensor the backbone asks for.
pub fn write_hashed_weights(arch: patchcore::backbone::Architecture, path: &std::path::Path) {
    use patchcore::backbone::weights::HashedWeights;
    use patchcore::backbone::{Backbone, ConvOrigin};
    use std::cell::RefCell;

    struct Recorder(RefCell<NamedTensors>);
    impl WeightSource for Recorder {
        fn tensor(&self, name: &str, shape: &[usize]) -> patchcore::Result<Vec<f32>> {
            let v = HashedWeights.tensor(name, shape)?;
            self.0.borrow_mut().push((name.to_string(), shape.to_vec(), v.clone()));
            Ok(v)
        }
        fn origin(&self) -> &std::path::Path {
            HashedWeights.origin()
        }
    }
    let rec = Recorder(RefCell::new(Vec::new()));
    Backbone::load(&patchcore::backend::CpuBackend::default(), arch, ConvOrigin::Torchvision(&rec))
        .expect("hashed backbone");
    let tensors = rec.0.into_inner();
    write_f32_safetensors(path, &tensors, None);
}

/// Writes f32 tensors (name, shape, values) and optional metadata as safetensors.
pub fn write_f32_safetensors(
    path: &std::path::Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

/// A safetensors file's tensors as stored, (name, dtype, shape, bytes), in the file's order.
pub type RawTensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites a model file with its `patchcore` metadata JSON edited by `edit_meta` and its
/// tensors (any dtype, bytes as stored) by `edit_tensors`.
pub fn rewrite_model(
    path: &std::path::Path,
    out: &std::path::Path,
    edit_meta: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut RawTensors),
) {
    let file = SafetensorsFile::open(path).unwrap();
    let mut meta = file.metadata();
    let mut json: serde_json::Value = serde_json::from_str(&meta["patchcore"]).unwrap();
    edit_meta(&mut json);
    meta.insert("patchcore".into(), json.to_string());
    let bytes = std::fs::read(path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: RawTensors =
        parsed.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit_tensors(&mut tensors);
    let views = tensors.iter().map(|(n, dtype, shape, bytes)| {
        (n.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap())
    });
    std::fs::write(out, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// A textured good image (or a defective one: a bright square at a seeded place), `size`
/// pixels square, and the defect's mask.
pub fn synthetic_image(size: u32, seed: u64, defect: bool) -> (image::RgbImage, image::GrayImage) {
    let mut rng = patchcore::rng::SplitMix64::new(seed);
    let phase = rng.next_f64() as f32 * 6.0;
    let mut img = image::RgbImage::from_fn(size, size, |x, y| {
        let v = 120.0 + 50.0 * ((x as f32 * 0.8 + phase).sin() * (y as f32 * 0.5).cos());
        let n = (rng.next_f64() as f32 - 0.5) * 16.0;
        image::Rgb([(v + n) as u8, (v * 0.9 + n) as u8, (v * 0.7 + n) as u8])
    });
    let mut mask = image::GrayImage::new(size, size);
    if defect {
        let side = size / 5;
        let x0 = rng.below((size - side) as u64) as u32;
        let y0 = rng.below((size - side) as u64) as u32;
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                img.put_pixel(x, y, image::Rgb([250, 30, 200]));
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
    }
    (img, mask)
}

/// An MVTec-shaped category: train/good (n_train), test/good and test/square (n_test each),
/// ground_truth/square/<name>_mask.png.
pub fn synthetic_category(root: &std::path::Path, size: u32, n_train: usize, n_test: usize) {
    let mk = |p: &std::path::Path| std::fs::create_dir_all(p).unwrap();
    for d in ["train/good", "test/good", "test/square", "ground_truth/square"] {
        mk(&root.join(d));
    }
    for i in 0..n_train {
        synthetic_image(size, i as u64, false).0.save(root.join(format!("train/good/{i:03}.png"))).unwrap();
    }
    for i in 0..n_test {
        synthetic_image(size, 1000 + i as u64, false).0.save(root.join(format!("test/good/{i:03}.png"))).unwrap();
        let (img, mask) = synthetic_image(size, 2000 + i as u64, true);
        img.save(root.join(format!("test/square/{i:03}.png"))).unwrap();
        mask.save(root.join(format!("ground_truth/square/{i:03}_mask.png"))).unwrap();
    }
}

/// Max over all rows of the distance to the nearest selected row (exact, on the CPU): how well a
/// coreset covers its input.
pub fn covering_radius(rows: &patchcore::Tensor, selected: &[u32]) -> f32 {
    use patchcore::backend::{Backend, CpuBackend};
    let bank = CpuBackend::default().prepare_bank(rows.gather_rows(selected).unwrap()).unwrap();
    let (dist, _) = CpuBackend::default().knn(rows, &bank, 1).unwrap();
    dist.into_iter().fold(0.0, f32::max)
}

/// A ResNet-18 (hashed weights) model fitted at `size` px on a synthetic category: (model, data).
pub fn fitted_model(dir: &TempDir, size: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.path().join("cat");
    synthetic_category(&data, size, 6, 3);
    let weights = dir.path().join("resnet18.safetensors");
    write_hashed_weights(patchcore::backbone::Architecture::Resnet18, &weights);
    let model = dir.path().join("model.safetensors");
    let size = size.to_string();
    let o = patchcore(&[
        "fit",
        "--backbone",
        "resnet18",
        "--weights",
        s(&weights),
        "--train",
        s(&data.join("train/good")),
        "--out",
        s(&model),
        "--size",
        &size,
        "--ratio",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (model, data)
}

/// Compiles `source` into the shared library `dir/name`; Err when there is no C compiler.
pub fn build_library(dir: &std::path::Path, name: &str, source: &str) -> Result<(), String> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(name))
        .arg(&c)
        .output()
        .map_err(|e| format!("no C compiler (cc: {e})"))?;
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A check that needs a stand-in built here is skipped for `why` (no C compiler), saying so;
/// unless PATCHCORE_REQUIRE_EMULATION=1 (as in CI), where skipping is a failure.
pub fn skip_unless_required(why: &str) {
    let required = std::env::var("PATCHCORE_REQUIRE_EMULATION").is_ok_and(|v| v == "1");
    assert!(!required, "{why}, and PATCHCORE_REQUIRE_EMULATION=1");
    println!("skipping: {why}");
}

/// n x d rows in `k` tight clusters of a 4-dim latent space mapped to `d` dims: data like patch embeddings
/// (low intrinsic dimension), where the coreset's bounds prune most rows.
pub fn clustered(n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
    let latent = 4;
    let mut rng = patchcore::rng::SplitMix64::new(seed);
    let map: Vec<f32> = (0..d * latent).map(|_| rng.normal() as f32).collect();
    let centres: Vec<f32> = (0..k * latent).map(|_| 10.0 * rng.normal() as f32).collect();
    let mut rows = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = rng.below(k as u64) as usize;
        let z: Vec<f32> = (0..latent).map(|j| centres[c * latent + j] + 0.5 * rng.normal() as f32).collect();
        rows.extend((0..d).map(|r| map[r * latent..][..latent].iter().zip(&z).map(|(a, b)| a * b).sum::<f32>()));
    }
    rows
}
