//! The cost model (`kc_ir::cost`): the figures the cost-model issue asks for, sanity on every kernel, the
//! overlap double buffering buys, and tile choice by the model.

use crate::common;
use crate::tiled::{dims_of, int_data, kernel_names, sizes, tile_at, TARGETS};
use kc_ir::cost::{estimate, Estimate};
use kc_ir::report::IntData;
use kc_ir::target::Target;
use kc_ir::tile::{Pipe, TileProgram};
use std::collections::BTreeMap;

fn estimate_at(kernel: &str, dims: &BTreeMap<String, i64>, target: &Target) -> (TileProgram, Estimate) {
    let g = common::compile_ok(common::kernel_path(kernel)).kernels.remove(0);
    let (_, tp, _) = tile_at(&g, dims, target);
    let (e, _) = estimate(&tp, target, &IntData::new(), false).expect("estimate");
    (tp, e)
}

/// Bytes of every tensor parameter (read) and output (written) of a program: what it must move at least.
fn must_move(tp: &TileProgram) -> u64 {
    tp.tensors
        .iter()
        .filter(|t| matches!(t.role, kc_ir::tile::TensorRole::Param(_) | kc_ir::tile::TensorRole::Output(_)))
        .filter(|t| !t.shape.is_empty())
        .map(|t| t.shape.iter().product::<u64>() * t.dtype.size_bytes() as u64)
        .sum()
}

/// The figures on ascend910b: a bf16 matmul 4096³ at ≥ 85% of the cube peak; AdamW on 64M
/// parameters at ≥ 80% of the global-memory roofline for the bytes it must move.
#[test]
fn done_when_estimates() {
    let t = Target::builtin("ascend910b").expect("target");
    let (_, e) = estimate_at("matmul", &dims_of(&[("M", 4096), ("N", 4096), ("K", 4096)]), &t);
    let frac = e.cube_flops_per_s() / e.peak_cube_flops_per_s;
    assert_eq!(e.cube_flops(), 2 * 4096u64.pow(3));
    assert!(frac >= 0.85, "matmul 4096^3 at {:.1}% of the cube peak", 100.0 * frac);
    assert_eq!(e.bound(), "M", "a big matmul is bound by the cube");

    let (tp, e) = estimate_at("adamw", &dims_of(&[("N", 64 << 20)]), &t);
    let roofline_us = must_move(&tp) as f64 / e.peak_gm_bytes_per_s * 1e6;
    let frac = roofline_us / e.time_us();
    assert!((0.8..=1.0 + 1e-9).contains(&frac), "adamw 64M at {:.1}% of the GM roofline", 100.0 * frac);
    assert_eq!(e.bound(), "GM", "AdamW is bound by global memory");

    // Causal attention (B=1, H=32, G=8, S=T=4096, D=128): at least 50% of the cube peak over the unmasked
    // work (issue 4; docs/cost-model.md has the analysis); the cube work itself is about half of the
    // unmasked square, as it must be.
    let dims = dims_of(&[("B", 1), ("H", 32), ("G", 8), ("S", 4096), ("T", 4096), ("D", 128)]);
    let (_, e) = estimate_at("attention", &dims, &t);
    let unmasked = 4.0 * 32.0 * 128.0 * 4096.0 * 4097.0 / 2.0;
    let frac = unmasked / (e.time_us() * 1e-6) / e.peak_cube_flops_per_s;
    assert!(frac >= 0.50, "causal attention at {:.1}% of the cube peak over the unmasked work", 100.0 * frac);
    assert!((e.cube_flops() as f64) < 1.05 * unmasked, "{} cube flops for {unmasked} unmasked", e.cube_flops());
}

