//! A 16 x 16 transpose of 32-bit values in AVX-512 registers: where data changes between
//! channel-major (NCHW planes) and position-major (channels-last rows, patch embeddings), each
//! side then moves whole 64-byte lines, where gathers or strided scalar copies touched one value
//! per line (and, across planes, one per page).

/// rows[i][j] <- rows[j][i] for a 16 x 16 block of f32 (or of any 32-bit values) in 64
/// shuffles: pairs of 32-bit then 64-bit elements interleaved within 128-bit lanes, which leaves
/// lane l of vector 4g + c holding rows 4g..4g + 4 of column 4l + c; then those lanes
/// transposed 4 x 4 across each c's four vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub fn transpose16(rows: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in (0..16).step_by(2) {
        t[i] = _mm512_unpacklo_ps(rows[i], rows[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(rows[i], rows[i + 1]);
    }
    // v[4g + c]: lane l = column 4l + c of rows 4g..4g + 4.
    let mut v = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| _mm512_castps_pd(t[4 * g + i]));
        v[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        v[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        v[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        v[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for c in 0..4 {
        let [v0, v1, v2, v3] = [0, 1, 2, 3].map(|g| v[4 * g + c]);
        let (s0, s1) = (_mm512_shuffle_f32x4::<0x44>(v0, v1), _mm512_shuffle_f32x4::<0xee>(v0, v1));
        let (s2, s3) = (_mm512_shuffle_f32x4::<0x44>(v2, v3), _mm512_shuffle_f32x4::<0xee>(v2, v3));
        rows[c] = _mm512_shuffle_f32x4::<0x88>(s0, s2);
        rows[4 + c] = _mm512_shuffle_f32x4::<0xdd>(s0, s2);
        rows[8 + c] = _mm512_shuffle_f32x4::<0x88>(s1, s3);
        rows[12 + c] = _mm512_shuffle_f32x4::<0xdd>(s1, s3);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::transpose16;
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};

    #[test]
    fn rows_become_columns() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: the CPU has no AVX-512F");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512F was detected; every load and store covers 16 floats inside `m` or `out`.
        unsafe {
            let mut rows = std::array::from_fn(|i| _mm512_loadu_ps(m[16 * i..].as_ptr()));
            transpose16(&mut rows);
            let mut out = vec![0f32; 256];
            for (i, r) in rows.iter().enumerate() {
                _mm512_storeu_ps(out[16 * i..].as_mut_ptr(), *r);
            }
            for (i, j) in (0..16).flat_map(|i| (0..16).map(move |j| (i, j))) {
                assert_eq!(out[16 * i + j], m[16 * j + i], "({i}, {j})");
            }
        }
    }
}
