//! Build script. Without the `cuda` feature (the default) there is nothing to build: the CPU
//! backend is pure Rust. With it, every kernels/*.cu is compiled by nvcc to PTX for compute_80
//! in OUT_DIR, ptxas compiles that PTX to sm_90 machine code, and fatbinary packs both into one
//! fatbin per file, which the CUDA backend embeds with include_bytes!. The kernels include
//! geometry.cuh, written into OUT_DIR first from the launch geometry the host uses
//! (src/backend/cuda/geometry.rs).
//!
//! Why both: the sm_90 code lets an H100/H200 start without JIT-compiling anything, and the
//! compute_80 PTX lets the driver JIT for any other GPU from the A100 on. PTX ISA 9.0, which
//! nvcc 13.0 writes, is the newest a CUDA 13.0 driver (R580) loads; a newer nvcc would write
//! PTX that driver refuses, so the ISA is checked.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The launch geometry the kernels share with the host (include! needs the path as a literal).
const GEOMETRY: &str = "src/backend/cuda/geometry.rs";
mod geometry {
    include!("src/backend/cuda/geometry.rs");
}

/// The newest PTX ISA the target driver (CUDA 13.0) loads.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

/// Where scripts/install-nvcc.sh puts nvcc, relative to the crate root.
const PIP_NVCC: &str = "target/nvcc/nvidia/cu13/bin/nvcc";

const GET_NVCC: &str = "\
the `cuda` feature compiles kernels/*.cu with nvcc, and none was found (looked at $NVCC, \
$CUDA_HOME/bin, $CUDA_PATH/bin, PATH and target/nvcc). Without a CUDA toolkit, pip provides one \
(pinned wheels, no GPU needed): run scripts/install-nvcc.sh, or set NVCC to an nvcc 13.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={PIP_NVCC}");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed={GEOMETRY}");
    let nvcc = find_nvcc().unwrap_or_else(|| fail(GET_NVCC));
    let tool = |name: &str| {
        let beside = nvcc.with_file_name(name);
        if beside.is_file() { Some(beside) } else { which(name) }
            .unwrap_or_else(|| fail(&format!("{name} was found neither beside {} nor on PATH", nvcc.display())))
    };
    let (ptxas, fatbinary) = (tool("ptxas"), tool("fatbinary"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let header = out_dir.join("geometry.cuh");
    std::fs::write(&header, geometry_header()).unwrap_or_else(|e| fail(&format!("{}: {e}", header.display())));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .unwrap_or_else(|e| fail(&format!("kernels/: {e}")))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    for source in sources.iter().filter(|p| p.extension().is_some_and(|x| x == "cu")) {
        let stem = source.file_stem().expect("a .cu file has a stem").to_string_lossy();
        let ptx = out_dir.join(format!("{stem}.ptx"));
        // -lineinfo lets Nsight Compute attribute time to source lines; no fast-math: the
        // coreset distance must round exactly like the CPU's (kernels/coreset.cu).
        let mut nvcc_cmd = Command::new(&nvcc);
        nvcc_cmd.args(["-arch=compute_80", "--ptx", "-O3", "-lineinfo", "-std=c++17", "-Ikernels", "-I"]);
        run(nvcc_cmd.arg(&out_dir).arg("-o").arg(&ptx).arg(source), "nvcc", source);
        check_isa(&ptx, source);
        let cubin = out_dir.join(format!("{stem}.sm_90.cubin"));
        run(Command::new(&ptxas).args(["-arch=sm_90", "-O3", "-o"]).arg(&cubin).arg(&ptx), "ptxas -arch=sm_90", source);
        // Uncompressed: every driver that loads this PTX reads it, and the size only counts
        // with the `cuda` feature.
        let mut pack = Command::new(&fatbinary);
        pack.arg(format!("--create={}", out_dir.join(format!("{stem}.fatbin")).display()))
            .arg("--compress=false")
            .arg(format!("--image3=kind=elf,sm=90,file={}", cubin.display()))
            .arg(format!("--image3=kind=ptx,sm=80,file={}", ptx.display()));
        run(&mut pack, "fatbinary", source);
    }
}

/// geometry.cuh: each constant of geometry.rs as a C++ constant of the same name. One left out
/// here is unused in this script, which the dead-code lint reports.
fn geometry_header() -> String {
    macro_rules! define {
        ($($name:ident),*) => {
            [$(format!("constexpr int {} = {};\n", stringify!($name), geometry::$name)),*].concat()
        };
    }
    let constants =
        define!(BLOCK, KNN_TILE, KNN_LISTS, KNN_MERGE_BLOCK, KNN_MAX_K, CORESET_ROWS_PER_BLOCK, CORESET_BLOCKS_PER_SM);
    let coreset = define!(CORESET_PROJ);
    format!(
        "// Written by build.rs from {GEOMETRY}: edit that file, not this one.\n#pragma once\n\n{constants}{coreset}"
    )
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(nvcc) = env::var_os("NVCC") {
        return Some(PathBuf::from(nvcc));
    }
    ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
        .find(|p| p.is_file())
        .or_else(|| which("nvcc"))
        .or_else(|| Some(PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?).join(PIP_NVCC)).filter(|p| p.is_file()))
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn run(cmd: &mut Command, what: &str, source: &Path) {
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                println!("cargo:warning={}: {line}", source.display());
            }
        }
        Ok(out) => fail(&format!(
            "{what} failed on {}:\n{}{}",
            source.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => fail(&format!("could not run {what} ({:?}) for {}: {e}", cmd.get_program(), source.display())),
    }
}

/// Refuses PTX newer than the driver we target can load.
fn check_isa(ptx: &Path, source: &Path) {
    let text = std::fs::read_to_string(ptx).unwrap_or_else(|e| fail(&format!("{}: {e}", ptx.display())));
    let version = text.lines().find_map(|l| l.trim().strip_prefix(".version ")).and_then(|v| {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    match version {
        Some(v) if v <= MAX_PTX_ISA => {}
        Some((major, minor)) => fail(&format!(
            "{}: nvcc wrote PTX ISA {major}.{minor}, newer than the {}.{} a CUDA 13.0 driver loads; use nvcc 13.0 \
             (the pinned wheels in this script's message)",
            source.display(),
            MAX_PTX_ISA.0,
            MAX_PTX_ISA.1
        )),
        None => fail(&format!("{}: no .version line in nvcc's PTX", source.display())),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
