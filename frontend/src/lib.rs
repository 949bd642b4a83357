//! `kc-frontend`: `.ker` text to graph IR, with diagnostics.
//!
//! Pipeline: [`lexer`] (logos) → [`parser`] (lalrpop; the only module that names it) → [`ast`] →
//! [`lower`] (names, fn inlining, shapes, dtypes, broadcasting) → [`kc_ir::Program`].
//! Nothing here stops at the first error: each stage returns a value and a list of diagnostics.

pub mod ast;
pub mod ast_print;
pub mod lexer;
pub mod parser;
pub mod render;
pub mod source;

pub use render::render;
pub use source::{Loader, NoLoader, SourceMap};
pub mod lower;

pub use lower::compile;
