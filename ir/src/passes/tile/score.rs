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
//! Blocks: `bm` rows of `i` (≤ 128) by `bc` columns of `j` (≤ 128; a block's two chunks merged into one of
//! up to `score_cube_cols` on the host) per cube tile, the whole `k` (`D`) and
//! the whole `n` (`Dv`) at once, each a multiple of 16 and within L0 (the largest `bm·bc` that fits L0 and
//! UB). A *block* is `bn = nh·bc` columns: `nh = 2` cube tiles where the vector cores' UB holds that width
//! (else 1), so the online statistics, the p·v hand-off and O's rescaling happen once per two cube tiles. A
//! task is one (batch, i-block); the rows of an i-block are split between the `ratio` vector cores of the
//! cube core (`hr = ⌈bm / ratio⌉` each, a *band*). Tasks are dealt to the cube cores round-robin; with the
//! causal mask the longest (last) i-blocks first, in rounds of alternating direction, which balances the
//! cores. A target may deal each core a run of consecutive tasks instead (`score_blocked_tasks`, the host:
//! one batch's i-blocks, with the mask from both ends in turn, so that a run pairs long and short ones).
//! A mask `where(j <= i + e, .., -inf)` with a constant `e ≥ 0` (causal attention, `e = T - S`) limits
//! the blocks of an i-block to those with a visible column, and each block's columns to those its rows see
//! (fully masked blocks are skipped). A cube tile whose first row does not see all its columns (the
//! diagonal) is multiplied and written band by band, each band only as wide as its rows see; the vector
//! unit evaluates the mask only on such blocks (elsewhere the anchor without the `where`). A target may
//! multiply diagonal blocks whole instead (`score_whole_diag`, the host): then a vector core takes the
//! columns the i-block's rows see, masks those its own rows do not (p = 0 there, which the whole p·v mmad
//! reads), and its softmax is one branch for the blocks its rows see whole and one for the diagonal ones,
//! whose mask is one statement over the whole tile (it overwrites the copied scores element for element):
//! no register between the loads and the mmads changes, and the host reads every hand-off in place.
//!
//! The cube computes scores `lead` blocks ahead of its p·v products (3; the target may say otherwise:
//! `score_lead`, 1 on the host). A core's blocks form one stream
//! across its tasks: in the online mode the last iterations of a task compute the next task's first
//! blocks (S on the cube, SOFTMAX on the vector cores: *tasks in flight*), so neither unit waits for the
//! other at a task boundary; `gb` is the stream index of the task's first block, and the rings below turn
//! with the stream (block j of the task in slot `(gb + j) % ring`, ring = lead + 1).
//!
//! Workspaces (GM, per cube core, independent of `S` and `T`), rings of `ring` slots: `ws_s` ring × `bm·bn`
//! f32 (score tiles), `ws_p` ring × `bm·bn` (p, in `v`'s dtype), `ws_o` ring × `bm·Dv` f32 (p·v tiles).
//!
//! ```text
//! (lead = 3)
//! cube core, per task:                          vector core (its band of rows), per task:
//!   q tile GM->L1->L0A   (unless begun)           m = -inf, l = 0 (unless begun), O = 0, x = X(m)
//!   S(0); S(1); S(2)     (those not begun)        SOFTMAX(0); SOFTMAX(1); SOFTMAX(2) (those not begun)
//!   for j in 0..nj:                               for j in 0..nj:
//!     if j+3 < nj: S(j+3)                           if j+3 < nj: SOFTMAX(j+3)
//!     [online] else: the next task's next block     [online] else: the next task's next block
//!       (its q tile first), at most 3 of them         (its statistics started first), at most 3
//!     PV(j)                                         [online] UPDATE(j)
//!   [accumulate] FIX L0C -> ws_o; cross_set #2    [accumulate] cross_wait #2; ws_o -> UB
//!                                                 o = O / l (online) ; epilogue ; stats ; MTE3 -> GM
//! S(j):  per cube tile h of the block: k tile GM->L1[h]->L0B; mmad -> L0C (whole, or band by band);
//!        FIX -> ws_s[slot] (the same); then cross_set #0
//! PV(j): v tiles GM->L1[h]; cross_wait #1; p tiles ws_p[slot]->L1[h]; per h: L1->L0A/L0B, mmad -> L0C
//!        (accumulating over h, and over j in accumulate mode); [online] FIX -> ws_o[slot]; cross_set #2
//! SOFTMAX(j): cross_wait #0; ws_s[slot] -> UB; tile members (the anchor in place); m = max(m, rowmax z);
//!        x_old = x; x = X(m); alpha[slot] = l > 0 ? exp(x_old - x) : 0; l = l·alpha; e = exp(z - x) (in
//!        place of z in online mode); l += rowsum(e); p = e (online) or z (accumulate), cast to v's dtype;
//!        UB -> ws_p[slot]; cross_set #1
//! UPDATE(j): cross_wait #2; ws_o[slot] -> UB; O = O·alpha[slot] + pv (skipped when the band sees no
//!        column of block j: the cube left its rows of the p·v tile stale, and alpha is 1)
//! ```
//! Ring discipline (g: a block's index in the stream): flag #0 (cube → vector) says a score tile is in
//! `ws_s`, #1 (vector → cube, the cube core waits for all its vector cores) says `p` is in `ws_p` *and*
//! hands back the `ws_s` slot it was computed from, #2 (cube → vector) says a `p·v` tile is in `ws_o`. The
//! other slot hand-backs follow from the order of the two programs, whose streams are the same block for
//! block: the cube writes `ws_s` for g+ring (in the iteration after PV(g)) after waiting for p(g); the
//! vector cores write `ws_p` for g+ring only after the cube's set of #0 for it, issued after its read of
//! p(g); the cube writes `ws_o` for g+ring after waiting for p(g+ring), which the vector cores set after
//! UPDATE(g). The lead is at most `lead` everywhere (a task with fewer blocks lends fewer to the next one).
//! With tasks in flight the vector cores keep a task's statistics in a slot of their own (`tpar`, the
//! task's parity on the core), and a task's stores to GM are waited for only by the next task's stores or
//! the look-ahead that starts the statistics of the task after it (the same slot); the q tile in L0A is
//! handed to the next task as soon as the last S of this one was issued. A look-ahead runs the stage with
//! the next task's coordinates in the task registers (`bi`, `i0`, `rows`, ...), saved before and restored
//! after.
//!
//! Within a core the pipes overlap: every on-chip tile has a "full" flag (producer pipe → consumer pipe)
//! and a "free" flag (consumer → producer) per slot, the free flags primed before the task loop and drained
//! after it. On the cube core the k, p and v tiles have two L1 slots (cube tile h of a block in slot h), so
//! MTE2 loads the next tile while MTE1 and the cube work on the current one; L0 holds one tile of each
//! operand (q, k, p, v), which at 128 × 128 fills L0A and L0B. In the online mode the score tiles and the
//! p·v tiles take turns in one ring of two L0C tiles (`cc` counts the tiles taken: the n-th waits for
//! FixPipe to have drained the (n-2)-th), so the cube multiplies into one while FixPipe writes the other;
//! in the accumulate mode O stays in L0C over the whole task, with a tile of S beside it. On a vector core
//! MTE2 loads a p·v tile while the vector unit works on scores;
//! the score tiles (the raw scores, the anchor and e share one) are a ring of two UB slots where UB holds
//! it (with fewer rows per block if need be, down to three quarters), turning once per block the core works
//! on (`zc` counts them across tasks, so the free flag's n-th wait takes the n-th set), so MTE2 brings the
//! next block's scores while the vector unit works on this one; MTE3 writes p while the vector unit goes
//! on. On a diagonal block, the columns every row of the band sees are computed without the mask, which is
//! evaluated only on the rest.
//!
//! The scale folded into the exponent: where the anchor is `k · Σ` (under the causal `where` or not) with
//! `k` an f32 constant or scalar argument, the anchor is its only tile member and its maxima and
//! `exp(z - x)` the only statistics over it (attention), the vector cores do not scale the blocks every row
//! sees: `max_j k·raw = k · max_j raw` (`min_j raw` where k < 0: the scalar unit reads the sign of k from
//! its bits, `kneg`) and `e = exp(k·raw - x)`, one multiply-add before the `exp`: a pass fewer per score
//! element. The maxima are the same values (rounding is monotonic); diagonal blocks are computed as before.
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
/// The factor `k` of an anchor `k · Σ` (or `where(mask, k · Σ, -inf)`, the causal mask) whose scale the
/// vector cores fold into the exponent (see the module comment): online mode, the anchor the only tile
/// member, its maxima and `exp(z - x)` the only statistics over it, and `k` an f32 constant or an f32 scalar
/// argument.
fn scale_factor(g: &Graph, p: &Plan) -> Option<Expr> {
    let anchor = p.tiles[0];
    p.online?;
    let sum_of_anchor = p.stats.iter().any(|(_, s)| matches!(s, Stat::SumExp { z, .. } if *z == anchor));
    let maxima_of_anchor = p.stats.iter().all(|(_, s)| !matches!(s, Stat::Max(z) if *z != anchor));
    if p.tiles.len() != 1 || !p.zext.is_empty() || p.pz != anchor || !sum_of_anchor || !maxima_of_anchor {
        return None;
    }
    let NodeKind::Compute { body, .. } = &g.node(anchor).kind else { return None };
    let val = match (&body.kind, p.causal) {
        (ExprKind::Select(_, val, _), Some(_)) => val,
        (_, Some(_)) => return None,
        (_, None) => body,
    };
    let ExprKind::Binary(BinOp::Mul, a, b) = &val.kind else { return None };
    let k = match (&a.kind, &b.kind) {
        (ExprKind::Reduce { .. }, _) => b,
        (_, ExprKind::Reduce { .. }) => a,
        _ => return None,
    };
    let ok = match &k.kind {
        ExprKind::Const(Const::F32(_)) => true,
        ExprKind::Load { src, .. } => p.scalars.contains(src) && g.node(*src).dtype == DType::F32,
        _ => false,
    };
    ok.then(|| (**k).clone())
}

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
/// `from` signals `to` with event `ev`.
fn setf(from: Pipe, to: Pipe, ev: u8) -> Stmt {
    Stmt::SetFlag { from, to, event: ev }
}

