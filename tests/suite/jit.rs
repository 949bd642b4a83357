//! The JIT backend: every kernel of `kernels/`, at the awkward sizes of `kernels/dims.toml`'s `sim` cases,
//! compiled by Cranelift (with its verifier on) and run on 1 and 2 threads, matches the interpreter.

use crate::common;
use crate::tiled::{assert_matches_within, kernel_names, sizes, tile_at, TARGETS};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use std::collections::BTreeMap;

fn opts() -> kc_codegen::Options {
    kc_codegen::Options { verify: true, ..Default::default() }
}

#[test]
fn jit_matches_interpreter() {
    let s = sizes();
    let only = std::env::var("KC_JIT_ONLY").ok();
    for k in kernel_names() {
        if only.as_deref().is_some_and(|o| o != k) {
            continue;
        }
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
                    let compiled =
                        kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{k} at {dims:?} on {t}: {e:?}"));
                    for threads in [1, 2] {
                        let (got, _) = compiled
                            .run(&tp, g, &args, threads, &Limits::default())
                            .unwrap_or_else(|e| panic!("{k} at {dims:?} on {t}, {threads} threads: {e:?}"));
                        assert_eq!(got.len(), want.len());
                        for ((n, a), (_, b)) in got.iter().zip(&want) {
                            let frac = if k == "muon_orthogonalize" { 2.0 } else { 0.25 };
                            assert_matches_within(
                                &format!("{k}.{n} at {dims:?} on {t}, {threads} threads"),
                                a,
                                b,
                                frac,
                            );
                        }
                    }
                }
            }
        }
    }
}