/// On every kernel and both targets: the estimate is finite and positive, each pipe's busy fraction is a
/// fraction, the estimate counts what the report walk counts, and it is deterministic.
#[test]
fn every_kernel_is_estimated() {
    let s = sizes();
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        for g in &prog.kernels {
            for tn in TARGETS {
                let target = Target::builtin(tn).expect("target");
                let dims = &s[&k].snapshot;
                let (_, tp, _) = tile_at(g, dims, &target);
                let given = kc_ir::launch::Args { tensors: BTreeMap::new(), dims: dims.clone() };
                let ints = kc_runtime::random::random_int_args(g, &given, 0).expect("int args");
                let data = int_data(g, &tp, &ints);
                let (e, tl) = estimate(&tp, &target, &data, true).unwrap_or_else(|d| panic!("{k} on {tn}: {d}"));
                let what = format!("{k} on {tn}");
                assert!(e.cycles().is_finite() && e.cycles() > 0.0, "{what}: {} cycles", e.cycles());
                assert!((e.time_us() - e.cycles() / (target.clock_ghz * 1e3)).abs() < 1e-9, "{what}");
                for l in &e.launches {
                    for (p, f) in l.pipe_busy() {
                        assert!((0.0..=1.0 + 1e-9).contains(&f), "{what}, {}: {} busy {f}", l.name, p.name());
                    }
                }
                let counts = kc_ir::report::count(&tp, &data).expect("count");
                for (c, l) in counts.iter().zip(&e.launches) {
                    assert_eq!(c, &l.counts, "{what}, launch {}", l.name);
                }
                // The timeline covers the estimate: launches back to back, slices within their launch.
                let tl = tl.expect("timeline");
                assert_eq!(tl.launches.len(), e.launches.len());
                for (span, l) in tl.launches.iter().zip(&e.launches) {
                    assert!((span.end - span.start - l.cycles).abs() < 1e-6, "{what}: {}", l.name);
                }
                for sl in &tl.slices {
                    let span = &tl.launches[sl.launch as usize];
                    assert!(sl.start >= span.start - 1e-6 && sl.end <= span.end + 1e-6, "{what}: {sl:?}");
                }
                let (again, _) = estimate(&tp, &target, &data, false).expect("estimate");
                assert_eq!(e, again, "{what}: the estimate is deterministic");
            }
        }
    }
}

/// Whether two pipes of one core run at the same time somewhere in the timeline.
fn overlap(tl: &kc_ir::cost::timeline::Timeline, cube: bool, a: Pipe, b: Pipe) -> f64 {
    let on = |p: Pipe| -> Vec<(f64, f64)> {
        tl.slices
            .iter()
            .filter(|s| s.core.cube == cube && s.core.index == 0 && s.pipe == p)
            .map(|s| (s.start, s.end))
            .collect()
    };
    let (xs, ys) = (on(a), on(b));
    let mut total = 0.0;
    for (s0, e0) in &xs {
        for (s1, e1) in &ys {
            total += (e0.min(*e1) - s0.max(*s1)).max(0.0);
        }
    }
    total
}

