//! Reductions across rows, end to end: whole-tensor reductions to a scalar (cross-entropy's `n_valid`, Muon's
//! `sum(g * g)`) and column reductions (RMSNorm backward's `dw[d] = sum[t](..)`), tiled with
//! `kc_ir::passes::tile::reduce`, verified, run by the simulator and compared with the interpreter on both
//! targets.
//!
//! Column reductions sum each column in row order, as the interpreter does: compared bit for bit. A
//! whole-tensor reduction on one core is the interpreter's sequential fold too (bit for bit); on several
//! cores it is reassociated (each core folds its chunks, then the partials are combined in core order), so
//! a float sum is compared with a tolerance (see [`sum_tolerance`]); max, min, integer sums and sums of
//! small integers (exact in f32) stay bit-exact.

use crate::common;
use kc_ir::graph::{Result_, ValueId};
use kc_ir::passes::fuse::{fuse, FusionConfig};
use kc_ir::passes::tile::{group_order, plan_gm, reduce, tile_group};
use kc_ir::target::Target;
use kc_ir::tile::{Stmt, TensorRole, TileProgram};
use kc_ir::Graph;

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

fn args_for(g: &Graph, dims: &[(&str, i64)], seed: u64) -> kc_ir::launch::Args {
    let given =
        kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

/// `g` with `vals` as its results (so that a group's stored intermediates can be compared), and nothing else.
fn with_results(g: &Graph, vals: &[ValueId]) -> Graph {
    let mut g2 = g.clone();
    g2.results = vals
        .iter()
        .map(|v| Result_ {
            name: g.node(*v).name.clone().unwrap_or_else(|| format!("t{}", v.0)),
            value: *v,
            inout: None,
        })
        .collect();
    g2
}

/// Tiles group `k` of `g` (with the other groups left out) through `tile_group`; the program's results are
/// the group's stored values.
fn tile_one_group(g: &Graph, k: usize, args: &kc_ir::launch::Args, target: &Target) -> (Graph, TileProgram) {
    let f = fuse(g, &FusionConfig::default());
    let g2 = with_results(g, &f.groups[k].stored);
    let b = kc_ir::launch::bind(&g2, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let gm = plan_gm(&g2, &f, &b).expect("gm plan");
    let name = format!("{}.g{k}", g.name);
    let t = tile_group(&g2, &f.groups[k], &name, &gm, target, &b)
        .unwrap_or_else(|| panic!("{name}: no template takes it"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // The group is taken by `reduce`, not by another template.
    assert!(reduce::reduce(&g2, &f.groups[k], &name, &gm, target, &b).is_some(), "{name}: not a reduce group");
    let mut tensors = gm.tensors;
    tensors.extend(t.workspaces);
    let tp = TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors,
        launches: t.launches,
    };
    (g2, tp)
}

/// A float sum of `n` terms folded in two different orders: each fold's error is at most about
/// `(n - 1) · u · Σ|x_i|` (`u = 2^-24`, the f32 unit roundoff; the classic bound for recursive summation), so
/// the two differ by at most `2 · n · u · Σ|x_i|` (relative to the sum: `2 · n · u · Σ|x_i| / |Σ x_i|`).
fn sum_tolerance(n: usize, abs_sum: f64) -> f64 {
    2.0 * n as f64 * f64::from(f32::EPSILON) / 2.0 * abs_sum
}

/// Verifies and simulates `tp`, and compares each result with the interpreter: within `tol[i]` (absolute)
/// where given, else bit for bit. Returns the simulator's statistics.
fn check(
    g: &Graph,
    tp: &TileProgram,
    args: &kc_ir::launch::Args,
    target: &Target,
    tol: &[Option<f64>],
) -> kc_runtime::sim::Stats {
    common::verify_tiled(g, tp, target);
    let want = common::run(g, args);
    let (got, stats) = kc_runtime::sim::run_with(tp, g, args, &kc_ir::interp::Limits::default())
        .unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for (i, ((n, w), (_, s))) in want.iter().zip(&got).enumerate() {
        let (wv, sv) = (w.to_f64_vec(), s.to_f64_vec());
        assert_eq!(wv.len(), sv.len());
        for (j, (a, b)) in wv.iter().zip(&sv).enumerate() {
            let ok = match tol.get(i).copied().flatten() {
                Some(t) => (a - b).abs() <= t || (a.is_nan() && b.is_nan()),
                None => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            };
            assert!(
                ok,
                "{}.{n}[{j}] on {} at {:?}: interp {a} vs sim {b} (tol {:?})",
                g.name,
                target.name,
                tp.dims,
                tol.get(i)
            );
        }
    }
    stats
}

fn vector_cores(tp: &TileProgram) -> Vec<u32> {
    tp.launches.iter().map(|l| l.vector_cores).collect()
}

/// Compiles a kernel given as source text ([`common::compile_ok_src`]).
fn compile_src(name: &str, src: &str) -> kc_ir::Program {
    common::compile_ok_src(name, src)
}

/// Tiles the whole kernel with `tile()`.
fn tile_all(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> TileProgram {
    common::tile_kernel(g, args, target)
}

/// Cross-entropy's `n_valid = max(sum(f32(target >= 0)), 1.0)`: a count, exact in f32 in any order, so
/// bit-exact on any number of cores. 1025 is just above the smallest per-core share (1024 elements); 3001
/// spreads over three cores.
#[test]
fn tiling_reduce_cross_entropy_n_valid() {
    let g = common::kernel("cross_entropy", "cross_entropy");
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for (n, v) in [(1, 1), (7, 1000), (13, 3), (1025, 2), (3001, 1)] {
            let args = args_for(&g, &[("N", n), ("V", v)], n as u64);
            let (g2, tp) = tile_one_group(&g, 0, &args, &target);
            let cores = vector_cores(&tp);
            if n > 1024 {
                assert_eq!(cores, vec![(n as u32).div_ceil(1024), 1], "{}: partials then combination", target.name);
            } else {
                assert_eq!(cores, vec![1], "{}: one core, one launch", target.name);
            }
            check(&g2, &tp, &args, &target, &[]);
        }
    }
}

/// Muon's `sum(g * g)`: on one core the interpreter's sequential sum (bit-exact); on several, reassociated
/// (within [`sum_tolerance`]: the terms are squares, so `Σ|x| = Σx`).
#[test]
fn tiling_reduce_muon_sum_of_squares() {
    let g = common::kernel("muon_orthogonalize", "muon_orthogonalize");
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for (m, n) in [(1, 1), (7, 13), (40, 70), (13, 97), (61, 257)] {
            let args = args_for(&g, &[("M", m), ("N", n)], (m * n) as u64);
            let (g2, tp) = tile_one_group(&g, 0, &args, &target);
            let total = (m * n) as usize;
            let abs_sum: f64 = args.tensors["g"].to_f64_vec().iter().map(|x| x * x).sum();
            let multi = tp.launches.len() == 2;
            assert_eq!(multi, total > 1024, "{}: {m}x{n}", target.name);
            let tol = multi.then(|| sum_tolerance(total, abs_sum));
            check(&g2, &tp, &args, &target, &[tol]);
        }
    }
}

/// RMSNorm backward, whole kernel: the row group by `rows`, `dw[d] = sum[t](..)` by `reduce` (bit-exact:
/// each column summed in `t` order). 65 columns is one above a column block of 64; 130 rows, two above a
/// row block of 128; 3001 columns spread over many cores.
#[test]
fn tiling_reduce_rmsnorm_bwd() {
    let g = common::kernel("rmsnorm_bwd", "rmsnorm_bwd");
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for (t, d) in [(1, 1), (7, 300), (3, 65), (130, 100), (5, 3001), (1, 17)] {
            let args = args_for(&g, &[("T", t), ("D", d)], (t + d) as u64);
            let tp = tile_all(&g, &args, &target);
            check(&g, &tp, &args, &target, &[]);
        }
    }
}

/// The dw launch: each element of `x` and `dy` is copied in once, `rstd` once per column block; `dw`
/// written once. Several cores take part, several row blocks per column block.
#[test]
fn tiling_reduce_rmsnorm_bwd_structure() {
    let g = common::kernel("rmsnorm_bwd", "rmsnorm_bwd");
    let (t, d) = (300u64, 1000u64);
    let args = args_for(&g, &[("T", t as i64), ("D", d as i64)], 5);
    let target = Target::builtin("ascend910b").expect("target");
    let tp = tile_all(&g, &args, &target);
    let li = tp.launches.iter().position(|l| l.name == "rmsnorm_bwd.g1").expect("the dw launch");
    let l = &tp.launches[li];
    let x = l.buffers.iter().find(|b| b.name == "x_in").expect("x_in");
    let acc = l.buffers.iter().find(|b| b.name == "acc0").expect("acc0");
    let dc = acc.shape[1];
    let rt = x.slot_elems() / dc;
    assert!(l.vector_cores > 1 && rt < t, "{} cores, {rt} rows per block", l.vector_cores);
    // One axis-0 reduction per slot of the row loop.
    let count = common::count_stmts;
    assert_eq!(count(&l.vector, &|s| matches!(s, Stmt::Reduce { axis: 0, accumulate: true, .. })), 2);
    let stats = check(&g, &tp, &args, &target, &[]);
    let st = &stats.launches[li];
    let blocks = d.div_ceil(dc);
    assert_eq!(st.elements.get(&kc_ir::tile::Pipe::Mte2).copied(), Some(2 * t * d + t * blocks));
    assert_eq!(st.elements.get(&kc_ir::tile::Pipe::Mte3).copied(), Some(d));
}

/// Muon's sum on several cores: each element of `g` read once, one partial per core written and read back,
/// one result written.
#[test]
fn tiling_reduce_partials_structure() {
    let g = common::kernel("muon_orthogonalize", "muon_orthogonalize");
    let (m, n) = (61u64, 257u64);
    let args = args_for(&g, &[("M", m as i64), ("N", n as i64)], 3);
    let target = Target::builtin("ascend950").expect("target");
    let (g2, tp) = tile_one_group(&g, 0, &args, &target);
    let cores = tp.launches[0].vector_cores as u64;
    assert!(cores > 4, "{cores} cores");
    assert_eq!(tp.tensors.iter().filter(|t| matches!(t.role, TensorRole::Workspace { .. })).count(), 1);
    let abs_sum: f64 = args.tensors["g"].to_f64_vec().iter().map(|x| x * x).sum();
    let stats = check(&g2, &tp, &args, &target, &[Some(sum_tolerance((m * n) as usize, abs_sum))]);
    let el = |l: usize, p| stats.launches[l].elements.get(&p).copied().unwrap_or(0);
    use kc_ir::tile::Pipe::{Mte2, Mte3};
    assert_eq!((el(0, Mte2), el(0, Mte3)), (m * n, cores));
    assert_eq!((el(1, Mte2), el(1, Mte3)), (cores, 1));
}

/// Several whole-tensor reductions (max, min, a float sum with index values, an integer sum), a scalar
/// input, in one group or several, on one core and on many.
#[test]
fn tiling_reduce_whole_tensor_forms() {
    let prog = compile_src(
        "wstats",
        "kernel wstats(x: f32[A, B], k: i32[A], s: f32) -> (spread: f32, mean: f32, cnt: i32) {\n\
         \x20   spread = max[a, b](x[a, b]) - min[a, b](x[a, b] * s);\n\
         \x20   mean = sum[a, b](x[a, b] + f32(a * B + b)) / f32(A * B);\n\
         \x20   cnt = sum[a](k[a]);\n\
         }\n",
    );
    let g = &prog.kernels[0];
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for (a, b) in [(1, 1), (3, 5), (2, 700), (1500, 3)] {
            let args = args_for(g, &[("A", a), ("B", b)], (a * b) as u64);
            let tp = tile_all(g, &args, &target);
            // The mean's sum: Σ|x + index| bounds the reassociation error, then one division (≤ 1 ulp each).
            let x = args.tensors["x"].to_f64_vec();
            let abs: f64 = x.iter().enumerate().map(|(i, v)| (v + i as f64).abs()).sum();
            let n = (a * b) as f64;
            let mean_tol = sum_tolerance((a * b) as usize, abs) / n + (abs / n) * f64::from(f32::EPSILON);
            check(g, &tp, &args, &target, &[None, Some(mean_tol), None]);
            if a * b > 1024 {
                assert!(tp.launches.len() > 3, "{}: partials and combinations", target.name);
            }
        }
    }
}

