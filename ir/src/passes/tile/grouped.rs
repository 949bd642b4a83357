//! Grouped matmuls on the cube (a mixture of experts' feed-forward on expert-sorted rows): tiles of rows
//! within one expert, not a matrix-vector product per row.
//!
//! The groups taken are those fusion makes of `moe_experts` (rule 2b of [`crate::passes::fuse`]):
//!
//! ```text
//! e[r]    = segment(offsets, r)                                    (offsets: i32[E + 1], a parameter)
//! h[r, f] = epi(Σ_m xs[r, m] · w1[e[r], f, m], Σ_m xs[r, m] · w3[e[r], f, m])   (one or two matmuls)
//! ys[r, m] = Σ_f h[r, f] · w2[e[r], m, f]
//! ```
//!
//! with `xs`, `w1`, `w3`, `w2` bf16 or f16 GM tensors of one dtype, the weights laid out `[E, N, K]` (the
//! cube's transposed `b`), `epi` any elementwise expression of the matmuls (SwiGLU: `silu(a) * b`), and
//! `ys` the only stored member. Expert `e` owns rows `offsets[e] .. offsets[e + 1]`; the group reads
//! `offsets` itself and the expert ids are never stored.
//!
//! Two launches (a [`Tiled`] of two), with `h` a GM intermediate `[R, F]` between them (it shows in reports
//! as an intermediate; a per-core bounded `h` would need a whole row tile's `F` columns on chip):
//! 1. `h` (a `Unit::Mixed` launch): the matmuls on the cube, `epi` on the vector cores, `h` stored in the
//!    operands' dtype (bf16) since the second matmul's cube operands must be bf16 or f16.
//! 2. `ys = h · w2ᵀ` (a `Unit::Cube` launch): FixPipe writes `ys` directly (f32 to its dtype).
//!
//! Work items are (expert, row tile, n-block) triples: for each expert `e` its rows `[lo, hi)` are cut into
//! tiles of `bm` rows (the last one partial; an expert without rows has none) and each tile into n-blocks
//! of `bn` columns. Every core walks the same sequence with a running counter and takes the items whose
//! counter is its core index modulo the cube cores: the work is balanced whatever the distribution of rows
//! over the experts, and the rows of a tile always share one expert's weights. Per core (the scalar unit
//! reads `offsets` from L1 on a cube core, from UB on a vector core, after an MTE2 copy and a MTE2->S flag):
//!
//! ```text
//! prev = 0, cnt = 0
//! for ex in 0..E:
//!   lo = max(prev, clamp(offsets[ex], 0, R));  hi = max(lo, clamp(offsets[ex + 1], 0, R));  prev = hi
//!   for t0 in lo..hi step bm:  rows = min(bm, hi - t0)
//!     for n0 in 0..N step bn:  cols = min(bn, N - n0)
//!       if cnt mod cubes == my cube:  ITEM
//!       cnt += 1
//! ```
//!
//! On a target with `contiguous_chunks` (the host, where a core is a thread's unit of work) a core takes a
//! contiguous run of items instead: a first walk over the experts counts them (`items`), and item `cnt`
//! belongs to core `cnt · cubes / items`, and the walk takes an expert's row tiles inside its n-blocks
//! (`for n0 { for t0 { ... } }`): a core's consecutive items are the row tiles of one n-block, which read
//! the same weight panels, so the host's matrix unit packs each panel once and keeps it while they pass
//! (`packed_bt` in `runtime/src/host/mmad.rs`; the packed rows of the 2–3 row tiles are kept too). With the
//! n-blocks innermost each panel was packed once per row tile. The row tiles are at most `bm` rows, 128 or
//! the target's `grouped_rows` (256 on the host).
//!
//! ITEM on the cube is `cube.rs`'s block with one `b` operand per matmul: `a = xs[t0.., k0..]` (rows of
//! the expert's tile), `b_j = w_j[ex, n0.., k0..]` (transposed by MTE1 on the way to L0B), one L0C
//! accumulator per matmul, and the same flags (MTE1->MTE2 and M->MTE1 primed twice: double-buffered k
//! steps; FIX->M primed once; all drained at the end):
//!
//! ```text
//! wait FIX->M
//! for each k step (slot s alternating): wait MTE1->MTE2; MTE2 a, b_j -> L1[s]; set+wait MTE2->MTE1;
//!   wait M->MTE1; MTE1 L1[s] -> L0A[s], L0B_j[s]; set MTE1->MTE2; set+wait MTE1->M;
//!   mmad_j (rows × klen × cols); set M->MTE1
//! set+wait M->FIX
//! launch 1: cross_wait #1 (area free); FIX c_j -> workspace area (item mod 2); set FIX->M; cross_set #0
//! launch 2: FIX c -> ys[t0.., n0..]; set FIX->M
//! ```
//!
//! The hand-off of launch 1 goes through GM (as on 910B; on 950 too): each cube core has two areas of
//! `matmuls × bm × bn` f32 in a workspace, used alternately. The vector cores prime cross flag 1 twice
//! (both areas free); per item each of a cube core's `ratio` vector cores waits cross flag 0, copies its
//! share of the tile's rows (`ceil(bm / ratio)`) into UB, evaluates `epi` (rounding `h` to its GM dtype),
//! stores `h` with MTE3 and sets cross flag 1 (every vector core, even with no rows in its share: the cube
//! core waits for all of them). The cube core waits flag 1 before writing an area and drains the two
//! primes at the end. Within a vector core: V->MTE2 and MTE3->V primed once, as in `cube.rs`'s epilogue.
//! On the host (`tile_rows_only`) the copies and the epilogue cover only the tile's rows (`rows`, and `rc`
//! of a vector core's share), and the cube waits for the area at the start of the item instead of before
//! its copies: with no `CrossWait` between the mmads and the copies, copy forwarding has the mmads
//! accumulate in the area itself and the copies go (`codegen/src/forward.rs`, level 5).
//!
//! `segment`'s run-time errors: the interpreter stops with `IndexOutOfRange` when a row is outside
//! `offsets[0] .. offsets[E]`, i.e. when `offsets[0] > 0` or `offsets[E] < R`. Every vector core of launch 1
//! computes that condition first (an i32 0 or 1 in UB) and gathers element `condition` of a one-row view
//! of `offsets`: an index 1 stops the kernel with `IndexOutOfRange` at the `segment` expression. The
//! clamps above keep every access in bounds meanwhile. Unsorted offsets stop the kernel the same way, as
//! the interpreter does: `order[e] = offsets[e] > offsets[e + 1]` (1 or 0), and the core gathers those `E`
//! rows of the one-row view.
//!
//! Not handled (the template returns `None`): weights laid out `[E, K, N]`, operands of other dtypes,
//! other members or stored values, a `segment` of anything but a parameter at the row index.
//!
//! Rounding: the matmuls accumulate in f32 in k order and `epi` runs in f32, so `h` is the interpreter's
//! `h` rounded to bf16; `ys` differs from the interpreter's (which multiplies the f32 `h`) by that rounding.

