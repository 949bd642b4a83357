//! Every kernel of `kernels/`, end to end through the tile IR, at the sizes `kernels/dims.toml` gives:
//!
//! - `tiled_snapshots`: the `kc build --emit tiled` text of every kernel on both targets at its `snapshot`
//!   sizes (`tests/suite/snapshots/suite__tiled__tiled@KERNEL.TARGET.snap`), after the verifier accepts it;
//! - `sim_matches_interpreter`: at each `sim` case, on both targets, the simulator's results match the
//!   reference interpreter's on the same seeded random inputs, within a tolerance of the result's dtype;
//! - `reports`: the report of every kernel counts what the simulator counts (cube work, vector work) and
//!   the done-when figures hold (see each assertion).
//!
//! To accept changed snapshots: `INSTA_UPDATE=always cargo test -p kc-tests --test suite tiled`, then read
//! every changed `.snap`.

use crate::common;
use kc_ir::launch::Args;
use kc_ir::passes::fuse::{fuse, Fusion, FusionConfig};
use kc_ir::target::Target;
use kc_ir::tile::TileProgram;
use kc_ir::{DType, Graph, Tensor};
use std::collections::BTreeMap;

pub const TARGETS: [&str; 2] = ["ascend910b", "ascend950"];

/// The sizes of `kernels/dims.toml`, by kernel: the snapshot sizes, the simulator cases and the production
/// sizes.
pub struct Sizes {
    pub snapshot: BTreeMap<String, i64>,
    pub sim: Vec<BTreeMap<String, i64>>,
    /// Production (benchmark) sizes.
    pub report: BTreeMap<String, i64>,
}

pub fn sizes() -> BTreeMap<String, Sizes> {
    let path = common::repo_root().join("kernels").join("dims.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dims = |v: &toml::Value| -> BTreeMap<String, i64> {
        v.as_table()
            .unwrap_or_else(|| panic!("dims.toml: `{v}` is not a table of dims"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_integer().unwrap_or_else(|| panic!("dims.toml: `{k}` is not an integer"))))
            .collect()
    };
    doc.iter()
        .map(|(name, entry)| {
            let snapshot = dims(entry.get("snapshot").unwrap_or_else(|| panic!("dims.toml: `{name}` has no snapshot")));
            let sim = entry
                .get("sim")
                .and_then(|s| s.as_array())
                .unwrap_or_else(|| panic!("dims.toml: `{name}` has no sim cases"))
                .iter()
                .map(dims)
                .collect();
            let report = dims(entry.get("report").unwrap_or_else(|| panic!("dims.toml: `{name}` has no report size")));
            (name.clone(), Sizes { snapshot, sim, report })
        })
        .collect()
}

/// The kernel files of `kernels/`, by name.
pub fn kernel_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::repo_root().join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ker")).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Fuses, tiles and verifies `g` at `dims` (from the dims alone, as `kc build` does).
pub fn tile_at(g: &Graph, dims: &BTreeMap<String, i64>, target: &Target) -> (Fusion, TileProgram, Vec<usize>) {
    let b = kc_ir::launch::bind_dims(g, dims).unwrap_or_else(|e| panic!("{} at {dims:?}: bind: {e:?}", g.name));
    let (f, tp, of, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, target)
        .unwrap_or_else(|e| panic!("{} at {dims:?} on {}: {e}", g.name, target.name));
    common::verify_tiled(g, &tp, target);
    (f, tp, of)
}

#[test]
fn every_kernel_has_sizes() {
    let s = sizes();
    for k in kernel_names() {
        assert!(s.contains_key(&k), "kernels/dims.toml has no entry for `{k}`");
    }
    for k in s.keys() {
        assert!(kernel_names().contains(k), "kernels/dims.toml has an entry for `{k}`, which is not a kernel");
    }
}

#[test]
fn tiled_snapshots() {
    let s = sizes();
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        for t in TARGETS {
            let target = Target::builtin(t).expect("builtin target");
            let text: String = prog
                .kernels
                .iter()
                .map(|g| kc_ir::tile::print::print_program(&tile_at(g, &s[&k].snapshot, &target).1))
                .collect::<Vec<_>>()
                .join("\n");
            insta::assert_snapshot!(format!("tiled@{k}.{t}"), text);
        }
    }
}

