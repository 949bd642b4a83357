//! `kc-ir`: every IR type of `kc`, the printer, the verifier and the reference interpreter.
//!
//! Architecture invariant: this crate knows nothing of text syntax, files, Cranelift or threads.

pub mod cost;
pub mod diag;
pub mod dim;
pub mod dtype;
pub mod graph;
mod infix;
pub mod interp;
pub mod launch;
pub mod ops;
pub mod passes;
pub mod print;
pub mod report;
pub mod span;
pub mod target;
pub mod tensor;
pub mod tile;
pub mod verify;

pub use diag::{Code, Diagnostic, Label, Severity};
pub use dim::Dim;
pub use dtype::{DType, ScalarTy};
pub use graph::*;
pub use span::{FileId, Span};
pub use tensor::{Tensor, TensorData};
