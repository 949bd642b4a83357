//! Fusion: grouping the graph's nodes into kernels for the cube or the vector unit.
//!
//! A group is what one launch on the chip computes. Values that stay inside a group live in on-chip
//! buffers; a value is written to global memory only if it is a result of the kernel or another group reads
//! it. The rules, each a small function below, are applied in this order:
//!
//! 1. [`score_groups`] (flash attention): a connected set of same-shaped nodes `Z` (rank ≥ 2) that contains
//!    a contraction producing `Z` from operands outside the set, whose members read each other only
//!    elementwise, and whose outside consumers all reduce over one of `Z`'s last two axes (contractions,
//!    row statistics), is fused with those consumers: `Z` is computed tile by tile and never stored. The
//!    row statistics of `Z` (reductions over its last axis and elementwise work on them) join too.
//! 2. [`contraction`] (the cube): a node whose body sums over `k` a product of two factors that use
//!    disjoint sets of output axes (`M` and `N`, besides shared batch axes) and both use every `k` directly
//!    is a matmul; if a factor is indexed through data (`w1[e[r], f, m]`) it is a grouped matmul. Each forms
//!    a cube group; [`epilogue`] consumers (elementwise, same shape, reading it at its own indices) join it.
//!    A `segment(offsets, r)` node read only as the expert index of one grouped-matmul group's weights
//!    ([`segment_of_grouped`], rule 2b) joins that group: the group reads `offsets` itself and finds each
//!    expert's rows from it, so the expert ids `e[R]` are never stored.
//! 3. Library nodes (top-k, sorting, prefix sums, histograms) each form a group.
//! 4. [`is_copy`] nodes (a reshape, a transpose, a cast: one load and nothing else) are inlined into each
//!    consumer: they are re-indexings, not work.
//! 5. [`vector_merge`]: the remaining nodes form vector groups. A node joins the group of a node it reads if
//!    every read between them is row-local: the first `p` indices are the reader's own first `p` output
//!    variables, where `p` is the group's parallel rank (the rows the group is tiled over).
//!
//! For every producer and consumer left in different groups, the result says why.

use crate::dim::Dim;
use crate::graph::{BinOp, Expr, ExprKind, Graph, HintKind, NodeKind, ReduceOp, ValueId, VarId};
use crate::print::print_type;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// How fusion may be steered. `unfused`: nodes the author keeps apart (schedule hints): each is its own
/// group and is stored.
#[derive(Clone, Debug, Default)]
pub struct FusionConfig {
    pub unfused: BTreeSet<ValueId>,
    /// Nodes that must not be part of a score (flash) group: the tiler found no score tiling for the group
    /// they were in at the sizes it was asked for, so they are fused by the other rules instead (see
    /// [`crate::passes::tile::fuse_and_tile`]).
    pub no_score: BTreeSet<ValueId>,
    /// Nodes not to compute at the launch's dims (`crate::passes::empty`: no elements, or read only by such
    /// nodes): in no group. A computed node that reads one lists it among its group's inputs.
    pub skip: BTreeSet<ValueId>,
}

impl FusionConfig {
    /// The configuration the graph's schedule hints ask for: every node with `#[unfused]` is kept apart.
    pub fn from_hints(g: &Graph) -> FusionConfig {
        let unfused = g
            .hints
            .iter()
            .filter(|h| h.kind == HintKind::Unfused && h.node.index() < g.nodes.len())
            .map(|h| h.node)
            .collect();
        FusionConfig { unfused, no_score: BTreeSet::new(), skip: BTreeSet::new() }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKind {
    /// Elementwise work (with row-local reductions) over rows of a parallel space.
    Vector,
    /// A matmul on the cube, with its epilogue.
    Matmul,
    /// A matmul whose weight is chosen per row through data (a mixture of experts).
    GroupedMatmul,
    /// Attention-like: score tiles computed on the cube, never stored.
    Score,
    /// A data-dependent library operation.
    Library,
}

impl GroupKind {
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::Vector => "vector",
            GroupKind::Matmul => "matmul",
            GroupKind::GroupedMatmul => "grouped-matmul",
            GroupKind::Score => "score",
            GroupKind::Library => "library",
        }
    }

