//! cuDNN: convolutions (with the bias, residual and ReLU fused where cuDNN offers it) and max
//! pooling. Descriptors and the algorithm are made once per (convolution, input shape) and
//! cached; one workspace grows to the largest need and is reused.

use crate::backend::{Activation, ConvSpec};
use crate::error::{Error, Result};
use cudarc::cudnn::result as raw;
use cudarc::cudnn::sys::{
    cudnnActivationMode_t, cudnnConvolutionDescriptor_t, cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnDataType_t, cudnnDeterminism_t, cudnnFilterDescriptor_t, cudnnHandle_t,
    cudnnMathType_t, cudnnNanPropagation_t, cudnnPoolingMode_t, cudnnStatus_t, cudnnTensorDescriptor_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ActivationDescriptor, ConvBiasActivationForward, ConvDescriptor, ConvForward, Cudnn, CudnnError, FilterDescriptor,
    PoolingDescriptor, PoolingForward, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

const NCHW: cudnnTensorFormat_t = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
const FLOAT: cudnnDataType_t = cudnnDataType_t::CUDNN_DATA_FLOAT;
const CROSS_CORRELATION: cudnnConvolutionMode_t = cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;

fn dnn_error(what: &str) -> impl Fn(CudnnError) -> Error + '_ {
    move |e| Error::device_failure(format!("cuDNN {what}: {e}"))
}

fn c_int(v: usize) -> i32 {
    // Shapes were checked to fit in i32 by the caller (launch::fits_i32 on the element count).
    v as i32
}

/// One convolution at one input shape, ready to launch.
struct ConvEntry {
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    bias: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
    algo: cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

struct PoolEntry {
    x: TensorDescriptor<f32>,
    y: TensorDescriptor<f32>,
    pool: PoolingDescriptor<f32>,
}

/// The cuDNN handle and everything made with it. cuDNN objects are not `Send` in cudarc; this
/// struct only lives inside the backend's mutex, which is what cuDNN asks for (a handle may move
/// between threads but must not be used by two at once).
pub struct Dnn {
    handle: Arc<Cudnn>,
    /// A raw handle of our own for the algorithm query (`pick_algorithm`); destroyed on drop.
    query: cudnnHandle_t,
    stream: Arc<CudaStream>,
    math: cudnnMathType_t,
    relu: ActivationDescriptor<f32>,
    convs: HashMap<(ConvSpec, [usize; 4]), ConvEntry>,
    pools: HashMap<([usize; 4], usize, usize, usize), PoolEntry>,
    workspace: Option<CudaSlice<u8>>,
    /// The fused call always adds alpha2 * z; without a residual z is this (zeroed) buffer.
    zeros: Option<CudaSlice<f32>>,
}

// SAFETY: see the struct's comment: every use goes through the backend's Mutex<Dnn>.
unsafe impl Send for Dnn {}

/// What a convolution call needs besides the cached descriptors.
pub struct ConvCall<'a> {
    pub spec: &'a ConvSpec,
    /// The (possibly explicitly padded) input's shape and the padding cuDNN adds itself.
    pub x_dims: [usize; 4],
    pub pad: [usize; 2],
    pub out: [usize; 4],
    pub x: &'a CudaSlice<f32>,
    pub weight: &'a CudaSlice<f32>,
    pub bias: &'a CudaSlice<f32>,
    pub residual: Option<&'a CudaSlice<f32>>,
}

