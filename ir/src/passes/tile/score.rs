//! Score groups (fusion's [`GroupKind::Score`]): a score tile `Z[.., i, j]` computed on the cube, worked on
//! elementwise and reduced along its rows by the vector cores, and contracted again on the cube over `j`
//! (flash attention; Muon's `b = αa + β(a·a)`, then `b·x`). The `[.., S, T]` scores never reach global
//! memory: they pass from the cube to the vector cores and back through a bounded per-core ring of tiles.
//!
//! What qualifies (checked structurally, not by name; anything else is `None`):
//! - one *anchor*: a member of the score shape `[batch.., S, T]` whose body holds one contraction
//!   `Σ_k a[.., i, k] · b[.., k, j]` of two GM tensors (either may be transposed; batch indices may be any
//!   integer expression of the batch variables, e.g. `h / R` for grouped KV heads), possibly wrapped in
//!   elementwise work (`where(j <= i + (T - S), scale * Σ, -inf)`);
//! - *tile members*: score-shaped members elementwise over the anchor and each other;
//! - *row statistics*: `max_j` of a tile member; elementwise work on statistics (`ms = where(m == -inf, 0,
//!   m)`, `lse = log(l) + ms`); at most one `l = Σ_j exp(z - x)` with `x` a statistic of the maxima only;
//! - one *consumer* contraction `o[.., i, n] = Σ_j p · v[.., j, n]` with `p` either a tile member `z`
//!   (accumulate mode: no statistics involved) or `exp(z - y)` with `y = log(l) + x` (online mode: the
//!   softmax-weighted sum, `Σ_j exp(z - x) v / l`);
//! - *epilogue* members elementwise over the consumer (with GM tiles of the consumer's shape or scalars);
//! - the stored members are the consumer, epilogue members or statistics (never a tile member).
//!
//! Blocks: `bm` rows of `i` (≤ 64) by `bn` columns of `j` (≤ 128), the whole `k` (`D`) and the whole `n`
//! (`Dv`) at once, each a multiple of 16 and within L0. A task is one (batch, i-block); tasks are dealt to
//! the cube cores round-robin; the rows of an i-block are split between the `ratio` vector cores of the cube
//! core (`hr = ⌈bm / ratio⌉` each). A mask `where(j <= i + e, .., -inf)` with a constant `e ≥ 0` (causal
//! attention, `e = T - S`) limits the j-blocks of an i-block to those with a visible column (fully masked
//! blocks are skipped; partly masked ones are masked by the vector unit evaluating the `where`).
//!
//! Workspaces (GM, per cube core, independent of `S` and `T`): `ws_s` 2 × `bm·bn` f32 (score tiles),
//! `ws_p` 2 × `bm·bn` (p, in `v`'s dtype), `ws_o` 2 × `bm·Dv` f32 (p·v tiles). Slot = j-block mod 2.
//!
//! ```text
//! cube core, per task:                          vector core (its hr rows), per task:
//!   q tile GM->L1->L0A                            m = -inf, l = 0, O = 0, x = X(m)
//!   S(0)                                          SOFTMAX(0)
//!   for j in 0..nj:                               for j in 0..nj:
//!     if j+1 < nj: S(j+1)                           if j+1 < nj: SOFTMAX(j+1)
//!     PV(j)                                         [online] UPDATE(j)
//!   [accumulate] FIX L0C -> ws_o; cross_set #2    [accumulate] cross_wait #2; ws_o -> UB
//!                                                 o = O / l (online) ; epilogue ; stats ; MTE3 -> GM
//! S(j):  k tile GM->L1->L0B; mmad -> L0C; FIX -> ws_s[j%2]; cross_set #0
//! PV(j): cross_wait #1; p tile ws_p[j%2]->L1->L0A; v tile GM->L1->L0B; mmad -> L0C (accumulating over j
//!        in accumulate mode); [online] FIX -> ws_o[j%2]; cross_set #2
//! SOFTMAX(j): cross_wait #0; ws_s[j%2] -> UB; tile members; m = max(m, rowmax z); x_old = x; x = X(m);
//!        alpha[j%2] = l > 0 ? exp(x_old - x) : 0; e = exp(z - x); l = l·alpha + rowsum(e);
//!        p = e (online) or z (accumulate), cast to v's dtype; UB -> ws_p[j%2]; cross_set #1
//! UPDATE(j): cross_wait #2; ws_o[j%2] -> UB; O = O·alpha[j%2] + pv
//! ```
//! Ring discipline: flag #0 (cube → vector) says a score tile is in `ws_s`, #1 (vector → cube, the cube
//! core waits for all its vector cores) says `p` is in `ws_p` *and* hands back the `ws_s` slot it was
//! computed from, #2 (cube → vector) says a `p·v` tile is in `ws_o`. The other slot hand-backs follow from
//! the order of the two programs: the cube writes `ws_s[j%2]` again for j+2 only after waiting for p(j); the
//! vector cores write `ws_p[j%2]` for j+2 only after the cube's set of #0 for j+2, issued after its read of
//! p(j); the cube writes `ws_o[j%2]` for j+2 after waiting for p(j+2), which the vector cores set after
//! UPDATE(j). So two slots per stage let the cube compute S(j+1) while the vector cores work on j.
//! Within a core the pipes are serialized (each statement on another pipe than the previous one waits for
//! a flag from it); the overlap is between the cube and the vector cores.
//!
//! Numerics: the anchor and tile members are evaluated as the interpreter does (f32, the same
//! expressions); the maxima are exact; `l` and `O` are summed block by block with rescaling (online
//! softmax) and `p` is rounded to `v`'s dtype for the cube, so the online mode matches the interpreter
//! within rounding, not bit for bit. The accumulate mode sums over `j` in order in L0C, like the
//! interpreter.
//!
//! Not handled (`None`): several contractions in the score shape (attention's backward), a `k` or `Dv`
//! too large for one L0 tile, statistics other than the above, reads of GM tensors other than scalars in
//! tile members and statistics.

use super::{add, bin, c, lt, min, mul, sub, v, GmPlan, LaunchBuilder, Tiled};
use crate::diag::Diagnostic;
use crate::dtype::DType;
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ReduceOp, UnOp, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// `return None`: the group is not one this template takes.
macro_rules! bail {
    () => {{
        return None;
    }};
}

const F_S: u8 = 0;
const F_P: u8 = 1;
const F_O: u8 = 2;

/// A contraction operand: a GM tensor read as the logical tile `(r, c)`; `transposed` if stored `[c, r]`.
#[derive(Clone, Debug)]
struct Operand {
    tensor: TensorId,
    dtype: DType,
    /// The leading (batch) index expressions and the tensor's shape.
    lead: Vec<Expr>,
    shape: Vec<i64>,
    transposed: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Stat {
    /// `max_j z`.
    Max(ValueId),
    /// `Σ_j exp(z - x)`.
    SumExp { z: ValueId, x: ValueId },
    /// Elementwise over statistics (and scalars).
    Elem,
}

struct Plan {
    nb: usize,
    batch_dims: Vec<i64>,
    s: i64,
    t: i64,
    d: i64,
    dv: i64,
    a: Operand,
    b: Operand,
    vop: Operand,
    /// Tile members in graph order (the anchor first).
    tiles: Vec<ValueId>,
    stats: Vec<(ValueId, Stat)>,
    /// The statistic `l` (online mode: the consumer divides by it) and its shift `x`.
    online: Option<(ValueId, ValueId)>,
    /// The tile member `p` is made of.
    pz: ValueId,
    consumer: ValueId,
    epilogue: Vec<ValueId>,
    /// GM tiles of the consumer's shape read by the epilogue, and GM scalars.
    ext_tiles: Vec<ValueId>,
    /// GM tensors of the score shape read by tile members at their element.
    zext: Vec<ValueId>,
    scalars: Vec<ValueId>,
    /// The causal mask's constant `e` (`j <= i + e`), if blocks can be skipped.
    causal: Option<i64>,
}

fn is_var(e: &Expr, k: usize) -> bool {
    matches!(e.kind, ExprKind::Var(x) if x.index() == k)
}

fn is_neg_inf(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Const(Const::F32(x)) => *x == f32::NEG_INFINITY,
        ExprKind::Unary(UnOp::Neg, a) => matches!(a.kind, ExprKind::Const(Const::F32(x)) if x == f32::INFINITY),
        _ => false,
    }
}