/// Compares `got` with `want` elementwise: exact for integers and bools; for floats within the dtype's
/// rounding of each value plus a small part of the largest magnitude, since the tile programs sum in other
/// orders than the interpreter (blocked reductions, online softmax, partial sums per core) — an absolute
/// error that scales with the terms summed, not with each result.
/// The absolute part of the tolerance is `frac` × the dtype's relative tolerance × the largest magnitude.
pub fn assert_matches_within(what: &str, got: &Tensor, want: &Tensor, frac: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let c = kc_runtime::compare::compare_within(got, want, frac);
    if let Some(i) = c.first_bad {
        let (g, w) = (got.get_f64(i), want.get_f64(i));
        panic!("{what}: {} of {} elements differ; first at {i}: got {g:e}, interp {w:e}", c.bad, want.len());
    }
}

#[test]
fn sim_matches_interpreter() {
    let s = sizes();
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        for g in &prog.kernels {
            for (ci, dims) in s[&k].sim.iter().enumerate() {
                let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
                let args = kc_runtime::random::random_args(g, &given, 100 + ci as u64)
                    .unwrap_or_else(|e| panic!("{k} at {dims:?}: {e}"));
                let want = common::run(g, &args);
                for t in TARGETS {
                    let target = Target::builtin(t).expect("builtin target");
                    let (_, tp, _) = tile_at(g, dims, &target);
                    let got = kc_runtime::sim::run(&tp, g, &args)
                        .unwrap_or_else(|e| panic!("{k} at {dims:?} on {t}: sim: {e:?}"));
                    assert_eq!(got.len(), want.len());
                    for ((n, a), (_, b)) in got.iter().zip(&want) {
                        // Muon's five bf16 Newton-Schulz steps amplify a one-ulp difference of the global
                        // norm (the simulator sums it in per-core partials): after one step 92% of the
                        // values are identical and the rest one bf16 ulp apart, after five the largest
                        // difference is about 2% of the largest value (measured at M = 67, N = 131).
                        let frac = if k == "muon_orthogonalize" { 2.0 } else { 0.25 };
                        assert_matches_within(&format!("{k}.{n} at {dims:?} on {t}"), a, b, frac);
                    }
                }
            }
        }
    }
}

/// Build-time errors (tile hints, capacity, groups no template takes): each `tests/data/build_err/*.ker`
/// starts with the `kc build` line it is built with (`// kc build --emit tiled --dims A=1,B=2`, optionally
/// `--target NAME`), must fail with the code its file name starts with, at a span inside the file; the
/// snapshot is the rendered diagnostic as `kc build` prints it.
#[test]
fn build_errors() {
    insta::glob!("../data/build_err", "*.ker", |path| {
        let text = std::fs::read_to_string(path).expect("read the fixture");
        let file = path.file_name().and_then(|n| n.to_str()).expect("file name").to_string();
        let first = text.lines().next().unwrap_or_default();
        let words: Vec<&str> = first.split_whitespace().collect();
        assert!(first.starts_with("// kc build"), "{file}: the first line must be the `// kc build ...` line");
        let flag = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)).copied();
        let dims: BTreeMap<String, i64> = flag("--dims")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{file}: bad --dims `{kv}`"));
                (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{file}: bad dim `{kv}`")))
            })
            .collect();
        let target = Target::builtin(flag("--target").unwrap_or("ascend910b")).expect("builtin target");
        let mut sources = kc_frontend::SourceMap::new();
        let id = sources.add(format!("build_err/{file}"), text.clone());
        let (program, diags) = kc_frontend::compile(&mut sources, id, &common::FsLoader);
        assert!(diags.is_empty(), "{file} must compile: {}", kc_frontend::render(&diags, &sources, false));
        let mut errs = Vec::new();
        for g in &program.kernels {
            let b = kc_ir::launch::bind_dims(g, &dims).unwrap_or_else(|e| panic!("{file}: bind: {e:?}"));
            if let Err(e) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target) {
                errs.push(e);
            }
        }
        let want = &file[..5];
        assert!(errs.iter().any(|d| d.code.as_str() == want), "{file}: no {want} among {errs:?}");
        for d in &errs {
            assert!(
                (d.primary.span.end as usize) <= text.len() && d.primary.span.start <= d.primary.span.end,
                "{file}: span"
            );
            assert_ne!(d.primary.span, kc_ir::Span::default(), "{file}: the error must point into the source");
        }
        insta::assert_snapshot!(kc_frontend::render(&errs, &sources, false));
    });
}

