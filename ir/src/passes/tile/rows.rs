//! Row-wise vector groups: the members are computed over the rows of the group's parallel space, one block
//! of `Rt` whole rows at a time, so that a member may reduce along its row (RMSNorm's `sum[d](x[t, d]²)`,
//! softmax's row maximum and row sum) and its consumers read the result row-locally.
//!
//! A group of parallel rank `p ≥ 1` qualifies when every member has the shape `rows ++ inner` (`rows` the
//! group's first `p` dims, flattened to `R`; `inner` flattened to `W` columns, `W = 1` without inner axes or
//! with only size-1 ones) and every read is one of:
//! - row-aligned: the first `p` indices are the reader's row variables and the rest are the reader's inner
//!   variables in order (or, inside a reduction, the reduction's variables in order, ranging over the
//!   source's inner axes). The source's rows are copied into UB as an `[Rt, W_src]` block and read with
//!   [`VExpr::Read`], or [`VExpr::ReadRow`] when `W_src = 1` (`rstd[t]`, `m[n, 0]`);
//! - column-broadcast: no row variables, the indices are the reader's inner (or reduction) variables in order
//!   (`w[d]` in `y[t, d]`): copied once before the row loop, read with [`VExpr::ReadCol`];
//! - of a scalar (rank 0): copied once, read with [`VExpr::ReadRow`] of a row-stride-0 region.
//!
//! Axes of size 1 hold no data: where a read fits none of these forms as written, its source's axes of
//! size 1 (each read at 0: the constant or a variable of extent 1) and the reader's columns of extent 1
//! are dropped and the forms tried again (`x[n, 0, d]` of an `[N, 1, D]` source is row-aligned in a member
//! `[N, D, 1]`, `row[0, m]` of a `[1, M]` one a column broadcast); a source of size-1 axes only is one
//! element, read as a scalar.
//!
//! Members read each other the same way, from their UB buffers. A reduction `op[vars](body)` in a member's
//! body (sum, max or min; not nested) becomes a vector statement computing `body` into a `[Rt, W_red]` UB
//! temporary (the reduction variables are its columns; skipped when `body` is a bare row-aligned read,
//! which is reduced in place) and a [`Stmt::Reduce`] along axis 1 into an `[Rt, 1]` temporary, read back
//! with [`VExpr::ReadRow`]. Index variables used as values become [`VExpr::Row`] / [`VExpr::Col`] plus the
//! tile's origin. `Reduce` sums each row in column order, as the interpreter does, so the results are
//! bit-exact.
//!
//! # Gathers
//!
//! A read that fits none of the forms above, whose indices are computed (from data, `x[order[r] / K, m]`,
//! or arithmetic, `c[e - 1]`) or use a looped reduction's variable (below), is gathered from GM (the source
//! must be in GM, not a member of the group):
//! - a row gather when the trailing indices are the tile's column variables in order over axes of their
//!   extents and the leading ones do not use the columns (`x[order[r] / K, m]`, `ys[pos[..], m]`): a vector
//!   statement computes the flat leading index into an `[Rt, 1]` i32 buffer, and one [`Stmt::Gather`] copies
//!   the whole source rows into an `[Rt, W]` buffer;
//! - otherwise an element gather: the flat index per tile element into an i32 buffer (`[Rt, 1]` when no
//!   index uses the columns, `logits[n, target[n]]`, else `[Rt, W]`, `s[t, chosen[t, j]]`), and a gather of
//!   one element per index (`cols = 1`, the source seen as a column of all its elements).
//!
//! The index is computed with the interpreter's bounds semantics: each axis's index that is not provably in
//! range (a variable whose extent fits the axis, or such a constant) is checked against its own axis, and
//! any miss makes the flat index -1, which the gather reports as `Code::IndexOutOfRange` at the load's span
//! (as the interpreter does; a flat check alone would let `[0, V]` through as `[1, 0]`). A gather under
//! `where` conditions uses index 0 where they are false — the interpreter never evaluates the load there —
//! so a masked lane neither faults nor reads out of bounds. (A condition that depends on columns the
//! gather does not have — a row gather under a per-column `where` — is refused.) The hand-off, in the
//! V phase of a block:
//!
//! ```text
//! vector idx = where(guard, where(in range per axis, flat, -1), 0)
//! set/wait V->S #3                         (the scalar unit reads the indices)
//! gather.MTE2 src[idx] -> g
//! set/wait MTE2->V #3                      (the vector unit reads g)
//! ```
//!
//! A reduction whose body uses the member's own columns (`y[t, m] = sum[j](w[t, j] * ys[pos[t * K + j],
//! m])`) is looped: an identity fill of an `[Rt, W]` accumulator, then a scalar loop over the reduction
//! variables (first outermost, as the interpreter's) that computes the body over the tile (gathering what
//! it reads at the loop variable) and folds it in with an accumulating one-column `Reduce` — the
//! interpreter's accumulation, in its order, so the results are bit-exact.
//!
//! The group's own row axes are tried first with direct reads only; then `1..=parallel` leading axes with
//! gathers and looped reductions (a group `[T, E]` whose member reads `groups[t, g]` under a sum over `g`
//! becomes one row axis with `E` columns and a loop over `g`); last, for a group no form above takes, the
//! same with gathers of plain reads too (a transposition `x[a, c, b]`, a broadcast over some row axes
//! `g[n, 0]` in `y[b, n, m]`, `concat`'s second operand): correct, one element (or row) at a time, and only
//! where the group would otherwise have no template at all.
//!
//! The launch splits the row blocks across the vector cores (core `i` takes blocks `i`, `i + cores`, ...; on
//! a target with `contiguous_chunks`, the host, a run of consecutive blocks, slot 1 the block after slot 0's)
//! with the loop, slots and flag discipline of the elementwise template ([`super::vector`]):
//!
//! ```text
//! prelude: copy.MTE2 column-broadcast and scalar inputs; set/wait MTE2->V #2
//! for off in core*Rt .. R step 2*cores*Rt:          (slot 0 at off, slot 1 at off + cores*Rt)
//!   wait V->MTE2 #s;  copy.MTE2 row-aligned inputs -> in[s];  set MTE2->V #s
//!   wait MTE2->V #s;  wait MTE3->V #s;  members (with their reductions and gathers, above);
//!   set V->MTE2 #s;  set V->MTE3 #s
//!   wait V->MTE3 #s;  copy.MTE3 stored members -> GM;  set MTE3->V #s
//! ```
//!
//! The gather and accumulator buffers have one slot: the block's V phase waits for its gathers, so the next
//! block's gather (issued after the scalar unit waited for that block's index) cannot overtake a read.
//!
//! # Rows wider than UB: column chunks, several passes
//!
//! When not even one row of every buffer fits in UB (vocabulary-sized rows: softmax or cross-entropy over
//! 32000 or 152064 columns), the rows are walked in chunks of `Wc` columns (the widest multiple of 16 whose
//! buffers fit, with blocks of `Rt ≤ 8` rows; the last chunk partial), in several passes over the columns.
//! Members of the row width are never stored in UB whole: wherever one is read it is recomputed from its
//! body, chunk by chunk, from the inputs re-read from GM in each pass. Members of width 1 (per row) keep an
//! `[Rt, 1]` buffer; each is complete after pass `k`: the latest pass of the per-row values it reads (through
//! recomputed members too), or of its reductions, a reduction running in the pass after everything its body
//! reads is complete. A reduction folds each chunk into its `[Rt, 1]` accumulator (an identity fill before
//! the pass, then `Reduce { accumulate: true }` per chunk, in column order: bit-exact with the interpreter).
//! A stored full-width member is computed and written chunk by chunk in the pass after its per-row inputs are
//! complete. Softmax: pass 1 the row max, pass 2 the sum of `exp(x - m)`, pass 3 `y`; cross-entropy: max,
//! sum, then `lse` and `loss` per row (its `logits[n, target[n]]` an element gather, as above), `dlogits` in
//! pass 3. The per-core program (events 0/1 the chunk slots, 2 the per-row inputs, 3 the gathers, 4 and 5
//! the block's per-row loads and stores):
//!
//! ```text
//! prelude: copy.MTE2 scalar inputs; set/wait MTE2->V #2
//! set V->MTE2 #4;  set MTE3->V #5
//! for off in core*Rt .. R step cores*Rt:
//!   wait V->MTE2 #4;  copy.MTE2 per-row inputs (target[n]);  set/wait MTE2->V #2;  wait MTE3->V #5
//!   per-row members complete before any pass
//!   for pass k in 1..=passes:
//!     fill the pass's accumulators with the identity
//!     set V->MTE2 #0, #1;  set MTE3->V #0, #1
//!     for col in 0 .. W step 2*Wc:                     (slot 0 at col, slot 1 at col + Wc)
//!       wait V->MTE2 #s;  copy.MTE2 row-width and column-broadcast input chunks -> in[s];  set MTE2->V #s
//!       wait MTE2->V #s;  wait MTE3->V #s
//!       per reduction of pass k: body -> tmp;  reduce (accumulate) tmp -> acc
//!       per stored full-width member of pass k: body -> out[s]
//!       set V->MTE2 #s;  set V->MTE3 #s
//!       wait V->MTE3 #s;  copy.MTE3 out[s] -> GM;  set MTE3->V #s
//!     wait V->MTE2 #0, #1;  wait MTE3->V #0, #1       (drain: the next pass primes again)
//!     per-row members complete after pass k (their gathers as above)
//!   set V->MTE2 #4;  set/wait V->MTE3 #5;  copy.MTE3 stored per-row members -> GM;  set MTE3->V #5
//! wait V->MTE2 #4;  wait MTE3->V #5
//! ```
//!
//! Chunked mode takes: members of the row width `W` (no reductions, no gathers) or of width 1; reductions
//! of width `W`, not looped, whose loads are direct; element gathers of one element per row outside the
//! reductions; inputs read row-aligned (width `W` or 1), column-broadcast over `W`, or scalar; at most 8
//! passes. Tile hints are not applied in this mode.
//!
//! Not handled (the function returns `None`): segments, reductions across rows (a column reduction like
//! RMSNorm backward's `dw[d] = sum[t](..)`) and reads at permuted plain variables (left to a template that
//! copies blocks), nested reductions and reductions inside an index, argmax and argmin other than in one pass
//! over a whole row that fits UB (their result is the first extreme's position, so there is no chunked or
//! looped form: a row too wide for UB is E0606), gathers from a
//! member of the group or among more than `i32::MAX` rows (elements, for an element gather); and, for rows
//! too wide for UB, anything outside the chunked mode's forms above (a row gather, a looped reduction, a gather in a
//! full-width member or inside a reduction, a reduction in a full-width member, members of several widths).
//! An online (running max, rescaled sum) variant would save softmax's first pass; it is not done.

