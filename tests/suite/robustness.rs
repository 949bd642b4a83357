//! kc never panics, on any input: every prefix of every `.ker` file of the project (and of the standard
//! library), seeded mutations of them, pathological sources (deep nesting, huge lines, huge loops, deep or
//! exploding fn inlining, odd bytes), and hostile launches of valid kernels in the interpreter. Nor does it
//! report an internal error (E0900, "a bug in kc") for a user's mistake.
//!
//! Compiles and renders run under `catch_unwind`, so that a panic fails the test with the input that caused
//! it; failures over many inputs are grouped by kind, each reported once with its shortest input. Mutants
//! that compile are also launched in the interpreter on small random inputs. The pathological sources run
//! in child processes of this test binary (the ignored test `pathological_child`), because a stack overflow
//! or an allocation failure aborts the process and cannot be caught; each child gets 512 MiB of address
//! space and a 60 s watchdog, and the parent reports which case crashed or hung, with its output.
//!
//! Knobs: `KC_FUZZ_SEED` (the mutation base seed, default fixed), `KC_FUZZ_ITERS` (mutations per file of
//! `kernels/`, default 300) and `KC_FUZZ_DATA_ITERS` (per file of `tests/data/`, default 100: there are over
//! 150 of them, and 300 each would take the suite past its time budget). For a soak:
//! `KC_FUZZ_SEED=7 KC_FUZZ_ITERS=2000 KC_FUZZ_DATA_ITERS=500 cargo test -p kc-tests robustness::mutated`.

use crate::common::{self, FsLoader};
use kc_frontend::{Loader, NoLoader, SourceMap};
use kc_ir::launch::Args;
use kc_ir::{Code, Diagnostic, Graph, Tensor, TensorData};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// Every `.ker` file under `kernels/` and `tests/data/`, recursively, sorted, with its text.
fn corpus() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ker") {
                out.push(p);
            }
        }
    }
    let root = common::repo_root();
    let mut paths = Vec::new();
    walk(&root.join("kernels"), &mut paths);
    walk(&root.join("tests").join("data"), &mut paths);
    paths.sort();
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            // Lossy: a data file may hold invalid UTF-8 on purpose; the compiler takes a `String`.
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (p, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    assert!(files.len() >= 15, "expected at least the 15 kernels of kernels/, found {} .ker files", files.len());
    files
}

use kc_tests::diff::panic_message;

/// Compiles `text` as the file `name` and renders its diagnostics (plain and colored), catching a panic.
/// Returns the diagnostics, or the panic message (prefixed with the stage that panicked).
fn compile_and_render(name: &str, text: &str, loader: &dyn Loader) -> Result<Vec<Diagnostic>, String> {
    compile_render_program(name, text, loader).map(|(_, d)| d)
}

/// [`compile_and_render`], also returning the program.
fn compile_render_program(
    name: &str,
    text: &str,
    loader: &dyn Loader,
) -> Result<(kc_ir::Program, Vec<Diagnostic>), String> {
    let mut sources = SourceMap::new();
    let root = sources.add(name, text);
    let (program, diags) = catch_unwind(AssertUnwindSafe(|| kc_frontend::compile(&mut sources, root, loader)))
        .map_err(|p| format!("compile panicked: {}", panic_message(&*p)))?;
    catch_unwind(AssertUnwindSafe(|| {
        let _ = kc_frontend::render(&diags, &sources, false);
        let _ = kc_frontend::render(&diags, &sources, true);
    }))
    .map_err(|p| format!("render panicked: {}", panic_message(&*p)))?;
    Ok((program, diags))
}

/// Launches every kernel of `program` on small random inputs (every free dim 2, else 4, else 8, until a
/// launch runs), catching a panic of the interpreter (an `Err` is fine: a mutated kernel may index out of
/// range or break its constraints). Returns how many kernels ran to completion.
fn run_small(program: &kc_ir::Program, seed: u64) -> Result<usize, String> {
    let mut ran = 0;
    for g in &program.kernels {
        for size in [2i64, 4, 8] {
            let Some(args) = small_args(g, size, seed) else { continue };
            let limits = kc_ir::interp::Limits { max_bytes: 1 << 24, ..Default::default() };
            match catch_unwind(AssertUnwindSafe(|| kc_ir::interp::run_with(g, &args, &limits))) {
                Err(p) => {
                    return Err(format!(
                        "the interpreter panicked on kernel `{}` (free dims {size}): {}",
                        g.name,
                        panic_message(&*p)
                    ))
                }
                Ok(Ok(_)) => {
                    ran += 1;
                    break;
                }
                Ok(Err(_)) => {}
            }
        }
    }
    Ok(ran)
}

/// Arguments for `g` with every dim that is not fixed set to `size`, or `None` if the shapes do not evaluate
/// to small sizes or the launch would do too much work (the interpreter has no limit on work).
fn small_args(g: &Graph, size: i64, seed: u64) -> Option<Args> {
    let mut env: std::collections::BTreeMap<String, i64> = g.dims.iter().map(|d| (d.clone(), size)).collect();
    for p in &g.params {
        if p.kind == kc_ir::ParamKind::Dim {
            env.insert(p.name.clone(), size);
        }
    }
    for (n, v) in &g.fixed {
        env.insert(n.clone(), *v);
    }
    let lookup = |s: &str| env.get(s).copied();
    let numel = |dims: Vec<&kc_ir::Dim>| -> Option<u64> {
        dims.into_iter().try_fold(1u64, |acc, d| acc.checked_mul(u64::try_from(d.eval(&lookup).ok()?).ok()?))
    };
    // Iterations of every compute node's loops (an upper bound), and 16 per element of the others.
    let mut work: u64 = 0;
    for node in &g.nodes {
        let n = match &node.kind {
            kc_ir::NodeKind::Compute { vars, .. } => numel(vars.iter().map(|v| &v.extent).collect())?,
            _ => numel(node.shape.iter().collect())?.checked_mul(16)?,
        };
        work = work.checked_add(n)?;
    }
    if work > 200_000 {
        return None;
    }
    let mut rng = common::Rng::new(seed);
    let mut args = Args::default();
    for p in &g.params {
        match &p.kind {
            kc_ir::ParamKind::Dim => {
                args.dims.insert(p.name.clone(), size);
            }
            kc_ir::ParamKind::Tensor { dtype, shape, .. } => {
                let s: Vec<usize> =
                    shape.iter().map(|d| usize::try_from(d.eval(&lookup).ok()?).ok()).collect::<Option<_>>()?;
                if s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))? > 1 << 16 {
                    return None;
                }
                args.tensors.insert(p.name.clone(), common::rand_tensor(&mut rng, *dtype, &s));
            }
        }
    }
    Some(args)
}

