//! The graph IR verifier: checks every typing and well-formedness rule of [`crate::graph`], collecting every
//! error (it never stops at the first) and never panicking, whatever the graph.
//!
//! An error about a node displays as `%3: message`; an error inside an expression quotes the expression
//! (`%9: in `%2[n] + segment(%7, n)`: `add` operands have different types f32 and i32`), shortened past 80
//! characters. Errors about the signature and the result list have no node, except a result whose value has
//! the wrong type, which is reported at that value. Errors come in a fixed order: signature names, then each
//! node in order (expressions parents first), then results, then schedule hints (each on a node that exists;
//! a tile hint names axes of its node, each once, with sizes of at least 1, and a node has one tile hint).

use crate::dim::Dim;
use crate::dtype::{DType, ScalarTy};
use crate::graph::*;
use crate::print::{print_expr, print_hint, print_type, value_ref, var_names};
use std::collections::HashMap;
use std::fmt;

/// One broken rule, at a node (`node`) or about the graph as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub node: Option<ValueId>,
    pub message: String,
}

impl fmt::Display for VerifyError {
    /// `%3: message`, or just `message` for an error about the whole graph.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node {
            Some(v) => write!(f, "%{}: {}", v.0, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Checks one kernel; every error found is reported.
pub fn verify(g: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut v = Verifier { g, errors: Vec::new() };
    v.signature();
    for i in 0..g.nodes.len() {
        v.node(i);
    }
    v.results();
    v.hints();
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

/// Checks every kernel of a program, and that kernel names are unique. Each message of a kernel's error
/// starts with ``kernel `name`: ``.
pub fn verify_program(p: &Program) -> Result<(), Vec<VerifyError>> {
    let mut errors = Vec::new();
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, k) in p.kernels.iter().enumerate() {
        match first.get(k.name.as_str()) {
            Some(&j) => errors.push(VerifyError {
                node: None,
                message: format!("kernel name `{}` is used by kernels {j} and {i}", k.name),
            }),
            None => {
                first.insert(k.name.as_str(), i);
            }
        }
    }
    for k in &p.kernels {
        if let Err(es) = verify(k) {
            errors.extend(
                es.into_iter()
                    .map(|e| VerifyError { node: e.node, message: format!("kernel `{}`: {}", k.name, e.message) }),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The longest expression quoted in full in a message.
const QUOTE_MAX: usize = 80;

struct Verifier<'a> {
    g: &'a Graph,
    errors: Vec<VerifyError>,
}

/// What one `Compute` node's expressions are checked against.
struct ComputeCtx<'a> {
    at: usize,
    vars: &'a [IndexVar],
    names: Vec<String>,
    rank: usize,
    /// Variables bound by the enclosing reductions.
    bound: Vec<VarId>,
    /// Variables reduced anywhere so far in the body.
    reduced: Vec<bool>,
}

impl<'a> Verifier<'a> {
    fn err(&mut self, node: Option<usize>, message: String) {
        self.errors.push(VerifyError { node: node.map(|i| ValueId(i as u32)), message });
    }

    /// Parameter and output names.
    fn signature(&mut self) {
        let g = self.g;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, p) in g.params.iter().enumerate() {
            if let Some(&j) = seen.get(p.name.as_str()) {
                self.err(None, format!("parameter name `{}` is used by parameters {j} and {i}", p.name));
            } else {
                seen.insert(p.name.as_str(), i);
            }
        }
        let mut outs: HashMap<&str, usize> = HashMap::new();
        for (i, o) in g.outputs.iter().enumerate() {
            if let Some(&j) = outs.get(o.name.as_str()) {
                self.err(None, format!("output name `{}` is used by outputs {j} and {i}", o.name));
            } else {
                outs.insert(o.name.as_str(), i);
                if let Some(&j) = seen.get(o.name.as_str()) {
                    self.err(None, format!("output `{}` has the name of parameter {j}", o.name));
                }
            }
        }
    }

    /// Checks that node `at` may read `src`: in range and defined before it. Returns the node if in range.
    fn operand(&mut self, at: usize, src: ValueId) -> Option<&'a Node> {
        let g = self.g;
        match g.nodes.get(src.index()) {
            None => {
                self.err(Some(at), format!("reads %?{}, which is out of range ({} nodes)", src.0, g.nodes.len()));
                None
            }
            Some(n) => {
                if src.index() >= at {
                    self.err(Some(at), format!("reads %{}, which is not defined before it (forward reference)", src.0));
                }
                Some(n)
            }
        }
    }

    fn node(&mut self, at: usize) {
        let g = self.g;
        let Some(node) = g.nodes.get(at) else { return };
        let ty = print_type(node.dtype, &node.shape);
        match &node.kind {
            NodeKind::Param(p) => match g.params.get(*p) {
                None => self.err(Some(at), format!("param({p}) is out of range ({} parameters)", g.params.len())),
                Some(Param { name, kind: ParamKind::Dim, .. }) => {
                    self.err(Some(at), format!("param({p}) is `{name}: dim`, which is not a tensor parameter"))
                }
                Some(Param { name, kind: ParamKind::Tensor { dtype, shape, .. }, .. }) => {
                    if node.dtype != *dtype || node.shape != *shape {
                        self.err(
                            Some(at),
                            format!("node type {ty} differs from parameter `{name}`: {}", print_type(*dtype, shape)),
                        );
                    }
                }
            },
            NodeKind::Compute { vars, body } => self.compute(at, node, vars, body),
            NodeKind::TopK { src, k, axis, part } => {
                let Some(s) = self.operand(at, *src) else { return };
                if *axis >= s.rank() {
                    self.err(Some(at), format!("topk axis {axis} is out of range for a rank-{} operand", s.rank()));
                    return;
                }
                let mut want = s.shape.clone();
                want[*axis] = k.clone();
                let want_dtype = match part {
                    TopKPart::Values => s.dtype,
                    TopKPart::Indices => DType::I32,
                };
                if node.shape != want || node.dtype != want_dtype {
                    self.err(Some(at), format!("topk gives {}, but the node is {ty}", print_type(want_dtype, &want)));
                }
            }
            NodeKind::ArgSort { src, axis, .. } => {
                let Some(s) = self.operand(at, *src) else { return };
                if *axis >= s.rank() {
                    self.err(Some(at), format!("argsort axis {axis} is out of range for a rank-{} operand", s.rank()));
                    return;
                }
                if node.shape != s.shape || node.dtype != DType::I32 {
                    self.err(
                        Some(at),
                        format!("argsort gives {}, but the node is {ty}", print_type(DType::I32, &s.shape)),
                    );
                }
            }
            NodeKind::CumSum { src, axis, .. } => {
                let Some(s) = self.operand(at, *src) else { return };
                if *axis >= s.rank() {
                    self.err(Some(at), format!("cumsum axis {axis} is out of range for a rank-{} operand", s.rank()));
                    return;
                }
                if s.dtype == DType::Bool {
                    self.err(Some(at), format!("cumsum of {}, which is not a number type", s.dtype));
                    return;
                }
                let want = if s.dtype.is_float() { DType::F32 } else { DType::I32 };
                if node.shape != s.shape || node.dtype != want {
                    self.err(Some(at), format!("cumsum gives {}, but the node is {ty}", print_type(want, &s.shape)));
                }
            }
            NodeKind::BinCount { src, n } => {
                if let Some(s) = self.operand(at, *src) {
                    if s.rank() != 1 || s.dtype != DType::I32 {
                        self.err(
                            Some(at),
                            format!("bincount takes a 1-D i32 tensor, not {}", print_type(s.dtype, &s.shape)),
                        );
                    }
                }
                let want = [n.clone()];
                if node.shape != want || node.dtype != DType::I32 {
                    self.err(
                        Some(at),
                        format!("bincount gives {}, but the node is {ty}", print_type(DType::I32, &want)),
                    );
                }
            }
        }
    }

    fn compute(&mut self, at: usize, node: &Node, vars: &'a [IndexVar], body: &Expr) {
        let rank = node.rank();
        let names = var_names(vars);
        if vars.len() < rank {
            self.err(Some(at), format!("has {} index variables for {rank} output axes", vars.len()));
        }
        for (i, (v, d)) in vars.iter().zip(&node.shape).enumerate() {
            if v.extent != *d {
                self.err(
                    Some(at),
                    format!("output axis {i} has extent {d}, but its variable `{}` ranges over {}", names[i], v.extent),
                );
            }
        }
        if body.ty != node.dtype.compute() {
            self.err(
                Some(at),
                format!("the body has type {}, but a {} node computes {}", body.ty, node.dtype, node.dtype.compute()),
            );
        }
        let mut cx = ComputeCtx { at, vars, names, rank, bound: Vec::new(), reduced: vec![false; vars.len()] };
        self.expr(&mut cx, body);
    }

    /// `e`, quoted for a message (shortened when long).
    fn quote(&self, cx: &ComputeCtx<'_>, e: &Expr) -> String {
        let s = print_expr(self.g, cx.vars, e);
        if s.chars().count() > QUOTE_MAX {
            let head: String = s.chars().take(QUOTE_MAX).collect();
            format!("`{head}...`")
        } else {
            format!("`{s}`")
        }
    }

    fn bad(&mut self, cx: &ComputeCtx<'_>, e: &Expr, what: String) {
        let q = self.quote(cx, e);
        self.err(Some(cx.at), format!("in {q}: {what}"));
    }

    fn var_name(cx: &ComputeCtx<'_>, v: VarId) -> String {
        cx.names.get(v.index()).cloned().unwrap_or_else(|| format!("?v{}", v.0))
    }

    fn expr(&mut self, cx: &mut ComputeCtx<'a>, e: &Expr) {
        match &e.kind {
            ExprKind::Const(c) => {
                if e.ty != c.ty() {
                    self.bad(cx, e, format!("a {} constant is typed {}", c.ty(), e.ty));
                }
            }
            ExprKind::Var(v) => {
                if v.index() >= cx.vars.len() {
                    self.bad(cx, e, format!("variable ?v{} is out of range ({} variables)", v.0, cx.vars.len()));
                } else if v.index() >= cx.rank && !cx.bound.contains(v) {
                    let n = Self::var_name(cx, *v);
                    self.bad(
                        cx,
                        e,
                        format!("variable `{n}` is neither an output axis nor bound by an enclosing reduction"),
                    );
                }
                if e.ty != ScalarTy::I32 {
                    self.bad(cx, e, format!("a variable is i32, but it is typed {}", e.ty));
                }
            }
            ExprKind::Dim(_) => {
                if e.ty != ScalarTy::I32 {
                    self.bad(cx, e, format!("a dim value is i32, but it is typed {}", e.ty));
                }
            }
            ExprKind::Load { src, idx } => {
                if let Some(s) = self.operand(cx.at, *src) {
                    if idx.len() != s.rank() {
                        let r = value_ref(self.g, *src);
                        self.bad(
                            cx,
                            e,
                            format!("{r} has rank {}, but it is read with {} indices", s.rank(), idx.len()),
                        );
                    }
                    if e.ty != s.dtype.compute() {
                        self.bad(
                            cx,
                            e,
                            format!("a load of {} is {}, but it is typed {}", s.dtype, s.dtype.compute(), e.ty),
                        );
                    }
                }
                for (i, x) in idx.iter().enumerate() {
                    if x.ty != ScalarTy::I32 {
                        self.bad(cx, e, format!("index {i} is {}, not i32", x.ty));
                    }
                }
            }
            ExprKind::Unary(op, a) => {
                let want = op.check(a.ty);
                if want != Some(e.ty) {
                    self.bad(cx, e, Self::op_type_message(op.name(), &[a.ty], want, e.ty));
                }
            }
            ExprKind::Binary(op, a, b) => {
                if a.ty != b.ty {
                    self.bad(cx, e, format!("`{}` operands have different types {} and {}", op.name(), a.ty, b.ty));
                } else {
                    let want = op.check(a.ty);
                    if want != Some(e.ty) {
                        self.bad(cx, e, Self::op_type_message(op.name(), &[a.ty, b.ty], want, e.ty));
                    }
                }
            }
            ExprKind::Select(c, a, b) => {
                if c.ty != ScalarTy::Bool {
                    self.bad(cx, e, format!("the condition of `where` is {}, not bool", c.ty));
                }
                if a.ty != b.ty || a.ty != e.ty {
                    self.bad(cx, e, format!("`where` sides are {} and {}, typed {}", a.ty, b.ty, e.ty));
                }
            }
            ExprKind::Cast(t, a) => match t {
                DType::F32 | DType::I32 | DType::Bool => {
                    if e.ty != t.compute() {
                        self.bad(cx, e, format!("a cast to {t} is {}, but it is typed {}", t.compute(), e.ty));
                    }
                }
                DType::BF16 | DType::F16 => {
                    if a.ty != ScalarTy::F32 || e.ty != ScalarTy::F32 {
                        self.bad(cx, e, format!("rounding to {t} takes and gives f32, not {} to {}", a.ty, e.ty));
                    }
                }
            },
            ExprKind::Reduce { op, vars, body } => {
                if vars.is_empty() {
                    self.bad(cx, e, format!("`{}` reduces over no variable", op.name()));
                }
                if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && vars.len() > 1 {
                    self.bad(cx, e, format!("`{}` reduces over exactly one variable, not {}", op.name(), vars.len()));
                }
                for v in vars {
                    let Some(seen) = cx.reduced.get(v.index()).copied() else {
                        self.bad(cx, e, format!("variable ?v{} is out of range ({} variables)", v.0, cx.vars.len()));
                        continue;
                    };
                    let n = Self::var_name(cx, *v);
                    if v.index() < cx.rank {
                        self.bad(cx, e, format!("reduces over `{n}`, which is output axis {}", v.index()));
                    }
                    if seen {
                        self.bad(cx, e, format!("variable `{n}` is reduced more than once in the body"));
                    }
                    cx.reduced[v.index()] = true;
                }
                let want = op.check(body.ty);
                if want != Some(e.ty) {
                    self.bad(cx, e, Self::op_type_message(op.name(), &[body.ty], want, e.ty));
                }
                let depth = cx.bound.len();
                cx.bound.extend(vars.iter().copied());
                self.expr(cx, body);
                cx.bound.truncate(depth);
                return;
            }
            ExprKind::Segment { src, value } => {
                if let Some(s) = self.operand(cx.at, *src) {
                    if s.rank() != 1 || s.dtype != DType::I32 {
                        let r = value_ref(self.g, *src);
                        self.bad(
                            cx,
                            e,
                            format!(
                                "segment offsets {r} must be a 1-D i32 tensor, not {}",
                                print_type(s.dtype, &s.shape)
                            ),
                        );
                    }
                }
                if value.ty != ScalarTy::I32 || e.ty != ScalarTy::I32 {
                    self.bad(cx, e, format!("segment takes and gives i32, not {} to {}", value.ty, e.ty));
                }
            }
        }
        e.for_each_child(|c| self.expr(cx, c));
    }

    fn op_type_message(name: &str, operands: &[ScalarTy], want: Option<ScalarTy>, got: ScalarTy) -> String {
        let ops: Vec<&str> = operands.iter().map(|t| t.name()).collect();
        match want {
            None => format!("`{name}` does not take {}", ops.join(" and ")),
            Some(w) => format!("`{name}` of {} gives {w}, but it is typed {got}", ops.join(" and ")),
        }
    }

    /// Schedule hints: on nodes that exist; a tile hint names axes of its node (an index variable of a
    /// `Compute` node's output axes, or a dim symbol of its shape), each once, with a size of at least 1; a
    /// node has at most one tile hint.
    fn hints(&mut self) {
        let g = self.g;
        let mut tiled: HashMap<usize, usize> = HashMap::new();
        for (k, h) in g.hints.iter().enumerate() {
            let text = print_hint(&h.kind);
            let at = h.node.index();
            let Some(node) = g.nodes.get(at) else {
                self.err(
                    None,
                    format!("hint {k} `{text}` is on %?{}, which is out of range ({} nodes)", h.node.0, g.nodes.len()),
                );
                continue;
            };
            let HintKind::Tile(axes) = &h.kind else { continue };
            if let Some(first) = tiled.insert(at, k) {
                self.err(Some(at), format!("two tile hints: hint {first} and hint {k} `{text}`"));
            }
            if axes.is_empty() {
                self.err(Some(at), format!("hint {k} `{text}` tiles no axis"));
            }
            let mut names: Vec<String> = Vec::new();
            if let NodeKind::Compute { vars, .. } = &node.kind {
                let printed = var_names(vars);
                for (iv, shown) in vars.iter().zip(printed).take(node.rank()) {
                    names.push(iv.name.clone());
                    names.push(shown);
                }
            }
            names.extend(node.shape.iter().filter_map(|d| d.as_sym().map(str::to_string)));
            for (i, (axis, size)) in axes.iter().enumerate() {
                if axes[..i].iter().any(|(a, _)| a == axis) {
                    self.err(Some(at), format!("hint {k} `{text}` tiles `{axis}` twice"));
                } else if !names.contains(axis) {
                    let mut unique: Vec<&str> = Vec::new();
                    for n in &names {
                        if !unique.contains(&n.as_str()) {
                            unique.push(n);
                        }
                    }
                    let shown = if unique.is_empty() { "none".to_string() } else { unique.join(", ") };
                    self.err(
                        Some(at),
                        format!("hint {k} `{text}` tiles `{axis}`, which is not an axis of the node (axes: {shown})"),
                    );
                }
                if *size == 0 {
                    self.err(Some(at), format!("hint {k} `{text}` gives `{axis}` a tile size of 0"));
                }
            }
        }
    }

    /// One result per output (in order), then one per `inout` parameter (in parameter order).
    fn results(&mut self) {
        let g = self.g;
        struct Expected<'b> {
            name: &'b str,
            inout: Option<usize>,
            dtype: DType,
            shape: &'b [Dim],
        }
        let mut expected: Vec<Expected<'_>> = g
            .outputs
            .iter()
            .map(|o| Expected { name: &o.name, inout: None, dtype: o.dtype, shape: &o.shape })
            .collect();
        for (i, p) in g.params.iter().enumerate() {
            if let ParamKind::Tensor { dtype, shape, inout: true } = &p.kind {
                expected.push(Expected { name: &p.name, inout: Some(i), dtype: *dtype, shape });
            }
        }
        let mut used = vec![false; g.results.len()];
        let mut order = Vec::new();
        for (k, ex) in expected.iter().enumerate() {
            let what = match ex.inout {
                None => format!("output `{}`", ex.name),
                Some(_) => format!("inout parameter `{}`", ex.name),
            };
            let here = g.results.get(k).is_some_and(|r| r.name == ex.name) && !used[k];
            let pos =
                if here { Some(k) } else { (0..g.results.len()).find(|&j| !used[j] && g.results[j].name == ex.name) };
            let Some(j) = pos else {
                self.err(None, format!("no result for {what}"));
                continue;
            };
            used[j] = true;
            order.push(j);
            let r = &g.results[j];
            if r.inout != ex.inout {
                let say = |x: Option<usize>| match x {
                    None => "none".to_string(),
                    Some(i) => format!("parameter {i}"),
                };
                self.err(
                    None,
                    format!("result `{}` has inout index {}, but it should be {}", r.name, say(r.inout), say(ex.inout)),
                );
            }
            match g.nodes.get(r.value.index()) {
                None => self.err(
                    None,
                    format!("result `{}` is %?{}, which is out of range ({} nodes)", r.name, r.value.0, g.nodes.len()),
                ),
                Some(n) => {
                    if n.dtype != ex.dtype || n.shape != ex.shape {
                        self.err(
                            Some(r.value.index()),
                            format!(
                                "result `{}` is {}, but {what} is declared {}",
                                r.name,
                                print_type(n.dtype, &n.shape),
                                print_type(ex.dtype, ex.shape)
                            ),
                        );
                    }
                }
            }
        }
        for (j, r) in g.results.iter().enumerate() {
            if used[j] {
                continue;
            }
            if expected.iter().any(|ex| ex.name == r.name) {
                self.err(None, format!("`{}` has more than one result (result {j})", r.name));
            } else {
                self.err(None, format!("result `{}` is neither an output nor an inout parameter", r.name));
            }
        }
        if order.windows(2).any(|w| w[0] > w[1]) {
            let want: Vec<&str> = expected.iter().map(|e| e.name).collect();
            let got: Vec<&str> = g.results.iter().map(|r| r.name.as_str()).collect();
            self.err(
                None,
                format!(
                    "results are out of order: expected {} (outputs, then inout parameters), found {}",
                    want.join(", "),
                    got.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;

    fn d(s: &str) -> Dim {
        Dim::sym(s)
    }

    fn e(kind: ExprKind, ty: ScalarTy) -> Expr {
        Expr { kind, ty, span: Span::default() }
    }

    fn var(i: u32) -> Expr {
        e(ExprKind::Var(VarId(i)), ScalarTy::I32)
    }

    fn int(x: i64) -> Expr {
        Expr::constant(Const::I32(x), Span::default())
    }

    fn load(src: u32, idx: Vec<Expr>, ty: ScalarTy) -> Expr {
        e(ExprKind::Load { src: ValueId(src), idx }, ty)
    }

    /// A binary expression typed by the rules (or `a`'s type when they reject it).
    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(a.ty);
        e(ExprKind::Binary(op, Box::new(a), Box::new(b)), ty)
    }

    fn cast(t: DType, a: Expr) -> Expr {
        e(ExprKind::Cast(t, Box::new(a)), t.compute())
    }

    fn reduce(op: ReduceOp, vars: &[u32], body: Expr) -> Expr {
        let ty = op.check(body.ty).unwrap_or(body.ty);
        e(ExprKind::Reduce { op, vars: vars.iter().map(|&v| VarId(v)).collect(), body: Box::new(body) }, ty)
    }

    fn iv(name: &str, extent: Dim) -> IndexVar {
        IndexVar { name: name.to_string(), extent }
    }

    fn node(name: Option<&str>, dtype: DType, shape: Vec<Dim>, kind: NodeKind) -> Node {
        Node { name: name.map(str::to_string), dtype, shape, kind, span: Span::default() }
    }

    fn compute(name: Option<&str>, dtype: DType, shape: Vec<Dim>, vars: Vec<IndexVar>, body: Expr) -> Node {
        node(name, dtype, shape, NodeKind::Compute { vars, body })
    }

    fn tensor(name: &str, dtype: DType, shape: Vec<Dim>, inout: bool) -> Param {
        Param { name: name.to_string(), kind: ParamKind::Tensor { dtype, shape, inout }, span: Span::default() }
    }

    fn out(name: &str, dtype: DType, shape: Vec<Dim>) -> OutputDecl {
        OutputDecl { name: name.to_string(), dtype, shape, span: Span::default() }
    }

    fn result(name: &str, value: u32, inout: Option<usize>) -> Result_ {
        Result_ { name: name.to_string(), value: ValueId(value), inout }
    }

    /// The body of a node, to break it.
    fn body_mut(g: &mut Graph, at: usize) -> &mut Expr {
        match &mut g.nodes[at].kind {
            NodeKind::Compute { body, .. } => body,
            _ => unreachable!("node {at} is a compute node"),
        }
    }

    /// A well-formed graph with every node kind:
    /// ```text
    /// kernel good(x: f32[T, D], idx: i32[N], m: inout f32[N], E: dim) -> (y: f32[T, D], s: f32[T], k: i32[T, 2])
    /// {
    ///   %0 x: f32[T, D] = param
    ///   %1 idx: i32[N] = param
    ///   %2 m: f32[N] = param
    ///   %3 s: f32[T] = compute [t] sum[d < D](%0[t, d] * %0[t, d])
    ///   %4 y: f32[T, D] = compute [t, d] where(d < 3, -%0[t, d], %3[t])
    ///   %5 k: i32[T, 2] = topk.indices(%4, k = 2, axis = 1)
    ///   %6: i32[N] = argsort(%1, axis = 0, descending = false)
    ///   %7: i32[N] = cumsum(%6, axis = 0, exclusive = true)
    ///   %8: i32[E] = bincount(%1, n = E)
    ///   %9 m: f32[N] = compute [n] %2[n] + f32(segment(%7, n)) + f32(argmax[e < E](%8[e]))
    ///   return y = %4, s = %3, k = %5, m = %9 (inout)
    /// }
    /// ```
    fn good() -> Graph {
        let (t, dd, n, ee) = (d("T"), d("D"), d("N"), d("E"));
        let x = || load(0, vec![var(0), var(1)], ScalarTy::F32);
        let s_body = reduce(ReduceOp::Sum, &[1], bin(BinOp::Mul, x(), x()));
        let neg = e(ExprKind::Unary(UnOp::Neg, Box::new(x())), ScalarTy::F32);
        let y_body = e(
            ExprKind::Select(
                Box::new(bin(BinOp::Lt, var(1), int(3))),
                Box::new(neg),
                Box::new(load(3, vec![var(0)], ScalarTy::F32)),
            ),
            ScalarTy::F32,
        );
        let seg = e(ExprKind::Segment { src: ValueId(7), value: Box::new(var(0)) }, ScalarTy::I32);
        let am = reduce(ReduceOp::ArgMax, &[1], load(8, vec![var(1)], ScalarTy::I32));
        let m_body = bin(
            BinOp::Add,
            bin(BinOp::Add, load(2, vec![var(0)], ScalarTy::F32), cast(DType::F32, seg)),
            cast(DType::F32, am),
        );
        let k2 = Dim::constant(2);
        Graph {
            name: "good".to_string(),
            doc: None,
            span: Span::default(),
            params: vec![
                tensor("x", DType::F32, vec![t.clone(), dd.clone()], false),
                tensor("idx", DType::I32, vec![n.clone()], false),
                tensor("m", DType::F32, vec![n.clone()], true),
                Param { name: "E".to_string(), kind: ParamKind::Dim, span: Span::default() },
            ],
            outputs: vec![
                out("y", DType::F32, vec![t.clone(), dd.clone()]),
                out("s", DType::F32, vec![t.clone()]),
                out("k", DType::I32, vec![t.clone(), k2.clone()]),
            ],
            dims: vec!["T".into(), "D".into(), "N".into(), "E".into()],
            fixed: Vec::new(),
            constraints: Vec::new(),
            asserts: Vec::new(),
            nodes: vec![
                node(Some("x"), DType::F32, vec![t.clone(), dd.clone()], NodeKind::Param(0)),
                node(Some("idx"), DType::I32, vec![n.clone()], NodeKind::Param(1)),
                node(Some("m"), DType::F32, vec![n.clone()], NodeKind::Param(2)),
                compute(Some("s"), DType::F32, vec![t.clone()], vec![iv("t", t.clone()), iv("d", dd.clone())], s_body),
                compute(
                    Some("y"),
                    DType::F32,
                    vec![t.clone(), dd.clone()],
                    vec![iv("t", t.clone()), iv("d", dd.clone())],
                    y_body,
                ),
                node(
                    Some("k"),
                    DType::I32,
                    vec![t.clone(), k2.clone()],
                    NodeKind::TopK { src: ValueId(4), k: k2.clone(), axis: 1, part: TopKPart::Indices },
                ),
                node(
                    None,
                    DType::I32,
                    vec![n.clone()],
                    NodeKind::ArgSort { src: ValueId(1), axis: 0, descending: false },
                ),
                node(None, DType::I32, vec![n.clone()], NodeKind::CumSum { src: ValueId(6), axis: 0, exclusive: true }),
                node(None, DType::I32, vec![ee.clone()], NodeKind::BinCount { src: ValueId(1), n: ee.clone() }),
                compute(Some("m"), DType::F32, vec![n.clone()], vec![iv("n", n.clone()), iv("e", ee.clone())], m_body),
            ],
            results: vec![result("y", 4, None), result("s", 3, None), result("k", 5, None), result("m", 9, Some(2))],
            hints: Vec::new(),
        }
    }

    /// The errors of `good()` broken by `f`.
    fn broken(f: impl FnOnce(&mut Graph)) -> Vec<VerifyError> {
        let mut g = good();
        f(&mut g);
        // The printer must cope with whatever the verifier rejects.
        let _ = crate::print::print_graph(&g);
        match verify(&g) {
            Ok(()) => panic!("the broken graph verifies:\n{}", crate::print::print_graph(&g)),
            Err(es) => es,
        }
    }

    /// Exactly one error, at `node`, whose message contains `needle`.
    fn one_error(f: impl FnOnce(&mut Graph), node: Option<u32>, needle: &str) -> VerifyError {
        let es = broken(f);
        assert_eq!(es.len(), 1, "expected one error, got {es:#?}");
        assert_eq!(es[0].node, node.map(ValueId), "{}", es[0]);
        assert!(es[0].message.contains(needle), "`{}` does not contain `{needle}`", es[0]);
        es[0].clone()
    }

    #[test]
    fn accepts_well_formed() {
        assert_eq!(verify(&good()), Ok(()));
        assert_eq!(verify_program(&Program { kernels: vec![good()] }), Ok(()));
        assert_eq!(verify_program(&Program::default()), Ok(()));
    }

    #[test]
    fn forward_reference() {
        let err = one_error(
            |g| *body_mut(g, 3) = reduce(ReduceOp::Sum, &[1], load(4, vec![var(0), var(1)], ScalarTy::F32)),
            Some(3),
            "forward reference",
        );
        assert_eq!(err.to_string(), "%3: reads %4, which is not defined before it (forward reference)");
        one_error(
            |g| {
                if let NodeKind::ArgSort { src, .. } = &mut g.nodes[6].kind {
                    *src = ValueId(6);
                }
            },
            Some(6),
            "forward reference",
        );
    }

    #[test]
    fn out_of_range_ids() {
        one_error(|g| *body_mut(g, 4) = load(40, vec![], ScalarTy::F32), Some(4), "%?40, which is out of range");
        one_error(|g| g.nodes[0].kind = NodeKind::Param(9), Some(0), "param(9) is out of range");
        one_error(|g| g.nodes[0].kind = NodeKind::Param(3), Some(0), "not a tensor parameter");
        one_error(|g| g.results[1].value = ValueId(77), None, "%?77");
        let es = broken(|g| *body_mut(g, 4) = cast(DType::F32, var(12)));
        assert_eq!(es.len(), 1, "{es:#?}");
        assert!(es[0].message.contains("?v12 is out of range"), "{}", es[0]);
        one_error(
            |g| *body_mut(g, 3) = reduce(ReduceOp::Sum, &[5], cast(DType::F32, var(0))),
            Some(3),
            "?v5 is out of range",
        );
    }

    #[test]
    fn wrong_index_count() {
        one_error(
            |g| {
                if let ExprKind::Reduce { body, .. } = &mut body_mut(g, 3).kind {
                    if let ExprKind::Binary(_, a, _) = &mut body.kind {
                        **a = load(0, vec![var(0)], ScalarTy::F32);
                    }
                }
            },
            Some(3),
            "%0 has rank 2, but it is read with 1 indices",
        );
        one_error(
            |g| *body_mut(g, 4) = load(0, vec![var(0), cast(DType::F32, var(1))], ScalarTy::F32),
            Some(4),
            "index 1 is f32, not i32",
        );
        one_error(
            |g| *body_mut(g, 4) = cast(DType::F32, load(0, vec![var(0), var(1)], ScalarTy::I32)),
            Some(4),
            "a load of f32 is f32, but it is typed i32",
        );
    }

    #[test]
    fn binary_type_mismatch() {
        let err = one_error(
            |g| {
                let seg = e(ExprKind::Segment { src: ValueId(7), value: Box::new(var(0)) }, ScalarTy::I32);
                *body_mut(g, 9) = bin(BinOp::Add, load(2, vec![var(0)], ScalarTy::F32), seg);
            },
            Some(9),
            "different types f32 and i32",
        );
        assert_eq!(err.to_string(), "%9: in `%2[n] + segment(%7, n)`: `add` operands have different types f32 and i32");
        // Operands agree, but the operator rejects them, or the result type is wrong.
        one_error(
            |g| {
                *body_mut(g, 4) = bin(
                    BinOp::And,
                    load(0, vec![var(0), var(1)], ScalarTy::F32),
                    load(0, vec![var(0), var(1)], ScalarTy::F32),
                )
            },
            Some(4),
            "`and` does not take f32 and f32",
        );
        one_error(
            |g| {
                let lt = e(ExprKind::Binary(BinOp::Lt, Box::new(var(0)), Box::new(var(1))), ScalarTy::I32);
                *body_mut(g, 4) = cast(DType::F32, lt);
            },
            Some(4),
            "`lt` of i32 and i32 gives bool, but it is typed i32",
        );
        one_error(
            |g| {
                *body_mut(g, 4) =
                    cast(DType::F32, e(ExprKind::Unary(UnOp::Exp, Box::new(cast(DType::I32, var(0)))), ScalarTy::I32))
            },
            Some(4),
            "does not take i32",
        );
    }

    #[test]
    fn select_needs_bool_condition() {
        one_error(
            |g| {
                if let ExprKind::Select(c, _, _) = &mut body_mut(g, 4).kind {
                    **c = var(1);
                }
            },
            Some(4),
            "the condition of `where` is i32, not bool",
        );
        one_error(
            |g| {
                if let ExprKind::Select(_, _, b) = &mut body_mut(g, 4).kind {
                    **b = var(1);
                }
            },
            Some(4),
            "`where` sides are f32 and i32",
        );
    }

    #[test]
    fn reduce_over_output_axis() {
        one_error(
            |g| {
                if let ExprKind::Reduce { vars, .. } = &mut body_mut(g, 3).kind {
                    vars.push(VarId(0));
                }
            },
            Some(3),
            "reduces over `t`, which is output axis 0",
        );
    }

    #[test]
    fn reduce_rules() {
        one_error(
            |g| *body_mut(g, 3) = reduce(ReduceOp::Sum, &[], Expr::constant(Const::F32(1.0), Span::default())),
            Some(3),
            "reduces over no variable",
        );
        // Reduced twice: nested, and twice in one list.
        one_error(
            |g| {
                let inner = reduce(ReduceOp::Sum, &[1], load(0, vec![var(0), var(1)], ScalarTy::F32));
                *body_mut(g, 3) = reduce(ReduceOp::Max, &[1], inner);
            },
            Some(3),
            "`d` is reduced more than once",
        );
        one_error(
            |g| *body_mut(g, 3) = reduce(ReduceOp::Sum, &[1, 1], load(0, vec![var(0), var(1)], ScalarTy::F32)),
            Some(3),
            "`d` is reduced more than once",
        );
        one_error(
            |g| {
                if let NodeKind::Compute { vars, .. } = &mut g.nodes[9].kind {
                    vars.push(iv("f", d("F")));
                }
                *body_mut(g, 9) =
                    cast(DType::F32, reduce(ReduceOp::ArgMin, &[1, 2], load(8, vec![var(1)], ScalarTy::I32)));
            },
            Some(9),
            "exactly one variable, not 2",
        );
        one_error(
            |g| {
                let body = Box::new(bin(BinOp::Lt, var(0), var(1)));
                *body_mut(g, 3) = e(ExprKind::Reduce { op: ReduceOp::Sum, vars: vec![VarId(1)], body }, ScalarTy::F32)
            },
            Some(3),
            "`sum` does not take bool",
        );
        one_error(
            |g| {
                *body_mut(g, 3) = e(
                    ExprKind::Reduce {
                        op: ReduceOp::ArgMax,
                        vars: vec![VarId(1)],
                        body: Box::new(load(0, vec![var(0), var(1)], ScalarTy::F32)),
                    },
                    ScalarTy::F32,
                )
            },
            Some(3),
            "`argmax` of f32 gives i32, but it is typed f32",
        );
    }

    #[test]
    fn unbound_var() {
        one_error(
            |g| {
                let body = body_mut(g, 3).clone();
                *body_mut(g, 3) = bin(BinOp::Add, body, cast(DType::F32, var(1)));
            },
            Some(3),
            "variable `d` is neither an output axis nor bound by an enclosing reduction",
        );
    }

    #[test]
    fn other_expression_rules() {
        one_error(
            |g| *body_mut(g, 4) = e(ExprKind::Const(Const::I32(1)), ScalarTy::F32),
            Some(4),
            "a i32 constant is typed f32",
        );
        one_error(
            |g| *body_mut(g, 4) = cast(DType::F32, e(ExprKind::Dim(d("T")), ScalarTy::F32)),
            Some(4),
            "a dim value is i32",
        );
        one_error(
            |g| *body_mut(g, 4) = cast(DType::F32, e(ExprKind::Var(VarId(0)), ScalarTy::F32)),
            Some(4),
            "a variable is i32",
        );
        one_error(
            |g| *body_mut(g, 4) = e(ExprKind::Cast(DType::BF16, Box::new(var(0))), ScalarTy::F32),
            Some(4),
            "rounding to bf16 takes and gives f32",
        );
        one_error(
            |g| *body_mut(g, 4) = e(ExprKind::Cast(DType::I32, Box::new(var(0))), ScalarTy::F32),
            Some(4),
            "a cast to i32 is i32",
        );
        one_error(
            |g| {
                *body_mut(g, 9) =
                    cast(DType::F32, e(ExprKind::Segment { src: ValueId(0), value: Box::new(var(0)) }, ScalarTy::I32))
            },
            Some(9),
            "segment offsets %0 must be a 1-D i32 tensor, not f32[T, D]",
        );
        one_error(
            |g| {
                *body_mut(g, 9) = cast(
                    DType::F32,
                    e(ExprKind::Segment { src: ValueId(7), value: Box::new(cast(DType::F32, var(0))) }, ScalarTy::I32),
                )
            },
            Some(9),
            "segment takes and gives i32, not f32 to i32",
        );
        // The body's type is the node's compute type.
        one_error(|g| *body_mut(g, 4) = var(0), Some(4), "the body has type i32, but a f32 node computes f32");
    }

    #[test]
    fn compute_axes() {
        one_error(
            |g| {
                if let NodeKind::Compute { vars, .. } = &mut g.nodes[4].kind {
                    vars[1].extent = d("Q");
                }
            },
            Some(4),
            "output axis 1 has extent D, but its variable `d` ranges over Q",
        );
        let es = broken(|g| {
            if let NodeKind::Compute { vars, .. } = &mut g.nodes[4].kind {
                vars.truncate(1);
            }
        });
        // Too few variables, and the body's `d` is now out of range (twice: the condition and the load).
        assert!(es[0].message.contains("has 1 index variables for 2 output axes"), "{es:#?}");
        assert!(es.iter().all(|e| e.node == Some(ValueId(4))), "{es:#?}");
    }

    #[test]
    fn param_node_type() {
        // A node no one reads, so that nothing else breaks.
        one_error(
            |g| g.nodes.push(node(None, DType::F32, vec![d("N")], NodeKind::Param(1))),
            Some(10),
            "node type f32[N] differs from parameter `idx`: i32[N]",
        );
    }

    #[test]
    fn library_nodes() {
        one_error(
            |g| {
                if let NodeKind::TopK { k, .. } = &mut g.nodes[5].kind {
                    *k = Dim::constant(3);
                }
            },
            Some(5),
            "topk gives i32[T, 3], but the node is i32[T, 2]",
        );
        one_error(
            |g| {
                if let NodeKind::TopK { part, .. } = &mut g.nodes[5].kind {
                    *part = TopKPart::Values;
                }
            },
            Some(5),
            "topk gives f32[T, 2]",
        );
        one_error(
            |g| {
                if let NodeKind::TopK { axis, .. } = &mut g.nodes[5].kind {
                    *axis = 2;
                }
            },
            Some(5),
            "topk axis 2 is out of range for a rank-2 operand",
        );
        one_error(
            |g| {
                g.nodes[6].dtype = DType::F32;
                g.nodes[7].kind = NodeKind::CumSum { src: ValueId(1), axis: 0, exclusive: true };
            },
            Some(6),
            "argsort gives i32[N], but the node is f32[N]",
        );
        one_error(
            |g| {
                if let NodeKind::ArgSort { axis, .. } = &mut g.nodes[6].kind {
                    *axis = 1;
                }
            },
            Some(6),
            "argsort axis 1 is out of range",
        );
        one_error(
            |g| {
                if let NodeKind::CumSum { src, .. } = &mut g.nodes[7].kind {
                    *src = ValueId(2);
                }
            },
            Some(7),
            "cumsum gives f32[N], but the node is i32[N]",
        );
        one_error(
            |g| {
                if let NodeKind::BinCount { src, .. } = &mut g.nodes[8].kind {
                    *src = ValueId(0);
                }
            },
            Some(8),
            "bincount takes a 1-D i32 tensor, not f32[T, D]",
        );
        one_error(|g| g.nodes[8].shape = vec![d("N")], Some(8), "bincount gives i32[E], but the node is i32[N]");
    }

    #[test]
    fn cumsum_of_bool() {
        // A bool tensor to take a cumsum of: %3 is recomputed as `bool` (no output reads it).
        let es = broken(|g| {
            g.outputs.remove(1);
            g.results.remove(1);
            g.nodes[3] =
                compute(None, DType::Bool, vec![d("T")], vec![iv("t", d("T"))], bin(BinOp::Lt, var(0), int(1)));
            g.nodes[7].kind = NodeKind::CumSum { src: ValueId(3), axis: 0, exclusive: false };
            // %4 reads %3[t] as f32: fix it to a constant.
            if let ExprKind::Select(_, _, b) = &mut body_mut(g, 4).kind {
                **b = Expr::constant(Const::F32(0.0), Span::default());
            }
        });
        assert_eq!(es.len(), 1, "{es:#?}");
        assert_eq!(es[0].to_string(), "%7: cumsum of bool, which is not a number type");
    }

    #[test]
    fn result_with_wrong_shape() {
        let err = one_error(|g| g.results[1].value = ValueId(4), Some(4), "");
        assert_eq!(err.to_string(), "%4: result `s` is f32[T, D], but output `s` is declared f32[T]");
    }

    #[test]
    fn missing_inout_result() {
        let err = one_error(
            |g| {
                g.results.pop();
            },
            None,
            "",
        );
        assert_eq!(err.to_string(), "no result for inout parameter `m`");
    }

    #[test]
    fn result_list_rules() {
        one_error(|g| g.results[3].inout = None, None, "result `m` has inout index none, but it should be parameter 2");
        one_error(
            |g| g.results[0].inout = Some(0),
            None,
            "result `y` has inout index parameter 0, but it should be none",
        );
        one_error(
            |g| g.results.swap(0, 1),
            None,
            "results are out of order: expected y, s, k, m (outputs, then inout parameters), found s, y, k, m",
        );
        one_error(
            |g| g.results.push(result("z", 4, None)),
            None,
            "result `z` is neither an output nor an inout parameter",
        );
        one_error(|g| g.results.push(result("y", 4, None)), None, "`y` has more than one result (result 4)");
        // A missing output in the middle does not also report the rest as out of order.
        one_error(
            |g| {
                g.results.remove(1);
            },
            None,
            "no result for output `s`",
        );
    }

    #[test]
    fn signature_names() {
        one_error(|g| g.params[1].name = "x".into(), None, "parameter name `x` is used by parameters 0 and 1");
        one_error(
            |g| {
                g.outputs[1].name = "y".into();
                g.results[1].name = "y".into();
            },
            None,
            "output name `y` is used by outputs 0 and 1",
        );
        let es = broken(|g| {
            g.outputs[0].name = "x".into();
            g.results[0].name = "x".into();
        });
        assert_eq!(es.len(), 1, "{es:#?}");
        assert_eq!(es[0].message, "output `x` has the name of parameter 0");
    }

    #[test]
    fn independent_errors_are_all_reported() {
        let es = broken(|g| {
            *body_mut(g, 3) = reduce(ReduceOp::Sum, &[1], load(4, vec![var(0), var(1)], ScalarTy::F32));
            g.results.pop();
        });
        assert_eq!(es.len(), 2, "{es:#?}");
        assert_eq!(es[0].to_string(), "%3: reads %4, which is not defined before it (forward reference)");
        assert_eq!(es[1].to_string(), "no result for inout parameter `m`");
        // Errors in several nodes and several expressions of one node.
        let es = broken(|g| {
            if let ExprKind::Select(c, _, b) = &mut body_mut(g, 4).kind {
                **c = var(1);
                **b = load(3, vec![var(0), var(1)], ScalarTy::F32);
            }
            if let NodeKind::ArgSort { axis, .. } = &mut g.nodes[6].kind {
                *axis = 1;
            }
            g.nodes[8].shape = vec![d("N")];
        });
        let nodes: Vec<Option<ValueId>> = es.iter().map(|e| e.node).collect();
        assert_eq!(nodes, vec![Some(ValueId(4)), Some(ValueId(4)), Some(ValueId(6)), Some(ValueId(8))], "{es:#?}");
    }

    #[test]
    fn program_names_and_prefixes() {
        let mut bad = good();
        bad.results.pop();
        let p = Program { kernels: vec![good(), bad] };
        let es = verify_program(&p).unwrap_err();
        assert_eq!(es.len(), 2, "{es:#?}");
        assert_eq!(es[0].to_string(), "kernel name `good` is used by kernels 0 and 1");
        assert_eq!(es[1].to_string(), "kernel `good`: no result for inout parameter `m`");
    }

    #[test]
    fn hints() {
        let sp = Span::default();
        let tile = |axes: &[(&str, u64)]| HintKind::Tile(axes.iter().map(|(a, n)| (a.to_string(), *n)).collect());
        let mut g = good();
        g.hints = vec![
            Hint { node: ValueId(4), kind: HintKind::Unfused, span: sp },
            Hint { node: ValueId(4), kind: tile(&[("t", 64), ("D", 128)]), span: sp },
            Hint { node: ValueId(0), kind: tile(&[("T", 8)]), span: sp },
            Hint { node: ValueId(5), kind: HintKind::Unfused, span: sp },
        ];
        assert_eq!(verify(&g), Ok(()));
        let add = |h: Hint| move |g: &mut Graph| g.hints.push(h);
        one_error(
            add(Hint { node: ValueId(40), kind: HintKind::Unfused, span: sp }),
            None,
            "%?40, which is out of range",
        );
        one_error(add(Hint { node: ValueId(3), kind: tile(&[("x", 4)]), span: sp }), Some(3), "axes: t, T");
        one_error(add(Hint { node: ValueId(3), kind: tile(&[("d", 4)]), span: sp }), Some(3), "not an axis");
        one_error(add(Hint { node: ValueId(3), kind: tile(&[("t", 0)]), span: sp }), Some(3), "tile size of 0");
        one_error(add(Hint { node: ValueId(3), kind: tile(&[("t", 4), ("t", 8)]), span: sp }), Some(3), "twice");
        one_error(add(Hint { node: ValueId(3), kind: tile(&[]), span: sp }), Some(3), "tiles no axis");
        one_error(
            |g| {
                g.hints.push(Hint { node: ValueId(4), kind: tile(&[("d", 2)]), span: sp });
                g.hints.push(Hint { node: ValueId(4), kind: tile(&[("t", 2)]), span: sp });
            },
            Some(4),
            "two tile hints: hint 0 and hint 1",
        );
        let text = crate::print::print_graph(&g);
        assert!(text.contains("  #[unfused] #[tile(t: 64, D: 128)]\n"), "{text}");
    }

    #[test]
    fn never_panics_on_mangled_ids() {
        // Every id of the good graph replaced by every small value: the verifier and printer must cope.
        for id in 0..14u32 {
            for at in 0..10usize {
                let mut g = good();
                match &mut g.nodes[at].kind {
                    NodeKind::Param(p) => *p = id as usize,
                    NodeKind::Compute { body, .. } => {
                        fn mangle(e: &mut Expr, id: u32) {
                            match &mut e.kind {
                                ExprKind::Var(v) => *v = VarId(id),
                                ExprKind::Load { src, idx } => {
                                    *src = ValueId(id);
                                    idx.iter_mut().for_each(|x| mangle(x, id));
                                }
                                ExprKind::Segment { src, value } => {
                                    *src = ValueId(id);
                                    mangle(value, id);
                                }
                                ExprKind::Reduce { vars, body, .. } => {
                                    vars.iter_mut().for_each(|v| *v = VarId(id));
                                    mangle(body, id);
                                }
                                ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => mangle(a, id),
                                ExprKind::Binary(_, a, b) => {
                                    mangle(a, id);
                                    mangle(b, id);
                                }
                                ExprKind::Select(c, a, b) => {
                                    mangle(c, id);
                                    mangle(a, id);
                                    mangle(b, id);
                                }
                                ExprKind::Const(_) | ExprKind::Dim(_) => {}
                            }
                        }
                        mangle(body, id);
                    }
                    NodeKind::TopK { src, axis, .. }
                    | NodeKind::ArgSort { src, axis, .. }
                    | NodeKind::CumSum { src, axis, .. } => {
                        *src = ValueId(id);
                        *axis = id as usize;
                    }
                    NodeKind::BinCount { src, .. } => *src = ValueId(id),
                }
                g.results[at % 4].value = ValueId(id);
                g.results[(at + 1) % 4].inout = Some(id as usize);
                let _ = crate::print::print_graph(&g);
                let _ = verify(&g);
                let mut empty = g.clone();
                empty.nodes.clear();
                let _ = crate::print::print_graph(&empty);
                assert!(verify(&empty).is_err());
            }
        }
    }
}
