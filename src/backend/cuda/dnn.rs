//! cuDNN: convolutions (with the bias, residual and ReLU fused where cuDNN offers it) and max
//! pooling. Descriptors and the algorithm are made once per (convolution, input shape) and
//! cached; one workspace grows to the largest need and is reused.

use crate::backend::{Activation, ConvSpec};
use crate::error::{Error, Result};
use cudarc::cudnn::sys::{
    cudnnActivationMode_t, cudnnConvolutionFwdAlgo_t, cudnnConvolutionMode_t, cudnnMathType_t, cudnnNanPropagation_t,
    cudnnPoolingMode_t, cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ActivationDescriptor, ConvBiasActivationForward, ConvDescriptor, ConvForward, Cudnn, CudnnError, FilterDescriptor,
    PoolingDescriptor, PoolingForward, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

const NCHW: cudnnTensorFormat_t = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;

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
        Ok(Dnn {
            handle,
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
            let s = call.spec;
            let x = self.tensor(call.x_dims)?;
            let y = self.tensor(call.out)?;
            let bias = self.tensor([1, s.out_channels, 1, 1])?;
            let w = self
                .handle
                .create_4d_filter::<f32>(NCHW, s.weight_shape().map(c_int))
                .map_err(dnn_error("filter descriptor"))?;
            let mut conv = self
                .handle
                .create_conv2d::<f32>(
                    call.pad.map(c_int),
                    [c_int(s.stride); 2],
                    [1, 1],
                    cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(dnn_error("convolution descriptor"))?;
            conv.set_math_type(self.math).map_err(dnn_error("math type"))?;
            conv.set_group_count(c_int(s.groups)).map_err(dnn_error("group count"))?;
            let forward = ConvForward { conv: &conv, x: &x, w: &w, y: &y };
            let algo = forward.pick_algorithm().map_err(dnn_error("algorithm choice"))?;
            let workspace = forward.get_workspace_size(algo).map_err(dnn_error("workspace size"))?;
            self.convs.insert(key, ConvEntry { x, w, y, bias, conv, algo, workspace });
        }
        Ok(&self.convs[&key])
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

pub fn alloc_error(e: cudarc::driver::DriverError) -> Error {
    Error::device_failure(format!("CUDA allocation failed: {e}"))
}