use super::{bin, buf_region, c, v, GmPlan, LaunchBuilder};
use crate::diag::Diagnostic;
use crate::dtype::{DType, ScalarTy};
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// How a value is brought into UB and read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `[Rt, width]` per row block (a member's own buffer, or a row-aligned input).
    Rows,
    /// `[1, width]`, once.
    Cols,
    /// One element, once.
    Scalar,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Src {
    kind: Kind,
    width: i64,
}

/// A reduction of a member's body, in traversal order.
#[derive(Clone, Debug)]
struct Red {
    width: i64,
    dtype: DType,
    /// The body is a bare row-aligned read of width `width`: reduced in place, no temporary.
    direct: bool,
    /// The body reads the member's own columns: a scalar loop over the reduction variables (their extents
    /// here), accumulating into an `[Rt, width]` buffer (`width` the member's columns).
    looped: Option<Vec<i64>>,
    /// An argmax or argmin: one pass over the whole row (never looped or chunked), its result the i32
    /// position in the row, which is the flat position over the reduction variables (the first outermost).
    index: bool,
}

impl Red {
    /// Whether the body is computed into a temporary first: a looped f32 reduction folds each step's body
    /// straight into its accumulator (`acc = acc + body`, or max/min: one elementwise pass, the reduction's
    /// order and NaN rules), others reduce the temporary unless the body is direct.
    fn needs_tmp(&self) -> bool {
        !(self.direct || self.looped.is_some() && self.dtype == DType::F32)
    }
}

/// How one load of a member is read, in traversal order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum LoadPlan {
    /// From the source's UB copy, as its [`Src`] says.
    Direct,
    /// Gathered from GM (`Gather` number).
    Gather(usize),
}

/// A gather from GM: an index computed by the vector unit into an `[Rt, idx_width]` i32 buffer, then a
/// [`Stmt::Gather`] into an `[Rt, width]` buffer.
#[derive(Clone, Debug)]
struct Gat {
    src: ValueId,
    /// A row gather (the source's trailing axes are the tile's columns, read whole); else an element gather.
    row: bool,
    /// The indices do not use the tile's columns: one index per row.
    row_only: bool,
    width: i64,
    idx_width: i64,
}

/// What the analysis found in one member, in traversal order (the translation walks the same order).
#[derive(Clone, Debug, Default)]
struct Plan {
    reds: Vec<Red>,
    gathers: Vec<Gat>,
    loads: Vec<LoadPlan>,
}

/// The columns of the tile an expression is evaluated over: the variables that index them, with extents.
#[derive(Clone, Debug)]
struct Cols {
    vars: Vec<usize>,
    extents: Vec<i64>,
}

impl Cols {
    fn width(&self) -> i64 {
        prod(&self.extents)
    }
}

/// What the analysis of one member needs.
struct Member<'a> {
    g: &'a Graph,
    b: &'a Binding,
    p: usize,
    rows: &'a [i64],
    /// Evaluated extents of every index variable of the member.
    ext: Vec<i64>,
    /// Which gathers (and whether looped reductions) may be used.
    allow: Gathers,
}

/// The reads a row-wise attempt may gather from GM, in the order the attempts are made.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Gathers {
    /// None: direct reads only (no looped reductions either).
    No,
    /// Reads at computed indices (data, arithmetic) or a looped reduction's variable.
    Computed,
    /// Any read, plain variables in another order too (a transposition, a broadcast over some row axes),
    /// one element at a time: the last resort, for groups no other form takes.
    Plain,
}

fn dtype_of(t: ScalarTy) -> Option<DType> {
    match t {
        ScalarTy::F32 => Some(DType::F32),
        ScalarTy::I32 => Some(DType::I32),
        ScalarTy::Bool => None,
    }
}

fn eval_dims(b: &Binding, dims: &[crate::dim::Dim]) -> Option<Vec<i64>> {
    dims.iter().map(|d| b.eval(d).ok()).collect()
}

/// The product of `xs`, saturating (a size that large never fits, and is rejected by the UB check).
fn prod(xs: &[i64]) -> i64 {
    xs.iter().try_fold(1i64, |a, x| a.checked_mul(*x)).unwrap_or(i64::MAX)
}

fn is_var(e: &Expr, k: usize) -> bool {
    matches!(e.kind, ExprKind::Var(x) if x.index() == k)
}

/// Whether `e` uses one of the variables `vars` (or a segment, conservatively).
fn mentions(e: &Expr, vars: &[usize]) -> bool {
    let mut found = false;
    e.walk(&mut |x| match &x.kind {
        ExprKind::Var(v) if vars.contains(&v.index()) => found = true,
        ExprKind::Segment { .. } => found = true,
        _ => {}
    });
    found
}

/// The trailing axes of a gather source that are the tile's columns (`None`: an element gather): the last
/// indices are the columns' variables in order over axes of the columns' extents, and the others do not use
/// the columns.
fn row_split(idx: &[Expr], sdims: &[i64], cols: &Cols) -> Option<usize> {
    let nc = cols.vars.len();
    if nc == 0 || idx.len() <= nc || sdims.len() != idx.len() {
        return None;
    }
    let q = idx.len() - nc;
    let tail = idx[q..].iter().zip(&cols.vars).all(|(e, k)| is_var(e, *k)) && sdims[q..] == *cols.extents;
    (tail && idx[..q].iter().all(|e| !mentions(e, &cols.vars))).then_some(q)
}

/// Whether the indices `idx` over axes `dims` (size-1 axes dropped, see [`Member::squeezed`]) are the
/// columns' variables of extent other than 1, in order, over axes of their extents (`false` if no column
/// is left: that is not a read of the columns).
fn columns_in_order(idx: &[&Expr], dims: &[i64], cols: &Cols) -> bool {
    let kept: Vec<(usize, i64)> =
        cols.vars.iter().zip(&cols.extents).filter(|(_, e)| **e != 1).map(|(v, e)| (*v, *e)).collect();
    !kept.is_empty()
        && idx.len() == kept.len()
        && dims.len() == kept.len()
        && idx.iter().zip(dims).zip(&kept).all(|((x, d), (k, e))| is_var(x, *k) && d == e)
}

