//! The CUDA backend proper: one context, one stream, our kernels and cuDNN. Everything between
//! `upload` and the small results of `knn`, `coreset`, `score` and `anomaly_map` stays on the device
//! and is ordered by the stream alone, so no call waits for the GPU except those that return data.
//! `transfer_counts` says how often that was.

use super::dnn::{alloc_error, ConvCall, Dnn};
use super::kernels::Kernels;
use super::launch::{
    conv_plan, coreset_config, fits_i32, grid_stride, knn_plan, norms_config, one_block_per_image, preprocess_runs,
    ExplicitPad, PreprocessRun, BLOCK, GRID_CAP, MAX_BLUR_RADIUS,
};
use super::launch::{coreset_scan_config, CORESET_PROJ};
use super::probe::unwind_to_unavailable;
use super::{probe, TransferCounts};
use crate::backend::checks::{
    conv_output, coreset_args, embed_args, knn_args, map_args, pool_output, preprocess_args, score_args,
};
use crate::backend::cpu::gaussian_taps;
use crate::backend::cpu::{bound_tolerance, distance_eps, prune_factor, Subspace, PROJ};
use crate::backend::{flops, traced, Activation, Backend, BatchScores, ConvSpec, ConvWeights, HostRows, Precision};
use crate::data::image::Preprocess;
use crate::error::{Error, Result};
use crate::tensor::{dims, Tensor};
use crate::trace;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, DriverError, PinnedHostSlice,
    PushKernelArg,
};
use half::f16;
use image::RgbImage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// An activation or a rows x dims matrix in device memory.
pub struct CudaTensor {
    shape: Vec<usize>,
    data: CudaSlice<f32>,
}

impl CudaTensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// A convolution's folded weights and bias in device memory.
pub struct CudaConv {
    spec: ConvSpec,
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

/// The memory bank: its f32 rows, their f16 copy in f16 precision (what the distance kernel then
/// reads), and the squared norms of the rows as that precision's products see them.
/// The f32 rows stay in f16 precision too: `score` gathers m* and computes Eq. 7 from them, so that
/// the reweighting is exact f32 and only the searches are f16. That is 4 bytes a bank value more
/// than the f16 rows alone (131 MB for a 21,401 x 1,536 bank), which a GPU that holds the model has.
pub struct CudaBank {
    /// The rows on the host, as `prepare_bank` got them (`HostRows`).
    host: Tensor,
    rows: usize,
    dims: usize,
    f32_rows: CudaSlice<f32>,
    f16_rows: Option<CudaSlice<f16>>,
    norms: CudaSlice<f32>,
}

/// Which precision's row kernels of coreset.cu a selection runs: the rows are f32 or f16.
#[derive(Clone, Copy)]
enum CoresetKernels {
    F32,
    F16,
}

/// The row kernels of one precision.
struct CoresetRowKernels<'a> {
    project: &'a CudaFunction,
    init: &'a CudaFunction,
    reach: &'a CudaFunction,
    distance: &'a CudaFunction,
}

impl CoresetKernels {
    fn of(self, k: &Kernels) -> CoresetRowKernels<'_> {
        match self {
            CoresetKernels::F32 => CoresetRowKernels {
                project: &k.coreset_project_f32,
                init: &k.coreset_init_f32,
                reach: &k.coreset_reach_f32,
                distance: &k.coreset_distance_f32,
            },
            CoresetKernels::F16 => CoresetRowKernels {
                project: &k.coreset_project_f16,
                init: &k.coreset_init_f16,
                reach: &k.coreset_reach_f16,
                distance: &k.coreset_distance_f16,
            },
        }
    }
}

/// The host's projection width (the CPU's bounds) is the one coreset.cu is compiled for.
const _: () = assert!(CORESET_PROJ == PROJ);

/// The backend's host synchronisations and copies, counted where they happen (`transfer_counts`).
#[derive(Default)]
struct Transfers {
    synchronizations: AtomicU64,
    copies_to_device: AtomicU64,
    copies_to_host: AtomicU64,
}

impl Transfers {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Page-locked host memory that a batch's 8-bit pixels are packed into, so that their copy to the
/// device is one DMA that runs while the host goes on queuing work (from pageable memory the
/// driver would first copy them itself, synchronously). Kept between batches and grown to the
/// largest, because pinning is a slow driver call. `copied` is recorded after each copy and waited
/// for before the buffer is written again: the backend turned off cudarc's event tracking, which
/// would otherwise do that for a `PinnedHostSlice`.
struct Staging {
    pixels: Option<PinnedHostSlice<u8>>,
    copied: CudaEvent,
}

impl Drop for Staging {
    /// A copy still reading the buffer finishes before the buffer is unpinned and freed.
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
    }
}

pub struct CudaBackend {
    ordinal: usize,
    name: String,
    sm_count: usize,
    precision: Precision,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    dnn: Mutex<Dnn>,
    staging: Mutex<Staging>,
    transfers: Transfers,
    /// Device time of traced operations (CUDA events).
    clock: super::events::StreamClock,
    // Dropped last: the context outlives every buffer and module made in it.
    _ctx: Arc<CudaContext>,
}

fn driver_error(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::device_failure(format!("CUDA {what}: {e}"))
}

