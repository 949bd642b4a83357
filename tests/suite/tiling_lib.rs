//! Library groups, end to end: top-k, argsort, prefix sums and histograms are fused, tiled by
//! `tile::library` for each target, verified, run by the simulator and compared bit for bit with the
//! reference interpreter (ties, rows longer than UB, sources that are inlined reshapes).

use crate::common;
use kc_frontend::SourceMap;
use kc_ir::launch::Args;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::passes::tile::{group_order, library, plan_gm, vector};
use kc_ir::target::Target;
use kc_ir::tile::{LibOp, Stmt, TileProgram};
use kc_ir::{DType, Graph, Tensor, TensorData};

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// Compiles a source string that must compile cleanly; returns its first kernel.
fn compile(src: &str) -> Graph {
    let mut sources = SourceMap::new();
    let id = sources.add("lib.ker", src);
    let (program, diags) = kc_frontend::compile(&mut sources, id, &common::FsLoader);
    assert!(diags.is_empty(), "{}", kc_frontend::render(&diags, &sources, false));
    program.kernels.into_iter().next().expect("a kernel")
}

/// Tiles every group: library groups with `library::library` (which must take them), the rest as
/// elementwise vector groups.
fn tile(g: &Graph, args: &Args, target: &Target) -> TileProgram {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    for k in group_order(&f).expect("the groups can be ordered") {
        let name = format!("{}.{k}", g.name);
        let group = &f.groups[k];
        let l = if group.kind == GroupKind::Library {
            library::library(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{}: library group {k} is not tiled (dims {:?})", g.name, b.dims))
        } else {
            vector::elementwise(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{}: group {k} is not elementwise", g.name))
        };
        launches.push(l.unwrap_or_else(|e| panic!("{}: {e}", g.name)));
    }
    TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    }
}

/// Tiles, verifies, simulates and compares with the interpreter bit for bit; returns the program.
fn check(g: &Graph, args: &Args, target: &str) -> TileProgram {
    let target = Target::builtin(target).expect("builtin target");
    let tp = tile(g, args, &target);
    common::verify_tiled(g, &tp, &target);
    let want = common::run(g, args);
    let got = kc_runtime::sim::run(&tp, g, args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        common::assert_same_bits(&format!("{}.{n} on {}", g.name, target.name), w, s);
    }
    tp
}

/// Floats with many ties: small integers (and halves) in `[-4, 4)`.
fn tied(rng: &mut common::Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.int(-8, 8) as f32 * 0.5).collect();
    Tensor::new(shape.to_vec(), TensorData::F32(v)).expect("shape")
}

fn args(tensors: &[(&str, Tensor)], dims: &[(&str, i64)]) -> Args {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    common::args(&refs, dims)
}

/// The library statements of a program's launches.
fn library_ops(tp: &TileProgram) -> Vec<LibOp> {
    fn walk(s: &[Stmt], out: &mut Vec<LibOp>) {
        for x in s {
            match x {
                Stmt::For { body, .. } => walk(body, out),
                Stmt::If { then, .. } => walk(then, out),
                Stmt::Library { op, .. } => out.push(op.clone()),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for l in &tp.launches {
        walk(&l.vector, &mut out);
    }
    out
}

#[test]
fn topk_values_and_indices_with_ties() {
    let g = compile(
        r#"kernel k(x: f32[R, C], K: dim) -> (v: f32[R, K], i: i32[R, K]) {
    let (a, b) = topk(x, K);
    v = a;
    i = b;
}
"#,
    );
    let mut rng = common::Rng::new(7);
    for target in TARGETS {
        for (r, cc, k) in [(7usize, 33usize, 5i64), (7, 33, 33), (3, 1, 1), (1, 1, 1)] {
            let a = args(&[("x", tied(&mut rng, &[r, cc]))], &[("K", k)]);
            let tp = check(&g, &a, target);
            assert_eq!(tp.launches.len(), 2, "values and indices are two library groups");
        }
    }
}

#[test]
fn topk_through_a_reshape() {
    // The source is an inlined reshape: read from the parameter's bytes directly.
    let g = compile(
        r#"kernel k(x: f32[T, E]) -> i: i32[T, 4, 2] where E == 8 {
    let (_, j) = topk(reshape(x, [T, 4, 2]), 2, axis: -1);
    i = j;
}
"#,
    );
    let mut rng = common::Rng::new(3);
    for target in TARGETS {
        let a = args(&[("x", tied(&mut rng, &[13, 8]))], &[]);
        check(&g, &a, target);
    }
}

#[test]
fn argsort_ascending_and_descending() {
    let g = compile(
        r#"kernel k(x: f32[R, C]) -> (up: i32[R, C], down: i32[R, C]) {
    up = argsort(x);
    down = argsort(x, descending: true);
}
"#,
    );
    let mut rng = common::Rng::new(11);
    for target in TARGETS {
        for (r, cc) in [(5usize, 70usize), (1, 1), (40, 3)] {
            let a = args(&[("x", tied(&mut rng, &[r, cc]))], &[]);
            check(&g, &a, target);
        }
    }
}

