//! Row-wise tiling, end to end: a kernel whose vector groups reduce along their rows (RMSNorm, softmax,
//! LayerNorm, RMSNorm backward's row group) is fused, each group tiled with `rows`, the tile program
//! verified and run by the simulator, and the results compared with the reference interpreter bit for bit
//! (the tile reductions sum each row in column order, as the interpreter does).

use crate::common;
use kc_ir::passes::fuse::{fuse, FusionConfig};
use kc_ir::passes::tile::{group_order, plan_gm, rows};
use kc_ir::target::Target;
use kc_ir::tile::{Stmt, TileProgram};
use kc_ir::Graph;

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// Tiles every group of `g` with `rows`; the groups that do not have the row-wise form are left out and
/// their count returned.
fn tile_rows(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> (TileProgram, usize) {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    let mut skipped = 0;
    for k in group_order(&f).expect("the groups can be ordered") {
        let name = format!("{}.{k}", g.name);
        match rows::rows(g, &f.groups[k], &name, &gm, target, &b) {
            Some(l) => launches.push(l.unwrap_or_else(|e| panic!("{}: {e}", g.name))),
            None => skipped += 1,
        }
    }
    let tp = TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    };
    (tp, skipped)
}

/// Tiles, verifies, simulates and compares every kernel of `prog` at `dims`; `skip` names the results of
/// groups `rows` does not handle (`skipped` of them), which are not compared.
fn check_prog(prog: &kc_ir::Program, dims: &[(&str, i64)], target: &str, seed: u64, skip: &[&str], skipped: usize) {
    let target = Target::builtin(target).expect("builtin target");
    for g in &prog.kernels {
        let given =
            kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
        let args = kc_runtime::random::random_args(g, &given, seed).expect("random args");
        let (tp, n) = tile_rows(g, &args, &target);
        assert_eq!(n, skipped, "{}: groups not handled by `rows`", g.name);
        common::verify_tiled(g, &tp, &target);
        let want = common::run(g, &args);
        let got = kc_runtime::sim::run(&tp, g, &args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
        assert_eq!(want.len(), got.len());
        for ((n, w), (_, s)) in want.iter().zip(&got) {
            if skip.contains(&n.as_str()) {
                continue;
            }
            common::assert_same_bits(&format!("{}.{n} on {} at {dims:?}", g.name, target.name), w, s);
        }
    }
}

fn check(file: &str, dims: &[(&str, i64)], target: &str, seed: u64) {
    check_prog(&common::compile_ok(common::kernel_path(file)), dims, target, seed, &[], 0);
}

/// Compiles a kernel given as source text ([`common::compile_ok_src`]).
fn compile_src(name: &str, src: &str) -> kc_ir::Program {
    common::compile_ok_src(name, src)
}

#[test]
fn tiling_rows_rmsnorm() {
    for target in TARGETS {
        for (t, d) in [(1, 1), (7, 33), (100, 257)] {
            check("rmsnorm", &[("T", t), ("D", d)], target, (t * d) as u64);
        }
    }
}

#[test]
fn tiling_rows_softmax() {
    for target in TARGETS {
        for (n, d) in [(1, 1), (5, 17), (67, 300)] {
            check("softmax", &[("N", n), ("D", d)], target, n as u64);
        }
    }
}

#[test]
fn tiling_rows_layernorm() {
    for target in TARGETS {
        for (t, d) in [(1, 1), (9, 31), (100, 257)] {
            check("layernorm", &[("T", t), ("D", d)], target, d as u64);
        }
    }
}

/// RMSNorm backward: the row group (`c` and `dx`) is row-wise. `dw` reduces across rows, which the
/// `reduce` template takes first in a real tiling; asked directly, `rows` takes it too, as its last resort
/// (gathering its reads across rows from GM; at `T = D = 1` every value it reads is one element, read as a
/// scalar), with the interpreter's bits.
#[test]
fn tiling_rows_rmsnorm_bwd_row_group() {
    let prog = common::compile_ok(common::kernel_path("rmsnorm_bwd"));
    for target in TARGETS {
        for (t, d) in [(1, 1), (7, 33), (100, 257)] {
            check_prog(&prog, &[("T", t), ("D", d)], target, 3, &[], 0);
        }
    }
}

/// Two row axes, masks from row and column indices, a max reduction, a column broadcast and a scalar.
#[test]
fn tiling_rows_masks_and_two_row_axes() {
    let prog = compile_src(
        "rowmix",
        "kernel rowmix(x: f32[B, H, D], w: f32[D], s: f32) -> (y: f32[B, H, D], m: f32[B, H]) {\n\
         \x20   m[b, h] = max[d](x[b, h, d] * w[d]) + s;\n\
         \x20   y[b, h, d] = where(d < h + b, x[b, h, d] - m[b, h], f32(b * 100 + h * 10 + d));\n\
         }\n",
    );
    for target in TARGETS {
        for (bb, h, d) in [(1, 1, 1), (3, 5, 7), (4, 9, 130)] {
            check_prog(&prog, &[("B", bb), ("H", h), ("D", d)], target, 11, &[], 0);
        }
    }
}

/// A row too wide for UB is taken in the column-chunked mode (see `tiling_wide`), not left out.
#[test]
fn tiling_rows_too_wide_rows_are_chunked() {
    let prog = common::compile_ok(common::kernel_path("softmax"));
    let g = &prog.kernels[0];
    let given = kc_ir::launch::Args {
        dims: [("N".to_string(), 2i64), ("D".to_string(), 1 << 20)].into_iter().collect(),
        ..Default::default()
    };
    let target = Target::builtin("ascend910b").expect("target");
    let f = fuse(g, &FusionConfig::default());
    // Bind from the dims only: no data is needed to decide.
    let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
    let b = kc_ir::launch::bind(g, &args).expect("bind");
    let gm = plan_gm(g, &f, &b).expect("gm plan");
    let l = rows::rows(g, &f.groups[0], "softmax.0", &gm, &target, &b).expect("taken").expect("fits");
    assert!(l.svars.iter().any(|s| s == "clen"), "column-chunked");
}

/// RMSNorm's launch: per row block, the reduction body `x * x` into a temporary, one reduce, `rstd` and
/// `y`; each input read from GM once (the column-broadcast `w` and the scalar once per core).
#[test]
fn tiling_rows_rmsnorm_structure() {
    let prog = common::compile_ok(common::kernel_path("rmsnorm"));
    let g = &prog.kernels[0];
    let given = kc_ir::launch::Args {
        dims: [("T".to_string(), 64i64), ("D".to_string(), 128)].into_iter().collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
    let target = Target::builtin("ascend910b").expect("target");
    let (tp, n) = tile_rows(g, &args, &target);
    assert_eq!((tp.launches.len(), n), (1, 0));
    let l = &tp.launches[0];
    let count = common::count_stmts;
    // Per slot: one reduce, and three vector statements (the reduction body, rstd, y).
    assert_eq!(count(&l.vector, &|s| matches!(s, Stmt::Reduce { .. })), 2);
    assert_eq!(count(&l.vector, &|s| matches!(s, Stmt::Vector { .. })), 6);
    let (_, stats) = kc_runtime::sim::run_with(&tp, g, &args, &kc_ir::interp::Limits::default()).expect("sim");
    let st = &stats.launches[0];
    // In: x once, w and eps once per core; out: y and rstd once.
    let cores = l.vector_cores as u64;
    assert_eq!(st.elements.get(&kc_ir::tile::Pipe::Mte2).copied(), Some(64 * 128 + (128 + 1) * cores));
    assert_eq!(st.elements.get(&kc_ir::tile::Pipe::Mte3).copied(), Some(64 * 128 + 64));
}

/// Rows wide enough that a block holds only a few of them: every core runs several blocks, through both
/// slots, with a partial last block.
#[test]
fn tiling_rows_many_blocks_per_core() {
    let prog = common::compile_ok(common::kernel_path("rmsnorm"));
    let g = &prog.kernels[0];
    let given = kc_ir::launch::Args {
        dims: [("T".to_string(), 601i64), ("D".to_string(), 8192)].into_iter().collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
    for target in TARGETS {
        let (tp, _) = tile_rows(g, &args, &Target::builtin(target).expect("target"));
        let l = &tp.launches[0];
        let x = l.buffers.iter().find(|b| b.name == "x_in").expect("x_in");
        assert_eq!(x.shape.len(), 2, "{:?}", x.shape);
        assert!(2 * l.vector_cores as u64 * x.shape[0] < 601, "{target}: {} cores x {:?}", l.vector_cores, x.shape);
    }
    for target in TARGETS {
        check("rmsnorm", &[("T", 601), ("D", 8192)], target, 2);
        check("softmax", &[("N", 203), ("D", 3000)], target, 4);
    }
}

/// Every vector group of every kernel in `kernels/`: `rows` either declines it or gives a launch that
/// verifies; a kernel whose groups it all takes runs in the simulator as in the interpreter.
#[test]
fn tiling_rows_every_kernel_declines_or_verifies() {
    let mut files: Vec<_> = std::fs::read_dir(common::repo_root().join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ker"))
        .collect();
    files.sort();
    let target = Target::builtin("ascend910b").expect("target");
    let mut taken = 0;
    let mut compared = 0;
    for path in files {
        let prog = common::compile_ok(&path);
        for g in &prog.kernels {
            let fixed: std::collections::BTreeMap<&str, i64> = g.fixed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let dims = g.dims.iter().map(|d| (d.clone(), fixed.get(d.as_str()).copied().unwrap_or(6))).collect();
            let given = kc_ir::launch::Args { dims, ..Default::default() };
            let Ok(args) = kc_runtime::random::random_args(g, &given, 9) else { continue };
            let Ok(b) = kc_ir::launch::bind(g, &args) else { continue };
            let f = fuse(g, &FusionConfig::default());
            let Some(gm) = plan_gm(g, &f, &b).ok() else { continue };
            let mut all = Vec::new();
            for (k, group) in f.groups.iter().enumerate() {
                let Some(l) = rows::rows(g, group, &format!("{}.{k}", g.name), &gm, &target, &b) else { continue };
                let l = l.unwrap_or_else(|e| panic!("{}.{k}: {e}", g.name));
                taken += 1;
                let tp = TileProgram {
                    kernel: g.name.clone(),
                    target: target.name.clone(),
                    dims: b.dims.clone(),
                    tensors: gm.tensors.clone(),
                    launches: vec![l.clone()],
                };
                common::verify_tiled(g, &tp, &target);
                all.push((k, l));
            }
            // Every group taken: the whole kernel runs as in the interpreter.
            let Some(order) = group_order(&f) else { continue };
            if all.len() != f.groups.len() {
                continue;
            }
            let launches =
                order.iter().filter_map(|k| all.iter().find(|(x, _)| x == k).map(|(_, l)| l.clone())).collect();
            let tp = TileProgram {
                kernel: g.name.clone(),
                target: target.name.clone(),
                dims: b.dims.clone(),
                tensors: gm.tensors,
                launches,
            };
            let want = common::run(g, &args);
            let got = kc_runtime::sim::run(&tp, g, &args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
            for ((n, w), (_, s)) in want.iter().zip(&got) {
                common::assert_same_bits(&format!("{}.{n}", g.name), w, s);
            }
            compared += 1;
        }
    }
    assert!(taken >= 5, "only {taken} groups tiled row-wise");
    assert!(compared >= 4, "only {compared} kernels compared");
}

/// A target's `row_block_bytes` caps a block of several rows, not one row: the host's 128 KiB gives softmax
/// 8192 × 4096 blocks of 2 rows (its `exp` rows, 32 KiB of f32, stay in L1 for the division that reads them
/// back; 4 rows fill UB without the cap), a cap below one row's buffers still gives blocks of one row (not the
/// column-chunked mode), and no cap leaves UB the only limit. The blocks run in the simulator as the
/// interpreter computes.
#[test]
fn tiling_rows_block_bytes_cap_blocks_of_several_rows() {
    let prog = common::compile_ok(common::kernel_path("softmax"));
    let g = &prog.kernels[0];
    let given = kc_ir::launch::Args {
        dims: [("N".to_string(), 8192i64), ("D".to_string(), 4096)].into_iter().collect(),
        ..Default::default()
    };
    let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
    let block = |target: &Target| {
        let (tp, n) = tile_rows(g, &args, target);
        assert_eq!((tp.launches.len(), n), (1, 0));
        let l = &tp.launches[0];
        let rows = l.buffers.iter().find(|b| b.name == "e").expect("the exp buffer").shape[0];
        let bytes: u64 = l.buffers.iter().filter(|b| b.mem == kc_ir::tile::Mem::UB).map(|b| b.bytes()).sum();
        (rows, bytes)
    };
    let host = Target::builtin("host").expect("host");
    assert_eq!(host.row_block_bytes, Some(128 << 10));
    let (rows, bytes) = block(&host);
    assert_eq!(rows, 2, "{bytes} bytes");
    assert!(bytes <= 128 << 10, "{bytes} bytes");
    let mut free = host.clone();
    free.row_block_bytes = None;
    assert_eq!(block(&free).0, 4);
    let mut tight = host.clone();
    tight.row_block_bytes = Some(1024);
    assert_eq!(block(&tight).0, 1);
    // Smaller sizes through the simulator: several blocks per core and a partial one, on the capped host.
    check("softmax", &[("N", 203), ("D", 3000)], "host", 4);
}
