//! Backward score groups (attention backward, FlashAttention-2 style, without atomics): the `[B, H, S, T]`
//! score tiles are recomputed on the cube from the row operands (`q`, `dout`: `[B, H, S, D]`) and the column
//! operands (`k`, `v`: `[B, G, T, D]`, head `h / R` with `R = H / G`), never stored in global memory.
//!
//! What qualifies (checked on the structure of the group, never on names): a `GroupKind::Score` group over
//! `[B, H, S, T]` whose members are
//! - *score members* `m[b, h, i, j]`: elementwise bodies over the tile whose only reductions are score
//!   contractions `sum[d](A[b, h, i, d] · B[b, h / R, j, d])` (A a row operand, B a column operand), and whose
//!   loads are other score members at `[b, h, i, j]`, row vectors `x[b, h, i]` (`lse`, `delta`) and scalars;
//!   none of them is stored (e.g. `p` recomputed from `lse` with its mask, `dp`, `ds`);
//! - *outputs*, each `[scalar ·] sum(m · X)` for a score member `m`: a *column-side* output contracts over
//!   the score's row axis `i` (and the `R` heads of a kv group): `out[b, g, j, d] = Σ_{r, i} m[b, gR + r, i,
//!   j] · X[b, gR + r, i, d]` (dk, dv); a *row-side* output contracts over `j`: `out[b, h, i, d] = Σ_j m[b,
//!   h, i, j] · X[b, h / R, j, d]` (dq).
//!
//! At least one column-side output is required (so the forward attention's group, whose output contracts
//! over `j` only and whose `lse` is a reduction member, is left to the forward template). If the first score
//! member is `where(j <= i + off, e, 0)` for a constant `off` (checked by evaluating the condition) and every
//! member the outputs read is that member or a product with it, fully masked blocks are skipped, and a
//! vector core computes that member as `e` alone (no mask) on the blocks whose every row of its band sees
//! every column — all but the diagonal ones (on the host, `exp(k·s − lse)` is then one row routine call
//! per row instead of the routine and a 4-lane select).
//!
//! Two launches (one per side that has outputs), each a mixed launch with `ratio` vector cores per cube
//! core. The column launch deals the `(b, g, j-block)` units to the cube cores round-robin and runs, per unit,
//! every head `r` of the group and every `i`-block with unmasked entries; the row launch deals `(b, h,
//! i-block)` units and runs every `j`-block with unmasked entries. On a target with `contiguous_chunks`
//! (the host) each core takes a contiguous run of units instead — one head's i-blocks, one group's j-blocks
//! (taken from both ends in turn when causal, so that runs do equal work) — so that consecutive units read
//! the same `k`/`v` (row side) or `q`/`dout` (column side) windows, which the host's matrix routine then
//! finds packed. Blocks are `blk × blk` (the target's
//! `score_bwd_block`: 64 by default, 128 on the host; smaller when `D` is large), partial at the edges; `D` is padded to 16 in the on-chip buffers only.
//!
//! ```text
//! cube core, per unit:                               vector core (rows r0..r0+rc of the block), per step:
//!   wait MTE1->MTE2; load the unit's operands -> L1     cross_wait 0
//!   set MTE1->MTE2;  wait FIX->M #1 (accumulators free) if rc > 0:
//!   per step:                                             wait V->MTE2; ws_f tiles, row vectors -> UB
//!     wait MTE1->MTE2; load the step's operands -> L1     set/wait MTE2->V; wait MTE3->V
//!     set/wait MTE2->MTE1; wait FIX->M #0                 V: score members (f32, as the graph), feeds
//!     per score contraction: wait M->MTE1; L1->L0A/L0B       (bf16: scalar · member)
//!       (K^T column by column); set/wait MTE1->M;         set V->MTE2; set/wait V->MTE3
//!       mmad -> L0C tile; set M->MTE1                     MTE3: feeds -> ws_b; set MTE3->V
//!     set/wait M->FIX; FIX: L0C tiles -> ws_f           cross_set 1
//!     set FIX->M #0; cross_set 0; cross_wait 1
//!     MTE2: feeds ws_b -> L1; set/wait MTE2->MTE1
//!     per output: wait M->MTE1; L1->L0A (feed^T on the column side), X -> L0B;
//!       set/wait MTE1->M; mmad (+)-> accumulator in L0C; set M->MTE1
//!     set MTE1->MTE2
//!   set/wait M->FIX #1; FIX: accumulators -> outputs (bf16); set FIX->M #1
//! ```
//! The workspaces are rings of one area per cube core (`ws_f`: the f32 score tiles, `ws_b`: the bf16
//! feeds), sized by the block, not by `S` or `T`: the cube's cross flag 0 hands an area to its vector cores
//! and their cross flag 1 (the cube waits for all of them) hands it back, so the next step's writes come
//! after the previous step's reads. Vector cores without rows in a block still wait and set, to keep counts.
//!
//! Precision: the score members are computed in f32 exactly as the graph says; the cube needs bf16 operands,
//! so the feeds (`p`, `scale · ds`) are rounded to bf16 before the output contractions (the graph keeps them
//! f32): a relative change of at most 2^-9 per product, below the bf16 rounding of the outputs themselves. A
//! scalar factor of an output is folded into its feed (`scale · ds`) before that rounding.
//!
//! Not handled: several score contractions with different `D`, outputs with another epilogue than a
//! scalar factor, score members read at shifted indices, `D` so large that even 16-wide blocks overflow L0C.

use super::{add, bin, c, contiguous_item, div, min, mul, sub, v, GmPlan, LaunchBuilder, Tiled};
use crate::diag::Diagnostic;
use crate::dtype::DType;
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// A score contraction `sum[d](A[b, h, i, d] · B[b, h / R, j, d])`.
#[derive(Clone, Debug, PartialEq)]
struct ScoreMm {
    a: TensorId,
    b: TensorId,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    /// Contracts over `j`: `[B, H, S, D]`, accumulated per `i`-block.
    Row,
    /// Contracts over `i` (and the heads of a kv group): `[B, G, T, D]`, accumulated per `j`-block.
    Col,
}

#[derive(Clone, Debug)]
struct Output {
    side: Side,
    /// The index of the feed (member, scalar factor) it multiplies.
    feed: usize,
    /// The other factor: a row operand (column side) or a column operand (row side).
    x: TensorId,
    out: TensorId,
}

