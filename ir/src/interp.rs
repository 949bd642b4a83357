//! The reference interpreter of the graph IR: obviously correct rather than fast.
//!
//! [`run`] (or [`run_with`], with explicit [`Limits`]) executes one [`Graph`] on host tensors and returns
//! one `(name, tensor)` per entry of `graph.results`, in order. The arguments are never modified: the final
//! value of an `inout` parameter is returned as a new tensor.
//!
//! # How a launch runs
//!
//! 1. [`launch::bind`] checks the arguments against the signature and binds every dim symbol; its errors
//!    are returned as they are.
//! 2. Every node's concrete shape (and every reduction variable's extent) is computed from the binding, and
//!    the total size of all node values (parameters included, each `numel * dtype.size_bytes()`) is checked
//!    against [`Limits::max_bytes`]; a launch that needs more is refused with `Code::ResourceLimit` before
//!    anything is allocated.
//! 3. The nodes are evaluated in arena order. A `Compute` node evaluates its body once per output element,
//!    in row-major order; its value is stored in the node's dtype.
//! 4. The first run-time error stops the launch; no partial result is returned.
//!
//! # Numerics
//!
//! (Implemented in [`crate::ops`], which every executor shares: the tile-IR simulator computes the same bits.)
//!
//! - Values are `f32` (every floating-point value), `i64` (every integer: `i32` loads, index variables,
//!   dims, integer constants; index arithmetic never overflows in practice) and `bool`.
//! - Storing a value rounds `f32` to `bf16`/`f16` to nearest-even, keeps `f32` as is; an integer stored
//!   into an `i32` tensor wraps to its low 32 bits (two's complement); bools are stored as they are.
//!   Loading widens (`bf16`/`f16` to `f32`, `i32` to `i64`).
//! - Arithmetic on `f32` is IEEE `f32`. Transcendentals (`exp exp2 log log2 rsqrt sin cos tanh sigmoid
//!   silu gelu softplus pow`) are computed in `f64` from the `f32` operand and rounded once to `f32`, so
//!   they are within about half an ulp of the exact result; `sqrt`, `abs`, `floor`, `ceil` are exact.
//!   `sigmoid(x) = 1 / (1 + exp(-x))`, `silu(x) = x * sigmoid(x)`, `gelu(x) = x/2 * (1 + erf(x / sqrt 2))`
//!   (the exact form), `softplus(x) = max(x, 0) + log1p(exp(-|x|))`, `rsqrt(x) = 1 / sqrt(x)`,
//!   `relu(x) = x > 0 ? x : 0` (NaN stays NaN; `relu(-0.0)` is `+0.0`).
//! - Integer `+ - *`, `neg` and `abs` wrap in 64 bits. Integer `/` rounds toward negative infinity and `%`
//!   is the matching remainder (it has the sign of the divisor); a zero divisor stops the launch with
//!   `Code::DivByZero` at the operation's span.
//! - `f32` `%` is the floor remainder `a - b * floor(a / b)` computed exactly (as `fmod(a, b)`, plus `b`
//!   when the signs differ): it has the sign of `b`; `x % 0.0` is NaN.
//! - `min`/`max` propagate NaN (either operand NaN gives NaN). Comparisons are IEEE (NaN compares false,
//!   `!=` true). `&&`/`||` evaluate both operands (only `where` is lazy).
//! - `where(c, a, b)` evaluates `c`, then only the chosen side: a masked load never faults.
//! - Casts: to `f32` converts (`bool` gives 0 or 1); to `i32` truncates toward zero, saturating at the
//!   `i32` range, NaN gives 0 (an integer stays as it is, `bool` gives 0 or 1); to `bool` is `!= 0` (NaN
//!   is true); to `bf16`/`f16` rounds the `f32` to that type (nearest-even) and widens it back.
//! - `Load` evaluates its indices left to right; an index that is negative or not below the axis size stops
//!   the launch with `Code::IndexOutOfRange` at the load's span, naming the value, the axis and the tensor.
//! - `Dim` is the dim's value under the launch binding; a dim that does not evaluate (an inexact division)
//!   is `Code::InexactDim` at the expression's span, reported only if the expression is evaluated.
//!
//! # Reductions
//!
//! `Reduce` loops over its variables, the first one outermost (lexicographic order), each over `0..extent`.
//! - `sum` accumulates in the body's type, sequentially in that order (`f32` sums in `f32`, integer sums
//!   wrap in 64 bits); an empty sum is 0.
//! - `max`/`min` of `f32` propagate NaN; an empty one is `-inf`/`+inf`. Of integers, an empty one is
//!   `i32::MIN`/`i32::MAX`.
//! - `argmax`/`argmin` (exactly one variable) give the first index of the largest/smallest value; a NaN
//!   counts as both the largest and the smallest (the first NaN wins, as NumPy does); an empty one is 0.
//!
//! # Library nodes
//!
//! - `segment(src, value)`: `src` is a sorted 1-D integer tensor; the result is the largest `e` in
//!   `0..len-1` with `src[e] <= value` (so `src[e] <= value < src[e + 1]`, the last such `e` when groups
//!   are empty), found by bisection. A value below `src[0]` or at or above `src[len-1]` is
//!   `Code::IndexOutOfRange` at the expression's span. (On unsorted data the bisection still returns some
//!   `e` with `src[e] <= value < src[e + 1]`.)
//! - `TopK`: along `axis`, the `k` largest values, largest first, ties to the lower index first, a NaN
//!   counting as larger than everything; `k` larger than the axis is `Code::ArgShape` at the node's span.
//!   `Values` has the source's dtype, `Indices` is `i32`.
//! - `ArgSort`: a stable sort of the indices along `axis` (equal values keep their order in both
//!   directions); NaN counts as the largest value (last ascending, first descending). Indices are `i32`.
//! - `CumSum`: prefix sums along `axis`; a float source accumulates in `f32` (sequentially), an integer
//!   (or bool) source in `i64`; the sum is stored in the node's dtype. `exclusive`: `out[0] = 0` and
//!   `out[i] = src[0] + .. + src[i-1]`.
//! - `BinCount`: the source (an integer tensor of any rank, read in row-major order) is counted into
//!   `0..n`; a value outside is `Code::IndexOutOfRange` at the node's span naming the value and `n`.
//!
//! Graphs are assumed verified, but the interpreter never panics on one that is not: a broken invariant
//! (a type mismatch, a node read before it is computed, a wrong index count, ...) is reported as
//! `Code::Internal`.

use crate::diag::{Code, Diagnostic};
use crate::dim::{Dim, DimError};
use crate::dtype::{DType, ScalarTy};
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ReduceOp, TopKPart, UnOp, ValueId};
use crate::launch::{self, fmt_dims, Args, Binding};
use crate::ops::{self, push, Acc, CumAcc, Val};
use crate::span::Span;
use crate::tensor::{numel, Tensor, TensorData};
use std::borrow::Cow;

/// Resource limits of one launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes all node values together may take (parameters included).
    pub max_bytes: u64,
    /// The most scalar body evaluations a launch may take (output elements times reduction ranges, summed
    /// over the nodes): a launch estimated above it is refused before it starts rather than running for
    /// hours.
    pub max_work: u64,
}

impl Default for Limits {
    /// 8 GiB.
    fn default() -> Limits {
        Limits { max_bytes: 8 << 30, max_work: 10_000_000_000 }
    }
}

/// Runs `graph` on `args` with the default [`Limits`].
pub fn run(graph: &Graph, args: &Args) -> Result<Vec<(String, Tensor)>, Vec<Diagnostic>> {
    run_with(graph, args, &Limits::default())
}

/// Runs `graph` on `args`: one `(name, tensor)` per entry of `graph.results`, in order.
pub fn run_with(graph: &Graph, args: &Args, limits: &Limits) -> Result<Vec<(String, Tensor)>, Vec<Diagnostic>> {
    let binding = launch::bind(graph, args)?;
    let plan = plan(graph, &binding, limits)?;
    let mut values: Vec<Option<Cow<'_, Tensor>>> = Vec::with_capacity(graph.nodes.len());
    for id in 0..graph.nodes.len() {
        let v = eval_node(graph, args, &binding, &plan, &values, id).map_err(|d| vec![*d])?;
        values.push(Some(v));
    }

    // Hand out the results, moving a value out at its last use.
    let mut out = Vec::with_capacity(graph.results.len());
    for (ri, r) in graph.results.iter().enumerate() {
        let vi = r.value.index();
        let Some(slot) = values.get_mut(vi) else {
            return Err(vec![internal(
                graph.span,
                format!("result `{}` names node %{vi}, which does not exist", r.name),
            )]);
        };
        let last_use = !graph.results[ri + 1..].iter().any(|o| o.value == r.value);
        let t = if last_use {
            match slot.take() {
                Some(c) => c.into_owned(),
                None => return Err(vec![internal(graph.span, "a result was taken twice".to_string())]),
            }
        } else {
            match slot.as_ref() {
                Some(c) => Tensor::clone(c),
                None => return Err(vec![internal(graph.span, "a result was taken twice".to_string())]),
            }
        };
        out.push((r.name.clone(), t));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Values.

type Res<T> = Result<T, Box<Diagnostic>>;

fn internal(span: Span, msg: String) -> Diagnostic {
    Diagnostic::error(Code::Internal, span, format!("internal error in the reference interpreter: {msg}"))
}

fn ierr(span: Span, msg: impl Into<String>) -> Box<Diagnostic> {
    Box::new(internal(span, msg.into()))
}

/// The element at flat offset `off`, widened.
fn load(t: &Tensor, off: usize) -> Option<Val> {
    ops::load(&t.data, off)
}

/// An empty buffer of `dtype` with room for `n` elements.
fn alloc(dtype: DType, n: usize) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(Vec::with_capacity(n)),
        DType::BF16 => TensorData::BF16(Vec::with_capacity(n)),
        DType::F16 => TensorData::F16(Vec::with_capacity(n)),
        DType::I32 => TensorData::I32(Vec::with_capacity(n)),
        DType::Bool => TensorData::Bool(Vec::with_capacity(n)),
    }
}

fn node_name(graph: &Graph, id: usize) -> String {
    match graph.nodes.get(id) {
        Some(n) => match (&n.name, &n.kind) {
            (Some(s), _) => s.clone(),
            (None, NodeKind::Param(i)) => match graph.params.get(*i) {
                Some(p) => p.name.clone(),
                None => format!("%{id}"),
            },
            _ => format!("%{id}"),
        },
        None => format!("%{id}"),
    }
}

