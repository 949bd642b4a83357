//! Seeded random arguments for a kernel: every tensor or scalar parameter that the caller did not give gets
//! values that suit its dtype and, for integer tensors, the way the kernel uses it.
//!
//! Shapes come from the dims the launch already knows ([`kc_ir::launch::infer_dims`]: the dims given, the
//! dims fixed by the `where` clause, and those solved from the shapes of the tensors given). A dim that is
//! still unknown is an error that says how to give it.
//!
//! Values, by dtype:
//! - `f32`/`bf16`/`f16` tensors: uniform in `[-1, 1)` (but see rule (e)), then rounded to nearest-even for
//!   `bf16`/`f16`.
//! - float scalars: uniform in `(0, 1)` (after rounding), since scalars are things like `lr`, `beta1`, `eps`,
//!   `scale`, where a negative or zero value rarely makes sense.
//! - `bool`: a fair coin. `i32` scalars: uniform in `1..=10`.
//! - `i32` tensors: a range derived from how the graph uses the parameter, so that a random launch does not
//!   stop on an out-of-range index. "Uses" look through copies: a `Compute` node whose body is exactly one
//!   `Load` of the parameter (a reshape, a transpose, a copy) holds the same values, so its uses count too.
//!
//! Rules for `i32` tensors:
//! - (a) the `src` of a `segment(src, value)`: `src` is offsets, so the values are sorted, the first is the
//!   smallest `value` can be (0 for an index variable) and the last is one past the largest (the extent `X`
//!   of an index variable `r in 0..X`); the ones between are random and non-decreasing (empty groups are
//!   allowed). When the range of `value` cannot be worked out, the offsets span `0..=8`.
//! - (b) the source of a `bincount(src, n)`: values uniform in `0..n`.
//! - (c) a load of it used as a whole index of another load, on an axis of extent `X` (a gather such as
//!   `table[ids[i], d]`): values in `0..X`; for an index `ids[i] / c` with an integer constant `c > 0`
//!   (`x[order[r] / K, m]`): values in `0..X*c`.
//! - (d) otherwise: values in `0..8`.
//!
//! Where several of (b) to (d) apply, the tightest range (the intersection) is used; (a) wins over the
//! others, since offsets must be sorted. An empty range for a non-empty tensor is an error.
//!
//! Generation is deterministic for a seed: one `SmallRng` seeded with `seed_from_u64(seed)` makes the
//! parameters in parameter order. (The same build gives the same values; `SmallRng`'s algorithm may differ
//! between `rand` versions and pointer widths.)
//!
//! - (e) a float tensor that reaches the argument of `sqrt`, `rsqrt`, `log`, `log2` or the base of `pow`
//!   through `+`, `*` (a square needs nothing of its factors), `/`, `where` and loads (AdamW's `v`, a
//!   variance): values in `[0, 1)`, so that the maths stays defined.
//!
//! The values are valid launch arguments, not meaningful data.

use kc_ir::dim::{floor_div, Dim, DimError};
use kc_ir::graph::{BinOp, Const, Expr, ExprKind, Graph, IndexVar, NodeKind, ParamKind, ValueId};
use kc_ir::launch::{infer_dims, Args};
use kc_ir::tensor::numel;
use kc_ir::{DType, Tensor, TensorData};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// The largest tensor `random_args` makes, in elements (2^28: one GiB of f32).
pub const MAX_RANDOM_ELEMENTS: u64 = 1 << 28;

/// The range used for an `i32` tensor that no rule constrains.
const DEFAULT_INT_RANGE: (i64, i64) = (0, 8);

/// Returns `given` plus seeded random values for every tensor or scalar parameter that `given` lacks.
pub fn random_args(graph: &Graph, given: &Args, seed: u64) -> Result<Args, String> {
    random_impl(graph, given, seed, false)
}

/// Like [`random_args`], but makes only the `i32` tensors (not scalars): the data that control can depend
/// on (offsets, indices), for counting a tile program's work without allocating its float tensors. The
/// values follow the same rules, from an own sequence of the seed (they differ from `random_args`'s).
pub fn random_int_args(graph: &Graph, given: &Args, seed: u64) -> Result<Args, String> {
    random_impl(graph, given, seed, true)
}

