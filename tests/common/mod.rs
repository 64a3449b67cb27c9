//! Shared by the integration tests: fixture access and the error measure.
#![allow(dead_code)]

use patchcore::backbone::weights::{SafetensorsFile, WeightSource};
use std::path::PathBuf;

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
