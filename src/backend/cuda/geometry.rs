// The launch geometry kernels/*.cu are written for, in one place. launch.rs includes this file,
// so the host launches with these numbers; build.rs includes it too and writes each constant into
// geometry.cuh in OUT_DIR, which the kernels include (through nvcc, and through g++ in the CPU
// emulation of tests/kernel_emulation.rs), so host and kernels cannot disagree. Where a kernel's
// code is written for one value only, it says so in a static_assert: a change here that it cannot
// follow fails the build rather than the results.
//
// Plain comments up here: a file that include! reads cannot open with inner (`//!`) docs.

/// Threads per block of every kernel but `knn_merge`.
pub const BLOCK: u32 = 256;
/// knn.cu: queries per block, and bank rows per tile (a bank split is a whole number of tiles).
pub const KNN_TILE: usize = 64;
/// knn.cu: candidate lists kept per (query, split) while folding, one per thread of the query's
/// (BLOCK / KNN_TILE); the block merges them into one list before writing it.
pub const KNN_LISTS: usize = 4;
/// knn.cu's `knn_merge`: threads per block, a warp per query (a multiple of 32).
pub const KNN_MERGE_BLOCK: u32 = 128;
/// The largest k knn.cu's register-resident lists hold.
pub const KNN_MAX_K: usize = 16;
/// coreset.cu: rows per block per grid-stride step (a half-warp per row).
pub const CORESET_ROWS_PER_BLOCK: usize = 16;
/// coreset.cu: the blocks per SM its kernels are compiled to keep resident at once
/// (`__launch_bounds__`), and so the most its grid gives each SM.
pub const CORESET_BLOCKS_PER_SM: usize = 4;
/// coreset.cu: the dimensions of the projection behind the lower bounds, `PROJ` of the CPU's
/// src/backend/cpu/coreset.rs (device.rs asserts that the two agree).
pub const CORESET_PROJ: usize = 16;
