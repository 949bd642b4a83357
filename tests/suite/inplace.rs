//! In-place updates of `inout` tensors (`Compiled::run_in_place`): the same results as the copy path on
//! every kernel with an `inout` (the kernels of `kernels/` and the fixtures), the selection predicate on
//! real kernels, and a kernel that can fail at run time still leaving the caller's tensors untouched.

use crate::common;
use crate::tiled::tile_at;
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use kc_ir::Graph;
use kc_runtime::native::Mode;
use std::collections::BTreeMap;

fn opts() -> kc_codegen::Options {
    kc_codegen::Options { verify: true, ..Default::default() }
}

/// Runs `g` at `dims` on `target` through the copy path and in place (1 and 2 threads) and checks that the
/// `inout` arguments end with the copy path's results, bit for bit, and the other results are the same.
/// Returns whether it ran in place.
fn same_as_copy_path(g: &Graph, dims: &BTreeMap<String, i64>, target: &str, seed: u64) -> Option<bool> {
    let t = Target::builtin(target).expect("builtin target");
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let args = kc_runtime::random::random_args(g, &given, seed).ok()?;
    let b = kc_ir::launch::bind(g, &args).ok()?;
    // Kernels no template tiles (E0606) are the tiler's gaps.
    kc_ir::passes::tile::fuse_and_tile(g, &b, &t).ok()?;
    let (_, tp, _) = tile_at(g, dims, &t);
    let code = kc_codegen::compile(&tp, &opts()).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
    let mut in_place = None;
    for threads in [1, 2] {
        let (want, _) = code.run(&tp, g, &args, threads, &Limits::default()).expect("the copy path runs");
        let mut state = args.clone();
        let (rest, _, mode) =
            code.run_in_place(&tp, g, &mut state, threads, &Limits::default()).expect("runs in place");
        in_place = Some(mode == Mode::InPlace);
        let mut k = 0;
        for ((name, w), r) in want.iter().zip(&g.results) {
            let what = format!("{}.{name} on {target}, {threads} threads ({mode:?})", g.name);
            match r.inout {
                Some(p) => common::assert_same_bits(&what, w, &state.tensors[&g.params[p].name]),
                None => {
                    assert_eq!(rest[k].0, *name, "{what}");
                    common::assert_same_bits(&what, w, &rest[k].1);
                    k += 1;
                }
            }
        }
        assert_eq!(k, rest.len(), "{}: only the results that are not inout come back", g.name);
        // Parameters that are not inout are untouched.
        for (name, t) in &args.tensors {
            if !g.results.iter().any(|r| r.inout.is_some_and(|p| g.params[p].name == *name)) {
                assert_eq!(&state.tensors[name], t, "{}: `{name}` is not an inout", g.name);
            }
        }
    }
    in_place
}