struct Plan {
    bsz: i64,
    h: i64,
    g: i64,
    s: i64,
    t: i64,
    d: i64,
    /// Score members in graph order.
    members: Vec<ValueId>,
    mms: Vec<ScoreMm>,
    /// (score member, scalar factor) tiles handed to the cube in bf16.
    feeds: Vec<(ValueId, Option<ValueId>)>,
    outputs: Vec<Output>,
    /// Row vectors `[B, H, S]` and scalars the members read.
    rowvecs: Vec<ValueId>,
    scalars: Vec<ValueId>,
    /// `Some(off)`: entries with `j > i + off` contribute nothing, blocks of them are skipped.
    causal: Option<i64>,
}

/// Evaluates an index expression (integer arithmetic on the node's variables and dims).
fn eval(e: &Expr, env: &[i64], b: &Binding) -> Option<i64> {
    Some(match &e.kind {
        ExprKind::Var(x) => *env.get(x.index())?,
        ExprKind::Dim(d) => b.eval(d).ok()?,
        ExprKind::Const(Const::I32(x)) => *x,
        ExprKind::Const(Const::Bool(x)) => *x as i64,
        ExprKind::Binary(op, x, y) => {
            let (x, y) = (eval(x, env, b)?, eval(y, env, b)?);
            match op {
                BinOp::Add => x.checked_add(y)?,
                BinOp::Sub => x.checked_sub(y)?,
                BinOp::Mul => x.checked_mul(y)?,
                BinOp::Div if y != 0 => x.div_euclid(y) - if y < 0 && x.rem_euclid(y) != 0 { 1 } else { 0 },
                BinOp::Mod if y != 0 => x - y * (x as f64 / y as f64).floor() as i64,
                BinOp::Le => (x <= y) as i64,
                BinOp::Lt => (x < y) as i64,
                BinOp::Ge => (x >= y) as i64,
                BinOp::Gt => (x > y) as i64,
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Sample assignments of the node's variables (corners and scattered points).
fn samples(extents: &[i64]) -> Vec<Vec<i64>> {
    let mut out = vec![vec![0; extents.len()], extents.iter().map(|e| e - 1).collect()];
    for t in 1..10i64 {
        out.push(extents.iter().enumerate().map(|(k, e)| (t * (7 + 3 * k as i64) + t * t) % e).collect());
    }
    out
}

/// Whether `idx` evaluates to `want(env)` at every sample.
fn idx_is(idx: &[Expr], envs: &[Vec<i64>], b: &Binding, want: &dyn Fn(&[i64]) -> Vec<i64>) -> bool {
    envs.iter().all(|env| {
        let got: Option<Vec<i64>> = idx.iter().map(|e| eval(e, env, b)).collect();
        got.as_deref() == Some(&want(env)[..])
    })
}

fn extents(g: &Graph, node: ValueId, b: &Binding) -> Option<Vec<i64>> {
    let NodeKind::Compute { vars, .. } = &g.node(node).kind else { return None };
    let ex: Option<Vec<i64>> = vars.iter().map(|x| b.eval(&x.extent).ok()).collect();
    ex.filter(|e| e.iter().all(|&x| x >= 1))
}

fn load(e: &Expr) -> Option<(ValueId, &[Expr])> {
    match &e.kind {
        ExprKind::Load { src, idx } => Some((*src, idx)),
        _ => None,
    }
}

fn shape(g: &Graph, x: ValueId, b: &Binding) -> Option<Vec<i64>> {
    g.node(x).shape.iter().map(|d| b.eval(d).ok()).collect()
}

fn analyze(g: &Graph, group: &Group, gm: &GmPlan, b: &Binding) -> Option<Plan> {
    if group.kind != GroupKind::Score || group.space.len() != 4 || group.parallel != 2 {
        return None;
    }
    let space: Vec<i64> = group.space.iter().map(|d| b.eval(d).ok()).collect::<Option<_>>()?;
    let (bsz, h, s, t) = (space[0], space[1], space[2], space[3]);
    if space.iter().any(|&x| x < 1) {
        return None;
    }
    let mut p = Plan {
        bsz,
        h,
        g: 0,
        s,
        t,
        d: 0,
        members: vec![],
        mms: vec![],
        feeds: vec![],
        outputs: vec![],
        rowvecs: vec![],
        scalars: vec![],
        causal: None,
    };
    let in_group = |x: ValueId| group.nodes.contains(&x);
    // Score members: the group's nodes that are not stored (each shaped like the space); the stored ones are
    // the outputs.
    for &m in &group.nodes {
        if !group.stored.contains(&m) {
            if shape(g, m, b)? != space || g.node(m).rank() != 4 {
                return None;
            }
            p.members.push(m);
        }
    }
    if p.members.is_empty() {
        return None;
    }
    // Score member bodies: record contractions, row vectors, scalars.
    for &m in &p.members.clone() {
        let NodeKind::Compute { vars, body } = &g.node(m).kind else { return None };
        if vars.len() < 4 {
            return None;
        }
        let ex = extents(g, m, b)?;
        let envs = samples(&ex);
        scan_member(g, body, &envs, b, gm, &mut p, &in_group)?;
    }
    if p.mms.is_empty() || p.g == 0 {
        return None;
    }
    let (gg, r) = (p.g, h / p.g);
    // Outputs.
    for &o in &group.nodes {
        if p.members.contains(&o) {
            continue;
        }
        if !group.stored.contains(&o) {
            return None;
        }
        let NodeKind::Compute { body, .. } = &g.node(o).kind else { return None };
        let ex = extents(g, o, b)?;
        let envs = samples(&ex);
        let oshape = shape(g, o, b)?;
        let (scalar, red) = match &body.kind {
            ExprKind::Reduce { .. } => (None, body),
            ExprKind::Binary(BinOp::Mul, x, y) => {
                let (sc, red) = if matches!(y.kind, ExprKind::Reduce { .. }) { (x, y) } else { (y, x) };
                let (src, idx) = load(sc)?;
                if !idx.is_empty() || !g.node(src).shape.is_empty() || in_group(src) {
                    return None;
                }
                (Some(src), &**red)
            }
            _ => return None,
        };
        let ExprKind::Reduce { op: ReduceOp::Sum, vars: rvars, body: rb } = &red.kind else { return None };
        let ExprKind::Binary(BinOp::Mul, f1, f2) = &rb.kind else { return None };
        let ((msrc, midx), (xsrc, xidx)) = match (load(f1)?, load(f2)?) {
            (a, bb) if p.members.contains(&a.0) => (a, bb),
            (a, bb) if p.members.contains(&bb.0) => (bb, a),
            _ => return None,
        };
        if in_group(xsrc) || oshape.len() != 4 || oshape[3] != p.d || g.node(xsrc).dtype != DType::BF16 {
            return None;
        }
        let xshape = shape(g, xsrc, b)?;
        // out[b, h, i, d] = Σ_j m[b, h, i, j] · X[b, h / R, j, d]
        let row_side = oshape == vec![bsz, h, s, p.d] && rvars.len() == 1 && xshape == vec![bsz, gg, t, p.d] && {
            let j = rvars[0].index();
            idx_is(midx, &envs, b, &|e| vec![e[0], e[1], e[2], e[j]])
                && idx_is(xidx, &envs, b, &|e| vec![e[0], e[1] / r, e[j], e[3]])
        };
        // out[b, g, j, d] = Σ_{r, i} m[b, gR + r, i, j] · X[b, gR + r, i, d] (the r sum may be absent if R = 1)
        let col_side = !row_side && oshape == vec![bsz, gg, t, p.d] && xshape == vec![bsz, h, s, p.d] && {
            let orders: Vec<(Option<usize>, usize)> = match rvars.len() {
                1 if r == 1 => vec![(None, rvars[0].index())],
                2 => vec![(Some(rvars[0].index()), rvars[1].index()), (Some(rvars[1].index()), rvars[0].index())],
                _ => vec![],
            };
            orders.iter().any(|&(rv, iv)| {
                if rv.is_some_and(|rv| ex[rv] != r) || ex[iv] != s {
                    return false;
                }
                let head = |e: &[i64]| e[1] * r + rv.map_or(0, |k| e[k]);
                idx_is(midx, &envs, b, &|e| vec![e[0], head(e), e[iv], e[2]])
                    && idx_is(xidx, &envs, b, &|e| vec![e[0], head(e), e[iv], e[3]])
            })
        };
        let side = match (row_side, col_side) {
            (true, _) => Side::Row,
            (_, true) => Side::Col,
            _ => return None,
        };
        let x = *gm.of.get(&xsrc)?;
        let out = *gm.of.get(&o)?;
        let key = (msrc, scalar);
        let feed = match p.feeds.iter().position(|f| *f == key) {
            Some(k) => k,
            None => {
                p.feeds.push(key);
                p.feeds.len() - 1
            }
        };
        if let Some(sc) = scalar {
            if !p.scalars.contains(&sc) {
                p.scalars.push(sc);
            }
        }
        p.outputs.push(Output { side, feed, x, out });
    }
    if !p.outputs.iter().any(|o| o.side == Side::Col) {
        return None;
    }
    p.causal = causal(g, &p, b);
    Some(p)
}

/// Walks a score member's body: every reduction must be a score contraction, every load a member, a row
/// vector or a scalar.
fn scan_member(
    g: &Graph,
    e: &Expr,
    envs: &[Vec<i64>],
    b: &Binding,
    gm: &GmPlan,
    p: &mut Plan,
    in_group: &dyn Fn(ValueId) -> bool,
) -> Option<()> {
    match &e.kind {
        ExprKind::Const(_) | ExprKind::Dim(_) => {}
        ExprKind::Var(x) if x.index() < 4 => {}
        ExprKind::Var(_) => return None,
        ExprKind::Load { src, idx } => {
            let sh = shape(g, *src, b)?;
            if p.members.contains(src) {
                if !idx_is(idx, envs, b, &|e| e[..4].to_vec()) {
                    return None;
                }
            } else if in_group(*src) {
                return None;
            } else if sh.is_empty() {
                gm.of.get(src)?;
                if !p.scalars.contains(src) {
                    p.scalars.push(*src);
                }
            } else if sh == vec![p.bsz, p.h, p.s] && idx_is(idx, envs, b, &|e| e[..3].to_vec()) {
                gm.of.get(src)?;
                if !p.rowvecs.contains(src) {
                    p.rowvecs.push(*src);
                }
            } else {
                return None;
            }
        }
        ExprKind::Unary(_, x) | ExprKind::Cast(_, x) => scan_member(g, x, envs, b, gm, p, in_group)?,
        ExprKind::Binary(_, x, y) => {
            scan_member(g, x, envs, b, gm, p, in_group)?;
            scan_member(g, y, envs, b, gm, p, in_group)?;
        }
        ExprKind::Select(x, y, z) => {
            for w in [x, y, z] {
                scan_member(g, w, envs, b, gm, p, in_group)?;
            }
        }
        ExprKind::Reduce { op: ReduceOp::Sum, vars, body } if vars.len() == 1 => {
            let dv = vars[0].index();
            let ExprKind::Binary(BinOp::Mul, f1, f2) = &body.kind else { return None };
            let (l1, l2) = (load(f1)?, load(f2)?);
            // Which factor is the row operand ([b, h, i, d]) and which the column one ([b, h / R, j, d]): the
            // one whose indices say so (both orders are tried: the shapes alone are ambiguous when G = H, S = T).
            let fits = |ra: (ValueId, &[Expr]), rb: (ValueId, &[Expr])| -> Option<(i64, i64)> {
                let (sa, sb) = (shape(g, ra.0, b)?, shape(g, rb.0, b)?);
                if sa.len() != 4 || sb.len() != 4 || in_group(ra.0) || in_group(rb.0) {
                    return None;
                }
                let (d, gg) = (sa[3], sb[1]);
                if sa != vec![p.bsz, p.h, p.s, d] || sb != vec![p.bsz, gg, p.t, d] || gg < 1 || p.h % gg != 0 {
                    return None;
                }
                if (p.d != 0 && p.d != d) || (p.g != 0 && p.g != gg) {
                    return None;
                }
                if g.node(ra.0).dtype != DType::BF16 || g.node(rb.0).dtype != DType::BF16 {
                    return None;
                }
                let r = p.h / gg;
                let ok = idx_is(ra.1, envs, b, &|e| vec![e[0], e[1], e[2], e[dv]])
                    && idx_is(rb.1, envs, b, &|e| vec![e[0], e[1] / r, e[3], e[dv]]);
                ok.then_some((d, gg))
            };
            let ((ra, rb), (d, gg)) = match fits(l1, l2) {
                Some(x) => ((l1, l2), x),
                None => ((l2, l1), fits(l2, l1)?),
            };
            p.d = d;
            p.g = gg;
            let mm = ScoreMm { a: *gm.of.get(&ra.0)?, b: *gm.of.get(&rb.0)? };
            p.mms.push(mm);
        }
        _ => return None,
    }
    Some(())
}

/// The causal offset, if the first member is `where(j <= i + off, e, 0)` and every feed is that member or a
/// product with it (so masked entries feed zeros).
fn causal(g: &Graph, p: &Plan, b: &Binding) -> Option<i64> {
    let m0 = p.members[0];
    let NodeKind::Compute { body, .. } = &g.node(m0).kind else { return None };
    let ExprKind::Select(cond, _, zero) = &body.kind else { return None };
    if !matches!(zero.kind, ExprKind::Const(Const::F32(z)) if z == 0.0) {
        return None;
    }
    let off = p.t - p.s;
    // The condition must be `j <= i + off` wherever evaluated (a grid of rows and columns, and the edge).
    let step_i = (p.s / 40).max(1);
    let step_j = (p.t / 40).max(1);
    let mut is: Vec<i64> = (0..p.s).step_by(step_i as usize).collect();
    is.push(p.s - 1);
    for i in is {
        let mut js: Vec<i64> = (0..p.t).step_by(step_j as usize).collect();
        js.extend([i + off, i + off + 1].into_iter().filter(|&j| j < p.t));
        for j in js {
            if eval(cond, &[0, 0, i, j, 0], b)? != (j <= i + off) as i64 {
                return None;
            }
        }
    }
    for (m, _) in &p.feeds {
        if *m == m0 {
            continue;
        }
        let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
        let ExprKind::Binary(BinOp::Mul, x, y) = &body.kind else { return None };
        if load(x).map(|l| l.0) != Some(m0) && load(y).map(|l| l.0) != Some(m0) {
            return None;
        }
    }
    Some(off)
}

/// The launches for a backward score group, or `None` if the group is not one this template handles.
pub fn score_bwd(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Tiled, Diagnostic>> {
    let p = analyze(g, group, gm, b)?;
    let mut last = None;
    let first = target.score_bwd_block.map_or(64, |x| r16(i64::from(x.max(16))));
    let mut tried = Vec::new();
    for blk in [first, 128, 64, 32, 16] {
        if blk > first || tried.contains(&blk) {
            continue;
        }
        tried.push(blk);
        let blk = blk.min(r16(p.s.max(p.t)));
        match build(g, name, gm, target, b, &p, blk) {
            Ok(t) => return Some(Ok(t)),
            Err(e) => last = Some(e),
        }
    }
    last.map(Err)
}

fn r16(x: i64) -> i64 {
    (x + 15) / 16 * 16
}

fn md(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Mod, a, b)
}

fn rg(loc: Loc, offset: SExpr, row_stride: i64) -> Region {
    Region { loc, offset, row_stride: c(row_stride) }
}

fn bs(buf: BufId) -> Loc {
    Loc::Buf { buf, slot: c(0) }
}

fn set(from: Pipe, to: Pipe, event: u8) -> Stmt {
    Stmt::SetFlag { from, to, event }
}

fn wait(from: Pipe, to: Pipe, event: u8) -> Stmt {
    Stmt::WaitFlag { from, to, event }
}

fn copy(pipe: Pipe, src: Region, dst: Region, rows: SExpr, cols: SExpr) -> Stmt {
    Stmt::Copy { pipe, src, dst, rows, cols }
}

fn build(
    g: &Graph,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
    p: &Plan,
    blk: i64,
) -> Result<Tiled, Diagnostic> {
    let ratio = (target.vector_cores / target.cube_cores.max(1)).max(1) as i64;
    let r = p.h / p.g;
    let (ni, nj) = ((p.s + blk - 1) / blk, (p.t + blk - 1) / blk);
    let units = |side: Side| if side == Side::Col { p.bsz * p.g * nj } else { p.bsz * p.h * ni };
    let sides: Vec<Side> =
        [Side::Col, Side::Row].into_iter().filter(|s| p.outputs.iter().any(|o| o.side == *s)).collect();
    let cubes_of = |side: Side| (target.cube_cores as i64).min(units(side)).max(1);
    let max_cores = sides.iter().map(|s| cubes_of(*s) * (1 + ratio)).max().unwrap_or(1);
    let wsf_elems = p.mms.len() as i64 * blk * blk;
    let wsb_elems = p.feeds.len() as i64 * blk * blk;
    let wsf = TensorId(gm.tensors.len() as u32);
    let wsb = TensorId(gm.tensors.len() as u32 + 1);
    let workspaces = vec![
        GmTensor {
            name: format!("{name}_ws_f"),
            dtype: DType::F32,
            shape: vec![max_cores as u64, wsf_elems as u64],
            role: TensorRole::Workspace { per_core: (wsf_elems * 4) as u64, unit_private: false },
        },
        GmTensor {
            name: format!("{name}_ws_b"),
            dtype: DType::BF16,
            shape: vec![max_cores as u64, wsb_elems as u64],
            role: TensorRole::Workspace { per_core: (wsb_elems * 2) as u64, unit_private: false },
        },
    ];
    let mut launches = Vec::new();
    for side in sides {
        let cubes = cubes_of(side);
        let lname = format!("{name}.{}", if side == Side::Col { "dkv" } else { "dq" });
        let l = build_side(g, &lname, gm, target, bd, p, blk, side, cubes, ratio, r, (ni, nj), (wsf, wsb))?;
        launches.push(l);
    }
    Ok(Tiled { launches, workspaces, tuning: Vec::new() })
}

#[allow(clippy::too_many_arguments)]
fn build_side(
    g: &Graph,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
    p: &Plan,
    blk: i64,
    side: Side,
    cubes: i64,
    ratio: i64,
    r: i64,
    (ni, nj): (i64, i64),
    (wsf, wsb): (TensorId, TensorId),
) -> Result<Launch, Diagnostic> {
    let (s, t, d, h, gg) = (p.s, p.t, p.d, p.h, p.g);
    let dp = r16(d);
    let w = dp.max(blk);
    let hr = (blk + ratio - 1) / ratio;
    let mut lb = LaunchBuilder::new(target, name, Unit::Mixed, cubes as u32, (cubes * ratio) as u32);
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));
    let tname = |t: TensorId| gm.tensors.get(t.0 as usize).map(|x| x.name.clone()).unwrap_or_default();
    let outs: Vec<&Output> = p.outputs.iter().filter(|o| o.side == side).collect();

    // Operands: row ones (indexed by i) and column ones (indexed by j).
    let mut rowops: Vec<TensorId> = Vec::new();
    let mut colops: Vec<TensorId> = Vec::new();
    for mm in &p.mms {
        if !rowops.contains(&mm.a) {
            rowops.push(mm.a);
        }
        if !colops.contains(&mm.b) {
            colops.push(mm.b);
        }
    }
    for o in &outs {
        let list = if side == Side::Col { &mut rowops } else { &mut colops };
        if !list.contains(&o.x) {
            list.push(o.x);
        }
    }
    let l1_bf = |lb: &mut LaunchBuilder, t: TensorId| -> BufId {
        let dt = gm.tensors[t.0 as usize].dtype;
        lb.buffer(format!("{}_l1", tname(t)), Mem::L1, dt, vec![blk as u64, dp as u64], 1)
    };
    let l1_row: BTreeMap<TensorId, BufId> = rowops.iter().map(|&t| (t, l1_bf(&mut lb, t))).collect();
    let l1_col: BTreeMap<TensorId, BufId> = colops.iter().map(|&t| (t, l1_bf(&mut lb, t))).collect();
    let l1_feed: Vec<BufId> = (0..p.feeds.len())
        .map(|k| lb.buffer(format!("feed{k}_l1"), Mem::L1, DType::BF16, vec![blk as u64, blk as u64], 1))
        .collect();
    let a0 = lb.buffer("a_l0a", Mem::L0A, DType::BF16, vec![blk as u64, w as u64], 1);
    let b0 = lb.buffer("b_l0b", Mem::L0B, DType::BF16, vec![blk as u64, w as u64], 1);
    let c_s: Vec<BufId> = (0..p.mms.len())
        .map(|k| lb.buffer(format!("s{k}_l0c"), Mem::L0C, DType::F32, vec![blk as u64, blk as u64], 1))
        .collect();
    let c_acc: Vec<BufId> = outs
        .iter()
        .map(|o| lb.buffer(format!("{}_l0c", tname(o.out)), Mem::L0C, DType::F32, vec![blk as u64, dp as u64], 1))
        .collect();
    // Vector buffers.
    let tile = vec![hr as u64, blk as u64];
    let ub_mm: Vec<BufId> =
        (0..p.mms.len()).map(|k| lb.buffer(format!("s{k}_ub"), Mem::UB, DType::F32, tile.clone(), 1)).collect();
    let ub_mem: BTreeMap<ValueId, BufId> = p
        .members
        .iter()
        .map(|&m| (m, lb.buffer(format!("{}_ub", label(m)), Mem::UB, g.node(m).dtype, tile.clone(), 1)))
        .collect();
    let ub_feed: Vec<BufId> =
        (0..p.feeds.len()).map(|k| lb.buffer(format!("feed{k}_ub"), Mem::UB, DType::BF16, tile.clone(), 1)).collect();
    let ub_row: BTreeMap<ValueId, BufId> = p
        .rowvecs
        .iter()
        .map(|&x| (x, lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, vec![hr as u64, 1], 1)))
        .collect();
    let ub_sc: BTreeMap<ValueId, BufId> = p
        .scalars
        .iter()
        .map(|&x| (x, lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, vec![1], 1)))
        .collect();

    let u = lb.svar("unit");
    let bb = lb.svar("b");
    let hh = lb.svar("h");
    let gv = lb.svar("g");
    let rv = lb.svar("r");
    let i0 = lb.svar("i0");
    let j0 = lb.svar("j0");
    let rows = lb.svar("rows");
    let cols = lb.svar("cols");
    let first = lb.svar("first");
    let x = lb.svar("x");
    let r0 = lb.svar("r0");
    let rc = lb.svar("rc");
    // On a target with `contiguous_chunks` (the host) a core's items are consecutive (`contiguous_item`):
    // the i-blocks of one head (the row side), the j-blocks of one kv group (the column side), whose packed
    // `k`/`v` (or `q`/`dout`) windows the next item finds in the matrix routine's cache instead of packing
    // them again. Elsewhere items are dealt round-robin (the item is the unit).
    let items = units_of(side, p, ni, nj);
    let pos = target.contiguous_chunks.then(|| lb.svar("pos"));
    let item = || v(pos.unwrap_or(u));

    // The unit/step loop nest shared by both programs: `unit_pro`/`unit_epi` around the steps (cube only).
    let nest = |lo: SExpr, unit_pro: Vec<Stmt>, step: Vec<Stmt>, unit_epi: Vec<Stmt>| -> Stmt {
        let mut body = Vec::new();
        if let Some(pos) = pos {
            body.push(Stmt::Set { var: pos, value: contiguous_item(v(u), items, cubes) });
        }
        match side {
            Side::Col => {
                body.push(Stmt::Set { var: bb, value: div(item(), c(gg * nj)) });
                body.push(Stmt::Set { var: gv, value: md(div(item(), c(nj)), c(gg)) });
                // With contiguous items and a causal mask, a group's j-blocks go from both ends in turn (0,
                // nj − 1, 1, nj − 2, …): a j-block's work falls with `j`, and a core's run of them — and the
                // threads', which take every other core — would otherwise be all heavy or all light ones.
                let jb = md(item(), c(nj));
                let jb = match (pos, p.causal) {
                    (Some(_), Some(_)) => {
                        let half = div(jb.clone(), c(2));
                        add(half.clone(), mul(md(jb, c(2)), sub(c(nj - 1), mul(half, c(2)))))
                    }
                    _ => jb,
                };
                body.push(Stmt::Set { var: j0, value: mul(jb, c(blk)) });
                body.push(Stmt::Set { var: cols, value: min(c(blk), sub(c(t), v(j0))) });
                body.extend(unit_pro);
                let mut inner = vec![Stmt::Set { var: rows, value: min(c(blk), sub(c(s), v(i0))) }];
                inner.extend(step);
                // i-blocks with an unmasked entry: the last row reaches column j0 (i + off >= j0).
                let ilo = match p.causal {
                    Some(off) => mul(bin(SBin::Max, c(0), div(sub(v(j0), c(off)), c(blk))), c(blk)),
                    None => c(0),
                };
                let per_head = vec![
                    Stmt::Set { var: hh, value: add(mul(v(gv), c(r)), v(rv)) },
                    Stmt::For { var: i0, lo: ilo, hi: c(s), step: blk, body: inner },
                ];
                body.push(Stmt::For { var: rv, lo: c(0), hi: c(r), step: 1, body: per_head });
            }
            Side::Row => {
                body.push(Stmt::Set { var: bb, value: div(item(), c(h * ni)) });
                body.push(Stmt::Set { var: hh, value: md(div(item(), c(ni)), c(h)) });
                body.push(Stmt::Set { var: gv, value: div(v(hh), c(r)) });
                body.push(Stmt::Set { var: i0, value: mul(md(item(), c(ni)), c(blk)) });
                body.push(Stmt::Set { var: rows, value: min(c(blk), sub(c(s), v(i0))) });
                body.extend(unit_pro);
                let mut inner = vec![Stmt::Set { var: cols, value: min(c(blk), sub(c(t), v(j0))) }];
                inner.extend(step);
                // j-blocks with an unmasked entry: j0 <= last row + off.
                let jhi = match p.causal {
                    Some(off) => min(c(t), add(add(v(i0), v(rows)), c(off))),
                    None => c(t),
                };
                body.push(Stmt::For { var: j0, lo: c(0), hi: jhi, step: blk, body: inner });
            }
        }
        body.extend(unit_epi);
        Stmt::For { var: u, lo, hi: c(items), step: cubes, body }
    };
    let row_off = || -> SExpr { mul(add(mul(add(mul(v(bb), c(h)), v(hh)), c(s)), v(i0)), c(d)) };
    let col_off = || -> SExpr { mul(add(mul(add(mul(v(bb), c(gg)), v(gv)), c(t)), v(j0)), c(d)) };
    let load_row =
        |t_: TensorId| copy(Pipe::Mte2, rg(Loc::Gm(t_), row_off(), d), rg(bs(l1_row[&t_]), c(0), dp), v(rows), c(d));
    let load_col =
        |t_: TensorId| copy(Pipe::Mte2, rg(Loc::Gm(t_), col_off(), d), rg(bs(l1_col[&t_]), c(0), dp), v(cols), c(d));
    let wsf_base = mul(SExpr::Core, c(p.mms.len() as i64 * blk * blk));
    let wsb_base = mul(SExpr::Core, c(p.feeds.len() as i64 * blk * blk));

    // ----- the cube program -----
    let mut unit_pro = vec![wait(Pipe::Mte1, Pipe::Mte2, 0)];
    let mut step = vec![wait(Pipe::Mte1, Pipe::Mte2, 0)];
    for &t_ in &rowops {
        if side == Side::Row {
            unit_pro.push(load_row(t_))
        } else {
            step.push(load_row(t_))
        }
    }
    for &t_ in &colops {
        if side == Side::Col {
            unit_pro.push(load_col(t_))
        } else {
            step.push(load_col(t_))
        }
    }
    unit_pro.push(set(Pipe::Mte1, Pipe::Mte2, 0));
    unit_pro.push(wait(Pipe::Fix, Pipe::M, 1));
    unit_pro.push(Stmt::Set { var: first, value: c(1) });
    step.push(set(Pipe::Mte2, Pipe::Mte1, 0));
    step.push(wait(Pipe::Mte2, Pipe::Mte1, 0));
    step.push(wait(Pipe::Fix, Pipe::M, 0));
    for (k, mm) in p.mms.iter().enumerate() {
        step.push(wait(Pipe::M, Pipe::Mte1, 0));
        step.push(copy(Pipe::Mte1, rg(bs(l1_row[&mm.a]), c(0), dp), rg(bs(a0), c(0), dp), v(rows), c(d)));
        // B^T into L0B (D × cols, row stride blk): column dd of the L1 tile becomes row dd.
        step.push(Stmt::For {
            var: x,
            lo: c(0),
            hi: c(d),
            step: 1,
            body: vec![copy(
                Pipe::Mte1,
                rg(bs(l1_col[&mm.b]), v(x), dp),
                rg(bs(b0), mul(v(x), c(blk)), 1),
                v(cols),
                c(1),
            )],
        });
        step.push(set(Pipe::Mte1, Pipe::M, 0));
        step.push(wait(Pipe::Mte1, Pipe::M, 0));
        step.push(Stmt::Mmad {
            a: rg(bs(a0), c(0), dp),
            b: rg(bs(b0), c(0), blk),
            c: rg(bs(c_s[k]), c(0), blk),
            m: v(rows),
            k: c(d),
            n: v(cols),
            accumulate: false,
        });
        step.push(set(Pipe::M, Pipe::Mte1, 0));
    }
    step.push(set(Pipe::M, Pipe::Fix, 0));
    step.push(wait(Pipe::M, Pipe::Fix, 0));
    for (k, &cs) in c_s.iter().enumerate() {
        step.push(copy(
            Pipe::Fix,
            rg(bs(cs), c(0), blk),
            rg(Loc::Gm(wsf), add(wsf_base.clone(), c(k as i64 * blk * blk)), blk),
            v(rows),
            v(cols),
        ));
    }
    step.push(set(Pipe::Fix, Pipe::M, 0));
    step.push(Stmt::CrossSet { flag: 0 });
    step.push(Stmt::CrossWait { flag: 1 });
    for (k, &fb) in l1_feed.iter().enumerate() {
        step.push(copy(
            Pipe::Mte2,
            rg(Loc::Gm(wsb), add(wsb_base.clone(), c(k as i64 * blk * blk)), blk),
            rg(bs(fb), c(0), blk),
            v(rows),
            v(cols),
        ));
    }
    step.push(set(Pipe::Mte2, Pipe::Mte1, 0));
    step.push(wait(Pipe::Mte2, Pipe::Mte1, 0));
    for (k, o) in outs.iter().enumerate() {
        step.push(wait(Pipe::M, Pipe::Mte1, 0));
        let fb = l1_feed[o.feed];
        let (m_, k_) = match side {
            Side::Col => {
                // feed^T (cols × rows, row stride blk) into L0A: column cc of the feed becomes row cc.
                step.push(Stmt::For {
                    var: x,
                    lo: c(0),
                    hi: v(cols),
                    step: 1,
                    body: vec![copy(
                        Pipe::Mte1,
                        rg(bs(fb), v(x), blk),
                        rg(bs(a0), mul(v(x), c(blk)), 1),
                        v(rows),
                        c(1),
                    )],
                });
                step.push(copy(Pipe::Mte1, rg(bs(l1_row[&o.x]), c(0), dp), rg(bs(b0), c(0), dp), v(rows), c(d)));
                (v(cols), v(rows))
            }
            Side::Row => {
                step.push(copy(Pipe::Mte1, rg(bs(fb), c(0), blk), rg(bs(a0), c(0), blk), v(rows), v(cols)));
                step.push(copy(Pipe::Mte1, rg(bs(l1_col[&o.x]), c(0), dp), rg(bs(b0), c(0), dp), v(cols), c(d)));
                (v(rows), v(cols))
            }
        };
        step.push(set(Pipe::Mte1, Pipe::M, 0));
        step.push(wait(Pipe::Mte1, Pipe::M, 0));
        for acc in [false, true] {
            let mm = Stmt::Mmad {
                a: rg(bs(a0), c(0), blk),
                b: rg(bs(b0), c(0), dp),
                c: rg(bs(c_acc[k]), c(0), dp),
                m: m_.clone(),
                k: k_.clone(),
                n: c(d),
                accumulate: acc,
            };
            let cond = if acc { sub(c(1), v(first)) } else { v(first) };
            step.push(Stmt::If { cond, then: vec![mm] });
        }
        step.push(set(Pipe::M, Pipe::Mte1, 0));
    }
    step.push(Stmt::Set { var: first, value: c(0) });
    step.push(set(Pipe::Mte1, Pipe::Mte2, 0));
    let mut unit_epi = vec![set(Pipe::M, Pipe::Fix, 1), wait(Pipe::M, Pipe::Fix, 1)];
    for (k, o) in outs.iter().enumerate() {
        let (off, n) = match side {
            Side::Col => (col_off(), v(cols)),
            Side::Row => (row_off(), v(rows)),
        };
        // Every unit has at least one step (see the loop bounds), so the accumulator holds this unit's sums.
        unit_epi.push(copy(Pipe::Fix, rg(bs(c_acc[k]), c(0), dp), rg(Loc::Gm(o.out), off, d), n, c(d)));
    }
    unit_epi.push(set(Pipe::Fix, Pipe::M, 1));
    let mut cube = vec![
        set(Pipe::Mte1, Pipe::Mte2, 0),
        set(Pipe::M, Pipe::Mte1, 0),
        set(Pipe::Fix, Pipe::M, 0),
        set(Pipe::Fix, Pipe::M, 1),
    ];
    cube.push(nest(SExpr::Core, unit_pro, step, unit_epi));
    cube.extend([
        wait(Pipe::Mte1, Pipe::Mte2, 0),
        wait(Pipe::M, Pipe::Mte1, 0),
        wait(Pipe::Fix, Pipe::M, 0),
        wait(Pipe::Fix, Pipe::M, 1),
    ]);

    // ----- the vector program -----
    let mine = div(SExpr::Core, c(ratio));
    let mut vec_prog = Vec::new();
    for (&sc, &buf) in &ub_sc {
        let t_ = *gm.of.get(&sc).ok_or_else(|| internal(name, "a scalar has no tensor"))?;
        vec_prog.push(copy(Pipe::Mte2, rg(Loc::Gm(t_), c(0), 0), rg(bs(buf), c(0), 0), c(1), c(1)));
    }
    vec_prog.push(set(Pipe::Mte2, Pipe::V, 1));
    vec_prog.push(wait(Pipe::Mte2, Pipe::V, 1));
    vec_prog.push(set(Pipe::V, Pipe::Mte2, 0));
    vec_prog.push(set(Pipe::Mte3, Pipe::V, 0));
    let vws_f = add(mul(mine.clone(), c(p.mms.len() as i64 * blk * blk)), mul(v(r0), c(blk)));
    let vws_b = add(mul(mine.clone(), c(p.feeds.len() as i64 * blk * blk)), mul(v(r0), c(blk)));
    let mut work = vec![wait(Pipe::V, Pipe::Mte2, 0)];
    for (k, &buf) in ub_mm.iter().enumerate() {
        work.push(copy(
            Pipe::Mte2,
            rg(Loc::Gm(wsf), add(vws_f.clone(), c(k as i64 * blk * blk)), blk),
            rg(bs(buf), c(0), blk),
            v(rc),
            v(cols),
        ));
    }
    let grow = add(v(i0), v(r0));
    for (&x_, &buf) in &ub_row {
        let t_ = *gm.of.get(&x_).ok_or_else(|| internal(name, "a row vector has no tensor"))?;
        let off = add(mul(add(mul(v(bb), c(h)), v(hh)), c(s)), grow.clone());
        work.push(copy(Pipe::Mte2, rg(Loc::Gm(t_), off, 1), rg(bs(buf), c(0), 1), v(rc), c(1)));
    }
    work.push(set(Pipe::Mte2, Pipe::V, 0));
    work.push(wait(Pipe::Mte2, Pipe::V, 0));
    work.push(wait(Pipe::Mte3, Pipe::V, 0));
    let env = Env { bufs: &ub_mem, rows: &ub_row, scalars: &ub_sc, mm: &ub_mm, blk, bb, hh, grow, j0, bd };
    let mut mm_at = 0usize;
    for (at, &m) in p.members.iter().enumerate() {
        let NodeKind::Compute { body, .. } = &g.node(m).kind else { return Err(internal(name, "member")) };
        let expr = vexpr(body, &env, &mut mm_at).ok_or_else(|| internal(name, "a member cannot be lowered"))?;
        let dst = rg(bs(ub_mem[&m]), c(0), blk);
        match (at, p.causal, &expr) {
            // The masked member `where(j <= i + off, e, 0)`: on a block whose every row of this core sees
            // every column (the first row, `grow`, sees the last, `j0 + cols - 1`: all blocks but the
            // diagonal ones) it is `e`, computed without the mask; the diagonal blocks keep it.
            (0, Some(off), VExpr::Select(_, e, _)) => {
                let last = sub(add(v(j0), v(cols)), c(1));
                let seen = add(env.grow.clone(), c(off));
                let plain = Stmt::Vector { dst: dst.clone(), rows: v(rc), cols: v(cols), expr: (**e).clone() };
                work.push(Stmt::If { cond: bin(SBin::Le, last.clone(), seen.clone()), then: vec![plain] });
                let masked = Stmt::Vector { dst, rows: v(rc), cols: v(cols), expr };
                work.push(Stmt::If { cond: bin(SBin::Lt, seen, last), then: vec![masked] });
            }
            _ => work.push(Stmt::Vector { dst, rows: v(rc), cols: v(cols), expr }),
        }
    }
    for (k, (m, sc)) in p.feeds.iter().enumerate() {
        let mut e = VExpr::Read(rg(bs(ub_mem[m]), c(0), blk));
        if let Some(sc) = sc {
            e = VExpr::Binary(BinOp::Mul, Box::new(VExpr::ReadRow(rg(bs(ub_sc[sc]), c(0), 0))), Box::new(e));
        }
        work.push(Stmt::Vector { dst: rg(bs(ub_feed[k]), c(0), blk), rows: v(rc), cols: v(cols), expr: e });
    }
    work.push(set(Pipe::V, Pipe::Mte2, 0));
    work.push(set(Pipe::V, Pipe::Mte3, 0));
    work.push(wait(Pipe::V, Pipe::Mte3, 0));
    for (k, &buf) in ub_feed.iter().enumerate() {
        work.push(copy(
            Pipe::Mte3,
            rg(bs(buf), c(0), blk),
            rg(Loc::Gm(wsb), add(vws_b.clone(), c(k as i64 * blk * blk)), blk),
            v(rc),
            v(cols),
        ));
    }
    work.push(set(Pipe::Mte3, Pipe::V, 0));
    let vstep = vec![
        Stmt::Set { var: r0, value: mul(md(SExpr::Core, c(ratio)), c(hr)) },
        Stmt::Set { var: rc, value: min(c(hr), sub(v(rows), v(r0))) },
        Stmt::CrossWait { flag: 0 },
        Stmt::If { cond: bin(SBin::Lt, c(0), v(rc)), then: work },
        Stmt::CrossSet { flag: 1 },
    ];
    vec_prog.push(nest(mine, vec![], vstep, vec![]));
    vec_prog.push(wait(Pipe::V, Pipe::Mte2, 0));
    vec_prog.push(wait(Pipe::Mte3, Pipe::V, 0));

    lb.launch.cube = cube;
    lb.launch.vector = vec_prog;
    lb.finish("block sizes chosen by the backward score tiler")
}

fn units_of(side: Side, p: &Plan, ni: i64, nj: i64) -> i64 {
    match side {
        Side::Col => p.bsz * p.g * nj,
        Side::Row => p.bsz * p.h * ni,
    }
}

fn internal(name: &str, msg: &str) -> Diagnostic {
    Diagnostic::error(
        crate::diag::Code::Internal,
        crate::span::Span::default(),
        format!("backward score launch `{name}`: {msg}"),
    )
}

/// What a member body's translation needs.
struct Env<'a> {
    bufs: &'a BTreeMap<ValueId, BufId>,
    rows: &'a BTreeMap<ValueId, BufId>,
    scalars: &'a BTreeMap<ValueId, BufId>,
    /// The score contraction tiles, in the order the members' bodies contain them.
    mm: &'a [BufId],
    blk: i64,
    bb: SVar,
    hh: SVar,
    /// The tile's first row (global `i`); its first column is `j0`.
    grow: SExpr,
    j0: SVar,
    bd: &'a Binding,
}