/// `to` waits for `from`'s event `ev`.
fn waitf(from: Pipe, to: Pipe, ev: u8) -> Stmt {
    Stmt::WaitFlag { from, to, event: ev }
}

fn reg(loc: Loc, offset: SExpr, row_stride: i64) -> Region {
    Region { loc, offset, row_stride: c(row_stride) }
}
fn ub(b: BufId, offset: SExpr, row_stride: i64) -> Region {
    reg(Loc::Buf { buf: b, slot: c(0) }, offset, row_stride)
}
/// A window of slot `slot` of buffer `b`.
fn bs(b: BufId, slot: i64, offset: SExpr, row_stride: i64) -> Region {
    reg(Loc::Buf { buf: b, slot: c(slot) }, offset, row_stride)
}

/// The MTE2 copy of a logical operand tile `rows × cols` at `(r0, c0)` into `l1` (as the tile lies in GM:
/// a transposed operand's tile as `cols × rows`).
fn gm_to_l1(op: &Operand, base: SExpr, (r0, c0): (SExpr, SExpr), (rows, cols): (SExpr, SExpr), l1: Region) -> Stmt {
    let ld = *op.shape.last().unwrap_or(&1);
    let (off, rows, cols) = if op.transposed {
        (add(base, add(mul(c0, c(ld)), r0)), cols, rows)
    } else {
        (add(base, add(mul(r0, c(ld)), c0)), rows, cols)
    };
    Stmt::Copy { pipe: Pipe::Mte2, src: reg(Loc::Gm(op.tensor), off, ld), dst: l1, rows, cols }
}