fn fmt_shape(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

// ---------------------------------------------------------------------------------------------------------
// Planning: concrete shapes and the memory limit.

struct Plan {
    /// Every node's concrete shape.
    shapes: Vec<Vec<usize>>,
    /// For a `Compute` node, the extent of each of its variables (output axes first); empty otherwise.
    extents: Vec<Vec<i64>>,
}

fn plan(graph: &Graph, binding: &Binding, limits: &Limits) -> Result<Plan, Vec<Diagnostic>> {
    let mut errs = Vec::new();
    let mut shapes = Vec::with_capacity(graph.nodes.len());
    let mut extents = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        let shape = match binding.shape(&node.shape) {
            Ok(s) => s,
            Err(e) => {
                errs.push(Diagnostic::error(
                    Code::InexactDim,
                    node.span,
                    format!("the shape [{}] of `{}`: {e}", fmt_dims(&node.shape), node_name(graph, id)),
                ));
                Vec::new()
            }
        };
        let mut ext = Vec::new();
        if let NodeKind::Compute { vars, .. } = &node.kind {
            if vars.len() < node.shape.len() {
                errs.push(internal(
                    node.span,
                    format!(
                        "`{}` has rank {} but {} index variables",
                        node_name(graph, id),
                        node.shape.len(),
                        vars.len()
                    ),
                ));
            }
            for v in vars {
                match binding.eval(&v.extent) {
                    Ok(n) if n >= 0 => ext.push(n),
                    Ok(n) => errs.push(Diagnostic::error(
                        Code::InexactDim,
                        node.span,
                        format!("the range of `{}` is `{}` = {n}, which is negative", v.name, v.extent),
                    )),
                    Err(e) => errs.push(Diagnostic::error(
                        Code::InexactDim,
                        node.span,
                        format!("the range of `{}`: {e}", v.name),
                    )),
                }
            }
            if errs.is_empty() {
                for (ax, (&n, &s)) in ext.iter().zip(shape.iter()).enumerate() {
                    if usize::try_from(n).ok() != Some(s) {
                        errs.push(internal(
                            node.span,
                            format!(
                                "axis {ax} of `{}` has size {s} but its index variable ranges over {n}",
                                node_name(graph, id)
                            ),
                        ));
                    }
                }
            }
        }
        shapes.push(shape);
        extents.push(ext);
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    let mut total: u64 = 0;
    let mut largest: Option<(u64, usize)> = None;
    for (id, (node, shape)) in graph.nodes.iter().zip(shapes.iter()).enumerate() {
        let n = numel(shape).map_or(u64::MAX, |n| n as u64);
        let bytes = n.saturating_mul(node.dtype.size_bytes() as u64);
        total = total.saturating_add(bytes);
        if largest.is_none_or(|(b, _)| bytes > b) {
            largest = Some((bytes, id));
        }
    }
    if total > limits.max_bytes {
        let mut d = Diagnostic::error(
            Code::ResourceLimit,
            graph.span,
            format!(
                "running `{}` needs {total} bytes for its values, more than the limit of {} bytes",
                graph.name, limits.max_bytes
            ),
        );
        if let Some((bytes, id)) = largest {
            if let (Some(node), Some(shape)) = (graph.nodes.get(id), shapes.get(id)) {
                d = d.with_secondary(
                    node.span,
                    format!("the largest value, `{}`: {} {}", node_name(graph, id), node.dtype, fmt_shape(shape)),
                );
                d = d.with_note(format!(
                    "`{}` is {} {} = {bytes} bytes",
                    node_name(graph, id),
                    node.dtype,
                    fmt_shape(shape)
                ));
            }
        }
        return Err(vec![d]);
    }

    // The work: each Compute node evaluates its body once per output element and reduction step.
    let mut work: u64 = 0;
    let mut heaviest: Option<(u64, usize)> = None;
    for (id, (node, (shape, ext))) in graph.nodes.iter().zip(shapes.iter().zip(&extents)).enumerate() {
        if let NodeKind::Compute { .. } = node.kind {
            let elems = numel(shape).map_or(u64::MAX, |n| n as u64);
            let steps = ext.iter().skip(shape.len()).fold(1u64, |a, &n| a.saturating_mul(n.max(1) as u64));
            let w = elems.saturating_mul(steps);
            work = work.saturating_add(w);
            if heaviest.is_none_or(|(b, _)| w > b) {
                heaviest = Some((w, id));
            }
        }
    }
    if work > limits.max_work {
        let mut d = Diagnostic::error(
            Code::ResourceLimit,
            graph.span,
            format!(
                "running `{}` in the interpreter would take about {work} evaluations, more than the limit of {}",
                graph.name, limits.max_work
            ),
        )
        .with_help("the reference interpreter is meant for small sizes: use smaller dims");
        if let Some((w, id)) = heaviest {
            if let Some(node) = graph.nodes.get(id) {
                d = d.with_secondary(node.span, format!("`{}` alone takes about {w}", node_name(graph, id)));
            }
        }
        return Err(vec![d]);
    }

    Ok(Plan { shapes, extents })
}

// ---------------------------------------------------------------------------------------------------------
// Nodes.

fn eval_node<'a>(
    graph: &Graph,
    args: &'a Args,
    binding: &Binding,
    plan: &Plan,
    values: &[Option<Cow<'a, Tensor>>],
    id: usize,
) -> Res<Cow<'a, Tensor>> {
    let node = &graph.nodes[id];
    let shape = &plan.shapes[id];
    let operand = |src: ValueId| -> Res<&Tensor> {
        if src.index() >= id {
            return Err(ierr(
                node.span,
                format!("`{}` reads %{}, which is not computed before it", node_name(graph, id), src.index()),
            ));
        }
        match values.get(src.index()) {
            Some(Some(t)) => Ok(t),
            _ => Err(ierr(node.span, format!("value %{} is missing", src.index()))),
        }
    };
    match &node.kind {
        NodeKind::Param(pi) => {
            let Some(p) = graph.params.get(*pi) else {
                return Err(ierr(node.span, format!("parameter #{pi} does not exist")));
            };
            let Some(t) = args.tensors.get(&p.name) else {
                return Err(Box::new(Diagnostic::error(
                    Code::MissingArg,
                    p.span,
                    format!("parameter `{}` is not given", p.name),
                )));
            };
            if numel(&t.shape) != Some(t.len()) {
                return Err(Box::new(Diagnostic::error(
                    Code::ArgShape,
                    p.span,
                    format!(
                        "the argument `{}` has shape {} but holds {} elements",
                        p.name,
                        fmt_shape(&t.shape),
                        t.len()
                    ),
                )));
            }
            if t.dtype() != node.dtype || &t.shape != shape {
                return Err(ierr(
                    node.span,
                    format!(
                        "the node of parameter `{}` is {} {} but the argument is {} {}",
                        p.name,
                        node.dtype,
                        fmt_shape(shape),
                        t.dtype(),
                        fmt_shape(&t.shape)
                    ),
                ));
            }
            Ok(Cow::Borrowed(t))
        }
        NodeKind::Compute { body, .. } => {
            let ext = &plan.extents[id];
            let rank = shape.len();
            let mut bound = vec![false; ext.len()];
            let mut c = Compiler { graph, binding, shapes: &plan.shapes, id, extents: ext, rank, bound: &mut bound };
            let body = c.compile(body)?;
            let n = numel(shape).unwrap_or(0);
            let mut data = alloc(node.dtype, n);
            let mut ev = Eval { graph, values, vars: vec![0; ext.len()], sorted: Vec::new() };
            if n > 0 {
                'elems: loop {
                    let v = match ev.eval(&body) {
                        Ok(v) => v,
                        Err(mut d) => {
                            if d.code != Code::Internal {
                                let at: Vec<String> = ev.vars[..rank].iter().map(|x| x.to_string()).collect();
                                let at = if rank == 0 { String::new() } else { format!("[{}]", at.join(", ")) };
                                d.notes.push(format!("while computing `{}`{at}", node_name(graph, id)));
                            }
                            return Err(d);
                        }
                    };
                    if !push(&mut data, v) {
                        return Err(ierr(
                            node.span,
                            format!("`{}` is {} but its body gave a {}", node_name(graph, id), node.dtype, v.ty_name()),
                        ));
                    }
                    // Next output element, row-major.
                    let mut k = rank;
                    loop {
                        if k == 0 {
                            break 'elems;
                        }
                        k -= 1;
                        ev.vars[k] += 1;
                        if ev.vars[k] < shape[k] as i64 {
                            break;
                        }
                        ev.vars[k] = 0;
                    }
                }
            }
            Ok(Cow::Owned(Tensor { shape: shape.clone(), data }))
        }
        NodeKind::TopK { src, k, axis, part } => {
            let t = operand(*src)?;
            let (outer, len, inner) = lines(&t.shape, *axis).ok_or_else(|| bad_axis(graph, id, *axis, &t.shape))?;
            let k = match binding.eval(k) {
                Ok(k) => k,
                Err(e) => {
                    return Err(Box::new(Diagnostic::error(
                        Code::InexactDim,
                        node.span,
                        format!("the `k` of topk: {e}"),
                    )))
                }
            };
            let kk = match usize::try_from(k) {
                Ok(kk) if kk <= len => kk,
                _ => {
                    return Err(Box::new(
                        Diagnostic::error(
                            Code::ArgShape,
                            node.span,
                            format!(
                                "topk asks for the {k} largest values along axis {axis} of `{}`, which has size {len}",
                                node_name(graph, src.index())
                            ),
                        )
                        .with_label(format!("k = {k}")),
                    ))
                }
            };
            let mut want = t.shape.clone();
            want[*axis] = kk;
            check_shape(graph, id, shape, &want)?;
            let vals = to_vals(t);
            let mut out = vec![Val::I(0); outer * kk * inner];
            let mut order: Vec<usize> = Vec::with_capacity(len);
            for o in 0..outer {
                for n in 0..inner {
                    let at = |i: usize| vals[(o * len + i) * inner + n];
                    // Stable: equal values keep the lower index first.
                    ops::sort_indices(&mut order, len, at, true);
                    for (j, &i) in order.iter().take(kk).enumerate() {
                        out[(o * kk + j) * inner + n] = match part {
                            TopKPart::Values => at(i),
                            TopKPart::Indices => Val::I(i as i64),
                        };
                    }
                }
            }
            from_vals(graph, id, shape, &out)
        }
        NodeKind::ArgSort { src, axis, descending } => {
            let t = operand(*src)?;
            let (outer, len, inner) = lines(&t.shape, *axis).ok_or_else(|| bad_axis(graph, id, *axis, &t.shape))?;
            check_shape(graph, id, shape, &t.shape)?;
            let vals = to_vals(t);
            let mut out = vec![Val::I(0); vals.len()];
            let mut order: Vec<usize> = Vec::with_capacity(len);
            for o in 0..outer {
                for n in 0..inner {
                    let at = |i: usize| vals[(o * len + i) * inner + n];
                    ops::sort_indices(&mut order, len, at, *descending);
                    for (j, &i) in order.iter().enumerate() {
                        out[(o * len + j) * inner + n] = Val::I(i as i64);
                    }
                }
            }
            from_vals(graph, id, shape, &out)
        }
        NodeKind::CumSum { src, axis, exclusive } => {
            let t = operand(*src)?;
            let (outer, len, inner) = lines(&t.shape, *axis).ok_or_else(|| bad_axis(graph, id, *axis, &t.shape))?;
            check_shape(graph, id, shape, &t.shape)?;
            let vals = to_vals(t);
            let mut out = vec![Val::I(0); vals.len()];
            let float = t.dtype().is_float();
            for o in 0..outer {
                for n in 0..inner {
                    let mut acc = CumAcc::new(float);
                    for i in 0..len {
                        let at = (o * len + i) * inner + n;
                        if *exclusive {
                            out[at] = acc.value();
                        }
                        acc.add(vals[at]);
                        if !*exclusive {
                            out[at] = acc.value();
                        }
                    }
                }
            }
            from_vals(graph, id, shape, &out)
        }
        NodeKind::BinCount { src, n } => {
            let t = operand(*src)?;
            let nv = match binding.eval(n) {
                Ok(v) => v,
                Err(e) => {
                    return Err(Box::new(Diagnostic::error(
                        Code::InexactDim,
                        node.span,
                        format!("the `n` of bincount: {e}"),
                    )))
                }
            };
            let Ok(nu) = usize::try_from(nv) else {
                return Err(Box::new(Diagnostic::error(
                    Code::ArgShape,
                    node.span,
                    format!("bincount into {nv} bins: the number of bins must not be negative"),
                )));
            };
            check_shape(graph, id, shape, &[nu])?;
            let mut counts = vec![0i64; nu];
            for i in 0..t.len() {
                let v = match load(t, i) {
                    Some(Val::I(v)) => v,
                    _ => return Err(ierr(node.span, "bincount of a non-integer tensor")),
                };
                match usize::try_from(v).ok().and_then(|u| counts.get_mut(u)) {
                    Some(c) => *c += 1,
                    None => {
                        return Err(Box::new(
                            Diagnostic::error(
                                Code::IndexOutOfRange,
                                node.span,
                                format!(
                                    "bincount of `{}` meets the value {v}, outside 0..{nv}",
                                    node_name(graph, src.index())
                                ),
                            )
                            .with_label(format!("counts values in 0..{nv}"))
                            .with_note(format!("at flat position {i} of `{}`", node_name(graph, src.index()))),
                        ))
                    }
                }
            }
            let out: Vec<Val> = counts.into_iter().map(Val::I).collect();
            from_vals(graph, id, shape, &out)
        }
    }
}

