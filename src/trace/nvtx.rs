//! NVTX ranges for the trace's spans, so `nsys profile patchcore predict ...` shows our stages
//! over the kernels they launch.
//!
//! How a profiler receives NVTX today, and so what this does: NVTX v3 (CUDA 10.0 on, and the only
//! NVTX of CUDA 12.9 and 13, which no longer ship libnvToolsExt) is header-only. Each
//! `nvtxRangePushA` in an application jumps through a function pointer that starts out as a
//! one-time initialiser: it reads `NVTX_INJECTION64_PATH` (Nsight Systems sets it in the profiled
//! process to its injection library), dlopens that library, calls its `InitializeInjectionNvtx2`
//! with the application's `GetExportTable`, and the tool writes its own functions into the
//! application's pointer slots through that table. The old libnvToolsExt.so.1 (NVTX v2) is that
//! same loader compiled into a library: with the variable unset it finds no tool and does nothing.
//! So loading libnvToolsExt would add a library CUDA 13 lacks and nothing else; instead this
//! module is the v3 loader's handshake in Rust (the types of nvtxDetail/nvtxTypes.h), and it
//! needs no NVIDIA library at all. It offers the tool every module's table, as the header does,
//! so that a tool sees what it sees in any NVTX v3 application; only the core module's
//! RangePushA and RangePop are ever called.
//!
//! When no profiler is attached (the variable is unset, its library does not load, lacks the
//! entry point or declines) NVTX is silently absent and spans cost what they cost without it.

use std::ffi::{c_char, c_int, c_void, CString, OsStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// The environment variable a profiler names its injection library in (64-bit processes).
pub const INJECTION_VARIABLE: &str = "NVTX_INJECTION64_PATH";

/// nvtxTypes.h: `NVTX_ETID_CALLBACKS`, `NVTX_ETID_VERSIONINFO`, `NVTX_CB_MODULE_CORE`.
const EXPORT_TABLE_CALLBACKS: u32 = 1;
const EXPORT_TABLE_VERSION_INFO: u32 = 3;
const MODULE_CORE: usize = 1;
/// `NVTX_CBID_<module>_SIZE` by `NvtxCallbackModule`: 1 core, 2 CUDA, 3 OpenCL, 4 CUDA runtime,
/// 5 core2 (domains), 6 sync; 0 is invalid. A module's callbacks are numbered 1..SIZE.
const MODULE_SIZES: [usize; 7] = [0, 16, 9, 15, 7, 16, 7];
const MAX_SIZE: usize = 16;
/// `NVTX_CBID_CORE_RangePushA`, `NVTX_CBID_CORE_RangePop`.
const RANGE_PUSH_A: usize = 9;
const RANGE_POP: usize = 11;
/// `NVTX_VERSION` of the headers whose handshake this is.
const NVTX_VERSION: u32 = 3;

type PushA = unsafe extern "C" fn(*const c_char) -> c_int;
type Pop = unsafe extern "C" fn() -> c_int;
type GetExportTable = unsafe extern "C" fn(u32) -> *const c_void;
type InitializeInjection = unsafe extern "C" fn(GetExportTable) -> c_int;

/// `NvtxExportTableCallbacks`.
#[repr(C)]
struct Callbacks {
    struct_size: usize,
    get_module_function_table: unsafe extern "C" fn(c_int, *mut *const *mut c_void, *mut u32) -> c_int,
}

/// `NvtxExportTableVersionInfo`.
#[repr(C)]
struct VersionInfo {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: unsafe extern "C" fn(u32),
}

/// Each module's function-pointer slots, indexed by callback id: the tool writes its functions
/// here, during the handshake or later (a tool may also clear them). `AtomicPtr` has the layout
/// of a plain pointer, which is what the tool writes through.
static SLOTS: [[AtomicPtr<c_void>; MAX_SIZE]; 7] = [const { [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SIZE] }; 7];

/// Each module's `NvtxFunctionTable`: a null, a pointer to each of its slots, and nulls (as the
/// header lays it out; the tool is told the module's size).
struct Tables([[*mut c_void; MAX_SIZE + 1]; 7]);
// SAFETY: the pointers are to `SLOTS`, a static; the tables themselves are never written.
unsafe impl Sync for Tables {}
unsafe impl Send for Tables {}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut tables = [[ptr::null_mut(); MAX_SIZE + 1]; 7];
        for (module, table) in tables.iter_mut().enumerate() {
            for id in 1..MODULE_SIZES[module] {
                table[id] = SLOTS[module][id].as_ptr() as *mut c_void;
            }
        }
        Tables(tables)
    })
}

unsafe extern "C" fn get_module_function_table(
    module: c_int,
    out_table: *mut *const *mut c_void,
    out_size: *mut u32,
) -> c_int {
    // 0 for a module this NVTX does not know, as the header answers.
    let Some(&size) = usize::try_from(module).ok().and_then(|m| MODULE_SIZES.get(m)).filter(|&&s| s > 0) else {
        return 0;
    };
    // SAFETY: the tool passes writable pointers or null, per the NVTX export-table contract.
    unsafe {
        if !out_size.is_null() {
            *out_size = size as u32;
        }
        if !out_table.is_null() {
            *out_table = tables().0[module as usize].as_ptr();
        }
    }
    1
}

