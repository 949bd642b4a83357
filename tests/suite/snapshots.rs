//! Snapshot tests of the frontend, one `insta::glob!` per fixture folder (the ruff/oxc layout):
//!
//! - `kernels/*.ker` and `tests/data/ok/*.ker` must compile without a single diagnostic (checked before the
//!   snapshot); the snapshot is the graph IR, from the same printer as `kc build --emit graph`.
//! - `tests/data/err/**/*.ker` must produce at least one error, among them the code the file name starts
//!   with (`E0100_unknown_name.ker` must report `E0100`); the snapshot is the rendered diagnostics, without
//!   color, as `kc check` prints them.
//! - `tests/data/fuzz/*.ker` (minimized inputs that crashed or hung the compiler under `cargo fuzz`, see
//!   `docs/fuzzing.md`) may compile or not, but never with an internal error; the snapshot is the rendered
//!   diagnostics and the names of the kernels that lowered.
//! - Every diagnostic of every fixture is checked structurally: its spans lie inside their file's text, on
//!   char boundaries, with `start <= end`; source names are relative (`err/E0100_unknown_name.ker`); the
//!   output is the same when the file is compiled twice.
//! - `docs/errors.md` documents every code of `kc_ir::Code::ALL`, in order.
//!
//! Files are named relative to `tests/data` (or the workspace root for `kernels/`) so that snapshots do not
//! depend on where the repository is checked out; `use` is resolved by [`DataLoader`], relative to the
//! folder of the file that holds it.
//!
//! To accept new or changed snapshots: `INSTA_UPDATE=always cargo test -p kc-tests snapshots` (or
//! `cargo insta review`), then read every changed `.snap` like code.

use kc_frontend::{Loader, SourceMap};
use kc_ir::{Code, Diagnostic, Program, Span};
use std::path::{Component, Path, PathBuf};

/// Fixtures whose file name's code the compiler does not report yet (each is a gap reported to the lead).
/// The test checks that the gap is still there, so that fixing it makes the test fail: then remove the entry
/// and review the new snapshot.
const MISSING_CODE: &[(&str, &str)] =
    &[("E0403_expression_in_target.ker", "the parser rejects `y[i + 1] = ...` with E0010")];

/// Fixtures on which the compiler reports an internal error (E0900, a bug in kc) besides the real error.
/// Checked like [`MISSING_CODE`]: once fixed, the test fails until the entry is removed.
const INTERNAL_ERROR: &[&str] = &[];