    /// Whether the group uses the cube unit.
    pub fn uses_cube(self) -> bool {
        matches!(self, GroupKind::Matmul | GroupKind::GroupedMatmul | GroupKind::Score)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub kind: GroupKind,
    /// Members, in graph order.
    pub nodes: Vec<ValueId>,
    /// Members written to global memory: results, and values other groups read.
    pub stored: Vec<ValueId>,
    /// Values from outside the group that it reads (parameters, other groups' stored values), in order.
    pub inputs: Vec<ValueId>,
    /// The leading axes of `space` the group is parallel over (its rows, split across cores).
    pub parallel: usize,
    /// The iteration space: the shape of the group's widest member.
    pub space: Vec<Dim>,
}

/// A producer and a consumer in different groups, and why they were not fused.
#[derive(Clone, Debug, PartialEq)]
pub struct Unfused {
    pub producer: ValueId,
    pub consumer: ValueId,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Fusion {
    pub groups: Vec<Group>,
    /// The group of each node (`None` for parameters and for copies inlined into their consumers).
    pub group_of: Vec<Option<usize>>,
    pub unfused: Vec<Unfused>,
}

/// A matmul-like node: `out[batch.., m.., n..] = epilogue(Σ_k a · b)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Contraction {
    /// Output axes (positions) used by factor `a` only, by `b` only, and by both.
    pub m: Vec<usize>,
    pub n: Vec<usize>,
    pub batch: Vec<usize>,
    /// The reduction variables.
    pub k: Vec<VarId>,
    /// Whether a factor is indexed through data (a grouped matmul).
    pub grouped: bool,
    /// How many matmuls the body holds (2 for SwiGLU's `silu(x·w1) * (x·w3)`).
    pub count: usize,
}

fn vars_of(e: &Expr, direct: bool, out: &mut BTreeSet<VarId>) {
    match &e.kind {
        ExprKind::Var(v) => {
            out.insert(*v);
        }
        // Inside a gathered index (`w[e[r], ..]`), variables select data rather than index the factor.
        ExprKind::Load { idx, .. } => {
            for i in idx {
                if direct && has_load(i) {
                    continue;
                }
                vars_of(i, direct, out);
            }
        }
        _ => e.for_each_child(|c| vars_of(c, direct, out)),
    }
}

fn has_load(e: &Expr) -> bool {
    let mut found = false;
    e.walk(&mut |x| found |= matches!(x.kind, ExprKind::Load { .. } | ExprKind::Segment { .. }));
    found
}

fn has_reduce(e: &Expr) -> bool {
    let mut found = false;
    e.walk(&mut |x| found |= matches!(x.kind, ExprKind::Reduce { .. }));
    found
}

/// The factors of a product tree, flattened (`a * b * c` as `[a, b, c]`).
pub(crate) fn factors<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match &e.kind {
        ExprKind::Binary(BinOp::Mul, a, b) => {
            factors(a, out);
            factors(b, out);
        }
        _ => out.push(e),
    }
}

/// Recognizes a matmul in a node's body (rule 2).
pub fn contraction(g: &Graph, v: ValueId) -> Option<Contraction> {
    let node = g.node(v);
    let NodeKind::Compute { body, .. } = &node.kind else { return None };
    let rank = node.rank();
    let mut found: Vec<Contraction> = Vec::new();
    let mut ok = true;
    body.walk(&mut |e| {
        let ExprKind::Reduce { op, vars: ks, body: inner } = &e.kind else { return };
        if *op != ReduceOp::Sum || has_reduce(inner) {
            ok = false;
            return;
        }
        let mut fs = Vec::new();
        factors(inner, &mut fs);
        // Split the factors into two sides by the output axes they use.
        let axes_of = |f: &Expr| -> BTreeSet<usize> {
            let mut vs = BTreeSet::new();
            vars_of(f, true, &mut vs);
            vs.into_iter().filter(|x| x.index() < rank).map(|x| x.index()).collect()
        };
        let loads: Vec<&&Expr> = fs.iter().filter(|f| has_load(f)).collect();
        if loads.len() < 2 {
            ok = false;
            return;
        }
        // The first factor with a load seeds side A; a factor sharing a non-batch axis with it joins A.
        let mut a_axes = axes_of(loads[0]);
        let mut b_axes = BTreeSet::new();
        let mut a_k = BTreeSet::new();
        let mut b_k = BTreeSet::new();
        let k_of = |f: &Expr| -> BTreeSet<VarId> {
            let mut vs = BTreeSet::new();
            vars_of(f, true, &mut vs);
            vs.into_iter().filter(|x| ks.contains(x)).collect()
        };
        a_k.extend(k_of(loads[0]));
        for f in &loads[1..] {
            let ax = axes_of(f);
            if b_axes.is_empty() && ax.iter().any(|x| !a_axes.contains(x))
                || !b_axes.is_empty() && ax.iter().any(|x| b_axes.contains(x) && !a_axes.contains(x))
                || b_axes.is_empty() && a_axes.iter().any(|x| !ax.contains(x))
            {
                b_axes.extend(ax);
                b_k.extend(k_of(f));
            } else {
                a_axes.extend(ax);
                a_k.extend(k_of(f));
            }
        }
        let m: Vec<usize> = a_axes.difference(&b_axes).copied().collect();
        let n: Vec<usize> = b_axes.difference(&a_axes).copied().collect();
        let batch: Vec<usize> = a_axes.intersection(&b_axes).copied().collect();
        let every_k = ks.iter().all(|k| a_k.contains(k) && b_k.contains(k));
        let float = loads.iter().all(|f| f.ty == crate::dtype::ScalarTy::F32);
        if m.is_empty() || n.is_empty() || !every_k || !float {
            ok = false;
            return;
        }
        let mut grouped = false;
        inner.walk(&mut |x| {
            if let ExprKind::Load { idx, .. } = &x.kind {
                grouped |= idx.iter().any(has_load);
            }
        });
        found.push(Contraction { m, n, batch, k: ks.clone(), grouped, count: 1 });
    });
    if !ok || found.is_empty() {
        return None;
    }
    let mut c = found[0].clone();
    if found.iter().any(|f| f.m != c.m || f.n != c.n || f.batch != c.batch) {
        return None;
    }
    c.count = found.len();
    c.grouped = found.iter().any(|f| f.grouped);
    Some(c)
}

