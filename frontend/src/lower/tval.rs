//! Tensor values during lowering, and the operations that build them.
//!
//! A [`TVal`] is a tensor described in index notation but not (necessarily) stored: a shape, one index
//! variable per axis, and a scalar body over those variables. Elementwise operations, broadcasting,
//! transposes and reshapes combine bodies without creating nodes; a value becomes a graph node when it is
//! bound by a statement or when an operation needs a stored operand (a reduction of a whole tensor, a
//! matmul, top-k, ...). All variables live in one arena per kernel ([`Lowerer::vars`]) while lowering;
//! materializing a value renumbers the variables it uses into the node's own table.

use super::Lowerer;
use kc_ir::{
    Code, Const, DType, Diagnostic, Dim, Expr, ExprKind, IndexVar, Node, NodeKind, ScalarTy, Span, ValueId, VarId,
};
use std::collections::BTreeMap;

/// A lazily described tensor value. `body.ty` is its compute type.
#[derive(Clone, Debug)]
pub(crate) struct TVal {
    pub shape: Vec<Dim>,
    pub axes: Vec<VarId>,
    pub body: Expr,
}

/// An index variable while lowering.
#[derive(Clone, Debug)]
pub(crate) struct GVar {
    pub name: String,
    pub extent: Option<Dim>,
    pub span: Span,
    /// Plain uses `x[.., v, ..]` seen while lowering, for range inference: (the axis's dim, where, masked).
    pub uses: Vec<(Dim, Span, bool)>,
}

pub(crate) fn int(v: i64, span: Span) -> Expr {
    Expr::constant(Const::I32(v), span)
}

impl TVal {
    pub fn ty(&self) -> ScalarTy {
        self.body.ty
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// A rank-0 value.
    pub fn scalar(body: Expr) -> TVal {
        TVal { shape: Vec::new(), axes: Vec::new(), body }
    }

    /// The constant, if the value is one.
    pub fn as_const(&self) -> Option<Const> {
        match self.body.kind {
            ExprKind::Const(c) if self.shape.is_empty() => Some(c),
            _ => None,
        }
    }
}

/// A name for an axis variable over `d`: the lowercased symbol, or `i{k}`.
fn axis_name(d: &Dim, k: usize) -> String {
    match d.as_sym() {
        Some(s) => s.to_lowercase(),
        None => format!("i{k}"),
    }
}

pub(crate) fn fmt_shape(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl Lowerer<'_> {
    pub(crate) fn new_var(&mut self, name: impl Into<String>, extent: Option<Dim>, span: Span) -> VarId {
        self.vars.push(GVar { name: name.into(), extent, span, uses: Vec::new() });
        VarId(self.vars.len() as u32 - 1)
    }

    /// Fresh axis variables for a shape.
    pub(crate) fn fresh_axes(&mut self, shape: &[Dim], span: Span) -> Vec<VarId> {
        shape.iter().enumerate().map(|(k, d)| self.new_var(axis_name(d, k), Some(d.clone()), span)).collect()
    }

    /// The value of a stored node, as a lazy value.
    pub(crate) fn load_node(&mut self, v: ValueId, span: Span) -> TVal {
        let node = &self.nodes[v.index()];
        let shape = node.shape.clone();
        let ty = node.dtype.compute();
        let axes = self.fresh_axes(&shape, span);
        let idx = axes.iter().map(|a| Expr::new(ExprKind::Var(*a), ScalarTy::I32, span)).collect();
        TVal { shape, axes, body: Expr::new(ExprKind::Load { src: v, idx }, ty, span) }
    }

    /// The body of `tv` at the given indices (one per axis), with its reduction variables renamed apart.
    pub(crate) fn inline(&mut self, tv: &TVal, idx: &[Expr]) -> Expr {
        let mut map: BTreeMap<VarId, Expr> = tv.axes.iter().copied().zip(idx.iter().cloned()).collect();
        self.subst(&tv.body, &mut map)
    }

    fn subst(&mut self, e: &Expr, map: &mut BTreeMap<VarId, Expr>) -> Expr {
        self.work += 1;
        let kind = match &e.kind {
            ExprKind::Var(v) => match map.get(v) {
                Some(r) => return r.clone(),
                None => ExprKind::Var(*v),
            },
            ExprKind::Const(_) | ExprKind::Dim(_) => return e.clone(),
            ExprKind::Load { src, idx } => {
                ExprKind::Load { src: *src, idx: idx.iter().map(|i| self.subst(i, map)).collect() }
            }
            ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(self.subst(a, map))),
            ExprKind::Cast(t, a) => ExprKind::Cast(*t, Box::new(self.subst(a, map))),
            ExprKind::Binary(op, a, b) => {
                ExprKind::Binary(*op, Box::new(self.subst(a, map)), Box::new(self.subst(b, map)))
            }
            ExprKind::Select(c, a, b) => ExprKind::Select(
                Box::new(self.subst(c, map)),
                Box::new(self.subst(a, map)),
                Box::new(self.subst(b, map)),
            ),
            ExprKind::Reduce { op, vars, body } => {
                let mut fresh = Vec::with_capacity(vars.len());
                for v in vars {
                    let g = self.vars[v.index()].clone();
                    let nv = self.new_var(g.name, g.extent, g.span);
                    map.insert(*v, Expr::new(ExprKind::Var(nv), ScalarTy::I32, e.span));
                    fresh.push(nv);
                }
                let body = self.subst(body, map);
                for v in vars {
                    map.remove(v);
                }
                ExprKind::Reduce { op: *op, vars: fresh, body: Box::new(body) }
            }
            ExprKind::Segment { src, value } => {
                ExprKind::Segment { src: *src, value: Box::new(self.subst(value, map)) }
            }
        };
        Expr::new(kind, e.ty, e.span)
    }

