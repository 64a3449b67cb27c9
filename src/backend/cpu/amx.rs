//! The bf16 tile products that the kNN's screening pass and the convolutions are built on, and the
//! bf16 splitting both use: `Tiles::block_32x32`, on Intel AMX where the CPU has it, else in
//! AVX512-BF16 registers (VDPBF16PS: AMD Zen 4 and later, Intel Cooper Lake), the same operands
//! in the same layouts, so that everything above them runs unchanged on either (`Engine`).
//!
//! Rust's AMX intrinsics are unstable, so the few instructions are inline assembly. Linux hands out
//! the 8 KiB tile state only to a process that asks for it (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! `engine` asks once and falls back to AVX512-BF16 on any CPU, OS or kernel that refuses.
//!
//! `PATCHCORE_BF16_PRODUCTS` (read once) picks the engine instead of the best the CPU has: `amx`,
//! `avx512` or `off` (no bf16 products: f32 convolutions and kNN), so that a machine with AMX can
//! run and time what one without it runs.

/// The instructions that multiply the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// TDPBF16PS on AMX tiles.
    Amx,
    /// VDPBF16PS on AVX-512 registers.
    Avx512Bf16,
    /// VFMADD231PS on AVX-512 registers, for tiles that hold f32 where the others hold bf16 pairs
    /// (`conv_amx`'s `Arithmetic::F32`): a 64-byte A row is 16 f32 depths, a B tile row one
    /// depth's 16 columns. Any CPU with AVX-512F; never `engine()`'s, which multiplies bf16.
    Avx512F32,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Amx => "AMX",
            Engine::Avx512Bf16 => "AVX512-BF16",
            Engine::Avx512F32 => "AVX-512",
        }
    }
}

/// The engine this process multiplies bf16 tiles with, or why it has none. Checked once.
pub fn engine() -> Result<Engine, &'static str> {
    static ENGINE: std::sync::OnceLock<Result<Engine, &'static str>> = std::sync::OnceLock::new();
    *ENGINE.get_or_init(|| {
        let asked = std::env::var("PATCHCORE_BF16_PRODUCTS").unwrap_or_default();
        match asked.as_str() {
            "" => amx_reason().map_or(Ok(Engine::Amx), |_| avx512_bf16_reason().map_or(Ok(Engine::Avx512Bf16), Err)),
            "amx" => amx_reason().map_or(Ok(Engine::Amx), Err),
            "avx512" => avx512_bf16_reason().map_or(Ok(Engine::Avx512Bf16), Err),
            "off" => Err("PATCHCORE_BF16_PRODUCTS=off"),
            _ => Err("PATCHCORE_BF16_PRODUCTS is not amx, avx512 or off"),
        }
    })
}

/// Why there are no bf16 tile products here (`engine`'s error), or `None` when there are.
pub fn unavailable_reason() -> Option<&'static str> {
    engine().err()
}

/// Why `Engine::Avx512F32` cannot multiply f32 tiles here, or `None` when it can.
pub fn f32_unavailable_reason() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    Some("the CPU has no AVX-512F")
}

/// Why AVX512-BF16 cannot multiply the tiles here, or `None` when it can.
fn avx512_bf16_reason() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16") {
        return None;
    }
    Some("the CPU has neither AMX-BF16 nor AVX512-BF16 (Intel Sapphire Rapids or AMD Zen 4 and later have one)")
}

/// Why AMX cannot multiply the tiles here, or `None` when it can: AMX-TILE, AMX-BF16 and
/// AVX-512F (the code around the tiles is compiled for it) in CPUID, then the kernel's permission
/// for the tile data.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_reason() -> Option<&'static str> {
    use std::arch::x86_64::__cpuid_count;
    // CPUID exists on every x86_64 CPU; leaf 7 reads as 0s where it is unknown.
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return Some("the CPU has no AMX-BF16 (Intel Sapphire Rapids or later has it)");
    }
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Some("the CPU reports AMX but not AVX-512F");
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes this process's permission
    // to use the tile registers; the syscall clobbers rcx and r11 and returns in rax.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret != 0).then_some("the kernel refused the AMX tile state (Linux >= 5.16 grants it)")
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_reason() -> Option<&'static str> {
    Some("AMX is used only on x86_64 Linux")
}

