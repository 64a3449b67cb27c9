//! Our kernels, compiled to PTX by build.rs and embedded in the library: the driver JIT-compiles
//! them for the GPU it finds when the backend starts. Each field is one `extern "C"` kernel; its
//! contract (parameters, launch geometry) is written at the top of the .cu file it comes from.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

const EMBED: &str = include_str!(concat!(env!("OUT_DIR"), "/embed.ptx"));
const KNN: &str = include_str!(concat!(env!("OUT_DIR"), "/knn.ptx"));
const CORESET: &str = include_str!(concat!(env!("OUT_DIR"), "/coreset.ptx"));
const BLUR: &str = include_str!(concat!(env!("OUT_DIR"), "/blur.ptx"));
const CONV: &str = include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"));

/// The partial top-k kernels of knn.cu for one arithmetic: `[k == 1, 1 <= k <= 16]`.
pub struct KnnPartial {
    pub k1: CudaFunction,
    pub k16: CudaFunction,
}

pub struct Kernels {
    pub embed_layer: CudaFunction,
    pub squared_norms: CudaFunction,
    pub to_f16: CudaFunction,
    pub knn_f32: KnnPartial,
    pub knn_tf32: KnnPartial,
    pub knn_f16: KnnPartial,
    pub knn_merge: CudaFunction,
    pub coreset_step_f32: CudaFunction,
    pub coreset_step_f16: CudaFunction,
    pub fill_f32: CudaFunction,
    pub blur_rows: CudaFunction,
    pub blur_cols: CudaFunction,
    pub bias_act: CudaFunction,
    pub pad_nchw: CudaFunction,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let module = |name: &str, ptx: &str| {
            ctx.load_module(Ptx::from_src(ptx))
                .map_err(|e| Error::Backend(format!("CUDA could not load kernels/{name}.cu's PTX: {e}")))
        };
        let function = |module: &Arc<CudaModule>, name: &str| {
            module.load_function(name).map_err(|e| Error::Backend(format!("CUDA kernel {name}: {e}")))
        };
        let (embed, knn, coreset, blur, conv) = (
            module("embed", EMBED)?,
            module("knn", KNN)?,
            module("coreset", CORESET)?,
            module("blur", BLUR)?,
            module("conv", CONV)?,
        );
        let partial = |precision: &str| -> Result<KnnPartial> {
            Ok(KnnPartial {
                k1: function(&knn, &format!("knn_partial_{precision}_k1"))?,
                k16: function(&knn, &format!("knn_partial_{precision}_k16"))?,
            })
        };
        Ok(Kernels {
            embed_layer: function(&embed, "embed_layer")?,
            squared_norms: function(&knn, "squared_norms")?,
            to_f16: function(&knn, "to_f16")?,
            knn_f32: partial("f32")?,
            knn_tf32: partial("tf32")?,
            knn_f16: partial("f16")?,
            knn_merge: function(&knn, "knn_merge")?,
            coreset_step_f32: function(&coreset, "coreset_step_f32")?,
            coreset_step_f16: function(&coreset, "coreset_step_f16")?,
            fill_f32: function(&coreset, "fill_f32")?,
            blur_rows: function(&blur, "blur_rows")?,
            blur_cols: function(&blur, "blur_cols")?,
            bias_act: function(&conv, "bias_act")?,
            pad_nchw: function(&conv, "pad_nchw")?,
        })
    }
}