unsafe extern "C" fn set_injection_nvtx_version(_version: u32) {}

static CALLBACKS: Callbacks = Callbacks { struct_size: size_of::<Callbacks>(), get_module_function_table };
static VERSION_INFO: VersionInfo = VersionInfo {
    struct_size: size_of::<VersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

unsafe extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        EXPORT_TABLE_CALLBACKS => &CALLBACKS as *const Callbacks as *const c_void,
        EXPORT_TABLE_VERSION_INFO => &VERSION_INFO as *const VersionInfo as *const c_void,
        _ => ptr::null(),
    }
}

/// Attaches to the profiler `NVTX_INJECTION64_PATH` names, once: true when its library loaded
/// and accepted the handshake. Call before the first span that should show.
pub fn attach() -> bool {
    static ATTACHED: OnceLock<bool> = OnceLock::new();
    *ATTACHED.get_or_init(|| std::env::var_os(INJECTION_VARIABLE).is_some_and(|path| handshake(&path)))
}

fn handshake(path: &OsStr) -> bool {
    // SAFETY: loading runs the tool's initialisers; the profiler put it there to be loaded so.
    let Ok(library) = (unsafe { libloading::Library::new(path) }) else { return false };
    // SAFETY: `InitializeInjectionNvtx2` has this signature in every NVTX injection library.
    let accepted = match unsafe { library.get::<InitializeInjection>(b"InitializeInjectionNvtx2\0") } {
        // SAFETY: the tool's entry point, called once, as the NVTX loader does.
        Ok(init) => (unsafe { init(get_export_table) }) != 0,
        Err(_) => false,
    };
    if accepted {
        // Never unloaded: the tool's functions sit in our slots from now on.
        std::mem::forget(library);
    }
    accepted
}

/// Opens a range on this thread: `nvtxRangePushA(name)`. A name with a NUL is cut there.
pub fn push(name: &str) {
    let f = SLOTS[MODULE_CORE][RANGE_PUSH_A].load(Ordering::Acquire);
    if f.is_null() {
        return;
    }
    let name = CString::new(name.split('\0').next().unwrap_or_default()).unwrap_or_default();
    // SAFETY: the tool wrote its nvtxRangePushA into this slot; the string outlives the call.
    unsafe { std::mem::transmute::<*mut c_void, PushA>(f)(name.as_ptr()) };
}

/// Closes this thread's innermost range: `nvtxRangePop()`.
pub fn pop() {
    let f = SLOTS[MODULE_CORE][RANGE_POP].load(Ordering::Acquire);
    if !f.is_null() {
        // SAFETY: the tool wrote its nvtxRangePop into this slot.
        unsafe { std::mem::transmute::<*mut c_void, Pop>(f)() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool's side of the handshake, as Nsight Systems does it: ask for the callbacks table,
    /// then the core module's, and write into the slots it gets.
    unsafe extern "C" fn fake_push(_name: *const c_char) -> c_int {
        7
    }

    #[test]
    fn a_tool_finds_the_core_slots_through_the_export_table() {
        unsafe {
            assert!(get_export_table(2).is_null() && get_export_table(0).is_null());
            let version = &*(get_export_table(EXPORT_TABLE_VERSION_INFO) as *const VersionInfo);
            assert_eq!((version.struct_size, version.version), (24, 3));
            let callbacks = &*(get_export_table(EXPORT_TABLE_CALLBACKS) as *const Callbacks);
            assert_eq!(callbacks.struct_size, 16);
            let (mut table, mut size) = (ptr::null(), 0u32);
            for unknown in [0, 7, -1] {
                assert_eq!((callbacks.get_module_function_table)(unknown, &mut table, &mut size), 0);
            }
            // The CUDA runtime module (4): 6 callbacks, every one a distinct slot, and the nulls.
            assert_eq!((callbacks.get_module_function_table)(4, &mut table, &mut size), 1);
            let entries = std::slice::from_raw_parts(table, size as usize + 1);
            assert_eq!(size, 7);
            assert!(entries[0].is_null() && entries[7].is_null() && entries[1..7].iter().all(|e| !e.is_null()));
            assert_eq!((callbacks.get_module_function_table)(MODULE_CORE as c_int, &mut table, &mut size), 1);
            assert_eq!(size, 16);
            let entries = std::slice::from_raw_parts(table, size as usize + 1);
            assert!(entries[0].is_null() && entries[16].is_null());
            let slot = &SLOTS[MODULE_CORE][RANGE_PUSH_A];
            assert_eq!(entries[RANGE_PUSH_A], slot.as_ptr() as *mut c_void);
            // The slot a tool writes through is the one `push` reads.
            *(entries[RANGE_PUSH_A] as *mut PushA) = fake_push;
            assert_eq!(slot.load(Ordering::Acquire), fake_push as *mut c_void);
            slot.store(ptr::null_mut(), Ordering::Release);
        }
    }
}
