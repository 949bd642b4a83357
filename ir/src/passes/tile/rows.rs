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
//! Members read each other the same way, from their UB buffers. A reduction `op[vars](body)` in a member's
//! body (sum, max or min; not nested) becomes a vector statement computing `body` into a `[Rt, W_red]` UB
//! temporary (the reduction variables are its columns; skipped when `body` is a bare row-aligned read,
//! which is reduced in place) and a [`Stmt::Reduce`] along axis 1 into an `[Rt, 1]` temporary, read back
//! with [`VExpr::ReadRow`]. Index variables used as values become [`VExpr::Row`] / [`VExpr::Col`] plus the
//! tile's origin. `Reduce` sums each row in column order, as the interpreter does, so the results are
//! bit-exact.
//!
//! The launch splits the row blocks across the vector cores (core `i` takes blocks `i`, `i + cores`, ...)
//! with the loop, slots and flag discipline of the elementwise template ([`super::vector`]):
//!
//! ```text
//! prelude: copy.MTE2 column-broadcast and scalar inputs; set/wait MTE2->V #2
//! for off in core*Rt .. R step 2*cores*Rt:          (slot 0 at off, slot 1 at off + cores*Rt)
//!   wait V->MTE2 #s;  copy.MTE2 row-aligned inputs -> in[s];  set MTE2->V #s
//!   wait MTE2->V #s;  wait MTE3->V #s;  members (with their reductions);  set V->MTE2 #s;  set V->MTE3 #s
//!   wait V->MTE3 #s;  copy.MTE3 stored members -> GM;  set MTE3->V #s
//! ```
//!
//! Not handled (the function returns `None`): reads through data (gathers), segments, reductions across
//! rows (a column reduction like RMSNorm backward's `dw[d] = sum[t](..)`), nested reductions, argmax and
//! argmin, reads at shifted or permuted indices, and rows too wide for even one row of every buffer to fit
//! in UB — those need the columns chunked with multi-pass or online statistics (a running max and a
//! rescaled sum), which is the next step.

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
            return aligned.then_some(Src { kind: Kind::Rows, width: w });
        }
        let bcast = !cols.vars.is_empty()
            && idx.len() == cols.vars.len()
            && idx.iter().zip(&cols.vars).all(|(e, k)| is_var(e, *k))
            && sdims == cols.extents;
        bcast.then_some(Src { kind: Kind::Cols, width: cols.width() })
    }

    /// Checks `e` under `cols`, recording the reads in `srcs` and the reductions in `reds`.
    fn scan(
        &self,
        e: &Expr,
        cols: &Cols,
        in_reduce: bool,
        srcs: &mut BTreeMap<ValueId, Src>,
        reds: &mut Vec<Red>,
    ) -> Option<()> {
        match &e.kind {
            ExprKind::Const(_) => Some(()),
            ExprKind::Dim(d) => self.b.eval(d).ok().map(|_| ()),
            ExprKind::Var(x) => (x.index() < self.p || cols.vars.contains(&x.index())).then_some(()),
            ExprKind::Load { src, idx } => {
                let s = self.classify(*src, idx, cols)?;
                if *srcs.entry(*src).or_insert(s) != s {
                    return None;
                }
                Some(())
            }
            ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => self.scan(a, cols, in_reduce, srcs, reds),
            ExprKind::Binary(_, a, x) => {
                self.scan(a, cols, in_reduce, srcs, reds)?;
                self.scan(x, cols, in_reduce, srcs, reds)
            }
            ExprKind::Select(cnd, a, x) => {
                self.scan(cnd, cols, in_reduce, srcs, reds)?;
                self.scan(a, cols, in_reduce, srcs, reds)?;
                self.scan(x, cols, in_reduce, srcs, reds)
            }
            ExprKind::Reduce { op, vars, body } => {
                if in_reduce || !matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) || vars.is_empty() {
                    return None;
                }
                let vs: Vec<usize> = vars.iter().map(|x| x.index()).collect();
                let extents: Vec<i64> = vs.iter().map(|k| self.ext.get(*k).copied()).collect::<Option<_>>()?;
                if vs.iter().any(|k| *k < self.p) || extents.iter().any(|x| *x <= 0) {
                    return None;
                }
                let inner = Cols { vars: vs, extents };
                let dtype = dtype_of(body.ty)?;
                let at = reds.len();
                reds.push(Red { width: inner.width(), dtype, direct: false });
                self.scan(body, &inner, true, srcs, reds)?;
                if let ExprKind::Load { src, .. } = &body.kind {
                    reds[at].direct = srcs.get(src).is_some_and(|s| s.kind == Kind::Rows && s.width > 1);
                }
                Some(())
            }
            ExprKind::Segment { .. } => None,
        }
    }
}

