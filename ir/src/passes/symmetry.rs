//! Symmetric values: which nodes of a graph are provably symmetric in their last two axes
//! (`v[.., i, j] == v[.., j, i]`, bit for bit, in every executor), so that tiling may compute one triangle
//! of blocks and mirror it (`passes::tile::cube`, the host's `symmetric_triangle`).
//!
//! The rules, each a proof on the graph IR (every value has rank ≥ 2 and equal last two dims, structurally):
//! - **Gram products.** `sum[k](p[.., i, k] · p[.., j, k])` (`p @ transpose(p)`) and
//!   `sum[k](p[.., k, i] · p[.., k, j])` (`transpose(p) @ p`), for any `p`, the factors in either order:
//!   element `(j, i)` multiplies the same two values as `(i, j)` (a product of two floats is commutative)
//!   and sums the products in the same `k` order.
//! - **Squares of symmetric values.** `sum[k](s[.., i, k] · s[.., k, j])` (`s @ s`) with `s` symmetric:
//!   `(j, i)` sums `s[j, k] · s[k, i] = s[k, j] · s[i, k]`, the products of `(i, j)` in the same order.
//! - **Elementwise maps.** A body without reductions that reads symmetric values at the node's own indices
//!   (`s[.., i, j]`) and scalars (rank 0) and constants, and mentions no row or column index otherwise
//!   (a batch index is fine): `(j, i)` evaluates the same expression on the same values. A `let` bound to a
//!   symmetric value, a cast of one, `c1 · a + c2 · (a @ a)` are of this kind.
//!
//! Exact up to NaN payloads: when both factors of a product are NaNs, the product's payload may depend on
//! their order (x86 keeps the first operand's); the result is a NaN either way.

use crate::graph::{BinOp, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId};

/// Whether `v` is provably symmetric in its last two axes (see the module documentation).
pub fn is_symmetric(g: &Graph, v: ValueId) -> bool {
    // Only square values can be symmetric: the pass below skips every other node at the cost of a shape
    // comparison, so a query on a graph of non-square values is cheap.
    if !square(g, v) {
        return false;
    }
    symmetric_upto(g, v)[v.index()]
}

/// For each node up to `last` (inclusive), whether it is symmetric: one pass in graph order (every node
/// comes after the nodes it reads).
pub fn symmetric_upto(g: &Graph, last: ValueId) -> Vec<bool> {
    let n = (last.index() + 1).min(g.nodes.len());
    let mut sym = vec![false; n];
    for i in 0..n {
        let v = ValueId(i as u32);
        sym[i] = square(g, v) && node_symmetric(g, v, &sym);
    }
    sym
}

/// Rank ≥ 2 and the last two dims equal (structurally: canonical dims).
fn square(g: &Graph, v: ValueId) -> bool {
    let Some(node) = g.nodes.get(v.index()) else { return false };
    let r = node.rank();
    r >= 2 && node.shape[r - 2] == node.shape[r - 1]
}

/// Whether index expression `e` is exactly variable `want`.
fn is_var(e: &Expr, want: usize) -> bool {
    matches!(e.kind, ExprKind::Var(x) if x.index() == want)
}

/// Whether `idx` is the batch variables `0..nb` followed by `last` (as variable numbers).
fn is_idx(idx: &[Expr], nb: usize, last: [usize; 2]) -> bool {
    idx.len() == nb + 2
        && (0..nb).all(|a| is_var(&idx[a], a))
        && is_var(&idx[nb], last[0])
        && is_var(&idx[nb + 1], last[1])
}

fn node_symmetric(g: &Graph, v: ValueId, sym: &[bool]) -> bool {
    let node = g.node(v);
    let NodeKind::Compute { body, .. } = &node.kind else { return false };
    let rank = node.rank();
    let nb = rank - 2;
    let (i, j) = (nb, nb + 1);
    let known = |s: ValueId| sym.get(s.index()).copied().unwrap_or(false);
    // A product: `sum[k](x · y)`.
    if let ExprKind::Reduce { op: ReduceOp::Sum, vars, body: inner } = &body.kind {
        let [k] = vars.as_slice() else { return false };
        let k = k.index();
        let ExprKind::Binary(BinOp::Mul, x, y) = &inner.kind else { return false };
        let (ExprKind::Load { src: p, idx: xi }, ExprKind::Load { src: q, idx: yi }) = (&x.kind, &y.kind) else {
            return false;
        };
        if p != q {
            return false;
        }
        let pair = |a: [usize; 2], b: [usize; 2]| {
            (is_idx(xi, nb, a) && is_idx(yi, nb, b)) || (is_idx(xi, nb, b) && is_idx(yi, nb, a))
        };
        // p @ transpose(p), transpose(p) @ p: symmetric for any p.
        if pair([i, k], [j, k]) || pair([k, i], [k, j]) {
            return true;
        }
        // s @ s with s symmetric.
        return pair([i, k], [k, j]) && known(*p);
    }
    elementwise(body, nb, rank, &known)
}

/// Whether `e` is an elementwise map of symmetric values read at the node's indices, scalars and constants,
/// mentioning no row or column index elsewhere.
fn elementwise(e: &Expr, nb: usize, rank: usize, known: &dyn Fn(ValueId) -> bool) -> bool {
    let r = |x: &Expr| elementwise(x, nb, rank, known);
    match &e.kind {
        ExprKind::Const(_) | ExprKind::Dim(_) => true,
        ExprKind::Var(x) => x.index() < nb,
        ExprKind::Load { src, idx } => {
            idx.is_empty() || (known(*src) && is_idx(idx, nb, [nb, nb + 1]) && idx.len() == rank)
        }
        ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => r(a),
        ExprKind::Binary(_, a, b) => r(a) && r(b),
        ExprKind::Select(c, a, b) => r(c) && r(a) && r(b),
        ExprKind::Reduce { .. } | ExprKind::Segment { .. } => false,
    }
}
