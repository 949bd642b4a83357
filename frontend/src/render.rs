//! Renders diagnostics as text with codespan-reporting: `error[E0100]: message`, `┌─ file:line:col`, the
//! source line with a caret under the primary span and its label, secondary labels, then the notes
//! (`= note: ...`, `= help: ...`).
//!
//! Never panics: a span in a file the source map does not hold is shown without a snippet; a span past the
//! end of its file, reversed, or not on a char boundary is clamped. Output is deterministic; with
//! `color == false` it holds no escape codes.

use crate::source::SourceMap;
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel, Severity as CsSeverity};
use codespan_reporting::files::{Error as FilesError, Files};
use codespan_reporting::term::{self, termcolor, Config};
use kc_ir::{Diagnostic, Severity, Span};
use std::ops::Range;

/// Renders every diagnostic, in order, each followed by a blank line.
pub fn render(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let files = MapFiles::new(sources);
    let config = Config::default();
    let mut out = String::new();
    for d in diags {
        let cs = convert(d, &files);
        match emit(&config, &files, &cs, color) {
            Some(text) => out.push_str(&text),
            None => {
                // codespan could not render it: fall back to the header and the notes.
                out.push_str(&format!("{}: {}\n", header(d), d.message));
                for n in &cs.notes {
                    out.push_str(&format!("  = {n}\n"));
                }
                out.push('\n');
            }
        }
    }
    out
}

fn header(d: &Diagnostic) -> String {
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!("{sev}[{}]", d.code)
}

fn emit(config: &Config, files: &MapFiles<'_>, cs: &CsDiagnostic<u32>, color: bool) -> Option<String> {
    let mut buf = if color { termcolor::Buffer::ansi() } else { termcolor::Buffer::no_color() };
    term::emit_to_write_style(&mut buf, config, files, cs).ok()?;
    Some(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

fn convert(d: &Diagnostic, files: &MapFiles<'_>) -> CsDiagnostic<u32> {
    let severity = match d.severity {
        Severity::Error => CsSeverity::Error,
        Severity::Warning => CsSeverity::Warning,
    };
    let mut labels = Vec::new();
    if let Some((file, range)) = files.clamp(d.primary.span) {
        labels.push(CsLabel::primary(file, range).with_message(d.primary.message.clone()));
    }
    let mut notes = Vec::new();
    for l in &d.secondary {
        match files.clamp(l.span) {
            Some((file, range)) => labels.push(CsLabel::secondary(file, range).with_message(l.message.clone())),
            None if !l.message.is_empty() => notes.push(format!("note: {}", l.message)),
            None => {}
        }
    }
    for n in &d.notes {
        if n.starts_with("help:") || n.starts_with("note:") {
            notes.push(n.clone());
        } else {
            notes.push(format!("note: {n}"));
        }
    }
    CsDiagnostic::new(severity)
        .with_code(d.code.as_str())
        .with_message(d.message.clone())
        .with_labels(labels)
        .with_notes(notes)
}

/// The files of a [`SourceMap`], with line starts, for codespan.
struct MapFiles<'a> {
    files: Vec<(&'a str, &'a str, Vec<usize>)>,
}

impl<'a> MapFiles<'a> {
    fn new(sources: &'a SourceMap) -> MapFiles<'a> {
        let files = sources
            .files()
            .map(|(_, f)| {
                let text = f.text.as_str();
                let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
                (f.name.as_str(), text, starts)
            })
            .collect();
        MapFiles { files }
    }

    /// The file and a valid byte range for a span, or `None` if the file is unknown.
    fn clamp(&self, span: Span) -> Option<(u32, Range<usize>)> {
        let (_, text, _) = self.files.get(span.file.0 as usize)?;
        let floor = |mut i: usize| {
            i = i.min(text.len());
            while i > 0 && !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let start = floor(span.start as usize);
        let end = floor(span.end as usize).max(start);
        Some((span.file.0, start..end))
    }

    fn file(&self, id: u32) -> Result<&(&'a str, &'a str, Vec<usize>), FilesError> {
        self.files.get(id as usize).ok_or(FilesError::FileMissing)
    }
}

impl<'a> Files<'a> for MapFiles<'a> {
    type FileId = u32;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: u32) -> Result<&'a str, FilesError> {
        Ok(self.file(id)?.0)
    }

    fn source(&'a self, id: u32) -> Result<&'a str, FilesError> {
        Ok(self.file(id)?.1)
    }

    fn line_index(&'a self, id: u32, byte_index: usize) -> Result<usize, FilesError> {
        let starts = &self.file(id)?.2;
        Ok(match starts.binary_search(&byte_index) {
            Ok(line) => line,
            Err(next) => next.saturating_sub(1),
        })
    }

    fn line_range(&'a self, id: u32, line_index: usize) -> Result<Range<usize>, FilesError> {
        let (_, text, starts) = self.file(id)?;
        let start = *starts
            .get(line_index)
            .ok_or(FilesError::LineTooLarge { given: line_index, max: starts.len().saturating_sub(1) })?;
        let end = starts.get(line_index + 1).copied().unwrap_or(text.len());
        Ok(start..end.max(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::{Code, FileId};

    #[test]
    fn renders_caret_and_notes() {
        let mut sm = SourceMap::new();
        let f = sm.add("file.ker", "kernel k() {\n    let x = y;\n}\n");
        let d = Diagnostic::error(Code::UnknownName, Span::new(f, 25, 26), "unknown name `y`")
            .with_label("not defined")
            .with_note("names are defined by `let`")
            .with_help("define `y` first");
        let text = render(&[d], &sm, false);
        assert!(text.contains("error[E0100]: unknown name `y`"), "{text}");
        assert!(text.contains("file.ker:2:13"), "{text}");
        assert!(text.contains("^ not defined"), "{text}");
        assert!(text.contains("= note: names are defined by `let`"), "{text}");
        assert!(text.contains("= help: define `y` first"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn odd_spans_do_not_panic() {
        let mut sm = SourceMap::new();
        let f = sm.add("a.ker", "é\nx");
        let spans = [
            Span::new(f, 1, 2),
            Span::new(f, 100, 200),
            Span::new(f, 3, 1),
            Span::new(f, 4, 4),
            Span::new(FileId(7), 0, 1),
            Span::new(FileId(u32::MAX), 0, 0),
        ];
        for s in spans {
            let d = Diagnostic::error(Code::Internal, s, "m").with_secondary(s, "here");
            let _ = render(std::slice::from_ref(&d), &sm, false);
            let _ = render(&[d], &sm, true);
        }
        let d = Diagnostic::error(Code::Internal, Span::new(FileId(u32::MAX), 0, 0), "no place").with_note("n");
        let text = render(&[d], &sm, false);
        assert!(text.starts_with("error[E0900]: no place\n"), "{text}");
        assert!(text.contains("= note: n"), "{text}");
    }
}
