//! Score (flash-attention) groups, end to end: attention and a Newton-Schulz step are fused, tiled by the
//! `score` template, verified and simulated on both targets at awkward shapes, and compared with the
//! interpreter. Structural checks: the cube does exactly the two contractions' MACs (fewer with the causal
//! mask: fully masked blocks are skipped), the workspaces do not grow with `S` and `T`, and no GM tensor
//! holds the `[B, H, S, T]` scores.

use crate::common;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::passes::tile::{group_order, plan_gm, score, tile};
use kc_ir::target::Target;
use kc_ir::tile::{TensorRole, TileProgram};
use kc_ir::Graph;

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// Compiles a kernel given as source text ([`common::compile_ok_src`]).
fn compile_src(name: &str, src: &str) -> Graph {
    let prog = common::compile_ok_src(name, src);
    prog.kernel(name).unwrap_or_else(|| panic!("no kernel `{name}`")).clone()
}

/// Attention without the causal `where`.
const NONCAUSAL: &str = "
kernel attention_nc(q: bf16[B, H, S, D], k: bf16[B, G, T, D], v: bf16[B, G, T, D], scale: f32)
    -> (o: bf16[B, H, S, D], lse: f32[B, H, S])
    where H % G == 0
{
    let R = H / G;
    let s[b, h, i, j] = scale * sum[d](q[b, h, i, d] * k[b, h / R, j, d]);
    lse = logsumexp(s, axis: -1);
    o[b, h, i, d] = sum[j](exp(s[b, h, i, j] - lse[b, h, i]) * v[b, h / R, j, d]);
}
";

/// One Newton-Schulz step of Muon, from parameters: the score group alone.
const NS_STEP: &str = "
kernel ns_step(x: bf16[M, N], a: bf16[M, M]) -> o: bf16[M, N] where M <= N {
    let b: bf16 = -4.7750 * a + 2.0315 * (a @ a);
    o = 3.4445 * x + b @ x;
}
";

/// A score chain whose operands all lie transposed (`a[k, i]`, `w[e, j]`) and whose tile member reads a
/// scalar: the cube loads them through L1 and transposes on the way to L0.
const CHAIN_T: &str = "
kernel chain_t(a: bf16[K, M], b: bf16[K, N], w: bf16[E, N], c: f32) -> o: f32[M, E] {
    let z[i, j] = sum[k](a[k, i] * b[k, j]);
    let y: bf16 = c * z;
    o[i, e] = sum[j](y[i, j] * w[e, j]);
}
";

fn args_for(g: &Graph, dims: &[(&str, i64)], seed: u64) -> kc_ir::launch::Args {
    let given =
        kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

/// The whole kernel through `tile()`, verified.
fn tiled(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> TileProgram {
    let f = fuse(g, &FusionConfig::default());
    assert!(f.groups.iter().any(|gr| gr.kind == GroupKind::Score), "{}: no score group", g.name);
    common::tile_kernel(g, args, target)
}

/// Runs interpreter and simulator; compares each result within `atol + rtol·|want|` (per result name).
fn compare(
    g: &Graph,
    tp: &TileProgram,
    args: &kc_ir::launch::Args,
    tol: &dyn Fn(&str) -> (f64, f64),
) -> kc_runtime::sim::Stats {
    let want = common::run(g, args);
    let (got, stats) = kc_runtime::sim::run_with(tp, g, args, &kc_ir::interp::Limits::default())
        .unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        let (atol, rtol) = tol(n);
        let (wv, sv) = (w.to_f64_vec(), s.to_f64_vec());
        assert_eq!(wv.len(), sv.len(), "{}: {n}: length", g.name);
        for (i, (a, b)) in wv.iter().zip(&sv).enumerate() {
            assert!(
                (a - b).abs() <= atol + rtol * a.abs() || a == b,
                "{} on {} ({:?}): {n}[{i}]: interpreter {a}, simulator {b}",
                g.name,
                tp.target,
                tp.dims
            );
        }
    }
    stats
}

/// Attention's tolerances. The online softmax sums `l` and `o` block by block, rescaling the partial sums
/// when the running maximum grows, and rounds the probabilities to bf16 for the cube, where the
/// interpreter sums `exp(s - lse)·v` over all `j` in order in f32: `o` (bf16) agrees to bf16 rounding, `lse`
/// (f32, a log of a sum of positive terms) to a few f32 ulps of relative error.
/// The compiled program `code` of `tp` run by the JIT on 1 and 2 threads agrees with the interpreter on
/// every output, to attention's tolerances (`what`: the case, for the messages).
fn jit_agrees(g: &Graph, tp: &TileProgram, args: &kc_ir::launch::Args, code: &kc_codegen::Compiled, what: &str) {
    let want = common::run(g, args);
    for threads in [1, 2] {
        let (got, _) =
            code.run(tp, g, args, threads, &kc_ir::interp::Limits::default()).unwrap_or_else(|e| panic!("jit: {e:?}"));
        for ((name, w), (_, j)) in want.iter().zip(&got) {
            let (atol, rtol) = attn_tol(name);
            for (i, (a, b)) in w.to_f64_vec().iter().zip(j.to_f64_vec()).enumerate() {
                assert!(
                    (a - b).abs() <= atol + rtol * a.abs() || *a == b,
                    "{what}, {threads} threads: {name}[{i}]: interpreter {a}, jit {b}"
                );
            }
        }
    }
}

fn attn_tol(name: &str) -> (f64, f64) {
    if name == "lse" {
        (1e-5, 1e-5)
    } else {
        (4e-3, 1.6e-2)
    }
}

fn attn_dims(b: i64, h: i64, gk: i64, s: i64, t: i64, d: i64) -> Vec<(&'static str, i64)> {
    vec![("B", b), ("H", h), ("G", gk), ("S", s), ("T", t), ("D", d)]
}

#[test]
fn attention_matches_the_interpreter_at_awkward_shapes() {
    let g = common::kernel("attention", "attention");
    // The last shape has more tasks (batch × i-blocks) than either target has cube cores: a core runs
    // several, one after the other, over the same ring.
    let shapes =
        [(1, 1, 1, 1, 1, 16), (1, 4, 2, 5, 7, 8), (2, 2, 1, 17, 33, 32), (1, 2, 2, 130, 131, 64), (5, 8, 4, 17, 20, 8)];
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        for (seed, &(b, h, gk, s, t, d)) in shapes.iter().enumerate() {
            let args = args_for(&g, &attn_dims(b, h, gk, s, t, d), seed as u64);
            let tp = tiled(&g, &args, &target);
            compare(&g, &tp, &args, &attn_tol);
        }
    }
}