/// `(outer, len, inner)` of a row-major shape split at `axis`.
fn lines(shape: &[usize], axis: usize) -> Option<(usize, usize, usize)> {
    let len = *shape.get(axis)?;
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    Some((outer, len, inner))
}

fn bad_axis(graph: &Graph, id: usize, axis: usize, shape: &[usize]) -> Box<Diagnostic> {
    let span = graph.nodes.get(id).map_or(graph.span, |n| n.span);
    ierr(span, format!("`{}` works along axis {axis} of a tensor of shape {}", node_name(graph, id), fmt_shape(shape)))
}

fn check_shape(graph: &Graph, id: usize, have: &[usize], want: &[usize]) -> Res<()> {
    if have == want {
        return Ok(());
    }
    let span = graph.nodes.get(id).map_or(graph.span, |n| n.span);
    Err(ierr(
        span,
        format!("`{}` has shape {} but its operation gives {}", node_name(graph, id), fmt_shape(have), fmt_shape(want)),
    ))
}

fn to_vals(t: &Tensor) -> Vec<Val> {
    (0..t.len()).filter_map(|i| load(t, i)).collect()
}

fn from_vals<'a>(graph: &Graph, id: usize, shape: &[usize], vals: &[Val]) -> Res<Cow<'a, Tensor>> {
    let node = &graph.nodes[id];
    let mut data = alloc(node.dtype, vals.len());
    for &v in vals {
        if !push(&mut data, v) {
            return Err(ierr(
                node.span,
                format!("`{}` is {} but its operation gives a {}", node_name(graph, id), node.dtype, v.ty_name()),
            ));
        }
    }
    Ok(Cow::Owned(Tensor { shape: shape.to_vec(), data }))
}

// ---------------------------------------------------------------------------------------------------------
// Expressions: compiled once per node (dims evaluated, strides resolved, invariants checked), then
// evaluated per element.

enum CE {
    Const(Val),
    Var(usize),
    /// A dim that did not evaluate: the error, raised when (and only if) the expression is evaluated.
    Fail(Box<Diagnostic>),
    Load {
        src: usize,
        /// (size, stride) per axis.
        axes: Vec<(usize, usize)>,
        idx: Vec<CE>,
        span: Span,
    },
    Unary(UnOp, Box<CE>, Span),
    Binary(BinOp, Box<CE>, Box<CE>, Span),
    Select(Box<CE>, Box<CE>, Box<CE>, Span),
    Cast(DType, Box<CE>),
    Reduce {
        op: ReduceOp,
        ty: ScalarTy,
        /// (variable, extent), first outermost.
        vars: Vec<(usize, i64)>,
        body: Box<CE>,
        span: Span,
    },
    Segment {
        src: usize,
        value: Box<CE>,
        span: Span,
    },
}

struct Compiler<'g, 'b> {
    graph: &'g Graph,
    binding: &'g Binding,
    shapes: &'g [Vec<usize>],
    id: usize,
    extents: &'g [i64],
    rank: usize,
    /// Variables bound by an enclosing `Reduce`.
    bound: &'b mut Vec<bool>,
}

impl Compiler<'_, '_> {
    fn src(&self, src: ValueId, span: Span) -> Res<usize> {
        let s = src.index();
        if s >= self.id {
            return Err(ierr(
                span,
                format!("`{}` reads %{s}, which is not computed before it", node_name(self.graph, self.id)),
            ));
        }
        Ok(s)
    }

    fn compile(&mut self, e: &Expr) -> Res<CE> {
        let span = e.span;
        Ok(match &e.kind {
            ExprKind::Const(c) => CE::Const(match *c {
                Const::F32(x) => Val::F(x),
                Const::I32(x) => Val::I(x),
                Const::Bool(x) => Val::B(x),
            }),
            ExprKind::Var(v) => {
                if v.index() >= self.extents.len() {
                    return Err(ierr(span, format!("index variable #{} does not exist", v.index())));
                }
                CE::Var(v.index())
            }
            ExprKind::Dim(d) => self.dim(d, span),
            ExprKind::Load { src, idx } => {
                let s = self.src(*src, span)?;
                let shape = &self.shapes[s];
                if shape.len() != idx.len() {
                    return Err(ierr(
                        span,
                        format!(
                            "a load from `{}` (rank {}) has {} indices",
                            node_name(self.graph, s),
                            shape.len(),
                            idx.len()
                        ),
                    ));
                }
                let mut axes = vec![(0usize, 0usize); shape.len()];
                let mut stride = 1usize;
                for (a, &n) in axes.iter_mut().zip(shape.iter()).rev() {
                    *a = (n, stride);
                    stride = stride.saturating_mul(n);
                }
                let idx = idx.iter().map(|i| self.compile(i)).collect::<Res<Vec<_>>>()?;
                CE::Load { src: s, axes, idx, span }
            }
            ExprKind::Unary(op, a) => CE::Unary(*op, Box::new(self.compile(a)?), span),
            ExprKind::Binary(op, a, b) => CE::Binary(*op, Box::new(self.compile(a)?), Box::new(self.compile(b)?), span),
            ExprKind::Select(c, a, b) => {
                CE::Select(Box::new(self.compile(c)?), Box::new(self.compile(a)?), Box::new(self.compile(b)?), span)
            }
            ExprKind::Cast(t, a) => CE::Cast(*t, Box::new(self.compile(a)?)),
            ExprKind::Reduce { op, vars, body } => {
                if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && vars.len() != 1 {
                    return Err(ierr(span, format!("{} over {} variables (needs exactly one)", op.name(), vars.len())));
                }
                let mut vs = Vec::with_capacity(vars.len());
                for v in vars {
                    let i = v.index();
                    if i < self.rank || i >= self.extents.len() {
                        return Err(ierr(span, format!("{} over #{i}, which is not a reduction variable", op.name())));
                    }
                    if self.bound[i] {
                        return Err(ierr(span, format!("{} over #{i}, which is already being reduced", op.name())));
                    }
                    self.bound[i] = true;
                    vs.push((i, self.extents[i]));
                }
                let body = self.compile(body);
                for &(i, _) in &vs {
                    self.bound[i] = false;
                }
                CE::Reduce { op: *op, ty: e.ty, vars: vs, body: Box::new(body?), span }
            }
            ExprKind::Segment { src, value } => {
                let s = self.src(*src, span)?;
                if self.shapes[s].len() != 1 {
                    return Err(ierr(span, format!("segment of `{}`, which is not 1-D", node_name(self.graph, s))));
                }
                CE::Segment { src: s, value: Box::new(self.compile(value)?), span }
            }
        })
    }

    fn dim(&self, d: &Dim, span: Span) -> CE {
        match self.binding.eval(d) {
            Ok(v) => CE::Const(Val::I(v)),
            Err(e @ DimError::Unbound(_)) => CE::Fail(ierr(span, format!("`{d}`: {e}"))),
            Err(e) => CE::Fail(Box::new(Diagnostic::error(Code::InexactDim, span, format!("`{d}`: {e}")))),
        }
    }
}

struct Eval<'v, 'a> {
    graph: &'v Graph,
    values: &'v [Option<Cow<'a, Tensor>>],
    vars: Vec<i64>,
    /// The `segment` offsets found sorted (checked once per node).
    sorted: Vec<usize>,
}

