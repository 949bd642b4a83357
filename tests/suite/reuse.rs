//! Memory a compiled program gets back dirty (`kc_runtime::reuse`, the executor's GM arena and unzeroed
//! scratch): every kernel of `kernels/` and every fixture, called several times on one compiled program
//! with that memory poisoned (`0xFF` bytes, NaN in every float dtype), gives the results of a run on
//! fresh, zeroed memory, bit for bit (each call's results are given back for the next call's outputs, and
//! kept intermediates whose launches are apart share memory); and the proof does keep Muon's intermediates
//! and workspaces, and lets its steps' values share memory.

use crate::common;
use crate::tiled::{kernel_names, sizes, tile_at};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use kc_ir::tile::{Loc, Stmt, TensorRole, TileProgram};
use kc_ir::Graph;
use kc_runtime::native;
use std::collections::BTreeMap;

/// A run on fresh memory: no arena, every buffer zeroed.
fn fresh(
    code: &kc_codegen::Compiled,
    tp: &TileProgram,
    g: &Graph,
    args: &Args,
    threads: usize,
) -> Result<kc_runtime::gm::Results, String> {
    let launches = code.native_launches();
    native::run(tp, g, args, &launches, threads, &Limits::default(), None)
        .map(|r| r.0)
        .map_err(|e| format!("{:?}", e[0].code))
}

/// Calls `g` at `dims` on the host four times (seeds, 1 and 2 threads) with reused memory poisoned, each
/// against a fresh run. Returns the plan, or `None` if no template tiles the kernel at these dims.
fn same_as_fresh(g: &Graph, dims: &BTreeMap<String, i64>) -> Option<(TileProgram, kc_runtime::reuse::Plan)> {
    let t = Target::builtin("host").expect("host");
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let b = kc_ir::launch::bind_dims(g, dims).ok()?;
    kc_ir::passes::tile::fuse_and_tile(g, &b, &t).ok()?;
    let (_, tp, _) = tile_at(g, dims, &t);
    let code =
        kc_codegen::compile(&tp, &kc_codegen::Options::default()).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
    code.poison_reused_memory();
    for (seed, threads) in [(1u64, 1usize), (2, 2), (3, 1), (4, 2)] {
        let args = kc_runtime::random::random_args(g, &given, seed).ok()?;
        let want = fresh(&code, &tp, g, &args, threads);
        let got =
            code.run(&tp, g, &args, threads, &Limits::default()).map(|r| r.0).map_err(|e| format!("{:?}", e[0].code));
        let what = format!("{} at {dims:?}, seed {seed}, {threads} threads", g.name);
        match (want, got) {
            (Ok(want), Ok(got)) => {
                for ((name, w), (_, r)) in want.iter().zip(&got) {
                    common::assert_same_bits(&format!("{what}: {name}"), w, r);
                }
                // The next call may write its outputs into these (poisoned first).
                code.recycle(got);
            }
            (w, r) => assert_eq!(w.err(), r.err(), "{what}: the same failure"),
        }
    }
    let plan = code.reuse_plan(&tp).clone();
    // Memory is shared only between kept intermediates (never a tensor read before it is written).
    for (t, o) in plan.share.iter().enumerate().filter_map(|(t, o)| o.map(|o| (t, o))) {
        for u in [t, o] {
            let what = format!("{}: `{}` shares `{}`", g.name, tp.tensors[t].name, tp.tensors[o].name);
            assert!(plan.keep[u] && matches!(tp.tensors[u].role, TensorRole::Intermediate(_)), "{what}");
        }
        assert_eq!(plan.share[o], None, "{}: an owner shares nothing", g.name);
    }
    Some((tp, plan))
}