/// Rule 2b: `v` is a segment lookup over its own rows (`e[r] = segment(offsets, r)`, any rank, the value an
/// expression of `v`'s variables) whose every consumer is in one grouped-matmul group and reads `v` only
/// inside the index of another load (`w1[e[r], f, m]`: choosing the expert's weights). Such a node is
/// absorbed into that group, which then reads `offsets` directly: the tiler finds each expert's rows from
/// the offsets, and no `e` tensor is stored. Returns the group.
fn segment_of_grouped(
    g: &Graph,
    v: ValueId,
    cons: &[Vec<ValueId>],
    group_of: &[Option<usize>],
    kind_of: impl Fn(usize) -> GroupKind,
) -> Option<usize> {
    let NodeKind::Compute { body, .. } = &g.node(v).kind else { return None };
    let ExprKind::Segment { value, .. } = &body.kind else { return None };
    if has_load(value) {
        return None;
    }
    let mut gid = None;
    for &c in cons.get(v.index())? {
        let k = group_of[c.index()]?;
        if kind_of(k) != GroupKind::GroupedMatmul || gid.is_some_and(|x| x != k) {
            return None;
        }
        gid = Some(k);
        // Every load of `v` in `c` must be inside another load's index.
        let NodeKind::Compute { body: cb, .. } = &g.node(c).kind else { return None };
        let (mut total, mut inside) = (0usize, 0usize);
        cb.walk(&mut |e| {
            if matches!(&e.kind, ExprKind::Load { src, .. } if *src == v) {
                total += 1;
            }
            if let ExprKind::Load { src, idx } = &e.kind {
                if *src != v {
                    for i in idx {
                        i.walk(&mut |x| {
                            inside += matches!(&x.kind, ExprKind::Load { src, .. } if *src == v) as usize;
                        });
                    }
                }
            }
        });
        if total == 0 || inside != total {
            return None;
        }
    }
    gid
}

/// Whether `v` is a `segment(..)` lookup.
fn is_segment(g: &Graph, v: ValueId) -> bool {
    matches!(&g.node(v).kind, NodeKind::Compute { body, .. } if matches!(body.kind, ExprKind::Segment { .. }))
}

fn hinted_group(members: &BTreeSet<ValueId>, hinted: &impl Fn(ValueId) -> bool) -> bool {
    members.iter().any(|m| hinted(*m))
}

/// A copy: the body is one load at plain (or affine) indices, maybe converted: a re-indexing (rule 4).
pub fn is_copy(g: &Graph, v: ValueId) -> bool {
    let NodeKind::Compute { body, .. } = &g.node(v).kind else { return false };
    let mut e = body;
    while let ExprKind::Cast(_, a) = &e.kind {
        e = a;
    }
    match &e.kind {
        ExprKind::Load { idx, .. } => idx.iter().all(|i| !has_load(i)),
        _ => false,
    }
}

/// For each load of `p` in `c`'s body: whether its first `prefix` indices are `c`'s own first output
/// variables (a row-local read).
fn row_local(g: &Graph, c: ValueId, p: ValueId, prefix: usize) -> bool {
    let NodeKind::Compute { body, .. } = &g.node(c).kind else { return false };
    let mut ok = true;
    body.walk(&mut |e| {
        if let ExprKind::Load { src, idx } = &e.kind {
            if *src == p {
                for (k, i) in idx.iter().take(prefix).enumerate() {
                    ok &= matches!(i.kind, ExprKind::Var(x) if x.index() == k);
                }
                ok &= idx.len() >= prefix;
            }
        }
        if let ExprKind::Segment { src, .. } = &e.kind {
            ok &= *src != p;
        }
    });
    ok
}

/// Whether `c` reads `p` at exactly its own indices, elementwise (an epilogue or an elementwise member).
fn identity_read(g: &Graph, c: ValueId, p: ValueId) -> bool {
    g.node(c).shape == g.node(p).shape && row_local(g, c, p, g.node(c).rank()) && !reads_in_reduce(g, c, p)
}

fn reads_in_reduce(g: &Graph, c: ValueId, p: ValueId) -> bool {
    let NodeKind::Compute { body, .. } = &g.node(c).kind else { return false };
    let mut inside = false;
    body.walk(&mut |e| {
        if let ExprKind::Reduce { body: rb, .. } = &e.kind {
            rb.walk(&mut |x| inside |= matches!(&x.kind, ExprKind::Load { src, .. } if *src == p));
        }
    });
    inside
}

/// Whether `c` is an epilogue of `p`: elementwise, same shape, reading `p` at its own indices.
pub fn epilogue(g: &Graph, c: ValueId, p: ValueId) -> bool {
    matches!(g.node(c).kind, NodeKind::Compute { ref body, .. } if !has_reduce(body)) && identity_read(g, c, p)
}

fn consumers(g: &Graph) -> Vec<Vec<ValueId>> {
    let mut out = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for o in n.operands() {
            if seen.insert(o) {
                out[o.index()].push(ValueId(i as u32));
            }
        }
    }
    out
}