#[test]
fn attention_noncausal_matches_and_does_exactly_two_matmuls_of_macs() {
    let g = compile_src("attention_nc", NONCAUSAL);
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        for &(b, h, gk, s, t, d) in &[(1, 2, 1, 19, 37, 16), (2, 1, 1, 70, 130, 8)] {
            let args = args_for(&g, &attn_dims(b, h, gk, s, t, d), 7);
            let tp = tiled(&g, &args, &target);
            let stats = compare(&g, &tp, &args, &attn_tol);
            let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
            assert_eq!(macs, (2 * b * h * s * t * d) as u64, "{}: MACs at {:?}", target.name, tp.dims);
        }
    }
}

/// The vector cores fold the scale into the exponent (`exp(k·raw - k·max raw)`: no pass that scales the
/// scores), taking the raw scores' minimum where `k < 0`, a branch on the sign the scalar unit reads from
/// `k`'s bits (at |k| = 30 a shift by the wrong extreme overflows `exp`). Negative, zero and negative-zero
/// scales match the interpreter, causal and not, on both targets' simulators and in the JIT: at a shape
/// with several i-blocks and j-blocks (diagonal blocks among them), and at one with more tasks than cube
/// cores, so that a core's last iterations of a task compute the next task's first blocks (tasks in
/// flight, their statistics in alternating slots).
#[test]
fn attention_folds_scales_of_either_sign() {
    use kc_ir::graph::ReduceOp;
    use kc_ir::tile::Stmt;
    // The dims `(B, H, G, S, T, D)` of `attn_dims`, named so that the cases' type reads at a glance.
    type Dims = (i64, i64, i64, i64, i64, i64);
    let causal = common::kernel("attention", "attention");
    let nc = compile_src("attention_nc", NONCAUSAL);
    for g in [&causal, &nc] {
        for target in TARGETS {
            let target = Target::builtin(target).expect("builtin target");
            // The second shape (36 tasks of up to 2 blocks, on 24 cube cores) once: causal, on the 910B.
            let mut cases: Vec<(f32, Dims)> =
                [-30.0, -0.35, 0.0, -0.0, 30.0].iter().map(|&k| (k, (1, 2, 1, 130, 300, 16))).collect();
            if std::ptr::eq(g, &causal) && target.name == "ascend910b" {
                cases.push((-30.0, (3, 4, 2, 270, 270, 8)));
            }
            for (n, (scale, (b, h, gk, s, t, d))) in cases.into_iter().enumerate() {
                let mut args = args_for(g, &attn_dims(b, h, gk, s, t, d), 20 + n as u64);
                args.tensors.insert("scale".into(), kc_ir::tensor::Tensor::scalar_f32(scale));
                let tp = tiled(g, &args, &target);
                let l = &tp.launches[0];
                let mins = common::count_stmts(&l.vector, &|s| matches!(s, Stmt::Reduce { op: ReduceOp::Min, .. }));
                assert!(
                    mins > 0,
                    "{} on {}: the scale is not folded (no minimum of the raw scores)",
                    g.name,
                    target.name
                );
                // The look-ahead into the next task (run at the second shape: more tasks than cube cores).
                let bm = l.buffers.iter().find(|x| x.name == "a_l0a").expect("q tile").shape[0] as i64;
                let looks = common::count_stmts(
                    &l.vector,
                    &|s| matches!(s, Stmt::Set { var, .. } if l.svars[var.0 as usize] == "tpar_s"),
                );
                assert!(looks > 0, "{}: no look-ahead into the next task", g.name);
                if d == 8 {
                    assert!(b * h * ((s + bm - 1) / bm) > l.cube_cores as i64, "the shape must give a core two tasks");
                }
                compare(g, &tp, &args, &attn_tol);
                let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
                    .unwrap_or_else(|e| panic!("{}: compile: {e:?}", g.name));
                let (got, _) = code
                    .run(&tp, g, &args, 2, &kc_ir::interp::Limits::default())
                    .unwrap_or_else(|e| panic!("{}: jit: {e:?}", g.name));
                for ((name, w), (_, j)) in common::run(g, &args).iter().zip(&got) {
                    let (atol, rtol) = attn_tol(name);
                    for (i, (a, b)) in w.to_f64_vec().iter().zip(j.to_f64_vec()).enumerate() {
                        assert!(
                            (a - b).abs() <= atol + rtol * a.abs() || *a == b,
                            "{} on {}, scale {scale}: {name}[{i}]: interpreter {a}, jit {b}",
                            g.name,
                            target.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn causal_attention_skips_fully_masked_blocks() {
    let g = common::kernel("attention", "attention");
    // Blocks of 64 rows: the i-block `ib` computes the columns `0..(ib + 1)·64` its last row sees, so
    // the fraction is (n + 1) / 2n for n = S / 64 blocks: 54% at S = T = 768.
    let (b, h, s, t, d) = (1, 1, 768, 768, 16);
    let args = args_for(&g, &attn_dims(b, h, 1, s, t, d), 3);
    let target = Target::builtin("ascend910b").expect("builtin target");
    let tp = tiled(&g, &args, &target);
    let stats = compare(&g, &tp, &args, &attn_tol);
    let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
    let full = (2 * b * h * s * t * d) as u64;
    assert!(macs * 100 <= full * 55, "causal MACs {macs} of {full}");
}

#[test]
fn workspaces_are_bounded_and_the_scores_never_reach_gm() {
    let g = common::kernel("attention", "attention");
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        let mut per_core = Vec::new();
        for (s, t) in [(200, 300), (333, 517)] {
            let (b, h) = (1, 2);
            let args = args_for(&g, &attn_dims(b, h, 1, s, t, 16), 1);
            let f = fuse(&g, &FusionConfig::default());
            let bd = kc_ir::launch::bind(&g, &args).expect("bind");
            let tp = tile(&g, &f, &bd, &target).expect("tile");
            let scores = (b * h * s * t) as u64;
            for ten in tp.tensors.iter().filter(|t| !matches!(t.role, TensorRole::Workspace { .. })) {
                let n: u64 = ten.shape.iter().product();
                assert!(n < scores, "{}: tensor {} has {n} elements (scores: {scores})", target.name, ten.name);
            }
            let ws: Vec<u64> = tp
                .tensors
                .iter()
                .filter_map(|t| match t.role {
                    TensorRole::Workspace { per_core, .. } => Some(per_core),
                    _ => None,
                })
                .collect();
            assert_eq!(ws.len(), 3, "{}: the score ring's workspaces", target.name);
            per_core.push(ws);
        }
        assert_eq!(per_core[0], per_core[1], "{}: workspace sizes depend on S, T", target.name);
    }
}

#[test]
fn newton_schulz_step_matches_the_interpreter() {
    // The second contraction accumulates over Z's column blocks in L0C, in order, as the interpreter
    // sums; `b` is rounded to bf16 as the graph says. Only the sum of `a·a` over one block at a time and
    // then the epilogue may differ by the last bf16 bit of `o` (the f32 sums are the same: equality is
    // expected, a bf16 ulp allowed).
    let g = compile_src("ns_step", NS_STEP);
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        for (m, n) in [(40, 70), (13, 29), (1, 1), (130, 131)] {
            let args = args_for(&g, &[("M", m), ("N", n)], 5);
            let tp = tiled(&g, &args, &target);
            let stats = compare(&g, &tp, &args, &|_| (0.0, 8e-3));
            let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
            assert_eq!(macs, (m * m * m + m * m * n) as u64, "{}: MACs", target.name);
        }
    }
}

#[test]
fn transposed_operands_match_the_interpreter() {
    // Accumulate mode: the second contraction sums over j in order in L0C, as the interpreter does, and
    // `y` is rounded to bf16 by the graph itself; only the order of the f32 sums inside a block may
    // differ in the last f32 bits.
    let g = compile_src("chain_t", CHAIN_T);
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        for (k, m, n, e) in [(1, 1, 1, 1), (19, 37, 131, 5), (70, 65, 17, 33)] {
            let args = args_for(&g, &[("K", k), ("M", m), ("N", n), ("E", e)], 11);
            let tp = tiled(&g, &args, &target);
            let stats = compare(&g, &tp, &args, &|_| (1e-5, 1e-5));
            let macs: u64 = stats.launches.iter().map(|l| l.macs).sum();
            assert_eq!(macs, (m * n * k + m * e * n) as u64, "{}: MACs", target.name);
        }
    }
}

#[test]
fn muon_score_groups_tile_and_verify() {
    // Muon's group 0 (the global norm, a scalar reduction) belongs to another template: if the whole
    // kernel tiles, compare it with the interpreter; the score groups are tiled and verified either way.
    let g = common::kernel("muon_orthogonalize", "muon_orthogonalize");
    for target in TARGETS {
        let target = Target::builtin(target).expect("builtin target");
        for (m, n) in [(40, 70), (17, 31)] {
            let args = args_for(&g, &[("M", m), ("N", n)], 2);
            let f = fuse(&g, &FusionConfig::default());
            let bd = kc_ir::launch::bind(&g, &args).expect("bind");
            let mut gm = plan_gm(&g, &f, &bd).expect("gm");
            let mut launches = Vec::new();
            let mut count = 0;
            for k in group_order(&f).expect("order") {
                let gr = &f.groups[k];
                if gr.kind != GroupKind::Score {
                    continue;
                }
                let t = score::score(&g, gr, &format!("muon.g{k}"), &gm, &target, &bd)
                    .unwrap_or_else(|| panic!("group {k} not taken"))
                    .unwrap_or_else(|e| panic!("group {k}: {e}"));
                gm.tensors.extend(t.workspaces);
                launches.extend(t.launches);
                count += 1;
            }
            assert_eq!(count, 5);
            let tp = TileProgram {
                kernel: g.name.clone(),
                target: target.name.clone(),
                dims: bd.dims.clone(),
                tensors: gm.tensors,
                launches,
            };
            common::verify_tiled(&g, &tp, &target);
            if let Ok(full) = tile(&g, &f, &bd, &target) {
                common::verify_tiled(&g, &full, &target);
                // Five steps of bf16 rounding with slightly different sums: bf16-level agreement.
                compare(&g, &full, &args, &|_| (2e-2, 3e-2));
            }
        }
    }
}

#[test]
fn attention_backward_is_left_to_its_own_template() {
    let g = common::kernel("attention_bwd", "attention_bwd");
    let args = args_for(&g, &attn_dims(1, 2, 1, 5, 7, 8), 0);
    let f = fuse(&g, &FusionConfig::default());
    let bd = kc_ir::launch::bind(&g, &args).expect("bind");
    let gm = plan_gm(&g, &f, &bd).expect("gm");
    let target = Target::builtin("ascend910b").expect("builtin target");
    for gr in f.groups.iter().filter(|gr| gr.kind == GroupKind::Score) {
        let names: Vec<String> = gr.stored.iter().map(|v| g.node(*v).name.clone().unwrap_or_default()).collect();
        if names.iter().any(|n| n.starts_with("dq") || n.starts_with("dk") || n.starts_with("dv")) {
            assert!(score::score(&g, gr, "bwd", &gm, &target, &bd).is_none(), "score took {names:?}");
        }
    }
}

/// On the host, the vector cores read the cube's score blocks and P·V results where the cube wrote them
/// (its workspaces) and store P straight into the workspace the cube reads, and the cube's mmads write
/// their results into the workspaces: no hand-off copies in the compiled programs but the cube's read of
/// P and the causal kernel's score blocks (copy forwarding across the partner, `codegen/src/forward.rs`). Checked at a
/// shape with more tasks than the host's cube cores and more key blocks than the rings hold, so that a read
/// forwarded past a cross-core wait would see a slot the cube has already refilled; the JIT, on 1 and 2
/// threads, must match the interpreter.
#[test]
fn host_vector_cores_read_the_cubes_workspaces_in_place() {
    use kc_ir::tile::{Loc, Region, Stmt, VExpr};
    let target = Target::builtin("host").expect("host target");
    let causal = common::kernel("attention", "attention");
    let nc = compile_src("attention_nc", NONCAUSAL);
    for (n, g) in [&causal, &nc].into_iter().enumerate() {
        let args = args_for(g, &attn_dims(1, 6, 3, 300, 1100, 16), 40 + n as u64);
        let tp = tiled(g, &args, &target);
        let ws = |r: &Region| matches!(r.loc, Loc::Gm(t) if matches!(tp.tensors[t.0 as usize].role, TensorRole::Workspace { .. }));
        fn reads(e: &VExpr, f: &dyn Fn(&Region) -> bool) -> bool {
            match e {
                VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => f(r),
                _ => e.children().into_iter().any(|c| reads(c, f)),
            }
        }
        let l = &tp.launches[0];
        let blocks = common::count_stmts(&l.vector, &|s| matches!(s, Stmt::Copy { src, .. } if ws(src)));
        assert!(blocks > 0, "{}: the tiled program hands blocks over through workspaces", g.name);
        let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("{}: compile: {e:?}", g.name));
        let vector = &code.launches[0].bodies.1;
        let copies_in = common::count_stmts(vector, &|s| matches!(s, Stmt::Copy { src, .. } if ws(src)));
        let copies_out = common::count_stmts(vector, &|s| matches!(s, Stmt::Copy { dst, .. } if ws(dst)));
        let in_place = common::count_stmts(vector, &|s| match s {
            Stmt::Vector { expr, .. } => reads(expr, &ws),
            Stmt::Reduce { src, .. } => ws(src),
            _ => false,
        });
        // The causal kernel's diagonal blocks are masked by one statement over the whole tile (the host's
        // whole diagonal blocks), which reads the scores in the workspace too: no copy is left either.
        assert_eq!(
            copies_in, 0,
            "{}: {copies_in} of {blocks} copies from workspaces left in the vector program",
            g.name
        );
        assert_eq!(copies_out, 0, "{}: copies into workspaces left in the vector program", g.name);
        assert!(in_place > 0, "{}: nothing reads a workspace in place", g.name);
        let cube = &code.launches[0].bodies.0;
        let fix = common::count_stmts(cube, &|s| matches!(s, Stmt::Copy { dst, .. } if ws(dst)));
        let direct = common::count_stmts(cube, &|s| matches!(s, Stmt::Mmad { c, .. } if ws(c)));
        // The causal kernel's diagonal blocks are computed and copied in row halves, under sizes assigned
        // between the mmads and the copies: its L0C tiles keep a reader, and its cube keeps the copies.
        if !std::ptr::eq(g, &causal) {
            assert_eq!(fix, 0, "{}: the cube still copies its results into the workspaces", g.name);
            assert!(direct > 0, "{}: no mmad writes a workspace", g.name);
        }
        let want = common::run(g, &args);
        for threads in [1, 2] {
            let (got, _) = code
                .run(&tp, g, &args, threads, &kc_ir::interp::Limits::default())
                .unwrap_or_else(|e| panic!("{}: jit: {e:?}", g.name));
            for ((name, w), (_, j)) in want.iter().zip(&got) {
                let (atol, rtol) = attn_tol(name);
                for (i, (a, b)) in w.to_f64_vec().iter().zip(j.to_f64_vec()).enumerate() {
                    assert!(
                        (a - b).abs() <= atol + rtol * a.abs() || *a == b,
                        "{} on host, {threads} threads: {name}[{i}]: interpreter {a}, jit {b}",
                        g.name
                    );
                }
            }
        }
    }
}

/// The host multiplies the causal mask's diagonal blocks whole (`score_whole_diag` in host.toml): one
/// mmad per cube tile, no bands of rows, and the vector cores mask the columns their rows do not see (p = 0
/// there, which the cube's p·v reads). That keeps copy forwarding whole (`codegen/src/forward.rs`): the
/// compiled cube reads q, k, v and p where they are (no copy into L1 but q's), and the vector cores read the
/// scores in the workspace on every block: on the blocks their rows see whole, and on the diagonal blocks,
/// whose mask is one statement over the whole tile that overwrites the copied window (a row routine on the
/// host, `kc_rt_row_mask`), so that no copy of the scores into UB is left. The simulator and the JIT (1 and 2 threads) match the interpreter at shapes with
/// partial i-blocks, `T > S` and bands that see none of a diagonal block's columns; the NPU targets keep
/// their bands, and an NPU target with the option set passes the simulator's checks too.
#[test]
fn host_multiplies_diagonal_blocks_whole() {
    use kc_ir::tile::{Loc, Mem, Region, SExpr, Stmt};
    let g = common::kernel("attention", "attention");
    let bands = |tp: &TileProgram| {
        let l = &tp.launches[0];
        common::count_stmts(
            &l.cube,
            &|s| matches!(s, Stmt::Mmad { m: SExpr::Var(x), .. } if l.svars[x.0 as usize] == "hrows"),
        )
    };
    let host = Target::builtin("host").expect("host target");
    assert!(host.score_whole_diag);
    let mut npu = Target::builtin("ascend910b").expect("builtin target");
    let args = args_for(&g, &attn_dims(1, 2, 1, 200, 330, 16), 40);
    assert!(bands(&tiled(&g, &args, &npu)) > 0, "the NPU target's diagonal blocks are computed band by band");
    npu.score_whole_diag = true;
    let tp = tiled(&g, &args, &npu);
    assert_eq!(bands(&tp), 0);
    compare(&g, &tp, &args, &attn_tol);
    for (seed, dims) in [attn_dims(1, 4, 2, 300, 300, 32), attn_dims(1, 2, 1, 200, 330, 16)].iter().enumerate() {
        let args = args_for(&g, dims, 41 + seed as u64);
        let tp = tiled(&g, &args, &host);
        assert_eq!(bands(&tp), 0, "host: a diagonal block computed in bands");
        compare(&g, &tp, &args, &attn_tol);
        let l = &tp.launches[0];
        let ws = |r: &Region| matches!(r.loc, Loc::Gm(t) if matches!(tp.tensors[t.0 as usize].role, TensorRole::Workspace { .. }));
        let into = |body: &[Stmt], mem: Mem, from_ws: bool| {
            common::count_stmts(body, &|s| match s {
                Stmt::Copy { src, dst: Region { loc: Loc::Buf { buf, .. }, .. }, .. } => {
                    l.buffers[buf.0 as usize].mem == mem && ws(src) == from_ws && matches!(src.loc, Loc::Gm(_))
                }
                _ => false,
            })
        };
        let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("compile: {e:?}"));
        let (cube, vector) = &code.launches[0].bodies;
        // q's loads (at the task's start and in the look-ahead) are the only copies into L1 left.
        let q_loads = common::count_stmts(&l.cube, &|s| match s {
            Stmt::Copy { dst: Region { loc: Loc::Buf { buf, .. }, .. }, .. } => {
                l.buffers[buf.0 as usize].name == "a_l1"
            }
            _ => false,
        });
        assert_eq!(into(cube, Mem::L1, true), 0, "host: p staged through L1");
        assert_eq!(into(cube, Mem::L1, false), q_loads, "host: k or v staged through L1");
        let (before, after) = (into(&l.vector, Mem::UB, true), into(vector, Mem::UB, true));
        assert!(before > 0 && after == 0, "host: the scores' copies into UB: {before} -> {after}");
        jit_agrees(&g, &tp, &args, &code, &format!("host, {dims:?}"));
    }
}

/// The host's cube tiles are up to 256 key columns wide (`score_cube_cols` in host.toml): where the vector
/// cores' block is two 128-column chunks, the host multiplies it as one (one q·kᵀ mmad and one p·v mmad 256
/// deep, instead of a second chunk's p·v accumulating onto the first's through memory). The vector cores'
/// blocks stay the same, so the JIT's results are the same bits with and without the option, on 1 and 2
/// threads, causal or not, with partial blocks; they agree with the interpreter, and the NPU targets keep
/// their chunks.
#[test]
fn host_multiplies_a_block_as_one_cube_chunk() {
    use kc_ir::tile::Stmt;
    let host = Target::builtin("host").expect("host target");
    assert_eq!(host.score_cube_cols, Some(256));
    for t in TARGETS {
        assert_eq!(Target::builtin(t).expect("builtin target").score_cube_cols, None, "{t}");
    }
    let mut chunked = host.clone();
    chunked.score_cube_cols = None;
    let mmads = |tp: &TileProgram, acc: bool| {
        common::count_stmts(
            &tp.launches[0].cube,
            &|s| matches!(s, Stmt::Mmad { accumulate, .. } if *accumulate || !acc),
        )
    };
    let limits = kc_ir::interp::Limits::default();
    for (n, name) in ["attention", "attention_full"].into_iter().enumerate() {
        let g = common::kernel(name, name);
        for (m, dims) in [attn_dims(1, 4, 2, 300, 300, 128), attn_dims(2, 2, 1, 130, 600, 64)].iter().enumerate() {
            let args = args_for(&g, dims, 90 + 2 * n as u64 + m as u64);
            let (tp, tp0) = (tiled(&g, &args, &host), tiled(&g, &args, &chunked));
            assert!(mmads(&tp0, true) > 0, "{name} {dims:?}: without the option a second chunk accumulates");
            assert_eq!(mmads(&tp, true), 0, "{name} {dims:?}: a block's p·v in one mmad");
            assert!(mmads(&tp, false) < mmads(&tp0, false), "{name} {dims:?}: fewer mmads");
            let compile = |tp: &TileProgram| {
                kc_codegen::compile(tp, &kc_codegen::Options { verify: true, ..Default::default() })
                    .unwrap_or_else(|e| panic!("compile: {e:?}"))
            };
            let (code, code0) = (compile(&tp), compile(&tp0));
            for threads in [1, 2] {
                let run = |code: &kc_codegen::Compiled, tp: &TileProgram| {
                    code.run(tp, &g, &args, threads, &limits).unwrap_or_else(|e| panic!("jit: {e:?}")).0
                };
                for ((r, got), (_, want)) in run(&code, &tp).iter().zip(&run(&code0, &tp0)) {
                    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
                    assert_eq!(got.len(), want.len());
                    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(x.to_bits(), y.to_bits(), "{name} {dims:?}, {threads} threads: {r}[{i}] {x} vs {y}");
                    }
                }
            }
            jit_agrees(&g, &tp, &args, &code, &format!("host, {name} {dims:?}"));
        }
    }
}

/// The host deals each cube core consecutive tasks (`score_blocked_tasks` in host.toml: a head's i-blocks
/// in a row, so a thread's mmads find the K and V blocks they packed; with the causal mask from both ends
/// in turn); the NPU targets keep dealing every `cubes`-th task (with the mask the longest first). Either
/// order computes every task once: the simulator and the JIT (1 and 2 threads) agree with the interpreter
/// at shapes with fewer tasks than cores, with a partial last round, with several rounds of tasks in
/// flight, and (causal) with an odd and an even number of i-blocks per head and a last partial i-block.
#[test]
fn host_deals_consecutive_tasks() {
    let host = Target::builtin("host").expect("host target");
    assert!(host.score_blocked_tasks);
    let mut npu = Target::builtin("ascend910b").expect("builtin target");
    assert!(!npu.score_blocked_tasks);
    let dealt = |tp: &TileProgram| {
        let s = kc_ir::tile::print::print_program(tp);
        s.contains("tk = core * ") && s.contains(" + task / ")
    };
    let full = common::kernel("attention_full", "attention_full");
    let causal = common::kernel("attention", "attention");
    let cases = [
        (&full, attn_dims(1, 2, 1, 40, 50, 16)),
        (&full, attn_dims(2, 4, 2, 300, 40, 16)),
        (&full, attn_dims(1, 8, 2, 520, 36, 16)),
        (&causal, attn_dims(1, 2, 1, 40, 50, 16)),
        (&causal, attn_dims(1, 2, 1, 300, 300, 16)),
        (&causal, attn_dims(2, 2, 1, 200, 232, 16)),
    ];
    for (seed, (g, dims)) in cases.iter().enumerate() {
        let args = args_for(g, dims, 60 + seed as u64);
        let what = format!("{}, {dims:?}", g.name);
        assert!(!dealt(&tiled(g, &args, &npu)), "ascend910b, {what}: tasks dealt round-robin");
        npu.score_blocked_tasks = true;
        let tp = tiled(g, &args, &npu);
        npu.score_blocked_tasks = false;
        assert!(dealt(&tp), "ascend910b with the option, {what}: consecutive tasks");
        compare(g, &tp, &args, &attn_tol);
        let tp = tiled(g, &args, &host);
        assert!(dealt(&tp), "host, {what}: consecutive tasks");
        compare(g, &tp, &args, &attn_tol);
        let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("compile: {e:?}"));
        jit_agrees(g, &tp, &args, &code, &format!("host, {what}"));
    }
}