impl Member<'_> {
    /// How `src` is read at `idx` under the columns `cols`, or `None` if the read fits no pattern.
    fn classify(&self, src: ValueId, idx: &[Expr], cols: &Cols) -> Option<Src> {
        let s = self.g.node(src);
        let sdims = eval_dims(self.b, &s.shape)?;
        if sdims.is_empty() {
            return Some(Src { kind: Kind::Scalar, width: 1 });
        }
        if idx.len() != sdims.len() {
            return None;
        }
        let p = self.p;
        if sdims.len() >= p && sdims[..p] == *self.rows && (0..p).all(|k| is_var(&idx[k], k)) {
            let inner = &sdims[p..];
            let w = prod(inner);
            if w == 1 {
                // Every inner index is 0: a constant 0 or a variable of extent 1.
                let zero = |e: &Expr| match e.kind {
                    ExprKind::Const(Const::I32(0)) => true,
                    ExprKind::Var(x) => self.ext.get(x.index()) == Some(&1),
                    _ => false,
                };
                return idx[p..].iter().all(zero).then_some(Src { kind: Kind::Rows, width: 1 });
            }
            let aligned = idx.len() - p == cols.vars.len()
                && idx[p..].iter().zip(&cols.vars).all(|(e, k)| is_var(e, *k))
                && inner == cols.extents.as_slice();
            if aligned {
                return Some(Src { kind: Kind::Rows, width: w });
            }
            // Axes of size 1 hold no data: the source's read at index 0 there, the columns' of extent 1,
            // dropped on both sides (`x[n, 0, d]` of an `[N, 1, D]` source in a member `[N, D, 1]`), leave the
            // same elements in the same order.
            let (ki, kd) = self.squeezed(&idx[p..], inner)?;
            return columns_in_order(&ki, &kd, cols).then_some(Src { kind: Kind::Rows, width: w });
        }
        let bcast = !cols.vars.is_empty()
            && idx.len() == cols.vars.len()
            && idx.iter().zip(&cols.vars).all(|(e, k)| is_var(e, *k))
            && sdims == cols.extents;
        if bcast {
            return Some(Src { kind: Kind::Cols, width: cols.width() });
        }
        // The same with the axes of size 1 dropped (`row[0, m]` of a `[1, M]` source in `y[n, m]`).
        let (ki, kd) = self.squeezed(idx, &sdims)?;
        if ki.is_empty() {
            // Every axis of size 1: one element, at offset 0, as a scalar's.
            return Some(Src { kind: Kind::Scalar, width: 1 });
        }
        columns_in_order(&ki, &kd, cols).then_some(Src { kind: Kind::Cols, width: cols.width() })
    }

    /// `idx` and `dims` without the axes of size 1, each of which must be read at 0 (a constant 0 or a
    /// variable of extent 1); `None` if one is not.
    fn squeezed<'e>(&self, idx: &'e [Expr], dims: &[i64]) -> Option<(Vec<&'e Expr>, Vec<i64>)> {
        let zero = |e: &Expr| match e.kind {
            ExprKind::Const(Const::I32(0)) => true,
            ExprKind::Var(x) => self.ext.get(x.index()) == Some(&1),
            _ => false,
        };
        let mut ki = Vec::new();
        let mut kd = Vec::new();
        for (e, d) in idx.iter().zip(dims) {
            if *d == 1 {
                if !zero(e) {
                    return None;
                }
            } else {
                ki.push(e);
                kd.push(*d);
            }
        }
        Some((ki, kd))
    }

    /// Checks `e` under `cols` (and the looped reductions' variables `scalars`), recording the reads in
    /// `srcs` and the reductions, gathers and loads in `plan`.
    fn scan(
        &self,
        e: &Expr,
        cols: &Cols,
        scalars: &[usize],
        in_reduce: bool,
        srcs: &mut BTreeMap<ValueId, Src>,
        plan: &mut Plan,
    ) -> Option<()> {
        match &e.kind {
            ExprKind::Const(_) => Some(()),
            ExprKind::Dim(d) => self.b.eval(d).ok().map(|_| ()),
            ExprKind::Var(x) => {
                let k = x.index();
                (k < self.p || cols.vars.contains(&k) || scalars.contains(&k)).then_some(())
            }
            ExprKind::Load { src, idx } => {
                let at = plan.loads.len();
                plan.loads.push(LoadPlan::Direct);
                if let Some(s) = self.classify(*src, idx, cols) {
                    if *srcs.entry(*src).or_insert(s) == s {
                        return Some(());
                    }
                }
                // A gather from GM: for an index computed from data or arithmetic, or a looped reduction's
                // variable; a read at plain variables in another order (a transposition, a reduction across
                // rows) is for a template that copies blocks, not one element at a time, unless no form
                // without it tiles the group (`Gathers::Plain`, the last attempt).
                let plain = idx.iter().all(|x| match x.kind {
                    ExprKind::Var(v) => !scalars.contains(&v.index()),
                    ExprKind::Const(_) => true,
                    _ => false,
                });
                if self.allow == Gathers::No || plain && self.allow != Gathers::Plain {
                    return None;
                }
                let sdims = eval_dims(self.b, &self.g.node(*src).shape)?;
                let q = row_split(idx, &sdims, cols);
                // The gather's row index is computed in an i32 buffer: the rows it picks among (all the
                // elements, for an element gather) must be numbered in 32 bits. Each row's offset, index
                // times row length, is 64-bit.
                let picked = prod(&sdims[..q.unwrap_or(sdims.len())]);
                if sdims.is_empty() || idx.len() != sdims.len() || prod(&sdims) <= 0 || picked > i32::MAX as i64 {
                    return None;
                }
                let row_only = q.is_some() || idx.iter().all(|x| !mentions(x, &cols.vars));
                let ictx = if row_only { Cols { vars: vec![], extents: vec![] } } else { cols.clone() };
                let width = if q.is_some() || !row_only { cols.width() } else { 1 };
                plan.loads[at] = LoadPlan::Gather(plan.gathers.len());
                plan.gathers.push(Gat { src: *src, row: q.is_some(), row_only, width, idx_width: ictx.width() });
                for x in &idx[..q.unwrap_or(idx.len())] {
                    // No reductions inside an index (`in_reduce`).
                    self.scan(x, &ictx, scalars, true, srcs, plan)?;
                }
                Some(())
            }
            ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => self.scan(a, cols, scalars, in_reduce, srcs, plan),
            ExprKind::Binary(_, a, x) => {
                self.scan(a, cols, scalars, in_reduce, srcs, plan)?;
                self.scan(x, cols, scalars, in_reduce, srcs, plan)
            }
            ExprKind::Select(cnd, a, x) => {
                self.scan(cnd, cols, scalars, in_reduce, srcs, plan)?;
                self.scan(a, cols, scalars, in_reduce, srcs, plan)?;
                self.scan(x, cols, scalars, in_reduce, srcs, plan)
            }
            ExprKind::Reduce { op, vars, body } => {
                if in_reduce || vars.is_empty() {
                    return None;
                }
                let index = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
                let vs: Vec<usize> = vars.iter().map(|x| x.index()).collect();
                let extents: Vec<i64> = vs.iter().map(|k| self.ext.get(*k).copied()).collect::<Option<_>>()?;
                if vs.iter().any(|k| *k < self.p || cols.vars.contains(k) || scalars.contains(k))
                    || extents.iter().any(|x| *x <= 0)
                {
                    return None;
                }
                let dtype = dtype_of(body.ty)?;
                let at = plan.reds.len();
                if mentions(body, &cols.vars) {
                    // The body reads the member's columns: loop over the reduction variables (not for an
                    // index reduction, which has no accumulating form).
                    if self.allow == Gathers::No || prod(&extents) == i64::MAX || index {
                        return None;
                    }
                    plan.reds.push(Red {
                        width: cols.width(),
                        dtype,
                        direct: false,
                        looped: Some(extents),
                        index: false,
                    });
                    let sc: Vec<usize> = scalars.iter().copied().chain(vs).collect();
                    return self.scan(body, cols, &sc, true, srcs, plan);
                }
                let inner = Cols { vars: vs, extents };
                plan.reds.push(Red { width: inner.width(), dtype, direct: false, looped: None, index });
                let first_load = plan.loads.len();
                self.scan(body, &inner, scalars, true, srcs, plan)?;
                if let ExprKind::Load { src, .. } = &body.kind {
                    plan.reds[at].direct = plan.loads.get(first_load) == Some(&LoadPlan::Direct)
                        && srcs.get(src).is_some_and(|s| s.kind == Kind::Rows && s.width > 1);
                }
                Some(())
            }
            ExprKind::Segment { .. } => None,
        }
    }
}