use super::{add, bin, c, flag, max, min, mul, sub, v, GmPlan, LaunchBuilder, Tiled};
use crate::diag::Diagnostic;
use crate::dtype::DType;
use crate::graph::{BinOp, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::{Group, GroupKind};
use crate::span::Span;
use crate::target::Target;
use crate::tile::*;

/// The grouped matmul group's launches, or `None` if the group is not one this template handles.
pub fn grouped(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Tiled, Diagnostic>> {
    let p = analyze(g, group, gm, b)?;
    Some(build(g, name, gm, target, &p))
}

struct Plan {
    span: Span,
    offsets: TensorId,
    /// The offsets' tensor name, for the range and order checks' errors.
    offsets_name: String,
    xs: TensorId,
    dtype: DType,
    /// The first matmul's weights, in the order the `h` body's reductions appear.
    w_h: Vec<TensorId>,
    /// `h`'s body (its reductions are the matmuls, in order).
    h_body: Expr,
    h: ValueId,
    ys: TensorId,
    w2: TensorId,
    r: i64,
    m: i64,
    f: i64,
    e: i64,
}

fn is_var(e: &Expr, i: usize) -> bool {
    matches!(e.kind, ExprKind::Var(x) if x.index() == i)
}

/// `sum[k](a[r, k] * w[seg[r], n, k])` (either factor first): the row operand's value and the weight.
fn matmul_of(e: &Expr, seg: ValueId) -> Option<(ValueId, ValueId)> {
    let ExprKind::Reduce { op: ReduceOp::Sum, vars, body } = &e.kind else { return None };
    let [k] = vars.as_slice() else { return None };
    let k = k.index();
    let ExprKind::Binary(BinOp::Mul, p, q) = &body.kind else { return None };
    let row = |x: &Expr| match &x.kind {
        ExprKind::Load { src, idx } if idx.len() == 2 && is_var(&idx[0], 0) && is_var(&idx[1], k) => Some(*src),
        _ => None,
    };
    let weight = |x: &Expr| match &x.kind {
        ExprKind::Load { src, idx }
            if idx.len() == 3
                && matches!(&idx[0].kind, ExprKind::Load { src: s, idx: si }
                    if *s == seg && si.len() == 1 && is_var(&si[0], 0))
                && is_var(&idx[1], 1)
                && is_var(&idx[2], k) =>
        {
            Some(*src)
        }
        _ => None,
    };
    match (row(p), weight(q)) {
        (Some(a), Some(w)) => Some((a, w)),
        _ => Some((row(q)?, weight(p)?)),
    }
}

/// The matmuls of `h`'s body in order (pre-order, not entering them), or `None` if the body has anything
/// but elementwise operations around them.
fn collect(e: &Expr, seg: ValueId, out: &mut Vec<(ValueId, ValueId)>) -> Option<()> {
    match &e.kind {
        ExprKind::Reduce { .. } => out.push(matmul_of(e, seg)?),
        ExprKind::Const(_) => {}
        ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => collect(a, seg, out)?,
        ExprKind::Binary(_, a, b) => {
            collect(a, seg, out)?;
            collect(b, seg, out)?;
        }
        ExprKind::Select(x, a, b) => {
            collect(x, seg, out)?;
            collect(a, seg, out)?;
            collect(b, seg, out)?;
        }
        _ => return None,
    }
    Some(())
}

/// `h`'s body over a UB tile, the `j`-th matmul read from `accs[j]` (row stride `bn`).
fn hexpr(e: &Expr, j: &mut usize, accs: &[BufId], bn: i64) -> Option<VExpr> {
    Some(match &e.kind {
        ExprKind::Reduce { .. } => {
            let buf = *accs.get(*j)?;
            *j += 1;
            VExpr::Read(Region { loc: Loc::Buf { buf, slot: c(0) }, offset: c(0), row_stride: c(bn) })
        }
        ExprKind::Const(crate::graph::Const::F32(x)) => VExpr::F32(*x),
        ExprKind::Const(crate::graph::Const::I32(x)) => VExpr::I32(*x),
        ExprKind::Const(crate::graph::Const::Bool(x)) => VExpr::Bool(*x),
        ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(hexpr(a, j, accs, bn)?)),
        ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(hexpr(a, j, accs, bn)?)),
        ExprKind::Binary(op, a, b) => {
            let a = hexpr(a, j, accs, bn)?;
            VExpr::Binary(*op, Box::new(a), Box::new(hexpr(b, j, accs, bn)?))
        }
        ExprKind::Select(x, a, b) => {
            let x = hexpr(x, j, accs, bn)?;
            let a = hexpr(a, j, accs, bn)?;
            VExpr::Select(Box::new(x), Box::new(a), Box::new(hexpr(b, j, accs, bn)?))
        }
        _ => return None,
    })
}

