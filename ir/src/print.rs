//! The stable text printer of the graph IR.
//!
//! This text is what `kc build --emit graph` prints and what snapshot tests hold, so it is deterministic,
//! complete (every node with its dtype and shape) and never panics, even on a malformed graph.
//!
//! ```text
//! /// RMSNorm forward; keeps the reciprocal RMS for the backward pass.
//! kernel rmsnorm(x: bf16[T, D], w: bf16[D], eps: f32) -> (y: bf16[T, D], rstd: f32[T])
//!   where K == 8, H % G == 0
//!   assert K * T == T * 8  (reshape keeps the number of elements)
//! {
//!   %0 x: bf16[T, D] = param
//!   %1 w: bf16[D] = param
//!   %2 eps: f32 = param
//!   %3 rstd: f32[T] = compute [t] rsqrt(sum[d < D](%0[t, d] * %0[t, d]) / D + %2)
//!   %4 y: bf16[T, D] = compute [t, d] %0[t, d] * %3[t] * %1[d]
//!   return y = %4, rstd = %3
//! }
//! ```
//!
//! Format decisions beyond the obvious:
//! - The header has no `-> ...` when the kernel has no outputs; the `where` line joins each constraint's
//!   `text` (or `lhs op rhs` when the text is empty) with `, `; an assert line omits `  (what)` when `what`
//!   is empty. A graph without results prints a bare `return`.
//! - A `Param(i)` node prints as `param` when its name is the name of `params[i]`, and as `param(i)`
//!   otherwise (no name, another name, or an index out of range), so the text always identifies the parameter.
//! - `compute [v0, ..]` lists the output axes; an axis whose extent differs from the node's dim (a malformed
//!   node) prints as `v < extent`, and a missing axis variable as `?`.
//! - Two variables of one node with the same name print as `name`, `name.1`, `name.2`, ... in `VarId`
//!   order (a suffix already taken by another variable is skipped); an empty name prints as `v<index>`.
//!   An out-of-range `VarId` prints as `?v<index>`, an out-of-range `ValueId` as `%?<index>`.
//! - Operators print infix with minimal parentheses by precedence (lowest first: `||`; `&&`; comparisons;
//!   `+ -`; `* / %`; unary `- !`). Binary operators are left-associative, so a right operand of the same
//!   precedence keeps its parentheses. Comparisons are non-associative: a comparison operand of a comparison
//!   is always parenthesized (`(a < b) == c`), since `a < b == c` reads as a chain in Python.
//! - A right operand of a binary operator that starts with a minus sign (a negative constant or dim, or a
//!   negation) is parenthesized: `x * (-4.775)`, `a - (-b)`; a left operand is not: `-4.775 * x`.
//!   The operand of a prefix `-`/`!` is parenthesized unless it is an atom: `-(a + b)`, `-(-x)`, `-(-1.0)`.
//! - A dim value prints with `Dim`'s `Display` (`T - S` shows as `-S + T`) and is parenthesized like the
//!   expression it displays as: a sum like an `+`, a product or quotient like a `*`, `-K` like a negation.
//! - A node's schedule hints follow its line after two spaces, in the order of `Graph::hints`, as written in
//!   source: `%3 rstd: f32[T] = compute [t] ...  #[unfused] #[tile(t: 64)]`. A hint on a node that does not
//!   exist prints after the nodes as `hint on %?12: #[unfused]`.
//! - `f32` constants print in the shortest form that round-trips: positional notation (always with a `.`)
//!   for decimal exponents in `-5..16`, scientific otherwise (`1e-7`, `3.5e20`); `inf`, `-inf`, `nan`.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::*;
use crate::infix::*;
use std::fmt::Write;

/// The text of a whole kernel, ending with a newline.
pub fn print_graph(g: &Graph) -> String {
    let mut out = String::new();
    if let Some(doc) = &g.doc {
        for line in doc.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                out.push_str("///\n");
            } else {
                let _ = writeln!(out, "/// {line}");
            }
        }
    }
    let params: Vec<String> = g.params.iter().map(print_param).collect();
    let _ = write!(out, "kernel {}({})", g.name, params.join(", "));
    match g.outputs.as_slice() {
        [] => {}
        [o] => {
            let _ = write!(out, " -> {}: {}", o.name, print_type(o.dtype, &o.shape));
        }
        outs => {
            let outs: Vec<String> =
                outs.iter().map(|o| format!("{}: {}", o.name, print_type(o.dtype, &o.shape))).collect();
            let _ = write!(out, " -> ({})", outs.join(", "));
        }
    }
    out.push('\n');
    if !g.constraints.is_empty() {
        let cs: Vec<String> = g
            .constraints
            .iter()
            .map(|c| {
                if c.text.trim().is_empty() {
                    format!("{} {} {}", c.lhs, c.op.symbol(), c.rhs)
                } else {
                    c.text.trim().to_string()
                }
            })
            .collect();
        let _ = writeln!(out, "  where {}", cs.join(", "));
    }
    for a in &g.asserts {
        let _ = write!(out, "  assert {} == {}", a.lhs, a.rhs);
        if !a.what.is_empty() {
            let _ = write!(out, "  ({})", a.what);
        }
        out.push('\n');
    }
    out.push_str("{\n");
    for (i, node) in g.nodes.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&print_node(g, i, node));
        let hints: Vec<String> = g.hints.iter().filter(|h| h.node.index() == i).map(|h| print_hint(&h.kind)).collect();
        if !hints.is_empty() {
            out.push_str("  ");
            out.push_str(&hints.join(" "));
        }
        out.push('\n');
    }
    for h in g.hints.iter().filter(|h| h.node.index() >= g.nodes.len()) {
        let _ = writeln!(out, "  hint on {}: {}", value_ref(g, h.node), print_hint(&h.kind));
    }
    out.push_str("  return");
    for (i, r) in g.results.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        let _ = write!(out, "{} = {}", r.name, value_ref(g, r.value));
        if r.inout.is_some() {
            out.push_str(" (inout)");
        }
    }
    out.push_str("\n}\n");
    out
}