/// Column reductions with two output axes and two reduction axes, a row-broadcast `r[t, u]`, a
/// column-broadcast `w[h, d]`, a scalar, index values on both sides, a member read by another, and a bf16
/// store.
#[test]
fn tiling_reduce_column_forms() {
    let prog = compile_src(
        "colred",
        "kernel colred(x: f32[T, U, H, D], w: f32[H, D], r: f32[T, U], s: f32) -> (a: f32[H, D], b: bf16[H, D]) {\n\
         \x20   a[h, d] = max[t, u](x[t, u, h, d] * w[h, d]) + s;\n\
         \x20   b[h, d] = a[h, d] * min[t, u](x[t, u, h, d] - r[t, u] + f32(t * 3 + u + h)) + f32(h * 10 + d) + w[h, d];\n\
         }\n",
    );
    let g = &prog.kernels[0];
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for dims in [[1, 1, 1, 1], [3, 2, 3, 5], [67, 2, 1, 65], [2, 3, 7, 501]] {
            let names = ["T", "U", "H", "D"];
            let d: Vec<(&str, i64)> = names.iter().copied().zip(dims).collect();
            let args = args_for(g, &d, 7);
            let tp = tile_all(g, &args, &target);
            check(g, &tp, &args, &target, &[]);
        }
    }
}