/// The launch for a row-wise vector group, or `None` if the group does not have that form (see the module
/// documentation); when even one row of every buffer does not fit in UB, the column-chunked mode.
///
/// The group's own row axes are tried first with only direct reads (the form the template had before
/// gathers); then `1..=parallel` leading axes as rows (the rest become columns, so that a row gather reads
/// whole rows and a reduction may read the group's later axes), with gathers and looped reductions; then
/// with gathers of plain reads as well.
pub fn rows(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Launch, Diagnostic>> {
    rows_tuned(g, group, name, gm, target, b).map(|r| r.map(|(l, _)| l))
}

/// [`rows`], choosing the row block with the cost model: every power of two below the most rows that fit
/// UB (and that most) is built and ranked, and the fastest kept; with the candidates weighed. A tile hint,
/// or rows too wide for UB (walked in column chunks), leave nothing to choose.
pub fn rows_tuned(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<(Launch, Vec<super::Candidate>), Diagnostic>> {
    let p = group.parallel;
    let most = std::cell::Cell::new(None);
    // Each attempt reports its own most rows (an attempt that fails later must not leave its figure).
    let attempt = |q: usize, allow: Gathers| {
        most.set(None);
        rows_at(g, group, name, gm, target, b, q, allow, None, &most)
    };
    let (q, allow, first) = match attempt(p, Gathers::No) {
        Some(r) => (p, Gathers::No, r),
        None => [Gathers::Computed, Gathers::Plain]
            .into_iter()
            .find_map(|a| (1..=p).find_map(|q| attempt(q, a).map(|r| (q, a, r))))?,
    };
    let first = match first {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    let Some(lo) = most.get().filter(|lo| *lo > 1) else { return Some(Ok((first, Vec::new()))) };
    let tuned = super::tune(
        name,
        gm,
        target,
        super::powers_below(0, lo),
        |rt| format!("rows {rt}"),
        |rt| rows_at(g, group, name, gm, target, b, q, allow, Some(rt), &most).and_then(Result::ok),
    );
    Some(tuned.map(|t| t.unwrap_or((first, Vec::new()))))
}

/// The launch with the first `p` axes of the group's space as rows; `allow`: the gathers (and looped
/// reductions) it may use.
#[allow(clippy::too_many_arguments)]
fn rows_at(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
    p: usize,
    allow: Gathers,
    forced: Option<i64>,
    most: &std::cell::Cell<Option<i64>>,
) -> Option<Result<Launch, Diagnostic>> {
    if group.kind != GroupKind::Vector || p == 0 || group.space.len() < p || group.nodes.is_empty() {
        return None;
    }
    let rows_dims = eval_dims(b, &group.space[..p])?;
    let total = prod(&rows_dims);
    if rows_dims.iter().any(|d| *d < 0) {
        return None;
    }

    // Analysis: every member, its columns, its reads, reductions and gathers.
    let mut srcs: BTreeMap<ValueId, Src> = BTreeMap::new();
    let mut members: Vec<(ValueId, Cols, Plan, Vec<i64>)> = Vec::new();
    for m in &group.nodes {
        let node = g.node(*m);
        let NodeKind::Compute { vars, body } = &node.kind else { return None };
        let dims = eval_dims(b, &node.shape)?;
        if dims.len() < p || dims[..p] != *rows_dims {
            return None;
        }
        let ext: Vec<i64> = vars.iter().map(|x| b.eval(&x.extent).ok()).collect::<Option<_>>()?;
        let cols = Cols { vars: (p..dims.len()).collect(), extents: dims[p..].to_vec() };
        if cols.width() <= 0 {
            return None;
        }
        let mem = Member { g, b, p, rows: &rows_dims, ext, allow };
        let mut plan = Plan::default();
        mem.scan(body, &cols, &[], false, &mut srcs, &mut plan)?;
        members.push((*m, cols, plan, mem.ext));
    }
    // Members are read as rows of their own width; gathers read GM tensors that are not members.
    for (m, cols, _, _) in &members {
        if srcs.get(m).is_some_and(|s| *s != Src { kind: Kind::Rows, width: cols.width() }) {
            return None;
        }
    }
    for (_, _, plan, _) in &members {
        if plan.gathers.iter().any(|x| group.nodes.contains(&x.src) || !gm.of.contains_key(&x.src)) {
            return None;
        }
    }
    let inputs: Vec<(ValueId, Src)> =
        srcs.iter().filter(|(s, _)| !group.nodes.contains(s)).map(|(s, k)| (*s, *k)).collect();
    if inputs.iter().any(|(s, _)| !gm.of.contains_key(s)) || group.stored.iter().any(|s| !gm.of.contains_key(s)) {
        return None;
    }
    if inputs.iter().any(|(_, s)| s.width <= 0) {
        return None;
    }

    // Rows per block: the most whose buffers fit in UB (as the planner places them), at most an even share.
    let ub = target.memory("ub")?;
    let align = ub.align.max(1);
    let size = |x: ValueId| g.node(x).dtype.size_bytes() as u64;
    let fits = |rt: u64| -> bool {
        let mut at = 0u64;
        let mut place = |bytes: u64, slots: u64| {
            at = at.saturating_add(bytes.div_ceil(align).saturating_mul(align).saturating_mul(slots))
        };
        for (s, k) in &inputs {
            match k.kind {
                Kind::Rows => place(rt.saturating_mul(k.width as u64).saturating_mul(size(*s)), 2),
                Kind::Cols => place((k.width as u64).saturating_mul(size(*s)), 1),
                Kind::Scalar => place(size(*s), 1),
            }
        }
        for (m, cols, plan, _) in &members {
            let slots = if group.stored.contains(m) { 2 } else { 1 };
            place(rt.saturating_mul(cols.width() as u64).saturating_mul(size(*m)), slots);
            for r in &plan.reds {
                let sz = r.dtype.size_bytes() as u64;
                if r.needs_tmp() {
                    place(rt.saturating_mul(r.width as u64).saturating_mul(sz), 1);
                }
                let out = if r.looped.is_some() { r.width as u64 } else { 1 };
                place(rt.saturating_mul(out).saturating_mul(sz), 1);
            }
            for x in &plan.gathers {
                place(rt.saturating_mul(x.idx_width as u64).saturating_mul(4), 1);
                place(rt.saturating_mul(x.width as u64).saturating_mul(size(x.src)), 1);
            }
        }
        // One row always may (otherwise the chunked mode below); more only within the target's block size.
        at <= ub.usable() && (rt <= 1 || target.row_block_bytes.is_none_or(|cap| at <= cap))
    };
    if !fits(1) {
        // A tile hint asks for blocks of whole rows, which cannot be had here: an error, not a chunked
        // program that ignores it.
        if let Some(h) = super::tile_hints(g, group).first() {
            return Some(Err(Diagnostic::error(
                crate::diag::Code::OverCapacity,
                h.span,
                format!(
                    "{} asks for blocks of whole rows, but one row of launch `{name}` does not fit the {} bytes of \
                     UB of the target `{}` (without the hint, kc walks such rows in column chunks)",
                    h.text,
                    ub.usable(),
                    target.name
                ),
            )
            .with_label("the hint that chose the tile sizes")));
        }
        let m: Vec<(ValueId, &Cols, &Plan, &[i64])> =
            members.iter().map(|(m, c, p, e)| (*m, c, p, e.as_slice())).collect();
        return chunked(g, group, name, gm, target, b, &rows_dims, &srcs, &m, &inputs);
    }
    let share = (total.max(1) as u64).div_ceil(target.vector_cores.max(1) as u64);
    let (mut lo, mut hi) = (1u64, share.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let hint = match hinted_rows(&super::tile_hints(g, group), g, b, &rows_dims) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    // Without a hint, the most rows that fit (reported through `most` for tuning) or the block asked for.
    let rt = match &hint {
        Some((r, _)) => (*r).min(total.max(1)),
        None => {
            most.set(Some(lo as i64));
            forced.map_or(lo as i64, |f| f.clamp(1, lo as i64))
        }
    };
    let blocks = total / rt + (total % rt != 0) as i64;
    let mut cores = (target.vector_cores as i64).min(blocks).max(1) as u32;
    // With contiguous parts (the host), each core takes `per_core` consecutive row blocks (the last core
    // fewer): a thread's rows follow one another in memory, which the hardware prefetchers follow.
    let per_core = (blocks.max(1) + cores as i64 - 1) / cores as i64;
    if target.contiguous_chunks {
        cores = ((blocks.max(1) + per_core - 1) / per_core).max(1) as u32;
    }

    // Buffers.
    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));
    // Each value's buffer and slot count.
    let mut bufs: BTreeMap<ValueId, (BufId, u32)> = BTreeMap::new();
    for (s, k) in &inputs {
        let (shape, slots) = match k.kind {
            Kind::Rows => (slot_shape(rt as u64, k.width as u64, size(*s), align), 2),
            Kind::Cols => (vec![1, k.width as u64], 1),
            Kind::Scalar => (vec![1], 1),
        };
        let id = lb.buffer(format!("{}_in", label(*s)), Mem::UB, g.node(*s).dtype, shape, slots);
        bufs.insert(*s, (id, slots));
    }
    // Per member, per reduction: the body temporary (unless direct), the result (and a looped one's loop
    // registers); per gather: the index and the gathered values.
    let mut red_bufs: Vec<Vec<RedBufs>> = Vec::new();
    let mut gat_bufs: Vec<Vec<(BufId, BufId)>> = Vec::new();
    for (m, cols, plan, _) in &members {
        let slots = if group.stored.contains(m) { 2 } else { 1 };
        let shape = slot_shape(rt as u64, cols.width() as u64, size(*m), align);
        let id = lb.buffer(label(*m), Mem::UB, g.node(*m).dtype, shape, slots);
        bufs.insert(*m, (id, slots));
        let mut rb = Vec::new();
        for (i, r) in plan.reds.iter().enumerate() {
            let tmp = r.needs_tmp().then(|| {
                lb.buffer(format!("{}_red{i}_body", label(*m)), Mem::UB, r.dtype, vec![rt as u64, r.width as u64], 1)
            });
            let ow = if r.looped.is_some() { r.width as u64 } else { 1 };
            let od = if r.index { DType::I32 } else { r.dtype };
            let out = lb.buffer(format!("{}_red{i}", label(*m)), Mem::UB, od, vec![rt as u64, ow], 1);
            let svars = match &r.looped {
                Some(ex) => std::iter::once(lb.svar(format!("{}_red{i}_it", label(*m))))
                    .chain((0..ex.len()).map(|k| lb.svar(format!("{}_red{i}_v{k}", label(*m)))))
                    .collect(),
                None => Vec::new(),
            };
            rb.push(RedBufs { tmp, out, svars });
        }
        red_bufs.push(rb);
        let mut gb = Vec::new();
        for (i, x) in plan.gathers.iter().enumerate() {
            let ib = lb.buffer(
                format!("{}_g{i}_idx", label(*m)),
                Mem::UB,
                DType::I32,
                vec![rt as u64, x.idx_width as u64],
                1,
            );
            let db = lb.buffer(
                format!("{}_g{i}", label(*m)),
                Mem::UB,
                g.node(x.src).dtype,
                vec![rt as u64, x.width as u64],
                1,
            );
            gb.push((ib, db));
        }
        gat_bufs.push(gb);
    }
    let off = lb.svar("off");
    let len = lb.svar("len");

    let mut prog = Vec::new();
    // Column-broadcast and scalar inputs once, before the loop.
    let mut once = false;
    for (s, k) in &inputs {
        if k.kind == Kind::Rows {
            continue;
        }
        once = true;
        prog.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: Region { loc: Loc::Gm(gm.of[s]), offset: c(0), row_stride: c(0) },
            dst: buf_region(bufs[s].0, 0, 0),
            rows: c(1),
            cols: c(k.width),
        });
    }
    if once {
        prog.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
    }
    for s in 0..2u8 {
        prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
        prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
    }
    // Slot 1's block follows slot 0's: the next of the core's consecutive blocks, or `cores` blocks on.
    let stride = if target.contiguous_chunks { rt } else { cores as i64 * rt };
    let row_strides: Vec<i64> = (0..p).map(|k| prod(&rows_dims[k + 1..])).collect();
    let mut slots: [Vec<Stmt>; 2] = Default::default();
    for slot in 0..2u32 {
        let ev = slot as u8;
        let mut st = Vec::new();
        st.push(Stmt::Set { var: len, value: bin(SBin::Min, c(rt), bin(SBin::Sub, c(total), v(off))) });
        st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
        for (s, k) in &inputs {
            if k.kind == Kind::Rows {
                st.push(Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: Region {
                        loc: Loc::Gm(gm.of[s]),
                        offset: bin(SBin::Mul, v(off), c(k.width)),
                        row_stride: c(k.width),
                    },
                    dst: buf_region(bufs[s].0, slot, k.width),
                    rows: v(len),
                    cols: c(k.width),
                });
            }
        }
        st.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
        for (((m, cols, plan, ext), rb), gb) in members.iter().zip(&red_bufs).zip(&gat_bufs) {
            let NodeKind::Compute { body: e, .. } = &g.node(*m).kind else { return None };
            let mut tr = Translate {
                g,
                b,
                gm,
                srcs: &srcs,
                bufs: &bufs,
                plan,
                reds: rb,
                gbufs: gb,
                next: 0,
                next_load: 0,
                slot,
                off,
                len,
                rows: &rows_dims,
                row_strides: &row_strides,
                ext,
                scalars: Vec::new(),
                guard: Guard::True,
                pre: Vec::new(),
                chunk: None,
            };
            let expr = tr.vexpr(e, cols)?;
            st.append(&mut tr.pre);
            let (buf, slots) = bufs[m];
            st.push(Stmt::Vector {
                dst: buf_region(buf, if slots > 1 { slot } else { 0 }, cols.width()),
                rows: v(len),
                cols: c(cols.width()),
                expr,
            });
        }
        st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
        st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
        for m in &group.stored {
            let (buf, _) = *bufs.get(m)?;
            let w = members.iter().find(|(x, _, _, _)| x == m)?.1.width();
            st.push(Stmt::Copy {
                pipe: Pipe::Mte3,
                src: buf_region(buf, slot, w),
                dst: Region { loc: Loc::Gm(gm.of[m]), offset: bin(SBin::Mul, v(off), c(w)), row_stride: c(w) },
                rows: v(len),
                cols: c(w),
            });
        }
        st.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
        slots[slot as usize] = st;
    }
    let base = lb.svar("base");
    if target.contiguous_chunks {
        let part = per_core * rt;
        let lo = bin(SBin::Mul, SExpr::Core, c(part));
        let hi = bin(SBin::Min, bin(SBin::Add, bin(SBin::Mul, SExpr::Core, c(part)), c(part)), c(total));
        prog.push(super::two_slot_loop_to(base, off, lo, hi, stride, slots));
    } else {
        prog.push(super::two_slot_loop(base, off, bin(SBin::Mul, SExpr::Core, c(rt)), total, stride, slots));
    }
    for s in 0..2u8 {
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
    }
    lb.launch.vector = prog;
    Some(match &hint {
        Some((_, h)) => lb.finish_at(h.span, &format!("blocks of {rt} rows asked for by {}", h.text)),
        None => lb.finish("row blocks chosen by the tiler"),
    })
}

/// The shape of a slot of `rows × cols` elements of `size` bytes: `[rows, cols]` when its bytes are a
/// multiple of `align` (so that a second slot is aligned too), else flat and padded up to the alignment.
fn slot_shape(rows: u64, cols: u64, size: u64, align: u64) -> Vec<u64> {
    let bytes = rows * cols * size;
    if bytes.is_multiple_of(align) {
        vec![rows, cols]
    } else {
        vec![bytes.div_ceil(align) * align / size.max(1)]
    }
}

/// A reduction's buffers: the body temporary (unless direct), the result, and for a looped one its
/// registers (the flat iteration, then one per reduction variable).
#[derive(Clone, Debug)]
struct RedBufs {
    tmp: Option<BufId>,
    out: BufId,
    svars: Vec<SVar>,
}