#[test]
fn cumsum_inclusive_and_exclusive() {
    let f = compile(
        r#"kernel k(x: f32[R, C]) -> (a: f32[R, C], b: f32[R, C]) {
    a = cumsum(x);
    b = cumsum(x, exclusive: true);
}
"#,
    );
    let i = compile(
        r#"kernel k(x: i32[R, C]) -> (a: i32[R, C], b: i32[R, C]) {
    a = cumsum(x);
    b = cumsum(x, exclusive: true);
}
"#,
    );
    let mut rng = common::Rng::new(5);
    for target in TARGETS {
        let x = common::rand_tensor(&mut rng, DType::F32, &[9, 100]);
        let tp = check(&f, &args(&[("x", x)], &[]), target);
        assert!(library_ops(&tp).iter().all(|op| matches!(op, LibOp::CumSum { carry: None, .. })));
        let x = common::rand_tensor(&mut rng, DType::I32, &[9, 100]);
        check(&i, &args(&[("x", x)], &[]), target);
        // Many row blocks per core: both slots of the double buffer run, with ragged last blocks.
        let x = common::rand_tensor(&mut rng, DType::F32, &[2001, 500]);
        let tp = check(&f, &args(&[("x", x)], &[]), target);
        for l in &tp.launches {
            let rt = l.buffers.iter().find(|b| b.name == "src_in").expect("an input buffer").shape[0];
            assert!(2001u64.div_ceil(rt) > l.vector_cores as u64, "two blocks on some cores: {rt} rows a block");
        }
    }
}

#[test]
fn bf16_sources_and_empty_tensors() {
    let g = compile(
        r#"kernel k(x: bf16[R, C], K: dim) -> (v: f32[R, K], i: i32[R, K], s: f32[R, C], o: i32[R, C]) {
    let (a, b) = topk(x, K);
    v = a;
    i = b;
    s = cumsum(x, exclusive: true);
    o = argsort(x, descending: true);
}
"#,
    );
    let mut rng = common::Rng::new(21);
    for target in TARGETS {
        for (r, cc, k) in [(6usize, 45usize, 4i64), (0, 5, 2), (3, 0, 0), (2, 100_000, 3)] {
            let n = r * cc;
            let x: Vec<half::bf16> = (0..n).map(|_| half::bf16::from_f32(rng.int(-64, 64) as f32 / 8.0)).collect();
            let x = Tensor::new(vec![r, cc], TensorData::BF16(x)).expect("shape");
            let a = args(&[("x", x)], &[("K", k)]);
            if cc > 50_000 {
                // Top-k rows that long are not tiled; the prefix sum is, in column tiles, and the argsort
                // in merged blocks.
                let target = Target::builtin(target).expect("target");
                let f = fuse(&g, &FusionConfig::default());
                let b = kc_ir::launch::bind(&g, &a).expect("bind");
                let gm = plan_gm(&g, &f, &b).expect("gm");
                for gr in &f.groups {
                    let l = library::library(&g, gr, "k", &gm, &target, &b);
                    let topk = matches!(g.node(gr.nodes[0]).kind, kc_ir::NodeKind::TopK { .. });
                    assert_eq!(l.is_some(), !topk);
                }
                continue;
            }
            check(&g, &a, target);
        }
    }
}

