//! Elementwise vector groups: every member is elementwise over one shape, and every read is at the
//! member's own indices (or of a scalar). The launch streams the flattened elements through UB in chunks,
//! split across the vector cores (core `i` takes chunks `i`, `i + cores`, ...; on a target with
//! `contiguous_chunks`, such as the host, core `i` takes the contiguous chunks `i*k .. (i+1)*k`, slot 1 the
//! chunk after slot 0's), two slots deep so that the
//! copy-in of one chunk (MTE2), the vector work on another (V) and the copy-out of a third (MTE3) overlap:
//!
//! ```text
//! for off in core*C .. N step 2*cores*C:            (unrolled by slot: slot 0 at off, slot 1 at off + cores*C)
//!   wait V->MTE2 #s;  copy.MTE2 inputs -> in[s];  set MTE2->V #s
//!   wait MTE2->V #s;  wait MTE3->V #s;  vector members -> buffers[s];  set V->MTE2 #s;  set V->MTE3 #s
//!   wait V->MTE3 #s;  copy.MTE3 stored members -> GM;  set MTE3->V #s
//! ```
//! Each flag pair is primed before the loop (the slots start free) and drained after it, so every wait
//! has its set. Each input is read from global memory once and each stored value written once.

use super::{
    bin, buf_region, c, gm_row, hint_error, tile_hints, two_slot_loop, two_slot_loop_to, v, GmPlan, LaunchBuilder,
    TileHint,
};
use crate::diag::Diagnostic;
use crate::graph::{Expr, ExprKind, Graph, NodeKind, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::Group;
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// How a member reads a value: at its own (flat) index, or a scalar.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Access {
    Same,
    Scalar,
}

/// The reads of a body, if every one is elementwise (at the node's own indices) or of a scalar, and the body
/// has no reduction or segment.
fn accesses(g: &Graph, node: ValueId, out: &mut BTreeMap<ValueId, Access>) -> bool {
    let n = g.node(node);
    let NodeKind::Compute { body, .. } = &n.kind else { return false };
    let rank = n.rank();
    let mut ok = true;
    body.walk(&mut |e| match &e.kind {
        ExprKind::Reduce { .. } | ExprKind::Segment { .. } => ok = false,
        ExprKind::Load { src, idx } => {
            let s = g.node(*src);
            let acc = if s.rank() == 0 {
                Access::Scalar
            } else if s.shape == n.shape
                && idx.len() == rank
                && idx.iter().enumerate().all(|(k, i)| matches!(i.kind, ExprKind::Var(x) if x.index() == k))
            {
                Access::Same
            } else {
                ok = false;
                return;
            };
            if out.insert(*src, acc).is_some_and(|a| a != acc) {
                ok = false;
            }
        }
        _ => {}
    });
    ok
}

