//! Build script. Without the `cuda` feature (the default) there is nothing to build: the CPU
//! backend is pure Rust. The CUDA backend's kernels (kernels/*.cu -> PTX via nvcc) are
//! compiled here when that feature lands.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