/// A panic inside a cuDNN call (caught by a C host's guard, or a thread's join) poisons the
/// lock: the handle's descriptors may be half made, so the backend is not trusted again.
fn poisoned_dnn<T>(_: T) -> Error {
    Error::device_failure("an earlier cuDNN call panicked: open the backend again (reload the model)")
}

/// The kernel parameter for an absent pointer (`residual` of `bias_act`).
const NULL: u64 = 0;

/// Every buffer comes from the device's stream-ordered pool (cuMemAllocAsync); by default the
/// pool hands freed memory back to the driver at each synchronisation, so the next batch's
/// buffers are allocated afresh. With no release threshold the pool keeps it for reuse, the
/// way PyTorch's caching allocator does; the memory goes back when the backend is dropped.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys::{cuDeviceGetDefaultMemPool, cuMemPoolSetAttribute, CUmemPool_attribute};
    let mut pool = std::mem::MaybeUninit::uninit();
    // SAFETY: a valid device of a live context; the driver writes the pool handle.
    unsafe { cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()) }
        .result()
        .map_err(driver_error("default memory pool"))?;
    let mut threshold = u64::MAX;
    // SAFETY: the pool was just returned by the driver; RELEASE_THRESHOLD takes a cuuint64_t.
    unsafe {
        cuMemPoolSetAttribute(
            pool.assume_init(),
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(driver_error("memory pool release threshold"))
}

impl CudaBackend {
    /// Device `ordinal`, after `probe` has confirmed the driver, the libraries and the device.
    /// A panic of cudarc's on the way (a library without a function it calls) is
    /// `CudaUnavailable` naming it, not a crash.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        unwind_to_unavailable(|| Self::open(ordinal, precision))
    }

    fn open(ordinal: usize, precision: Precision) -> Result<Self> {
        if precision == Precision::Bf16 {
            return Err(Error::option(
                "--precision",
                "bf16 is the CPU's (AMX or AVX512-BF16); the GPU takes f32, tf32 or f16",
            ));
        }
        probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(driver_error("context"))?;
        // SAFETY: the backend uses one stream, so the stream alone orders every use of every
        // buffer; cudarc's cross-stream events would only add a record/wait per launch.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_error("stream"))?;
        if ctx.has_async_alloc() {
            keep_freed_memory(&ctx)?;
        }
        let kernels = Kernels::load(&ctx)?;
        let dnn = Dnn::new(stream.clone(), precision != Precision::F32)?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_error("device attribute"))? as usize;
        let name = ctx.name().map_err(driver_error("device name"))?;
        let copied = ctx.new_event(None).map_err(driver_error("event"))?;
        let staging = Mutex::new(Staging { pixels: None, copied });
        Ok(CudaBackend {
            ordinal,
            name,
            sm_count,
            precision,
            stream,
            kernels,
            dnn: Mutex::new(dnn),
            staging,
            transfers: Transfers::default(),
            clock: Default::default(),
            _ctx: ctx,
        })
    }

    /// The stream every operation runs on (benches time it and put cuBLAS on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// How often this backend has waited for the GPU and copied between host and device so far.
    pub fn transfer_counts(&self) -> TransferCounts {
        let t = &self.transfers;
        TransferCounts {
            synchronizations: t.synchronizations.load(Ordering::Relaxed),
            copies_to_device: t.copies_to_device.load(Ordering::Relaxed),
            copies_to_host: t.copies_to_host.load(Ordering::Relaxed),
        }
    }

    /// Waits for everything queued so far.
    fn synchronize(&self) -> Result<()> {
        Transfers::count(&self.transfers.synchronizations);
        self.stream.synchronize().map_err(driver_error("synchronize"))
    }

    /// `host` queued for copying to a new device buffer.
    fn to_device<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Transfers::count(&self.transfers.copies_to_device);
        self.stream.clone_htod(host).map_err(driver_error("copy to device"))
    }

    fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller's kernel writes all `len` elements before anything reads them.
        unsafe { self.stream.alloc::<T>(len) }.map_err(alloc_error)
    }

    fn download_vec<T: DeviceRepr>(&self, data: &CudaSlice<T>) -> Result<Vec<T>> {
        Transfers::count(&self.transfers.copies_to_host);
        let host = self.stream.clone_dtoh(data).map_err(driver_error("copy to host"))?;
        self.synchronize()?;
        Ok(host)
    }

    /// The images' pixels, one image after another, queued for copying to the device through the
    /// pinned staging buffer (see `Staging`).
    fn upload_pixels(&self, images: &[RgbImage]) -> Result<CudaSlice<u8>> {
        let total: usize = images.iter().map(|img| img.as_raw().len()).sum();
        // A panic while packing leaves only bytes in the buffer, which the next batch overwrites.
        let mut staging = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
        Transfers::count(&self.transfers.synchronizations);
        staging.copied.synchronize().map_err(driver_error("synchronize"))?;
        if staging.pixels.as_ref().is_none_or(|p| p.len() < total) {
            // The smaller buffer is unpinned before the larger one is pinned.
            staging.pixels = None;
            // SAFETY: the bytes are written below before the copy reads them.
            let pinned = unsafe { self.stream.context().alloc_pinned::<u8>(total) };
            staging.pixels = Some(pinned.map_err(driver_error("pinned allocation"))?);
        }
        let pinned = staging.pixels.as_mut().expect("allocated above");
        let host = &mut pinned.as_mut_slice().map_err(driver_error("pinned memory"))?[..total];
        let mut at = 0;
        for img in images {
            let raw = img.as_raw();
            host[at..at + raw.len()].copy_from_slice(raw);
            at += raw.len();
        }
        let mut pixels = self.alloc::<u8>(total)?;
        // Passed as a plain slice, of the packed bytes only: cudarc then neither waits nor records,
        // and the driver, seeing page-locked memory, copies asynchronously; `copied` guards reuse.
        Transfers::count(&self.transfers.copies_to_device);
        self.stream.memcpy_htod(&*host, &mut pixels).map_err(driver_error("copy to device"))?;
        staging.copied.record(&self.stream).map_err(driver_error("event record"))?;
        Ok(pixels)
    }

    /// preprocess.cu's two launches for one run of same-size images, writing its images of `out`.
    fn preprocess_run(
        &self,
        pixels: &CudaSlice<u8>,
        run: &PreprocessRun,
        preprocess: &Preprocess,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let side = preprocess.input_size();
        // A few KB from pageable memory: the driver stages them at once, nothing to overlap.
        let col_starts = self.to_device(&run.cols.starts)?;
        let col_weights = self.to_device(&run.cols.weights)?;
        let row_starts = self.to_device(&run.rows.starts)?;
        let row_weights = self.to_device(&run.rows.weights)?;
        let mut tmp = self.alloc::<f32>(run.images * 3 * run.height * side)?;
        let [images, h, w, side, col_taps, row_taps, first] =
            [run.images, run.height, run.width, side, run.cols.taps, run.rows.taps, run.first].map(|v| v as i32);
        let pixel_offset = run.pixel_offset as i64;
        // SAFETY: preprocess_rows's contract (kernels/preprocess.cu): pixels holds this run's
        // images x h x w x 3 bytes from pixel_offset, the column table is side x col_taps with every
        // tap inside the width (resample_table), tmp is images x 3 x h x side.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.preprocess_rows);
            launch.arg(pixels).arg(&pixel_offset).arg(&images).arg(&h).arg(&w).arg(&side);
            launch.arg(&col_starts).arg(&col_weights).arg(&col_taps).arg(&mut tmp).launch(run.horizontal)
        }
        .map_err(driver_error("preprocess_rows launch"))?;
        let [m0, m1, m2] = preprocess.mean;
        let [s0, s1, s2] = preprocess.std;
        // SAFETY: preprocess_cols's contract: tmp as above, the row table side x row_taps with every
        // tap inside the height, out holds images first..first + images of side x side x 3 planes.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.preprocess_cols);
            launch.arg(&tmp).arg(&images).arg(&h).arg(&side).arg(&side);
            launch.arg(&row_starts).arg(&row_weights).arg(&row_taps);
            launch.arg(&m0).arg(&m1).arg(&m2).arg(&s0).arg(&s1).arg(&s2);
            launch.arg(&first).arg(out).launch(run.vertical)
        }
        .map_err(driver_error("preprocess_cols launch"))?;
        Ok(())
    }

    /// Copies an NCHW tensor into a zero-padded buffer (TF-same's asymmetric padding).
    fn pad(&self, x: &CudaSlice<f32>, [b, c, h, w]: [usize; 4], e: ExplicitPad) -> Result<CudaSlice<f32>> {
        let total = b * c * e.height * e.width;
        fits_i32("pad", &[total])?;
        let mut out = self.alloc::<f32>(total)?;
        let (planes, h, w, top, left, ph, pw) =
            ((b * c) as i32, h as i32, w as i32, e.top as i32, e.left as i32, e.height as i32, e.width as i32);
        let f = &self.kernels.pad_nchw;
        // SAFETY: pad_nchw's contract (kernels/conv.cu): x is planes x h x w, out planes x ph x pw.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(x)
                .arg(&planes)
                .arg(&h)
                .arg(&w)
                .arg(&top)
                .arg(&left)
                .arg(&ph)
                .arg(&pw)
                .arg(&mut out)
                .launch(grid_stride(total, GRID_CAP, 0))
        }
        .map_err(driver_error("pad_nchw launch"))?;
        Ok(out)
    }

    /// y = activation(y + bias + residual) in place: the epilogue cuDNN could not fuse.
    fn bias_act(
        &self,
        y: &mut CudaSlice<f32>,
        conv: &CudaConv,
        residual: Option<&CudaTensor>,
        out: [usize; 4],
    ) -> Result<()> {
        let [b, c, h, w] = out;
        let act: i32 = match conv.spec.activation {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Relu6 => 2,
        };
        let (b, c, hw) = (b as i32, c as i32, (h * w) as i32);
        let f = &self.kernels.bias_act;
        // SAFETY: bias_act's contract (kernels/conv.cu): y and residual are b x c x hw, bias c;
        // a null residual is skipped.
        unsafe {
            let mut launch = self.stream.launch_builder(f);
            launch.arg(y).arg(&conv.bias);
            match residual {
                Some(r) => launch.arg(&r.data),
                None => launch.arg(&NULL),
            };
            launch.arg(&b).arg(&c).arg(&hw).arg(&act).launch(grid_stride(out.iter().product(), GRID_CAP, 0))
        }
        .map_err(driver_error("bias_act launch"))?;
        Ok(())
    }

    /// One squared norm per row, accumulated in f64 like the CPU's `squared_norms`, of the rows
    /// as this precision's distance products see them (rounded to tf32 or f16), so that a row's
    /// distance to itself cancels to 0 (kernels/knn.cu).
    fn row_norms(&self, rows: &CudaSlice<f32>, n: usize, d: usize) -> Result<CudaSlice<f32>> {
        let mut norms = self.alloc::<f32>(n)?;
        let (n32, d32) = (n as i32, d as i32);
        let kernel = match self.precision {
            // Bf16 never reaches a CudaBackend: `open` refuses it.
            Precision::F32 | Precision::Bf16 => &self.kernels.squared_norms_f32,
            Precision::Tf32 => &self.kernels.squared_norms_tf32,
            Precision::F16 => &self.kernels.squared_norms_f16,
        };
        // SAFETY: squared_norms_*'s contract (kernels/knn.cu): rows is n x d, norms n.
        unsafe {
            self.stream.launch_builder(kernel).arg(rows).arg(&n32).arg(&d32).arg(&mut norms).launch(norms_config(n))
        }
        .map_err(driver_error("squared_norms launch"))?;
        Ok(norms)
    }

    /// The pruned greedy k-center selection (kernels/coreset.cu's header has the order and the proofs)
    /// on `rows`, the f32 tensor `tensor` or its f16 copy; the selection stays on the device.
    fn coreset_on_device<T: DeviceRepr>(
        &self,
        rows: &CudaSlice<T>,
        tensor: &CudaTensor,
        n_select: usize,
        start: usize,
        kernels: CoresetKernels,
    ) -> Result<CudaSlice<u32>> {
        let [n, d] = dims::<2>(&tensor.shape)?;
        let k = kernels.of(&self.kernels);
        // The subspace of the projected bound, estimated on the host as the CPU estimates it, from the
        // same sample of the f32 rows (any subspace keeps the bounds sound; see coreset.rs `Subspace`).
        let sample = self.gather_rows(&tensor.data, &Subspace::sample(n).map(|i| i as u32).collect::<Vec<_>>(), d)?;
        let subspace = Subspace::estimate(&sample, d);
        let eps = distance_eps(d);
        let factor = prune_factor(eps);
        let bound = self.to_device(&[bound_tolerance(eps), subspace.sigma, subspace.slack_per_radius(d)])?;
        let mean = self.to_device(&subspace.mean)?;
        let basis = self.to_device(&subspace.basis)?;
        let zeros = |len: usize| self.stream.alloc_zeros::<u64>(len).map_err(alloc_error);
        let (mut radius_sq, mut far, mut best) = (zeros(1)?, zeros(n_select + 1)?, zeros(1)?);
        let mut proj = self.alloc::<f64>(n * CORESET_PROJ)?;
        let mut min_dist = self.alloc::<f32>(n)?;
        let mut owner = self.alloc::<u32>(n)?;
        let mut reach = self.alloc::<f32>(n_select)?;
        let mut candidates = self.alloc::<u32>(n)?;
        let mut count = self.stream.alloc_zeros::<u32>(1).map_err(alloc_error)?;
        let mut selected = self.alloc::<u32>(n_select)?;
        let (n32, d32, start32) = (n as i32, d as i32, start as u32);
        let rows_config = coreset_config(n, d, self.sm_count)?;
        // SAFETY (every launch below): the contracts in kernels/coreset.cu's header: rows n x d, proj
        // n x CORESET_PROJ, min_dist, owner and candidates n, far n_select + 1 (clusters 0..=step + 1),
        // reach and selected n_select, mean d, basis d x CORESET_PROJ, bound 3; far, best, count and
        // radius_sq zeroed above; the grids are coreset_config's and coreset_scan_config's.
        unsafe {
            let mut l = self.stream.launch_builder(k.project);
            l.arg(rows).arg(&n32).arg(&d32).arg(&mean).arg(&basis).arg(&mut proj).arg(&mut radius_sq);
            l.launch(rows_config)
        }
        .map_err(driver_error("coreset_project launch"))?;
        unsafe {
            let mut l = self.stream.launch_builder(k.init);
            l.arg(rows).arg(&n32).arg(&d32).arg(&start32).arg(&mut min_dist).arg(&mut owner).arg(&mut far);
            l.launch(rows_config)
        }
        .map_err(driver_error("coreset_init launch"))?;
        // Four launches per selection, queued without waiting: each reads what the one before wrote.
        for step in 0..n_select {
            let (s32, clusters) = (step as i32, step as i32 + 1);
            unsafe {
                let mut l = self.stream.launch_builder(&self.kernels.coreset_pick);
                l.arg(&far).arg(&clusters).arg(&mut best).arg(&mut count);
                l.launch(coreset_scan_config(step + 1, self.sm_count))
            }
            .map_err(driver_error("coreset_pick launch"))?;
            unsafe {
                let mut l = self.stream.launch_builder(k.reach);
                l.arg(rows).arg(&d32).arg(&start32).arg(&s32).arg(&mut selected).arg(&best).arg(&proj);
                l.arg(&bound).arg(&radius_sq).arg(&factor).arg(&mut far).arg(&mut reach);
                l.launch(coreset_config(step + 1, d, self.sm_count)?)
            }
            .map_err(driver_error("coreset_reach launch"))?;
            unsafe {
                let mut l = self.stream.launch_builder(&self.kernels.coreset_filter);
                l.arg(&n32).arg(&s32).arg(&selected).arg(&owner).arg(&min_dist).arg(&reach).arg(&proj);
                l.arg(&bound).arg(&radius_sq).arg(&factor).arg(&mut far).arg(&mut best).arg(&mut candidates);
                l.arg(&mut count).launch(coreset_scan_config(n, self.sm_count))
            }
            .map_err(driver_error("coreset_filter launch"))?;
            unsafe {
                let mut l = self.stream.launch_builder(k.distance);
                l.arg(rows).arg(&d32).arg(&s32).arg(&selected).arg(&candidates).arg(&count);
                l.arg(&mut min_dist).arg(&mut owner).arg(&mut far).launch(rows_config)
            }
            .map_err(driver_error("coreset_distance launch"))?;
        }
        Ok(selected)
    }

    /// `rows` of the n x d matrix `src`, gathered on the device and downloaded in one copy.
    fn gather_rows(&self, src: &CudaSlice<f32>, rows: &[u32], d: usize) -> Result<Vec<f32>> {
        let indices = self.to_device(rows)?;
        let mut dst = self.alloc::<f32>(rows.len() * d)?;
        let (m32, d32) = (rows.len() as i32, d as i32);
        // SAFETY: gather_rows's contract (kernels/score.cu): every index names a row of src, dst is
        // rows.len() x d; grid-stride.
        unsafe {
            let mut l = self.stream.launch_builder(&self.kernels.gather_rows);
            l.arg(src).arg(&indices).arg(&m32).arg(&d32).arg(&mut dst);
            l.launch(grid_stride(rows.len() * d, GRID_CAP, 0))
        }
        .map_err(driver_error("gather_rows launch"))?;
        self.download_vec(&dst)
    }

    fn to_f16(&self, src: &CudaSlice<f32>) -> Result<CudaSlice<f16>> {
        let n = src.len();
        let mut dst = self.alloc::<f16>(n)?;
        let n64 = n as i64;
        // SAFETY: to_f16's contract (kernels/knn.cu): n elements each side, grid-stride.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.to_f16)
                .arg(src)
                .arg(&mut dst)
                .arg(&n64)
                .launch(grid_stride(n, 4096, 0))
        }
        .map_err(driver_error("to_f16 launch"))?;
        Ok(dst)
    }

    /// `knn`'s search, its results left on the device: (distances, bank rows), each nq x k, for nq >= 1
    /// `queries` of the bank's width, and k as `knn_args` allows.
    fn knn_on_device(
        &self,
        queries: &CudaSlice<f32>,
        nq: usize,
        bank: &CudaBank,
        k: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<u32>)> {
        let d = bank.dims;
        let kernel = self.knn_kernel(k);
        let per_sm = kernel
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK, 0, None)
            .map_err(driver_error("knn occupancy"))? as usize;
        let plan = knn_plan(nq, bank.rows, d, k, per_sm * self.sm_count)?;
        let q_norms = self.row_norms(queries, nq, d)?;
        let mut cand_d = self.alloc::<f32>(nq * plan.per_query)?;
        let mut cand_i = self.alloc::<u32>(nq * plan.per_query)?;
        let ints = [nq, bank.rows, d, k, plan.chunk].map(|v| v as i32);
        let [nq32, m32, d32, k32, chunk32] = ints;
        let queries16 = match bank.f16_rows {
            Some(_) => Some(self.to_f16(queries)?),
            None => None,
        };
        // SAFETY: knn.cu's partial contract: queries nq x d (f16 when the bank is), q_norms nq,
        // bank m x d, norms m, and nq x per_query candidate slots each side.
        unsafe {
            let mut launch = self.stream.launch_builder(kernel);
            match (&queries16, &bank.f16_rows) {
                (Some(q), Some(rows)) => launch.arg(q).arg(&q_norms).arg(&nq32).arg(rows),
                (None, None) => launch.arg(queries).arg(&q_norms).arg(&nq32).arg(&bank.f32_rows),
                _ => unreachable!("queries16 exists exactly when the bank is f16"),
            };
            launch.arg(&bank.norms).arg(&m32).arg(&d32).arg(&k32).arg(&chunk32).arg(&mut cand_d).arg(&mut cand_i);
            launch.launch(plan.partial)
        }
        .map_err(driver_error("knn partial launch"))?;
        let mut out_d = self.alloc::<f32>(nq * k)?;
        let mut out_i = self.alloc::<u32>(nq * k)?;
        let per_query = plan.per_query as i32;
        // SAFETY: knn_merge's contract: nq x per_query candidates in, nq x k results out.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.knn_merge)
                .arg(&cand_d)
                .arg(&cand_i)
                .arg(&nq32)
                .arg(&per_query)
                .arg(&k32)
                .arg(&mut out_d)
                .arg(&mut out_i)
                .launch(plan.merge)
        }
        .map_err(driver_error("knn merge launch"))?;
        Ok((out_d, out_i))
    }

    /// blur.cu's two passes: the patch-score grids `[b, h, w]` on the device -> nearest upsample to
    /// `out_h x out_w` -> Gaussian blur (reflect padding) -> `out`, b x out_h x out_w.
    fn blur_on_device(
        &self,
        grids: &CudaSlice<f32>,
        [b, h, w]: [usize; 3],
        [out_h, out_w]: [usize; 2],
        sigma: f32,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let taps = gaussian_taps(sigma);
        let radius = taps.len() / 2;
        if radius > MAX_BLUR_RADIUS {
            return Err(Error::invalid_backend_input(format!(
                "anomaly_map: sigma {sigma} needs a {radius}-pixel radius; the CUDA blur takes at most {MAX_BLUR_RADIUS}"
            )));
        }
        let total = b * out_h * out_w;
        fits_i32("anomaly_map", &[total, b * h * w])?;
        let taps_d = self.to_device(&taps)?;
        let mut tmp = self.alloc::<f32>(total)?;
        let config = grid_stride(total, GRID_CAP, (taps.len() * 4) as u32);
        let [b32, h32, w32, oh32, ow32, r32] = [b, h, w, out_h, out_w, radius].map(|v| v as i32);
        // SAFETY: blur.cu's contract: grids b x h x w, taps 2 * radius + 1 (in the dynamic shared
        // memory the config reserves), tmp and out b x out_h x out_w.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.blur_rows);
            launch.arg(grids).arg(&b32).arg(&h32).arg(&w32).arg(&oh32).arg(&ow32).arg(&taps_d).arg(&r32);
            launch.arg(&mut tmp).launch(config)
        }
        .map_err(driver_error("blur_rows launch"))?;
        // SAFETY: as above.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.blur_cols);
            launch.arg(&tmp).arg(&b32).arg(&oh32).arg(&ow32).arg(&taps_d).arg(&r32).arg(out).launch(config)
        }
        .map_err(driver_error("blur_cols launch"))?;
        Ok(())
    }

    /// The partial top-k kernel for this precision and k (`_k1` for k = 1, `_k16` up to 16).
    fn knn_kernel(&self, k: usize) -> &CudaFunction {
        let kernels = &self.kernels;
        match (self.precision, k == 1) {
            // Bf16 never reaches a CudaBackend: `open` refuses it.
            (Precision::F32 | Precision::Bf16, true) => &kernels.knn_partial_f32_k1,
            (Precision::F32 | Precision::Bf16, false) => &kernels.knn_partial_f32_k16,
            (Precision::Tf32, true) => &kernels.knn_partial_tf32_k1,
            (Precision::Tf32, false) => &kernels.knn_partial_tf32_k16,
            (Precision::F16, true) => &kernels.knn_partial_f16_k1,
            (Precision::F16, false) => &kernels.knn_partial_f16_k16,
        }
    }
}