/// The condition under which the expression being translated is evaluated (the `where` branches around
/// it), as a vector expression in the current tile's columns; `Unknown` when it cannot be expressed there
/// (then a gather is refused, rather than evaluated where the interpreter would not).
#[derive(Clone, Debug)]
enum Guard {
    True,
    If(VExpr),
    Unknown,
}

impl Guard {
    fn and(&self, c: VExpr) -> Guard {
        match self {
            Guard::True => Guard::If(c),
            Guard::If(g) => Guard::If(ibin(BinOp::And, g.clone(), c)),
            Guard::Unknown => Guard::Unknown,
        }
    }

    /// The guard in a tile whose columns are others (a row-wise one stays valid).
    fn rows_only(&self) -> Guard {
        match self {
            Guard::If(g) if !row_wise(g) => Guard::Unknown,
            x => x.clone(),
        }
    }
}

/// Whether `e` has one value per row (no column index, no per-column read).
fn row_wise(e: &VExpr) -> bool {
    match e {
        VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Scalar(_) | VExpr::Row | VExpr::ReadRow(_) => true,
        VExpr::Col | VExpr::Read(_) | VExpr::ReadCol(_) => false,
        VExpr::Unary(_, a) | VExpr::Cast(_, a) => row_wise(a),
        VExpr::Binary(_, a, b) => row_wise(a) && row_wise(b),
        VExpr::Select(c, a, b) => row_wise(c) && row_wise(a) && row_wise(b),
    }
}

/// The intra-core event the gathers' hand-offs use (0 and 1 are the slots, 2 the prelude).
const GATHER_EVENT: u8 = 3;

/// Translates one member's body for one slot; reductions and gathers emit their statements into `pre`.
struct Translate<'a> {
    g: &'a Graph,
    b: &'a Binding,
    gm: &'a GmPlan,
    srcs: &'a BTreeMap<ValueId, Src>,
    bufs: &'a BTreeMap<ValueId, (BufId, u32)>,
    /// The analysis of the member: its reductions, gathers and loads in traversal order.
    plan: &'a Plan,
    reds: &'a [RedBufs],
    gbufs: &'a [(BufId, BufId)],
    next: usize,
    next_load: usize,
    slot: u32,
    off: SVar,
    len: SVar,
    rows: &'a [i64],
    row_strides: &'a [i64],
    /// The evaluated extents of the member's index variables.
    ext: &'a [i64],
    /// The looped reductions' variables in scope and their registers.
    scalars: Vec<(usize, SVar)>,
    guard: Guard,
    pre: Vec<Stmt>,
    /// Column-chunked mode (see [`chunked`]): the chunk's first column and the context.
    chunk: Option<(SVar, &'a ChunkCtx)>,
}

fn ibin(op: BinOp, a: VExpr, b: VExpr) -> VExpr {
    VExpr::Binary(op, Box::new(a), Box::new(b))
}

fn select(c: VExpr, a: VExpr, b: VExpr) -> VExpr {
    VExpr::Select(Box::new(c), Box::new(a), Box::new(b))
}

/// `(flat / stride) % dim`, skipping the trivial parts.
fn unravel(flat: VExpr, stride: i64, dim: i64, outer: bool) -> VExpr {
    let q = if stride == 1 { flat } else { ibin(BinOp::Div, flat, VExpr::I32(stride)) };
    if outer {
        q
    } else {
        ibin(BinOp::Mod, q, VExpr::I32(dim))
    }
}

/// The value a looped reduction starts from (the interpreter's identity; for an integer max/min, the
/// type's bound, which the first value replaces as "none yet" does).
fn identity(op: ReduceOp, dtype: DType) -> Option<VExpr> {
    Some(match (op, dtype) {
        (ReduceOp::Sum, DType::F32) => VExpr::F32(0.0),
        (ReduceOp::Max, DType::F32) => VExpr::F32(f32::NEG_INFINITY),
        (ReduceOp::Min, DType::F32) => VExpr::F32(f32::INFINITY),
        (ReduceOp::Sum, DType::I32) => VExpr::I32(0),
        (ReduceOp::Max, DType::I32) => VExpr::I32(i32::MIN as i64),
        (ReduceOp::Min, DType::I32) => VExpr::I32(i32::MAX as i64),
        _ => return None,
    })
}