#[test]
fn reused_memory_gives_the_results_of_fresh_memory() {
    let s = sizes();
    let (mut ran, mut kept, mut unzeroed, mut outputs, mut shared) = (0, 0, 0, 0, 0);
    let mut cases: Vec<(std::path::PathBuf, Vec<BTreeMap<String, i64>>)> = kernel_names()
        .into_iter()
        .map(|k| (common::kernel_path(&k), s.get(&k).map(|z| z.sim.clone()).unwrap_or_default()))
        .collect();
    for d in ["tests/data/ok", "tests/data/diff"] {
        let mut files: Vec<_> = std::fs::read_dir(common::repo_root().join(d))
            .expect("fixtures")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "ker"))
            .collect();
        files.sort();
        cases.extend(files.into_iter().map(|f| (f, Vec::new())));
    }
    for (file, dims) in &cases {
        let prog = common::compile_ok(file);
        for g in &prog.kernels {
            let mut all = dims.clone();
            if all.is_empty() {
                all = [7, 300].iter().map(|&n| g.dims.iter().map(|d| (d.clone(), n)).collect()).collect();
            }
            for d in &all {
                if let Some((tp, plan)) = same_as_fresh(g, d) {
                    ran += 1;
                    kept += (0..tp.tensors.len())
                        .filter(|&t| {
                            plan.keep[t] && !matches!(tp.tensors[t].role, TensorRole::Param(_) | TensorRole::Output(_))
                        })
                        .count();
                    unzeroed += plan.zero.iter().flatten().filter(|z| !**z).count();
                    outputs += plan.outputs.iter().filter(|o| **o).count();
                    shared += plan.share.iter().filter(|o| o.is_some()).count();
                }
            }
        }
    }
    assert!(ran >= 100, "only {ran} programs ran");
    assert!(outputs >= 50, "only {outputs} outputs may be written into recycled memory");
    assert!(kept >= 50 && unzeroed >= 100, "{kept} tensors kept, {unzeroed} buffers unzeroed");
    // Muon at four sizes, moe_route, a fixture: the third and fourth calls ran on shared memory.
    assert!(shared >= 20, "only {shared} intermediates use another's memory");
}

/// Muon at a size where its matmuls go through GM: every intermediate and workspace is proven written
/// before it is read, and the matmul launches' accumulators need no zeroing.
#[test]
fn muon_keeps_its_intermediates_and_workspaces() {
    let g = common::compile_ok(common::kernel_path("muon_orthogonalize")).kernels.remove(0);
    let dims: BTreeMap<String, i64> = [("M".to_string(), 33), ("N".to_string(), 2100)].into_iter().collect();
    let (tp, plan) = same_as_fresh(&g, &dims).expect("muon tiles");
    let mut workspaces = 0;
    for (t, x) in tp.tensors.iter().enumerate() {
        match x.role {
            TensorRole::Intermediate(_) => assert!(plan.keep[t], "`{}` is kept", x.name),
            TensorRole::Workspace { .. } => {
                workspaces += 1;
                assert!(plan.keep[t], "`{}` is kept", x.name);
            }
            _ => {}
        }
    }
    assert!(workspaces >= 5, "the matmuls' epilogues go through workspaces");
    for (l, z) in tp.launches.iter().zip(&plan.zero) {
        for (b, z) in l.buffers.iter().zip(z) {
            if b.name.starts_with("c_l0c") {
                assert!(!z, "{}: `{}` is written (mmad without accumulate) before it is read", l.name, b.name);
            }
        }
    }
}

/// Muon at a size where its products are matmul launches (`x`, `a`, `b` in GM every step): the steps'
/// values share memory where their launches are apart, and the reused, shared memory (poisoned) gives
/// the results of fresh memory bit for bit (`same_as_fresh`, 1 and 2 threads; one block, and partial
/// blocks of the triangles).
#[test]
fn muon_steps_share_memory() {
    let g = common::compile_ok(common::kernel_path("muon_orthogonalize")).kernels.remove(0);
    for m in [33, 300] {
        let dims: BTreeMap<String, i64> = [("M".to_string(), m), ("N".to_string(), 4096)].into_iter().collect();
        let (tp, plan) = same_as_fresh(&g, &dims).expect("muon tiles");
        steps_share(&tp, &plan);
    }
}

/// [`muon_steps_share_memory`]'s checks of the plan.
fn steps_share(tp: &TileProgram, plan: &kc_runtime::reuse::Plan) {
    // The steps' `x`, `a` and `b` use the memory of the same value two steps (`x`) or one step (`a`, `b`)
    // earlier: their launches are apart. `x.1` is written by the launch that reads `x` last (`b·x`), so
    // it has memory of its own; workspaces, parameters and outputs never share.
    // The step's value of `name` (step 0 the first; the tile program names every step's value alike).
    let id = |name: &str, step: usize| {
        let mut at = tp.tensors.iter().enumerate().filter(|(_, x)| x.name == name).map(|(t, _)| t);
        at.nth(step).unwrap_or_else(|| panic!("`{name}` of step {step}"))
    };
    for ((t, s), (o, so)) in [
        (("x", 2), ("x", 0)),
        (("x", 4), ("x", 0)),
        (("x", 3), ("x", 1)),
        (("a", 1), ("a", 0)),
        (("a", 4), ("a", 0)),
        (("b", 4), ("b", 0)),
    ] {
        assert_eq!(plan.share[id(t, s)], Some(id(o, so)), "`{t}` of step {s} uses the memory of `{o}` of step {so}");
    }
    for t in [id("x", 0), id("x", 1), id("a", 0), id("b", 0), id("g", 0), id("o", 0)] {
        assert_eq!(plan.share[t], None, "`{}` has memory of its own", tp.tensors[t].name);
    }
    for (t, x) in tp.tensors.iter().enumerate() {
        if let Some(o) = plan.share[t] {
            assert!(matches!(x.role, TensorRole::Intermediate(_)), "`{}` shares: an intermediate", x.name);
            assert_eq!((x.dtype, &x.shape), (tp.tensors[o].dtype, &tp.tensors[o].shape), "`{}`", x.name);
        }
    }
}

