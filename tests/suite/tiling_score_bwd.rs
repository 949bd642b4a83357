//! Attention backward on the cube and vector cores, end to end: `kernels/attention_bwd.ker` is fused, tiled
//! with the whole-kernel `tile` (the row-vector group `delta` by `rows`, the backward score group by
//! `score_bwd`), verified, run by the simulator and compared with the reference interpreter on both targets at
//! awkward shapes (GQA, `S < T`, sizes 1, primes, just above a block, `D` not a multiple of 16). Structural
//! checks: no `[B, H, S, T]` tensor in global memory, workspaces that do not grow with `S` and `T`, and fewer
//! cube MACs with the causal block skipping than the full square.

use crate::common;
use kc_ir::passes::fuse::{fuse, FusionConfig};
use kc_ir::passes::tile::tile;
use kc_ir::target::Target;
use kc_ir::tile::{TensorRole, TileProgram};
use kc_ir::Graph;

/// One ulp of a bf16 at `x`.
fn bf16_ulp(x: f64) -> f64 {
    let a = x.abs().max(f64::MIN_POSITIVE);
    2f64.powi(a.log2().floor() as i32 - 7)
}

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

fn graph() -> Graph {
    common::kernel("attention_bwd", "attention_bwd")
}

fn dims(b: i64, h: i64, g: i64, s: i64, t: i64, d: i64) -> Vec<(&'static str, i64)> {
    vec![("B", b), ("H", h), ("G", g), ("S", s), ("T", t), ("D", d)]
}

fn args(g: &Graph, dims: &[(&str, i64)], seed: u64) -> kc_ir::launch::Args {
    let given =
        kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

fn tiled(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> TileProgram {
    common::tile_kernel(g, args, target)
}

/// Tiles, verifies, simulates and compares with the interpreter.
///
/// Tolerance: the interpreter keeps `p` and `ds` in f32 all the way into the output sums; the cube takes bf16
/// operands, so the tiled program rounds the feeds (`p`, `scale · ds`) to bf16 (relative error ≤ 2^-9 per
/// product) and sums in another order (block by block, heads of a kv group first). The difference is then
/// bounded by about 2^-9 of the sum of the absolute products, which for these random inputs stays below 2^-6
/// of the output's largest magnitude; the outputs themselves are bf16, so we allow that plus two bf16 ulps of
/// the value.
fn check(d: &[(&str, i64)], target: &str, seed: u64) {
    let g = graph();
    let target = Target::builtin(target).expect("builtin target");
    let a = args(&g, d, seed);
    let tp = tiled(&g, &a, &target);
    common::verify_tiled(&g, &tp, &target);
    let want = common::run(&g, &a);
    let got = kc_runtime::sim::run(&tp, &g, &a).unwrap_or_else(|e| panic!("sim at {d:?}: {e:?}"));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        let (wv, sv) = (w.to_f64_vec(), s.to_f64_vec());
        assert_eq!(wv.len(), sv.len());
        let big = wv.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(big.is_finite(), "{n}: the reference is not finite");
        for (i, (a, b)) in wv.iter().zip(&sv).enumerate() {
            let tol = big * 2f64.powi(-6) + 2.0 * bf16_ulp(*a);
            assert!(
                (a - b).abs() <= tol,
                "{n}[{i}] on {} at {d:?}: interp {a} vs sim {b} (tolerance {tol})",
                target.name
            );
        }
    }
}

#[test]
fn single_element() {
    for t in TARGETS {
        check(&dims(1, 1, 1, 1, 1, 16), t, 1);
    }
}

#[test]
fn gqa_s_below_t_small_d() {
    for t in TARGETS {
        check(&dims(1, 4, 2, 5, 7, 8), t, 2);
    }
}

#[test]
fn two_batches_above_a_block() {
    for t in TARGETS {
        check(&dims(2, 2, 1, 17, 33, 32), t, 3);
    }
}

#[test]
fn several_blocks_with_remainders() {
    for t in TARGETS {
        check(&dims(1, 2, 2, 130, 131, 64), t, 4);
    }
    // The host's 128-wide blocks (`score_bwd_block`): a partial block each way, causal offset T - S = 70.
    check(&dims(1, 2, 1, 230, 300, 48), "host", 4);
}

/// The host target takes 128 × 128 blocks (`score_bwd_block`), the NPU targets 64 × 64, and both fall back
/// to smaller blocks when the sequence is shorter.
#[test]
fn block_size_follows_the_target() {
    let g = graph();
    let side = |target: &str, s: i64| -> u64 {
        let target = Target::builtin(target).expect("target");
        let tp = tiled(&g, &args(&g, &dims(1, 2, 1, s, s, 32), 1), &target);
        let l = tp.launches.iter().find(|l| l.buffers.iter().any(|b| b.name == "s0_l0c")).expect("score launch");
        l.buffers.iter().find(|b| b.name == "s0_l0c").expect("s0_l0c").shape[0]
    };
    assert_eq!(side("host", 300), 128);
    assert_eq!(side("ascend910b", 300), 64);
    assert_eq!(side("host", 40), 48);
}

#[test]
fn d_not_a_multiple_of_16_and_prime_lengths() {
    check(&dims(1, 3, 1, 67, 67, 20), "ascend910b", 5);
    check(&dims(1, 2, 1, 3, 97, 40), "ascend950", 6);
}

/// `[B, H, S, T]` never reaches global memory, and the workspaces are sized by the block, not by S or T.
#[test]
fn no_score_tensor_in_gm_and_bounded_workspace() {
    let g = graph();
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        let mut per_core = Vec::new();
        for (s, t) in [(70, 90), (200, 300)] {
            let (b, h) = (1, 2);
            let a = args(&g, &dims(b, h, 1, s, t, 32), 7);
            let tp = tiled(&g, &a, &target);
            let bhst = (b * h * s * t) as u64;
            for x in &tp.tensors {
                // A workspace's shape is all its cores' areas; what one core uses is `per_core`.
                let n: u64 = match x.role {
                    TensorRole::Workspace { per_core, .. } => per_core / x.dtype.size_bytes() as u64,
                    _ => x.shape.iter().product(),
                };
                assert!(n < bhst, "tensor `{}` ({n} elements) is as large as a score tensor", x.name);
                assert!(!x.shape.ends_with(&[s as u64, t as u64]), "tensor `{}` is [.., S, T]", x.name);
            }
            let ws: Vec<u64> = tp
                .tensors
                .iter()
                .filter_map(|x| match x.role {
                    TensorRole::Workspace { per_core, .. } => Some(per_core),
                    _ => None,
                })
                .collect();
            assert!(!ws.is_empty(), "the backward uses workspaces");
            per_core.push(ws);
        }
        assert_eq!(per_core[0], per_core[1], "workspace per core grows with S and T on {}", target.name);
    }
}

