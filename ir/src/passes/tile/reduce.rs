//! Vector groups that reduce across rows: whole-tensor reductions to a scalar, and column reductions.
//!
//! A vector group qualifies when every member is a computation of one shape `O` (the *output axes*, rank
//! `q`, flattened to `W` columns) whose body reduces (sum, max or min; not nested) over variables that are
//! not output axes, at least once somewhere in the group. Reads inside a reduction over the variables `vs`
//! (extents `E`, flattened to `R` rows) must be one of:
//! - *tile*: `src[vs.., out..]`, the reduction variables in order then the output variables in order, of a
//!   source of shape `E ++ O` (the source viewed as an `[R, W]` matrix; for `q = 0` a flat stream);
//! - *row-broadcast* (`q ≥ 1`): `src[vs..]` of a source of shape `E` (`rstd[t]`), one value per row;
//! - *column-broadcast* (`q ≥ 1`): `src[out..]` of a source of shape `O` (`w[d]`), one value per column;
//! - a scalar (rank 0).
//!
//! Outside reductions a member reads earlier members at its own indices, column-broadcast inputs and
//! scalars. Index variables used as values are unravelled from the tile's row and column (plus origins).
//!
//! **Whole-tensor reductions** (`q = 0`: every member is a scalar, e.g. cross-entropy's
//! `n_valid = max(sum(f32(target >= 0)), 1.0)`, Muon's `sum(g * g)`). Each reduction's `R` elements are
//! streamed through UB in chunks of `C` (a multiple of 256), chunk `i` on vector core `i mod cores`; each
//! core folds its chunks into a one-element accumulator ([`Stmt::Reduce`] with `accumulate`, starting
//! from the reduction's identity), then writes it to a workspace (one partial per core and reduction). A
//! second launch on one vector core combines the partials in core order and evaluates the members:
//!
//! ```text
//! launch 1 (cores):  scalars: copy.MTE2; set/wait MTE2->V #2;  acc_r = identity;  set V->MTE2 #0, #1
//!   per reduction r: for off in core*C .. R_r step 2*cores*C:   (slot 0 at off, slot 1 at off + cores*C)
//!     wait V->MTE2 #s; copy.MTE2 tile inputs -> in[s]; set MTE2->V #s
//!     wait MTE2->V #s; tmp = body; reduce(accumulate) tmp -> acc_r; set V->MTE2 #s
//!   wait V->MTE2 #0, #1;  set/wait V->MTE3 #3;  copy.MTE3 acc_r -> partials_r[core]
//! launch 2 (1 core): copy.MTE2 partials_r -> part_r, scalars; set/wait MTE2->V #0
//!   reduce part_r -> comb_r (core order);  members;  set/wait V->MTE3 #0;  copy.MTE3 stored -> GM
//! ```
//! The launches run in order, which orders the partials' writes before their reads. When one chunk
//! holds every reduction (small inputs, `cores = 1`) there is one launch: the members are evaluated from
//! the accumulators directly and the result is the interpreter's sequential sum, bit for bit. With several
//! cores the sum is reassociated (per core, then across cores): equal up to rounding, not bit-exact.
//!
//! **Column reductions** (`q ≥ 1`, e.g. RMSNorm backward's `dw[d] = sum[t](dy[t, d] * x[t, d] * rstd[t])`).
//! The `W` columns are split into blocks of `Dc`, block `j` on vector core `j mod cores`; each core runs
//! down the rows of each reduction in blocks of `Rt`, computing the body into an `[Rt, Dc]` tile and
//! reducing it along axis 0 into a `[1, Dc]` accumulator (`accumulate`), then evaluates the members over
//! the block's columns and stores them. Each column is summed in row order, as the interpreter does, so
//! the results are bit-exact:
//!
//! ```text
//! scalars: copy.MTE2; set/wait MTE2->V #2;  set V->MTE2 #0, #1, #3;  set MTE3->V #3
//! for cb in core*Dc .. W step cores*Dc:
//!   wait V->MTE2 #3; copy.MTE2 column-broadcast inputs; set MTE2->V #3; wait MTE2->V #3
//!   wait MTE3->V #3
//!   per reduction r: acc_r = identity
//!     for off in 0 .. R_r step 2*Rt:                              (slot 0 at off, slot 1 at off + Rt)
//!       wait V->MTE2 #s; copy.MTE2 tile and row-broadcast inputs -> in[s]; set MTE2->V #s
//!       wait MTE2->V #s; tmp = body; reduce(axis 0, accumulate) tmp -> acc_r; set V->MTE2 #s
//!   members -> [1, Dc] buffers;  set V->MTE2 #3
//!   set/wait V->MTE3 #3;  copy.MTE3 stored members -> GM;  set MTE3->V #3
//! wait V->MTE2 #0, #1, #3;  wait MTE3->V #3
//! ```
//!
//! **Argmax and argmin to a scalar** go the same way with a position beside each extreme: each chunk is
//! reduced to its extreme (max or min) and that one's position in the chunk (`argmax`/`argmin`: the first
//! one, a NaN beyond every number); a core keeps the one that comes first, by value, then by position
//! (`before`: a NaN first, then the greater (smaller) value, then the lower position), starting from the
//! identity at position `i32::MAX`; the combine takes the extreme of the partials, then the lowest position
//! among the cores that hold it. So the result is the interpreter's position, bit for bit, on any number
//! of cores and chunks.
//!
//! Not handled (the function returns `None`): argmax/argmin across rows (column reductions), nested
//! reductions, reductions over output axes (row-wise reductions belong to [`super::rows`]), a reduction
//! body reading a member of the group, reads through data, shifted or permuted indices, segments, groups
//! without a reduction.

use super::{bin, buf_region, c, gm_row, v, GmPlan, LaunchBuilder, Tiled};
use crate::diag::Diagnostic;
use crate::dtype::{DType, ScalarTy};
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::target::Target;
use crate::tile::*;
use std::collections::{BTreeMap, BTreeSet};

