//! The C ABI: `include/patchcore.h` is generated from this module by cbindgen
//! (`cbindgen.toml`; `scripts/c-check.sh` fails when the checked-in header drifts).
//!
//! Every entry point runs inside `guard`, which catches panics and turns every failure into
//! a [`PatchcoreStatus`] plus a per-thread message for [`patchcore_last_error`]. Handles are
//! registry tokens, never pointers to our memory (see `handle.rs`), so a freed or foreign
//! handle is refused without reading freed memory. docs/C_ABI.md is the long-form guide.

mod handle;
mod pixels;
mod predict;

pub use handle::PatchcoreModel;
pub use pixels::{
    patchcore_image_free, patchcore_image_load, PatchcoreImage, PATCHCORE_MAX_PIXELS, PATCHCORE_MAX_SIDE,
};
pub use predict::{
    patchcore_free, patchcore_load, patchcore_load_with_precision, patchcore_model_info, patchcore_predict,
    patchcore_predict_batch, PatchcoreModelInfo, PatchcoreResult, PATCHCORE_MAX_BATCH,
};

use crate::error::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Bumped whenever a function signature, a struct layout or a status value changes, so a host
/// can check at run time that the library it loaded matches the header it was compiled with.
pub const PATCHCORE_ABI_VERSION: u32 = 1;

/// What every function returns. Anything but `PATCHCORE_OK` also sets the thread's
/// `patchcore_last_error()` message.
// The variants are spelled as in C so that a grep for a status finds both sides.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchcoreStatus {
    PATCHCORE_OK = 0,
    /// A required pointer argument was NULL.
    PATCHCORE_NULL_ARGUMENT = 1,
    /// A size, stride, channel count, device string or buffer length is out of range, or a size
    /// the compute backend refuses (e.g. a model's `num_neighbors` above the 16 CUDA takes).
    PATCHCORE_INVALID_ARGUMENT = 2,
    /// The file system refused: missing file, permissions.
    PATCHCORE_IO = 3,
    /// An image file that cannot be decoded.
    PATCHCORE_IMAGE = 4,
    /// A model file that is truncated, inconsistent or of another format version.
    PATCHCORE_MODEL = 5,
    /// Backbone weights inside the model that are missing, misshaped or non-finite.
    PATCHCORE_WEIGHTS = 6,
    /// CUDA is unavailable (a CPU-only build; no driver, libcudnn, libcublas or such device) or
    /// the GPU failed (a driver, memory, kernel or cuDNN error). The message says which.
    PATCHCORE_BACKEND = 7,
    /// A bug: the library panicked (the message says where; please report it). Outputs may be
    /// partly written; the handle stays usable.
    PATCHCORE_PANIC = 8,
    /// A handle (or image) that was already freed, or never came from this library.
    PATCHCORE_STALE_HANDLE = 9,
}

use PatchcoreStatus::*;

/// A failed call: the status to return and the message for `patchcore_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    status: PatchcoreStatus,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: PatchcoreStatus, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
    pub(crate) fn null(argument: &str) -> Self {
        Failure::new(PATCHCORE_NULL_ARGUMENT, format!("`{argument}` is NULL"))
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(PATCHCORE_INVALID_ARGUMENT, message)
    }
    /// The same failure, saying which image of a batch it concerns.
    pub(crate) fn in_image(self, index: usize) -> Self {
        Failure { message: format!("image {index}: {}", self.message), ..self }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => PATCHCORE_IO,
            Error::Image { .. } => PATCHCORE_IMAGE,
            Error::Weights { .. } | Error::Checkpoint { .. } => PATCHCORE_WEIGHTS,
            Error::Model { .. } => PATCHCORE_MODEL,
            Error::Dataset { .. } | Error::InvalidOption { .. } | Error::InvalidBackendInput { .. } => {
                PATCHCORE_INVALID_ARGUMENT
            }
            Error::CudaUnavailable { .. } | Error::DeviceFailure { .. } => PATCHCORE_BACKEND,
        };
        Failure::new(status, e.to_string())
    }
}

pub(crate) type FfiResult<T = ()> = std::result::Result<T, Failure>;

thread_local! {
    /// The latest failure on this thread; `patchcore_last_error` hands out a pointer into it.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(function: &str, message: &str) {
    // An interior NUL would cut the C string short; nothing we format contains one, but paths
    // and panic messages come from outside.
    let text = format!("{function}: {message}").replace('\0', "\\0");
    let text = CString::new(text).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; the status still tells the story.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs one entry point: panics are caught (unwinding into C is undefined behaviour) and every
/// failure becomes a status with its message stored for [`patchcore_last_error`].
pub(crate) fn guard(function: &str, body: impl FnOnce() -> FfiResult) -> PatchcoreStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PATCHCORE_OK,
        Ok(Err(failure)) => {
            set_last_error(function, &failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(function, &format!("internal error (panic: {what}); please report it"));
            PATCHCORE_PANIC
        }
    }
}

