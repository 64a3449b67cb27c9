//! The functions Triton calls (TRITONBACKEND_Initialize, the model and instance life cycle,
//! ModelInstanceExecute) and the glue between Triton's objects and the request logic.
//!
//! Every entry point runs inside `guard`: a failure becomes a TRITONSERVER_Error with our
//! message, and no panic crosses into the server. Inside Execute each request is also handled
//! on its own, so one bad request never costs the others their answers.

use crate::config::model_file;
use crate::images::{decode, ImageTensor, IMAGE};
use crate::score::{score_jobs, Answer, Job, Refused};
use crate::sys::*;
use patchcore::backend::{AnyBackend, Backend, DeviceChoice, Precision};
use patchcore::PatchCore;
use std::borrow::Cow;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::sync::Arc;

const SCORE: &CStr = c"SCORE";
const NORMALIZED: &CStr = c"NORMALIZED";
const ANOMALOUS: &CStr = c"ANOMALOUS";
const ANOMALY_MAP: &CStr = c"ANOMALY_MAP";

type Engine = PatchCore<AnyBackend>;

/// A failed step: the Triton error code and our message.
struct Failure {
    code: TRITONSERVER_Error_Code,
    message: String,
}

impl Failure {
    fn new(code: TRITONSERVER_Error_Code, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

type Outcome<T> = Result<T, Failure>;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text =
        payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
    text.unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `body` so that neither a panic nor a Rust error leaves as anything but a
/// TRITONSERVER_Error (NULL on success), which Triton owns from then on.
fn guard(function: &str, body: impl FnOnce() -> Outcome<()>) -> Error {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => null_mut(),
        Ok(Err(failure)) => new_error(failure.code, &failure.message),
        Err(payload) => new_error(
            TRITONSERVER_ERROR_INTERNAL,
            &format!("patchcore backend: {function} panicked (a bug, please report it): {}", panic_message(&*payload)),
        ),
    }
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("NULs were replaced")
}

fn new_error(code: TRITONSERVER_Error_Code, message: &str) -> Error {
    let message = c_string(message);
    // SAFETY: a NUL-terminated string; Triton copies it.
    unsafe { TRITONSERVER_ErrorNew(code, message.as_ptr()) }
}

/// Turns the result of a Triton call into ours, copying its message and freeing its error.
fn check(error: Error, call: &str) -> Outcome<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a live error from Triton; its message lives until the error is deleted.
    let message = unsafe { CStr::from_ptr(TRITONSERVER_ErrorMessage(error)) }.to_string_lossy().into_owned();
    // SAFETY: we own the error Triton returned and delete it once.
    unsafe { TRITONSERVER_ErrorDelete(error) };
    Err(Failure::new(TRITONSERVER_ERROR_INTERNAL, format!("{call}: {message}")))
}

/// Writes to Triton's log (it prefixes the time and our file and line).
#[track_caller]
fn log(level: TRITONSERVER_LogLevel, message: &str) {
    let place = std::panic::Location::caller();
    let (file, text) = (c_string(place.file()), c_string(message));
    // SAFETY: NUL-terminated strings that Triton only reads during the call.
    let error = unsafe { TRITONSERVER_LogMessage(level, file.as_ptr(), place.line() as i32, text.as_ptr()) };
    if !error.is_null() {
        // SAFETY: we own the error and delete it once; a log that fails has nowhere to go.
        unsafe { TRITONSERVER_ErrorDelete(error) };
    }
}

/// A string Triton owns, copied.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn owned(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// Triton's clock for statistics: nanoseconds of CLOCK_MONOTONIC (std::chrono::steady_clock
/// on Linux), which std::time::Instant does not expose.
fn now_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        seconds: i64,
        nanoseconds: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut time = Timespec { seconds: 0, nanoseconds: 0 };
    // SAFETY: libc's clock_gettime writes one timespec; CLOCK_MONOTONIC cannot fail on Linux.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut time) };
    time.seconds as u64 * 1_000_000_000 + time.nanoseconds as u64
}