/// How a value is read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `[rows, cols]` tiles (a flat stream when there are no output axes).
    Tile,
    /// One value per row.
    RowB,
    /// One value per column.
    ColB,
    /// One element.
    Scalar,
    /// A member of the group, read at its own indices outside reductions.
    Member,
}

/// A reduction found in a member's body.
#[derive(Clone, Debug)]
struct Red {
    op: ReduceOp,
    /// The reduction variables (indices into the member's variables) and their extents.
    vars: Vec<usize>,
    ext: Vec<i64>,
    /// The number of rows (elements for `q = 0`) it reduces.
    n: i64,
    dtype: DType,
    body: Expr,
    /// The tile and row-broadcast inputs its body reads.
    streamed: BTreeSet<ValueId>,
}

impl Red {
    /// Whether it is an argmax or argmin (whole-tensor only): `dtype` is then its values', and the result
    /// the i32 flat position of the first extreme (see [`whole`]).
    fn index(&self) -> bool {
        matches!(self.op, ReduceOp::ArgMax | ReduceOp::ArgMin)
    }

    /// The reduction of the values: max for an argmax, min for an argmin, else its own.
    fn value_op(&self) -> ReduceOp {
        match self.op {
            ReduceOp::ArgMax => ReduceOp::Max,
            ReduceOp::ArgMin => ReduceOp::Min,
            op => op,
        }
    }
}

/// `x != x`: whether `x` is NaN (never, for integers).
fn nan(x: VExpr) -> VExpr {
    ibin(BinOp::Ne, x.clone(), x)
}

/// Whether the extreme `cv` at position `ci` comes before the extreme `rv` at position `ri` in an argmax
/// (`max`) or argmin: a NaN is beyond every number, and of equal values (or two NaNs) the lower position
/// wins (the interpreter's first extreme, its first NaN).
fn before(max: bool, cv: VExpr, ci: VExpr, rv: VExpr, ri: VExpr) -> VExpr {
    let not = |x: VExpr| VExpr::Unary(crate::graph::UnOp::Not, Box::new(x));
    let lower = ibin(BinOp::Lt, ci.clone(), ri.clone());
    let beyond = ibin(if max { BinOp::Gt } else { BinOp::Lt }, cv.clone(), rv.clone());
    let tie = ibin(BinOp::And, ibin(BinOp::Eq, cv.clone(), rv.clone()), lower.clone());
    let cn = nan(cv);
    let rn = nan(rv);
    let when_nan = ibin(BinOp::And, cn.clone(), ibin(BinOp::Or, not(rn.clone()), lower));
    let numbers = ibin(BinOp::And, ibin(BinOp::And, not(cn), not(rn)), ibin(BinOp::Or, beyond, tie));
    ibin(BinOp::Or, when_nan, numbers)
}

struct Analysis {
    kinds: BTreeMap<ValueId, Kind>,
    /// All reductions, members in order, each member's in traversal order.
    reds: Vec<Red>,
}

fn eval_dims(b: &Binding, dims: &[crate::dim::Dim]) -> Option<Vec<i64>> {
    dims.iter().map(|d| b.eval(d).ok()).collect()
}

/// The product of `xs`, or `None` on overflow.
fn prod(xs: &[i64]) -> Option<i64> {
    xs.iter().try_fold(1i64, |a, x| a.checked_mul(*x))
}

/// `ceil(a / b)` for `a ≥ 0`, `b > 0`.
fn div_up(a: i64, b: i64) -> i64 {
    let b = b.max(1);
    a / b + (a % b != 0) as i64
}

/// `a` rounded up to a multiple of `m > 0`.
fn round_up(a: i64, m: i64) -> i64 {
    div_up(a, m).saturating_mul(m)
}

/// The value of an integer expression of constants and dims (`B * C`), if it is one.
fn int_value(e: &Expr, b: &Binding) -> Option<i64> {
    match &e.kind {
        ExprKind::Const(Const::I32(x)) => Some(*x),
        ExprKind::Dim(d) => b.eval(d).ok(),
        ExprKind::Binary(BinOp::Mul, x, y) => int_value(x, b)?.checked_mul(int_value(y, b)?),
        _ => None,
    }
}

fn is_var(e: &Expr, k: usize) -> bool {
    matches!(e.kind, ExprKind::Var(x) if x.index() == k)
}

fn dtype_of(t: ScalarTy) -> Option<DType> {
    match t {
        ScalarTy::F32 => Some(DType::F32),
        ScalarTy::I32 => Some(DType::I32),
        ScalarTy::Bool => None,
    }
}

/// The reduction's identity, as the interpreter starts it ([`crate::ops::Acc::new`]).
fn identity(op: ReduceOp, dtype: DType) -> VExpr {
    match (op, dtype) {
        (ReduceOp::Max, DType::I32) => VExpr::I32(i32::MIN as i64),
        (ReduceOp::Min, DType::I32) => VExpr::I32(i32::MAX as i64),
        (_, DType::I32) => VExpr::I32(0),
        (ReduceOp::Max, _) => VExpr::F32(f32::NEG_INFINITY),
        (ReduceOp::Min, _) => VExpr::F32(f32::INFINITY),
        _ => VExpr::F32(0.0),
    }
}

struct Scan<'a> {
    g: &'a Graph,
    b: &'a Binding,
    group: &'a Group,
    out: &'a [i64],
    /// The evaluated extents of the current member's variables.
    ext: Vec<i64>,
}