impl CudaBackend {
    /// `Backend::score` on the device, for arguments `score_args` has checked ([B, h, w, d]).
    fn score_on_device(
        &self,
        embedding: &CudaTensor,
        bank: &CudaBank,
        [b, h, w, d]: [usize; 4],
        num_neighbors: usize,
        map_size: [usize; 2],
        sigma: f32,
    ) -> Result<BatchScores> {
        let map_len = b * map_size[0] * map_size[1];
        fits_i32("score", &[2 * b + map_len])?;
        let (distances, nearest) = self.knn_on_device(&embedding.data, b * h * w, bank, 1)?;
        // [scores | largest patch distances | maps], one buffer so that one copy brings it all back.
        let mut results = self.alloc::<f32>(2 * b + map_len)?;
        let (mut scores, mut rest) = results.split_at_mut(b);
        let (mut max_distance, mut maps) = rest.split_at_mut(b);
        let mut top_rows = self.alloc::<u32>(b)?;
        let mut m_star = self.alloc::<u32>(b)?;
        let [b32, per_image, d32, k32] = [b, h * w, d, num_neighbors].map(|v| v as i32);
        // SAFETY: top_patch's contract (kernels/score.cu): distances and nearest are b x per_image (the
        // k = 1 search above), top_rows, m_star and max_distance b each; one block per image.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.top_patch);
            launch.arg(&distances).arg(&nearest).arg(&b32).arg(&per_image);
            launch.arg(&mut top_rows).arg(&mut m_star).arg(&mut max_distance).launch(one_block_per_image(b))
        }
        .map_err(driver_error("top_patch launch"))?;
        // The support sets N_b(m*): the bank rows nearest to each image's m*, m* first.
        let support = if num_neighbors > 1 {
            let mut m_star_rows = self.alloc::<f32>(b * d)?;
            // SAFETY: gather_rows's contract: the bank is rows x d and every m_star names one of its rows
            // (a search result), m_star_rows is b x d; grid-stride.
            unsafe {
                let mut launch = self.stream.launch_builder(&self.kernels.gather_rows);
                launch.arg(&bank.f32_rows).arg(&m_star).arg(&b32).arg(&d32).arg(&mut m_star_rows);
                launch.launch(grid_stride(b * d, GRID_CAP, 0))
            }
            .map_err(driver_error("gather_rows launch"))?;
            Some(self.knn_on_device(&m_star_rows, b, bank, num_neighbors)?.1)
        } else {
            None
        };
        // SAFETY: eq7_scores's contract: the embedding is (b * per_image) x d and top_rows name its rows,
        // the bank rows x d with support b x k of its rows (absent, a null pointer, only for k = 1),
        // max_distance and scores b each; one block per image.
        unsafe {
            let mut launch = self.stream.launch_builder(&self.kernels.eq7_scores);
            launch.arg(&embedding.data).arg(&top_rows).arg(&bank.f32_rows);
            match &support {
                Some(rows) => launch.arg(rows),
                None => launch.arg(&NULL),
            };
            let max_distance = max_distance.slice(..);
            launch.arg(&max_distance).arg(&b32).arg(&d32).arg(&k32).arg(&mut scores).launch(one_block_per_image(b))
        }
        .map_err(driver_error("eq7_scores launch"))?;
        self.blur_on_device(&distances, [b, h, w], map_size, sigma, &mut maps)?;
        let host = self.download_vec(&results)?;
        let (scores, rest) = host.split_at(b);
        let (max_patch_distances, maps) = rest.split_at(b);
        Ok(BatchScores {
            scores: scores.to_vec(),
            max_patch_distances: max_patch_distances.to_vec(),
            maps: Tensor::new(vec![b, map_size[0], map_size[1]], maps.to_vec()),
        })
    }
}