/// Checks the server's backend API version once, when Triton loads the library.
///
/// # Safety
/// Called by Triton (the argument is not used).
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_Initialize(_backend: *mut TRITONBACKEND_Backend) -> Error {
    guard("TRITONBACKEND_Initialize", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two writable u32s.
        check(unsafe { TRITONBACKEND_ApiVersion(&mut major, &mut minor) }, "TRITONBACKEND_ApiVersion")?;
        if major != TRITONBACKEND_API_VERSION_MAJOR || minor < TRITONBACKEND_API_VERSION_MINOR {
            return Err(Failure::new(
                TRITONSERVER_ERROR_UNSUPPORTED,
                format!(
                    "the patchcore backend needs TRITONBACKEND API {TRITONBACKEND_API_VERSION_MAJOR}.{TRITONBACKEND_API_VERSION_MINOR} \
                     or a later {TRITONBACKEND_API_VERSION_MAJOR}.x; this server has {major}.{minor}"
                ),
            ));
        }
        log(
            TRITONSERVER_LOG_INFO,
            &format!("patchcore backend {} on TRITONBACKEND API {major}.{minor}", env!("CARGO_PKG_VERSION")),
        );
        Ok(())
    })
}

/// What a model keeps: its name, its file, and the engine on the CPU that KIND_CPU instances
/// share (prediction takes `&self`, so one memory bank serves them all).
struct ModelState {
    name: String,
    file: PathBuf,
    cpu: Arc<Engine>,
}

fn load(device: DeviceChoice, file: &Path) -> patchcore::Result<Engine> {
    // The exact f32 paths: Triton's answers equal `patchcore predict`'s.
    PatchCore::load(AnyBackend::open(device, Precision::F32, |_| {})?, file)
}

/// Reads the config and loads the model file on the CPU, so a file that does not load fails
/// the model's load with the engine's message.
///
/// # Safety
/// Called by Triton with a live model.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInitialize(model: *mut TRITONBACKEND_Model) -> Error {
    guard("TRITONBACKEND_ModelInitialize", || {
        let (mut name, mut version, mut kind, mut location) = (std::ptr::null(), 0, 0, std::ptr::null());
        let mut message = null_mut();
        // SAFETY: a live model and writable out-parameters; the strings live as long as the model.
        let (name, location) = unsafe {
            check(TRITONBACKEND_ModelName(model, &mut name), "TRITONBACKEND_ModelName")?;
            check(TRITONBACKEND_ModelVersion(model, &mut version), "TRITONBACKEND_ModelVersion")?;
            check(TRITONBACKEND_ModelRepository(model, &mut kind, &mut location), "TRITONBACKEND_ModelRepository")?;
            check(TRITONBACKEND_ModelConfig(model, 1, &mut message), "TRITONBACKEND_ModelConfig")?;
            (owned(name), owned(location))
        };
        let config = config_json(message);
        let refuse = |m: String| Failure::new(TRITONSERVER_ERROR_INVALID_ARG, format!("model '{name}': {m}"));
        let file = model_file(&config?, Path::new(&location), version).map_err(refuse)?;
        let cpu = load(DeviceChoice::Cpu, &file).map_err(|e| refuse(e.to_string()))?;
        log(TRITONSERVER_LOG_INFO, &format!("model '{name}' version {version}: loaded {}", file.display()));
        let state = Box::into_raw(Box::new(ModelState { name, file, cpu: Arc::new(cpu) }));
        // SAFETY: a live model; the state is freed in ModelFinalize.
        if let Err(failure) = check(unsafe { TRITONBACKEND_ModelSetState(model, state.cast()) }, "ModelSetState") {
            // SAFETY: Triton did not take the state; it is ours to free, once.
            drop(unsafe { Box::from_raw(state) });
            return Err(failure);
        }
        Ok(())
    })
}

/// The model configuration as JSON; the message is freed here whatever happens.
fn config_json(message: *mut TRITONSERVER_Message) -> Outcome<serde_json::Value> {
    let (mut base, mut size) = (std::ptr::null(), 0usize);
    // SAFETY: a live message; the JSON bytes live until it is deleted, below.
    let json = check(unsafe { TRITONSERVER_MessageSerializeToJson(message, &mut base, &mut size) }, "config to JSON")
        .and_then(|()| {
            // SAFETY: Triton returned `size` bytes at `base`.
            let bytes = unsafe { std::slice::from_raw_parts(base.cast::<u8>(), size) };
            serde_json::from_slice(bytes)
                .map_err(|e| Failure::new(TRITONSERVER_ERROR_INTERNAL, format!("the model config is not JSON: {e}")))
        });
    // SAFETY: we own the message and delete it once.
    check(unsafe { TRITONSERVER_MessageDelete(message) }, "TRITONSERVER_MessageDelete")?;
    json
}

