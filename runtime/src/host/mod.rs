//! Host implementations of the units JIT-compiled kernels call into.

pub mod mmad;
pub mod rowmath;