/// Which axes of `p` a consumer `c` reduces over: the positions of `p`'s loads whose index is a
/// reduction variable (or an expression of one, such as `g * R + r`).
fn reduced_axes(g: &Graph, c: ValueId, p: ValueId) -> BTreeSet<usize> {
    let rank = g.node(c).rank();
    let NodeKind::Compute { body, .. } = &g.node(c).kind else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    body.walk(&mut |e| {
        if let ExprKind::Load { src, idx } = &e.kind {
            if *src == p {
                for (k, i) in idx.iter().enumerate() {
                    let mut vs = BTreeSet::new();
                    vars_of(i, false, &mut vs);
                    if vs.iter().any(|v| v.index() >= rank) {
                        out.insert(k);
                    }
                }
            }
        }
    });
    out
}

/// How `c` reads the score-shaped `p` (rank `r`): `Some(true)` row-wise (axis `r-2` fixed, `r-1` reduced),
/// `Some(false)` column-wise (the other way), `None` otherwise (both reduced, or neither).
fn orientation(g: &Graph, c: ValueId, p: ValueId, r: usize) -> Option<bool> {
    let ax = reduced_axes(g, c, p);
    match (ax.contains(&(r - 2)), ax.contains(&(r - 1))) {
        (false, true) => Some(true),
        (true, false) => Some(false),
        _ => None,
    }
}

/// Whether every load of `p` in `c` has one orientation (see [`orientation`]) and leaves the batch axes as
/// they are (the same index expression at each load).
fn oriented(g: &Graph, c: ValueId, p: ValueId, r: usize) -> bool {
    let NodeKind::Compute { body, .. } = &g.node(c).kind else { return false };
    let rank = g.node(c).rank();
    let mut kinds = BTreeSet::new();
    body.walk(&mut |e| {
        if let ExprKind::Load { src, idx } = &e.kind {
            if *src == p && idx.len() == r {
                let red = |i: &Expr| {
                    let mut vs = BTreeSet::new();
                    vars_of(i, false, &mut vs);
                    vs.iter().any(|v| v.index() >= rank)
                };
                kinds.insert((red(&idx[r - 2]), red(&idx[r - 1])));
            }
        }
    });
    kinds.len() == 1 && kinds.iter().all(|(a, b)| a != b)
}

/// Rule 1: groups of score-shaped nodes that never reach global memory, with their consumers.
pub fn score_groups(g: &Graph, cons: &[Vec<ValueId>], results: &BTreeSet<ValueId>) -> Vec<BTreeSet<ValueId>> {
    let mut taken: BTreeSet<ValueId> = BTreeSet::new();
    let mut groups = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let s = ValueId(i as u32);
        let r = node.rank();
        if r < 2 || taken.contains(&s) {
            continue;
        }
        let Some(c) = contraction(g, s) else { continue };
        // The score tile's rows and columns are the matmul's M and N: the last two axes.
        if c.m != vec![r - 2] || c.n != vec![r - 1] {
            continue;
        }
        // Grow the set of same-shaped nodes connected elementwise to `s`.
        let shape = &node.shape;
        let mut set: BTreeSet<ValueId> = BTreeSet::from([s]);
        let mut changed = true;
        while changed {
            changed = false;
            for (j, nj) in g.nodes.iter().enumerate() {
                let v = ValueId(j as u32);
                if set.contains(&v) || &nj.shape != shape || results.contains(&v) {
                    continue;
                }
                let ops: BTreeSet<ValueId> = nj.operands().into_iter().collect();
                let reads_set = ops.iter().any(|o| set.contains(o));
                if reads_set && ops.iter().filter(|o| set.contains(o)).all(|o| identity_read(g, v, *o)) {
                    set.insert(v);
                    changed = true;
                } else if let Some(cv) = contraction(g, v) {
                    // Another score-producing matmul (dp = dout · vᵀ) whose consumers are in the set.
                    let feeds = cons[j].iter().any(|x| set.contains(x));
                    if feeds && cv.m == vec![r - 2] && cv.n == vec![r - 1] && !ops.iter().any(|o| set.contains(o)) {
                        set.insert(v);
                        changed = true;
                    }
                }
            }
        }
        if set.iter().any(|m| results.contains(m)) {
            continue;
        }
        // Every outside consumer must reduce over one of the last two axes; row statistics join.
        let mut members = set.clone();
        let mut ok = true;
        let mut frontier: Vec<ValueId> = set.iter().flat_map(|m| cons[m.index()].iter().copied()).collect();
        while let Some(c) = frontier.pop() {
            if members.contains(&c) {
                continue;
            }
            let cn = g.node(c);
            let reads: Vec<ValueId> = cn.operands().into_iter().filter(|o| set.contains(o)).collect();
            let is_stat = |lw: &Graph| -> bool {
                // A row statistic: shape is the score shape without its last axis (or with it as 1).
                let row = &shape[..r - 1];
                (cn.shape.as_slice() == row
                    || (cn.shape.len() == r && &cn.shape[..r - 1] == row && cn.shape[r - 1].is_one()))
                    && reads.iter().all(|o| reduced_axes(lw, c, *o) == BTreeSet::from([r - 1]))
            };
            if !reads.is_empty() {
                // Streamable: the consumer reads the score tile in one orientation only, keeping the
                // batch axes and one of the two score axes as its own (a row-wise or column-wise pass).
                let red = reads
                    .iter()
                    .all(|o| oriented(g, c, *o, r))
                    .then(|| reads.iter().map(|o| orientation(g, c, *o, r)).collect::<BTreeSet<_>>())
                    .is_some_and(|o| o.len() == 1);
                if !red {
                    ok = false;
                    break;
                }
                members.insert(c);
                if is_stat(g) {
                    frontier.extend(cons[c.index()].iter().copied());
                }
            } else if cn.operands().iter().any(|o| members.contains(o) && !set.contains(o)) {
                // Elementwise work on row statistics (the max made finite, lse = log(sum) + max).
                let row_shaped = cn.shape.len() + 1 >= r && cn.shape[..r - 1] == shape[..r - 1];
                if row_shaped && !matches!(cn.kind, NodeKind::Compute { ref body, .. } if has_reduce(body)) {
                    members.insert(c);
                    frontier.extend(cons[c.index()].iter().copied());
                }
            }
        }
        let has_consumer_matmul = members.iter().any(|m| !set.contains(m) && contraction(g, *m).is_some());
        if ok && has_consumer_matmul {
            taken.extend(members.iter().copied());
            groups.push(members);
        }
    }
    groups
}