/// The state set by ModelInitialize.
///
/// # Safety
/// `model` is a live model whose state ModelInitialize set, not yet finalised.
unsafe fn model_state<'a>(model: *mut TRITONBACKEND_Model) -> Outcome<&'a ModelState> {
    let mut state = null_mut();
    // SAFETY: a live model (the caller's guarantee) and a writable pointer.
    check(unsafe { TRITONBACKEND_ModelState(model, &mut state) }, "TRITONBACKEND_ModelState")?;
    // SAFETY: set by ModelInitialize to a boxed ModelState that lives until ModelFinalize.
    unsafe { state.cast::<ModelState>().as_ref() }
        .ok_or_else(|| Failure::new(TRITONSERVER_ERROR_INTERNAL, "the model has no patchcore state"))
}

/// # Safety
/// Called by Triton once per model, after its instances are finalised.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelFinalize(model: *mut TRITONBACKEND_Model) -> Error {
    guard("TRITONBACKEND_ModelFinalize", || {
        // SAFETY: Triton finalises a model after all its instances, exactly once.
        let state = unsafe { model_state(model) }? as *const ModelState;
        // SAFETY: the box ModelInitialize leaked; nothing uses it any more.
        drop(unsafe { Box::from_raw(state.cast_mut()) });
        Ok(())
    })
}

/// One instance: its engine (shared with the model for KIND_CPU, its own on its GPU).
struct InstanceState {
    engine: Arc<Engine>,
}

/// A KIND_CPU instance shares the model's engine; a KIND_GPU one loads the file on its device.
///
/// # Safety
/// Called by Triton with a live instance of an initialised model.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceInitialize(instance: *mut TRITONBACKEND_ModelInstance) -> Error {
    guard("TRITONBACKEND_ModelInstanceInitialize", || {
        let (mut name, mut kind, mut device, mut model) = (std::ptr::null(), 0, 0, null_mut());
        // SAFETY: a live instance and writable out-parameters.
        let (name, model) = unsafe {
            check(TRITONBACKEND_ModelInstanceName(instance, &mut name), "TRITONBACKEND_ModelInstanceName")?;
            check(TRITONBACKEND_ModelInstanceKind(instance, &mut kind), "TRITONBACKEND_ModelInstanceKind")?;
            check(TRITONBACKEND_ModelInstanceDeviceId(instance, &mut device), "TRITONBACKEND_ModelInstanceDeviceId")?;
            check(TRITONBACKEND_ModelInstanceModel(instance, &mut model), "TRITONBACKEND_ModelInstanceModel")?;
            (owned(name), model_state(model)?)
        };
        let engine = if kind == TRITONSERVER_INSTANCEGROUPKIND_GPU {
            let device = usize::try_from(device).unwrap_or_default();
            let engine = load(DeviceChoice::Cuda(device), &model.file).map_err(|e| {
                let m = format!("model '{}' instance '{name}' (KIND_GPU, device {device}): {e}", model.name);
                Failure::new(TRITONSERVER_ERROR_INVALID_ARG, m)
            })?;
            Arc::new(engine)
        } else {
            model.cpu.clone()
        };
        log(
            TRITONSERVER_LOG_INFO,
            &format!("instance '{name}' of model '{}' runs on {}", model.name, engine.backend().describe()),
        );
        let state = Box::into_raw(Box::new(InstanceState { engine }));
        // SAFETY: a live instance; the state is freed in ModelInstanceFinalize.
        if let Err(failure) = check(unsafe { TRITONBACKEND_ModelInstanceSetState(instance, state.cast()) }, "SetState")
        {
            // SAFETY: Triton did not take the state; it is ours to free, once.
            drop(unsafe { Box::from_raw(state) });
            return Err(failure);
        }
        Ok(())
    })
}

