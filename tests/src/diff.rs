//! The differential runner: one kernel, seeded random inputs, kc's three executors — the reference
//! interpreter, the tile-IR simulator (ascend910b, ascend950) and the Cranelift JIT (ascend910b, ascend950,
//! host; 1 and 2 threads) — and a comparison of every result with the interpreter's.
//!
//! # The comparison
//!
//! Integers and booleans must be equal. Float element `i` of a result passes when
//!
//! ```text
//! |got - want| <= r * |want| + absmax * (r / 4 + f) + max(absmax, sqrt(T) * B) * 4 * T * 2^-24
//! ```
//!
//! - `r` is the relative tolerance of the result's dtype ([`kc_runtime::compare::rtol`]: 1e-4 for f32, 1/64
//!   for bf16, a few units in the last place) — the rounding of the result itself and the small differences
//!   of the JIT's transcendentals. When some value behind the result was rounded to bf16 after a computation
//!   that may differ in its last bits (a reduction, a transcendental: [`ResultInfo::bf16_rounded`]), that
//!   rounding may land one bf16 unit apart, so `r` is bf16's whatever the result's dtype.
//! - `absmax` is the largest finite magnitude of the reference result.
//! - `4 * T * 2^-24` is the summation order. The executors sum in other orders than the interpreter (blocked
//!   and per-core partial sums, the cube's own order, online softmax). Reordering a sum of `T` terms
//!   accumulated in f32 (unit roundoff `u = 2^-24`) changes it by about `sqrt(T) * u` times the magnitude of
//!   the partial sums, for terms of random signs (the worst case is `(T - 1) * u * sum |x_i|`). The
//!   partial sums are of the order of the result (`absmax`), or, when the sum cancels, of `sqrt(T)` terms
//!   (`sqrt(T) * term_bound`, [`ResultInfo::term_bound`]); `T * u` times the larger is that typical error
//!   with a margin of `sqrt(T)`, times 4. `T` is [`ResultInfo::terms`]: the length of the reduction behind the result
//!   (the product of nested reductions' lengths), so a long reduction gets a proportionally looser bound
//!   and an elementwise result none.
//! - `f = 2^-8 * sqrt(T)` when a bf16 rounding may differ (above) and the rounded values are then summed:
//!   `T` terms each one bf16 unit (2^-8 of the term) off with random signs.
//!
//! NaN must meet NaN and an infinity the same infinity.
//!
//! # What counts as a failure
//!
//! A panic in any executor, a verifier error, a tile program the simulator or the JIT refuses, an error that
//! one side gives and the other does not (or another error code), a mismatch. A kernel the tiler refuses
//! with E0606 (no template tiles one of its fusion groups) is not a failure: it is counted.

use crate::gen::ResultInfo;
use kc_frontend::{NoLoader, SourceMap};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use kc_ir::{DType, Tensor};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The simulator's targets.
pub const SIM_TARGETS: [&str; 2] = ["ascend910b", "ascend950"];
/// The JIT's targets.
pub const JIT_TARGETS: [&str; 3] = ["ascend910b", "ascend950", "host"];

/// How one kernel went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The targets whose tiler refused the kernel with E0606, with the message (`target: message`).
    pub no_tiling: Vec<String>,
    /// Executor runs compared with the interpreter (simulator and JIT runs).
    pub runs: usize,
    /// Whether the interpreter stopped with an error (and every executor with the same one).
    pub refused: bool,
}

impl Report {
    /// Whether the kernel ran on every executor.
    pub fn ran_everywhere(&self) -> bool {
        self.no_tiling.is_empty()
    }
}

/// The tolerance of element `i` as described in the module docs.
pub fn tolerance(want_i: f64, absmax: f64, dtype: DType, info: &ResultInfo) -> f64 {
    let r = if info.bf16_rounded {
        kc_runtime::compare::rtol(DType::BF16).max(kc_runtime::compare::rtol(dtype))
    } else {
        kc_runtime::compare::rtol(dtype)
    };
    let t = info.terms.max(1) as f64;
    let flips = if info.bf16_rounded { 2f64.powi(-8) * t.sqrt() } else { 0.0 };
    // The partial sums: of the order of the result, or of `sqrt(T)` terms when the sum cancels.
    let partial = absmax.max(t.sqrt() * info.term_bound);
    r * want_i.abs() + absmax * (r / 4.0 + flips) + partial * 4.0 * t * 2f64.powi(-24)
}

