//! Differential fuzzing of the JIT (`kc_codegen`, with `kc_runtime`'s host routines) against the reference
//! interpreter. Inputs that compile without a diagnostic have each kernel (at most 4) launched on seeded
//! random arguments at dims that the input's hash picks (`SETS`: the AVX-512 loops, softmax rows and mmad
//! routines want multiples of 16, 32, 64, and their tails other sizes), sometimes with NaN,
//! infinities, zeros and subnormals among the floats or an `i32` element out of any range. The interpreter
//! runs under small limits (a launch it refuses for its limits is skipped). The kernel is then tiled for the
//! host and for an Ascend target and compiled by the JIT twice: with the default options, and with
//! `portable_vectors` and `split_softmax` (documented to give the same results). Checked:
//!
//! - the JIT compiles what the tiler gives (except for its own statement limit);
//! - bit for bit (any NaN meeting any NaN): 1 thread, 2 threads, the other options, a third call on reused
//!   memory poisoned with NaN (`Compiled::poison_reused_memory`), and `run_in_place` (its results and the
//!   `inout` arguments it updated) all agree, failures included (the same first error code);
//! - a failing `run_in_place` leaves the arguments, `inout` tensors included, as they were;
//! - against the interpreter (unless an inexact value meets a discontinuity: `kc_fuzz::exactness`): the
//!   interpreter fails ⇔ the JIT fails; a kernel of exact operations only gives the interpreter's bits, any
//!   other is within the suite's tolerance (`kc_fuzz::matches_within`).
#![no_main]

use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::{Code, DType, Diagnostic, Graph, Tensor};
use libfuzzer_sys::fuzz_target;

/// The dim sets, by the input's hash: `SETS[k](i)` is the size of the `i`-th free dim. Multiples of 16, 32
/// and 64 (AVX-512 vectors, softmax blocks, mmad tiles), odd tails, 1, rows wider than the exp routine's
/// 512-column chunks. A set whose arguments would be too large falls back to every dim 16, then 3.
const SETS: [fn(usize) -> i64; 9] = [
    |_| 3,
    |_| 32,
    |_| 64,
    |i| [33, 64, 17][i % 3],
    |i| [16, 5, 128][i % 3],
    |_| 1,
    |i| [1031, 7, 2][i % 3],
    |i| [48, 96, 31][i % 3],
    |i| [2, 513, 9][i % 3],
];
/// The most elements the arguments of one launch may hold.
const MAX_ELEMENTS: u64 = 1 << 18;
/// The most tile statements of a program the target compiles (compile time grows faster than the program).
const MAX_STMTS: usize = 800;

fn codes(e: &[Diagnostic]) -> Vec<&'static str> {
    e.iter().map(|d| d.code.as_str()).collect()
}

/// Makes every `every`-th float element special, and, with `bad_index`, one `i32` element of each `i32`
/// tensor out of any range. `exact` (a kernel of exact operations only) adds subnormals and 3e38 to the
/// specials. Not for other kernels, whose differences there are documented (`docs/jit.md`, Numerics): a
/// sum whose partial sums overflow is `inf`, `-inf` or NaN depending on its order (`3e38 + 3e38 - inf` is
/// NaN, `3e38 - inf + 3e38` is `-inf`), and the JIT sums in other orders than the interpreter; its mmad
/// routines flush subnormals (AMX, `vdpbf16ps`), so that `inf · 1e-40` is NaN there, `inf` in the
/// interpreter.
fn specials(args: &mut Args, h: u64, floats: bool, bad_index: bool, exact: bool) {
    const S: [f32; 9] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 1.0, 1.0e-40, -3.0e-39, 3.0e38];
    let s = if exact { &S[..] } else { &S[..6] };
    for (ti, t) in args.tensors.values_mut().enumerate() {
        let n = t.len();
        if n == 0 {
            continue;
        }
        match t.dtype() {
            DType::F32 | DType::BF16 | DType::F16 if floats => {
                let every = 3 + (h >> 8) as usize % 13;
                let v: Vec<f32> = (0..n)
                    .map(|i| if i % every == 0 { s[(i / every + ti) % s.len()] } else { t.get_f64(i) as f32 })
                    .collect();
                if let Some(x) = Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v) {
                    *t = x;
                }
            }
            DType::I32 if bad_index => {
                let mut v: Vec<i32> = (0..n).map(|i| t.get_f64(i) as i32).collect();
                let at = (h >> 16) as usize % n;
                v[at] = [-1, n as i32 + 3, i32::MAX, i32::MIN][(h >> 24) as usize % 4];
                if let Some(x) = Tensor::from_i32(t.shape.clone(), v) {
                    *t = x;
                }
            }
            _ => {}
        }
    }
}