/// x rounded to bf16 (nearest, ties to even) with subnormals flushed to zero, as AMX and VDPBF16PS read them.
/// Integer arithmetic without branches, so that loops over it vectorise (the conversions of a
/// convolution's input run over every activation); exact for every x but NaNs whose payload
/// lies in the low 16 bits only (callers pass `suitable` values).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + (bits >> 16 & 1)) >> 16) as u16;
    // A zero exponent field (zero or subnormal) keeps only the sign.
    let keep = if rounded & 0x7f80 == 0 { 0x8000 } else { 0xffff };
    rounded & keep
}

#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// x as hi + lo (+ a residual), both bf16.
#[inline(always)]
pub fn split(x: f32) -> (u16, u16) {
    let hi = to_bf16(x);
    // x - hi is exact in f32: hi is x rounded to fewer bits of the same or a larger exponent.
    (hi, to_bf16(x - from_bf16(hi)))
}

/// Inputs beyond this magnitude take the f32 paths: the split's products could overflow where the
/// kNN bound's arithmetic assumes they do not, and a convolution's sums could.
pub const LIMIT: f32 = 1e15;

/// Whether every value is finite and within `LIMIT`, as the bf16 paths require. Without an early
/// exit, so that it vectorises: it runs over every convolution's input.
pub fn suitable(values: &[f32]) -> bool {
    values.iter().fold(true, |ok, x| ok & (x.abs() <= LIMIT))
}

/// A zeroed buffer whose first element is 64-byte aligned, for the tiles' operands and results.
/// TILELOADD from an address that is not a multiple of 64 splits each 64-byte tile row across two
/// cache lines; on the 2-core Xeon that took 15 ns a load from L1 against 2.3 ns aligned, and the
/// screening's products, one load per TDPBF16PS (4.8 ns), ran at the misaligned loads' rate.
pub struct TileBuf<T> {
    data: Vec<T>,
    offset: usize,
    len: usize,
}

impl<T: Copy + Default> TileBuf<T> {
    pub fn zeroed(len: usize) -> TileBuf<T> {
        let slack = 64 / std::mem::size_of::<T>();
        let data = vec![T::default(); len + slack];
        let offset = data.as_ptr().align_offset(64);
        assert!(offset < slack, "TileBuf: no 64-byte aligned start within the buffer");
        TileBuf { data, offset, len }
    }

    /// The most values `reuse` keeps this buffer's memory for.
    pub fn capacity(&self) -> usize {
        self.data.len() - self.offset
    }

    /// `len` values in this buffer's memory where it has room for them (keeping its values, so
    /// that a caller that writes them all faults no page in again), else in a new zeroed buffer.
    pub fn reuse(mut self, len: usize) -> TileBuf<T> {
        if self.offset + len > self.data.len() {
            return TileBuf::zeroed(len);
        }
        self.len = len;
        self
    }
}

impl<T> std::ops::Deref for TileBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data[self.offset..][..self.len]
    }
}

impl<T> std::ops::DerefMut for TileBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data[self.offset..][..self.len]
    }
}

/// Rows of an A, B or C tile, and bf16 values in an A tile's row (64 bytes).
pub const TILE_ROWS: usize = 16;
pub const TILE_K: usize = 32;
/// One packed B tile: `TILE_K / 2` rows of `TILE_ROWS` bf16 pairs.
pub const B_TILE_LEN: usize = TILE_K * TILE_ROWS;

/// `Tiles::block_32x32`'s steps for a depth of `tiles` tiles read in order: A from rows of
/// `tiles * TILE_K` bf16 (step t at byte 64 t of each row), B from consecutive packed tiles.
pub fn in_order(tiles: usize) -> Vec<[usize; 2]> {
    (0..tiles).map(|t| [2 * TILE_K * t, 2 * B_TILE_LEN * t]).collect()
}