fn analyze(g: &Graph, group: &Group, gm: &GmPlan, b: &Binding) -> Option<Plan> {
    if group.kind != GroupKind::GroupedMatmul || group.nodes.len() != 3 {
        return None;
    }
    let (seg, h, ys) = (group.nodes[0], group.nodes[1], group.nodes[2]);
    // e[r] = segment(offsets, r), offsets a parameter.
    let NodeKind::Compute { body: sb, .. } = &g.node(seg).kind else { return None };
    let ExprKind::Segment { src: off, value } = &sb.kind else { return None };
    if g.node(seg).rank() != 1 || !is_var(value, 0) || !matches!(g.node(*off).kind, NodeKind::Param(_)) {
        return None;
    }
    let offsets = *gm.of.get(off)?;
    // h: elementwise over one or two matmuls of the same rows.
    let NodeKind::Compute { body: hb, .. } = &g.node(h).kind else { return None };
    let mut mms = Vec::new();
    collect(hb, seg, &mut mms)?;
    if mms.is_empty() || mms.len() > 2 || mms.iter().any(|(a, _)| *a != mms[0].0) {
        return None;
    }
    // ys = sum[f](h[r, f] * w2[e[r], m, f]).
    let NodeKind::Compute { body: yb, .. } = &g.node(ys).kind else { return None };
    let (hh, w2) = matmul_of(yb, seg)?;
    if hh != h || group.stored != vec![ys] || !g.node(h).dtype.is_float() || !g.node(ys).dtype.is_float() {
        return None;
    }
    let xs = *gm.of.get(&mms[0].0)?;
    let t = |id: TensorId| gm.tensors.get(id.0 as usize);
    let w_h: Vec<TensorId> = mms.iter().map(|(_, w)| gm.of.get(w).copied()).collect::<Option<_>>()?;
    let w2 = *gm.of.get(&w2)?;
    let ys_t = *gm.of.get(&ys)?;
    let dtype = t(xs)?.dtype;
    if !matches!(dtype, DType::BF16 | DType::F16)
        || w_h.iter().chain([&w2]).any(|w| t(*w).map(|x| x.dtype) != Some(dtype))
        || t(offsets)?.dtype != DType::I32
    {
        return None;
    }
    let xsh = &t(xs)?.shape;
    let [r, m] = xsh.as_slice() else { return None };
    let [e1] = t(offsets)?.shape.as_slice() else { return None };
    let [e, f, m1] = t(w_h[0])?.shape.as_slice() else { return None };
    let (r, m, f, e) = (*r as i64, *m as i64, *f as i64, *e as i64);
    let ok_shapes = w_h.iter().all(|w| t(*w).map(|x| x.shape.as_slice()) == Some(&[e as u64, f as u64, m as u64]))
        && t(w2)?.shape == [e as u64, m as u64, f as u64]
        && t(ys_t)?.shape == [r as u64, m as u64]
        && *e1 as i64 == e + 1
        && *m1 as i64 == m;
    let hshape: Vec<i64> = g.node(h).shape.iter().map(|d| b.eval(d).ok()).collect::<Option<_>>()?;
    if !ok_shapes || hshape != [r, f] || r < 1 || m < 1 || f < 1 || e < 1 {
        return None;
    }
    let offsets_name = gm.tensors.get(offsets.0 as usize).map_or_else(|| "offsets".to_string(), |t| t.name.clone());
    Some(Plan {
        span: value_span(sb),
        offsets,
        offsets_name,
        xs,
        dtype,
        w_h,
        h_body: hb.clone(),
        h,
        ys: ys_t,
        w2,
        r,
        m,
        f,
        e,
    })
}

fn value_span(e: &Expr) -> Span {
    e.span
}

