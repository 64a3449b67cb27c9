//! Model handles. A handle is a token drawn from a counter and looked up in a registry of live
//! models; it never points into our memory. So a freed handle is recognised without reading
//! freed memory, and since tokens are never reused within a process, a stale handle can never
//! alias a model loaded later at the same address (which a pointer-based handle would).

use super::{Failure, FfiResult, PatchcoreStatus};
use crate::backend::AnyBackend;
use crate::patchcore::PatchCore;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// An opaque model handle: created by `patchcore_load`, released by `patchcore_free`. It is a
/// token, not a pointer: never dereference it.
pub struct PatchcoreModel {
    _opaque: [u8; 0],
}

/// What a handle stands for.
pub(crate) struct Model {
    pub core: PatchCore<AnyBackend>,
    /// The device the model runs on, as `patchcore_model_info` reports it.
    pub device: &'static CStr,
    /// The backbone's name, as `patchcore_model_info` reports it.
    pub backbone: CString,
}

/// Live models by token. Calls clone the `Arc` under a short read lock and compute without
/// it, so concurrent calls never wait on each other here, and a `patchcore_free` racing a
/// prediction on another thread only drops the model once that prediction is done.
static MODELS: RwLock<BTreeMap<usize, Arc<Model>>> = RwLock::new(BTreeMap::new());

/// Tokens start well above small integers (a host that passes `1` or a `bool` by mistake gets
/// STALE_HANDLE, not someone's model) and step by 16 so that they look like aligned pointers
/// in a debugger.
const FIRST_TOKEN: usize = 0x5c_0000;
const TOKEN_STEP: usize = 16;
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(FIRST_TOKEN);

pub(crate) fn register(model: Model) -> *mut PatchcoreModel {
    let token = NEXT_TOKEN.fetch_add(TOKEN_STEP, Ordering::Relaxed);
    // A panic elsewhere cannot leave the map half-updated (every critical section is a single
    // insert, get or remove), so a poisoned lock is still consistent.
    MODELS.write().unwrap_or_else(PoisonError::into_inner).insert(token, Arc::new(model));
    std::ptr::without_provenance_mut(token)
}

/// The model behind a handle, or why there is none.
pub(crate) fn lookup(handle: *const PatchcoreModel) -> FfiResult<Arc<Model>> {
    if handle.is_null() {
        return Err(Failure::null("model"));
    }
    let models = MODELS.read().unwrap_or_else(PoisonError::into_inner);
    models.get(&handle.addr()).cloned().ok_or_else(|| stale(handle))
}

/// Forgets a handle; the model is dropped once no call is using it any more.
pub(crate) fn release(handle: *mut PatchcoreModel) -> FfiResult {
    let removed = MODELS.write().unwrap_or_else(PoisonError::into_inner).remove(&handle.addr());
    // Dropped here, outside the lock: freeing a large memory bank should not block other calls.
    removed.map(drop).ok_or_else(|| stale(handle))
}

fn stale(handle: *const PatchcoreModel) -> Failure {
    Failure::new(
        PatchcoreStatus::PATCHCORE_STALE_HANDLE,
        format!("model handle {handle:p} is not live: it was already freed, or did not come from patchcore_load"),
    )
}