/// The integer inputs a report follows, as `kc build --emit report` makes them (seeded random `i32`
/// tensors), by GM tensor.
/// The `i32` tensor parameters of `args`, by GM tensor of `tp`: what data-dependent control follows.
pub fn int_data(g: &Graph, tp: &TileProgram, args: &Args) -> kc_ir::report::IntData {
    let mut out = kc_ir::report::IntData::new();
    for (i, t) in tp.tensors.iter().enumerate() {
        if let kc_ir::tile::TensorRole::Param(p) = t.role {
            if let Some(v) = g.params.get(p).and_then(|p| args.tensors.get(&p.name)) {
                if v.dtype() == DType::I32 {
                    out.insert(kc_ir::tile::TensorId(i as u32), v.to_f64_vec().into_iter().map(|x| x as i64).collect());
                }
            }
        }
    }
    out
}

fn report_at(g: &Graph, dims: &BTreeMap<String, i64>, target: &Target) -> kc_ir::report::Report {
    let (f, tp, of) = tile_at(g, dims, target);
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let ints = kc_runtime::random::random_int_args(g, &given, 0).expect("int args");
    kc_ir::report::report(g, &f, &tp, &of, target, &int_data(g, &tp, &ints)).expect("report")
}

/// The report counts exactly what the simulator counts when it runs the program: cube work (2 flops per
/// multiply-accumulate) and vector work, per launch, for every kernel on both targets.
#[test]
fn report_counts_match_the_simulator() {
    let s = sizes();
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        for g in &prog.kernels {
            let dims = &s[&k].snapshot;
            let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
            for t in TARGETS {
                let target = Target::builtin(t).expect("target");
                let (_, tp, _) = tile_at(g, dims, &target);
                let (_, stats) = kc_runtime::sim::run_with(&tp, g, &args, &kc_ir::interp::Limits::default())
                    .unwrap_or_else(|e| panic!("{k} on {t}: {e:?}"));
                let counts = kc_ir::report::count(&tp, &int_data(g, &tp, &args)).expect("count");
                assert_eq!(counts.len(), stats.launches.len());
                for (c, st) in counts.iter().zip(&stats.launches) {
                    assert_eq!(c.cube_flops, 2 * st.macs, "{k} on {t}, launch {}: cube flops", st.name);
                    assert_eq!(c.vector_elements, st.vector_elements, "{k} on {t}, launch {}: vector work", st.name);
                    let stmts: u64 = c.stmts.values().sum();
                    let sim_stmts: u64 = st.stmts.values().sum();
                    assert_eq!(stmts, sim_stmts, "{k} on {t}, launch {}: statements executed", st.name);
                }
            }
        }
    }
}

