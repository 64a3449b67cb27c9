#![cfg(feature = "cuda")]
//! The CUDA probe's every refusal, without a GPU: stand-in libcuda/libcublas/libcudnn built here
//! with the C compiler are put on LD_LIBRARY_PATH of the `patchcore` binary, one missing piece at a
//! time (a driver too old, each library, a library cudarc would load instead, a device, a function
//! cudarc calls), and `--device cuda` must name what is missing instead of panicking inside cudarc.
//! Skipped (saying why) where a real GPU is usable or no C compiler exists, unless
//! PATCHCORE_REQUIRE_EMULATION=1 (as in CI).

mod common;

use common::{build_library, skip_unless_required, TempDir};
use std::path::Path;
use std::process::Command;

/// A driver of CUDA `version` that initialises with `init_status` and reports `devices` devices;
/// the error-string calls are what cudarc uses to print a driver error. It has nothing else:
/// making a context (cuDeviceGet first) is a function cudarc finds missing.
fn fake_driver(version: u32, devices: u32, init_status: u32) -> String {
    format!(
        r#"
int cuDriverGetVersion(int *version) {{ *version = {version}; return 0; }}
int cuInit(unsigned flags) {{ (void)flags; return {init_status}; }}
int cuDeviceGetCount(int *count) {{ *count = {devices}; return 0; }}
int cuGetErrorString(int e, const char **s) {{ *s = e == 100 ? "no CUDA-capable device is detected" : "error"; return 0; }}
int cuGetErrorName(int e, const char **s) {{ *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR"; return 0; }}
"#
    )
}

/// Every library besides the driver that the probe requires, by soname.
const LIBRARIES: [&str; 8] = [
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_heuristic.so.9",
];

/// A stand-in for each of `names`, an empty library, in `dir`.
fn build_stand_ins(dir: &Path, names: &[&str]) {
    for name in names {
        build_library(dir, name, "int patchcore_stand_in;").unwrap();
    }
}

/// `patchcore fit --device DEVICE` with only `libs` on the library path: the error it prints,
/// which must be a clean one, with no panic's message or backtrace.
fn refusal(libs: &Path, device: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_patchcore"))
        .args(["fit", "--device", device, "--train", "no-such-folder", "--out", "never.patchcore"])
        .env("LD_LIBRARY_PATH", libs)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "a clean error, not a panic: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    stderr
}

/// A folder named `name` in `root` with the driver `driver` and links to the stand-ins of `all`
/// but `without`.
fn libraries_without(root: &Path, name: &str, driver: &Path, all: &Path, without: &[&str]) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(driver, dir.join("libcuda.so.1")).unwrap();
    for lib in LIBRARIES.iter().filter(|l| !without.contains(l)) {
        std::os::unix::fs::symlink(all.join(lib), dir.join(lib)).unwrap();
    }
    dir
}

#[test]
fn each_missing_cuda_piece_is_named() {
    if patchcore::backend::cuda::probe(0).is_ok() {
        println!("skipping: a real GPU is usable here, so the stand-ins would not be the ones loaded");
        return;
    }
    let dir = TempDir::new("probe");
    let root = dir.path();
    let [old, none, one, all] = ["old-driver", "no-device", "one-device", "stand-ins"].map(|d| root.join(d));
    for d in [&old, &none, &one, &all] {
        std::fs::create_dir_all(d).unwrap();
    }
    if let Err(why) = build_library(&old, "libcuda.so.1", &fake_driver(12040, 1, 0)) {
        skip_unless_required(&why);
        return;
    }
    build_library(&none, "libcuda.so.1", &fake_driver(13000, 0, 100)).unwrap();
    build_library(&one, "libcuda.so.1", &fake_driver(13000, 1, 0)).unwrap();
    build_stand_ins(&all, &LIBRARIES);
    let [old, no_device, one_device] = [old, none, one].map(|d| d.join("libcuda.so.1"));

    // A CUDA 12.4 driver, with everything else there.
    let e = refusal(&libraries_without(root, "old-complete", &old, &all, &[]), "cuda");
    let want =
        "the driver supports CUDA 12.4 (12040); this build needs 13.0 (13000) or newer: update the NVIDIA driver";
    assert!(e.contains(want), "{e}");

    // No library at all: each named, with the wheel and folder that has it.
    let e = refusal(&libraries_without(root, "bare", &no_device, &all, &LIBRARIES), "cuda");
    assert!(e.contains("libcublas.so.13, libcublasLt.so.13 were not found (pip's nvidia-cublas wheel"), "{e}");
    assert!(e.contains("libcudnn.so.9, libcudnn_graph.so.9,") && e.contains("nvidia-cudnn-cu13"), "{e}");
    assert!(e.contains("LD_LIBRARY_PATH"), "{e}");

    // Each library missing alone is named alone.
    for lib in LIBRARIES {
        let e = refusal(&libraries_without(root, &format!("without-{lib}"), &no_device, &all, &[lib]), "cuda");
        assert!(e.contains(&format!("CUDA is unavailable: {lib} was not found (pip's nvidia-cu")), "{e}");
        assert_eq!(e.matches(" was not found").count(), 1, "{e}");
    }

    // An unversioned libcudnn.so that is another file is what cudarc would load: refused. The
    // same name as a link to libcudnn.so.9 (as the packages install it) is fine.
    let shadowed = libraries_without(root, "shadowed", &no_device, &all, &[]);
    build_library(&shadowed, "libcudnn.so", "int another_cudnn;").unwrap();
    let e = refusal(&shadowed, "cuda");
    let want = format!("{} is found before libcudnn.so.9 and is another file", shadowed.join("libcudnn.so").display());
    assert!(e.contains(&want), "{e}");
    let linked = libraries_without(root, "linked", &no_device, &all, &[]);
    std::os::unix::fs::symlink(all.join("libcudnn.so.9"), linked.join("libcudnn.so")).unwrap();
    let e = refusal(&linked, "cuda");
    assert!(e.contains("the driver reports") && e.contains("CUDA_ERROR_NO_DEVICE"), "{e}");

    // Everything there but no device, then one device but not the one asked for.
    let e = refusal(&libraries_without(root, "complete", &no_device, &all, &[]), "cuda");
    assert!(e.contains("the driver reports") && e.contains("CUDA_ERROR_NO_DEVICE"), "{e}");
    let one_lib = libraries_without(root, "complete-one", &one_device, &all, &[]);
    let e = refusal(&one_lib, "cuda:3");
    assert!(e.contains("CUDA is unavailable: device 3 does not exist: the driver sees 1 device(s)"), "{e}");

    // Device 0 exists, but the driver lacks cuDeviceGet, which cudarc calls to make a context:
    // cudarc's panic is the error, and `auto` takes the CPU for it (then fails on the folder).
    let e = refusal(&one_lib, "cuda");
    let want = "CUDA is unavailable: libcuda (the NVIDIA driver) has no function cuDeviceGet, which this build calls";
    assert!(e.contains(want), "{e}");
    let e = refusal(&one_lib, "auto");
    assert!(e.contains(&format!("note: using the CPU ({want}")) && e.contains("no-such-folder"), "{e}");
}
