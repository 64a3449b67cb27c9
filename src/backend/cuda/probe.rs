//! Is there a GPU this process can use? Answered without panicking: cudarc loads the CUDA
//! libraries lazily and panics inside the first call when one (or one of its functions) is
//! missing. So the driver's version is checked, each library this build needs is looked for by
//! its soname (and cuBLAS and cuDNN are checked to be the very files cudarc will load), then the
//! driver is asked for its devices; and whatever cudarc still panics on while the backend is
//! made (`unwind_to_unavailable`) is an error naming the missing library or function.

use crate::error::{Error, Result};
use cudarc::driver::CudaContext;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// The oldest driver this build runs on: cudarc's bindings are CUDA 13.0's (`cuda-13000`) and
/// build.rs writes PTX ISA 9.0, which needs a CUDA 13.0 driver to JIT.
const MIN_DRIVER_VERSION: i32 = 13000;

/// Where a library comes from, for the advice when it is missing.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Cublas,
    Cudnn,
}

impl Source {
    /// Where to get the library (`them`: several of it).
    fn advice(self, them: &str) -> String {
        let (wheel, folder) = match self {
            Source::Cublas => ("nvidia-cublas wheel (13.x)", "nvidia/cu13/lib"),
            Source::Cudnn => ("nvidia-cudnn-cu13 wheel", "nvidia/cudnn/lib"),
        };
        format!(
            "pip's {wheel} installs {them} in site-packages/{folder}: add the folder holding {them} to LD_LIBRARY_PATH"
        )
    }
}

/// The libraries the backend loads, by the sonames this build links against: cuBLAS 13 (cuDNN's
/// engines call it; libcublas.so.13 needs libcublasLt.so.13) and cuDNN 9 with the sub-libraries
/// libcudnn.so.9 loads itself for convolutions (graph, ops, cnn, precompiled engines, heuristics;
/// scripts/gpu-check.sh requires the same list). cudarc itself opens only libcublas and libcudnn,
/// by its own list of names (`CUDARC_LOADS`).
const REQUIRED_LIBRARIES: [&str; 8] = [
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_heuristic.so.9",
];

fn source(soname: &str) -> Source {
    if soname.starts_with("libcublas") {
        Source::Cublas
    } else {
        Source::Cudnn
    }
}

/// The libraries cudarc's own loaders open (the stem its `get_lib_name_candidates` expands into
/// names, of which it loads the first that opens), with the required soname each must be.
const CUDARC_LOADS: [(&str, &str); 2] = [("cublas", "libcublas.so.13"), ("cudnn", "libcudnn.so.9")];

/// Ok when the driver is new enough, every library the backend needs loads, and device
/// `ordinal` exists.
pub fn probe(ordinal: usize) -> Result<()> {
    unwind_to_unavailable(|| {
        // SAFETY: `is_culib_present` only tries to dlopen the driver by its known names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::cuda_unavailable(
                "libcuda.so.1 (the NVIDIA driver) was not found: install the NVIDIA driver",
            ));
        }
        driver_version()?;
        libraries()?;
        let count = CudaContext::device_count().map_err(|e| {
            Error::cuda_unavailable(format!("the driver reports {e} (`nvidia-smi` shows what it sees)"))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::cuda_unavailable(format!(
                "device {ordinal} does not exist: the driver sees {count} device(s), numbered from 0"
            )));
        }
        Ok(())
    })
}

/// The driver's CUDA version, refused when older than `MIN_DRIVER_VERSION`.
fn driver_version() -> Result<()> {
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int through a valid pointer; it needs no cuInit.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| Error::cuda_unavailable(format!("the driver does not tell its version: {e}")))?;
    driver_new_enough(version)
}

fn driver_new_enough(version: i32) -> Result<()> {
    if version >= MIN_DRIVER_VERSION {
        return Ok(());
    }
    let cuda = |v: i32| format!("{}.{} ({v})", v / 1000, v % 1000 / 10);
    Err(Error::cuda_unavailable(format!(
        "the driver supports CUDA {}; this build needs {} or newer: update the NVIDIA driver",
        cuda(version),
        cuda(MIN_DRIVER_VERSION)
    )))
}

