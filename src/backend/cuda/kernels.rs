//! Our kernels, embedded in the library as fatbins (build.rs): sm_90 machine code, which an
//! H100/H200 runs as it is, and compute_80 PTX, which the driver JIT-compiles for any other GPU
//! from the A100 on. Each field is one `extern "C"` kernel named like the field, in the .cu file
//! named after `in`; its contract (parameters, launch geometry) is written at the top of that
//! file. The same list checks, without a GPU, that the PTX has every kernel the host launches
//! and no other, and that each fatbin holds both images.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

macro_rules! per_file {
    ($ext:literal) => {
        [
            ("embed", include_bytes!(concat!(env!("OUT_DIR"), "/embed.", $ext)).as_slice()),
            ("knn", include_bytes!(concat!(env!("OUT_DIR"), "/knn.", $ext)).as_slice()),
            ("coreset", include_bytes!(concat!(env!("OUT_DIR"), "/coreset.", $ext)).as_slice()),
            ("blur", include_bytes!(concat!(env!("OUT_DIR"), "/blur.", $ext)).as_slice()),
            ("conv", include_bytes!(concat!(env!("OUT_DIR"), "/conv.", $ext)).as_slice()),
            ("preprocess", include_bytes!(concat!(env!("OUT_DIR"), "/preprocess.", $ext)).as_slice()),
            ("score", include_bytes!(concat!(env!("OUT_DIR"), "/score.", $ext)).as_slice()),
        ]
    };
}

/// kernels/<name>.cu as a fatbin.
const FATBINS: [(&str, &[u8]); 7] = per_file!("fatbin");

macro_rules! kernels {
    ($($name:ident in $file:ident),* $(,)?) => {
        pub struct Kernels {
            $(pub $name: CudaFunction,)*
        }

        /// (file, kernel) for every kernel the host launches.
        #[cfg(test)]
        const KERNELS: &[(&str, &str)] = &[$((stringify!($file), stringify!($name)),)*];

        impl Kernels {
            pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
                let modules = FATBINS
                    .iter()
                    .map(|(file, fatbin)| {
                        // cuModuleLoadData takes a fatbin as it takes PTX or a cubin.
                        ctx.load_module(Ptx::from_binary(fatbin.to_vec()))
                            .map(|m| (*file, m))
                            .map_err(|e| {
                                Error::device_failure(format!(
                                    "kernels/{file}.cu did not load: {e} (it needs a driver for CUDA 13.0 or newer)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<(&str, Arc<CudaModule>)>>>()?;
                let function = |file: &str, name: &str| {
                    let (_, module) = modules.iter().find(|(f, _)| *f == file).expect("every file is in FATBINS");
                    module.load_function(name).map_err(|e| Error::device_failure(format!("CUDA kernel {name}: {e}")))
                };
                Ok(Kernels { $($name: function(stringify!($file), stringify!($name))?,)* })
            }
        }
    };
}

kernels! {
    embed_layer in embed,
    squared_norms_f32 in knn,
    squared_norms_tf32 in knn,
    squared_norms_f16 in knn,
    to_f16 in knn,
    knn_partial_f32_k1 in knn,
    knn_partial_f32_k16 in knn,
    knn_partial_tf32_k1 in knn,
    knn_partial_tf32_k16 in knn,
    knn_partial_f16_k1 in knn,
    knn_partial_f16_k16 in knn,
    knn_merge in knn,
    coreset_project_f32 in coreset,
    coreset_project_f16 in coreset,
    coreset_init_f32 in coreset,
    coreset_init_f16 in coreset,
    coreset_pick in coreset,
    coreset_reach_f32 in coreset,
    coreset_reach_f16 in coreset,
    coreset_filter in coreset,
    coreset_distance_f32 in coreset,
    coreset_distance_f16 in coreset,
    blur_rows in blur,
    blur_cols in blur,
    bias_act in conv,
    pad_nchw in conv,
    preprocess_rows in preprocess,
    preprocess_cols in preprocess,
    top_patch in score,
    gather_rows in score,
    eq7_scores in score,
}

/// The kernels a PTX module defines (`.visible .entry NAME(`).
#[cfg(test)]
fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect()
}

/// (kind, architecture) of each image in a fatbin: kind 1 is PTX, 2 an ELF cubin. The layout,
/// as fatbinary writes it: a 16-byte header (magic 0xBA55ED50, version, header size, the size
/// of what follows), then per image a header (kind u16 at 0, its own size u32 at 4, the
/// payload's size u64 at 8, the sm number u32 at 28) and the payload.
#[cfg(test)]
fn fatbin_images(fatbin: &[u8]) -> Vec<(u16, u32)> {
    let u16_at = |i: usize| u16::from_le_bytes(fatbin[i..i + 2].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(fatbin[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(fatbin[i..i + 8].try_into().unwrap()) as usize;
    assert_eq!(u32_at(0), 0xBA55_ED50, "not a fatbin");
    let end = u16_at(6) as usize + u64_at(8);
    let mut at = u16_at(6) as usize;
    let mut images = Vec::new();
    while at < end {
        images.push((u16_at(at), u32_at(at + 28)));
        at += u32_at(at + 4) as usize + u64_at(at + 8);
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kernels/<name>.cu as PTX, which the fatbins carry too.
    const PTX: [(&str, &[u8]); 7] = per_file!("ptx");

    #[test]
    fn the_ptx_defines_exactly_the_kernels_the_host_launches() {
        for (file, ptx) in PTX {
            let mut defined = ptx_entries(std::str::from_utf8(ptx).unwrap());
            let mut launched: Vec<&str> = KERNELS.iter().filter(|(f, _)| *f == file).map(|(_, k)| *k).collect();
            defined.sort_unstable();
            launched.sort_unstable();
            assert_eq!(defined, launched, "kernels/{file}.cu");
        }
    }

    #[test]
    fn the_ptx_targets_what_a_cuda_13_driver_loads() {
        for (file, ptx) in PTX {
            let ptx = std::str::from_utf8(ptx).unwrap();
            assert!(ptx.contains("\n.version 9.0\n") && ptx.contains("\n.target sm_80\n"), "kernels/{file}.cu");
        }
    }

    #[test]
    fn each_fatbin_holds_sm_90_code_and_compute_80_ptx() {
        for (file, fatbin) in FATBINS {
            assert_eq!(fatbin_images(fatbin), [(2, 90), (1, 80)], "kernels/{file}.cu");
        }
    }
}