#[test]
fn topk_larger_than_the_row_is_an_error() {
    let g = compile(
        r#"kernel k(x: f32[R, C], K: dim) -> v: f32[R, K] {
    let (a, _) = topk(x, K);
    v = a;
}
"#,
    );
    let target = Target::builtin("ascend950").expect("target");
    let mut rng = common::Rng::new(2);
    let a = args(&[("x", tied(&mut rng, &[2, 3]))], &[("K", 4)]);
    let f = fuse(&g, &FusionConfig::default());
    let b = kc_ir::launch::bind(&g, &a).expect("bind");
    let gm = plan_gm(&g, &f, &b).expect("gm");
    let err = library::library(&g, &f.groups[0], "k", &gm, &target, &b).expect("a library group").unwrap_err();
    assert_eq!(err.code, kc_ir::Code::ArgShape, "{err}");
}

#[test]
fn cumsum_rows_longer_than_ub_tile_the_columns() {
    let f = compile(
        r#"kernel k(x: f32[R, C]) -> (a: f32[R, C], b: f32[R, C]) {
    a = cumsum(x);
    b = cumsum(x, exclusive: true);
}
"#,
    );
    let i = compile(
        r#"kernel k(x: i32[R, C]) -> a: i32[R, C] {
    a = cumsum(x, exclusive: true);
}
"#,
    );
    let mut rng = common::Rng::new(9);
    for target in TARGETS {
        let x = common::rand_tensor(&mut rng, DType::F32, &[2, 200_000]);
        let tp = check(&f, &args(&[("x", x)], &[]), target);
        let ops = library_ops(&tp);
        assert!(!ops.is_empty() && ops.iter().all(|op| matches!(op, LibOp::CumSum { carry: Some(_), .. })));
        // Several rows a block, the last block ragged.
        let x = common::rand_tensor(&mut rng, DType::F32, &[101, 30_000]);
        let tp = check(&f, &args(&[("x", x)], &[]), target);
        assert!(tp.launches.iter().all(|l| l.buffers.iter().any(|b| b.name == "carry" && b.shape[0] > 1)));
        let x = common::rand_tensor(&mut rng, DType::I32, &[3, 70_001]);
        let tp = check(&i, &args(&[("x", x)], &[]), target);
        assert!(library_ops(&tp).iter().all(|op| matches!(op, LibOp::CumSum { carry: Some(_), .. })));
    }
}

#[test]
fn bincount_and_argsort_of_a_flattened_index() {
    // As in moe_permute: `flat` is an inlined reshape read by two library groups.
    let g = compile(
        r#"kernel k(idx: i32[T, K], E: dim) -> (h: i32[E], order: i32[T * K], c: i32[E]) {
    let flat = reshape(idx, [T * K]);
    h = bincount(flat, E);
    order = argsort(flat);
    c = cumsum(bincount(flat, E), axis: 0);
}
"#,
    );
    let mut rng = common::Rng::new(13);
    for target in TARGETS {
        for (t, k, e) in [(1usize, 1usize, 1i64), (37, 2, 8), (300, 8, 64)] {
            let v: Vec<i32> = (0..t * k).map(|_| rng.int(0, e as i32)).collect();
            let a = args(&[("idx", common::i32_tensor(&[t, k], v))], &[("E", e)]);
            check(&g, &a, target);
        }
    }
}

