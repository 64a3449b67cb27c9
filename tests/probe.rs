#![cfg(feature = "cuda")]
//! The CUDA probe's every refusal, without a GPU: stand-in libcuda/libcublas/libcudnn built here
//! with the C compiler are put on LD_LIBRARY_PATH of the `patchcore` binary, one missing piece at a
//! time, and `--device cuda` must name what is missing instead of panicking inside cudarc.
//! Skipped (saying why) where a real GPU is usable or no C compiler exists, unless
//! PATCHCORE_REQUIRE_EMULATION=1 (as in CI).

mod common;

use common::TempDir;
use std::path::Path;
use std::process::Command;

/// A driver that initialises with `init_status` and reports `devices` devices; the error-string
/// calls are what cudarc uses to print a driver error.
fn fake_driver(devices: u32, init_status: u32) -> String {
    format!(
        r#"
int cuInit(unsigned flags) {{ (void)flags; return {init_status}; }}
int cuDeviceGetCount(int *count) {{ *count = {devices}; return 0; }}
int cuGetErrorString(int e, const char **s) {{ *s = e == 100 ? "no CUDA-capable device is detected" : "error"; return 0; }}
int cuGetErrorName(int e, const char **s) {{ *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR"; return 0; }}
"#
    )
}

/// Compiles `source` into the shared library `dir/name`; Err when there is no C compiler.
fn build_library(dir: &Path, name: &str, source: &str) -> Result<(), String> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(name))
        .arg(&c)
        .output()
        .map_err(|e| format!("no C compiler (cc: {e})"))?;
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `patchcore fit --device DEVICE` with only `libs` on the library path: the error it prints.
fn refusal(libs: &Path, device: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_patchcore"))
        .args(["fit", "--device", device, "--train", "no-such-folder", "--out", "never.patchcore"])
        .env("LD_LIBRARY_PATH", libs)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "a clean error, not a panic: {stderr}");
    stderr
}

#[test]
fn each_missing_cuda_piece_is_named() {
    if patchcore::backend::cuda::probe(0).is_ok() {
        println!("skipping: a real GPU is usable here, so the stand-ins would not be the ones loaded");
        return;
    }
    let dir = TempDir::new("probe");
    let (none, one) = (dir.path().join("no-device"), dir.path().join("one-device"));
    for d in [&none, &one] {
        std::fs::create_dir_all(d).unwrap();
    }
    if let Err(why) = build_library(&none, "libcuda.so.1", &fake_driver(0, 100)) {
        let required = std::env::var("PATCHCORE_REQUIRE_EMULATION").is_ok_and(|v| v == "1");
        assert!(!required, "{why}, and PATCHCORE_REQUIRE_EMULATION=1");
        println!("skipping: {why}");
        return;
    }
    let e = refusal(&none, "cuda");
    assert!(e.contains("libcublas was not found") && e.contains("LD_LIBRARY_PATH"), "{e}");
    build_library(&none, "libcublas.so.13", "int patchcore_stand_in;").unwrap();
    let e = refusal(&none, "cuda");
    assert!(e.contains("libcudnn was not found") && e.contains("libcudnn.so.9"), "{e}");
    build_library(&none, "libcudnn.so.9", "int patchcore_stand_in;").unwrap();
    let e = refusal(&none, "cuda");
    assert!(e.contains("the driver reports") && e.contains("CUDA_ERROR_NO_DEVICE"), "{e}");

    build_library(&one, "libcuda.so.1", &fake_driver(1, 0)).unwrap();
    build_library(&one, "libcublas.so.13", "int patchcore_stand_in;").unwrap();
    build_library(&one, "libcudnn.so.9", "int patchcore_stand_in;").unwrap();
    let e = refusal(&one, "cuda:3");
    assert!(e.contains("CUDA is unavailable: device 3 does not exist: the driver sees 1 device(s)"), "{e}");
}