/// The launch for an elementwise vector group, or `None` if the group is not elementwise.
pub fn elementwise(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Launch, Diagnostic>> {
    elementwise_tuned(g, group, name, gm, target, b).map(|r| r.map(|(l, _)| l))
}

/// [`elementwise`], choosing the chunk with the cost model: every chunk from 256 elements up to the
/// largest that fits UB (powers of two, and that largest) is built and ranked, and the fastest kept; with
/// the candidates weighed. A tile hint fixes the chunk instead.
pub fn elementwise_tuned(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<(Launch, Vec<super::Candidate>), Diagnostic>> {
    let (first, largest, hinted) = match elementwise_with(g, group, name, gm, target, b, None)? {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    if hinted || largest <= 256 {
        return Some(Ok((first, Vec::new())));
    }
    let tuned = super::tune(
        name,
        gm,
        target,
        super::powers_below(8, largest),
        |c| format!("chunk {c}"),
        |chunk| elementwise_with(g, group, name, gm, target, b, Some(chunk)).and_then(Result::ok).map(|(l, _, _)| l),
    );
    Some(tuned.map(|t| t.unwrap_or((first, Vec::new()))))
}

/// The launch with chunk `forced` (or the hinted chunk, or the largest that fits UB), the largest chunk
/// that fits (at most the padded element count), and whether a hint chose the chunk.
fn elementwise_with(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
    forced: Option<i64>,
) -> Option<Result<(Launch, i64, bool), Diagnostic>> {
    let shape = &g.node(*group.nodes.first()?).shape;
    let mut reads: BTreeMap<ValueId, Access> = BTreeMap::new();
    for m in &group.nodes {
        if &g.node(*m).shape != shape || !accesses(g, *m, &mut reads) {
            return None;
        }
    }
    let dims: Vec<i64> = shape.iter().map(|d| b.eval(d).ok()).collect::<Option<Vec<_>>>()?;
    let total: i64 = dims.iter().product();
    let inputs: Vec<(ValueId, Access)> =
        reads.iter().filter(|(s, _)| !group.nodes.contains(s)).map(|(s, a)| (*s, *a)).collect();
    // Every input and stored value must be in global memory.
    if inputs.iter().any(|(s, _)| !gm.of.contains_key(s)) || group.stored.iter().any(|s| !gm.of.contains_key(s)) {
        return None;
    }

    // Chunk size: the largest multiple of 256 elements whose buffers (two slots each) fit in UB, or the
    // chunk the members' tile hints ask for.
    let ub = target.memory("ub")?;
    let (home, homes) = member_buffers(g, group);
    let per_elem: u64 = inputs
        .iter()
        .filter(|(_, a)| *a == Access::Same)
        .map(|(s, _)| g.node(*s).dtype.size_bytes() as u64)
        .chain(homes.iter().map(|m| g.node(*m).dtype.size_bytes() as u64))
        .sum::<u64>()
        * 2;
    let scalars = inputs.iter().filter(|(_, a)| *a == Access::Scalar).count() as u64 * ub.align;
    let budget = ub.usable().saturating_sub(scalars + ub.align * (inputs.len() + homes.len()) as u64 * 2);
    let hints = tile_hints(g, group);
    let hinted = match hinted_chunk(&hints, &dims) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let largest = ((budget / per_elem.max(1)) / 256 * 256)
        .clamp(256, 32 * 1024)
        .min((total.max(1) as u64).next_multiple_of(256)) as i64;
    let chunk = match (&hinted, forced) {
        (Some((n, _)), _) => (*n).max(1),
        (None, Some(f)) => f.max(1),
        (None, None) => largest,
    };
    // A slot holds the chunk rounded up to 32 elements, so that every slot starts on UB's 32-byte alignment
    // whatever the dtype (a hinted chunk need not be a multiple of anything); the tail is never read.
    let slot_elems = (chunk as u64).next_multiple_of(32);
    let chunks = (total + chunk - 1) / chunk;
    let mut cores = (target.vector_cores as i64).min(chunks).max(1) as u32;
    // With contiguous parts, each core takes `per_core` chunks (the last core fewer): no core is left idle.
    let per_core = (chunks.max(1) + cores as i64 - 1) / cores as i64;
    if target.contiguous_chunks {
        cores = ((chunks.max(1) + per_core - 1) / per_core).max(1) as u32;
    }

    let mut lb = LaunchBuilder::new(target, name, Unit::Vector, 0, cores);
    let mut bufs: BTreeMap<ValueId, BufId> = BTreeMap::new();
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));
    for (s, a) in &inputs {
        let (shape, slots) = if *a == Access::Scalar { (vec![1], 1) } else { (vec![slot_elems], 2) };
        bufs.insert(*s, lb.buffer(format!("{}_in", label(*s)), Mem::UB, g.node(*s).dtype, shape, slots));
    }
    for m in &homes {
        bufs.insert(*m, lb.buffer(label(*m), Mem::UB, g.node(*m).dtype, vec![slot_elems], 2));
    }
    for m in &group.nodes {
        let at = bufs[&home[m]];
        bufs.insert(*m, at);
    }
    let off = lb.svar("off");
    let len = lb.svar("len");
    let mut prog = Vec::new();
    // Scalars once, before the loop.
    for (s, a) in &inputs {
        if *a == Access::Scalar {
            prog.push(Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_row(gm.of[s], c(0)),
                dst: buf_region(bufs[s], 0, 0),
                rows: c(1),
                cols: c(1),
            });
        }
    }
    if inputs.iter().any(|(_, a)| *a == Access::Scalar) {
        prog.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 2 });
    }
    for s in 0..2u8 {
        prog.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
        prog.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
    }
    // Slot 1's chunk follows slot 0's: the next of the core's contiguous chunks, or `cores` chunks on.
    let stride = if target.contiguous_chunks { chunk } else { cores as i64 * chunk };
    let mut slots: [Vec<Stmt>; 2] = Default::default();
    for slot in 0..2u32 {
        let ev = slot as u8;
        let mut st = Vec::new();
        st.push(Stmt::Set { var: len, value: bin(SBin::Min, c(chunk), bin(SBin::Sub, c(total), v(off))) });
        st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
        for (s, a) in &inputs {
            if *a == Access::Same {
                st.push(Stmt::Copy {
                    pipe: Pipe::Mte2,
                    src: gm_row(gm.of[s], v(off)),
                    dst: buf_region(bufs[s], slot, 0),
                    rows: c(1),
                    cols: v(len),
                });
            }
        }
        st.push(Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
        for m in &group.nodes {
            let NodeKind::Compute { body: e, vars } = &g.node(*m).kind else { return None };
            let strides: Vec<i64> = (0..dims.len()).map(|k| dims[k + 1..].iter().product()).collect();
            let expr = vexpr(e, &bufs, &inputs, slot, b, off, &dims, &strides, vars.len())?;
            st.push(Stmt::Vector { dst: buf_region(bufs[m], slot, 0), rows: c(1), cols: v(len), expr });
        }
        st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: ev });
        st.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
        st.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte3, event: ev });
        for m in &group.stored {
            st.push(Stmt::Copy {
                pipe: Pipe::Mte3,
                src: buf_region(bufs[m], slot, 0),
                dst: gm_row(gm.of[m], v(off)),
                rows: c(1),
                cols: v(len),
            });
        }
        st.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: ev });
        slots[slot as usize] = st;
    }
    let base = lb.svar("base");
    if target.contiguous_chunks {
        let part = per_core * chunk;
        let lo = bin(SBin::Mul, SExpr::Core, c(part));
        let hi = bin(SBin::Min, bin(SBin::Add, bin(SBin::Mul, SExpr::Core, c(part)), c(part)), c(total));
        prog.push(two_slot_loop_to(base, off, lo, hi, stride, slots));
    } else {
        prog.push(two_slot_loop(base, off, bin(SBin::Mul, SExpr::Core, c(chunk)), total, stride, slots));
    }
    for s in 0..2u8 {
        prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: s });
        prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: s });
    }
    lb.launch.vector = prog;
    let is_hinted = hinted.is_some();
    Some(
        match &hinted {
            Some((_, h)) => lb.finish_at(h.span, &format!("the chunk asked for by {}", h.text)),
            None => lb.finish("chunk sizes chosen by the tiler"),
        }
        .map(|l| (l, largest, is_hinted)),
    )
}

