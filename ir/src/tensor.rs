//! Host tensors: dense, row-major, owning their data.

use crate::dtype::DType;
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};

#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor. A scalar is a tensor of shape `[]` with one element.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The number of elements of a shape, or `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

impl Tensor {
    /// A tensor of zeros (false for bool).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape).expect("tensor size overflows usize");
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            // Zeroed `u16`s reinterpreted (same layout): a large zeroed vector is fresh pages that are mapped
            // on first touch, where `vec![bf16::ZERO; n]` would write every element now.
            DType::BF16 => TensorData::BF16(vec![0u16; n].reinterpret_into()),
            DType::F16 => TensorData::F16(vec![0u16; n].reinterpret_into()),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        };
        Tensor { shape, data }
    }

    /// Builds a tensor; `None` if the data length does not match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Option<Tensor> {
        (numel(&shape)? == data.len()).then_some(Tensor { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, v: Vec<f32>) -> Option<Tensor> {
        Tensor::new(shape, TensorData::F32(v))
    }

    pub fn from_i32(shape: Vec<usize>, v: Vec<i32>) -> Option<Tensor> {
        Tensor::new(shape, TensorData::I32(v))
    }

    /// A tensor of `dtype` from f32 values, rounded (nearest-even) or converted as a store would.
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, v: &[f32]) -> Option<Tensor> {
        let data = match dtype {
            DType::F32 => TensorData::F32(v.to_vec()),
            DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
        };
        Tensor::new(shape, data)
    }

    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor { shape: vec![], data: TensorData::F32(vec![x]) }
    }

    pub fn scalar_i32(x: i32) -> Tensor {
        Tensor { shape: vec![], data: TensorData::I32(vec![x]) }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F16(_) => DType::F16,
            TensorData::I32(_) => DType::I32,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Element `i` (flat index) as f64: floats widened, ints and bools converted.
    pub fn get_f64(&self, i: usize) -> f64 {
        match &self.data {
            TensorData::F32(v) => v[i] as f64,
            TensorData::BF16(v) => v[i].to_f64(),
            TensorData::F16(v) => v[i].to_f64(),
            TensorData::I32(v) => v[i] as f64,
            TensorData::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// All elements as f64, for comparisons and summaries.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get_f64(i)).collect()
    }

    /// The tensor converted to another dtype, as a store would (rounding to nearest-even for bf16/f16).
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let n = self.len();
        let data = match dtype {
            DType::F32 => TensorData::F32((0..n).map(|i| self.get_f64(i) as f32).collect()),
            DType::BF16 => TensorData::BF16((0..n).map(|i| bf16::from_f32(self.get_f64(i) as f32)).collect()),
            DType::F16 => TensorData::F16((0..n).map(|i| f16::from_f32(self.get_f64(i) as f32)).collect()),
            DType::I32 => TensorData::I32((0..n).map(|i| self.get_f64(i) as i32).collect()),
            DType::Bool => TensorData::Bool((0..n).map(|i| self.get_f64(i) != 0.0).collect()),
        };
        Tensor { shape: self.shape.clone(), data }
    }

    /// Whether two tensors share their buffer (used to refuse aliased launches).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        let p = |t: &Tensor| -> (usize, usize) {
            match &t.data {
                TensorData::F32(v) => (v.as_ptr() as usize, v.len()),
                TensorData::BF16(v) => (v.as_ptr() as usize, v.len()),
                TensorData::F16(v) => (v.as_ptr() as usize, v.len()),
                TensorData::I32(v) => (v.as_ptr() as usize, v.len()),
                TensorData::Bool(v) => (v.as_ptr() as usize, v.len()),
            }
        };
        let (a, n) = p(self);
        let (b, m) = p(other);
        n > 0 && m > 0 && a == b
    }
}