fn random_impl(graph: &Graph, given: &Args, seed: u64, ints_only: bool) -> Result<Args, String> {
    let env = infer_dims(graph, given);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = given.clone();
    let nonneg = nonnegative_params(graph);
    for (pi, p) in graph.params.iter().enumerate() {
        let ParamKind::Tensor { dtype, shape, .. } = &p.kind else { continue };
        if given.tensors.contains_key(&p.name) || (ints_only && (*dtype != DType::I32 || shape.is_empty())) {
            continue;
        }
        let dims = eval_shape(&p.name, shape, &env)?;
        let n = numel(&dims).filter(|&n| n as u64 <= MAX_RANDOM_ELEMENTS).ok_or_else(|| {
            format!(
                "cannot make a random `{}`: shape [{}] has more than 2^28 elements",
                p.name,
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let scalar = shape.is_empty();
        let t = match dtype {
            DType::F32 | DType::BF16 | DType::F16 if scalar => {
                let x = loop {
                    let x = round_to(*dtype, rng.random::<f32>());
                    if x > 0.0 && x < 1.0 {
                        break x;
                    }
                };
                Tensor::from_f32_as(*dtype, dims, &[x])
            }
            DType::F32 | DType::BF16 | DType::F16 => {
                let lo = if nonneg.contains(&pi) { 0.0f32 } else { -1.0 };
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..1.0)).collect();
                Tensor::from_f32_as(*dtype, dims, &v)
            }
            DType::Bool => Tensor::new(dims, TensorData::Bool((0..n).map(|_| rng.random_bool(0.5)).collect())),
            DType::I32 if scalar => Tensor::from_i32(dims, vec![rng.random_range(1..=10)]),
            DType::I32 => {
                let plan = int_plan(graph, pi, &env);
                let v = plan.generate(&p.name, n, &mut rng)?;
                Tensor::from_i32(dims, v)
            }
        };
        let t = t.ok_or_else(|| format!("cannot make a random `{}`: its size does not match its shape", p.name))?;
        out.tensors.insert(p.name.clone(), t);
    }
    Ok(out)
}

fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => kc_ir::dtype::round_bf16(x),
        DType::F16 => kc_ir::dtype::round_f16(x),
        _ => x,
    }
}

fn eval_shape(name: &str, shape: &[Dim], env: &BTreeMap<String, i64>) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(shape.len());
    for d in shape {
        let v = d.eval(&|s| env.get(s).copied()).map_err(|e| match e {
            DimError::Unbound(x) => {
                format!(
                    "cannot make a random `{name}`: dim `{x}` is not known: give it with --dims {x}=N \
                     or give an input that has it"
                )
            }
            e => format!("cannot make a random `{name}`: {e}"),
        })?;
        let v = usize::try_from(v).map_err(|_| format!("cannot make a random `{name}`: dim `{d}` is {v}"))?;
        out.push(v);
    }
    Ok(out)
}

/// How to fill one `i32` tensor.
#[derive(Debug, PartialEq)]
struct IntPlan {
    /// Rule (a): sorted offsets from `first` to `last`.
    offsets: Option<(i64, i64)>,
    /// Rules (b)-(d): values in `lo..hi`, with the reasons that narrowed it.
    range: (i64, i64),
    why: Vec<String>,
}

impl IntPlan {
    fn generate(&self, name: &str, n: usize, rng: &mut SmallRng) -> Result<Vec<i32>, String> {
        let fit =
            |x: i64| i32::try_from(x).map_err(|_| format!("cannot make a random `{name}`: {x} does not fit in i32"));
        if let Some((first, last)) = self.offsets {
            let first32 = fit(first)?;
            let (first, last) = (first32, fit(last.max(first))?);
            let mut v: Vec<i32> = (0..n).map(|_| rng.random_range(first..=last)).collect();
            v.sort_unstable();
            if let Some(x) = v.first_mut() {
                *x = first;
            }
            if n >= 2 {
                v[n - 1] = last;
            }
            return Ok(v);
        }
        let (lo, hi) = self.range;
        if n == 0 {
            return Ok(Vec::new());
        }
        if lo >= hi {
            return Err(format!(
                "cannot make a random `{name}`: its values must be in {lo}..{hi} ({}), which is empty",
                self.why.join(", ")
            ));
        }
        let lo = lo.max(i32::MIN as i64);
        let hi = hi.min(i32::MAX as i64 + 1);
        Ok((0..n).map(|_| rng.random_range(lo..hi) as i32).collect())
    }
}