/// Fuses the graph's nodes into groups.
pub fn fuse(g: &Graph, cfg: &FusionConfig) -> Fusion {
    let n = g.nodes.len();
    let cons = consumers(g);
    let results: BTreeSet<ValueId> = g.results.iter().map(|r| r.value).collect();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<(GroupKind, BTreeSet<ValueId>, usize)> = Vec::new(); // kind, members, parallel
    let hinted = |v: ValueId| cfg.unfused.contains(&v);

    // Rule 1.
    for set in score_groups(g, &cons, &results) {
        if set.iter().any(|v| hinted(*v) || cfg.no_score.contains(v)) {
            continue;
        }
        let id = groups.len();
        for v in &set {
            group_of[v.index()] = Some(id);
        }
        // Epilogues of the group's outputs (the consumer matmuls), as for a plain matmul.
        let mut set = set;
        let mut frontier: Vec<ValueId> = set.iter().copied().collect();
        while let Some(p) = frontier.pop() {
            for &c in &cons[p.index()] {
                let mut with = set.clone();
                with.insert(c);
                if group_of[c.index()].is_none()
                    && !set.contains(&c)
                    && !hinted(c)
                    && epilogue(g, c, p)
                    && !cycles(&cons, &with)
                {
                    group_of[c.index()] = Some(id);
                    set.insert(c);
                    frontier.push(c);
                }
            }
        }
        // A chain of grouped matmuls (an expert FFN: h = silu(x·w1) * (x·w3), then h·w2) keeps its kind.
        let grouped = set.iter().any(|v| contraction(g, *v).is_some_and(|c| c.grouped));
        groups.push((if grouped { GroupKind::GroupedMatmul } else { GroupKind::Score }, set, 0));
    }
    // Rules 2 and 3.
    for i in 0..n {
        let v = ValueId(i as u32);
        if group_of[i].is_some() {
            continue;
        }
        let kind = match &g.nodes[i].kind {
            NodeKind::Param(_) => continue,
            NodeKind::Compute { .. } => match contraction(g, v) {
                Some(c) if c.grouped => GroupKind::GroupedMatmul,
                Some(_) => GroupKind::Matmul,
                None => continue,
            },
            _ => GroupKind::Library,
        };
        let id = groups.len();
        group_of[i] = Some(id);
        let mut set = BTreeSet::from([v]);
        if kind != GroupKind::Library && !hinted(v) {
            // Epilogues: elementwise consumers at the same indices, transitively.
            let mut frontier = vec![v];
            while let Some(p) = frontier.pop() {
                for &c in &cons[p.index()] {
                    let mut with = set.clone();
                    with.insert(c);
                    if group_of[c.index()].is_none() && !hinted(c) && epilogue(g, c, p) && !cycles(&cons, &with) {
                        group_of[c.index()] = Some(id);
                        set.insert(c);
                        frontier.push(c);
                    }
                }
            }
        }
        groups.push((kind, set, 0));
    }
    // Rule 2b: a segment lookup read only as the expert index of grouped-matmul weights joins that group.
    for i in 0..n {
        let v = ValueId(i as u32);
        if group_of[i].is_some() || results.contains(&v) || hinted(v) {
            continue;
        }
        if let Some(gid) = segment_of_grouped(g, v, &cons, &group_of, |k| groups[k].0) {
            if !hinted_group(&groups[gid].1, &hinted) {
                group_of[i] = Some(gid);
                groups[gid].1.insert(v);
            }
        }
    }
    // Rule 4: copies are inlined into their consumers (unless a result, hinted, or already grouped).
    let mut inlined: BTreeSet<ValueId> = BTreeSet::new();
    for (i, grp) in group_of.iter().enumerate().take(n) {
        let v = ValueId(i as u32);
        if grp.is_none() && is_copy(g, v) && !results.contains(&v) && !hinted(v) {
            inlined.insert(v);
        }
    }
    // Rule 5: vector groups. Each node starts a group over all its axes; a node merges with the group of
    // each vector value it reads, on the longest row prefix where its reads are row-local and both
    // groups' spaces agree (a scalar group merges only with scalar groups).
    let mut parent: Vec<usize> = (0..groups.len()).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut space_of: Vec<Vec<Dim>> = groups.iter().map(|_| Vec::new()).collect();
    // Per group, the consumers of its members outside it (kept for the cycle check, so that a merge costs
    // the size of this frontier rather than of the group: a 20,000-node chain fuses in linear time).
    let mut ext: Vec<BTreeSet<ValueId>> = groups.iter().map(|_| BTreeSet::new()).collect();
    // Vector groups only hold nodes up to the one being placed, so a path that leaves a merged group and
    // comes back must run through lower-numbered nodes: the cycle check stops at higher ones when every
    // edge of the graph goes forward (as the frontend builds it; otherwise it searches everything).
    let forward = cons.iter().enumerate().all(|(p, cs)| cs.iter().all(|c| c.index() > p));
    for i in 0..n {
        let v = ValueId(i as u32);
        if group_of[i].is_some() || inlined.contains(&v) || matches!(g.nodes[i].kind, NodeKind::Param(_)) {
            continue;
        }
        let gid = groups.len();
        groups.push((GroupKind::Vector, BTreeSet::from([v]), parallel_rank(g, v)));
        space_of.push(g.nodes[i].shape.clone());
        ext.push(cons[i].iter().copied().filter(|c| *c != v).collect());
        parent.push(gid);
        group_of[i] = Some(gid);
        if hinted(v) {
            continue;
        }
        // The values `v` loads directly: row locality only concerns those (a node that computes nothing
        // elementwise has no row-local reads at all).
        let compute = matches!(g.nodes[i].kind, NodeKind::Compute { .. });
        let loads = direct_loads(g, v);
        for p in sources(g, v, &inlined) {
            let Some(pg) = group_of[p.index()] else { continue };
            let (pr, cr) = (root(&mut parent, pg), root(&mut parent, gid));
            if pr == cr || groups[pr].0 != GroupKind::Vector || cfg.unfused.iter().any(|h| groups[pr].1.contains(h)) {
                continue;
            }
            let limit = groups[pr].2.min(groups[cr].2);
            let scalar = space_of[pr].is_empty() && space_of[cr].is_empty();
            let read: Vec<ValueId> = loads.iter().copied().filter(|m| groups[pr].1.contains(m)).collect();
            let mut q = limit;
            while q > 0
                && !(space_of[pr].len() >= q
                    && space_of[cr].len() >= q
                    && space_of[pr][..q] == space_of[cr][..q]
                    && compute
                    && read.iter().all(|m| row_local(g, v, *m, q)))
            {
                q -= 1;
            }
            if q == 0 && !scalar {
                continue;
            }
            let (a, b) = (&groups[pr].1, &groups[cr].1);
            let frontier: Vec<ValueId> =
                ext[pr].iter().chain(&ext[cr]).copied().filter(|x| !a.contains(x) && !b.contains(x)).collect();
            let bound = if forward { Some(v) } else { None };
            let unit = |x: ValueId| -> Option<usize> {
                let r = find(&parent, group_of[x.index()]?);
                (r != pr && r != cr).then_some(r)
            };
            let members = |r: usize| groups[r].1.iter().copied().collect::<Vec<_>>();
            if group_cycle(&cons, frontier.clone(), &|x| a.contains(&x) || b.contains(&x), &unit, &members, bound) {
                continue;
            }
            // Merge `pr` into `cr`: the union runs over the shorter common rows. The smaller set moves.
            let mut moved = std::mem::take(&mut groups[pr].1);
            if moved.len() > groups[cr].1.len() {
                std::mem::swap(&mut moved, &mut groups[cr].1);
            }
            groups[cr].1.extend(moved);
            groups[cr].2 = q;
            ext[cr] = frontier.into_iter().collect();
            ext[pr].clear();
            if space_of[pr].len() > space_of[cr].len() {
                space_of[cr] = space_of[pr].clone();
            }
            parent[pr] = cr;
        }
    }
    for slot in group_of.iter_mut().take(n) {
        if let Some(gid) = *slot {
            *slot = Some(root(&mut parent, gid));
        }
    }
    // Nodes not computed at these dims leave their groups.
    for v in &cfg.skip {
        if let Some(slot) = group_of.get_mut(v.index()) {
            if let Some(gid) = slot.take() {
                groups[gid].1.remove(v);
            }
        }
    }
    // Drop the emptied groups, renumbering in order of first member.
    let mut order: Vec<usize> = (0..groups.len()).filter(|&x| !groups[x].1.is_empty()).collect();
    order.sort_by_key(|&x| groups[x].1.iter().next().copied());
    let renum: BTreeMap<usize, usize> = order.iter().enumerate().map(|(new, old)| (*old, new)).collect();
    let groups: Vec<(GroupKind, BTreeSet<ValueId>, usize)> = order.iter().map(|&x| groups[x].clone()).collect();
    for slot in group_of.iter_mut() {
        *slot = slot.and_then(|x| renum.get(&x).copied());
    }

    // Inputs, stored values, and the reasons for every edge left unfused.
    let mut out_groups = Vec::new();
    for (gid, (kind, members, par)) in groups.iter().enumerate() {
        let mut inputs = Vec::new();
        let mut stored = Vec::new();
        let mut seen = BTreeSet::new();
        for m in members {
            for o in sources(g, *m, &inlined) {
                if !members.contains(&o) && seen.insert(o) {
                    inputs.push(o);
                }
            }
            let read_outside =
                cons[m.index()].iter().any(|c| reader_group(*c, &group_of, &inlined, &cons).iter().any(|x| *x != gid));
            if results.contains(m) || read_outside {
                stored.push(*m);
            }
        }
        inputs.sort();
        let widest = members
            .iter()
            .max_by_key(|m| {
                let sh = &g.node(**m).shape;
                (sh.len(), sh.iter().filter(|d| !d.is_one()).count(), std::cmp::Reverse(m.0))
            })
            .copied();
        let space = widest.map(|w| g.node(w).shape.clone()).unwrap_or_default();
        let parallel = match kind {
            // A group left with lower-rank members only (the others skipped) is parallel over what it has.
            GroupKind::Vector => (*par).min(space.len()),
            GroupKind::Library => space.len().saturating_sub(1),
            _ => space.len().saturating_sub(2),
        };
        out_groups.push(Group {
            kind: *kind,
            nodes: members.iter().copied().collect(),
            stored,
            inputs,
            parallel,
            space,
        });
    }
    let mut unfused = Vec::new();
    for (ci, cn) in g.nodes.iter().enumerate() {
        let c = ValueId(ci as u32);
        let Some(cg) = group_of[ci] else { continue };
        let mut seen = BTreeSet::new();
        for p in sources(g, c, &inlined) {
            if !seen.insert(p) || matches!(g.node(p).kind, NodeKind::Param(_)) || group_of[p.index()] == Some(cg) {
                continue;
            }
            let pg = group_of[p.index()];
            let reason = why(g, p, c, pg.map(|x| &out_groups[x]), &out_groups[cg], cfg);
            unfused.push(Unfused { producer: p, consumer: c, reason });
        }
        let _ = cn;
    }
    Fusion { groups: out_groups, group_of, unfused }
}