impl Scan<'_> {
    fn q(&self) -> usize {
        self.out.len()
    }

    fn out_vars(&self, idx: &[Expr]) -> bool {
        idx.len() == self.q() && idx.iter().enumerate().all(|(k, e)| is_var(e, k))
    }

    /// Whether `idx` reads a source of dims `sd` in row-major order along the one variable of `r`, whose
    /// extent is every element: `src[r0 / (B·C) % A, r0 / C % B, r0 / 1 % C]`, the form of an argmax or
    /// argmin over a whole tensor (a flat position); as a flat stream, the same as a tile read.
    fn flat_read(&self, idx: &[Expr], sd: &[i64], r: &Red) -> bool {
        let [k] = r.vars[..] else { return false };
        if idx.len() != sd.len() || prod(sd) != Some(r.n) {
            return false;
        }
        let int = |e: &Expr| int_value(e, self.b);
        idx.iter().enumerate().all(|(j, e)| {
            let stride = prod(&sd[j + 1..]);
            // `r0 / S % D`, or without the `% D` on the first axis, or without the `/ S` where it is 1.
            let (quot, dim) = match &e.kind {
                ExprKind::Binary(BinOp::Mod, q, d) => (&**q, int(d)),
                _ if j == 0 => (e, Some(sd[0])),
                _ => return false,
            };
            let by = match &quot.kind {
                ExprKind::Binary(BinOp::Div, x, s) if is_var(x, k) => int(s),
                _ if is_var(quot, k) => Some(1),
                _ => None,
            };
            dim == Some(sd[j]) && by.is_some() && by == stride
        })
    }

    fn classify(&self, src: ValueId, idx: &[Expr], red: Option<&Red>) -> Option<Kind> {
        let sd = eval_dims(self.b, &self.g.node(src).shape)?;
        let q = self.q();
        let member = self.group.nodes.contains(&src);
        match red {
            Some(r) => {
                if member {
                    return None;
                }
                let nv = r.vars.len();
                if sd.is_empty() {
                    Some(Kind::Scalar)
                } else if q == 0 && self.flat_read(idx, &sd, r)
                    || idx.len() == nv + q
                        && idx[..nv].iter().zip(&r.vars).all(|(e, k)| is_var(e, *k))
                        && self.out_vars(&idx[nv..])
                        && sd[..] == [r.ext.as_slice(), self.out].concat()[..]
                {
                    Some(Kind::Tile)
                } else if q > 0 && idx.len() == nv && idx.iter().zip(&r.vars).all(|(e, k)| is_var(e, *k)) && sd == r.ext
                {
                    Some(Kind::RowB)
                } else if q > 0 && self.out_vars(idx) && sd == self.out {
                    Some(Kind::ColB)
                } else {
                    None
                }
            }
            None => {
                if member {
                    (sd == self.out && self.out_vars(idx)).then_some(Kind::Member)
                } else if sd.is_empty() {
                    Some(Kind::Scalar)
                } else {
                    (q > 0 && self.out_vars(idx) && sd == self.out).then_some(Kind::ColB)
                }
            }
        }
    }

    fn scan(&self, e: &Expr, red: Option<&mut Red>, an: &mut Analysis) -> Option<()> {
        let mut red = red;
        match &e.kind {
            ExprKind::Const(_) => Some(()),
            ExprKind::Dim(d) => self.b.eval(d).ok().map(|_| ()),
            ExprKind::Var(x) => {
                let k = x.index();
                (k < self.q() || red.as_ref().is_some_and(|r| r.vars.contains(&k))).then_some(())
            }
            ExprKind::Load { src, idx } => {
                let k = self.classify(*src, idx, red.as_deref())?;
                if *an.kinds.entry(*src).or_insert(k) != k {
                    return None;
                }
                if let Some(r) = red {
                    if matches!(k, Kind::Tile | Kind::RowB) {
                        r.streamed.insert(*src);
                    }
                }
                Some(())
            }
            ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => self.scan(a, red, an),
            ExprKind::Binary(_, a, x) => {
                self.scan(a, red.as_deref_mut(), an)?;
                self.scan(x, red, an)
            }
            ExprKind::Select(cnd, a, x) => {
                self.scan(cnd, red.as_deref_mut(), an)?;
                self.scan(a, red.as_deref_mut(), an)?;
                self.scan(x, red, an)
            }
            ExprKind::Reduce { op, vars, body } => {
                if red.is_some() || vars.is_empty() {
                    return None;
                }
                let vs: Vec<usize> = vars.iter().map(|x| x.index()).collect();
                if vs.iter().any(|k| *k < self.q()) {
                    return None;
                }
                let ext: Vec<i64> = vs.iter().map(|k| self.ext.get(*k).copied()).collect::<Option<_>>()?;
                if ext.iter().any(|x| *x < 0) {
                    return None;
                }
                let mut r = Red {
                    op: *op,
                    n: prod(&ext)?,
                    vars: vs,
                    ext,
                    dtype: dtype_of(body.ty)?,
                    body: (**body).clone(),
                    streamed: BTreeSet::new(),
                };
                self.scan(body, Some(&mut r), an)?;
                an.reds.push(r);
                Some(())
            }
            ExprKind::Segment { .. } => None,
        }
    }
}

/// The analysis of a group: the output dims `O` (empty for scalars), the reads and the reductions.
fn analyse(g: &Graph, group: &Group, b: &Binding) -> Option<(Vec<i64>, Analysis)> {
    let out = eval_dims(b, &g.node(*group.nodes.first()?).shape)?;
    let mut an = Analysis { kinds: BTreeMap::new(), reds: Vec::new() };
    for m in &group.nodes {
        let node = g.node(*m);
        let NodeKind::Compute { vars, body } = &node.kind else { return None };
        if eval_dims(b, &node.shape)? != out {
            return None;
        }
        let ext: Vec<i64> = vars.iter().map(|x| b.eval(&x.extent).ok()).collect::<Option<_>>()?;
        let sc = Scan { g, b, group, out: &out, ext };
        sc.scan(body, None, &mut an)?;
    }
    if an.reds.is_empty() || out.iter().any(|d| *d < 0) {
        return None;
    }
    Some((out, an))
}

/// The launches for a vector group that reduces across rows (see the module documentation), or `None` if
/// the group does not have that form.
pub fn reduce(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Tiled, Diagnostic>> {
    if group.kind != GroupKind::Vector || group.nodes.is_empty() {
        return None;
    }
    let (out, an) = analyse(g, group, b)?;
    let inputs_in_gm = an.kinds.iter().all(|(s, k)| *k == Kind::Member || gm.of.contains_key(s));
    if !inputs_in_gm || group.stored.iter().any(|s| !gm.of.contains_key(s) || !group.nodes.contains(s)) {
        return None;
    }
    if out.is_empty() {
        whole(g, group, name, gm, target, b, &an)
    } else {
        columns(g, group, name, gm, target, b, &out, &an)
    }
}

fn label(g: &Graph, x: ValueId) -> String {
    g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0))
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