/// An integer index expression as scalar arithmetic; `var(k)` gives variable `k`.
fn sexpr(e: &Expr, var: &dyn Fn(usize) -> Option<SExpr>, bd: &Binding) -> Option<SExpr> {
    Some(match &e.kind {
        ExprKind::Var(x) => var(x.index())?,
        ExprKind::Dim(d) => c(bd.eval(d).ok()?),
        ExprKind::Const(Const::I32(x)) => c(*x),
        ExprKind::Binary(op, a, b) => {
            let op = match op {
                BinOp::Add => SBin::Add,
                BinOp::Sub => SBin::Sub,
                BinOp::Mul => SBin::Mul,
                BinOp::Div => SBin::Div,
                BinOp::Mod => SBin::Mod,
                BinOp::Min => SBin::Min,
                BinOp::Max => SBin::Max,
                _ => bail!(),
            };
            bin(op, sexpr(a, var, bd)?, sexpr(b, var, bd)?)
        }
        _ => bail!(),
    })
}

fn dims_of(g: &Graph, x: ValueId, bd: &Binding) -> Option<Vec<i64>> {
    g.node(x).shape.iter().map(|d| bd.eval(d).ok()).collect()
}

/// A load of a GM tensor outside the group as an operand whose logical tile is `(row_var, col_var)`.
#[allow(clippy::too_many_arguments)]
fn operand(
    g: &Graph,
    group: &Group,
    gm: &GmPlan,
    bd: &Binding,
    e: &Expr,
    nb: usize,
    row_var: usize,
    col_var: usize,
) -> Option<Operand> {
    let ExprKind::Load { src, idx } = &e.kind else { bail!() };
    if group.nodes.contains(src) || idx.len() < 2 {
        bail!();
    }
    let tensor = *gm.of.get(src)?;
    let shape = dims_of(g, *src, bd)?;
    let n = idx.len();
    if shape.len() != n {
        bail!();
    }
    let transposed = if is_var(&idx[n - 2], row_var) && is_var(&idx[n - 1], col_var) {
        false
    } else if is_var(&idx[n - 2], col_var) && is_var(&idx[n - 1], row_var) {
        true
    } else {
        bail!();
    };
    let lead = idx[..n - 2].to_vec();
    // Leading indices: integer expressions of the batch variables only.
    for l in &lead {
        sexpr(l, &|k| (k < nb).then(|| c(0)), bd)?;
    }
    let dtype = g.node(*src).dtype;
    if !matches!(dtype, DType::BF16 | DType::F16) {
        bail!();
    }
    Some(Operand { tensor, dtype, lead, shape, transposed })
}

/// Whether a load's indices are the reader's first `nb + 1` variables, then constants 0 (a statistic read
/// at its row) or, with `col`, variable `col` (a tile read at its element).
fn row_read(idx: &[Expr], nb: usize, col: Option<usize>) -> bool {
    if idx.len() < nb + 1 || !(0..=nb).all(|k| is_var(&idx[k], k)) {
        return false;
    }
    match col {
        Some(cv) => idx.len() == nb + 2 && is_var(&idx[nb + 1], cv),
        // A statistic's kept axis (extent 1): 0, or the reader's own variable there.
        None => idx[nb + 1..].iter().all(|e| matches!(e.kind, ExprKind::Const(Const::I32(0))) || is_var(e, nb + 1)),
    }
}

fn find_reduce(e: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    fn go<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
        if matches!(e.kind, ExprKind::Reduce { .. }) {
            out.push(e);
            return;
        }
        e.for_each_child(|c| go(c, out));
    }
    go(e, &mut out);
    out
}