/// Whether a path leaves `set` and comes back into it: fusing `set` would make a cycle between groups.
fn cycles(cons: &[Vec<ValueId>], set: &BTreeSet<ValueId>) -> bool {
    let mut seen: BTreeSet<ValueId> = BTreeSet::new();
    let mut stack: Vec<ValueId> =
        set.iter().flat_map(|m| cons[m.index()].iter().copied()).filter(|c| !set.contains(c)).collect();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        for &c in &cons[x.index()] {
            if set.contains(&c) {
                return true;
            }
            stack.push(c);
        }
    }
    false
}

/// The root of `x` in the union-find `parent`, without compressing paths.
fn find(parent: &[usize], mut x: usize) -> usize {
    while parent[x] != x {
        x = parent[x];
    }
    x
}

/// Whether a path from `start` (nodes outside a set about to become one group) reaches the set again,
/// where a node of another group (`unit`) stands for the whole group: a group runs as one launch, so
/// anything that reads any of its members waits for all its inputs. (A path that only goes through
/// nodes can miss a cycle between groups: the set reads one member of a matmul group while another of its
/// members reads the set.) With `bound`, the set's highest node, ungrouped nodes above it are skipped:
/// every edge goes forward, so none leads back.
fn group_cycle(
    cons: &[Vec<ValueId>],
    mut stack: Vec<ValueId>,
    inside: &dyn Fn(ValueId) -> bool,
    unit: &dyn Fn(ValueId) -> Option<usize>,
    members: &dyn Fn(usize) -> Vec<ValueId>,
    bound: Option<ValueId>,
) -> bool {
    let mut seen: BTreeSet<ValueId> = BTreeSet::new();
    let mut seen_units: BTreeSet<usize> = BTreeSet::new();
    while let Some(x) = stack.pop() {
        if inside(x) {
            return true;
        }
        if !seen.insert(x) {
            continue;
        }
        match unit(x) {
            Some(u) => {
                if seen_units.insert(u) {
                    for m in members(u) {
                        stack.extend(cons[m.index()].iter().copied());
                    }
                }
            }
            None if bound.is_some_and(|b| x > b) => {}
            None => stack.extend(cons[x.index()].iter().copied()),
        }
    }
    false
}