/// The launch for a row-wise vector group, or `None` if the group does not have that form (see the module
/// documentation), or if even one row of every buffer does not fit in UB (chunking the columns with
/// multi-pass or online statistics is not done yet).
pub fn rows(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Launch, Diagnostic>> {
    let p = group.parallel;
    if group.kind != GroupKind::Vector || p == 0 || group.space.len() < p || group.nodes.is_empty() {
        return None;
    }
    let rows_dims = eval_dims(b, &group.space[..p])?;
    let total = prod(&rows_dims);
    if rows_dims.iter().any(|d| *d < 0) {
        return None;
    }

    // Analysis: every member, its columns, its reads and its reductions.
    let mut srcs: BTreeMap<ValueId, Src> = BTreeMap::new();
    let mut members: Vec<(ValueId, Cols, Vec<Red>, Vec<i64>)> = Vec::new();
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
        let mem = Member { g, b, p, rows: &rows_dims, ext };
        let mut reds = Vec::new();
        mem.scan(body, &cols, false, &mut srcs, &mut reds)?;
        members.push((*m, cols, reds, mem.ext));
    }
    // Members are read as rows of their own width.
    for (m, cols, _, _) in &members {
        if srcs.get(m).is_some_and(|s| *s != Src { kind: Kind::Rows, width: cols.width() }) {
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
        for (m, cols, reds, _) in &members {
            let slots = if group.stored.contains(m) { 2 } else { 1 };
            place(rt.saturating_mul(cols.width() as u64).saturating_mul(size(*m)), slots);
            for r in reds {
                let sz = r.dtype.size_bytes() as u64;
                if !r.direct {
                    place(rt.saturating_mul(r.width as u64).saturating_mul(sz), 1);
                }
                place(rt.saturating_mul(sz), 1);
            }
        }
        at <= ub.usable()
    };
    if !fits(1) {
        return None;
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
    let rt = lo as i64;
    let cores = (target.vector_cores as i64).min(total / rt + (total % rt != 0) as i64).max(1) as u32;

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
    // Per member, per reduction: the body temporary (unless direct) and the result.
    let mut red_bufs: Vec<Vec<(Option<BufId>, BufId)>> = Vec::new();
    for (m, cols, reds, _) in &members {
        let slots = if group.stored.contains(m) { 2 } else { 1 };
        let shape = slot_shape(rt as u64, cols.width() as u64, size(*m), align);
        let id = lb.buffer(label(*m), Mem::UB, g.node(*m).dtype, shape, slots);
        bufs.insert(*m, (id, slots));
        let mut rb = Vec::new();
        for (i, r) in reds.iter().enumerate() {
            let tmp = (!r.direct).then(|| {
                lb.buffer(format!("{}_red{i}_body", label(*m)), Mem::UB, r.dtype, vec![rt as u64, r.width as u64], 1)
            });
            let out = lb.buffer(format!("{}_red{i}", label(*m)), Mem::UB, r.dtype, vec![rt as u64, 1], 1);
            rb.push((tmp, out));
        }
        red_bufs.push(rb);
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
    let stride = cores as i64 * rt;
    let row_strides: Vec<i64> = (0..p).map(|k| prod(&rows_dims[k + 1..])).collect();
    let mut body = Vec::new();
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
        for ((m, cols, _, ext), rb) in members.iter().zip(&red_bufs) {
            let NodeKind::Compute { body: e, .. } = &g.node(*m).kind else { return None };
            let mut tr = Translate {
                b,
                srcs: &srcs,
                bufs: &bufs,
                reds: rb,
                next: 0,
                slot,
                off,
                len,
                rows: &rows_dims,
                row_strides: &row_strides,
                ext,
                pre: Vec::new(),
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
        if slot == 0 {
            body.extend(st);
            body.push(Stmt::Set { var: off, value: bin(SBin::Add, v(off), c(stride)) });
        } else {
            body.push(Stmt::If { cond: bin(SBin::Lt, v(off), c(total)), then: st });
        }
    }
    let base = lb.svar("base");
    prog.push(Stmt::For {
        var: base,
        lo: bin(SBin::Mul, SExpr::Core, c(rt)),
        hi: c(total),
        step: stride.saturating_mul(2),
        body: std::iter::once(Stmt::Set { var: off, value: v(base) }).chain(body).collect(),
    });
    for s in 0..2u8 {
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
    }
    lb.launch.vector = prog;
    Some(lb.finish("row blocks chosen by the tiler"))
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

/// Translates one member's body for one slot; reductions emit their statements into `pre`.
struct Translate<'a> {
    b: &'a Binding,
    srcs: &'a BTreeMap<ValueId, Src>,
    bufs: &'a BTreeMap<ValueId, (BufId, u32)>,
    /// The member's reduction buffers, in traversal order (as the analysis found them).
    reds: &'a [(Option<BufId>, BufId)],
    next: usize,
    slot: u32,
    off: SVar,
    len: SVar,
    rows: &'a [i64],
    row_strides: &'a [i64],
    /// The evaluated extents of the member's index variables.
    ext: &'a [i64],
    pre: Vec<Stmt>,
}

fn ibin(op: BinOp, a: VExpr, b: VExpr) -> VExpr {
    VExpr::Binary(op, Box::new(a), Box::new(b))
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

impl Translate<'_> {
    fn vexpr(&mut self, e: &Expr, cols: &Cols) -> Option<VExpr> {
        Some(match &e.kind {
            ExprKind::Const(Const::F32(x)) => VExpr::F32(*x),
            ExprKind::Const(Const::I32(x)) => VExpr::I32(*x),
            ExprKind::Const(Const::Bool(x)) => VExpr::Bool(*x),
            ExprKind::Dim(d) => VExpr::I32(self.b.eval(d).ok()?),
            ExprKind::Var(x) => {
                let k = x.index();
                if k < self.rows.len() {
                    let flat = ibin(BinOp::Add, VExpr::Scalar(v(self.off)), VExpr::Row);
                    unravel(flat, self.row_strides[k], self.rows[k], k == 0)
                } else {
                    let j = cols.vars.iter().position(|y| *y == k)?;
                    let st = prod(&cols.extents[j + 1..]);
                    unravel(VExpr::Col, st, cols.extents[j], j == 0)
                }
            }
            ExprKind::Load { src, .. } => {
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
                let a = self.vexpr(a, cols)?;
                VExpr::Select(Box::new(cnd), Box::new(a), Box::new(self.vexpr(x, cols)?))
            }
            ExprKind::Reduce { op, vars, body } => {
                let (tmp, out) = *self.reds.get(self.next)?;
                self.next += 1;
                let vs: Vec<usize> = vars.iter().map(|x| x.index()).collect();
                let extents: Vec<i64> = vs.iter().map(|k| self.ext.get(*k).copied()).collect::<Option<_>>()?;
                let inner = Cols { vars: vs, extents };
                let w = inner.width();
                let bv = self.vexpr(body, &inner)?;
                let src = match (tmp, bv) {
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
                    dst: buf_region(out, 0, 1),
                    rows: v(self.len),
                    cols: c(w),
                    accumulate: false,
                });
                VExpr::ReadRow(buf_region(out, 0, 1))
            }
            ExprKind::Segment { .. } => return None,
        })
    }
}
