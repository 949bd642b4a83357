//! Shared pieces of kc's fuzz targets (see `docs/fuzzing.md`).

use kc_frontend::Loader;

/// The fuzzer's bytes as source text. The compiler takes a `String`, as the CLI gives it after a lossy
/// read: invalid UTF-8 becomes U+FFFD, which the lexer must report like any other odd character.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The program of the input's text when it compiles ([`MapLoader`] resolving `use`) without any
/// diagnostic: the targets that go past the frontend (`pipeline`, `jit`) take only those.
pub fn clean_program(data: &[u8]) -> Option<kc_ir::Program> {
    let mut sources = kc_frontend::SourceMap::new();
    let root = sources.add("fuzz.ker", text(data));
    let (program, diags) = kc_frontend::compile(&mut sources, root, &MapLoader);
    diags.is_empty().then_some(program)
}

/// A `use` loader over a small fixed set of files, so that inputs reach `use` resolution, cycles and
/// errors inside used files without touching the disk. Every other name is refused (E0020).
pub struct MapLoader;

/// The files [`MapLoader`] serves, by the name a `use` gives.
pub const FILES: &[(&str, &str)] = &[
    (
        "lib.ker",
        "/// The squared L2 norm along the last axis.\nfn sq_norm(x) {\n    return sum(x * x, axis: -1);\n}\n\n\
         fn leaky_relu(x, slope = 0.01) {\n    return where(x > 0.0, x, slope * x);\n}\n",
    ),
    ("nested.ker", "use \"lib.ker\";\nfn twice(x) {\n    return leaky_relu(x) + leaky_relu(x);\n}\n"),
    ("self.ker", "use \"self.ker\";\nfn s(x) {\n    return x;\n}\n"),
    ("a.ker", "use \"b.ker\";\nfn fa(x) {\n    return fb(x) * 2.0;\n}\n"),
    ("b.ker", "use \"a.ker\";\nfn fb(x) {\n    return x + 1.0;\n}\n"),
    ("bad.ker", "fn broken(x) {\n    return x +;\n}\nkernel k(x: f32[N]) -> y: f32[N] { y = x; }\n"),
];

impl Loader for MapLoader {
    fn load(&self, _from: &str, path: &str) -> Result<(String, String), String> {
        FILES
            .iter()
            .find(|(n, _)| *n == path)
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .ok_or_else(|| format!("cannot read `{path}`: not one of the fuzz loader's files"))
    }
}

/// The most elements the pipeline target lets the random arguments of one launch hold (2^20): a kernel
/// that declares `f32[100000000]` is valid, but its launch would only measure the fuzzer's allocator.
pub const MAX_ARG_ELEMENTS: u64 = 1 << 20;

/// The dims of a launch of `g` with every dim that the `where` clause does not fix set to `size`, or `None`
/// if the parameters would then hold more than [`MAX_ARG_ELEMENTS`] elements (or a shape does not evaluate).
pub fn small_dims(g: &kc_ir::Graph, size: i64) -> Option<kc_ir::launch::Args> {
    dims_by(g, |_| size, MAX_ARG_ELEMENTS)
}

/// The dims of a launch of `g` with the `i`-th dim that the `where` clause does not fix (in the order of
/// `g.dims`, then the `dim` parameters) set to `size(i)`, or `None` if the parameters would then hold more
/// than `max_elements` elements (or a shape does not evaluate).
pub fn dims_by(g: &kc_ir::Graph, size: impl Fn(usize) -> i64, max_elements: u64) -> Option<kc_ir::launch::Args> {
    let mut args = kc_ir::launch::Args::default();
    let names = g.dims.iter().chain(g.params.iter().filter(|p| p.kind == kc_ir::ParamKind::Dim).map(|p| &p.name));
    for d in names {
        let i = args.dims.len();
        args.dims.entry(d.clone()).or_insert_with(|| size(i));
    }
    for (n, v) in &g.fixed {
        args.dims.insert(n.clone(), *v);
    }
    let lookup = |s: &str| args.dims.get(s).copied();
    let mut total: u64 = 0;
    for p in &g.params {
        if let kc_ir::ParamKind::Tensor { shape, .. } = &p.kind {
            let n =
                shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(u64::try_from(d.eval(&lookup).ok()?).ok()?))?;
            total = total.checked_add(n)?;
        }
    }
    (total <= max_elements).then_some(args)
}

/// How far the JIT's results may be from the interpreter's, from what the kernel computes: the numerics table
/// of `docs/jit.md` ("largest error against the interpreter") applied to every node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exactness {
    /// Some value may differ in its last bits between the executors: a row sum or contraction (another
    /// order), a transcendental (1-3 ulp), `rsqrt` (1 ulp).
    pub inexact: bool,
    /// Such a value meets an operation that turns a last-bit difference into a large one: a comparison, a
    /// conversion to `i32` or `bool`, `floor`/`ceil`, `%`, an index, `argmax`/`argmin`, `topk`, `argsort`,
    /// `bincount`, `segment`; or a `sin`/`cos`, meaningless beyond 8e8 in the JIT. The results are then not
    /// compared with the interpreter's (nor whether a launch fails: an index may be computed).
    pub discontinuous: bool,
    /// The results (by name) behind which such a value was rounded to bf16 or f16: one bf16 unit apart.
    pub rounded: std::collections::BTreeSet<String>,
    /// The results behind two or more sums of such rounded values, one after the other (a sum of rounded
    /// values, rounded, summed again: Muon's Newton-Schulz steps), which amplify a one-unit difference of a
    /// rounding: the suite allows Muon's result `frac` 2 instead of 0.25 (`tests/suite/jit.rs`).
    pub chained: std::collections::BTreeSet<String>,
}

