//! The exact kNN through a bf16 screening pass on the tiles (`amx::Tiles`: AMX, or VDPBF16PS in
//! AVX-512 registers), then a float64 re-ranking of the survivors.
//!
//! `knn_topk`'s f32 products are nearly all of predict's scoring. AMX multiplies bf16 tiles about
//! 16x faster than AVX-512 multiplies f32, but bf16 keeps 8 significant bits. The rows and queries
//! are first shifted by the bank's mean row (in float64, where the difference of two f32 is exact):
//! distances do not change, but CNN embeddings share a large common part (after ReLU every value
//! is non-negative), so the shifted norms are a fraction of the raw ones (78 against 303 on a
//! ResNet-18 bank of 10,240 rows). Each shifted value is rounded to bf16 and the products taken
//! in one AMX pass; the estimated squared distances carry a proven bound on their distance from
//! the exact ones (see `QueryBound`), about 2^-7 |q'||m'|. A bank row is kept as a candidate
//! unless its lower bound exceeds the k-th smallest upper bound, so the candidates always contain
//! the exact neighbours. They are then ranked by the squared distance summed in float64 (ties to
//! the lower index), and each distance is rounded to f32 once: the float64 truth rounded, which
//! `knn_topk`'s f32 expanded form approximates within its own rounding (about 4 u (|q|^2 + |m|^2)
//! in the squared distance).
//!
//! Without AMX (AVX-512F with or without AVX512-BF16, or `PATCHCORE_BF16_PRODUCTS` other than
//! `amx`) the shifted values are rounded to f32 instead and multiplied with FMA on the same tiles
//! (`Rounded::F32`, two 16-bit units a value): the same bound with f32's rounding in place of
//! bf16's, about 2^-24 d |q'||m'| instead of 2^-7 |q'||m'|, so nearly no candidates beyond the
//! neighbours.
//!
//! Why the shift matters: the bound scales with |q'||m'|, the neighbours lie at about 2.6e-3
//! |m|^2 (unshifted) or 3.6e-2 |m'|^2. Unshifted, one bf16 pass left 1,800 of 10,240 rows in
//! play per query and the screen had to be three passes deep (each value split into two bf16,
//! hi.hi + hi.lo + lo.hi, bound about 1e-4 |q||m|); shifted, one pass leaves about 3 (measured on
//! bank rows as queries), and the search costs half as much (docs/PERFORMANCE.md). Rows that
//! nearly coincide far from the mean (no coreset, repeated patches) leave more candidates: the
//! answer stays exact, the re-ranking does more work.

use super::amx::{self, to_bf16, Engine, TileBuf, Tiles, B_TILE_LEN, TILE_K, TILE_ROWS};
use super::knn::{squared_distance, squared_norms};
use super::knn_chunks::{Balls, ClusterOrder};
use crate::wide::vectorised;
use rayon::prelude::*;

/// Most queries per parallel task (`task_queries`), and the queries of one lower-bound product:
/// the bf16 bank is streamed once per task.
const TILE_Q: usize = 256;
/// Bank rows per pass of the tile products, and per ball a block of queries may skip
/// (`knn_chunks`): the chunk's bf16 rows (96 KiB at d = 384), the task's bf16 queries (192 KiB)
/// and the TILE_Q x CHUNK estimates (128 KiB) stay in L2. With three-pass split products,
/// predict's search at batch 8 took 412 ms with chunks of 256 rows, 373 ms with 128 and 380 ms
/// with 64 (tighter balls against more bounds and passes).
pub(super) const CHUNK: usize = 128;
/// Rows and columns of one `Tiles::block_32x32`.
const BLOCK: usize = 2 * TILE_ROWS;
/// Estimates the fold tests at once (vectorised) before looking at single rows.
const FOLD_BLOCK: usize = 64;
/// f32's unit roundoff.
const U32: f32 = f32::EPSILON / 2.0;

/// What the screened values are rounded to, and so what multiplies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounded {
    /// bf16, on `amx::engine()`'s tiles.
    Bf16,
    /// f32, two 16-bit units a value, with FMA (`Engine::Avx512F32`).
    F32,
}

impl Rounded {
    /// What the screening pass rounds to on this CPU, or why it cannot run: bf16 on AMX, else f32
    /// where the CPU has AVX-512F. Without AMX f32 beats bf16 on VDPBF16PS, which issues at a
    /// quarter of FMA's rate on the 2-core Xeon: predict's kNN 10.1-10.5 ms an image against
    /// 15.5-20 (docs/PERFORMANCE.md, round 8).
    pub fn here() -> Result<Rounded, &'static str> {
        if amx::engine() == Ok(Engine::Amx) {
            return Ok(Rounded::Bf16);
        }
        amx::f32_unavailable_reason().map_or(Ok(Rounded::F32), Err)
    }

    /// What the screening pass runs as, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Rounded::Bf16 => "bf16 screen on AMX",
            Rounded::F32 => "f32 screen on AVX-512",
        }
    }

    /// 16-bit units a value takes in the tiles.
    fn units(self) -> usize {
        match self {
            Rounded::Bf16 => 1,
            Rounded::F32 => 2,
        }
    }

    /// What multiplies the tiles of these values here, or why nothing can.
    fn engine(self) -> Result<Engine, &'static str> {
        match self {
            Rounded::Bf16 => amx::engine(),
            Rounded::F32 => amx::f32_unavailable_reason().map_or(Ok(Engine::Avx512F32), Err),
        }
    }
}

/// The bank in the form the screening pass reads, built once per model by `ScreenBank::new`.
pub struct ScreenBank {
    /// What the shifted values are rounded to, and what multiplies their tiles.
    rounded: Rounded,
    engine: Engine,
    /// The bank's mean row, by which rows and queries are shifted.
    shift: Vec<f32>,
    /// The shifted rows (`rounded`), in the tiles' B layout: per group of 16 rows, `kcs` tiles of
    /// `B_TILE_LEN` units; zero rows pad the bank to a whole number of `BLOCK`s and zero units
    /// each row to `kcs * TILE_K`.
    packed: TileBuf<u16>,
    kcs: usize,
    /// The products' steps over the `kcs` tiles of a row (`amx::in_order`).
    steps: Vec<[usize; 2]>,
    /// |m_j'| and |m_j' - bf16(m_j')|: the bound's per-row terms, each in its own array so that
    /// the fold reads 16 rows' at once.
    norm: Vec<f32>,
    tail: Vec<f32>,
    /// Per `CHUNK` of rows: the largest of each term and of the squared norms, for the fold's
    /// quick test.
    chunk_max: Vec<(Norms, f32)>,
    /// The rows are held in `cluster_order`, so that each chunk is a tight ball (`balls`) that a
    /// block of queries can skip whole: `order[i]` is the bank row at position i, `sq_norms[i]`
    /// its shifted squared norm |m'|^2.
    order: Vec<u32>,
    sq_norms: Vec<f32>,
    balls: Balls,
}