/// The state set by ModelInstanceInitialize.
///
/// # Safety
/// `instance` is a live instance whose state ModelInstanceInitialize set, not yet finalised.
unsafe fn instance_state<'a>(instance: *mut TRITONBACKEND_ModelInstance) -> Outcome<&'a InstanceState> {
    let mut state: *mut c_void = null_mut();
    // SAFETY: a live instance (the caller's guarantee) and a writable pointer.
    check(unsafe { TRITONBACKEND_ModelInstanceState(instance, &mut state) }, "TRITONBACKEND_ModelInstanceState")?;
    // SAFETY: set to a boxed InstanceState that lives until ModelInstanceFinalize.
    unsafe { state.cast::<InstanceState>().as_ref() }
        .ok_or_else(|| Failure::new(TRITONSERVER_ERROR_INTERNAL, "the instance has no patchcore state"))
}

/// # Safety
/// Called by Triton once per instance, after its last Execute.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceFinalize(instance: *mut TRITONBACKEND_ModelInstance) -> Error {
    guard("TRITONBACKEND_ModelInstanceFinalize", || {
        // SAFETY: Triton finalises an instance once, after its last Execute.
        let state = unsafe { instance_state(instance) }? as *const InstanceState;
        // SAFETY: the box ModelInstanceInitialize leaked; nothing uses it any more.
        drop(unsafe { Box::from_raw(state.cast_mut()) });
        Ok(())
    })
}

/// Scores a batch of requests as one engine batch. Once a request is touched it is answered,
/// reported and released here whatever happens, so this returns an error (which tells Triton
/// the requests are still its own) only when it could not start.
///
/// # Safety
/// Triton passes `request_count` live requests at `requests`.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceExecute(
    instance: *mut TRITONBACKEND_ModelInstance,
    requests: *mut *mut TRITONBACKEND_Request,
    request_count: u32,
) -> Error {
    guard("TRITONBACKEND_ModelInstanceExecute", || {
        let exec_start = now_ns();
        // SAFETY: Triton calls Execute on a live, initialised instance.
        let engine = &unsafe { instance_state(instance) }?.engine;
        // SAFETY: Triton's guarantee.
        let requests = unsafe { std::slice::from_raw_parts(requests, request_count as usize) };
        let jobs: Vec<Job> = requests.iter().map(|&request| read_job(request)).collect();
        let compute_start = now_ns();
        let answers = catch_unwind(AssertUnwindSafe(|| score_jobs(engine, jobs))).unwrap_or_else(|payload| {
            let refused = Refused::Engine(format!("the engine panicked (a bug): {}", panic_message(&*payload)));
            requests.iter().map(|_| Err(refused.clone())).collect()
        });
        let compute_end = now_ns();
        let mut images = 0;
        for (&request, answer) in requests.iter().zip(answers) {
            let success = answer.is_ok();
            images += answer.as_ref().map_or(0, |a| a.verdicts.len());
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| respond(request, answer))) {
                log(TRITONSERVER_LOG_ERROR, &format!("answering a request panicked: {}", panic_message(&*panic)));
            }
            let times = (exec_start, compute_start, compute_end, now_ns());
            // SAFETY: a live request of a live instance; released right after.
            let reported = check(
                unsafe {
                    TRITONBACKEND_ModelInstanceReportStatistics(
                        instance, request, success, times.0, times.1, times.2, times.3,
                    )
                },
                "TRITONBACKEND_ModelInstanceReportStatistics",
            );
            // SAFETY: the request is answered; from here on Triton owns it.
            let released = check(
                unsafe { TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL) },
                "TRITONBACKEND_RequestRelease",
            );
            for failure in [reported, released].into_iter().filter_map(Result::err) {
                log(TRITONSERVER_LOG_ERROR, &failure.message);
            }
        }
        if images > 0 {
            // The batch size the server's statistics show: images in the one engine call.
            // SAFETY: a live instance.
            let error = unsafe {
                TRITONBACKEND_ModelInstanceReportBatchStatistics(
                    instance,
                    images as u64,
                    exec_start,
                    compute_start,
                    compute_end,
                    now_ns(),
                )
            };
            if let Err(failure) = check(error, "TRITONBACKEND_ModelInstanceReportBatchStatistics") {
                log(TRITONSERVER_LOG_ERROR, &failure.message);
            }
        }
        Ok(())
    })
}