/// Every required library loads, and the cuBLAS and cuDNN cudarc picks are those files.
#[cfg(unix)]
fn libraries() -> Result<()> {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for soname in REQUIRED_LIBRARIES {
        match open(soname) {
            Ok(handle) => loaded.push((soname, handle)),
            Err(why) => failed.push((soname, why)),
        }
    }
    if !failed.is_empty() {
        return Err(Error::cuda_unavailable(missing_message(&failed)));
    }
    for (stem, soname) in CUDARC_LOADS {
        let ours = loaded.iter().find(|(s, _)| *s == soname).map(|(_, h)| *h);
        // cudarc's loader takes the first of these names that opens; so do we.
        let picked = cudarc::get_lib_name_candidates(stem).into_iter().find_map(|n| open(&n).ok().map(|h| (n, h)));
        if let Some((name, handle)) = picked {
            if Some(handle) != ours {
                return Err(Error::cuda_unavailable(format!(
                    "{} is found before {soname} and is another file, so cudarc would load it instead: \
                     remove it, or make it a link to {soname}",
                    where_found(&name)
                )));
            }
        }
    }
    Ok(())
}

/// `name`'s path when it is in a folder of LD_LIBRARY_PATH (searched first), else the name and
/// that it is in the system's library folders.
#[cfg(unix)]
fn where_found(name: &str) -> String {
    let path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    match std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.exists()) {
        Some(p) => p.display().to_string(),
        None => format!("{name} (in the system's library folders)"),
    }
}

/// The sonames above are Linux's; elsewhere cudarc's own search is all there is.
#[cfg(not(unix))]
fn libraries() -> Result<()> {
    Ok(())
}

/// dlopen's handle for `name`, or why it did not load: None when it was not found at all. The
/// loader hands out one handle per file, whichever name or link opened it, so equal handles are
/// the same library.
#[cfg(unix)]
fn open(name: &str) -> std::result::Result<usize, Option<String>> {
    // SAFETY: loading runs the library's initialisers; these are the CUDA libraries the backend
    // loads next anyway (or whatever is on the library path under their names, as for cudarc).
    match unsafe { libloading::os::unix::Library::new(name) } {
        // Never closed: cuDNN and cudarc load the same files next, and NVIDIA's libraries are not
        // known to survive being unloaded (static state, helper threads). A second open of a
        // loaded library only counts a reference.
        Ok(lib) => Ok(lib.into_raw() as usize),
        Err(e) => {
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            Err((!why.starts_with(&format!("{name}: cannot open shared object file"))).then_some(why))
        }
    }
}

/// One sentence per source naming each missing library, then one per library that is there but
/// did not load, with the loader's reason.
fn missing_message(failed: &[(&str, Option<String>)]) -> String {
    let mut parts = Vec::new();
    for from in [Source::Cublas, Source::Cudnn] {
        let names: Vec<&str> =
            failed.iter().filter(|(s, why)| why.is_none() && source(s) == from).map(|(s, _)| *s).collect();
        match names.as_slice() {
            [] => {}
            [one] => parts.push(format!("{one} was not found ({})", from.advice("it"))),
            many => parts.push(format!("{} were not found ({})", many.join(", "), from.advice("them"))),
        }
    }
    for (soname, why) in failed {
        if let Some(why) = why {
            parts.push(format!("{soname} did not load: {why}"));
        }
    }
    parts.join("; ")
}

thread_local! {
    /// Set while this thread runs `unwind_to_unavailable`'s closure: the panic hook is silent then.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Set by the hook when a guarded panic came from cudarc's source.
    static IN_CUDARC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `open` (the backend's creation, the probe) with cudarc's panics made errors. cudarc
/// panics where a library lacks a function it calls (the symbol is looked up at the first call)
/// and unwraps some results (`Cudnn::new`); such a panic is CUDA that cannot be used here, so it
/// is `CudaUnavailable` with cudarc's message, and nothing is printed for it. A panic elsewhere
/// (a bug of ours) goes on unwinding as it would have, its message printed as usual.
pub(crate) fn unwind_to_unavailable<T>(open: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    let outer = GUARDED.replace(true);
    let result = catch_unwind(AssertUnwindSafe(open));
    GUARDED.set(outer);
    match result {
        Ok(result) => result,
        Err(payload) if IN_CUDARC.replace(false) => Err(Error::cuda_unavailable(panic_reason(payload.as_ref()))),
        Err(payload) => resume_unwind(payload),
    }
}

/// A panic hook, installed once, that records and silences panics raised in cudarc's source
/// while a guard runs on the panicking thread, and hands every other panic to the hook it
/// replaced. (A host that sets its own hook later gets cudarc's panics printed and propagated.)
fn install_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = GUARDED.try_with(Cell::get).unwrap_or(false);
            if guarded && info.location().is_some_and(|l| l.file().contains("cudarc")) {
                let _ = IN_CUDARC.try_with(|c| c.set(true));
            } else {
                previous(info);
            }
        }));
    });
}

