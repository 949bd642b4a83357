//! Expressions: names, operators with the contract's type rules, element access (gathers), index-notation
//! reductions, calls of builtins and fns.

use super::stmt::Lowered;
use super::tval::{fmt_shape, int, TVal};
use super::{Bind, Lowerer, Scope};
use crate::ast::{self, BinaryOp, ExprKind as A, UnaryOp};
use kc_ir::{
    BinOp, Code, Const, DType, Diagnostic, Dim, DimAssert, Expr, ExprKind, NodeKind, ReduceOp, ScalarTy, Span,
    TopKPart, UnOp,
};
use std::collections::BTreeMap;

/// How a builtin is called: its parameter names, in order (`?` marks an optional one).
fn builtin_params(name: &str, npos: usize) -> Option<&'static [&'static str]> {
    Some(match name {
        "min" | "max" if npos == 2 => &["a", "b"],
        "sum" | "mean" | "max" | "min" | "argmax" | "argmin" => &["x", "axis?", "keepdim?"],
        "pow" => &["a", "b"],
        "where" => &["cond", "a", "b"],
        "clamp" => &["x", "lo", "hi"],
        "f32" | "bf16" | "f16" | "i32" | "bool" => &["x"],
        "transpose" => &["x", "perm?"],
        "reshape" => &["x", "shape"],
        "concat" => &["a", "b", "axis?"],
        "squeeze" | "unsqueeze" => &["x", "axis"],
        "topk" => &["x", "k", "axis?"],
        "argsort" => &["x", "axis?", "descending?"],
        "cumsum" => &["x", "axis?", "exclusive?"],
        "bincount" => &["x", "n"],
        "segment" => &["offsets", "value"],
        _ if UnOp::from_builtin(name).is_some() => &["x"],
        _ => return None,
    })
}

/// The builtin names, for suggestions.
const BUILTINS: &[&str] = &[
    "exp",
    "exp2",
    "log",
    "log2",
    "sqrt",
    "rsqrt",
    "abs",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "silu",
    "gelu",
    "relu",
    "softplus",
    "floor",
    "ceil",
    "min",
    "max",
    "pow",
    "where",
    "clamp",
    "f32",
    "bf16",
    "f16",
    "i32",
    "bool",
    "sum",
    "mean",
    "argmax",
    "argmin",
    "transpose",
    "reshape",
    "concat",
    "squeeze",
    "unsqueeze",
    "topk",
    "argsort",
    "cumsum",
    "bincount",
    "segment",
];