/// A shifted row's norms that the bound needs, in float64 rounded to f32: |x'|, |x' - h|
/// (h = bf16(x'), the tail the products drop) and |h|.
#[derive(Clone, Copy, Default)]
struct Norms {
    norm: f32,
    tail: f32,
    hi: f32,
}

impl Norms {
    fn max(self, o: Norms) -> Norms {
        Norms { norm: self.norm.max(o.norm), tail: self.tail.max(o.tail), hi: self.hi.max(o.hi) }
    }
}

/// Writes row - shift rounded as `rounded` says to `out` (bf16, or f32 as two units, low half
/// first) and returns its `Norms` and |row - shift|^2. row - shift is exact in float64 (for
/// exponents less than 29 apart, else within 2^-53 of itself, far inside the bound's 1% slack);
/// its rounding to bf16 passes through f32, which stays within (2^-8 + 2^-24) of the value.
fn shifted(row: &[f32], shift: &[f32], rounded: Rounded, out: &mut [u16]) -> (Norms, f32) {
    let d = row.len();
    assert!(shift.len() >= d && out.len() >= d * rounded.units(), "shifted: a row of {d} values");
    // Sums of v^2, (v - h)^2 and h^2 (h = v rounded), 16 values at a time with AVX-512 (every CPU
    // that screens has it), the rest one by one.
    #[cfg(target_arch = "x86_64")]
    let (mut sums, done) = if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected; the assert bounds the three slices.
        unsafe { shifted_avx512(row, shift, rounded, out) }
    } else {
        ([0f64; 3], 0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mut sums, done) = ([0f64; 3], 0);
    for (i, (&x, &s)) in row.iter().zip(shift).enumerate().skip(done) {
        let v = x as f64 - s as f64;
        let hv = match rounded {
            Rounded::Bf16 => {
                out[i] = to_bf16(v as f32);
                amx::from_bf16(out[i]) as f64
            }
            Rounded::F32 => {
                let bits = (v as f32).to_bits();
                (out[2 * i], out[2 * i + 1]) = (bits as u16, (bits >> 16) as u16);
                v as f32 as f64
            }
        };
        sums = [sums[0] + v * v, sums[1] + (v - hv) * (v - hv), sums[2] + hv * hv];
    }
    let [n, t, h] = sums;
    (Norms { norm: n.sqrt() as f32, tail: t.sqrt() as f32, hi: h.sqrt() as f32 }, n as f32)
}

/// `shifted` of the first multiple of 16 values: their sums and how many. The bf16 rounding
/// is `to_bf16`'s integer arithmetic, 16 lanes wide. Preparing predict's queries took 1.9 ns a
/// value in f64 sums of 8 lanes that the compiler vectorised with SSE2 (0.8-0.9 ms of CPU time a
/// batch-1 image).
///
/// # Safety
/// The CPU must support AVX-512F; `shift` is at least as long as `row`, `out` holds its units.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn shifted_avx512(row: &[f32], shift: &[f32], rounded: Rounded, out: &mut [u16]) -> ([f64; 3], usize) {
    use std::arch::x86_64::*;
    let whole = row.len() / 16 * 16;
    let [mut n, mut t, mut h] = [_mm512_setzero_pd(); 3];
    let halves = |x: __m512| {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        [_mm512_cvtps_pd(_mm512_castps512_ps256(x)), _mm512_cvtps_pd(high)]
    };
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 <= whole <= the length of all three slices (the caller's contract).
        let (x, s) = unsafe { (_mm512_loadu_ps(row.as_ptr().add(i)), _mm512_loadu_ps(shift.as_ptr().add(i))) };
        let ([x0, x1], [s0, s1]) = (halves(x), halves(s));
        let v = [_mm512_sub_pd(x0, s0), _mm512_sub_pd(x1, s1)];
        let v32 = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(_mm512_cvtpd_ps(v[0]))),
            _mm256_castps_pd(_mm512_cvtpd_ps(v[1])),
        ));
        let rounded_v = match rounded {
            Rounded::F32 => {
                // SAFETY: units 2i..2i + 32 lie inside `out` (the caller's contract).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(2 * i).cast(), v32) };
                v32
            }
            Rounded::Bf16 => {
                // to_bf16: bits + 0x7fff + (bit 16), shifted down; a zero exponent keeps only the sign.
                let bits = _mm512_castps_si512(v32);
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
                let sum = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
                let bf16 = _mm512_srli_epi32::<16>(sum);
                let flush = _mm512_testn_epi32_mask(bf16, _mm512_set1_epi32(0x7f80));
                let bf16 = _mm512_mask_and_epi32(bf16, flush, bf16, _mm512_set1_epi32(0x8000));
                // SAFETY: out[i..i + 16] lies inside `out` (the caller's contract).
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(bf16)) };
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16))
            }
        };
        let hv = halves(rounded_v);
        for (v, hv) in v.into_iter().zip(hv) {
            let tail = _mm512_sub_pd(v, hv);
            n = _mm512_fmadd_pd(v, v, n);
            t = _mm512_fmadd_pd(tail, tail, t);
            h = _mm512_fmadd_pd(hv, hv, h);
        }
    }
    ([_mm512_reduce_add_pd(n), _mm512_reduce_add_pd(t), _mm512_reduce_add_pd(h)], whole)
}