/// The text of every kernel, in order, separated by a blank line.
pub fn print_program(p: &Program) -> String {
    p.kernels.iter().map(print_graph).collect::<Vec<_>>().join("\n")
}

/// An expression of a node whose index variables are `vars`.
pub fn print_expr(g: &Graph, vars: &[IndexVar], e: &Expr) -> String {
    let names = var_names(vars);
    ExprPrinter { g, vars, names: &names }.expr(e).text
}

/// A schedule hint as written in source: `#[unfused]`, `#[tile(t: 64, d: 128)]`.
pub fn print_hint(h: &HintKind) -> String {
    match h {
        HintKind::Unfused => "#[unfused]".to_string(),
        HintKind::Tile(axes) => {
            let axes: Vec<String> = axes.iter().map(|(a, n)| format!("{a}: {n}")).collect();
            format!("#[tile({})]", axes.join(", "))
        }
    }
}

/// `bf16[T, D]`; a scalar is just `f32`.
pub fn print_type(dtype: DType, shape: &[Dim]) -> String {
    if shape.is_empty() {
        dtype.name().to_string()
    } else {
        format!("{}[{}]", dtype.name(), join_dims(shape))
    }
}

/// The printed (unambiguous) name of each variable: later duplicates get `.1`, `.2`, ... in `VarId` order.
pub(crate) fn var_names(vars: &[IndexVar]) -> Vec<String> {
    let base: Vec<String> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| if v.name.is_empty() { format!("v{i}") } else { v.name.clone() })
        .collect();
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(vars.len());
    for (i, b) in base.iter().enumerate() {
        // The first variable with a name keeps it; a later one takes the first free suffix that no variable
        // of the node is named by.
        let first = base.iter().position(|x| x == b) == Some(i);
        let name = if first && !taken.contains(b) {
            b.clone()
        } else {
            let mut k = 1usize;
            loop {
                let cand = format!("{b}.{k}");
                if !taken.contains(&cand) && !base.contains(&cand) {
                    break cand;
                }
                k += 1;
            }
        };
        taken.insert(name.clone());
        out.push(name);
    }
    out
}

/// `%N`, or `%?N` when `v` is not a node of `g`.
pub(crate) fn value_ref(g: &Graph, v: ValueId) -> String {
    if v.index() < g.nodes.len() {
        format!("%{}", v.0)
    } else {
        format!("%?{}", v.0)
    }
}

fn join_dims(dims: &[Dim]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn print_param(p: &Param) -> String {
    match &p.kind {
        ParamKind::Dim => format!("{}: dim", p.name),
        ParamKind::Tensor { dtype, shape, inout } => {
            format!("{}: {}{}", p.name, if *inout { "inout " } else { "" }, print_type(*dtype, shape))
        }
    }
}

fn print_node(g: &Graph, i: usize, node: &Node) -> String {
    let mut s = format!("%{i}");
    if let Some(name) = &node.name {
        s.push(' ');
        s.push_str(name);
    }
    let _ = write!(s, ": {} = ", print_type(node.dtype, &node.shape));
    match &node.kind {
        NodeKind::Param(p) => {
            if g.params.get(*p).is_some_and(|param| node.name.as_deref() == Some(param.name.as_str())) {
                s.push_str("param");
            } else {
                let _ = write!(s, "param({p})");
            }
        }
        NodeKind::Compute { vars, body } => {
            let names = var_names(vars);
            let axes: Vec<String> = (0..node.rank())
                .map(|a| match (vars.get(a), names.get(a)) {
                    (Some(v), Some(n)) if node.shape.get(a) == Some(&v.extent) => n.clone(),
                    (Some(v), Some(n)) => format!("{n} < {}", v.extent),
                    _ => "?".to_string(),
                })
                .collect();
            let body = ExprPrinter { g, vars, names: &names }.expr(body).text;
            let _ = write!(s, "compute [{}] {}", axes.join(", "), body);
        }
        NodeKind::TopK { src, k, axis, part } => {
            let part = match part {
                TopKPart::Values => "values",
                TopKPart::Indices => "indices",
            };
            let _ = write!(s, "topk.{part}({}, k = {k}, axis = {axis})", value_ref(g, *src));
        }
        NodeKind::ArgSort { src, axis, descending } => {
            let _ = write!(s, "argsort({}, axis = {axis}, descending = {descending})", value_ref(g, *src));
        }
        NodeKind::CumSum { src, axis, exclusive } => {
            let _ = write!(s, "cumsum({}, axis = {axis}, exclusive = {exclusive})", value_ref(g, *src));
        }
        NodeKind::BinCount { src, n } => {
            let _ = write!(s, "bincount({}, n = {n})", value_ref(g, *src));
        }
    }
    s
}

struct ExprPrinter<'a> {
    g: &'a Graph,
    vars: &'a [IndexVar],
    names: &'a [String],
}