pub fn dims_of(list: &[(&str, i64)]) -> BTreeMap<String, i64> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The figures the fusion-and-tiling issue asks of the report on ascend910b.
#[test]
fn report_done_when_figures() {
    let target = Target::builtin("ascend910b").expect("target");
    let one = |k: &str| common::compile_ok(common::kernel_path(k)).kernels.remove(0);

    // AdamW: one group; every input read once and every output written once.
    let g = one("adamw");
    let r = report_at(&g, &dims_of(&[("N", 100_003)]), &target);
    assert_eq!(r.groups.len(), 1);
    let (_, tp, _) = tile_at(&g, &dims_of(&[("N", 100_003)]), &target);
    let bytes = |role: fn(&kc_ir::tile::TensorRole) -> bool| -> u64 {
        tp.tensors
            .iter()
            .filter(|t| role(&t.role) && !t.shape.is_empty())
            .map(|t| t.shape.iter().product::<u64>() * t.dtype.size_bytes() as u64)
            .sum()
    };
    let inputs = bytes(|r| matches!(r, kc_ir::tile::TensorRole::Param(_)));
    let outputs = bytes(|r| matches!(r, kc_ir::tile::TensorRole::Output(_)));
    assert_eq!(r.totals.gm_bytes_read, inputs);
    assert_eq!(r.totals.gm_bytes_written, outputs);

    // Row-wise kernels: nothing bigger than one value per row crosses global memory between groups.
    for (k, dims, rows) in [
        ("rmsnorm", dims_of(&[("T", 37), ("D", 4099)]), 37u64),
        ("softmax", dims_of(&[("N", 37), ("D", 4099)]), 37),
        ("cross_entropy", dims_of(&[("N", 37), ("V", 5003)]), 37),
        // Rows wider than UB (vocabulary-sized): chunked along the columns, still one value per row at most.
        ("softmax", dims_of(&[("N", 37), ("D", 32_000)]), 37),
        ("cross_entropy", dims_of(&[("N", 37), ("V", 152_064)]), 37),
    ] {
        let r = report_at(&one(k), &dims, &target);
        for i in &r.gm_intermediates {
            assert!(i.elements <= rows, "{k}: intermediate `{}` has {} elements", i.name, i.elements);
        }
    }

    // Attention: [B, H, S, T] never in global memory; two matmuls' worth of cube work, about half with the
    // causal mask.
    let (b, h, gk, s, t, d) = (1i64, 2i64, 1i64, 512i64, 512i64, 64i64);
    let dims = dims_of(&[("B", b), ("H", h), ("G", gk), ("S", s), ("T", t), ("D", d)]);
    let bhst = (b * h * s * t) as u64;
    for k in ["attention", "attention_full", "attention_bwd"] {
        let g = one(k);
        let r = report_at(&g, &dims, &target);
        assert!(r.gm_intermediates.iter().all(|i| i.elements < bhst), "{k}: a [B, H, S, T] intermediate");
        // Workspaces are bounded per core: the same at twice the sequence lengths.
        let (_, tp, _) = tile_at(&g, &dims, &target);
        let mut bigger = dims.clone();
        bigger.insert("S".into(), 2 * s);
        bigger.insert("T".into(), 2 * t);
        let (_, tp2, _) = tile_at(&g, &bigger, &target);
        let per_core = |tp: &TileProgram| -> Vec<u64> {
            tp.tensors
                .iter()
                .filter_map(|t| match t.role {
                    kc_ir::tile::TensorRole::Workspace { per_core, .. } => Some(per_core),
                    _ => None,
                })
                .collect()
        };
        assert!(!per_core(&tp).is_empty(), "{k}: cube results reach the vector cores through a workspace");
        assert_eq!(per_core(&tp), per_core(&tp2), "{k}: workspaces grow with S and T");
        for tn in &tp.tensors {
            let n: u64 = tn.shape.iter().product();
            if !matches!(tn.role, kc_ir::tile::TensorRole::Workspace { .. }) {
                assert!(n < bhst, "{k}: GM tensor `{}` has {n} elements", tn.name);
            }
        }
    }
    let full = (4 * b * h * s * t * d) as f64;
    // The causal fraction falls towards one half as the sequence grows (the diagonal blocks are the
    // excess): at S = T = 1024 it must be at most 55%.
    let causal_dims = dims_of(&[("B", b), ("H", h), ("G", gk), ("S", 1024), ("T", 1024), ("D", d)]);
    let causal = report_at(&one("attention"), &causal_dims, &target).totals.cube_flops as f64;
    let full_1024 = (4 * b * h * 1024 * 1024 * d) as f64;
    assert!(causal <= 0.55 * full_1024, "causal attention: {causal} cube flops, more than 55% of {full_1024}");
    let g = one("attention_full");
    let flops = report_at(&g, &dims, &target).totals.cube_flops as f64;
    assert!((flops - full).abs() <= 0.02 * full, "attention without a mask: {flops} cube flops, want {full} ± 2%");

    // MoE experts: the three matmuls of each row once.
    let (rr, m, f, e) = (512i64, 128i64, 96i64, 8i64);
    let r = report_at(&one("moe_experts"), &dims_of(&[("R", rr), ("M", m), ("F", f), ("E", e)]), &target);
    let want = (6 * rr * m * f) as f64;
    let got = r.totals.cube_flops as f64;
    assert!((got - want).abs() <= 0.10 * want, "moe_experts: {got} cube flops, want {want} ± 10%");
}

