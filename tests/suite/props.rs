//! Property tests of the whole pipeline: small random kernels (as `.ker` source text) and random inputs,
//! compiled by the frontend and run by the reference interpreter, against simple, independent references
//! written here (NumPy's rules, re-derived: nothing here calls into `kc`'s own shape or numeric code).
//!
//! Each property runs 64 cases (`KC_PROP_CASES=N` runs N). Inputs are drawn from a seed (with `common::Rng`) so that a failing case
//! prints the shapes, the seed and the kernel's source; proptest shrinks the shapes.

use crate::common::Rng;
use kc_frontend::{NoLoader, SourceMap};
use kc_ir::launch::Args;
use kc_ir::{Code, Diagnostic, Graph, Tensor, TensorData};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

type TcResult<T> = Result<T, TestCaseError>;

/// 64 cases per property (`KC_PROP_CASES` overrides, for a longer soak).
fn config() -> Config {
    let cases = std::env::var("KC_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    // No regression files: they would land in the shared source tree. A failure prints its minimal case.
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------------------------------------
// Pipeline helpers

/// Compiles a source string (no `use`s): the source map, the program and every diagnostic.
fn compile_src(src: &str) -> (SourceMap, kc_ir::Program, Vec<Diagnostic>) {
    let mut sources = SourceMap::new();
    let root = sources.add("prop.ker", src);
    let (program, diags) = kc_frontend::compile(&mut sources, root, &NoLoader);
    (sources, program, diags)
}

/// Compiles `src`, which must compile without any diagnostic, and returns its kernel `name`.
fn kernel_of(src: &str, name: &str) -> TcResult<Graph> {
    let (sources, program, diags) = compile_src(src);
    if !diags.is_empty() {
        return Err(TestCaseError::fail(format!(
            "the kernel should compile cleanly:\n{src}\n{}",
            kc_frontend::render(&diags, &sources, false)
        )));
    }
    match program.kernel(name) {
        Some(g) => Ok(g.clone()),
        None => Err(TestCaseError::fail(format!("no kernel `{name}` in:\n{src}"))),
    }
}

fn launch_args(tensors: Vec<(&str, Tensor)>) -> Args {
    let mut a = Args::default();
    for (n, t) in tensors {
        a.tensors.insert(n.to_string(), t);
    }
    a
}

/// Runs `graph` and returns its results, which must be exactly `names`, in order.
fn launch(graph: &Graph, src: &str, tensors: Vec<(&str, Tensor)>, names: &[&str]) -> TcResult<Vec<Tensor>> {
    match kc_ir::interp::run(graph, &launch_args(tensors)) {
        Ok(res) => {
            let got: Vec<&str> = res.iter().map(|(n, _)| n.as_str()).collect();
            prop_assert_eq!(&got, &names, "results of:\n{}", src);
            Ok(res.into_iter().map(|(_, t)| t).collect())
        }
        Err(diags) => {
            let msgs: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            Err(TestCaseError::fail(format!("the launch failed: {msgs:?}\nsource:\n{src}")))
        }
    }
}

/// `f32[2, 3]`, or the bare `f32` of a scalar.
fn ty(dtype: &str, shape: &[usize]) -> String {
    if shape.is_empty() {
        dtype.to_string()
    } else {
        format!("{dtype}[{}]", join(shape))
    }
}

fn join(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape.to_vec(), v).expect("length matches the shape")
}

fn i32_tensor(shape: &[usize], v: Vec<i32>) -> Tensor {
    Tensor::from_i32(shape.to_vec(), v).expect("length matches the shape")
}

fn f32_data(name: &str, t: &Tensor, shape: &[usize]) -> TcResult<Vec<f32>> {
    prop_assert_eq!(&t.shape, &shape.to_vec(), "shape of `{}`", name);
    match &t.data {
        TensorData::F32(v) => Ok(v.clone()),
        _ => Err(TestCaseError::fail(format!("`{name}` should be f32, is {}", t.dtype()))),
    }
}

fn i32_data(name: &str, t: &Tensor, shape: &[usize]) -> TcResult<Vec<i32>> {
    prop_assert_eq!(&t.shape, &shape.to_vec(), "shape of `{}`", name);
    match &t.data {
        TensorData::I32(v) => Ok(v.clone()),
        _ => Err(TestCaseError::fail(format!("`{name}` should be i32, is {}", t.dtype()))),
    }
}

/// Bit-for-bit equality of f32 results (any NaN meets any NaN).
fn assert_exact(name: &str, got: &[f32], want: &[f32], ctx: &str) -> TcResult<()> {
    prop_assert_eq!(got.len(), want.len(), "`{}` length\n{}", name, ctx);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same = (g.is_nan() && w.is_nan()) || g.to_bits() == w.to_bits();
        prop_assert!(
            same,
            "`{}`[{}]: got {:e} ({:#010x}), want {:e} ({:#010x})\n{}",
            name,
            i,
            g,
            g.to_bits(),
            w,
            w.to_bits(),
            ctx
        );
    }
    Ok(())
}

