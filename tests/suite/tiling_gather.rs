//! Row-wise tiling with gathers, end to end: the MoE kernels (a row gather `x[order[r] / K, m]`, a shifted
//! read under a guard `c[e - 1]`, a sum over gathered rows `sum[j](w[t, j] * ys[pos[t * K + j], m])`, element
//! gathers `s[t, chosen[t, j]]`, a reduction over the group's later axes) and cross-entropy's guarded element
//! gather `logits[n, target[n]]` are fused and tiled — every vector group with `rows`, the other groups with
//! whatever template takes them — verified, run by the simulator and compared with the interpreter bit for
//! bit: the gathers move values unchanged, and the looped reduction folds its terms in the interpreter's
//! order starting from its identity, so every operation is the interpreter's in the interpreter's order.
//! Out-of-range indices must stop the simulator with the interpreter's error (code and span), axis by axis.

use crate::common;
use kc_ir::diag::Code;
use kc_ir::dtype::DType;
use kc_ir::launch::Args;
use kc_ir::passes::fuse::{fuse, FusionConfig, GroupKind};
use kc_ir::passes::tile::{group_order, plan_gm, rows, tile_group};
use kc_ir::target::Target;
use kc_ir::tile::{Loc, Pipe, Stmt, TensorId, TileProgram};
use kc_ir::Graph;

