//! f32 matrix products through the `gemm` crate.

/// A matrix operand: its data and the strides (in elements) between rows and columns.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major rows x cols matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        View { data, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a contiguous row-major matrix whose rows are `cols` long.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        View { data, row_stride: 1, col_stride: cols }
    }

    /// The last element (m x n view) must lie inside the data.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// dst[m x n] = a[m x k] * b[k x n] for strided views, dst written through (`dst_row_stride`,
/// `dst_col_stride`). The gemm crate packs both operands, so a transposed view costs nothing
/// extra: choosing which side is `m` matters more (its kernels favour a long `m`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_views(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    dst: &mut [f32],
    dst_row_stride: usize,
    dst_col_stride: usize,
    parallel: bool,
) {
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_row_stride + (n - 1) * dst_col_stride < dst.len();
    assert!(a.fits(m, k) && b.fits(k, n) && dst_fits, "sgemm: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_row_stride + j * dst_col_stride] = 0.0;
            }
        }
        return;
    }
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every view was checked to hold its last element; gemm reads and writes only
    // through the given strides within those bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_col_stride as isize,
            dst_row_stride as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// dst[m x n] = a[m x k] * b[k x n], all contiguous row-major (`b_transposed`: b is stored n x k).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], b_transposed: bool, dst: &mut [f32], parallel: bool) {
    let b = if b_transposed { View::transposed(b, k) } else { View::row_major(b, n) };
    sgemm_views(m, n, k, View::row_major(a, k), b, dst, n, 1, parallel);
}
