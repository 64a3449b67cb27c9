//! Is there a GPU this process can use? Answered without panicking: cudarc loads the CUDA
//! libraries lazily and panics inside the first call when one is missing, so each library is
//! looked for first, then the driver is asked for its devices.

use crate::error::{Error, Result};
use cudarc::driver::CudaContext;

struct Library {
    name: &'static str,
    present: fn() -> bool,
    advice: &'static str,
}

/// The libraries the backend loads (cuDNN 9 loads cuBLAS for some of its engines), each with
/// the advice for when it is missing.
const LIBRARIES: [Library; 3] = [
    Library { name: "libcuda (the NVIDIA driver)", present: driver_present, advice: "install the NVIDIA driver" },
    Library {
        name: "libcublas",
        present: cublas_present,
        advice: "add the folder holding libcublas.so.13 to LD_LIBRARY_PATH",
    },
    Library {
        name: "libcudnn",
        present: cudnn_present,
        advice: "add the folder holding libcudnn.so.9 to LD_LIBRARY_PATH",
    },
];

// SAFETY (all three): `is_culib_present` only tries to dlopen the library by its known names.
fn driver_present() -> bool {
    unsafe { cudarc::driver::sys::is_culib_present() }
}
fn cublas_present() -> bool {
    unsafe { cudarc::cublas::sys::is_culib_present() }
}
fn cudnn_present() -> bool {
    unsafe { cudarc::cudnn::sys::is_culib_present() }
}

/// Ok when device `ordinal` exists and every library the backend needs loads.
pub fn probe(ordinal: usize) -> Result<()> {
    for Library { name, present, advice } in LIBRARIES {
        if !present() {
            return Err(Error::cuda_unavailable(format!("{name} was not found ({advice})")));
        }
    }
    let count = CudaContext::device_count()
        .map_err(|e| Error::cuda_unavailable(format!("the driver reports {e} (`nvidia-smi` shows what it sees)")))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::cuda_unavailable(format!(
            "device {ordinal} does not exist: the driver sees {count} device(s), numbered from 0"
        )));
    }
    Ok(())
}
