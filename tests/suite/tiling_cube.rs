//! Matmul groups on the cube, end to end: fuse → tile (the cube tiler for matmul groups, the elementwise
//! tiler for the rest) → verify → simulate → compare with the interpreter, at sizes with remainders in
//! every dim, on both targets, with and without an epilogue on the vector cores.

use crate::common;
use kc_ir::dtype::DType;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::passes::tile::{cube, group_order, plan_gm, vector};
use kc_ir::target::Target;
use kc_ir::tile::{Launch, TileProgram, Unit};
use kc_ir::Graph;

/// Compiles a kernel given as source text ([`common::compile_ok_src`]).
fn compile_src(name: &str, src: &str) -> Graph {
    let prog = common::compile_ok_src(name, src);
    prog.kernel(name).unwrap_or_else(|| panic!("no kernel `{name}`")).clone()
}

/// Tiles every group: matmul groups on the cube, the others as elementwise vector groups.
fn tile(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> TileProgram {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let mut gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    for k in group_order(&f).expect("the groups can be ordered") {
        let name = format!("{}.{k}", g.name);
        let group = &f.groups[k];
        if group.kind == GroupKind::Matmul {
            let (l, ws) = cube::matmul_with_workspace(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{}: group {k} is not a matmul the cube tiler handles", g.name))
                .unwrap_or_else(|e| panic!("{}: {e}", g.name));
            if let Some(ws) = ws {
                gm.tensors.push(ws);
            }
            launches.push(l);
        } else {
            let l = vector::elementwise(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{}: group {k} is not elementwise", g.name))
                .unwrap_or_else(|e| panic!("{}: {e}", g.name));
            launches.push(l);
        }
    }
    TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    }
}

/// One ulp of a bf16 at `x`.
fn bf16_ulp(x: f64) -> f64 {
    let a = x.abs().max(f64::MIN_POSITIVE);
    2f64.powi(a.log2().floor() as i32 - 7)
}

/// Tiles `g` at `dims` on `target`, verifies, simulates and compares with the interpreter; gives the
/// program.
fn check(g: &Graph, dims: &[(&str, i64)], target: &str, seed: u64) -> TileProgram {
    let target = Target::builtin(target).expect("builtin target");
    let given =
        kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    let args = kc_runtime::random::random_args(g, &given, seed).expect("random args");
    let tp = tile(g, &args, &target);
    common::verify_tiled(g, &tp, &target);
    let want = common::run(g, &args);
    let got = kc_runtime::sim::run(&tp, g, &args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        let (wv, sv) = (w.to_f64_vec(), s.to_f64_vec());
        assert_eq!(wv.len(), sv.len(), "{}.{n}: element count", g.name);
        for (i, (a, b)) in wv.iter().zip(&sv).enumerate() {
            let ok = match w.dtype() {
                DType::BF16 => (a - b).abs() <= bf16_ulp(*a),
                _ => (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-30,
            };
            assert!(
                ok || (a.is_nan() && b.is_nan()),
                "{}.{n}[{i}] {dims:?} on {}: interp {a} vs sim {b}",
                g.name,
                target.name
            );
        }
    }
    tp
}

#[test]
fn matmul_tiles_verify_and_match_the_interpreter() {
    let g = common::kernel("matmul", "matmul");
    for target in ["ascend910b", "ascend950"] {
        for (m, k, n) in [(1, 1, 1), (16, 16, 16), (33, 40, 17), (130, 70, 257)] {
            let tp = check(&g, &[("M", m), ("K", k), ("N", n)], target, (m * k * n) as u64);
            assert_eq!(tp.launches.len(), 1);
            assert_eq!(tp.launches[0].unit, Unit::Cube, "no epilogue: FixPipe writes the result");
        }
        // Remainders in every dim, and K split into several steps.
        check(&g, &[("M", 130), ("K", 257), ("N", 70)], target, 9);
    }
}

const EPILOGUE: &str = "
kernel epi(x: bf16[T, M], w: bf16[E, M], bias: f32[E]) -> y: f32[T, E] {
    y = sigmoid(x @ transpose(w)) + bias;
}
";

const EPILOGUE_BF16: &str = "
kernel epib(x: bf16[T, M], w: bf16[E, M], bias: f32[E]) -> y: bf16[T, E] {
    y = sigmoid(x @ transpose(w)) + bias;
}
";

#[test]
fn transposed_matmul_with_an_epilogue_runs_on_the_vector_cores() {
    for (name, src) in [("epi", EPILOGUE), ("epib", EPILOGUE_BF16)] {
        let g = compile_src(name, src);
        for target in ["ascend910b", "ascend950"] {
            for (t, m, e) in [(1, 1, 1), (16, 16, 16), (33, 17, 40), (130, 257, 70)] {
                let tp = check(&g, &[("T", t), ("M", m), ("E", e)], target, (t + m + e) as u64);
                assert_eq!(tp.launches.len(), 1);
                let l = &tp.launches[0];
                assert_eq!(l.unit, Unit::Mixed);
                assert_eq!(l.vector_cores, l.cube_cores * 2);
            }
        }
    }
}

const EPILOGUE_MIXED: &str = "
kernel epi2(x: bf16[T, M], w: bf16[M, E], r: f32[T, E], s: f32[T], alpha: f32) -> y: bf16[T, E] {
    let h = x @ w;
    y[t, e] = h[t, e] * alpha + r[t, e] + s[t];
}
";

/// An epilogue reading a whole tile of another tensor, a vector along m and a scalar.
#[test]
fn epilogue_reads_tiles_row_vectors_and_scalars() {
    let g = compile_src("epi2", EPILOGUE_MIXED);
    for target in ["ascend910b", "ascend950"] {
        for (t, m, e) in [(1, 1, 1), (33, 17, 40), (130, 257, 70)] {
            let tp = check(&g, &[("T", t), ("M", m), ("E", e)], target, 7);
            assert_eq!(tp.launches[0].unit, Unit::Mixed);
        }
    }
}

const TRANSPOSED_A: &str = "
kernel mta(a: bf16[K, M], b: bf16[K, N]) -> c: f32[M, N] {
    c = transpose(a) @ b;
}
";

const BATCHED: &str = "
kernel bmm(a: bf16[B, M, K], b: bf16[B, K, N]) -> c: bf16[B, M, N] {
    c = a @ b;
}
";

#[test]
fn transposed_a_and_batched_matmuls() {
    let ta = compile_src("mta", TRANSPOSED_A);
    let bmm = compile_src("bmm", BATCHED);
    for target in ["ascend910b", "ascend950"] {
        for (m, k, n) in [(1, 1, 1), (33, 40, 17), (130, 257, 70)] {
            let tp = check(&ta, &[("M", m), ("K", k), ("N", n)], target, 3);
            assert_eq!(tp.launches[0].unit, Unit::Cube);
            let tp = check(&bmm, &[("B", 3), ("M", m), ("K", k), ("N", n)], target, 4);
            assert_eq!(tp.launches[0].unit, Unit::Cube);
        }
    }
}

/// More blocks than cube cores: a core runs several blocks, reusing its L0C, its L1/L0 slots (which keep
/// alternating across blocks) and, with an epilogue, its workspace (handed back by cross flag 1).
#[test]
fn cores_run_several_blocks() {
    let mm = common::kernel("matmul", "matmul");
    let epi = compile_src("epi", EPILOGUE);
    let tp = check(&mm, &[("M", 600), ("K", 40), ("N", 520)], "ascend910b", 11);
    let l = &tp.launches[0];
    assert_eq!(l.cube_cores, 24);
    let tp = check(&epi, &[("T", 600), ("M", 40), ("E", 520)], "ascend910b", 12);
    let l = &tp.launches[0];
    assert_eq!((l.cube_cores, l.vector_cores), (24, 48));
}

/// The cross-core hand-off is what orders the workspace: without the vector cores' wait on flag 0, the
/// verifier reports the race.
#[test]
fn the_workspace_hand_off_needs_its_cross_flag() {
    let g = compile_src("epi", EPILOGUE);
    let target = Target::builtin("ascend910b").expect("target");
    let given = kc_ir::launch::Args {
        dims: [("T", 40), ("M", 24), ("E", 30)].iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(&g, &given, 1).expect("args");
    let mut tp = tile(&g, &args, &target);
    assert!(kc_ir::tile::verify::verify(&tp, &target).is_ok());
    fn strip(body: &mut Vec<kc_ir::tile::Stmt>) {
        use kc_ir::tile::Stmt;
        body.retain(|s| !matches!(s, Stmt::CrossWait { flag: 0 }));
        for s in body.iter_mut() {
            match s {
                Stmt::For { body, .. } => strip(body),
                Stmt::If { then, .. } => strip(then),
                _ => {}
            }
        }
    }
    strip(&mut tp.launches[0].vector);
    let errs = kc_ir::tile::verify::verify(&tp, &target).expect_err("the race is found");
    assert!(errs.iter().any(|e| e.to_string().contains("_ws")), "{errs:?}");
}

/// f32 operands are multiplied in the cube's f32 mode (L1 and L0 buffers of f32); operands of two dtypes in
/// f32 too, the narrower one widened by its copy into L1. Both match the interpreter, with remainders in
/// every dim and K in several steps, on both targets; the f32 mmads cost the cube twice the fractals of the
/// same shape in bf16.
#[test]
fn f32_and_mixed_operands_multiply_in_f32() {
    let kernels = [
        ("mmf", "kernel mmf(a: f32[M, K], b: f32[K, N]) -> c: f32[M, N] {\n    c = a @ b;\n}\n"),
        ("mmx", "kernel mmx(a: f32[M, K], w: bf16[N, K]) -> c: f32[M, N] {\n    c = a @ transpose(w);\n}\n"),
        ("mmh", "kernel mmh(a: f16[M, K], b: bf16[K, N], s: f32[N]) -> c: bf16[M, N] {\n    c = a @ b + s;\n}\n"),
    ];
    let bf = compile_src("mmb", "kernel mmb(a: bf16[M, K], b: bf16[K, N]) -> c: f32[M, N] {\n    c = a @ b;\n}\n");
    for (name, src) in kernels {
        let g = compile_src(name, src);
        for target in ["ascend910b", "ascend950"] {
            for (m, k, n) in [(1, 1, 1), (33, 40, 17), (130, 257, 70)] {
                let tp = check(&g, &[("M", m), ("K", k), ("N", n)], target, (m + k + n) as u64);
                let l = &tp.launches[0];
                for b in l.buffers.iter().filter(|b| matches!(b.mem, kc_ir::tile::Mem::L0A | kc_ir::tile::Mem::L0B)) {
                    assert_eq!(b.dtype, DType::F32, "{name}: {} holds f32", b.name);
                }
            }
        }
        // The cost model: the f32 mmads take twice the bf16 launch's cube cycles (16 × 8 fractals).
        if name == "mmf" {
            let t = Target::builtin("ascend910b").expect("target");
            let dims = [("M", 256), ("K", 512), ("N", 256)];
            let busy = |g: &Graph| {
                let given = kc_ir::launch::Args {
                    dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    ..Default::default()
                };
                let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
                let tp = tile(g, &args, &t);
                let (r, _) = kc_ir::cost::estimate(&tp, &t, &Default::default(), false).expect("estimate");
                r.launches[0].busy[&kc_ir::tile::Pipe::M].0
            };
            let (f32c, bf16c) = (busy(&g), busy(&bf));
            assert!((f32c / bf16c - 2.0).abs() < 0.01, "f32 {f32c} against bf16 {bf16c} cube cycles");
        }
    }
}

/// A contraction inside a larger expression (`tests/data/ok/contraction_forms.ker`: a bias, scales inside and
/// outside the sum, an activation into a bf16 `let` read by another value, batched scaled scores) is one
/// matmul launch: the cube's sum, the rest on the vector cores, matching the interpreter with remainders in
/// every dim and K in several steps, on both targets.
#[test]
fn contractions_inside_expressions_run_on_the_cube() {
    let prog = common::compile_ok(common::repo_root().join("tests/data/ok/contraction_forms.ker"));
    let shapes: [&[(&str, i64)]; 2] = [
        &[("T", 37), ("K", 150), ("F", 21), ("H", 2), ("S", 19), ("D", 40)],
        &[("T", 1), ("K", 1), ("F", 1), ("H", 1), ("S", 1), ("D", 1)],
    ];
    let mut seen = 0;
    for g in &prog.kernels {
        for target in ["ascend910b", "ascend950"] {
            for dims in shapes {
                let dims: Vec<(&str, i64)> =
                    dims.iter().copied().filter(|(d, _)| g.dims.iter().any(|x| x.as_str() == *d)).collect();
                let tp = check(g, &dims, target, 7);
                assert_eq!(tp.launches.len(), 1, "{}: one launch", g.name);
                assert_eq!(tp.launches[0].unit, Unit::Mixed, "{}: the sum's wrapper runs on the vector cores", g.name);
                assert!(
                    common::count_stmts(&tp.launches[0].cube, &|s| matches!(s, kc_ir::tile::Stmt::Mmad { .. })) > 0
                );
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 3);
}

const TWO_OUTPUTS: &str = "
kernel two(x: bf16[T, M], w: bf16[M, E]) -> (h: f32[T, E], y: bf16[T, E]) {
    h = x @ w;
    y = h * sigmoid(h);
}
";

/// The matmul itself is a result as well as the epilogue's input: the vector cores store both.
#[test]
fn the_matmul_and_its_epilogue_are_both_stored() {
    let g = compile_src("two", TWO_OUTPUTS);
    for target in ["ascend910b", "ascend950"] {
        for (t, m, e) in [(1, 1, 1), (33, 17, 40), (130, 257, 70)] {
            let tp = check(&g, &[("T", t), ("M", m), ("E", e)], target, 13);
            assert_eq!(tp.launches.len(), 1);
            assert_eq!(tp.launches[0].unit, Unit::Mixed);
        }
    }
}

/// The host target's matmul base blocks are 512 deep in k (`matmul_bk`): one mmad call per 512 of K, which
/// the host's matrix unit runs with its accumulators in tiles. The NPU targets keep 256. The deeper steps
/// verify, simulate and run in the JIT (1 and 2 threads) to the interpreter's results. (Where K is not a
/// multiple of 512 the cycle model prefers steps that divide it better, e.g. 192 for K = 1100.)
/// On the host a matmul's accumulator block has one L0C slot (`matmul_l0c_slots = 1`: the copy-out runs on
/// the same thread as the mmads, so a second slot overlaps nothing and only takes cache), where the NPU
/// target takes two (its FixPipe copies one block out while the cube fills the next). Both programs verify;
/// the one-slot program's results are checked by `host_matmul_steps_are_512_deep` (same tiling, smaller).
#[test]
fn host_matmul_blocks_have_one_l0c_slot() {
    let g = common::kernel("matmul", "matmul");
    let given = kc_ir::launch::Args {
        dims: [("M", 1024), ("K", 512), ("N", 1024)].iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(&g, &given, 23).expect("random args");
    let slots = |name: &str| -> u32 {
        let target = Target::builtin(name).expect("builtin target");
        let tp = tile(&g, &args, &target);
        common::verify_tiled(&g, &tp, &target);
        let l0c = tp.launches[0].buffers.iter().find(|b| b.mem == kc_ir::tile::Mem::L0C).expect("an L0C buffer");
        l0c.slots
    };
    assert_eq!(slots("host"), 1, "host: one slot");
    assert_eq!(slots("ascend910b"), 2, "the NPU target: two");
}

#[test]
fn host_matmul_steps_are_512_deep() {
    let g = common::kernel("matmul", "matmul");
    let depth = |tp: &TileProgram| -> u64 {
        let l0a = tp.launches[0].buffers.iter().find(|b| b.mem == kc_ir::tile::Mem::L0A).expect("an L0A buffer");
        l0a.shape[1]
    };
    let dims = [("M", 256), ("K", 1024), ("N", 256)];
    let tp = check(&g, &dims, "host", 21);
    assert_eq!(depth(&tp), 512, "host: 512-deep steps");
    assert_eq!(depth(&check(&g, &dims, "ascend910b", 21)), 256, "the NPU targets: 256");
    // The JIT on the host.
    let target = Target::builtin("host").expect("host target");
    let given =
        kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    let args = kc_runtime::random::random_args(&g, &given, 22).expect("random args");
    let tp = tile(&g, &args, &target);
    let want = common::run(&g, &args);
    let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() }).expect("compiles");
    for threads in [1, 2] {
        let (got, _) = code.run(&tp, &g, &args, threads, &Default::default()).expect("runs");
        for ((n, w), (_, s)) in want.iter().zip(&got) {
            let w = w.to_f64_vec();
            // One bf16 unit, and the summation order of K terms (the matrix unit sums in its own order).
            let absmax = w.iter().fold(0f64, |m, x| m.max(x.abs()));
            let order = absmax * 4.0 * 1024.0 * 2f64.powi(-24);
            for (i, (a, b)) in w.iter().zip(&s.to_f64_vec()).enumerate() {
                assert!((a - b).abs() <= bf16_ulp(*a) + order, "{n}[{i}] ({threads} threads): interp {a} vs jit {b}");
            }
        }
    }
}

/// Symmetric products and their elementwise maps, with products and maps that are not provably symmetric.
const SYMMETRY: &str = "
kernel sym(x: bf16[M, N], y: bf16[M, N], s: bf16[M, M]) -> (a: bf16[M, M], b: bf16[M, M], h: f32[N, N],
    c: bf16[M, M], d: bf16[M, M], e: f32[M, M], f: bf16[M, M], u: bf16[M, M], t: bf16[M, M])
{
    a = x @ transpose(x);
    b = -4.7750 * a + 2.0315 * (a @ a);
    h = transpose(x) @ x;
    c = x @ transpose(y);
    d = s @ s;
    e = a @ b;
    f = a + s;
    u[i, j] = a[i, j] + a[i, 0];
    t = x @ transpose(x) + transpose(s);
}
";

/// The symmetry facts (`passes::symmetry`) proven on the graph: `x·xᵀ`, `xᵀ·x`, and `c1·a + c2·(a·a)` with
/// `a` symmetric are; a product of two different operands, the square of a parameter, a product of two
/// different symmetric values, and maps that read a non-symmetric value or another element are not.
#[test]
fn symmetry_is_proven_on_the_graph() {
    let g = compile_src("sym", SYMMETRY);
    let sym = |name: &str| {
        let r = g.results.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no result {name}"));
        kc_ir::passes::symmetry::is_symmetric(&g, r.value)
    };
    for name in ["a", "b", "h"] {
        assert!(sym(name), "{name} is symmetric");
    }
    for name in ["c", "d", "e", "f", "u", "t"] {
        assert!(!sym(name), "{name} is not provably symmetric");
    }
}

/// Symmetric products on the host (`symmetric_triangle`): `x·xᵀ` (a cube-only launch) and `c1·a + c2·(a·a)`
/// (a mixed one) compute the blocks on and above the diagonal (`mb (mb + 1) / 2` of them) and write each
/// off-diagonal block again, transposed; `x·yᵀ` and the NPU targets compute every block. The triangle's
/// results are the full product's bit for bit in the JIT (the mirrored element sums the same products in
/// the same k order), on 1 and 2 threads, at sizes with partial blocks; the simulator agrees with the
/// interpreter as for any matmul.
#[test]
fn host_symmetric_products_compute_one_triangle() {
    const SRC: &str = "
kernel gram_ns(x: bf16[M, N], y: bf16[M, N]) -> (b: bf16[M, M], c: bf16[M, M]) {
    let a: bf16 = x @ transpose(x);
    b = -4.7750 * a + 2.0315 * (a @ a);
    c = x @ transpose(y);
}
";
    let g = compile_src("gram_ns", SRC);
    let host = Target::builtin("host").expect("host target");
    assert!(host.symmetric_triangle);
    let mut full = host.clone();
    full.symmetric_triangle = false;
    for (m, n, seed) in [(1, 40, 1), (300, 200, 2), (200, 33, 3)] {
        let dims = [("M", m), ("N", n)];
        let tp = check(&g, &dims, "host", seed);
        // Launch by launch: x·xᵀ, the a·a group, x·yᵀ (graph order).
        let printed = |tp: &TileProgram| -> Vec<String> {
            tp.launches.iter().map(|l| kc_ir::tile::print::print_launch(tp, l)).collect()
        };
        let mirrored = |s: &String| s.contains("if m0 < n0") || s.contains("if vm0 < vn0");
        let host_launches = printed(&tp);
        assert_eq!(host_launches.len(), 3);
        for l in &host_launches {
            // x·yᵀ (the launch that writes `c`) computes every block; the other two, one triangle.
            assert_eq!(mirrored(l), !l.contains("-> gm:c["), "{dims:?}:\n{l}");
        }
        for npu in ["ascend910b", "ascend950"] {
            let tp = check(&g, &dims, npu, seed);
            assert!(!printed(&tp).iter().any(mirrored), "{npu}: every block");
        }
        let given =
            kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
        let args = kc_runtime::random::random_args(&g, &given, seed).expect("random args");
        let full_tp = tile(&g, &args, &full);
        assert!(!printed(&full_tp).iter().any(mirrored), "without symmetric_triangle: every block");
        let opts = kc_codegen::Options { verify: true, ..Default::default() };
        let code = kc_codegen::compile(&tp, &opts).expect("compiles");
        let full_code = kc_codegen::compile(&full_tp, &opts).expect("compiles");
        let (want, _) = full_code.run(&full_tp, &g, &args, 1, &Default::default()).expect("runs");
        for threads in [1, 2] {
            let (got, _) = code.run(&tp, &g, &args, threads, &Default::default()).expect("runs");
            for ((name, w), (_, j)) in want.iter().zip(&got) {
                common::assert_same_bits(&format!("{name} {dims:?} {threads} threads"), w, j);
            }
        }
    }
}

/// The flags of the host matrix routine's calls (`kc_mmad`: 12 arguments, the last its flag bits) in the
/// Cranelift IR of `tp`'s launches.
fn mmad_flags(tp: &TileProgram) -> Vec<i64> {
    let opts = kc_codegen::Options { verify: true, keep_clif: true, keep_asm: false, ..Default::default() };
    let code = kc_codegen::compile(tp, &opts).expect("compiles");
    let mut flags = Vec::new();
    for (_, body) in &code.clif {
        for line in body.lines() {
            let line = line.trim();
            let Some(args) = line.strip_prefix("call fn") else { continue };
            let Some((args, comment)) = args.split_once(')') else { continue };
            if args.split(',').count() != 12 {
                continue;
            }
            // The last argument is a constant, named in the comment after the call (`; ..., v308 = 30`).
            let last = args.rsplit(',').next().unwrap_or("").trim().to_string();
            let value = comment
                .split(',')
                .filter_map(|c| c.trim().trim_start_matches(';').trim().split_once(" = "))
                .find(|(v, _)| *v == last)
                .and_then(|(_, n)| n.trim().parse::<i64>().ok());
            flags.push(value.expect("kc_mmad's flags are a constant"));
        }
    }
    flags
}

/// [`mmad_flags`] of one launch of `tp` compiled alone; it must make at least one `kc_mmad` call.
fn launch_mmad_flags(tp: &TileProgram, l: &Launch) -> Vec<i64> {
    let one = TileProgram { launches: vec![l.clone()], ..tp.clone() };
    let flags = mmad_flags(&one);
    assert!(!flags.is_empty(), "{}: no kc_mmad call found", l.name);
    flags
}

/// `x @ transpose(x)` reads its transposed operand from the tensor its `a` comes from: the JIT tells the host
/// routine so (`kc_mmad`'s bit 4, with bits 1 to 3), which keeps that packing from its first use and makes
/// the `a` packing of the window with it. `x @ transpose(y)` and a product with a non-transposed operand
/// do not get the bit.
#[test]
fn host_gram_products_share_their_packings() {
    const SRC: &str = "
kernel grams(x: bf16[M, N], y: bf16[M, N], w: bf16[N, M]) -> (a: bf16[M, M], c: bf16[M, M], d: bf16[M, M]) {
    a = x @ transpose(x);
    c = x @ transpose(y);
    d = x @ w;
}
";
    let g = compile_src("grams", SRC);
    for (m, n) in [(300, 200), (64, 512)] {
        let tp = check(&g, &[("M", m), ("N", n)], "host", 1);
        assert_eq!(tp.launches.len(), 3);
        for (l, want) in tp.launches.iter().zip([true, false, false]) {
            for f in launch_mmad_flags(&tp, l) {
                assert_eq!(f & 16 != 0, want, "{} ({m} x {n}): flags {f}", l.name);
                if want {
                    assert_eq!(f & 30, 30, "{}: bit 4 comes with bits 1 to 3", l.name);
                }
            }
        }
    }
}

/// `s @ s` with `s` provably symmetric reads its `b` operand as the transpose of `s`'s rows on the host
/// (`cube::symmetric_b`): the same values, and its windows are the ones the launch's blocks read as `a` from
/// the same tensor, so the JIT flags its mmads as `x @ transpose(x)`'s (`kc_mmad`'s bit 4, with bits 1 to
/// 3) and the routine packs each window once for both operands. Refused: `a @ y` and `y @ a` (one factor
/// not `a`), `y @ y` (`y` not symmetric), and the NPU targets (no transposed `b` there). Results: the JIT's
/// are the full, untransposed product's bit for bit (1 and 2 threads, partial blocks, one block), and the
/// simulator and the JIT agree with the interpreter.
#[test]
fn host_squares_of_symmetric_values_share_their_packings() {
    const SRC: &str = "
kernel squares(x: bf16[M, N], y: bf16[M, M]) -> (b: bf16[M, M], e: bf16[M, M], c: bf16[M, M], f: bf16[M, M], d: bf16[M, M]) {
    let a: bf16 = x @ transpose(x);
    b = -4.7750 * a + 2.0315 * (a @ a);
    e = a @ a;
    c = a @ y;
    f = y @ a;
    d = y @ y;
}
";
    let g = compile_src("squares", SRC);
    let host = Target::builtin("host").expect("host target");
    let mut full = host.clone();
    full.symmetric_triangle = false;
    // The launch that writes output `name`.
    let launch_of = |tp: &TileProgram, name: &str| -> Launch {
        let pat = format!("-> gm:{name}[");
        let hits: Vec<&Launch> =
            tp.launches.iter().filter(|l| kc_ir::tile::print::print_launch(tp, l).contains(&pat)).collect();
        assert_eq!(hits.len(), 1, "one launch writes {name}");
        hits[0].clone()
    };
    let flags_of = |tp: &TileProgram, name: &str| -> Vec<i64> { launch_mmad_flags(tp, &launch_of(tp, name)) };
    for (m, n, seed) in [(300, 200, 1), (33, 70, 2), (128, 40, 3), (1, 17, 4)] {
        let dims = [("M", m), ("N", n)];
        let tp = check(&g, &dims, "host", seed);
        for (name, shared) in [("b", true), ("e", true), ("a", true), ("c", false), ("f", false), ("d", false)] {
            for f in flags_of(&tp, name) {
                assert_eq!(f & 16 != 0, shared, "{name} ({m} x {n}): flags {f}");
                if shared {
                    assert_eq!(f & 30, 30, "{name}: bit 4 comes with bits 1 to 3");
                } else {
                    assert_eq!(f & 8, 0, "{name} ({m} x {n}): a plain b, flags {f}");
                }
            }
        }
        // Without the host's symmetric products, nothing is transposed.
        let given =
            kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
        let args = kc_runtime::random::random_args(&g, &given, seed).expect("random args");
        let full_tp = tile(&g, &args, &full);
        for name in ["b", "e"] {
            assert!(flags_of(&full_tp, name).iter().all(|f| f & 24 == 0), "{name} without symmetric_triangle");
        }
        for name in ["b", "e"] {
            assert!(column_loops(&launch_of(&tp, name)) > 0, "{name}: b transposed on the way to L0B");
            assert_eq!(column_loops(&launch_of(&full_tp, name)), 0, "{name} without symmetric_triangle");
        }
        for name in ["c", "f", "d"] {
            assert_eq!(column_loops(&launch_of(&tp, name)), 0, "{name}: a plain b");
        }
        for npu in ["ascend910b", "ascend950"] {
            let tp = check(&g, &dims, npu, seed);
            for name in ["b", "e"] {
                assert_eq!(column_loops(&launch_of(&tp, name)), 0, "{npu}: {name} reads a plain b");
            }
        }
        let opts = kc_codegen::Options { verify: true, ..Default::default() };
        let code = kc_codegen::compile(&tp, &opts).expect("compiles");
        let full_code = kc_codegen::compile(&full_tp, &opts).expect("compiles");
        let (want, _) = full_code.run(&full_tp, &g, &args, 1, &Default::default()).expect("runs");
        let interp = common::run(&g, &args);
        for threads in [1, 2] {
            let (got, _) = code.run(&tp, &g, &args, threads, &Default::default()).expect("runs");
            for (((name, w), (_, j)), (_, i)) in want.iter().zip(&got).zip(&interp) {
                common::assert_same_bits(&format!("{name} {dims:?} {threads} threads"), w, j);
                crate::tiled::assert_matches_within(&format!("{name} {dims:?} {threads} threads"), j, i, 0.25);
            }
        }
    }
}

/// The loops of MTE1 column copies in a launch's cube program (a transposed operand on its way to L0A / L0B).
fn column_loops(l: &Launch) -> usize {
    use kc_ir::tile::{Pipe, Stmt};
    common::count_stmts(
        &l.cube,
        &|s| matches!(s, Stmt::For { body, .. } if matches!(body.as_slice(), [Stmt::Copy { pipe: Pipe::Mte1, .. }])),
    )
}

/// A mixed matmul's workspace is unit-private (`TensorRole::Workspace`'s `unit_private`: the unit of cube
/// core `q` and its vector cores touches only area `q`, and reads only blocks it wrote), other workspaces
/// (a reduction's partials, read by a second launch) are not, and the host JIT gives each thread one warm
/// area that the units it runs reuse in turn (`kc_runtime::gm::unit_private_workspaces`). Its results are
/// those of the whole workspace bit for bit (partial blocks, units of one and of several blocks, more units
/// than threads, the areas poisoned before each unit, 1 and 2 threads); a workspace used by two launches
/// gets no per-thread area; and an access outside the unit's area is a bounds failure of that area.
#[test]
fn host_mixed_matmul_workspaces_are_unit_private() {
    const SRC: &str = "
kernel ns_step(x: bf16[M, N], b: bf16[M, M]) -> (o: bf16[M, N], c: bf16[M, M]) {
    let a: bf16 = x @ transpose(x);
    c = -4.7750 * a + 2.0315 * (a @ a);
    o = 3.4445 * x + b @ x;
}
";
    use kc_ir::tile::TensorRole;
    let g = compile_src("ns_step", SRC);
    let host = Target::builtin("host").expect("host target");
    let private_roles = |tp: &TileProgram| -> Vec<(String, bool)> {
        tp.tensors
            .iter()
            .filter_map(|t| match t.role {
                TensorRole::Workspace { unit_private, .. } => Some((t.name.clone(), unit_private)),
                _ => None,
            })
            .collect()
    };
    // The role is the template's promise on every target; a reduction's partials (Muon's norm, combined by
    // a second launch) make no such promise.
    for npu in ["ascend910b", "ascend950"] {
        let tp = check(&g, &[("M", 33), ("N", 70)], npu, 1);
        let roles = private_roles(&tp);
        assert_eq!(roles.iter().filter(|r| r.1).count(), 2, "{npu}: {roles:?}");
    }
    let muon = common::compile_ok(common::kernel_path("muon_orthogonalize")).kernels.remove(0);
    let dims: std::collections::BTreeMap<String, i64> = [("M".to_string(), 1024), ("N".to_string(), 4096)].into();
    let b = kc_ir::launch::bind_dims(&muon, &dims).expect("binds");
    let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(&muon, &b, &host).expect("tiles");
    let roles = private_roles(&tp);
    assert_eq!(roles.iter().filter(|r| r.1).count(), 10, "Muon's mixed launches: {roles:?}");
    assert!(roles.iter().any(|r| r.0.contains("partials") && !r.1), "the norm's partials: {roles:?}");
    let tp = check(&g, &[("M", 33), ("N", 70)], "host", 1);
    let roles = private_roles(&tp);
    assert_eq!(roles.iter().filter(|r| r.1).count(), 2, "the two mixed launches' workspaces: {roles:?}");
    for l in &tp.launches {
        let private = kc_runtime::gm::unit_private_workspaces(&tp, l);
        assert_eq!(!private.is_empty(), l.unit == Unit::Mixed, "{}: {private:?}", l.name);
    }
    // A workspace that a second launch uses too gets no per-thread area.
    let mut twice = tp.clone();
    let mixed = twice.launches.iter().position(|l| l.unit == Unit::Mixed).expect("a mixed launch");
    let again = twice.launches[mixed].clone();
    twice.launches.push(again);
    assert!(kc_runtime::gm::unit_private_workspaces(&twice, &twice.launches[mixed]).is_empty());

    let opts = kc_codegen::Options { verify: true, ..Default::default() };
    // (33, 70): one partial block per launch; (300, 530): 3 x 3 blocks of b·x over 9 units; (700, 1100): 6 x 5
    // blocks of b·x, two for most of the 16 units.
    for (m, n, seed) in [(33, 70, 1), (300, 530, 2), (700, 1100, 3)] {
        let given = kc_ir::launch::Args {
            dims: [("M".to_string(), m), ("N".to_string(), n)].into_iter().collect(),
            ..Default::default()
        };
        let args = kc_runtime::random::random_args(&g, &given, seed).expect("random args");
        let tp = tile(&g, &args, &host);
        let mut whole = tp.clone();
        for t in &mut whole.tensors {
            if let TensorRole::Workspace { unit_private, .. } = &mut t.role {
                *unit_private = false;
            }
        }
        let code = kc_codegen::compile(&tp, &opts).expect("compiles");
        assert!(code.launches.iter().filter(|l| !l.private.is_empty()).count() == 2, "{m} x {n}");
        let whole_code = kc_codegen::compile(&whole, &opts).expect("compiles");
        assert!(whole_code.launches.iter().all(|l| l.private.is_empty()));
        let (want, _) = whole_code.run(&whole, &g, &args, 1, &Default::default()).expect("runs");
        code.poison_reused_memory();
        for threads in [1, 2, 1, 2] {
            let (got, _) = code.run(&tp, &g, &args, threads, &Default::default()).expect("runs");
            for ((name, w), (_, j)) in want.iter().zip(&got) {
                common::assert_same_bits(&format!("{name} at {m} x {n}, {threads} threads"), w, j);
            }
        }
    }

    // A unit's area smaller than its blocks (a broken promise): the copy into it fails its bounds check.
    let given = kc_ir::launch::Args {
        dims: [("M".to_string(), 33), ("N".to_string(), 70)].into_iter().collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(&g, &given, 1).expect("random args");
    let mut small = tile(&g, &args, &host);
    for t in &mut small.tensors {
        if let TensorRole::Workspace { per_core, unit_private: true } = &mut t.role {
            *per_core = 64;
        }
    }
    let code = kc_codegen::compile(&small, &opts).expect("compiles");
    for threads in [1, 2] {
        let err = code.run(&small, &g, &args, threads, &Default::default()).expect_err("fails");
        assert!(err[0].message.contains("this unit's area of workspace"), "{}", err[0].message);
    }
}

/// Products whose two operands are windows of the same read-only tensor (`x·xᵀ`, `a·a`, `s·s`) set
/// `kc_mmad`'s bit 5 (with bits 1 and 2): on two or more threads the host routine packs each of their
/// windows once per launch for all the launch's threads (`SharedPacks`, filled by whichever thread needs a
/// window first), where each thread packed nearly every window for itself. `x·yᵀ` does not get the bit.
/// On two threads the results are one thread's bit for bit (packing is a copy), and `s·s` and `x·yᵀ` are
/// within rounding of the interpreter, at sizes with partial blocks and partial k steps.
#[test]
fn host_same_matrix_products_share_packings_across_threads() {
    const SRC: &str = "
kernel same(x: bf16[M, N], y: bf16[M, N], s: bf16[M, M]) -> (b: bf16[M, M], c: bf16[M, M], d: bf16[M, M]) {
    let a: bf16 = x @ transpose(x);
    b = -4.7750 * a + 2.0315 * (a @ a);
    c = x @ transpose(y);
    d = s @ s;
}
";
    let g = compile_src("same", SRC);
    let target = Target::builtin("host").expect("host target");
    for (m, n, seed) in [(300, 200, 31), (200, 700, 32)] {
        let dims = [("M", m), ("N", n)];
        let given =
            kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
        let args = kc_runtime::random::random_args(&g, &given, seed).expect("random args");
        let tp = tile(&g, &args, &target);
        assert_eq!(tp.launches.len(), 4);
        for l in &tp.launches {
            let printed = kc_ir::tile::print::print_launch(&tp, l);
            let want = !printed.contains("-> gm:c[");
            for f in launch_mmad_flags(&tp, l) {
                assert_eq!(f & 32 != 0, want, "{} ({m} x {n}): flags {f}", l.name);
                if want {
                    assert_eq!(f & 6, 6, "{}: bit 5 comes with bits 1 and 2", l.name);
                }
            }
        }
        let code =
            kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() }).expect("compiles");
        let (one, _) = code.run(&tp, &g, &args, 1, &Default::default()).expect("runs");
        let interp = common::run(&g, &args);
        for threads in [2, 3] {
            // Twice: the second call's launches take the packings the first call's used, reset.
            for call in 0..2 {
                let (got, _) = code.run(&tp, &g, &args, threads, &Default::default()).expect("runs");
                for ((name, w), (_, j)) in one.iter().zip(&got) {
                    common::assert_same_bits(&format!("{name} {dims:?} {threads} threads, call {call}"), w, j);
                }
            }
        }
        for ((name, w), (_, j)) in interp.iter().zip(&one) {
            if name == "b" {
                continue; // a bf16 `a` rounded in another order can differ by an ulp, then squared
            }
            let (w, j) = (w.to_f64_vec(), j.to_f64_vec());
            let absmax = w.iter().fold(0f64, |m, x| m.max(x.abs()));
            let order = absmax * 4.0 * 1024.0 * 2f64.powi(-24);
            for (i, (a, b)) in w.iter().zip(&j).enumerate() {
                assert!((a - b).abs() <= bf16_ulp(*a) + order, "{name}[{i}] {dims:?}: interp {a} vs jit {b}");
            }
        }
    }
}