impl ExprPrinter<'_> {
    fn var(&self, v: VarId) -> String {
        match self.names.get(v.index()) {
            Some(n) => n.clone(),
            None => format!("?v{}", v.0),
        }
    }

    fn args(&self, es: &[&Expr]) -> String {
        es.iter().map(|e| self.expr(e).text).collect::<Vec<_>>().join(", ")
    }

    fn expr(&self, e: &Expr) -> Printed {
        match &e.kind {
            ExprKind::Const(c) => {
                let text = print_const(*c);
                let prec = if text.starts_with('-') { P_UNARY } else { P_ATOM };
                Printed { text, prec }
            }
            ExprKind::Var(v) => Printed::atom(self.var(*v)),
            ExprKind::Dim(d) => print_dim(d),
            ExprKind::Load { src, idx } => {
                let src = value_ref(self.g, *src);
                if idx.is_empty() {
                    Printed::atom(src)
                } else {
                    let idx: Vec<&Expr> = idx.iter().collect();
                    Printed::atom(format!("{src}[{}]", self.args(&idx)))
                }
            }
            ExprKind::Unary(op @ (UnOp::Neg | UnOp::Not), a) => {
                let sym = if *op == UnOp::Neg { "-" } else { "!" };
                let a = self.expr(a);
                let paren = a.prec < P_ATOM;
                Printed { text: format!("{sym}{}", a.paren_if(paren)), prec: P_UNARY }
            }
            ExprKind::Unary(op, a) => Printed::atom(format!("{}({})", op.name(), self.expr(a).text)),
            ExprKind::Binary(op, a, b) => match (op.symbol(), bin_prec(*op)) {
                (Some(sym), Some(p)) => {
                    let (a, b) = (self.expr(a), self.expr(b));
                    let nonassoc = p == P_CMP;
                    let pa = a.prec < p || (nonassoc && a.prec == p);
                    let pb = b.prec <= p || b.text.starts_with('-');
                    Printed { text: format!("{} {sym} {}", a.paren_if(pa), b.paren_if(pb)), prec: p }
                }
                _ => Printed::atom(format!("{}({})", op.name(), self.args(&[a, b]))),
            },
            ExprKind::Select(c, a, b) => Printed::atom(format!("where({})", self.args(&[c, a, b]))),
            ExprKind::Cast(t, a) => Printed::atom(format!("{}({})", t.name(), self.expr(a).text)),
            ExprKind::Reduce { op, vars, body } => {
                let header: Vec<String> = vars
                    .iter()
                    .map(|v| match self.vars.get(v.index()) {
                        Some(iv) => format!("{} < {}", self.var(*v), iv.extent),
                        None => self.var(*v),
                    })
                    .collect();
                Printed::atom(format!("{}[{}]({})", op.name(), header.join(", "), self.expr(body).text))
            }
            ExprKind::Segment { src, value } => {
                Printed::atom(format!("segment({}, {})", value_ref(self.g, *src), self.expr(value).text))
            }
        }
    }
}

/// A dim value, with the precedence of the outermost operator of its display.
fn print_dim(d: &Dim) -> Printed {
    let text = d.to_string();
    // Scan the top level (outside parentheses) for binary operators; `Dim` writes them with spaces around.
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    let (mut add, mut mul) = (false, false);
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'+' | b'-' | b'*' | b'/' | b'%' if depth == 0 && i > 0 && bytes.get(i - 1) == Some(&b' ') => {
                if matches!(c, b'+' | b'-') {
                    add = true;
                } else {
                    mul = true;
                }
            }
            _ => {}
        }
    }
    let prec = if add {
        P_ADD
    } else if mul {
        P_MUL
    } else if text.starts_with('-') {
        P_UNARY
    } else {
        P_ATOM
    };
    Printed { text, prec }
}