impl Translate<'_> {
    /// The extent of index variable `k` (a row variable's is its row dim).
    fn extent(&self, k: usize) -> Option<i64> {
        if k < self.rows.len() {
            Some(self.rows[k])
        } else {
            self.ext.get(k).copied()
        }
    }

    /// Whether index `e` is always in `0..n`: a variable whose extent is at most `n`, or such a constant.
    fn safe(&self, e: &Expr, n: i64) -> bool {
        match e.kind {
            ExprKind::Var(x) => self.extent(x.index()).is_some_and(|x| (0..=n).contains(&x)),
            ExprKind::Const(Const::I32(c)) => (0..n).contains(&c),
            _ => false,
        }
    }

    /// A load in column-chunked mode: a full-width member is recomputed from its body (inlined, and rounded
    /// to its dtype), anything else is read from its UB copy (a chunk of `wc` columns, a per-row `[Rt, 1]`
    /// value, a scalar).
    fn chunk_load(&mut self, src: ValueId) -> Option<VExpr> {
        let (_, ctx) = self.chunk?;
        if let Some((cols, ext)) = ctx.wide.get(&src) {
            let NodeKind::Compute { body, .. } = &self.g.node(src).kind else { return None };
            let mut tr = Translate {
                g: self.g,
                b: self.b,
                gm: self.gm,
                srcs: self.srcs,
                bufs: self.bufs,
                plan: &ctx.direct,
                reds: &[],
                gbufs: &[],
                next: 0,
                next_load: 0,
                slot: self.slot,
                off: self.off,
                len: self.len,
                rows: self.rows,
                row_strides: self.row_strides,
                ext,
                scalars: Vec::new(),
                guard: Guard::True,
                pre: Vec::new(),
                chunk: self.chunk,
            };
            let e = tr.vexpr(body, cols)?;
            // The member's value is what it stores: a bf16 or f16 member is read rounded, as from its buffer.
            let dtype = self.g.node(src).dtype;
            let e = if matches!(dtype, DType::BF16 | DType::F16) { VExpr::Cast(dtype, Box::new(e)) } else { e };
            return tr.pre.is_empty().then_some(e);
        }
        let s = *self.srcs.get(&src)?;
        let (buf, _) = *self.bufs.get(&src)?;
        Some(match s.kind {
            Kind::Scalar => VExpr::ReadRow(buf_region(buf, 0, 0)),
            Kind::Cols => VExpr::ReadCol(buf_region(buf, self.slot, 0)),
            Kind::Rows if s.width == 1 => VExpr::ReadRow(buf_region(buf, 0, 1)),
            Kind::Rows => VExpr::Read(buf_region(buf, self.slot, ctx.wc)),
        })
    }

    /// A gather of `src[idx]` (the analysis's gather `gi`): the index into an i32 buffer by the vector unit
    /// (an index outside its axis makes the flat index -1, which the gather reports as the interpreter
    /// does; where the guard is false the index is 0, which is safe), then the gather on MTE2.
    fn gather(&mut self, gi: usize, src: ValueId, idx: &[Expr], span: crate::span::Span, cols: &Cols) -> Option<VExpr> {
        let gat = self.plan.gathers.get(gi)?.clone();
        let (ib, db) = *self.gbufs.get(gi)?;
        let sdims = eval_dims(self.b, &self.g.node(src).shape)?;
        let q = if gat.row { idx.len().checked_sub(cols.vars.len())? } else { idx.len() };
        let ictx = if gat.row_only { Cols { vars: vec![], extents: vec![] } } else { cols.clone() };
        let guard = if gat.row_only { self.guard.rows_only() } else { self.guard.clone() };
        let saved = std::mem::replace(&mut self.guard, guard.clone());
        let mut flat: Option<VExpr> = None;
        let mut ok: Option<VExpr> = None;
        for k in 0..q {
            let ix = self.vexpr(&idx[k], &ictx)?;
            if !self.safe(&idx[k], sdims[k]) {
                let lo = ibin(BinOp::Ge, ix.clone(), VExpr::I32(0));
                let hi = ibin(BinOp::Lt, ix.clone(), VExpr::I32(sdims[k]));
                let both = ibin(BinOp::And, lo, hi);
                ok = Some(match ok {
                    Some(o) => ibin(BinOp::And, o, both),
                    None => both,
                });
            }
            let st = prod(&sdims[k + 1..q]);
            let term = if st == 1 { ix } else { ibin(BinOp::Mul, ix, VExpr::I32(st)) };
            flat = Some(match flat {
                Some(f) => ibin(BinOp::Add, f, term),
                None => term,
            });
        }
        self.guard = saved;
        let mut ie = flat?;
        if let Some(o) = ok {
            ie = select(o, ie, VExpr::I32(-1));
        }
        match guard {
            Guard::True => {}
            Guard::If(gd) => ie = select(gd, ie, VExpr::I32(0)),
            Guard::Unknown => return None,
        }
        let iw = gat.idx_width;
        self.pre.push(Stmt::Vector { dst: buf_region(ib, 0, iw), rows: v(self.len), cols: c(iw), expr: ie });
        self.pre.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::S, event: GATHER_EVENT });
        self.pre.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::S, event: GATHER_EVENT });
        let (rows, ncols, dst) = if gat.row {
            (v(self.len), c(gat.width), buf_region(db, 0, gat.width))
        } else {
            (bin(SBin::Mul, v(self.len), c(iw)), c(1), buf_region(db, 0, 1))
        };
        self.pre.push(Stmt::Gather {
            pipe: Pipe::Mte2,
            src: *self.gm.of.get(&src)?,
            src_rows: prod(&sdims[..q]) as u64,
            row_stride: prod(&sdims[q..]) as u64,
            col_offset: c(0),
            index: buf_region(ib, 0, 1),
            dst,
            rows,
            cols: ncols,
            span,
            error: None,
        });
        self.pre.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: GATHER_EVENT });
        self.pre.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: GATHER_EVENT });
        Some(if gat.width == 1 {
            VExpr::ReadRow(buf_region(db, 0, 1))
        } else {
            VExpr::Read(buf_region(db, 0, gat.width))
        })
    }

    fn vexpr(&mut self, e: &Expr, cols: &Cols) -> Option<VExpr> {
        Some(match &e.kind {
            ExprKind::Const(Const::F32(x)) => VExpr::F32(*x),
            ExprKind::Const(Const::I32(x)) => VExpr::I32(*x),
            ExprKind::Const(Const::Bool(x)) => VExpr::Bool(*x),
            ExprKind::Dim(d) => VExpr::I32(self.b.eval(d).ok()?),
            ExprKind::Var(x) => {
                let k = x.index();
                if let Some((_, sv)) = self.scalars.iter().find(|(y, _)| *y == k) {
                    VExpr::Scalar(v(*sv))
                } else if k < self.rows.len() {
                    let flat = ibin(BinOp::Add, VExpr::Scalar(v(self.off)), VExpr::Row);
                    unravel(flat, self.row_strides[k], self.rows[k], k == 0)
                } else {
                    let j = cols.vars.iter().position(|y| *y == k)?;
                    let st = prod(&cols.extents[j + 1..]);
                    let col = match self.chunk {
                        Some((co, _)) => ibin(BinOp::Add, VExpr::Col, VExpr::Scalar(v(co))),
                        None => VExpr::Col,
                    };
                    unravel(col, st, cols.extents[j], j == 0)
                }
            }
            ExprKind::Load { src, idx } => {
                let lp = *self.plan.loads.get(self.next_load)?;
                self.next_load += 1;
                if let LoadPlan::Gather(gi) = lp {
                    return self.gather(gi, *src, idx, e.span, cols);
                }
                if self.chunk.is_some() {
                    return self.chunk_load(*src);
                }
                let s = *self.srcs.get(src)?;
                let (buf, slots) = *self.bufs.get(src)?;
                let slot = if slots > 1 { self.slot } else { 0 };
                match s.kind {
                    Kind::Scalar => VExpr::ReadRow(buf_region(buf, 0, 0)),
                    Kind::Cols => VExpr::ReadCol(buf_region(buf, 0, 0)),
                    Kind::Rows if s.width == 1 => VExpr::ReadRow(buf_region(buf, slot, 1)),
                    Kind::Rows => VExpr::Read(buf_region(buf, slot, s.width)),
                }
            }
            ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(self.vexpr(a, cols)?)),
            ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(self.vexpr(a, cols)?)),
            ExprKind::Binary(op, a, x) => {
                let a = self.vexpr(a, cols)?;
                VExpr::Binary(*op, Box::new(a), Box::new(self.vexpr(x, cols)?))
            }
            ExprKind::Select(cnd, a, x) => {
                let cnd = self.vexpr(cnd, cols)?;
                let saved = self.guard.clone();
                self.guard = saved.and(cnd.clone());
                let a = self.vexpr(a, cols);
                self.guard = saved.and(VExpr::Unary(crate::graph::UnOp::Not, Box::new(cnd.clone())));
                let x = self.vexpr(x, cols);
                self.guard = saved;
                select(cnd, a?, x?)
            }
            ExprKind::Reduce { op, vars, body } => {
                let at = self.next;
                let rb = self.reds.get(at)?.clone();
                let red = self.plan.reds.get(at)?.clone();
                self.next += 1;
                if self.chunk.is_some() {
                    // Computed by the chunk passes: its loads are all direct (checked by the analysis).
                    self.next_load += count_loads(body);
                    return Some(VExpr::ReadRow(buf_region(rb.out, 0, 1)));
                }
                let vs: Vec<usize> = vars.iter().map(|x| x.index()).collect();
                if let Some(extents) = &red.looped {
                    return self.looped(*op, &vs, extents, body, &rb, &red, cols);
                }
                let extents: Vec<i64> = vs.iter().map(|k| self.ext.get(*k).copied()).collect::<Option<_>>()?;
                let inner = Cols { vars: vs, extents };
                let w = inner.width();
                let saved = self.guard.clone();
                self.guard = saved.rows_only();
                let bv = self.vexpr(body, &inner);
                self.guard = saved;
                let src = match (rb.tmp, bv?) {
                    (None, VExpr::Read(r)) => r,
                    (Some(t), bv) => {
                        let r = buf_region(t, 0, w);
                        self.pre.push(Stmt::Vector { dst: r.clone(), rows: v(self.len), cols: c(w), expr: bv });
                        r
                    }
                    (None, _) => return None,
                };
                self.pre.push(Stmt::Reduce {
                    op: *op,
                    axis: 1,
                    src,
                    dst: buf_region(rb.out, 0, 1),
                    rows: v(self.len),
                    cols: c(w),
                    accumulate: false,
                });
                VExpr::ReadRow(buf_region(rb.out, 0, 1))
            }
            ExprKind::Segment { .. } => return None,
        })
    }

    /// A reduction whose body reads the tile's columns: a scalar loop over the reduction variables (the
    /// first outermost, as the interpreter's), each iteration computing the body over the tile and folding
    /// it into the accumulator with an accumulating `Reduce` of one element per row (the interpreter's
    /// accumulation, bit for bit).
    #[allow(clippy::too_many_arguments)]
    fn looped(
        &mut self,
        op: ReduceOp,
        vs: &[usize],
        extents: &[i64],
        body: &Expr,
        rb: &RedBufs,
        red: &Red,
        cols: &Cols,
    ) -> Option<VExpr> {
        let w = cols.width();
        let (it, regs) = rb.svars.split_first()?;
        if regs.len() != vs.len() || extents.len() != vs.len() {
            return None;
        }
        let outer_pre = std::mem::take(&mut self.pre);
        let n0 = self.scalars.len();
        self.scalars.extend(vs.iter().copied().zip(regs.iter().copied()));
        let bv = self.vexpr(body, cols);
        self.scalars.truncate(n0);
        let inner_pre = std::mem::replace(&mut self.pre, outer_pre);
        let bv = bv?;
        let mut lbody = Vec::new();
        for (k, r) in regs.iter().enumerate() {
            let st = prod(&extents[k + 1..]);
            let q = if st == 1 { v(*it) } else { bin(SBin::Div, v(*it), c(st)) };
            let value = if k == 0 { q } else { bin(SBin::Mod, q, c(extents[k])) };
            lbody.push(Stmt::Set { var: *r, value });
        }
        lbody.extend(inner_pre);
        match rb.tmp {
            // Each step's body into a temporary, reduced into the accumulator element by element (an integer
            // reduction: the reduction's own integer rules).
            Some(tmp) => {
                lbody.push(Stmt::Vector { dst: buf_region(tmp, 0, w), rows: v(self.len), cols: c(w), expr: bv });
                let flat = |b: BufId| Region { loc: Loc::Buf { buf: b, slot: c(0) }, offset: c(0), row_stride: c(1) };
                lbody.push(Stmt::Reduce {
                    op,
                    axis: 1,
                    src: flat(tmp),
                    dst: flat(rb.out),
                    rows: bin(SBin::Mul, v(self.len), c(w)),
                    cols: c(1),
                    accumulate: true,
                });
            }
            // f32: `acc = acc op body` in one pass ([`Red::needs_tmp`]); f32 add, max and min of vector
            // statements are the reduction's (its NaN rules and signed zeros, the accumulator first).
            None => {
                let bop = match op {
                    ReduceOp::Sum => BinOp::Add,
                    ReduceOp::Max => BinOp::Max,
                    ReduceOp::Min => BinOp::Min,
                    _ => return None,
                };
                let acc = buf_region(rb.out, 0, w);
                let expr = VExpr::Binary(bop, Box::new(VExpr::Read(acc.clone())), Box::new(bv));
                lbody.push(Stmt::Vector { dst: acc, rows: v(self.len), cols: c(w), expr });
            }
        }
        self.pre.push(Stmt::Vector {
            dst: buf_region(rb.out, 0, w),
            rows: v(self.len),
            cols: c(w),
            expr: identity(op, red.dtype)?,
        });
        self.pre.push(Stmt::For { var: *it, lo: c(0), hi: c(prod(extents)), step: 1, body: lbody });
        Some(if w == 1 { VExpr::ReadRow(buf_region(rb.out, 0, 1)) } else { VExpr::Read(buf_region(rb.out, 0, w)) })
    }
}

/// The rows per block that the tile hints on a row-wise group ask for, with the hint. Blocks are runs of
/// whole rows of the flattened row axes `rows_dims`, so: a tile along a row axis sets the block, with every
/// later row axis whole and every earlier hinted row axis 1 (as for elementwise chunks); a tile along a
/// column (inner) axis must be the whole axis, since a row is never split. Every hint must agree.
fn hinted_rows(
    hints: &[super::TileHint],
    g: &Graph,
    b: &Binding,
    rows_dims: &[i64],
) -> Result<Option<(i64, super::TileHint)>, Diagnostic> {
    let p = rows_dims.len();
    let mut out: Option<(i64, super::TileHint)> = None;
    for h in hints {
        let tile = |a: usize| h.axes.iter().find(|(x, _)| *x == a).map(|(_, s)| *s as i64);
        for &(a, size) in &h.axes {
            if a < p {
                continue;
            }
            let extent = g.node(h.node).shape.get(a).and_then(|d| b.eval(d).ok()).unwrap_or(0);
            if (size as i64) < extent {
                return Err(super::hint_error(
                    h,
                    format!(
                        "a row-wise group keeps whole rows in UB (a reduction or a per-row value runs along \
                         them): the tile of axis {a} must be the whole axis ({extent})"
                    ),
                ));
            }
        }
        let split = (0..p).find(|&a| tile(a).is_some_and(|t| t < rows_dims[a]));
        let rt = match split {
            None => rows_dims.iter().product::<i64>(),
            Some(a) => {
                if let Some(x) = (0..a).find(|&x| tile(x).is_some_and(|t| t != 1 && t < rows_dims[x])) {
                    return Err(super::hint_error(
                        h,
                        format!(
                            "row blocks are runs of whole rows: a tile of {} along axis {x} above a partial \
                                 tile of axis {a} is not one",
                            tile(x).unwrap_or(0)
                        ),
                    ));
                }
                if let Some(x) = (a + 1..p).find(|&x| tile(x).is_some_and(|t| t < rows_dims[x])) {
                    return Err(super::hint_error(
                        h,
                        format!(
                            "row blocks are runs of whole rows: axis {x} must be whole inside a tile that \
                                 splits axis {a}"
                        ),
                    ));
                }
                tile(a).unwrap_or(1) * rows_dims[a + 1..].iter().product::<i64>()
            }
        };
        match &out {
            Some((r, first)) if *r != rt => {
                return Err(super::hint_error(
                    h,
                    format!("it asks for blocks of {rt} rows, but {} asks for {r}", first.text),
                ))
            }
            Some(_) => {}
            None => out = Some((rt.max(1), h.clone())),
        }
    }
    Ok(out)
}