/// Base blocks (bm, bn, bk) for `nmm` matmuls sharing `a`: `nmm` L0C accumulators of `bm × bn` f32, two
/// slots of `a` in L0A and of each `b` in L0B, and the double-buffered L1 tiles beside `l1_fixed` bytes.
fn base_blocks(
    target: &Target,
    r: i64,
    n: i64,
    k: i64,
    esize: i64,
    nmm: i64,
    l1_fixed: i64,
) -> Option<(i64, i64, i64)> {
    let l0a = target.memory("l0a")?.usable() as i64 / 2;
    let l0b = target.memory("l0b")?.usable() as i64 / (2 * nmm);
    let l0c = target.memory("l0c")?.usable() as i64 / nmm;
    let l1 = target.memory("l1")?.usable() as i64 - l1_fixed - 1024;
    let r16 = |x: i64| (x.max(1) + 15) / 16 * 16;
    let rows_cap = target.grouped_rows.map_or(128, |x| r16(i64::from(x)));
    let (mut bm, mut bn) = (r16(r).min(rows_cap), r16(n).min(128));
    // A mixed launch's vector cores hold their share of the tile's rows (`ceil(bm / ratio)`) of every
    // accumulator (f32) and of `h` in UB (see `vector_program`), beside a few small buffers.
    let ub = target.memory("ub")?.usable() as i64 - 1024;
    let ratio = i64::from((target.vector_cores / target.cube_cores.max(1)).max(1));
    let ub_fits = |bm: i64, bn: i64| (bm + ratio - 1) / ratio * bn * (4 * nmm + esize) <= ub;
    while (bm * bn * 4 > l0c || !ub_fits(bm, bn)) && (bm > 16 || bn > 16) {
        if bn >= bm {
            bn -= 16;
        } else {
            bm -= 16;
        }
    }
    let mut bk = r16(k).min(256);
    let fits = |bk: i64| {
        bm * bk * esize <= l0a && bk * bn * esize <= l0b && 2 * (bm + nmm * bn) * bk * esize <= l1 && bm * bn * 4 <= l0c
    };
    while bk > 16 && !fits(bk) {
        bk -= 16;
    }
    fits(bk).then_some((bm, bn, bk))
}

fn rg(loc: Loc, offset: SExpr, row_stride: SExpr) -> Region {
    Region { loc, offset, row_stride }
}

fn bs(buf: BufId, slot: SExpr) -> Loc {
    Loc::Buf { buf, slot }
}

/// The registers of the work-item walk.
struct Walk {
    ex: SVar,
    lo: SVar,
    hi: SVar,
    prev: SVar,
    t0: SVar,
    rows: SVar,
    nb: SVar,
    n0: SVar,
    cols: SVar,
    cnt: SVar,
    /// The number of items, when each core takes a contiguous run of them (`Target::contiguous_chunks`).
    total: Option<SVar>,
}

impl Walk {
    fn new(lb: &mut LaunchBuilder<'_>, p: &str, contiguous: bool) -> Walk {
        let total = contiguous.then(|| lb.svar(format!("{p}items")));
        let mut s = |n: &str| lb.svar(format!("{p}{n}"));
        Walk {
            total,
            ex: s("ex"),
            lo: s("lo"),
            hi: s("hi"),
            prev: s("prev"),
            t0: s("t0"),
            rows: s("rows"),
            nb: s("nb"),
            n0: s("n0"),
            cols: s("cols"),
            cnt: s("cnt"),
        }
    }

    /// The walk over (expert, row tile, n-block) items (see the module comment); `item` runs for the
    /// items of cube core `mine`. `off` is the i32 offsets buffer (slot 0) the scalar unit reads.
    #[allow(clippy::too_many_arguments)]
    fn stmts(
        &self,
        off: BufId,
        p: &Plan,
        bm: i64,
        bn: i64,
        n: i64,
        cubes: u32,
        mine: SExpr,
        item: Vec<Stmt>,
    ) -> Vec<Stmt> {
        let read = |i: SExpr| SExpr::Read { buf: off, slot: Box::new(c(0)), index: Box::new(i) };
        let clamp = |x: SExpr| min(c(p.r), max(c(0), x));
        let nbk = (n + bn - 1) / bn;
        // Every `cubes`-th item, or (contiguous) the items `cnt` with `cnt · cubes / total` = the core.
        let owner = match self.total {
            None => bin(SBin::Mod, v(self.cnt), c(cubes as i64)),
            Some(t) => bin(SBin::Div, mul(v(self.cnt), c(cubes as i64)), v(t)),
        };
        let set_n0 = [
            Stmt::Set { var: self.n0, value: mul(v(self.nb), c(bn)) },
            Stmt::Set { var: self.cols, value: min(c(bn), sub(c(n), v(self.n0))) },
        ];
        let set_rows = Stmt::Set { var: self.rows, value: min(c(bm), sub(v(self.hi), v(self.t0))) };
        let take = [
            Stmt::If { cond: bin(SBin::Eq, owner, mine), then: item },
            Stmt::Set { var: self.cnt, value: add(v(self.cnt), c(1)) },
        ];
        let tiles = if self.total.is_some() {
            // Contiguous runs (the host): the row tiles of an n-block one after another, so a core's
            // consecutive items read the same weight panels (the host's matrix unit packs them once and keeps
            // them while its row tiles pass) and the expert's weights are read once.
            let per_tile: Vec<Stmt> = std::iter::once(set_rows).chain(take).collect();
            let per_block: Vec<Stmt> = set_n0
                .into_iter()
                .chain([Stmt::For { var: self.t0, lo: v(self.lo), hi: v(self.hi), step: bm, body: per_tile }])
                .collect();
            Stmt::For { var: self.nb, lo: c(0), hi: c(nbk), step: 1, body: per_block }
        } else {
            let per_block: Vec<Stmt> = set_n0.into_iter().chain(take).collect();
            let per_tile = vec![set_rows, Stmt::For { var: self.nb, lo: c(0), hi: c(nbk), step: 1, body: per_block }];
            Stmt::For { var: self.t0, lo: v(self.lo), hi: v(self.hi), step: bm, body: per_tile }
        };
        let per_expert = vec![
            Stmt::Set { var: self.lo, value: max(v(self.prev), clamp(read(v(self.ex)))) },
            Stmt::Set { var: self.hi, value: max(v(self.lo), clamp(read(add(v(self.ex), c(1))))) },
            Stmt::Set { var: self.prev, value: v(self.hi) },
            tiles,
        ];
        let mut prog = Vec::new();
        if let Some(t) = self.total {
            // The items first: each expert's row tiles times the n-blocks (the walk's own bounds).
            let count = vec![
                Stmt::Set { var: self.lo, value: max(v(self.prev), clamp(read(v(self.ex)))) },
                Stmt::Set { var: self.hi, value: max(v(self.lo), clamp(read(add(v(self.ex), c(1))))) },
                Stmt::Set { var: self.prev, value: v(self.hi) },
                Stmt::Set {
                    var: t,
                    value: add(v(t), mul(bin(SBin::Div, add(sub(v(self.hi), v(self.lo)), c(bm - 1)), c(bm)), c(nbk))),
                },
            ];
            prog.extend([
                Stmt::Set { var: self.prev, value: c(0) },
                Stmt::Set { var: t, value: c(0) },
                Stmt::For { var: self.ex, lo: c(0), hi: c(p.e), step: 1, body: count },
            ]);
        }
        prog.extend([
            Stmt::Set { var: self.prev, value: c(0) },
            Stmt::Set { var: self.cnt, value: c(0) },
            Stmt::For { var: self.ex, lo: c(0), hi: c(p.e), step: 1, body: per_expert },
        ]);
        prog
    }
}