fn analyze(g: &Graph, group: &Group, gm: &GmPlan, bd: &Binding) -> Option<Plan> {
    if group.kind != GroupKind::Score {
        bail!();
    }
    // The anchor: the score-shaped member holding a contraction of GM tensors.
    let mut anchors = Vec::new();
    for &x in &group.nodes {
        let n = g.node(x);
        let NodeKind::Compute { body, .. } = &n.kind else { bail!() };
        if n.rank() >= 2 && !find_reduce(body).is_empty() {
            if let Some(con) = crate::passes::fuse::contraction(g, x) {
                let r = n.rank();
                if con.m == vec![r - 2] && con.n == vec![r - 1] {
                    anchors.push(x);
                }
            }
        }
    }
    // The anchor reads no member (the consumer contraction reads the scores); exactly one such.
    let reads_member = |x: &ValueId| {
        let NodeKind::Compute { body, .. } = &g.node(*x).kind else { return true };
        let mut inside = false;
        body.walk(&mut |e| inside |= matches!(&e.kind, ExprKind::Load { src, .. } if group.nodes.contains(src)));
        inside
    };
    let free: Vec<ValueId> = anchors.iter().copied().filter(|x| !reads_member(x)).collect();
    if free.len() != 1 {
        bail!(); // several score-shaped contractions (attention backward), or none
    }
    let anchor = free[0];
    let an = g.node(anchor);
    let r = an.rank();
    let nb = r - 2;
    let zdims = dims_of(g, anchor, bd)?;
    let (s, t) = (zdims[nb], zdims[nb + 1]);
    let NodeKind::Compute { body: abody, vars: avars } = &an.kind else { bail!() };
    let reds = find_reduce(abody);
    if reds.len() != 1 {
        bail!();
    }
    let ExprKind::Reduce { op: ReduceOp::Sum, vars: ks, body: inner } = &reds[0].kind else { bail!() };
    if ks.len() != 1 {
        bail!();
    }
    let kv = ks[0].index();
    let d = bd.eval(&avars.get(kv)?.extent).ok()?;
    let ExprKind::Binary(BinOp::Mul, x, y) = &inner.kind else { bail!() };
    let (a, b) = match (operand(g, group, gm, bd, x, nb, nb, kv), operand(g, group, gm, bd, y, nb, kv, nb + 1)) {
        (Some(a), Some(b)) => (a, b),
        _ => (operand(g, group, gm, bd, y, nb, nb, kv)?, operand(g, group, gm, bd, x, nb, kv, nb + 1)?),
    };
    if a.dtype != b.dtype || d < 1 || t < 1 || !an.dtype.is_float() {
        bail!();
    }
    // The causal mask.
    let mut causal = None;
    if let ExprKind::Select(cond, _, other) = &abody.kind {
        if is_neg_inf(other) {
            if let ExprKind::Binary(op @ (BinOp::Le | BinOp::Lt), lhs, rhs) = &cond.kind {
                if is_var(lhs, nb + 1) {
                    if let ExprKind::Binary(BinOp::Add, ri, re) = &rhs.kind {
                        if is_var(ri, nb) {
                            if let Some(SExpr::Const(e)) = sexpr(re, &|_| None, bd).map(fold) {
                                let e = if *op == BinOp::Lt { e - 1 } else { e };
                                if e >= 0 {
                                    causal = Some(e);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Classify the members.
    let zshape = &an.shape;
    let mut tiles = vec![anchor];
    let mut stats: Vec<(ValueId, Stat)> = Vec::new();
    let mut consumer = None;
    let mut epilogue = Vec::new();
    let mut scalars = Vec::new();
    let mut ext_tiles = Vec::new();
    let mut zext: Vec<ValueId> = Vec::new();
    // The anchor's own reads outside its contraction: GM scalars (`scale`).
    abody.walk(&mut |e| {
        if let ExprKind::Load { src, .. } = &e.kind {
            if g.node(*src).rank() == 0 && gm.of.contains_key(src) && !scalars.contains(src) {
                scalars.push(*src);
            }
        }
    });
    let is_stat = |x: ValueId, stats: &[(ValueId, Stat)]| stats.iter().any(|(s, _)| *s == x);
    let row_shaped = |x: ValueId| {
        let sh = &g.node(x).shape;
        (sh.len() == r - 1 || sh.len() == r && sh[r - 1].is_one()) && sh[..r - 1] == zshape[..r - 1]
    };
    for &x in &group.nodes {
        if x == anchor {
            continue;
        }
        let n = g.node(x);
        let NodeKind::Compute { body, vars } = &n.kind else { bail!() };
        let reds = find_reduce(body);
        // Every load of another member or a GM scalar; record the scalars.
        let mut loads_ok = true;
        let mut reads = Vec::new();
        body.walk(&mut |e| {
            if let ExprKind::Load { src, .. } = &e.kind {
                if group.nodes.contains(src) {
                    reads.push(*src);
                } else if g.node(*src).rank() == 0 && gm.of.contains_key(src) {
                    if !scalars.contains(src) {
                        scalars.push(*src);
                    }
                } else {
                    reads.push(*src);
                }
            }
            if matches!(e.kind, ExprKind::Segment { .. }) {
                loads_ok = false;
            }
        });
        if !loads_ok {
            bail!();
        }
        if &n.shape == zshape && reds.is_empty() && consumer.is_none() {
            // A tile member: reads tile members at its own element.
            let mut ok = true;
            body.walk(&mut |e| {
                if let ExprKind::Load { src, idx } = &e.kind {
                    if g.node(*src).rank() > 0 {
                        ok &= row_read(idx, nb, Some(nb + 1));
                        if !tiles.contains(src) {
                            if !group.nodes.contains(src) && gm.of.contains_key(src) && &g.node(*src).shape == zshape {
                                if !zext.contains(src) {
                                    zext.push(*src);
                                }
                            } else {
                                ok = false;
                            }
                        }
                    }
                }
            });
            if !ok {
                bail!();
            }
            tiles.push(x);
        } else if row_shaped(x) && consumer.is_none() {
            let stat = if reds.is_empty() {
                let mut ok = true;
                body.walk(&mut |e| {
                    if let ExprKind::Load { src, idx } = &e.kind {
                        if g.node(*src).rank() > 0 {
                            ok &= is_stat(*src, &stats) && row_read(idx, nb, None);
                        }
                    }
                    if let ExprKind::Var(v) = &e.kind {
                        ok &= v.index() <= nb + 1;
                    }
                });
                if !ok {
                    bail!();
                }
                Stat::Elem
            } else {
                let ExprKind::Reduce { op, vars: rv, body: rb } = &body.kind else { bail!() };
                if rv.len() != 1 || bd.eval(&vars.get(rv[0].index())?.extent).ok()? != t {
                    bail!();
                }
                let jv = rv[0].index();
                let tile_load = |e: &Expr| match &e.kind {
                    ExprKind::Load { src, idx } if tiles.contains(src) && row_read(idx, nb, Some(jv)) => Some(*src),
                    _ => None,
                };
                match (op, &rb.kind) {
                    (ReduceOp::Max, _) => Stat::Max(tile_load(rb)?),
                    (ReduceOp::Sum, ExprKind::Unary(UnOp::Exp, arg)) => {
                        let ExprKind::Binary(BinOp::Sub, zl, xl) = &arg.kind else { bail!() };
                        let z = tile_load(zl)?;
                        let ExprKind::Load { src: xs, idx } = &xl.kind else { bail!() };
                        if !row_read(idx, nb, None) || !is_stat(*xs, &stats) {
                            bail!();
                        }
                        if stats.iter().any(|(_, s)| matches!(s, Stat::SumExp { .. })) {
                            bail!();
                        }
                        Stat::SumExp { z, x: *xs }
                    }
                    _ => bail!(),
                }
            };
            stats.push((x, stat));
        } else if consumer.is_none() && !reds.is_empty() {
            // The consumer: Σ_j p · v.
            let od = dims_of(g, x, bd)?;
            if n.rank() != r || od[..nb + 1] != zdims[..nb + 1] {
                bail!();
            }
            let ExprKind::Reduce { op: ReduceOp::Sum, vars: rv, body: rb } = &body.kind else { bail!() };
            if rv.len() != 1 || bd.eval(&vars.get(rv[0].index())?.extent).ok()? != t {
                bail!();
            }
            let jv = rv[0].index();
            let ExprKind::Binary(BinOp::Mul, f1, f2) = &rb.kind else { bail!() };
            let (pe, vop) = match operand(g, group, gm, bd, f2, nb, jv, nb + 1) {
                Some(o) => (f1, o),
                None => (f2, operand(g, group, gm, bd, f1, nb, jv, nb + 1)?),
            };
            consumer = Some((x, pe.as_ref().clone(), vop, od[nb + 1]));
        } else if let Some((cv, ..)) = &consumer {
            // An epilogue member: elementwise over the consumer (and earlier epilogue members, GM tiles).
            if n.shape != g.node(*cv).shape || !reds.is_empty() {
                bail!();
            }
            let mut ok = true;
            body.walk(&mut |e| {
                if let ExprKind::Load { src, idx } = &e.kind {
                    if g.node(*src).rank() == 0 {
                        return;
                    }
                    ok &= row_read(idx, nb, Some(nb + 1));
                    if *src == *cv || epilogue.contains(src) {
                        return;
                    }
                    if !group.nodes.contains(src) && gm.of.contains_key(src) && g.node(*src).shape == n.shape {
                        if !ext_tiles.contains(src) {
                            ext_tiles.push(*src);
                        }
                    } else {
                        ok = false;
                    }
                }
            });
            if !ok {
                bail!();
            }
            epilogue.push(x);
        } else {
            bail!();
        }
    }
    let (consumer, pexpr, vop, dv) = consumer?;
    // p: a tile member, or exp(z - y) with y = log(l) + x.
    let mut online = None;
    let pz = match &pexpr.kind {
        ExprKind::Load { src, idx } if tiles.contains(src) => {
            let NodeKind::Compute { body, .. } = &g.node(consumer).kind else { bail!() };
            let ExprKind::Reduce { vars: rv, .. } = &body.kind else { bail!() };
            if !row_read(idx, nb, Some(rv[0].index())) {
                bail!();
            }
            *src
        }
        ExprKind::Unary(UnOp::Exp, arg) => {
            let ExprKind::Binary(BinOp::Sub, zl, yl) = &arg.kind else { bail!() };
            let ExprKind::Load { src: z, idx: zi } = &zl.kind else { bail!() };
            let NodeKind::Compute { body, .. } = &g.node(consumer).kind else { bail!() };
            let ExprKind::Reduce { vars: rv, .. } = &body.kind else { bail!() };
            if !row_read(zi, nb, Some(rv[0].index())) {
                bail!();
            }
            let ExprKind::Load { src: y, idx: yi } = &yl.kind else { bail!() };
            if !row_read(yi, nb, None) {
                bail!();
            }
            let (lv, (lz, lx)) = stats.iter().find_map(|(s, st)| match st {
                Stat::SumExp { z, x } => Some((*s, (*z, *x))),
                _ => None,
            })?;
            if lz != *z {
                bail!();
            }
            // y = log(l) + x (either order).
            let NodeKind::Compute { body: yb, .. } = &g.node(*y).kind else { bail!() };
            let ExprKind::Binary(BinOp::Add, p1, p2) = &yb.kind else { bail!() };
            let is_log_l = |e: &Expr| matches!(&e.kind, ExprKind::Unary(UnOp::Log, a) if matches!(&a.kind, ExprKind::Load { src, .. } if *src == lv));
            let is_x = |e: &Expr| matches!(&e.kind, ExprKind::Load { src, .. } if *src == lx);
            if !(is_log_l(p1) && is_x(p2) || is_log_l(p2) && is_x(p1)) {
                bail!();
            }
            online = Some((lv, lx));
            *z
        }
        _ => bail!(),
    };
    // Skipping masked columns is exact when the masked scores only feed the maxima, `l` and `p` (they
    // are -inf there: nothing to the maximum, exp(-inf) = 0 to the sums).
    if tiles.len() != 1 || online.is_none() || stats.iter().any(|(_, st)| matches!(st, Stat::Max(z) if *z != anchor)) {
        causal = None;
    }
    // The shift x of l must be a statistic of the maxima only (it is recomputed after each block).
    if let Some((_, lx)) = online {
        if !max_only(g, lx, &stats) {
            bail!();
        }
    }
    if let Some((_, Stat::SumExp { x, .. })) = stats.iter().find(|(_, s)| matches!(s, Stat::SumExp { .. })) {
        if !max_only(g, *x, &stats) {
            bail!();
        }
    }
    for st in &group.stored {
        let ok = *st == consumer || epilogue.contains(st) || stats.iter().any(|(x, _)| x == st);
        if !ok || !gm.of.contains_key(st) {
            bail!();
        }
    }
    if vop.dtype != a.dtype && !matches!(vop.dtype, DType::BF16 | DType::F16) {
        bail!();
    }
    Some(Plan {
        nb,
        batch_dims: zdims[..nb].to_vec(),
        s,
        t,
        d,
        dv,
        a,
        b,
        vop,
        tiles,
        stats,
        online,
        pz,
        consumer,
        epilogue,
        ext_tiles,
        zext,
        scalars,
        causal,
    })
}

/// Whether statistic `x` depends on the maxima only (through elementwise statistics).
fn max_only(g: &Graph, x: ValueId, stats: &[(ValueId, Stat)]) -> bool {
    match stats.iter().find(|(s, _)| *s == x).map(|(_, st)| st) {
        Some(Stat::Max(_)) => true,
        Some(Stat::Elem) => {
            let NodeKind::Compute { body, .. } = &g.node(x).kind else { return false };
            let mut ok = true;
            body.walk(&mut |e| {
                if let ExprKind::Load { src, .. } = &e.kind {
                    if g.node(*src).rank() > 0 {
                        ok &= max_only(g, *src, stats);
                    }
                }
            });
            ok
        }
        _ => false,
    }
}

/// Folds constant scalar arithmetic.
fn fold(e: SExpr) -> SExpr {
    match e {
        SExpr::Bin(op, a, b) => match (fold(*a), fold(*b)) {
            (SExpr::Const(x), SExpr::Const(y)) => {
                let r = match op {
                    SBin::Add => x.checked_add(y),
                    SBin::Sub => x.checked_sub(y),
                    SBin::Mul => x.checked_mul(y),
                    SBin::Div if y != 0 => Some(x.div_euclid(y)),
                    SBin::Min => Some(x.min(y)),
                    SBin::Max => Some(x.max(y)),
                    _ => None,
                };
                match r {
                    Some(r) => SExpr::Const(r),
                    None => SExpr::Bin(op, Box::new(SExpr::Const(x)), Box::new(SExpr::Const(y))),
                }
            }
            (a, b) => SExpr::Bin(op, Box::new(a), Box::new(b)),
        },
        e => e,
    }
}

/// A statement sequence on one core whose pipes are serialized: a statement on another pipe than the
/// previous one first waits for a flag the previous pipe sets. Loop and `if` bodies start and end on the
/// pipe current at their entry, so the order holds across iterations.
struct Seq {
    stmts: Vec<Stmt>,
    cur: Pipe,
}

impl Seq {
    fn new(cur: Pipe) -> Seq {
        Seq { stmts: Vec::new(), cur }
    }
    fn on(&mut self, p: Pipe) {
        if p != self.cur {
            self.stmts.push(Stmt::SetFlag { from: self.cur, to: p, event: 0 });
            self.stmts.push(Stmt::WaitFlag { from: self.cur, to: p, event: 0 });
            self.cur = p;
        }
    }
    fn op(&mut self, p: Pipe, s: Stmt) {
        self.on(p);
        self.stmts.push(s);
    }
    /// A scalar statement (register, cross flag): ordered by issue.
    fn s(&mut self, s: Stmt) {
        self.stmts.push(s);
    }
    fn body(&self, f: impl FnOnce(&mut Seq)) -> Vec<Stmt> {
        let mut sub = Seq::new(self.cur);
        f(&mut sub);
        sub.on(self.cur);
        sub.stmts
    }
    fn for_(&mut self, var: SVar, lo: SExpr, hi: SExpr, step: i64, f: impl FnOnce(&mut Seq)) {
        let body = self.body(f);
        self.stmts.push(Stmt::For { var, lo, hi, step, body });
    }
    fn if_(&mut self, cond: SExpr, f: impl FnOnce(&mut Seq)) {
        let then = self.body(f);
        self.stmts.push(Stmt::If { cond, then });
    }
}

fn reg(loc: Loc, offset: SExpr, row_stride: i64) -> Region {
    Region { loc, offset, row_stride: c(row_stride) }
}
fn ub(b: BufId, offset: SExpr, row_stride: i64) -> Region {
    reg(Loc::Buf { buf: b, slot: c(0) }, offset, row_stride)
}

/// Loads a logical operand tile `rows × cols` at `(r0, c0)` into an L0 buffer (row stride `ld0`) through
/// an L1 buffer (`l1`, `l1_stride`: the tile as it lies: `cols` of `ld0` if normal, `rows` if transposed).
#[allow(clippy::too_many_arguments)]
fn load_operand(
    q: &mut Seq,
    op: &Operand,
    base: SExpr,
    (r0, c0): (SExpr, SExpr),
    (rows, cols): (SExpr, SExpr),
    l1: BufId,
    l1_stride: i64,
    l0: BufId,
    ld0: i64,
    jj: SVar,
) {
    let ld = *op.shape.last().unwrap_or(&1);
    if !op.transposed {
        q.op(
            Pipe::Mte2,
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: reg(Loc::Gm(op.tensor), add(base, add(mul(r0, c(ld)), c0)), ld),
                dst: ub(l1, c(0), l1_stride),
                rows: rows.clone(),
                cols: cols.clone(),
            },
        );
        q.op(
            Pipe::Mte1,
            Stmt::Copy { pipe: Pipe::Mte1, src: ub(l1, c(0), l1_stride), dst: ub(l0, c(0), ld0), rows, cols },
        );
    } else {
        q.op(
            Pipe::Mte2,
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: reg(Loc::Gm(op.tensor), add(base, add(mul(c0, c(ld)), r0)), ld),
                dst: ub(l1, c(0), l1_stride),
                rows: cols.clone(),
                cols: rows.clone(),
            },
        );
        // L1 row t (a column of the logical tile) becomes L0 column t.
        q.on(Pipe::Mte1);
        q.s(Stmt::For {
            var: jj,
            lo: c(0),
            hi: cols,
            step: 1,
            body: vec![Stmt::Copy {
                pipe: Pipe::Mte1,
                src: ub(l1, mul(v(jj), c(l1_stride)), 1),
                dst: ub(l0, v(jj), ld0),
                rows,
                cols: c(1),
            }],
        });
    }
}

/// The flat offset of an operand's batch slice for the batch coordinates of task index `bi`.
fn operand_base(op: &Operand, bi: SVar, batch_dims: &[i64], bd: &Binding) -> Option<SExpr> {
    let coord = |k: usize| -> Option<SExpr> {
        let stride: i64 = batch_dims.get(k + 1..)?.iter().product();
        Some(bin(SBin::Mod, bin(SBin::Div, v(bi), c(stride)), c(*batch_dims.get(k)?)))
    };
    let n = op.shape.len();
    let mut off = c(0);
    for (t, e) in op.lead.iter().enumerate() {
        let stride: i64 = op.shape[t + 1..n].iter().product();
        off = add(off, mul(sexpr(e, &|k| coord(k), bd)?, c(stride)));
    }
    Some(off)
}

/// How vector expressions find their values.
struct Cx<'a> {
    nb: usize,
    batch_dims: &'a [i64],
    bi: SVar,
    row0: SExpr,
    /// The tile's first column (score tiles: `j0`; output tiles: 0); `None` for a statistic.
    col0: Option<SExpr>,
    tiles: &'a BTreeMap<ValueId, (BufId, i64)>,
    rows: &'a BTreeMap<ValueId, BufId>,
    scalars: &'a BTreeMap<ValueId, BufId>,
    /// The anchor's contraction, read from this tile.
    reduce: Option<(BufId, i64)>,
    bd: &'a Binding,
}

fn vexpr(e: &Expr, cx: &Cx<'_>) -> Option<VExpr> {
    let r = |x: &Expr| vexpr(x, cx);
    let addv = |a: VExpr, b: VExpr| VExpr::Binary(BinOp::Add, Box::new(a), Box::new(b));
    Some(match &e.kind {
        ExprKind::Const(Const::F32(x)) => VExpr::F32(*x),
        ExprKind::Const(Const::I32(x)) => VExpr::I32(*x),
        ExprKind::Const(Const::Bool(x)) => VExpr::Bool(*x),
        ExprKind::Var(x) if x.index() < cx.nb => {
            let k = x.index();
            let stride: i64 = cx.batch_dims[k + 1..].iter().product();
            VExpr::Scalar(bin(SBin::Mod, bin(SBin::Div, v(cx.bi), c(stride)), c(cx.batch_dims[k])))
        }
        ExprKind::Var(x) if x.index() == cx.nb => addv(VExpr::Scalar(cx.row0.clone()), VExpr::Row),
        ExprKind::Var(x) if x.index() == cx.nb + 1 => match &cx.col0 {
            Some(c0) => addv(VExpr::Scalar(c0.clone()), VExpr::Col),
            None => VExpr::I32(0),
        },
        ExprKind::Var(_) => bail!(),
        ExprKind::Dim(d) => VExpr::I32(cx.bd.eval(d).ok()?),
        ExprKind::Load { src, .. } => {
            if let Some((b, st)) = cx.tiles.get(src) {
                VExpr::Read(ub(*b, c(0), *st))
            } else if let Some(b) = cx.rows.get(src) {
                VExpr::ReadRow(ub(*b, c(0), 1))
            } else if let Some(b) = cx.scalars.get(src) {
                VExpr::ReadRow(ub(*b, c(0), 0))
            } else {
                bail!();
            }
        }
        ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(r(a)?)),
        ExprKind::Binary(op, a, b) => VExpr::Binary(*op, Box::new(r(a)?), Box::new(r(b)?)),
        ExprKind::Select(k, a, b) => VExpr::Select(Box::new(r(k)?), Box::new(r(a)?), Box::new(r(b)?)),
        ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(r(a)?)),
        ExprKind::Reduce { .. } => {
            let (b, st) = cx.reduce?;
            VExpr::Read(ub(b, c(0), st))
        }
        ExprKind::Segment { .. } => bail!(),
    })
}

/// The template: `None` if the group is not a score group it handles.
pub fn score(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
) -> Option<Result<Tiled, Diagnostic>> {
    let Some(p) = analyze(g, group, gm, bd) else { bail!() };
    build(g, group, name, gm, target, bd, &p)
}

fn r16(x: i64) -> i64 {
    (x.max(1) + 15) / 16 * 16
}

fn build(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
    p: &Plan,
) -> Option<Result<Tiled, Diagnostic>> {
    let (s, t, d, dv) = (p.s, p.t, p.d, p.dv);
    let esz = p.a.dtype.size_bytes() as i64;
    let vsz = p.vop.dtype.size_bytes() as i64;
    let (d16, dv16) = (r16(d), r16(dv));
    let l0a = target.memory("l0a")?.usable() as i64;
    let l0b = target.memory("l0b")?.usable() as i64;
    let l0c = target.memory("l0c")?.usable() as i64;
    let bm = r16(s).min(64);
    let mut bn = r16(t).min(128);
    let fits = |bn: i64| {
        bm * d16 * esz + bm * bn * vsz <= l0a
            && d16 * bn * esz + bn * dv16 * vsz <= l0b
            && (bm * bn + bm * dv16) * 4 <= l0c
    };
    while bn > 16 && !fits(bn) {
        bn -= 16;
    }
    if !fits(bn) {
        bail!(); // k or the consumer's columns too large for one L0 tile
    }
    let nb = p.nb;
    let nib = (s + bm - 1) / bm;
    let njall = (t + bn - 1) / bn;
    let batches: i64 = p.batch_dims.iter().product();
    let tasks = batches * nib;
    let ratio = (target.vector_cores / target.cube_cores.max(1)).max(1) as i64;
    let cubes = (target.cube_cores as i64).min(tasks).max(1);
    let vcores = cubes * ratio;
    let hr = (bm + ratio - 1) / ratio;
    let mut lb = LaunchBuilder::new(target, name, Unit::Mixed, cubes as u32, vcores as u32);
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));

    // Workspaces (tensor ids after the plan's).
    let n0 = gm.tensors.len() as u32;
    let (ws_s, ws_p, ws_o) = (TensorId(n0), TensorId(n0 + 1), TensorId(n0 + 2));
    let (per_s, per_o) = (2 * bm * bn, 2 * bm * dv);
    let ws = |nm: &str, dt: DType, per: i64| GmTensor {
        name: format!("{name}_{nm}"),
        dtype: dt,
        shape: vec![(cubes + vcores) as u64, per as u64],
        role: TensorRole::Workspace { per_core: (per * dt.size_bytes() as i64) as u64 },
    };
    let workspaces = vec![ws("ws_s", DType::F32, per_s), ws("ws_p", p.vop.dtype, per_s), ws("ws_o", DType::F32, per_o)];

    // Cube buffers.
    let sh = |r: i64, c: i64| vec![r as u64, c as u64];
    let a1 = lb.buffer("a_l1", Mem::L1, p.a.dtype, if p.a.transposed { sh(d, bm) } else { sh(bm, d) }, 1);
    let b1 = lb.buffer("b_l1", Mem::L1, p.b.dtype, if p.b.transposed { sh(bn, d) } else { sh(d, bn) }, 1);
    let p1 = lb.buffer("p_l1", Mem::L1, p.vop.dtype, sh(bm, bn), 1);
    let v1 = lb.buffer("v_l1", Mem::L1, p.vop.dtype, if p.vop.transposed { sh(dv, bn) } else { sh(bn, dv) }, 1);
    let a0 = lb.buffer("a_l0a", Mem::L0A, p.a.dtype, sh(bm, d), 1);
    let p0 = lb.buffer("p_l0a", Mem::L0A, p.vop.dtype, sh(bm, bn), 1);
    let b0 = lb.buffer("b_l0b", Mem::L0B, p.b.dtype, sh(d, bn), 1);
    let v0 = lb.buffer("v_l0b", Mem::L0B, p.vop.dtype, sh(bn, dv), 1);
    let sc = lb.buffer("s_l0c", Mem::L0C, DType::F32, sh(bm, bn), 1);
    let oc = lb.buffer("o_l0c", Mem::L0C, DType::F32, sh(bm, dv), 1);

    let task = lb.svar("task");
    let bi = lb.svar("bi");
    let i0 = lb.svar("i0");
    let rows = lb.svar("rows");
    let nj = lb.svar("nj");
    let jb = lb.svar("jb");
    let sj = lb.svar("sj");
    let sj0 = lb.svar("sj0");
    let scl = lb.svar("scl");
    let pj = lb.svar("pj");
    let pj0 = lb.svar("pj0");
    let pcl = lb.svar("pcl");
    let jj = lb.svar("jj");
    let abase = lb.svar("abase");
    let bbase = lb.svar("bbase");
    let vbase = lb.svar("vbase");

    let own = |core: SExpr, per: i64| mul(core, c(per));
    let coords = |q: &mut Seq| {
        q.s(Stmt::Set { var: bi, value: bin(SBin::Div, v(task), c(nib)) });
        q.s(Stmt::Set { var: i0, value: mul(bin(SBin::Mod, v(task), c(nib)), c(bm)) });
        q.s(Stmt::Set { var: rows, value: min(c(bm), sub(c(s), v(i0))) });
        let n = match p.causal {
            // The last visible column of the block's last row is i0 + rows - 1 + e.
            Some(e) => min(c(njall), bin(SBin::Div, add(add(v(i0), v(rows)), c(e + bn - 1)), c(bn))),
            None => c(njall),
        };
        q.s(Stmt::Set { var: nj, value: n });
    };
    // A j-block's columns: with the causal mask, only those some row of the i-block sees (`j < i0 + rows +
    // e`); the columns after them are masked for every row and contribute nothing.
    let set_j = |q: &mut Seq, j: SVar, j0: SVar, cl: SVar, value: SExpr| {
        q.s(Stmt::Set { var: j, value });
        q.s(Stmt::Set { var: j0, value: mul(v(j), c(bn)) });
        let mut n = min(c(bn), sub(c(t), v(j0)));
        if let Some(e) = p.causal {
            n = min(n, sub(add(add(v(i0), v(rows)), c(e)), v(j0)));
        }
        q.s(Stmt::Set { var: cl, value: n });
    };
    let slot = |j: SVar, per: i64| mul(bin(SBin::Mod, v(j), c(2)), c(per));

    // ---- The cube program.
    let online = p.online.is_some();
    let stage_s = |q: &mut Seq, j: SExpr| {
        set_j(q, sj, sj0, scl, j);
        load_operand(
            q,
            &p.b,
            v(bbase),
            (c(0), v(sj0)),
            (c(d), v(scl)),
            b1,
            if p.b.transposed { d } else { bn },
            b0,
            bn,
            jj,
        );
        q.op(
            Pipe::M,
            Stmt::Mmad {
                a: ub(a0, c(0), d),
                b: ub(b0, c(0), bn),
                c: ub(sc, c(0), bn),
                m: v(rows),
                k: c(d),
                n: v(scl),
                accumulate: false,
            },
        );
        q.op(
            Pipe::Fix,
            Stmt::Copy {
                pipe: Pipe::Fix,
                src: ub(sc, c(0), bn),
                dst: reg(Loc::Gm(ws_s), add(own(SExpr::Core, per_s), slot(sj, bm * bn)), bn),
                rows: v(rows),
                cols: v(scl),
            },
        );
        q.s(Stmt::CrossSet { flag: F_S });
    };
    let stage_pv = |q: &mut Seq, j: SExpr| {
        set_j(q, pj, pj0, pcl, j);
        q.s(Stmt::CrossWait { flag: F_P });
        q.op(
            Pipe::Mte2,
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: reg(Loc::Gm(ws_p), add(own(SExpr::Core, per_s), slot(pj, bm * bn)), bn),
                dst: ub(p1, c(0), bn),
                rows: v(rows),
                cols: v(pcl),
            },
        );
        q.op(
            Pipe::Mte1,
            Stmt::Copy { pipe: Pipe::Mte1, src: ub(p1, c(0), bn), dst: ub(p0, c(0), bn), rows: v(rows), cols: v(pcl) },
        );
        load_operand(
            q,
            &p.vop,
            v(vbase),
            (v(pj0), c(0)),
            (v(pcl), c(dv)),
            v1,
            if p.vop.transposed { bn } else { dv },
            v0,
            dv,
            jj,
        );
        let mm = |accumulate| Stmt::Mmad {
            a: ub(p0, c(0), bn),
            b: ub(v0, c(0), dv),
            c: ub(oc, c(0), dv),
            m: v(rows),
            k: v(pcl),
            n: c(dv),
            accumulate,
        };
        if online {
            q.op(Pipe::M, mm(false));
            q.op(
                Pipe::Fix,
                Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: ub(oc, c(0), dv),
                    dst: reg(Loc::Gm(ws_o), add(own(SExpr::Core, per_o), slot(pj, bm * dv)), dv),
                    rows: v(rows),
                    cols: c(dv),
                },
            );
            q.s(Stmt::CrossSet { flag: F_O });
        } else {
            q.on(Pipe::M);
            q.if_(bin(SBin::Eq, v(pj), c(0)), |q| q.op(Pipe::M, mm(false)));
            q.if_(lt(c(0), v(pj)), |q| q.op(Pipe::M, mm(true)));
        }
    };
    let mut cq = Seq::new(Pipe::Mte2);
    let bases = (
        operand_base(&p.a, bi, &p.batch_dims, bd)?,
        operand_base(&p.b, bi, &p.batch_dims, bd)?,
        operand_base(&p.vop, bi, &p.batch_dims, bd)?,
    );
    cq.for_(task, SExpr::Core, c(tasks), cubes, |q| {
        coords(q);
        q.s(Stmt::Set { var: abase, value: bases.0.clone() });
        q.s(Stmt::Set { var: bbase, value: bases.1.clone() });
        q.s(Stmt::Set { var: vbase, value: bases.2.clone() });
        load_operand(
            q,
            &p.a,
            v(abase),
            (v(i0), c(0)),
            (v(rows), c(d)),
            a1,
            if p.a.transposed { bm } else { d },
            a0,
            d,
            jj,
        );
        stage_s(q, c(0));
        q.for_(jb, c(0), v(nj), 1, |q| {
            q.if_(lt(add(v(jb), c(1)), v(nj)), |q| stage_s(q, add(v(jb), c(1))));
            stage_pv(q, v(jb));
        });
        if !online {
            q.op(
                Pipe::Fix,
                Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: ub(oc, c(0), dv),
                    dst: reg(Loc::Gm(ws_o), own(SExpr::Core, per_o), dv),
                    rows: v(rows),
                    cols: c(dv),
                },
            );
            q.s(Stmt::CrossSet { flag: F_O });
        }
    });
    cq.on(Pipe::Mte2);
    lb.launch.cube = cq.stmts;

    // ---- The vector program.
    let tile = sh(hr, bn);
    let raw = lb.buffer("raw_ub", Mem::UB, DType::F32, tile.clone(), 1);
    let mut tiles: BTreeMap<ValueId, (BufId, i64)> = BTreeMap::new();
    for &z in &p.tiles {
        let b = lb.buffer(format!("{}_ub", label(z)), Mem::UB, g.node(z).dtype, tile.clone(), 1);
        tiles.insert(z, (b, bn));
    }
    let mut zext_ids = Vec::new();
    for &x in &p.zext {
        let b = lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, tile.clone(), 1);
        tiles.insert(x, (b, bn));
        zext_ids.push((b, *gm.of.get(&x)?));
    }
    let e_ub = p.online.map(|_| lb.buffer("e_ub", Mem::UB, DType::F32, tile.clone(), 1));
    let has_l = p.stats.iter().any(|(_, s)| matches!(s, Stat::SumExp { .. }));
    let e_ub = match (e_ub, has_l) {
        (Some(e), _) => Some(e),
        (None, true) => Some(lb.buffer("e_ub", Mem::UB, DType::F32, tile.clone(), 1)),
        _ => None,
    };
    let p_ub = lb.buffer("p_ub", Mem::UB, p.vop.dtype, tile.clone(), 1);
    let mut rowb: BTreeMap<ValueId, BufId> = BTreeMap::new();
    for (x, _) in &p.stats {
        rowb.insert(*x, lb.buffer(format!("{}_ub", label(*x)), Mem::UB, g.node(*x).dtype, sh(hr, 1), 1));
    }
    let lstat = p.stats.iter().find_map(|(x, s)| match s {
        Stat::SumExp { z, x: sh } => Some((*x, *z, *sh)),
        _ => None,
    });
    let x_old = lb.buffer("x_old_ub", Mem::UB, DType::F32, sh(hr, 1), 1);
    let alpha = lb.buffer("alpha_ub", Mem::UB, DType::F32, sh(2 * hr, 1), 1);
    let mut scal: BTreeMap<ValueId, BufId> = BTreeMap::new();
    for &x in &p.scalars {
        scal.insert(x, lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, vec![8], 1));
    }
    let pv_ub = lb.buffer("pv_ub", Mem::UB, DType::F32, sh(hr, dv), 1);
    let oacc = p.online.map(|_| lb.buffer("oacc_ub", Mem::UB, DType::F32, sh(hr, dv), 1));
    let mut otiles: BTreeMap<ValueId, (BufId, i64)> = BTreeMap::new();
    for &x in std::iter::once(&p.consumer).chain(&p.epilogue).chain(&p.ext_tiles) {
        let b = lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, sh(hr, dv), 1);
        otiles.insert(x, (b, dv));
    }

    let r0 = lb.svar("r0");
    let rc = lb.svar("rc");
    let vj = lb.svar("vj");
    let vj0 = lb.svar("vj0");
    let vcl = lb.svar("vcl");
    let uj = lb.svar("uj");
    let uj0 = lb.svar("uj0");
    let ucl = lb.svar("ucl");
    let mine = bin(SBin::Div, SExpr::Core, c(ratio));
    let subc = bin(SBin::Mod, SExpr::Core, c(ratio));
    let row0 = add(v(i0), v(r0));
    let empty = BTreeMap::new();
    let cx_tile = |j0: SVar| Cx {
        nb,
        batch_dims: &p.batch_dims,
        bi,
        row0: row0.clone(),
        col0: Some(v(j0)),
        tiles: &tiles,
        rows: &rowb,
        scalars: &scal,
        reduce: Some((raw, bn)),
        bd,
    };
    let cx_row = Cx {
        nb,
        batch_dims: &p.batch_dims,
        bi,
        row0: row0.clone(),
        col0: None,
        tiles: &empty,
        rows: &rowb,
        scalars: &scal,
        reduce: None,
        bd,
    };
    let cx_out = Cx {
        nb,
        batch_dims: &p.batch_dims,
        bi,
        row0: row0.clone(),
        col0: Some(c(0)),
        tiles: &otiles,
        rows: &rowb,
        scalars: &scal,
        reduce: None,
        bd,
    };
    let body_of = |x: ValueId| match &g.node(x).kind {
        NodeKind::Compute { body, .. } => Some(body),
        _ => None,
    };
    let vec_st = |dst: Region, cols: SExpr, expr: VExpr| Stmt::Vector { dst, rows: v(rc), cols, expr };
    let rr = |b: BufId| Box::new(VExpr::ReadRow(ub(b, c(0), 1)));
    // The shift statistic x (recomputed after every block) and the statistics it depends on.
    let shift = lstat.map(|(_, _, x)| x);
    let loop_elems: Vec<ValueId> =
        p.stats.iter().filter(|(x, s)| *s == Stat::Elem && max_only(g, *x, &p.stats)).map(|(x, _)| *x).collect();

    // Builds every vector statement up front (a failure is `None`).
    let mut elem_loop = Vec::new();
    for &x in &loop_elems {
        elem_loop.push((rowb[&x], vexpr(body_of(x)?, &cx_row)?));
    }
    let mut elem_all = Vec::new();
    for (x, st) in &p.stats {
        if *st == Stat::Elem {
            elem_all.push((rowb[x], vexpr(body_of(*x)?, &cx_row)?));
        }
    }
    let tile_exprs = |j0: SVar| -> Option<Vec<(BufId, VExpr)>> {
        let cx = cx_tile(j0);
        p.tiles.iter().map(|z| Some((tiles[z].0, vexpr(body_of(*z)?, &cx)?))).collect()
    };
    let Some(tile_e) = tile_exprs(vj0) else { bail!() };
    let mut epi = Vec::new();
    for &x in &p.epilogue {
        epi.push((otiles[&x].0, vexpr(body_of(x)?, &cx_out)?));
    }

    let mut vq = Seq::new(Pipe::Mte2);
    for (x, b) in &scal {
        vq.op(
            Pipe::Mte2,
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: reg(Loc::Gm(*gm.of.get(x)?), c(0), 0),
                dst: ub(*b, c(0), 0),
                rows: c(1),
                cols: c(1),
            },
        );
    }
    let softmax = |q: &mut Seq, j: SExpr| {
        set_j(q, vj, vj0, vcl, j);
        q.s(Stmt::CrossWait { flag: F_S });
        q.if_(lt(c(0), v(rc)), |q| {
            q.op(
                Pipe::Mte2,
                Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: reg(
                        Loc::Gm(ws_s),
                        add(add(own(mine.clone(), per_s), slot(vj, bm * bn)), mul(v(r0), c(bn))),
                        bn,
                    ),
                    dst: ub(raw, c(0), bn),
                    rows: v(rc),
                    cols: v(vcl),
                },
            );
            for (b, tz) in &zext_ids {
                q.op(
                    Pipe::Mte2,
                    Stmt::Copy {
                        pipe: Pipe::Mte2,
                        src: reg(Loc::Gm(*tz), add(mul(v(bi), c(s * t)), add(mul(row0.clone(), c(t)), v(vj0))), t),
                        dst: ub(*b, c(0), bn),
                        rows: v(rc),
                        cols: v(vcl),
                    },
                );
            }
            for (b, e) in &tile_e {
                q.op(Pipe::V, vec_st(ub(*b, c(0), bn), v(vcl), e.clone()));
            }
            if let Some(xs) = shift {
                q.op(Pipe::V, vec_st(ub(x_old, c(0), 1), c(1), VExpr::ReadRow(ub(rowb[&xs], c(0), 1))));
            }
            for (x, st) in &p.stats {
                if let Stat::Max(z) = st {
                    q.op(
                        Pipe::V,
                        Stmt::Reduce {
                            op: ReduceOp::Max,
                            axis: 1,
                            src: ub(tiles[z].0, c(0), bn),
                            dst: ub(rowb[x], c(0), 1),
                            rows: v(rc),
                            cols: v(vcl),
                            accumulate: true,
                        },
                    );
                }
            }
            for (b, e) in &elem_loop {
                q.op(Pipe::V, vec_st(ub(*b, c(0), 1), c(1), e.clone()));
            }
            if let (Some((l, z, xs)), Some(e_ub)) = (lstat, e_ub) {
                let aslot = mul(bin(SBin::Mod, v(vj), c(2)), c(hr));
                // alpha = l > 0 ? exp(x_old - x) : 0 (nothing accumulated yet: l and O are 0).
                let a = VExpr::Select(
                    Box::new(VExpr::Binary(BinOp::Gt, rr(rowb[&l]), Box::new(VExpr::F32(0.0)))),
                    Box::new(VExpr::Unary(UnOp::Exp, Box::new(VExpr::Binary(BinOp::Sub, rr(x_old), rr(rowb[&xs]))))),
                    Box::new(VExpr::F32(0.0)),
                );
                q.op(Pipe::V, vec_st(ub(alpha, aslot.clone(), 1), c(1), a));
                let e = VExpr::Unary(
                    UnOp::Exp,
                    Box::new(VExpr::Binary(
                        BinOp::Sub,
                        Box::new(VExpr::Read(ub(tiles[&z].0, c(0), bn))),
                        rr(rowb[&xs]),
                    )),
                );
                q.op(Pipe::V, vec_st(ub(e_ub, c(0), bn), v(vcl), e));
                q.op(
                    Pipe::V,
                    vec_st(
                        ub(rowb[&l], c(0), 1),
                        c(1),
                        VExpr::Binary(BinOp::Mul, rr(rowb[&l]), Box::new(VExpr::ReadRow(ub(alpha, aslot, 1)))),
                    ),
                );
                q.op(
                    Pipe::V,
                    Stmt::Reduce {
                        op: ReduceOp::Sum,
                        axis: 1,
                        src: ub(e_ub, c(0), bn),
                        dst: ub(rowb[&l], c(0), 1),
                        rows: v(rc),
                        cols: v(vcl),
                        accumulate: true,
                    },
                );
            }
            let src = match (online, e_ub) {
                (true, Some(e)) => e,
                _ => tiles[&p.pz].0,
            };
            q.op(Pipe::V, vec_st(ub(p_ub, c(0), bn), v(vcl), VExpr::Read(ub(src, c(0), bn))));
            q.op(
                Pipe::Mte3,
                Stmt::Copy {
                    pipe: Pipe::Mte3,
                    src: ub(p_ub, c(0), bn),
                    dst: reg(
                        Loc::Gm(ws_p),
                        add(add(own(mine.clone(), per_s), slot(vj, bm * bn)), mul(v(r0), c(bn))),
                        bn,
                    ),
                    rows: v(rc),
                    cols: v(vcl),
                },
            );
        });
        q.s(Stmt::CrossSet { flag: F_P });
    };
    let fetch_pv = |q: &mut Seq, off: SExpr| {
        q.s(Stmt::CrossWait { flag: F_O });
        q.if_(lt(c(0), v(rc)), |q| {
            q.op(
                Pipe::Mte2,
                Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: reg(Loc::Gm(ws_o), add(add(own(mine.clone(), per_o), off), mul(v(r0), c(dv))), dv),
                    dst: ub(pv_ub, c(0), dv),
                    rows: v(rc),
                    cols: c(dv),
                },
            );
        });
    };
    let update = |q: &mut Seq, j: SExpr| {
        set_j(q, uj, uj0, ucl, j);
        fetch_pv(q, slot(uj, bm * dv));
        if let Some(o) = oacc {
            let aslot = mul(bin(SBin::Mod, v(uj), c(2)), c(hr));
            q.if_(lt(c(0), v(rc)), |q| {
                let e = VExpr::Binary(
                    BinOp::Add,
                    Box::new(VExpr::Binary(
                        BinOp::Mul,
                        Box::new(VExpr::Read(ub(o, c(0), dv))),
                        Box::new(VExpr::ReadRow(ub(alpha, aslot, 1))),
                    )),
                    Box::new(VExpr::Read(ub(pv_ub, c(0), dv))),
                );
                q.op(Pipe::V, vec_st(ub(o, c(0), dv), c(dv), e));
            });
        }
    };
    // A consumer-shaped tile's offset in GM.
    let tile_off = || add(mul(v(bi), c(s * dv)), mul(row0.clone(), c(dv)));
    let ext_ids: Vec<(BufId, TensorId)> =
        p.ext_tiles.iter().map(|x| gm.of.get(x).map(|t| (otiles[x].0, *t))).collect::<Option<_>>()?;
    let stored: Vec<(ValueId, TensorId)> =
        group.stored.iter().map(|x| gm.of.get(x).map(|t| (*x, *t))).collect::<Option<_>>()?;
    vq.for_(task, mine.clone(), c(tasks), cubes, |q| {
        coords(q);
        q.s(Stmt::Set { var: r0, value: mul(subc.clone(), c(hr)) });
        q.s(Stmt::Set { var: rc, value: min(c(hr), sub(v(rows), v(r0))) });
        q.if_(lt(c(0), v(rc)), |q| {
            for (x, st) in &p.stats {
                let init = match st {
                    Stat::Max(_) => VExpr::F32(f32::NEG_INFINITY),
                    Stat::SumExp { .. } => VExpr::F32(0.0),
                    Stat::Elem => continue,
                };
                q.op(Pipe::V, vec_st(ub(rowb[x], c(0), 1), c(1), init));
            }
            for (b, e) in &elem_loop {
                q.op(Pipe::V, vec_st(ub(*b, c(0), 1), c(1), e.clone()));
            }
            if let Some(o) = oacc {
                q.op(Pipe::V, vec_st(ub(o, c(0), dv), c(dv), VExpr::F32(0.0)));
            }
        });
        softmax(q, c(0));
        q.for_(jb, c(0), v(nj), 1, |q| {
            q.if_(lt(add(v(jb), c(1)), v(nj)), |q| softmax(q, add(v(jb), c(1))));
            if online {
                update(q, v(jb));
            }
        });
        if !online {
            fetch_pv(q, c(0));
        }
        q.if_(lt(c(0), v(rc)), |q| {
            // The consumer's value, then the epilogue and the final statistics.
            let (cb, _) = otiles[&p.consumer];
            let cons = match (p.online, oacc) {
                (Some((l, _)), Some(o)) => {
                    VExpr::Binary(BinOp::Div, Box::new(VExpr::Read(ub(o, c(0), dv))), rr(rowb[&l]))
                }
                _ => VExpr::Read(ub(pv_ub, c(0), dv)),
            };
            q.op(Pipe::V, vec_st(ub(cb, c(0), dv), c(dv), cons));
            for (b, t) in &ext_ids {
                q.op(
                    Pipe::Mte2,
                    Stmt::Copy {
                        pipe: Pipe::Mte2,
                        src: reg(Loc::Gm(*t), tile_off(), dv),
                        dst: ub(*b, c(0), dv),
                        rows: v(rc),
                        cols: c(dv),
                    },
                );
            }
            for (b, e) in &epi {
                q.op(Pipe::V, vec_st(ub(*b, c(0), dv), c(dv), e.clone()));
            }
            for (b, e) in &elem_all {
                q.op(Pipe::V, vec_st(ub(*b, c(0), 1), c(1), e.clone()));
            }
            for (x, tt) in &stored {
                if let Some((b, _)) = otiles.get(x) {
                    q.op(
                        Pipe::Mte3,
                        Stmt::Copy {
                            pipe: Pipe::Mte3,
                            src: ub(*b, c(0), dv),
                            dst: reg(Loc::Gm(*tt), tile_off(), dv),
                            rows: v(rc),
                            cols: c(dv),
                        },
                    );
                } else if let Some(b) = rowb.get(x) {
                    q.op(
                        Pipe::Mte3,
                        Stmt::Copy {
                            pipe: Pipe::Mte3,
                            src: ub(*b, c(0), 1),
                            dst: reg(Loc::Gm(*tt), add(mul(v(bi), c(s)), row0.clone()), 1),
                            rows: v(rc),
                            cols: c(1),
                        },
                    );
                }
            }
        });
    });
    vq.on(Pipe::Mte2);
    lb.launch.vector = vq.stmts;
    Some(lb.finish("block sizes chosen by the score tiler").map(|l| Tiled {
        launches: vec![l],
        workspaces,
        tuning: Vec::new(),
    }))
}