/// A constant: floats always read as floats (`1.0`, `1e-7`, `inf`, `nan`).
pub(crate) fn print_const(c: Const) -> String {
    match c {
        Const::F32(x) => print_f32(x),
        Const::I32(i) => i.to_string(),
        Const::Bool(b) => b.to_string(),
    }
}

fn print_f32(x: f32) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // `{:e}` and `{}` both give the shortest digits that round-trip.
    let sci = format!("{x:e}");
    let exp: i32 = sci.rsplit('e').next().and_then(|e| e.parse().ok()).unwrap_or(0);
    if (-5..16).contains(&exp) {
        let s = x.to_string();
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        sci
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ScalarTy;
    use crate::span::Span;

    fn d(s: &str) -> Dim {
        Dim::sym(s)
    }

    fn e(kind: ExprKind, ty: ScalarTy) -> Expr {
        Expr { kind, ty, span: Span::default() }
    }

    fn f(x: f32) -> Expr {
        Expr::constant(Const::F32(x), Span::default())
    }

    fn int(x: i64) -> Expr {
        Expr::constant(Const::I32(x), Span::default())
    }

    fn var(i: u32) -> Expr {
        e(ExprKind::Var(VarId(i)), ScalarTy::I32)
    }

    fn load(src: u32, idx: Vec<Expr>, ty: ScalarTy) -> Expr {
        e(ExprKind::Load { src: ValueId(src), idx }, ty)
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(a.ty);
        e(ExprKind::Binary(op, Box::new(a), Box::new(b)), ty)
    }

    fn un(op: UnOp, a: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(a.ty);
        e(ExprKind::Unary(op, Box::new(a)), ty)
    }

    fn iv(name: &str, extent: Dim) -> IndexVar {
        IndexVar { name: name.to_string(), extent }
    }

    fn node(name: Option<&str>, dtype: DType, shape: Vec<Dim>, kind: NodeKind) -> Node {
        Node { name: name.map(str::to_string), dtype, shape, kind, span: Span::default() }
    }

    fn tensor(name: &str, dtype: DType, shape: Vec<Dim>, inout: bool) -> Param {
        Param { name: name.to_string(), kind: ParamKind::Tensor { dtype, shape, inout }, span: Span::default() }
    }

    fn graph(name: &str, params: Vec<Param>, outputs: Vec<OutputDecl>, nodes: Vec<Node>) -> Graph {
        Graph {
            name: name.to_string(),
            doc: None,
            span: Span::default(),
            params,
            outputs,
            dims: Vec::new(),
            fixed: Vec::new(),
            constraints: Vec::new(),
            asserts: Vec::new(),
            nodes,
            results: Vec::new(),
            hints: Vec::new(),
        }
    }

    fn out(name: &str, dtype: DType, shape: Vec<Dim>) -> OutputDecl {
        OutputDecl { name: name.to_string(), dtype, shape, span: Span::default() }
    }

    /// The rmsnorm kernel of the brief.
    fn rmsnorm() -> Graph {
        let (t, dd) = (d("T"), d("D"));
        let x = |a: u32, b: u32| load(0, vec![var(a), var(b)], ScalarTy::F32);
        let sum = e(
            ExprKind::Reduce {
                op: ReduceOp::Sum,
                vars: vec![VarId(1)],
                body: Box::new(bin(BinOp::Mul, x(0, 1), x(0, 1))),
            },
            ScalarTy::F32,
        );
        let dim_d = e(ExprKind::Dim(d("D")), ScalarTy::I32);
        let dim_f = e(ExprKind::Cast(DType::F32, Box::new(dim_d)), ScalarTy::F32);
        let rstd_body = un(UnOp::Rsqrt, bin(BinOp::Add, bin(BinOp::Div, sum, dim_f), load(2, vec![], ScalarTy::F32)));
        let y_body = bin(
            BinOp::Mul,
            bin(BinOp::Mul, x(0, 1), load(3, vec![var(0)], ScalarTy::F32)),
            load(1, vec![var(1)], ScalarTy::F32),
        );
        let mut g = graph(
            "rmsnorm",
            vec![
                tensor("x", DType::BF16, vec![t.clone(), dd.clone()], false),
                tensor("w", DType::BF16, vec![dd.clone()], false),
                tensor("eps", DType::F32, vec![], false),
            ],
            vec![out("y", DType::BF16, vec![t.clone(), dd.clone()]), out("rstd", DType::F32, vec![t.clone()])],
            vec![
                node(Some("x"), DType::BF16, vec![t.clone(), dd.clone()], NodeKind::Param(0)),
                node(Some("w"), DType::BF16, vec![dd.clone()], NodeKind::Param(1)),
                node(Some("eps"), DType::F32, vec![], NodeKind::Param(2)),
                node(
                    Some("rstd"),
                    DType::F32,
                    vec![t.clone()],
                    NodeKind::Compute { vars: vec![iv("t", t.clone()), iv("d", dd.clone())], body: rstd_body },
                ),
                node(
                    Some("y"),
                    DType::BF16,
                    vec![t.clone(), dd.clone()],
                    NodeKind::Compute { vars: vec![iv("t", t.clone()), iv("d", dd.clone())], body: y_body },
                ),
            ],
        );
        g.doc = Some("RMSNorm forward; keeps the reciprocal RMS for the backward pass.".to_string());
        g.results = vec![
            Result_ { name: "y".to_string(), value: ValueId(4), inout: None },
            Result_ { name: "rstd".to_string(), value: ValueId(3), inout: None },
        ];
        g
    }

    #[test]
    fn prints_rmsnorm() {
        let expected = "\
/// RMSNorm forward; keeps the reciprocal RMS for the backward pass.
kernel rmsnorm(x: bf16[T, D], w: bf16[D], eps: f32) -> (y: bf16[T, D], rstd: f32[T])
{
  %0 x: bf16[T, D] = param
  %1 w: bf16[D] = param
  %2 eps: f32 = param
  %3 rstd: f32[T] = compute [t] rsqrt(sum[d < D](%0[t, d] * %0[t, d]) / f32(D) + %2)
  %4 y: bf16[T, D] = compute [t, d] %0[t, d] * %3[t] * %1[d]
  return y = %4, rstd = %3
}
";
        assert_eq!(print_graph(&rmsnorm()), expected);
    }

    #[test]
    fn prints_hints_after_their_node() {
        let mut g = rmsnorm();
        let sp = Span::default();
        g.hints = vec![
            Hint { node: ValueId(3), kind: HintKind::Unfused, span: sp },
            Hint { node: ValueId(4), kind: HintKind::Tile(vec![("t".into(), 64), ("d".into(), 128)]), span: sp },
            Hint { node: ValueId(3), kind: HintKind::Tile(vec![("t".into(), 8)]), span: sp },
            Hint { node: ValueId(9), kind: HintKind::Unfused, span: sp },
        ];
        let text = print_graph(&g);
        assert!(
            text.contains(
                "  %3 rstd: f32[T] = compute [t] rsqrt(sum[d < D](%0[t, d] * %0[t, d]) / f32(D) + %2)  \
                 #[unfused] #[tile(t: 8)]\n"
            ),
            "{text}"
        );
        assert!(text.contains("%1[d]  #[tile(t: 64, d: 128)]\n  hint on %?9: #[unfused]\n  return"), "{text}");
        assert_eq!(print_hint(&HintKind::Tile(vec![("N".into(), 1024)])), "#[tile(N: 1024)]");
    }

    /// A graph with every node kind and every expression kind.
    fn everything() -> Graph {
        let (t, n, e_) = (d("T"), d("N"), d("E"));
        let k2 = Dim::constant(2);
        let fl = |i: u32| load(0, vec![var(i)], ScalarTy::F32);
        // %1: where(t < 3 && !(t == 0) || false, -(a + b) * c, ...) — a long body with every kind.
        let cond = bin(
            BinOp::Or,
            bin(BinOp::And, bin(BinOp::Lt, var(0), int(3)), un(UnOp::Not, bin(BinOp::Eq, var(0), int(0)))),
            Expr::constant(Const::Bool(false), Span::default()),
        );
        let a_plus_b = bin(BinOp::Add, fl(0), f(1.0));
        let neg_sum = un(UnOp::Neg, a_plus_b.clone());
        let times_c = bin(BinOp::Mul, a_plus_b.clone(), f(0.5));
        let a_minus_bc = bin(BinOp::Sub, fl(0), bin(BinOp::Sub, f(1e-7), fl(0)));
        let ab_minus_c = bin(BinOp::Sub, bin(BinOp::Sub, fl(0), f(-4.775)), f(f32::INFINITY));
        let pow = e(ExprKind::Binary(BinOp::Pow, Box::new(neg_sum), Box::new(times_c)), ScalarTy::F32);
        let mn = bin(BinOp::Min, a_minus_bc, ab_minus_c);
        let mx = bin(BinOp::Max, pow, mn);
        let red = e(
            ExprKind::Reduce {
                op: ReduceOp::Max,
                vars: vec![VarId(1), VarId(2)],
                body: Box::new(bin(
                    BinOp::Mul,
                    load(0, vec![var(1)], ScalarTy::F32),
                    e(ExprKind::Cast(DType::F32, Box::new(var(2))), ScalarTy::F32),
                )),
            },
            ScalarTy::F32,
        );
        let bf = e(ExprKind::Cast(DType::BF16, Box::new(red)), ScalarTy::F32);
        let sel = e(
            ExprKind::Select(Box::new(cond), Box::new(bin(BinOp::Add, mx, bf)), Box::new(f(f32::NEG_INFINITY))),
            ScalarTy::F32,
        );
        let body1 = un(UnOp::Exp, sel);
        // %2: i32 body with dims, segment, argmax, casts, mod and the i + (T - S) case.
        let t_minus_s = e(ExprKind::Dim(d("T").sub(&d("S"))), ScalarTy::I32);
        let seg = e(
            ExprKind::Segment { src: ValueId(6), value: Box::new(bin(BinOp::Add, var(0), t_minus_s)) },
            ScalarTy::I32,
        );
        let argmax = e(
            ExprKind::Reduce {
                op: ReduceOp::ArgMax,
                vars: vec![VarId(1)],
                body: Box::new(load(0, vec![var(1)], ScalarTy::F32)),
            },
            ScalarTy::I32,
        );
        let neg_k = e(ExprKind::Dim(d("K").neg()), ScalarTy::I32);
        let k_times_t = e(ExprKind::Dim(d("K").mul(&d("T"))), ScalarTy::I32);
        let body2 = bin(
            BinOp::Add,
            bin(BinOp::Mod, seg, bin(BinOp::Mul, argmax, k_times_t)),
            bin(
                BinOp::Sub,
                bin(BinOp::Mul, neg_k.clone(), int(-2)),
                e(
                    ExprKind::Cast(
                        DType::I32,
                        Box::new(e(ExprKind::Cast(DType::Bool, Box::new(un(UnOp::Abs, var(0)))), ScalarTy::Bool)),
                    ),
                    ScalarTy::I32,
                ),
            ),
        );
        let body2 = bin(BinOp::Sub, body2, un(UnOp::Neg, neg_k));
        let f16 = e(ExprKind::Cast(DType::F16, Box::new(un(UnOp::Sigmoid, fl(0)))), ScalarTy::F32);
        let mut g = graph(
            "everything",
            vec![
                tensor("x", DType::F32, vec![t.clone()], false),
                Param { name: "E".to_string(), kind: ParamKind::Dim, span: Span::default() },
                tensor("m", DType::F32, vec![n.clone()], true),
            ],
            vec![out("ys", DType::BF16, vec![t.clone()])],
            vec![
                node(Some("x"), DType::F32, vec![t.clone()], NodeKind::Param(0)),
                node(
                    Some("ys"),
                    DType::BF16,
                    vec![t.clone()],
                    NodeKind::Compute { vars: vec![iv("t", t.clone()), iv("r", d("R")), iv("i", d("S"))], body: body1 },
                ),
                node(
                    None,
                    DType::I32,
                    vec![t.clone()],
                    NodeKind::Compute { vars: vec![iv("t", t.clone()), iv("t", t.clone())], body: body2 },
                ),
                node(
                    None,
                    DType::I32,
                    vec![t.clone(), k2.clone()],
                    NodeKind::TopK { src: ValueId(1), k: k2.clone(), axis: 1, part: TopKPart::Indices },
                ),
                node(
                    None,
                    DType::BF16,
                    vec![t.clone(), k2.clone()],
                    NodeKind::TopK { src: ValueId(1), k: k2.clone(), axis: 1, part: TopKPart::Values },
                ),
                node(
                    None,
                    DType::I32,
                    vec![t.clone()],
                    NodeKind::ArgSort { src: ValueId(2), axis: 0, descending: false },
                ),
                node(None, DType::I32, vec![t.clone()], NodeKind::CumSum { src: ValueId(5), axis: 0, exclusive: true }),
                node(None, DType::I32, vec![e_.clone()], NodeKind::BinCount { src: ValueId(5), n: e_.clone() }),
                node(Some("m"), DType::F32, vec![n.clone()], NodeKind::Param(2)),
                node(
                    Some("m"),
                    DType::F32,
                    vec![n.clone()],
                    NodeKind::Compute {
                        vars: vec![iv("n", n.clone())],
                        body: bin(BinOp::Add, load(8, vec![var(0)], ScalarTy::F32), f16),
                    },
                ),
                node(None, DType::F32, vec![], NodeKind::Compute { vars: vec![], body: f(1e30) }),
            ],
        );
        g.doc = Some("Every node kind.\n\nTwo paragraphs.".to_string());
        g.constraints = vec![
            Constraint {
                lhs: d("K"),
                op: CmpOp::Eq,
                rhs: Dim::constant(8),
                span: Span::default(),
                text: "K == 8".into(),
            },
            Constraint { lhs: d("S"), op: CmpOp::Le, rhs: d("T"), span: Span::default(), text: String::new() },
        ];
        g.asserts = vec![DimAssert {
            lhs: d("K").mul(&d("T")),
            rhs: d("T").mul(&Dim::constant(8)),
            span: Span::default(),
            what: "reshape keeps the number of elements".into(),
        }];
        g.results = vec![
            Result_ { name: "ys".to_string(), value: ValueId(1), inout: None },
            Result_ { name: "m".to_string(), value: ValueId(9), inout: Some(2) },
        ];
        g
    }

    #[test]
    fn prints_every_kind() {
        let expected = "\
/// Every node kind.
///
/// Two paragraphs.
kernel everything(x: f32[T], E: dim, m: inout f32[N]) -> ys: bf16[T]
  where K == 8, S <= T
  assert K * T == 8 * T  (reshape keeps the number of elements)
{
  %0 x: f32[T] = param
  %1 ys: bf16[T] = compute [t] exp(where(t < 3 && !(t == 0) || false, \
max(pow(-(%0[t] + 1.0), (%0[t] + 1.0) * 0.5), min(%0[t] - (1e-7 - %0[t]), %0[t] - (-4.775) - inf)) \
+ bf16(max[r < R, i < S](%0[r] * f32(i))), -inf))
  %2: i32[T] = compute [t] segment(%6, t + (-S + T)) % (argmax[t.1 < T](%0[t.1]) * (K * T)) \
+ (-K * (-2) - i32(bool(abs(t)))) - (-(-K))
  %3: i32[T, 2] = topk.indices(%1, k = 2, axis = 1)
  %4: bf16[T, 2] = topk.values(%1, k = 2, axis = 1)
  %5: i32[T] = argsort(%2, axis = 0, descending = false)
  %6: i32[T] = cumsum(%5, axis = 0, exclusive = true)
  %7: i32[E] = bincount(%5, n = E)
  %8 m: f32[N] = param
  %9 m: f32[N] = compute [n] %8[n] + f16(sigmoid(%0[n]))
  %10: f32 = compute [] 1e30
  return ys = %1, m = %9 (inout)
}
";
        let g = everything();
        let text = print_graph(&g);
        assert_eq!(text, expected, "\n{text}");
        // Deterministic.
        assert_eq!(print_graph(&g), text);
        assert_eq!(print_graph(&g.clone()), text);
    }

    #[test]
    fn precedence_and_parentheses() {
        let g = graph("p", vec![], vec![], vec![]);
        let vars = vec![iv("a", d("A")), iv("b", d("B")), iv("c", d("C"))];
        let (a, b, c) = (var(0), var(1), var(2));
        let p = |x: &Expr| print_expr(&g, &vars, x);
        assert_eq!(p(&bin(BinOp::Sub, a.clone(), bin(BinOp::Sub, b.clone(), c.clone()))), "a - (b - c)");
        assert_eq!(p(&bin(BinOp::Sub, bin(BinOp::Sub, a.clone(), b.clone()), c.clone())), "a - b - c");
        assert_eq!(p(&bin(BinOp::Mul, bin(BinOp::Add, a.clone(), b.clone()), c.clone())), "(a + b) * c");
        assert_eq!(p(&bin(BinOp::Add, a.clone(), bin(BinOp::Mul, b.clone(), c.clone()))), "a + b * c");
        assert_eq!(p(&bin(BinOp::Div, a.clone(), bin(BinOp::Mul, b.clone(), c.clone()))), "a / (b * c)");
        assert_eq!(p(&un(UnOp::Neg, bin(BinOp::Add, a.clone(), b.clone()))), "-(a + b)");
        assert_eq!(p(&bin(BinOp::Mul, un(UnOp::Neg, a.clone()), b.clone())), "-a * b");
        assert_eq!(p(&bin(BinOp::Mul, a.clone(), un(UnOp::Neg, b.clone()))), "a * (-b)");
        assert_eq!(p(&bin(BinOp::Mul, f(-4.775), f(2.0))), "-4.775 * 2.0");
        assert_eq!(p(&bin(BinOp::Mul, f(2.0), f(-4.775))), "2.0 * (-4.775)");
        assert_eq!(p(&un(UnOp::Neg, int(-1))), "-(-1)");
        let ts = e(ExprKind::Dim(d("T").sub(&d("S"))), ScalarTy::I32);
        assert_eq!(p(&bin(BinOp::Add, a.clone(), ts.clone())), "a + (-S + T)");
        assert_eq!(p(&bin(BinOp::Sub, ts.clone(), a.clone())), "-S + T - a");
        assert_eq!(p(&bin(BinOp::Mul, ts.clone(), a.clone())), "(-S + T) * a");
        let hg = e(ExprKind::Dim(d("H").div(&d("G"))), ScalarTy::I32);
        assert_eq!(p(&bin(BinOp::Div, a.clone(), hg.clone())), "a / (H / G)");
        assert_eq!(p(&bin(BinOp::Add, a.clone(), hg.clone())), "a + H / G");
        assert_eq!(p(&bin(BinOp::Mul, a.clone(), e(ExprKind::Dim(Dim::constant(-3)), ScalarTy::I32))), "a * (-3)");
        // Comparisons are not chained.
        let lt = bin(BinOp::Lt, a.clone(), b.clone());
        let eq = bin(BinOp::Eq, lt.clone(), Expr::constant(Const::Bool(true), Span::default()));
        assert_eq!(p(&eq), "(a < b) == true");
        assert_eq!(
            p(&bin(BinOp::And, lt.clone(), bin(BinOp::Or, lt.clone(), lt.clone()))),
            "a < b && (a < b || a < b)"
        );
        assert_eq!(p(&bin(BinOp::Or, bin(BinOp::And, lt.clone(), lt.clone()), lt.clone())), "a < b && a < b || a < b");
        assert_eq!(p(&un(UnOp::Not, lt.clone())), "!(a < b)");
        assert_eq!(p(&un(UnOp::Neg, un(UnOp::Neg, a.clone()))), "-(-a)");
        assert_eq!(p(&bin(BinOp::Sub, a.clone(), un(UnOp::Neg, b.clone()))), "a - (-b)");
        assert_eq!(p(&bin(BinOp::Mod, bin(BinOp::Mod, a.clone(), b.clone()), c.clone())), "a % b % c");
        assert_eq!(p(&bin(BinOp::Mod, a.clone(), bin(BinOp::Mod, b.clone(), c.clone()))), "a % (b % c)");
    }

    #[test]
    fn constants() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-7, "1e-7"),
            (-4.775, "-4.775"),
            (0.1, "0.1"),
            (3.4445, "3.4445"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e16"),
            (1.5e20, "1.5e20"),
            (0.0001, "0.0001"),
            (0.00001, "0.00001"),
            (0.000001, "1e-6"),
            (-0.0, "-0.0"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
            (f32::NAN, "nan"),
            (f32::MAX, "3.4028235e38"),
            (f32::MIN_POSITIVE, "1.1754944e-38"),
        ];
        for (x, s) in cases {
            assert_eq!(print_const(Const::F32(x)), s);
            if x.is_finite() {
                assert_eq!(s.parse::<f32>().ok(), Some(x), "{s} round-trips");
            }
        }
        assert_eq!(print_const(Const::I32(-7)), "-7");
        assert_eq!(print_const(Const::Bool(true)), "true");
    }

    #[test]
    fn duplicate_and_odd_var_names() {
        let vars = vec![iv("i", d("A")), iv("i", d("B")), iv("i.1", d("C")), iv("i", d("D")), iv("", d("E"))];
        assert_eq!(var_names(&vars), vec!["i", "i.2", "i.1", "i.3", "v4"]);
        let vars = vec![iv("j", d("A")), iv("j", d("B")), iv("j", d("C"))];
        assert_eq!(var_names(&vars), vec!["j", "j.1", "j.2"]);
    }

    #[test]
    fn header_variants_and_program() {
        let mut g = graph("f", vec![], vec![], vec![]);
        assert_eq!(print_graph(&g), "kernel f()\n{\n  return\n}\n");
        g.outputs = vec![out("a", DType::F32, vec![]), out("b", DType::I32, vec![d("N"), Dim::constant(4)])];
        let h = graph("h", vec![], vec![], vec![]);
        let p = Program { kernels: vec![g, h] };
        assert_eq!(
            print_program(&p),
            "kernel f() -> (a: f32, b: i32[N, 4])\n{\n  return\n}\n\nkernel h()\n{\n  return\n}\n"
        );
        assert_eq!(print_program(&Program::default()), "");
        assert_eq!(print_type(DType::BF16, &[d("T"), d("D")]), "bf16[T, D]");
        assert_eq!(print_type(DType::F32, &[]), "f32");
        assert_eq!(print_type(DType::I32, &[d("E").add(&Dim::one())]), "i32[E + 1]");
    }

    #[test]
    fn malformed_graphs_do_not_panic() {
        let t = d("T");
        let mut g = graph(
            "bad",
            vec![],
            vec![],
            vec![
                node(Some("p"), DType::F32, vec![t.clone()], NodeKind::Param(5)),
                node(
                    None,
                    DType::F32,
                    vec![t.clone(), t.clone()],
                    NodeKind::Compute {
                        vars: vec![iv("t", d("U"))],
                        body: e(
                            ExprKind::Reduce {
                                op: ReduceOp::Sum,
                                vars: vec![VarId(9)],
                                body: Box::new(load(42, vec![var(7)], ScalarTy::F32)),
                            },
                            ScalarTy::F32,
                        ),
                    },
                ),
                node(None, DType::I32, vec![], NodeKind::BinCount { src: ValueId(99), n: Dim::zero() }),
            ],
        );
        g.results = vec![Result_ { name: "r".into(), value: ValueId(12), inout: None }];
        let expected = "\
kernel bad()
{
  %0 p: f32[T] = param(5)
  %1: f32[T, T] = compute [t < U, ?] sum[?v9](%?42[?v7])
  %2: i32 = bincount(%?99, n = 0)
  return r = %?12
}
";
        assert_eq!(print_graph(&g), expected);
    }
}
