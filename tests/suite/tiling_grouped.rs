//! The grouped matmul template (`moe_experts` on the cube), end to end: fuse → tile → verify → simulate →
//! compare with the interpreter, on both targets, at awkward shapes and with random, skewed, empty and
//! out-of-range expert offsets; plus the counted cube work and the absence of a per-row structure.

use crate::common;
use kc_ir::diag::Code;
use kc_ir::launch::Args;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::target::Target;
use kc_ir::tile::{Pipe, TileProgram};
use kc_ir::{DType, Graph, Tensor};

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

fn kernel() -> Graph {
    common::kernel("moe_experts", "moe_experts")
}

/// Random inputs at `(R, M, F, E)`, with `offsets` if given (else `random_args`' sorted offsets over 0..R).
fn inputs(g: &Graph, (r, m, f, e): (i64, i64, i64, i64), offsets: Option<Vec<i32>>, seed: u64) -> Args {
    let mut given = Args::default();
    for (k, x) in [("R", r), ("M", m), ("F", f), ("E", e)] {
        given.dims.insert(k.to_string(), x);
    }
    if let Some(o) = offsets {
        given.tensors.insert("offsets".into(), common::i32_tensor(&[o.len()], o));
    }
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

fn program(g: &Graph, args: &Args, target: &Target) -> TileProgram {
    common::tile_kernel(g, args, target)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Per element of `ys`, `Σ_f |h[r, f] · w2[e, m, f]|` (in f64; `e` the row's expert for sorted offsets).
fn magnitudes(args: &Args, (r, m, f, e): (i64, i64, i64, i64)) -> Vec<f64> {
    let (r, m, f) = (r as usize, m as usize, f as usize);
    let t = |n: &str| f64s(&args.tensors[n]);
    let (xs, w1, w3, w2) = (t("xs"), t("w1"), t("w3"), t("w2"));
    let off = t("offsets");
    let mut out = vec![0.0; r * m];
    for row in 0..r {
        let ex = (0..e as usize).rev().find(|&x| off[x] <= row as f64).unwrap_or(0);
        let h: Vec<f64> = (0..f)
            .map(|j| {
                let dot = |w: &[f64]| (0..m).map(|k| xs[row * m + k] * w[(ex * f + j) * m + k]).sum::<f64>();
                silu(dot(&w1)) * dot(&w3)
            })
            .collect();
        for col in 0..m {
            out[row * m + col] = (0..f).map(|j| (h[j] * w2[(ex * m + col) * f + j]).abs()).sum();
        }
    }
    out
}

/// Tiles, verifies, simulates and compares `ys` with the interpreter; returns the simulator's statistics.
///
/// Tolerance: the cube multiplies bf16 operands, so `h` (f32 in the graph) is rounded to bf16 before the
/// second matmul: each term `h·w2` is off by at most 2^-9 of itself, the sum by 2^-9 `Σ|h·w2|` (we allow
/// 2^-8 for the f32 arithmetic). Both sides then round the f32 sum to bf16, which may land one bf16 ulp
/// (2^-7 of the value) apart. Everything before the rounding of `h` is bit-exact (k-ordered f32 sums).
fn check(dims: (i64, i64, i64, i64), offsets: Option<Vec<i32>>, target: &str, seed: u64) -> kc_runtime::sim::Stats {
    let g = kernel();
    let target = Target::builtin(target).expect("target");
    let args = inputs(&g, dims, offsets, seed);
    let tp = program(&g, &args, &target);
    let want = common::run(&g, &args);
    let (got, stats) = kc_runtime::sim::run_with(&tp, &g, &args, &Default::default())
        .unwrap_or_else(|e| panic!("sim at {dims:?} on {}: {e:?}", target.name));
    let (w, s) = (f64s(&want[0].1), f64s(&got[0].1));
    let mag = magnitudes(&args, dims);
    assert_eq!(w.len(), s.len());
    for (i, (a, b)) in w.iter().zip(&s).enumerate() {
        let tol = mag[i] / 256.0 + a.abs() / 128.0 + 1e-6;
        assert!(
            (a - b).abs() <= tol,
            "ys[{i}] at {dims:?} on {} (offsets {:?}): interp {a} vs sim {b} (tol {tol})",
            target.name,
            f64s(&args.tensors["offsets"])
        );
    }
    let (r, m, f, _) = dims;
    let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
    assert_eq!(macs, 3 * (r * m * f) as u64, "cube MACs at {dims:?} on {}", target.name);
    stats
}

#[test]
fn random_offsets_at_awkward_shapes() {
    let shapes = [(1, 1, 1, 1), (7, 5, 3, 2), (13, 17, 19, 3), (37, 20, 24, 5), (129, 16, 9, 2), (23, 33, 31, 7)];
    for (i, dims) in shapes.into_iter().enumerate() {
        for t in TARGETS {
            check(dims, None, t, 11 + i as u64);
        }
    }
}

/// Several k steps (the double-buffered loop) and several n-blocks in both launches.
#[test]
fn several_k_steps_and_n_blocks() {
    for (i, dims) in [(5, 300, 140, 2), (20, 130, 260, 3)].into_iter().enumerate() {
        for t in TARGETS {
            check(dims, None, t, 40 + i as u64);
        }
    }
}

#[test]
fn skewed_and_empty_experts() {
    // The dims `(R, M, F, E)`, named so that the cases' type reads at a glance.
    type Dims = (i64, i64, i64, i64);
    let r = 41;
    let cases: Vec<(Dims, Vec<i32>)> = vec![
        // Every row in one expert: first, middle, last.
        ((r, 18, 20, 4), vec![0, r as i32, r as i32, r as i32, r as i32]),
        ((r, 18, 20, 4), vec![0, 0, r as i32, r as i32, r as i32]),
        ((r, 18, 20, 4), vec![0, 0, 0, 0, r as i32]),
        // An empty expert between two others; uneven sizes.
        ((r, 7, 11, 3), vec![0, 17, 17, r as i32]),
        ((r, 7, 11, 5), vec![0, 1, 2, 2, 40, r as i32]),
        // One expert.
        ((r, 16, 32, 1), vec![0, r as i32]),
        // Offsets reaching beyond the rows on both sides (still every row inside one segment).
        ((r, 9, 5, 3), vec![-4, 10, 30, r as i32 + 6]),
        // Just above a row tile: all 129 rows in one expert, and a split at the tile edge.
        ((129, 5, 6, 2), vec![0, 0, 129]),
        ((129, 5, 6, 2), vec![0, 128, 129]),
    ];
    for (i, (dims, off)) in cases.into_iter().enumerate() {
        for t in TARGETS {
            check(dims, Some(off.clone()), t, 100 + i as u64);
        }
    }
}

/// Offsets that leave a row outside every segment, and offsets that are not sorted (inside the rows' range
/// or not): the interpreter stops with `IndexOutOfRange`, and so do the simulator and the JIT, at the
/// segment's span (before this check, unsorted offsets gave the JIT other rows than the interpreter), saying
/// what is wrong with the offsets as the interpreter does (the first unsorted pair), not a gather's index.
#[test]
fn rows_outside_the_offsets_are_the_interpreters_error() {
    let g = kernel();
    let dims = (9, 5, 6, 3);
    let unsorted = [vec![0, 5, 3, 9], vec![0, 9, 0, 9], vec![0, 2, 1, 9], vec![-7, 9, 4, 10]];
    let outside = [vec![1, 3, 5, 9], vec![0, 3, 5, 8], vec![0, 0, 0, 0], vec![2, 2, 2, 2]];
    for (k, off) in outside.iter().chain(&unsorted).enumerate() {
        let args = inputs(&g, dims, Some(off.clone()), 5);
        let ie = kc_ir::interp::run(&g, &args).expect_err("the interpreter refuses the offsets");
        assert_eq!(ie[0].code, Code::IndexOutOfRange, "{off:?}");
        // The tensor's name as the interpreter gives it, and what the compiled checks must say.
        let name = ie[0].message.split('`').nth(1).expect("a name in backticks").to_string();
        let want = if k >= outside.len() {
            assert!(ie[0].message.contains("not sorted"), "{off:?}: {}", ie[0].message);
            let i = (0..off.len() - 1).find(|&i| off[i] > off[i + 1]).expect("an unsorted pair");
            assert!(ie[0].message.contains(&format!("element {i} is ")), "{off:?}: {}", ie[0].message);
            format!("the offsets of `{name}` are not sorted: element {i} is greater than element {}", i + 1)
        } else {
            format!("rows 0..9 of the grouped matmul are not all inside the range offsets[0]..offsets[3] of `{name}`")
        };
        for t in TARGETS {
            let target = Target::builtin(t).expect("target");
            let tp = program(&g, &args, &target);
            let se = kc_runtime::sim::run(&tp, &g, &args).expect_err("the simulator refuses the offsets");
            assert_eq!(se[0].code, Code::IndexOutOfRange, "{off:?} on {t}: {se:?}");
            assert_eq!(se[0].primary.span, ie[0].primary.span, "{off:?} on {t}: the segment's span");
            assert_eq!(se[0].message, want, "{off:?} on {t}");
        }
        let target = Target::builtin("host").expect("target");
        let tp = program(&g, &args, &target);
        let compiled = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("compile for {off:?}: {e:?}"));
        for threads in [1, 2] {
            let je =
                compiled.run(&tp, &g, &args, threads, &Default::default()).expect_err("the JIT refuses the offsets");
            assert_eq!(je[0].code, Code::IndexOutOfRange, "{off:?}, {threads} threads: {je:?}");
            assert_eq!(je[0].primary.span, ie[0].primary.span, "{off:?}: the segment's span");
            assert_eq!(je[0].message, want, "{off:?}, {threads} threads");
        }
    }
}

/// The cube does each row's work once: 3·R·M·F multiply-accumulates whatever the split over experts
/// (checked in `check`), here with many experts and few rows (most tiles partial).
#[test]
fn cube_macs_are_three_r_m_f() {
    for t in TARGETS {
        check((10, 24, 40, 8), Some(vec![0, 1, 1, 4, 4, 5, 9, 9, 10]), t, 3);
    }
}

/// No per-row structure: the expert ids are not stored, fusion makes one group reading `offsets`, and an
/// expert with many rows is multiplied in row tiles (far fewer cube statements than rows).
#[test]
fn tiles_of_rows_not_rows() {
    let g = kernel();
    let f = fuse(&g, &FusionConfig::default());
    assert_eq!(f.groups.len(), 1, "one group");
    assert_eq!(f.groups[0].kind, GroupKind::GroupedMatmul);
    let offsets = g.params.iter().position(|p| p.name == "offsets").expect("offsets");
    let off_node = g.nodes.iter().position(|n| n.kind == kc_ir::graph::NodeKind::Param(offsets)).expect("node");
    assert!(f.groups[0].inputs.contains(&kc_ir::graph::ValueId(off_node as u32)), "the group reads offsets");
    let r = 100;
    for t in TARGETS {
        let target = Target::builtin(t).expect("target");
        let args = inputs(&g, (r, 16, 16, 3), Some(vec![0, 0, r as i32, r as i32]), 1);
        let tp = program(&g, &args, &target);
        for tensor in &tp.tensors {
            assert!(
                !(tensor.dtype == DType::I32 && tensor.shape == [r as u64]),
                "an expert-id tensor `{}` in GM on {t}",
                tensor.name
            );
        }
        let stats = check((r, 16, 16, 3), Some(vec![0, 0, r as i32, r as i32]), t, 1);
        for l in &stats.launches {
            let m = l.stmts.get(&Pipe::M).copied().unwrap_or(0);
            assert!(m < r as u64, "{}: {m} cube statements for {r} rows of one expert on {t}", l.name);
        }
    }
}

/// The JIT on the grouped matmul: the host reads the weights' transposing loads in place (the matrix unit's
/// transposed-B mode, `kc_codegen::forward::transposed_b`). Compiled for the host and an NPU target, run on
/// 1 and 2 threads, compared with the interpreter as `check` does, at awkward shapes (k and n not multiples
/// of 16 or 32, one-row and empty segments, several k steps and n-blocks).
fn check_jit(dims: (i64, i64, i64, i64), offsets: Option<Vec<i32>>, seed: u64) {
    let g = kernel();
    let args = inputs(&g, dims, offsets, seed);
    let want = common::run(&g, &args);
    let w = f64s(&want[0].1);
    let mag = magnitudes(&args, dims);
    for t in ["host", "ascend910b"] {
        let target = Target::builtin(t).expect("target");
        let tp = program(&g, &args, &target);
        let compiled = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("compile at {dims:?} on {t}: {e:?}"));
        for threads in [1, 2] {
            let (got, _) = compiled
                .run(&tp, &g, &args, threads, &Default::default())
                .unwrap_or_else(|e| panic!("jit at {dims:?} on {t}, {threads} threads: {e:?}"));
            let s = f64s(&got[0].1);
            assert_eq!(w.len(), s.len());
            for (i, (a, b)) in w.iter().zip(&s).enumerate() {
                let tol = mag[i] / 256.0 + a.abs() / 128.0 + 1e-6;
                assert!(
                    (a - b).abs() <= tol,
                    "ys[{i}] at {dims:?} on {t}, {threads} threads (offsets {:?}): interp {a} vs jit {b} (tol {tol})",
                    f64s(&args.tensors["offsets"])
                );
            }
        }
    }
}

#[test]
fn jit_matches_interpreter_at_awkward_shapes() {
    // The dims `(R, M, F, E)`, named so that the cases' type reads at a glance.
    type Dims = (i64, i64, i64, i64);
    let r = 41;
    let cases: Vec<(Dims, Option<Vec<i32>>)> = vec![
        ((1, 1, 1, 1), None),
        ((13, 17, 19, 3), None),
        ((37, 33, 47, 5), None),
        // Several k steps and n-blocks, k and n not multiples of 16.
        ((20, 300, 270, 3), None),
        ((5, 530, 140, 2), None),
        // One-row and empty segments.
        ((r, 18, 20, 5), Some(vec![0, 1, 1, 2, 40, r as i32])),
        ((r, 33, 17, 4), Some(vec![0, 0, 0, r as i32, r as i32])),
        ((129, 40, 36, 2), Some(vec![0, 128, 129])),
    ];
    for (i, (dims, off)) in cases.into_iter().enumerate() {
        check_jit(dims, off, 300 + i as u64);
    }
}

/// The host's programs of the grouped matmul read every weight tile transposed in place: each cube launch
/// has mmads whose `b` the matrix unit reads from the weights' rows, and no transposing loop is left to run.
#[test]
fn host_reads_the_weights_transposed_in_place() {
    let g = kernel();
    let args = inputs(&g, (40, 70, 50, 3), None, 9);
    for t in ["host", "ascend910b"] {
        let target = Target::builtin(t).expect("target");
        let tp = program(&g, &args, &target);
        for l in &tp.launches {
            let body = kc_codegen::forward::forward(&tp, l, &l.cube);
            let tr = kc_codegen::forward::transposed_b(&tp, l, &body);
            let mmads = count_mmads(&body);
            assert!(mmads > 0, "{}: no mmads on {t}", l.name);
            assert_eq!(tr.mmads.len(), mmads, "{}: every mmad's b read transposed in place on {t}", l.name);
            assert_eq!(tr.loops.len(), mmads, "{}: one skipped loop per mmad on {t}", l.name);
        }
    }
}

/// Whether a loop over register `outer` holds (at any depth) a loop over register `inner`.
fn nested(l: &kc_ir::tile::Launch, body: &[kc_ir::tile::Stmt], outer: &str, inner: &str) -> bool {
    use kc_ir::tile::Stmt;
    fn has(l: &kc_ir::tile::Launch, body: &[Stmt], name: &str) -> bool {
        body.iter().any(|s| match s {
            Stmt::For { var, body, .. } => l.svars[var.0 as usize] == name || has(l, body, name),
            Stmt::If { then, .. } => has(l, then, name),
            _ => false,
        })
    }
    body.iter().any(|s| match s {
        Stmt::For { var, body, .. } => {
            (l.svars[var.0 as usize] == outer && has(l, body, inner)) || nested(l, body, outer, inner)
        }
        Stmt::If { then, .. } => nested(l, then, outer, inner),
        _ => false,
    })
}

/// On the host (contiguous runs of items) an expert's row tiles are walked inside its n-blocks, so a core's
/// consecutive items read the same weight panels, which the matrix unit packs once and keeps while the
/// expert's row tiles pass (`packed_bt` in `runtime/src/host/mmad.rs`); on the NPU targets the n-blocks of a
/// row tile stay innermost. The JIT matches the interpreter with an expert of two row tiles (a whole and a
/// partial one) beside one of a partial tile, two n-blocks and two k steps, on 1 and 2 threads.
#[test]
fn host_walks_row_tiles_inside_n_blocks() {
    let g = kernel();
    let args = inputs(&g, (40, 70, 50, 3), None, 9);
    for t in ["host", "ascend910b"] {
        let target = Target::builtin(t).expect("target");
        let tp = program(&g, &args, &target);
        let host = t == "host";
        for l in &tp.launches {
            assert_eq!(nested(l, &l.cube, "nb", "t0"), host, "{}: cube walk on {t}", l.name);
            assert_eq!(nested(l, &l.cube, "t0", "nb"), !host, "{}: cube walk on {t}", l.name);
            if !l.vector.is_empty() {
                assert_eq!(nested(l, &l.vector, "vnb", "vt0"), host, "{}: vector walk on {t}", l.name);
            }
        }
    }
    check_jit((300, 264, 140, 2), Some(vec![0, 290, 300]), 77);
}

fn count_mmads(body: &[kc_ir::tile::Stmt]) -> usize {
    use kc_ir::tile::Stmt;
    body.iter()
        .map(|s| match s {
            Stmt::Mmad { .. } => 1,
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => count_mmads(body),
            _ => 0,
        })
        .sum()
}

/// A target's `grouped_rows` is a cap, not a demand: row tiles of up to 1024 rows on the host shrink until
/// the mixed launch's accumulators fit L0C and its vector cores' share of them fits UB, so the experts tile
/// (and verify) at the benchmark's size whatever the setting; the host's own 256 keeps its whole tiles.
#[test]
fn grouped_row_tiles_fit_whatever_the_cap() {
    let g = common::kernel("moe_experts", "moe_experts");
    let dims: std::collections::BTreeMap<String, i64> =
        [("R", 32768), ("M", 2048), ("F", 1024), ("E", 64)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for cap in [128u32, 256, 512, 1024] {
        let mut target = Target::builtin("host").expect("host");
        target.grouped_rows = Some(cap);
        let (_, tp, _) = crate::tiled::tile_at(&g, &dims, &target);
        let rows = tp
            .launches
            .iter()
            .flat_map(|l| &l.buffers)
            .filter(|b| b.mem == kc_ir::tile::Mem::L0C)
            .map(|b| b.shape[0])
            .max()
            .expect("an accumulator in L0C");
        assert!(rows <= u64::from(cap), "cap {cap}: {rows}-row tiles");
        if cap <= 256 {
            assert_eq!(rows, u64::from(cap), "cap {cap}: the tiles shrank ({rows} rows) though they fit");
        }
    }
}

/// On the host, launch 1's item waits for its workspace area before its first mmad, and its FixPipe copies
/// move only the tile's rows (the mmads' `m`): copy forwarding then has both matmuls' mmad chains (the first
/// k step, then the loop of the others) accumulate in the workspace area itself, and no copy out of L0C is
/// left; the vector cores read, evaluate and store only the `rc` rows of their share. On an NPU target the
/// wait stays just before the copies (the cube computes while its vector cores read the other area) and the
/// copies move whole `bm`-row blocks. The JIT matches the interpreter with whole and partial row tiles, on 1
/// and 2 threads (`check_jit`).
#[test]
fn host_accumulates_h_in_its_workspace() {
    use kc_codegen::forward::count;
    use kc_ir::tile::{Loc, Mem, Region, Stmt};
    let g = kernel();
    let dims = (300, 264, 140, 2);
    let args = inputs(&g, dims, Some(vec![0, 290, 300]), 78);
    for t in ["host", "ascend910b"] {
        let host = t == "host";
        let target = Target::builtin(t).expect("target");
        let tp = program(&g, &args, &target);
        let l = tp.launches.iter().find(|l| !l.vector.is_empty()).expect("the mixed launch of h");
        let body = kc_codegen::forward::forward(&tp, l, &l.cube);
        let l0c = |r: &Region| matches!(r.loc, Loc::Buf { buf, .. } if l.buffers[buf.0 as usize].mem == Mem::L0C);
        let out_of_l0c = count(&body, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Fix, src, .. } if l0c(src)));
        let in_gm = count(&body, &|s| matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(_), .. }, .. }));
        let mmads = count_mmads(&body);
        assert_eq!(mmads, 4, "{t}: two matmuls, a first k step and a loop of the others");
        assert_eq!(out_of_l0c, if host { 0 } else { 2 }, "{t}: copies out of L0C");
        assert_eq!(in_gm, if host { mmads } else { 0 }, "{t}: mmads accumulating in the workspace");
        // The vector cores' statement over their share: `rc` rows on the host, the static extent elsewhere.
        let rc = l.svars.iter().position(|n| n == "rc").expect("rc") as u32;
        let rows_rc =
            count(&l.vector, &|s| matches!(s, Stmt::Vector { rows: kc_ir::tile::SExpr::Var(v), .. } if v.0 == rc));
        assert_eq!(rows_rc, usize::from(host), "{t}: the epilogue over the tile's rows");
    }
    check_jit(dims, Some(vec![0, 290, 300]), 78);
    check_jit((600, 64, 40, 3), Some(vec![0, 256, 270, 600]), 79);
}