/// The host's `exp` rows that nothing reads are not stored (`kc_codegen::lower::dead_exp_stores`): without
/// the mask the vector cores read the scores in the cube's workspace and the row's sum and `p` come from the
/// same call, so no statement reads `raw_ub` and its `f32` store goes; the causal kernel's diagonal blocks
/// read their masked scores in `raw_ub`, but only the window the mask's statement has just written whole, so
/// its stores go too. A read of the buffer anywhere else in the program (after the groups, or by the partner
/// program) keeps them. Both kernels agree with the interpreter through the JIT, on 1 and 2 threads.
#[test]
fn host_drops_exp_rows_that_nothing_reads() {
    use kc_ir::tile::{Loc, Region, SExpr, Stmt, VExpr};
    let host = Target::builtin("host").expect("host target");
    let full = common::kernel("attention_full", "attention_full");
    let causal = common::kernel("attention", "attention");
    for (n, (g, dead)) in [(&full, true), (&causal, true)].into_iter().enumerate() {
        for (m, dims) in [attn_dims(1, 4, 2, 260, 300, 32), attn_dims(2, 2, 1, 64, 520, 16)].iter().enumerate() {
            let args = args_for(g, dims, 80 + 2 * n as u64 + m as u64);
            let tp = tiled(g, &args, &host);
            let l = &tp.launches[0];
            let raw = l.buffers.iter().position(|b| b.name == "raw_ub").expect("the scores' buffer");
            let raw = kc_ir::tile::BufId(raw as u32);
            let code = kc_codegen::compile(&tp, &kc_codegen::Options { verify: true, ..Default::default() })
                .unwrap_or_else(|e| panic!("compile: {e:?}"));
            let cl = &code.launches[0];
            assert_eq!(cl.dead_exp.contains(&raw), dead, "{}, {dims:?}: raw_ub's exp rows dead", g.name);
            if dead {
                // One read of the buffer after the groups: the stores are live again.
                let (_, vector) = &cl.bodies;
                let at = |b| Region {
                    loc: Loc::Buf { buf: b, slot: SExpr::Const(0) },
                    offset: SExpr::Const(0),
                    row_stride: SExpr::Const(1),
                };
                let max = l.buffers.iter().position(|b| b.name == "rawmax_ub").expect("a buffer of row values");
                let max = kc_ir::tile::BufId(max as u32);
                let read = Stmt::Vector {
                    dst: at(max),
                    rows: SExpr::Const(1),
                    cols: SExpr::Const(1),
                    expr: VExpr::Read(at(raw)),
                };
                let mut later = vector.clone();
                later.push(read.clone());
                assert!(!kc_codegen::lower::dead_exp_stores(&tp, l, &later, &l.cube).contains(&raw));
                // Inside a loop's body, before the groups of the body's next iteration.
                let mut inside = vector.clone();
                fn first_loop(b: &mut [Stmt]) -> Option<&mut Vec<Stmt>> {
                    b.iter_mut().find_map(|s| match s {
                        Stmt::For { body, .. } => Some(body),
                        _ => None,
                    })
                }
                first_loop(&mut inside).expect("the task loop").insert(0, read.clone());
                assert!(!kc_codegen::lower::dead_exp_stores(&tp, l, &inside, &l.cube).contains(&raw));
                // Mentioned by the partner program.
                let mut cube = cl.bodies.0.clone();
                cube.push(read);
                assert!(!kc_codegen::lower::dead_exp_stores(&tp, l, vector, &cube).contains(&raw));
                assert!(kc_codegen::lower::dead_exp_stores(&tp, l, vector, &l.cube).contains(&raw));
            }
            if g.name == "attention" {
                causal_reads_stay_shielded(&tp, l, &cl.bodies, raw);
            }
            jit_agrees(g, &tp, &args, &code, &format!("{}, {dims:?}", g.name));
        }
    }
}