/// Reads a C string argument as UTF-8.
///
/// # Safety
/// `ptr`, when not NULL, points to a NUL-terminated string that stays valid for the call.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, argument: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(Failure::null(argument));
    }
    // SAFETY: not NULL, and the caller guarantees a NUL-terminated string alive for the call.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|_| Failure::invalid(format!("`{argument}` is not valid UTF-8")))
}

/// Reads a C string argument as a path: any bytes on Unix, UTF-8 elsewhere.
///
/// # Safety
/// As [`c_str`].
pub(crate) unsafe fn c_path(ptr: *const c_char, argument: &str) -> FfiResult<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        if ptr.is_null() {
            return Err(Failure::null(argument));
        }
        // SAFETY: not NULL, and the caller guarantees a NUL-terminated string alive for the call.
        let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    // SAFETY: the caller's guarantee is passed on unchanged.
    unsafe {
        c_str(ptr, argument).map(PathBuf::from)
    }
}

/// The ABI version this library implements; compare it with `PATCHCORE_ABI_VERSION` from the
/// header you compiled against.
#[no_mangle]
pub extern "C" fn patchcore_abi_version() -> u32 {
    PATCHCORE_ABI_VERSION
}

/// The library's version ("0.1.0"), a static string: never free it.
#[no_mangle]
pub extern "C" fn patchcore_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the crate version has no NUL"),
    };
    VERSION.as_ptr()
}

/// The message of the latest failed call on the calling thread ("" if none failed yet). Never
/// NULL. The text belongs to the library and stays valid until the next failing call on the
/// same thread; copy it to keep it. Successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn patchcore_last_error() -> *const c_char {
    // The CString's heap buffer does not move until the slot is replaced by the next failure
    // on this thread, which is the lifetime the header promises. During thread teardown (a C
    // TLS destructor calling us) the slot may be gone: "" then, rather than a panic here,
    // outside any guard.
    LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: patchcore_last_error never returns NULL and its string lives until the next
        // failure on this thread.
        unsafe { CStr::from_ptr(patchcore_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard("patchcore_test", || panic!("boom {}", 42));
        assert_eq!(status, PATCHCORE_PANIC);
        let message = last_error();
        assert!(message.starts_with("patchcore_test: internal error (panic: boom 42)"), "{message}");
        let status = guard("patchcore_test", || std::panic::panic_any(7u8));
        assert_eq!(status, PATCHCORE_PANIC);
        assert!(last_error().contains("unknown panic payload"));
    }

    #[test]
    fn errors_map_to_codes_and_success_keeps_the_last_message() {
        let status = guard("f", || Err(Error::model("m.patchcore", "model format version 9").into()));
        assert_eq!(status, PATCHCORE_MODEL);
        assert_eq!(last_error(), "f: m.patchcore: model format version 9");
        assert_eq!(guard("g", || Ok(())), PATCHCORE_OK);
        assert_eq!(last_error(), "f: m.patchcore: model format version 9");
        let status = guard("h", || Err(Failure::invalid("nul \0 inside")));
        assert_eq!(status, PATCHCORE_INVALID_ARGUMENT);
        assert_eq!(last_error(), "h: nul \\0 inside");
    }

    /// Without a GPU no C call reaches a backend's input checks (images are checked and resized
    /// before the backend sees them; on CUDA a model with more than 16 neighbours would), so
    /// the mapping of backend errors is tested here.
    #[test]
    fn backend_errors_map_to_invalid_argument_or_backend() {
        let status = guard("f", || Err(Error::invalid_backend_input("conv2d: empty 0x0 input").into()));
        assert_eq!(status, PATCHCORE_INVALID_ARGUMENT);
        assert_eq!(last_error(), "f: invalid input to the backend: conv2d: empty 0x0 input");
        let status = guard("g", || Err(Error::cuda_unavailable("libcudnn was not found").into()));
        assert_eq!(status, PATCHCORE_BACKEND);
        assert_eq!(last_error(), "g: CUDA is unavailable: libcudnn was not found");
        let status = guard("h", || Err(Error::device_failure("CUDA allocation failed: out of memory").into()));
        assert_eq!(status, PATCHCORE_BACKEND);
        assert_eq!(last_error(), "h: the GPU failed: CUDA allocation failed: out of memory");
    }

    #[test]
    fn the_last_error_is_per_thread() {
        guard("main", || Err(Failure::invalid("here")));
        std::thread::spawn(|| {
            assert_eq!(last_error(), "");
            guard("other", || Err(Failure::invalid("there")));
        })
        .join()
        .unwrap();
        assert_eq!(last_error(), "main: here");
    }

    #[test]
    fn version_strings() {
        // SAFETY: a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(patchcore_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(patchcore_abi_version(), PATCHCORE_ABI_VERSION);
    }
}