/// `|got - want| <= tol[i]` elementwise; NaN must meet NaN and an infinity the same infinity.
fn assert_within(name: &str, got: &[f32], want: &[f64], tol: &[f64], ctx: &str) -> TcResult<()> {
    prop_assert_eq!(got.len(), want.len(), "`{}` length\n{}", name, ctx);
    for i in 0..got.len() {
        let (g, w) = (got[i] as f64, want[i]);
        let ok = if g.is_nan() || w.is_nan() {
            g.is_nan() && w.is_nan()
        } else if g.is_infinite() || w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol[i]
        };
        prop_assert!(ok, "`{}`[{}]: got {:e}, want {:e}, tolerance {:e}\n{}", name, i, g, w, tol[i], ctx);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// NumPy's rules, re-derived

/// The NumPy broadcast of two shapes, or `None`.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for k in 0..r {
        let da = if k < r - a.len() { 1 } else { a[k - (r - a.len())] };
        let db = if k < r - b.len() { 1 } else { b[k - (r - b.len())] };
        out[k] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Row-major multi-index of flat index `i` in `shape`.
fn unflatten(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = i % shape[k];
        i /= shape[k];
    }
    idx
}

/// The flat index into an operand of shape `s` that broadcasts to the multi-index `idx` of a result whose
/// rank is `idx.len()`: `s` aligns on the right, and a size-1 dim reads index 0.
fn bcast_flat(idx: &[usize], s: &[usize]) -> usize {
    let off = idx.len() - s.len();
    let mut flat = 0;
    for (j, &d) in s.iter().enumerate() {
        let i = if d == 1 { 0 } else { idx[off + j] };
        flat = flat * d + i;
    }
    flat
}