impl ScreenBank {
    /// The screening form of `rows` (m x d) in `order` (found here if `None`), rounded as
    /// `Rounded::here`, or why there is none: no AVX-512F here, or values that are not finite or
    /// too large for the bound (the f32 search takes those).
    pub fn new(rows: &[f32], d: usize, order: Option<ClusterOrder>) -> Result<ScreenBank, &'static str> {
        ScreenBank::rounded(rows, d, order, Rounded::here()?)
    }

    /// The screening form of `rows` in `order` with its values `rounded`, or why there is none.
    fn rounded(
        rows: &[f32],
        d: usize,
        order: Option<ClusterOrder>,
        rounded: Rounded,
    ) -> Result<ScreenBank, &'static str> {
        let engine = rounded.engine()?;
        let shift = mean_row(rows, d).ok_or("the bank holds values that are not finite or beyond 1e15")?;
        let m = rows.len() / d;
        let kcs = (d * rounded.units()).div_ceil(TILE_K);
        let order = order.unwrap_or_else(|| ClusterOrder::of(rows, d)).0;
        assert_eq!(order.len(), m, "ScreenBank: the order is of another bank");
        // Row i of the screened order.
        let row = |i: usize| &rows[order[i] as usize * d..][..d];
        let groups = m.div_ceil(BLOCK) * BLOCK / TILE_ROWS;
        let (packed, filled) = amx::pack_b(m, groups, kcs, |i, depth| shifted(row(i), &shift, rounded, depth));
        let (norms, sq_norms): (Vec<Norms>, Vec<f32>) = filled.into_iter().unzip();
        let (norm, tail) = norms.iter().map(|n| (n.norm, n.tail)).unzip();
        let chunk_max = (0..m)
            .step_by(CHUNK)
            .map(|b0| {
                let end = (b0 + CHUNK).min(m);
                let norms = norms[b0..end].iter().fold(Norms::default(), |a, &b| a.max(b));
                (norms, sq_norms[b0..end].iter().copied().fold(0f32, f32::max))
            })
            .collect();
        let balls = Balls::new(rows, &order, d, CHUNK);
        let steps = amx::in_order(kcs);
        Ok(ScreenBank { rounded, engine, shift, packed, kcs, steps, norm, tail, chunk_max, order, sq_norms, balls })
    }
}

/// The mean of the m x d `rows`, summed in float64, or `None` where a value is not within
/// `amx::LIMIT` (as `amx::suitable`): one pass over the bank for both, where two took 2.1 ms of
/// each load of a 10,240-row bank.
fn mean_row(rows: &[f32], d: usize) -> Option<Vec<f32>> {
    let mut sum = vec![0f64; d];
    let suitable = vectorised(
        #[inline(always)]
        || {
            let mut suitable = true;
            for row in rows.chunks_exact(d) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += x as f64;
                    suitable &= x.abs() <= amx::LIMIT;
                }
            }
            suitable
        },
    );
    let m = (rows.len() / d).max(1) as f64;
    suitable.then(|| sum.iter().map(|&s| (s / m) as f32).collect())
}

/// The margin between a query's screened estimate s~_j = (|q'|^2 + |m_j'|^2) - 2 a_j and the exact
/// squared distance s_j = |q - m_j|^2 = |q' - m_j'|^2 (what the float64 re-ranking computes, to
/// 1e-13 of itself): |s~_j - s_j| <= T_j = a |m_j'| + b |m_j' - H_j| + f |m_j'|^2 + g.
///
/// Why: with q' = h + t and m' = H + T (bf16 and tail), a_j sums h.H, so q'.m' - h.H = h.T + t.m',
/// at most |h||T| + |t||m'|. AMX's f32 sum of d products (d the padded width, gamma_n =
/// n u / (1 - n u), u = 2^-24; a product of two bf16 is exact in f32) adds at most
/// gamma_d |h||H| plus d 2^-126 (flushed denormals) in any order of summation (so also when the depth is split into
/// blocks whose partial sums are stored and reloaded, which is exact), and |H| < 1.004 |m'| as the
/// rounding to bf16 moves each value by at most (2^-8 + 2^-24) of it. The estimate's own f32
/// arithmetic (the two norms rounded from f64, their sum, the subtraction) adds at most
/// 4.1 u (|q'|^2 + |m'|^2). The terms are taken 1% larger and 16 u (|q'|^2 + |m'|^2) is added for
/// the f32 rounding of the bound and the tests themselves. For `Rounded::F32` the same holds with
/// h, H rounded to f32 (moved by at most 2^-24 of each value) and FMA's one rounding a product
/// (which flushes nothing, so the d 2^-126 term is slack).
struct QueryBound {
    sq_norm: f32,
    a: f32,
    b: f32,
    f: f32,
    g: f32,
}

impl QueryBound {
    /// From the shifted query's `Norms` and squared norm.
    fn new(norms: Norms, sq_norm: f32, padded_d: usize) -> QueryBound {
        let gamma = padded_d as f32 * U32 / (1.0 - padded_d as f32 * U32);
        // 1.01 * 4.1 u + 16 u, rounded up.
        let f = 21.0 * U32;
        QueryBound {
            sq_norm,
            a: 1.01 * 2.0 * (gamma * norms.hi * 1.004 + norms.tail),
            b: 1.01 * 2.0 * norms.hi,
            f,
            g: f * sq_norm + 1.01 * 2.0 * padded_d as f32 * f32::MIN_POSITIVE,
        }
    }

    /// T_j of a row with norm |m'|, tail |m' - H| and squared norm |m'|^2.
    #[inline(always)]
    fn margin(&self, norm: f32, tail: f32, sq_norm: f32) -> f32 {
        self.a * norm + self.b * tail + self.f * sq_norm + self.g
    }
}