#[test]
fn in_place_matches_the_copy_path() {
    let mut files: Vec<_> = ["tests/data/ok", "tests/data/diff"]
        .iter()
        .flat_map(|d| std::fs::read_dir(common::repo_root().join(d)).expect("fixtures").flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ker"))
        .collect();
    files.sort();
    files.push(common::kernel_path("adamw"));
    let (mut ran, mut in_place) = (0, 0);
    for f in &files {
        let prog = common::compile_ok(f);
        for g in &prog.kernels {
            if !g.results.iter().any(|r| r.inout.is_some()) {
                continue;
            }
            for (n, target) in [(7, "host"), (1000, "host"), (7, "ascend910b"), (4099, "ascend950")] {
                let dims: BTreeMap<String, i64> = g.dims.iter().map(|d| (d.clone(), n)).collect();
                if let Some(p) = same_as_copy_path(g, &dims, target, n as u64) {
                    ran += 1;
                    in_place += usize::from(p);
                }
            }
        }
    }
    assert!(ran >= 12, "only {ran} runs of kernels with an inout");
    assert!(in_place >= 8, "only {in_place} of {ran} runs were in place");
}

fn plan_of(g: &Graph, dims: &[(&str, i64)], target: &str) -> Result<kc_runtime::inplace::Plan, String> {
    let dims: BTreeMap<String, i64> = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let (_, tp, _) = tile_at(g, &dims, &Target::builtin(target).expect("target"));
    let code = kc_codegen::compile(&tp, &opts()).expect("compiles");
    code.in_place_plan(&tp, g).clone()
}

/// The selection predicate on real kernels: adamw (elementwise, nothing can fail) runs in place on every
/// target and size, all three `inout`s written into the caller's memory; a kernel with a gather, a
/// reduction or a library operation runs on copies, and says why.
#[test]
fn in_place_is_chosen_from_the_program() {
    let adamw = common::compile_ok(common::kernel_path("adamw")).kernels.remove(0);
    for target in ["host", "ascend910b", "ascend950"] {
        for n in [1, 7, 4096, 100_003] {
            let p = plan_of(&adamw, &[("N", n)], target).unwrap_or_else(|e| panic!("adamw N={n} on {target}: {e}"));
            assert_eq!(p.inout.len(), 3, "param, m and v");
            assert!(p.inout.iter().all(|x| x.3.is_some()), "each written through its own output: {p:?}");
        }
    }
    let pick = pick_kernel();
    let e = plan_of(&pick, &[("N", 5), ("V", 9)], "ascend910b").expect_err("a gather is checked at run time");
    assert!(e.contains("gather"), "{e}");
    let momentum = common::compile_ok(common::repo_root().join("tests/data/ok/inout_and_reads.ker")).kernels.remove(0);
    let e = plan_of(&momentum, &[("N", 1000)], "host").expect_err("a reduction");
    assert!(e.contains("reduction"), "{e}");
}

fn pick_kernel() -> Graph {
    common::compile_ok_src(
        "inplace_pick",
        "kernel pick(x: f32[N, V], t: i32[N], acc: inout f32[N]) -> (z: f32[N, V]) {\n\
         \x20   acc[n] = acc[n] + x[n, t[n]] * 2.0;\n\
         \x20   z[n, v] = x[n, (t[n] + v) % V] + 1.0;\n\
         }\n",
    )
    .kernels
    .remove(0)
}

/// A kernel that can fail on its data (a gather) runs on copies: an out-of-range index fails the call and
/// leaves every argument, the `inout` included, exactly as it was; in-range indices update it.
#[test]
fn a_kernel_that_can_fail_leaves_its_inout_alone() {
    use kc_ir::{Code, DType};
    let g = pick_kernel();
    let (n, v) = (5usize, 9usize);
    let mut rng = common::Rng::new(7);
    let x = common::rand_tensor(&mut rng, DType::F32, &[n, v]);
    let acc = common::rand_tensor(&mut rng, DType::F32, &[n]);
    let dims = BTreeMap::from([("N".to_string(), n as i64), ("V".to_string(), v as i64)]);
    for target in ["host", "ascend910b"] {
        let (_, tp, _) = tile_at(&g, &dims, &Target::builtin(target).expect("target"));
        let code = kc_codegen::compile(&tp, &opts()).expect("compiles");
        for bad in [vec![9, 0, 1, 2, 3], vec![0, 1, 2, 3, -1]] {
            let t = common::i32_tensor(&[n], bad.clone());
            let mut args = common::args(&[("x", &x), ("t", &t), ("acc", &acc)], &[]);
            let before = args.clone();
            let e = code.run_in_place(&tp, &g, &mut args, 2, &Limits::default()).expect_err("a bad index");
            assert_eq!(e[0].code, Code::IndexOutOfRange, "{bad:?}: {}", e[0].message);
            assert_eq!(args, before, "{bad:?} on {target}: the arguments, `acc` included, are untouched");
        }
        let t = common::i32_tensor(&[n], vec![0, 1, 2, 3, 8]);
        let mut args = common::args(&[("x", &x), ("t", &t), ("acc", &acc)], &[]);
        let (want, _) = code.run(&tp, &g, &args, 2, &Limits::default()).expect("runs");
        let (rest, _, mode) = code.run_in_place(&tp, &g, &mut args, 2, &Limits::default()).expect("runs");
        assert!(matches!(&mode, Mode::Copied(why) if why.contains("gather")), "{mode:?}");
        common::assert_same_bits("pick.acc", &want[1].1, &args.tensors["acc"]);
        assert_eq!(rest.len(), 1);
        common::assert_same_bits("pick.z", &want[0].1, &rest[0].1);
    }
}
