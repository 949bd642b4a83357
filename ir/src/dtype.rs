//! Element (storage) types and the compute types values have in expressions.

use std::fmt;

/// A storage type: what a tensor holds in memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    BF16,
    F16,
    I32,
    Bool,
}

/// A compute type: floating-point arithmetic is done in `f32`, integers in (at least) 32 bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScalarTy {
    F32,
    I32,
    Bool,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::I32, DType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The type a value of this storage type has once read.
    pub fn compute(self) -> ScalarTy {
        match self {
            DType::F32 | DType::BF16 | DType::F16 => ScalarTy::F32,
            DType::I32 => ScalarTy::I32,
            DType::Bool => ScalarTy::Bool,
        }
    }

    pub fn is_float(self) -> bool {
        self.compute() == ScalarTy::F32
    }

    /// Bytes per element in memory (bool is one byte).
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Bool => 1,
        }
    }
}

impl ScalarTy {
    pub fn name(self) -> &'static str {
        match self {
            ScalarTy::F32 => "f32",
            ScalarTy::I32 => "i32",
            ScalarTy::Bool => "bool",
        }
    }

    /// The storage type that holds this compute type without loss.
    pub fn storage(self) -> DType {
        match self {
            ScalarTy::F32 => DType::F32,
            ScalarTy::I32 => DType::I32,
            ScalarTy::Bool => DType::Bool,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ScalarTy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Rounds an f32 to the nearest bf16 (ties to even) and widens it back.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Rounds an f32 to the nearest f16 (ties to even) and widens it back.
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}