/// One query's search state: the k smallest upper bounds so far (ascending, +inf unfilled) and
/// every row whose lower bound was at most the k-th of them when it was seen.
struct Running {
    upper: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Running {
    fn threshold(&self) -> f32 {
        self.upper[self.upper.len() - 1]
    }

    /// The candidates whose lower bound is at most the final threshold, as (row, lower bound),
    /// the lowest bound first: the rows to re-rank, in the order `rerank` takes them.
    fn kept(&self) -> Vec<(u32, f32)> {
        let threshold = self.threshold();
        let mut kept: Vec<(u32, f32)> =
            self.candidates.iter().copied().filter(|&(_, lower)| lower <= threshold).collect();
        kept.sort_unstable_by(|a, b| a.1.total_cmp(&b.1));
        kept
    }

    fn offer_upper(&mut self, upper: f32) {
        let k = self.upper.len();
        let pos = self.upper.iter().position(|&u| u > upper).unwrap_or(k - 1);
        self.upper.copy_within(pos..k - 1, pos + 1);
        self.upper[pos] = upper;
    }
}

/// `knn_topk`'s result (same contract) through bf16 screening, with the distances and ranking of
/// float64 (so within `knn_topk`'s f32 rounding of its result, and the same rows up to ties
/// within it), or `None` when the queries hold values the bound does not cover (not finite, or
/// beyond 1e15): the caller then runs `knn_topk`.
pub fn knn_screened(
    queries: &[f32],
    bank: &[f32],
    screen: &ScreenBank,
    d: usize,
    k: usize,
) -> Option<(Vec<f32>, Vec<u32>)> {
    assert!(
        d > 0 && queries.len().is_multiple_of(d) && bank.len().is_multiple_of(d),
        "knn_screened: inputs are not whole {d}-wide rows"
    );
    let (nq, m) = (queries.len() / d, bank.len() / d);
    assert_eq!(screen.norm.len(), m, "knn_screened: the screening bank is of another bank");
    debug_assert!(1 <= k && k <= m, "knn_screened: need 1 <= k ({k}) <= bank rows ({m})");
    if !amx::suitable(queries) {
        return None;
    }
    if k == 0 || nq == 0 {
        return Some((Vec::new(), Vec::new()));
    }
    // Each query's lower bounds on every chunk, then the queries grouped by the chunk nearest to
    // them (`grouped_by_nearest_ball`): a task's queries are then alike, so that a chunk that
    // some of them still need is more often needed by the rest (on AMX by a whole 32-query block).
    let chunks = screen.balls.len();
    let lower: Vec<Vec<f32>> =
        queries.par_chunks(TILE_Q * d).map(|qs| screen.balls.lower_bounds(qs, &squared_norms(qs, d), d)).collect();
    let order = grouped_by_nearest_ball(&lower, chunks);
    let found: Vec<Vec<(f64, u32)>> = order
        .par_chunks(task_queries(nq))
        .flat_map_iter(|ids| {
            let (mut qs, mut task_lower) = (Vec::with_capacity(ids.len() * d), Vec::with_capacity(ids.len() * chunks));
            for &q in ids {
                let q = q as usize;
                qs.extend_from_slice(&queries[q * d..][..d]);
                task_lower.extend_from_slice(&lower[q / TILE_Q][q % TILE_Q * chunks..][..chunks]);
            }
            // SAFETY: `screen` exists, so its engine is usable here.
            let tiles = unsafe { Tiles::on(screen.engine) };
            search_tile(&tiles, &qs, &task_lower, bank, screen, d, k)
        })
        .collect();
    // Slots no row fills (k > m, which callers refuse) stay (NaN, 0), as in `knn_topk`.
    let mut dist = vec![f32::NAN; nq * k];
    let mut idx = vec![0u32; nq * k];
    for (&q, row) in order.iter().zip(&found) {
        for (s, &(sq, j)) in row.iter().enumerate() {
            // The float64 distance rounded to f32 once.
            (dist[q as usize * k + s], idx[q as usize * k + s]) = (sq.sqrt() as f32, j);
        }
    }
    Some((dist, idx))
}

/// The queries (rows of `lower`, each its lower bounds on the `chunks` balls; in pieces of
/// `TILE_Q` queries) in the order of the ball with the smallest bound (the first of equal ones),
/// stably. Neighbouring chunks of the `cluster_order` are neighbouring regions, so queries that
/// end up in one block need mostly the same chunks. Predict's queries come in raster order, where
/// a block is a row of patches: on the chip model (batch 1) a block was computed for 42% of the
/// chunks while each query was folded against 16%; grouped, 27% and 13%.
fn grouped_by_nearest_ball(lower: &[Vec<f32>], chunks: usize) -> Vec<u32> {
    let nearest: Vec<usize> = lower
        .par_iter()
        .flat_map_iter(|piece| {
            piece.chunks_exact(chunks).map(|row| {
                row.iter().enumerate().fold((0, f32::INFINITY), |b, (c, &l)| if l < b.1 { (c, l) } else { b }).0
            })
        })
        .collect();
    let mut order: Vec<u32> = (0..nearest.len() as u32).collect();
    order.sort_by_key(|&q| nearest[q as usize]);
    order
}

/// Queries per task for `nq` grouped queries: at least 8 tasks per thread, as grouped tasks differ
/// in cost (a group far from the bank prunes worst) and the threads must balance them; at least
/// two 32-query blocks, so that each chunk of bf16 rows a task streams serves more than one; at
/// most `TILE_Q`. On the chip model, 2 threads: batch 1 (16 tasks of 64) 4.0-4.1 ms against
/// 4.5-4.9 with tasks of 256; batch 8 (tasks of 256) as fast as 128, faster than 64.
fn task_queries(nq: usize) -> usize {
    (nq / (8 * rayon::current_num_threads())).div_ceil(BLOCK).clamp(2, TILE_Q / BLOCK) * BLOCK
}

/// One task's queries `qs`, with their lower bounds on every chunk (`lower`, a row per query):
/// per query its k neighbours as (squared distance in float64, row), ascending. The chunks are
/// visited nearest first (by the task's mean lower bound), so that the running thresholds fall
/// early, and a chunk is multiplied only with the queries whose thresholds its ball does not
/// already exclude (only these are multiplied: `chunk_products`).
fn search_tile(
    tiles: &Tiles,
    qs: &[f32],
    lower: &[f32],
    bank: &[f32],
    screen: &ScreenBank,
    d: usize,
    k: usize,
) -> Vec<Vec<(f64, u32)>> {
    let (tq, m, chunks) = (qs.len() / d, screen.sq_norms.len(), screen.balls.len());
    let (q16, bounds) = shifted_queries(qs, screen, d);
    let mut visit: Vec<(f32, usize)> =
        (0..chunks).map(|c| ((0..tq).map(|q| lower[q * chunks + c]).sum::<f32>(), c)).collect();
    visit.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut running: Vec<Running> =
        (0..tq).map(|_| Running { upper: vec![f32::INFINITY; k], candidates: Vec::new() }).collect();
    let mut dots = TileBuf::zeroed(q16.len() / (screen.kcs * TILE_K) * CHUNK);
    let mut gathered = TileBuf::zeroed(q16.len());
    for (_, chunk) in visit {
        let b0 = chunk * CHUNK;
        let rows = b0..(b0 + CHUNK).min(m);
        // Queries that the ball does not rule out (lower bound at most their threshold).
        let open: Vec<usize> = (0..tq).filter(|&q| lower[q * chunks + chunk] <= running[q].threshold()).collect();
        chunk_products(tiles, &q16, screen, b0, rows.len(), &open, &mut dots, &mut gathered);
        let bank_chunk = BankChunk {
            rows: &screen.order[rows.clone()],
            sq_norms: &screen.sq_norms[rows.clone()],
            norm: &screen.norm[rows.clone()],
            tail: &screen.tail[rows.clone()],
            max: screen.chunk_max[chunk],
        };
        for (i, &q) in open.iter().enumerate() {
            // SAFETY: the screening bank exists, so the CPU has AVX-512F.
            unsafe { fold_chunk(&dots[i * CHUNK..][..rows.len()], &bounds[q], &bank_chunk, &mut running[q]) };
        }
    }
    running.iter().zip(qs.chunks_exact(d)).map(|(state, q)| rerank(&state.kept(), q, bank, d, k)).collect()
}

/// The shifted queries rounded as `screen`'s rows, as the tiles' A operand (rows of `kcs *
/// TILE_K` units, zero rows up to a whole number of `BLOCK`s), and each query's `QueryBound`.
fn shifted_queries(qs: &[f32], screen: &ScreenBank, d: usize) -> (TileBuf<u16>, Vec<QueryBound>) {
    let width = screen.kcs * TILE_K;
    let mut q16 = TileBuf::zeroed((qs.len() / d).div_ceil(BLOCK) * BLOCK * width);
    let bounds = q16
        .chunks_exact_mut(width)
        .zip(qs.chunks_exact(d))
        .map(|(dst, q)| {
            let (norms, sq_norm) = shifted(q, &screen.shift, screen.rounded, dst);
            QueryBound::new(norms, sq_norm, width / screen.rounded.units())
        })
        .collect();
    (q16, bounds)
}

/// `dots[i * CHUNK + c]` = the product of query `open[i]` of `q16` (from `shifted_queries`)
/// and bank row b0 + c (in the screened order), for c < tb, through `Tiles::gathered`
/// (`gathered`: its scratch, as long as `q16`).
///
/// Only the open queries are multiplied. On AMX the chunk's products were first computed for
/// every query of each 32-query block that held an open one (a tile load reads its rows at one
/// stride): on the chip model at batch 1, 25% of the (query, chunk) products where 11% are open;
/// gathered 16 at a time, 15% (batch 8: 20% -> 12%, 11% open).
///
/// `q16`, the packed bank and `dots` are `TileBuf`s: every tile row then starts a cache line.
#[allow(clippy::too_many_arguments)]
fn chunk_products(
    tiles: &Tiles,
    q16: &[u16],
    screen: &ScreenBank,
    b0: usize,
    tb: usize,
    open: &[usize],
    dots: &mut [f32],
    gathered: &mut TileBuf<u16>,
) {
    let width = screen.kcs * TILE_K;
    let tq_pad = q16.len() / width;
    assert!(tq_pad.is_multiple_of(BLOCK) && b0.is_multiple_of(BLOCK) && tb <= CHUNK && b0 + tb <= screen.norm.len());
    assert!(open.iter().all(|&q| q < tq_pad) && dots.len() >= open.len().next_multiple_of(BLOCK) * CHUNK);
    let rows: Vec<*const u16> = open.iter().map(|&q| q16[q * width..].as_ptr()).collect();
    let b = screen.packed[b0 / TILE_ROWS * screen.kcs * B_TILE_LEN..].as_ptr();
    // SAFETY: every open query's row of q16 holds `width` units (the assert); the packed bank
    // holds whole 32-row blocks, so the groups of columns b0..b0 + tb rounded up to 32 exist
    // with kcs tiles each; dots holds the open queries rounded up to 32 rows of CHUNK >= tb
    // rounded up to 32 columns (the assert; CHUNK is a multiple of 32).
    unsafe {
        tiles.gathered(
            &rows,
            width,
            &screen.steps,
            b,
            screen.kcs * B_TILE_LEN,
            tb.next_multiple_of(BLOCK),
            dots.as_mut_ptr(),
            CHUNK * 4,
            gathered,
        );
    }
}

/// The bank rows of one `CHUNK`, as the fold reads them (`rows`: their indices in the bank).
struct BankChunk<'a> {
    rows: &'a [u32],
    sq_norms: &'a [f32],
    norm: &'a [f32],
    tail: &'a [f32],
    max: (Norms, f32),
}