/// The values `v`'s body loads (or segments) directly.
fn direct_loads(g: &Graph, v: ValueId) -> BTreeSet<ValueId> {
    let mut out = BTreeSet::new();
    if let NodeKind::Compute { body, .. } = &g.node(v).kind {
        body.walk(&mut |e| match &e.kind {
            ExprKind::Load { src, .. } | ExprKind::Segment { src, .. } => {
                out.insert(*src);
            }
            _ => {}
        });
    }
    out
}

/// The values a node reads, looking through inlined copies.
fn sources(g: &Graph, v: ValueId, inlined: &BTreeSet<ValueId>) -> Vec<ValueId> {
    let mut out = Vec::new();
    for o in g.node(v).operands() {
        if inlined.contains(&o) {
            out.extend(sources(g, o, inlined));
        } else {
            out.push(o);
        }
    }
    out
}

/// The groups that read a value through a consumer (an inlined copy counts as its consumers' groups).
fn reader_group(
    c: ValueId,
    group_of: &[Option<usize>],
    inlined: &BTreeSet<ValueId>,
    cons: &[Vec<ValueId>],
) -> Vec<usize> {
    if inlined.contains(&c) {
        cons[c.index()].iter().flat_map(|x| reader_group(*x, group_of, inlined, cons)).collect()
    } else {
        group_of[c.index()].into_iter().collect()
    }
}

