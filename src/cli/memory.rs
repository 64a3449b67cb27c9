//! The CLI's allocation policy. glibc hands blocks above 128 KiB back to the OS when they are
//! freed (mmap/munmap, and trimming the heap's top), so each batch's activations are fresh pages
//! that fault on first touch, two threads contending for the page-table lock: 8,000 faults for
//! the stem's output of a batch of 8 at 256 px alone. Taking every block from the heap (no mmap;
//! glibc's threshold stops at 32 MiB, the stem's output at batch 8 is that size), never trimmed,
//! lets each batch reuse the last one's memory: ResNet-18's forward pass 14% faster at batch 8
//! with blocks up to 32 MiB kept, and the stem's convolution at batch 8 a further 23% with all of
//! them (docs/PERFORMANCE.md). The process's resident memory then stays at its peak, which suits
//! a command that runs one job. A library cannot choose this for its host: a C host sets it with
//! `mallopt` itself if it wants it.

/// Applies the policy (glibc only; elsewhere the allocator's own is kept).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes glibc's thresholds; it is called before any thread starts.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