/// `rows` rows packed as B tiles (groups of 16 rows, each `tiles` tiles of `B_TILE_LEN`; zero rows
/// pad the last group up to `groups` groups): `fill(r, depth)` writes row r's `tiles * TILE_K`
/// values (zeroed before). In parallel over the groups; what `fill` returns, a value per row in
/// row order (the kNN screen's norms of each row, computed as it is written).
///
/// A tile holds its 16 rows' values in pairs: pair p of row r at p * 32 + r * 2. So a group, its
/// 16 rows filled side by side, is the transpose of a 16 x (tiles * 16) matrix of pairs (32-bit
/// values): `transpose_pairs`, 16 x 16 blocks in registers, where each row's pairs were copied
/// one by one (a one-image predict's CPU time, the model's load nearly all of it: 114 -> 109 ms,
/// the fastest of 15 runs each).
pub fn pack_b<T: Send>(
    rows: usize,
    groups: usize,
    tiles: usize,
    fill: impl Fn(usize, &mut [u16]) -> T + Sync,
) -> (TileBuf<u16>, Vec<T>) {
    use crate::wide::vectorised;
    use rayon::prelude::*;
    let (width, group_len) = (tiles * TILE_K, tiles * B_TILE_LEN);
    let mut packed = TileBuf::zeroed(groups * group_len);
    let filled: Vec<Vec<T>> = packed
        .par_chunks_mut(group_len)
        .enumerate()
        .map(|(g, group)| {
            let mut side_by_side = vec![0u16; TILE_ROWS * width];
            let rows = g * TILE_ROWS..((g + 1) * TILE_ROWS).min(rows);
            // Compiled for the CPU's widest vectors, with `fill` where it is inlined.
            let values = vectorised(
                #[inline(always)]
                || rows.zip(side_by_side.chunks_exact_mut(width)).map(|(r, depth)| fill(r, depth)).collect(),
            );
            transpose_pairs(&side_by_side, group);
            values
        })
        .collect();
    (packed, filled.into_iter().flatten().collect())
}

/// `out` (n x 16 pairs of u16) = the transpose of `rows` (16 x n pairs).
fn transpose_pairs(rows: &[u16], out: &mut [u16]) {
    let n = rows.len() / (2 * TILE_ROWS);
    assert!(rows.len() == 2 * TILE_ROWS * n && out.len() == rows.len() && n.is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected; the assert sizes both buffers.
        return unsafe { transpose_pairs_avx512(rows, out, n) };
    }
    for (q, pair) in out.chunks_exact_mut(2 * TILE_ROWS).enumerate() {
        for (r, value) in pair.chunks_exact_mut(2).enumerate() {
            value.copy_from_slice(&rows[(r * n + q) * 2..][..2]);
        }
    }
}

/// `transpose_pairs` 16 x 16 pairs at a time (`transpose16` moves any 32-bit values).
///
/// # Safety
/// The CPU must support AVX-512F; `rows` and `out` hold 32 n values, n a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs_avx512(rows: &[u16], out: &mut [u16], n: usize) {
    use super::transpose::transpose16;
    use std::arch::x86_64::*;
    let (src, dst) = (rows.as_ptr().cast::<f32>(), out.as_mut_ptr().cast::<f32>());
    for q0 in (0..n).step_by(16) {
        // SAFETY: pairs r * n + q0 .. + 16 of row r and q0 + i of the output lie within the
        // 16 n pairs of each buffer (the caller's contract).
        unsafe {
            let mut block: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(src.add(r * n + q0)));
            transpose16(&mut block);
            for (i, line) in block.iter().enumerate() {
                _mm512_storeu_ps(dst.add((q0 + i) * TILE_ROWS), *line);
            }
        }
    }
}

/// The products of `block_32x32` on this thread: on AMX the tile registers configured for it,
/// released on drop (so the thread's context switches stop saving 8 KiB). Only made where
/// `engine()` is `Ok`; not `Send`, as the configuration belongs to the thread that loaded it.
pub struct Tiles {
    engine: Engine,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// # Safety
    /// `engine()` must have returned `Ok`.
    pub unsafe fn configure() -> Tiles {
        // SAFETY: the caller's contract.
        unsafe { Tiles::on(engine().expect("Tiles::configure: no bf16 products here")) }
    }