/// Groups that are not reductions across rows are declined: row-wise reductions (softmax, RMSNorm's
/// rows), elementwise groups; every vector group `reduce` takes in `kernels/` verifies.
#[test]
fn tiling_reduce_declines_or_verifies_every_kernel() {
    let mut files: Vec<_> = std::fs::read_dir(common::repo_root().join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ker"))
        .collect();
    files.sort();
    let mut taken = 0;
    for target in TARGETS {
        let target = Target::builtin(target).expect("target");
        for path in &files {
            let prog = common::compile_ok(path);
            for g in &prog.kernels {
                let fixed: std::collections::BTreeMap<&str, i64> =
                    g.fixed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let dims = g.dims.iter().map(|d| (d.clone(), fixed.get(d.as_str()).copied().unwrap_or(5))).collect();
                let given = kc_ir::launch::Args { dims, ..Default::default() };
                let Ok(args) = kc_runtime::random::random_args(g, &given, 9) else { continue };
                let Ok(b) = kc_ir::launch::bind(g, &args) else { continue };
                let f = fuse(g, &FusionConfig::default());
                let Ok(gm) = plan_gm(g, &f, &b) else { continue };
                let Some(_) = group_order(&f) else { continue };
                for (k, group) in f.groups.iter().enumerate() {
                    let name = format!("{}.g{k}", g.name);
                    let Some(t) = reduce::reduce(g, group, &name, &gm, &target, &b) else { continue };
                    let t = t.unwrap_or_else(|e| panic!("{name}: {e}"));
                    taken += 1;
                    let mut tensors = gm.tensors.clone();
                    tensors.extend(t.workspaces);
                    let tp = TileProgram {
                        kernel: g.name.clone(),
                        target: target.name.clone(),
                        dims: b.dims.clone(),
                        tensors,
                        launches: t.launches,
                    };
                    common::verify_tiled(g, &tp, &target);
                }
            }
        }
    }
    // Row-wise reductions, and a reduction over part of a tensor (`x[0, b]`), are not taken.
    let part = compile_src("part", "kernel part(x: f32[A, B]) -> y: f32 {\n    y = sum[b](x[0, b]);\n}\n");
    let cases: [(&Graph, &[(&str, i64)]); 4] = [
        (&common::kernel("softmax", "softmax"), &[("N", 5), ("D", 7)]),
        (&common::kernel("rmsnorm", "rmsnorm"), &[("T", 5), ("D", 7)]),
        (&common::kernel("layernorm", "layernorm"), &[("T", 5), ("D", 7)]),
        (&part.kernels[0], &[("A", 3), ("B", 4)]),
    ];
    let target = Target::builtin("ascend910b").expect("target");
    for (g, dims) in cases {
        let args = args_for(g, dims, 1);
        let b = kc_ir::launch::bind(g, &args).expect("bind");
        let f = fuse(g, &FusionConfig::default());
        let gm = plan_gm(g, &f, &b).expect("gm");
        for (k, group) in f.groups.iter().enumerate() {
            assert!(reduce::reduce(g, group, "x", &gm, &target, &b).is_none(), "{}: group {k} taken", g.name);
        }
    }
    assert!(taken >= 6, "only {taken} groups taken");
}