/// A request's images and whether it asked for ANOMALY_MAP; a panic is this request's error.
fn read_job(request: *mut TRITONBACKEND_Request) -> Job {
    let read = || -> Outcome<Job> {
        let want_map = requested_outputs(request)?.iter().any(|name| name.as_c_str() == ANOMALY_MAP);
        Ok(Job { images: read_images(request), want_map })
    };
    match catch_unwind(AssertUnwindSafe(read)) {
        Ok(Ok(job)) => job,
        Ok(Err(failure)) => Job { images: Err(failure.message), want_map: false },
        Err(panic) => {
            Job { images: Err(format!("reading the request panicked: {}", panic_message(&*panic))), want_map: false }
        }
    }
}

/// The outputs the request asked for (Triton lists them all when the client named none).
fn requested_outputs(request: *mut TRITONBACKEND_Request) -> Outcome<Vec<CString>> {
    let mut count = 0;
    // SAFETY: a live request and a writable count.
    check(unsafe { TRITONBACKEND_RequestOutputCount(request, &mut count) }, "TRITONBACKEND_RequestOutputCount")?;
    (0..count)
        .map(|i| {
            let mut name = std::ptr::null();
            // SAFETY: 0 <= i < count; the name lives as long as the request and is copied.
            check(unsafe { TRITONBACKEND_RequestOutputName(request, i, &mut name) }, "RequestOutputName")?;
            Ok(c_string(&unsafe { owned(name) }))
        })
        .collect()
}

/// The request's IMAGE tensor, checked and decoded; the message says what is wrong.
fn read_images(request: *mut TRITONBACKEND_Request) -> Result<crate::images::ImageBatch, String> {
    let name = c_string(IMAGE);
    let mut input = null_mut();
    // SAFETY: a live request, a NUL-terminated name, a writable pointer.
    check(unsafe { TRITONBACKEND_RequestInput(request, name.as_ptr(), &mut input) }, IMAGE)
        .map_err(|f| format!("the request has no input {IMAGE} ({})", f.message))?;
    let (mut datatype, mut shape, mut dims, mut byte_size, mut buffers) = (0, std::ptr::null(), 0, 0, 0);
    let properties = unsafe {
        // SAFETY: a live input and writable out-parameters (the name is not wanted).
        TRITONBACKEND_InputProperties(
            input,
            std::ptr::null_mut(),
            &mut datatype,
            &mut shape,
            &mut dims,
            &mut byte_size,
            &mut buffers,
        )
    };
    check(properties, "TRITONBACKEND_InputProperties").map_err(|f| f.message)?;
    // SAFETY: Triton returned `dims` values at `shape` (NULL only for zero), owned by the input.
    let shape = if dims == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(shape, dims as usize) } };
    // SAFETY: Triton's names are static NUL-terminated strings.
    let datatype = unsafe { owned(TRITONSERVER_DataTypeString(datatype)) };
    let mut parts = Vec::with_capacity(buffers as usize);
    for index in 0..buffers {
        let (mut buffer, mut size, mut memory, mut memory_id) = (std::ptr::null(), 0, TRITONSERVER_MEMORY_CPU, 0);
        // SAFETY: 0 <= index < buffer_count and writable out-parameters.
        let got =
            unsafe { TRITONBACKEND_InputBuffer(input, index, &mut buffer, &mut size, &mut memory, &mut memory_id) };
        check(got, "TRITONBACKEND_InputBuffer").map_err(|f| f.message)?;
        if memory != TRITONSERVER_MEMORY_CPU && memory != TRITONSERVER_MEMORY_CPU_PINNED {
            return Err(format!("{IMAGE} is in GPU memory: the patchcore backend reads it from CPU memory"));
        }
        if size > 0 {
            // SAFETY: Triton returned `size` readable bytes at `buffer`, alive until the release.
            parts.push(unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), size as usize) });
        }
    }
    // One buffer (the usual case) is read in place; several are joined.
    let bytes: Cow<[u8]> = if parts.len() == 1 { Cow::Borrowed(parts[0]) } else { Cow::Owned(parts.concat()) };
    decode(&ImageTensor { datatype: &datatype, shape, bytes: &bytes })
}