impl Eval<'_, '_> {
    fn tensor(&self, src: usize, span: Span) -> Res<&Tensor> {
        match self.values.get(src) {
            Some(Some(t)) => Ok(t),
            _ => Err(ierr(span, format!("value %{src} is missing"))),
        }
    }

    fn int(&mut self, e: &CE, span: Span) -> Res<i64> {
        match self.eval(e)? {
            Val::I(v) => Ok(v),
            v => Err(ierr(span, format!("expected an i32, found a {}", v.ty_name()))),
        }
    }

    fn eval(&mut self, e: &CE) -> Res<Val> {
        match e {
            CE::Const(v) => Ok(*v),
            CE::Var(i) => Ok(Val::I(self.vars[*i])),
            CE::Fail(d) => Err(d.clone()),
            CE::Load { src, axes, idx, span } => {
                let mut off = 0usize;
                for (k, (e, &(n, stride))) in idx.iter().zip(axes.iter()).enumerate() {
                    let v = self.int(e, *span)?;
                    if v < 0 || v as u64 >= n as u64 {
                        return Err(Box::new(
                            Diagnostic::error(
                                Code::IndexOutOfRange,
                                *span,
                                format!(
                                    "index {v} is out of range for axis {k} of `{}` (size {n})",
                                    node_name(self.graph, *src)
                                ),
                            )
                            .with_label(format!("index {v} out of 0..{n}")),
                        ));
                    }
                    off += v as usize * stride;
                }
                let t = self.tensor(*src, *span)?;
                load(t, off).ok_or_else(|| ierr(*span, format!("a load past the end of %{src}")))
            }
            CE::Unary(op, a, span) => {
                let a = self.eval(a)?;
                ops::unary(*op, a).map_err(|e| Box::new(e.into_diagnostic(*span, internal)))
            }
            CE::Binary(op, a, b, span) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                binary(*op, a, b, *span)
            }
            CE::Select(c, a, b, span) => match self.eval(c)? {
                Val::B(true) => self.eval(a),
                Val::B(false) => self.eval(b),
                v => Err(ierr(*span, format!("a where condition of type {}", v.ty_name()))),
            },
            CE::Cast(to, a) => {
                let a = self.eval(a)?;
                Ok(ops::cast(*to, a))
            }
            CE::Reduce { op, ty, vars, body, span } => self.reduce(*op, *ty, vars, body, *span),
            CE::Segment { src, value, span } => {
                let v = self.int(value, *span)?;
                // From the values, not through `self`: the sorted check below records into `self`.
                let (values, graph) = (self.values, self.graph);
                let t: &Tensor = match values.get(*src) {
                    Some(Some(t)) => t,
                    _ => return Err(ierr(*span, format!("value %{src} is missing"))),
                };
                let at = |i: usize| match load(t, i) {
                    Some(Val::I(x)) => Ok(x),
                    _ => Err(ierr(*span, format!("segment of a non-integer tensor %{src}"))),
                };
                let len = t.len();
                let name = || node_name(graph, *src);
                if len < 2 {
                    return Err(Box::new(Diagnostic::error(
                        Code::IndexOutOfRange,
                        *span,
                        format!("segment of the value {v} in `{}`, which has {len} offsets (no segment)", name()),
                    )));
                }
                let (first, last) = (at(0)?, at(len - 1)?);
                if v < first || v >= last {
                    return Err(Box::new(
                        Diagnostic::error(
                            Code::IndexOutOfRange,
                            *span,
                            format!("segment value {v} is outside the range {first}..{last} of `{}`", name()),
                        )
                        .with_label(format!("{v} is not in {first}..{last}")),
                    ));
                }
                if !self.sorted.contains(src) {
                    for i in 0..len - 1 {
                        let (a, b) = (at(i)?, at(i + 1)?);
                        if a > b {
                            return Err(Box::new(
                                Diagnostic::error(
                                    Code::IndexOutOfRange,
                                    *span,
                                    format!(
                                        "the offsets of `{}` are not sorted: element {i} is {a}, element {} is {b}",
                                        name(),
                                        i + 1
                                    ),
                                )
                                .with_label("segment needs sorted offsets"),
                            ));
                        }
                    }
                    self.sorted.push(*src);
                }
                // Invariant: src[lo] <= v < src[hi].
                let (mut lo, mut hi) = (0usize, len - 1);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if at(mid)? <= v {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                Ok(Val::I(lo as i64))
            }
        }
    }

    fn reduce(&mut self, op: ReduceOp, ty: ScalarTy, vars: &[(usize, i64)], body: &CE, span: Span) -> Res<Val> {
        let mut acc = Acc::new(op, ty).map_err(|e| Box::new(e.into_diagnostic(span, internal)))?;
        let empty = vars.iter().any(|&(_, n)| n <= 0);
        if !empty {
            for &(v, _) in vars {
                self.vars[v] = 0;
            }
            'iter: loop {
                let x = self.eval(body)?;
                let i = vars.first().map_or(0, |&(v, _)| self.vars[v]);
                acc = acc.add(op, ty, i, x).map_err(|e| Box::new(e.into_diagnostic(span, internal)))?;
                // Next point, the last variable innermost.
                let mut k = vars.len();
                loop {
                    if k == 0 {
                        break 'iter;
                    }
                    k -= 1;
                    let (v, n) = vars[k];
                    self.vars[v] += 1;
                    if self.vars[v] < n {
                        break;
                    }
                    self.vars[v] = 0;
                }
            }
        }
        Ok(acc.finish())
    }
}

