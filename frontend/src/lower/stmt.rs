//! Kernel signatures, statements and fn inlining.

use super::tval::{fmt_shape, int};
use super::{Bind, Lowerer, Scope, StmtBound, MAX_DIM, MAX_INLINE_DEPTH, MAX_NODES, MAX_STEPS, MAX_UNROLL, MAX_WORK};
use crate::ast::{self, ExprKind as A, LetTarget, StmtKind};
use kc_ir::{
    CmpOp, Code, Constraint, DType, Diagnostic, Dim, DimAssert, ExprKind, Graph, NodeKind, OutputDecl, Param,
    ParamKind, Result_, ScalarTy, Span, ValueId, VarId,
};
use std::collections::{BTreeMap, BTreeSet};

/// A lowered expression: one value or a tuple (of a `topk` or a fn's `return (a, b)`).
#[derive(Clone, Debug)]
pub(crate) enum Lowered {
    Val(super::TVal),
    Tuple(Vec<super::TVal>),
}

impl Lowerer<'_> {
    pub(crate) fn elem_type(&mut self, id: &ast::Ident) -> Option<DType> {
        let d = DType::from_name(&id.name);
        if d.is_none() {
            let mut diag = Diagnostic::error(Code::UnknownType, id.span, format!("unknown element type `{}`", id.name))
                .with_label("not an element type")
                .with_note("element types are f32, bf16, f16, i32 and bool");
            if let Some(s) = super::suggest(&id.name, DType::ALL.iter().map(|d| d.name())) {
                diag = diag.with_help(format!("did you mean `{s}`?"));
            }
            self.err(diag);
        }
        d
    }

    /// A dim from a dim expression. `introduce` lists symbols that may be created by this use (parameter
    /// types); `quiet` reports nothing (for probing whether an expression is made of dims).
    pub(crate) fn dim_of(&mut self, e: &ast::Expr, introduce: Option<&mut Vec<String>>, quiet: bool) -> Option<Dim> {
        let mut intro = introduce;
        let n = self.divisions.len();
        let d = self.dim_rec(e, &mut intro, quiet);
        if quiet && d.is_none() {
            self.divisions.truncate(n);
        }
        d
    }

    fn dim_rec(&mut self, e: &ast::Expr, intro: &mut Option<&mut Vec<String>>, quiet: bool) -> Option<Dim> {
        let d = self.dim_rec_inner(e, intro, quiet)?;
        if !d.within(MAX_DIM) {
            if !quiet {
                self.err(
                    Diagnostic::error(Code::BadDim, e.span, "this dimension is larger than 2^40")
                        .with_note("no tensor may have more than 2^40 elements"),
                );
            }
            return None;
        }
        Some(d)
    }

    fn dim_rec_inner(&mut self, e: &ast::Expr, intro: &mut Option<&mut Vec<String>>, quiet: bool) -> Option<Dim> {
        match &e.kind {
            A::Int(v) => Some(Dim::constant(*v)),
            A::Name(id) => match self.lookup(&id.name) {
                Some(Bind::Dim(d)) => Some(d.clone()),
                Some(Bind::Val(tv)) | Some(Bind::Let { tv, .. })
                    if tv.as_const().is_some_and(|c| matches!(c, kc_ir::Const::I32(_))) =>
                {
                    match tv.as_const() {
                        Some(kc_ir::Const::I32(v)) => Some(Dim::constant(v)),
                        _ => None,
                    }
                }
                Some(Bind::Poison) => None,
                Some(_) => {
                    if !quiet {
                        self.err(
                            Diagnostic::error(Code::BadDim, id.span, format!("`{}` is a value, not a dim", id.name))
                                .with_note("a dimension is made of dim symbols, integers and + - * / %"),
                        );
                    }
                    None
                }
                None => {
                    if let Some(list) = intro.as_deref_mut() {
                        if !list.contains(&id.name) {
                            list.push(id.name.clone());
                        }
                        self.define(&id.name, Bind::Dim(Dim::sym(&id.name)));
                        return Some(Dim::sym(&id.name));
                    }
                    if !quiet {
                        let names = self.visible_names();
                        let mut d = Diagnostic::error(Code::UnknownName, id.span, format!("unknown dim `{}`", id.name))
                            .with_label("not defined here")
                            .with_note(
                                "dims are introduced by parameter types, `name: dim` parameters and `where NAME == N`",
                            );
                        if let Some(s) = super::suggest(&id.name, names.iter().map(|s| s.as_str())) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        self.err(d);
                    }
                    None
                }
            },
            A::Unary(ast::UnaryOp::Neg, a) => Some(self.dim_rec(a, intro, quiet)?.neg()),
            A::Binary(op, a, b) => {
                let x = self.dim_rec(a, intro, quiet);
                let y = self.dim_rec(b, intro, quiet);
                let (x, y) = (x?, y?);
                match op {
                    ast::BinaryOp::Add => Some(x.add(&y)),
                    ast::BinaryOp::Sub => Some(x.sub(&y)),
                    ast::BinaryOp::Mul => Some(x.mul(&y)),
                    ast::BinaryOp::Div => {
                        if y.as_const() == Some(0) {
                            if !quiet {
                                self.err(Diagnostic::error(Code::DivByZero, e.span, "a dim divided by zero"));
                            }
                            return None;
                        }
                        if let (Some(p), Some(q)) = (x.as_const(), y.as_const()) {
                            if p % q != 0 {
                                if !quiet {
                                    self.err(
                                        Diagnostic::error(
                                            Code::InexactDim,
                                            e.span,
                                            format!("`{p} / {q}` does not divide exactly"),
                                        )
                                        .with_note("`/` on dims must divide exactly"),
                                    );
                                }
                                return None;
                            }
                        }
                        let q = x.div(&y);
                        if q.as_atom().is_some_and(|a| matches!(a, kc_ir::dim::Atom::Div(..))) {
                            self.divisions.push((x, y, e.span));
                        }
                        Some(q)
                    }
                    ast::BinaryOp::Mod => {
                        if y.as_const() == Some(0) {
                            if !quiet {
                                self.err(Diagnostic::error(Code::DivByZero, e.span, "a dim divided by zero"));
                            }
                            return None;
                        }
                        Some(x.rem(&y))
                    }
                    _ => {
                        if !quiet {
                            self.err(
                                Diagnostic::error(
                                    Code::BadDim,
                                    e.span,
                                    format!("`{}` is not a dim operation", op.symbol()),
                                )
                                .with_note("a dimension is made of dim symbols, integers and + - * / %"),
                            );
                        }
                        None
                    }
                }
            }
            A::Error => None,
            _ => {
                if !quiet {
                    self.err(
                        Diagnostic::error(Code::BadDim, e.span, "expected a dimension")
                            .with_note("a dimension is made of dim symbols, integers and + - * / %"),
                    );
                }
                None
            }
        }
    }

    /// Lowers a kernel; `None` if its signature is too broken to go on.
    pub(crate) fn kernel(&mut self, k: &ast::KernelDef) -> Option<Graph> {
        self.graph.name = k.name.name.clone();
        self.graph.doc = k.doc.clone();
        self.graph.span = k.name.span;
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        let mut dims: Vec<String> = Vec::new();
        let mut check_dup = |lw: &mut Self, id: &ast::Ident| {
            if let Some(prev) = seen.get(&id.name) {
                lw.err(
                    Diagnostic::error(Code::DuplicateParam, id.span, format!("`{}` is declared twice", id.name))
                        .with_label("declared again here")
                        .with_secondary(*prev, "first declared here"),
                );
                false
            } else {
                seen.insert(id.name.clone(), id.span);
                true
            }
        };

        // Parameters: types introduce dim symbols.
        let mut params: Vec<(Param, Option<DType>)> = Vec::new();
        // False once any part of the signature fails to lower (its error is reported, maybe by the parser).
        let mut sig_ok = true;
        for p in &k.params {
            if !check_dup(self, &p.name) {
                continue;
            }
            match &p.kind {
                ast::ParamKind::Dim => {
                    if matches!(self.lookup(&p.name.name), Some(Bind::Dim(_))) && dims.contains(&p.name.name) {
                        // Already introduced by an earlier type: the dim parameter gives its value.
                    } else {
                        dims.push(p.name.name.clone());
                        self.define(&p.name.name, Bind::Dim(Dim::sym(&p.name.name)));
                    }
                    params.push((Param { name: p.name.name.clone(), kind: ParamKind::Dim, span: p.span }, None));
                }
                ast::ParamKind::Value { inout, ty } => {
                    let dtype = self.elem_type(&ty.elem);
                    let mut shape = Vec::new();
                    let mut ok = true;
                    for d in ty.shape.iter().flatten() {
                        match self.dim_of(d, Some(&mut dims), false) {
                            Some(x) if x.as_const().is_some_and(|c| c < 0) => {
                                self.err(Diagnostic::error(
                                    Code::BadDim,
                                    d.span,
                                    format!("a dimension cannot be negative (`{x}`)"),
                                ));
                                ok = false;
                            }
                            Some(x) => shape.push(x),
                            None => ok = false,
                        }
                    }
                    if let (Some(dtype), true) = (dtype, ok) {
                        params.push((
                            Param {
                                name: p.name.name.clone(),
                                kind: ParamKind::Tensor { dtype, shape, inout: *inout },
                                span: p.span,
                            },
                            Some(dtype),
                        ));
                    } else {
                        sig_ok = false;
                        self.define(&p.name.name, Bind::Poison);
                    }
                }
            }
        }
        for o in &k.outputs {
            check_dup(self, &o.name);
        }
        // A dim symbol and a parameter may not share a name.
        for p in &params {
            if matches!(p.0.kind, ParamKind::Tensor { .. }) && dims.contains(&p.0.name) {
                self.err(Diagnostic::error(
                    Code::DuplicateParam,
                    p.0.span,
                    format!("`{}` names both a tensor and a dim", p.0.name),
                ));
            }
        }

        // The where clause: fixed dims first, then every constraint.
        let mut pending: Vec<(&ast::Expr, Dim, CmpOp, Dim)> = Vec::new();
        // `NAME == literal` constraints come first, whatever their order: they introduce dims.
        let mut ordered: Vec<&ast::Expr> = k.constraints.iter().collect();
        ordered.sort_by_key(|c| fixed_dim(c).is_none());
        for c in ordered {
            let A::Binary(op, a, b) = &c.kind else {
                if !matches!(c.kind, A::Error) {
                    self.err(
                        Diagnostic::error(Code::BadConstraint, c.span, "a constraint must compare dims")
                            .with_help("write e.g. `D == 128`, `H % G == 0` or `S <= T`"),
                    );
                }
                continue;
            };
            let cmp = match op {
                ast::BinaryOp::Eq => CmpOp::Eq,
                ast::BinaryOp::Ne => CmpOp::Ne,
                ast::BinaryOp::Lt => CmpOp::Lt,
                ast::BinaryOp::Le => CmpOp::Le,
                ast::BinaryOp::Gt => CmpOp::Gt,
                ast::BinaryOp::Ge => CmpOp::Ge,
                _ => {
                    self.err(
                        Diagnostic::error(
                            Code::BadConstraint,
                            c.span,
                            format!("`{}` is not a comparison", op.symbol()),
                        )
                        .with_help("constraints are comparisons of dims, separated by commas (they all must hold)"),
                    );
                    continue;
                }
            };
            // `NAME == literal` fixes (and may introduce) the dim.
            let fix = fixed_dim(c);
            if let Some((n, v)) = fix {
                let known = matches!(self.lookup(&n.name), Some(Bind::Dim(_)));
                let is_value =
                    k.params.iter().any(|p| p.name.name == n.name && matches!(p.kind, ast::ParamKind::Value { .. }))
                        || k.outputs.iter().any(|o| o.name.name == n.name);
                if is_value || (!known && self.lookup(&n.name).is_some()) {
                    self.err(Diagnostic::error(
                        Code::BadConstraint,
                        n.span,
                        format!("`{}` is a value, not a dim", n.name),
                    ));
                    continue;
                }
                if let Some(prev) = self.fixed.get(&n.name) {
                    if *prev != v {
                        self.err(
                            Diagnostic::error(
                                Code::ConstraintFalse,
                                c.span,
                                format!("`{}` is fixed to {prev} and to {v}", n.name),
                            )
                            .with_label("this constraint can never hold"),
                        );
                    }
                    continue;
                }
                if v < 0 {
                    self.err(Diagnostic::error(
                        Code::ConstraintFalse,
                        c.span,
                        format!("`{}` is a size and cannot be {v}", n.name),
                    ));
                    continue;
                }
                if !known {
                    dims.push(n.name.clone());
                    self.define(&n.name, Bind::Dim(Dim::sym(&n.name)));
                }
                self.fixed.insert(n.name.clone(), v);
            }
            let l = self.dim_of(a, None, false);
            let r = self.dim_of(b, None, false);
            if let (Some(l), Some(r), CmpOp::Eq) = (&l, &r, cmp) {
                if let (Some(x), Some(y)) = (l.as_sym(), r.as_sym()) {
                    self.equal_syms.push((x.to_string(), y.to_string()));
                }
            }
            if let (Some(l), Some(r)) = (l, r) {
                pending.push((c, l, cmp, r));
            }
        }
        for (name, v) in &self.fixed {
            self.graph.fixed.push((name.clone(), *v));
        }
        for (c, l, cmp, r) in pending {
            let (nl, nr) = (self.norm(&l), self.norm(&r));
            if let (Some(x), Some(y)) = (nl.as_const(), nr.as_const()) {
                if !cmp.holds(x, y) {
                    self.err(
                        Diagnostic::error(Code::ConstraintFalse, c.span, "this constraint can never hold")
                            .with_label(format!("{x} {} {y} is false", cmp.symbol())),
                    );
                }
            }
            if cmp == CmpOp::Eq {
                if let (Some(0), Some(kc_ir::dim::Atom::Mod(x, y))) = (nr.as_const(), single_mod(&nl)) {
                    if let Some(c) = y.as_const() {
                        self.divisible.push(((*x).clone(), c));
                    }
                }
            }
            let text = format!("{l} {} {r}", cmp.symbol());
            self.graph.constraints.push(Constraint { lhs: nl, op: cmp, rhs: nr, span: c.span, text });
        }

        // Substitute fixed dims into the parameter types; every symbol must be computable at launch.
        for (p, _) in params.iter_mut() {
            if let ParamKind::Tensor { shape, .. } = &mut p.kind {
                for d in shape.iter_mut() {
                    *d = self.norm(d);
                }
            }
        }
        let mut unbound: BTreeSet<String> = BTreeSet::new();
        let solvable = self.solvable(&params.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
        for (p, _) in &params {
            if let ParamKind::Tensor { shape, .. } = &p.kind {
                for d in shape {
                    for s in d.symbols() {
                        if !solvable.contains(&s) && sig_ok && unbound.insert(s.clone()) {
                            self.err(
                                Diagnostic::error(
                                    Code::OutputDimUnbound,
                                    p.span,
                                    format!("dim `{s}` cannot be bound from the arguments' shapes"),
                                )
                                .with_label(format!("`{d}` is the only place `{s}` appears"))
                                .with_help(format!(
                                    "add a parameter `{s}: dim`, or a constraint such as `where {s} == 64`"
                                )),
                            );
                        }
                    }
                }
            }
        }
        self.graph.dims = dims.clone();

        // Outputs.
        for o in &k.outputs {
            let dtype = self.elem_type(&o.ty.elem);
            let mut shape = Vec::new();
            let mut ok = true;
            for d in o.ty.shape.iter().flatten() {
                match self.dim_of(d, None, false) {
                    Some(x) => {
                        let x = self.norm(&x);
                        for s in x.symbols() {
                            if solvable.contains(&s) {
                                continue;
                            }
                            ok = false;
                            if sig_ok && unbound.insert(s.clone()) {
                                self.err(
                                    Diagnostic::error(
                                        Code::OutputDimUnbound,
                                        d.span,
                                        format!("output dim `{s}` cannot be computed from the inputs"),
                                    )
                                    .with_help(format!(
                                        "add a parameter `{s}: dim`, or a constraint such as `where {s} == 64`"
                                    )),
                                );
                            }
                        }
                        shape.push(x)
                    }
                    None => ok = false,
                }
            }
            if let (Some(dtype), true) = (dtype, ok) {
                self.graph.outputs.push(OutputDecl { name: o.name.name.clone(), dtype, shape, span: o.span });
            } else {
                self.graph.outputs.push(OutputDecl {
                    name: o.name.name.clone(),
                    dtype: DType::F32,
                    shape: vec![],
                    span: o.span,
                });
                sig_ok = false;
                self.define(&o.name.name, Bind::Poison);
            }
        }

        // Parameter nodes and bindings.
        for (i, (p, _)) in params.iter().enumerate() {
            if let ParamKind::Tensor { dtype, shape, inout } = &p.kind {
                self.nodes.push(kc_ir::Node {
                    name: Some(p.name.clone()),
                    dtype: *dtype,
                    shape: shape.clone(),
                    kind: NodeKind::Param(i),
                    span: p.span,
                });
                let tv = self.load_node(ValueId(self.nodes.len() as u32 - 1), p.span);
                let b = if *inout { Bind::Inout { param: i, tv, assigned: None } } else { Bind::Val(tv) };
                self.define(&p.name, b);
            }
        }
        self.graph.params = params.into_iter().map(|p| p.0).collect();
        for (idx, o) in k.outputs.iter().enumerate() {
            if !matches!(self.lookup(&o.name.name), Some(Bind::Poison)) {
                self.define(&o.name.name, Bind::Output { idx, value: None });
            }
        }

        // The body. Divisions in the signature are checked by launch binding (E0806); those in the body
        // become constraints.
        self.divisions.clear();
        self.scopes.push(Scope::default());
        for s in &k.body.stmts {
            if self.too_big {
                break;
            }
            if let StmtKind::Return(_) = s.kind {
                self.err(
                    Diagnostic::error(Code::UnexpectedToken, s.span, "a kernel does not `return`")
                        .with_help("assign the kernel's outputs instead: `out = ...;`"),
                );
                continue;
            }
            self.stmt(s);
        }
        self.scopes.pop();

        // Every output and inout must be assigned (unless a statement the parser could not read, or the
        // size limit, may have been the assignment: that error is reported already).
        let quiet = self.too_big || has_error_stmt(&k.body);
        let mut results = Vec::new();
        for (idx, o) in k.outputs.iter().enumerate() {
            match self.lookup(&o.name.name) {
                Some(Bind::Output { value: Some((_, v)), .. }) => {
                    results.push(Result_ { name: o.name.name.clone(), value: *v, inout: None })
                }
                Some(Bind::Output { value: None, .. }) if !quiet => self.err(
                    Diagnostic::error(
                        Code::NotAssigned,
                        o.name.span,
                        format!("output `{}` is never assigned", o.name.name),
                    )
                    .with_help(format!("assign it in the body: `{} = ...;`", o.name.name)),
                ),
                _ => {
                    let _ = idx;
                }
            }
        }
        for (i, p) in self.graph.params.clone().iter().enumerate() {
            if let ParamKind::Tensor { inout: true, .. } = p.kind {
                match self.lookup(&p.name) {
                    Some(Bind::Inout { assigned: Some(v), .. }) => {
                        results.push(Result_ { name: p.name.clone(), value: *v, inout: Some(i) })
                    }
                    Some(Bind::Inout { assigned: None, .. }) if !quiet => self.err(
                        Diagnostic::error(Code::NotAssigned, p.span, format!("inout `{}` is never assigned", p.name))
                            .with_help("assign it in the body, or declare it without `inout`"),
                    ),
                    _ => {}
                }
            }
        }
        self.copy_shared_results(&mut results);
        self.graph.results = results;
        self.division_constraints();
        // A kernel with an unreadable statement, a parameter or output that did not lower, or a result that
        // is missing for any reason is not returned (its errors are reported).
        let n_inout =
            self.graph.params.iter().filter(|p| matches!(p.kind, ParamKind::Tensor { inout: true, .. })).count();
        let complete = sig_ok && self.graph.results.len() == self.graph.outputs.len() + n_inout;
        if quiet || !complete || self.diags.iter().any(|d| d.is_error()) {
            return None;
        }
        self.finish();
        Some(std::mem::take(&mut self.graph))
    }

    /// Gives every result a value of its own: a result whose value is a parameter (`y = x;`, `m = x;` for an
    /// `inout` m, `y = m;` before `m` is updated) or the value of an earlier result (`b = a;`) gets a copy
    /// node. The tile programs write each result to its own tensor from the group that computes its value;
    /// a shared value is written once, to the first tensor that holds it, and the other result's tensor was
    /// never written.
    fn copy_shared_results(&mut self, results: &mut [Result_]) {
        let mut seen = BTreeSet::new();
        for r in results.iter_mut() {
            let node = &self.nodes[r.value.index()];
            if !matches!(node.kind, NodeKind::Param(_)) && seen.insert(r.value) {
                continue;
            }
            let (dtype, shape, span) = (node.dtype, node.shape.clone(), node.span);
            let vars: Vec<kc_ir::graph::IndexVar> = shape
                .iter()
                .enumerate()
                .map(|(i, d)| kc_ir::graph::IndexVar { name: format!("i{i}"), extent: d.clone() })
                .collect();
            let ty = dtype.compute();
            let idx = (0..shape.len())
                .map(|i| kc_ir::Expr::new(ExprKind::Var(VarId(i as u32)), ScalarTy::I32, span))
                .collect();
            let body = kc_ir::Expr::new(ExprKind::Load { src: r.value, idx }, ty, span);
            self.nodes.push(kc_ir::Node {
                name: Some(r.name.clone()),
                dtype,
                shape,
                kind: NodeKind::Compute { vars, body },
                span,
            });
            r.value = ValueId(self.nodes.len() as u32 - 1);
            seen.insert(r.value);
        }
    }

    /// Every dim division that did not simplify must divide exactly: checked at launch (E0806), unless
    /// the `where` clause already says so.
    fn division_constraints(&mut self) {
        for (x, y, span) in std::mem::take(&mut self.divisions) {
            let (nx, ny) = (self.norm(&x), self.norm(&y));
            let rem = nx.rem(&ny);
            if rem.as_const() == Some(0) {
                continue;
            }
            let zero = Dim::zero();
            let known = self
                .graph
                .constraints
                .iter()
                .any(|c| c.op == CmpOp::Eq && ((c.lhs == rem && c.rhs == zero) || (c.rhs == rem && c.lhs == zero)));
            let what = format!("`{x} / {y}` divides exactly");
            if !known && !self.graph.asserts.iter().any(|d| d.what == what) {
                // Evaluating the quotient at launch refuses an inexact division (E0806).
                self.graph.asserts.push(DimAssert { lhs: nx.div(&ny).mul(&ny), rhs: nx, span, what });
            }
        }
    }

    /// The dim symbols that launch binding can compute from the parameters.
    fn solvable(&self, params: &[Param]) -> BTreeSet<String> {
        let mut known: BTreeSet<String> = self.fixed.keys().cloned().collect();
        for p in params {
            if p.kind == ParamKind::Dim {
                known.insert(p.name.clone());
            }
        }
        loop {
            let mut progress = false;
            for p in params {
                if let ParamKind::Tensor { shape, .. } = &p.kind {
                    for d in shape {
                        let pd = d.partial_eval(&|s| known.contains(s).then_some(7));
                        if let Some((s, _, _)) = pd.as_linear() {
                            progress |= known.insert(s);
                        }
                    }
                }
            }
            if !progress {
                return known;
            }
        }
    }

    /// Drops the nodes no result needs (parameters stay), renumbering the rest in order.
    fn finish(&mut self) {
        let n = self.nodes.len();
        let mut live = vec![false; n];
        for r in &self.graph.results {
            live[r.value.index()] = true;
        }
        for i in (0..n).rev() {
            if matches!(self.nodes[i].kind, NodeKind::Param(_)) {
                live[i] = true;
            }
            if live[i] {
                for o in self.nodes[i].operands() {
                    live[o.index()] = true;
                }
            }
        }
        let mut map = vec![ValueId(u32::MAX); n];
        let mut kept = Vec::new();
        for (i, node) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if live[i] {
                map[i] = ValueId(kept.len() as u32);
                kept.push(node);
            }
        }
        for node in &mut kept {
            match &mut node.kind {
                NodeKind::Compute { body, .. } => remap(body, &map),
                NodeKind::TopK { src, .. }
                | NodeKind::ArgSort { src, .. }
                | NodeKind::CumSum { src, .. }
                | NodeKind::BinCount { src, .. } => *src = map[src.index()],
                NodeKind::Param(_) => {}
            }
        }
        for r in &mut self.graph.results {
            r.value = map[r.value.index()];
        }
        // A hint on a node no result needs goes with it: nothing is computed there.
        self.graph.hints.retain_mut(|h| match map.get(h.node.index()) {
            Some(&v) if v.0 != u32::MAX => {
                h.node = v;
                true
            }
            _ => false,
        });
        self.graph.nodes = kept;
    }

    pub(crate) fn check_size(&mut self, span: Span) -> bool {
        if self.too_big {
            return false;
        }
        let message = if self.nodes.len() > MAX_NODES || self.work > MAX_WORK {
            format!("the kernel unrolls to more than {MAX_NODES} operations (or {MAX_WORK} expression nodes)")
        } else if self.steps > MAX_STEPS {
            format!("the kernel unrolls to more than {MAX_STEPS} statements and loop iterations")
        } else {
            return true;
        };
        self.too_big = true;
        self.err(
            Diagnostic::error(Code::UnrollLimit, span, message)
                .with_note("`for` loops are unrolled and fns inlined at every call; reduce the trip counts"),
        );
        false
    }

    pub(crate) fn stmt(&mut self, s: &ast::Stmt) {
        self.steps += 1;
        if !self.check_size(s.span) {
            return;
        }
        let hints = self.read_hints(s);
        match &s.kind {
            StmtKind::Error | StmtKind::Return(_) => {}
            StmtKind::Let { target, ty, value } => {
                let bound = self.let_stmt(target, ty.as_ref(), value, s.span);
                match target {
                    LetTarget::Name(id) => self.attach_hints(hints, bound, id, None),
                    LetTarget::Indexed(id, binders) => self.attach_hints(hints, bound, id, Some(binders)),
                    LetTarget::Tuple(..) => {}
                }
            }
            StmtKind::Assign { name, indices, value } => {
                let bound = self.assign(name, indices.as_deref(), value, s.span);
                self.attach_hints(hints, bound, name, indices.as_deref());
            }
            StmtKind::For { var, lo, hi, body } => {
                let lo_v = self.loop_bound(lo);
                let hi_v = self.loop_bound(hi);
                let (Some(lo_v), Some(hi_v)) = (lo_v, hi_v) else { return };
                if hi_v - lo_v > MAX_UNROLL {
                    self.err(
                        Diagnostic::error(
                            Code::UnrollLimit,
                            s.span,
                            format!(
                                "this loop runs {} times; loops are unrolled, at most {MAX_UNROLL} times",
                                hi_v - lo_v
                            ),
                        )
                        .with_label("too many iterations"),
                    );
                    return;
                }
                for i in lo_v..hi_v {
                    // An iteration is a step even when its body is empty. (The other limits are checked
                    // by the statements, which point at the innermost one.)
                    self.steps += 1;
                    if self.steps > MAX_STEPS && !self.check_size(s.span) {
                        break;
                    }
                    self.scopes.push(Scope::default());
                    self.define(&var.name, Bind::Dim(Dim::constant(i)));
                    for st in &body.stmts {
                        if let StmtKind::Return(_) = st.kind {
                            self.err(Diagnostic::error(
                                Code::UnexpectedToken,
                                st.span,
                                "`return` is not allowed inside a `for` loop",
                            ));
                            continue;
                        }
                        self.stmt(st);
                    }
                    self.scopes.pop();
                    if self.too_big || self.diags.iter().filter(|d| d.is_error()).count() > 50 {
                        break;
                    }
                }
            }
        }
    }

    fn loop_bound(&mut self, e: &ast::Expr) -> Option<i64> {
        let d = self.dim_of(e, None, false)?;
        let d = self.norm(&d);
        match d.as_const() {
            Some(v) => Some(v),
            None => {
                self.err(
                    Diagnostic::error(
                        Code::LoopBound,
                        e.span,
                        format!(
                            "a `for` bound must be a literal or a fixed dim, but `{d}` is not known at compile time"
                        ),
                    )
                    .with_note("loops are unrolled at compile time")
                    .with_help("fix the dim with `where NAME == N`"),
                );
                None
            }
        }
    }

    /// Index variables for the binders of index notation, with their explicit ranges (or `default`).
    pub(crate) fn binders(&mut self, binders: &[ast::IndexBinder], defaults: Option<&[Dim]>) -> Option<Vec<VarId>> {
        let mut vars = Vec::new();
        let mut names: BTreeMap<&str, Span> = BTreeMap::new();
        let mut ok = true;
        for (k, b) in binders.iter().enumerate() {
            if let Some(prev) = names.insert(&b.name.name, b.name.span) {
                self.err(
                    Diagnostic::error(
                        Code::DuplicateIndex,
                        b.name.span,
                        format!("index `{}` is bound twice", b.name.name),
                    )
                    .with_secondary(prev, "first bound here"),
                );
                ok = false;
            }
            if let Some(Bind::Index(_)) = self.lookup(&b.name.name) {
                self.err(
                    Diagnostic::error(
                        Code::DuplicateIndex,
                        b.name.span,
                        format!("index `{}` is already bound by an enclosing definition", b.name.name),
                    )
                    .with_help("choose another name for this index"),
                );
                ok = false;
            }
            let explicit = match &b.range {
                Some((lo, hi)) => {
                    let lo_d = self.dim_of(lo, None, false);
                    if let Some(l) = &lo_d {
                        if self.norm(l).as_const() != Some(0) {
                            self.err(
                                Diagnostic::error(Code::BadRange, lo.span, "an index range must start at 0")
                                    .with_help("shift the index in the expression instead, e.g. `x[i + 1]`"),
                            );
                            ok = false;
                        }
                    }
                    match self.dim_of(hi, None, false) {
                        Some(h) => Some(self.norm(&h)),
                        None => {
                            ok = false;
                            None
                        }
                    }
                }
                None => None,
            };
            let extent = match (explicit, defaults.and_then(|d| d.get(k))) {
                (Some(e), Some(d)) => {
                    if self.dims_equal(&e, d) == Some(false) {
                        self.err(Diagnostic::error(
                            Code::RangeConflict,
                            b.span,
                            format!("index `{}` has range `{e}` here but the target's dim is `{d}`", b.name.name),
                        ));
                        ok = false;
                    }
                    Some(d.clone())
                }
                (e, d) => e.or_else(|| d.cloned()),
            };
            let v = self.new_var(&b.name.name, extent, b.name.span);
            vars.push(v);
        }
        ok.then_some(vars)
    }

    /// Infers each variable's range from its plain uses (`x[.., i, ..]`) and checks they agree.
    pub(crate) fn resolve_ranges(&mut self, vars: &[VarId]) -> bool {
        let mut ok = true;
        for v in vars {
            let g = self.vars[v.index()].clone();
            match &g.extent {
                Some(ext) => {
                    for (d, span, masked) in &g.uses {
                        // An axis at least as large as the range is always in bounds.
                        let larger = d.sub(ext).as_const().is_some_and(|c| c >= 0);
                        if !masked && !larger && self.dims_equal(d, ext) == Some(false) {
                            self.err(
                                Diagnostic::error(
                                    Code::RangeConflict,
                                    *span,
                                    format!(
                                        "index `{}` ranges over `{ext}` but indexes a dim of size `{d}` here",
                                        g.name
                                    ),
                                )
                                .with_label(format!("this axis is `{d}`"))
                                .with_secondary(g.span, format!("`{}` ranges over `{ext}`", g.name))
                                .with_help("guard the access with `where(...)`, or fix the range"),
                            );
                            ok = false;
                        }
                    }
                }
                None => {
                    let Some((first, first_span, _)) = g.uses.first().cloned() else {
                        self.err(
                            Diagnostic::error(
                                Code::RangeNotInferred,
                                g.span,
                                format!("the range of index `{}` cannot be inferred", g.name),
                            )
                            .with_label("never used directly as an index of a tensor")
                            .with_help(format!("write the range explicitly: `{} in 0..N`", g.name)),
                        );
                        ok = false;
                        continue;
                    };
                    let mut conflict = false;
                    for (d, span, _) in &g.uses[1..] {
                        if self.dims_equal(d, &first) == Some(false) {
                            self.err(
                                Diagnostic::error(Code::RangeConflict, *span, format!("index `{}` has range `{first}` here and `{d}` there", g.name))
                                    .with_label(format!("this axis is `{d}`"))
                                    .with_secondary(first_span, format!("this axis is `{first}`"))
                                    .with_help(format!("write the range explicitly (`{} in 0..N`) and guard the other access with `where(...)`", g.name)),
                            );
                            conflict = true;
                            break;
                        }
                    }
                    if conflict {
                        ok = false;
                    } else {
                        self.vars[v.index()].extent = Some(first);
                    }
                }
            }
        }
        ok
    }

    /// Lowers index notation `[binders] = value` to a value over the binders.
    fn index_def(
        &mut self,
        binders: &[ast::IndexBinder],
        defaults: Option<&[Dim]>,
        value: &ast::Expr,
    ) -> Option<super::TVal> {
        let vars = self.binders(binders, defaults)?;
        let body = self.over_indices(&vars, binders, value, "the right side of index notation")?;
        let shape = vars.iter().map(|v| self.vars[v.index()].extent.clone().unwrap_or_else(Dim::zero)).collect();
        Some(super::TVal { shape, axes: vars, body: body.body })
    }

    /// Lowers `body` with the binders' index variables in scope and their plain uses recorded, checks that
    /// it is one element (`what` names it in the error), and infers the variables' ranges.
    pub(crate) fn over_indices(
        &mut self,
        vars: &[VarId],
        binders: &[ast::IndexBinder],
        body: &ast::Expr,
        what: &str,
    ) -> Option<super::TVal> {
        self.scopes.push(Scope::default());
        for (b, v) in binders.iter().zip(vars) {
            self.define(&b.name.name, Bind::Index(*v));
        }
        let n = self.collecting.len();
        self.collecting.extend(vars.iter().copied());
        let inner = self.expr(body);
        self.collecting.truncate(n);
        self.scopes.pop();
        let inner = inner?;
        if inner.rank() != 0 {
            self.err(
                Diagnostic::error(
                    Code::RankMismatch,
                    body.span,
                    format!("{what} must be one element, but this is a tensor of shape {}", fmt_shape(&inner.shape)),
                )
                .with_help("index every tensor in it, e.g. `x[i, j]`"),
            );
            return None;
        }
        self.resolve_ranges(vars).then_some(inner)
    }

    fn check_new_name(&mut self, id: &ast::Ident) -> bool {
        let scope_has = self.scopes.last().is_some_and(|s| s.names.contains_key(&id.name));
        let shadowed = match self.lookup(&id.name) {
            Some(Bind::Output { .. } | Bind::Inout { .. }) => Some("an output or inout"),
            Some(Bind::Dim(_)) => Some("a dim"),
            Some(Bind::Val(_)) => Some("a parameter"),
            _ => None,
        };
        if scope_has || shadowed.is_some() {
            let what = shadowed.map(|w| format!("it is {w}")).unwrap_or_else(|| "by a `let` in this scope".to_string());
            self.err(
                Diagnostic::error(Code::Redefinition, id.span, format!("`{}` is already defined: {what}", id.name))
                    .with_help(format!("rebind it with `{} = ...;` or choose another name", id.name)),
            );
            return false;
        }
        true
    }

    /// Checks a value against a storage type; converts i32 to float storage.
    #[allow(clippy::wrong_self_convention)] // `self` is the lowering context, not the value converted
    fn to_storage(
        &mut self,
        tv: super::TVal,
        storage: DType,
        span: Span,
        what: &str,
        code: Code,
    ) -> Option<super::TVal> {
        let want = storage.compute();
        match (tv.ty(), want) {
            (a, b) if a == b => Some(tv),
            (ScalarTy::I32, ScalarTy::F32) => Some(self.convert(tv, ScalarTy::F32)),
            (a, _) => {
                let help = match want {
                    ScalarTy::F32 => "convert it with `f32(...)`",
                    ScalarTy::I32 => "convert it with `i32(...)` (truncates toward zero)",
                    ScalarTy::Bool => "compare it, e.g. `x != 0`",
                };
                self.err(
                    Diagnostic::error(code, span, format!("{what} is {storage} but the value is {a}")).with_help(help),
                );
                None
            }
        }
    }

    /// Lowers a `let`; returns what it bound (a tuple binds several values: `Failed`, it takes no hints).
    fn let_stmt(&mut self, target: &LetTarget, ty: Option<&ast::Ident>, value: &ast::Expr, span: Span) -> StmtBound {
        let storage = match ty {
            Some(t) => match self.elem_type(t) {
                Some(d) => Some(d),
                None => {
                    self.poison_target(target);
                    return StmtBound::Failed;
                }
            },
            None => None,
        };
        match target {
            LetTarget::Name(id) => {
                if !self.check_new_name(id) {
                    return StmtBound::Failed;
                }
                if storage.is_none() {
                    if let Some(d) = self.dim_of(value, None, true) {
                        if !d.symbols().is_empty() {
                            let d = self.norm(&d);
                            self.define(&id.name, Bind::Dim(d));
                            return StmtBound::Dim;
                        }
                    }
                }
                let Some(v) = self.expr_any(value) else {
                    self.define(&id.name, Bind::Poison);
                    return StmtBound::Failed;
                };
                let tv = match v {
                    Lowered::Val(tv) => tv,
                    Lowered::Tuple(parts) => {
                        self.err(
                            Diagnostic::error(
                                Code::TupleAsValue,
                                value.span,
                                format!("this is a tuple of {} values", parts.len()),
                            )
                            .with_help("destructure it: `let (a, b) = ...;` (`_` drops a part)"),
                        );
                        self.define(&id.name, Bind::Poison);
                        return StmtBound::Failed;
                    }
                };
                self.bind_let(id, tv, storage, span)
            }
            LetTarget::Indexed(id, binders) => {
                if !self.check_new_name(id) {
                    return StmtBound::Failed;
                }
                match self.index_def(binders, None, value) {
                    Some(tv) => self.bind_let(id, tv, storage, span),
                    None => {
                        self.define(&id.name, Bind::Poison);
                        StmtBound::Failed
                    }
                }
            }
            LetTarget::Tuple(names, tspan) => {
                let ok: Vec<bool> = names.iter().flatten().map(|n| self.check_new_name(n)).collect();
                let Some(v) = self.expr_any(value) else {
                    self.poison_target(target);
                    return StmtBound::Failed;
                };
                let parts = match v {
                    Lowered::Tuple(p) => p,
                    Lowered::Val(_) => {
                        self.err(
                            Diagnostic::error(
                                Code::TupleArity,
                                *tspan,
                                format!("destructuring {} names from a single value", names.len()),
                            )
                            .with_secondary(value.span, "this is one value"),
                        );
                        self.poison_target(target);
                        return StmtBound::Failed;
                    }
                };
                if parts.len() != names.len() {
                    self.err(
                        Diagnostic::error(
                            Code::TupleArity,
                            *tspan,
                            format!("destructuring {} names from a tuple of {}", names.len(), parts.len()),
                        )
                        .with_secondary(value.span, format!("this has {} parts", parts.len())),
                    );
                    self.poison_target(target);
                    return StmtBound::Failed;
                }
                if ok.iter().any(|o| !o) {
                    return StmtBound::Failed;
                }
                for (n, tv) in names.iter().zip(parts) {
                    if let Some(id) = n {
                        self.bind_let(id, tv, storage, span);
                    }
                }
                StmtBound::Failed
            }
        }
    }

    fn poison_target(&mut self, target: &LetTarget) {
        match target {
            LetTarget::Name(id) | LetTarget::Indexed(id, _) => self.define(&id.name, Bind::Poison),
            LetTarget::Tuple(names, _) => {
                for id in names.iter().flatten() {
                    self.define(&id.name, Bind::Poison);
                }
            }
        }
    }

    fn bind_let(&mut self, id: &ast::Ident, tv: super::TVal, storage: Option<DType>, span: Span) -> StmtBound {
        let code = if storage.is_some() { Code::BadStorage } else { Code::TypeMismatch };
        let storage = storage.unwrap_or_else(|| tv.ty().storage());
        let Some(tv) = self.to_storage(tv, storage, span, &format!("`{}`", id.name), code) else {
            self.define(&id.name, Bind::Poison);
            return StmtBound::Failed;
        };
        match self.store_or_keep(tv, storage, &id.name, span) {
            Some((tv, bound)) => {
                self.define(&id.name, Bind::Let { tv, storage });
                bound
            }
            None => {
                self.define(&id.name, Bind::Poison);
                StmtBound::Failed
            }
        }
    }

    /// Materializes a bound value when it can stand alone (`StmtBound::Node`); a value that depends on an
    /// enclosing statement's indices stays lazy (rounded to its storage type; `StmtBound::Lazy`).
    fn store_or_keep(
        &mut self,
        tv: super::TVal,
        storage: DType,
        name: &str,
        span: Span,
    ) -> Option<(super::TVal, StmtBound)> {
        if Self::outer_vars(&tv).is_empty() {
            let v = self.materialize(&tv, storage, Some(name.to_string()), span)?;
            Some((self.load_node(v, span), StmtBound::Node(v)))
        } else if matches!(storage, DType::BF16 | DType::F16) {
            let body = kc_ir::Expr::new(ExprKind::Cast(storage, Box::new(tv.body.clone())), ScalarTy::F32, span);
            Some((super::TVal { body, ..tv }, StmtBound::Lazy))
        } else {
            Some((tv, StmtBound::Lazy))
        }
    }

    /// Fits a value to a declared shape, broadcasting it if needed.
    fn fit_shape(&mut self, tv: super::TVal, shape: &[Dim], span: Span, what: &str, code: Code) -> Option<super::TVal> {
        if tv.shape.len() == shape.len() {
            let mut all = true;
            for (a, b) in tv.shape.iter().zip(shape) {
                match self.dims_equal(a, b) {
                    Some(true) => {}
                    None => self.graph.asserts.push(DimAssert {
                        lhs: a.clone(),
                        rhs: b.clone(),
                        span,
                        what: format!("the value assigned to {what} has its declared shape"),
                    }),
                    Some(false) => all = false,
                }
            }
            if all {
                // Equal (or checked equal at launch): the axes range over the declared dims.
                for (a, d) in tv.axes.iter().zip(shape) {
                    self.vars[a.index()].extent = Some(d.clone());
                }
                return Some(super::TVal { shape: shape.to_vec(), ..tv });
            }
        }
        let fits = tv.shape.len() <= shape.len()
            && tv.shape.iter().rev().zip(shape.iter().rev()).all(|(a, b)| a.is_one() || a == b);
        if !fits {
            self.err(
                Diagnostic::error(
                    code,
                    span,
                    format!("{what} has shape {} but the value has shape {}", fmt_shape(shape), fmt_shape(&tv.shape)),
                )
                .with_label(format!("this is {}", fmt_shape(&tv.shape))),
            );
            return None;
        }
        let off = shape.len() - tv.shape.len();
        let src_shape = tv.shape.clone();
        Some(self.reindex(&tv, shape.to_vec(), span, |v| {
            (0..src_shape.len())
                .map(
                    |k| {
                        if src_shape[k].is_one() && !shape[k + off].is_one() {
                            int(0, span)
                        } else {
                            v[k + off].clone()
                        }
                    },
                )
                .collect()
        }))
    }

    /// Lowers an assignment; returns the node it bound.
    fn assign(
        &mut self,
        name: &ast::Ident,
        indices: Option<&[ast::IndexBinder]>,
        value: &ast::Expr,
        span: Span,
    ) -> StmtBound {
        enum Target {
            Output(usize),
            Inout(usize),
            Let(DType, Vec<Dim>),
        }
        let target = match self.lookup(&name.name) {
            None => {
                let names = self.visible_names();
                let mut d = Diagnostic::error(
                    Code::AssignUnknown,
                    name.span,
                    format!("cannot assign to `{}`: it is not defined", name.name),
                )
                .with_help(format!("define it with `let {} = ...;`", name.name));
                if let Some(s) = super::suggest(&name.name, names.iter().map(|s| s.as_str())) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.err(d);
                return StmtBound::Failed;
            }
            Some(Bind::Poison) => return StmtBound::Failed,
            Some(Bind::Val(_)) => {
                self.err(
                    Diagnostic::error(
                        Code::AssignInput,
                        name.span,
                        format!("cannot assign to `{}`: it is a read-only input", name.name),
                    )
                    .with_help(format!(
                        "declare it `{}: inout ...` to update it in place, or assign a new `let`",
                        name.name
                    )),
                );
                return StmtBound::Failed;
            }
            Some(Bind::Dim(_) | Bind::Index(_)) => {
                self.err(Diagnostic::error(
                    Code::AssignInput,
                    name.span,
                    format!("cannot assign to `{}`: it is a dim or an index", name.name),
                ));
                return StmtBound::Failed;
            }
            Some(Bind::Output { idx, value }) => {
                if value.is_some() {
                    self.err(
                        Diagnostic::error(Code::AssignTwice, name.span, format!("output `{}` is assigned twice", name.name))
                            .with_note("every output is assigned exactly once (inside a `for` loop, an assignment runs every iteration)"),
                    );
                    return StmtBound::Failed;
                }
                Target::Output(*idx)
            }
            Some(Bind::Inout { param, assigned, .. }) => {
                if assigned.is_some() {
                    self.err(
                        Diagnostic::error(
                            Code::AssignTwice,
                            name.span,
                            format!("inout `{}` is assigned twice", name.name),
                        )
                        .with_note("every inout is assigned exactly once; use a `let` for intermediate values")
                        .with_note("inside a `for` loop, an assignment runs every iteration"),
                    );
                    return StmtBound::Failed;
                }
                Target::Inout(*param)
            }
            Some(Bind::Let { tv, storage, .. }) => Target::Let(*storage, tv.shape.clone()),
        };
        let (dtype, shape, what) = match &target {
            Target::Output(i) => {
                let o = &self.graph.outputs[*i];
                (o.dtype, o.shape.clone(), format!("output `{}`", name.name))
            }
            Target::Inout(p) => match &self.graph.params[*p].kind {
                ParamKind::Tensor { dtype, shape, .. } => (*dtype, shape.clone(), format!("inout `{}`", name.name)),
                ParamKind::Dim => return StmtBound::Failed,
            },
            Target::Let(d, s) => (*d, s.clone(), format!("`{}`", name.name)),
        };
        let tv = match indices {
            Some(binders) => {
                if binders.len() != shape.len() {
                    self.err(
                        Diagnostic::error(
                            Code::IndexCount,
                            name.span,
                            format!("{what} has {} dims but {} indices are given", shape.len(), binders.len()),
                        )
                        .with_label(format!("shape {}", fmt_shape(&shape))),
                    );
                    self.mark_assigned_poison(name);
                    return StmtBound::Failed;
                }
                self.index_def(binders, Some(&shape), value)
            }
            None => self.expr(value),
        };
        let is_let = matches!(target, Target::Let(..));
        let (shape_code, type_code) =
            if is_let { (Code::RebindShape, Code::RebindShape) } else { (Code::ShapeMismatch, Code::TypeMismatch) };
        let tv = tv
            .and_then(|tv| self.fit_shape(tv, &shape, value.span, &what, shape_code))
            .and_then(|tv| self.to_storage(tv, dtype, value.span, &what, type_code));
        let Some(tv) = tv else {
            self.mark_assigned_poison(name);
            return StmtBound::Failed;
        };
        match target {
            Target::Let(..) => match self.store_or_keep(tv, dtype, &name.name, span) {
                Some((new, bound)) => {
                    if let Some(Bind::Let { tv, .. }) = self.lookup_mut(&name.name) {
                        *tv = new;
                    }
                    bound
                }
                None => StmtBound::Failed,
            },
            Target::Output(idx) => {
                let Some(v) = self.materialize(&tv, dtype, Some(name.name.clone()), span) else {
                    return StmtBound::Failed;
                };
                let tv = self.load_node(v, span);
                if let Some(Bind::Output { value, .. }) = self.lookup_mut(&name.name) {
                    *value = Some((tv, v));
                }
                let _ = idx;
                StmtBound::Node(v)
            }
            Target::Inout(_) => {
                let Some(v) = self.materialize(&tv, dtype, Some(name.name.clone()), span) else {
                    return StmtBound::Failed;
                };
                let new = self.load_node(v, span);
                if let Some(Bind::Inout { tv, assigned, .. }) = self.lookup_mut(&name.name) {
                    *tv = new;
                    *assigned = Some(v);
                }
                StmtBound::Node(v)
            }
        }
    }

    /// After a failed assignment, later reads of the target stay quiet and it is not reported unassigned.
    fn mark_assigned_poison(&mut self, name: &ast::Ident) {
        if let Some(b) = self.lookup_mut(&name.name) {
            *b = Bind::Poison;
        }
    }

    /// Inlines a fn call with the given arguments (in parameter order).
    pub(crate) fn call_fn(&mut self, f: &ast::FnDef, args: Vec<super::TVal>, span: Span) -> Option<Lowered> {
        if self.call_stack.contains(&f.name.name) {
            let chain = format!("{} -> {}", self.call_stack.join(" -> "), f.name.name);
            self.err(
                Diagnostic::error(Code::Recursion, span, format!("fn `{}` calls itself ({chain})", f.name.name))
                    .with_secondary(f.name.span, "defined here")
                    .with_note("fns are inlined at every call, so they cannot recurse"),
            );
            return None;
        }
        if self.call_stack.len() >= MAX_INLINE_DEPTH {
            self.err(Diagnostic::error(
                Code::UnrollLimit,
                span,
                format!("fn calls nest deeper than {MAX_INLINE_DEPTH}"),
            ));
            return None;
        }
        self.call_stack.push(f.name.name.clone());
        self.fn_files.push(f.name.span.file);
        self.call_sites.push(span);
        self.scopes.push(Scope { names: BTreeMap::new(), barrier: true });
        let mut ok = true;
        for (p, a) in f.params.iter().zip(args) {
            let a = match &p.ty {
                Some(ty) => match self.check_fn_param(p, ty, a, span) {
                    Some(a) => a,
                    None => {
                        ok = false;
                        continue;
                    }
                },
                None => a,
            };
            self.define(&p.name.name, Bind::Val(a));
        }
        let mut result = None;
        if ok {
            let n = f.body.stmts.len();
            for (i, s) in f.body.stmts.iter().enumerate() {
                match &s.kind {
                    StmtKind::Return(e) if i + 1 == n => {
                        // A `return` takes no hints: this reports any.
                        let _ = self.read_hints(s);
                        result = self.expr_any(e)
                    }
                    StmtKind::Return(_) => {
                        self.err(Diagnostic::error(
                            Code::TupleArity,
                            s.span,
                            "`return` must be the last statement of a fn",
                        ));
                        break;
                    }
                    _ => self.stmt(s),
                }
            }
            if !matches!(f.body.stmts.last().map(|s| &s.kind), Some(StmtKind::Return(_))) {
                self.err(
                    Diagnostic::error(
                        Code::TupleArity,
                        f.name.span,
                        format!("fn `{}` does not end with `return`", f.name.name),
                    )
                    .with_secondary(span, "called here"),
                );
            }
        }
        self.scopes.pop();
        self.call_stack.pop();
        self.fn_files.pop();
        self.call_sites.pop();
        result
    }

    /// Checks an argument against a typed fn parameter; an i32 argument of a float parameter converts.
    fn check_fn_param(
        &mut self,
        p: &ast::FnParam,
        ty: &ast::TypeExpr,
        a: super::TVal,
        span: Span,
    ) -> Option<super::TVal> {
        let dtype = self.elem_type(&ty.elem)?;
        let ok_ty = a.ty() == dtype.compute() || (a.ty() == ScalarTy::I32 && dtype.is_float());
        if !ok_ty {
            self.err(
                Diagnostic::error(
                    Code::TypeMismatch,
                    span,
                    format!("argument `{}` is {} but the fn takes {dtype}", p.name.name, a.ty()),
                )
                .with_secondary(p.span, "parameter declared here"),
            );
            return None;
        }
        let dims = ty.shape.as_deref().unwrap_or(&[]);
        if dims.len() != a.rank() {
            self.err(
                Diagnostic::error(
                    Code::RankMismatch,
                    span,
                    format!(
                        "argument `{}` has shape {} but the fn takes rank {}",
                        p.name.name,
                        fmt_shape(&a.shape),
                        dims.len()
                    ),
                )
                .with_secondary(p.span, "parameter declared here"),
            );
            return None;
        }
        for (d, actual) in dims.iter().zip(&a.shape) {
            if let A::Name(n) = &d.kind {
                if self.lookup(&n.name).is_none() {
                    self.define(&n.name, Bind::Dim(actual.clone()));
                    continue;
                }
            }
            let want = self.dim_of(d, None, false)?;
            let want = self.norm(&want);
            if self.dims_equal(&want, actual) == Some(false) {
                self.err(
                    Diagnostic::error(
                        Code::ShapeMismatch,
                        span,
                        format!(
                            "argument `{}` has shape {} but the fn takes `{want}` there",
                            p.name.name,
                            fmt_shape(&a.shape)
                        ),
                    )
                    .with_secondary(d.span, "declared here"),
                );
                return None;
            }
        }
        if a.ty() == ScalarTy::I32 && dtype.is_float() {
            return Some(self.convert(a, ScalarTy::F32));
        }
        Some(a)
    }
}

