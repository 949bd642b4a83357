//! Reads through copies: a consumer's load of a *pure copy* (a node whose body is one load of a value of
//! the same dtype, at index expressions without loads: `squeeze`, `unsqueeze`, `reshape`, `transpose`)
//! becomes a load of the copied value at the composed indices.
//!
//! Fusion inlines copies into their consumers (rule 4 of [`crate::passes::fuse`]), and the matmul, score
//! and library templates look through the copies they expect; the vector templates read a consumer's
//! loads as they are. A group those templates refuse because a load names a copy (normalized rows reading
//! `squeeze(mean(x, keepdim: true))`) is tiled again on the graph this pass returns, where the load reads
//! the mean's `[N, 1]` tensor at `[n, 0]` directly ([`crate::passes::tile::fuse_and_tile`]). The value
//! is the same: the copy's element at `ia` is its source's element at the copy's indices with its
//! variables replaced by `ia`, and the source's dtype is the copy's, so nothing is rounded. An index out of
//! range is still one: the composed load checks each of the source's axes, as the copy's load did.

use crate::graph::{Expr, ExprKind, Graph, NodeKind, ValueId};
use std::collections::BTreeSet;

/// The graph with every load of a pure copy replaced by a load of its source (`None`: no load reads a
/// copy), and the copies that no node reads any more and that are not results (not to compute).
pub fn read_through(g: &Graph) -> Option<(Graph, BTreeSet<ValueId>)> {
    let copies: Vec<Option<(ValueId, Vec<Expr>)>> =
        (0..g.nodes.len()).map(|i| pure_copy(g, ValueId(i as u32))).collect();
    if !copies.iter().any(Option::is_some) {
        return None;
    }
    let mut out = g.clone();
    let mut changed = false;
    // In graph order: a copy of a copy reads the first copy's source by the time its readers are rewritten.
    for (i, node) in out.nodes.iter_mut().enumerate() {
        if let NodeKind::Compute { body, .. } = &mut node.kind {
            // Only earlier nodes can be read.
            changed |= rewrite(body, &copies[..i]);
        }
    }
    if !changed {
        return None;
    }
    // The copies as rewritten (their own loads may have been of copies too): what their readers compose.
    let results: BTreeSet<ValueId> = g.results.iter().map(|r| r.value).collect();
    let mut read = vec![false; out.nodes.len()];
    for node in &out.nodes {
        for o in node.operands() {
            if let Some(r) = read.get_mut(o.index()) {
                *r = true;
            }
        }
    }
    let unread = (0..out.nodes.len())
        .map(|i| ValueId(i as u32))
        .filter(|v| copies[v.index()].is_some() && !read[v.index()] && !results.contains(v))
        .collect();
    Some((out, unread))
}

/// `v`'s source and index expressions if `v` is a pure copy: its body one load (no cast) of a non-scalar
/// value of its own dtype, whose indices hold no load and no reduction.
fn pure_copy(g: &Graph, v: ValueId) -> Option<(ValueId, Vec<Expr>)> {
    let node = g.node(v);
    let NodeKind::Compute { vars, body } = &node.kind else { return None };
    let ExprKind::Load { src, idx } = &body.kind else { return None };
    if vars.len() != node.rank() || g.node(*src).dtype != node.dtype {
        return None;
    }
    let mut plain = true;
    for i in idx {
        i.walk(&mut |e| {
            plain &= !matches!(e.kind, ExprKind::Load { .. } | ExprKind::Reduce { .. } | ExprKind::Segment { .. });
        });
    }
    plain.then(|| (*src, idx.clone()))
}

/// Replaces, in `e`, each load of a copy in `copies` by the load of its source; whether anything changed.
/// A copy's source may itself be a copy (its entry then already names the first source, see the caller's
/// order), so the rewrite repeats on the composed load until it reads no copy.
fn rewrite(e: &mut Expr, copies: &[Option<(ValueId, Vec<Expr>)>]) -> bool {
    let mut changed = false;
    // Children first: index expressions may themselves load copies.
    e.for_each_child_mut(|x| changed |= rewrite(x, copies));
    // A bounded number of hops (each goes to an earlier node).
    for _ in 0..copies.len() {
        let ExprKind::Load { src, idx } = &e.kind else { break };
        let Some(Some((from, cidx))) = copies.get(src.index()) else { break };
        let composed: Vec<Expr> = cidx.iter().map(|x| substitute(x, idx)).collect();
        e.kind = ExprKind::Load { src: *from, idx: composed };
        changed = true;
    }
    changed
}

/// `e` (an index expression of a copy) with the copy's variable `k` replaced by `args[k]`.
fn substitute(e: &Expr, args: &[Expr]) -> Expr {
    if let ExprKind::Var(k) = &e.kind {
        if let Some(a) = args.get(k.index()) {
            return a.clone();
        }
    }
    let mut out = e.clone();
    out.for_each_child_mut(|x| {
        let y = substitute(x, args);
        *x = y;
    });
    out
}