    /// Variables that `e` uses but neither binds nor has among `bound`.
    pub(crate) fn free_vars(e: &Expr, bound: &mut Vec<VarId>, out: &mut Vec<VarId>) {
        match &e.kind {
            ExprKind::Var(v) => {
                if !bound.contains(v) && !out.contains(v) {
                    out.push(*v);
                }
            }
            ExprKind::Reduce { vars, body, .. } => {
                let n = bound.len();
                bound.extend(vars.iter().copied());
                Self::free_vars(body, bound, out);
                bound.truncate(n);
            }
            _ => e.for_each_child(|c| Self::free_vars(c, bound, out)),
        }
    }

    /// The index variables a value depends on besides its own axes (those of an enclosing statement).
    pub(crate) fn outer_vars(tv: &TVal) -> Vec<VarId> {
        let mut out = Vec::new();
        Self::free_vars(&tv.body, &mut tv.axes.clone(), &mut out);
        out
    }

    /// Converts the value's compute type: i32 to f32 (a float context), bool to f32/i32 only when asked.
    pub(crate) fn convert(&mut self, tv: TVal, to: ScalarTy) -> TVal {
        if tv.ty() == to {
            return tv;
        }
        let span = tv.body.span;
        let body = match (&tv.body.kind, to) {
            (ExprKind::Const(Const::I32(v)), ScalarTy::F32) => Expr::constant(Const::F32(*v as f32), span),
            _ => Expr::new(ExprKind::Cast(to.storage(), Box::new(tv.body)), to, span),
        };
        TVal { body, ..tv }
    }

