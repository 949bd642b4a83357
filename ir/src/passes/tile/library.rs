//! Library groups: one data-dependent node (top-k, argsort, prefix sums, a histogram), run by a vector
//! core's scalar unit ([`Stmt::Library`], on pipe S) over blocks of its source copied into UB.
//!
//! The source is read from global memory. A source that fusion inlined (a copy, such as `reshape(idx, [T *
//! K])`) is followed to the stored tensor it reads, if the copy is exactly a row-major reshape (the flat
//! index of its load equals the flat index of its output at every element): those are the same bytes, so
//! the block is read from the stored tensor's flat data viewed with the node's source shape (a widening of
//! a float to f32 on the way, such as the `f32` view of a `bf16` source, is done by the copy into UB). Any
//! other copy (a transpose, a slice, a narrowing or integer cast) gives `None`.
//!
//! Top-k, argsort and prefix sums run along lines of the source: `rows` (the product of the other dims) ×
//! `cols` (the axis). Along the last axis a block of lines is one copy each way; along another axis a
//! line's elements lie `inner` apart (the product of the later dims), so each line of a block is copied
//! in, and its result out, as a column (a loop of column copies, which the host JIT turns into transposing
//! copies), and only whole lines that fit UB are taken. Blocks of `Rt` whole rows are split across the
//! vector cores (core `i` takes blocks `i`, `i + cores`, ...), two UB slots deep and software-pipelined
//! (see `pipelined`): the copy-in of the next block is issued before the library operation on the current
//! one, because the scalar unit that runs the operation also issues every statement and stops at its waits:
//!
//! ```text
//! set MTE3->S #0, #1                                   (prime: both output slots free)
//! load(0) at core*Rt                                   (copy.MTE2 rows -> in[0]; set MTE2->S #0)
//! for each block pair (slot s = 0, then 1):
//!   load(1 - s) at the next block                      (if there is one)
//!   wait MTE2->S #s;  wait MTE3->S #s;  library in[s] -> out[s]       (on S)
//!   copy.MTE3 out[s] -> GM;  set MTE3->S #s
//! wait MTE3->S #0, #1                                  (drain)
//! ```
//! Everything issued after the library operation (the copy-out, the next copy into its input slot) is
//! ordered after it by issue order; only the copy-in (MTE2 → S) and the reuse of an output slot (MTE3 → S)
//! need flags. A block is loaded exactly when it is worked on, so every wait has its set.
//!
//! A prefix sum whose row does not fit UB is also tiled along the columns: each block of `Rt` rows runs
//! over column tiles with a `carry` (`Rt × 1`, f32 or i32) that the vector unit zeroes before the block's
//! first tile (V → S flag); the column tiles of a block are pipelined as above. An argsort row that does
//! not fit UB is sorted in blocks that are then merged ([`wide_argsort`]: odd-even transposition of
//! merge-splits, in the output row, every address static). Top-k rows that do not fit UB would need a merge
//! of their own, which is not done here: those groups give `None`.
//!
//! A histogram ([`LibOp::BinCount`]) runs on one vector core: its counts (`1 × n` i32, zeroed by the
//! vector unit) stay in UB while the source streams through in pipelined, double-buffered chunks, then are
//! copied out once. If the counts do not fit UB the group gives `None`.