/// The [`Exactness`] of `g`'s results.
pub fn exactness(g: &kc_ir::Graph) -> Exactness {
    use kc_ir::graph::{BinOp, ExprKind, NodeKind, ReduceOp, UnOp};
    use kc_ir::{DType, Expr, ScalarTy};
    // Per node: (inexact, rounded).
    let mut node: Vec<(bool, bool)> = Vec::with_capacity(g.nodes.len());
    let mut disc = false;
    // An expression's (inexact, rounded); sets `disc` when an inexact value meets a discontinuity.
    fn walk(e: &Expr, node: &[(bool, bool)], disc: &mut bool) -> (bool, bool) {
        let sub = |e: &Expr, disc: &mut bool| walk(e, node, disc);
        match &e.kind {
            ExprKind::Const(_) | ExprKind::Var(_) | ExprKind::Dim(_) => (false, false),
            ExprKind::Load { src, idx } => {
                for i in idx {
                    if sub(i, disc).0 {
                        *disc = true;
                    }
                }
                node.get(src.index()).copied().unwrap_or((true, true))
            }
            ExprKind::Segment { src, value } => {
                let v = sub(value, disc);
                let s = node.get(src.index()).copied().unwrap_or((true, true));
                if v.0 || s.0 {
                    *disc = true;
                }
                (v.0 || s.0, v.1 || s.1)
            }
            ExprKind::Unary(op, a) => {
                let (i, r) = sub(a, disc);
                match op {
                    UnOp::Sin | UnOp::Cos => {
                        *disc = true;
                        (true, r)
                    }
                    UnOp::Exp
                    | UnOp::Exp2
                    | UnOp::Log
                    | UnOp::Log2
                    | UnOp::Rsqrt
                    | UnOp::Tanh
                    | UnOp::Sigmoid
                    | UnOp::Silu
                    | UnOp::Gelu
                    | UnOp::Softplus => (true, r),
                    UnOp::Floor | UnOp::Ceil => {
                        *disc |= i;
                        (i, r)
                    }
                    UnOp::Neg | UnOp::Not | UnOp::Sqrt | UnOp::Abs | UnOp::Relu => (i, r),
                }
            }
            ExprKind::Binary(op, a, b) => {
                let (ia, ra) = sub(a, disc);
                let (ib, rb) = sub(b, disc);
                let i = ia || ib;
                if i && (op.is_comparison() || *op == BinOp::Mod) {
                    *disc = true;
                }
                (i, ra || rb)
            }
            ExprKind::Select(c, a, b) => {
                let (ic, rc) = sub(c, disc);
                *disc |= ic;
                let (ia, ra) = sub(a, disc);
                let (ib, rb) = sub(b, disc);
                (ia || ib, rc || ra || rb)
            }
            ExprKind::Cast(t, a) => {
                let (i, r) = sub(a, disc);
                match t {
                    DType::I32 | DType::Bool => {
                        *disc |= i && a.ty == ScalarTy::F32;
                        (i, r)
                    }
                    DType::BF16 | DType::F16 => (i, r || i),
                    DType::F32 => (i, r),
                }
            }
            ExprKind::Reduce { op, body, .. } => {
                let (i, r) = sub(body, disc);
                match op {
                    ReduceOp::Sum => (i || body.ty == ScalarTy::F32, r),
                    ReduceOp::Max | ReduceOp::Min => (i, r),
                    ReduceOp::ArgMax | ReduceOp::ArgMin => {
                        *disc |= i;
                        (i, r)
                    }
                }
            }
        }
    }
    for n in &g.nodes {
        let src = |v: &kc_ir::ValueId| node.get(v.index()).copied().unwrap_or((true, true));
        let (i, r) = match &n.kind {
            NodeKind::Param(_) => (false, false),
            NodeKind::Compute { body, .. } => walk(body, &node, &mut disc),
            NodeKind::CumSum { src: s, .. } => src(s),
            NodeKind::TopK { src: s, .. } | NodeKind::ArgSort { src: s, .. } | NodeKind::BinCount { src: s, .. } => {
                let (i, r) = src(s);
                disc |= i;
                (i, r)
            }
        };
        let r = r || (i && matches!(n.dtype, DType::BF16 | DType::F16));
        node.push((i, r));
    }
    // Per node: the most sums of rounded values one after the other behind it.
    let mut chain = vec![0u32; g.nodes.len()];
    for (k, n) in g.nodes.iter().enumerate() {
        let mut c = n.operands().iter().map(|v| chain.get(v.index()).copied().unwrap_or(0)).max().unwrap_or(0);
        if let NodeKind::Compute { body, .. } = &n.kind {
            let mut sums_rounded = false;
            body.walk(&mut |e| {
                if let ExprKind::Reduce { op: ReduceOp::Sum, body, .. } = &e.kind {
                    body.walk(&mut |x| {
                        if let ExprKind::Load { src, .. } = &x.kind {
                            sums_rounded |= node.get(src.index()).is_none_or(|n| n.1);
                        }
                    });
                }
            });
            c += u32::from(sums_rounded);
        }
        chain[k] = c;
    }
    Exactness {
        chained: g
            .results
            .iter()
            .filter(|r| chain.get(r.value.index()).is_some_and(|c| *c >= 2))
            .map(|r| r.name.clone())
            .collect(),
        inexact: node.iter().any(|(i, _)| *i),
        discontinuous: disc,
        rounded: g
            .results
            .iter()
            .filter(|r| node.get(r.value.index()).is_some_and(|n| n.1))
            .map(|r| r.name.clone())
            .collect(),
    }
}