/// The value of variable `j` of `dims` (row-major) at flat index `flat`.
fn unravel_at(flat: VExpr, dims: &[i64], j: usize) -> Option<VExpr> {
    Some(unravel(flat, prod(&dims[j + 1..])?, dims[j], j == 0))
}

/// Translates expressions of one group to vector expressions.
struct Translate<'a> {
    b: &'a Binding,
    kinds: &'a BTreeMap<ValueId, Kind>,
    bufs: &'a BTreeMap<ValueId, BufId>,
    out: &'a [i64],
    /// Whether the rows of a reduction lie along the tile's columns (whole-tensor reductions, `q = 0`).
    flat: bool,
    /// The row stride of tile buffers (`Dc`), the slot, the row offset and the column offset registers.
    dc: i64,
    slot: u32,
    off: Option<SVar>,
    cb: Option<SVar>,
    /// Outside reductions: each reduction's result buffer, in traversal order, and the next one.
    results: &'a [BufId],
    next: usize,
}

impl Translate<'_> {
    fn vexpr(&mut self, e: &Expr, red: Option<&Red>) -> Option<VExpr> {
        Some(match &e.kind {
            ExprKind::Const(Const::F32(x)) => VExpr::F32(*x),
            ExprKind::Const(Const::I32(x)) => VExpr::I32(*x),
            ExprKind::Const(Const::Bool(x)) => VExpr::Bool(*x),
            ExprKind::Dim(d) => VExpr::I32(self.b.eval(d).ok()?),
            ExprKind::Var(x) => {
                let k = x.index();
                if k < self.out.len() {
                    let flat = ibin(BinOp::Add, VExpr::Scalar(v(self.cb?)), VExpr::Col);
                    unravel_at(flat, self.out, k)?
                } else {
                    let r = red?;
                    let j = r.vars.iter().position(|y| *y == k)?;
                    let along = if self.flat { VExpr::Col } else { VExpr::Row };
                    let flat = ibin(BinOp::Add, VExpr::Scalar(v(self.off?)), along);
                    unravel_at(flat, &r.ext, j)?
                }
            }
            ExprKind::Load { src, .. } => {
                let buf = *self.bufs.get(src)?;
                match self.kinds.get(src)? {
                    Kind::Scalar => VExpr::ReadRow(buf_region(buf, 0, 0)),
                    Kind::ColB | Kind::Member => VExpr::ReadCol(buf_region(buf, 0, 0)),
                    Kind::RowB => VExpr::ReadRow(buf_region(buf, self.slot, 1)),
                    Kind::Tile => VExpr::Read(buf_region(buf, self.slot, if self.flat { 0 } else { self.dc })),
                }
            }
            ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(self.vexpr(a, red)?)),
            ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(self.vexpr(a, red)?)),
            ExprKind::Binary(op, a, x) => {
                let a = self.vexpr(a, red)?;
                ibin(*op, a, self.vexpr(x, red)?)
            }
            ExprKind::Select(cnd, a, x) => {
                let cnd = self.vexpr(cnd, red)?;
                let a = self.vexpr(a, red)?;
                VExpr::Select(Box::new(cnd), Box::new(a), Box::new(self.vexpr(x, red)?))
            }
            ExprKind::Reduce { .. } => {
                if red.is_some() {
                    return None;
                }
                let buf = *self.results.get(self.next)?;
                self.next += 1;
                VExpr::ReadCol(buf_region(buf, 0, 0))
            }
            ExprKind::Segment { .. } => return None,
        })
    }
}

/// The buffer planner's bytes for `elems` elements of `size` bytes in `slots` slots, aligned.
fn placed(elems: u64, size: u64, slots: u64, align: u64) -> u64 {
    elems.saturating_mul(size).div_ceil(align).saturating_mul(align).saturating_mul(slots)
}

/// A slot of `elems` elements whose bytes are a multiple of `align` (so that a second slot is aligned).
fn padded(elems: u64, size: u64, align: u64) -> Vec<u64> {
    let bytes = elems.max(1) * size;
    vec![bytes.div_ceil(align) * align / size.max(1)]
}

/// Per member, the slice of `results` its reductions use (in the analysis' order).
fn member_results(g: &Graph, group: &Group, results: &[BufId]) -> Vec<Vec<BufId>> {
    let mut at = 0;
    group
        .nodes
        .iter()
        .map(|m| {
            let mut n = 0;
            if let NodeKind::Compute { body, .. } = &g.node(*m).kind {
                body.walk(&mut |e| n += matches!(e.kind, ExprKind::Reduce { .. }) as usize);
            }
            let r = results.get(at..at + n).map(|s| s.to_vec()).unwrap_or_default();
            at += n;
            r
        })
        .collect()
}

/// The members' vector statements over `cols` columns, reading the reductions' results from `results`.
#[allow(clippy::too_many_arguments)]
fn members(
    g: &Graph,
    group: &Group,
    b: &Binding,
    an: &Analysis,
    bufs: &BTreeMap<ValueId, BufId>,
    out: &[i64],
    results: &[BufId],
    cb: Option<SVar>,
    cols: SExpr,
) -> Option<Vec<Stmt>> {
    let mut st = Vec::new();
    for (m, res) in group.nodes.iter().zip(member_results(g, group, results)) {
        let NodeKind::Compute { body, .. } = &g.node(*m).kind else { return None };
        let mut tr = Translate {
            b,
            kinds: &an.kinds,
            bufs,
            out,
            flat: out.is_empty(),
            dc: 0,
            slot: 0,
            off: None,
            cb,
            results: &res,
            next: 0,
        };
        let expr = tr.vexpr(body, None)?;
        st.push(Stmt::Vector { dst: buf_region(*bufs.get(m)?, 0, 0), rows: c(1), cols: cols.clone(), expr });
    }
    Some(st)
}