use super::{bin, buf_region, c, gm_row, v, GmPlan, LaunchBuilder};
use crate::diag::{Code, Diagnostic};
use crate::dtype::DType;
use crate::graph::{BinOp, Const, Expr, ExprKind, Graph, NodeKind, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::target::Target;
use crate::tile::*;

/// The most elements of a copy that [`reshape_source`] checks element by element.
const CHECK_LIMIT: i64 = 1 << 24;
/// The most elements (and bins) a source may have: keeps every size computation far from overflow.
const MAX_ELEMS: i64 = 1 << 48;

/// The number of elements of a shape, if it does not overflow.
fn numel(shape: &[i64]) -> Option<i64> {
    shape.iter().try_fold(1i64, |a, d| a.checked_mul(*d))
}

/// The launch for a library group, or `None` if the group is not a library group this template handles.
pub fn library(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Launch, Diagnostic>> {
    if group.kind != GroupKind::Library || group.nodes.len() != 1 {
        return None;
    }
    let node_id = group.nodes[0];
    let node = g.node(node_id);
    let out = *gm.of.get(&node_id)?;
    match &node.kind {
        NodeKind::BinCount { src, n } => {
            let n = b.eval(n).ok()?;
            let (t, shape) = resolve(g, gm, b, *src)?;
            let total: i64 = shape.iter().product();
            bincount(g, node_id, name, t, total, n, out, target)
        }
        NodeKind::TopK { src, k, axis, part } => {
            let k = b.eval(k).ok()?;
            let (t, shape) = resolve(g, gm, b, *src)?;
            let (rows, cols, inner) = rows_cols(&shape, *axis)?;
            if k < 0 || k > cols {
                return Some(Err(Diagnostic::error(
                    Code::ArgShape,
                    node.span,
                    format!("topk asks for the {k} largest values along an axis of size {cols}"),
                )
                .with_label(format!("k = {k}"))));
            }
            let op = RowOp::TopK { k, indices: *part == crate::graph::TopKPart::Indices };
            rowwise(g, node_id, name, gm, t, (rows, cols, inner), op, out, target)
        }
        NodeKind::ArgSort { src, axis, descending } => {
            let (t, shape) = resolve(g, gm, b, *src)?;
            let (rows, cols, inner) = rows_cols(&shape, *axis)?;
            let op = RowOp::ArgSort { descending: *descending };
            rowwise(g, node_id, name, gm, t, (rows, cols, inner), op, out, target)
        }
        NodeKind::CumSum { src, axis, exclusive } => {
            let (t, shape) = resolve(g, gm, b, *src)?;
            let (rows, cols, inner) = rows_cols(&shape, *axis)?;
            let op = RowOp::CumSum { exclusive: *exclusive };
            rowwise(g, node_id, name, gm, t, (rows, cols, inner), op, out, target)
        }
        _ => None,
    }
}

/// The lines of a shape along `axis`: their number `rows` (the product of the other dims), their length
/// `cols` (the axis), and `inner`, the product of the dims after the axis (1 for the last axis), which is
/// the stride of a line's elements: line `l` is elements `(l / inner) · cols · inner + l % inner + j · inner`.
fn rows_cols(shape: &[i64], axis: usize) -> Option<(i64, i64, i64)> {
    if axis >= shape.len() {
        return None;
    }
    let inner = numel(&shape[axis + 1..])?;
    Some((numel(&shape[..axis])?.checked_mul(inner)?, shape[axis], inner))
}

/// The stored tensor holding `src`'s elements in row-major order (from element 0), and `src`'s shape;
/// follows inlined copies that are exact row-major reshapes.
fn resolve(g: &Graph, gm: &GmPlan, b: &Binding, src: ValueId) -> Option<(TensorId, Vec<i64>)> {
    let shape: Vec<i64> = g.node(src).shape.iter().map(|d| b.eval(d).ok()).collect::<Option<_>>()?;
    if shape.iter().any(|d| *d < 0) || numel(&shape)? > MAX_ELEMS {
        return None;
    }
    if let Some(t) = gm.of.get(&src) {
        return Some((*t, shape));
    }
    let inner = reshape_source(g, b, src, &shape)?;
    let (t, _) = resolve(g, gm, b, inner)?;
    Some((t, shape))
}

/// If `v` is a copy whose body is one load at exactly its own row-major flat index (a reshape), maybe
/// widening a float to f32, the value it loads from.
fn reshape_source(g: &Graph, b: &Binding, v: ValueId, shape: &[i64]) -> Option<ValueId> {
    let node = g.node(v);
    let NodeKind::Compute { body, .. } = &node.kind else { return None };
    // A conversion to the node's own dtype (what the store does anyway) is allowed around the load.
    let load = match &body.kind {
        ExprKind::Cast(t, inner) if *t == node.dtype => inner,
        _ => body,
    };
    let ExprKind::Load { src, idx } = &load.kind else { return None };
    let s = g.node(*src);
    // The same dtype, or a float widened to f32 (exact, so a copy engine's conversion gives the same bits,
    // and any further copy in the chain keeps f32).
    let widened = s.dtype.is_float() && node.dtype == DType::F32;
    if (s.dtype != node.dtype && !widened) || idx.len() != s.rank() {
        return None;
    }
    let sshape: Vec<i64> = s.shape.iter().map(|d| b.eval(d).ok()).collect::<Option<_>>()?;
    let total: i64 = shape.iter().product();
    if total > CHECK_LIMIT || sshape.iter().any(|d| *d < 0) || total > numel(&sshape)? {
        return None;
    }
    // Every output element: the load's indices must be in range and at the same flat index.
    let rank = shape.len();
    let mut at = vec![0i64; rank];
    for flat in 0..total {
        let mut f = 0i64;
        for (k, e) in idx.iter().enumerate() {
            let x = eval_index(e, &at, b)?;
            if x < 0 || x >= sshape[k] {
                return None;
            }
            f = f * sshape[k] + x;
        }
        if f != flat {
            return None;
        }
        // Next multi-index, row-major.
        for k in (0..rank).rev() {
            at[k] += 1;
            if at[k] < shape[k] {
                break;
            }
            at[k] = 0;
        }
    }
    Some(*src)
}

/// The value of an index expression at output position `at`; `None` for anything but integer arithmetic
/// on the node's output variables, dims and constants.
fn eval_index(e: &Expr, at: &[i64], b: &Binding) -> Option<i64> {
    Some(match &e.kind {
        ExprKind::Const(Const::I32(x)) => *x,
        ExprKind::Var(x) => *at.get(x.index())?,
        ExprKind::Dim(d) => b.eval(d).ok()?,
        ExprKind::Binary(op, x, y) => {
            let (x, y) = (eval_index(x, at, b)?, eval_index(y, at, b)?);
            match op {
                BinOp::Add => x.checked_add(y)?,
                BinOp::Sub => x.checked_sub(y)?,
                BinOp::Mul => x.checked_mul(y)?,
                BinOp::Div if y != 0 => floor_div(x, y)?,
                BinOp::Mod if y != 0 => x.checked_sub(y.checked_mul(floor_div(x, y)?)?)?,
                BinOp::Min => x.min(y),
                BinOp::Max => x.max(y),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// `n` (at least 1) rounded up to a whole number of `align`-byte units of `size`-byte elements.
fn padded(n: i64, size: u64, align: u64) -> i64 {
    let per = if size > 0 && align.is_multiple_of(size) { (align / size).max(1) } else { align.max(1) };
    (n.max(1) as u64).next_multiple_of(per) as i64
}

/// Floor division (`y != 0`).
fn floor_div(x: i64, y: i64) -> Option<i64> {
    let q = x.checked_div(y)?;
    Some(if x % y != 0 && ((x < 0) != (y < 0)) { q - 1 } else { q })
}

/// The scalar registers of a [`pipelined`] loop.
struct PipeVars {
    base: SVar,
    /// The block being worked on.
    pos: SVar,
    /// The block being copied in.
    next: SVar,
}

impl PipeVars {
    fn new(lb: &mut LaunchBuilder<'_>) -> PipeVars {
        PipeVars { base: lb.svar("base"), pos: lb.svar("pos"), next: lb.svar("next") }
    }
}

/// A loop over the blocks at `lo, lo + stride, ..` below `hi`, two slots deep and software-pipelined: the
/// copy-in of the next block (`load(slot)`, at `next`, ending with `set MTE2->S #slot`) is issued before
/// the work on the current one (`work(slot)`, at `pos`, starting with `wait MTE2->S #slot`), so MTE2 fills
/// one slot while the scalar unit works on the other:
///
/// ```text
/// next = lo;  if next < hi: load(0)
/// for base in lo .. hi step 2*stride:
///   pos = base;  next = pos + stride;  if next < hi: load(1)
///   work(0)
///   pos = pos + stride
///   if pos < hi:  next = pos + stride;  if next < hi: load(0)
///                 work(1)
/// ```
/// A block is loaded exactly when it is worked on, so every wait has its set.
fn pipelined(
    pv: &PipeVars,
    lo: SExpr,
    hi: i64,
    stride: i64,
    load: &dyn Fn(u32) -> Vec<Stmt>,
    work: &dyn Fn(u32) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let before = |at: SVar| bin(SBin::Lt, v(at), c(hi));
    let step = |from: SVar| Stmt::Set { var: pv.next, value: bin(SBin::Add, v(from), c(stride)) };
    let mut body = vec![
        Stmt::Set { var: pv.pos, value: v(pv.base) },
        step(pv.pos),
        Stmt::If { cond: before(pv.next), then: load(1) },
    ];
    body.extend(work(0));
    body.push(Stmt::Set { var: pv.pos, value: bin(SBin::Add, v(pv.pos), c(stride)) });
    let second: Vec<Stmt> =
        [step(pv.pos), Stmt::If { cond: before(pv.next), then: load(0) }].into_iter().chain(work(1)).collect();
    body.push(Stmt::If { cond: before(pv.pos), then: second });
    vec![
        Stmt::Set { var: pv.next, value: lo.clone() },
        Stmt::If { cond: before(pv.next), then: load(0) },
        Stmt::For { var: pv.base, lo, hi: c(hi), step: 2 * stride, body },
    ]
}

/// The row operations.
#[derive(Copy, Clone, Debug, PartialEq)]
enum RowOp {
    TopK { k: i64, indices: bool },
    ArgSort { descending: bool },
    CumSum { exclusive: bool },
}

/// Top-k, argsort or a prefix sum along the last axis of `rows × cols` (the flat data of `src`).
#[allow(clippy::too_many_arguments)]
fn rowwise(
    g: &Graph,
    node_id: ValueId,
    name: &str,
    gm: &GmPlan,
    src: TensorId,
    (rows, cols, inner): (i64, i64, i64),
    op: RowOp,
    out: TensorId,
    target: &Target,
) -> Option<Result<Launch, Diagnostic>> {
    let node = g.node(node_id);
    let (NodeKind::TopK { src: sv, .. } | NodeKind::ArgSort { src: sv, .. } | NodeKind::CumSum { src: sv, .. }) =
        &node.kind
    else {
        return None;
    };
    let in_dtype = g.node(*sv).dtype;
    let out_dtype = node.dtype;
    let out_cols = match op {
        RowOp::TopK { k, .. } => k,
        _ => cols,
    };
    let ub = target.memory("ub")?;
    let (isz, osz) = (in_dtype.size_bytes() as u64, out_dtype.size_bytes() as u64);
    // Room for the slots' alignment padding (4 slots, a carry).
    let budget = ub.usable().saturating_sub(6 * ub.align);
    // Row widths in UB, padded so that every row (and so every slot) starts aligned.
    let (iw, ow) = (padded(cols, isz, ub.align), padded(out_cols, osz, ub.align));
    let per_row = 2 * (iw as u64 * isz + ow as u64 * osz);
    let cores_max = (target.vector_cores as i64).max(1);
    let rows_per_core = (rows + cores_max - 1) / cores_max;
    let fit_rows = (budget / per_row) as i64;
    let span = node.span;
    if fit_rows >= 1 {
        // Whole rows per block.
        let rt = fit_rows.min(rows_per_core).clamp(1, 4096);
        let cores = cores_max.min((rows + rt - 1) / rt).max(1) as u32;
        let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
        let inb = lb.buffer("src_in", Mem::UB, in_dtype, vec![rt as u64, iw as u64], 2);
        let outb = lb.buffer("out", Mem::UB, out_dtype, vec![rt as u64, ow as u64], 2);
        let pv = PipeVars::new(&mut lb);
        let (rn, ln) = (lb.svar("rn"), lb.svar("ln"));
        // Lines along another axis than the last are strided: each is copied in (and its result out) as a
        // column, one copy per line of the block (`line`, `lr`: the line and its row in the block).
        let (line, lr) = (lb.svar("line"), lb.svar("lr"));
        // The GM offset of the first element of line `l`, whose lines hold `len` elements.
        let line_at = |l: SExpr, len: i64| {
            let o = bin(SBin::Mul, bin(SBin::Div, l.clone(), c(inner)), c(len * inner));
            bin(SBin::Add, o, bin(SBin::Mod, l, c(inner)))
        };
        let columns = |block: SVar, n: SVar, len: i64, copy: &dyn Fn(SExpr, SExpr) -> Stmt| Stmt::For {
            var: lr,
            lo: c(0),
            hi: v(n),
            step: 1,
            body: vec![
                Stmt::Set { var: line, value: bin(SBin::Add, v(block), v(lr)) },
                copy(line_at(v(line), len), v(lr)),
            ],
        };
        let mut prog = Vec::new();
        for s in 0..2u8 {
            prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::S, event: s });
        }
        let load = |slot: u32| {
            let copy_in = if inner == 1 {
                Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: Region { loc: Loc::Gm(src), offset: bin(SBin::Mul, v(pv.next), c(cols)), row_stride: c(cols) },
                    dst: buf_region(inb, slot, iw),
                    rows: v(ln),
                    cols: c(cols),
                }
            } else {
                columns(pv.next, ln, cols, &|at, r| Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: Region { loc: Loc::Gm(src), offset: at, row_stride: c(inner) },
                    dst: Region {
                        loc: Loc::Buf { buf: inb, slot: c(slot as i64) },
                        offset: bin(SBin::Mul, r, c(iw)),
                        row_stride: c(1),
                    },
                    rows: c(cols),
                    cols: c(1),
                })
            };
            vec![
                Stmt::Set { var: ln, value: bin(SBin::Min, c(rt), bin(SBin::Sub, c(rows), v(pv.next))) },
                copy_in,
                Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::S, event: slot as u8 },
            ]
        };
        let work = |slot: u32| {
            let ev = slot as u8;
            let dst = buf_region(outb, slot, ow);
            let lop = match op {
                RowOp::TopK { k, indices } => LibOp::TopK {
                    k: k as u64,
                    values: (!indices).then(|| dst.clone()),
                    indices: indices.then(|| dst.clone()),
                },
                RowOp::ArgSort { descending } => LibOp::ArgSort { descending, dst },
                RowOp::CumSum { exclusive } => LibOp::CumSum { exclusive, dst, carry: None },
            };
            vec![
                Stmt::Set { var: rn, value: bin(SBin::Min, c(rt), bin(SBin::Sub, c(rows), v(pv.pos))) },
                Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::S, event: ev },
                Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::S, event: ev },
                Stmt::Library { op: lop, src: buf_region(inb, slot, iw), rows: v(rn), cols: c(cols), span },
                if inner == 1 {
                    Stmt::Copy {
                        pipe: Pipe::Mte3,
                        src: buf_region(outb, slot, ow),
                        dst: Region {
                            loc: Loc::Gm(out),
                            offset: bin(SBin::Mul, v(pv.pos), c(out_cols)),
                            row_stride: c(out_cols),
                        },
                        rows: v(rn),
                        cols: c(out_cols),
                    }
                } else {
                    columns(pv.pos, rn, out_cols, &|at, r| Stmt::Copy {
                        pipe: Pipe::Mte3,
                        src: Region {
                            loc: Loc::Buf { buf: outb, slot: c(slot as i64) },
                            offset: bin(SBin::Mul, r, c(ow)),
                            row_stride: c(1),
                        },
                        dst: Region { loc: Loc::Gm(out), offset: at, row_stride: c(inner) },
                        rows: c(out_cols),
                        cols: c(1),
                    })
                },
                Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::S, event: ev },
            ]
        };
        let stride = cores as i64 * rt;
        prog.extend(pipelined(&pv, bin(SBin::Mul, SExpr::Core, c(rt)), rows, stride, &load, &work));
        for s in 0..2u8 {
            prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::S, event: s });
        }
        lb.launch.vector = prog;
        return Some(lb.finish("row blocks chosen by the tiler"));
    }
    // A row does not fit UB. An argsort sorts blocks of the row and merges them ([`wide_argsort`]); a prefix
    // sum carries its running totals from tile to tile. Top-k would need its own merge (not done here), and
    // lines along another axis than the last are not taken in these modes.
    if inner != 1 {
        return None;
    }
    if let RowOp::ArgSort { descending } = op {
        // The keys are gathered from `src` itself, in its own dtype.
        let key_dtype = gm.tensors.get(src.0 as usize)?.dtype;
        return wide_argsort(node_id, g, name, src, key_dtype, rows, cols, descending, out, target);
    }
    let RowOp::CumSum { exclusive } = op else { return None };
    let rt = rows_per_core.clamp(1, 8);
    let per_col = 2 * rt as u64 * (isz + osz);
    let unit = padded(1, isz, ub.align).max(padded(1, osz, ub.align)) as u64;
    let ct = ((budget.saturating_sub(rt as u64 * 4) / per_col) / unit * unit)
        .min((cols.max(1) as u64).next_multiple_of(unit)) as i64;
    if ct < 1 {
        return None;
    }
    let cores = cores_max.min((rows + rt - 1) / rt).max(1) as u32;
    let float = in_dtype.is_float();
    let carry_dtype = if float { DType::F32 } else { DType::I32 };
    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
    let inb = lb.buffer("src_in", Mem::UB, in_dtype, vec![rt as u64, ct as u64], 2);
    let outb = lb.buffer("out", Mem::UB, out_dtype, vec![rt as u64, ct as u64], 2);
    let carry = lb.buffer("carry", Mem::UB, carry_dtype, vec![rt as u64, 1], 1);
    let r0 = lb.svar("r0");
    let rn = lb.svar("rn");
    let pv = PipeVars::new(&mut lb);
    let (cn, ln) = (lb.svar("cn"), lb.svar("ln"));
    let mut prog = Vec::new();
    for s in 0..2u8 {
        prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::S, event: s });
    }
    let at = |x: SVar| bin(SBin::Add, bin(SBin::Mul, v(r0), c(cols)), v(x));
    let load = |slot: u32| {
        vec![
            Stmt::Set { var: ln, value: bin(SBin::Min, c(ct), bin(SBin::Sub, c(cols), v(pv.next))) },
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: Region { loc: Loc::Gm(src), offset: at(pv.next), row_stride: c(cols) },
                dst: buf_region(inb, slot, ct),
                rows: v(rn),
                cols: v(ln),
            },
            Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::S, event: slot as u8 },
        ]
    };
    let work = |slot: u32| {
        let ev = slot as u8;
        vec![
            Stmt::Set { var: cn, value: bin(SBin::Min, c(ct), bin(SBin::Sub, c(cols), v(pv.pos))) },
            Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::S, event: ev },
            Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::S, event: ev },
            Stmt::Library {
                op: LibOp::CumSum { exclusive, dst: buf_region(outb, slot, ct), carry: Some(buf_region(carry, 0, 1)) },
                src: buf_region(inb, slot, ct),
                rows: v(rn),
                cols: v(cn),
                span,
            },
            Stmt::Copy {
                pipe: Pipe::Mte3,
                src: buf_region(outb, slot, ct),
                dst: Region { loc: Loc::Gm(out), offset: at(pv.pos), row_stride: c(cols) },
                rows: v(rn),
                cols: v(cn),
            },
            Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::S, event: ev },
        ]
    };
    let zero = if float { VExpr::F32(0.0) } else { VExpr::I32(0) };
    let rbody: Vec<Stmt> = vec![
        Stmt::Set { var: rn, value: bin(SBin::Min, c(rt), bin(SBin::Sub, c(rows), v(r0))) },
        Stmt::Vector { dst: buf_region(carry, 0, 1), rows: v(rn), cols: c(1), expr: zero },
        Stmt::SetFlag { from: Pipe::V, to: Pipe::S, event: 0 },
        Stmt::WaitFlag { from: Pipe::V, to: Pipe::S, event: 0 },
    ]
    .into_iter()
    .chain(pipelined(&pv, c(0), cols, ct, &load, &work))
    .collect();
    prog.push(Stmt::For {
        var: r0,
        lo: bin(SBin::Mul, SExpr::Core, c(rt)),
        hi: c(rows),
        step: cores as i64 * rt,
        body: rbody,
    });
    for s in 0..2u8 {
        prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::S, event: s });
    }
    lb.launch.vector = prog;
    Some(lb.finish("row and column tiles chosen by the tiler"))
}