/// Fails on an internal error (E0900: "a bug in kc"): invalid input must get a user-facing diagnostic.
fn no_internal_error(diags: Vec<Diagnostic>) -> Result<Vec<Diagnostic>, String> {
    match diags.iter().find(|d| d.code == Code::Internal) {
        Some(d) => {
            let first_note = d.notes.first().and_then(|n| n.lines().next()).unwrap_or("");
            Err(format!("internal error E0900: {} ({first_note})", d.message))
        }
        None => Ok(diags),
    }
}

/// Failures over many inputs, grouped by kind (a panic by its message, an internal error by its text, with
/// names and numbers blurred), so that one bug hit a thousand times is reported once, with its shortest input.
#[derive(Default)]
struct Failures {
    groups: std::collections::BTreeMap<String, (usize, String, String)>, // kind -> (count, where, input)
}

impl Failures {
    fn add(&mut self, msg: &str, at: String, input: &str) {
        let mut kind = String::new();
        let mut in_name = false;
        for c in msg.chars() {
            match c {
                '`' => {
                    in_name = !in_name;
                    kind.push_str(if in_name { "`_" } else { "`" });
                }
                _ if in_name => {}
                '0'..='9' => {
                    if !kind.ends_with('#') {
                        kind.push('#')
                    }
                }
                _ => kind.push(c),
            }
        }
        let e = self.groups.entry(kind).or_insert((0, at.clone(), input.to_string()));
        e.0 += 1;
        if input.len() < e.2.len() {
            (e.1, e.2) = (at, input.to_string());
        }
    }

    fn count(&self) -> usize {
        self.groups.values().map(|g| g.0).sum()
    }

    fn report(&self) -> String {
        let mut out = String::new();
        for (kind, (n, at, input)) in &self.groups {
            let shown: String = input.chars().take(3000).collect();
            let more = if shown.len() < input.len() { "\n[... truncated]" } else { "" };
            out += &format!("\n== {n} x {kind}\n   shortest: {at}\n---- input ----\n{shown}{more}\n---------------\n");
        }
        out
    }
}

/// Seeded xorshift64* (reproducible mutations without a dependency).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Scramble the seed (SplitMix64 finalizer) so that nearby seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------------------
// Every prefix of every file