/// The double-buffered loop over one reduction's rows (`q ≥ 1`) or elements (`q = 0`), in blocks of
/// `blk`: block `i` of this core at `lo + i * stride`; `load(slot, off, len)` gives the copies.
#[allow(clippy::too_many_arguments)]
fn stream(
    lb: &mut LaunchBuilder,
    lo: SExpr,
    n: i64,
    blk: i64,
    stride: i64,
    off: SVar,
    len: SVar,
    load: &dyn Fn(u32) -> Vec<Stmt>,
    work: &mut dyn FnMut(u32) -> Option<Vec<Stmt>>,
) -> Option<Stmt> {
    let mut slots: [Vec<Stmt>; 2] = Default::default();
    for slot in 0..2u32 {
        let ev = slot as u8;
        let mut st = vec![
            Stmt::Set { var: len, value: bin(SBin::Min, c(blk), bin(SBin::Sub, c(n), v(off))) },
            Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ev },
        ];
        st.extend(load(slot));
        st.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.extend(work(slot)?);
        st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
        slots[slot as usize] = st;
    }
    Some(super::two_slot_loop(lb.svar("base"), off, lo, n, stride, slots))
}

/// Copies the scalar inputs into their buffers, then orders the vector unit after them (event `ev`).
fn load_scalars(an: &Analysis, bufs: &BTreeMap<ValueId, BufId>, gm: &GmPlan, ev: u8) -> Vec<Stmt> {
    let mut st: Vec<Stmt> = an
        .kinds
        .iter()
        .filter(|(_, k)| **k == Kind::Scalar)
        .map(|(s, _)| Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_row(gm.of[s], c(0)),
            dst: buf_region(bufs[s], 0, 0),
            rows: c(1),
            cols: c(1),
        })
        .collect();
    if !st.is_empty() {
        st.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
    }
    st
}

