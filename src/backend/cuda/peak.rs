//! The GPU's peak for `patchcore profile`: FP32 FLOP/s from its properties (SMs x FP32 FMA per
//! clock per SM x 2 x clock; no probe reaches it without tensor cores), memory bandwidth from a
//! device-to-device copy timed with CUDA events, and the bandwidth its properties promise.
//!
//! CUDA 13 removed `clockRate` and `memoryClockRate` from the runtime's cudaDeviceProp; the
//! driver's attributes (CU_DEVICE_ATTRIBUTE_CLOCK_RATE, _MEMORY_CLOCK_RATE, both kHz) remain and
//! are what is read here. A driver that answers 0 leaves that figure out.

use super::device::CudaBackend;
use super::GpuPeak;
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute as Attr, CUevent_flags};

/// What the driver says about the device, as its attributes give it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Properties {
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
    pub clock_khz: u32,
    pub memory_clock_khz: u32,
    pub memory_bus_bits: u32,
}

/// FP32 FMA units per SM (CUDA C Programming Guide, "Arithmetic Instructions" throughput table)
/// for the compute capabilities CUDA 13 builds for: Turing, A100 and Volta-class 64; GA10x, Ada,
/// Hopper and Blackwell 128. None for one this table predates.
pub fn fp32_fma_per_clock_per_sm((major, minor): (u32, u32)) -> Option<u32> {
    match (major, minor) {
        (7, _) | (8, 0) => Some(64),
        (8, 6..=9) | (9, 0) | (10..=12, _) => Some(128),
        _ => None,
    }
}

impl Properties {
    /// SMs x FMA/clk x 2 FLOP x clock.
    pub fn fp32_gflop_per_s(&self) -> Option<f64> {
        let fma = fp32_fma_per_clock_per_sm(self.compute_capability)?;
        let flops = self.sm_count as f64 * fma as f64 * 2.0 * self.clock_khz as f64 * 1e3;
        (flops > 0.0).then_some(flops / 1e9)
    }

    /// Double data rate x memory clock x bus width in bytes.
    pub fn memory_gb_per_s(&self) -> Option<f64> {
        let bytes = 2.0 * self.memory_clock_khz as f64 * 1e3 * self.memory_bus_bits as f64 / 8.0;
        (bytes > 0.0).then_some(bytes / 1e9)
    }
}

/// 256 MiB each way, far above any L2; the best of a few copies after a first.
const COPY_BYTES: usize = 256 << 20;
const COPY_REPEATS: usize = 5;

impl CudaBackend {
    /// The device's properties as its attributes give them.
    pub fn properties(&self) -> Result<Properties> {
        let ctx = self.stream().context();
        let get = |a: Attr| -> Result<u32> {
            ctx.attribute(a)
                .map(|v| v.max(0) as u32)
                .map_err(|e| Error::device_failure(format!("CUDA device attribute {a:?}: {e}")))
        };
        Ok(Properties {
            sm_count: get(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            compute_capability: (
                get(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                get(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            clock_khz: get(Attr::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
            memory_clock_khz: get(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?,
            memory_bus_bits: get(Attr::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
        })
    }

    /// The peak from the properties and a device-to-device copy (read + write counted).
    pub fn peak(&self) -> Result<GpuPeak> {
        let failed = |what: &'static str| move |e| Error::device_failure(format!("CUDA peak probe, {what}: {e}"));
        let properties = self.properties()?;
        let stream = self.stream();
        let src = stream.alloc_zeros::<u8>(COPY_BYTES).map_err(failed("allocation"))?;
        let mut dst = stream.alloc_zeros::<u8>(COPY_BYTES).map_err(failed("allocation"))?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut best_ms = f32::INFINITY;
        for repeat in 0..=COPY_REPEATS {
            let start = stream.record_event(timing).map_err(failed("event"))?;
            stream.memcpy_dtod(&src, &mut dst).map_err(failed("copy"))?;
            let end = stream.record_event(timing).map_err(failed("event"))?;
            let ms = start.elapsed_ms(&end).map_err(failed("event"))?;
            // The first copy pays for first touches.
            if repeat > 0 {
                best_ms = best_ms.min(ms);
            }
        }
        Ok(GpuPeak {
            fp32_gflop_per_s: properties.fp32_gflop_per_s(),
            copy_gb_per_s: 2.0 * COPY_BYTES as f64 / (f64::from(best_ms) * 1e-3) / 1e9,
            spec_gb_per_s: properties.memory_gb_per_s(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100 SXM5 as its driver reports it: 132 SMs of CC 9.0 at 1980 MHz, HBM3 at 2619 MHz
    /// on 5120 bits. NVIDIA's datasheet gives 67 TFLOP/s FP32 and 3.35 TB/s.
    const H100: Properties = Properties {
        sm_count: 132,
        compute_capability: (9, 0),
        clock_khz: 1_980_000,
        memory_clock_khz: 2_619_000,
        memory_bus_bits: 5120,
    };

    #[test]
    fn an_h100s_properties_give_its_datasheet_peaks() {
        let flops = H100.fp32_gflop_per_s().unwrap();
        assert!((flops - 132.0 * 128.0 * 2.0 * 1.98).abs() < 1e-6, "{flops}");
        assert!((flops / 1e3 - 67.0).abs() < 0.5, "{flops} GFLOP/s is not the datasheet's 67 TFLOP/s");
        let bandwidth = H100.memory_gb_per_s().unwrap();
        assert!((bandwidth - 3352.32).abs() < 1e-6, "{bandwidth}");
    }

    #[test]
    fn the_fp32_width_follows_the_compute_capability() {
        // A100: 108 SMs x 64 at 1410 MHz is the datasheet's 19.5 TFLOP/s.
        let a100 = Properties { sm_count: 108, compute_capability: (8, 0), clock_khz: 1_410_000, ..H100 };
        assert!((a100.fp32_gflop_per_s().unwrap() / 1e3 - 19.5).abs() < 0.05);
        // An RTX 4090 (8.9): 128 SMs x 128 at 2520 MHz is its 82.6 TFLOP/s.
        let ada = Properties { sm_count: 128, compute_capability: (8, 9), clock_khz: 2_520_000, ..H100 };
        assert!((ada.fp32_gflop_per_s().unwrap() / 1e3 - 82.6).abs() < 0.05);
        assert_eq!(fp32_fma_per_clock_per_sm((7, 5)), Some(64));
        assert_eq!(fp32_fma_per_clock_per_sm((6, 1)), None, "older than CUDA 13 builds for");
        // A driver that reports no clock leaves the figure out rather than claiming 0.
        assert_eq!(Properties { clock_khz: 0, memory_clock_khz: 0, ..H100 }.fp32_gflop_per_s(), None);
        assert_eq!(Properties { memory_clock_khz: 0, ..H100 }.memory_gb_per_s(), None);
    }
}