/// Works out rules (a)-(d) for parameter `pi`.
fn int_plan(graph: &Graph, pi: usize, env: &BTreeMap<String, i64>) -> IntPlan {
    let ev = |d: &Dim| d.eval(&|s| env.get(s).copied()).ok();
    // The nodes that hold the parameter's values: the parameter itself and copies of it.
    let mut alias = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        alias[i] = match &node.kind {
            NodeKind::Param(p) => *p == pi,
            NodeKind::Compute { body, .. } => match &body.kind {
                ExprKind::Load { src, idx } => {
                    src.index() < i && alias[src.index()] && idx.iter().all(|e| !reads_memory(e))
                }
                _ => false,
            },
            _ => false,
        };
    }
    let is_alias = |v: ValueId| alias.get(v.index()).copied().unwrap_or(false);

    let mut offsets: Option<(i64, i64)> = None;
    let mut ranges: Vec<(i64, i64, String)> = Vec::new();
    for node in &graph.nodes {
        match &node.kind {
            NodeKind::BinCount { src, n } if is_alias(*src) => {
                if let Some(n) = ev(n) {
                    ranges.push((0, n, format!("bincount with n = {n}")));
                }
            }
            NodeKind::Compute { vars, body } => body.walk(&mut |e| match &e.kind {
                ExprKind::Segment { src, value } if is_alias(*src) => {
                    let (lo, hi) = interval(value, vars, &ev).unwrap_or((DEFAULT_INT_RANGE.0, DEFAULT_INT_RANGE.1 - 1));
                    let (first, last) = (lo, hi.saturating_add(1));
                    offsets = Some(match offsets {
                        Some((f, l)) => (f.min(first), l.max(last)),
                        None => (first, last),
                    });
                }
                ExprKind::Load { src, idx } => {
                    for (axis, ie) in idx.iter().enumerate() {
                        let Some(mult) = alias_load(ie, &is_alias) else { continue };
                        let Some(x) = graph.nodes.get(src.index()).and_then(|s| s.shape.get(axis)).and_then(&ev) else {
                            continue;
                        };
                        let hi = x.saturating_mul(mult);
                        let why = if mult == 1 {
                            format!("an index on an axis of extent {x}")
                        } else {
                            format!("an index (divided by {mult}) on an axis of extent {x}")
                        };
                        ranges.push((0, hi, why));
                    }
                }
                _ => {}
            }),
            _ => {}
        }
    }
    let (range, why) = if ranges.is_empty() {
        (DEFAULT_INT_RANGE, Vec::new())
    } else {
        let lo = ranges.iter().map(|r| r.0).max().unwrap_or(DEFAULT_INT_RANGE.0);
        let hi = ranges.iter().map(|r| r.1).min().unwrap_or(DEFAULT_INT_RANGE.1);
        let mut why: Vec<String> = ranges.into_iter().map(|r| r.2).collect();
        why.dedup();
        ((lo, hi), why)
    };
    IntPlan { offsets, range, why }
}

/// Whether an expression reads a tensor.
fn reads_memory(e: &Expr) -> bool {
    let mut found = false;
    e.walk(&mut |x| found |= matches!(x.kind, ExprKind::Load { .. } | ExprKind::Segment { .. }));
    found
}

/// If `e` is a load of the parameter (`ids[..]`), `Some(1)`; if it is `ids[..] / c` with a constant
/// `c > 0`, `Some(c)`.
fn alias_load(e: &Expr, is_alias: &dyn Fn(ValueId) -> bool) -> Option<i64> {
    match &e.kind {
        ExprKind::Load { src, .. } if is_alias(*src) => Some(1),
        ExprKind::Binary(BinOp::Div, a, b) => match (&a.kind, &b.kind) {
            (ExprKind::Load { src, .. }, ExprKind::Const(Const::I32(c))) if is_alias(*src) && *c > 0 => Some(*c),
            _ => None,
        },
        _ => None,
    }
}