/// An argsort whose rows do not fit UB: a block sort of each row, in the output tensor's row as its working
/// area (no workspace), on the vector cores' scalar units, row `r` on core `r % cores`.
///
/// The row is cut into `nb` blocks of `w` columns (the last one shorter). First each block is sorted on
/// its own (its keys copied in, `argsort`, its indices shifted by the block's start) and its indices
/// written to the block's place in the output row. Then `nb` rounds of odd-even transposition merge
/// adjacent blocks: round `q` takes the pairs `(i, i + 1)` with `i ≡ q (mod 2)`, and each pair is
/// *merge-split* — the two blocks' indices are copied in side by side, their keys gathered from the
/// source by those indices, the `n` keys sorted (`argsort`, stable), the indices permuted by that order (a
/// gather from the output row at the positions the order names) and written back, the lower block's share
/// to the lower block. After `nb` rounds the row is sorted (odd-even transposition sorts `nb` items in `nb`
/// rounds, and a network of merge-splits of sorted blocks sorts as its comparators would); it is stable,
/// since merge-splits of adjacent blocks put equal keys of the lower block first and so never reorder
/// equal keys (the order of equal keys is their order in the row at every step). Every address is static:
/// no control reads data. The cost is `nb` rounds of about `nb / 2` sorts of `2w` keys each.
#[allow(clippy::too_many_arguments)]
fn wide_argsort(
    node_id: ValueId,
    g: &Graph,
    name: &str,
    src: TensorId,
    key_dtype: DType,
    rows: i64,
    cols: i64,
    descending: bool,
    out: TensorId,
    target: &Target,
) -> Option<Result<Launch, Diagnostic>> {
    let node = g.node(node_id);
    let NodeKind::ArgSort { src: sv, .. } = &node.kind else { return None };
    let in_dtype = g.node(*sv).dtype;
    if node.dtype != DType::I32 || cols < 2 || rows < 1 {
        return None;
    }
    let ub = target.memory("ub")?;
    let (isz, ksz) = (in_dtype.size_bytes() as u64, key_dtype.size_bytes() as u64);
    // Per column of a block: the block's own source (isz), then for a pair of blocks (2 per column) the
    // indices, keys, order, positions and permuted indices (4 + ksz + 4 + 4 + 4 bytes each).
    let per_col = isz + 2 * (16 + ksz);
    let budget = ub.usable().saturating_sub(8 * ub.align);
    let unit = padded(1, 4, ub.align).max(padded(1, isz, ub.align)).max(padded(1, ksz, ub.align)) as u64;
    let w = ((budget / per_col) / unit * unit).min(i32::MAX as u64 / 4) as i64;
    if w < 1 || w >= cols {
        return None;
    }
    let nb = (cols + w - 1) / w;
    let cores = (target.vector_cores as i64).min(rows).max(1) as u32;
    let span = node.span;
    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
    let inb = lb.buffer("src_in", Mem::UB, in_dtype, vec![w as u64], 1);
    let idx = lb.buffer("idx", Mem::UB, DType::I32, vec![2 * w as u64], 1);
    let keys = lb.buffer("keys", Mem::UB, key_dtype, vec![2 * w as u64], 1);
    let order = lb.buffer("order", Mem::UB, DType::I32, vec![2 * w as u64], 1);
    let at = lb.buffer("at", Mem::UB, DType::I32, vec![2 * w as u64], 1);
    let res = lb.buffer("res", Mem::UB, DType::I32, vec![2 * w as u64], 1);
    let (r0, blk, q, i, n0, n1) =
        (lb.svar("r0"), lb.svar("blk"), lb.svar("q"), lb.svar("i"), lb.svar("n0"), lb.svar("n1"));
    let add = |a: SExpr, b: SExpr| bin(SBin::Add, a, b);
    let mul = |a: SExpr, b: SExpr| bin(SBin::Mul, a, b);
    let sub = |a: SExpr, b: SExpr| bin(SBin::Sub, a, b);
    let row0 = || mul(v(r0), c(cols));
    let col = |b: BufId| Region { loc: Loc::Buf { buf: b, slot: c(0) }, offset: c(0), row_stride: c(1) };
    let in_out = |off: SExpr| gm_row(out, add(row0(), off));
    let sync = |from: Pipe, to: Pipe| [Stmt::SetFlag { from, to, event: 0 }, Stmt::WaitFlag { from, to, event: 0 }];
    // The sorted order, as a vector operand.
    let ord = || VExpr::Read(col(order));

    // 1. Each block sorted on its own: `n0` columns at `blk * w`.
    let mut sort_blk = vec![Stmt::Set { var: n0, value: bin(SBin::Min, c(w), sub(c(cols), mul(v(blk), c(w)))) }];
    sort_blk.push(Stmt::Copy {
        pipe: Pipe::Mte2,
        src: gm_row(src, add(row0(), mul(v(blk), c(w)))),
        dst: col(inb),
        rows: c(1),
        cols: v(n0),
    });
    sort_blk.extend(sync(Pipe::Mte2, Pipe::S));
    sort_blk.push(Stmt::Library {
        op: LibOp::ArgSort { descending, dst: col(order) },
        src: col(inb),
        rows: c(1),
        cols: v(n0),
        span,
    });
    sort_blk.push(Stmt::Vector {
        dst: col(res),
        rows: c(1),
        cols: v(n0),
        expr: VExpr::Binary(BinOp::Add, Box::new(ord()), Box::new(VExpr::Scalar(mul(v(blk), c(w))))),
    });
    sort_blk.extend(sync(Pipe::V, Pipe::Mte3));
    sort_blk.push(Stmt::Copy {
        pipe: Pipe::Mte3,
        src: col(res),
        dst: in_out(mul(v(blk), c(w))),
        rows: c(1),
        cols: v(n0),
    });
    sort_blk.extend(sync(Pipe::Mte3, Pipe::S));

    // 2. A merge-split of blocks `i` (n0 columns at `i * w`) and `i + 1` (n1 columns right after).
    let lo = || mul(v(i), c(w));
    let mut ms = vec![
        Stmt::Set { var: n0, value: c(w) },
        Stmt::Set { var: n1, value: bin(SBin::Min, c(w), sub(c(cols), mul(add(v(i), c(1)), c(w)))) },
        Stmt::Copy { pipe: Pipe::Mte2, src: in_out(lo()), dst: col(idx), rows: c(1), cols: add(v(n0), v(n1)) },
    ];
    ms.extend(sync(Pipe::Mte2, Pipe::S));
    // The pair's keys, from the source row by index (one key per gathered row).
    ms.push(Stmt::Gather {
        pipe: Pipe::Mte2,
        src,
        src_rows: cols as u64,
        row_stride: 1,
        col_offset: row0(),
        index: col(idx),
        dst: col(keys),
        rows: add(v(n0), v(n1)),
        cols: c(1),
        span,
        error: None,
    });
    ms.extend(sync(Pipe::Mte2, Pipe::S));
    ms.push(Stmt::Library {
        op: LibOp::ArgSort { descending, dst: col(order) },
        src: col(keys),
        rows: c(1),
        cols: add(v(n0), v(n1)),
        span,
    });
    // The two blocks are adjacent, so the element at the order's position `p` is at column `i * w + p`.
    ms.push(Stmt::Vector {
        dst: col(at),
        rows: c(1),
        cols: add(v(n0), v(n1)),
        expr: VExpr::Binary(BinOp::Add, Box::new(ord()), Box::new(VExpr::Scalar(lo()))),
    });
    ms.extend(sync(Pipe::V, Pipe::S));
    ms.push(Stmt::Gather {
        pipe: Pipe::Mte2,
        src: out,
        src_rows: cols as u64,
        row_stride: 1,
        col_offset: row0(),
        index: col(at),
        dst: col(res),
        rows: add(v(n0), v(n1)),
        cols: c(1),
        span,
        error: None,
    });
    ms.extend(sync(Pipe::Mte2, Pipe::Mte3));
    ms.push(Stmt::Copy { pipe: Pipe::Mte3, src: col(res), dst: in_out(lo()), rows: c(1), cols: add(v(n0), v(n1)) });
    ms.extend(sync(Pipe::Mte3, Pipe::S));

    let rbody = vec![
        Stmt::For { var: blk, lo: c(0), hi: c(nb), step: 1, body: sort_blk },
        Stmt::For {
            var: q,
            lo: c(0),
            hi: c(nb),
            step: 1,
            body: vec![Stmt::For { var: i, lo: bin(SBin::Mod, v(q), c(2)), hi: c(nb - 1), step: 2, body: ms }],
        },
    ];
    lb.launch.vector = vec![Stmt::For { var: r0, lo: SExpr::Core, hi: c(rows), step: cores as i64, body: rbody }];
    Some(lb.finish("block sizes chosen by the tiler"))
}