const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// Tiles every group of `g`: vector groups with a parallel space must be taken by `rows`; the others go
/// through `tile_group`, and those no template takes are left out (their count is returned).
fn tile_all(g: &Graph, args: &Args, target: &Target) -> (TileProgram, usize) {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let mut gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    let mut skipped = 0;
    for k in group_order(&f).expect("the groups can be ordered") {
        let group = &f.groups[k];
        let name = format!("{}.g{k}", g.name);
        if group.kind == GroupKind::Vector && group.parallel > 0 {
            let l = rows::rows(g, group, &name, &gm, target, &b)
                .unwrap_or_else(|| panic!("{name} on {} ({:?}): not taken by `rows`", target.name, b.dims));
            launches.push(l.unwrap_or_else(|e| panic!("{name}: {e}")));
            continue;
        }
        match tile_group(g, group, &name, &gm, target, &b) {
            Some(t) => {
                let t = t.unwrap_or_else(|e| panic!("{name}: {e}"));
                gm.tensors.extend(t.workspaces);
                launches.extend(t.launches);
            }
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

/// Tiles, verifies, simulates and compares `g` on `args`; `skip` names results that depend on groups no
/// template takes yet (`skipped` of them), which are not compared.
fn check_args(g: &Graph, args: &Args, target: &str, skip: &[&str], skipped: usize) {
    let target = Target::builtin(target).expect("builtin target");
    let (tp, n) = tile_all(g, args, &target);
    assert_eq!(n, skipped, "{}: groups no template takes", g.name);
    common::verify_tiled(g, &tp, &target);
    let want = common::run(g, args);
    let got = kc_runtime::sim::run(&tp, g, args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
    assert_eq!(want.len(), got.len());
    for ((n, w), (_, s)) in want.iter().zip(&got) {
        if skip.contains(&n.as_str()) {
            continue;
        }
        common::assert_same_bits(&format!("{}.{n} on {} at {:?}", g.name, target.name, args.dims), w, s);
    }
}

fn random(g: &Graph, dims: &[(&str, i64)], seed: u64) -> Args {
    let given = Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
    kc_runtime::random::random_args(g, &given, seed).expect("random args")
}

fn check(file: &str, dims: &[(&str, i64)], seed: u64) {
    let g = common::kernel(file, file);
    let args = random(&g, dims, seed);
    for target in TARGETS {
        check_args(&g, &args, target, &[], 0);
    }
}

/// Compiles a kernel given as source text ([`common::compile_ok_src`]).
fn compile_src(name: &str, src: &str) -> Graph {
    common::compile_ok_src(name, src).kernels.into_iter().next().expect("one kernel")
}

/// `xs[r, m] = x[order[r] / K, m]` gathers whole rows; `offsets[e] = where(e == 0, 0, c[e - 1])` reads a
/// shifted index under its guard. Sizes 1, primes, and more rows than 48 / 64 cores (several per core).
#[test]
fn tiling_gather_moe_permute() {
    for (t, k, m, e) in [(1, 1, 1, 1), (9, 2, 40, 4), (13, 3, 7, 5), (1, 2, 3, 1), (67, 1, 17, 3)] {
        check("moe_permute", &[("T", t), ("K", k), ("M", m), ("E", e)], (t * 31 + m) as u64);
    }
}

/// `y[t, m] = sum[j](w[t, j] * ys[pos[t * K + j], m])`: a loop over `j` gathering `pos` (an element), then
/// `ys`'s row, folded into the accumulator in `j` order.
#[test]
fn tiling_gather_moe_combine() {
    for (t, k, m) in [(1, 1, 1), (9, 2, 40), (7, 3, 13), (65, 2, 5)] {
        check("moe_combine", &[("T", t), ("K", k), ("M", m)], (t + k * 7) as u64);
    }
}

/// The routing kernel: group 4 reads `groups[t, g]` under a sum over `g` (tiled with one row axis and a loop
/// over `g`), group 6 gathers `s[t, chosen[t, j]]` and normalizes by the row sum.
#[test]
fn tiling_gather_moe_route() {
    for (t, m, e) in [(1, 1, 16), (9, 40, 16), (5, 3, 24), (49, 2, 16)] {
        check("moe_route", &[("T", t), ("M", m), ("E", e)], (t * 3 + e) as u64);
    }
}

/// Rows wider than UB holds many of: blocks of a few rows, more blocks than cores, so both slots of the
/// double buffer are used; the gather moves exactly the rows (and the row gather one index per row).
#[test]
fn tiling_gather_row_gather_moves_whole_rows() {
    let g = common::kernel("moe_permute", "moe_permute");
    let (t, k, m, e) = (67i64, 2i64, 20000i64, 3i64);
    let args = random(&g, &[("T", t), ("K", k), ("M", m), ("E", e)], 5);
    for target in TARGETS {
        check_args(&g, &args, target, &[], 0);
        let tgt = Target::builtin(target).expect("builtin target");
        let (tp, _) = tile_all(&g, &args, &tgt);
        let li = tp.launches.iter().position(|l| l.name == "moe_permute.g1").expect("the xs launch");
        let blocks = |s: &[Stmt]| -> usize {
            fn count(s: &[Stmt]) -> usize {
                s.iter()
                    .map(|x| match x {
                        Stmt::Gather { .. } => 1,
                        Stmt::For { body, .. } => count(body),
                        Stmt::If { then, .. } => count(then),
                        _ => 0,
                    })
                    .sum()
            }
            count(s)
        };
        assert_eq!(blocks(&tp.launches[li].vector), 2, "one row gather per slot");
        let (_, stats) = kc_runtime::sim::run_with(&tp, &g, &args, &kc_ir::interp::Limits::default())
            .unwrap_or_else(|e| panic!("sim: {e:?}"));
        let st = &stats.launches[li];
        // MTE2 moves `order` (one element per row) and the gathered rows, nothing else.
        assert_eq!(st.elements.get(&Pipe::Mte2).copied(), Some((t * k + t * k * m) as u64), "{target}");
        // A copy and a gather per block, and more blocks than cores: both slots are used.
        assert!(st.stmts.get(&Pipe::Mte2).copied().unwrap_or(0) > 2 * tp.launches[li].vector_cores as u64);
    }
}

/// Cross-entropy's row group: `loss[n] = where(target[n] >= 0, lse[n] - logits[n, target[n]], 0.0)`, with
/// some negative targets (ignored rows, where the interpreter never evaluates the load). Group 0 (the
/// scalar `n_valid`) is another template's; `dlogits` reads it, so only `loss` is compared.
#[test]
fn tiling_gather_cross_entropy_negative_targets() {
    let g = common::kernel("cross_entropy", "cross_entropy");
    for (n, v) in [(1, 1), (7, 1000), (13, 31), (50, 7)] {
        let mut rng = common::Rng::new((n * v) as u64);
        let logits = common::rand_tensor(&mut rng, DType::BF16, &[n as usize, v as usize]);
        let target: Vec<i32> = (0..n).map(|i| if i % 3 == 1 { -1 - (i % 5) } else { rng.int(0, v) }).collect();
        let tt = common::i32_tensor(&[n as usize], target);
        let args = common::args(&[("logits", &logits), ("target", &tt)], &[]);
        for target in TARGETS {
            check_args(&g, &args, target, &[], 0);
        }
    }
    // Random targets too.
    let args = random(&g, &[("N", 11), ("V", 97)], 3);
    check_args(&g, &args, "ascend910b", &[], 0);
}

/// An unguarded out-of-range index stops the simulator with the interpreter's error (same code, same span),
/// per axis: `t[n] = V` at `n = 0` or `-1` at `n = 1` would still be inside the flat tensor.
#[test]
fn tiling_gather_out_of_range_index() {
    let g = compile_src(
        "pick",
        "kernel pick(x: f32[N, V], t: i32[N]) -> (y: f32[N], z: f32[N, V]) {\n\
         \x20   y[n] = x[n, t[n]] * 2.0;\n\
         \x20   z[n, v] = x[n, (t[n] + v) % V] + 1.0;\n\
         }\n",
    );
    let (n, v) = (5usize, 9usize);
    let mut rng = common::Rng::new(1);
    let x = common::rand_tensor(&mut rng, DType::F32, &[n, v]);
    for bad in [vec![9, 0, 1, 2, 3], vec![0, -1, 1, 2, 3], vec![0, 1, 2, 3, 100]] {
        let tt = common::i32_tensor(&[n], bad.clone());
        let args = common::args(&[("x", &x), ("t", &tt)], &[]);
        let ie = kc_ir::interp::run(&g, &args).expect_err("the interpreter refuses the index");
        for target in TARGETS {
            let tgt = Target::builtin(target).expect("builtin target");
            let (tp, skipped) = tile_all(&g, &args, &tgt);
            assert_eq!(skipped, 0);
            common::verify_tiled(&g, &tp, &tgt);
            let se = kc_runtime::sim::run(&tp, &g, &args).expect_err("the simulator refuses the index");
            assert_eq!(se[0].code, Code::IndexOutOfRange, "{bad:?} on {target}: {}", se[0].message);
            assert_eq!((se[0].code, se[0].primary.span), (ie[0].code, ie[0].primary.span), "{bad:?} on {target}");
        }
    }
    // In range, both members match (the element gather of `z` has a column per `v`).
    let tt = common::i32_tensor(&[n], vec![8, 0, 3, 3, 1]);
    let args = common::args(&[("x", &x), ("t", &tt)], &[]);
    for target in TARGETS {
        check_args(&g, &args, target, &[], 0);
    }
}

/// The mechanisms beyond the four kernels: a looped max over gathered rows, a looped integer sum, a read
/// shifted along the columns under a per-column guard, and a guarded element gather inside a column
/// reduction; shapes 1, primes, and rows of a few elements.
#[test]
fn tiling_gather_general_forms() {
    let g = compile_src(
        "forms",
        "kernel forms(x: f32[R, M], idx: i32[T, J], n: i32[T, J]) -> (a: f32[T, M], b: i32[T, M], c: f32[R, M], d: f32[T]) {\n\
         \x20   a[t, m] = max[j](x[idx[t, j], m] * 0.5);\n\
         \x20   b[t, m] = sum[j](n[t, j] * (m + 1));\n\
         \x20   c[r, m] = where(m + 1 < M, x[r, m + 1] - x[r, m], 0.0);\n\
         \x20   d[t] = sum[j](where(idx[t, j] > 0, x[idx[t, j] - 1, j % M], -1.0));\n\
         }\n",
    );
    for (t, r, m, j) in [(1, 1, 1, 1), (7, 5, 13, 3), (3, 11, 2, 4), (70, 9, 3, 2)] {
        let mut rng = common::Rng::new((t * 100 + m) as u64);
        let x = common::rand_tensor(&mut rng, DType::F32, &[r as usize, m as usize]);
        let idx: Vec<i32> = (0..t * j).map(|_| rng.int(0, r)).collect();
        let n: Vec<i32> = (0..t * j).map(|_| rng.int(-50, 50)).collect();
        let args = common::args(
            &[
                ("x", &x),
                ("idx", &common::i32_tensor(&[t as usize, j as usize], idx)),
                ("n", &common::i32_tensor(&[t as usize, j as usize], n)),
            ],
            &[],
        );
        for target in TARGETS {
            check_args(&g, &args, target, &[], 0);
        }
    }
}

/// A looped f32 reduction folds each step into its accumulator in one vector statement (`acc = acc op
/// body`): max and min keep the interpreter's NaN rules and signed zeros, the sum its sequential order —
/// on both simulators and under the JIT on the host, bit for bit, with NaN, infinities and both zeros in
/// the gathered rows.
#[test]
fn looped_reductions_keep_nans_and_signed_zeros() {
    let g = compile_src(
        "loopnan",
        "kernel loopnan(x: f32[R, M], idx: i32[T, J]) -> (a: f32[T, M], b: f32[T, M], s: f32[T, M]) {\n\
         \x20   a[t, m] = max[j](x[idx[t, j], m]);\n\
         \x20   b[t, m] = min[j](x[idx[t, j], m] * -1.0);\n\
         \x20   s[t, m] = sum[j](x[idx[t, j], m] * 0.5);\n\
         }\n",
    );
    let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5, -2.0];
    for (t, r, m, j) in [(1, 3, 1, 1), (5, 7, 13, 3), (33, 11, 5, 4)] {
        let mut rng = common::Rng::new((t * 31 + m) as u64);
        let xv: Vec<f32> = (0..r * m)
            .map(|_| {
                if rng.int(0, 3) == 0 {
                    special[rng.int(0, special.len() as i32) as usize]
                } else {
                    rng.uniform(-1.0, 1.0)
                }
            })
            .collect();
        let x = kc_ir::tensor::Tensor::from_f32_as(DType::F32, vec![r as usize, m as usize], &xv).expect("x");
        let idx: Vec<i32> = (0..t * j).map(|_| rng.int(0, r)).collect();
        let args = common::args(&[("x", &x), ("idx", &common::i32_tensor(&[t as usize, j as usize], idx))], &[]);
        for target in TARGETS {
            check_args(&g, &args, target, &[], 0);
        }
        let host = Target::builtin("host").expect("host target");
        let tp = common::tile_kernel(&g, &args, &host);
        let loops = tp
            .launches
            .iter()
            .map(|l| common::count_stmts(&l.vector, &|s| matches!(s, Stmt::Reduce { .. })))
            .sum::<usize>();
        assert_eq!(loops, 0, "the looped reductions are vector statements, not element-wise reduces");
        host_jit_same_bits(&g, &args, &tp, &format!("{t}x{m}x{j}"));
    }
}

/// On the host, moe_permute's gathered rows leave UB by a copy (`forward::identity_stores`): the vector
/// statement that stored them into `xs` (what copy forwarding left of `xs = xs_g0` and `xs`'s copy out)
/// widened every element to f32 and rounded it back. The JIT's results are the interpreter's, bit for bit,
/// with NaNs (quiet and signalling, with payloads), infinities and both zeros among the rows, on 1 and 2
/// threads.
#[test]
fn host_stores_gathered_rows_as_copies() {
    let g = common::kernel("moe_permute", "moe_permute");
    let host = Target::builtin("host").expect("host target");
    let special: [u16; 8] = [0x7fc0, 0x7fc5, 0xffa1, 0x7f81, 0x8000, 0x0000, 0x7f80, 0xff80];
    for (t, k, m, e) in [(1, 1, 1, 1), (9, 2, 40, 4), (13, 3, 77, 5)] {
        let mut rng = common::Rng::new((t * 7 + m) as u64);
        let xv: Vec<half::bf16> = (0..t * m)
            .map(|_| {
                if rng.int(0, 3) == 0 {
                    half::bf16::from_bits(special[rng.int(0, special.len() as i32) as usize])
                } else {
                    half::bf16::from_f32(rng.uniform(-2.0, 2.0))
                }
            })
            .collect();
        let x = kc_ir::tensor::Tensor::new(vec![t, m], kc_ir::tensor::TensorData::BF16(xv)).expect("x");
        let idx: Vec<i32> = (0..t * k).map(|_| rng.int(0, e)).collect();
        let args = common::args(&[("x", &x), ("idx", &common::i32_tensor(&[t, k], idx))], &[("E", e as i64)]);
        let tp = common::tile_kernel(&g, &args, &host);
        // The launch that writes `xs` stores it by copies only, after forwarding.
        let xs = tp.tensors.iter().position(|x| x.name == "xs").expect("xs") as u32;
        let to_xs = |s: &Stmt| matches!(s, Stmt::Copy { dst, .. } | Stmt::Vector { dst, .. } if dst.loc == Loc::Gm(TensorId(xs)));
        let l = tp.launches.iter().find(|l| common::count_stmts(&l.vector, &to_xs) > 0).expect("a launch stores xs");
        let fwd = kc_codegen::forward::forward(&tp, l, &l.vector);
        let stores = |f: &dyn Fn(&Stmt) -> bool| common::count_stmts(&fwd, &|s| to_xs(s) && f(s));
        assert!(stores(&|s| matches!(s, Stmt::Copy { .. })) > 0, "xs is stored by copies: {fwd:#?}");
        assert_eq!(stores(&|s| matches!(s, Stmt::Vector { .. })), 0, "no vector statement stores xs: {fwd:#?}");
        host_jit_same_bits(&g, &args, &tp, &format!("{t}x{k}x{m}"));
    }
}

/// Compiles `tp` (tiled for the host) and runs it on 1 and 2 threads: every result is the interpreter's, bit
/// for bit. `at` names the case in a failure.
fn host_jit_same_bits(g: &Graph, args: &Args, tp: &TileProgram, at: &str) {
    let compiled =
        kc_codegen::compile(tp, &kc_codegen::Options { verify: true, ..Default::default() }).expect("compiles");
    let want = common::run(g, args);
    for threads in [1, 2] {
        let (got, _) = compiled
            .run(tp, g, args, threads, &kc_ir::interp::Limits::default())
            .unwrap_or_else(|e| panic!("jit: {e:?}"));
        for ((n, w), (_, s)) in want.iter().zip(&got) {
            common::assert_same_bits(&format!("{}.{n} (jit, {threads} threads) at {at}", g.name), w, s);
        }
    }
}