impl Dnn {
    /// `tensor_cores`: let cuDNN use TF32 tensor-core math (not bit-comparable to f32 FMA).
    pub fn new(stream: Arc<CudaStream>, tensor_cores: bool) -> Result<Self> {
        let handle = Cudnn::new(stream.clone()).map_err(dnn_error("handle"))?;
        // NaN is not propagated, in the activation and in max pooling alike: the CPU's ReLU is
        // f32::max(x, 0), which gives 0 for NaN, and its max-pool's f32::max skips a NaN, as
        // `bias_act` (kernels/conv.cu) does too.
        let relu = handle
            .create_activation::<f32>(
                cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                0.0,
            )
            .map_err(dnn_error("activation"))?;
        let math = if tensor_cores { cudnnMathType_t::CUDNN_DEFAULT_MATH } else { cudnnMathType_t::CUDNN_FMA_MATH };
        let query = raw::create_handle().map_err(dnn_error("handle"))?;
        Ok(Dnn {
            handle,
            query,
            stream,
            math,
            relu,
            convs: HashMap::new(),
            pools: HashMap::new(),
            workspace: None,
            zeros: None,
        })
    }

    /// cuDNN calls run in the calling thread's current context, which a C host's worker thread
    /// may not have yet (cudarc's own calls bind it themselves).
    fn bind(&self) -> Result<()> {
        self.stream.context().bind_to_thread().map_err(|e| Error::device_failure(format!("CUDA context: {e}")))
    }

    fn tensor(&self, dims: [usize; 4]) -> Result<TensorDescriptor<f32>> {
        self.handle.create_4d_tensor::<f32>(NCHW, dims.map(c_int)).map_err(dnn_error("tensor descriptor"))
    }

    fn conv_entry(&mut self, call: &ConvCall) -> Result<&ConvEntry> {
        let key = (*call.spec, call.x_dims);
        if !self.convs.contains_key(&key) {
            let shape = ConvShape::of(call);
            let x = self.tensor(call.x_dims)?;
            let y = self.tensor(call.out)?;
            let bias = self.tensor([1, call.spec.out_channels, 1, 1])?;
            let w = self.handle.create_4d_filter::<f32>(NCHW, shape.w).map_err(dnn_error("filter descriptor"))?;
            let mut conv = self
                .handle
                .create_conv2d::<f32>(shape.pad, [shape.stride; 2], [1, 1], CROSS_CORRELATION)
                .map_err(dnn_error("convolution descriptor"))?;
            conv.set_math_type(self.math).map_err(dnn_error("math type"))?;
            conv.set_group_count(shape.groups).map_err(dnn_error("group count"))?;
            let (algo, workspace) = self.pick_algorithm(&shape)?;
            self.convs.insert(key, ConvEntry { x, w, y, bias, conv, algo, workspace });
        }
        Ok(&self.convs[&key])
    }

    /// The first of cuDNN's heuristic results (best first) that it can run on `shape`, and its
    /// workspace size. cudarc's `ConvForward::pick_algorithm` takes result 0 whatever its status,
    /// and keeps its descriptors' raw handles to itself, so the query is made here on descriptors
    /// made alike (`QueryDescriptors`), with a handle of our own.
    fn pick_algorithm(&self, shape: &ConvShape) -> Result<(cudnnConvolutionFwdAlgo_t, usize)> {
        let d = QueryDescriptors::new(shape, self.math).map_err(dnn_error("algorithm query descriptors"))?;
        let mut results = [UNSET; FWD_ALGOS];
        let mut returned = 0;
        // SAFETY: the handle and the descriptors are alive for the call, and `results` has room
        // for the FWD_ALGOS results asked for.
        unsafe {
            raw::get_convolution_forward_algorithm(
                self.query,
                d.x,
                d.w,
                d.conv,
                d.y,
                FWD_ALGOS as i32,
                &mut returned,
                results.as_mut_ptr(),
            )
        }
        .map_err(dnn_error("algorithm heuristics"))?;
        let results = &results[..(returned.max(0) as usize).min(FWD_ALGOS)];
        // SAFETY: as above; the workspace size is written through cudarc's own out-pointer.
        let workspace =
            |algo| unsafe { raw::get_convolution_forward_workspace_size(self.query, d.x, d.w, d.conv, d.y, algo) }.ok();
        first_usable(results, workspace).ok_or_else(|| Error::device_failure(no_algorithm(shape, results)))
    }