/// Where the cube's results go.
enum Out {
    /// The launch-1 workspace: two areas of `accs × bm × bn` per cube core, alternating.
    Workspace { ws: TensorId, per_core: i64, item: SVar },
    /// Straight to a GM tensor `[R, n]`.
    Direct(TensorId),
}

/// Sizes of one grouped matmul launch.
struct Mm<'a> {
    a: TensorId,
    ws: &'a [TensorId],
    n: i64,
    k: i64,
    bm: i64,
    bn: i64,
    bk: i64,
}

/// The cube program of one launch: the walk, and per item the k steps, FixPipe and the hand-off.
fn cube_program(lb: &mut LaunchBuilder<'_>, p: &Plan, mm: &Mm<'_>, cubes: u32, out: &Out) -> Vec<Stmt> {
    let (n, k, bm, bn, bk) = (mm.n, mm.k, mm.bm, mm.bn, mm.bk);
    let nmm = mm.ws.len();
    let off = lb.buffer("offsets_l1", Mem::L1, DType::I32, vec![1, (p.e + 1) as u64], 1);
    let a1 = lb.buffer("a_l1", Mem::L1, p.dtype, vec![bm as u64, bk as u64], 2);
    let b1: Vec<BufId> =
        (0..nmm).map(|j| lb.buffer(format!("b{j}_l1"), Mem::L1, p.dtype, vec![bn as u64, bk as u64], 2)).collect();
    let a0 = lb.buffer("a_l0a", Mem::L0A, p.dtype, vec![bm as u64, bk as u64], 2);
    let b0: Vec<BufId> =
        (0..nmm).map(|j| lb.buffer(format!("b{j}_l0b"), Mem::L0B, p.dtype, vec![bk as u64, bn as u64], 2)).collect();
    let c0: Vec<BufId> =
        (0..nmm).map(|j| lb.buffer(format!("c{j}_l0c"), Mem::L0C, DType::F32, vec![bm as u64, bn as u64], 1)).collect();
    let contiguous = lb.target.contiguous_chunks;
    let w = Walk::new(lb, "", contiguous);
    let kk = lb.svar("k0");
    let kl = lb.svar("klen");
    let it = lb.svar("it");
    let s = lb.svar("slot");
    let jj = lb.svar("j");

    let step = |accumulate: bool| -> Vec<Stmt> {
        let sl = || v(s);
        let mut st = vec![
            Stmt::Set { var: kl, value: min(c(bk), sub(c(k), v(kk))) },
            Stmt::Set { var: s, value: bin(SBin::Mod, v(it), c(2)) },
            Stmt::WaitFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 },
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: rg(Loc::Gm(mm.a), add(mul(v(w.t0), c(k)), v(kk)), c(k)),
                dst: rg(bs(a1, sl()), c(0), c(bk)),
                rows: v(w.rows),
                cols: v(kl),
            },
        ];
        for (j, wt) in mm.ws.iter().enumerate() {
            st.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: rg(Loc::Gm(*wt), add(mul(v(w.ex), c(n * k)), add(mul(v(w.n0), c(k)), v(kk))), c(k)),
                dst: rg(bs(b1[j], sl()), c(0), c(bk)),
                rows: v(w.cols),
                cols: v(kl),
            });
        }
        st.extend(flag(Pipe::Mte2, Pipe::Mte1));
        st.push(Stmt::WaitFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
        st.push(Stmt::Copy {
            pipe: Pipe::Mte1,
            src: rg(bs(a1, sl()), c(0), c(bk)),
            dst: rg(bs(a0, sl()), c(0), c(bk)),
            rows: v(w.rows),
            cols: v(kl),
        });
        // Each `cols × kl` weight tile, transposed column by column: L1 column jj becomes L0B row jj.
        for j in 0..nmm {
            st.push(Stmt::For {
                var: jj,
                lo: c(0),
                hi: v(kl),
                step: 1,
                body: vec![Stmt::Copy {
                    pipe: Pipe::Mte1,
                    src: rg(bs(b1[j], sl()), v(jj), c(bk)),
                    dst: rg(bs(b0[j], sl()), mul(v(jj), c(bn)), c(1)),
                    rows: v(w.cols),
                    cols: c(1),
                }],
            });
        }
        st.push(Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        st.extend(flag(Pipe::Mte1, Pipe::M));
        for j in 0..nmm {
            st.push(Stmt::Mmad {
                a: rg(bs(a0, sl()), c(0), c(bk)),
                b: rg(bs(b0[j], sl()), c(0), c(bn)),
                c: rg(bs(c0[j], c(0)), c(0), c(bn)),
                m: v(w.rows),
                k: v(kl),
                n: v(w.cols),
                accumulate,
            });
        }
        st.push(Stmt::SetFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
        st.push(Stmt::Set { var: it, value: add(v(it), c(1)) });
        st
    };

    // On the host the item waits for its workspace area first (`tile_rows_only`): no `CrossWait` then lies
    // between its mmads and their copies into the area, so copy forwarding has the mmads accumulate in the
    // area itself (`codegen/src/forward.rs`, level 5) and the copy out of L0C goes. Elsewhere the wait comes
    // just before the copies, so the cube computes while the vector cores still read the area.
    let host = tile_rows_only(lb.target) && matches!(out, Out::Workspace { .. });
    let mut item = vec![Stmt::WaitFlag { from: Pipe::Fix, to: Pipe::M, event: 0 }, Stmt::Set { var: kk, value: c(0) }];
    if host {
        item.insert(0, Stmt::CrossWait { flag: 1 });
    }
    item.extend(step(false));
    item.push(Stmt::For { var: kk, lo: c(bk), hi: c(k), step: bk, body: step(true) });
    item.extend(flag(Pipe::M, Pipe::Fix));
    match out {
        Out::Workspace { ws, per_core, item: mine_it } => {
            if !host {
                item.push(Stmt::CrossWait { flag: 1 });
            }
            let area = mul(bin(SBin::Mod, v(*mine_it), c(2)), c(nmm as i64 * bm * bn));
            // Whole `bm`-row blocks (a static extent), or on the host only the tile's rows (`tile_rows_only`).
            let rows = if tile_rows_only(lb.target) { v(w.rows) } else { c(bm) };
            for (j, acc) in c0.iter().enumerate() {
                item.push(Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: rg(bs(*acc, c(0)), c(0), c(bn)),
                    dst: rg(
                        Loc::Gm(*ws),
                        add(add(mul(SExpr::Core, c(*per_core)), area.clone()), c(j as i64 * bm * bn)),
                        c(bn),
                    ),
                    rows: rows.clone(),
                    cols: v(w.cols),
                });
            }
            item.push(Stmt::SetFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
            item.push(Stmt::CrossSet { flag: 0 });
            item.push(Stmt::Set { var: *mine_it, value: add(v(*mine_it), c(1)) });
        }
        Out::Direct(t) => {
            item.push(Stmt::Copy {
                pipe: Pipe::Fix,
                src: rg(bs(c0[0], c(0)), c(0), c(bn)),
                dst: rg(Loc::Gm(*t), add(mul(v(w.t0), c(n)), v(w.n0)), c(n)),
                rows: v(w.rows),
                cols: v(w.cols),
            });
            item.push(Stmt::SetFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
        }
    }

    let mut prog = vec![
        Stmt::Set { var: it, value: c(0) },
        Stmt::Copy {
            pipe: Pipe::Mte2,
            src: rg(Loc::Gm(p.offsets), c(0), c(0)),
            dst: rg(bs(off, c(0)), c(0), c(p.e + 1)),
            rows: c(1),
            cols: c(p.e + 1),
        },
    ];
    prog.extend(flag(Pipe::Mte2, Pipe::S));
    if let Out::Workspace { item: mine_it, .. } = out {
        prog.push(Stmt::Set { var: *mine_it, value: c(0) });
    }
    for _ in 0..2 {
        prog.push(Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        prog.push(Stmt::SetFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
    }
    prog.push(Stmt::SetFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    prog.extend(w.stmts(off, p, bm, bn, n, cubes, SExpr::Core, item));
    for _ in 0..2 {
        prog.push(Stmt::WaitFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        prog.push(Stmt::WaitFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
    }
    prog.push(Stmt::WaitFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    if matches!(out, Out::Workspace { .. }) {
        for _ in 0..2 {
            prog.push(Stmt::CrossWait { flag: 1 });
        }
    }
    prog
}

/// Whether launch 1's hand-off moves and evaluates only the rows of the tile (`rows`; `rc` of a vector
/// core's share) instead of whole `bm`-row blocks: on a target whose cores are a thread's units of work
/// (`contiguous_chunks`, the host), where a FixPipe copy, an MTE2 copy and a vector statement cost per
/// element. At the benchmark's T = 4096 the experts' 386–660 rows make 159 tiles of 256 for 32768 rows: a
/// quarter of the rows the whole blocks moved were past the tile's end (stale accumulator rows that no
/// store reads). The NPU targets keep their static extents.
fn tile_rows_only(target: &Target) -> bool {
    target.contiguous_chunks
}

/// The most items a walk can deal: row tiles (each non-empty expert adds at most one partial tile) times
/// n-blocks.
fn max_items(p: &Plan, bm: i64, bn: i64, n: i64) -> i64 {
    let tiles = p.r.min((p.r + bm - 1) / bm + p.e.min(p.r) - 1);
    tiles * ((n + bn - 1) / bn)
}

fn build(g: &Graph, name: &str, gm: &GmPlan, target: &Target, p: &Plan) -> Result<Tiled, Diagnostic> {
    let internal = |msg: &str| {
        Diagnostic::error(crate::diag::Code::Internal, Span::default(), format!("grouped matmul `{name}`: {msg}"))
    };
    let esize = p.dtype.size_bytes() as i64;
    let nmm = p.w_h.len() as i64;
    let off_bytes = (p.e + 1) * 4;
    let ratio = (target.vector_cores / target.cube_cores.max(1)).max(1);
    let ws_id = TensorId(gm.tensors.len() as u32);
    let h_id = TensorId(gm.tensors.len() as u32 + 1);

    // Launch 1: h = epi(xs · w_jᵀ) on the expert's rows, the epilogue on the vector cores.
    let (bm, bn, bk) =
        base_blocks(target, p.r, p.f, p.m, esize, nmm, off_bytes).ok_or_else(|| internal("no base block fits"))?;
    let cubes = (target.cube_cores as i64).min(max_items(p, bm, bn, p.f)).max(1) as u32;
    let vcores = cubes * ratio;
    let mut lb = LaunchBuilder::new(target, format!("{name}.h"), Unit::Mixed, cubes, vcores);
    let per_core = 2 * nmm * bm * bn;
    let mine_it = lb.svar("item");
    let mm = Mm { a: p.xs, ws: &p.w_h, n: p.f, k: p.m, bm, bn, bk };
    let out = Out::Workspace { ws: ws_id, per_core, item: mine_it };
    lb.launch.cube = cube_program(&mut lb, p, &mm, cubes, &out);
    lb.launch.vector = vector_program(&mut lb, p, (bm, bn), nmm, cubes, ratio, ws_id, h_id)
        .ok_or_else(|| internal("the epilogue cannot be lowered"))?;
    let l1 = lb.finish("base block sizes chosen by the tiler")?;
    let workspace = GmTensor {
        name: format!("{name}_ws"),
        dtype: DType::F32,
        shape: vec![(cubes + vcores) as u64, per_core as u64],
        role: TensorRole::Workspace { per_core: (per_core * 4) as u64, unit_private: false },
    };
    let h_name = g.node(p.h).name.clone().unwrap_or_else(|| format!("t{}", p.h.0));
    let h_t = GmTensor {
        name: h_name,
        dtype: p.dtype,
        shape: vec![p.r as u64, p.f as u64],
        role: TensorRole::Intermediate(p.h),
    };

    // Launch 2: ys = h · w2ᵀ, written by FixPipe.
    let (bm, bn, bk) =
        base_blocks(target, p.r, p.m, p.f, esize, 1, off_bytes).ok_or_else(|| internal("no base block fits"))?;
    let cubes = (target.cube_cores as i64).min(max_items(p, bm, bn, p.m)).max(1) as u32;
    let mut lb = LaunchBuilder::new(target, format!("{name}.ys"), Unit::Cube, cubes, 0);
    let w2 = [p.w2];
    let mm = Mm { a: h_id, ws: &w2, n: p.m, k: p.f, bm, bn, bk };
    lb.launch.cube = cube_program(&mut lb, p, &mm, cubes, &Out::Direct(p.ys));
    let l2 = lb.finish("base block sizes chosen by the tiler")?;
    Ok(Tiled { launches: vec![l1, l2], workspaces: vec![workspace, h_t], tuning: Vec::new() })
}

/// Launch 1's vector program: the `segment` range check, then per item of its cube core: wait for the
/// accumulators in the workspace, evaluate `h` on this core's share of the rows, store it, free the area.
#[allow(clippy::too_many_arguments)]
fn vector_program(
    lb: &mut LaunchBuilder<'_>,
    p: &Plan,
    (bm, bn): (i64, i64),
    nmm: i64,
    cubes: u32,
    ratio: u32,
    ws: TensorId,
    h_t: TensorId,
) -> Option<Vec<Stmt>> {
    let hr = (bm + ratio as i64 - 1) / ratio as i64;
    let per_core = 2 * nmm * bm * bn;
    let off = lb.buffer("offsets_ub", Mem::UB, DType::I32, vec![1, (p.e + 1) as u64], 1);
    let chk = lb.buffer("range_ub", Mem::UB, DType::I32, vec![1, 1], 1);
    let scratch = lb.buffer("range_probe_ub", Mem::UB, DType::I32, vec![1, 1], 1);
    let order = lb.buffer("order_ub", Mem::UB, DType::I32, vec![1, p.e as u64], 1);
    let order_probe = lb.buffer("order_probe_ub", Mem::UB, DType::I32, vec![p.e as u64, 1], 1);
    let accs: Vec<BufId> =
        (0..nmm).map(|j| lb.buffer(format!("c{j}_ub"), Mem::UB, DType::F32, vec![hr as u64, bn as u64], 1)).collect();
    let h_ub = lb.buffer("h_ub", Mem::UB, p.dtype, vec![hr as u64, bn as u64], 1);
    let contiguous = lb.target.contiguous_chunks;
    let w = Walk::new(lb, "v", contiguous);
    let item = lb.svar("vitem");
    let r0 = lb.svar("r0");
    let rc = lb.svar("rc");
    // This vector core's share of a block: rows `r0 .. r0 + hc` of the `bm` in the workspace (static), of
    // which the first `rc` are rows of the tile.
    let sub_core = bin(SBin::Mod, SExpr::Core, c(ratio as i64));
    let mine = bin(SBin::Div, SExpr::Core, c(ratio as i64));
    let mut j = 0;
    let expr = hexpr(&p.h_body, &mut j, &accs, bn)?;
    if j != accs.len() {
        return None;
    }

    let at = |b: BufId, i: i64| rg(bs(b, c(0)), c(i), c(0));
    let mut prog = vec![Stmt::CrossSet { flag: 1 }, Stmt::CrossSet { flag: 1 }];
    prog.push(Stmt::Copy {
        pipe: Pipe::Mte2,
        src: rg(Loc::Gm(p.offsets), c(0), c(0)),
        dst: rg(bs(off, c(0)), c(0), c(p.e + 1)),
        rows: c(1),
        cols: c(p.e + 1),
    });
    prog.extend(flag(Pipe::Mte2, Pipe::V));
    prog.extend(flag(Pipe::Mte2, Pipe::S));
    // 0 if every row 0..R is in offsets[0]..offsets[E], else 1: gathering row 1 of a 1-row view fails.
    let inside = VExpr::Binary(
        BinOp::And,
        Box::new(VExpr::Binary(BinOp::Le, Box::new(VExpr::Read(at(off, 0))), Box::new(VExpr::I32(0)))),
        Box::new(VExpr::Binary(BinOp::Ge, Box::new(VExpr::Read(at(off, p.e))), Box::new(VExpr::I32(p.r)))),
    );
    prog.push(Stmt::Vector {
        dst: at(chk, 0),
        rows: c(1),
        cols: c(1),
        expr: VExpr::Select(Box::new(inside), Box::new(VExpr::I32(0)), Box::new(VExpr::I32(1))),
    });
    prog.extend(flag(Pipe::V, Pipe::S));
    // Gathers `rows` rows of a one-row view of `offsets` at the indices in `index` (0 or 1 each): an index
    // 1 stops the kernel with `IndexOutOfRange` at the segment, with `error` (the interpreter's words).
    let off_name = &p.offsets_name;
    let outside = format!(
        "rows 0..{} of the grouped matmul are not all inside the range offsets[0]..offsets[{}] of `{off_name}`",
        p.r, p.e
    );
    let unsorted =
        format!("the offsets of `{off_name}` are not sorted: element {{row}} is greater than element {{next}}");
    let probe = |index: BufId, dst: BufId, rows: i64, error: &str| Stmt::Gather {
        pipe: Pipe::Mte2,
        src: p.offsets,
        src_rows: 1,
        row_stride: 0,
        col_offset: c(0),
        index: rg(bs(index, c(0)), c(0), c(1)),
        dst: rg(bs(dst, c(0)), c(0), c(1)),
        rows: c(rows),
        cols: c(1),
        span: p.span,
        error: Some(error.to_string()),
    };
    prog.push(probe(chk, scratch, 1, &outside));
    // Sorted offsets: order[e] = 1 where offsets[e] > offsets[e + 1], else 0; gathering those rows of the
    // 1-row view stops the kernel at the first unsorted pair, as the interpreter's check does.
    let off_row = |at: i64| rg(bs(off, c(0)), c(at), c(p.e + 1));
    prog.push(Stmt::Vector {
        dst: rg(bs(order, c(0)), c(0), c(p.e)),
        rows: c(1),
        cols: c(p.e),
        expr: VExpr::Select(
            Box::new(VExpr::Binary(BinOp::Gt, Box::new(VExpr::Read(off_row(0))), Box::new(VExpr::Read(off_row(1))))),
            Box::new(VExpr::I32(1)),
            Box::new(VExpr::I32(0)),
        ),
    });
    prog.extend(flag(Pipe::V, Pipe::S));
    prog.push(probe(order, order_probe, p.e, &unsorted));
    prog.push(Stmt::Set { var: item, value: c(0) });
    prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
    prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });

    // The rows of this core's share the epilogue reads and evaluates: all `min(hr, bm - r0)` the
    // workspace holds (a static extent), or on the host only the `rc` rows of the tile (`tile_rows_only`).
    let share = if tile_rows_only(lb.target) { v(rc) } else { min(c(hr), sub(c(bm), v(r0))) };
    let mut work = vec![Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 }];
    let area = mul(bin(SBin::Mod, v(item), c(2)), c(nmm * bm * bn));
    for (jx, acc) in accs.iter().enumerate() {
        work.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: rg(
                Loc::Gm(ws),
                add(add(add(mul(mine.clone(), c(per_core)), area.clone()), c(jx as i64 * bm * bn)), mul(v(r0), c(bn))),
                c(bn),
            ),
            dst: rg(bs(*acc, c(0)), c(0), c(bn)),
            rows: share.clone(),
            cols: v(w.cols),
        });
    }
    work.extend(flag(Pipe::Mte2, Pipe::V));
    work.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    work.push(Stmt::Vector { dst: rg(bs(h_ub, c(0)), c(0), c(bn)), rows: share, cols: v(w.cols), expr });
    work.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
    work.extend(flag(Pipe::V, Pipe::Mte3));
    work.push(Stmt::Copy {
        pipe: Pipe::Mte3,
        src: rg(bs(h_ub, c(0)), c(0), c(bn)),
        dst: rg(Loc::Gm(h_t), add(mul(add(v(w.t0), v(r0)), c(p.f)), v(w.n0)), c(p.f)),
        rows: v(rc),
        cols: v(w.cols),
    });
    work.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    let per_item = vec![
        Stmt::Set { var: r0, value: mul(sub_core, c(hr)) },
        Stmt::Set { var: rc, value: min(c(hr), sub(v(w.rows), v(r0))) },
        Stmt::CrossWait { flag: 0 },
        Stmt::If { cond: bin(SBin::Lt, c(0), v(rc)), then: work },
        Stmt::CrossSet { flag: 1 },
        Stmt::Set { var: item, value: add(v(item), c(1)) },
    ];
    prog.extend(w.stmts(off, p, bm, bn, p.f, cubes, mine, per_item));
    prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
    prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    Some(prog)
}