/// Whole-tensor reductions: partials per core, then their combination (or one launch on one core).
fn whole(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
    an: &Analysis,
) -> Option<Result<Tiled, Diagnostic>> {
    // Positions are i32 (and `i32::MAX` marks none yet).
    if an.reds.iter().any(|r| r.index() && r.n >= i64::from(i32::MAX)) {
        return None;
    }
    let ub = target.memory("ub")?;
    let align = ub.align.max(1);
    let size = |x: ValueId| g.node(x).dtype.size_bytes() as u64;
    let tiles: Vec<ValueId> = an.kinds.iter().filter(|(_, k)| **k == Kind::Tile).map(|(s, _)| *s).collect();
    let dtypes: BTreeSet<DType> = an.reds.iter().map(|r| r.dtype).collect();

    // Chunk: a multiple of 256 elements whose buffers fit in UB; at least 1024 elements per core, so that
    // small inputs stay on one core (and one launch).
    let per_elem: u64 = tiles.iter().map(|s| size(*s) * 2).sum::<u64>() + dtypes.len() as u64 * 4;
    // Two small buffers per reduction, three more per argmax or argmin (its position, a chunk's extreme and
    // position).
    let indexes = an.reds.iter().filter(|r| r.index()).count();
    let fixed = align * (an.kinds.len() + 2 * an.reds.len() + 3 * indexes + group.nodes.len() + 4) as u64;
    let cap = (ub.usable().saturating_sub(fixed) / per_elem.max(1) / 256 * 256).clamp(256, 16 * 1024) as i64;
    let maxn = an.reds.iter().map(|r| r.n).max().unwrap_or(0).max(1);
    let vc = target.vector_cores.max(1) as i64;
    let even = round_up(div_up(maxn, vc), 256);
    let chunk = cap.min(even.max(1024)).min(round_up(maxn, 256));
    let cores = vc.min(div_up(maxn, chunk)).max(1);
    let single = cores == 1;

    let lname = if single { name.to_string() } else { format!("{name}.partial") };
    let mut lb = LaunchBuilder::new(target, lname, Unit::Vector, 0, cores as u32);
    let mut bufs: BTreeMap<ValueId, BufId> = BTreeMap::new();
    for (s, k) in &an.kinds {
        match k {
            Kind::Tile => {
                bufs.insert(
                    *s,
                    lb.buffer(format!("{}_in", label(g, *s)), Mem::UB, g.node(*s).dtype, vec![chunk as u64], 2),
                );
            }
            Kind::Scalar => {
                bufs.insert(*s, lb.buffer(format!("{}_in", label(g, *s)), Mem::UB, g.node(*s).dtype, vec![1], 1));
            }
            _ => {}
        }
    }
    let tmp: BTreeMap<DType, BufId> = dtypes
        .iter()
        .map(|d| (*d, lb.buffer(format!("body_{}", d.name()), Mem::UB, *d, vec![chunk as u64], 1)))
        .collect();
    let accs: Vec<BufId> =
        an.reds.iter().enumerate().map(|(i, r)| lb.buffer(format!("acc{i}"), Mem::UB, r.dtype, vec![1], 1)).collect();
    // An argmax or argmin keeps the extreme so far (`acc`) and its position (`at`, from i32::MAX), and reduces
    // each chunk to its extreme and that one's position in the chunk (`cv`, `ci`).
    let mut at: BTreeMap<usize, [BufId; 3]> = BTreeMap::new();
    for (i, r) in an.reds.iter().enumerate().filter(|(_, r)| r.index()) {
        let one = |lb: &mut LaunchBuilder, n: String, d: DType| lb.buffer(n, Mem::UB, d, vec![1], 1);
        let bs = [
            one(&mut lb, format!("acc{i}_at"), DType::I32),
            one(&mut lb, format!("chunk{i}_extreme"), r.dtype),
            one(&mut lb, format!("chunk{i}_at"), DType::I32),
        ];
        at.insert(i, bs);
    }
    let off = lb.svar("off");
    let len = lb.svar("len");

    let mut prog = load_scalars(an, &bufs, gm, 2);
    for (i, (r, acc)) in an.reds.iter().zip(&accs).enumerate() {
        prog.push(Stmt::Vector {
            dst: buf_region(*acc, 0, 0),
            rows: c(1),
            cols: c(1),
            expr: identity(r.value_op(), r.dtype),
        });
        if let Some([p, _, _]) = at.get(&i) {
            let expr = VExpr::I32(i32::MAX as i64);
            prog.push(Stmt::Vector { dst: buf_region(*p, 0, 0), rows: c(1), cols: c(1), expr });
        }
    }
    for s in 0..2u8 {
        prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
    }
    let stride = cores * chunk;
    for (i, (r, acc)) in an.reds.iter().zip(&accs).enumerate() {
        let index = at.get(&i).copied();
        let load = |slot: u32| -> Vec<Stmt> {
            r.streamed
                .iter()
                .map(|s| Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: gm_row(gm.of[s], v(off)),
                    dst: buf_region(bufs[s], slot, 0),
                    rows: c(1),
                    cols: v(len),
                })
                .collect()
        };
        let kinds = &an.kinds;
        let bufs_ref = &bufs;
        let t = tmp[&r.dtype];
        let mut work = |slot: u32| -> Option<Vec<Stmt>> {
            let mut tr = Translate {
                b,
                kinds,
                bufs: bufs_ref,
                out: &[],
                flat: true,
                dc: 0,
                slot,
                off: Some(off),
                cb: None,
                results: &[],
                next: 0,
            };
            let expr = tr.vexpr(&r.body, Some(r))?;
            let mut st = vec![Stmt::Vector { dst: buf_region(t, 0, 0), rows: c(1), cols: v(len), expr }];
            let Some([p, cv, ci]) = index else {
                st.push(Stmt::Reduce {
                    op: r.op,
                    axis: 1,
                    src: buf_region(t, 0, 0),
                    dst: buf_region(*acc, 0, 0),
                    rows: c(1),
                    cols: v(len),
                    accumulate: true,
                });
                return Some(st);
            };
            // The chunk's extreme and its position, then the one before the other is kept: the position
            // first (from the old extreme), then the extreme where the position moved (positions differ).
            for (op, dst) in [(r.value_op(), cv), (r.op, ci)] {
                let (src, dst) = (buf_region(t, 0, 0), buf_region(dst, 0, 0));
                st.push(Stmt::Reduce { op, axis: 1, src, dst, rows: c(1), cols: v(len), accumulate: false });
            }
            let one = |b: BufId| VExpr::ReadRow(buf_region(b, 0, 0));
            let gi = || ibin(BinOp::Add, one(ci), VExpr::Scalar(v(off)));
            let take = before(r.op == ReduceOp::ArgMax, one(cv), gi(), one(*acc), one(p));
            let expr = VExpr::Select(Box::new(take), Box::new(gi()), Box::new(one(p)));
            st.push(Stmt::Vector { dst: buf_region(p, 0, 0), rows: c(1), cols: c(1), expr });
            let moved = ibin(BinOp::Eq, one(p), gi());
            let expr = VExpr::Select(Box::new(moved), Box::new(one(cv)), Box::new(one(*acc)));
            st.push(Stmt::Vector { dst: buf_region(*acc, 0, 0), rows: c(1), cols: c(1), expr });
            Some(st)
        };
        let lo = bin(SBin::Mul, SExpr::Core, c(chunk));
        prog.push(stream(&mut lb, lo, r.n, chunk, stride, off, len, &load, &mut work)?);
    }
    for s in 0..2u8 {
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
    }

    // The members and their stores, in the launch that has the reductions' results.
    let finish_members = |lb: &mut LaunchBuilder,
                          bufs: &mut BTreeMap<ValueId, BufId>,
                          results: &[BufId],
                          prog: &mut Vec<Stmt>|
     -> Option<()> {
        for m in &group.nodes {
            bufs.insert(*m, lb.buffer(label(g, *m), Mem::UB, g.node(*m).dtype, vec![1], 1));
        }
        prog.extend(members(g, group, b, an, bufs, &[], results, None, c(1))?);
        prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
        for m in &group.stored {
            prog.push(Stmt::Copy {
                pipe: Pipe::Mte3,
                src: buf_region(bufs[m], 0, 0),
                dst: gm_row(gm.of[m], c(0)),
                rows: c(1),
                cols: c(1),
            });
        }
        Some(())
    };

    if single {
        let results: Vec<BufId> = accs.iter().enumerate().map(|(i, a)| at.get(&i).map_or(*a, |b| b[0])).collect();
        finish_members(&mut lb, &mut bufs, &results, &mut prog)?;
        lb.launch.vector = prog;
        return Some(lb.finish("chunk sizes chosen by the tiler").map(Tiled::one));
    }

    // Launch 1 ends with each core's partials in the workspaces.
    prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
    prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
    let ws0 = gm.tensors.len();
    let mut workspaces = Vec::new();
    for (i, (r, acc)) in an.reds.iter().zip(&accs).enumerate() {
        workspaces.push(GmTensor {
            name: format!("{name}.partials{i}"),
            dtype: r.dtype,
            shape: vec![cores as u64],
            role: TensorRole::Workspace { per_core: r.dtype.size_bytes() as u64, unit_private: false },
        });
        prog.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: buf_region(*acc, 0, 0),
            dst: gm_row(TensorId((ws0 + i) as u32), SExpr::Core),
            rows: c(1),
            cols: c(1),
        });
    }
    // An argmax's or argmin's positions, after every reduction's extremes.
    let wsa = gm.tensors.len() + workspaces.len();
    let mut at_ws: BTreeMap<usize, TensorId> = BTreeMap::new();
    for (i, [p, _, _]) in &at {
        let id = TensorId((wsa + at_ws.len()) as u32);
        workspaces.push(GmTensor {
            name: format!("{name}.partials{i}_at"),
            dtype: DType::I32,
            shape: vec![cores as u64],
            role: TensorRole::Workspace { per_core: 4, unit_private: false },
        });
        prog.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: buf_region(*p, 0, 0),
            dst: gm_row(id, SExpr::Core),
            rows: c(1),
            cols: c(1),
        });
        at_ws.insert(*i, id);
    }
    lb.launch.vector = prog;
    let first = match lb.finish("chunk sizes chosen by the tiler") {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };

    // Launch 2: one core combines the partials in core order and evaluates the members.
    let mut lb = LaunchBuilder::new(target, format!("{name}.combine"), Unit::Vector, 0, 1);
    let mut bufs: BTreeMap<ValueId, BufId> = BTreeMap::new();
    for (s, k) in &an.kinds {
        if *k == Kind::Scalar {
            bufs.insert(*s, lb.buffer(format!("{}_in", label(g, *s)), Mem::UB, g.node(*s).dtype, vec![1], 1));
        }
    }
    let mut prog = Vec::new();
    let mut parts = Vec::new();
    let mut combs = Vec::new();
    // Per argmax or argmin: its partial positions, the candidates among them, and the combined position.
    let mut part_at: BTreeMap<usize, [BufId; 3]> = BTreeMap::new();
    for (i, r) in an.reds.iter().enumerate() {
        let part = lb.buffer(format!("part{i}"), Mem::UB, r.dtype, padded(cores as u64, 4, align), 1);
        combs.push(lb.buffer(format!("comb{i}"), Mem::UB, r.dtype, vec![1], 1));
        prog.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_row(TensorId((ws0 + i) as u32), c(0)),
            dst: buf_region(part, 0, 0),
            rows: c(1),
            cols: c(cores),
        });
        parts.push(part);
        if let Some(id) = at_ws.get(&i) {
            let pa = lb.buffer(format!("part{i}_at"), Mem::UB, DType::I32, padded(cores as u64, 4, align), 1);
            let cand = lb.buffer(format!("cand{i}_at"), Mem::UB, DType::I32, padded(cores as u64, 4, align), 1);
            let comb = lb.buffer(format!("comb{i}_at"), Mem::UB, DType::I32, vec![1], 1);
            prog.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_row(*id, c(0)),
                dst: buf_region(pa, 0, 0),
                rows: c(1),
                cols: c(cores),
            });
            part_at.insert(i, [pa, cand, comb]);
        }
    }
    for (s, k) in &an.kinds {
        if *k == Kind::Scalar {
            prog.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_row(gm.of[s], c(0)),
                dst: buf_region(bufs[s], 0, 0),
                rows: c(1),
                cols: c(1),
            });
        }
    }
    prog.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 0 });
    prog.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 0 });
    let mut results = combs.clone();
    // `dst = op` of the `cores` partials in `src`.
    let across = |op: ReduceOp, src: BufId, dst: BufId| Stmt::Reduce {
        op,
        axis: 1,
        src: buf_region(src, 0, 0),
        dst: buf_region(dst, 0, 0),
        rows: c(1),
        cols: c(cores),
        accumulate: false,
    };
    for (i, ((r, part), comb)) in an.reds.iter().zip(&parts).zip(&combs).enumerate() {
        prog.push(across(r.value_op(), *part, *comb));
        // The lowest position among the cores whose extreme is the combined one (both NaN counts as equal).
        if let Some([pa, cand, ca]) = part_at.get(&i) {
            let (pv, cv) = (VExpr::Read(buf_region(*part, 0, 0)), VExpr::ReadRow(buf_region(*comb, 0, 0)));
            let same = ibin(BinOp::Or, ibin(BinOp::Eq, pv.clone(), cv.clone()), ibin(BinOp::And, nan(pv), nan(cv)));
            let expr = VExpr::Select(
                Box::new(same),
                Box::new(VExpr::Read(buf_region(*pa, 0, 0))),
                Box::new(VExpr::I32(i32::MAX as i64)),
            );
            prog.push(Stmt::Vector { dst: buf_region(*cand, 0, 0), rows: c(1), cols: c(cores), expr });
            prog.push(across(ReduceOp::Min, *cand, *ca));
            results[i] = *ca;
        }
    }
    finish_members(&mut lb, &mut bufs, &results, &mut prog)?;
    lb.launch.vector = prog;
    let second = match lb.finish("chunk sizes chosen by the tiler") {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Tiled { launches: vec![first, second], workspaces, tuning: Vec::new() }))
}