/// The inclusive range of values an integer expression takes, when it is simple enough to tell.
fn interval(e: &Expr, vars: &[IndexVar], ev: &dyn Fn(&Dim) -> Option<i64>) -> Option<(i64, i64)> {
    match &e.kind {
        ExprKind::Var(v) => {
            let x = ev(&vars.get(v.index())?.extent)?;
            Some((0, x - 1))
        }
        ExprKind::Const(Const::I32(c)) => Some((*c, *c)),
        ExprKind::Dim(d) => ev(d).map(|v| (v, v)),
        ExprKind::Binary(op, a, b) => {
            let (al, ah) = interval(a, vars, ev)?;
            let (bl, bh) = interval(b, vars, ev)?;
            match op {
                BinOp::Add => Some((al.checked_add(bl)?, ah.checked_add(bh)?)),
                BinOp::Sub => Some((al.checked_sub(bh)?, ah.checked_sub(bl)?)),
                BinOp::Mul => {
                    let p = [al.checked_mul(bl)?, al.checked_mul(bh)?, ah.checked_mul(bl)?, ah.checked_mul(bh)?];
                    Some((*p.iter().min()?, *p.iter().max()?))
                }
                BinOp::Div if bl == bh && bl > 0 => Some((floor_div(al, bl), floor_div(ah, bl))),
                BinOp::Mod if bl == bh && bl > 0 => Some((0, bl - 1)),
                BinOp::Min => Some((al.min(bl), ah.min(bh))),
                BinOp::Max => Some((al.max(bl), ah.max(bh))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The parameters whose values must not be negative for the kernel's maths to stay defined: those that
/// reach the argument of `sqrt`/`rsqrt`/`log`/`log2` or the base of `pow` through operations that keep a
/// non-negative result non-negative when their operands are (rule (e)).
fn nonnegative_params(graph: &Graph) -> std::collections::BTreeSet<usize> {
    use kc_ir::{BinOp, ExprKind, NodeKind, UnOp};
    // Nodes that must hold non-negative values; filled from consumers to producers.
    let mut need = vec![false; graph.nodes.len()];
    fn want(e: &kc_ir::Expr, need: &mut [bool]) {
        match &e.kind {
            ExprKind::Load { src, .. } => {
                if let Some(n) = need.get_mut(src.index()) {
                    *n = true;
                }
            }
            ExprKind::Binary(BinOp::Add | BinOp::Div | BinOp::Max | BinOp::Min, a, b) => {
                want(a, need);
                want(b, need);
            }
            ExprKind::Binary(BinOp::Mul, a, b) if a != b => {
                want(a, need);
                want(b, need);
            }
            ExprKind::Binary(BinOp::Sub, a, _) => want(a, need),
            ExprKind::Select(_, a, b) => {
                want(a, need);
                want(b, need);
            }
            ExprKind::Cast(_, a) => want(a, need),
            ExprKind::Reduce { body, .. } => want(body, need),
            _ => {}
        }
    }
    fn roots(e: &kc_ir::Expr, need: &mut [bool]) {
        match &e.kind {
            ExprKind::Unary(UnOp::Sqrt | UnOp::Rsqrt | UnOp::Log | UnOp::Log2, a) => want(a, need),
            ExprKind::Binary(BinOp::Pow, a, _) => want(a, need),
            _ => {}
        }
        e.for_each_child(|c| roots(c, need));
    }
    for node in &graph.nodes {
        if let NodeKind::Compute { body, .. } = &node.kind {
            roots(body, &mut need);
        }
    }
    for i in (0..graph.nodes.len()).rev() {
        if !need[i] {
            continue;
        }
        if let NodeKind::Compute { body, .. } = &graph.nodes[i].kind {
            want(body, &mut need);
        }
    }
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match n.kind {
            NodeKind::Param(p) if need[i] => Some(p),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::graph::{Node, Param, VarId};
    use kc_ir::{ScalarTy, Span};

    fn sym(s: &str) -> Dim {
        Dim::sym(s)
    }

    fn graph(params: Vec<(&str, DType, Vec<Dim>)>, extra: Vec<Node>) -> Graph {
        let mut nodes = Vec::new();
        let mut ps = Vec::new();
        for (i, (name, dtype, shape)) in params.into_iter().enumerate() {
            ps.push(Param {
                name: name.to_string(),
                kind: ParamKind::Tensor { dtype, shape: shape.clone(), inout: false },
                span: Span::default(),
            });
            nodes.push(Node {
                name: Some(name.to_string()),
                dtype,
                shape,
                kind: NodeKind::Param(i),
                span: Span::default(),
            });
        }
        nodes.extend(extra);
        Graph {
            name: "k".to_string(),
            doc: None,
            span: Span::default(),
            params: ps,
            outputs: Vec::new(),
            dims: Vec::new(),
            fixed: Vec::new(),
            constraints: Vec::new(),
            asserts: Vec::new(),
            nodes,
            results: Vec::new(),
            hints: Vec::new(),
        }
    }

    fn e(kind: ExprKind, ty: ScalarTy) -> Expr {
        Expr::new(kind, ty, Span::default())
    }

    fn var(i: u32) -> Expr {
        e(ExprKind::Var(VarId(i)), ScalarTy::I32)
    }

    fn load(src: u32, idx: Vec<Expr>, ty: ScalarTy) -> Expr {
        e(ExprKind::Load { src: ValueId(src), idx }, ty)
    }

    fn iv(name: &str, extent: Dim) -> IndexVar {
        IndexVar { name: name.to_string(), extent }
    }

    fn compute(dtype: DType, shape: Vec<Dim>, vars: Vec<IndexVar>, body: Expr) -> Node {
        Node { name: None, dtype, shape, kind: NodeKind::Compute { vars, body }, span: Span::default() }
    }

    fn dims(d: &[(&str, i64)]) -> Args {
        Args { tensors: BTreeMap::new(), dims: d.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    fn ints(a: &Args, name: &str) -> Vec<i32> {
        match &a.tensors[name].data {
            TensorData::I32(v) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// `let e[r in 0..R] = segment(offsets, r);` with `offsets: i32[E + 1]`.
    #[test]
    fn rule_a_segment_offsets() {
        let seg = e(ExprKind::Segment { src: ValueId(0), value: Box::new(var(0)) }, ScalarTy::I32);
        let g = graph(
            vec![("offsets", DType::I32, vec![sym("E").add(&Dim::one())]), ("xs", DType::F32, vec![sym("R")])],
            vec![compute(DType::I32, vec![sym("R")], vec![iv("r", sym("R"))], seg)],
        );
        for seed in 0..20 {
            let a = random_args(&g, &dims(&[("E", 6), ("R", 25)]), seed).unwrap();
            let v = ints(&a, "offsets");
            assert_eq!(v.len(), 7);
            assert_eq!(v[0], 0);
            assert_eq!(v[6], 25);
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{v:?}");
        }
    }

    /// `bincount(reshape(idx, [T * K]), E)`: the reshape is a copy, so idx's values are in 0..E.
    #[test]
    fn rule_b_bincount_through_a_reshape() {
        let tk = sym("T").mul(&sym("K"));
        let i = var(0);
        let kk = e(ExprKind::Dim(sym("K")), ScalarTy::I32);
        let row = e(ExprKind::Binary(BinOp::Div, Box::new(i.clone()), Box::new(kk.clone())), ScalarTy::I32);
        let col = e(ExprKind::Binary(BinOp::Mod, Box::new(i), Box::new(kk)), ScalarTy::I32);
        let flat =
            compute(DType::I32, vec![tk.clone()], vec![iv("i", tk.clone())], load(0, vec![row, col], ScalarTy::I32));
        let bc = Node {
            name: None,
            dtype: DType::I32,
            shape: vec![sym("E")],
            kind: NodeKind::BinCount { src: ValueId(1), n: sym("E") },
            span: Span::default(),
        };
        let g = graph(vec![("idx", DType::I32, vec![sym("T"), sym("K")])], vec![flat, bc]);
        let a = random_args(&g, &dims(&[("T", 50), ("K", 4), ("E", 5)]), 3).unwrap();
        let v = ints(&a, "idx");
        assert_eq!(v.len(), 200);
        assert!(v.iter().all(|&x| (0..5).contains(&x)), "{v:?}");
        assert!(v.contains(&0) && v.contains(&4));
    }

    fn gather_graph(div: Option<i64>, bincount: Option<i64>) -> Graph {
        // out[n, d] = table[ids[n] (/ c), d]
        let ids = load(1, vec![var(0)], ScalarTy::I32);
        let index = match div {
            Some(c) => e(
                ExprKind::Binary(BinOp::Div, Box::new(ids), Box::new(Expr::constant(Const::I32(c), Span::default()))),
                ScalarTy::I32,
            ),
            None => ids,
        };
        let body = load(0, vec![index, var(1)], ScalarTy::F32);
        let mut extra =
            vec![compute(DType::F32, vec![sym("N"), sym("D")], vec![iv("n", sym("N")), iv("d", sym("D"))], body)];
        if let Some(n) = bincount {
            extra.push(Node {
                name: None,
                dtype: DType::I32,
                shape: vec![Dim::constant(n)],
                kind: NodeKind::BinCount { src: ValueId(1), n: Dim::constant(n) },
                span: Span::default(),
            });
        }
        graph(vec![("table", DType::BF16, vec![sym("V"), sym("D")]), ("ids", DType::I32, vec![sym("N")])], extra)
    }

    #[test]
    fn rule_c_gather_index() {
        let g = gather_graph(None, None);
        let a = random_args(&g, &dims(&[("V", 3), ("D", 2), ("N", 100)]), 1).unwrap();
        let v = ints(&a, "ids");
        assert!(v.iter().all(|&x| (0..3).contains(&x)));
        assert!(v.contains(&2));
        assert_eq!(a.tensors["table"].dtype(), DType::BF16);
        assert_eq!(a.tensors["table"].shape, vec![3, 2]);
    }

    #[test]
    fn rule_c_divided_index() {
        let g = gather_graph(Some(4), None);
        let a = random_args(&g, &dims(&[("V", 3), ("D", 2), ("N", 200)]), 1).unwrap();
        let v = ints(&a, "ids");
        assert!(v.iter().all(|&x| (0..12).contains(&x)));
        assert!(v.contains(&11));
    }

    #[test]
    fn tightest_range_wins() {
        let g = gather_graph(None, Some(2));
        let a = random_args(&g, &dims(&[("V", 3), ("D", 2), ("N", 100)]), 1).unwrap();
        let v = ints(&a, "ids");
        assert!(v.iter().all(|&x| (0..2).contains(&x)));
        // An empty range is an error that says why.
        let g = gather_graph(None, Some(0));
        let err = random_args(&g, &dims(&[("V", 3), ("D", 2), ("N", 4)]), 1).unwrap_err();
        assert!(err.contains("`ids`") && err.contains("bincount"), "{err}");
    }

    #[test]
    fn rule_d_default_range_and_scalars() {
        fn scalar(name: &str, dtype: DType) -> (&str, DType, Vec<Dim>) {
            (name, dtype, Vec::new())
        }
        let g = graph(
            vec![
                ("t", DType::I32, vec![sym("N")]),
                scalar("lr", DType::F32),
                scalar("s", DType::BF16),
                scalar("step", DType::I32),
                ("mask", DType::Bool, vec![sym("N")]),
                ("x", DType::F16, vec![sym("N")]),
            ],
            Vec::new(),
        );
        for seed in 0..10 {
            let a = random_args(&g, &dims(&[("N", 64)]), seed).unwrap();
            assert!(ints(&a, "t").iter().all(|&x| (0..8).contains(&x)));
            for s in ["lr", "s"] {
                let x = a.tensors[s].get_f64(0);
                assert!(x > 0.0 && x < 1.0, "{s} = {x}");
                assert!(a.tensors[s].shape.is_empty());
            }
            assert_eq!(a.tensors["s"].dtype(), DType::BF16);
            assert!((1..=10).contains(&ints(&a, "step")[0]));
            assert_eq!(a.tensors["mask"].dtype(), DType::Bool);
            assert!(a.tensors["x"].to_f64_vec().iter().all(|&x| (-1.0..=1.0).contains(&x)));
        }
    }

    #[test]
    fn deterministic_and_keeps_given() {
        let g = gather_graph(None, None);
        let mut given = dims(&[("D", 4), ("N", 30)]);
        let table = Tensor::from_f32_as(DType::BF16, vec![5, 4], &[0.5; 20]).unwrap();
        given.tensors.insert("table".to_string(), table.clone());
        let a = random_args(&g, &given, 9).unwrap();
        let b = random_args(&g, &given, 9).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.tensors["table"], table);
        let c = random_args(&g, &given, 10).unwrap();
        assert_ne!(a, c);
        // V was solved from the given table: ids index its 5 rows.
        assert!(ints(&a, "ids").iter().all(|&x| (0..5).contains(&x)));
        assert!(ints(&a, "ids").contains(&4));
    }

    #[test]
    fn unknown_dim_says_how_to_give_it() {
        let g = gather_graph(None, None);
        let err = random_args(&g, &dims(&[("V", 3), ("D", 2)]), 0).unwrap_err();
        assert!(err.contains("dim `N` is not known: give it with --dims N=N"), "{err}");
    }
}
