//! Zero-size dims: what a launch leaves to compute when some dims are 0.
//!
//! The language gives every value a meaning at any dims, 0 included: a tensor with a zero dim has no
//! elements, and a reduction over an empty range is its identity (`sum` 0, `max` `-inf`, `argmax` 0, ..;
//! `docs/language.md`, 9.6 and 13). The interpreter follows that literally. The tiling templates assume work to
//! split (a matmul's `K` of at least 1, rows of at least one element), so before fusion a launch's graph is
//! specialized to its dims:
//! - **Empty reductions fold**: a `sum[k](..)` (or any reduction) whose range is empty at these dims is
//!   replaced by the constant the interpreter gives it, so `a @ b` with `K = 0` is a constant `0` (and its
//!   epilogue), which the elementwise template tiles like any other constant.
//! - **Nothing is computed for no element**: a node with no elements is skipped, and so is a node that only
//!   such skipped nodes read (attention's scores when `D = 0` leaves the output empty). A skipped node that
//!   a computed one still names (a library operation's empty input) is an empty tensor in global memory.
//!
//! At dims with no zero the graph is unchanged and nothing is skipped, so the tiled programs of every other
//! launch are exactly what they were. A skipped node is not evaluated, so a run-time error it would raise
//! (an out-of-range index feeding only empty values) is not raised; the interpreter, which evaluates every
//! node, still raises it.

use crate::graph::{Const, Expr, ExprKind, Graph, IndexVar, NodeKind, ValueId};
use crate::launch::Binding;
use crate::ops::{Acc, Val};
use std::collections::BTreeSet;

/// The graph to fuse and tile at the dims of `b` (`None`: `g` itself, no reduction was empty) and the nodes
/// not to compute (see the module documentation).
pub fn specialize(g: &Graph, b: &Binding) -> (Option<Graph>, BTreeSet<ValueId>) {
    let mut folded: Option<Graph> = None;
    for (i, node) in g.nodes.iter().enumerate() {
        let NodeKind::Compute { vars, body } = &node.kind else { continue };
        if !has_empty_reduction(body, vars, b) {
            continue;
        }
        let out = folded.get_or_insert_with(|| g.clone());
        if let NodeKind::Compute { body, .. } = &mut out.nodes[i].kind {
            fold(body, vars, b);
        }
    }
    let skip = skipped(folded.as_ref().unwrap_or(g), b);
    (folded, skip)
}

/// Whether extent `d` is known to be 0 at these dims (a dim that does not evaluate is left to the passes
/// that report it).
fn zero(d: &crate::dim::Dim, b: &Binding) -> bool {
    matches!(b.eval(d), Ok(x) if x <= 0)
}

fn empty_range(rvars: &[crate::graph::VarId], vars: &[IndexVar], b: &Binding) -> bool {
    rvars.iter().any(|v| vars.get(v.index()).is_some_and(|iv| zero(&iv.extent, b)))
}

fn has_empty_reduction(e: &Expr, vars: &[IndexVar], b: &Binding) -> bool {
    let mut found = false;
    e.walk(&mut |x| {
        if let ExprKind::Reduce { vars: rv, .. } = &x.kind {
            found |= empty_range(rv, vars, b);
        }
    });
    found
}

/// Replaces each reduction over an empty range in `e` by its value (the outermost such reduction: its
/// body is never evaluated).
fn fold(e: &mut Expr, vars: &[IndexVar], b: &Binding) {
    if let ExprKind::Reduce { op, vars: rv, .. } = &e.kind {
        if empty_range(rv, vars, b) {
            if let Ok(acc) = Acc::new(*op, e.ty) {
                e.kind = ExprKind::Const(match acc.finish() {
                    Val::F(x) => Const::F32(x),
                    Val::I(x) => Const::I32(x),
                    Val::B(x) => Const::Bool(x),
                });
                return;
            }
        }
    }
    e.for_each_child_mut(|x| fold(x, vars, b));
}

/// The nodes not to compute: those with no elements, and those (not results) whose every reader is
/// skipped. Parameters are never skipped; a node nothing reads is kept (it is not this pass's to drop).
fn skipped(g: &Graph, b: &Binding) -> BTreeSet<ValueId> {
    let n = g.nodes.len();
    let empty: Vec<bool> = g.nodes.iter().map(|node| node.shape.iter().any(|d| zero(d, b))).collect();
    if !empty.iter().any(|x| *x) {
        return BTreeSet::new();
    }
    let results: BTreeSet<ValueId> = g.results.iter().map(|r| r.value).collect();
    let mut readers = vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate() {
        for o in node.operands() {
            if o.index() < n && !readers[o.index()].contains(&i) {
                readers[o.index()].push(i);
            }
        }
    }
    // Readers come after what they read: one pass from the last node decides each node after its readers.
    let mut skip = vec![false; n];
    for i in (0..n).rev() {
        if matches!(g.nodes[i].kind, NodeKind::Param(_)) {
            continue;
        }
        let v = ValueId(i as u32);
        skip[i] = empty[i]
            || (!results.contains(&v) && !readers[i].is_empty() && readers[i].iter().all(|&r| r > i && skip[r]));
    }
    (0..n).filter(|&i| skip[i]).map(|i| ValueId(i as u32)).collect()
}