/// Which member's buffer each member is computed into (`home`), and the members that own a buffer, in
/// order. Members run in order, each once per chunk, so a member that is not stored can hand its buffer to
/// a later member of the same dtype once its last reader has run: the buffers are as many as the values
/// alive at once, not as many as the members (a chain of a thousand updates needs two). A member never
/// writes over a value it reads.
fn member_buffers(g: &Graph, group: &Group) -> (BTreeMap<ValueId, ValueId>, Vec<ValueId>) {
    let pos: BTreeMap<ValueId, usize> = group.nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    // The last member that reads each member (a stored member stays until the copy-out, after all).
    let mut last: BTreeMap<ValueId, usize> = BTreeMap::new();
    for (i, m) in group.nodes.iter().enumerate() {
        for o in g.node(*m).operands() {
            if pos.contains_key(&o) {
                last.insert(o, i);
            }
        }
    }
    // When each unstored member's value dies: after its last reader, or at once if nothing reads it.
    let mut dies: BTreeMap<usize, Vec<ValueId>> = BTreeMap::new();
    for (i, m) in group.nodes.iter().enumerate() {
        if !group.stored.contains(m) {
            dies.entry(last.get(m).copied().unwrap_or(i)).or_default().push(*m);
        }
    }
    let mut home = BTreeMap::new();
    let mut homes = Vec::new();
    let mut free: Vec<ValueId> = Vec::new();
    for (i, m) in group.nodes.iter().enumerate() {
        let dtype = g.node(*m).dtype;
        let h = match free.iter().position(|f| g.node(*f).dtype == dtype) {
            Some(k) => free.swap_remove(k),
            None => {
                homes.push(*m);
                *m
            }
        };
        home.insert(*m, h);
        for x in dies.get(&i).into_iter().flatten() {
            free.push(home[x]);
        }
    }
    (home, homes)
}