/// Compares `got` with the reference `want`; `Err` names the first element out of tolerance.
pub fn compare(got: &Tensor, want: &Tensor, info: &ResultInfo) -> Result<(), String> {
    if got.shape != want.shape || got.dtype() != want.dtype() {
        return Err(format!(
            "shape/dtype: got {}{:?}, interpreter {}{:?}",
            got.dtype(),
            got.shape,
            want.dtype(),
            want.shape
        ));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let exact = matches!(want.dtype(), DType::I32 | DType::Bool);
    let absmax = w.iter().filter(|x| x.is_finite()).fold(0.0f64, |a, x| a.max(x.abs()));
    let mut bad = 0;
    let mut first = None;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if exact {
            a == b
        } else if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= tolerance(b, absmax, want.dtype(), info)
        };
        if !ok {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    match first {
        None => Ok(()),
        Some(i) => Err(format!(
            "{bad} of {} elements differ; first at {i}: got {:e}, interpreter {:e} (tolerance {:e})",
            w.len(),
            g[i],
            w[i],
            if exact { 0.0 } else { tolerance(w[i], absmax, want.dtype(), info) }
        )),
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic with a non-string payload)".to_string()
    }
}

fn codes(d: &[kc_ir::Diagnostic]) -> Vec<String> {
    d.iter().map(|d| format!("{}: {}", d.code.as_str(), d.message)).collect()
}

/// Compares the results of one executor run (or its error) with the interpreter's.
fn check_run(
    what: &str,
    got: Result<Vec<(String, Tensor)>, Vec<kc_ir::Diagnostic>>,
    want: &Result<Vec<(String, Tensor)>, Vec<kc_ir::Diagnostic>>,
    info: &dyn Fn(&str) -> ResultInfo,
) -> Result<(), String> {
    match (got, want) {
        (Ok(got), Ok(want)) => {
            let gn: Vec<&String> = got.iter().map(|(n, _)| n).collect();
            let wn: Vec<&String> = want.iter().map(|(n, _)| n).collect();
            if gn != wn {
                return Err(format!("{what}: results {gn:?}, interpreter {wn:?}"));
            }
            for ((n, a), (_, b)) in got.iter().zip(want) {
                compare(a, b, &info(n)).map_err(|e| format!("{what}: `{n}`: {e}"))?;
            }
            Ok(())
        }
        (Err(e), Err(w)) => {
            if e.first().map(|d| d.code) == w.first().map(|d| d.code) {
                Ok(())
            } else {
                Err(format!("{what}: error {:?}, interpreter's {:?}", codes(&e), codes(w)))
            }
        }
        (Err(e), Ok(_)) => Err(format!("{what}: error {:?}; the interpreter runs", codes(&e))),
        (Ok(_), Err(w)) => Err(format!("{what}: runs; the interpreter stops with {:?}", codes(w))),
    }
}