#[test]
fn bincount_streams_long_sources() {
    let g = compile(
        r#"kernel k(idx: i32[T, K], E: dim) -> (h: i32[E], c: i32[E]) {
    let flat = reshape(idx, [T * K]);
    h = bincount(flat, E);
    c = cumsum(bincount(flat, E), exclusive: true);
}
"#,
    );
    let mut rng = common::Rng::new(17);
    for target in TARGETS {
        for (t, k, e) in [(50_000usize, 2usize, 3i64), (4097, 3, 1000), (5, 1, 20_000)] {
            let v: Vec<i32> = (0..t * k).map(|_| rng.int(0, e as i32)).collect();
            let a = args(&[("idx", common::i32_tensor(&[t, k], v))], &[("E", e)]);
            let tp = check(&g, &a, target);
            assert!(library_ops(&tp).iter().any(|op| matches!(op, LibOp::BinCount { .. })));
        }
    }
}

/// Parameter names and shapes.
type Shapes<'a> = &'a [(&'a str, &'a [usize])];

#[test]
fn sources_that_are_not_reshapes_and_oversized_rows_are_not_tiled() {
    let target = Target::builtin("ascend910b").expect("target");
    let cases: [(&str, Shapes); 3] = [
        // A transposed source is not the stored bytes.
        (
            r#"kernel k(x: f32[R, C]) -> y: f32[C, R] {
    y = cumsum(transpose(x));
}
"#,
            &[("x", &[4, 6])],
        ),
        // Along another axis than the last, with lines longer than UB (no column tiles for strided lines).
        (
            r#"kernel k(x: f32[R, C]) -> y: f32[R, C] {
    y = cumsum(x, axis: 0);
}
"#,
            &[("x", &[200_000, 2])],
        ),
        // A row of top-k longer than UB would need a merge of its own.
        (
            r#"kernel k(x: f32[R, C]) -> y: i32[R, 3] {
    let (_, i) = topk(x, 3);
    y = i;
}
"#,
            &[("x", &[1, 200_000])],
        ),
    ];
    for (src, shapes) in cases {
        let g = compile(src);
        let mut rng = common::Rng::new(1);
        let ts: Vec<(&str, Tensor)> =
            shapes.iter().map(|(n, s)| (*n, common::rand_tensor(&mut rng, DType::F32, s))).collect();
        let a = args(&ts, &[]);
        let f = fuse(&g, &FusionConfig::default());
        let b = kc_ir::launch::bind(&g, &a).expect("bind");
        let gm = plan_gm(&g, &f, &b).expect("gm");
        let lib: Vec<_> = f.groups.iter().filter(|gr| gr.kind == GroupKind::Library).collect();
        assert_eq!(lib.len(), 1, "{src}");
        assert!(library::library(&g, lib[0], "k", &gm, &target, &b).is_none(), "{src}");
        // A vector group is not a library group.
        for gr in f.groups.iter().filter(|gr| gr.kind != GroupKind::Library) {
            assert!(library::library(&g, gr, "k", &gm, &target, &b).is_none());
        }
    }
}