/// cudarc's panic message, with the library a missing function belongs to.
fn panic_reason(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    match message.strip_prefix("Missing symbol ").and_then(|rest| rest.split(':').next()) {
        Some(symbol) => format!(
            "{} has no function {symbol}, which this build calls: it is older than this build needs \
             (CUDA 13 driver, cuBLAS 13, cuDNN 9) or not NVIDIA's ({message})",
            library_of(symbol)
        ),
        None => format!("cudarc failed inside a CUDA call: {message}"),
    }
}

/// The library a CUDA API function comes from, by its name's prefix.
fn library_of(symbol: &str) -> &'static str {
    if symbol.starts_with("cudnn") {
        "libcudnn"
    } else if symbol.starts_with("cublasLt") {
        "libcublasLt"
    } else if symbol.starts_with("cublas") {
        "libcublas"
    } else if symbol.starts_with("nvrtc") {
        "libnvrtc"
    } else {
        "libcuda (the NVIDIA driver)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_older_than_cuda_13_is_refused_naming_both_versions() {
        let e = driver_new_enough(12040).unwrap_err().to_string();
        assert_eq!(
            e,
            "CUDA is unavailable: the driver supports CUDA 12.4 (12040); this build needs 13.0 (13000) or newer: \
             update the NVIDIA driver"
        );
        assert!(driver_new_enough(13000).is_ok() && driver_new_enough(13020).is_ok());
    }

    #[test]
    fn cudarc_looks_for_the_sonames_we_require() {
        for (stem, soname) in CUDARC_LOADS {
            assert!(REQUIRED_LIBRARIES.contains(&soname));
            let names = cudarc::get_lib_name_candidates(stem);
            assert!(names.iter().any(|n| n == soname), "cudarc's {stem} loader never tries {soname}: {names:?}");
        }
    }

    #[test]
    fn each_missing_library_is_named_with_where_to_get_it() {
        let failed = [
            ("libcublasLt.so.13", None),
            ("libcudnn_cnn.so.9", None),
            ("libcudnn_ops.so.9", None),
            ("libcudnn.so.9", Some("libcudnn.so.9: wrong ELF class: ELFCLASS32".to_string())),
        ];
        let m = missing_message(&failed);
        assert!(m.starts_with("libcublasLt.so.13 was not found (pip's nvidia-cublas wheel"), "{m}");
        assert!(m.contains("libcudnn_cnn.so.9, libcudnn_ops.so.9 were not found (pip's nvidia-cudnn-cu13"), "{m}");
        assert!(m.ends_with("; libcudnn.so.9 did not load: libcudnn.so.9: wrong ELF class: ELFCLASS32"), "{m}");
    }

    #[test]
    fn a_missing_function_names_its_library() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("Missing symbol cudnnCreate: dlsym failed".to_string());
        let m = panic_reason(payload.as_ref());
        assert!(m.starts_with("libcudnn has no function cudnnCreate, which this build calls"), "{m}");
        let payload: Box<dyn std::any::Any + Send> = Box::new("Missing symbol cuDeviceGet: dlsym failed");
        assert!(panic_reason(payload.as_ref()).starts_with("libcuda (the NVIDIA driver) has no function cuDeviceGet"));
    }

    #[test]
    fn a_panic_outside_cudarc_is_not_taken_for_cuda_being_unavailable() {
        let caught = catch_unwind(|| unwind_to_unavailable::<()>(|| panic!("a bug of ours")));
        let payload = caught.expect_err("the panic goes on");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"a bug of ours"));
        assert!(!IN_CUDARC.get() && !GUARDED.get());
    }
}
