//! Rows wider than UB: the row-wise template's column-chunked mode. Softmax, cross-entropy, LayerNorm and
//! RMSNorm at row widths where not even one row of every buffer fits in UB are fused, every group tiled
//! (the row-wise groups must be taken by `rows`, in chunked mode), verified, run by the simulator and
//! compared with the interpreter bit for bit: the chunks are folded into the row accumulators in column
//! order, so each row is summed in the interpreter's order.

use crate::common;
use kc_ir::dtype::DType;
use kc_ir::launch::Args;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::passes::tile::{group_order, plan_gm, rows, tile_group};
use kc_ir::target::Target;
use kc_ir::tile::{Pipe, TileProgram};
use kc_ir::Graph;

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// Tiles every group of `g`: vector groups with a parallel space must be taken by `rows`; the others go
/// through `tile_group`.
fn tile_all(g: &Graph, args: &Args, target: &Target) -> TileProgram {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let mut gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    for k in group_order(&f).expect("the groups can be ordered") {
        let group = &f.groups[k];
        let name = format!("{}.g{k}", g.name);
        if group.kind == GroupKind::Vector && group.parallel > 0 {
            let l = rows::rows(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{name} on {} ({:?}): not taken by `rows`", target.name, b.dims));
            launches.push(l.unwrap_or_else(|e| panic!("{name}: {e}")));
            continue;
        }
        let t = tile_group(g, group, &name, &gm, target, &b)
            .unwrap_or_else(|| panic!("{name}: no template"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        gm.tensors.extend(t.workspaces);
        launches.extend(t.launches);
    }
    TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    }
}

/// Tiles, verifies, simulates and compares `g` on `args` bit for bit; returns the program and the stats.
fn check_args(g: &Graph, args: &Args, target: &str) -> (TileProgram, kc_runtime::sim::Stats) {
    let target = Target::builtin(target).expect("builtin target");
    let tp = tile_all(g, args, &target);
    common::verify_tiled(g, &tp, &target);
    let want = common::run(g, args);
    let (got, stats) = kc_runtime::sim::run_with(&tp, g, args, &Default::default())
        .unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        let (wv, sv) = (w.to_f64_vec(), s.to_f64_vec());
        assert_eq!(wv.len(), sv.len());
        for (i, (a, b)) in wv.iter().zip(&sv).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{}.{n}[{i}] on {} at {:?}: interp {a} vs sim {b}",
                g.name,
                target.name,
                args.dims
            );
        }
    }
    (tp, stats)
}

fn random(g: &Graph, dims: &[(&str, i64)], seed: u64) -> Args {
    let given = Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

/// Whether a launch of `tp` is in the column-chunked mode (it has the chunk loop's `clen` register).
fn chunked(tp: &TileProgram) -> bool {
    tp.launches.iter().any(|l| l.svars.iter().any(|s| s == "clen"))
}

fn check(file: &str, rows_dim: &str, col_dim: &str, shapes: &[(i64, i64)]) {
    let g = common::kernel(file, file);
    for (i, &(n, w)) in shapes.iter().enumerate() {
        let args = random(&g, &[(rows_dim, n), (col_dim, w)], 17 + i as u64);
        for target in TARGETS {
            let (tp, _) = check_args(&g, &args, target);
            assert!(chunked(&tp), "{file} at {n}x{w} on {target}: not column-chunked");
        }
    }
}

#[test]
fn tiling_wide_softmax() {
    check("softmax", "N", "D", &[(1, 70_001), (3, 40_000)]);
}

#[test]
fn tiling_wide_layernorm() {
    check("layernorm", "T", "D", &[(1, 70_001), (5, 40_000)]);
}

#[test]
fn tiling_wide_rmsnorm() {
    check("rmsnorm", "T", "D", &[(1, 70_001), (3, 40_000)]);
}

/// Cross-entropy at vocabulary-sized rows, with ignored rows (negative targets) and targets in the first
/// and last chunks: `loss` gathers `logits[n, target[n]]` once per row.
#[test]
fn tiling_wide_cross_entropy() {
    let g = common::kernel("cross_entropy", "cross_entropy");
    for (n, v) in [(1usize, 70_001usize), (5, 40_000)] {
        let mut rng = common::Rng::new((n * v) as u64);
        let logits = common::rand_tensor(&mut rng, DType::BF16, &[n, v]);
        let target: Vec<i32> = (0..n)
            .map(|i| match i % 4 {
                0 => v as i32 - 1,
                1 => -1,
                2 => 0,
                _ => rng.int(0, v as i32),
            })
            .collect();
        let tt = common::i32_tensor(&[n], target);
        let args = common::args(&[("logits", &logits), ("target", &tt)], &[]);
        for target in TARGETS {
            let (tp, _) = check_args(&g, &args, target);
            assert!(chunked(&tp), "cross_entropy at {n}x{v} on {target}: not column-chunked");
        }
    }
}

/// Softmax reads its input once per pass (max, sum of exponentials, output): MTE2 moves 3 × N × D
/// elements, and MTE3 writes the output once.
#[test]
fn tiling_wide_softmax_passes() {
    let g = common::kernel("softmax", "softmax");
    let (n, d) = (3i64, 40_000i64);
    let args = random(&g, &[("N", n), ("D", d)], 5);
    for target in TARGETS {
        let (_, stats) = check_args(&g, &args, target);
        let l = &stats.launches[0];
        assert_eq!(l.elements.get(&Pipe::Mte2).copied().unwrap_or(0), 3 * (n * d) as u64, "{target}");
        assert_eq!(l.elements.get(&Pipe::Mte3).copied().unwrap_or(0), (n * d) as u64, "{target}");
    }
}