    /// y = conv(x) + bias [+ residual], then ReLU, all in cuDNN when `spec.activation` is ReLU
    /// (cuDNN's fused call offers ReLU and identity, and identity only with one algorithm).
    /// Otherwise y = conv(x) alone and the caller applies the epilogue (`bias_act`); the return
    /// value says which happened.
    pub fn conv(&mut self, call: &ConvCall) -> Result<(CudaSlice<f32>, bool)> {
        self.bind()?;
        let fused = call.spec.activation == Activation::Relu;
        let len: usize = call.out.iter().product();
        let need = self.conv_entry(call)?.workspace;
        if self.workspace.as_ref().map_or(0, |w| w.len()) < need {
            self.workspace = Some(self.stream.alloc_zeros::<u8>(need).map_err(alloc_error)?);
        }
        if fused && call.residual.is_none() && self.zeros.as_ref().map_or(0, |z| z.len()) < len {
            self.zeros = Some(self.stream.alloc_zeros::<f32>(len).map_err(alloc_error)?);
        }
        // SAFETY: written in full by cuDNN below before anything reads it.
        let mut y = unsafe { self.stream.alloc::<f32>(len) }.map_err(alloc_error)?;
        let entry = &self.convs[&(*call.spec, call.x_dims)];
        let workspace = if need > 0 { self.workspace.as_mut() } else { None };
        // SAFETY: every buffer matches its descriptor: x is x_dims, the filter is the spec's
        // weight shape, bias is [out], y and z are `out` (checked by the caller, `zeros` is at
        // least that long and all zero).
        let result = unsafe {
            if fused {
                let (z, alpha2) = match call.residual {
                    Some(r) => (r, 1.0),
                    None => (self.zeros.as_ref().expect("allocated above"), 0.0),
                };
                ConvBiasActivationForward {
                    conv: &entry.conv,
                    act: &self.relu,
                    x: &entry.x,
                    w: &entry.w,
                    z: &entry.y,
                    bias: &entry.bias,
                    y: &entry.y,
                }
                .launch(
                    entry.algo,
                    workspace,
                    (1.0, alpha2),
                    call.x,
                    call.weight,
                    z,
                    call.bias,
                    &mut y,
                )
            } else {
                ConvForward { conv: &entry.conv, x: &entry.x, w: &entry.w, y: &entry.y }.launch(
                    entry.algo,
                    workspace,
                    (1.0, 0.0),
                    call.x,
                    call.weight,
                    &mut y,
                )
            }
        };
        result.map_err(dnn_error("convolution"))?;
        Ok((y, fused))
    }

    /// Max pooling; cuDNN's padded positions never win the max (-inf padding, as PyTorch).
    pub fn max_pool(
        &mut self,
        x: &CudaSlice<f32>,
        x_dims: [usize; 4],
        out: [usize; 4],
        (kernel, stride, padding): (usize, usize, usize),
    ) -> Result<CudaSlice<f32>> {
        self.bind()?;
        let key = (x_dims, kernel, stride, padding);
        if !self.pools.contains_key(&key) {
            let pool = self
                .handle
                .create_poolingnd::<f32>(
                    &[c_int(kernel); 2],
                    &[c_int(padding); 2],
                    &[c_int(stride); 2],
                    cudnnPoolingMode_t::CUDNN_POOLING_MAX,
                    cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                )
                .map_err(dnn_error("pooling descriptor"))?;
            let entry = PoolEntry { x: self.tensor(x_dims)?, y: self.tensor(out)?, pool };
            self.pools.insert(key, entry);
        }
        let entry = &self.pools[&key];
        // SAFETY: written in full by the pooling below.
        let mut y = unsafe { self.stream.alloc::<f32>(out.iter().product()) }.map_err(alloc_error)?;
        // SAFETY: x is x_dims and y is `out`, as their descriptors say.
        unsafe { PoolingForward { pooling: &entry.pool, x: &entry.x, y: &entry.y }.launch((1.0, 0.0), x, &mut y) }
            .map_err(dnn_error("max pooling"))?;
        Ok(y)
    }
}

