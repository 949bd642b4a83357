//! `kc-codegen`: tile IR to Cranelift IR to host machine code.
//!
//! [`compile`] turns a [`TileProgram`](kc_ir::tile::TileProgram) into one JIT module: each launch's `cube`
//! and `vector` programs become one function each, of the core ABI defined in [`kc_runtime::native`];
//! [`Compiled::run`] runs them with the runtime's executor. How each statement is lowered is documented in
//! [`lower`]; the vectorized transcendental functions and the bf16/f16 conversions are in [`math`]; compiled
//! kernels are kept per process in [`cache`], keyed by source, kernel, dims and target.

pub mod cache;
pub mod forward;
pub mod lower;
pub mod math;
mod wide;

pub use lower::{compile, program_statements, Compiled, CompiledLaunch, Options, MAX_STATEMENTS};

/// Whether fused element loops are assembled for AVX-512 on this host (unless
/// [`Options::portable_vectors`]): AVX-512F and BMI2.
pub fn wide_available() -> bool {
    wide::available()
}
