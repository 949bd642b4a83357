//! Renders diagnostics as text (being written).
use crate::source::SourceMap;
use kc_ir::Diagnostic;

/// Renders diagnostics with file:line:col, the source line and a caret under the span.
pub fn render(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let _ = (sources, color);
    diags.iter().map(|d| format!("{d}\n")).collect()
}