/// Every truncation of every `.ker` file at every char boundary (every 3rd boundary of a file past 16 KiB,
/// and then still every boundary of its last 200 bytes) compiles and renders without panicking and without
/// internal errors (E0900).
#[test]
fn every_prefix_of_every_file_compiles_without_panic() {
    let start = Instant::now();
    let mut failures = Failures::default();
    let mut count = 0usize;
    // The standard library too: it is .ker source the compiler always reads.
    let mut files = corpus();
    files.push((PathBuf::from("<std>.ker"), kc_frontend::lower::STD_SOURCE.to_string()));
    for (path, text) in &files {
        let name = path.to_string_lossy();
        let big = text.len() > 16 * 1024;
        for (nth, (at, _)) in text.char_indices().chain(std::iter::once((text.len(), ' '))).enumerate() {
            if big && nth % 3 != 0 && at + 200 < text.len() {
                continue;
            }
            count += 1;
            let r = compile_and_render(&name, &text[..at], &FsLoader).and_then(no_internal_error);
            if let Err(msg) = r {
                failures.add(&msg, format!("{name} truncated at byte {at} of {}", text.len()), &text[..at]);
            }
        }
    }
    eprintln!("{count} truncations of {} files in {:.2?}", files.len(), start.elapsed());
    assert!(
        failures.groups.is_empty(),
        "{} truncated files panic the compiler or give internal errors:\n{}",
        failures.count(),
        failures.report()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Seeded byte mutations

const INTERESTING: &[u8] = b"()[]{},;:=+-*/@<>!019.ea_\"\n";

/// Words that a word of the text may be replaced with: builtins, keywords, types, names the kernels use,
/// awkward numbers.
const WORDS: &[&str] = &[
    "sum",
    "mean",
    "max",
    "min",
    "argmax",
    "argmin",
    "softmax",
    "logsumexp",
    "where",
    "exp",
    "sqrt",
    "f32",
    "bf16",
    "f16",
    "i32",
    "bool",
    "transpose",
    "reshape",
    "concat",
    "topk",
    "argsort",
    "cumsum",
    "bincount",
    "segment",
    "clamp",
    "pow",
    "axis",
    "keepdim",
    "perm",
    "descending",
    "exclusive",
    "let",
    "for",
    "in",
    "fn",
    "kernel",
    "return",
    "inout",
    "dim",
    "use",
    "true",
    "false",
    "inf",
    "x",
    "y",
    "N",
    "D",
    "T",
    "K",
    "E",
    "i",
    "j",
    "k",
    "_",
    "0",
    "1",
    "-1",
    "2",
    "8",
    "0.0",
    "1e-6",
    "2147483648",
    "9223372036854775807",
    "unfused",
    "tile",
    "#[unfused]",
    "#[tile(t: 64)]",
];

/// One mutated copy of `text`, from `seed`: one to four edits, each replacing a byte (with an interesting
/// one or any ASCII), inserting one, deleting one, duplicating a random slice somewhere, or replacing a word
/// with another (a builtin, a keyword, a type, a name, a number).
fn mutate(text: &str, seed: u64) -> String {
    let mut rng = XorShift::new(seed);
    let mut b = text.as_bytes().to_vec();
    let pick = |rng: &mut XorShift| -> u8 {
        if rng.below(3) == 0 {
            rng.below(128) as u8
        } else {
            INTERESTING[rng.below(INTERESTING.len())]
        }
    };
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = pick(&mut rng);
            }
            1 => {
                let i = rng.below(b.len() + 1);
                let c = pick(&mut rng);
                b.insert(i, c);
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b.remove(i);
            }
            3 if !b.is_empty() => {
                let from = rng.below(b.len());
                let len = 1 + rng.below((b.len() - from).min(64));
                let slice = b[from..from + len].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, slice);
            }
            4 => {
                // Replace the word (a run of [A-Za-z0-9_.]) at a random place with another word.
                let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
                let at = rng.below(b.len() + 1);
                let (mut lo, mut hi) = (at, at);
                while lo > 0 && is_word(b[lo - 1]) {
                    lo -= 1;
                }
                while hi < b.len() && is_word(b[hi]) {
                    hi += 1;
                }
                let w = WORDS[rng.below(WORDS.len())].as_bytes().to_vec();
                b.splice(lo..hi, w);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A stable per-file number (FNV-1a of the file name relative to the repo), so that seeds do not depend on
/// where the repo is checked out.
fn name_hash(path: &Path) -> u64 {
    let rel = path.strip_prefix(common::repo_root()).unwrap_or(path);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rel.to_string_lossy().bytes() {
        h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Seeded mutations of each file (300 of each kernel, 100 of each test data file) compile and render
/// without panicking and without internal errors (E0900); the kernels of those that compile run in the
/// interpreter on small random inputs without panicking. A failure prints, for each kind of failure, how
/// often it happened and its shortest input, with its seed (the input is `mutate(file text, seed)`).
#[test]
fn mutated_files_compile_and_run_without_panic() {
    let start = Instant::now();
    let base = env_u64("KC_FUZZ_SEED", 0x6b63_2d66_757a_7a00);
    let kernel_iters = env_u64("KC_FUZZ_ITERS", 300);
    let data_iters = env_u64("KC_FUZZ_DATA_ITERS", 100);
    let data_dir = common::repo_root().join("tests").join("data");
    let mut total = 0u64;
    let mut failures = Failures::default();
    let mut errors_seen = 0usize;
    let mut kernels_ran = 0usize;
    let mut slowest = (Duration::ZERO, String::new());
    let files = corpus();
    for (path, text) in &files {
        let name = path.to_string_lossy();
        let iters = if path.starts_with(&data_dir) { data_iters } else { kernel_iters };
        total += iters;
        for i in 0..iters {
            let seed = base ^ name_hash(path) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mutated = mutate(text, seed);
            let t = Instant::now();
            let r = compile_render_program(&name, &mutated, &FsLoader).and_then(|(program, diags)| {
                errors_seen += diags.iter().any(|d| d.is_error()) as usize;
                no_internal_error(diags)?;
                kernels_ran += run_small(&program, seed)?;
                Ok(())
            });
            if t.elapsed() > slowest.0 {
                slowest = (t.elapsed(), format!("{name}, seed {seed:#018x}"));
            }
            if let Err(msg) = r {
                failures.add(&msg, format!("{name}, mutation seed {seed:#018x}"), &mutated);
            }
        }
    }
    eprintln!(
        "{total} mutations of {} files ({errors_seen} with errors, {kernels_ran} kernels run) in {:.2?}; \
         the slowest took {:.2?} ({})",
        files.len(),
        start.elapsed(),
        slowest.0,
        slowest.1
    );
    assert!(
        failures.groups.is_empty(),
        "{} mutated files panic the compiler or the interpreter, or give internal errors:\n{}",
        failures.count(),
        failures.report()
    );
    // The mutations must exercise the error paths (a mutator that changes nothing would pass vacuously).
    assert!(errors_seen as u64 * 2 > total, "only {errors_seen} of {total} mutations gave an error");
    // And some mutants must compile and run (else the interpreter half is vacuous).
    assert!(kernels_ran >= 100, "only {kernels_ran} kernels of the mutated files ran");
}

// ---------------------------------------------------------------------------------------------------------
// Pathological sources, each in a child process

/// What a pathological case must give, beyond not crashing and finishing.
enum Expect {
    /// At least one error, with this code.
    Code(Code),
    /// At least one error, of any code.
    AnyError,
    /// No diagnostics and no kernels.
    Nothing,
    /// No error; the kernel `k` compiles.
    CompilesK,
    /// Either result, as long as it returns.
    Anything,
}

fn repeat(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// A kernel `k(x: f32) -> y: f32` with `body` as its body.
fn scalar_kernel(body: &str) -> String {
    format!("kernel k(x: f32) -> y: f32 {{\n{body}\n}}\n")
}

/// The pathological cases: a name, the source, and what it must give.
fn pathological(name: &str) -> Option<(String, Expect)> {
    const N: usize = 100_000;
    let c = match name {
        "nested_parens_100k" => {
            (scalar_kernel(&format!("    y = {}x{};", repeat("(", N), repeat(")", N))), Expect::Code(Code::TooDeep))
        }
        "unclosed_parens_100k" => (scalar_kernel(&format!("    y = {}x;", repeat("(", N))), Expect::AnyError),
        "nested_brackets_100k" => {
            (scalar_kernel(&format!("    y = x{}0{};", repeat("[", N), repeat("]", N))), Expect::Code(Code::TooDeep))
        }
        "nested_braces_100k" => (
            format!("kernel k(x: f32) -> y: f32 {{ {} {} y = x; }}\n", repeat("{", N), repeat("}", N)),
            Expect::AnyError,
        ),
        "nested_index_gather_10k" => {
            // x[x[x[...]]] on an i32 vector: deep, but each level a real gather.
            let src = format!(
                "kernel k(x: i32[N]) -> y: i32 {{\n    y = {}0{};\n}}\n",
                repeat("x[", 10_000),
                repeat("]", 10_000)
            );
            (src, Expect::Code(Code::TooDeep))
        }
        "nested_where_5k" => (
            scalar_kernel(&format!("    y = {}x{};", repeat("where(x > 0.0, 1.0, ", 5_000), repeat(")", 5_000))),
            Expect::Code(Code::TooDeep),
        ),
        "unary_minus_100k" => (scalar_kernel(&format!("    y = {}x;", repeat("-", N))), Expect::AnyError),
        "not_100k" => (scalar_kernel(&format!("    y = f32({}(x > 0.0));", repeat("!", N))), Expect::AnyError),
        "one_mb_line_of_x_plus_x" => {
            let mut e = String::with_capacity(1 << 20);
            e.push('x');
            while e.len() < 1 << 20 {
                e.push_str("+x");
            }
            (scalar_kernel(&format!("    y = {e};")), Expect::AnyError)
        }
        "one_mb_identifier" => (scalar_kernel(&format!("    let {} = x;\n    y = x;", repeat("a", 1 << 20))), Expect::CompilesK),
        "ten_thousand_statements" => {
            let mut body = String::from("    let v0 = x;\n");
            for i in 1..10_000 {
                body += &format!("    let v{i} = v{} * 0.5 + 1.0;\n", i - 1);
            }
            body += "    y = v9999;";
            (scalar_kernel(&body), Expect::Anything)
        }
        "ten_thousand_kernels" => {
            let src: String =
                (0..10_000).map(|i| format!("kernel k{i}(x: f32[N]) -> y: f32[N] {{ y = x * {i}.0; }}\n")).collect();
            (src, Expect::Anything)
        }
        "for_loop_1e9" => (
            scalar_kernel("    let acc = x;\n    for i in 0..1000000000 {\n        acc = acc + 1.0;\n    }\n    y = acc;"),
            Expect::Code(Code::UnrollLimit),
        ),
        "for_loop_i64_max" => (
            scalar_kernel(
                "    let acc = x;\n    for i in 0..9223372036854775807 {\n        acc = acc + 1.0;\n    }\n    y = acc;",
            ),
            Expect::AnyError,
        ),
        "nested_for_loops_2_pow_60" => {
            // Each loop is small; together they unroll 2^60 times.
            let body = format!(
                "    let acc = x;\n{}        acc = acc + 1.0;\n{}    y = acc;",
                (0..60).map(|i| format!("    for i{i} in 0..2 {{\n")).collect::<String>(),
                repeat("    }\n", 60)
            );
            (scalar_kernel(&body), Expect::Code(Code::UnrollLimit))
        }
        "nested_empty_for_loops_2_pow_60" => {
            // The same, with bodies that build nothing (found by cargo fuzz): no node limit is ever reached,
            // so only the limit on statements and iterations stops it.
            let body = format!(
                "{}        let t = x;\n{}    y = x;",
                (0..60).map(|i| format!("    for i{i} in 0..2 {{\n")).collect::<String>(),
                repeat("    }\n", 60)
            );
            (scalar_kernel(&body), Expect::Code(Code::UnrollLimit))
        }
        "fn_chain_1000" => {
            let mut src: String = (0..1000).map(|i| format!("fn f{i}(v) {{ return f{}(v) + 1.0; }}\n", i + 1)).collect();
            src += "fn f1000(v) { return v; }\n";
            src += &scalar_kernel("    y = f0(x);");
            (src, Expect::AnyError)
        }
        "fn_fanout_2_pow_40" => {
            // Each fn calls the next twice: 40 levels deep, 2^40 inlined calls.
            let mut src: String =
                (0..40).map(|i| format!("fn g{i}(v) {{ return g{}(v) + g{}(v); }}\n", i + 1, i + 1)).collect();
            src += "fn g40(v) { return v * 2.0; }\n";
            src += &scalar_kernel("    y = g0(x);");
            (src, Expect::Code(Code::UnrollLimit))
        }
        "nested_dbl_calls_40" => {
            // The smallest form of the fan-out: one fn that uses its argument twice, called 40 deep.
            let src = format!(
                "fn dbl(v) {{ return v + v; }}\n{}",
                scalar_kernel(&format!("    y = {}x{};", repeat("dbl(", 40), repeat(")", 40)))
            );
            (src, Expect::Code(Code::UnrollLimit))
        }
        "fn_mutual_recursion" => (
            format!("fn a(v) {{ return b(v); }}\nfn b(v) {{ return a(v); }}\n{}", scalar_kernel("    y = a(x);")),
            Expect::Code(Code::Recursion),
        ),
        "let_references_itself" => (scalar_kernel("    let a = a + 1.0;\n    y = x;"), Expect::Code(Code::UnknownName)),
        "index_let_references_itself" => (
            "kernel k(x: f32[N]) -> y: f32[N] {\n    let a[n] = a[n] + x[n];\n    y = x;\n}\n".to_string(),
            Expect::AnyError,
        ),
        "empty_file" => (String::new(), Expect::Nothing),
        "only_comments" => ("// one\n// two\n\n   // three".to_string(), Expect::Nothing),
        "dangling_doc_comment" => ("// one\n/// a doc comment that documents nothing\n".to_string(), Expect::Anything),
        "non_ascii_identifiers" => (
            "kernel ĉefa(é: f32[Ñ], 名前: f32[Ñ]) -> ü: f32[Ñ] {\n    let λ = é * 名前;\n    ü = λ + 1.0; // ☃\n}\n"
                .to_string(),
            Expect::Anything,
        ),
        "non_ascii_strings_and_emoji" => (
            "use \"日本語/ファイル.ker\";\nuse \"🦀\u{200d}\u{202e}.ker\";\n/// ドキュメント 🦀\nkernel k(x: f32) -> y: f32 { y = x; } 🦀 \u{feff}\n"
                .to_string(),
            Expect::Code(Code::UseNotFound),
        ),
        "bom_nul_and_control_bytes" => {
            ("\u{feff}kernel k(x: f32) -> y: f32 {\0 y = x;\u{7} \r\n\u{b}}\n".to_string(), Expect::Anything)
        }
        "unterminated_string" => (format!("use \"{}", repeat("ab", N)), Expect::AnyError),
        "huge_number_literals" => (
            scalar_kernel(
                "    y = x + 1e99999 + 99999999999999999999999999999999 + 0.0000000000000000000000000000000000000000000000001e-99999 + 1.e + .5;",
            ),
            Expect::AnyError,
        ),
        "huge_dims" => (
            "kernel a(x: f32[99999999999999999999]) -> y: f32[99999999999999999999] { y = x; }\n\
             kernel b(x: f32[9223372036854775807, 9223372036854775807]) -> y: f32[9223372036854775807 * 4] { y = reshape(x, [9223372036854775807 * 4]); }\n\
             kernel c(x: f32[N / 0]) -> y: f32[N % 0] { y = x; }\n\
             kernel d(x: f32[0 - 5]) -> y: f32[N] where N == -3 { y[n] = x[n]; }\n\
             kernel e(x: f32[N]) -> y: f32[N * N * N * N * N * N * N * N * N * N * N * N * N * N * N * N] { y = x; }\n"
                .to_string(),
            Expect::AnyError,
        ),
        "huge_for_bounds_and_ranges" => (
            "kernel k(x: f32[N]) -> y: f32[N] {\n    let s[n] = sum[r in 0..99999999999](x[n]);\n    for i in 5..-5 { }\n    y = s;\n}\n"
                .to_string(),
            Expect::Anything,
        ),
        "hundred_thousand_errors" => (repeat("@ ", N), Expect::AnyError),
        "hundred_thousand_items_of_garbage" => (repeat("kernel fn use ( ; }\n", N / 4), Expect::AnyError),
        "use_chain_and_cycle" => ("use \"chain0.ker\";\nuse \"self.ker\";\n".to_string(), Expect::AnyError),
        _ => return None,
    };
    Some(c)
}

const PATHOLOGICAL: &[&str] = &[
    "nested_parens_100k",
    "unclosed_parens_100k",
    "nested_brackets_100k",
    "nested_braces_100k",
    "nested_index_gather_10k",
    "nested_where_5k",
    "unary_minus_100k",
    "not_100k",
    "one_mb_line_of_x_plus_x",
    "one_mb_identifier",
    "ten_thousand_statements",
    "ten_thousand_kernels",
    "for_loop_1e9",
    "for_loop_i64_max",
    "nested_for_loops_2_pow_60",
    "nested_empty_for_loops_2_pow_60",
    "fn_chain_1000",
    "fn_fanout_2_pow_40",
    "nested_dbl_calls_40",
    "fn_mutual_recursion",
    "let_references_itself",
    "index_let_references_itself",
    "empty_file",
    "only_comments",
    "dangling_doc_comment",
    "non_ascii_identifiers",
    "non_ascii_strings_and_emoji",
    "bom_nul_and_control_bytes",
    "unterminated_string",
    "huge_number_literals",
    "huge_dims",
    "huge_for_bounds_and_ranges",
    "hundred_thousand_errors",
    "hundred_thousand_items_of_garbage",
    "use_chain_and_cycle",
];

/// Serves `chainN.ker` files that each `use` the next (an endless chain) and a `self.ker` that uses
/// itself; refuses anything else.
struct GenLoader;

impl Loader for GenLoader {
    fn load(&self, _from: &str, path: &str) -> Result<(String, String), String> {
        if let Some(n) = path.strip_prefix("chain").and_then(|s| s.strip_suffix(".ker")) {
            let n: u64 = n.parse().map_err(|_| format!("cannot read `{path}`"))?;
            return Ok((path.to_string(), format!("use \"chain{}.ker\";\nfn c{n}(v) {{ return v; }}\n", n + 1)));
        }
        if path == "self.ker" {
            return Ok((path.to_string(), "use \"self.ker\";\n".to_string()));
        }
        NoLoader.load(_from, path)
    }
}

/// Runs one pathological case (named by `KC_ROBUSTNESS_CASE`) on a thread with a 2 MiB stack (the default
/// of a spawned Rust thread); run by `pathological_inputs_return_without_crashing` in a child process.
#[test]
#[ignore = "run in a child process by pathological_inputs_return_without_crashing"]
fn pathological_child() {
    let name = std::env::var("KC_ROBUSTNESS_CASE").expect("KC_ROBUSTNESS_CASE names the case");
    let (src, expect) = pathological(&name).unwrap_or_else(|| panic!("no pathological case `{name}`"));
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let start = Instant::now();
            let mut sources = SourceMap::new();
            let root = sources.add("pathological.ker", src);
            let (program, diags) = kc_frontend::compile(&mut sources, root, &GenLoader);
            let compiled = start.elapsed();
            let text = kc_frontend::render(&diags, &sources, false);
            let mut codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
            codes.dedup();
            println!(
                "CASE {name}: compiled in {compiled:.2?}, rendered in {:.2?}: {} diagnostics {codes:?}, {} kernels, \
                 {} bytes rendered",
                start.elapsed() - compiled,
                diags.len(),
                program.kernels.len(),
                text.len()
            );
            let errors = diags.iter().any(|d| d.is_error());
            let first: String = text.chars().take(1500).collect();
            assert!(
                !diags.iter().any(|d| d.code == Code::Internal),
                "`{name}` gives an internal error (E0900), a bug in kc:\n{first}"
            );
            match expect {
                Expect::Code(c) => assert!(
                    diags.iter().any(|d| d.is_error() && d.code == c),
                    "`{name}` should give {c}; it gives {codes:?}:\n{first}"
                ),
                Expect::AnyError => assert!(errors, "`{name}` should give an error; it gives none"),
                Expect::Nothing => {
                    assert!(diags.is_empty(), "`{name}` should give no diagnostics:\n{first}");
                    assert!(program.kernels.is_empty(), "`{name}` holds no kernel");
                }
                Expect::CompilesK => {
                    assert!(!errors, "`{name}` should compile:\n{first}");
                    assert!(program.kernel("k").is_some(), "`{name}` should give kernel `k`");
                }
                Expect::Anything => {}
            }
            // A kernel that compiled must run (a scalar input suffices for the `k(x: f32)` cases).
            if let Some(g) = program.kernel("k") {
                if let [p] = g.params.as_slice() {
                    if p.name == "x" && matches!(&p.kind, kc_ir::ParamKind::Tensor { shape, .. } if shape.is_empty()) {
                        let mut a = Args::default();
                        a.tensors.insert("x".into(), Tensor::scalar_f32(0.5));
                        let r = kc_ir::interp::run(g, &a);
                        assert!(r.is_ok(), "`{name}` compiled but does not run: {:?}", r.err());
                    }
                }
            }
        })
        .expect("spawn the worker thread");
    if let Err(p) = worker.join() {
        panic!("{}", panic_message(&*p));
    }
}

/// How long one pathological case may run before it is reported as a hang (not a timing assertion: each
/// should take well under a second), and the address space it may use (so that a case that blows up
/// exponentially fails fast, instead of eating the machine's memory).
const CHILD_WATCHDOG: Duration = Duration::from_secs(60);
const CHILD_MEMORY_KIB: u64 = 1 << 19;
/// How many children run at once.
const CHILD_PARALLELISM: usize = 4;

/// Starts the test binary as a child that runs the pathological case `name`, its output going to `out`.
fn spawn_child(exe: &Path, name: &str, out: &Path) -> std::process::Child {
    let file = std::fs::File::create(out).expect("create the child's output file");
    let err = file.try_clone().expect("clone the output file");
    let test_args = ["robustness::pathological_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"];
    let mut cmd = if cfg!(unix) {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(format!("ulimit -v {CHILD_MEMORY_KIB} 2>/dev/null; exec \"$0\" \"$@\"")).arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    cmd.args(test_args)
        .env("KC_ROBUSTNESS_CASE", name)
        .env("RUST_BACKTRACE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .expect("spawn the test binary as a child")
}

/// Every pathological source returns (with the diagnostics it should give), without a panic, a stack
/// overflow, an allocation failure or a hang. Each runs in a child process (a few at a time), limited to
/// 512 MiB of address space and watched for 60 s.
#[test]
fn pathological_inputs_return_without_crashing() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = std::env::temp_dir().join(format!("kc-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir for the children's output");
    let start = Instant::now();
    let mut pending: Vec<&str> = PATHOLOGICAL.iter().rev().copied().collect();
    let mut running: Vec<(&str, std::process::Child, PathBuf, Instant)> = Vec::new();
    let mut failures = Vec::new();
    let mut summaries = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < CHILD_PARALLELISM {
            let Some(name) = pending.pop() else { break };
            assert!(pathological(name).is_some(), "case `{name}` is listed but not defined");
            let out = dir.join(format!("{name}.out"));
            let child = spawn_child(&exe, name, &out);
            running.push((name, child, out, Instant::now()));
        }
        let mut i = 0;
        while i < running.len() {
            let (name, child, out, began) = &mut running[i];
            let status = match child.try_wait().expect("wait for the child") {
                Some(s) => Some(s),
                None if began.elapsed() > CHILD_WATCHDOG => {
                    let _ = child.kill();
                    let _ = child.wait();
                    None
                }
                None => {
                    i += 1;
                    continue;
                }
            };
            let output = std::fs::read_to_string(&*out).unwrap_or_default();
            let summary: Vec<&str> = output.lines().filter_map(|l| l.find("CASE ").map(|i| &l[i..])).collect();
            summaries.push(if summary.is_empty() { format!("CASE {name}: no summary") } else { summary.join("\n") });
            match status {
                Some(s) if s.success() && output.contains("1 passed") => {}
                Some(s) => {
                    let lines: Vec<&str> = output.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    failures.push(format!("case `{name}` failed ({s}):\n{tail}"));
                }
                None => failures.push(format!(
                    "case `{name}` did not finish within {CHILD_WATCHDOG:?} (killed after {:.2?})",
                    began.elapsed()
                )),
            }
            running.swap_remove(i);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
    summaries.sort();
    eprintln!("{}\n{} pathological cases in {:.2?}", summaries.join("\n"), PATHOLOGICAL.len(), start.elapsed());
    assert!(failures.is_empty(), "{} pathological cases failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------------------
// User errors stay user errors

/// Minimal sources, found by the truncation and mutation tests, whose error must be reported as the user's
/// error: never as an internal error (E0900), and never by returning a kernel that silently lost a part.
#[test]
fn user_errors_never_become_internal_errors_or_wrong_kernels() {
    let cases: &[(&str, &str, Option<Code>)] = &[
        // A literal that does not fit: the expression fails to lower, the output is left without a value.
        ("kernel k(x: f32) -> y: f32 { y = x * 99999999999999999999999; }", "k", Some(Code::BadNumber)),
        // A range inside an element access (the parser recovers with an error expression).
        ("kernel k(x: f32[N]) -> y: f32[N] { y = x[i in 0..N]; }", "k", Some(Code::UnexpectedToken)),
        // A malformed named argument.
        ("kernel k(x: f32[N, D]) -> y: f32[N] { y = max(x, axis:.2); }", "k", None),
        // A parameter whose dim does not fit in 64 bits: the kernel must not be returned without `x`.
        ("kernel k(x: f32[99999999999999999999]) -> y: f32[4] { y[i] = 1.0; }", "k", Some(Code::BadNumber)),
        // Dim arithmetic that overflows 64 bits must not wrap: `i64::MAX * 4 + 8` is not 4.
        ("kernel k(x: f32[N]) -> y: f32[9223372036854775807 * 4 + 8] { y[i] = f32(i); }", "k", None),
        ("kernel k(x: f32[N]) -> y: f32[N * 9223372036854775807 * 2 + 4] { y[i] = f32(i); }", "k", None),
        ("kernel k(x: f32[9223372036854775807, 9223372036854775807]) -> y: f32[1] { y = reshape(x, [1]); }", "k", None),
    ];
    // Sources that may compile or give a user error, but never an internal error.
    let either: &[&str] = &[
        // A reduction over an empty list of indices.
        "kernel k(x: f32[N, D]) -> y: f32[N] {\n    y[n] = sum[](x[n, 0]);\n}\n",
        "kernel k(x: f32[N]) -> y: f32[N] {\n    y[n] = max[](x[n]) + min[](x[n]);\n}\n",
        // A value of shape [N / 2] assigned to an output declared [N / 3] (both opaque divisions).
        "kernel k(x: f32[N]) -> y: f32[N / 3] {\n    y = reshape(x, [N / 2]);\n}\n",
    ];
    let mut failures = Vec::new();
    for &(src, kernel, code) in cases {
        let diags = match compile_and_render("user_error.ker", src, &NoLoader) {
            Ok(d) => d,
            Err(msg) => {
                failures.push(format!("{src}\n    {msg}"));
                continue;
            }
        };
        let mut sources = SourceMap::new();
        let root = sources.add("user_error.ker", src);
        let (program, _) = kc_frontend::compile(&mut sources, root, &NoLoader);
        let codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
        if diags.iter().any(|d| d.code == Code::Internal) {
            failures.push(format!("{src}\n    gives an internal error: {codes:?}"));
        }
        if !diags.iter().any(|d| d.is_error()) {
            failures.push(format!("{src}\n    gives no error"));
        }
        if let Some(c) = code.filter(|c| !diags.iter().any(|d| d.code == *c)) {
            failures.push(format!("{src}\n    should give {c}; gives {codes:?}"));
        }
        if let Some(g) = program.kernel(kernel) {
            failures.push(format!(
                "{src}\n    returns kernel `{kernel}` despite its error:\n{}",
                kc_ir::print::print_graph(g)
            ));
        }
    }
    for src in either {
        match compile_and_render("either.ker", src, &NoLoader).and_then(no_internal_error) {
            Ok(_) => {}
            Err(msg) => failures.push(format!("{src}\n    {msg}")),
        }
    }
    assert!(failures.is_empty(), "{} user errors mishandled:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------
// Hostile launches

const HOSTILE_SRC: &str = "\
kernel h(x: f32[N, D], w: bf16[D], s: f32, idx: i32[M], E: dim) -> (y: f32[N, D], z: f32[E], g: f32[M, D])
    where D % 2 == 0
{
    y = x * w + s;
    z[e] = f32(e) * s;
    g[m, d] = x[idx[m], d];
}

kernel half(x: f32[N]) -> y: f32[N / 2] {
    y[i] = x[2 * i];
}

kernel big(E: dim) -> z: f32[E, E] {
    z[a, b] = f32(a + b);
}

kernel upd(p: inout f32[N], g: bf16[N]) {
    p = p - g;
}
";

fn f32s(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32 * 0.25).collect()).unwrap()
}

fn bf16s(shape: &[usize]) -> Tensor {
    f32s(shape).cast(kc_ir::DType::BF16)
}

/// A valid launch of `h`: N = 3, D = 4, M = 2, E = 5.
fn good_args() -> Args {
    let mut a = Args::default();
    a.tensors.insert("x".into(), f32s(&[3, 4]));
    a.tensors.insert("w".into(), bf16s(&[4]));
    a.tensors.insert("s".into(), Tensor::scalar_f32(2.0));
    a.tensors.insert("idx".into(), Tensor::from_i32(vec![2], vec![2, 0]).unwrap());
    a.dims.insert("E".into(), 5);
    a
}

/// `h` with one argument replaced, or removed (`None`).
fn with(name: &str, t: Option<Tensor>) -> Args {
    let mut a = good_args();
    match t {
        Some(t) => a.tensors.insert(name.into(), t),
        None => a.tensors.remove(name),
    };
    a
}

fn with_dim(name: &str, v: Option<i64>) -> Args {
    let mut a = good_args();
    match v {
        Some(v) => a.dims.insert(name.into(), v),
        None => a.dims.remove(name),
    };
    a
}

/// Valid kernels launched with wrong dtypes, ranks, shapes and dims, missing and unknown arguments, bad
/// data and malformed tensors: each gives `Err` with the expected launch code, and only launch codes
/// (E0800-E0808); nothing panics; every diagnostic renders.
#[test]
fn hostile_launches_are_refused_with_launch_codes() {
    let mut sources = SourceMap::new();
    let root = sources.add("hostile.ker", HOSTILE_SRC);
    let (program, diags) = kc_frontend::compile(&mut sources, root, &NoLoader);
    assert!(diags.is_empty(), "{}", kc_frontend::render(&diags, &sources, false));
    let h = program.kernel("h").expect("kernel h");
    let half = program.kernel("half").expect("kernel half");
    let big = program.kernel("big").expect("kernel big");
    let upd = program.kernel("upd").expect("kernel upd");

    // The valid launch runs (so that each refusal below is about its one change).
    let ok = kc_ir::interp::run(h, &good_args()).expect("the good launch runs");
    assert_eq!(ok.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["y", "z", "g"]);

    let malformed = Tensor { shape: vec![3, 4], data: TensorData::F32(vec![1.0; 5]) };
    let overflowing = Tensor { shape: vec![usize::MAX, 2, usize::MAX], data: TensorData::F32(vec![]) };
    let empty_args = Args::default();
    let mut dim_as_tensor = good_args();
    dim_as_tensor.dims.remove("E");
    dim_as_tensor.tensors.insert("E".into(), Tensor::scalar_i32(5));
    let mut n_given_wrong = good_args();
    n_given_wrong.dims.insert("N".into(), 7);
    let mut d_given_wrong = good_args();
    d_given_wrong.dims.insert("D".into(), 6);
    let mut odd_d = good_args();
    odd_d.tensors.insert("x".into(), f32s(&[3, 3]));
    odd_d.tensors.insert("w".into(), bf16s(&[3]));
    let mut empty_n = good_args();
    empty_n.tensors.insert("x".into(), f32s(&[0, 4]));
    empty_n.tensors.insert("idx".into(), Tensor::from_i32(vec![0], vec![]).unwrap());
    empty_n.dims.insert("E".into(), 0);

    use Code::*;
    // (what, kernel, launch, the codes of which one must be given: None for any launch code)
    let cases: Vec<(&str, &Graph, Args, Option<&[Code]>)> = vec![
        ("x missing", h, with("x", None), Some(&[MissingArg])),
        ("every argument missing", h, empty_args, Some(&[MissingArg])),
        ("dim E missing", h, with_dim("E", None), Some(&[MissingArg])),
        ("x as i32", h, with("x", Some(Tensor::from_i32(vec![3, 4], vec![1; 12]).unwrap())), Some(&[ArgDType])),
        ("w as f32", h, with("w", Some(f32s(&[4]))), Some(&[ArgDType])),
        ("idx as f32", h, with("idx", Some(f32s(&[2]))), Some(&[ArgDType])),
        (
            "s as bool",
            h,
            with("s", Some(Tensor { shape: vec![], data: TensorData::Bool(vec![true]) })),
            Some(&[ArgDType]),
        ),
        ("scalar s given as [1]", h, with("s", Some(f32s(&[1]))), Some(&[ArgShape])),
        ("x of rank 3", h, with("x", Some(f32s(&[3, 4, 1]))), Some(&[ArgShape])),
        ("x of rank 0", h, with("x", Some(Tensor::scalar_f32(1.0))), Some(&[ArgShape])),
        ("w with D + 1", h, with("w", Some(bf16s(&[5]))), Some(&[ArgShape])),
        ("dim N given, disagreeing with x", h, n_given_wrong, Some(&[ArgShape])),
        ("dim D given, disagreeing with x and w", h, d_given_wrong, Some(&[ArgShape])),
        ("odd D breaks `D % 2 == 0`", h, odd_d, Some(&[ConstraintBroken])),
        ("unknown tensor `q`", h, with("q", Some(f32s(&[1]))), Some(&[UnknownArg])),
        ("unknown dim `Q`", h, with_dim("Q", Some(3)), Some(&[UnknownArg])),
        ("dim E passed as a tensor", h, dim_as_tensor, Some(&[UnknownArg])),
        ("E = -1", h, with_dim("E", Some(-1)), Some(&[ArgShape])),
        ("E = i64::MIN", h, with_dim("E", Some(i64::MIN)), Some(&[ArgShape])),
        ("E = 2^39 (z needs 2 TiB)", h, with_dim("E", Some(1 << 39)), Some(&[ResourceLimit])),
        ("E = 2^41 (z has more than 2^40 elements)", h, with_dim("E", Some(1 << 41)), Some(&[ResourceLimit])),
        ("E = i64::MAX", h, with_dim("E", Some(i64::MAX)), Some(&[ResourceLimit])),
        ("big: E = 2^21 (z is [E, E] = 2^42 elements)", big, with_dim_only("E", 1 << 21), Some(&[ResourceLimit])),
        ("big: E = 3037000500 (E * E overflows i64)", big, with_dim_only("E", 3_037_000_500), Some(&[ResourceLimit])),
        ("big: E = i64::MAX", big, with_dim_only("E", i64::MAX), Some(&[ResourceLimit])),
        (
            "idx out of range",
            h,
            with("idx", Some(Tensor::from_i32(vec![2], vec![0, 3]).unwrap())),
            Some(&[IndexOutOfRange]),
        ),
        (
            "idx negative",
            h,
            with("idx", Some(Tensor::from_i32(vec![2], vec![-1, 0]).unwrap())),
            Some(&[IndexOutOfRange]),
        ),
        (
            "idx i32::MIN",
            h,
            with("idx", Some(Tensor::from_i32(vec![2], vec![1, i32::MIN]).unwrap())),
            Some(&[IndexOutOfRange]),
        ),
        ("x with 5 values for shape [3, 4]", h, with("x", Some(malformed)), None),
        ("x with shape [usize::MAX, 2, usize::MAX] and no data", h, with("x", Some(overflowing)), None),
        ("upd: inout p missing", upd, tensor_only("g", bf16s(&[3])), Some(&[MissingArg])),
        ("upd: g as f32", upd, two("p", f32s(&[3]), "g", f32s(&[3])), Some(&[ArgDType])),
        ("upd: inout p as bf16", upd, two("p", bf16s(&[3]), "g", bf16s(&[3])), Some(&[ArgDType])),
        ("upd: p and g of different lengths", upd, two("p", f32s(&[3]), "g", bf16s(&[4])), Some(&[ArgShape])),
        ("half: N = 3 does not divide by 2", half, tensor_only("x", f32s(&[3])), Some(&[InexactDim, ConstraintBroken])),
    ];
    let mut failures = Vec::new();
    for (what, g, args, want) in cases {
        let r = catch_unwind(AssertUnwindSafe(|| kc_ir::interp::run(g, &args)));
        let problem = match r {
            Err(p) => Some(format!("panicked: {}", panic_message(&*p))),
            Ok(Ok(_)) => Some("succeeded".to_string()),
            Ok(Err(diags)) => {
                let rendered = catch_unwind(AssertUnwindSafe(|| kc_frontend::render(&diags, &sources, false)));
                let codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
                let launch_codes = MissingArg..=ResourceLimit;
                if rendered.is_err() {
                    Some("its diagnostics panic the renderer".to_string())
                } else if diags.is_empty() {
                    Some("Err with no diagnostic".to_string())
                } else if let Some(d) = diags.iter().find(|d| !launch_codes.contains(&d.code)) {
                    Some(format!("a non-launch code {}: {d} (all: {codes:?})", d.code))
                } else if want.is_some_and(|w| !diags.iter().any(|d| w.contains(&d.code))) {
                    Some(format!("want one of {:?}, got {codes:?}: {}", want.unwrap(), diags[0]))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{what}: {p}"));
        }
    }
    // Empty tensors are valid: N = 0, M = 0, E = 0.
    match catch_unwind(AssertUnwindSafe(|| kc_ir::interp::run(h, &empty_n))) {
        Ok(Ok(r)) => assert!(r.iter().all(|(_, t)| t.is_empty()), "empty launch gave non-empty results: {r:?}"),
        Ok(Err(d)) => {
            failures.push(format!("N = M = E = 0: refused: {:?}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>()))
        }
        Err(p) => failures.push(format!("N = M = E = 0: panicked: {}", panic_message(&*p))),
    }
    assert!(failures.is_empty(), "{} hostile launches mishandled:\n{}", failures.len(), failures.join("\n"));
}

fn with_dim_only(name: &str, v: i64) -> Args {
    let mut a = Args::default();
    a.dims.insert(name.into(), v);
    a
}

fn two(n1: &str, t1: Tensor, n2: &str, t2: Tensor) -> Args {
    let mut a = tensor_only(n1, t1);
    a.tensors.insert(n2.into(), t2);
    a
}

fn tensor_only(name: &str, t: Tensor) -> Args {
    let mut a = Args::default();
    a.tensors.insert(name.into(), t);
    a
}

/// A launch whose work is absurd (a reduction over 10^11 elements) is refused at once with a resource
/// error, instead of running for hours.
#[test]
fn absurd_work_is_refused_before_running() {
    let src = "kernel k(x: f32[N]) -> y: f32[N] { y[n] = sum[r in 0..100000000000](x[n]); }";
    let mut sources = kc_frontend::SourceMap::new();
    let id = sources.add("absurd.ker", src);
    let (prog, diags) = kc_frontend::compile(&mut sources, id, &kc_frontend::NoLoader);
    assert!(diags.is_empty(), "{}", kc_frontend::render(&diags, &sources, false));
    let mut args = kc_ir::launch::Args::default();
    args.tensors.insert("x".into(), kc_ir::Tensor::from_f32(vec![4], vec![1.0; 4]).expect("tensor"));
    let e = kc_ir::interp::run(&prog.kernels[0], &args).expect_err("refused");
    assert_eq!(e[0].code, kc_ir::Code::ResourceLimit, "{}", e[0].message);
}

/// A kernel of `updates` chained elementwise updates of 19 values each (19 × `updates` graph nodes, one
/// fused group).
fn long_chain(updates: usize) -> String {
    let lets: String = (0..19).map(|j| format!("    let a{j} = x;\n")).collect();
    let body: String =
        (0..19).map(|j| format!("        a{j} = a{j} * 1.0001 + a{} * 0.001;\n", (j + 1) % 19)).collect();
    format!(
        "kernel k(x: f32[N, D]) -> y: f32[N, D] {{\n{lets}    for i in 0..{updates} {{\n{body}    }}\n    y = a0 + a1;\n}}\n"
    )
}

/// Fusion and the elementwise template are linear in the length of a chain: 18,849 nodes (near the node
/// limit) fuse into one group, which the template computes with as many UB buffers as values alive at
/// once (here 20), not one per member. (Fusing this chain took minutes when a merge cost the size of the
/// group, and the template ran out of UB with a buffer per member.)
#[test]
fn a_chain_near_the_node_limit_fuses_and_tiles_with_few_buffers() {
    let prog = crate::common::compile_ok_src("chain", &long_chain(1000));
    let g = &prog.kernels[0];
    assert!(g.nodes.len() > 18_000, "{} nodes", g.nodes.len());
    let f = kc_ir::passes::fuse::fuse(g, &Default::default());
    assert_eq!(f.groups.len(), 1, "one elementwise group");
    let target = kc_ir::target::Target::builtin("ascend910b").expect("target");
    let dims = std::collections::BTreeMap::from([("N".to_string(), 5), ("D".to_string(), 33)]);
    let b = kc_ir::launch::bind_dims(g, &dims).expect("binds");
    let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target).expect("tiles");
    let ub: Vec<_> = tp.launches[0].buffers.iter().filter(|b| b.mem == kc_ir::tile::Mem::UB).collect();
    // x's input buffer, the 19 live values and y.
    assert!(ub.len() <= 21, "{} UB buffers: {:?}", ub.len(), ub.iter().map(|b| &b.name).collect::<Vec<_>>());
}

/// A shorter chain (950 nodes) runs in the simulator and under the JIT with the interpreter's results,
/// with its buffers reused.
#[test]
fn buffers_reused_along_a_chain_keep_the_results() {
    let prog = crate::common::compile_ok_src("chain", &long_chain(50));
    let g = &prog.kernels[0];
    let dims = std::collections::BTreeMap::from([("N".to_string(), 3), ("D".to_string(), 257)]);
    let given = kc_ir::launch::Args { tensors: Default::default(), dims: dims.clone() };
    let args = kc_runtime::random::random_args(g, &given, 5).expect("args");
    let want = crate::common::run(g, &args);
    for t in ["ascend910b", "host"] {
        let target = kc_ir::target::Target::builtin(t).expect("target");
        let (_, tp, _) = crate::tiled::tile_at(g, &dims, &target);
        let sim = kc_runtime::sim::run(&tp, g, &args).expect("sim");
        let code = kc_codegen::compile(&tp, &Default::default()).expect("compiles");
        let (jit, _) = code.run(&tp, g, &args, 2, &kc_ir::interp::Limits::default()).expect("runs");
        for got in [&sim, &jit] {
            crate::tiled::assert_matches_within(&format!("chain on {t}"), &got[0].1, &want[0].1, 0.25);
        }
    }
}

/// A program too long for Cranelift to compile in a few seconds is refused by the JIT with a resource
/// error that names the way out, instead of compiling for minutes.
#[test]
fn the_jit_refuses_programs_too_long_to_compile_quickly() {
    let prog = crate::common::compile_ok_src("chain", &long_chain(300));
    let g = &prog.kernels[0];
    let target = kc_ir::target::Target::builtin("host").expect("target");
    let dims = std::collections::BTreeMap::from([("N".to_string(), 4), ("D".to_string(), 8)]);
    let b = kc_ir::launch::bind_dims(g, &dims).expect("binds");
    let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target).expect("tiles");
    let e = kc_codegen::compile(&tp, &Default::default()).err().expect("refused");
    assert_eq!(e.code, kc_ir::Code::ResourceLimit, "{}", e.message);
    assert!(e.message.contains(&kc_codegen::MAX_STATEMENTS.to_string()), "{}", e.message);
    assert!(e.notes.iter().any(|n| n.contains("--backend sim")), "{:?}", e.notes);
}