/// Top-k, argsort and prefix sums along another axis than the last (`axis: 0` of a matrix, the middle
/// axis of a 3-D tensor): each line is copied in, and its result out, as a column (a loop of column copies
/// per block); blocks cross the outer index. Bit-exact against the interpreter on inputs with ties, on both
/// NPU targets and the host, and under the JIT on 1 and 2 threads.
#[test]
fn library_ops_along_other_axes() {
    let kernels = [
        "kernel t(x: f32[N, D]) -> (v: f32[3, D], i: i32[3, D]) {\n    let (a, b) = topk(x, 3, axis: 0);\n    v = a;\n    i = b;\n}\n",
        "kernel s(x: f32[A, N, D]) -> i: i32[A, N, D] {\n    i = argsort(x, axis: 1, descending: true);\n}\n",
        "kernel c(x: f32[A, N, D]) -> y: f32[A, N, D] {\n    y = cumsum(x, axis: -2, exclusive: true);\n}\n",
    ];
    let mut rng = common::Rng::new(4);
    for src in kernels {
        let g = compile(src);
        for (a, n, d) in [(1, 3, 1), (3, 37, 11), (2, 300, 45)] {
            let shape: Vec<usize> = if g.name == "t" { vec![n, d] } else { vec![a, n, d] };
            let a = args(&[("x", tied(&mut rng, &shape))], &[]);
            for target in ["ascend910b", "ascend950", "host"] {
                let tp = check(&g, &a, target);
                assert!(!library_ops(&tp).is_empty(), "{}: a library launch", g.name);
            }
            let host = Target::builtin("host").expect("host");
            let tp = tile(&g, &a, &host);
            let opts = kc_codegen::Options { verify: true, ..Default::default() };
            let compiled = kc_codegen::compile(&tp, &opts).expect("compiles");
            let want = common::run(&g, &a);
            for threads in [1, 2] {
                let (got, _) = compiled
                    .run(&tp, &g, &a, threads, &kc_ir::interp::Limits::default())
                    .unwrap_or_else(|e| panic!("{} on {threads} threads: {e:?}", g.name));
                for ((nm, w), (_, x)) in want.iter().zip(&got) {
                    common::assert_same_bits(&format!("{}.{nm} {shape:?}, {threads} threads", g.name), w, x);
                }
            }
        }
    }
}