/// What the column-chunked translation needs: the chunk width, the full-width members (recomputed from
/// their bodies wherever they are read: their columns and index extents), and a plan of direct loads.
struct ChunkCtx {
    wc: i64,
    wide: BTreeMap<ValueId, (Cols, Vec<i64>)>,
    direct: Plan,
}

/// The loads of `e` (every one: the chunked mode only counts bodies whose loads are all direct).
fn count_loads(e: &Expr) -> usize {
    let mut n = 0;
    e.walk(&mut |x| {
        if matches!(x.kind, ExprKind::Load { .. }) {
            n += 1
        }
    });
    n
}

/// Whether every load in `e` is at plain variables and constants (so it is a direct read, never a gather).
fn plain_loads(e: &Expr) -> bool {
    let mut ok = true;
    e.walk(&mut |x| {
        if let ExprKind::Load { idx, .. } = &x.kind {
            ok &= idx.iter().all(|i| matches!(i.kind, ExprKind::Var(_) | ExprKind::Const(_)));
        }
    });
    ok
}

/// The reductions of `e` in traversal order (the order of the analysis and of [`Translate::vexpr`]).
fn reductions(e: &Expr) -> Vec<(ReduceOp, &Expr, Vec<usize>)> {
    let mut out = Vec::new();
    e.walk(&mut |x| {
        if let ExprKind::Reduce { op, vars, body } = &x.kind {
            out.push((*op, &**body, vars.iter().map(|v| v.index()).collect()));
        }
    });
    out
}

/// The pass after which the per-row values read by `e` are complete (full-width members read are
/// recomputed, so what they read counts; reductions are skipped: the caller handles them).
fn need(
    g: &Graph,
    e: &Expr,
    ready: &BTreeMap<ValueId, usize>,
    wide: &BTreeMap<ValueId, (Cols, Vec<i64>)>,
    depth: usize,
) -> usize {
    let mut n = 0;
    if depth > 64 {
        return usize::MAX / 2;
    }
    let mut stack = vec![e];
    while let Some(x) = stack.pop() {
        match &x.kind {
            ExprKind::Reduce { .. } => continue,
            ExprKind::Load { src, .. } => {
                if let Some(r) = ready.get(src) {
                    n = n.max(*r);
                } else if wide.contains_key(src) {
                    if let NodeKind::Compute { body, .. } = &g.node(*src).kind {
                        n = n.max(need(g, body, ready, wide, depth + 1));
                    }
                }
            }
            _ => {}
        }
        x.for_each_child(|c| stack.push(c));
    }
    n
}