/// A member's body as a vector expression over one chunk: element `c` of the chunk is flat element
/// `off + c` of the shape.
#[allow(clippy::too_many_arguments)]
fn vexpr(
    e: &Expr,
    bufs: &BTreeMap<ValueId, BufId>,
    inputs: &[(ValueId, Access)],
    slot: u32,
    b: &Binding,
    off: SVar,
    dims: &[i64],
    strides: &[i64],
    rank: usize,
) -> Option<VExpr> {
    let r = |x: &Expr| vexpr(x, bufs, inputs, slot, b, off, dims, strides, rank);
    Some(match &e.kind {
        ExprKind::Const(crate::graph::Const::F32(x)) => VExpr::F32(*x),
        ExprKind::Const(crate::graph::Const::I32(x)) => VExpr::I32(*x),
        ExprKind::Const(crate::graph::Const::Bool(x)) => VExpr::Bool(*x),
        // An index variable's value: unravel the flat index `off + c`.
        ExprKind::Var(x) if x.index() < rank => {
            let k = x.index();
            let flat = VExpr::Binary(crate::graph::BinOp::Add, Box::new(VExpr::Scalar(v(off))), Box::new(VExpr::Col));
            let q = VExpr::Binary(crate::graph::BinOp::Div, Box::new(flat), Box::new(VExpr::I32(strides[k])));
            VExpr::Binary(crate::graph::BinOp::Mod, Box::new(q), Box::new(VExpr::I32(dims[k])))
        }
        ExprKind::Var(_) => return None,
        ExprKind::Dim(d) => VExpr::I32(b.eval(d).ok()?),
        ExprKind::Load { src, .. } => {
            let scalar = inputs.iter().any(|(s, a)| s == src && *a == Access::Scalar);
            if scalar {
                VExpr::ReadRow(buf_region(*bufs.get(src)?, 0, 0))
            } else {
                VExpr::Read(buf_region(*bufs.get(src)?, slot, 0))
            }
        }
        ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(r(a)?)),
        ExprKind::Binary(op, a, x) => VExpr::Binary(*op, Box::new(r(a)?), Box::new(r(x)?)),
        ExprKind::Select(cnd, a, x) => VExpr::Select(Box::new(r(cnd)?), Box::new(r(a)?), Box::new(r(x)?)),
        ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(r(a)?)),
        ExprKind::Reduce { .. } | ExprKind::Segment { .. } => return None,
    })
}

/// The chunk (in elements) that the tile hints on an elementwise group ask for, with the hint that sets it.
/// The template streams contiguous chunks of the flattened space, so a tile must be a block of whole inner
/// rows: below the outermost axis whose tile is smaller than its extent, every axis is whole (not hinted,
/// or hinted at least its extent), and above it every hinted axis has tile 1. Every hint of the group must
/// ask for the same chunk.
fn hinted_chunk(hints: &[TileHint], dims: &[i64]) -> Result<Option<(i64, TileHint)>, Diagnostic> {
    let mut out: Option<(i64, TileHint)> = None;
    for h in hints {
        let tile = |a: usize| h.axes.iter().find(|(x, _)| *x == a).map(|(_, s)| *s as i64);
        let split = (0..dims.len()).find(|&a| tile(a).is_some_and(|t| t < dims[a]));
        let chunk = match split {
            None => dims.iter().product::<i64>(),
            Some(a) => {
                if let Some(b) = (0..a).find(|&b| tile(b).is_some_and(|t| t != 1 && t < dims[b])) {
                    return Err(hint_error(
                        h,
                        format!(
                            "elementwise work streams contiguous chunks of whole inner rows: a tile of {} along axis \
                             {b} with a partial tile along inner axis {a} is not a contiguous chunk",
                            tile(b).unwrap_or(0)
                        ),
                    ));
                }
                if let Some(b) = (a + 1..dims.len()).find(|&b| tile(b).is_some_and(|t| t < dims[b])) {
                    return Err(hint_error(
                        h,
                        format!(
                            "elementwise work streams contiguous chunks of whole inner rows: axis {b} ({} elements) \
                             must be whole inside a tile that splits axis {a}",
                            dims[b]
                        ),
                    ));
                }
                tile(a).unwrap_or(1) * dims[a + 1..].iter().product::<i64>()
            }
        };
        match &out {
            Some((c, first)) if *c != chunk => {
                return Err(hint_error(
                    h,
                    format!("it asks for chunks of {chunk} elements, but {} asks for {c}", first.text),
                ))
            }
            Some(_) => {}
            None => out = Some((chunk, h.clone())),
        }
    }
    Ok(out)
}