/// Double buffering shows in the timeline: a vector core's copies in overlap its vector work (AdamW), a
/// cube core's copies in overlap its mmads (matmul), and both in attention.
#[test]
fn double_buffering_overlaps_copies_and_compute() {
    let t = Target::builtin("ascend910b").expect("target");
    let (tp, _) = estimate_at("adamw", &dims_of(&[("N", 1 << 20)]), &t);
    let (e, tl) = estimate(&tp, &t, &IntData::new(), true).expect("estimate");
    let tl = tl.expect("timeline");
    let busy_v: f64 = tl
        .slices
        .iter()
        .filter(|s| !s.core.cube && s.core.index == 0 && s.pipe == Pipe::V)
        .map(|s| s.end - s.start)
        .sum();
    let o = overlap(&tl, false, Pipe::Mte2, Pipe::V);
    assert!(o > 0.3 * busy_v, "adamw: MTE2 overlaps V for {o} of V's {busy_v} cycles ({} total)", e.cycles());
    let (tp, _) = estimate_at("matmul", &dims_of(&[("M", 1024), ("N", 1024), ("K", 1024)]), &t);
    let (_, tl) = estimate(&tp, &t, &IntData::new(), true).expect("estimate");
    let tl = tl.expect("timeline");
    let busy_m: f64 = tl
        .slices
        .iter()
        .filter(|s| s.core.cube && s.core.index == 0 && s.pipe == Pipe::M)
        .map(|s| s.end - s.start)
        .sum();
    let o = overlap(&tl, true, Pipe::Mte2, Pipe::M);
    assert!(o > 0.5 * busy_m, "matmul: MTE2 overlaps M for {o} of M's {busy_m} cycles");
    // Attention: a vector core's score loads (a ring of two UB slots) overlap its vector work, and the cube
    // core's k and v loads (two L1 slots) its mmads.
    let dims = dims_of(&[("B", 1), ("H", 2), ("G", 1), ("S", 1024), ("T", 1024), ("D", 128)]);
    let (tp, _) = estimate_at("attention", &dims, &t);
    let (_, tl) = estimate(&tp, &t, &IntData::new(), true).expect("estimate");
    let tl = tl.expect("timeline");
    let busy = |cube: bool, p: Pipe| -> f64 {
        tl.slices
            .iter()
            .filter(|s| s.core.cube == cube && s.core.index == 0 && s.pipe == p)
            .map(|s| s.end - s.start)
            .sum()
    };
    let o = overlap(&tl, false, Pipe::Mte2, Pipe::V);
    let b2 = busy(false, Pipe::Mte2);
    assert!(o > 0.5 * b2, "attention: a vector core's MTE2 overlaps V for {o} of MTE2's {b2} cycles");
    let o = overlap(&tl, true, Pipe::Mte2, Pipe::M);
    let bm = busy(true, Pipe::Mte2);
    assert!(o > 0.3 * bm, "attention: the cube core's MTE2 overlaps M for {o} of MTE2's {bm} cycles");
}

/// The tiler keeps the candidate the model ranks first, and it is no slower (by the full estimate) than a
/// base block the author could have forced with a hint.
#[test]
fn the_tiler_keeps_the_models_best_tiling() {
    let t = Target::builtin("ascend910b").expect("target");
    let g = common::compile_ok(common::kernel_path("matmul")).kernels.remove(0);
    let dims = dims_of(&[("M", 1024), ("N", 2048), ("K", 512)]);
    let b = kc_ir::launch::bind_dims(&g, &dims).expect("bind");
    let f = kc_ir::passes::fuse::fuse(&g, &kc_ir::passes::fuse::FusionConfig::from_hints(&g));
    let (tp, _, cands) = kc_ir::passes::tile::tile_tuned(&g, &f, &b, &t).expect("tile");
    assert!(cands.len() > 20, "{} candidates", cands.len());
    let chosen: Vec<_> = cands.iter().filter(|c| c.chosen).collect();
    assert_eq!(chosen.len(), 1);
    assert!(cands.iter().filter(|c| c.simulated).all(|c| c.cycles >= chosen[0].cycles), "the kept is the fastest");
    // Candidates left unsimulated are those whose lower bound could not beat the best estimate (or past the
    // cap of simulations); the bound of the kept one's rivals is never below the kept estimate unless capped.
    let simulated = cands.iter().filter(|c| c.simulated).count();
    assert!((1..=16).contains(&simulated), "{simulated} simulated");
    if simulated < 16 {
        assert!(cands.iter().filter(|c| !c.simulated).all(|c| c.cycles >= chosen[0].cycles));
    }
    let (tuned, _) = estimate(&tp, &t, &IntData::new(), false).expect("estimate");
    let hinted = common::compile_ok_src(
        "hinted_mm",
        "kernel mm(a: bf16[M, K], b: bf16[K, N]) -> c: bf16[M, N] {\n    #[tile(i: 16, j: 16)] c[i, j] = sum[k](a[i, k] * b[k, j]);\n}\n",
    );
    let (_, tp2, _) = tile_at(&hinted.kernels[0], &dims, &t);
    let (forced, _) = estimate(&tp2, &t, &IntData::new(), false).expect("estimate");
    assert!(tuned.cycles() * 2.0 < forced.cycles(), "tuned {} vs 16 x 16 {}", tuned.cycles(), forced.cycles());
}