    /// NumPy broadcasting of two shapes.
    pub(crate) fn broadcast_shapes(&mut self, a: &[Dim], b: &[Dim], span: Span) -> Option<Vec<Dim>> {
        let n = a.len().max(b.len());
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let da = (k + a.len()).checked_sub(n).map(|i| &a[i]);
            let db = (k + b.len()).checked_sub(n).map(|i| &b[i]);
            let d = match (da, db) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (Some(x), Some(y)) if x == y || self.dims_equal(x, y) == Some(true) => x.clone(),
                (Some(x), Some(y)) if x.is_one() => y.clone(),
                (Some(x), Some(y)) if y.is_one() => x.clone(),
                (Some(x), Some(y)) => {
                    self.err(
                        Diagnostic::error(
                            Code::BroadcastMismatch,
                            span,
                            format!("shapes {} and {} do not broadcast", fmt_shape(a), fmt_shape(b)),
                        )
                        .with_label(format!("`{x}` and `{y}` differ and neither is 1"))
                        .with_note("shapes align on the right; a dim broadcasts only when it is 1 or missing"),
                    );
                    return None;
                }
                (None, None) => unreachable!("k < max rank"),
            };
            out.push(d);
        }
        Some(out)
    }

    /// Combines values elementwise with broadcasting: `f` gets each operand's body at the result's indices.
    pub(crate) fn map_n(
        &mut self,
        args: &[TVal],
        span: Span,
        f: impl FnOnce(&mut Self, Vec<Expr>) -> Option<Expr>,
    ) -> Option<TVal> {
        let mut shape: Vec<Dim> = Vec::new();
        for a in args {
            shape = self.broadcast_shapes(&shape, &a.shape, span)?;
        }
        let axes = self.fresh_axes(&shape, span);
        let n = shape.len();
        let mut bodies = Vec::with_capacity(args.len());
        for a in args {
            let off = n - a.rank();
            let idx: Vec<Expr> = (0..a.rank())
                .map(|k| {
                    if a.shape[k].is_one() && !shape[k + off].is_one() {
                        int(0, span)
                    } else {
                        Expr::new(ExprKind::Var(axes[k + off]), ScalarTy::I32, span)
                    }
                })
                .collect();
            bodies.push(self.inline(a, &idx));
        }
        let body = f(self, bodies)?;
        Some(TVal { shape, axes, body })
    }

    /// A value re-indexed: the result has `shape`, and element `out[axes]` is `tv[index(axes)]`.
    pub(crate) fn reindex(
        &mut self,
        tv: &TVal,
        shape: Vec<Dim>,
        span: Span,
        index: impl FnOnce(&[Expr]) -> Vec<Expr>,
    ) -> TVal {
        let axes = self.fresh_axes(&shape, span);
        let vars: Vec<Expr> = axes.iter().map(|a| Expr::new(ExprKind::Var(*a), ScalarTy::I32, span)).collect();
        let idx = index(&vars);
        let body = self.inline(tv, &idx);
        TVal { shape, axes, body }
    }

    /// Stores a value as a node of the given storage type (converting i32 to a float type if asked).
    /// Returns `None` (after reporting) if the value depends on an enclosing statement's indices.
    pub(crate) fn materialize(&mut self, tv: &TVal, dtype: DType, name: Option<String>, span: Span) -> Option<ValueId> {
        let outer = Self::outer_vars(tv);
        if let Some(v) = outer.first() {
            let g = &self.vars[v.index()];
            self.err(
                Diagnostic::error(
                    Code::TypeMismatch,
                    span,
                    format!("this whole-tensor value depends on the index `{}` of an enclosing definition", g.name),
                )
                .with_secondary(g.span, "index bound here")
                .with_help("index every tensor inside index notation, e.g. `x[i, j]`"),
            );
            return None;
        }
        let mut tv = tv.clone();
        if tv.ty() != dtype.compute() {
            tv = self.convert(tv, dtype.compute());
        }
        // Reuse a stored node when the value is exactly that node, naming it if it has no name yet.
        if let ExprKind::Load { src, idx } = &tv.body.kind {
            let node = &self.nodes[src.index()];
            let same = node.dtype == dtype
                && node.shape == tv.shape
                && idx.len() == tv.axes.len()
                && idx.iter().zip(&tv.axes).all(|(e, a)| e.kind == ExprKind::Var(*a));
            if same {
                let src = *src;
                if self.nodes[src.index()].name.is_none() {
                    self.nodes[src.index()].name = name;
                }
                return Some(src);
            }
        }
        // Renumber: the axes first, then each reduction variable in order of appearance.
        let mut order: Vec<VarId> = tv.axes.clone();
        tv.body.walk(&mut |e| {
            if let ExprKind::Reduce { vars, .. } = &e.kind {
                order.extend(vars.iter().copied());
            }
        });
        let map: BTreeMap<VarId, VarId> = order.iter().enumerate().map(|(i, v)| (*v, VarId(i as u32))).collect();
        let vars: Vec<IndexVar> = order
            .iter()
            .map(|v| {
                let g = &self.vars[v.index()];
                IndexVar { name: g.name.clone(), extent: g.extent.clone().unwrap_or_else(Dim::zero) }
            })
            .collect();
        let body = renumber(&tv.body, &map);
        self.nodes.push(Node { name, dtype, shape: tv.shape.clone(), kind: NodeKind::Compute { vars, body }, span });
        Some(ValueId(self.nodes.len() as u32 - 1))
    }

    /// Stores a value and returns it as a lazy load of the new node.
    pub(crate) fn stored(&mut self, tv: &TVal, span: Span) -> Option<TVal> {
        let dtype = tv.ty().storage();
        let v = self.materialize(tv, dtype, None, span)?;
        Some(self.load_node(v, span))
    }

    /// Adds a non-compute node and returns its value.
    pub(crate) fn push_node(&mut self, dtype: DType, shape: Vec<Dim>, kind: NodeKind, span: Span) -> TVal {
        self.nodes.push(Node { name: None, dtype, shape, kind, span });
        let v = ValueId(self.nodes.len() as u32 - 1);
        self.load_node(v, span)
    }
}

fn renumber(e: &Expr, map: &BTreeMap<VarId, VarId>) -> Expr {
    let kind = match &e.kind {
        ExprKind::Var(v) => ExprKind::Var(map.get(v).copied().unwrap_or(*v)),
        ExprKind::Const(_) | ExprKind::Dim(_) => return e.clone(),
        ExprKind::Load { src, idx } => {
            ExprKind::Load { src: *src, idx: idx.iter().map(|i| renumber(i, map)).collect() }
        }
        ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(renumber(a, map))),
        ExprKind::Cast(t, a) => ExprKind::Cast(*t, Box::new(renumber(a, map))),
        ExprKind::Binary(op, a, b) => ExprKind::Binary(*op, Box::new(renumber(a, map)), Box::new(renumber(b, map))),
        ExprKind::Select(c, a, b) => {
            ExprKind::Select(Box::new(renumber(c, map)), Box::new(renumber(a, map)), Box::new(renumber(b, map)))
        }
        ExprKind::Reduce { op, vars, body } => ExprKind::Reduce {
            op: *op,
            vars: vars.iter().map(|v| map.get(v).copied().unwrap_or(*v)).collect(),
            body: Box::new(renumber(body, map)),
        },
        ExprKind::Segment { src, value } => ExprKind::Segment { src: *src, value: Box::new(renumber(value, map)) },
    };
    Expr::new(kind, e.ty, e.span)
}