    /// Tiles on `engine`, whichever `engine()` chose (the tests compare the bf16 engines).
    ///
    /// # Safety
    /// The CPU must have `engine`: AMX with the kernel's permission (`amx_reason` is `None`),
    /// AVX-512F and AVX512-BF16, or AVX-512F.
    pub unsafe fn on(engine: Engine) -> Tiles {
        if engine == Engine::Amx {
            // Palette 1; tiles 0..8 all 16 rows of 64 bytes: C in tmm0-3, A in tmm4-5, B in tmm6-7.
            let mut cfg = [0u8; 64];
            cfg[0] = 1;
            for t in 0..8 {
                cfg[16 + 2 * t] = 64;
                cfg[48 + t] = TILE_ROWS as u8;
            }
            // SAFETY: the caller checked that AMX is usable; cfg is a valid 64-byte palette-1 config.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly));
            }
        }
        Tiles { engine, _thread: std::marker::PhantomData }
    }

    /// C[32 x 32] = sum over `steps` of A_s[32 x 32] * B_s[32 x 32] in bf16 with f32
    /// accumulation (TDPBF16PS or VDPBF16PS: products exact, sums rounded to nearest, denormal
    /// inputs and results flushed to zero); row r column n of C = A row r . B column n. The two
    /// engines add a row's products in different orders: the same value within f32's rounding
    /// of the sum (the bounds of `knn_screen` and `conv_amx` hold for any order). On
    /// `Avx512F32` the same with 16 f32 depths a step (an FMA each).
    ///
    /// Step s = [a, b] (bytes) takes its A tile's rows 0..16 from `a0 + a` and rows 16..32 from
    /// `a1 + a`, each row `a_stride` bytes after the previous one, and its two B tiles (16
    /// columns each: `TILE_K / 2` rows of 16 bf16 pairs, pair p of depths 2p, 2p + 1 for column n
    /// at `p * 32 + n * 2`) from `b` plus b bytes and `b_group` bf16 further. A depth read in
    /// order from rows of A is `in_order`'s steps; a convolution over channels-last pixels gives
    /// each step a kernel tap and 32 channels, its A rows output positions read in place
    /// (`conv_amx`). `c`: 32 rows of 32 f32, `c_stride` bytes apart.
    ///
    /// # Safety
    /// `steps` is not empty, and every tile a step names, and `c`, are valid memory as described.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_32x32(
        &self,
        a0: *const u16,
        a1: *const u16,
        a_stride: usize,
        steps: &[[usize; 2]],
        b: *const u16,
        b_group: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        assert!(!steps.is_empty(), "block_32x32: no steps");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the regions; `self` proves the engine is usable.
        unsafe {
            match self.engine {
                Engine::Amx => amx_block(a0, a1, a_stride, steps, b, b_group, c, c_stride),
                Engine::Avx512Bf16 | Engine::Avx512F32 => {
                    for (half, a) in [a0, a1].into_iter().enumerate() {
                        for r in (0..TILE_ROWS).step_by(REGISTER_ROWS) {
                            let (a, c) = (a.byte_add(r * a_stride), c.byte_add((half * TILE_ROWS + r) * c_stride));
                            self.registers(RegisterRows {
                                a: move |r| a.byte_add(r * a_stride),
                                steps,
                                b,
                                b_group,
                                c,
                                c_stride,
                            });
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a0, a1, a_stride, b, b_group, c, c_stride);
    }

    /// `block_32x32`'s products for rows of A that lie anywhere (row i's steps read from `a[i]`
    /// plus each step's A offset, `row_len` units from `a[i]` at most), each with `cols` columns
    /// of B (a multiple of 32: `cols / 16` tile groups, `b_group` units apart): C row i, at `c`
    /// plus i `c_stride` bytes, gets row `a[i]`'s `cols` products. For a few rows of a block
    /// wanted (the kNN's queries that a chunk's ball does not rule out), where whole blocks
    /// would mostly compute products nobody reads.
    ///
    /// The register engines read the rows in place, `REGISTER_ROWS` at a time. AMX's tile loads
    /// read 16 rows at one stride, so there the rows are first copied side by side into
    /// `scratch`, then multiplied 32 at a time and a last 16 (`amx_block` without `a1`); a row costs 768
    /// bytes of copying against 128 x 384 products for a chunk of the kNN's. C rows from
    /// `a.len()` up to the next multiple of 32 are written with products nobody reads (on AMX of
    /// what `scratch` held there).
    ///
    /// # Safety
    /// `steps` is not empty, every row, tile and C row named is valid memory as in `block_32x32`,
    /// and C holds `a.len()` rounded up to 32 rows.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gathered(
        &self,
        a: &[*const u16],
        row_len: usize,
        steps: &[[usize; 2]],
        b: *const u16,
        b_group: usize,
        cols: usize,
        c: *mut f32,
        c_stride: usize,
        scratch: &mut TileBuf<u16>,
    ) {
        assert!(!steps.is_empty() && cols.is_multiple_of(2 * TILE_ROWS), "gathered: no steps, or {cols} columns");
        assert!(steps.iter().all(|&[sa, _]| sa + 2 * TILE_K <= 2 * row_len), "gathered: a step reads past a row");
        let blocks = (0..cols).step_by(2 * TILE_ROWS).map(|col| (b.wrapping_add(col / TILE_ROWS * b_group), col));
        if self.engine != Engine::Amx {
            for (i, rows) in a.chunks(REGISTER_ROWS).enumerate() {
                // Rows past the end of `a` repeat its last one.
                let rows: [*const u16; REGISTER_ROWS] = std::array::from_fn(|r| rows[r.min(rows.len() - 1)]);
                for (b, col) in blocks.clone() {
                    // SAFETY: the caller's contract for these 8 rows and 32 columns.
                    let c = unsafe { c.byte_add(i * REGISTER_ROWS * c_stride).add(col) };
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above; `self` proves the engine is usable.
                    unsafe {
                        self.registers(RegisterRows { a: |r| rows[r], steps, b, b_group, c, c_stride })
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (c, rows, b);
                }
            }
            return;
        }
        let padded = a.len().next_multiple_of(TILE_ROWS);
        assert!(scratch.len() >= padded * row_len, "gathered: scratch for {padded} rows of {row_len}");
        for (&row, dst) in a.iter().zip(scratch.chunks_exact_mut(row_len)) {
            // SAFETY: the caller's contract: row_len units from each row are valid.
            dst.copy_from_slice(unsafe { std::slice::from_raw_parts(row, row_len) });
        }
        let stride = 2 * row_len;
        for r in (0..padded).step_by(2 * TILE_ROWS) {
            let a0 = scratch[r * row_len..].as_ptr();
            for (b, col) in blocks.clone() {
                // SAFETY: rows r.. of scratch hold `row_len` units each (the assert: 32 of them
                // where padded - r >= 32, else 16); the caller's contract for B and C.
                unsafe {
                    let c = c.byte_add(r * c_stride).add(col);
                    if padded - r >= 2 * TILE_ROWS {
                        self.block_32x32(a0, a0.add(TILE_ROWS * row_len), stride, steps, b, b_group, c, c_stride);
                    } else {
                        amx_block(a0, std::ptr::null(), stride, steps, b, b_group, c, c_stride);
                    }
                }
            }
        }
    }

    /// `registers_block` on this register engine.
    ///
    /// # Safety
    /// As `registers_block`'s; `self.engine` is not AMX.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn registers(&self, rows: RegisterRows<impl Fn(usize) -> *const u16>) {
        // SAFETY: the caller's contract; `self` proves the engine is usable.
        unsafe {
            match self.engine {
                Engine::Avx512Bf16 => registers_bf16(rows),
                _ => registers_f32(rows),
            }
        }
    }
}

/// A rows `Tiles::block_32x32` multiplies at a time in AVX-512 registers: their 32 columns' sums
/// are 2 x `REGISTER_ROWS` registers, with the step's 2 B rows and a broadcast A pair beside them
/// (19 of the 32), and each B row loaded serves `REGISTER_ROWS` products.
const REGISTER_ROWS: usize = 8;

/// The operands of `REGISTER_ROWS` rows of `Tiles::block_32x32` or `rows_8x32`: A's row r from
/// `a(r)`, C's to `c`, the rest as `block_32x32` takes them.
struct RegisterRows<'a, A> {
    a: A,
    steps: &'a [[usize; 2]],
    b: *const u16,
    b_group: usize,
    c: *mut f32,
    c_stride: usize,
}

