//! Device time for the trace: while tracing, `backend::traced` records a CUDA event on the stream
//! before and after each operation (`Mark`), and the span's device time is the time between the
//! two as the GPU measured it, not host time around asynchronous calls. Each pair is read right
//! after the synchronisation `traced` does at the span's end, so nothing is kept pending.
//!
//! The GPU's clock is put on the trace's by one reference event per backend: recorded on an idle
//! stream and waited for, its completion is taken to be the host time read just after the wait
//! (late by the wake-up, a few microseconds). cuEventElapsedTime gives f32 milliseconds, so a
//! span a minute after the reference is placed to within ~4 microseconds.

use crate::error::{Error, Result};
use crate::trace::DeviceTiming;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};
use std::sync::{Arc, Mutex};

fn event_error(e: cudarc::driver::DriverError) -> Error {
    Error::device_failure(format!("CUDA event (tracing): {e}"))
}

/// The event every mark of one backend is measured from, and the host time it completed at.
struct Reference {
    event: CudaEvent,
    host_us: f64,
}

/// The backend's clock for traced operations: its reference, made at the first mark.
#[derive(Default)]
pub struct StreamClock {
    reference: Mutex<Option<Arc<Reference>>>,
}

/// A point on the stream: the work queued before it is done when its event completes.
pub struct Mark {
    event: CudaEvent,
    reference: Arc<Reference>,
}

impl StreamClock {
    /// A timing event recorded on `stream` now.
    pub fn mark(&self, stream: &Arc<CudaStream>) -> Result<Mark> {
        let reference = self.reference(stream)?;
        let event = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(event_error)?;
        Ok(Mark { event, reference })
    }

    fn reference(&self, stream: &Arc<CudaStream>) -> Result<Arc<Reference>> {
        let mut reference = self.reference.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reference.as_ref() {
            return Ok(r.clone());
        }
        stream.synchronize().map_err(event_error)?;
        let event = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(event_error)?;
        event.synchronize().map_err(event_error)?;
        let made = Arc::new(Reference { event, host_us: crate::trace::now_us() });
        *reference = Some(made.clone());
        Ok(made)
    }
}

impl Mark {
    /// The device time from this mark to `end` (waits for `end`), placed on the trace's clock.
    pub fn timing(&self, end: &Mark) -> Result<DeviceTiming> {
        let from_reference_ms = self.reference.event.elapsed_ms(&self.event).map_err(event_error)?;
        let elapsed_ms = self.event.elapsed_ms(&end.event).map_err(event_error)?;
        Ok(DeviceTiming { reference_us: self.reference.host_us, from_reference_ms, elapsed_ms })
    }
}