/// The column-chunked launch of a row-wise group whose rows do not fit in UB (see the module docs), or
/// `None` if the group uses what this mode does not handle.
#[allow(clippy::too_many_arguments)]
fn chunked(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
    rows_dims: &[i64],
    srcs: &BTreeMap<ValueId, Src>,
    members: &[(ValueId, &Cols, &Plan, &[i64])],
    inputs: &[(ValueId, Src)],
) -> Option<Result<Launch, Diagnostic>> {
    let total = prod(rows_dims);
    // The row width: every full-width member, reduction and row-aligned input has it.
    let mut w = 1i64;
    for (_, cols, plan, _) in members {
        w = w.max(cols.width());
        for r in &plan.reds {
            w = w.max(r.width);
        }
    }
    if w <= 1 || w == i64::MAX || total <= 0 {
        return None;
    }
    let mut wide: BTreeMap<ValueId, (Cols, Vec<i64>)> = BTreeMap::new();
    let mut narrow: Vec<ValueId> = Vec::new();
    let mut nloads = 0usize;
    for (m, cols, plan, ext) in members {
        let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
        nloads += count_loads(body);
        // Index reductions need the whole row in one pass.
        if plan.reds.iter().any(|r| r.looped.is_some() || r.index || r.width != w) {
            return None;
        }
        if cols.width() == w {
            // Recomputed chunk by chunk: no reductions, no gathers.
            if !plan.reds.is_empty() || !plan.gathers.is_empty() {
                return None;
            }
            wide.insert(*m, ((*cols).clone(), ext.to_vec()));
        } else if cols.width() == 1 {
            // Gathers of one element per row only, outside the reductions.
            if plan.gathers.iter().any(|x| !x.row_only || x.width != 1 || x.idx_width != 1 || x.row)
                || reductions(body).iter().any(|(_, e, _)| !plain_loads(e))
            {
                return None;
            }
            narrow.push(*m);
        } else {
            return None;
        }
    }
    for (_, s) in inputs {
        let ok = match s.kind {
            Kind::Rows => s.width == 1 || s.width == w,
            Kind::Cols => s.width == w,
            Kind::Scalar => true,
        };
        if !ok {
            return None;
        }
    }
    // When each per-row member is complete: after pass `ready` (0: before the first pass). A reduction
    // runs in the pass after everything its body reads is complete.
    let mut ready: BTreeMap<ValueId, usize> = narrow.iter().map(|m| (*m, 0)).collect();
    for _ in 0..=narrow.len() {
        let mut changed = false;
        for m in &narrow {
            let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
            let mut r = need(g, body, &ready, &wide, 0);
            for (_, e, _) in reductions(body) {
                r = r.max(need(g, e, &ready, &wide, 0) + 1);
            }
            if ready[m] != r {
                ready.insert(*m, r);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let max_pass = 8usize;
    if ready.values().any(|r| *r > max_pass) {
        return None;
    }
    // Per pass: the reductions (member index, reduction index) and the stored full-width members.
    let mut red_pass: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (m, _, _, _)) in members.iter().enumerate() {
        if let NodeKind::Compute { body, .. } = &g.node(*m).kind {
            if ready.contains_key(m) {
                for (j, (_, e, _)) in reductions(body).iter().enumerate() {
                    red_pass.push((i, j, need(g, e, &ready, &wide, 0) + 1));
                }
            }
        }
    }
    let mut store_pass: Vec<(ValueId, usize)> = Vec::new();
    for m in &group.stored {
        if wide.contains_key(m) {
            let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
            store_pass.push((*m, need(g, body, &ready, &wide, 0) + 1));
        }
    }
    let passes = red_pass.iter().map(|x| x.2).chain(store_pass.iter().map(|x| x.1)).max().unwrap_or(0);
    if passes == 0 || passes > max_pass {
        return None;
    }

    // A reduction of a bare row-aligned read of an input reduces the input's chunk in place.
    let mut bare: BTreeMap<(ValueId, usize), bool> = BTreeMap::new();
    for (m, _, plan, _) in members {
        let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
        for (i, (_, e, _)) in reductions(body).iter().enumerate() {
            let input = matches!(&e.kind, ExprKind::Load { src, .. } if !wide.contains_key(src));
            bare.insert((*m, i), input && plan.reds.get(i).is_some_and(|r| r.direct));
        }
        if reductions(body).len() != plan.reds.len() {
            return None;
        }
    }

    // Rows per block and chunk width: the widest chunk (a multiple of 16 columns) whose buffers fit.
    let ub = target.memory("ub")?;
    let align = ub.align.max(1);
    let size = |x: ValueId| g.node(x).dtype.size_bytes() as u64;
    let fits = |rt: u64, wc: u64| -> bool {
        let mut at = 0u64;
        let mut place = |bytes: u64, slots: u64| {
            at = at.saturating_add(bytes.div_ceil(align).saturating_mul(align).saturating_mul(slots))
        };
        for (s, k) in inputs {
            match k.kind {
                Kind::Rows if k.width == 1 => place(rt.saturating_mul(size(*s)), 1),
                Kind::Rows => place(rt.saturating_mul(wc).saturating_mul(size(*s)), 2),
                Kind::Cols => place(wc.saturating_mul(size(*s)), 2),
                Kind::Scalar => place(size(*s), 1),
            }
        }
        for (m, _, plan, _) in members {
            if wide.contains_key(m) {
                if group.stored.contains(m) {
                    place(rt.saturating_mul(wc).saturating_mul(size(*m)), 2);
                }
                continue;
            }
            place(rt.saturating_mul(size(*m)), 1);
            for (i, r) in plan.reds.iter().enumerate() {
                let sz = r.dtype.size_bytes() as u64;
                if !bare[&(*m, i)] {
                    place(rt.saturating_mul(wc).saturating_mul(sz), 1);
                }
                place(rt.saturating_mul(sz), 1);
            }
            for x in &plan.gathers {
                place(rt.saturating_mul(4), 1);
                place(rt.saturating_mul(size(x.src)), 1);
            }
        }
        at <= ub.usable()
    };
    let share = (total as u64).div_ceil(target.vector_cores.max(1) as u64).max(1);
    let gran = 16u64;
    let wmax = (w as u64).div_ceil(gran);
    let widest = |rt: u64| -> u64 {
        let (mut lo, mut hi) = (0u64, wmax);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(rt, mid * gran) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        (lo * gran).min(w as u64)
    };
    let mut rt = share.min(8);
    let mut wc = widest(rt);
    while rt > 1 && wc < 1024.min(w as u64) {
        rt /= 2;
        wc = widest(rt);
    }
    if wc == 0 {
        return None;
    }
    let (rt, wc) = (rt as i64, wc as i64);
    let cores = (target.vector_cores as i64).min(total / rt + (total % rt != 0) as i64).max(1) as u32;

    // Buffers.
    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));
    let mut bufs: BTreeMap<ValueId, (BufId, u32)> = BTreeMap::new();
    for (s, k) in inputs {
        let (shape, slots) = match k.kind {
            Kind::Rows if k.width == 1 => (vec![rt as u64, 1], 1),
            Kind::Rows => (slot_shape(rt as u64, wc as u64, size(*s), align), 2),
            Kind::Cols => (slot_shape(1, wc as u64, size(*s), align), 2),
            Kind::Scalar => (vec![1], 1),
        };
        let id = lb.buffer(format!("{}_in", label(*s)), Mem::UB, g.node(*s).dtype, shape, slots);
        bufs.insert(*s, (id, slots));
    }
    let mut red_bufs: Vec<Vec<RedBufs>> = Vec::new();
    let mut gat_bufs: Vec<Vec<(BufId, BufId)>> = Vec::new();
    for (m, _, plan, _) in members {
        let mut rb = Vec::new();
        let mut gb = Vec::new();
        if wide.contains_key(m) {
            if group.stored.contains(m) {
                let shape = slot_shape(rt as u64, wc as u64, size(*m), align);
                let id = lb.buffer(label(*m), Mem::UB, g.node(*m).dtype, shape, 2);
                bufs.insert(*m, (id, 2));
            }
        } else {
            let id = lb.buffer(label(*m), Mem::UB, g.node(*m).dtype, vec![rt as u64, 1], 1);
            bufs.insert(*m, (id, 1));
            for (i, r) in plan.reds.iter().enumerate() {
                let tmp = (!bare[&(*m, i)]).then(|| {
                    lb.buffer(
                        format!("{}_red{i}_body", label(*m)),
                        Mem::UB,
                        r.dtype,
                        slot_shape(rt as u64, wc as u64, r.dtype.size_bytes() as u64, align),
                        1,
                    )
                });
                let out = lb.buffer(format!("{}_red{i}", label(*m)), Mem::UB, r.dtype, vec![rt as u64, 1], 1);
                rb.push(RedBufs { tmp, out, svars: Vec::new() });
            }
            for (i, x) in plan.gathers.iter().enumerate() {
                let ib = lb.buffer(format!("{}_g{i}_idx", label(*m)), Mem::UB, DType::I32, vec![rt as u64, 1], 1);
                let db = lb.buffer(format!("{}_g{i}", label(*m)), Mem::UB, g.node(x.src).dtype, vec![rt as u64, 1], 1);
                gb.push((ib, db));
            }
        }
        red_bufs.push(rb);
        gat_bufs.push(gb);
    }
    let off = lb.svar("off");
    let len = lb.svar("len");
    let col = lb.svar("col");
    let clen = lb.svar("clen");
    let cbase = lb.svar("cbase");
    let ctx = ChunkCtx {
        wc,
        wide: wide.clone(),
        direct: Plan { reds: Vec::new(), gathers: Vec::new(), loads: vec![LoadPlan::Direct; nloads + 1] },
    };
    let row_strides: Vec<i64> = (0..rows_dims.len()).map(|k| prod(&rows_dims[k + 1..])).collect();
    macro_rules! mk {
        ($plan:expr, $reds:expr, $gbufs:expr, $ext:expr, $slot:expr) => {
            Translate {
                g,
                b,
                gm,
                srcs,
                bufs: &bufs,
                plan: $plan,
                reds: $reds,
                gbufs: $gbufs,
                next: 0,
                next_load: 0,
                slot: $slot,
                off,
                len,
                rows: rows_dims,
                row_strides: &row_strides,
                ext: $ext,
                scalars: Vec::new(),
                guard: Guard::True,
                pre: Vec::new(),
                chunk: Some((col, &ctx)),
            }
        };
    }

    // The per-row members complete after pass `k`, computed once per block.
    let narrow_phase = |k: usize| -> Option<Vec<Stmt>> {
        let mut st = Vec::new();
        for (i, (m, cols, plan, ext)) in members.iter().enumerate() {
            if ready.get(m) != Some(&k) {
                continue;
            }
            let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
            let mut tr = mk!(plan, &red_bufs[i], &gat_bufs[i], ext, 0);
            let e = tr.vexpr(body, cols)?;
            st.append(&mut tr.pre);
            st.push(Stmt::Vector { dst: buf_region(bufs[m].0, 0, 1), rows: v(len), cols: c(1), expr: e });
        }
        Some(st)
    };

    // One pass over the columns of a block: the chunk loop, double-buffered as the row loop of the
    // whole-row mode.
    let pass = |k: usize| -> Option<Vec<Stmt>> {
        let mut pre = Vec::new();
        for &(i, j, p) in &red_pass {
            if p != k {
                continue;
            }
            let r = members[i].2.reds.get(j)?;
            let NodeKind::Compute { body, .. } = &g.node(members[i].0).kind else { return None };
            let (op, _, _) = reductions(body).get(j).cloned()?;
            pre.push(Stmt::Vector {
                dst: buf_region(red_bufs[i][j].out, 0, 1),
                rows: v(len),
                cols: c(1),
                expr: identity(op, r.dtype)?,
            });
        }
        for s in 0..2u8 {
            pre.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
            pre.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
        }
        let stores: Vec<ValueId> = store_pass.iter().filter(|x| x.1 == k).map(|x| x.0).collect();
        let mut lslots: [Vec<Stmt>; 2] = Default::default();
        for slot in 0..2u32 {
            let ev = slot as u8;
            let mut st = Vec::new();
            st.push(Stmt::Set { var: clen, value: bin(SBin::Min, c(wc), bin(SBin::Sub, c(w), v(col))) });
            st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
            for (s, kd) in inputs {
                let (src, rows) = match kd.kind {
                    Kind::Rows if kd.width == w => (
                        Region {
                            loc: Loc::Gm(gm.of[s]),
                            offset: bin(SBin::Add, bin(SBin::Mul, v(off), c(w)), v(col)),
                            row_stride: c(w),
                        },
                        v(len),
                    ),
                    Kind::Cols => (Region { loc: Loc::Gm(gm.of[s]), offset: v(col), row_stride: c(0) }, c(1)),
                    _ => continue,
                };
                let dst = buf_region(bufs[s].0, slot, if kd.kind == Kind::Cols { 0 } else { wc });
                st.push(Stmt::Copy { pipe: Pipe::Mte2, src, dst, rows, cols: v(clen) });
            }
            st.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
            st.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
            st.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
            for &(i, j, p) in &red_pass {
                if p != k {
                    continue;
                }
                let (m, _, _, ext) = &members[i];
                let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
                let (op, e, vs) = reductions(body).get(j).cloned()?;
                let extents: Vec<i64> = vs.iter().map(|x| ext.get(*x).copied()).collect::<Option<_>>()?;
                let inner = Cols { vars: vs, extents };
                let mut tr = mk!(&ctx.direct, &[], &[], ext, slot);
                let bv = tr.vexpr(e, &inner)?;
                if !tr.pre.is_empty() {
                    return None;
                }
                let src = match (red_bufs[i][j].tmp, bv) {
                    (None, VExpr::Read(r)) => r,
                    (Some(t), bv) => {
                        let r = buf_region(t, 0, wc);
                        st.push(Stmt::Vector { dst: r.clone(), rows: v(len), cols: v(clen), expr: bv });
                        r
                    }
                    (None, _) => return None,
                };
                st.push(Stmt::Reduce {
                    op,
                    axis: 1,
                    src,
                    dst: buf_region(red_bufs[i][j].out, 0, 1),
                    rows: v(len),
                    cols: v(clen),
                    accumulate: true,
                });
            }
            for m in &stores {
                let (cols, ext) = wide.get(m)?;
                let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
                let mut tr = mk!(&ctx.direct, &[], &[], ext, slot);
                let e = tr.vexpr(body, cols)?;
                if !tr.pre.is_empty() {
                    return None;
                }
                st.push(Stmt::Vector { dst: buf_region(bufs[m].0, slot, wc), rows: v(len), cols: v(clen), expr: e });
            }
            st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
            st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
            st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
            for m in &stores {
                st.push(Stmt::Copy {
                    pipe: Pipe::Mte3,
                    src: buf_region(bufs[m].0, slot, wc),
                    dst: Region {
                        loc: Loc::Gm(gm.of[m]),
                        offset: bin(SBin::Add, bin(SBin::Mul, v(off), c(w)), v(col)),
                        row_stride: c(w),
                    },
                    rows: v(len),
                    cols: v(clen),
                });
            }
            st.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
            lslots[slot as usize] = st;
        }
        pre.push(super::two_slot_loop(cbase, col, c(0), w, wc, lslots));
        for s in 0..2u8 {
            pre.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
            pre.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
        }
        Some(pre)
    };

    let mut prog = Vec::new();
    let mut once = false;
    for (s, k) in inputs {
        if k.kind == Kind::Scalar {
            once = true;
            prog.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: Region { loc: Loc::Gm(gm.of[s]), offset: c(0), row_stride: c(0) },
                dst: buf_region(bufs[s].0, 0, 0),
                rows: c(1),
                cols: c(1),
            });
        }
    }
    if once {
        prog.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
    }
    let row_ins: Vec<ValueId> =
        inputs.iter().filter(|(_, k)| k.kind == Kind::Rows && k.width == 1).map(|(s, _)| *s).collect();
    let narrow_stored: Vec<ValueId> = group.stored.iter().copied().filter(|m| ready.contains_key(m)).collect();
    prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ROW_IN_EVENT });
    prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: ROW_OUT_EVENT });
    let mut blk = vec![Stmt::Set { var: len, value: bin(SBin::Min, c(rt), bin(SBin::Sub, c(total), v(off))) }];
    blk.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ROW_IN_EVENT });
    for s in &row_ins {
        blk.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: Region { loc: Loc::Gm(gm.of[s]), offset: v(off), row_stride: c(1) },
            dst: buf_region(bufs[s].0, 0, 1),
            rows: v(len),
            cols: c(1),
        });
    }
    blk.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
    blk.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
    blk.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: ROW_OUT_EVENT });
    blk.extend(narrow_phase(0)?);
    for k in 1..=passes {
        blk.extend(pass(k)?);
        blk.extend(narrow_phase(k)?);
    }
    blk.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ROW_IN_EVENT });
    blk.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: ROW_OUT_EVENT });
    blk.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: ROW_OUT_EVENT });
    for m in &narrow_stored {
        blk.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: buf_region(bufs[m].0, 0, 1),
            dst: Region { loc: Loc::Gm(gm.of[m]), offset: v(off), row_stride: c(1) },
            rows: v(len),
            cols: c(1),
        });
    }
    blk.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: ROW_OUT_EVENT });
    prog.push(Stmt::For {
        var: off,
        lo: bin(SBin::Mul, SExpr::Core, c(rt)),
        hi: c(total),
        step: (cores as i64).saturating_mul(rt),
        body: blk,
    });
    prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ROW_IN_EVENT });
    prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: ROW_OUT_EVENT });
    lb.launch.vector = prog;
    Some(lb.finish(&format!("rows wider than UB: blocks of {rt} rows in chunks of {wc} columns, {passes} passes")))
}

/// The chunked mode's per-block events: row-aligned per-row inputs (V->MTE2) and per-row stores.
const ROW_IN_EVENT: u8 = 4;
const ROW_OUT_EVENT: u8 = 5;