/// Folds one query's AMX products with a chunk of bank rows into its running state, 16 rows to a
/// vector and `FOLD_BLOCK` rows at a time.
///
/// First a quick test with the chunk's largest margin: lower_j <= U needs |m_j|^2 - 2 a_j <=
/// U - |q|^2 + T_j (padded for this test's own rounding); a block none of whose rows passes is
/// skipped. Otherwise the block's bounds, then its upper bounds offered, then the rows their new
/// threshold keeps: a row pushed against the threshold from before the block would mostly be
/// dropped later (39 pushed rows per query -> 16 on predict's queries at k = 1, of which 5.9 are
/// re-ranked). Rows are looked at one by one only where a comparison of 16 passed: written with
/// scalar loops over every row of a block, the fold took 1.7-1.8 ms of CPU time per batch-1
/// image, two thirds of the products'.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fold_chunk(dots: &[f32], q: &QueryBound, chunk: &BankChunk, state: &mut Running) {
    use std::arch::x86_64::*;
    const VECTORS: usize = FOLD_BLOCK / 16;
    let len = dots.len();
    assert!(
        len <= chunk.rows.len() && len <= chunk.sq_norms.len() && len <= chunk.norm.len() && len <= chunk.tail.len()
    );
    let (max_norms, max_sq) = chunk.max;
    let chunk_margin = q.margin(max_norms.norm, max_norms.tail, max_sq);
    let [qa, qb, qf, qg, q_sq] = [q.a, q.b, q.f, q.g, q.sq_norm].map(|x| _mm512_set1_ps(x));
    // Lanes of vector v of the block at `start` that hold rows, and 16 values of `values` there
    // (zeros past the chunk).
    let live = |at: usize| if at >= len { 0 } else { (u32::MAX >> (32 - (len - at).min(16))) as __mmask16 };
    // SAFETY: the masked lanes read rows at..at + 16 that are < len, inside every slice (the assert).
    let load = |values: &[f32], at: usize| unsafe { _mm512_maskz_loadu_ps(live(at), values.as_ptr().add(at)) };
    let mut spill = [0f32; 16];
    for start in (0..len).step_by(FOLD_BLOCK) {
        let u = state.threshold();
        let theta = (u - q.sq_norm + chunk_margin) + 8.0 * U32 * (u.abs() + q.sq_norm + chunk_margin + max_sq);
        let a: [__m512; VECTORS] = std::array::from_fn(|v| load(dots, start + 16 * v));
        let n: [__m512; VECTORS] = std::array::from_fn(|v| load(chunk.sq_norms, start + 16 * v));
        let hit = (0..VECTORS).any(|v| {
            let test = _mm512_sub_ps(n[v], _mm512_add_ps(a[v], a[v]));
            _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(live(start + 16 * v), test, _mm512_set1_ps(theta)) != 0
        });
        if !hit {
            continue;
        }
        let mut lower = [_mm512_setzero_ps(); VECTORS];
        for v in 0..VECTORS {
            let at = start + 16 * v;
            // (|q|^2 + |m|^2) - 2 a and a |m| + b |m - H| + f |m|^2 + g, in `QueryBound::margin`'s order.
            let estimate = _mm512_sub_ps(_mm512_add_ps(q_sq, n[v]), _mm512_add_ps(a[v], a[v]));
            let margin = _mm512_add_ps(
                _mm512_add_ps(
                    _mm512_add_ps(_mm512_mul_ps(qa, load(chunk.norm, at)), _mm512_mul_ps(qb, load(chunk.tail, at))),
                    _mm512_mul_ps(qf, n[v]),
                ),
                qg,
            );
            lower[v] = _mm512_sub_ps(estimate, margin);
            let upper = _mm512_add_ps(estimate, margin);
            let mut below = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(live(at), upper, _mm512_set1_ps(state.threshold()));
            if below != 0 {
                _mm512_storeu_ps(spill.as_mut_ptr(), upper);
                while below != 0 {
                    let u = spill[below.trailing_zeros() as usize];
                    if u < state.threshold() {
                        state.offer_upper(u);
                    }
                    below &= below - 1;
                }
            }
        }
        let threshold = _mm512_set1_ps(state.threshold());
        for (v, &l) in lower.iter().enumerate() {
            let at = start + 16 * v;
            let mut kept = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(live(at), l, threshold);
            if kept != 0 {
                _mm512_storeu_ps(spill.as_mut_ptr(), l);
                while kept != 0 {
                    let j = kept.trailing_zeros() as usize;
                    state.candidates.push((chunk.rows[at + j], spill[j]));
                    kept &= kept - 1;
                }
            }
        }
    }
}