/// Dims by name.
type Dims<'a> = &'a [(&'a str, i64)];

/// The library groups of the MoE kernels tile and verify at model-like sizes (their other groups are
/// gathers and matmuls, tiled elsewhere).
#[test]
fn moe_kernels_library_groups_tile_and_verify() {
    let cases: [(&str, Dims); 3] = [
        ("moe_permute", &[("T", 1000), ("M", 64), ("K", 8), ("E", 64)]),
        ("moe_combine", &[("T", 1000), ("M", 64), ("K", 8)]),
        ("moe_route", &[("T", 300), ("M", 64), ("E", 256)]),
    ];
    for (file, dims) in cases {
        let prog = common::compile_ok(common::kernel_path(file));
        let g = &prog.kernels[0];
        let given = args(&[], dims);
        let a = kc_runtime::random::random_args(g, &given, 1).expect("random args");
        for target in TARGETS {
            let target = Target::builtin(target).expect("target");
            let f = fuse(g, &FusionConfig::default());
            let b = kc_ir::launch::bind(g, &a).expect("bind");
            let gm = plan_gm(g, &f, &b).expect("gm");
            let mut launches = Vec::new();
            for (k, gr) in f.groups.iter().enumerate().filter(|(_, gr)| gr.kind == GroupKind::Library) {
                let l = library::library(g, gr, &format!("{file}.{k}"), &gm, &target, &b)
                    .unwrap_or_else(|| panic!("{file}: library group {k} is not tiled"))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                launches.push(l);
            }
            assert!(!launches.is_empty());
            let tp = TileProgram {
                kernel: g.name.clone(),
                target: target.name.clone(),
                dims: b.dims.clone(),
                tensors: gm.tensors,
                launches,
            };
            common::verify_tiled(g, &tp, &target);
        }
    }
}

/// A target like `base` with a UB of `ub` bytes, so that short rows are already wider than UB.
fn small_ub(base: &str, ub: u64) -> Target {
    let mut t = Target::builtin(base).expect("target");
    for m in t.memory.iter_mut().filter(|m| m.name == "ub") {
        m.capacity = ub;
        m.reserved = 0;
    }
    t
}

/// Argsort rows wider than UB: blocks sorted on their own, then merge-split by odd-even transposition
/// (`library::wide_argsort`). Bit for bit with the interpreter's stable sort — many ties, NaN and both
/// zeros, bf16 and i32 keys, both directions — on both simulators and under the JIT (1 and 2 threads), with
/// UBs small enough for 2 to 9 blocks a row (an odd and an even count, a short last block), and at the
/// built-in targets' own sizes for the MoE kernels' flat index (T·K = 32768).
#[test]
fn argsort_rows_longer_than_ub_sort_and_merge_blocks() {
    let g = compile(
        r#"kernel k(x: f32[R, C], h: bf16[R, C], n: i32[R, C]) -> (up: i32[R, C], down: i32[R, C], hb: i32[R, C], ni: i32[R, C]) {
    up = argsort(x);
    down = argsort(x, descending: true);
    hb = argsort(h);
    ni = argsort(n, descending: true);
}
"#,
    );
    let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY];
    let data = |seed: u64, r: usize, c: usize| {
        let mut rng = common::Rng::new(seed);
        let x: Vec<f32> = (0..r * c)
            .map(|_| {
                if rng.int(0, 10) == 0 {
                    special[rng.int(0, special.len() as i32) as usize]
                } else {
                    rng.int(-8, 8) as f32 * 0.5
                }
            })
            .collect();
        let h = Tensor::from_f32_as(DType::BF16, vec![r, c], &x).expect("h");
        let n = common::i32_tensor(&[r, c], (0..r * c).map(|_| rng.int(0, 64)).collect());
        let x = Tensor::new(vec![r, c], TensorData::F32(x)).expect("x");
        args(&[("x", x), ("h", h), ("n", n)], &[])
    };
    let run = |target: &Target, a: &Args, min_blocks: usize| {
        let tp = tile(&g, a, target);
        common::verify_tiled(&g, &tp, target);
        let sorts = tp
            .launches
            .iter()
            .map(|l| common::count_stmts(&l.vector, &|s| matches!(s, Stmt::Gather { .. })))
            .sum::<usize>();
        assert!(sorts >= 8, "every argsort merges its blocks ({sorts} gathers)");
        // How many blocks the first launch cut a row into: its block loop's bound.
        let blocks = tp.launches[0].vector.iter().find_map(|s| match s {
            Stmt::For { body, .. } => body.iter().find_map(|b| match b {
                Stmt::For { hi: kc_ir::tile::SExpr::Const(n), .. } => Some(*n as usize),
                _ => None,
            }),
            _ => None,
        });
        assert!(blocks.is_some_and(|b| b >= min_blocks), "{}: {blocks:?} blocks a row", target.name);
        let want = common::run(&g, a);
        let got = kc_runtime::sim::run(&tp, &g, a).unwrap_or_else(|e| panic!("sim: {e:?}"));
        for ((n, w), (_, s)) in want.iter().zip(&got) {
            common::assert_same_bits(&format!("{n} on {} (sim)", target.name), w, s);
        }
        let compiled =
            kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() }).expect("jit");
        for threads in [1, 2] {
            let (got, _) = compiled
                .run(&tp, &g, a, threads, &kc_ir::interp::Limits::default())
                .unwrap_or_else(|e| panic!("jit: {e:?}"));
            for ((n, w), (_, s)) in want.iter().zip(&got) {
                common::assert_same_bits(&format!("{n} on {} (jit, {threads} threads)", target.name), w, s);
            }
        }
    };
    // UB of 2 KiB: blocks of 40 columns (f32 and i32 keys); 130 columns = 4 blocks, 250 = 7 (the last one
    // short), 575 = 15.
    for (seed, (r, c, min_blocks)) in [(3usize, 130usize, 4usize), (1, 250, 7), (2, 575, 15)].into_iter().enumerate() {
        for base in ["ascend910b", "host"] {
            run(&small_ub(base, 2048), &data(seed as u64, r, c), min_blocks);
        }
    }
    // The targets' own UBs: T·K = 32768 keys in one row.
    let a = data(9, 1, 32768);
    for t in ["ascend910b", "ascend950", "host"] {
        run(&Target::builtin(t).expect("target"), &a, 2);
    }
}