/// A score member's body as a vector expression over the tile (rows `grow..`, columns `j0..`).
fn vexpr(e: &Expr, env: &Env<'_>, mm_at: &mut usize) -> Option<VExpr> {
    let bx = |x: VExpr| Box::new(x);
    Some(match &e.kind {
        ExprKind::Const(Const::F32(x)) => VExpr::F32(*x),
        ExprKind::Const(Const::I32(x)) => VExpr::I32(*x),
        ExprKind::Const(Const::Bool(x)) => VExpr::Bool(*x),
        ExprKind::Var(x) => match x.index() {
            0 => VExpr::Scalar(v(env.bb)),
            1 => VExpr::Scalar(v(env.hh)),
            2 => VExpr::Binary(BinOp::Add, bx(VExpr::Scalar(env.grow.clone())), bx(VExpr::Row)),
            3 => VExpr::Binary(BinOp::Add, bx(VExpr::Scalar(v(env.j0))), bx(VExpr::Col)),
            _ => return None,
        },
        ExprKind::Dim(d) => VExpr::I32(env.bd.eval(d).ok()?),
        ExprKind::Load { src, .. } => {
            if let Some(&buf) = env.bufs.get(src) {
                VExpr::Read(rg(bs(buf), c(0), env.blk))
            } else if let Some(&buf) = env.rows.get(src) {
                VExpr::ReadRow(rg(bs(buf), c(0), 1))
            } else {
                VExpr::ReadRow(rg(bs(*env.scalars.get(src)?), c(0), 0))
            }
        }
        ExprKind::Reduce { .. } => {
            let buf = *env.mm.get(*mm_at)?;
            *mm_at += 1;
            VExpr::Read(rg(bs(buf), c(0), env.blk))
        }
        ExprKind::Unary(op, a) => VExpr::Unary(*op, bx(vexpr(a, env, mm_at)?)),
        ExprKind::Binary(op, a, b) => {
            let a = vexpr(a, env, mm_at)?;
            VExpr::Binary(*op, bx(a), bx(vexpr(b, env, mm_at)?))
        }
        ExprKind::Select(x, a, b) => {
            let x = vexpr(x, env, mm_at)?;
            let a = vexpr(a, env, mm_at)?;
            VExpr::Select(bx(x), bx(a), bx(vexpr(b, env, mm_at)?))
        }
        ExprKind::Cast(t, a) => VExpr::Cast(*t, bx(vexpr(a, env, mm_at)?)),
        ExprKind::Segment { .. } => return None,
    })
}