/// Removes the copies for which `drop` holds, in loops and branches too.
fn drop_copies(body: &mut Vec<Stmt>, drop: &dyn Fn(&Loc, &Loc) -> bool) {
    body.retain(|s| !matches!(s, Stmt::Copy { src, dst, .. } if drop(&src.loc, &dst.loc)));
    for s in body.iter_mut() {
        if let Stmt::For { body, .. } | Stmt::If { then: body, .. } = s {
            drop_copies(body, drop);
        }
    }
}

/// Programs that do read memory before writing it (a tile program with a copy taken out: a buffer that no
/// copy fills, an intermediate that no launch writes) see zeros on every call, poisoned or not: the proof
/// finds those reads and the executor zeroes that memory.
#[test]
fn memory_read_before_it_is_written_is_zeroed_on_every_call() {
    let g = common::compile_ok_src(
        "reuse_unwritten",
        "kernel k(x: f32[N]) -> y: f32[N] {\n    #[unfused]\n    let t: f32 = x * 2.0;\n    y = t + 1.0;\n}\n",
    )
    .kernels
    .remove(0);
    let dims: BTreeMap<String, i64> = [("N".to_string(), 1000)].into_iter().collect();
    let (_, tp, _) = tile_at(&g, &dims, &Target::builtin("host").expect("host"));
    let t = tp.tensors.iter().position(|x| matches!(x.role, TensorRole::Intermediate(_))).expect("t is stored");
    assert_eq!(tp.launches.len(), 2, "t is written by one launch and read by the next");
    for case in ["the copy of x into its buffer", "the copy of t into GM"] {
        let mut bad = tp.clone();
        for l in &mut bad.launches {
            drop_copies(&mut l.vector, &|src, dst| match case {
                "the copy of x into its buffer" => matches!(src, Loc::Gm(kc_ir::tile::TensorId(0))),
                _ => *dst == Loc::Gm(kc_ir::tile::TensorId(t as u32)),
            });
        }
        let code = kc_codegen::compile(&bad, &kc_codegen::Options::default()).expect("compiles");
        code.poison_reused_memory();
        let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
        for (seed, threads) in [(1u64, 1usize), (2, 2), (3, 1)] {
            let args = kc_runtime::random::random_args(&g, &given, seed).expect("args");
            let (r, _) = code.run(&bad, &g, &args, threads, &Limits::default()).expect("runs");
            let y = r[0].1.to_f64_vec();
            assert!(y.iter().all(|&v| v == 1.0), "without {case}, call {seed}: y = 0 * 2 + 1, not {:?}", &y[..4]);
        }
        let plan = code.reuse_plan(&bad);
        match case {
            "the copy of x into its buffer" => assert!(plan.zero[0].iter().any(|z| *z), "x's buffer is zeroed"),
            _ => assert!(!plan.keep[t], "t is not kept"),
        }
    }
}

