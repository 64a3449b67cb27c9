//! Row-major f32 matrix products through the `gemm` crate.

/// dst[m x n] = (accumulate ? dst : 0) + a[m x k] * b[k x n], all row-major and contiguous.
/// `b_transposed` reads b as n x k instead (b[j, p] at b[j * k + p]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    b_transposed: bool,
    dst: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && dst.len() >= m * n, "sgemm: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (b_cs, b_rs) = if b_transposed { (k as isize, 1) } else { (1, n as isize) };
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the sizes were checked above; strides describe contiguous row-major buffers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