/// The causal mask skips fully masked blocks: with S = T (a square mask) the cube does clearly fewer MACs
/// than the unmasked count, and exactly the expected ones for the blocks kept.
#[test]
fn causal_skipping_reduces_macs() {
    let g = graph();
    let target = Target::builtin("ascend910b").expect("target");
    let (b, h, s, t, d) = (1i64, 1i64, 256i64, 256i64, 16i64);
    let a = args(&g, &dims(b, h, 1, s, t, d), 8);
    let tp = tiled(&g, &a, &target);
    let (_, stats) = kc_runtime::sim::run_with(&tp, &g, &a, &kc_ir::interp::Limits::default())
        .unwrap_or_else(|e| panic!("sim: {e:?}"));
    let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
    // Without skipping: per launch, every (i, j) pair runs two score contractions (S·T·D each) and the
    // launch's output contractions (two for dk/dv, one for dq).
    let full = (s * t * d) as u64 * (2 * 2 + 3);
    // 64-wide blocks on a 4 × 4 block grid: 10 of the 16 blocks have unmasked entries.
    assert_eq!(macs, full * 10 / 16, "cube MACs with causal skipping");
    assert!(macs * 3 < full * 2);
}

/// The forward attention's score group (its output contracts over `j` only, `lse` is a reduction member) is
/// not this template's: `score_bwd` returns `None` for it.
#[test]
fn forward_group_is_not_taken() {
    let g = common::kernel("attention", "attention");
    let a = args(&g, &[("B", 1), ("H", 2), ("G", 1), ("S", 5), ("T", 7), ("D", 16)], 9);
    let f = fuse(&g, &FusionConfig::default());
    let b = kc_ir::launch::bind(&g, &a).expect("bind");
    let gm = kc_ir::passes::tile::plan_gm(&g, &f, &b).expect("gm");
    let target = Target::builtin("ascend910b").expect("target");
    let mut scores = 0;
    for (k, group) in f.groups.iter().enumerate() {
        if group.kind == kc_ir::passes::fuse::GroupKind::Score {
            scores += 1;
            let name = format!("attention.g{k}");
            assert!(kc_ir::passes::tile::score_bwd::score_bwd(&g, group, &name, &gm, &target, &b).is_none());
        }
    }
    assert_eq!(scores, 1, "the forward has one score group");
}

/// Shapes where the operands' shapes alone are ambiguous (G = H, S = T = D): the roles come from the indices.
#[test]
fn ambiguous_shapes() {
    for t in TARGETS {
        check(&dims(1, 2, 2, 16, 16, 16), t, 10);
    }
}