impl Lowerer<'_> {
    /// Lowers an expression that must be one value.
    pub(crate) fn expr(&mut self, e: &ast::Expr) -> Option<TVal> {
        match self.expr_any(e)? {
            Lowered::Val(v) => Some(v),
            Lowered::Tuple(parts) => {
                self.err(
                    Diagnostic::error(
                        Code::TupleAsValue,
                        e.span,
                        format!("this is a tuple of {} values, used as one value", parts.len()),
                    )
                    .with_help("destructure it first: `let (a, b) = ...;`"),
                );
                None
            }
        }
    }

    pub(crate) fn expr_any(&mut self, e: &ast::Expr) -> Option<Lowered> {
        if !self.check_size(e.span) {
            return None;
        }
        let span = e.span;
        let v = match &e.kind {
            A::Int(v) => {
                if *v > i32::MAX as i64 || *v < i32::MIN as i64 {
                    self.err(
                        Diagnostic::error(Code::BadNumber, span, format!("{v} does not fit in an i32"))
                            .with_help(format!("write it as a float: `{v}.0`")),
                    );
                    return None;
                }
                TVal::scalar(Expr::constant(Const::I32(*v), span))
            }
            A::Float(f) => {
                if (*f as f32).is_infinite() {
                    self.err(
                        Diagnostic::error(
                            Code::BadNumber,
                            span,
                            format!("{f:e} does not fit in an f32 (the largest is about 3.4e38)"),
                        )
                        .with_help("write `inf` for infinity"),
                    );
                    return None;
                }
                TVal::scalar(Expr::constant(Const::F32(*f as f32), span))
            }
            A::Bool(b) => TVal::scalar(Expr::constant(Const::Bool(*b), span)),
            A::Inf => TVal::scalar(Expr::constant(Const::F32(f32::INFINITY), span)),
            A::Name(id) => return self.name(id),
            A::Unary(op, a) => {
                let a = self.expr(a)?;
                self.unary(*op, a, span)?
            }
            A::Binary(BinaryOp::MatMul, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                self.matmul(a?, b?, span)?
            }
            A::Binary(op, a, b) => {
                let (x, y) = (self.expr(a), self.expr(b));
                self.binary_op(*op, x?, y?, span)?
            }
            A::Call { callee, args, named } => return self.call(callee, args, named, span),
            A::Reduce { op, binders, body } => self.index_reduce(op, binders, body, span)?,
            A::Index { base, indices } => self.index(base, indices, span)?,
            A::List(_) => {
                self.err(
                    Diagnostic::error(Code::TypeMismatch, span, "a list is not a value")
                        .with_note("lists are arguments of `reshape(x, [dims])` and `transpose(x, perm: [..])`"),
                );
                return None;
            }
            A::Tuple(items) => {
                let mut parts = Vec::new();
                for it in items {
                    parts.push(self.expr(it));
                }
                return Some(Lowered::Tuple(parts.into_iter().collect::<Option<Vec<_>>>()?));
            }
            A::Error => return None,
        };
        Some(Lowered::Val(v))
    }

    fn name(&mut self, id: &ast::Ident) -> Option<Lowered> {
        let span = id.span;
        match self.lookup(&id.name).cloned() {
            // A value read by name is located at this use (run-time errors and labels point here).
            Some(Bind::Val(mut tv)) | Some(Bind::Let { mut tv, .. }) | Some(Bind::Inout { mut tv, .. }) => {
                tv.body.span = span;
                Some(Lowered::Val(tv))
            }
            Some(Bind::Output { value: Some((mut tv, _)), .. }) => {
                tv.body.span = span;
                Some(Lowered::Val(tv))
            }
            Some(Bind::Output { value: None, .. }) => {
                self.err(
                    Diagnostic::error(
                        Code::ReadBeforeAssign,
                        span,
                        format!("output `{}` is read before it is assigned", id.name),
                    )
                    .with_help("assign it first; once assigned, an output can be read like any value"),
                );
                None
            }
            Some(Bind::Dim(d)) => {
                let d = self.norm(&d);
                let body = match d.as_const() {
                    Some(c) if c >= i32::MIN as i64 && c <= i32::MAX as i64 => Expr::constant(Const::I32(c), span),
                    _ => Expr::new(ExprKind::Dim(d), ScalarTy::I32, span),
                };
                Some(Lowered::Val(TVal::scalar(body)))
            }
            Some(Bind::Index(v)) => Some(Lowered::Val(TVal::scalar(Expr::new(ExprKind::Var(v), ScalarTy::I32, span)))),
            Some(Bind::Poison) => None,
            None => {
                if self.kernel_names.contains_key(&id.name) {
                    self.err(
                        Diagnostic::error(Code::NotAValue, span, format!("`{}` is a kernel, not a value", id.name))
                            .with_note("kernels cannot be called or read; put shared code in a `fn`"),
                    );
                    return None;
                }
                if self.fns.contains_key(&id.name) || builtin_params(&id.name, 1).is_some() {
                    self.err(
                        Diagnostic::error(Code::NotAValue, span, format!("`{}` is a function, not a value", id.name))
                            .with_help(format!("call it: `{}(...)`", id.name)),
                    );
                    return None;
                }
                let mut d = Diagnostic::error(Code::UnknownName, span, format!("unknown name `{}`", id.name))
                    .with_label("not defined here");
                {
                    let names = self.visible_names();
                    if let Some(s) = super::suggest(&id.name, names.iter().map(|s| s.as_str())) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                }
                self.err(d);
                None
            }
        }
    }

    fn not_bool(&mut self, tv: &TVal, span: Span, what: &str) -> bool {
        if tv.ty() == ScalarTy::Bool {
            self.err(
                Diagnostic::error(Code::TypeMismatch, span, format!("{what} takes numbers, but this is a bool"))
                    .with_help("convert it with `f32(...)` (true is 1.0) or `i32(...)`"),
            );
            return false;
        }
        true
    }

    fn unary(&mut self, op: UnaryOp, a: TVal, span: Span) -> Option<TVal> {
        match op {
            UnaryOp::Neg => {
                if !self.not_bool(&a, span, "`-`") {
                    return None;
                }
                if let Some(c) = a.as_const() {
                    let c = match c {
                        Const::F32(x) => Const::F32(-x),
                        Const::I32(x) => Const::I32(-x),
                        Const::Bool(_) => return None,
                    };
                    return Some(TVal::scalar(Expr::constant(c, span)));
                }
                let ty = a.ty();
                self.map_n(&[a], span, |_, b| {
                    Some(Expr::new(ExprKind::Unary(UnOp::Neg, Box::new(b[0].clone())), ty, span))
                })
            }
            UnaryOp::Not => {
                if a.ty() != ScalarTy::Bool {
                    self.err(
                        Diagnostic::error(
                            Code::TypeMismatch,
                            span,
                            format!("`!` takes a bool, but this is {}", a.ty()),
                        )
                        .with_help("compare it, e.g. `x != 0`"),
                    );
                    return None;
                }
                self.map_n(&[a], span, |_, b| {
                    Some(Expr::new(ExprKind::Unary(UnOp::Not, Box::new(b[0].clone())), ScalarTy::Bool, span))
                })
            }
        }
    }

    /// Brings two values to a common numeric type (i32 widens to f32).
    fn unify(&mut self, a: TVal, b: TVal) -> (TVal, TVal) {
        match (a.ty(), b.ty()) {
            (ScalarTy::I32, ScalarTy::F32) => (self.convert(a, ScalarTy::F32), b),
            (ScalarTy::F32, ScalarTy::I32) => {
                let b = self.convert(b, ScalarTy::F32);
                (a, b)
            }
            _ => (a, b),
        }
    }

    pub(crate) fn binary_op(&mut self, op: BinaryOp, a: TVal, b: TVal, span: Span) -> Option<TVal> {
        let bop = match op {
            BinaryOp::Or => BinOp::Or,
            BinaryOp::And => BinOp::And,
            BinaryOp::Eq => BinOp::Eq,
            BinaryOp::Ne => BinOp::Ne,
            BinaryOp::Lt => BinOp::Lt,
            BinaryOp::Le => BinOp::Le,
            BinaryOp::Gt => BinOp::Gt,
            BinaryOp::Ge => BinOp::Ge,
            BinaryOp::Add => BinOp::Add,
            BinaryOp::Sub => BinOp::Sub,
            BinaryOp::Mul => BinOp::Mul,
            BinaryOp::Div => BinOp::Div,
            BinaryOp::Mod => BinOp::Mod,
            BinaryOp::MatMul => return self.matmul(a, b, span),
        };
        self.bin(bop, a, b, span, op.symbol())
    }

    /// An elementwise binary operation with type checks, promotion and broadcasting.
    pub(crate) fn bin(&mut self, op: BinOp, a: TVal, b: TVal, span: Span, what: &str) -> Option<TVal> {
        let (a, b) = match op {
            BinOp::And | BinOp::Or => {
                for x in [&a, &b] {
                    if x.ty() != ScalarTy::Bool {
                        self.err(
                            Diagnostic::error(
                                Code::TypeMismatch,
                                span,
                                format!("`{what}` takes bools, but one side is {}", x.ty()),
                            )
                            .with_secondary(x.body.span, format!("this is {}", x.ty()))
                            .with_help("compare it, e.g. `x != 0`"),
                        );
                        return None;
                    }
                }
                (a, b)
            }
            BinOp::Eq | BinOp::Ne if a.ty() == ScalarTy::Bool && b.ty() == ScalarTy::Bool => (a, b),
            _ => {
                for x in [&a, &b] {
                    if x.ty() == ScalarTy::Bool {
                        self.err(
                            Diagnostic::error(
                                Code::TypeMismatch,
                                span,
                                format!("`{what}` takes numbers, but one side is a bool"),
                            )
                            .with_secondary(x.body.span, "this is a bool")
                            .with_help("convert it with `f32(...)` (true is 1.0) or `i32(...)`"),
                        );
                        return None;
                    }
                }
                let (a, b) = self.unify(a, b);
                if op == BinOp::Pow {
                    let a = self.convert(a, ScalarTy::F32);
                    let b = self.convert(b, ScalarTy::F32);
                    (a, b)
                } else {
                    (a, b)
                }
            }
        };
        // Fold integer-literal arithmetic on constants (dims and literals) so shapes stay readable.
        if let (Some(Const::I32(x)), Some(Const::I32(y))) = (a.as_const(), b.as_const()) {
            let v = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                _ => None,
            };
            if let Some(v) = v.filter(|v| *v >= i32::MIN as i64 && *v <= i32::MAX as i64) {
                return Some(TVal::scalar(Expr::constant(Const::I32(v), span)));
            }
        }
        let ty = op.check(a.ty())?;
        self.map_n(&[a, b], span, |_, v| {
            let mut it = v.into_iter();
            let (x, y) = (it.next()?, it.next()?);
            Some(Expr::new(ExprKind::Binary(op, Box::new(x), Box::new(y)), ty, span))
        })
    }

    /// NumPy `matmul`: batched over leading dims, contracting the last dim of `a` with the second-to-last of `b`.
    pub(crate) fn matmul(&mut self, a: TVal, b: TVal, span: Span) -> Option<TVal> {
        if a.rank() == 0 || b.rank() == 0 {
            self.err(
                Diagnostic::error(
                    Code::RankMismatch,
                    span,
                    format!("`@` needs tensors, but got shapes {} and {}", fmt_shape(&a.shape), fmt_shape(&b.shape)),
                )
                .with_help("use `*` to multiply by a scalar"),
            );
            return None;
        }
        if !self.not_bool(&a, span, "`@`") || !self.not_bool(&b, span, "`@`") {
            return None;
        }
        let (a, b) = self.unify(a, b);
        // A vector is a matrix with a dim of 1 that the result drops.
        let (a_vec, b_vec) = (a.rank() == 1, b.rank() == 1);
        let a2 = if a_vec {
            self.reindex(&a, vec![Dim::one(), a.shape[0].clone()], span, |v| vec![v[1].clone()])
        } else {
            a
        };
        let b2 = if b_vec {
            self.reindex(&b, vec![b.shape[0].clone(), Dim::one()], span, |v| vec![v[0].clone()])
        } else {
            b
        };
        let (ra, rb) = (a2.rank(), b2.rank());
        let (m, ka) = (a2.shape[ra - 2].clone(), a2.shape[ra - 1].clone());
        let (kb, n) = (b2.shape[rb - 2].clone(), b2.shape[rb - 1].clone());
        match self.dims_equal(&ka, &kb) {
            Some(true) => {}
            None => self.graph.asserts.push(DimAssert {
                lhs: ka.clone(),
                rhs: kb.clone(),
                span,
                what: "the contracted dims of `@` are equal".into(),
            }),
            Some(false) => {
                self.err(
                    Diagnostic::error(
                        Code::MatmulMismatch,
                        span,
                        format!(
                            "`@` contracts `{ka}` with `{kb}`: shapes {} and {} do not multiply",
                            fmt_shape(&a2.shape),
                            fmt_shape(&b2.shape)
                        ),
                    )
                    .with_secondary(a2.body.span, format!("the last dim is `{ka}`"))
                    .with_secondary(b2.body.span, format!("the second-to-last dim is `{kb}`"))
                    .with_help("transpose an operand with `transpose(x)`"),
                );
                return None;
            }
        }
        let batch = self.broadcast_shapes(&a2.shape[..ra - 2], &b2.shape[..rb - 2], span)?;
        let mut shape = batch.clone();
        shape.push(m);
        shape.push(n);
        let axes = self.fresh_axes(&shape, span);
        let k = self.new_var("k", Some(ka.clone()), span);
        let var = |v: kc_ir::VarId| Expr::new(ExprKind::Var(v), ScalarTy::I32, span);
        let nb = batch.len();
        let idx_for = |t: &TVal, row: Expr, col: Expr| -> Vec<Expr> {
            let r = t.rank();
            let off = nb - (r - 2);
            let mut idx: Vec<Expr> = (0..r - 2)
                .map(
                    |i| if t.shape[i].is_one() && !batch[i + off].is_one() { int(0, span) } else { var(axes[i + off]) },
                )
                .collect();
            idx.push(row);
            idx.push(col);
            idx
        };
        let ia = idx_for(&a2, var(axes[nb]), var(k));
        let ib = idx_for(&b2, var(k), var(axes[nb + 1]));
        let ea = self.inline(&a2, &ia);
        let eb = self.inline(&b2, &ib);
        let ty = ea.ty;
        let prod = Expr::new(ExprKind::Binary(BinOp::Mul, Box::new(ea), Box::new(eb)), ty, span);
        let body = Expr::new(ExprKind::Reduce { op: ReduceOp::Sum, vars: vec![k], body: Box::new(prod) }, ty, span);
        let full = TVal { shape: shape.clone(), axes, body };
        let stored = self.stored(&full, span)?;
        // Drop the dims that stood for vectors.
        let r = shape.len();
        let keep: Vec<usize> = (0..r).filter(|&i| !((a_vec && i == r - 2) || (b_vec && i == r - 1))).collect();
        if keep.len() == r {
            return Some(stored);
        }
        let out_shape: Vec<Dim> = keep.iter().map(|&i| shape[i].clone()).collect();
        Some(self.reindex(&stored, out_shape, span, |v| {
            let mut idx = Vec::with_capacity(r);
            let mut j = 0;
            for i in 0..r {
                if keep.contains(&i) {
                    idx.push(v[j].clone());
                    j += 1;
                } else {
                    idx.push(int(0, span));
                }
            }
            idx
        }))
    }

    /// `base[i, j, ...]`: an element access, possibly a gather.
    fn index(&mut self, base: &ast::Expr, indices: &[ast::Expr], span: Span) -> Option<TVal> {
        let mut b = self.expr(base)?;
        if indices.len() != b.rank() {
            self.err(
                Diagnostic::error(
                    Code::IndexCount,
                    span,
                    format!(
                        "a tensor of shape {} takes {} indices, but {} are given",
                        fmt_shape(&b.shape),
                        b.rank(),
                        indices.len()
                    ),
                )
                .with_secondary(base.span, format!("shape {}", fmt_shape(&b.shape))),
            );
            return None;
        }
        let mut idx = Vec::with_capacity(indices.len());
        let mut ok = true;
        for (k, ie) in indices.iter().enumerate() {
            let Some(i) = self.expr(ie) else {
                ok = false;
                continue;
            };
            if i.rank() != 0 {
                self.err(
                    Diagnostic::error(
                        Code::RankMismatch,
                        ie.span,
                        format!("an index must be one integer, but this is a tensor of shape {}", fmt_shape(&i.shape)),
                    )
                    .with_help("index it too, e.g. `idx[t, j]`"),
                );
                ok = false;
                continue;
            }
            let i = match i.ty() {
                ScalarTy::I32 => i,
                t => {
                    self.err(
                        Diagnostic::error(
                            Code::IndexNotInt,
                            ie.span,
                            format!("an index must be an i32, but this is {t}"),
                        )
                        .with_help("convert it with `i32(...)`"),
                    );
                    ok = false;
                    continue;
                }
            };
            if let ExprKind::Var(v) = i.body.kind {
                if self.collecting.contains(&v) {
                    let masked = self.masked > 0;
                    self.vars[v.index()].uses.push((b.shape[k].clone(), ie.span, masked));
                }
            }
            idx.push(i.body);
        }
        if !ok {
            return None;
        }
        // Reading a lazy value (a reshape, a broadcast, an expression) at indices that are not plain
        // index variables could step outside it without leaving the tensor beneath: store it, so the
        // read is bounds-checked against the value's own shape.
        let is_node = matches!(&b.body.kind, ExprKind::Load { idx: li, .. }
            if li.len() == b.axes.len() && li.iter().zip(&b.axes).all(|(e, a)| e.kind == ExprKind::Var(*a)));
        let plain = idx.iter().zip(&b.shape).all(|(e, d)| match &e.kind {
            ExprKind::Var(_) => self.masked == 0,
            ExprKind::Const(Const::I32(c)) => d.as_const().is_some_and(|n| *c >= 0 && *c < n),
            _ => false,
        });
        if !is_node && !plain && b.rank() > 0 && Self::outer_vars(&b).is_empty() {
            b = self.stored(&b, span)?;
        }
        for (e, d) in idx.iter().zip(&b.shape) {
            if let (ExprKind::Const(Const::I32(c)), Some(n)) = (&e.kind, d.as_const()) {
                if *c < 0 || *c >= n {
                    self.err(
                        Diagnostic::error(
                            Code::IndexOutOfRange,
                            e.span,
                            format!("index {c} is out of range for an axis of size {n}"),
                        )
                        .with_secondary(base.span, format!("shape {}", fmt_shape(&b.shape))),
                    );
                    return None;
                }
            }
        }
        let mut body = self.inline(&b, &idx);
        // The access names the whole `x[...]` expression in run-time errors.
        if let ExprKind::Load { .. } = body.kind {
            body.span = span;
        }
        Some(TVal::scalar(body))
    }

    /// `sum[k](e)`, `max[r, i](e)`, `min[r in 0..R](e)`, `mean[k](e)`.
    fn index_reduce(
        &mut self,
        op: &ast::Ident,
        binders: &[ast::IndexBinder],
        body: &ast::Expr,
        span: Span,
    ) -> Option<TVal> {
        let rop = match op.name.as_str() {
            "sum" | "mean" => ReduceOp::Sum,
            "max" => ReduceOp::Max,
            "min" => ReduceOp::Min,
            _ => {
                self.err(
                    Diagnostic::error(
                        Code::UnknownFunction,
                        op.span,
                        format!("`{}[..](...)` is not a reduction", op.name),
                    )
                    .with_note("index-notation reductions are `sum`, `mean`, `max` and `min`"),
                );
                return None;
            }
        };
        let vars = self.binders(binders, None)?;
        let inner = self.over_indices(&vars, binders, body, &format!("the body of `{}[..](...)`", op.name))?;
        if !self.not_bool(&inner, body.span, &format!("`{}`", op.name)) {
            return None;
        }
        let ty = inner.ty();
        // `sum[](e)` reduces over nothing: the value itself.
        if vars.is_empty() {
            return Some(if op.name == "mean" { self.convert(inner, ScalarTy::F32) } else { inner });
        }
        let mut e = Expr::new(ExprKind::Reduce { op: rop, vars: vars.clone(), body: Box::new(inner.body) }, ty, span);
        if op.name == "mean" {
            let count = vars
                .iter()
                .fold(Dim::one(), |acc, v| acc.mul(self.vars[v.index()].extent.as_ref().unwrap_or(&Dim::one())));
            let e32 = if ty == ScalarTy::F32 {
                e
            } else {
                Expr::new(ExprKind::Cast(DType::F32, Box::new(e)), ScalarTy::F32, span)
            };
            let c = Expr::new(
                ExprKind::Cast(DType::F32, Box::new(Expr::new(ExprKind::Dim(count), ScalarTy::I32, span))),
                ScalarTy::F32,
                span,
            );
            e = Expr::new(ExprKind::Binary(BinOp::Div, Box::new(e32), Box::new(c)), ScalarTy::F32, span);
        }
        Some(TVal::scalar(e))
    }

    /// Matches a call's arguments to parameter names (`?` marks optional ones). Reports arity errors.
    fn match_args<'e>(
        &mut self,
        callee: &ast::Ident,
        params: &[&str],
        args: &'e [ast::Expr],
        named: &'e [ast::NamedArg],
        span: Span,
    ) -> Option<Vec<Option<&'e ast::Expr>>> {
        let names: Vec<&str> = params.iter().map(|p| p.trim_end_matches('?')).collect();
        let mut out: Vec<Option<&ast::Expr>> = vec![None; params.len()];
        if args.len() > params.len() {
            self.err(
                Diagnostic::error(
                    Code::ArgCount,
                    args[params.len()].span,
                    format!("`{}` takes at most {} arguments, but {} are given", callee.name, params.len(), args.len()),
                )
                .with_note(format!("`{}({})`", callee.name, params.join(", "))),
            );
            return None;
        }
        for (i, a) in args.iter().enumerate() {
            out[i] = Some(a);
        }
        for n in named {
            let Some(i) = names.iter().position(|p| *p == n.name.name) else {
                let mut d = Diagnostic::error(
                    Code::UnknownNamedArg,
                    n.name.span,
                    format!("`{}` has no parameter `{}`", callee.name, n.name.name),
                )
                .with_note(format!("`{}({})`", callee.name, params.join(", ")));
                if let Some(s) = super::suggest(&n.name.name, names.iter().copied()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.err(d);
                return None;
            };
            if out[i].is_some() {
                self.err(Diagnostic::error(
                    Code::DuplicateNamedArg,
                    n.name.span,
                    format!("`{}` is given twice", n.name.name),
                ));
                return None;
            }
            out[i] = Some(&n.value);
        }
        for (i, p) in params.iter().enumerate() {
            if out[i].is_none() && !p.ends_with('?') {
                self.err(
                    Diagnostic::error(Code::ArgCount, span, format!("`{}` needs the argument `{}`", callee.name, p))
                        .with_note(format!("`{}({})`", callee.name, params.join(", "))),
                );
                return None;
            }
        }
        Some(out)
    }

    /// An axis argument: a compile-time integer, negative counting from the end.
    fn axis_arg(
        &mut self,
        e: Option<&ast::Expr>,
        rank: usize,
        default: Option<i64>,
        span: Span,
    ) -> Option<Option<usize>> {
        let v = match e {
            Some(e) => match self.const_value(e)? {
                Const::I32(v) => v,
                _ => {
                    self.err(Diagnostic::error(Code::TypeMismatch, e.span, "an axis must be an integer"));
                    return None;
                }
            },
            None => match default {
                Some(d) => d,
                None => return Some(None),
            },
        };
        let r = rank as i64;
        if v >= r || v < -r {
            self.err(
                Diagnostic::error(
                    Code::AxisOutOfRange,
                    e.map_or(span, |e| e.span),
                    format!("axis {v} is out of range for a tensor of rank {rank}"),
                )
                .with_note(format!("axes run from {} to {}", -r, r - 1)),
            );
            return None;
        }
        Some(Some(if v < 0 { (v + r) as usize } else { v as usize }))
    }

    /// A compile-time constant argument (an integer, a bool, a dim fixed at compile time).
    fn const_value(&mut self, e: &ast::Expr) -> Option<Const> {
        let v = self.expr(e)?;
        match v.as_const() {
            Some(c) => Some(c),
            None => {
                self.err(
                    Diagnostic::error(Code::NotConstant, e.span, "this argument must be known at compile time")
                        .with_help("use a literal, or a dim fixed with `where NAME == N`"),
                );
                None
            }
        }
    }

    fn bool_arg(&mut self, e: Option<&ast::Expr>, default: bool) -> Option<bool> {
        match e {
            None => Some(default),
            Some(e) => match self.const_value(e)? {
                Const::Bool(b) => Some(b),
                _ => {
                    self.err(Diagnostic::error(Code::TypeMismatch, e.span, "this argument must be `true` or `false`"));
                    None
                }
            },
        }
    }

    /// A dim argument (`k` of topk, `n` of bincount, a reshape's sizes).
    fn dim_arg(&mut self, e: &ast::Expr) -> Option<Dim> {
        if let Some(d) = self.dim_of(e, None, true) {
            return Some(self.norm(&d));
        }
        let v = self.expr(e)?;
        match v.as_const() {
            Some(Const::I32(c)) => Some(Dim::constant(c)),
            _ => {
                self.err(
                    Diagnostic::error(
                        Code::BadDim,
                        e.span,
                        "this argument must be a dim: an integer or a dim expression",
                    )
                    .with_note("a dimension is made of dim symbols, integers and + - * / %"),
                );
                None
            }
        }
    }

    fn call(
        &mut self,
        callee: &ast::Ident,
        args: &[ast::Expr],
        named: &[ast::NamedArg],
        span: Span,
    ) -> Option<Lowered> {
        // User fns (and the standard library's) come first: they may shadow a builtin of the same name.
        let in_std = self.fn_files.last() == Some(&self.std_file);
        let table = if in_std { self.std_fns } else { self.fns };
        if let Some(f) = table.get(&callee.name).copied() {
            let params: Vec<String> = f
                .params
                .iter()
                .map(|p| if p.default.is_some() { format!("{}?", p.name.name) } else { p.name.name.clone() })
                .collect();
            let prefs: Vec<&str> = params.iter().map(|s| s.as_str()).collect();
            let matched = self.match_args(callee, &prefs, args, named, span)?;
            let mut vals = Vec::with_capacity(matched.len());
            for (p, a) in f.params.iter().zip(matched) {
                let v = match (a, &p.default) {
                    (Some(a), _) => self.expr(a),
                    (None, Some(d)) => {
                        self.scopes.push(Scope { names: BTreeMap::new(), barrier: true });
                        let v = self.expr(d);
                        self.scopes.pop();
                        v
                    }
                    (None, None) => None,
                };
                vals.push(v);
            }
            let vals: Option<Vec<TVal>> = vals.into_iter().collect();
            return self.call_fn(f, vals?, span);
        }
        let Some(params) = builtin_params(&callee.name, args.len()) else {
            let mut d =
                Diagnostic::error(Code::UnknownFunction, callee.span, format!("unknown function `{}`", callee.name))
                    .with_label("not a builtin or fn");
            let fns = self.fns;
            let all: Vec<&str> = BUILTINS.iter().copied().chain(fns.keys().map(|s| s.as_str())).collect();
            if let Some(s) = super::suggest(&callee.name, all) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            self.err(d);
            return None;
        };
        let a = self.match_args(callee, params, args, named, span)?;
        let name = callee.name.as_str();
        let v = match name {
            _ if UnOp::from_builtin(name).is_some() => {
                let op = UnOp::from_builtin(name)?;
                let x = self.expr(a[0]?)?;
                if !self.not_bool(&x, span, &format!("`{name}`")) {
                    return None;
                }
                let x = if op == UnOp::Abs { x } else { self.convert(x, ScalarTy::F32) };
                let ty = op.check(x.ty())?;
                self.map_n(&[x], span, |_, b| Some(Expr::new(ExprKind::Unary(op, Box::new(b[0].clone())), ty, span)))?
            }
            "min" | "max" if args.len() == 2 => {
                let (x, y) = (self.expr(a[0]?), self.expr(a[1]?));
                let op = if name == "min" { BinOp::Min } else { BinOp::Max };
                self.bin(op, x?, y?, span, name)?
            }
            "pow" => {
                let (x, y) = (self.expr(a[0]?), self.expr(a[1]?));
                self.bin(BinOp::Pow, x?, y?, span, "pow")?
            }
            "clamp" => {
                let (x, lo, hi) = (self.expr(a[0]?), self.expr(a[1]?), self.expr(a[2]?));
                let m = self.bin(BinOp::Max, x?, lo?, span, "clamp")?;
                self.bin(BinOp::Min, m, hi?, span, "clamp")?
            }
            "where" => {
                let c = self.expr(a[0]?);
                self.masked += 1;
                let x = self.expr(a[1]?);
                let y = self.expr(a[2]?);
                self.masked -= 1;
                let (c, x, y) = (c?, x?, y?);
                if c.ty() != ScalarTy::Bool {
                    self.err(
                        Diagnostic::error(
                            Code::CondNotBool,
                            a[0]?.span,
                            format!("the condition of `where` must be a bool, but this is {}", c.ty()),
                        )
                        .with_help("compare it, e.g. `x > 0.0`"),
                    );
                    return None;
                }
                let (x, y) = if x.ty() == ScalarTy::Bool || y.ty() == ScalarTy::Bool {
                    if x.ty() != y.ty() {
                        self.err(
                            Diagnostic::error(
                                Code::TypeMismatch,
                                span,
                                format!("the two sides of `where` are {} and {}", x.ty(), y.ty()),
                            )
                            .with_help("convert one side, e.g. `f32(b)`"),
                        );
                        return None;
                    }
                    (x, y)
                } else {
                    self.unify(x, y)
                };
                let ty = x.ty();
                self.map_n(&[c, x, y], span, |_, v| {
                    let mut it = v.into_iter();
                    let (c, x, y) = (it.next()?, it.next()?, it.next()?);
                    Some(Expr::new(ExprKind::Select(Box::new(c), Box::new(x), Box::new(y)), ty, span))
                })?
            }
            "f32" | "bf16" | "f16" | "i32" | "bool" => {
                let to = DType::from_name(name)?;
                let x = self.expr(a[0]?)?;
                self.cast(x, to, span)
            }
            "sum" | "mean" | "max" | "min" | "argmax" | "argmin" => {
                let x = self.expr(a[0]?)?;
                let axis = self.axis_arg(a[1], x.rank(), None, span)?;
                let keepdim = self.bool_arg(a[2], false)?;
                self.reduce_axis(name, x, axis, keepdim, span)?
            }
            "transpose" => {
                let x = self.expr(a[0]?)?;
                let r = x.rank();
                let perm: Vec<usize> = match a[1] {
                    None => {
                        if r < 2 {
                            self.err(Diagnostic::error(
                                Code::RankMismatch,
                                span,
                                format!(
                                    "`transpose` swaps the last two dims, but this has shape {}",
                                    fmt_shape(&x.shape)
                                ),
                            ));
                            return None;
                        }
                        let mut p: Vec<usize> = (0..r).collect();
                        p.swap(r - 2, r - 1);
                        p
                    }
                    Some(pe) => self.perm_arg(pe, r)?,
                };
                let shape: Vec<Dim> = perm.iter().map(|&p| x.shape[p].clone()).collect();
                self.reindex(&x, shape, span, |v| {
                    let mut idx = vec![int(0, span); r];
                    for (i, &p) in perm.iter().enumerate() {
                        idx[p] = v[i].clone();
                    }
                    idx
                })
            }
            "reshape" => {
                let x = self.expr(a[0]?)?;
                self.reshape(x, a[1]?, span)?
            }
            "squeeze" | "unsqueeze" => {
                let x = self.expr(a[0]?)?;
                let r = x.rank();
                if name == "squeeze" {
                    let ax = self.axis_arg(a[1], r, None, span)??;
                    if !x.shape[ax].is_one() {
                        self.err(Diagnostic::error(
                            Code::RankMismatch,
                            span,
                            format!(
                                "`squeeze` removes a dim of size 1, but axis {ax} of {} is `{}`",
                                fmt_shape(&x.shape),
                                x.shape[ax]
                            ),
                        ));
                        return None;
                    }
                    let mut shape = x.shape.clone();
                    shape.remove(ax);
                    self.reindex(&x, shape, span, |v| {
                        let mut idx: Vec<Expr> = v.to_vec();
                        idx.insert(ax, int(0, span));
                        idx
                    })
                } else {
                    let ax = self.axis_arg(a[1], r + 1, None, span)??;
                    let mut shape = x.shape.clone();
                    shape.insert(ax, Dim::one());
                    self.reindex(&x, shape, span, |v| {
                        let mut idx: Vec<Expr> = v.to_vec();
                        idx.remove(ax);
                        idx
                    })
                }
            }
            "concat" => {
                let (x, y) = (self.expr(a[0]?), self.expr(a[1]?));
                let (x, y) = (x?, y?);
                self.concat(x, y, a[2], span)?
            }
            "topk" => {
                let x = self.expr(a[0]?)?;
                if !self.not_bool(&x, span, "`topk`") {
                    return None;
                }
                let k = self.dim_arg(a[1]?)?;
                let axis = self.axis_arg(a[2], x.rank(), Some(-1), span)??;
                if let (Some(kc), Some(n)) = (k.as_const(), x.shape[axis].as_const()) {
                    if kc > n || kc < 0 {
                        self.err(Diagnostic::error(
                            Code::AxisOutOfRange,
                            a[1]?.span,
                            format!("`topk` asks for {kc} values along an axis of size {n}"),
                        ));
                        return None;
                    }
                }
                let src = self.stored(&x, span)?;
                let src = self.node_of(&src)?;
                let mut shape = self.nodes[src.index()].shape.clone();
                shape[axis] = k.clone();
                let dt = self.nodes[src.index()].dtype;
                let vals = self.push_node(
                    dt,
                    shape.clone(),
                    NodeKind::TopK { src, k: k.clone(), axis, part: TopKPart::Values },
                    span,
                );
                let idx =
                    self.push_node(DType::I32, shape, NodeKind::TopK { src, k, axis, part: TopKPart::Indices }, span);
                return Some(Lowered::Tuple(vec![vals, idx]));
            }
            "argsort" => {
                let x = self.expr(a[0]?)?;
                if !self.not_bool(&x, span, "`argsort`") {
                    return None;
                }
                let axis = self.axis_arg(a[1], x.rank(), Some(-1), span)??;
                let descending = self.bool_arg(a[2], false)?;
                let src = self.stored(&x, span)?;
                let src = self.node_of(&src)?;
                let shape = x.shape.clone();
                self.push_node(DType::I32, shape, NodeKind::ArgSort { src, axis, descending }, span)
            }
            "cumsum" => {
                let mut x = self.expr(a[0]?)?;
                if x.ty() == ScalarTy::Bool {
                    x = self.cast(x, DType::I32, span);
                }
                let axis = self.axis_arg(a[1], x.rank(), Some(-1), span)??;
                let exclusive = self.bool_arg(a[2], false)?;
                let dt = x.ty().storage();
                let src = self.stored(&x, span)?;
                let src = self.node_of(&src)?;
                self.push_node(dt, x.shape.clone(), NodeKind::CumSum { src, axis, exclusive }, span)
            }
            "bincount" => {
                let x = self.expr(a[0]?)?;
                if x.ty() != ScalarTy::I32 || x.rank() != 1 {
                    self.err(
                        Diagnostic::error(
                            Code::TypeMismatch,
                            a[0]?.span,
                            format!(
                                "`bincount` counts a 1-D i32 tensor, but this is {}{}",
                                x.ty(),
                                fmt_shape(&x.shape)
                            ),
                        )
                        .with_help("flatten it with `reshape(x, [N])`"),
                    );
                    return None;
                }
                let n = self.dim_arg(a[1]?)?;
                let src = self.stored(&x, span)?;
                let src = self.node_of(&src)?;
                self.push_node(DType::I32, vec![n.clone()], NodeKind::BinCount { src, n }, span)
            }
            "segment" => {
                let off = self.expr(a[0]?)?;
                if off.ty() != ScalarTy::I32 || off.rank() != 1 {
                    self.err(Diagnostic::error(
                        Code::TypeMismatch,
                        a[0]?.span,
                        format!(
                            "`segment` searches a 1-D i32 tensor of sorted offsets, but this is {}{}",
                            off.ty(),
                            fmt_shape(&off.shape)
                        ),
                    ));
                    return None;
                }
                let r = self.expr(a[1]?)?;
                if r.ty() != ScalarTy::I32 {
                    self.err(Diagnostic::error(
                        Code::TypeMismatch,
                        a[1]?.span,
                        format!("`segment` looks up an i32, but this is {}", r.ty()),
                    ));
                    return None;
                }
                let src = self.stored(&off, span)?;
                let src = self.node_of(&src)?;
                self.map_n(&[r], span, |_, v| {
                    Some(Expr::new(
                        ExprKind::Segment { src, value: Box::new(v.into_iter().next()?) },
                        ScalarTy::I32,
                        span,
                    ))
                })?
            }
            _ => {
                self.err(Diagnostic::error(
                    Code::Internal,
                    span,
                    format!("builtin `{name}` has no lowering (a bug in kc)"),
                ));
                return None;
            }
        };
        Some(Lowered::Val(v))
    }

    /// The node a value loads, if it is exactly a stored node.
    fn node_of(&mut self, tv: &TVal) -> Option<kc_ir::ValueId> {
        match &tv.body.kind {
            ExprKind::Load { src, .. } => Some(*src),
            _ => None,
        }
    }

    pub(crate) fn cast(&mut self, x: TVal, to: DType, span: Span) -> TVal {
        let from = x.ty();
        let ty = to.compute();
        if from == ty && matches!(to, DType::F32 | DType::I32 | DType::Bool) {
            return x;
        }
        let x = if matches!(to, DType::BF16 | DType::F16) && from != ScalarTy::F32 {
            self.cast(x, DType::F32, span)
        } else {
            x
        };
        if let (Some(Const::I32(v)), DType::F32) = (x.as_const(), to) {
            return TVal::scalar(Expr::constant(Const::F32(v as f32), span));
        }
        let axes = x.axes.clone();
        let shape = x.shape.clone();
        TVal { shape, axes, body: Expr::new(ExprKind::Cast(to, Box::new(x.body)), ty, span) }
    }

    fn perm_arg(&mut self, e: &ast::Expr, rank: usize) -> Option<Vec<usize>> {
        let A::List(items) = &e.kind else {
            self.err(Diagnostic::error(
                Code::BadPermutation,
                e.span,
                "`perm` must be a list of axes, e.g. `[0, 2, 1]`",
            ));
            return None;
        };
        let mut perm = Vec::new();
        for it in items {
            match self.const_value(it)? {
                Const::I32(v) if v >= -(rank as i64) && v < rank as i64 => {
                    perm.push(if v < 0 { (v + rank as i64) as usize } else { v as usize })
                }
                _ => {
                    self.err(Diagnostic::error(
                        Code::BadPermutation,
                        it.span,
                        format!("not an axis of a rank-{rank} tensor"),
                    ));
                    return None;
                }
            }
        }
        let mut sorted = perm.clone();
        sorted.sort();
        if sorted != (0..rank).collect::<Vec<_>>() {
            self.err(
                Diagnostic::error(
                    Code::BadPermutation,
                    e.span,
                    format!("`perm` must list each of the {rank} axes exactly once"),
                )
                .with_note(format!("got {perm:?}")),
            );
            return None;
        }
        Some(perm)
    }

    fn reshape(&mut self, x: TVal, shape_e: &ast::Expr, span: Span) -> Option<TVal> {
        let A::List(items) = &shape_e.kind else {
            self.err(Diagnostic::error(
                Code::BadDim,
                shape_e.span,
                "`reshape` takes the new shape as a list, e.g. `[T, NG, E / NG]`",
            ));
            return None;
        };
        let mut shape = Vec::new();
        for it in items {
            shape.push(self.dim_arg(it)?);
        }
        let total = |s: &[Dim]| s.iter().fold(Dim::one(), |a, d| a.mul(d));
        let (from, to) = (total(&x.shape), total(&shape));
        if !from.within(super::MAX_DIM) || !to.within(super::MAX_DIM) {
            self.err(Diagnostic::error(Code::BadDim, span, "`reshape` of a tensor with more than 2^40 elements"));
            return None;
        }
        match self.dims_equal(&from, &to) {
            Some(true) => {}
            None => self.graph.asserts.push(DimAssert {
                lhs: from,
                rhs: to,
                span,
                what: "reshape keeps the number of elements".into(),
            }),
            Some(false) => {
                self.err(
                    Diagnostic::error(
                        Code::ReshapeMismatch,
                        span,
                        format!(
                            "`reshape` from {} to {} changes the number of elements",
                            fmt_shape(&x.shape),
                            fmt_shape(&shape)
                        ),
                    )
                    .with_label(format!(
                        "`{}` elements become `{}`",
                        total(&x.shape),
                        total(&shape)
                    )),
                );
                return None;
            }
        }
        // Keep the leading and trailing dims that match; linearize the rest.
        let src = x.shape.clone();
        let mut lead = 0;
        while lead < src.len() && lead < shape.len() && src[lead] == shape[lead] {
            lead += 1;
        }
        let mut trail = 0;
        while trail < src.len() - lead
            && trail < shape.len() - lead
            && src[src.len() - 1 - trail] == shape[shape.len() - 1 - trail]
        {
            trail += 1;
        }
        let dst = shape.clone();
        Some(self.reindex(&x, shape, span, |v| {
            let dim_e = |d: &Dim| match d.as_const() {
                Some(c) => int(c, span),
                None => Expr::new(ExprKind::Dim(d.clone()), ScalarTy::I32, span),
            };
            let bin =
                |op, a: Expr, b: Expr| Expr::new(ExprKind::Binary(op, Box::new(a), Box::new(b)), ScalarTy::I32, span);
            // The flat index over the middle of the new shape.
            let mut flat: Option<Expr> = None;
            for k in lead..dst.len() - trail {
                flat = Some(match flat {
                    None => v[k].clone(),
                    Some(f) => bin(BinOp::Add, bin(BinOp::Mul, f, dim_e(&dst[k])), v[k].clone()),
                });
            }
            let flat = flat.unwrap_or_else(|| int(0, span));
            let mid: Vec<Dim> = src[lead..src.len() - trail].to_vec();
            let mut idx: Vec<Expr> = v[..lead].to_vec();
            // Unravel over the middle of the old shape.
            let mut stride = Dim::one();
            let mut parts = Vec::new();
            for (j, d) in mid.iter().enumerate().rev() {
                let q = if stride.is_one() { flat.clone() } else { bin(BinOp::Div, flat.clone(), dim_e(&stride)) };
                parts.push(if j == 0 { q } else { bin(BinOp::Mod, q, dim_e(d)) });
                stride = stride.mul(d);
            }
            parts.reverse();
            idx.extend(parts);
            idx.extend(v[dst.len() - trail..].iter().cloned());
            idx
        }))
    }

    fn concat(&mut self, x: TVal, y: TVal, axis_e: Option<&ast::Expr>, span: Span) -> Option<TVal> {
        if x.rank() != y.rank() || x.rank() == 0 {
            self.err(Diagnostic::error(
                Code::ConcatMismatch,
                span,
                format!(
                    "`concat` joins tensors of one rank, but got {} and {}",
                    fmt_shape(&x.shape),
                    fmt_shape(&y.shape)
                ),
            ));
            return None;
        }
        let ax = self.axis_arg(axis_e, x.rank(), Some(0), span)??;
        for k in 0..x.rank() {
            if k != ax && self.dims_equal(&x.shape[k], &y.shape[k]) == Some(false) {
                self.err(Diagnostic::error(
                    Code::ConcatMismatch,
                    span,
                    format!(
                        "`concat` along axis {ax}: shapes {} and {} differ in dim {k}",
                        fmt_shape(&x.shape),
                        fmt_shape(&y.shape)
                    ),
                ));
                return None;
            }
        }
        if (x.ty() == ScalarTy::Bool) != (y.ty() == ScalarTy::Bool) {
            self.err(Diagnostic::error(Code::TypeMismatch, span, format!("`concat` of {} and {}", x.ty(), y.ty())));
            return None;
        }
        let (x, y) = self.unify(x, y);
        let mut shape = x.shape.clone();
        let a = x.shape[ax].clone();
        shape[ax] = a.add(&y.shape[ax]);
        let axes = self.fresh_axes(&shape, span);
        let var = |v: kc_ir::VarId| Expr::new(ExprKind::Var(v), ScalarTy::I32, span);
        let a_e = match a.as_const() {
            Some(c) => int(c, span),
            None => Expr::new(ExprKind::Dim(a.clone()), ScalarTy::I32, span),
        };
        let ix: Vec<Expr> = axes.iter().map(|v| var(*v)).collect();
        let mut iy = ix.clone();
        iy[ax] = Expr::new(
            ExprKind::Binary(BinOp::Sub, Box::new(var(axes[ax])), Box::new(a_e.clone())),
            ScalarTy::I32,
            span,
        );
        let ex = self.inline(&x, &ix);
        let ey = self.inline(&y, &iy);
        let cond = Expr::new(ExprKind::Binary(BinOp::Lt, Box::new(var(axes[ax])), Box::new(a_e)), ScalarTy::Bool, span);
        let ty = ex.ty;
        Some(TVal {
            shape,
            axes,
            body: Expr::new(ExprKind::Select(Box::new(cond), Box::new(ex), Box::new(ey)), ty, span),
        })
    }

    /// `sum(x, axis: A, keepdim: K)` and friends: reduces one axis, or all of them.
    fn reduce_axis(&mut self, name: &str, x: TVal, axis: Option<usize>, keepdim: bool, span: Span) -> Option<TVal> {
        if !self.not_bool(&x, span, &format!("`{name}`")) {
            return None;
        }
        let (op, arg) = match name {
            "sum" | "mean" => (ReduceOp::Sum, false),
            "max" => (ReduceOp::Max, false),
            "min" => (ReduceOp::Min, false),
            "argmax" => (ReduceOp::ArgMax, true),
            _ => (ReduceOp::ArgMin, true),
        };
        // A scalar reduces to itself (its index, 0, for argmax/argmin), as in NumPy.
        if x.rank() == 0 {
            return Some(match (arg, name) {
                (true, _) => TVal::scalar(int(0, span)),
                (false, "mean") => self.convert(x, ScalarTy::F32),
                _ => x,
            });
        }
        // argmax/argmin over everything: flat index of the row-major tensor.
        if arg && axis.is_none() && x.rank() != 1 {
            let n = x.shape.iter().fold(Dim::one(), |a, d| a.mul(d));
            let flat = self.flatten(&x, n, span);
            return self.reduce_axis(name, flat, Some(0), false, span);
        }
        let r = x.rank();
        let reduced: Vec<usize> = match axis {
            Some(a) => vec![a],
            None => (0..r).collect(),
        };
        let mut shape = Vec::new();
        for k in 0..r {
            if !reduced.contains(&k) {
                shape.push(x.shape[k].clone());
            } else if keepdim {
                shape.push(Dim::one());
            }
        }
        let axes = self.fresh_axes(&shape, span);
        let rvars: Vec<kc_ir::VarId> =
            reduced.iter().map(|&k| self.new_var(format!("r{k}"), Some(x.shape[k].clone()), span)).collect();
        let var = |v: kc_ir::VarId| Expr::new(ExprKind::Var(v), ScalarTy::I32, span);
        let mut idx = Vec::with_capacity(r);
        let mut j = 0;
        for k in 0..r {
            if let Some(p) = reduced.iter().position(|&q| q == k) {
                idx.push(var(rvars[p]));
                if keepdim {
                    j += 1;
                }
            } else {
                idx.push(var(axes[j]));
                j += 1;
            }
        }
        let body = self.inline(&x, &idx);
        let ty = op.check(body.ty)?;
        let red = Expr::new(ExprKind::Reduce { op, vars: rvars, body: Box::new(body) }, ty, span);
        let tv = TVal { shape, axes, body: red };
        let stored = self.stored(&tv, span)?;
        if name == "mean" {
            let count = reduced.iter().fold(Dim::one(), |a, &k| a.mul(&x.shape[k]));
            let c = TVal::scalar(match count.as_const() {
                Some(c) => Expr::constant(Const::F32(c as f32), span),
                None => Expr::new(
                    ExprKind::Cast(DType::F32, Box::new(Expr::new(ExprKind::Dim(count), ScalarTy::I32, span))),
                    ScalarTy::F32,
                    span,
                ),
            });
            let s = self.convert(stored, ScalarTy::F32);
            return self.bin(BinOp::Div, s, c, span, "mean");
        }
        Some(stored)
    }

    fn flatten(&mut self, x: &TVal, n: Dim, span: Span) -> TVal {
        let src = x.shape.clone();
        self.reindex(x, vec![n], span, |v| {
            let mut idx = Vec::new();
            let mut stride = Dim::one();
            for d in src.iter().rev() {
                let se = match stride.as_const() {
                    Some(c) => int(c, span),
                    None => Expr::new(ExprKind::Dim(stride.clone()), ScalarTy::I32, span),
                };
                let de = match d.as_const() {
                    Some(c) => int(c, span),
                    None => Expr::new(ExprKind::Dim(d.clone()), ScalarTy::I32, span),
                };
                let q =
                    Expr::new(ExprKind::Binary(BinOp::Div, Box::new(v[0].clone()), Box::new(se)), ScalarTy::I32, span);
                idx.push(Expr::new(ExprKind::Binary(BinOp::Mod, Box::new(q), Box::new(de)), ScalarTy::I32, span));
                stride = stride.mul(d);
            }
            idx.reverse();
            idx
        })
    }
}