/// `NAME == literal` (either way round, the literal possibly negated): a constraint that fixes a dim.
fn fixed_dim(c: &ast::Expr) -> Option<(&ast::Ident, i64)> {
    let lit = |e: &ast::Expr| match &e.kind {
        A::Int(v) => Some(*v),
        A::Unary(ast::UnaryOp::Neg, x) => match x.kind {
            A::Int(v) => Some(-v),
            _ => None,
        },
        _ => None,
    };
    match &c.kind {
        A::Binary(ast::BinaryOp::Eq, a, b) => match (&a.kind, &b.kind) {
            (A::Name(n), _) => lit(b).map(|v| (n, v)),
            (_, A::Name(n)) => lit(a).map(|v| (n, v)),
            _ => None,
        },
        _ => None,
    }
}

fn has_error_stmt(b: &ast::Block) -> bool {
    b.stmts.iter().any(|s| match &s.kind {
        StmtKind::Error => true,
        StmtKind::For { body, .. } => has_error_stmt(body),
        _ => false,
    })
}

fn single_mod(d: &Dim) -> Option<kc_ir::dim::Atom> {
    d.as_atom().cloned()
}

fn remap(e: &mut kc_ir::Expr, map: &[ValueId]) {
    match &mut e.kind {
        ExprKind::Load { src, idx } => {
            *src = map[src.index()];
            idx.iter_mut().for_each(|i| remap(i, map));
        }
        ExprKind::Segment { src, value } => {
            *src = map[src.index()];
            remap(value, map);
        }
        ExprKind::Const(_) | ExprKind::Var(_) | ExprKind::Dim(_) => {}
        ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => remap(a, map),
        ExprKind::Binary(_, a, b) => {
            remap(a, map);
            remap(b, map)
        }
        ExprKind::Select(c, a, b) => {
            remap(c, map);
            remap(a, map);
            remap(b, map)
        }
        ExprKind::Reduce { body, .. } => remap(body, map),
    }
}