/// A large `D` falls back to smaller blocks; one too large for even 16-wide blocks is a capacity error (E0607).
#[test]
fn large_d_smaller_blocks_or_capacity_error() {
    check(&dims(1, 1, 1, 3, 40, 300), "ascend910b", 11);
    let g = graph();
    let target = Target::builtin("ascend910b").expect("target");
    let a = args(&g, &dims(1, 1, 1, 2, 3, 1100), 12);
    let f = fuse(&g, &FusionConfig::default());
    let b = kc_ir::launch::bind(&g, &a).expect("bind");
    let e = tile(&g, &f, &b, &target).expect_err("D = 1100 does not fit L0C");
    assert_eq!(e.code, kc_ir::diag::Code::OverCapacity, "{e}");
}

/// On the host, the backward's hand-offs are read in place: the vector cores read the cube's score blocks
/// in its workspace, and the cube's transposing loads read the feeds (`p`, `scale · ds`) where the vector
/// cores stored them (copy forwarding across partners, `codegen/src/forward.rs`): no copy from a workspace
/// into L1 or UB is left in the compiled programs, and the cube's score blocks and the vector cores' feeds
/// are computed straight into their workspaces (two blocks at two offsets of one workspace, proven apart: no
/// copy into a workspace is left). The JIT, on 1 and 2 threads,
/// matches the interpreter (tolerance as in [`check`]) at a shape with several blocks each way.
#[test]
fn host_hand_offs_read_the_workspaces_in_place() {
    use kc_ir::tile::{Loc, Mem, Region, Stmt};
    let g = graph();
    let target = Target::builtin("host").expect("host target");
    let d = dims(1, 4, 2, 150, 200, 32);
    let a = args(&g, &d, 7);
    let tp = tiled(&g, &a, &target);
    let ws = |r: &Region| matches!(r.loc, Loc::Gm(t) if matches!(tp.tensors[t.0 as usize].role, TensorRole::Workspace { .. }));
    let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
        .unwrap_or_else(|e| panic!("compile: {e:?}"));
    let mut mixed = 0;
    for (l, c) in tp.launches.iter().zip(&code.launches) {
        // Copies from a workspace into L1 or UB (not the transposing loads into L0).
        let staged = |body: &[Stmt]| {
            common::count_stmts(body, &|s| match s {
                Stmt::Copy { src, dst: Region { loc: Loc::Buf { buf, .. }, .. }, .. } => {
                    ws(src) && matches!(l.buffers[buf.0 as usize].mem, Mem::L1 | Mem::UB)
                }
                _ => false,
            })
        };
        if staged(&l.cube) + staged(&l.vector) == 0 {
            continue;
        }
        mixed += 1;
        let (cube, vector) = &c.bodies;
        assert_eq!((staged(cube), staged(vector)), (0, 0), "{}: workspace reads still staged", l.name);
        // No whole-tile load into L0A/L0B is left but the one of `dout` for the `dv` product's `a` slot
        // (`forward::drop_overwritten`, `drop_transposed_only`): the loads for the score products and the
        // `q`/`dout` loads for the `dk`/`dv` products' `b` are dead once copy forwarding reads GM.
        let l0_loads = common::count_stmts(cube, &|s| match s {
            Stmt::Copy { dst: Region { loc: Loc::Buf { buf, .. }, .. }, cols, .. } => {
                matches!(l.buffers[buf.0 as usize].mem, Mem::L0A | Mem::L0B) && *cols != kc_ir::tile::SExpr::Const(1)
            }
            _ => false,
        });
        assert!(l0_loads <= 1, "{}: {l0_loads} whole-tile loads into L0 left", l.name);
        let fix_out = common::count_stmts(cube, &|s| matches!(s, Stmt::Copy { src, dst, .. } if ws(dst) && !ws(src)));
        assert_eq!(fix_out, 0, "{}: score blocks still copied into the workspace", l.name);
        let feeds_out =
            common::count_stmts(vector, &|s| matches!(s, Stmt::Copy { src, dst, .. } if ws(dst) && !ws(src)));
        assert_eq!(feeds_out, 0, "{}: feeds still copied into the workspace", l.name);
    }
    assert!(mixed > 0, "the tiled program hands blocks over through workspaces");
    let want = common::run(&g, &a);
    for threads in [1, 2] {
        let (got, _) =
            code.run(&tp, &g, &a, threads, &kc_ir::interp::Limits::default()).unwrap_or_else(|e| panic!("jit: {e:?}"));
        for ((n, w), (_, j)) in want.iter().zip(&got) {
            let (wv, jv) = (w.to_f64_vec(), j.to_f64_vec());
            let big = wv.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (i, (a, b)) in wv.iter().zip(&jv).enumerate() {
                let tol = big * 2f64.powi(-6) + 2.0 * bf16_ulp(*a);
                assert!((a - b).abs() <= tol, "{n}[{i}], {threads} threads: interp {a} vs jit {b} (tolerance {tol})");
            }
        }
    }
}
