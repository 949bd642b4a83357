//! Index safety past 2^31 elements: tensors whose element count does not fit a 32-bit offset (a small inner
//! dim, a huge outer one), run by the JIT on the host and the ascend910b tilings, with results checked at the
//! far end, where a 32-bit offset would have wrapped.
//!
//! The tensors take about 4 GiB each, so the test builds them once, runs every kernel on them, and checks
//! a sample of rows (the first, some spread out, and the last few) against values computed here. The
//! interpreter and the simulator would take minutes at this size; the smaller sizes of the other tests
//! already tie them to the JIT.

use crate::common;
use half::bf16;
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::target::Target;
use kc_ir::{Tensor, TensorData};
use std::collections::BTreeMap;

/// The huge `[N, C]` tensor: N * C = 2^31 + 192 elements, so every offset in its last rows passes 2^31.
const C: usize = 64;
const N: usize = (1 << 31) / C + 3;

/// The value of `x[n, c]`: exact in bf16 (small integers), and different at the far end from what a wrapped
/// 32-bit offset would read.
fn x_at(n: usize, c: usize) -> f32 {
    ((n * 7 + c * 3) % 61) as f32 - 30.0
}

const SRC: &str = "
kernel scale(x: bf16[N, C]) -> y: bf16[N, C] {
    y = x * 2.0 + 1.0;
}

kernel row_sum(x: bf16[N, C]) -> s: f32[N] {
    s[n] = sum[c](f32(x[n, c]) * 2.0);
}

kernel pick(x: bf16[N, C], t: i32[K]) -> z: f32[K, C] {
    z[k, c] = f32(x[t[k], c]) - 0.5;
}

kernel tail(x: bf16[N, C], acc: inout f32[N]) {
    acc[n] = acc[n] + max[c](f32(x[n, c]));
}
";

/// Rows to check: the start, a spread through the middle, and everything near the end.
fn sample_rows() -> Vec<usize> {
    let mut rows: Vec<usize> = (0..4).collect();
    rows.extend((1..16).map(|i| i * (N / 16)));
    rows.extend(N - 64..N);
    rows
}

fn run_jit(g: &kc_ir::Graph, args: &Args, target: &str) -> Vec<(String, Tensor)> {
    let dims: BTreeMap<String, i64> = g
        .dims
        .iter()
        .map(|d| {
            let v = match d.as_str() {
                "N" => N as i64,
                "C" => C as i64,
                _ => args.tensors.get("t").map(|t| t.shape[0] as i64).unwrap_or(1),
            };
            (d.clone(), v)
        })
        .collect();
    let target = Target::builtin(target).expect("builtin target");
    let b = kc_ir::launch::bind_dims(g, &dims).unwrap_or_else(|e| panic!("{}: bind: {e:?}", g.name));
    let (_, tp, _, _) =
        kc_ir::passes::tile::fuse_and_tile(g, &b, &target).unwrap_or_else(|e| panic!("{}: tile: {e}", g.name));
    common::verify_tiled(g, &tp, &target);
    let code = kc_codegen::compile(&tp, &kc_codegen::Options::default()).expect("compiles");
    let limits = Limits { max_bytes: 20 << 30, ..Limits::default() };
    let (out, _) = code.run(&tp, g, args, 2, &limits).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
    out
}

fn f32_data(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        _ => panic!("expected f32, got {:?}", t.dtype()),
    }
}

#[test]
fn tensors_past_2_pow_31_elements_are_addressed_in_64_bits() {
    const { assert!(N * C > 1 << 31) };
    let prog = common::compile_ok_src("huge", SRC);
    let kernel = |name: &str| prog.kernel(name).unwrap_or_else(|| panic!("no kernel {name}"));
    let data: Vec<bf16> = (0..N * C).map(|i| bf16::from_f32(x_at(i / C, i % C))).collect();
    // Moved into the arguments, not copied: with the results, the test holds about 8.5 GiB at most.
    let mut args = Args::default();
    args.tensors.insert("x".into(), Tensor::new(vec![N, C], TensorData::BF16(data)).expect("x"));
    let rows = sample_rows();

    for target in ["host", "ascend910b"] {
        let what = |k: &str| format!("{k} on {target}");
        // Elementwise, both operand and result past 2^31.
        let y = run_jit(kernel("scale"), &args, target).remove(0).1;
        assert_eq!(y.shape, vec![N, C]);
        let TensorData::BF16(yv) = &y.data else { panic!("y is not bf16") };
        for &n in &rows {
            for c in 0..C {
                assert_eq!(yv[n * C + c].to_f32(), x_at(n, c) * 2.0 + 1.0, "{} at [{n}, {c}]", what("scale"));
            }
        }
        drop(y);

        // A reduction over the inner dim, reading rows past 2^31 elements.
        let s = run_jit(kernel("row_sum"), &args, target).remove(0).1;
        let sv = f32_data(&s);
        for &n in &rows {
            let want: f32 = (0..C).map(|c| x_at(n, c) * 2.0).sum();
            assert_eq!(sv[n], want, "{} at [{n}]", what("row_sum"));
        }
        drop(s);

        // A gather of rows near the end: the index times the row length passes 2^31.
        let picks: Vec<i32> = vec![(N - 1) as i32, 0, (N - 2) as i32, (N / 2) as i32, (N - 1) as i32];
        let t = common::i32_tensor(&[picks.len()], picks.clone());
        args.tensors.insert("t".into(), t);
        let z = run_jit(kernel("pick"), &args, target).remove(0).1;
        let zv = f32_data(&z);
        for (k, &p) in picks.iter().enumerate() {
            for c in 0..C {
                assert_eq!(zv[k * C + c], x_at(p as usize, c) - 0.5, "{} at [{k}, {c}]", what("pick"));
            }
        }
        args.tensors.remove("t");

        // An inout update, strided through the huge tensor.
        let acc = Tensor::from_f32(vec![N], (0..N).map(|n| (n % 5) as f32).collect()).expect("acc");
        args.tensors.insert("acc".into(), acc);
        let a = run_jit(kernel("tail"), &args, target).remove(0).1;
        let av = f32_data(&a);
        for &n in &rows {
            let m = (0..C).map(|c| x_at(n, c)).fold(f32::MIN, f32::max);
            assert_eq!(av[n], (n % 5) as f32 + m, "{} at [{n}]", what("tail"));
        }
        args.tensors.remove("acc");
    }
}