/// The screening bank is built only where bf16 tiles are usable, on x86_64: elsewhere nothing folds.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn fold_chunk(_: &[f32], _: &QueryBound, _: &BankChunk, _: &mut Running) {
    unreachable!("the screening pass runs only on x86_64 with bf16 tiles")
}

/// The k nearest of a query's `candidates` (row, lower bound on its squared distance; lowest
/// bound first, as `Running::kept` gives them) by the squared distance in float64, as (squared,
/// row), ties to the lower index. Once k are ranked, a candidate whose bound exceeds the k-th
/// distance cannot enter (its distance is at least its bound), nor can any after it: on the chip
/// model at batch 1 the distances of 2.8 of a query's 6.1 candidates, where every one was taken.
fn rerank(candidates: &[(u32, f32)], q: &[f32], bank: &[f32], d: usize, k: usize) -> Vec<(f64, u32)> {
    // The rows lie anywhere in the bank (15 MiB at 10,240 x 384), mostly outside the caches: all
    // their lines are asked for at once, so that their fetches overlap (predict's re-ranking at
    // batch 1: 1.6-1.8 -> 1.35-1.45 ms of CPU time an image).
    for &(j, _) in candidates {
        prefetch(&bank[j as usize * d..][..d]);
    }
    let mut ranked: Vec<(f64, u32)> = Vec::with_capacity(k + 1);
    for &(j, lower) in candidates {
        if ranked.len() == k && lower as f64 > ranked[k - 1].0 {
            break;
        }
        // SAFETY: the re-ranking follows the screening pass, which needs AVX-512F.
        let ranked_row = (unsafe { sq_distance(q, &bank[j as usize * d..][..d]) }, j);
        let at = ranked.partition_point(|r| r.0.total_cmp(&ranked_row.0).then(r.1.cmp(&j)).is_lt());
        ranked.insert(at, ranked_row);
        ranked.truncate(k);
    }
    ranked
}

/// Asks for every cache line of `values` to be loaded (a hint: it never faults).
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: PREFETCHT0 is part of SSE, in every x86_64 CPU, and reads nothing.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
}