/// Ranking simulates one core group and extrapolates steady loops; for the kept candidate that quick
/// figure agrees with the full estimate, with a vector epilogue (cube and vector cores working together)
/// and without.
#[test]
fn ranking_agrees_with_the_full_estimate() {
    let t = Target::builtin("ascend910b").expect("target");
    let src = "kernel mm(a: bf16[M, K], b: bf16[K, N], bias: f32[N]) -> (c: bf16[M, N], d: bf16[M, N]) {\n    \
               c = a @ b;\n    d = relu(a @ b + bias);\n}\n";
    let prog = common::compile_ok_src("ranking", src);
    let g = &prog.kernels[0];
    let dims = dims_of(&[("M", 2048), ("N", 1024), ("K", 1024)]);
    let b = kc_ir::launch::bind_dims(g, &dims).expect("bind");
    let f = kc_ir::passes::fuse::fuse(g, &kc_ir::passes::fuse::FusionConfig::from_hints(g));
    let (tp, _, cands) = kc_ir::passes::tile::tile_tuned(g, &f, &b, &t).expect("tile");
    let (e, _) = estimate(&tp, &t, &IntData::new(), false).expect("estimate");
    let mixed = tp.launches.iter().filter(|l| l.unit == kc_ir::tile::Unit::Mixed).count();
    assert!(mixed >= 1, "the epilogue runs on the vector cores");
    for (l, le) in tp.launches.iter().zip(&e.launches) {
        let kept = cands.iter().find(|c| c.launch == l.name && c.chosen).expect("a kept candidate");
        let ratio = kept.cycles / le.cycles;
        assert!((0.9..=1.1).contains(&ratio), "{}: ranked {} vs estimated {}", l.name, kept.cycles, le.cycles);
    }
}

/// Every kernel tiles, tuned, at its production size (`report` in kernels/dims.toml) and the model
/// estimates it: a positive time, a bound, and work that matches the kernel (cube flops only where there is
/// a matmul).
#[test]
fn every_kernel_estimates_at_production_sizes() {
    let t = Target::builtin("ascend910b").expect("target");
    let s = sizes();
    let mut table = Vec::new();
    for k in kernel_names() {
        let prog = common::compile_ok(common::kernel_path(&k));
        for g in &prog.kernels {
            let dims = &s[&k].report;
            let (_, tp, _) = tile_at(g, dims, &t);
            let given = kc_ir::launch::Args { tensors: BTreeMap::new(), dims: dims.clone() };
            let ints = kc_runtime::random::random_int_args(g, &given, 0).expect("int args");
            let (e, _) = estimate(&tp, &t, &int_data(g, &tp, &ints), false).unwrap_or_else(|d| panic!("{k}: {d}"));
            assert!(e.time_us() > 0.0 && e.time_us().is_finite(), "{k}: {} us", e.time_us());
            let has_cube = tp.launches.iter().any(|l| l.cube_cores > 0);
            assert_eq!(e.cube_flops() > 0, has_cube, "{}: cube work only where cube cores run", g.name);
            table.push(format!(
                "{:<20} {:>10.1} us  bound {:<4}  cube {:>5.1}%  gm {:>7.1} GB/s",
                g.name,
                e.time_us(),
                e.bound(),
                100.0 * e.cube_flops_per_s() / e.peak_cube_flops_per_s,
                e.gm_bytes_per_s() / 1e9
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
}