/// An output the program does not write whole (a tile program whose copies into `y` cover only some of
/// its rows) is never written into recycled memory: the rows it leaves alone stay zeros on every call,
/// with the earlier results given back (and poisoned); the same program writing `y` whole does reuse them.
#[test]
fn outputs_not_written_whole_get_fresh_memory() {
    let g = common::compile_ok_src("reuse_partial", "kernel k(x: f32[R, C]) -> y: f32[R, C] {\n    y = x * 2.0;\n}\n")
        .kernels
        .remove(0);
    let dims: BTreeMap<String, i64> = [("R".to_string(), 100), ("C".to_string(), 3000)].into_iter().collect();
    let (_, tp, _) = tile_at(&g, &dims, &Target::builtin("host").expect("host"));
    let y = tp.tensors.iter().position(|x| matches!(x.role, TensorRole::Output(_))).expect("y");
    // The copies into `y` inside branches (the second block of each double-buffered step) are taken out:
    // some rows of `y` are written, the others never.
    let mut bad = tp.clone();
    let mut dropped = 0;
    for l in &mut bad.launches {
        let before = count_copies(&l.vector);
        drop_copies_in_branches(&mut l.vector, y as u32);
        dropped += before - count_copies(&l.vector);
    }
    assert!(dropped > 0, "the program copies into y in a branch");
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    for (prog, whole) in [(&tp, true), (&bad, false)] {
        let code = kc_codegen::compile(prog, &kc_codegen::Options::default()).expect("compiles");
        code.poison_reused_memory();
        let mut ptrs = Vec::new();
        for (seed, threads) in [(1u64, 1usize), (2, 2), (3, 1), (4, 1)] {
            let args = kc_runtime::random::random_args(&g, &given, seed).expect("args");
            let (r, _) = code.run(prog, &g, &args, threads, &Limits::default()).expect("runs");
            let (x, got) = (args.tensors["x"].to_f64_vec(), r[0].1.to_f64_vec());
            let (mut doubled, mut zeros) = (0, 0);
            for (i, (&a, &b)) in x.iter().zip(&got).enumerate() {
                // Each element is written (twice x) or left alone (zero), never poison from a recycled buffer.
                assert!(b == a * 2.0 || (!whole && b == 0.0), "whole {whole}, call {seed}, element {i}: {b}");
                doubled += usize::from(b == a * 2.0 && a != 0.0);
                zeros += usize::from(b == 0.0 && a != 0.0);
            }
            assert!(doubled > 0 && (whole || zeros > 0), "whole {whole}: {doubled} written, {zeros} left zero");
            if let kc_ir::tensor::TensorData::F32(v) = &r[0].1.data {
                ptrs.push(v.as_ptr() as usize);
            }
            code.recycle(r);
        }
        assert_eq!(code.reuse_plan(prog).outputs[y], whole, "y may be recycled: {whole}");
        let reused = ptrs.windows(2).any(|w| w[0] == w[1]);
        assert_eq!(reused, whole, "a call wrote y into the memory of the previous call's y: {whole}");
    }
}

fn drop_copies_in_branches(body: &mut [Stmt], y: u32) {
    for s in body.iter_mut() {
        match s {
            Stmt::If { then, .. } => drop_copies(then, &|_, dst| *dst == Loc::Gm(kc_ir::tile::TensorId(y))),
            Stmt::For { body, .. } => drop_copies_in_branches(body, y),
            _ => {}
        }
    }
}

fn count_copies(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::Copy { .. } => 1,
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => count_copies(body),
            _ => 0,
        })
        .sum()
}