/// Column reductions: column blocks across the cores, row blocks down each reduction.
#[allow(clippy::too_many_arguments)]
fn columns(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
    out: &[i64],
    an: &Analysis,
) -> Option<Result<Tiled, Diagnostic>> {
    // An argmax or argmin across rows has no accumulating form here.
    if an.reds.iter().any(Red::index) {
        return None;
    }
    let ub = target.memory("ub")?;
    let align = ub.align.max(1);
    let size = |x: ValueId| g.node(x).dtype.size_bytes() as u64;
    let w = prod(out)?;
    let maxr = an.reds.iter().map(|r| r.n).max().unwrap_or(0).max(1);
    let dtypes: BTreeSet<DType> = an.reds.iter().map(|r| r.dtype).collect();
    let fits = |rt: u64, dc: u64| -> bool {
        let mut at = 0u64;
        for (s, k) in &an.kinds {
            at = at.saturating_add(match k {
                Kind::Tile => placed(rt.saturating_mul(dc), size(*s), 2, align),
                Kind::RowB => placed(rt, size(*s), 2, align),
                Kind::ColB => placed(dc, size(*s), 1, align),
                Kind::Scalar => placed(1, size(*s), 1, align),
                Kind::Member => 0,
            });
        }
        for _ in &dtypes {
            at = at.saturating_add(placed(rt.saturating_mul(dc), 4, 1, align));
        }
        for r in &an.reds {
            at = at.saturating_add(placed(dc, r.dtype.size_bytes() as u64, 1, align));
        }
        for m in &group.nodes {
            at = at.saturating_add(placed(dc, size(*m), 1, align));
        }
        at <= ub.usable()
    };
    // Column blocks: an even share of the columns (at least 64, a multiple of 16); rows: at most 8192
    // elements per tile, as many as fit.
    let vc = target.vector_cores.max(1) as i64;
    let mut dc = w.min(round_up(div_up(w, vc), 16).max(64)).clamp(1, 4096);
    let rt = loop {
        let cap = (8192 / dc).clamp(1, maxr) as u64;
        let (mut lo, mut hi) = (1u64, cap);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid, dc as u64) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if fits(lo, dc as u64) && (lo as i64 >= cap.min(8) as i64 || dc == 1) {
            break lo as i64;
        }
        if dc == 1 {
            return None;
        }
        dc = (dc / 2).max(1);
    };
    let cores = vc.min(div_up(w, dc)).max(1);

    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores as u32);
    let mut bufs: BTreeMap<ValueId, BufId> = BTreeMap::new();
    let tile_shape = |elems: u64, sz: u64| -> Vec<u64> {
        if (elems * sz).is_multiple_of(align) {
            vec![rt as u64, dc as u64]
        } else {
            padded(elems, sz, align)
        }
    };
    for (s, k) in &an.kinds {
        let sz = size(*s);
        let (shape, slots) = match k {
            Kind::Tile => (tile_shape(rt as u64 * dc as u64, sz), 2),
            Kind::RowB => (padded(rt as u64, sz, align), 2),
            Kind::ColB => (vec![1, dc as u64], 1),
            Kind::Scalar => (vec![1], 1),
            Kind::Member => continue,
        };
        bufs.insert(*s, lb.buffer(format!("{}_in", label(g, *s)), Mem::UB, g.node(*s).dtype, shape, slots));
    }
    let tmp: BTreeMap<DType, BufId> = dtypes
        .iter()
        .map(|d| (*d, lb.buffer(format!("body_{}", d.name()), Mem::UB, *d, vec![rt as u64, dc as u64], 1)))
        .collect();
    let accs: Vec<BufId> = an
        .reds
        .iter()
        .enumerate()
        .map(|(i, r)| lb.buffer(format!("acc{i}"), Mem::UB, r.dtype, vec![1, dc as u64], 1))
        .collect();
    for m in &group.nodes {
        bufs.insert(*m, lb.buffer(label(g, *m), Mem::UB, g.node(*m).dtype, vec![1, dc as u64], 1));
    }
    let cb = lb.svar("cb");
    let clen = lb.svar("clen");
    let off = lb.svar("off");
    let len = lb.svar("len");

    let mut prog = load_scalars(an, &bufs, gm, 2);
    for e in [0u8, 1, 3] {
        prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: e });
    }
    prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 3 });

    let mut blk = vec![Stmt::Set { var: clen, value: bin(SBin::Min, c(dc), bin(SBin::Sub, c(w), v(cb))) }];
    blk.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 3 });
    for (s, k) in &an.kinds {
        if *k == Kind::ColB {
            blk.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_row(gm.of[s], v(cb)),
                dst: buf_region(bufs[s], 0, 0),
                rows: c(1),
                cols: v(clen),
            });
        }
    }
    blk.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 3 });
    blk.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 3 });
    blk.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 3 });
    for (r, acc) in an.reds.iter().zip(&accs) {
        blk.push(Stmt::Vector {
            dst: buf_region(*acc, 0, 0),
            rows: c(1),
            cols: v(clen),
            expr: identity(r.op, r.dtype),
        });
        let load = |slot: u32| -> Vec<Stmt> {
            r.streamed
                .iter()
                .map(|s| match an.kinds[s] {
                    Kind::Tile => Stmt::Copy {
                        pipe: Pipe::Mte2,
                        src: Region {
                            loc: Loc::Gm(gm.of[s]),
                            offset: bin(SBin::Add, bin(SBin::Mul, v(off), c(w)), v(cb)),
                            row_stride: c(w),
                        },
                        dst: buf_region(bufs[s], slot, dc),
                        rows: v(len),
                        cols: v(clen),
                    },
                    _ => Stmt::Copy {
                        pipe: Pipe::Mte2,
                        src: gm_row(gm.of[s], v(off)),
                        dst: buf_region(bufs[s], slot, 0),
                        rows: c(1),
                        cols: v(len),
                    },
                })
                .collect()
        };
        let kinds = &an.kinds;
        let bufs_ref = &bufs;
        let t = tmp[&r.dtype];
        let mut work = |slot: u32| -> Option<Vec<Stmt>> {
            let mut tr = Translate {
                b,
                kinds,
                bufs: bufs_ref,
                out,
                flat: false,
                dc,
                slot,
                off: Some(off),
                cb: Some(cb),
                results: &[],
                next: 0,
            };
            let expr = tr.vexpr(&r.body, Some(r))?;
            Some(vec![
                Stmt::Vector { dst: buf_region(t, 0, dc), rows: v(len), cols: v(clen), expr },
                Stmt::Reduce {
                    op: r.op,
                    axis: 0,
                    src: buf_region(t, 0, dc),
                    dst: buf_region(*acc, 0, 0),
                    rows: v(len),
                    cols: v(clen),
                    accumulate: true,
                },
            ])
        };
        blk.push(stream(&mut lb, c(0), r.n, rt, rt, off, len, &load, &mut work)?);
    }
    blk.extend(members(g, group, b, an, &bufs, out, &accs, Some(cb), v(clen))?);
    blk.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: 3 });
    blk.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
    blk.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: 3 });
    for m in &group.stored {
        blk.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: buf_region(bufs[m], 0, 0),
            dst: gm_row(gm.of[m], v(cb)),
            rows: c(1),
            cols: v(clen),
        });
    }
    blk.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 3 });
    prog.push(Stmt::For { var: cb, lo: bin(SBin::Mul, SExpr::Core, c(dc)), hi: c(w), step: cores * dc, body: blk });
    for e in [0u8, 1, 3] {
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: e });
    }
    prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 3 });
    lb.launch.vector = prog;
    Some(lb.finish("column and row blocks chosen by the tiler").map(Tiled::one))
}