/// Tile hints that fit are honoured exactly, and the program still computes the interpreter's results: an
/// elementwise chunk of 3 whole rows, a 32 x 64 matmul base block, row blocks of 3 rows with a reduction.
#[test]
fn tile_hints_are_honoured() {
    let ew = common::compile_ok_src(
        "hint_ew",
        "kernel k(x: f32[T, D]) -> y: f32[T, D] {\n    #[tile(t: 3)] y[t, d] = exp(x[t, d]) * 2.0;\n}\n",
    );
    let mm = common::compile_ok_src(
        "hint_mm",
        "kernel mm(a: bf16[M, K], b: bf16[K, N]) -> c: bf16[M, N] {\n    #[tile(i: 32, j: 64)] c[i, j] = \
         sum[k](a[i, k] * b[k, j]);\n}\n",
    );
    let rows = common::compile_ok_src(
        "hint_rows",
        "kernel rms(x: bf16[T, D], w: bf16[D]) -> (y: bf16[T, D], rstd: f32[T]) {\n    #[tile(t: 3)] rstd[t] = \
         rsqrt(sum[d](f32(x[t, d]) * f32(x[t, d])) / D + 1e-6);\n    y[t, d] = x[t, d] * rstd[t] * w[d];\n}\n",
    );
    for t in TARGETS {
        let target = Target::builtin(t).expect("target");
        let g = &rows.kernels[0];
        let dims = dims_of(&[("T", 10), ("D", 37)]);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let red = tp.launches[0].buffers.iter().find(|b| b.name == "rstd_red0").expect("the row sums' buffer");
        assert_eq!(red.shape, vec![3, 1], "{t}: blocks of 3 rows");
        let args = kc_runtime::random::random_args(g, &Args { tensors: BTreeMap::new(), dims }, 5).expect("args");
        let got = kc_runtime::sim::run(&tp, g, &args).expect("sim");
        assert_eq!(got, common::run(g, &args));

        let g = &ew.kernels[0];
        let dims = dims_of(&[("T", 10), ("D", 37)]);
        let (_, tp, _) = tile_at(g, &dims, &target);
        // Chunks of 3 rows of 37 (111 elements), in slots padded to 128 for UB's 32-byte alignment.
        assert!(tp.launches[0].buffers.iter().all(|b| b.shape == vec![128]), "{t}: {:?}", tp.launches[0].buffers);
        let text = kc_ir::tile::print::print_program(&tp);
        assert!(text.contains("min(111, "), "{t}: the chunk is 111 elements:\n{text}");
        let args = kc_runtime::random::random_args(g, &Args { tensors: BTreeMap::new(), dims }, 5).expect("args");
        let got = kc_runtime::sim::run(&tp, g, &args).expect("sim");
        assert_eq!(got, common::run(g, &args));

        let g = &mm.kernels[0];
        let dims = dims_of(&[("M", 100), ("K", 70), ("N", 130)]);
        let (_, tp, _) = tile_at(g, &dims, &target);
        let l0c = tp.launches[0].buffers.iter().find(|b| b.mem == kc_ir::tile::Mem::L0C).expect("an L0C buffer");
        assert_eq!(l0c.shape, vec![32, 64], "{t}");
        let args = kc_runtime::random::random_args(g, &Args { tensors: BTreeMap::new(), dims }, 5).expect("args");
        let got = kc_runtime::sim::run(&tp, g, &args).expect("sim");
        assert_eq!(got, common::run(g, &args));
    }
}

/// A score (flash) group that the score template cannot tile at the sizes asked for (Muon's value, `N`
/// columns wide, does not fit the on-chip accumulators) is fused again without it: matmuls with
/// epilogues, the score-shaped values in GM. At small `N` the score group stays.
#[test]
fn a_score_group_too_wide_falls_back_to_matmuls() {
    let target = Target::builtin("ascend910b").expect("target");
    let g = common::compile_ok(common::kernel_path("muon_orthogonalize")).kernels.remove(0);
    let kinds = |m: i64, n: i64| -> Vec<kc_ir::passes::fuse::GroupKind> {
        let (f, _, _) = tile_at(&g, &dims_of(&[("M", m), ("N", n)]), &target);
        f.groups.iter().map(|gr| gr.kind).collect()
    };
    let score = kc_ir::passes::fuse::GroupKind::Score;
    assert_eq!(kinds(40, 70).iter().filter(|k| **k == score).count(), 5, "one score group per step");
    let wide = kinds(33, 2100);
    assert!(!wide.contains(&score), "{wide:?}");
    assert!(wide.iter().filter(|k| **k == kc_ir::passes::fuse::GroupKind::Matmul).count() >= 15, "{wide:?}");
    // Plain fusion, which knows no sizes, still forms the score groups.
    let f = fuse(&g, &FusionConfig::from_hints(&g));
    assert_eq!(f.groups.iter().filter(|gr| gr.kind == score).count(), 5);
}