impl Drop for Dnn {
    fn drop(&mut self) {
        // SAFETY: made in `new`, used only by this Dnn, destroyed once here. A failure to
        // destroy leaves nothing to do.
        let _ = unsafe { raw::destroy_handle(self.query) };
    }
}

/// A convolution's shape as cuDNN's descriptors take it.
struct ConvShape {
    x: [i32; 4],
    w: [i32; 4],
    y: [i32; 4],
    pad: [i32; 2],
    stride: i32,
    groups: i32,
}

impl ConvShape {
    fn of(call: &ConvCall) -> Self {
        ConvShape {
            x: call.x_dims.map(c_int),
            w: call.spec.weight_shape().map(c_int),
            y: call.out.map(c_int),
            pad: call.pad.map(c_int),
            stride: c_int(call.spec.stride),
            groups: c_int(call.spec.groups),
        }
    }
}

impl std::fmt::Display for ConvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let ConvShape { x, w, y, pad, stride, groups } = self;
        write!(f, "x {x:?} * w {w:?} (stride {stride}, padding {pad:?}, groups {groups}) -> y {y:?}")
    }
}

/// The most results cuDNN's heuristics give: one per forward algorithm.
const FWD_ALGOS: usize = cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;

/// A result slot before cuDNN writes it.
const UNSET: cudnnConvolutionFwdAlgoPerf_t = cudnnConvolutionFwdAlgoPerf_t {
    algo: cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    status: cudnnStatus_t::CUDNN_STATUS_NOT_INITIALIZED,
    time: 0.0,
    memory: 0,
    determinism: cudnnDeterminism_t::CUDNN_NON_DETERMINISTIC,
    mathType: cudnnMathType_t::CUDNN_DEFAULT_MATH,
    reserved: [0; 3],
};

/// The first result, in the heuristics' order, whose status is success and whose workspace
/// size `workspace` can tell: the algorithm and that size.
fn first_usable(
    results: &[cudnnConvolutionFwdAlgoPerf_t],
    mut workspace: impl FnMut(cudnnConvolutionFwdAlgo_t) -> Option<usize>,
) -> Option<(cudnnConvolutionFwdAlgo_t, usize)> {
    results
        .iter()
        .filter(|r| r.status == cudnnStatus_t::CUDNN_STATUS_SUCCESS)
        .find_map(|r| workspace(r.algo).map(|size| (r.algo, size)))
}

/// Why no algorithm was taken: the shape and what the heuristics said of each algorithm.
fn no_algorithm(shape: &ConvShape, results: &[cudnnConvolutionFwdAlgoPerf_t]) -> String {
    let said: Vec<String> = results
        .iter()
        .map(|r| {
            let algo = format!("{:?}", r.algo);
            format!("{} {:?}", algo.trim_start_matches("CUDNN_CONVOLUTION_FWD_ALGO_"), r.status)
        })
        .collect();
    format!(
        "cuDNN has no forward algorithm it can run for the convolution {shape}: its heuristics returned [{}], \
         none with a success status and a workspace size",
        said.join(", ")
    )
}

/// Raw descriptors made like a `ConvEntry`'s (the same `ConvShape` and math), for the algorithm
/// query alone; destroyed when dropped.
struct QueryDescriptors {
    x: cudnnTensorDescriptor_t,
    w: cudnnFilterDescriptor_t,
    conv: cudnnConvolutionDescriptor_t,
    y: cudnnTensorDescriptor_t,
}