fn binary(op: BinOp, a: Val, b: Val, span: Span) -> Res<Val> {
    ops::binary(op, a, b).map_err(|e| Box::new(e.into_diagnostic(span, internal)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{CmpOp, Constraint, IndexVar, Node, OutputDecl, Param, ParamKind, Result_, TopKPart, VarId};
    use crate::span::FileId;
    use std::collections::BTreeMap;

    // ----- helpers -----

    fn sp(a: usize, b: usize) -> Span {
        Span::new(FileId(0), a, b)
    }

    fn d(n: i64) -> Dim {
        Dim::constant(n)
    }

    fn s(x: &str) -> Dim {
        Dim::sym(x)
    }

    fn cf(x: f32) -> Expr {
        Expr::constant(Const::F32(x), sp(0, 0))
    }

    fn ci(x: i64) -> Expr {
        Expr::constant(Const::I32(x), sp(0, 0))
    }

    fn var(i: u32) -> Expr {
        Expr::new(ExprKind::Var(VarId(i)), ScalarTy::I32, sp(0, 0))
    }

    fn dimx(x: Dim) -> Expr {
        Expr::new(ExprKind::Dim(x), ScalarTy::I32, sp(0, 0))
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(ScalarTy::F32);
        Expr::new(ExprKind::Binary(op, Box::new(a), Box::new(b)), ty, sp(0, 0))
    }

    fn bin_at(op: BinOp, a: Expr, b: Expr, span: Span) -> Expr {
        let mut e = bin(op, a, b);
        e.span = span;
        e
    }

    fn un(op: UnOp, a: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(ScalarTy::F32);
        Expr::new(ExprKind::Unary(op, Box::new(a)), ty, sp(0, 0))
    }

    fn sel(c: Expr, a: Expr, b: Expr) -> Expr {
        let ty = a.ty;
        Expr::new(ExprKind::Select(Box::new(c), Box::new(a), Box::new(b)), ty, sp(0, 0))
    }

    fn cast(t: DType, a: Expr) -> Expr {
        Expr::new(ExprKind::Cast(t, Box::new(a)), t.compute(), sp(0, 0))
    }

    fn red(op: ReduceOp, vars: &[u32], body: Expr) -> Expr {
        let ty = op.check(body.ty).unwrap_or(ScalarTy::F32);
        let vars = vars.iter().map(|&v| VarId(v)).collect();
        Expr::new(ExprKind::Reduce { op, vars, body: Box::new(body) }, ty, sp(0, 0))
    }

    /// A small graph builder.
    struct B {
        g: Graph,
    }

    impl B {
        fn new() -> B {
            B {
                g: Graph {
                    name: "k".into(),
                    doc: None,
                    span: sp(0, 1),
                    params: vec![],
                    outputs: vec![],
                    dims: vec![],
                    fixed: vec![],
                    constraints: vec![],
                    asserts: vec![],
                    nodes: vec![],
                    results: vec![],
                    hints: Vec::new(),
                },
            }
        }

        fn add_dims(&mut self, shape: &[Dim]) {
            for x in shape {
                for sym in x.symbols() {
                    if !self.g.dims.contains(&sym) {
                        self.g.dims.push(sym);
                    }
                }
            }
        }

        fn node(&mut self, name: &str, dtype: DType, shape: Vec<Dim>, kind: NodeKind) -> ValueId {
            self.g.nodes.push(Node { name: Some(name.into()), dtype, shape, kind, span: sp(10, 20) });
            ValueId(self.g.nodes.len() as u32 - 1)
        }

        fn param(&mut self, name: &str, dtype: DType, shape: Vec<Dim>) -> ValueId {
            self.add_dims(&shape);
            let i = self.g.params.len();
            self.g.params.push(Param {
                name: name.into(),
                kind: ParamKind::Tensor { dtype, shape: shape.clone(), inout: false },
                span: sp(1, 2),
            });
            self.node(name, dtype, shape, NodeKind::Param(i))
        }

        fn dim_param(&mut self, name: &str) {
            self.g.params.push(Param { name: name.into(), kind: ParamKind::Dim, span: sp(1, 2) });
            if !self.g.dims.iter().any(|x| x == name) {
                self.g.dims.push(name.into());
            }
        }

        /// `name[v0..] = body`, with the output axes' extents taken from `shape` and then reduction vars.
        fn compute(&mut self, name: &str, dtype: DType, shape: Vec<Dim>, red: &[Dim], body: Expr) -> ValueId {
            let mut vars: Vec<IndexVar> =
                shape.iter().enumerate().map(|(i, x)| IndexVar { name: format!("o{i}"), extent: x.clone() }).collect();
            vars.extend(red.iter().enumerate().map(|(i, x)| IndexVar { name: format!("r{i}"), extent: x.clone() }));
            self.node(name, dtype, shape, NodeKind::Compute { vars, body })
        }

        fn output(&mut self, name: &str, v: ValueId) {
            let n = self.g.node(v).clone();
            self.g.outputs.push(OutputDecl { name: name.into(), dtype: n.dtype, shape: n.shape, span: sp(3, 4) });
            self.g.results.push(Result_ { name: name.into(), value: v, inout: None });
        }

        fn load(&self, v: ValueId, idx: Vec<Expr>) -> Expr {
            let ty = self.g.node(v).dtype.compute();
            Expr::new(ExprKind::Load { src: v, idx }, ty, sp(5, 6))
        }
    }

    fn args(tensors: Vec<(&str, Tensor)>, dims: Vec<(&str, i64)>) -> Args {
        Args {
            tensors: tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<BTreeMap<_, _>>(),
            dims: dims.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
        }
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        match &t.data {
            TensorData::F32(v) => v.clone(),
            other => panic!("not f32: {other:?}"),
        }
    }

    fn i32s(t: &Tensor) -> Vec<i32> {
        match &t.data {
            TensorData::I32(v) => v.clone(),
            other => panic!("not i32: {other:?}"),
        }
    }

    fn ft(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape, v).unwrap()
    }

    fn it(shape: Vec<usize>, v: Vec<i32>) -> Tensor {
        Tensor::from_i32(shape, v).unwrap()
    }

    fn run1(g: &Graph, a: &Args) -> Tensor {
        let mut r = run(g, a).unwrap_or_else(|e| panic!("run failed: {e:?}"));
        assert_eq!(r.len(), 1);
        r.remove(0).1
    }

    fn err1(g: &Graph, a: &Args) -> Diagnostic {
        match run(g, a) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(mut e) => {
                assert_eq!(e.len(), 1, "{e:?}");
                e.remove(0)
            }
        }
    }

    /// A graph `out[i] = f(x[i])` over a 1-D f32 input of size N.
    fn map1(dtype_in: DType, dtype_out: DType, f: impl FnOnce(Expr) -> Expr) -> Graph {
        let mut b = B::new();
        let x = b.param("x", dtype_in, vec![s("N")]);
        let body = f(b.load(x, vec![var(0)]));
        let o = b.compute("out", dtype_out, vec![s("N")], &[], body);
        b.output("out", o);
        b.g
    }

    // ----- elementwise -----

    #[test]
    fn elementwise_broadcast_by_index() {
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("M"), s("N")]);
        let y = b.param("y", DType::F32, vec![s("N")]);
        let body = bin(BinOp::Add, b.load(x, vec![var(0), var(1)]), b.load(y, vec![var(1)]));
        let o = b.compute("out", DType::F32, vec![s("M"), s("N")], &[], body);
        b.output("out", o);
        let a = args(
            vec![("x", ft(vec![2, 3], vec![1., 2., 3., 4., 5., 6.])), ("y", ft(vec![3], vec![10., 20., 30.]))],
            vec![],
        );
        let before = a.clone();
        let out = run1(&b.g, &a);
        assert_eq!(out.shape, vec![2, 3]);
        assert_eq!(f32s(&out), vec![11., 22., 33., 14., 25., 36.]);
        assert_eq!(a, before);
    }

    #[test]
    fn unary_ops() {
        let xs = vec![-2.0f32, -0.5, 0.0, 0.5, 3.0, 100.0, -100.0];
        let n = xs.len();
        let check = |op: UnOp, f: &dyn Fn(f64) -> f64| {
            let g = map1(DType::F32, DType::F32, |x| un(op, x));
            let out = f32s(&run1(&g, &args(vec![("x", ft(vec![n], xs.clone()))], vec![])));
            for (x, y) in xs.iter().zip(out) {
                let want = f(f64::from(*x)) as f32;
                assert!(
                    (y.is_nan() && want.is_nan()) || y == want || (y - want).abs() <= 1e-6 * want.abs() + 1e-40,
                    "{}({x}) = {y}, want {want}",
                    op.name()
                );
            }
        };
        check(UnOp::Exp, &|x| x.exp());
        check(UnOp::Sigmoid, &|x| 1.0 / (1.0 + (-x).exp()));
        check(UnOp::Silu, &|x| x / (1.0 + (-x).exp()));
        check(UnOp::Gelu, &|x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())));
        check(UnOp::Softplus, &|x| if x > 30.0 { x } else { x.exp().ln_1p() });
        check(UnOp::Relu, &|x| x.max(0.0));
        check(UnOp::Tanh, &|x| x.tanh());
        check(UnOp::Abs, &|x| x.abs());
        check(UnOp::Floor, &|x| x.floor());
        check(UnOp::Ceil, &|x| x.ceil());
        check(UnOp::Neg, &|x| -x);
        check(UnOp::Sqrt, &|x| x.sqrt());
        check(UnOp::Rsqrt, &|x| 1.0 / x.sqrt());
        check(UnOp::Log, &|x| x.ln());
        // Softplus of a large value does not overflow.
        let g = map1(DType::F32, DType::F32, |x| un(UnOp::Softplus, x));
        let out = f32s(&run1(&g, &args(vec![("x", ft(vec![2], vec![1000.0, -1000.0]))], vec![])));
        assert_eq!(out, vec![1000.0, 0.0]);
    }

    #[test]
    fn min_max_propagate_nan_and_pow() {
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let y = b.param("y", DType::F32, vec![s("N")]);
        let mk = |b: &mut B, name: &str, op: BinOp| {
            let body = bin(op, b.load(x, vec![var(0)]), b.load(y, vec![var(0)]));
            let o = b.compute(name, DType::F32, vec![s("N")], &[], body);
            b.output(name, o);
        };
        mk(&mut b, "mn", BinOp::Min);
        mk(&mut b, "mx", BinOp::Max);
        mk(&mut b, "pw", BinOp::Pow);
        let a = args(
            vec![("x", ft(vec![3], vec![1.0, f32::NAN, 2.0])), ("y", ft(vec![3], vec![2.0, 1.0, f32::NAN]))],
            vec![],
        );
        let r = run(&b.g, &a).unwrap();
        let mn = f32s(&r[0].1);
        let mx = f32s(&r[1].1);
        let pw = f32s(&r[2].1);
        assert_eq!(mn[0], 1.0);
        assert_eq!(mx[0], 2.0);
        assert!(mn[1].is_nan() && mn[2].is_nan() && mx[1].is_nan() && mx[2].is_nan());
        assert_eq!(pw[0], 1.0);
    }

    // ----- storage rounding -----

    /// Round-to-nearest-even f32 -> bf16, at the bit level, for finite values.
    fn ref_bf16_bits(x: f32) -> u16 {
        let bits = x.to_bits();
        ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
    }

    fn bf16_store_matches(xs: &[f32]) {
        let g = map1(DType::F32, DType::BF16, |x| x);
        let out = run1(&g, &args(vec![("x", ft(vec![xs.len()], xs.to_vec()))], vec![]));
        let TensorData::BF16(v) = &out.data else { panic!("not bf16") };
        for (x, y) in xs.iter().zip(v) {
            if x.is_nan() {
                assert!(y.is_nan(), "{x} -> {y}");
            } else {
                assert_eq!(y.to_bits(), ref_bf16_bits(*x), "{x:e} ({:#010x})", x.to_bits());
            }
        }
    }

    #[test]
    fn bf16_rounding_on_store() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::from_bits(0x007F_FFFF),
            // Ties: exactly halfway, with an even and an odd bf16 below.
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0xBF80_8000),
            f32::from_bits(0xBF81_8000),
            // Subnormal ties.
            f32::from_bits(0x0000_8000),
            f32::from_bits(0x0001_8000),
            // Just above and below a tie.
            f32::from_bits(0x3F80_8001),
            f32::from_bits(0x3F80_7FFF),
            // Rounds up to infinity.
            f32::from_bits(0x7F7F_FFFF),
        ];
        // Seeded xorshift: random bit patterns, and random ties.
        let mut st: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st as u32
        };
        for _ in 0..20_000 {
            let bits = next();
            xs.push(f32::from_bits(bits));
            xs.push(f32::from_bits((bits & 0xFFFF_0000) | 0x8000));
            xs.push(f32::from_bits(bits & 0x807F_FFFF)); // subnormal
        }
        bf16_store_matches(&xs);
    }

    proptest::proptest! {
        #[test]
        fn bf16_rounding_proptest(bits in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..64)) {
            let xs: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            bf16_store_matches(&xs);
        }
    }

    #[test]
    fn f16_store_and_casts() {
        let g = map1(DType::F32, DType::F16, |x| x);
        let out = run1(&g, &args(vec![("x", ft(vec![3], vec![1.0, 65520.0, 1.0 + 1.0 / 2048.0]))], vec![]));
        assert_eq!(out.to_f64_vec(), vec![1.0, f64::INFINITY, 1.0]);
        // bf16(x) cast rounds in the expression but stays f32.
        let g = map1(DType::F32, DType::F32, |x| cast(DType::BF16, x));
        let out = f32s(&run1(&g, &args(vec![("x", ft(vec![1], vec![f32::from_bits(0x3F81_8000)]))], vec![])));
        assert_eq!(out[0].to_bits(), 0x3F82_0000);
        // f32 -> i32 truncates toward zero, saturates, NaN -> 0.
        let g = map1(DType::F32, DType::I32, |x| cast(DType::I32, x));
        let xs = vec![2.7, -2.7, 1e20, -1e20, f32::NAN];
        let out = i32s(&run1(&g, &args(vec![("x", ft(vec![5], xs))], vec![])));
        assert_eq!(out, vec![2, -2, i32::MAX, i32::MIN, 0]);
        // to bool is != 0; bool to f32 is 0/1.
        let g = map1(DType::F32, DType::F32, |x| cast(DType::F32, cast(DType::Bool, x)));
        let out = f32s(&run1(&g, &args(vec![("x", ft(vec![3], vec![0.0, -0.0, 0.25]))], vec![])));
        assert_eq!(out, vec![0.0, 0.0, 1.0]);
    }

    #[test]
    fn i32_store_wraps() {
        let g = map1(DType::I32, DType::I32, |x| bin(BinOp::Mul, x, ci(1 << 16)));
        let out = i32s(&run1(&g, &args(vec![("x", it(vec![2], vec![1 << 16, 3]))], vec![])));
        assert_eq!(out, vec![0, 3 << 16]);
    }

    // ----- reductions -----

    fn reduce_graph(op: ReduceOp, dtype: DType, out_dtype: DType) -> Graph {
        let mut b = B::new();
        let x = b.param("x", dtype, vec![s("M"), s("N")]);
        let body = red(op, &[1], b.load(x, vec![var(0), var(1)]));
        let o = b.compute("out", out_dtype, vec![s("M")], &[s("N")], body);
        b.output("out", o);
        b.g
    }

    #[test]
    fn reductions() {
        let x = ft(vec![2, 4], vec![1.0, 5.0, 5.0, -1.0, -3.0, f32::NAN, 2.0, f32::NAN]);
        let a = args(vec![("x", x)], vec![]);
        let sum = f32s(&run1(&reduce_graph(ReduceOp::Sum, DType::F32, DType::F32), &a));
        assert_eq!(sum[0], 10.0);
        assert!(sum[1].is_nan());
        let mx = f32s(&run1(&reduce_graph(ReduceOp::Max, DType::F32, DType::F32), &a));
        assert_eq!(mx[0], 5.0);
        assert!(mx[1].is_nan());
        let mn = f32s(&run1(&reduce_graph(ReduceOp::Min, DType::F32, DType::F32), &a));
        assert_eq!(mn[0], -1.0);
        let am = i32s(&run1(&reduce_graph(ReduceOp::ArgMax, DType::F32, DType::I32), &a));
        assert_eq!(am, vec![1, 1]); // first max; first NaN
        let an = i32s(&run1(&reduce_graph(ReduceOp::ArgMin, DType::F32, DType::I32), &a));
        assert_eq!(an, vec![3, 1]);

        // Integers.
        let a = args(vec![("x", it(vec![1, 3], vec![4, -9, 4]))], vec![]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::Sum, DType::I32, DType::I32), &a)), vec![-1]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::Max, DType::I32, DType::I32), &a)), vec![4]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::ArgMax, DType::I32, DType::I32), &a)), vec![0]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::ArgMin, DType::I32, DType::I32), &a)), vec![1]);

        // Empty ranges.
        let a = args(vec![("x", ft(vec![2, 0], vec![]))], vec![]);
        assert_eq!(f32s(&run1(&reduce_graph(ReduceOp::Sum, DType::F32, DType::F32), &a)), vec![0.0, 0.0]);
        assert_eq!(f32s(&run1(&reduce_graph(ReduceOp::Max, DType::F32, DType::F32), &a)), vec![f32::NEG_INFINITY; 2]);
        assert_eq!(f32s(&run1(&reduce_graph(ReduceOp::Min, DType::F32, DType::F32), &a)), vec![f32::INFINITY; 2]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::ArgMax, DType::F32, DType::I32), &a)), vec![0, 0]);
        let a = args(vec![("x", it(vec![1, 0], vec![]))], vec![]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::Max, DType::I32, DType::I32), &a)), vec![i32::MIN]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::Min, DType::I32, DType::I32), &a)), vec![i32::MAX]);
        assert_eq!(i32s(&run1(&reduce_graph(ReduceOp::Sum, DType::I32, DType::I32), &a)), vec![0]);
    }

    #[test]
    fn multi_var_reduce_order() {
        // out = sum[r, c](x[r, c] * 10^(...)): check the lexicographic order through an order-sensitive f32
        // sum: 1e8 + 1 - 1e8 in order gives 0, in another order could give 1.
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![d(2), d(2)]);
        let body = red(ReduceOp::Sum, &[0, 1], b.load(x, vec![var(0), var(1)]));
        let o = b.compute("out", DType::F32, vec![], &[d(2), d(2)], body);
        b.output("out", o);
        let a = args(vec![("x", ft(vec![2, 2], vec![1e8, 1.0, -1e8, 1.0]))], vec![]);
        // ((1e8 + 1) - 1e8) + 1 = 0 + 1 = 1 in f32 row-major order.
        assert_eq!(f32s(&run1(&b.g, &a)), vec![1.0]);
    }

    // ----- integer division -----

    #[test]
    fn floor_div_mod_ints_and_floats() {
        let mut b = B::new();
        let x = b.param("x", DType::I32, vec![s("N")]);
        let y = b.param("y", DType::I32, vec![s("N")]);
        let q = bin(BinOp::Div, b.load(x, vec![var(0)]), b.load(y, vec![var(0)]));
        let q = b.compute("q", DType::I32, vec![s("N")], &[], q);
        let r = bin(BinOp::Mod, b.load(x, vec![var(0)]), b.load(y, vec![var(0)]));
        let r = b.compute("r", DType::I32, vec![s("N")], &[], r);
        b.output("q", q);
        b.output("r", r);
        let xs = vec![-7, 7, -7, 7, -6, 0];
        let ys = vec![2, -2, -2, 2, 3, -5];
        let a = args(vec![("x", it(vec![6], xs)), ("y", it(vec![6], ys))], vec![]);
        let out = run(&b.g, &a).unwrap();
        assert_eq!(i32s(&out[0].1), vec![-4, -4, 3, 3, -2, 0]);
        assert_eq!(i32s(&out[1].1), vec![1, -1, -1, 1, 0, 0]);
        assert_eq!(ops::floor_div(i64::MIN, -1), i64::MIN);
        assert_eq!(ops::floor_mod(i64::MIN, -1), 0);

        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let y = b.param("y", DType::F32, vec![s("N")]);
        let r = bin(BinOp::Mod, b.load(x, vec![var(0)]), b.load(y, vec![var(0)]));
        let r = b.compute("r", DType::F32, vec![s("N")], &[], r);
        b.output("r", r);
        let a = args(vec![("x", ft(vec![3], vec![-7.5, 7.5, 1.0])), ("y", ft(vec![3], vec![2.0, -2.0, 0.0]))], vec![]);
        let out = f32s(&run1(&b.g, &a));
        assert_eq!(out[..2], [0.5, -0.5]);
        assert!(out[2].is_nan());
    }

    #[test]
    fn div_by_zero_error() {
        let mut b = B::new();
        let x = b.param("x", DType::I32, vec![s("N")]);
        let body = bin_at(BinOp::Div, ci(10), b.load(x, vec![var(0)]), sp(40, 45));
        let o = b.compute("out", DType::I32, vec![s("N")], &[], body);
        b.output("out", o);
        let e = err1(&b.g, &args(vec![("x", it(vec![3], vec![1, 0, 2]))], vec![]));
        assert_eq!(e.code, Code::DivByZero);
        assert_eq!(e.primary.span, sp(40, 45));
        assert!(e.message.contains("integer division by zero"), "{}", e.message);
        assert!(e.notes.iter().any(|n| n.contains("`out`[1]")), "{:?}", e.notes);
        // Modulo too.
        let mut b = B::new();
        let x = b.param("x", DType::I32, vec![s("N")]);
        let body = bin_at(BinOp::Mod, ci(10), b.load(x, vec![var(0)]), sp(50, 55));
        let o = b.compute("out", DType::I32, vec![s("N")], &[], body);
        b.output("out", o);
        let e = err1(&b.g, &args(vec![("x", it(vec![1], vec![0]))], vec![]));
        assert_eq!((e.code, e.primary.span), (Code::DivByZero, sp(50, 55)));
    }

    // ----- loads -----

    #[test]
    fn out_of_range_load() {
        // out[i] = x[idx[i]]: a gather.
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let idx = b.param("idx", DType::I32, vec![s("M")]);
        let mut ld = b.load(x, vec![b.load(idx, vec![var(0)])]);
        ld.span = sp(30, 38);
        let o = b.compute("out", DType::F32, vec![s("M")], &[], ld);
        b.output("out", o);
        let x5 = ft(vec![5], vec![0., 1., 2., 3., 4.]);
        let ok = run1(&b.g, &args(vec![("x", x5.clone()), ("idx", it(vec![2], vec![4, 0]))], vec![]));
        assert_eq!(f32s(&ok), vec![4.0, 0.0]);
        let e = err1(&b.g, &args(vec![("x", x5.clone()), ("idx", it(vec![3], vec![4, -1, 9]))], vec![]));
        assert_eq!(e.code, Code::IndexOutOfRange);
        assert_eq!(e.primary.span, sp(30, 38));
        assert_eq!(e.message, "index -1 is out of range for axis 0 of `x` (size 5)");
        let e = err1(&b.g, &args(vec![("x", x5), ("idx", it(vec![1], vec![5]))], vec![]));
        assert_eq!(e.message, "index 5 is out of range for axis 0 of `x` (size 5)");
    }

    #[test]
    fn masked_select_does_not_fault() {
        // out[i] = where(i >= 1, x[i - 1], 0.0) + where(i + 1 < N, x[i + 1], 0.0)
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let left = sel(bin(BinOp::Ge, var(0), ci(1)), b.load(x, vec![bin(BinOp::Sub, var(0), ci(1))]), cf(0.0));
        let right = sel(
            bin(BinOp::Lt, bin(BinOp::Add, var(0), ci(1)), dimx(s("N"))),
            b.load(x, vec![bin(BinOp::Add, var(0), ci(1))]),
            cf(0.0),
        );
        let o = b.compute("out", DType::F32, vec![s("N")], &[], bin(BinOp::Add, left, right));
        b.output("out", o);
        let out = run1(&b.g, &args(vec![("x", ft(vec![4], vec![1., 2., 3., 4.]))], vec![]));
        assert_eq!(f32s(&out), vec![2., 4., 6., 3.]);
    }

    // ----- segment -----

    fn segment_graph() -> Graph {
        // e[r in 0..R] = segment(offsets, r + 1)
        let mut b = B::new();
        let off = b.param("offsets", DType::I32, vec![s("E")]);
        b.dim_param("R");
        let seg = Expr::new(
            ExprKind::Segment { src: off, value: Box::new(bin(BinOp::Add, var(0), ci(1))) },
            ScalarTy::I32,
            sp(60, 70),
        );
        let o = b.compute("e", DType::I32, vec![s("R")], &[], seg);
        b.output("e", o);
        b.g
    }

    #[test]
    fn segment() {
        let g = segment_graph();
        // Groups: [1, 3) -> 0, [3, 3) -> 1 (empty), [3, 6) -> 2; values 1..=5.
        let off = it(vec![4], vec![1, 3, 3, 6]);
        let out = run1(&g, &args(vec![("offsets", off.clone())], vec![("R", 5)]));
        assert_eq!(i32s(&out), vec![0, 0, 2, 2, 2]);
        // Several empty groups in a row, and at the start.
        let off2 = it(vec![6], vec![1, 1, 1, 2, 2, 4]);
        let out = run1(&g, &args(vec![("offsets", off2)], vec![("R", 3)]));
        assert_eq!(i32s(&out), vec![2, 4, 4]);
        // The value 6 is at the end of the last group: out of range.
        let e = err1(&g, &args(vec![("offsets", off)], vec![("R", 6)]));
        assert_eq!((e.code, e.primary.span), (Code::IndexOutOfRange, sp(60, 70)));
        assert!(e.message.contains("segment value 6") && e.message.contains("1..6"), "{}", e.message);
        // Below the first offset.
        let e = err1(&g, &args(vec![("offsets", it(vec![2], vec![2, 9]))], vec![("R", 1)]));
        assert!(e.message.contains("segment value 1"), "{}", e.message);
        // Too few offsets.
        let e = err1(&g, &args(vec![("offsets", it(vec![1], vec![0]))], vec![("R", 1)]));
        assert_eq!(e.code, Code::IndexOutOfRange);
        // Unsorted offsets stop the kernel, naming the first unsorted pair.
        let e = err1(&g, &args(vec![("offsets", it(vec![5], vec![0, 9, 1, 2, 10]))], vec![("R", 8)]));
        assert_eq!((e.code, e.primary.span), (Code::IndexOutOfRange, sp(60, 70)));
        assert!(e.message.contains("not sorted") && e.message.contains("element 1 is 9"), "{}", e.message);
    }

    // ----- library nodes -----

    fn lib_graph(dtype: DType, shape: Vec<Dim>, out_dtype: DType, out_shape: Vec<Dim>, kind: NodeKind) -> Graph {
        let mut b = B::new();
        b.param("x", dtype, shape);
        let o = b.node("out", out_dtype, out_shape, kind);
        b.output("out", o);
        b.g
    }

    #[test]
    fn topk_ties_and_nan() {
        let x = ft(vec![2, 5], vec![1.0, 3.0, 3.0, 2.0, 0.0, 1.0, f32::NAN, 7.0, 7.0, 1.0]);
        let a = args(vec![("x", x)], vec![]);
        let mk = |part, dt| {
            lib_graph(
                DType::F32,
                vec![d(2), d(5)],
                dt,
                vec![d(2), d(3)],
                NodeKind::TopK { src: ValueId(0), k: d(3), axis: 1, part },
            )
        };
        let idx = i32s(&run1(&mk(TopKPart::Indices, DType::I32), &a));
        assert_eq!(idx, vec![1, 2, 3, 1, 2, 3]);
        let vals = f32s(&run1(&mk(TopKPart::Values, DType::F32), &a));
        assert_eq!(vals[..3], [3.0, 3.0, 2.0]);
        assert!(vals[3].is_nan());
        assert_eq!(vals[4..], [7.0, 7.0]);
        // Along axis 0.
        let g = lib_graph(
            DType::I32,
            vec![d(3), d(2)],
            DType::I32,
            vec![d(2), d(2)],
            NodeKind::TopK { src: ValueId(0), k: d(2), axis: 0, part: TopKPart::Indices },
        );
        let out = i32s(&run1(&g, &args(vec![("x", it(vec![3, 2], vec![5, 1, 5, 2, 6, 2]))], vec![])));
        assert_eq!(out, vec![2, 1, 0, 2]);
        // k larger than the axis.
        let g = lib_graph(
            DType::F32,
            vec![s("N")],
            DType::F32,
            vec![d(4)],
            NodeKind::TopK { src: ValueId(0), k: d(4), axis: 0, part: TopKPart::Values },
        );
        let e = err1(&g, &args(vec![("x", ft(vec![3], vec![1., 2., 3.]))], vec![]));
        assert_eq!((e.code, e.primary.span), (Code::ArgShape, sp(10, 20)));
    }

    #[test]
    fn argsort_stable() {
        let x = ft(vec![7], vec![2.0, 1.0, 2.0, f32::NAN, 1.0, 0.5, 2.0]);
        let a = args(vec![("x", x)], vec![]);
        let mk = |descending| {
            lib_graph(
                DType::F32,
                vec![s("N")],
                DType::I32,
                vec![s("N")],
                NodeKind::ArgSort { src: ValueId(0), axis: 0, descending },
            )
        };
        assert_eq!(i32s(&run1(&mk(false), &a)), vec![5, 1, 4, 0, 2, 6, 3]);
        assert_eq!(i32s(&run1(&mk(true), &a)), vec![3, 0, 2, 6, 1, 4, 5]);
        // 2-D along the last axis, integers.
        let g = lib_graph(
            DType::I32,
            vec![s("M"), s("N")],
            DType::I32,
            vec![s("M"), s("N")],
            NodeKind::ArgSort { src: ValueId(0), axis: 1, descending: false },
        );
        let out = i32s(&run1(&g, &args(vec![("x", it(vec![2, 3], vec![3, 3, 1, 0, -1, 0]))], vec![])));
        assert_eq!(out, vec![2, 0, 1, 1, 0, 2]);
    }

    #[test]
    fn cumsum() {
        let x = ft(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let a = args(vec![("x", x)], vec![]);
        let mk = |axis, exclusive| {
            lib_graph(
                DType::F32,
                vec![d(2), d(3)],
                DType::F32,
                vec![d(2), d(3)],
                NodeKind::CumSum { src: ValueId(0), axis, exclusive },
            )
        };
        assert_eq!(f32s(&run1(&mk(1, false), &a)), vec![1., 3., 6., 4., 9., 15.]);
        assert_eq!(f32s(&run1(&mk(1, true), &a)), vec![0., 1., 3., 0., 4., 9.]);
        assert_eq!(f32s(&run1(&mk(0, false), &a)), vec![1., 2., 3., 5., 7., 9.]);
        assert_eq!(f32s(&run1(&mk(0, true), &a)), vec![0., 0., 0., 1., 2., 3.]);
        // Integers.
        let g = lib_graph(
            DType::I32,
            vec![s("N")],
            DType::I32,
            vec![s("N")],
            NodeKind::CumSum { src: ValueId(0), axis: 0, exclusive: true },
        );
        let out = i32s(&run1(&g, &args(vec![("x", it(vec![4], vec![3, -1, 4, 1]))], vec![])));
        assert_eq!(out, vec![0, 3, 2, 6]);
        // bf16 output rounds.
        let g = lib_graph(
            DType::F32,
            vec![s("N")],
            DType::BF16,
            vec![s("N")],
            NodeKind::CumSum { src: ValueId(0), axis: 0, exclusive: false },
        );
        let out = run1(&g, &args(vec![("x", ft(vec![2], vec![256.0, 1.0]))], vec![]));
        assert_eq!(out.to_f64_vec(), vec![256.0, 256.0]);
    }

    #[test]
    fn bincount() {
        let mut b = B::new();
        b.param("x", DType::I32, vec![s("T")]);
        b.dim_param("E");
        let o = b.node("out", DType::I32, vec![s("E")], NodeKind::BinCount { src: ValueId(0), n: s("E") });
        b.output("out", o);
        let out = run1(&b.g, &args(vec![("x", it(vec![6], vec![1, 3, 1, 0, 1, 3]))], vec![("E", 5)]));
        assert_eq!(i32s(&out), vec![1, 3, 0, 2, 0]);
        let e = err1(&b.g, &args(vec![("x", it(vec![3], vec![1, 5, 0]))], vec![("E", 5)]));
        assert_eq!((e.code, e.primary.span), (Code::IndexOutOfRange, sp(10, 20)));
        assert!(e.message.contains("value 5") && e.message.contains("0..5"), "{}", e.message);
        let e = err1(&b.g, &args(vec![("x", it(vec![1], vec![-2]))], vec![("E", 5)]));
        assert!(e.message.contains("value -2"), "{}", e.message);
        // Empty input, zero bins.
        let out = run1(&b.g, &args(vec![("x", it(vec![0], vec![]))], vec![("E", 0)]));
        assert_eq!(out.shape, vec![0]);
    }

    // ----- launch errors and limits -----

    #[test]
    fn constraint_error_from_bind() {
        let mut g = map1(DType::F32, DType::F32, |x| x);
        g.constraints.push(Constraint {
            lhs: s("N").rem(&d(4)),
            op: CmpOp::Eq,
            rhs: d(0),
            span: sp(80, 90),
            text: "N % 4 == 0".into(),
        });
        let ok = run(&g, &args(vec![("x", ft(vec![8], vec![0.0; 8]))], vec![]));
        assert!(ok.is_ok());
        let e = err1(&g, &args(vec![("x", ft(vec![6], vec![0.0; 6]))], vec![]));
        assert_eq!((e.code, e.primary.span), (Code::ConstraintBroken, sp(80, 90)));
        // A missing argument.
        let e = err1(&g, &args(vec![], vec![]));
        assert_eq!(e.code, Code::MissingArg);
        // The wrong dtype.
        let e = err1(&g, &args(vec![("x", it(vec![8], vec![0; 8]))], vec![]));
        assert_eq!(e.code, Code::ArgDType);
    }

    #[test]
    fn resource_limit_refuses_huge_shapes() {
        // out[i, j] = 1.0 over [N, N] with N = 2^19: 2^38 elements.
        let mut b = B::new();
        b.dim_param("N");
        let o = b.compute("out", DType::F32, vec![s("N"), s("N")], &[], cf(1.0));
        b.output("out", o);
        let a = args(vec![], vec![("N", 1 << 19)]);
        let e = match run_with(&b.g, &a, &Limits { max_bytes: 1024, ..Limits::default() }) {
            Err(e) => e,
            Ok(_) => panic!("expected a refusal"),
        };
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, Code::ResourceLimit);
        assert!(e[0].message.contains(&(1u64 << 40).to_string()), "{}", e[0].message);
        // The default limit refuses it too.
        assert_eq!(err1(&b.g, &a).code, Code::ResourceLimit);
        // A small launch fits a small limit exactly.
        let a = args(vec![], vec![("N", 16)]);
        let r = run_with(&b.g, &a, &Limits { max_bytes: 1024, ..Limits::default() }).unwrap();
        assert_eq!(f32s(&r[0].1), vec![1.0; 256]);
        assert!(run_with(&b.g, &a, &Limits { max_bytes: 1023, ..Limits::default() }).is_err());
        // The same launch within the bytes but over a work limit is refused too, naming the work.
        let e = run_with(&b.g, &a, &Limits { max_work: 10, ..Limits::default() }).unwrap_err();
        assert_eq!(e[0].code, Code::ResourceLimit);
        assert!(e[0].message.contains("evaluations"), "{}", e[0].message);
    }

    #[test]
    fn inexact_dim_is_reported() {
        // out[i in 0..N/2] = x[2 i]
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let body = b.load(x, vec![bin(BinOp::Mul, var(0), ci(2))]);
        let o = b.compute("out", DType::F32, vec![s("N").div(&d(2))], &[], body);
        b.output("out", o);
        let out = run1(&b.g, &args(vec![("x", ft(vec![4], vec![1., 2., 3., 4.]))], vec![]));
        assert_eq!(f32s(&out), vec![1., 3.]);
        let r = run(&b.g, &args(vec![("x", ft(vec![3], vec![1., 2., 3.]))], vec![]));
        let e = r.unwrap_err();
        assert!(e.iter().all(|e| e.code == Code::InexactDim), "{e:?}");
    }

    #[test]
    fn dims_in_bodies_and_scalars() {
        // out[i] = x[i] * scale + f32(N) where scale is a scalar param.
        let mut b = B::new();
        let x = b.param("x", DType::BF16, vec![s("N")]);
        let sc = b.param("scale", DType::F32, vec![]);
        let body = bin(
            BinOp::Add,
            bin(BinOp::Mul, b.load(x, vec![var(0)]), b.load(sc, vec![])),
            cast(DType::F32, dimx(s("N"))),
        );
        let o = b.compute("out", DType::F32, vec![s("N")], &[], body);
        b.output("out", o);
        let xt = Tensor::from_f32_as(DType::BF16, vec![2], &[1.0, 2.0]).unwrap();
        let out = run1(&b.g, &args(vec![("x", xt), ("scale", Tensor::scalar_f32(0.5))], vec![]));
        assert_eq!(f32s(&out), vec![2.5, 3.0]);
    }

    #[test]
    fn inout_result_is_a_new_tensor() {
        // param m: inout f32[N]; result m = m (unchanged) and out = m * 2.
        let mut b = B::new();
        let m = b.param("m", DType::F32, vec![s("N")]);
        if let ParamKind::Tensor { inout, .. } = &mut b.g.params[0].kind {
            *inout = true;
        }
        let body = bin(BinOp::Mul, b.load(m, vec![var(0)]), cf(2.0));
        let o = b.compute("out", DType::F32, vec![s("N")], &[], body);
        b.output("out", o);
        b.g.results.push(Result_ { name: "m".into(), value: m, inout: Some(0) });
        b.g.results.push(Result_ { name: "m2".into(), value: o, inout: None });
        let a = args(vec![("m", ft(vec![2], vec![1., 2.]))], vec![]);
        let r = run(&b.g, &a).unwrap();
        assert_eq!(r.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["out", "m", "m2"]);
        assert_eq!(f32s(&r[0].1), vec![2., 4.]);
        assert_eq!(f32s(&r[1].1), vec![1., 2.]);
        assert_eq!(f32s(&r[2].1), vec![2., 4.]);
        assert!(!r[1].1.same_buffer(&a.tensors["m"]));
        assert_eq!(f32s(&a.tensors["m"]), vec![1., 2.]);
    }

    // ----- robustness -----

    #[test]
    fn broken_graphs_are_internal_errors() {
        // A load of a later node.
        let mut b = B::new();
        let x = b.param("x", DType::F32, vec![s("N")]);
        let body = Expr::new(ExprKind::Load { src: ValueId(2), idx: vec![var(0)] }, ScalarTy::F32, sp(5, 6));
        let o = b.compute("out", DType::F32, vec![s("N")], &[], body);
        b.output("out", o);
        let a = args(vec![("x", ft(vec![2], vec![1., 2.]))], vec![]);
        assert_eq!(err1(&b.g, &a).code, Code::Internal);
        // Wrong index count.
        let mut b = B::new();
        let x2 = b.param("x", DType::F32, vec![s("N")]);
        assert_eq!(x, x2);
        let body = b.load(x2, vec![var(0), var(0)]);
        let o = b.compute("out", DType::F32, vec![s("N")], &[], body);
        b.output("out", o);
        assert_eq!(err1(&b.g, &a).code, Code::Internal);
        // A type mismatch: an i32 body in an f32 node; a bad variable; a bad reduction.
        for body in [
            ci(1),
            var(7),
            bin(BinOp::Add, cf(1.0), ci(1)),
            red(ReduceOp::Sum, &[0], cf(1.0)),
            red(ReduceOp::ArgMax, &[], cf(1.0)),
            sel(cf(1.0), cf(1.0), cf(2.0)),
        ] {
            let mut b = B::new();
            let _ = b.param("x", DType::F32, vec![s("N")]);
            let o = b.compute("out", DType::F32, vec![s("N")], &[], body);
            b.output("out", o);
            assert_eq!(err1(&b.g, &a).code, Code::Internal);
        }
        // Nested reduction over the same variable (would never terminate).
        let mut b = B::new();
        let _ = b.param("x", DType::F32, vec![s("N")]);
        let body = red(ReduceOp::Sum, &[1], red(ReduceOp::Sum, &[1], cf(1.0)));
        let o = b.compute("out", DType::F32, vec![], &[d(3)], body);
        b.output("out", o);
        assert_eq!(err1(&b.g, &a).code, Code::Internal);
        // A result naming no node.
        let mut g = map1(DType::F32, DType::F32, |x| x);
        g.results[0].value = ValueId(99);
        assert_eq!(err1(&g, &a).code, Code::Internal);
        // A library node on a bad axis.
        let g = lib_graph(
            DType::F32,
            vec![s("N")],
            DType::I32,
            vec![s("N")],
            NodeKind::ArgSort { src: ValueId(0), axis: 3, descending: false },
        );
        assert_eq!(err1(&g, &a).code, Code::Internal);
    }

    #[test]
    fn malformed_argument_tensor() {
        let g = map1(DType::F32, DType::F32, |x| x);
        let bad = Tensor { shape: vec![4], data: TensorData::F32(vec![1.0, 2.0]) };
        let e = err1(&g, &args(vec![("x", bad)], vec![]));
        assert_eq!(e.code, Code::ArgShape);
    }

    // ----- performance sanity (no timing assertions) -----

    #[test]
    fn matmul_64() {
        let mut b = B::new();
        let x = b.param("a", DType::BF16, vec![s("M"), s("K")]);
        let y = b.param("b", DType::BF16, vec![s("K"), s("N")]);
        let body =
            red(ReduceOp::Sum, &[2], bin(BinOp::Mul, b.load(x, vec![var(0), var(2)]), b.load(y, vec![var(2), var(1)])));
        let o = b.compute("c", DType::F32, vec![s("M"), s("N")], &[s("K")], body);
        b.output("c", o);
        let n = 64;
        let av: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let bv: Vec<f32> = (0..n * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let a = args(
            vec![
                ("a", Tensor::from_f32_as(DType::BF16, vec![n, n], &av).unwrap()),
                ("b", Tensor::from_f32_as(DType::BF16, vec![n, n], &bv).unwrap()),
            ],
            vec![],
        );
        let out = f32s(&run1(&b.g, &a));
        for i in 0..n {
            for j in 0..n {
                let want: f32 = (0..n).map(|k| av[i * n + k] * bv[k * n + j]).sum();
                assert_eq!(out[i * n + j], want);
            }
        }
    }

    #[test]
    fn attention_sized_kernel() {
        // s[b, h, i, j] = where(j <= i, scale * sum[d](q[b,h,i,d] * k[b,h,j,d]), -inf)
        // lse[b, h, i] = max[j](s) + log(sum[j](exp(s - max)))  (two nodes)
        // o[b, h, i, d] = sum[j](exp(s[b,h,i,j] - lse[b,h,i]) * v[b,h,j,d])
        let (bb, hh, ss, dd) = (1usize, 4usize, 64usize, 32usize);
        let mut b = B::new();
        let sh = vec![s("B"), s("H"), s("S"), s("D")];
        let q = b.param("q", DType::BF16, sh.clone());
        let k = b.param("k", DType::BF16, sh.clone());
        let v = b.param("v", DType::BF16, sh.clone());
        let qk = red(
            ReduceOp::Sum,
            &[4],
            bin(
                BinOp::Mul,
                b.load(q, vec![var(0), var(1), var(2), var(4)]),
                b.load(k, vec![var(0), var(1), var(3), var(4)]),
            ),
        );
        let body = sel(bin(BinOp::Le, var(3), var(2)), bin(BinOp::Mul, cf(0.125), qk), cf(f32::NEG_INFINITY));
        let sn = b.compute("s", DType::F32, vec![s("B"), s("H"), s("S"), s("S")], &[s("D")], body);
        let mx = red(ReduceOp::Max, &[3], b.load(sn, vec![var(0), var(1), var(2), var(3)]));
        let mxn = b.compute("m", DType::F32, vec![s("B"), s("H"), s("S")], &[s("S")], mx);
        let se = red(
            ReduceOp::Sum,
            &[3],
            un(
                UnOp::Exp,
                bin(
                    BinOp::Sub,
                    b.load(sn, vec![var(0), var(1), var(2), var(3)]),
                    b.load(mxn, vec![var(0), var(1), var(2)]),
                ),
            ),
        );
        let lse = bin(BinOp::Add, b.load(mxn, vec![var(0), var(1), var(2)]), un(UnOp::Log, se));
        let lsen = b.compute("lse", DType::F32, vec![s("B"), s("H"), s("S")], &[s("S")], lse);
        let p = un(
            UnOp::Exp,
            bin(
                BinOp::Sub,
                b.load(sn, vec![var(0), var(1), var(2), var(4)]),
                b.load(lsen, vec![var(0), var(1), var(2)]),
            ),
        );
        let ob = red(ReduceOp::Sum, &[4], bin(BinOp::Mul, p, b.load(v, vec![var(0), var(1), var(4), var(3)])));
        let on = b.compute("o", DType::BF16, sh.clone(), &[s("S")], ob);
        b.output("o", on);
        b.output("lse", lsen);
        let n = bb * hh * ss * dd;
        let mk = |seed: usize| {
            let v: Vec<f32> = (0..n).map(|i| (((i * 31 + seed) % 97) as f32 - 48.0) / 48.0).collect();
            Tensor::from_f32_as(DType::BF16, vec![bb, hh, ss, dd], &v).unwrap()
        };
        let a = args(vec![("q", mk(1)), ("k", mk(2)), ("v", mk(3))], vec![]);
        let r = run(&b.g, &a).unwrap();
        assert_eq!(r[0].1.shape, vec![bb, hh, ss, dd]);
        assert_eq!(r[1].1.shape, vec![bb, hh, ss]);
        // Row 0 attends only to key 0: o[.., 0, d] = v[.., 0, d].
        let o = r[0].1.to_f64_vec();
        let vv = a.tensors["v"].to_f64_vec();
        for d in 0..dd {
            assert!((o[d] - vv[d]).abs() < 1e-2, "{} vs {}", o[d], vv[d]);
        }
        assert!(o.iter().all(|x| x.is_finite()));
    }
}