/// Codes that no source text can trigger: run-time and launch errors (except the two that dim expressions
/// can also raise at compile time, which have fixtures), a kernel name given on the command line, and
/// internal errors. Every other code must have a fixture in `tests/data/err`.
const NOT_FROM_SOURCE: &[Code] = &[
    Code::UnknownKernel,
    Code::MissingArg,
    Code::ArgShape,
    Code::ConstraintBroken,
    Code::IndexOutOfRange,
    Code::ArgDType,
    Code::UnknownArg,
    Code::ResourceLimit,
    Code::NoTiling,
    Code::OverCapacity,
    Code::Internal,
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Joins and lexically normalizes a relative name (`err/use_cycle/../x.ker` is `err/x.ker`), with `/`
/// separators. `None` if it leaves the root or is absolute.
fn normalize(name: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads `use`d files under a root folder, relative to the folder of the file that holds the `use`, and
/// names them relative to the root, so that a file reached two ways has one name. Its messages are the CLI's.
struct DataLoader {
    root: PathBuf,
}

impl Loader for DataLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let dir = Path::new(from).parent().unwrap_or_else(|| Path::new(""));
        let Some(name) = normalize(&dir.join(path)) else {
            return Err(format!("cannot read `{path}`: it is outside the test data"));
        };
        match std::fs::read_to_string(self.root.join(&name)) {
            Ok(text) => Ok((name, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("cannot read `{name}`: no such file")),
            Err(e) => Err(format!("cannot read `{name}`: {e}")),
        }
    }
}

/// A compiled fixture.
struct Compiled {
    /// The name of the file, relative to the root (`err/E0100_unknown_name.ker`).
    name: String,
    sources: SourceMap,
    program: Program,
    diags: Vec<Diagnostic>,
}

impl Compiled {
    fn rendered(&self) -> String {
        kc_frontend::render(&self.diags, &self.sources, false)
    }
}

/// Compiles `path`, a file under `root`, naming it relative to `root`.
fn compile(root: &Path, path: &Path) -> Compiled {
    let root = root.canonicalize().unwrap_or_else(|e| panic!("cannot resolve {}: {e}", root.display()));
    let path = path.canonicalize().unwrap_or_else(|e| panic!("cannot resolve {}: {e}", path.display()));
    let rel = path.strip_prefix(&root).unwrap_or_else(|_| panic!("{} is not under {}", path.display(), root.display()));
    let name = normalize(rel).unwrap_or_else(|| panic!("{} has no relative name", path.display()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sources = SourceMap::new();
    let id = sources.add(name.clone(), text);
    let (program, diags) = kc_frontend::compile(&mut sources, id, &DataLoader { root: root.clone() });
    Compiled { name, sources, program, diags }
}

/// The structural checks every fixture's diagnostics must pass.
fn check_structure(c: &Compiled, root: &Path) {
    let check_span = |d: &Diagnostic, what: &str, span: Span| {
        let Some(file) = c.sources.get(span.file) else {
            panic!(
                "{}: {} of `{}` ({d}) is in file {:?}, which the source map does not hold",
                c.name, what, d.code, span.file
            );
        };
        let (start, end) = (span.start as usize, span.end as usize);
        assert!(start <= end, "{}: {what} of {d} is reversed: {start}..{end} in `{}`", c.name, file.name);
        assert!(
            end <= file.text.len(),
            "{}: {what} of {d} ends at {end}, past the end of `{}` ({} bytes)",
            c.name,
            file.name,
            file.text.len()
        );
        assert!(
            file.text.is_char_boundary(start) && file.text.is_char_boundary(end),
            "{}: {what} of {d} ({start}..{end}) is not on char boundaries of `{}`",
            c.name,
            file.name
        );
    };
    for d in &c.diags {
        assert!(!d.message.trim().is_empty(), "{}: a {} diagnostic has an empty message", c.name, d.code);
        check_span(d, "the primary span", d.primary.span);
        for l in &d.secondary {
            check_span(d, "a secondary label", l.span);
        }
    }
    for (_, f) in c.sources.files() {
        if f.name == kc_frontend::lower::STD_NAME {
            continue;
        }
        assert!(
            !f.name.starts_with('/') && !f.name.contains('\\') && !f.name.split('/').any(|p| p == ".." || p == "."),
            "{}: the source name `{}` is not a normalized relative path",
            c.name,
            f.name
        );
    }
    let rendered = c.rendered();
    let abs = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    assert!(
        !rendered.contains(&*abs.to_string_lossy()),
        "{}: the rendered diagnostics name an absolute path:\n{rendered}",
        c.name
    );
    assert!(!rendered.contains('\u{1b}'), "{}: rendering without color emitted escape codes", c.name);
}

/// Compiling the same file twice gives the same diagnostics and the same program text.
fn check_deterministic(c: &Compiled, root: &Path, path: &Path) {
    let again = compile(root, path);
    assert_eq!(c.rendered(), again.rendered(), "{}: the diagnostics differ between two compiles", c.name);
    assert_eq!(
        kc_ir::print::print_program(&c.program),
        kc_ir::print::print_program(&again.program),
        "{}: the program differs between two compiles",
        c.name
    );
}

/// The number of `kernel` items of a file as parsed (every one must lower in a file without errors).
fn kernel_items(c: &Compiled) -> usize {
    let text = &c.sources.get(kc_ir::FileId(0)).expect("the root file is the first source").text;
    let (module, _) = kc_frontend::parser::parse(kc_ir::FileId(0), text);
    module.items.iter().filter(|i| matches!(i, kc_frontend::ast::Item::Kernel(_))).count()
}

/// Compiles a file that must produce no diagnostic at all, and snapshots its graph IR as `snapshot`.
fn snapshot_ok(snapshot: &str, root: &Path, path: &Path) {
    let c = compile(root, path);
    assert!(c.diags.is_empty(), "{} must compile without diagnostics, but:\n{}", c.name, c.rendered());
    check_structure(&c, root);
    let n = kernel_items(&c);
    assert!(n > 0, "{} defines no kernel", c.name);
    assert_eq!(c.program.kernels.len(), n, "{}: {n} kernels in the file, {} lowered", c.name, c.program.kernels.len());
    check_deterministic(&c, root, path);
    insta::assert_snapshot!(snapshot, kc_ir::print::print_program(&c.program));
}

/// The code a fixture's file name starts with: `E0100_unknown_name.ker` gives `E0100`.
fn code_of_name(file_name: &str) -> Code {
    let prefix = file_name.split('_').next().unwrap_or("");
    match Code::ALL.iter().find(|c| c.as_str() == prefix) {
        Some(c) => *c,
        None => panic!("the fixture `{file_name}` does not start with a known code such as `E0100_`"),
    }
}

#[test]
fn kernels() {
    let root = workspace_root();
    insta::glob!("../../kernels", "*.ker", |path| snapshot_ok("kernels", &root, path));
}

/// The fusion groups of every kernel (`kc build --emit fusion`): fusion does not depend on the target.
#[test]
fn fusion() {
    let root = workspace_root();
    insta::glob!("../../kernels", "*.ker", |path| {
        let c = compile(&root, path);
        assert!(c.diags.is_empty(), "{} must compile without diagnostics, but:\n{}", c.name, c.rendered());
        let text: Vec<String> = c
            .program
            .kernels
            .iter()
            .map(|g| {
                let f = kc_ir::passes::fuse::fuse(g, &kc_ir::passes::fuse::FusionConfig::from_hints(g));
                kc_ir::passes::fuse::print_fusion(g, &f)
            })
            .collect();
        insta::assert_snapshot!("fusion", text.join("\n"));
    });
}

#[test]
fn ok() {
    let root = data_dir();
    // Only the top folder: `ok/lib/` holds helpers that the fixtures `use`.
    insta::glob!("../data/ok", "*.ker", |path| snapshot_ok("ok", &root, path));
}

#[test]
fn err() {
    let root = data_dir();
    insta::glob!("../data/err", "**/*.ker", |path| {
        let c = compile(&root, path);
        let file_name = file_name(path);
        let want = code_of_name(&file_name);
        let first_line = c.sources.get(kc_ir::FileId(0)).and_then(|f| f.text.lines().next()).unwrap_or("");
        assert!(
            first_line.starts_with("// "),
            "{}: the first line must be a `//` comment saying what it checks",
            c.name
        );
        check_structure(&c, &root);
        let codes: Vec<&str> = c.diags.iter().map(|d| d.code.as_str()).collect();
        let rendered = c.rendered();
        if let Some((_, gap)) = MISSING_CODE.iter().find(|(f, _)| *f == file_name) {
            assert!(
                !c.diags.iter().any(|d| d.code == want),
                "{}: the compiler now reports {want} (the gap was: {gap}); remove the fixture from MISSING_CODE \
                 and review its snapshot:\n{rendered}",
                c.name
            );
        } else {
            assert!(
                c.diags.iter().any(Diagnostic::is_error),
                "{}: an err fixture must produce at least one error, but it compiles:\n{}",
                c.name,
                kc_ir::print::print_program(&c.program)
            );
            assert!(
                c.diags.iter().any(|d| d.code == want && d.is_error()),
                "{}: expected an error {want} ({}), got {codes:?}:\n{rendered}",
                c.name,
                want.summary()
            );
        }
        let internal = c.diags.iter().any(|d| d.code == Code::Internal);
        if INTERNAL_ERROR.contains(&file_name.as_str()) {
            assert!(
                internal,
                "{}: the internal error is fixed; remove the fixture from INTERNAL_ERROR and review its snapshot",
                c.name
            );
        } else {
            assert!(!internal, "{}: an internal compiler error (a bug in kc) on this input:\n{rendered}", c.name);
        }
        check_deterministic(&c, &root, path);
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn fuzz() {
    let root = data_dir();
    insta::glob!("../data/fuzz", "*.ker", |path| {
        let c = compile(&root, path);
        let first_line = c.sources.get(kc_ir::FileId(0)).and_then(|f| f.text.lines().next()).unwrap_or("");
        assert!(
            first_line.starts_with("// "),
            "{}: the first line must be a `//` comment saying what the fuzzer found and what it gives now",
            c.name
        );
        check_structure(&c, &root);
        let rendered = c.rendered();
        assert!(
            !c.diags.iter().any(|d| d.code == Code::Internal),
            "{}: an internal compiler error (a bug in kc) on this input:\n{rendered}",
            c.name
        );
        check_deterministic(&c, &root, path);
        let kernels: Vec<&str> = c.program.kernels.iter().map(|g| g.name.as_str()).collect();
        insta::assert_snapshot!(format!("{rendered}\nkernels lowered: {kernels:?}\n"));
    });
}

/// Every `.ker` file under `tests/data/err`, sorted.
fn err_fixtures() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for e in entries {
            let p = e.expect("a readable entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ker") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir().join("err"), &mut out);
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string()
}

/// Every code that source text can trigger has at least one fixture in `tests/data/err`, and the known-gap
/// lists name fixtures that exist.
#[test]
fn every_code_has_an_err_fixture() {
    let files: Vec<String> = err_fixtures().iter().map(|p| file_name(p)).collect();
    assert!(files.len() >= 70, "expected at least 70 err fixtures, found {}", files.len());
    let covered: Vec<Code> = files.iter().map(|f| code_of_name(f)).collect();
    let missing: Vec<&str> =
        Code::ALL.iter().filter(|c| !NOT_FROM_SOURCE.contains(c) && !covered.contains(c)).map(|c| c.as_str()).collect();
    assert!(missing.is_empty(), "codes without a fixture in tests/data/err: {missing:?}");
    for (f, _) in MISSING_CODE {
        assert!(files.iter().any(|x| x == f), "MISSING_CODE names `{f}`, which is not a fixture");
    }
    for f in INTERNAL_ERROR {
        assert!(files.iter().any(|x| x == f), "INTERNAL_ERROR names `{f}`, which is not a fixture");
    }
}

/// The examples of `docs/errors.md` that are fixtures (a ```` ```ker ```` block whose first line is the first
/// line of a file in `tests/data/err`) show the fixture's current text, and the ```` ```text ```` block after it
/// shows what kc prints for it now. With `INSTA_UPDATE=always` (and not on CI) stale examples are rewritten in
/// place, like snapshots; otherwise the test fails and names them.
#[test]
fn errors_md_examples_are_current() {
    let root = data_dir();
    let mut by_first_line: std::collections::BTreeMap<String, PathBuf> = std::collections::BTreeMap::new();
    for p in err_fixtures() {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        let first = text.lines().next().unwrap_or("").to_string();
        if let Some(other) = by_first_line.insert(first.clone(), p.clone()) {
            panic!("{} and {} start with the same line `{first}`", other.display(), p.display());
        }
    }
    let looks_like_fixture = |line: &str| {
        line.strip_prefix("// E")
            .is_some_and(|r| r.len() > 5 && r[..4].bytes().all(|b| b.is_ascii_digit()) && &r[4..5] == ":")
    };
    let path = workspace_root().join("docs").join("errors.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut stale: Vec<String> = Vec::new();
    let mut examples = 0;
    let mut i = 0;
    while i < lines.len() {
        if lines[i] != "```ker" {
            out.push(lines[i].to_string());
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = (start..lines.len()).find(|&j| lines[j] == "```").expect("docs/errors.md: an unclosed ```ker block");
        let first = lines.get(start).copied().unwrap_or("");
        let Some(fixture) = by_first_line.get(first) else {
            assert!(
                !looks_like_fixture(first),
                "docs/errors.md line {}: the example `{first}` looks like a fixture, but no file in tests/data/err \
                 starts with that line",
                start + 1
            );
            out.extend(lines[i..=end].iter().map(|l| l.to_string()));
            i = end + 1;
            continue;
        };
        examples += 1;
        let c = compile(&root, fixture);
        let source = c.sources.get(kc_ir::FileId(0)).map(|f| f.text.clone()).unwrap_or_default();
        let source: Vec<&str> = source.trim_end_matches('\n').lines().collect();
        if lines[start..end] != source[..] {
            stale.push(format!("{} (source)", c.name));
        }
        out.push("```ker".to_string());
        out.extend(source.iter().map(|l| l.to_string()));
        out.push("```".to_string());
        i = end + 1;
        // The output block follows, after blank lines and prose, before the next example or section.
        while i < lines.len() && lines[i] != "```text" {
            assert!(
                lines[i] != "```ker" && !lines[i].starts_with("## "),
                "docs/errors.md line {}: the example {} has no ```text block with its output",
                i + 1,
                c.name
            );
            out.push(lines[i].to_string());
            i += 1;
        }
        assert!(i < lines.len(), "docs/errors.md: the example {} has no ```text block with its output", c.name);
        let t_start = i + 1;
        let t_end =
            (t_start..lines.len()).find(|&j| lines[j] == "```").expect("docs/errors.md: an unclosed ```text block");
        let rendered = c.rendered();
        let want: Vec<&str> = rendered.trim_end().lines().map(str::trim_end).collect();
        let have: Vec<&str> = lines[t_start..t_end].iter().map(|l| l.trim_end()).collect();
        if have != want {
            stale.push(format!("{} (output)", c.name));
        }
        out.push("```text".to_string());
        out.extend(want.iter().map(|l| l.to_string()));
        out.push("```".to_string());
        i = t_end + 1;
    }
    assert!(examples >= 50, "docs/errors.md shows only {examples} fixtures as examples");
    if stale.is_empty() {
        return;
    }
    let update = std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "always") && std::env::var_os("CI").is_none();
    if update {
        std::fs::write(&path, out.join("\n") + "\n").unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("docs/errors.md: updated the examples of {}", stale.join(", "));
    } else {
        panic!(
            "docs/errors.md shows stale examples: {}\nrun `INSTA_UPDATE=always cargo test -p kc-tests snapshots` to \
             rewrite them from the fixtures, then read the diff",
            stale.join(", ")
        );
    }
}

/// `docs/errors.md` has a `## Exxxx: ...` section for every code, in the order of `Code::ALL`, and none for
/// a code that does not exist.
#[test]
fn every_code_is_documented() {
    let path = workspace_root().join("docs").join("errors.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let headings: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|h| h.split(':').next())
        .filter(|c| c.len() == 5 && c.starts_with('E') && c[1..].chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    let all: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    let undocumented: Vec<&str> = all.iter().copied().filter(|c| !headings.contains(c)).collect();
    assert!(undocumented.is_empty(), "docs/errors.md has no `## Exxxx: ...` heading for {undocumented:?}");
    let unknown: Vec<&str> = headings.iter().copied().filter(|h| !all.contains(h)).collect();
    assert!(unknown.is_empty(), "docs/errors.md documents codes that do not exist: {unknown:?}");
    assert_eq!(headings, all, "docs/errors.md: the sections must follow the order of `Code::ALL`, once each");
}