fn rand_f32s(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// A shape and a second one that broadcasts with it: both the trailing dims of a random "result" shape,
/// each dim possibly replaced by 1 (ranks 0..=3, dims 1..=4).
fn broadcastable_pair(max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (prop::collection::vec(1usize..=4, 0..=max_rank), 0..=max_rank, 0..=max_rank, any::<u64>()).prop_map(
        |(out, ra, rb, bits)| {
            let pick = |rank: usize, shift: u32| -> Vec<usize> {
                let rank = rank.min(out.len());
                out[out.len() - rank..]
                    .iter()
                    .enumerate()
                    .map(|(j, &d)| if (bits >> (shift + 2 * j as u32)) & 3 == 0 { 1 } else { d })
                    .collect()
            };
            let a = pick(ra, 0);
            let b = pick(rb, 16);
            (a, b)
        },
    )
}

// ---------------------------------------------------------------------------------------------------------
// Broadcasting

proptest! {
    #![proptest_config(config())]

    /// `c = a + b * 2.0` on shapes that broadcast: the result has the NumPy shape and, computed in f32 as
    /// `a + (b * 2)`, is bit-exact.
    #[test]
    fn broadcasting_matches_numpy((sa, sb) in broadcastable_pair(3), seed in any::<u64>()) {
        let sc = broadcast(&sa, &sb).expect("the strategy makes broadcastable shapes");
        let src = format!(
            "kernel k(a: {}, b: {}) -> c: {} {{\n    c = a + b * 2.0;\n}}\n",
            ty("f32", &sa), ty("f32", &sb), ty("f32", &sc)
        );
        let g = kernel_of(&src, "k")?;
        let mut rng = Rng::new(seed);
        let a = rand_f32s(&mut rng, numel(&sa), -4.0, 4.0);
        let b = rand_f32s(&mut rng, numel(&sb), -4.0, 4.0);
        let res = launch(&g, &src, vec![("a", f32_tensor(&sa, a.clone())), ("b", f32_tensor(&sb, b.clone()))], &["c"])?;
        let got = f32_data("c", &res[0], &sc)?;
        let want: Vec<f32> = (0..numel(&sc))
            .map(|i| {
                let idx = unflatten(i, &sc);
                a[bcast_flat(&idx, &sa)] + b[bcast_flat(&idx, &sb)] * 2.0
            })
            .collect();
        assert_exact("c", &got, &want, &format!("{src}a = {a:?}\nb = {b:?}"))?;
    }

    /// Shapes that differ, on some aligned axis, in two sizes neither of which is 1: E0300, showing both.
    #[test]
    fn non_broadcasting_shapes_are_e0300(
        sa in prop::collection::vec(1usize..=4, 1..=3),
        sb in prop::collection::vec(1usize..=4, 1..=3),
        from_right in 0usize..3,
        (x, y) in (2usize..=4, 2usize..=4).prop_filter("different sizes", |(x, y)| x != y),
    ) {
        let (mut sa, mut sb) = (sa, sb);
        let p = from_right % sa.len().min(sb.len());
        let (ia, ib) = (sa.len() - 1 - p, sb.len() - 1 - p);
        sa[ia] = x;
        sb[ib] = y;
        prop_assert!(broadcast(&sa, &sb).is_none());
        let src = format!(
            "kernel k(a: {}, b: {}) -> c: {} {{\n    c = a + b * 2.0;\n}}\n",
            ty("f32", &sa), ty("f32", &sb), ty("f32", &sa)
        );
        let (sources, program, diags) = compile_src(&src);
        let text = kc_frontend::render(&diags, &sources, false);
        prop_assert!(diags.iter().any(|d| d.is_error() && d.code == Code::BroadcastMismatch), "no E0300 for:\n{}\n{}", src, text);
        prop_assert!(program.kernel("k").is_none(), "a kernel with an error must not be returned");
        let d = diags.iter().find(|d| d.code == Code::BroadcastMismatch).unwrap();
        let (fa, fb) = (format!("[{}]", join(&sa)), format!("[{}]", join(&sb)));
        prop_assert!(d.message.contains(&fa) && d.message.contains(&fb), "E0300 should show both shapes {} and {}: {}", fa, fb, d.message);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reductions over an axis

const REDUCTIONS: [&str; 6] = ["sum", "mean", "max", "min", "argmax", "argmin"];

/// Random values: uniform (mode 0), small integers (1: many ties), or small integers with a few NaNs (2).
fn values(rng: &mut Rng, n: usize, mode: u8) -> Vec<f32> {
    (0..n)
        .map(|_| match mode {
            0 => rng.uniform(-5.0, 5.0),
            1 => rng.int(-2, 3) as f32,
            _ => {
                if rng.int(0, 6) == 0 {
                    f32::NAN
                } else {
                    rng.int(-3, 4) as f32
                }
            }
        })
        .collect()
}

/// Reduces the `len` values `v` as NumPy does (f64; NaN propagates; arg* take the first extreme, or the
/// first NaN). Returns the value and a tolerance for f32 arithmetic done in sequence.
fn reduce_ref(op: &str, v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    let sumabs: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
    let eps = f32::EPSILON as f64;
    let first_nan = v.iter().position(|x| x.is_nan());
    match op {
        "sum" => (sum, n * eps * sumabs),
        "mean" => (sum / n, (n + 1.0) * eps * sumabs / n),
        "max" | "min" => {
            if first_nan.is_some() {
                return (f64::NAN, 0.0);
            }
            let m = v.iter().copied().fold(if op == "max" { f32::NEG_INFINITY } else { f32::INFINITY }, |a, b| {
                if op == "max" {
                    a.max(b)
                } else {
                    a.min(b)
                }
            });
            (m as f64, 0.0)
        }
        "argmax" | "argmin" => {
            if let Some(i) = first_nan {
                return (i as f64, 0.0);
            }
            let mut best = 0;
            for i in 1..v.len() {
                let better = if op == "argmax" { v[i] > v[best] } else { v[i] < v[best] };
                if better {
                    best = i;
                }
            }
            (best as f64, 0.0)
        }
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(config())]

    /// `OP(x, axis: A, keepdim: K)` and `OP(x)` for every reduction, against NumPy's definitions.
    #[test]
    fn axis_reductions_match_numpy(
        shape in prop::collection::vec(1usize..=4, 1..=3),
        op in 0usize..REDUCTIONS.len(),
        axis_pick in prop::option::weighted(0.8, any::<prop::sample::Index>()),
        negative_axis in any::<bool>(),
        keepdim in prop::option::of(any::<bool>()),
        mode in 0u8..4,
        seed in any::<u64>(),
    ) {
        let op = REDUCTIONS[op];
        // Mode 3: an i32 input (reductions of integers stay integers; `mean` is left to the float modes).
        let int_input = mode == 3 && op != "mean";
        let rank = shape.len();
        let axis = axis_pick.map(|i| i.index(rank));
        let mut call = format!("{op}(x");
        if let Some(a) = axis {
            let written = if negative_axis { a as i64 - rank as i64 } else { a as i64 };
            call += &format!(", axis: {written}");
        }
        if let Some(k) = keepdim {
            call += &format!(", keepdim: {k}");
        }
        call += ")";
        let keep = keepdim == Some(true);
        // The reduced shape, and the (outer, len, inner) split of x around the reduced axis.
        let (out_shape, outer, len, inner) = match axis {
            Some(a) => {
                let mut s = shape.clone();
                if keep { s[a] = 1 } else { s.remove(a); }
                (s, numel(&shape[..a]), shape[a], numel(&shape[a + 1..]))
            }
            None => (if keep { vec![1; rank] } else { vec![] }, 1, numel(&shape), 1),
        };
        let is_arg = op.starts_with("arg");
        let out_ty = ty(if is_arg || int_input { "i32" } else { "f32" }, &out_shape);
        let in_ty = ty(if int_input { "i32" } else { "f32" }, &shape);
        let src = format!("kernel k(x: {in_ty}) -> y: {out_ty} {{\n    y = {call};\n}}\n");
        let g = kernel_of(&src, "k")?;
        let x = values(&mut Rng::new(seed), numel(&shape), if int_input { 1 } else { mode.min(2) });
        let input = if int_input {
            i32_tensor(&shape, x.iter().map(|&v| v as i32).collect())
        } else {
            f32_tensor(&shape, x.clone())
        };
        let res = launch(&g, &src, vec![("x", input)], &["y"])?;
        let ctx = format!("{src}x{shape:?} = {x:?}");
        let mut want = Vec::new();
        let mut tol = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let lane: Vec<f32> = (0..len).map(|k| x[(o * len + k) * inner + i]).collect();
                let (w, t) = reduce_ref(op, &lane);
                want.push(w);
                tol.push(t);
            }
        }
        if is_arg || int_input {
            let got = i32_data("y", &res[0], &out_shape)?;
            let want: Vec<i32> = want.iter().map(|&w| w as i32).collect();
            prop_assert_eq!(got, want, "{}", ctx);
        } else {
            let got = f32_data("y", &res[0], &out_shape)?;
            assert_within("y", &got, &want, &tol, &ctx)?;
        }
    }
}

/// Every whole-tensor reduction of a rank-0 value, with and without `keepdim`, is what NumPy gives: the
/// value itself (`argmax`/`argmin`: index 0).
#[test]
fn reductions_of_a_scalar_follow_numpy() {
    let src = "kernel k(x: f32) -> (s: f32, m: f32, a: f32, b: f32, i: i32, j: i32, t: f32) {\n    \
               s = sum(x);\n    m = mean(x);\n    a = max(x);\n    b = min(x);\n    i = argmax(x);\n    \
               j = argmin(x);\n    t = sum(x, keepdim: true);\n}\n";
    let (sources, program, diags) = compile_src(src);
    assert!(diags.is_empty(), "{src}\n{}", kc_frontend::render(&diags, &sources, false));
    let g = program.kernel("k").expect("kernel k");
    let res = kc_ir::interp::run(g, &launch_args(vec![("x", Tensor::scalar_f32(-2.5))]))
        .unwrap_or_else(|d| panic!("{:?}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>()));
    let got: Vec<(String, f64)> = res.iter().map(|(n, t)| (n.clone(), t.get_f64(0))).collect();
    let want: Vec<(String, f64)> =
        [("s", -2.5), ("m", -2.5), ("a", -2.5), ("b", -2.5), ("i", 0.0), ("j", 0.0), ("t", -2.5)]
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
    assert_eq!(got, want);
    assert!(res.iter().all(|(_, t)| t.shape.is_empty()), "every result is a scalar");
}

// ---------------------------------------------------------------------------------------------------------
// Index-notation reductions

/// One index-notation kernel: its source (dims `I`, `J`, `K` are bound from the inputs at launch), its inputs'
/// shapes, its output's shape, and a reference giving each output's value and tolerance.
struct IndexCase {
    body: &'static str,
    params: &'static [(&'static str, &'static str)],
    out: &'static str,
}

const INDEX_CASES: [IndexCase; 10] = [
    IndexCase { body: "y[i] = sum[k](x[i, k]);", params: &[("x", "I, K")], out: "I" },
    IndexCase { body: "y[i, j] = sum[k](a[i, k] * b[k, j]);", params: &[("a", "I, K"), ("b", "K, J")], out: "I, J" },
    IndexCase { body: "y[j] = max[k](x[k, j]);", params: &[("x", "K, J")], out: "J" },
    IndexCase { body: "y[i] = min[k](x[i, k] * 2.0 + 1.0);", params: &[("x", "I, K")], out: "I" },
    IndexCase { body: "y = sum[i, k](x[i, k]);", params: &[("x", "I, K")], out: "" },
    IndexCase { body: "y[i] = sum[j](max[k](x[i, j, k]));", params: &[("x", "I, J, K")], out: "I" },
    IndexCase { body: "y[i] = max[k](x[i, k]) - min[k](x[i, k]);", params: &[("x", "I, K")], out: "I" },
    IndexCase { body: "y[i] = sum[k in 0..K](x[i, k] * w[k]);", params: &[("x", "I, K"), ("w", "K")], out: "I" },
    IndexCase {
        body: "let m[j] = max[i](x[i, j]);\n    y[j] = sum[i](x[i, j] - m[j]);",
        params: &[("x", "I, J")],
        out: "J",
    },
    IndexCase { body: "y[i] = sum[k](x[k, i] * x[i, k]);", params: &[("x", "I, I")], out: "I" },
];

/// The reference of `INDEX_CASES[case]`: f64 values with a tolerance for sequential f32 sums, exact (f32)
/// for max/min.
fn index_ref(case: usize, ins: &[Vec<f32>], i_: usize, j_: usize, k_: usize) -> (Vec<f64>, Vec<f64>) {
    let eps = f32::EPSILON as f64;
    // A sum of `terms`, each already rounded once or twice in f32: bound (len + 2) * eps * sum |term|.
    let sum_ref = |terms: &[f64]| -> (f64, f64) {
        let s: f64 = terms.iter().sum();
        let a: f64 = terms.iter().map(|t| t.abs()).sum();
        (s, (terms.len() as f64 + 2.0) * eps * a)
    };
    let fmax = |v: &mut dyn Iterator<Item = f32>| v.fold(f32::NEG_INFINITY, f32::max);
    let fmin = |v: &mut dyn Iterator<Item = f32>| v.fold(f32::INFINITY, f32::min);
    let x = &ins[0];
    let mut out: Vec<(f64, f64)> = Vec::new();
    match case {
        0 => {
            for i in 0..i_ {
                out.push(sum_ref(&(0..k_).map(|k| x[i * k_ + k] as f64).collect::<Vec<_>>()));
            }
        }
        1 => {
            let (a, b) = (&ins[0], &ins[1]);
            for i in 0..i_ {
                for j in 0..j_ {
                    out.push(sum_ref(
                        &(0..k_).map(|k| a[i * k_ + k] as f64 * b[k * j_ + j] as f64).collect::<Vec<_>>(),
                    ));
                }
            }
        }
        2 => {
            for j in 0..j_ {
                out.push((fmax(&mut (0..k_).map(|k| x[k * j_ + j])) as f64, 0.0));
            }
        }
        3 => {
            for i in 0..i_ {
                out.push((fmin(&mut (0..k_).map(|k| x[i * k_ + k] * 2.0 + 1.0)) as f64, 0.0));
            }
        }
        4 => out.push(sum_ref(&x.iter().map(|&v| v as f64).collect::<Vec<_>>())),
        5 => {
            for i in 0..i_ {
                let maxes: Vec<f64> =
                    (0..j_).map(|j| fmax(&mut (0..k_).map(|k| x[(i * j_ + j) * k_ + k])) as f64).collect();
                out.push(sum_ref(&maxes));
            }
        }
        6 => {
            for i in 0..i_ {
                let mx = fmax(&mut (0..k_).map(|k| x[i * k_ + k]));
                let mn = fmin(&mut (0..k_).map(|k| x[i * k_ + k]));
                out.push(((mx - mn) as f64, 0.0));
            }
        }
        7 => {
            let w = &ins[1];
            for i in 0..i_ {
                out.push(sum_ref(&(0..k_).map(|k| x[i * k_ + k] as f64 * w[k] as f64).collect::<Vec<_>>()));
            }
        }
        8 => {
            for j in 0..j_ {
                let m = fmax(&mut (0..i_).map(|i| x[i * j_ + j]));
                out.push(sum_ref(&(0..i_).map(|i| (x[i * j_ + j] - m) as f64).collect::<Vec<_>>()));
            }
        }
        9 => {
            for i in 0..i_ {
                out.push(sum_ref(&(0..i_).map(|k| x[k * i_ + i] as f64 * x[i * i_ + k] as f64).collect::<Vec<_>>()));
            }
        }
        _ => unreachable!(),
    }
    out.into_iter().unzip()
}

proptest! {
    #![proptest_config(config())]

    /// `sum[k](...)`, `max[k](...)`, `min[k](...)` in index notation, with ranges inferred from use (or given),
    /// dims bound from the inputs' shapes at launch.
    #[test]
    fn index_reductions_match_references(case in 0..INDEX_CASES.len(), i_ in 1usize..=4, j_ in 1usize..=4, k_ in 1usize..=5, seed in any::<u64>()) {
        let c = &INDEX_CASES[case];
        let params: Vec<String> = c.params.iter().map(|(n, s)| format!("{n}: f32[{s}]")).collect();
        let out_ty = if c.out.is_empty() { "f32".to_string() } else { format!("f32[{}]", c.out) };
        let src = format!("kernel t({}) -> y: {out_ty} {{\n    {}\n}}\n", params.join(", "), c.body);
        let g = kernel_of(&src, "t")?;
        let dim = |s: &str| -> usize { match s { "I" => i_, "J" => j_, "K" => k_, _ => unreachable!() } };
        let shape_of = |s: &str| -> Vec<usize> { if s.is_empty() { vec![] } else { s.split(", ").map(dim).collect() } };
        let mut rng = Rng::new(seed);
        let mut ins = Vec::new();
        let mut tensors = Vec::new();
        for (n, s) in c.params {
            let shape = shape_of(s);
            let v = rand_f32s(&mut rng, numel(&shape), -2.0, 2.0);
            tensors.push((*n, f32_tensor(&shape, v.clone())));
            ins.push(v);
        }
        let res = launch(&g, &src, tensors, &["y"])?;
        let got = f32_data("y", &res[0], &shape_of(c.out))?;
        let (want, tol) = index_ref(case, &ins, i_, j_, k_);
        assert_within("y", &got, &want, &tol, &format!("{src}I = {i_}, J = {j_}, K = {k_}\ninputs: {ins:?}"))?;
    }
}

// ---------------------------------------------------------------------------------------------------------
// bf16 rounding

/// Rounds f32 bits to bf16 bits, to nearest, ties to even, on the bit pattern: add half an ulp (less one,
/// plus the kept lsb, so that an exact tie rounds to the even neighbour) and truncate. A carry out of the
/// mantissa correctly bumps the exponent (and the largest finite values round to infinity). `None` for NaN.
fn bf16_bits_rne(x: u32) -> Option<u16> {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        return None;
    }
    let lsb = (x >> 16) & 1;
    Some((x.wrapping_add(0x7fff + lsb) >> 16) as u16)
}

/// f32 bit patterns that stress rounding: anything, exact ties between two bf16s, one off a tie, subnormals,
/// values near the largest finite bf16 and f32, and the special values.
fn f32_bits() -> impl Strategy<Value = u32> {
    let sign = || any::<bool>().prop_map(|s| if s { 0x8000_0000u32 } else { 0 });
    prop_oneof![
        any::<u32>(),
        (any::<u16>(), sign()).prop_map(|(h, s)| ((h as u32) << 16 | 0x8000) & 0x7fff_ffff | s),
        (any::<u16>(), prop_oneof![Just(0x7fffu32), Just(0x8001u32)]).prop_map(|(h, l)| (h as u32) << 16 | l),
        (0u32..0x0080_0000, sign()).prop_map(|(m, s)| m | s),
        (0x7f70_0000u32..=0x7f80_0000, sign()).prop_map(|(m, s)| m | s),
        (0x0070_0000u32..0x0090_0000, sign()).prop_map(|(m, s)| m | s),
        prop::sample::select(vec![
            0x0000_0000u32,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0xffc0_0001,
            0x7f80_0001,
            0x7f7f_ffff,
            0x7f7f_8000,
            0x7f7f_7fff,
            0x7f7e_8000,
            0x3f80_8000,
            0x3f81_8000,
            0x0000_8000,
            0x0001_8000,
            0x0000_0001,
            0x0000_7fff,
            0x0000_8001,
            0x007f_ffff,
            0x3f80_7fff,
            0x3f80_8001,
        ]),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Storing an f32 into a bf16 output, and the `bf16(x)` cast, round to nearest-even, bit for bit.
    #[test]
    fn bf16_stores_round_to_nearest_even(bits in prop::collection::vec(f32_bits(), 1..48)) {
        let src = "kernel r(x: f32[N]) -> (y: bf16[N], z: f32[N]) {\n    y = x;\n    z = bf16(x);\n}\n";
        let g = kernel_of(src, "r")?;
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let n = x.len();
        let res = launch(&g, src, vec![("x", f32_tensor(&[n], x.clone()))], &["y", "z"])?;
        let TensorData::BF16(y) = &res[0].data else {
            return Err(TestCaseError::fail(format!("`y` should be bf16, is {}", res[0].dtype())));
        };
        let z = f32_data("z", &res[1], &[n])?;
        for i in 0..n {
            let got = y[i].to_bits();
            match bf16_bits_rne(bits[i]) {
                None => {
                    prop_assert!(got & 0x7fff > 0x7f80, "x = {:#010x} (NaN) stored as {:#06x}, not a NaN", bits[i], got);
                    prop_assert!(z[i].is_nan(), "bf16(NaN {:#010x}) = {}", bits[i], z[i]);
                }
                Some(want) => {
                    prop_assert_eq!(got, want, "x = {:e} ({:#010x}) stored as bf16 {:#06x}, want {:#06x}", x[i], bits[i], got, want);
                    let zw = f32::from_bits((want as u32) << 16);
                    prop_assert_eq!(z[i].to_bits(), zw.to_bits(), "bf16({:e} = {:#010x}) = {:e}, want {:e}", x[i], bits[i], z[i], zw);
                }
            }
        }
    }

    /// `let z: bf16 = ...` rounds the value to bf16, then f32 math uses the rounded value; a rebinding of
    /// `t` keeps its declared bf16 storage type.
    #[test]
    fn let_bf16_rounds_then_computes_in_f32(n in 1usize..24, seed in any::<u64>(), scale in prop::sample::select(vec![1.0f32, 1e-3, 300.0])) {
        let src = "kernel lb(x: f32[N], w: f32[N]) -> (o: f32[N], p: f32[N]) {\n    let z: bf16 = x * w;\n    \
                   o = z * 3.0 + x;\n    let t: bf16 = x;\n    t = t * w + 1.0;\n    p = t;\n}\n";
        let g = kernel_of(src, "lb")?;
        let mut rng = Rng::new(seed);
        let x = rand_f32s(&mut rng, n, -scale, scale);
        let w = rand_f32s(&mut rng, n, -2.0, 2.0);
        let res = launch(&g, src, vec![("x", f32_tensor(&[n], x.clone())), ("w", f32_tensor(&[n], w.clone()))], &["o", "p"])?;
        let o = f32_data("o", &res[0], &[n])?;
        let p = f32_data("p", &res[1], &[n])?;
        let rb = |v: f32| f32::from_bits((bf16_bits_rne(v.to_bits()).expect("finite") as u32) << 16);
        let want_o: Vec<f32> = (0..n).map(|i| rb(x[i] * w[i]) * 3.0 + x[i]).collect();
        let want_p: Vec<f32> = (0..n).map(|i| rb(rb(x[i]) * w[i] + 1.0)).collect();
        let ctx = format!("{src}x = {x:?}\nw = {w:?}");
        assert_exact("o", &o, &want_o, &ctx)?;
        assert_exact("p", &p, &want_p, &ctx)?;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Integer floor division and modulo

/// Division rounding toward negative infinity (`div_euclid` differs for negative divisors).
fn floor_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// The remainder that matches `floor_div`: it has the sign of the divisor.
fn floor_mod(a: i64, b: i64) -> i64 {
    a - b * floor_div(a, b)
}

fn i32_values() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -20i32..=20,
        2 => any::<i32>(),
        1 => prop::sample::select(vec![i32::MIN, i32::MIN + 1, i32::MAX, i32::MAX - 1, -1, 1]),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Integer `/` and `%` round toward negative infinity, for tensor and literal divisors. The results are
    /// computed in 64 bits and stored into i32 (so `i32::MIN / -1` wraps, as the interpreter documents).
    #[test]
    fn integer_floor_div_and_mod(pairs in prop::collection::vec((i32_values(), i32_values().prop_filter("nonzero", |b| *b != 0)), 1..24)) {
        let src = "kernel d(a: i32[N], b: i32[N]) -> (q: i32[N], r: i32[N], q7: i32[N], r7: i32[N]) {\n    \
                   q = a / b;\n    r = a % b;\n    q7 = a / -7;\n    r7 = a % -7;\n}\n";
        let g = kernel_of(src, "d")?;
        let n = pairs.len();
        let a: Vec<i32> = pairs.iter().map(|p| p.0).collect();
        let b: Vec<i32> = pairs.iter().map(|p| p.1).collect();
        let res = launch(&g, src, vec![("a", i32_tensor(&[n], a.clone())), ("b", i32_tensor(&[n], b.clone()))], &["q", "r", "q7", "r7"])?;
        let wrap = |v: i64| v as i32;
        let want = [
            (0..n).map(|i| wrap(floor_div(a[i] as i64, b[i] as i64))).collect::<Vec<_>>(),
            (0..n).map(|i| wrap(floor_mod(a[i] as i64, b[i] as i64))).collect(),
            (0..n).map(|i| wrap(floor_div(a[i] as i64, -7))).collect(),
            (0..n).map(|i| wrap(floor_mod(a[i] as i64, -7))).collect(),
        ];
        for (k, name) in ["q", "r", "q7", "r7"].iter().enumerate() {
            let got = i32_data(name, &res[k], &[n])?;
            for i in 0..n {
                prop_assert_eq!(got[i], want[k][i], "`{}`: a = {}, b = {}", name, a[i], b[i]);
            }
        }
    }

    /// An integer division (or `%`) by zero anywhere stops the launch with E0804, never a panic.
    #[test]
    fn integer_division_by_zero_is_e0804(a in prop::collection::vec(i32_values(), 1..12), zero_at in any::<prop::sample::Index>(), use_mod in any::<bool>()) {
        let n = a.len();
        let mut b: Vec<i32> = a.iter().map(|&v| if v == 0 { 3 } else { v }).collect();
        b[zero_at.index(n)] = 0;
        let op = if use_mod { "%" } else { "/" };
        let src = format!("kernel d(a: i32[N], b: i32[N]) -> q: i32[N] {{\n    q = a {op} b;\n}}\n");
        let g = kernel_of(&src, "d")?;
        let r = kc_ir::interp::run(&g, &launch_args(vec![("a", i32_tensor(&[n], a.clone())), ("b", i32_tensor(&[n], b.clone()))]));
        match r {
            Ok(_) => prop_assert!(false, "a / 0 succeeded: a = {:?}, b = {:?}", a, b),
            Err(d) => prop_assert!(d.iter().any(|d| d.code == Code::DivByZero), "want E0804, got {:?}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Matmul

proptest! {
    #![proptest_config(config())]

    /// `a @ b` as NumPy's `matmul`: batch dims broadcast, a 1-D operand is a vector (its dim is dropped from
    /// the result). Against a naive f64 product, within 1e-4 of the magnitude of the products summed.
    #[test]
    fn matmul_matches_numpy(
        (ba, bb) in broadcastable_pair(2),
        m in 1usize..=4, k in 1usize..=4, n in 1usize..=4,
        vec_a in prop::bool::weighted(0.2),
        vec_b in prop::bool::weighted(0.2),
        seed in any::<u64>(),
    ) {
        let batch = broadcast(&ba, &bb).unwrap();
        let (sa, sb, sc, batch) = {
            let sa = if vec_a { vec![k] } else { [ba.clone(), vec![m, k]].concat() };
            let sb = if vec_b { vec![k] } else { [bb.clone(), vec![k, n]].concat() };
            // A 1-D operand brings no batch dims.
            let batch = match (vec_a, vec_b) {
                (true, true) => vec![],
                (true, false) => bb.clone(),
                (false, true) => ba.clone(),
                (false, false) => batch,
            };
            let mut sc = batch.clone();
            if !vec_a { sc.push(m); }
            if !vec_b { sc.push(n); }
            (sa, sb, sc, batch)
        };
        let src = format!("kernel mm(a: {}, b: {}) -> c: {} {{\n    c = a @ b;\n}}\n", ty("f32", &sa), ty("f32", &sb), ty("f32", &sc));
        let g = kernel_of(&src, "mm")?;
        let mut rng = Rng::new(seed);
        let a = rand_f32s(&mut rng, numel(&sa), -1.0, 1.0);
        let b = rand_f32s(&mut rng, numel(&sb), -1.0, 1.0);
        let res = launch(&g, &src, vec![("a", f32_tensor(&sa, a.clone())), ("b", f32_tensor(&sb, b.clone()))], &["c"])?;
        let got = f32_data("c", &res[0], &sc)?;
        let (a_batch, b_batch) = (&sa[..sa.len() - if vec_a { 1 } else { 2 }], &sb[..sb.len() - if vec_b { 1 } else { 2 }]);
        let mut want = Vec::new();
        let mut tol = Vec::new();
        for bi in 0..numel(&batch) {
            let bidx = unflatten(bi, &batch);
            let (oa, ob) = (bcast_flat(&bidx, a_batch), bcast_flat(&bidx, b_batch));
            for i in 0..if vec_a { 1 } else { m } {
                for j in 0..if vec_b { 1 } else { n } {
                    let (mut s, mut mag) = (0f64, 0f64);
                    for kk in 0..k {
                        let av = if vec_a { a[kk] } else { a[(oa * m + i) * k + kk] } as f64;
                        let bv = if vec_b { b[kk] } else { b[(ob * k + kk) * n + j] } as f64;
                        s += av * bv;
                        mag += (av * bv).abs();
                    }
                    want.push(s);
                    tol.push(1e-4 * mag + 1e-30);
                }
            }
        }
        assert_within("c", &got, &want, &tol, &format!("{src}a = {a:?}\nb = {b:?}"))?;
    }
}

// ---------------------------------------------------------------------------------------------------------
// softmax and logsumexp (the standard library)

proptest! {
    #![proptest_config(config())]

    /// `softmax(x, axis: A)` and `logsumexp(x, axis: A)` (or their default axis, -1) against f64 references,
    /// on small and large values, with some `-inf` entries (and, for logsumexp, whole `-inf` rows).
    #[test]
    fn softmax_and_logsumexp_match_references(
        shape in prop::collection::vec(1usize..=5, 1..=3),
        axis_pick in prop::option::weighted(0.8, any::<prop::sample::Index>()),
        negative_axis in any::<bool>(),
        scale in prop::sample::select(vec![1.0f32, 20.0]),
        with_neg_inf in prop::bool::weighted(0.3),
        seed in any::<u64>(),
    ) {
        let rank = shape.len();
        let axis = axis_pick.map(|i| i.index(rank));
        let arg = match axis {
            Some(a) if negative_axis => format!(", axis: {}", a as i64 - rank as i64),
            Some(a) => format!(", axis: {a}"),
            None => String::new(),
        };
        let a = axis.unwrap_or(rank - 1);
        let mut lse_shape = shape.clone();
        lse_shape.remove(a);
        let src = format!(
            "kernel sm(x: {}) -> (y: {}, l: {}) {{\n    y = softmax(x{arg});\n    l = logsumexp(x{arg});\n}}\n",
            ty("f32", &shape), ty("f32", &shape), ty("f32", &lse_shape)
        );
        let g = kernel_of(&src, "sm")?;
        let mut rng = Rng::new(seed);
        let (outer, len, inner) = (numel(&shape[..a]), shape[a], numel(&shape[a + 1..]));
        let mut x = rand_f32s(&mut rng, numel(&shape), -scale, scale);
        // Lanes of -inf entries: softmax must keep at least one finite entry per lane (else it is 0/0).
        let mut all_neg_inf_lanes = Vec::new();
        if with_neg_inf {
            for o in 0..outer {
                for i in 0..inner {
                    let whole = rng.int(0, 4) == 0;
                    let keep = rng.int(0, len as i32) as usize;
                    for kk in 0..len {
                        if whole || (kk != keep && rng.int(0, 2) == 0) {
                            x[(o * len + kk) * inner + i] = f32::NEG_INFINITY;
                        }
                    }
                    all_neg_inf_lanes.push(whole);
                }
            }
        } else {
            all_neg_inf_lanes = vec![false; outer * inner];
        }
        let res = launch(&g, &src, vec![("x", f32_tensor(&shape, x.clone()))], &["y", "l"])?;
        let y = f32_data("y", &res[0], &shape)?;
        let l = f32_data("l", &res[1], &lse_shape)?;
        let ctx = format!("{src}x{shape:?} = {x:?}");
        let (mut want_y, mut tol_y) = (vec![0f64; x.len()], vec![0f64; x.len()]);
        let (mut want_l, mut tol_l) = (Vec::new(), Vec::new());
        for o in 0..outer {
            for i in 0..inner {
                let at = |kk: usize| (o * len + kk) * inner + i;
                let m = (0..len).map(|kk| x[at(kk)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let whole = all_neg_inf_lanes[o * inner + i];
                if whole {
                    want_l.push(f64::NEG_INFINITY);
                    tol_l.push(0.0);
                    for kk in 0..len {
                        // exp(-inf - 0) / sum = 0 / 0: NaN, as in NumPy and PyTorch.
                        want_y[at(kk)] = f64::NAN;
                    }
                    continue;
                }
                let s: f64 = (0..len).map(|kk| (x[at(kk)] as f64 - m).exp()).sum();
                let lse = s.ln() + m;
                want_l.push(lse);
                tol_l.push(1e-5 * lse.abs() + 1e-6);
                for kk in 0..len {
                    let p = (x[at(kk)] as f64 - m).exp() / s;
                    want_y[at(kk)] = p;
                    tol_y[at(kk)] = 1e-5 * p + 1e-7;
                }
            }
        }
        assert_within("y", &y, &want_y, &tol_y, &ctx)?;
        assert_within("l", &l, &want_l, &tol_l, &ctx)?;
    }
}