/// Whether `got` matches the interpreter's `want` within the tolerance the test suite allows the JIT:
/// `tests/suite/tiled.rs`'s `assert_matches_within(.., 0.25)`, that is
/// [`kc_runtime::compare::compare_within`] with `frac` 0.25 (integers and booleans equal; floats within
/// `rtol·|want| + 0.25·rtol·max|want|`, `rtol` the dtype's; NaN where NaN, the same infinities), except that
/// `rtol` is bf16's when `bf16_level` (as the differential runner, `tests/src/diff.rs`, does for results
/// behind a bf16 rounding of an inexact value), and `frac` 2 when `chained` ([`Exactness::chained`]).
/// Returns the first element that differs.
pub fn matches_within(
    got: &kc_ir::Tensor,
    want: &kc_ir::Tensor,
    bf16_level: bool,
    chained: bool,
) -> Result<(), String> {
    use kc_runtime::compare::{compare_with, rtol};
    if got.shape != want.shape || got.dtype() != want.dtype() {
        return Err(format!("{:?} {:?} vs {:?} {:?}", got.dtype(), got.shape, want.dtype(), want.shape));
    }
    let frac = if chained { 2.0 } else { 0.25 };
    let own = rtol(want.dtype());
    let rt = if bf16_level && own > 0.0 { rtol(kc_ir::DType::BF16).max(own) } else { own };
    let c = compare_with(got, want, rt, frac);
    let Some(i) = c.first_bad else { return Ok(()) };
    // The `frac` the largest finite difference would need, for the message.
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let absmax = w.iter().filter(|x| x.is_finite()).fold(0.0f64, |a, x| a.max(x.abs()));
    let need = (0..w.len())
        .filter(|&i| g[i].is_finite() && w[i].is_finite())
        .map(|i| ((g[i] - w[i]).abs() - rt * w[i].abs()) / (rt * absmax))
        .fold(0.0f64, f64::max);
    Err(format!(
        "{} of {} elements differ (rtol {rt:e}); first at {i}: JIT {:e}, interpreter {:e}; max |want| {absmax:e}, \
         the largest difference needs frac {need:.3}",
        c.bad,
        w.len(),
        g[i],
        w[i]
    ))
}

/// The first element where `a` and `b` differ in their bits (any NaN meets any NaN, as the suite's
/// `assert_same_bits`), with both values; also a different shape or dtype.
pub fn same_bits(a: &kc_ir::Tensor, b: &kc_ir::Tensor) -> Result<(), String> {
    if a.shape != b.shape || a.dtype() != b.dtype() {
        return Err(format!("{:?} {:?} vs {:?} {:?}", a.dtype(), a.shape, b.dtype(), b.shape));
    }
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let bad = (0..x.len()).filter(|&i| !(x[i].to_bits() == y[i].to_bits() || (x[i].is_nan() && y[i].is_nan())));
    let bad: Vec<usize> = bad.collect();
    match bad.first() {
        None => Ok(()),
        Some(&i) => {
            Err(format!("{} of {} elements differ; first at {i}: {:e} vs {:e}", bad.len(), x.len(), x[i], y[i]))
        }
    }
}

/// Whether two lists of results have the same names and bits ([`same_bits`]).
pub fn same_results(a: &[(String, kc_ir::Tensor)], b: &[(String, kc_ir::Tensor)]) -> Result<(), String> {
    let (an, bn): (Vec<&String>, Vec<&String>) = (a.iter().map(|r| &r.0).collect(), b.iter().map(|r| &r.0).collect());
    if an != bn {
        return Err(format!("results {an:?} vs {bn:?}"));
    }
    for ((n, x), (_, y)) in a.iter().zip(b) {
        same_bits(x, y).map_err(|e| format!("`{n}`: {e}"))?;
    }
    Ok(())
}

/// A 64-bit FNV-1a hash of the input: the fuzz targets' choices (dims, seeds, targets) follow from it.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