/// The MTE1 move of a logical tile `rows × cols` from slot `slot` of `l1` (row stride `l1_stride`) to `l0`
/// (row stride `ld0`). A transposed operand lies in L1 as `cols × rows`: its L1 row `t` becomes L0 column
/// `t`, one copy per row.
#[allow(clippy::too_many_arguments)]
fn l1_to_l0(
    transposed: bool,
    l1: BufId,
    slot: i64,
    l1_stride: i64,
    l0: BufId,
    ld0: i64,
    (rows, cols): (SExpr, SExpr),
    jj: SVar,
) -> Stmt {
    if !transposed {
        return Stmt::Copy {
            pipe: Pipe::Mte1,
            src: bs(l1, slot, c(0), l1_stride),
            dst: bs(l0, 0, c(0), ld0),
            rows,
            cols,
        };
    }
    Stmt::For {
        var: jj,
        lo: c(0),
        hi: cols,
        step: 1,
        body: vec![Stmt::Copy {
            pipe: Pipe::Mte1,
            src: bs(l1, slot, mul(v(jj), c(l1_stride)), 1),
            dst: bs(l0, 0, v(jj), ld0),
            rows,
            cols: c(1),
        }],
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
    /// Where in the score tiles the statement starts (a column offset: a statement over the right part of a
    /// block reads its tiles from there).
    tile_off: SExpr,
    /// The slot of the score tiles (their UB ring).
    tile_slot: SExpr,
    /// The slot of the statistics' rows (one per task in flight).
    stat_slot: SExpr,
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
                VExpr::Read(reg(Loc::Buf { buf: *b, slot: cx.tile_slot.clone() }, cx.tile_off.clone(), *st))
            } else if let Some(b) = cx.rows.get(src) {
                VExpr::ReadRow(reg(Loc::Buf { buf: *b, slot: cx.stat_slot.clone() }, c(0), 1))
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
            VExpr::Read(reg(Loc::Buf { buf: b, slot: cx.tile_slot.clone() }, cx.tile_off.clone(), st))
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

/// How many blocks ahead the cube computes scores (S(j+lead) before p(j)·v(j)) unless the target says
/// (`score_lead`); the GM rings (scores, p, p·v tiles) and `alpha` hold one block more (block j in slot
/// j % ring).
const LEAD: i64 = 3;

// Flag events of the cube core. MTE2 <-> MTE1 (L1 tiles; `+ slot` for the double-buffered ones):
const EV_A1: u8 = 0;
const EV_B1: u8 = 1;
const EV_P1: u8 = 3;
const EV_V1: u8 = 5;
// MTE1 <-> M (L0A / L0B tiles):
const EV_A0: u8 = 0;
const EV_B0: u8 = 1;
const EV_P0: u8 = 2;
const EV_V0: u8 = 3;
// M <-> FIX (L0C tiles):
const EV_SC: u8 = 0;
const EV_OC: u8 = 1;
// Vector core: MTE2 <-> V (`raw` and the score-shaped GM tiles: 0; `pv`: 1; one-off loads: 2), V <-> MTE3
// (`p`: 0; the task's results: 1).
const EV_RAW: u8 = 0;
const EV_PV: u8 = 1;
const EV_ONCE: u8 = 2;
const EV_PUB: u8 = 0;
const EV_OUT: u8 = 1;

/// The "slot free" flags a program primes before its work and drains after it: `(from, to, event)`, set
/// by the consumer `from` for the producer `to`.
fn prime(flags: &[(Pipe, Pipe, u8)]) -> Vec<Stmt> {
    flags.iter().map(|&(f, t, e)| setf(f, t, e)).collect()
}
fn drain(flags: &[(Pipe, Pipe, u8)]) -> Vec<Stmt> {
    flags.iter().map(|&(f, t, e)| waitf(f, t, e)).collect()
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
    use Pipe::{Fix, Mte1, Mte2, Mte3, M, V};
    let (s, t, d, dv) = (p.s, p.t, p.d, p.dv);
    let esz = p.a.dtype.size_bytes() as i64;
    let vsz = p.vop.dtype.size_bytes() as i64;
    let (d16, dv16) = (r16(d), r16(dv));
    let l0a = target.memory("l0a")?.usable() as i64;
    let l0b = target.memory("l0b")?.usable() as i64;
    let l0c = target.memory("l0c")?.usable() as i64;
    let ubcap = target.memory("ub")?.usable() as i64;
    let ratio = (target.vector_cores / target.cube_cores.max(1)).max(1) as i64;
    let online = p.online.is_some();
    let lead = target.score_lead.map_or(LEAD, |l| i64::from(l.max(1)));
    let ring_n = lead + 1;
    // Online mode: two tasks in flight on a core (the last iterations of a task compute the next task's
    // first blocks), so the statistics have a slot per task.
    let flat = online;
    let has_l = p.stats.iter().any(|(_, s)| matches!(s, Stat::SumExp { .. }));
    // The anchor's scale, folded into the exponent (a row of the maxima of the raw scores more in UB).
    let kfold = scale_factor(g, p);
    let fits = |bm: i64, bc: i64| {
        bm * d16 * esz + bm * bc * vsz <= l0a
            && d16 * bc * esz + bc * dv16 * vsz <= l0b
            && (bm * bc + bm * dv16) * 4 <= l0c
    };
    // UB of a vector core (each buffer rounded up to 32 bytes, all live at once).
    let ub_need_slots = |bm: i64, bn: i64, zs: i64| {
        let hr = (bm + ratio - 1) / ratio;
        let r32 = |b: i64| (b + 31) / 32 * 32;
        let size = |x: ValueId| g.node(x).dtype.size_bytes() as i64;
        // The contraction's tile (`raw`), the anchor's in place, and p; the score tiles in `zs` slots.
        let mut n = zs * r32(hr * bn * 4) + r32(hr * bn * vsz);
        n += zs * p.tiles[1..].iter().chain(&p.zext).map(|x| r32(hr * bn * size(*x))).sum::<i64>();
        if !online && has_l {
            n += zs * r32(hr * bn * 4);
        }
        n += (p.stats.len() as i64 * if flat { 2 } else { 1 } + 1 + i64::from(kfold.is_some())) * r32(hr * 4)
            + r32(ring_n * hr * 4)
            + 32 * p.scalars.len() as i64;
        n += r32(hr * dv * 4) * if online { 2 } else { 1 };
        n += std::iter::once(&p.consumer)
            .chain(&p.epilogue)
            .chain(&p.ext_tiles)
            .map(|x| r32(hr * dv * size(*x)))
            .sum::<i64>();
        n <= ubcap
    };
    let ub_need = |bm: i64, bn: i64| ub_need_slots(bm, bn, 1);
    // The largest cube tile (rows × columns) that fits, preferring more columns.
    let mut best: Option<(i64, i64)> = None;
    for bm in (1..=r16(s).min(128) / 16).rev().map(|k| k * 16) {
        for bc in (1..=r16(t).min(128) / 16).rev().map(|k| k * 16) {
            if fits(bm, bc) && ub_need(bm, bc) && best.is_none_or(|(m, n)| bm * bc > m * n) {
                best = Some((bm, bc));
            }
        }
    }
    let Some((bm, bc)) = best else { bail!() }; // k or the consumer's columns too large for one L0 tile
                                                // The vector cores take two cube tiles' columns at once where UB has room: half the p·v tiles (and
                                                // their rescaling), half the per-block statistics work.
    let nh = if t > bc && ub_need(bm, 2 * bc) { 2 } else { 1 };
    let bn = nh * bc;
    // The score tiles in a ring of two UB slots, so that MTE2 brings block j+1's scores while the vector
    // unit works on block j: where UB holds it at these blocks, or with fewer rows per block (no fewer than
    // three quarters of them: more rows share each k and v tile) when there are several blocks to overlap.
    let (bm, zs) = match (t > bn, ub_need_slots(bm, bn, 2)) {
        (_, true) => (bm, 2),
        (false, false) => (bm, 1),
        (true, false) => match (1..bm / 16)
            .rev()
            .map(|k| k * 16)
            .find(|&m| 4 * m >= 3 * bm && fits(m, bc) && ub_need_slots(m, bn, 2))
        {
            Some(m) => (m, 2),
            None => (bm, 1),
        },
    };
    // A target with wider cube tiles (`score_cube_cols`, the host) makes a block of two chunks one chunk
    // where it fits: the same blocks (rows, columns) for the vector cores, so the same statistics and
    // the same bits, and the cube's `p·v` runs the block's k in one mmad (a chunk's `p·v` accumulating onto
    // the one before computes the same f32 sums, storing and reloading them in between).
    let (bc, nh) = match target.score_cube_cols {
        Some(cols) if nh == 2 && bn <= i64::from(cols) && fits(bm, bn) => (bn, 1),
        _ => (bc, nh),
    };
    let nb = p.nb;
    let nib = (s + bm - 1) / bm;
    let njall = (t + bn - 1) / bn;
    let batches: i64 = p.batch_dims.iter().product();
    let tasks = batches * nib;
    let cubes = (target.cube_cores as i64).min(tasks).max(1);
    let vcores = cubes * ratio;
    let hr = (bm + ratio - 1) / ratio;
    let mut lb = LaunchBuilder::new(target, name, Unit::Mixed, cubes as u32, vcores as u32);
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));

    // Workspaces (tensor ids after the plan's).
    let n0 = gm.tensors.len() as u32;
    let (ws_s, ws_p, ws_o) = (TensorId(n0), TensorId(n0 + 1), TensorId(n0 + 2));
    let (per_s, per_o) = (ring_n * bm * bn, ring_n * bm * dv);
    // With tasks in flight, a core's blocks are one stream across its tasks: `gb` is the stream index of the
    // task's first block, and the rings turn with the stream.
    let gb = flat.then(|| (lb.svar("gb"), lb.svar("gb_s")));
    // The ring slot of block `j` (of the task).
    let ring = |j: SVar, per: i64| {
        let at = match gb {
            Some((g, _)) => add(v(g), v(j)),
            None => v(j),
        };
        mul(bin(SBin::Mod, at, c(ring_n)), c(per))
    };
    let ws = |nm: &str, dt: DType, per: i64| GmTensor {
        name: format!("{name}_{nm}"),
        dtype: dt,
        shape: vec![(cubes + vcores) as u64, per as u64],
        role: TensorRole::Workspace { per_core: (per * dt.size_bytes() as i64) as u64, unit_private: false },
    };
    let workspaces = vec![ws("ws_s", DType::F32, per_s), ws("ws_p", p.vop.dtype, per_s), ws("ws_o", DType::F32, per_o)];

    // Cube buffers: the L1 tiles of k, p and v double-buffered; one tile of each in L0.
    let sh = |r: i64, c: i64| vec![r as u64, c as u64];
    let a1_stride = if p.a.transposed { bm } else { d };
    let b1_stride = if p.b.transposed { d } else { bc };
    let v1_stride = if p.vop.transposed { bc } else { dv };
    let a1 = lb.buffer("a_l1", Mem::L1, p.a.dtype, if p.a.transposed { sh(d, bm) } else { sh(bm, d) }, 1);
    let b1 = lb.buffer("b_l1", Mem::L1, p.b.dtype, if p.b.transposed { sh(bc, d) } else { sh(d, bc) }, 2);
    let p1 = lb.buffer("p_l1", Mem::L1, p.vop.dtype, sh(bm, bc), 2);
    let v1 = lb.buffer("v_l1", Mem::L1, p.vop.dtype, if p.vop.transposed { sh(dv, bc) } else { sh(bc, dv) }, 2);
    let a0 = lb.buffer("a_l0a", Mem::L0A, p.a.dtype, sh(bm, d), 1);
    let p0 = lb.buffer("p_l0a", Mem::L0A, p.vop.dtype, sh(bm, bc), 1);
    let b0 = lb.buffer("b_l0b", Mem::L0B, p.b.dtype, sh(d, bc), 1);
    let v0 = lb.buffer("v_l0b", Mem::L0B, p.vop.dtype, sh(bc, dv), 1);
    // L0C: with tasks in flight (and room for it), one ring of two tiles that the score tiles and the p·v
    // tiles take in turn, so the cube multiplies into one while FixPipe drains the other (`cc` counts the
    // tiles taken, `csl` is the current one's slot); else a tile of each.
    let cw = bc.max(dv16);
    let cring = (flat && 2 * bm * cw * 4 <= l0c).then(|| (lb.svar("cc"), lb.svar("csl")));
    let (sc, oc) = match cring {
        Some(_) => {
            let b = lb.buffer("c_l0c", Mem::L0C, DType::F32, sh(bm, cw), 2);
            (b, b)
        }
        None => (
            lb.buffer("s_l0c", Mem::L0C, DType::F32, sh(bm, bc), 1),
            lb.buffer("o_l0c", Mem::L0C, DType::F32, sh(bm, dv), 1),
        ),
    };
    let l0c_slot = match cring {
        Some((_, csl)) => v(csl),
        None => c(0),
    };
    let lc =
        |b: BufId, offset: SExpr, row_stride: i64| reg(Loc::Buf { buf: b, slot: l0c_slot.clone() }, offset, row_stride);
    // The p·v tile's free and ready flags: the ring's (counted: the n-th use waits for the FIX of use n-2).
    let ev_o = if cring.is_some() { EV_SC } else { EV_OC };
    // Takes the ring's next tile.
    let take_c = || -> Vec<Stmt> {
        match cring {
            Some((cc, csl)) => vec![
                Stmt::Set { var: csl, value: bin(SBin::Mod, v(cc), c(2)) },
                Stmt::Set { var: cc, value: add(v(cc), c(1)) },
            ],
            None => Vec::new(),
        }
    };

    let task = lb.svar("task");
    let tk = lb.svar("tk");
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
    // Each chunk's first column and columns in registers of its own (`hj0`/`hcl` for chunk 0, `hj0_1`/`hcl_1`
    // for chunk 1), set once per stage: the loads of a chunk and its mmads see the same registers unchanged
    // in between, which is what lets the host read v and p where they are (copy forwarding,
    // codegen/src/forward.rs) instead of copying them into L1.
    let hj0s: Vec<SVar> =
        (0..nh).map(|h| lb.svar(if h == 0 { "hj0".to_string() } else { format!("hj0_{h}") })).collect();
    let hcls: Vec<SVar> =
        (0..nh).map(|h| lb.svar(if h == 0 { "hcl".to_string() } else { format!("hcl_{h}") })).collect();
    let hrows = lb.svar("hrows");
    let hcols = lb.svar("hcols");
    let bbase = lb.svar("bbase");
    let vbase = lb.svar("vbase");

    let own = |core: SExpr, per: i64| mul(core, c(per));
    // Tasks: with the causal mask, the i-blocks' work grows with i: the longest first (all batches' last
    // i-blocks, then the ones before), dealt to the cube cores in rounds that alternate direction (core 0
    // first, then core 0 last), so the cores' totals differ by little. Task `k` of round `r`, at position
    // `pos` (the core), is `r * cubes + pos` in even rounds and `r * cubes + cubes - 1 - pos` in odd ones.
    let rounds = (tasks + cubes - 1) / cubes;
    // A target may deal each core consecutive tasks instead (`score_blocked_tasks`, the host): task `k` of
    // round `r` at position `pos` is `pos * rounds + r`, so a core works through one batch's i-blocks (and
    // the batches of one K/V head) in a row, and its calls find the K and V blocks they pack in the host
    // mmad's cache. With the mask the tasks are then batch-major too, a batch's i-blocks from both ends in
    // turn (`nib - 1, 0, nib - 2, 1, ..`): any run of consecutive tasks pairs long i-blocks with short ones,
    // so the cores' runs of equal length do nearly equal work.
    let blocked = target.score_blocked_tasks;
    // Whether the tasks are dealt through `tk` (else the task index is the task).
    let dealt = p.causal.is_some() || blocked;
    // The dealt task of loop index `t` (round `t / cubes`) for the core's first task `start`.
    let deal = |t: SExpr, start: SExpr| -> SExpr {
        let r = bin(SBin::Div, t, c(cubes));
        if blocked {
            return add(mul(start, c(rounds)), r);
        }
        let odd = bin(SBin::Mod, r.clone(), c(2));
        add(add(mul(r, c(cubes)), start.clone()), mul(odd, sub(c(cubes - 1), mul(c(2), start))))
    };
    let task_loop = |start: SExpr, body: Vec<Stmt>| -> Stmt {
        if !dealt {
            return Stmt::For { var: task, lo: start, hi: c(tasks), step: cubes, body };
        }
        let k = deal(v(task), start.clone());
        Stmt::For {
            var: task,
            lo: start,
            hi: c(rounds * cubes),
            step: cubes,
            body: vec![Stmt::Set { var: tk, value: k }, Stmt::If { cond: lt(v(tk), c(tasks)), then: body }],
        }
    };
    // The coordinates of task `t` (with the causal mask: the dealt index `tk`; else the task index) into
    // `bi`, `i0`, `rows` and `njv`.
    let coords_at = |q: &mut Vec<Stmt>, t: SExpr, njv: SVar| {
        if p.causal.is_some() && blocked {
            // Position `q = t % nib` of the batch's zigzag: i-block `nib - 1 - q/2` for even `q`, `q/2` for
            // odd, i.e. `nib - 1 - h + (q % 2)·(2h + 1 - nib)` with `h = q / 2`.
            let q_at = bin(SBin::Mod, t.clone(), c(nib));
            let h = bin(SBin::Div, q_at.clone(), c(2));
            let odd = bin(SBin::Mod, q_at, c(2));
            let blk = add(sub(c(nib - 1), h.clone()), mul(odd, add(mul(c(2), h), c(1 - nib))));
            q.push(Stmt::Set { var: bi, value: bin(SBin::Div, t, c(nib)) });
            q.push(Stmt::Set { var: i0, value: mul(blk, c(bm)) });
        } else if p.causal.is_some() {
            q.push(Stmt::Set { var: bi, value: bin(SBin::Mod, t.clone(), c(batches)) });
            q.push(Stmt::Set { var: i0, value: mul(sub(c(nib - 1), bin(SBin::Div, t, c(batches))), c(bm)) });
        } else {
            q.push(Stmt::Set { var: bi, value: bin(SBin::Div, t.clone(), c(nib)) });
            q.push(Stmt::Set { var: i0, value: mul(bin(SBin::Mod, t, c(nib)), c(bm)) });
        }
        q.push(Stmt::Set { var: rows, value: min(c(bm), sub(c(s), v(i0))) });
        let n = match p.causal {
            // The last visible column of the block's last row is i0 + rows - 1 + e.
            Some(e) => min(c(njall), bin(SBin::Div, add(add(v(i0), v(rows)), c(e + bn - 1)), c(bn))),
            None => c(njall),
        };
        q.push(Stmt::Set { var: njv, value: n });
    };
    let coords = |q: &mut Vec<Stmt>| coords_at(q, v(if dealt { tk } else { task }), nj);
    // Tasks in flight: `ahead` counts the next task's blocks begun in this one (at most two: the stream
    // keeps its lead), `pre` this task's blocks begun in the previous one; `njn` is the next task's blocks.
    let fl = flat.then(|| (lb.svar("ahead"), lb.svar("pre"), lb.svar("tkn"), lb.svar("njn")));
    // Sets `tkn` and gives the condition that this core has a next task (`start`: the core's first task).
    let next_task = |q: &mut Vec<Stmt>, start: SExpr, tkn: SVar| -> SExpr {
        let nxt = add(v(task), c(cubes));
        if !dealt {
            q.push(Stmt::Set { var: tkn, value: nxt.clone() });
            return lt(nxt, c(tasks));
        }
        q.push(Stmt::Set { var: tkn, value: deal(nxt.clone(), start) });
        min(lt(nxt, c(rounds * cubes)), lt(v(tkn), c(tasks)))
    };
    // The registers a look-ahead into the next task overwrites, each with its save register (`x_s`).
    let mut saves: Vec<(SVar, SVar)> = Vec::new();
    if flat {
        for r in [bi, i0, rows, bbase] {
            let name = format!("{}_s", lb.launch.svars[r.0 as usize]);
            saves.push((r, lb.svar(name)));
        }
    }
    // Runs `then` with the registers of `regs` saved before and restored after.
    let saving = |regs: &[(SVar, SVar)], then: Vec<Stmt>| -> Vec<Stmt> {
        let mut q: Vec<Stmt> = regs.iter().map(|&(r, sv)| Stmt::Set { var: sv, value: v(r) }).collect();
        q.extend(then);
        q.extend(regs.iter().map(|&(r, sv)| Stmt::Set { var: r, value: v(sv) }));
        q
    };
    // A j-block's columns: with the causal mask, only those some row of the i-block sees (`j < i0 + rows +
    // e`); the columns after them are masked for every row and contribute nothing.
    // `row_end`: the end of the rows that must see the columns (the i-block's, or a vector core's).
    let set_j_rows = |q: &mut Vec<Stmt>, j: SVar, j0: SVar, cl: SVar, value: SExpr, row_end: SExpr| {
        q.push(Stmt::Set { var: j, value });
        q.push(Stmt::Set { var: j0, value: mul(v(j), c(bn)) });
        let mut n = min(c(bn), sub(c(t), v(j0)));
        if let Some(e) = p.causal {
            n = min(n, sub(add(row_end, c(e)), v(j0)));
        }
        q.push(Stmt::Set { var: cl, value: n });
    };
    let set_j = |q: &mut Vec<Stmt>, j: SVar, j0: SVar, cl: SVar, value: SExpr| {
        set_j_rows(q, j, j0, cl, value, add(v(i0), v(rows)))
    };
    // With the causal mask, a block some of whose rows see only some of its columns (`j0 + cl - 1 > i0 + e`:
    // the i-block's first row does not see its last column) is computed in row bands of `hr`, one per vector
    // core, each only as wide as its rows see; the other blocks at once. `band(h)` sets `hrows × hcols` of
    // band `h` of the block at `j0` with `cl` columns; `diag(j0, cl)` the condition.
    // (`score_whole_diag`, the host: no bands, every block multiplied whole; the vector cores mask.)
    let whole_diag = target.score_whole_diag;
    let diag = |j0: SVar, cl: SVar| {
        p.causal.filter(|_| !whole_diag).map(|e| lt(add(v(i0), c(e)), sub(add(v(j0), v(cl)), c(1))))
    };
    let band = |q: &mut Vec<Stmt>, h: i64, j0: SVar, cl: SVar| {
        q.push(Stmt::Set { var: hrows, value: min(c(hr), sub(v(rows), c(h * hr))) });
        let e = p.causal.unwrap_or(0);
        let cols = min(v(cl), sub(add(add(v(i0), c(h * hr + e)), v(hrows)), v(j0)));
        q.push(Stmt::Set { var: hcols, value: cols });
    };
    let band_live = || lt(c(0), min(v(hrows), v(hcols)));
    // `whole` for the blocks every row sees whole, else `per_band(h)` for each band with work.
    let split = |q: &mut Vec<Stmt>, j0: SVar, cl: SVar, whole: Stmt, per_band: &dyn Fn(i64) -> Stmt| match diag(j0, cl)
    {
        None => q.push(whole),
        Some(d) => {
            let mut bands = Vec::new();
            for h in 0..ratio {
                band(&mut bands, h, j0, cl);
                bands.push(Stmt::If { cond: band_live(), then: vec![per_band(h)] });
            }
            q.push(Stmt::If { cond: bin(SBin::Eq, d.clone(), c(0)), then: vec![whole] });
            q.push(Stmt::If { cond: d, then: bands });
        }
    };

    // ---- The cube program.
    // A block of `bn` columns is `nh` chunks of `bc` (the L0 tiles' columns); chunk `h` uses L1 slot `h`.
    // `chunk(h, j0, cl)` sets chunk `h`'s `hj0`/`hcl`: its first column and its columns (≤ 0: none).
    let chunk = |q: &mut Vec<Stmt>, h: i64, j0: SVar, cl: SVar| {
        q.push(Stmt::Set { var: hj0s[h as usize], value: add(v(j0), c(h * bc)) });
        q.push(Stmt::Set { var: hcls[h as usize], value: min(c(bc), sub(v(cl), c(h * bc))) });
    };
    // Chunk 0 always has columns; the others may not.
    let when_live = |h: i64, then: Vec<Stmt>| -> Vec<Stmt> {
        if h == 0 {
            then
        } else {
            vec![Stmt::If { cond: lt(c(0), v(hcls[h as usize])), then }]
        }
    };
    let stage_s = |j: SExpr| -> Vec<Stmt> {
        let mut q = Vec::new();
        set_j(&mut q, sj, sj0, scl, j);
        for h in 0..nh {
            let hu = h as u8;
            let (hj0, hcl) = (hj0s[h as usize], hcls[h as usize]);
            chunk(&mut q, h, sj0, scl);
            let mut w = vec![waitf(Mte1, Mte2, EV_B1 + hu)];
            w.push(gm_to_l1(&p.b, v(bbase), (c(0), v(hj0)), (c(d), v(hcl)), bs(b1, h, c(0), b1_stride)));
            w.push(setf(Mte2, Mte1, EV_B1 + hu));
            w.push(waitf(Mte2, Mte1, EV_B1 + hu));
            w.push(waitf(M, Mte1, EV_B0));
            w.push(l1_to_l0(p.b.transposed, b1, h, b1_stride, b0, bc, (c(d), v(hcl)), jj));
            w.push(setf(Mte1, Mte2, EV_B1 + hu));
            w.push(setf(Mte1, M, EV_B0));
            w.push(waitf(Mte1, M, EV_B0));
            w.extend(take_c());
            w.push(waitf(Fix, M, EV_SC));
            let mm = |r0: i64, m: SExpr, n: SExpr| Stmt::Mmad {
                a: ub(a0, c(r0 * d), d),
                b: ub(b0, c(0), bc),
                c: lc(sc, c(r0 * bc), bc),
                m,
                k: c(d),
                n,
                accumulate: false,
            };
            split(&mut w, hj0, hcl, mm(0, v(rows), v(hcl)), &|b| mm(b * hr, v(hrows), v(hcols)));
            w.push(setf(M, Mte1, EV_B0));
            w.push(setf(M, Fix, EV_SC));
            w.push(waitf(M, Fix, EV_SC));
            let fix = |r0: i64, rows: SExpr, cols: SExpr| Stmt::Copy {
                pipe: Fix,
                src: lc(sc, c(r0 * bc), bc),
                dst: reg(Loc::Gm(ws_s), add(add(own(SExpr::Core, per_s), ring(sj, bm * bn)), c(r0 * bn + h * bc)), bn),
                rows,
                cols,
            };
            split(&mut w, hj0, hcl, fix(0, v(rows), v(hcl)), &|b| fix(b * hr, v(hrows), v(hcols)));
            w.push(setf(Fix, M, EV_SC));
            q.extend(when_live(h, w));
        }
        q.push(Stmt::CrossSet { flag: F_S });
        q
    };
    let stage_pv = |j: SExpr| -> Vec<Stmt> {
        let mut q = Vec::new();
        set_j(&mut q, pj, pj0, pcl, j);
        for h in 0..nh {
            chunk(&mut q, h, pj0, pcl);
        }
        // v's tiles do not depend on the vector cores: loaded before waiting for p.
        for h in 0..nh {
            let hu = h as u8;
            let (hj0, hcl) = (hj0s[h as usize], hcls[h as usize]);
            let w = vec![
                waitf(Mte1, Mte2, EV_V1 + hu),
                gm_to_l1(&p.vop, v(vbase), (v(hj0), c(0)), (v(hcl), c(dv)), bs(v1, h, c(0), v1_stride)),
                setf(Mte2, Mte1, EV_V1 + hu),
            ];
            q.extend(when_live(h, w));
        }
        q.push(Stmt::CrossWait { flag: F_P });
        for h in 0..nh {
            let hu = h as u8;
            let hcl = hcls[h as usize];
            let w = vec![
                waitf(Mte1, Mte2, EV_P1 + hu),
                Stmt::Copy {
                    pipe: Mte2,
                    src: reg(Loc::Gm(ws_p), add(add(own(SExpr::Core, per_s), ring(pj, bm * bn)), c(h * bc)), bn),
                    dst: bs(p1, h, c(0), bc),
                    rows: v(rows),
                    cols: v(hcl),
                },
                setf(Mte2, Mte1, EV_P1 + hu),
            ];
            q.extend(when_live(h, w));
        }
        for h in 0..nh {
            let hu = h as u8;
            let (hj0, hcl) = (hj0s[h as usize], hcls[h as usize]);
            let mut w = vec![waitf(Mte2, Mte1, EV_V1 + hu), waitf(M, Mte1, EV_V0)];
            w.push(l1_to_l0(p.vop.transposed, v1, h, v1_stride, v0, dv, (v(hcl), c(dv)), jj));
            w.push(setf(Mte1, Mte2, EV_V1 + hu));
            w.push(setf(Mte1, M, EV_V0));
            w.push(waitf(Mte2, Mte1, EV_P1 + hu));
            w.push(waitf(M, Mte1, EV_P0));
            w.push(Stmt::Copy {
                pipe: Mte1,
                src: bs(p1, h, c(0), bc),
                dst: ub(p0, c(0), bc),
                rows: v(rows),
                cols: v(hcl),
            });
            w.push(setf(Mte1, Mte2, EV_P1 + hu));
            w.push(setf(Mte1, M, EV_P0));
            w.push(waitf(Mte1, M, EV_V0));
            w.push(waitf(Mte1, M, EV_P0));
            let mm = |accumulate| Stmt::Mmad {
                a: ub(p0, c(0), bc),
                b: ub(v0, c(0), dv),
                c: lc(oc, c(0), dv),
                m: v(rows),
                k: v(hcl),
                n: c(dv),
                accumulate,
            };
            if online {
                if h == 0 {
                    w.extend(take_c());
                    w.push(waitf(Fix, M, ev_o));
                }
                // A band without visible columns leaves its rows of O stale: its vector core skips the update.
                let band_mm = |b: i64| Stmt::Mmad {
                    a: ub(p0, c(b * hr * bc), bc),
                    b: ub(v0, c(0), dv),
                    c: lc(oc, c(b * hr * dv), dv),
                    m: v(hrows),
                    k: v(hcols),
                    n: c(dv),
                    accumulate: h > 0,
                };
                split(&mut w, hj0, hcl, mm(h > 0), &band_mm);
            } else if h == 0 {
                w.push(Stmt::If { cond: bin(SBin::Eq, v(pj), c(0)), then: vec![mm(false)] });
                w.push(Stmt::If { cond: lt(c(0), v(pj)), then: vec![mm(true)] });
            } else {
                w.push(mm(true));
            }
            w.push(setf(M, Mte1, EV_V0));
            w.push(setf(M, Mte1, EV_P0));
            q.extend(when_live(h, w));
        }
        if online {
            q.push(setf(M, Fix, ev_o));
            q.push(waitf(M, Fix, ev_o));
            q.push(Stmt::Copy {
                pipe: Fix,
                src: lc(oc, c(0), dv),
                dst: reg(Loc::Gm(ws_o), add(own(SExpr::Core, per_o), ring(pj, bm * dv)), dv),
                rows: v(rows),
                cols: c(dv),
            });
            q.push(setf(Fix, M, ev_o));
            q.push(Stmt::CrossSet { flag: F_O });
        }
        q
    };
    let bases = (
        operand_base(&p.a, bi, &p.batch_dims, bd)?,
        operand_base(&p.b, bi, &p.batch_dims, bd)?,
        operand_base(&p.vop, bi, &p.batch_dims, bd)?,
    );
    let cube_free = [
        (Mte1, Mte2, EV_A1),
        (Mte1, Mte2, EV_B1),
        (Mte1, Mte2, EV_B1 + 1),
        (Mte1, Mte2, EV_P1),
        (Mte1, Mte2, EV_P1 + 1),
        (Mte1, Mte2, EV_V1),
        (Mte1, Mte2, EV_V1 + 1),
        (M, Mte1, EV_A0),
        (M, Mte1, EV_B0),
        (M, Mte1, EV_P0),
        (M, Mte1, EV_V0),
        (Fix, M, EV_SC),
        (Fix, M, ev_o),
    ];
    let mut cq = prime(&cube_free);
    // The task's q tile into L0A (at `abase`).
    let load_q = || {
        vec![
            waitf(Mte1, Mte2, EV_A1),
            gm_to_l1(&p.a, v(abase), (v(i0), c(0)), (v(rows), c(d)), bs(a1, 0, c(0), a1_stride)),
            setf(Mte2, Mte1, EV_A1),
            waitf(Mte2, Mte1, EV_A1),
            waitf(M, Mte1, EV_A0),
            l1_to_l0(p.a.transposed, a1, 0, a1_stride, a0, d, (v(rows), c(d)), jj),
            setf(Mte1, Mte2, EV_A1),
            setf(Mte1, M, EV_A0),
            waitf(Mte1, M, EV_A0),
        ]
    };
    // `then` if block `k` (< lead) of this task was not begun in the previous one.
    let unless_begun = |k: i64, then: Vec<Stmt>| -> Vec<Stmt> {
        match fl {
            Some((_, pre, ..)) => vec![Stmt::If { cond: bin(SBin::Le, v(pre), c(k)), then }],
            None => then,
        }
    };
    // The look-ahead of iteration `jb` (when the task has no block j+lead left): the next task's next block,
    // `start` the core's first task; `regs` the registers to keep; `prep` sets the next task's state
    // (its registers already moved to the next task's coordinates); `first` runs before its block 0;
    // `stage` is the block's stage.
    let look_ahead =
        |start: SExpr, regs: &[(SVar, SVar)], prep: Vec<Stmt>, first: Vec<Stmt>, stage: Vec<Stmt>| -> Vec<Stmt> {
            let Some((ahead, _, tkn, njn)) = fl else { return Vec::new() };
            let mut q = Vec::new();
            let has_next = next_task(&mut q, start, tkn);
            let mut inner = Vec::new();
            coords_at(&mut inner, v(tkn), njn);
            let mut go = prep;
            go.push(Stmt::If { cond: bin(SBin::Eq, v(ahead), c(0)), then: first });
            go.extend(stage);
            go.push(Stmt::Set { var: ahead, value: add(v(ahead), c(1)) });
            inner.push(Stmt::If { cond: lt(v(ahead), min(c(lead), v(njn))), then: go });
            q.push(Stmt::If { cond: has_next, then: saving(regs, inner) });
            vec![Stmt::If { cond: bin(SBin::Le, v(nj), add(v(jb), c(lead))), then: q }]
        };
    let mut body = Vec::new();
    coords(&mut body);
    body.push(Stmt::Set { var: abase, value: bases.0.clone() });
    body.push(Stmt::Set { var: bbase, value: bases.1.clone() });
    body.push(Stmt::Set { var: vbase, value: bases.2.clone() });
    if let Some((ahead, pre, ..)) = fl {
        body.push(Stmt::Set { var: pre, value: v(ahead) });
        body.push(Stmt::Set { var: ahead, value: c(0) });
    }
    let mut first = load_q();
    if !online {
        first.push(waitf(Fix, M, ev_o));
    }
    first.extend(stage_s(c(0)));
    body.extend(unless_begun(0, first));
    for k in 1..lead {
        body.push(Stmt::If { cond: lt(c(k), v(nj)), then: unless_begun(k, stage_s(c(k))) });
    }
    // Iteration j: S(j+lead) (or the next task's next block), then p(j)·v(j).
    let mut it = vec![Stmt::If { cond: lt(add(v(jb), c(lead)), v(nj)), then: stage_s(add(v(jb), c(lead))) }];
    if let (Some((ahead, ..)), Some((g, g_s))) = (fl, gb) {
        let mut regs = saves.clone();
        regs.push((g, g_s));
        let prep =
            vec![Stmt::Set { var: g, value: add(v(g), v(nj)) }, Stmt::Set { var: bbase, value: bases.1.clone() }];
        // This task's q tile is no longer needed (its last S was issued): the next one's takes L0A.
        let mut first = vec![setf(M, Mte1, EV_A0), Stmt::Set { var: abase, value: bases.0.clone() }];
        first.extend(load_q());
        it.extend(look_ahead(SExpr::Core, &regs, prep, first, stage_s(v(ahead))));
    }
    it.extend(stage_pv(v(jb)));
    body.push(Stmt::For { var: jb, lo: c(0), hi: v(nj), step: 1, body: it });
    match (fl, gb) {
        (Some((ahead, ..)), Some((g, _))) => {
            // Unless the next task's q tile took L0A already.
            body.push(Stmt::If { cond: bin(SBin::Eq, v(ahead), c(0)), then: vec![setf(M, Mte1, EV_A0)] });
            body.push(Stmt::Set { var: g, value: add(v(g), v(nj)) });
        }
        _ => body.push(setf(M, Mte1, EV_A0)),
    }
    if !online {
        body.push(setf(M, Fix, ev_o));
        body.push(waitf(M, Fix, ev_o));
        body.push(Stmt::Copy {
            pipe: Fix,
            src: lc(oc, c(0), dv),
            dst: reg(Loc::Gm(ws_o), own(SExpr::Core, per_o), dv),
            rows: v(rows),
            cols: c(dv),
        });
        body.push(setf(Fix, M, ev_o));
        body.push(Stmt::CrossSet { flag: F_O });
    }
    if let Some((cc, _)) = cring {
        cq.push(Stmt::Set { var: cc, value: c(0) });
    }
    if let (Some((ahead, ..)), Some((g, _))) = (fl, gb) {
        cq.push(Stmt::Set { var: g, value: c(0) });
        cq.push(Stmt::Set { var: ahead, value: c(0) });
    }
    cq.push(task_loop(SExpr::Core, body));
    cq.extend(drain(&cube_free));
    lb.launch.cube = cq;

    // ---- The vector program.
    let tile = sh(hr, bn);
    let raw = lb.buffer("raw_ub", Mem::UB, DType::F32, tile.clone(), zs as u32);
    let mut tiles: BTreeMap<ValueId, (BufId, i64)> = BTreeMap::new();
    // The anchor in place of its contraction.
    tiles.insert(p.tiles[0], (raw, bn));
    for &z in &p.tiles[1..] {
        let b = lb.buffer(format!("{}_ub", label(z)), Mem::UB, g.node(z).dtype, tile.clone(), zs as u32);
        tiles.insert(z, (b, bn));
    }
    let mut zext_ids = Vec::new();
    for &x in &p.zext {
        let b = lb.buffer(format!("{}_ub", label(x)), Mem::UB, g.node(x).dtype, tile.clone(), zs as u32);
        tiles.insert(x, (b, bn));
        zext_ids.push((b, *gm.of.get(&x)?));
    }
    let lstat = p.stats.iter().find_map(|(x, s)| match s {
        Stat::SumExp { z, x: sh } => Some((*x, *z, *sh)),
        _ => None,
    });
    // e = exp(z - x): in place of z in the online mode (p is e; z is not read after it).
    let e_ub = match (online, lstat) {
        (true, Some((_, z, _))) => Some(tiles[&z].0),
        (_, Some(_)) => Some(lb.buffer("e_ub", Mem::UB, DType::F32, tile.clone(), zs as u32)),
        _ => None,
    };
    let p_ub = lb.buffer("p_ub", Mem::UB, p.vop.dtype, tile.clone(), 1);
    // The statistics' rows: with tasks in flight, a slot per task (`tpar`, the task's parity on the core).
    let tpar = flat.then(|| lb.svar("tpar"));
    let sslot = match tpar {
        Some(t) => v(t),
        None => c(0),
    };
    let mut rowb: BTreeMap<ValueId, BufId> = BTreeMap::new();
    for (x, _) in &p.stats {
        let b = lb.buffer(format!("{}_ub", label(*x)), Mem::UB, g.node(*x).dtype, sh(hr, 1), 1 + u32::from(flat));
        rowb.insert(*x, b);
    }
    let x_old = lb.buffer("x_old_ub", Mem::UB, DType::F32, sh(hr, 1), 1);
    let alpha = lb.buffer("alpha_ub", Mem::UB, DType::F32, sh(ring_n * hr, 1), 1);
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
    // The slot of the block being worked on: the score tiles' ring turns once per block the vector core
    // works on, across tasks (`zc` counts them), so that its free flag's n-th wait takes the n-th set.
    let zc = lb.svar("zc");
    let zsl = lb.svar("zsl");
    let zslot = if zs == 1 { c(0) } else { v(zsl) };
    let zb = |b: BufId, offset: SExpr| reg(Loc::Buf { buf: b, slot: zslot.clone() }, offset, bn);
    let vj0 = lb.svar("vj0");
    let vcl = lb.svar("vcl");
    let uj = lb.svar("uj");
    let uj0 = lb.svar("uj0");
    let ucl = lb.svar("ucl");
    let mine = bin(SBin::Div, SExpr::Core, c(ratio));
    let subc = bin(SBin::Mod, SExpr::Core, c(ratio));
    let row0 = add(v(i0), v(r0));
    let empty = BTreeMap::new();
    // The score tiles' context from column `off` of the block at `j0` on.
    let cx_tile_at = |j0: SVar, off: SExpr| Cx {
        nb,
        batch_dims: &p.batch_dims,
        bi,
        row0: row0.clone(),
        col0: Some(if off == c(0) { v(j0) } else { add(v(j0), off.clone()) }),
        tiles: &tiles,
        rows: &rowb,
        scalars: &scal,
        reduce: Some((raw, bn)),
        tile_off: off,
        tile_slot: zslot.clone(),
        stat_slot: sslot.clone(),
        bd,
    };
    let cx_tile = |j0: SVar| cx_tile_at(j0, c(0));
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
        tile_off: c(0),
        tile_slot: c(0),
        stat_slot: sslot.clone(),
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
        tile_off: c(0),
        tile_slot: c(0),
        stat_slot: sslot.clone(),
        bd,
    };
    let body_of = |x: ValueId| match &g.node(x).kind {
        NodeKind::Compute { body, .. } => Some(body),
        _ => None,
    };
    let vec_st = |dst: Region, cols: SExpr, expr: VExpr| Stmt::Vector { dst, rows: v(rc), cols, expr };
    let rr = |b: BufId| Box::new(VExpr::ReadRow(ub(b, c(0), 1)));
    // The statistics' rows (a slot per task in flight, `tpar`).
    let srow = |b: BufId| reg(Loc::Buf { buf: b, slot: sslot.clone() }, c(0), 1);
    let rsrow = |b: BufId| Box::new(VExpr::ReadRow(srow(b)));
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
    // With the causal mask: the anchor without it (for the blocks whose columns all of this core's rows see,
    // and a diagonal block's left part), and the anchor over a diagonal block's right part, from column `vw`.
    let open = match (p.causal, body_of(p.tiles[0]).map(|b| &b.kind)) {
        (Some(e), Some(ExprKind::Select(_, val, _))) => {
            let vw = lb.svar("vw");
            let masked = vexpr(body_of(p.tiles[0])?, &cx_tile_at(vj0, v(vw)))?;
            Some((e, vexpr(val, &cx_tile(vj0))?, vw, masked))
        }
        _ => None,
    };
    let mut epi = Vec::new();
    for &x in &p.epilogue {
        epi.push((otiles[&x].0, vexpr(body_of(x)?, &cx_out)?));
    }
    // The folded scale: `k` as a vector operand, its sign (known now, or read by the scalar unit once the
    // scalars are in UB: `kneg`), and the row of the raw scores' maxima (minima where k < 0).
    let kf = match &kfold {
        None => None,
        Some(k) => {
            let neg = match &k.kind {
                ExprKind::Const(Const::F32(x)) => Some(x.is_sign_negative()),
                _ => None,
            };
            let sign_buf = match &k.kind {
                ExprKind::Load { src, .. } => Some((*scal.get(src)?, lb.svar("kneg"))),
                _ => None,
            };
            let rm = lb.buffer("rawmax_ub", Mem::UB, DType::F32, sh(hr, 1), 1);
            Some((vexpr(k, &cx_row)?, neg, sign_buf, rm))
        }
    };
    // With the causal mask, whether the block at `vj0` is seen whole by every row of this core (no mask,
    // the scale folded) or is a diagonal block (the anchor evaluated in place, the mask on its right part).
    let whole_block = || {
        open.as_ref().map(|(ce, ..)| {
            let last = add(v(vj0), sub(v(vcl), c(1)));
            let first = add(row0.clone(), c(*ce));
            (bin(SBin::Le, last.clone(), first.clone()), lt(first, last))
        })
    };
    // `plain` on the blocks whose scale is folded, `diag` on the others (with the causal mask).
    // `kind`: which of the two the caller's branch is (`Some(true)`: the folded blocks), or `None` (both,
    // chosen here).
    let by_block = |kind: Option<bool>, plain: Vec<Stmt>, diag: Vec<Stmt>| -> Vec<Stmt> {
        match (whole_block(), kind) {
            (None, _) | (Some(_), Some(true)) => plain,
            (Some(_), Some(false)) => diag,
            (Some((w, d)), None) => vec![Stmt::If { cond: w, then: plain }, Stmt::If { cond: d, then: diag }],
        }
    };
    // With diagonal blocks multiplied whole (`score_whole_diag`, the host), the softmax of a block is one
    // branch for the folded blocks and one for the diagonal ones, each written for its kind: the folded
    // blocks' statements then read the scores where the cube wrote them (copy forwarding, level 3: the
    // diagonal blocks' mask, written in place over part of the tile, keeps the copy on their branch only).
    let split_softmax = whole_diag && whole_block().is_some();

    // The score tiles' free flag counts their slots (the n-th wait takes the n-th set).
    let mut vec_free = vec![(V, Mte2, EV_RAW); zs as usize];
    vec_free.extend([(V, Mte2, EV_PV), (Mte3, V, EV_PUB)]);
    if flat {
        // A task's results and statistics are free once MTE3 stored them: waited for by the next task
        // before it writes its own, or by the look-ahead before it starts the statistics of the task after
        // it (the same slot).
        vec_free.push((Mte3, V, EV_OUT));
    }
    let mut vq = prime(&vec_free);
    if zs > 1 {
        vq.push(Stmt::Set { var: zc, value: c(0) });
    }
    for (x, b) in &scal {
        vq.push(Stmt::Copy {
            pipe: Mte2,
            src: reg(Loc::Gm(*gm.of.get(x)?), c(0), 0),
            dst: ub(*b, c(0), 0),
            rows: c(1),
            cols: c(1),
        });
    }
    vq.push(setf(Mte2, V, EV_ONCE));
    vq.push(waitf(Mte2, V, EV_ONCE));
    if let Some((_, None, Some((b, kneg)), _)) = &kf {
        // The sign bit of k: its word read as a signed integer.
        vq.push(setf(Mte2, Pipe::S, EV_ONCE));
        vq.push(waitf(Mte2, Pipe::S, EV_ONCE));
        let word = SExpr::Read { buf: *b, slot: Box::new(c(0)), index: Box::new(c(0)) };
        vq.push(Stmt::Set { var: *kneg, value: lt(word, c(0)) });
    }
    let softmax = |j: SExpr| -> Vec<Stmt> {
        let mut q = Vec::new();
        // A core's columns: those its rows see, or (diagonal blocks multiplied whole) those the i-block's
        // rows see, the ones its rows do not masked (p = exp(-inf - x) = 0 where the cube's p·v reads it).
        let row_end = if whole_diag { add(v(i0), v(rows)) } else { add(row0.clone(), v(rc)) };
        set_j_rows(&mut q, vj, vj0, vcl, j, row_end);
        q.push(Stmt::CrossWait { flag: F_S });
        let live = |then: Vec<Stmt>| Stmt::If { cond: lt(c(0), v(vcl)), then };
        // The work on the block, for the blocks of `kind` (as `by_block`).
        let work = |kind: Option<bool>| -> Vec<Stmt> {
            let mut w = Vec::new();
            let mut t0 = Vec::new();
            if zs > 1 {
                t0.push(Stmt::Set { var: zsl, value: bin(SBin::Mod, v(zc), c(zs)) });
                t0.push(Stmt::Set { var: zc, value: add(v(zc), c(1)) });
            }
            t0.push(waitf(V, Mte2, EV_RAW));
            t0.push(Stmt::Copy {
                pipe: Mte2,
                src: reg(Loc::Gm(ws_s), add(add(own(mine.clone(), per_s), ring(vj, bm * bn)), mul(v(r0), c(bn))), bn),
                dst: zb(raw, c(0)),
                rows: v(rc),
                cols: v(vcl),
            });
            for (b, tz) in &zext_ids {
                t0.push(Stmt::Copy {
                    pipe: Mte2,
                    src: reg(Loc::Gm(*tz), add(mul(v(bi), c(s * t)), add(mul(row0.clone(), c(t)), v(vj0))), t),
                    dst: zb(*b, c(0)),
                    rows: v(rc),
                    cols: v(vcl),
                });
            }
            t0.push(setf(Mte2, V, EV_RAW));
            t0.push(waitf(Mte2, V, EV_RAW));
            for (i, (b, e)) in tile_e.iter().enumerate() {
                match (&open, i) {
                    (Some((ce, oe, vw, me_w)), 0) => {
                        let vw = *vw;
                        // Every column of the block visible to this core's first row: no mask.
                        let last = add(v(vj0), sub(v(vcl), c(1)));
                        let first = add(row0.clone(), c(*ce));
                        let plain = vec![vec_st(zb(*b, c(0)), v(vcl), oe.clone())];
                        if kf.is_none() && kind != Some(false) {
                            match kind {
                                Some(_) => t0.extend(plain),
                                None => {
                                    t0.push(Stmt::If { cond: bin(SBin::Le, last.clone(), first.clone()), then: plain })
                                }
                            }
                        }
                        // Else the columns up to the first row's last visible one (`vw` of them) are seen by
                        // every row of the band: no mask there either; the mask only on the rest, the diagonal.
                        // With diagonal blocks multiplied whole (the host), the masked anchor over the whole
                        // tile instead: it overwrites the copied window element for element, so it reads the
                        // scores in the cube's workspace and the copy into UB goes (copy forwarding, level
                        // 3), and its row routine (`kc_rt_row_mask`) keeps the prefix each row sees and fills
                        // the rest (the same values: the columns below `vw` pass the mask).
                        let diag = if whole_diag {
                            vec![vec_st(zb(*b, c(0)), v(vcl), e.clone())]
                        } else {
                            vec![
                                Stmt::Set {
                                    var: vw,
                                    value: bin(SBin::Max, c(0), min(v(vcl), sub(add(first.clone(), c(1)), v(vj0)))),
                                },
                                Stmt::If { cond: lt(c(0), v(vw)), then: vec![vec_st(zb(*b, c(0)), v(vw), oe.clone())] },
                                vec_st(zb(*b, v(vw)), sub(v(vcl), v(vw)), me_w.clone()),
                            ]
                        };
                        match kind {
                            Some(true) => {}
                            Some(false) => t0.extend(diag),
                            None => t0.push(Stmt::If { cond: lt(first, last), then: diag }),
                        }
                    }
                    // Without the mask, a folded scale leaves the raw scores as they are.
                    (None, 0) if kf.is_some() => {}
                    _ => t0.push(vec_st(zb(*b, c(0)), v(vcl), e.clone())),
                }
            }
            w.push(live(t0));
            if let Some(xs) = shift {
                w.push(vec_st(ub(x_old, c(0), 1), c(1), VExpr::ReadRow(srow(rowb[&xs]))));
            }
            for (x, st) in &p.stats {
                if let Stat::Max(z) = st {
                    let whole = Stmt::Reduce {
                        op: ReduceOp::Max,
                        axis: 1,
                        src: zb(tiles[z].0, c(0)),
                        dst: srow(rowb[x]),
                        rows: v(rc),
                        cols: v(vcl),
                        accumulate: true,
                    };
                    let Some((kv, neg, sign, rm)) = &kf else {
                        w.push(live(vec![whole]));
                        continue;
                    };
                    // max_j k·raw = k · (max_j raw if k ≥ 0, else min_j raw): exact, as rounding is monotonic.
                    let red = |op| Stmt::Reduce {
                        op,
                        axis: 1,
                        src: zb(raw, c(0)),
                        dst: ub(*rm, c(0), 1),
                        rows: v(rc),
                        cols: v(vcl),
                        accumulate: false,
                    };
                    let mut plain = match (neg, sign) {
                        (Some(true), _) => vec![red(ReduceOp::Min)],
                        (Some(false), _) | (None, None) => vec![red(ReduceOp::Max)],
                        (None, Some((_, kneg))) => vec![
                            Stmt::If { cond: bin(SBin::Eq, v(*kneg), c(1)), then: vec![red(ReduceOp::Min)] },
                            Stmt::If { cond: bin(SBin::Eq, v(*kneg), c(0)), then: vec![red(ReduceOp::Max)] },
                        ],
                    };
                    let scaled = VExpr::Binary(BinOp::Mul, Box::new(kv.clone()), rr(*rm));
                    plain.push(vec_st(
                        srow(rowb[x]),
                        c(1),
                        VExpr::Binary(BinOp::Max, rsrow(rowb[x]), Box::new(scaled)),
                    ));
                    w.push(live(by_block(kind, plain, vec![whole])));
                }
            }
            for (b, e) in &elem_loop {
                w.push(vec_st(srow(*b), c(1), e.clone()));
            }
            let src = match (online, e_ub) {
                (true, Some(e)) => e,
                _ => tiles[&p.pz].0,
            };
            // p = e (cast to v's dtype) once the previous p was stored, then p to the cube's workspace: right
            // after the exp and its row sum, in their body, when p is e (the host computes the three in one pass
            // and stores p straight into the workspace: docs/jit.md, row routines and copy forwarding).
            let handoff = vec![
                waitf(Mte3, V, EV_PUB),
                vec_st(ub(p_ub, c(0), bn), v(vcl), VExpr::Read(zb(src, c(0)))),
                // The score tile (raw, the anchor in place, e) is read for the last time.
                setf(V, Mte2, EV_RAW),
                setf(V, Mte3, EV_PUB),
                waitf(V, Mte3, EV_PUB),
                Stmt::Copy {
                    pipe: Mte3,
                    src: ub(p_ub, c(0), bn),
                    dst: reg(
                        Loc::Gm(ws_p),
                        add(add(own(mine.clone(), per_s), ring(vj, bm * bn)), mul(v(r0), c(bn))),
                        bn,
                    ),
                    rows: v(rc),
                    cols: v(vcl),
                },
                setf(Mte3, V, EV_PUB),
            ];
            let mut handed = false;
            if let (Some((l, z, xs)), Some(e_ub)) = (lstat, e_ub) {
                let aslot = ring(vj, hr);
                // alpha = l > 0 ? exp(x_old - x) : 0 (nothing accumulated yet: l and O are 0).
                let a = VExpr::Select(
                    Box::new(VExpr::Binary(BinOp::Gt, rsrow(rowb[&l]), Box::new(VExpr::F32(0.0)))),
                    Box::new(VExpr::Unary(UnOp::Exp, Box::new(VExpr::Binary(BinOp::Sub, rr(x_old), rsrow(rowb[&xs]))))),
                    Box::new(VExpr::F32(0.0)),
                );
                w.push(vec_st(ub(alpha, aslot.clone(), 1), c(1), a));
                // l = l·alpha first, so that the exp statement and the row sum that accumulates into l are one
                // pair in one body (the host computes them in one pass: docs/jit.md, row routines).
                w.push(vec_st(
                    srow(rowb[&l]),
                    c(1),
                    VExpr::Binary(BinOp::Mul, rsrow(rowb[&l]), Box::new(VExpr::ReadRow(ub(alpha, aslot, 1)))),
                ));
                let exp_of = |z: VExpr| {
                    VExpr::Unary(UnOp::Exp, Box::new(VExpr::Binary(BinOp::Sub, Box::new(z), rsrow(rowb[&xs]))))
                };
                let e = exp_of(VExpr::Read(zb(tiles[&z].0, c(0))));
                let sum = Stmt::Reduce {
                    op: ReduceOp::Sum,
                    axis: 1,
                    src: zb(e_ub, c(0)),
                    dst: srow(rowb[&l]),
                    rows: v(rc),
                    cols: v(vcl),
                    accumulate: true,
                };
                let tail = if src == e_ub {
                    handed = true;
                    handoff.clone()
                } else {
                    Vec::new()
                };
                let body = |e: VExpr| [vec![vec_st(zb(e_ub, c(0)), v(vcl), e), sum.clone()], tail.clone()].concat();
                match &kf {
                    None => w.push(live(body(e))),
                    // exp(k·raw - x): one multiply-add before the exp.
                    Some((kv, ..)) => {
                        let scaled =
                            VExpr::Binary(BinOp::Mul, Box::new(kv.clone()), Box::new(VExpr::Read(zb(raw, c(0)))));
                        w.push(live(by_block(kind, body(exp_of(scaled)), body(e))));
                    }
                }
            }
            if !handed {
                w.push(live(handoff));
            }
            w
        };
        let w = match whole_block() {
            Some((wc, dc)) if split_softmax => {
                vec![Stmt::If { cond: wc, then: work(Some(true)) }, Stmt::If { cond: dc, then: work(Some(false)) }]
            }
            _ => work(None),
        };
        q.push(Stmt::If { cond: lt(c(0), v(rc)), then: w });
        q.push(Stmt::CrossSet { flag: F_P });
        q
    };
    // The p·v tile of the cube core's slot `k` into `pv_ub` (the caller waits for it and frees it).
    let fetch_pv = |j_slot: SExpr| -> Vec<Stmt> {
        vec![
            waitf(V, Mte2, EV_PV),
            Stmt::Copy {
                pipe: Mte2,
                src: reg(Loc::Gm(ws_o), add(add(own(mine.clone(), per_o), j_slot), mul(v(r0), c(dv))), dv),
                dst: ub(pv_ub, c(0), dv),
                rows: v(rc),
                cols: c(dv),
            },
            setf(Mte2, V, EV_PV),
            waitf(Mte2, V, EV_PV),
        ]
    };
    let update = |j: SExpr| -> Vec<Stmt> {
        let mut q = Vec::new();
        set_j_rows(&mut q, uj, uj0, ucl, j, add(row0.clone(), v(rc)));
        q.push(Stmt::CrossWait { flag: F_O });
        let mut w = fetch_pv(ring(uj, bm * dv));
        if let Some(o) = oacc {
            let e = VExpr::Binary(
                BinOp::Add,
                Box::new(VExpr::Binary(
                    BinOp::Mul,
                    Box::new(VExpr::Read(ub(o, c(0), dv))),
                    Box::new(VExpr::ReadRow(ub(alpha, ring(uj, hr), 1))),
                )),
                Box::new(VExpr::Read(ub(pv_ub, c(0), dv))),
            );
            w.push(vec_st(ub(o, c(0), dv), c(dv), e));
        }
        w.push(setf(V, Mte2, EV_PV));
        // No visible column for this core's rows in block j: alpha is 1 (or l and O are 0), nothing to add.
        q.push(Stmt::If { cond: lt(c(0), min(v(rc), v(ucl))), then: w });
        q
    };
    // A consumer-shaped tile's offset in GM.
    let tile_off = || add(mul(v(bi), c(s * dv)), mul(row0.clone(), c(dv)));
    let ext_ids: Vec<(BufId, TensorId)> =
        p.ext_tiles.iter().map(|x| gm.of.get(x).map(|t| (otiles[x].0, *t))).collect::<Option<_>>()?;
    let stored: Vec<(ValueId, TensorId)> =
        group.stored.iter().map(|x| gm.of.get(x).map(|t| (*x, *t))).collect::<Option<_>>()?;
    let mut body = Vec::new();
    coords(&mut body);
    body.push(Stmt::Set { var: r0, value: mul(subc.clone(), c(hr)) });
    body.push(Stmt::Set { var: rc, value: min(c(hr), sub(v(rows), v(r0))) });
    if let Some((ahead, pre, ..)) = fl {
        body.push(Stmt::Set { var: pre, value: v(ahead) });
        body.push(Stmt::Set { var: ahead, value: c(0) });
    }
    // The statistics' start values (in the task's slot), then O's.
    let mut stats_init = Vec::new();
    for (x, st) in &p.stats {
        let v0 = match st {
            Stat::Max(_) => VExpr::F32(f32::NEG_INFINITY),
            Stat::SumExp { .. } => VExpr::F32(0.0),
            Stat::Elem => continue,
        };
        stats_init.push(vec_st(srow(rowb[x]), c(1), v0));
    }
    for (b, e) in &elem_loop {
        stats_init.push(vec_st(srow(*b), c(1), e.clone()));
    }
    // With tasks in flight, the statistics of a task begun in the previous one were started there.
    let mut init = unless_begun(0, stats_init.clone());
    if let Some(o) = oacc {
        init.push(vec_st(ub(o, c(0), dv), c(dv), VExpr::F32(0.0)));
    }
    body.push(Stmt::If { cond: lt(c(0), v(rc)), then: init });
    body.extend(unless_begun(0, softmax(c(0))));
    for k in 1..lead {
        body.push(Stmt::If { cond: lt(c(k), v(nj)), then: unless_begun(k, softmax(c(k))) });
    }
    // Iteration j: the softmax of block j+lead (its scores were computed while the cube waited for p(j)), or
    // of the next task's first blocks, then the update with p(j)·v(j).
    let mut it = vec![Stmt::If { cond: lt(add(v(jb), c(lead)), v(nj)), then: softmax(add(v(jb), c(lead))) }];
    if let (Some((ahead, ..)), Some((g, g_s)), Some(tp)) = (fl, gb, tpar) {
        // The vector cores have no k operand (`bbase`).
        let mut regs: Vec<(SVar, SVar)> = saves.iter().copied().filter(|&(r, _)| r != bbase).collect();
        regs.extend([(rc, lb.svar("rc_s")), (g, g_s), (tp, lb.svar("tpar_s"))]);
        let prep = vec![
            Stmt::Set { var: rc, value: min(c(hr), sub(v(rows), v(r0))) },
            Stmt::Set { var: g, value: add(v(g), v(nj)) },
            Stmt::Set { var: tp, value: sub(c(1), v(tp)) },
        ];
        let first = vec![waitf(Mte3, V, EV_OUT), Stmt::If { cond: lt(c(0), v(rc)), then: stats_init }];
        it.extend(look_ahead(mine.clone(), &regs, prep, first, softmax(v(ahead))));
    }
    if online {
        it.extend(update(v(jb)));
    }
    body.push(Stmt::For { var: jb, lo: c(0), hi: v(nj), step: 1, body: it });
    if !online {
        body.push(Stmt::CrossWait { flag: F_O });
    }
    let mut fin = Vec::new();
    if !online {
        fin.extend(fetch_pv(c(0)));
    }
    // The consumer's value, then the epilogue and the final statistics.
    let (cb, _) = otiles[&p.consumer];
    let cons = match (p.online, oacc) {
        (Some((l, _)), Some(o)) => VExpr::Binary(BinOp::Div, Box::new(VExpr::Read(ub(o, c(0), dv))), rsrow(rowb[&l])),
        _ => VExpr::Read(ub(pv_ub, c(0), dv)),
    };
    fin.push(vec_st(ub(cb, c(0), dv), c(dv), cons));
    if !online {
        fin.push(setf(V, Mte2, EV_PV));
    }
    if !ext_ids.is_empty() {
        for (b, tt) in &ext_ids {
            fin.push(Stmt::Copy {
                pipe: Mte2,
                src: reg(Loc::Gm(*tt), tile_off(), dv),
                dst: ub(*b, c(0), dv),
                rows: v(rc),
                cols: c(dv),
            });
        }
        fin.push(setf(Mte2, V, EV_ONCE));
        fin.push(waitf(Mte2, V, EV_ONCE));
    }
    for (b, e) in &epi {
        fin.push(vec_st(ub(*b, c(0), dv), c(dv), e.clone()));
    }
    for (b, e) in &elem_all {
        fin.push(vec_st(srow(*b), c(1), e.clone()));
    }
    fin.push(setf(V, Mte3, EV_OUT));
    fin.push(waitf(V, Mte3, EV_OUT));
    for (x, tt) in &stored {
        if let Some((b, _)) = otiles.get(x) {
            fin.push(Stmt::Copy {
                pipe: Mte3,
                src: ub(*b, c(0), dv),
                dst: reg(Loc::Gm(*tt), tile_off(), dv),
                rows: v(rc),
                cols: c(dv),
            });
        } else if let Some(b) = rowb.get(x) {
            fin.push(Stmt::Copy {
                pipe: Mte3,
                src: srow(*b),
                dst: reg(Loc::Gm(*tt), add(mul(v(bi), c(s)), row0.clone()), 1),
                rows: v(rc),
                cols: c(1),
            });
        }
    }
    match fl {
        None => {
            // The next task's statistics and results overwrite what MTE3 reads.
            fin.push(setf(Mte3, V, EV_OUT));
            fin.push(waitf(Mte3, V, EV_OUT));
            body.push(Stmt::If { cond: lt(c(0), v(rc)), then: fin });
        }
        Some((ahead, ..)) => {
            // Unless the look-ahead waited for them already: the previous task's stores.
            body.push(Stmt::If { cond: bin(SBin::Eq, v(ahead), c(0)), then: vec![waitf(Mte3, V, EV_OUT)] });
            body.push(Stmt::If { cond: lt(c(0), v(rc)), then: fin });
            body.push(setf(Mte3, V, EV_OUT));
        }
    }
    if let (Some((ahead, ..)), Some((g, _)), Some(tp)) = (fl, gb, tpar) {
        body.push(Stmt::Set { var: g, value: add(v(g), v(nj)) });
        body.push(Stmt::Set { var: tp, value: sub(c(1), v(tp)) });
        vq.push(Stmt::Set { var: g, value: c(0) });
        vq.push(Stmt::Set { var: ahead, value: c(0) });
        vq.push(Stmt::Set { var: tp, value: c(0) });
    }
    vq.push(task_loop(mine.clone(), body));
    vq.extend(drain(&vec_free));
    lb.launch.vector = vq;
    Some(lb.finish("block sizes chosen by the score tiler").map(|l| Tiled {
        launches: vec![l],
        workspaces,
        tuning: Vec::new(),
    }))
}