impl HostRows for CudaBank {
    fn host_rows(&self) -> &Tensor {
        &self.host
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Conv = CudaConv;
    type Bank = CudaBank;

    fn describe(&self) -> String {
        format!("cuda:{} {} ({} SMs, {:?})", self.ordinal, self.name, self.sm_count, self.precision)
    }

    fn upload(&self, tensor: &Tensor) -> Result<CudaTensor> {
        Ok(CudaTensor { shape: tensor.shape.clone(), data: self.to_device(&tensor.data)? })
    }

    fn preprocess(&self, images: &[RgbImage], preprocess: &Preprocess) -> Result<CudaTensor> {
        preprocess_args(images)?;
        let sizes: Vec<(u32, u32)> = images.iter().map(RgbImage::dimensions).collect();
        let runs = preprocess_runs(&sizes, preprocess)?;
        let pixels = self.upload_pixels(images)?;
        let side = preprocess.input_size();
        // Every element is written: the runs tile the batch's images.
        let mut out = self.alloc::<f32>(images.len() * 3 * side * side)?;
        for run in &runs {
            self.preprocess_run(&pixels, run, preprocess, &mut out)?;
        }
        Ok(CudaTensor { shape: vec![images.len(), 3, side, side], data: out })
    }

    fn download(&self, tensor: &CudaTensor) -> Result<Tensor> {
        Ok(Tensor::new(tensor.shape.clone(), self.download_vec(&tensor.data)?))
    }

    fn shape<'a>(&self, tensor: &'a CudaTensor) -> &'a [usize] {
        &tensor.shape
    }

    fn download_rows(&self, tensor: &CudaTensor, rows: &[u32]) -> Result<Tensor> {
        let [n, d] = dims::<2>(&tensor.shape)?;
        if let Some(r) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::invalid_backend_input(format!("download_rows: row {r} of a {n}-row tensor")));
        }
        let mut host = vec![0.0f32; rows.len() * d];
        for (dst, &r) in host.chunks_exact_mut(d).zip(rows) {
            let r = r as usize;
            Transfers::count(&self.transfers.copies_to_host);
            self.stream
                .memcpy_dtoh(&tensor.data.slice(r * d..(r + 1) * d), dst)
                .map_err(driver_error("copy to host"))?;
        }
        self.synchronize()?;
        Ok(Tensor::new(vec![rows.len(), d], host))
    }

    fn prepare_conv(&self, weights: &ConvWeights) -> Result<CudaConv> {
        Ok(CudaConv {
            spec: weights.spec,
            weight: self.to_device(&weights.weight)?,
            bias: self.to_device(&weights.bias)?,
        })
    }

    fn conv2d(&self, x: &CudaTensor, conv: &CudaConv, residual: Option<&CudaTensor>) -> Result<CudaTensor> {
        let out = conv_output(&conv.spec, &x.shape, residual.map(|r| &r.shape[..]))?;
        fits_i32("conv2d", &[x.data.len(), out.iter().product()])?;
        let x_dims = dims::<4>(&x.shape)?;
        let plan = conv_plan(&conv.spec, x_dims);
        let padded = plan.explicit.map(|e| self.pad(&x.data, x_dims, e)).transpose()?;
        let (input, input_dims) = match (&padded, plan.explicit) {
            (Some(p), Some(e)) => (p, [x_dims[0], x_dims[1], e.height, e.width]),
            _ => (&x.data, x_dims),
        };
        let call = ConvCall {
            spec: &conv.spec,
            x_dims: input_dims,
            pad: plan.pad,
            out,
            x: input,
            weight: &conv.weight,
            bias: &conv.bias,
            residual: residual.map(|r| &r.data),
        };
        let (mut y, fused) = self.dnn.lock().map_err(poisoned_dnn)?.conv(&call)?;
        if !fused {
            self.bias_act(&mut y, conv, residual, out)?;
        }
        Ok(CudaTensor { shape: out.to_vec(), data: y })
    }

    fn max_pool(&self, x: &CudaTensor, kernel: usize, stride: usize, padding: usize) -> Result<CudaTensor> {
        let out = pool_output(&x.shape, kernel, stride, padding)?;
        fits_i32("max_pool", &[x.data.len()])?;
        let mut dnn = self.dnn.lock().map_err(poisoned_dnn)?;
        let data = dnn.max_pool(&x.data, dims::<4>(&x.shape)?, out, (kernel, stride, padding))?;
        Ok(CudaTensor { shape: out.to_vec(), data })
    }

    fn embed(&self, layers: &[&CudaTensor]) -> Result<CudaTensor> {
        let shapes: Vec<&[usize]> = layers.iter().map(|l| &l.shape[..]).collect();
        let dims = embed_args(&shapes)?;
        let [b, _, gh, gw] = dims[0];
        let width: usize = dims.iter().map(|d| d[1]).sum();
        fits_i32("embed", &[b * gh * gw * width])?;
        // Every column is written: the layers' channel ranges tile [0, width).
        let mut rows = self.alloc::<f32>(b * gh * gw * width)?;
        let mut offset = 0;
        for (layer, &[_, c, h, w]) in layers.iter().zip(&dims) {
            let args = [b, c, h, w, gh, gw, width, offset].map(|v| v as i32);
            // SAFETY: embed_layer's contract (kernels/embed.cu): feat is b x c x h x w, rows is
            // (b * gh * gw) x width, and this layer writes columns offset..offset + c.
            unsafe {
                let mut launch = self.stream.launch_builder(&self.kernels.embed_layer);
                launch.arg(&layer.data);
                for a in &args {
                    launch.arg(a);
                }
                launch.arg(&mut rows).launch(grid_stride(b * gh * gw * c, GRID_CAP, 0))
            }
            .map_err(driver_error("embed_layer launch"))?;
            offset += c;
        }
        Ok(CudaTensor { shape: vec![b * gh * gw, width], data: rows })
    }

    fn prepare_bank(&self, rows: Tensor) -> Result<CudaBank> {
        let [m, d] = rows.dims2()?;
        fits_i32("bank", &[m * d])?;
        // Norms and f16 rows come from the same kernels as the queries', so both sides of a
        // distance are rounded alike.
        let f32_rows = self.to_device(&rows.data)?;
        let norms = self.row_norms(&f32_rows, m, d)?;
        let f16_rows = match self.precision {
            Precision::F16 => Some(self.to_f16(&f32_rows)?),
            _ => None,
        };
        Ok(CudaBank { host: rows, rows: m, dims: d, f32_rows, f16_rows, norms })
    }

    fn knn(&self, queries: &CudaTensor, bank: &CudaBank, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        let [nq, _] = knn_args(&queries.shape, bank.rows, bank.dims, k)?;
        if nq == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let (distances, rows) = self.knn_on_device(&queries.data, nq, bank, k)?;
        Ok((self.download_vec(&distances)?, self.download_vec(&rows)?))
    }

    fn coreset(&self, rows: &CudaTensor, n_select: usize, start: usize) -> Result<Vec<u32>> {
        let [n, d] = coreset_args(&rows.shape, n_select, start)?;
        if n_select == 0 {
            return Ok(Vec::new());
        }
        coreset_config(n, d, self.sm_count)?;
        let selected = match self.precision {
            Precision::F16 => {
                self.coreset_on_device(&self.to_f16(&rows.data)?, rows, n_select, start, CoresetKernels::F16)?
            }
            _ => self.coreset_on_device(&rows.data, rows, n_select, start, CoresetKernels::F32)?,
        };
        self.download_vec(&selected)
    }

    /// One `score` span: the steps are queued on the stream without waiting, so only the whole
    /// is timed (tracing synchronises around it).
    fn score(
        &self,
        embedding: &CudaTensor,
        bank: &CudaBank,
        grid: [usize; 2],
        num_neighbors: usize,
        map_size: [usize; 2],
        sigma: f32,
    ) -> Result<BatchScores> {
        let [b, h, w, d] = score_args(&embedding.shape, bank.rows, bank.dims, grid, num_neighbors, map_size, sigma)?;
        // The figures of the search, which dominates (Eq. 7 and the blur are < 1% of its FLOPs).
        let span = || trace::span("score").work(|| flops::knn(b * h * w, bank.rows, d, 1));
        traced(self, span, || self.score_on_device(embedding, bank, [b, h, w, d], num_neighbors, map_size, sigma))
    }

    fn anomaly_map(&self, scores: &Tensor, out_h: usize, out_w: usize, sigma: f32) -> Result<Tensor> {
        let [b, h, w] = map_args(&scores.shape, out_h, out_w, sigma)?;
        fits_i32("anomaly_map", &[scores.data.len()])?;
        let grids = self.to_device(&scores.data)?;
        let mut out = self.alloc::<f32>(b * out_h * out_w)?;
        self.blur_on_device(&grids, [b, h, w], [out_h, out_w], sigma, &mut out.slice_mut(..))?;
        Ok(Tensor::new(vec![b, out_h, out_w], self.download_vec(&out)?))
    }

    /// Waits for the stream: a span then times the work queued inside it (`backend::traced`).
    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }

    /// A CUDA event on the stream: `traced` puts the device's time between two on its track.
    fn mark(&self) -> Result<Option<super::Mark>> {
        self.clock.mark(&self.stream).map(Some)
    }
}