/// Runs kernel `src` (one kernel, no `use`) at `dims` on inputs from `seed` through every executor and
/// compares. `info` gives what the comparison needs about each result (results it lacks get `default`).
pub fn check(
    src: &str,
    dims: &BTreeMap<String, i64>,
    seed: u64,
    info: &BTreeMap<String, ResultInfo>,
    default: &ResultInfo,
) -> Result<Report, String> {
    let mut sources = SourceMap::new();
    let root = sources.add("gen.ker", src);
    let (program, diags) = kc_frontend::compile(&mut sources, root, &NoLoader);
    if !diags.is_empty() {
        return Err(format!("does not compile:\n{}", kc_frontend::render(&diags, &sources, false)));
    }
    let Some(g) = program.kernels.first() else { return Err("no kernel".into()) };
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let args = kc_runtime::random::random_args(g, &given, seed).map_err(|e| format!("random_args: {e}"))?;
    let want = catch_unwind(AssertUnwindSafe(|| kc_ir::interp::run(g, &args)))
        .map_err(|p| format!("interpreter panics: {}", panic_message(&*p)))?;
    let mut report = Report { refused: want.is_err(), ..Report::default() };
    let b = kc_ir::launch::bind(g, &args);
    let b = match (b, &want) {
        (Ok(b), _) => b,
        (Err(e), Err(w)) if e.first().map(|d| d.code) == w.first().map(|d| d.code) => return Ok(report),
        (Err(e), _) => return Err(format!("bind: {:?}", codes(&e))),
    };
    let info_of = |n: &str| info.get(n).cloned().unwrap_or_else(|| default.clone());
    let mut targets: Vec<&str> = SIM_TARGETS.to_vec();
    targets.extend(JIT_TARGETS.iter().filter(|t| !SIM_TARGETS.contains(t)));
    for t in targets {
        let target = Target::builtin(t).ok_or_else(|| format!("no target {t}"))?;
        let tiled = catch_unwind(AssertUnwindSafe(|| kc_ir::passes::tile::fuse_and_tile(g, &b, &target)))
            .map_err(|p| format!("tiler on {t} panics: {}", panic_message(&*p)))?;
        let tp = match tiled {
            Ok((_, tp, _, _)) => tp,
            Err(d) if d.code == kc_ir::Code::NoTiling => {
                report.no_tiling.push(format!("{t}: {}", d.message));
                continue;
            }
            Err(d) => return Err(format!("tiler on {t}: {}: {}", d.code.as_str(), d.message)),
        };
        if let Err(errs) = kc_ir::tile::verify::verify(&tp, &target) {
            let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            return Err(format!("the tile program on {t} does not verify:\n{}", msgs.join("\n")));
        }
        if SIM_TARGETS.contains(&t) {
            let got = catch_unwind(AssertUnwindSafe(|| kc_runtime::sim::run(&tp, g, &args)))
                .map_err(|p| format!("sim on {t} panics: {}", panic_message(&*p)))?;
            check_run(&format!("sim on {t}"), got, &want, &info_of)?;
            report.runs += 1;
        }
        if JIT_TARGETS.contains(&t) {
            let opts = kc_codegen::Options { verify: true, ..Default::default() };
            let compiled = catch_unwind(AssertUnwindSafe(|| kc_codegen::compile(&tp, &opts)))
                .map_err(|p| format!("JIT on {t} panics while compiling: {}", panic_message(&*p)))?
                .map_err(|d| format!("JIT on {t} does not compile: {}: {}", d.code.as_str(), d.message))?;
            // Both thread counts on the host; one, alternating with the seed, on the Ascend targets.
            let threads: &[usize] = if t == "host" {
                &[1, 2]
            } else if seed.is_multiple_of(2) {
                &[2]
            } else {
                &[1]
            };
            for &n in threads {
                let got = catch_unwind(AssertUnwindSafe(|| compiled.run(&tp, g, &args, n, &Limits::default())))
                    .map_err(|p| format!("JIT on {t} ({n} threads) panics: {}", panic_message(&*p)))?
                    .map(|(r, _)| r);
                check_run(&format!("JIT on {t}, {n} threads"), got, &want, &info_of)?;
                report.runs += 1;
            }
        }
    }
    Ok(report)
}

/// Checks a generated program; a failure's text carries the seed, the dims and the source.
pub fn check_program(p: &crate::gen::Program) -> Result<Report, String> {
    check(&p.source, &p.dims, p.seed, &p.results, &ResultInfo { terms: 1, ..ResultInfo::default() })
        .map_err(|e| format!("seed {}, dims {}:\n{e}\nsource:\n{}", p.seed, p.dims_text(), p.source))
}

/// The dims a fixture's header gives: a line `// dims: N=17, M=1`; and the comparison's `terms` for every
/// result, from a line `// terms: 257` (1 without).
pub fn fixture_header(text: &str) -> Result<(BTreeMap<String, i64>, ResultInfo), String> {
    let mut dims = None;
    let mut info = ResultInfo { terms: 1, ..ResultInfo::default() };
    for line in text.lines() {
        let l = line.trim();
        if let Some(d) = l.strip_prefix("// dims:") {
            let mut m = BTreeMap::new();
            for kv in d.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("bad dim `{kv}`"))?;
                m.insert(k.trim().to_string(), v.trim().parse().map_err(|_| format!("bad dim `{kv}`"))?);
            }
            dims = Some(m);
        } else if let Some(t) = l.strip_prefix("// terms:") {
            info.terms = t.trim().parse().map_err(|_| format!("bad terms `{t}`"))?;
        } else if l == "// bf16_rounded" {
            info.bf16_rounded = true;
        }
    }
    Ok((dims.ok_or("no `// dims:` line")?, info))
}
