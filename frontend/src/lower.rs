//! Lowering: AST to graph IR. (Being written; this signature is the contract.)

use crate::source::{Loader, SourceMap};
use kc_ir::{Diagnostic, FileId, Program};

/// Compiles the file `root` of `sources` (and every file it `use`s, read through `loader` and added to
/// `sources`), with the standard library in scope, to a program of lowered, verified kernels.
/// Never stops at the first error: returns every kernel that lowered and every diagnostic.
pub fn compile(sources: &mut SourceMap, root: FileId, loader: &dyn Loader) -> (Program, Vec<Diagnostic>) {
    let _ = (sources, root, loader);
    (Program::default(), Vec::new())
}
