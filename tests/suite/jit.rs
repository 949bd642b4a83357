//! The JIT backend: every kernel of `kernels/`, at the awkward sizes of `kernels/dims.toml`'s `sim` cases,
//! compiled by Cranelift (with its verifier on) and run on 1 and 2 threads, matches the interpreter.

use crate::common;
use crate::tiled::{assert_matches_within, kernel_names, sizes, tile_at, TARGETS};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use std::collections::BTreeMap;

fn opts() -> kc_codegen::Options {
    kc_codegen::Options { verify: true, ..Default::default() }
}

#[test]
fn jit_matches_interpreter() {
    let s = sizes();
    let only = std::env::var("KC_JIT_ONLY").ok();
    for k in kernel_names() {
        if only.as_deref().is_some_and(|o| o != k) {
            continue;
        }
        let prog = common::compile_ok(common::kernel_path(&k));
        for g in &prog.kernels {
            for (ci, dims) in s[&k].sim.iter().enumerate() {
                let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
                let args = kc_runtime::random::random_args(g, &given, 100 + ci as u64)
                    .unwrap_or_else(|e| panic!("{k} at {dims:?}: {e}"));
                let want = common::run(g, &args);
                for t in TARGETS.iter().chain(&["host"]) {
                    let target = Target::builtin(t).expect("builtin target");
                    let (_, tp, _) = tile_at(g, dims, &target);
                    let compiled =
                        kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{k} at {dims:?} on {t}: {e:?}"));
                    for threads in [1, 2] {
                        let (got, _) = compiled
                            .run(&tp, g, &args, threads, &Limits::default())
                            .unwrap_or_else(|e| panic!("{k} at {dims:?} on {t}, {threads} threads: {e:?}"));
                        assert_eq!(got.len(), want.len());
                        for ((n, a), (_, b)) in got.iter().zip(&want) {
                            let frac = if k == "muon_orthogonalize" { 2.0 } else { 0.25 };
                            assert_matches_within(
                                &format!("{k}.{n} at {dims:?} on {t}, {threads} threads"),
                                a,
                                b,
                                frac,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A zero dim (`passes::empty`): every kernel of `kernels/`, with each of its dims set to 0 in turn (the
/// others at a `sim` case's sizes), runs wherever the interpreter runs it, on ascend910b and the host, on
/// 1 and 2 threads, with the interpreter's results: empty outputs, and outputs of empty reductions (`a @ b` with
/// `K = 0` is zeros, a mean over nothing NaN). Where the interpreter stops (a constraint, an index into an
/// empty axis), the tiled program does not run to a result either.
#[test]
fn jit_matches_interpreter_with_a_zero_dim() {
    let s = sizes();
    let (mut ran, mut refused, mut filled) = (0, 0, 0);
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        let base = s[&k].sim.get(1).unwrap_or(&s[&k].sim[0]);
        for g in &prog.kernels {
            for d in base.keys() {
                let mut dims = base.clone();
                dims.insert(d.clone(), 0);
                let at = format!("{}.{} at {dims:?}", k, g.name);
                let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
                // No random inputs at all (an index into an axis of size 0): nothing to compare.
                let Ok(args) = kc_runtime::random::random_args(g, &given, 7) else { continue };
                let want = kc_ir::interp::run(g, &args);
                for t in ["ascend910b", "host"] {
                    let target = Target::builtin(t).expect("builtin target");
                    let tiled = kc_ir::launch::bind(g, &args)
                        .map_err(|e| format!("{e:?}"))
                        .and_then(|b| kc_ir::passes::tile::fuse_and_tile(g, &b, &target).map_err(|e| e.to_string()));
                    let Ok(want) = &want else {
                        // The interpreter stopped: the program must not produce results.
                        if let Ok((_, tp, _, _)) = tiled {
                            let compiled = kc_codegen::compile(&tp, &opts()).expect("compiles");
                            let r = compiled.run(&tp, g, &args, 2, &Limits::default());
                            assert!(r.is_err(), "{at} on {t}: the interpreter stops, the JIT ran");
                        }
                        refused += 1;
                        continue;
                    };
                    let (_, tp, _, _) = tiled.unwrap_or_else(|e| panic!("{at} on {t}: {e}"));
                    for (threads, got) in jit_on_1_and_2_threads(g, &tp, &args, &format!("{at} on {t}")) {
                        assert_eq!(got.len(), want.len());
                        for ((n, a), (_, b)) in got.iter().zip(want) {
                            assert_matches_within(&format!("{at}.{n} on {t}, {threads} threads"), a, b, 0.25);
                            if !b.is_empty() && t == "host" && threads == 1 {
                                filled += 1;
                            }
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    // 16 files, 18 kernels: most dims give a launch that runs; some break a constraint (`S <= T`, `H % G == 0`).
    assert!(ran >= 80 && refused >= 8 && filled >= 20, "ran {ran}, refused {refused}, non-empty outputs {filled}");
}

/// The fixture kernels no template tiles at dims of 7 (E0606; docs/errors.md lists the limits): none now.
const NOT_TILED: [&str; 0] = [];

/// Every kernel of the `tests/data/ok` fixtures but [`NOT_TILED`] tiles at dims of 7 and 1, runs under the JIT
/// and matches the interpreter (casts, integer division, masks, gathers, reductions, scalar outputs, size-1
/// broadcasts, reads through `squeeze` and `unsqueeze`, `concat`, 3-D transposes, ...).
#[test]
fn jit_matches_interpreter_on_the_fixtures() {
    let dir = common::repo_root().join("tests/data/ok");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("fixtures").flatten().map(|e| e.path()).collect();
    files.sort();
    let target = Target::builtin("ascend910b").expect("target");
    let mut ran = 0;
    for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "ker")) {
        let prog = common::compile_ok(f);
        for g in &prog.kernels {
            // At 7, and at 1 (size-1 axes everywhere: a broadcast of a `[1, 1]` value is one element).
            for n in [7, 1] {
                let dims: BTreeMap<String, i64> = g.dims.iter().map(|d| (d.clone(), n)).collect();
                let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
                let Ok(args) = kc_runtime::random::random_args(g, &given, 3) else { continue };
                let Ok(want) = kc_ir::interp::run(g, &args) else { continue };
                let Ok(b) = kc_ir::launch::bind(g, &args) else { continue };
                // The tiler's known gaps (E0606, docs/errors.md) are skipped; every other kernel must tile.
                let tiled = kc_ir::passes::tile::fuse_and_tile(g, &b, &target);
                if NOT_TILED.contains(&g.name.as_str()) {
                    let now = n != 7 || tiled.is_err();
                    assert!(now, "{} now tiles: take it off NOT_TILED (and docs/errors.md)", g.name);
                    continue;
                }
                let at = format!("{} ({}) at {n}", g.name, f.display());
                let (_, tp, _, _) = tiled.unwrap_or_else(|e| panic!("{at}: {e}"));
                let compiled = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{at}: {e:?}"));
                for threads in [1, 2] {
                    let (got, _) = compiled
                        .run(&tp, g, &args, threads, &Limits::default())
                        .unwrap_or_else(|e| panic!("{at}: {e:?}"));
                    for ((n, a), (_, b)) in got.iter().zip(&want) {
                        assert_matches_within(&format!("{at}.{n}"), a, b, 0.25);
                    }
                }
                ran += 1;
            }
        }
    }
    assert!(ran >= 56, "only {ran} fixture kernel runs under the JIT");
}

/// `tp` compiled once and run on 1 and 2 threads: each thread count with its results (`at` names the case
/// in a failure).
fn jit_on_1_and_2_threads(
    g: &kc_ir::Graph,
    tp: &kc_ir::tile::TileProgram,
    args: &Args,
    at: &str,
) -> Vec<(usize, kc_runtime::gm::Results)> {
    let compiled = kc_codegen::compile(tp, &opts()).unwrap_or_else(|e| panic!("{} at {at}: {e:?}", g.name));
    [1, 2]
        .into_iter()
        .map(|threads| {
            let (got, _) = compiled
                .run(tp, g, args, threads, &Limits::default())
                .unwrap_or_else(|e| panic!("{} at {at}, {threads} threads: {e:?}", g.name));
            (threads, got)
        })
        .collect()
}

fn jit_run(g: &kc_ir::Graph, tp: &kc_ir::tile::TileProgram, args: &Args) -> Result<(), Vec<kc_ir::Diagnostic>> {
    let compiled = kc_codegen::compile(tp, &opts()).expect("compiles");
    compiled.run(tp, g, args, 2, &Limits::default()).map(|_| ())
}

/// An unguarded out-of-range index read from data stops the launch with the interpreter's error (same code,
/// same span), and the `inout` tensor the kernel updates is left exactly as it was.
#[test]
fn jit_out_of_range_index_stops_and_leaves_inout_alone() {
    use kc_ir::{Code, DType};
    let g = common::compile_ok_src(
        "jit_pick",
        "kernel pick(x: f32[N, V], t: i32[N], acc: inout f32[N]) -> (z: f32[N, V]) {\n\
         \x20   acc[n] = acc[n] + x[n, t[n]] * 2.0;\n\
         \x20   z[n, v] = x[n, (t[n] + v) % V] + 1.0;\n\
         }\n",
    )
    .kernels
    .remove(0);
    let (n, v) = (5usize, 9usize);
    let mut rng = common::Rng::new(1);
    let x = common::rand_tensor(&mut rng, DType::F32, &[n, v]);
    let acc = common::rand_tensor(&mut rng, DType::F32, &[n]);
    let target = Target::builtin("ascend910b").expect("target");
    let dims = BTreeMap::from([("N".to_string(), n as i64), ("V".to_string(), v as i64)]);
    let (_, tp, _) = tile_at(&g, &dims, &target);
    let good = common::i32_tensor(&[n], vec![0, 1, 2, 3, 8]);
    let args = common::args(&[("x", &x), ("t", &good), ("acc", &acc)], &[]);
    jit_run(&g, &tp, &args).expect("in-range indices run");
    for bad in [vec![9, 0, 1, 2, 3], vec![0, -1, 1, 2, 3], vec![0, 1, 2, 3, 100]] {
        let tt = common::i32_tensor(&[n], bad.clone());
        let args = common::args(&[("x", &x), ("t", &tt), ("acc", &acc)], &[]);
        let before = args.clone();
        let ie = kc_ir::interp::run(&g, &args).expect_err("the interpreter refuses the index");
        let je = jit_run(&g, &tp, &args).expect_err("the JIT refuses the index");
        assert_eq!(je[0].code, Code::IndexOutOfRange, "{bad:?}: {}", je[0].message);
        assert_eq!(je[0].primary.span, ie[0].primary.span, "{bad:?}: the error points at the same access");
        assert_eq!(args, before, "the arguments, `acc` included, are untouched");
    }
}

/// A launch that does not fit the kernel's signature is refused before anything runs, with the
/// interpreter's errors: a wrong dtype, a wrong rank, a broken `where` constraint, a program compiled for
/// other dims.
#[test]
fn jit_refuses_malformed_launches() {
    use kc_ir::{Code, DType, Tensor};
    let target = Target::builtin("ascend910b").expect("target");
    let adamw = common::compile_ok(common::kernel_path("adamw")).kernels.remove(0);
    let dims = BTreeMap::from([("N".to_string(), 100)]);
    let (_, tp, _) = tile_at(&adamw, &dims, &target);
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let good = kc_runtime::random::random_args(&adamw, &given, 1).expect("args");
    jit_run(&adamw, &tp, &good).expect("a good launch runs");
    let with = |name: &str, t: Tensor| {
        let mut a = good.clone();
        a.tensors.insert(name.to_string(), t);
        a
    };
    let e = jit_run(&adamw, &tp, &with("grad", Tensor::zeros(DType::F32, vec![100]))).unwrap_err();
    assert_eq!(e[0].code, Code::ArgDType, "{}", e[0].message);
    let e = jit_run(&adamw, &tp, &with("m", Tensor::zeros(DType::F32, vec![10, 10]))).unwrap_err();
    assert_eq!(e[0].code, Code::ArgShape, "{}", e[0].message);
    let e = jit_run(&adamw, &tp, &with("m", Tensor::zeros(DType::F32, vec![101]))).unwrap_err();
    assert_eq!(e[0].code, Code::ArgShape, "{}", e[0].message);
    // The program was compiled for N = 100: a consistent launch at N = 50 is refused too.
    let small = Args { tensors: BTreeMap::new(), dims: BTreeMap::from([("N".to_string(), 50)]) };
    let small = kc_runtime::random::random_args(&adamw, &small, 1).expect("args");
    let e = jit_run(&adamw, &tp, &small).unwrap_err();
    assert_eq!(e[0].code, Code::ArgShape, "{}", e[0].message);
    assert!(e[0].message.contains("compiled for"), "{}", e[0].message);

    let att = common::compile_ok(common::kernel_path("attention")).kernels.remove(0);
    let d = |h: i64, g: i64| {
        BTreeMap::from([("B", 1), ("H", h), ("G", g), ("S", 5), ("T", 7), ("D", 8)].map(|(k, v)| (k.to_string(), v)))
    };
    let (_, tp, _) = tile_at(&att, &d(4, 2), &target);
    let mut rng = common::Rng::new(2);
    let mk = |rng: &mut common::Rng, shape: &[usize]| common::rand_tensor(rng, DType::BF16, shape);
    let (q, k, v) = (mk(&mut rng, &[1, 3, 5, 8]), mk(&mut rng, &[1, 2, 7, 8]), mk(&mut rng, &[1, 2, 7, 8]));
    let scale = Tensor::scalar_f32(0.35);
    let args = common::args(&[("q", &q), ("k", &k), ("v", &v), ("scale", &scale)], &[]);
    let e = jit_run(&att, &tp, &args).unwrap_err();
    assert_eq!(e[0].code, Code::ConstraintBroken, "H = 3, G = 2 breaks `H % G == 0`: {}", e[0].message);
}

/// A mixed launch whose vector cores wait for a flag their cube core never sets is a deadlock of the
/// program: the launch fails with an internal error naming the waiting cores, on 1 and 2 threads, instead
/// of hanging; a cross-core set on a core without partners is refused the same way.
#[test]
fn jit_reports_deadlocks_and_partnerless_flags() {
    use kc_ir::tile::{Stmt, Unit};
    let target = Target::builtin("ascend910b").expect("target");
    let g = common::compile_ok(common::kernel_path("adamw")).kernels.remove(0);
    let dims = BTreeMap::from([("N".to_string(), 8)]);
    let (_, tp, _) = tile_at(&g, &dims, &target);
    let args = kc_runtime::random::random_args(&g, &Args { tensors: BTreeMap::new(), dims }, 1).expect("args");
    let mut dead = tp.clone();
    let mut l = dead.launches[0].clone();
    l.unit = Unit::Mixed;
    l.cube_cores = 1;
    l.vector_cores = 2;
    l.cube = vec![Stmt::CrossWait { flag: 3 }];
    l.vector = vec![Stmt::CrossWait { flag: 2 }];
    dead.launches.insert(0, l.clone());
    let compiled = kc_codegen::compile(&dead, &opts()).expect("compiles");
    for threads in [1, 2] {
        let e = compiled.run(&dead, &g, &args, threads, &Limits::default()).expect_err("a deadlock");
        assert_eq!(e[0].code, kc_ir::Code::Internal);
        assert!(e[0].message.contains("deadlocks") && e[0].message.contains("vector core 1"), "{}", e[0].message);
    }
    let mut lonely = tp.clone();
    let mut l = lonely.launches[0].clone();
    l.vector.insert(0, Stmt::CrossSet { flag: 1 });
    lonely.launches[0] = l;
    let compiled = kc_codegen::compile(&lonely, &opts()).expect("compiles");
    let e = compiled.run(&lonely, &g, &args, 2, &Limits::default()).expect_err("no partner");
    assert!(e[0].message.contains("without a partner core"), "{}", e[0].message);
}

/// Compiled kernels are cached in the process by source, kernel, dims and target: the second request is
/// served without building, other dims build again, and a failed build is not kept.
#[test]
fn jit_cache_keys_by_source_dims_and_target() {
    use kc_codegen::cache::{get_or_compile, Kernel, Key};
    let target = Target::builtin("host").expect("target");
    let g = common::compile_ok(common::kernel_path("softmax")).kernels.remove(0);
    let key = |n: i64| Key {
        source: format!("{g:?} jit_cache_test"),
        kernel: g.name.clone(),
        dims: BTreeMap::from([("N".to_string(), n), ("D".to_string(), 9)]),
        target: format!("{target:?}"),
    };
    let builds = std::cell::Cell::new(0);
    let build = |n: i64| {
        builds.set(builds.get() + 1);
        let (_, program, _) = tile_at(&g, &BTreeMap::from([("N".to_string(), n), ("D".to_string(), 9)]), &target);
        let code = kc_codegen::compile(&program, &opts()).map_err(|d| vec![d])?;
        Ok(Kernel { program, code })
    };
    let (a, hit_a) = get_or_compile(key(3), || build(3)).expect("builds");
    let (b, hit_b) = get_or_compile(key(3), || build(3)).expect("cached");
    assert!(!hit_a && hit_b && std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(builds.get(), 1);
    let (c, hit_c) = get_or_compile(key(4), || build(4)).expect("builds");
    assert!(!hit_c && !std::sync::Arc::ptr_eq(&a, &c));
    assert_eq!(c.program.dims.get("N"), Some(&4));
    assert_eq!(builds.get(), 2);
    let failed = get_or_compile(key(5), || Err(vec![kc_ir::Diagnostic::error(kc_ir::Code::Internal, g.span, "no")]));
    assert!(failed.is_err());
    let (_, hit) = get_or_compile(key(5), || build(5)).expect("builds after a failure");
    assert!(!hit, "a failed build is not cached");
}

/// `y = x + 0.0` over `f32[16, 16]`, tiled for the host: the kernel and program that the hand-built launches
/// below replace the launches of (`name` names the source file).
fn host_copy_kernel(name: &str) -> (kc_ir::Graph, kc_ir::tile::TileProgram) {
    let g = common::compile_ok_src(name, "kernel cols(x: f32[16, 16]) -> y: f32[16, 16] {\n    y = x + 0.0;\n}\n")
        .kernels
        .remove(0);
    let target = Target::builtin("host").expect("target");
    let (_, tp, _) = tile_at(&g, &BTreeMap::new(), &target);
    (g, tp)
}

/// A loop of column copies (the tiler's transposing loads) runs as one call in the JIT: the same results as
/// the loop run column by column (a body the call does not take), for a transpose, a loop whose windows
/// overlap (shifting columns within one buffer, in order: the call goes column by column),
/// a loop that converts f32 to bf16, and an empty loop, after which the loop variable is the loop's start.
#[test]
fn jit_column_copy_loops_match_the_loop() {
    use kc_ir::tile::{Buffer, Launch, Layout, Loc, Mem, Pipe, Region, SExpr, SVar, Stmt, Unit};
    use kc_ir::{DType, Tensor};
    let (g, tp) = host_copy_kernel("jit_cols");
    let buf = |name: &str, mem, dtype, slots| Buffer {
        name: name.to_string(),
        mem,
        dtype,
        shape: vec![16, 16],
        slots,
        layout: Layout::ND,
        offset: 0,
    };
    let (c, v) = (SExpr::Const, |k: u32| SExpr::Var(SVar(k)));
    let bin = |op, a: SExpr, b: SExpr| SExpr::Bin(op, Box::new(a), Box::new(b));
    let at = |b: u32, off: SExpr, ld: i64| Region {
        loc: Loc::Buf { buf: kc_ir::tile::BufId(b), slot: c(0) },
        offset: off,
        row_stride: c(ld),
    };
    let gm = |t: u32| Region { loc: Loc::Gm(kc_ir::tile::TensorId(t)), offset: c(0), row_stride: c(16) };
    let copy = |src, dst, rows: SExpr, cols: SExpr| Stmt::Copy { pipe: Pipe::Mte1, src, dst, rows, cols };
    // Buffers: 0 = x (f32), 1 = the result (f32), 2 = a bf16 tile. `jj` is svar 0, a dummy svar 1.
    let program = |body_extra: bool| {
        let lp = |lo: i64, hi: i64, cp: Stmt| {
            let mut body = vec![cp];
            if body_extra {
                // A second statement: the loop runs column by column.
                body.push(Stmt::Set { var: SVar(1), value: v(0) });
            }
            Stmt::For { var: SVar(0), lo: c(lo), hi: c(hi), step: 1, body }
        };
        let jj16 = bin(kc_ir::tile::SBin::Mul, v(0), c(16));
        vec![
            copy(gm(0), at(0, c(0), 16), c(16), c(16)),
            // Transpose x into buffer 1: row jj of x becomes column jj.
            lp(0, 16, copy(at(0, jj16.clone(), 1), at(1, v(0), 16), c(16), c(1))),
            // Shift columns 12..15 of buffer 1 right by one, in place (overlapping windows).
            lp(12, 15, copy(at(1, v(0), 16), at(1, bin(kc_ir::tile::SBin::Add, v(0), c(1)), 16), c(16), c(1))),
            // Round columns 3..10 of buffer 1 through bf16 (a converting loop) and back.
            lp(3, 11, copy(at(1, v(0), 16), at(2, v(0), 16), c(16), c(1))),
            lp(3, 11, copy(at(2, v(0), 16), at(1, v(0), 16), c(16), c(1))),
            // An empty loop: `jj` is left at 9, so column 9 of x lands in column 0 of row 0 only.
            lp(9, 4, copy(at(0, c(0), 1), at(1, c(0), 16), c(16), c(1))),
            copy(at(0, v(0), 16), at(1, c(0), 16), c(1), c(1)),
            copy(at(1, c(0), 16), gm(1), c(16), c(16)),
        ]
    };
    let launch = |extra: bool| Launch {
        name: "cols".to_string(),
        unit: Unit::Cube,
        cube_cores: 1,
        vector_cores: 0,
        buffers: vec![
            buf("x_l1", Mem::L1, DType::F32, 1),
            buf("y_l1", Mem::L1, DType::F32, 1),
            buf("h_l1", Mem::L1, DType::BF16, 1),
        ],
        svars: vec!["jj".to_string(), "dummy".to_string()],
        cube: program(extra),
        vector: Vec::new(),
    };
    let mut rng = common::Rng::new(7);
    let x = common::rand_tensor(&mut rng, DType::F32, &[16, 16]);
    let args = common::args(&[("x", &x)], &[]);
    let run = |extra: bool| -> Tensor {
        let mut p = tp.clone();
        p.launches = vec![launch(extra)];
        let compiled = kc_codegen::compile(&p, &opts()).expect("compiles");
        let out = compiled.run(&p, &g, &args, 1, &Limits::default()).expect("runs").0;
        out[0].1.clone()
    };
    let (fast, slow) = (run(false), run(true));
    // A 16-bit transpose (the call's 8 × 8 blocks) of 13 × 11 and 16 × 16 windows: y = bf16(x)ᵀ where
    // written, zeros elsewhere.
    // Either way round: row j of x to column j (`flip` false), or column j of x to row j.
    for (rows, n, flip) in [(13i64, 11i64, false), (16, 16, false), (7, 3, false), (13, 11, true), (16, 16, true)] {
        let mut p = tp.clone();
        let mut l = launch(false);
        let jj16 = bin(kc_ir::tile::SBin::Mul, v(0), c(16));
        l.buffers.push(buf("t_l1", Mem::L1, DType::BF16, 1));
        l.cube = vec![
            copy(gm(0), at(2, c(0), 16), c(16), c(16)),
            Stmt::For {
                var: SVar(0),
                lo: c(0),
                hi: c(n),
                step: 1,
                body: vec![if flip {
                    copy(at(2, v(0), 16), at(3, jj16, 1), c(rows), c(1))
                } else {
                    copy(at(2, jj16, 1), at(3, v(0), 16), c(rows), c(1))
                }],
            },
            copy(at(3, c(0), 16), at(1, c(0), 16), c(16), c(16)),
            copy(at(1, c(0), 16), gm(1), c(16), c(16)),
        ];
        p.launches = vec![l];
        let compiled = kc_codegen::compile(&p, &opts()).expect("compiles");
        let y = compiled.run(&p, &g, &args, 1, &Limits::default()).expect("runs").0[0].1.to_f64_vec();
        let xs = x.to_f64_vec();
        for r in 0..16 {
            for j in 0..16 {
                // Not flipped: y[r][j] = x[j][r] for r < rows, j < n; flipped: y[j][r] = x[r][j], the same
                // transpose over the other window.
                let inside =
                    if flip { j < rows as usize && r < n as usize } else { r < rows as usize && j < n as usize };
                let want = if inside { half::bf16::from_f64(xs[j * 16 + r]).to_f64() } else { 0.0 };
                assert_eq!(y[r * 16 + j], want, "{rows} x {n} (flip {flip}): y[{r}][{j}]");
            }
        }
    }
    assert_eq!(fast, slow, "one call per loop and one call per column agree");
    // And the expected values: the transpose puts x[c][r] at y[r][c]; the in-place shift runs column by
    // column in order, so columns 13..15 end as column 12; columns 3..10 are rounded through bf16; y[0][0]
    // is x[0][9].
    let xs = x.to_f64_vec();
    let ys = fast.to_f64_vec();
    for r in 0..16 {
        for col in 0..16 {
            let t = xs[col.min(12) * 16 + r];
            let want = if r == 0 && col == 0 {
                xs[9]
            } else if (3..11).contains(&col) {
                half::bf16::from_f64(t).to_f64()
            } else {
                t
            };
            assert_eq!(ys[r * 16 + col], want, "y[{r}][{col}]");
        }
    }
}

/// The `exp`s of a vector statement run by chunks of columns through a host routine (`kc_rt_exp_f32`): an
/// `exp` that is the whole statement (computed in place in an f32 destination), several `exp`s in one
/// statement, on both sides of a `where`, of a column-only operand, nested, into bf16, overflowing and
/// underflowing; and bf16 results rounded by a host routine (`kc_rt_f32_to_bf16`), with and without `exp`s;
/// rows narrower than a vector, around the chunk width (512) and wider than a host buffer; a statement with
/// more row-invariant values than the JIT splats once per row.
#[test]
fn jit_exps_by_chunks_match_interpreter() {
    // More row-invariant values (40 constants) than the JIT keeps splatted per row (32).
    let many: Vec<String> = (1..=40).map(|k| format!("x[r, c] * {k}.5")).collect();
    let many = many.join(" + ");
    let src = "kernel exps(x: f32[R, C], w: f32[C], b: bf16[R, C]) \
               -> (y: f32[R, C], z: bf16[R, C], u: f32[R, C], v: bf16[R, C], t: f32[R, C], q: bf16[R, C]) {\n\
               y[r, c] = where(x[r, c] > 0.0, exp(x[r, c] - 1.0), exp(0.0 - x[r, c]) * 2.0) + exp(w[c]);\n\
               z[r, c] = exp(exp(x[r, c] * 0.1)) - 1.0;\n\
               u = exp(x * 0.5);\n\
               v = exp(b);\n\
               t = exp(x * 60.0);\n\
               q[r, c] = x[r, c] * 3.0 + w[c] / x[r, c];\n\
               }\n"
    .replace("q: bf16[R, C])", "q: bf16[R, C], p: f32[R, C])")
    .replace("}\n", &format!("p[r, c] = {};\n}}\n", many));
    let prog = common::compile_ok_src("exps", &src);
    let g = &prog.kernels[0];
    let target = Target::builtin("host").expect("builtin target");
    for (r, c) in [(3, 1), (2, 3), (5, 511), (2, 512), (3, 513), (4, 1031), (1, 70_001)] {
        let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        let args = kc_runtime::random::random_args(g, &given, 7 + c as u64).expect("random inputs");
        let want = common::run(g, &args);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let compiled = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("exps at {dims:?}: {e:?}"));
        for threads in [1, 2] {
            let (got, _) = compiled
                .run(&tp, g, &args, threads, &Limits::default())
                .unwrap_or_else(|e| panic!("exps at {dims:?}, {threads} threads: {e:?}"));
            for ((n, a), (_, b)) in got.iter().zip(&want) {
                assert_matches_within(&format!("exps.{n} at {dims:?}, {threads} threads"), a, b, 0.25);
            }
        }
    }
}

/// A fused run of vector statements (`kc_codegen::lower`'s `vector_group`) loads the operands no earlier
/// statement writes first, 16 columns a step, and takes an earlier statement's `f32` result from its
/// vectors: here `g` read three times, the `f32` intermediates `m` and `u` read by later statements, the
/// bf16 `t` (rounded, so loaded again after its store), the in-place `p` and `m` (a parameter and the
/// result that shares its memory), and comparisons of indices and of an `i32` tensor (no vector loads). At widths that leave 16-, 4- and 1-column tails, on 1 and 2 threads:
/// the interpreter's bits.
#[test]
fn jit_fused_statements_match_interpreter() {
    let src = "kernel fused(p: inout f32[R, C], g: bf16[R, C], m: inout f32[R, C], s: f32, k: i32[R, C]) -> h: bf16[R, C] {\n\
               m = 0.9 * m + 0.1 * g * g;\n\
               let t: bf16 = m * s + g;\n\
               let u = m / (t + 2.0);\n\
               p = p * 0.5 - u * m;\n\
               h[r, c] = t[r, c] + where(c > r, u[r, c], 0.0 - u[r, c]) * where(k[r, c] > 0, 1.0, 0.5);\n\
               }\n";
    let prog = common::compile_ok_src("fused", src);
    let g = &prog.kernels[0];
    let target = Target::builtin("host").expect("builtin target");
    for (r, c) in [(1, 1), (3, 7), (2, 45), (5, 1031), (1, 70_001)] {
        let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        let args = kc_runtime::random::random_args(g, &given, 11 + c as u64).expect("random inputs");
        let want = common::run(g, &args);
        let (_, tp, _) = tile_at(g, &dims, &target);
        // The five statements are consecutive vector statements of one shape (what the JIT fuses, those that
        // qualify: `fusable_run`).
        fn longest_run(body: &[kc_ir::tile::Stmt]) -> usize {
            use kc_ir::tile::Stmt;
            let (mut best, mut cur) = (0, 0);
            for s in body {
                cur = if matches!(s, Stmt::Vector { .. }) { cur + 1 } else { 0 };
                best = best.max(cur);
                let inner = match s {
                    Stmt::For { body, .. } => longest_run(body),
                    Stmt::If { then, .. } => longest_run(then),
                    _ => 0,
                };
                best = best.max(inner);
            }
            best
        }
        assert!(longest_run(&tp.launches[0].vector) >= 5, "fused at {dims:?}: the five statements in one run");
        let compiled = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("fused at {dims:?}: {e:?}"));
        for threads in [1, 2] {
            let (got, _) = compiled
                .run(&tp, g, &args, threads, &Limits::default())
                .unwrap_or_else(|e| panic!("fused at {dims:?}, {threads} threads: {e:?}"));
            assert_eq!(got.len(), want.len());
            for ((n, a), (m, b)) in got.iter().zip(&want) {
                assert_eq!(n, m);
                common::assert_same_bits(&format!("fused.{n} at {dims:?}, {threads} threads"), b, a);
            }
        }
    }
}

/// Row routines whose destination is a GM tensor of 16 MiB or more store it with non-temporal stores
/// (`ROW_DST_STREAM`, aligned to 64 bytes after a head of single elements): softmax in bf16 and a division by
/// a per-row value in f32 (the reciprocal path), rows of an odd width so that each row starts at another
/// alignment, on 1 and 2 threads, against the interpreter.
#[test]
fn jit_row_routines_streaming_large_outputs_match_interpreter() {
    let src = "kernel smb(b: bf16[R, C]) -> y: bf16[R, C] { y = softmax(b, axis: -1); }\n\
               kernel div(x: f32[R, C], s: f32[R]) -> p: f32[R, C] { p[r, c] = x[r, c] / (s[r] + 3.0); }\n";
    let prog = common::compile_ok_src("stream", src);
    let target = Target::builtin("host").expect("builtin target");
    for (g, r) in prog.kernels.iter().zip([2050i64, 1025]) {
        let c = 4099i64;
        let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        let mut args = kc_runtime::random::random_args(g, &given, 5).expect("random inputs");
        // Zeros and huge values now and then: lanes the reciprocal division leaves to the division.
        for (name, t) in args.tensors.iter_mut() {
            if name == "s" {
                continue;
            }
            let v: Vec<f32> = (0..t.len())
                .map(|i| match i % 1009 {
                    3 => 0.0,
                    7 => -3.0e30,
                    _ => t.get_f64(i) as f32 * 8.0,
                })
                .collect();
            *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
        }
        let bytes = (r * c) as usize * if g.name == "div" { 4 } else { 2 };
        assert!(bytes >= 16 << 20, "{} is not large enough to stream", g.name);
        let want = common::run(g, &args);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let compiled = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
        for threads in [1, 2] {
            let (got, _) = compiled
                .run(&tp, g, &args, threads, &Limits::default())
                .unwrap_or_else(|e| panic!("{}, {threads} threads: {e:?}", g.name));
            for ((n, a), (_, b)) in got.iter().zip(&want) {
                assert_matches_within(&format!("{}.{n}, {threads} threads", g.name), a, b, 0.25);
                if g.name == "div" {
                    // One division per element in both: the same bits, signs of zeros included.
                    let bits =
                        |t: &kc_ir::tensor::Tensor| t.to_f64_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(bits(a) == bits(b), "div.{n}, {threads} threads: not the interpreter's bits");
                }
            }
        }
    }
}

/// Vector statements that a host routine computes row by row (`kc_rt_row_exp`, `kc_rt_row_scalar`):
/// `exp(x - row value)` into f32 with and without the sum of its rows that follows it (softmax and
/// logsumexp over f32 and bf16), `x op row value` and `row value op x` for `+ - * /` into f32 and bf16, and the
/// `exp`s of a chunked statement read straight from their source row (cross-entropy's gradient). Rows of 1,
/// prime widths around the routines' 32-element blocks and wider than a host buffer; inputs reaching `exp`'s
/// overflow and underflow, infinities and zeros (NaN rows propagate as in the interpreter).
#[test]
fn jit_row_routines_match_interpreter() {
    let src = "kernel sm(x: f32[R, C]) -> y: f32[R, C] { y = softmax(x, axis: -1); }\n\
               kernel smb(b: bf16[R, C]) -> y: bf16[R, C] { y = softmax(b, axis: -1); }\n\
               kernel lse(b: bf16[R, C]) -> y: f32[R] { y = logsumexp(b, axis: -1); }\n\
               kernel ops(x: f32[R, C], b: bf16[R, C], s: f32[R]) \
               -> (p: f32[R, C], q: bf16[R, C], u: bf16[R, C], v: f32[R, C], w: bf16[R, C], z: f32[R, C]) {\n\
               p[r, c] = x[r, c] / s[r];\n\
               q[r, c] = s[r] - b[r, c];\n\
               u[r, c] = b[r, c] * (s[r] + 1.0);\n\
               v[r, c] = (s[r] * 2.0) / x[r, c];\n\
               w[r, c] = 3.4445 * b[r, c] + x[r, c];\n\
               z[r, c] = b[r, c] * s[r] + x[r, c];\n\
               }\n\
               kernel sexp(b: bf16[R, C], s: f32[R], k: f32) -> e: f32[R, C] { e[r, c] = exp(k * b[r, c] - s[r]); }\n\
               kernel grad(b: bf16[R, C], t: i32[R]) -> d: bf16[R, C] {\n\
               let l = logsumexp(b, axis: -1);\n\
               d[r, c] = where(t[r] >= 0, exp(b[r, c] - l[r]) - f32(c == t[r]), 0.0);\n\
               }\n";
    let prog = common::compile_ok_src("rows", src);
    let target = Target::builtin("host").expect("builtin target");
    for g in &prog.kernels {
        for (r, c) in [(3, 1), (2, 7), (4, 31), (2, 33), (3, 97), (5, 4099), (1, 70_001)] {
            let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let mut args = kc_runtime::random::random_args(g, &given, 11 + c as u64).expect("random inputs");
            // Spread the float inputs over exp's range and put in specials, in every row but the last.
            for (name, t) in args.tensors.iter_mut() {
                if !matches!(t.dtype(), kc_ir::dtype::DType::F32 | kc_ir::dtype::DType::BF16) || name == "s" {
                    continue;
                }
                let cols = c as usize;
                let v: Vec<f32> = (0..t.len())
                    .map(|i| {
                        let x = t.get_f64(i) as f32;
                        match (i / cols + 1 < r as usize, i % 37) {
                            (true, 5) => 95.0,
                            (true, 9) => -120.0,
                            (true, 13) => f32::NEG_INFINITY,
                            (true, 17) => 0.0,
                            _ => x * 30.0,
                        }
                    })
                    .collect();
                *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
            }
            let want = common::run(g, &args);
            let (_, tp, _) = tile_at(g, &dims, &target);
            for (threads, got) in jit_on_1_and_2_threads(g, &tp, &args, &format!("{dims:?}")) {
                for ((n, a), (_, b)) in got.iter().zip(&want) {
                    assert_matches_within(&format!("{}.{n} at {dims:?}, {threads} threads", g.name), a, b, 0.25);
                }
            }
        }
    }
}

/// On a target with `contiguous_chunks` (the host) each cube core runs a contiguous run of a matmul's blocks
/// instead of every `cores`-th one (`block_of` in the cube template). With more blocks than cores and a
/// remainder (runs of unequal length), with an elementwise epilogue (whose vector cores must map each of
/// their cube core's blocks the same way), and batched, the JIT still computes every block exactly once:
/// it matches the interpreter on 1 and 2 threads.
#[test]
fn jit_matmul_contiguous_block_runs_match_interpreter() {
    let kernels = [
        "kernel k(a: bf16[M, K], b: bf16[K, N]) -> c: bf16[M, N] { c = a @ b; }",
        "kernel k(a: bf16[M, K], b: bf16[K, N]) -> c: f32[M, N] { c = 3.0 * (a @ b) + 1.0; }",
        "kernel k(a: bf16[B, M, K], b: bf16[B, K, N]) -> c: bf16[B, M, N] { c = a @ b; }",
    ];
    let mut mixed = 0;
    for (ki, src) in kernels.iter().enumerate() {
        let mut sources = kc_frontend::SourceMap::new();
        let id = sources.add("runs.ker", *src);
        let (program, diags) = kc_frontend::compile(&mut sources, id, &common::FsLoader);
        assert!(diags.is_empty(), "{}", kc_frontend::render(&diags, &sources, false));
        let g = program.kernels.into_iter().next().expect("one kernel");
        for (m, k, n) in [(300, 64, 520), (530, 96, 270)] {
            let dims: BTreeMap<String, i64> =
                [("B", 3), ("M", m), ("K", k), ("N", n)].iter().map(|(d, v)| (d.to_string(), *v)).collect();
            let dims: BTreeMap<String, i64> = dims.into_iter().filter(|(d, _)| g.dims.contains(d)).collect();
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let args = kc_runtime::random::random_args(&g, &given, 7 + ki as u64).expect("random args");
            let want = common::run(&g, &args);
            for cubes in [4u32, 5, 16] {
                let mut target = Target::builtin("host").expect("host target");
                assert!(target.contiguous_chunks, "the host deals contiguous runs");
                target.cube_cores = cubes;
                target.vector_cores = 2 * cubes;
                let (_, tp, _) = tile_at(&g, &dims, &target);
                mixed += tp.launches.iter().filter(|l| l.cube_cores > 0 && l.vector_cores > 0).count();
                let compiled = kc_codegen::compile(&tp, &opts()).expect("compiles");
                for threads in [1, 2] {
                    let (got, _) = compiled
                        .run(&tp, &g, &args, threads, &Limits::default())
                        .unwrap_or_else(|e| panic!("kernel {ki} at {dims:?}, {cubes} cores: {e:?}"));
                    for ((name, a), (_, b)) in got.iter().zip(&want) {
                        let what = format!("kernel {ki}.{name} at {dims:?}, {cubes} cores, {threads} threads");
                        assert_matches_within(&what, a, b, 0.25);
                    }
                }
            }
        }
    }
    assert!(mixed > 0, "no launch ran an epilogue on vector cores");
}

/// The attention backward template on the host deals each cube core a contiguous run of its units (one
/// head's i-blocks, one kv group's j-blocks from both ends in turn under the causal mask), with unit
/// counts that do not divide among the cores (a remainder of units to the first cores) and that do; the
/// results match the interpreter on 1 and 2 threads, with and without the mask, with the mask's offset
/// (S < T). On an NPU target the units stay dealt round-robin (no `pos` register).
#[test]
fn jit_attention_backward_contiguous_units_match_interpreter() {
    let causal = std::fs::read_to_string(common::kernel_path("attention_bwd")).expect("attention_bwd.ker");
    let full = causal.replace(
        "where(j <= i + (T - S),\n                              exp(scale * sum[d](q[b, h, i, d] * k[b, h / R, j, d]) - lse[b, h, i]),\n                              0.0)",
        "exp(scale * sum[d](q[b, h, i, d] * k[b, h / R, j, d]) - lse[b, h, i])",
    );
    assert_ne!(full, causal, "the unmasked variant differs from the kernel");
    for (ki, src) in [causal, full].iter().enumerate() {
        let program = common::compile_ok_src("bwd_units", src);
        let g = &program.kernels[0];
        // Blocks of 32: row side 18 heads × 3 (or 2) i-blocks, column side 6 groups × 3 j-blocks.
        for (s, t) in [(70i64, 70i64), (50, 80)] {
            let dims: BTreeMap<String, i64> = [("B", 1), ("H", 18), ("G", 6), ("S", s), ("T", t), ("D", 16)]
                .iter()
                .map(|(d, v)| (d.to_string(), *v))
                .collect();
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let args = kc_runtime::random::random_args(g, &given, 31 + ki as u64).expect("random args");
            let want = common::run(g, &args);
            let npu = Target::builtin("ascend910b").expect("ascend910b");
            let (_, tp, _) = tile_at(g, &dims, &npu);
            assert!(tp.launches.iter().all(|l| !l.svars.iter().any(|v| v == "pos")), "round-robin on the NPU");
            for cubes in [5u32, 16] {
                let mut target = Target::builtin("host").expect("host target");
                target.cube_cores = cubes;
                target.vector_cores = 2 * cubes;
                target.score_bwd_block = Some(32);
                let (_, tp, _) = tile_at(g, &dims, &target);
                let runs = tp.launches.iter().filter(|l| l.svars.iter().any(|v| v == "pos")).count();
                assert_eq!(runs, 2, "both backward launches deal contiguous runs ({cubes} cores)");
                let compiled = kc_codegen::compile(&tp, &opts()).expect("compiles");
                for threads in [1, 2] {
                    let (got, _) = compiled
                        .run(&tp, g, &args, threads, &Limits::default())
                        .unwrap_or_else(|e| panic!("kernel {ki} at {dims:?}, {cubes} cores: {e:?}"));
                    assert_eq!(got.len(), want.len());
                    for ((name, a), (_, b)) in got.iter().zip(&want) {
                        let what = format!("kernel {ki}.{name} at {dims:?}, {cubes} cores, {threads} threads");
                        assert_matches_within(&what, a, b, 0.25);
                    }
                }
            }
        }
    }
}

/// The JIT compiles a vector statement over a column of a UB buffer or GM tensor (`rows × 1`, `ld 1`) as the statement
/// over one row (`kc_codegen::lower::columns_as_rows`): element reads along the column, one value per row
/// (`ld 1`, or `ld 0`: one value), one per column, the row and column indices, in place, with a read of the
/// column shifted by one (all reads before any write), an `exp` (by the chunked routine), a `log` into a
/// column of a GM tensor (`ld 1`: attention's `lse`, which ran one 4-lane `log` per element before), and a
/// statement whose per-row read has another row stride (kept as a column). The JIT's results are the
/// simulator's, bit for bit, on 1 and 2 threads.
#[test]
fn jit_column_statements_run_as_rows() {
    use kc_ir::graph::{BinOp, UnOp};
    use kc_ir::tile::{BufId, Buffer, Loc, Mem, Pipe, Region, SExpr, Stmt, VExpr};
    use kc_ir::DType;
    let (g, tp) = host_copy_kernel("jit_colrows");
    let c = SExpr::Const;
    let buf = |name: &str| Buffer::single(name, Mem::UB, DType::F32, vec![16, 16]);
    let at = |b: u32, off: i64, ld: i64| Region {
        loc: Loc::Buf { buf: BufId(b), slot: c(0) },
        offset: c(off),
        row_stride: c(ld),
    };
    let gm = |t: u32| Region { loc: Loc::Gm(kc_ir::tile::TensorId(t)), offset: c(0), row_stride: c(16) };
    let bx = Box::new;
    let bin = |op, a: VExpr, b: VExpr| VExpr::Binary(op, bx(a), bx(b));
    // A column of buffer 1 (`f32[16, 16]` used as 256 elements): `rows` rows from element `off`.
    let col = |off: i64, rows: i64, expr: VExpr| Stmt::Vector { dst: at(1, off, 1), rows: c(rows), cols: c(1), expr };
    let int = |e: VExpr| VExpr::Cast(DType::F32, bx(e));
    let vector = vec![
        Stmt::Copy { pipe: Pipe::Mte2, src: gm(0), dst: at(0, 0, 16), rows: c(16), cols: c(16) },
        Stmt::Vector { dst: at(1, 0, 16), rows: c(16), cols: c(16), expr: VExpr::F32(0.0) },
        // Column 3 of x, one value per row with `ld 16`: kept as a column.
        col(0, 16, VExpr::ReadRow(at(0, 3, 16))),
        // One value per row along the column (`ld 1`), the row index, one value (`ld 0`), x[0, 0].
        col(16, 16, bin(BinOp::Add, bin(BinOp::Mul, VExpr::ReadRow(at(1, 0, 1)), VExpr::F32(2.0)), int(VExpr::Row))),
        col(32, 16, bin(BinOp::Sub, VExpr::Read(at(1, 16, 1)), VExpr::ReadRow(at(0, 5, 0)))),
        col(48, 16, bin(BinOp::Add, VExpr::Read(at(1, 32, 1)), VExpr::ReadCol(at(0, 7, 16)))),
        // exp of the column, in place.
        col(64, 16, VExpr::Unary(UnOp::Exp, bx(bin(BinOp::Mul, VExpr::Read(at(1, 0, 1)), VExpr::F32(0.25))))),
        col(64, 16, bin(BinOp::Mul, VExpr::Read(at(1, 64, 1)), VExpr::Read(at(1, 64, 1)))),
        // Shifted by one in place: element r reads r + 1 as it was before the statement.
        col(16, 15, VExpr::Read(at(1, 17, 1))),
        // The column index (0 for the only column) and a select on the row.
        col(
            80,
            13,
            VExpr::Select(
                bx(bin(BinOp::Lt, VExpr::Row, VExpr::I32(5))),
                bx(int(VExpr::Col)),
                bx(VExpr::Read(at(1, 48, 1))),
            ),
        ),
        Stmt::Copy { pipe: Pipe::Mte3, src: at(1, 0, 16), dst: gm(1), rows: c(16), cols: c(16) },
        // A column of the GM output (`ld 1`: 15 consecutive elements from element 17), as copy forwarding
        // leaves attention's `lse = log(l) + m`: a log of a column plus one value per row.
        Stmt::Vector {
            dst: Region { loc: Loc::Gm(kc_ir::tile::TensorId(1)), offset: c(17), row_stride: c(1) },
            rows: c(15),
            cols: c(1),
            expr: bin(BinOp::Add, VExpr::Unary(UnOp::Log, bx(VExpr::Read(at(1, 64, 1)))), VExpr::ReadRow(at(1, 16, 1))),
        },
    ];
    let (_, _, compiled) = vector_launch_matches_sim(&g, &tp, "colrows", vec![buf("x_ub"), buf("y_ub")], vector, 11);
    let flipped = common::count_stmts(
        &compiled.launches[0].bodies.1,
        &|s| matches!(s, Stmt::Vector { rows: SExpr::Const(1), cols, .. } if *cols != SExpr::Const(1)),
    );
    assert_eq!(flipped, 8, "the column statements compiled as rows (the GM column too)");
}

/// `tp` with one launch, `name`, on one vector core (`buffers`, `vector`), run on a random `f32[16, 16]` `x`
/// (from `seed`) by the simulator and by the JIT on 1 and 2 threads: the JIT's output is the simulator's
/// bit for bit. Returns the input, the simulator's output and the compiled program.
fn vector_launch_matches_sim(
    g: &kc_ir::graph::Graph,
    tp: &kc_ir::tile::TileProgram,
    name: &str,
    buffers: Vec<kc_ir::tile::Buffer>,
    vector: Vec<kc_ir::tile::Stmt>,
    seed: u64,
) -> (kc_ir::tensor::Tensor, kc_ir::tensor::Tensor, kc_codegen::Compiled) {
    use kc_ir::tile::{Launch, Unit};
    let mut p = tp.clone();
    p.launches = vec![Launch {
        name: name.to_string(),
        unit: Unit::Vector,
        cube_cores: 0,
        vector_cores: 1,
        buffers,
        svars: Vec::new(),
        cube: Vec::new(),
        vector,
    }];
    let mut rng = common::Rng::new(seed);
    let x = common::rand_tensor(&mut rng, kc_ir::DType::F32, &[16, 16]);
    let args = common::args(&[("x", &x)], &[]);
    let want = kc_runtime::sim::run_with(&p, g, &args, &Limits::default()).expect("simulates").0;
    let compiled = kc_codegen::compile(&p, &opts()).expect("compiles");
    for threads in [1, 2] {
        let got = compiled.run(&p, g, &args, threads, &Limits::default()).expect("runs").0;
        common::assert_same_bits(&format!("{threads} threads"), &want[0].1, &got[0].1);
    }
    let out = want.into_iter().next().expect("one output").1;
    (x, out, compiled)
}

/// A vector statement of `+0.0` clears its window with `memset` (`kc_rt_zero`, `kc_codegen::lower::zero_bytes`):
/// a window narrower than its rows' stride, one whose rows are contiguous, a bf16 one; `-0.0` (not every
/// byte zero) stays the inline code's. Only the window changes: the JIT's results are the simulator's, bit
/// for bit, on 1 and 2 threads, with the elements around each window kept.
#[test]
fn jit_zero_fills_clear_exactly_their_window() {
    use kc_ir::tile::{BufId, Buffer, Loc, Mem, Pipe, Region, SExpr, Stmt, VExpr};
    use kc_ir::DType;
    let (g, tp) = host_copy_kernel("jit_zero");
    let c = SExpr::Const;
    let at = |b: u32, off: i64, ld: i64| Region {
        loc: Loc::Buf { buf: BufId(b), slot: c(0) },
        offset: c(off),
        row_stride: c(ld),
    };
    let gm = |t: u32| Region { loc: Loc::Gm(kc_ir::tile::TensorId(t)), offset: c(0), row_stride: c(16) };
    let fill = |b: u32, off: i64, ld: i64, rows: i64, cols: i64, v: f32| Stmt::Vector {
        dst: at(b, off, ld),
        rows: c(rows),
        cols: c(cols),
        expr: VExpr::F32(v),
    };
    let vector = vec![
        Stmt::Copy { pipe: Pipe::Mte2, src: gm(0), dst: at(0, 0, 16), rows: c(16), cols: c(16) },
        Stmt::Copy { pipe: Pipe::Mte2, src: gm(0), dst: at(1, 0, 16), rows: c(16), cols: c(16) },
        // Rows 3..12, columns 2..13: narrower than the stride.
        fill(0, 3 * 16 + 2, 16, 9, 11, 0.0),
        // Rows 13 and 14 whole: one contiguous run.
        fill(0, 13 * 16, 16, 2, 16, 0.0),
        // A window read with another stride (rows of 5 elements, 7 apart) from element 1.
        fill(0, 1, 7, 2, 5, 0.0),
        // -0.0: the sign bit set, computed inline.
        fill(0, 2 * 16 + 4, 16, 1, 9, -0.0),
        // bf16: rows 1..4, columns 5..8 zero, then the buffer rounded back into row 0 and column 0 of the
        // output's rows 12..15 (overwriting what the first fill cleared there).
        fill(1, 16 + 5, 16, 3, 3, 0.0),
        Stmt::Copy { pipe: Pipe::Mte3, src: at(0, 0, 16), dst: gm(1), rows: c(16), cols: c(16) },
        Stmt::Copy {
            pipe: Pipe::Mte3,
            src: at(1, 16, 16),
            dst: Region { loc: Loc::Gm(kc_ir::tile::TensorId(1)), offset: c(12 * 16), row_stride: c(16) },
            rows: c(4),
            cols: c(16),
        },
    ];
    let buffers = vec![
        Buffer::single("x_ub", Mem::UB, DType::F32, vec![16, 16]),
        Buffer::single("h_ub", Mem::UB, DType::BF16, vec![16, 16]),
    ];
    let (x, want, _) = vector_launch_matches_sim(&g, &tp, "zero", buffers, vector, 12);
    // What the windows hold: zeros where filled (the -0.0 one with its sign), the input around them.
    let (out, xs) = (want.to_f64_vec(), x.to_f64_vec());
    let z = out.iter().filter(|v| **v == 0.0 && v.is_sign_positive()).count();
    let nz = out[2 * 16 + 4..2 * 16 + 13].iter().filter(|v| **v == 0.0 && v.is_sign_negative()).count();
    assert_eq!(nz, 9, "the -0.0 fill");
    assert!(z >= 9 * 11, "the fills' zeros: {z}");
    assert_eq!(out[2 * 16 + 2], xs[2 * 16 + 2], "the row above the first window");
    assert_eq!(out[3 * 16 + 1], xs[3 * 16 + 1], "the column left of the first window");
    assert_eq!(out[3 * 16 + 13], xs[3 * 16 + 13], "the column right of the first window");
}

/// A mixed matmul launch's elementwise epilogue `o = c · x + b @ x` (Muon's `b·x` step) runs on the host as
/// one row routine call per block of rows (`kc_rt_rows_axpy`, which requests the rows ahead); with a
/// per-row factor it stays a call per row; either way also with the product added second (`p + x · s`, a
/// weighted sum's form: `ROW_ADD_FIRST`). On inputs whose products and sums are exact in f32 (small
/// integers), so that the matmul's summation order cannot matter, the JIT gives the interpreter's bits
/// exactly, bf16 and f32 results, odd shapes with partial blocks in both directions, on 1 and 2 threads.
#[test]
fn jit_mixed_epilogue_is_the_interpreters_bits() {
    let src = "kernel bx(b: bf16[M, M], x: bf16[M, N]) -> o: bf16[M, N] { o = 3.4445 * x + b @ x; }\n\
               kernel bxf(b: bf16[M, M], x: bf16[M, N]) -> o: f32[M, N] { o = x * -0.7 + b @ x; }\n\
               kernel bxr(b: bf16[M, M], x: bf16[M, N], s: f32[M]) -> o: bf16[M, N] {\n\
               let p = b @ x;\n\
               o[r, c] = x[r, c] * s[r] + p[r, c];\n\
               }\n\
               kernel bxa(b: bf16[M, M], x: bf16[M, N], s: f32[M]) -> o: f32[M, N] {\n\
               let p = b @ x;\n\
               o[r, c] = p[r, c] + s[r] * x[r, c];\n\
               }\n\
               kernel bxc(b: bf16[M, M], x: bf16[M, N]) -> o: bf16[M, N] { o = b @ x + 3.4445 * x; }\n";
    let prog = common::compile_ok_src("mixed", src);
    let target = Target::builtin("host").expect("builtin target");
    for g in &prog.kernels {
        for (m, n) in [(200i64, 300i64), (131, 517), (64, 16), (5, 3)] {
            let dims: BTreeMap<String, i64> = [("M".to_string(), m), ("N".to_string(), n)].into();
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let mut args = kc_runtime::random::random_args(g, &given, 7 + m as u64).expect("random inputs");
            // Small integers: every product and partial sum of `b @ x` is exact in f32.
            for (name, t) in args.tensors.iter_mut() {
                let range = match name.as_str() {
                    "b" => 5,
                    "x" => 17,
                    _ => continue,
                };
                let v: Vec<f32> = (0..t.len()).map(|i| ((i * 7919 + 13) % range) as f32 - (range / 2) as f32).collect();
                *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
            }
            let want = common::run(g, &args);
            let (_, tp, _) = tile_at(g, &dims, &target);
            assert!(
                tp.launches.iter().any(|l| l.cube_cores > 0 && l.vector_cores > 0),
                "{} at {dims:?}: no mixed launch",
                g.name
            );
            for (threads, got) in jit_on_1_and_2_threads(g, &tp, &args, &format!("{dims:?}")) {
                for ((n, w), (_, j)) in want.iter().zip(&got) {
                    common::assert_same_bits(&format!("{}.{n} at {dims:?}, {threads} threads", g.name), w, j);
                }
            }
        }
    }
}

/// The matmul template's mmads, in its nest of k steps (`for k0 { for k2 { if k0 + k2 == 0 { = } if 0 < k0 +
/// k2 { += } } }`), accumulate straight in the f32 GM window their block is copied to, with no copy out of
/// L0C, when that copy moves the bits unchanged (`kc_codegen::forward`, level 5): a mixed launch's workspace
/// (the epilogue `o = 3.4445 · y + a @ x`, Muon's `b·x`) and an f32 result; a bf16 result (a converting copy)
/// keeps L0C. On inputs whose products and sums are exact in f32 (small integers), the JIT gives the
/// interpreter's bits, on odd shapes with partial blocks and `k` not a multiple of the k step (one and
/// several L1 loads), on 1 and 2 threads.
#[test]
fn jit_matmul_nests_accumulate_in_place_with_the_interpreters_bits() {
    use kc_ir::tile::{Loc, Pipe, Region, Stmt};
    let src = "kernel bxk(a: bf16[M, K], x: bf16[K, N], y: bf16[M, N]) -> o: bf16[M, N] { o = 3.4445 * y + a @ x; }\n\
               kernel mmf(a: bf16[M, K], x: bf16[K, N]) -> o: f32[M, N] { o = a @ x; }\n\
               kernel mmb(a: bf16[M, K], x: bf16[K, N]) -> o: bf16[M, N] { o = a @ x; }\n";
    let prog = common::compile_ok_src("nests", src);
    let target = Target::builtin("host").expect("builtin target");
    for g in &prog.kernels {
        for (m, k, n) in [(67i64, 1100i64, 301i64), (40, 1536, 130), (64, 512, 256), (5, 3, 7)] {
            let dims: BTreeMap<String, i64> = [("M".to_string(), m), ("K".to_string(), k), ("N".to_string(), n)].into();
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let mut args = kc_runtime::random::random_args(g, &given, 11 + k as u64).expect("random inputs");
            // Small integers: every product and partial sum of `a @ x` is exact in f32.
            for (name, t) in args.tensors.iter_mut() {
                let range = if name == "a" { 5 } else { 17 };
                let v: Vec<f32> = (0..t.len()).map(|i| ((i * 7919 + 13) % range) as f32 - (range / 2) as f32).collect();
                *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
            }
            let want = common::run(g, &args);
            let (_, tp, _) = tile_at(g, &dims, &target);
            let compiled = kc_codegen::compile(&tp, &opts()).expect("compiles");
            let cube = &compiled.launches.iter().find(|l| !l.bodies.0.is_empty()).expect("a cube launch").bodies.0;
            let in_gm =
                common::count_stmts(cube, &|s| matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(_), .. }, .. }));
            let mmads = common::count_stmts(cube, &|s| matches!(s, Stmt::Mmad { .. }));
            let fix = common::count_stmts(cube, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Fix, .. }));
            let forwarded = g.name != "mmb";
            assert!(mmads > 0, "{} at {dims:?}: no mmad", g.name);
            assert_eq!((in_gm, fix == 0), if forwarded { (mmads, true) } else { (0, false) }, "{} at {dims:?}", g.name);
            for (threads, got) in jit_on_1_and_2_threads(g, &tp, &args, &format!("{dims:?}")) {
                for ((name, w), (_, j)) in want.iter().zip(&got) {
                    common::assert_same_bits(&format!("{}.{name} at {dims:?}, {threads} threads", g.name), w, j);
                }
            }
        }
    }
}

/// A fused run assembled as an AVX-512 routine (`kc_codegen`'s `wide`, on hosts with AVX-512F): `f32` and
/// bf16 operands and results (bf16 rounding of a result and of a `let: bf16`), an in-place `inout`, a row
/// value (`s[r]`), a column vector (`b[c]`, the same for every row), a scalar parameter, and `abs`, `sqrt`,
/// `rsqrt`, `relu`, `floor`, `ceil`, `min`/`max` (NaN-propagating), comparisons, `&&`/`||`/`!`, `where` and a
/// boolean cast, over inputs with NaNs, infinities, signed zeros and subnormals, at widths with 16-column
/// groups and 1–15-column tails, on 1 and 2 threads: the interpreter's bits, and the 128-bit loop's
/// (`Options::portable_vectors`) to the NaN payload. `many` has more streams (14) than the routine keeps in
/// registers (10): the others' pointers are read from its arguments at each use.
#[test]
fn jit_wide_loops_match_interpreter_and_the_128_bit_loop() {
    let src = "kernel wide(p: inout f32[R, C], g: bf16[R, C], q: f32[R, C], b: f32[C], s: f32[R], k: f32) -> h: bf16[R, C] {\n\
               p = p * 0.5 - sqrt(abs(q)) / (g + k);\n\
               let t: bf16 = max(p, q) + min(g, -q) * rsqrt(relu(q) + 1.0);\n\
               let u = where(p > t && !(q <= 0.0) || g == 1.0, floor(p), ceil(t)) + f32(q != t);\n\
               h[r, c] = where(q[r, c] < 0.25, min(q[r, c], g[r, c]), where(q[r, c] < 0.5, max(g[r, c], -q[r, c]), \
                         t[r, c] + u[r, c] * s[r] - b[c]));\n\
               }\n\
               kernel cmp(x: f32[R, C], y: bf16[R, C]) -> (e: f32[R, C], o: bf16[R, C]) {\n\
               e = f32(x == y) + 2.0 * f32(x != y) + 4.0 * f32(x < y) + 8.0 * f32(x <= y) + 16.0 * f32(x > y) \
                   + 32.0 * f32(x >= y) + 64.0 * f32(bool(x) && !bool(y) || x == 1.0);\n\
               o = e * 0.5 + bf16(x) - f32(bool(y) != (x > 0.5));\n\
               }\n\
               kernel many(a0: f32[R, C], a1: bf16[R, C], a2: f32[R, C], a3: f32[R, C], a4: bf16[R, C], \
                 a5: f32[R, C], a6: f32[R, C], a7: f32[R, C], a8: bf16[R, C], a9: f32[R, C], a10: f32[R, C], \
                 a11: f32[R, C]) -> (y: f32[R, C], z: bf16[R, C]) {\n\
               y = a0 + a1 * a2 - a3 / a4 + a5 * a6 - a7 + a8 * a9 - a10 * a11;\n\
               z = y * a0 - a11 + a1;\n\
               }\n";
    let prog = common::compile_ok_src("wide", src);
    let target = Target::builtin("host").expect("builtin target");
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 1.0e-40, -3.0e-39, 1.0, 3.0e38];
    for (g, (r, c)) in
        prog.kernels.iter().flat_map(|g| [(1, 1), (3, 15), (2, 16), (5, 17), (4, 45), (2, 1031)].map(|d| (g, d)))
    {
        let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        let mut args = kc_runtime::random::random_args(g, &given, 17 + c as u64).expect("random inputs");
        // Every third element special, in a sequence of its own per tensor (any two tensors' specials meet).
        for (ti, t) in args.tensors.values_mut().enumerate() {
            let v: Vec<f32> = (0..t.len())
                .map(|i| match i % 3 {
                    0 => specials[(i / 3 + i / 27 * [1, 2, 4, 5, 7, 8][ti % 6]) % specials.len()],
                    _ => t.get_f64(i) as f32 * 4.0,
                })
                .collect();
            *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
        }
        let want = common::run(g, &args);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let wide = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("wide at {dims:?}: {e:?}"));
        let narrow = kc_codegen::compile(&tp, &kc_codegen::Options { portable_vectors: true, ..opts() })
            .unwrap_or_else(|e| panic!("wide at {dims:?}, 128-bit: {e:?}"));
        assert_eq!(narrow.wide_loops, 0);
        // (One column makes the statements row statements: `columns_as_rows`.)
        if kc_codegen::wide_available() && c > 1 {
            assert!(wide.wide_loops >= 1, "wide at {dims:?}: no loop was assembled for AVX-512");
        }
        for threads in [1, 2] {
            let run = |c: &kc_codegen::Compiled| {
                c.run(&tp, g, &args, threads, &Limits::default())
                    .unwrap_or_else(|e| panic!("wide at {dims:?}, {threads} threads: {e:?}"))
                    .0
            };
            let (got, base) = (run(&wide), run(&narrow));
            assert_eq!(got.len(), want.len());
            for (((n, a), (_, b)), (_, w)) in got.iter().zip(&want).zip(&base) {
                common::assert_same_bits(&format!("wide.{n} at {dims:?}, {threads} threads"), b, a);
                let bits =
                    |t: &kc_ir::tensor::Tensor| -> Vec<u64> { t.to_f64_vec().iter().map(|x| x.to_bits()).collect() };
                assert!(bits(a) == bits(w), "wide.{n} at {dims:?}, {threads} threads: not the 128-bit loop's bits");
            }
        }
    }
}

/// `kc build --emit asm` shows each AVX-512 loop after Cranelift's code: adamw's, with its divisions and
/// square root in zmm registers and its tail under the lane mask.
#[test]
fn jit_asm_shows_the_avx512_loops() {
    if !kc_codegen::wide_available() {
        return;
    }
    let prog = common::compile_ok(common::kernel_path("adamw"));
    let g = &prog.kernels[0];
    let dims: BTreeMap<String, i64> = [("N".to_string(), 5000)].into();
    let (_, tp, _) = tile_at(g, &dims, &Target::builtin("host").expect("builtin target"));
    let code = kc_codegen::compile(&tp, &kc_codegen::Options { keep_asm: true, ..opts() }).expect("compiles");
    let loops: Vec<&String> = code.asm.iter().filter(|(n, _)| n.contains("AVX-512 loop")).map(|(_, t)| t).collect();
    assert_eq!(loops.len(), code.wide_loops);
    assert!(!loops.is_empty());
    for t in loops {
        assert!(t.contains("vdivps") && t.contains("vsqrtps") && t.contains("%zmm"), "{t}");
        assert!(t.contains("{%k1}"), "no masked tail: {t}");
    }
}

/// Softmax's statements in one call a block (`kc_rt_softmax_rows`, on an AVX512-BF16 host) give the bits of
/// the statements compiled one at a time, and the interpreter's values within the tolerance: bf16 and `f32`
/// sources, an in-place `inout`, widths that are and are not a multiple of 32, rows in and out of the fast
/// path's range (a range over 40, NaN, infinities, a row of `-inf`, zeros), 1 and 2 threads.
#[test]
fn jit_softmax_rows_match_the_statements() {
    let src = "kernel sm(x: bf16[R, C]) -> y: bf16[R, C] {\n y = softmax(x, axis: -1);\n}\n\
               kernel sm32(x: f32[R, C]) -> y: bf16[R, C] {\n y = softmax(x, axis: -1);\n}\n\
               kernel smi(x: inout bf16[R, C]) {\n x = softmax(x, axis: -1);\n}\n";
    let prog = common::compile_ok_src("sm", src);
    let target = Target::builtin("host").expect("builtin target");
    for (g, (r, c)) in prog.kernels.iter().flat_map(|g| [(3, 32), (5, 100), (37, 256), (9, 4096)].map(|d| (g, d))) {
        let dims: BTreeMap<String, i64> = [("R".to_string(), r), ("C".to_string(), c)].into();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        let mut args = kc_runtime::random::random_args(g, &given, 5 + c as u64).expect("random inputs");
        for t in args.tensors.values_mut() {
            let v: Vec<f32> = (0..t.len())
                .map(|i| {
                    let (row, col) = (i / c as usize, i % c as usize);
                    let x = t.get_f64(i) as f32 * 4.0;
                    match row % 8 {
                        1 => x * 20.0,
                        2 if col == 7 => f32::NAN,
                        3 if col == 3 => f32::INFINITY,
                        4 if col % 5 == 0 => f32::NEG_INFINITY,
                        5 => f32::NEG_INFINITY,
                        6 if col % 2 == 0 => -0.0,
                        6 => -x.abs(),
                        _ => x,
                    }
                })
                .collect();
            *t = kc_ir::tensor::Tensor::from_f32_as(t.dtype(), t.shape.clone(), &v).expect("a tensor");
        }
        let want = common::run(g, &args);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let whole = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{} at {dims:?}: {e:?}", g.name));
        let split = kc_codegen::compile(&tp, &kc_codegen::Options { split_softmax: true, ..opts() })
            .unwrap_or_else(|e| panic!("{} at {dims:?}, split: {e:?}", g.name));
        assert_eq!(split.softmax_groups, 0);
        if kc_runtime::host::rowmath::softmax_rows_fast() {
            assert!(whole.softmax_groups >= 1, "{} at {dims:?}: no softmax group", g.name);
        }
        for threads in [1, 2] {
            let run = |c: &kc_codegen::Compiled| {
                c.run(&tp, g, &args, threads, &Limits::default())
                    .unwrap_or_else(|e| panic!("{} at {dims:?}, {threads} threads: {e:?}", g.name))
                    .0
            };
            let (got, base) = (run(&whole), run(&split));
            assert_eq!(got.len(), want.len());
            for (((n, a), (_, b)), (_, w)) in got.iter().zip(&base).zip(&want) {
                let what = format!("{}.{n} at {dims:?}, {threads} threads", g.name);
                common::assert_same_bits(&what, b, a);
                assert_matches_within(&what, a, w, 0.25);
            }
        }
    }
}

/// `tp` run on the input `x` by the simulator and by the JIT on 1 and 2 threads gives the interpreter's
/// results exactly (`at` names the case in a failure).
fn assert_exact_everywhere(g: &kc_ir::Graph, tp: &kc_ir::tile::TileProgram, x: &kc_ir::Tensor, at: &str) {
    let args = common::args(&[("x", x)], &[]);
    let want = kc_ir::interp::run(g, &args).expect("interp");
    let sim = kc_runtime::sim::run(tp, g, &args).expect("sim");
    assert_eq!(sim, want, "{} at {at}: the simulator", g.name);
    for (threads, got) in jit_on_1_and_2_threads(g, tp, &args, at) {
        assert_eq!(got, want, "{} at {at} on {threads} threads: the JIT", g.name);
    }
}

/// Argmax and argmin along an axis (the last, the first through gathers, of a 3-D tensor with `keepdim`)
/// tile as row reductions: one pass over each row, its i32 position. On inputs full of ties (values from
/// {0, 1, 2}) and with NaNs, the simulator and the JIT on 1 and 2 threads give the interpreter's positions
/// exactly: the first extreme, the first NaN winning.
#[test]
fn argmax_and_argmin_along_an_axis_run_under_the_jit() {
    use kc_ir::{DType, Tensor};
    let prog = common::compile_ok_src(
        "jit_arg",
        "kernel last(x: f32[A, B]) -> (i: i32[A], j: i32[A]) {\n\
         \x20   i = argmax(x, axis: -1);\n\
         \x20   j = argmin(x * 2.0, axis: 1);\n\
         }\n\
         kernel first(x: bf16[A, B]) -> i: i32[B] {\n\
         \x20   i = argmax(x, axis: 0);\n\
         }\n\
         kernel cube(x: f32[A, B, C]) -> (i: i32[A, B], j: i32[1, B, C]) {\n\
         \x20   i = argmax(x, axis: -1);\n\
         \x20   j = argmin(x, axis: 0, keepdim: true);\n\
         }\n",
    );
    let target = Target::builtin("ascend910b").expect("target");
    let mut rng = common::Rng::new(5);
    let mut ran = 0;
    for g in &prog.kernels {
        for (a, bb, cc) in [(1, 1, 1), (7, 9, 5), (40, 300, 3), (3, 5000, 2)] {
            let shape: Vec<usize> = if g.name == "cube" { vec![a, bb, cc] } else { vec![a, bb] };
            let n: usize = shape.iter().product();
            // Ties everywhere, and a NaN in about one row in three.
            let vals: Vec<f32> =
                (0..n).map(|_| if rng.int(0, 60) == 0 { f32::NAN } else { rng.int(0, 2) as f32 }).collect();
            let dtype = if g.name == "first" { DType::BF16 } else { DType::F32 };
            let x = Tensor::from_f32_as(dtype, shape.clone(), &vals).expect("tensor");
            let dims: BTreeMap<String, i64> =
                g.dims.iter().zip([a, bb, cc]).map(|(d, v)| (d.clone(), v as i64)).collect();
            let (_, tp, _) = tile_at(g, &dims, &target);
            assert_exact_everywhere(g, &tp, &x, &format!("{shape:?}"));
            ran += 1;
        }
    }
    assert_eq!(ran, 12);
}

/// Argmax and argmin to a scalar: each chunk's extreme and position, kept per core by value then position,
/// combined across cores the same way. With ties everywhere (values from {0, 1, 2}, or all equal), with and
/// without NaNs, in one chunk and over several cores, the simulator and the JIT on 1 and 2 threads give the
/// interpreter's flat position exactly.
#[test]
fn argmax_and_argmin_to_a_scalar_run_under_the_jit() {
    use kc_ir::{DType, Tensor};
    let prog = common::compile_ok_src(
        "jit_arg_all",
        "kernel all3(x: f32[A, B, C]) -> (i: i32, j: i32) {\n\
         \x20   i = argmax(x);\n\
         \x20   j = argmin(x);\n\
         }\n\
         kernel all1(x: bf16[A]) -> i: i32 {\n\
         \x20   i = argmax(x * -2.0) + 1;\n\
         }\n",
    );
    let target = Target::builtin("ascend910b").expect("target");
    let mut rng = common::Rng::new(9);
    let mut launches = std::collections::BTreeSet::new();
    for g in &prog.kernels {
        for (a, bb, cc) in [(1, 1, 1), (7, 7, 7), (13, 300, 70), (2, 1000, 101)] {
            let shape: Vec<usize> = if g.name == "all3" { vec![a, bb, cc] } else { vec![a * bb * cc] };
            let n: usize = shape.iter().product();
            for nan_every in [0, 3000, 40] {
                let vals: Vec<f32> = (0..n)
                    .map(|_| {
                        if nan_every > 0 && rng.int(0, nan_every) == 0 {
                            f32::NAN
                        } else if nan_every == 40 {
                            1.0
                        } else {
                            rng.int(0, 2) as f32
                        }
                    })
                    .collect();
                let dtype = if g.name == "all1" { DType::BF16 } else { DType::F32 };
                let x = Tensor::from_f32_as(dtype, shape.clone(), &vals).expect("tensor");
                let dims: BTreeMap<String, i64> =
                    g.dims.iter().zip(&shape).map(|(d, v)| (d.clone(), *v as i64)).collect();
                let (_, tp, _) = tile_at(g, &dims, &target);
                launches.insert(tp.launches.len());
                assert_exact_everywhere(g, &tp, &x, &format!("{shape:?}, NaN 1 in {nan_every}"));
            }
        }
    }
    // Both forms ran: one launch (one chunk), and partials with their combine (two launches a group).
    assert!(launches.contains(&1) && launches.contains(&2), "launch counts {launches:?}");
}