/// `knn::squared_distance` compiled for AVX-512F: the re-ranking follows the screening pass.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn sq_distance(x: &[f32], y: &[f32]) -> f64 {
    squared_distance(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Rows like a CNN's patch embeddings: non-negative (after ReLU), large norms against their
    /// distances, and low intrinsic dimension (8 latent factors), so the expanded distance cancels.
    fn embedding_like(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mixing = gaussian(8 * d, seed);
        let mut rng = SplitMix64::new(seed + 1);
        (0..n)
            .flat_map(|_| {
                let latent: Vec<f64> = (0..8).map(|_| rng.normal()).collect();
                (0..d)
                    .map(|i| {
                        let v: f64 = latent.iter().enumerate().map(|(l, &z)| z * mixing[l * d + i] as f64).sum();
                        (v + 0.3 * rng.normal() + 1.0).max(0.0) as f32
                    })
                    .collect::<Vec<f32>>()
            })
            .collect()
    }

    /// The bank's screening forms this CPU has (bf16 where it multiplies bf16, f32 with
    /// AVX-512F); each one it lacks says why.
    fn screens(bank: &[f32], d: usize) -> Vec<ScreenBank> {
        [Rounded::Bf16, Rounded::F32]
            .into_iter()
            .filter_map(|rounded| {
                ScreenBank::rounded(bank, d, None, rounded)
                    .inspect_err(|reason| eprintln!("{rounded:?} screening skipped: {reason}"))
                    .ok()
            })
            .collect()
    }

    fn sq_distance64(x: &[f32], y: &[f32]) -> f64 {
        x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum()
    }

    /// The screened search returns the float64 neighbours: each distance is the float64 distance
    /// rounded to f32 (within f32's unit roundoff of it, plus 1e-12 for the order of the float64
    /// sums), and the rows are the float64 ranking's (ties to the lower index), except where two
    /// rows' float64 distances agree to 1e-12 (a genuine tie, up to the order of the sums).
    fn check(queries: &[f32], bank: &[f32], d: usize, k: usize) {
        for screen in screens(bank, d) {
            check_screen(queries, bank, &screen, d, k);
        }
    }

    fn check_screen(queries: &[f32], bank: &[f32], screen: &ScreenBank, d: usize, k: usize) {
        const SUM_ORDER: f64 = 1e-12;
        let (got_d, got_i) = knn_screened(queries, bank, screen, d, k).expect("finite inputs");
        assert_eq!((got_d.len(), got_i.len()), (queries.len() / d * k, queries.len() / d * k));
        for (q, qr) in queries.chunks_exact(d).enumerate() {
            let exact: Vec<f64> = bank.chunks_exact(d).map(|m| sq_distance64(qr, m).sqrt()).collect();
            let mut want: Vec<u32> = (0..exact.len() as u32).collect();
            want.sort_by(|&a, &b| exact[a as usize].total_cmp(&exact[b as usize]).then(a.cmp(&b)));
            for s in 0..k {
                let (got, got_row, want_row) = (got_d[q * k + s] as f64, got_i[q * k + s], want[s]);
                let want_d = exact[want_row as usize];
                assert!(
                    (got - want_d).abs() <= (U32 as f64 + SUM_ORDER) * want_d,
                    "query {q} slot {s}: {got} vs float64 {want_d}"
                );
                let tie = (exact[got_row as usize] - want_d).abs() <= SUM_ORDER * want_d;
                assert!(
                    got_row == want_row || tie,
                    "query {q} slot {s}: row {got_row} ({}) vs {want_row} ({want_d})",
                    exact[got_row as usize]
                );
            }
            let mut seen = got_i[q * k..(q + 1) * k].to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), k, "query {q} repeats a row");
        }
    }

    #[test]
    fn gaussian_rows_match_float64() {
        // d = 19 and 70 pad to whole 32-wide tiles; 1,100 rows end in a ragged chunk and block;
        // 300 queries are two tasks, the second ragged.
        for &k in &[1, 3, 9, 16] {
            check(&gaussian(300 * 19, k as u64), &gaussian(1100 * 19, 100 + k as u64), 19, k);
        }
        check(&gaussian(40 * 70, 5), &gaussian(600 * 70, 6), 70, 4);
        // d = 300: 30 depth tiles.
        check(&gaussian(40 * 300, 7), &gaussian(600 * 300, 8), 300, 4);
    }

    #[test]
    fn embedding_like_rows_match_float64() {
        let d = 96;
        let bank = embedding_like(1500, d, 1);
        // Queries: fresh rows, and bank rows moved by a little noise (the near-duplicates whose
        // distances cancel most).
        let mut queries = embedding_like(200, d, 2);
        let noise = gaussian(100 * d, 3);
        queries.extend(bank[..100 * d].iter().zip(&noise).map(|(&x, &e)| x + 1e-3 * e));
        for &k in &[1, 9, 16] {
            check(&queries, &bank, d, k);
        }
    }

    /// Rows in tight, far-apart clusters, so that the chunks' balls rule most blocks out (as
    /// `knn_chunks`' tests show of such rows): the answers stay float64's.
    #[test]
    fn clustered_banks_stay_exact_while_chunks_are_skipped() {
        let d = 48;
        let centres = gaussian(12 * d, 30);
        let noise = gaussian(12 * 256 * d, 31);
        let bank: Vec<f32> = (0..12 * 256 * d).map(|i| 40.0 * centres[(i / d) % 12 * d + i % d] + noise[i]).collect();
        let near = gaussian(100 * d, 32);
        let queries: Vec<f32> =
            (0..100 * d).map(|i| bank[(i / d * 37) % (12 * 256) * d + i % d] + 0.5 * near[i]).collect();
        for k in [1, 9] {
            check(&queries, &bank, d, k);
        }
    }

    #[test]
    fn duplicate_rows_tie_to_the_lower_index() {
        let d = 40;
        let base = embedding_like(4, d, 9);
        // Rows 1, 3, 4 and 6 are the same vector; the query is that vector.
        let order = [0usize, 1, 2, 1, 1, 3, 1];
        let bank: Vec<f32> = order.iter().flat_map(|&r| base[r * d..(r + 1) * d].to_vec()).collect();
        for screen in screens(&bank, d) {
            let (dist, idx) = knn_screened(&base[d..2 * d], &bank, &screen, d, 4).expect("finite");
            assert_eq!(idx, [1, 3, 4, 6], "{:?}", screen.rounded);
            assert!(dist.iter().all(|&x| x < 1e-2), "{dist:?}");
            check_screen(&base, &bank, &screen, d, 7);
        }
    }

    /// The search is exact in any order of the rows, not only the one it finds (a model file's
    /// `ClusterOrder` is taken as it is): here the reverse, in which no chunk is a tight ball,
    /// and ties still go to the lower bank index.
    #[test]
    fn any_order_of_the_rows_stays_exact() {
        let d = 40;
        let mut bank = embedding_like(700, d, 12);
        // Rows 10 and 600 are the same vector; the first query is that vector.
        bank.copy_within(10 * d..11 * d, 600 * d);
        let mut queries = bank[10 * d..11 * d].to_vec();
        queries.extend(embedding_like(50, d, 13));
        let reversed = ClusterOrder::new((0..700).rev().collect(), 700).expect("a permutation");
        for rounded in [Rounded::Bf16, Rounded::F32] {
            let screen = match ScreenBank::rounded(&bank, d, Some(reversed.clone()), rounded) {
                Ok(screen) => screen,
                Err(reason) => {
                    eprintln!("{rounded:?} screening skipped: {reason}");
                    continue;
                }
            };
            assert_eq!(screen.order, reversed.as_slice(), "{rounded:?}: the order given");
            let (_, idx) = knn_screened(&queries[..d], &bank, &screen, d, 2).expect("finite");
            assert_eq!(idx, [10, 600], "{rounded:?}");
            check_screen(&queries, &bank, &screen, d, 9);
        }
    }

    /// The margin holds: |s~ - s| <= T_j against the f64 squared distance s; it is about bf16's
    /// 2^-7 |q'||m'| (T_j < 2e-2 |q'||m'|; f32's T_j < 1e-4 |q'||m'|), and the shift by the mean
    /// row makes |q'||m'| a fraction of |q||m| on embedding-like rows.
    #[test]
    fn the_margin_bounds_the_bf16_products_error() {
        let d = 200;
        let mut queries = embedding_like(BLOCK, d, 11);
        let bank = embedding_like(CHUNK, d, 12);
        // Half the queries are near-duplicates of bank rows: the largest cancellation.
        let noise = gaussian(BLOCK / 2 * d, 13);
        for (q, (&x, &e)) in queries[..BLOCK / 2 * d].iter_mut().zip(bank.iter().zip(&noise)) {
            *q = x + 1e-3 * e;
        }
        for screen in screens(&bank, d) {
            margin_bounds_the_error(&queries, &bank, &screen, d);
        }
    }

    fn margin_bounds_the_error(queries: &[f32], bank: &[f32], screen: &ScreenBank, d: usize) {
        // SAFETY: the screening bank exists, so its engine is usable.
        let tiles = unsafe { Tiles::on(screen.engine) };
        let (q16, bounds) = shifted_queries(queries, screen, d);
        let mut dots = TileBuf::zeroed(BLOCK * CHUNK);
        let all: Vec<usize> = (0..bounds.len()).collect();
        chunk_products(&tiles, &q16, screen, 0, CHUNK, &all, &mut dots, &mut TileBuf::zeroed(q16.len()));
        let (q_sq, m_sq) = (squared_norms(queries, d), squared_norms(bank, d));
        // bf16's 2^-7, f32's 2^-24 d.
        let relative = match screen.rounded {
            Rounded::Bf16 => 2e-2,
            Rounded::F32 => 1e-4,
        };
        let (mut worst, mut shrink) = (0f64, 0f64);
        for (r, (q, bound)) in queries.chunks_exact(d).zip(&bounds).enumerate() {
            // Column j is the bank's row order[j] (the screened order).
            for (j, &row) in screen.order.iter().enumerate() {
                let m = &bank[row as usize * d..][..d];
                let estimate = ((bound.sq_norm + screen.sq_norms[j]) - 2.0 * dots[r * CHUNK + j]) as f64;
                let margin = bound.margin(screen.norm[j], screen.tail[j], screen.sq_norms[j]) as f64;
                let exact = sq_distance64(q, m);
                assert!(
                    (estimate - exact).abs() <= margin,
                    "query {r} row {j}: {estimate} vs {exact}, margin {margin}"
                );
                let shifted = (bound.sq_norm as f64 * screen.sq_norms[j] as f64).sqrt();
                assert!(
                    margin < relative * shifted,
                    "{:?} query {r} row {j}: margin {margin} against |q'||m'| {shifted}",
                    screen.rounded
                );
                worst = worst.max((estimate - exact).abs() / margin);
                shrink = shrink.max(shifted / (q_sq[r] as f64 * m_sq[row as usize] as f64).sqrt());
            }
        }
        // 0.69 measured (these rows' common part is smaller than a CNN's: 0.26 on ResNet-18's).
        assert!(shrink < 0.75, "the shift leaves |q'||m'| at {shrink} of |q||m|");
        eprintln!("{:?}: largest error / margin {worst:.3}; |q'||m'| / |q||m| at most {shrink:.3}", screen.rounded);
    }

    /// Each value rounds as `to_bf16` of its f32 difference (or to that f32, in two units), and
    /// the sums are the float64 ones rounded to f32 (to 1e-12 more: the vector path sums in
    /// another order), whatever the row's length: the vector path's 16s and the one-by-one rest.
    /// Values include ties of the bf16 rounding, differences that are subnormal in f32 (flushed
    /// in bf16) and large ones.
    #[test]
    fn shifted_rows_round_and_sum_as_float64() {
        let mut rng = SplitMix64::new(40);
        for d in [1, 15, 16, 17, 45, 384] {
            let shift: Vec<f32> = (0..d).map(|i| if i % 5 < 2 { 0.0 } else { rng.normal() as f32 }).collect();
            let row: Vec<f32> = (0..d)
                .map(|i| match i % 5 {
                    0 => f32::from_bits(0x3f80_8000 + (((i as u32 / 5) % 2) << 16)), // ties to even
                    1 => 1e-39,                                                      // a subnormal difference
                    2 => 3e9 * rng.normal() as f32,
                    _ => rng.normal() as f32,
                })
                .collect();
            for rounded in [Rounded::Bf16, Rounded::F32] {
                let mut out = vec![0u16; d * rounded.units()];
                let (norms, sq_norm) = shifted(&row, &shift, rounded, &mut out);
                let (mut n, mut t, mut h) = (0f64, 0f64, 0f64);
                for i in 0..d {
                    let v = row[i] as f64 - shift[i] as f64;
                    let hv = match rounded {
                        Rounded::Bf16 => {
                            assert_eq!(out[i], to_bf16(v as f32), "d {d}, value {i}: {v:e}");
                            amx::from_bf16(out[i]) as f64
                        }
                        Rounded::F32 => {
                            let got = f32::from_bits(out[2 * i] as u32 | (out[2 * i + 1] as u32) << 16);
                            assert_eq!(got.to_bits(), (v as f32).to_bits(), "d {d}, value {i}: {v:e}");
                            got as f64
                        }
                    };
                    (n, t, h) = (n + v * v, t + (v - hv) * (v - hv), h + hv * hv);
                }
                for (got, want) in [(norms.norm, n.sqrt()), (norms.tail, t.sqrt()), (norms.hi, h.sqrt()), (sq_norm, n)]
                {
                    // The float64 sum rounded to f32 once.
                    assert!(
                        (got as f64 - want).abs() <= (U32 as f64 + 1e-12) * want,
                        "{rounded:?}, d {d}: {got:e} against float64 {want:e}"
                    );
                }
            }
        }
    }

    /// Queries go in the order of their nearest ball, the first of equal bounds, ties in their own
    /// order, across the pieces the bounds come in.
    #[test]
    fn queries_are_grouped_by_their_nearest_ball() {
        let pieces =
            vec![vec![3.0, 1.0, 2.0, /**/ 0.0, 5.0, 0.0, /**/ 4.0, 4.0, 1.0], vec![2.0, 1.0, 7.0, /**/ 9.0, 9.0, 8.0]];
        assert_eq!(grouped_by_nearest_ball(&pieces, 3), [1, 0, 3, 2, 4]);
    }

    #[test]
    fn tiny_banks() {
        check(&gaussian(5 * 3, 1), &gaussian(3, 2), 3, 1);
        check(&gaussian(5 * 33, 3), &gaussian(9 * 33, 4), 33, 9);
        check(&gaussian(33 * 8, 5), &gaussian(31 * 8, 6), 8, 16);
    }

    #[test]
    fn queries_the_bound_does_not_cover_are_left_to_the_f32_search() {
        let d = 8;
        let bank = gaussian(50 * d, 1);
        let mut huge = bank.clone();
        huge[0] = 1e20;
        for screen in screens(&bank, d) {
            for bad in [f32::NAN, f32::INFINITY, 1e20] {
                let mut queries = gaussian(3 * d, 2);
                queries[5] = bad;
                assert!(knn_screened(&queries, &bank, &screen, d, 2).is_none(), "{bad}");
            }
            assert!(ScreenBank::rounded(&huge, d, None, screen.rounded).is_err());
        }
    }
}