/// The rows a lone vector node is parallel over: all its axes (a reduction binds its own variables).
fn parallel_rank(g: &Graph, v: ValueId) -> usize {
    g.node(v).rank()
}

fn why(g: &Graph, p: ValueId, c: ValueId, pg: Option<&Group>, cg: &Group, cfg: &FusionConfig) -> String {
    if cfg.unfused.contains(&p) || cfg.unfused.contains(&c) {
        return "a schedule hint keeps them apart".into();
    }
    let Some(pg) = pg else { return "the producer is not computed by a group".into() };
    match (pg.kind, cg.kind) {
        (GroupKind::Library, _) => {
            "the producer is a library operation: it needs its whole input before any output".into()
        }
        (_, GroupKind::Library) => "a library operation reads its whole input from global memory".into(),
        (_, GroupKind::Score) => "the flash (score) group streams its inputs from global memory, tile by tile".into(),
        (_, GroupKind::GroupedMatmul) if is_segment(g, p) => {
            "the segment lookup is read elsewhere too (or not only as an expert index), so it is stored once \
             for all its readers rather than recomputed from the offsets"
                .into()
        }
        (_, GroupKind::Matmul | GroupKind::GroupedMatmul) => {
            "the cube reads matmul operands from global memory (L1), not from the vector unit".into()
        }
        (GroupKind::Matmul | GroupKind::GroupedMatmul, _) if g.node(c).shape != g.node(p).shape => format!(
            "the consumer has shape {} but the matmul computes {}: not an epilogue",
            print_type(g.node(c).dtype, &g.node(c).shape),
            print_type(g.node(p).dtype, &g.node(p).shape)
        ),
        (GroupKind::Matmul | GroupKind::GroupedMatmul | GroupKind::Score, _) => {
            "the consumer reduces or re-indexes the matmul's result: it needs whole rows, not one tile".into()
        }
        _ if pg.space.is_empty() && !g.node(c).shape.is_empty() => {
            "the producer reduces whole tensors to a scalar: it must be complete before any row uses it".into()
        }
        _ if g.node(c).rank() < pg.parallel || g.node(c).shape.get(..pg.parallel) != pg.space.get(..pg.parallel) => {
            format!(
                "different rows: the producer's group runs over [{}], the consumer over {}",
                pg.space[..pg.parallel].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                print_type(g.node(c).dtype, &g.node(c).shape)
            )
        }
        _ => "the consumer reads the producer across rows (not at its own row), so the producer must be complete first"
            .into(),
    }
}

/// The `--emit fusion` text: the groups, what each reads and writes, and every unfused pair with its reason.
pub fn print_fusion(g: &Graph, f: &Fusion) -> String {
    let mut out = String::new();
    let name = |v: ValueId| match &g.node(v).name {
        Some(n) => format!("%{} {n}", v.0),
        None => format!("%{}", v.0),
    };
    let list = |vs: &[ValueId]| vs.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", ");
    let plural = if f.groups.len() == 1 { "" } else { "s" };
    let _ = writeln!(out, "fusion of kernel {}: {} group{plural}", g.name, f.groups.len());
    for (i, gr) in f.groups.iter().enumerate() {
        let rows =
            gr.space[..gr.parallel.min(gr.space.len())].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        let unit = if gr.kind.uses_cube() { "cube" } else { "vector" };
        let _ = writeln!(
            out,
            "group {i}: {} ({unit}) over [{}], rows [{rows}]",
            gr.kind.name(),
            crate::launch::fmt_dims(&gr.space)
        );
        let _ = writeln!(out, "  nodes: {}", list(&gr.nodes));
        if !gr.inputs.is_empty() {
            let _ = writeln!(out, "  reads: {}", list(&gr.inputs));
        }
        let _ = writeln!(out, "  writes: {}", if gr.stored.is_empty() { "-".to_string() } else { list(&gr.stored) });
    }
    let inlined: Vec<ValueId> = (0..g.nodes.len())
        .map(|i| ValueId(i as u32))
        .filter(|v| f.group_of[v.index()].is_none() && !matches!(g.node(*v).kind, NodeKind::Param(_)))
        .collect();
    if !inlined.is_empty() {
        let _ = writeln!(out, "inlined into their consumers (re-indexing): {}", list(&inlined));
    }
    if !f.unfused.is_empty() {
        let _ = writeln!(out, "unfused:");
        for u in &f.unfused {
            let _ = writeln!(out, "  {} -> {}: {}", name(u.producer), name(u.consumer), u.reason);
        }
    }
    out
}

/// The values some group writes to global memory for another group to read: whole intermediates.
pub fn gm_intermediates(g: &Graph, f: &Fusion) -> Vec<ValueId> {
    let results: BTreeSet<ValueId> = g.results.iter().map(|r| r.value).collect();
    let mut out: Vec<ValueId> =
        f.groups.iter().flat_map(|gr| gr.stored.iter().copied()).filter(|v| !results.contains(v)).collect();
    out.sort();
    out.dedup();
    out
}