/// `registers_block` with VDPBF16PS on bf16 tiles, C[r][n] += A[r][2p..2p + 2] . B[p][n].
///
/// # Safety
/// As `registers_block`'s, and the CPU must support AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn registers_bf16(rows: RegisterRows<impl Fn(usize) -> *const u16>) {
    use std::arch::x86_64::*;
    // SAFETY: a bf16 pair and an f32 are both 32 bits; the caller's contract for the rest.
    unsafe {
        registers_block(rows, |sum, a, b| {
            _mm512_dpbf16_ps(
                sum,
                std::mem::transmute::<__m512, __m512bh>(a),
                std::mem::transmute::<__m512, __m512bh>(b),
            )
        })
    }
}

/// `registers_block` with VFMADD231PS on f32 tiles, C[r][n] += A[r][p] B[p][n].
///
/// # Safety
/// As `registers_block`'s, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn registers_f32(rows: RegisterRows<impl Fn(usize) -> *const u16>) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe { registers_block(rows, |sum, a, b| _mm512_fmadd_ps(a, b, sum)) }
}

/// `REGISTER_ROWS` rows of `Tiles::block_32x32`'s C: per step and 32-bit unit p of an A row (a
/// bf16 pair or an f32), the two B tiles' row p (16 columns each) multiplied into the sums by
/// `product(sum, A[r][p] broadcast, B row)`. Inlined into the callers, whose target features its
/// intrinsics need.
///
/// # Safety
/// As `block_32x32`'s for these rows, and the CPU must support AVX-512F and what `product` uses.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn registers_block(
    rows: RegisterRows<impl Fn(usize) -> *const u16>,
    product: impl Fn(
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512,
) {
    let RegisterRows { a, steps, b, b_group, c, c_stride } = rows;
    let a: [*const u16; REGISTER_ROWS] = std::array::from_fn(a);
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_ps(); 2]; REGISTER_ROWS];
    for &[sa, sb] in steps {
        // SAFETY: every address below is inside a tile the step names (the caller's contract).
        unsafe {
            let b = b.byte_add(sb);
            for p in 0..TILE_K / 2 {
                let b0 = _mm512_loadu_ps(b.add(p * 2 * TILE_ROWS).cast());
                let b1 = _mm512_loadu_ps(b.add(b_group + p * 2 * TILE_ROWS).cast());
                for (r, sum) in sums.iter_mut().enumerate() {
                    let unit = _mm512_set1_ps(a[r].byte_add(sa).add(2 * p).cast::<f32>().read_unaligned());
                    sum[0] = product(sum[0], unit, b0);
                    sum[1] = product(sum[1], unit, b1);
                }
            }
        }
    }
    for (r, sum) in sums.iter().enumerate() {
        // SAFETY: row r of C, 32 f32 (the caller's contract).
        unsafe {
            let row = c.byte_add(r * c_stride);
            _mm512_storeu_ps(row, sum[0]);
            _mm512_storeu_ps(row.add(TILE_ROWS), sum[1]);
        }
    }
}