/// With `KC_FUZZ_TRACE` set, says how far a kernel went (to see what the corpus exercises).
fn trace(g: &Graph, target: &str, what: &str) {
    if std::env::var_os("KC_FUZZ_TRACE").is_some() {
        eprintln!("jit-trace {} {target}: {what}", g.name);
    }
}

fn check(g: &Graph, args: &Args, h: u64, target: &str) {
    let limits = Limits { max_bytes: 64 << 20, max_work: 1_000_000 };
    let t0 = std::time::Instant::now();
    let want = kc_ir::interp::run_with(g, args, &limits);
    let t_interp = t0.elapsed();
    if let Err(e) = &want {
        if e.iter().any(|d| d.code == Code::ResourceLimit) {
            return trace(g, target, "interpreter limits");
        }
    }
    let Ok(b) = kc_ir::launch::bind(g, args) else { return };
    let target = kc_ir::target::Target::builtin(target).expect("a built-in target");
    let Ok((_, tp, _, _)) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target) else {
        return trace(g, &target.name, "no tiling");
    };
    if let Err(errs) = kc_ir::tile::verify::verify(&tp, &target) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        panic!("{}: the tile program for {} does not verify:\n{}", g.name, target.name, msgs.join("\n"));
    }
    let stmts: usize = kc_codegen::program_statements(&tp);
    if stmts > MAX_STMTS {
        return trace(g, &target.name, "too many statements");
    }
    let at = format!("{} on {}", g.name, target.name);
    let t1 = std::time::Instant::now();
    let opts = kc_codegen::Options { verify: true, ..Default::default() };
    let base = match kc_codegen::compile(&tp, &opts) {
        Ok(c) => c,
        Err(d) => panic!("{at}: the JIT does not compile: {}: {}", d.code.as_str(), d.message),
    };
    let alt_opts = kc_codegen::Options { portable_vectors: true, split_softmax: true, ..opts };
    let alt = match kc_codegen::compile(&tp, &alt_opts) {
        Ok(c) => c,
        Err(d) => panic!("{at}: the JIT does not compile with portable_vectors and split_softmax: {}", d.message),
    };
    let t_compile = t1.elapsed();
    base.poison_reused_memory();
    // Enough memory for the JIT's buffers and workspaces: its refusal for memory is not the interpreter's.
    let jl = Limits { max_bytes: 256 << 20, max_work: limits.max_work };
    let runs = [
        ("1 thread", base.run(&tp, g, args, 1, &jl).map(|r| r.0)),
        ("2 threads", base.run(&tp, g, args, 2, &jl).map(|r| r.0)),
        ("2 threads, reused memory", base.run(&tp, g, args, 2, &jl).map(|r| r.0)),
        ("portable_vectors + split_softmax", alt.run(&tp, g, args, 1 + (h >> 40) as usize % 2, &jl).map(|r| r.0)),
    ];
    let (first_what, first) = &runs[0];
    if let Err(e) = first {
        if e.iter().any(|d| d.code == Code::ResourceLimit) {
            return trace(g, &target.name, "JIT limits");
        }
    }
    for (what, r) in &runs[1..] {
        match (first, r) {
            (Ok(a), Ok(b)) => {
                kc_fuzz::same_results(a, b).unwrap_or_else(|e| panic!("{at}: {first_what} vs {what}: {e}"))
            }
            (Err(a), Err(b)) => assert_eq!(codes(a)[..1], codes(b)[..1], "{at}: {first_what} vs {what}: errors"),
            (a, b) => panic!(
                "{at}: {first_what} {} but {what} {}",
                if a.is_ok() { "runs" } else { "fails" },
                if b.is_ok() { "runs" } else { "fails" }
            ),
        }
    }
    // In place: the same results, the `inout` arguments updated; on failure, the arguments untouched.
    let mut ip = args.clone();
    match (base.run_in_place(&tp, g, &mut ip, 2, &jl), first) {
        (Ok((rest, _, _)), Ok(all)) => {
            let mut got = rest.clone();
            for r in &g.results {
                if r.inout.is_some() {
                    got.push((r.name.clone(), ip.tensors.get(&r.name).expect("the inout argument").clone()));
                }
            }
            // `run` gives outputs first, then `inout` results in parameter order, as `g.results` lists them.
            kc_fuzz::same_results(&got, all).unwrap_or_else(|e| panic!("{at}: run_in_place vs run: {e}"));
        }
        (Err(e), Err(f)) => {
            assert_eq!(codes(&e)[..1], codes(f)[..1], "{at}: run_in_place vs run: errors");
            for (n, t) in &args.tensors {
                kc_fuzz::same_bits(t, &ip.tensors[n])
                    .unwrap_or_else(|e| panic!("{at}: a failed run_in_place changed argument `{n}`: {e}"));
            }
        }
        (a, _) => panic!("{at}: run_in_place {} but run does not", if a.is_ok() { "runs" } else { "fails" }),
    }
    // Against the interpreter.
    let ex = kc_fuzz::exactness(g);
    trace(
        g,
        &target.name,
        &format!(
            "ran: {stmts} statements, wide {} softmax {} interp {} jit {} {ex:?} times: interp {t_interp:?} compile {t_compile:?} \
             total {:?}",
            base.wide_loops,
            base.softmax_groups,
            if want.is_ok() { "ok" } else { "err" },
            if first.is_ok() { "ok" } else { "err" },
            t0.elapsed()
        ),
    );
    if ex.discontinuous {
        return;
    }
    match (first, &want) {
        (Ok(got), Ok(want)) => {
            let gn: Vec<&String> = got.iter().map(|r| &r.0).collect();
            let wn: Vec<&String> = want.iter().map(|r| &r.0).collect();
            assert_eq!(gn, wn, "{at}: result names");
            for ((n, a), (_, w)) in got.iter().zip(want) {
                let r = if ex.inexact {
                    kc_fuzz::matches_within(a, w, ex.rounded.contains(n), ex.chained.contains(n))
                } else {
                    kc_fuzz::same_bits(a, w).map_err(|e| format!("exact operations only, not the same bits: {e}"))
                };
                r.unwrap_or_else(|e| panic!("{at}: `{n}` against the interpreter: {e}"));
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(w)) => panic!("{at}: the JIT runs; the interpreter stops with {:?}: {}", codes(w), w[0].message),
        (Err(e), Ok(_)) => panic!("{at}: the JIT stops with {:?}: {}; the interpreter runs", codes(e), e[0].message),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(program) = kc_fuzz::clean_program(data) else { return };
    let h = kc_fuzz::hash(data);
    let set = SETS[h as usize % SETS.len()];
    let npu = if (h >> 4) % 2 == 0 { "ascend910b" } else { "ascend950" };
    for g in program.kernels.iter().take(4) {
        let given = kc_fuzz::dims_by(g, set, MAX_ELEMENTS)
            .or_else(|| kc_fuzz::dims_by(g, |_| 16, MAX_ELEMENTS))
            .or_else(|| kc_fuzz::dims_by(g, |_| 3, MAX_ELEMENTS));
        let Some(given) = given else { continue };
        let Ok(mut args) = kc_runtime::random::random_args(g, &given, h) else { continue };
        specials(&mut args, h, (h >> 5) % 4 == 0, (h >> 7) % 4 == 0, !kc_fuzz::exactness(g).inexact);
        check(g, &args, h, "host");
        check(g, &args, h, npu);
    }
});