/// Sends the request's one response: its outputs, or its error.
fn respond(request: *mut TRITONBACKEND_Request, answer: Result<Answer, Refused>) {
    let mut response = null_mut();
    // SAFETY: a live request and a writable pointer.
    if let Err(failure) = check(unsafe { TRITONBACKEND_ResponseNew(&mut response, request) }, "ResponseNew") {
        log(TRITONSERVER_LOG_ERROR, &failure.message);
        return;
    }
    let failure = match answer {
        Ok(answer) => write_outputs(response, request, &answer).err(),
        Err(Refused::Request(message)) => Some(Failure::new(TRITONSERVER_ERROR_INVALID_ARG, message)),
        Err(Refused::Engine(message)) => Some(Failure::new(TRITONSERVER_ERROR_INTERNAL, message)),
    };
    let error = failure.map_or(null_mut(), |f| new_error(f.code, &f.message));
    // SAFETY: a live response, sent once; the error stays ours (Triton copies it).
    let sent = check(
        unsafe { TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error) },
        "ResponseSend",
    );
    if !error.is_null() {
        // SAFETY: created above, deleted once.
        unsafe { TRITONSERVER_ErrorDelete(error) };
    }
    if let Err(failure) = sent {
        log(TRITONSERVER_LOG_ERROR, &failure.message);
    }
}

/// Writes each requested output of `answer` into the response.
fn write_outputs(
    response: *mut TRITONBACKEND_Response,
    request: *mut TRITONBACKEND_Request,
    answer: &Answer,
) -> Outcome<()> {
    let verdicts = &answer.verdicts;
    let n = verdicts.len() as i64;
    let floats = |f: fn(&crate::score::Verdict) -> f32| -> Vec<u8> {
        verdicts.iter().flat_map(|v| f(v).to_le_bytes()).collect()
    };
    for name in requested_outputs(request)? {
        let name = name.as_c_str();
        if name == SCORE {
            write_output(response, name, TRITONSERVER_TYPE_FP32, &[n, 1], &floats(|v| v.score))?;
        } else if name == NORMALIZED {
            write_output(response, name, TRITONSERVER_TYPE_FP32, &[n, 1], &floats(|v| v.normalized))?;
        } else if name == ANOMALOUS {
            let bytes: Vec<u8> = verdicts.iter().map(|v| u8::from(v.anomalous)).collect();
            write_output(response, name, TRITONSERVER_TYPE_BOOL, &[n, 1], &bytes)?;
        } else if name == ANOMALY_MAP {
            let bytes: Vec<u8> =
                verdicts.iter().flat_map(|v| v.map.iter().flatten()).flat_map(|x| x.to_le_bytes()).collect();
            let shape = [n, i64::from(answer.height), i64::from(answer.width)];
            write_output(response, name, TRITONSERVER_TYPE_FP32, &shape, &bytes)?;
        } else {
            let m =
                format!("output {} is not one of SCORE, NORMALIZED, ANOMALOUS, ANOMALY_MAP", name.to_string_lossy());
            return Err(Failure::new(TRITONSERVER_ERROR_INVALID_ARG, m));
        }
    }
    Ok(())
}

/// Adds one output tensor to the response and copies `bytes` into Triton's CPU buffer.
fn write_output(
    response: *mut TRITONBACKEND_Response,
    name: &CStr,
    datatype: TRITONSERVER_DataType,
    shape: &[i64],
    bytes: &[u8],
) -> Outcome<()> {
    let mut output = null_mut();
    // SAFETY: a live response, a NUL-terminated name and `shape.len()` dimensions.
    let made = unsafe {
        TRITONBACKEND_ResponseOutput(response, &mut output, name.as_ptr(), datatype, shape.as_ptr(), shape.len() as u32)
    };
    check(made, "TRITONBACKEND_ResponseOutput")?;
    let (mut buffer, mut memory, mut memory_id) = (null_mut(), TRITONSERVER_MEMORY_CPU, 0);
    // SAFETY: a live output and writable out-parameters.
    let got =
        unsafe { TRITONBACKEND_OutputBuffer(output, &mut buffer, bytes.len() as u64, &mut memory, &mut memory_id) };
    check(got, "TRITONBACKEND_OutputBuffer")?;
    if memory != TRITONSERVER_MEMORY_CPU && memory != TRITONSERVER_MEMORY_CPU_PINNED {
        let m = format!(
            "Triton gave GPU memory for output {}; the patchcore backend writes CPU memory",
            name.to_string_lossy()
        );
        return Err(Failure::new(TRITONSERVER_ERROR_UNSUPPORTED, m));
    }
    if !bytes.is_empty() {
        // SAFETY: Triton allocated `bytes.len()` writable bytes in CPU memory at `buffer`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len()) };
    }
    Ok(())
}