impl QueryDescriptors {
    fn new(s: &ConvShape, math: cudnnMathType_t) -> std::result::Result<Self, CudnnError> {
        use std::ptr::null_mut;
        let mut d = QueryDescriptors { x: null_mut(), w: null_mut(), conv: null_mut(), y: null_mut() };
        d.x = raw::create_tensor_descriptor()?;
        d.y = raw::create_tensor_descriptor()?;
        d.w = raw::create_filter_descriptor()?;
        d.conv = raw::create_convolution_descriptor()?;
        let ([pad_h, pad_w], stride) = (s.pad, s.stride);
        // SAFETY: each descriptor was created just above, of the kind each call sets, and is
        // destroyed only when `d` drops.
        unsafe {
            raw::set_tensor4d_descriptor(d.x, NCHW, FLOAT, s.x)?;
            raw::set_tensor4d_descriptor(d.y, NCHW, FLOAT, s.y)?;
            raw::set_filter4d_descriptor(d.w, FLOAT, NCHW, s.w)?;
            raw::set_convolution2d_descriptor(d.conv, pad_h, pad_w, stride, stride, 1, 1, CROSS_CORRELATION, FLOAT)?;
            raw::set_convolution_math_type(d.conv, math)?;
            raw::set_convolution_group_count(d.conv, s.groups)?;
        }
        Ok(d)
    }
}

impl Drop for QueryDescriptors {
    fn drop(&mut self) {
        // SAFETY: each non-null descriptor was made in `new` and is destroyed once, here; a
        // failure to destroy leaves nothing to do.
        unsafe {
            if !self.x.is_null() {
                let _ = raw::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = raw::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = raw::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = raw::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

pub fn alloc_error(e: cudarc::driver::DriverError) -> Error {
    Error::device_failure(format!("CUDA allocation failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cudnn::sys::cudnnConvolutionFwdAlgo_t::*;
    use cudarc::cudnn::sys::cudnnStatus_t::*;

    fn result(algo: cudnnConvolutionFwdAlgo_t, status: cudnnStatus_t) -> cudnnConvolutionFwdAlgoPerf_t {
        cudnnConvolutionFwdAlgoPerf_t { algo, status, ..UNSET }
    }

    #[test]
    fn the_first_result_cudnn_can_run_is_taken() {
        let results = [
            result(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, CUDNN_STATUS_NOT_SUPPORTED),
            result(CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_STATUS_SUCCESS),
            result(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_STATUS_SUCCESS),
            result(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_STATUS_SUCCESS),
        ];
        // Result 0 is not supported; FFT is, but its workspace size cannot be had.
        let mut asked = Vec::new();
        let workspace = |algo| {
            asked.push(algo);
            (algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT).then_some(4096)
        };
        assert_eq!(first_usable(&results, workspace), Some((CUDNN_CONVOLUTION_FWD_ALGO_GEMM, 4096)));
        assert_eq!(asked, [CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_CONVOLUTION_FWD_ALGO_GEMM]);
    }

    #[test]
    fn no_usable_result_is_none_and_the_error_names_the_shape() {
        let results = [
            result(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_STATUS_NOT_SUPPORTED),
            result(CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_STATUS_SUCCESS),
        ];
        assert_eq!(first_usable(&results, |_| None), None);
        assert_eq!(first_usable(&[], |_| Some(0)), None);
        let shape = ConvShape {
            x: [1, 3, 226, 226],
            w: [32, 3, 3, 3],
            y: [1, 32, 112, 112],
            pad: [0, 0],
            stride: 2,
            groups: 1,
        };
        let e = no_algorithm(&shape, &results);
        assert!(
            e.contains(
                "x [1, 3, 226, 226] * w [32, 3, 3, 3] (stride 2, padding [0, 0], groups 1) -> y [1, 32, 112, 112]"
            ),
            "{e}"
        );
        assert!(e.contains("[IMPLICIT_GEMM CUDNN_STATUS_NOT_SUPPORTED, DIRECT CUDNN_STATUS_SUCCESS]"), "{e}");
    }
}
