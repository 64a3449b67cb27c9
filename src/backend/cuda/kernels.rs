//! Our kernels, compiled to PTX by build.rs and embedded in the library: the driver JIT-compiles
//! them for the GPU it finds when the backend starts. Each field is one `extern "C"` kernel named
//! like the field, in the .cu file named after `in`; its contract (parameters, launch geometry)
//! is written at the top of that file. The same list checks, without a GPU, that the PTX has
//! every kernel the host launches and no other.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// kernels/<name>.cu as PTX.
const SOURCES: [(&str, &str); 5] = [
    ("embed", include_str!(concat!(env!("OUT_DIR"), "/embed.ptx"))),
    ("knn", include_str!(concat!(env!("OUT_DIR"), "/knn.ptx"))),
    ("coreset", include_str!(concat!(env!("OUT_DIR"), "/coreset.ptx"))),
    ("blur", include_str!(concat!(env!("OUT_DIR"), "/blur.ptx"))),
    ("conv", include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"))),
];

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
                let modules = SOURCES
                    .iter()
                    .map(|(file, ptx)| {
                        ctx.load_module(Ptx::from_src(*ptx))
                            .map(|m| (*file, m))
                            .map_err(|e| {
                                Error::device_failure(format!(
                                    "kernels/{file}.cu's PTX did not load: {e} (it needs a driver for CUDA 13.0 or newer)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<(&str, Arc<CudaModule>)>>>()?;
                let function = |file: &str, name: &str| {
                    let (_, module) = modules.iter().find(|(f, _)| *f == file).expect("every file is in SOURCES");
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
    coreset_step_f32 in coreset,
    coreset_step_f16 in coreset,
    fill_f32 in coreset,
    blur_rows in blur,
    blur_cols in blur,
    bias_act in conv,
    pad_nchw in conv,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ptx_defines_exactly_the_kernels_the_host_launches() {
        for (file, ptx) in SOURCES {
            let mut defined = ptx_entries(ptx);
            let mut launched: Vec<&str> = KERNELS.iter().filter(|(f, _)| *f == file).map(|(_, k)| *k).collect();
            defined.sort_unstable();
            launched.sort_unstable();
            assert_eq!(defined, launched, "kernels/{file}.cu");
        }
    }

    #[test]
    fn the_ptx_targets_what_a_cuda_13_driver_loads() {
        for (file, ptx) in SOURCES {
            assert!(ptx.contains("\n.version 9.0\n") && ptx.contains("\n.target sm_80\n"), "kernels/{file}.cu");
        }
    }
}