/// A histogram of the `total` elements of `src` into `n` bins, on one vector core.
#[allow(clippy::too_many_arguments)]
fn bincount(
    g: &Graph,
    node_id: ValueId,
    name: &str,
    src: TensorId,
    total: i64,
    n: i64,
    out: TensorId,
    target: &Target,
) -> Option<Result<Launch, Diagnostic>> {
    let node = g.node(node_id);
    let NodeKind::BinCount { src: sv, .. } = &node.kind else { return None };
    let in_dtype = g.node(*sv).dtype;
    if !(0..=MAX_ELEMS).contains(&n) {
        return None;
    }
    let ub = target.memory("ub")?;
    let isz = in_dtype.size_bytes() as u64;
    let hist_bytes = (n.max(1) as u64 * 4).div_ceil(ub.align) * ub.align;
    let budget = ub.usable().saturating_sub(hist_bytes + 3 * ub.align);
    let chunk = ((budget / (2 * isz.max(1))) / 256 * 256)
        .min(16 * 1024)
        .min((total.max(1) as u64).next_multiple_of(256)) as i64;
    if chunk < 1 || ub.usable() < hist_bytes {
        return None;
    }
    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, 1);
    let inb = lb.buffer("src_in", Mem::UB, in_dtype, vec![chunk as u64], 2);
    let hist = lb.buffer("counts", Mem::UB, DType::I32, vec![n.max(1) as u64], 1);
    let pv = PipeVars::new(&mut lb);
    let (len, ln) = (lb.svar("len"), lb.svar("ln"));
    let span = node.span;
    let mut prog = vec![
        Stmt::Vector { dst: buf_region(hist, 0, 0), rows: c(1), cols: c(n), expr: VExpr::I32(0) },
        Stmt::SetFlag { from: Pipe::V, to: Pipe::S, event: 0 },
        Stmt::WaitFlag { from: Pipe::V, to: Pipe::S, event: 0 },
    ];
    let load = |slot: u32| {
        vec![
            Stmt::Set { var: ln, value: bin(SBin::Min, c(chunk), bin(SBin::Sub, c(total), v(pv.next))) },
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_row(src, v(pv.next)),
                dst: buf_region(inb, slot, 0),
                rows: c(1),
                cols: v(ln),
            },
            Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::S, event: slot as u8 },
        ]
    };
    let work = |slot: u32| {
        vec![
            Stmt::Set { var: len, value: bin(SBin::Min, c(chunk), bin(SBin::Sub, c(total), v(pv.pos))) },
            Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::S, event: slot as u8 },
            Stmt::Library {
                op: LibOp::BinCount { n: n as u64, dst: buf_region(hist, 0, 0) },
                src: buf_region(inb, slot, 0),
                rows: c(1),
                cols: v(len),
                span,
            },
        ]
    };
    prog.extend(pipelined(&pv, c(0), total, chunk, &load, &work));
    prog.push(Stmt::Copy {
        pipe: Pipe::Mte3,
        src: buf_region(hist, 0, 0),
        dst: gm_row(out, c(0)),
        rows: c(1),
        cols: c(n),
    });
    lb.launch.vector = prog;
    Some(lb.finish("chunk sizes chosen by the tiler"))
}