/// A grouped matmul's control reads its `offsets`: its plan is computed for each call's offsets (and found
/// again by their exact contents), keeps `h` and the workspace and writes `ys` into recycled memory, and
/// the results on reused, poisoned memory are those of fresh memory bit for bit, and the interpreter's,
/// as the offsets change from call to call (experts left empty, all rows in one expert). A plan for one content is never another's
/// (each equals the walk of its own contents). No accumulator is zeroed, partial row tiles or not: the host's hand-off moves only
/// the tile's rows (`h`'s mmads accumulate in the workspace, `ys`'s copies take `rows`), so nothing reads rows no mmad wrote
/// (before session 14 a partial tile's whole-block copy did, and its accumulator was zeroed).
#[test]
fn grouped_programs_are_planned_for_each_calls_offsets() {
    let g = common::compile_ok(common::kernel_path("moe_experts")).kernels.remove(0);
    let dims: BTreeMap<String, i64> =
        [("R", 512), ("M", 64), ("F", 48), ("E", 4)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let (_, tp, _) = tile_at(&g, &dims, &Target::builtin("host").expect("host"));
    let code = kc_codegen::compile(&tp, &kc_codegen::Options::default()).expect("compiles");
    code.poison_reused_memory();
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let mut args = kc_runtime::random::random_args(&g, &given, 5).expect("args");
    let role = |f: &dyn Fn(&TensorRole) -> bool| tp.tensors.iter().position(|x| f(&x.role)).expect("tensor");
    let h = role(&|r| matches!(r, TensorRole::Intermediate(_)));
    let ws = role(&|r| matches!(r, TensorRole::Workspace { .. }));
    let ys = role(&|r| matches!(r, TensorRole::Output(_)));
    // Whether some launch's accumulator (an L0C buffer) is zeroed.
    let acc_zeroed = |p: &kc_runtime::reuse::Plan| {
        tp.launches.iter().zip(&p.zero).any(|(l, z)| l.buffers.iter().zip(z).any(|(b, z)| b.name.contains("l0c") && *z))
    };
    let full = vec![0, 256, 256, 512, 512];
    // (what, offsets, whether some row tile is partial: 512 rows in tiles of up to 256 per expert).
    let cases: [(&str, Vec<i32>, bool); 7] = [
        ("full tiles", full.clone(), false),
        ("uneven", vec![0, 100, 260, 300, 512], true),
        ("full tiles again", full.clone(), false),
        ("all rows in one expert", vec![0, 0, 512, 512, 512], false),
        ("all rows in the last expert", vec![0, 0, 0, 0, 512], false),
        ("empty experts in the middle", vec![0, 300, 300, 300, 512], true),
        ("uneven again", vec![0, 100, 260, 300, 512], true),
    ];
    for (i, (what, offsets, partial)) in cases.iter().enumerate() {
        args.tensors
            .insert("offsets".into(), kc_ir::tensor::Tensor::from_i32(vec![5], offsets.clone()).expect("offsets"));
        let threads = 1 + i % 2;
        let want = fresh(&code, &tp, &g, &args, threads).expect("fresh run");
        let (got, _) = code.run(&tp, &g, &args, threads, &Limits::default()).expect("runs");
        let interp = kc_ir::interp::run(&g, &args).expect("interpreter");
        for (((name, w), (_, r)), (_, x)) in want.iter().zip(&got).zip(&interp) {
            common::assert_same_bits(&format!("{what}: {name}"), w, r);
            crate::tiled::assert_matches_within(&format!("{what}: {name} vs the interpreter"), r, x, 0.25);
        }
        code.recycle(got);
        let plan = code.reuse_plan_for(&tp, &g, &args);
        assert!(plan.keep[h] && plan.keep[ws], "{what}: h and the workspace are kept");
        assert!(plan.outputs[ys], "{what}: ys is written whole before it is read");
        assert!(!acc_zeroed(&plan), "{what} (partial tiles: {partial}): no accumulator needs zeroing");
        assert_eq!(*plan, kc_runtime::reuse::plan_with_data(&tp, &walked(&code), &offsets_data(&tp, &args)).0);
    }
    // Without the data, the walk cannot follow the control.
    assert_eq!(*code.reuse_plan(&tp), kc_runtime::reuse::Plan::none(&tp));
}

fn walked(code: &kc_codegen::Compiled) -> Vec<kc_runtime::inplace::Compiled<'_>> {
    code.launches
        .iter()
        .map(|l| kc_runtime::inplace::Compiled { cube: &l.bodies.0, vector: &l.bodies.1, sites: &l.sites })
        .collect()
}

/// The `offsets` argument as the walk's data.
fn offsets_data<'a>(
    tp: &TileProgram,
    args: &'a Args,
) -> BTreeMap<kc_ir::tile::TensorId, &'a kc_ir::tensor::TensorData> {
    let t = tp.tensors.iter().position(|x| x.name == "offsets").expect("offsets");
    [(kc_ir::tile::TensorId(t as u32), &args.tensors["offsets"].data)].into_iter().collect()
}

/// Causal attention at a size where its workspaces hold tens of thousands of row windows (the hand-offs of
/// S, P and P·V between a cube core and its vector cores): the proof compares each read with the writes
/// that meet it, so every workspace is kept (a pairwise comparison of all reads with all writes gave up
/// past its budget, and the workspaces, 38 MB at the benchmark's size, were zeroed on every call); the
/// calls on poisoned reused memory give the fresh runs' bits.
#[test]
fn attention_keeps_its_workspaces() {
    let g = common::compile_ok(common::kernel_path("attention")).kernels.remove(0);
    let dims: BTreeMap<String, i64> = [("B", 1), ("H", 2), ("G", 1), ("S", 2048), ("T", 2048), ("D", 128)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let (_, tp, _) = tile_at(&g, &dims, &Target::builtin("host").expect("host"));
    let code = kc_codegen::compile(&tp, &kc_codegen::Options::default()).expect("compiles");
    code.poison_reused_memory();
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let args = kc_runtime::random::random_args(&g, &given, 3).expect("args");
    let want = fresh(&code, &tp, &g, &args, 1).expect("fresh run");
    for threads in [1, 2, 1] {
        let (got, _) = code.run(&tp, &g, &args, threads, &Limits::default()).expect("runs");
        for ((name, w), (_, r)) in want.iter().zip(&got) {
            common::assert_same_bits(&format!("{threads} threads: {name}"), w, r);
        }
        code.recycle(got);
    }
    let plan = code.reuse_plan_for(&tp, &g, &args);
    let mut workspaces = 0;
    for (t, x) in tp.tensors.iter().enumerate() {
        if let TensorRole::Workspace { .. } = x.role {
            workspaces += 1;
            assert!(plan.keep[t], "`{}` is kept", x.name);
        }
    }
    assert_eq!(workspaces, 3, "S, P and P·V go through workspaces");
}
