//! Tiling, end to end: a kernel is fused, each group tiled for a target, the tile program verified and run
//! by the simulator, and the results compared with the reference interpreter, at awkward sizes.

use crate::common;
use kc_ir::passes::fuse::{fuse, FusionConfig};
use kc_ir::passes::tile::{group_order, plan_gm, vector};
use kc_ir::target::Target;
use kc_ir::tile::TileProgram;
use kc_ir::Graph;

/// Tiles every group of `g` as an elementwise vector group (the groups of these kernels all are).
fn tile_elementwise(g: &Graph, args: &kc_ir::launch::Args, target: &Target) -> TileProgram {
    let f = fuse(g, &FusionConfig::default());
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("bind: {e:?}"));
    let gm = plan_gm(g, &f, &b).expect("gm plan");
    let mut launches = Vec::new();
    for k in group_order(&f).expect("the groups can be ordered") {
        let name = format!("{}.{k}", g.name);
        let l = vector::elementwise(g, &f.groups[k], &name, &gm, target, &b)
            .unwrap_or_else(|| panic!("{}: group {k} is not elementwise", g.name))
            .unwrap_or_else(|e| panic!("{}: {e}", g.name));
        launches.push(l);
    }
    TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    }
}

fn check(file: &str, dims: &[(&str, i64)], target: &str, seed: u64) {
    let prog = common::compile_ok(common::kernel_path(file));
    let target = Target::builtin(target).expect("builtin target");
    for g in &prog.kernels {
        let given =
            kc_ir::launch::Args { dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() };
        let args = kc_runtime::random::random_args(g, &given, seed).expect("random args");
        let tp = tile_elementwise(g, &args, &target);
        common::verify_tiled(g, &tp, &target);
        let want = common::run(g, &args);
        let got = kc_runtime::sim::run(&tp, g, &args).unwrap_or_else(|e| panic!("{}: sim: {e:?}", g.name));
        assert_eq!(want.len(), got.len());
        for ((n, w), (_, s)) in want.iter().zip(&got) {
            common::assert_same_bits(&format!("{}.{n} on {}", g.name, target.name), w, s);
        }
    }
}

#[test]
fn elementwise_kernels_tile_verify_and_match_the_interpreter() {
    for target in ["ascend910b", "ascend950"] {
        for n in [1, 255, 257, 4099, 100_003] {
            check("adamw", &[("N", n)], target, n as u64);
        }
        for (t, f) in [(1, 1), (3, 7), (17, 130), (64, 1000)] {
            check("swiglu", &[("T", t), ("F", f)], target, 5);
        }
    }
}

/// The tiled AdamW reads every input once and writes every output once: one launch, one copy in per input
/// and one copy out per output per chunk, each chunk's elements once.
#[test]
fn adamw_moves_each_byte_once() {
    let prog = common::compile_ok(common::kernel_path("adamw"));
    let g = &prog.kernels[0];
    let mut given = kc_ir::launch::Args::default();
    given.dims.insert("N".into(), 50_000);
    let args = kc_runtime::random::random_args(g, &given, 1).expect("args");
    let target = Target::builtin("ascend910b").expect("target");
    let tp = tile_elementwise(g, &args, &target);
    assert_eq!(tp.launches.len(), 1);
    let (_, stats) = kc_runtime::sim::run_with(&tp, g, &args, &kc_ir::interp::Limits::default()).expect("sim");
    let l = &stats.launches[0];
    let n = 50_000u64;
    // In: param, grad, m and v, n elements each, and the 6 scalars (lr, beta1, beta2, eps, weight_decay,
    // step) once per core, into its own UB.
    let cores = tp.launches[0].vector_cores as u64;
    assert!(cores > 1, "50 000 elements are split across cores");
    assert_eq!(l.elements.get(&kc_ir::tile::Pipe::Mte2).copied(), Some(4 * n + 6 * cores));
    // Out: param, m and v.
    assert_eq!(l.elements.get(&kc_ir::tile::Pipe::Mte3).copied(), Some(3 * n));
    // The vector unit computes each of the five members once per element.
    assert_eq!(l.vector_elements, 5 * n);
}