/// The causal kernel's `exp` stores are dead because its diagonal blocks read `raw_ub` only where the mask's
/// statement wrote it last: an assignment after the mask (a register of its window may have changed), a mask
/// narrower than what is read, or a read outside the branch that ran the mask, each make them live again.
fn causal_reads_stay_shielded(
    tp: &TileProgram,
    l: &kc_ir::tile::Launch,
    bodies: &(Vec<kc_ir::tile::Stmt>, Vec<kc_ir::tile::Stmt>),
    raw: kc_ir::tile::BufId,
) {
    use kc_ir::tile::{Loc, SExpr, SVar, Stmt, VExpr};
    let (cube, vector) = bodies;
    let dead = |v: &[Stmt]| kc_codegen::lower::dead_exp_stores(tp, l, v, cube).contains(&raw);
    assert!(dead(vector));
    // Applies `f` to the body holding the first mask statement (a `where` into `raw_ub`) and its index.
    fn at_mask(b: &mut Vec<Stmt>, raw: kc_ir::tile::BufId, f: &mut dyn FnMut(&mut Vec<Stmt>, usize)) -> bool {
        for i in 0..b.len() {
            let hit = matches!(&b[i], Stmt::Vector { dst, expr: VExpr::Select(..), .. }
                if matches!(dst.loc, Loc::Buf { buf, .. } if buf == raw));
            if hit {
                f(b, i);
                return true;
            }
            if let Stmt::For { body, .. } | Stmt::If { then: body, .. } = &mut b[i] {
                if at_mask(body, raw, f) {
                    return true;
                }
            }
        }
        false
    }
    // An assignment right after the mask.
    let mut v = vector.clone();
    assert!(at_mask(&mut v, raw, &mut |b, i| b.insert(i + 1, Stmt::Set { var: SVar(0), value: SExpr::Const(0) })));
    assert!(!dead(&v), "an assignment after the mask");
    // A mask one column narrower than the reads.
    let mut v = vector.clone();
    assert!(at_mask(&mut v, raw, &mut |b, i| {
        if let Stmt::Vector { cols, .. } = &mut b[i] {
            *cols = SExpr::Bin(kc_ir::tile::SBin::Sub, Box::new(cols.clone()), Box::new(SExpr::Const(1)));
        }
    }));
    assert!(!dead(&v), "a narrower mask");
    // The mask under a condition of its own: the reads after its branch are not covered.
    let mut v = vector.clone();
    assert!(at_mask(&mut v, raw, &mut |b, i| {
        let w = b.remove(i);
        b.insert(i, Stmt::If { cond: SExpr::Const(1), then: vec![w] });
    }));
    assert!(!dead(&v), "a mask in a nested branch");
}
