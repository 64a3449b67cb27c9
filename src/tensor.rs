//! The host tensor: a shape and row-major f32 data. Images are NCHW; embeddings are rows x dims.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Panics only on a programming error (data length not matching the shape).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor shape {shape:?} does not match its data");
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The shape as NCHW, or an error naming what it is instead.
    pub fn dims4(&self) -> Result<[usize; 4]> {
        dims(&self.shape)
    }

    /// The shape as rows x columns.
    pub fn dims2(&self) -> Result<[usize; 2]> {
        dims(&self.shape)
    }

    /// Rows `rows` of a 2-D tensor, in that order.
    pub fn gather_rows(&self, rows: &[u32]) -> Result<Tensor> {
        let [n, d] = self.dims2()?;
        let mut data = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            let r = r as usize;
            if r >= n {
                return Err(Error::invalid_backend_input(format!("row {r} out of range for {n} rows")));
            }
            data.extend_from_slice(&self.data[r * d..(r + 1) * d]);
        }
        Ok(Tensor::new(vec![rows.len(), d], data))
    }
}

/// A shape as exactly `N` dimensions (NCHW for 4, rows x columns for 2), or an error naming
/// what it is instead. Shared by every backend's tensors.
pub fn dims<const N: usize>(shape: &[usize]) -> Result<[usize; N]> {
    shape.try_into().map_err(|_| Error::invalid_backend_input(format!("expected a {N}-D tensor, got shape {shape:?}")))
}
