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
//!
//! The heap's first gigabyte is also marked for transparent huge pages (`madvise`, where the
//! kernel's THP mode is `madvise`, as on most distributions): a fault then maps 2 MiB instead of
//! 4 KiB. The model's load touches about 90 MB of fresh memory (the bank, its screening form, the
//! packed convolutions); a one-image predict took 23 k faults and a third of its CPU time in the
//! kernel. With the mark: 10.6 k faults, 10-13 ms less CPU and 7-8 ms less wall time
//! (docs/PERFORMANCE.md, round 10).
//!
//! The pool's threads allocate from arenas of their own, which the mark on the heap does not
//! cover: each is marked too. Half the load (the bank's rows and screening form) runs on one of
//! them; 24 images at batch 1 then took 2,750 faults instead of 7,400 and 12 ms less wall time
//! (round 13).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MADV_HUGEPAGE: i32 = 14;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
    fn malloc(size: usize) -> *mut u8;
    fn free(p: *mut u8);
    fn sbrk(increment: isize) -> *mut u8;
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
}

/// Applies the policy (glibc only; elsewhere the allocator's own is kept).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes glibc's thresholds; it is called before any thread starts.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
        huge_pages_for_the_heap();
        rayon::broadcast(|_| huge_pages_for_this_threads_arena());
    }
}

/// Grows the heap by `RESERVE` bytes of address space (nothing is touched, so nothing is
/// committed) and marks them for transparent huge pages. Where anything fails (no THP, a heap
/// that cannot grow), the pages stay small: only speed depends on it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn huge_pages_for_the_heap() {
    const M_TOP_PAD: i32 = -2;
    const RESERVE: usize = 1 << 30;
    const HUGE_PAGE: usize = 1 << 21;
    // SAFETY: glibc calls on this thread before any other starts. The block is freed at once and
    // never written; the advice covers the heap's own pages, from the block's start (inside the
    // heap, as mmap is off) to the heap's end, and changes how they are backed, not their contents.
    unsafe {
        // The block needs more than the heap holds, so the heap grows by it plus the top pad;
        // freed, and never trimmed, that space stays the heap's.
        mallopt(M_TOP_PAD, RESERVE as i32);
        let block = malloc(64 << 20);
        free(block);
        mallopt(M_TOP_PAD, 0);
        let (start, end) = ((block as usize).next_multiple_of(HUGE_PAGE), sbrk(0) as usize);
        if !block.is_null() && start < end {
            madvise(start as *mut u8, end - start, MADV_HUGEPAGE);
        }
    }
}

/// Marks the calling thread's malloc arena for transparent huge pages where it is one of glibc's
/// thread arenas: a reservation of HEAP_MAX_SIZE (64 MiB on 64-bit) aligned to its size and
/// committed as it grows, so the mark covers the pages it will commit too. A block in the main
/// heap (below its end) is left alone: `huge_pages_for_the_heap` marked it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn huge_pages_for_this_threads_arena() {
    const ARENA: usize = 64 << 20;
    // SAFETY: a block is allocated and freed, never written; the advice covers the reservation
    // that holds it, and changes how its pages are backed, not their contents.
    unsafe {
        let block = malloc(1 << 12);
        if !block.is_null() && block as usize > sbrk(0) as usize {
            madvise((block as usize & !(ARENA - 1)) as *mut u8, ARENA, MADV_HUGEPAGE);
        }
        free(block);
    }
}
