//! Plain loops compiled for the widest vectors the CPU has. The crate is compiled for x86-64's
//! baseline, SSE2 (4 f32 lanes), so that one binary runs on every x86-64 CPU; the kernels that
//! need more name their instructions (`amx`, `conv_amx`, `knn_screen`). The rest, loops the
//! compiler vectorises (pooling, resizing, blurring), ran 4 lanes wide: `vectorised` compiles
//! them again for AVX-512F and for AVX2 and picks one at run time.
//!
//! The result is the same in every build: Rust never reassociates or contracts f32 arithmetic,
//! so a vectorised loop computes each value with the same operations in the same order.

/// `f()`, compiled for AVX-512F where the CPU has it, else for AVX2, else for the baseline.
/// Only what is inlined into `f` is compiled again: its own code, and functions marked
/// `#[inline(always)]`. A rayon task runs outside its caller's frame, so each task calls this
/// itself.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