/// `Tiles::block_32x32` on AMX (C in tmm0-3, A in tmm4-5, B in tmm6-7), or its first 16 rows
/// alone where `a1` is null (C in tmm0-1, A in tmm4): the same steps in the same order, so that
/// each row's sums have the same bits either way.
///
/// # Safety
/// The tiles are configured on AMX (`Tiles::on`); as `block_32x32`'s, for 16 rows where `a1` is
/// null.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn amx_block(
    a0: *const u16,
    a1: *const u16,
    a_stride: usize,
    steps: &[[usize; 2]],
    b: *const u16,
    b_group: usize,
    c: *mut f32,
    c_stride: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "mov {t}, [{s}]",
            "mov {u}, [{s} + 8]",
            "add {u}, {b}",
            "tileloadd tmm6, [{u} + {bs}*1]",
            "add {u}, {bg}",
            "tileloadd tmm7, [{u} + {bs}*1]",
            "lea {u}, [{a0} + {t}]",
            "tileloadd tmm4, [{u} + {ast}*1]",
            "test {a1}, {a1}",
            "jz 3f",
            "add {t}, {a1}",
            "tileloadd tmm5, [{t} + {ast}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "3:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {s}, 16",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "test {a1}, {a1}",
            "jz 4f",
            "mov {t}, {cs}",
            "shl {t}, 4",
            "add {t}, {c}",
            "tilestored [{t} + {cs}*1], tmm2",
            "tilestored [{t} + {cs}*1 + 64], tmm3",
            "4:",
            s = inout(reg) steps.as_ptr() => _,
            n = inout(reg) steps.len() => _,
            t = out(reg) _,
            u = out(reg) _,
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b = in(reg) b,
            bg = in(reg) 2 * b_group,
            ast = in(reg) a_stride,
            bs = in(reg) 64usize,
            c = in(reg) c,
            cs = in(reg) c_stride,
            options(nostack),
        );
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `on`; TILERELEASE returns them to init state.
        #[cfg(target_arch = "x86_64")]
        if self.engine == Engine::Amx {
            unsafe {
                std::arch::asm!("tilerelease", options(nostack, nomem));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{amx_reason, avx512_bf16_reason, from_bf16, in_order, to_bf16, Engine, TileBuf, Tiles, B_TILE_LEN};
    use super::{pack_b, TILE_K, TILE_ROWS};

    /// Row r's value i lies in its group's tile i / 32, pair (i % 32) / 2, at (i % 32) / 2 * 32 +
    /// (r % 16) * 2 + i % 2; rows past the last are zeros; `fill`'s values come back in row order.
    #[test]
    fn packed_rows_lie_where_the_tiles_read_them() {
        let (rows, groups, tiles) = (37, 4, 3);
        let value = |r: usize, i: usize| (r * 1000 + i) as u16;
        let (packed, filled) = pack_b(rows, groups, tiles, |r, depth| {
            for (i, v) in depth.iter_mut().enumerate() {
                *v = value(r, i);
            }
            r * 2
        });
        assert_eq!(filled, (0..rows).map(|r| r * 2).collect::<Vec<_>>());
        assert_eq!(packed.len(), groups * tiles * B_TILE_LEN);
        for r in 0..groups * TILE_ROWS {
            for i in 0..tiles * TILE_K {
                let at =
                    (r / TILE_ROWS * tiles + i / TILE_K) * B_TILE_LEN + i % TILE_K / 2 * 32 + r % TILE_ROWS * 2 + i % 2;
                assert_eq!(packed[at], if r < rows { value(r, i) } else { 0 }, "row {r}, value {i}");
            }
        }
    }

    /// Both engines against float64 on one product with A rows strided and read in pieces (as the
    /// convolutions read pixels), B over two tile groups and C inside a wider array: each result
    /// within f32's rounding of a sum of `depth` exact products (gamma_depth sum |a||b|).
    #[test]
    fn both_engines_multiply_tiles_as_float64_within_the_sums_rounding() {
        let engines = [(Engine::Amx, amx_reason()), (Engine::Avx512Bf16, avx512_bf16_reason())];
        let mut rng = crate::rng::SplitMix64::new(21);
        let mut value = || to_bf16((rng.next_u64() % 20001) as f32 / 1000.0 - 10.0);
        let tiles = 5;
        let (a_stride, c_stride, b_group) = (tiles * TILE_K + 16, 40, tiles * B_TILE_LEN + 64);
        let a: Vec<u16> = (0..2 * TILE_ROWS * a_stride).map(|_| value()).collect();
        let b: Vec<u16> = (0..2 * b_group).map(|_| value()).collect();
        // Steps in reverse order, so that neither engine may assume them consecutive.
        let steps: Vec<[usize; 2]> = in_order(tiles).into_iter().rev().collect();
        let depth = tiles * TILE_K;
        for (engine, unavailable) in engines {
            if let Some(reason) = unavailable {
                println!("{engine:?} skipped: {reason}");
                continue;
            }
            let mut c = vec![f32::NAN; 2 * TILE_ROWS * c_stride];
            // SAFETY: the engine is available.
            let t = unsafe { Tiles::on(engine) };
            // SAFETY: A holds 32 rows of a_stride >= depth values (rows 16.. from a1), B two
            // groups of `tiles` tiles, C 32 rows of c_stride >= 32 f32.
            unsafe {
                t.block_32x32(
                    a.as_ptr(),
                    a.as_ptr().add(TILE_ROWS * a_stride),
                    2 * a_stride,
                    &steps,
                    b.as_ptr(),
                    b_group,
                    c.as_mut_ptr(),
                    4 * c_stride,
                );
            }
            for r in 0..2 * TILE_ROWS {
                for n in 0..2 * TILE_ROWS {
                    let (group, col) = (n / TILE_ROWS, n % TILE_ROWS);
                    let (mut exact, mut magnitude) = (0f64, 0f64);
                    for k in 0..depth {
                        let (tile, pair, odd) = (k / TILE_K, k % TILE_K / 2, k % 2);
                        let x = from_bf16(a[r * a_stride + k]) as f64;
                        let y = from_bf16(b[group * b_group + tile * B_TILE_LEN + pair * 2 * TILE_ROWS + col * 2 + odd])
                            as f64;
                        (exact, magnitude) = (exact + x * y, magnitude + (x * y).abs());
                    }
                    let u = f32::EPSILON as f64 / 2.0;
                    let gamma = depth as f64 * u / (1.0 - depth as f64 * u);
                    let got = c[r * c_stride + n] as f64;
                    assert!((got - exact).abs() <= gamma * magnitude, "{engine:?} C[{r}][{n}] = {got}, exact {exact}");
                }
            }
            // Rows picked anywhere, some twice, 40 of them (on AMX a block of 32 and one of 16
            // with 8 rows of padding): each row's products in the same order, so the block's
            // rows bit for bit.
            let picked: Vec<usize> = (0..40).map(|i| (i * 7 + i / 9) % (2 * TILE_ROWS)).collect();
            let rows: Vec<*const u16> = picked.iter().map(|&r| a[r * a_stride..].as_ptr()).collect();
            let mut gathered = vec![f32::NAN; 64 * c_stride];
            let mut scratch = TileBuf::zeroed(48 * depth);
            // SAFETY: as above, for 40 rows of `depth` values and C of 64 rows.
            unsafe {
                t.gathered(
                    &rows,
                    depth,
                    &steps,
                    b.as_ptr(),
                    b_group,
                    32,
                    gathered.as_mut_ptr(),
                    4 * c_stride,
                    &mut scratch,
                )
            };
            for (i, &r) in picked.iter().enumerate() {
                let (got, block) = (&gathered[i * c_stride..][..32], &c[r * c_stride..][..32]);
                assert!(got.iter().zip(block).all(|(x, y)| x.to_bits() == y.to_bits()), "{engine:?} row {i} ({r})");
            }
        }
    }

    #[test]
    fn bf16_rounding_is_the_half_crates_with_subnormals_flushed() {
        let mut rng = crate::rng::SplitMix64::new(9);
        let edges = [
            0u32,
            0x8000_0000,
            0x0000_8000,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x7f7f_ffff,
            0x7f80_0000,
        ];
        let random = (0..1_000_000).map(|_| rng.next_u64() as u32);
        for bits in edges.into_iter().chain(random).filter(|&b| !f32::from_bits(b).is_nan()) {
            let x = f32::from_bits(bits);
            let want = half::bf16::from_f32(x).to_bits();
            let want = if want & 0x7f80 == 0 { want & 0x8000 } else { want };
            assert_eq!(to_bf16(x), want, "{x:e} ({bits:#010x})");
        }
    }

    #[test]
    fn tile_buffers_start_a_cache_line() {
        for len in [1, 31, 1000] {
            let mut a = TileBuf::<u16>::zeroed(len);
            let b = TileBuf::<f32>::zeroed(len);
            assert_eq!((a.as_ptr() as usize % 64, b.as_ptr() as usize % 64), (0, 0));
            assert_eq!((a.len(), b.len()), (len, len));
            assert!(a.iter().all(|&x| x == 0) && b.iter().all(|&x| x == 0.0));
            a[len - 1] = 7;
            assert_eq!(a[len - 1], 7);
        }
    }
}
